//! Where a pipeline's layers are cut into stages, and the one rule that balances them.

use crate::config::{Config, StageBoundaries};
use crate::model::{self, LayerSpec};
use anyhow::{bail, Result};
use std::ops::Range;

/// Where the net's ordered layer list is cut into stages, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSplit {
    /// The first layer of stages 1.. (empty for one stage).
    pub boundaries: Vec<usize>,
    pub ranges: Vec<Range<usize>>,
    pub source: &'static str,
}

impl StageSplit {
    /// The one balancing rule: the contiguous cut of layers with per-layer `costs` into `stages`
    /// minimising the most expensive stage (the plan with measured times or multiply-adds, the
    /// performance model with calibrated times).
    pub fn balanced(costs: &[f64], stages: usize, source: &'static str) -> StageSplit {
        let boundaries = if stages > 1 {
            balance(costs, stages)
        } else {
            Vec::new()
        };
        StageSplit::new(costs.len(), boundaries, source)
    }

    pub fn new(layers: usize, boundaries: Vec<usize>, source: &'static str) -> StageSplit {
        StageSplit {
            ranges: stage_ranges(layers, &boundaries),
            boundaries,
            source,
        }
    }
}

pub const MEASURED: &str = "measured forward+backward seconds";
pub const MACS: &str = "multiply-adds";
pub const EXPLICIT: &str = "explicit boundaries";
pub const ONE_STAGE: &str = "one stage";
/// The performance model's split (`plan`'s layouts).
pub const CALIBRATED: &str = "calibrated seconds";
/// Why a split is where it is (rank 0's reason travels to the other ranks as an index).
pub const SOURCES: [&str; 5] = [ONE_STAGE, MEASURED, MACS, EXPLICIT, CALIBRATED];

/// The split `parallel.stage_boundaries` asks for, measured or computed on this rank.
pub(super) fn choose_split(cfg: &Config, layers: &[LayerSpec], input: [i64; 3]) -> Result<StageSplit> {
    let stages = cfg.parallel.stages;
    let rule = &cfg.parallel.stage_boundaries;
    if stages == 1 {
        return Ok(StageSplit::new(layers.len(), Vec::new(), ONE_STAGE));
    }
    let costs = match rule {
        StageBoundaries::List(b) => return Ok(StageSplit::new(layers.len(), b.clone(), EXPLICIT)),
        StageBoundaries::Macs => None,
        StageBoundaries::Auto | StageBoundaries::Measured => {
            let secs = model::measure_layer_seconds(layers, input, 16, 5);
            let usable = secs.iter().all(|s| s.is_finite() && *s >= 0.0) && secs.iter().any(|s| *s > 0.0);
            if !usable && *rule == StageBoundaries::Measured {
                bail!("parallel.stage_boundaries: measured, but the per-layer timing was unusable ({secs:?}); use macs or a list");
            }
            usable.then_some(secs)
        }
    };
    match costs {
        Some(secs) => Ok(balanced_by_blocks(layers, &secs, stages)),
        None => Ok(StageSplit::balanced(
            &model::macs_costs(layers, input),
            stages,
            MACS,
        )),
    }
}

/// A measured split: the timing rule costs whole blocks (a layer with parameters and the
/// parameter-free layers after it), so stages cut only where a block starts. Balancing the
/// per-layer costs instead cut mnist_cnn after conv1 (a tie with cutting after its pool), which
/// sends 4x the activation and loses the fused first block. Nets with fewer blocks than stages
/// fall back to the per-layer costs.
fn balanced_by_blocks(layers: &[LayerSpec], secs: &[f64], stages: usize) -> StageSplit {
    let starts = model::block_starts(layers);
    if starts.len() < stages {
        return StageSplit::balanced(secs, stages, MEASURED);
    }
    let block_costs: Vec<f64> = starts
        .iter()
        .enumerate()
        .map(|(b, &s)| {
            secs[s..starts.get(b + 1).copied().unwrap_or(layers.len())]
                .iter()
                .sum()
        })
        .collect();
    let boundaries = balance(&block_costs, stages)
        .into_iter()
        .map(|b| starts[b])
        .collect();
    StageSplit::new(layers.len(), boundaries, MEASURED)
}

/// Contiguous split of layers with the given per-layer `costs` into `stages` non-empty stages
/// minimising the most expensive stage; returns the first layer of stages 1.. (the boundaries).
pub fn balance(costs: &[f64], stages: usize) -> Vec<usize> {
    let n = costs.len();
    assert!(stages >= 1 && stages <= n);
    let mut prefix = vec![0.0];
    for c in costs {
        prefix.push(prefix.last().unwrap() + c);
    }
    // best[k][j]: lowest max-stage cost for the first j layers in k stages; cut[k][j]: last start.
    let mut best = vec![vec![f64::INFINITY; n + 1]; stages + 1];
    let mut cut = vec![vec![0usize; n + 1]; stages + 1];
    best[0][0] = 0.0;
    for k in 1..=stages {
        for j in k..=n {
            for i in (k - 1)..j {
                let c = best[k - 1][i].max(prefix[j] - prefix[i]);
                if c < best[k][j] {
                    best[k][j] = c;
                    cut[k][j] = i;
                }
            }
        }
    }
    let mut bounds = Vec::new();
    let mut j = n;
    for k in (2..=stages).rev() {
        j = cut[k][j];
        bounds.push(j);
    }
    bounds.reverse();
    bounds
}

/// Ranges of layer indices per stage, from boundaries.
pub fn stage_ranges(num_layers: usize, bounds: &[usize]) -> Vec<std::ops::Range<usize>> {
    let starts: Vec<usize> = std::iter::once(0).chain(bounds.iter().copied()).collect();
    let ends: Vec<usize> = bounds
        .iter()
        .copied()
        .chain(std::iter::once(num_layers))
        .collect();
    starts.into_iter().zip(ends).map(|(a, b)| a..b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_minimises_the_largest_stage() {
        assert_eq!(balance(&[1.0, 1.0, 1.0, 1.0], 2), vec![2]);
        assert_eq!(balance(&[5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2), vec![1]);
        assert_eq!(balance(&[1.0, 1.0, 8.0, 1.0], 3), vec![2, 3]);
        let b = balance(&[1.0; 11], 4);
        assert_eq!(b.len(), 3);
        assert_eq!(stage_ranges(11, &b).iter().map(|r| r.len()).max(), Some(3));
        assert_eq!(stage_ranges(11, &[3, 7]), vec![0..3, 3..7, 7..11]);
    }
}
