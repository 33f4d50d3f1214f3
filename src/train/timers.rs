//! Where a rank's training time goes, as the step measures it.

use std::time::Instant;

/// Where a rank's training time goes: forward, backward and optimizer (`compute`), averaging
/// across replicas (`averaging`), and blocked on a neighbouring stage (`wait`).
#[derive(Debug, Default, Clone, Copy)]
pub struct StepTimers {
    pub compute: Timer,
    pub averaging: Timer,
    pub wait: Timer,
}

/// Accumulates the seconds spent in one kind of work.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timer {
    pub seconds: f64,
}

impl Timer {
    /// Adds the seconds since `started`.
    pub fn add_since(&mut self, started: Instant) {
        self.seconds += started.elapsed().as_secs_f64();
    }

    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.seconds += t.elapsed().as_secs_f64();
        out
    }
}
