#!/usr/bin/env bash
# The seeds' question answered by the performance model: predicted speedup and efficiency of dp and
# hybrid on 1-32 nodes x 64 cores, both nets, for two networks (InfiniBand 100 Gb/s and 10 Gb/s
# Ethernet), and the layout `partrain plan` recommends for each. Calibrates this machine first
# (per-layer compute at 1 and 2 threads; past them the model extrapolates with the parallel
# efficiency measured from 1 to 2 threads), then writes results/plan/seeds_plan.md.
#
#   bash bench/seeds_plan.sh          # CORES=64 NODES="1 2 4 8 16 32"
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh >/dev/null
OUT=${OUT:-results/plan}
CORES=${CORES:-64}
NODES=${NODES:-1 2 4 8 16 32}
mkdir -p "$OUT"
for net in mnist cifar10; do
  cfg=configs/data_parallel.yaml
  [ "$net" = cifar10 ] && cfg=configs/data_parallel_cifar10.yaml
  target/release/partrain calibrate --config "$cfg" --out "$OUT/calibration_$net.json" --repeats 5
  for network in ib100 eth10; do
    target/release/partrain plan --config "$cfg" --cores-per-node "$CORES" --nodes "${NODES// /,}" \
      --calibration "$OUT/calibration_$net.json" --network "$network" --top 1 \
      --out "$OUT/plan_${net}_$network.csv" > /dev/null
  done
done
python3 - "$OUT" "$CORES" "$(git rev-parse --short HEAD)" "$(lscpu | sed -n 's/^Model name: *//p')" <<'PY'
import csv, datetime, sys
out, cores, commit, cpu = sys.argv[1:]
lines = [f"Predicted by `partrain plan` on {datetime.date.today()}, commit {commit}, from a calibration on "
         f"{cpu} (`bash bench/seeds_plan.sh`): weak scaling (64 MNIST / 32 CIFAR images per replica, "
         f"the seeds' convention), {cores} cores per node. Speedup over one rank on one thread; "
         "efficiency = speedup / (nodes x cores). Best dp and best hybrid layout per row; the "
         "recommendation is the faster of the two. Compute past 2 threads per rank is extrapolated.", ""]
for net in ["mnist", "cifar10"]:
    for network in ["ib100", "eth10"]:
        rows = [r for r in csv.DictReader(open(f"{out}/plan_{net}_{network}.csv")) if r["scope"] == "weak"]
        lines += [f"**{net}, {network}**", "",
                  "| nodes | dp speedup / efficiency | hybrid speedup / efficiency | recommended layout |",
                  "|---:|---|---|---|"]
        for n in sorted({int(r["nodes"]) for r in rows}):
            at = [r for r in rows if int(r["nodes"]) == n]
            best = lambda s: max((r for r in at if r["strategy"] == s), key=lambda r: float(r["images_per_s"]), default=None)
            dp, hy = best("dp"), best("hybrid")
            cell = lambda r: "-" if r is None else f"{float(r['speedup']):,.1f} / {float(r['efficiency']):.3f}"
            rec = max([r for r in (dp, hy) if r], key=lambda r: float(r["images_per_s"]))
            desc = (f"{rec['strategy']} {rec['ranks_per_node']} rank(s)/node x {rec['threads']} threads, "
                    f"{rec['stages']} x {rec['replicas']}" + (f", {rec['micro_batches']} micro-batches {rec['schedule']}, {rec['placement']}" if rec['strategy'] == 'hybrid' else "")
                    + f", {rec['averaging']}, {float(rec['images_per_s']):,.0f} img/s")
            lines.append(f"| {n} | {cell(dp)} | {cell(hy)} | {desc} |")
        lines.append("")
open(f"{out}/seeds_plan.md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
