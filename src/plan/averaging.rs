//! How the replicas of a stage agree on a step: the policy (`GradSync`), chosen once by
//! `Plan::resolve` and named in `summary.json`; `train::averager` carries it out.

use crate::config::{Compress, SyncConfig, SyncMode};
use serde::{Deserialize, Serialize};

/// The averaging path of a run. Its serde spelling is its name everywhere: `summary.json`'s
/// `gradient_averaging`, `inspect`, `plan.csv`, `sync-bench --paths`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GradSync {
    /// One replica: nothing to average.
    #[serde(rename = "none")]
    None,
    /// All replicas of each stage share a node: the mean is computed in an MPI-3 shared window
    /// that backward writes into (no copies into or out of MPI).
    #[serde(rename = "shared_memory")]
    SharedMemory,
    /// Replicas on several nodes, the same number on each: the node-shared sum inside every
    /// node, then one MPI_Allreduce per slice across the nodes (every rank of a node carries a
    /// slice, so all its links are busy at once), the mean left in the node's shared memory.
    #[serde(rename = "two_level")]
    TwoLevel,
    /// One MPI_Allreduce of the flat gradient buffer, then a division.
    #[serde(rename = "mpi_allreduce")]
    Allreduce,
    /// MPI_Allreduce of each finished bucket of parameters on a communication thread while the
    /// backward of earlier blocks goes on (`sync.overlap`, `sync.bucket_mb`).
    #[serde(rename = "mpi_allreduce_overlapped")]
    Overlapped,
    /// One-step-stale averaging (`sync.delay: 1`): each step's gradients are all-reduced on a
    /// communication thread behind the next step, which applies their mean.
    #[serde(rename = "mpi_allreduce_one_step_stale")]
    Stale,
    /// Seed 004's model averaging: local SGD steps, weights averaged every `sync.average_every`
    /// steps (`Plan::average_every`) and at the end of every epoch; with `sync.local_sgd_after`,
    /// post-local SGD (gradients averaged every step until then).
    #[serde(rename = "weight_average")]
    WeightAverage,
}

impl GradSync {
    /// The name: its serde spelling.
    pub fn name(self) -> &'static str {
        match self {
            GradSync::None => "none",
            GradSync::SharedMemory => "shared_memory",
            GradSync::TwoLevel => "two_level",
            GradSync::Allreduce => "mpi_allreduce",
            GradSync::Overlapped => "mpi_allreduce_overlapped",
            GradSync::Stale => "mpi_allreduce_one_step_stale",
            GradSync::WeightAverage => "weight_average",
        }
    }
}

/// How one stage's replica group lies over the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpread {
    pub replicas: usize,
    /// Nodes the group's ranks are on.
    pub nodes: usize,
    /// The group's ranks on each of those nodes, when it is the same number on every one.
    pub per_node: Option<usize>,
}

/// Whether `path` can run on a group spread as `g` (what `sync-bench` may time): shared memory
/// needs one node, two levels several nodes with the same number of ranks on each.
pub fn runs_on(path: GradSync, g: GroupSpread) -> bool {
    match path {
        GradSync::None => g.replicas == 1,
        GradSync::SharedMemory => g.nodes == 1,
        GradSync::TwoLevel => g.nodes > 1 && g.per_node.is_some(),
        GradSync::Allreduce | GradSync::Overlapped | GradSync::Stale | GradSync::WeightAverage => true,
    }
}

/// The one rule for a run's averaging path, asked by the plan, the performance model and the
/// layouts `plan` weighs. Two levels pay only with two or more ranks of the group per node: with
/// one they are a flat all-reduce plus a copy (measured on 2 emulated nodes x 1 rank: 490 vs 434
/// us for the MNIST gradients, 2,495 vs 1,823 for CIFAR's), while with 2 ranks per node they halve
/// the ranks that cross nodes (2 x 2: 24 vs 41 ms for MNIST's; bench/sync.sh).
pub fn choose(sync: &SyncConfig, g: GroupSpread) -> GradSync {
    let shared = sync.shared_memory;
    match sync.mode {
        _ if g.replicas == 1 => GradSync::None,
        SyncMode::Weights => GradSync::WeightAverage,
        SyncMode::Gradients if sync.overlap => GradSync::Overlapped,
        SyncMode::Gradients if sync.delay == 1 => GradSync::Stale,
        // Compressed gradients cross the replicas through MPI (the shared window holds f32).
        SyncMode::Gradients if sync.compress != Compress::None => GradSync::Allreduce,
        SyncMode::Gradients if shared && runs_on(GradSync::SharedMemory, g) => GradSync::SharedMemory,
        SyncMode::Gradients if shared && runs_on(GradSync::TwoLevel, g) && g.per_node >= Some(2) => {
            GradSync::TwoLevel
        }
        SyncMode::Gradients => GradSync::Allreduce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_serde_spelling() {
        for p in [
            GradSync::None,
            GradSync::SharedMemory,
            GradSync::TwoLevel,
            GradSync::Allreduce,
            GradSync::Overlapped,
            GradSync::Stale,
            GradSync::WeightAverage,
        ] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name());
            assert_eq!(serde_json::from_value::<GradSync>(p.name().into()).unwrap(), p);
        }
    }
}
