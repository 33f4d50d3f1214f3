//! Checkpoints of a running trainer: its position, its weights and the optimizer's named state
//! (`<state>.<parameter>`) gathered on rank 0,
//! a stop at a step boundary after a signal, and the restore on `--resume`.

use crate::diag::watchdog;
use crate::train::checkpoint::{gather_rank_state, gather_to_root, Checkpoint, Meta, Position};
use crate::train::run_dir::{self};
use crate::train::target::TimeToTarget;
use anyhow::{Context, Result};
use tch::Tensor;

use super::trainer::{EpochEnd, EpochState, Outcome, Trainer};

impl Trainer<'_> {
    /// The position after the last step of `ep` (mid-epoch; `end_epoch` adds the epoch's totals).
    pub(super) fn position(&self, ep: &EpochState) -> Position {
        Position {
            epoch: ep.epoch,
            step_in_epoch: ep.steps,
            global_step: self.books.progress.global_step,
            trained_samples: self.books.progress.trained_samples + ep.samples,
            train_seconds: self.books.progress.train_seconds + ep.seconds(),
            epoch_loss_sum: ep.loss_sum,
            epoch_loss_count: ep.loss_count,
            epoch_samples: ep.samples,
            epoch_seconds: ep.seconds(),
            noise: self.core.noise,
            target: self.books.ttt.books(),
        }
    }

    /// Gathers every weight and optimizer state on rank 0 and writes the checkpoint there.
    /// Called on every rank at the same step.
    pub(super) fn checkpoint(&mut self, position: Position) -> Result<()> {
        watchdog::in_phase(watchdog::Phase::Checkpoint, || self.write_checkpoint(position))
    }

    pub(super) fn write_checkpoint(&mut self, position: Position) -> Result<()> {
        let _span = crate::diag::trace::span("checkpoint", || "checkpoint".into());
        let mut tensors = self.gather_weights();
        let names: Vec<String> = self
            .core
            .engine
            .net
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for slot in self.core.optimizer.state() {
            let prefix = format!("{}.", slot.name);
            let state = names
                .iter()
                .zip(&slot.views)
                .map(|(n, v)| (format!("{prefix}{n}"), v.shallow_clone()))
                .collect();
            tensors.extend(gather_to_root(state, (&prefix, false), self.plan, self.world));
        }
        tensors.extend(gather_rank_state(self.core.sync.rank_state(), self.world));
        if let Some((prefix, views)) = self.core.sync.checkpoint_state() {
            let state = names
                .iter()
                .zip(views)
                .map(|(n, v)| (format!("{prefix}{n}"), v.shallow_clone()))
                .collect();
            tensors.extend(gather_to_root(state, (prefix, false), self.plan, self.world));
        }
        if self.world.is_root() {
            let layout = self.plan.layout(self.sampler.samples_per_epoch());
            let net = format!("{} (net {})", self.plan.net_name, self.plan.net_id);
            let meta = Meta::new(self.plan.run.resume_hash, position, layout, net);
            Checkpoint { meta, tensors }.save(self.dir)?;
        }
        Ok(())
    }

    /// All weights and batch-norm buffers with their state_dict names, on rank 0 (other ranks
    /// get an empty list).
    pub(super) fn gather_weights(&self) -> Vec<(String, Tensor)> {
        let own = self
            .core
            .engine
            .net
            .named_state()
            .into_iter()
            .map(|(n, t)| (n, crate::model::dense(t)))
            .collect();
        gather_to_root(own, ("", true), self.plan, self.world)
    }

    /// Checkpoints at `ep`'s position and marks the run interrupted (rank 0).
    pub(super) fn stop_here(&mut self, ep: &EpochState) -> Result<EpochEnd> {
        let position = self.position(ep);
        self.checkpoint(position)?;
        let signal = crate::train::stop::requested()
            .map_or("a signal on another rank", crate::train::stop::signal_name);
        if self.world.is_root() {
            run_dir::mark_interrupted(self.dir, signal, self.books.progress.global_step)?;
            println!(
                "stopped after global step {} ({signal}): checkpoint written to {}; continue with --resume or --auto-resume",
                self.books.progress.global_step,
                self.dir.display()
            );
        }
        Ok(EpochEnd::Stopped(Outcome::Interrupted {
            global_step: self.books.progress.global_step,
        }))
    }

    /// The averaging's saved state (one-step-stale: the mean the next step applies), if the
    /// checkpoint has it.
    fn restore_averaging(&mut self, ck: &Checkpoint) -> Result<()> {
        let own = format!(".rank{}", self.world.rank());
        let targets = self.core.sync.rank_state_targets();
        let mine: Vec<_> = targets
            .iter()
            .filter(|(n, _)| ck.has_prefix(&format!("{n}{own}")))
            .collect();
        for (name, t) in &mine {
            ck.copy_into(&format!("{name}{own}"), t)
                .with_context(|| format!("--resume: {}", self.dir.display()))?;
        }
        if !mine.is_empty() {
            self.core.sync.restored_rank_state();
        }
        let names = self.core.engine.net.named_parameters();
        let Some((prefix, views)) = self.core.sync.restore_target() else {
            return Ok(());
        };
        if !ck.has_prefix(prefix) {
            return Ok(());
        }
        for ((name, _), v) in names.iter().zip(views) {
            ck.copy_into(&format!("{prefix}{name}"), v)
                .with_context(|| format!("--resume: {}", self.dir.display()))?;
        }
        self.core.sync.restored();
        Ok(())
    }

    pub(super) fn restore(&mut self, ck: &Checkpoint) -> Result<()> {
        let names = self.core.engine.net.named_parameters();
        let context = || format!("--resume: {}", self.dir.display());
        for (i, (name, p)) in names.iter().enumerate() {
            ck.copy_into(name, p).with_context(context)?;
            for slot in self.core.optimizer.state() {
                ck.copy_into(&format!("{}.{name}", slot.name), &slot.views[i])
                    .with_context(context)?;
            }
        }
        for (name, b) in self.core.engine.net.named_buffers() {
            ck.copy_into(&name, b).with_context(context)?;
        }
        self.restore_averaging(ck)?;
        let p = ck.meta.position;
        self.books.progress.global_step = p.global_step;
        self.books.progress.trained_samples = p.trained_samples;
        self.books.progress.train_seconds = p.train_seconds;
        self.core.noise = p.noise;
        self.books.ttt = TimeToTarget::new(self.plan.run.target_accuracy, p.target);
        self.core.lr = self.core.schedule.lr(p.global_step.saturating_sub(1));
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
}
