"""The accuracy table of bench/nets_accuracy.sh: per net, each seed's best and final test
accuracy and time to 90 %, from the runs' summary.json.

    python3 bench/summarize_nets.py results/nets_accuracy
"""
import json
import statistics
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1])
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
print(f"CPU: {model}\n")
print("| net | parameters | epochs | seed | best test accuracy | final | time to 90 % (s) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name in ["seed001", "resnet"]:
    best = []
    for run in sorted(out.glob(f"{name}_s*/summary.json")):
        s = json.loads(run.read_text())
        best.append(s["best_test_accuracy"])
        ttt = s.get("time_to_target_s")
        print(f"| {s['model']} ({name}) | {s['parameters']:,} | {s['epochs']} | {run.parent.name.split('_s')[-1]} | "
              f"{s['best_test_accuracy']:.2f} | {s['final_test_accuracy']:.2f} | {ttt:.0f} |" if ttt else
              f"| {s['model']} ({name}) | {s['parameters']:,} | {s['epochs']} | {run.parent.name.split('_s')[-1]} | "
              f"{s['best_test_accuracy']:.2f} | {s['final_test_accuracy']:.2f} | not reached |")
    if best:
        print(f"| **{name}: median of {len(best)}** | | | | **{statistics.median(best):.2f}** | | |")
