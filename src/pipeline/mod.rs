//! Pipeline model parallelism: schedules as data and the stage runtime that runs them.
pub mod schedule;
pub mod stage;
