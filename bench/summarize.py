"""Medians of bench/run.sh's alternated runs -> results/bench/bench.csv and bench.md.

    python bench/summarize.py RAW_DIR OUT_DIR PEAK_JSON

Every row is also a fraction of the machine's peak measured in the same run (`partrain peak`):
achieved FLOP/s (images/s x training FLOP per image: forward, weight-gradient and input-gradient
multiply-adds x 2) over the peak of all the configuration's cores in its precision.
"""
import csv
import datetime
import json
import os
import statistics
import sys

import torch

# Training FLOP per image (`partrain inspect`): 2 x (forward + weight-gradient + input-gradient
# multiply-adds), the first layer having no input gradient.
TRAIN_FLOP = {"mnist": 2 * (3 * 4_241_152 - 225_792), "cifar10": 2 * (3 * 6_654_464 - 884_736)}


def load(raw, name):
    path = os.path.join(raw, name)
    if os.path.isdir(path):
        s = json.load(open(os.path.join(path, "summary.json")))
        bound = (s.get("pipeline") or {}).get("predicted_samples_per_second")
        return s["samples_per_second"], max(s["peak_rss_mb"]), s.get("first_step_seconds"), s["final_test_accuracy"], bound
    s = json.load(open(path))
    return s["samples_per_second"], max(s["peak_rss_mb"]), s["first_step_seconds"], s["final_test_accuracy"], None


def main():
    raw, out, peak_file = sys.argv[1], sys.argv[2], sys.argv[3]
    peak_doc = json.load(open(peak_file))
    peak = {(r["precision"], r["threads"]): r["peak_gflops"] for r in peak_doc["rows"]}
    groups = {}
    for entry in sorted(os.listdir(raw)):
        if entry.endswith(".log"):
            continue
        stem = entry[:-5] if entry.endswith(".json") else entry
        # {dataset}_{config}_t{threads}_{implementation}_r{round}; implementations may hold `_`.
        ds, config, threads, impl = stem.rsplit("_r", 1)[0].split("_", 3)
        groups.setdefault((ds, config, threads, impl), []).append(load(raw, entry))
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
                "achieved_gflops": round(ips * TRAIN_FLOP[ds] / 1e9, 1),
                "fraction_of_peak": round(
                    ips * TRAIN_FLOP[ds] / 1e9 / (peak[("bf16" if "bf16" in impl else "fp32", t)] * ranks), 3
                ),
                "pipeline_bound_images_per_s": round(statistics.median(bounds)) if bounds else "",
            }
        )
    # partrain / reference ratios within each configuration (and / the BASELINE binary's row).
    for r in rows:
        if not r["implementation"].startswith("partrain"):
            continue
        same = [x for x in rows if x["dataset"] == r["dataset"] and x["config"] == r["config"]]
        refs = {x["implementation"]: x for x in same if x["implementation"].startswith("pytorch")}
        base = r["implementation"].replace("partrain-", "baseline-", 1)
        refs.update({x["implementation"]: x for x in same if x["implementation"] == base})
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
    cpu = peak_doc["cpu"]
    commit = os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
    md = [
        f"Benchmark of {datetime.date.today()} at commit {commit} (`bash bench/run.sh`) on {os.cpu_count()} x "
        f"{cpu['model_name']} (family {cpu['family']}, model {cpu['model']}), libtorch/PyTorch {torch.__version__},",
        "one pass over the first images of the training set, batch 64 per rank, medians of alternated rounds.",
        "",
        "This machine's peak, measured first in the same run (`partrain peak`: libtorch GEMM 2048^3 and a",
        "channels-last 3x3 convolution 32x64x56x56, the faster), GFLOP/s:",
        "",
        "| precision | threads | GEMM | convolution | peak |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in peak_doc["rows"]:
        md.append(f"| {r['precision']} | {r['threads']} | {r['gemm_gflops']:.1f} | {r['conv_gflops']:.1f} | {r['peak_gflops']:.1f} |")
    md += [
        "",
        "Fraction of peak = images/s x training FLOP per image (MNIST 25.0 M, CIFAR 38.2 M) / (peak of the",
        "configuration's precision and threads x ranks).",
        "",
        "| data | config | implementation | images/s (median) | each round | GFLOP/s | fraction of peak | peak RSS MB/rank | first step s | accuracy % | partrain vs references |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        bound = f" (bound {r['pipeline_bound_images_per_s']})" if r["pipeline_bound_images_per_s"] else ""
        md.append(
            f"| {r['dataset']} | {r['config']} | {r['implementation']} | {r['images_per_s']}{bound} | {r['images_per_s_each']} | "
            f"{r['achieved_gflops']} | {r['fraction_of_peak']} | {r['peak_rss_mb_per_rank']} | {r['first_step_s']} | "
            f"{r['test_accuracy']} | {r.get('ratios', '')} |"
        )
    open(os.path.join(out, "bench.md"), "w").write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
