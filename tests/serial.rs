//! The serial baseline end to end on a slice of the real MNIST data.
mod common;
use common::*;

const SLICE: [&str; 6] = [
    "--set",
    "data.train_limit=1280",
    "--set",
    "data.test_limit=500",
    "--set",
    "train.epochs=2",
];

fn serial(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let cfg = config("base.yaml");
    let dir = format!("data.dir={}", mnist_dir().display());
    let mut args = vec![
        "serial",
        "--config",
        &cfg,
        "--set",
        &dir,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(&SLICE);
    args.extend_from_slice(extra);
    partrain(&args)
}

#[test]
fn outputs_are_complete_and_seeded_runs_are_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    assert_ok(&serial(&a, &[]));
    assert_ok(&serial(&b, &[]));
    assert_ok(&serial(&c, &["--set", "run.seed=7"]));
    for f in ["config.yaml", "metrics.csv", "summary.json", "model.safetensors"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    // Same seed: byte-identical weights file. Another seed: different weights.
    let bytes = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(
        bytes(&a),
        bytes(&b),
        "same seed must give identical model.safetensors"
    );
    assert_ne!(bytes(&a), bytes(&c));

    let s = summary(&a);
    assert_eq!(s["status"], "completed");
    assert_eq!(s["strategy"], "serial");
    assert_eq!(s["parameters"], 421_642);
    assert_eq!(s["epochs"], 2);
    assert_eq!(s["steps"], 40);
    assert_eq!(s["global_batch"], 64);
    assert_eq!(s["peak_rss_mb"].as_array().unwrap().len(), 1);
    let acc = s["final_test_accuracy"].as_f64().unwrap();
    // 2 epochs on 1,280 images: far above chance (10%), though far from the full-data figure.
    assert!(acc > 70.0, "accuracy {acc}");

    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "epoch,steps,global_step,images,epoch_end,train_loss,test_loss,test_accuracy,epoch_seconds,\
         samples_per_second,compute_s,allreduce_s,pipeline_wait_s,eval_seconds,run_seconds,lr,noise_scale,peak_rss_mb"
    );
    let (rows, torn) = partrain::record::metrics_csv::read_rows(&a.join("metrics.csv")).unwrap();
    assert!(torn.is_none());
    // The config's target (99 %) and no eval_every_steps: 4 evaluations per epoch of 20 steps
    // (steps 5, 10, 15 and the epoch's end), one row each.
    let steps: Vec<usize> = rows.iter().map(|r| r.global_step).collect();
    assert_eq!(
        steps,
        [5, 10, 15, 20, 25, 30, 35, 40],
        "one row per evaluation: {rows:?}"
    );
    let rows: Vec<_> = rows.into_iter().filter(|r| r.epoch_end).collect();
    assert_eq!(rows.len(), 2, "the two epoch ends");
    assert_eq!(s["evaluations"], 8);
    assert!(s["best_test_accuracy"].as_f64().unwrap() >= acc);
    assert!(
        rows[1].train_loss < rows[0].train_loss,
        "train loss must fall between epochs: {rows:?}"
    );
    assert_eq!(rows[1].test_accuracy, acc);
    assert!(rows[1].run_seconds > rows[0].run_seconds && rows[1].global_step == 40);
    let resolved = std::fs::read_to_string(a.join("config.yaml")).unwrap();
    assert!(resolved.contains("train_limit: 1280"), "{resolved}");
}

#[test]
fn existing_run_folder_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("summary.json"), "precious").unwrap();
    let o = serial(&out, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("already exists") && text(&o).contains("--overwrite"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("summary.json")).unwrap(),
        "precious"
    );
    // With --overwrite the run replaces its own files.
    assert_ok(&serial(&out, &["--overwrite", "--set", "train.epochs=1"]));
    assert_eq!(summary(&out)["status"], "completed");
}

#[test]
fn inspect_prints_seed_parameter_counts() {
    let o = partrain(&["inspect", "--config", &config("base.yaml")]);
    assert_ok(&o);
    assert!(text(&o).contains("total parameters 421642"), "{}", text(&o));
    let o = partrain(&["inspect", "--config", &config("cifar10.yaml")]);
    assert_ok(&o);
    assert!(text(&o).contains("total parameters 1070794"), "{}", text(&o));
}

/// `parallel.micro_batches` > 1 on one stage is gradient accumulation: the same step computed in
/// pieces (each piece's mean loss scaled by 1/M), so the weights after 50 steps equal the
/// un-accumulated run's within the equivalence tolerance.
#[test]
fn gradient_accumulation_equals_one_large_step() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = serial_reference(tmp.path());
    let acc = tmp.path().join("accumulated");
    let mut args = equivalence_args("serial", &acc);
    args.extend(["--set".into(), "parallel.micro_batches=4".into()]);
    let o = partrain(&refs(&args));
    assert_ok(&o);
    assert!(
        text(&o).contains("4 micro-batches of 16 (gradient accumulation)"),
        "{}",
        text(&o)
    );
    assert_eq!(summary(&acc)["micro_batches"], 4);
    assert_matches_serial(&whole, &acc, "serial with 4 accumulated micro-batches");
}
