//! `summary.json`: the run's status while it runs (`running`, `failed`, `interrupted`) and its
//! figures once `completed`. Every version carries `format` and `version`, which the reader checks
//! by name first; a file without them is version 1 (written before 2026-12-02), read the same way.

use crate::config::{BatchScope, SyncMode};
use crate::plan::Strategy;
use crate::schedule::ScheduleKind;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE: &str = "summary.json";
pub const FORMAT: &str = "partrain-summary";
pub const VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// `partrain-summary` and its version (absent in version 1).
    #[serde(default = "format_name")]
    pub format: String,
    #[serde(default = "legacy_version")]
    pub version: u32,
    /// `completed` for a finished run; anything else is not a result.
    pub status: String,
    pub strategy: Strategy,
    pub dataset: String,
    /// The net's name (a preset's, or `custom`) and its identity (`crate::netspec::NetSpec::id`).
    pub model: String,
    #[serde(default)]
    pub model_id: String,
    /// Ranks, nodes, ranks per node, cores of rank 0's node, host names, machines.
    #[serde(flatten)]
    pub world: crate::comm::WorldFacts,
    pub stages: usize,
    pub replicas: usize,
    pub threads_per_rank: usize,
    pub epochs: usize,
    pub steps: usize,
    pub global_batch: usize,
    /// Micro-batches per replica and step (pipeline stages' units of work; on one stage,
    /// gradient accumulation).
    #[serde(default)]
    pub micro_batches: usize,
    /// The first layer of stages 1.., and how the stages and replicas were laid over the ranks.
    #[serde(default)]
    pub stage_boundaries: Vec<usize>,
    #[serde(default = "default_placement")]
    pub placement: crate::config::Placement,
    pub batch_scope: BatchScope,
    pub sync_mode: SyncMode,
    /// The plan's averaging path (`GradSync`'s one spelling: `none`, `shared_memory`,
    /// `two_level`, `mpi_allreduce`, `mpi_allreduce_overlapped` or `weight_average`).
    pub gradient_averaging: crate::plan::averaging::GradSync,
    /// With model averaging: the period in steps.
    #[serde(default = "one")]
    pub average_every: usize,
    /// How the averaging travelled and what it cost (flattened: its fields are top-level keys).
    #[serde(flatten)]
    pub averaging: AveragingSummary,
    pub parameters: i64,
    pub train_samples: usize,
    pub test_samples: usize,
    pub train_seconds: f64,
    pub samples_per_second: f64,
    /// Floating-point operations of one training image (forward, weight and input gradients).
    #[serde(default)]
    pub training_flop_per_image: f64,
    /// samples_per_second x training_flop_per_image, in GFLOP/s.
    #[serde(default)]
    pub achieved_gflops: f64,
    /// The machine's measured peak for all ranks of this run (`partrain peak`, named by
    /// `PARTRAIN_PEAK`) and achieved / peak; absent without a peak measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gflops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction_of_peak: Option<f64>,
    pub final_test_accuracy: f64,
    pub final_test_loss: f64,
    pub final_train_loss: f64,
    /// One entry per rank, in MiB.
    pub peak_rss_mb: Vec<f64>,
    pub compute_seconds: f64,
    pub allreduce_seconds: f64,
    pub pipeline_wait_seconds: f64,
    /// Seconds from rank 0's process start to the end of its first optimizer step (start-up cost:
    /// libraries, MPI, data loading, first kernels).
    #[serde(default)]
    pub first_step_seconds: f64,
    pub seed: u64,
    pub config_hash: String,
    /// The optimizer and learning-rate schedule the plan resolved (the peak rate scaled to the
    /// global batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<crate::plan::optim::OptimPlan>,
    #[serde(default)]
    pub steps_per_epoch: usize,
    /// `train.eval_every_steps` (evaluations inside epochs), for predictions of time to target.
    #[serde(default)]
    pub eval_every_steps: Option<usize>,
    /// Time to accuracy and the noise scale.
    #[serde(flatten)]
    pub target: TargetSummary,
    /// Hybrid runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSummary>,
    /// Rank 0's process start and the summary's writing, seconds since 1970 (UTC): the report
    /// notes runs that overlapped in time on one host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<f64>,
    /// The machines (kernels, by boot id) the ranks ran on: emulated nodes share one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machine_ids: Vec<String>,
    /// Where the ranks ran and how the node leaders' links measured at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::record::preflight::Preflight>,
}

/// The averaging's traffic and link, flattened into `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AveragingSummary {
    /// How the averaged gradients travelled (`sync.compress`: `none`, `bf16`, `powersgd`).
    #[serde(default)]
    pub compress: crate::config::Compress,
    /// Averaging traffic per rank per optimizer step, bytes: the payload this rank handed to the
    /// averaging's collectives under bandwidth-optimal algorithms (a ring all-reduce of n f32
    /// over R ranks sends 2 (R-1)/R x 4n; node-shared memory sends none); the largest over ranks.
    #[serde(default)]
    pub sent_bytes_per_step: f64,
    /// Overlapped averaging (`sync.overlap`): seconds of all-reduce on the communication thread,
    /// and the share hidden behind backward (1 - the wait after backward / those seconds),
    /// rank 0's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlapped_allreduce_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub averaging_hidden_fraction: Option<f64>,
    /// The emulated cluster's set link rate the run's nodes talked over
    /// (`scripts/cluster.sh up N --link RATE`: `100mbit`, ...); absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// Time to accuracy (`train.target_accuracy`, percent) and the gradient noise scale, flattened
/// into `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetSummary {
    /// Time to accuracy (`train.target_accuracy`, percent): the run clock, steps, epochs
    /// (fractional) and images at the first evaluation at or above it; null when not reached.
    #[serde(default)]
    pub target_accuracy: Option<f64>,
    #[serde(default)]
    pub time_to_target_s: Option<f64>,
    #[serde(default)]
    pub steps_to_target: Option<usize>,
    #[serde(default)]
    pub epochs_to_target: Option<f64>,
    #[serde(default)]
    pub images_to_target: Option<usize>,
    /// The run ended at the target (`train.stop_at_target`).
    #[serde(default)]
    pub stopped_at_target: bool,
    /// The run clock at the end: training, evaluations and checkpoints, from the first step.
    #[serde(default)]
    pub run_seconds: f64,
    #[serde(default)]
    pub evaluations: usize,
    #[serde(default)]
    pub eval_seconds: f64,
    /// The best test accuracy of the run's evaluations (a run that missed its target shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_test_accuracy: Option<f64>,
    /// The smoothed gradient noise scale B_simple (images) at the end of the run and at the
    /// first reach of the target; null when the layout does not measure it (one gradient per step).
    #[serde(default)]
    pub noise_scale: Option<f64>,
    #[serde(default)]
    pub noise_scale_at_target: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineSummary {
    pub schedule: ScheduleKind,
    pub micro_batches: usize,
    /// Layer ranges per stage, e.g. `[0..4, 4..11]`.
    pub stage_layers: String,
    pub compute_seconds_per_rank: Vec<f64>,
    /// Time blocked receiving activations or gradients (the bubble), per rank.
    pub pipeline_wait_seconds_per_rank: Vec<f64>,
    /// pipeline_wait / train_seconds per rank.
    pub bubble_fraction_per_rank: Vec<f64>,
    /// The schedule's bubble with equal stages ((S-1)/(M+S-1), simulated), for comparison.
    pub bubble_formula: f64,
    /// The bubble predicted from the measured stage compute times (first replica's stages): a step
    /// lasts at least (M - 1) x the slowest stage's time per micro-batch + the sum of all stages'
    /// times per micro-batch, so rank r idles 1 - compute_r / (steps x that).
    pub predicted_bubble_fraction_per_rank: Vec<f64>,
    /// Images/s bound: global batch / that step time.
    pub predicted_samples_per_second: f64,
    /// Activations held at once: micro-batches in flight x their layers' output sizes, per rank.
    pub peak_activation_mb_per_rank: Vec<f64>,
}

impl PipelineSummary {
    /// The pipeline's figures from every rank's measured compute and wait seconds over the
    /// `steps` steps taken in this process. With uniform micro-batches a step lasts at least
    /// (M - 1) x the slowest stage's time per micro-batch + the sum of all stages' times per
    /// micro-batch (fill and drain): the bound the bubble is predicted from.
    pub fn from_measurements(
        plan: &crate::plan::Plan,
        steps: usize,
        train_seconds: f64,
        compute_per_rank: Vec<f64>,
        wait_per_rank: Vec<f64>,
        activation_mb: Vec<f64>,
    ) -> PipelineSummary {
        let (steps, micro) = (steps.max(1) as f64, plan.batches.micro_batches as f64);
        // The first replica's stages (wherever the placement put them), per micro-batch; the
        // schedule simulated with them (forward and backward taken as halves: the measurements
        // do not split them) is the step the bubble is predicted from.
        let t = plan.topology;
        let half: Vec<f64> = (0..t.stages)
            .map(|s| compute_per_rank[t.rank_of(0, s)] / (steps * micro) / 2.0)
            .collect();
        let no_links = vec![0.0; t.stages - 1];
        let predicted_step = plan
            .schedule
            .timed(&half, &half, &no_links)
            .map_or(f64::NAN, |timing| timing.end);
        PipelineSummary {
            schedule: plan.schedule.kind,
            micro_batches: plan.batches.micro_batches,
            stage_layers: format!("{:?}", plan.split.ranges),
            bubble_fraction_per_rank: wait_per_rank.iter().map(|w| w / train_seconds).collect(),
            bubble_formula: plan.schedule.equal_stage_bubble(),
            predicted_bubble_fraction_per_rank: compute_per_rank
                .iter()
                .map(|c| 1.0 - c / (steps * predicted_step))
                .collect(),
            predicted_samples_per_second: plan.batches.global as f64 / predicted_step,
            compute_seconds_per_rank: compute_per_rank,
            pipeline_wait_seconds_per_rank: wait_per_rank,
            peak_activation_mb_per_rank: activation_mb,
        }
    }
}

fn format_name() -> String {
    FORMAT.into()
}

fn legacy_version() -> u32 {
    1
}

/// Checks `doc`'s format and version by name: the format must be ours (or absent: version 1) and
/// the version one this partrain reads.
pub fn check_version(doc: &serde_json::Value, path: &Path) -> Result<()> {
    let versions = crate::util::version::Versioned {
        format: FORMAT,
        oldest: 1,
        current: VERSION,
        unnamed: Some(1),
    };
    versions
        .check(doc)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// A status document (`running`, `failed`, ...) with the format and version.
pub fn status_doc(fields: serde_json::Value) -> serde_json::Value {
    let mut doc = serde_json::json!({"format": FORMAT, "version": VERSION});
    if let (Some(d), Some(f)) = (doc.as_object_mut(), fields.as_object()) {
        d.extend(f.clone());
    }
    doc
}

/// The `status` a `summary.json` gives (`running`, `failed`, `interrupted`, `completed`), read by
/// name: a run that has not completed holds a status document, not a whole summary.
pub fn read_status(path: &Path) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    doc.get("status")?.as_str().map(str::to_string)
}

pub fn read_summary(path: &Path) -> Result<Summary> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON (a torn or foreign file)", path.display()))?;
    check_version(&doc, path)?;
    serde_json::from_value(doc).with_context(|| format!("{}: not a partrain summary", path.display()))
}

/// Writes `summary` into the run folder `dir`, atomically.
pub fn write_summary(dir: &Path, summary: &Summary) -> Result<()> {
    crate::util::atomic::write(&dir.join(FILE), serde_json::to_string_pretty(summary)?.as_bytes())
}

fn one() -> usize {
    1
}

fn default_placement() -> crate::config::Placement {
    crate::config::Placement::PipelineInNode
}
