//! The optimizer over the flat buffers, the same in every layout, at the rate the plan's schedule
//! gives each step (`plan::optim`). One interface: `step` from the replicas' mean gradient, and
//! named state (`state()`: `momentum`, or `exp_avg` and `exp_avg_sq`) that checkpoints save as
//! `<state>.<parameter>` whatever the optimizer, so a new optimizer needs no format change.
//!
//! - `sgd`: PyTorch's momentum SGD (dampening 0): v = m v + d; w -= lr v.
//! - `nesterov`: PyTorch's Nesterov form: v = m v + d; w -= lr (d + m v).
//! - `lars`: You et al. (arXiv 1708.03888) in NVIDIA apex's LARC form: each weight tensor's
//!   direction is scaled by its trust ratio `lars_trust |w| / (|g| + weight_decay |w|)` before the
//!   momentum update; biases are left as they are.
//! - `adam`, `adamw`, `lamb`: `train::adaptive` (Kingma & Ba; Loshchilov & Hutter; You et al. 2019).
//!
//! with d = g + weight_decay w on weights (biases get no decay; `adamw` and `lamb` decay the
//! weights outside the direction) and g the replicas' mean gradient.

use crate::config::OptimizerKind;
use crate::plan::optim::OptimPlan;
use crate::train::grads::GradientBuffer;
use tch::Tensor;

/// One named piece of optimizer state over the flat buffers: `flat` is laid out like the
/// gradient buffer, `views` are each parameter's part of it (what checkpoints save and restore).
pub struct StateSlot {
    pub name: &'static str,
    pub flat: Tensor,
    pub views: Vec<Tensor>,
}

/// The optimizer's state over the flat buffers (laid out like `GradientBuffer`'s values).
pub struct Optimizer {
    pub(super) plan: OptimPlan,
    /// `momentum` for the SGD family; `exp_avg`, `exp_avg_sq` for the Adam family.
    pub(super) slots: Vec<StateSlot>,
    /// lr x the update, written in place every step (allocating it cost a 1.7 MB temporary per
    /// step for the MNIST net).
    pub(super) scaled: Tensor,
    /// Each parameter's view into `scaled` (LAMB's per-layer trust ratio scales them).
    pub(super) scaled_views: Vec<Tensor>,
    /// The parameters (views into the flat values) and which are weights (decay, trust ratios)
    /// and not biases.
    pub(super) params: Vec<Tensor>,
    pub(super) is_weight: Vec<bool>,
    /// For L2 weight decay and LARS: the step's direction d (the mean gradient is not ours to
    /// change: with shared-memory averaging it is the node's shared mean) and its views.
    direction: Option<(Tensor, Vec<Tensor>)>,
}

impl Optimizer {
    /// `names` are the parameters' state_dict names (`conv1.weight`, ...), in `params` order.
    pub fn new(buffer: &GradientBuffer, params: &[&Tensor], names: &[String], plan: &OptimPlan) -> Self {
        let slot = |name| {
            let (flat, views) = buffer.state_like(params);
            StateSlot { name, flat, views }
        };
        let slots = match plan.optimizer.is_adaptive() {
            false => vec![slot("momentum")],
            true => vec![slot("exp_avg"), slot("exp_avg_sq")],
        };
        let (scaled, scaled_views) = buffer.state_like(params);
        let direction = plan
            .direction_differs_from_gradient()
            .then(|| buffer.state_like(params));
        Optimizer {
            plan: plan.clone(),
            slots,
            scaled,
            scaled_views,
            params: params.iter().map(|p| p.shallow_clone()).collect(),
            is_weight: names.iter().map(|n| n.ends_with(".weight")).collect(),
            direction,
        }
    }

    /// The named state, in the order the optimizer keeps it.
    pub fn state(&self) -> &[StateSlot] {
        &self.slots
    }

    /// One step of every weight at rate `lr` from the gradient `grads` (flat), over the flat
    /// buffers; `steps_before` steps were taken before this one (Adam's bias correction).
    /// Plain SGD is element by element the arithmetic of a per-parameter loop, in 4 whole-buffer
    /// kernels and no temporary.
    pub fn step(&mut self, values: &Tensor, grads: &Tensor, lr: f64, steps_before: usize) {
        tch::no_grad(|| {
            let d = match &self.direction {
                None => grads.shallow_clone(),
                Some((flat, views)) => self.direction_of(flat, views, grads),
            };
            match self.plan.optimizer.is_adaptive() {
                false => self.momentum_step(&d, lr),
                true => self.adaptive_step(&d, lr, steps_before + 1),
            }
            let _ = values.shallow_clone().g_sub_(&self.scaled);
        })
    }

    /// scaled = lr v (or lr (d + m v) with Nesterov) after v = m v + d.
    fn momentum_step(&mut self, d: &Tensor, lr: f64) {
        let m = self.plan.momentum;
        let lr = Tensor::from(lr as f32);
        let velocity = &mut self.slots[0].flat;
        let _ = velocity.g_mul_scalar_(m).g_add_(d);
        if self.plan.optimizer == OptimizerKind::Nesterov {
            self.scaled.copy_(velocity);
            let _ = self.scaled.g_mul_scalar_(m).g_add_(d).g_mul_(&lr);
        } else {
            let _ = velocity.mul_out(&self.scaled, &lr);
        }
    }

    /// d = g + weight_decay w on weights, each weight's d scaled by its trust ratio with LARS.
    fn direction_of(&self, flat: &Tensor, views: &[Tensor], grads: &Tensor) -> Tensor {
        let (wd, lars) = (self.plan.l2_decay(), self.plan.optimizer == OptimizerKind::Lars);
        flat.shallow_clone().copy_(grads);
        for ((d, w), &is_weight) in views.iter().zip(&self.params).zip(&self.is_weight) {
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
        flat.shallow_clone()
    }
}

/// Unit tests' case: a weight [3, 4] and a bias [1] bound to a flat buffer, and a flat gradient of
/// [0.6, 0.8] for the weight and [2] for the bias.
#[cfg(test)]
pub(super) fn weight_and_bias() -> (Tensor, Tensor, GradientBuffer, Tensor) {
    let w = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
    let b = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
    let buffer = GradientBuffer::bind(&[&w, &b], None);
    let g = Tensor::zeros([buffer.len() as i64], (tch::Kind::Float, tch::Device::Cpu));
    g.narrow(0, 0, 2).copy_(&Tensor::from_slice(&[0.6f32, 0.8]));
    let _ = g.narrow(0, 16, 1).fill_(2.0);
    (w, b, buffer, g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::optim::OptimPlan;

    use crate::config::train_with as train;

    /// One step of each optimizer against the formulas, on a weight and a bias.
    #[test]
    fn one_step_of_each_optimizer_matches_its_formula() {
        for (kind, wd) in [("sgd", 0.0), ("sgd", 0.1), ("nesterov", 0.1), ("lars", 0.1)] {
            let (w, b, buffer, g) = super::weight_and_bias();
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
            for _ in 0..2 {
                opt.step(buffer.values(), &g, 0.1, 0);
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
