//! This machine as `lscpu` names it: every results table records it with its figures.

use serde::{Deserialize, Serialize};

/// The CPU as `lscpu` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    pub model_name: String,
    pub family: String,
    pub model: String,
}

impl Cpu {
    /// From `/proc/cpuinfo` (what `lscpu` reads).
    pub fn this_machine() -> Cpu {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        Cpu {
            model_name: field("model name"),
            family: field("cpu family"),
            model: field("model"),
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (family {}, model {})",
            self.model_name, self.family, self.model
        )
    }
}
