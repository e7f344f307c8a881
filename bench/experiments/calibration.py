#!/usr/bin/env python3
"""Calibration of the policy simulator from measurements on real nodes
(bench/experiments/real-nodes.sh calibration).

Usage: calibration.py OUT_DIR   (reads OUT_DIR/raw, writes OUT_DIR/calibration.json and
OUT_DIR/summary.md; never edit either by hand, rerun this instead)

From raw/calls.tsv (one line per call: phase, round, entry node, function, work size, node that
ran it, cold start, server-side µs at the entry node, status) and the nodes' /metrics around
each phase, per node class:
  cold_start_ms  mean Eq. 3 T_load of the cold phase's MEUs on that node (the node's own
                 histogram: the load a cold start pays, module found compiled on disk);
  reuse_ms       mean Eq. 3 T_reuse of the warm phase's MEUs on that node (finding the loaded
                 module: the simulator's "compiled, no idle instance" case);
  overhead_ms    median server-side time of the warm local echo calls minus that echo's mean
                 guest execution time and its reuse (routing, admission, instantiation, the
                 answer: what every request costs beyond its guest);
  speed          the standard node's execution time over this node's, summed over the work
                 sizes both ran (execution = median server-side time of the local matmul-json
                 calls minus overhead and reuse; the sum lets the large sizes weigh most);
  busy_w_per_core  the node's energy model: tern_guest_energy_joules_total over
                 tern_guest_cpu_seconds_total (a CPU-time model, not a power meter: no RAPL
                 here);
and hop_ms: median over node pairs of (a warm echo called at one node and run at another) minus
(the same copy called at the node that runs it), same rounds.
"""
import json
import os
import re
import statistics
import sys
from collections import defaultdict

from analyze import link_delay

NODES = {"a": "standard", "b": "edge-small", "c": "cpu-burst"}
# The simulator's class for each Tern node class, and what it assumes for it
# (policy/src/sim/classes.rs): cold start ms, reuse ms (a third of it), speed, W per core.
SIM_CLASS = {"standard": "standard", "edge-small": "edge", "cpu-burst": "burst"}
ASSUMED = {
    "edge": (4.2, 4.2 / 3, 0.7, 4.0),
    "standard": (25.0, 25.0 / 3, 1.0, 6.0),
    "burst": (63.5, 63.5 / 3, 1.6, 9.0),
}
ASSUMED_HOP_MS = 0.2
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prom(path):
    """{(name, labels): value} of a Prometheus text file ({} if it is missing)."""
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            try:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def total(samples, name, label_filter=""):
    return sum(v for (n, labels), v in samples.items() if n == name and label_filter in labels)


def hist_mean_ms(before, after, name, functions):
    """Mean of histogram `name` over `functions` between two scrapes, ms (None if empty)."""
    s = c = 0.0
    for f in functions:
        lab = f'function="{f}"'
        s += total(after, name + "_sum", lab) - total(before, name + "_sum", lab)
        c += total(after, name + "_count", lab) - total(before, name + "_count", lab)
    return (s / c * 1000.0, int(c)) if c > 0 else (None, 0)


def main():
    out = sys.argv[1]
    raw = os.path.join(out, "raw")
    setup = {}
    for line in open(os.path.join(raw, "setup.txt")):
        for kv in line.split():
            if "=" in kv:
                k, v = kv.split("=", 1)
                setup[k] = v
    rows = []
    with open(os.path.join(raw, "calls.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            if line.strip():
                rows.append(dict(zip(header, line.rstrip("\n").split("\t"))))
    ok = [r for r in rows if r["status"] == "200" and r["duration_us"]]
    failed = [r for r in rows if r not in ok]
    scrapes = {(tag, n): prom(os.path.join(raw, f"{tag}-{n}.prom"))
               for tag in ("cold-before", "cold-after", "warm-before", "warm-after", "end")
               for n in NODES}

    def us(rs):
        return [int(r["duration_us"]) for r in rs]

    classes = {}
    notes = []
    for node, cls in NODES.items():
        cold_fns = sorted({r["function"] for r in ok if r["phase"] == "cold" and r["ran"] == node})
        cold_ms, cold_n = hist_mean_ms(scrapes[("cold-before", node)], scrapes[("cold-after", node)],
                                       "tern_meu_load_seconds", cold_fns)
        cold_calls = [r for r in ok if r["phase"] == "cold" and r["ran"] == node]
        warm_local = [r for r in ok if r["phase"] == "warm" and r["entry"] == node
                      and r["ran"] == node and r["cold"] == "false"]
        warm_fns = sorted({r["function"] for r in warm_local})
        reuse_ms, reuse_n = hist_mean_ms(scrapes[("warm-before", node)], scrapes[("warm-after", node)],
                                         "tern_meu_reuse_seconds", warm_fns)
        exec_ms, _ = hist_mean_ms(scrapes[("warm-before", node)], scrapes[("warm-after", node)],
                                  "tern_meu_exec_seconds", warm_fns)
        median_warm_ms = statistics.median(us(warm_local)) / 1000.0 if warm_local else None
        overhead_ms = None
        if median_warm_ms is not None:
            overhead_ms = max(0.0, median_warm_ms - (exec_ms or 0.0) - (reuse_ms or 0.0))
        work = defaultdict(list)
        for r in ok:
            if r["phase"] == "work" and r["entry"] == node and r["ran"] == node and r["cold"] == "false":
                work[int(r["n"])].append(int(r["duration_us"]))
        end = scrapes[("end", node)]
        cpu_s = total(end, "tern_guest_cpu_seconds_total")
        joules = total(end, "tern_guest_energy_joules_total")
        classes[node] = {
            "class": cls, "cold_ms": cold_ms, "cold_meus": cold_n, "cold_calls": len(cold_calls),
            "cold_calls_counted_cold": sum(1 for r in cold_calls if r["cold"] == "true"),
            "reuse_ms": reuse_ms, "reuse_meus": reuse_n, "echo_exec_ms": exec_ms,
            "warm_calls": len(warm_local), "median_warm_ms": median_warm_ms,
            "overhead_ms": overhead_ms,
            "work_ms": {n: statistics.median(v) / 1000.0 for n, v in sorted(work.items())},
            "work_calls": {n: len(v) for n, v in sorted(work.items())},
            "w_per_core": joules / cpu_s if cpu_s > 0 else None,
        }

    # Execution per work size: the median call minus what every call costs besides the guest.
    def exec_at(node, n):
        c = classes[node]
        t = c["work_ms"].get(n)
        if t is None or c["overhead_ms"] is None:
            return None
        return max(1e-6, t - c["overhead_ms"] - (c["reuse_ms"] or 0.0))

    sizes = sorted(set().union(*(c["work_ms"].keys() for c in classes.values())))
    for node, c in classes.items():
        both = [n for n in sizes if exec_at("a", n) is not None and exec_at(node, n) is not None]
        c["speed_per_n"] = {n: exec_at("a", n) / exec_at(node, n) for n in both}
        # Total over the sizes both nodes ran: the large sizes, where the guest's work and not
        # the per-call noise dominates, weigh the most.
        c["speed"] = (sum(exec_at("a", n) for n in both) / sum(exec_at(node, n) for n in both)
                      if both else None)

    # Hop: per (entry, runner) pair and round, forwarded minus local of the same copy.
    by = defaultdict(dict)
    for r in ok:
        if r["phase"] == "warm" and r["cold"] == "false":
            by[(r["round"], r["function"])][(r["entry"], r["ran"])] = int(r["duration_us"])
    pair_diffs = defaultdict(list)
    for calls in by.values():
        for (entry, ran), d in calls.items():
            local = calls.get((ran, ran))
            if entry != ran and local is not None:
                pair_diffs[(entry, ran)].append((d - local) / 1000.0)
    pair_medians = {p: statistics.median(v) for p, v in sorted(pair_diffs.items())}
    hop_ms = statistics.median(pair_medians.values()) if pair_medians else None

    missing = [f"{node} {key}" for node, c in classes.items()
               for key in ("cold_ms", "reuse_ms", "overhead_ms", "speed", "w_per_core") if c[key] is None]
    if hop_ms is None:
        missing.append("hop")
    commit = setup.get("commit", "?")
    dirty = setup.get("dirty", "?")
    source = (f"bench/experiments/real-nodes.sh calibration at {commit[:7]}"
              + ("" if dirty == "0" else f" (uncommitted changes to {dirty})")
              + (", smoke" if setup.get("smoke") == "1" else "")
              + f", {os.path.normpath(out)}")
    calibration = None
    if not missing:
        calibration = {
            "source": source,
            "hop_ms": round(max(0.0, hop_ms), 4),
            "classes": [
                {
                    "class": SIM_CLASS[c["class"]],
                    "cold_start_ms": round(c["cold_ms"], 4),
                    "reuse_ms": round(c["reuse_ms"], 4),
                    "overhead_ms": round(c["overhead_ms"], 4),
                    "speed": round(c["speed"], 4),
                    "busy_w_per_core": round(c["w_per_core"], 4),
                }
                for c in classes.values()
            ],
        }
        with open(os.path.join(out, "calibration.json"), "w") as f:
            json.dump(calibration, f, indent=2)
            f.write("\n")

    def fmt(v, d=3):
        return "—" if v is None else f"{v:.{d}f}"

    w = []
    w.append("# Calibration of the policy simulator on real Tern nodes\n")
    w.append("Generated by `bench/experiments/calibration.py` from `raw/` (written by "
             "`bench/experiments/real-nodes.sh calibration`); do not edit by hand.\n")
    w.append(f"- Commit {commit}" + (" (clean tree)" if dirty == "0" else f", uncommitted changes to {dirty}")
             + f"; binary `{setup.get('binary', '?')}`; smoke: {'yes' if setup.get('smoke') == '1' else 'no'}.")
    w.append(f"- Nodes: three `tern up` processes on this machine ({setup.get('nproc', '?')} vCPUs), "
             "a = standard (1.0 CPU), b = edge-small (0.5 CPU), c = cpu-burst (no quota)"
             + ("" if setup.get("cpu_limits") == "1" else ": **CPU quotas not applied** (not root or no cgroup v1 cpu)")
             + ("" if "link_delay_ms" not in setup else f"; {link_delay(setup)}")
             + "; warm-affinity placement, cells where the host allows, optimised runtime, "
             "`max_loaded_modules = 2` (so cold starts can be provoked).")
    w.append(f"- Calls: {len(ok)} answered 200, {len(failed)} not"
             + (f" ({', '.join(sorted({r['status'] or 'no answer' for r in failed}))})" if failed else "")
             + f"; {setup.get('cal_rounds', '?')} cold rounds, {setup.get('cal_calls', '?')} warm rounds, "
             f"{setup.get('work_calls', '?')} calls per work size (n = {setup.get('work_n', '?').replace(',', ', ')}).\n")
    w.append("## Per class: measured next to what the simulator assumes\n")
    w.append("| node | class | cold start ms (assumed) | reuse ms (assumed) | overhead ms | speed (assumed) | W per busy core (assumed) |")
    w.append("|---|---|---|---|---|---|---|")
    for node, c in classes.items():
        a = ASSUMED[SIM_CLASS[c["class"]]]
        w.append(f"| {node} | {c['class']} | {fmt(c['cold_ms'])} ({a[0]}) | {fmt(c['reuse_ms'], 4)} ({a[1]:.2f}) "
                 f"| {fmt(c['overhead_ms'])} | {fmt(c['speed'], 2)} ({a[2]}) | {fmt(c['w_per_core'], 1)} ({a[3]}) |")
    w.append(f"\nHop (forwarded minus local, warm echo): {fmt(hop_ms)} ms (assumed {ASSUMED_HOP_MS}); "
             "per pair (entry → runner): "
             + ", ".join(f"{e} → {r} {fmt(v)} ms (n = {len(pair_diffs[(e, r)])})" for (e, r), v in pair_medians.items())
             + ".\n")
    w.append("## What each figure rests on\n")
    w.append("| node | cold MEUs (calls, counted cold by the node) | warm local calls (median server-side ms, echo exec ms) | reuse MEUs | work: n → median ms (calls) | speed per n |")
    w.append("|---|---|---|---|---|---|")
    for node, c in classes.items():
        wk = ", ".join(f"{n} → {fmt(v, 2)} ({c['work_calls'][n]})" for n, v in c["work_ms"].items())
        sp = ", ".join(f"{n}: {v:.2f}" for n, v in c["speed_per_n"].items())
        w.append(f"| {node} | {c['cold_meus']} ({c['cold_calls']}, {c['cold_calls_counted_cold']}) "
                 f"| {c['warm_calls']} ({fmt(c['median_warm_ms'])}, {fmt(c['echo_exec_ms'], 4)}) | {c['reuse_meus']} "
                 f"| {wk or '—'} | {sp or '—'} |")
    w.append("")
    w.append("Not measured, kept as the simulator assumes them: memory, slots and time limits of a "
             "class (configuration), and a class's access RTT (where a node stands, not what it "
             "is). The power per busy core is the node's CPU-time energy model, the same for "
             "every class: this machine has no RAPL. The simulated cluster keeps 4 edge, 3 "
             "standard and 1 burst node; these three nodes share two vCPUs, so speed reflects "
             "CPU quotas on one machine, not different hardware.\n")
    if calibration is None:
        w.append(f"**No calibration.json written**: nothing measured for {', '.join(missing)}.")
    else:
        w.append("`calibration.json` (for `policy-bench --calibration`):\n")
        w.append("```json\n" + json.dumps(calibration, indent=2) + "\n```")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(w) + "\n")
    print("\n".join(w))
    if calibration is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
