//! Seed 003's experiment: one convolution layer's forward and backward over a batch split across
//! MPI ranks, for strong scaling (fixed total batch) and weak scaling (fixed batch per rank).
//!
//!   mpirun -np 4 partrain conv-bench --mode strong --batch 80 --channels 3 --size 1024
//!   bash scripts/conv_bench.sh        # 1, 2 and 4 ranks, both modes, both of seed 003's cases
//!
//! Each rank builds only its own share of the batch (seed 003's rank 0 held the whole input and
//! scattered it), runs forward + backward, and reports its time and peak memory; rank 0 appends
//! a row (time = max over ranks) to `<out>/conv_bench_<case>_<mode>.csv` and rewrites the
//! markdown table next to it.

use crate::comm::Comm;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Seed 003's two experiments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A fixed total batch, split across the ranks.
    Strong,
    /// The batch per rank fixed: the total grows with the ranks.
    Weak,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Strong => "strong",
            Mode::Weak => "weak",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvBenchRow {
    pub processes: usize,
    pub threads_per_rank: usize,
    pub mode: Mode,
    pub local_batch: String,
    pub seconds_max: f64,
    pub memory_mb_per_rank: String,
    pub memory_mb_total: f64,
    pub output_shape: String,
}

/// The command line of `partrain conv-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvBench {
    /// Name of the case (output file names): e.g. large, small.
    #[arg(long, default_value = "large")]
    pub case: String,
    /// strong (batch split across ranks) or weak (batch per rank).
    #[arg(long, value_enum, default_value = "strong")]
    pub mode: Mode,
    #[arg(long, default_value_t = 80)]
    pub batch: usize,
    #[arg(long, default_value_t = 3)]
    pub channels: i64,
    #[arg(long, default_value_t = 3)]
    pub out_channels: i64,
    /// Image height and width.
    #[arg(long, default_value_t = 1024)]
    pub size: i64,
    #[arg(long, default_value_t = 3)]
    pub kernel: i64,
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// libtorch threads per rank.
    #[arg(long, default_value_t = 1)]
    pub threads: i32,
    #[arg(long, default_value = "results/conv_bench")]
    pub out: std::path::PathBuf,
}

/// This rank's share of `batch` images: strong scaling splits it (the first `batch % size` ranks
/// take one more), weak scaling gives every rank `batch`.
pub fn local_batch(mode: Mode, batch: usize, rank: usize, size: usize) -> usize {
    match mode {
        Mode::Weak => batch,
        Mode::Strong => batch / size + usize::from(rank < batch % size),
    }
}

impl ConvBench {
    pub fn run(&self, comm: &Comm) -> Result<ConvBenchRow> {
        tch::set_num_threads(self.threads);
        let out = self.out.as_path();
        if self.batch == 0
            || self.size < self.kernel
            || self.kernel < 1
            || self.channels < 1
            || self.out_channels < 1
        {
            bail!(
                "conv-bench: batch, channels and kernel must be positive and the image at least kernel-sized"
            );
        }
        let (rank, size) = (comm.rank(), comm.size());
        let b = local_batch(self.mode, self.batch, rank, size) as i64;
        let opts = (Kind::Float, tch::Device::Cpu);
        tch::manual_seed(rank as i64);
        let weight = (Tensor::randn([self.out_channels, self.channels, self.kernel, self.kernel], opts)
            * 0.1)
            .set_requires_grad(true);
        let x = Tensor::randn([b.max(1), self.channels, self.size, self.size], opts).narrow(0, 0, b);
        comm.barrier();
        let t = Instant::now();
        for _ in 0..self.repeats.max(1) {
            if b > 0 {
                let y = x.conv2d(&weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
                y.sum(Kind::Float).backward();
            }
        }
        let mine = t.elapsed().as_secs_f64() / self.repeats.max(1) as f64;
        let times = comm.all_gather(mine);
        let mem = comm.all_gather(crate::util::peak_rss_mb());
        let locals = comm.all_gather(b as u64);
        let total_batch: u64 = locals.iter().sum();
        let o = self.size - self.kernel + 1;
        let row = ConvBenchRow {
            processes: size,
            threads_per_rank: tch::get_num_threads() as usize,
            mode: self.mode,
            local_batch: locals.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(";"),
            seconds_max: times.iter().cloned().fold(0.0, f64::max),
            memory_mb_per_rank: mem
                .iter()
                .map(|m| format!("{m:.1}"))
                .collect::<Vec<_>>()
                .join(";"),
            memory_mb_total: mem.iter().sum(),
            output_shape: format!("({total_batch}, {}, {o}, {o})", self.out_channels),
        };
        if comm.is_root() {
            self.append(out, &row)?;
        }
        Ok(row)
    }

    fn append(&self, out: &Path, row: &ConvBenchRow) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let stem = out.join(format!("conv_bench_{}_{}", self.case, self.mode.name()));
        let csv_path = stem.with_extension("csv");
        let mut rows: Vec<ConvBenchRow> = if csv_path.exists() {
            csv::Reader::from_path(&csv_path)?
                .deserialize()
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        rows.retain(|r| r.processes != row.processes || r.threads_per_rank != row.threads_per_rank);
        rows.push(row.clone());
        rows.sort_by_key(|r| (r.threads_per_rank, r.processes));
        let mut w = csv::Writer::from_path(&csv_path)?;
        for r in &rows {
            w.serialize(r)?;
        }
        w.flush()?;
        let mut md = format!(
            "Case `{}`: conv {} -> {} channels, kernel {k}x{k}, {} scaling, batch {} {}, {}x{} images\n\n\
             | # Processes | Threads/rank | Execution Time (max) | Local batch per rank | Memory Usage per Rank (MB) | Total Memory Usage (MB) | Output Shape |\n\
             |---:|---:|---|---|---|---:|---|\n",
            self.case,
            self.channels,
            self.out_channels,
            self.mode.name(),
            self.batch,
            if self.mode == Mode::Weak { "per rank" } else { "in total" },
            self.size,
            self.size,
            k = self.kernel
        );
        for r in &rows {
            md += &format!(
                "| {} | {} | {:.3} sec | {} | [{}] | {:.1} | {} |\n",
                r.processes,
                r.threads_per_rank,
                r.seconds_max,
                r.local_batch.replace(';', ", "),
                r.memory_mb_per_rank.replace(';', ", "),
                r.memory_mb_total,
                r.output_shape
            );
        }
        std::fs::write(stem.with_extension("md"), md)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strong_splits_weak_repeats() {
        let shares: Vec<usize> = (0..3).map(|r| local_batch(Mode::Strong, 80, r, 3)).collect();
        assert_eq!(shares, vec![27, 27, 26]);
        assert_eq!(shares.iter().sum::<usize>(), 80);
        assert_eq!(local_batch(Mode::Weak, 10, 2, 4), 10);
    }
}
