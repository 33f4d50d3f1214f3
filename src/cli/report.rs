//! `partrain report`, `converge`, `timeline` and `doctor`: what is read from finished (or crashed)
//! runs.

use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// `partrain report`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    #[arg(long, default_value = "results/runs")]
    pub runs: PathBuf,
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Add the performance model's prediction of each run (`partrain calibrate` writes it).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// The network between nodes for the predictions (default: the calibration's measured one).
    #[arg(long, requires = "calibration")]
    pub network: Option<String>,
    /// Steps to target against the global batch (`partrain converge table`'s CSV): adds the
    /// predicted time to target of every run trained to that target.
    #[arg(long, requires = "calibration")]
    pub curve: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ConvergeCommand {
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

/// `partrain timeline RUN_DIR`: a picture of a run's trace.json: one row per rank, a bar per span
/// (forward, backward, messages, averaging, waits), over a window of steps.
#[derive(Debug, Clone, Args)]
pub struct TimelineArgs {
    /// The run folder (with trace.json), or the trace file itself.
    pub run: PathBuf,
    /// The first step shown (1-based) and how many.
    #[arg(long, default_value_t = 2)]
    pub from_step: usize,
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Default: timeline.png next to trace.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn timeline(a: &TimelineArgs) -> Result<()> {
    let options = partrain::report::timeline::TimelineOptions {
        run: a.run.clone(),
        from_step: a.from_step,
        steps: a.steps,
        out: a.out.clone(),
    };
    let png = options.run()?;
    println!("wrote {}", png.display());
    Ok(())
}

pub fn report(a: &ReportArgs) -> Result<()> {
    let (runs, out, network) = (a.runs.as_path(), a.out.as_path(), a.network.as_deref());
    let (calibration, curve) = (a.calibration.as_deref(), a.curve.as_deref());
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
        eprintln!("report: {s}");
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
pub fn converge(command: ConvergeCommand) -> Result<()> {
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
