#!/usr/bin/env bash
# README's first quick-start command: install everything (idempotent), then the main job on MNIST:
# the serial baseline and data parallelism on 2 ranks, each with seed 001's settings.
#
#   bash scripts/main_job.sh                       # 10 epochs each
#   EPOCHS=3 bash scripts/main_job.sh              # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source env.sh
EPOCHS=${EPOCHS:-10}
NP=${NP:-2}
partrain serial --config configs/base.yaml --set train.epochs="$EPOCHS" --overwrite
mpirun -np "$NP" --bind-to none partrain dp --config configs/data_parallel.yaml --set train.epochs="$EPOCHS" --overwrite
echo "results: results/runs/serial_mnist and results/runs/dp_mnist (metrics.csv, summary.json, model.safetensors)"
