//! The optimizer and its learning-rate schedule, the same in every layout: the plan resolves them
//! once (the global batch is known there, so the scaled rate is too), the trainer asks the
//! schedule for each step's rate and the optimizer steps every weight over the flat buffers.
//!
//! - `sgd`: PyTorch's momentum SGD (dampening 0): v = m v + d; w -= lr v.
//! - `nesterov`: PyTorch's Nesterov form: v = m v + d; w -= lr (d + m v).
//! - `lars`: You et al. (arXiv 1708.03888) in NVIDIA apex's LARC form: each weight tensor's
//!   direction is scaled by its trust ratio `lars_trust |w| / (|g| + weight_decay |w|)` before the
//!   momentum update; biases are left as they are.
//!
//! with d = g + weight_decay w on weights (biases get no decay) and g the replicas' mean gradient.
//! The rate used at a step is `lr x f(global batch / lr_reference_batch)` (f = 1, B/B0 or
//! sqrt(B/B0)), reached by a linear warmup from `lr`, then constant, cosine to zero at the end of
//! `train.epochs`, or cut by `lr_decay_factor` after each of `lr_decay_epochs`. The rate is a
//! function of the global step alone, so a checkpoint's step is the schedule's whole state.

use crate::config::{LrScaling, LrScheduleKind, OptimizerKind, TrainConfig};
use crate::grads::GradientBuffer;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// What happens to the rate after the warmup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Decay {
    Constant,
    /// Half a cosine from the peak to 0 between the end of the warmup and the end of `epochs`.
    Cosine {
        epochs: usize,
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
    /// `train.lr`: the rate at the reference batch, where a warmup starts.
    pub base_lr: f64,
    /// The scaled rate the warmup reaches.
    pub peak_lr: f64,
    pub warmup_epochs: f64,
    pub decay: Decay,
}

impl OptimPlan {
    pub fn new(t: &TrainConfig, global_batch: usize) -> OptimPlan {
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
            base_lr: t.lr,
            peak_lr: t.lr * factor,
            warmup_epochs: t.warmup_epochs,
            decay: match t.lr_schedule {
                LrScheduleKind::Constant => Decay::Constant,
                LrScheduleKind::Cosine => Decay::Cosine { epochs: t.epochs },
                LrScheduleKind::Step => Decay::Step {
                    after_epochs: t.lr_decay_epochs.clone(),
                    factor: t.lr_decay_factor,
                },
            },
        }
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
        let extras = match self.optimizer {
            OptimizerKind::Lars => format!(", trust {}", self.lars_trust),
            _ => String::new(),
        };
        format!(
            "optimizer: {:?} (momentum {}, weight decay {}{extras}), lr {} ({warmup}{decay})",
            self.optimizer, self.momentum, self.weight_decay, self.peak_lr
        )
        .to_lowercase()
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
                let total = (epochs * self.steps_per_epoch).max(w + 1);
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

/// The optimizer's state over the flat buffers (laid out like `GradientBuffer`'s values).
pub struct Optimizer {
    plan: OptimPlan,
    /// Flat momentum.
    velocity: Tensor,
    /// lr x the update, written in place every step (allocating it cost a 1.7 MB temporary per
    /// step for the MNIST net).
    scaled: Tensor,
    /// Each parameter's view into `velocity` (what checkpoints save and restore).
    pub buffers: Vec<Tensor>,
    /// For weight decay, LARS and Nesterov: the step's direction d (the mean gradient is not
    /// ours to change: with shared-memory averaging it is the node's shared mean), its
    /// per-parameter views, and which parameters are weights (decay and trust ratio) and not biases.
    direction: Option<Direction>,
}

struct Direction {
    flat: Tensor,
    views: Vec<Tensor>,
    params: Vec<Tensor>,
    is_weight: Vec<bool>,
}

impl Optimizer {
    /// `names` are the parameters' state_dict names (`conv1.weight`, ...), in `params` order.
    pub fn new(buffer: &GradientBuffer, params: &[&Tensor], names: &[String], plan: &OptimPlan) -> Self {
        let (velocity, buffers) = buffer.state_like(params);
        let plain = plan.optimizer == OptimizerKind::Sgd && plan.weight_decay == 0.0;
        let direction = (!plain).then(|| {
            let (flat, views) = buffer.state_like(params);
            Direction {
                flat,
                views,
                params: params.iter().map(|p| p.shallow_clone()).collect(),
                is_weight: names.iter().map(|n| n.ends_with(".weight")).collect(),
            }
        });
        Optimizer {
            plan: plan.clone(),
            scaled: velocity.zeros_like(),
            velocity,
            buffers,
            direction,
        }
    }

    /// One step of every weight at rate `lr` from the gradient `grads` (flat), over the flat
    /// buffers. Plain SGD is element by element the arithmetic of a per-parameter loop, in 4
    /// whole-buffer kernels and no temporary.
    pub fn step(&mut self, values: &Tensor, grads: &Tensor, lr: f64) {
        tch::no_grad(|| {
            let m = self.plan.momentum;
            let lr = Tensor::from(lr as f32);
            let d = match &self.direction {
                None => grads.shallow_clone(),
                Some(dir) => self.direction_of(dir, grads),
            };
            let _ = self.velocity.g_mul_scalar_(m).g_add_(&d);
            if self.plan.optimizer == OptimizerKind::Nesterov {
                let _ = self.scaled.copy_(&self.velocity);
                let _ = self.scaled.g_mul_scalar_(m).g_add_(&d).g_mul_(&lr);
            } else {
                let _ = self.velocity.mul_out(&self.scaled, &lr);
            }
            let _ = values.shallow_clone().g_sub_(&self.scaled);
        })
    }

    /// d = g + weight_decay w on weights, each weight's d scaled by its trust ratio with LARS.
    fn direction_of(&self, dir: &Direction, grads: &Tensor) -> Tensor {
        let (wd, lars) = (self.plan.weight_decay, self.plan.optimizer == OptimizerKind::Lars);
        let _ = dir.flat.shallow_clone().copy_(grads);
        for ((d, w), &is_weight) in dir.views.iter().zip(&dir.params).zip(&dir.is_weight) {
            if !is_weight {
                continue;
            }
            let ratio = lars.then(|| {
                let (wn, gn) = (w.norm().double_value(&[]), d.norm().double_value(&[]));
                // A zero weight or gradient (the first step of a zero-initialised layer) keeps
                // the plain step, as apex's LARC does.
                if wn > 0.0 && gn > 0.0 {
                    self.plan.lars_trust * wn / (gn + wd * wn)
                } else {
                    1.0
                }
            });
            if wd > 0.0 {
                let _ = d.shallow_clone().g_add_(&(w * wd));
            }
            if let Some(r) = ratio {
                let _ = d.shallow_clone().g_mul_scalar_(r);
            }
        }
        dir.flat.shallow_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(sets: &[&str]) -> TrainConfig {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        crate::config::from_yaml_str("", &sets).unwrap().train
    }

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

    /// One step of each optimizer against the formulas, on a weight and a bias.
    #[test]
    fn one_step_of_each_optimizer_matches_its_formula() {
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        for (kind, wd) in [("sgd", 0.0), ("sgd", 0.1), ("nesterov", 0.1), ("lars", 0.1)] {
            let w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
            let b = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
            let buffer = GradientBuffer::bind(&[&w, &b], None);
            let mut sets = vec![
                format!("train.optimizer={kind}"),
                format!("train.weight_decay={wd}"),
            ];
            if kind == "lars" {
                sets.push("train.lars_trust=0.5".into());
            }
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let plan = OptimPlan::new(&train(&sets), 64);
            let names = ["fc.weight".to_string(), "fc.bias".to_string()];
            let mut opt = Optimizer::new(&buffer, &[&w, &b], &names, &plan);
            let g = Tensor::zeros([buffer.len() as i64], opts);
            let _ = g.narrow(0, 0, 2).copy_(&Tensor::from_slice(&[0.6f32, 0.8]));
            let _ = g.narrow(0, 16, 1).fill_(2.0);
            for _ in 0..2 {
                opt.step(buffer.values(), &g, 0.1);
            }
            // Two steps by hand: d_w = g + wd w (x trust ratio), d_b = g.
            let (m, lr) = (0.9, 0.1);
            let (mut wv, mut bv) = ([3.0f64, 4.0], 1.0f64);
            let (mut vw, mut vb) = ([0.0f64; 2], 0.0f64);
            for _ in 0..2 {
                let mut d = [0.6 + wd * wv[0], 0.8 + wd * wv[1]];
                if kind == "lars" {
                    let wn = (wv[0] * wv[0] + wv[1] * wv[1]).sqrt();
                    let r = 0.5 * wn / (1.0 + wd * wn);
                    d = [d[0] * r, d[1] * r];
                }
                for i in 0..2 {
                    vw[i] = m * vw[i] + d[i];
                    wv[i] -= lr
                        * if kind == "nesterov" {
                            d[i] + m * vw[i]
                        } else {
                            vw[i]
                        };
                }
                vb = m * vb + 2.0;
                bv -= lr * if kind == "nesterov" { 2.0 + m * vb } else { vb };
            }
            let got = Vec::<f32>::try_from(w.detach()).unwrap();
            for i in 0..2 {
                assert!(
                    (got[i] as f64 - wv[i]).abs() < 1e-5,
                    "{kind} wd {wd}: {got:?} vs {wv:?}"
                );
            }
            let gb = b.detach().double_value(&[0]);
            assert!((gb - bv).abs() < 1e-5, "{kind} bias: {gb} vs {bv}");
        }
    }
}
