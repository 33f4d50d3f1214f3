//! The PNG charts of `partrain report`. Every chart keeps its legend in a column of its own, right
//! of the plot, so it never covers data; axes say their units; ticks come from `plot_style`.

use crate::record::summary::Summary;
use crate::report::style::{self as style, count, nodes, number, percent};
use crate::report::table::{Row, RunRecord};
use anyhow::Result;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}

/// Matplotlib's tab10 plus two: twelve series before a colour repeats.
pub const COLORS: [RGBColor; 12] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 128),
    RGBColor(128, 0, 0),
];

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
pub enum Mark {
    Line(RGBColor),
    Dot(RGBColor),
    Ring(RGBColor),
    Bar(RGBColor),
}

/// A legend drawn in its own column (`area`), top to bottom.
pub fn legend(area: &Area, entries: &[(String, Mark)]) -> Result<()> {
    let font = ("sans-serif", style::LEGEND).into_font();
    // 28 px per entry while they fit the column's height, tighter (down to 17 px) when there are many.
    let height = area.dim_in_pixel().1 as i32;
    let spacing = ((height - 70) / entries.len().max(1) as i32).clamp(17, 28);
    for (i, (label, mark)) in entries.iter().enumerate() {
        let y = 60 + spacing * i as i32;
        let x = 10;
        match *mark {
            Mark::Line(c) => area.draw(&PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(2))),
            Mark::Dot(c) => area.draw(&Circle::new((x + 11, y), 6, c.filled())),
            Mark::Ring(c) => area.draw(&Circle::new((x + 11, y), 7, c.stroke_width(2))),
            Mark::Bar(c) => area.draw(&Rectangle::new([(x + 2, y - 7), (x + 20, y + 7)], c.filled())),
        }
        .map_err(err)?;
        area.draw(&Text::new(label.clone(), (x + 32, y - 9), font.clone()))
            .map_err(err)?;
    }
    Ok(())
}

/// A white canvas split into the plot (left) and the legend column (right, `legend_px` wide).
fn canvas<'a>(path: &'a Path, size: (u32, u32), legend_px: u32) -> Result<(Area<'a>, Area<'a>, Area<'a>)> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, side) = root.split_horizontally(size.0 - legend_px);
    Ok((root, plot, side))
}

/// The step between the ticks plotters picks for `range` with at most `max` of them.
fn step(range: std::ops::Range<f64>, max: usize) -> f64 {
    use plotters::coord::ranged1d::Ranged;
    let p = plotters::coord::types::RangedCoordf64::from(range).key_points(max);
    p.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min)
}

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
        draw_series(&mut chart, s, color)?;
        entries.push((name.clone(), Mark::Dot(color)));
    }
    if series.iter().any(|(_, s)| s.iter().any(|p| p.2.is_some())) {
        entries.push(("predicted (hollow)".into(), Mark::Ring(BLACK)));
    }
    if series.iter().any(|(_, s)| s.iter().any(|p| p.1 .2 > p.1 .1)) {
        entries.push(("min-max over repeats".into(), Mark::Line(RGBColor(90, 90, 90))));
    }
    legend(&side, &entries)?;
    root.present().map_err(err)
}

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

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

/// Horizontal bars, one per run (rows from the top), in one panel; `fmt` writes the x ticks.
fn bar_panel(
    area: &Area,
    names: &[String],
    values: &[f64],
    (title, x_desc): (&str, &str),
    x_max: Option<f64>,
    fmt: fn(f64, f64) -> String,
    color: RGBColor,
) -> Result<()> {
    let n = names.len().max(1);
    let max = x_max.unwrap_or_else(|| values.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.12);
    let x_step = step(0.0..max, 6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", style::AXIS + 2))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(if names.is_empty() { 10 } else { 150 })
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
        .x_label_formatter(&|v| fmt(*v, x_step))
        .y_labels(n)
        .y_label_formatter(&label)
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc(x_desc)
        .draw()
        .map_err(err)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            let y = (n - 1 - i) as f64;
            Rectangle::new([(0.0, y - 0.35), (*v, y + 0.35)], color.mix(0.85).filled())
        }))
        .map_err(err)?;
    Ok(())
}

pub fn comparison_plot(rows: &[Row], path: &Path) -> Result<()> {
    let names: Vec<String> = rows.iter().map(|r| r.run.clone()).collect();
    let root = BitMapBackend::new(path, (1500, 140 + 42 * rows.len().max(3) as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    bar_panel(
        &panels[0],
        &names,
        &rows.iter().map(|r| r.train_seconds).collect::<Vec<_>>(),
        ("Training time", "seconds"),
        None,
        number,
        COLORS[0],
    )?;
    // Every bar of a 0-100 % accuracy axis reads 99 %: the distance to the target tells them apart.
    let best = rows.iter().map(|r| r.final_test_accuracy).fold(0.0, f64::max);
    let target = rows.iter().find_map(|r| r.target_accuracy);
    let title = match target {
        Some(t) => format!("Final test accuracy below the {t}% target"),
        None => format!("Final test accuracy below the best run ({best:.2}%)"),
    };
    bar_panel(
        &panels[1],
        &names,
        &rows
            .iter()
            .map(|r| (r.target_accuracy.or(target).unwrap_or(best) - r.final_test_accuracy).max(0.0))
            .collect::<Vec<_>>(),
        (&title, "percentage points (0 = reached)"),
        None,
        number,
        COLORS[2],
    )?;
    bar_panel(
        &panels[2],
        &names,
        &rows.iter().map(|r| r.samples_per_second).collect::<Vec<_>>(),
        ("Throughput", "images / second"),
        None,
        number,
        COLORS[1],
    )?;
    root.present().map_err(err)
}

/// Test accuracy against the run clock (training, evaluations, checkpoints), one line per run,
/// with the target as a dashed line: time to accuracy at a glance.
pub fn accuracy_time_plot(records: &[RunRecord], path: &Path) -> Result<()> {
    let target = records.iter().find_map(|r| r.summary.target_accuracy);
    let top = records
        .iter()
        .flat_map(|r| r.accuracy.iter().map(|p| p.1))
        .fold(target.unwrap_or(0.0), f64::max);
    let y_hi = (top + 0.5).min(100.0);
    let y_lo = (target.unwrap_or(top) - 5.0).max(0.0);
    let x_hi = records
        .iter()
        .flat_map(|r| r.accuracy.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.05;
    let (root, plot, side) = canvas(path, (1000, 600), 260)?;
    let (x_step, y_step) = (step(0.0..x_hi, 8), step(y_lo..y_hi, 8));
    let mut chart = ChartBuilder::on(&plot)
        .caption("Test accuracy against time", ("sans-serif", style::CAPTION))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..x_hi, y_lo..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_labels(8)
        .x_label_formatter(&|v| number(*v, x_step))
        .y_labels(8)
        .y_label_formatter(&|v| percent(*v, y_step))
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc("seconds since the first step (evaluations included)")
        .y_desc("test accuracy")
        .draw()
        .map_err(err)?;
    let mut entries = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // Points below the axis sit on its floor, so every curve starts where its run did.
        let pts: Vec<(f64, f64)> = r.accuracy.iter().map(|&(t, a)| (t, a.max(y_lo))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
        entries.push((r.name.clone(), Mark::Line(color)));
    }
    if let Some(t) = target {
        let line = vec![(0.0, t), (x_hi, t)];
        chart
            .draw_series(DashedLineSeries::new(line, 8, 6, BLACK.stroke_width(2)))
            .map_err(err)?;
        entries.push((format!("target {t}%"), Mark::Line(BLACK)));
    }
    legend(&side, &entries)?;
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
    let mut offsets = vec![0.0; n];
    for (_, color, get) in parts {
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
    legend(&side, &parts.map(|(l, c, _)| (l.to_string(), Mark::Bar(c))))?;
    root.present().map_err(err)
}

/// The span kinds a timeline draws, with their colours (`comm` as a thin bar under the others).
pub const TIMELINE_KINDS: [(&str, RGBColor); 6] = [
    ("forward", COLORS[0]),
    ("backward", COLORS[1]),
    ("comm", COLORS[7]),
    ("averaging", COLORS[2]),
    ("wait", COLORS[3]),
    ("evaluate", COLORS[4]),
];

/// One bar of a timeline: a rank, an index into `TIMELINE_KINDS`, start and end in milliseconds.
pub struct Span {
    pub rank: usize,
    pub kind: usize,
    pub start: f64,
    pub end: f64,
}

/// `partrain timeline`'s picture: a row per rank (rank 0 on top), a bar per span.
pub fn timeline(path: &Path, title: &str, ranks: usize, width_ms: f64, spans: &[Span]) -> Result<()> {
    let (root, plot, side) = canvas(path, (1300, 150 + 60 * ranks.max(2) as u32), 170)?;
    let x_step = step(0.0..width_ms, 10);
    let row_of = |rank: usize| (ranks - 1 - rank) as f64;
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", style::CAPTION))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..width_ms, -0.5f64..ranks as f64 - 0.5)
        .map_err(err)?;
    let label = |y: &f64| row_at(ranks, *y).map(|r| format!("rank {r}")).unwrap_or_default();
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .disable_y_mesh()
        .x_labels(10)
        .x_label_formatter(&|v| number(*v, x_step))
        .y_labels(ranks + 1)
        .y_label_formatter(&label)
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc("milliseconds from the window's first step")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(spans.iter().map(|s| {
            let y = row_of(s.rank);
            let (lo, hi) = if TIMELINE_KINDS[s.kind].0 == "comm" {
                (y - 0.42, y - 0.27)
            } else {
                (y - 0.22, y + 0.38)
            };
            Rectangle::new(
                [(s.start, lo), (s.end.max(s.start), hi)],
                TIMELINE_KINDS[s.kind].1.filled(),
            )
        }))
        .map_err(err)?;
    let entries: Vec<(String, Mark)> = TIMELINE_KINDS
        .iter()
        .map(|(k, c)| (k.to_string(), Mark::Bar(*c)))
        .collect();
    legend(&side, &entries)?;
    root.present().map_err(err)
}

/// Horizontal bar charts draw their rows top to bottom, row i at y = rows - 1 - i: the row a
/// y tick stands for, if it stands for one.
fn row_at(rows: usize, y: f64) -> Option<usize> {
    let i = rows as f64 - 1.0 - y;
    ((i - i.round()).abs() < 1e-9 && i >= 0.0 && i.round() < rows as f64).then(|| i.round() as usize)
}

/// Steps to the target against the global batch on log-log axes (Shallue et al.'s figure): the
/// median over seeds with min-max bars, the perfect-scaling line through the smallest batch, a
/// cross at the top for batches that never reached the target, and the knee and the measured
/// noise scale as vertical lines.
pub fn converge_plot(
    rows: &[crate::perf::curve::CurveRow],
    knee: Option<f64>,
    noise: Option<f64>,
    path: &Path,
) -> Result<()> {
    let b_lo = rows.iter().map(|r| r.batch).min().unwrap_or(1) as f64 / 1.5;
    let b_hi = rows.iter().map(|r| r.batch).max().unwrap_or(2) as f64 * 1.5;
    let steps = rows
        .iter()
        .flat_map(|r| [r.steps_median, r.perfect_steps, r.steps_max.map(|s| s as f64)]);
    let s_hi = steps.clone().flatten().fold(10.0, f64::max) * 3.0;
    let s_lo = steps.flatten().fold(f64::INFINITY, f64::min).min(s_hi / 10.0) / 2.0;
    let (root, plot, side) = canvas(path, (1000, 620), 280)?;
    let title = rows.first().map_or(String::new(), |r| {
        format!("Steps to {}% test accuracy ({})", r.target_accuracy, r.dataset)
    });
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", style::CAPTION))
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(80)
        .build_cartesian_2d((b_lo..b_hi).log_scale(), (s_lo..s_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_label_formatter(&|v| count(v.round()))
        .y_label_formatter(&|v| count(v.round()))
        .label_style(("sans-serif", style::TICKS))
        .axis_desc_style(("sans-serif", style::AXIS))
        .x_desc("global batch (images per step, log scale)")
        .y_desc("optimizer steps to the target (log scale)")
        .draw()
        .map_err(err)?;
    let (measured, ideal, missed, marks) = (COLORS[0], COLORS[7], COLORS[3], (COLORS[2], COLORS[4]));
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.batch as f64, r.steps_median?)))
        .collect();
    chart
        .draw_series(LineSeries::new(pts.clone(), measured.stroke_width(2)))
        .map_err(err)?;
    chart
        .draw_series(pts.iter().map(|p| Circle::new(*p, 5, measured.filled())))
        .map_err(err)?;
    for r in rows {
        if let (Some(lo), Some(hi)) = (r.steps_min, r.steps_max) {
            let b = r.batch as f64;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(b, lo as f64), (b, hi as f64)],
                    measured.stroke_width(2),
                )))
                .map_err(err)?;
        }
        if r.steps_median.is_none() {
            chart
                .draw_series(std::iter::once(Cross::new(
                    (r.batch as f64, s_hi / 1.6),
                    8,
                    missed.stroke_width(3),
                )))
                .map_err(err)?;
        }
    }
    let line: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.batch as f64, r.perfect_steps?)))
        .collect();
    chart
        .draw_series(DashedLineSeries::new(line, 8, 6, ideal.stroke_width(2)))
        .map_err(err)?;
    let vertical = |x: f64, c: RGBColor| PathElement::new(vec![(x, s_lo), (x, s_hi)], c.stroke_width(2));
    let mut entries = vec![
        ("median of seeds (min-max)".to_string(), Mark::Line(measured)),
        ("perfect scaling".to_string(), Mark::Line(ideal)),
    ];
    if rows.iter().any(|r| r.steps_median.is_none()) {
        entries.push(("target not reached".into(), Mark::Dot(missed)));
    }
    if let Some(k) = knee.filter(|k| (b_lo..b_hi).contains(k)) {
        chart
            .draw_series(std::iter::once(vertical(k, marks.0)))
            .map_err(err)?;
        entries.push((
            format!("knee (2x perfect): {}", count(k.round())),
            Mark::Line(marks.0),
        ));
    }
    if let Some(b) = noise.filter(|b| (b_lo..b_hi).contains(b)) {
        chart
            .draw_series(std::iter::once(vertical(b, marks.1)))
            .map_err(err)?;
        entries.push((format!("noise scale: {}", count(b.round())), Mark::Line(marks.1)));
    }
    legend(&side, &entries)?;
    root.present().map_err(err)
}
