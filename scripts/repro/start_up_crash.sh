#!/usr/bin/env bash
# The start-up crash without partrain (docs/testing.md#the-start-up-crash), on emulated clusters:
#
#   bash scripts/repro/start_up_crash.sh                  # the fence test under both fences
#   ROUNDS=300 FENCE=tree bash scripts/repro/start_up_crash.sh   # + 600 paired MPI_Init jobs
#
# 1. pmix_fence: rank 1 sleeps 3 s before PMIx_Fence; with SLURM_PMIX_FENCE=tree rank 0 leaves the
#    fence at once (node-local), with ring after 3 s (global).
# 2. With ROUNDS > 0: mpi_init (MPI_Init_thread, a barrier, an all-reduce) as a 4-rank 2-node job on
#    each of two clusters at the same time, ROUNDS times, under FENCE; prints the failed jobs.
# Uses ports 22800 and 23800 and host names rpa1.., rpb1..; takes its clusters down at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-0}
FENCE=${FENCE:-tree}
WORK=$(mktemp -d /tmp/partrain-repro.XXXXXX)
PMIX=/usr/lib/x86_64-linux-gnu/pmix2
gcc -O1 -o "$WORK/pmix_fence" scripts/repro/pmix_fence.c -I$PMIX/include -L$PMIX/lib -lpmix -Wl,-rpath,$PMIX/lib
mpicc -O1 -o "$WORK/mpi_init" scripts/repro/mpi_init.c
up() { PARTRAIN_CLUSTER="$WORK/$1" PARTRAIN_CLUSTER_PORT=$2 PARTRAIN_CLUSTER_NODE=$1 bash scripts/cluster.sh up 2 >/dev/null; }
down() { PARTRAIN_CLUSTER="$WORK/$1" bash scripts/cluster.sh down >/dev/null 2>&1 || true; }
on() { local c=$1; shift; PARTRAIN_CLUSTER="$WORK/$c" bash scripts/cluster.sh exec "$@"; }
trap 'down rpa; down rpb' EXIT
up rpa 22800
for fence in tree ring; do
  echo "SLURM_PMIX_FENCE=$fence:"
  on rpa env SLURM_PMIX_FENCE=$fence srun -K --mpi=pmix --time=2 -N 2 -n 2 "$WORK/pmix_fence" | sort | sed 's/^/  /'
done
((ROUNDS > 0)) || exit 0
up rpb 23800
for i in $(seq 1 "$ROUNDS"); do
  for c in rpa rpb; do
    (on $c env SLURM_PMIX_FENCE="$FENCE" srun -K --mpi=pmix --time=2 -N 2 -n 4 "$WORK/mpi_init" \
      >"$WORK/$c.$i.log" 2>&1 || echo "round $i on $c failed: $WORK/$c.$i.log") &
  done
  wait
done | tee "$WORK/failed"
echo "fence $FENCE: $(wc -l <"$WORK/failed") of $((2 * ROUNDS)) jobs failed"
