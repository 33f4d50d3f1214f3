//! The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al., arXiv 1812.06162),
//! from numbers a step already has: the gradients of small batches (each replica's own in dp,
//! each micro-batch's with accumulation or in a pipeline) and of the big one (their mean).
//!
//! With B_small and B_big images and the squared norms of their gradients, appendix A.1 gives
//! unbiased estimates of |G|^2 and of tr(Sigma):
//!
//!   |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
//!   S     ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
//!
//! Each is noisy step by step, so, as the paper does, each is smoothed by an exponential moving
//! average before the ratio is taken (here with Adam's bias correction, so that a run of a few
//! dozen large steps still has a value).

use crate::plan::noise::NoisePlan;
use serde::{Deserialize, Serialize};

/// EMA decay per measurement: a window of about 50 measurements (500 steps at the default
/// `train.noise_scale_every` of 10), about half an epoch where the noise is large (938 steps per
/// MNIST epoch at batch 64) and the whole run where steps are few (4 per epoch at 16,384), which
/// the bias correction turns into a plain mean.
pub const DECAY: f64 = 0.98;

/// One measurement's unbiased estimates (|G|^2, S) from the mean squared norm of the small
/// gradients and the squared norm of the big one.
pub fn estimates(plan: &NoisePlan, small_sq: f64, big_sq: f64) -> (f64, f64) {
    let (bs, bb) = (plan.small_batch as f64, plan.big_batch as f64);
    let g2 = (bb * big_sq - bs * small_sq) / (bb - bs);
    let s = (small_sq - big_sq) / (1.0 / bs - 1.0 / bb);
    (g2, s)
}

/// The smoothed estimates; the checkpoint carries them, so a resumed run reports the same values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseState {
    pub g2: f64,
    pub s: f64,
    pub measurements: u64,
}

impl NoiseState {
    pub fn add(&mut self, g2: f64, s: f64) {
        self.g2 = DECAY * self.g2 + (1.0 - DECAY) * g2;
        self.s = DECAY * self.s + (1.0 - DECAY) * s;
        self.measurements += 1;
    }

    /// B_simple from the bias-corrected averages; None before a measurement or while the
    /// smoothed |G|^2 is not positive (early noise can make it so).
    pub fn value(&self) -> Option<f64> {
        if self.measurements == 0 {
            return None;
        }
        let correction = 1.0 - DECAY.powi(self.measurements.min(i32::MAX as u64) as i32);
        let (g2, s) = (self.g2 / correction, self.s / correction);
        (g2 > 0.0 && s.is_finite()).then_some(s / g2)
    }
}

/// The squared norms of each micro-batch's share of a step's accumulated gradient, taken as the
/// engine finishes each micro-batch's backward: the difference of the flat gradient buffer from
/// the snapshot before it (3 whole-buffer kernels per micro-batch, no allocation).
pub struct MicroBatchNorms {
    grads: tch::Tensor,
    before: tch::Tensor,
    /// Sum over this step's micro-batches so far of |their share|^2.
    pub sum_sq: f64,
}

impl MicroBatchNorms {
    /// Over the flat gradient buffer `grads`.
    pub fn new(grads: &tch::Tensor) -> MicroBatchNorms {
        MicroBatchNorms {
            grads: grads.shallow_clone(),
            before: grads.zeros_like(),
            sum_sq: 0.0,
        }
    }

    /// A step begins (its gradients are zero).
    pub fn start(&mut self) {
        let _ = self.before.zero_();
        self.sum_sq = 0.0;
    }

    /// A micro-batch's backward has finished on this stage.
    pub fn after_backward(&mut self) {
        tch::no_grad(|| {
            let _ = self.before.g_sub_(&self.grads);
            let n = self.before.norm().double_value(&[]);
            self.sum_sq += n * n;
            self.before.copy_(&self.grads);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    /// A closed-form case: per-example gradients G + noise of covariance sigma^2 I in d
    /// dimensions, so tr(Sigma) = d sigma^2 and B_simple = d sigma^2 / |G|^2. The estimator, fed
    /// real small and big batch means, finds it within a few per cent.
    #[test]
    fn recovers_the_noise_scale_of_a_known_distribution() {
        let (d, sigma) = (50usize, 2.0f64);
        let g: Vec<f64> = (0..d).map(|i| if i % 2 == 0 { 0.5 } else { -0.25 }).collect();
        let g_sq: f64 = g.iter().map(|x| x * x).sum();
        let truth = d as f64 * sigma * sigma / g_sq;
        let plan = NoisePlan::new(4, 32, 2, true, 1).unwrap();
        assert_eq!((plan.small_batch, plan.small_count, plan.big_batch), (16, 8, 128));
        let mut rng = SplitMix64::new(7);
        let mut normal = || {
            // Box-Muller from two uniforms.
            let (u1, u2) = (
                (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
                (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64,
            );
            (-2.0 * (1.0 - u1).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let mut state = NoiseState::default();
        let (mut g2_sum, mut s_sum) = (0.0, 0.0);
        let steps = 4000;
        for _ in 0..steps {
            let mut big = vec![0.0; d];
            let mut small_sq = 0.0;
            for _ in 0..plan.small_count {
                let mut small = vec![0.0; d];
                for _ in 0..plan.small_batch {
                    for k in 0..d {
                        small[k] += (g[k] + sigma * normal()) / plan.small_batch as f64;
                    }
                }
                small_sq += small.iter().map(|x| x * x).sum::<f64>() / plan.small_count as f64;
                for k in 0..d {
                    big[k] += small[k] / plan.small_count as f64;
                }
            }
            let big_sq: f64 = big.iter().map(|x| x * x).sum();
            let (g2, s) = estimates(&plan, small_sq, big_sq);
            g2_sum += g2;
            s_sum += s;
            state.add(g2, s);
        }
        let mean_estimate = s_sum / g2_sum;
        assert!(
            (mean_estimate / truth - 1.0).abs() < 0.05,
            "{mean_estimate} vs {truth}"
        );
        assert!(
            (g2_sum / steps as f64 / g_sq - 1.0).abs() < 0.05,
            "|G|^2 unbiased"
        );
        let smoothed = state.value().unwrap();
        assert!((smoothed / truth - 1.0).abs() < 0.3, "{smoothed} vs {truth}");
    }

    #[test]
    fn bias_correction_makes_one_measurement_its_own_value() {
        let mut s = NoiseState::default();
        s.add(2.0, 300.0);
        assert!((s.value().unwrap() - 150.0).abs() < 1e-9);
    }
}
