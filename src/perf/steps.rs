//! Steps to a target accuracy as a function of the global batch, for `plan --target-accuracy`:
//! from a measured curve (`partrain converge table`'s CSV: log-log interpolation between measured
//! batches, perfect scaling below the smallest, nothing past the largest: beyond what was measured
//! nobody knows whether the target is reached at all), or from the noise-scale model of McCandlish
//! et al., S(B) = S_min (1 + B_noise / B), fitted to one run's steps to target and noise scale.

use super::curve::CurveRow;
use anyhow::{bail, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum StepsModel {
    Curve {
        rows: Vec<CurveRow>,
        source: String,
    },
    NoiseScale {
        s_min: f64,
        b_noise: f64,
        target: f64,
        source: String,
    },
}

impl StepsModel {
    /// The measured curve in `path`, which must be for `target`.
    pub fn from_curve(path: &Path, target: f64) -> Result<StepsModel> {
        let rows = super::curve::read_curve(path)?;
        let have = rows[0].target_accuracy;
        if (have - target).abs() > 1e-9 {
            bail!(
                "--curve: {} measured steps to {have}%, and --target-accuracy is {target}%",
                path.display()
            );
        }
        Ok(StepsModel::Curve {
            rows,
            source: path.display().to_string(),
        })
    }

    /// The noise-scale model through the run in `dir` (its summary.json), trained to `target`.
    pub fn from_run(dir: &Path, target: f64) -> Result<StepsModel> {
        let s = crate::record::summary::read_summary(&dir.join(crate::util::run_files::SUMMARY))?;
        if s.target.target_accuracy != Some(target) {
            bail!(
                "--run: {} was trained to target {:?}%, and --target-accuracy is {target}%",
                dir.display(),
                s.target.target_accuracy
            );
        }
        let steps = s
            .target
            .steps_to_target
            .with_context(|| format!("--run: {} never reached its target", dir.display()))?;
        let b_noise = s
            .target
            .noise_scale_at_target
            .or(s.target.noise_scale)
            .with_context(|| {
                format!(
                    "--run: {} measured no noise scale (a run with several replicas or micro-batches does)",
                    dir.display()
                )
            })?;
        let b = s.global_batch as f64;
        Ok(StepsModel::NoiseScale {
            s_min: steps as f64 / (1.0 + b_noise / b),
            b_noise,
            target,
            source: dir.display().to_string(),
        })
    }

    /// The test accuracy (percent) the steps are to.
    pub fn target(&self) -> f64 {
        match self {
            StepsModel::Curve { rows, .. } => rows[0].target_accuracy,
            StepsModel::NoiseScale { target, .. } => *target,
        }
    }

    /// Predicted steps to the target at global batch `batch`; None where the model cannot say.
    pub fn steps(&self, batch: usize) -> Option<f64> {
        match self {
            StepsModel::Curve { rows, .. } => {
                let largest = rows.last()?.batch;
                (batch <= largest)
                    .then(|| super::curve::steps_at(rows, batch as f64))
                    .flatten()
            }
            StepsModel::NoiseScale { s_min, b_noise, .. } => Some(s_min * (1.0 + b_noise / batch as f64)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            StepsModel::Curve { rows, source } => format!(
                "steps to target from the measured curve {source} (global batches {}-{}, nothing predicted beyond)",
                rows[0].batch,
                rows.last().map_or(0, |r| r.batch)
            ),
            StepsModel::NoiseScale {
                s_min, b_noise, source, ..
            } => format!(
                "steps to target from the noise-scale model S(B) = {s_min:.0} (1 + {b_noise:.0} / B), fitted to {source}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_model_passes_through_its_run() {
        let m = StepsModel::NoiseScale {
            s_min: 100.0,
            b_noise: 1000.0,
            target: 99.0,
            source: "x".into(),
        };
        assert_eq!(m.steps(1000), Some(200.0));
        assert_eq!(m.steps(100), Some(1100.0));
        assert!((m.steps(1_000_000).unwrap() - 100.1).abs() < 1e-9);
    }
}
