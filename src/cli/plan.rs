//! `partrain plan`: every layout of N nodes x C cores predicted, best first, and with
//! `--target-accuracy` the layout, per-rank batch, accumulation and threads with the least
//! predicted time to that accuracy.

use anyhow::Result;
use clap::Args;
use partrain::perf::{PlanOptions, PlanRow};
use std::path::PathBuf;

/// `partrain plan`: every layout that fits, predicted, best first.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Node counts to plan for.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16, 32])]
    pub nodes: Vec<usize>,
    #[arg(long)]
    pub cores_per_node: usize,
    #[arg(long, default_value = "calibration.json")]
    pub calibration: PathBuf,
    /// A named network between nodes: ib100, eth25, eth10 (default: the calibration's measured
    /// link between nodes, else ib100).
    #[arg(long, conflicts_with_all = ["latency_us", "bandwidth_gbs"])]
    pub network: Option<String>,
    #[arg(long, requires = "bandwidth_gbs")]
    pub latency_us: Option<f64>,
    #[arg(long, requires = "latency_us")]
    pub bandwidth_gbs: Option<f64>,
    /// Layouts printed per node count and batch scope (plan.csv has them all).
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    #[arg(long, default_value = "plan.csv")]
    pub out: PathBuf,
    /// Also rank layouts, per-rank batches and accumulation by predicted time to this test
    /// accuracy (percent): step time x steps to target at the layout's global batch.
    #[arg(long)]
    pub target_accuracy: Option<f64>,
    /// Steps to target from a measured curve (`partrain converge table`'s CSV).
    #[arg(long, requires = "target_accuracy", conflicts_with = "run")]
    pub curve: Option<PathBuf>,
    /// Steps to target from the noise-scale model fitted to this run folder (its steps to target
    /// and noise scale).
    #[arg(long, requires = "target_accuracy")]
    pub run: Option<PathBuf>,
    /// How often the predicted runs evaluate (their time counts, as in MLPerf), in epochs.
    #[arg(long, default_value_t = 1.0)]
    pub eval_every_epochs: f64,
    /// Each remedy's steps to target over plain averaging's (bench/remedies.sh's
    /// results/example/remedies.csv): the target scope weighs every layout with each remedy.
    #[arg(long, requires = "target_accuracy")]
    pub remedies: Option<PathBuf>,
    /// bf16's steps to target against fp32's (bench/precision_steps.sh's CSV): the target scope
    /// also weighs every layout in bf16, where the calibration measured bf16 compute.
    #[arg(long, requires = "target_accuracy")]
    pub precision_steps: Option<PathBuf>,
}

impl PlanArgs {
    fn options(&self) -> PlanOptions {
        PlanOptions {
            config: self.config.clone(),
            set: self.set.clone(),
            nodes: self.nodes.clone(),
            cores_per_node: self.cores_per_node,
            calibration: self.calibration.clone(),
            network: self.network.clone(),
            latency_us: self.latency_us,
            bandwidth_gbs: self.bandwidth_gbs,
            out: self.out.clone(),
            target_accuracy: self.target_accuracy,
            curve: self.curve.clone(),
            run: self.run.clone(),
            eval_every_epochs: self.eval_every_epochs,
            remedies: self.remedies.clone(),
            precision_steps: self.precision_steps.clone(),
        }
    }
}

pub fn run(args: &PlanArgs) -> Result<()> {
    let plan = args.options().run()?;
    let rows: Vec<&PlanRow> = plan.rows.iter().filter(|r| r.scope != "target").collect();
    print_plan_rows(&rows, args.top);
    if let Some(model) = &plan.steps_model {
        println!(
            "\ntime to {}% test accuracy ({}; one evaluation every {} epoch(s) counts):",
            args.target_accuracy.unwrap_or_default(),
            model.describe(),
            args.eval_every_epochs
        );
        println!("{}", plan.precision_note);
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
fn print_plan_rows(rows: &[&PlanRow], top: usize) {
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
fn print_target_rows(rows: &[PlanRow], top: usize) {
    println!(
        "{:>5} {:>6} {:>9} {:>7} {:>6} {:>8} {:>6} {:>8} {:>16} {:>11} {:>9} {:>9} {:>7} {:>7} {:>9}",
        "nodes",
        "layout",
        "ranks/nd",
        "threads",
        "S x M",
        "global",
        "micro",
        "per-rank",
        "averaging",
        "remedy",
        "precision",
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
            "{:>5} {:>6} {:>9} {:>7} {:>6} {:>8} {:>6} {:>8} {:>16} {:>11} {:>9} {:>9.0} {:>7.0} {:>7.2} {:>9.1}{}",
            r.nodes,
            r.strategy,
            r.ranks_per_node,
            r.threads,
            format!("{}x{}", r.stages, r.micro_batches),
            r.global_batch,
            r.micro_batch,
            r.per_replica_batch,
            r.averaging,
            r.remedy,
            r.precision,
            r.images_per_s,
            r.steps_to_target.unwrap_or(f64::NAN),
            r.epochs_to_target.unwrap_or(f64::NAN),
            r.time_to_target_s.unwrap_or(f64::NAN),
            if *n == 1 { "  <- recommended" } else { "" }
        );
    }
}
