//! `partrain calibrate`: measures on this machine what `partrain plan` and `partrain report`
//! predict from (see src/perf/predict.rs) and writes `calibration.json`.
//!
//!   partrain calibrate --config configs/base.yaml                        # compute, on one rank
//!   mpirun -np 2 partrain calibrate --config configs/base.yaml           # + the link inside a node
//!   bash scripts/cluster.sh exec mpirun ... -np 2 --map-by ppr:1:node partrain calibrate ...
//!                                                                        # + the link between nodes
//!
//! Rank 0 times each layer's forward and backward, and the whole one-stage step (the engine as
//! training runs it, with SGD), at each thread count and batch size; with several ranks, ping-pong
//! gives latency and bandwidth inside a node and between nodes, and node-shared averaging its cost
//! per element. An existing `--out` file of the same net keeps what this launch did not measure
//! (so a one-node and a two-node launch together fill it).

use crate::comm::Comm;
use crate::config::{Config, Precision};
use crate::model::{describe, Net};
use crate::perf::{Calibration, ComputeRow, FORMAT, VERSION};
use crate::plan::averaging::GradSync;
use crate::plan::{Plan, Strategy};
use crate::train::averager::Averager;
use crate::train::engine::{Engine, StepBatch};
use crate::train::grads::GradientBuffer;
use crate::train::optimizer::Optimizer;
use crate::train::timers::StepTimers;
use anyhow::Result;
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    pub config: PathBuf,
    pub set: Vec<String>,
    /// Thread counts (default: 1 up to this node's cores).
    pub threads: Vec<usize>,
    /// Batch sizes (images per micro-batch) to time.
    pub batches: Vec<usize>,
    /// Timed repeats of each measurement (the median is kept).
    pub repeats: usize,
    pub out: PathBuf,
    /// Keep `--out`'s compute and measure only the links (launched on several ranks, whose
    /// waiting would disturb the compute timings).
    pub links_only: bool,
    /// MiB of the message that measures bandwidth.
    pub link_mib: usize,
}

use crate::model::median_seconds as time;

/// Forward and backward seconds on `batch` random images, per layer, by the one timing rule
/// (`Net::time_block`: each block in place, its time given to its first layer), with the first
/// block fused outside autograd when the engine runs it so (which needs the flat gradient
/// buffer, bound here).
fn layer_times(net: &Net, input: [i64; 3], batch: i64, repeats: usize) -> (Vec<f64>, Vec<f64>) {
    let opts = (Kind::Float, tch::Device::Cpu);
    let mut x = Tensor::randn([batch, input[0], input[1], input[2]], opts);
    let n = net.layers.len();
    // Gradients accumulate into flat buffers, as in training (the fused block needs a `.grad`).
    let params = net.parameters();
    let _buffer = GradientBuffer::bind(&params, None);
    let (mut fwd, mut bwd) = (vec![0.0; n], vec![0.0; n]);
    for (bi, block) in net.param_blocks().into_iter().enumerate() {
        let fused = (bi == 0 && block.layers == (0..3))
            .then(|| net.fused_first_block(&input))
            .flatten();
        let (f, fb, y) = match fused {
            Some(pad) => {
                let p = &net.layers[0].params;
                let mut buffers = crate::model::fused::Buffers::default();
                let y = crate::model::fused::forward(&x, &p[0], &p[1], pad, &mut buffers)
                    .leaf
                    .detach();
                let g = y.ones_like();
                let f = time(repeats, || {
                    crate::model::fused::forward(&x, &p[0], &p[1], pad, &mut buffers);
                });
                let fb = time(repeats, || {
                    let s = crate::model::fused::forward(&x, &p[0], &p[1], pad, &mut buffers);
                    crate::model::native::backward_with_grad(&s.leaf, &g).expect("block backward");
                    crate::model::fused::backward(&s, &p[0], &p[1], pad, &mut buffers);
                });
                (f, fb, y)
            }
            None => net.time_block(&x, &block, repeats),
        };
        fwd[block.layers.start] = f;
        bwd[block.layers.start] = (fb - f).max(0.0);
        x = y;
    }
    (fwd, bwd)
}

/// One whole one-stage training step (the engine, then the optimizer) on `batch` random images.
fn step_time(cfg: &Config, batch: usize, repeats: usize) -> Result<f64> {
    let mut cfg = cfg.clone();
    cfg.train.batch_size = batch;
    cfg.parallel.micro_batches = 1;
    cfg.parallel.stages = 1;
    cfg.parallel.stage_boundaries = crate::config::StageBoundaries::Auto;
    // dp on one rank: the serial step, also when calibrate runs under mpirun.
    let plan = Plan::hypothetical(&cfg, Strategy::Dp, crate::comm::WorldShape::blocks(1, 1))?;
    let mut engine = Engine::new(&plan, 1);
    let params: Vec<Tensor> = engine
        .net
        .parameters()
        .iter()
        .map(|t| t.shallow_clone())
        .collect();
    let refs: Vec<&Tensor> = params.iter().collect();
    let mut buffer = GradientBuffer::bind(&refs, None);
    let names: Vec<String> = engine
        .net
        .named_parameters()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    // The config's optimizer: LARS adds a norm per weight tensor to every step.
    let mut optimizer = Optimizer::new(&buffer, &refs, &names, &plan.optim);
    let s = plan.input_shape;
    let data = crate::data::Split {
        images: Tensor::randn([batch as i64, s[0], s[1], s[2]], (Kind::Float, tch::Device::Cpu)),
        labels: Tensor::randint(10, [batch as i64], (Kind::Int64, tch::Device::Cpu)),
    };
    let shard: Vec<i64> = (0..batch as i64).collect();
    let mut timers = StepTimers::default();
    let solo = Comm::solo();
    Ok(time(repeats, || {
        let b = StepBatch {
            shard: &shard,
            seed: 1,
            poison: false,
        };
        engine.train_step(&solo, &data, &b, &mut timers, None, None);
        optimizer.step(buffer.values(), buffer.grads(), plan.optim.peak_lr, 0);
        buffer.zero_grads();
    }))
}

impl CalibrateOptions {
    /// Per-layer and whole-step times at every thread count and batch, computing in `precision`.
    fn compute_rows(&self, cfg: &Config, threads: &[usize], precision: Precision) -> Result<Vec<ComputeRow>> {
        let mut cfg = cfg.clone();
        cfg.train.precision = precision;
        let layers = cfg.net()?.layers;
        let input = cfg.data.dataset.image_shape();
        let mut net = Net::build(&layers, 0..layers.len(), 1);
        net.set_compute(crate::model::Compute {
            channels_last: cfg.train.channels_last,
            bf16: precision == Precision::Bf16,
        });
        let mut rows = Vec::new();
        for &t in threads {
            tch::set_num_threads(t as i32);
            for &b in &self.batches {
                let (forward_s, backward_s) = layer_times(&net, input, b as i64, self.repeats);
                rows.push(ComputeRow {
                    threads: t,
                    batch: b,
                    forward_s,
                    backward_s,
                    step_s: step_time(&cfg, b, self.repeats)?,
                });
            }
        }
        Ok(rows)
    }

    pub fn run(&self, world: &Comm) -> Result<Option<Calibration>> {
        let cfg = crate::config::load(&self.config, &self.set)?;
        let net = cfg.net()?;
        let shape = world.shape();
        let cores = crate::util::node_cores();
        let threads: Vec<usize> = if self.threads.is_empty() {
            (1..=cores).collect()
        } else {
            self.threads.clone()
        };
        let mut cal = self.previous(&cfg).unwrap_or_else(|| Calibration {
            format: FORMAT.into(),
            version: VERSION,
            date: crate::util::today(),
            cpu: crate::util::machine::Cpu::this_machine(),
            preset: net.name.clone(),
            net_id: Some(net.id.clone()),
            dataset: cfg.data.dataset.as_str().into(),
            cores_per_node: cores,
            layer_names: Vec::new(),
            layer_output_elems: Vec::new(),
            layer_params: Vec::new(),
            compute: Vec::new(),
            compute_bf16: Vec::new(),
            intra_node: None,
            inter_node: None,
            inter_node_emulated: None,
            shared_memory_s_per_elem: None,
            base_rss_mb: 0.0,
            corun: Vec::new(),
            allreduce: Vec::new(),
        });
        cal.date = crate::util::today();
        if self.links_only && cal.compute.is_empty() {
            anyhow::bail!(
                "--links-only: {} holds no compute measurements of {} yet (run calibrate on one rank first)",
                self.out.display(),
                net.label()
            );
        }
        if world.is_root() && !self.links_only {
            self.measure_compute(&cfg, &threads, &mut cal)?;
        }
        world.barrier();
        self.measure_links(world, &shape, &mut cal);
        if shape.size > 1 && shape.nodes() == 1 {
            self.measure_sharing(&cfg, world, &mut cal)?;
        }
        if shape.size > 1 && shape.nodes() == shape.size {
            self.measure_allreduce(&cfg, world, &mut cal);
        }
        if !world.is_root() {
            return Ok(None);
        }
        crate::util::atomic::write(&self.out, serde_json::to_string_pretty(&cal)?.as_bytes())?;
        Ok(Some(cal))
    }

    /// Ranks sharing one node: rank 0's step while every rank computes (against its step alone),
    /// and the shared-memory averaging of a CIFAR-sized gradient.
    fn measure_sharing(&self, cfg: &Config, world: &Comm, cal: &mut Calibration) -> Result<()> {
        let size = world.size();
        // Every rank computes at once; rank 0's step against its step alone.
        let batch = 64;
        let alone = cal
            .compute
            .iter()
            .find(|r| r.threads == 1 && r.batch == batch)
            .map(|r| r.step_s);
        tch::set_num_threads(1);
        world.barrier();
        let together = step_time(cfg, batch, self.repeats * 2)?;
        if let Some(alone) = alone {
            cal.corun.retain(|c| c.ranks != size);
            cal.corun.push(crate::perf::CoRun {
                ranks: size,
                slowdown: (together / alone).max(1.0),
            });
            cal.corun.sort_by_key(|c| c.ranks);
        }
        let n = 1_070_794;
        let param = Tensor::ones([n as i64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let len = GradientBuffer::flat_len(&[&param]);
        let mut sync = Averager::new((GradSync::SharedMemory, 1), world.split(0, world.rank()), len, 1);
        let mut buffer = GradientBuffer::bind(&[&param], sync.node_mean());
        let t = time(self.repeats * 3, || {
            sync.average(&mut buffer, 0);
        });
        cal.shared_memory_s_per_elem = Some(t / n as f64);
        Ok(())
    }

    /// The links from rank 0 to the first rank sharing its node and to the first rank on another
    /// node (collective).
    fn measure_links(
        &self,
        world: &Comm,
        shape: &crate::comm::WorldShape,
        cal: &mut crate::perf::Calibration,
    ) {
        let local = (1..shape.size).find(|&r| shape.node_of_rank[r] == shape.node_of_rank[0]);
        let remote = (1..shape.size).find(|&r| shape.node_of_rank[r] != shape.node_of_rank[0]);
        if let Some(r) = local {
            cal.intra_node = Some(world.link_sized(0, r, self.repeats * 3, self.link_mib));
        }
        if let Some(r) = remote {
            cal.inter_node = Some(world.link_sized(0, r, self.repeats * 3, self.link_mib));
            cal.inter_node_emulated = crate::comm::emulated_link();
        }
    }

    /// One rank per node: the MPI_Allreduce of the net's gradient (f32) across them, rank 0's
    /// median, replacing an earlier row of the same rank count.
    fn measure_allreduce(&self, cfg: &Config, world: &Comm, cal: &mut crate::perf::Calibration) {
        let layers = cfg.net().expect("validated when loaded").layers;
        let n: i64 = layers.iter().map(|l| l.kind.parameter_count()).sum();
        let send = vec![1f32; n as usize];
        let mut recv = vec![0f32; n as usize];
        // On a communicator split from the world, as the trainer's replica group is (Open MPI's
        // algorithm on MPI_COMM_WORLD at 100 Mbit/s took 431 ms where training's took 243).
        let group = world.split(0, world.rank());
        let seconds = time(self.repeats, || group.all_reduce_sum(&send, &mut recv));
        cal.allreduce.retain(|r| r.ranks != world.size());
        cal.allreduce.push(crate::perf::calibration::AllReduceRow {
            ranks: world.size(),
            bytes: 4.0 * n as f64,
            seconds,
        });
        cal.allreduce.sort_by_key(|r| r.ranks);
    }

    /// The existing `--out` of the same net, whose measurements this launch may not repeat.
    fn previous(&self, cfg: &Config) -> Option<Calibration> {
        let c = Calibration::load(&self.out).ok()?;
        let net = cfg.net().ok()?;
        c.is_of(&net).then_some(c)
    }

    fn measure_compute(&self, cfg: &Config, threads: &[usize], cal: &mut Calibration) -> Result<()> {
        let layers = cfg.net()?.layers;
        let input = cfg.data.dataset.image_shape();
        let rows = describe(&layers, input);
        cal.layer_names = layers.iter().map(|l| l.name.clone()).collect();
        cal.layer_output_elems = rows.iter().map(|r| r.output_shape.iter().product()).collect();
        cal.layer_params = rows.iter().map(|r| r.parameters).collect();
        cal.compute = self.compute_rows(cfg, threads, Precision::Fp32)?;
        cal.compute_bf16 = if crate::util::bf16_runs_here() {
            self.compute_rows(cfg, threads, Precision::Bf16)?
        } else {
            Vec::new()
        };
        let data_mb = cfg.data.train_limit.unwrap_or(match cfg.data.dataset {
            crate::config::DatasetName::Cifar10 => 50_000,
            _ => 60_000,
        }) as f64
            * input.iter().product::<i64>() as f64
            * 4.0
            / (1024.0 * 1024.0);
        cal.base_rss_mb = crate::util::peak_rss_mb() + data_mb;
        Ok(())
    }
}
