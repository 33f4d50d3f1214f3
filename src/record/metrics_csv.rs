//! `metrics.csv`: one row per evaluation (at an epoch's end, and every `train.eval_every_steps`).
//! Every row rewrites the file atomically (it is a few kilobytes), so a killed rank leaves the
//! rows before its last write; a reader still tolerates a torn last line (a file copied while
//! written, another writer) by dropping it and saying so.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE: &str = "metrics.csv";

/// One row of `metrics.csv`: one evaluation, at an epoch's end or inside it
/// (`train.eval_every_steps`). Loss, seconds, images/s and the time split are the epoch's so far,
/// so the row at an epoch's end covers the whole epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub epoch: usize,
    /// Steps of this epoch so far.
    pub steps: usize,
    pub global_step: usize,
    /// Training images so far, in all epochs.
    pub images: usize,
    /// Whether this is the evaluation at the end of the epoch.
    pub epoch_end: bool,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub epoch_seconds: f64,
    pub samples_per_second: f64,
    pub compute_s: f64,
    pub allreduce_s: f64,
    pub pipeline_wait_s: f64,
    pub eval_seconds: f64,
    /// The run clock (training, evaluations, checkpoints) at the end of this evaluation: the
    /// time to accuracy axis.
    pub run_seconds: f64,
    /// The learning rate of the last step.
    pub lr: f64,
    /// The smoothed gradient noise scale B_simple (empty when the layout does not measure it).
    pub noise_scale: Option<f64>,
    pub peak_rss_mb: f64,
}

/// The rows of a `metrics.csv` and, when its last line was torn (no line end), a note naming it.
pub fn read_rows(path: &Path) -> Result<(Vec<EvalRow>, Option<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (complete, torn) = match text.rfind('\n') {
        Some(i) if i + 1 < text.len() => (&text[..=i], true),
        None if !text.is_empty() => ("", true),
        _ => (text.as_str(), false),
    };
    let mut rdr = csv::Reader::from_reader(complete.as_bytes());
    let rows = rdr
        .deserialize::<EvalRow>()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("{}: row {} is malformed", path.display(), i + 1)))
        .collect::<Result<Vec<_>>>()?;
    let note = torn.then(|| {
        format!(
            "{}: its last line is torn (cut off while written) and was left out",
            path.display()
        )
    });
    Ok((rows, note))
}

/// Writes `metrics.csv` row by row, each time the whole file, atomically.
pub struct MetricsWriter {
    path: PathBuf,
    text: String,
}

impl MetricsWriter {
    /// A new `metrics.csv` holding the header.
    pub fn create(dir: &Path) -> Result<Self> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(header())?;
        let text = String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
        let writer = MetricsWriter {
            path: dir.join(FILE),
            text,
        };
        writer.flush()?;
        Ok(writer)
    }

    /// A resumed run's `metrics.csv`, keeping the rows of evaluations up to global step
    /// `keep_through` (the checkpoint's): later rows are retaken by the resumed run.
    pub fn resume(dir: &Path, keep_through: usize) -> Result<Self> {
        let path = dir.join(FILE);
        let (rows, _) = match read_rows(&path) {
            Ok(r) => r,
            Err(_) if !path.exists() => (Vec::new(), None),
            Err(e) => return Err(e),
        };
        let mut w = Self::create(dir)?;
        for r in rows.iter().filter(|r| r.global_step <= keep_through) {
            w.push(r)?;
        }
        w.flush()?;
        Ok(w)
    }

    fn push(&mut self, row: &EvalRow) -> Result<()> {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::new());
        w.serialize(row)?;
        self.text += std::str::from_utf8(&w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        crate::util::atomic::write(&self.path, self.text.as_bytes())
    }

    /// Adds `row` and rewrites the file.
    pub fn row(&mut self, row: &EvalRow) -> Result<()> {
        self.push(row)?;
        self.flush()
    }
}

/// The column names, in `EvalRow`'s order.
fn header() -> Vec<&'static str> {
    vec![
        "epoch",
        "steps",
        "global_step",
        "images",
        "epoch_end",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "epoch_seconds",
        "samples_per_second",
        "compute_s",
        "allreduce_s",
        "pipeline_wait_s",
        "eval_seconds",
        "run_seconds",
        "lr",
        "noise_scale",
        "peak_rss_mb",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize) -> EvalRow {
        EvalRow {
            epoch: 1,
            steps: step,
            global_step: step,
            images: 64 * step,
            epoch_end: false,
            train_loss: 0.5,
            test_loss: 0.4,
            test_accuracy: 90.0,
            epoch_seconds: 1.0,
            samples_per_second: 64.0,
            compute_s: 0.9,
            allreduce_s: 0.0,
            pipeline_wait_s: 0.0,
            eval_seconds: 0.1,
            run_seconds: 1.1,
            lr: 0.01,
            noise_scale: Some(100.0),
            peak_rss_mb: 200.0,
        }
    }

    #[test]
    fn rows_round_trip_resume_keeps_the_checkpoint_s_and_a_torn_tail_is_dropped() {
        let dir = std::env::temp_dir().join(format!("partrain-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = MetricsWriter::create(&dir).unwrap();
        for s in [10, 20, 30] {
            w.row(&row(s)).unwrap();
        }
        let (rows, note) = read_rows(&dir.join(FILE)).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.global_step).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        assert!(note.is_none());
        MetricsWriter::resume(&dir, 20).unwrap();
        assert_eq!(read_rows(&dir.join(FILE)).unwrap().0.len(), 2);
        // A torn last line: the complete rows, and a note naming the file.
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        std::fs::write(dir.join(FILE), format!("{text}1,5,5,320,fal")).unwrap();
        let (rows, note) = read_rows(&dir.join(FILE)).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(note.unwrap().contains("torn"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
