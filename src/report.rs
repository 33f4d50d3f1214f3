//! `partrain report [--runs results/runs] [--out results]`: speedup / efficiency tables and plots
//! from every finished run's `summary.json` and `metrics.csv` under a runs folder.
//!
//! Speedup of a run = its images/s over the images/s of its serial baseline (same data set and
//! net, 1 thread, the same global batch for strong scaling or the same per-rank batch for weak
//! scaling): for the same number of training images that is T_serial / T_run. Efficiency =
//! speedup / total cores (ranks x threads per rank).

use crate::config::BatchScope;
use crate::metrics::{read_summary, Summary};
use crate::plan::Strategy;
use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub struct RunRecord {
    /// Path of the run folder relative to the runs folder; for repeats (`<name>_r1`, `_r2`, ...)
    /// the name without the suffix.
    pub name: String,
    /// The run itself, or of repeats the one with the median images/s (the lower median for an
    /// even count), so every number in the table traces back to one run's summary.
    pub summary: Summary,
    /// (epoch, train loss) from that run's metrics.csv.
    pub losses: Vec<(usize, f64)>,
    /// images/s of every repeat (one value for a single run).
    pub throughputs: Vec<f64>,
}

/// `dp_2n_t1_r3` -> (`dp_2n_t1`, 3): the repeat suffix the SLURM workflow and sweeps use.
pub fn repeat_of(name: &str) -> Option<(&str, usize)> {
    let (base, k) = name.rsplit_once("_r")?;
    let k: usize = k.parse().ok()?;
    (!base.is_empty()).then_some((base, k))
}

/// Repeats of one configuration become one record (see `RunRecord`).
fn group_repeats(mut runs: Vec<RunRecord>) -> Vec<RunRecord> {
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups: std::collections::BTreeMap<String, Vec<RunRecord>> = Default::default();
    for r in runs {
        let key = repeat_of(&r.name).map_or(r.name.clone(), |(base, _)| base.to_string());
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(name, mut reps)| {
            let throughputs: Vec<f64> = reps.iter().map(|r| r.summary.samples_per_second).collect();
            reps.sort_by(|a, b| {
                a.summary
                    .samples_per_second
                    .total_cmp(&b.summary.samples_per_second)
            });
            let median = reps.swap_remove((reps.len() - 1) / 2);
            RunRecord {
                name,
                throughputs,
                ..median
            }
        })
        .collect()
}

/// Every folder below `runs` with a completed `summary.json`; unfinished runs are listed in the
/// second value and left out of the tables.
pub fn collect(runs: &Path) -> Result<(Vec<RunRecord>, Vec<String>)> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![runs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("runs folder {} cannot be read", dir.display()))?;
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
        let sp = dir.join("summary.json");
        if !sp.exists() {
            continue;
        }
        let name = dir.strip_prefix(runs).unwrap_or(&dir).display().to_string();
        match read_summary(&sp) {
            Ok(summary) if summary.status == "completed" => {
                let losses = read_losses(&dir.join("metrics.csv"))?;
                found.push(RunRecord {
                    name,
                    throughputs: vec![summary.samples_per_second],
                    summary,
                    losses,
                });
            }
            _ => skipped.push(name),
        }
    }
    skipped.sort();
    Ok((group_repeats(found), skipped))
}

fn read_losses(path: &Path) -> Result<Vec<(usize, f64)>> {
    let mut rdr = csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for row in rdr.deserialize::<crate::metrics::EpochRow>() {
        let row = row.with_context(|| format!("{}: malformed row", path.display()))?;
        out.push((row.epoch, row.train_loss));
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
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
    pub calibration: crate::perf_model::Calibration,
    pub network: crate::perf_model::Link,
}

/// The layout a finished run had, as the performance model takes it.
pub fn layout_of(s: &Summary) -> crate::perf_model::Layout {
    let machines = s.machines.max(1);
    crate::perf_model::Layout {
        strategy: s.strategy.name().into(),
        nodes: s.nodes.max(1),
        ranks_per_node: s.ranks_per_node.max(1),
        ranks_per_machine: s.world_size.div_ceil(machines),
        threads: s.threads_per_rank.max(1),
        stages: s.stages.max(1),
        micro_batches: s.micro_batches.max(1),
        schedule: s
            .pipeline
            .as_ref()
            .map_or(crate::schedule::ScheduleKind::OneFOneB, |p| p.schedule),
        global_batch: s.global_batch,
        boundaries: s.stage_boundaries.clone(),
        grad_sync: match s.gradient_averaging.as_str() {
            "shared_memory" => crate::grad_sync::GradSync::SharedMemory,
            "two_level" => crate::grad_sync::GradSync::TwoLevel,
            "mpi_allreduce" => crate::grad_sync::GradSync::Allreduce,
            "mpi_allreduce_overlapped" => crate::grad_sync::GradSync::Overlapped,
            "weight_average" => crate::grad_sync::GradSync::WeightAverage { every: 1 },
            _ => crate::grad_sync::GradSync::None,
        },
        pipeline_in_node: s.placement != crate::config::Placement::ReplicasInNode,
    }
}

pub fn rows(records: &[RunRecord], predictor: Option<&Predictor>) -> Vec<Row> {
    records
        .iter()
        .map(|r| {
            let s = &r.summary;
            let base = baseline(r, records);
            let base_ips = base.map(|b| b.summary.samples_per_second);
            let speedup = base_ips.map(|b| s.samples_per_second / b);
            let predicted = predictor
                .map(|p| crate::perf_model::predict(&layout_of(s), &p.calibration, p.network).images_per_s);
            let (lo, hi) = (
                r.throughputs.iter().cloned().fold(f64::INFINITY, f64::min),
                r.throughputs.iter().cloned().fold(0.0, f64::max),
            );
            let total_cores = s.world_size * s.threads_per_rank;
            let bubble = s
                .pipeline
                .as_ref()
                .map(|p| {
                    p.bubble_fraction_per_rank.iter().sum::<f64>()
                        / p.bubble_fraction_per_rank.len().max(1) as f64
                })
                .unwrap_or(0.0);
            Row {
                run: r.name.clone(),
                strategy: s.strategy.name().into(),
                dataset: s.dataset.clone(),
                scaling: scaling(s).into(),
                ranks: s.world_size,
                nodes: s.nodes.max(1),
                ranks_per_node: s.ranks_per_node.max(1),
                threads_per_rank: s.threads_per_rank,
                stages: s.stages,
                replicas: s.replicas,
                total_cores,
                oversubscribed: s.ranks_per_node.max(1) * s.threads_per_rank > s.cores_per_node
                    || total_cores > s.nodes.max(1) * s.cores_per_node,
                global_batch: s.global_batch,
                epochs: s.epochs,
                train_seconds: s.train_seconds,
                samples_per_second: s.samples_per_second,
                repeats: r.throughputs.len(),
                samples_per_second_min: lo,
                samples_per_second_max: hi,
                baseline: base.map(|b| b.name.clone()).unwrap_or_default(),
                speedup,
                speedup_min: base_ips.map(|b| lo / b),
                speedup_max: base_ips.map(|b| hi / b),
                predicted_samples_per_second: predicted,
                predicted_speedup: predicted.zip(base_ips).map(|(p, b)| p / b),
                prediction_error: predicted.map(|p| p / s.samples_per_second - 1.0),
                efficiency: speedup.map(|x| x / total_cores as f64),
                final_test_accuracy: s.final_test_accuracy,
                peak_rss_mb_max: s.peak_rss_mb.iter().cloned().fold(0.0, f64::max),
                peak_rss_mb_per_rank: s
                    .peak_rss_mb
                    .iter()
                    .map(|m| format!("{m:.0}"))
                    .collect::<Vec<_>>()
                    .join(";"),
                allreduce_share: s.allreduce_seconds / s.train_seconds,
                bubble_share: bubble,
                bubble_formula: s.pipeline.as_ref().map(|p| p.bubble_formula),
                bubble_predicted: s.pipeline.as_ref().map(|p| {
                    let v = &p.predicted_bubble_fraction_per_rank;
                    v.iter().sum::<f64>() / v.len().max(1) as f64
                }),
            }
        })
        .collect()
}

fn write_csv(path: &Path, rows: &[&Row]) -> Result<()> {
    let mut w = csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "-".into())
}

pub fn markdown(rows: &[&Row]) -> String {
    let mut md = String::from(
        "| run | strategy | scaling | nodes | ranks x threads | stages x replicas | global batch | train s | images/s | predicted (error) | speedup | efficiency | accuracy % | peak RSS MB/rank | averaging | bubble (formula / predicted) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {} | {} | {} x {}{} | {} x {} | {} | {:.1} | {:.0}{} | {} | {} | {} | {:.2} | {} | {:.1}% | {:.1}%{} |\n",
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
            r.train_seconds,
            r.samples_per_second,
            if r.repeats > 1 {
                format!(
                    " ({:.0}-{:.0}, {} runs)",
                    r.samples_per_second_min, r.samples_per_second_max, r.repeats
                )
            } else {
                String::new()
            },
            match (r.predicted_samples_per_second, r.prediction_error) {
                (Some(p), Some(e)) => format!("{p:.0} ({:+.0}%)", 100.0 * e),
                _ => "-".into(),
            },
            opt(r.speedup, 2),
            opt(r.efficiency, 3),
            r.final_test_accuracy,
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

/// Writes the tables to `out/metrics/` and the plots to `out/plots/`; returns the files written.
pub fn write(records: &[RunRecord], out: &Path, predictor: Option<&Predictor>) -> Result<Vec<PathBuf>> {
    let metrics = out.join("metrics");
    let plots = out.join("plots");
    std::fs::create_dir_all(&metrics)?;
    std::fs::create_dir_all(&plots)?;
    let all = rows(records, predictor);
    let refs: Vec<&Row> = all.iter().collect();
    let mut written = Vec::new();
    let mut emit = |name: &str, rows: &[&Row]| -> Result<()> {
        let csv = metrics.join(format!("{name}.csv"));
        write_csv(&csv, rows)?;
        let md = metrics.join(format!("{name}.md"));
        std::fs::write(&md, markdown(rows))?;
        written.extend([csv, md]);
        Ok(())
    };
    emit("speedup_table", &refs)?;
    for kind in ["strong", "weak"] {
        let sel: Vec<&Row> = all
            .iter()
            .filter(|r| r.scaling == kind || r.scaling == "baseline")
            .collect();
        emit(&format!("{kind}_scaling"), &sel)?;
    }
    for spec in SCALING_PLOTS {
        let p = plots.join(spec.file);
        scaling_plot(&all, &p, &spec)?;
        written.push(p);
    }
    let p = plots.join("loss_curves.png");
    loss_plot(records, &p)?;
    written.push(p);
    let p = plots.join("training_comparison.png");
    comparison_plot(&all, &p)?;
    written.push(p);
    let p = plots.join("time_breakdown.png");
    breakdown_plot(records, &p)?;
    written.push(p);
    Ok(written)
}

type PlotResult = Result<()>;

/// The legend box every chart uses.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> PlotResult {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(err)
}
type SummaryField = fn(&Summary) -> f64;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One scaling chart: a measured value against cores or nodes, one line per (strategy,
/// scaling, threads per rank), min-max bars over repeats, and the ideal.
struct ScalingPlot {
    file: &'static str,
    title: &'static str,
    y_desc: &'static str,
    x_desc: &'static str,
    x: fn(&Row) -> usize,
    /// (median, min, max) of the plotted value.
    value: fn(&Row) -> Option<(f64, f64, f64)>,
    /// The performance model's value, drawn as a hollow marker (with `--calibration`).
    predicted: fn(&Row) -> Option<f64>,
    /// The ideal value at x for a series whose rows use `cores_per_x` cores per x unit.
    ideal: fn(f64, f64) -> f64,
    legend: SeriesLabelPosition,
}

fn speedup(r: &Row) -> Option<(f64, f64, f64)> {
    Some((r.speedup?, r.speedup_min?, r.speedup_max?))
}

fn efficiency(r: &Row) -> Option<(f64, f64, f64)> {
    let c = r.total_cores as f64;
    speedup(r).map(|(m, lo, hi)| (m / c, lo / c, hi / c))
}

const SCALING_PLOTS: [ScalingPlot; 4] = [
    ScalingPlot {
        file: "speedup.png",
        title: "Speedup vs serial (1 thread)",
        y_desc: "speedup (x)",
        x_desc: "total cores (ranks x threads per rank)",
        x: |r| r.total_cores,
        value: speedup,
        predicted: |r| r.predicted_speedup,
        ideal: |x, _| x,
        legend: SeriesLabelPosition::UpperLeft,
    },
    ScalingPlot {
        file: "efficiency.png",
        title: "Parallel efficiency",
        y_desc: "efficiency (speedup / cores)",
        x_desc: "total cores (ranks x threads per rank)",
        x: |r| r.total_cores,
        value: efficiency,
        predicted: |r| r.predicted_speedup.map(|p| p / r.total_cores as f64),
        ideal: |_, _| 1.0,
        legend: SeriesLabelPosition::UpperRight,
    },
    ScalingPlot {
        file: "speedup_by_nodes.png",
        title: "Speedup vs serial (1 thread), by node count",
        y_desc: "speedup (x)",
        x_desc: "nodes",
        x: |r| r.nodes,
        value: speedup,
        predicted: |r| r.predicted_speedup,
        ideal: |x, cores_per_node| x * cores_per_node,
        legend: SeriesLabelPosition::UpperLeft,
    },
    ScalingPlot {
        file: "efficiency_by_nodes.png",
        title: "Parallel efficiency, by node count",
        y_desc: "efficiency (speedup / cores)",
        x_desc: "nodes",
        x: |r| r.nodes,
        value: efficiency,
        predicted: |r| r.predicted_speedup.map(|p| p / r.total_cores as f64),
        ideal: |_, _| 1.0,
        legend: SeriesLabelPosition::UpperRight,
    },
];

fn series_name(r: &Row) -> String {
    format!("{} {} ({} thr/rank)", r.strategy, r.scaling, r.threads_per_rank)
}

fn scaling_plot(rows: &[Row], path: &Path, spec: &ScalingPlot) -> PlotResult {
    let pts: Vec<(&Row, (f64, f64, f64))> = rows
        .iter()
        .filter_map(|r| (spec.value)(r).map(|v| (r, v)))
        .collect();
    let max_x = pts.iter().map(|(r, _)| (spec.x)(r)).max().unwrap_or(1).max(2) as f64;
    // The ideal line is drawn for the cores per x unit of the first series (one per node count
    // with seed 000's mapping); series with other per-node layouts are compared by efficiency.
    let cores_per_x = pts
        .first()
        .map_or(1.0, |(r, _)| r.total_cores as f64 / (spec.x)(r).max(1) as f64);
    let max_y = pts
        .iter()
        .map(|(_, v)| v.2)
        .fold((spec.ideal)(max_x, cores_per_x), f64::max)
        * 1.15;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(spec.title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..max_x + 0.5, 0f64..max_y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            (1..=max_x as usize).map(|c| (c as f64, (spec.ideal)(c as f64, cores_per_x))),
            BLACK.stroke_width(1),
        ))
        .map_err(err)?
        .label("ideal")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    let mut groups: Vec<String> = pts.iter().map(|(r, _)| series_name(r)).collect();
    groups.sort();
    groups.dedup();
    for (i, g) in groups.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut series: Vec<(f64, (f64, f64, f64))> = pts
            .iter()
            .filter(|(r, _)| &series_name(r) == g)
            .map(|(r, v)| ((spec.x)(r) as f64, *v))
            .collect();
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let line: Vec<(f64, f64)> = series.iter().map(|(x, v)| (*x, v.0)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(
                series
                    .iter()
                    .filter(|(_, v)| v.2 > v.1)
                    .map(|(x, v)| PathElement::new(vec![(*x, v.1), (*x, v.2)], color.stroke_width(2))),
            )
            .map_err(err)?;
        chart
            .draw_series(line.iter().map(|p| Circle::new(*p, 5, color.filled())))
            .map_err(err)?
            .label(g.clone())
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        let predicted: Vec<(f64, f64)> = pts
            .iter()
            .filter(|(r, _)| &series_name(r) == g)
            .filter_map(|(r, _)| (spec.predicted)(r).map(|p| ((spec.x)(r) as f64, p)))
            .collect();
        chart
            .draw_series(
                predicted
                    .iter()
                    .map(|p| Circle::new(*p, 7, color.stroke_width(2))),
            )
            .map_err(err)?;
    }
    if pts.iter().any(|(r, _)| (spec.predicted)(r).is_some()) {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(err)?
            .label("predicted (hollow)")
            .legend(|(x, y)| Circle::new((x + 10, y), 6, BLACK.stroke_width(2)));
    }
    draw_legend(&mut chart, spec.legend.clone())?;
    root.present().map_err(err)?;
    Ok(())
}

fn loss_plot(records: &[RunRecord], path: &Path) -> PlotResult {
    let max_epoch = records
        .iter()
        .flat_map(|r| r.losses.iter().map(|l| l.0))
        .max()
        .unwrap_or(1)
        .max(2);
    let max_loss = records
        .iter()
        .flat_map(|r| r.losses.iter().map(|l| l.1))
        .fold(0.1, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Training loss per epoch", ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.8f64..max_epoch as f64 + 0.2, 0f64..max_loss)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("mean training loss (cross-entropy)")
        .draw()
        .map_err(err)?;
    for (i, r) in records.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = r.losses.iter().map(|(e, l)| (*e as f64, *l)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(r.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)?;
    Ok(())
}

type RunBars<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize>,
    >,
>;

/// Axes of a horizontal bar chart with one bar per run, labelled with the run names.
fn label_runs(chart: &mut RunBars<'_>, names: &[String], x_desc: &str) -> PlotResult {
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .disable_y_mesh()
        .y_labels(names.len().max(1))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)
}

/// Horizontal bars, one per run, in one panel.
fn bar_panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    names: &[String],
    values: &[f64],
    title: &str,
    x_desc: &str,
    color: RGBColor,
) -> PlotResult {
    let n = names.len();
    let max = values.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(if names.is_empty() { 10 } else { 150 })
        .build_cartesian_2d(0f64..max, (0..n).into_segmented())
        .map_err(err)?;
    label_runs(&mut chart, names, x_desc)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (*v, SegmentValue::Exact(i + 1))],
                color.mix(0.8).filled(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

fn comparison_plot(rows: &[Row], path: &Path) -> PlotResult {
    let names: Vec<String> = rows.iter().map(|r| r.run.clone()).collect();
    let root = BitMapBackend::new(path, (1500, 120 + 40 * rows.len().max(4) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    let series: [(&str, &str, Vec<f64>, RGBColor); 3] = [
        (
            "Training time",
            "seconds",
            rows.iter().map(|r| r.train_seconds).collect(),
            COLORS[0],
        ),
        (
            "Test accuracy",
            "percent",
            rows.iter().map(|r| r.final_test_accuracy).collect(),
            COLORS[2],
        ),
        (
            "Throughput",
            "images / second",
            rows.iter().map(|r| r.samples_per_second).collect(),
            COLORS[1],
        ),
    ];
    for (panel, (title, unit, values, color)) in panels.iter().zip(series) {
        bar_panel(panel, &names, &values, title, unit, color)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Stacked bars per run of rank 0's compute, all-reduce and pipeline-wait seconds.
fn breakdown_plot(records: &[RunRecord], path: &Path) -> PlotResult {
    let n = records.len();
    let root = BitMapBackend::new(path, (1000, 140 + 40 * n.max(4) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = records
        .iter()
        .map(|r| r.summary.compute_seconds + r.summary.allreduce_seconds + r.summary.pipeline_wait_seconds)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Where rank 0's training time goes", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..max, (0..n).into_segmented())
        .map_err(err)?;
    label_runs(&mut chart, &names, "seconds")?;
    let parts: [(&str, RGBColor, SummaryField); 3] = [
        ("compute", COLORS[0], |s| s.compute_seconds),
        ("all-reduce", COLORS[1], |s| s.allreduce_seconds),
        ("pipeline wait", COLORS[3], |s| s.pipeline_wait_seconds),
    ];
    let mut offsets = vec![0.0; n];
    for (label, color, get) in parts {
        let bars: Vec<Rectangle<(f64, SegmentValue<usize>)>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (a, b) = (offsets[i], offsets[i] + get(&r.summary));
                offsets[i] = b;
                Rectangle::new(
                    [(a, SegmentValue::Exact(i)), (b, SegmentValue::Exact(i + 1))],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(())
}
