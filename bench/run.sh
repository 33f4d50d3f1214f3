#!/usr/bin/env bash
# partrain against PyTorch used well, on the same machine, work and batch (64 per rank), run
# alternately (A B A B ...) for ROUNDS rounds; medians in results/bench/bench.md and bench.csv.
#
#   bash bench/run.sh                          # ROUNDS=3 TRAIN_LIMIT=12800, MNIST + CIFAR-shaped
#   ROUNDS=5 DATASETS=mnist bash bench/run.sh
#
# It starts by measuring this machine's fp32 and bf16 peak at 1 and 2 threads (`partrain peak`:
# libtorch GEMM and a large channels-last convolution, the faster) and reports every row as
# images/s and as a fraction of that peak (achieved training FLOP/s over peak FLOP/s).
#   BASELINE=/tmp/partrain-old bash bench/run.sh   # also every partrain row with another binary
#                                                 # (e.g. the previous commit's), side by side
#
# Configurations (partrain-fp32 = NCHW, -cl = channels-last, -bf16-cl = bf16 + channels-last):
# serial at 1 and 2 threads (partrain fp32 NCHW / channels-last / bf16 vs PyTorch
# eager / channels-last / bf16 autocast + channels-last), dp 2 ranks x 1 thread (partrain vs
# PyTorch DDP gloo and PyTorch + mpi4py all-reduce, each also with channels-last), hybrid 2 stages x 1 replica (partrain vs the
# bound predicted from its own stage times). CIFAR-shaped: the cifar_cnn net on random
# 3 x 32 x 32 images written in the CIFAR-10 binary format (no registry ships CIFAR-10).
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh
ROUNDS=${ROUNDS:-3}
TRAIN_LIMIT=${TRAIN_LIMIT:-12800}
DATASETS=${DATASETS:-"mnist cifar10"}
OUT=${OUT:-results/bench}
PY=.venv/bin/python
work="$OUT/raw"
rm -rf "$work"
mkdir -p "$work"
# This machine's peak first, in the same session: every row is also reported as a fraction of it
# (and partrain's summaries get fraction_of_peak through PARTRAIN_PEAK).
partrain peak --threads 1,2 --out "$OUT/peak.json"
export PARTRAIN_PEAK="$OUT/peak.json"
cifar_dir="$OUT/cifar10-shaped"
if [[ " $DATASETS " == *" cifar10 "* ]] && [ ! -f "$cifar_dir/test_batch.bin" ]; then
  $PY - "$cifar_dir" <<'PY'
import os, sys, torch
d = sys.argv[1]; os.makedirs(d, exist_ok=True); g = torch.Generator().manual_seed(0)
for name, n in [(f"data_batch_{i}.bin", 10000) for i in range(1, 6)] + [("test_batch.bin", 10000)]:
    recs = torch.randint(0, 256, (n, 3073), dtype=torch.uint8, generator=g)
    recs[:, 0] = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
    open(os.path.join(d, name), "wb").write(recs.numpy().tobytes())
PY
fi

pt() { # pt NAME NP THREADS MODE DATASET DIR: a PyTorch reference
  local name=$1 np=$2 t=$3 mode=$4 ds=$5 dir=$6
  if [ "$np" -eq 1 ]; then
    $PY bench/reference.py --mode "$mode" --threads "$t" --dataset "$ds" --data "$dir" --train-limit "$TRAIN_LIMIT" \
      --out "$work/$name.json" > "$work/$name.log" 2>&1
  else
    mpirun -np "$np" $(partrain_binding "$np" "$t") $PY bench/reference.py --mode "$mode" --threads "$t" --dataset "$ds" --data "$dir" \
      --train-limit "$TRAIN_LIMIT" --out "$work/$name.json" > "$work/$name.log" 2>&1
  fi || { echo "FAILED: $name (log: $work/$name.log)"; tail -n 20 "$work/$name.log"; exit 1; }
}
run_partrain() { # run_partrain BINARY NAME NP THREADS COMMAND CONFIG [SETS...]
  local bin=$1 name=$2 np=$3 t=$4 cmd=$5 cfg=$6; shift 6
  local sets=(--set data.train_limit="$TRAIN_LIMIT" --set data.test_limit=1000 --set train.epochs=1
              --set parallel.threads_per_rank="$t" --set train.batch_size=64 --set checkpoint.every_epochs=0 --overwrite "$@")
  if [ "$cmd" = serial ]; then
    "$bin" serial --config "$cfg" "${sets[@]}" --out "$work/$name" > "$work/$name.log" 2>&1
  else
    mpirun -np "$np" $(partrain_binding "$np" "$t") "$bin" "$cmd" --config "$cfg" "${sets[@]}" --out "$work/$name" > "$work/$name.log" 2>&1
  fi || { echo "FAILED: $name (log: $work/$name.log)"; tail -n 20 "$work/$name.log"; exit 1; }
}
pr() { # pr NAME NP THREADS COMMAND CONFIG [SETS...]: partrain (and right after it the BASELINE binary)
  run_partrain "$(command -v partrain)" "$@"
  if [ -n "${BASELINE:-}" ]; then
    local name=$1; shift
    run_partrain "$BASELINE" "${name/_partrain-/_baseline-}" "$@"
  fi
}

for r in $(seq 1 "$ROUNDS"); do
  for ds in $DATASETS; do
    echo "round $r: $ds"
    if [ "$ds" = mnist ]; then dir=data/mnist; base=configs/base.yaml; dp=configs/data_parallel.yaml; hy=configs/hybrid_pipeline.yaml
    else dir=$cifar_dir; base=configs/cifar10.yaml; dp=configs/data_parallel_cifar10.yaml; hy=configs/hybrid_pipeline_cifar10.yaml; fi
    d=(--set data.dir="$dir")
    for t in 1 2; do
      pr "${ds}_serial_t${t}_partrain-fp32_r$r" 1 "$t" serial "$base" "${d[@]}" --set train.channels_last=false
      pt "${ds}_serial_t${t}_pytorch-eager_r$r" 1 "$t" eager "$ds" "$dir"
      pr "${ds}_serial_t${t}_partrain-fp32-cl_r$r" 1 "$t" serial "$base" "${d[@]}" --set train.channels_last=true
      pt "${ds}_serial_t${t}_pytorch-channels_last_r$r" 1 "$t" channels_last "$ds" "$dir"
      pr "${ds}_serial_t${t}_partrain-bf16-cl_r$r" 1 "$t" serial "$base" "${d[@]}" --set train.precision=bf16 --set train.channels_last=true
      pt "${ds}_serial_t${t}_pytorch-bf16_cl_r$r" 1 "$t" bf16_cl "$ds" "$dir"
    done
    # One rank with both cores' threads against dp's two ranks of one thread, at dp's global batch
    # (2 x 64): which layout wins on a node.
    pr "${ds}_serial_t2_partrain-fp32-cl-b128_r$r" 1 2 serial "$base" "${d[@]}" --set train.channels_last=true --set train.batch_size=128
    pr "${ds}_dp2x1_t1_partrain-fp32_r$r" 2 1 dp "$dp" "${d[@]}" --set train.channels_last=false
    pt "${ds}_dp2x1_t1_pytorch-mpi4py_r$r" 2 1 mpi4py "$ds" "$dir"
    pr "${ds}_dp2x1_t1_partrain-fp32-cl_r$r" 2 1 dp "$dp" "${d[@]}" --set train.channels_last=true
    pt "${ds}_dp2x1_t1_pytorch-ddp_r$r" 2 1 ddp "$ds" "$dir"
    pt "${ds}_dp2x1_t1_pytorch-mpi4py_cl_r$r" 2 1 mpi4py_cl "$ds" "$dir"
    pt "${ds}_dp2x1_t1_pytorch-ddp_cl_r$r" 2 1 ddp_cl "$ds" "$dir"
    pr "${ds}_hybrid2x1_t1_partrain-fp32-cl_r$r" 2 1 hybrid "$hy" "${d[@]}" --set train.channels_last=true
  done
  echo "round $r done"
done
$PY bench/summarize.py "$work" "$OUT" "$OUT/peak.json"
