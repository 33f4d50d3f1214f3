//! The one engine: runs this rank's stage of the plan for a training step and for evaluation.
//! Serial is 1 stage x 1 replica, dp 1 stage x R replicas, hybrid S stages x R replicas; on one
//! stage, several micro-batches are gradient accumulation (the same step computed in pieces).
//!
//! A step runs the stage's action list from the schedule (`F3` = forward of micro-batch 3, `B3`
//! its backward). Activations (forward) and their gradients (backward) travel between
//! neighbouring stages as f32 buffers tagged with the micro-batch. The last stage scales each
//! micro-batch's mean loss by 1/M, so the gradients accumulated over the M micro-batches equal
//! the full batch's gradient.
//!
//! With overlapped averaging (`sync.overlap`), the last micro-batch to run backward on this stage
//! goes forward block by block (each block's input cut from the graph) and back block by block:
//! as soon as a bucket's gradients are final (`train::buckets`), its span of the flat gradient
//! buffer goes to the all-reduce thread while backward goes on through the blocks before it. The
//! gradients are the ones a whole backward gives (each block's backward starts from the gradient
//! the block after it left at its input); earlier micro-batches only accumulate.

use crate::comm::{AsyncSends, Comm, ReduceWorker, Tag};
use crate::data::Split;
use crate::model::fused;
use crate::model::{Net, ParamBlock};
use crate::plan::{Plan, Topology};
use crate::schedule::Action;
use crate::train::buckets::Bucket;
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
    /// The fused block's buffers in evaluation (its forward alone: one pass for ReLU and pool
    /// where the layers took three, the same floats).
    eval_buffers: fused::Buffers,
    recv_buf: Vec<f32>,
    /// Largest number of bytes of activations held at once (micro-batches in flight x their size).
    pub peak_activation_bytes: i64,
    /// Overlapped averaging: the stage's blocks, its buckets in the order backward finishes them,
    /// and the micro-batch whose backward runs last (the one that runs by blocks).
    blocks: Vec<ParamBlock>,
    buckets: Vec<Bucket>,
    last_backward: usize,
}

/// Where finished buckets go: the flat buffers they are spans of, and the all-reduce thread.
pub struct Overlap<'a> {
    pub buffer: &'a GradientBuffer,
    pub worker: &'a ReduceWorker,
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
            crate::model::stage_shapes(&plan.layers, range.clone(), plan.input_shape);
        let mut net = Net::build(&plan.layers, range, seed);
        net.set_compute(plan.compute);
        let m = plan.batches.micro_batches;
        let fused = if plan.topology.prev().is_none() {
            net.fused_first_block(&in_shape)
        } else {
            None
        };
        let blocks = net.param_blocks();
        let param_bytes: Vec<usize> = net.parameters().iter().map(|p| 4 * p.numel()).collect();
        let buckets = crate::train::buckets::buckets(&blocks, &param_bytes, plan.bucket_bytes);
        let actions = &plan.schedule.actions[plan.topology.stage];
        let last_backward = actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Backward(i) => Some(*i),
                Action::Forward(_) => None,
            })
            .unwrap_or(0);
        Engine {
            blocks,
            buckets,
            last_backward,
            fused,
            fused_buffers: (0..m).map(|_| fused::Buffers::default()).collect(),
            eval_buffers: fused::Buffers::default(),
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

    /// Buckets a step hands to the all-reduce thread when it overlaps averaging.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Runs one training step's actions on `batch`. Returns the replica's mean loss on the last
    /// stage (None elsewhere). Gradients accumulate in the stage's parameters (the flat buffer);
    /// with `overlap`, each bucket goes to the all-reduce thread as soon as it is final.
    pub fn train_step(
        &mut self,
        world: &Comm,
        data: &Split,
        batch: &StepBatch,
        timers: &mut StepTimers,
        norms: Option<&mut MicroBatchNorms>,
        overlap: Option<Overlap>,
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
            overlap: overlap.map(|o| (o, &self.blocks[..], &self.buckets[..])),
            last_backward: self.last_backward,
            block_io: Vec::new(),
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
                let out = self.forward_eval(&input);
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

impl Engine {
    /// An evaluation forward of this stage, the first block fused where training fuses it.
    fn forward_eval(&mut self, input: &Tensor) -> Tensor {
        match self.fused {
            Some(pad) => {
                let p = &self.net.layers[0].params;
                let block = fused::forward(input, &p[0], &p[1], pad, &mut self.eval_buffers);
                self.net
                    .forward_layers(&block.leaf, false, 3..self.net.layers.len())
            }
            None => self.net.forward(input, false),
        }
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
    /// Overlapped averaging: where buckets go, the stage's blocks and buckets; the micro-batch
    /// that runs by blocks, and its blocks' (input, output) between its forward and backward.
    overlap: Option<(Overlap<'e>, &'e [ParamBlock], &'e [Bucket])>,
    last_backward: usize,
    block_io: Vec<(Tensor, Tensor)>,
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
                let x = Tensor::from_slice(self.recv_buf).view(&self.in_shape[..]);
                self.local_layout(x).set_requires_grad(true)
            }
        }
    }

    /// A received activation in the strides the whole net has at this point: channels-last
    /// images when the net computes channels-last. With the rows in another order, the kernels
    /// after a cut sum in another order, and a batch-norm net amplified that rounding (1e-8)
    /// to 1e-2 in 50 steps where a cut elsewhere matched serial bit for bit.
    fn local_layout(&self, x: Tensor) -> Tensor {
        match self.net.compute.channels_last && x.dim() == 4 {
            true => crate::model::to_channels_last(&x),
            false => x,
        }
    }

    /// Whether micro-batch `i` runs by blocks (overlapped averaging, the last to run backward).
    fn by_blocks(&self, i: usize) -> bool {
        self.overlap.is_some() && i == self.last_backward
    }

    fn forward(&mut self, i: usize, tx: &mut AsyncSends) {
        let idx = self.micro_indices(i);
        let input = self.input(i, &idx, tx);
        tch::manual_seed(micro_seed(self.batch.seed, i));
        let _span = crate::diag::trace::span("forward", || format!("F{i}"));
        let started = std::time::Instant::now();
        let out = match self.by_blocks(i) {
            true => self.forward_by_blocks(&input, i),
            false => self.forward_whole(&input, i),
        };
        let m = self.m;
        let out = match self.topo.next() {
            Some(n) => {
                let elems = self.out_elems;
                tx.send_with(n, Tag::Activation(i), elems, |buf| out.copy_data(buf, elems));
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
        };
        self.timers.compute.add_since(started);
        if self.topo.next().is_none() {
            self.loss_sum += out.double_value(&[]) * m as f64;
        }
        self.saved[i] = Some((input, out));
        self.in_flight += 1;
        self.peak = self.peak.max(self.in_flight * self.act_bytes);
    }

    /// The stage's output for micro-batch `i` in one graph (the first block fused when it can be).
    fn forward_whole(&mut self, input: &Tensor, i: usize) -> Tensor {
        let net = self.net;
        match self.fused {
            Some(pad) => {
                let p = &net.layers[0].params;
                let block = fused::forward(input, &p[0], &p[1], pad, &mut self.fused_buffers[i]);
                let out = net.forward_layers(&block.leaf, true, 3..net.layers.len());
                self.fused_saved[i] = Some(block);
                out
            }
            None => net.forward(input, true),
        }
    }

    /// The stage's output for micro-batch `i`, block by block, each block's input a leaf of its
    /// own (the fused first block's output already is one); the pairs are kept for the backward.
    fn forward_by_blocks(&mut self, input: &Tensor, i: usize) -> Tensor {
        let (net, blocks) = (
            self.net,
            self.overlap.as_ref().expect("by blocks when overlapping").1,
        );
        let mut io: Vec<(Tensor, Tensor)> = Vec::with_capacity(blocks.len());
        for (b, block) in blocks.iter().enumerate() {
            let x = match io.last() {
                None => input.shallow_clone(),
                Some((_, h)) if b == 1 && self.fused.is_some() => h.shallow_clone(),
                Some((_, h)) => h.detach().set_requires_grad(true),
            };
            let y = match self.fused {
                Some(pad) if b == 0 => {
                    let p = &net.layers[0].params;
                    let saved = fused::forward(&x, &p[0], &p[1], pad, &mut self.fused_buffers[i]);
                    let leaf = saved.leaf.shallow_clone();
                    self.fused_saved[i] = Some(saved);
                    leaf
                }
                _ => net.forward_layers(&x, true, block.layers.clone()),
            };
            io.push((x, y));
        }
        let out = io.last().expect("a stage has blocks").1.shallow_clone();
        self.block_io = io;
        out
    }

    fn backward(&mut self, i: usize, tx: &mut AsyncSends) {
        let (input, out) = self.saved[i].take().expect("the schedule runs F before B");
        // The neighbour's gradient first: its wait is not part of the backward span.
        let from_next = self.topo.next().map(|n| {
            self.recv_buf.resize(self.out_elems, 0.0);
            self.timers
                .wait
                .time(|| tx.recv(n, Tag::Gradient(i), self.recv_buf));
            let g = Tensor::from_slice(self.recv_buf).view_as(&out);
            match crate::model::is_channels_last(&out) {
                true => crate::model::to_channels_last(&g),
                false => g,
            }
        });
        let _span = crate::diag::trace::span("backward", || format!("B{i}"));
        let started = std::time::Instant::now();
        match from_next {
            None => out.backward(),
            // J^T g: the stage's share of the chain rule, straight from the neighbour's gradient
            // (the same gradients as backward of sum(out * g), without its product).
            Some(g) => crate::model::native::backward_with_grad(&out, &g).expect("stage backward"),
        }
        if self.by_blocks(i) {
            self.backward_by_blocks(i);
        } else if let (Some(pad), Some(block)) = (self.fused, self.fused_saved[i].take()) {
            let p = &self.net.layers[0].params;
            fused::backward(&block, &p[0], &p[1], pad, &mut self.fused_buffers[i]);
        }
        self.timers.compute.add_since(started);
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

    /// After the last block's backward (from the loss or the neighbour's gradient): the blocks
    /// before it, last first, each from the gradient at the next block's input; every bucket
    /// goes to the all-reduce thread once the block that finishes it is done.
    fn backward_by_blocks(&mut self, i: usize) {
        let (overlap, _, buckets) = self.overlap.as_ref().expect("by blocks when overlapping");
        let io = std::mem::take(&mut self.block_io);
        let mut next = 0;
        for b in (0..io.len()).rev() {
            if let (Some(pad), 0) = (self.fused, b) {
                let saved = self.fused_saved[i].take().expect("the fused block ran forward");
                let p = &self.net.layers[0].params;
                fused::backward(&saved, &p[0], &p[1], pad, &mut self.fused_buffers[i]);
            } else if b + 1 < io.len() {
                crate::model::native::backward_with_grad(&io[b].1, &io[b + 1].0.grad())
                    .expect("block backward");
            }
            while next < buckets.len() && buckets[next].first_block == b {
                let (send, recv, len) = overlap.buffer.grad_span(buckets[next].params.clone());
                // SAFETY: the spans stay allocated in the flat buffers and untouched until the
                // worker's wait (`Averager::average`, right after the step).
                unsafe { overlap.worker.submit(send, recv, len) };
                next += 1;
            }
        }
    }
}
