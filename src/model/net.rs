//! A net (or a stage of one) built from layer specs: its parameters, forward in train and eval
//! mode, channels-last and bf16 compute, blocks of layers with parameters (for overlapped
//! averaging), and each layer's measured time.

use super::{LayerKind, LayerSpec};
use tch::{Kind, Tensor};

/// One layer with its parameters (weight, bias) where it has any.
pub struct Layer {
    pub spec: LayerSpec,
    pub params: Vec<Tensor>,
}

/// A run of layers whose parameter gradients complete together in backward.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamBlock {
    pub layers: std::ops::Range<usize>,
    pub params: std::ops::Range<usize>,
}

/// An ordered list of layers: a whole net or one pipeline stage's slice of it.
pub struct Net {
    pub layers: Vec<Layer>,
    pub compute: Compute,
}

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

impl Net {
    /// Builds layers `range` of `specs`. Each layer is initialised from a seed derived from
    /// (seed, layer index), so a stage holds exactly the values the whole net would hold.
    /// Initialisation is PyTorch's default for Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    /// for weight (kaiming_uniform with a = sqrt(5)) and bias.
    pub fn build(specs: &[LayerSpec], range: std::ops::Range<usize>, seed: u64) -> Net {
        let layers = specs[range.clone()]
            .iter()
            .zip(range)
            .map(|(s, idx)| {
                tch::manual_seed(crate::util::mix_seed(&[seed, idx as u64, 0x1a7e]) as i64 & i64::MAX);
                let uniform = |shape: &[i64], fan_in: i64| {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    Tensor::empty(shape, (Kind::Float, tch::Device::Cpu))
                        .uniform_(-bound, bound)
                        .set_requires_grad(true)
                };
                let fan_in = s.kind.fan_in();
                let params = s
                    .kind
                    .param_shapes()
                    .iter()
                    .map(|shape| uniform(shape, fan_in))
                    .collect();
                Layer {
                    spec: s.clone(),
                    params,
                }
            })
            .collect();
        Net {
            layers,
            compute: Compute::default(),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_layers(x, train, 0..self.layers.len())
    }

    /// Runs `range` of this net's layers (used to run backward in blocks).
    pub fn forward_layers(&self, x: &Tensor, train: bool, range: std::ops::Range<usize>) -> Tensor {
        let bf16 = self.compute.bf16;
        let cast = |t: &Tensor| {
            if bf16 {
                t.to_kind(Kind::BFloat16)
            } else {
                t.shallow_clone()
            }
        };
        let mut h = x.shallow_clone();
        let mut layers = self.layers[range].iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer.spec.kind {
                LayerKind::Conv2d { pad, .. } => self.conv(layer, h, pad),
                // ReLU then max-pool is max-pool then ReLU (ReLU is monotonic), bit for bit in
                // values and gradients, and the ReLU and its backward then touch a quarter of the
                // elements: MNIST serial step 15.6 -> 14.2 ms in libtorch alone.
                LayerKind::Relu => match layers.peek().map(|l| &l.spec.kind) {
                    Some(&LayerKind::MaxPool2d { k }) => {
                        layers.next();
                        h.max_pool2d([k, k], [k, k], [0, 0], [1, 1], false).relu()
                    }
                    _ => h.relu(),
                },
                LayerKind::MaxPool2d { k } => h.max_pool2d([k, k], [k, k], [0, 0], [1, 1], false),
                LayerKind::Flatten => h.flatten(1, -1),
                LayerKind::Dropout { p } => {
                    if p > 0.0 {
                        h.dropout(p, train)
                    } else {
                        h
                    }
                }
                LayerKind::Linear { .. } => {
                    cast(&h).linear(&cast(&layer.params[0]), Some(&cast(&layer.params[1])))
                }
            };
        }
        if bf16 && h.kind() != Kind::Float {
            h = h.to_kind(Kind::Float);
        }
        h
    }

    /// A convolution layer's forward in this net's compute (channels-last, bf16).
    fn conv(&self, layer: &Layer, h: Tensor, pad: i64) -> Tensor {
        let Compute { channels_last, bf16 } = self.compute;
        let cast = |t: &Tensor| {
            if bf16 {
                t.to_kind(Kind::BFloat16)
            } else {
                t.shallow_clone()
            }
        };
        let input = if channels_last && h.size()[1] > 1 {
            to_channels_last(&h)
        } else {
            h
        };
        let out = cast(&input).conv2d(
            &cast(&layer.params[0]),
            Some(&cast(&layer.params[1])),
            [1, 1],
            [pad, pad],
            [1, 1],
            1,
        );
        // Channels-last weights give channels-last outputs (a one-channel input, e.g. MNIST,
        // included); this keeps the layers after the conv in NHWC regardless.
        if channels_last {
            to_channels_last(&out)
        } else {
            out
        }
    }

    /// Switches how the forward computes; with channels-last, conv weights get NHWC strides too.
    pub fn set_compute(&mut self, compute: Compute) {
        self.compute = compute;
        if compute.channels_last {
            for layer in &mut self.layers {
                // A one-input-channel weight too: its NHWC strides are what make oneDNN take the
                // channels-last path and return NHWC output, with no conversion of the output
                // forward nor of its gradient backward (MNIST step 15.6 -> 13.0 ms, libtorch alone).
                if let LayerKind::Conv2d { .. } = layer.spec.kind {
                    let w = &layer.params[0];
                    layer.params[0] = tch::no_grad(|| to_channels_last(w))
                        .detach()
                        .set_requires_grad(true);
                }
            }
        }
    }

    /// When this net starts with conv -> ReLU -> 2x2 max-pool and computes in fp32 channels-last,
    /// the conv's padding: the block `fused` computes outside autograd (see src/model/fused.rs).
    pub fn fused_first_block(&self) -> Option<i64> {
        let kinds: Vec<&LayerKind> = self.layers.iter().take(3).map(|l| &l.spec.kind).collect();
        match kinds.as_slice() {
            [LayerKind::Conv2d { pad, .. }, LayerKind::Relu, LayerKind::MaxPool2d { k: 2 }]
                if self.compute.channels_last && !self.compute.bf16 =>
            {
                Some(*pad)
            }
            _ => None,
        }
    }

    /// The net cut before each layer with parameters: every block holds one such layer and the
    /// parameter-free layers after it; `params` indexes `parameters()`. Backward can run block by
    /// block, and a block's gradients are final once its backward has run.
    pub fn param_blocks(&self) -> Vec<ParamBlock> {
        let mut blocks: Vec<ParamBlock> = Vec::new();
        let mut p = 0;
        for (i, layer) in self.layers.iter().enumerate() {
            let n = layer.params.len();
            match blocks.last_mut() {
                Some(last) if n == 0 => last.layers.end = i + 1,
                _ => blocks.push(ParamBlock {
                    layers: i..i + 1,
                    params: p..p + n,
                }),
            }
            p += n;
        }
        blocks
    }

    /// Parameters in a fixed order with their state_dict names.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for layer in &self.layers {
            for (p, suffix) in layer.params.iter().zip(["weight", "bias"]) {
                out.push((format!("{}.{}", layer.spec.name, suffix), p));
            }
        }
        out
    }

    pub fn parameters(&self) -> Vec<&Tensor> {
        self.layers.iter().flat_map(|l| l.params.iter()).collect()
    }

    pub fn parameter_count(&self) -> i64 {
        self.parameters().iter().map(|p| p.numel() as i64).sum()
    }
}

/// Measured forward + backward seconds of each layer on a batch of `batch` random images
/// (median of `repeats`), on this machine with the current thread settings.
pub fn measure_layer_seconds(specs: &[LayerSpec], input: [i64; 3], batch: i64, repeats: usize) -> Vec<f64> {
    let net = Net::build(specs, 0..specs.len(), 0);
    let mut shape = vec![batch];
    shape.extend_from_slice(&input);
    let mut x = Tensor::randn(&shape, (Kind::Float, tch::Device::Cpu));
    let mut out = Vec::new();
    for i in 0..specs.len() {
        let mut times = Vec::new();
        let mut y = x.shallow_clone();
        // Two untimed rounds first: oneDNN creates its kernels on first use.
        for round in 0..repeats.max(1) + 2 {
            let xi = x.detach().set_requires_grad(true);
            let t = std::time::Instant::now();
            y = net.forward_layers(&xi, true, i..i + 1);
            y.sum(Kind::Float).backward();
            if round >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
            for p in &net.layers[i].params {
                let mut g = p.grad();
                let _ = g.zero_();
            }
        }
        times.sort_by(f64::total_cmp);
        out.push(times[times.len() / 2]);
        x = y.detach();
    }
    out
}
