//! `model.layers` read from YAML: each item a one-key map `kind: {arguments}`, shapes inferred
//! from the data's image shape as the list is read. A layer that does not fit is refused naming
//! its place (`model.layers[4].residual[2]`), its kind, the shape it got and the shape it needs.

use super::{window_out, LayerKind, LayerSpec};
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;

const KINDS: &str = "conv, batchnorm, relu, maxpool, avgpool, dropout, flatten, linear, residual";

/// The layers of `value` (a YAML list) for images of shape `input`, ending in `classes` logits.
pub fn parse_layers(value: &Value, input: [i64; 3], classes: i64) -> Result<Vec<LayerSpec>, String> {
    let mut names = Names::default();
    let (layers, out) = parse_list(value, "model.layers", &input, &mut |kind| names.top(kind))?;
    if out != [classes] {
        return Err(format!(
            "model.layers: the net ends in shape {out:?}; it must end in [{classes}] (one logit per class), \
             e.g. `- flatten: {{}}` then `- linear: {{out: {classes}}}`"
        ));
    }
    Ok(layers)
}

/// Top-level names: layers with state numbered by kind (`conv1`, `bn1`, `fc1`, `res1`).
#[derive(Default)]
struct Names(BTreeMap<&'static str, usize>);

impl Names {
    fn top(&mut self, kind: &LayerKind) -> String {
        let prefix = match kind {
            LayerKind::Conv2d { .. } => "conv",
            LayerKind::BatchNorm2d { .. } => "bn",
            LayerKind::Linear { .. } => "fc",
            LayerKind::Residual { .. } => "res",
            LayerKind::MaxPool2d { .. } => return "pool".into(),
            k => return k.yaml_name().into(),
        };
        let n = self.0.entry(prefix).or_insert(0);
        *n += 1;
        format!("{prefix}{n}")
    }
}

/// Reads a list of layers at `path` from input shape `shape`; returns them and the output shape.
fn parse_list(
    value: &Value,
    path: &str,
    shape: &[i64],
    name: &mut dyn FnMut(&LayerKind) -> String,
) -> Result<(Vec<LayerSpec>, Vec<i64>), String> {
    let items = value.as_sequence().filter(|s| !s.is_empty()).ok_or_else(|| {
        format!("{path}: expected a non-empty list of layers like `- conv: {{out: 16, k: 3}}`")
    })?;
    let mut shape = shape.to_vec();
    let mut layers = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let (kind_name, args) = one_key(item, &at)?;
        let at = format!("{at} ({kind_name})");
        let kind = parse_kind(kind_name, args, &at, &shape)?;
        shape = kind.output_shape(&shape);
        if shape.iter().any(|&d| d < 1) {
            return Err(format!(
                "{at}: its output would have shape {shape:?}: the input is too small"
            ));
        }
        layers.push(LayerSpec {
            name: name(&kind),
            kind,
        });
    }
    Ok((layers, shape))
}

fn one_key<'v>(item: &'v Value, at: &str) -> Result<(&'v str, &'v Value), String> {
    let map = item
        .as_mapping()
        .filter(|m| m.len() == 1)
        .ok_or_else(|| format!("{at}: expected one layer as `kind: {{arguments}}` (kinds: {KINDS})"))?;
    let (k, v) = map.iter().next().expect("one entry");
    let k = k
        .as_str()
        .ok_or_else(|| format!("{at}: the layer kind must be a name ({KINDS})"))?;
    Ok((k, v))
}

/// One layer of kind `kind` with arguments `args`, for input shape `s`.
fn parse_kind(kind: &str, args: &Value, at: &str, s: &[i64]) -> Result<LayerKind, String> {
    if kind == "residual" {
        return residual(args, at, s);
    }
    let a = Args::new(args, at)?;
    let layer = match kind {
        "conv" => {
            a.allow(&["out", "k", "stride", "pad", "bias"])?;
            let (k, stride, pad) = (a.int("k", None)?, a.int("stride", Some(1))?, a.int0("pad")?);
            needs_image(s, at)?;
            fits(s, k, pad, at)?;
            LayerKind::Conv2d {
                cin: s[0],
                cout: a.int("out", None)?,
                k,
                stride,
                pad,
                bias: a.flag("bias", true)?,
            }
        }
        "batchnorm" => a
            .allow(&[])
            .and(needs_image(s, at))
            .map(|_| LayerKind::BatchNorm2d { c: s[0] })?,
        "relu" => a.allow(&[]).map(|_| LayerKind::Relu)?,
        "flatten" => a.allow(&[]).map(|_| LayerKind::Flatten)?,
        "maxpool" | "avgpool" => pool(kind, &a, at, s)?,
        "dropout" => {
            a.allow(&["p"])?;
            let p = a.float("p")?;
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{at}: `p` must be in [0, 1), got {p}"));
            }
            LayerKind::Dropout { p }
        }
        "linear" => {
            a.allow(&["out", "bias"])?;
            if s.len() != 1 {
                return Err(format!(
                    "{at}: got input shape {s:?}, needs a flat vector [features]: add `- flatten: {{}}` before it"
                ));
            }
            LayerKind::Linear {
                fin: s[0],
                fout: a.int("out", None)?,
                bias: a.flag("bias", true)?,
            }
        }
        other => {
            return Err(format!(
                "{at}: unknown layer kind `{other}`; known kinds: {KINDS}"
            ))
        }
    };
    Ok(layer)
}

fn pool(kind: &str, a: &Args, at: &str, s: &[i64]) -> Result<LayerKind, String> {
    needs_image(s, at)?;
    if kind == "avgpool" && a.flag("global", false)? {
        a.allow(&["global"])?;
        return Ok(LayerKind::GlobalAvgPool);
    }
    a.allow(&["k", "stride", "pad", "global"])?;
    let k = a.int("k", None)?;
    let (stride, pad) = (a.int("stride", Some(k))?, a.int0("pad")?);
    if 2 * pad > k {
        return Err(format!(
            "{at}: padding {pad} is more than half the window {k} (PyTorch refuses it too)"
        ));
    }
    fits(s, k, pad, at)?;
    Ok(match kind {
        "maxpool" => LayerKind::MaxPool2d { k, stride, pad },
        _ => LayerKind::AvgPool2d { k, stride, pad },
    })
}

fn needs_image(s: &[i64], at: &str) -> Result<(), String> {
    match s.len() {
        3 => Ok(()),
        _ => Err(format!(
            "{at}: got input shape {s:?}, needs an image [channels, height, width] (it cannot follow flatten or linear)"
        )),
    }
}

fn fits(s: &[i64], k: i64, pad: i64, at: &str) -> Result<(), String> {
    if s[1] + 2 * pad < k || s[2] + 2 * pad < k {
        return Err(format!(
            "{at}: got input shape {s:?}; a {k}x{k} window with padding {pad} needs height and width of at least {}",
            k - 2 * pad
        ));
    }
    Ok(())
}

/// `residual: [layers]`: the body, and a 1x1 strided convolution as the shortcut where the body
/// changes the shape (channels, or height and width by a whole stride).
fn residual(args: &Value, at: &str, s: &[i64]) -> Result<LayerKind, String> {
    needs_image(s, at)?;
    let path = at.trim_end_matches(" (residual)").to_string() + ".residual";
    let mut j = 0;
    let mut inner_name = |_: &LayerKind| {
        j += 1;
        format!("body.{}", j - 1)
    };
    let (body, out) = parse_list(args, &path, s, &mut inner_name)?;
    if out == s {
        return Ok(LayerKind::Residual { body, shortcut: None });
    }
    let stride =
        (1..=s[1]).find(|&st| out.len() == 3 && (0..2).all(|d| window_out(s[d + 1], 1, st, 0) == out[d + 1]));
    let Some(stride) = stride else {
        return Err(format!(
            "{at}: the body maps {s:?} to {out:?}; the shortcut can only be the identity or a 1x1 convolution \
             with one stride for height and width, which cannot produce {out:?} from {s:?}"
        ));
    };
    let shortcut = LayerSpec {
        name: "shortcut".into(),
        kind: LayerKind::Conv2d {
            cin: s[0],
            cout: out[0],
            k: 1,
            stride,
            pad: 0,
            bias: false,
        },
    };
    Ok(LayerKind::Residual {
        body,
        shortcut: Some(Box::new(shortcut)),
    })
}

/// A layer's arguments: a map (or nothing), read by name with the layer's place in every message.
struct Args<'v> {
    map: Option<&'v Mapping>,
    at: &'v str,
}

impl<'v> Args<'v> {
    fn new(v: &'v Value, at: &'v str) -> Result<Args<'v>, String> {
        match v {
            Value::Null => Ok(Args { map: None, at }),
            Value::Mapping(m) => Ok(Args { map: Some(m), at }),
            other => Err(format!(
                "{at}: arguments must be a map like `{{k: 3}}` or `{{}}`, got {other:?}"
            )),
        }
    }
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.and_then(|m| m.get(key))
    }
    fn allow(&self, known: &[&str]) -> Result<(), String> {
        for k in self.map.into_iter().flat_map(|m| m.keys()) {
            let name = k.as_str().unwrap_or("?");
            if !known.contains(&name) {
                return Err(format!(
                    "{}: unknown argument `{name}`; this kind takes: {known:?}",
                    self.at
                ));
            }
        }
        Ok(())
    }
    /// A positive integer; `default` None makes it required.
    fn int(&self, key: &str, default: Option<i64>) -> Result<i64, String> {
        match (self.get(key), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(format!(
                "{}: missing argument `{key}` (a positive integer)",
                self.at
            )),
            (Some(v), _) => v
                .as_i64()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("{}: `{key}` must be a positive integer, got {v:?}", self.at)),
        }
    }
    /// A non-negative integer, 0 when absent.
    fn int0(&self, key: &str) -> Result<i64, String> {
        match self.get(key) {
            None => Ok(0),
            Some(v) => v
                .as_i64()
                .filter(|&n| n >= 0)
                .ok_or_else(|| format!("{}: `{key}` must be a non-negative integer, got {v:?}", self.at)),
        }
    }
    fn float(&self, key: &str) -> Result<f64, String> {
        let v = self
            .get(key)
            .ok_or_else(|| format!("{}: missing argument `{key}` (a number)", self.at))?;
        v.as_f64()
            .ok_or_else(|| format!("{}: `{key}` must be a number, got {v:?}", self.at))
    }
    fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("{}: `{key}` must be true or false, got {v:?}", self.at)),
        }
    }
}
