#!/usr/bin/env bash
# The gradient-averaging paths side by side (`partrain sync-bench`: the trainer's own averaging
# code, timed on its own) for the MNIST and CIFAR-10 gradient sizes, on one node and on the
# emulated cluster (scripts/cluster.sh): 1 node x 2 ranks, 2 nodes x 1, 2 nodes x 2, 4 nodes x 1,
# each path the layout allows plus Open MPI's hierarchical coll/han (`--mca coll_han_priority 100`
# under the flat all-reduce). A layout whose launch fails (coll/han in Open MPI 4.1.4 crashes with
# 2 ranks per node) is recorded as failed, not hidden.
#
#   bash bench/sync.sh                  # results/bench/sync.csv and sync.md
#
# The emulated nodes share this machine's cores: layouts with more ranks than cores are
# oversubscribed, and their times measure the scheduler as much as the averaging.
set -uo pipefail
cd "$(dirname "$0")/.."
# Emulated nodes share this machine's cores: no OpenMP pinning (env.sh would pin every rank's
# first thread to core 0, and the measured times were then 24 ms scheduler slices).
PARTRAIN_RANKS_PER_NODE=4 source env.sh
OUT=${OUT:-results/bench}
REPEATS=${REPEATS:-300}
mkdir -p "$OUT"
csv="$OUT/sync.csv"
rm -f "$csv"
export PARTRAIN_CLUSTER=${PARTRAIN_CLUSTER:-/tmp/partrain-sync-bench}
bash scripts/cluster.sh up 4 > /dev/null
trap 'bash scripts/cluster.sh down' EXIT
BIN="$(pwd)/target/release/partrain"
failed=()
bench() { # bench NODES RANKS_PER_NODE [MPIRUN FLAGS...] -- [SYNC-BENCH FLAGS...]
  local n=$1 per=$2; shift 2
  local flags=() args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  args=("$@")
  if [ "$n" -eq 1 ]; then
    mpirun -np "$per" $(partrain_binding "$per" 1) "${flags[@]}" "$BIN" sync-bench --repeats "$REPEATS" --out "$csv" "${args[@]}"
  else
    bash scripts/cluster.sh exec mpirun --hostfile "$PARTRAIN_CLUSTER/hostfile" -np $((n * per)) \
      --map-by "ppr:$per:node" --bind-to none "${flags[@]}" "$BIN" sync-bench --repeats "$REPEATS" --out "$csv" "${args[@]}"
  fi > /dev/null 2>&1 || failed+=("$n nodes x $per: ${args[*]} ${flags[*]}")
}
for layout in "1 2" "2 1" "2 2" "4 1"; do
  read -r n per <<< "$layout"
  bench "$n" "$per" --
  bench "$n" "$per" --mca coll_han_priority 100 -- --paths mpi_allreduce --label han
  echo "$n node(s) x $per rank(s) done"
done
python3 - "$csv" "${failed[@]}" > "$OUT/sync.md" <<'PY'
import csv, sys, datetime, os
rows = list(csv.DictReader(open(sys.argv[1])))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
commit = os.popen("git rev-parse --short HEAD").read().strip()
print(f"Gradient averaging per step, {datetime.date.today()}, commit {commit}, {os.cpu_count()} x {cpu}"
      " (`bash bench/sync.sh`): median microseconds of the slowest rank (10th-90th percentile).\n")
sizes = sorted({int(r["elements"]) for r in rows})
names = {421642: "MNIST net", 1070794: "CIFAR net"}
layouts = sorted({(int(r["nodes"]), int(r["ranks_per_node"])) for r in rows})
paths = ["shared_memory", "two_level", "mpi_allreduce", "mpi_allreduce han"]
print("| layout | gradient | " + " | ".join(paths) + " |")
print("|---|---|" + "---:|" * len(paths))
for n, per in layouts:
    for e in sizes:
        cells = []
        for p in paths:
            path, _, label = p.partition(" ")
            m = [r for r in rows if (int(r["nodes"]), int(r["ranks_per_node"]), int(r["elements"])) == (n, per, e)
                 and r["path"] == path and r["label"] == label]
            cells.append(f"{float(m[0]['median_us']):,.0f} ({float(m[0]['p10_us']):,.0f}-{float(m[0]['p90_us']):,.0f})" if m else "-")
        print(f"| {n} node(s) x {per} | {names.get(e, e)} ({e:,} f32) | " + " | ".join(cells) + " |")
for f in sys.argv[2:]:
    print(f"\nFailed: {f}")
PY
cat "$OUT/sync.md"
