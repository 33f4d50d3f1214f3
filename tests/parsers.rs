//! Parsers that never panic: generated inputs for every parser of a file partrain reads, the
//! ones a crashed run leaves (truncated, bit-flipped, huge counts and dimensions, wrong types,
//! garbage). Every input must end in `Ok` or an error, never a panic, an abort or an allocation of
//! what a header claims.
//!
//!   cargo test --release --test parsers                       # PARSER_CASES=2000 per parser (CI)
//!   PARSER_CASES=15000 cargo test --release --test parsers    # the long run (docs/testing.md)
//!
//! Inputs are mutations of a valid seed file (cut at any byte; 1-8 bits flipped; a 4-byte field
//! overwritten with any u32, huge values included; for JSON a value anywhere replaced by another
//! type or a huge number), plus plain random bytes.
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("PARSER_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Byte-level mutations of `seed`, and random bytes.
fn bytes_from(seed: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let len = seed.len().max(1);
    let (a, b, c) = (seed.clone(), seed.clone(), seed);
    prop_oneof![
        (0..=len).prop_map(move |n| a[..n.min(a.len())].to_vec()),
        prop::collection::vec((0..len, 0u8..8), 1..8).prop_map(move |flips| {
            let mut v = b.clone();
            for (i, bit) in flips {
                if let Some(x) = v.get_mut(i) {
                    *x ^= 1 << bit;
                }
            }
            v
        }),
        (
            0..len,
            prop_oneof![any::<u32>(), Just(u32::MAX), Just(0x7fff_ffff), Just(0)]
        )
            .prop_map(move |(i, x)| {
                let mut v = c.clone();
                for (k, byte) in x.to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = v.get_mut(i + k) {
                        *slot = byte;
                    }
                }
                v
            }),
        prop::collection::vec(any::<u8>(), 0..600),
    ]
    .boxed()
}

/// Every path to a value in a JSON document.
fn paths(v: &serde_json::Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(at.clone());
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| paths(x, [at.clone(), vec![k.clone()]].concat(), out)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| paths(x, [at.clone(), vec![i.to_string()]].concat(), out)),
        _ => {}
    }
}

fn replace(v: &mut serde_json::Value, path: &[String], new: serde_json::Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    let child = match v {
        serde_json::Value::Object(m) => m.get_mut(first),
        serde_json::Value::Array(a) => first.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    };
    if let Some(c) = child {
        replace(c, rest, new);
    }
}

/// JSON mutations of `seed` (a value anywhere replaced by another type, a huge or negative number,
/// a deep nest), and the byte-level ones of its text.
fn json_from(seed: serde_json::Value) -> BoxedStrategy<Vec<u8>> {
    let mut all = Vec::new();
    paths(&seed, Vec::new(), &mut all);
    let weird = prop_oneof![
        Just(serde_json::Value::Null),
        Just(serde_json::json!("text")),
        Just(serde_json::json!([1, 2, 3])),
        Just(serde_json::json!({"a": 1})),
        Just(serde_json::json!(-1)),
        Just(serde_json::json!(u64::MAX)),
        Just(serde_json::json!(1e308)),
        Just(serde_json::json!(0)),
        any::<i64>().prop_map(|x| serde_json::json!(x)),
        any::<f64>().prop_map(|x| serde_json::json!(x)),
    ];
    let text = serde_json::to_vec(&seed).unwrap();
    let structured = (0..all.len(), weird).prop_map(move |(i, new)| {
        let mut v = seed.clone();
        replace(&mut v, &all[i], new);
        serde_json::to_vec(&v).unwrap()
    });
    prop_oneof![3 => structured, 2 => bytes_from(text)].boxed()
}

/// Runs `check` on `cases()` inputs from `strategy`; a panic fails the test with the input.
fn never_panics(name: &str, strategy: BoxedStrategy<Vec<u8>>, check: impl Fn(&[u8])) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |input| {
            check(&input);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{name}: {} generated inputs, no panic", cases());
}

#[test]
fn idx_images_and_labels() {
    let pixels: Vec<u8> = (0..3 * 28 * 28).map(|i| (i % 255) as u8).collect();
    let images = partrain::data::idx::encode_images(3, 28, 28, &pixels);
    never_panics("IDX images", bytes_from(images), |b| {
        let _ = partrain::data::idx::parse_images(b.to_vec(), "images");
    });
    let labels = partrain::data::idx::encode_labels(&[1, 7, 9, 0]);
    never_panics("IDX labels", bytes_from(labels), |b| {
        let _ = partrain::data::idx::parse_labels(b, "labels", 10);
    });
}

#[test]
fn cifar_batches() {
    let pixels: Vec<u8> = (0..2 * 3072).map(|i| (i % 251) as u8).collect();
    let batch = partrain::data::cifar::encode_batch(&[3, 9], &pixels);
    never_panics("CIFAR-10", bytes_from(batch), |b| {
        let (mut p, mut l) = (Vec::new(), Vec::new());
        let _ = partrain::data::cifar::parse_batch(b, "batch", &mut p, &mut l);
    });
}

#[test]
fn config_yaml_and_set_overrides() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let text = std::fs::read(root.join("hybrid_pipeline.yaml")).unwrap();
    never_panics("config YAML", bytes_from(text), |b| {
        let _ = partrain::config::from_yaml_str(&String::from_utf8_lossy(b), &[]);
    });
    let keys = [
        "train.epochs",
        "train.lr",
        "parallel.stages",
        "parallel.stage_boundaries",
        "model.preset",
        "train.lr_decay_epochs",
        "data.train_limit",
        "sync.mode",
        "train.warmup_epochs",
        // Keys left out of the resolved config at their default (`--set` adds them).
        "model.batchnorm_running",
        "model.layers",
        "model.nosuchkey",
        "run",
        "train",
    ];
    let set = (
        prop::sample::select(keys.to_vec()),
        prop::collection::vec(any::<u8>(), 0..24),
        any::<i64>(),
        0u8..4,
    )
        .prop_map(|(k, raw, n, kind)| {
            let value = match kind {
                0 => String::from_utf8_lossy(&raw).to_string(),
                1 => n.to_string(),
                2 => format!("[{n}, {}]", n.wrapping_mul(3)),
                _ => format!("{{a: {n}}}"),
            };
            format!("{k}={value}").into_bytes()
        })
        .boxed();
    never_panics("--set", set, |b| {
        let _ = partrain::config::from_yaml_str("", &[String::from_utf8_lossy(b).to_string()]);
    });
}

/// `model.layers` (a residual net with batch norm and strided convolutions) fed truncations, bit
/// flips and random bytes: read and validated (shape inference included), never a panic.
#[test]
fn net_layers_yaml() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let text = std::fs::read(root.join("resnet_fashion.yaml")).unwrap();
    never_panics("model.layers", bytes_from(text), |b| {
        if let Ok(cfg) = partrain::config::from_yaml_str(&String::from_utf8_lossy(b), &[]) {
            let _ = cfg.net();
        }
    });
}

#[test]
fn checkpoint_metadata() {
    let meta = serde_json::json!({
        "format": "partrain-checkpoint", "version": 3, "config_hash": "00ff",
        "position": {"epoch": 2, "step_in_epoch": 7, "global_step": 57, "trained_samples": 3648,
            "train_seconds": 1.5, "epoch_loss_sum": 0.12, "epoch_loss_count": 7, "epoch_samples": 448,
            "epoch_seconds": 0.3, "noise": {"g2": 0.8, "s": 0.001, "measurements": 57},
            "target": {"run_seconds": 0.6, "eval_seconds": 0.2, "evaluations": 4, "reached": null}},
        "layout": {"world_size": 4, "stages": 2, "replicas": 2, "global_batch": 128,
            "stage_boundaries": [4], "samples_per_epoch": 3200}
    });
    assert!(partrain::train::checkpoint::parse_meta(&serde_json::to_vec(&meta).unwrap()).is_ok());
    never_panics("checkpoint meta.json", json_from(meta), |b| {
        let _ = partrain::train::checkpoint::parse_meta(b);
    });
}

#[test]
fn flight_records() {
    let rec = |seq: u64, end: Option<f64>| {
        serde_json::json!({"kind": "all-reduce", "seq": seq, "comm": "world", "count": 421648, "dtype": "f32",
            "label": "gradients", "step": 5, "start_us": 1.0e15, "end_us": end})
    };
    let file = serde_json::json!({
        "format": "partrain-flight", "version": 1, "rank": 1, "host": "node2", "pid": 42, "reason": "watchdog",
        "written_us": 1.0e15, "step": 5, "comms": {"world": [0, 1]},
        "records": [rec(1, Some(2.0e15)), rec(2, None)]
    });
    assert!(partrain::diag::doctor::parse_flight(&serde_json::to_vec(&file).unwrap()).is_ok());
    never_panics("flight record", json_from(file), |b| {
        if let Ok(f) = partrain::diag::doctor::parse_flight(b) {
            // What doctor does with a record it accepted must not panic either.
            let _ = partrain::diag::doctor::diagnose(&[f]);
        }
    });
}

#[test]
fn calibration_files() {
    let row = |threads: usize, batch: usize| {
        serde_json::json!({"threads": threads, "batch": batch, "forward_s": [0.001, 0.0], "backward_s": [0.002, 0.0],
            "step_s": 0.004})
    };
    let cal = serde_json::json!({
        "format": "partrain-calibration", "version": 1, "date": "2026-12-02",
        "cpu": {"model_name": "AMD EPYC", "family": "25", "model": "17"},
        "preset": "mnist_cnn", "dataset": "mnist", "cores_per_node": 2, "layer_names": ["conv", "relu"],
        "layer_output_elems": [100, 100], "layer_params": [10, 0], "compute": [row(1, 8), row(1, 64), row(2, 8)],
        "compute_bf16": [row(1, 8), row(2, 64)],
        "intra_node": {"latency_us": 1.0, "bandwidth_gbs": 5.0}, "inter_node": null,
        "shared_memory_s_per_elem": 1e-10, "base_rss_mb": 100.0, "corun": [{"ranks": 2, "slowdown": 1.1}]
    });
    assert!(partrain::perf::Calibration::parse(&cal.to_string()).is_ok());
    never_panics("calibration", json_from(cal), |b| {
        if let Ok(c) = partrain::perf::Calibration::parse(&String::from_utf8_lossy(b)) {
            // A calibration that parses is used: its stage times must not panic.
            let _ = c.stage_seconds(0..c.layer_names.len(), 3, 32);
        }
    });
}

/// bench/precision_steps.sh's CSV as `plan --precision-steps` reads it: what it accepts has a
/// positive, finite ratio.
#[test]
fn precision_steps_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precision_steps.csv");
    let seed =
        "precision,seed,steps_to_target,final_accuracy\nfp32,42,450,99.04\nbf16,42,469,99.0\nbf16,43,,98.9\n";
    never_panics("precision steps", bytes_from(seed.as_bytes().to_vec()), |b| {
        std::fs::write(&path, b).unwrap();
        if let Ok(s) = partrain::perf::precision::PrecisionSteps::read(&path) {
            assert!(s.bf16_over_fp32.is_finite() && s.bf16_over_fp32 > 0.0, "{s:?}");
        }
    });
}

#[test]
fn trace_files() {
    let span = |cat: &str, tid: u64, ts: f64, dur: f64| serde_json::json!({"name": cat, "cat": cat, "ph": "X", "ts": ts, "dur": dur, "pid": 0, "tid": tid});
    let trace = serde_json::json!({"traceEvents": [
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 0, "args": {"name": "rank 0"}},
        span("step", 0, 0.0, 100.0), span("forward", 0, 1.0, 20.0), span("backward", 1, 30.0, 40.0),
        span("step", 0, 100.0, 100.0), span("comm", 1, 120.0, 5.0), span("step", 0, 200.0, 90.0)
    ], "displayTimeUnit": "ms"});
    assert!(partrain::report::timeline::parse_trace(&serde_json::to_vec(&trace).unwrap()).is_ok());
    never_panics("trace.json", json_from(trace), |b| {
        if let Ok(spans) = partrain::report::timeline::parse_trace(b) {
            let _ = partrain::report::timeline::window(&spans, 2, 3);
        }
    });
}
