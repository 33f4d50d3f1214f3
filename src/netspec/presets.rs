//! The seed nets, written as a user would write them in `model.layers`. They expand to exactly
//! the layers (and so the weights and state_dict names) the hand-built lists gave before.

use super::{parse_layers, LayerKind, LayerSpec};

/// The two conv -> ReLU -> 2x2 max-pool blocks both seed nets start with, then flatten.
macro_rules! conv_blocks {
    () => {
        "
- conv: {out: 32, k: 3, pad: 1}
- relu: {}
- maxpool: {k: 2}
- conv: {out: 64, k: 3, pad: 1}
- relu: {}
- maxpool: {k: 2}
- flatten: {}
"
    };
}

/// seed 001: Conv(1,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - Flatten - FC(3136,128)-ReLU-Dropout - FC(128,10)
pub const MNIST_CNN: &str = concat!(
    conv_blocks!(),
    "- linear: {out: 128}\n- relu: {}\n- dropout: {p: 0.25}\n- linear: {out: 10}\n"
);

/// seed 002: Conv(3,32,3)-ReLU-Pool - Conv(32,64,3)-ReLU-Pool - Flatten - FC(4096,256)-ReLU - FC(256,10)
pub const CIFAR_CNN: &str = concat!(
    conv_blocks!(),
    "- linear: {out: 256}\n- relu: {}\n- linear: {out: 10}\n"
);

/// The preset `name`'s layers for its own image shape; every dropout layer's rate set to
/// `dropout` (kept in the list at 0, so layer indices and stage boundaries do not depend on it).
pub fn layers(name: &str, dropout: f64) -> Vec<LayerSpec> {
    let (text, input) = match name {
        "mnist_cnn" => (MNIST_CNN, [1, 28, 28]),
        "cifar_cnn" => (CIFAR_CNN, [3, 32, 32]),
        other => panic!("no preset named {other}"),
    };
    let value: serde_yaml::Value = serde_yaml::from_str(text).expect("a preset is valid YAML");
    let mut layers = parse_layers(&value, input, 10).expect("a preset fits its own images");
    for l in &mut layers {
        if let LayerKind::Dropout { p } = &mut l.kind {
            *p = dropout;
        }
    }
    layers
}
