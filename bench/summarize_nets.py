"""The accuracy table of bench/nets_accuracy.sh and bench/bn_rule.sh: per run name (the folder's
prefix before `_s<seed>`), each seed's best and final test accuracy and time to target, from the
runs' summary.json; with two names, their per-seed differences (the second less the first).

    python3 bench/summarize_nets.py results/nets_accuracy                      # seed001, resnet
    python3 bench/summarize_nets.py results/bn_rule step_mean per_forward
"""
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1])
names = sys.argv[2:] or ["seed001", "resnet"]
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
print(f"CPU: {model}\n")
print("| net | parameters | epochs | seed | best test accuracy | final | steps to target | time to target (s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
runs = {}
for name in names:
    runs[name] = {}
    for path in sorted(out.glob(f"{name}_s*/summary.json")):
        s = json.loads(path.read_text())
        if s.get("status") != "completed":
            continue
        seed = path.parent.name.split("_s")[-1]
        runs[name][seed] = s
        ttt = s.get("time_to_target_s")
        ttt = f"{ttt:.0f}" if ttt else "not reached"
        steps = s.get("steps_to_target") or "-"
        print(f"| {s['model']} ({name}) | {s['parameters']:,} | {s['epochs']} | {seed} | "
              f"{s['best_test_accuracy']:.2f} | {s['final_test_accuracy']:.2f} | {steps} | {ttt} |")
    best = [s["best_test_accuracy"] for s in runs[name].values()]
    if best:
        print(f"| **{name}: median of {len(best)}** | | | | **{statistics.median(best):.2f}** | | | |")
def accuracy_by_step(run_dir):
    """Test accuracy at each evaluation of a run (metrics.csv), by global step."""
    with open(run_dir / "metrics.csv") as f:
        return {int(r["global_step"]): float(r["test_accuracy"]) for r in csv.DictReader(f)}


if len(names) == 2:
    a, b = (runs[n] for n in names)
    print(f"\n{names[1]} less {names[0]}, per seed (percentage points; the last column over every "
          "evaluation of the run, the same steps in both):\n")
    print("| seed | best | final | mean over evaluations (min, max) |")
    print("|---:|---:|---:|---|")
    for seed in sorted(set(a) & set(b)):
        d = [b[seed][k] - a[seed][k] for k in ("best_test_accuracy", "final_test_accuracy")]
        ea, eb = (accuracy_by_step(out / f"{n}_s{seed}") for n in names)
        diffs = [eb[k] - ea[k] for k in sorted(set(ea) & set(eb))]
        print(f"| {seed} | {d[0]:+.2f} | {d[1]:+.2f} | {statistics.mean(diffs):+.2f} "
              f"({min(diffs):+.2f}, {max(diffs):+.2f}) |")
