//! `partrain timeline RUN_DIR`: a traced run's `trace.json` drawn as one row per rank.

use super::chart::{canvas, err, legend, row_at, step, Mark, COLORS};
use super::style;
use crate::util::format::number;
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// `partrain timeline RUN_DIR`: a picture of a run's trace.json: one row per rank, a bar per span
/// (forward, backward, messages, averaging, waits), over a window of steps.
#[derive(Debug, Clone)]
pub struct TimelineOptions {
    /// The run folder (with trace.json), or the trace file itself.
    pub run: std::path::PathBuf,
    /// The first step shown (1-based) and how many.
    pub from_step: usize,
    pub steps: usize,
    /// Default: timeline.png next to trace.json.
    pub out: Option<std::path::PathBuf>,
}

impl TimelineOptions {
    pub fn run(&self) -> anyhow::Result<std::path::PathBuf> {
        use anyhow::Context;
        let file = if self.run.is_dir() {
            self.run.join("trace.json")
        } else {
            self.run.clone()
        };
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&file)
                .with_context(|| format!("cannot read {} (run with --trace)", file.display()))?,
        )
        .with_context(|| format!("{}: not JSON", file.display()))?;
        let events: Vec<&serde_json::Value> = doc["traceEvents"]
            .as_array()
            .with_context(|| format!("{}: no traceEvents", file.display()))?
            .iter()
            .filter(|e| e["ph"] == "X")
            .collect();
        let f = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(0.0);
        let rank = |e: &serde_json::Value| e["tid"].as_u64().unwrap_or(0) as usize;
        // The window: rank 0's steps from_step .. from_step + steps.
        let steps: Vec<&&serde_json::Value> = events
            .iter()
            .filter(|e| e["cat"] == "step" && rank(e) == 0)
            .collect();
        let first = steps
            .get(self.from_step.saturating_sub(1))
            .context("fewer steps in the trace than --from-step")?;
        let last = steps
            .get(self.from_step + self.steps - 2)
            .unwrap_or(steps.last().expect("a step"));
        let (t0, t1) = (f(first, "ts"), f(last, "ts") + f(last, "dur"));
        let ranks = events.iter().map(|e| rank(e)).max().unwrap_or(0) + 1;
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| file.with_file_name("timeline.png"));
        let bars: Vec<Span> = events
            .iter()
            .filter(|ev| f(ev, "ts") + f(ev, "dur") >= t0 && f(ev, "ts") <= t1)
            .filter_map(|ev| {
                let kind = TIMELINE_KINDS.iter().position(|(k, _)| ev["cat"] == *k)?;
                let start = ((f(ev, "ts") - t0) / 1e3).max(0.0);
                Some(Span {
                    rank: rank(ev),
                    kind,
                    start,
                    end: (f(ev, "ts") + f(ev, "dur") - t0) / 1e3,
                })
            })
            .collect();
        let title = format!(
            "Timeline, steps {}..{} (rank 0's clock)",
            self.from_step,
            self.from_step + self.steps - 1
        );
        crate::util::atomic::write_with(&out, |tmp| timeline(tmp, &title, ranks, (t1 - t0) / 1e3, &bars))?;
        Ok(out)
    }
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
