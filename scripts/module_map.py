#!/usr/bin/env python3
"""The module map of docs/design.md, from the code: every folder of src/ in its layer order, each
file with its lines (tests excluded) and the first sentence of its //! comment.

    python3 scripts/module_map.py          # prints the markdown table
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LAYERS = ["util", "diag", "comm", "schedule.rs", "netspec", "config", "model", "data", "plan", "record", "train", "perf",
          "report", "cli", "main.rs"]


def code_lines(path):
    text = open(path).read()
    i = text.find("#[cfg(test)]")
    return (text[:i] if i >= 0 else text).count("\n")


def summary(path):
    doc = []
    for line in open(path):
        if not line.startswith("//!"):
            break
        doc.append(line[3:].strip())
    text = " ".join(d for d in doc if d)
    m = re.match(r"(.+?[.])(\s|$)", text)
    first = m.group(1) if m else text
    if len(first) > 150:
        first = first[: first.rfind(" ", 0, 146)].rstrip(":;,") + " ..."
    else:
        first = first.rstrip(":;.")
    return first.replace("|", "\\|")


def files(entry):
    path = os.path.join(ROOT, entry)
    if os.path.isfile(path):
        return [entry]
    out = []
    for d, _, fs in os.walk(path):
        out += [os.path.relpath(os.path.join(d, f), ROOT) for f in fs if f.endswith(".rs")]
    return sorted(out, key=lambda f: (not f.endswith("mod.rs"), f))


rows = ["| layer | file | lines | what |", "|---|---|---:|---|"]
total = 0
for layer in LAYERS:
    fs = files(layer)
    n = sum(code_lines(os.path.join(ROOT, f)) for f in fs)
    total += n
    for k, f in enumerate(fs):
        name = layer.removesuffix(".rs") if k == 0 else ""
        head = f"**{name}** ({n})" if name else ""
        rows.append(f"| {head} | `src/{f}` | {code_lines(os.path.join(ROOT, f))} | {summary(os.path.join(ROOT, f))} |")
rows.append(f"| | **total** | **{total}** | (lib.rs aside; tests excluded) |")
print("\n".join(rows))
sys.exit(0)
