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
}
