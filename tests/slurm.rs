//! The SLURM workflow against a real one-node Slurm cluster on localhost (scripts/slurm_local.sh):
//! node counts 1 and 2 mapped onto the one node, a few hundred MNIST images, srun --mpi=pmix and
//! mpirun launchers; the table and plots must exist and agree with the runs' summaries.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Stops the daemons it started, even when the test fails.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let o = Command::new("bash")
            .arg(root().join("scripts/slurm_local.sh"))
            .arg("start")
            .arg(dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "slurm did not start: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let conf = out
            .trim()
            .strip_prefix("export SLURM_CONF=")
            .expect("SLURM_CONF line")
            .to_string();
        Cluster {
            dir: dir.to_path_buf(),
            conf,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/slurm_local.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn job_state(conf: &str, id: &str) -> String {
    let o = Command::new("scontrol")
        .args(["show", "job", id])
        .env("SLURM_CONF", conf)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    s.split_whitespace()
        .find_map(|w| w.strip_prefix("JobState="))
        .unwrap_or("UNKNOWN")
        .to_string()
}

/// Runs the driver and waits for its report job; returns the report job's final state.
fn workflow(cluster: &Cluster, work: &Path, node_counts: &str, launcher: &str) -> String {
    let o = Command::new("bash")
        .arg(root().join("slurm/run_all_scaling_and_plot.slurm"))
        .current_dir(root())
        .env("SLURM_CONF", &cluster.conf)
        .env("PARTRAIN_ROOT", root())
        .env("NODE_COUNTS", node_counts)
        .env("CPUS_PER_TASK", "1")
        .env("PARTRAIN_SLURM_ONE_NODE", "1")
        .env("PARTRAIN_LAUNCHER", launcher)
        .env("EPOCHS", "1")
        .env(
            "SETS",
            format!(
                "data.dir={} data.train_limit=640 data.test_limit=200",
                mnist_dir().display()
            ),
        )
        .env("RUNS", work.join("runs"))
        .env("OUT", work.join("results"))
        .env("LOGS", work.join("logs"))
        .env("TIME_LIMIT", "00:10:00")
        .output()
        .unwrap();
    assert!(o.status.success(), "driver failed: {}", text(&o));
    let id = std::fs::read_to_string(work.join("logs/report_job_id"))
        .unwrap()
        .trim()
        .to_string();
    let start = Instant::now();
    loop {
        let state = job_state(&cluster.conf, &id);
        if !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"].contains(&state.as_str()) {
            return state;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "report job {id} still {state} after 300 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn logs(work: &Path) -> String {
    let mut all = String::new();
    for e in std::fs::read_dir(work.join("logs")).unwrap().flatten() {
        all += &format!(
            "== {}\n{}\n",
            e.path().display(),
            std::fs::read_to_string(e.path()).unwrap_or_default()
        );
    }
    all
}

#[test]
fn slurm_workflow_runs_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&tmp.path().join("slurm"));

    let work = tmp.path().join("srun");
    let state = workflow(&cluster, &work, "1 2", "srun");
    assert_eq!(state, "COMPLETED", "report job: {state}\n{}", logs(&work));
    let results = work.join("results");
    assert_plots(&results);
    let mut rdr = csv::Reader::from_path(results.join("metrics/speedup_table.csv")).unwrap();
    let rows: Vec<std::collections::HashMap<String, String>> =
        rdr.deserialize().map(|r| r.unwrap()).collect();
    let mut names: Vec<&str> = rows.iter().map(|r| r["run"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["dp_1n_t1", "dp_2n_t1", "hybrid_2n_t1", "serial_1n_t1"]);
    for r in &rows {
        let s = summary(&work.join("runs").join(&r["run"]));
        assert_eq!(s["status"], "completed");
        assert_eq!(
            r["samples_per_second"].parse::<f64>().unwrap(),
            s["samples_per_second"].as_f64().unwrap()
        );
        assert_eq!(
            r["final_test_accuracy"].parse::<f64>().unwrap(),
            s["final_test_accuracy"].as_f64().unwrap()
        );
        assert_eq!(
            r["ranks"].parse::<u64>().unwrap(),
            s["world_size"].as_u64().unwrap()
        );
    }

    // The same workflow with mpirun inside the allocation.
    let work = tmp.path().join("mpirun");
    let state = workflow(&cluster, &work, "2", "mpirun");
    assert_eq!(state, "COMPLETED", "report job: {state}\n{}", logs(&work));
    assert_eq!(summary(&work.join("runs/dp_2n_t1"))["world_size"], 2);
    assert!(logs(&work).contains("launcher mpirun"));
}
