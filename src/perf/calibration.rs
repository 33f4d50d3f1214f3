//! The calibration `partrain calibrate` writes and the performance model reads: per-layer
//! forward and backward seconds at several batch sizes and thread counts, whole one-stage steps,
//! links inside and between nodes, shared-memory averaging and the co-run slowdown of ranks that
//! share a machine. Between measured batch sizes the per-image time is interpolated; beyond the
//! measured thread counts it is extrapolated from the measured parallel efficiency.

use crate::util::machine::Cpu;
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

pub use crate::comm::Link;

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
    /// The net's name, and its identity (`crate::netspec::NetSpec::id`; absent in files written
    /// before nets were data, which were all of presets, compared by name).
    pub preset: String,
    #[serde(default)]
    pub net_id: Option<String>,
    pub dataset: String,
    pub cores_per_node: usize,
    pub layer_names: Vec<String>,
    /// Per layer: elements of its output per image, and parameters.
    pub layer_output_elems: Vec<i64>,
    pub layer_params: Vec<i64>,
    /// Measured in fp32 (files written before `compute_bf16` existed: in the config's precision).
    pub compute: Vec<ComputeRow>,
    /// The same measurements in bf16, where `calibrate` could run it (native bf16, or
    /// PARTRAIN_EMULATED_BF16=1); empty otherwise. `plan` weighs bf16 layouts with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compute_bf16: Vec<ComputeRow>,
    /// Between two ranks of one node (shared memory).
    pub intra_node: Option<Link>,
    /// Between two nodes.
    pub inter_node: Option<Link>,
    /// The emulated cluster's set link rate when `inter_node` was measured on one
    /// (`cluster.sh up N --link RATE`: `100mbit`, ...); None on a real network or unshaped loopback.
    #[serde(default)]
    pub inter_node_emulated: Option<String>,
    /// Node-shared-memory averaging: seconds per f32 element with 2 ranks (memory bound).
    pub shared_memory_s_per_elem: Option<f64>,
    /// Peak resident memory of a one-rank run (libtorch, data set, net), MiB.
    pub base_rss_mb: f64,
    /// How much slower a one-thread step runs while `ranks` one-thread ranks of one machine
    /// compute at once: shared caches and memory bandwidth, and past the cores time sharing
    /// (measured by `calibrate` launched on one node with that many ranks).
    #[serde(default)]
    pub corun: Vec<CoRun>,
    /// MPI_Allreduce of the net's gradient across nodes (one rank per node), as the MPI library
    /// does it: Open MPI's algorithm at 4 ranks and 1.69 MB sends about twice the gradient per
    /// rank where a ring sends 1.5 times, so the ring model alone under-predicted a slow link.
    #[serde(default)]
    pub allreduce: Vec<AllReduceRow>,
}

/// One measured all-reduce: `bytes` of f32 summed over `ranks` ranks, one per node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AllReduceRow {
    pub ranks: usize,
    pub bytes: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoRun {
    pub ranks: usize,
    pub slowdown: f64,
}

impl Calibration {
    /// Whether these measurements are of `net`.
    pub fn is_of(&self, net: &crate::netspec::NetSpec) -> bool {
        self.net_id
            .as_deref()
            .map_or(self.preset == net.name, |id| id == net.id)
    }

    pub fn load(path: &Path) -> Result<Calibration> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the calibration {}: `mpirun -np 2 partrain calibrate --config CONFIG --out {}` measures \
                 this machine and writes one (docs/performance.md)",
                path.display(),
                path.display()
            )
        })?;
        Calibration::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// A calibration file's text, its format and version checked by name first.
    pub fn parse(text: &str) -> Result<Calibration> {
        let doc: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        if let Err(e) = crate::util::version::Versioned::only(FORMAT, VERSION).check(&doc) {
            bail!("{e} (partrain calibrate writes it)");
        }
        let cal: Calibration = serde_json::from_value(doc)
            .with_context(|| format!("does not match calibration version {VERSION}"))?;
        cal.check()?;
        Ok(cal)
    }

    /// What the model needs to hold: every compute row has a time per layer, and thread counts
    /// and batches are positive (a garbled file must fail here, not index past a list later).
    fn check(&self) -> Result<()> {
        let n = self.layer_names.len();
        if self.layer_output_elems.len() != n || self.layer_params.len() != n {
            bail!(
                "{n} layer names but {} output sizes and {} parameter counts",
                self.layer_output_elems.len(),
                self.layer_params.len()
            );
        }
        if self.compute.is_empty() {
            bail!("no compute rows (partrain calibrate measures them)");
        }
        for r in &self.compute {
            if r.forward_s.len() != n || r.backward_s.len() != n || r.threads == 0 || r.batch == 0 {
                bail!(
                    "a compute row (threads {}, batch {}) has {} forward and {} backward times for {n} layers",
                    r.threads,
                    r.batch,
                    r.forward_s.len(),
                    r.backward_s.len()
                );
            }
        }
        Ok(())
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
