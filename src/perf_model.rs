//! The performance model behind `partrain plan` and the predictions in `partrain report`: a
//! layout's step time composed from measured parts.
//!
//! - **Compute** (`Calibration::compute`, from `partrain calibrate`): each layer's forward and
//!   backward seconds at several batch sizes and thread counts, and the whole one-stage step
//!   (which includes the fused first block, the loss and SGD); a stage's time is the sum of its
//!   layers' times scaled by (whole step / sum of all layers) at that batch size and thread count.
//!   Between measured batch sizes the per-image time is interpolated; beyond the measured thread
//!   counts it is extrapolated from the measured parallel efficiency, and predictions say so.
//!   More threads than a node's cores slow every rank by the oversubscription factor.
//! - **Pipeline**: the schedule's action lists simulated with these durations and the transfer
//!   time of each activation and gradient over the link between the two stages.
//! - **Averaging**: a latency-bandwidth model of the plan's path: shared memory inside a node
//!   (measured per element), a ring all-reduce (2 (p-1) messages of n/p) across nodes, whose link
//!   the ranks of a node share; two levels add the node sum to an all-reduce of each rank's slice.
//! - **Network**: measured between emulated or real nodes (`calibrate` on several nodes), or a
//!   named assumption (`--network ib100`, `eth25`), or given (`--latency-us`, `--bandwidth-gbs`).

use crate::grad_sync::GradSync;
use crate::peak::Cpu;
use crate::schedule::{Action, PipelineSchedule, ScheduleKind};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "partrain-calibration";
pub const VERSION: u32 = 1;

/// One (threads, batch) measurement of compute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeRow {
    pub threads: usize,
    pub batch: usize,
    /// Per layer, seconds for the batch.
    pub forward_s: Vec<f64>,
    pub backward_s: Vec<f64>,
    /// One whole one-stage training step (engine + SGD) on this batch.
    pub step_s: f64,
}

/// A link's latency and bandwidth, between two ranks of one node or of two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub latency_us: f64,
    pub bandwidth_gbs: f64,
}

impl Link {
    /// Seconds to move `bytes` one way.
    pub fn seconds(&self, bytes: f64) -> f64 {
        self.latency_us * 1e-6 + bytes / (self.bandwidth_gbs * 1e9)
    }
}

/// Named network assumptions (stated in docs/performance.md).
pub fn named_network(name: &str) -> Result<Link> {
    Ok(match name {
        // 100 Gb/s InfiniBand (EDR/HDR100): ~1.5 us MPI latency, ~12 GB/s achievable.
        "ib100" => Link {
            latency_us: 1.5,
            bandwidth_gbs: 12.0,
        },
        // 25 Gb/s Ethernet with TCP: ~15 us latency, ~2.9 GB/s achievable.
        "eth25" => Link {
            latency_us: 15.0,
            bandwidth_gbs: 2.9,
        },
        // 10 Gb/s Ethernet with TCP: ~25 us, ~1.1 GB/s.
        "eth10" => Link {
            latency_us: 25.0,
            bandwidth_gbs: 1.1,
        },
        other => bail!("--network: unknown network `{other}`: expected ib100, eth25 or eth10"),
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub format: String,
    pub version: u32,
    pub date: String,
    pub cpu: Cpu,
    pub preset: String,
    pub dataset: String,
    pub cores_per_node: usize,
    pub layer_names: Vec<String>,
    /// Per layer: elements of its output per image, and parameters.
    pub layer_output_elems: Vec<i64>,
    pub layer_params: Vec<i64>,
    pub compute: Vec<ComputeRow>,
    /// Between two ranks of one node (shared memory).
    pub intra_node: Option<Link>,
    /// Between two nodes.
    pub inter_node: Option<Link>,
    /// Node-shared-memory averaging: seconds per f32 element with 2 ranks (memory bound).
    pub shared_memory_s_per_elem: Option<f64>,
    /// Peak resident memory of a one-rank run (libtorch, data set, net), MiB.
    pub base_rss_mb: f64,
    /// How much slower a one-thread step runs while `ranks` one-thread ranks of one machine
    /// compute at once: shared caches and memory bandwidth, and past the cores time sharing
    /// (measured by `calibrate` launched on one node with that many ranks).
    #[serde(default)]
    pub corun: Vec<CoRun>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoRun {
    pub ranks: usize,
    pub slowdown: f64,
}

impl Calibration {
    pub fn load(path: &Path) -> Result<Calibration> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        if doc["format"] != FORMAT || doc["version"] != VERSION {
            bail!(
                "{}: format {} version {}, expected {FORMAT} version {VERSION} (partrain calibrate writes it)",
                path.display(),
                doc["format"],
                doc["version"]
            );
        }
        serde_json::from_value(doc)
            .with_context(|| format!("{}: does not match calibration version {VERSION}", path.display()))
    }

    fn thread_counts(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self.compute.iter().map(|r| r.threads).collect();
        t.sort_unstable();
        t.dedup();
        t
    }

    /// Per-image seconds of `pick` (a layer's forward, ...) at `threads` and `batch`:
    /// interpolated over batch sizes, extrapolated past the measured thread counts.
    fn per_image(&self, threads: usize, batch: usize, pick: &dyn Fn(&ComputeRow) -> f64) -> (f64, bool) {
        let counts = self.thread_counts();
        let max_t = *counts.last().expect("calibration has compute rows");
        let at = |t: usize| -> f64 {
            let mut rows: Vec<&ComputeRow> = self.compute.iter().filter(|r| r.threads == t).collect();
            rows.sort_by_key(|r| r.batch);
            let per = |r: &ComputeRow| pick(r) / r.batch as f64;
            let b = batch as f64;
            if b <= rows[0].batch as f64 {
                return per(rows[0]);
            }
            for w in rows.windows(2) {
                let (lo, hi) = (w[0].batch as f64, w[1].batch as f64);
                if b <= hi {
                    let f = (b - lo) / (hi - lo);
                    return per(w[0]) * (1.0 - f) + per(w[1]) * f;
                }
            }
            per(rows.last().expect("rows"))
        };
        if counts.contains(&threads) {
            return (at(threads), false);
        }
        // Between or beyond measured counts: t(T) = t(1) / (1 + (T - 1) e), with the parallel
        // efficiency e measured at the largest count.
        let t1 = at(counts[0]);
        let tm = at(max_t);
        // A layer that takes no measurable time (a ReLU fused into the max-pool) has t1 = tm = 0:
        // 0 / 0 would make every extrapolated stage time NaN.
        let e = if max_t > 1 && tm > 0.0 {
            ((t1 / tm) - 1.0) / (max_t as f64 - 1.0)
        } else {
            1.0
        };
        (
            t1 / (1.0 + (threads as f64 - 1.0) * e.clamp(0.0, 1.0)),
            threads > max_t,
        )
    }

    /// Seconds of the forward and backward of `layers` on a micro-batch of `batch` images at
    /// `threads`, scaled to the measured whole step; and whether that was an extrapolation.
    pub fn stage_seconds(
        &self,
        layers: std::ops::Range<usize>,
        threads: usize,
        batch: usize,
    ) -> (f64, f64, bool) {
        let n = self.layer_names.len();
        let (whole, x1) = self.per_image(threads, batch, &|r| r.step_s);
        let (sum_all, _) = self.per_image(threads, batch, &|r| {
            r.forward_s.iter().sum::<f64>() + r.backward_s.iter().sum::<f64>()
        });
        let scale = if sum_all > 0.0 { whole / sum_all } else { 1.0 };
        let (mut f, mut b) = (0.0, 0.0);
        for i in layers.clone().filter(|&i| i < n) {
            f += self.per_image(threads, batch, &|r| r.forward_s[i]).0;
            b += self.per_image(threads, batch, &|r| r.backward_s[i]).0;
        }
        (f * scale * batch as f64, b * scale * batch as f64, x1)
    }

    /// Images/s of the serial baseline (1 thread, `batch`).
    pub fn serial_images_per_s(&self, batch: usize) -> f64 {
        1.0 / self.per_image(1, batch, &|r| r.step_s).0
    }
}

/// A layout to predict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    pub strategy: String,
    pub nodes: usize,
    pub ranks_per_node: usize,
    /// Ranks sharing one machine's cores: `ranks_per_node`, except on an emulated cluster, whose
    /// nodes are one machine.
    pub ranks_per_machine: usize,
    /// The cores of that machine (the planned node's, or the calibrating machine's for runs on it).
    pub cores_per_machine: usize,
    pub threads: usize,
    pub stages: usize,
    pub micro_batches: usize,
    pub schedule: ScheduleKind,
    pub global_batch: usize,
    /// The first layer of stages 1..
    pub boundaries: Vec<usize>,
    pub grad_sync: GradSync,
    /// A pipeline's stages are neighbours (false: a stage's replicas are).
    pub pipeline_in_node: bool,
}

impl Layout {
    pub fn ranks(&self) -> usize {
        self.nodes * self.ranks_per_node
    }
    pub fn replicas(&self) -> usize {
        self.ranks() / self.stages
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub step_s: f64,
    pub pipeline_s: f64,
    pub averaging_s: f64,
    pub images_per_s: f64,
    pub memory_mb_per_rank: f64,
    /// Thread counts beyond those calibrated: the compute time is an extrapolation.
    pub extrapolated: bool,
}

/// The pipeline's step time: the schedule's actions with `fwd[s]`, `bwd[s]` seconds per
/// micro-batch on stage s and `link[s]` seconds to move an activation (or its gradient) between
/// stages s and s+1. Each stage runs its actions in order; an action starts when the stage is
/// free and its input has arrived.
pub fn simulate(schedule: &PipelineSchedule, fwd: &[f64], bwd: &[f64], link: &[f64]) -> f64 {
    let (s_n, m) = (schedule.stages, schedule.micro_batches);
    let mut fwd_done = vec![vec![f64::NAN; m]; s_n];
    let mut bwd_done = vec![vec![f64::NAN; m]; s_n];
    let mut next = vec![0usize; s_n];
    let mut free = vec![0.0f64; s_n];
    let total: usize = schedule.actions.iter().map(Vec::len).sum();
    let mut done = 0;
    while done < total {
        let mut progressed = false;
        for s in 0..s_n {
            let Some(&a) = schedule.actions[s].get(next[s]) else {
                continue;
            };
            let ready = match a {
                Action::Forward(_) if s == 0 => Some(0.0),
                Action::Forward(i) => Some(fwd_done[s - 1][i] + link[s - 1]).filter(|t| !t.is_nan()),
                Action::Backward(i) if s + 1 == s_n => Some(fwd_done[s][i]).filter(|t| !t.is_nan()),
                Action::Backward(i) => Some(bwd_done[s + 1][i] + link[s]).filter(|t| !t.is_nan()),
            };
            let Some(ready) = ready else { continue };
            let start = ready.max(free[s]);
            let end = start
                + match a {
                    Action::Forward(_) => fwd[s],
                    Action::Backward(_) => bwd[s],
                };
            match a {
                Action::Forward(i) => fwd_done[s][i] = end,
                Action::Backward(i) => bwd_done[s][i] = end,
            }
            free[s] = end;
            next[s] += 1;
            done += 1;
            progressed = true;
        }
        assert!(
            progressed,
            "schedule deadlocks (the simulator in schedule.rs rejects such schedules)"
        );
    }
    free.iter().cloned().fold(0.0, f64::max)
}

/// Seconds to average `elems` f32 per rank over `layout`'s replica groups.
fn averaging_seconds(layout: &Layout, elems: f64, cal: &Calibration, network: Link) -> f64 {
    let bytes = 4.0 * elems;
    let (r, l) = (layout.replicas() as f64, layout.ranks_per_node as f64);
    let ring = |p: f64, bytes: f64, link: Link, sharing: f64| {
        if p <= 1.0 {
            return 0.0;
        }
        2.0 * (p - 1.0) * (link.latency_us * 1e-6 + (bytes / p) / (link.bandwidth_gbs * 1e9 / sharing))
    };
    let intra = cal.intra_node.unwrap_or(Link {
        latency_us: 1.0,
        bandwidth_gbs: 5.0,
    });
    let shm = cal.shared_memory_s_per_elem.unwrap_or(1e-10);
    // Ranks of a replica group per node (placement decides).
    let group_per_node = if layout.pipeline_in_node {
        (l / layout.stages as f64).max(1.0)
    } else {
        l.min(r)
    };
    let group_nodes = (r / group_per_node).max(1.0);
    match layout.grad_sync {
        GradSync::None => 0.0,
        GradSync::SharedMemory => shm * elems * (r / 2.0).max(1.0),
        GradSync::TwoLevel => {
            shm * elems * (group_per_node / 2.0).max(1.0)
                + ring(group_nodes, bytes / group_per_node, network, 1.0)
        }
        GradSync::Allreduce | GradSync::Overlapped if group_nodes <= 1.0 => ring(r, bytes, intra, 1.0),
        GradSync::Allreduce | GradSync::Overlapped => ring(r, bytes, network, group_per_node),
        GradSync::WeightAverage { every } => ring(r, bytes, network, group_per_node) / every.max(1) as f64,
    }
}

/// The predicted step of `layout` with `cal`'s compute, and `network` between nodes.
///
/// Ranks that share a machine slow each other down (`corun`): by the machine's load, the threads
/// computing at once, where a rank counts with the share of the step it computes (Open MPI
/// yields the core while a rank waits when it sees more ranks than cores): a pipeline's waiting
/// stages cost little, dp's ranks, all busy, their full weight. The load is found by iterating
/// the prediction.
pub fn predict(layout: &Layout, cal: &Calibration, network: Link) -> Prediction {
    let threads = (layout.ranks_per_machine * layout.threads) as f64;
    let cores = layout.cores_per_machine.max(1) as f64;
    let mut slow = corun(cal, threads, cores);
    let mut p = predict_at(layout, cal, network, slow);
    for _ in 0..6 {
        let next = corun(cal, threads * p.busy_fraction, cores);
        if (next - slow).abs() < 1e-3 {
            break;
        }
        slow = next;
        p = predict_at(layout, cal, network, slow);
    }
    p.prediction
}

struct Stepped {
    prediction: Prediction,
    /// The mean share of the step the ranks spend computing.
    busy_fraction: f64,
}

/// The slowdown of each rank of a machine of `cores` cores on which `load` threads compute at
/// once: contention for caches and memory bandwidth (the measured co-run factors with their time
/// sharing divided out, linear in between, the last one beyond), times time sharing once the load
/// exceeds the cores. On the calibrating machine this gives back the measured factors; on a
/// larger planned node the measured contention is assumed to hold (its time sharing not).
fn corun(cal: &Calibration, load: f64, cores: f64) -> f64 {
    let cal_cores = cal.cores_per_node.max(1) as f64;
    let mut points = vec![(1.0, 1.0)];
    points.extend(
        cal.corun
            .iter()
            .map(|c| (c.ranks as f64, c.slowdown / (c.ranks as f64 / cal_cores).max(1.0))),
    );
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut contention = points.last().expect("one point").1;
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if load <= x1 {
            contention = y0 + (y1 - y0) * ((load - x0) / (x1 - x0)).clamp(0.0, 1.0);
            break;
        }
    }
    contention * (load / cores).max(1.0)
}

fn predict_at(layout: &Layout, cal: &Calibration, network: Link, slow: f64) -> Stepped {
    let s_n = layout.stages;
    let n_layers = cal.layer_names.len();
    let ranges = crate::model::stage_ranges(n_layers, &layout.boundaries);
    let micro = (layout.global_batch / layout.replicas() / layout.micro_batches).max(1);
    let mut extrapolated = false;
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    // One rank's own threads are in the calibration; others' only through `slow`.
    let slow = if layout.ranks_per_machine > 1 { slow } else { 1.0 };
    for r in &ranges {
        let (f, b, x) = cal.stage_seconds(r.clone(), layout.threads, micro);
        fwd.push(f * slow);
        bwd.push(b * slow);
        extrapolated |= x;
    }
    // Links between consecutive stages: inside a node when the pipeline is, else across nodes.
    let intra = cal.intra_node.unwrap_or(network);
    let same_node = layout.pipeline_in_node && layout.ranks_per_node >= s_n || layout.nodes == 1;
    let link: Vec<f64> = ranges
        .iter()
        .take(s_n.saturating_sub(1))
        .map(|r| {
            let bytes = 4.0 * (cal.layer_output_elems[r.end - 1] as f64) * micro as f64;
            if same_node { intra } else { network }.seconds(bytes)
        })
        .collect();
    let schedule = PipelineSchedule::new(layout.schedule, s_n, layout.micro_batches);
    let pipeline_s = simulate(&schedule, &fwd, &bwd, &link);
    let max_stage_params = ranges
        .iter()
        .map(|r| cal.layer_params[r.clone()].iter().sum::<i64>())
        .max()
        .unwrap_or(0) as f64;
    let averaging_s = averaging_seconds(layout, max_stage_params, cal, network);
    let step_s = pipeline_s + averaging_s;
    let m = layout.micro_batches as f64;
    let busy: f64 = fwd.iter().zip(&bwd).map(|(f, b)| m * (f + b)).sum::<f64>() / s_n as f64;
    let in_flight = schedule.peak_in_flight() as f64;
    let act_mb = ranges
        .iter()
        .map(|r| {
            cal.layer_output_elems[r.clone()].iter().sum::<i64>() as f64 * 4.0 * micro as f64 * in_flight
        })
        .fold(0.0, f64::max)
        / (1024.0 * 1024.0);
    Stepped {
        prediction: Prediction {
            step_s,
            pipeline_s,
            averaging_s,
            images_per_s: layout.global_batch as f64 / step_s,
            memory_mb_per_rank: cal.base_rss_mb + 4.0 * 4.0 * max_stage_params / (1024.0 * 1024.0) + act_mb,
            extrapolated,
        },
        busy_fraction: (busy / step_s).min(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_pipeline_matches_the_closed_forms() {
        // Equal stages, free links: GPipe takes (M + S - 1) x (f + b).
        let s = PipelineSchedule::new(ScheduleKind::GPipe, 2, 4);
        let t = simulate(&s, &[1.0, 1.0], &[2.0, 2.0], &[0.0]);
        assert!((t - (4 + 1) as f64 * 3.0).abs() < 1e-9, "{t}");
        // One stage: M x (f + b), whatever the schedule.
        let s = PipelineSchedule::new(ScheduleKind::OneFOneB, 1, 3);
        assert!((simulate(&s, &[1.0], &[2.0], &[]) - 9.0).abs() < 1e-9);
        // A slow link delays the pipeline by its transfer both ways.
        let s = PipelineSchedule::new(ScheduleKind::GPipe, 2, 1);
        assert!((simulate(&s, &[1.0, 1.0], &[1.0, 1.0], &[0.5]) - 5.0).abs() < 1e-9);
    }

    /// A 2-core machine's calibration with `layers` (layer names, sizes and compute rows) added.
    fn test_calibration(layers: serde_json::Value) -> Calibration {
        let mut cal = serde_json::json!({
            "format": FORMAT, "version": VERSION, "date": "2026-11-27",
            "cpu": {"model_name": "test", "family": "0", "model": "0"},
            "preset": "mnist_cnn", "dataset": "mnist", "cores_per_node": 2, "base_rss_mb": 100.0
        });
        for (k, v) in layers.as_object().expect("an object") {
            cal[k] = v.clone();
        }
        serde_json::from_value(cal).expect("a valid calibration")
    }

    /// Beyond the calibrated thread counts, a layer measured at 0 s (a ReLU fused into the
    /// max-pool) once made every extrapolated stage time NaN and `plan --cores-per-node 64` panic.
    #[test]
    fn extrapolated_stage_times_stay_finite_with_a_zero_layer() {
        let row = |threads: usize, batch: usize, conv: f64| {
            serde_json::json!({"threads": threads, "batch": batch,
                "forward_s": [conv, 0.0], "backward_s": [2.0 * conv, 0.0], "step_s": 3.5 * conv})
        };
        let cal = test_calibration(serde_json::json!({
            "layer_names": ["conv", "relu"], "layer_output_elems": [100, 100], "layer_params": [10, 0],
            "compute": [row(1, 8, 0.008), row(1, 64, 0.064), row(2, 8, 0.005), row(2, 64, 0.040)]
        }));
        for threads in [1, 2, 3, 64] {
            let (f, b, extrapolated) = cal.stage_seconds(0..2, threads, 32);
            assert!(
                f.is_finite() && b.is_finite() && f > 0.0 && b > 0.0,
                "{threads}: {f} {b}"
            );
            assert_eq!(extrapolated, threads > 2);
        }
    }

    /// On the calibrating machine the co-run model gives back what was measured; on a planned node
    /// with more cores only the contention part applies (a 64-core node running 64 one-thread ranks
    /// was once charged 32x time sharing of the 2-core calibrating machine).
    #[test]
    fn corun_keeps_measurements_and_scales_to_larger_nodes() {
        let mut cal = test_calibration(serde_json::json!({
            "layer_names": [], "layer_output_elems": [], "layer_params": [], "compute": []
        }));
        cal.corun = vec![
            CoRun {
                ranks: 2,
                slowdown: 1.1,
            },
            CoRun {
                ranks: 4,
                slowdown: 2.32,
            },
        ];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(corun(&cal, 1.0, 2.0), 1.0));
        assert!(close(corun(&cal, 2.0, 2.0), 1.1));
        assert!(close(corun(&cal, 4.0, 2.0), 2.32));
        assert!(close(corun(&cal, 8.0, 2.0), 1.16 * 4.0));
        assert!(close(corun(&cal, 64.0, 64.0), 1.16));
        assert!(close(corun(&cal, 128.0, 64.0), 2.32));
    }

    #[test]
    fn named_networks_are_known() {
        assert!(
            named_network("ib100").unwrap().bandwidth_gbs > named_network("eth25").unwrap().bandwidth_gbs
        );
        assert!(named_network("carrier-pigeon").is_err());
    }
}

/// `partrain plan`: every layout that fits, predicted, best first.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[arg(long)]
    pub config: std::path::PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Node counts to plan for.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16, 32])]
    pub nodes: Vec<usize>,
    #[arg(long)]
    pub cores_per_node: usize,
    #[arg(long, default_value = "calibration.json")]
    pub calibration: std::path::PathBuf,
    /// A named network between nodes: ib100, eth25, eth10 (default: the calibration's measured
    /// link between nodes, else ib100).
    #[arg(long, conflicts_with_all = ["latency_us", "bandwidth_gbs"])]
    pub network: Option<String>,
    #[arg(long, requires = "bandwidth_gbs")]
    pub latency_us: Option<f64>,
    #[arg(long, requires = "latency_us")]
    pub bandwidth_gbs: Option<f64>,
    /// Layouts printed per node count and batch scope (plan.csv has them all).
    #[arg(long, default_value_t = 3)]
    pub top: usize,
    #[arg(long, default_value = "plan.csv")]
    pub out: std::path::PathBuf,
}

/// One row of `plan.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub nodes: usize,
    pub scope: String,
    pub strategy: String,
    pub ranks_per_node: usize,
    pub threads: usize,
    pub stages: usize,
    pub replicas: usize,
    pub micro_batches: usize,
    pub schedule: String,
    pub placement: String,
    pub averaging: String,
    pub global_batch: usize,
    pub images_per_s: f64,
    pub speedup: f64,
    pub efficiency: f64,
    pub step_ms: f64,
    pub pipeline_ms: f64,
    pub averaging_ms: f64,
    pub memory_mb_per_rank: f64,
    pub extrapolated: bool,
}

impl PlanArgs {
    pub fn network(&self, cal: &Calibration) -> Result<Link> {
        match (&self.network, self.latency_us, self.bandwidth_gbs) {
            (Some(n), _, _) => named_network(n),
            (None, Some(latency_us), Some(bandwidth_gbs)) => Ok(Link {
                latency_us,
                bandwidth_gbs,
            }),
            _ => Ok(cal.inter_node.unwrap_or(named_network("ib100")?)),
        }
    }

    pub fn run(&self) -> Result<Vec<PlanRow>> {
        let cfg = crate::config::load(&self.config, &self.set)?;
        let cal = Calibration::load(&self.calibration)?;
        if cal.preset != cfg.model.preset.as_str() {
            bail!(
                "--calibration: {} was measured for {}, and the config's net is {}",
                self.calibration.display(),
                cal.preset,
                cfg.model.preset.as_str()
            );
        }
        let network = self.network(&cal)?;
        let mut rows = Vec::new();
        for &nodes in &self.nodes {
            for scope in ["strong", "weak"] {
                rows.extend(
                    layouts(&cfg, &cal, nodes, self.cores_per_node, scope)
                        .into_iter()
                        .map(|l| row(&l, &cal, network, &cfg, scope)),
                );
            }
        }
        rows.sort_by(|a, b| {
            (a.nodes, &a.scope)
                .cmp(&(b.nodes, &b.scope))
                .then(b.images_per_s.total_cmp(&a.images_per_s))
        });
        let mut w = csv::Writer::from_path(&self.out)
            .with_context(|| format!("cannot write {}", self.out.display()))?;
        for r in &rows {
            w.serialize(r)?;
        }
        w.flush()?;
        Ok(rows)
    }
}

fn row(l: &Layout, cal: &Calibration, network: Link, cfg: &crate::config::Config, scope: &str) -> PlanRow {
    let p = predict(l, cal, network);
    // The serial baseline at the batch each of its steps would take: the global batch (strong)
    // or the per-replica batch (weak).
    let base_batch = if scope == "strong" {
        l.global_batch
    } else {
        cfg.train.batch_size
    };
    let speedup = p.images_per_s / cal.serial_images_per_s(base_batch);
    PlanRow {
        nodes: l.nodes,
        scope: scope.into(),
        strategy: l.strategy.clone(),
        ranks_per_node: l.ranks_per_node,
        threads: l.threads,
        stages: l.stages,
        replicas: l.replicas(),
        micro_batches: l.micro_batches,
        schedule: l.schedule.name().into(),
        placement: if l.pipeline_in_node {
            "pipeline_in_node"
        } else {
            "replicas_in_node"
        }
        .into(),
        averaging: l.grad_sync.name().into(),
        global_batch: l.global_batch,
        images_per_s: p.images_per_s,
        speedup,
        efficiency: speedup / (l.nodes * l.ranks_per_node * l.threads) as f64,
        step_ms: p.step_s * 1e3,
        pipeline_ms: p.pipeline_s * 1e3,
        averaging_ms: p.averaging_s * 1e3,
        memory_mb_per_rank: p.memory_mb_per_rank,
        extrapolated: p.extrapolated,
    }
}

/// The averaging path the plan would take for replica groups of `per_node` ranks on each of
/// `nodes` nodes (src/plan.rs, `choose_grad_sync`).
fn sync_for(replicas: usize, group_per_node: usize, group_nodes: usize) -> GradSync {
    match (replicas, group_nodes, group_per_node) {
        (1, _, _) => GradSync::None,
        (_, 1, _) => GradSync::SharedMemory,
        (_, _, p) if p >= 2 => GradSync::TwoLevel,
        _ => GradSync::Allreduce,
    }
}

/// Every layout of `nodes` nodes of `cores` cores: ranks per node x threads filling the cores;
/// dp; hybrid with 2..4 stages (split by calibrated time), 1..8 micro-batches, both schedules.
pub fn layouts(
    cfg: &crate::config::Config,
    cal: &Calibration,
    nodes: usize,
    cores: usize,
    scope: &str,
) -> Vec<Layout> {
    let mut out = Vec::new();
    let n_layers = cal.layer_names.len();
    for per_node in (0..=cores.ilog2())
        .map(|k| 1usize << k)
        .filter(|p| cores.is_multiple_of(*p))
    {
        let threads = cores / per_node;
        let ranks = nodes * per_node;
        for stages in [1usize, 2, 3, 4]
            .into_iter()
            .filter(|s| ranks.is_multiple_of(*s) && *s <= n_layers)
        {
            let replicas = ranks / stages;
            let global = if scope == "strong" {
                cfg.train.batch_size
            } else {
                cfg.train.batch_size * replicas
            };
            if global < replicas || !global.is_multiple_of(replicas) {
                continue;
            }
            let per_replica = global / replicas;
            let costs: Vec<f64> = (0..n_layers)
                .map(|i| {
                    let (f, b, _) = cal.stage_seconds(i..i + 1, threads, per_replica.max(1));
                    f + b
                })
                .collect();
            let boundaries = if stages > 1 {
                crate::model::balance(&costs, stages)
            } else {
                Vec::new()
            };
            let micro: &[usize] = if stages == 1 { &[1] } else { &[1, 2, 4, 8] };
            for &m in micro.iter().filter(|m| per_replica.is_multiple_of(**m)) {
                let schedules: &[ScheduleKind] = if stages == 1 {
                    &[ScheduleKind::OneFOneB]
                } else {
                    &[ScheduleKind::GPipe, ScheduleKind::OneFOneB]
                };
                for &schedule in schedules {
                    for pipeline_in_node in [true, false] {
                        if stages == 1 && !pipeline_in_node {
                            continue;
                        }
                        let group_per_node = if pipeline_in_node {
                            (per_node / stages).max(1)
                        } else {
                            per_node.min(replicas)
                        };
                        let group_nodes = replicas.div_ceil(group_per_node);
                        out.push(Layout {
                            strategy: if stages == 1 { "dp" } else { "hybrid" }.into(),
                            nodes,
                            ranks_per_node: per_node,
                            ranks_per_machine: per_node,
                            cores_per_machine: cores,
                            threads,
                            stages,
                            micro_batches: m,
                            schedule,
                            global_batch: global,
                            boundaries: boundaries.clone(),
                            grad_sync: sync_for(replicas, group_per_node, group_nodes),
                            pipeline_in_node,
                        });
                    }
                }
            }
        }
    }
    out
}
