//! Checkpoints for exact resume: `checkpoint.safetensors` in the run folder holds every weight
//! (all stages, gathered on rank 0), every SGD momentum buffer (`momentum.<name>`), and the
//! position in training (`meta.*`). The data order and dropout masks are derived from
//! (seed, epoch, step), so the position is the whole RNG state: a resumed run takes exactly the
//! steps the uninterrupted run would have taken.
//!
//! Written atomically: a temporary file, fsync, rename, fsync of the folder. A crash while
//! writing leaves the previous checkpoint intact.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const FILE: &str = "checkpoint.safetensors";

/// Where training stands when the checkpoint is written.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    pub config_hash: u64,
}

pub struct Checkpoint {
    pub position: Position,
    /// `name` -> weight, `momentum.name` -> momentum buffer.
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
        let p = &self.position;
        let ints = Tensor::from_slice(&[
            p.epoch as i64,
            p.step_in_epoch as i64,
            p.global_step as i64,
            p.trained_samples as i64,
            p.epoch_loss_count as i64,
            p.epoch_samples as i64,
            p.config_hash as i64,
        ]);
        let floats = Tensor::from_slice(&[p.train_seconds, p.epoch_loss_sum, p.epoch_seconds]);
        let mut all: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), crate::model::dense(t)))
            .collect();
        all.push(("meta.ints".into(), ints));
        all.push(("meta.floats".into(), floats));
        let target = path(run_dir);
        let tmp = run_dir.join(format!("{FILE}.tmp"));
        Tensor::write_safetensors(&all, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
        if let Ok(dir) = std::fs::File::open(run_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
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
        let take = |tensors: &mut Vec<(String, Tensor)>, name: &str| -> Result<Tensor> {
            let i = tensors
                .iter()
                .position(|(n, _)| n == name)
                .with_context(|| format!("{}: `{name}` missing (not a partrain checkpoint)", p.display()))?;
            Ok(tensors.remove(i).1)
        };
        let ints: Vec<i64> = Vec::try_from(take(&mut tensors, "meta.ints")?.to_kind(Kind::Int64))?;
        let floats: Vec<f64> = Vec::try_from(take(&mut tensors, "meta.floats")?.to_kind(Kind::Double))?;
        if ints.len() != 7 || floats.len() != 3 {
            bail!("{}: unexpected checkpoint layout", p.display());
        }
        let position = Position {
            epoch: ints[0] as usize,
            step_in_epoch: ints[1] as usize,
            global_step: ints[2] as usize,
            trained_samples: ints[3] as usize,
            epoch_loss_count: ints[4] as usize,
            epoch_samples: ints[5] as usize,
            config_hash: ints[6] as u64,
            train_seconds: floats[0],
            epoch_loss_sum: floats[1],
            epoch_seconds: floats[2],
        };
        Ok(Checkpoint { position, tensors })
    }

    /// Copies `name` (and its momentum) into `param` (and `momentum`).
    pub fn restore(&self, name: &str, param: &Tensor, momentum: &Tensor) -> Result<()> {
        for (key, dst) in [(name.to_string(), param), (format!("momentum.{name}"), momentum)] {
            let (_, src) = self
                .tensors
                .iter()
                .find(|(n, _)| *n == key)
                .with_context(|| format!("checkpoint has no `{key}`"))?;
            if src.size() != dst.size() {
                bail!(
                    "checkpoint `{key}` has shape {:?}, expected {:?}",
                    src.size(),
                    dst.size()
                );
            }
            tch::no_grad(|| dst.shallow_clone().copy_(src));
        }
        Ok(())
    }
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
            epoch_seconds: 0.25,
            config_hash: u64::MAX - 5,
        };
        let w = Tensor::from_slice(&[1.0f32, 2.0]);
        let ck = Checkpoint {
            position,
            tensors: vec![
                ("fc.weight".into(), w.shallow_clone()),
                ("momentum.fc.weight".into(), w.shallow_clone()),
            ],
        };
        ck.save(&dir).unwrap();
        let back = Checkpoint::load(&dir).unwrap();
        assert_eq!(back.position, position);
        let (p, m) = (
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
        );
        back.restore("fc.weight", &p, &m).unwrap();
        assert!(p.equal(&w) && m.equal(&w));
        // A NaN weight is refused and the good checkpoint stays.
        let bad = Checkpoint {
            position,
            tensors: vec![("fc.weight".into(), Tensor::from_slice(&[f32::NAN]))],
        };
        assert!(bad.save(&dir).unwrap_err().to_string().contains("NaN"));
        assert_eq!(Checkpoint::load(&dir).unwrap().position, position);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
