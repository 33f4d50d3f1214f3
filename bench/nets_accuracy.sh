#!/bin/bash
# A net of one's own against seed 001's on Fashion-MNIST, 3 seeds each, serial, one thread per run
# (two runs side by side on 2 cores): the table in docs/results.md, "A net of one's own".
#   bash bench/nets_accuracy.sh [OUT=results/nets_accuracy]    (~2 h on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh
OUT=${OUT:-results/nets_accuracy}
mkdir -p "$OUT"
run() { # config seed name
    partrain serial --config "configs/$1" --set run.seed="$2" --out "$OUT/$3_s$2" --overwrite > "$OUT/$3_s$2.log" 2>&1
}
for s in 1 2 3; do
    run fashion_mnist.yaml "$s" seed001 &
    run resnet_fashion.yaml "$s" resnet
    wait
done
python3 bench/summarize_nets.py "$OUT"
