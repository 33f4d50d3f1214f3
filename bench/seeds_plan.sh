#!/usr/bin/env bash
# The seeds' question answered by the performance model: predicted speedup and efficiency of dp and
# hybrid on 1-32 nodes x 64 cores, both nets, for two networks (InfiniBand 100 Gb/s and 10 Gb/s
# Ethernet), and the layout `partrain plan` recommends for each. Calibrates this machine first
# (per-layer compute at 1 and 2 threads; past them the model extrapolates with the parallel
# efficiency measured from 1 to 2 threads), then writes results/plan/seeds_plan.md.
#
#   bash bench/seeds_plan.sh          # CORES=64 NODES="1 2 4 8 16 32"; TARGET=99 CURVE=results/example/converge_mnist.csv
#   REUSE=1 bash bench/seeds_plan.sh  # keep the calibrations already in results/plan
#   ONLY_TARGET=1 bash bench/seeds_plan.sh   # only the time-to-accuracy table
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh >/dev/null
OUT=${OUT:-results/plan}
CORES=${CORES:-64}
NODES=${NODES:-1 2 4 8 16 32}
mkdir -p "$OUT"
# ONLY_TARGET=1: the time-to-accuracy table alone (from results/plan/calibration_mnist.json).
for net in $([ "${ONLY_TARGET:-0}" = 1 ] || echo mnist cifar10); do
  cfg=configs/data_parallel.yaml
  [ "$net" = cifar10 ] && cfg=configs/data_parallel_cifar10.yaml
  # REUSE=1 keeps a calibration already there (a second look at the same machine's figures).
  if [ "${REUSE:-0}" != 1 ] || [ ! -f "$OUT/calibration_$net.json" ]; then
    target/release/partrain calibrate --config "$cfg" --out "$OUT/calibration_$net.json" --repeats 5
  fi
  for network in ib100 eth10; do
    target/release/partrain plan --config "$cfg" --cores-per-node "$CORES" --nodes "${NODES// /,}" \
      --calibration "$OUT/calibration_$net.json" --network "$network" --top 1 \
      --out "$OUT/plan_${net}_$network.csv" > /dev/null
  done
done
[ "${ONLY_TARGET:-0}" = 1 ] || python3 - "$OUT" "$CORES" "$(git rev-parse --short HEAD)" "$(lscpu | sed -n 's/^Model name: *//p')" <<'PY'
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

# Time to accuracy (MNIST): with a measured steps-to-target curve, every layout again by predicted
# time to TARGET (step time x steps at its global batch + evaluations once per epoch), against the
# seeds' convention (64 images per replica) at the same node count.
TARGET=${TARGET:-99}
CURVE=${CURVE:-results/example/converge_mnist.csv}
# Each remedy's steps to target over plain averaging's (bench/remedies.sh): every layout is also
# weighed with each remedy, and the table names the one chosen.
REMEDIES=${REMEDIES:-results/example/remedies.csv}
remedies=(); [ -f "$REMEDIES" ] && remedies=(--remedies "$REMEDIES")
[ -f "$CURVE" ] || { echo "no $CURVE (bash bench/converge.sh makes it): time-to-target table skipped"; exit 0; }
for network in ib100 eth10; do
  target/release/partrain plan --config configs/data_parallel.yaml --cores-per-node "$CORES" --nodes "${NODES// /,}" \
    --calibration "$OUT/calibration_mnist.json" --network "$network" --top 1 \
    --target-accuracy "$TARGET" --curve "$CURVE" "${remedies[@]}" --out "$OUT/plan_target_mnist_$network.csv" > "$OUT/plan_target_mnist_$network.txt"
done
python3 - "$OUT" "$CORES" "$TARGET" "$CURVE" "$(git rev-parse --short HEAD)" "$(lscpu | sed -n 's/^Model name: *//p')" <<'PY'
import csv, datetime, sys
out, cores, target, curve, commit, cpu = sys.argv[1:]
lines = [f"Predicted by `partrain plan --target-accuracy {target} --curve {curve}` on {datetime.date.today()}, "
         f"commit {commit}, calibration on {cpu} (`bash bench/seeds_plan.sh`), MNIST, {cores} cores per node. "
         "Steps to target from the measured curve (log-log between measured batches; a global batch past the "
         "largest measured has no prediction); one evaluation per epoch counted. Left: the fastest layout "
         "in images/s under the seeds' convention (64 images per replica); right: the layout, per-rank batch "
         "and accumulation with the least predicted time to target.", ""]
fmt_t = lambda r: "beyond the curve" if not r["time_to_target_s"] else f"{float(r['time_to_target_s']):,.1f} s"
for network in ["ib100", "eth10"]:
    rows = list(csv.DictReader(open(f"{out}/plan_target_mnist_{network}.csv")))
    lines += [f"**mnist, {network}, time to {target} %**", "",
              "| nodes | seeds' convention: layout, global batch, img/s, time to target | by time to target: layout, global batch, img/s | steps to target | predicted time to target |",
              "|---:|---|---|---:|---:|"]
    for n in sorted({int(r["nodes"]) for r in rows}):
        weak = [r for r in rows if int(r["nodes"]) == n and r["scope"] == "weak"]
        tgt = [r for r in rows if int(r["nodes"]) == n and r["scope"] == "target" and r["time_to_target_s"]]
        w = max(weak, key=lambda r: float(r["images_per_s"])) if weak else None
        t = min(tgt, key=lambda r: float(r["time_to_target_s"])) if tgt else None
        lay = lambda r: (f"{r['strategy']} {r['ranks_per_node']}x{r['threads']}t, {r['stages']} x {r['replicas']}, "
                         f"{r['per_replica_batch']}/replica" + (f" in {r['micro_batches']} micro-batches" if int(r['micro_batches']) > 1 else "")
                         + (f", remedy {r['remedy']}" if r.get("remedy") and r["scope"] == "target" else ""))
        left = ("refused: 64 per replica exceeds the training set" if w is None
                else f"{lay(w)}, {int(w['global_batch']):,}, {float(w['images_per_s']):,.0f}, {fmt_t(w)}")
        right = "-" if t is None else f"{lay(t)}, {int(t['global_batch']):,}, {float(t['images_per_s']):,.0f}"
        steps = "-" if t is None else f"{float(t['steps_to_target']):,.0f}"
        lines.append(f"| {n} | {left} | {right} | {steps} | {'-' if t is None else fmt_t(t)} |")
    lines.append("")
open(f"{out}/seeds_time_to_target.md", "w").write("\n".join(lines))
print("\n".join(lines))
PY
