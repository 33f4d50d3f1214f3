//! Helpers for tests that launch the real `partrain` binary (directly or under mpirun).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_partrain")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real MNIST files (scripts/setup.sh fetches them from the npm registry).
pub fn mnist_dir() -> PathBuf {
    let d = root().join("data/mnist");
    assert!(
        d.join("train-images-idx3-ubyte").exists(),
        "{} is missing: run `bash scripts/setup.sh` first",
        d.display()
    );
    d
}

pub fn config(name: &str) -> String {
    root().join("configs").join(name).display().to_string()
}

/// Runs `cmd` to completion, killing it and failing the test if it takes longer than `limit`
/// (a hang is a bug, never a slow pass).
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drain the pipes in threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut b).ok();
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut b).ok();
        b
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = Output {
                status,
                stdout: t_out.join().unwrap(),
                stderr: t_err.join().unwrap(),
            };
            return (out, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command hung for more than {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn partrain(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(root());
    run_with_limit(cmd, Duration::from_secs(300)).0
}

/// `mpirun -np N partrain ARGS` on this one machine (oversubscribed, unbound, allowed as root),
/// exporting the environment variables named in `export` to every rank.
fn mpirun_base(np: usize, args: &[&str], export: &[&str]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]);
    for var in export {
        cmd.args(["-x", var]);
    }
    cmd.args(["-np", &np.to_string(), bin()])
        .args(args)
        .current_dir(root())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    cmd
}

pub fn mpirun_cmd(np: usize, args: &[&str]) -> Command {
    mpirun_base(np, args, &[])
}

/// `mpirun` with the test-only fault injection `PARTRAIN_FAULT=fault` exported to every rank.
pub fn mpirun_with_fault(np: usize, args: &[&str], fault: &str) -> (Output, Duration) {
    let mut cmd = mpirun_base(np, args, &["PARTRAIN_FAULT"]);
    cmd.env("PARTRAIN_FAULT", fault);
    run_with_limit(cmd, Duration::from_secs(60))
}

pub fn mpirun(np: usize, args: &[&str]) -> (Output, Duration) {
    run_with_limit(mpirun_cmd(np, args), Duration::from_secs(300))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "command failed: {}", text(o));
}

/// Loads a run's `model.safetensors` as (name, tensor) pairs.
pub fn weights(run_dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut w = tch::Tensor::read_safetensors(run_dir.join("model.safetensors")).expect("model.safetensors");
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

/// Largest absolute difference between two runs' weights (same names required).
pub fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .zip(&wb)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

pub fn summary(run_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap()
}

/// `CMD --config configs/CFG --out OUT --set data.dir=<MNIST>`, then `--set S` for each of
/// `sets`: the arguments every test run starts from.
pub fn run_args<S: AsRef<str>>(cmd: &str, cfg: &str, out: &Path, sets: &[S]) -> Vec<String> {
    let mut v = vec![
        cmd.to_string(),
        "--config".into(),
        config(cfg),
        "--out".into(),
        out.display().to_string(),
        "--set".into(),
        format!("data.dir={}", mnist_dir().display()),
    ];
    for s in sets {
        v.push("--set".into());
        v.push(s.as_ref().to_string());
    }
    v
}

/// Every plot `partrain report` writes is in `results/plots` and is a real PNG image.
#[track_caller]
pub fn assert_plots(results: &Path) {
    for p in [
        "speedup.png",
        "efficiency.png",
        "speedup_by_nodes.png",
        "efficiency_by_nodes.png",
        "loss_curves.png",
        "training_comparison.png",
        "time_breakdown.png",
        "accuracy_vs_time.png",
    ] {
        let bytes = std::fs::read(results.join("plots").join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(&bytes[1..4], b"PNG", "{p}");
        assert!(bytes.len() > 5_000, "{p} is suspiciously small");
    }
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// 50 SGD steps of global batch 64 on the first 3,200 MNIST images (one epoch), dropout off.
pub fn equivalence_args(cmd: &str, out: &Path) -> Vec<String> {
    run_args(
        cmd,
        "data_parallel.yaml",
        out,
        &[
            "model.dropout=0",
            "train.batch_scope=global",
            "train.batch_size=64",
            "data.train_limit=3200",
            "data.test_limit=500",
            "train.max_steps=50",
        ],
    )
}

/// Equivalence tolerance: max |w_dp - w_serial| over all weights after 50 steps. Measured with
/// PyTorch on this machine the reordering of the sums costs ~4e-7 (RECIPES.md); a wrong average,
/// stale gradient or wrong shard shows up orders of magnitude above 1e-4.
pub const TOLERANCE: f64 = 1e-4;

/// The equivalence check of the parallel strategies: `run`'s weights within TOLERANCE of
/// `serial`'s, and its (sharded or pipelined) evaluation within 0.2 points of serial's.
#[track_caller]
pub fn assert_matches_serial(serial: &Path, run: &Path, label: &str) {
    let diff = max_abs_diff(serial, run);
    println!("{label} vs serial: max |dw| = {diff:e}");
    assert!(diff < TOLERANCE, "{label} differs from serial by {diff}");
    let (a, b) = (
        summary(run)["final_test_accuracy"].as_f64().unwrap(),
        summary(serial)["final_test_accuracy"].as_f64().unwrap(),
    );
    assert!((a - b).abs() <= 0.2, "{label}: accuracy {a} vs serial {b}");
}

/// A dp run on 2 ranks of `args` (its `--out` is `part`) stopped at step 11 (rank 1 exits)
/// resumes from its step-7 checkpoint and ends with `full`'s weights, byte for byte.
pub fn assert_resumes_bit_identical(full: &Path, part: &Path, mut args: Vec<String>) {
    let (o, _) = mpirun_with_fault(2, &refs(&args), "exit:1:11");
    assert!(!o.status.success(), "{}", text(&o));
    args.push("--resume".into());
    let (o, _) = mpirun(2, &refs(&args));
    assert_ok(&o);
    assert!(text(&o).contains("global step 7"), "{}", text(&o));
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(bytes(full), bytes(part), "resumed weights must be bit-identical");
}

/// The serial run every equivalence test compares against (`equivalence_args`), in `dir/serial`.
pub fn serial_reference(dir: &Path) -> PathBuf {
    let serial = dir.join("serial");
    assert_ok(&partrain(&refs(&equivalence_args("serial", &serial))));
    serial
}

/// An emulated cluster of `nodes` fake nodes on this machine (`scripts/cluster.sh`), taken down
/// (only what it started, by pid) when dropped, even when the test fails. Clusters of different
/// tests run side by side: each has ports and host names of its own (two clusters with the same
/// host names crash Open MPI's start-up now and then; `cluster.sh up` refuses them).
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: usize,
    /// Host names are `{names}1` .. `{names}N`.
    pub names: String,
}

/// How a job's ranks are started on the emulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// `srun -K --mpi=pmix -N nodes -n ranks` (Slurm allocates and launches).
    Srun,
    /// `mpirun --hostfile` through the cluster's rsh agent, no Slurm involved.
    Mpirun,
}

impl Cluster {
    /// `up` in `dir` with Slurm ports (and job ids, see cluster.sh) from `port` and host names
    /// `{names}1..{names}N`.
    pub fn up(dir: &Path, nodes: usize, port: u16, names: &str) -> Cluster {
        Self::up_with(dir, nodes, port, names, &[])
    }

    /// `up` with more arguments (`--link RATE`).
    pub fn up_with(dir: &Path, nodes: usize, port: u16, names: &str, more: &[&str]) -> Cluster {
        let o = Command::new("bash")
            .arg(root().join("scripts/cluster.sh"))
            .args(["up", &nodes.to_string()])
            .args(more)
            .env("PARTRAIN_CLUSTER", dir)
            .env("PARTRAIN_CLUSTER_PORT", port.to_string())
            .env("PARTRAIN_CLUSTER_NODE", names)
            .output()
            .unwrap();
        assert!(o.status.success(), "cluster did not come up: {}", text(&o));
        Cluster {
            dir: dir.to_path_buf(),
            nodes,
            names: names.to_string(),
        }
    }

    /// Node `k`'s host name.
    pub fn host(&self, k: usize) -> String {
        format!("{}{k}", self.names)
    }

    /// `cluster.sh exec ARGS...` (the cluster's environment and /etc files), run from `cwd`.
    pub fn exec(&self, args: &[&str], cwd: &Path) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/cluster.sh"))
            .arg("exec")
            .args(args)
            .env("PARTRAIN_CLUSTER", &self.dir)
            .current_dir(cwd);
        cmd
    }

    /// partrain with `args` on `ranks` ranks spread over `nodes` nodes.
    pub fn launch(&self, launcher: Launcher, nodes: usize, ranks: usize, args: &[&str]) -> Command {
        let (n, np, per) = (nodes.to_string(), ranks.to_string(), (ranks / nodes).to_string());
        let hostfile = self.dir.join("hostfile").display().to_string();
        let mut all: Vec<&str> = match launcher {
            Launcher::Srun => vec!["srun", "-K", "--mpi=pmix", "--time=5", "-N", &n, "-n", &np],
            Launcher::Mpirun => vec![
                "mpirun",
                "--hostfile",
                &hostfile,
                "-np",
                &np,
                "--map-by",
                "ppr:",
                "--bind-to",
                "none",
            ],
        };
        let ppr = format!("ppr:{per}:node");
        if launcher == Launcher::Mpirun {
            all[6] = &ppr;
        }
        all.push(bin());
        all.extend_from_slice(args);
        self.exec(&all, &root())
    }

    pub fn kill_node(&self, k: usize) {
        let o = Command::new("bash")
            .arg(root().join("scripts/cluster.sh"))
            .args(["kill-node", &k.to_string()])
            .env("PARTRAIN_CLUSTER", &self.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "kill-node {k}: {}", text(&o));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/cluster.sh"))
            .arg("down")
            .env("PARTRAIN_CLUSTER", &self.dir)
            .status();
    }
}
