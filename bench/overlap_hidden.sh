#!/usr/bin/env bash
# How much of the overlapped all-reduce backward hides, by per-rank batch: dp on 4 emulated nodes
# x 1 rank at 1 Gbit/s with `sync.overlap: true` (bench/remedies.sh's layout and recipe), STEPS
# steps per run, 3 seeds per batch; prints the summary's `averaging_hidden_fraction` (1 - the
# wait after backward / the all-reduce seconds on the communication thread) and the step time.
#
#   bash bench/overlap_hidden.sh                 # ~5 min here
#   BATCHES="64 128 256" LINK=100mbit bash bench/overlap_hidden.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LINK=${LINK:-1gbit}
BATCHES=${BATCHES:-"64 128"}
SEEDS=${SEEDS:-"42 43 44"}
STEPS=${STEPS:-120}
OUT=${OUT:-results/overlap_hidden}
NODES=4
export PARTRAIN_CLUSTER=${PARTRAIN_CLUSTER:-/tmp/partrain-overlap}
export PARTRAIN_CLUSTER_PORT=${PARTRAIN_CLUSTER_PORT:-18900}
export PARTRAIN_CLUSTER_NODE=${PARTRAIN_CLUSTER_NODE:-ovl}
mkdir -p "$OUT"
bash scripts/setup.sh > /dev/null
bash scripts/cluster.sh up $NODES --link "$LINK" > /dev/null
trap 'bash scripts/cluster.sh down > /dev/null 2>&1' EXIT
for batch in $BATCHES; do
  for seed in $SEEDS; do
    dir="$OUT/b${batch}_s$seed"
    bash scripts/cluster.sh exec mpirun --hostfile "$PARTRAIN_CLUSTER/hostfile" -np $NODES --map-by ppr:1:node \
      --bind-to none -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive \
      "$PWD/target/release/partrain" dp --config configs/data_parallel.yaml --set sync.overlap=true \
      --set train.batch_scope=per_rank --set train.batch_size="$batch" --set train.lr_scaling=linear \
      --set train.warmup_epochs=1 --set train.lr_schedule=cosine --set train.max_steps="$STEPS" \
      --set train.target_accuracy=null --set checkpoint.every_epochs=0 --set run.seed="$seed" \
      --set parallel.threads_per_rank=1 --out "$dir" --overwrite </dev/null > "$dir.log" 2>&1 \
      || echo "failed: see $dir.log"
  done
done
python3 - "$OUT" "$LINK" <<'PY'
import json, pathlib, statistics, subprocess, sys
out, link = pathlib.Path(sys.argv[1]), sys.argv[2]
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
print(f"CPU: {model}; link {link}; dp 4 nodes x 1 rank, sync.overlap\n")
print("| images per rank | seeds | hidden share of the all-reduce: median (min-max) | step ms: median |")
print("|---:|---:|---|---:|")
rows = {}
for f in sorted(out.glob("b*_s*/summary.json")):
    s = json.loads(f.read_text())
    batch = int(f.parent.name[1:].split("_s")[0])
    rows.setdefault(batch, []).append((s["averaging_hidden_fraction"], 1000 * s["train_seconds"] / s["steps"]))
for batch in sorted(rows):
    h = sorted(r[0] for r in rows[batch])
    ms = statistics.median(r[1] for r in rows[batch])
    print(f"| {batch} | {len(h)} | {100 * statistics.median(h):.1f} % ({100 * h[0]:.1f}-{100 * h[-1]:.1f}) | {ms:.1f} |")
PY
