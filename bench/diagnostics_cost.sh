#!/usr/bin/env bash
# What the diagnostics cost: images/s of serial, dp 2 x 1 and hybrid 2 x 1 with this build, with
# PARTRAIN_DEBUG=collectives, with --trace, and (BASELINE=/path/to/partrain) with another build,
# alternated round by round (ROUNDS, default 4), medians, into results/bench/diagnostics_cost.md.
#
#   BASELINE=/path/to/older/partrain bash bench/diagnostics_cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source env.sh >/dev/null
OUT=${OUT:-results/bench}
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
mkdir -p "$OUT"
CSV=$OUT/diagnostics_cost.csv
echo "variant,layout,round,images_per_s" > "$CSV"
common=(--set data.dir=data/mnist --set data.train_limit="${TRAIN_LIMIT:-12800}" --set data.test_limit=200 --set train.epochs=1)
variants=(now check trace)
[ -n "${BASELINE:-}" ] && variants=(before "${variants[@]}")

one() { # variant layout round
  local bin=target/release/partrain extra=() dir=$RUNS/$2_$1_$3
  [ "$1" = before ] && bin=$BASELINE
  [ "$1" = trace ] && extra=(--trace)
  local cmd
  case $2 in
    serial) cmd=("$bin" serial --config configs/base.yaml) ;;
    dp) cmd=(mpirun --bind-to core -x PARTRAIN_DEBUG -np 2 "$bin" dp --config configs/data_parallel.yaml) ;;
    hybrid) cmd=(mpirun --bind-to core -x PARTRAIN_DEBUG -np 2 "$bin" hybrid --config configs/hybrid_pipeline.yaml) ;;
  esac
  local debug=
  [ "$1" = check ] && debug=collectives
  PARTRAIN_DEBUG=$debug "${cmd[@]}" --out "$dir" "${common[@]}" "${extra[@]}" > "$dir.log" 2>&1
  python3 -c "import json,sys; print('$1,$2,$3,%.1f' % json.load(open('$dir/summary.json'))['samples_per_second'])" >> "$CSV"
}

for r in $(seq 1 "${ROUNDS:-4}"); do
  for layout in serial dp hybrid; do
    for v in "${variants[@]}"; do
      [ "$layout" = serial ] && [ "$v" = check ] && continue
      one "$v" "$layout" "$r"
    done
  done
done

python3 - "$CSV" "$OUT/diagnostics_cost.md" "$(git rev-parse --short HEAD)" "$(lscpu | sed -n 's/^Model name: *//p')" <<'PY'
import csv, collections, datetime, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
runs = collections.defaultdict(list)
for r in rows:
    runs[(r["layout"], r["variant"])].append(float(r["images_per_s"]))
variants = [v for v in ["before", "now", "check", "trace"] if any(k[1] == v for k in runs)]
ref = "before" if "before" in variants else "now"
out = [f"Diagnostics cost, {datetime.date.today()}, commit {sys.argv[3]}, CPU {sys.argv[4]}",
       "(`bash bench/diagnostics_cost.sh`; medians of alternated rounds, images/s, ratio to "
       f"`{ref}`).", "",
       "| layout | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
for layout in ["serial", "dp", "hybrid"]:
    base = statistics.median(runs[(layout, ref)])
    cells = []
    for v in variants:
        xs = runs.get((layout, v))
        cells.append("" if not xs else f"{statistics.median(xs):,.0f} ({statistics.median(xs) / base:.2f})")
    out.append(f"| {layout} | " + " | ".join(cells) + " |")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
