"""The remedies table from bench/remedies.sh's run folders: per link and remedy, time and steps to
the target (median over the seeds that ran it, MLPerf's rule; min-max beside), step time, bytes
sent per rank per step, best accuracy; written as CSV, Markdown and a plot (time to target per
remedy, one group per link).

    .venv/bin/python bench/summarize_remedies.py results/remedies results/example
"""
import csv
import json
import pathlib
import statistics
import subprocess
import sys

LINK_ORDER = ["unshaped", "10gbit", "1gbit", "100mbit"]


def best_accuracy(run):
    try:
        with open(run / "metrics.csv") as f:
            return max(float(r["test_accuracy"]) for r in csv.DictReader(f) if r.get("test_accuracy"))
    except (OSError, ValueError, KeyError):
        return None


def read_run(run):
    """One run folder as a row, or None when it did not complete."""
    if (run / "ddp.json").exists():
        d = json.load(open(run / "ddp.json"))
        return {
            "time_to_target_s": d["time_to_target_s"],
            "steps_to_target": d["steps_to_target"],
            "step_ms": 1e3 * d["step_seconds"],
            "sent_mb_per_step": None,
            "best_accuracy": d["best_accuracy"],
        }
    try:
        s = json.load(open(run / "summary.json"))
    except (OSError, ValueError):
        return None
    if s.get("status") != "completed":
        return None
    return {
        "time_to_target_s": s.get("time_to_target_s"),
        "steps_to_target": s.get("steps_to_target"),
        "step_ms": 1e3 * s["train_seconds"] / max(s["steps"], 1),
        "sent_mb_per_step": s.get("sent_bytes_per_step", 0.0) / 1e6,
        "best_accuracy": best_accuracy(run) or s.get("final_test_accuracy"),
    }


def collect(root):
    rows = []
    for link_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for run in sorted(p for p in link_dir.iterdir() if p.is_dir()):
            name, _, seed = run.name.rpartition("_s")
            row = read_run(run)
            if row:
                rows.append({"link": link_dir.name, "remedy": name, "seed": int(seed), **row})
    return rows


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def table(rows):
    links = sorted({r["link"] for r in rows}, key=lambda l: LINK_ORDER.index(l) if l in LINK_ORDER else 9)
    out, medians = [], {}
    for link in links:
        here = [r for r in rows if r["link"] == link]
        names = sorted({r["remedy"] for r in here}, key=lambda n: (n.startswith("ddp"), n))
        out += [f"**{link}**", "", "| remedy | seeds reaching 99 % | time to 99 % s (median, min-max) | vs plain | steps to 99 % | step ms | MB sent per rank per step | best accuracy % |",
                "|---|---:|---|---:|---:|---:|---:|---|"]
        for name in names:
            runs = [r for r in here if r["remedy"] == name]
            times = [r["time_to_target_s"] for r in runs if r["time_to_target_s"] is not None]
            steps = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
            med = statistics.median(times) if times else None
            medians[(link, name)] = med
            span = f"{fmt(med)} ({fmt(min(times))}-{fmt(max(times))})" if len(times) > 1 else fmt(med)
            accs = [r["best_accuracy"] for r in runs if r["best_accuracy"] is not None]
            out.append(
                f"| {name} | {len(times)}/{len(runs)} | {span} | {{vs:{link}:{name}}} | "
                f"{fmt(statistics.median(steps), 0) if steps else '-'} | "
                f"{fmt(statistics.median([r['step_ms'] for r in runs]))} | "
                f"{fmt(runs[0]['sent_mb_per_step'], 3) if runs[0]['sent_mb_per_step'] is not None else '-'} | "
                f"{'-'.join(fmt(a, 2) for a in sorted({min(accs), max(accs)})) if accs else '-'} |"
            )
        out.append("")
    text = "\n".join(out)
    for (link, name), med in medians.items():
        plain = medians.get((link, "plain"))
        vs = f"{med / plain:.2f}" if med and plain else "-"
        text = text.replace(f"{{vs:{link}:{name}}}", vs)
    return text, medians


def plot(medians, path):
    try:
        import matplotlib
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = [l for l in LINK_ORDER if any(k[0] == l for k in medians)]
    names = sorted({k[1] for k in medians}, key=lambda n: (n.startswith("ddp"), n))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(links))]
        ys = [medians.get((l, name)) or 0 for l in links]
        ax.bar(xs, ys, width, label=name, hatch="//" if name.startswith("ddp") else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(links))], links)
    ax.set_ylabel("time to 99 % (s, median of seeds)")
    ax.set_title("MNIST dp on 4 emulated nodes x 1 rank: time to 99 % per remedy and link (no bar: not run on that link)")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    root, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    rows = collect(root)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "remedies.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    text, medians = table(rows)
    (dest / "remedies.md").write_text(text)
    plot(medians, dest / "remedies.png")
    print(text)


if __name__ == "__main__":
    main()
