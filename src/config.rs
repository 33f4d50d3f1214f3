//! The YAML run configuration: schema, `--set key=value` overrides and validation.
//!
//! Loading goes file -> YAML tree -> typed `Config` (unknown keys rejected) -> full tree with every
//! default filled in -> overrides applied (a key must already exist in that full tree) -> typed
//! `Config` again -> `validate()`. Everything is checked before any data is read or any rank talks.

use crate::schedule::ScheduleKind;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;
use std::path::Path;

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
    pub preset: Preset,
    /// Dropout probability before the last linear layer (mnist_cnn); 0 disables it.
    pub dropout: f64,
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
    pub lr_decay_epochs: Vec<usize>,
    pub lr_decay_factor: f64,
    /// `sgd` (PyTorch's momentum SGD), `nesterov`, or `lars` (a per-layer trust ratio,
    /// `lars_trust x |w| / (|g| + weight_decay x |w|)`, on weights, not biases).
    pub optimizer: OptimizerKind,
    pub lars_trust: f64,
    /// L2 weight decay, on weights (not biases).
    pub weight_decay: f64,
    /// Test accuracy (percent) whose first reach fixes the time, steps, epochs and images to target.
    pub target_accuracy: Option<f64>,
    /// Also evaluate every N optimizer steps inside an epoch (its time counts, as in MLPerf).
    pub eval_every_steps: Option<usize>,
    /// End the run at the first evaluation that reaches `target_accuracy`.
    pub stop_at_target: bool,
    /// Measure the gradient noise scale every N steps (0 = never): one scalar all-reduce per
    /// measured step; needs several replicas or micro-batches.
    pub noise_scale_every: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    None,
    Linear,
    Sqrt,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduleKind {
    Constant,
    Cosine,
    Step,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Nesterov,
    Lars,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Bf16,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub mode: SyncMode,
    pub average_every: usize,
    /// dp with gradient averaging: all-reduce each finished block of layers' gradients on a
    /// communication thread while the backward of earlier blocks goes on.
    pub overlap: bool,
    /// Gradient averaging through MPI-3 node-shared memory: on one node the whole mean, across
    /// nodes the node sums (then one all-reduce per slice across nodes: two levels). `false`:
    /// one MPI_Allreduce of the flat gradient buffer.
    pub shared_memory: bool,
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
            preset: Preset::MnistCnn,
            dropout: 0.25,
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
            target_accuracy: None,
            eval_every_steps: None,
            stop_at_target: false,
            noise_scale_every: 1,
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
            shared_memory: true,
        }
    }
}

/// More threads than any node has cores: a typo, and libgomp would try to start them all (with
/// 100,000 the process overflowed its stack).
pub const MAX_THREADS_PER_RANK: usize = 4096;

/// Reads `path`, applies `overrides` (`key.path=value`) and validates the result.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config file {} cannot be read", path.display()))?;
    from_yaml_str(&text, overrides).with_context(|| format!("config file {}", path.display()))
}

pub fn from_yaml_str(text: &str, overrides: &[String]) -> Result<Config> {
    let tree: Value = serde_yaml::from_str(text).context("YAML syntax error")?;
    // Deserialising from the text (not the tree) keeps the field path in error messages.
    let cfg: Config = if tree.is_null() {
        Config::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let cfg = apply_overrides(cfg, overrides)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Applies `--set a.b=value` overrides. The key must name a field that exists in the schema.
pub fn apply_overrides(cfg: Config, overrides: &[String]) -> Result<Config> {
    if overrides.is_empty() {
        return Ok(cfg);
    }
    let mut tree = serde_yaml::to_value(&cfg)?;
    for item in overrides {
        let (key, raw) = item
            .split_once('=')
            .with_context(|| format!("--set {item}: expected key=value, e.g. train.epochs=3"))?;
        let value: Value = serde_yaml::from_str(raw)
            .with_context(|| format!("--set {key}: value `{raw}` is not valid YAML"))?;
        let mut node = &mut tree;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let map = node
                .as_mapping_mut()
                .with_context(|| format!("--set {key}: `{}` is not a section", parts[..i].join(".")))?;
            let known: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
            node = map.get_mut(*part).with_context(|| {
                format!(
                    "--set {key}: no such key `{part}`; known keys here: {}",
                    known.join(", ")
                )
            })?;
        }
        *node = value;
        // Checked one override at a time so the message names the key with the bad value.
        serde_yaml::from_value::<Config>(tree.clone()).map_err(|e| anyhow::anyhow!("--set {key}: {e}"))?;
    }
    serde_yaml::from_value(tree).map_err(|e| anyhow::anyhow!("--set: {e}"))
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.epochs == 0 {
            bail!("train.epochs: must be at least 1, got 0");
        }
        if t.batch_size == 0 {
            bail!("train.batch_size: must be at least 1, got 0");
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            bail!("train.lr: must be a positive number, got {}", t.lr);
        }
        if !(0.0..1.0).contains(&t.momentum) {
            bail!("train.momentum: must be in [0, 1), got {}", t.momentum);
        }
        if t.max_steps == Some(0) {
            bail!("train.max_steps: must be at least 1 (or null for full epochs), got 0");
        }
        if t.eval_batch_size == 0 {
            bail!("train.eval_batch_size: must be at least 1, got 0");
        }
        if t.log_every == 0 {
            bail!("train.log_every: must be at least 1, got 0");
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            bail!("model.dropout: must be in [0, 1), got {}", self.model.dropout);
        }
        if self.data.train_limit == Some(0) {
            bail!("data.train_limit: must be at least 1 (or null for all), got 0");
        }
        if self.data.test_limit == Some(0) {
            bail!("data.test_limit: must be at least 1 (or null for all), got 0");
        }
        if self.sync.average_every == 0 {
            bail!("sync.average_every: must be at least 1, got 0");
        }
        let want = self.model.preset.native_dataset().image_shape();
        let have = self.data.dataset.image_shape();
        if want != have {
            bail!(
                "model.preset: {} expects {:?} images but data.dataset {} has {:?}",
                self.model.preset.as_str(),
                want,
                self.data.dataset.as_str(),
                have
            );
        }
        self.validate_parallel()?;
        if self.checkpoint.every_steps == Some(0) {
            bail!("checkpoint.every_steps: must be at least 1 (or null), got 0");
        }
        if self.train.precision == Precision::Bf16 && !crate::util::cpu_has_bf16() {
            bail!(
                "train.precision: bf16 needs a CPU with AVX512-BF16 or AMX-BF16 instructions and this one has \
                 neither (emulated bf16 would be slower than fp32); use fp32"
            );
        }
        self.validate_pipeline()?;
        self.validate_optimizer()?;
        self.validate_schedule()?;
        self.validate_target()?;
        if self.run.name.is_empty() || self.run.name.contains('/') {
            bail!(
                "run.name: must be a non-empty folder name without `/`, got `{}`",
                self.run.name
            );
        }
        Ok(())
    }

    fn validate_parallel(&self) -> Result<()> {
        let p = &self.parallel;
        for (key, v) in [
            ("timeout_s", p.timeout_s),
            ("warn_s", p.warn_s),
            ("eval_timeout_s", p.eval_timeout_s),
            ("checkpoint_timeout_s", p.checkpoint_timeout_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("parallel.{key}: must be a positive number of seconds, got {v}");
            }
        }
        if self.parallel.threads_per_rank > MAX_THREADS_PER_RANK {
            bail!(
                "parallel.threads_per_rank: {} is not a plausible thread count (at most {MAX_THREADS_PER_RANK}; \
                 0 = OMP_NUM_THREADS or all cores)",
                self.parallel.threads_per_rank
            );
        }
        Ok(())
    }

    /// The optimizer's own keys, each refused where it does not apply.
    fn validate_optimizer(&self) -> Result<()> {
        let (t, d) = (&self.train, TrainConfig::default());
        if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            bail!(
                "train.weight_decay: must be a number >= 0, got {}",
                t.weight_decay
            );
        }
        if t.optimizer == OptimizerKind::Nesterov && t.momentum == 0.0 {
            bail!("train.optimizer: nesterov needs momentum > 0 (train.momentum is 0)");
        }
        if t.optimizer != OptimizerKind::Lars && t.lars_trust != d.lars_trust {
            bail!(
                "train.lars_trust: applies to train.optimizer: lars, and the optimizer is {:?}",
                t.optimizer
            );
        }
        if !(t.lars_trust.is_finite() && t.lars_trust > 0.0) {
            bail!(
                "train.lars_trust: must be a positive number, got {}",
                t.lars_trust
            );
        }
        if t.lr_reference_batch == 0 {
            bail!("train.lr_reference_batch: must be at least 1, got 0");
        }
        if t.lr_scaling == LrScaling::None && t.lr_reference_batch != d.lr_reference_batch {
            bail!("train.lr_reference_batch: applies to train.lr_scaling linear or sqrt, and lr_scaling is none");
        }
        Ok(())
    }

    /// Warmup and decay, in epochs: each must fall inside the run.
    fn validate_schedule(&self) -> Result<()> {
        let (t, d) = (&self.train, TrainConfig::default());
        let epochs = t.epochs as f64;
        if !(t.warmup_epochs.is_finite() && t.warmup_epochs >= 0.0) {
            bail!(
                "train.warmup_epochs: must be a number of epochs >= 0, got {}",
                t.warmup_epochs
            );
        }
        if t.warmup_epochs > epochs {
            bail!(
                "train.warmup_epochs: {} is longer than the run (train.epochs = {})",
                t.warmup_epochs,
                t.epochs
            );
        }
        if t.warmup_epochs > 0.0 && t.lr_scaling == LrScaling::None {
            bail!(
                "train.warmup_epochs: the warmup ramps from train.lr to the scaled rate, and train.lr_scaling is none \
                 (nothing to ramp to): set lr_scaling to linear or sqrt"
            );
        }
        if t.lr_schedule == LrScheduleKind::Cosine && t.warmup_epochs >= epochs {
            bail!(
                "train.warmup_epochs: {} leaves no epoch of the {}-epoch run for the cosine decay",
                t.warmup_epochs,
                t.epochs
            );
        }
        if t.lr_schedule != LrScheduleKind::Step {
            if !t.lr_decay_epochs.is_empty() {
                bail!(
                    "train.lr_decay_epochs: applies to train.lr_schedule: step, and the schedule is {:?}",
                    t.lr_schedule
                );
            }
            if t.lr_decay_factor != d.lr_decay_factor {
                bail!(
                    "train.lr_decay_factor: applies to train.lr_schedule: step, and the schedule is {:?}",
                    t.lr_schedule
                );
            }
            return Ok(());
        }
        if !(t.lr_decay_factor > 0.0 && t.lr_decay_factor < 1.0) {
            bail!(
                "train.lr_decay_factor: must be in (0, 1), got {}",
                t.lr_decay_factor
            );
        }
        if t.lr_decay_epochs.is_empty() {
            bail!("train.lr_decay_epochs: lr_schedule step needs at least one epoch to decay after, e.g. [6, 8]");
        }
        let mut prev = 0.0f64.max(t.warmup_epochs);
        for &e in &t.lr_decay_epochs {
            if e >= t.epochs {
                bail!(
                    "train.lr_decay_epochs: {e} is past the end of the run (decays happen after an epoch, and the \
                     run's last epoch is {})",
                    t.epochs
                );
            }
            if (e as f64) <= prev {
                bail!(
                    "train.lr_decay_epochs: {:?} must increase and start after the warmup ({} epochs)",
                    t.lr_decay_epochs,
                    t.warmup_epochs
                );
            }
            prev = e as f64;
        }
        Ok(())
    }

    /// Time to accuracy: the target, evaluation inside epochs, stopping there.
    fn validate_target(&self) -> Result<()> {
        let t = &self.train;
        if let Some(a) = t.target_accuracy {
            if !(a > 0.0 && a <= 100.0) {
                bail!("train.target_accuracy: a test accuracy in percent, in (0, 100], got {a}");
            }
        }
        if t.stop_at_target && t.target_accuracy.is_none() {
            bail!("train.stop_at_target: stops at train.target_accuracy, which is not set");
        }
        if t.eval_every_steps == Some(0) {
            bail!("train.eval_every_steps: must be at least 1 (or null: evaluate at epoch ends only), got 0");
        }
        Ok(())
    }

    fn validate_pipeline(&self) -> Result<()> {
        // Checks against the net's layers (stages, boundaries in range) are the plan's: it builds the net.
        let p = &self.parallel;
        if p.stages == 0 {
            bail!("parallel.stages: must be at least 1, got 0");
        }
        if p.micro_batches == 0 {
            bail!("parallel.micro_batches: must be at least 1, got 0");
        }
        match &p.stage_boundaries {
            StageBoundaries::Auto | StageBoundaries::Macs | StageBoundaries::Measured => {}
            StageBoundaries::List(b) => {
                if b.len() != p.stages - 1 {
                    bail!(
                        "parallel.stage_boundaries: {} stages need {} boundaries (the first layer of stages 1..), got {:?}",
                        p.stages,
                        p.stages - 1,
                        b
                    );
                }
                let mut prev = 0;
                for &x in b {
                    if x == prev {
                        bail!("parallel.stage_boundaries: {b:?} leaves a stage empty (boundary {x} repeats or is 0)");
                    }
                    if x < prev {
                        bail!("parallel.stage_boundaries: {b:?} is not increasing");
                    }
                    prev = x;
                }
            }
        }
        Ok(())
    }

    /// The hash a checkpoint records: the config less what may change between a run and its
    /// resumption (how long to train, the MPI deadline, checkpoint frequency, tracing).
    pub fn resume_hash(&self) -> u64 {
        let mut c = self.clone();
        // A cosine decay ends with train.epochs: its rates depend on it.
        if c.train.lr_schedule != LrScheduleKind::Cosine {
            c.train.epochs = 0;
        }
        c.train.max_steps = None;
        c.checkpoint = CheckpointConfig::default();
        c.run.trace = false;
        c.hash()
    }

    /// A stable hash of the resolved config, compared across ranks at start-up.
    /// `data.dir` is left out: nodes may mount the data at different paths; the data's content
    /// is compared separately (`Dataset::fingerprint`).
    pub fn hash(&self) -> u64 {
        let mut c = self.clone();
        c.data.dir = None;
        // Deadlines may differ between ranks and between a run and its resumption.
        c.parallel.timeout_s = 0.0;
        c.parallel.warn_s = 0.0;
        c.parallel.eval_timeout_s = 0.0;
        c.parallel.checkpoint_timeout_s = 0.0;
        let text = serde_yaml::to_string(&c).expect("config serialises");
        crate::util::fnv1a(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", from_yaml_str(text, &sets).unwrap_err())
    }

    #[test]
    fn defaults_are_seed_001() {
        let c = from_yaml_str("", &[]).unwrap();
        assert_eq!(c.train.batch_size, 64);
        assert_eq!(c.train.lr, 0.01);
        assert_eq!(c.train.momentum, 0.9);
        assert_eq!(c.train.epochs, 10);
        assert_eq!(c.data.dir(), "data/mnist");
    }

    #[test]
    fn overrides_apply_and_parse_types() {
        let c = from_yaml_str(
            "train: {epochs: 10}\n",
            &[
                "train.epochs=3".into(),
                "data.train_limit=500".into(),
                "model.dropout=0".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.data.train_limit, Some(500));
        assert_eq!(c.model.dropout, 0.0);
    }

    #[test]
    fn unknown_key_is_named() {
        assert!(err("train: {epoch: 3}\n", &[]).contains("epoch"));
        assert!(err("", &["train.epoch=3"]).contains("no such key `epoch`"));
        assert!(err("", &["trian.epochs=3"]).contains("trian"));
    }

    #[test]
    fn wrong_type_names_field() {
        let e = err("train:\n  epochs: ten\n", &[]);
        assert!(e.contains("train.epochs"), "{e}");
    }

    #[test]
    fn bad_values_rejected() {
        assert!(err("train: {epochs: 0}\n", &[]).contains("train.epochs"));
        assert!(err("train: {batch_size: 0}\n", &[]).contains("train.batch_size"));
        assert!(err("train: {lr: -0.1}\n", &[]).contains("train.lr"));
        assert!(err("train: {lr: 0}\n", &[]).contains("train.lr"));
        assert!(err("", &["train.epochs=-1"]).contains("train.epochs"));
        assert!(err("data: {dataset: imagenet}\n", &[]).contains("imagenet"));
        assert!(err("model: {preset: resnet}\n", &[]).contains("resnet"));
        assert!(err("model: {preset: cifar_cnn}\n", &[]).contains("model.preset"));
    }

    #[test]
    fn pipeline_settings_validated() {
        assert!(err("parallel: {stages: 3, stage_boundaries: [3, 3]}\n", &[]).contains("empty"));
        assert!(err("parallel: {stages: 3, stage_boundaries: [7, 3]}\n", &[]).contains("not increasing"));
        assert!(err("parallel: {stages: 2, stage_boundaries: [0]}\n", &[]).contains("empty"));
        assert!(err("parallel: {stages: 3, stage_boundaries: [4]}\n", &[]).contains("need 2"));
        assert!(err("parallel: {schedule: pipedream}\n", &[]).contains("parallel.schedule"));
        assert!(err("parallel: {stage_boundaries: balanced}\n", &[]).contains("auto"));
        let c = from_yaml_str("parallel: {stages: 3, stage_boundaries: [3, 7]}\n", &[]).unwrap();
        assert_eq!(c.parallel.stage_boundaries, StageBoundaries::List(vec![3, 7]));
    }

    #[test]
    fn yaml_syntax_error() {
        assert!(err("train: {epochs: 3\n", &[]).contains("YAML syntax"));
    }

    #[test]
    fn hash_changes_with_config() {
        let a = from_yaml_str("", &[]).unwrap();
        let b = from_yaml_str("", &["train.lr=0.02".into()]).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), from_yaml_str("", &[]).unwrap().hash());
    }
}
