//! `PARTRAIN_DEBUG=collectives`: before every collective the ranks of its communicator exchange
//! a descriptor (kind, sequence number, element count, type, training step) and compare; before
//! every message the sender sends one to the receiver, which compares it with what it expects.
//! The first disagreement stops the job at once with both sides named, instead of a hang or of
//! silently mismatched data (a skipped collective pairs one rank's step N with another's N+1).
//! Off by default: it adds an all-gather per collective and a small message per message.

use super::{abort_world, board::comm_hash, Comm, Tag};
use crate::diag::flight::{self, Op, OpKind};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

const TYPES: [&str; 9] = ["f32", "f64", "u64", "u8", "i64", "i32", "usize", "()", "requests"];

/// (kind, sequence number, element count, type, step) as exchanged.
type Descriptor = [u64; 5];

fn descriptor(kind: OpKind, seq: u64, count: usize, dtype: &str) -> Descriptor {
    [kind.code(), seq, count as u64, comm_hash(dtype), flight::step()]
}

fn describe(d: &Descriptor) -> String {
    let kind = OpKind::from_code(d[0]).map_or("an unknown operation", |k| k.name());
    let dtype = TYPES
        .iter()
        .find(|t| comm_hash(t) == d[3])
        .copied()
        .unwrap_or("?");
    format!(
        "{kind} #{} ({} {dtype}) at step {}",
        d[1],
        crate::util::format::number(d[2] as f64, 1.0),
        d[4]
    )
}

/// Writes the flight record and ends the job; `first` says this rank prints first (the others
/// wait a moment so that its message is not cut off by their abort).
fn stop(msg: &str, first: bool) -> ! {
    if first {
        eprintln!("{msg}");
    }
    flight::dump(msg);
    if !first {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    abort_world(4);
    unreachable!("MPI_Abort returned")
}

/// `Comm::check_collective` on a raw communicator named `name` (the node-shared averaging's).
pub(super) fn check_collective_on(
    comm: &SimpleCommunicator,
    name: &str,
    kind: OpKind,
    seq: u64,
    count: usize,
    dtype: &str,
) {
    let size = comm.size() as usize;
    let mine = descriptor(kind, seq, count, dtype);
    let mut all = vec![[0u64; 5]; size];
    {
        let op = Op {
            kind: OpKind::Check,
            comm: name,
            seq,
            peer: None,
            count: 5,
            dtype: "u64",
        };
        let _op = super::guard::enter(op, || {}, crate::diag::trace::Span::none());
        comm.all_gather_into(&mine[..], all.as_flattened_mut());
    }
    let differ: Vec<usize> = (0..size).filter(|&r| all[r] != all[0]).collect();
    if differ.is_empty() {
        return;
    }
    let world = flight::members(name).unwrap_or_default();
    let mut msg = format!(
        "partrain: PARTRAIN_DEBUG=collectives: the ranks of {name} disagree on their next collective:"
    );
    for (r, d) in all.iter().enumerate() {
        let mark = if differ.contains(&r) {
            "   <- differs from rank 0"
        } else {
            ""
        };
        let w = world
            .get(r)
            .map_or(String::new(), |w| format!(" (world rank {w})"));
        msg += &format!("\n  rank {r}{w}: {}{mark}", describe(d));
    }
    msg += "\nstopping the job";
    stop(&msg, comm.rank() == 0);
}

impl Comm {
    /// Compares this collective's descriptor with every rank of the communicator's.
    pub(super) fn check_collective(&self, kind: OpKind, seq: u64, count: usize, dtype: &str) {
        if let super::Inner::Mpi { comm, .. } = &self.inner {
            check_collective_on(comm, &self.name, kind, seq, count, dtype);
        }
    }

    /// The sender's half of a message check: its descriptor, ahead of the message.
    pub(super) fn send_descriptor(
        &self,
        comm: &SimpleCommunicator,
        dest: usize,
        seq: u64,
        count: usize,
        dtype: &str,
    ) {
        let d = descriptor(OpKind::Send, seq, count, dtype);
        // A 40-byte message: sent eagerly by every MPI, so this blocking send does not wait for
        // the receiver even when both neighbours send before they receive.
        comm.process_at_rank(dest as i32)
            .send_with_tag(&d[..], Tag::Check.value());
    }

    /// The receiver's half: the sender's descriptor must be the send matching this receive.
    pub(super) fn check_message(
        &self,
        comm: &SimpleCommunicator,
        src: usize,
        seq: u64,
        count: usize,
        dtype: &str,
    ) {
        let mut theirs = [0u64; 5];
        {
            let op = Op {
                kind: OpKind::Check,
                comm: &self.name,
                seq,
                peer: Some(self.world_rank_of(src)),
                count: 5,
                dtype: "u64",
            };
            let _op = super::guard::enter(op, || {}, crate::diag::trace::Span::none());
            comm.process_at_rank(src as i32)
                .receive_into_with_tag(&mut theirs[..], Tag::Check.value());
        }
        let expected = descriptor(OpKind::Send, seq, count, dtype);
        if theirs != expected {
            let mine = descriptor(OpKind::Recv, seq, count, dtype);
            let msg = format!(
                "partrain: PARTRAIN_DEBUG=collectives: rank {} (world rank {}) posted {} from rank {}, \
                 but rank {} (world rank {}) sent {}; stopping the job",
                self.rank,
                self.world_rank,
                describe(&mine),
                src,
                src,
                self.world_rank_of(src),
                describe(&theirs)
            );
            stop(&msg, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_read_as_operations() {
        let d = [OpKind::AllReduce.code(), 57, 421_642, comm_hash("f32"), 6];
        assert_eq!(describe(&d), "all-reduce #57 (421,642 f32) at step 6");
    }
}
