//! How a net computes: channels-last strides and bf16, and the stride helpers they need.

use tch::{Kind, Tensor};

/// How the forward pass computes (the weights stay fp32 either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compute {
    /// Activations and conv weights in channels-last (NHWC) strides, which oneDNN's CPU
    /// convolutions run faster on. Same results within fp32 rounding.
    pub channels_last: bool,
    /// Mixed precision: inputs and conv/linear weights cast to bf16 inside the forward (the casts
    /// are differentiable, so gradients reach the fp32 master weights); outputs back to fp32.
    pub bf16: bool,
}

impl Compute {
    /// `t` in the forward's compute precision.
    pub fn cast(&self, t: &Tensor) -> Tensor {
        if self.bf16 {
            t.to_kind(Kind::BFloat16)
        } else {
            t.shallow_clone()
        }
    }
}

/// `t` with channels-last strides (same shape and values). tch has no memory-format argument, but
/// a tensor permuted to NHWC, made contiguous and permuted back has exactly those strides.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    if t.dim() != 4 || is_channels_last(t) {
        return t.shallow_clone();
    }
    let s = t.size();
    if s[1] == 1 && t.is_contiguous() {
        // One channel: NCHW and NHWC are the same bytes and only the strides tell them apart
        // (permute + contiguous would keep the NCHW strides, which libtorch calls contiguous).
        return t.as_strided(&s[..], [s[2] * s[3], 1, s[3], 1], None);
    }
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// A copy of `t` with plain row-major strides. `contiguous()` is not enough for files: with a
/// single channel libtorch calls NHWC strides contiguous and keeps them, and safetensors refuses them.
pub fn dense(t: &Tensor) -> Tensor {
    let out = Tensor::empty(t.size(), (t.kind(), t.device()));
    tch::no_grad(|| out.shallow_clone().copy_(t));
    out
}

pub fn is_channels_last(t: &Tensor) -> bool {
    let (st, sz) = (t.stride(), t.size());
    t.dim() == 4 && st[1] == 1 && st[3] == sz[1] && st[2] == sz[1] * sz[3]
}
