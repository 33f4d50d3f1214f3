"""bench/fastest.sh's table: per implementation (the previous best recipe, configs/fastest.yaml,
PyTorch DDP on fastest.yaml's recipe) the median time to 99 % over the seeds (MLPerf's rule,
min-max beside), steps, epochs, training images/s and its fraction of the machine's fp32 peak;
the ratios the issue asks for; PyTorch's re-evaluation of every fastest.yaml model.

    .venv/bin/python bench/summarize_fastest.py results/fastest PEAK_GFLOPS "COMMAND"
"""
import csv
import json
import pathlib
import statistics
import subprocess
import sys
import time

FLOP_PER_IMAGE = 24995328  # `partrain inspect`, seed 001's net


def rows(out):
    runs = pathlib.Path(out) / "runs"
    for d in sorted(runs.glob("*_s*")):
        name, seed = d.name.rsplit("_s", 1)
        seed = seed.removesuffix(".json")
        if d.is_dir():
            s = json.load(open(d / "summary.json"))
            check = (d / "pytorch_eval.txt").read_text().strip() if (d / "pytorch_eval.txt").exists() else ""
            yield {"implementation": f"partrain {name}", "seed": seed, "time_to_target_s": s.get("time_to_target_s"),
                   "steps_to_target": s.get("steps_to_target"), "epochs_to_target": s.get("epochs_to_target"),
                   "images_per_second": s["samples_per_second"], "final_accuracy": s["final_test_accuracy"],
                   "pytorch_eval": check}
        elif d.suffix == ".json":
            s = json.load(open(d))
            steps = s.get("steps_to_target")
            yield {"implementation": name.replace("pytorch_", "pytorch ddp "), "seed": seed,
                   "time_to_target_s": s.get("time_to_target_s"), "steps_to_target": steps,
                   "epochs_to_target": steps and steps * 128 / 60000, "images_per_second": s["samples_per_second"],
                   "final_accuracy": s.get("final_accuracy"), "pytorch_eval": ""}


def median_of(rs, key):
    v = [r[key] for r in rs if r[key] is not None]
    return (statistics.median(v), min(v), max(v), len(v)) if v else (None, None, None, 0)


def main():
    out, peak, command = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    all_rows = list(rows(out))
    with open(pathlib.Path(out) / "fastest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        w.writeheader()
        w.writerows(all_rows)
    groups = {}
    for r in all_rows:
        groups.setdefault(r["implementation"], []).append(r)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
    lines = [f"Measured on {time.strftime('%Y-%m-%d')}, commit {commit}, {cpu}, 2 cores, fp32 peak {peak} GFLOP/s "
             f"(`partrain peak`); `{command}`.", "",
             "| run | reached | median time to 99 % s (min-max) | median steps | median epochs | images/s | fraction of fp32 peak |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    med = {}
    for name, rs in groups.items():
        t, lo, hi, n = median_of(rs, "time_to_target_s")
        steps, _, _, _ = median_of(rs, "steps_to_target")
        ep, _, _, _ = median_of(rs, "epochs_to_target")
        ips = statistics.median(r["images_per_second"] for r in rs)
        med[name] = t
        cell = f"{t:.1f} ({lo:.1f}-{hi:.1f})" if t is not None else "not reached"
        lines.append(f"| {name} | {n}/{len(rs)} | {cell} | {steps if steps is None else round(steps)} | "
                     f"{'-' if ep is None else f'{ep:.2f}'} | {ips:.0f} | {ips * FLOP_PER_IMAGE / 1e9 / peak:.2f} |")
    lines.append("")
    fast, prev = med.get("partrain fastest"), med.get("partrain previous")
    pt = [v for k, v in med.items() if k.startswith("pytorch") and v is not None]
    if fast and prev:
        lines.append(f"configs/fastest.yaml against the previous best: {fast / prev:.2f}x the time.")
    if fast and pt:
        lines.append(f"PyTorch DDP on the same recipe: {min(pt):.1f} s, {min(pt) / fast:.2f}x partrain's time.")
    checks = [r["pytorch_eval"] for r in groups.get("partrain fastest", []) if r["pytorch_eval"]]
    lines.append(f"PyTorch's re-evaluation of the {len(checks)} fastest.yaml models: " + "; ".join(checks))
    (pathlib.Path(out) / "fastest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
