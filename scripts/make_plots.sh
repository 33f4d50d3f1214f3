#!/usr/bin/env bash
# Regenerates the tables (results/metrics) and plots (results/plots) from existing runs (seed 000).
#
#   bash scripts/make_plots.sh [RUNS_DIR] [OUT_DIR]      # defaults: results/runs results
set -euo pipefail
cd "$(dirname "$0")/.."
./target/release/partrain report --runs "${1:-results/runs}" --out "${2:-results}"
