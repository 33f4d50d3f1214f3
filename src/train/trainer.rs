//! The training loop, as named steps: `run` resolves the plan and opens the run; a `Trainer`
//! runs epochs (`run_epoch`) of steps (`step`), then `evaluate`s, `checkpoint`s, and finally
//! writes the model and the `Summary`.
//!
//!   partrain serial --config configs/base.yaml [--set train.epochs=3] [--out DIR]
//!   mpirun -np 2 partrain dp --config configs/data_parallel.yaml [--set ...] [--out DIR]
//!   mpirun -np 4 partrain hybrid --config configs/hybrid_pipeline.yaml [--set ...] [--out DIR]
//!
//! One step, read top-down: `Trainer::step` -> `Engine::train_step` (this rank's stage: forward
//! and backward of every micro-batch, sends and receives included, gradients accumulated in the
//! flat buffer) -> `Averager::average` -> `Sgd::step` -> `Averager::after_step`.

use crate::comm::Comm;
use crate::config::Config;
use crate::data::sampler::Sampler;
use crate::data::{self, Dataset};
use crate::diag::watchdog;
use crate::plan::optim::LrSchedule;
use crate::plan::{Plan, Strategy};
use crate::record::metrics_csv::{EvalRow, MetricsWriter};
use crate::record::summary::Summary;
use crate::train::averager::Averager;
use crate::train::checkpoint::{gather_to_root, Checkpoint, Meta, Position};
use crate::train::engine::{Engine, StepBatch};
use crate::train::faults::Fault;
use crate::train::grads::GradientBuffer;
use crate::train::noise_scale::{MicroBatchNorms, NoiseState};
use crate::train::optimizer::Optimizer;
use crate::train::run_dir::{self, Start};
use crate::train::target::{Evaluation, TimeToTarget};
use crate::train::timers::StepTimers;
use crate::util::{mix_seed, peak_rss_mb};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

/// How a training run ended.
#[derive(Debug)]
pub enum Outcome {
    Completed(Box<Summary>),
    /// Stopped by SIGUSR1/SIGTERM after `global_step`, with a checkpoint there.
    Interrupted {
        global_step: usize,
    },
}

/// How an epoch ended: its row, its row at the target (`train.stop_at_target`), or a stop.
enum EpochEnd {
    Done(EvalRow),
    AtTarget(EvalRow),
    Stopped(Outcome),
}

/// Trains `cfg` as `strategy` on this launch's ranks, writing the run folder `out_dir` (rank 0).
pub fn run(strategy: Strategy, cfg: &Config, out_dir: &Path, start: Start, world: &Comm) -> Result<Outcome> {
    start_diagnostics(cfg, out_dir, world)?;
    // Every rank reads the checkpoint (the run folder is on a shared file system, as the outputs
    // of any multi-node job are); its stage split pins a measured one.
    let resume = match start {
        Start::Resume => Some(Checkpoint::load(out_dir)?),
        Start::Fresh { .. } => None,
    };
    let pinned = resume.as_ref().map(|c| c.meta.layout.stage_boundaries.as_slice());
    let plan = Plan::resolve(cfg, strategy, world, pinned)?;
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
        check_resumable(ck, cfg, &plan, &sampler, out_dir)?;
    }
    if world.is_root() {
        run_dir::open(out_dir, start, cfg, &preflight)?;
        println!(
            "partrain {}: {} x {} train / {} test images, {} steps per epoch",
            strategy.name(),
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
    crate::diag::trace::enable(cfg.run.trace);
    // Measured on every launch that traces (collective): rank 0 aligns the ranks' clocks with it.
    let clock_offsets = if cfg.run.trace {
        world.clock_offsets(8)
    } else {
        Vec::new()
    };
    let mut trainer = Trainer::new(cfg, &plan, world, &data, out_dir, sampler)?;
    trainer.peak_gflops = peak;
    trainer.preflight = Some(preflight);
    trainer.clock_offsets = clock_offsets;
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

/// The peak of all this run's ranks (as many as the cores hold) from `PARTRAIN_PEAK`, for the
/// run's precision and threads per rank; None without the variable.
fn peak_from_env(cfg: &Config, plan: &Plan) -> Result<Option<f64>> {
    let precision = match cfg.train.precision {
        crate::config::Precision::Fp32 => "fp32",
        crate::config::Precision::Bf16 => "bf16",
    };
    crate::record::peak::job_peak_from_env(precision, plan.threads_per_rank, &plan.world)
}

/// Checks that every rank holds the same value of `what`; names the ranks that differ.
fn check_agreement(comm: &Comm, what: &str, value: u64) -> Result<()> {
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
fn start_diagnostics(cfg: &Config, out_dir: &Path, world: &Comm) -> Result<()> {
    crate::comm::debug_words()?;
    crate::diag::flight::set_dir(out_dir.join("flight"), world.rank());
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
fn load_data(cfg: &Config, plan: &Plan, world: &Comm) -> Result<Dataset> {
    let data = data::load(&cfg.data).with_context(|| format!("rank {}: loading data", world.rank()))?;
    check_agreement(
        world,
        "the loaded data (data.dir contents or limits)",
        data.fingerprint,
    )?;
    if data.train.len() < plan.batches.global {
        bail!(
            "data.train_limit: {} training images is fewer than one global batch of {}",
            data.train.len(),
            plan.batches.global
        );
    }
    Ok(data)
}

/// A checkpoint can continue under this launch when the config is the same (but for how long to
/// train) and the layout keeps the mathematics: the same global batch, stage split and epoch.
/// The rank count may change (dp 2 -> 4 ranks with a global batch scope).
fn check_resumable(ck: &Checkpoint, cfg: &Config, plan: &Plan, sampler: &Sampler, dir: &Path) -> Result<()> {
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
    let finished = p.epoch > cfg.train.epochs || (p.epoch == cfg.train.epochs && p.step_in_epoch == steps);
    if finished || cfg.train.max_steps.is_some_and(|m| p.global_step >= m) {
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

/// Training so far (restored from a checkpoint on `--resume`).
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    global_step: usize,
    trained_samples: usize,
    train_seconds: f64,
    /// Steps taken by this process (not before a resume).
    steps_here: usize,
    first_step_seconds: Option<f64>,
}

/// One epoch in progress.
struct EpochState {
    epoch: usize,
    steps: usize,
    samples: usize,
    loss_sum: f64,
    loss_count: usize,
    started: Instant,
    /// Seconds of this epoch spent before a mid-epoch resume.
    prior_seconds: f64,
    /// Seconds of evaluations inside this epoch (`train.eval_every_steps`): not training time.
    eval_seconds: f64,
    timers_at_start: StepTimers,
}

impl EpochState {
    /// Training seconds of this epoch so far.
    fn seconds(&self) -> f64 {
        self.prior_seconds + self.started.elapsed().as_secs_f64() - self.eval_seconds
    }
}

pub struct Trainer<'a> {
    cfg: &'a Config,
    plan: &'a Plan,
    world: &'a Comm,
    data: &'a Dataset,
    dir: &'a Path,
    sampler: Sampler,
    engine: Engine,
    optimizer: Optimizer,
    schedule: LrSchedule,
    /// The rate of the last step.
    lr: f64,
    /// The smoothed noise-scale estimates, and with several micro-batches their gradients' norms.
    noise: NoiseState,
    norms: Option<MicroBatchNorms>,
    /// The run clock and the first reach of the target.
    ttt: TimeToTarget,
    sync: Averager,
    buffer: GradientBuffer,
    timers: StepTimers,
    progress: Progress,
    fault: Fault,
    metrics: Option<MetricsWriter>,
    /// The machine's peak for all ranks, when measured (`PARTRAIN_PEAK`).
    peak_gflops: Option<f64>,
    /// The start-up preflight's figures, for the summary.
    preflight: Option<crate::record::preflight::Preflight>,
    /// With `run.trace`: each rank's clock offset to rank 0 (on rank 0).
    clock_offsets: Vec<f64>,
}

impl<'a> Trainer<'a> {
    /// Builds this rank's stage, binds its parameters to the flat buffers and sets up the
    /// averaging (collective over the world).
    fn new(
        cfg: &'a Config,
        plan: &'a Plan,
        world: &'a Comm,
        data: &'a Dataset,
        dir: &'a Path,
        sampler: Sampler,
    ) -> Result<Self> {
        let engine = Engine::new(plan, cfg.run.seed);
        let params: Vec<Tensor> = engine
            .net
            .parameters()
            .iter()
            .map(|t| t.shallow_clone())
            .collect();
        let params: Vec<&Tensor> = params.iter().collect();
        // Gradients are averaged among the replicas of the same stage.
        let group = world.split(plan.topology.stage, plan.topology.replica);
        let len = GradientBuffer::flat_len(&params);
        let sync = Averager::new(plan.grad_sync, group, len, engine.net.param_blocks().len());
        let mut buffer = GradientBuffer::bind(&params, sync.node_mean());
        if plan.topology.replicas > 1 {
            // Every replica starts from the first replica's weights (they are built from the same
            // seed anyway; the broadcast makes that a guarantee rather than an assumption).
            buffer.broadcast_values(sync.group(), 0);
        }
        let names: Vec<String> = engine
            .net
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let optimizer = Optimizer::new(&buffer, &params, &names, &plan.optim);
        let schedule = plan.optim.schedule(sampler.steps_per_epoch());
        let norms = plan
            .noise
            .filter(|_| plan.batches.micro_batches > 1)
            .map(|_| MicroBatchNorms::new(buffer.grads()));
        Ok(Trainer {
            optimizer,
            lr: schedule.lr(0),
            schedule,
            noise: NoiseState::default(),
            norms,
            ttt: TimeToTarget::new(cfg.train.target_accuracy, Default::default()),
            cfg,
            plan,
            world,
            data,
            dir,
            sampler,
            engine,
            sync,
            buffer,
            timers: StepTimers::default(),
            progress: Progress::default(),
            fault: Fault::from_env(world.rank())?,
            metrics: None,
            peak_gflops: None,
            preflight: None,
            clock_offsets: Vec::new(),
        })
    }

    /// Trains from the start or from `resume`, and writes the model and the summary; or stops at
    /// a step boundary after a signal, with a checkpoint.
    fn train(&mut self, resume: Option<&Checkpoint>) -> Result<Outcome> {
        let steps_per_epoch = self.sampler.steps_per_epoch();
        let position = resume.map(|ck| ck.meta.position);
        if let Some(ck) = resume {
            self.restore(ck)?;
        }
        self.open_metrics(position)?;
        let first_epoch = match position {
            Some(p) if p.step_in_epoch == steps_per_epoch => p.epoch + 1,
            Some(p) => p.epoch,
            None => 1,
        };
        let mut last = None;
        watchdog::set_phase(watchdog::Phase::Train);
        for epoch in first_epoch..=self.cfg.train.epochs {
            if self.max_steps_reached() || self.target_stops_the_run() {
                break;
            }
            // A checkpoint taken inside this epoch: continue after its last step, with its sums.
            let partial = position.filter(|p| p.epoch == epoch && p.step_in_epoch < steps_per_epoch);
            match self.run_epoch(epoch, partial)? {
                EpochEnd::Done(row) | EpochEnd::AtTarget(row) => last = Some(row),
                EpochEnd::Stopped(o) => return Ok(o),
            }
        }
        let last = last.context(
            "nothing left to train: the checkpoint already covers train.epochs (raise it to continue)",
        )?;
        watchdog::set_phase(watchdog::Phase::Finish);
        Ok(Outcome::Completed(Box::new(self.finish(&last)?)))
    }

    /// Whether the ranks stop here: any of them got SIGUSR1 or SIGTERM (one all-reduce of a flag
    /// per step, so that all stop after the same step).
    fn stop_agreed(&self) -> bool {
        let mine = u64::from(crate::train::stop::requested().is_some());
        if self.world.size() == 1 {
            return mine == 1;
        }
        crate::diag::flight::labelled("stop flag", || self.world.sum(&[mine]))[0] > 0
    }

    /// Checkpoints at `ep`'s position and marks the run interrupted (rank 0).
    fn stop_here(&mut self, ep: &EpochState) -> Result<EpochEnd> {
        let position = self.position(ep);
        self.checkpoint(position)?;
        let signal = crate::train::stop::requested()
            .map_or("a signal on another rank", crate::train::stop::signal_name);
        if self.world.is_root() {
            run_dir::mark_interrupted(self.dir, signal, self.progress.global_step)?;
            println!(
                "stopped after global step {} ({signal}): checkpoint written to {}; continue with --resume or --auto-resume",
                self.progress.global_step,
                self.dir.display()
            );
        }
        Ok(EpochEnd::Stopped(Outcome::Interrupted {
            global_step: self.progress.global_step,
        }))
    }

    fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let names = self.engine.net.named_parameters();
        for ((name, p), m) in names.iter().zip(&self.optimizer.buffers) {
            ck.restore(name, p, m)
                .with_context(|| format!("--resume: {}", self.dir.display()))?;
        }
        let p = ck.meta.position;
        self.progress.global_step = p.global_step;
        self.progress.trained_samples = p.trained_samples;
        self.progress.train_seconds = p.train_seconds;
        self.noise = p.noise;
        self.ttt = TimeToTarget::new(self.cfg.train.target_accuracy, p.target);
        self.lr = self.schedule.lr(p.global_step.saturating_sub(1));
        if self.world.is_root() {
            println!(
                "resuming at epoch {}, global step {}",
                if p.step_in_epoch == self.sampler.steps_per_epoch() {
                    p.epoch + 1
                } else {
                    p.epoch
                },
                p.global_step
            );
        }
        Ok(())
    }

    fn open_metrics(&mut self, position: Option<Position>) -> Result<()> {
        if !self.world.is_root() {
            return Ok(());
        }
        self.metrics = Some(match position {
            None => MetricsWriter::create(self.dir)?,
            // Rows of evaluations the checkpoint does not cover (written after it) are dropped.
            Some(p) => MetricsWriter::resume(self.dir, p.global_step)?,
        });
        Ok(())
    }

    /// The run ends at the target (`train.stop_at_target`) and has reached it.
    fn target_stops_the_run(&self) -> bool {
        self.cfg.train.stop_at_target && self.ttt.reached().is_some()
    }

    fn max_steps_reached(&self) -> bool {
        self.cfg
            .train
            .max_steps
            .is_some_and(|m| self.progress.global_step >= m)
    }

    fn run_epoch(&mut self, epoch: usize, partial: Option<Position>) -> Result<EpochEnd> {
        let steps_per_epoch = self.sampler.steps_per_epoch();
        let order = self.sampler.permutation(epoch - 1);
        let mut ep = EpochState {
            epoch,
            steps: partial.map_or(0, |p| p.step_in_epoch),
            samples: partial.map_or(0, |p| p.epoch_samples),
            loss_sum: partial.map_or(0.0, |p| p.epoch_loss_sum),
            loss_count: partial.map_or(0, |p| p.epoch_loss_count),
            started: Instant::now(),
            prior_seconds: partial.map_or(0.0, |p| p.epoch_seconds),
            eval_seconds: 0.0,
            timers_at_start: self.timers,
        };
        let bar = self.progress_bar(epoch, steps_per_epoch);
        while ep.steps < steps_per_epoch && !self.max_steps_reached() {
            crate::diag::flight::set_step(self.progress.global_step as u64 + 1);
            watchdog::set_context(format!("epoch {epoch} step {}", ep.steps + 1));
            if self.stop_agreed() {
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                return self.stop_here(&ep);
            }
            let loss = self.step(&ep, &order)?;
            ep.steps += 1;
            ep.samples += self.sampler.global_batch_at(&order, ep.steps - 1).len();
            if let Some(l) = loss {
                ep.loss_sum += l;
                ep.loss_count += 1;
            }
            let every = self.cfg.train.eval_every_steps;
            if crate::train::target::eval_due(every, self.progress.global_step, ep.steps, steps_per_epoch) {
                let row = self.evaluation_row(&mut ep, false)?;
                if self.target_stops_the_run() {
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    self.progress.train_seconds += ep.seconds();
                    self.progress.trained_samples += ep.samples;
                    return Ok(EpochEnd::AtTarget(row));
                }
            }
            let due = self.cfg.checkpoint.every_steps;
            if due.is_some_and(|k| self.progress.global_step.is_multiple_of(k)) && ep.steps < steps_per_epoch
            {
                self.checkpoint(self.position(&ep))?;
            }
            self.show_progress(bar.as_ref(), &ep, loss);
        }
        let (sync, buffer, step) = (&mut self.sync, &mut self.buffer, self.progress.global_step);
        self.timers.averaging.time(|| sync.after_step(buffer, step, true));
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        self.end_epoch(ep, steps_per_epoch).map(EpochEnd::Done)
    }

    /// One optimizer step: this replica's shard through the engine, averaging, the optimizer at
    /// the schedule's rate (and, when due, a noise-scale measurement).
    fn step(&mut self, ep: &EpochState, order: &[i64]) -> Result<Option<f64>> {
        let (epoch, step) = (ep.epoch, ep.steps);
        let _span = crate::diag::trace::span("step", || format!("step {}", self.progress.global_step + 1));
        let replica = self.plan.topology.replica;
        let batch = StepBatch {
            poison: self.fault.at_step(self.progress.global_step + 1),
            shard: self.sampler.shard(order, step, replica),
            // Dropout masks come from a seed derived from the position, not from hidden RNG state.
            seed: mix_seed(&[self.cfg.run.seed, epoch as u64, step as u64, replica as u64]),
        };
        self.lr = self.schedule.lr(self.progress.global_step);
        // A tail batch has other batch sizes than the estimator's.
        let measure = self.plan.noise.is_some_and(|n| {
            n.due(self.progress.global_step + 1) && batch.shard.len() == self.plan.batches.per_replica
        });
        let loss = self.engine_step(&batch, measure);
        if let Some(loss) = loss.filter(|l| !l.is_finite()) {
            bail!(
                "rank {}: loss is {loss} at epoch {epoch} step {} (learning rate {}): training diverged",
                self.world.rank(),
                step + 1,
                self.lr
            );
        }
        let skip = self.fault.skips_averaging(self.progress.global_step + 1);
        let (sync, buffer) = (&mut self.sync, &mut self.buffer);
        let source = match skip {
            true => crate::train::grads::GradSource::Local,
            false => self.timers.averaging.time(|| sync.average(buffer)),
        };
        if measure {
            self.measure_noise(source);
        }
        let (buffer, optimizer, lr) = (&mut self.buffer, &mut self.optimizer, self.lr);
        self.timers.compute.time(|| {
            optimizer.step(buffer.values(), buffer.gradient(source), lr);
            buffer.zero_grads();
        });
        let p = &mut self.progress;
        p.first_step_seconds
            .get_or_insert_with(crate::util::seconds_since_process_start);
        p.global_step += 1;
        p.steps_here += 1;
        let (sync, buffer, step_now) = (&mut self.sync, &mut self.buffer, p.global_step);
        self.timers
            .averaging
            .time(|| sync.after_step(buffer, step_now, false));
        Ok(loss)
    }

    /// The engine's part of a step: this stage's forward and backward of every micro-batch
    /// (the overlapped variant sends finished blocks to the all-reduce thread as it goes).
    fn engine_step(&mut self, batch: &StepBatch, measure: bool) -> Option<f64> {
        if let Some(worker) = self.sync.worker() {
            let (data, buffer) = (&self.data.train, &self.buffer);
            return Some(
                self.engine
                    .overlapped_step(data, batch, buffer, worker, &mut self.timers),
            );
        }
        let mut norms = self.norms.as_mut().filter(|_| measure);
        if let Some(n) = norms.as_mut() {
            n.start();
        }
        self.engine
            .train_step(self.world, &self.data.train, batch, &mut self.timers, norms)
    }

    /// One noise-scale measurement (collective): the squared norms of the small gradients (each
    /// replica's, or each micro-batch's) and of their mean, summed over every rank's stage.
    fn measure_noise(&mut self, source: crate::train::grads::GradSource) {
        let plan = self.plan.noise.expect("measured only with a noise plan");
        let sq = |t: &Tensor| t.norm().double_value(&[]).powi(2);
        let m = self.plan.batches.micro_batches as f64;
        let small = match &self.norms {
            Some(n) => n.sum_sq * m * m,
            None => sq(self.buffer.grads()),
        };
        let big = sq(self.buffer.gradient(source));
        let (world, timers) = (self.world, &mut self.timers);
        let t = timers
            .averaging
            .time(|| crate::diag::flight::labelled("noise scale", || world.sum(&[small, big])));
        let replicas = self.plan.topology.replicas as f64;
        let (g2, s) =
            crate::train::noise_scale::estimates(&plan, t[0] / plan.small_count as f64, t[1] / replicas);
        self.noise.add(g2, s);
    }

    /// The epoch's books: timing, replica agreement, evaluation, metrics row, checkpoint.
    fn end_epoch(&mut self, mut ep: EpochState, steps_per_epoch: usize) -> Result<EvalRow> {
        if self.plan.topology.replicas > 1 {
            let sum = self.buffer.checksum_values();
            check_agreement(
                self.sync.group(),
                &format!("replica weights after epoch {}", ep.epoch),
                sum,
            )
            .context("replicas drifted apart: gradients were not averaged identically")?;
        }
        let row = self.evaluation_row(&mut ep, true)?;
        self.progress.train_seconds += row.epoch_seconds;
        self.progress.trained_samples += ep.samples;
        let every = self.cfg.checkpoint.every_epochs;
        if ep.steps == steps_per_epoch && every > 0 && ep.epoch.is_multiple_of(every) {
            self.checkpoint(Position {
                epoch_seconds: row.epoch_seconds,
                train_seconds: self.progress.train_seconds,
                trained_samples: self.progress.trained_samples,
                ..self.position(&ep)
            })?;
        }
        self.fault.after_epoch(ep.epoch);
        Ok(row)
    }

    /// Evaluates (collective), books the evaluation against the target and writes its row of
    /// `metrics.csv` (rank 0). `epoch_end`: the row that closes `ep`'s books.
    fn evaluation_row(&mut self, ep: &mut EpochState, epoch_end: bool) -> Result<EvalRow> {
        let epoch_seconds = ep.seconds();
        let losses = crate::diag::flight::labelled("epoch loss sums", || {
            self.world.sum(&[ep.loss_sum, ep.loss_count as f64])
        });
        let t_eval = Instant::now();
        let (test_loss, test_accuracy) = watchdog::in_phase(watchdog::Phase::Evaluate, || self.evaluate());
        let eval_seconds = t_eval.elapsed().as_secs_f64();
        ep.eval_seconds += eval_seconds;
        let images = self.progress.trained_samples + ep.samples;
        let evaluation = Evaluation {
            seconds: eval_seconds,
            accuracy: test_accuracy,
            step: self.progress.global_step,
            images,
            noise_scale: self.noise.value(),
        };
        let first_at_target = self.ttt.evaluated(&evaluation, self.sampler.samples_per_epoch());
        let (now, then) = (self.timers, ep.timers_at_start);
        let row = EvalRow {
            epoch: ep.epoch,
            steps: ep.steps,
            global_step: self.progress.global_step,
            images,
            epoch_end,
            train_loss: losses[0] / losses[1].max(1.0),
            test_loss,
            test_accuracy,
            epoch_seconds,
            samples_per_second: ep.samples as f64 / epoch_seconds,
            compute_s: now.compute.seconds - then.compute.seconds,
            allreduce_s: now.averaging.seconds - then.averaging.seconds,
            pipeline_wait_s: now.wait.seconds - then.wait.seconds,
            eval_seconds,
            run_seconds: self.ttt.run_seconds(),
            lr: self.lr,
            noise_scale: evaluation.noise_scale,
            peak_rss_mb: peak_rss_mb(),
        };
        if let Some(w) = self.metrics.as_mut() {
            w.row(&row)?;
            self.print_row(&row, first_at_target);
        }
        Ok(row)
    }

    fn print_row(&self, row: &EvalRow, first_at_target: bool) {
        let noise = row
            .noise_scale
            .map_or(String::new(), |b| format!(", noise scale {b:.0}"));
        if row.epoch_end {
            println!(
                "epoch {}/{}: train loss {:.4}, test loss {:.4}, test accuracy {:.2}%, {:.1} s, {:.0} img/s{noise}",
                row.epoch,
                self.cfg.train.epochs,
                row.train_loss,
                row.test_loss,
                row.test_accuracy,
                row.epoch_seconds,
                row.samples_per_second
            );
        } else {
            println!(
                "step {} (epoch {}, step {}): test loss {:.4}, test accuracy {:.2}%, run {:.1} s{noise}",
                row.global_step, row.epoch, row.steps, row.test_loss, row.test_accuracy, row.run_seconds
            );
        }
        if let (true, Some(r)) = (first_at_target, self.ttt.reached()) {
            println!(
                "target {}% reached: test accuracy {:.2}% after {} steps ({:.2} epochs, {} images) in {:.1} s",
                self.cfg.train.target_accuracy.unwrap_or(0.0),
                r.accuracy,
                r.step,
                r.epochs,
                r.images,
                r.seconds
            );
        }
    }

    /// Test loss (mean) and accuracy (percent) of the current weights, sharded across the
    /// replicas and pipelined through the stages; every rank gets the serial evaluator's numbers.
    fn evaluate(&mut self) -> (f64, f64) {
        let s = self
            .engine
            .evaluate(self.world, &self.data.test, self.cfg.train.eval_batch_size);
        let t = crate::diag::flight::labelled("evaluation sums", || {
            self.world.sum(&[s.loss_sum, s.correct, s.count])
        });
        (t[0] / t[2], 100.0 * t[1] / t[2])
    }

    /// The position after the last step of `ep` (mid-epoch; `end_epoch` adds the epoch's totals).
    fn position(&self, ep: &EpochState) -> Position {
        Position {
            epoch: ep.epoch,
            step_in_epoch: ep.steps,
            global_step: self.progress.global_step,
            trained_samples: self.progress.trained_samples + ep.samples,
            train_seconds: self.progress.train_seconds + ep.seconds(),
            epoch_loss_sum: ep.loss_sum,
            epoch_loss_count: ep.loss_count,
            epoch_samples: ep.samples,
            epoch_seconds: ep.seconds(),
            noise: self.noise,
            target: self.ttt.books(),
        }
    }

    /// Gathers every weight and momentum buffer on rank 0 and writes the checkpoint there.
    /// Called on every rank at the same step.
    fn checkpoint(&self, position: Position) -> Result<()> {
        watchdog::in_phase(watchdog::Phase::Checkpoint, || self.write_checkpoint(position))
    }

    fn write_checkpoint(&self, position: Position) -> Result<()> {
        let _span = crate::diag::trace::span("checkpoint", || "checkpoint".into());
        let mut tensors = self.gather_weights();
        let momentum: Vec<(String, Tensor)> = self
            .engine
            .net
            .named_parameters()
            .into_iter()
            .zip(&self.optimizer.buffers)
            .map(|((n, _), m)| (format!("momentum.{n}"), m.shallow_clone()))
            .collect();
        tensors.extend(gather_to_root(momentum, "momentum.", self.plan, self.world));
        if self.world.is_root() {
            let layout = self.plan.layout(self.sampler.samples_per_epoch());
            let meta = Meta::new(self.cfg.resume_hash(), position, layout);
            Checkpoint { meta, tensors }.save(self.dir)?;
        }
        Ok(())
    }

    /// All weights with their state_dict names, on rank 0 (other ranks get an empty list).
    fn gather_weights(&self) -> Vec<(String, Tensor)> {
        let own = self
            .engine
            .net
            .named_parameters()
            .into_iter()
            .map(|(n, t)| (n, crate::model::dense(t)))
            .collect();
        gather_to_root(own, "", self.plan, self.world)
    }

    fn progress_bar(&self, epoch: usize, steps: usize) -> Option<ProgressBar> {
        if !self.world.is_root() || !std::io::stdout().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{}", self.cfg.train.epochs));
        Some(bar)
    }

    fn show_progress(&self, bar: Option<&ProgressBar>, ep: &EpochState, loss: Option<f64>) {
        let ips = ep.samples as f64 / ep.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(b) = bar {
            b.inc(1);
            if ep.steps % 10 == 1 {
                b.set_message(format!("loss {:.4} {ips:.0} img/s", loss.unwrap_or(f64::NAN)));
            }
        } else if self.world.is_root() && ep.steps.is_multiple_of(self.cfg.train.log_every) {
            println!(
                "epoch {}/{} step {}/{} {ips:.0} img/s",
                ep.epoch,
                self.cfg.train.epochs,
                ep.steps,
                self.sampler.steps_per_epoch()
            );
        }
    }

    /// The last epoch's row is in; writes `model.safetensors`, `summary.json` and, when tracing,
    /// `trace.json` (rank 0).
    fn finish(&mut self, last: &EvalRow) -> Result<Summary> {
        let named = self.gather_weights();
        let summary = Summary::collect(self, last);
        if crate::diag::trace::enabled() {
            self.write_trace()?;
        }
        if self.metrics.is_some() {
            run_dir::write_model(self.dir, &named)?;
            crate::record::summary::write_summary(self.dir, &summary)?;
            println!(
                "done: test accuracy {:.2}%, {:.1} s training, {:.0} img/s -> {}",
                summary.final_test_accuracy,
                summary.train_seconds,
                summary.samples_per_second,
                self.dir.display()
            );
        }
        Ok(summary)
    }
}

impl Trainer<'_> {
    /// Gathers every rank's trace events on rank 0, aligns their clocks and writes `trace.json`.
    fn write_trace(&self) -> Result<()> {
        let (plan, world) = (self.plan, self.world);
        let t = plan.topology;
        let mine = crate::diag::trace::RankTrace {
            rank: world.rank(),
            node: plan.world.node_of_rank[world.rank()],
            host: crate::util::hostname(),
            label: format!("rank {} (stage {}, replica {})", world.rank(), t.stage, t.replica),
            offset_us: 0.0,
            events: crate::diag::trace::take()
                .iter()
                .map(|e| serde_json::to_value(e).expect("events serialise"))
                .collect(),
        };
        let Some(all) = world.gather_bytes(&serde_json::to_vec(&mine)?) else {
            return Ok(());
        };
        let mut ranks: Vec<crate::diag::trace::RankTrace> = all
            .iter()
            .map(|b| serde_json::from_slice(b))
            .collect::<Result<_, _>>()?;
        for r in &mut ranks {
            r.offset_us = self.clock_offsets.get(r.rank).copied().unwrap_or(0.0);
        }
        crate::util::atomic::write(
            &self.dir.join("trace.json"),
            &serde_json::to_vec(&crate::diag::trace::merge(&ranks))?,
        )
    }
}

impl Summary {
    /// The run's summary from the trainer's books and every rank's figures (collective).
    fn collect(t: &Trainer, last: &EvalRow) -> Summary {
        let (plan, world, cfg) = (t.plan, t.world, t.cfg);
        let peak = world.all_gather(peak_rss_mb());
        let wait_per_rank = world.all_gather(t.timers.wait.seconds);
        let compute_per_rank = world.all_gather(t.timers.compute.seconds);
        let activation_mb = world.all_gather(t.engine.peak_activation_bytes as f64 / (1024.0 * 1024.0));
        let p = t.progress;
        let reached = t.ttt.reached();
        let flop = crate::model::training_flop_per_image(&plan.layers, plan.input_shape) as f64;
        let samples_per_second = p.trained_samples as f64 / p.train_seconds;
        let achieved_gflops = samples_per_second * flop / 1e9;
        Summary {
            format: crate::record::summary::FORMAT.into(),
            version: crate::record::summary::VERSION,
            status: "completed".into(),
            strategy: plan.strategy,
            dataset: t.data.name.as_str().into(),
            model: cfg.model.preset.as_str().into(),
            world_size: world.size(),
            nodes: plan.world.nodes(),
            ranks_per_node: plan.world.ranks_per_node(),
            hostnames: world.hostnames(),
            machines: {
                let mut ids = world.all_gather(crate::util::machine_id());
                ids.sort_unstable();
                ids.dedup();
                ids.len()
            },
            // The node's online CPUs, not this process's affinity mask (one core under --bind-to core).
            cores_per_node: crate::util::node_cores(),
            stages: plan.topology.stages,
            replicas: plan.topology.replicas,
            threads_per_rank: tch::get_num_threads() as usize,
            epochs: last.epoch,
            steps: p.global_step,
            global_batch: plan.batches.global,
            micro_batches: plan.batches.micro_batches,
            stage_boundaries: plan.split.boundaries.clone(),
            placement: plan.topology.placement,
            batch_scope: cfg.train.batch_scope,
            sync_mode: cfg.sync.mode,
            gradient_averaging: plan.grad_sync.name().into(),
            parameters: plan.layers.iter().map(|s| s.kind.parameter_count()).sum(),
            train_samples: t.data.train.len(),
            test_samples: t.data.test.len(),
            train_seconds: p.train_seconds,
            samples_per_second,
            training_flop_per_image: flop,
            achieved_gflops,
            peak_gflops: t.peak_gflops,
            fraction_of_peak: t.peak_gflops.map(|peak| achieved_gflops / peak),
            final_test_accuracy: last.test_accuracy,
            final_test_loss: last.test_loss,
            final_train_loss: last.train_loss,
            peak_rss_mb: peak,
            compute_seconds: t.timers.compute.seconds,
            allreduce_seconds: t.timers.averaging.seconds,
            pipeline_wait_seconds: t.timers.wait.seconds,
            first_step_seconds: p.first_step_seconds.unwrap_or(0.0),
            seed: cfg.run.seed,
            config_hash: format!("{:016x}", cfg.hash()),
            optimizer: Some(plan.optim.clone()),
            steps_per_epoch: t.sampler.steps_per_epoch(),
            eval_every_steps: cfg.train.eval_every_steps,
            target_accuracy: cfg.train.target_accuracy,
            time_to_target_s: reached.map(|r| r.seconds),
            steps_to_target: reached.map(|r| r.step),
            epochs_to_target: reached.map(|r| r.epochs),
            images_to_target: reached.map(|r| r.images),
            stopped_at_target: t.target_stops_the_run(),
            run_seconds: t.ttt.run_seconds(),
            evaluations: t.ttt.evaluations(),
            eval_seconds: t.ttt.eval_seconds(),
            noise_scale: t.noise.value(),
            noise_scale_at_target: reached.and_then(|r| r.noise_scale),
            preflight: t.preflight.clone(),
            pipeline: (plan.topology.stages > 1).then(|| {
                crate::record::summary::PipelineSummary::from_measurements(
                    plan,
                    p.steps_here,
                    p.train_seconds,
                    compute_per_rank,
                    wait_per_rank,
                    activation_mb,
                )
            }),
        }
    }
}
