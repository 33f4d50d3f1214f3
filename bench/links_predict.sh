#!/usr/bin/env bash
# The performance model on links of a set speed: predicted against measured step time for dp on 2
# and 4 emulated nodes x 1 rank and hybrid 2 stages x 2 replicas across 2 nodes, at each RATE.
#
#   bash bench/links_predict.sh                   # 100mbit and 1gbit, ~10 min here
#   RATES="10gbit" STEPS=200 bash bench/links_predict.sh
#
# Calibrates once on this machine (compute on one rank, the co-run slowdown of 2 and 4 ranks),
# then per rate brings the cluster up with `--link RATE`, measures the link and the all-reduce of
# the net's gradient across 2 and 4 nodes the way calibrate measures a real network, runs each
# layout for STEPS steps and lets `partrain report --calibration` put the prediction beside the
# measurement: $OUT/<rate>/metrics/speedup_table.md, and $OUT/links_predict.md for all rates.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-"100mbit 1gbit"}
OUT=${OUT:-results/links_predict}
STEPS=${STEPS:-120}
export PARTRAIN_CLUSTER=${PARTRAIN_CLUSTER:-/tmp/partrain-links}
export PARTRAIN_CLUSTER_PORT=${PARTRAIN_CLUSTER_PORT:-19800}
export PARTRAIN_CLUSTER_NODE=${PARTRAIN_CLUSTER_NODE:-lnk}
bash scripts/setup.sh > /dev/null
PARTRAIN_RANKS_PER_NODE=2 source env.sh
mkdir -p "$OUT"
base="$OUT/calibration_base.json"
if [ ! -f "$base" ]; then
  partrain calibrate --config configs/base.yaml --threads 1 --batches 16,32,64 --out "$base"
  mpirun -np 2 $(partrain_binding 2 1) partrain calibrate --config configs/base.yaml --links-only --out "$base"
  mpirun -np 4 $(partrain_binding 4 1) partrain calibrate --config configs/base.yaml --links-only --out "$base"
fi
cluster() { bash scripts/cluster.sh exec mpirun --hostfile "$PARTRAIN_CLUSTER/hostfile" --bind-to none \
  -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive "$@"; }
# 64 images per rank; STEPS steps of each layout's global batch.
sets() { echo "--set parallel.threads_per_rank=1 --set data.train_limit=$(($1 * STEPS)) --set data.test_limit=500 \
  --set train.epochs=1 --set checkpoint.every_epochs=0 --overwrite"; }
for rate in $RATES; do
  dir="$OUT/$rate"
  rm -rf "$dir/runs"
  mkdir -p "$dir/runs"
  cal="$dir/calibration.json"
  cp "$base" "$cal"
  bash scripts/cluster.sh up 4 --link "$rate" > /dev/null
  trap 'bash scripts/cluster.sh down > /dev/null 2>&1' EXIT
  for n in 2 4; do
    cluster -np $n --map-by ppr:1:node partrain calibrate --config configs/base.yaml --links-only \
      --link-mib 16 --repeats 3 --out "$PWD/$cal"
  done
  echo "== $rate: dp on 2 nodes"
  # shellcheck disable=SC2046 # sets are separate words
  cluster -np 2 --map-by ppr:1:node partrain dp --config configs/data_parallel.yaml $(sets 128) \
    --out "$PWD/$dir/runs/dp_2nodes" > /dev/null
  echo "== $rate: dp on 4 nodes"
  # shellcheck disable=SC2046
  cluster -np 4 --map-by ppr:1:node partrain dp --config configs/data_parallel.yaml $(sets 256) \
    --out "$PWD/$dir/runs/dp_4nodes" > /dev/null
  echo "== $rate: hybrid 2 x 2 on 2 nodes"
  # shellcheck disable=SC2046
  cluster -np 4 --map-by ppr:2:node partrain hybrid --config configs/hybrid_pipeline.yaml $(sets 128) \
    --out "$PWD/$dir/runs/hybrid_2x2_2nodes" > /dev/null
  bash scripts/cluster.sh down > /dev/null
  partrain report --runs "$dir/runs" --out "$dir" --calibration "$cal" > /dev/null
done
python3 - "$OUT" $RATES <<'PY'
import csv, pathlib, statistics, sys
root, rates = pathlib.Path(sys.argv[1]), sys.argv[2:]
lines = ["| link | run | global batch | measured step ms | predicted step ms | error |",
         "|---|---|---:|---:|---:|---:|"]
errors = []
for rate in rates:
    with open(root / rate / "metrics" / "speedup_table.csv") as f:
        for r in csv.DictReader(f):
            if not r["predicted_samples_per_second"]:
                continue
            b = float(r["global_batch"])
            measured = 1e3 * b / float(r["samples_per_second"])
            predicted = 1e3 * b / float(r["predicted_samples_per_second"])
            err = predicted / measured - 1.0
            errors.append(abs(err))
            lines.append(f"| {rate} | {r['run']} | {int(b)} | {measured:,.1f} | {predicted:,.1f} | {100 * err:+.0f} % |")
lines += ["", f"median |error| {100 * statistics.median(errors):.0f} % over {len(errors)} runs" if errors else "no predictions"]
text = "\n".join(lines)
(root / "links_predict.md").write_text(text + "\n")
print(text)
PY
