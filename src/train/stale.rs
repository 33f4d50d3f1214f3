//! One-step-stale gradient averaging (`sync.delay: 1`): the seeds' "async updates" with a bound.
//!
//! Step t hands its gradient g_t to the all-reduce thread and applies the mean of g_(t-1), whose
//! all-reduce ran behind step t's forward and backward; step 0 has nothing to apply and takes no
//! optimizer step (w_1 = w_0). So w_(t+1) = w_t - lr * mean(g_(t-1)) for t >= 1: every replica
//! applies the same mean and the replicas stay identical, while the averaging time hides behind
//! a whole step's compute (not only behind backward, as bucketed overlap does).
//!
//! A checkpoint waits for the all-reduce in flight and saves its mean per parameter
//! (`sync.pending_mean.<name>`); a resumed run applies it at its first step, as the uninterrupted
//! run would have.

use crate::comm::{Comm, ReduceWorker};
use tch::Tensor;

/// Where the previous step's mean stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// No step yet (the start of a run).
    Nothing,
    /// Its all-reduce is on the worker thread (sum into `recv`).
    InFlight,
    /// Its mean is in `mean` (after a wait for a checkpoint, or restored from one).
    Ready,
}

pub struct StaleMean {
    worker: ReduceWorker,
    ranks: usize,
    /// The gradient in flight (the flat gradient buffer is zeroed and refilled meanwhile).
    send: Tensor,
    recv: Tensor,
    /// The previous step's mean, and each parameter's view of it (what checkpoints save).
    mean: Tensor,
    pub views: Vec<Tensor>,
    pending: Pending,
}

impl StaleMean {
    /// Buffers like `(flat, views)` (`GradientBuffer::state_like`) and an all-reduce thread on a
    /// duplicate of `group` (collective over it). None on a one-rank group.
    pub fn new(group: &Comm, like: (Tensor, Vec<Tensor>)) -> Option<StaleMean> {
        let worker = group.reduce_worker()?;
        let (mean, views) = like;
        Some(StaleMean {
            worker,
            ranks: group.size(),
            send: mean.zeros_like(),
            recv: mean.zeros_like(),
            mean,
            views,
            pending: Pending::Nothing,
        })
    }

    /// After backward: puts the previous step's mean into `out` (false when there is none: no
    /// optimizer step) and sends this step's `grads` on their way.
    pub fn exchange(&mut self, grads: &Tensor, out: &Tensor) -> bool {
        self.settle();
        let ready = self.pending == Pending::Ready;
        if ready {
            tch::no_grad(|| out.shallow_clone().copy_(&self.mean));
        }
        tch::no_grad(|| self.send.copy_(grads));
        let len = self.send.numel();
        // SAFETY: `send` and `recv` are owned by `self` and untouched until `settle` waits for
        // this job (the next step, a checkpoint, or the drop of the worker, which joins it).
        unsafe {
            self.worker.submit(
                self.send.data_ptr() as *const f32,
                self.recv.data_ptr() as *mut f32,
                len,
            )
        };
        self.pending = Pending::InFlight;
        ready
    }

    /// Waits for the all-reduce in flight, if any, and keeps its mean (before a checkpoint).
    pub fn settle(&mut self) {
        if self.pending == Pending::InFlight {
            self.worker.wait(1);
            tch::no_grad(|| self.mean.copy_(&(&self.recv / self.ranks as f64)));
            self.pending = Pending::Ready;
        }
    }

    /// Whether a mean waits to be applied (what a checkpoint saves).
    pub fn has_pending(&self) -> bool {
        self.pending != Pending::Nothing
    }

    /// A checkpoint's pending mean was copied into `views`: the next step applies it.
    pub fn restored(&mut self) {
        self.pending = Pending::Ready;
    }
}
