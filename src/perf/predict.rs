//! A layout's step time composed from measured parts (the model behind `partrain plan` and the
//! predictions in `partrain report`):
//!
//! - **Compute**: a stage's time is the sum of its layers' calibrated times, scaled by (whole step /
//!   sum of all layers) at that batch size and thread count. More threads than a machine's cores
//!   slow every rank by the co-run factor.
//! - **Pipeline**: the schedule's action lists simulated with these durations and the transfer time
//!   of each activation and gradient over the link between the two stages.
//! - **Averaging**: a latency-bandwidth model of the plan's path: shared memory inside a node
//!   (measured per element), a ring all-reduce (2 (p-1) messages of n/p) across nodes, whose link
//!   the ranks of a node share; two levels add the node sum to an all-reduce of each rank's slice.
//! - **Remedies** (`perf::remedy`): compression scales the bytes; bucketed overlap hides the
//!   averaging behind the backward of the layers before the first bucket to close (1 MB from the
//!   end), one-step-stale behind the whole step; model averaging divides it by its period.
//! - **Network**: measured between emulated or real nodes (`calibrate` on several nodes), or a
//!   named assumption (`--network ib100`, `eth25`), or given (`--latency-us`, `--bandwidth-gbs`).

use super::calibration::{Calibration, Link};
use super::remedy::Remedy;
use crate::plan::averaging::GradSync;
use crate::schedule::{PipelineSchedule, ScheduleKind};
use serde::Serialize;

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
    /// With model averaging: its period in steps.
    pub average_every: usize,
    /// A pipeline's stages are neighbours (false: a stage's replicas are).
    pub pipeline_in_node: bool,
    /// How the averaging is done, and the share of the f32 gradient's bytes it sends.
    pub remedy: super::remedy::Remedy,
    pub traffic: f64,
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

/// Seconds to average `elems` f32 per rank over `layout`'s replica groups.
fn averaging_seconds(layout: &Layout, elems: f64, cal: &Calibration, network: Link) -> f64 {
    let bytes = 4.0 * elems * layout.traffic;
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
    // An all-reduce across nodes, one rank of the group per node, at a rank count calibrate
    // measured: the MPI library's own algorithm, scaled to these bytes (bandwidth-bound).
    let measured = (group_nodes > 1.0 && group_per_node <= 1.0 && layout.remedy != Remedy::Bf16)
        .then(|| cal.allreduce.iter().find(|m| m.ranks as f64 == r))
        .flatten()
        .map(|m| m.seconds * bytes / m.bytes);
    match layout.grad_sync {
        GradSync::None => 0.0,
        GradSync::SharedMemory => shm * elems * (r / 2.0).max(1.0),
        GradSync::TwoLevel => {
            shm * elems * (group_per_node / 2.0).max(1.0)
                + ring(group_nodes, bytes / group_per_node, network, 1.0)
        }
        GradSync::Allreduce | GradSync::Overlapped | GradSync::Stale if group_nodes <= 1.0 => {
            ring(r, bytes, intra, 1.0)
        }
        GradSync::Allreduce | GradSync::Overlapped | GradSync::Stale => {
            measured.unwrap_or_else(|| ring(r, bytes, network, group_per_node))
        }
        GradSync::WeightAverage => {
            measured.unwrap_or_else(|| ring(r, bytes, network, group_per_node))
                / layout.average_every.max(1) as f64
        }
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
    // Several (emulated) nodes on one machine: each node's Open MPI sees its own cores free and
    // polls while it waits (the cluster's env.sh makes it yield between polls, but a yielding
    // rank still competes for the shared cores), so every rank loads the machine all the time.
    // Measured on links of a set speed (bench/links_predict.sh): this rule's median |error| is
    // 6 % over 6 runs; weighting ranks by their compute share as on one machine gave 21 %.
    if layout.ranks_per_machine > layout.ranks_per_node {
        return predict_at(layout, cal, network, slow).prediction;
    }
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
    let ranges = crate::plan::split::stage_ranges(n_layers, &layout.boundaries);
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
    let pipeline_s = schedule
        .timed(&fwd, &bwd, &link)
        .expect("the schedules are deadlock-free (schedule.rs tests every grid up to 8 x 16)")
        .end;
    let max_stage_params = ranges
        .iter()
        .map(|r| cal.layer_params[r.clone()].iter().sum::<i64>())
        .max()
        .unwrap_or(0) as f64;
    let averaging_s = averaging_seconds(layout, max_stage_params, cal, network);
    let step_s = pipeline_s + exposed_averaging(layout, cal, &ranges, (averaging_s, pipeline_s), micro, slow);
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

/// The part of `averaging_s` a step waits for: one-step-stale hides it behind the whole step
/// (`pipeline_s`), bucketed overlap behind the backward of the widest stage's layers before its
/// first bucket closes; the rest wait for all of it.
fn exposed_averaging(
    layout: &Layout,
    cal: &Calibration,
    ranges: &[std::ops::Range<usize>],
    (averaging_s, pipeline_s): (f64, f64),
    micro: usize,
    slow: f64,
) -> f64 {
    match layout.remedy {
        Remedy::Stale => (averaging_s - pipeline_s).max(0.0),
        Remedy::Overlap => {
            let widest = (0..ranges.len())
                .max_by_key(|&s| cal.layer_params[ranges[s].clone()].iter().sum::<i64>())
                .unwrap_or(0);
            let hide = hidden_behind_backward(cal, ranges[widest].clone(), layout.threads, micro) * slow;
            (averaging_s - hide).max(0.0)
        }
        _ => averaging_s,
    }
}

/// The backward seconds of `range`'s layers before the first bucket of overlapped averaging to
/// close (1 MB of gradients counted from the last layer): what its all-reduces can hide behind.
fn hidden_behind_backward(
    cal: &Calibration,
    range: std::ops::Range<usize>,
    threads: usize,
    micro: usize,
) -> f64 {
    let mut bytes = 0i64;
    let mut first = range.end;
    while first > range.start && bytes < 1 << 20 {
        first -= 1;
        bytes += 4 * cal.layer_params[first];
    }
    if first == range.start {
        return 0.0;
    }
    cal.stage_seconds(range.start..first, threads, micro).1
}

/// Seconds of one evaluation of `test` images: each replica forwards its share through the
/// stages, one micro-batch of 100 images at a time (the stages' forward times added: the
/// pipelined evaluation overlaps them, so this errs long).
pub fn eval_seconds(layout: &Layout, cal: &Calibration, test: usize) -> f64 {
    let per_image: f64 = crate::plan::split::stage_ranges(cal.layer_names.len(), &layout.boundaries)
        .into_iter()
        .map(|range| cal.stage_seconds(range, layout.threads, 100).0 / 100.0)
        .sum();
    per_image * test as f64 / layout.replicas() as f64
}

/// Time to a target accuracy: `steps` steps of `step_s` and `evals` evaluations of `eval_s`
/// (their time counts, as in MLPerf).
pub fn time_to_target(step_s: f64, steps: f64, evals: f64, eval_s: f64) -> f64 {
    steps * step_s + evals * eval_s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::calibration::{CoRun, FORMAT, VERSION};
    use crate::perf::named_network;

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
