//! What every chart shares: the canvas with a legend column of its own (never over data), twelve
//! colours, tick steps, horizontal bar panels.

use super::style;
use anyhow::Result;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

pub(super) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

pub(super) fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
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
pub(super) fn canvas<'a>(
    path: &'a Path,
    size: (u32, u32),
    legend_px: u32,
) -> Result<(Area<'a>, Area<'a>, Area<'a>)> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (plot, side) = root.split_horizontally(size.0 - legend_px);
    Ok((root, plot, side))
}

/// The step between the ticks plotters picks for `range` with at most `max` of them.
pub(super) fn step(range: std::ops::Range<f64>, max: usize) -> f64 {
    use plotters::coord::ranged1d::Ranged;
    let p = plotters::coord::types::RangedCoordf64::from(range).key_points(max);
    p.windows(2).map(|w| w[1] - w[0]).fold(f64::INFINITY, f64::min)
}

/// Horizontal bars, one per run (rows from the top), in one panel; `fmt` writes the x ticks.
pub(super) fn bar_panel(
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

/// Horizontal bar charts draw their rows top to bottom, row i at y = rows - 1 - i: the row a
/// y tick stands for, if it stands for one.
pub(super) fn row_at(rows: usize, y: f64) -> Option<usize> {
    let i = rows as f64 - 1.0 - y;
    ((i - i.round()).abs() < 1e-9 && i >= 0.0 && i.round() < rows as f64).then(|| i.round() as usize)
}

pub(super) type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
