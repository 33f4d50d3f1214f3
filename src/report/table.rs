//! `partrain report [--runs results/runs] [--out results]`: speedup / efficiency tables and plots
//! from every finished run's `summary.json` and `metrics.csv` under a runs folder.
//!
//! Speedup of a run = its images/s over the images/s of its serial baseline (same data set and
//! net, 1 thread, the same global batch for strong scaling or the same per-rank batch for weak
//! scaling): for the same number of training images that is T_serial / T_run. Efficiency =
//! speedup / total cores (ranks x threads per rank).

pub use super::runs::{collect, repeat_of, time_to_target, RunRecord};
use crate::config::BatchScope;
use crate::plan::Strategy;
use crate::record::summary::Summary;
use anyhow::Result;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub run: String,
    pub strategy: String,
    pub dataset: String,
    /// `baseline` (serial), `strong` (fixed global batch) or `weak` (fixed batch per replica).
    pub scaling: String,
    pub ranks: usize,
    pub nodes: usize,
    pub ranks_per_node: usize,
    pub threads_per_rank: usize,
    pub stages: usize,
    pub replicas: usize,
    pub total_cores: usize,
    /// More ranks x threads than the nodes' cores: the timing is not a scaling measurement.
    pub oversubscribed: bool,
    pub global_batch: usize,
    /// The recipe the plan chose (`train.recipe: by_global_batch`), or `fixed: <optimizer> <rate>`.
    pub recipe: String,
    pub epochs: usize,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    /// Repeats of this configuration, and the range of their images/s (the row shows the median).
    pub repeats: usize,
    pub samples_per_second_min: f64,
    pub samples_per_second_max: f64,
    pub baseline: String,
    pub speedup: Option<f64>,
    /// The speedup of the slowest and the fastest repeat.
    pub speedup_min: Option<f64>,
    pub speedup_max: Option<f64>,
    /// With `--calibration`: the performance model's images/s for this layout, its speedup
    /// against the measured baseline, and predicted / measured - 1.
    pub predicted_samples_per_second: Option<f64>,
    pub predicted_speedup: Option<f64>,
    pub prediction_error: Option<f64>,
    pub efficiency: Option<f64>,
    pub final_test_accuracy: f64,
    pub peak_rss_mb_max: f64,
    pub peak_rss_mb_per_rank: String,
    pub allreduce_share: f64,
    /// Pipeline wait / training time, mean over ranks (hybrid).
    pub bubble_share: f64,
    /// The GPipe formula (S-1)/(M+S-1) and the bubble predicted from measured stage times.
    pub bubble_formula: Option<f64>,
    pub bubble_predicted: Option<f64>,
    /// Time to accuracy: the runs' target, the time to it over the repeats (`time_to_target`'s
    /// rule), repeats that never reached it, the median run's steps and epochs to it, and the
    /// speedup in time to target over the same baseline as the images/s speedup.
    pub target_accuracy: Option<f64>,
    pub time_to_target_s: Option<f64>,
    pub time_to_target_rule: String,
    pub repeats_missed_target: usize,
    /// The best evaluation's test accuracy (what a run that missed its target shows).
    pub best_test_accuracy: Option<f64>,
    pub steps_to_target: Option<usize>,
    pub epochs_to_target: Option<f64>,
    pub speedup_time_to_target: Option<f64>,
    /// The smoothed gradient noise scale (images) at the end of the median run.
    pub noise_scale: Option<f64>,
    /// With `--calibration` and `--curve`: the predicted time to target and predicted / measured - 1.
    pub predicted_time_to_target_s: Option<f64>,
    pub time_to_target_error: Option<f64>,
}

fn scaling(s: &Summary) -> &'static str {
    match (s.strategy, s.batch_scope) {
        (Strategy::Serial, _) => "baseline",
        (_, BatchScope::Global) => "strong",
        (_, BatchScope::PerRank) => "weak",
    }
}

/// The serial run `r` is measured against (see the module comment). Preference, in order: the
/// same folder (the same sweep), 1 thread, the matching batch, the same training set size; a
/// serial run that qualifies is its own baseline.
fn baseline<'a>(r: &RunRecord, records: &'a [RunRecord]) -> Option<&'a RunRecord> {
    let s = &r.summary;
    let folder = |name: &str| Path::new(name).parent().map(Path::to_path_buf);
    let want_batch = match scaling(s) {
        "weak" => s.global_batch / s.replicas.max(1),
        _ => s.global_batch,
    };
    records
        .iter()
        .filter(|b| {
            b.summary.strategy == Strategy::Serial
                && b.summary.dataset == s.dataset
                && b.summary.model == s.model
        })
        .min_by_key(|b| {
            (
                folder(&b.name) != folder(&r.name),
                b.summary.threads_per_rank != 1,
                b.summary.global_batch != want_batch,
                b.summary.train_samples != s.train_samples,
                b.name != r.name,
            )
        })
}

/// The calibration and network predictions are made with (`partrain report --calibration`).
pub struct Predictor {
    pub calibration: crate::perf::Calibration,
    pub network: crate::perf::Link,
    /// Steps to target against the global batch (`report --curve`), for predicted time to target.
    pub steps: Option<crate::perf::StepsModel>,
}

impl Predictor {
    /// The predicted time to the run's target: the model's step time x the steps to target at the
    /// run's global batch, plus the evaluations the run's cadence makes on the way (every
    /// `eval_every_steps` and at each epoch's end). None without a curve for that target.
    fn time_to_target(&self, s: &Summary, step_s: f64) -> Option<f64> {
        let model = self
            .steps
            .as_ref()
            .filter(|m| Some(m.target()) == s.target.target_accuracy)?;
        let steps = model.steps(s.global_batch)?;
        let every = s.eval_every_steps.map_or(f64::INFINITY, |k| k as f64);
        let evals = (steps / every).floor() + (steps / s.steps_per_epoch.max(1) as f64).floor() + 1.0;
        let eval_s = crate::perf::eval_seconds(&layout_of(s), &self.calibration, s.test_samples);
        Some(crate::perf::time_to_target(step_s, steps, evals, eval_s))
    }
}

/// The layout a finished run had, as the performance model takes it.
pub fn layout_of(s: &Summary) -> crate::perf::Layout {
    let machines = s.world.machines.max(1);
    crate::perf::Layout {
        strategy: s.strategy.name().into(),
        nodes: s.world.nodes.max(1),
        ranks_per_node: s.world.ranks_per_node.max(1),
        ranks_per_machine: s.world.world_size.div_ceil(machines),
        cores_per_machine: s.world.cores_per_node.max(1),
        threads: s.threads_per_rank.max(1),
        stages: s.stages.max(1),
        micro_batches: s.micro_batches.max(1),
        schedule: s
            .pipeline
            .as_ref()
            .map_or(crate::schedule::ScheduleKind::OneFOneB, |p| p.schedule),
        global_batch: s.global_batch,
        boundaries: s.stage_boundaries.clone(),
        grad_sync: s.gradient_averaging,
        average_every: s.average_every,
        pipeline_in_node: s.placement != crate::config::Placement::ReplicasInNode,
        remedy: remedy_of(s),
        traffic: match s.averaging.compress {
            crate::config::Compress::None => 1.0,
            crate::config::Compress::Bf16 => 0.5,
            // What the run sent against a ring all-reduce of its f32 gradients.
            crate::config::Compress::PowerSgd => {
                let ring = crate::train::averager::ring_all_reduce_bytes(s.parameters as usize, s.replicas);
                (s.averaging.sent_bytes_per_step / ring.max(1.0)).min(1.0)
            }
        },
    }
}

/// The recipe rule's choice, or the fixed optimizer and peak rate the config gave.
fn recipe_of(s: &Summary) -> String {
    match &s.optimizer {
        Some(o) => match &o.recipe {
            Some(r) => r.split(" (").next().unwrap_or(r).to_string(),
            None => format!("fixed: {:?} {}", o.optimizer, o.peak_lr).to_lowercase(),
        },
        None => "-".into(),
    }
}

/// The remedy a finished run used, from its summary.
fn remedy_of(s: &Summary) -> crate::perf::remedy::Remedy {
    use crate::perf::remedy::Remedy;
    use crate::plan::averaging::GradSync;
    match (s.gradient_averaging, s.averaging.compress) {
        (GradSync::Overlapped, _) => Remedy::Overlap,
        (GradSync::Stale, _) => Remedy::Stale,
        (GradSync::WeightAverage, _) => Remedy::PostLocal(s.average_every),
        (_, crate::config::Compress::Bf16) => Remedy::Bf16,
        (_, crate::config::Compress::PowerSgd) => Remedy::PowerSgd(0),
        _ => Remedy::Plain,
    }
}

pub fn rows(records: &[RunRecord], predictor: Option<&Predictor>) -> Vec<Row> {
    records
        .iter()
        .map(|r| {
            let mut row = measured_row(r);
            compare(&mut row, r, records, predictor);
            row
        })
        .collect()
}

/// A record's row from its own summary and repeats (no baseline, no prediction yet).
fn measured_row(r: &RunRecord) -> Row {
    let s = &r.summary;
    let lo = r.throughputs.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = r.throughputs.iter().cloned().fold(0.0, f64::max);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (ttt, rule) = time_to_target(&r.times_to_target);
    let rss: Vec<String> = s.peak_rss_mb.iter().map(|m| format!("{m:.0}")).collect();
    Row {
        run: r.name.clone(),
        strategy: s.strategy.name().into(),
        dataset: s.dataset.clone(),
        scaling: scaling(s).into(),
        ranks: s.world.world_size,
        nodes: s.world.nodes.max(1),
        ranks_per_node: s.world.ranks_per_node.max(1),
        threads_per_rank: s.threads_per_rank,
        stages: s.stages,
        replicas: s.replicas,
        total_cores: s.world.world_size * s.threads_per_rank,
        oversubscribed: crate::util::machine::Occupancy {
            ranks: s.world.ranks_per_node.max(1),
            threads: s.threads_per_rank,
            cores: s.world.cores_per_node,
        }
        .oversubscribed(),
        global_batch: s.global_batch,
        recipe: recipe_of(s),
        epochs: s.epochs,
        train_seconds: s.train_seconds,
        samples_per_second: s.samples_per_second,
        repeats: r.throughputs.len(),
        samples_per_second_min: lo,
        samples_per_second_max: hi,
        final_test_accuracy: s.final_test_accuracy,
        peak_rss_mb_max: s.peak_rss_mb.iter().cloned().fold(0.0, f64::max),
        peak_rss_mb_per_rank: rss.join(";"),
        allreduce_share: s.allreduce_seconds / s.train_seconds,
        bubble_share: s
            .pipeline
            .as_ref()
            .map_or(0.0, |p| mean(&p.bubble_fraction_per_rank)),
        bubble_formula: s.pipeline.as_ref().map(|p| p.bubble_formula),
        bubble_predicted: s
            .pipeline
            .as_ref()
            .map(|p| mean(&p.predicted_bubble_fraction_per_rank)),
        target_accuracy: s.target.target_accuracy,
        time_to_target_s: ttt,
        time_to_target_rule: rule,
        repeats_missed_target: r.times_to_target.iter().filter(|t| t.is_none()).count(),
        best_test_accuracy: s.target.best_test_accuracy,
        steps_to_target: s.target.steps_to_target,
        epochs_to_target: s.target.epochs_to_target,
        noise_scale: s.target.noise_scale,
        ..Row::default()
    }
}

/// The row's comparisons: speedups over its baseline (images/s and time to target) and the
/// performance model's predictions.
fn compare(row: &mut Row, r: &RunRecord, records: &[RunRecord], predictor: Option<&Predictor>) {
    let s = &r.summary;
    let base = baseline(r, records);
    let base_ips = base.map(|b| b.summary.samples_per_second);
    // Only against a baseline trained to the same target.
    let base_ttt = base
        .filter(|b| b.summary.target.target_accuracy == s.target.target_accuracy)
        .and_then(|b| time_to_target(&b.times_to_target).0);
    row.baseline = base.map(|b| b.name.clone()).unwrap_or_default();
    row.speedup = base_ips.map(|b| s.samples_per_second / b);
    row.speedup_min = base_ips.map(|b| row.samples_per_second_min / b);
    row.speedup_max = base_ips.map(|b| row.samples_per_second_max / b);
    row.efficiency = row.speedup.map(|x| x / row.total_cores as f64);
    row.speedup_time_to_target = base_ttt.zip(row.time_to_target_s).map(|(b, t)| b / t);
    let Some(p) = predictor else { return };
    let prediction = crate::perf::predict(&layout_of(s), &p.calibration, p.network);
    let predicted = prediction.images_per_s;
    row.predicted_samples_per_second = Some(predicted);
    row.predicted_speedup = base_ips.map(|b| predicted / b);
    row.prediction_error = Some(predicted / s.samples_per_second - 1.0);
    row.predicted_time_to_target_s = p.time_to_target(s, prediction.step_s);
    row.time_to_target_error = row
        .predicted_time_to_target_s
        .zip(row.time_to_target_s)
        .map(|(p, m)| p / m - 1.0);
}

pub fn write_csv(path: &Path, rows: &[&Row]) -> Result<()> {
    crate::util::atomic::write_csv(path, rows)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

/// `12.3 (to 99%)`, with the rule and misses when there were repeats; `not reached (99%; best
/// 97.12%)`; `-` without a target.
fn ttt_cell(r: &Row) -> String {
    let Some(target) = r.target_accuracy else {
        return "-".into();
    };
    let mut cell = match r.time_to_target_s {
        Some(t) => format!("{t:.1} (to {target}%)"),
        None => match r.best_test_accuracy {
            Some(best) => format!("not reached ({target}%; best {best:.2}%)"),
            None => format!("not reached ({target}%)"),
        },
    };
    if let (Some(p), Some(e)) = (r.predicted_time_to_target_s, r.time_to_target_error) {
        cell += &format!(", predicted {p:.1} ({:+.0}%)", 100.0 * e);
    }
    if r.repeats > 1 {
        cell += &format!(", {}", r.time_to_target_rule);
    }
    if r.repeats_missed_target > 0 {
        cell += &format!(", {} of {} missed", r.repeats_missed_target, r.repeats);
    }
    cell
}

pub fn markdown(rows: &[&Row]) -> String {
    let mut md = String::from(
        "| run | strategy | scaling | nodes | ranks x threads | stages x replicas | global batch | recipe | time to target s | speedup in time to target | images/s | speedup in images/s | predicted (error) | efficiency | accuracy % | train s | peak RSS MB/rank | averaging | bubble (formula / predicted) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {} | {} | {} x {}{} | {} x {} | {} | {} | {} | {} | {:.0}{} | {} | {} | {} | {:.2} | {:.1} | {} | {:.1}% | {:.1}%{} |\n",
            r.run,
            r.strategy,
            r.scaling,
            r.nodes,
            r.ranks,
            r.threads_per_rank,
            if r.oversubscribed { " (oversubscribed)" } else { "" },
            r.stages,
            r.replicas,
            r.global_batch,
            r.recipe,
            ttt_cell(r),
            opt(r.speedup_time_to_target, 2),
            r.samples_per_second,
            repeats_cell(r),
            opt(r.speedup, 2),
            match (r.predicted_samples_per_second, r.prediction_error) {
                (Some(p), Some(e)) => format!("{p:.0} ({:+.0}%)", 100.0 * e),
                _ => "-".into(),
            },
            opt(r.efficiency, 3),
            r.final_test_accuracy,
            r.train_seconds,
            r.peak_rss_mb_per_rank.replace(';', " / "),
            100.0 * r.allreduce_share,
            100.0 * r.bubble_share,
            match (r.bubble_formula, r.bubble_predicted) {
                (Some(f), Some(p)) => format!(" ({:.1}% / {:.1}%)", 100.0 * f, 100.0 * p),
                _ => String::new(),
            }
        );
    }
    md
}

/// ` (lo-hi, n runs)` of images/s when there were repeats.
fn repeats_cell(r: &Row) -> String {
    match r.repeats > 1 {
        true => format!(
            " ({:.0}-{:.0}, {} runs)",
            r.samples_per_second_min, r.samples_per_second_max, r.repeats
        ),
        false => String::new(),
    }
}
