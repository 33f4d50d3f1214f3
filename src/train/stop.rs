//! Signals: Slurm's time limit and requests for the flight record.
//!
//! - SIGUSR1 (Slurm's `--signal=USR1@<seconds>` before the time limit) and SIGTERM (the limit
//!   itself, or `scancel`): the ranks agree, at the next step boundary, to stop; they write a
//!   checkpoint and exit with `REQUEUE_EXIT`, which the job scripts turn into `scontrol requeue`;
//!   the requeued job's `--auto-resume` continues from the checkpoint. After SIGTERM a rank that
//!   has not exited within `PARTRAIN_TERM_GRACE_S` (20 s; Slurm's KillWait is 30 s) exits anyway.
//! - SIGUSR2: every rank writes its flight record (`flight::dump`) and carries on.
//!
//! The handlers only set a flag and wake a thread (signal-hook); everything else happens there
//! or in the training loop.

use std::sync::atomic::{AtomicI32, Ordering};

/// The exit code of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL).
pub const REQUEUE_EXIT: u8 = 75;

static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal that asked this rank to stop, if any.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Seconds a rank may take to stop after SIGTERM before it exits without its checkpoint.
fn term_grace() -> f64 {
    std::env::var("PARTRAIN_TERM_GRACE_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(20.0)
}

/// Installs the handlers (first thing in `main`, so that an early signal is not fatal).
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals = signal_hook::iterator::Signals::new([SIGUSR1, SIGUSR2, SIGTERM])?;
    std::thread::Builder::new()
        .name("partrain-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                on_signal(sig);
            }
        })?;
    Ok(())
}

fn on_signal(sig: i32) {
    let who = format!("partrain (pid {})", std::process::id());
    if sig == libc::SIGUSR2 {
        match crate::diag::flight::dump("on request (SIGUSR2)") {
            Some(p) => eprintln!("{who}: SIGUSR2: flight record written to {}", p.display()),
            None => eprintln!("{who}: SIGUSR2: no run folder yet, no flight record"),
        }
        return;
    }
    let first = SIGNAL
        .compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok();
    if first && sig == libc::SIGTERM && crate::diag::flight::dumped() {
        // After this rank's own failure report, SIGTERM is mpirun tearing the aborted job down.
        eprintln!("{who}: SIGTERM after the failure reported above: exiting");
    } else if first {
        eprintln!(
            "{who}: {}: stopping at the next step boundary: checkpoint, then exit {REQUEUE_EXIT} (requeue){}",
            signal_name(sig),
            // mpirun also sends SIGTERM to every rank of a job that one rank aborted.
            if sig == libc::SIGTERM {
                ", unless the job is being torn down after an abort"
            } else {
                ""
            }
        );
    }
    if sig == libc::SIGTERM {
        crate::diag::flight::dump("SIGTERM");
        let grace = term_grace();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs_f64(grace));
            eprintln!("{who}: still running {grace} s after SIGTERM (blocked in a wait?): exiting without a checkpoint");
            std::process::exit(143);
        });
    }
}
