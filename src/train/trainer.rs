//! The training loop, as named steps (`launch::run` resolves the plan and opens the run): a
//! `Trainer` runs epochs (`run_epoch`) of steps (`step`), then `evaluate`s, `checkpoint`s, and finally
//! writes the model and the `Summary`.
//!
//!   partrain serial --config configs/base.yaml [--set train.epochs=3] [--out DIR]
//!   mpirun -np 2 partrain dp --config configs/data_parallel.yaml [--set ...] [--out DIR]
//!   mpirun -np 4 partrain hybrid --config configs/hybrid_pipeline.yaml [--set ...] [--out DIR]
//!
//! One step, read top-down: `Trainer::step` -> `Engine::train_step` (this rank's stage: forward
//! and backward of every micro-batch, sends and receives included, gradients accumulated in the
//! flat buffer) -> `Averager::average` -> `Optimizer::step` -> the batch-norm statistics ->
//! `Averager::after_step`.
//!
//! The trainer is built in one place (`Trainer::new`) from the plan alone, never the config, and
//! holds two parts: the step core (`StepCore`: engine, flat buffers, averager, optimizer and its
//! schedule, noise scale, timers) and the run's books (`Books`: progress, time to target, the
//! metrics file, the summary's facts).

use crate::comm::Comm;
use crate::data::sampler::Sampler;
use crate::data::Dataset;
use crate::diag::watchdog;
use crate::plan::optim::LrSchedule;
use crate::plan::Plan;
use crate::record::metrics_csv::{EvalRow, MetricsWriter};
use crate::record::summary::Summary;
use crate::train::averager::Averager;
use crate::train::checkpoint::{Checkpoint, Position};
use crate::train::engine::Overlap;
use crate::train::engine::{Engine, StepBatch};
use crate::train::faults::Fault;
use crate::train::grads::GradientBuffer;
use crate::train::noise_scale::{MicroBatchNorms, NoiseState};
use crate::train::optimizer::Optimizer;
use crate::train::target::TimeToTarget;
use crate::train::timers::StepTimers;
use crate::util::mix_seed;
use anyhow::{bail, Result};
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
pub(super) enum EpochEnd {
    Done(EvalRow),
    AtTarget(EvalRow),
    Stopped(Outcome),
}

/// Training so far (restored from a checkpoint on `--resume`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Progress {
    pub(super) global_step: usize,
    pub(super) trained_samples: usize,
    pub(super) train_seconds: f64,
    /// Steps taken by this process (not before a resume).
    pub(super) steps_here: usize,
    pub(super) first_step_seconds: Option<f64>,
}

/// One epoch in progress.
pub(super) struct EpochState {
    pub(super) epoch: usize,
    pub(super) steps: usize,
    pub(super) samples: usize,
    pub(super) loss_sum: f64,
    pub(super) loss_count: usize,
    pub(super) started: Instant,
    /// Seconds of this epoch spent before a mid-epoch resume.
    pub(super) prior_seconds: f64,
    /// Seconds of evaluations inside this epoch (`train.eval_every_steps`): not training time.
    pub(super) eval_seconds: f64,
    pub(super) timers_at_start: StepTimers,
}

impl EpochState {
    /// Training seconds of this epoch so far.
    pub(super) fn seconds(&self) -> f64 {
        self.prior_seconds + self.started.elapsed().as_secs_f64() - self.eval_seconds
    }
}

/// The step core: what one optimizer step runs on (this rank's stage, its flat buffers, the
/// averaging, the optimizer and its schedule, the noise-scale estimates) and its timers.
pub struct StepCore {
    pub(super) engine: Engine,
    pub(super) optimizer: Optimizer,
    pub(super) schedule: LrSchedule,
    /// The rate of the last step.
    pub(super) lr: f64,
    /// The smoothed noise-scale estimates, and with several micro-batches their gradients' norms.
    pub(super) noise: NoiseState,
    pub(super) norms: Option<MicroBatchNorms>,
    pub(super) sync: Averager,
    pub(super) buffer: GradientBuffer,
    pub(super) timers: StepTimers,
}

/// The run's books: where training stands, the time to target, the metrics file and the facts
/// the summary reports (the machine's peak, the preflight, trace clock offsets).
pub struct Books {
    pub(super) progress: Progress,
    /// The run clock and the first reach of the target.
    pub(super) ttt: TimeToTarget,
    pub(super) metrics: Option<MetricsWriter>,
    /// The machine's peak for all ranks, when measured (`PARTRAIN_PEAK`).
    pub(super) peak_gflops: Option<f64>,
    /// The start-up preflight's figures, for the summary.
    pub(super) preflight: Option<crate::record::preflight::Preflight>,
    /// With `run.trace`: each rank's clock offset to rank 0 (on rank 0).
    pub(super) clock_offsets: Vec<f64>,
}

/// One rank's training: the plan and what it runs on (world, data, run folder, sampler, the
/// test-only fault), the step core and the books.
pub struct Trainer<'a> {
    pub(super) plan: &'a Plan,
    pub(super) world: &'a Comm,
    pub(super) data: &'a Dataset,
    pub(super) dir: &'a Path,
    pub(super) sampler: Sampler,
    pub(super) fault: Fault,
    pub(super) core: StepCore,
    pub(super) books: Books,
}

impl<'a> Trainer<'a> {
    /// Builds this rank's stage, binds its parameters to the flat buffers and sets up the
    /// averaging (collective over the world).
    pub(super) fn new(
        plan: &'a Plan,
        world: &'a Comm,
        data: &'a Dataset,
        dir: &'a Path,
        sampler: Sampler,
    ) -> Result<Self> {
        let engine = Engine::new(plan, plan.run.seed);
        let params: Vec<Tensor> = engine
            .net
            .parameters()
            .iter()
            .map(|t| t.shallow_clone())
            .collect();
        let params: Vec<&Tensor> = params.iter().collect();
        let (sync, buffer) = Self::averaging(plan, world, &engine, &params);
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
            core: StepCore {
                optimizer,
                lr: schedule.lr(0),
                schedule,
                noise: NoiseState::default(),
                norms,
                engine,
                sync,
                buffer,
                timers: StepTimers::default(),
            },
            books: Books {
                ttt: TimeToTarget::new(plan.run.target_accuracy, Default::default()),
                progress: Progress::default(),
                metrics: None,
                peak_gflops: None,
                preflight: None,
                clock_offsets: Vec::new(),
            },
            plan,
            world,
            data,
            dir,
            sampler,
            fault: Fault::from_env(world.rank())?,
        })
    }

    /// The replica group's averager (gradients are averaged among the replicas of the same stage)
    /// and the flat buffers bound to it, every replica starting from the first replica's weights
    /// (collective).
    fn averaging(
        plan: &Plan,
        world: &Comm,
        engine: &Engine,
        params: &[&Tensor],
    ) -> (Averager, GradientBuffer) {
        let group = world.split(plan.topology.stage, plan.topology.replica);
        let len = GradientBuffer::flat_len(params);
        let blocks = engine.bucket_count();
        let mut sync = Averager::new((plan.grad_sync, plan.average_every), group, len, blocks)
            .with_compress(plan.compress, plan.powersgd)
            .with_local_sgd_after(plan.local_sgd_after);
        let mut buffer = GradientBuffer::bind(params, sync.node_mean());
        sync.attach(
            &buffer,
            params,
            crate::util::mix_seed(&[plan.topology.stage as u64]),
        );
        if plan.topology.replicas > 1 {
            // They are built from the same seed anyway; the broadcast makes that a guarantee
            // rather than an assumption.
            buffer.broadcast_values(sync.group(), 0);
        }
        (sync, buffer)
    }

    /// Trains from the start or from `resume`, and writes the model and the summary; or stops at
    /// a step boundary after a signal, with a checkpoint.
    pub(super) fn train(&mut self, resume: Option<&Checkpoint>) -> Result<Outcome> {
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
        for epoch in first_epoch..=self.plan.run.epochs {
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
        let last = match (last, position) {
            (Some(row), _) => row,
            // Resumed after the last step (killed before the summary): the final books again.
            (None, Some(p)) => self.final_row(p),
            (None, None) => bail!("nothing to train"),
        };
        watchdog::set_phase(watchdog::Phase::Finish);
        Ok(Outcome::Completed(Box::new(self.finish(&last)?)))
    }

    /// Whether the ranks stop here: any of them got SIGUSR1 or SIGTERM (one all-reduce of a flag
    /// per step, so that all stop after the same step).
    pub(super) fn stop_agreed(&self) -> bool {
        let mine = u64::from(crate::train::stop::requested().is_some());
        if self.world.size() == 1 {
            return mine == 1;
        }
        crate::diag::flight::labelled("stop flag", || self.world.sum(&[mine]))[0] > 0
    }

    pub(super) fn open_metrics(&mut self, position: Option<Position>) -> Result<()> {
        if !self.world.is_root() {
            return Ok(());
        }
        self.books.metrics = Some(match position {
            None => MetricsWriter::create(self.dir)?,
            // Rows of evaluations the checkpoint does not cover (written after it) are dropped.
            Some(p) => MetricsWriter::resume(self.dir, p.global_step)?,
        });
        Ok(())
    }

    /// The run ends at the target (`train.stop_at_target`) and has reached it.
    pub(super) fn target_stops_the_run(&self) -> bool {
        self.plan.run.stop_at_target && self.books.ttt.reached().is_some()
    }

    pub(super) fn max_steps_reached(&self) -> bool {
        self.plan
            .run
            .max_steps
            .is_some_and(|m| self.books.progress.global_step >= m)
    }

    /// Epoch `epoch`'s books at its start, or where a checkpoint (`partial`) left them.
    fn epoch_state(&self, epoch: usize, partial: Option<Position>) -> EpochState {
        EpochState {
            epoch,
            steps: partial.map_or(0, |p| p.step_in_epoch),
            samples: partial.map_or(0, |p| p.epoch_samples),
            loss_sum: partial.map_or(0.0, |p| p.epoch_loss_sum),
            loss_count: partial.map_or(0, |p| p.epoch_loss_count),
            started: Instant::now(),
            prior_seconds: partial.map_or(0.0, |p| p.epoch_seconds),
            eval_seconds: 0.0,
            timers_at_start: self.core.timers,
        }
    }

    pub(super) fn run_epoch(&mut self, epoch: usize, partial: Option<Position>) -> Result<EpochEnd> {
        let steps_per_epoch = self.sampler.steps_per_epoch();
        let order = self.sampler.permutation(epoch - 1);
        let mut ep = self.epoch_state(epoch, partial);
        let bar = self.progress_bar(epoch, steps_per_epoch);
        while ep.steps < steps_per_epoch && !self.max_steps_reached() {
            crate::diag::flight::set_step(self.books.progress.global_step as u64 + 1);
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
            let cadence = self.plan.run.eval_cadence(steps_per_epoch);
            if cadence.due(self.books.progress.global_step, ep.steps, steps_per_epoch) {
                let row = self.evaluation_row(&mut ep, false)?;
                if self.target_stops_the_run() {
                    if let Some(b) = bar {
                        b.finish_and_clear();
                    }
                    self.books.progress.train_seconds += ep.seconds();
                    self.books.progress.trained_samples += ep.samples;
                    return Ok(EpochEnd::AtTarget(row));
                }
            }
            let due = self.plan.run.checkpoint_every_steps;
            if due.is_some_and(|k| self.books.progress.global_step.is_multiple_of(k))
                && ep.steps < steps_per_epoch
            {
                self.checkpoint(self.position(&ep))?;
            }
            self.show_progress(bar.as_ref(), &ep, loss);
        }
        let (sync, buffer, step) = (
            &mut self.core.sync,
            &mut self.core.buffer,
            self.books.progress.global_step,
        );
        self.core
            .timers
            .averaging
            .time(|| sync.after_step(buffer, step, true));
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        self.end_epoch(ep, steps_per_epoch).map(EpochEnd::Done)
    }

    /// One optimizer step: this replica's shard through the engine, averaging, the optimizer at
    /// the schedule's rate (and, when due, a noise-scale measurement).
    pub(super) fn step(&mut self, ep: &EpochState, order: &[i64]) -> Result<Option<f64>> {
        let (epoch, step) = (ep.epoch, ep.steps);
        let _span =
            crate::diag::trace::span("step", || format!("step {}", self.books.progress.global_step + 1));
        let replica = self.plan.topology.replica;
        let batch = StepBatch {
            poison: self.fault.at_step(self.books.progress.global_step + 1),
            shard: self.sampler.shard(order, step, replica),
            // Dropout masks come from a seed derived from the position, not from hidden RNG state.
            seed: mix_seed(&[self.plan.run.seed, epoch as u64, step as u64, replica as u64]),
        };
        self.core.lr = self.core.schedule.lr(self.books.progress.global_step);
        // A tail batch has other batch sizes than the estimator's.
        let measure = self.plan.noise.is_some_and(|n| {
            n.due(self.books.progress.global_step + 1) && batch.shard.len() == self.plan.batches.per_replica
        });
        let loss = self.engine_step(&batch, measure);
        if let Some(loss) = loss.filter(|l| !l.is_finite()) {
            bail!(
                "rank {}: loss is {loss} at epoch {epoch} step {} (learning rate {} at this step, train.lr = {}): \
                 training diverged",
                self.world.rank(),
                step + 1,
                self.core.lr,
                self.plan.run.base_lr
            );
        }
        let skip = self.fault.skips_averaging(self.books.progress.global_step + 1);
        let (sync, buffer, done) = (
            &mut self.core.sync,
            &mut self.core.buffer,
            self.books.progress.global_step,
        );
        let source = match skip {
            true => crate::train::grads::GradSource::Local,
            false => self.core.timers.averaging.time(|| sync.average(buffer, done)),
        };
        if measure {
            self.measure_noise(source);
        }
        let (buffer, optimizer, lr) = (&mut self.core.buffer, &mut self.core.optimizer, self.core.lr);
        self.core.timers.compute.time(|| {
            if source != crate::train::grads::GradSource::Nothing {
                optimizer.step(buffer.values(), buffer.gradient(source), lr, done);
            }
            buffer.zero_grads();
        });
        self.average_batch_stats();
        let p = &mut self.books.progress;
        p.first_step_seconds
            .get_or_insert_with(crate::util::seconds_since_process_start);
        p.global_step += 1;
        p.steps_here += 1;
        let (sync, buffer, step_now) = (&mut self.core.sync, &mut self.core.buffer, p.global_step);
        self.core
            .timers
            .averaging
            .time(|| sync.after_step(buffer, step_now, false));
        Ok(loss)
    }

    /// Batch norm: this step's statistics summed over the stage's replicas (collective within
    /// the replica group; none for a group of one), then the running statistics move once, by
    /// `model.batchnorm_running`'s rule.
    fn average_batch_stats(&mut self) {
        let Some(stats) = self.core.engine.net.take_batch_stats() else {
            return;
        };
        let (group, timers, rule) = (
            self.core.sync.group(),
            &mut self.core.timers,
            self.plan.run.batchnorm_running,
        );
        let (replica, replicas) = (group.rank(), group.size());
        let share = stats.share(rule, replica, replicas);
        let summed = match replicas {
            1 => share,
            _ => timers
                .averaging
                .time(|| crate::diag::flight::labelled("batch-norm statistics", || group.sum(&share))),
        };
        let net = &self.core.engine.net;
        net.apply_batch_stats(rule, &summed, replicas, stats.forwards);
    }

    /// The engine's part of a step: this stage's forward and backward of every micro-batch
    /// (the overlapped variant sends finished blocks to the all-reduce thread as it goes).
    pub(super) fn engine_step(&mut self, batch: &StepBatch, measure: bool) -> Option<f64> {
        let overlap = self.core.sync.worker().map(|worker| Overlap {
            buffer: &self.core.buffer,
            worker,
        });
        let mut norms = self.core.norms.as_mut().filter(|_| measure);
        if let Some(n) = norms.as_mut() {
            n.start();
        }
        self.core.engine.train_step(
            self.world,
            &self.data.train,
            batch,
            &mut self.core.timers,
            norms,
            overlap,
        )
    }

    /// One noise-scale measurement (collective): the squared norms of the small gradients (each
    /// replica's, or each micro-batch's) and of their mean, summed over every rank's stage.
    pub(super) fn measure_noise(&mut self, source: crate::train::grads::GradSource) {
        let plan = self.plan.noise.expect("measured only with a noise plan");
        let sq = |t: &Tensor| t.norm().double_value(&[]).powi(2);
        let m = self.plan.batches.micro_batches as f64;
        let small = match &self.core.norms {
            Some(n) => n.sum_sq * m * m,
            None => sq(self.core.buffer.grads()),
        };
        let big = sq(self.core.buffer.gradient(source));
        let (world, timers) = (self.world, &mut self.core.timers);
        let t = timers
            .averaging
            .time(|| crate::diag::flight::labelled("noise scale", || world.sum(&[small, big])));
        let replicas = self.plan.topology.replicas as f64;
        let (g2, s) =
            crate::train::noise_scale::estimates(&plan, t[0] / plan.small_count as f64, t[1] / replicas);
        self.core.noise.add(g2, s);
    }
}
