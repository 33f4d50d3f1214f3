//! The spec's parser: the residual net as written, the presets' names and sizes, and 20
//! malformed nets each refused naming the layer.

use super::*;

fn parse(text: &str) -> Result<Vec<LayerSpec>, String> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    parse_layers(&v, [1, 28, 28], 10)
}

const RESIDUAL_NET: &str = "
- conv: {out: 16, k: 3, pad: 1}
- batchnorm: {}
- relu: {}
- residual:
    - conv: {out: 16, k: 3, pad: 1}
    - batchnorm: {}
    - relu: {}
    - conv: {out: 16, k: 3, pad: 1}
    - batchnorm: {}
- relu: {}
- conv: {out: 32, k: 3, stride: 2, pad: 1}
- batchnorm: {}
- relu: {}
- avgpool: {global: true}
- flatten: {}
- linear: {out: 10}
";

#[test]
fn the_residual_net_as_written_is_accepted_with_inferred_shapes_and_state_dict_names() {
    let layers = parse(RESIDUAL_NET).unwrap();
    let shapes: Vec<Vec<i64>> = describe(&layers, [1, 28, 28])
        .into_iter()
        .map(|r| r.output_shape)
        .collect();
    assert_eq!(shapes[3], vec![16, 28, 28]);
    assert_eq!(shapes[5], vec![32, 14, 14]);
    assert_eq!(shapes.last().unwrap(), &vec![10]);
    let names: Vec<String> = state_entries(&layers).into_iter().map(|e| e.name).collect();
    assert_eq!(names[..2], ["conv1.weight", "conv1.bias"]);
    assert!(names.contains(&"res1.body.1.running_mean".to_string()));
    assert!(names.contains(&"bn2.num_batches_tracked".to_string()));
    assert!(names.contains(&"fc1.weight".to_string()));
    let params: i64 = layers.iter().map(|l| l.kind.parameter_count()).sum();
    assert_eq!(params, 160 + 32 + 2 * (2320 + 32) + 4640 + 64 + 330);
}

#[test]
fn presets_keep_their_names_sizes_and_identity_apart_from_dropout() {
    let mnist = presets::layers("mnist_cnn", 0.25);
    let names: Vec<&str> = mnist.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["conv1", "relu", "pool", "conv2", "relu", "pool", "flatten", "fc1", "relu", "dropout", "fc2"]
    );
    assert_eq!(
        mnist.iter().map(|l| l.kind.parameter_count()).sum::<i64>(),
        421_642
    );
    let cifar = presets::layers("cifar_cnn", 0.0);
    assert_eq!(
        cifar.iter().map(|l| l.kind.parameter_count()).sum::<i64>(),
        1_070_794
    );
    let id = |l: Vec<LayerSpec>, s| NetSpec::new("x", l, s).id;
    assert_eq!(
        id(mnist.clone(), [1, 28, 28]),
        id(presets::layers("mnist_cnn", 0.0), [1, 28, 28])
    );
    assert_ne!(id(mnist, [1, 28, 28]), id(cifar, [3, 32, 32]));
}

/// A shortcut where the body halves the size and doubles the channels; a residual whose shapes
/// cannot meet is refused.
#[test]
fn a_strided_residual_gets_a_projection_shortcut() {
    let layers = parse(
        "[{residual: [{conv: {out: 8, k: 3, stride: 2, pad: 1}}]}, {flatten: {}}, {linear: {out: 10}}]",
    )
    .unwrap();
    let LayerKind::Residual {
        shortcut: Some(s), ..
    } = &layers[0].kind
    else {
        panic!("no shortcut: {layers:?}")
    };
    assert_eq!(
        s.kind,
        LayerKind::Conv2d {
            cin: 1,
            cout: 8,
            k: 1,
            stride: 2,
            pad: 0,
            bias: false
        }
    );
}

/// Malformed nets (each ending, where it needs to, in flatten and linear 10) and what the refusal
/// must say.
const MALFORMED: [(&str, &str); 20] = [
    ("[]", "model.layers: expected a non-empty list"),
    (
        "{conv: {out: 8, k: 3}}",
        "model.layers: expected a non-empty list",
    ),
    (
        "[{conv: {out: 8}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (conv): missing argument `k`",
    ),
    (
        "[{conv: {k: 3}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (conv): missing argument `out`",
    ),
    (
        "[{conv: {out: 8, k: 0}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (conv): `k` must be a positive integer",
    ),
    (
        "[{conv: {out: 8, k: 3, pad: -1}}, {flatten: {}}, {linear: {out: 10}}]",
        "`pad` must be a non-negative integer",
    ),
    (
        "[{conv: {out: 8, k: 3, dilation: 2}}, {flatten: {}}, {linear: {out: 10}}]",
        "unknown argument `dilation`",
    ),
    (
        "[{conv: {out: 8, k: 3, bias: 1}}, {flatten: {}}, {linear: {out: 10}}]",
        "`bias` must be true or false",
    ),
    (
        "[{conv: {out: 8, k: 31}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (conv): got input shape [1, 28, 28]",
    ),
    (
        "[{convolution: {out: 8, k: 3}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (convolution): unknown layer kind",
    ),
    (
        "[{conv: {out: 8, k: 3}, relu: {}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0]: expected one layer",
    ),
    (
        "[{linear: {out: 10}}]",
        "model.layers[0] (linear): got input shape [1, 28, 28]",
    ),
    (
        "[{flatten: {}}, {linear: {out: 10}}, {conv: {out: 8, k: 3}}]",
        "model.layers[2] (conv): got input shape [10]",
    ),
    (
        "[{flatten: {}}, {batchnorm: {}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[1] (batchnorm): got input shape [784]",
    ),
    (
        "[{maxpool: {k: 2, pad: 2}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (maxpool): padding 2 is more than half",
    ),
    (
        "[{maxpool: {}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (maxpool): missing argument `k`",
    ),
    (
        "[{dropout: {p: 1.5}}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (dropout): `p` must be in [0, 1)",
    ),
    ("[{flatten: {}}, {linear: {out: 12}}]", "it must end in [10]"),
    (
        "[{residual: [{conv: {out: 8, k: 3}}]}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0] (residual): the body maps [1, 28, 28] to [8, 26, 26]",
    ),
    (
        "[{residual: [{conv: {out: 8, k: 3, pad: 1}}, {linar: {}}]}, {flatten: {}}, {linear: {out: 10}}]",
        "model.layers[0].residual[1] (linar): unknown layer kind",
    ),
];

#[test]
fn twenty_malformed_nets_are_refused_naming_the_layer() {
    for (text, needle) in MALFORMED {
        let err = parse(text).expect_err(text);
        assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
    }
}

/// An odd size into conv -> ReLU -> 2x2 max-pool is a valid net (PyTorch floors the pool): it
/// is accepted, and the model runs it unfused rather than asserting.
#[test]
fn odd_sizes_into_a_pool_are_accepted() {
    let layers =
        parse("[{conv: {out: 4, k: 2}}, {relu: {}}, {maxpool: {k: 2}}, {flatten: {}}, {linear: {out: 10}}]")
            .unwrap();
    assert_eq!(layers[2].kind.output_shape(&[4, 27, 27]), vec![4, 13, 13]);
}

#[test]
fn stage_shapes_follow_the_layers() {
    let layers = presets::layers("mnist_cnn", 0.0);
    let (i, o, e) = stage_shapes(&layers, 0..3, [1, 28, 28]);
    assert_eq!((i, o), (vec![1, 28, 28], vec![32, 14, 14]));
    assert_eq!(e, 2 * 32 * 28 * 28 + 32 * 14 * 14);
    let (i, o, _) = stage_shapes(&layers, 3..11, [1, 28, 28]);
    assert_eq!((i, o), (vec![32, 14, 14], vec![10]));
}
