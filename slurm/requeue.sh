# Sourced by job scripts: run partrain steps so that Slurm's time limit ends them with a checkpoint
# and a requeue instead of a kill, and a requeued job picks up where it stopped.
#
#   #SBATCH --requeue --signal=B:USR1@120      # USR1 to this script 120 s before the time limit
#   source slurm/requeue.sh
#   step results/runs/x srun -K --mpi=pmix partrain dp --config ... --auto-resume --overwrite
#
# The signal goes to the batch script (B:), which forwards it to the launcher in the foreground
# (srun and mpirun both pass SIGUSR1 on to every rank); partrain finishes its step, writes a
# checkpoint and exits 75, and `step` then requeues the job (scontrol requeue). In the requeued job
# (SLURM_RESTART_COUNT > 0) `step` skips runs an earlier attempt completed, and partrain's
# --auto-resume continues the interrupted one from its checkpoint. (Slurm checks time limits about
# every 30 s, so the signal arrives up to that much later than asked for: leave the margin.)

PARTRAIN_REQUEUE_EXIT=75
_child=
_forward() { [ -n "$_child" ] && kill -s "$1" "$_child" 2>/dev/null || true; }
trap '_forward USR1' USR1
trap '_forward TERM' TERM

# run CMD...: CMD (a program, not a shell function: see scaling_task.slurm) in the background, so
# that a signal reaches the traps while it runs; its exit code.
run() {
  "$@" &
  _child=$!
  local rc=0
  while :; do
    wait "$_child" && rc=0 || rc=$?
    # `wait` also returns when a trapped signal arrives: wait again while CMD runs.
    kill -0 "$_child" 2>/dev/null || break
  done
  _child=
  return "$rc"
}

# step RUN_DIR CMD...: CMD --out RUN_DIR, unless an earlier attempt of this job completed it;
# exit 75 (stopped by the signal, checkpoint written) requeues the job.
step() {
  local dir=$1
  shift
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && grep -q '"status": *"completed"' "$dir/summary.json" 2>/dev/null; then
    echo "requeue: $dir completed in an earlier attempt"
    return 0
  fi
  local rc=0
  run "$@" --out "$dir" || rc=$?
  if [ "$rc" -eq "$PARTRAIN_REQUEUE_EXIT" ]; then
    local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
    job=${job:-$SLURM_JOB_ID}
    echo "requeue: $dir stopped before the time limit with a checkpoint; requeueing job $job (attempt $((${SLURM_RESTART_COUNT:-0} + 2)))"
    scontrol requeue "$job"
    # The requeue ends this attempt; do not start the next run meanwhile.
    sleep 300
    exit 0
  fi
  return "$rc"
}
