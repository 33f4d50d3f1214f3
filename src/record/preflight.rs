//! The start-up preflight of every training run: where the ranks are (rank -> host -> cores), the
//! world's shape, the links between node leaders (ping-pong from rank 0), and a check that the
//! world agrees with what the launcher and Slurm say it is. A world of 1 rank that mpirun
//! meant as 4 (a binary linked against another MPI), or 2 nodes where Slurm allocated 3 (hosts
//! that resolve to one another), fails here at once with the figures instead of training the
//! wrong layout. Rank 0 prints it; the figures go into summary.json.

use crate::comm::{Comm, WorldShape};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankPlace {
    pub rank: usize,
    pub host: String,
    /// The cores this rank may run on (its affinity mask), e.g. `0-1`.
    pub cores: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderLink {
    /// Rank 0 and the other node's leader (its lowest rank).
    pub from: usize,
    pub to: usize,
    pub host: String,
    #[serde(flatten)]
    pub link: crate::comm::Link,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preflight {
    /// Ranks, nodes, ranks per node, cores per node, host names, machines.
    #[serde(flatten)]
    pub world: crate::comm::WorldFacts,
    pub threads_per_rank: usize,
    pub ranks: Vec<RankPlace>,
    pub leader_links: Vec<LeaderLink>,
    /// What the launcher / Slurm said, each as `VAR=value`, all agreeing with the world.
    pub launcher: Vec<String>,
}

/// This process's affinity as a core list (`0-3,8`).
fn affinity() -> String {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills the set we own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } == 0;
    if !ok {
        return "?".into();
    }
    // SAFETY: CPU_ISSET reads the set we own, for indices below its size.
    let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    ranges(&cores)
}

/// `[0, 1, 2, 5]` -> `0-2,5`.
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Slurm's host list syntax: `node[1-3,5],login` -> node1 node2 node3 node5 login.
pub fn expand_hostlist(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for c in list.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    for it in items.into_iter().filter(|s| !s.is_empty()) {
        let (Some(open), Some(close)) = (it.find('['), it.find(']')) else {
            out.push(it);
            continue;
        };
        let (prefix, body, suffix) = (&it[..open], &it[open + 1..close], &it[close + 1..]);
        for part in body.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let width = a.len();
                    let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
                        continue;
                    };
                    for n in a..=b {
                        out.push(format!("{prefix}{n:0width$}{suffix}"));
                    }
                }
                None => out.push(format!("{prefix}{part}{suffix}")),
            }
        }
    }
    out
}

/// The launcher's and Slurm's view, checked against the world's: the accepted `VAR=value`s, or
/// an error naming the figures that contradict each other.
pub fn check_launcher(
    env: &BTreeMap<String, String>,
    size: usize,
    hosts: &[String],
    local_ranks: usize,
) -> Result<Vec<String>> {
    let get = |k: &str| env.get(k).and_then(|v| v.trim().parse::<usize>().ok());
    let mut agreed = Vec::new();
    let mut distinct: Vec<&String> = hosts.iter().collect();
    distinct.sort();
    distinct.dedup();
    for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(n) = get(var) {
            if n != size {
                bail!(
                    "preflight: {var}={n} but MPI's world has {size} rank(s): this binary's MPI library is not the \
                     one the launcher belongs to (rebuild against it, or launch with its own mpirun)"
                );
            }
            agreed.push(format!("{var}={n}"));
        }
    }
    if let Some(n) = get("OMPI_COMM_WORLD_LOCAL_SIZE") {
        if n != local_ranks {
            bail!(
                "preflight: mpirun placed {n} rank(s) on this node (OMPI_COMM_WORLD_LOCAL_SIZE) but {local_ranks} \
                 share its memory (MPI_Comm_split_type): host names that resolve to other machines?"
            );
        }
        agreed.push(format!("OMPI_COMM_WORLD_LOCAL_SIZE={n}"));
    }
    // srun's own variables describe the ranks only when srun started them (not mpirun's daemons).
    if env.contains_key("SLURM_PROCID") && !env.contains_key("OMPI_COMM_WORLD_SIZE") {
        agreed.extend(check_slurm(env, size, &distinct)?);
    }
    Ok(agreed)
}

/// srun's view (its tasks, nodes and node list) checked against the world's ranks and hosts.
fn check_slurm(env: &BTreeMap<String, String>, size: usize, distinct: &[&String]) -> Result<Vec<String>> {
    let get = |k: &str| env.get(k).and_then(|v| v.trim().parse::<usize>().ok());
    let mut agreed = Vec::new();
    {
        if let Some(n) = get("SLURM_STEP_NUM_TASKS") {
            if n != size {
                bail!("preflight: srun started {n} task(s) (SLURM_STEP_NUM_TASKS) but MPI's world has {size} rank(s)");
            }
            agreed.push(format!("SLURM_STEP_NUM_TASKS={n}"));
        }
        if let Some(n) = get("SLURM_STEP_NUM_NODES") {
            if n != distinct.len() {
                bail!(
                    "preflight: Slurm allocated {n} node(s) to this step (SLURM_STEP_NUM_NODES) but the ranks run on {} \
                     host(s): {}",
                    distinct.len(),
                    distinct.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            agreed.push(format!("SLURM_STEP_NUM_NODES={n}"));
        }
        if let Some(list) = env.get("SLURM_STEP_NODELIST") {
            let mut slurm = expand_hostlist(list);
            slurm.sort();
            let ours: Vec<String> = distinct.iter().map(|s| s.to_string()).collect();
            if slurm != ours {
                bail!(
                    "preflight: Slurm's node list {list} ({}) is not the ranks' host names ({})",
                    slurm.join(", "),
                    ours.join(", ")
                );
            }
            agreed.push(format!("SLURM_STEP_NODELIST={list}"));
        }
    }
    Ok(agreed)
}

/// Runs the preflight (collective over `world`); fails on every rank when the launcher or Slurm
/// contradicts the world.
pub fn run(world: &Comm, shape: &WorldShape, threads_per_rank: usize) -> Result<Preflight> {
    let hosts = &shape.hostnames;
    let cores = crate::diag::flight::labelled("preflight", || world.all_gather_text(&affinity()));
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let launcher = check_launcher(&env, world.size(), hosts, shape.local_ranks());
    // Every rank decides alike (the same world), but a failure on one must stop all.
    let ok =
        crate::diag::flight::labelled("preflight", || world.sum(&[u64::from(launcher.is_err())]))[0] == 0;
    let launcher = match (launcher, ok) {
        (Ok(l), true) => l,
        (Err(e), _) => return Err(e),
        (Ok(_), false) => {
            bail!("preflight: another rank found the launcher contradicting the world (see its message)")
        }
    };
    let leaders: Vec<usize> = (1..shape.size)
        .filter(|&r| shape.node_of_rank[r] != shape.node_of_rank[0])
        .filter(|&r| (0..r).all(|q| shape.node_of_rank[q] != shape.node_of_rank[r]))
        .collect();
    let leader_links = leaders
        .into_iter()
        .map(|to| {
            let link = crate::diag::flight::labelled("preflight ping-pong", || world.link(0, to, 4));
            LeaderLink {
                from: 0,
                to,
                host: hosts[to].clone(),
                link,
            }
        })
        .collect();
    Ok(Preflight {
        world: shape.facts(crate::util::node_cores()),
        threads_per_rank,
        ranks: (0..world.size())
            .map(|r| RankPlace {
                rank: r,
                host: hosts[r].clone(),
                cores: cores[r].clone(),
            })
            .collect(),
        leader_links,
        launcher,
    })
}

impl Preflight {
    /// What rank 0 prints.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "preflight: {} rank(s) on {} node(s) ({} per node), {} thread(s) per rank; launcher: {}\n",
            self.world.world_size,
            self.world.nodes,
            self.world.ranks_per_node,
            self.threads_per_rank,
            if self.launcher.is_empty() {
                "none seen (one process)".into()
            } else {
                self.launcher.join(", ") + ": agrees"
            }
        );
        let mut by_host: Vec<(String, Vec<String>)> = Vec::new();
        for p in &self.ranks {
            let entry = format!("{} (cores {})", p.rank, p.cores);
            match by_host.iter_mut().find(|(h, _)| *h == p.host) {
                Some((_, v)) => v.push(entry),
                None => by_host.push((p.host.clone(), vec![entry])),
            }
        }
        for (host, ranks) in by_host {
            out += &format!("  {host}: rank {}\n", ranks.join(", "));
        }
        for l in &self.leader_links {
            out += &format!(
                "  rank {} <-> rank {} ({}): latency {:.1} us, bandwidth {:.2} GB/s\n",
                l.from, l.to, l.host, l.link.latency_us, l.link.bandwidth_gbs
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_host_lists_expand() {
        assert_eq!(
            expand_hostlist("node[1-3,5]"),
            ["node1", "node2", "node3", "node5"]
        );
        assert_eq!(expand_hostlist("a01,b[08-10]"), ["a01", "b08", "b09", "b10"]);
        assert_eq!(expand_hostlist("login"), ["login"]);
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn launcher_figures_that_contradict_the_world_fail() {
        let env = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let hosts: Vec<String> = ["node1", "node1", "node2", "node2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // (environment, world size, local ranks, error fragment or None)
        type Case = (BTreeMap<String, String>, usize, usize, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (
                env(&[("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2")]),
                4,
                2,
                None,
            ),
            (
                env(&[("OMPI_COMM_WORLD_SIZE", "4")]),
                1,
                1,
                Some("OMPI_COMM_WORLD_SIZE=4 but MPI's world has 1"),
            ),
            (
                env(&[("OMPI_COMM_WORLD_LOCAL_SIZE", "1")]),
                4,
                2,
                Some("placed 1 rank(s) on this node"),
            ),
            (
                env(&[
                    ("SLURM_PROCID", "0"),
                    ("SLURM_STEP_NUM_TASKS", "4"),
                    ("SLURM_STEP_NUM_NODES", "2"),
                    ("SLURM_STEP_NODELIST", "node[1-2]"),
                ]),
                4,
                2,
                None,
            ),
            (
                env(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_NODES", "3")]),
                4,
                2,
                Some("allocated 3 node(s)"),
            ),
            (
                env(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NODELIST", "node[1-2],node9")]),
                4,
                2,
                Some("node list"),
            ),
            // Under mpirun, srun's variables describe its daemons: not compared.
            (
                env(&[
                    ("SLURM_PROCID", "0"),
                    ("SLURM_STEP_NUM_TASKS", "2"),
                    ("OMPI_COMM_WORLD_SIZE", "4"),
                ]),
                4,
                2,
                None,
            ),
        ];
        for (env, size, local, want) in cases {
            let got = check_launcher(&env, size, &hosts, local);
            match want {
                None => assert!(got.is_ok(), "{env:?}: {got:?}"),
                Some(w) => {
                    let e = format!("{:#}", got.expect_err("should fail"));
                    assert!(e.contains(w), "{env:?}: {e}");
                }
            }
        }
    }
}
