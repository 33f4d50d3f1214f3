//! A run's folder: what a run writes there, and the rule that an existing run is never
//! overwritten by accident. Only rank 0 writes.

use crate::record::summary::status_doc;
use crate::util::atomic;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub use crate::util::run_files::RUN_FILES;

/// How a run treats its folder: a fresh run (refusing an existing folder unless `overwrite`), or
/// `--resume` from the folder's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Fresh { overwrite: bool },
    Resume,
}

pub fn default_out_dir(run_name: &str) -> PathBuf {
    PathBuf::from("results/runs").join(run_name)
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
            // The file, and the temporary a killed write may have left of it.
            for p in [dir.join(f), crate::util::atomic::temporary(&dir.join(f))] {
                if p.exists() {
                    std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
                }
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create run folder {}", dir.display()))
}

/// Readies the folder for `start` and marks the run `running` (a crashed run never looks finished),
/// with the start-up preflight's figures (kept by every later status).
pub fn open(
    dir: &Path,
    start: Start,
    resolved_config: &str,
    preflight: &crate::record::preflight::Preflight,
) -> Result<()> {
    if let Start::Fresh { overwrite } = start {
        prepare(dir, overwrite)?;
    }
    // Flight records describe an earlier attempt: `partrain doctor` must not mix them in.
    if let Ok(entries) = std::fs::read_dir(dir.join(crate::util::run_files::FLIGHT_DIR)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("rank") && name.ends_with(".json") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    atomic::write(
        &dir.join(crate::util::run_files::CONFIG),
        resolved_config.as_bytes(),
    )?;
    let running = status_doc(serde_json::json!({"status": "running", "preflight": preflight}));
    atomic::write(
        &dir.join(crate::util::run_files::SUMMARY),
        running.to_string().as_bytes(),
    )
}

/// Writes `status` (an object) as the run's summary, keeping the preflight of the summary it
/// replaces.
fn set_status(dir: &Path, status: serde_json::Value) -> Result<()> {
    let mut status = status_doc(status);
    let path = dir.join(crate::util::run_files::SUMMARY);
    let before = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(preflight) = before.as_ref().and_then(|v| v.get("preflight")) {
        status["preflight"] = preflight.clone();
    }
    atomic::write(&path, status.to_string().as_bytes())
}

/// The run folder this process is training into, once it is open (for the panic hook).
static OPEN_RUN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Records that this process trains into `dir` (every rank, once the folder is open).
pub fn note_open(dir: &Path) {
    let _ = OPEN_RUN.set(dir.to_path_buf());
}

/// From the panic hook: the open run marked `failed` with the panic's message (by the rank that
/// panicked, whichever it is: rank 0 may never get to write it) and this rank's flight record
/// dumped, before the job is aborted. Nothing before a run folder is open.
pub fn fail_on_panic(message: &str) {
    if let Some(dir) = OPEN_RUN.get() {
        mark_failed(dir, &anyhow::anyhow!("panic: {message}"));
        crate::diag::flight::dump(&format!("panic: {message}"));
    }
}

/// Marks the run `failed` with the error (best effort: the error itself matters more).
pub fn mark_failed(dir: &Path, error: &anyhow::Error) {
    let _ = set_status(
        dir,
        serde_json::json!({"status": "failed", "error": format!("{error:#}")}),
    );
}

/// Whether `dir` holds a checkpoint of a run that has not completed (stopped by a signal, failed,
/// or killed while `running`): what `--auto-resume` continues.
pub fn holds_unfinished_run(dir: &Path) -> bool {
    let status = std::fs::read(dir.join(crate::util::run_files::SUMMARY))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["status"].as_str().map(str::to_string));
    dir.join(crate::train::checkpoint::FILE).exists() && status.as_deref() != Some("completed")
}

/// Marks the run `interrupted` by `signal` after `global_step`, with its checkpoint in place.
pub fn mark_interrupted(dir: &Path, signal: &str, global_step: usize) -> Result<()> {
    let v = serde_json::json!({
        "status": "interrupted",
        "signal": signal,
        "global_step": global_step,
        "resume": "--resume or --auto-resume continues from the checkpoint",
    });
    set_status(dir, v)
}

/// The final weights and batch-norm buffers, named and typed as PyTorch's state_dict (the step
/// count `num_batches_tracked` an int64 there), written atomically.
pub fn write_model(dir: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let typed: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| match n.ends_with(".num_batches_tracked") {
            true => (n.clone(), t.to_kind(tch::Kind::Int64)),
            false => (n.clone(), t.shallow_clone()),
        })
        .collect();
    atomic::write_with(&dir.join(crate::util::run_files::MODEL), |tmp| {
        Tensor::write_safetensors(&typed, tmp).with_context(|| format!("cannot write {}", tmp.display()))
    })
}
