//! A run's folder: what a run writes there, and the rule that an existing run is never
//! overwritten by accident. Only rank 0 writes.

use crate::config::Config;
use crate::metrics::write_atomic;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Files a run writes; `--overwrite` removes exactly these and nothing else.
pub const RUN_FILES: [&str; 6] = [
    "config.yaml",
    "metrics.csv",
    "summary.json",
    "model.safetensors",
    crate::checkpoint::FILE,
    "trace.json",
];

/// How a run treats its folder: a fresh run (refusing an existing folder unless `overwrite`), or
/// `--resume` from the folder's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Fresh { overwrite: bool },
    Resume,
}

pub fn default_out_dir(cfg: &Config) -> PathBuf {
    PathBuf::from("results/runs").join(&cfg.run.name)
}

/// Refuses an existing, non-empty run folder unless `overwrite`; never deletes anything but
/// the run's own files.
fn prepare(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("run folder {} cannot be read", dir.display()))?
            .next()
            .is_some();
        if non_empty && !overwrite {
            bail!(
                "run folder {} already exists: pass --overwrite to replace its results, or choose another --out or run.name",
                dir.display()
            );
        }
        for f in RUN_FILES {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create run folder {}", dir.display()))
}

/// Readies the folder for `start` and marks the run `running` (a crashed run never looks finished).
pub fn open(dir: &Path, start: Start, cfg: &Config) -> Result<()> {
    if let Start::Fresh { overwrite } = start {
        prepare(dir, overwrite)?;
    }
    write_atomic(&dir.join("config.yaml"), serde_yaml::to_string(cfg)?.as_bytes())?;
    write_atomic(&dir.join("summary.json"), br#"{"status": "running"}"#)
}

/// Marks the run `failed` with the error (best effort: the error itself matters more).
pub fn mark_failed(dir: &Path, error: &anyhow::Error) {
    let failed = serde_json::json!({"status": "failed", "error": format!("{error:#}")});
    let _ = write_atomic(&dir.join("summary.json"), failed.to_string().as_bytes());
}

/// The final weights, named as PyTorch's state_dict (written atomically).
pub fn write_model(dir: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let tmp = dir.join("model.safetensors.tmp");
    Tensor::write_safetensors(named, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join("model.safetensors"))
        .with_context(|| format!("cannot rename {} into place", tmp.display()))
}
