//! The files a run leaves for others to read: `summary.json` and `metrics.csv`, the preflight's
//! figures, each versioned and read by name.

pub mod metrics_csv;
pub mod peak;
pub mod preflight;
pub mod summary;
