//! Diagnosing and surviving faults on a cluster (issue 16), with the real binary under mpirun:
//! the watchdog names the missing rank and the operation, `partrain doctor` names the same from
//! the flight records, the collective check mode catches a skipped collective with both sides
//! named, SIGUSR1 checkpoints and exits 75 and the resumed run ends bit-identical, the pipeline's
//! edge cases match serial, and the preflight is in the log and summary.json.
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A run on the first 1,280 MNIST images, with `sets` on top.
fn slice_args(cmd: &str, cfg: &str, out: &Path, sets: &[&str]) -> Vec<String> {
    // No target: metrics.csv's first row is then the first epoch's end (run_and_signal waits for it).
    let mut all = vec![
        "data.train_limit=1280",
        "data.test_limit=200",
        "train.target_accuracy=null",
    ];
    all.extend_from_slice(sets);
    run_args(cmd, cfg, out, &all)
}

fn doctor(run: &Path) -> String {
    let o = partrain(&["doctor", &run.display().to_string()]);
    assert_ok(&o);
    text(&o)
}

/// The text between `start` and the next `end` after it in `s`.
fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).unwrap_or_else(|| panic!("`{start}` not in:\n{s}")) + start.len();
    let len = s[from..]
        .find(end)
        .unwrap_or_else(|| panic!("`{end}` not after `{start}` in:\n{s}"));
    &s[from..from + len]
}

#[test]
fn a_stalled_rank_is_named_by_the_watchdog_and_by_doctor() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stall");
    let sets = ["parallel.timeout_s=5", "parallel.warn_s=2"];
    let args = slice_args("dp", "data_parallel.yaml", &out, &sets);
    let (o, took) = mpirun_with_fault(3, &refs(&args), "stall:1:5");
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(took < Duration::from_secs(30), "detection took {took:?}:\n{msg}");
    // The warning comes once, before the abort, on the waiting ranks.
    assert!(
        msg.contains("(parallel.warn_s = 2); not arrived: rank 1"),
        "{msg}"
    );
    // The abort names the operation with its sequence number, the missing rank and the one that arrived.
    let abort = msg
        .lines()
        .find(|l| l.starts_with("partrain rank 0: error: no progress"))
        .expect(&msg);
    let op = between(abort, "no progress for 5 s in ", " at epoch 1 step 5");
    assert!(
        op.contains(" #") && op.contains("(gradients, 421,648 f32)"),
        "{abort}"
    );
    assert!(
        abort.contains("not arrived: rank 1 (this node: outside MPI"),
        "{abort}"
    );
    assert!(abort.contains("arrived: rank(s) 2"), "{abort}");
    // The stalled rank knows it is the one outside MPI.
    assert!(
        msg.contains("partrain rank 1: stalled: no communication for 5 s"),
        "{msg}"
    );
    for r in 0..3 {
        assert!(
            out.join(format!("flight/rank{r}.json")).exists(),
            "rank {r}'s flight record"
        );
    }
    let report = doctor(&out);
    assert!(
        report.contains(&format!(
            "first operation the ranks did not all complete: {op} at step 5"
        )),
        "doctor names `{op}`:\n{report}"
    );
    assert!(report.contains("entered by rank(s) 0, 2"), "{report}");
    assert!(
        report.contains("rank 1 never entered it: last completed"),
        "{report}"
    );
    println!("stall detected in {took:?}:\n{abort}\n{report}");
}

/// `mpirun` with PARTRAIN_DEBUG=collectives (and a fault, if any) exported to every rank.
fn mpirun_checked(np: usize, args: &[String], fault: Option<&str>) -> (Output, Duration) {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        .args(["-x", "PARTRAIN_DEBUG"]);
    if let Some(f) = fault {
        cmd.args(["-x", "PARTRAIN_FAULT"]).env("PARTRAIN_FAULT", f);
    }
    cmd.args(["-np", &np.to_string(), bin()])
        .args(args)
        .current_dir(root())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("PARTRAIN_DEBUG", "collectives");
    run_with_limit(cmd, Duration::from_secs(120))
}

#[test]
fn check_mode_catches_a_skipped_collective_with_both_sides_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("skip");
    // The abort threshold is far away: the check mode, not the watchdog, must stop this job.
    let args = slice_args("dp", "data_parallel.yaml", &out, &["parallel.timeout_s=60"]);
    let (o, took) = mpirun_checked(2, &args, Some("skip-averaging:1:5"));
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(took < Duration::from_secs(20), "detection took {took:?}:\n{msg}");
    let line = msg
        .lines()
        .find(|l| l.contains("PARTRAIN_DEBUG=collectives: rank 0"))
        .expect(&msg);
    assert!(
        line.contains("rank 0 entered the check of collective #"),
        "{line}"
    );
    assert!(
        line.contains("but rank 1 is in the check of collective #"),
        "{line}"
    );
    let report = doctor(&out);
    assert!(report.contains("rank 1 never entered it"), "{report}");
    assert!(report.contains("rank 0 never entered it"), "{report}");
    println!("skipped collective caught in {took:?}:\n{line}\n{report}");
}

#[test]
fn unknown_debug_words_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bad");
    let mut cmd = Command::new(bin());
    cmd.args(slice_args("dp", "data_parallel.yaml", &out, &[]))
        .env("PARTRAIN_DEBUG", "colectives");
    let (o, _) = run_with_limit(cmd, Duration::from_secs(60));
    assert!(!o.status.success());
    assert!(text(&o).contains("PARTRAIN_DEBUG=colectives: unknown word `colectives` (expected: collectives)"));
    assert!(!out.exists(), "nothing written");
}

/// Starts `cmd`, sends `signal` to it once `metrics.csv` in `run` has its first epoch's row, and
/// waits for it to end.
fn run_and_signal(mut cmd: Command, run: &Path, signal: i32) -> Output {
    let start = Instant::now();
    let child = cmd
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let rows = || std::fs::read_to_string(run.join("metrics.csv")).map_or(0, |t| t.lines().count());
    while rows() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no epoch finished in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the child we started and have not waited for (its pid is still ours).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    child.wait_with_output().expect("wait")
}

fn model_bytes(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("model.safetensors")).unwrap()
}

/// The run in `dir/name` stopped by SIGUSR1 after its first epoch, then resumed, against the
/// same run uninterrupted; `launch` makes the command of `args`.
fn signal_then_resume(dir: &Path, cmd: &str, cfg: &str, launch: impl Fn(&[String]) -> Command) {
    let sets = ["train.epochs=12", "data.train_limit=640", "data.test_limit=200"];
    let whole = dir.join(format!("{cmd}_whole"));
    let (o, _) = run_with_limit(
        launch(&run_args(cmd, cfg, &whole, &sets)),
        Duration::from_secs(300),
    );
    assert_ok(&o);
    let cut = dir.join(format!("{cmd}_cut"));
    let o = run_and_signal(launch(&run_args(cmd, cfg, &cut, &sets)), &cut, libc::SIGUSR1);
    let msg = text(&o);
    assert_eq!(
        o.status.code(),
        Some(75),
        "exit 75 (requeue) after SIGUSR1:\n{msg}"
    );
    assert!(
        msg.contains("SIGUSR1: stopping at the next step boundary"),
        "{msg}"
    );
    assert!(msg.contains("checkpoint written to"), "{msg}");
    let s = summary(&cut);
    assert_eq!(s["status"], "interrupted", "{s}");
    assert_eq!(s["signal"], "SIGUSR1");
    let stopped_at = s["global_step"].as_u64().unwrap();
    let total = summary(&whole)["steps"].as_u64().unwrap();
    assert!(
        stopped_at > 0 && stopped_at < total,
        "stopped after step {stopped_at} of {total}"
    );
    assert!(cut.join("checkpoint.safetensors").exists());
    assert!(
        !cut.join("model.safetensors").exists(),
        "no final model from an interrupted run"
    );
    let mut resume = run_args(cmd, cfg, &cut, &sets);
    resume.push("--resume".into());
    let (o, _) = run_with_limit(launch(&resume), Duration::from_secs(300));
    assert_ok(&o);
    assert_eq!(summary(&cut)["status"], "completed");
    assert!(
        model_bytes(&cut) == model_bytes(&whole),
        "{cmd}: stopped after step {stopped_at} and resumed, the weights differ from the uninterrupted run"
    );
    println!("{cmd}: SIGUSR1 stopped after global step {stopped_at}; resumed run bit-identical");
}

#[test]
fn sigusr1_checkpoints_exits_75_and_resume_is_bit_identical_serial() {
    let tmp = tempfile::tempdir().unwrap();
    signal_then_resume(tmp.path(), "serial", "base.yaml", |args| {
        let mut c = Command::new(bin());
        c.args(args);
        c
    });
}

#[test]
fn sigusr1_checkpoints_exits_75_and_resume_is_bit_identical_dp() {
    let tmp = tempfile::tempdir().unwrap();
    // mpirun forwards SIGUSR1 to every rank; the ranks agree on the step to stop at.
    signal_then_resume(tmp.path(), "dp", "data_parallel.yaml", |args| {
        mpirun_cmd(2, &refs(args))
    });
}

/// One micro-batch, fewer micro-batches than stages, and as many stages as layers (11): each
/// trains (under the watchdog's 60 s) to serial's weights. The middle one also runs the
/// collective check mode, whose checks of every send and receive must change nothing.
#[test]
fn pipeline_edge_cases_match_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let serial = serial_reference(tmp.path());
    // (ranks, stages, micro-batches, check mode)
    for (np, stages, micro, checked) in [(2, 2, 1, false), (3, 3, 2, true), (11, 11, 4, false)] {
        let label = format!("{stages} stages x {micro} micro-batch(es) on {np} ranks");
        let out = tmp.path().join(format!("s{stages}m{micro}"));
        let mut args = equivalence_args("hybrid", &out);
        for s in [
            format!("parallel.stages={stages}"),
            format!("parallel.micro_batches={micro}"),
            "parallel.timeout_s=60".into(),
        ] {
            args.push("--set".into());
            args.push(s);
        }
        let (o, took) = match checked {
            true => mpirun_checked(np, &args, None),
            false => mpirun(np, &refs(&args)),
        };
        assert_ok(&o);
        assert_eq!(summary(&out)["stages"], stages, "{label}");
        assert_matches_serial(&serial, &out, &format!("{label} in {took:?}"));
    }
}

#[test]
fn the_preflight_is_in_the_log_and_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pf");
    let args = slice_args("dp", "data_parallel.yaml", &out, &["train.max_steps=2"]);
    let (o, _) = mpirun(2, &refs(&args));
    assert_ok(&o);
    let log = text(&o);
    assert!(
        log.contains("preflight: 2 rank(s) on 1 node(s) (2 per node)"),
        "{log}"
    );
    assert!(log.contains("OMPI_COMM_WORLD_SIZE=2"), "{log}");
    let p = &summary(&out)["preflight"];
    assert_eq!(p["world_size"], 2, "{p}");
    assert_eq!(p["nodes"], 1);
    assert_eq!(p["ranks"].as_array().unwrap().len(), 2);
    assert!(
        p["ranks"][1]["cores"].as_str().is_some_and(|c| !c.is_empty()),
        "{p}"
    );
}

#[test]
fn a_launcher_that_contradicts_the_world_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pmi");
    let mut cmd = Command::new(bin());
    // One process that the launcher says is one of 4 ranks: an MPI library other than mpirun's.
    cmd.args(slice_args("dp", "data_parallel.yaml", &out, &[]))
        .env("PMI_SIZE", "4");
    let (o, took) = run_with_limit(cmd, Duration::from_secs(60));
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(
        text(&o).contains("preflight: PMI_SIZE=4 but MPI's world has 1 rank(s)"),
        "{}",
        text(&o)
    );
    assert!(!out.exists(), "nothing written");
}

/// The rank processes `mpirun` (pid `mpirun`) started: its children running partrain.
fn ranks_of(mpirun: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if parent == Some(mpirun) && cmd.contains("partrain") {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A rank paused (SIGSTOP) for half of parallel.timeout_s, twice: no false abort, and the other
/// rank's warnings name it.
#[test]
fn a_rank_paused_for_half_the_timeout_is_warned_about_not_aborted() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let sets = [
        "train.batch_size=8",
        "data.train_limit=800",
        "data.test_limit=200",
        "train.epochs=40",
        "parallel.timeout_s=6",
        "parallel.warn_s=1",
        "checkpoint.every_epochs=0",
    ];
    let child = mpirun_cmd(2, &refs(&run_args("dp", "data_parallel.yaml", &out, &sets)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut ranks = ranks_of(child.id());
    while ranks.len() < 2 || !out.join("metrics.csv").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the job did not start");
        std::thread::sleep(Duration::from_millis(100));
        ranks = ranks_of(child.id());
    }
    for _ in 0..2 {
        // SAFETY: kill(2) of a rank process this test's mpirun started.
        assert_eq!(unsafe { libc::kill(ranks[1], libc::SIGSTOP) }, 0);
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(unsafe { libc::kill(ranks[1], libc::SIGCONT) }, 0);
        std::thread::sleep(Duration::from_secs(1));
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "a pause of half the timeout aborted the job:\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("rank 0: warning") && l.contains("rank 1")),
        "no warning names the paused rank 1:\n{err}"
    );
}

/// A config or layout error under mpirun: one message (rank 0's), the same exit code on every
/// rank, and no MPI_Abort banner.
#[test]
fn start_up_errors_under_mpirun_are_printed_once_without_mpi_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    for (sets, want) in [
        (vec!["train.lr=-1"], "train.lr"),
        (
            vec!["train.batch_scope=global", "train.batch_size=63"],
            "does not divide into 4 replicas",
        ),
    ] {
        let args = run_args("dp", "data_parallel.yaml", &out, &sets);
        let (o, took) = mpirun(4, &refs(&args));
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert_eq!(t.matches(want).count(), 1, "the message once:\n{t}");
        assert!(
            !t.contains("MPI_ABORT") && !t.contains("MPI_Abort"),
            "no abort banner:\n{t}"
        );
        assert!(took < Duration::from_secs(60));
    }
}
