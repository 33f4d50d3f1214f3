//! The end of a run and the progress on the way: the progress bar, the model, the summary
//! collected from every rank, the trace gathered on rank 0.

use crate::record::metrics_csv::EvalRow;
use crate::record::summary::Summary;
use crate::train::run_dir::{self};
use crate::util::peak_rss_mb;
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

use super::trainer::{EpochState, Trainer};

impl Trainer<'_> {
    /// A bar where it can be seen, else a progress line every `train.log_every` steps. The bar is
    /// drawn on stderr, so stderr decides: under mpirun, rank 0's stdout is a pseudo-terminal but
    /// its stderr a pipe, and a bar chosen by stdout was drawn nowhere (no progress at all in dp).
    pub(super) fn progress_bar(&self, epoch: usize, steps: usize) -> Option<ProgressBar> {
        if !self.world.is_root() || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{}", self.plan.run.epochs));
        Some(bar)
    }

    pub(super) fn show_progress(&self, bar: Option<&ProgressBar>, ep: &EpochState, loss: Option<f64>) {
        let ips = ep.samples as f64 / ep.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(b) = bar {
            b.inc(1);
            if ep.steps % 10 == 1 {
                b.set_message(format!("loss {:.4} {ips:.0} img/s", loss.unwrap_or(f64::NAN)));
            }
        } else if self.world.is_root()
            && self
                .books
                .progress
                .global_step
                .is_multiple_of(self.plan.run.log_every)
        {
            println!(
                "epoch {}/{} step {}/{} (global step {}) {ips:.0} img/s, rss {:.0} MB",
                ep.epoch,
                self.plan.run.epochs,
                ep.steps,
                self.sampler.steps_per_epoch(),
                self.books.progress.global_step,
                crate::util::rss_mb()
            );
        }
    }

    /// The last epoch's row is in; writes `model.safetensors`, `summary.json` and, when tracing,
    /// `trace.json` (rank 0).
    pub(super) fn finish(&mut self, last: &EvalRow) -> Result<Summary> {
        let named = self.gather_weights();
        let summary = Summary::collect(self, last);
        if crate::diag::trace::enabled() {
            self.write_trace()?;
        }
        if self.books.metrics.is_some() {
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

    /// Gathers every rank's trace events on rank 0, aligns their clocks and writes `trace.json`.
    pub(super) fn write_trace(&self) -> Result<()> {
        let (plan, world) = (self.plan, self.world);
        crate::diag::trace::flush().context("cannot write this rank's trace stream")?;
        // Every rank's stream is complete before rank 0 reads them (collective).
        world.barrier();
        if !world.is_root() {
            return Ok(());
        }
        let files: Vec<(std::path::PathBuf, f64)> = (0..plan.world.size)
            .map(|r| {
                (
                    trace_stream(self.dir, r),
                    self.books.clock_offsets.get(r).copied().unwrap_or(0.0),
                )
            })
            .collect();
        crate::util::atomic::write_with(&self.dir.join(crate::util::run_files::TRACE), |tmp| {
            let mut out = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            crate::diag::trace::merge_files(&files, &mut out)?;
            Ok(std::io::Write::flush(&mut out)?)
        })
    }
}

impl Trainer<'_> {
    /// A pipeline's figures from every rank's compute, waits and activations (collective; None
    /// with one stage).
    fn pipeline_summary(&self) -> Option<crate::record::summary::PipelineSummary> {
        let world = self.world;
        let wait_per_rank = world.all_gather(self.core.timers.wait.seconds);
        let compute_per_rank = world.all_gather(self.core.timers.compute.seconds);
        let activation_mb =
            world.all_gather(self.core.engine.peak_activation_bytes as f64 / (1024.0 * 1024.0));
        let p = self.books.progress;
        (self.plan.topology.stages > 1).then(|| {
            crate::record::summary::PipelineSummary::from_measurements(
                self.plan,
                p.steps_here,
                p.train_seconds,
                compute_per_rank,
                wait_per_rank,
                activation_mb,
            )
        })
    }

    /// The averaging's traffic (the largest over ranks: collective), overlap and link.
    fn averaging_summary(&self) -> crate::record::summary::AveragingSummary {
        let sent = self.world.all_gather(self.core.sync.sent_bytes_per_step());
        let overlap = self.core.sync.overlap_figures();
        crate::record::summary::AveragingSummary {
            compress: self.plan.compress,
            sent_bytes_per_step: sent.into_iter().fold(0.0, f64::max),
            overlapped_allreduce_seconds: overlap.map(|f| f.0),
            averaging_hidden_fraction: overlap.map(|f| f.1),
            link: crate::comm::emulated_link(),
        }
    }

    /// Time to target and the noise scale as the summary records them.
    fn target_summary(&self) -> crate::record::summary::TargetSummary {
        let reached = self.books.ttt.reached();
        crate::record::summary::TargetSummary {
            target_accuracy: self.plan.run.target_accuracy,
            time_to_target_s: reached.map(|r| r.seconds),
            steps_to_target: reached.map(|r| r.step),
            epochs_to_target: reached.map(|r| r.epochs),
            images_to_target: reached.map(|r| r.images),
            stopped_at_target: self.target_stops_the_run(),
            run_seconds: self.books.ttt.run_seconds(),
            evaluations: self.books.ttt.evaluations(),
            eval_seconds: self.books.ttt.eval_seconds(),
            best_test_accuracy: self.books.ttt.best_accuracy(),
            noise_scale: self.core.noise.value(),
            noise_scale_at_target: reached.and_then(|r| r.noise_scale),
        }
    }
}

/// Rank `rank`'s trace stream in the run folder `dir`.
pub(super) fn trace_stream(dir: &std::path::Path, rank: usize) -> std::path::PathBuf {
    dir.join("trace").join(format!("rank{rank}.jsonl"))
}

/// Training images/s, FLOP per training image and the GFLOP/s they make.
fn rates(t: &Trainer) -> (f64, f64, f64) {
    let flop = crate::model::training_flop_per_image(&t.plan.layers, t.plan.input_shape) as f64;
    let samples_per_second = t.books.progress.trained_samples as f64 / t.books.progress.train_seconds;
    (samples_per_second, flop, samples_per_second * flop / 1e9)
}

/// When rank 0's process started and now (seconds since 1970), and the distinct machines (boot
/// ids) under the ranks (collective).
fn when_and_where(world: &crate::comm::Comm) -> (Option<f64>, Option<f64>, Vec<String>) {
    let now = crate::diag::flight::unix_us() / 1e6;
    let mut ids: Vec<String> = world
        .all_gather(crate::util::machine_id())
        .iter()
        .map(|id| format!("{id:016x}"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    (
        Some(now - crate::util::seconds_since_process_start()),
        Some(now),
        ids,
    )
}

impl Summary {
    /// The run's summary from the trainer's books and every rank's figures (collective).
    fn collect(t: &Trainer, last: &EvalRow) -> Summary {
        let (plan, world, run) = (t.plan, t.world, &t.plan.run);
        let (peak, p) = (world.all_gather(peak_rss_mb()), t.books.progress);
        let (samples_per_second, flop, achieved_gflops) = rates(t);
        let (started_unix, finished_unix, machine_ids) = when_and_where(world);
        Summary {
            format: crate::record::summary::FORMAT.into(),
            version: crate::record::summary::VERSION,
            status: "completed".into(),
            strategy: plan.strategy,
            dataset: t.data.name.as_str().into(),
            model: plan.net_name.clone(),
            model_id: plan.net_id.clone(),
            // The node's online CPUs, not this process's affinity mask (one core under --bind-to core).
            world: plan.world.facts(crate::util::node_cores()),
            stages: plan.topology.stages,
            replicas: plan.topology.replicas,
            threads_per_rank: tch::get_num_threads() as usize,
            epochs: last.epoch,
            steps: p.global_step,
            global_batch: plan.batches.global,
            micro_batches: plan.batches.micro_batches,
            stage_boundaries: plan.split.boundaries.clone(),
            placement: plan.topology.placement,
            batch_scope: run.batch_scope,
            sync_mode: run.sync_mode,
            gradient_averaging: plan.grad_sync,
            average_every: plan.average_every,
            averaging: t.averaging_summary(),
            parameters: plan.layers.iter().map(|s| s.kind.parameter_count()).sum(),
            train_samples: t.data.train.len(),
            test_samples: t.data.test.len(),
            train_seconds: p.train_seconds,
            samples_per_second,
            training_flop_per_image: flop,
            achieved_gflops,
            peak_gflops: t.books.peak_gflops,
            fraction_of_peak: t.books.peak_gflops.map(|peak| achieved_gflops / peak),
            final_test_accuracy: last.test_accuracy,
            final_test_loss: last.test_loss,
            final_train_loss: last.train_loss,
            peak_rss_mb: peak,
            compute_seconds: t.core.timers.compute.seconds,
            allreduce_seconds: t.core.timers.averaging.seconds,
            pipeline_wait_seconds: t.core.timers.wait.seconds,
            first_step_seconds: p.first_step_seconds.unwrap_or(0.0),
            seed: run.seed,
            config_hash: format!("{:016x}", run.config_hash),
            optimizer: Some(plan.optim.clone()),
            steps_per_epoch: t.sampler.steps_per_epoch(),
            eval_every_steps: run.eval_cadence(t.sampler.steps_per_epoch()).every,
            target: t.target_summary(),
            preflight: t.books.preflight.clone(),
            started_unix,
            finished_unix,
            machine_ids,
            pipeline: t.pipeline_summary(),
        }
    }
}
