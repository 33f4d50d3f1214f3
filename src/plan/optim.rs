//! The optimizer and learning-rate schedule of a run, resolved once by the plan (the global batch
//! is known there, so the scaled rate is too): the rate used at a step is `lr x f(global batch /
//! lr_reference_batch)` (f = 1, B/B0 or sqrt(B/B0)), reached by a linear warmup from `lr` (or
//! `warmup_start_factor` x the scaled rate), then
//! constant, cosine to zero at the end of `train.epochs`, or cut by `lr_decay_factor` after each
//! of `lr_decay_epochs`. The rate is a function of the global step alone, so a checkpoint's step
//! is the schedule's whole state. The optimizer that applies it is `train::optimizer`.

use crate::config::{LrScaling, LrScheduleKind, OptimizerKind, TrainConfig};
use serde::{Deserialize, Serialize};

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_eps() -> f64 {
    1e-8
}

/// What happens to the rate after the warmup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decay {
    Constant,
    /// Half a cosine from the peak to 0 between the end of the warmup and the end of `epochs`.
    Cosine {
        epochs: f64,
    },
    /// x `factor` after each of these (1-based, completed) epochs.
    Step {
        after_epochs: Vec<usize>,
        factor: f64,
    },
}

/// The optimizer and schedule of a run, resolved from the config and the global batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimPlan {
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub lars_trust: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Where a warmup starts: `train.lr` (the rate at the reference batch), or
    /// `warmup_start_factor` x `peak_lr`.
    pub base_lr: f64,
    /// The scaled rate the warmup reaches.
    pub peak_lr: f64,
    pub warmup_epochs: f64,
    pub decay: Decay,
    /// The recipe rule's choice (`train.recipe: by_global_batch`, `plan::recipe`), e.g.
    /// `adam-1cycle (by global batch 256)`; absent with `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
}

impl OptimPlan {
    pub fn new(t: &TrainConfig, global_batch: usize) -> OptimPlan {
        let (t, recipe) = crate::plan::recipe::resolve(t, global_batch);
        let t = &t;
        let ratio = global_batch as f64 / t.lr_reference_batch as f64;
        let factor = match t.lr_scaling {
            LrScaling::None => 1.0,
            LrScaling::Linear => ratio,
            LrScaling::Sqrt => ratio.sqrt(),
        };
        OptimPlan {
            optimizer: t.optimizer,
            momentum: t.momentum,
            weight_decay: t.weight_decay,
            lars_trust: t.lars_trust,
            betas: t.betas,
            eps: t.eps,
            base_lr: t.warmup_start_factor.map_or(t.lr, |f| f * t.lr * factor),
            peak_lr: t.lr * factor,
            warmup_epochs: t.warmup_epochs,
            decay: match t.lr_schedule {
                LrScheduleKind::Constant => Decay::Constant,
                LrScheduleKind::Cosine => Decay::Cosine {
                    epochs: t.decay_epochs.unwrap_or(t.epochs as f64),
                },
                LrScheduleKind::Step => Decay::Step {
                    after_epochs: t.lr_decay_epochs.clone(),
                    factor: t.lr_decay_factor,
                },
            },
            recipe,
        }
    }

    /// The L2 decay added to the direction (adamw and lamb decay the weights outside it).
    pub fn l2_decay(&self) -> f64 {
        match self.optimizer {
            OptimizerKind::Adamw | OptimizerKind::Lamb => 0.0,
            _ => self.weight_decay,
        }
    }

    /// Whether the step's direction is other than the mean gradient (L2 decay or LARS).
    pub fn direction_differs_from_gradient(&self) -> bool {
        self.optimizer == OptimizerKind::Lars || self.l2_decay() > 0.0
    }

    /// The schedule in steps for `steps_per_epoch` steps per epoch.
    pub fn schedule(&self, steps_per_epoch: usize) -> LrSchedule {
        let spe = steps_per_epoch.max(1);
        let warmup_steps = match self.warmup_epochs {
            w if w > 0.0 => ((w * spe as f64).round() as usize).max(1),
            _ => 0,
        };
        LrSchedule {
            plan: self.clone(),
            steps_per_epoch: spe,
            warmup_steps,
        }
    }

    /// One line for the run log and `inspect`.
    pub fn describe(&self) -> String {
        let decay = match &self.decay {
            Decay::Constant => "constant".to_string(),
            Decay::Cosine { epochs } => format!("cosine to 0 at epoch {epochs}"),
            Decay::Step { after_epochs, factor } => format!("x {factor} after epochs {after_epochs:?}"),
        };
        let warmup = match self.warmup_epochs {
            w if w > 0.0 => format!("warmup {w} epochs from {}, ", self.base_lr),
            _ => String::new(),
        };
        let state = match self.optimizer {
            OptimizerKind::Lars => format!("momentum {}, trust {}", self.momentum, self.lars_trust),
            k if k.is_adaptive() => format!("betas {:?}, eps {}", self.betas, self.eps),
            _ => format!("momentum {}", self.momentum),
        };
        let recipe = self
            .recipe
            .as_ref()
            .map_or(String::new(), |r| format!("recipe {r}: "));
        let line = format!(
            "{:?} ({state}, weight decay {}), lr {} ({warmup}{decay})",
            self.optimizer, self.weight_decay, self.peak_lr
        );
        format!("optimizer: {recipe}{}", line.to_lowercase())
    }
}

/// The rate of every step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    plan: OptimPlan,
    steps_per_epoch: usize,
    warmup_steps: usize,
}

impl LrSchedule {
    /// The rate of the step with 0-based index `step` (the step after `step` steps were taken).
    pub fn lr(&self, step: usize) -> f64 {
        let (p, w) = (&self.plan, self.warmup_steps);
        if step < w {
            return p.base_lr + (p.peak_lr - p.base_lr) * step as f64 / w as f64;
        }
        match &p.decay {
            Decay::Constant => p.peak_lr,
            Decay::Cosine { epochs } => {
                let total = ((epochs * self.steps_per_epoch as f64).round() as usize).max(w + 1);
                let progress = ((step - w) as f64 / (total - w) as f64).min(1.0);
                p.peak_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Decay::Step { after_epochs, factor } => {
                let completed = step / self.steps_per_epoch;
                let cuts = after_epochs.iter().filter(|&&e| completed >= e).count();
                p.peak_lr * factor.powi(cuts as i32)
            }
        }
    }

    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::train_with as train;

    #[test]
    fn scaled_rates() {
        let p = |s: &str| OptimPlan::new(&train(&[s, "train.lr=0.01"]), 4096).peak_lr;
        assert!((p("train.lr_scaling=none") - 0.01).abs() < 1e-12);
        assert!((p("train.lr_scaling=linear") - 0.64).abs() < 1e-12);
        assert!((p("train.lr_scaling=sqrt") - 0.08).abs() < 1e-12);
    }

    #[test]
    fn warmup_then_cosine_matches_the_closed_form() {
        let t = train(&[
            "train.lr_scaling=linear",
            "train.warmup_epochs=0.5",
            "train.lr_schedule=cosine",
            "train.epochs=3",
        ]);
        let s = OptimPlan::new(&t, 256).schedule(10);
        assert_eq!(s.warmup_steps(), 5);
        let (base, peak) = (0.01, 0.04);
        for step in 0..5 {
            let want = base + (peak - base) * step as f64 / 5.0;
            assert!((s.lr(step) - want).abs() < 1e-12, "{step}");
        }
        for step in 5..30 {
            let want = peak * 0.5 * (1.0 + (std::f64::consts::PI * (step - 5) as f64 / 25.0).cos());
            assert!((s.lr(step) - want).abs() < 1e-12, "{step}");
        }
        assert!((s.lr(5) - peak).abs() < 1e-12);
        assert!(s.lr(29) < 0.01 * peak);
    }

    #[test]
    fn step_decay_cuts_after_the_named_epochs() {
        let t = train(&[
            "train.lr_schedule=step",
            "train.lr_decay_epochs=[2, 4]",
            "train.lr_decay_factor=0.5",
            "train.epochs=5",
        ]);
        let s = OptimPlan::new(&t, 64).schedule(10);
        let want = [
            (0, 0.01),
            (19, 0.01),
            (20, 0.005),
            (39, 0.005),
            (40, 0.0025),
            (49, 0.0025),
        ];
        for (step, lr) in want {
            assert!((s.lr(step) - lr).abs() < 1e-12, "{step}: {}", s.lr(step));
        }
        // The defaults: one constant rate.
        let s = OptimPlan::new(&train(&[]), 128).schedule(7);
        assert!((0..100).all(|k| s.lr(k) == 0.01));
    }
}
