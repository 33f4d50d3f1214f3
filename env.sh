# Thread and library settings for partrain (seed 000's mapping: one MPI rank per node that uses all
# of the node's cores through libtorch's OpenMP threads). Source it; sourcing twice is harmless.
#
#   source env.sh                          # threads = all cores of this node
#   PARTRAIN_THREADS=4 source env.sh       # or choose
#
# Configs with `parallel.threads_per_rank: 0` take their thread count from OMP_NUM_THREADS;
# a positive value in the config wins over these variables.
_partrain_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)

export PARTRAIN_THREADS="${PARTRAIN_THREADS:-$(nproc)}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$PARTRAIN_THREADS}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$OMP_NUM_THREADS}"
# Pin threads next to each other on the node's cores (one rank per node). With several ranks per
# node, launch with `mpirun --bind-to none` or give each rank its own cores.
export OMP_PROC_BIND="${OMP_PROC_BIND:-close}"
export OMP_PLACES="${OMP_PLACES:-cores}"

# libtorch: the project venv's torch wheel unless LIBTORCH already points at a libtorch install.
export LIBTORCH="${LIBTORCH:-$_partrain_root/.venv/lib/python3.11/site-packages/torch}"
case ":$PATH:" in
  *":$_partrain_root/target/release:"*) ;;
  *) export PATH="$_partrain_root/target/release:$PATH" ;;
esac
# Open MPI refuses to run as root without these (containers, CI, one-node test clusters).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
unset _partrain_root
