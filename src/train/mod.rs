//! Training: the trainer loop and the one engine, the optimizer, the averager, the noise scale,
//! time-to-target books, checkpoints, the run folder, signals and test faults.

mod adaptive;
pub mod agree;
pub mod averager;
pub mod buckets;
pub mod checkpoint;
mod checkpointing;
pub mod compress;
pub mod engine;
mod evaluation;
pub mod faults;
mod finish;
pub mod grads;
mod launch;
pub mod noise_scale;
pub mod optimizer;
pub mod powersgd;
pub mod run_dir;
pub mod stale;
pub mod stop;
pub mod target;
pub mod timers;
pub mod trainer;

pub use launch::run;
pub use trainer::Outcome;
