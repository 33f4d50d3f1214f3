//! One layer of a built net: its parameters, batch-norm buffers and statistics, its inner layers
//! (a residual block's body and shortcut), and its forward.
//!
//! Batch normalisation normalises each micro-batch by that micro-batch's own mean and variance
//! (as DDP without SyncBN does). The running statistics do not move in the forward: each forward
//! in training adds the micro-batch's mean and unbiased variance to a sum and to a moving average
//! started at zero, and once per optimiser step the trainer moves the running statistics by the
//! rule of `model.batchnorm_running` (`Net::apply_batch_stats`): by the mean over micro-batches
//! and replicas, or as PyTorch's per-forward updates would have, in serial order. Either way
//! serial with micro-batches of the per-replica size equals dp, running statistics included.

use super::compute::{to_channels_last, Compute};
use crate::netspec::{LayerKind, LayerSpec};
use tch::{Kind, Tensor};

/// PyTorch's BatchNorm2d defaults.
const BN_EPS: f64 = 1e-5;
pub(super) const BN_MOMENTUM: f64 = 0.1;

/// One batch-norm layer's statistics of this step's training forwards.
pub struct LayerStats {
    /// The mean over the micro-batches of [mean (c), unbiased variance (c)].
    pub step_mean: Vec<f64>,
    /// PyTorch's per-forward updates applied to zero: sum over forwards j of
    /// momentum (1 - momentum)^(M-1-j) [mean, variance]_j.
    pub per_forward: Vec<f64>,
    /// M, the training forwards since the last take.
    pub forwards: usize,
}

pub struct Layer {
    pub spec: LayerSpec,
    /// Own parameters: weight, then bias where the layer has one.
    pub params: Vec<Tensor>,
    /// Batch norm: running_mean, running_var, num_batches_tracked (an f32 count here; files get i64).
    pub buffers: Vec<Tensor>,
    /// Batch norm in training: this step's sum over micro-batches of [mean (c), variance (c), 1],
    /// then the per-forward moving average of [mean, variance] from zero (`LayerStats`).
    stats: Option<Tensor>,
    /// A residual block's body layers, then its shortcut when it has one.
    pub inner: Vec<Layer>,
}

fn f32_opts() -> (Kind, tch::Device) {
    (Kind::Float, tch::Device::Cpu)
}

/// PyTorch's default initialisation: conv and linear weight and bias U(-1/sqrt(fan_in),
/// 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)); batch norm weight 1, bias 0.
fn init_params(kind: &LayerKind) -> Vec<Tensor> {
    let shapes = kind.param_shapes();
    let params = match kind {
        LayerKind::BatchNorm2d { c } => vec![Tensor::ones([*c], f32_opts()), Tensor::zeros([*c], f32_opts())],
        _ => {
            let bound = 1.0 / (kind.fan_in() as f64).sqrt();
            shapes
                .iter()
                .map(|s| Tensor::empty(&s[..], f32_opts()).uniform_(-bound, bound))
                .collect()
        }
    };
    params.into_iter().map(|p| p.set_requires_grad(true)).collect()
}

impl Layer {
    /// The layer of `spec`, its parameters drawn from `seed` (its inner layers' from seeds
    /// derived from it).
    pub fn build(spec: &LayerSpec, seed: u64) -> Layer {
        let params = {
            let _rng = crate::util::torch_rng();
            tch::manual_seed(seed as i64 & i64::MAX);
            init_params(&spec.kind)
        };
        let inner = spec
            .kind
            .inner()
            .iter()
            .enumerate()
            .map(|(j, l)| Layer::build(l, crate::util::mix_seed(&[seed, j as u64 + 1])))
            .collect();
        let (buffers, stats) = match spec.kind {
            LayerKind::BatchNorm2d { c } => (
                vec![
                    Tensor::zeros([c], f32_opts()),
                    Tensor::ones([c], f32_opts()),
                    Tensor::zeros([], f32_opts()),
                ],
                Some(Tensor::zeros([4 * c + 1], f32_opts())),
            ),
            _ => (vec![], None),
        };
        Layer {
            spec: spec.clone(),
            params,
            buffers,
            stats,
            inner,
        }
    }

    /// This layer's parameters and its inner layers', in state_dict order.
    pub fn all_params(&self) -> Vec<&Tensor> {
        let inner = self.inner.iter().flat_map(|l| l.all_params());
        self.params.iter().chain(inner).collect()
    }

    /// Buffers in state_dict order (this layer's, then its inner layers').
    pub fn all_buffers(&self) -> Vec<&Tensor> {
        let inner = self.inner.iter().flat_map(|l| l.all_buffers());
        self.buffers.iter().chain(inner).collect()
    }

    /// Batch-norm layers, this one and inner ones, in order.
    pub fn batch_norms(&self) -> Vec<&Layer> {
        let own = self.stats.is_some().then_some(self);
        own.into_iter()
            .chain(self.inner.iter().flat_map(|l| l.batch_norms()))
            .collect()
    }

    /// Batch norm: this step's statistics, the sums reset; None when no training forward ran
    /// since the last call.
    pub fn take_stats(&self) -> Option<LayerStats> {
        let stats = self.stats.as_ref()?;
        let n = stats.numel();
        let c2 = (n - 1) / 2;
        let mut v = vec![0f32; n];
        stats.copy_data(&mut v, n);
        let _ = tch::no_grad(|| stats.shallow_clone().zero_());
        let count = v[c2] as f64;
        (count > 0.0).then(|| LayerStats {
            step_mean: v[..c2].iter().map(|&x| x as f64 / count).collect(),
            per_forward: v[c2 + 1..].iter().map(|&x| x as f64).collect(),
            forwards: count as usize,
        })
    }

    /// Batch norm: running = keep x running + weight x `mean_var` (2c values); `forwards` added
    /// to the count of batches tracked.
    pub fn apply_stats(&self, mean_var: &[f64], keep: f64, weight: f64, forwards: usize) {
        let c = mean_var.len() / 2;
        let values: Vec<f32> = mean_var.iter().map(|&x| x as f32).collect();
        let t = Tensor::from_slice(&values);
        tch::no_grad(|| {
            for (i, buf) in self.buffers[..2].iter().enumerate() {
                let target = t.narrow(0, (i * c) as i64, c as i64);
                let mut running = buf.shallow_clone();
                let _ = running.g_mul_scalar_(keep);
                let _ = running.g_add_(&(target * weight));
            }
            let mut count = self.buffers[2].shallow_clone();
            let _ = count.g_add_scalar_(forwards as f64);
        });
    }

    fn batch_norm(&self, h: Tensor, train: bool) -> Tensor {
        let x = if h.kind() == Kind::Float {
            h
        } else {
            h.to_kind(Kind::Float)
        };
        let (w, b) = (Some(&self.params[0]), Some(&self.params[1]));
        if !train {
            return x.batch_norm(
                w,
                b,
                Some(&self.buffers[0]),
                Some(&self.buffers[1]),
                false,
                BN_MOMENTUM,
                BN_EPS,
                false,
            );
        }
        if let Some(stats) = &self.stats {
            tch::no_grad(|| {
                let (var, mean) = x.var_mean_correction([0, 2, 3].as_slice(), 1, false);
                let one = Tensor::ones([1], f32_opts());
                let c = mean.numel() as i64;
                let mut sums = stats.narrow(0, 0, 2 * c + 1);
                let _ = sums.g_add_(&Tensor::cat(&[&mean, &var, &one], 0));
                let mut average = stats.narrow(0, 2 * c + 1, 2 * c);
                let _ = average.g_mul_scalar_(1.0 - BN_MOMENTUM);
                let _ = average.g_add_(&(Tensor::cat(&[mean, var], 0) * BN_MOMENTUM));
            });
        }
        x.batch_norm(
            w,
            b,
            None::<&Tensor>,
            None::<&Tensor>,
            true,
            BN_MOMENTUM,
            BN_EPS,
            false,
        )
    }

    /// A convolution's forward in `compute` (channels-last, bf16).
    fn conv(&self, h: Tensor, compute: Compute) -> Tensor {
        let LayerKind::Conv2d { stride, pad, .. } = self.spec.kind else {
            unreachable!("conv() on a convolution")
        };
        let input = if compute.channels_last && h.size()[1] > 1 {
            to_channels_last(&h)
        } else {
            h
        };
        let bias = self.params.get(1).map(|b| compute.cast(b));
        let out = compute.cast(&input).conv2d(
            &compute.cast(&self.params[0]),
            bias,
            [stride, stride],
            [pad, pad],
            [1, 1],
            1,
        );
        // Channels-last weights give channels-last outputs (a one-channel input, e.g. MNIST,
        // included); this keeps the layers after the conv in NHWC regardless.
        if compute.channels_last {
            to_channels_last(&out)
        } else {
            out
        }
    }

    /// This layer alone (a max-pool right after a ReLU is taken by `run`).
    fn forward(&self, h: Tensor, train: bool, compute: Compute) -> Tensor {
        match self.spec.kind {
            LayerKind::Conv2d { .. } => self.conv(h, compute),
            LayerKind::BatchNorm2d { .. } => self.batch_norm(h, train),
            LayerKind::Relu => h.relu(),
            LayerKind::MaxPool2d { k, stride, pad } => {
                h.max_pool2d([k, k], [stride, stride], [pad, pad], [1, 1], false)
            }
            LayerKind::AvgPool2d { k, stride, pad } => {
                h.avg_pool2d([k, k], [stride, stride], [pad, pad], false, true, None)
            }
            LayerKind::GlobalAvgPool => h.adaptive_avg_pool2d([1, 1]),
            LayerKind::Flatten => h.flatten(1, -1),
            LayerKind::Dropout { p } if p > 0.0 => h.dropout(p, train),
            LayerKind::Dropout { .. } => h,
            LayerKind::Linear { .. } => {
                let bias = self.params.get(1).map(|b| compute.cast(b));
                compute.cast(&h).linear(&compute.cast(&self.params[0]), bias)
            }
            LayerKind::Residual { ref body, .. } => {
                let out = run(&self.inner[..body.len()], h.shallow_clone(), train, compute);
                let skip = match self.inner.get(body.len()) {
                    Some(shortcut) => shortcut.forward(h, train, compute),
                    None => h,
                };
                let kind = out.kind();
                out + skip.to_kind(kind)
            }
        }
    }
}

/// Runs `layers` in order on `x`.
pub fn run(layers: &[Layer], x: Tensor, train: bool, compute: Compute) -> Tensor {
    let mut h = x;
    let mut layers = layers.iter().peekable();
    while let Some(layer) = layers.next() {
        h = match (&layer.spec.kind, layers.peek().map(|l| &l.spec.kind)) {
            // ReLU then max-pool is max-pool then ReLU (ReLU is monotonic), bit for bit in
            // values and gradients, and the ReLU and its backward then touch a quarter of the
            // elements: MNIST serial step 15.6 -> 14.2 ms in libtorch alone.
            (LayerKind::Relu, Some(LayerKind::MaxPool2d { .. })) => {
                let pool = layers.next().expect("peeked");
                pool.forward(h, train, compute).relu()
            }
            _ => layer.forward(h, train, compute),
        };
    }
    h
}
