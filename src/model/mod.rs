//! The seed nets as ordered layer lists, so the same list can be run whole (serial, dp) or cut
//! into pipeline stages. Parameter names follow a PyTorch `state_dict` of the same net
//! (`conv1.weight`, `fc2.bias`, ...), so `model.safetensors` loads into PyTorch with `strict=True`.
//!
//! Expected accuracy (seed-001 settings: SGD lr 0.01, momentum 0.9, batch 64):
//! mnist_cnn reaches >= 98.5% MNIST test accuracy after 3 epochs and >= 99.0% after 10;
//! on Fashion-MNIST >= 90% after 10 epochs.

pub mod fused;
pub mod native;

use crate::config::Preset;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    Conv2d { cin: i64, cout: i64, k: i64, pad: i64 },
    Relu,
    MaxPool2d { k: i64 },
    Flatten,
    Dropout { p: f64 },
    Linear { fin: i64, fout: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// The PyTorch attribute name for layers with parameters (`conv1`), else the kind (`relu`).
    pub name: String,
    pub kind: LayerKind,
}

fn spec(name: &str, kind: LayerKind) -> LayerSpec {
    LayerSpec {
        name: name.into(),
        kind,
    }
}

/// The preset's layers. `dropout = 0` removes the dropout layer's effect but keeps it in the list
/// (so layer indices, and therefore stage boundaries, do not depend on it).
pub fn preset_layers(preset: Preset, dropout: f64) -> Vec<LayerSpec> {
    use LayerKind::*;
    match preset {
        // seed 001: Conv(1,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - Flatten - FC(3136,128)-ReLU-Dropout - FC(128,10)
        Preset::MnistCnn => vec![
            spec(
                "conv1",
                Conv2d {
                    cin: 1,
                    cout: 32,
                    k: 3,
                    pad: 1,
                },
            ),
            spec("relu", Relu),
            spec("pool", MaxPool2d { k: 2 }),
            spec(
                "conv2",
                Conv2d {
                    cin: 32,
                    cout: 64,
                    k: 3,
                    pad: 1,
                },
            ),
            spec("relu", Relu),
            spec("pool", MaxPool2d { k: 2 }),
            spec("flatten", Flatten),
            spec("fc1", Linear { fin: 3136, fout: 128 }),
            spec("relu", Relu),
            spec("dropout", Dropout { p: dropout }),
            spec("fc2", Linear { fin: 128, fout: 10 }),
        ],
        // seed 002: Conv(3,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - Flatten - FC(4096,256)-ReLU - FC(256,10)
        Preset::CifarCnn => vec![
            spec(
                "conv1",
                Conv2d {
                    cin: 3,
                    cout: 32,
                    k: 3,
                    pad: 1,
                },
            ),
            spec("relu", Relu),
            spec("pool", MaxPool2d { k: 2 }),
            spec(
                "conv2",
                Conv2d {
                    cin: 32,
                    cout: 64,
                    k: 3,
                    pad: 1,
                },
            ),
            spec("relu", Relu),
            spec("pool", MaxPool2d { k: 2 }),
            spec("flatten", Flatten),
            spec("fc1", Linear { fin: 4096, fout: 256 }),
            spec("relu", Relu),
            spec("fc2", Linear { fin: 256, fout: 10 }),
        ],
    }
}

impl LayerKind {
    /// Output shape (without the batch dimension) for input shape `s`.
    pub fn output_shape(&self, s: &[i64]) -> Vec<i64> {
        match *self {
            LayerKind::Conv2d { cout, k, pad, .. } => {
                vec![cout, s[1] + 2 * pad - k + 1, s[2] + 2 * pad - k + 1]
            }
            LayerKind::MaxPool2d { k } => vec![s[0], s[1] / k, s[2] / k],
            LayerKind::Flatten => vec![s.iter().product()],
            LayerKind::Linear { fout, .. } => vec![fout],
            LayerKind::Relu | LayerKind::Dropout { .. } => s.to_vec(),
        }
    }
    /// Shapes of (weight, bias), PyTorch's layout; empty for layers without parameters.
    pub fn param_shapes(&self) -> Vec<Vec<i64>> {
        match *self {
            LayerKind::Conv2d { cin, cout, k, .. } => vec![vec![cout, cin, k, k], vec![cout]],
            LayerKind::Linear { fin, fout } => vec![vec![fout, fin], vec![fout]],
            _ => vec![],
        }
    }
    fn fan_in(&self) -> i64 {
        match *self {
            LayerKind::Conv2d { cin, k, .. } => cin * k * k,
            LayerKind::Linear { fin, .. } => fin,
            _ => 1,
        }
    }
    pub fn parameter_count(&self) -> i64 {
        match *self {
            LayerKind::Conv2d { cin, cout, k, .. } => cout * cin * k * k + cout,
            LayerKind::Linear { fin, fout } => fin * fout + fout,
            _ => 0,
        }
    }
    /// Multiply-adds of one image's forward pass, given this layer's output shape.
    pub fn macs(&self, out: &[i64]) -> i64 {
        match *self {
            LayerKind::Conv2d { cin, k, .. } => out.iter().product::<i64>() * cin * k * k,
            LayerKind::Linear { fin, fout } => fin * fout,
            _ => 0,
        }
    }
}

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
        let Compute { channels_last, bf16 } = self.compute;
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
                LayerKind::Conv2d { pad, .. } => {
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
                    // Channels-last weights give channels-last outputs (a one-channel input, e.g.
                    // MNIST, included); this keeps the layers after the conv in NHWC regardless.
                    if channels_last {
                        to_channels_last(&out)
                    } else {
                        out
                    }
                }
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
    /// the conv's padding: the block `fused` computes outside autograd (see src/fused.rs).
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

/// Contiguous split of layers with the given per-layer `costs` into `stages` non-empty stages
/// minimising the most expensive stage; returns the first layer of stages 1.. (the boundaries).
pub fn balance(costs: &[f64], stages: usize) -> Vec<usize> {
    let n = costs.len();
    assert!(stages >= 1 && stages <= n);
    let mut prefix = vec![0.0];
    for c in costs {
        prefix.push(prefix.last().unwrap() + c);
    }
    // best[k][j]: lowest max-stage cost for the first j layers in k stages; cut[k][j]: last start.
    let mut best = vec![vec![f64::INFINITY; n + 1]; stages + 1];
    let mut cut = vec![vec![0usize; n + 1]; stages + 1];
    best[0][0] = 0.0;
    for k in 1..=stages {
        for j in k..=n {
            for i in (k - 1)..j {
                let c = best[k - 1][i].max(prefix[j] - prefix[i]);
                if c < best[k][j] {
                    best[k][j] = c;
                    cut[k][j] = i;
                }
            }
        }
    }
    let mut bounds = Vec::new();
    let mut j = n;
    for k in (2..=stages).rev() {
        j = cut[k][j];
        bounds.push(j);
    }
    bounds.reverse();
    bounds
}

/// Per-layer multiply-adds for balancing pipeline stages (element-wise layers count one
/// operation per output element, so they are never free).
pub fn macs_costs(specs: &[LayerSpec], input: [i64; 3]) -> Vec<f64> {
    describe(specs, input)
        .iter()
        .map(|l| l.macs.max(l.output_shape.iter().product::<i64>()) as f64)
        .collect()
}

/// Ranges of layer indices per stage, from boundaries.
pub fn stage_ranges(num_layers: usize, bounds: &[usize]) -> Vec<std::ops::Range<usize>> {
    let starts: Vec<usize> = std::iter::once(0).chain(bounds.iter().copied()).collect();
    let ends: Vec<usize> = bounds
        .iter()
        .copied()
        .chain(std::iter::once(num_layers))
        .collect();
    starts.into_iter().zip(ends).map(|(a, b)| a..b).collect()
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

/// One row of `partrain inspect`.
pub struct LayerInfo {
    pub index: usize,
    pub name: String,
    pub kind: String,
    pub output_shape: Vec<i64>,
    pub parameters: i64,
    /// Forward multiply-adds per image.
    pub macs: i64,
    /// Backward multiply-adds per image for the weight gradient (as many as forward for a layer
    /// with parameters) and for the input gradient (the same again, except for the first layer
    /// with parameters, whose input is the data and needs no gradient).
    pub weight_grad_macs: i64,
    pub input_grad_macs: i64,
}

impl LayerInfo {
    /// Floating-point operations of one training image through this layer (2 per multiply-add).
    pub fn training_flop(&self) -> i64 {
        2 * (self.macs + self.weight_grad_macs + self.input_grad_macs)
    }
}

/// Floating-point operations per training image of the whole net (forward, weight gradients and
/// input gradients): 25.0 MFLOP for mnist_cnn.
pub fn training_flop_per_image(specs: &[LayerSpec], input: [i64; 3]) -> i64 {
    describe(specs, input).iter().map(LayerInfo::training_flop).sum()
}

pub fn describe(specs: &[LayerSpec], input: [i64; 3]) -> Vec<LayerInfo> {
    let mut shape = input.to_vec();
    let mut seen_params = false;
    specs
        .iter()
        .enumerate()
        .map(|(index, s)| {
            shape = s.kind.output_shape(&shape);
            let macs = s.kind.macs(&shape);
            let has_params = s.kind.parameter_count() > 0;
            let first = has_params && !seen_params;
            seen_params |= has_params;
            LayerInfo {
                index,
                name: s.name.clone(),
                kind: format!("{:?}", s.kind),
                output_shape: shape.clone(),
                parameters: s.kind.parameter_count(),
                macs,
                weight_grad_macs: if has_params { macs } else { 0 },
                input_grad_macs: if has_params && !first { macs } else { 0 },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_seeds() {
        let m = describe(&preset_layers(Preset::MnistCnn, 0.25), [1, 28, 28]);
        assert_eq!(m.iter().map(|l| l.parameters).sum::<i64>(), 421_642);
        assert_eq!(m.last().unwrap().output_shape, vec![10]);
        let c = describe(&preset_layers(Preset::CifarCnn, 0.0), [3, 32, 32]);
        assert_eq!(c.iter().map(|l| l.parameters).sum::<i64>(), 1_070_794);
        // DESIGN: ~4.24 M MACs per MNIST image, 85% in conv2; ~6.65 M for CIFAR.
        let macs: i64 = m.iter().map(|l| l.macs).sum();
        assert!((4_200_000..4_300_000).contains(&macs), "{macs}");
        let cmacs: i64 = c.iter().map(|l| l.macs).sum();
        assert!((6_600_000..6_700_000).contains(&cmacs), "{cmacs}");
        // 25.0 MFLOP per training image: forward, weight gradients, and input gradients for all
        // but conv1 (225,792 multiply-adds), times 2.
        assert_eq!(
            training_flop_per_image(&preset_layers(Preset::MnistCnn, 0.25), [1, 28, 28]),
            2 * (3 * 4_241_152 - 225_792)
        );
    }

    #[test]
    fn balance_minimises_the_largest_stage() {
        assert_eq!(balance(&[1.0, 1.0, 1.0, 1.0], 2), vec![2]);
        assert_eq!(balance(&[5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2), vec![1]);
        assert_eq!(balance(&[1.0, 1.0, 8.0, 1.0], 3), vec![2, 3]);
        let b = balance(&[1.0; 11], 4);
        assert_eq!(b.len(), 3);
        assert_eq!(stage_ranges(11, &b).iter().map(|r| r.len()).max(), Some(3));
        assert_eq!(stage_ranges(11, &[3, 7]), vec![0..3, 3..7, 7..11]);
    }

    #[test]
    fn built_net_matches_spec_and_stage_slices_match_whole() {
        let specs = preset_layers(Preset::MnistCnn, 0.0);
        let net = Net::build(&specs, 0..specs.len(), 5);
        assert_eq!(net.parameter_count(), 421_642);
        let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "fc1.weight",
                "fc1.bias",
                "fc2.weight",
                "fc2.bias"
            ]
        );
        let blocks: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = net
            .param_blocks()
            .into_iter()
            .map(|b| (b.layers, b.params))
            .collect();
        assert_eq!(
            blocks,
            vec![(0..3, 0..2), (3..7, 2..4), (7..10, 4..6), (10..11, 6..8)]
        );
        let tail = Net::build(&specs, 7..specs.len(), 5);
        assert!(tail.layers[0].params[0].equal(&net.layers[7].params[0]));
        let y = net.forward(
            &Tensor::zeros([2, 1, 28, 28], (Kind::Float, tch::Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), vec![2, 10]);
    }
}
