//! One flat f32 buffer for all of a net's parameter gradients (or values): gather, one all-reduce,
//! scatter back. The buffers are allocated once per run; every step reuses them.

use crate::comm::Comm;
use tch::{Kind, Tensor};

pub struct GradientBuffer {
    /// Gathered local values, contiguous f32.
    local: Tensor,
    /// The all-reduce result (MPI has no safe in-place all-reduce, so a second buffer).
    reduced: Tensor,
    /// (offset, numel) of each parameter inside the flat buffers.
    spans: Vec<(i64, i64)>,
    numel: usize,
}

/// A tensor's storage as a slice. Safety: `t` is a contiguous CPU f32 tensor of `n` elements that
/// outlives the slice, and nothing else touches it meanwhile.
unsafe fn as_slice(t: &Tensor, n: usize) -> &[f32] {
    std::slice::from_raw_parts(t.data_ptr() as *const f32, n)
}
#[allow(clippy::mut_from_ref)]
unsafe fn as_mut_slice(t: &Tensor, n: usize) -> &mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n)
}

impl GradientBuffer {
    pub fn new(params: &[&Tensor]) -> Self {
        let mut spans = Vec::with_capacity(params.len());
        let mut off = 0i64;
        for p in params {
            let n = p.numel() as i64;
            spans.push((off, n));
            off += n;
        }
        let opts = (Kind::Float, tch::Device::Cpu);
        GradientBuffer {
            local: Tensor::zeros([off], opts),
            reduced: Tensor::zeros([off], opts),
            spans,
            numel: off as usize,
        }
    }

    pub fn len(&self) -> usize {
        self.numel
    }
    pub fn is_empty(&self) -> bool {
        self.numel == 0
    }

    /// Copies every parameter's gradient into the local buffer.
    pub fn gather_grads(&mut self, params: &[&Tensor]) {
        tch::no_grad(|| {
            for (p, &(off, n)) in params.iter().zip(&self.spans) {
                self.local.narrow(0, off, n).copy_(&p.grad().reshape([-1]));
            }
        })
    }

    /// Copies every parameter's value into the local buffer.
    pub fn gather_values(&mut self, params: &[&Tensor]) {
        tch::no_grad(|| {
            for (p, &(off, n)) in params.iter().zip(&self.spans) {
                self.local.narrow(0, off, n).copy_(&p.reshape([-1]));
            }
        })
    }

    /// Copies the gradients of `params[range]` into their span of the local buffer and returns
    /// that span as (send, recv, len) pointers for an all-reduce of just those parameters.
    pub fn gather_grads_span(
        &mut self,
        params: &[&Tensor],
        range: std::ops::Range<usize>,
    ) -> (*const f32, *mut f32, usize) {
        tch::no_grad(|| {
            for i in range.clone() {
                let (off, n) = self.spans[i];
                self.local
                    .narrow(0, off, n)
                    .copy_(&params[i].grad().reshape([-1]));
            }
        });
        let start = self.spans[range.start].0 as usize;
        let end = range
            .end
            .checked_sub(1)
            .map_or(start, |last| (self.spans[last].0 + self.spans[last].1) as usize);
        // SAFETY: offsets within the two buffers, which `self` owns for the whole run.
        unsafe {
            let send = (self.local.data_ptr() as *const f32).add(start);
            let recv = (self.reduced.data_ptr() as *mut f32).add(start);
            (send, recv, end - start)
        }
    }

    /// After all spans were reduced: the mean over `ranks`, written back into the gradients.
    pub fn finish_mean_into_grads(&mut self, params: &[&Tensor], ranks: usize) {
        let _ = self.reduced.g_div_scalar_(ranks as f64);
        self.scatter_grads(params);
    }

    /// The gathered local values.
    pub fn local_values(&self) -> &[f32] {
        // SAFETY: contiguous f32 tensor of `numel` elements owned by `self`.
        unsafe { as_slice(&self.local, self.numel) }
    }

    /// Sums the local buffers of all ranks and divides by the rank count (the mean).
    pub fn all_reduce_mean(&mut self, comm: &Comm) {
        // SAFETY: both buffers are contiguous f32 tensors of `numel` elements owned by `self`.
        let (send, recv) = unsafe {
            (
                as_slice(&self.local, self.numel),
                as_mut_slice(&self.reduced, self.numel),
            )
        };
        comm.all_reduce_sum_f32(send, recv);
        let _ = self.reduced.g_div_scalar_(comm.size() as f64);
    }

    /// Broadcasts the local buffer of `root` into every rank's reduced buffer.
    pub fn broadcast(&mut self, comm: &Comm, root: usize) {
        tch::no_grad(|| self.reduced.copy_(&self.local));
        // SAFETY: as above.
        let buf = unsafe { as_mut_slice(&self.reduced, self.numel) };
        comm.broadcast_f32(buf, root);
    }

    /// Writes the reduced buffer back into the parameters' gradients.
    pub fn scatter_grads(&self, params: &[&Tensor]) {
        tch::no_grad(|| {
            for (p, &(off, n)) in params.iter().zip(&self.spans) {
                p.grad().copy_(&self.reduced.narrow(0, off, n).view_as(p));
            }
        })
    }

    /// Writes the reduced buffer back into the parameters' values.
    pub fn scatter_values(&self, params: &[&Tensor]) {
        tch::no_grad(|| {
            for (p, &(off, n)) in params.iter().zip(&self.spans) {
                p.shallow_clone()
                    .copy_(&self.reduced.narrow(0, off, n).view_as(p));
            }
        })
    }

    /// FNV-1a over the parameters' bytes: replicas that hold the same weights hash the same.
    pub fn checksum_values(&mut self, params: &[&Tensor]) -> u64 {
        self.gather_values(params);
        // SAFETY: as above.
        let floats = unsafe { as_slice(&self.local, self.numel) };
        let bytes = unsafe { std::slice::from_raw_parts(floats.as_ptr() as *const u8, floats.len() * 4) };
        crate::util::fnv1a(bytes)
    }
}
