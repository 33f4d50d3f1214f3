#!/bin/bash
# Batch norm's running statistics by partrain's rule (`model.batchnorm_running: step_mean`, once
# per step by the mean over micro-batches) against PyTorch's (`per_forward`, once per forward):
# configs/resnet_fashion.yaml serial with 4 micro-batches of 32, 3 epochs, 3 seeds each. The rule
# moves only the running statistics, so both rules train the same weights: the difference is
# evaluation's alone, paired by seed. The table in docs/nets.md, "Batch normalisation".
#   bash bench/bn_rule.sh [OUT=results/bn_rule] [PARTRAIN=partrain]    (~1 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
OUT=${OUT:-results/bn_rule}
PARTRAIN=${PARTRAIN:-partrain}
mkdir -p "$OUT"
run() { # rule seed
    "$PARTRAIN" serial --config configs/resnet_fashion.yaml --set run.seed="$2" \
        --set model.batchnorm_running="$1" --set parallel.micro_batches=4 --set train.epochs=3 \
        --out "$OUT/$1_s$2" --overwrite > "$OUT/$1_s$2.log" 2>&1
}
for s in 1 2 3; do
    run step_mean "$s" &
    run per_forward "$s"
    wait
done
python3 bench/summarize_nets.py "$OUT" step_mean per_forward
