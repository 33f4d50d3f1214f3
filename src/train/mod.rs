//! Training: the trainer loop and the one engine, the optimizer, the averager, the noise scale,
//! time-to-target books, checkpoints, the run folder, signals and test faults.

pub mod averager;
pub mod checkpoint;
pub mod engine;
pub mod faults;
pub mod grads;
pub mod noise_scale;
pub mod optimizer;
pub mod run_dir;
pub mod stop;
pub mod target;
pub mod timers;
pub mod trainer;
