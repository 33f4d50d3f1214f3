"""The accuracy table of bench/nets_accuracy.sh and bench/bn_rule.sh: per run name (the folder's
prefix before `_s<seed>`), each seed's best and final test accuracy and time to target, from the
runs' summary.json; with two names, their per-seed differences (the second less the first).

    python3 bench/summarize_nets.py results/nets_accuracy                      # seed001, resnet
    python3 bench/summarize_nets.py results/bn_rule step_mean per_forward
"""
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
print("| net | parameters | epochs | seed | best test accuracy | final | time to target (s) |")
print("|---|---:|---:|---:|---:|---:|---:|")
runs = {}
for name in names:
    runs[name] = {}
    for path in sorted(out.glob(f"{name}_s*/summary.json")):
        s = json.loads(path.read_text())
        seed = path.parent.name.split("_s")[-1]
        runs[name][seed] = s
        ttt = s.get("time_to_target_s")
        ttt = f"{ttt:.0f}" if ttt else "not reached"
        print(f"| {s['model']} ({name}) | {s['parameters']:,} | {s['epochs']} | {seed} | "
              f"{s['best_test_accuracy']:.2f} | {s['final_test_accuracy']:.2f} | {ttt} |")
    best = [s["best_test_accuracy"] for s in runs[name].values()]
    if best:
        print(f"| **{name}: median of {len(best)}** | | | | **{statistics.median(best):.2f}** | | |")
if len(names) == 2:
    a, b = (runs[n] for n in names)
    print(f"\n{names[1]} less {names[0]}, per seed (percentage points):\n")
    print("| seed | best | final |")
    print("|---:|---:|---:|")
    for seed in sorted(set(a) & set(b)):
        d = [b[seed][k] - a[seed][k] for k in ("best_test_accuracy", "final_test_accuracy")]
        print(f"| {seed} | {d[0]:+.2f} | {d[1]:+.2f} |")
