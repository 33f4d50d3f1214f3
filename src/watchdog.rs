//! Deadlines for MPI waits. MPI collectives and receives have no timeout of their own, so a lost
//! or stalled rank would hang every other rank until the job's wall time runs out. Every blocking
//! MPI call in `comm.rs` registers what it waits for; a watchdog thread checks the registration
//! and, once a wait outlasts `parallel.timeout_s`, prints which operation, step and peer it was
//! waiting for and aborts the whole job (MPI_Abort) with a non-zero exit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Wait {
    op: &'static str,
    peer: String,
    since: Instant,
}

struct State {
    wait: Option<Wait>,
    context: String,
}

static STATE: Mutex<State> = Mutex::new(State {
    wait: None,
    context: String::new(),
});

/// Clears the registered wait when the MPI call returns.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut s) = STATE.lock() {
            s.wait = None;
        }
    }
}

/// Registers a blocking wait on `peer` (a rank, or a description of a group).
pub fn waiting(op: &'static str, peer: impl FnOnce() -> String) -> Guard {
    if let Ok(mut s) = STATE.lock() {
        s.wait = Some(Wait {
            op,
            peer: peer(),
            since: Instant::now(),
        });
    }
    Guard
}

/// Where training is (e.g. `epoch 2 step 17`), for the timeout message.
pub fn set_context(context: String) {
    if let Ok(mut s) = STATE.lock() {
        s.context = context;
    }
}

/// Starts the watchdog thread: `abort` is called once a wait exceeds `timeout`.
pub fn start(timeout: Duration, rank: usize, abort: fn(i32)) {
    std::thread::Builder::new()
        .name("partrain-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200).min(timeout / 4));
            let expired =
                STATE.lock().ok().and_then(|s| {
                    s.wait.as_ref().filter(|w| w.since.elapsed() > timeout).map(|w| {
                        format!(
                        "partrain rank {rank}: error: no progress for {:.0} s in {} (waiting for {}) at {}: \
                         a peer rank stalled or died (parallel.timeout_s = {}); aborting the job",
                        w.since.elapsed().as_secs_f64(),
                        w.op,
                        w.peer,
                        if s.context.is_empty() { "start-up" } else { &s.context },
                        timeout.as_secs_f64()
                    )
                    })
                });
            if let Some(msg) = expired {
                eprintln!("{msg}");
                abort(3);
            }
        })
        .expect("spawn watchdog thread");
}
