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
use crate::train::powersgd::{self, PowerSgd};
use crate::train::stale::StaleMean;
use std::rc::Rc;
use tch::Tensor;

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
    /// PowerSGD's factors and error feedback (`attach`), its rank and plain steps first.
    powersgd: Option<PowerSgd>,
    powersgd_plan: (usize, usize),
    /// One-step-stale averaging's buffers and thread (`attach`).
    stale: Option<StaleMean>,
    /// Post-local SGD: gradients averaged for steps before this one (0: never).
    local_after: usize,
    /// Seconds the main thread waited for overlapped all-reduces after backward.
    exposed_s: f64,
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
            stale: None,
            powersgd: None,
            powersgd_plan: (1, 0),
            local_after: 0,
            exposed_s: 0.0,
            sent_bytes: 0.0,
            steps: 0,
        }
    }

    /// The same averager with gradients travelling as `compress` says (the all-reduce path).
    /// `powersgd`: its rank and steps of plain averaging first (`Compress::PowerSgd`).
    pub fn with_compress(mut self, compress: Compress, powersgd: (usize, usize)) -> Averager {
        self.compress = compress;
        self.powersgd_plan = powersgd;
        self
    }

    /// Post-local SGD: average gradients for the first `steps` steps, then model averaging.
    pub fn with_local_sgd_after(mut self, steps: usize) -> Averager {
        self.local_after = steps;
        self
    }

    /// Allocates the state a policy keeps beside the flat buffers, laid out like them
    /// (`GradientBuffer::state_like`): one-step-stale averaging's (collective over the group),
    /// PowerSGD's (`seed`: its first Q's draws, the same on the group's ranks).
    pub fn attach(&mut self, buffer: &GradientBuffer, params: &[&Tensor], seed: u64) {
        if self.policy == GradSync::Stale {
            self.stale = StaleMean::new(&self.group, buffer.state_like(params));
        }
        if self.policy == GradSync::Allreduce && self.compress == Compress::PowerSgd {
            let (rank, after) = self.powersgd_plan;
            let spans = powersgd::spans(&buffer.param_layout(), rank as i64);
            let len = buffer.len() as i64;
            self.powersgd = Some(PowerSgd::new(
                spans,
                len,
                rank as i64,
                after,
                seed,
                self.group.size(),
            ));
        }
    }

    /// Flat state of this rank alone that a checkpoint must carry (PowerSGD's error feedback and
    /// factors once compression has started), as (name, tensor).
    pub fn rank_state(&self) -> Vec<(&'static str, Tensor)> {
        match &self.powersgd {
            Some(p) if p.warm => vec![
                ("sync.powersgd.error", p.error.shallow_clone()),
                ("sync.powersgd.q", p.q.shallow_clone()),
            ],
            _ => Vec::new(),
        }
    }

    /// The names `rank_state` uses, and the tensors a restore copies into; `restored_rank_state`
    /// after the copy.
    pub fn rank_state_targets(&self) -> Vec<(&'static str, Tensor)> {
        match &self.powersgd {
            Some(p) => vec![
                ("sync.powersgd.error", p.error.shallow_clone()),
                ("sync.powersgd.q", p.q.shallow_clone()),
            ],
            None => Vec::new(),
        }
    }

    pub fn restored_rank_state(&mut self) {
        if let Some(p) = self.powersgd.as_mut() {
            p.warm = true;
        }
    }

    /// Per-parameter state a checkpoint must carry to resume exactly (one-step-stale: the mean
    /// the next step applies), as (key prefix, views); waits for an all-reduce in flight.
    pub fn checkpoint_state(&mut self) -> Option<(&'static str, &[Tensor])> {
        let stale = self.stale.as_mut()?;
        stale.settle();
        stale
            .has_pending()
            .then_some(("sync.pending_mean.", &stale.views[..]))
    }

    /// The prefix `checkpoint_state` uses and the views a restore copies into; `restored`
    /// after the copy.
    pub fn restore_target(&mut self) -> Option<(&'static str, &[Tensor])> {
        self.stale.as_ref().map(|s| ("sync.pending_mean.", &s.views[..]))
    }

    pub fn restored(&mut self) {
        if let Some(s) = self.stale.as_mut() {
            s.restored();
        }
    }

    /// Overlapped averaging: seconds of all-reduce on the communication thread, and the share of
    /// them hidden behind backward (1 - the main thread's wait after backward / them).
    pub fn overlap_figures(&self) -> Option<(f64, f64)> {
        let busy = self.worker.as_ref()?.busy_seconds();
        Some((
            busy,
            if busy > 0.0 {
                (1.0 - self.exposed_s / busy).max(0.0)
            } else {
                0.0
            },
        ))
    }

    /// Averaging bytes this rank sent per optimizer step so far (the collectives' payload
    /// under bandwidth-optimal algorithms; none through node-shared memory).
    pub fn sent_bytes_per_step(&self) -> f64 {
        self.sent_bytes / self.steps.max(1) as f64
    }

    /// Bytes the policy sends across the group for one averaging of `n` elements at `step`.
    fn bytes_per_average(&self, n: usize, step: usize) -> f64 {
        let ranks = self.group.size();
        if let Some(p) = self.powersgd.as_ref().filter(|p| p.compresses(step)) {
            let (first, q) = p.elements_per_step();
            return ring_all_reduce_bytes(first as usize, ranks) + ring_all_reduce_bytes(q as usize, ranks);
        }
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
    /// `step`: the optimizer steps taken before this one.
    pub fn average(&mut self, buffer: &mut GradientBuffer, step: usize) -> GradSource {
        crate::diag::flight::labelled("gradients", || self.average_labelled(buffer, step))
    }

    fn average_labelled(&mut self, buffer: &mut GradientBuffer, step: usize) -> GradSource {
        let _span = crate::diag::trace::span_with(
            "averaging",
            || format!("average ({})", self.policy.name()),
            || serde_json::json!({"ranks": self.group.size(), "elements": buffer.len()}),
        );
        let post_local_warmup = self.policy == GradSync::WeightAverage && step < self.local_after;
        if self.policy != GradSync::WeightAverage || post_local_warmup {
            self.sent_bytes += self.bytes_per_average(buffer.len(), step);
        }
        match self.policy {
            GradSync::WeightAverage if post_local_warmup => {
                buffer.all_reduce_mean_grads(&self.group);
                GradSource::Mean
            }
            GradSync::None | GradSync::WeightAverage => GradSource::Local,
            GradSync::Stale => {
                let stale = self.stale.as_mut().expect("attached with the buffer");
                let (grads, mean) = (buffer.grads().shallow_clone(), buffer.gradient(GradSource::Mean));
                match stale.exchange(&grads, mean) {
                    true => GradSource::Mean,
                    false => GradSource::Nothing,
                }
            }
            GradSync::Allreduce if self.powersgd.as_ref().is_some_and(|p| p.compresses(step)) => {
                let p = self.powersgd.as_mut().expect("checked");
                p.average(buffer.grads(), buffer.gradient(GradSource::Mean), &self.group);
                GradSource::Mean
            }
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
                let started = std::time::Instant::now();
                self.worker.as_ref().expect("started in new").wait(self.blocks);
                self.exposed_s += started.elapsed().as_secs_f64();
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
        let local = global_step > self.local_after;
        if self.policy == GradSync::WeightAverage && due && local {
            self.sent_bytes += self.bytes_per_average(buffer.len(), global_step);
            crate::diag::flight::labelled("weights", || buffer.average_values(&self.group));
        }
    }

    /// The replica group (checksums of replica weights are compared over it).
    pub fn group(&self) -> &Comm {
        &self.group
    }
}
