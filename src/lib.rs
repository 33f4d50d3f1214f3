//! partrain: CNN training three ways (serial, MPI data parallelism, hybrid pipeline + data
//! parallelism) on libtorch through `tch`, all run by one engine over a `stages x replicas` grid.
//! See README.md for the commands and docs/design.md for the module map.
//!
//! The folders depend one way, each only on those listed before it (tests/layering.rs keeps it
//! so): `util` -> `diag` -> `comm` -> `schedule` -> `netspec` -> `config` -> `model` -> `data` -> `plan` ->
//! `record` -> `train` -> `perf` -> `report`; the command line (`src/main.rs` and `cli`) uses them all.

pub mod util;

pub mod diag;

pub mod comm;

pub mod schedule;

pub mod netspec;

pub mod config;

pub mod model;

pub mod data;

pub mod plan;

pub mod record;

pub mod train;

pub mod perf;

pub mod report;
