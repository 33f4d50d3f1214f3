//! The one instrumented path of every MPI operation: collectives, messages, the shared-memory
//! barriers, the all-reduce of node sums and the overlapped all-reduces all start here. In order:
//! the check mode's descriptor exchange (`PARTRAIN_DEBUG=collectives`), the flight record, and on
//! the main thread the node board's "in" slot and the watchdog's deadline; the operation's trace
//! span closes with the guard. When the guard drops, the record is completed, the watchdog lets go
//! and the board shows the operation as this rank's last completed one. The recorders (`diag`)
//! know nothing of this: they are called.

use crate::diag::flight::{self, Op, OpKind};
use crate::diag::{trace, watchdog};

/// An operation in progress, from `enter` until dropped.
pub(crate) struct Guard {
    id: u64,
    /// Watched and published: every operation but the overlapping thread's own all-reduces
    /// (the main thread waits for those in `OverlappedWait`, which is watched).
    main_thread: bool,
    _span: trace::Span,
}

/// Starts `op`. In check mode `check` runs first (an exchange that is itself an operation, entered
/// with no check of its own); `span` is the operation's trace span.
pub(crate) fn enter(op: Op<'_>, check: impl FnOnce(), span: trace::Span) -> Guard {
    if super::debug::enabled() {
        check();
    }
    let main_thread = op.kind != OpKind::OverlappedAllReduce;
    let (id, record) = flight::enter(op);
    if main_thread {
        super::board::enter(&record);
        watchdog::waiting(record);
    }
    Guard {
        id,
        main_thread,
        _span: span,
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let done = flight::complete(self.id);
        if self.main_thread {
            watchdog::done();
            if let Some(record) = done {
                super::board::leave(&record);
            }
        }
    }
}

/// Starts a non-blocking operation (an Isend): checked and recorded, not waited for here; its
/// completion is `completed(id)` once its request has been waited for (inside a guarded wait).
pub(crate) fn started(op: Op<'_>, check: impl FnOnce()) -> u64 {
    if super::debug::enabled() {
        check();
    }
    flight::note(op)
}

pub(crate) fn completed(id: u64) {
    flight::complete_noted(id);
}

/// What the watchdog asks of comm: the node board's view of a wait, the check mode's cycles, the abort.
pub(crate) fn watchdog_hooks() -> watchdog::Hooks {
    watchdog::Hooks {
        describe: super::board::describe,
        check_cycle: super::debug::enabled().then_some(super::board::check_cycle as watchdog::CheckCycle),
        abort: super::abort_world,
    }
}
