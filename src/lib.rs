//! partrain: CNN training three ways (serial, MPI data parallelism, hybrid pipeline + data
//! parallelism) on libtorch through `tch`. See README.md for the commands.

pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod conv_bench;
pub mod data;
pub mod grads;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod train;
pub mod util;
pub mod watchdog;
