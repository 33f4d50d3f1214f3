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
