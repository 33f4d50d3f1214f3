//! Every value checked on its own and against the others, each refusal naming the key, what it
//! got and what it expects. Checks against the net's layers are the plan's (it builds the net).

use super::*;
use anyhow::{bail, Result};

impl Config {
    pub fn validate(&self) -> Result<()> {
        self.validate_train()?;
        self.validate_data_and_model()?;
        self.validate_parallel()?;
        if self.checkpoint.every_steps == Some(0) {
            bail!("checkpoint.every_steps: must be at least 1 (or null), got 0");
        }
        self.validate_pipeline()?;
        self.validate_optimizer()?;
        self.validate_schedule()?;
        self.validate_decay()?;
        self.validate_target()?;
        if self.run.name.is_empty() || self.run.name.contains('/') {
            bail!(
                "run.name: must be a non-empty folder name without `/`, got `{}`",
                self.run.name
            );
        }
        Ok(())
    }

    fn validate_train(&self) -> Result<()> {
        let t = &self.train;
        if t.epochs == 0 {
            bail!("train.epochs: must be at least 1, got 0");
        }
        if t.batch_size == 0 {
            bail!("train.batch_size: must be at least 1, got 0");
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bail!("train.lr: must be a positive number, got {}", t.lr);
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bail!("train.momentum: must be in [0, 1), got {}", t.momentum);
        }
        if t.max_steps == Some(0) {
            bail!("train.max_steps: must be at least 1 (or null for full epochs), got 0");
        }
        if t.eval_batch_size == 0 {
            bail!("train.eval_batch_size: must be at least 1, got 0");
        }
        if t.log_every == 0 {
            bail!("train.log_every: must be at least 1, got 0");
        }
        if self.train.precision == Precision::Bf16 && !crate::util::bf16_runs_here() {
            bail!(
                "train.precision: bf16 needs a CPU with AVX512-BF16 or AMX-BF16 instructions and this one has \
                 neither (emulated bf16 would be slower than fp32); use fp32, or set PARTRAIN_EMULATED_BF16=1 \
                 to measure bf16's steps to a target anyway"
            );
        }
        Ok(())
    }

    fn validate_data_and_model(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.model.dropout) {
            bail!("model.dropout: must be in [0, 1), got {}", self.model.dropout);
        }
        if self.data.train_limit == Some(0) {
            bail!("data.train_limit: must be at least 1 (or null for all), got 0");
        }
        if self.data.test_limit == Some(0) {
            bail!("data.test_limit: must be at least 1 (or null for all), got 0");
        }
        if !(self.sync.bucket_mb.is_finite() && self.sync.bucket_mb >= 0.0) {
            bail!(
                "sync.bucket_mb: expected a size in MB, 0 or more, got {}",
                self.sync.bucket_mb
            );
        }
        if self.sync.powersgd_rank == 0 {
            bail!("sync.powersgd_rank: the factors need at least 1 column, got 0");
        }
        if self.sync.delay > 1 {
            bail!(
                "sync.delay: expected 0 (each step applies its own mean gradient) or 1 (the previous step's), got {}",
                self.sync.delay
            );
        }
        if self.sync.average_every == 0 {
            bail!("sync.average_every: must be at least 1, got 0");
        }
        self.net().map(|_| ())
    }

    fn validate_parallel(&self) -> Result<()> {
        let p = &self.parallel;
        for (key, v) in [
            ("timeout_s", p.timeout_s),
            ("warn_s", p.warn_s),
            ("eval_timeout_s", p.eval_timeout_s),
            ("checkpoint_timeout_s", p.checkpoint_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("parallel.{key}: must be a positive number of seconds, got {v}");
            }
        }
        if self.parallel.threads_per_rank > MAX_THREADS_PER_RANK {
            bail!(
                "parallel.threads_per_rank: {} is not a plausible thread count (at most {MAX_THREADS_PER_RANK}; \
                 0 = OMP_NUM_THREADS or all cores)",
                self.parallel.threads_per_rank
            );
        }
        Ok(())
    }

    /// The Adam family's keys, refused for the SGD family and checked for range.
    fn validate_adaptive(&self) -> Result<()> {
        let (t, d) = (&self.train, TrainConfig::default());
        let adaptive = t.optimizer.is_adaptive();
        for (key, changed) in [("betas", t.betas != d.betas), ("eps", t.eps != d.eps)] {
            if changed && !adaptive {
                bail!(
                    "train.{key}: applies to train.optimizer: adam, adamw or lamb, and the optimizer is {:?}",
                    t.optimizer
                );
            }
        }
        if !t.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            bail!("train.betas: each must be in [0, 1), got {:?}", t.betas);
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            bail!("train.eps: must be a positive number, got {}", t.eps);
        }
        if let Some(f) = t.warmup_start_factor {
            if !(f > 0.0 && f <= 1.0) {
                bail!("train.warmup_start_factor: must be in (0, 1], got {f}");
            }
            if t.warmup_epochs == 0.0 {
                bail!("train.warmup_start_factor: set, but there is no warmup (train.warmup_epochs is 0)");
            }
        }
        Ok(())
    }

    /// The optimizer's own keys, each refused where it does not apply.
    fn validate_optimizer(&self) -> Result<()> {
        let (t, d) = (&self.train, TrainConfig::default());
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bail!(
                "train.weight_decay: must be a number >= 0, got {}",
                t.weight_decay
            );
        }
        if t.optimizer == OptimizerKind::Nesterov && t.momentum == 0.0 {
            bail!("train.optimizer: nesterov needs momentum > 0 (train.momentum is 0)");
        }
        if t.optimizer != OptimizerKind::Lars && t.lars_trust != d.lars_trust {
            bail!(
                "train.lars_trust: applies to train.optimizer: lars, and the optimizer is {:?}",
                t.optimizer
            );
        }
        self.validate_adaptive()?;
        if !(t.lars_trust.is_finite() && t.lars_trust > 0.0) {
            bail!(
                "train.lars_trust: must be a positive number, got {}",
                t.lars_trust
            );
        }
        if t.lr_reference_batch == 0 {
            bail!("train.lr_reference_batch: must be at least 1, got 0");
        }
        if t.lr_scaling == LrScaling::None && t.lr_reference_batch != d.lr_reference_batch {
            bail!("train.lr_reference_batch: applies to train.lr_scaling linear or sqrt, and lr_scaling is none");
        }
        Ok(())
    }

    /// Warmup and decay, in epochs: each must fall inside the run.
    fn validate_schedule(&self) -> Result<()> {
        let (t, d) = (&self.train, TrainConfig::default());
        let epochs = t.epochs as f64;
        if !(t.warmup_epochs.is_finite() && t.warmup_epochs >= 0.0) {
            bail!(
                "train.warmup_epochs: must be a number of epochs >= 0, got {}",
                t.warmup_epochs
            );
        }
        if t.warmup_epochs > epochs {
            bail!(
                "train.warmup_epochs: {} is longer than the run (train.epochs = {})",
                t.warmup_epochs,
                t.epochs
            );
        }
        if t.warmup_epochs > 0.0 && t.lr_scaling == LrScaling::None && t.warmup_start_factor.is_none() {
            bail!(
                "train.warmup_epochs: the warmup ramps from train.lr to the scaled rate, and train.lr_scaling is none \
                 (nothing to ramp to): set lr_scaling to linear or sqrt, or train.warmup_start_factor"
            );
        }
        if t.lr_schedule == LrScheduleKind::Cosine && t.warmup_epochs >= epochs {
            bail!(
                "train.warmup_epochs: {} leaves no epoch of the {}-epoch run for the cosine decay",
                t.warmup_epochs,
                t.epochs
            );
        }
        if let Some(e) = t.decay_epochs {
            if t.lr_schedule != LrScheduleKind::Cosine {
                bail!(
                    "train.decay_epochs: applies to train.lr_schedule: cosine, and the schedule is {:?}",
                    t.lr_schedule
                );
            }
            if !(e > t.warmup_epochs && e <= epochs) {
                bail!(
                    "train.decay_epochs: must be after the warmup ({}) and at most train.epochs ({}), got {e}",
                    t.warmup_epochs,
                    t.epochs
                );
            }
        }
        if t.lr_schedule != LrScheduleKind::Step {
            if !t.lr_decay_epochs.is_empty() {
                bail!(
                    "train.lr_decay_epochs: applies to train.lr_schedule: step, and the schedule is {:?}",
                    t.lr_schedule
                );
            }
            if t.lr_decay_factor != d.lr_decay_factor {
                bail!(
                    "train.lr_decay_factor: applies to train.lr_schedule: step, and the schedule is {:?}",
                    t.lr_schedule
                );
            }
        }
        Ok(())
    }

    /// Step decay: a factor below 1, and epochs inside the run after the warmup.
    fn validate_decay(&self) -> Result<()> {
        let t = &self.train;
        if t.lr_schedule != LrScheduleKind::Step {
            return Ok(());
        }
        if !(t.lr_decay_factor > 0.0 && t.lr_decay_factor < 1.0) {
            bail!(
                "train.lr_decay_factor: must be in (0, 1), got {}",
                t.lr_decay_factor
            );
        }
        if t.lr_decay_epochs.is_empty() {
            bail!("train.lr_decay_epochs: lr_schedule step needs at least one epoch to decay after, e.g. [6, 8]");
        }
        let mut prev = 0.0f64.max(t.warmup_epochs);
        for &e in &t.lr_decay_epochs {
            if e >= t.epochs {
                bail!(
                    "train.lr_decay_epochs: {e} is past the end of the run (decays happen after an epoch, and the \
                     run's last epoch is {})",
                    t.epochs
                );
            }
            if (e as f64) <= prev {
                bail!(
                    "train.lr_decay_epochs: {:?} must increase and start after the warmup ({} epochs)",
                    t.lr_decay_epochs,
                    t.warmup_epochs
                );
            }
            prev = e as f64;
        }
        Ok(())
    }

    /// Time to accuracy: the target, evaluation inside epochs, stopping there.
    fn validate_target(&self) -> Result<()> {
        let t = &self.train;
        if let Some(a) = t.target_accuracy {
            if !(a > 0.0 && a <= 100.0) {
                bail!("train.target_accuracy: a test accuracy in percent, in (0, 100], got {a}");
            }
        }
        if t.stop_at_target && t.target_accuracy.is_none() {
            bail!("train.stop_at_target: stops at train.target_accuracy, which is not set");
        }
        if t.eval_after_steps > 0 && t.eval_every_steps.is_none() && t.target_accuracy.is_none() {
            bail!(
                "train.eval_after_steps: applies to evaluations inside epochs, and there are none \
                 (train.eval_every_steps and train.target_accuracy are null)"
            );
        }
        if t.eval_every_steps == Some(0) {
            bail!("train.eval_every_steps: must be at least 1 (or null: evaluate at epoch ends only), got 0");
        }
        Ok(())
    }

    fn validate_pipeline(&self) -> Result<()> {
        // Checks against the net's layers (stages, boundaries in range) are the plan's: it builds the net.
        let p = &self.parallel;
        if p.stages == 0 {
            bail!("parallel.stages: must be at least 1, got 0");
        }
        if p.micro_batches == 0 {
            bail!("parallel.micro_batches: must be at least 1, got 0");
        }
        match &p.stage_boundaries {
            StageBoundaries::Auto | StageBoundaries::Macs | StageBoundaries::Measured => {}
            StageBoundaries::List(b) => {
                if b.len() != p.stages - 1 {
                    bail!(
                        "parallel.stage_boundaries: {} stages need {} boundaries (the first layer of stages 1..), got {:?}",
                        p.stages,
                        p.stages - 1,
                        b
                    );
                }
                let mut prev = 0;
                for &x in b {
                    if x == prev {
                        bail!("parallel.stage_boundaries: {b:?} leaves a stage empty (boundary {x} repeats or is 0)");
                    }
                    if x < prev {
                        bail!("parallel.stage_boundaries: {b:?} is not increasing");
                    }
                    prev = x;
                }
            }
        }
        Ok(())
    }
}
