//! The training loop shared by the serial baseline and data parallelism.
//!
//!   partrain serial --config configs/base.yaml [--set train.epochs=3] [--out DIR]
//!   mpirun -np 2 partrain dp --config configs/data_parallel.yaml [--set ...] [--out DIR]
//!
//! Serial is the same loop over a one-rank `Comm`: the sampler cuts each global batch into one
//! shard, and the gradient all-reduce is skipped.

use crate::comm::Comm;
use crate::config::{BatchScope, Config, SyncMode};
use crate::data::sampler::Sampler;
use crate::data::{self, Split};
use crate::grads::GradientBuffer;
use crate::metrics::{write_atomic, EpochRow, MetricsWriter, Summary, Timer};
use crate::model::{preset_layers, Net};
use crate::util::{mix_seed, peak_rss_mb};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Serial,
    DataParallel,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Serial => "serial",
            Strategy::DataParallel => "dp",
        }
    }
}

/// Files a run writes; `--overwrite` removes exactly these and nothing else.
pub const RUN_FILES: [&str; 4] = ["config.yaml", "metrics.csv", "summary.json", "model.safetensors"];

pub fn default_out_dir(cfg: &Config) -> PathBuf {
    PathBuf::from("results/runs").join(&cfg.run.name)
}

/// Refuses an existing, non-empty run folder unless `overwrite`; never deletes anything but
/// the run's own files.
pub fn prepare_out_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("run folder {} cannot be read", dir.display()))?
            .next()
            .is_some();
        if non_empty && !overwrite {
            bail!(
                "run folder {} already exists: pass --overwrite to replace its results, or choose another --out or run.name",
                dir.display()
            );
        }
        for f in RUN_FILES {
            let p = dir.join(f);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create run folder {}", dir.display()))
}

/// SGD with momentum, as PyTorch computes it (dampening 0, no Nesterov):
/// buf = momentum * buf + grad; p -= lr * buf. The buffers start at zero, which equals PyTorch's
/// first-step `buf = grad`.
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub buffers: Vec<Tensor>,
}

impl Sgd {
    pub fn new(params: &[&Tensor], lr: f64, momentum: f64) -> Self {
        let buffers = params.iter().map(|p| p.zeros_like()).collect();
        Sgd {
            lr,
            momentum,
            buffers,
        }
    }

    pub fn step(&mut self, params: &[&Tensor]) {
        tch::no_grad(|| {
            for (p, buf) in params.iter().zip(self.buffers.iter_mut()) {
                let mut g = p.grad();
                let _ = buf.g_mul_scalar_(self.momentum).g_add_(&g);
                let _ = p.shallow_clone().g_sub_(&(&*buf * self.lr));
                let _ = g.zero_();
            }
        })
    }
}

/// Test loss (mean) and accuracy (percent) of `net` on `split`, sharded across the ranks and
/// reduced, so every rank gets the numbers the serial evaluator gives for the same weights.
pub fn evaluate(net: &Net, split: &Split, comm: &Comm, batch: usize) -> (f64, f64) {
    let n = split.len();
    let (r, size) = (comm.rank(), comm.size());
    let (lo, hi) = (n * r / size, n * (r + 1) / size);
    let (mut loss_sum, mut correct) = (0.0f64, 0i64);
    tch::no_grad(|| {
        let mut start = lo;
        while start < hi {
            let len = batch.min(hi - start) as i64;
            let x = split.images.narrow(0, start as i64, len);
            let y = split.labels.narrow(0, start as i64, len);
            let logits = net.forward(&x, false);
            loss_sum += logits.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
            correct += logits
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]);
            start += len as usize;
        }
    });
    let total = comm.all_reduce_sum_f64(&[loss_sum, correct as f64]);
    (total[0] / n as f64, 100.0 * total[1] / n as f64)
}

fn progress(comm: &Comm, steps: usize, epoch: usize, epochs: usize) -> Option<ProgressBar> {
    if !comm.is_root() || !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    Some(bar)
}

/// Checks that every rank holds the same value of `what`; names the ranks that differ.
fn check_agreement(comm: &Comm, what: &str, value: u64) -> Result<()> {
    let all = comm.all_gather_u64(value);
    let differ: Vec<usize> = (0..all.len()).filter(|&r| all[r] != all[0]).collect();
    if !differ.is_empty() {
        bail!(
            "{what} differs between rank 0 ({:016x}) and rank(s) {:?} ({:016x})",
            all[0],
            differ,
            all[differ[0]]
        );
    }
    Ok(())
}

pub fn run(
    strategy: Strategy,
    cfg: &Config,
    out_dir: &Path,
    overwrite: bool,
    comm: &Comm,
) -> Result<Summary> {
    let replicas = comm.size();
    let global_batch = match cfg.train.batch_scope {
        BatchScope::PerRank => cfg.train.batch_size * replicas,
        BatchScope::Global => cfg.train.batch_size,
    };
    if !global_batch.is_multiple_of(replicas) {
        bail!(
            "train.batch_size: {} with batch_scope global does not divide into {} ranks",
            cfg.train.batch_size,
            replicas
        );
    }
    check_agreement(comm, "the resolved config (config file or --set)", cfg.hash())?;
    let rank = comm.rank();
    let data = data::load(&cfg.data).with_context(|| format!("rank {rank}: loading data"))?;
    check_agreement(
        comm,
        "the loaded data (data.dir contents or limits)",
        data.fingerprint,
    )?;
    if data.train.len() < global_batch {
        bail!(
            "data.train_limit: {} training images is fewer than one global batch of {global_batch}",
            data.train.len()
        );
    }
    if comm.is_root() {
        prepare_out_dir(out_dir, overwrite)?;
        write_atomic(
            &out_dir.join("config.yaml"),
            serde_yaml::to_string(cfg)?.as_bytes(),
        )?;
        write_atomic(&out_dir.join("summary.json"), br#"{"status": "running"}"#)?;
    }
    let result = train(strategy, cfg, &data, out_dir, comm, global_batch);
    if let Err(e) = &result {
        if comm.is_root() {
            let failed = serde_json::json!({"status": "failed", "error": format!("{e:#}")});
            let _ = write_atomic(&out_dir.join("summary.json"), failed.to_string().as_bytes());
        }
    }
    result
}

fn train(
    strategy: Strategy,
    cfg: &Config,
    data: &data::Dataset,
    out_dir: &Path,
    comm: &Comm,
    global_batch: usize,
) -> Result<Summary> {
    let (rank, replicas) = (comm.rank(), comm.size());
    let n_train = data.train.len();

    let specs = preset_layers(cfg.model.preset, cfg.model.dropout);
    let net = Net::build(&specs, 0..specs.len(), cfg.run.seed);
    let params = net.parameters();
    let mut buffer = GradientBuffer::new(&params);
    if replicas > 1 {
        // Every replica starts from rank 0's weights (they are built from the same seed anyway;
        // the broadcast makes that a guarantee rather than an assumption).
        buffer.gather_values(&params);
        buffer.broadcast(comm, 0);
        buffer.scatter_values(&params);
    }
    let mut sgd = Sgd::new(&params, cfg.train.lr, cfg.train.momentum);
    let sampler = Sampler::new(n_train, global_batch, replicas, cfg.run.seed);
    let steps_per_epoch = sampler.steps_per_epoch();
    let mut writer = if comm.is_root() {
        Some(MetricsWriter::create(out_dir)?)
    } else {
        None
    };
    let is_tty = std::io::stdout().is_terminal();
    if comm.is_root() {
        println!(
            "partrain {}: {} ranks, {} x {} train / {} test images, global batch {}, {} steps/epoch, {} parameters",
            strategy.as_str(),
            replicas,
            data.name.as_str(),
            n_train,
            data.test.len(),
            global_batch,
            steps_per_epoch,
            net.parameter_count()
        );
    }

    let (mut compute, mut allreduce) = (Timer::default(), Timer::default());
    let mut global_step = 0usize;
    let mut train_seconds = 0.0;
    let mut trained_samples = 0usize;
    let mut last: Option<EpochRow> = None;
    let mut epochs_done = 0;
    for epoch in 1..=cfg.train.epochs {
        if cfg.train.max_steps.is_some_and(|m| global_step >= m) {
            break;
        }
        let order = sampler.permutation(epoch - 1);
        let bar = progress(comm, steps_per_epoch, epoch, cfg.train.epochs);
        let (c0, a0) = (compute.seconds, allreduce.seconds);
        let t0 = Instant::now();
        let (mut loss_sum, mut steps, mut samples) = (0.0f64, 0usize, 0usize);
        for step in 0..steps_per_epoch {
            if cfg.train.max_steps.is_some_and(|m| global_step >= m) {
                break;
            }
            let shard = sampler.shard(&order, step, rank);
            let idx = Tensor::from_slice(shard);
            // Dropout masks come from a seed derived from the position, not from hidden RNG state.
            tch::manual_seed((mix_seed(&[cfg.run.seed, epoch as u64, step as u64, rank as u64]) >> 1) as i64);
            let loss = compute.time(|| {
                let x = data.train.images.index_select(0, &idx);
                let y = data.train.labels.index_select(0, &idx);
                let loss = net.forward(&x, true).cross_entropy_for_logits(&y);
                loss.backward();
                loss.double_value(&[])
            });
            if !loss.is_finite() {
                bail!(
                    "rank {rank}: loss is {loss} at epoch {epoch} step {} (train.lr = {}): training diverged",
                    step + 1,
                    cfg.train.lr
                );
            }
            if replicas > 1 && cfg.sync.mode == SyncMode::Gradients {
                allreduce.time(|| {
                    buffer.gather_grads(&params);
                    buffer.all_reduce_mean(comm);
                    buffer.scatter_grads(&params);
                });
            }
            compute.time(|| sgd.step(&params));
            global_step += 1;
            if replicas > 1
                && cfg.sync.mode == SyncMode::Weights
                && global_step.is_multiple_of(cfg.sync.average_every)
            {
                allreduce.time(|| average_weights(&mut buffer, &params, comm));
            }
            loss_sum += loss;
            steps += 1;
            samples += shard.len() * replicas;
            if let Some(b) = &bar {
                b.inc(1);
                if step % 10 == 0 {
                    let ips = samples as f64 / t0.elapsed().as_secs_f64();
                    b.set_message(format!("loss {loss:.4} {ips:.0} img/s"));
                }
            } else if comm.is_root() && !is_tty && (step + 1) % cfg.train.log_every == 0 {
                let ips = samples as f64 / t0.elapsed().as_secs_f64();
                println!(
                    "epoch {epoch}/{} step {}/{steps_per_epoch} loss {loss:.4} {ips:.0} img/s",
                    cfg.train.epochs,
                    step + 1
                );
            }
        }
        if replicas > 1 && cfg.sync.mode == SyncMode::Weights {
            allreduce.time(|| average_weights(&mut buffer, &params, comm));
        }
        let epoch_seconds = t0.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        train_seconds += epoch_seconds;
        trained_samples += samples;
        if replicas > 1 {
            let sum = buffer.checksum_values(&params);
            check_agreement(comm, &format!("replica weights after epoch {epoch}"), sum)
                .context("replicas drifted apart: gradients were not averaged identically")?;
        }
        let total = comm.all_reduce_sum_f64(&[loss_sum, steps as f64]);
        let t_eval = Instant::now();
        let (test_loss, test_accuracy) = evaluate(&net, &data.test, comm, cfg.train.eval_batch_size);
        let row = EpochRow {
            epoch,
            steps,
            train_loss: total[0] / total[1].max(1.0),
            test_loss,
            test_accuracy,
            epoch_seconds,
            samples_per_second: samples as f64 / epoch_seconds,
            compute_s: compute.seconds - c0,
            allreduce_s: allreduce.seconds - a0,
            pipeline_wait_s: 0.0,
            eval_seconds: t_eval.elapsed().as_secs_f64(),
            peak_rss_mb: peak_rss_mb(),
        };
        if let Some(w) = writer.as_mut() {
            w.epoch(&row)?;
            println!(
                "epoch {epoch}/{}: train loss {:.4}, test loss {:.4}, test accuracy {:.2}%, {:.1} s, {:.0} img/s",
                cfg.train.epochs, row.train_loss, row.test_loss, row.test_accuracy, row.epoch_seconds, row.samples_per_second
            );
        }
        last = Some(row);
        epochs_done = epoch;
    }
    let last = last.context("no epoch ran")?;
    let peak = comm.all_gather_f64(peak_rss_mb());
    let summary = Summary {
        status: "completed".into(),
        strategy: strategy.as_str().into(),
        dataset: data.name.as_str().into(),
        model: cfg.model.preset.as_str().into(),
        world_size: replicas,
        stages: 1,
        replicas,
        threads_per_rank: tch::get_num_threads() as usize,
        epochs: epochs_done,
        steps: global_step,
        global_batch,
        batch_scope: yaml_name(&cfg.train.batch_scope),
        sync_mode: yaml_name(&cfg.sync.mode),
        parameters: net.parameter_count(),
        train_samples: n_train,
        test_samples: data.test.len(),
        train_seconds,
        samples_per_second: trained_samples as f64 / train_seconds,
        final_test_accuracy: last.test_accuracy,
        final_test_loss: last.test_loss,
        final_train_loss: last.train_loss,
        peak_rss_mb: peak,
        compute_seconds: compute.seconds,
        allreduce_seconds: allreduce.seconds,
        pipeline_wait_seconds: 0.0,
        seed: cfg.run.seed,
        config_hash: format!("{:016x}", cfg.hash()),
    };
    if let Some(w) = writer.as_ref() {
        let model_path = out_dir.join("model.safetensors");
        let tmp = out_dir.join("model.safetensors.tmp");
        net.save_safetensors(&tmp)?;
        std::fs::rename(&tmp, &model_path)?;
        w.summary(&summary)?;
        println!(
            "done: test accuracy {:.2}%, {:.1} s training, {:.0} img/s -> {}",
            summary.final_test_accuracy,
            summary.train_seconds,
            summary.samples_per_second,
            out_dir.display()
        );
    }
    Ok(summary)
}

/// The name a config enum value has in YAML (`per_rank`, `gradients`).
fn yaml_name<T: serde::Serialize>(v: &T) -> String {
    serde_yaml::to_string(v).unwrap_or_default().trim().to_string()
}

/// Model averaging (seed 004): every replica's weights replaced by the mean over replicas.
fn average_weights(buffer: &mut GradientBuffer, params: &[&Tensor], comm: &Comm) {
    buffer.gather_values(params);
    buffer.all_reduce_mean(comm);
    buffer.scatter_values(params);
}
