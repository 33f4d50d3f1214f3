//! What the plan refuses: options that do not apply to the strategy or layout (never silently
//! ignored), stages the net cannot fill, message tags beyond MPI_TAG_UB.

use super::topology::{Batches, Strategy, Topology};
use crate::comm::{launched_as_one_of_several, Tag};
use crate::config::{Config, Placement, StageBoundaries, SyncMode};
use crate::schedule::ScheduleKind;
use anyhow::{bail, Result};

/// A stage needs a layer, and a boundary must name one of the net's layers.
pub(super) fn check_stages_fit(cfg: &Config, net: &str, layers: usize) -> Result<()> {
    let p = &cfg.parallel;
    if p.stages > layers {
        bail!(
            "parallel.stages: {} stages but {net} has only {layers} layers (at most one stage per layer; \
             a residual block is one layer)",
            p.stages
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
pub(super) fn check_tags(t: &Topology, b: &Batches, tag_ub: i64) -> Result<()> {
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
pub(super) fn refuse_what_does_not_apply(cfg: &Config, strategy: Strategy) -> Result<()> {
    refuse_for_serial(cfg, strategy)?;
    refuse_pipeline_keys(cfg, strategy)?;
    refuse_sync_keys(cfg)
}

/// `partrain serial` under a launcher, or with settings for averaging across replicas.
fn refuse_for_serial(cfg: &Config, strategy: Strategy) -> Result<()> {
    let sync = &cfg.sync;
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
            ("bucket_mb", sync.bucket_mb != defaults.bucket_mb),
            ("shared_memory", sync.shared_memory != defaults.shared_memory),
            ("compress", sync.compress != defaults.compress),
            ("delay", sync.delay != defaults.delay),
            (
                "local_sgd_after",
                sync.local_sgd_after != defaults.local_sgd_after,
            ),
        ];
        if let Some((key, _)) = set.iter().find(|(_, changed)| *changed) {
            bail!("sync.{key}: applies to averaging across replicas (dp, hybrid); `partrain serial` has one replica");
        }
    }
    Ok(())
}

/// Pipeline keys without a pipeline.
fn refuse_pipeline_keys(cfg: &Config, strategy: Strategy) -> Result<()> {
    let p = &cfg.parallel;
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
    Ok(())
}

/// Averaging keys that do not apply to the averaging mode or the layout.
fn refuse_sync_keys(cfg: &Config) -> Result<()> {
    let sync = &cfg.sync;
    if sync.mode == SyncMode::Gradients && sync.average_every != 1 {
        bail!(
            "sync.average_every: {} applies to sync.mode: weights (model averaging); gradients are averaged every step",
            sync.average_every
        );
    }
    if sync.mode == SyncMode::Weights && (sync.overlap || !sync.shared_memory) {
        bail!("sync.overlap / sync.shared_memory: apply to gradient averaging, and sync.mode is weights");
    }
    if sync.compress != crate::config::Compress::None && (sync.mode == SyncMode::Weights || sync.overlap) {
        bail!(
            "sync.compress: {} compresses the gradient all-reduce of sync.mode: gradients without sync.overlap \
             (this run has sync.mode: {}, sync.overlap: {})",
            sync.compress.name(),
            if sync.mode == SyncMode::Weights { "weights" } else { "gradients" },
            sync.overlap
        );
    }
    let defaults = crate::config::SyncConfig::default();
    if sync.compress != crate::config::Compress::PowerSgd {
        for (key, changed) in [
            ("powersgd_rank", sync.powersgd_rank != defaults.powersgd_rank),
            (
                "compress_after_steps",
                sync.compress_after_steps != defaults.compress_after_steps,
            ),
        ] {
            if changed {
                bail!(
                    "sync.{key}: applies to sync.compress: powersgd (this run has sync.compress: {})",
                    sync.compress.name()
                );
            }
        }
    }
    if sync.delay == 1
        && (sync.mode == SyncMode::Weights || sync.overlap || sync.compress != crate::config::Compress::None)
    {
        bail!(
            "sync.delay: 1 defers the gradient all-reduce of sync.mode: gradients to the next step; it does not \
             combine with sync.mode: weights, sync.overlap or sync.compress"
        );
    }
    if sync.local_sgd_after.is_some() && sync.mode != SyncMode::Weights {
        bail!("sync.local_sgd_after: post-local SGD switches to model averaging, so it needs sync.mode: weights");
    }
    if sync.bucket_mb != crate::config::SyncConfig::default().bucket_mb && !sync.overlap {
        bail!("sync.bucket_mb: sizes the buckets of sync.overlap, which is off");
    }
    Ok(())
}
