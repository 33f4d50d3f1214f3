//! Time to accuracy, as MLPerf Training measures it: a run clock over the whole training loop
//! (steps, evaluations and checkpoints: the evaluation's time counts), and the first evaluation
//! at or above `train.target_accuracy`, which fixes the time, steps, epochs and images to target.
//! The checkpoint carries the books, so a resumed run reports what the uninterrupted one would
//! have (its clock excludes the time between the two processes).

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Where the run stood at the first evaluation that reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reached {
    /// Run clock at the end of that evaluation.
    pub seconds: f64,
    pub step: usize,
    /// Training images / images per epoch (fractional when reached inside an epoch).
    pub epochs: f64,
    pub images: usize,
    pub accuracy: f64,
    /// The smoothed gradient noise scale then.
    #[serde(default)]
    pub noise_scale: Option<f64>,
}

/// One evaluation, as the books take it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub seconds: f64,
    pub accuracy: f64,
    /// Steps and training images so far.
    pub step: usize,
    pub images: usize,
    pub noise_scale: Option<f64>,
}

/// The books a checkpoint carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetBooks {
    /// Run clock when the checkpoint was written.
    pub run_seconds: f64,
    /// Of which evaluating.
    pub eval_seconds: f64,
    pub evaluations: usize,
    pub reached: Option<Reached>,
    /// The best test accuracy of any evaluation so far (what a run that missed its target shows).
    #[serde(default)]
    pub best_accuracy: f64,
}

/// The live books: a clock that starts with the training loop and continues a checkpoint's.
#[derive(Debug, Clone)]
pub struct TimeToTarget {
    pub target: Option<f64>,
    books: TargetBooks,
    started: Instant,
}

impl TimeToTarget {
    pub fn new(target: Option<f64>, restored: TargetBooks) -> TimeToTarget {
        TimeToTarget {
            target,
            books: restored,
            started: Instant::now(),
        }
    }

    /// Seconds of the training loop so far (before a resume included).
    pub fn run_seconds(&self) -> f64 {
        self.books.run_seconds + self.started.elapsed().as_secs_f64()
    }

    /// The books as of now, for a checkpoint.
    pub fn books(&self) -> TargetBooks {
        TargetBooks {
            run_seconds: self.run_seconds(),
            ..self.books
        }
    }

    pub fn reached(&self) -> Option<Reached> {
        self.books.reached
    }

    pub fn evaluations(&self) -> usize {
        self.books.evaluations
    }

    pub fn eval_seconds(&self) -> f64 {
        self.books.eval_seconds
    }

    pub fn best_accuracy(&self) -> Option<f64> {
        (self.books.evaluations > 0).then_some(self.books.best_accuracy)
    }

    /// Books evaluation `e` (with `per_epoch` training images per epoch); true when it is the
    /// first to reach the target.
    pub fn evaluated(&mut self, e: &Evaluation, per_epoch: usize) -> bool {
        self.books.evaluations += 1;
        self.books.eval_seconds += e.seconds;
        self.books.best_accuracy = self.books.best_accuracy.max(e.accuracy);
        let first = self.books.reached.is_none() && self.target.is_some_and(|t| e.accuracy >= t);
        if first {
            self.books.reached = Some(Reached {
                seconds: self.run_seconds(),
                step: e.step,
                epochs: e.images as f64 / per_epoch.max(1) as f64,
                images: e.images,
                accuracy: e.accuracy,
                noise_scale: e.noise_scale,
            });
        }
        first
    }
}

/// When evaluations inside an epoch happen: every `every` global steps from global step `after`
/// on (`train.eval_every_steps`, `train.eval_after_steps`). The target rule: a run with a target
/// and no `eval_every_steps` evaluates 4 times per epoch (at 1 the time to target could be off by
/// a whole epoch; each evaluation of MNIST's 10,000 test images costs about 25 training steps of
/// 128 here).
/// Evaluations per epoch of a run with a target and no `train.eval_every_steps`.
pub const EVALS_PER_EPOCH: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalCadence {
    pub every: Option<usize>,
    pub after: usize,
}

impl EvalCadence {
    pub fn of(t: &crate::config::TrainConfig, steps_per_epoch: usize) -> EvalCadence {
        let by_target = t
            .target_accuracy
            .map(|_| steps_per_epoch.div_ceil(EVALS_PER_EPOCH).max(1));
        EvalCadence {
            every: t.eval_every_steps.or(by_target),
            after: t.eval_after_steps,
        }
    }

    /// Whether an evaluation is due after global step `global_step`, which is step
    /// `step_in_epoch` of an epoch of `steps_per_epoch` (the epoch's end evaluates anyway).
    pub fn due(&self, global_step: usize, step_in_epoch: usize, steps_per_epoch: usize) -> bool {
        self.every.is_some_and(|k| global_step.is_multiple_of(k))
            && global_step >= self.after
            && step_in_epoch < steps_per_epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_evaluation_at_the_target_fixes_the_books() {
        let e = |accuracy: f64, step: usize| Evaluation {
            seconds: 0.5,
            accuracy,
            step,
            images: 64 * step,
            noise_scale: Some(step as f64),
        };
        let mut t = TimeToTarget::new(Some(99.0), TargetBooks::default());
        assert!(!t.evaluated(&e(98.9, 100), 60000));
        assert!(t.evaluated(&e(99.0, 200), 60000), "reaching it exactly counts");
        assert!(!t.evaluated(&e(99.3, 300), 60000), "only the first");
        let r = t.reached().unwrap();
        assert_eq!(
            (r.step, r.images, r.accuracy, r.noise_scale),
            (200, 12800, 99.0, Some(200.0))
        );
        assert!((r.epochs - 12800.0 / 60000.0).abs() < 1e-12);
        assert_eq!(t.evaluations(), 3);
        assert!((t.eval_seconds() - 1.5).abs() < 1e-12);
        // No target: never reached.
        let mut none = TimeToTarget::new(None, TargetBooks::default());
        assert!(!none.evaluated(&e(100.0, 1), 60000));
        assert!(none.reached().is_none());
    }

    #[test]
    fn a_resumed_clock_continues_the_checkpoints() {
        let books = TargetBooks {
            run_seconds: 100.0,
            eval_seconds: 7.0,
            evaluations: 3,
            reached: None,
            best_accuracy: 98.5,
        };
        let t = TimeToTarget::new(Some(99.0), books);
        assert!(t.run_seconds() >= 100.0 && t.run_seconds() < 101.0);
        assert_eq!(t.books().evaluations, 3);
    }

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
        let t = crate::config::train_with;
        assert_eq!(
            EvalCadence::of(&t(&["train.target_accuracy=99"]), 469).every,
            Some(118)
        );
        assert_eq!(
            EvalCadence::of(&t(&["train.target_accuracy=99"]), 2).every,
            Some(1)
        );
        assert_eq!(EvalCadence::of(&t(&[]), 469).every, None);
        let both = t(&[
            "train.target_accuracy=99",
            "train.eval_every_steps=50",
            "train.eval_after_steps=350",
        ]);
        assert_eq!(
            EvalCadence::of(&both, 469),
            EvalCadence {
                every: Some(50),
                after: 350
            }
        );
    }
}
