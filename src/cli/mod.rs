//! The command line: every clap type and printer (`main.rs` parses and dispatches). The library
//! below knows nothing of clap; its enums are named here by their serde spelling, the one
//! spelling configs, summaries and the command line share.

pub mod bench;
pub mod data;
pub mod export;
pub mod inspect;
pub mod plan;
pub mod report;
pub mod train;

use clap::{Parser, Subcommand};
use partrain::comm::Comm;
use partrain::plan::Strategy;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "partrain",
    version,
    about = "CNN training: serial, MPI data parallel, hybrid pipeline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Single-process baseline (no mpirun needed).
    Serial(train::RunArgs),
    /// Data parallelism: launch with `mpirun -np N partrain dp ...`.
    Dp(train::RunArgs),
    /// Hybrid pipeline + data parallelism: `mpirun -np STAGES*REPLICAS partrain hybrid ...`.
    Hybrid(train::RunArgs),
    /// Print the net (output shape, parameters and multiply-adds per layer) and the plan a launch
    /// would resolve to: layout, batches, stage split, schedule grid, averaging path.
    Inspect(inspect::InspectArgs),
    /// Speedup / efficiency / time-to-target tables (results/metrics) and plots (results/plots)
    /// from finished runs.
    Report(report::ReportArgs),
    /// Seed 003's convolution benchmark: `mpirun -np N partrain conv-bench --mode strong|weak ...`.
    ConvBench(bench::ConvBenchArgs),
    /// Measures this machine's fp32 and bf16 peak (GEMM and a large convolution, the faster).
    Peak(bench::PeakArgs),
    /// Times each gradient-averaging path on its own: `mpirun -np N partrain sync-bench`.
    SyncBench(bench::SyncBenchArgs),
    /// Measures what `plan` predicts from: per-layer compute at each thread count and batch size,
    /// links inside and between nodes (`mpirun -np N partrain calibrate ...`).
    Calibrate(bench::CalibrateArgs),
    /// Writes a run's net as PyTorch source (model.py, loading model.safetensors strictly).
    Export(export::ExportArgs),
    /// Predicts every layout that fits a cluster, best first, and writes plan.csv.
    Plan(plan::PlanArgs),
    /// Draws a traced run's timeline (trace.json) as a PNG: one row per rank.
    Timeline(report::TimelineArgs),
    /// Reads a run's flight records (flight/rank<R>.json) and names the first operation at which
    /// the ranks disagree or stop.
    Doctor {
        /// The run folder (with flight/), or the flight folder itself.
        run: std::path::PathBuf,
    },
    /// The steps-to-target curve from bench/converge.sh's runs: `best` names a batch's best
    /// recipe, `table` writes the CSV, markdown table and log-log plot.
    Converge {
        #[command(subcommand)]
        command: report::ConvergeCommand,
    },
    /// Data set management.
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
}

/// A value of `T` by its serde name (`mnist`, `fashion-mnist`, `strong`, ...).
pub fn by_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    serde_yaml::from_str::<T>(name).map_err(|e| {
        let msg = e.to_string();
        // serde says "unknown variant `x`, expected one of `a`, `b`"; the list is what matters.
        msg.split(" at line").next().unwrap_or(&msg).replace('`', "")
    })
}

/// Runs `command`: the training commands and the MPI measurements under MPI, the others plainly.
pub fn dispatch(command: Command) -> ExitCode {
    use train::{fail, on_every_rank, run_training, with_mpi};
    let result = match command {
        Command::Dp(args) => return with_mpi(|comm| run_training(Strategy::Dp, &args, comm)),
        Command::Hybrid(args) => return with_mpi(|comm| run_training(Strategy::Hybrid, &args, comm)),
        Command::Serial(args) => {
            train::install_panic_hook(0, 1);
            return run_training(Strategy::Serial, &args, &Comm::solo()).unwrap_or_else(fail);
        }
        Command::ConvBench(a) => return on_every_rank(|comm| bench::conv_bench(&a, comm)),
        Command::Calibrate(a) => return on_every_rank(|comm| bench::calibrate(&a, comm)),
        Command::SyncBench(a) => return on_every_rank(|comm| bench::sync_bench(&a, comm)),
        Command::Doctor { run } => partrain::diag::doctor::run(&run),
        Command::Inspect(args) => inspect::inspect(&args),
        Command::Export(args) => export::export(&args),
        Command::Report(args) => report::report(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Timeline(args) => report::timeline(&args),
        Command::Peak(a) => {
            partrain::perf::peak::measure_all(&a.threads, a.out.as_deref()).map(|p| bench::print_peak(&p))
        }
        Command::Converge { command } => report::converge(command),
        Command::Data { command } => data::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
