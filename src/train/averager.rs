//! The runtime of the plan's averaging path (`plan::averaging::GradSync`): the `Averager` owns
//! what the path needs (a node-shared window, an all-reduce thread).
//!
//! One step, read top-down: backward fills the flat gradient buffer -> `Averager::average` ->
//! the optimizer steps with the gradient it names -> `Averager::after_step` (model averaging when due).

use crate::comm::{Comm, NodeMean, ReduceWorker};
use crate::config::Compress;
use crate::plan::averaging::GradSync;
use crate::train::compress::Bf16Mean;
use crate::train::grads::{GradSource, GradientBuffer};
use std::rc::Rc;

/// The runtime of a `GradSync` over one replica group (the ranks that hold the same stage).
pub struct Averager {
    policy: GradSync,
    group: Comm,
    node_mean: Option<Rc<NodeMean>>,
    worker: Option<ReduceWorker>,
    /// Blocks the overlapped backward submits per step.
    blocks: usize,
    /// Model averaging: every this many steps.
    every: usize,
    /// How gradients travel on the all-reduce path, and the codec's buffers.
    compress: Compress,
    bf16: Bf16Mean,
    /// Bytes this rank handed to the averaging's collectives, and the optimizer steps so far.
    sent_bytes: f64,
    steps: usize,
}

/// Bytes one rank sends in a bandwidth-optimal all-reduce (ring: reduce-scatter then
/// all-gather) of `n` f32 over `ranks`: 2 (R-1)/R x 4n.
pub fn ring_all_reduce_bytes(n: usize, ranks: usize) -> f64 {
    2.0 * (ranks.saturating_sub(1)) as f64 / ranks.max(1) as f64 * 4.0 * n as f64
}

impl Averager {
    /// Collective over `group`: allocates the shared window (`SharedMemory`, `TwoLevel`; `len`
    /// f32 per rank)
    /// or starts the all-reduce thread (`Overlapped`, which submits `blocks` spans per step).
    /// `every`: the model-averaging period (`WeightAverage`).
    pub fn new(policy: (GradSync, usize), group: Comm, len: usize, blocks: usize) -> Averager {
        let (policy, every) = policy;
        let node_mean = match policy {
            GradSync::SharedMemory => Some(group.node_mean(len, false)),
            GradSync::TwoLevel => Some(group.node_mean(len, true)),
            _ => None,
        };
        let worker = if policy == GradSync::Overlapped {
            group.reduce_worker()
        } else {
            None
        };
        Averager {
            policy,
            group,
            node_mean,
            worker,
            blocks,
            every,
            compress: Compress::None,
            bf16: Bf16Mean::default(),
            sent_bytes: 0.0,
            steps: 0,
        }
    }

    /// The same averager with gradients travelling as `compress` says (the all-reduce path).
    pub fn with_compress(mut self, compress: Compress) -> Averager {
        self.compress = compress;
        self
    }

    /// Averaging bytes this rank sent per optimizer step so far (the collectives' payload
    /// under bandwidth-optimal algorithms; none through node-shared memory).
    pub fn sent_bytes_per_step(&self) -> f64 {
        self.sent_bytes / self.steps.max(1) as f64
    }

    /// Bytes the policy sends across the group for one averaging of `n` elements.
    fn bytes_per_average(&self, n: usize) -> f64 {
        let ranks = self.group.size();
        match (self.policy, self.compress) {
            (GradSync::None | GradSync::SharedMemory, _) => 0.0,
            (GradSync::Allreduce, Compress::Bf16) => Bf16Mean::sent_bytes(n, ranks),
            // Each rank of a node carries one slice of the node sum across the nodes.
            (GradSync::TwoLevel, _) => {
                let node = self.node_mean.as_ref().map_or(1, |m| m.ranks_per_node());
                ring_all_reduce_bytes(n.div_ceil(node), ranks / node)
            }
            _ => ring_all_reduce_bytes(n, ranks),
        }
    }

    pub fn policy(&self) -> GradSync {
        self.policy
    }

    /// The shared window the gradient buffer must live in (`SharedMemory` only).
    pub fn node_mean(&self) -> Option<Rc<NodeMean>> {
        self.node_mean.clone()
    }

    /// The all-reduce thread backward hands finished blocks to (`Overlapped` only).
    pub fn worker(&self) -> Option<&ReduceWorker> {
        self.worker.as_ref()
    }

    /// After backward: averages the gradients across the group as the policy says and names
    /// the gradient the optimizer steps with.
    pub fn average(&mut self, buffer: &mut GradientBuffer) -> GradSource {
        crate::diag::flight::labelled("gradients", || self.average_labelled(buffer))
    }

    fn average_labelled(&mut self, buffer: &mut GradientBuffer) -> GradSource {
        let _span = crate::diag::trace::span_with(
            "averaging",
            || format!("average ({})", self.policy.name()),
            || serde_json::json!({"ranks": self.group.size(), "elements": buffer.len()}),
        );
        if self.policy != GradSync::WeightAverage {
            self.sent_bytes += self.bytes_per_average(buffer.len());
        }
        match self.policy {
            GradSync::None | GradSync::WeightAverage => GradSource::Local,
            GradSync::Allreduce if self.compress == Compress::Bf16 => {
                let (grads, mean) = buffer.grads_and_mean();
                self.bf16.average(grads, mean, &self.group);
                GradSource::Mean
            }
            GradSync::SharedMemory | GradSync::TwoLevel => {
                self.node_mean.as_ref().expect("allocated in new").mean();
                GradSource::Mean
            }
            GradSync::Allreduce => {
                buffer.all_reduce_mean_grads(&self.group);
                GradSource::Mean
            }
            GradSync::Overlapped => {
                // Only the part of the overlapped all-reduces that outlasted the backward.
                self.worker.as_ref().expect("started in new").wait(self.blocks);
                buffer.finish_mean(self.group.size());
                GradSource::Mean
            }
        }
    }

    /// After the optimizer step `global_step` (1-based), or at the end of an epoch: model
    /// averaging when it is due.
    pub fn after_step(&mut self, buffer: &mut GradientBuffer, global_step: usize, epoch_end: bool) {
        let due = epoch_end || global_step.is_multiple_of(self.every);
        self.steps += usize::from(!epoch_end);
        if self.policy == GradSync::WeightAverage && due {
            self.sent_bytes += self.bytes_per_average(buffer.len());
            crate::diag::flight::labelled("weights", || buffer.average_values(&self.group));
        }
    }

    /// The replica group (checksums of replica weights are compared over it).
    pub fn group(&self) -> &Comm {
        &self.group
    }
}
