//! `partrain serial | dp | hybrid`: the run arguments, the MPI launch wrapper and the training call.

use anyhow::Result;
use clap::Args;
use partrain::comm::{abort_world, Comm};
use partrain::config::{self, Config};
use partrain::plan::Strategy;
use partrain::train::agree::{agree, AgreedFailure};
use partrain::train::run_dir::{self, Start};
use partrain::train::Outcome;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RunArgs {
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

pub fn load_config(path: &std::path::Path, set: &[String]) -> Result<Config> {
    let cfg = config::load(path, set)?;
    let n = cfg.parallel.threads_per_rank;
    if n > 0 {
        tch::set_num_threads(n as i32);
        tch::set_num_interop_threads(n as i32);
    }
    Ok(cfg)
}

pub fn run_training(strategy: Strategy, args: &RunArgs, comm: &Comm) -> Result<ExitCode> {
    let mut cfg = agree(comm, load_config(&args.config, &args.set))?;
    cfg.run.trace |= args.trace;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| run_dir::default_out_dir(&cfg.run.name));
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
    match partrain::train::run(strategy, &cfg, &out, start, comm)? {
        Outcome::Completed(_) => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted { .. } => Ok(ExitCode::from(partrain::train::stop::REQUEUE_EXIT)),
    }
}

/// Runs `f` on every rank of an MPI job; a failing or panicking rank takes the others down with
/// MPI_Abort (they may be waiting in a collective that would otherwise never return, and a
/// panicking rank could otherwise sit in MPI_Finalize while the others wait out the watchdog).
pub fn with_mpi(f: impl FnOnce(&Comm) -> Result<ExitCode>) -> ExitCode {
    let comm = match Comm::init_mpi() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    install_panic_hook(comm.rank(), comm.size());
    let (rank, size) = (comm.rank(), comm.size());
    match f(&comm) {
        Ok(code) => code,
        // Every rank failed at the same point: one message, the same exit code, no MPI_Abort.
        Err(e) if e.downcast_ref::<AgreedFailure>().is_some() => {
            let agreed = e.downcast_ref::<AgreedFailure>().expect("checked");
            if agreed.print {
                eprintln!("partrain: error: {agreed}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("partrain rank {rank}/{size}: error: {e:#}");
            if size > 1 {
                comm.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

/// On a panic: the message with the rank, the open run marked `failed` and the flight record
/// dumped (`run_dir::fail_on_panic`), then, with several ranks, MPI_Abort for all.
pub fn install_panic_hook(rank: usize, size: usize) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("partrain rank {rank}/{size}: panic: {info}");
        let message = info.payload_as_str().unwrap_or("(no message)");
        let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        partrain::train::run_dir::fail_on_panic(&format!("{message}{at}"));
        if size > 1 {
            abort_world(101);
        }
        default_hook(info);
    }));
}

/// `f` on every rank, for commands that end in success or an error.
pub fn on_every_rank(f: impl FnOnce(&Comm) -> Result<()>) -> ExitCode {
    with_mpi(|comm| f(comm).map(|()| ExitCode::SUCCESS))
}

pub fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
