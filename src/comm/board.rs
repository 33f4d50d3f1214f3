//! The node board: a node-shared window (MPI-3) with one slot per rank of the node, where every
//! rank publishes the operation it is blocked in (kind, communicator, sequence number, peer,
//! since when) and the last one it completed. A rank whose wait runs long reads its node's
//! slots and can say which of the ranks it waits for have not arrived, and where they are
//! instead. Ranks on other nodes are not visible here: their flight records are (`doctor`).
//!
//! Only the owner writes a slot, anyone reads it, all through atomics: a torn read across two
//! fields can mix two operations, which a diagnostic message tolerates.

use super::raw::mpi_ok;
use crate::diag::flight::{OpKind, Record};
use mpi::ffi;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

const SLOT: usize = 16;
const WORLD_RANK: usize = 0; // world rank + 1; 0 = not written yet
const INSIDE: usize = 1;
const KIND: usize = 2;
const COMM: usize = 3;
const SEQ: usize = 4;
const PEER: usize = 5; // peer + 1; 0 = none
const SINCE: usize = 6; // f64 bits, unix microseconds
const LAST_KIND: usize = 7;
const LAST_COMM: usize = 8;
const LAST_SEQ: usize = 9;
const LAST_PEER: usize = 10;
const LAST_END: usize = 11;
const STEP: usize = 12;

/// The slots of this node, as this process sees them.
struct View {
    slots: Vec<*const AtomicU64>,
    mine: usize,
}

// SAFETY: the pointers point into the board's shared window, which `Board::drop` frees only
// after taking the write lock and clearing the view; every access is an atomic load or store.
unsafe impl Send for View {}
unsafe impl Sync for View {}

static VIEW: RwLock<Option<View>> = RwLock::new(None);

impl View {
    fn field(&self, slot: usize, f: usize) -> &AtomicU64 {
        // SAFETY: every slot holds SLOT u64s, f < SLOT, and the window lives while the view does.
        unsafe { &*self.slots[slot].add(f) }
    }
    fn get(&self, slot: usize, f: usize) -> u64 {
        self.field(slot, f).load(Ordering::Acquire)
    }
    fn set(&self, f: usize, v: u64) {
        self.field(self.mine, f).store(v, Ordering::Release)
    }
}

/// The window behind the board; freed (collectively, on every rank of the node) when dropped.
pub struct Board {
    win: ffi::MPI_Win,
}

impl Board {
    /// Collective over `node` (ranks sharing one node); `world_rank` is this rank's.
    pub(super) fn new(node: &SimpleCommunicator, world_rank: usize) -> Board {
        let (win, bases) = super::raw::allocate_shared::<u64>(node, SLOT, "node board");
        let slots = bases.into_iter().map(|p| p as *const AtomicU64).collect();
        let view = View {
            slots,
            mine: node.rank() as usize,
        };
        view.set(WORLD_RANK, world_rank as u64 + 1);
        if let Ok(mut v) = VIEW.write() {
            *v = Some(view);
        }
        // Every slot is zeroed and named before anyone reads it.
        node.barrier();
        Board { win }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        if let Ok(mut v) = VIEW.write() {
            *v = None;
        }
        // SAFETY: no view points into the window any more (cleared above, under the lock every
        // reader holds); every rank of the node drops its world communicator at the same point.
        unsafe { mpi_ok(ffi::MPI_Win_free(&mut self.win), "MPI_Win_free (node board)") };
    }
}

/// FNV-1a of a communicator's name: how the board names communicators.
pub fn comm_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Publishes that this rank entered `r`.
pub fn enter(r: &Record) {
    let Ok(guard) = VIEW.read() else { return };
    let Some(v) = guard.as_ref() else { return };
    v.set(KIND, r.kind.code());
    v.set(COMM, comm_hash(&r.comm));
    v.set(SEQ, r.seq);
    v.set(PEER, r.peer.map_or(0, |p| p as u64 + 1));
    v.set(SINCE, r.start_us.to_bits());
    v.set(STEP, r.step);
    v.set(INSIDE, 1);
}

/// Publishes that this rank completed `r`.
pub fn leave(r: &Record) {
    let Ok(guard) = VIEW.read() else { return };
    let Some(v) = guard.as_ref() else { return };
    v.set(INSIDE, 0);
    v.set(LAST_KIND, r.kind.code());
    v.set(LAST_COMM, comm_hash(&r.comm));
    v.set(LAST_SEQ, r.seq);
    v.set(LAST_PEER, r.peer.map_or(0, |p| p as u64 + 1));
    v.set(LAST_END, r.end_us.unwrap_or(r.start_us).to_bits());
}

/// An operation as another rank's slot shows it.
fn op_text(kind: u64, comm: u64, seq: u64, peer: u64) -> String {
    let kind = OpKind::from_code(kind);
    let name = kind.map_or("an operation", |k| k.name());
    match (kind, peer) {
        (Some(OpKind::Send), p) if p > 0 => format!("{name} #{seq} to rank {}", p - 1),
        (_, p) if p > 0 => format!("{name} #{seq} from rank {}", p - 1),
        _ => format!("{name} #{seq} on {}", comm_name(comm)),
    }
}

fn comm_name(hash: u64) -> String {
    crate::diag::flight::comm_names()
        .into_iter()
        .find(|n| comm_hash(n) == hash)
        .unwrap_or_else(|| "a communicator of other ranks".into())
}

/// In check mode, a rank waiting in a collective check `r` and a rank of its node it waits for
/// that is itself in a check of another collective, on a communicator this rank also belongs
/// to, wait for each other for ever: the message naming both, if so, and whether this rank is
/// the one to print it.
pub fn check_cycle(r: &Record) -> Option<(String, bool)> {
    if r.kind != OpKind::Check || r.peer.is_some() {
        return None;
    }
    let guard = VIEW.read().ok()?;
    let v = guard.as_ref()?;
    let me = v.get(v.mine, WORLD_RANK).checked_sub(1)? as usize;
    let mine = crate::diag::flight::comm_names();
    for rank in crate::diag::flight::members(&r.comm)?
        .into_iter()
        .filter(|&x| x != me)
    {
        let Some(slot) = (0..v.slots.len()).find(|&s| v.get(s, WORLD_RANK) == rank as u64 + 1) else {
            continue;
        };
        let (comm, seq) = (v.get(slot, COMM), v.get(slot, SEQ));
        let other_check = v.get(slot, INSIDE) == 1 && v.get(slot, KIND) == OpKind::Check.code();
        let shared = mine.iter().any(|n| comm_hash(n) == comm);
        if other_check && shared && (comm != comm_hash(&r.comm) || seq != r.seq) {
            let msg = format!(
                "partrain: PARTRAIN_DEBUG=collectives: rank {me} entered the check of collective #{} on {} at step {}, \
                 but rank {rank} is in the check of collective #{seq} on {} at step {}: each waits for the other \
                 (a collective skipped or reordered); stopping the job",
                r.seq,
                r.comm,
                r.step,
                comm_name(comm),
                v.get(slot, STEP)
            );
            // Both ranks see the cycle: the lower one prints it.
            return Some((msg, me < rank));
        }
    }
    None
}

/// The ranks `r` waits for, as far as this node's board shows them: `; not arrived: ...;
/// arrived: ...; not visible here: ...` (empty without a board).
pub fn describe(r: &Record) -> String {
    let Ok(guard) = VIEW.read() else {
        return String::new();
    };
    let Some(v) = guard.as_ref() else {
        return String::new();
    };
    let me = v.get(v.mine, WORLD_RANK).saturating_sub(1) as usize;
    let waited_for: Vec<usize> = match r.peer {
        Some(p) => vec![p],
        None => crate::diag::flight::members(&r.comm)
            .unwrap_or_default()
            .into_iter()
            .filter(|&x| x != me)
            .collect(),
    };
    let (mut missing, mut arrived, mut elsewhere) = (Vec::new(), Vec::new(), Vec::new());
    for rank in waited_for {
        match (0..v.slots.len()).find(|&s| v.get(s, WORLD_RANK) == rank as u64 + 1) {
            None => elsewhere.push(rank.to_string()),
            Some(slot) if v.waits_in_same(slot, r) => arrived.push(rank.to_string()),
            Some(slot) => missing.push(format!("rank {rank} (this node: {})", v.whereabouts(slot))),
        }
    }
    let mut out = String::new();
    if !missing.is_empty() {
        let head = if r.peer.is_some() {
            "the peer"
        } else {
            "not arrived"
        };
        out += &format!("; {head}: {}", missing.join(", "));
    }
    if !arrived.is_empty() {
        out += &format!("; arrived: rank(s) {}", arrived.join(", "));
    }
    if !elsewhere.is_empty() {
        out += &format!(
            "; rank(s) {} on other nodes: not visible from here (their flight records: partrain doctor RUN_DIR)",
            elsewhere.join(", ")
        );
    }
    out
}

impl View {
    /// Whether the rank in `slot` is inside the same collective as `r` (a peer of a point-to-point
    /// operation is never counted as arrived: its matching operation has another kind).
    fn waits_in_same(&self, slot: usize, r: &Record) -> bool {
        self.get(slot, INSIDE) == 1
            && r.peer.is_none()
            && self.get(slot, COMM) == comm_hash(&r.comm)
            && self.get(slot, SEQ) == r.seq
            && self.get(slot, KIND) == r.kind.code()
    }

    /// Where the rank in `slot` is: inside which operation for how long, or outside MPI since which
    /// last completed operation.
    fn whereabouts(&self, slot: usize) -> String {
        let now = crate::diag::flight::unix_us();
        let op = |kind, comm, seq, peer| {
            op_text(
                self.get(slot, kind),
                self.get(slot, comm),
                self.get(slot, seq),
                self.get(slot, peer),
            )
        };
        if self.get(slot, INSIDE) == 1 {
            let since = f64::from_bits(self.get(slot, SINCE));
            return format!(
                "in {} for {:.1} s, at step {}",
                op(KIND, COMM, SEQ, PEER),
                (now - since) / 1e6,
                self.get(slot, STEP)
            );
        }
        let end = f64::from_bits(self.get(slot, LAST_END));
        let last = match self.get(slot, LAST_KIND) {
            0 => "nothing yet".to_string(),
            _ => format!(
                "{} {:.1} s ago",
                op(LAST_KIND, LAST_COMM, LAST_SEQ, LAST_PEER),
                (now - end) / 1e6
            ),
        };
        format!(
            "outside MPI, computing or stalled, at step {}; last completed {last}",
            self.get(slot, STEP)
        )
    }
}
