//! The run folder's file names, in one place: every writer and reader of a run folder (the
//! trainer, `report`, `converge`, `doctor`, `timeline`, `export`, the planner) names them here.
//! Their formats are versioned by `util::version`.

/// The resolved config (file + `--set` overrides).
pub const CONFIG: &str = "config.yaml";
/// One row per evaluation (`record::metrics_csv`).
pub const METRICS: &str = "metrics.csv";
/// Status, layout, times and accuracy (`record::summary`).
pub const SUMMARY: &str = "summary.json";
/// Final weights and batch-norm buffers, PyTorch's state_dict names.
pub const MODEL: &str = "model.safetensors";
/// Weights, optimizer state and position for `--resume` (`train::checkpoint`).
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// With `--trace`: every rank's timeline.
pub const TRACE: &str = "trace.json";
/// Each rank's flight record, `flight/rank<R>.json` (`diag::flight`).
pub const FLIGHT_DIR: &str = "flight";
/// `partrain export`: the net as PyTorch source, and inputs with partrain's logits on them.
pub const MODEL_PY: &str = "model.py";
pub const EXPORT_CHECK: &str = "export_check.safetensors";

/// Files a training run writes; `--overwrite` removes exactly these (and old flight records).
pub const RUN_FILES: [&str; 6] = [CONFIG, METRICS, SUMMARY, MODEL, CHECKPOINT, TRACE];
