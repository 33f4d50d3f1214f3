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

use crate::record::peak::{Peak, PeakRow};
use crate::util::machine::Cpu;
use anyhow::Result;
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

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

/// Measures the peak at each of `threads` thread counts (fp32, and bf16 where the CPU has it)
/// and writes it to `out` when given.
pub fn measure_all(threads: &[usize], out: Option<&Path>) -> Result<Peak> {
    let mut kinds = vec![Kind::Float];
    if crate::util::cpu_has_bf16() {
        kinds.push(Kind::BFloat16);
    }
    let rows = kinds
        .iter()
        .flat_map(|&k| threads.iter().map(move |&t| measure(k, t)))
        .collect();
    let peak = Peak {
        format: crate::record::peak::FORMAT.into(),
        version: crate::record::peak::VERSION,
        cpu: Cpu::this_machine(),
        date: crate::util::today(),
        rows,
    };
    if let Some(out) = out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        peak.save(out)?;
    }
    Ok(peak)
}
