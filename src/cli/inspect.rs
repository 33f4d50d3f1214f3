//! `partrain inspect`: the net and the plan a launch would resolve to.

use anyhow::Result;
use clap::Args;
use partrain::comm::WorldShape;
use partrain::model::{describe, measure_layer_seconds, LayerInfo};
use partrain::plan::{Plan, Strategy};
use std::path::PathBuf;

#[derive(Args)]
pub struct InspectArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The strategy to plan for (default: hybrid when parallel.stages > 1, dp when --np > 1,
    /// else serial).
    #[arg(long, value_parser = super::by_name::<Strategy>)]
    strategy: Option<Strategy>,
    /// The launch's rank count (default: parallel.stages).
    #[arg(long)]
    np: Option<usize>,
    /// Ranks per node, filled in rank order like mpirun's default mapping (default: all on one).
    #[arg(long)]
    ranks_per_node: Option<usize>,
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let cfg = super::train::load_config(&args.config, &args.set)?;
    let stages = cfg.parallel.stages;
    let np = args.np.unwrap_or(stages);
    let strategy = args.strategy.unwrap_or(if stages > 1 {
        Strategy::Hybrid
    } else if np > 1 {
        Strategy::Dp
    } else {
        Strategy::Serial
    });
    let shape = WorldShape::blocks(np, args.ranks_per_node.unwrap_or(np));
    let plan = Plan::hypothetical(&cfg, strategy, shape)?;
    println!(
        "{} on {} (input {:?})",
        cfg.net()?.label(),
        cfg.data.dataset.as_str(),
        plan.input_shape
    );
    let rows = describe(&plan.layers, plan.input_shape);
    print_layers(&rows);
    print!("{}", plan.describe());
    if plan.topology.stages > 1 {
        print_stages(&plan, &rows);
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

/// One line per layer: output shape, parameters, multiply-adds and training FLOP; then the totals.
fn print_layers(rows: &[LayerInfo]) {
    println!(
        "{:>3}  {:<8} {:<44} {:>16} {:>10} {:>11} {:>11} {:>11} {:>12}",
        "#", "name", "layer", "output", "params", "fwd MACs", "wgrad MACs", "igrad MACs", "train FLOP"
    );
    for r in rows {
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
    let sum = |f: fn(&LayerInfo) -> i64| rows.iter().map(f).sum::<i64>();
    println!(
        "total parameters {}, forward multiply-adds per image {}, training FLOP per image {} \
         (forward, weight-gradient and input-gradient multiply-adds x 2; the first layer has no input gradient)\n",
        sum(|r| r.parameters),
        sum(|r| r.macs),
        sum(|r| r.training_flop())
    );
}

/// Each stage's layers, parameters, multiply-adds and measured time.
fn print_stages(plan: &Plan, rows: &[LayerInfo]) {
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
