//! Channels-last and bf16 paths: the same math as the fp32 NCHW baseline.
mod common;
use common::*;

fn serial(out: &std::path::Path, sets: &[&str]) {
    let mut all = vec!["model.dropout=0", "checkpoint.every_epochs=0"];
    all.extend_from_slice(sets);
    assert_ok(&partrain(&refs(&run_args("serial", "base.yaml", out, &all))));
}

/// After 5 SGD steps the channels-last run's weights differ from NCHW's by float rounding only
/// (oneDNN picks other kernels for NHWC and their sums round differently: ~1e-8 after 5 steps;
/// like any change of kernel, the difference then grows with training, e.g. ~1e-5 by step 10).
#[test]
fn channels_last_matches_nchw() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("nchw"), tmp.path().join("nhwc"));
    let steps = [
        "train.max_steps=5",
        "data.train_limit=640",
        "data.test_limit=1000",
    ];
    let mut nchw = steps.to_vec();
    nchw.extend(["train.channels_last=false"]);
    serial(&a, &nchw);
    let mut cl = steps.to_vec();
    cl.extend(["train.channels_last=true"]);
    serial(&b, &cl);
    let diff = max_abs_diff(&a, &b);
    println!("channels-last vs NCHW after 5 steps: max |dw| = {diff:e}");
    assert!(diff < 1e-5, "{diff}");
    let (x, y) = (
        summary(&a)["final_test_accuracy"].as_f64().unwrap(),
        summary(&b)["final_test_accuracy"].as_f64().unwrap(),
    );
    assert!((x - y).abs() <= 0.1, "{x} vs {y}");
}

/// bf16 mixed precision trains as well as fp32: one epoch on 12,800 images, test accuracy on 2,000
/// within 1 point (the full 3-epoch comparison is in README: within 0.2 points).
#[test]
fn bf16_reaches_fp32_accuracy() {
    if !partrain::util::cpu_has_bf16() {
        eprintln!("this CPU has no bf16 arithmetic: partrain refuses train.precision=bf16 here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("fp32"), tmp.path().join("bf16"));
    let run = ["train.epochs=1", "data.train_limit=12800", "data.test_limit=2000"];
    let mut fp32 = run.to_vec();
    fp32.extend(["train.channels_last=false"]);
    serial(&a, &fp32);
    let mut bf = run.to_vec();
    bf.extend(["train.precision=bf16", "train.channels_last=true"]);
    serial(&b, &bf);
    let (x, y) = (
        summary(&a)["final_test_accuracy"].as_f64().unwrap(),
        summary(&b)["final_test_accuracy"].as_f64().unwrap(),
    );
    println!("fp32 {x}% bf16 {y}%");
    assert!((x - y).abs() <= 1.0, "fp32 {x} vs bf16 {y}");
    // Master weights stay fp32.
    for (name, t) in weights(&b) {
        assert_eq!(t.kind(), tch::Kind::Float, "{name}");
    }
}
