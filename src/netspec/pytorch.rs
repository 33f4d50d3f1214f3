//! The net as PyTorch source: `partrain export` writes it as `model.py` beside
//! `model.safetensors`. Modules carry the state_dict names partrain uses (`conv1`, `res1.body.0`,
//! `res1.shortcut`), parameter-free layers are calls in `forward`, so
//! `Net().load_state_dict(safetensors.torch.load_file("model.safetensors"))` loads strictly.

use super::{LayerKind, LayerSpec, NetSpec};

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// The `nn.Module` expression of one layer (used inside a residual block's `nn.Sequential`, and
/// for the top-level layers with state).
fn module(kind: &LayerKind) -> String {
    match kind {
        LayerKind::Conv2d {
            cin,
            cout,
            k,
            stride,
            pad,
            bias,
        } => format!(
            "nn.Conv2d({cin}, {cout}, {k}, stride={stride}, padding={pad}, bias={})",
            py_bool(*bias)
        ),
        LayerKind::BatchNorm2d { c } => format!("nn.BatchNorm2d({c})"),
        LayerKind::Relu => "nn.ReLU()".into(),
        LayerKind::MaxPool2d { k, stride, pad } => format!("nn.MaxPool2d({k}, {stride}, {pad})"),
        LayerKind::AvgPool2d { k, stride, pad } => format!("nn.AvgPool2d({k}, {stride}, {pad})"),
        LayerKind::GlobalAvgPool => "nn.AdaptiveAvgPool2d(1)".into(),
        LayerKind::Flatten => "nn.Flatten()".into(),
        LayerKind::Dropout { p } => format!("nn.Dropout({p:?})"),
        LayerKind::Linear { fin, fout, bias } => format!("nn.Linear({fin}, {fout}, bias={})", py_bool(*bias)),
        LayerKind::Residual { body, shortcut } => {
            let inner: Vec<String> = body.iter().map(|l| module(&l.kind)).collect();
            let shortcut = shortcut.as_ref().map_or("None".into(), |s| module(&s.kind));
            format!("Residual([{}], {shortcut})", inner.join(", "))
        }
    }
}

/// Whether a top-level layer is an attribute of `Net` (it has state, or is a residual block).
fn is_attribute(l: &LayerSpec) -> bool {
    !l.state("").is_empty() || matches!(l.kind, LayerKind::Residual { .. })
}

/// The line of `Net.forward` for a parameter-free top-level layer.
fn call(kind: &LayerKind) -> String {
    match kind {
        LayerKind::Relu => "F.relu(x)".into(),
        LayerKind::MaxPool2d { k, stride, pad } => format!("F.max_pool2d(x, {k}, {stride}, {pad})"),
        LayerKind::AvgPool2d { k, stride, pad } => format!("F.avg_pool2d(x, {k}, {stride}, {pad})"),
        LayerKind::GlobalAvgPool => "F.adaptive_avg_pool2d(x, 1)".into(),
        LayerKind::Flatten => "torch.flatten(x, 1)".into(),
        LayerKind::Dropout { p } => format!("F.dropout(x, {p:?}, self.training)"),
        other => unreachable!("{other:?} is an attribute"),
    }
}

const HEADER: &str = r#"import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """body(x) + shortcut(x): the shortcut is the identity, or a 1x1 strided convolution."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))
"#;

/// `model.py` for `net`.
pub fn model_py(net: &NetSpec) -> String {
    let mut init = String::new();
    let mut forward = String::new();
    for l in &net.layers {
        if is_attribute(l) {
            init += &format!("        self.{} = {}\n", l.name, module(&l.kind));
            forward += &format!("        x = self.{}(x)\n", l.name);
        } else {
            forward += &format!("        x = {}\n", call(&l.kind));
        }
    }
    format!(
        "\"\"\"{label}, exported by `partrain export` for images of shape {input:?}.\n\n    \
         import safetensors.torch\n    from model import Net\n    net = Net()\n    \
         net.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))\n    net.eval()\n\"\"\"\n\
         {HEADER}\n\nINPUT_SHAPE = ({}, {}, {})\n\n\nclass Net(nn.Module):\n    def __init__(self):\n        \
         super().__init__()\n{init}\n    def forward(self, x):\n{forward}        return x\n",
        net.input[0],
        net.input[1],
        net.input[2],
        label = net.label(),
        input = net.input,
    )
}
