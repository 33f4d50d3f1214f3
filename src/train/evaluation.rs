//! A rank's evaluations: at each epoch's end and every `train.eval_every_steps`, booked against
//! the target and written to metrics.csv (rank 0).

use crate::diag::watchdog;
use crate::record::metrics_csv::EvalRow;
use crate::train::checkpoint::Position;
use crate::train::target::Evaluation;
use crate::util::peak_rss_mb;
use anyhow::{Context, Result};
use std::time::Instant;

use super::launch::check_agreement;
use super::trainer::{EpochState, Trainer};

impl Trainer<'_> {
    /// The epoch's books: timing, replica agreement, evaluation, metrics row, checkpoint.
    pub(super) fn end_epoch(&mut self, mut ep: EpochState, steps_per_epoch: usize) -> Result<EvalRow> {
        if self.plan.topology.replicas > 1 {
            let sum = self.core.buffer.checksum_values();
            check_agreement(
                self.core.sync.group(),
                &format!("replica weights after epoch {}", ep.epoch),
                sum,
            )
            .context("replicas drifted apart: gradients were not averaged identically")?;
        }
        let row = self.evaluation_row(&mut ep, true)?;
        self.books.progress.train_seconds += row.epoch_seconds;
        self.books.progress.trained_samples += ep.samples;
        let every = self.plan.run.checkpoint_every_epochs;
        if ep.steps == steps_per_epoch && every > 0 && ep.epoch.is_multiple_of(every) {
            self.checkpoint(Position {
                epoch_seconds: row.epoch_seconds,
                train_seconds: self.books.progress.train_seconds,
                trained_samples: self.books.progress.trained_samples,
                ..self.position(&ep)
            })?;
        }
        self.fault.after_epoch(ep.epoch);
        Ok(row)
    }

    /// Evaluates (collective), books the evaluation against the target and writes its row of
    /// `metrics.csv` (rank 0). `epoch_end`: the row that closes `ep`'s books.
    pub(super) fn evaluation_row(&mut self, ep: &mut EpochState, epoch_end: bool) -> Result<EvalRow> {
        let epoch_seconds = ep.seconds();
        let losses = crate::diag::flight::labelled("epoch loss sums", || {
            self.world.sum(&[ep.loss_sum, ep.loss_count as f64])
        });
        let t_eval = Instant::now();
        let (test_loss, test_accuracy) = watchdog::in_phase(watchdog::Phase::Evaluate, || self.evaluate());
        let eval_seconds = t_eval.elapsed().as_secs_f64();
        ep.eval_seconds += eval_seconds;
        let images = self.books.progress.trained_samples + ep.samples;
        let evaluation = Evaluation {
            seconds: eval_seconds,
            accuracy: test_accuracy,
            step: self.books.progress.global_step,
            images,
            noise_scale: self.core.noise.value(),
        };
        let first_at_target = self
            .books
            .ttt
            .evaluated(&evaluation, self.sampler.samples_per_epoch());
        let (now, then) = (self.core.timers, ep.timers_at_start);
        let row = EvalRow {
            epoch: ep.epoch,
            steps: ep.steps,
            global_step: self.books.progress.global_step,
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
            run_seconds: self.books.ttt.run_seconds(),
            lr: self.core.lr,
            noise_scale: evaluation.noise_scale,
            peak_rss_mb: peak_rss_mb(),
        };
        if let Some(w) = self.books.metrics.as_mut() {
            w.row(&row)?;
            self.print_row(&row, first_at_target);
        }
        Ok(row)
    }

    pub(super) fn print_row(&self, row: &EvalRow, first_at_target: bool) {
        let noise = row
            .noise_scale
            .map_or(String::new(), |b| format!(", noise scale {b:.0}"));
        if row.epoch_end {
            println!(
                "epoch {}/{}: train loss {:.4}, test loss {:.4}, test accuracy {:.2}%, {:.1} s, {:.0} img/s{noise}",
                row.epoch,
                self.plan.run.epochs,
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
        if let (true, Some(r)) = (first_at_target, self.books.ttt.reached()) {
            println!(
                "target {}% reached: test accuracy {:.2}% after {} steps ({:.2} epochs, {} images) in {:.1} s",
                self.plan.run.target_accuracy.unwrap_or(0.0),
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
    pub(super) fn evaluate(&mut self) -> (f64, f64) {
        let s = self
            .core
            .engine
            .evaluate(self.world, &self.data.test, self.plan.run.eval_batch_size);
        let t = crate::diag::flight::labelled("evaluation sums", || {
            self.world.sum(&[s.loss_sum, s.correct, s.count])
        });
        (t[0] / t[2], 100.0 * t[1] / t[2])
    }

    /// The last row of a run resumed after its last step, from the checkpoint's position and a
    /// fresh evaluation of its weights (the same numbers the row on disk holds; no row is written).
    pub(super) fn final_row(&mut self, p: Position) -> EvalRow {
        let losses = crate::diag::flight::labelled("epoch loss sums", || {
            self.world.sum(&[p.epoch_loss_sum, p.epoch_loss_count as f64])
        });
        let (test_loss, test_accuracy) = watchdog::in_phase(watchdog::Phase::Evaluate, || self.evaluate());
        EvalRow {
            epoch: p.epoch,
            steps: p.step_in_epoch,
            global_step: p.global_step,
            images: p.trained_samples,
            epoch_end: true,
            train_loss: losses[0] / losses[1].max(1.0),
            test_loss,
            test_accuracy,
            epoch_seconds: p.epoch_seconds,
            samples_per_second: p.epoch_samples as f64 / p.epoch_seconds.max(1e-9),
            compute_s: 0.0,
            allreduce_s: 0.0,
            pipeline_wait_s: 0.0,
            eval_seconds: 0.0,
            run_seconds: self.books.ttt.run_seconds(),
            lr: self.core.lr,
            noise_scale: self.core.noise.value(),
            peak_rss_mb: peak_rss_mb(),
        }
    }
}
