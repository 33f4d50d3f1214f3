//! One flat f32 buffer for all of a net's parameter values and one for their gradients. Every
//! parameter, and every parameter's `.grad`, is re-pointed at its span of those buffers (as
//! PyTorch DDP's `gradient_as_bucket_view` does), so backward accumulates straight into the flat
//! gradient buffer, the all-reduce reads it with no gather copy, and the optimizer updates all
//! weights in a handful of whole-buffer operations. The buffers are allocated once per run.

use crate::comm::{Comm, NodeMean};
use std::rc::Rc;
use tch::{Kind, Tensor};

/// Spans start on 64-byte boundaries, as libtorch's own allocations do, so vectorised kernels
/// see the same alignment they would on separately allocated weights.
const ALIGN_F32: i64 = 16;

pub struct GradientBuffer {
    /// The parameters bound to the buffers (shallow handles), re-pointed when the buffer goes.
    params: Vec<Tensor>,
    /// Parameter values; each parameter is a view into it.
    values: Tensor,
    /// Parameter gradients; each parameter's `.grad` is a view into it.
    grads: Tensor,
    /// The all-reduce result (MPI has no safe in-place all-reduce, so a second buffer).
    reduced: Tensor,
    /// (offset, numel) of each parameter inside the flat buffers.
    spans: Vec<(i64, i64)>,
    numel: usize,
    /// When the replicas average through node-shared memory: the owner of the windows that
    /// `grads` and `reduced` (and every `.grad`) view. Declared after the tensors, so they are
    /// dropped first; `Drop` re-points the `.grad` views before this goes.
    _window_owner: Option<Rc<NodeMean>>,
}

/// Which gradient the optimizer steps with: this rank's own, or the replicas' mean; or none
/// (the first step of one-step-stale averaging has no earlier mean to apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradSource {
    Local,
    Mean,
    Nothing,
}

/// A tensor's storage as a slice.
///
/// # Safety
/// `t` is a contiguous CPU f32 tensor of `n` elements that outlives the slice, and nothing else
/// writes it meanwhile.
unsafe fn as_slice(t: &Tensor, n: usize) -> &[f32] {
    std::slice::from_raw_parts(t.data_ptr() as *const f32, n)
}

/// A tensor's storage as a mutable slice.
///
/// # Safety
/// As `as_slice`, and nothing else reads or writes it meanwhile.
#[allow(clippy::mut_from_ref)]
unsafe fn as_mut_slice(t: &Tensor, n: usize) -> &mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n)
}

/// The span `[off, off + numel)` of `flat` seen with `like`'s shape and strides (`like` is dense:
/// row-major or channels-last), so kernels get the memory format they got before.
fn view_like(flat: &Tensor, off: i64, like: &Tensor) -> Tensor {
    flat.as_strided(like.size(), like.stride(), off)
}

/// (offset, numel) of each parameter in the flat buffers, and the buffers' length.
fn layout(params: &[&Tensor]) -> (Vec<(i64, i64)>, i64) {
    let mut spans = Vec::with_capacity(params.len());
    let mut off = 0i64;
    for p in params {
        let n = p.numel() as i64;
        spans.push((off, n));
        off = (off + n + ALIGN_F32 - 1) / ALIGN_F32 * ALIGN_F32;
    }
    (spans, off)
}

impl GradientBuffer {
    /// Length in f32 of the flat buffers for `params` (alignment gaps included).
    pub fn flat_len(params: &[&Tensor]) -> usize {
        layout(params).1 as usize
    }

    /// Moves every parameter's values and gradient (zeroed) into the flat buffers. The tensors
    /// keep their identity: the net, checkpoints and evaluation see the same parameters.
    /// With `shared`, the gradients and their mean live in that node-shared window (of
    /// `flat_len(params)` f32 per rank).
    pub fn bind(params: &[&Tensor], shared: Option<Rc<NodeMean>>) -> Self {
        let (spans, off) = layout(params);
        let opts = (Kind::Float, tch::Device::Cpu);
        let (grads, reduced) = match &shared {
            // SAFETY: both windows hold `off` f32 (asserted) and `self.shared` keeps them alive
            // longer than these views (field order, and `Drop` re-points the `.grad` views).
            Some(s) => unsafe {
                assert_eq!(s.len(), off as usize, "shared window sized for these parameters");
                let view = |p: *mut f32| {
                    Tensor::from_blob(p as *const u8, &[off], &[1], Kind::Float, tch::Device::Cpu)
                };
                (view(s.local_segment()), view(s.mean_buffer()))
            },
            None => (Tensor::zeros([off], opts), Tensor::zeros([off], opts)),
        };
        let buffer = GradientBuffer {
            params: params.iter().map(|p| p.shallow_clone()).collect(),
            values: Tensor::zeros([off], opts),
            grads,
            reduced,
            spans,
            numel: off as usize,
            _window_owner: shared,
        };
        for (p, &(off, _)) in params.iter().zip(&buffer.spans) {
            let value = view_like(&buffer.values, off, p);
            tch::no_grad(|| value.shallow_clone().copy_(p));
            p.shallow_clone().set_data(&value);
            // libtorch has no setter for `.grad`: one backward creates it, then it is re-pointed.
            if !p.grad().defined() {
                p.sum(Kind::Float).backward();
            }
            p.grad().set_data(&view_like(&buffer.grads, off, p));
        }
        buffer
    }

    pub fn len(&self) -> usize {
        self.numel
    }

    /// Each parameter's offset in the flat buffers and its shape.
    pub fn param_layout(&self) -> Vec<(i64, Vec<i64>)> {
        self.params
            .iter()
            .zip(&self.spans)
            .map(|(p, &(off, _))| (off, p.size()))
            .collect()
    }
    pub fn is_empty(&self) -> bool {
        self.numel == 0
    }

    /// All parameter values, flat (with the alignment gaps, which stay zero).
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// All parameter gradients as backward accumulated them on this rank.
    pub fn grads(&self) -> &Tensor {
        &self.grads
    }

    /// The gradient an optimizer step uses: this rank's, or the mean the averaging left.
    pub fn gradient(&self, source: GradSource) -> &Tensor {
        match source {
            GradSource::Local => &self.grads,
            GradSource::Mean | GradSource::Nothing => &self.reduced,
        }
    }

    /// A zeros-filled flat buffer laid out like the values, and each parameter's view into it
    /// (optimizer state that checkpoints save per parameter).
    pub fn state_like(&self, params: &[&Tensor]) -> (Tensor, Vec<Tensor>) {
        let flat = self.values.zeros_like();
        let views = params
            .iter()
            .zip(&self.spans)
            .map(|(p, &(off, _))| view_like(&flat, off, p))
            .collect();
        (flat, views)
    }

    pub fn zero_grads(&mut self) {
        let _ = self.grads.zero_();
    }

    /// The gradient span of `params[range]` as (send, recv, len) pointers for an all-reduce of
    /// just those parameters (their gradients must be final).
    pub fn grad_span(&self, range: std::ops::Range<usize>) -> (*const f32, *mut f32, usize) {
        let start = self.spans[range.start].0 as usize;
        let end = range
            .end
            .checked_sub(1)
            .map_or(start, |last| (self.spans[last].0 + self.spans[last].1) as usize);
        // SAFETY: offsets within the two buffers, which `self` owns for the whole run.
        unsafe {
            let send = (self.grads.data_ptr() as *const f32).add(start);
            let recv = (self.reduced.data_ptr() as *mut f32).add(start);
            (send, recv, end - start)
        }
    }

    /// The gradients backward accumulated, and the buffer the mean goes to, for an averaging
    /// codec that computes the mean itself (compressed averaging).
    pub fn grads_and_mean(&mut self) -> (&[f32], &mut [f32]) {
        // SAFETY: `grads` and `reduced` are distinct buffers of `numel` f32 that `self` owns;
        // `&mut self` keeps every other reader and writer away while the slices live.
        unsafe {
            (
                as_slice(&self.grads, self.numel),
                as_mut_slice(&self.reduced, self.numel),
            )
        }
    }

    /// After every span was reduced into `reduced`: the mean over `ranks`.
    pub fn finish_mean(&mut self, ranks: usize) -> &Tensor {
        let _ = self.reduced.g_div_scalar_(ranks as f64);
        &self.reduced
    }

    /// The mean of every rank's gradients, in `reduced`, through MPI_Allreduce.
    pub fn all_reduce_mean_grads(&mut self, comm: &Comm) -> &Tensor {
        Self::all_reduce(&self.grads, &self.reduced, self.numel, comm);
        self.finish_mean(comm.size())
    }

    /// Model averaging: every rank's values replaced by the mean over the ranks.
    pub fn average_values(&mut self, comm: &Comm) {
        Self::all_reduce(&self.values, &self.reduced, self.numel, comm);
        let _ = self.reduced.g_div_scalar_(comm.size() as f64);
        tch::no_grad(|| self.values.copy_(&self.reduced));
    }

    fn all_reduce(send: &Tensor, recv: &Tensor, n: usize, comm: &Comm) {
        // SAFETY: both are distinct contiguous f32 buffers of `n` elements owned by the caller.
        let (send, recv) = unsafe { (as_slice(send, n), as_mut_slice(recv, n)) };
        comm.all_reduce_sum(send, recv);
    }

    /// Every rank's values replaced by those of `root`.
    pub fn broadcast_values(&mut self, comm: &Comm, root: usize) {
        // SAFETY: as above.
        let buf = unsafe { as_mut_slice(&self.values, self.numel) };
        comm.broadcast(buf, root);
    }

    /// FNV-1a over the values' bytes: replicas that hold the same weights hash the same.
    pub fn checksum_values(&self) -> u64 {
        // SAFETY: as above; the u8 view covers exactly the f32 slice's bytes.
        let bytes = unsafe {
            let floats = as_slice(&self.values, self.numel);
            std::slice::from_raw_parts(floats.as_ptr() as *const u8, floats.len() * 4)
        };
        crate::util::fnv1a(bytes)
    }
}

impl Drop for GradientBuffer {
    /// Re-points every parameter's `.grad` at memory of its own, so no tensor that outlives the
    /// buffer (the net's parameters) views the flat buffers, and none views a shared window
    /// after its owner frees it.
    fn drop(&mut self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                g.set_data(&Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)));
            }
        }
    }
}

/// The tensors' values in their logical (row-major) order, one after another.
pub fn flatten_values(tensors: &[&Tensor]) -> Vec<f32> {
    let parts: Vec<Tensor> = tensors.iter().map(|t| t.detach().reshape([-1])).collect();
    if parts.is_empty() {
        return Vec::new();
    }
    Vec::<f32>::try_from(Tensor::cat(&parts, 0)).expect("f32 tensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_parameters_share_the_flat_buffers_and_keep_their_values_and_layouts() {
        // Draws from libtorch's global generator: one test at a time.
        let _rng = crate::util::torch_rng();
        let a = Tensor::randn([3, 5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let w = crate::model::to_channels_last(&Tensor::randn([4, 3, 2, 2], (Kind::Float, tch::Device::Cpu)))
            .set_requires_grad(true);
        let (a0, w0) = (a.detach().copy(), w.detach().copy());
        let buffer = GradientBuffer::bind(&[&a, &w], None);
        assert_eq!(a.detach(), a0);
        assert_eq!(w.detach(), w0);
        assert!(
            crate::model::is_channels_last(&w),
            "the weight keeps channels-last strides"
        );
        assert_eq!(buffer.len(), 16 + 48);
        // Backward accumulates into the flat gradient buffer, at each parameter's span.
        ((&a * 2.0).sum(Kind::Float) + (&w * 3.0).sum(Kind::Float)).backward();
        let g = Vec::<f32>::try_from(buffer.grads().shallow_clone()).unwrap();
        assert!(g[..15].iter().all(|&v| v == 2.0));
        assert_eq!(g[15], 0.0, "the alignment gap stays zero");
        assert!(g[16..].iter().all(|&v| v == 3.0));
        // Writing the flat values writes the parameters.
        let _ = tch::no_grad(|| buffer.values().shallow_clone().fill_(1.0));
        assert!(bool::try_from(w.detach().eq(1.0).all()).unwrap());
        assert_eq!(flatten_values(&[&a]).len(), 15);
    }
}
