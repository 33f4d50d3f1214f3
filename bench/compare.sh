#!/usr/bin/env bash
# Two partrain binaries side by side on the benchmark's configurations: each round runs the old,
# the new, the new, the old binary (ABBA, so a drift in the machine's speed hits both alike), and
# the table reports medians and the median of the per-round new/old ratios. A change's effect on
# speed, measured in one session on one machine.
#
#   bash bench/compare.sh /path/to/old/partrain                 # new = target/release/partrain
#   ROUNDS=6 TRAIN_LIMIT=12800 bash bench/compare.sh OLD [NEW]
#   ONLY=mnist_serial bash bench/compare.sh OLD          # only the configurations whose name matches
#   ONLY=mnist_serial_t1_cl ROUNDS=16 bash bench/compare.sh OLD   # a closer look at one row
#   OLD_SET=train.noise_scale_every=0 bash bench/compare.sh target/release/partrain   # an option's cost
#
# The table also gives a 90 % bootstrap interval for each median ratio: on a shared machine single
# rounds move by ±10 %, and the interval says whether the rounds resolve a few per cent (on the
# 2-vCPU development machine a 4-round median once read 0.944 for a pair of binaries that 8 and 16
# rounds later put at 1.006 and 0.992, intervals 0.984-1.032 and 0.948-1.008).
#
# Writes results/bench/compare.md (and the raw runs under results/bench/compare/).
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh
OLD=${1:?usage: bench/compare.sh OLD_BINARY [NEW_BINARY]}
NEW=${2:-$(pwd)/target/release/partrain}
ROUNDS=${ROUNDS:-4}
TRAIN_LIMIT=${TRAIN_LIMIT:-6400}
OUT=${OUT:-results/bench}
work="$OUT/compare"
rm -rf "$work"
mkdir -p "$work"
cifar_dir="$OUT/cifar10-shaped"
if [ ! -f "$cifar_dir/test_batch.bin" ]; then
  .venv/bin/python - "$cifar_dir" <<'PY'
import os, sys, torch
d = sys.argv[1]; os.makedirs(d, exist_ok=True); g = torch.Generator().manual_seed(0)
for name, n in [(f"data_batch_{i}.bin", 10000) for i in range(1, 6)] + [("test_batch.bin", 10000)]:
    recs = torch.randint(0, 256, (n, 3073), dtype=torch.uint8, generator=g)
    recs[:, 0] = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
    open(os.path.join(d, name), "wb").write(recs.numpy().tobytes())
PY
fi
# name | ranks | threads | command | config | extra sets
configs=(
  "mnist_serial_t1_fp32|1|1|serial|configs/base.yaml|train.channels_last=false"
  "mnist_serial_t1_cl|1|1|serial|configs/base.yaml|train.channels_last=true"
  "mnist_serial_t1_bf16|1|1|serial|configs/base.yaml|train.precision=bf16"
  "mnist_serial_t2_cl|1|2|serial|configs/base.yaml|train.channels_last=true"
  "mnist_dp2x1_cl|2|1|dp|configs/data_parallel.yaml|train.channels_last=true"
  "mnist_hybrid2x1_cl|2|1|hybrid|configs/hybrid_pipeline.yaml|parallel.stage_boundaries=[3]"
  "cifar_serial_t1_cl|1|1|serial|configs/cifar10.yaml|data.dir=$cifar_dir"
  "cifar_dp2x1_cl|2|1|dp|configs/data_parallel_cifar10.yaml|data.dir=$cifar_dir"
)
run() { # run BINARY TAG CONFIG-LINE ROUND
  local bin=$1 tag=$2 r=$4
  IFS='|' read -r name np t cmd cfg extra <<< "$3"
  local sets=(--set data.train_limit="$TRAIN_LIMIT" --set data.test_limit=500 --set train.epochs=1
              --set parallel.threads_per_rank="$t" --set checkpoint.every_epochs=0 --set "$extra" --overwrite)
  # OLD_SET / NEW_SET: one more --set for that side (the same binary twice measures an option).
  local side_set=${OLD_SET:-}
  [ "$tag" = new ] && side_set=${NEW_SET:-}
  [ -n "$side_set" ] && sets+=(--set "$side_set")
  local out="$work/${name}_${tag}_r$r"
  if [ "$np" -eq 1 ]; then
    "$bin" "$cmd" --config "$cfg" "${sets[@]}" --out "$out" > "$out.log" 2>&1
  else
    mpirun -np "$np" $(partrain_binding "$np" "$t") "$bin" "$cmd" --config "$cfg" "${sets[@]}" --out "$out" > "$out.log" 2>&1
  fi || { echo "FAILED: $out (log: $out.log)"; tail -n 20 "$out.log"; exit 1; }
}
for r in $(seq 1 "$ROUNDS"); do
  for c in "${configs[@]}"; do
    [[ "${c%%|*}" =~ ${ONLY:-.} ]] || continue
    run "$OLD" old "$c" "${r}a"; run "$NEW" new "$c" "${r}a"; run "$NEW" new "$c" "${r}b"; run "$OLD" old "$c" "${r}b"
  done
  echo "round $r of $ROUNDS done"
done
python3 - "$work" "$ROUNDS" "$OLD${OLD_SET:+ --set $OLD_SET}" "$NEW${NEW_SET:+ --set $NEW_SET}" > "$OUT/compare.md" <<'PY'
import json, os, random, statistics, sys, datetime
work, rounds, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ips = lambda n: json.load(open(os.path.join(work, n, "summary.json")))["samples_per_second"]

def interval(ratios, draws=4000):
    """90 % bootstrap interval of the median of `ratios` (rounds resampled with replacement)."""
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return meds[draws // 20], meds[draws - 1 - draws // 20]

names = sorted({e.rsplit("_", 2)[0] for e in os.listdir(work) if not e.endswith(".log")})
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Side by side on {datetime.date.today()}, {os.cpu_count()} x {cpu}: old = `{old}`, new = `{new}`;")
print(f"{rounds} rounds, each old new new old; images/s medians and the median of per-round new/old ratios.\n")
print("| configuration | old images/s | new images/s | new / old (median of rounds) | 90 % interval | per round |")
print("|---|---:|---:|---:|---|---|")
for n in names:
    o = [(ips(f"{n}_old_r{r}a") + ips(f"{n}_old_r{r}b")) / 2 for r in range(1, rounds + 1)]
    w = [(ips(f"{n}_new_r{r}a") + ips(f"{n}_new_r{r}b")) / 2 for r in range(1, rounds + 1)]
    ratios = [b / a for a, b in zip(o, w)]
    lo, hi = interval(ratios)
    print(f"| {n} | {statistics.median(o):.0f} | {statistics.median(w):.0f} | {statistics.median(ratios):.3f} | "
          f"{lo:.3f}-{hi:.3f} | " + " ".join(f"{x:.3f}" for x in ratios) + " |")
PY
cat "$OUT/compare.md"
