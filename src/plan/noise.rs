//! Where a layout's two batch sizes for the gradient noise scale come from (the estimator is
//! `train::noise_scale`): the small gradients are each micro-batch's when there are several, else
//! each replica's; the big one is their mean over the global batch.

use serde::{Deserialize, Serialize};

/// Where the two batch sizes come from in a layout (resolved by the plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoisePlan {
    /// Images behind each small gradient: a micro-batch when there are several, else a replica's batch.
    pub small_batch: usize,
    /// Small gradients per step: replicas x micro-batches.
    pub small_count: usize,
    /// Images behind the big gradient: the global batch.
    pub big_batch: usize,
    /// Measure every N steps.
    pub every: usize,
}

impl NoisePlan {
    /// None when the layout has only one gradient per step (serial without accumulation), when
    /// there is no averaged gradient (model averaging), or when `every` is 0.
    pub fn new(
        replicas: usize,
        per_replica: usize,
        micro_batches: usize,
        averages_gradients: bool,
        every: usize,
    ) -> Option<Self> {
        let small_count = replicas * micro_batches;
        (every > 0 && averages_gradients && small_count > 1).then_some(NoisePlan {
            small_batch: per_replica / micro_batches,
            small_count,
            big_batch: replicas * per_replica,
            every,
        })
    }

    pub fn due(&self, global_step: usize) -> bool {
        global_step.is_multiple_of(self.every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_without_two_gradients_measure_nothing() {
        assert!(NoisePlan::new(1, 64, 1, true, 1).is_none(), "serial");
        assert!(NoisePlan::new(2, 64, 1, false, 1).is_none(), "model averaging");
        assert!(NoisePlan::new(2, 64, 1, true, 0).is_none(), "switched off");
        let p = NoisePlan::new(1, 4096, 64, true, 5).unwrap();
        assert_eq!((p.small_batch, p.big_batch, p.small_count), (64, 4096, 64));
        assert!(p.due(10) && !p.due(11));
    }
}
