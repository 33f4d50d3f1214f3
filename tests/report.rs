//! `partrain report` on a small real sweep: every number in the table traces back to a run's
//! summary.json, and every plot is written.
mod common;
use common::*;
use std::collections::HashMap;

#[test]
fn report_table_traces_back_to_summaries() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let dir = format!("data.dir={}", mnist_dir().display());
    let small = [
        "--set",
        &dir,
        "--set",
        "data.train_limit=1280",
        "--set",
        "data.test_limit=200",
        "--set",
        "train.epochs=2",
        "--set",
        "train.target_accuracy=50",
        "--set",
        "train.eval_every_steps=5",
    ];
    let (c_base, c_dp, c_hy) = (
        config("base.yaml"),
        config("data_parallel.yaml"),
        config("hybrid_pipeline.yaml"),
    );
    let out = |name: &str| runs.join(name).display().to_string();
    let mut a = vec!["serial", "--config", &c_base];
    let o1 = out("serial");
    a.extend(["--out", &o1]);
    a.extend(small);
    assert_ok(&partrain(&a));
    let o2 = out("dp2");
    let mut a = vec!["dp", "--config", &c_dp, "--out", &o2];
    a.extend(small);
    assert_ok(&mpirun(2, &a).0);
    let o3 = out("hybrid2");
    let mut a = vec!["hybrid", "--config", &c_hy, "--out", &o3];
    a.extend(small);
    assert_ok(&mpirun(2, &a).0);
    // An unfinished run is left out.
    std::fs::create_dir_all(runs.join("crashed")).unwrap();
    std::fs::write(runs.join("crashed/summary.json"), r#"{"status": "running"}"#).unwrap();

    let results = tmp.path().join("results");
    let o = partrain(&[
        "report",
        "--runs",
        runs.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(text(&o).contains("crashed: not a completed run"), "{}", text(&o));
    let mut rdr = csv::Reader::from_path(results.join("metrics/speedup_table.csv")).unwrap();
    let rows: Vec<HashMap<String, String>> = rdr.deserialize().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 3);
    let num = |r: &HashMap<String, String>, k: &str| r[k].parse::<f64>().unwrap();
    let base = summary(&runs.join("serial"));
    for r in &rows {
        let s = summary(&runs.join(&r["run"]));
        assert_eq!(num(r, "train_seconds"), s["train_seconds"].as_f64().unwrap());
        assert_eq!(
            num(r, "samples_per_second"),
            s["samples_per_second"].as_f64().unwrap()
        );
        assert_eq!(
            num(r, "final_test_accuracy"),
            s["final_test_accuracy"].as_f64().unwrap()
        );
        assert_eq!(num(r, "ranks"), s["world_size"].as_f64().unwrap());
        assert_eq!(num(r, "global_batch"), s["global_batch"].as_f64().unwrap());
        assert_eq!(r["strategy"], s["strategy"].as_str().unwrap());
        let cores = s["world_size"].as_f64().unwrap() * s["threads_per_rank"].as_f64().unwrap();
        assert_eq!(num(r, "total_cores"), cores);
        let speedup =
            s["samples_per_second"].as_f64().unwrap() / base["samples_per_second"].as_f64().unwrap();
        assert!((num(r, "speedup") - speedup).abs() < 1e-9);
        assert!((num(r, "efficiency") - speedup / cores).abs() < 1e-9);
        let rss: Vec<f64> = s["peak_rss_mb"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(num(r, "peak_rss_mb_max"), rss.iter().cloned().fold(0.0, f64::max));
        assert_eq!(r["baseline"], "serial");
        // Time to accuracy: the run's, and the baseline's over it.
        let ttt = s["time_to_target_s"].as_f64().expect("50% is reached");
        assert_eq!(num(r, "time_to_target_s"), ttt);
        let base_ttt = base["time_to_target_s"].as_f64().unwrap();
        assert!((num(r, "speedup_time_to_target") - base_ttt / ttt).abs() < 1e-9);
        assert_eq!(num(r, "steps_to_target"), s["steps_to_target"].as_f64().unwrap());
    }
    let md = std::fs::read_to_string(results.join("metrics/speedup_table.md")).unwrap();
    assert!(md.contains("| dp2 | dp | weak |"), "{md}");
    assert!(md.contains("(to 50%)"), "{md}");
    for f in [
        "strong_scaling.csv",
        "weak_scaling.csv",
        "strong_scaling.md",
        "weak_scaling.md",
    ] {
        assert!(results.join("metrics").join(f).exists(), "{f}");
    }
    assert_plots(&results);
}

#[test]
fn report_without_runs_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = partrain(&[
        "report",
        "--runs",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().join("r").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no finished run"), "{}", text(&o));
}
