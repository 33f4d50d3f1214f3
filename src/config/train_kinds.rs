//! The kinds a `train` section chooses among: rate scaling, schedule, optimizer, precision.

use serde::{Deserialize, Serialize};

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
    Adam,
    Adamw,
    Lamb,
}

impl OptimizerKind {
    /// The Adam family: per-parameter rates from two moment estimates (no momentum buffer).
    pub fn is_adaptive(self) -> bool {
        matches!(
            self,
            OptimizerKind::Adam | OptimizerKind::Adamw | OptimizerKind::Lamb
        )
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    Bf16,
}

impl Precision {
    /// The config's spelling (`fp32`, `bf16`), also the peak file's and plan.csv's.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Where a run's optimizer and schedule come from: `fixed` (the config's own `train` keys, the
/// seeds' fixed rate whatever the batch) or `by_global_batch` (`plan::recipe`'s rule: the recipe
/// the converge tables measured best at the run's global batch).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecipeRule {
    #[default]
    Fixed,
    ByGlobalBatch,
}

/// `model.batchnorm_running`: when batch norm's running statistics move (docs/nets.md).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormRunning {
    #[default]
    StepMean,
    PerForward,
}

impl BatchNormRunning {
    pub(super) fn is_default(&self) -> bool {
        *self == BatchNormRunning::StepMean
    }
}
