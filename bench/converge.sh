#!/usr/bin/env bash
# Steps to a target test accuracy against the global batch (Shallue et al.'s figure), measured on
# this machine:
#
#   nohup bash bench/converge.sh > converge_mnist.log 2>&1 &            # MNIST to 99.0 %, ~3 h here
#   DATASET=fashion-mnist TARGET=90 nohup bash bench/converge.sh &      # the second workload
#   BATCHES="4096" SEEDS="42" bash bench/converge.sh                    # one batch, one seed
#   CAP_EPOCHS=30 RECIPES="lars" BATCHES="1024" bash bench/converge.sh   # a longer run of one recipe
#   RECIPES="adam-1cycle lamb-1cycle" BATCHES="64 128 256 512 1024" NAME=converge_mnist_adaptive \
#     bash bench/converge.sh                                           # the Adam family alone
#
# At every global batch (BATCHES) a small grid of recipes (`recipes` below) runs on the first seed;
# then the recipe with the fewest steps to the target (else the best accuracy) runs on the other
# seeds. Every run is data parallelism on 2 ranks with gradient accumulation into micro-batches of
# at most 128 images: step for step what any layout of that global batch computes (equivalence
# tested within 1e-4, tests/time_to_accuracy.rs), so a global batch of 16,384 here is what 256
# replicas of 64 would compute. Each run stops at the target, evaluates about four times per epoch
# (every step when an epoch has fewer than 4; the evaluations count in the time, as in MLPerf) and
# gives up after `cap` epochs (CAP_EPOCHS replaces it, and the recipe's name gains `-e<epochs>`:
# the cosine decays over the cap, so a longer cap is another recipe; RECIPES keeps only the named
# recipes of the grid). Finished runs are skipped: the script can be stopped and restarted.
# Last, `partrain converge table` writes results/example/converge_<dataset>.{csv,md,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh
DATASET=${DATASET:-mnist}
TARGET=${TARGET:-99.0}
BATCHES=${BATCHES:-"64 128 256 512 1024 2048 4096 8192 16384"}
SEEDS=${SEEDS:-"42 43 44"}
CAP_EPOCHS=${CAP_EPOCHS:-}
RECIPES=${RECIPES:-}
OUT=${OUT:-results/converge/$DATASET}
TABLE=${TABLE:-results/example}
TRAIN_IMAGES=60000
mkdir -p "$OUT/runs"

# The epochs a run may take before it gives up: the acceptance bounds of the large batches (99.0 %
# within 15 epochs at 4,096, 25 at 8,192, 40 at 16,384), and room for the small ones.
cap() {
  local b=$1
  if ((b <= 1024)); then echo 10; elif ((b <= 4096)); then echo 15; elif ((b <= 8192)); then echo 25; else echo 40; fi
}

# The recipes to run at global batch $1: the grid's, or those RECIPES names, each named for its cap
# when CAP_EPOCHS replaces it.
recipes() {
  grid "$1" | while read -r name sets; do
    if [ -z "$RECIPES" ] || [[ " $RECIPES " == *" $name "* ]]; then
      echo "$name${CAP_EPOCHS:+-e$CAP_EPOCHS} $sets"
    fi
  done
}

# The grid at global batch $1: one recipe per line, "name key=value ...". Seed 001's recipe
# (momentum SGD, lr 0.01, constant) everywhere; from 128 to 512 the linear rule (Goyal et al.) with
# a 1-epoch warmup and cosine decay (seed 001's rate alone does not scale: without it the small
# batches' steps stay far above perfect scaling); from 256 the square-root rule with a 1-epoch warmup
# and cosine decay; from 1,024 LARS (linear scaling from 64, 2-epoch warmup, cosine decay, weight
# decay 5e-4 on weights, trust 0.02); from 2,048 also trust 0.01; from 8,192 also trust 0.01 with a
# 5-epoch warmup. The cosine decays to zero at the run's cap. Up to 1,024 also Adam one-cycle
# (betas 0.9/0.99, 0.004 at 128 by the square-root rule, warmup over 0.2 epochs from a tenth,
# cosine to 0 at a budget of epochs that grows with the batch, `one_cycle_budget`), and from 256
# LAMB the same way (0.01 at 512, decoupled weight decay 0.01).
grid() {
  local b=$1
  local lars="train.optimizer=lars train.lr_scaling=linear train.lr_schedule=cosine train.weight_decay=0.0005"
  echo "sgd"
  if ((b >= 128 && b <= 512)); then echo "linear-cos train.lr_scaling=linear train.warmup_epochs=1 train.lr_schedule=cosine"; fi
  if ((b >= 256)); then echo "sqrt-cos train.lr_scaling=sqrt train.warmup_epochs=1 train.lr_schedule=cosine"; fi
  if ((b >= 1024)); then echo "lars $lars train.warmup_epochs=2"; fi
  if ((b >= 2048)); then echo "lars-t01 $lars train.warmup_epochs=2 train.lars_trust=0.01"; fi
  if ((b >= 8192)); then echo "lars-t01-w5 $lars train.warmup_epochs=5 train.lars_trust=0.01"; fi
  if ((b <= 1024)); then
    local budget cap
    read -r budget cap <<< "$(one_cycle_budget "$b")"
    local cycle="train.warmup_epochs=0.2 train.warmup_start_factor=0.1 train.lr_schedule=cosine train.decay_epochs=$budget train.epochs=$cap"
    echo "adam-1cycle train.optimizer=adam train.betas=[0.9,0.99] train.lr=0.004 train.lr_scaling=sqrt train.lr_reference_batch=128 $cycle"
    if ((b >= 256)); then echo "lamb-1cycle train.optimizer=lamb train.betas=[0.9,0.99] train.lr=0.01 train.lr_scaling=sqrt train.lr_reference_batch=512 train.weight_decay=0.01 $cycle"; fi
  fi
}

# One-cycle's budget (where the cosine reaches 0) and cap in epochs at global batch $1: Adam needs
# about 450-500 steps to 99 % at 128 (configs/fastest.yaml), a budget of at least ~250 steps.
one_cycle_budget() {
  local b=$1
  if ((b <= 128)); then echo "1.25 2"; elif ((b <= 256)); then echo "2 3"; elif ((b <= 512)); then echo "3 4"; else echo "4 5"; fi
}

# run BATCH NAME SEED KEY=VALUE...: one run into $OUT/runs/b<batch>_<name>_s<seed>, skipped when done.
run() {
  local b=$1 name=$2 seed=$3
  shift 3
  local dir="$OUT/runs/b${b}_${name}_s${seed}"
  if grep -q '"status": "completed"' "$dir/summary.json" 2>/dev/null; then
    return
  fi
  local per=$((b / 2))
  local micro=$((per < 128 ? per : 128))
  local steps=$(((TRAIN_IMAGES + b - 1) / b))
  local every=$((steps / 4 > 0 ? steps / 4 : 1))
  local sets=(train.batch_scope=global "train.batch_size=$b" "parallel.micro_batches=$((per / micro))"
    "train.epochs=${CAP_EPOCHS:-$(cap "$b")}" "train.target_accuracy=$TARGET" train.stop_at_target=true
    "train.eval_every_steps=$every" checkpoint.every_epochs=0 "run.seed=$seed"
    "data.dataset=$DATASET" "data.dir=data/$DATASET" train.noise_scale_every=1 "$@")
  local args=()
  for s in "${sets[@]}"; do args+=(--set "$s"); done
  echo "$(date +%T) b=$b $name seed $seed: ${sets[*]}"
  mpirun -np 2 $(partrain_binding 2 1) partrain dp --config configs/data_parallel.yaml "${args[@]}" \
    --out "$dir" --overwrite </dev/null >"$dir.log" 2>&1 || echo "  failed: see $dir.log"
  grep -E "^target|^done" "$dir.log" | sed 's/^/  /' || true
}

first_seed=${SEEDS%% *}
for b in $BATCHES; do
  while read -r name sets; do
    # shellcheck disable=SC2086 # the recipe's settings are separate words
    run "$b" "$name" "$first_seed" $sets
  done < <(recipes "$b")
  best=$(partrain converge best --runs "$OUT/runs" --batch "$b")
  if [ -z "$best" ]; then
    echo "$(date +%T) b=$b: no run of the grid finished: see $OUT/runs/b${b}_*.log"
    continue
  fi
  line=$(recipes "$b" | awk -v n="$best" '$1 == n')
  if [ -z "$line" ]; then
    echo "$(date +%T) b=$b: best recipe $best is not among this invocation's recipes: no seeds run"
    continue
  fi
  sets=${line#"$best"}
  echo "$(date +%T) b=$b: best recipe $best"
  for seed in ${SEEDS#"$first_seed"}; do
    # shellcheck disable=SC2086
    run "$b" "$best" "$seed" $sets
  done
done
partrain converge table --runs "$OUT/runs" --out "$TABLE" --name "${NAME:-converge_${DATASET//-/_}}"
