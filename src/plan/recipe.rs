//! The recipe rule (`train.recipe: by_global_batch`, the scaling workflow's default): the optimizer
//! and schedule a run takes at its global batch are the ones bench/converge.sh measured best there
//! (docs/results.md, the converge tables), so a sweep over node counts compares runs that each
//! train as well as their batch allows, not one rate that suits 64 images and fails 256:
//!
//! - up to the knee (1,024): Adam one-cycle: betas (0.9, 0.99), 0.004 at 128 scaled by the
//!   square-root rule, a warmup over 0.2 epochs from a tenth of the rate, cosine to 0;
//! - beyond: LARS (momentum, trust 0.02; 0.01 from 16,384), 0.01 at 64 scaled linearly, a 2-epoch
//!   warmup, cosine to 0, weight decay 5e-4 on weights.
//!
//! The run's `train.epochs` stays its budget: the cosine reaches 0 at its end, and a warmup never
//! takes more than half of it. `train.recipe: fixed` keeps the config's keys as written (the
//! seeds' fixed rate whatever the batch).

use crate::config::{LrScaling, LrScheduleKind, OptimizerKind, RecipeRule, TrainConfig};

/// The largest global batch the Adam recipe takes (the converge curve's knee).
pub const KNEE: usize = 1024;

/// The train keys a run uses at `global_batch`, and the recipe's name when the rule chose them.
pub fn resolve(t: &TrainConfig, global_batch: usize) -> (TrainConfig, Option<String>) {
    match t.recipe {
        RecipeRule::Fixed => (t.clone(), None),
        RecipeRule::ByGlobalBatch => {
            let (name, train) = by_global_batch(t, global_batch);
            (train, Some(format!("{name} (by global batch {global_batch})")))
        }
    }
}

fn by_global_batch(t: &TrainConfig, global_batch: usize) -> (&'static str, TrainConfig) {
    let d = TrainConfig::default();
    let half = t.epochs as f64 / 2.0;
    let mut r = TrainConfig {
        lr_schedule: LrScheduleKind::Cosine,
        decay_epochs: None,
        lr_decay_epochs: d.lr_decay_epochs.clone(),
        lr_decay_factor: d.lr_decay_factor,
        betas: d.betas,
        eps: d.eps,
        lars_trust: d.lars_trust,
        ..t.clone()
    };
    if global_batch <= KNEE {
        r.optimizer = OptimizerKind::Adam;
        r.betas = [0.9, 0.99];
        r.lr = 0.004;
        r.lr_scaling = LrScaling::Sqrt;
        r.lr_reference_batch = 128;
        r.warmup_epochs = 0.2f64.min(half);
        r.warmup_start_factor = Some(0.1);
        r.weight_decay = 0.0;
        ("adam-1cycle", r)
    } else {
        r.optimizer = OptimizerKind::Lars;
        r.lr = 0.01;
        r.lr_scaling = LrScaling::Linear;
        r.lr_reference_batch = 64;
        r.warmup_epochs = 2.0f64.min(half);
        r.warmup_start_factor = None;
        r.weight_decay = 5e-4;
        r.lars_trust = if global_batch >= 16384 { 0.01 } else { 0.02 };
        ("lars", r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    use crate::config::train_with as train;

    /// The rule at several global batches and budgets: the recipe the converge tables name, a
    /// config that validates, and the peak rate the scaling rule gives.
    #[test]
    fn the_rule_picks_the_measured_recipe_at_each_global_batch() {
        for epochs in [1, 3, 10] {
            let t = train(&["train.recipe=by_global_batch", &format!("train.epochs={epochs}")]);
            for (batch, name, optimizer) in [
                (64, "adam-1cycle", OptimizerKind::Adam),
                (128, "adam-1cycle", OptimizerKind::Adam),
                (256, "adam-1cycle", OptimizerKind::Adam),
                (1024, "adam-1cycle", OptimizerKind::Adam),
                (2048, "lars", OptimizerKind::Lars),
                (16384, "lars", OptimizerKind::Lars),
            ] {
                let (r, label) = resolve(&t, batch);
                assert_eq!(label.unwrap(), format!("{name} (by global batch {batch})"));
                assert_eq!(r.optimizer, optimizer);
                let cfg = Config {
                    train: r.clone(),
                    ..Config::default()
                };
                cfg.validate()
                    .unwrap_or_else(|e| panic!("{batch} x {epochs} epochs: {e:#}"));
                let plan = crate::plan::optim::OptimPlan::new(&t, batch);
                let want = match optimizer {
                    OptimizerKind::Adam => 0.004 * (batch as f64 / 128.0).sqrt(),
                    _ => 0.01 * batch as f64 / 64.0,
                };
                assert!((plan.peak_lr - want).abs() < 1e-12, "{batch}: {}", plan.peak_lr);
                assert_eq!(plan.recipe.as_deref(), Some(label_of(name, batch).as_str()));
            }
        }
    }

    fn label_of(name: &str, batch: usize) -> String {
        format!("{name} (by global batch {batch})")
    }

    /// `fixed` keeps every key as written: seed 001's rate at any batch.
    #[test]
    fn fixed_keeps_the_config() {
        let t = train(&["train.epochs=3"]);
        for batch in [64, 256, 4096] {
            let (r, label) = resolve(&t, batch);
            assert_eq!((r, label), (t.clone(), None));
            let plan = crate::plan::optim::OptimPlan::new(&t, batch);
            assert_eq!((plan.peak_lr, plan.optimizer), (0.01, OptimizerKind::Sgd));
        }
    }
}
