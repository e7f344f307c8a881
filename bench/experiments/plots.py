#!/usr/bin/python3
"""Figures of an ablations report on real nodes, in the style of the paper's Fig. 3 and Fig. 4.

Usage: /usr/bin/python3 bench/experiments/plots.py OUT_DIR
Reads OUT_DIR/summary.json (written by analyze.py) and writes, as SVG, never by hand:
  fig3-functions.svg  per trace function, its mean latency under everything off (x) against
                      the full system (y), median over rounds, log-log with the diagonal: the
                      paper's baseline-vs-optimised scatter, one point per function;
  fig4-ablations.svg  per metric (first call on a node, mean latency, p99, energy per request),
                      each configuration's median same-round ratio to everything off, log scale:
                      the paper's ablation bars.
Runs with Debian's python3-matplotlib (the runner installs it when it can), hence /usr/bin/python3.
"""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [
    ("first_call_ms", "first call on a node"),
    ("mean_ms", "mean latency"),
    ("p99_ms", "p99 latency"),
    ("energy_mj_per_request", "energy per request"),
]
BASELINE = "all-off"


def ratios(runs, config, key):
    """Same-round ratios config / all-off of `key`."""
    out = []
    for rnd, m in runs.get(config, {}).items():
        b = runs.get(BASELINE, {}).get(rnd, {})
        if m.get(key) is not None and b.get(key):
            out.append(m[key] / b[key])
    return out


def per_function(runs, config):
    """{function: median over rounds of its mean latency, ms}."""
    seen = {}
    for m in runs.get(config, {}).values():
        for f, v in (m.get("function_mean_ms") or {}).items():
            seen.setdefault(f, []).append(v)
    return {f: statistics.median(v) for f, v in seen.items()}


def fig3(out, runs, setup):
    full, off = per_function(runs, "full"), per_function(runs, BASELINE)
    both = sorted(set(full) & set(off))
    if not both:
        return None
    x = [off[f] for f in both]
    y = [full[f] for f in both]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(x, y, s=12, alpha=0.7, color="#1f77b4", label=f"{len(both)} trace functions")
    lo, hi = min(x + y) * 0.8, max(x + y) * 1.25
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--", label="no change")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("everything off: mean latency, ms")
    ax.set_ylabel("full system: mean latency, ms")
    ax.set_title(f"Per function, real nodes (commit {setup['commit'][:7]})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "fig3-functions.svg")
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    return path


def fig4(out, runs, setup):
    configs = [c for c in setup.get("configs", "").split(",") if c in runs and c != BASELINE]
    if BASELINE not in runs or not configs:
        return None
    fig, ax = plt.subplots(figsize=(10.5, 4.5))
    width = 0.8 / len(configs)
    for i, c in enumerate(configs):
        heights = []
        for key, _ in METRICS:
            r = ratios(runs, c, key)
            heights.append(statistics.median(r) if r else float("nan"))
        xs = [k + (i - (len(configs) - 1) / 2) * width for k in range(len(METRICS))]
        ax.bar(xs, heights, width=width, label=c)
    ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
    ax.set_yscale("log")
    ax.set_xticks(range(len(METRICS)))
    ax.set_xticklabels([label for _, label in METRICS])
    ax.set_ylabel("ratio to everything off (median of same-round ratios)")
    ax.set_title(f"Ablations on real nodes (commit {setup['commit'][:7]}); below 1 is better", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="configuration")
    fig.tight_layout()
    path = os.path.join(out, "fig4-ablations.svg")
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    return path


def main():
    out = sys.argv[1]
    summary = json.load(open(os.path.join(out, "summary.json")))
    setup, runs = summary["setup"], summary["runs"]
    written = [p for p in (fig3(out, runs, setup), fig4(out, runs, setup)) if p]
    for p in written:
        print(f"wrote {p}")
    if not written:
        sys.exit("nothing to plot: the report has no full and all-off runs")


if __name__ == "__main__":
    main()
