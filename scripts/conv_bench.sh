#!/usr/bin/env bash
# Seed 003's convolution experiment on this machine: strong and weak scaling over 1, 2 and 4 ranks
# for its two cases, tables in results/conv_bench/ (markdown + csv). 4 ranks on a 2-core machine
# are oversubscribed, which the times show.
#
#   bash scripts/conv_bench.sh
#   NPS="1 2 4 8" bash scripts/conv_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=${PARTRAIN_RANKS_PER_NODE:-2} source env.sh
NPS=${NPS:-"1 2 4"}
OUT=${OUT:-results/conv_bench}
cores=$(partrain_cores)
# case: name, strong total batch, weak batch per rank, channels, size
cases=("large 80 20 3 1024" "small 160000 40000 1 32")
for c in "${cases[@]}"; do
  read -r name strong weak ch size <<< "$c"
  for np in $NPS; do
    over=(); [ "$np" -gt "$cores" ] && over=(--oversubscribe)
    mpirun -np "$np" "${over[@]}" --bind-to none partrain conv-bench --case "$name" --mode strong \
      --batch "$strong" --channels "$ch" --out-channels "$ch" --size "$size" --out "$OUT"
    mpirun -np "$np" "${over[@]}" --bind-to none partrain conv-bench --case "$name" --mode weak \
      --batch "$weak" --channels "$ch" --out-channels "$ch" --size "$size" --out "$OUT"
  done
done
cat "$OUT"/conv_bench_*.md
