//! Pipeline schedules as data: for every stage, the ordered list of actions it runs in one
//! training step (`F3` = forward of micro-batch 3, `B3` = its backward).
//!
//! - GPipe: all forwards, then all backwards (in reverse order of arrival is not needed: gradients
//!   accumulate, so backwards run in micro-batch order).
//! - 1F1B: stage s runs min(S - s - 1, M) warm-up forwards, then alternates one forward and one
//!   backward, then drains the remaining backwards. At most S - s activations are alive on stage s
//!   at once instead of M, which is why it needs less activation memory than GPipe.
//!
//! Communication is implied by the actions: F(i) on stage s > 0 receives micro-batch i's
//! activation from s - 1, F(i) on s < S - 1 sends it to s + 1; B(i) on s < S - 1 receives the
//! activation gradient from s + 1, B(i) on s > 0 sends it to s - 1.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Forward(usize),
    Backward(usize),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Forward(i) => write!(f, "F{i}"),
            Action::Backward(i) => write!(f, "B{i}"),
        }
    }
}

/// `parallel.schedule` in configs, `--schedule` on command lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// All forwards, then all backwards.
    #[serde(rename = "gpipe")]
    GPipe,
    /// One forward, one backward after the warm-up: fewer activations alive.
    #[serde(rename = "1f1b")]
    OneFOneB,
}

impl ScheduleKind {
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::GPipe => "gpipe",
            ScheduleKind::OneFOneB => "1f1b",
        }
    }
}

/// When every action of a simulated step started (per stage, in order), and when the step ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub end: f64,
    pub starts: Vec<Vec<(Action, f64)>>,
}

#[derive(Debug, Clone)]
pub struct PipelineSchedule {
    pub kind: ScheduleKind,
    pub stages: usize,
    pub micro_batches: usize,
    /// `actions[s]`: stage s's actions in order.
    pub actions: Vec<Vec<Action>>,
}

impl PipelineSchedule {
    pub fn new(kind: ScheduleKind, stages: usize, micro_batches: usize) -> Self {
        assert!(stages > 0 && micro_batches > 0);
        let m = micro_batches;
        let actions = (0..stages)
            .map(|s| match kind {
                ScheduleKind::GPipe => (0..m)
                    .map(Action::Forward)
                    .chain((0..m).map(Action::Backward))
                    .collect(),
                ScheduleKind::OneFOneB => {
                    let warmup = (stages - s - 1).min(m);
                    let mut list: Vec<Action> = (0..warmup).map(Action::Forward).collect();
                    for i in 0..m - warmup {
                        list.push(Action::Forward(warmup + i));
                        list.push(Action::Backward(i));
                    }
                    list.extend((m - warmup..m).map(Action::Backward));
                    list
                }
            })
            .collect();
        PipelineSchedule {
            kind,
            stages,
            micro_batches,
            actions,
        }
    }

    /// The one pipeline simulator: each stage runs its actions in order; an action starts when
    /// its stage is free and its input has arrived (a forward's activation from the stage before,
    /// a backward's gradient from the stage after, each `link[s]` seconds between stages s and
    /// s + 1); forwards take `fwd[s]` and backwards `bwd[s]` seconds on stage s. Returns every
    /// action's start and the step's end, or an error naming the stuck stages when no stage can
    /// make progress (a deadlock). The tick grid, the performance model and a run's predicted
    /// bubble all come from here; the closed forms are its tests.
    pub fn timed(&self, fwd: &[f64], bwd: &[f64], link: &[f64]) -> Result<Timing> {
        let (s_n, m) = (self.stages, self.micro_batches);
        let mut fwd_done = vec![vec![f64::NAN; m]; s_n];
        let mut bwd_done = vec![vec![f64::NAN; m]; s_n];
        let (mut next, mut free) = (vec![0usize; s_n], vec![0.0f64; s_n]);
        let mut starts = vec![Vec::new(); s_n];
        let total: usize = self.actions.iter().map(Vec::len).sum();
        let mut done = 0;
        while done < total {
            let before = done;
            for s in 0..s_n {
                let Some(&a) = self.actions[s].get(next[s]) else {
                    continue;
                };
                let ready = match a {
                    Action::Forward(_) if s == 0 => 0.0,
                    Action::Forward(i) => fwd_done[s - 1][i] + link[s - 1],
                    Action::Backward(i) if s + 1 == s_n => fwd_done[s][i],
                    // Not `f64::max`: it would drop a NaN (an input not yet produced).
                    Action::Backward(i) => {
                        let (grad, own) = (bwd_done[s + 1][i] + link[s], fwd_done[s][i]);
                        if grad.is_nan() || own.is_nan() {
                            f64::NAN
                        } else {
                            grad.max(own)
                        }
                    }
                };
                if ready.is_nan() {
                    continue;
                }
                let start = ready.max(free[s]);
                let (end, slot) = match a {
                    Action::Forward(i) => (start + fwd[s], &mut fwd_done[s][i]),
                    Action::Backward(i) => (start + bwd[s], &mut bwd_done[s][i]),
                };
                *slot = end;
                (free[s], next[s], done) = (end, next[s] + 1, done + 1);
                starts[s].push((a, start));
            }
            if done == before {
                let stuck: Vec<String> = (0..s_n)
                    .filter(|&s| next[s] < self.actions[s].len())
                    .map(|s| format!("stage {s} at {}", self.actions[s][next[s]]))
                    .collect();
                bail!("schedule deadlocks after {done} actions: {}", stuck.join(", "));
            }
        }
        Ok(Timing {
            end: free.iter().cloned().fold(0.0, f64::max),
            starts,
        })
    }

    /// The schedule on an idealised clock, every action one tick (`timed` with unit durations and
    /// free links): per tick, what each stage runs.
    pub fn simulate(&self) -> Result<Vec<Vec<Option<Action>>>> {
        let ones = vec![1.0; self.stages];
        let t = self.timed(&ones, &ones, &vec![0.0; self.stages.saturating_sub(1)])?;
        let mut grid = vec![vec![None; self.stages]; t.end.round() as usize];
        for (s, list) in t.starts.iter().enumerate() {
            for &(a, start) in list {
                grid[start.round() as usize][s] = Some(a);
            }
        }
        Ok(grid)
    }

    /// The idle share of a step whose stages all take the same time per action: for GPipe the
    /// formula (S - 1) / (M + S - 1) (tested), the reference bubble of a schedule.
    pub fn equal_stage_bubble(&self) -> f64 {
        let ticks = self.simulate().map_or(0, |g| g.len());
        let busy: usize = self.actions.iter().map(Vec::len).sum();
        1.0 - busy as f64 / (ticks * self.stages).max(1) as f64
    }

    /// Largest number of micro-batches whose forward has run but whose backward has not, on any
    /// stage: the activations a stage must keep alive at once.
    pub fn peak_in_flight(&self) -> usize {
        self.actions
            .iter()
            .map(|list| {
                let (mut live, mut peak) = (0usize, 0usize);
                for a in list {
                    match a {
                        Action::Forward(_) => live += 1,
                        Action::Backward(_) => live -= 1,
                    }
                    peak = peak.max(live);
                }
                peak
            })
            .max()
            .unwrap_or(0)
    }

    /// The step x stage grid, one row per tick, `.` where a stage idles (the bubble).
    pub fn grid(&self) -> Result<String> {
        let ticks = self.simulate()?;
        let mut out = format!("{:>5}", "tick");
        for s in 0..self.stages {
            out += &format!(" {:>5}", format!("S{s}"));
        }
        out.push('\n');
        for (t, row) in ticks.iter().enumerate() {
            out += &format!("{t:>5}");
            for a in row {
                out += &format!(" {:>5}", a.map_or(".".to_string(), |a| a.to_string()));
            }
            out.push('\n');
        }
        let busy: usize = self.actions.iter().map(Vec::len).sum();
        let idle = ticks.len() * self.stages - busy;
        out += &format!(
            "{} ticks; idle share {:.3} (GPipe's (S-1)/(M+S-1) = {:.3}); peak activations in flight {}\n",
            ticks.len(),
            idle as f64 / (ticks.len() * self.stages) as f64,
            (self.stages - 1) as f64 / (self.micro_batches + self.stages - 1) as f64,
            self.peak_in_flight()
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every (stages, micro-batches) pair up to 8 x 16, both schedules: each stage runs every
    /// forward and backward exactly once, every forward precedes its backward, every send has its
    /// receive, and simulated execution never deadlocks.
    #[test]
    fn schedules_are_complete_ordered_matched_and_deadlock_free() {
        for kind in [ScheduleKind::GPipe, ScheduleKind::OneFOneB] {
            for stages in 1..=8 {
                for m in 1..=16 {
                    let sched = PipelineSchedule::new(kind, stages, m);
                    let mut sends: HashMap<(usize, usize, bool, usize), i32> = HashMap::new();
                    for (s, list) in sched.actions.iter().enumerate() {
                        assert_eq!(list.len(), 2 * m, "{kind:?} {stages}x{m} stage {s}");
                        for i in 0..m {
                            let f = list.iter().position(|a| *a == Action::Forward(i)).unwrap();
                            let b = list.iter().position(|a| *a == Action::Backward(i)).unwrap();
                            assert!(f < b, "{kind:?} {stages}x{m}: stage {s} runs B{i} before F{i}");
                        }
                        // (from, to, is_activation, micro-batch): +1 per send, -1 per receive.
                        for a in list {
                            match *a {
                                Action::Forward(i) => {
                                    if s + 1 < stages {
                                        *sends.entry((s, s + 1, true, i)).or_default() += 1;
                                    }
                                    if s > 0 {
                                        *sends.entry((s - 1, s, true, i)).or_default() -= 1;
                                    }
                                }
                                Action::Backward(i) => {
                                    if s > 0 {
                                        *sends.entry((s, s - 1, false, i)).or_default() += 1;
                                    }
                                    if s + 1 < stages {
                                        *sends.entry((s + 1, s, false, i)).or_default() -= 1;
                                    }
                                }
                            }
                        }
                    }
                    assert!(
                        sends.values().all(|&v| v == 0),
                        "{kind:?} {stages}x{m}: unmatched send/recv"
                    );
                    sched
                        .simulate()
                        .unwrap_or_else(|e| panic!("{kind:?} {stages}x{m}: {e}"));
                }
            }
        }
    }

    #[test]
    fn one_f_one_b_keeps_fewer_activations_alive() {
        let g = PipelineSchedule::new(ScheduleKind::GPipe, 2, 8);
        let o = PipelineSchedule::new(ScheduleKind::OneFOneB, 2, 8);
        assert_eq!(g.peak_in_flight(), 8);
        assert_eq!(o.peak_in_flight(), 2);
        let names: Vec<String> = o.actions[0].iter().map(|a| a.to_string()).collect();
        assert_eq!(names[..4], ["F0", "F1", "B0", "F2"]);
    }

    /// The simulator against the closed forms: with equal stages GPipe and 1F1B take
    /// (M + S - 1) (f + b) and idle (S - 1) / (M + S - 1) of the time; one stage takes M (f + b)
    /// whatever the schedule; a slow link delays a pipeline by its transfer both ways.
    #[test]
    fn the_simulator_matches_the_closed_forms() {
        for kind in [ScheduleKind::GPipe, ScheduleKind::OneFOneB] {
            for (s, m) in [(2, 1), (2, 2), (2, 4), (2, 8), (4, 8), (3, 5)] {
                let sched = PipelineSchedule::new(kind, s, m);
                let t = sched
                    .timed(&vec![1.0; s], &vec![2.0; s], &vec![0.0; s - 1])
                    .unwrap();
                assert!(
                    (t.end - (m + s - 1) as f64 * 3.0).abs() < 1e-9,
                    "{kind:?} {s}x{m}: {}",
                    t.end
                );
                let formula = (s - 1) as f64 / (m + s - 1) as f64;
                assert!(
                    (sched.equal_stage_bubble() - formula).abs() < 1e-9,
                    "{kind:?} {s}x{m}"
                );
            }
        }
        let one = PipelineSchedule::new(ScheduleKind::OneFOneB, 1, 3);
        assert!((one.timed(&[1.0], &[2.0], &[]).unwrap().end - 9.0).abs() < 1e-9);
        let g = PipelineSchedule::new(ScheduleKind::GPipe, 2, 1);
        assert!((g.timed(&[1.0, 1.0], &[1.0, 1.0], &[0.5]).unwrap().end - 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_bad_order_is_reported_as_deadlock() {
        let mut sched = PipelineSchedule::new(ScheduleKind::GPipe, 2, 2);
        // Stage 0 wants B0's gradient before it has sent F1: stage 1 can never finish F1.
        sched.actions[1] = vec![
            Action::Forward(1),
            Action::Forward(0),
            Action::Backward(0),
            Action::Backward(1),
        ];
        sched.actions[0] = vec![
            Action::Forward(0),
            Action::Backward(0),
            Action::Forward(1),
            Action::Backward(1),
        ];
        assert!(sched.simulate().unwrap_err().to_string().contains("deadlocks"));
    }
}
