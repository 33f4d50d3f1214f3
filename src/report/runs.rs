//! The runs `partrain report` reads: every finished run folder under a runs folder, repeats
//! (`<name>_r<k>`) grouped into one record, and the time to target of repeats by MLPerf's rule.

use crate::record::summary::{read_summary, Summary};
use anyhow::{Context, Result};
use std::path::Path;

pub struct RunRecord {
    /// Path of the run folder relative to the runs folder; for repeats (`<name>_r1`, `_r2`, ...)
    /// the name without the suffix.
    pub name: String,
    /// The run itself, or of repeats the one with the median images/s (the lower median for an
    /// even count), so every number in the table traces back to one run's summary.
    pub summary: Summary,
    /// (epoch, train loss) from that run's metrics.csv.
    pub losses: Vec<(usize, f64)>,
    /// (run clock seconds, test accuracy) of every evaluation of that run.
    pub accuracy: Vec<(f64, f64)>,
    /// images/s of every repeat (one value for a single run).
    pub throughputs: Vec<f64>,
    /// Time to target of every repeat (None: never reached).
    pub times_to_target: Vec<Option<f64>>,
    /// When and where every repeat ran.
    pub spans: Vec<RunSpan>,
}

/// When and on which machines one run ran (its summary's `started_unix`, `finished_unix`,
/// `machine_ids`, else its host names).
#[derive(Debug, Clone)]
pub struct RunSpan {
    pub name: String,
    pub start: f64,
    pub end: f64,
    pub machines: Vec<String>,
}

impl RunSpan {
    fn of(name: &str, s: &Summary) -> Option<RunSpan> {
        let machines = match s.machine_ids.is_empty() {
            true => s.world.hostnames.clone(),
            false => s.machine_ids.clone(),
        };
        Some(RunSpan {
            name: name.to_string(),
            start: s.started_unix?,
            end: s.finished_unix?,
            machines,
        })
    }
}

/// Notes on runs that ran at the same time on one machine: their timings shared its cores.
pub fn overlaps(records: &[RunRecord]) -> Vec<String> {
    let spans: Vec<&RunSpan> = records.iter().flat_map(|r| &r.spans).collect();
    let mut notes = Vec::new();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let shared = a.machines.iter().any(|m| b.machines.contains(m));
            let seconds = a.end.min(b.end) - a.start.max(b.start);
            if shared && seconds > 0.0 {
                notes.push(format!(
                    "{} and {} overlapped in time on the same machine for {seconds:.0} s: their timings are not independent",
                    a.name, b.name
                ));
            }
        }
    }
    notes
}

/// `dp_2n_t1_r3` -> (`dp_2n_t1`, 3): the repeat suffix the SLURM workflow and sweeps use.
pub fn repeat_of(name: &str) -> Option<(&str, usize)> {
    let (base, k) = name.rsplit_once("_r")?;
    let k: usize = k.parse().ok()?;
    (!base.is_empty()).then_some((base, k))
}

/// Repeats of one configuration become one record (see `RunRecord`).
fn group_repeats(mut runs: Vec<RunRecord>) -> Vec<RunRecord> {
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups: std::collections::BTreeMap<String, Vec<RunRecord>> = Default::default();
    for r in runs {
        let key = repeat_of(&r.name).map_or(r.name.clone(), |(base, _)| base.to_string());
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(name, mut reps)| {
            let throughputs: Vec<f64> = reps.iter().map(|r| r.summary.samples_per_second).collect();
            let times_to_target = reps.iter().map(|r| r.summary.target.time_to_target_s).collect();
            let spans = reps.iter().flat_map(|r| r.spans.clone()).collect();
            reps.sort_by(|a, b| {
                a.summary
                    .samples_per_second
                    .total_cmp(&b.summary.samples_per_second)
            });
            let median = reps.swap_remove((reps.len() - 1) / 2);
            RunRecord {
                name,
                throughputs,
                times_to_target,
                spans,
                ..median
            }
        })
        .collect()
}

/// Every completed run below `runs`; the runs left out (unfinished, or with a summary.json that
/// is torn or foreign: why) and notes on files read in part (a torn or missing metrics.csv).
pub fn collect(runs: &Path) -> Result<(Vec<RunRecord>, Vec<String>)> {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![runs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("runs folder {} cannot be read", dir.display()))?;
        for e in entries.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
        let sp = dir.join(crate::util::run_files::SUMMARY);
        if !sp.exists() {
            continue;
        }
        let name = dir.strip_prefix(runs).unwrap_or(&dir).display().to_string();
        match read_summary(&sp) {
            Ok(summary) if summary.status == "completed" => {
                let (losses, accuracy) = read_metrics(&dir.join(crate::util::run_files::METRICS))
                    .unwrap_or_else(|e| {
                        skipped.push(format!("{name}: {e:#}; its curves are left out"));
                        Default::default()
                    });
                found.push(RunRecord {
                    spans: RunSpan::of(&name, &summary).into_iter().collect(),
                    name,
                    throughputs: vec![summary.samples_per_second],
                    times_to_target: vec![summary.target.time_to_target_s],
                    summary,
                    losses,
                    accuracy,
                });
            }
            Ok(s) => skipped.push(format!("{name}: not a completed run (status {})", s.status)),
            Err(e) => match crate::record::summary::read_status(&sp) {
                Some(status) if status != "completed" => {
                    skipped.push(format!("{name}: not a completed run (status {status})"))
                }
                _ => skipped.push(format!("{name}: {e:#}")),
            },
        }
    }
    skipped.sort();
    Ok((group_repeats(found), skipped))
}

/// (epoch, train loss) at each epoch's end and (run seconds, test accuracy) of every evaluation.
type Curves = (Vec<(usize, f64)>, Vec<(f64, f64)>);

fn read_metrics(path: &Path) -> Result<Curves> {
    let (rows, torn) = crate::record::metrics_csv::read_rows(path)?;
    if let Some(note) = torn {
        eprintln!("report: {note}");
    }
    let losses = rows
        .iter()
        .filter(|r| r.epoch_end)
        .map(|r| (r.epoch, r.train_loss))
        .collect();
    let accuracy = rows.iter().map(|r| (r.run_seconds, r.test_accuracy)).collect();
    Ok((losses, accuracy))
}

/// The time to target of repeats: one run's; of 2-4 the median; of 5 or more MLPerf Training's
/// rule, the mean without the fastest and the slowest. A repeat that never reached the target
/// counts as infinitely slow, so the result is None when it cannot be dropped. Returns the time
/// and the rule's name.
pub fn time_to_target(times: &[Option<f64>]) -> (Option<f64>, String) {
    let mut t: Vec<f64> = times.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    let (value, rule) = match n {
        0 => (f64::INFINITY, String::new()),
        1 => (t[0], "one run".into()),
        2..=4 => {
            let m = if n % 2 == 1 {
                t[n / 2]
            } else {
                (t[n / 2 - 1] + t[n / 2]) / 2.0
            };
            (m, format!("median of {n}"))
        }
        _ => (
            t[1..n - 1].iter().sum::<f64>() / (n - 2) as f64,
            format!("MLPerf: mean of {} (fastest and slowest dropped)", n - 2),
        ),
    };
    (value.is_finite().then_some(value), rule)
}
