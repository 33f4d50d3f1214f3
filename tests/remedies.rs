//! The seeds' remedies for communication overhead, under real `mpirun`: each checked against a
//! closed form (what it must equal exactly), for repeatability, and for exact resume where it
//! keeps state across steps. What they are worth in time to target is measured by
//! bench/remedies.sh, not here.
mod common;
use common::*;
use std::path::Path;

fn dp_args(out: &Path, sets: &[&str]) -> Vec<String> {
    let mut args = equivalence_args("dp", out);
    for s in sets {
        args.extend(["--set".into(), s.to_string()]);
    }
    args
}

fn run_dp(out: &Path, sets: &[&str]) {
    assert_ok(&mpirun(2, &refs(&dp_args(out, sets))).0);
}

/// `common::assert_resumes_bit_identical` for a dp run of `sets`.
fn assert_dp_resumes_bit_identical(full: &Path, part: &Path, sets: &[&str]) {
    assert_resumes_bit_identical(full, part, dp_args(part, sets));
}

/// One-step-stale averaging applies the previous step's mean: its first step changes nothing, and
/// after two steps the weights are exactly plain averaging's after one (the same g_0, the same
/// fresh momentum, a constant rate); the summary names the path.
#[test]
fn one_step_stale_applies_the_previous_steps_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = |steps: &str, name: &str| {
        let out = tmp.path().join(name);
        run_dp(&out, &["sync.delay=1", &format!("train.max_steps={steps}")]);
        out
    };
    let (one, two) = (stale("1", "stale1"), stale("2", "stale2"));
    let plain = tmp.path().join("plain1");
    run_dp(&plain, &["sync.shared_memory=false", "train.max_steps=1"]);
    // The weights as initialised: one step at a rate too small to move any f32 weight (a rate
    // of 0 is refused).
    let zero = tmp.path().join("plain0");
    run_dp(
        &zero,
        &["sync.shared_memory=false", "train.max_steps=1", "train.lr=1e-30"],
    );
    assert_eq!(
        summary(&two)["gradient_averaging"],
        "mpi_allreduce_one_step_stale"
    );
    assert_eq!(max_abs_diff(&one, &zero), 0.0, "step 0 applies nothing");
    assert_eq!(max_abs_diff(&two, &plain), 0.0, "step 1 applies step 0's mean");
    assert!(max_abs_diff(&two, &one) > 0.0);
}

/// A one-step-stale run stopped at step 11 resumes from its step-7 checkpoint (taken while step 7's
/// all-reduce was in flight: its mean is in the checkpoint) and ends byte-identical.
#[test]
fn one_step_stale_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let sets = ["sync.delay=1", "checkpoint.every_steps=7", "train.max_steps=20"];
    run_dp(&full, &sets);
    assert_dp_resumes_bit_identical(&full, &part, &sets);
}

/// Post-local SGD averages gradients until `sync.local_sgd_after`: switched past the run's end it
/// is plain gradient averaging, bit for bit; switched at step 10 it takes local steps after that
/// (other weights) and counts the bytes of each averaging.
#[test]
fn post_local_sgd_is_gradient_averaging_until_it_switches() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    run_dp(&plain, &["sync.shared_memory=false"]);
    let warm = tmp.path().join("warm_all");
    run_dp(
        &warm,
        &[
            "sync.mode=weights",
            "sync.average_every=4",
            "sync.local_sgd_after=50",
        ],
    );
    assert_eq!(max_abs_diff(&plain, &warm), 0.0);
    let local = tmp.path().join("local_after_10");
    run_dp(
        &local,
        &[
            "sync.mode=weights",
            "sync.average_every=4",
            "sync.local_sgd_after=10",
        ],
    );
    assert!(max_abs_diff(&plain, &local) > 0.0);
    let (p, l) = (summary(&plain), summary(&local));
    // 10 gradient averagings, then the weights at steps 12, 16, ..., 48 and at the epoch's end.
    let per = p["sent_bytes_per_step"].as_f64().unwrap();
    let expected = per * (10.0 + 10.0 + 1.0) / 50.0;
    let got = l["sent_bytes_per_step"].as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1.0,
        "post-local bytes per step {got}, expected {expected}"
    );
}

/// PowerSGD rank 2 on seed 001's net: compressed from the first step, two runs of the same seed
/// give the same bytes; it sends at least 10x fewer bytes per step than plain averaging; a run
/// stopped at step 11 resumes from its step-7 checkpoint (error feedback and Q of every rank in it)
/// bit-identical.
#[test]
fn powersgd_repeats_sends_a_tenth_and_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "sync.compress=powersgd",
        "sync.powersgd_rank=2",
        "sync.compress_after_steps=0",
        "checkpoint.every_steps=7",
        "train.max_steps=20",
    ];
    let (a, b, part) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("part"),
    );
    run_dp(&a, &sets);
    run_dp(&b, &sets);
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(&a), bytes(&b), "PowerSGD repeats bit for bit");
    let plain = tmp.path().join("plain");
    run_dp(&plain, &["sync.shared_memory=false", "train.max_steps=20"]);
    let per = |d: &Path| summary(d)["sent_bytes_per_step"].as_f64().unwrap();
    let ratio = per(&plain) / per(&a);
    println!("plain / PowerSGD rank 2 bytes per step: {ratio:.1}");
    assert!(
        ratio >= 10.0,
        "PowerSGD rank 2 sends only {ratio:.1}x fewer bytes"
    );
    assert_dp_resumes_bit_identical(&a, &part, &sets);
}

/// Bucketed overlap in every layout: dp 2 ranks (1 MB buckets, and one block per bucket), dp 2
/// with 4 micro-batches (the last micro-batch's backward overlaps) and hybrid 2 x 2 (each stage
/// averages its own buckets) within 1e-4 of serial after 50 steps; dp without micro-batches is
/// bit-identical to averaging after backward. The summary says how much of the all-reduce time
/// the backward hid.
#[test]
fn bucketed_overlap_matches_serial_in_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = serial_reference(tmp.path());
    let after = tmp.path().join("after_backward");
    run_dp(&after, &["sync.shared_memory=false"]);
    for (np, cmd, sets, label) in [
        (2, "dp", vec!["sync.overlap=true"], "dp 2, 1 MB buckets"),
        (
            2,
            "dp",
            vec!["sync.overlap=true", "sync.bucket_mb=0"],
            "dp 2, a bucket per block",
        ),
        (
            2,
            "dp",
            vec!["sync.overlap=true", "parallel.micro_batches=4"],
            "dp 2 x 4 micro-batches",
        ),
        (
            4,
            "hybrid",
            vec![
                "sync.overlap=true",
                "parallel.stages=2",
                "parallel.micro_batches=4",
                "parallel.stage_boundaries=[4]",
            ],
            "hybrid 2 x 2",
        ),
    ] {
        let out = tmp.path().join(label.replace([' ', ','], "_"));
        let mut args = equivalence_args(cmd, &out);
        for s in &sets {
            args.extend(["--set".into(), s.to_string()]);
        }
        assert_ok(&mpirun(np, &refs(&args)).0);
        let s = summary(&out);
        assert_eq!(s["gradient_averaging"], "mpi_allreduce_overlapped", "{label}");
        let hidden = s["averaging_hidden_fraction"].as_f64().unwrap();
        println!("{label}: {:.0} % of the all-reduce time hidden", hidden * 100.0);
        assert!((0.0..=1.0).contains(&hidden), "{label}: {hidden}");
        assert_matches_serial(&serial, &out, label);
        if label == "dp 2, 1 MB buckets" {
            assert_eq!(max_abs_diff(&after, &out), 0.0, "buckets change when, not what");
        }
    }
}
