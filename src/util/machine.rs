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

/// Ranks of `threads` threads each sharing a machine (or node) of `cores` cores: the one rule for
/// when they oversubscribe it, asked by the plan's warnings, the report and the peak of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    pub ranks: usize,
    pub threads: usize,
    pub cores: usize,
}

impl Occupancy {
    /// More ranks than cores: ranks take turns on the cores.
    pub fn ranks_oversubscribe(&self) -> bool {
        self.ranks > self.cores
    }

    /// More threads in all than cores.
    pub fn oversubscribed(&self) -> bool {
        self.ranks * self.threads > self.cores
    }

    /// Ranks that have cores of their own for all their threads (the rest share them).
    pub fn ranks_with_cores(&self) -> usize {
        self.ranks.min((self.cores / self.threads.max(1)).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy() {
        let o = |ranks, threads, cores| Occupancy {
            ranks,
            threads,
            cores,
        };
        assert!(!o(2, 1, 2).oversubscribed() && o(2, 2, 2).oversubscribed());
        assert!(o(4, 1, 2).ranks_oversubscribe() && !o(2, 2, 2).ranks_oversubscribe());
        assert_eq!(o(4, 1, 2).ranks_with_cores(), 2);
        assert_eq!(o(1, 4, 2).ranks_with_cores(), 1);
        assert_eq!(o(2, 1, 64).ranks_with_cores(), 2);
    }
}
