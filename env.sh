# Thread and library settings for partrain (seed 000's mapping: one MPI rank per node that uses all
# of the node's cores through libtorch's OpenMP threads). Source it; sourcing twice is harmless.
#
#   source env.sh                               # 1 rank per node, threads = all its cores
#   PARTRAIN_THREADS=4 source env.sh            # or choose the thread count
#   PARTRAIN_RANKS_PER_NODE=2 source env.sh     # several ranks per node (local runs, tests)
#
# Configs with `parallel.threads_per_rank: 0` take their thread count from OMP_NUM_THREADS;
# a positive value in the config wins over these variables.
_partrain_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)

# Ranks that share this node (1 = seed 000's layout). With more, each rank gets an equal share of
# the cores and thread pinning is left to mpirun (--bind-to / --map-by): OMP_PROC_BIND=close with
# OMP_PLACES=cores would pin the first thread of every rank to the same core.
export PARTRAIN_RANKS_PER_NODE="${PARTRAIN_RANKS_PER_NODE:-1}"
# The cores this shell may use. Plain `nproc` answers OMP_NUM_THREADS once that is set (below).
partrain_cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
_partrain_cores=$(partrain_cores)
_partrain_share=$(( _partrain_cores / PARTRAIN_RANKS_PER_NODE ))
[ "$_partrain_share" -ge 1 ] || _partrain_share=1
export PARTRAIN_THREADS="${PARTRAIN_THREADS:-$_partrain_share}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$PARTRAIN_THREADS}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
if [ "$PARTRAIN_RANKS_PER_NODE" -eq 1 ]; then
  # One rank per node: its threads fill the node's cores side by side.
  export OMP_PROC_BIND="${OMP_PROC_BIND:-close}"
  export OMP_PLACES="${OMP_PLACES:-cores}"
else
  export OMP_PROC_BIND=false
  unset OMP_PLACES
fi
unset _partrain_cores _partrain_share

# mpirun's placement flags for NP ranks of THREADS threads each on this node: when they fit, every
# rank gets its own cores (--bind-to core; with more threads, --map-by slot:PE=THREADS), so the
# kernel never migrates a rank and its private L2 stays warm (dp 2 x 1 on the 2-core test machine:
# +3% images/s over --bind-to none). Oversubscribed layouts get --oversubscribe --bind-to none and
# passive OpenMP waiting.
#   mpirun -np 2 $(partrain_binding 2 1) partrain dp ...
partrain_binding() {
  local np=$1 threads=${2:-1}
  if [ $(( np * threads )) -le "$(partrain_cores)" ]; then
    if [ "$threads" -eq 1 ]; then echo "--bind-to core"; else echo "--map-by slot:PE=$threads --bind-to core"; fi
  else
    # Idle OpenMP threads must sleep, not spin, when they share cores with other ranks' threads
    # (dp 2 x 2 on 2 cores: 6,400 images/s instead of 380-2,300).
    echo "--oversubscribe --bind-to none -x OMP_WAIT_POLICY=passive"
  fi
}

# libtorch: the project venv's torch wheel unless LIBTORCH already points at a libtorch install.
export LIBTORCH="${LIBTORCH:-$_partrain_root/.venv/lib/python3.11/site-packages/torch}"
case ":$PATH:" in
  *":$_partrain_root/target/release:"*) ;;
  *) export PATH="$_partrain_root/target/release:$PATH" ;;
esac
# srun --mpi=pmix: Slurm 22.05's tree fence is node-local whenever TreeWidth (default 50) exceeds the
# step's node count, so MPI_Init's modex does not wait for the other nodes and a rank can crash in
# MPI_Init (docs/testing.md#the-start-up-crash); the ring fence is global.
export SLURM_PMIX_FENCE="${SLURM_PMIX_FENCE:-ring}"
# Open MPI refuses to run as root without these (containers, CI, one-node test clusters).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
unset _partrain_root
