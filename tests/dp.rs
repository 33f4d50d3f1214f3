//! Data parallelism under real `mpirun`: equivalence with serial, and faults at start-up.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn dp_on_2_and_4_ranks_matches_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = serial_reference(tmp.path());
    assert_eq!(summary(&serial)["steps"], 50);
    for np in [2, 4] {
        let out = tmp.path().join(format!("dp{np}"));
        let (o, _) = mpirun(np, &refs(&equivalence_args("dp", &out)));
        assert_ok(&o);
        let s = summary(&out);
        assert_eq!(s["world_size"], np);
        assert_eq!(s["steps"], 50);
        assert_eq!(s["global_batch"], 64);
        assert_eq!(s["peak_rss_mb"].as_array().unwrap().len(), np);
        assert!(s["allreduce_seconds"].as_f64().unwrap() > 0.0);
        // Sharded evaluation gives the serial evaluator's accuracy for (nearly) the same weights.
        assert_matches_serial(&serial, &out, &format!("dp x{np}"));
    }
}

/// The three ways of averaging gradients change where and when the sums happen, not what they
/// are: node-shared memory (the default on one node), MPI_Allreduce (ranks on several nodes, or
/// `sync.shared_memory=false`) and MPI_Allreduce overlapped with the backward (`sync.overlap`)
/// give bit-identical weights.
#[test]
fn every_gradient_averaging_path_gives_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for (shared, overlap, path) in [
        (true, false, "shared_memory"),
        (false, false, "mpi_allreduce"),
        (true, true, "mpi_allreduce_overlapped"),
    ] {
        let out = tmp.path().join(path);
        let mut args = equivalence_args("dp", &out);
        args.extend(["--set".to_string(), format!("sync.shared_memory={shared}")]);
        args.extend(["--set".to_string(), format!("sync.overlap={overlap}")]);
        assert_ok(&mpirun(2, &refs(&args)).0);
        assert_eq!(summary(&out)["gradient_averaging"], path);
        outs.push(out);
    }
    assert_eq!(max_abs_diff(&outs[0], &outs[1]), 0.0);
    assert_eq!(max_abs_diff(&outs[0], &outs[2]), 0.0);
}

#[test]
fn model_averaging_runs_and_replicas_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("avg");
    let args = run_args(
        "dp",
        "data_parallel.yaml",
        &out,
        &[
            "sync.mode=weights",
            "sync.average_every=4",
            "data.train_limit=1280",
            "data.test_limit=500",
            "train.epochs=2",
        ],
    );
    let (o, _) = mpirun(2, &refs(&args));
    assert_ok(&o);
    let s = summary(&out);
    assert_eq!(s["sync_mode"], "weights");
    assert!(s["final_test_accuracy"].as_f64().unwrap() > 50.0);
}

/// Launches an MPMD job: each element is one rank's argument list.
fn mpmd(ranks: &[Vec<String>]) -> (std::process::Output, Duration) {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .current_dir(root());
    for (i, args) in ranks.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", "1", bin()]).args(args);
    }
    run_with_limit(cmd, Duration::from_secs(60))
}

fn dp_args(out: &Path, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "dp",
        "--config",
        &config("data_parallel.yaml"),
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(
        [
            "--set",
            "data.train_limit=640",
            "--set",
            "data.test_limit=100",
            "--set",
            "train.epochs=1",
        ]
        .map(String::from),
    );
    v.extend(extra.iter().cloned());
    v
}

#[track_caller]
fn fails_fast(o: &std::process::Output, took: Duration, out: &Path, expected: &[&str]) {
    let msg = text(o);
    assert!(!o.status.success(), "job should fail: {msg}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    for e in expected {
        assert!(msg.contains(e), "expected `{e}` in:\n{msg}");
    }
    assert!(!out.join("model.safetensors").exists());
}

#[test]
fn startup_faults_end_every_rank_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = t.join("out");
    let dir = format!("data.dir={}", mnist_dir().display());

    // Global batch that does not divide into the ranks.
    let (o, took) = mpirun(
        4,
        &dp_args(
            &out,
            &[
                "--set".into(),
                dir.clone(),
                "--set".into(),
                "train.batch_scope=global".into(),
                "--set".into(),
                "train.batch_size=66".into(),
            ],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    fails_fast(&o, took, &out, &["train.batch_size", "66", "4 replicas"]);

    // Ranks given different configs.
    let a = dp_args(&out, &["--set".into(), dir.clone()]);
    let b = dp_args(
        &out,
        &[
            "--set".into(),
            dir.clone(),
            "--set".into(),
            "train.lr=0.02".into(),
        ],
    );
    let (o, took) = mpmd(&[a.clone(), b]);
    fails_fast(&o, took, &out, &["resolved config", "rank(s) [1]"]);

    // Data missing on one rank.
    let missing = format!("data.dir={}", t.join("no-data").display());
    let (o, took) = mpmd(&[a.clone(), dp_args(&out, &["--set".into(), missing])]);
    fails_fast(&o, took, &out, &["rank 1", "no-data", "not found"]);

    // Different data on one rank: a copy of MNIST whose first training label differs.
    let other = t.join("other-mnist");
    std::fs::create_dir_all(&other).unwrap();
    for f in partrain::data::IDX_FILES {
        std::fs::copy(mnist_dir().join(f), other.join(f)).unwrap();
    }
    let lp = other.join("train-labels-idx1-ubyte");
    let mut labels = std::fs::read(&lp).unwrap();
    labels[8] = (labels[8] + 1) % 10;
    std::fs::write(&lp, labels).unwrap();
    let (o, took) = mpmd(&[
        a.clone(),
        dp_args(&out, &["--set".into(), format!("data.dir={}", other.display())]),
    ]);
    fails_fast(&o, took, &out, &["loaded data", "rank(s) [1]"]);

    // One rank failing at start-up (its config file does not exist).
    let mut broken = a.clone();
    broken[2] = t.join("missing.yaml").display().to_string();
    let (o, took) = mpmd(&[a, broken]);
    fails_fast(&o, took, &out, &["rank 1:", "missing.yaml"]);
}

/// `sync.compress: bf16` on 2 ranks: two runs of the same seed give the same bytes, the summary
/// counts half the f32 ring's bytes per step, and after 50 steps the weights stay near serial's
/// (each step's mean is within one bf16 rounding, 2^-8 relative, of the exact mean).
#[test]
fn bf16_averaging_repeats_exactly_and_sends_half_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = serial_reference(tmp.path());
    let run = |name: &str, compress: &str| {
        let out = tmp.path().join(name);
        let mut args = equivalence_args("dp", &out);
        args.extend(["--set".into(), format!("sync.compress={compress}")]);
        args.extend(["--set".into(), "sync.shared_memory=false".into()]);
        assert_ok(&mpirun(2, &refs(&args)).0);
        out
    };
    let (a, b, plain) = (run("bf16_a", "bf16"), run("bf16_b", "bf16"), run("f32", "none"));
    assert_eq!(max_abs_diff(&a, &b), 0.0, "bf16 averaging repeats bit for bit");
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).unwrap(),
        std::fs::read(b.join("model.safetensors")).unwrap()
    );
    let (s, p) = (summary(&a), summary(&plain));
    assert_eq!(
        (s["compress"].as_str(), p["compress"].as_str()),
        (Some("bf16"), Some("none"))
    );
    let ratio = s["sent_bytes_per_step"].as_f64().unwrap() / p["sent_bytes_per_step"].as_f64().unwrap();
    assert!((ratio - 0.5).abs() < 1e-3, "bf16 sends {ratio} of f32's bytes");
    assert_matches_serial(&serial, &plain, "f32 all-reduce");
    let diff = max_abs_diff(&serial, &a);
    println!("bf16 vs serial after 50 steps: max |dw| = {diff:e}");
    assert!(
        diff > 0.0 && diff < 2e-2,
        "bf16 averaging drifted {diff} from serial"
    );
}
