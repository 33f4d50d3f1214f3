//! The steps-to-target curve (Shallue et al., JMLR 20(112), 2019): from a folder of runs that
//! `bench/converge.sh` made (one per global batch, recipe and seed, each stopped at its target),
//! the steps, epochs and time to the target against the global batch, the perfect-scaling line,
//! the knee where the measured steps are twice that line, and the measured noise scale.
//!
//! Run folders are named `b<batch>_<recipe>_s<seed>`. At each batch the recipe is the one with
//! the fewest steps to the target on the grid's seed (the seed with the most recipes there); then
//! every seed of that recipe counts.

use super::chart::{canvas, err, legend, Mark, COLORS};
use super::style::{self, count};
use crate::perf::curve::{knee, noise_scale, CurveRow};
use crate::record::summary::read_summary;
use anyhow::{bail, Context, Result};
use plotters::coord::combinators::LogCoord;
use plotters::prelude::*;
use std::path::Path;

/// One finished run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvergeRun {
    pub recipe: String,
    pub batch: usize,
    pub seed: u64,
    pub dataset: String,
    pub target: f64,
    pub steps: Option<usize>,
    pub epochs: Option<f64>,
    pub seconds: Option<f64>,
    /// The best test accuracy of any evaluation, and the epochs the run took.
    pub best_accuracy: f64,
    pub epochs_run: usize,
    /// The smoothed noise scale at the target (else at the end).
    pub noise_scale: Option<f64>,
}

/// `b4096_lars-w2_s42` -> (4096, `lars-w2`, 42).
pub fn parse_name(name: &str) -> Option<(usize, String, u64)> {
    let rest = name.strip_prefix('b')?;
    let (batch, rest) = rest.split_once('_')?;
    let (recipe, seed) = rest.rsplit_once("_s")?;
    Some((batch.parse().ok()?, recipe.to_string(), seed.parse().ok()?))
}

/// Every completed run below `runs` whose folder name parses; a run without a target is an error
/// (the curve needs one).
pub fn collect(runs: &Path) -> Result<Vec<ConvergeRun>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(runs).with_context(|| format!("cannot read {}", runs.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some((_, recipe, _)) = parse_name(&name) else {
            continue;
        };
        let Ok(s) = read_summary(&e.path().join(crate::util::run_files::SUMMARY)) else {
            continue;
        };
        if s.status != "completed" {
            continue;
        }
        let target = s
            .target
            .target_accuracy
            .with_context(|| format!("{name}: summary.json has no target_accuracy"))?;
        out.push(ConvergeRun {
            recipe,
            batch: s.global_batch,
            seed: s.seed,
            dataset: s.dataset.clone(),
            target,
            steps: s.target.steps_to_target,
            epochs: s.target.epochs_to_target,
            seconds: s.target.time_to_target_s,
            best_accuracy: best_accuracy(&e.path().join(crate::util::run_files::METRICS))?,
            epochs_run: s.epochs,
            noise_scale: s.target.noise_scale_at_target.or(s.target.noise_scale),
        });
    }
    out.sort_by(|a, b| (a.batch, &a.recipe, a.seed).cmp(&(b.batch, &b.recipe, b.seed)));
    Ok(out)
}

/// The best test accuracy in `metrics`, read by the reader that leaves out a torn last line.
fn best_accuracy(metrics: &Path) -> Result<f64> {
    let (rows, _torn) = crate::record::metrics_csv::read_rows(metrics)?;
    Ok(rows.iter().map(|r| r.test_accuracy).fold(0.0, f64::max))
}

/// Fewest steps to the target first; among runs that missed it, the best accuracy.
fn better(a: &ConvergeRun, b: &ConvergeRun) -> std::cmp::Ordering {
    match (a.steps, b.steps) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.best_accuracy.total_cmp(&a.best_accuracy),
    }
}

/// The grid's seed at `batch`: the one most recipes ran with (the smallest on a tie).
fn grid_seed(runs: &[ConvergeRun], batch: usize) -> Option<u64> {
    let mut counts = std::collections::BTreeMap::new();
    for r in runs.iter().filter(|r| r.batch == batch) {
        *counts.entry(r.seed).or_insert(0) += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(s, _)| s)
}

/// The best recipe at `batch` on the grid's seed.
pub fn best_recipe(runs: &[ConvergeRun], batch: usize) -> Option<String> {
    let seed = grid_seed(runs, batch)?;
    runs.iter()
        .filter(|r| r.batch == batch && r.seed == seed)
        .min_by(|a, b| better(a, b))
        .map(|r| r.recipe.clone())
}

/// The curve: one row per batch, smallest first.
pub fn curve(runs: &[ConvergeRun]) -> Vec<CurveRow> {
    let mut batches: Vec<usize> = runs.iter().map(|r| r.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let mut rows: Vec<CurveRow> = batches.iter().filter_map(|&b| curve_row(runs, b)).collect();
    let base = rows
        .iter()
        .find_map(|r| r.steps_median.map(|s| s * r.batch as f64));
    for r in &mut rows {
        r.perfect_steps = base.map(|x| x / r.batch as f64);
    }
    rows
}

fn curve_row(runs: &[ConvergeRun], batch: usize) -> Option<CurveRow> {
    let recipe = best_recipe(runs, batch)?;
    let sel: Vec<&ConvergeRun> = runs
        .iter()
        .filter(|r| r.batch == batch && r.recipe == recipe)
        .collect();
    let inf = |v: Option<f64>| v.unwrap_or(f64::INFINITY);
    let reached: Vec<usize> = sel.iter().filter_map(|r| r.steps).collect();
    let acc = sel.iter().map(|r| r.best_accuracy);
    Some(CurveRow {
        dataset: sel[0].dataset.clone(),
        target_accuracy: sel[0].target,
        batch,
        seeds: sel.len(),
        reached: reached.len(),
        steps_median: crate::util::median(sel.iter().map(|r| inf(r.steps.map(|s| s as f64))).collect()),
        steps_min: reached.iter().min().copied(),
        steps_max: (reached.len() == sel.len())
            .then(|| reached.iter().max().copied())
            .flatten(),
        epochs_median: crate::util::median(sel.iter().map(|r| inf(r.epochs)).collect()),
        seconds_median: crate::util::median(sel.iter().map(|r| inf(r.seconds)).collect()),
        best_accuracy_min: acc.clone().fold(f64::INFINITY, f64::min),
        best_accuracy_max: acc.fold(0.0, f64::max),
        noise_scale_median: crate::util::median(sel.iter().filter_map(|r| r.noise_scale).collect()),
        perfect_steps: None,
        recipe,
    })
}

/// The table as markdown.
pub fn markdown(rows: &[CurveRow]) -> String {
    let o = |v: Option<f64>, d: usize| v.map_or("-".into(), |x| format!("{x:.d$}"));
    let mut md = String::from(
        "| global batch | recipe | seeds reaching target | steps to target (median, min-max) | perfect scaling | epochs | seconds | best accuracy % (seeds) | noise scale |\n\
         |---:|---|---:|---|---:|---:|---:|---|---:|\n",
    );
    for r in rows {
        let range = match (r.steps_min, r.steps_max) {
            (Some(a), Some(b)) => format!(" ({a}-{b})"),
            (Some(a), None) => format!(" ({a}-never)"),
            _ => String::new(),
        };
        md += &format!(
            "| {} | {} | {}/{} | {}{range} | {} | {} | {} | {:.2}-{:.2} | {} |\n",
            r.batch,
            r.recipe,
            r.reached,
            r.seeds,
            r.steps_median.map_or("not reached".into(), |s| format!("{s:.0}")),
            o(r.perfect_steps, 0),
            o(r.epochs_median, 2),
            o(r.seconds_median, 0),
            r.best_accuracy_min,
            r.best_accuracy_max,
            o(r.noise_scale_median, 0),
        );
    }
    md
}

/// Writes `<stem>.csv`, `<stem>.md` and `<stem>.png` into `out`; returns the rows.
pub fn write(runs: &Path, out: &Path, stem: &str) -> Result<Vec<CurveRow>> {
    let all = collect(runs)?;
    if all.is_empty() {
        bail!(
            "no completed run named b<batch>_<recipe>_s<seed> under {}",
            runs.display()
        );
    }
    let rows = curve(&all);
    std::fs::create_dir_all(out)?;
    crate::util::atomic::write_csv(&out.join(format!("{stem}.csv")), &rows)?;
    let knee = knee(&rows, 2.0);
    let noise = noise_scale(&rows);
    let mut md = markdown(&rows);
    md += &format!(
        "\nknee (steps twice the perfect-scaling line): {}\n",
        knee.map_or("not within the measured batches".into(), |k| format!(
            "global batch {k:.0}"
        ))
    );
    md += &format!(
        "noise scale (median of the batches' medians at the target): {}\n",
        noise.map_or("not measured".into(), |b| format!("{b:.0} images"))
    );
    crate::util::atomic::write(&out.join(format!("{stem}.md")), md.as_bytes())?;
    crate::util::atomic::write_with(&out.join(format!("{stem}.png")), |tmp| {
        converge_plot(&rows, knee, noise, tmp)
    })?;
    Ok(rows)
}

type LogChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<LogCoord<f64>, LogCoord<f64>>>;

/// Steps to the target against the global batch on log-log axes (Shallue et al.'s figure): the
/// median over seeds with min-max bars, the perfect-scaling line through the smallest batch, a
/// cross at the top for batches that never reached the target, and the knee and the measured
/// noise scale as vertical lines.
pub fn converge_plot(rows: &[CurveRow], knee: Option<f64>, noise: Option<f64>, path: &Path) -> Result<()> {
    let batches = || rows.iter().map(|r| r.batch as f64);
    let (b_lo, b_hi) = (
        batches().fold(f64::INFINITY, f64::min) / 1.5,
        batches().fold(2.0, f64::max) * 1.5,
    );
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
    let mut entries = draw_curve(&mut chart, rows, s_hi)?;
    let verticals = [
        (knee, "knee (2x perfect)", COLORS[2]),
        (noise, "noise scale", COLORS[4]),
    ];
    for (x, label, color) in verticals {
        let Some(x) = x.filter(|x| (b_lo..b_hi).contains(x)) else {
            continue;
        };
        let line = PathElement::new(vec![(x, s_lo), (x, s_hi)], color.stroke_width(2));
        chart.draw_series(std::iter::once(line)).map_err(err)?;
        entries.push((format!("{label}: {}", count(x.round())), Mark::Line(color)));
    }
    legend(&side, &entries)?;
    root.present().map_err(err)
}

/// The measured medians with min-max bars, crosses where the target was missed, the
/// perfect-scaling line; their legend entries.
fn draw_curve(chart: &mut LogChart, rows: &[CurveRow], s_hi: f64) -> Result<Vec<(String, Mark)>> {
    let (measured, ideal, missed) = (COLORS[0], COLORS[7], COLORS[3]);
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
        let b = r.batch as f64;
        if let (Some(lo), Some(hi)) = (r.steps_min, r.steps_max) {
            let bar = PathElement::new(vec![(b, lo as f64), (b, hi as f64)], measured.stroke_width(2));
            chart.draw_series(std::iter::once(bar)).map_err(err)?;
        }
        if r.steps_median.is_none() {
            let cross = Cross::new((b, s_hi / 1.6), 8, missed.stroke_width(3));
            chart.draw_series(std::iter::once(cross)).map_err(err)?;
        }
    }
    let line: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.batch as f64, r.perfect_steps?)))
        .collect();
    chart
        .draw_series(DashedLineSeries::new(line, 8, 6, ideal.stroke_width(2)))
        .map_err(err)?;
    let mut entries = vec![
        ("median of seeds (min-max)".to_string(), Mark::Line(measured)),
        ("perfect scaling".to_string(), Mark::Line(ideal)),
    ];
    if rows.iter().any(|r| r.steps_median.is_none()) {
        entries.push(("target not reached".into(), Mark::Dot(missed)));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::curve::steps_at;

    fn run(recipe: &str, batch: usize, seed: u64, steps: Option<usize>, acc: f64) -> ConvergeRun {
        ConvergeRun {
            recipe: recipe.into(),
            batch,
            seed,
            dataset: "mnist".into(),
            target: 99.0,
            steps,
            epochs: steps.map(|s| (s * batch) as f64 / 60000.0),
            seconds: steps.map(|s| s as f64),
            best_accuracy: acc,
            epochs_run: 10,
            noise_scale: Some(1000.0),
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("b4096_lars-w2_s42"),
            Some((4096, "lars-w2".into(), 42))
        );
        assert_eq!(parse_name("b64_sgd_s_x_s7"), Some((64, "sgd_s_x".into(), 7)));
        assert_eq!(parse_name("serial_mnist"), None);
    }

    #[test]
    fn best_recipe_then_its_seeds_and_the_knee() {
        let runs = vec![
            run("sgd", 64, 1, Some(4000), 99.2),
            run("sgd", 64, 2, Some(4400), 99.2),
            run("sgd", 64, 3, Some(3600), 99.2),
            run("sgd", 256, 1, Some(1100), 99.2),
            run("lars", 256, 1, Some(1300), 99.1),
            run("sgd", 256, 2, Some(1000), 99.2),
            run("sgd", 256, 3, None, 98.9),
            run("sgd", 1024, 1, None, 98.5),
            run("lars", 1024, 1, None, 98.8),
            run("lars", 1024, 2, Some(600), 99.0),
            run("lars", 1024, 3, Some(700), 99.0),
        ];
        assert_eq!(best_recipe(&runs, 256).as_deref(), Some("sgd"));
        assert_eq!(
            best_recipe(&runs, 1024).as_deref(),
            Some("lars"),
            "closest to the target"
        );
        let rows = curve(&runs);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].steps_median, rows[0].reached), (Some(4000.0), 3));
        assert_eq!(
            rows[1].steps_median,
            Some(1100.0),
            "a seed that missed counts as infinite"
        );
        assert_eq!((rows[1].steps_min, rows[1].steps_max), (Some(1000), None));
        assert_eq!(rows[2].steps_median, Some(700.0));
        assert_eq!(rows[2].perfect_steps, Some(250.0));
        // Ratios to perfect scaling: 1, 1.1, 2.8: the knee (2x) lies between 256 and 1024.
        let k = knee(&rows, 2.0).unwrap();
        let want = (256f64.ln()
            + (1024f64.ln() - 256f64.ln()) * (2f64.ln() - 1.1f64.ln()) / (2.8f64.ln() - 1.1f64.ln()))
        .exp();
        assert!((k - want).abs() < 1e-6, "{k} vs {want}");
        // Between measured batches, log-log; below, perfect scaling; beyond, the last.
        assert!((steps_at(&rows, 32.0).unwrap() - 8000.0).abs() < 1e-9);
        assert!((steps_at(&rows, 512.0).unwrap() - (1100f64 * 700.0).sqrt()).abs() < 1e-6);
        assert_eq!(steps_at(&rows, 4096.0), Some(700.0));
    }
}
