//! The measuring commands: `conv-bench` (seed 003), `peak`, `sync-bench` and `calibrate`.

use anyhow::Result;
use clap::Args;
use partrain::comm::Comm;
use partrain::perf::conv_bench::{ConvBench, Mode};
use partrain::perf::sync_bench::SyncBench;
use partrain::plan::averaging::GradSync;
use std::path::PathBuf;

/// Seed 003's convolution benchmark's arguments.
#[derive(Debug, Clone, Args)]
pub struct ConvBenchArgs {
    /// Name of the case (output file names): e.g. large, small.
    #[arg(long, default_value = "large")]
    pub case: String,
    /// strong (batch split across ranks) or weak (batch per rank).
    #[arg(long, value_parser = super::by_name::<Mode>, default_value = "strong")]
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
    /// Images per chunk: the batch is computed a chunk at a time, so no workspace grows with
    /// it (default: as many as fit 8 MiB of input, at least one).
    #[arg(long)]
    pub chunk: Option<usize>,
    #[arg(long, default_value = "results/conv_bench")]
    pub out: PathBuf,
    /// Advise the buffers as transparent huge pages before their first touch (off by default:
    /// measured slower on a VM, src/util/pages.rs).
    #[arg(long)]
    pub huge_pages: bool,
}

impl ConvBenchArgs {
    fn options(&self) -> ConvBench {
        ConvBench {
            case: self.case.clone(),
            mode: self.mode,
            batch: self.batch,
            channels: self.channels,
            out_channels: self.out_channels,
            size: self.size,
            kernel: self.kernel,
            repeats: self.repeats,
            threads: self.threads,
            chunk: self.chunk,
            out: self.out.clone(),
            huge_pages: self.huge_pages,
        }
    }
}

/// `partrain peak`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct PeakArgs {
    /// Thread counts to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    pub threads: Vec<usize>,
    /// Where to write the measurement (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `partrain sync-bench`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct SyncBenchArgs {
    /// Gradient sizes in f32 (default: the MNIST and CIFAR-10 nets' parameters).
    #[arg(long, value_delimiter = ',', default_values_t = [421_642usize, 1_070_794])]
    pub elements: Vec<usize>,
    /// Paths to time (default: every path this layout allows): shared_memory, two_level, mpi_allreduce.
    #[arg(long, value_parser = super::by_name::<GradSync>, value_delimiter = ',')]
    pub paths: Vec<GradSync>,
    #[arg(long, default_value_t = 200)]
    pub repeats: usize,
    /// A name for the rows (for example `han` when launched with Open MPI's coll/han).
    #[arg(long, default_value = "")]
    pub label: String,
    /// CSV file the rows are appended to (rank 0).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl SyncBenchArgs {
    fn options(&self) -> SyncBench {
        SyncBench {
            elements: self.elements.clone(),
            paths: self.paths.clone(),
            repeats: self.repeats,
            label: self.label.clone(),
            out: self.out.clone(),
        }
    }
}

/// `partrain calibrate`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Thread counts (default: 1 up to this node's cores).
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Batch sizes (images per micro-batch) to time.
    #[arg(long, value_delimiter = ',', default_values_t = [8usize, 16, 32, 64, 128])]
    pub batches: Vec<usize>,
    /// Timed repeats of each measurement (the median is kept).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    #[arg(long, default_value = "calibration.json")]
    pub out: PathBuf,
    /// Keep `--out`'s compute and measure only the links (launched on several ranks, whose
    /// waiting would disturb the compute timings).
    #[arg(long)]
    pub links_only: bool,
    /// MiB of the ping-pong message that measures a link's bandwidth (a slow emulated link
    /// wants a message well above its burst: 16 at 100 Mbit/s).
    #[arg(long, default_value_t = 4)]
    pub link_mib: usize,
}

impl CalibrateArgs {
    fn options(&self) -> partrain::perf::calibrate::CalibrateOptions {
        partrain::perf::calibrate::CalibrateOptions {
            config: self.config.clone(),
            set: self.set.clone(),
            threads: self.threads.clone(),
            batches: self.batches.clone(),
            repeats: self.repeats,
            out: self.out.clone(),
            links_only: self.links_only,
            link_mib: self.link_mib,
        }
    }
}

pub fn conv_bench(args: &ConvBenchArgs, comm: &Comm) -> Result<()> {
    let row = args.options().run(comm)?;
    if comm.is_root() {
        println!(
            "{} ranks, {}: {:.3} s (max over ranks), memory per rank [{}] MB, output {}",
            row.processes,
            row.mode.name(),
            row.seconds_max,
            row.memory_mb_per_rank,
            row.output_shape
        );
    }
    Ok(())
}
pub fn calibrate(args: &CalibrateArgs, comm: &Comm) -> Result<()> {
    if let Some(cal) = args.options().run(comm)? {
        let show = |l: Option<partrain::comm::Link>| l.map_or("not measured".into(), |l| l.to_string());
        let emulated = cal
            .inter_node_emulated
            .as_ref()
            .map_or(String::new(), |r| format!(" (emulated link set to {r})"));
        println!(
            "wrote {}: {} compute rows in fp32, {} in bf16{}",
            args.out.display(),
            cal.compute.len(),
            cal.compute_bf16.len(),
            if cal.compute_bf16.is_empty() {
                " (no native bf16 here; PARTRAIN_EMULATED_BF16=1 measures it anyway)"
            } else {
                ""
            }
        );
        println!("  link inside a node:  {}", show(cal.intra_node));
        println!("  link between nodes: {}{emulated}", show(cal.inter_node));
    }
    Ok(())
}
pub fn print_peak(peak: &partrain::record::peak::Peak) {
    println!("{} on {}:", peak.date, peak.cpu);
    for r in &peak.rows {
        println!(
            "  {} {} thread(s): GEMM {:.1} GFLOP/s, channels-last conv {:.1} GFLOP/s -> peak {:.1}",
            r.precision, r.threads, r.gemm_gflops, r.conv_gflops, r.peak_gflops
        );
    }
}
pub fn sync_bench(args: &SyncBenchArgs, comm: &Comm) -> Result<()> {
    let rows = args.options().run(comm)?;
    if comm.is_root() {
        println!("path label ranks nodes ranks/node elements median_us p10_us p90_us GB/s");
        for r in rows {
            println!(
                "{} {} {} {} {} {} {:.1} {:.1} {:.1} {:.2}",
                r.path,
                r.label,
                r.ranks,
                r.nodes,
                r.ranks_per_node,
                r.elements,
                r.median_us,
                r.p10_us,
                r.p90_us,
                r.algbw_gbs
            );
        }
    }
    Ok(())
}
