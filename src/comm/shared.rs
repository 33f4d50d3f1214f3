//! Node-shared memory (MPI-3 shared windows) for averaging gradients among the ranks of one node.
//!
//! `NodeMean` owns two windows: every rank's gradient segment, and one mean buffer. Tensors that
//! view this memory (`GradientBuffer`'s gradients and mean, every parameter's `.grad`) are
//! created from the raw pointers, so the windows must outlive them: `GradientBuffer` holds an
//! `Rc<NodeMean>` and re-points the `.grad` views at owned memory before it lets go of it, and the
//! windows are freed (collectively) only when the last `Rc` is dropped.

use super::{check, waiting_for};
use mpi::ffi;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

/// One shared window of f32: `len` of them from this rank (maybe 0), and every rank's base address.
struct SharedWindow {
    win: ffi::MPI_Win,
    bases: Vec<*mut f32>,
}

impl SharedWindow {
    /// Collective over `comm`, whose ranks must all share one node.
    fn allocate(comm: &SimpleCommunicator, len: usize) -> SharedWindow {
        let raw = mpi::raw::AsRaw::as_raw(comm);
        // SAFETY: reading a predefined handle.
        let mut win: ffi::MPI_Win = unsafe { ffi::RSMPI_WIN_NULL };
        let mut base: *mut f32 = std::ptr::null_mut();
        // SAFETY: MPI-3 calls on a valid communicator; `base` and `win` are out-parameters of the
        // sizes MPI writes (a pointer and a window handle).
        unsafe {
            check(
                ffi::MPI_Win_allocate_shared(
                    (len * 4) as ffi::MPI_Aint,
                    4,
                    ffi::RSMPI_INFO_NULL,
                    raw,
                    &mut base as *mut *mut f32 as *mut std::ffi::c_void,
                    &mut win,
                ),
                "MPI_Win_allocate_shared",
            );
            // A passive-target epoch for the window's lifetime: MPI_Win_sync then orders the plain
            // loads and stores around the barriers (MPI's unified memory model).
            check(
                ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as i32, win),
                "MPI_Win_lock_all",
            );
        }
        let bases = (0..comm.size())
            .map(|r| {
                let (mut size, mut unit, mut ptr) = (0 as ffi::MPI_Aint, 0i32, std::ptr::null_mut::<f32>());
                // SAFETY: query of a rank of this window's group; all three are out-parameters.
                unsafe {
                    check(
                        ffi::MPI_Win_shared_query(
                            win,
                            r,
                            &mut size,
                            &mut unit,
                            &mut ptr as *mut *mut f32 as *mut std::ffi::c_void,
                        ),
                        "MPI_Win_shared_query",
                    )
                };
                ptr
            })
            .collect();
        SharedWindow { win, bases }
    }

    fn sync(&self) {
        // SAFETY: a valid window inside its lock_all epoch.
        unsafe { check(ffi::MPI_Win_sync(self.win), "MPI_Win_sync") };
    }
}

impl Drop for SharedWindow {
    fn drop(&mut self) {
        // SAFETY: every rank drops its `NodeMean` at the same point (the end of a run), so this
        // collective call is matched; no tensor views the memory any more (see the module comment).
        unsafe {
            check(ffi::MPI_Win_unlock_all(self.win), "MPI_Win_unlock_all");
            check(ffi::MPI_Win_free(&mut self.win), "MPI_Win_free");
        }
    }
}

/// The mean of the gradients of all ranks of one node, through shared memory. After a barrier
/// every rank sums its own slice of all segments, in rank order, into the shared mean; after a
/// second barrier every rank reads the whole mean. No copies into or out of MPI: on the 2-core
/// test machine ~0.06 ms per step against ~0.40 ms for MPI_Allreduce + division (1.7 MB).
pub struct NodeMean {
    comm: SimpleCommunicator,
    grads: SharedWindow,
    mean: SharedWindow,
    n: usize,
    rank: usize,
    size: usize,
}

impl NodeMean {
    /// Collective over `comm`, whose ranks must all share one node; `n` f32 per rank.
    pub(super) fn new(comm: SimpleCommunicator, n: usize) -> NodeMean {
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        let grads = SharedWindow::allocate(&comm, n);
        let mean = SharedWindow::allocate(&comm, if rank == 0 { n } else { 0 });
        NodeMean {
            comm,
            grads,
            mean,
            n,
            rank,
            size,
        }
    }

    /// This rank's gradient segment (`len()` f32, zero-initialised), valid while `self` lives.
    pub fn local_segment(&self) -> *mut f32 {
        self.grads.bases[self.rank]
    }

    /// The shared mean buffer (`len()` f32), valid while `self` lives.
    pub fn mean_buffer(&self) -> *mut f32 {
        self.mean.bases[0]
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn barrier(&self) {
        let _w = waiting_for("gradient averaging (node-shared memory)", || {
            format!("all {} ranks on this node", self.size)
        });
        self.grads.sync();
        self.mean.sync();
        self.comm.barrier();
        self.grads.sync();
        self.mean.sync();
    }

    /// The mean of all ranks' segments into the mean buffer. Every rank computes its slice (on
    /// 16-float boundaries), summing the ranks in order, then waits for the others.
    pub fn mean(&self) {
        self.barrier();
        let cut = |r: usize| (self.n * r / self.size) / 16 * 16;
        let lo = cut(self.rank);
        let hi = if self.rank + 1 == self.size {
            self.n
        } else {
            cut(self.rank + 1)
        };
        let len = hi - lo;
        // SAFETY: every segment and the mean hold `n` f32 (the windows live as long as `self`);
        // between the two barriers nobody writes the segments, and only this rank writes [lo, hi)
        // of the mean.
        unsafe {
            let seg = |r: usize| std::slice::from_raw_parts(self.grads.bases[r].add(lo), len);
            let out = std::slice::from_raw_parts_mut(self.mean_buffer().add(lo), len);
            let ranks = self.size as f32;
            if self.size == 2 {
                for ((o, a), b) in out.iter_mut().zip(seg(0)).zip(seg(1)) {
                    *o = (a + b) / ranks;
                }
            } else {
                out.copy_from_slice(seg(0));
                for r in 1..self.size {
                    for (o, g) in out.iter_mut().zip(seg(r)) {
                        *o += g;
                    }
                }
                for o in out.iter_mut() {
                    *o /= ranks;
                }
            }
        }
        self.barrier();
    }
}
