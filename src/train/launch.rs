//! `partrain serial | dp | hybrid`, from the config to the outcome: diagnostics on, the
//! checkpoint read (on resume), the plan resolved (collectively), the preflight, the data
//! (identical on every rank), the run folder opened, then the `Trainer`.

use crate::comm::Comm;
use crate::config::Config;
use crate::data::sampler::Sampler;
use crate::data::{self, Dataset};
use crate::plan::{Plan, Strategy};
use crate::train::checkpoint::Checkpoint;
use crate::train::run_dir::{self, Start};
use anyhow::{bail, Context, Result};
use std::path::Path;

use super::agree::agree;
use super::trainer::{Outcome, Trainer};

/// Trains `cfg` as `strategy` on this launch's ranks, writing the run folder `out_dir` (rank 0).
pub fn run(strategy: Strategy, cfg: &Config, out_dir: &Path, start: Start, world: &Comm) -> Result<Outcome> {
    start_diagnostics(cfg, out_dir, world)?;
    // Every rank reads the checkpoint (the run folder is on a shared file system, as the outputs
    // of any multi-node job are); its stage split pins a measured one.
    let resume = match start {
        Start::Resume => Some(agree(world, Checkpoint::load(out_dir))?),
        Start::Fresh { .. } => None,
    };
    let pinned = resume.as_ref().map(|c| c.meta.layout.stage_boundaries.as_slice());
    let plan = agree(world, Plan::resolve(cfg, strategy, world, pinned))?;
    let preflight = crate::record::preflight::run(world, &plan.world, plan.threads_per_rank)?;
    check_agreement(world, "the resolved config (config file or --set)", cfg.hash())?;
    let data = load_data(cfg, &plan, world)?;
    let sampler = Sampler::new(
        data.train.len(),
        plan.batches.global,
        plan.topology.replicas,
        cfg.run.seed,
    );
    let peak = peak_from_env(cfg, &plan)?;
    if let Some(ck) = &resume {
        agree(world, check_resumable(ck, cfg, &plan, &sampler, out_dir))?;
    }
    let opened = match world.is_root() {
        true => run_dir::open(out_dir, start, &serde_yaml::to_string(cfg)?, &preflight),
        false => Ok(()),
    };
    agree(world, opened)?;
    run_dir::note_open(out_dir);
    if world.is_root() {
        announce(&plan, &preflight, &data, &sampler);
    }
    let clock_offsets = start_trace(cfg, &plan, world, out_dir)?;
    let mut trainer = Trainer::new(&plan, world, &data, out_dir, sampler)?;
    trainer.books.peak_gflops = peak;
    trainer.books.preflight = Some(preflight);
    trainer.books.clock_offsets = clock_offsets;
    let result = trainer.train(resume.as_ref());
    match result {
        Ok(outcome) => Ok(outcome),
        Err(e) => {
            if world.is_root() {
                run_dir::mark_failed(out_dir, &e);
            }
            crate::diag::flight::dump(&format!("error: {e:#}"));
            // A failing rank must not enter the collective clean-up (freeing shared windows,
            // communicators) that the other ranks will never reach: the job is aborted next.
            std::mem::forget(trainer);
            Err(e)
        }
    }
}

/// With `run.trace`: spans on, this rank's trace stream opened, and the ranks' clock offsets to
/// rank 0 measured (collective; rank 0 aligns the ranks' clocks with them). Empty without it.
fn start_trace(cfg: &Config, plan: &Plan, world: &Comm, out_dir: &Path) -> Result<Vec<f64>> {
    crate::diag::trace::enable(cfg.run.trace);
    if !cfg.run.trace {
        return Ok(Vec::new());
    }
    let t = plan.topology;
    let header = crate::diag::trace::RankHeader {
        rank: world.rank(),
        node: plan.world.node_of_rank[world.rank()],
        host: plan.world.hostnames[world.rank()].clone(),
        label: format!("rank {} (stage {}, replica {})", world.rank(), t.stage, t.replica),
    };
    let stream = super::finish::trace_stream(out_dir, world.rank());
    crate::diag::trace::stream_to(&stream, &header)
        .with_context(|| format!("cannot write the trace stream {}", stream.display()))?;
    Ok(world.clock_offsets(8))
}

/// What the run is about to do (rank 0's log): the data, the preflight, the plan, the warnings.
fn announce(plan: &Plan, preflight: &crate::record::preflight::Preflight, data: &Dataset, sampler: &Sampler) {
    println!(
        "partrain {}: {} x {} train / {} test images, {} steps per epoch",
        plan.strategy.name(),
        data.name.as_str(),
        data.train.len(),
        data.test.len(),
        sampler.steps_per_epoch()
    );
    print!("{}{}", preflight.describe(), plan.describe());
    for w in plan.warnings(crate::util::node_cores()) {
        eprintln!("partrain: warning: {w}");
    }
}

/// The peak of all this run's ranks (as many as the cores hold) from `PARTRAIN_PEAK`, for the
/// run's precision and threads per rank; None without the variable.
pub(super) fn peak_from_env(cfg: &Config, plan: &Plan) -> Result<Option<f64>> {
    let precision = cfg.train.precision.name();
    crate::record::peak::job_peak_from_env(precision, plan.threads_per_rank, &plan.world)
}

/// Checks that every rank holds the same value of `what`; names the ranks that differ.
pub(super) fn check_agreement(comm: &Comm, what: &str, value: u64) -> Result<()> {
    let all = crate::diag::flight::labelled("agreement check", || comm.all_gather(value));
    let differ: Vec<usize> = (0..all.len()).filter(|&r| all[r] != all[0]).collect();
    if !differ.is_empty() {
        bail!(
            "{what} differs between rank 0 ({:016x}) and rank(s) {:?} ({:016x})",
            all[0],
            differ,
            all[differ[0]]
        );
    }
    Ok(())
}

/// The flight recorder's folder, `PARTRAIN_DEBUG`, and the watchdog with its budgets (collective).
pub(super) fn start_diagnostics(cfg: &Config, out_dir: &Path, world: &Comm) -> Result<()> {
    crate::comm::debug_words()?;
    crate::train::faults::install_kill_in_write(world.rank())?;
    crate::diag::flight::set_dir(out_dir.join(crate::util::run_files::FLIGHT_DIR), world.rank());
    let p = &cfg.parallel;
    world.start_watchdog(crate::diag::watchdog::Budgets {
        train_s: p.timeout_s,
        eval_s: p.eval_timeout_s,
        checkpoint_s: p.checkpoint_timeout_s,
        warn_s: p.warn_s,
    });
    Ok(())
}

/// This rank's data, the same on every rank, with at least one global batch.
pub(super) fn load_data(cfg: &Config, plan: &Plan, world: &Comm) -> Result<Dataset> {
    let data = agree(world, data::load(&cfg.data).context("loading data"))?;
    check_agreement(
        world,
        "the loaded data (data.dir contents or limits)",
        data.fingerprint,
    )?;
    let enough = match data.train.len() < plan.batches.global {
        true => Err(anyhow::anyhow!(
            "data.train_limit: {} training images is fewer than one global batch of {}",
            data.train.len(),
            plan.batches.global
        )),
        false => Ok(()),
    };
    agree(world, enough)?;
    Ok(data)
}

/// A checkpoint can continue under this launch when the config is the same (but for how long to
/// train) and the layout keeps the mathematics: the same global batch, stage split and epoch.
/// The rank count may change (dp 2 -> 4 ranks with a global batch scope).
pub(super) fn check_resumable(
    ck: &Checkpoint,
    cfg: &Config,
    plan: &Plan,
    sampler: &Sampler,
    dir: &Path,
) -> Result<()> {
    let net = format!("{} (net {})", plan.net_name, plan.net_id);
    if let Some(then) = ck.meta.net.as_ref().filter(|then| **then != net) {
        bail!(
            "--resume: {} holds a checkpoint of {then}, and the config's net is {net}",
            dir.display()
        );
    }
    if ck.meta.config_hash != format!("{:016x}", cfg.resume_hash()) {
        bail!(
            "--resume: the config differs from the one {} was trained with (only train.epochs, \
             train.max_steps, the parallel.*timeout_s / warn_s deadlines and checkpoint.* may change)",
            dir.display()
        );
    }
    let (then, now) = (&ck.meta.layout, plan.layout(sampler.samples_per_epoch()));
    if then.global_batch != now.global_batch
        || then.stage_boundaries != now.stage_boundaries
        || then.samples_per_epoch != now.samples_per_epoch
    {
        bail!(
            "--resume: {} was trained with layout [{then}] and this launch resolves to [{now}]: a resumed run must \
             keep the global batch, the stage split and the images per epoch (with batch_scope per_rank the global \
             batch grows with the replicas; use the same rank count, or batch_scope global)",
            dir.display()
        );
    }
    let p = ck.meta.position;
    let steps = sampler.steps_per_epoch();
    let at_end = (p.epoch == cfg.train.epochs && p.step_in_epoch == steps)
        || cfg.train.max_steps.is_some_and(|m| p.global_step >= m);
    // A run killed after its last checkpoint but before its summary resumes to finish: evaluate,
    // write the model and the summary. A completed one needs more epochs to continue.
    let finishes = at_end && crate::train::run_dir::holds_unfinished_run(dir);
    if p.epoch > cfg.train.epochs || (at_end && !finishes) {
        bail!(
            "--resume: the checkpoint in {} already covers train.epochs = {} (epoch {}, step {}): raise train.epochs to continue",
            dir.display(),
            cfg.train.epochs,
            p.epoch,
            p.global_step
        );
    }
    Ok(())
}
