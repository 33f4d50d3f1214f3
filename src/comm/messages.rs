//! Point-to-point messages: blocking sends and receives, and the pipeline's non-blocking sends
//! from a reused arena (`with_async_sends`), each through the one instrumented path (`guard`).

use super::{guard, Comm, Inner, Tag};
use crate::diag::flight::{Op, OpKind};
use crate::diag::trace;
use mpi::datatype::Equivalence;
use mpi::request::{LocalScope, Request};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

impl Comm {
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

/// A trace span of a message: its peer, bytes and kind.
pub(super) fn message_span(
    kind: &'static str,
    peer: usize,
    tag: Tag,
    bytes: usize,
) -> crate::diag::trace::Span {
    crate::diag::trace::span_with(
        "comm",
        || format!("{kind} {tag:?}"),
        || serde_json::json!({"peer": peer, "bytes": bytes}),
    )
}
