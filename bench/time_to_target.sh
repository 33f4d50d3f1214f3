#!/usr/bin/env bash
# Time to a target accuracy, predicted against measured, on the layouts this machine can run:
# serial (2 threads), dp 2 x 1, dp on 2 emulated nodes and hybrid 2 x 1 on all of MNIST, evaluated
# 4 times per epoch and stopped at the target, each with the recipe the curve measured best at its
# global batch (64: seed 001's; 128: the linear rule, 1-epoch warmup, cosine). The prediction is the
# calibrated step time x the steps to target at the run's global batch from the measured curve,
# plus the evaluations (`partrain report --calibration --curve`).
#
#   bash bench/time_to_target.sh            # TARGET=99.0 CURVE=results/example/converge_mnist.csv
#
# Writes results/time_to_target/metrics/speedup_table.md (date, CPU, commit, command on top).
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh
OUT=${OUT:-results/time_to_target}
TARGET=${TARGET:-99.0}
CURVE=${CURVE:-results/example/converge_mnist.csv}
runs="$OUT/runs"
cal="$OUT/calibration.json"
rm -rf "$runs" "$cal"
mkdir -p "$runs"
partrain calibrate --config configs/base.yaml --threads 1,2 --out "$cal"
mpirun -np 2 $(partrain_binding 2 1) partrain calibrate --config configs/base.yaml --links-only --out "$cal"
export PARTRAIN_CLUSTER=${PARTRAIN_CLUSTER:-/tmp/partrain-ttt}
PARTRAIN_CLUSTER_PORT=${PARTRAIN_CLUSTER_PORT:-24800} PARTRAIN_CLUSTER_NODE=${PARTRAIN_CLUSTER_NODE:-ttt} \
  bash scripts/cluster.sh up 2 > /dev/null
trap 'bash scripts/cluster.sh down' EXIT
cluster_mpirun() { bash scripts/cluster.sh exec mpirun --hostfile "$PARTRAIN_CLUSTER/hostfile" --bind-to none "$@"; }
cluster_mpirun -np 2 --map-by ppr:1:node partrain calibrate --config configs/base.yaml --links-only --out "$cal"
# 938 steps per epoch at a global batch of 64, 469 at 128: about 4 evaluations per epoch.
sets=(--set train.target_accuracy="$TARGET" --set train.stop_at_target=true --set train.epochs=10
  --set checkpoint.every_epochs=0 --overwrite)
run() { # run NAME EVAL_EVERY COMMAND...
  local name=$1 every=$2; shift 2
  echo "== $name"
  "$@" "${sets[@]}" --set train.eval_every_steps="$every" --out "$runs/$name" | grep -E "^target|^done" || true
}
run serial_t2 234 partrain serial --config configs/base.yaml --set parallel.threads_per_rank=2
linear=(--set train.lr_scaling=linear --set train.warmup_epochs=1 --set train.lr_schedule=cosine)
run dp_2x1 117 mpirun -np 2 $(partrain_binding 2 1) partrain dp --config configs/data_parallel.yaml "${linear[@]}"
run dp_2nodes 117 cluster_mpirun -np 2 --map-by ppr:1:node partrain dp --config configs/data_parallel.yaml "${linear[@]}"
run hybrid_2x1 234 mpirun -np 2 $(partrain_binding 2 1) partrain hybrid --config configs/hybrid_pipeline.yaml
partrain report --runs "$runs" --out "$OUT" --calibration "$cal" --curve "$CURVE"
table="$OUT/metrics/speedup_table.md"
{
  echo "Measured on $(date +%F), commit $(git rev-parse --short HEAD), $(lscpu | sed -n 's/^Model name: *//p')" \
    "(\`bash bench/time_to_target.sh\`, curve $CURVE)."
  echo
  cat "$table"
} > "$table.tmp" && mv "$table.tmp" "$table"
cat "$table"
