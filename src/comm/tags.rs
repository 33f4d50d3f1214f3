//! Every point-to-point message tag partrain uses, in one place.
//!
//! MPI only guarantees tags up to 32,767 (`MPI_TAG_UB` may be larger: Open MPI allows 2^31 - 1).
//! Training tags grow with the micro-batch count, so `Plan::resolve` checks the largest one this
//! layout needs against the communicator's `MPI_TAG_UB` before any message is sent.

/// A message's tag: what it carries, so a receive can never match the wrong kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Evaluation activations (forward-only pipeline).
    Eval,
    /// Weights and momentum sent to rank 0 for checkpoints and `model.safetensors`.
    Gather,
    /// Clock readings for aligning the ranks' traces (`--trace`).
    Clock,
    /// A rank's trace events sent to rank 0.
    Trace,
    /// Ping-pong messages of `partrain calibrate` and of the start-up preflight.
    Calibrate,
    /// Descriptors of `PARTRAIN_DEBUG=collectives` (ahead of each message).
    Check,
    /// Micro-batch `i`'s activation, stage s -> s + 1.
    Activation(usize),
    /// The gradient of micro-batch `i`'s activation, stage s + 1 -> s.
    Gradient(usize),
}

/// Tags below this are fixed kinds; training tags follow, two per micro-batch.
const FIRST_TRAINING_TAG: i64 = 16;

impl Tag {
    pub fn value(self) -> i32 {
        let v = match self {
            Tag::Eval => 1,
            Tag::Gather => 2,
            Tag::Clock => 3,
            Tag::Trace => 4,
            Tag::Calibrate => 5,
            Tag::Check => 6,
            Tag::Activation(i) => FIRST_TRAINING_TAG + 2 * i as i64,
            Tag::Gradient(i) => FIRST_TRAINING_TAG + 2 * i as i64 + 1,
        };
        i32::try_from(v).expect("tag checked against MPI_TAG_UB when the plan was resolved")
    }

    /// The largest tag a step with `micro_batches` micro-batches sends.
    pub fn largest(micro_batches: usize) -> i64 {
        FIRST_TRAINING_TAG + 2 * micro_batches.saturating_sub(1) as i64 + 1
    }
}

/// What MPI guarantees every implementation accepts (the standard's lower bound on MPI_TAG_UB).
pub const GUARANTEED_TAG_UB: i64 = 32_767;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_bounded() {
        let mut all: Vec<i32> = [
            Tag::Eval,
            Tag::Gather,
            Tag::Clock,
            Tag::Trace,
            Tag::Calibrate,
            Tag::Check,
        ]
        .iter()
        .map(|t| t.value())
        .collect();
        for i in 0..100 {
            all.push(Tag::Activation(i).value());
            all.push(Tag::Gradient(i).value());
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "every tag is used by one kind of message only");
        assert_eq!(*all.last().unwrap() as i64, Tag::largest(100));
        // 16,376 micro-batches still fit the guaranteed bound; one more does not.
        assert!(Tag::largest(16_376) <= GUARANTEED_TAG_UB);
        assert!(Tag::largest(16_377) > GUARANTEED_TAG_UB);
    }
}
