//! The YAML run configuration: schema, `--set key=value` overrides and validation.
//!
//! Loading goes file -> YAML tree -> typed `Config` (unknown keys rejected) -> full tree with every
//! default filled in -> overrides applied (a key must already exist in that full tree) -> typed
//! `Config` again -> `validate()`. Everything is checked before any data is read or any rank talks.

use anyhow::{Context, Result};
use serde_yaml::Value;
use std::path::Path;

mod schema;
mod train_kinds;
mod validate;

pub use schema::*;
pub use train_kinds::*;

/// More threads than any node has cores: a typo, and libgomp would try to start them all (with
/// 100,000 the process overflowed its stack).
pub const MAX_THREADS_PER_RANK: usize = 4096;

/// Reads `path`, applies `overrides` (`key.path=value`) and validates the result.
pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config file {} cannot be read", path.display()))?;
    from_yaml_str(&text, overrides).with_context(|| format!("config file {}", path.display()))
}

/// The default config's `train` section with `sets` (`train.key=value`) applied: unit tests.
#[cfg(test)]
pub fn train_with(sets: &[&str]) -> TrainConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    from_yaml_str("", &sets).unwrap().train
}

pub fn from_yaml_str(text: &str, overrides: &[String]) -> Result<Config> {
    let tree: Value = serde_yaml::from_str(text).context("YAML syntax error")?;
    // Deserialising from the text (not the tree) keeps the field path in error messages.
    let cfg: Config = if tree.is_null() {
        Config::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let cfg = apply_overrides(cfg, overrides)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Applies `--set a.b=value` overrides. The key must name a field that exists in the schema.
pub fn apply_overrides(cfg: Config, overrides: &[String]) -> Result<Config> {
    if overrides.is_empty() {
        return Ok(cfg);
    }
    let mut tree = serde_yaml::to_value(&cfg)?;
    for item in overrides {
        let (key, raw) = item
            .split_once('=')
            .with_context(|| format!("--set {item}: expected key=value, e.g. train.epochs=3"))?;
        let value: Value = serde_yaml::from_str(raw)
            .with_context(|| format!("--set {key}: value `{raw}` is not valid YAML"))?;
        let parts: Vec<&str> = key.split('.').collect();
        let node = node_at(&mut tree, key, &parts, &value)?;
        *node = value;
        // Checked one override at a time so the message names the key with the bad value.
        serde_yaml::from_value::<Config>(tree.clone()).map_err(|e| anyhow::anyhow!("--set {key}: {e}"))?;
    }
    serde_yaml::from_value(tree).map_err(|e| anyhow::anyhow!("--set: {e}"))
}

/// The node `--set key` names. A key the schema has but leaves out of the resolved config at its
/// default (`skip_serializing_if`, e.g. `model.batchnorm_running`) is added when the schema
/// accepts it there; any other missing key is refused naming the keys that exist.
fn node_at<'a>(tree: &'a mut Value, key: &str, parts: &[&str], value: &Value) -> Result<&'a mut Value> {
    let omitted_here = {
        let mut probe = tree.clone();
        let leaf = parts.iter().try_fold(&mut probe, |node, part| {
            let map = node.as_mapping_mut()?;
            Some(map.entry(Value::from(*part)).or_insert(Value::Null))
        });
        leaf.map(|l| *l = value.clone()).is_some()
            && serde_yaml::from_value::<Config>(probe)
                .map_or_else(|e| !e.to_string().contains("unknown field"), |_| true)
    };
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        let map = node
            .as_mapping_mut()
            .with_context(|| format!("--set {key}: `{}` is not a section", parts[..i].join(".")))?;
        let known: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect();
        if i + 1 == parts.len() && omitted_here {
            map.entry(Value::from(*part)).or_insert(Value::Null);
        }
        node = map.get_mut(*part).with_context(|| {
            format!(
                "--set {key}: no such key `{part}`; known keys here: {}",
                known.join(", ")
            )
        })?;
    }
    Ok(node)
}

impl Config {
    /// The net to train: `model.layers` read against the data's image shape, or the preset
    /// (mnist_cnn when neither is given), whose layer sizes are made for its own data set's images.
    pub fn net(&self) -> Result<crate::netspec::NetSpec> {
        let input = self.data.dataset.image_shape();
        match (&self.model.layers, self.model.preset) {
            (Some(_), Some(p)) => anyhow::bail!(
                "model: both `preset: {}` and `layers` are given; keep one (a preset is a named list of layers)",
                p.as_str()
            ),
            (Some(v), None) => {
                let layers = crate::netspec::parse_layers(v, input, 10).map_err(anyhow::Error::msg)?;
                Ok(crate::netspec::NetSpec::new("custom", layers, input))
            }
            (None, preset) => {
                let preset = preset.unwrap_or(Preset::MnistCnn);
                let want = preset.native_dataset().image_shape();
                if want != input {
                    anyhow::bail!(
                        "model.preset: {} expects {:?} images but data.dataset {} has {:?}",
                        preset.as_str(),
                        want,
                        self.data.dataset.as_str(),
                        input
                    );
                }
                let layers = crate::netspec::presets::layers(preset.as_str(), self.model.dropout);
                Ok(crate::netspec::NetSpec::new(preset.as_str(), layers, input))
            }
        }
    }

    /// The hash a checkpoint records: the config less what may change between a run and its
    /// resumption (how long to train, the MPI deadline, checkpoint frequency, tracing).
    pub fn resume_hash(&self) -> u64 {
        let mut c = self.clone();
        // A cosine decay ends with train.epochs: its rates depend on it.
        if c.train.lr_schedule != LrScheduleKind::Cosine {
            c.train.epochs = 0;
        }
        c.train.max_steps = None;
        c.checkpoint = CheckpointConfig::default();
        c.run.trace = false;
        c.hash()
    }

    /// A stable hash of the resolved config, compared across ranks at start-up.
    /// `data.dir` is left out: nodes may mount the data at different paths; the data's content
    /// is compared separately (`Dataset::fingerprint`).
    pub fn hash(&self) -> u64 {
        let mut c = self.clone();
        c.data.dir = None;
        // Deadlines may differ between ranks and between a run and its resumption.
        c.parallel.timeout_s = 0.0;
        c.parallel.warn_s = 0.0;
        c.parallel.eval_timeout_s = 0.0;
        c.parallel.checkpoint_timeout_s = 0.0;
        let text = serde_yaml::to_string(&c).expect("config serialises");
        crate::util::fnv1a(text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sets: &[&str]) -> String {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        format!("{:#}", from_yaml_str(text, &sets).unwrap_err())
    }

    #[test]
    fn defaults_are_seed_001() {
        let c = from_yaml_str("", &[]).unwrap();
        assert_eq!(c.train.batch_size, 64);
        assert_eq!(c.train.lr, 0.01);
        assert_eq!(c.train.momentum, 0.9);
        assert_eq!(c.train.epochs, 10);
        assert_eq!(c.data.dir(), "data/mnist");
    }

    #[test]
    fn overrides_apply_and_parse_types() {
        let c = from_yaml_str(
            "train: {epochs: 10}\n",
            &[
                "train.epochs=3".into(),
                "data.train_limit=500".into(),
                "model.dropout=0".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.data.train_limit, Some(500));
        assert_eq!(c.model.dropout, 0.0);
    }

    #[test]
    fn unknown_key_is_named() {
        assert!(err("train: {epoch: 3}\n", &[]).contains("epoch"));
        assert!(err("", &["train.epoch=3"]).contains("no such key `epoch`"));
        assert!(err("", &["trian.epochs=3"]).contains("trian"));
        // A key left out of the resolved config at its default is still a key.
        assert!(err("", &["model.batchnorm_runing=per_forward"]).contains("no such key `batchnorm_runing`"));
        let e = err("", &["model.batchnorm_running=sometimes"]);
        assert!(
            e.contains("--set model.batchnorm_running") && e.contains("per_forward"),
            "{e}"
        );
        let c = from_yaml_str("", &["model.batchnorm_running=per_forward".to_string()]).unwrap();
        assert_eq!(c.model.batchnorm_running, BatchNormRunning::PerForward);
        assert_ne!(c.hash(), from_yaml_str("", &[]).unwrap().hash());
    }

    #[test]
    fn wrong_type_names_field() {
        let e = err("train:\n  epochs: ten\n", &[]);
        assert!(e.contains("train.epochs"), "{e}");
    }

    #[test]
    fn bad_values_rejected() {
        assert!(err("train: {epochs: 0}\n", &[]).contains("train.epochs"));
        assert!(err("train: {batch_size: 0}\n", &[]).contains("train.batch_size"));
        assert!(err("train: {lr: -0.1}\n", &[]).contains("train.lr"));
        assert!(err("train: {lr: 0}\n", &[]).contains("train.lr"));
        assert!(err("", &["train.epochs=-1"]).contains("train.epochs"));
        assert!(err("data: {dataset: imagenet}\n", &[]).contains("imagenet"));
        assert!(err("model: {preset: resnet}\n", &[]).contains("resnet"));
        assert!(err("model: {preset: cifar_cnn}\n", &[]).contains("model.preset"));
    }

    #[test]
    fn pipeline_settings_validated() {
        assert!(err("parallel: {stages: 3, stage_boundaries: [3, 3]}\n", &[]).contains("empty"));
        assert!(err("parallel: {stages: 3, stage_boundaries: [7, 3]}\n", &[]).contains("not increasing"));
        assert!(err("parallel: {stages: 2, stage_boundaries: [0]}\n", &[]).contains("empty"));
        assert!(err("parallel: {stages: 3, stage_boundaries: [4]}\n", &[]).contains("need 2"));
        assert!(err("parallel: {schedule: pipedream}\n", &[]).contains("parallel.schedule"));
        assert!(err("parallel: {stage_boundaries: balanced}\n", &[]).contains("auto"));
        let c = from_yaml_str("parallel: {stages: 3, stage_boundaries: [3, 7]}\n", &[]).unwrap();
        assert_eq!(c.parallel.stage_boundaries, StageBoundaries::List(vec![3, 7]));
    }

    #[test]
    fn yaml_syntax_error() {
        assert!(err("train: {epochs: 3\n", &[]).contains("YAML syntax"));
    }

    #[test]
    fn hash_changes_with_config() {
        let a = from_yaml_str("", &[]).unwrap();
        let b = from_yaml_str("", &["train.lr=0.02".into()]).unwrap();
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash(), from_yaml_str("", &[]).unwrap().hash());
    }
}
