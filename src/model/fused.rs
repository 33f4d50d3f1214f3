//! The first block of a stage that reads images (conv -> ReLU -> 2x2 max-pool) computed outside
//! autograd, in fewer passes over memory, with the same mathematics.
//!
//! Profiled on partrain's op sequence (`bench/step_profile.py`, MNIST net, fp32 channels-last, 1
//! thread), this block cost about a quarter of a step although it holds 5% of the FLOPs: max-pool
//! forward, its backward (which first zero-fills a fresh 6.4 MB gradient, then scatters into it),
//! and the ReLU and its backward each make a pass over the 28x28x32 activations. Here:
//!
//! - forward: the convolution as before (oneDNN, channels-last), then one pass that takes each
//!   2x2 window's maximum (the first of equal values wins, NaN propagates: libtorch's rule), applies
//!   ReLU, and records which of the four won (or that ReLU stopped the gradient) in one byte;
//! - backward: one pass that writes all four gradient values of every window (the winner's
//!   incoming gradient, zeros elsewhere): no separate zero-fill, into a buffer reused every step;
//!   then libtorch's convolution backward for the weight and bias only (src/model/ops.cpp). The
//!   input needs no gradient (images), which is what lets the block leave autograd.
//!
//! Everything is bit-identical to libtorch's ops under autograd (max, ReLU and routing a gradient
//! are exact, and the weight gradient is the same kernel on the same operands; tested). A weight
//! gradient summed in another order (an im2col product, tried first) differed by ~3e-6 relative
//! per step, and MNIST's training amplified that to 4.6e-3 in the weights after 50 steps.

use tch::{Kind, Tensor};

/// Marks a window whose ReLU output is not positive: its gradient stops there.
const DEAD: u8 = 4;

/// Buffers of one micro-batch slot, reused step after step (their sizes only change with the
/// micro-batch's image count).
#[derive(Default)]
pub struct Buffers {
    /// Pooled, ReLU'd output (channels-last), what the rest of the net reads.
    pooled: Option<Tensor>,
    /// Per output element: which window position won (0..3), or DEAD.
    winner: Vec<u8>,
    /// Gradient with respect to the convolution's output (channels-last).
    grad_conv: Option<Tensor>,
}

/// What the backward of one micro-batch needs from its forward.
pub struct Saved {
    input: Tensor,
    /// The pooled output as an autograd leaf: the rest of the net's backward leaves its gradient
    /// here.
    pub leaf: Tensor,
    dims: [usize; 4],
}

/// Shape `[n, c, h, w]` of a channels-last conv output whose first layer feeds a 2x2 pool.
fn dims(t: &Tensor) -> [usize; 4] {
    let s = t.size();
    [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize]
}

/// The slot's channels-last buffer of `shape` (`[n, c, h, w]`), allocated when the shape changes.
fn reuse(slot: &mut Option<Tensor>, shape: &[i64]) -> Tensor {
    if slot.as_ref().is_none_or(|t| t.size() != shape) {
        let nhwc = Tensor::empty(
            [shape[0], shape[2], shape[3], shape[1]],
            (Kind::Float, tch::Device::Cpu),
        );
        *slot = Some(nhwc.permute([0, 3, 1, 2]));
    }
    slot.as_ref().expect("just set").shallow_clone()
}

/// One pass over a channels-last `[n, c, h, w]` tensor: 2x2 max-pool, then ReLU, into `out`
/// (`[n, c, h/2, w/2]`, channels-last) and `winner`. Slices and zips (no indexing) so that the
/// loops over channels vectorise.
fn pool_relu_forward(x: &[f32], [n, c, h, w]: [usize; 4], out: &mut [f32], winner: &mut [u8]) {
    let (oh, ow) = (h / 2, w / 2);
    let row = w * c;
    for b in 0..n {
        for i in 0..oh {
            let top = &x[(b * h + 2 * i) * row..][..row];
            let bottom = &x[(b * h + 2 * i + 1) * row..][..row];
            let o_row = ((b * oh + i) * ow) * c;
            for j in 0..ow {
                let (p0, p1) = top[2 * j * c..][..2 * c].split_at(c);
                let (p2, p3) = bottom[2 * j * c..][..2 * c].split_at(c);
                let o = &mut out[o_row + j * c..][..c];
                let win = &mut winner[o_row + j * c..][..c];
                for (k, (o, win)) in o.iter_mut().zip(win.iter_mut()).enumerate() {
                    // The first of equal values wins and NaN propagates (libtorch's rule).
                    let (mut best, mut arg) = (p0[k], 0u8);
                    for (p, v) in [(1u8, p1[k]), (2, p2[k]), (3, p3[k])] {
                        if v > best || v.is_nan() {
                            best = v;
                            arg = p;
                        }
                    }
                    // ReLU: its backward passes the gradient where its output is positive.
                    let alive = best > 0.0;
                    *o = if alive || best.is_nan() { best } else { 0.0 };
                    *win = if alive { arg } else { DEAD };
                }
            }
        }
    }
}

/// One pass writing every element of `grad_in` (`[n, c, h, w]`, channels-last): each window's
/// winner gets the window's incoming gradient, the other positions zero.
fn pool_relu_backward(grad_out: &[f32], winner: &[u8], [n, c, h, w]: [usize; 4], grad_in: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    let row = w * c;
    for b in 0..n {
        for i in 0..oh {
            let (top, bottom) = grad_in[(b * h + 2 * i) * row..][..2 * row].split_at_mut(row);
            let o_row = ((b * oh + i) * ow) * c;
            for j in 0..ow {
                let g = &grad_out[o_row + j * c..][..c];
                let win = &winner[o_row + j * c..][..c];
                let (q0, q1) = top[2 * j * c..][..2 * c].split_at_mut(c);
                let (q2, q3) = bottom[2 * j * c..][..2 * c].split_at_mut(c);
                for (p, q) in [q0, q1, q2, q3].into_iter().enumerate() {
                    for ((q, &g), &win) in q.iter_mut().zip(g).zip(win) {
                        *q = if win == p as u8 { g } else { 0.0 };
                    }
                }
            }
        }
    }
}

/// # Safety
/// `t` is a dense f32 CPU tensor (row-major or channels-last) of `len` elements that outlives the
/// slice and that nothing else touches meanwhile.
unsafe fn slice(t: &Tensor, len: usize) -> &[f32] {
    std::slice::from_raw_parts(t.data_ptr() as *const f32, len)
}

/// # Safety
/// As `slice`, and nothing else reads it meanwhile either.
#[allow(clippy::mut_from_ref)]
unsafe fn slice_mut(t: &Tensor, len: usize) -> &mut [f32] {
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, len)
}

/// Forward of conv (`weight`, `bias`, padding `pad`) -> ReLU -> 2x2 max-pool on `input`, which
/// needs no gradient. Returns what the backward needs; `saved.leaf` is the block's output.
pub fn forward(input: &Tensor, weight: &Tensor, bias: &Tensor, pad: i64, buffers: &mut Buffers) -> Saved {
    let conv = tch::no_grad(|| input.conv2d(weight, Some(bias), [1, 1], [pad, pad], [1, 1], 1));
    let conv = crate::model::to_channels_last(&conv);
    let d = dims(&conv);
    let [n, c, h, w] = d;
    assert!(h % 2 == 0 && w % 2 == 0, "the fused block pools even sizes only");
    let out_shape = [n as i64, c as i64, (h / 2) as i64, (w / 2) as i64];
    let pooled = reuse(&mut buffers.pooled, &out_shape);
    buffers.winner.resize(n * c * (h / 2) * (w / 2), 0);
    // SAFETY: `conv` and `pooled` are dense channels-last f32 tensors of these sizes, alive for
    // the call; `pooled` is this slot's own buffer, which no graph reads any more (the previous
    // step's backward has run).
    unsafe {
        pool_relu_forward(
            slice(&conv, n * c * h * w),
            d,
            slice_mut(&pooled, buffers.winner.len()),
            &mut buffers.winner,
        );
    }
    Saved {
        input: input.shallow_clone(),
        leaf: pooled.detach().set_requires_grad(true),
        dims: d,
    }
}

/// Backward of the block once the rest of the net's backward left its gradient in `saved.leaf`:
/// accumulates the convolution's weight and bias gradients into their `.grad`.
pub fn backward(saved: &Saved, weight: &Tensor, bias: &Tensor, pad: i64, buffers: &mut Buffers) {
    let [n, c, h, w] = saved.dims;
    let grad_out = saved.leaf.grad();
    if !grad_out.defined() {
        return; // the rest of the net did not depend on this block (never for the seed nets)
    }
    let grad_out = crate::model::to_channels_last(&grad_out);
    let grad_conv = reuse(&mut buffers.grad_conv, &[n as i64, c as i64, h as i64, w as i64]);
    // SAFETY: dense channels-last f32 tensors of these sizes; `grad_conv` is this slot's own
    // buffer, read only below.
    unsafe {
        pool_relu_backward(
            slice(&grad_out, buffers.winner.len()),
            &buffers.winner,
            saved.dims,
            slice_mut(&grad_conv, n * c * h * w),
        );
    }
    // libtorch's own convolution backward for the weight and bias (what autograd would run), so
    // the gradients are autograd's bit for bit.
    let (dw, db) = crate::model::native::conv_weight_grad(&grad_conv, &saved.input, weight, pad)
        .expect("convolution_backward of the first block");
    tch::no_grad(|| {
        let _ = weight.grad().g_add_(&dw);
        let _ = bias.grad().g_add_(&db);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused block against libtorch's own ops under autograd: the same output bit for bit,
    /// the same routing of the gradient, and the convolution's gradients within float rounding.
    /// Times the fused block against the plain ops (forward + backward of the block, MNIST's
    /// first block at batch 64): `cargo test --release --lib fused_block_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn fused_block_speed() {
        // Draws from libtorch's global generator: one test at a time.
        let _rng = crate::util::torch_rng();
        tch::set_num_threads(1);
        let opts = (Kind::Float, tch::Device::Cpu);
        let x = Tensor::randn([64, 1, 28, 28], opts);
        let w = crate::model::to_channels_last(&(Tensor::randn([32, 1, 3, 3], opts) * 0.3))
            .set_requires_grad(true);
        let b = Tensor::zeros([32], opts).set_requires_grad(true);
        let up = crate::model::to_channels_last(&Tensor::randn([64, 32, 14, 14], opts));
        let time = |f: &mut dyn FnMut()| {
            for _ in 0..5 {
                f();
            }
            let t = std::time::Instant::now();
            for _ in 0..50 {
                f();
            }
            t.elapsed().as_secs_f64() / 50.0 * 1e3
        };
        let plain = time(&mut || {
            let y = crate::model::to_channels_last(&x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1));
            let o = y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false).relu();
            crate::model::native::backward_with_grad(&o, &up).unwrap();
        });
        let mut buffers = Buffers::default();
        let fused = time(&mut || {
            let s = forward(&x, &w, &b, 1, &mut buffers);
            crate::model::native::backward_with_grad(&s.leaf, &up).unwrap();
            backward(&s, &w, &b, 1, &mut buffers);
        });
        println!("first block forward + backward: plain {plain:.3} ms, fused {fused:.3} ms");
        // The whole MNIST step (forward, loss, backward), alternating the two, in one process.
        let specs = crate::model::preset_layers(crate::config::Preset::MnistCnn, 0.0);
        let mut net = crate::model::Net::build(&specs, 0..specs.len(), 1);
        net.set_compute(crate::model::Compute {
            channels_last: true,
            bf16: false,
        });
        let y = Tensor::randint(10, [64], (Kind::Int64, tch::Device::Cpu));
        let xs = Tensor::randn([64, 1, 28, 28], opts);
        let (mut plain_ms, mut fused_ms) = (Vec::new(), Vec::new());
        let mut buffers = Buffers::default();
        for round in 0..8 {
            let p = time(&mut || {
                net.forward(&xs, true).cross_entropy_for_logits(&y).backward();
            });
            let f = time(&mut || {
                let p = &net.layers[0].params;
                let s = forward(&xs, &p[0], &p[1], 1, &mut buffers);
                net.forward_layers(&s.leaf, true, 3..specs.len())
                    .cross_entropy_for_logits(&y)
                    .backward();
                backward(&s, &p[0], &p[1], 1, &mut buffers);
            });
            if round > 0 {
                plain_ms.push(p);
                fused_ms.push(f);
            }
        }
        println!("whole step: plain {plain_ms:.2?} ms, fused {fused_ms:.2?} ms");
    }

    #[test]
    fn fused_block_matches_the_plain_ops() {
        // Draws from libtorch's global generator: one test at a time.
        let _rng = crate::util::torch_rng();
        for (cin, hw, zeros, batch) in [(1i64, 28i64, true, 4i64), (1, 28, true, 64), (3, 32, false, 8)] {
            tch::manual_seed(7);
            let opts = (Kind::Float, tch::Device::Cpu);
            let x = Tensor::randn([batch, cin, hw, hw], opts);
            if zeros {
                // Constant regions, as MNIST's blank background: conv outputs tie in a window.
                let _ = x.narrow(2, 0, 8).fill_(-0.4242);
            }
            // Images arrive as the data set holds them: NCHW (for one channel, the same bytes).
            let x = if cin > 1 {
                crate::model::to_channels_last(&x)
            } else {
                x
            };
            let w0 = Tensor::randn([32, cin, 3, 3], opts) * 0.3;
            let b0 = Tensor::randn([32], opts) * 0.1;
            let fresh = |t: &Tensor| {
                crate::model::to_channels_last(&t.copy())
                    .detach()
                    .set_requires_grad(true)
            };
            let (w1, b1, w2, b2) = (
                fresh(&w0),
                b0.copy().set_requires_grad(true),
                fresh(&w0),
                b0.copy().set_requires_grad(true),
            );
            let upstream = crate::model::to_channels_last(&Tensor::randn([batch, 32, hw / 2, hw / 2], opts));
            // Plain: autograd through libtorch's conv, max-pool, ReLU.
            let plain = x.conv2d(&w1, Some(&b1), [1, 1], [1, 1], [1, 1], 1);
            let plain = crate::model::to_channels_last(&plain)
                .max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
                .relu();
            (&plain * &upstream).sum(Kind::Float).backward();
            // Fused.
            let mut buffers = Buffers::default();
            (w2.sum(Kind::Float) + b2.sum(Kind::Float)).backward(); // create .grad
            let _ = w2.grad().zero_();
            let _ = b2.grad().zero_();
            let saved = forward(&x, &w2, &b2, 1, &mut buffers);
            assert!(saved.leaf.equal(&plain.detach()), "outputs differ");
            (&saved.leaf * &upstream).sum(Kind::Float).backward();
            backward(&saved, &w2, &b2, 1, &mut buffers);
            let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
            let scale = w1.grad().abs().max().double_value(&[]);
            assert_eq!(
                diff(&w1.grad(), &w2.grad()),
                0.0,
                "weight gradients differ (of {scale})"
            );
            assert_eq!(diff(&b1.grad(), &b2.grad()), 0.0, "bias gradients differ");
        }
    }
}
