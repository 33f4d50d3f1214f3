//! How the replicas of a stage agree on a step: the policy (`GradSync`), chosen once by
//! `Plan::resolve` and named in `summary.json`; `train::averager` carries it out.

use serde::{Deserialize, Serialize};

/// The averaging path of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradSync {
    /// One replica: nothing to average.
    None,
    /// All replicas of each stage share a node: the mean is computed in an MPI-3 shared window
    /// that backward writes into (no copies into or out of MPI).
    SharedMemory,
    /// Replicas on several nodes, the same number on each: the node-shared sum inside every
    /// node, then one MPI_Allreduce per slice across the nodes (every rank of a node carries a
    /// slice, so all its links are busy at once), the mean left in the node's shared memory.
    TwoLevel,
    /// One MPI_Allreduce of the flat gradient buffer, then a division.
    Allreduce,
    /// MPI_Allreduce of each finished block of layers on a communication thread while the
    /// backward of earlier blocks goes on (`sync.overlap`, one stage and one micro-batch).
    Overlapped,
    /// Seed 004's model averaging: local SGD steps, weights averaged every `every` steps and at
    /// the end of every epoch.
    WeightAverage { every: usize },
}

impl GradSync {
    /// The name in `summary.json` (`gradient_averaging`), `inspect` and the run log.
    pub fn name(self) -> &'static str {
        match self {
            GradSync::None => "none",
            GradSync::SharedMemory => "shared_memory",
            GradSync::TwoLevel => "two_level",
            GradSync::Allreduce => "mpi_allreduce",
            GradSync::Overlapped => "mpi_allreduce_overlapped",
            GradSync::WeightAverage { .. } => "weight_average",
        }
    }
}
