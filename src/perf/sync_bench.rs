//! `partrain sync-bench`: the gradient-averaging paths timed on their own, with the code the
//! trainer runs (`Averager` over a flat `GradientBuffer`), for gradient sizes of the seed nets.
//!
//!   mpirun -np 4 partrain sync-bench                               # every path the layout allows
//!   mpirun -np 4 --mca coll_han_priority 100 partrain sync-bench --paths mpi_allreduce --label han
//!
//! Each rank times `repeats` averagings after a barrier (so no rank starts early); a row reports
//! the median and 10th / 90th percentiles of the slowest rank's time per averaging, and the
//! algorithm bandwidth (bytes of one rank's gradients per second).

use crate::comm::Comm;
use crate::plan::averaging::{runs_on, GradSync, GroupSpread};
use crate::train::averager::Averager;
use crate::train::grads::GradientBuffer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

/// The averaging paths timed on their own (the others are these plus threading or local steps).
pub const TIMED: [GradSync; 3] = [GradSync::SharedMemory, GradSync::TwoLevel, GradSync::Allreduce];

#[derive(Debug, Clone)]
pub struct SyncBench {
    /// Gradient sizes in f32 (default: the MNIST and CIFAR-10 nets' parameters).
    pub elements: Vec<usize>,
    /// Paths to time (default: every path this layout allows).
    pub paths: Vec<GradSync>,
    pub repeats: usize,
    /// A name for the rows (for example `han` when launched with Open MPI's coll/han).
    pub label: String,
    /// CSV file the rows are appended to (rank 0).
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncBenchRow {
    pub path: String,
    pub label: String,
    pub ranks: usize,
    pub nodes: usize,
    pub ranks_per_node: usize,
    pub elements: usize,
    pub median_us: f64,
    pub p10_us: f64,
    pub p90_us: f64,
    /// Bytes of one rank's gradients over the median time, in GB/s.
    pub algbw_gbs: f64,
    pub hosts: String,
}

impl SyncBench {
    pub fn run(&self, world: &Comm) -> Result<Vec<SyncBenchRow>> {
        let shape = world.shape();
        let spread = GroupSpread {
            replicas: shape.size,
            nodes: shape.nodes(),
            per_node: shape.evenly_spread(0..shape.size),
        };
        let paths: Vec<GradSync> = if self.paths.is_empty() {
            TIMED.into_iter().filter(|&p| runs_on(p, spread)).collect()
        } else {
            self.paths.clone()
        };
        if let Some(p) = paths
            .iter()
            .find(|&&p| !TIMED.contains(&p) || !runs_on(p, spread))
        {
            bail!(
                "--paths: {} does not apply to {} ranks on {} nodes (shared_memory needs one node, two_level \
                 several with the same number of ranks on each; mpi_allreduce runs anywhere)",
                p.name(),
                shape.size,
                shape.nodes()
            );
        }
        let hosts = shape.hostnames.join(";");
        let mut rows = Vec::new();
        for &path in &paths {
            for &n in &self.elements {
                let us = self.time(world, path, n);
                rows.push(SyncBenchRow {
                    path: path.name().into(),
                    label: self.label.clone(),
                    ranks: shape.size,
                    nodes: shape.nodes(),
                    ranks_per_node: shape.ranks_per_node(),
                    elements: n,
                    median_us: percentile(&us, 0.5),
                    p10_us: percentile(&us, 0.1),
                    p90_us: percentile(&us, 0.9),
                    algbw_gbs: 4.0 * n as f64 / percentile(&us, 0.5) / 1e3,
                    hosts: hosts.clone(),
                });
            }
        }
        if world.is_root() {
            if let Some(out) = &self.out {
                append_csv(out, &rows)?;
            }
        }
        Ok(rows)
    }

    /// Microseconds per averaging of `n` f32 on `path`: the slowest rank's, per repeat.
    fn time(&self, world: &Comm, path: GradSync, n: usize) -> Vec<f64> {
        let param = Tensor::ones([n as i64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let params = [&param];
        let mut sync = Averager::new(
            (path, 1),
            world.split(0, world.rank()),
            GradientBuffer::flat_len(&params),
            1,
        );
        let mut buffer = GradientBuffer::bind(&params, sync.node_mean());
        let mut times = Vec::with_capacity(self.repeats);
        for i in 0..self.repeats + 10 {
            world.barrier();
            let t = Instant::now();
            sync.average(&mut buffer, 0);
            let us = t.elapsed().as_secs_f64() * 1e6;
            if i >= 10 {
                times.push(us);
            }
        }
        let slowest = world.all_gather_slice(&times);
        (0..times.len())
            .map(|i| {
                (0..world.size())
                    .map(|r| slowest[r * times.len() + i])
                    .fold(0.0, f64::max)
            })
            .collect()
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn append_csv(path: &std::path::Path, rows: &[SyncBenchRow]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let exists = path.exists();
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    let mut w = csv::WriterBuilder::new().has_headers(!exists).from_writer(file);
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}
