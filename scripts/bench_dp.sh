#!/usr/bin/env bash
# Data-parallel efficiency on this machine: serial (1 rank x 1 thread) and dp (N ranks x 1 thread,
# 64 images per rank) run alternately, ROUNDS times each; medians of images/s and
# efficiency = dp images/s / (N x serial images/s). A benchmark, not a test: timing on shared
# cores is noisy, so only side-by-side ratios are reported.
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
    partrain serial --config configs/base.yaml "${common[@]}" --set train.channels_last=$cl --out "$OUT/serial_cl${cl}_$r" > /dev/null
    mpirun -np "$NP" --bind-to none partrain dp --config configs/data_parallel.yaml "${common[@]}" \
      --set train.channels_last=$cl --out "$OUT/dp${NP}_cl${cl}_$r" > /dev/null
  done
  echo "round $r done"
done
python3 - "$OUT" "$ROUNDS" "$NP" <<'PY'
import json, statistics, sys
out, rounds, np_ = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda n: json.load(open(f"{out}/{n}/summary.json"))
md = "| layout | serial 1x1 images/s | dp %dx1 images/s | speedup | parallel efficiency | all-reduce share | efficiency per round |\n|---|---|---|---|---|---|---|\n" % np_
for cl, name in (("false", "NCHW"), ("true", "channels-last")):
    s = [load(f"serial_cl{cl}_{r}")["samples_per_second"] for r in range(1, rounds + 1)]
    d = [load(f"dp{np_}_cl{cl}_{r}") for r in range(1, rounds + 1)]
    dips = [x["samples_per_second"] for x in d]
    eff = [dv / (np_ * sv) for sv, dv in zip(s, dips)]
    ar = statistics.median(x["allreduce_seconds"] / x["train_seconds"] for x in d)
    md += (f"| {name} | {statistics.median(s):.0f} | {statistics.median(dips):.0f} | "
           f"{statistics.median(dips) / statistics.median(s):.2f} | {statistics.median(eff):.3f} | {ar:.3f} | "
           f"{' '.join(f'{e:.3f}' for e in eff)} |\n")
open(f"{out}/dp_efficiency.md", "w").write(md)
print(md)
PY
