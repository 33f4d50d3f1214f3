//! The run's cadence, resolved once from the config like every other policy: how long to train,
//! when to evaluate and checkpoint, the target and whether to stop there, the seed, and the
//! config's hashes. The trainer reads these and never the config.

use crate::config::{BatchNormRunning, BatchScope, Config, SyncMode};

/// Evaluations per epoch of a run with a target and no `train.eval_every_steps`.
pub const EVALS_PER_EPOCH: usize = 4;

/// When evaluations inside an epoch happen: every `every` global steps from global step `after`
/// on (`train.eval_every_steps`, `train.eval_after_steps`). The target rule: a run with a target
/// and no `eval_every_steps` evaluates 4 times per epoch (at 1 the time to target could be off by
/// a whole epoch; each evaluation of MNIST's 10,000 test images costs about 25 training steps of
/// 128 here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalCadence {
    pub every: Option<usize>,
    pub after: usize,
}

impl EvalCadence {
    /// Whether an evaluation is due after global step `global_step`, which is step
    /// `step_in_epoch` of an epoch of `steps_per_epoch` (the epoch's end evaluates anyway).
    pub fn due(&self, global_step: usize, step_in_epoch: usize, steps_per_epoch: usize) -> bool {
        self.every.is_some_and(|k| global_step.is_multiple_of(k))
            && global_step >= self.after
            && step_in_epoch < steps_per_epoch
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// `run.seed`: weights, data order and dropout masks derive from it.
    pub seed: u64,
    pub epochs: usize,
    pub max_steps: Option<usize>,
    pub target_accuracy: Option<f64>,
    pub stop_at_target: bool,
    eval_every_steps: Option<usize>,
    eval_after_steps: usize,
    pub eval_batch_size: usize,
    /// Progress lines every this many steps.
    pub log_every: usize,
    pub checkpoint_every_epochs: usize,
    pub checkpoint_every_steps: Option<usize>,
    /// `train.lr` as written (messages name it; the schedule's rates are in `OptimPlan`).
    pub base_lr: f64,
    /// For the summary and checkpoints: the config's hash, and its hash less what may change on
    /// resume (`Config::hash`, `Config::resume_hash`).
    pub config_hash: u64,
    pub resume_hash: u64,
    pub batch_scope: BatchScope,
    pub sync_mode: SyncMode,
    pub trace: bool,
    /// `model.batchnorm_running`: when batch norm's running statistics move.
    pub batchnorm_running: BatchNormRunning,
}

impl RunPlan {
    pub fn new(cfg: &Config) -> RunPlan {
        let t = &cfg.train;
        RunPlan {
            seed: cfg.run.seed,
            epochs: t.epochs,
            max_steps: t.max_steps,
            target_accuracy: t.target_accuracy,
            stop_at_target: t.stop_at_target,
            eval_every_steps: t.eval_every_steps,
            eval_after_steps: t.eval_after_steps,
            eval_batch_size: t.eval_batch_size,
            log_every: t.log_every,
            checkpoint_every_epochs: cfg.checkpoint.every_epochs,
            checkpoint_every_steps: cfg.checkpoint.every_steps,
            base_lr: t.lr,
            config_hash: cfg.hash(),
            resume_hash: cfg.resume_hash(),
            batch_scope: t.batch_scope,
            sync_mode: cfg.sync.mode,
            trace: cfg.run.trace,
            batchnorm_running: cfg.model.batchnorm_running,
        }
    }

    /// The evaluation cadence for epochs of `steps_per_epoch` steps (the target rule).
    pub fn eval_cadence(&self, steps_per_epoch: usize) -> EvalCadence {
        let by_target = self
            .target_accuracy
            .map(|_| steps_per_epoch.div_ceil(EVALS_PER_EPOCH).max(1));
        EvalCadence {
            every: self.eval_every_steps.or(by_target),
            after: self.eval_after_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_inside_epochs() {
        let eval_due = |every, g, s, spe| EvalCadence { every, after: 0 }.due(g, s, spe);
        assert!(eval_due(Some(10), 20, 5, 938));
        assert!(!eval_due(Some(10), 21, 6, 938));
        let late = EvalCadence {
            every: Some(10),
            after: 30,
        };
        assert!(!late.due(20, 20, 938) && late.due(30, 30, 938) && late.due(40, 40, 938));
        assert!(
            !eval_due(Some(10), 20, 938, 938),
            "the epoch's end evaluates anyway"
        );
        assert!(!eval_due(None, 20, 5, 938));
    }

    /// The target rule: 4 evaluations per epoch with a target and no eval_every_steps, none
    /// without a target, eval_every_steps when set, eval_after_steps carried over.
    #[test]
    fn a_target_brings_four_evaluations_per_epoch() {
        let t = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            RunPlan::new(&crate::config::from_yaml_str("", &sets).unwrap())
        };
        assert_eq!(
            t(&["train.target_accuracy=99"]).eval_cadence(469).every,
            Some(118)
        );
        assert_eq!(t(&["train.target_accuracy=99"]).eval_cadence(2).every, Some(1));
        assert_eq!(t(&[]).eval_cadence(469).every, None);
        let both = t(&[
            "train.target_accuracy=99",
            "train.eval_every_steps=50",
            "train.eval_after_steps=350",
        ]);
        assert_eq!(
            both.eval_cadence(469),
            EvalCadence {
                every: Some(50),
                after: 350
            }
        );
    }
}
