//! Start-up errors every rank reaches at the same point (a refused config or layout, missing
//! data): the ranks agree on them with one collective, so the job ends on every rank with the
//! same exit code, one message (rank 0's, and a rank's own only when it differs) and no
//! MPI_Abort. Errors that only some ranks see later still abort the job (the others could be
//! waiting in a collective that never returns).

use crate::comm::Comm;
use anyhow::Result;

/// A start-up failure the ranks agreed on.
#[derive(Debug)]
pub struct AgreedFailure {
    pub message: String,
    /// Whether this rank prints `message` (rank 0, and a rank whose own error differs).
    pub print: bool,
}

impl std::fmt::Display for AgreedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AgreedFailure {}

/// `result` on every rank, agreed (collective over `world`): all succeeded, or every rank returns
/// an `AgreedFailure`.
pub fn agree<T>(world: &Comm, result: Result<T>) -> Result<T> {
    let text = result.as_ref().err().map(|e| format!("{e:#}"));
    let mine = text
        .as_deref()
        .map_or(0, |t| crate::util::fnv1a(t.as_bytes()) | 1);
    let all = crate::diag::flight::labelled("start-up agreement", || world.all_gather(mine));
    let failed: Vec<usize> = (0..all.len()).filter(|&r| all[r] != 0).collect();
    if failed.is_empty() {
        return result;
    }
    let (rank, first) = (world.rank(), all[0]);
    let own = mine != 0 && mine != first;
    let message = match &text {
        // A rank's own message, when rank 0's differs, says whose it is.
        Some(t) if own && rank != 0 => format!("rank {rank}: {t}"),
        Some(t) => t.clone(),
        None => format!("rank(s) {failed:?} failed at start-up (each prints its own message)"),
    };
    let print = rank == 0 || own;
    Err(AgreedFailure { message, print }.into())
}
