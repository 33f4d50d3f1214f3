//! The machine's measured peak as a file (`partrain peak` measures it, `perf::peak`): one row per
//! precision and thread count, versioned; and the one lookup of `PARTRAIN_PEAK`, which turns one
//! rank's peak into a job's.

use crate::util::machine::Cpu;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "partrain-peak";
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakRow {
    /// `fp32` or `bf16`.
    pub precision: String,
    pub threads: usize,
    pub gemm_gflops: f64,
    pub conv_gflops: f64,
    /// The larger of the two.
    pub peak_gflops: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// `partrain-peak` and its version (absent in version 1, before 2026-12-02).
    #[serde(default = "format_name")]
    pub format: String,
    #[serde(default = "legacy_version")]
    pub version: u32,
    pub cpu: Cpu,
    pub date: String,
    pub rows: Vec<PeakRow>,
}

impl Peak {
    pub fn load(path: &Path) -> Result<Peak> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {} (`partrain peak --out FILE` writes one)",
                path.display()
            )
        })?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let versions = crate::util::version::Versioned {
            format: FORMAT,
            oldest: 1,
            current: VERSION,
            unnamed: Some(1),
        };
        if let Err(e) = versions.check(&doc) {
            bail!("{}: {e}", path.display());
        }
        serde_json::from_value(doc).with_context(|| format!("{}: not a partrain peak file", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::util::atomic::write(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The peak of one rank with `threads` threads in `precision`, if measured.
    pub fn gflops(&self, precision: &str, threads: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.precision == precision && r.threads == threads)
            .map(|r| r.peak_gflops)
    }
}

/// The peak of a whole job from one rank's peak at `threads` threads: on each node, only as many
/// ranks as the node has cores for count (4 ranks on 2 cores share them: their peak is 2 ranks').
pub fn job_gflops(per_rank: f64, shape: &crate::comm::WorldShape, threads: usize, node_cores: usize) -> f64 {
    let full_ranks: usize = (0..shape.nodes())
        .map(|n| {
            let ranks = shape.node_of_rank.iter().filter(|&&x| x == n).count();
            crate::util::machine::Occupancy {
                ranks,
                threads,
                cores: node_cores,
            }
            .ranks_with_cores()
        })
        .sum();
    per_rank * full_ranks as f64
}

fn format_name() -> String {
    FORMAT.into()
}

fn legacy_version() -> u32 {
    1
}

/// The peak of a job whose ranks run `threads` threads in `precision` on the world `shape`, from
/// the file `PARTRAIN_PEAK` names (`partrain peak`); None without the variable. The one place the
/// variable is read: training summaries and conv-bench both ask here.
pub fn job_peak_from_env(
    precision: &str,
    threads: usize,
    shape: &crate::comm::WorldShape,
) -> Result<Option<f64>> {
    let Ok(file) = std::env::var("PARTRAIN_PEAK") else {
        return Ok(None);
    };
    let peak = Peak::load(Path::new(&file)).context("PARTRAIN_PEAK")?;
    let per_rank = peak.gflops(precision, threads).with_context(|| {
        format!("PARTRAIN_PEAK={file}: no {precision} peak measured at {threads} thread(s) per rank (partrain peak --threads ...)")
    })?;
    Ok(Some(job_gflops(
        per_rank,
        shape,
        threads,
        crate::util::node_cores(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::WorldShape;

    #[test]
    fn oversubscribed_ranks_share_the_peak_of_the_cores() {
        assert_eq!(job_gflops(100.0, &WorldShape::blocks(4, 4), 1, 2), 200.0);
        assert_eq!(job_gflops(100.0, &WorldShape::blocks(4, 2), 1, 2), 400.0);
        assert_eq!(job_gflops(100.0, &WorldShape::blocks(1, 1), 2, 2), 100.0);
        assert_eq!(job_gflops(100.0, &WorldShape::blocks(2, 2), 2, 2), 100.0);
    }
}
