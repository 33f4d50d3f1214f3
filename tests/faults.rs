//! Faults: exact resume after a crash, the watchdog, a killed rank, numerical failure.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A 3-epoch run on the first 1,280 MNIST images, with `sets` on top.
fn slice_args(cmd: &str, cfg: &str, out: &Path, sets: &[&str]) -> Vec<String> {
    let mut all = vec!["data.train_limit=1280", "data.test_limit=200", "train.epochs=3"];
    all.extend_from_slice(sets);
    run_args(cmd, cfg, out, &all)
}

fn bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn serial_resume_after_a_crash_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let args = slice_args("serial", "base.yaml", &full, &[]);
    assert_ok(&partrain(&refs(&args)));
    // Crash right after epoch 1's checkpoint, then resume.
    let mut args = slice_args("serial", "base.yaml", &part, &[]);
    let mut cmd = Command::new(bin());
    cmd.args(&args)
        .current_dir(root())
        .env("PARTRAIN_FAULT", "exit-after-epoch:0:1");
    let (o, _) = run_with_limit(cmd, Duration::from_secs(120));
    assert!(!o.status.success());
    assert_eq!(
        summary(&part)["status"],
        "running",
        "a crashed run is never presented as finished"
    );
    assert!(!part.join("model.safetensors").exists());
    args.push("--resume".into());
    let o = partrain(&refs(&args));
    assert_ok(&o);
    assert!(text(&o).contains("resuming at epoch 2"), "{}", text(&o));
    assert_eq!(
        bytes(&full),
        bytes(&part),
        "resumed weights must be bit-identical"
    );
    let (rows, _) = partrain::record::metrics_csv::read_rows(&part.join("metrics.csv")).unwrap();
    let ends: Vec<usize> = rows.iter().filter(|r| r.epoch_end).map(|r| r.epoch).collect();
    assert_eq!(ends, [1, 2, 3], "one epoch-end row per epoch: {rows:?}");
    assert_eq!(
        summary(&part)["final_train_loss"],
        summary(&full)["final_train_loss"]
    );
}

#[test]
fn dp_resume_mid_epoch_after_a_rank_dies_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let extra = ["checkpoint.every_steps=7"];
    let args = slice_args("dp", "data_parallel.yaml", &full, &extra);
    assert_ok(&mpirun(2, &refs(&args)).0);
    let mut args = slice_args("dp", "data_parallel.yaml", &part, &extra);
    // Rank 1 dies at global step 15 (epoch 2 of 10-step epochs); the last checkpoint is step 14.
    let (o, took) = mpirun_with_fault(2, &refs(&args), "exit:1:15");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(took < Duration::from_secs(30));
    args.push("--resume".into());
    let (o, _) = mpirun(2, &refs(&args));
    assert_ok(&o);
    assert!(
        text(&o).contains("resuming at epoch 2, global step 14"),
        "{}",
        text(&o)
    );
    assert_eq!(
        bytes(&full),
        bytes(&part),
        "resumed dp weights must be bit-identical"
    );
}

#[test]
fn hybrid_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let extra = ["parallel.stage_boundaries=[4]"];
    let args = slice_args("hybrid", "hybrid_pipeline.yaml", &full, &extra);
    assert_ok(&mpirun(2, &refs(&args)).0);
    let mut args = slice_args("hybrid", "hybrid_pipeline.yaml", &part, &extra);
    let (o, _) = mpirun_with_fault(2, &refs(&args), "exit-after-epoch:0:1");
    assert!(!o.status.success());
    args.push("--resume".into());
    assert_ok(&mpirun(2, &refs(&args)).0);
    assert_eq!(
        bytes(&full),
        bytes(&part),
        "resumed hybrid weights must be bit-identical"
    );
}

#[test]
fn stalled_rank_is_caught_by_the_watchdog() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stall");
    let args = slice_args("dp", "data_parallel.yaml", &out, &["parallel.timeout_s=3"]);
    let (o, took) = mpirun_with_fault(2, &refs(&args), "stall:1:5");
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        msg.contains("partrain rank 0") && msg.contains("no progress") && msg.contains("gradient averaging"),
        "{msg}"
    );
    assert!(
        msg.contains("epoch 1 step 5") && msg.contains("parallel.timeout_s"),
        "{msg}"
    );
    assert_eq!(summary(&out)["status"], "running");
}

/// The pid of the process of MPI rank `rank` whose command line mentions `marker`.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.starts_with(bin()) || !cmdline.contains(marker) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if String::from_utf8_lossy(&env)
            .split('\0')
            .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}"))
        {
            return Some(pid);
        }
    }
    None
}

#[test]
fn kill_9_of_one_rank_ends_the_job_and_the_checkpoint_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("killed");
    let args = slice_args(
        "dp",
        "data_parallel.yaml",
        &out,
        &["train.epochs=400", "checkpoint.every_steps=5"],
    );
    let child = mpirun_cmd(2, &refs(&args))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let ckpt = out.join(partrain::train::checkpoint::FILE);
    while !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = rank_pid(out.to_str().unwrap(), 1).expect("rank 1 is running");
    let killed_at = Instant::now();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "job still running 30 s after kill -9"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    println!("ended {:?} after kill -9:\n{err}", killed_at.elapsed());
    assert!(err.contains("rank 1"), "mpirun names the lost rank:\n{err}");
    // The checkpoint is intact and resumable.
    let ck = partrain::train::checkpoint::Checkpoint::load(&out).unwrap();
    assert!(ck.meta.position.global_step >= 5);
    // Resume and train to the end of the next epoch (train.epochs may change on resume).
    let mut resume = args.clone();
    for s in [
        "--set".to_string(),
        format!("train.epochs={}", ck.meta.position.epoch + 1),
        "--resume".into(),
    ] {
        resume.push(s);
    }
    let (o, _) = mpirun(2, &refs(&resume));
    assert_ok(&o);
    assert_eq!(summary(&out)["status"], "completed");
}

#[test]
fn nan_loss_stops_the_run_and_keeps_the_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nan");
    let args = slice_args("serial", "base.yaml", &out, &["checkpoint.every_steps=10"]);
    let mut cmd = Command::new(bin());
    cmd.args(&args)
        .current_dir(root())
        .env("PARTRAIN_FAULT", "nan:0:15");
    let (o, _) = run_with_limit(cmd, Duration::from_secs(60));
    let msg = text(&o);
    assert!(!o.status.success());
    assert!(
        msg.contains("rank 0")
            && msg.contains("loss is NaN")
            && msg.contains("step 15")
            && msg.contains("train.lr = 0.01"),
        "{msg}"
    );
    let s = summary(&out);
    assert_eq!(s["status"], "failed");
    assert!(s["error"].as_str().unwrap().contains("NaN"));
    let ck = partrain::train::checkpoint::Checkpoint::load(&out).unwrap();
    assert_eq!(ck.meta.position.global_step, 10);
    for (name, t) in &ck.tensors {
        assert_eq!(t.isfinite().all().int64_value(&[]), 1, "{name} is not finite");
    }
    assert!(!out.join("model.safetensors").exists());
}

/// A panic on one rank (a bug, not an error it reports) ends the whole job at once: the panic
/// hook names the rank and calls MPI_Abort, instead of leaving the others to wait out
/// `parallel.timeout_s` (300 s by default) while the panicking rank sits in MPI_Finalize.
#[test]
fn a_panicking_rank_ends_the_job_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("panic");
    let args = slice_args("dp", "data_parallel.yaml", &out, &[]);
    let (o, took) = mpirun_with_fault(2, &refs(&args), "panic:1:3");
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{msg}");
    assert!(
        msg.contains("partrain rank 1/2: panic") && msg.contains("step 3"),
        "{msg}"
    );
    println!("panic on rank 1 ended the job in {took:?}");
    // The run says so, and the panicking rank left its flight record.
    let s = summary(&out);
    assert_eq!(s["status"], "failed", "{s}");
    assert!(s["error"].as_str().unwrap().contains("panic"), "{s}");
    assert!(out.join("flight/rank1.json").exists());
}

/// The dp equivalence run's arguments with a fixed global batch, on `np`-independent data.
fn rescale_args(out: &Path, scope: &str, batch: &str) -> Vec<String> {
    slice_args(
        "dp",
        "data_parallel.yaml",
        out,
        &["model.dropout=0", scope, batch],
    )
}

/// `--resume` on another rank count continues the same mathematics when the layout keeps the
/// global batch (batch_scope global): dp 2 ranks -> checkpoint -> dp 4 ranks ends within the
/// equivalence tolerance of the uninterrupted 2-rank run. With batch_scope per_rank the global
/// batch would change, and the resume is refused naming both layouts.
#[test]
fn resume_on_another_rank_count() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let global = ("train.batch_scope=global", "train.batch_size=64");
    assert_ok(&mpirun(2, &refs(&rescale_args(&full, global.0, global.1))).0);
    let mut args = rescale_args(&part, global.0, global.1);
    let (o, _) = mpirun_with_fault(2, &refs(&args), "exit-after-epoch:0:1");
    assert!(!o.status.success());
    args.push("--resume".into());
    let (o, _) = mpirun(4, &refs(&args));
    assert_ok(&o);
    assert!(text(&o).contains("resuming at epoch 2"), "{}", text(&o));
    assert_eq!(summary(&part)["world_size"], 4);
    assert_matches_serial(&full, &part, "dp 2 ranks resumed on 4");

    let per_rank = tmp.path().join("per_rank");
    let mut args = rescale_args(&per_rank, "train.batch_scope=per_rank", "train.batch_size=32");
    let (o, _) = mpirun_with_fault(2, &refs(&args), "exit-after-epoch:0:1");
    assert!(!o.status.success());
    let before = std::fs::read(per_rank.join(partrain::train::checkpoint::FILE)).unwrap();
    args.push("--resume".into());
    let (o, took) = mpirun(4, &refs(&args));
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(took < Duration::from_secs(30));
    assert!(
        msg.contains("2 ranks = 1 stages x 2 replicas, global batch 64")
            && msg.contains("4 ranks = 1 stages x 4 replicas, global batch 128"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(per_rank.join(partrain::train::checkpoint::FILE)).unwrap(),
        before
    );
}

/// A checkpoint of another format version is refused by name, before anything is touched.
#[test]
fn other_checkpoint_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut args = slice_args("serial", "base.yaml", &out, &["train.epochs=1"]);
    assert_ok(&partrain(&refs(&args)));
    let ck = out.join(partrain::train::checkpoint::FILE);
    let tensors = tch::Tensor::read_safetensors(&ck).unwrap();
    let rewrite = |meta: Option<(&str, tch::Tensor)>| {
        let mut t: Vec<(String, tch::Tensor)> = tensors
            .iter()
            .filter(|(n, _)| n != "meta.json")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        t.extend(meta.map(|(n, v)| (n.to_string(), v)));
        tch::Tensor::write_safetensors(&t, &ck).unwrap();
    };
    args.extend(["--set".into(), "train.epochs=2".into(), "--resume".into()]);
    // Version 1 kept unnamed number arrays.
    rewrite(Some(("meta.ints", tch::Tensor::from_slice(&[1i64, 20, 20]))));
    let o = partrain(&refs(&args));
    assert!(!o.status.success());
    assert!(text(&o).contains("version 1 checkpoint"), "{}", text(&o));
    // A newer version.
    let meta = br#"{"format": "partrain-checkpoint", "version": 4}"#;
    rewrite(Some(("meta.json", tch::Tensor::from_slice(&meta[..]))));
    let o = partrain(&refs(&args));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("version 4") && text(&o).contains("newer partrain"),
        "{}",
        text(&o)
    );
    assert_eq!(
        summary(&out)["status"],
        "completed",
        "the finished run is left alone"
    );
}
