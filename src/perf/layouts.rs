//! The layouts `plan` weighs: ranks per node x threads filling a node's cores; dp, and hybrid with
//! 2-4 stages (split by calibrated time), 1-8 micro-batches, both schedules and both placements;
//! each at the global batch its scope gives. A layout whose global batch exceeds the training set
//! (so each rank's shard cannot fill its share of a batch) is refused, with the largest useful
//! number of replicas.

use super::calibration::Calibration;
use super::predict::Layout;
use crate::config::SyncConfig;
use crate::plan::averaging::{self, GroupSpread};
use crate::plan::split::{StageSplit, CALIBRATED};
use crate::schedule::ScheduleKind;

/// How a layout's global batch is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The config's batch size is the global batch, split over the replicas.
    Strong,
    /// The config's batch size per replica (the seeds' convention).
    Weak,
    /// Any micro-batch of 8-256 images x 1-32 micro-batches per replica (accumulation on one
    /// stage, pipeline units on several): what time to a target accuracy chooses from.
    Target,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Strong => "strong",
            Scope::Weak => "weak",
            Scope::Target => "target",
        }
    }
}

/// Micro-batch sizes and counts the target scope tries.
const TARGET_MICRO_BATCHES: [usize; 6] = [8, 16, 32, 64, 128, 256];
const ACCUMULATION: [usize; 6] = [1, 2, 4, 8, 16, 32];
const PIPELINE_MICRO: [usize; 4] = [1, 2, 4, 8];

/// A batch refused for a node count: the smallest such layout, and the largest useful replica count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub nodes: usize,
    pub replicas: usize,
    pub per_replica: usize,
    pub global: usize,
    pub train_images: usize,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} node(s): {} replicas x {} images = a global batch of {} exceeds the {} training images \
             (each rank's shard of {} images cannot fill its {}): at most {} replicas of {} are useful",
            self.nodes,
            self.replicas,
            self.per_replica,
            self.global,
            self.train_images,
            self.train_images / self.replicas,
            self.per_replica,
            self.train_images / self.per_replica.max(1),
            self.per_replica
        )
    }
}

/// (micro-batch, micro-batches per replica) choices for `replicas` replicas of `stages` stages.
fn batchings(scope: Scope, batch_size: usize, replicas: usize, stages: usize) -> Vec<(usize, usize)> {
    let per_replica = match scope {
        Scope::Strong if batch_size.is_multiple_of(replicas) => batch_size / replicas,
        Scope::Strong => return Vec::new(),
        Scope::Weak => batch_size,
        Scope::Target => {
            let counts: &[usize] = if stages == 1 {
                &ACCUMULATION
            } else {
                &PIPELINE_MICRO
            };
            return TARGET_MICRO_BATCHES
                .iter()
                .flat_map(|&b| counts.iter().map(move |&m| (b, m)))
                .collect();
        }
    };
    let counts: &[usize] = if stages == 1 { &[1] } else { &PIPELINE_MICRO };
    counts
        .iter()
        .filter(|&&m| per_replica.is_multiple_of(m) && per_replica >= m)
        .map(|&m| (per_replica / m, m))
        .collect()
}

/// Every layout of `nodes` nodes of `cores` cores in `scope` whose global batch fits
/// `train_images`, and the refused batches (one per per-replica batch, the fewest replicas).
pub fn layouts(
    batch_size: usize,
    cal: &Calibration,
    (nodes, cores): (usize, usize),
    scope: Scope,
    train_images: usize,
) -> (Vec<Layout>, Vec<Refusal>) {
    let (mut out, mut refused) = (Vec::new(), Vec::<Refusal>::new());
    let n_layers = cal.layer_names.len();
    for per_node in (0..=cores.ilog2())
        .map(|k| 1usize << k)
        .filter(|p| cores.is_multiple_of(*p))
    {
        let ranks = nodes * per_node;
        for stages in [1usize, 2, 3, 4]
            .into_iter()
            .filter(|s| ranks.is_multiple_of(*s) && *s <= n_layers)
        {
            let replicas = ranks / stages;
            for (micro, m) in batchings(scope, batch_size, replicas, stages) {
                let (per_replica, global) = (micro * m, micro * m * replicas);
                if global > train_images {
                    let r = Refusal {
                        nodes,
                        replicas,
                        per_replica,
                        global,
                        train_images,
                    };
                    match refused.iter_mut().find(|x| x.per_replica == per_replica) {
                        Some(x) if x.replicas > replicas => *x = r,
                        Some(_) => {}
                        None => refused.push(r),
                    }
                    continue;
                }
                let grid = Grid {
                    nodes,
                    per_node,
                    threads: cores / per_node,
                    cores,
                    stages,
                    replicas,
                };
                out.extend(grid.layouts(cal, micro, m));
            }
        }
    }
    (out, refused)
}

/// One (nodes, ranks per node, stages) choice, laid out every way.
struct Grid {
    nodes: usize,
    per_node: usize,
    threads: usize,
    cores: usize,
    stages: usize,
    replicas: usize,
}

impl Grid {
    /// Both schedules and both placements of a pipeline (one of each for one stage), cut by
    /// calibrated time at micro-batches of `micro` images, `m` of them per replica and step.
    fn layouts(&self, cal: &Calibration, micro: usize, m: usize) -> Vec<Layout> {
        let n_layers = cal.layer_names.len();
        let costs: Vec<f64> = (0..n_layers)
            .map(|i| {
                let (f, b, _) = cal.stage_seconds(i..i + 1, self.threads, micro.max(1));
                f + b
            })
            .collect();
        let boundaries = StageSplit::balanced(&costs, self.stages, CALIBRATED).boundaries;
        let schedules: &[ScheduleKind] = match self.stages {
            1 => &[ScheduleKind::OneFOneB],
            _ => &[ScheduleKind::GPipe, ScheduleKind::OneFOneB],
        };
        let placements: &[bool] = if self.stages == 1 { &[true] } else { &[true, false] };
        let mut out = Vec::new();
        for &schedule in schedules {
            for &pipeline_in_node in placements {
                let group_per_node = if pipeline_in_node {
                    (self.per_node / self.stages).max(1)
                } else {
                    self.per_node.min(self.replicas)
                };
                let spread = GroupSpread {
                    replicas: self.replicas,
                    nodes: self.replicas.div_ceil(group_per_node),
                    per_node: self
                        .replicas
                        .is_multiple_of(group_per_node)
                        .then_some(group_per_node),
                };
                out.push(Layout {
                    strategy: if self.stages == 1 { "dp" } else { "hybrid" }.into(),
                    nodes: self.nodes,
                    ranks_per_node: self.per_node,
                    ranks_per_machine: self.per_node,
                    cores_per_machine: self.cores,
                    threads: self.threads,
                    stages: self.stages,
                    micro_batches: m,
                    schedule,
                    global_batch: micro * m * self.replicas,
                    boundaries: boundaries.clone(),
                    // The plan's own rule, with the default sync settings.
                    grad_sync: averaging::choose(&SyncConfig::default(), spread),
                    average_every: 1,
                    pipeline_in_node,
                    remedy: super::remedy::Remedy::Plain,
                    traffic: 1.0,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batchings_per_scope() {
        assert_eq!(batchings(Scope::Strong, 64, 4, 1), vec![(16, 1)]);
        assert_eq!(
            batchings(Scope::Strong, 64, 128, 1),
            vec![],
            "fewer images than replicas"
        );
        assert_eq!(batchings(Scope::Weak, 64, 128, 1), vec![(64, 1)]);
        assert_eq!(
            batchings(Scope::Weak, 64, 2, 2),
            vec![(64, 1), (32, 2), (16, 4), (8, 8)]
        );
        let t = batchings(Scope::Target, 64, 2, 1);
        assert_eq!(t.len(), 36);
        assert!(t.contains(&(128, 32)) && t.contains(&(8, 1)));
    }

    #[test]
    fn a_refusal_names_the_largest_useful_replica_count() {
        let r = Refusal {
            nodes: 32,
            replicas: 2048,
            per_replica: 64,
            global: 131072,
            train_images: 60000,
        };
        let text = r.to_string();
        assert!(
            text.contains("global batch of 131072 exceeds the 60000 training images"),
            "{text}"
        );
        assert!(text.contains("shard of 29 images"), "{text}");
        assert!(text.contains("at most 937 replicas of 64"), "{text}");
    }
}
