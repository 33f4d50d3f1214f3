//! The net built from its spec (`crate::netspec`): parameters and batch-norm buffers, forward in
//! train and eval mode, the fused first block where its conditions hold. The seed nets are presets
//! of the same spec; parameter names follow a PyTorch `state_dict` of the same net (`conv1.weight`,
//! `fc2.bias`, ...), so `model.safetensors` loads into PyTorch with `strict=True`.
//!
//! Expected accuracy (seed-001 settings: SGD lr 0.01, momentum 0.9, batch 64):
//! mnist_cnn reaches >= 98.5% MNIST test accuracy after 3 epochs and >= 99.0% after 10;
//! on Fashion-MNIST >= 90% after 10 epochs.

pub mod fused;
pub mod native;

use crate::config::Preset;

mod compute;
mod layer;
mod net;

pub use crate::netspec::{
    block_starts, describe, macs_costs, stage_shapes, state_entries, training_flop_per_image, LayerInfo,
    LayerKind, LayerSpec, NetSpec, StateEntry,
};
pub use compute::{dense, is_channels_last, to_channels_last, Compute};
pub use layer::Layer;
pub use net::{measure_layer_seconds, median_seconds, Net, ParamBlock};

/// The preset's layers (`crate::netspec::presets`). `dropout = 0` removes the dropout layer's
/// effect but keeps it in the list (so layer indices, and therefore stage boundaries, do not
/// depend on it).
pub fn preset_layers(preset: Preset, dropout: f64) -> Vec<LayerSpec> {
    crate::netspec::presets::layers(preset.as_str(), dropout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn parameter_counts_match_seeds() {
        let m = describe(&preset_layers(Preset::MnistCnn, 0.25), [1, 28, 28]);
        assert_eq!(m.iter().map(|l| l.parameters).sum::<i64>(), 421_642);
        assert_eq!(m.last().unwrap().output_shape, vec![10]);
        let c = describe(&preset_layers(Preset::CifarCnn, 0.0), [3, 32, 32]);
        assert_eq!(c.iter().map(|l| l.parameters).sum::<i64>(), 1_070_794);
        // DESIGN: ~4.24 M MACs per MNIST image, 85% in conv2; ~6.65 M for CIFAR.
        let macs: i64 = m.iter().map(|l| l.macs).sum();
        assert!((4_200_000..4_300_000).contains(&macs), "{macs}");
        let cmacs: i64 = c.iter().map(|l| l.macs).sum();
        assert!((6_600_000..6_700_000).contains(&cmacs), "{cmacs}");
        // 25.0 MFLOP per training image: forward, weight gradients, and input gradients for all
        // but conv1 (225,792 multiply-adds), times 2.
        assert_eq!(
            training_flop_per_image(&preset_layers(Preset::MnistCnn, 0.25), [1, 28, 28]),
            2 * (3 * 4_241_152 - 225_792)
        );
    }

    #[test]
    fn built_net_matches_spec_and_stage_slices_match_whole() {
        let specs = preset_layers(Preset::MnistCnn, 0.0);
        let net = Net::build(&specs, 0..specs.len(), 5);
        assert_eq!(net.parameter_count(), 421_642);
        let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "conv1.weight",
                "conv1.bias",
                "conv2.weight",
                "conv2.bias",
                "fc1.weight",
                "fc1.bias",
                "fc2.weight",
                "fc2.bias"
            ]
        );
        let blocks: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = net
            .param_blocks()
            .into_iter()
            .map(|b| (b.layers, b.params))
            .collect();
        assert_eq!(
            blocks,
            vec![(0..3, 0..2), (3..7, 2..4), (7..10, 4..6), (10..11, 6..8)]
        );
        let tail = Net::build(&specs, 7..specs.len(), 5);
        assert!(tail.layers[0].params[0].equal(&net.layers[7].params[0]));
        let y = net.forward(
            &Tensor::zeros([2, 1, 28, 28], (Kind::Float, tch::Device::Cpu)),
            false,
        );
        assert_eq!(y.size(), vec![2, 10]);
    }

    /// conv -> batchnorm -> pooled linear: the batch-norm layer and its running statistics.
    fn bn_net() -> Net {
        let yaml = "[{conv: {out: 3, k: 3, pad: 1}}, {batchnorm: {}}, {avgpool: {global: true}}, \
                    {flatten: {}}, {linear: {out: 10}}]";
        let specs =
            crate::netspec::parse_layers(&serde_yaml::from_str(yaml).unwrap(), [1, 6, 6], 10).unwrap();
        Net::build(&specs, 0..specs.len(), 3)
    }

    fn running(net: &Net) -> Vec<f32> {
        let bn = &net.layers[1].buffers;
        Vec::<f32>::try_from(&Tensor::cat(&[&bn[0], &bn[1]], 0)).unwrap()
    }

    #[test]
    fn per_forward_running_statistics_are_pytorchs_and_split_over_replicas() {
        use crate::config::BatchNormRunning::{PerForward, StepMean};
        let (whole, first, second, step) = (bn_net(), bn_net(), bn_net(), bn_net());
        let xs: Vec<Tensor> = {
            let _rng = crate::util::torch_rng();
            tch::manual_seed(11);
            (0..4)
                .map(|_| Tensor::randn([5, 1, 6, 6], (Kind::Float, tch::Device::Cpu)) * 2.0 + 1.0)
                .collect()
        };
        // PyTorch's rule: every training forward moves the running statistics (momentum 0.1).
        let (mean, var) = (
            Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)),
            Tensor::ones([3], (Kind::Float, tch::Device::Cpu)),
        );
        let mut means = vec![];
        for x in &xs {
            let h = whole.forward_layers(x, true, 0..1);
            let _ = h.batch_norm(
                None::<&Tensor>,
                None::<&Tensor>,
                Some(&mean),
                Some(&var),
                true,
                0.1,
                1e-5,
                false,
            );
            let (v, m) = h.var_mean_correction([0, 2, 3].as_slice(), 1, false);
            means.push(Vec::<f32>::try_from(&Tensor::cat(&[m, v], 0)).unwrap());
            for net in [&whole, &step] {
                let _ = net.forward(x, true);
            }
        }
        let pytorch = Vec::<f32>::try_from(&Tensor::cat(&[&mean, &var], 0)).unwrap();
        // One replica with 4 micro-batches, and 2 replicas with 2 each, summed.
        let s = whole.take_batch_stats().unwrap();
        whole.apply_batch_stats(PerForward, &s.share(PerForward, 0, 1), 1, s.forwards);
        for x in &xs[..2] {
            let _ = first.forward(x, true);
        }
        for x in &xs[2..] {
            let _ = second.forward(x, true);
        }
        let (a, b) = (
            first.take_batch_stats().unwrap(),
            second.take_batch_stats().unwrap(),
        );
        let summed: Vec<f64> = a
            .share(PerForward, 0, 2)
            .iter()
            .zip(b.share(PerForward, 1, 2))
            .map(|(x, y)| x + y)
            .collect();
        first.apply_batch_stats(PerForward, &summed, 2, 2);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(
            close(&running(&whole), &pytorch),
            "{:?} vs {pytorch:?}",
            running(&whole)
        );
        assert!(
            close(&running(&first), &pytorch),
            "{:?} vs {pytorch:?}",
            running(&first)
        );
        // step_mean: one move, by the mean of the 4 micro-batches' statistics.
        let s = step.take_batch_stats().unwrap();
        step.apply_batch_stats(StepMean, &s.share(StepMean, 0, 1), 1, s.forwards);
        let expect: Vec<f32> = (0..6)
            .map(|i| {
                0.9 * [0.0, 0.0, 0.0, 1.0, 1.0, 1.0][i] + 0.1 * means.iter().map(|m| m[i]).sum::<f32>() / 4.0
            })
            .collect();
        assert!(
            close(&running(&step), &expect),
            "{:?} vs {expect:?}",
            running(&step)
        );
        let tracked = |n: &Net| f32::try_from(&n.layers[1].buffers[2]).unwrap();
        assert_eq!(
            (tracked(&whole), tracked(&first), tracked(&step)),
            (4.0, 4.0, 1.0)
        );
    }
}
