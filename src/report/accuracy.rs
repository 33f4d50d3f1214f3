//! The accuracy charts: test accuracy against the run clock with the target, and the runs side by
//! side (training time, distance to the target, throughput).

use super::chart::{bar_panel, canvas, err, legend, step, Mark, COLORS};
use super::style;
use super::table::{Row, RunRecord};
use crate::util::format::{number, percent};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

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
    let target = records.iter().find_map(|r| r.summary.target.target_accuracy);
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
