//! The steps-to-target curve as a file and a function: one row per global batch (what
//! `partrain converge table` writes, `report::converge` builds), and the steps to the target at
//! any batch by log-log interpolation, its knee, and the noise scale its runs measured.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One batch of the curve: the best recipe over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRow {
    pub dataset: String,
    pub target_accuracy: f64,
    pub batch: usize,
    pub recipe: String,
    pub seeds: usize,
    /// Seeds that reached the target.
    pub reached: usize,
    /// Median over the seeds (a seed that missed counts as infinitely many steps), min and max.
    pub steps_median: Option<f64>,
    pub steps_min: Option<usize>,
    pub steps_max: Option<usize>,
    pub epochs_median: Option<f64>,
    pub seconds_median: Option<f64>,
    /// The worst and best seed's best accuracy.
    pub best_accuracy_min: f64,
    pub best_accuracy_max: f64,
    pub noise_scale_median: Option<f64>,
    /// The perfect-scaling line through the smallest batch's steps: S(B0) B0 / B.
    pub perfect_steps: Option<f64>,
}

/// The batch at which the measured steps are `factor` times the perfect-scaling line,
/// interpolated in log-log between the two measured batches around it.
pub fn knee(rows: &[CurveRow], factor: f64) -> Option<f64> {
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some(((r.batch as f64).ln(), (r.steps_median? / r.perfect_steps?).ln())))
        .collect();
    let want = factor.ln();
    pts.windows(2).find_map(|w| {
        let ((b0, r0), (b1, r1)) = (w[0], w[1]);
        (r0 < want && r1 >= want).then(|| (b0 + (b1 - b0) * (want - r0) / (r1 - r0)).exp())
    })
}

/// Steps to the target at `batch` from the measured curve: log-log interpolation between
/// measured batches, perfect scaling below the smallest, the largest's steps beyond it (steps do
/// not fall past the maximal useful batch); None where the target was not reached.
pub fn steps_at(rows: &[CurveRow], batch: f64) -> Option<f64> {
    let pts: Vec<(f64, Option<f64>)> = rows.iter().map(|r| (r.batch as f64, r.steps_median)).collect();
    let (first, last) = (pts.first()?, pts.last()?);
    if batch <= first.0 {
        return first.1.map(|s| s * first.0 / batch);
    }
    if batch >= last.0 {
        return last.1;
    }
    let w = pts.windows(2).find(|w| batch <= w[1].0)?;
    let ((b0, s0), (b1, s1)) = ((w[0].0, w[0].1?), (w[1].0, w[1].1?));
    let f = (batch.ln() - b0.ln()) / (b1.ln() - b0.ln());
    Some((s0.ln() + f * (s1.ln() - s0.ln())).exp())
}

/// The noise scale the curve's runs measured: the median over batches of each batch's median.
pub fn noise_scale(rows: &[CurveRow]) -> Option<f64> {
    crate::util::median(rows.iter().filter_map(|r| r.noise_scale_median).collect())
}

/// Reads a curve CSV that `write` made.
pub fn read_curve(path: &Path) -> Result<Vec<CurveRow>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows: Vec<CurveRow> = r
        .deserialize()
        .collect::<std::result::Result<_, _>>()
        .with_context(|| {
            format!(
                "{}: not a steps-to-target curve (partrain converge writes one)",
                path.display()
            )
        })?;
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}
