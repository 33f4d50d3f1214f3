# Sourced by job scripts: run partrain steps so that Slurm's time limit ends them with a checkpoint
# and a requeue instead of a kill, and a requeued job picks up where it stopped.
#
#   #SBATCH --requeue
#   source slurm/requeue.sh
#   stop_before 300          # SIGUSR1 to the running step 300 s before this job's time limit
#   step results/runs/x srun -K --mpi=pmix partrain dp --config ... --auto-resume --overwrite
#
# On SIGUSR1 (or SIGTERM: scancel, the time limit itself) the batch shell forwards the signal to
# the launcher in the foreground (srun and mpirun both pass it on to every rank); partrain finishes
# its step, writes a checkpoint and exits 75, and `step` requeues the job (scontrol requeue). In
# the requeued job (SLURM_RESTART_COUNT > 0) `step` skips the runs an earlier attempt completed,
# and partrain's --auto-resume continues the interrupted one from its checkpoint.
#
# Why a timer of our own rather than sbatch --signal=B:USR1@T: on the emulated cluster (Slurm
# 22.05) a requeued job that started after its 120 s BeginTime received the previous attempt's
# warning signal again the moment it started, and its ranks died of it before partrain had
# installed its handlers (the attempt ended with nothing done; with a shorter limit that repeats).
# `stop_before` reads this attempt's EndTime and signals this shell itself, the same way on every
# attempt. A --signal=B:USR1@T given anyway is handled like the timer (and a launcher it kills
# early still requeues). After PARTRAIN_MAX_REQUEUES attempts (20) a job gives up.

PARTRAIN_REQUEUE_EXIT=75
_child=
_forwarded=
_stop=
_timer=
_forward() {
  _stop=$1
  [ -n "$_child" ] || return 0
  _forwarded=$1
  kill -s "$1" "$_child" 2>/dev/null || true
}
trap '_forward USR1' USR1
trap '_forward TERM' TERM

# stop_before SECONDS: SIGUSR1 to this shell (and so to the running step) SECONDS before this
# attempt's time limit (its EndTime); nothing without a limit.
stop_before() {
  local end left
  end=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.*EndTime=\([^ ]*\).*/\1/p' | head -1) || true
  case "$end" in '' | Unknown | None) return 0 ;; esac
  left=$(($(date -d "$end" +%s) - $(date +%s) - $1))
  [ "$left" -gt 0 ] || left=0
  echo "requeue: this attempt ends at $end; stopping in $left s (stop_before $1)"
  (
    trap - USR1
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    sleep "$left" &
    nap=$!
    wait "$nap" && kill -USR1 $$
  ) &
  _timer=$!
  trap '[ -z "$_timer" ] || kill "$_timer" 2>/dev/null || true' EXIT
}

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

# requeue WHY: requeue this job (or array task) and end this attempt.
requeue() {
  local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
  job=${job:-$SLURM_JOB_ID}
  local attempt=$((${SLURM_RESTART_COUNT:-0} + 1))
  if [ "$attempt" -ge "${PARTRAIN_MAX_REQUEUES:-20}" ]; then
    echo "requeue: $1, and this was attempt $attempt (PARTRAIN_MAX_REQUEUES=${PARTRAIN_MAX_REQUEUES:-20}): giving up" >&2
    exit 1
  fi
  echo "requeue: $1; requeueing job $job (attempt $((attempt + 1)))"
  scontrol requeue "$job"
  # The requeue ends this attempt; do not start the next run meanwhile.
  sleep 300
  exit 0
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
  [ -z "$_stop" ] || requeue "SIG$_stop arrived before $dir started"
  local rc=0 completed=
  _forwarded=
  run "$@" --out "$dir" || rc=$?
  grep -q '"status": *"completed"' "$dir/summary.json" 2>/dev/null && completed=1
  if [ "$rc" -eq "$PARTRAIN_REQUEUE_EXIT" ]; then
    requeue "$dir stopped before the time limit with a checkpoint"
  fi
  # A signal can also end the launcher before partrain has started (srun aborts the step launch,
  # sometimes with exit 0): whatever the code, a forwarded signal and no completed run requeue.
  if [ -n "$_forwarded" ] && [ -z "$completed" ]; then
    requeue "$dir ended with exit $rc after SIG$_forwarded, before partrain could checkpoint"
  fi
  if [ "$rc" -eq 0 ] && [ -z "$completed" ]; then
    echo "requeue: $dir: the launcher exited 0 but the run did not complete (see its summary.json)" >&2
    return 1
  fi
  return "$rc"
}
