//! `partrain export RUN_DIR`: the run's net as PyTorch source (`model.py`, beside
//! `model.safetensors`), and `export_check.safetensors`: eight inputs and the logits partrain's
//! own net gives on them in eval mode, so that PyTorch's forward can be checked against it
//! (tests/pytorch_crosscheck.rs: within 1e-5).

use anyhow::{Context, Result};
use partrain::model::Net;
use partrain::util::atomic;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A finished run's folder (config.yaml and model.safetensors).
    pub run: PathBuf,
}

pub fn export(args: &ExportArgs) -> Result<()> {
    let dir = &args.run;
    let cfg = crate::cli::train::load_config(&dir.join(partrain::util::run_files::CONFIG), &[])?;
    let spec = cfg.net()?;
    let file = dir.join(partrain::util::run_files::MODEL);
    let named = Tensor::read_safetensors(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let net = Net::build(&spec.layers, 0..spec.layers.len(), 0);
    net.load_state(&named).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (is it this run's net, {}?)",
            file.display(),
            spec.label()
        )
    })?;
    atomic::write(
        &dir.join(partrain::util::run_files::MODEL_PY),
        partrain::netspec::pytorch::model_py(&spec).as_bytes(),
    )?;
    write_check(dir, &net, spec.input)?;
    println!(
        "{}: model.py ({}) and export_check.safetensors written; load with\n  \
         from model import Net; net = Net(); net.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))",
        dir.display(),
        spec.label()
    );
    Ok(())
}

/// Eight inputs drawn from a fixed seed and partrain's eval-mode logits on them.
fn write_check(dir: &Path, net: &Net, input: [i64; 3]) -> Result<()> {
    let x = {
        let _rng = partrain::util::torch_rng();
        tch::manual_seed(0);
        Tensor::randn([8, input[0], input[1], input[2]], (Kind::Float, tch::Device::Cpu))
    };
    let logits = tch::no_grad(|| net.forward(&x, false));
    let named = [("input".to_string(), x), ("logits".to_string(), logits)];
    atomic::write_with(&dir.join(partrain::util::run_files::EXPORT_CHECK), |tmp| {
        Tensor::write_safetensors(&named, tmp).with_context(|| format!("cannot write {}", tmp.display()))
    })
}
