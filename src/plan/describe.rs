//! The plan in words: `inspect` and the run log print it; and the warnings about the machine.

use super::averaging::GradSync;
use super::Plan;
use std::fmt::Write as _;

impl Plan {
    /// Warnings about the machine this plan runs on (`cores`: the node's online CPUs).
    pub fn warnings(&self, cores: usize) -> Vec<String> {
        let local = self.world.ranks_per_node();
        let node = crate::util::machine::Occupancy {
            ranks: local,
            threads: self.threads_per_rank,
            cores,
        };
        let threads = local * self.threads_per_rank;
        let mut out = Vec::new();
        if node.ranks_oversubscribe() {
            out.push(format!(
                "{local} ranks share a node with {cores} cores: oversubscribed, so the timings are not scaling \
                 measurements"
            ));
        } else if node.oversubscribed() {
            out.push(format!(
                "parallel.threads_per_rank = {} x {} on a node = {threads} threads for its {cores} cores: \
                 oversubscribed, steps can be many times slower (64 threads on a 2-core test machine ran 25x \
                 slower than 1); use at most {} per rank",
                self.threads_per_rank,
                plural(local, "rank"),
                plural(cores / local, "thread"),
            ));
        }
        let passive = std::env::var("OMP_WAIT_POLICY").is_ok_and(|p| p.eq_ignore_ascii_case("passive"));
        if node.oversubscribed() && self.threads_per_rank > 1 && !passive {
            // libgomp reads the policy when libtorch is loaded, so it must be set at launch.
            out.push(
                "OpenMP threads spin while they wait (OMP_WAIT_POLICY is not passive), so oversubscribed threads \
                 steal each other's cores (dp 2 x 2 on 2 cores: 380-2,300 images/s spinning, 6,400 passive): \
                 launch with `mpirun -x OMP_WAIT_POLICY=passive ...` (env.sh's partrain_binding adds it)"
                    .into(),
            );
        }
        out
    }

    /// The plan as `inspect` and the run log print it.
    pub fn describe(&self) -> String {
        let (t, w) = (&self.topology, &self.world);
        let mut s = self.describe_layout();
        let _ = writeln!(s, "schedule: {}", self.schedule.kind.name());
        let _ = writeln!(s, "{}", self.optim.describe());
        if let Some(n) = &self.noise {
            let _ = writeln!(
                s,
                "noise scale: every {} step(s), {} gradients of {} images against their mean of {}",
                n.every, n.small_count, n.small_batch, n.big_batch
            );
        }
        if t.stages > 1 {
            let mb = |b: f64| b / (1024.0 * 1024.0);
            let _ = writeln!(
                s,
                "placement: {} (per step: {:.2} MB between a pipeline's stages, {:.2} MB of gradients per replica)",
                t.placement.name(),
                mb(self.traffic.pipeline_bytes),
                mb(self.traffic.averaging_bytes)
            );
        }
        if w.nodes() > 1 || t.stages > 1 {
            let _ = writeln!(s, "ranks on nodes: {}", self.rank_map());
        }
        let every = match self.grad_sync {
            GradSync::WeightAverage => format!(" (every {} steps and at each epoch end)", self.average_every),
            _ => String::new(),
        };
        let _ = writeln!(s, "gradient averaging: {}{every}", self.grad_sync.name());
        let precision = if self.compute.bf16 {
            "bf16 mixed precision"
        } else {
            "fp32"
        };
        let layout = if self.compute.channels_last {
            "channels-last"
        } else {
            "NCHW"
        };
        let _ = writeln!(s, "compute: {precision}, {layout}");
        s
    }

    /// The first lines: ranks, nodes, stages x replicas, batches, the stage split.
    fn describe_layout(&self) -> String {
        let (t, b, w) = (&self.topology, &self.batches, &self.world);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan: {}, {} on {} ({} per node) = {} x {}, {} per rank",
            self.strategy.name(),
            plural(w.size, "rank"),
            plural(w.nodes(), "node"),
            w.ranks_per_node(),
            plural(t.stages, "stage"),
            plural(t.replicas, "replica"),
            plural(self.threads_per_rank, "thread")
        );
        let accumulation = if t.stages == 1 && b.micro_batches > 1 {
            " (gradient accumulation)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "batches: global {}, per replica {}, {} of {}{accumulation}",
            b.global,
            b.per_replica,
            plural(b.micro_batches, "micro-batch"),
            b.micro_batch,
        );
        let ranges: Vec<String> = self
            .split
            .ranges
            .iter()
            .map(|r| format!("layers {}..{}", r.start, r.end))
            .collect();
        let _ = writeln!(s, "stage split ({}): {}", self.split.source, ranges.join(" | "));
        s
    }

    /// `node0: 0 (s0 r0), 1 (s1 r0) | node1: ...`: which rank holds which stage and replica where.
    pub fn rank_map(&self) -> String {
        let t = self.topology;
        let mut nodes: Vec<Vec<(usize, String)>> = vec![Vec::new(); self.world.nodes()];
        for replica in 0..t.replicas {
            for stage in 0..t.stages {
                let rank = t.rank_of(replica, stage);
                nodes[self.world.node_of_rank[rank]].push((rank, format!("{rank} (s{stage} r{replica})")));
            }
        }
        nodes
            .into_iter()
            .enumerate()
            .map(|(n, mut ranks)| {
                ranks.sort();
                let list: Vec<String> = ranks.into_iter().map(|(_, s)| s).collect();
                format!("node{n}: {}", list.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

fn plural(n: usize, what: &str) -> String {
    match (n, what.ends_with("ch")) {
        (1, _) => format!("{n} {what}"),
        (_, true) => format!("{n} {what}es"),
        _ => format!("{n} {what}s"),
    }
}
