#!/usr/bin/env bash
# Long runs: memory and the watchdog over 20,000 steps.
#
#   bash bench/soak.sh                  # STEPS=20000; about 10 minutes per run here, 3 runs
#   STEPS=4000 bash bench/soak.sh       # a shorter look
#
# 1. dp on 2 ranks for STEPS steps (8 images per rank: many short steps), without and with
#    --trace: both ranks' resident memory (VmRSS) read at every 1,000th step (rank 0's log line
#    announces it); the growth from step 2,000 to the last must stay under 2 %.
# 2. The same job with parallel.timeout_s = 10, whose rank 1 is stopped (SIGSTOP) for 5 s, half
#    the timeout, three times: the job must finish (no false abort) and the warnings name rank 1.
# Writes results/soak/soak.md (date, CPU, commit, the command) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
PARTRAIN_RANKS_PER_NODE=2 source env.sh >/dev/null
STEPS=${STEPS:-20000}
OUT=${OUT:-results/soak}
mkdir -p "$OUT"
python3 - "$STEPS" "$OUT" "$(git rev-parse --short HEAD)" "$(lscpu | sed -n 's/^Model name: *//p')" \
  "$(partrain_binding 2 1)" <<'PY'
import datetime, os, re, signal, subprocess, sys, threading, time
steps, out, commit, cpu, binding = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split()

def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None

def ranks(mpirun):
    """The rank processes mpirun started (its children running partrain)."""
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                if int(stat.rsplit(")", 1)[1].split()[1]) == mpirun and "partrain" in open(f"/proc/{d}/cmdline").read():
                    kids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return sorted(kids)

def job(name, extra, steps=steps):
    cmd = ["mpirun", "-np", "2", *binding, "partrain", "dp", "--config", "configs/data_parallel.yaml",
           "--set", "train.batch_size=8", "--set", "data.train_limit=8000", "--set", "data.test_limit=500",
           "--set", f"train.epochs={steps // 500 + 1}", "--set", f"train.max_steps={steps}",
           "--set", "train.log_every=1000", "--set", "checkpoint.every_epochs=0",
           "--out", f"{out}/{name}", "--overwrite", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def memory(name, extra):
    p = job(name, extra)
    samples, pids = {}, []
    for line in p.stdout:
        m = re.search(r"\(global step (\d+)\)", line)
        if m:
            pids = pids or ranks(p.pid)
            samples[int(m.group(1))] = [rss(q) for q in pids]
    err = p.stderr.read()
    assert p.wait() == 0, err
    base = samples.get(2000) or samples[min(samples)]
    last = samples[max(samples)]
    growth = max((b - a) / a for a, b in zip(base, last) if a and b)
    return samples, growth

def pauses():
    # Long enough for three pauses of 5 s (27 s) at any speed this machine has shown.
    p = job("pauses", ["--set", "parallel.timeout_s=10", "--set", "parallel.warn_s=2"], steps=min(steps, 6000))
    err = []
    threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    time.sleep(8)
    victim = ranks(p.pid)[1]
    for _ in range(3):
        os.kill(victim, signal.SIGSTOP)
        time.sleep(5)
        os.kill(victim, signal.SIGCONT)
        time.sleep(4)
    code = p.wait()
    warnings = [l.strip() for l in err if "warning" in l and "rank 1" in l]
    return code, warnings

lines = [f"Measured on {datetime.date.today()}, commit {commit}, {cpu} (`STEPS={steps} bash bench/soak.sh`): dp on 2 "
         "ranks, 8 images per rank and step, each rank's VmRSS at every 1,000th step.", "",
         "| run | RSS at step 2,000 (rank 0 / 1), MB | RSS at the last step, MB | growth (the larger) |", "|---|---|---|---:|"]
for name, extra in [("plain", []), ("traced", ["--trace"])]:
    samples, growth = memory(name, extra)
    first, last = samples.get(2000) or samples[min(samples)], samples[max(samples)]
    cell = lambda v: " / ".join(f"{x:.1f}" for x in v)
    lines.append(f"| {name} | {cell(first)} | {cell(last)} (step {max(samples)}) | {100 * growth:+.2f} % |")
    print(f"{name}: " + ", ".join(f"{s}: {cell(v)}" for s, v in sorted(samples.items())), flush=True)
code, warnings = pauses()
lines += ["", f"Rank 1 stopped for 5 s three times with parallel.timeout_s = 10: exit code {code}, "
          f"{len(warnings)} warning(s) naming rank 1" + (f", e.g. `{warnings[0][:200]}`" if warnings else "")]
open(f"{out}/soak.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
