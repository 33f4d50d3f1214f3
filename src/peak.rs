//! `partrain peak`: this machine's arithmetic peak, measured rather than looked up, so that speed
//! can be reported as a fraction of what the same cores reach on the same day.
//!
//!   partrain peak --threads 1,2 --out results/bench/peak.json
//!
//! For each precision (fp32, and bf16 where the CPU has it) and thread count it times libtorch's
//! matrix multiply (2048^3) and a large channels-last convolution (the oneDNN kernel the nets use;
//! 32 x 256 x 14 x 14 input, 256 3x3 filters: of eight shapes tried on the development machine the
//! fastest, 120 GFLOP/s fp32 and 240 bf16 on one core, against 112 for 32 x 64 x 56 x 56 and 92 for
//! the GEMM), the best of seven repeats each, and keeps the faster of the two: the practical peak. `summary.json` reports `fraction_of_peak` against this file when
//! `PARTRAIN_PEAK` names it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, clap::Args)]
pub struct PeakArgs {
    /// Thread counts to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub threads: Vec<usize>,
    /// Where to write the measurement (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The CPU as `lscpu` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub model_name: String,
    pub family: String,
    pub model: String,
}

impl Cpu {
    /// From `/proc/cpuinfo` (what `lscpu` reads).
    pub fn this_machine() -> Cpu {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        Cpu {
            model_name: field("model name"),
            family: field("cpu family"),
            model: field("model"),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (family {}, model {})",
            self.model_name, self.family, self.model
        )
    }
}

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
    pub cpu: Cpu,
    pub date: String,
    pub rows: Vec<PeakRow>,
}

impl Peak {
    pub fn load(path: &Path) -> Result<Peak> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a partrain peak file", path.display()))
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
    let fit = (node_cores / threads.max(1)).max(1);
    let full_ranks: usize = (0..shape.nodes())
        .map(|n| shape.node_of_rank.iter().filter(|&&x| x == n).count().min(fit))
        .sum();
    per_rank * full_ranks as f64
}

/// The best of `repeats` timings of `f` (after one warm-up), in GFLOP/s for `flop` per call.
fn best_gflops(flop: f64, repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            flop / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn measure(kind: Kind, threads: usize) -> PeakRow {
    tch::set_num_threads(threads as i32);
    let opts = (Kind::Float, tch::Device::Cpu);
    let n = 2048i64;
    let (a, b) = (
        Tensor::randn([n, n], opts).to_kind(kind),
        Tensor::randn([n, n], opts).to_kind(kind),
    );
    let gemm = best_gflops(2.0 * (n * n * n) as f64, 5, || {
        let _ = a.matmul(&b);
    });
    let (batch, c, hw) = (32i64, 256i64, 14i64);
    let x = crate::model::to_channels_last(&Tensor::randn([batch, c, hw, hw], opts)).to_kind(kind);
    let w = crate::model::to_channels_last(&Tensor::randn([c, c, 3, 3], opts)).to_kind(kind);
    let conv_flop = 2.0 * (batch * c * hw * hw * c * 9) as f64;
    let conv = best_gflops(conv_flop, 7, || {
        let _ = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    });
    PeakRow {
        precision: if kind == Kind::BFloat16 { "bf16" } else { "fp32" }.into(),
        threads,
        gemm_gflops: gemm,
        conv_gflops: conv,
        peak_gflops: gemm.max(conv),
    }
}

impl PeakArgs {
    pub fn run(&self) -> Result<Peak> {
        let mut kinds = vec![Kind::Float];
        if crate::util::cpu_has_bf16() {
            kinds.push(Kind::BFloat16);
        }
        let rows = kinds
            .iter()
            .flat_map(|&k| self.threads.iter().map(move |&t| measure(k, t)))
            .collect();
        let peak = Peak {
            cpu: Cpu::this_machine(),
            date: crate::util::today(),
            rows,
        };
        if let Some(out) = &self.out {
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(out, serde_json::to_string_pretty(&peak)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        Ok(peak)
    }
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
