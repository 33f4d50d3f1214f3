//! The config's schema: every section and key with its default (seed 001's settings), the enums
//! by their serde spelling (the one spelling configs, summaries and the command line share).

use super::train_kinds::{BatchNormRunning, LrScaling, LrScheduleKind, OptimizerKind, Precision, RecipeRule};
use crate::schedule::ScheduleKind;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub run: RunConfig,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub parallel: ParallelConfig,
    pub sync: SyncConfig,
    pub checkpoint: CheckpointConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write `checkpoint.safetensors` every N epochs (0 = never).
    pub every_epochs: usize,
    /// Also every N optimizer steps (`null` = only at epoch ends).
    pub every_steps: Option<usize>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_epochs: 1,
            every_steps: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run folder name under `results/runs/` (unless `--out` is given).
    pub name: String,
    /// Seeds weight initialisation, the epoch permutations and dropout.
    pub seed: u64,
    /// Write `trace.json` (a per-rank timeline, Chrome trace-event format) into the run folder.
    pub trace: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    Mnist,
    FashionMnist,
    Cifar10,
}

impl DatasetName {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Mnist => "mnist",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Cifar10 => "cifar10",
        }
    }
    /// Training and test images of the full data set.
    pub fn split_sizes(self) -> (usize, usize) {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => (60_000, 10_000),
            DatasetName::Cifar10 => (50_000, 10_000),
        }
    }
    /// Image shape (channels, height, width).
    pub fn image_shape(self) -> [i64; 3] {
        match self {
            DatasetName::Mnist | DatasetName::FashionMnist => [1, 28, 28],
            DatasetName::Cifar10 => [3, 32, 32],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub dataset: DatasetName,
    /// Folder with the data set's files; `null` means `data/<dataset>`.
    pub dir: Option<String>,
    /// Use only the first N training images (fast tests); `null` = all.
    pub train_limit: Option<usize>,
    /// Use only the first N test images; `null` = all.
    pub test_limit: Option<usize>,
}

impl DataConfig {
    /// Training and test images a run uses (the limits applied to the full sets).
    pub fn sizes(&self) -> (usize, usize) {
        let (train, test) = self.dataset.split_sizes();
        (
            self.train_limit.map_or(train, |l| l.min(train)),
            self.test_limit.map_or(test, |l| l.min(test)),
        )
    }

    pub fn dir(&self) -> String {
        self.dir
            .clone()
            .unwrap_or_else(|| format!("data/{}", self.dataset.as_str()))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    MnistCnn,
    CifarCnn,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::MnistCnn => "mnist_cnn",
            Preset::CifarCnn => "cifar_cnn",
        }
    }
    /// The data set the preset's layer sizes are made for (its input is that set's image shape).
    pub fn native_dataset(self) -> DatasetName {
        match self {
            Preset::MnistCnn => DatasetName::Mnist,
            Preset::CifarCnn => DatasetName::Cifar10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A seed net by name; with neither this nor `layers`, mnist_cnn.
    pub preset: Option<Preset>,
    /// The preset's dropout probability (mnist_cnn's before its last linear layer); 0 disables it.
    /// A net written in `layers` gives each dropout layer its own `p`.
    pub dropout: f64,
    /// A net of one's own: an ordered list of `kind: {arguments}` (docs/nets.md), read by
    /// `crate::netspec::parse_layers` against the data's image shape. Left out of the resolved
    /// config when absent, so the config hashes of preset runs did not change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<serde_yaml::Value>,
    /// How batch norm's running statistics move (docs/nets.md): `step_mean` (once per optimiser
    /// step, by the mean over micro-batches and replicas) or `per_forward` (PyTorch's rule: once
    /// per micro-batch forward, in the order serial gradient accumulation would run them). Left
    /// out of the resolved config at its default, so earlier config hashes did not change.
    #[serde(skip_serializing_if = "BatchNormRunning::is_default")]
    pub batchnorm_running: BatchNormRunning,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BatchScope {
    /// `batch_size` images per rank (the seeds' convention; global batch grows with ranks).
    PerRank,
    /// `batch_size` images per step in total, split across ranks (strong scaling).
    Global,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub batch_scope: BatchScope,
    pub lr: f64,
    pub momentum: f64,
    /// Stop after this many optimizer steps in total (equivalence tests); `null` = full epochs.
    pub max_steps: Option<usize>,
    /// Images per forward pass during evaluation (memory only; does not change results).
    pub eval_batch_size: usize,
    /// Log line every N steps when stdout is not a terminal.
    pub log_every: usize,
    /// `fp32`, or `bf16` mixed precision (fp32 master weights and optimizer state).
    pub precision: Precision,
    /// Channels-last (NHWC) activations and conv weights: faster oneDNN convolutions.
    pub channels_last: bool,
    /// The learning rate used is `lr x f(global batch / lr_reference_batch)`: `none` (f = 1),
    /// `linear` (Goyal et al.) or `sqrt`.
    pub lr_scaling: LrScaling,
    pub lr_reference_batch: usize,
    /// Epochs (fractions allowed) over which the rate ramps linearly from `lr` to the scaled rate.
    pub warmup_epochs: f64,
    /// After the warmup: `constant`, `cosine` (to 0 at the end of `epochs`) or `step`
    /// (x `lr_decay_factor` after each epoch in `lr_decay_epochs`).
    pub lr_schedule: LrScheduleKind,
    /// Where the cosine reaches 0, in epochs (fractions allowed; `null`: at `epochs`): a
    /// one-cycle budget shorter than the run's cap.
    pub decay_epochs: Option<f64>,
    pub lr_decay_epochs: Vec<usize>,
    pub lr_decay_factor: f64,
    /// `sgd` (PyTorch's momentum SGD), `nesterov`, `lars` (a per-layer trust ratio,
    /// `lars_trust x |w| / (|g| + weight_decay x |w|)`, on weights, not biases), `adam`, `adamw`
    /// (decoupled weight decay) or `lamb` (Adam's direction x a per-layer trust ratio).
    pub optimizer: OptimizerKind,
    pub lars_trust: f64,
    /// Weight decay, on weights (not biases): L2 in the direction for sgd, nesterov, lars and
    /// adam; decoupled for adamw and lamb.
    pub weight_decay: f64,
    /// The Adam family's moment decay rates (beta1, beta2).
    pub betas: [f64; 2],
    /// The Adam family's denominator term.
    pub eps: f64,
    /// The warmup starts at this fraction of the scaled rate (PyTorch's `LinearLR` start_factor;
    /// one-cycle's 0.1); `null`: at `lr`.
    pub warmup_start_factor: Option<f64>,
    /// Test accuracy (percent) whose first reach fixes the time, steps, epochs and images to target.
    pub target_accuracy: Option<f64>,
    /// Also evaluate every N optimizer steps inside an epoch (its time counts, as in MLPerf).
    pub eval_every_steps: Option<usize>,
    /// ... from this global step on (evaluations that cannot reach the target cost time: the
    /// fastest recipe reaches 99 % near step 450 and skips the 8 before step 350).
    pub eval_after_steps: usize,
    /// End the run at the first evaluation that reaches `target_accuracy`.
    pub stop_at_target: bool,
    /// Measure the gradient noise scale every N steps (0 = never): one scalar all-reduce across
    /// the world per measured step; needs several replicas or micro-batches. Every step it cost
    /// 3.7 % of dp 2 x 1's images/s and 6 % of hybrid 2 x 1's here (bench/compare.sh with
    /// OLD_SET=train.noise_scale_every=0, 2026-12-03): every 10th step is within the step's noise.
    pub noise_scale_every: usize,
    /// `fixed`: the keys above as written; `by_global_batch`: the plan replaces the optimizer
    /// and schedule keys with the recipe measured best at the run's global batch (`plan::recipe`).
    pub recipe: RecipeRule,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// libtorch intra-op (OpenMP) threads per rank; 0 = keep libtorch's default (OMP_NUM_THREADS,
    /// else all cores).
    pub threads_per_rank: usize,
    /// Pipeline stages per replica (`partrain hybrid`); serial and dp run 1.
    pub stages: usize,
    /// Micro-batches each replica's batch is cut into: a pipeline's units of work, and on one
    /// stage gradient accumulation (the same step, computed in pieces).
    pub micro_batches: usize,
    /// The order of a step's forward and backward micro-batch actions: `gpipe` or `1f1b`.
    pub schedule: ScheduleKind,
    /// Where the pipeline's stages are cut (see `StageBoundaries`).
    pub stage_boundaries: StageBoundaries,
    /// Seconds any MPI wait may last in training before the job is aborted (a lost or stalled
    /// rank); a rank outside MPI that long is reported as stalled.
    pub timeout_s: f64,
    /// Seconds after which a wait is reported once as slow (with the ranks not yet arrived).
    pub warn_s: f64,
    /// The same budget during evaluation, and while a checkpoint is gathered and written: a long
    /// evaluation or a slow file system is not a hang.
    pub eval_timeout_s: f64,
    pub checkpoint_timeout_s: f64,
    /// Which ranks are neighbours (and so share a node): a pipeline's stages, or a stage's
    /// replicas. `auto` keeps the larger traffic inside a node.
    pub placement: Placement,
}

/// How the `stages x replicas` grid is laid over the ranks (and so over the nodes, which mpirun
/// and srun fill with consecutive ranks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// The one that keeps the larger per-step traffic inside a node (resolved by the plan).
    Auto,
    /// `rank = replica * stages + stage`: a pipeline's stages are neighbours, so activations
    /// travel through shared memory and gradient averaging crosses nodes.
    PipelineInNode,
    /// `rank = stage * replicas + replica`: a stage's replicas are neighbours, so gradient
    /// averaging stays in the node and activations cross nodes.
    ReplicasInNode,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Auto => "auto",
            Placement::PipelineInNode => "pipeline_in_node",
            Placement::ReplicasInNode => "replicas_in_node",
        }
    }
}

/// Where a pipeline's stages are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageBoundaries {
    /// Measured forward+backward time per layer, falling back to multiply-adds when a
    /// measurement is unusable.
    Auto,
    /// Multiply-adds per layer (element-wise layers count one operation per output element).
    Macs,
    /// Measured forward+backward time per layer; an unusable measurement is an error.
    Measured,
    /// The first layer of stages 1.., e.g. `[4]`.
    List(Vec<usize>),
}

const BOUNDARIES_EXPECTED: &str = "`auto`, `macs`, `measured` or a list of layer indices such as [4]";

impl Serialize for StageBoundaries {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            StageBoundaries::Auto => s.serialize_str("auto"),
            StageBoundaries::Macs => s.serialize_str("macs"),
            StageBoundaries::Measured => s.serialize_str("measured"),
            StageBoundaries::List(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for StageBoundaries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(name) => match name.as_str() {
                "auto" => Ok(StageBoundaries::Auto),
                "macs" => Ok(StageBoundaries::Macs),
                "measured" => Ok(StageBoundaries::Measured),
                other => Err(D::Error::custom(format!(
                    "unknown stage boundaries `{other}`: expected {BOUNDARIES_EXPECTED}"
                ))),
            },
            list @ Value::Sequence(_) => serde_yaml::from_value(list)
                .map(StageBoundaries::List)
                .map_err(|e| D::Error::custom(format!("{e}: expected {BOUNDARIES_EXPECTED}"))),
            other => Err(D::Error::custom(format!(
                "got {other:?}: expected {BOUNDARIES_EXPECTED}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// All-reduce (mean) of gradients every step: replicas take identical steps.
    Gradients,
    /// Local steps; weights averaged every `average_every` steps (seed 004's aggregation).
    Weights,
}

/// How averaged gradients travel (`sync.compress`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compress {
    /// f32, one MPI_Allreduce.
    #[default]
    None,
    /// bf16 both ways (half the bytes), summed in f32: a reduce-scatter by all-to-all, then an
    /// all-gather of each rank's mean chunk.
    Bf16,
    /// PowerSGD: each weight's gradient as two rank-`powersgd_rank` factors, error feedback,
    /// warm start (`train::powersgd`).
    #[serde(rename = "powersgd")]
    PowerSgd,
}

impl Compress {
    pub fn name(self) -> &'static str {
        match self {
            Compress::None => "none",
            Compress::Bf16 => "bf16",
            Compress::PowerSgd => "powersgd",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub mode: SyncMode,
    pub average_every: usize,
    /// Gradient averaging overlapped with backward: each bucket of parameters is all-reduced on a
    /// communication thread as soon as backward has finished it (every layout: micro-batches,
    /// pipeline stages).
    pub overlap: bool,
    /// With `overlap`: a bucket closes at this many MB of gradients (0: every block alone).
    pub bucket_mb: f64,
    /// Gradient averaging through MPI-3 node-shared memory: on one node the whole mean, across
    /// nodes the node sums (then one all-reduce per slice across nodes: two levels). `false`:
    /// one MPI_Allreduce of the flat gradient buffer.
    pub shared_memory: bool,
    /// Gradient compression across the replicas: `none` or `bf16` (gradient averaging by MPI).
    pub compress: Compress,
    /// PowerSGD's rank (the factors' columns).
    pub powersgd_rank: usize,
    /// PowerSGD: steps of plain averaging before compression starts.
    pub compress_after_steps: usize,
    /// 0: each step applies its own mean gradient; 1: the previous step's (one-step-stale), so the
    /// all-reduce runs behind the next step's compute.
    pub delay: usize,
    /// Post-local SGD (`sync.mode: weights`): average gradients every step for this many steps,
    /// then take local steps with the weights averaged every `average_every`.
    pub local_sgd_after: Option<usize>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "run".into(),
            seed: 42,
            trace: false,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: DatasetName::Mnist,
            dir: None,
            train_limit: None,
            test_limit: None,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            preset: None,
            layers: None,
            dropout: 0.25,
            batchnorm_running: BatchNormRunning::StepMean,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            batch_scope: BatchScope::PerRank,
            lr: 0.01,
            momentum: 0.9,
            max_steps: None,
            eval_batch_size: 100,
            log_every: 100,
            precision: Precision::Fp32,
            channels_last: false,
            lr_scaling: LrScaling::None,
            lr_reference_batch: 64,
            warmup_epochs: 0.0,
            lr_schedule: LrScheduleKind::Constant,
            lr_decay_epochs: Vec::new(),
            lr_decay_factor: 0.1,
            optimizer: OptimizerKind::Sgd,
            lars_trust: 0.02,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            warmup_start_factor: None,
            target_accuracy: None,
            eval_every_steps: None,
            eval_after_steps: 0,
            decay_epochs: None,
            recipe: RecipeRule::Fixed,
            stop_at_target: false,
            noise_scale_every: 10,
        }
    }
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            threads_per_rank: 1,
            stages: 1,
            micro_batches: 1,
            schedule: ScheduleKind::OneFOneB,
            stage_boundaries: StageBoundaries::Auto,
            timeout_s: 300.0,
            warn_s: 60.0,
            eval_timeout_s: 900.0,
            checkpoint_timeout_s: 900.0,
            placement: Placement::Auto,
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            mode: SyncMode::Gradients,
            average_every: 1,
            overlap: false,
            bucket_mb: 1.0,
            shared_memory: true,
            compress: Compress::None,
            powersgd_rank: 1,
            compress_after_steps: 10,
            delay: 0,
            local_sgd_after: None,
        }
    }
}
