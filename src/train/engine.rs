//! The one engine: runs this rank's stage of the plan for a training step and for evaluation.
//! Serial is 1 stage x 1 replica, dp 1 stage x R replicas, hybrid S stages x R replicas; on one
//! stage, several micro-batches are gradient accumulation (the same step computed in pieces).
//!
//! A step runs the stage's action list from the schedule (`F3` = forward of micro-batch 3, `B3`
//! its backward). Activations (forward) and their gradients (backward) travel between
//! neighbouring stages as f32 buffers tagged with the micro-batch. The last stage scales each
//! micro-batch's mean loss by 1/M, so the gradients accumulated over the M micro-batches equal
//! the full batch's gradient.

use crate::comm::{AsyncSends, Comm, ReduceWorker, Tag};
use crate::data::Split;
use crate::model::fused;
use crate::model::{LayerSpec, Net, ParamBlock};
use crate::plan::{Plan, Topology};
use crate::schedule::Action;
use crate::train::grads::GradientBuffer;
use crate::train::noise_scale::MicroBatchNorms;
use crate::train::timers::StepTimers;
use crate::util::mix_seed;
use tch::{Kind, Tensor};

/// One replica's share of a training step.
pub struct StepBatch<'a> {
    /// Indices of this replica's images in the training split.
    pub shard: &'a [i64],
    /// Seed of the step's dropout masks (derived from seed, epoch, step and replica).
    pub seed: u64,
    /// Test-only fault injection: poison the input so that the loss is NaN.
    pub poison: bool,
}

/// Sums a replica's evaluation contributes (zeros on all but the last stage).
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalSums {
    pub loss_sum: f64,
    pub correct: f64,
    pub count: f64,
}

pub struct Engine {
    pub net: Net,
    topo: Topology,
    actions: Vec<Action>,
    micro_batches: usize,
    /// Per-sample shape of this stage's input and output.
    in_shape: Vec<i64>,
    out_shape: Vec<i64>,
    /// Sum over this stage's layers of per-sample output elements (what autograd keeps alive).
    activation_elems_per_sample: i64,
    /// Send buffers, one per send of a step, reused every step.
    arena: Vec<Vec<f32>>,
    /// On the stage that reads images: the padding of its first conv when that block (conv ->
    /// ReLU -> 2x2 max-pool) runs fused outside autograd, and one set of buffers per micro-batch.
    fused: Option<i64>,
    fused_buffers: Vec<fused::Buffers>,
    recv_buf: Vec<f32>,
    /// Largest number of bytes of activations held at once (micro-batches in flight x their size).
    pub peak_activation_bytes: i64,
}

/// (input shape, output shape, activation elements) per sample of `range` of `layers`.
fn stage_shapes(
    layers: &[LayerSpec],
    range: std::ops::Range<usize>,
    input: [i64; 3],
) -> (Vec<i64>, Vec<i64>, i64) {
    let mut shape = input.to_vec();
    let mut in_shape = shape.clone();
    let mut elems = 0;
    for (i, s) in layers.iter().enumerate().take(range.end) {
        if i == range.start {
            in_shape = shape.clone();
        }
        shape = s.kind.output_shape(&shape);
        if range.contains(&i) {
            elems += shape.iter().product::<i64>();
        }
    }
    (in_shape, shape, elems)
}

/// The dropout seed of micro-batch `i` of a step. Micro-batch 0 keeps the step's own seed, so a
/// step of one micro-batch draws the dropout masks that serial and dp runs drew before
/// micro-batches existed (their weights stay bit-identical to earlier versions).
fn micro_seed(step_seed: u64, i: usize) -> i64 {
    let seed = if i == 0 {
        step_seed
    } else {
        mix_seed(&[step_seed, i as u64])
    };
    (seed >> 1) as i64
}

fn with_batch(batch: i64, per_sample: &[i64]) -> Vec<i64> {
    std::iter::once(batch).chain(per_sample.iter().copied()).collect()
}

impl Engine {
    /// This rank's stage of `plan`, its weights initialised from `seed`.
    pub fn new(plan: &Plan, seed: u64) -> Engine {
        let range = plan.stage_layers();
        let (in_shape, out_shape, activation_elems_per_sample) =
            stage_shapes(&plan.layers, range.clone(), plan.input_shape);
        let mut net = Net::build(&plan.layers, range, seed);
        net.set_compute(plan.compute);
        let m = plan.batches.micro_batches;
        let fused = if plan.topology.prev().is_none() {
            net.fused_first_block()
        } else {
            None
        };
        Engine {
            fused,
            fused_buffers: (0..m).map(|_| fused::Buffers::default()).collect(),
            net,
            topo: plan.topology,
            actions: plan.schedule.actions[plan.topology.stage].clone(),
            micro_batches: m,
            in_shape,
            out_shape,
            activation_elems_per_sample,
            arena: vec![Vec::new(); 2 * m],
            recv_buf: Vec::new(),
            peak_activation_bytes: 0,
        }
    }

    /// Runs one training step's actions on `batch`. Returns the replica's mean loss on the last
    /// stage (None elsewhere). Gradients accumulate in the stage's parameters (the flat buffer).
    pub fn train_step(
        &mut self,
        world: &Comm,
        data: &Split,
        batch: &StepBatch,
        timers: &mut StepTimers,
        norms: Option<&mut MicroBatchNorms>,
    ) -> Option<f64> {
        let m = self.micro_batches;
        let b = (batch.shard.len() / m) as i64;
        let mut step = StageStep {
            net: &self.net,
            fused: self.fused,
            fused_buffers: &mut self.fused_buffers,
            fused_saved: (0..m).map(|_| None).collect(),
            topo: self.topo,
            m,
            b,
            in_shape: with_batch(b, &self.in_shape),
            out_elems: (b * self.out_shape.iter().product::<i64>()) as usize,
            data,
            batch,
            recv_buf: &mut self.recv_buf,
            timers,
            saved: (0..m).map(|_| None).collect(),
            loss_sum: 0.0,
            in_flight: 0,
            peak: self.peak_activation_bytes,
            act_bytes: 4 * b * self.activation_elems_per_sample,
            norms,
        };
        let actions = &self.actions;
        world.with_async_sends(&mut self.arena, |tx| {
            for &action in actions {
                match action {
                    Action::Forward(i) => step.forward(i, tx),
                    Action::Backward(i) => step.backward(i, tx),
                }
            }
        });
        self.peak_activation_bytes = step.peak;
        self.topo.is_last().then(|| step.loss_sum / m as f64)
    }

    /// One stage, one micro-batch, with the gradient averaging overlapped: forward by layer
    /// blocks, then backward block by block from the loss; as soon as a block's parameter
    /// gradients are complete they go to the all-reduce thread, while the backward of the blocks
    /// before it continues. Same gradients as one backward (each block's backward starts from the
    /// gradient the next block left at its input). Returns the loss.
    pub fn overlapped_step(
        &mut self,
        data: &Split,
        batch: &StepBatch,
        buffer: &GradientBuffer,
        worker: &ReduceWorker,
        timers: &mut StepTimers,
    ) -> f64 {
        let blocks = self.net.param_blocks();
        let idx = Tensor::from_slice(batch.shard);
        tch::manual_seed(micro_seed(batch.seed, 0));
        timers.compute.time(|| {
            let mut x = data.images.index_select(0, &idx);
            if batch.poison {
                x *= f64::NAN;
            }
            let y = data.labels.index_select(0, &idx);
            let (inputs, outputs) = self.forward_blocks(&x, &blocks);
            let loss = outputs
                .last()
                .expect("a net has blocks")
                .cross_entropy_for_logits(&y);
            for b in (0..blocks.len()).rev() {
                if b + 1 == blocks.len() {
                    loss.backward();
                } else {
                    crate::model::native::backward_with_grad(&outputs[b], &inputs[b + 1].grad())
                        .expect("block backward");
                }
                let (send, recv, len) = buffer.grad_span(blocks[b].params.clone());
                // SAFETY: the spans stay allocated in `buffer` and untouched until `worker.wait`
                // (`Averager::average`, right after this step).
                unsafe { worker.submit(send, recv, len) };
            }
            loss.double_value(&[])
        })
    }

    /// Each block's input (cut from the graph before it, so its backward can run on its own)
    /// and output.
    fn forward_blocks(&self, x: &Tensor, blocks: &[ParamBlock]) -> (Vec<Tensor>, Vec<Tensor>) {
        let mut inputs = Vec::with_capacity(blocks.len());
        let mut outputs: Vec<Tensor> = Vec::with_capacity(blocks.len());
        for (b, block) in blocks.iter().enumerate() {
            let input = match outputs.last() {
                None => x.shallow_clone(),
                Some(h) => h.detach().set_requires_grad(true),
            };
            outputs.push(self.net.forward_layers(&input, true, block.layers.clone()));
            inputs.push(input);
            debug_assert_eq!(inputs.len(), b + 1);
        }
        (inputs, outputs)
    }

    /// Forward-only pipeline over this replica's share of `split`, `batch` images at a time.
    pub fn evaluate(&mut self, world: &Comm, split: &Split, batch: usize) -> EvalSums {
        let _span = crate::diag::trace::span("evaluate", || "evaluate".into());
        let t = self.topo;
        let n = split.len();
        let (lo, hi) = (n * t.replica / t.replicas, n * (t.replica + 1) / t.replicas);
        let mut sums = EvalSums::default();
        tch::no_grad(|| {
            for start in (lo..hi).step_by(batch) {
                let len = batch.min(hi - start) as i64;
                let input = match t.prev() {
                    None => split.images.narrow(0, start as i64, len),
                    Some(p) => {
                        let shape = with_batch(len, &self.in_shape);
                        self.recv_buf.resize(shape.iter().product::<i64>() as usize, 0.0);
                        world.recv(p, Tag::Eval, &mut self.recv_buf);
                        Tensor::from_slice(&self.recv_buf).view(&shape[..])
                    }
                };
                let out = self.net.forward(&input, false);
                match t.next() {
                    Some(next) => {
                        let n = out.numel();
                        let mut buf = vec![0f32; n];
                        out.copy_data(&mut buf, n);
                        world.send(next, Tag::Eval, &buf);
                    }
                    None => {
                        let y = split.labels.narrow(0, start as i64, len);
                        sums.loss_sum += out.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
                        sums.correct += out
                            .argmax(-1, false)
                            .eq_tensor(&y)
                            .sum(Kind::Int64)
                            .int64_value(&[]) as f64;
                        sums.count += len as f64;
                    }
                }
            }
        });
        sums
    }
}

/// The state of one training step on one stage while its actions run.
struct StageStep<'e> {
    net: &'e Net,
    /// The first block's padding when it runs fused, its buffers, and each micro-batch's saved state.
    fused: Option<i64>,
    fused_buffers: &'e mut [fused::Buffers],
    fused_saved: Vec<Option<fused::Saved>>,
    topo: Topology,
    m: usize,
    /// Images per micro-batch.
    b: i64,
    /// A micro-batch's input shape (batch dimension first).
    in_shape: Vec<i64>,
    out_elems: usize,
    data: &'e Split,
    batch: &'e StepBatch<'e>,
    recv_buf: &'e mut Vec<f32>,
    timers: &'e mut StepTimers,
    /// (input, output) of every micro-batch whose forward ran and whose backward has not.
    saved: Vec<Option<(Tensor, Tensor)>>,
    loss_sum: f64,
    in_flight: i64,
    peak: i64,
    act_bytes: i64,
    /// When the step measures the noise scale with several micro-batches: each one's gradient norm.
    norms: Option<&'e mut MicroBatchNorms>,
}

impl StageStep<'_> {
    fn micro_indices(&self, i: usize) -> Tensor {
        let b = self.b as usize;
        Tensor::from_slice(&self.batch.shard[i * b..(i + 1) * b])
    }

    /// Micro-batch `i`'s input: images on the first stage, else the previous stage's activation.
    fn input(&mut self, i: usize, idx: &Tensor, tx: &mut AsyncSends) -> Tensor {
        match self.topo.prev() {
            None => {
                let x = self.data.images.index_select(0, idx);
                if self.batch.poison {
                    x * f64::NAN
                } else {
                    x
                }
            }
            Some(p) => {
                let elems = self.in_shape.iter().product::<i64>() as usize;
                self.recv_buf.resize(elems, 0.0);
                self.timers
                    .wait
                    .time(|| tx.recv(p, Tag::Activation(i), self.recv_buf));
                Tensor::from_slice(self.recv_buf)
                    .view(&self.in_shape[..])
                    .set_requires_grad(true)
            }
        }
    }

    fn forward(&mut self, i: usize, tx: &mut AsyncSends) {
        let idx = self.micro_indices(i);
        let input = self.input(i, &idx, tx);
        tch::manual_seed(micro_seed(self.batch.seed, i));
        let _span = crate::diag::trace::span("forward", || format!("F{i}"));
        let (net, m, out_elems, next) = (self.net, self.m, self.out_elems, self.topo.next());
        let (fused, buffers, saved) = (self.fused, &mut self.fused_buffers[i], &mut self.fused_saved[i]);
        let out = self.timers.compute.time(|| {
            let out = match fused {
                Some(pad) => {
                    let p = &net.layers[0].params;
                    let block = fused::forward(&input, &p[0], &p[1], pad, buffers);
                    let out = net.forward_layers(&block.leaf, true, 3..net.layers.len());
                    *saved = Some(block);
                    out
                }
                None => net.forward(&input, true),
            };
            match next {
                Some(n) => {
                    tx.send_with(n, Tag::Activation(i), out_elems, |buf| {
                        out.copy_data(buf, out_elems)
                    });
                    out
                }
                None => {
                    let y = self.data.labels.index_select(0, &idx);
                    let loss = out.cross_entropy_for_logits(&y);
                    if m > 1 {
                        loss / m as f64
                    } else {
                        loss
                    }
                }
            }
        });
        if next.is_none() {
            self.loss_sum += out.double_value(&[]) * m as f64;
        }
        self.saved[i] = Some((input, out));
        self.in_flight += 1;
        self.peak = self.peak.max(self.in_flight * self.act_bytes);
    }

    fn backward(&mut self, i: usize, tx: &mut AsyncSends) {
        let (input, out) = self.saved[i].take().expect("the schedule runs F before B");
        // The neighbour's gradient first: its wait is not part of the backward span.
        let from_next = self.topo.next().map(|n| {
            self.recv_buf.resize(self.out_elems, 0.0);
            self.timers
                .wait
                .time(|| tx.recv(n, Tag::Gradient(i), self.recv_buf));
            Tensor::from_slice(self.recv_buf).view_as(&out)
        });
        let _span = crate::diag::trace::span("backward", || format!("B{i}"));
        match from_next {
            None => self.timers.compute.time(|| out.backward()),
            Some(g) => {
                // J^T g: the stage's share of the chain rule, straight from the neighbour's
                // gradient (the same gradients as backward of sum(out * g), without its product).
                self.timers
                    .compute
                    .time(|| crate::model::native::backward_with_grad(&out, &g).expect("stage backward"));
            }
        }
        if let (Some(pad), Some(block)) = (self.fused, self.fused_saved[i].take()) {
            let p = &self.net.layers[0].params;
            let buffers = &mut self.fused_buffers[i];
            self.timers
                .compute
                .time(|| fused::backward(&block, &p[0], &p[1], pad, buffers));
        }
        if let Some(n) = self.norms.as_mut() {
            n.after_backward();
        }
        if let Some(p) = self.topo.prev() {
            let gin = input.grad();
            let elems = self.in_shape.iter().product::<i64>() as usize;
            tx.send_with(p, Tag::Gradient(i), elems, |buf| gin.copy_data(buf, elems));
        }
        self.in_flight -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn stage_shapes_follow_the_layers() {
        let layers = crate::model::preset_layers(Preset::MnistCnn, 0.0);
        let (i, o, e) = stage_shapes(&layers, 0..3, [1, 28, 28]);
        assert_eq!((i, o), (vec![1, 28, 28], vec![32, 14, 14]));
        assert_eq!(e, 2 * 32 * 28 * 28 + 32 * 14 * 14);
        let (i, o, _) = stage_shapes(&layers, 3..11, [1, 28, 28]);
        assert_eq!((i, o), (vec![32, 14, 14], vec![10]));
    }
}
