#!/usr/bin/env bash
# The performance model against measurement on every layout this machine can run: calibrate
# (compute on one rank, the link inside a node on two, the link between emulated nodes on the
# cluster), run each layout, and let `partrain report --calibration` put the prediction next to
# the measurement (table: results/predict/metrics/speedup_table.md, plots: results/predict/plots).
#
#   bash bench/predict.sh                      # MNIST; TRAIN_LIMIT=12800
#   CONFIG=configs/cifar10.yaml ... (set DATA for CIFAR-shaped data)
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh
OUT=${OUT:-results/predict}
TRAIN_LIMIT=${TRAIN_LIMIT:-12800}
runs="$OUT/runs"
rm -rf "$runs"
mkdir -p "$runs"
cal="$OUT/calibration.json"
rm -f "$cal"
partrain calibrate --config configs/base.yaml --threads 1,2 --out "$cal"
mpirun -np 2 $(partrain_binding 2 1) partrain calibrate --config configs/base.yaml --links-only --out "$cal"
# Four ranks on this machine (oversubscribed here): the slowdown when more ranks than cores share it.
mpirun -np 4 $(partrain_binding 4 1) partrain calibrate --config configs/base.yaml --links-only --out "$cal"
export PARTRAIN_CLUSTER=${PARTRAIN_CLUSTER:-/tmp/partrain-predict}
bash scripts/cluster.sh up 4 > /dev/null
trap 'bash scripts/cluster.sh down' EXIT
cluster_mpirun() { bash scripts/cluster.sh exec mpirun --hostfile "$PARTRAIN_CLUSTER/hostfile" --bind-to none "$@"; }
cluster_mpirun -np 2 --map-by ppr:1:node partrain calibrate --config configs/base.yaml --links-only --out "$cal"
sets=(--set data.train_limit="$TRAIN_LIMIT" --set data.test_limit=500 --set train.epochs=1 --set checkpoint.every_epochs=0 --overwrite)
REPEATS=${REPEATS:-3}
run() { # run NAME COMMAND...: REPEATS times, into NAME_r1, NAME_r2, ... (the report takes medians)
  local name=$1; shift
  for r in $(seq 1 "$REPEATS"); do echo "== $name $r"; "$@" --out "$runs/${name}_r$r" > /dev/null; done
}
run serial_t1 partrain serial --config configs/base.yaml "${sets[@]}"
run serial_t2 partrain serial --config configs/base.yaml "${sets[@]}" --set parallel.threads_per_rank=2
run dp_2x1 mpirun -np 2 $(partrain_binding 2 1) partrain dp --config configs/data_parallel.yaml "${sets[@]}"
run hybrid_2x1 mpirun -np 2 $(partrain_binding 2 1) partrain hybrid --config configs/hybrid_pipeline.yaml "${sets[@]}"
run hybrid_2x2 mpirun -np 4 $(partrain_binding 4 1) partrain hybrid --config configs/hybrid_pipeline.yaml "${sets[@]}"
run dp_2nodes cluster_mpirun -np 2 --map-by ppr:1:node partrain dp --config configs/data_parallel.yaml "${sets[@]}"
run dp_4nodes cluster_mpirun -np 4 --map-by ppr:1:node -x OMP_WAIT_POLICY=passive partrain dp --config configs/data_parallel.yaml "${sets[@]}"
partrain report --runs "$runs" --out "$OUT" --calibration "$cal"
