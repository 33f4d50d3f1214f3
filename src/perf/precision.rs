//! The compute precision as a plan axis. A bf16 layout is predicted with the calibration's bf16
//! compute (`Calibration::compute_bf16`, which `calibrate` measures where the CPU has native
//! bf16) and weighed with bf16's measured steps to target over fp32's (`plan --precision-steps`:
//! bench/precision_steps.sh's CSV), so the planner picks bf16 only where its faster steps outweigh
//! any extra steps it needs to the target.

use super::calibration::Calibration;
use crate::config::Precision;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// bf16's steps to target over fp32's: the medians of the runs that reached the target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrecisionSteps {
    pub bf16_over_fp32: f64,
    /// Runs that reached the target: (fp32, bf16).
    pub runs: (usize, usize),
}

impl PrecisionSteps {
    /// Reads a CSV with columns `precision` (`fp32` or `bf16`) and `steps_to_target` (empty where
    /// a run never reached the target).
    pub fn read(path: &Path) -> Result<PrecisionSteps> {
        let name = || format!("--precision-steps: {}", path.display());
        let mut rows = csv::Reader::from_path(path).with_context(name)?;
        let headers = rows.headers().with_context(name)?.clone();
        let col = |c: &str| {
            headers
                .iter()
                .position(|h| h == c)
                .with_context(|| format!("{} has no column `{c}`", name()))
        };
        let (precision, steps) = (col("precision")?, col("steps_to_target")?);
        let (mut fp32, mut bf16) = (Vec::new(), Vec::new());
        for (i, r) in rows.records().enumerate() {
            let r = r.with_context(name)?;
            let text = r[steps].trim();
            if text.is_empty() {
                continue; // the run never reached the target
            }
            let s = match text.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => s,
                _ => bail!(
                    "{}, row {}: steps_to_target `{text}`: expected a positive number of steps, or nothing",
                    name(),
                    i + 2
                ),
            };
            match &r[precision] {
                "fp32" => fp32.push(s),
                "bf16" => bf16.push(s),
                other => bail!(
                    "{}, row {}: precision `{other}`: expected fp32 or bf16",
                    name(),
                    i + 2
                ),
            }
        }
        let runs = (fp32.len(), bf16.len());
        let (Some(f), Some(b)) = (crate::util::median(fp32), crate::util::median(bf16)) else {
            bail!(
                "{}: needs runs of both precisions that reached the target (fp32: {}, bf16: {})",
                name(),
                runs.0,
                runs.1
            )
        };
        let bf16_over_fp32 = b / f;
        if !(bf16_over_fp32.is_finite() && bf16_over_fp32 > 0.0) {
            bail!(
                "{}: bf16's median steps ({b}) over fp32's ({f}) is not a usable ratio",
                name()
            );
        }
        Ok(PrecisionSteps { bf16_over_fp32, runs })
    }
}

/// The precisions one plan weighs and what each is predicted with.
pub struct Precisions {
    /// The config's precision and its calibration.
    pub config: (Precision, Calibration),
    /// bf16 in the target scope, with its steps factor; None where not weighed.
    pub bf16: Option<(Calibration, f64)>,
    /// Why bf16 is or is not weighed, as `plan` prints it.
    pub note: String,
}

impl Precisions {
    /// `cal` measured in fp32 (and bf16 where it could); `steps` from `--precision-steps`.
    pub fn resolve(cal: &Calibration, precision: Precision, steps: Option<&Path>) -> Result<Precisions> {
        let bf16_cal = cal.in_precision(Precision::Bf16);
        let config_cal = match precision {
            Precision::Fp32 => cal.clone(),
            Precision::Bf16 => bf16_cal.clone().context(
                "train.precision is bf16 and the calibration measured no bf16 compute (calibrate measures it \
                 where the CPU has native bf16, or with PARTRAIN_EMULATED_BF16=1)",
            )?,
        };
        let steps = steps.map(PrecisionSteps::read).transpose()?;
        let (bf16, note) = match (precision, bf16_cal, steps) {
            (Precision::Bf16, ..) => (None, "precision: bf16, as the config sets".to_string()),
            (_, None, _) => (
                None,
                "bf16: not weighed (the calibration holds no bf16 compute: this CPU has no native bf16)"
                    .into(),
            ),
            (_, Some(_), None) => (
                None,
                "bf16: not weighed (its steps to target are unknown: --precision-steps FILE from \
                 bench/precision_steps.sh)"
                    .into(),
            ),
            (_, Some(c), Some(s)) => {
                let note = format!(
                    "bf16: weighed against fp32 (bf16's calibrated compute; {:.3}x fp32's steps to target, the medians of {} bf16 and {} fp32 runs)",
                    s.bf16_over_fp32, s.runs.1, s.runs.0
                );
                (Some((c, s.bf16_over_fp32)), note)
            }
        };
        Ok(Precisions {
            config: (precision, config_cal),
            bf16,
            note,
        })
    }
}

impl Calibration {
    /// This calibration with `precision`'s compute in `compute` (None where it was not measured).
    pub fn in_precision(&self, precision: Precision) -> Option<Calibration> {
        match precision {
            Precision::Fp32 => Some(self.clone()),
            Precision::Bf16 if self.compute_bf16.is_empty() => None,
            Precision::Bf16 => Some(Calibration {
                compute: self.compute_bf16.clone(),
                ..self.clone()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("steps.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_the_ratio_of_medians_skipping_runs_that_missed() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "precision,seed,steps_to_target\nfp32,42,450\nbf16,42,469\nfp32,43,450\nbf16,43,450\nfp32,44,500\nbf16,44,\n",
        );
        let s = PrecisionSteps::read(&p).unwrap();
        assert_eq!(s.runs, (3, 2));
        assert!((s.bf16_over_fp32 - 459.5 / 450.0).abs() < 1e-12, "{s:?}");
    }

    fn calibration(with_bf16: bool) -> Calibration {
        let row = |step: f64| {
            serde_json::json!({"threads": 1, "batch": 64, "forward_s": [step / 3.0],
                "backward_s": [2.0 * step / 3.0], "step_s": step})
        };
        let mut cal = serde_json::json!({
            "format": super::super::FORMAT, "version": super::super::VERSION, "date": "2026-12-07",
            "cpu": {"model_name": "test", "family": "0", "model": "0"},
            "preset": "mnist_cnn", "dataset": "mnist", "cores_per_node": 2, "base_rss_mb": 100.0,
            "layer_names": ["conv"], "layer_output_elems": [100], "layer_params": [10],
            "compute": [row(0.06)]
        });
        if with_bf16 {
            cal["compute_bf16"] = serde_json::json!([row(0.03)]);
        }
        serde_json::from_value(cal).unwrap()
    }

    /// bf16 is weighed only with both its compute and its steps; a bf16 config is planned in
    /// bf16's compute, and refused where the calibration has none.
    #[test]
    fn bf16_is_weighed_only_with_its_compute_and_its_steps() {
        let dir = tempfile::tempdir().unwrap();
        let steps = write(dir.path(), "precision,steps_to_target\nfp32,400\nbf16,440\n");
        let both = Precisions::resolve(&calibration(true), Precision::Fp32, Some(&steps)).unwrap();
        let (bf16, factor) = both.bf16.as_ref().unwrap();
        assert_eq!(
            (bf16.compute[0].step_s, both.config.1.compute[0].step_s),
            (0.03, 0.06)
        );
        assert!(
            (factor - 1.1).abs() < 1e-12 && both.note.contains("1.100x"),
            "{}",
            both.note
        );
        let no_steps = Precisions::resolve(&calibration(true), Precision::Fp32, None).unwrap();
        assert!(no_steps.bf16.is_none() && no_steps.note.contains("--precision-steps"));
        let no_compute = Precisions::resolve(&calibration(false), Precision::Fp32, Some(&steps)).unwrap();
        assert!(no_compute.bf16.is_none() && no_compute.note.contains("no native bf16"));
        let config_bf16 = Precisions::resolve(&calibration(true), Precision::Bf16, None).unwrap();
        assert_eq!(config_bf16.config.1.compute[0].step_s, 0.03);
        let e = Precisions::resolve(&calibration(false), Precision::Bf16, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("measured no bf16 compute"), "{e}");
    }

    #[test]
    fn refuses_missing_columns_unknown_precisions_and_one_sided_files() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("precision,steps\nfp32,1\n", "no column `steps_to_target`"),
            (
                "precision,steps_to_target\nfp16,1\n",
                "row 2: precision `fp16`: expected fp32 or bf16",
            ),
            ("precision,steps_to_target\nfp32,1\nbf16,\n", "fp32: 1, bf16: 0"),
            (
                "precision,steps_to_target\nfp32,1\nbf16,-3\n",
                "row 3: steps_to_target `-3`",
            ),
            (
                "precision,steps_to_target\nfp32,inf\nbf16,2\n",
                "row 2: steps_to_target `inf`",
            ),
        ];
        for (text, want) in cases {
            let e = PrecisionSteps::read(&write(dir.path(), text)).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("--precision-steps") && msg.contains(want), "{msg}");
        }
    }
}
