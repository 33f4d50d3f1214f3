//! Timelines of a run (`--trace`, `run.trace: true`): every rank records spans (forward and
//! backward of each micro-batch, sends and receives with their peer and bytes, each level of
//! gradient averaging, waits, evaluation, checkpoints) on the machine's monotonic clock; at the
//! end rank 0 gathers them, shifts each rank's clock onto its own (offsets measured at start-up by
//! ping-pong), and writes `trace.json` in the Chrome trace-event format that Perfetto and
//! chrome://tracing open: one process per node, one thread (track) per rank.
//!
//! Off (the default), a span is one relaxed atomic load: nothing is recorded or allocated. On, each
//! rank streams its events to its own file (`<run>/trace/rank<R>.jsonl`, `stream_to`) every
//! `FLUSH_EVENTS` events, so a long traced run holds a bounded number in memory; at the end rank
//! 0 merges the files into `trace.json` in two streaming passes (`merge_files`).

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

/// Events a thread keeps before writing them to its rank's stream: ~1,000 spans of a few hundred
/// bytes (a 100,000-step traced run held 9 KB per step per rank in memory before streaming).
pub const FLUSH_EVENTS: usize = 1024;

static SINK: std::sync::Mutex<Option<std::io::BufWriter<std::fs::File>>> = std::sync::Mutex::new(None);

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((mut e, start)) = self.0.take() {
            e.dur = now_us() - start;
            let full = EVENTS.with(|v| {
                let mut v = v.borrow_mut();
                v.push(e);
                v.len() >= FLUSH_EVENTS
            });
            if full {
                // A failed write loses trace events, not the run; `flush` at the end reports it.
                let _ = flush();
            }
        }
    }
}

/// Who a rank's stream belongs to: its first line.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RankHeader {
    pub rank: usize,
    pub node: usize,
    pub host: String,
    pub label: String,
}

/// Streams this process's events to `path` (a new file, `header` its first line) from now on.
pub fn stream_to(path: &std::path::Path, header: &RankHeader) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer(&mut w, header)?;
    w.write_all(b"\n")?;
    *SINK
        .lock()
        .map_err(|_| std::io::Error::other("trace sink poisoned"))? = Some(w);
    Ok(())
}

/// Writes this thread's events to the stream (and syncs it); keeps them in memory when there is
/// no stream (the unit tests' `take`).
pub fn flush() -> std::io::Result<()> {
    use std::io::Write;
    let mut sink = SINK
        .lock()
        .map_err(|_| std::io::Error::other("trace sink poisoned"))?;
    let Some(w) = sink.as_mut() else { return Ok(()) };
    for e in take() {
        serde_json::to_writer(&mut *w, &e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    w.get_ref().sync_data()
}

/// The streams `files` (each with its clock offset to rank 0, microseconds) merged into one
/// trace-event document written to `out`: one process per node (named by host), one thread per
/// rank, all timestamps on rank 0's clock relative to the earliest event. Two passes over the
/// files (the earliest event, then the events), so nothing but one line is held at a time; a torn
/// last line (a killed rank) is left out.
pub fn merge_files(files: &[(std::path::PathBuf, f64)], out: &mut impl std::io::Write) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut origin = f64::INFINITY;
    for (path, offset) in files {
        for_each_event(path, |_, e| {
            origin = origin.min(e["ts"].as_f64().unwrap_or(0.0) + offset)
        })?;
    }
    let origin = if origin.is_finite() { origin } else { 0.0 };
    out.write_all(b"{\"traceEvents\": [")?;
    let mut first = true;
    let mut put = |out: &mut dyn std::io::Write, v: &serde_json::Value| -> std::io::Result<()> {
        if !std::mem::take(&mut first) {
            out.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut *out, v).map_err(std::io::Error::other)
    };
    for (path, offset) in files {
        let mut header: Option<RankHeader> = None;
        for_each_event(path, |h, e| {
            if header.is_none() {
                header = Some(h.clone());
                for m in metadata(h) {
                    let _ = put(out, &m);
                }
            }
            let mut e = e.clone();
            e["ts"] = serde_json::json!(e["ts"].as_f64().unwrap_or(0.0) + offset - origin);
            e["pid"] = serde_json::json!(h.node);
            e["tid"] = serde_json::json!(h.rank);
            let _ = put(out, &e);
        })
        .with_context(|| format!("{}", path.display()))?;
    }
    out.write_all(b"], \"displayTimeUnit\": \"ms\"}\n")?;
    Ok(())
}

/// The process, thread name and sort index events of a rank's track.
fn metadata(h: &RankHeader) -> [serde_json::Value; 3] {
    [
        serde_json::json!({"ph": "M", "name": "process_name", "pid": h.node, "tid": 0,
            "args": {"name": format!("node{} ({})", h.node, h.host)}}),
        serde_json::json!({"ph": "M", "name": "thread_name", "pid": h.node, "tid": h.rank,
            "args": {"name": h.label}}),
        serde_json::json!({"ph": "M", "name": "thread_sort_index", "pid": h.node, "tid": h.rank,
            "args": {"sort_index": h.rank}}),
    ]
}

/// Calls `f` with the header and each event of a rank's stream; a torn last line is left out.
fn for_each_event(
    path: &std::path::Path,
    mut f: impl FnMut(&RankHeader, &serde_json::Value),
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines.next().context("empty trace stream")??;
    let header: RankHeader = serde_json::from_str(&first).context("no rank header on the first line")?;
    for line in lines {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line?) else {
            break;
        };
        f(&header, &e);
    }
    Ok(())
}

/// This thread's recorded events (emptied).
pub fn take() -> Vec<Event> {
    EVENTS.with(|v| std::mem::take(&mut *v.borrow_mut()))
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
        // A stream of that event and a torn line, merged: the event on rank 0's clock from 0.
        let dir = std::env::temp_dir().join(format!("partrain-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rank0.jsonl");
        let header = RankHeader {
            rank: 0,
            node: 0,
            host: "h".into(),
            label: "rank 0".into(),
        };
        let mut text = serde_json::to_string(&header).unwrap() + "\n";
        text += &(serde_json::to_string(&e[0]).unwrap() + "\n{\"name\": \"tor");
        std::fs::write(&path, text).unwrap();
        let mut out = Vec::new();
        merge_files(&[(path, 0.0)], &mut out).unwrap();
        let merged: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(merged["traceEvents"].as_array().unwrap().len(), 4);
        assert_eq!(merged["traceEvents"][3]["ts"], 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
