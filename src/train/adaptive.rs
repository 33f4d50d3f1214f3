//! The Adam family over the flat buffers, PyTorch's arithmetic (`torch.optim.Adam`'s
//! single-tensor path) on the step's direction d:
//!
//! - `adam` (Kingma & Ba 2015): m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2;
//!   w -= lr / (1 - b1^t) x m / (sqrt(v) / sqrt(1 - b2^t) + eps), with L2 decay in d.
//! - `adamw` (Loshchilov & Hutter 2019): the same with decoupled decay, w -= lr wd w first.
//! - `lamb` (You et al. 2019, arXiv 1904.00962, with bias correction): per weight tensor,
//!   r = m^ / (sqrt(v^) + eps) + wd w, and w -= lr x (|w| / |r|) x r; biases take r as it is
//!   (no decay, trust 1), and a zero |w| or |r| keeps trust 1, as in the large-batch codes.
//!
//! Decay reaches weights only, as in the SGD family (PyTorch's AdamW decays biases too).

use crate::config::OptimizerKind;
use crate::train::optimizer::Optimizer;
use tch::Tensor;

impl Optimizer {
    /// Writes the step's update (lr included) into `scaled` for step number `t` (1-based).
    pub(super) fn adaptive_step(&mut self, d: &Tensor, lr: f64, t: usize) {
        let (b1, b2, eps) = (self.plan.betas[0], self.plan.betas[1], self.plan.eps);
        let bc1 = 1.0 - b1.powi(t as i32);
        let bc2 = 1.0 - b2.powi(t as i32);
        let (m, rest) = self.slots.split_at_mut(1);
        let (m, v) = (&mut m[0].flat, &mut rest[0].flat);
        let _ = m.lerp_(d, 1.0 - b1);
        // v = b2 v + ((1 - b2) d) d, the product's first factor in `scaled` (no temporary).
        self.scaled.copy_(d);
        let _ = self.scaled.g_mul_scalar_(1.0 - b2);
        let _ = v.g_mul_scalar_(b2).addcmul_(&self.scaled, d);
        // scaled = m / (sqrt(v) / sqrt(bc2) + eps): the unscaled Adam direction x bc1.
        let _ = v.sqrt_out(&self.scaled);
        let _ = self.scaled.g_div_scalar_(bc2.sqrt()).g_add_scalar_(eps);
        let _ = m.div_out(&self.scaled, &self.scaled.shallow_clone());
        match self.plan.optimizer {
            OptimizerKind::Lamb => self.scale_by_trust_ratio(lr, bc1),
            OptimizerKind::Adamw => {
                self.decay_weights_decoupled(lr);
                let _ = self.scaled.g_mul_scalar_(lr / bc1);
            }
            _ => {
                let _ = self.scaled.g_mul_scalar_(lr / bc1);
            }
        }
    }

    /// AdamW's w -= lr wd w on weights, before the Adam step.
    fn decay_weights_decoupled(&self, lr: f64) {
        let wd = self.plan.weight_decay;
        if wd == 0.0 {
            return;
        }
        for (w, &is_weight) in self.params.iter().zip(&self.is_weight) {
            if is_weight {
                let _ = w.shallow_clone().g_mul_scalar_(1.0 - lr * wd);
            }
        }
    }

    /// LAMB: r = scaled / bc1 (+ wd w on weights), each weight's r times lr |w| / |r|.
    fn scale_by_trust_ratio(&mut self, lr: f64, bc1: f64) {
        let wd = self.plan.weight_decay;
        let _ = self.scaled.g_div_scalar_(bc1);
        for ((r, w), &is_weight) in self.scaled_views.iter().zip(&self.params).zip(&self.is_weight) {
            let mut r = r.shallow_clone();
            if !is_weight {
                let _ = r.g_mul_scalar_(lr);
                continue;
            }
            if wd > 0.0 {
                let _ = r.g_add_(&(w * wd));
            }
            let (wn, rn) = (w.norm().double_value(&[]), r.norm().double_value(&[]));
            let trust = if wn > 0.0 && rn > 0.0 { wn / rn } else { 1.0 };
            let _ = r.g_mul_scalar_(lr * trust);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::plan::optim::OptimPlan;
    use crate::train::optimizer::Optimizer;

    /// The Adam family by hand, in f64, for a weight [3, 4] and a bias [1] under constant
    /// gradients [0.6, 0.8] and [2]: returns (weight, bias) after `steps` steps.
    fn by_hand(kind: &str, wd: f64, lr: f64, steps: usize) -> ([f64; 2], f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut w, mut b) = ([3.0f64, 4.0], 1.0f64);
        let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
        for t in 1..=steps {
            let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
            let l2 = if kind == "adam" { wd } else { 0.0 };
            let d = [0.6 + l2 * w[0], 0.8 + l2 * w[1], 2.0];
            let mut r = [0.0f64; 3];
            for i in 0..3 {
                m[i] = b1 * m[i] + (1.0 - b1) * d[i];
                v[i] = b2 * v[i] + (1.0 - b2) * d[i] * d[i];
                r[i] = (m[i] / bc1) / ((v[i] / bc2).sqrt() + eps);
            }
            match kind {
                "lamb" => {
                    let rw = [r[0] + wd * w[0], r[1] + wd * w[1]];
                    let wn = (w[0] * w[0] + w[1] * w[1]).sqrt();
                    let rn = (rw[0] * rw[0] + rw[1] * rw[1]).sqrt();
                    w = [w[0] - lr * wn / rn * rw[0], w[1] - lr * wn / rn * rw[1]];
                }
                _ => {
                    if kind == "adamw" {
                        w = [w[0] * (1.0 - lr * wd), w[1] * (1.0 - lr * wd)];
                    }
                    w = [w[0] - lr * r[0], w[1] - lr * r[1]];
                }
            }
            b -= lr * r[2];
        }
        (w, b)
    }

    /// Three steps of adam, adamw and lamb against their formulas (bias correction, decay
    /// placement, the per-layer trust ratio).
    #[test]
    fn three_steps_of_each_adaptive_optimizer_match_their_formulas() {
        for (kind, wd) in [
            ("adam", 0.0),
            ("adam", 0.1),
            ("adamw", 0.1),
            ("lamb", 0.0),
            ("lamb", 0.1),
        ] {
            let (w, b, buffer, g) = crate::train::optimizer::weight_and_bias();
            let sets = [
                format!("train.optimizer={kind}"),
                format!("train.weight_decay={wd}"),
            ];
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            let train = crate::config::train_with(&sets);
            let plan = OptimPlan::new(&train, 64);
            let names = ["fc.weight".to_string(), "fc.bias".to_string()];
            let mut opt = Optimizer::new(&buffer, &[&w, &b], &names, &plan);
            assert_eq!(
                opt.state().iter().map(|s| s.name).collect::<Vec<_>>(),
                ["exp_avg", "exp_avg_sq"]
            );
            for step in 0..3 {
                opt.step(buffer.values(), &g, 0.01, step);
            }
            let (want_w, want_b) = by_hand(kind, wd, 0.01, 3);
            let got = Vec::<f32>::try_from(w.detach()).unwrap();
            for i in 0..2 {
                assert!(
                    (got[i] as f64 - want_w[i]).abs() < 1e-5,
                    "{kind} wd {wd}: {got:?} vs {want_w:?}"
                );
            }
            let gb = b.detach().double_value(&[0]);
            assert!((gb - want_b).abs() < 1e-5, "{kind} bias: {gb} vs {want_b}");
        }
    }
}
