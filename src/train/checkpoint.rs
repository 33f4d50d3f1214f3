//! Checkpoints for exact resume: `checkpoint.safetensors` in the run folder holds every weight
//! (all stages, gathered on rank 0), the optimizer's named state (`momentum.<name>`, or
//! `exp_avg.<name>` and `exp_avg_sq.<name>`), and a JSON
//! document `meta.json` (stored as a u8 tensor, read by name): the format and its version, the
//! config hash, the position in training and the layout it was trained with. The data order and
//! dropout masks are derived from (seed, epoch, step), so the position is the whole RNG state: a
//! resumed run takes exactly the steps the uninterrupted run would have taken.
//!
//! Written atomically: a temporary file, fsync, rename, fsync of the folder. A crash while
//! writing leaves the previous checkpoint intact.

use crate::comm::{Comm, Tag};
use crate::plan::{Layout, Plan};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const FILE: &str = crate::util::run_files::CHECKPOINT;
/// What `meta.json`'s `format` field says.
pub const FORMAT: &str = "partrain-checkpoint";
/// Version 1 (before 2026-11-27) kept its metadata in two unnamed number arrays (`meta.ints`,
/// `meta.floats`) and recorded no layout; version 2 is `meta.json`; version 3 (2026-12-02) adds
/// the noise-scale averages and the time-to-target books to the position.
pub const VERSION: u32 = 3;
const META: &str = "meta.json";

/// Where training stands when the checkpoint is written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Steps of that epoch already taken; equal to the steps per epoch once the epoch is complete.
    pub step_in_epoch: usize,
    pub global_step: usize,
    pub trained_samples: usize,
    pub train_seconds: f64,
    /// The epoch's running loss sum and count (so a mid-epoch resume reports the same loss).
    pub epoch_loss_sum: f64,
    pub epoch_loss_count: usize,
    pub epoch_samples: usize,
    pub epoch_seconds: f64,
    /// The smoothed gradient noise scale estimates.
    pub noise: crate::train::noise_scale::NoiseState,
    /// The run clock, evaluations and the first reach of the target.
    pub target: crate::train::target::TargetBooks,
}

/// The checkpoint's `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub version: u32,
    /// `Config::resume_hash` in hex: the config less what may change on resume.
    pub config_hash: String,
    pub position: Position,
    pub layout: Layout,
    /// The net trained, `name (net <id>)` (`crate::netspec::NetSpec::label`); absent before
    /// nets had identities (a minor addition: version 3 files are read with or without it).
    #[serde(default)]
    pub net: Option<String>,
}

impl Meta {
    pub fn new(config_hash: u64, position: Position, layout: Layout, net: String) -> Meta {
        Meta {
            format: FORMAT.into(),
            version: VERSION,
            config_hash: format!("{config_hash:016x}"),
            position,
            layout,
            net: Some(net),
        }
    }
}

pub struct Checkpoint {
    pub meta: Meta,
    /// `name` -> weight, `<state>.name` -> the optimizer's state of that name (`momentum`,
    /// `exp_avg`, ...), and the averaging's state under its own prefix.
    pub tensors: Vec<(String, Tensor)>,
}

pub fn path(run_dir: &Path) -> PathBuf {
    run_dir.join(FILE)
}

impl Checkpoint {
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        for (name, t) in &self.tensors {
            let finite = t.isfinite().all().int64_value(&[]) == 1;
            if !finite {
                bail!("checkpoint not written: `{name}` holds NaN or infinite values (the previous checkpoint is kept)");
            }
        }
        let mut all: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), crate::model::dense(t)))
            .collect();
        let meta = serde_json::to_vec(&self.meta)?;
        all.push((META.into(), Tensor::from_slice(&meta)));
        crate::util::atomic::write_with(&path(run_dir), |tmp| {
            Tensor::write_safetensors(&all, tmp).with_context(|| format!("cannot write {}", tmp.display()))
        })
    }

    pub fn load(run_dir: &Path) -> Result<Checkpoint> {
        let p = path(run_dir);
        if !p.exists() {
            bail!(
                "--resume: {} has no checkpoint ({FILE}); it cannot be resumed",
                run_dir.display()
            );
        }
        let mut tensors = Tensor::read_safetensors(&p)
            .with_context(|| format!("--resume: {} is not a readable checkpoint", p.display()))?;
        let Some(i) = tensors.iter().position(|(n, _)| n == META) else {
            if tensors.iter().any(|(n, _)| n == "meta.ints") {
                bail!(
                    "--resume: {} is a version 1 checkpoint (an older partrain); this partrain reads version {VERSION} \
                     only: start the run again",
                    p.display()
                );
            }
            bail!(
                "--resume: {}: `{META}` missing (not a partrain checkpoint)",
                p.display()
            );
        };
        let bytes: Vec<u8> = Vec::try_from(tensors.remove(i).1.to_kind(Kind::Uint8))?;
        let meta = parse_meta(&bytes).with_context(|| format!("--resume: {}", p.display()))?;
        Ok(Checkpoint { meta, tensors })
    }

    /// Whether any tensor's name starts with `prefix` (state a run of some settings saves).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors.iter().any(|(n, _)| n.starts_with(prefix))
    }

    /// Copies the tensor `key` into `dst` (same shape).
    pub fn copy_into(&self, key: &str, dst: &Tensor) -> Result<()> {
        let (_, src) = self
            .tensors
            .iter()
            .find(|(n, _)| n == key)
            .with_context(|| format!("checkpoint has no `{key}`"))?;
        if src.size() != dst.size() {
            bail!(
                "checkpoint `{key}` has shape {:?}, expected {:?}",
                src.size(),
                dst.size()
            );
        }
        tch::no_grad(|| dst.shallow_clone().copy_(src));
        Ok(())
    }
}

/// `meta.json`, its format and version checked by name before anything else is read.
pub fn parse_meta(bytes: &[u8]) -> Result<Meta> {
    let doc: serde_json::Value = serde_json::from_slice(bytes).context("`meta.json` is not JSON")?;
    // Versions 1 and 2 recorded neither the layout nor the target's books: 3 is the oldest read.
    let versions = crate::util::version::Versioned {
        format: FORMAT,
        oldest: 3,
        current: VERSION,
        unnamed: None,
    };
    if let Err(e) = versions.check(&doc) {
        bail!("`meta.json`: {e}");
    }
    serde_json::from_value(doc)
        .with_context(|| format!("`meta.json` does not match checkpoint format version {VERSION}"))
}

/// Collects per-parameter tensors (and with `buffers`, the batch-norm buffers too) on rank 0:
/// `own` is this rank's share in state_dict order, named `prefix` + state_dict name. With one
/// stage rank 0 already holds all of them; in a pipeline the first replica's other stages send
/// theirs (every rank calls this at the same point).
pub fn gather_to_root(
    own: Vec<(String, Tensor)>,
    (prefix, buffers): (&str, bool),
    plan: &Plan,
    world: &Comm,
) -> Vec<(String, Tensor)> {
    let t = plan.topology;
    if t.replica == 0 && t.stage > 0 {
        let tensors: Vec<&Tensor> = own.iter().map(|(_, t)| t).collect();
        world.send(0, Tag::Gather, &crate::train::grads::flatten_values(&tensors));
    }
    if !world.is_root() {
        return Vec::new();
    }
    let mut named = own;
    for (stage, layers) in plan.split.ranges.iter().enumerate().skip(1) {
        let shapes: Vec<(String, Vec<i64>)> = crate::model::state_entries(&plan.layers[layers.clone()])
            .into_iter()
            .filter(|e| buffers || !e.buffer)
            .map(|e| (format!("{prefix}{}", e.name), e.shape))
            .collect();
        let total: i64 = shapes.iter().map(|(_, s)| s.iter().product::<i64>()).sum();
        let mut flat = vec![0f32; total as usize];
        world.recv(t.rank_of(0, stage), Tag::Gather, &mut flat);
        let mut off = 0usize;
        for (name, shape) in shapes {
            let n = shape.iter().product::<i64>() as usize;
            named.push((name, Tensor::from_slice(&flat[off..off + n]).view(&shape[..])));
            off += n;
        }
    }
    named
}

/// Collects state each rank keeps for itself (every rank names the same tensors, whose lengths
/// may differ by stage) on rank 0 as `<name>.rank<R>`, flat; other ranks get an empty list.
pub fn gather_rank_state(own: Vec<(&'static str, Tensor)>, world: &Comm) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (name, t) in own {
        let n = t.numel();
        let lens = world.all_gather(n as u64);
        if !world.is_root() {
            world.send(0, Tag::Gather, &crate::train::grads::flatten_values(&[&t]));
            continue;
        }
        out.push((format!("{name}.rank0"), t.detach().copy().view([-1])));
        for (r, &len) in lens.iter().enumerate().skip(1) {
            let mut buf = vec![0f32; len as usize];
            world.recv(r, Tag::Gather, &mut buf);
            out.push((format!("{name}.rank{r}"), Tensor::from_slice(&buf)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuses_non_finite() {
        let dir = std::env::temp_dir().join(format!("partrain-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let position = Position {
            epoch: 2,
            step_in_epoch: 7,
            global_step: 57,
            trained_samples: 3648,
            train_seconds: 1.5,
            epoch_loss_sum: 0.123456789,
            epoch_loss_count: 7,
            epoch_samples: 448,
            epoch_seconds: 0.1 + 0.2,
            noise: crate::train::noise_scale::NoiseState {
                g2: 0.1 + 0.7,
                s: 1e-3 / 3.0,
                measurements: 57,
            },
            target: crate::train::target::TargetBooks {
                run_seconds: 2.0 / 3.0,
                eval_seconds: 0.25,
                evaluations: 4,
                best_accuracy: 99.01,
                reached: Some(crate::train::target::Reached {
                    seconds: 1.0 / 7.0,
                    step: 50,
                    epochs: 0.9,
                    images: 3200,
                    accuracy: 99.01,
                    noise_scale: Some(1234.5),
                }),
            },
        };
        let layout = Layout {
            world_size: 4,
            stages: 2,
            replicas: 2,
            global_batch: 128,
            stage_boundaries: vec![4],
            samples_per_epoch: 3200,
        };
        let meta = Meta::new(u64::MAX - 5, position, layout, "custom (net 0123456789ab)".into());
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let ck = Checkpoint {
            meta: meta.clone(),
            tensors: vec![
                ("fc.weight".into(), w.shallow_clone()),
                ("momentum.fc.weight".into(), w.shallow_clone()),
            ],
        };
        ck.save(&dir).unwrap();
        let back = Checkpoint::load(&dir).unwrap();
        assert_eq!(back.meta, meta, "every field, f64s included, round-trips exactly");
        let (p, m) = (
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        );
        back.copy_into("fc.weight", &p).unwrap();
        back.copy_into("momentum.fc.weight", &m).unwrap();
        assert!(p.equal(&w) && m.equal(&w));
        // A NaN weight is refused and the good checkpoint stays.
        let bad = Checkpoint {
            meta: meta.clone(),
            tensors: vec![("fc.weight".into(), Tensor::from_slice(&[f32::NAN]))],
        };
        assert!(bad.save(&dir).unwrap_err().to_string().contains("NaN"));
        assert_eq!(Checkpoint::load(&dir).unwrap().meta, meta);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn other_formats_and_versions_are_refused_by_name() {
        let meta = |v: &str| parse_meta(v.as_bytes()).unwrap_err().to_string();
        assert!(meta(r#"{"format": "partrain-checkpoint", "version": 1}"#).contains("version 1"));
        assert!(meta(r#"{"format": "partrain-checkpoint", "version": 2}"#).contains("version 2"));
        assert!(meta(r#"{"format": "partrain-checkpoint", "version": 4}"#).contains("newer partrain"));
        assert!(meta(r#"{"format": "pytorch", "version": 3}"#).contains("expected `partrain-checkpoint`"));
        assert!(meta("not json").contains("not JSON"));
    }
}
