//! The PNG charts of `partrain report`. Every chart keeps its legend in a column of its own, right
//! of the plot, so it never covers data; axes say their units; ticks come from `plot_style`.

use super::chart::{bar_panel, canvas, err, legend, row_at, step, Chart, Mark, COLORS};
use crate::record::summary::Summary;
use crate::report::style::{self as style, count, nodes, number};
use crate::report::table::{Row, RunRecord};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// One scaling chart: a measured value against total cores or nodes, a line per (strategy,
/// scaling, threads per rank), min-max bars over repeats, the prediction as a hollow marker.
pub struct ScalingPlot {
    pub file: &'static str,
    pub title: &'static str,
    pub y_desc: &'static str,
    /// Node counts (on a log2 axis) rather than total cores.
    pub by_nodes: bool,
    /// (median, min, max) of the plotted value.
    pub value: fn(&Row) -> Option<(f64, f64, f64)>,
    pub predicted: fn(&Row) -> Option<f64>,
    /// The ideal at `cores` total cores.
    pub ideal: fn(f64) -> f64,
}

fn speedup(r: &Row) -> Option<(f64, f64, f64)> {
    Some((r.speedup?, r.speedup_min?, r.speedup_max?))
}

fn efficiency(r: &Row) -> Option<(f64, f64, f64)> {
    let c = r.total_cores as f64;
    speedup(r).map(|(m, lo, hi)| (m / c, lo / c, hi / c))
}

pub const SCALING_PLOTS: [ScalingPlot; 4] = [
    ScalingPlot {
        file: "speedup.png",
        title: "Speedup over serial (1 thread)",
        y_desc: "speedup (times)",
        by_nodes: false,
        value: speedup,
        predicted: |r| r.predicted_speedup,
        ideal: |cores| cores,
    },
    ScalingPlot {
        file: "efficiency.png",
        title: "Parallel efficiency",
        y_desc: "efficiency (speedup / cores)",
        by_nodes: false,
        value: efficiency,
        predicted: |r| r.predicted_speedup.map(|p| p / r.total_cores as f64),
        ideal: |_| 1.0,
    },
    ScalingPlot {
        file: "speedup_by_nodes.png",
        title: "Speedup over serial (1 thread), by node count",
        y_desc: "speedup (times)",
        by_nodes: true,
        value: speedup,
        predicted: |r| r.predicted_speedup,
        ideal: |cores| cores,
    },
    ScalingPlot {
        file: "efficiency_by_nodes.png",
        title: "Parallel efficiency, by node count",
        y_desc: "efficiency (speedup / cores)",
        by_nodes: true,
        value: efficiency,
        predicted: |r| r.predicted_speedup.map(|p| p / r.total_cores as f64),
        ideal: |_| 1.0,
    },
];

/// The line a run belongs to; on the node charts also its cores per node (each has its own ideal).
fn series_name(r: &Row, by_nodes: bool) -> String {
    let base = format!("{} {} ({} thr/rank)", r.strategy, r.scaling, r.threads_per_rank);
    if by_nodes {
        format!("{base}, {}", per_node(cores_per_node(r)))
    } else {
        base
    }
}

fn per_node(cores: usize) -> String {
    format!("{cores} core{}/node", if cores == 1 { "" } else { "s" })
}

fn cores_per_node(r: &Row) -> usize {
    r.total_cores / r.nodes.max(1)
}

/// A run's position on the x axis: total cores, or log2 of the node count.
fn x_of(r: &Row, by_nodes: bool) -> f64 {
    if by_nodes {
        (r.nodes.max(1) as f64).log2()
    } else {
        r.total_cores as f64
    }
}

/// One series: (x, (median, min, max), predicted), sorted by x.
type Series = Vec<(f64, (f64, f64, f64), Option<f64>)>;

fn scaling_series(rows: &[Row], spec: &ScalingPlot) -> Vec<(String, Series)> {
    let mut out: Vec<(String, Series)> = Vec::new();
    for r in rows {
        let Some(v) = (spec.value)(r) else { continue };
        let name = series_name(r, spec.by_nodes);
        let point = (x_of(r, spec.by_nodes), v, (spec.predicted)(r));
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, s)) => s.push(point),
            None => out.push((name, vec![point])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, s) in &mut out {
        s.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The ideal lines: one over total cores, or one per distinct cores-per-node over node counts.
fn ideal_lines(rows: &[Row], spec: &ScalingPlot, max_x: f64) -> Vec<(String, Vec<(f64, f64)>)> {
    // A constant ideal (efficiency 1) is one line whatever the cores per node.
    if !spec.by_nodes || (spec.ideal)(1.0) == (spec.ideal)(2.0) {
        let x0 = if spec.by_nodes { 0.0 } else { 1.0 };
        let line = (0..=50)
            .map(|i| x0 + (max_x - x0) * i as f64 / 50.0)
            .map(|x| (x, (spec.ideal)(x)))
            .collect();
        return vec![("ideal".into(), line)];
    }
    let mut densities: Vec<usize> = rows
        .iter()
        .filter(|r| (spec.value)(r).is_some())
        .map(cores_per_node)
        .collect();
    densities.sort();
    densities.dedup();
    let several = densities.len() > 1;
    densities
        .into_iter()
        .map(|c| {
            let line = (0..=50)
                .map(|i| max_x * i as f64 / 50.0)
                .map(|x| (x, (spec.ideal)(x.exp2() * c as f64)))
                .collect();
            let name = if several {
                format!("ideal ({})", per_node(c))
            } else {
                "ideal".into()
            };
            (name, line)
        })
        .collect()
}

/// The ideal lines (dashed) and the measured series of a scaling chart; its legend entries.
fn draw_scaling(
    chart: &mut Chart,
    series: &[(String, Series)],
    ideals: Vec<(String, Vec<(f64, f64)>)>,
) -> Result<Vec<(String, Mark)>> {
    let mut entries = Vec::new();
    for (i, (name, line)) in ideals.into_iter().enumerate() {
        let style = RGBColor(60 * i as u8, 60 * i as u8, 60 * i as u8);
        chart
            .draw_series(DashedLineSeries::new(line, 6, 4, style.stroke_width(1)))
            .map_err(err)?;
        entries.push((name, Mark::Line(style)));
    }
    for (i, (name, s)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        draw_series(chart, s, color)?;
        entries.push((name.clone(), Mark::Dot(color)));
    }
    if series.iter().any(|(_, s)| s.iter().any(|p| p.2.is_some())) {
        entries.push(("predicted (hollow)".into(), Mark::Ring(BLACK)));
    }
    if series.iter().any(|(_, s)| s.iter().any(|p| p.1 .2 > p.1 .1)) {
        entries.push(("min-max over repeats".into(), Mark::Line(RGBColor(90, 90, 90))));
    }
    Ok(entries)
}

pub fn scaling_plot(rows: &[Row], path: &Path, spec: &ScalingPlot) -> Result<()> {
    let series = scaling_series(rows, spec);
    let xs = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0));
    let max_x = xs.fold(if spec.by_nodes { 1.0 } else { 2.0 }, f64::max);
    let ideals = ideal_lines(rows, spec, max_x);
    let top = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|(_, v, p)| v.2.max(p.unwrap_or(0.0))))
        .chain(ideals.iter().flat_map(|(_, l)| l.iter().map(|p| p.1)))
        .fold(0.0, f64::max)
        * 1.12;
    let x_range = if spec.by_nodes {
        -0.3..max_x + 0.3
    } else {
        0.5..max_x + 0.5
    };
    // The node charts' series names are longer (cores per node): a wider legend column.
    let legend_px = if spec.by_nodes { 380 } else { 280 };
    let (root, plot, side) = canvas(path, (1000 + legend_px - 280, 600), legend_px)?;
    let y_step = step(0.0..top, 8);
    let mut chart = ChartBuilder::on(&plot)
        .caption(spec.title, ("sans-serif", style::CAPTION))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(x_range, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        // One tick per whole count (node count or core), at most 10: no unlabelled ticks between.
        .x_labels(style::whole_ticks(max_x))
        .y_labels(8)
        .x_label_formatter(&|v| if spec.by_nodes { nodes(*v) } else { count(*v) })
        .y_label_formatter(&|v| number(*v, y_step))
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc(if spec.by_nodes {
            "nodes"
        } else {
            "total cores (ranks x threads per rank)"
        })
        .y_desc(spec.y_desc)
        .draw()
        .map_err(err)?;
    let entries = draw_scaling(&mut chart, &series, ideals)?;
    legend(&side, &entries)?;
    root.present().map_err(err)
}

/// A series' line and dots, its min-max bars and its hollow predicted markers.
fn draw_series(chart: &mut Chart, s: &Series, color: RGBColor) -> Result<()> {
    let line: Vec<(f64, f64)> = s.iter().map(|(x, v, _)| (*x, v.0)).collect();
    chart
        .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
        .map_err(err)?;
    let spread = s.iter().filter(|(_, v, _)| v.2 > v.1);
    let bars = spread.map(|(x, v, _)| PathElement::new(vec![(*x, v.1), (*x, v.2)], color.stroke_width(2)));
    chart.draw_series(bars).map_err(err)?;
    chart
        .draw_series(line.iter().map(|p| Circle::new(*p, 6, color.filled())))
        .map_err(err)?;
    let predicted = s
        .iter()
        .filter_map(|(x, _, p)| p.map(|p| Circle::new((*x, p), 8, color.stroke_width(2))));
    chart.draw_series(predicted).map_err(err)?;
    Ok(())
}

pub fn loss_plot(records: &[RunRecord], path: &Path) -> Result<()> {
    let max_epoch = records
        .iter()
        .flat_map(|r| r.losses.iter().map(|l| l.0))
        .max()
        .unwrap_or(1);
    if max_epoch == 1 {
        return one_epoch_loss_plot(records, path);
    }
    let max_loss = records
        .iter()
        .flat_map(|r| r.losses.iter().map(|l| l.1))
        .fold(0.1, f64::max)
        * 1.1;
    let (root, plot, side) = canvas(path, (1000, 600), 260)?;
    let y_step = step(0.0..max_loss, 8);
    let mut chart = ChartBuilder::on(&plot)
        .caption("Training loss per epoch", ("sans-serif", style::CAPTION))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(0.5f64..max_epoch as f64 + 0.5, 0f64..max_loss)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(style::whole_ticks(max_epoch as f64))
        .x_label_formatter(&|v| count(*v))
        .y_labels(8)
        .y_label_formatter(&|v| number(*v, y_step))
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc("epoch")
        .y_desc("mean training loss (cross-entropy)")
        .draw()
        .map_err(err)?;
    let mut entries = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = r.losses.iter().map(|(e, l)| (*e as f64, *l)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(err)?;
        entries.push((r.name.clone(), Mark::Line(color)));
    }
    legend(&side, &entries)?;
    root.present().map_err(err)
}

/// Runs of one epoch have no curve: their loss as one bar per run.
fn one_epoch_loss_plot(records: &[RunRecord], path: &Path) -> Result<()> {
    let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    let losses: Vec<f64> = records
        .iter()
        .map(|r| r.losses.first().map_or(0.0, |l| l.1))
        .collect();
    let root = BitMapBackend::new(path, (900, 140 + 42 * records.len().max(3) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    bar_panel(
        &root,
        &names,
        &losses,
        (
            "Training loss of the (only) epoch",
            "mean training loss (cross-entropy)",
        ),
        None,
        number,
        COLORS[0],
    )?;
    root.present().map_err(err)
}

type SummaryField = fn(&Summary) -> f64;

/// Stacked bars per run of rank 0's compute, averaging and pipeline-wait seconds.
pub fn breakdown_plot(records: &[RunRecord], path: &Path) -> Result<()> {
    let n = records.len().max(1);
    let (root, plot, side) = canvas(path, (1150, 150 + 42 * n.max(3) as u32), 200)?;
    let max = records
        .iter()
        .map(|r| r.summary.compute_seconds + r.summary.allreduce_seconds + r.summary.pipeline_wait_seconds)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.12;
    let x_step = step(0.0..max, 6);
    let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Where rank 0's training time goes",
            ("sans-serif", style::CAPTION),
        )
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..max, -0.5f64..n as f64 - 0.5)
        .map_err(err)?;
    let label = |y: &f64| {
        row_at(n, *y)
            .and_then(|i| names.get(i).cloned())
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .disable_y_mesh()
        .x_labels(6)
        .x_label_formatter(&|v| number(*v, x_step))
        .y_labels(n)
        .y_label_formatter(&label)
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc("seconds")
        .draw()
        .map_err(err)?;
    let parts: [(&str, RGBColor, SummaryField); 3] = [
        ("compute", COLORS[0], |s| s.compute_seconds),
        ("averaging", COLORS[1], |s| s.allreduce_seconds),
        ("pipeline wait", COLORS[3], |s| s.pipeline_wait_seconds),
    ];
    stack_bars(&mut chart, records, &parts)?;
    legend(&side, &parts.map(|(l, c, _)| (l.to_string(), Mark::Bar(c))))?;
    root.present().map_err(err)
}

/// Each record's `parts` as one stacked horizontal bar (rows from the top).
fn stack_bars(
    chart: &mut Chart,
    records: &[RunRecord],
    parts: &[(&str, RGBColor, SummaryField)],
) -> Result<()> {
    let n = records.len().max(1);
    let mut offsets = vec![0.0; n];
    for &(_, color, get) in parts {
        let bars: Vec<Rectangle<(f64, f64)>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (a, b) = (offsets[i], offsets[i] + get(&r.summary));
                offsets[i] = b;
                let y = (n - 1 - i) as f64;
                Rectangle::new([(a, y - 0.35), (b, y + 0.35)], color.filled())
            })
            .collect();
        chart.draw_series(bars).map_err(err)?;
    }
    Ok(())
}
