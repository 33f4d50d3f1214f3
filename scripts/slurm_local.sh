#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for testing the SLURM workflow (tests/slurm.rs) or trying
# it by hand. Needs root and Debian's slurmctld slurmd slurm-client munge (scripts/setup.sh).
#
#   eval "$(bash scripts/slurm_local.sh start /tmp/slurm)"   # prints `export SLURM_CONF=...`
#   sbatch ...; squeue; sinfo
#   bash scripts/slurm_local.sh stop /tmp/slurm
set -euo pipefail
cmd=${1:?usage: slurm_local.sh start|stop DIR}
dir=${2:?usage: slurm_local.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/slurm.conf"

stop() {
  local pids=()
  for p in slurmd slurmctld munged; do
    if [ -f "$dir/$p.pid" ]; then
      pid=$(cat "$dir/$p.pid")
      kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  # slurmctld saves its state before it exits: wait (up to 30 s, then SIGKILL), so a next start
  # can bind the same ports.
  for _ in $(seq 300); do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -f "$dir"/*.pid
}

case "$cmd" in
  stop) stop; exit 0 ;;
  start) ;;
  *) echo "usage: slurm_local.sh start|stop DIR" >&2; exit 2 ;;
esac

stop
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
if [ ! -f "$dir/munge/munge.key" ]; then
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  chmod 600 "$dir/munge/munge.key"
fi
munged --force --socket="$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed"
cat > "$conf" <<CONF
ClusterName=partrain
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=localhost CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$conf"
slurmctld -f "$conf"
slurmd -f "$conf" -N localhost
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then
    echo "export SLURM_CONF=$conf"
    exit 0
  fi
  sleep 0.2
done
echo "slurm did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
