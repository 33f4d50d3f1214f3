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

/// One complete span of a trace file, as `timeline` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSpan {
    pub cat: String,
    pub rank: usize,
    pub ts: f64,
    pub dur: f64,
}

/// Ranks a timeline draws at most (a row each): more is a garbled file, not a job.
const MAX_RANKS: usize = 4096;

/// A trace file's complete spans (`"ph": "X"`), each checked: a finite start, a finite
/// non-negative duration, a rank below `MAX_RANKS`.
pub fn parse_trace(bytes: &[u8]) -> anyhow::Result<Vec<TraceSpan>> {
    use anyhow::{bail, Context};
    let doc: serde_json::Value = serde_json::from_slice(bytes).context("not JSON (torn, or not a trace)")?;
    let events = doc["traceEvents"].as_array().context("no traceEvents")?;
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e["ph"] == "X") {
        let (ts, dur) = (e["ts"].as_f64(), e["dur"].as_f64());
        let rank = e["tid"].as_u64().map(|t| t as usize);
        let (Some(ts), Some(dur), Some(rank)) = (ts, dur, rank) else {
            bail!("event {i}: a span needs numbers ts, dur and tid");
        };
        if !(ts.is_finite() && dur.is_finite() && dur >= 0.0) || rank >= MAX_RANKS {
            bail!("event {i}: ts {ts}, dur {dur}, tid {rank} are not a span of a rank's timeline");
        }
        let cat = e["cat"].as_str().unwrap_or("").to_string();
        out.push(TraceSpan { cat, rank, ts, dur });
    }
    Ok(out)
}

/// The bars of rank 0's steps `from_step .. from_step + steps` (1-based): the spans of every rank
/// in that window, the ranks, and the window's width in milliseconds.
pub fn window(
    spans: &[TraceSpan],
    from_step: usize,
    steps: usize,
) -> anyhow::Result<(Vec<Span>, usize, f64)> {
    use anyhow::Context;
    let step_spans: Vec<&TraceSpan> = spans.iter().filter(|e| e.cat == "step" && e.rank == 0).collect();
    let first = step_spans
        .get(from_step.saturating_sub(1))
        .context("fewer steps in the trace than --from-step")?;
    let last_index = (from_step + steps.max(1)).saturating_sub(2);
    let last = step_spans
        .get(last_index)
        .or(step_spans.last())
        .context("no step in the trace")?;
    let (t0, t1) = (first.ts, last.ts + last.dur);
    let ranks = spans.iter().map(|e| e.rank).max().unwrap_or(0) + 1;
    let bars = spans
        .iter()
        .filter(|e| e.ts + e.dur >= t0 && e.ts <= t1)
        .filter_map(|e| {
            let kind = TIMELINE_KINDS.iter().position(|(k, _)| e.cat == *k)?;
            Some(Span {
                rank: e.rank,
                kind,
                start: ((e.ts - t0) / 1e3).max(0.0),
                end: (e.ts + e.dur - t0) / 1e3,
            })
        })
        .collect();
    Ok((bars, ranks, (t1 - t0).max(0.0) / 1e3))
}

impl TimelineOptions {
    pub fn run(&self) -> anyhow::Result<std::path::PathBuf> {
        use anyhow::Context;
        let file = if self.run.is_dir() {
            self.run.join(crate::util::run_files::TRACE)
        } else {
            self.run.clone()
        };
        let bytes = std::fs::read(&file)
            .with_context(|| format!("cannot read {} (run with --trace)", file.display()))?;
        let spans = parse_trace(&bytes).with_context(|| format!("{}", file.display()))?;
        let (bars, ranks, width_ms) =
            window(&spans, self.from_step, self.steps).with_context(|| format!("{}", file.display()))?;
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| file.with_file_name("timeline.png"));
        let title = format!(
            "Timeline, steps {}..{} (rank 0's clock)",
            self.from_step,
            self.from_step + self.steps.max(1) - 1
        );
        crate::util::atomic::write_with(&out, |tmp| timeline(tmp, &title, ranks, width_ms, &bars))?;
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
