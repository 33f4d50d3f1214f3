#!/usr/bin/env bash
# An N-node Slurm cluster on this one machine, for the tests and for trying the multi-node workflow.
#
#   bash scripts/cluster.sh up 4                 # munge, slurmctld, slurmd on node1..node4
#   bash scripts/cluster.sh up 4 --link 100mbit  # the same, each node's NIC held to 100 Mbit/s
#   bash scripts/cluster.sh exec sinfo           # any command with the cluster's environment
#   bash scripts/cluster.sh exec sbatch slurm/run_all_scaling_and_plot.slurm
#   bash scripts/cluster.sh exec salloc -N 2 -n 4 mpirun partrain dp --config configs/data_parallel.yaml
#   bash scripts/cluster.sh exec mpirun --hostfile "$PARTRAIN_CLUSTER/hostfile" -np 4 partrain dp ...
#   bash scripts/cluster.sh status               # daemons, each node's link, Slurm's view
#   bash scripts/cluster.sh kill-node 2          # node2 dies: its slurmd and every process on it
#   bash scripts/cluster.sh down                 # cancel jobs, stop what `up` started (by pid)
#   PARTRAIN_CLUSTER=/tmp/c2 PARTRAIN_CLUSTER_PORT=17800 PARTRAIN_CLUSTER_NODE=peer \
#     bash scripts/cluster.sh up 2               # a second cluster beside the first: peer1, peer2
#
# Each fake node is a process tree in its own UTS namespace (its own hostname, nodeK) and its own
# mount namespace, in the machine's network namespace (Slurm cannot bind in one holding only lo).
# Rules kept here, not options:
# - traffic stays on loopback: node K listens on 127.0.1.K, the controller on 127.0.0.1, and Open
#   MPI's TCP is held to `lo` (by default its tcp transport skips 127.0.0.0/8 and takes the
#   machine's other interface);
# - no fake name reaches DNS: inside the namespaces private copies of /etc/hosts (controller and
#   nodes first, then the real file), /etc/resolv.conf (nameserver 127.0.0.1) and Open MPI's
#   openmpi-mca-params.conf are bind-mounted; the real files are never edited;
# - no cgroup plugins (the nodes share one kernel), no accounting, non-default ports;
# - `down` stops only what `up` started: its daemons by their pids, and leftovers found by the
#   marker variable every process of the cluster inherits, by pid.
# - `--link RATE`: every node's traffic to and from other nodes held to RATE each way, as a
#   node's NIC would (scripts/link/links.sh says how); ranks on one node keep sharing memory.
# All state lives under $PARTRAIN_CLUSTER (default /tmp/partrain-cluster). Needs root, util-linux's
# unshare, and Debian's slurmctld slurmd slurm-client munge (scripts/setup.sh installs them).
set -euo pipefail
DIR=${PARTRAIN_CLUSTER:-/tmp/partrain-cluster}
BASE_PORT=${PARTRAIN_CLUSTER_PORT:-16800}   # slurmctld; slurmd K at +K; srun ports +100..+199
CPUS=${PARTRAIN_CLUSTER_CPUS:-$(env -u OMP_NUM_THREADS nproc)}
# Host names NODE1..NODEn. A second cluster up at the same time needs names of its own (see
# `claim_names`); `up` records them, the other commands read them back.
NODE=${PARTRAIN_CLUSTER_NODE:-$(cat "$DIR/node_names" 2>/dev/null || echo node)}
REGISTRY=/tmp/partrain-cluster-names
CTL=partrain-ctl
MARKER=PARTRAIN_CLUSTER_MEMBER
LINK=
# shellcheck source=scripts/link/links.sh
. "$(dirname "$0")/link/links.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
usage() { sed -n '2,16p' "$0" >&2; exit 2; }
log() { printf '[cluster] %s\n' "$*" >&2; }

nodes() { cat "$DIR/nodes" 2>/dev/null || echo 0; }

# The /etc files every namespace of the cluster sees, and the wrapper that enters one.
write_namespace_files() {
  local n=$1
  mkdir -p "$DIR/etc" "$DIR/bin"
  {
    echo "127.0.0.1 $CTL"
    for k in $(seq 1 "$n"); do echo "127.0.1.$k ${NODE}$k"; done
    cat /etc/hosts
  } > "$DIR/etc/hosts"
  echo "nameserver 127.0.0.1" > "$DIR/etc/resolv.conf"
  # Debian's file has no final newline: start the appended block with one.
  { cat /etc/openmpi/openmpi-mca-params.conf 2>/dev/null || true
    printf '\nbtl_tcp_if_include = lo\noob_tcp_if_include = lo\n'; } > "$DIR/etc/openmpi-mca-params.conf"
  # in-ns HOST CMD...: CMD in a private mount namespace with the files above, and with HOST as its
  # hostname in a UTS namespace of its own (HOST `-` keeps the machine's hostname).
  cat > "$DIR/bin/in-ns" <<EOF
#!/bin/sh
h=\$1; shift
uts=--uts; [ "\$h" = - ] && uts=
export $MARKER="$DIR"
exec unshare \$uts --mount --propagation private sh -c '
  [ "\$0" = - ] || { hostname "\$0"; mount -t tmpfs -o mode=1777 partrain-shm /dev/shm; }
  mount --bind "$DIR/etc/hosts" /etc/hosts
  mount --bind "$DIR/etc/resolv.conf" /etc/resolv.conf
  # A node of a cluster with links: its own MCA file (listener ports) and port block.
  m="$DIR/etc/mca-\$0.conf"; [ -f "\$m" ] || m="$DIR/etc/openmpi-mca-params.conf"
  [ -f /etc/openmpi/openmpi-mca-params.conf ] && mount --bind "\$m" /etc/openmpi/openmpi-mca-params.conf
  [ -f "$DIR/etc/this-node-\$0" ] && mount --bind "$DIR/etc/this-node-\$0" "$DIR/etc/this-node"
  exec "\$@"' "\$h" "\$@"
EOF
  # mpirun's rsh agent without Slurm: drop ssh-style options, take the host, run the command there
  # (as ssh would: one string for the remote shell) inside that node's namespaces.
  cat > "$DIR/bin/agent" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do
  case "\$1" in
    -l|-p|-o|-i|-F) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host=\$1; shift
exec "$DIR/bin/in-ns" "\$host" sh -c "\$*"
EOF
  chmod +x "$DIR/bin/in-ns" "$DIR/bin/agent"
  : > "$DIR/hostfile"
  for k in $(seq 1 "$n"); do echo "${NODE}$k slots=$CPUS" >> "$DIR/hostfile"; done
  cat > "$DIR/env.sh" <<EOF
export SLURM_CONF="$DIR/slurm.conf"
export PARTRAIN_CLUSTER="$DIR"
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
# Cross-memory attach is not permitted in every container: vader copies through shared memory.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
# Each node has a /dev/shm of its own (a tmpfs mounted by in-ns, gone with the node), as a real
# node has: Open MPI's shared-memory files and its session folder live there, never shared with
# another node or cluster, and a crashed job leaves nothing behind on the machine.
export OMPI_MCA_orte_tmpdir_base=/dev/shm
export OMPI_MCA_plm_rsh_agent="$DIR/bin/agent"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PATH="$DIR/bin:\$PATH"
# The nodes share this machine's cores: the scaling workflow runs one node count at a time here.
export PARTRAIN_SHARED_CORES=1
# Each node's Open MPI sees its own cores free and would busy-poll while it waits, taking the
# shared cores from the ranks that compute; yielding lets them compute, as on nodes with cores of
# their own. dp on 4 nodes at 1 Gbit/s: 1,164 -> 1,882 images/s, overlap hides 65 % -> 88 %.
export OMPI_MCA_mpi_yield_when_idle=1
EOF
  if [ -n "$LINK" ]; then
    cat >> "$DIR/env.sh" <<EOF
# Links of a set speed: every process of the cluster binds its TCP connections to its node's
# ports (scripts/link/nodeport.c); PARTRAIN_LINK names the rate (runs record it).
export LD_PRELOAD="$DIR/lib/nodeport.so\${LD_PRELOAD:+:\$LD_PRELOAD}"
export PARTRAIN_LINK=$LINK
EOF
  fi
}

write_slurm_conf() {
  local n=$1
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=partrain
SlurmctldHost=$CTL(127.0.0.1)
SlurmctldPort=$BASE_PORT
SrunPortRange=$((BASE_PORT + 100))-$((BASE_PORT + 199))
# Job ids of their own per cluster: two clusters up at once share /dev/shm, /tmp and the node
# names node1..nodeN, and an srun step's MPI job id is derived from its Slurm job and step ids, so
# equal ids give two jobs the same Open MPI shared-memory file names (seen once: "open(2) No such
# file or directory" during shared memory initialization, then a segmentation fault). Job ids
# alone did not stop the crash; host names of their own did (see `claim_names`).
FirstJobId=$((BASE_PORT * 100))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# PARTRAIN_CLUSTER_CPUS above the machine's cores (two jobs side by side on the same nodes) is allowed.
SlurmdParameters=config_overrides
SlurmdTimeout=10
SlurmdDebug=info
InactiveLimit=0
KillWait=5
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/ctl/state
SlurmctldPidFile=$DIR/ctl/slurmctld.pid
SlurmctldLogFile=$DIR/ctl/slurmctld.log
SlurmdSpoolDir=$DIR/%n/spool
SlurmdPidFile=$DIR/%n/slurmd.pid
SlurmdLogFile=$DIR/%n/slurmd.log
TmpFS=$DIR/%n/tmp
EOF
  for k in $(seq 1 "$n"); do
    echo "NodeName=${NODE}$k NodeHostname=${NODE}$k NodeAddr=127.0.1.$k Port=$((BASE_PORT + k)) CPUs=$CPUS RealMemory=4000 State=UNKNOWN" >> "$DIR/slurm.conf"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >> "$DIR/slurm.conf"
  # Slurm 22.05's PMIx tree fence is node-local whenever TreeWidth (default 50) exceeds the step's
  # node count (reverse_tree_info gives every node "no parent, no children"), so MPI_Init's modex
  # fence does not wait for the other nodes and a fast node's first message can reach a rank still
  # inside MPI_Init (SIGSEGV in the TCP BTL; docs/testing.md#the-start-up-crash). The ring fence
  # is global: env.sh also exports SLURM_PMIX_FENCE=ring for clusters whose mpi.conf says nothing.
  echo "PMIxCollFence=ring" > "$DIR/mpi.conf"
}

# start NAME HOST CMD...: a daemon in the foreground of its own session, in HOST's namespaces;
# the pid of the exec chain (setsid -> in-ns -> unshare -> sh -> daemon) is the daemon's.
start() {
  local name=$1 host=$2; shift 2
  setsid "$DIR/bin/in-ns" "$host" "$@" > "$DIR/pids/$name.out" 2>&1 < /dev/null &
  echo $! > "$DIR/pids/$name.pid"
}

# Two clusters up at once whose nodes have the same host names crash Open MPI 4.1's start-up now
# and then: a rank on node1 dies of a segmentation fault inside MPI_Init_thread (a fragment whose
# active-message tag has no callback, in the TCP transport's receive handler), with or without
# partrain (measured with a 10-line C program: 3 of 80 jobs, 1 of 200 with a /dev/shm per node,
# 3 of 300 with node addresses of their own, 0 of 300 with host names of their own;
# docs/testing.md). So host names are claimed machine-wide: `up` refuses names another running
# cluster holds.
claim_names() {
  mkdir -p "$REGISTRY" "$DIR"
  local claim="$REGISTRY/$NODE" holder
  holder=$(cat "$claim" 2>/dev/null || true)
  if [ -n "$holder" ] && [ "$holder" != "$DIR" ] && [ -f "$holder/nodes" ] &&
    kill -0 "$(cat "$holder/pids/slurmctld.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
    log "the cluster in $holder is up with host names ${NODE}1, ${NODE}2, ...: two clusters must not share host names (Open MPI and Slurm tell hosts apart by name); give this one PARTRAIN_CLUSTER_NODE=<another prefix> (and PARTRAIN_CLUSTER_PORT=<another port>)"
    exit 1
  fi
  echo "$DIR" > "$claim"
  echo "$NODE" > "$DIR/node_names"
}

release_names() {
  local claim="$REGISTRY/$NODE"
  [ "$(cat "$claim" 2>/dev/null || true)" = "$DIR" ] && rm -f "$claim"
  return 0
}

up() {
  local n=${1:?usage: cluster.sh up N [--link RATE]}
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || usage
  shift
  LINK=
  while [ $# -gt 0 ]; do
    case "$1" in
      --link) LINK=${2:?--link needs a rate: 100mbit, 1gbit, 10gbit}; shift 2 ;;
      *) log "up: unknown argument '$1' (expected --link RATE)"; exit 2 ;;
    esac
  done
  [ -z "$LINK" ] || link_rate_bits "$LINK" > /dev/null
  if [ -f "$DIR/nodes" ]; then down; fi
  local p
  for p in "$BASE_PORT" $(seq $((BASE_PORT + 1)) $((BASE_PORT + n))); do
    if ss -Hltn "sport = :$p" | grep -q .; then
      log "port $p is in use (another cluster or service): choose another PARTRAIN_CLUSTER_PORT (the cluster uses it and the next $((n + 199)))"
      exit 1
    fi
  done
  claim_names
  mkdir -p "$DIR/pids" "$DIR/ctl/state" "$DIR/munge"
  for k in $(seq 1 "$n"); do mkdir -p "$DIR/${NODE}$k/spool" "$DIR/${NODE}$k/tmp"; done
  echo "$n" > "$DIR/nodes"
  write_namespace_files "$n"
  write_slurm_conf "$n"
  [ -z "$LINK" ] || link_up "$n" "$LINK"
  # munged: socket folder 755, key 600 owned by munge.
  chmod 755 "$DIR/munge"
  if [ ! -f "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chown munge: "$DIR/munge/munge.key" 2>/dev/null || true
  chmod 600 "$DIR/munge/munge.key"
  start munged - munged --foreground --force --socket="$DIR/munge/munge.sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munge.seed"
  for _ in $(seq 50); do [ -S "$DIR/munge/munge.sock" ] && break; sleep 0.1; done
  start slurmctld "$CTL" slurmctld -D -f "$DIR/slurm.conf"
  for k in $(seq 1 "$n"); do start "node$k" "${NODE}$k" slurmd -D -f "$DIR/slurm.conf"; done
  # shellcheck disable=SC1091
  . "$DIR/env.sh"
  for _ in $(seq 150); do
    if [ "$("$DIR/bin/in-ns" - sinfo -h -N -o %T 2>/dev/null | grep -c '^idle')" -eq "$n" ]; then
      log "up: $n nodes (${NODE}1..${NODE}$n on 127.0.1.1..127.0.1.$n, $CPUS CPUs each, links ${LINK:-unshaped}), state in $DIR"
      echo "export PARTRAIN_CLUSTER=$DIR"
      return 0
    fi
    sleep 0.2
  done
  log "the nodes did not become idle; see $DIR/ctl/slurmctld.log and $DIR/${NODE}*/slurmd.log"
  "$DIR/bin/in-ns" - sinfo -N >&2 || true
  down   # nothing left running for a caller that gives up (a test's folder is deleted next)
  exit 1
}

# This script and the processes it runs under (never stopped, whatever their environment).
ancestors() {
  local pid=$$
  while [ "$pid" -gt 1 ]; do
    echo "$pid"
    pid=$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || echo 1)
  done
}

# Processes of this cluster: every process `in-ns` started carries the marker variable, and so do
# their children (Slurm's daemons, job steps, orteds, ranks).
members() {
  local mine
  mine=" $(ancestors | tr '\n' ' ') "
  for p in /proc/[0-9]*; do
    local pid=${p#/proc/}
    case "$mine" in *" $pid "*) continue ;; esac
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "$MARKER=$DIR"; then echo "$pid"; fi
  done
}

stop_pids() { # stop_pids PID...: TERM, up to 10 s, then KILL
  [ $# -gt 0 ] || return 0
  kill "$@" 2>/dev/null || true
  for _ in $(seq 100); do
    local alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}

down() {
  [ -d "$DIR" ] || return 0
  if [ -f "$DIR/env.sh" ] && [ -f "$DIR/pids/slurmctld.pid" ] && kill -0 "$(cat "$DIR/pids/slurmctld.pid")" 2>/dev/null; then
    # shellcheck disable=SC1091
    (. "$DIR/env.sh"; "$DIR/bin/in-ns" - scancel --full --quiet --user=root 2>/dev/null) || true
  fi
  local pids=()
  for f in "$DIR"/pids/node*.pid "$DIR/pids/slurmctld.pid" "$DIR/pids/munged.pid"; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  stop_pids "${pids[@]}"
  # Job steps that escaped their job (linuxproc cannot contain them), orteds, shells of `exec`.
  mapfile -t left < <(members)
  if [ ${#left[@]} -gt 0 ]; then
    log "stopping ${#left[@]} leftover process(es) of the cluster: ${left[*]}"
    kill -9 "${left[@]}" 2>/dev/null || true
  fi
  link_down
  rm -f "$DIR"/pids/*.pid "$DIR/nodes"
  release_names
  log "down"
}

kill_node() { # a node failure: its slurmd and every process in its namespace, at once
  local k=${1:?usage: cluster.sh kill-node K}
  local pid ns victims=()
  pid=$(cat "$DIR/pids/node$k.pid")
  ns=$(readlink "/proc/$pid/ns/uts")
  for p in $(members); do
    [ "$(readlink "/proc/$p/ns/uts" 2>/dev/null)" = "$ns" ] && victims+=("$p")
  done
  # Processes that were started into node k's namespace by mpirun's agent have a namespace of
  # their own with node k's name: find them by hostname.
  for p in $(members); do
    [ "$(nsenter -t "$p" -u hostname 2>/dev/null)" = "${NODE}$k" ] && victims+=("$p")
  done
  log "node$k fails: kill -9 ${victims[*]}"
  kill -9 "${victims[@]}" 2>/dev/null || true
}

status() {
  if [ ! -f "$DIR/nodes" ]; then echo "down (no cluster in $DIR)"; return 0; fi
  for f in "$DIR"/pids/*.pid; do
    local pid name
    pid=$(cat "$f"); name=$(basename "$f" .pid)
    if kill -0 "$pid" 2>/dev/null; then echo "$name: pid $pid"; else echo "$name: not running"; fi
  done
  link_status
  # shellcheck disable=SC1091
  (. "$DIR/env.sh"; "$DIR/bin/in-ns" - sinfo -N; "$DIR/bin/in-ns" - squeue)
}

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  status) status ;;
  kill-node) kill_node "$@" ;;
  exec)
    [ -f "$DIR/env.sh" ] || { log "no cluster in $DIR: run \`bash scripts/cluster.sh up N\` first"; exit 1; }
    # shellcheck disable=SC1091
    . "$DIR/env.sh"
    exec "$DIR/bin/in-ns" - "$@"
    ;;
  *) usage ;;
esac
