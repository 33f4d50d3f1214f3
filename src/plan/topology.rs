//! The grid a run's ranks form (stages x replicas), how it lies over the ranks, the batches at
//! each level, what a checkpoint records of the layout, and the traffic a step sends.

use crate::config::{BatchScope, Config, Placement};
use crate::model::{self, LayerSpec};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::split::StageSplit;

/// The three commands that train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Serial,
    Dp,
    Hybrid,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Serial => "serial",
            Strategy::Dp => "dp",
            Strategy::Hybrid => "hybrid",
        }
    }
}

/// This rank's place in the `stages x replicas` grid, and how the grid lies over the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub stages: usize,
    pub replicas: usize,
    pub stage: usize,
    pub replica: usize,
    /// `PipelineInNode` or `ReplicasInNode` (never `Auto`: the plan resolves it).
    pub placement: Placement,
}

/// Replicas in a world of `world_size` ranks cut into `stages` stages.
pub(super) fn replicas_of(world_size: usize, stages: usize) -> Result<usize> {
    if stages == 0 || !world_size.is_multiple_of(stages) {
        bail!(
            "parallel.stages: {stages} stages do not divide the {world_size} MPI ranks \
             (world size must be stages x replicas; launch with mpirun -np {})",
            stages * (world_size / stages.max(1)).max(1)
        );
    }
    Ok(world_size / stages)
}

impl Topology {
    pub fn new(world_size: usize, rank: usize, stages: usize, placement: Placement) -> Result<Topology> {
        let replicas = replicas_of(world_size, stages)?;
        let (stage, replica) = match placement {
            Placement::ReplicasInNode => (rank / replicas, rank % replicas),
            _ => (rank % stages, rank / stages),
        };
        Ok(Topology {
            stages,
            replicas,
            stage,
            replica,
            placement,
        })
    }
    pub fn rank_of(&self, replica: usize, stage: usize) -> usize {
        match self.placement {
            Placement::ReplicasInNode => stage * self.replicas + replica,
            _ => replica * self.stages + stage,
        }
    }
    /// The rank of the previous stage of this rank's pipeline.
    pub fn prev(&self) -> Option<usize> {
        self.stage.checked_sub(1).map(|s| self.rank_of(self.replica, s))
    }
    /// The rank of the next stage of this rank's pipeline.
    pub fn next(&self) -> Option<usize> {
        (!self.is_last()).then(|| self.rank_of(self.replica, self.stage + 1))
    }
    pub fn is_last(&self) -> bool {
        self.stage + 1 == self.stages
    }
}

/// Images per step at each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batches {
    pub global: usize,
    pub per_replica: usize,
    pub micro_batches: usize,
    pub micro_batch: usize,
}

impl Batches {
    pub(super) fn new(cfg: &Config, replicas: usize) -> Result<Batches> {
        let t = &cfg.train;
        let global = match t.batch_scope {
            BatchScope::PerRank => t.batch_size * replicas,
            BatchScope::Global => t.batch_size,
        };
        if !global.is_multiple_of(replicas) {
            bail!(
                "train.batch_size: {} with batch_scope global does not divide into {replicas} replicas",
                t.batch_size
            );
        }
        let per_replica = global / replicas;
        let m = cfg.parallel.micro_batches;
        if !per_replica.is_multiple_of(m) {
            bail!("parallel.micro_batches: {m} does not divide the per-replica batch of {per_replica}");
        }
        Ok(Batches {
            global,
            per_replica,
            micro_batches: m,
            micro_batch: per_replica / m,
        })
    }
}

/// What a checkpoint records of the layout, and what a resumed run must share with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub world_size: usize,
    pub stages: usize,
    pub replicas: usize,
    pub global_batch: usize,
    pub stage_boundaries: Vec<usize>,
    /// Training images per epoch after the tail policy (the tail is trimmed to a multiple of
    /// the replicas, so it can depend on the replica count).
    pub samples_per_epoch: usize,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ranks = {} stages x {} replicas, global batch {}, stage boundaries {:?}, {} images per epoch",
            self.world_size,
            self.stages,
            self.replicas,
            self.global_batch,
            self.stage_boundaries,
            self.samples_per_epoch
        )
    }
}

/// Bytes one step sends: activations and their gradients between a pipeline's stages, and the
/// gradients one replica contributes to averaging (a ring all-reduce sends 2 (R-1)/R of them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    pub pipeline_bytes: f64,
    pub averaging_bytes: f64,
}

impl Traffic {
    pub(super) fn per_step(
        layers: &[LayerSpec],
        input: [i64; 3],
        split: &StageSplit,
        b: &Batches,
        replicas: usize,
    ) -> Traffic {
        let rows = model::describe(layers, input);
        let boundary_elems: i64 = split
            .boundaries
            .iter()
            .map(|&first| rows[first - 1].output_shape.iter().product::<i64>())
            .sum();
        let params: i64 = rows.iter().map(|r| r.parameters).sum();
        let r = replicas as f64;
        Traffic {
            pipeline_bytes: 2.0 * 4.0 * (b.per_replica as i64 * boundary_elems) as f64,
            averaging_bytes: 4.0 * params as f64 * 2.0 * (r - 1.0) / r,
        }
    }

    /// The placement that keeps the larger of the two inside a node.
    pub(super) fn keeps_inside_a_node(self) -> Placement {
        if self.pipeline_bytes >= self.averaging_bytes {
            Placement::PipelineInNode
        } else {
            Placement::ReplicasInNode
        }
    }
}
