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

    /// Runs the schedule on an idealised clock (every action takes one tick; a stage waits for
    /// the action that produces its input). Returns, per tick, what each stage runs, or an error
    /// naming the stuck stages when no stage can make progress (a deadlock).
    pub fn simulate(&self) -> Result<Vec<Vec<Option<Action>>>> {
        let (s_n, m) = (self.stages, self.micro_batches);
        // done_at[s][action] = tick at which it finished.
        let mut fwd_done = vec![vec![None::<usize>; m]; s_n];
        let mut bwd_done = vec![vec![None::<usize>; m]; s_n];
        let mut next = vec![0usize; s_n];
        let mut grid = Vec::new();
        let total: usize = self.actions.iter().map(Vec::len).sum();
        let mut finished = 0;
        let mut tick = 0;
        while finished < total {
            let mut row = vec![None; s_n];
            for s in 0..s_n {
                let Some(&a) = self.actions[s].get(next[s]) else {
                    continue;
                };
                let ready = |d: Option<usize>| d.is_some_and(|t| t < tick);
                let ok = match a {
                    Action::Forward(i) => s == 0 || ready(fwd_done[s - 1][i]),
                    Action::Backward(i) => {
                        ready(fwd_done[s][i]) && (s == s_n - 1 || ready(bwd_done[s + 1][i]))
                    }
                };
                if ok {
                    row[s] = Some(a);
                }
            }
            if row.iter().all(Option::is_none) {
                let stuck: Vec<String> = (0..s_n)
                    .filter(|&s| next[s] < self.actions[s].len())
                    .map(|s| format!("stage {s} at {}", self.actions[s][next[s]]))
                    .collect();
                bail!("schedule deadlocks at tick {tick}: {}", stuck.join(", "));
            }
            for (s, a) in row.iter().enumerate() {
                match a {
                    Some(Action::Forward(i)) => fwd_done[s][*i] = Some(tick),
                    Some(Action::Backward(i)) => bwd_done[s][*i] = Some(tick),
                    None => continue,
                }
                next[s] += 1;
                finished += 1;
            }
            grid.push(row);
            tick += 1;
        }
        Ok(grid)
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
            "{} ticks; idle share {:.3} (GPipe formula (S-1)/(M+S-1) = {:.3}); peak activations in flight {}\n",
            ticks.len(),
            idle as f64 / (ticks.len() * self.stages) as f64,
            bubble_formula(self.stages, self.micro_batches),
            self.peak_in_flight()
        );
        Ok(out)
    }
}

/// The GPipe bubble fraction (S - 1) / (M + S - 1).
pub fn bubble_formula(stages: usize, micro_batches: usize) -> f64 {
    (stages - 1) as f64 / (micro_batches + stages - 1) as f64
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

    #[test]
    fn gpipe_idle_share_matches_formula() {
        // With equal action times the simulated bubble equals (S-1)/(M+S-1) for GPipe.
        for (s, m) in [(2, 2), (2, 4), (2, 8), (4, 8)] {
            let sched = PipelineSchedule::new(ScheduleKind::GPipe, s, m);
            let ticks = sched.simulate().unwrap().len();
            let idle = (ticks * s - 2 * m * s) as f64 / (ticks * s) as f64;
            assert!((idle - bubble_formula(s, m)).abs() < 1e-9, "{s}x{m}: {idle}");
        }
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
