#!/usr/bin/env bash
# Data-parallel efficiency on this machine: serial (1 rank x 1 thread) and dp (N ranks x 1 thread,
# 64 images per rank) run alternately, ROUNDS times each; medians of images/s and
# efficiency = dp images/s / (N x serial images/s). A benchmark, not a test: timing on shared
# cores is noisy, so only side-by-side ratios are reported.
#
# Each round also runs N independent serial processes at once, one per core (no MPI, nothing
# shared): their summed images/s over N x serial is the efficiency this machine allows any N
# processes, the ceiling for dp. dp efficiency / ceiling is what the MPI layer itself costs
# (all-reduce plus waiting for the slower rank).
#
#   bash scripts/bench_dp.sh                 # ROUNDS=3 NP=2 TRAIN_LIMIT=19200
set -euo pipefail
cd "$(dirname "$0")/.."
# Several ranks share this machine: no OpenMP pinning from env.sh (see env.sh).
PARTRAIN_RANKS_PER_NODE=${PARTRAIN_RANKS_PER_NODE:-2} source env.sh
ROUNDS=${ROUNDS:-3}
NP=${NP:-2}
TRAIN_LIMIT=${TRAIN_LIMIT:-19200}
OUT=results/bench/dp
mkdir -p "$OUT"
common=(--set data.train_limit="$TRAIN_LIMIT" --set data.test_limit=1000 --set train.epochs=1
        --set parallel.threads_per_rank=1 --set train.batch_size=64 --set train.batch_scope=per_rank --overwrite)
# Both tensor layouts: channels-last (the configs' default) makes each rank faster, which leaves
# the all-reduce and the two ranks' contention for memory bandwidth a larger share.
for r in $(seq 1 "$ROUNDS"); do
  for cl in false true; do
    # Pinned to one core like each dp rank (mpirun --bind-to core): the same placement on both sides.
    taskset -c 0 partrain serial --config configs/base.yaml "${common[@]}" --set train.channels_last=$cl --out "$OUT/serial_cl${cl}_$r" > /dev/null
    for i in $(seq 0 $((NP - 1))); do
      taskset -c $((i % $(partrain_cores))) partrain serial --config configs/base.yaml "${common[@]}" \
        --set train.channels_last=$cl --out "$OUT/concurrent_cl${cl}_${r}_$i" > /dev/null &
    done
    wait
    mpirun -np "$NP" $(partrain_binding "$NP" 1) partrain dp --config configs/data_parallel.yaml "${common[@]}" \
      --set train.channels_last=$cl --out "$OUT/dp${NP}_cl${cl}_$r" > /dev/null
  done
  echo "round $r done"
done
python3 - "$OUT" "$ROUNDS" "$NP" <<'PY'
import json, statistics, sys
out, rounds, np_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda n: json.load(open(f"{out}/{n}/summary.json"))
med = statistics.median
md = (f"| layout | serial 1x1 images/s | {np_} serial at once, images/s each | ceiling | dp {np_}x1 images/s | speedup "
      "| parallel efficiency | efficiency / ceiling | all-reduce share | efficiency per round |\n"
      "|---|---|---|---|---|---|---|---|---|---|\n")
for cl, name in (("false", "NCHW"), ("true", "channels-last")):
    rs = range(1, rounds + 1)
    s = [load(f"serial_cl{cl}_{r}")["samples_per_second"] for r in rs]
    conc = [[load(f"concurrent_cl{cl}_{r}_{i}")["samples_per_second"] for i in range(np_)] for r in rs]
    d = [load(f"dp{np_}_cl{cl}_{r}") for r in rs]
    dips = [x["samples_per_second"] for x in d]
    eff = [dv / (np_ * sv) for sv, dv in zip(s, dips)]
    ceil = [sum(c) / (np_ * sv) for sv, c in zip(s, conc)]
    ar = med(x["allreduce_seconds"] / x["train_seconds"] for x in d)
    md += (f"| {name} | {med(s):.0f} | {med(sum(c) / np_ for c in conc):.0f} | {med(ceil):.3f} | {med(dips):.0f} | "
           f"{med(dips) / med(s):.2f} | {med(eff):.3f} | {med(e / c for e, c in zip(eff, ceil)):.3f} | {ar:.3f} | "
           f"{' '.join(f'{e:.3f}' for e in eff)} |\n")
open(f"{out}/dp_efficiency.md", "w").write(md)
print(md)
PY
