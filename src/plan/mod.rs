//! The plan of a run: every policy decision, resolved once from the config, the strategy and the
//! world's shape, before any data is read. The trainer, the engine and the summary read the
//! plan, never the raw config values it came from; `partrain inspect` prints the same plan.
//!
//! Every strategy is a layout of one engine: serial = 1 stage x 1 replica, dp = 1 stage x R
//! replicas, hybrid = S stages x R replicas, with `rank = replica * S + stage` (a pipeline's
//! stages are neighbouring ranks). An option that does not apply to the strategy or layout is
//! refused with a message, never ignored.

pub mod averaging;
pub mod noise;
pub mod optim;

use crate::comm::{launched_as_one_of_several, Comm, Tag, WorldShape};
use crate::config::{BatchScope, Config, Placement, Precision, StageBoundaries, SyncMode};
use crate::model::{self, Compute, LayerSpec};
use crate::plan::averaging::GradSync;
use crate::schedule::{PipelineSchedule, ScheduleKind};
use anyhow::{bail, Result};
use noise::NoisePlan;
use optim::OptimPlan;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::ops::Range;

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
fn replicas_of(world_size: usize, stages: usize) -> Result<usize> {
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
    fn new(cfg: &Config, replicas: usize) -> Result<Batches> {
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

/// Where the net's ordered layer list is cut into stages, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSplit {
    /// The first layer of stages 1.. (empty for one stage).
    pub boundaries: Vec<usize>,
    pub ranges: Vec<Range<usize>>,
    pub source: &'static str,
}

impl StageSplit {
    fn new(layers: usize, boundaries: Vec<usize>, source: &'static str) -> StageSplit {
        StageSplit {
            ranges: model::stage_ranges(layers, &boundaries),
            boundaries,
            source,
        }
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
    fn per_step(
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
    fn keeps_inside_a_node(self) -> Placement {
        if self.pipeline_bytes >= self.averaging_bytes {
            Placement::PipelineInNode
        } else {
            Placement::ReplicasInNode
        }
    }
}

pub struct Plan {
    pub strategy: Strategy,
    /// Bytes a step moves between stages and for averaging (what `auto` placement weighs).
    pub traffic: Traffic,
    pub world: WorldShape,
    pub topology: Topology,
    pub batches: Batches,
    pub schedule: PipelineSchedule,
    pub split: StageSplit,
    pub grad_sync: GradSync,
    /// libtorch intra-op threads per rank (0 in the config = libtorch's default, resolved here).
    pub threads_per_rank: usize,
    pub compute: Compute,
    pub layers: Vec<LayerSpec>,
    pub input_shape: [i64; 3],
    /// The optimizer and its learning-rate schedule at this global batch.
    pub optim: OptimPlan,
    /// Where the gradient noise scale's two batch sizes come from (None: one gradient per step).
    pub noise: Option<NoisePlan>,
}

impl Plan {
    /// The plan of this launch. Collective over `world`: the ranks learn each other's nodes, and
    /// a measured stage split is measured on rank 0 and used by all. `pinned_split` (the split a
    /// checkpoint was trained with) replaces a measured one on `--resume`.
    pub fn resolve(
        cfg: &Config,
        strategy: Strategy,
        world: &Comm,
        pinned_split: Option<&[usize]>,
    ) -> Result<Plan> {
        let shape = world.shape();
        Plan::build(cfg, strategy, shape, world.tag_ub(), |layers, input| {
            if let (Some(b), StageBoundaries::Auto | StageBoundaries::Measured) =
                (pinned_split, &cfg.parallel.stage_boundaries)
            {
                return Ok(StageSplit::new(
                    layers.len(),
                    b.to_vec(),
                    "the checkpoint's split",
                ));
            }
            // Rank 0 decides and everyone uses its split: measured times differ between ranks,
            // and the ranks must agree exactly.
            let mut split = if world.is_root() {
                choose_split(cfg, layers, input)?
            } else {
                StageSplit::new(layers.len(), vec![0; cfg.parallel.stages - 1], "")
            };
            let mut bounds: Vec<u64> = split.boundaries.iter().map(|&b| b as u64).collect();
            world.broadcast(&mut bounds, 0);
            let mut source = [SOURCES.iter().position(|&s| s == split.source).unwrap_or(0) as u8];
            world.broadcast(&mut source, 0);
            split.boundaries = bounds.iter().map(|&b| b as usize).collect();
            split.ranges = model::stage_ranges(layers.len(), &split.boundaries);
            split.source = SOURCES[source[0] as usize];
            Ok(split)
        })
    }

    /// The plan `partrain inspect` shows for a launch of `shape` it cannot see.
    pub fn hypothetical(cfg: &Config, strategy: Strategy, shape: WorldShape) -> Result<Plan> {
        Plan::build(cfg, strategy, shape, i32::MAX as i64, |layers, input| {
            choose_split(cfg, layers, input)
        })
    }

    fn build(
        cfg: &Config,
        strategy: Strategy,
        shape: WorldShape,
        tag_ub: i64,
        split: impl FnOnce(&[LayerSpec], [i64; 3]) -> Result<StageSplit>,
    ) -> Result<Plan> {
        refuse_what_does_not_apply(cfg, strategy)?;
        let replicas = replicas_of(shape.size, cfg.parallel.stages)?;
        let batches = Batches::new(cfg, replicas)?;
        let layers = model::preset_layers(cfg.model.preset, cfg.model.dropout);
        check_stages_fit(cfg, layers.len())?;
        let input_shape = cfg.data.dataset.image_shape();
        let split = split(&layers, input_shape)?;
        let traffic = Traffic::per_step(&layers, input_shape, &split, &batches, replicas);
        let placement = match cfg.parallel.placement {
            Placement::Auto => traffic.keeps_inside_a_node(),
            chosen => chosen,
        };
        let topology = Topology::new(shape.size, shape.rank, cfg.parallel.stages, placement)?;
        check_tags(&topology, &batches, tag_ub)?;
        let grad_sync = choose_grad_sync(cfg, &topology, &shape);
        let averages_gradients = !matches!(grad_sync, GradSync::WeightAverage { .. });
        Ok(Plan {
            optim: OptimPlan::new(&cfg.train, batches.global),
            noise: NoisePlan::new(
                replicas,
                batches.per_replica,
                batches.micro_batches,
                averages_gradients,
                cfg.train.noise_scale_every,
            ),
            strategy,
            traffic,
            schedule: PipelineSchedule::new(cfg.parallel.schedule, topology.stages, batches.micro_batches),
            world: shape,
            topology,
            batches,
            split,
            grad_sync,
            threads_per_rank: match cfg.parallel.threads_per_rank {
                0 => tch::get_num_threads().max(1) as usize,
                n => n,
            },
            compute: Compute {
                channels_last: cfg.train.channels_last,
                bf16: cfg.train.precision == Precision::Bf16,
            },
            layers,
            input_shape,
        })
    }

    /// This rank's layers.
    pub fn stage_layers(&self) -> Range<usize> {
        self.split.ranges[self.topology.stage].clone()
    }

    /// What a checkpoint records; `samples_per_epoch` comes from the sampler.
    pub fn layout(&self, samples_per_epoch: usize) -> Layout {
        Layout {
            world_size: self.world.size,
            stages: self.topology.stages,
            replicas: self.topology.replicas,
            global_batch: self.batches.global,
            stage_boundaries: self.split.boundaries.clone(),
            samples_per_epoch,
        }
    }

    /// Warnings about the machine this plan runs on (`cores`: the node's online CPUs).
    pub fn warnings(&self, cores: usize) -> Vec<String> {
        let local = self.world.ranks_per_node();
        let threads = local * self.threads_per_rank;
        let mut out = Vec::new();
        if local > cores {
            out.push(format!(
                "{local} ranks share a node with {cores} cores: oversubscribed, so the timings are not scaling \
                 measurements"
            ));
        } else if threads > cores {
            out.push(format!(
                "parallel.threads_per_rank = {} x {} on a node = {threads} threads for its {cores} cores: \
                 oversubscribed, steps can be many times slower (64 threads on a 2-core test machine ran 25x \
                 slower than 1); use at most {} per rank",
                self.threads_per_rank,
                plural(local, "rank"),
                plural(cores / local, "thread"),
            ));
        }
        let passive = std::env::var("OMP_WAIT_POLICY").is_ok_and(|p| p.eq_ignore_ascii_case("passive"));
        if threads > cores && self.threads_per_rank > 1 && !passive {
            // libgomp reads the policy when libtorch is loaded, so it must be set at launch.
            out.push(
                "OpenMP threads spin while they wait (OMP_WAIT_POLICY is not passive), so oversubscribed threads \
                 steal each other's cores (dp 2 x 2 on 2 cores: 380-2,300 images/s spinning, 6,400 passive): \
                 launch with `mpirun -x OMP_WAIT_POLICY=passive ...` (env.sh's partrain_binding adds it)"
                    .into(),
            );
        }
        out
    }

    /// The plan as `inspect` and the run log print it.
    pub fn describe(&self) -> String {
        let (t, b, w) = (&self.topology, &self.batches, &self.world);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan: {}, {} on {} ({} per node) = {} x {}, {} per rank",
            self.strategy.name(),
            plural(w.size, "rank"),
            plural(w.nodes(), "node"),
            w.ranks_per_node(),
            plural(t.stages, "stage"),
            plural(t.replicas, "replica"),
            plural(self.threads_per_rank, "thread")
        );
        let _ = writeln!(
            s,
            "batches: global {}, per replica {}, {} of {}{}",
            b.global,
            b.per_replica,
            plural(b.micro_batches, "micro-batch"),
            b.micro_batch,
            if t.stages == 1 && b.micro_batches > 1 {
                " (gradient accumulation)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "stage split ({}): {}",
            self.split.source,
            self.split
                .ranges
                .iter()
                .map(|r| format!("layers {}..{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "schedule: {}", self.schedule.kind.name());
        let _ = writeln!(s, "{}", self.optim.describe());
        if let Some(n) = &self.noise {
            let _ = writeln!(
                s,
                "noise scale: every {} step(s), {} gradients of {} images against their mean of {}",
                n.every, n.small_count, n.small_batch, n.big_batch
            );
        }
        if t.stages > 1 {
            let mb = |b: f64| b / (1024.0 * 1024.0);
            let _ = writeln!(
                s,
                "placement: {} (per step: {:.2} MB between a pipeline's stages, {:.2} MB of gradients per replica)",
                t.placement.name(),
                mb(self.traffic.pipeline_bytes),
                mb(self.traffic.averaging_bytes)
            );
        }
        if w.nodes() > 1 || t.stages > 1 {
            let _ = writeln!(s, "ranks on nodes: {}", self.rank_map());
        }
        let _ = writeln!(
            s,
            "gradient averaging: {}{}",
            self.grad_sync.name(),
            match self.grad_sync {
                GradSync::WeightAverage { every } => format!(" (every {every} steps and at each epoch end)"),
                _ => String::new(),
            }
        );
        let _ = writeln!(
            s,
            "compute: {}{}",
            if self.compute.bf16 {
                "bf16 mixed precision"
            } else {
                "fp32"
            },
            if self.compute.channels_last {
                ", channels-last"
            } else {
                ", NCHW"
            }
        );
        s
    }
}

impl Plan {
    /// `node0: 0 (s0 r0), 1 (s1 r0) | node1: ...`: which rank holds which stage and replica where.
    pub fn rank_map(&self) -> String {
        let t = self.topology;
        let mut nodes: Vec<Vec<(usize, String)>> = vec![Vec::new(); self.world.nodes()];
        for replica in 0..t.replicas {
            for stage in 0..t.stages {
                let rank = t.rank_of(replica, stage);
                nodes[self.world.node_of_rank[rank]].push((rank, format!("{rank} (s{stage} r{replica})")));
            }
        }
        nodes
            .into_iter()
            .enumerate()
            .map(|(n, mut ranks)| {
                ranks.sort();
                let list: Vec<String> = ranks.into_iter().map(|(_, s)| s).collect();
                format!("node{n}: {}", list.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

const MEASURED: &str = "measured forward+backward seconds";
const MACS: &str = "multiply-adds";
const EXPLICIT: &str = "explicit boundaries";
const ONE_STAGE: &str = "one stage";
/// Why a split is where it is (rank 0's reason travels to the other ranks as an index).
const SOURCES: [&str; 4] = [ONE_STAGE, MEASURED, MACS, EXPLICIT];

fn plural(n: usize, what: &str) -> String {
    match (n, what.ends_with("ch")) {
        (1, _) => format!("{n} {what}"),
        (_, true) => format!("{n} {what}es"),
        _ => format!("{n} {what}s"),
    }
}

/// The split `parallel.stage_boundaries` asks for, measured or computed on this rank.
fn choose_split(cfg: &Config, layers: &[LayerSpec], input: [i64; 3]) -> Result<StageSplit> {
    let stages = cfg.parallel.stages;
    let rule = &cfg.parallel.stage_boundaries;
    if stages == 1 {
        return Ok(StageSplit::new(layers.len(), Vec::new(), ONE_STAGE));
    }
    let costs = match rule {
        StageBoundaries::List(b) => return Ok(StageSplit::new(layers.len(), b.clone(), EXPLICIT)),
        StageBoundaries::Macs => None,
        StageBoundaries::Auto | StageBoundaries::Measured => {
            let secs = model::measure_layer_seconds(layers, input, 16, 5);
            let usable = secs.iter().all(|s| s.is_finite() && *s >= 0.0) && secs.iter().any(|s| *s > 0.0);
            if !usable && *rule == StageBoundaries::Measured {
                bail!("parallel.stage_boundaries: measured, but the per-layer timing was unusable ({secs:?}); use macs or a list");
            }
            usable.then_some(secs)
        }
    };
    let (costs, source) = match costs {
        Some(secs) => (secs, MEASURED),
        None => (model::macs_costs(layers, input), MACS),
    };
    Ok(StageSplit::new(
        layers.len(),
        model::balance(&costs, stages),
        source,
    ))
}

fn choose_grad_sync(cfg: &Config, t: &Topology, shape: &WorldShape) -> GradSync {
    if t.replicas == 1 {
        return GradSync::None;
    }
    // Each stage's replica group (the ranks that average together): within one node? spread
    // evenly over its nodes with several ranks on each? Two levels pay only then: with one rank
    // per node they are a flat all-reduce plus a copy (measured on 2 emulated nodes x 1 rank:
    // 490 vs 434 us for the MNIST gradients, 2,495 vs 1,823 for CIFAR's), while with 2 ranks per
    // node they halve the ranks that cross nodes (2 x 2: 24 vs 41 ms for MNIST's; bench/sync.sh).
    let group = |stage| (0..t.replicas).map(move |r| t.rank_of(r, stage));
    let groups_in_nodes = (0..t.stages).all(|stage| shape.on_one_node(group(stage)));
    let groups_two_level = (0..t.stages).all(|stage| {
        shape
            .evenly_spread(group(stage))
            .is_some_and(|per_node| per_node >= 2)
    });
    match cfg.sync.mode {
        SyncMode::Weights => GradSync::WeightAverage {
            every: cfg.sync.average_every,
        },
        SyncMode::Gradients if cfg.sync.overlap => GradSync::Overlapped,
        SyncMode::Gradients if cfg.sync.shared_memory && groups_in_nodes => GradSync::SharedMemory,
        SyncMode::Gradients if cfg.sync.shared_memory && groups_two_level => GradSync::TwoLevel,
        SyncMode::Gradients => GradSync::Allreduce,
    }
}

/// A stage needs a layer, and a boundary must name one of the net's layers.
fn check_stages_fit(cfg: &Config, layers: usize) -> Result<()> {
    let p = &cfg.parallel;
    if p.stages > layers {
        bail!(
            "parallel.stages: {} stages but {} has only {layers} layers (at most one stage per layer)",
            p.stages,
            cfg.model.preset.as_str()
        );
    }
    if let StageBoundaries::List(b) = &p.stage_boundaries {
        if let Some(x) = b.iter().find(|&&x| x >= layers) {
            bail!(
                "parallel.stage_boundaries: {x} is out of range: layers are 0..{}",
                layers - 1
            );
        }
    }
    Ok(())
}

/// The largest tag a step sends must fit the MPI implementation's MPI_TAG_UB.
fn check_tags(t: &Topology, b: &Batches, tag_ub: i64) -> Result<()> {
    let largest = Tag::largest(b.micro_batches);
    if t.stages > 1 && largest > tag_ub {
        bail!(
            "parallel.micro_batches: {} micro-batches need message tags up to {largest}, but this MPI accepts \
             tags up to MPI_TAG_UB = {tag_ub}: use at most {} micro-batches",
            b.micro_batches,
            (tag_ub - Tag::largest(1)) / 2 + 1
        );
    }
    Ok(())
}

/// Refuses options that the strategy or layout would otherwise silently ignore.
fn refuse_what_does_not_apply(cfg: &Config, strategy: Strategy) -> Result<()> {
    let (p, sync) = (&cfg.parallel, &cfg.sync);
    let defaults = crate::config::SyncConfig::default();
    if strategy == Strategy::Serial {
        if let Some((var, n)) = launched_as_one_of_several() {
            bail!(
                "partrain serial is one process, but {var}={n} says it was started as one of {n} MPI ranks \
                 (all would write the same run folder): use `mpirun -np {n} partrain dp` for data parallelism, \
                 or start `partrain serial` without mpirun/srun"
            );
        }
        let set = [
            ("mode", sync.mode != defaults.mode),
            ("average_every", sync.average_every != defaults.average_every),
            ("overlap", sync.overlap != defaults.overlap),
            ("shared_memory", sync.shared_memory != defaults.shared_memory),
        ];
        if let Some((key, _)) = set.iter().find(|(_, changed)| *changed) {
            bail!("sync.{key}: applies to averaging across replicas (dp, hybrid); `partrain serial` has one replica");
        }
    }
    if strategy != Strategy::Hybrid && p.stages != 1 {
        bail!(
            "parallel.stages: {} stages need `partrain hybrid`; `partrain {}` runs whole replicas",
            p.stages,
            strategy.name()
        );
    }
    if p.stages == 1 && p.placement != Placement::Auto {
        bail!(
            "parallel.placement: {} lays a pipeline's stages over the nodes, and this run has one stage",
            p.placement.name()
        );
    }
    if p.stages == 1 && p.stage_boundaries != StageBoundaries::Auto {
        bail!("parallel.stage_boundaries: applies to a pipeline (parallel.stages > 1), and this run has one stage");
    }
    if p.stages == 1 && p.micro_batches == 1 && p.schedule != ScheduleKind::OneFOneB {
        bail!(
            "parallel.schedule: {} orders micro-batches, and with one stage and one micro-batch there is nothing to \
             order (parallel.micro_batches > 1 accumulates gradients over micro-batches)",
            p.schedule.name()
        );
    }
    if sync.mode == SyncMode::Gradients && sync.average_every != 1 {
        bail!(
            "sync.average_every: {} applies to sync.mode: weights (model averaging); gradients are averaged every step",
            sync.average_every
        );
    }
    if sync.mode == SyncMode::Weights && (sync.overlap || !sync.shared_memory) {
        bail!("sync.overlap / sync.shared_memory: apply to gradient averaging, and sync.mode is weights");
    }
    if sync.overlap && (p.stages > 1 || p.micro_batches > 1) {
        bail!(
            "sync.overlap: overlaps the all-reduce with one backward pass, so it needs one stage and one micro-batch; \
             this run has {} stage(s) x {} micro-batch(es)",
            p.stages,
            p.micro_batches
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan for a hypothetical launch. Pipelines are cut by multiply-adds unless the test says
    /// otherwise: measuring seeds libtorch's global RNG, which tests running alongside use.
    fn plan(yaml: &str, sets: &[&str], strategy: Strategy, np: usize, per_node: usize) -> Result<Plan> {
        let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        if sets.iter().any(|s| s.starts_with("parallel.stages="))
            && !sets.iter().any(|s| s.contains("boundaries"))
        {
            sets.push("parallel.stage_boundaries=macs".into());
        }
        let cfg = crate::config::from_yaml_str(yaml, &sets)?;
        Plan::hypothetical(&cfg, strategy, WorldShape::blocks(np, per_node))
    }

    #[test]
    fn strategies_are_layouts_of_one_grid() {
        let p = plan("", &[], Strategy::Serial, 1, 1).unwrap();
        assert_eq!((p.topology.stages, p.topology.replicas), (1, 1));
        assert_eq!(p.grad_sync, GradSync::None);
        assert_eq!(p.batches.global, 64);
        let p = plan("", &[], Strategy::Dp, 4, 4).unwrap();
        assert_eq!(
            (p.topology.stages, p.topology.replicas, p.batches.global),
            (1, 4, 256)
        );
        assert_eq!(p.grad_sync, GradSync::SharedMemory);
        let p = plan(
            "",
            &["parallel.stages=2", "parallel.micro_batches=4"],
            Strategy::Hybrid,
            4,
            4,
        )
        .unwrap();
        assert_eq!((p.topology.stages, p.topology.replicas), (2, 2));
        assert_eq!(p.batches.micro_batch, 16);
        assert_eq!(p.split.ranges.len(), 2);
    }

    #[test]
    fn gradient_averaging_path_follows_the_nodes() {
        let dp = |np, per_node, sets: &[&str]| plan("", sets, Strategy::Dp, np, per_node).unwrap().grad_sync;
        assert_eq!(dp(2, 2, &[]), GradSync::SharedMemory);
        assert_eq!(dp(4, 2, &[]), GradSync::TwoLevel, "2 nodes x 2 replicas");
        assert_eq!(dp(4, 1, &[]), GradSync::Allreduce, "one replica per node");
        assert_eq!(
            dp(3, 2, &[]),
            GradSync::Allreduce,
            "2 + 1 replicas: uneven slices"
        );
        assert_eq!(dp(4, 2, &["sync.shared_memory=false"]), GradSync::Allreduce);
        assert_eq!(dp(2, 2, &["sync.shared_memory=false"]), GradSync::Allreduce);
        assert_eq!(dp(2, 2, &["sync.overlap=true"]), GradSync::Overlapped);
        assert_eq!(
            dp(2, 2, &["sync.mode=weights", "sync.average_every=5"]),
            GradSync::WeightAverage { every: 5 }
        );
        // Hybrid 2 x 2 on two nodes of 2: with the pipelines in the nodes, each replica group
        // (stage 0 = ranks 0 and 2) has one rank per node; with the replicas in the nodes, each
        // group is one node.
        let h = |p: &str| plan("", &["parallel.stages=2", p], Strategy::Hybrid, 4, 2).unwrap();
        assert_eq!(
            h("parallel.placement=pipeline_in_node").grad_sync,
            GradSync::Allreduce
        );
        let r = h("parallel.placement=replicas_in_node");
        assert_eq!(
            (r.grad_sync, r.topology.rank_of(1, 0)),
            (GradSync::SharedMemory, 1)
        );
    }

    #[test]
    fn options_that_do_not_apply_are_refused() {
        let refused = |sets: &[&str], strategy, np, want: &str| {
            let e = plan("", sets, strategy, np, np)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default();
            assert!(e.contains(want), "{sets:?}: expected `{want}` in `{e}`");
        };
        refused(&["sync.overlap=true"], Strategy::Serial, 1, "sync.overlap");
        refused(&["sync.mode=weights"], Strategy::Serial, 1, "sync.mode");
        refused(&["parallel.stages=2"], Strategy::Dp, 2, "need `partrain hybrid`");
        refused(
            &["parallel.stage_boundaries=macs"],
            Strategy::Dp,
            2,
            "parallel.stage_boundaries",
        );
        refused(
            &["parallel.schedule=gpipe"],
            Strategy::Serial,
            1,
            "parallel.schedule",
        );
        refused(&["sync.average_every=4"], Strategy::Dp, 2, "sync.average_every");
        refused(
            &["parallel.stages=2", "sync.overlap=true"],
            Strategy::Hybrid,
            2,
            "one stage and one micro-batch",
        );
        refused(
            &["parallel.micro_batches=4", "sync.overlap=true"],
            Strategy::Dp,
            2,
            "sync.overlap",
        );
        refused(
            &["parallel.micro_batches=5"],
            Strategy::Serial,
            1,
            "does not divide the per-replica batch of 64",
        );
        refused(
            &["train.batch_scope=global", "train.batch_size=66"],
            Strategy::Dp,
            4,
            "does not divide into 4 replicas",
        );
        // Gradient accumulation on one stage is a layout, not an ignored option.
        assert!(plan("", &["parallel.micro_batches=4"], Strategy::Serial, 1, 1).is_ok());
    }

    #[test]
    fn stages_must_fit_the_net() {
        let e = |sets: &[&str]| {
            plan("", sets, Strategy::Hybrid, 12, 12)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e(&["parallel.stages=12"]).contains("only 11 layers"));
        let e = plan(
            "",
            &["parallel.stages=2", "parallel.stage_boundaries=[11]"],
            Strategy::Hybrid,
            2,
            2,
        );
        assert!(e.err().unwrap().to_string().contains("out of range"));
    }

    #[test]
    fn tags_beyond_mpi_tag_ub_are_refused() {
        let cfg = crate::config::from_yaml_str(
            "",
            &[
                "parallel.stages=2".into(),
                "parallel.micro_batches=64".into(),
                "parallel.stage_boundaries=macs".into(),
            ],
        )
        .unwrap();
        let e = Plan::build(&cfg, Strategy::Hybrid, WorldShape::blocks(2, 2), 100, |l, i| {
            choose_split(&cfg, l, i)
        })
        .err()
        .unwrap();
        assert!(format!("{e}").contains("MPI_TAG_UB = 100"), "{e}");
    }
}
