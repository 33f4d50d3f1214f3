//! The collectives, generic over the `mpi` crate's `Equivalence`: each goes through the one
//! instrumented path (`guard`) with its communicator's next sequence number.

use super::{Comm, Inner};
use crate::diag::flight::OpKind;
use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::traits::*;

impl Comm {
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

    /// Chunk r of `send` (its `send.len() / size` elements) to rank r; `recv` gets every rank's
    /// chunk for this rank, rank after rank (MPI_Alltoall). Both lengths divide by the size.
    pub fn all_to_all<T: Equivalence + Copy>(&self, send: &[T], recv: &mut [T]) {
        assert_eq!(send.len(), recv.len(), "all_to_all: equal buffers");
        assert_eq!(send.len() % self.size, 0, "all_to_all: a chunk per rank");
        match &self.inner {
            Inner::Solo => recv.copy_from_slice(send),
            Inner::Mpi { comm, .. } => {
                let _w = self.collective::<T>(OpKind::AllToAll, send.len());
                comm.all_to_all_into(send, recv);
            }
        }
    }

    /// Every rank's `send` (the same length on every rank) into `recv`, rank after rank, with no
    /// allocation (MPI_Allgather).
    pub fn all_gather_into<T: Equivalence + Copy>(&self, send: &[T], recv: &mut [T]) {
        assert_eq!(
            send.len() * self.size,
            recv.len(),
            "all_gather_into: a slot per rank"
        );
        match &self.inner {
            Inner::Solo => recv.copy_from_slice(send),
            Inner::Mpi { comm, .. } => {
                let _w = self.collective::<T>(OpKind::AllGather, send.len());
                comm.all_gather_into(send, recv);
            }
        }
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
