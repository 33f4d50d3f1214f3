#!/usr/bin/env bash
# Seed 003's convolution experiment on this machine: strong and weak scaling over 1, 2 and 4 ranks
# for its two cases. The machine's peak is measured first (partrain peak) so every row has its
# fraction of peak. Tables per case and mode in results/conv_bench/ (markdown + csv) and all of them,
# with date, CPU model and commit, in results/conv_bench/conv_bench.md. 4 ranks on a 2-core machine
# are oversubscribed, which the times show (and the fraction counts only the cores there are).
#
#   bash scripts/conv_bench.sh
#   NPS="1 2 4 8" bash scripts/conv_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=${PARTRAIN_RANKS_PER_NODE:-2} source env.sh
NPS=${NPS:-"1 2 4"}
OUT=${OUT:-results/conv_bench}
mkdir -p "$OUT"
rm -f "$OUT"/conv_bench_*.csv "$OUT"/conv_bench_*.md
cores=$(partrain_cores)
partrain peak --threads 1 --out "$OUT/peak.json"
export PARTRAIN_PEAK=$OUT/peak.json
# case: name, strong total batch, weak batch per rank, channels, size
cases=("large 80 20 3 1024" "small 160000 40000 1 32")
for c in "${cases[@]}"; do
  read -r name strong weak ch size <<< "$c"
  for np in $NPS; do
    over=(); [ "$np" -gt "$cores" ] && over=(--oversubscribe)
    mpirun -np "$np" "${over[@]}" --bind-to none -x PARTRAIN_PEAK partrain conv-bench --case "$name" \
      --mode strong --batch "$strong" --channels "$ch" --out-channels "$ch" --size "$size" --out "$OUT"
    mpirun -np "$np" "${over[@]}" --bind-to none -x PARTRAIN_PEAK partrain conv-bench --case "$name" \
      --mode weak --batch "$weak" --channels "$ch" --out-channels "$ch" --size "$size" --out "$OUT"
  done
done
{
  echo "# conv-bench (seed 003) on $(hostname)"
  echo
  echo "- date: $(date -u +%Y-%m-%d), CPU: $(lscpu | sed -n 's/^Model name: *//p'), $cores cores"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- command: NPS=\"$NPS\" bash scripts/conv_bench.sh"
  python3 - "$OUT/peak.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("- peak (partrain peak, 1 thread per rank): " + ", ".join(
    f"{r['precision']} {r['peak_gflops']:.1f} GFLOP/s" for r in rows if r["threads"] == 1))
PY
  for f in "$OUT"/conv_bench_large_strong.md "$OUT"/conv_bench_large_weak.md \
           "$OUT"/conv_bench_small_strong.md "$OUT"/conv_bench_small_weak.md; do
    echo; echo "## $(basename "$f" .md)"; echo; cat "$f"
  done
} > "$OUT/conv_bench.md"
cat "$OUT/conv_bench.md"
