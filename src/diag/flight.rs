//! The flight recorder: every rank keeps its last `CAPACITY` communication operations (kind,
//! sequence number, communicator or peer, element count, start and end, the training step) in a
//! ring. When the watchdog fires, on an error, on SIGUSR2 or on SIGTERM/SIGUSR1, the rank writes
//! it to `<run>/flight/rank<R>.json`; `partrain doctor <run>` merges the ranks' files and names
//! the first operation at which they disagree or stop (`crate::diag::doctor`).
//!
//! Sequence numbers count a communicator's collectives (the same on all its ranks when nobody
//! skipped one) and, for messages, each (peer, direction) pair: rank 0's send #k to rank 1 is
//! rank 1's receive #k from rank 0, since the pipeline sends and receives in schedule order.
//!
//! The recorder knows nobody: comm's one instrumented path (`comm::guard`) calls `enter` and
//! `complete` around every MPI operation, and also tells the watchdog and the node board.

use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Records kept per rank: a few hundred steps of a pipeline, thousands of data-parallel steps.
pub const CAPACITY: usize = 2048;
/// `flight/rank<R>.json`'s format name and version.
pub const FORMAT: &str = "partrain-flight";
pub const VERSION: u32 = 1;

/// What an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    AllReduce,
    Broadcast,
    AllGather,
    Barrier,
    Send,
    Recv,
    /// A barrier of the node's shared-memory gradient averaging.
    NodeBarrier,
    /// The all-reduce of node sums across nodes (two-level averaging).
    NodeSumAllReduce,
    /// An all-reduce on the overlapping thread (`comm::ReduceWorker`).
    OverlappedAllReduce,
    /// The main thread waiting for the overlapping thread's all-reduces.
    OverlappedWait,
    /// Waiting for the pipeline's non-blocking sends of a step to complete.
    SendsComplete,
    /// The descriptor exchange of `PARTRAIN_DEBUG=collectives`.
    Check,
    /// Every rank's chunk to every rank (the reduce-scatter of compressed averaging).
    AllToAll,
}

impl OpKind {
    // Codes are positions in this list (the node board's): new kinds go at the end.
    pub const ALL: [OpKind; 13] = [
        OpKind::AllReduce,
        OpKind::Broadcast,
        OpKind::AllGather,
        OpKind::Barrier,
        OpKind::Send,
        OpKind::Recv,
        OpKind::NodeBarrier,
        OpKind::NodeSumAllReduce,
        OpKind::OverlappedAllReduce,
        OpKind::OverlappedWait,
        OpKind::SendsComplete,
        OpKind::Check,
        OpKind::AllToAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::AllReduce => "all-reduce",
            OpKind::Broadcast => "broadcast",
            OpKind::AllGather => "all-gather",
            OpKind::Barrier => "barrier",
            OpKind::Send => "send",
            OpKind::Recv => "recv",
            OpKind::NodeBarrier => "node barrier",
            OpKind::NodeSumAllReduce => "all-reduce of node sums",
            OpKind::OverlappedAllReduce => "overlapped all-reduce",
            OpKind::OverlappedWait => "wait for overlapped all-reduces",
            OpKind::SendsComplete => "completion of pipeline sends",
            OpKind::Check => "collective check",
            OpKind::AllToAll => "all-to-all",
        }
    }

    /// A number for the node board and the check-mode descriptor.
    pub fn code(self) -> u64 {
        Self::ALL.iter().position(|k| *k == self).expect("listed") as u64 + 1
    }

    pub fn from_code(code: u64) -> Option<OpKind> {
        Self::ALL.get((code as usize).checked_sub(1)?).copied()
    }

    /// Point-to-point: its peer is one rank, its sequence counts that pair's messages.
    pub fn is_message(self) -> bool {
        matches!(self, OpKind::Send | OpKind::Recv)
    }
}

/// One operation as the flight record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub kind: OpKind,
    pub seq: u64,
    /// The communicator's name (`world`, `world/stage0`, ...).
    pub comm: String,
    /// The peer's world rank, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    pub count: usize,
    pub dtype: String,
    /// What the values are (`gradients`, `evaluation sums`, ...), when the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The training step the rank was at (global, 1-based; 0 before the first).
    pub step: u64,
    /// Unix time in microseconds (comparable across nodes as far as their clocks agree).
    pub start_us: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_us: Option<f64>,
    #[serde(skip)]
    id: u64,
}

impl Record {
    /// `all-reduce #57 on world (gradients, 421,642 f32)` / `recv #611 from rank 0 (...)`.
    pub fn describe(&self) -> String {
        let place = match self.peer {
            Some(p) if self.kind == OpKind::Send => format!("to rank {p}"),
            Some(p) => format!("from rank {p}"),
            None => format!("on {}", self.comm),
        };
        let what = match &self.label {
            Some(l) => format!("{l}, "),
            None => String::new(),
        };
        format!(
            "{} #{} {place} ({what}{} {})",
            self.kind.name(),
            self.seq,
            crate::util::format::number(self.count as f64, 1.0),
            self.dtype
        )
    }
}

/// An operation about to start, as `comm` describes it.
#[derive(Debug, Clone)]
pub struct Op<'a> {
    pub kind: OpKind,
    pub comm: &'a str,
    pub seq: u64,
    pub peer: Option<usize>,
    pub count: usize,
    pub dtype: &'static str,
}

struct Recorder {
    ring: VecDeque<Record>,
    next_id: u64,
    /// Communicator name -> its ranks' world ranks.
    comms: BTreeMap<String, Vec<usize>>,
    dir: Option<PathBuf>,
    /// Why this rank's record was written so far.
    reasons: String,
}

static RECORDER: Mutex<Recorder> = Mutex::new(Recorder {
    ring: VecDeque::new(),
    next_id: 0,
    comms: BTreeMap::new(),
    dir: None,
    reasons: String::new(),
});
static RANK: AtomicUsize = AtomicUsize::new(0);
static STEP: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static LABEL: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Unix time in microseconds.
pub fn unix_us() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// Where this rank's record goes (`<run>/flight`), and its rank.
pub fn set_dir(dir: PathBuf, rank: usize) {
    RANK.store(rank, Ordering::Relaxed);
    if let Ok(mut r) = RECORDER.lock() {
        r.dir = Some(dir);
    }
}

/// The training step records are tagged with (global, 1-based).
pub fn set_step(step: u64) {
    STEP.store(step, Ordering::Relaxed);
}

pub fn step() -> u64 {
    STEP.load(Ordering::Relaxed)
}

/// Names the ranks of a communicator (world ranks), for the record file and the watchdog.
pub fn register_comm(name: &str, members: Vec<usize>) {
    if let Ok(mut r) = RECORDER.lock() {
        r.comms.insert(name.to_string(), members);
    }
}

/// The names of the communicators this rank belongs to.
pub fn comm_names() -> Vec<String> {
    RECORDER
        .lock()
        .map(|r| r.comms.keys().cloned().collect())
        .unwrap_or_default()
}

/// The world ranks of communicator `name`, if this rank knows it.
pub fn members(name: &str) -> Option<Vec<usize>> {
    RECORDER.lock().ok()?.comms.get(name).cloned()
}

/// Runs `f` with its operations labelled `label` (what the values are).
pub fn labelled<R>(label: &'static str, f: impl FnOnce() -> R) -> R {
    let before = LABEL.with(|l| l.replace(Some(label)));
    let out = f();
    LABEL.with(|l| l.set(before));
    out
}

/// Records `op` as started; returns its id (for `complete`) and the record.
pub fn enter(op: Op) -> (u64, Record) {
    let record = new_record(&op);
    let id = push(record.clone());
    (id, record)
}

fn new_record(op: &Op) -> Record {
    Record {
        kind: op.kind,
        seq: op.seq,
        comm: op.comm.to_string(),
        peer: op.peer,
        count: op.count,
        dtype: op.dtype.to_string(),
        label: LABEL.with(|l| l.get()).map(str::to_string),
        step: step(),
        start_us: unix_us(),
        end_us: None,
        id: 0,
    }
}

fn push(mut record: Record) -> u64 {
    let Ok(mut r) = RECORDER.lock() else {
        return 0;
    };
    r.next_id += 1;
    record.id = r.next_id;
    if r.ring.len() == CAPACITY {
        r.ring.pop_front();
    }
    r.ring.push_back(record);
    r.next_id
}

/// Marks operation `id` completed; returns its record.
pub fn complete(id: u64) -> Option<Record> {
    let mut r = RECORDER.lock().ok()?;
    let rec = r.ring.iter_mut().rev().find(|rec| rec.id == id)?;
    rec.end_us = Some(unix_us());
    Some(rec.clone())
}

/// Records `op` as started without a wait (a non-blocking send): no watchdog, no board.
/// `complete_noted` marks it completed once its request has been waited for.
pub fn note(op: Op) -> u64 {
    push(new_record(&op))
}

pub fn complete_noted(id: u64) {
    complete(id);
}

/// A short name of a value type for the records (`f32`, `u64`, ...).
pub fn dtype_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// One rank's flight record file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlightFile {
    pub format: String,
    pub version: u32,
    pub rank: usize,
    pub host: String,
    pub pid: u32,
    /// Why it was written (`watchdog: ...`, `error: ...`, `SIGUSR2`, ...).
    pub reason: String,
    pub written_us: f64,
    pub step: u64,
    pub comms: BTreeMap<String, Vec<usize>>,
    pub records: Vec<Record>,
}

/// Whether this rank has written its record already (after a stall, an error or a signal).
pub fn dumped() -> bool {
    RECORDER.lock().map(|r| !r.reasons.is_empty()).unwrap_or(false)
}

/// Writes this rank's record to `<run>/flight/rank<R>.json` (atomically); returns the path.
/// A no-op before `set_dir`.
pub fn dump(reason: &str) -> Option<PathBuf> {
    let (file, dir) = {
        let mut r = RECORDER.lock().ok()?;
        let dir = r.dir.clone()?;
        // A later dump keeps why the earlier ones were written.
        let reason = match r.reasons.is_empty() {
            true => reason.to_string(),
            false => format!("{}; then {reason}", r.reasons),
        };
        r.reasons = reason.clone();
        let rank = RANK.load(Ordering::Relaxed);
        let file = FlightFile {
            format: FORMAT.into(),
            version: VERSION,
            rank,
            host: crate::util::hostname(),
            pid: std::process::id(),
            reason,
            written_us: unix_us(),
            step: step(),
            comms: r.comms.clone(),
            records: r.ring.iter().cloned().collect(),
        };
        (file, dir)
    };
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("rank{}.json", file.rank));
    let text = serde_json::to_vec_pretty(&file).ok()?;
    crate::util::atomic::write(&path, &text).ok()?;
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_kinds_round_trip_through_their_codes() {
        for k in OpKind::ALL {
            assert_eq!(OpKind::from_code(k.code()), Some(k));
        }
        assert_eq!(OpKind::from_code(0), None);
        assert_eq!(OpKind::from_code(99), None);
    }

    #[test]
    fn records_describe_themselves() {
        let r = Record {
            kind: OpKind::AllReduce,
            seq: 1207,
            comm: "world".into(),
            peer: None,
            count: 421_642,
            dtype: "f32".into(),
            label: Some("gradients".into()),
            step: 3,
            start_us: 0.0,
            end_us: None,
            id: 0,
        };
        assert_eq!(r.describe(), "all-reduce #1207 on world (gradients, 421,642 f32)");
        let m = Record {
            kind: OpKind::Recv,
            seq: 611,
            peer: Some(0),
            label: None,
            count: 6272,
            ..r
        };
        assert_eq!(m.describe(), "recv #611 from rank 0 (6,272 f32)");
    }
}
