//! partrain: CNN training three ways (serial, MPI data parallelism, hybrid pipeline + data
//! parallelism) on libtorch through `tch`, all run by one engine over a `stages x replicas` grid.
//! See README.md for the commands and docs/design.md for the module map.

pub mod calibrate;
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod conv_bench;
pub mod converge;
pub mod data;
pub mod doctor;
pub mod engine;
pub mod faults;
pub mod flight;
pub mod fused;
pub mod grad_sync;
pub mod grads;
pub mod metrics;
pub mod model;
pub mod native;
pub mod noise_scale;
pub mod optim;
pub mod peak;
pub mod perf;
pub mod plan;
pub mod plot_style;
pub mod plots;
pub mod preflight;
pub mod report;
pub mod run_dir;
pub mod schedule;
pub mod stop;
pub mod sync_bench;
pub mod target;
pub mod trace;
pub mod trainer;
pub mod util;
pub mod watchdog;
