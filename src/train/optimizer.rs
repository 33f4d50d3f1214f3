//! The optimizer over the flat buffers, the same in every layout, at the rate the plan's schedule
//! gives each step (`plan::optim`):
//!
//! - `sgd`: PyTorch's momentum SGD (dampening 0): v = m v + d; w -= lr v.
//! - `nesterov`: PyTorch's Nesterov form: v = m v + d; w -= lr (d + m v).
//! - `lars`: You et al. (arXiv 1708.03888) in NVIDIA apex's LARC form: each weight tensor's
//!   direction is scaled by its trust ratio `lars_trust |w| / (|g| + weight_decay |w|)` before the
//!   momentum update; biases are left as they are.
//!
//! with d = g + weight_decay w on weights (biases get no decay) and g the replicas' mean gradient.

use crate::config::OptimizerKind;
use crate::plan::optim::OptimPlan;
use crate::train::grads::GradientBuffer;
use tch::Tensor;

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
                self.scaled.copy_(&self.velocity);
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
        dir.flat.shallow_clone().copy_(grads);
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
    use crate::config::TrainConfig;
    use crate::plan::optim::OptimPlan;

    fn train(sets: &[&str]) -> TrainConfig {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        crate::config::from_yaml_str("", &sets).unwrap().train
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
            g.narrow(0, 0, 2).copy_(&Tensor::from_slice(&[0.6f32, 0.8]));
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
