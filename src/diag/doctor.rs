//! `partrain doctor RUN_DIR`: merges the ranks' flight records (`flight/rank<R>.json`) and names
//! the first operation at which they disagree or stop, with where each missing rank was instead:
//!
//!   first operation the ranks did not all complete: all-reduce #57 on world (gradients, ...)
//!     entered by rank(s) 0, 2 at step 6, never completed
//!     rank 1 never entered it: last completed all-reduce #56 on world ... at step 5
//!
//! Collectives are compared per communicator by sequence number; messages per (sender,
//! receiver) pair, a send #k matching the receive #k.

use crate::diag::flight::{FlightFile, OpKind, Record, FORMAT, VERSION};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `partrain doctor RUN`: the diagnosis of the run folder's flight records (or of a flight folder).
pub fn run(run: &Path) -> Result<()> {
    let files = load(run)?;
    print!("{}", diagnose(&files));
    Ok(())
}

/// One rank's flight record file, its format and version checked by name first.
pub fn parse_flight(bytes: &[u8]) -> Result<FlightFile> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).context("not JSON (a torn or foreign file)")?;
    if let Err(e) = crate::util::version::Versioned::only(FORMAT, VERSION).check(&value) {
        bail!("not a flight record this partrain reads: {e}");
    }
    serde_json::from_value::<FlightFile>(value).context("malformed flight record")
}

/// Every `rank<R>.json` of the run's flight folder, by rank.
pub fn load(run: &Path) -> Result<Vec<FlightFile>> {
    let dir = if run.join(crate::util::run_files::FLIGHT_DIR).is_dir() {
        run.join(crate::util::run_files::FLIGHT_DIR)
    } else {
        run.to_path_buf()
    };
    let entries = std::fs::read_dir(&dir).with_context(|| {
        format!(
            "{}: no flight records (a run folder with flight/ expected)",
            dir.display()
        )
    })?;
    let mut files = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !(name.starts_with("rank") && name.ends_with(".json")) {
            continue;
        }
        match std::fs::read(e.path())
            .map_err(anyhow::Error::from)
            .and_then(|b| parse_flight(&b))
        {
            Ok(f) => files.push(f),
            // A rank killed while writing leaves a torn file: name it, read the others.
            Err(err) => eprintln!("doctor: {} is left out: {err:#}", e.path().display()),
        }
    }
    if files.is_empty() {
        bail!(
            "{}: no flight records (flight/rank<R>.json); ranks write them when the watchdog fires, on an error, \
             on SIGTERM, and on SIGUSR2",
            dir.display()
        );
    }
    files.sort_by_key(|f| f.rank);
    Ok(files)
}

/// A clock time of a unix-microsecond stamp: `12:03:04.567` (UTC).
fn clock(us: f64) -> String {
    let ms = (us / 1e3) as u64;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

fn ranks_text(ranks: &[usize]) -> String {
    ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

/// An operation some ranks did not complete, with when it was first entered.
struct Stuck {
    first_start: f64,
    lines: Vec<String>,
}

/// Where a rank was: its last completed operation and what it had started since.
fn whereabouts(f: &FlightFile) -> String {
    let last_done = f.records.iter().rev().find(|r| r.end_us.is_some());
    let open: Vec<&Record> = f.records.iter().filter(|r| r.end_us.is_none()).collect();
    let done = match last_done {
        Some(r) => format!(
            "last completed {} at step {} ({})",
            r.describe(),
            r.step,
            clock(r.end_us.unwrap_or(0.0))
        ),
        None => "completed nothing in its record".into(),
    };
    match open.last() {
        Some(r) => format!(
            "{done}; then blocked in {} since {}",
            r.describe(),
            clock(r.start_us)
        ),
        None => format!("{done}; nothing started since (outside MPI: computing or stalled)"),
    }
}

/// The first collective of communicator `comm` that its ranks did not all complete.
fn stuck_collective(comm: &str, members: &[usize], files: &BTreeMap<usize, &FlightFile>) -> Option<Stuck> {
    let on = |f: &FlightFile| -> Vec<Record> {
        // A collective's check (PARTRAIN_DEBUG=collectives) carries the collective's number.
        f.records
            .iter()
            .filter(|r| r.comm == comm && !r.kind.is_message())
            .cloned()
            .collect()
    };
    let mut done = BTreeMap::new();
    let mut entered = BTreeMap::new();
    for &m in members {
        let f = files.get(&m)?;
        let recs = on(f);
        done.insert(
            m,
            recs.iter()
                .filter(|r| r.end_us.is_some())
                .map(|r| r.seq)
                .max()
                .unwrap_or(0),
        );
        entered.insert(m, recs.iter().map(|r| r.seq).max().unwrap_or(0));
    }
    let seq = done.values().min()? + 1;
    let inside: Vec<usize> = members.iter().copied().filter(|m| entered[m] >= seq).collect();
    if inside.is_empty() {
        return None;
    }
    let op = on(files[&inside[0]]).into_iter().find(|r| r.seq == seq)?;
    let first_start = inside
        .iter()
        .filter_map(|m| {
            on(files[m])
                .into_iter()
                .find(|r| r.seq == seq)
                .map(|r| r.start_us)
        })
        .fold(f64::INFINITY, f64::min);
    let never: Vec<usize> = members.iter().copied().filter(|m| entered[m] < seq).collect();
    let mut lines = vec![format!("{} at step {}", op.describe(), op.step)];
    let completed: Vec<usize> = inside.iter().copied().filter(|m| done[m] >= seq).collect();
    let waiting: Vec<usize> = inside.iter().copied().filter(|m| done[m] < seq).collect();
    if !waiting.is_empty() {
        lines.push(format!(
            "  entered by rank(s) {} (from {}), never completed",
            ranks_text(&waiting),
            clock(first_start)
        ));
    }
    if !completed.is_empty() {
        lines.push(format!("  completed by rank(s) {}", ranks_text(&completed)));
    }
    lines.extend(different_operations(&op, seq, &inside, &on, files)?);
    for m in never {
        lines.push(format!("  rank {m} never entered it: {}", whereabouts(files[&m])));
    }
    Some(Stuck { first_start, lines })
}

/// Ranks of `inside` that entered another operation under number `seq` than `op` (checks aside).
fn different_operations(
    op: &Record,
    seq: u64,
    inside: &[usize],
    on: &dyn Fn(&FlightFile) -> Vec<Record>,
    files: &BTreeMap<usize, &FlightFile>,
) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    for m in inside {
        let theirs = on(files[m]).into_iter().find(|r| r.seq == seq)?;
        let checks = theirs.kind == OpKind::Check || op.kind == OpKind::Check;
        if !checks && (theirs.kind != op.kind || theirs.count != op.count) {
            lines.push(format!(
                "  rank {m} entered a different operation under that number: {}",
                theirs.describe()
            ));
        }
    }
    Some(lines)
}

/// Receives some rank waits in whose matching send never started.
fn stuck_messages(files: &BTreeMap<usize, &FlightFile>) -> Vec<Stuck> {
    let mut out = Vec::new();
    for (&rank, f) in files {
        for r in f
            .records
            .iter()
            .filter(|r| r.kind == OpKind::Recv && r.end_us.is_none())
        {
            let Some(src) = r.peer else { continue };
            let Some(sender) = files.get(&src) else {
                out.push(Stuck {
                    first_start: r.start_us,
                    lines: vec![
                        format!(
                            "{} on rank {rank} at step {}, never completed",
                            r.describe(),
                            r.step
                        ),
                        format!("  rank {src} wrote no flight record"),
                    ],
                });
                continue;
            };
            let sent = sender
                .records
                .iter()
                .filter(|s| s.kind == OpKind::Send && s.peer == Some(rank))
                .map(|s| s.seq)
                .max()
                .unwrap_or(0);
            if sent < r.seq {
                out.push(Stuck {
                    first_start: r.start_us,
                    lines: vec![
                        format!(
                            "{} on rank {rank} at step {} (from {}), never completed",
                            r.describe(),
                            r.step,
                            clock(r.start_us)
                        ),
                        format!(
                            "  rank {src} sent only {sent} message(s) to rank {rank}: {}",
                            whereabouts(sender)
                        ),
                    ],
                });
            }
        }
    }
    out
}

/// The report: which records there are, then the stuck operations, the earliest first.
pub fn diagnose(files: &[FlightFile]) -> String {
    let by_rank: BTreeMap<usize, &FlightFile> = files.iter().map(|f| (f.rank, f)).collect();
    let mut comms: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for f in files {
        comms.extend(f.comms.clone());
    }
    let world: BTreeSet<usize> = comms.get("world").map_or_else(
        || by_rank.keys().copied().collect(),
        |m| m.iter().copied().collect(),
    );
    let missing: Vec<usize> = world
        .iter()
        .copied()
        .filter(|r| !by_rank.contains_key(r))
        .collect();
    let mut out = format!(
        "flight records of rank(s) {} (of {} ranks)\n",
        ranks_text(&by_rank.keys().copied().collect::<Vec<_>>()),
        world.len()
    );
    for f in files {
        out += &format!(
            "  rank {} on {} (pid {}), written {}: {}\n",
            f.rank,
            f.host,
            f.pid,
            clock(f.written_us),
            f.reason
        );
    }
    if !missing.is_empty() {
        out += &format!(
            "  no record from rank(s) {} (killed before they could write one; see their output)\n",
            ranks_text(&missing)
        );
    }
    let mut stuck: Vec<Stuck> = comms
        .iter()
        .filter(|(_, m)| m.iter().all(|r| by_rank.contains_key(r)))
        .filter_map(|(name, m)| stuck_collective(name, m, &by_rank))
        .collect();
    stuck.extend(stuck_messages(&by_rank));
    stuck.sort_by(|a, b| a.first_start.total_cmp(&b.first_start));
    match stuck.split_first() {
        None => out += "every operation in the records was completed by all the ranks concerned\n",
        Some((first, rest)) => {
            out += &format!(
                "first operation the ranks did not all complete: {}\n",
                first.lines.join("\n")
            );
            for s in rest {
                out += &format!("also not completed: {}\n", s.lines.join("\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: OpKind, seq: u64, comm: &str, peer: Option<usize>, step: u64, t: f64, done: bool) -> Record {
        serde_json::from_value(serde_json::json!({
            "kind": kind, "seq": seq, "comm": comm, "peer": peer, "count": 421_642, "dtype": "f32",
            "label": "gradients", "step": step, "start_us": t * 1e6,
            "end_us": if done { Some(t * 1e6 + 10.0) } else { None },
        }))
        .unwrap()
    }

    fn file(rank: usize, records: Vec<Record>) -> FlightFile {
        FlightFile {
            format: FORMAT.into(),
            version: VERSION,
            rank,
            host: "node1".into(),
            pid: 100 + rank as u32,
            reason: "watchdog".into(),
            written_us: 100e6,
            step: 6,
            comms: [("world".to_string(), vec![0, 1, 2])].into_iter().collect(),
            records,
        }
    }

    #[test]
    fn a_rank_that_never_entered_a_collective_is_named() {
        let ar = |seq, step, t, done| rec(OpKind::AllReduce, seq, "world", None, step, t, done);
        let files = vec![
            file(0, vec![ar(56, 5, 1.0, true), ar(57, 6, 2.0, false)]),
            file(1, vec![ar(56, 5, 1.0, true)]),
            file(2, vec![ar(56, 5, 1.0, true), ar(57, 6, 2.1, false)]),
        ];
        let report = diagnose(&files);
        assert!(
            report.contains("first operation the ranks did not all complete: all-reduce #57 on world"),
            "{report}"
        );
        assert!(report.contains("entered by rank(s) 0, 2"), "{report}");
        assert!(
            report.contains("rank 1 never entered it: last completed all-reduce #56"),
            "{report}"
        );
    }

    #[test]
    fn a_receive_without_its_send_names_the_sender() {
        let files = vec![
            file(0, vec![rec(OpKind::Send, 611, "world", Some(1), 5, 1.0, true)]),
            file(
                1,
                vec![
                    rec(OpKind::Recv, 611, "world", Some(0), 5, 1.0, true),
                    rec(OpKind::Recv, 612, "world", Some(0), 6, 2.0, false),
                ],
            ),
            file(2, vec![]),
        ];
        let report = diagnose(&files);
        assert!(report.contains("recv #612 from rank 0"), "{report}");
        assert!(
            report.contains("rank 0 sent only 611 message(s) to rank 1"),
            "{report}"
        );
    }

    #[test]
    fn complete_records_report_no_disagreement_and_missing_files_are_named() {
        let ar = |seq| rec(OpKind::AllReduce, seq, "world", None, 1, 1.0, true);
        let files = vec![file(0, vec![ar(1)]), file(2, vec![ar(1)])];
        let report = diagnose(&files);
        assert!(report.contains("no record from rank(s) 1"), "{report}");
        assert!(
            report.contains("every operation in the records was completed"),
            "{report}"
        );
    }
}
