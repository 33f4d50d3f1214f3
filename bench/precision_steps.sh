#!/usr/bin/env bash
# Steps to 99.0 % in bf16 against fp32 on configs/fastest.yaml's recipe (dp 2 x 1, same seeds,
# same evaluation cadence): the CSV `partrain plan --precision-steps` weighs bf16 layouts with.
# Steps do not depend on the kernels' speed, so on a CPU without native bf16 the bf16 runs go
# through PARTRAIN_EMULATED_BF16=1 (slowly: ~6 min a run here instead of ~15 s).
#
#   bash bench/precision_steps.sh                 # SEEDS="42 43 44", ~20 min without native bf16
#
# Writes results/precision_steps/precision_steps.csv (precision, seed, steps_to_target, ...);
# `cp` it to results/example/ to publish.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh
SEEDS=${SEEDS:-"42 43 44"}
OUT=${OUT:-results/precision_steps}
mkdir -p "$OUT/runs"
bind=$(partrain_binding 2 1)
for seed in $SEEDS; do
  for precision in fp32 bf16; do
    echo "== seed $seed, $precision"
    # shellcheck disable=SC2086 # the binding is separate words
    mpirun -np 2 $bind -x PARTRAIN_EMULATED_BF16=1 partrain dp --config configs/fastest.yaml \
      --set run.seed="$seed" --set train.precision=$precision \
      --out "$OUT/runs/${precision}_s$seed" --overwrite | grep -E "^target|^done" || true
  done
done
python3 - "$OUT" <<'PY'
import csv, json, pathlib, subprocess, sys
out = pathlib.Path(sys.argv[1])
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
rows = []
for f in sorted(out.glob("runs/*_s*/summary.json")):
    s = json.loads(f.read_text())
    precision, seed = f.parent.name.split("_s")
    rows.append({"precision": precision, "seed": seed, "steps_to_target": s.get("steps_to_target") or "",
                 "final_accuracy": s["final_test_accuracy"], "images_per_second": round(s["samples_per_second"]),
                 "cpu": model})
with open(out / "precision_steps.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
for r in rows:
    print(r)
PY
