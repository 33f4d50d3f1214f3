//! PyTorch loads partrain's `model.safetensors` (strict state_dict names) and gets the same test
//! accuracy on the same test slice (to 0.01 points).
mod common;
use common::*;

#[test]
fn pytorch_reproduces_partrain_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let data = mnist_dir();
    assert_ok(&partrain(&[
        "serial",
        "--config",
        &config("base.yaml"),
        "--set",
        &format!("data.dir={}", data.display()),
        "--set",
        "data.train_limit=2560",
        "--set",
        "data.test_limit=2000",
        "--set",
        "train.epochs=1",
        "--out",
        out.to_str().unwrap(),
    ]));
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run `bash scripts/setup.sh`",
        python.display()
    );
    let o = std::process::Command::new(python)
        .arg(root().join("tests/crosscheck.py"))
        .arg(&out)
        .arg(&data)
        .arg("2000")
        .output()
        .unwrap();
    println!("{}", text(&o));
    assert_ok(&o);
}

/// `partrain export` writes model.py; PyTorch builds it, loads model.safetensors strictly and gives
/// partrain's logits within 1e-5, for seed 001's preset and for configs/resnet_fashion.yaml's
/// residual net with batch normalisation (running statistics included: eval mode).
#[test]
fn exported_model_py_loads_the_weights_with_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let python = root().join(".venv/bin/python");
    for (cfg, label) in [("base.yaml", "mnist_cnn"), ("resnet_fashion.yaml", "resnet")] {
        let out = tmp.path().join(label);
        let sets = [
            "data.dataset=mnist",
            "data.train_limit=640",
            "data.test_limit=100",
            "train.max_steps=10",
            "train.target_accuracy=null",
        ];
        assert_ok(&partrain(&refs(&run_args("serial", cfg, &out, &sets))));
        assert_ok(&partrain(&["export", out.to_str().unwrap()]));
        let o = std::process::Command::new(&python)
            .arg(root().join("tests/export_check.py"))
            .arg(&out)
            .arg("1e-5")
            .output()
            .unwrap();
        println!("{}", text(&o));
        assert_ok(&o);
    }
}
