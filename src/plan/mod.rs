//! The plan of a run: every policy decision, resolved once from the config, the strategy and the
//! world's shape, before any data is read. The trainer, the engine and the summary read the
//! plan, never the raw config values it came from; `partrain inspect` prints the same plan.
//!
//! Every strategy is a layout of one engine: serial = 1 stage x 1 replica, dp = 1 stage x R
//! replicas, hybrid = S stages x R replicas, with `rank = replica * S + stage` (a pipeline's
//! stages are neighbouring ranks). An option that does not apply to the strategy or layout is
//! refused with a message, never ignored.

pub mod averaging;
mod describe;
pub mod noise;
mod refuse;
pub mod split;
mod topology;

pub use topology::{Batches, Layout, Strategy, Topology, Traffic};
pub mod optim;
pub mod recipe;
pub mod run;

use crate::comm::{Comm, WorldShape};
use crate::config::{Config, Placement, Precision, StageBoundaries};
use crate::model::{Compute, LayerSpec};
use crate::schedule::PipelineSchedule;
use anyhow::Result;
use averaging::{GradSync, GroupSpread};
use noise::NoisePlan;
use optim::OptimPlan;
use refuse::{check_stages_fit, check_tags, refuse_what_does_not_apply};
use split::{choose_split, stage_ranges, StageSplit, SOURCES};
use std::ops::Range;
use topology::replicas_of;

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
    /// With model averaging: average the weights every this many steps (`sync.average_every`).
    pub average_every: usize,
    /// How the averaged gradients travel (`sync.compress`).
    pub compress: crate::config::Compress,
    /// Overlapped averaging: a bucket closes at this many bytes of gradients (`sync.bucket_mb`).
    pub bucket_bytes: usize,
    /// PowerSGD's rank and its steps of plain averaging first (`sync.powersgd_rank`,
    /// `sync.compress_after_steps`).
    pub powersgd: (usize, usize),
    /// Post-local SGD: gradient averaging for the first this many steps (`sync.local_sgd_after`).
    pub local_sgd_after: usize,
    /// libtorch intra-op threads per rank (0 in the config = libtorch's default, resolved here).
    pub threads_per_rank: usize,
    pub compute: Compute,
    pub layers: Vec<LayerSpec>,
    pub input_shape: [i64; 3],
    /// The net's name (a preset's, or `custom`) and identity (`crate::netspec::NetSpec::id`).
    pub net_name: String,
    pub net_id: String,
    /// The optimizer and its learning-rate schedule at this global batch.
    pub optim: OptimPlan,
    /// Where the gradient noise scale's two batch sizes come from (None: one gradient per step).
    pub noise: Option<NoisePlan>,
    /// How long to train, when to evaluate and checkpoint, the target, the seed.
    pub run: run::RunPlan,
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
            split.ranges = stage_ranges(layers.len(), &split.boundaries);
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
        let (net, input_shape) = (cfg.net()?, cfg.data.dataset.image_shape());
        check_stages_fit(cfg, &net.label(), net.layers.len())?;
        let layers = net.layers;
        let replicas = replicas_of(shape.size, cfg.parallel.stages)?;
        let batches = Batches::new(cfg, replicas)?;
        let split = split(&layers, input_shape)?;
        let traffic = Traffic::per_step(&layers, input_shape, &split, &batches, replicas);
        let placement = match cfg.parallel.placement {
            Placement::Auto => traffic.keeps_inside_a_node(),
            chosen => chosen,
        };
        let topology = Topology::new(shape.size, shape.rank, cfg.parallel.stages, placement)?;
        check_tags(&topology, &batches, tag_ub)?;
        let grad_sync = averaging::choose(&cfg.sync, group_spread(&topology, &shape));
        // The estimator needs the step's own mean gradient.
        let averages_gradients = !matches!(grad_sync, GradSync::WeightAverage | GradSync::Stale);
        Ok(Plan {
            run: run::RunPlan::new(cfg),
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
            average_every: cfg.sync.average_every,
            compress: cfg.sync.compress,
            powersgd: (cfg.sync.powersgd_rank, cfg.sync.compress_after_steps),
            bucket_bytes: (cfg.sync.bucket_mb * 1024.0 * 1024.0) as usize,
            local_sgd_after: cfg.sync.local_sgd_after.unwrap_or(0),
            threads_per_rank: threads_per_rank(cfg.parallel.threads_per_rank),
            compute: Compute {
                channels_last: cfg.train.channels_last,
                bf16: cfg.train.precision == Precision::Bf16,
            },
            layers,
            input_shape,
            net_name: net.name,
            net_id: net.id,
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
}

/// How the stages' replica groups (the ranks that average together) lie over the nodes: the
/// most nodes any group spans, and the ranks per node when every group has the same number on
/// each of its nodes.
fn group_spread(t: &Topology, shape: &WorldShape) -> GroupSpread {
    let group = |stage| (0..t.replicas).map(move |r| t.rank_of(r, stage));
    let nodes = (0..t.stages)
        .map(|stage| {
            let mut n: Vec<usize> = group(stage).map(|r| shape.node_of_rank[r]).collect();
            n.sort_unstable();
            n.dedup();
            n.len()
        })
        .max()
        .unwrap_or(1);
    let per: Vec<Option<usize>> = (0..t.stages)
        .map(|stage| shape.evenly_spread(group(stage)))
        .collect();
    let same = per.iter().all(|p| *p == per[0]);
    GroupSpread {
        replicas: t.replicas,
        nodes,
        per_node: if same { per[0] } else { None },
    }
}

/// libtorch intra-op threads per rank: 0 in the config is libtorch's default.
fn threads_per_rank(configured: usize) -> usize {
    match configured {
        0 => tch::get_num_threads().max(1) as usize,
        n => n,
    }
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
        // Buckets overlap backward in every layout: micro-batches and pipeline stages too.
        assert_eq!(
            dp(2, 2, &["sync.overlap=true", "parallel.micro_batches=4"]),
            GradSync::Overlapped
        );
        let h = plan(
            "",
            &["parallel.stages=2", "sync.overlap=true"],
            Strategy::Hybrid,
            4,
            4,
        )
        .unwrap();
        assert_eq!(h.grad_sync, GradSync::Overlapped);
        // Compressed gradients take MPI even where a shared window could hold f32 ones.
        for np_per_node in [(2, 2), (4, 2), (4, 1)] {
            let p = plan(
                "",
                &["sync.compress=bf16"],
                Strategy::Dp,
                np_per_node.0,
                np_per_node.1,
            )
            .unwrap();
            assert_eq!(
                (p.grad_sync, p.compress),
                (GradSync::Allreduce, crate::config::Compress::Bf16)
            );
        }
        assert_eq!(
            dp(2, 2, &["sync.mode=weights", "sync.average_every=5"]),
            GradSync::WeightAverage
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
        refused(&["sync.compress=bf16"], Strategy::Serial, 1, "sync.compress");
        refused(&["sync.delay=2"], Strategy::Dp, 2, "sync.delay: expected 0");
        refused(
            &["sync.delay=1", "sync.compress=bf16"],
            Strategy::Dp,
            2,
            "sync.delay: 1 defers",
        );
        refused(
            &["sync.local_sgd_after=5"],
            Strategy::Dp,
            2,
            "sync.local_sgd_after: post-local SGD",
        );
        refused(
            &["sync.powersgd_rank=2"],
            Strategy::Dp,
            2,
            "sync.powersgd_rank: applies to sync.compress: powersgd",
        );
        refused(
            &["sync.compress=powersgd", "sync.powersgd_rank=0"],
            Strategy::Dp,
            2,
            "sync.powersgd_rank: the factors need at least 1 column",
        );
        refused(
            &["sync.compress=bf16", "sync.mode=weights"],
            Strategy::Dp,
            2,
            "sync.compress: bf16 compresses the gradient all-reduce",
        );
        refused(
            &["sync.compress=bf16", "sync.overlap=true"],
            Strategy::Dp,
            2,
            "sync.overlap: true",
        );
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
            &["sync.bucket_mb=4"],
            Strategy::Dp,
            2,
            "sync.bucket_mb: sizes the buckets of sync.overlap",
        );
        refused(
            &["sync.overlap=true", "sync.bucket_mb=-1"],
            Strategy::Dp,
            2,
            "sync.bucket_mb",
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
