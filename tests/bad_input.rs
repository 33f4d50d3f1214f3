//! Every rejected input: non-zero exit, one message naming the field or file and what was
//! expected, no hang (each command is killed and the test fails after 60 s), nothing written.
mod common;
use common::*;
use partrain::data::idx;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes a small MNIST-layout folder cut from the real files; `corrupt` edits it.
fn data_dir(tmp: &Path, name: &str, corrupt: impl FnOnce(&Path)) -> PathBuf {
    let src = mnist_dir();
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (img, lab, n) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 256usize),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 64),
    ] {
        let images = idx::parse_images(std::fs::read(src.join(img)).unwrap(), img).unwrap();
        let labels = idx::parse_labels(&std::fs::read(src.join(lab)).unwrap(), lab, 10).unwrap();
        std::fs::write(
            dir.join(img),
            idx::encode_images(n, 28, 28, &images.pixels[..n * 784]),
        )
        .unwrap();
        std::fs::write(dir.join(lab), idx::encode_labels(&labels[..n])).unwrap();
    }
    corrupt(&dir);
    dir
}

fn write_cfg(tmp: &Path, name: &str, body: &str) -> String {
    let p = tmp.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Runs partrain and checks exit code, message and that the run folder was not written.
#[track_caller]
fn rejects(args: &[&str], out: &Path, expected: &[&str]) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args).current_dir(root());
    let (o, took) = run_with_limit(cmd, Duration::from_secs(60));
    let msg = text(&o);
    assert!(
        !o.status.success(),
        "expected failure for {args:?}, got success: {msg}"
    );
    assert_eq!(o.status.code(), Some(1), "{msg}");
    for e in expected {
        assert!(
            msg.contains(e),
            "message for {args:?} should contain `{e}`:\n{msg}"
        );
    }
    assert!(
        !out.join("summary.json").exists() && !out.join("model.safetensors").exists(),
        "{args:?} wrote results"
    );
    assert!(took < Duration::from_secs(60));
}

#[test]
fn config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = t.join("out");
    let o = out.to_str().unwrap();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "syntax.yaml",
            "train: {epochs: 3\n".into(),
            vec!["syntax.yaml", "YAML syntax error"],
        ),
        (
            "unknown.yaml",
            "train:\n  epoch: 3\n".into(),
            vec!["unknown.yaml", "unknown field `epoch`"],
        ),
        (
            "type.yaml",
            "train:\n  epochs: ten\n".into(),
            vec!["type.yaml", "train.epochs", "invalid type"],
        ),
        (
            "epochs.yaml",
            "train:\n  epochs: 0\n".into(),
            vec!["train.epochs", "at least 1"],
        ),
        (
            "negepochs.yaml",
            "train:\n  epochs: -2\n".into(),
            vec!["train.epochs"],
        ),
        (
            "batch.yaml",
            "train:\n  batch_size: 0\n".into(),
            vec!["train.batch_size", "at least 1"],
        ),
        (
            "lr.yaml",
            "train:\n  lr: -0.01\n".into(),
            vec!["train.lr", "positive"],
        ),
        (
            "zerolr.yaml",
            "train:\n  lr: 0\n".into(),
            vec!["train.lr", "positive"],
        ),
        (
            "momentum.yaml",
            "train:\n  momentum: 1.5\n".into(),
            vec!["train.momentum"],
        ),
        (
            "dropout.yaml",
            "model:\n  dropout: 1.0\n".into(),
            vec!["model.dropout"],
        ),
        (
            "dataset.yaml",
            "data:\n  dataset: imagenet\n".into(),
            vec!["data.dataset", "imagenet", "mnist"],
        ),
        (
            "preset.yaml",
            "model:\n  preset: resnet50\n".into(),
            vec!["model.preset", "resnet50", "mnist_cnn"],
        ),
        (
            "mismatch.yaml",
            "model:\n  preset: cifar_cnn\n".into(),
            vec!["model.preset", "cifar_cnn", "mnist"],
        ),
        (
            "section.yaml",
            "trian:\n  epochs: 3\n".into(),
            vec!["unknown field `trian`"],
        ),
    ];
    for (file, body, expected) in cases {
        let cfg = write_cfg(t, file, &body);
        rejects(&["serial", "--config", &cfg, "--out", o], &out, &expected);
    }
    let missing = t.join("nope.yaml");
    rejects(
        &["serial", "--config", missing.to_str().unwrap(), "--out", o],
        &out,
        &["nope.yaml", "cannot be read"],
    );
    let good = config("base.yaml");
    rejects(
        &["serial", "--config", &good, "--set", "train.epoch=3", "--out", o],
        &out,
        &["train.epoch", "no such key"],
    );
    rejects(
        &["serial", "--config", &good, "--set", "train.epochs", "--out", o],
        &out,
        &["expected key=value"],
    );
    rejects(
        &["serial", "--config", &good, "--set", "train.lr=fast", "--out", o],
        &out,
        &["train.lr"],
    );
}

/// The optimizer, learning-rate schedule and target keys: each combination that makes no sense
/// is refused with the key named.
#[test]
fn optimizer_schedule_and_target_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let good = config("base.yaml");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["train.optimizer=adagrad"],
            &["train.optimizer", "adagrad", "lamb"],
        ),
        (&["train.lr_scaling=cubic"], &["train.lr_scaling", "sqrt"]),
        (&["train.lr_schedule=linear"], &["train.lr_schedule", "cosine"]),
        (
            &["train.lr_scaling=linear", "train.warmup_epochs=12"],
            &["train.warmup_epochs", "longer than the run", "train.epochs = 10"],
        ),
        (
            &["train.warmup_epochs=2"],
            &["train.warmup_epochs", "lr_scaling is none"],
        ),
        (
            &["train.lr_scaling=sqrt", "train.warmup_epochs=-1"],
            &["train.warmup_epochs", ">= 0"],
        ),
        (
            &[
                "train.lr_scaling=sqrt",
                "train.warmup_epochs=10",
                "train.lr_schedule=cosine",
            ],
            &["train.warmup_epochs", "no epoch", "cosine"],
        ),
        (
            &["train.lr_schedule=step", "train.lr_decay_epochs=[4, 12]"],
            &["train.lr_decay_epochs", "12", "past the end"],
        ),
        (
            &["train.lr_schedule=step", "train.lr_decay_epochs=[6, 3]"],
            &["train.lr_decay_epochs", "must increase"],
        ),
        (
            &["train.lr_schedule=step"],
            &["train.lr_decay_epochs", "at least one epoch"],
        ),
        (
            &[
                "train.lr_schedule=step",
                "train.lr_decay_epochs=[5]",
                "train.lr_decay_factor=2",
            ],
            &["train.lr_decay_factor", "(0, 1)"],
        ),
        (
            &["train.lr_decay_epochs=[5]"],
            &["train.lr_decay_epochs", "applies to train.lr_schedule: step"],
        ),
        (
            &[
                "train.lr_scaling=sqrt",
                "train.warmup_epochs=3",
                "train.lr_schedule=step",
                "train.lr_decay_epochs=[2]",
            ],
            &["train.lr_decay_epochs", "after the warmup"],
        ),
        (
            &["train.lars_trust=0.01"],
            &["train.lars_trust", "applies to train.optimizer: lars"],
        ),
        (
            &["train.optimizer=lars", "train.lars_trust=0"],
            &["train.lars_trust", "positive"],
        ),
        (
            &["train.optimizer=nesterov", "train.momentum=0"],
            &["train.optimizer", "nesterov needs momentum"],
        ),
        (&["train.weight_decay=-0.1"], &["train.weight_decay", ">= 0"]),
        (
            &["train.betas=[0.9, 0.99]"],
            &["train.betas", "applies to train.optimizer: adam, adamw or lamb"],
        ),
        (&["train.eps=1e-6"], &["train.eps", "applies to train.optimizer"]),
        (
            &["train.optimizer=adam", "train.betas=[0.9, 1.0]"],
            &["train.betas", "[0, 1)"],
        ),
        (
            &["train.optimizer=lamb", "train.eps=0"],
            &["train.eps", "positive"],
        ),
        (
            &["train.warmup_start_factor=0.1"],
            &["train.warmup_start_factor", "no warmup"],
        ),
        (
            &["train.warmup_epochs=1", "train.warmup_start_factor=2"],
            &["train.warmup_start_factor", "(0, 1]"],
        ),
        (
            &["train.lr_reference_batch=256"],
            &["train.lr_reference_batch", "lr_scaling is none"],
        ),
        (
            &["train.lr_scaling=linear", "train.lr_reference_batch=0"],
            &["train.lr_reference_batch", "at least 1"],
        ),
        (
            &["train.target_accuracy=120"],
            &["train.target_accuracy", "(0, 100]"],
        ),
        (
            &["train.target_accuracy=null", "train.stop_at_target=true"],
            &["train.stop_at_target", "not set"],
        ),
        (
            &["train.target_accuracy=null", "train.eval_after_steps=100"],
            &["train.eval_after_steps", "inside epochs"],
        ),
        (
            &["train.decay_epochs=1.5"],
            &["train.decay_epochs", "applies to train.lr_schedule: cosine"],
        ),
        (
            &[
                "train.lr_schedule=cosine",
                "train.epochs=2",
                "train.decay_epochs=3",
            ],
            &["train.decay_epochs", "at most train.epochs"],
        ),
        (
            &["train.eval_every_steps=0"],
            &["train.eval_every_steps", "at least 1"],
        ),
    ];
    for (sets, expected) in cases {
        let mut args = vec!["serial", "--config", good.as_str(), "--out", o];
        for s in *sets {
            args.extend(["--set", s]);
        }
        rejects(&args, &out, expected);
    }
}

#[test]
fn data_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = t.join("out");
    let o = out.to_str().unwrap();
    let cfg = config("base.yaml");
    let run = |dir: &Path, expected: &[&str]| {
        let set = format!("data.dir={}", dir.display());
        rejects(
            &[
                "serial",
                "--config",
                &cfg,
                "--set",
                &set,
                "--set",
                "train.epochs=1",
                "--out",
                o,
            ],
            &out,
            expected,
        );
    };
    // Sanity: the uncorrupted fixture trains.
    let good = data_dir(t, "good", |_| {});
    let set = format!("data.dir={}", good.display());
    assert_ok(&partrain(&[
        "serial",
        "--config",
        &cfg,
        "--set",
        &set,
        "--set",
        "train.epochs=1",
        "--out",
        t.join("ok").to_str().unwrap(),
    ]));

    run(
        &t.join("absent"),
        &["data folder", "absent", "not found", "partrain data fetch mnist"],
    );
    let d = data_dir(t, "nofile", |d| {
        std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).unwrap()
    });
    run(
        &d,
        &["t10k-labels-idx1-ubyte", "missing", "partrain data fetch mnist"],
    );
    let d = data_dir(t, "magic", |d| {
        let p = d.join("train-images-idx3-ubyte");
        let mut b = std::fs::read(&p).unwrap();
        b[2] = 0x09;
        std::fs::write(&p, b).unwrap();
    });
    run(
        &d,
        &["train-images-idx3-ubyte", "wrong magic number", "0x00000803"],
    );
    let d = data_dir(t, "trunc", |d| {
        let p = d.join("t10k-images-idx3-ubyte");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    });
    run(&d, &["t10k-images-idx3-ubyte", "truncated"]);
    let d = data_dir(t, "counts", |d| {
        std::fs::write(d.join("train-labels-idx1-ubyte"), idx::encode_labels(&[1; 200])).unwrap();
    });
    run(&d, &["256 images", "200 labels", "must agree"]);
    let d = data_dir(t, "label", |d| {
        let mut l = vec![3u8; 64];
        l[17] = 12;
        std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx::encode_labels(&l)).unwrap();
    });
    run(&d, &["t10k-labels-idx1-ubyte", "label 12", "out of range"]);
    // Fewer training images than one batch.
    let set = format!("data.dir={}", good.display());
    rejects(
        &[
            "serial",
            "--config",
            &cfg,
            "--set",
            &set,
            "--set",
            "data.train_limit=10",
            "--out",
            o,
        ],
        &out,
        &["data.train_limit", "fewer than one global batch"],
    );
}

#[test]
fn resume_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let base_args = run_args(
        "serial",
        "base.yaml",
        &out,
        &["data.train_limit=640", "data.test_limit=100"],
    );
    let base = refs(&base_args);
    // Nothing to resume.
    let mut args = base.clone();
    args.extend(["--set", "train.epochs=1", "--resume"]);
    rejects(&args, &out, &["--resume", "no checkpoint"]);
    // A finished run resumed with another learning rate: refused, results untouched.
    let mut args = base.clone();
    args.extend(["--set", "train.epochs=1"]);
    assert_ok(&partrain(&args));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(&base)
        .args(["--set", "train.epochs=2", "--set", "train.lr=0.05", "--resume"])
        .current_dir(root());
    let (r, _) = run_with_limit(cmd, Duration::from_secs(60));
    assert!(!r.status.success());
    assert!(text(&r).contains("config differs"), "{}", text(&r));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
    // Resuming a finished run without raising train.epochs says so.
    let mut cmd = std::process::Command::new(bin());
    cmd.args(&base)
        .args(["--set", "train.epochs=1", "--resume"])
        .current_dir(root());
    let (r, _) = run_with_limit(cmd, Duration::from_secs(60));
    assert!(!r.status.success());
    assert!(text(&r).contains("already covers train.epochs"), "{}", text(&r));
    assert_eq!(
        summary(&out)["status"],
        "completed",
        "a refused resume leaves the finished run alone"
    );
    // --resume and --overwrite together are a usage error.
    let mut cmd = std::process::Command::new(bin());
    cmd.args(&base).args(["--resume", "--overwrite"]);
    let (r, _) = run_with_limit(cmd, Duration::from_secs(30));
    assert_eq!(r.status.code(), Some(2));
}

/// Thread counts and launchers a new user gets wrong: an absurd thread count is refused, more
/// threads than cores is warned about with the figures, and `partrain serial` started as one of
/// several MPI ranks is refused (they would all write one run folder) with a pointer to `dp`.
#[test]
fn threads_and_launcher_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let cfg = config("base.yaml");
    rejects(
        &[
            "serial",
            "--config",
            &cfg,
            "--set",
            "parallel.threads_per_rank=100000",
            "--out",
            o,
        ],
        &out,
        &["parallel.threads_per_rank", "100000", "at most 4096"],
    );
    let slow = tmp.path().join("slow");
    let cores = partrain::util::node_cores();
    let many = (4 * cores).to_string();
    let set_threads = format!("parallel.threads_per_rank={many}");
    let run = partrain(&refs(&run_args(
        "serial",
        "base.yaml",
        &slow,
        &[
            set_threads.as_str(),
            "train.max_steps=2",
            "data.train_limit=640",
            "data.test_limit=100",
        ],
    )));
    assert_ok(&run);
    let msg = text(&run);
    assert!(
        msg.contains(&format!("warning: parallel.threads_per_rank = {many} x 1 rank on a node = {many} threads for its {cores} cores")),
        "{msg}"
    );
    // `mpirun -np 2 partrain serial`: refused on both ranks, nothing written.
    let (o2, took) = mpirun(2, &["serial", "--config", &cfg, "--out", o]);
    let msg = text(&o2);
    assert!(!o2.status.success(), "{msg}");
    assert!(took < Duration::from_secs(30));
    assert!(
        msg.contains("one of 2 MPI ranks") && msg.contains("mpirun -np 2 partrain dp"),
        "{msg}"
    );
    assert!(!out.exists(), "nothing written");
}

#[test]
fn cli_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // clap knows the data sets: a usage error (exit 2) that lists them.
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["data", "fetch", "imagenet", "--dir", out.to_str().unwrap()]);
    let (o, _) = run_with_limit(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("imagenet") && text(&o).contains("mnist, fashion-mnist, cifar10"),
        "{}",
        text(&o)
    );
    rejects(
        &[
            "data",
            "fetch",
            "cifar10",
            "--source",
            "registry",
            "--dir",
            out.to_str().unwrap(),
        ],
        &out,
        &["cifar10", "no package registry ships CIFAR-10"],
    );
    // clap's own usage errors exit with 2.
    let (o, _) = run_with_limit(
        {
            let mut c = std::process::Command::new(bin());
            c.args(["serial"]);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--config"));
}

/// `plan` without a calibration names the command that makes one; time to target without steps
/// to target names where they come from; a curve for another target is refused.
#[test]
fn plan_errors_name_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cfg = config("data_parallel.yaml");
    let missing = tmp.path().join("calibration.json");
    let plan = |extra: &[&str]| {
        let mut a = vec!["plan", "--config", cfg.as_str(), "--cores-per-node", "64"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = plan(&["--calibration", missing.to_str().unwrap()]);
    rejects(&refs(&args), &out, &["calibration.json", "partrain calibrate"]);
}
