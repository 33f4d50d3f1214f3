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

mod net;

pub use net::{
    dense, is_channels_last, measure_layer_seconds, to_channels_last, Compute, Layer, Net, ParamBlock,
};

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

/// A 3x3 convolution with padding 1 (both seed nets' convolutions).
fn conv3(name: &str, cin: i64, cout: i64) -> LayerSpec {
    spec(
        name,
        LayerKind::Conv2d {
            cin,
            cout,
            k: 3,
            pad: 1,
        },
    )
}

/// The two conv -> ReLU -> 2x2 max-pool blocks both seed nets start with, on `cin` channels.
fn conv_blocks(cin: i64) -> Vec<LayerSpec> {
    use LayerKind::*;
    vec![
        conv3("conv1", cin, 32),
        spec("relu", Relu),
        spec("pool", MaxPool2d { k: 2 }),
        conv3("conv2", 32, 64),
        spec("relu", Relu),
        spec("pool", MaxPool2d { k: 2 }),
        spec("flatten", Flatten),
    ]
}

/// The preset's layers. `dropout = 0` removes the dropout layer's effect but keeps it in the list
/// (so layer indices, and therefore stage boundaries, do not depend on it).
pub fn preset_layers(preset: Preset, dropout: f64) -> Vec<LayerSpec> {
    use LayerKind::*;
    match preset {
        // seed 001: Conv(1,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - Flatten - FC(3136,128)-ReLU-Dropout - FC(128,10)
        Preset::MnistCnn => {
            let mut layers = conv_blocks(1);
            layers.extend([
                spec("fc1", Linear { fin: 3136, fout: 128 }),
                spec("relu", Relu),
                spec("dropout", Dropout { p: dropout }),
                spec("fc2", Linear { fin: 128, fout: 10 }),
            ]);
            layers
        }
        // seed 002: Conv(3,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - Flatten - FC(4096,256)-ReLU - FC(256,10)
        Preset::CifarCnn => {
            let mut layers = conv_blocks(3);
            layers.extend([
                spec("fc1", Linear { fin: 4096, fout: 256 }),
                spec("relu", Relu),
                spec("fc2", Linear { fin: 256, fout: 10 }),
            ]);
            layers
        }
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

/// Per-layer multiply-adds for balancing pipeline stages (element-wise layers count one
/// operation per output element, so they are never free).
pub fn macs_costs(specs: &[LayerSpec], input: [i64; 3]) -> Vec<f64> {
    describe(specs, input)
        .iter()
        .map(|l| l.macs.max(l.output_shape.iter().product::<i64>()) as f64)
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
    use tch::{Kind, Tensor};

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
