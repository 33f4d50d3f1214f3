#!/usr/bin/env bash
# The whole test suite: README's second quick-start command; .ci/run calls exactly this.
#
#   bash scripts/test.sh
#
# It runs the set-up first (idempotent, seconds when everything is in place), so it also works on
# a fresh clone of a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# mpirun as root (CI, containers) needs these; the tests pass --oversubscribe themselves.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo fmt --all -- --check
cargo test --release -- --test-threads=2
