//! Timelines of a run (`--trace`, `run.trace: true`): every rank records spans (forward and
//! backward of each micro-batch, sends and receives with their peer and bytes, each level of
//! gradient averaging, waits, evaluation, checkpoints) on the machine's monotonic clock; at the
//! end rank 0 gathers them, shifts each rank's clock onto its own (offsets measured at start-up by
//! ping-pong), and writes `trace.json` in the Chrome trace-event format that Perfetto and
//! chrome://tracing open: one process per node, one thread (track) per rank.
//!
//! Off (the default), a span is one relaxed atomic load: nothing is recorded or allocated.

use serde::Serialize;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static EVENTS: RefCell<Vec<Event>> = const { RefCell::new(Vec::new()) };
}

/// One complete span ("ph": "X") of the trace-event format.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub name: String,
    pub cat: &'static str,
    pub ph: &'static str,
    /// Start and duration in microseconds.
    pub ts: f64,
    pub dur: f64,
    pub pid: usize,
    pub tid: usize,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub args: serde_json::Value,
}

/// Microseconds on the machine's monotonic clock (comparable between processes of one machine;
/// across machines the start-up offsets align them).
pub fn now_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An open span; recorded when dropped. `None` inside when tracing is off.
pub struct Span(Option<(Event, f64)>);

impl Span {
    /// No span (an operation that is not traced).
    pub fn none() -> Span {
        Span(None)
    }
}

/// Opens a span of category `cat`; `name` and `args` are only built when tracing is on.
pub fn span(cat: &'static str, name: impl FnOnce() -> String) -> Span {
    span_with(cat, name, || serde_json::Value::Null)
}

pub fn span_with(
    cat: &'static str,
    name: impl FnOnce() -> String,
    args: impl FnOnce() -> serde_json::Value,
) -> Span {
    if !enabled() {
        return Span(None);
    }
    let start = now_us();
    Span(Some((
        Event {
            name: name(),
            cat,
            ph: "X",
            ts: start,
            dur: 0.0,
            pid: 0,
            tid: 0,
            args: args(),
        },
        start,
    )))
}

/// Runs `f` inside a span.
pub fn time<T>(cat: &'static str, name: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    let _s = span(cat, name);
    f()
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((mut e, start)) = self.0.take() {
            e.dur = now_us() - start;
            EVENTS.with(|v| v.borrow_mut().push(e));
        }
    }
}

/// This thread's recorded events (emptied).
pub fn take() -> Vec<Event> {
    EVENTS.with(|v| std::mem::take(&mut *v.borrow_mut()))
}

/// A rank's events ready to be merged: its clock offset to rank 0 and where it runs.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RankTrace {
    pub rank: usize,
    pub node: usize,
    pub host: String,
    pub label: String,
    /// Add to this rank's timestamps to put them on rank 0's clock.
    pub offset_us: f64,
    pub events: Vec<serde_json::Value>,
}

/// The merged document: one process per node (named by host), one thread per rank, all
/// timestamps on rank 0's clock relative to the earliest event.
pub fn merge(ranks: &[RankTrace]) -> serde_json::Value {
    let origin = ranks
        .iter()
        .flat_map(|r| {
            r.events
                .iter()
                .map(move |e| e["ts"].as_f64().unwrap_or(0.0) + r.offset_us)
        })
        .fold(f64::INFINITY, f64::min);
    let origin = if origin.is_finite() { origin } else { 0.0 };
    let mut events = Vec::new();
    for r in ranks {
        events.push(
            serde_json::json!({"ph": "M", "name": "process_name", "pid": r.node, "tid": 0,
            "args": {"name": format!("node{} ({})", r.node, r.host)}}),
        );
        events.push(
            serde_json::json!({"ph": "M", "name": "thread_name", "pid": r.node, "tid": r.rank,
            "args": {"name": r.label}}),
        );
        events.push(
            serde_json::json!({"ph": "M", "name": "thread_sort_index", "pid": r.node, "tid": r.rank,
            "args": {"sort_index": r.rank}}),
        );
        for e in &r.events {
            let mut e = e.clone();
            e["ts"] = serde_json::json!(e["ts"].as_f64().unwrap_or(0.0) + r.offset_us - origin);
            e["pid"] = serde_json::json!(r.node);
            e["tid"] = serde_json::json!(r.rank);
            events.push(e);
        }
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_recorded_only_when_on() {
        enable(false);
        time("compute", || "F0".into(), || ());
        assert!(take().is_empty());
        enable(true);
        time(
            "compute",
            || "F0".into(),
            || std::thread::sleep(std::time::Duration::from_millis(2)),
        );
        enable(false);
        let e = take();
        assert_eq!(e.len(), 1);
        assert!(e[0].dur >= 2000.0, "{e:?}");
        let merged = merge(&[RankTrace {
            rank: 0,
            node: 0,
            host: "h".into(),
            label: "rank 0".into(),
            offset_us: 0.0,
            events: e.iter().map(|e| serde_json::to_value(e).unwrap()).collect(),
        }]);
        assert_eq!(merged["traceEvents"][3]["ts"], 0.0);
    }
}
