//! A net as data: the layer kinds, their shapes, parameter names and costs, read from the config's
//! `model.layers` (`parse`) or from a preset written in the same form (`presets`). The config
//! reads nets with it, the model builds them, the planner and `inspect` cost them: one spec.
//!
//! State names follow a PyTorch `state_dict` of the module `partrain export` writes: layers with
//! parameters are numbered by kind (`conv1`, `bn1`, `fc1`, `res1`), a residual block's layers are
//! `res1.body.<i>` and its projection `res1.shortcut`, so `conv1.weight` or
//! `res1.body.1.running_mean` load into PyTorch with `strict=True`.

pub mod parse;
pub mod presets;
pub mod pytorch;

pub use parse::parse_layers;

#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    Conv2d {
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        pad: i64,
        bias: bool,
    },
    /// Batch normalisation over `c` channels (PyTorch's defaults: eps 1e-5, momentum 0.1).
    BatchNorm2d {
        c: i64,
    },
    Relu,
    MaxPool2d {
        k: i64,
        stride: i64,
        pad: i64,
    },
    AvgPool2d {
        k: i64,
        stride: i64,
        pad: i64,
    },
    /// Mean over height and width: [c, h, w] -> [c, 1, 1].
    GlobalAvgPool,
    Flatten,
    Dropout {
        p: f64,
    },
    Linear {
        fin: i64,
        fout: i64,
        bias: bool,
    },
    /// `body(x) + shortcut(x)`: the shortcut is the identity, or a 1x1 strided convolution
    /// (no bias) where the body changes the shape.
    Residual {
        body: Vec<LayerSpec>,
        shortcut: Option<Box<LayerSpec>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// The PyTorch attribute name for layers with state (`conv1`, `body.0`), else the kind (`relu`).
    pub name: String,
    pub kind: LayerKind,
}

/// One entry of the state_dict: a trainable parameter or a buffer (batch-norm running statistics).
#[derive(Debug, Clone, PartialEq)]
pub struct StateEntry {
    pub name: String,
    pub shape: Vec<i64>,
    pub buffer: bool,
}

/// A whole net: its layers for images of `input` shape, and its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSpec {
    /// The preset's name, or `custom` for `model.layers`.
    pub name: String,
    pub layers: Vec<LayerSpec>,
    pub input: [i64; 3],
    /// A hash of the layers' kinds, sizes and names (dropout rates excluded: they change no
    /// weight): checkpoints, calibration files and the planner compare it.
    pub id: String,
}

impl NetSpec {
    pub fn new(name: &str, layers: Vec<LayerSpec>, input: [i64; 3]) -> NetSpec {
        let id = identity(&layers, input);
        NetSpec {
            name: name.into(),
            layers,
            input,
            id,
        }
    }
    /// `mnist_cnn (net 3f09c2d1a4b7)`: what messages call the net.
    pub fn label(&self) -> String {
        format!("{} (net {})", self.name, self.id)
    }
}

/// 48 bits of FNV-1a over the layers' canonical text, in hex.
fn identity(layers: &[LayerSpec], input: [i64; 3]) -> String {
    let mut text = format!("{input:?}");
    for l in layers {
        text.push_str(&canonical(l));
    }
    format!("{:012x}", crate::util::fnv1a(text.as_bytes()) >> 16)
}

fn canonical(l: &LayerSpec) -> String {
    match &l.kind {
        LayerKind::Dropout { .. } => format!("{}:dropout;", l.name),
        LayerKind::Residual { body, shortcut } => {
            let inner: String = body.iter().chain(shortcut.as_deref()).map(canonical).collect();
            format!("{}:residual[{inner}];", l.name)
        }
        k => format!("{}:{k:?};", l.name),
    }
}

/// Output size of a window of `k` sliding by `stride` over `n` cells padded by `pad` each side.
pub fn window_out(n: i64, k: i64, stride: i64, pad: i64) -> i64 {
    (n + 2 * pad - k).div_euclid(stride) + 1
}

impl LayerKind {
    /// Output shape (without the batch dimension) for input shape `s` (checked by `parse`).
    pub fn output_shape(&self, s: &[i64]) -> Vec<i64> {
        match self {
            LayerKind::Conv2d {
                cout, k, stride, pad, ..
            } => vec![
                *cout,
                window_out(s[1], *k, *stride, *pad),
                window_out(s[2], *k, *stride, *pad),
            ],
            LayerKind::MaxPool2d { k, stride, pad } | LayerKind::AvgPool2d { k, stride, pad } => {
                vec![
                    s[0],
                    window_out(s[1], *k, *stride, *pad),
                    window_out(s[2], *k, *stride, *pad),
                ]
            }
            LayerKind::GlobalAvgPool => vec![s[0], 1, 1],
            LayerKind::Flatten => vec![s.iter().product()],
            LayerKind::Linear { fout, .. } => vec![*fout],
            LayerKind::Residual { body, .. } => body.iter().fold(s.to_vec(), |x, l| l.kind.output_shape(&x)),
            LayerKind::Relu | LayerKind::Dropout { .. } | LayerKind::BatchNorm2d { .. } => s.to_vec(),
        }
    }

    /// Shapes of this layer's own parameters (weight, then bias where it has one), PyTorch's layout.
    pub fn param_shapes(&self) -> Vec<Vec<i64>> {
        match *self {
            LayerKind::Conv2d {
                cin, cout, k, bias, ..
            } => [vec![cout, cin, k, k], vec![cout]]
                .into_iter()
                .take(1 + bias as usize)
                .collect(),
            LayerKind::Linear { fin, fout, bias } => [vec![fout, fin], vec![fout]]
                .into_iter()
                .take(1 + bias as usize)
                .collect(),
            LayerKind::BatchNorm2d { c } => vec![vec![c], vec![c]],
            _ => vec![],
        }
    }

    /// PyTorch's default initialisation bound's fan-in for conv and linear weights.
    pub fn fan_in(&self) -> i64 {
        match *self {
            LayerKind::Conv2d { cin, k, .. } => cin * k * k,
            LayerKind::Linear { fin, .. } => fin,
            _ => 1,
        }
    }

    /// The layers inside this one (a residual block's body, then its shortcut).
    pub fn inner(&self) -> Vec<&LayerSpec> {
        match self {
            LayerKind::Residual { body, shortcut } => body.iter().chain(shortcut.as_deref()).collect(),
            _ => vec![],
        }
    }

    pub fn parameter_count(&self) -> i64 {
        let own: i64 = self
            .param_shapes()
            .iter()
            .map(|s| s.iter().product::<i64>())
            .sum();
        own + self.inner().iter().map(|l| l.kind.parameter_count()).sum::<i64>()
    }

    /// Multiply-adds of one image's forward pass for input shape `s`.
    pub fn macs(&self, s: &[i64]) -> i64 {
        let out = self.output_shape(s);
        match self {
            LayerKind::Conv2d { cin, k, .. } => out.iter().product::<i64>() * cin * k * k,
            LayerKind::Linear { fin, fout, .. } => fin * fout,
            LayerKind::Residual { body, shortcut } => {
                let mut x = s.to_vec();
                let mut sum = 0;
                for l in body {
                    sum += l.kind.macs(&x);
                    x = l.kind.output_shape(&x);
                }
                sum + shortcut.as_ref().map_or(0, |c| c.kind.macs(s))
            }
            _ => 0,
        }
    }

    /// The kind and its sizes, one line (a residual block by its length and shortcut).
    pub fn short(&self) -> String {
        match self {
            LayerKind::Residual { body, shortcut } => format!(
                "Residual {{ {} layers, {} shortcut }}",
                body.len(),
                if shortcut.is_some() {
                    "1x1 conv"
                } else {
                    "identity"
                }
            ),
            k => format!("{k:?}"),
        }
    }

    /// The name users write in `model.layers`.
    pub fn yaml_name(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv",
            LayerKind::BatchNorm2d { .. } => "batchnorm",
            LayerKind::Relu => "relu",
            LayerKind::MaxPool2d { .. } => "maxpool",
            LayerKind::AvgPool2d { .. } | LayerKind::GlobalAvgPool => "avgpool",
            LayerKind::Flatten => "flatten",
            LayerKind::Dropout { .. } => "dropout",
            LayerKind::Linear { .. } => "linear",
            LayerKind::Residual { .. } => "residual",
        }
    }
}

impl LayerSpec {
    /// This layer's state_dict entries (its own, then its inner layers'), names under `prefix`.
    pub fn state(&self, prefix: &str) -> Vec<StateEntry> {
        let base = format!("{prefix}{}.", self.name);
        let entry = |suffix: &str, shape: &[i64], buffer| StateEntry {
            name: format!("{base}{suffix}"),
            shape: shape.to_vec(),
            buffer,
        };
        let mut out: Vec<StateEntry> = self
            .kind
            .param_shapes()
            .iter()
            .zip(["weight", "bias"])
            .map(|(shape, suffix)| entry(suffix, shape, false))
            .collect();
        if let LayerKind::BatchNorm2d { c } = self.kind {
            out.push(entry("running_mean", &[c], true));
            out.push(entry("running_var", &[c], true));
            out.push(entry("num_batches_tracked", &[], true));
        }
        for inner in self.kind.inner() {
            out.extend(inner.state(&base));
        }
        out
    }
}

/// The state_dict entries of `layers`, in order.
pub fn state_entries(layers: &[LayerSpec]) -> Vec<StateEntry> {
    layers.iter().flat_map(|l| l.state("")).collect()
}

/// (input shape, output shape, activation elements) per sample of `range` of `layers`.
pub fn stage_shapes(
    layers: &[LayerSpec],
    range: std::ops::Range<usize>,
    input: [i64; 3],
) -> (Vec<i64>, Vec<i64>, i64) {
    let mut shape = input.to_vec();
    let mut in_shape = shape.clone();
    let mut elems = 0;
    for (i, s) in layers.iter().enumerate().take(range.end) {
        if i == range.start {
            in_shape = shape.clone();
        }
        shape = s.kind.output_shape(&shape);
        if range.contains(&i) {
            elems += shape.iter().product::<i64>();
        }
    }
    (in_shape, shape, elems)
}

/// Where blocks start: layer 0 and every layer with parameters. A block (a layer with parameters
/// and the parameter-free layers after it) is what backward finishes at once, what the timing rule
/// times, and where a measured stage split may cut.
pub fn block_starts(layers: &[LayerSpec]) -> Vec<usize> {
    (0..layers.len())
        .filter(|&i| i == 0 || layers[i].kind.parameter_count() > 0)
        .collect()
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

/// Per-layer multiply-adds for balancing pipeline stages (element-wise layers count one
/// operation per output element, so they are never free).
pub fn macs_costs(specs: &[LayerSpec], input: [i64; 3]) -> Vec<f64> {
    describe(specs, input)
        .iter()
        .map(|l| l.macs.max(l.output_shape.iter().product::<i64>()) as f64)
        .collect()
}

pub fn describe(specs: &[LayerSpec], input: [i64; 3]) -> Vec<LayerInfo> {
    let mut shape = input.to_vec();
    let mut seen_params = false;
    specs
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let macs = s.kind.macs(&shape);
            shape = s.kind.output_shape(&shape);
            let has_params = s.kind.parameter_count() > 0;
            let first = has_params && !seen_params;
            seen_params |= has_params;
            LayerInfo {
                index,
                name: s.name.clone(),
                kind: s.kind.short(),
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
mod tests;
