//! Deadlines for MPI waits. MPI collectives and receives have no timeout of their own, so a lost
//! or stalled rank would hang every other rank until the job's wall time runs out. Every blocking
//! MPI call registers what it waits for (comm's one instrumented path, `comm::guard`); a watchdog
//! thread checks it. What it must ask of comm (the node board) comes as `Hooks` given at start:
//!
//! - past `parallel.warn_s` it prints the slow operation once, with which ranks of this node
//!   have not arrived (the node board, `comm::board`);
//! - past the phase's budget (`parallel.timeout_s` in training, `eval_timeout_s` during
//!   evaluation, `checkpoint_timeout_s` while checkpointing, so a long evaluation does not look
//!   like a hang) it prints the operation, its sequence number, the ranks that have not arrived
//!   as far as this node can see, writes the flight record and aborts the job (MPI_Abort) after
//!   a short grace in which the other ranks' watchdogs write theirs;
//! - a rank that has not communicated for the phase's budget while outside MPI (stalled in
//!   compute, I/O or a deadlock of its own) writes its flight record and says so once: its peers'
//!   watchdogs abort the job.

use crate::diag::flight::Record;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the rank is doing, for the budget that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the first step: only waits are watched (loading data has no budget).
    StartUp,
    Train,
    Evaluate,
    Checkpoint,
    /// After training: writing results (no stall check).
    Finish,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::StartUp => "start-up",
            Phase::Train => "training",
            Phase::Evaluate => "evaluation",
            Phase::Checkpoint => "checkpoint",
            Phase::Finish => "writing results",
        }
    }
}

/// Seconds each phase may wait, and the warning threshold.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub train_s: f64,
    pub eval_s: f64,
    pub checkpoint_s: f64,
    pub warn_s: f64,
}

impl Budgets {
    fn of(&self, phase: Phase) -> (f64, &'static str) {
        match phase {
            Phase::StartUp | Phase::Train | Phase::Finish => (self.train_s, "parallel.timeout_s"),
            Phase::Evaluate => (self.eval_s, "parallel.eval_timeout_s"),
            Phase::Checkpoint => (self.checkpoint_s, "parallel.checkpoint_timeout_s"),
        }
    }
}

struct Wait {
    record: Record,
    since: Instant,
    warned: bool,
}

struct State {
    wait: Option<Wait>,
    context: String,
    /// When the context last changed (a step starts), and the smoothed seconds between changes:
    /// how long a step takes, for the check mode's deadline.
    context_at: Option<Instant>,
    step_s: f64,
    phase: Phase,
    /// When this rank last completed an operation, and which.
    last_done: Option<(Instant, Record)>,
    stall_reported: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    wait: None,
    context: String::new(),
    context_at: None,
    step_s: 0.0,
    phase: Phase::StartUp,
    last_done: None,
    stall_reported: false,
});

/// In check mode: two ranks of a node waiting in checks of different collectives, named (and
/// whether this rank prints it).
pub type CheckCycle = fn(&Record) -> Option<(String, bool)>;

/// What the watchdog asks of the layer that owns the node board, given to `start`.
#[derive(Debug, Clone, Copy)]
pub struct Hooks {
    /// What the node board shows about the ranks a wait waits for (for the messages).
    pub describe: fn(&Record) -> String,
    /// In check mode: two ranks of this node waiting in checks of different collectives, named
    /// (and whether this rank prints it).
    pub check_cycle: Option<CheckCycle>,
    /// Ends the job (MPI_Abort) with a code.
    pub abort: fn(i32),
}

/// Registers a blocking wait (called by comm's guard).
pub fn waiting(record: Record) {
    if let Ok(mut s) = STATE.lock() {
        s.wait = Some(Wait {
            record,
            since: Instant::now(),
            warned: false,
        });
    }
}

/// The registered wait returned.
pub fn done() {
    if let Ok(mut s) = STATE.lock() {
        if let Some(w) = s.wait.take() {
            s.last_done = Some((Instant::now(), w.record));
        }
        s.stall_reported = false;
    }
}

/// Where training is (e.g. `epoch 2 step 17`), for the messages.
pub fn set_context(context: String) {
    if let Ok(mut s) = STATE.lock() {
        s.context = context;
        let now = Instant::now();
        if let Some(then) = s.context_at.replace(now) {
            let dt = now.duration_since(then).as_secs_f64();
            s.step_s = if s.step_s == 0.0 {
                dt
            } else {
                0.8 * s.step_s + 0.2 * dt
            };
        }
    }
}

/// In check mode, how long a rank may wait in a collective's check: every rank reaches each check
/// within a step of the others in a healthy run, so 20 steps (at least 5 s, for a slow
/// checkpoint write) without the others arriving means a rank is in another collective. On one
/// node the node board sees that at once; across nodes this deadline finds it (it used to wait for
/// parallel.warn_s).
pub fn check_deadline_s(step_s: f64) -> f64 {
    (20.0 * step_s).max(5.0)
}

/// Enters `phase`; its budget applies to the waits from now on (and restarts the stall clock).
pub fn set_phase(phase: Phase) {
    if let Ok(mut s) = STATE.lock() {
        s.phase = phase;
        if let Some((at, _)) = s.last_done.as_mut() {
            *at = Instant::now();
        }
        s.stall_reported = false;
    }
}

/// Runs `f` in `phase`, then returns to the phase before.
pub fn in_phase<R>(phase: Phase, f: impl FnOnce() -> R) -> R {
    let before = STATE.lock().map(|s| s.phase).unwrap_or(Phase::Train);
    set_phase(phase);
    let out = f();
    set_phase(before);
    out
}

/// In check mode, a wait in a collective's check past `check_deadline_s`: the message.
fn check_deadline_passed(
    w: &Wait,
    waited: f64,
    step_s: f64,
    hooks: &Hooks,
    rank: usize,
    at: &str,
) -> Option<String> {
    let in_check = w.record.kind == crate::diag::flight::OpKind::Check;
    if !(in_check && hooks.check_cycle.is_some() && waited > check_deadline_s(step_s)) {
        return None;
    }
    Some(format!(
        "partrain rank {rank}: check mode: {waited:.1} s in {} at {at}, while steps take {:.0} ms: another rank of \
         the communicator is in a different collective (a skipped or reordered collective){}; aborting the job",
        w.record.describe(),
        1e3 * step_s,
        (hooks.describe)(&w.record)
    ))
}

/// What to do after a check.
enum Verdict {
    Fine,
    Warn(String),
    Abort(String),
    Stalled(String),
    /// Check mode found two ranks in checks of different collectives.
    Mismatch(String, bool),
}

fn check(s: &mut State, rank: usize, b: &Budgets, hooks: &Hooks) -> Verdict {
    let (limit, key) = b.of(s.phase);
    let at = if s.context.is_empty() {
        s.phase.name().to_string()
    } else {
        s.context.clone()
    };
    if let Some(w) = s.wait.as_mut() {
        let waited = w.since.elapsed().as_secs_f64();
        // Check mode: a wait cycle between two collectives is certain after a moment.
        if let Some(cycle) = hooks.check_cycle.filter(|_| waited > 0.3) {
            if let Some((msg, prints)) = cycle(&w.record) {
                return Verdict::Mismatch(msg, prints);
            }
        }
        if let Some(msg) = check_deadline_passed(w, waited, s.step_s, hooks, rank, &at) {
            return Verdict::Mismatch(msg, true);
        }
        if waited > limit {
            let who = (hooks.describe)(&w.record);
            return Verdict::Abort(format!(
                "partrain rank {rank}: error: no progress for {waited:.0} s in {} at {at} ({key} = {limit}){who}; \
                 aborting the job",
                w.record.describe()
            ));
        }
        if waited > b.warn_s && !w.warned {
            w.warned = true;
            let who = (hooks.describe)(&w.record);
            return Verdict::Warn(format!(
                "partrain rank {rank}: warning: {} has waited {waited:.0} s at {at} (parallel.warn_s = {}){who}",
                w.record.describe(),
                b.warn_s
            ));
        }
        return Verdict::Fine;
    }
    match (&s.last_done, s.phase) {
        (Some((when, rec)), Phase::Train | Phase::Evaluate | Phase::Checkpoint)
            if !s.stall_reported && when.elapsed().as_secs_f64() > limit =>
        {
            s.stall_reported = true;
            Verdict::Stalled(format!(
                "partrain rank {rank}: stalled: no communication for {:.0} s at {at} ({key} = {limit}): this rank is \
                 outside MPI since it completed {} (computing far longer than a step, or stalled)",
                when.elapsed().as_secs_f64(),
                rec.describe()
            ))
        }
        _ => Verdict::Fine,
    }
}

/// Starts the watchdog thread: `hooks.abort` is called once a wait exceeds its phase's budget.
pub fn start(budgets: Budgets, rank: usize, hooks: Hooks) {
    let abort = hooks.abort;
    let tick = Duration::from_secs_f64((budgets.warn_s.min(budgets.train_s) / 4.0).clamp(0.05, 0.2));
    std::thread::Builder::new()
        .name("partrain-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            let verdict = match STATE.lock() {
                Ok(mut s) => check(&mut s, rank, &budgets, &hooks),
                Err(_) => Verdict::Fine,
            };
            match verdict {
                Verdict::Fine => {}
                Verdict::Warn(msg) => eprintln!("{msg}"),
                Verdict::Stalled(msg) => {
                    eprintln!("{msg}");
                    if let Some(p) = crate::diag::flight::dump(&msg) {
                        eprintln!("partrain rank {rank}: flight record written to {}", p.display());
                    }
                }
                Verdict::Mismatch(msg, prints) => {
                    crate::diag::flight::dump(&msg);
                    if prints {
                        eprintln!("{msg}");
                    } else {
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    abort(4);
                }
                Verdict::Abort(msg) => {
                    eprintln!("{msg}");
                    if let Some(p) = crate::diag::flight::dump(&msg) {
                        eprintln!("partrain rank {rank}: flight record written to {}", p.display());
                    }
                    // The other ranks waiting in the same operation fire within moments: give
                    // them the time to write their records before the abort ends them.
                    std::thread::sleep(Duration::from_secs_f64((budgets.train_s / 4.0).clamp(0.2, 2.0)));
                    abort(3);
                }
            }
        })
        .expect("spawn watchdog thread");
}
