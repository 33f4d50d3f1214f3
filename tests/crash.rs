//! Crash consistency, as PostgreSQL and SQLite test it: a rank killed (SIGKILL) at every write of
//! the checkpoint, the summary and metrics.csv, after the temporary file is written and before the
//! rename, and halfway through its bytes (`PARTRAIN_FAULT=kill-in-write:...`). Each killed run is
//! continued with `--auto-resume --overwrite` (resume when a checkpoint of an unfinished run is
//! there, else start again) and must end with the weights, test accuracy and steps of the run that
//! was never killed. `report`, `doctor` and `timeline` on torn or missing files name them and go on.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// 2 epochs of 10 steps on 640 images, evaluations every 4 steps, checkpoints every 3: writes of
/// the summary (2), metrics.csv (the header and 6 rows) and the checkpoint (8).
fn args(out: &Path) -> Vec<String> {
    run_args(
        "serial",
        "base.yaml",
        out,
        &[
            "data.train_limit=640",
            "data.test_limit=200",
            "train.epochs=2",
            "train.eval_every_steps=4",
            "checkpoint.every_steps=3",
        ],
    )
}

fn run(out: &Path, fault: Option<&str>, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args(out)).args(extra).current_dir(root());
    if let Some(f) = fault {
        cmd.env("PARTRAIN_FAULT", f);
    }
    run_with_limit(cmd, Duration::from_secs(120)).0
}

fn bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn a_kill_at_every_write_resumes_to_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    assert_ok(&run(&full, None, &[]));
    let want = (
        bytes(&full),
        summary(&full)["final_test_accuracy"].clone(),
        summary(&full)["steps"].clone(),
    );
    let mut points = 0;
    for (file, writes) in [("checkpoint", 8), ("summary", 2), ("metrics", 7)] {
        for n in 1..=writes {
            for phase in ["", ":mid"] {
                let fault = format!("kill-in-write:0:{file}:{n}{phase}");
                let out = tmp.path().join(format!("{file}{n}{}", phase.replace(':', "_")));
                let o = run(&out, Some(&fault), &[]);
                assert!(
                    !o.status.success(),
                    "{fault}: the run was not killed: {}",
                    text(&o)
                );
                assert!(
                    text(&o).contains("PARTRAIN_FAULT: killing"),
                    "{fault}: {}",
                    text(&o)
                );
                let o = run(&out, None, &["--auto-resume", "--overwrite"]);
                assert_ok(&o);
                let got = (
                    bytes(&out),
                    summary(&out)["final_test_accuracy"].clone(),
                    summary(&out)["steps"].clone(),
                );
                assert!(
                    got == want,
                    "{fault}: the resumed run differs from the uninterrupted one"
                );
                points += 1;
            }
        }
    }
    assert_eq!(points, 34);
}

/// A dp rank killed while rank 0 writes a checkpoint: the job ends, and it resumes bit-identical.
#[test]
fn a_dp_job_killed_in_a_checkpoint_write_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let sets = [
        "data.train_limit=1280",
        "data.test_limit=200",
        "train.epochs=2",
        "checkpoint.every_steps=4",
    ];
    assert_ok(&mpirun(2, &refs(&run_args("dp", "data_parallel.yaml", &full, &sets))).0);
    let args = run_args("dp", "data_parallel.yaml", &part, &sets);
    let (o, _) = mpirun_with_fault(2, &refs(&args), "kill-in-write:0:checkpoint:2:mid");
    assert!(!o.status.success(), "{}", text(&o));
    let mut again = args.clone();
    again.push("--auto-resume".into());
    assert_ok(&mpirun(2, &refs(&again)).0);
    assert_eq!(bytes(&full), bytes(&part));
}

/// `report`, `doctor` and `timeline` read what crashed runs leave: a torn or missing file is named
/// and the rest is read.
#[test]
fn readers_name_torn_and_missing_files_and_go_on() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let good = runs.join("good");
    assert_ok(&run(&good, None, &["--trace"]));
    // A second run whose metrics.csv lost its last line's end, and a third without metrics.csv.
    let torn = runs.join("torn");
    assert_ok(&run(&torn, None, &[]));
    let m = std::fs::read_to_string(torn.join("metrics.csv")).unwrap();
    std::fs::write(torn.join("metrics.csv"), &m[..m.len() - 9]).unwrap();
    let missing = runs.join("missing");
    assert_ok(&run(&missing, None, &[]));
    std::fs::remove_file(missing.join("metrics.csv")).unwrap();
    let o = partrain(&[
        "report",
        "--runs",
        runs.to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert_ok(&o);
    let t = text(&o);
    assert!(t.contains("torn/metrics.csv") && t.contains("torn"), "{t}");
    assert!(t.contains("missing/metrics.csv"), "{t}");
    assert!(t.contains("| good |") && t.contains("| torn |"), "{t}");
    // doctor: one flight record torn, one fine.
    let flight = tmp.path().join("flight");
    std::fs::create_dir_all(&flight).unwrap();
    let rec = r#"{"format": "partrain-flight", "version": 1, "rank": 0, "host": "h", "pid": 1, "reason": "test", "written_us": 0, "step": 3, "comms": {"world": [0, 1]}, "records": []}"#;
    std::fs::write(flight.join("rank0.json"), rec).unwrap();
    std::fs::write(flight.join("rank1.json"), &rec[..40]).unwrap();
    let o = partrain(&["doctor", flight.to_str().unwrap()]);
    assert!(text(&o).contains("rank1.json"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    // timeline: a torn trace.json is named.
    let trace = good.join("trace.json");
    let t = std::fs::read(&trace).unwrap();
    std::fs::write(&trace, &t[..t.len() / 2]).unwrap();
    let o = partrain(&["timeline", good.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("trace.json"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}
