//! The world's shape: which rank runs on which node and host, learned once per launch (`Comm::shape`)
//! and asked by the plan, the preflight, the summary and the layouts. `WorldFacts` is what files
//! record of it.

use super::Comm;
use serde::{Deserialize, Serialize};

/// Where every rank of a communicator runs: `node_of_rank[r]` numbers rank r's node (0, 1, ...
/// in order of each node's lowest rank).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldShape {
    pub size: usize,
    pub rank: usize,
    pub node_of_rank: Vec<usize>,
    /// Every rank's host name.
    pub hostnames: Vec<String>,
    /// Distinct machines (kernels) under the nodes: fewer than the nodes on an emulated cluster,
    /// whose nodes share one machine's cores.
    pub machines: usize,
}

impl WorldShape {
    /// `size` ranks filled into nodes of `ranks_per_node` in rank order (mpirun's default
    /// by-slot mapping): what `partrain inspect` assumes for a launch it cannot see.
    pub fn blocks(size: usize, ranks_per_node: usize) -> WorldShape {
        let per = ranks_per_node.max(1);
        let node_of_rank: Vec<usize> = (0..size).map(|r| r / per).collect();
        WorldShape {
            size,
            rank: 0,
            hostnames: node_of_rank.iter().map(|n| format!("node{}", n + 1)).collect(),
            machines: node_of_rank.last().map_or(1, |n| n + 1),
            node_of_rank,
        }
    }
    pub fn nodes(&self) -> usize {
        self.node_of_rank.iter().max().map_or(1, |m| m + 1)
    }
    /// Ranks on the busiest node.
    pub fn ranks_per_node(&self) -> usize {
        (0..self.nodes())
            .map(|n| self.node_of_rank.iter().filter(|&&x| x == n).count())
            .max()
            .unwrap_or(1)
    }
    /// Ranks on this rank's node.
    pub fn local_ranks(&self) -> usize {
        let mine = self.node_of_rank[self.rank];
        self.node_of_rank.iter().filter(|&&x| x == mine).count()
    }
    /// How many of `ranks` sit on each node they use, when that is the same on all of them.
    pub fn evenly_spread(&self, ranks: impl IntoIterator<Item = usize>) -> Option<usize> {
        let mut per_node = std::collections::BTreeMap::new();
        for r in ranks {
            *per_node.entry(self.node_of_rank[r]).or_insert(0usize) += 1;
        }
        let mut counts = per_node.values().copied();
        let first = counts.next()?;
        counts.all(|c| c == first).then_some(first)
    }
    /// Whether all of `ranks` sit on one node.
    pub fn on_one_node(&self, ranks: impl IntoIterator<Item = usize>) -> bool {
        let mut nodes = ranks.into_iter().map(|r| self.node_of_rank[r]);
        let first = nodes.next();
        nodes.all(|n| Some(n) == first)
    }
}

/// When this process is one of several ranks started by a launcher (Open MPI's mpirun, a PMI
/// launcher such as MPICH's, or Slurm's srun), the launcher's variable and its rank count.
pub fn launched_as_one_of_several() -> Option<(String, usize)> {
    for var in [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_STEP_NUM_TASKS",
    ] {
        if let Some(n) = std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if n > 1 {
                return Some((var.to_string(), n));
            }
        }
    }
    None
}

/// What files record of the world (`summary.json`, the preflight): flattened into them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorldFacts {
    pub world_size: usize,
    /// Distinct nodes, the most ranks on one of them, and the cores of rank 0's node.
    pub nodes: usize,
    #[serde(default)]
    pub ranks_per_node: usize,
    #[serde(default)]
    pub cores_per_node: usize,
    /// Each rank's host name, indexed by rank.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Distinct machines under the nodes.
    #[serde(default)]
    pub machines: usize,
}

impl WorldShape {
    /// The facts files record, with `cores_per_node` (the node's online CPUs).
    pub fn facts(&self, cores_per_node: usize) -> WorldFacts {
        WorldFacts {
            world_size: self.size,
            nodes: self.nodes(),
            ranks_per_node: self.ranks_per_node(),
            cores_per_node,
            hostnames: self.hostnames.clone(),
            machines: self.machines,
        }
    }
}

impl Comm {
    /// Which node every rank runs on. Collective.
    pub fn shape(&self) -> WorldShape {
        let local = self.node_local();
        // A node is named by its lowest rank; every rank learns every rank's node name.
        let mut leader = [self.rank as u64];
        local.broadcast(&mut leader, 0);
        let leaders = self.all_gather(leader[0]);
        let mut names = leaders.clone();
        names.sort_unstable();
        names.dedup();
        // Host names and machines once per launch: the preflight and the summary read them here.
        let hostnames = self.hostnames();
        let mut machines = self.all_gather(crate::util::machine_id());
        machines.sort_unstable();
        machines.dedup();
        WorldShape {
            size: self.size,
            rank: self.rank,
            node_of_rank: leaders
                .iter()
                .map(|l| names.binary_search(l).expect("own name"))
                .collect(),
            hostnames,
            machines: machines.len(),
        }
    }
}
