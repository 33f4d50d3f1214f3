//! A net (or a stage of one) built from layer specs: its parameters and buffers, forward in train
//! and eval mode, channels-last and bf16 compute, blocks of layers with parameters (for overlapped
//! averaging), batch-norm statistics per step, and each layer's measured time.

use super::compute::{to_channels_last, Compute};
use super::layer::{run, Layer, LayerStats};
use super::{LayerKind, LayerSpec};
use crate::config::BatchNormRunning;
use tch::{Kind, Tensor};

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

impl Net {
    /// Builds layers `range` of `specs`. Each layer is initialised from a seed derived from
    /// (seed, layer index), so a stage holds exactly the values the whole net would hold.
    pub fn build(specs: &[LayerSpec], range: std::ops::Range<usize>, seed: u64) -> Net {
        let layers = specs[range.clone()]
            .iter()
            .zip(range)
            .map(|(s, idx)| Layer::build(s, crate::util::mix_seed(&[seed, idx as u64, 0x1a7e])))
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
        let h = run(&self.layers[range], x.shallow_clone(), train, self.compute);
        if self.compute.bf16 && h.kind() != Kind::Float {
            return h.to_kind(Kind::Float);
        }
        h
    }

    /// Switches how the forward computes; with channels-last, conv weights get NHWC strides too.
    pub fn set_compute(&mut self, compute: Compute) {
        self.compute = compute;
        if !compute.channels_last {
            return;
        }
        let mut stack: Vec<&mut Layer> = self.layers.iter_mut().collect();
        while let Some(layer) = stack.pop() {
            // A one-input-channel weight too: its NHWC strides are what make oneDNN take the
            // channels-last path and return NHWC output, with no conversion of the output
            // forward nor of its gradient backward (MNIST step 15.6 -> 13.0 ms, libtorch alone).
            if let LayerKind::Conv2d { .. } = layer.spec.kind {
                let w = &layer.params[0];
                layer.params[0] = tch::no_grad(|| to_channels_last(w))
                    .detach()
                    .set_requires_grad(true);
            }
            stack.extend(layer.inner.iter_mut());
        }
    }

    /// When this net starts with conv (stride 1, with bias) -> ReLU -> 2x2 max-pool (stride 2, no
    /// padding) on an input of shape `input` whose conv output has even height and width, and
    /// computes in fp32 channels-last: the conv's padding, for the block `fused` computes outside
    /// autograd (see src/model/fused.rs). Any other net runs unfused.
    pub fn fused_first_block(&self, input: &[i64]) -> Option<i64> {
        let kinds: Vec<&LayerKind> = self.layers.iter().take(3).map(|l| &l.spec.kind).collect();
        let [conv @ LayerKind::Conv2d {
            stride: 1,
            pad,
            bias: true,
            ..
        }, LayerKind::Relu, LayerKind::MaxPool2d {
            k: 2,
            stride: 2,
            pad: 0,
        }] = kinds.as_slice()
        else {
            return None;
        };
        let out = (input.len() == 3).then(|| conv.output_shape(input))?;
        let even = out[1] % 2 == 0 && out[2] % 2 == 0;
        (even && self.compute.channels_last && !self.compute.bf16).then_some(*pad)
    }

    /// The net cut before each layer with parameters: every block holds one such layer and the
    /// parameter-free layers after it; `params` indexes `parameters()`. Backward can run block by
    /// block, and a block's gradients are final once its backward has run.
    pub fn param_blocks(&self) -> Vec<ParamBlock> {
        let starts = super::block_starts(&self.specs());
        let mut p = 0;
        (0..starts.len())
            .map(|b| {
                let layers = starts[b]..starts.get(b + 1).copied().unwrap_or(self.layers.len());
                let n: usize = self.layers[layers.clone()]
                    .iter()
                    .map(|l| l.all_params().len())
                    .sum();
                p += n;
                ParamBlock {
                    layers,
                    params: p - n..p,
                }
            })
            .collect()
    }

    fn specs(&self) -> Vec<LayerSpec> {
        self.layers.iter().map(|l| l.spec.clone()).collect()
    }

    /// Parameters in a fixed order with their state_dict names (`crate::netspec::state_entries`).
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let names = super::state_entries(&self.specs())
            .into_iter()
            .filter(|e| !e.buffer);
        names.map(|e| e.name).zip(self.parameters()).collect()
    }

    /// Batch-norm running statistics with their state_dict names.
    pub fn named_buffers(&self) -> Vec<(String, &Tensor)> {
        let names = super::state_entries(&self.specs())
            .into_iter()
            .filter(|e| e.buffer);
        let buffers = self.layers.iter().flat_map(|l| l.all_buffers());
        names.map(|e| e.name).zip(buffers).collect()
    }

    /// Parameters and buffers with their state_dict names, in state_dict order.
    pub fn named_state(&self) -> Vec<(String, &Tensor)> {
        let mut params = self.parameters().into_iter();
        let mut buffers = self.layers.iter().flat_map(|l| l.all_buffers());
        let entries = super::state_entries(&self.specs());
        let mut pick = |e: &crate::netspec::StateEntry| if e.buffer { buffers.next() } else { params.next() };
        entries
            .iter()
            .map(|e| (e.name.clone(), pick(e).expect("a tensor per state entry")))
            .collect()
    }

    /// Copies every parameter and buffer from `named` (a state_dict, e.g. `model.safetensors`),
    /// refusing a missing name or another shape.
    pub fn load_state(&self, named: &[(String, Tensor)]) -> Result<(), String> {
        for (name, t) in self.named_state() {
            let (_, src) = named
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| format!("no tensor `{name}`"))?;
            if src.size() != t.size() {
                return Err(format!(
                    "`{name}` has shape {:?}, the net's is {:?}",
                    src.size(),
                    t.size()
                ));
            }
            tch::no_grad(|| t.shallow_clone().copy_(src));
        }
        Ok(())
    }

    pub fn parameters(&self) -> Vec<&Tensor> {
        self.layers.iter().flat_map(|l| l.all_params()).collect()
    }

    pub fn parameter_count(&self) -> i64 {
        self.parameters().iter().map(|p| p.numel() as i64).sum()
    }

    /// This step's batch-norm statistics, every batch-norm layer's concatenated in order (None
    /// without batch norm or without a training forward); the sums reset.
    pub fn take_batch_stats(&self) -> Option<BatchStats> {
        let norms = self.layers.iter().flat_map(|l| l.batch_norms());
        let layers: Vec<LayerStats> = norms.filter_map(|l| l.take_stats()).collect();
        let forwards = layers.first()?.forwards;
        Some(BatchStats {
            step_mean: layers.iter().flat_map(|l| l.step_mean.iter().copied()).collect(),
            per_forward: layers
                .iter()
                .flat_map(|l| l.per_forward.iter().copied())
                .collect(),
            forwards,
        })
    }

    /// Moves every batch-norm layer's running statistics by `summed`, the sum over the stage's
    /// `replicas` of each one's `BatchStats::share` (as `take_batch_stats` laid them out), each
    /// replica having run `forwards` training forwards.
    pub fn apply_batch_stats(
        &self,
        rule: BatchNormRunning,
        summed: &[f64],
        replicas: usize,
        forwards: usize,
    ) {
        let m = super::layer::BN_MOMENTUM;
        let mean: Vec<f64>;
        let (values, keep, weight, tracked) = match rule {
            BatchNormRunning::StepMean => {
                mean = summed.iter().map(|s| s / replicas as f64).collect();
                (&mean[..], 1.0 - m, m, 1)
            }
            BatchNormRunning::PerForward => {
                let all = replicas * forwards;
                (summed, (1.0 - m).powi(all as i32), 1.0, all)
            }
        };
        let mut at = 0;
        for layer in self.layers.iter().flat_map(|l| l.batch_norms()) {
            let n = 2 * layer.buffers[0].numel();
            layer.apply_stats(&values[at..at + n], keep, weight, tracked);
            at += n;
        }
    }
}

/// One step's batch-norm statistics of one replica of a stage (`Net::take_batch_stats`).
pub struct BatchStats {
    pub step_mean: Vec<f64>,
    pub per_forward: Vec<f64>,
    pub forwards: usize,
}

impl BatchStats {
    /// What replica `replica` of `replicas` adds to the stage's sum under `rule`. `step_mean`: its
    /// mean over micro-batches. `per_forward`: its moving average from zero, decayed by the
    /// forwards the replicas after it run, so that the sum is what PyTorch's per-forward updates
    /// over every replica's micro-batches in serial order (replica by replica) would add.
    pub fn share(&self, rule: BatchNormRunning, replica: usize, replicas: usize) -> Vec<f64> {
        match rule {
            BatchNormRunning::StepMean => self.step_mean.clone(),
            BatchNormRunning::PerForward => {
                let later = ((replicas - 1 - replica) * self.forwards) as i32;
                let decay = (1.0 - super::layer::BN_MOMENTUM).powi(later);
                self.per_forward.iter().map(|x| x * decay).collect()
            }
        }
    }
}

/// Median seconds of `f` over `repeats` runs after two untimed ones (oneDNN creates its kernels
/// on first use).
pub fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut v: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Net {
    /// The one timing rule (stage split, `inspect`, `calibrate`): a block (a layer with
    /// parameters and the parameter-free layers after it) timed in place as training runs it,
    /// on input `x` (no input gradient for the net's first block). Returns (forward seconds,
    /// forward + backward seconds, the block's output). Timing layers one by one instead
    /// measured a lone ReLU's backward at 5.7 ms (batch 64), 20x what it costs in place.
    pub fn time_block(&self, x: &Tensor, block: &ParamBlock, repeats: usize) -> (f64, f64, Tensor) {
        let xi = match block.layers.start {
            0 => x.shallow_clone(),
            _ => x.detach().set_requires_grad(true),
        };
        let y = self.forward_layers(&xi, true, block.layers.clone()).detach();
        let g = y.ones_like();
        let forward = median_seconds(repeats, || {
            let _ = self.forward_layers(&xi, true, block.layers.clone());
        });
        let both = median_seconds(repeats, || {
            let y = self.forward_layers(&xi, true, block.layers.clone());
            super::native::backward_with_grad(&y, &g).expect("block backward");
        });
        (forward, both, y)
    }
}

/// Measured forward + backward seconds per layer on a batch of `batch` random images (median of
/// `repeats`), by the one timing rule (`Net::time_block`): each block's time goes to its first
/// layer, the others get zero (the measured split cuts only where blocks start).
pub fn measure_layer_seconds(specs: &[LayerSpec], input: [i64; 3], batch: i64, repeats: usize) -> Vec<f64> {
    let net = Net::build(specs, 0..specs.len(), 0);
    let mut x = {
        let _rng = crate::util::torch_rng();
        tch::manual_seed(0);
        Tensor::randn(
            [batch, input[0], input[1], input[2]],
            (Kind::Float, tch::Device::Cpu),
        )
    };
    let mut out = vec![0.0; specs.len()];
    for block in net.param_blocks() {
        let (_, both, y) = net.time_block(&x, &block, repeats);
        out[block.layers.start] = both;
        x = y;
    }
    out
}
