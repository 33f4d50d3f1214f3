"""Medians of bench/run.sh's alternated runs -> results/bench/bench.csv and bench.md.

    python bench/summarize.py RAW_DIR OUT_DIR
"""
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch

MACS = {"mnist": 4_241_152, "cifar10": 6_654_464}  # forward multiply-adds per image (partrain inspect)


def matmul_gflops(threads, n=2048, repeats=5):
    """A large fp32 matrix multiply with libtorch on `threads` threads: the machine's practical peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def load(raw, name):
    path = os.path.join(raw, name)
    if os.path.isdir(path):
        s = json.load(open(os.path.join(path, "summary.json")))
        bound = (s.get("pipeline") or {}).get("predicted_samples_per_second")
        return s["samples_per_second"], max(s["peak_rss_mb"]), s.get("first_step_seconds"), s["final_test_accuracy"], bound
    s = json.load(open(path))
    return s["samples_per_second"], max(s["peak_rss_mb"]), s["first_step_seconds"], s["final_test_accuracy"], None


def main():
    raw, out = sys.argv[1], sys.argv[2]
    groups = {}
    for entry in sorted(os.listdir(raw)):
        if entry.endswith(".log"):
            continue
        stem = entry[:-5] if entry.endswith(".json") else entry
        # {dataset}_{config}_t{threads}_{implementation}_r{round}; implementations may hold `_`.
        ds, config, threads, impl = stem.rsplit("_r", 1)[0].split("_", 3)
        groups.setdefault((ds, config, threads, impl), []).append(load(raw, entry))
    peak = {t: matmul_gflops(t) for t in (1, 2)}
    rows = []
    for (ds, config, threads, impl), runs in sorted(groups.items()):
        t = int(threads[1:])
        ranks = 2 if config.startswith(("dp", "hybrid")) else 1
        ips = statistics.median(r[0] for r in runs)
        bounds = [r[4] for r in runs if r[4]]
        rows.append(
            {
                "dataset": ds,
                "config": f"{config} {t} thr",
                "implementation": impl,
                "rounds": len(runs),
                "images_per_s": round(ips),
                "images_per_s_each": " ".join(str(round(r[0])) for r in runs),
                "peak_rss_mb_per_rank": round(statistics.median(r[1] for r in runs)),
                "first_step_s": round(statistics.median(r[2] for r in runs), 2),
                "test_accuracy": round(statistics.median(r[3] for r in runs), 2),
                "flops_fraction_of_matmul": round(ips * 6 * MACS[ds] / 1e9 / (peak[t] * ranks), 3),
                "pipeline_bound_images_per_s": round(statistics.median(bounds)) if bounds else "",
            }
        )
    # partrain / reference ratios within each configuration.
    for r in rows:
        if r["implementation"].startswith("pytorch"):
            continue
        same = [x for x in rows if x["dataset"] == r["dataset"] and x["config"] == r["config"]]
        refs = {x["implementation"]: x for x in same if x["implementation"].startswith("pytorch")}
        r["ratios"] = "; ".join(
            f"{k}: {r['images_per_s'] / v['images_per_s']:.2f}x speed, {r['peak_rss_mb_per_rank'] / v['peak_rss_mb_per_rank']:.2f}x RSS"
            for k, v in sorted(refs.items())
        )
    os.makedirs(out, exist_ok=True)
    fields = list(rows[0].keys()) + ["ratios"]
    with open(os.path.join(out, "bench.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    md = [
        f"Benchmark of {datetime.date.today()} on one machine: {os.cpu_count()} x {cpu}, libtorch/PyTorch {torch.__version__},",
        f"one pass over the first images of the training set, batch 64 per rank, medians of alternated rounds.",
        f"Large fp32 matmul (2048^3, libtorch): {peak[1]:.0f} GFLOP/s on 1 thread, {peak[2]:.0f} on 2.",
        "",
        "| data | config | implementation | images/s (median) | each round | peak RSS MB/rank | first step s | accuracy % | FLOP/s / matmul | partrain vs references |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        bound = f" (bound {r['pipeline_bound_images_per_s']})" if r["pipeline_bound_images_per_s"] else ""
        md.append(
            f"| {r['dataset']} | {r['config']} | {r['implementation']} | {r['images_per_s']}{bound} | {r['images_per_s_each']} | "
            f"{r['peak_rss_mb_per_rank']} | {r['first_step_s']} | {r['test_accuracy']} | {r['flops_fraction_of_matmul']} | {r.get('ratios', '')} |"
        )
    open(os.path.join(out, "bench.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
