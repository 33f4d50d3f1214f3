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
