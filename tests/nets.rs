//! Nets written as data (`model.layers`): a residual net with batch normalisation and strided
//! convolutions trains to the same weights and running statistics in every layout, resumes bit
//! for bit, and malformed nets are refused by the binary naming the layer.
mod common;
use common::*;
use std::path::Path;

/// 50 steps of global batch 64 on 3,200 MNIST images of configs/resnet_fashion.yaml's net (its
/// layers fit MNIST's images as they fit Fashion-MNIST's), with the config's AdamW recipe.
fn resnet_args(cmd: &str, out: &Path, sets: &[&str]) -> Vec<String> {
    let mut all = vec![
        "data.dataset=mnist",
        "train.batch_size=64",
        "data.train_limit=3200",
        "data.test_limit=500",
        "train.max_steps=50",
        "train.target_accuracy=null",
    ];
    all.extend_from_slice(sets);
    run_args(cmd, "resnet_fashion.yaml", out, &all)
}

/// Serial with two micro-batches of 32 (accumulation), dp on 2 ranks (32 each) and hybrid 2
/// stages x 1 replica (two micro-batches): every micro-batch normalised by its own statistics,
/// the running statistics moved once per step by their mean, so weights and running statistics
/// agree within TOLERANCE (measured here: 0, bit for bit).
#[test]
fn a_residual_net_trains_alike_in_every_layout_and_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = tmp.path().join("serial");
    assert_ok(&partrain(&refs(&resnet_args(
        "serial",
        &serial,
        &["parallel.micro_batches=2"],
    ))));
    let names: Vec<String> = weights(&serial).into_iter().map(|(n, _)| n).collect();
    for expected in [
        "res2.shortcut.weight",
        "res1.body.1.running_var",
        "bn1.num_batches_tracked",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    let dp = tmp.path().join("dp");
    assert_ok(&mpirun(2, &refs(&resnet_args("dp", &dp, &[]))).0);
    assert_matches_serial(&serial, &dp, "resnet dp 2 ranks");
    let hybrid = tmp.path().join("hybrid");
    let sets = ["parallel.stages=2", "parallel.micro_batches=2"];
    assert_ok(&mpirun(2, &refs(&resnet_args("hybrid", &hybrid, &sets))).0);
    assert_eq!(summary(&hybrid)["stages"], 2);
    assert_matches_serial(&serial, &hybrid, "resnet hybrid 2 x 1");
    let part = tmp.path().join("part");
    let extra = ["checkpoint.every_steps=7", "train.max_steps=30"];
    let full = tmp.path().join("full");
    assert_ok(&mpirun(2, &refs(&resnet_args("dp", &full, &extra))).0);
    assert_resumes_bit_identical(&full, &part, resnet_args("dp", &part, &extra));
    // The checkpoint of one net does not resume another: refused naming both, nothing written.
    let before = std::fs::read(full.join("model.safetensors")).unwrap();
    let mut args = equivalence_args("serial", &full);
    args.push("--resume".into());
    let o = partrain(&refs(&args));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("checkpoint of custom (net ") && t.contains("net is mnist_cnn (net "),
        "{t}"
    );
    assert_eq!(before, std::fs::read(full.join("model.safetensors")).unwrap());
}

/// `model.batchnorm_running: per_forward` (PyTorch's rule, in serial order): serial with 2
/// micro-batches of 32 and dp on 2 ranks give the same weights (the rule moves only the running
/// statistics, which training never reads) and running statistics within TOLERANCE, each forward
/// counted (2 per step, against 1 per step by the default rule). Serial with 4 micro-batches
/// against dp 2 x 2 sums the gradients in another order, and Adam on this batch-norm net grows
/// that rounding to 0.08 in 20 steps, by either rule: the unit test
/// `per_forward_running_statistics_are_pytorchs_and_split_over_replicas` covers that split.
#[test]
fn per_forward_running_statistics_agree_between_serial_and_dp() {
    let tmp = tempfile::tempdir().unwrap();
    let rule = "model.batchnorm_running=per_forward";
    let (serial, dp, default) = (tmp.path().join("s"), tmp.path().join("dp"), tmp.path().join("d"));
    let sets = [rule, "parallel.micro_batches=2", "train.max_steps=20"];
    assert_ok(&partrain(&refs(&resnet_args("serial", &serial, &sets))));
    assert_ok(&mpirun(2, &refs(&resnet_args("dp", &dp, &[rule, "train.max_steps=20"]))).0);
    assert_matches_serial(&serial, &dp, "per_forward dp 2 ranks");
    let sets = ["parallel.micro_batches=2", "train.max_steps=20"];
    assert_ok(&partrain(&refs(&resnet_args("serial", &default, &sets))));
    let tracked = |run: &Path| {
        let w = weights(run);
        let t = &w.iter().find(|(n, _)| n == "bn1.num_batches_tracked").unwrap().1;
        t.int64_value(&[])
    };
    assert_eq!((tracked(&serial), tracked(&dp), tracked(&default)), (40, 40, 20));
    let differ = |a: &Path, b: &Path, name: &str| {
        let (wa, wb) = (weights(a), weights(b));
        let find = |w: &[(String, tch::Tensor)]| w.iter().find(|(n, _)| n == name).unwrap().1.shallow_clone();
        !find(&wa).equal(&find(&wb))
    };
    assert!(
        differ(&serial, &default, "bn1.running_mean"),
        "the rule changes the running statistics"
    );
    assert!(!differ(&serial, &default, "conv1.weight"), "and nothing else");
}

/// Nets that cannot be built: the binary refuses each before training, naming the layer, exits
/// non-zero without a panic and writes nothing.
#[test]
fn malformed_nets_are_refused_by_the_binary_naming_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("[{linear: {out: 10}}]", "model.layers[0] (linear)"),
        ("[{conv: {out: 8, k: 3}}, {convv: {}}]", "model.layers[1]"),
        ("[{conv: {k: 3}}]", "missing argument `out`"),
        (
            "[{conv: {out: 8, k: 3}}, {residual: [{conv: {out: 8, k: 3}}]}, {flatten: {}}, {linear: {out: 10}}]",
            "model.layers[1] (residual)",
        ),
    ];
    for (i, (layers, needle)) in cases.iter().enumerate() {
        let cfg = tmp.path().join(format!("net{i}.yaml"));
        std::fs::write(&cfg, format!("model:\n  layers: {layers}\n")).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let o = partrain(&[
            "serial",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let t = text(&o);
        assert!(!o.status.success(), "{layers}: accepted\n{t}");
        assert!(t.contains(needle), "{layers}: message lacks {needle:?}\n{t}");
        assert!(!t.contains("panicked"), "{layers}: panicked\n{t}");
        assert!(!out.exists(), "{layers}: wrote {}", out.display());
    }
}
