//! One pipeline stage at run time: runs its schedule's action list for a training step, and the
//! forward-only pipeline for evaluation.
//!
//! Layout: world = stages x replicas, `rank = replica * stages + stage`; a pipeline's stages are
//! neighbouring ranks. Activations (forward) and their gradients (backward) travel as f32
//! buffers tagged with the micro-batch index. The last stage scales each micro-batch's mean loss
//! by 1/M, so the gradients accumulated over the M micro-batches equal the full-batch gradient.

use crate::comm::Comm;
use crate::data::Split;
use crate::metrics::Timer;
use crate::model::{LayerSpec, Net};
use crate::pipeline::schedule::{Action, PipelineSchedule};
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub stages: usize,
    pub replicas: usize,
    pub stage: usize,
    pub replica: usize,
}

impl Topology {
    pub fn new(world_size: usize, rank: usize, stages: usize) -> Result<Topology> {
        if stages == 0 || !world_size.is_multiple_of(stages) {
            bail!(
                "parallel.stages: {stages} stages do not divide the {world_size} MPI ranks \
                 (world size must be stages x replicas; launch with mpirun -np {})",
                stages * (world_size / stages.max(1)).max(1)
            );
        }
        Ok(Topology {
            stages,
            replicas: world_size / stages,
            stage: rank % stages,
            replica: rank / stages,
        })
    }
    pub fn rank_of(&self, replica: usize, stage: usize) -> usize {
        replica * self.stages + stage
    }
    pub fn is_first(&self) -> bool {
        self.stage == 0
    }
    pub fn is_last(&self) -> bool {
        self.stage + 1 == self.stages
    }
}

fn tag(action: Action) -> i32 {
    match action {
        Action::Forward(i) => 2 * i as i32,
        Action::Backward(i) => 2 * i as i32 + 1,
    }
}
// Below the 32767 that MPI guarantees for tags; training tags are 2 x micro-batch (+1).
const EVAL_TAG: i32 = 30_000;

pub struct StageRuntime {
    pub net: Net,
    pub topo: Topology,
    pub schedule: PipelineSchedule,
    /// Per-sample shape of this stage's input and output.
    in_shape: Vec<i64>,
    out_shape: Vec<i64>,
    /// Sum over this stage's layers of per-sample output elements (what autograd keeps alive).
    activation_elems_per_sample: i64,
    /// Send buffers, one per send of a step, reused every step.
    arena: Vec<Vec<f32>>,
    recv_buf: Vec<f32>,
    pub compute: Timer,
    pub wait: Timer,
    /// Largest number of bytes of activations held at once (micro-batches in flight x their size).
    pub peak_activation_bytes: i64,
}

impl StageRuntime {
    pub fn new(
        specs: &[LayerSpec],
        range: std::ops::Range<usize>,
        input: [i64; 3],
        seed: u64,
        topo: Topology,
        schedule: PipelineSchedule,
    ) -> StageRuntime {
        let mut shape = input.to_vec();
        let mut in_shape = shape.clone();
        let mut elems = 0;
        for (i, s) in specs.iter().enumerate() {
            if i == range.start {
                in_shape = shape.clone();
            }
            shape = s.kind.output_shape(&shape);
            if range.contains(&i) {
                elems += shape.iter().product::<i64>();
            }
            if i + 1 == range.end {
                break;
            }
        }
        let net = Net::build(specs, range, seed);
        let m = schedule.micro_batches;
        StageRuntime {
            net,
            topo,
            schedule,
            in_shape,
            out_shape: shape,
            activation_elems_per_sample: elems,
            arena: vec![Vec::new(); 2 * m],
            recv_buf: Vec::new(),
            compute: Timer::default(),
            wait: Timer::default(),
            peak_activation_bytes: 0,
        }
    }

    fn shaped(&self, batch: i64, per_sample: &[i64]) -> Vec<i64> {
        let mut s = vec![batch];
        s.extend_from_slice(per_sample);
        s
    }

    /// Runs one training step's actions on this replica's `shard` of the global batch. Returns
    /// the shard's mean loss on the last stage (None elsewhere). Gradients are accumulated in the
    /// stage's parameters; the caller all-reduces them across replicas and steps the optimizer.
    pub fn train_step(
        &mut self,
        world: &Comm,
        train: &Split,
        shard: &[i64],
        dropout_seed: u64,
    ) -> Option<f64> {
        let topo = self.topo;
        let m = self.schedule.micro_batches;
        let b = (shard.len() / m) as i64;
        let prev = topo.stage.checked_sub(1).map(|s| topo.rank_of(topo.replica, s));
        let next = (!topo.is_last()).then(|| topo.rank_of(topo.replica, topo.stage + 1));
        let in_shape = self.shaped(b, &self.in_shape);
        let out_elems = (b * self.out_shape.iter().product::<i64>()) as usize;
        let in_elems = (b * self.in_shape.iter().product::<i64>()) as usize;
        let actions = self.schedule.actions[topo.stage].clone();
        let act_bytes = 4 * b * self.activation_elems_per_sample;
        let (net, compute, wait, recv_buf) =
            (&self.net, &mut self.compute, &mut self.wait, &mut self.recv_buf);
        let mut peak = self.peak_activation_bytes;
        let mut saved: Vec<Option<(Tensor, Tensor)>> = (0..m).map(|_| None).collect();
        let mut loss_sum = 0.0;
        world.with_async_sends(&mut self.arena, |tx| {
            let mut in_flight = 0i64;
            for action in actions {
                match action {
                    Action::Forward(i) => {
                        let idx = Tensor::from_slice(&shard[i * b as usize..(i + 1) * b as usize]);
                        let input = match prev {
                            None => train.images.index_select(0, &idx),
                            Some(p) => {
                                recv_buf.resize(in_elems, 0.0);
                                wait.time(|| tx.recv(p, tag(action), recv_buf));
                                Tensor::from_slice(recv_buf)
                                    .view(&in_shape[..])
                                    .set_requires_grad(true)
                            }
                        };
                        tch::manual_seed((crate::util::mix_seed(&[dropout_seed, i as u64]) >> 1) as i64);
                        let out = compute.time(|| {
                            let out = net.forward(&input, true);
                            match next {
                                Some(n) => {
                                    tx.send_with(n, tag(action), out_elems, |buf| {
                                        out.copy_data(buf, out_elems)
                                    });
                                    out
                                }
                                None => {
                                    let y = train.labels.index_select(0, &idx);
                                    out.cross_entropy_for_logits(&y) / m as f64
                                }
                            }
                        });
                        if next.is_none() {
                            loss_sum += out.double_value(&[]) * m as f64;
                        }
                        saved[i] = Some((input, out));
                        in_flight += 1;
                        peak = peak.max(in_flight * act_bytes);
                    }
                    Action::Backward(i) => {
                        let (input, out) = saved[i].take().expect("schedule runs F before B");
                        match next {
                            None => compute.time(|| out.backward()),
                            Some(n) => {
                                recv_buf.resize(out_elems, 0.0);
                                wait.time(|| tx.recv(n, tag(action), recv_buf));
                                let g = Tensor::from_slice(recv_buf).view_as(&out);
                                // d/dθ sum(out * g) = J^T g: the stage's share of the chain rule.
                                compute.time(|| (&out * g).sum(Kind::Float).backward());
                            }
                        }
                        if let Some(p) = prev {
                            let gin = input.grad();
                            tx.send_with(p, tag(action), in_elems, |buf| gin.copy_data(buf, in_elems));
                        }
                        in_flight -= 1;
                    }
                }
            }
        });
        self.peak_activation_bytes = peak;
        topo.is_last().then(|| loss_sum / m as f64)
    }

    /// Forward-only pipeline over this replica's share of `split`: returns (loss sum, correct,
    /// count) on the last stage, zeros elsewhere; the caller reduces over the world.
    pub fn evaluate(&mut self, world: &Comm, split: &Split, batch: usize) -> (f64, f64, f64) {
        let topo = self.topo;
        let n = split.len();
        let (lo, hi) = (
            n * topo.replica / topo.replicas,
            n * (topo.replica + 1) / topo.replicas,
        );
        let prev = topo.stage.checked_sub(1).map(|s| topo.rank_of(topo.replica, s));
        let next = (!topo.is_last()).then(|| topo.rank_of(topo.replica, topo.stage + 1));
        let (mut loss_sum, mut correct) = (0.0, 0.0);
        tch::no_grad(|| {
            let mut start = lo;
            while start < hi {
                let len = batch.min(hi - start) as i64;
                let input = match prev {
                    None => split.images.narrow(0, start as i64, len),
                    Some(p) => {
                        let elems = (len * self.in_shape.iter().product::<i64>()) as usize;
                        self.recv_buf.resize(elems, 0.0);
                        world.recv_f32(p, EVAL_TAG, &mut self.recv_buf);
                        Tensor::from_slice(&self.recv_buf).view(&self.shaped(len, &self.in_shape)[..])
                    }
                };
                let out = self.net.forward(&input, false);
                match next {
                    Some(nx) => {
                        let elems = out.numel();
                        let mut buf = vec![0f32; elems];
                        out.copy_data(&mut buf, elems);
                        world.send_f32(nx, EVAL_TAG, &buf);
                    }
                    None => {
                        let y = split.labels.narrow(0, start as i64, len);
                        loss_sum += out.cross_entropy_for_logits(&y).double_value(&[]) * len as f64;
                        correct += out
                            .argmax(-1, false)
                            .eq_tensor(&y)
                            .sum(Kind::Int64)
                            .int64_value(&[]) as f64;
                    }
                }
                start += len as usize;
            }
        });
        if topo.is_last() {
            (loss_sum, correct, (hi - lo) as f64)
        } else {
            (0.0, 0.0, 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_layout() {
        let t = Topology::new(4, 3, 2).unwrap();
        assert_eq!((t.stage, t.replica, t.replicas), (1, 1, 2));
        assert_eq!(t.rank_of(1, 0), 2);
        assert!(Topology::new(3, 0, 2)
            .unwrap_err()
            .to_string()
            .contains("do not divide"));
    }
}
