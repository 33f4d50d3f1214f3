//! The remedies for communication overhead as the performance model prices them, and what they
//! cost in steps to a target (measured by bench/remedies.sh):
//!
//! - traffic: the share of the f32 gradient a step sends (bf16: 1/2; PowerSGD: its factors and
//!   the tensors it leaves whole, `train::powersgd::spans` on the net's shapes);
//! - hiding: bucketed overlap hides the averaging behind the backward of the layers before the
//!   first bucket to close; one-step-stale behind the whole next step;
//! - frequency: post-local SGD averages gradients every step during its warm-up, then the
//!   weights every K steps;
//! - steps: a remedy that changes the arithmetic (compression, staleness, local steps) may need
//!   more steps to the target: the factor is its median steps over plain averaging's, measured.

use crate::model::LayerSpec;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// How a remedy averages.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Remedy {
    Plain,
    /// Bucketed overlap with backward (`sync.overlap`, 1 MB buckets).
    Overlap,
    Bf16,
    PowerSgd(usize),
    /// Post-local SGD averaging the weights every K steps after a warm-up epoch.
    PostLocal(usize),
    /// One-step-stale averaging (`sync.delay: 1`).
    Stale,
}

/// What `plan` weighs with the target scope.
pub const ALL: [Remedy; 9] = [
    Remedy::Plain,
    Remedy::Overlap,
    Remedy::Bf16,
    Remedy::PowerSgd(1),
    Remedy::PowerSgd(2),
    Remedy::PowerSgd(4),
    Remedy::PostLocal(4),
    Remedy::PostLocal(16),
    Remedy::Stale,
];

impl Remedy {
    /// bench/remedies.sh's name, and the settings that select it.
    pub fn name(self) -> String {
        match self {
            Remedy::Plain => "plain".into(),
            Remedy::Overlap => "overlap".into(),
            Remedy::Bf16 => "bf16".into(),
            Remedy::PowerSgd(r) => format!("powersgd{r}"),
            Remedy::PostLocal(k) => format!("postlocal{k}"),
            Remedy::Stale => "stale".into(),
        }
    }

    pub fn settings(self) -> String {
        match self {
            Remedy::Plain => "sync.compress=none".into(),
            Remedy::Overlap => "sync.overlap=true".into(),
            Remedy::Bf16 => "sync.compress=bf16".into(),
            Remedy::PowerSgd(r) => format!("sync.compress=powersgd sync.powersgd_rank={r}"),
            Remedy::PostLocal(k) => {
                format!("sync.mode=weights sync.average_every={k} sync.local_sgd_after=<1 epoch>")
            }
            Remedy::Stale => "sync.delay=1".into(),
        }
    }

    /// The share of the f32 gradient's bytes one averaging sends, for a net of `layers`.
    pub fn traffic(self, layers: &[LayerSpec]) -> f64 {
        match self {
            Remedy::Bf16 => 0.5,
            Remedy::PowerSgd(r) => powersgd_share(layers, r),
            _ => 1.0,
        }
    }
}

/// PowerSGD's elements per step (its factors P and Q, and the tensors it leaves whole) over the
/// net's parameters.
pub fn powersgd_share(layers: &[LayerSpec], rank: usize) -> f64 {
    let params: Vec<(i64, Vec<i64>)> = layers
        .iter()
        .flat_map(|l| l.kind.param_shapes())
        .map(|s| (0, s))
        .collect();
    let total: i64 = params.iter().map(|(_, s)| s.iter().product::<i64>()).sum();
    let sent: i64 = crate::train::powersgd::spans(&params, rank as i64)
        .iter()
        .map(|s| {
            s.matrix
                .map_or(s.numel, |(rows, cols)| (rows + cols) * rank as i64)
        })
        .sum();
    sent as f64 / total.max(1) as f64
}

/// Steps to target of each remedy over plain averaging's, from bench/remedies.sh's CSV (median
/// over every link and seed that reached the target); a remedy not measured is not weighed.
#[derive(Debug, Clone, Default)]
pub struct StepFactors(pub HashMap<String, f64>);

impl StepFactors {
    pub fn read(path: &Path) -> Result<StepFactors> {
        let mut rows =
            csv::Reader::from_path(path).with_context(|| format!("--remedies: {}", path.display()))?;
        let headers = rows.headers()?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("--remedies: {} has no column `{name}`", path.display()))
        };
        let (remedy, steps) = (col("remedy")?, col("steps_to_target")?);
        let mut by: HashMap<String, Vec<f64>> = HashMap::new();
        for r in rows.records() {
            let r = r?;
            if let Ok(s) = r[steps].parse::<f64>() {
                by.entry(r[remedy].to_string()).or_default().push(s);
            }
        }
        let median = |v: &Vec<f64>| crate::util::median(v.clone()).unwrap_or(f64::NAN);
        let plain = by.get("plain").map(median).with_context(|| {
            format!(
                "--remedies: {} has no plain run that reached the target",
                path.display()
            )
        })?;
        Ok(StepFactors(
            by.iter()
                .filter(|(k, _)| !k.starts_with("ddp"))
                .map(|(k, v)| (k.clone(), median(v) / plain))
                .collect(),
        ))
    }

    /// The factor of `remedy` (plain's is 1); None when it was not measured.
    pub fn factor(&self, remedy: Remedy) -> Option<f64> {
        match remedy {
            Remedy::Plain => Some(1.0),
            r => self.0.get(&r.name()).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_of_each_remedy_on_seed_001s_net() {
        let layers = crate::model::preset_layers(crate::config::Preset::MnistCnn, 0.25);
        assert_eq!(Remedy::Plain.traffic(&layers), 1.0);
        assert_eq!(Remedy::Bf16.traffic(&layers), 0.5);
        // Rank 2: 7,824 of 421,642 elements (the factors of four weights and the four biases).
        let share = Remedy::PowerSgd(2).traffic(&layers);
        assert!((share - 7824.0 / 421_642.0).abs() < 1e-9, "{share}");
        assert!(Remedy::PowerSgd(1).traffic(&layers) < share && share < Remedy::PowerSgd(4).traffic(&layers));
    }

    #[test]
    fn step_factors_are_medians_over_plains() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("remedies.csv");
        std::fs::write(
            &p,
            "link,remedy,seed,time_to_target_s,steps_to_target\n\
             100mbit,plain,42,10,800\n100mbit,plain,43,11,820\n100mbit,plain,44,9,780\n\
             100mbit,powersgd2,42,5,960\n1gbit,stale,42,5,\n1gbit,ddp-none,42,5,700\n",
        )
        .unwrap();
        let f = StepFactors::read(&p).unwrap();
        assert_eq!(f.factor(Remedy::Plain), Some(1.0));
        assert!((f.factor(Remedy::PowerSgd(2)).unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(f.factor(Remedy::Stale), None, "never reached: not weighed");
        assert_eq!(f.factor(Remedy::Bf16), None);
    }
}
