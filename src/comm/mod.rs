//! The MPI layer: the only module that talks to MPI. `Comm::solo()` is a one-rank stand-in with
//! the same methods, so the serial baseline runs without `mpirun` and without initialising MPI.
//!
//! - `mod.rs`: communicators, collectives (generic over the `mpi` crate's `Equivalence`),
//!   point-to-point messages and the world's shape (which rank sits on which node);
//! - `shared.rs`: node-shared windows and the gradient mean computed in them;
//! - `tags.rs`: every message tag;
//! - `worker.rs`: the all-reduce thread that overlaps averaging with backward.
//!
//! Every blocking call registers what it waits for with the watchdog (`crate::diag::watchdog`), and
//! every raw MPI call's return code is checked (`check`).

mod board;
mod check;
mod clock;
mod collectives;
mod debug;
mod guard;
mod messages;
mod pingpong;
mod raw;
mod shared;
mod tags;
mod worker;
mod world;

pub use messages::AsyncSends;
pub use shared::NodeMean;
pub use tags::{Tag, GUARANTEED_TAG_UB};
pub use worker::ReduceWorker;
pub use world::{launched_as_one_of_several, WorldFacts, WorldShape};

use crate::diag::flight::{self, Op, OpKind};
use crate::diag::trace;
use anyhow::Result;
use mpi::ffi;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub use board::comm_hash;
pub use debug::debug_words;
pub use pingpong::{emulated_link, Link};
pub use raw::abort_world;
use raw::mpi_ok;

enum Inner {
    Solo,
    Mpi {
        // MPI is finalised when the last holder of the universe drops it, so sub-communicators
        // keep it alive too (freeing a communicator after MPI_Finalize is an error).
        universe: Rc<mpi::environment::Universe>,
        comm: SimpleCommunicator,
    },
}

pub struct Comm {
    inner: Inner,
    rank: usize,
    size: usize,
    /// This process's rank in the world communicator.
    world_rank: usize,
    /// Its name in flight records and messages (`world`, `world/stage0.replicas`, ...).
    name: String,
    /// Collectives started on it so far (their sequence numbers).
    seq: Cell<u64>,
    /// Messages so far per (peer's rank here, is a send).
    messages: RefCell<HashMap<(usize, bool), u64>>,
    /// The node board, on the world communicator once the watchdog runs.
    board: RefCell<Option<board::Board>>,
}

impl Drop for Comm {
    fn drop(&mut self) {
        // The board's window is freed before the communicator (and maybe MPI) goes.
        self.board.borrow_mut().take();
    }
}

impl Comm {
    pub fn solo() -> Comm {
        Comm::new(Inner::Solo, 0, 1, 0, "solo".into())
    }

    fn new(inner: Inner, rank: usize, size: usize, world_rank: usize, name: String) -> Comm {
        Comm {
            inner,
            rank,
            size,
            world_rank,
            name,
            seq: Cell::new(0),
            messages: RefCell::new(HashMap::new()),
            board: RefCell::new(None),
        }
    }

    /// Initialises MPI (a binary started without mpirun becomes a one-rank MPI job).
    pub fn init_mpi() -> Result<Comm> {
        // Multiple: the watchdog thread may call MPI_Abort while the main thread waits in MPI.
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Multiple)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        flight::register_comm("world", (0..size).collect());
        let inner = Inner::Mpi {
            universe: Rc::new(universe),
            comm,
        };
        Ok(Comm::new(inner, rank, size, rank, "world".into()))
    }

    /// A sub-communicator named `name`; its members' world ranks are registered for the flight
    /// records (collective over `sub`).
    fn wrap(&self, sub: SimpleCommunicator, name: String) -> Comm {
        let Inner::Mpi { universe, .. } = &self.inner else {
            unreachable!("sub-communicators come from MPI communicators")
        };
        let (rank, size) = (sub.rank() as usize, sub.size() as usize);
        flight::register_comm(&name, world_ranks(&sub, self.world_rank));
        let inner = Inner::Mpi {
            universe: universe.clone(),
            comm: sub,
        };
        Comm::new(inner, rank, size, self.world_rank, name)
    }

    /// MPI_Comm_split: ranks passing the same `color` form one sub-communicator, ordered by `key`.
    /// Collective over this communicator.
    pub fn split(&self, color: usize, key: usize) -> Comm {
        self.split_as(color, key, format!("{}/split{color}", self.name))
    }

    /// `split`, naming the sub-communicator (the same name on all its ranks, another for each
    /// color).
    pub fn split_as(&self, color: usize, key: usize, name: String) -> Comm {
        match &self.inner {
            Inner::Solo => Comm::solo(),
            Inner::Mpi { comm, .. } => self.wrap(
                comm.split_by_color_with_key(Color::with_value(color as i32), key as i32)
                    .expect("a non-negative color always yields a communicator"),
                name,
            ),
        }
    }

    /// The ranks of this communicator that share this node (MPI_Comm_split_type SHARED).
    /// Collective.
    pub fn node_local(&self) -> Comm {
        match &self.inner {
            Inner::Solo => Comm::solo(),
            Inner::Mpi { comm, .. } => {
                let sub = comm.split_shared(self.rank as i32);
                let leader = world_ranks(&sub, self.world_rank).into_iter().min().unwrap_or(0);
                self.wrap(sub, format!("{}/node{leader}", self.name))
            }
        }
    }

    /// The next sequence number of a collective on this communicator.
    fn next_seq(&self) -> u64 {
        self.seq.set(self.seq.get() + 1);
        self.seq.get()
    }

    /// Starts a collective on this communicator (its next sequence number) through the one
    /// instrumented path; in check mode its descriptor is compared across the ranks first.
    fn collective<T>(&self, kind: OpKind, count: usize) -> guard::Guard {
        let seq = self.next_seq();
        let dtype = flight::dtype_name::<T>();
        let op = Op {
            kind,
            comm: &self.name,
            seq,
            peer: None,
            count,
            dtype,
        };
        guard::enter(
            op,
            || self.check_collective(kind, seq, count, dtype),
            trace::Span::none(),
        )
    }

    /// Starts a blocking message to or from `peer` (a rank of this communicator) through the one
    /// instrumented path; in check mode the sender's descriptor travels first.
    fn message<T>(&self, kind: OpKind, peer: usize, tag: Tag, count: usize) -> guard::Guard {
        let seq = self.next_message(peer, kind == OpKind::Send);
        let dtype = flight::dtype_name::<T>();
        let op = Op {
            kind,
            comm: &self.name,
            seq,
            peer: Some(self.world_rank_of(peer)),
            count,
            dtype,
        };
        let Inner::Mpi { comm, .. } = &self.inner else {
            panic!("a message on a one-rank communicator")
        };
        let check = || match kind {
            OpKind::Send => self.send_descriptor(comm, peer, seq, count, dtype),
            _ => self.check_message(comm, peer, seq, count, dtype),
        };
        let name = if kind == OpKind::Send { "send" } else { "recv" };
        let span = messages::message_span(name, peer, tag, count * std::mem::size_of::<T>());
        guard::enter(op, check, span)
    }

    fn next_message(&self, peer: usize, send: bool) -> u64 {
        let mut m = self.messages.borrow_mut();
        let n = m.entry((peer, send)).or_insert(0);
        *n += 1;
        *n
    }

    /// The world rank of rank `r` of this communicator.
    fn world_rank_of(&self, r: usize) -> usize {
        flight::members(&self.name)
            .and_then(|m| m.get(r).copied())
            .unwrap_or(r)
    }

    /// The largest message tag this communicator accepts (MPI_TAG_UB; at least 32,767).
    pub fn tag_ub(&self) -> i64 {
        let Inner::Mpi { comm, .. } = &self.inner else {
            return i32::MAX as i64;
        };
        let mut value: *mut std::ffi::c_int = std::ptr::null_mut();
        let mut flag: std::ffi::c_int = 0;
        // SAFETY: MPI_TAG_UB is a predefined attribute of every communicator; MPI stores a pointer
        // to its int value in `value` (an out-parameter) and sets `flag`.
        unsafe {
            mpi_ok(
                ffi::MPI_Comm_get_attr(
                    mpi::raw::AsRaw::as_raw(comm),
                    ffi::MPI_TAG_UB as std::ffi::c_int,
                    &mut value as *mut *mut std::ffi::c_int as *mut std::ffi::c_void,
                    &mut flag,
                ),
                "MPI_Comm_get_attr(MPI_TAG_UB)",
            );
            if flag != 0 && !value.is_null() {
                *value as i64
            } else {
                GUARANTEED_TAG_UB
            }
        }
    }

    /// Gives every blocking MPI call of this process a deadline (see `watchdog`) and sets up the
    /// node board it reads. Collective over the world communicator.
    pub fn start_watchdog(&self, budgets: crate::diag::watchdog::Budgets) {
        if let Inner::Mpi { comm, .. } = &self.inner {
            let node = comm.split_shared(self.rank as i32);
            *self.board.borrow_mut() = Some(board::Board::new(&node, self.world_rank));
            crate::diag::watchdog::start(budgets, self.rank, guard::watchdog_hooks());
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Ends every rank of the job (MPI_Abort) with `code`; in a solo run, exits the process.
    pub fn abort(&self, code: i32) -> ! {
        match &self.inner {
            Inner::Solo => std::process::exit(code),
            Inner::Mpi { comm, .. } => comm.abort(code),
        }
    }

    /// Gradient averaging through node-shared memory over this communicator, `n` f32 per rank.
    /// With `across_nodes`, its ranks may span nodes (each with the same number of them): the
    /// node sums are all-reduced across nodes slice by slice (two levels); without, its ranks
    /// must all share one node. Collective.
    pub fn node_mean(&self, n: usize, across_nodes: bool) -> Rc<NodeMean> {
        let Inner::Mpi { comm, .. } = &self.inner else {
            panic!("node_mean on a one-rank communicator")
        };
        let node = comm.split_shared(self.rank as i32);
        let node_members = world_ranks(&node, self.world_rank);
        let leader = node_members.iter().min().copied().unwrap_or(0);
        let node_name = format!("{}/node{leader}", self.name);
        flight::register_comm(&node_name, node_members);
        let across = if across_nodes {
            // The ranks holding the same slice on every node: same local rank, ordered by node.
            let local_rank = node.rank();
            let cross = comm
                .split_by_color_with_key(Color::with_value(local_rank), self.rank as i32)
                .expect("a non-negative color always yields a communicator");
            let name = format!("{}/slice{local_rank}", self.name);
            flight::register_comm(&name, world_ranks(&cross, self.world_rank));
            Some((cross, self.size, name))
        } else {
            assert_eq!(
                node.size() as usize,
                self.size,
                "the plan chose one-node shared-memory averaging for ranks on several nodes"
            );
            None
        };
        Rc::new(NodeMean::new(node, node_name, n, across))
    }
}

/// The world ranks of `comm`'s ranks, in its rank order (collective over `comm`; no flight record).
fn world_ranks(comm: &SimpleCommunicator, world_rank: usize) -> Vec<usize> {
    let mut out = vec![0u64; comm.size() as usize];
    comm.all_gather_into(&(world_rank as u64), &mut out[..]);
    out.into_iter().map(|r| r as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_shape_counts_nodes() {
        let s = WorldShape::blocks(6, 4);
        assert_eq!(s.node_of_rank, vec![0, 0, 0, 0, 1, 1]);
        assert_eq!((s.nodes(), s.ranks_per_node(), s.local_ranks()), (2, 4, 4));
        assert!(s.on_one_node([0, 3]));
        assert_eq!(s.evenly_spread([0, 1, 4, 5]), Some(2));
        assert_eq!(s.evenly_spread([0, 1, 4]), None);
        assert!(!s.on_one_node([3, 4]));
        assert_eq!(WorldShape::blocks(1, 1).nodes(), 1);
    }
}
