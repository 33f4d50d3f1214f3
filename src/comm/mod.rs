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
mod debug;
mod guard;
mod raw;
mod shared;
mod tags;
mod worker;

pub use shared::NodeMean;
pub use tags::{Tag, GUARANTEED_TAG_UB};
pub use worker::ReduceWorker;

use crate::diag::flight::{self, Op, OpKind};
use crate::diag::trace;
use anyhow::Result;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::request::{LocalScope, Request};
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

pub use board::comm_hash;
pub use debug::debug_words;
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

/// Where every rank of a communicator runs: `node_of_rank[r]` numbers rank r's node (0, 1, ...
/// in order of each node's lowest rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldShape {
    pub size: usize,
    pub rank: usize,
    pub node_of_rank: Vec<usize>,
}

impl WorldShape {
    /// `size` ranks filled into nodes of `ranks_per_node` in rank order (mpirun's default
    /// by-slot mapping): what `partrain inspect` assumes for a launch it cannot see.
    pub fn blocks(size: usize, ranks_per_node: usize) -> WorldShape {
        let per = ranks_per_node.max(1);
        WorldShape {
            size,
            rank: 0,
            node_of_rank: (0..size).map(|r| r / per).collect(),
        }
    }
    pub fn nodes(&self) -> usize {
        self.node_of_rank.iter().max().map_or(1, |m| m + 1)
    }
    /// Ranks on the busiest node.
    pub fn ranks_per_node(&self) -> usize {
        (0..self.nodes())
            .map(|n| self.node_of_rank.iter().filter(|&&x| x == n).count())
            .max()
            .unwrap_or(1)
    }
    /// Ranks on this rank's node.
    pub fn local_ranks(&self) -> usize {
        let mine = self.node_of_rank[self.rank];
        self.node_of_rank.iter().filter(|&&x| x == mine).count()
    }
    /// How many of `ranks` sit on each node they use, when that is the same on all of them.
    pub fn evenly_spread(&self, ranks: impl IntoIterator<Item = usize>) -> Option<usize> {
        let mut per_node = std::collections::BTreeMap::new();
        for r in ranks {
            *per_node.entry(self.node_of_rank[r]).or_insert(0usize) += 1;
        }
        let mut counts = per_node.values().copied();
        let first = counts.next()?;
        counts.all(|c| c == first).then_some(first)
    }
    /// Whether all of `ranks` sit on one node.
    pub fn on_one_node(&self, ranks: impl IntoIterator<Item = usize>) -> bool {
        let mut nodes = ranks.into_iter().map(|r| self.node_of_rank[r]);
        let first = nodes.next();
        nodes.all(|n| Some(n) == first)
    }
}

/// When this process is one of several ranks started by a launcher (Open MPI's mpirun, a PMI
/// launcher such as MPICH's, or Slurm's srun), the launcher's variable and its rank count.
pub fn launched_as_one_of_several() -> Option<(String, usize)> {
    for var in [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_STEP_NUM_TASKS",
    ] {
        if let Some(n) = std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if n > 1 {
                return Some((var.to_string(), n));
            }
        }
    }
    None
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
        let span = message_span(name, peer, tag, count * std::mem::size_of::<T>());
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

    /// Which node every rank runs on. Collective.
    pub fn shape(&self) -> WorldShape {
        let local = self.node_local();
        // A node is named by its lowest rank; every rank learns every rank's node name.
        let mut leader = [self.rank as u64];
        local.broadcast(&mut leader, 0);
        let leaders = self.all_gather(leader[0]);
        let mut names = leaders.clone();
        names.sort_unstable();
        names.dedup();
        WorldShape {
            size: self.size,
            rank: self.rank,
            node_of_rank: leaders
                .iter()
                .map(|l| names.binary_search(l).expect("own name"))
                .collect(),
        }
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

    /// Blocking receive of exactly `buf.len()` values from `src`.
    pub fn recv<T: Equivalence>(&self, src: usize, tag: Tag, buf: &mut [T]) {
        let _op = self.message::<T>(OpKind::Recv, src, tag, buf.len());
        let Inner::Mpi { comm, .. } = &self.inner else {
            unreachable!("message checked it")
        };
        comm.process_at_rank(src as i32)
            .receive_into_with_tag(buf, tag.value());
    }

    /// Blocking send of `data` to `dest` (one-directional flows only: evaluation, gathers).
    pub fn send<T: Equivalence>(&self, dest: usize, tag: Tag, data: &[T]) {
        let _op = self.message::<T>(OpKind::Send, dest, tag, data.len());
        let Inner::Mpi { comm, .. } = &self.inner else {
            unreachable!("message checked it")
        };
        comm.process_at_rank(dest as i32).send_with_tag(data, tag.value())
    }

    /// Runs `f` with an `AsyncSends` whose sends are non-blocking (MPI_Isend) from buffers of
    /// `arena` and are all waited for when `f` returns. Receives inside `f` are blocking, so
    /// every receive is posted while the matching sends are already in flight: no rendezvous
    /// deadlock between two neighbours that both send before they receive. On a one-rank
    /// stand-in there is nobody to talk to, and `f` must not send or receive.
    pub fn with_async_sends<R>(
        &self,
        arena: &mut [Vec<f32>],
        f: impl FnOnce(&mut AsyncSends<'_, '_>) -> R,
    ) -> R {
        let comm = match &self.inner {
            Inner::Mpi { comm, .. } => Some(comm),
            Inner::Solo => None,
        };
        mpi::request::scope(|scope| {
            let mut sends = AsyncSends {
                comm,
                owner: self,
                scope,
                free: arena.iter_mut(),
                pending: Vec::new(),
                noted: Vec::new(),
            };
            let out = f(&mut sends);
            if !sends.pending.is_empty() {
                let op = Op {
                    kind: OpKind::SendsComplete,
                    comm: &self.name,
                    seq: self.next_seq(),
                    peer: None,
                    count: sends.pending.len(),
                    dtype: "requests",
                };
                let _op = guard::enter(op, || {}, trace::Span::none());
                for req in sends.pending.drain(..) {
                    req.wait();
                }
                sends.noted.drain(..).for_each(guard::completed);
            }
            out
        })
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

    /// Element-wise sum over all ranks of `send` into `recv` (same length).
    pub fn all_reduce_sum<T: Equivalence + Copy>(&self, send: &[T], recv: &mut [T]) {
        match &self.inner {
            Inner::Solo => recv.copy_from_slice(send),
            Inner::Mpi { comm, .. } => {
                let _w = self.collective::<T>(OpKind::AllReduce, send.len());
                comm.all_reduce_into(send, recv, SystemOperation::sum())
            }
        }
    }

    /// The element-wise sum over all ranks of `values`.
    pub fn sum<T: Equivalence + Copy>(&self, values: &[T]) -> Vec<T> {
        let mut out = values.to_vec();
        self.all_reduce_sum(values, &mut out);
        out
    }

    /// Overwrites `buf` on every rank with rank `root`'s contents.
    pub fn broadcast<T: Equivalence>(&self, buf: &mut [T], root: usize) {
        if let Inner::Mpi { comm, .. } = &self.inner {
            let _w = self.collective::<T>(OpKind::Broadcast, buf.len());
            comm.process_at_rank(root as i32).broadcast_into(buf);
        }
    }

    /// Every rank's `value`, indexed by rank.
    pub fn all_gather<T: Equivalence + Copy>(&self, value: T) -> Vec<T> {
        let mut out = vec![value; self.size];
        if let Inner::Mpi { comm, .. } = &self.inner {
            let _w = self.collective::<T>(OpKind::AllGather, 1);
            comm.all_gather_into(&value, &mut out[..]);
        }
        out
    }

    pub fn barrier(&self) {
        if let Inner::Mpi { comm, .. } = &self.inner {
            let _w = self.collective::<()>(OpKind::Barrier, 0);
            comm.barrier();
        }
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

    /// Every rank's `values` (the same length on every rank), rank after rank.
    pub fn all_gather_slice<T: Equivalence + Copy + Default>(&self, values: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); values.len() * self.size];
        match &self.inner {
            Inner::Solo => out.copy_from_slice(values),
            Inner::Mpi { comm, .. } => {
                let _w = self.collective::<T>(OpKind::AllGather, values.len());
                comm.all_gather_into(values, &mut out[..]);
            }
        }
        out
    }

    /// Every rank's host name, indexed by rank (up to 63 bytes each). Collective.
    pub fn hostnames(&self) -> Vec<String> {
        self.all_gather_text(&crate::util::hostname())
    }

    /// Every rank's `mine` (up to 63 bytes each), indexed by rank. Collective.
    pub fn all_gather_text(&self, mine: &str) -> Vec<String> {
        const LEN: usize = 64;
        let mut bytes = [0u8; LEN];
        let n = mine.len().min(LEN - 1);
        bytes[..n].copy_from_slice(&mine.as_bytes()[..n]);
        self.all_gather_slice(&bytes)
            .chunks(LEN)
            .map(|c| String::from_utf8_lossy(c.split(|&b| b == 0).next().unwrap_or(&[])).into_owned())
            .collect()
    }
}

/// Non-blocking sends in flight during one `Comm::with_async_sends` call.
pub struct AsyncSends<'a, 's> {
    comm: Option<&'s SimpleCommunicator>,
    owner: &'s Comm,
    scope: &'s LocalScope<'a>,
    free: std::slice::IterMut<'a, Vec<f32>>,
    pending: Vec<Request<'a, [f32], &'s LocalScope<'a>>>,
    /// Flight records of the sends in flight, completed with them.
    noted: Vec<u64>,
}

impl<'a, 's> AsyncSends<'a, 's> {
    fn comm(&self) -> &'s SimpleCommunicator {
        self.comm.expect("a one-rank run has no neighbouring stage")
    }

    /// Lets `fill` write `len` values into the next free arena buffer, then starts sending it.
    pub fn send_with(&mut self, dest: usize, tag: Tag, len: usize, fill: impl FnOnce(&mut [f32])) {
        let comm = self.comm();
        let buf = self
            .free
            .next()
            .expect("send arena has a buffer for every send of a step");
        buf.resize(len, 0.0);
        fill(&mut buf[..]);
        let owner = self.owner;
        let seq = owner.next_message(dest, true);
        let op = Op {
            kind: OpKind::Send,
            comm: &owner.name,
            seq,
            peer: Some(owner.world_rank_of(dest)),
            count: len,
            dtype: "f32",
        };
        let check = || owner.send_descriptor(comm, dest, seq, len, "f32");
        self.noted.push(guard::started(op, check));
        let buf: &'a Vec<f32> = buf;
        let req =
            comm.process_at_rank(dest as i32)
                .immediate_send_with_tag(self.scope, &buf[..], tag.value());
        self.pending.push(req);
    }

    /// Blocking receive of exactly `buf.len()` f32 from `src`.
    pub fn recv(&mut self, src: usize, tag: Tag, buf: &mut [f32]) {
        let comm = self.comm();
        let _op = self.owner.message::<f32>(OpKind::Recv, src, tag, buf.len());
        comm.process_at_rank(src as i32)
            .receive_into_with_tag(buf, tag.value());
    }
}

/// The world ranks of `comm`'s ranks, in its rank order (collective over `comm`; no flight record).
fn world_ranks(comm: &SimpleCommunicator, world_rank: usize) -> Vec<usize> {
    let mut out = vec![0u64; comm.size() as usize];
    comm.all_gather_into(&(world_rank as u64), &mut out[..]);
    out.into_iter().map(|r| r as usize).collect()
}

/// A trace span of a message: its peer, bytes and kind.
fn message_span(kind: &'static str, peer: usize, tag: Tag, bytes: usize) -> crate::diag::trace::Span {
    crate::diag::trace::span_with(
        "comm",
        || format!("{kind} {tag:?}"),
        || serde_json::json!({"peer": peer, "bytes": bytes}),
    )
}

impl Comm {
    /// Offsets that put each rank's monotonic clock on rank 0's (microseconds to add), measured
    /// by ping-pong with rank 0 (the exchange with the shortest round trip of `rounds`), on rank 0;
    /// other ranks get zeros. Collective.
    pub fn clock_offsets(&self, rounds: usize) -> Vec<f64> {
        let mut offsets = vec![0.0; self.size];
        for (r, offset) in offsets.iter_mut().enumerate().skip(1) {
            let mut best = (f64::INFINITY, 0.0);
            for _ in 0..rounds {
                if self.rank == 0 {
                    let t0 = crate::diag::trace::now_us();
                    self.send(r, Tag::Clock, &[t0]);
                    let mut t1 = [0.0f64];
                    self.recv(r, Tag::Clock, &mut t1);
                    let t2 = crate::diag::trace::now_us();
                    if t2 - t0 < best.0 {
                        best = (t2 - t0, (t0 + t2) / 2.0 - t1[0]);
                    }
                } else if self.rank == r {
                    let mut t0 = [0.0f64];
                    self.recv(0, Tag::Clock, &mut t0);
                    self.send(0, Tag::Clock, &[crate::diag::trace::now_us()]);
                }
            }
            *offset = best.1;
        }
        offsets
    }

    /// Every rank's bytes on rank 0 (in rank order); None elsewhere. Collective.
    pub fn gather_bytes(&self, mine: &[u8]) -> Option<Vec<Vec<u8>>> {
        let lens = self.all_gather(mine.len() as u64);
        if self.rank != 0 {
            self.send(0, Tag::Trace, mine);
            return None;
        }
        let mut all = vec![mine.to_vec()];
        for (r, &len) in lens.iter().enumerate().skip(1) {
            let mut buf = vec![0u8; len as usize];
            self.recv(r, Tag::Trace, &mut buf);
            all.push(buf);
        }
        Some(all)
    }
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
