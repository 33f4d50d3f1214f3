//! Large-batch optimisation and time to accuracy: every optimizer with warmup and cosine decay
//! gives the same weights in every layout, resume mid-warmup is bit-identical (books included),
//! the time-to-target bookkeeping follows metrics.csv, and the noise scale is measured wherever a
//! step has two gradients.
mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// 50 steps of global batch 64 on 3,200 images (one epoch), dropout off, with `optimizer`, a linear
/// warmup over 15 steps from 0.005 to 0.01 (linear scaling from a reference batch of 32) and a
/// cosine decay to 0 at step 50, weight decay on.
fn recipe_args(cmd: &str, cfg: &str, out: &Path, optimizer: &str, extra: &[&str]) -> Vec<String> {
    let mut sets = vec![
        "model.dropout=0".to_string(),
        "train.batch_scope=global".into(),
        "train.batch_size=64".into(),
        "data.train_limit=3200".into(),
        "data.test_limit=500".into(),
        "train.epochs=1".into(),
        "train.lr=0.005".into(),
        "train.lr_scaling=linear".into(),
        "train.lr_reference_batch=32".into(),
        "train.warmup_epochs=0.3".into(),
        "train.lr_schedule=cosine".into(),
        "train.weight_decay=0.0005".into(),
        format!("train.optimizer={optimizer}"),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    run_args(cmd, cfg, out, &sets)
}

/// Serial with 4 micro-batches (accumulation) is the reference; dp on 2 and 4 ranks and hybrid
/// 2 x 2 take the same 50 steps: weights within TOLERANCE, for sgd, nesterov and lars, and for
/// adam, adamw and lamb at a tenth of the rate (their steps are normalised: 0.01 per element).
///
/// Why warmup and decay here, not only because they are the recipe: at a constant rate of 0.01,
/// Nesterov with momentum 0.9 amplifies the rounding difference between one batch of 64 and two
/// of 32 from 1e-8 after 5 steps to 1.7e-3 after 50 (plain momentum SGD: 9e-8), measured here;
/// dp 2 is byte-identical to serial with 2 micro-batches either way, so it is the dynamics at
/// that rate, not the layout.
#[test]
fn every_optimizer_gives_the_same_weights_in_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for optimizer in ["sgd", "nesterov", "lars", "adam", "adamw", "lamb"] {
        let dir = tmp.path().join(optimizer);
        let serial = dir.join("serial");
        let lr = match optimizer.starts_with("ada") || optimizer == "lamb" {
            true => "train.lr=0.0005",
            false => "train.lr=0.005",
        };
        let accumulate = ["parallel.micro_batches=4", lr];
        assert_ok(&partrain(&refs(&recipe_args(
            "serial",
            "base.yaml",
            &serial,
            optimizer,
            &accumulate,
        ))));
        for np in [2, 4] {
            let out = dir.join(format!("dp{np}"));
            let args = recipe_args("dp", "data_parallel.yaml", &out, optimizer, &[lr]);
            assert_ok(&mpirun(np, &refs(&args)).0);
            assert_matches_serial(&serial, &out, &format!("{optimizer} dp {np}"));
        }
        let out = dir.join("hybrid");
        let args = recipe_args("hybrid", "hybrid_pipeline.yaml", &out, optimizer, &[lr]);
        assert_ok(&mpirun(4, &refs(&args)).0);
        assert_matches_serial(&serial, &out, &format!("{optimizer} hybrid 2x2"));
        let plan = &summary(&out)["optimizer"];
        assert_eq!(plan["optimizer"], optimizer);
        let base: f64 = lr["train.lr=".len()..].parse().unwrap();
        let peak = plan["peak_lr"].as_f64().unwrap();
        assert!((peak - 2.0 * base).abs() < 1e-12, "{plan}");
    }
}

/// A dp run killed mid-warmup (step 11 of 15) resumes from its step-7 checkpoint and ends
/// byte-identical to the uninterrupted run, with the same noise scale, evaluations and step to
/// target in its summary and the same accuracies in metrics.csv.
#[test]
fn resume_mid_warmup_is_bit_identical_books_included() {
    // LARS keeps momentum; LAMB keeps two moments and a bias correction from the step count.
    for optimizer in ["lars", "lamb"] {
        resume_is_bit_identical(optimizer);
    }
}

fn resume_is_bit_identical(optimizer: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (full, part) = (tmp.path().join("full"), tmp.path().join("part"));
    let extra = [
        "checkpoint.every_steps=7",
        "train.eval_every_steps=5",
        "train.target_accuracy=80",
        "train.max_steps=30",
    ];
    let args = recipe_args("dp", "data_parallel.yaml", &full, optimizer, &extra);
    assert_ok(&mpirun(2, &refs(&args)).0);
    let args = recipe_args("dp", "data_parallel.yaml", &part, optimizer, &extra);
    assert_resumes_bit_identical(&full, &part, args);
    let (a, b) = (summary(&full), summary(&part));
    for key in [
        "noise_scale",
        "steps_to_target",
        "images_to_target",
        "evaluations",
        "final_test_accuracy",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    assert!(a["noise_scale"].as_f64().unwrap() > 0.0);
    let accuracies = |d: &Path| -> Vec<(String, String)> {
        let mut r = csv::Reader::from_path(d.join("metrics.csv")).unwrap();
        let h = r.headers().unwrap().clone();
        let (step, acc) = (
            h.iter().position(|c| c == "global_step").unwrap(),
            h.iter().position(|c| c == "test_accuracy").unwrap(),
        );
        r.records()
            .map(|x| {
                let x = x.unwrap();
                (x[step].to_string(), x[acc].to_string())
            })
            .collect()
    };
    assert_eq!(accuracies(&full), accuracies(&part));
}

/// The books of time to accuracy: the first row of metrics.csv at or above the target gives the
/// summary's step, images and (fractional) epochs; with stop_at_target the run ends there; the run
/// clock covers training and evaluations; the rate follows the schedule.
#[test]
fn time_to_target_follows_the_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = run_args(
        "serial",
        "base.yaml",
        &out,
        &[
            "data.train_limit=6400",
            "data.test_limit=1000",
            "train.epochs=3",
            "train.eval_every_steps=20",
            "train.target_accuracy=90",
            "train.stop_at_target=true",
            "parallel.micro_batches=2",
        ],
    );
    let o = partrain(&refs(&args));
    assert_ok(&o);
    assert!(text(&o).contains("target 90% reached"), "{}", text(&o));
    let s = summary(&out);
    let mut r = csv::Reader::from_path(out.join("metrics.csv")).unwrap();
    let rows: Vec<partrain::record::metrics_csv::EvalRow> = r.deserialize().map(|x| x.unwrap()).collect();
    let first = rows
        .iter()
        .find(|r| r.test_accuracy >= 90.0)
        .expect("a row at the target");
    assert_eq!(s["steps_to_target"], first.global_step);
    assert_eq!(s["images_to_target"], first.images);
    assert_eq!(first.images, 64 * first.global_step);
    let epochs = s["epochs_to_target"].as_f64().unwrap();
    assert!((epochs - first.images as f64 / 6400.0).abs() < 1e-12);
    assert!((s["time_to_target_s"].as_f64().unwrap() - first.run_seconds).abs() < 0.05);
    assert!(s["stopped_at_target"].as_bool().unwrap());
    assert_eq!(s["steps"], first.global_step, "the run stops at the target");
    assert_eq!(rows.last().unwrap().global_step, first.global_step);
    // Evaluations every 20 steps and at each epoch's end (100 steps), and their time counts.
    assert!(rows.iter().all(|r| r.global_step % 20 == 0 || r.epoch_end));
    assert_eq!(s["evaluations"], rows.len());
    let run = s["run_seconds"].as_f64().unwrap();
    let (train, eval) = (
        s["train_seconds"].as_f64().unwrap(),
        s["eval_seconds"].as_f64().unwrap(),
    );
    assert!(
        run >= train + eval - 0.01,
        "run clock {run} < train {train} + eval {eval}"
    );
    assert!(rows.iter().all(|r| r.lr == 0.01));
    assert!(
        rows.last().unwrap().noise_scale.is_some(),
        "accumulation measures it"
    );
}

/// The noise scale is measured with two gradients per step (dp, micro-batches) and absent with one.
#[test]
fn noise_scale_wherever_a_step_has_two_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let short = ["data.train_limit=1280", "data.test_limit=200", "train.epochs=1"];
    let serial = tmp.path().join("serial");
    assert_ok(&partrain(&refs(&run_args(
        "serial",
        "base.yaml",
        &serial,
        &short,
    ))));
    assert!(summary(&serial)["noise_scale"].is_null());
    let dp = tmp.path().join("dp");
    assert_ok(&mpirun(2, &refs(&run_args("dp", "data_parallel.yaml", &dp, &short))).0);
    let b = summary(&dp)["noise_scale"]
        .as_f64()
        .expect("dp measures the noise scale");
    assert!(b.is_finite() && b > 0.0, "{b}");
    // Switched off: no measurement, no all-reduce.
    let off = tmp.path().join("off");
    let mut sets = short.to_vec();
    sets.push("train.noise_scale_every=0");
    assert_ok(&mpirun(2, &refs(&run_args("dp", "data_parallel.yaml", &off, &sets))).0);
    assert!(summary(&off)["noise_scale"].is_null());
}

/// `configs/large_batch.yaml` resolves to the recipe it promises, for serial (accumulation) and dp.
#[test]
fn the_large_batch_config_is_ready_to_run() {
    let cfg = config("large_batch.yaml");
    for (np, expect) in [("1", "accumulation"), ("2", "gradient averaging: shared_memory")] {
        let mut cmd = Command::new(bin());
        cmd.args(["inspect", "--config", &cfg, "--np", np])
            .current_dir(root());
        let (o, _) = run_with_limit(cmd, Duration::from_secs(60));
        assert_ok(&o);
        let t = text(&o);
        assert!(t.contains("global 4096") && t.contains(expect), "{t}");
        assert!(t.contains("optimizer: lars"), "{t}");
    }
}
