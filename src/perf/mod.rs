//! Performance: the calibration of this machine, the model that predicts a layout's step from it,
//! the layouts a cluster allows, and `partrain plan`, which ranks them by images/s or by predicted
//! time to a target accuracy.

pub mod calibrate;
pub mod calibration;
pub mod conv_bench;
pub mod curve;
pub mod layouts;
pub mod peak;
pub mod planner;
pub mod precision;
pub mod predict;
pub mod remedy;
pub mod steps;
pub mod sync_bench;

pub use calibration::{named_network, Calibration, CoRun, ComputeRow, Link, FORMAT, VERSION};
pub use layouts::layouts;
pub use planner::{PlanOptions, PlanRow};
pub use predict::{eval_seconds, predict, time_to_target, Layout, Prediction};
pub use steps::StepsModel;
