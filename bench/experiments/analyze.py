#!/usr/bin/env python3
"""Report of an experiment on real nodes (bench/experiments/real-nodes.sh) from its raw files.

Usage: analyze.py OUT_DIR   (reads OUT_DIR/raw, writes OUT_DIR/summary.md and summary.json)

Per run: the requests `tern bench` recorded (one JSON line each: status, latency from the
planned send time, node that answered, cold start), and every node's /metrics and CPU ticks
before and after. Per configuration: the median over rounds; against a reference
configuration (warm affinity and least loaded for placement, everything off for the
ablations): the ratio in each round (same round, same seed, same machine state as near as
rotation gets), its median, and a 95 % t-interval of its mean over rounds. Nothing here is
edited by hand; rerun the script to regenerate.
"""
import gzip
import json
import math
import os
import re
import statistics
import sys
from collections import Counter, defaultdict

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}
NODES = ("a", "b", "c")
# Watts per fully busy core of the node's CPU-time energy model (tern-metrics,
# MODEL_WATTS_PER_CORE); this machine has no RAPL.
MODEL_WATTS_PER_CORE = 10.0
COMMITTED_CHECKPOINT = "policy/reports/ppo-weights.safetensors"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def text(path):
    """Lines of `path`, or of `path`.gz (the runner compresses raw files); None if neither."""
    if os.path.exists(path):
        return open(path)
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rt")
    return None


def prom(path):
    """{(name, labels): value} of a Prometheus text file; {} if missing."""
    out = {}
    lines = text(path)
    if lines is None:
        return out
    for line in lines:
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            try:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def delta(before, after, name, labels=None):
    total = 0.0
    for (n, l), v in after.items():
        if n == name and (labels is None or l == labels):
            total += v - before.get((n, l), 0.0)
    return total


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def t95(n):
    if n in T95:
        return T95[n]
    return T95[max(k for k in T95 if k <= n)]


def run_metrics(raw, tag, clk_tck):
    report = json.load(open(os.path.join(raw, f"{tag}.json")))
    records = [json.loads(l) for l in text(os.path.join(raw, f"{tag}.jsonl")) if l.strip()]
    ok = sorted(r["latency_us"] for r in records if r["status"] is not None and 200 <= r["status"] < 300)
    codes = Counter(r["code"] for r in records if r["code"] is not None)
    by_node = Counter(r["node"] for r in records if r["node"])
    m = {
        # Only a trace replay plans its requests in advance; a profile's count is what ran.
        "planned": (report["config"].get("replay") or {}).get("planned_requests"),
        "throughput_rps": report.get("throughput_rps"),
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(codes.values()),
        "errors_by_code": dict(sorted(codes.items())),
        "mean_ms": statistics.fmean(ok) / 1e3 if ok else None,
        "p50_ms": percentile(ok, 0.50) / 1e3 if ok else None,
        "p99_ms": percentile(ok, 0.99) / 1e3 if ok else None,
        "cold_responses": sum(1 for r in records if r["cold"]),
        "answered_by": {n: by_node.get(n, 0) for n in NODES},
    }
    cold_ok = [r["latency_us"] for r in records
               if r["cold"] and r["status"] is not None and 200 <= r["status"] < 300]
    m["cold_latency_ms"] = statistics.fmean(cold_ok) / 1e3 if cold_ok else None
    # The node's own time for the answered requests (arrival at its route to its answer).
    server = [r["server_us"] for r in records if r.get("server_us") is not None
              and r["status"] is not None and 200 <= r["status"] < 300]
    m["server_mean_ms"] = statistics.fmean(server) / 1e3 if server else None
    # The same by the node that ran the request: the entry's own, or forwarded to a peer.
    m["server_mean_ms_by_node"] = {}
    for n in NODES:
        s = [r["server_us"] for r in records if r.get("server_us") is not None and r["node"] == n
             and r["status"] is not None and 200 <= r["status"] < 300]
        m["server_mean_ms_by_node"][n] = statistics.fmean(s) / 1e3 if s else None
    # Per function: mean latency of its answered calls (for the per-function scatter plot).
    per_fn = defaultdict(list)
    for r in records:
        if r["status"] is not None and 200 <= r["status"] < 300 and r.get("function"):
            per_fn[r["function"]].append(r["latency_us"])
    m["function_mean_ms"] = {f: round(statistics.fmean(v) / 1e3, 4) for f, v in sorted(per_fn.items())}
    # Cold-start time as a caller sees it, whatever the configuration: the latency of each
    # function's first answered call on each node (preheated or not, compiled or not).
    first = {}
    for r in records:
        if r["status"] is not None and 200 <= r["status"] < 300 and r["node"]:
            key = (r["function"], r["node"])
            if key not in first or r["at_ms"] < first[key]["at_ms"]:
                first[key] = r
    # After a warm-up (which is not recorded) the first recorded call is not a first call.
    if report["config"].get("warmup_secs"):
        first = {}
    m["first_calls"] = len(first)
    m["first_call_ms"] = statistics.fmean(r["latency_us"] for r in first.values()) / 1e3 if first else None
    meus = reuse = cold = forwarded = load_s = loads = exec_s = execs = guest_j = 0.0
    cpu_ticks = 0
    decisions = Counter()
    for n in NODES:
        b = prom(os.path.join(raw, f"{tag}-{n}-before.prom"))
        a = prom(os.path.join(raw, f"{tag}-{n}-after.prom"))
        meus += delta(b, a, "tern_meus_total")
        reuse += delta(b, a, "tern_module_reuse_total")
        cold += delta(b, a, "tern_cold_starts_total")
        forwarded += delta(b, a, "tern_forwarded_meus_total")
        load_s += delta(b, a, "tern_meu_load_seconds_sum")
        loads += delta(b, a, "tern_meu_load_seconds_count")
        exec_s += delta(b, a, "tern_meu_exec_seconds_sum")
        execs += delta(b, a, "tern_meu_exec_seconds_count")
        guest_j += delta(b, a, "tern_guest_energy_joules_total")
        for policy in ("learned", "fallback", "heuristic"):
            decisions[policy] += delta(b, a, "tern_placement_decisions_total", f'{{policy="{policy}"}}')
        cpu_ticks += int(open(os.path.join(raw, f"{tag}-{n}-cpu-after")).read()) - int(
            open(os.path.join(raw, f"{tag}-{n}-cpu-before")).read())
    m["server_meus"] = int(round(meus))
    m["server_cold_starts"] = int(round(cold))
    # Of the MEUs that found their module loaded or had to load it: with cells, an MEU whose
    # cell answered an error is neither (the node learns it only from the cell's outcome).
    m["reuse_hit_rate"] = reuse / (reuse + cold) if reuse + cold else None
    m["forwarded_meus"] = int(round(forwarded))
    m["learned_decisions"] = {k: int(round(v)) for k, v in decisions.items()}
    m["node_cpu_ms_per_request"] = (cpu_ticks * 1000.0 / clk_tck / len(records)) if records else None
    m["energy_mj_per_request"] = (m["node_cpu_ms_per_request"] * MODEL_WATTS_PER_CORE
                                  if m["node_cpu_ms_per_request"] is not None else None)
    m["cold_load_ms"] = load_s * 1e3 / loads if loads else None
    m["loads"] = int(round(loads))
    m["exec_ms"] = exec_s * 1e3 / execs if execs else None
    # The entry's own account of its invocations, admission to answer (over the whole run,
    # warm-up included, every outcome): where the server-side time went, beside the loads.
    b = prom(os.path.join(raw, f"{tag}-a-before.prom"))
    a = prom(os.path.join(raw, f"{tag}-a-after.prom"))
    invocations = delta(b, a, "tern_invocation_duration_seconds_count")
    m["entry_invocations"] = int(round(invocations))
    m["entry_admitted_to_answer_ms"] = (delta(b, a, "tern_invocation_duration_seconds_sum") * 1e3 / invocations
                                        if invocations else None)
    # The entry's forwards a peer answered: the round trip, and the peer's own part of it
    # (nodes from before these metrics existed have neither).
    trips = delta(b, a, "tern_forward_seconds_count")
    m["forward_round_trip_ms"] = delta(b, a, "tern_forward_seconds_sum") * 1e3 / trips if trips else None
    m["forward_on_peer_ms"] = delta(b, a, "tern_forward_peer_seconds_sum") * 1e3 / trips if trips else None
    # The guests' own share (their CPU time under the same model), where the nodes export it.
    m["guest_energy_mj_per_request"] = guest_j * 1e3 / len(records) if records and guest_j else None
    # What the nodes ran in, as they say on /metrics (not what the runner asked for).
    entry = prom(os.path.join(raw, f"{tag}-a-after.prom"))
    m["in_force"] = {
        "isolation": next((l for (n, l), v in entry.items() if n == "tern_isolation_mode" and v == 1), ""),
        "runtime": next((l for (n, l), v in entry.items() if n == "tern_runtime_profile" and v == 1),
                        '{profile="optimised"}'),
    }
    m["in_force"] = {k: v.split('"')[1] if '"' in v else "?" for k, v in m["in_force"].items()}
    # Invocations in flight at the entry node halfway through the run, where it was sampled.
    mid = prom(os.path.join(raw, f"{tag}-a-mid.prom"))
    m["in_flight_mid"] = int(next((v for (n, _), v in mid.items() if n == "tern_queue_in_flight"), 0)) if mid else None
    return m


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def main():
    out = sys.argv[1]
    raw = os.path.join(out, "raw")
    setup = dict(kv.split("=", 1) for line in open(os.path.join(raw, "setup.txt")) for kv in line.split())
    clk_tck = os.sysconf("SC_CLK_TCK")
    tags = sorted({f.split(".jsonl")[0] for f in os.listdir(raw) if f.endswith((".jsonl", ".jsonl.gz"))})
    runs = defaultdict(dict)  # policy -> round -> metrics
    for tag in tags:
        policy, rnd = tag.rsplit("-r", 1)
        runs[policy][int(rnd)] = run_metrics(raw, tag, clk_tck)
    # Reports from before the runner had experiments named their configurations `policies`.
    listed = setup.get("configs", setup.get("policies", ""))
    policies = [p for p in listed.split(",") if p in runs] + sorted(
        p for p in runs if p not in listed.split(","))
    rounds = sorted({r for p in runs.values() for r in p})

    def med(policy, key):
        vals = [runs[policy][r][key] for r in rounds if r in runs[policy] and runs[policy][r][key] is not None]
        return statistics.median(vals) if vals else None

    def ratios(num, den, key):
        vals = []
        for r in rounds:
            a = runs.get(num, {}).get(r, {}).get(key)
            b = runs.get(den, {}).get(r, {}).get(key)
            if a is not None and b:
                vals.append(a / b)
        return vals

    def ratio_text(vals):
        if not vals:
            return "n/a"
        text = f"{statistics.median(vals):.3f} (rounds {', '.join(f'{v:.3f}' for v in vals)})"
        if len(vals) >= 2:
            mean, sd = statistics.fmean(vals), statistics.stdev(vals)
            half = t95(len(vals) - 1) * sd / math.sqrt(len(vals))
            text += f"; mean {mean:.3f}, 95 % CI {mean - half:.3f}–{mean + half:.3f}"
        return text

    summary = {"setup": setup, "runs": {p: {str(r): runs[p][r] for r in sorted(runs[p])} for p in policies}}
    lines = []
    w = lines.append
    if setup.get("experiment") == "profiles":
        profiles_report(w, setup, runs, rounds, med, ratios, ratio_text)
        finish(out, setup, runs, lines, summary)
        return
    if setup.get("experiment") == "ablations":
        ablations_report(w, setup, runs, policies, rounds, med, ratios, ratio_text)
        finish(out, setup, runs, lines, summary)
        return
    w("# Placement on real nodes: learned vs warm affinity vs least loaded")
    w("")
    w("Generated by `bench/experiments/analyze.py` from `raw/` (written by "
      "`bench/experiments/real-nodes.sh placement`" + (" --smoke" if setup.get("smoke") == "1" else "") + "); not edited by hand.")
    w("")
    w("## What ran")
    w("")
    what_ran(w, setup)
    w(f"- Placements: {', '.join(policies)}; `learned` is {learned_checkpoint(setup)} behind its "
      "rolling-reward guard; isolation as the node chooses (cells as root). "
      f"{len(rounds)} round(s), the order rotated each round.")
    w("")
    w("## Results (median over rounds)")
    w("")
    w("| placement | requests (planned) | errors | mean ms | p50 ms | p99 ms | cold starts (server) | reuse hit rate | answered by a / b / c | forwarded | node CPU ms / request | energy mJ / request |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in policies:
        by = [statistics.median([runs[p][r]["answered_by"][n] for r in runs[p]]) for n in NODES]
        rate = med(p, "reuse_hit_rate")
        w(f"| {p} | {fmt(med(p, 'requests'), 0)} ({fmt(med(p, 'planned'), 0)}) | {fmt(med(p, 'errors'), 0)} | "
          f"{fmt(med(p, 'mean_ms'))} | {fmt(med(p, 'p50_ms'))} | {fmt(med(p, 'p99_ms'))} | "
          f"{fmt(med(p, 'server_cold_starts'), 0)} | {fmt(100 * rate if rate is not None else None)} % | "
          f"{' / '.join(fmt(v, 0) for v in by)} | {fmt(med(p, 'forwarded_meus'), 0)} | "
          f"{fmt(med(p, 'node_cpu_ms_per_request'), 3)} | {fmt(med(p, 'energy_mj_per_request'))} |")
    w("")
    w("Latency is of the 2xx answers, from each request's planned send time (queueing in the client "
      "included). Errors by code, per run:")
    w("")
    for p in policies:
        for r in sorted(runs[p]):
            e = runs[p][r]["errors_by_code"]
            w(f"- {p}, round {r}: {', '.join(f'{k} {v}' for k, v in e.items()) if e else 'none'}"
              + (f"; learned decisions {runs[p][r]['learned_decisions']}" if p == "learned" else ""))
    w("")
    w("## Ratios, same round")
    w("")
    w("| ratio | mean latency | p99 |")
    w("| --- | --- | --- |")
    for num, den in (("learned", "warm-affinity"), ("learned", "least-loaded"), ("least-loaded", "warm-affinity")):
        if num in runs and den in runs:
            w(f"| {num} / {den} | {ratio_text(ratios(num, den, 'mean_ms'))} | {ratio_text(ratios(num, den, 'p99_ms'))} |")
    w("")
    w("## The issue's target for this experiment")
    w("")
    if "learned" in runs and "warm-affinity" in runs:
        p99 = ratios("learned", "warm-affinity", "p99_ms")
        held = sum(1 for v in p99 if v <= 1.0)
        verdict = ("met" if p99 and statistics.median(p99) <= 1.0 else "not met")
        w(f"- Learned placement's p99 no worse than warm affinity's: **{verdict}** on the median "
          f"({fmt(statistics.median(p99) if p99 else None, 3)}×; no worse in {held} of {len(p99)} round(s)).")
    if "learned" in runs and "least-loaded" in runs:
        w(f"- Gap to least loaded (p99): {ratio_text(ratios('learned', 'least-loaded', 'p99_ms'))}.")
    w("- Energy: this machine has no RAPL. Node CPU time per request is measured from /proc for each node "
      "process and its cells; energy is the node's CPU-time model (10 W per busy core) applied to it.")
    if setup.get("smoke") == "1":
        w("")
        w("**Smoke run**: one short round to check the runner and this analysis; not a result.")
    w("")
    finish(out, setup, runs, lines, summary)


def learned_checkpoint(setup):
    """What `learned` served: the checkpoint file, and whether it is the committed one."""
    path = setup.get("checkpoint", COMMITTED_CHECKPOINT)
    return (f"the committed checkpoint `{path}`" if path == COMMITTED_CHECKPOINT
            else f"the checkpoint `{path}` (not the committed one)")


def link_delay(setup):
    """What the mesh links added, as the runner's setup.txt says (`LINK_DELAY_MS`, `LINK_DELAYS`)."""
    if "link_delay_ms" not in setup:
        return "no added link delay"
    links = [l for l in setup.get("link_delays", "").split(",") if l]
    return (f"every mesh link through `tern chaos relay`, {setup['link_delay_ms']} ms each way"
            + (f" but {', '.join(l.replace('=', ' ') + ' ms' for l in links)}" if links else "")
            + "; the relay runs on the same CPUs, outside the nodes' quotas")


def what_ran(w, setup):
    """The report's "What ran" bullets shared by every experiment."""
    w(f"- Build: commit `{setup['commit'][:12]}`, uncommitted changes: {setup['dirty']}; binary `{setup['binary']}`.")
    w(f"- Three `tern up` processes on one {setup['nproc']}-CPU machine, a QUIC cluster on loopback "
      f"({link_delay(setup)}): a `standard` ("
      + ("the requests entered through a, b and c (`ENTRIES=all`: the load's connections round-robin "
         "over them, each request sent on whichever connection was free, so a slower entry took fewer)"
         if setup.get("entries") == "all" and setup.get("experiment") not in ("profiles", "calibration")
         else "the entry: every request arrives there")
      + "), b `edge-small`, c `cpu-burst`. "
      + ("CPU quotas (cgroup v1 `cpu.cfs_quota_us` per 100 ms): " + ", ".join(
          f"{n} {'none' if q == '-1' else f'{int(q) / 100000:.1f} CPU'}" for n, q in zip(NODES, setup['quotas_us'].replace(',', ' ').split()))
         + "." if setup["cpu_limits"] == "1" else "No CPU quotas (not root or no cgroup v1 cpu controller): the nodes differ only in the limits their classes admit.")
      + " The load generator runs on the same CPUs.")
    if setup.get("experiment") == "profiles":
        w(f"- A fresh cluster (empty data directories) for every run, bearer tokens on.")
        w(f"- Load average at the start: {setup['load_start']}.")
        return
    w(f"- Workload: `tern bench --trace traces/azure2019-http-12h.csv --minutes {setup['minutes']} "
      f"--speedup {setup['speedup']} --scale {setup['scale']} --seed {setup['seed']} --function 'mm-{{i}}' "
      f"--work-n {setup['work_n']} --connections {setup['connections']}"
      + (" --entry <b> --entry <c>" if setup.get("entries") == "all" else "")
      + "`: each trace function "
      + ("its own module (matmul-json plus a custom section naming the function: the same code, no two "
         "functions sharing a compiled module)" if setup.get("modules") == "distinct"
         else "its own copy of matmul-json (the same module)")
      + " deployed with timeout_ms=50, memory_mb=64 (so every class admits it), n fixed per function, "
      "~1 KB requests, open loop from the planned times; a fresh cluster (empty data directories) and the same "
      "seed for every run, bearer tokens on.")
    w(f"- Load average at the start: {setup['load_start']}.")


# The metrics compared with everything off: (column header, run metric).
RATIO_METRICS = [("first call on a node", "first_call_ms"), ("mean latency", "mean_ms"), ("p99", "p99_ms"),
                 ("energy per request", "energy_mj_per_request")]


def against_everything_off(w, lead, rows, metrics, ratios, ratio_text):
    """The table of same-round ratios to everything off: `lead` headers the leading columns,
    each row is (its leading cells, a run key, the everything-off run key of the same round),
    `metrics` the (header, metric) of every ratio column."""
    w("## Against everything off, same round")
    w("")
    w("| " + " | ".join(lead + [h for h, _ in metrics]) + " |")
    w("|" + " --- |" * (len(lead) + len(metrics)))
    for cells, a, b in rows:
        w("| " + " | ".join(list(cells) + [ratio_text(ratios(a, b, k)) for _, k in metrics]) + " |")
    w("")


def ablations_report(w, setup, runs, configs, rounds, med, ratios, ratio_text):
    """The paper's §4.4 ablations: every configuration against everything off."""
    w("# Ablations on real nodes: the learned scheduler, LCI and the runtime optimisation")
    w("")
    w("Generated by `bench/experiments/analyze.py` from `raw/` (written by "
      "`bench/experiments/real-nodes.sh ablations`" + (" --smoke" if setup.get("smoke") == "1" else "")
      + "); not edited by hand.")
    w("")
    w("## What ran")
    w("")
    what_ran(w, setup)
    w(f"- Configurations (placement / isolation / runtime profile, as asked): "
      + "; ".join(f"`{c}` {setup.get('config.' + c, '?')}" for c in configs)
      + f". {len(rounds)} round(s), the order rotated each round. `learned` is {learned_checkpoint(setup)} "
      "behind its rolling-reward guard; the scheduler 'off' is "
      "least-loaded (no model, no warm-instance preference); isolation `auto` runs each tenant in a cell "
      "(LCI) where the host allows it; runtime `baseline` compiles each function on first use per node and "
      "cell, preheats nothing, keeps no compiled artifact and allocates instances on demand; nodes compile "
      "with the default `compile_concurrency` (1), so first calls on a node queue behind each other's "
      "compiles.")
    w("- Energy is the node's CPU-time model (10 W per busy core; this machine has no RAPL) applied to the "
      "CPU time of each node process and its cells from /proc: it moves with CPU time per request and "
      "nothing else. 'Of it, guests'' is the part the nodes attribute to the guests themselves "
      "(`tern_guest_energy_joules_total`: their CPU time under the same model; n/a from builds before it).")
    w("")
    w("## Results (median over rounds)")
    w("")
    w("| configuration | in force (isolation / runtime) | requests (planned) | errors | first call on a node: mean ms | cold starts (server) | cold-start load ms | mean ms | p99 ms | reuse hit rate | energy mJ / request | of it, guests' | node CPU ms / request |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in configs:
        forced = sorted({f"{runs[c][r]['in_force']['isolation']} / {runs[c][r]['in_force']['runtime']}" for r in runs[c]})
        rate = med(c, "reuse_hit_rate")
        w(f"| {c} | {', '.join(forced)} | {fmt(med(c, 'requests'), 0)} ({fmt(med(c, 'planned'), 0)}) | "
          f"{fmt(med(c, 'errors'), 0)} | {fmt(med(c, 'first_call_ms'))} ({fmt(med(c, 'first_calls'), 0)}) | "
          f"{fmt(med(c, 'server_cold_starts'), 0)} | {fmt(med(c, 'cold_load_ms'))} | "
          f"{fmt(med(c, 'mean_ms'))} | {fmt(med(c, 'p99_ms'))} | "
          f"{fmt(100 * rate if rate is not None else None, 3)} % | {fmt(med(c, 'energy_mj_per_request'))} | "
          f"{fmt(med(c, 'guest_energy_mj_per_request'))} | "
          f"{fmt(med(c, 'node_cpu_ms_per_request'), 3)} |")
    w("")
    w("Latency is of the 2xx answers, from each request's planned send time (queueing in the client "
      "included). 'First call on a node' is the cold-start time as a caller sees it in every configuration: "
      "the mean latency of each function's first answered call on each node (how many such pairs in "
      "brackets), preheated or not. 'Cold-start load ms' is the server's mean T_load per cold start (Eq. 3: "
      "loading or, under `baseline`, compiling the module on the request path; n/a where nothing was cold). "
      "Errors by code, per run:")
    w("")
    for c in configs:
        for r in sorted(runs[c]):
            e = runs[c][r]["errors_by_code"]
            w(f"- {c}, round {r}: {', '.join(f'{k} {v}' for k, v in e.items()) if e else 'none'}")
    w("")
    if "all-off" in runs:
        rows = [((c,), c, "all-off") for c in configs if c != "all-off"]
        against_everything_off(w, ["configuration / all-off"], rows, RATIO_METRICS, ratios, ratio_text)
    w("## The issue's targets (full system against everything off)")
    w("")

    def target(label, key, most):
        vals = ratios("full", "all-off", key)
        if not vals:
            w(f"- {label}: n/a (a configuration did not run or had no sample)")
            return
        m = statistics.median(vals)
        w(f"- {label}: {fmt((1 - m) * 100, 1)} % lower on the median ({m:.3f}×; target ≥ {most} % lower): "
          f"**{'met' if (1 - m) * 100 >= most else 'not met'}**.")

    if "full" in runs and "all-off" in runs:
        target("Cold-start time (first call of a function on a node)", "first_call_ms", 52)
        target("Mean latency", "mean_ms", 33)
        target("Energy per request (CPU-time model)", "energy_mj_per_request", 21)
    rate = med("full", "reuse_hit_rate") if "full" in runs else None
    w(f"- Reuse hit rate of the full system: {fmt(100 * rate if rate is not None else None, 3)} % "
      f"(target ≥ 99.9 %): **{'met' if rate is not None and rate >= 0.999 else 'not met'}**.")
    w("- 3,000 concurrent tasks with 0 errors: not part of this experiment (`real-nodes.sh profiles` runs it).")
    w("")
    w("Figures (`bench/experiments/plots.py`, from `summary.json`; absent where Debian's matplotlib was "
      "not available): `fig3-functions.svg`, each trace function's mean latency under everything off "
      "against the full system (the paper's Fig. 3 style); `fig4-ablations.svg`, every configuration's "
      "ratio to everything off per metric (Fig. 4 style).")
    if setup.get("smoke") == "1":
        w("")
        w("**Smoke run**: one short round to check the runner and this analysis; not a result.")
    w("")


PROFILE_TEXT = {
    "steady": "steady: open loop at 200 requests a second for 30 s (the paper's steady profile)",
    "burst": "burst: open loop at 1,000 requests a second for 10 s onto an idle cluster (the top of the "
             "paper's 500-1,000 req/s bursts, as a step)",
    "concurrent": "concurrent: 3,000 connections in a closed loop for 20 s after 5 s of warm-up, each "
                  "sending its next request when its last is answered (the paper's 3,000 concurrent tasks)",
}


def profiles_report(w, setup, runs, rounds, med, ratios, ratio_text):
    """The paper's load profiles (steady, burst, 3,000 concurrent) per configuration."""
    def node_med(policy, node):
        vals = [runs[policy][r]["server_mean_ms_by_node"][node] for r in rounds if r in runs[policy]
                and runs[policy][r]["server_mean_ms_by_node"][node] is not None]
        return statistics.median(vals) if vals else None

    configs = setup.get("configs", "").split(",")
    profiles = setup.get("profiles", "").split(",")
    smoke = setup.get("smoke") == "1"
    w("# The paper's load profiles on real nodes")
    w("")
    w("Generated by `bench/experiments/analyze.py` from `raw/` (written by "
      "`bench/experiments/real-nodes.sh profiles`" + (" --smoke" if smoke else "") + "); not edited by hand.")
    w("")
    w("## What ran")
    w("")
    what_ran(w, setup)
    w("- Configurations (placement / isolation / runtime profile): "
      + "; ".join(f"`{c}` {setup.get('config.' + c, '?')}" for c in configs)
      + f". `learned` is {learned_checkpoint(setup)} behind its rolling-reward guard. "
      f"{len(rounds)} round(s), the configurations' order rotated each round, the profiles in the order "
      "listed, a fresh cluster for each.")
    limit = int(setup.get("profile_limit_ms", "10000"))
    runs_it = [n for n, most in (("a", None), ("b", 50), ("c", 900)) if most is None or limit <= most]
    w(f"- Workload: one function deployed from matmul-json with a {limit:,} ms time limit (a request whose limit "
      "is spent before its guest starts is refused as overloaded) and 64 MiB, every request matmul-json at n = "
      f"{setup.get('profile_work_n', '?')} padded to ~1 KB, all through node a. edge-small admits at most "
      "50 ms and cpu-burst 900 ms, so "
      + ("**only node a can run it**: the entry, admission and placement are a cluster's, the work one "
         "node's." if runs_it == ["a"] else f"nodes {', '.join(runs_it)} can run it.")
      + " The paper's n = 512 takes ~70 ms of one core here: 200 a second would need 14 cores.")
    for p in profiles:
        args = setup.get(f"profile.{p}", "").replace(",", " ")
        w(f"- {PROFILE_TEXT.get(p, p)}" + (" — **cut for the smoke run**" if smoke else "")
          + f": `tern bench {args}`.")
    w("")
    # The (profile, configuration) pairs that ran, in the report's order.
    present = [(p, c, f"{c}+{p}") for p in profiles for c in configs if f"{c}+{p}" in runs]
    w("## Results (median over rounds)")
    w("")
    w("| profile | configuration | requests | errors | req/s | first call on a node: mean ms (n/a after a warm-up) | mean ms | p50 ms | p99 ms | server-side mean ms | in flight at a, halfway | reuse hit rate | energy mJ / request |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p, c, k in present:
        rate = med(k, "reuse_hit_rate")
        w(f"| {p} | {c} | {fmt(med(k, 'requests'), 0)} | {fmt(med(k, 'errors'), 0)} | "
          f"{fmt(med(k, 'throughput_rps'), 0)} | {fmt(med(k, 'first_call_ms'))} | {fmt(med(k, 'mean_ms'))} | "
          f"{fmt(med(k, 'p50_ms'))} | {fmt(med(k, 'p99_ms'))} | {fmt(med(k, 'server_mean_ms'))} | "
          f"{fmt(med(k, 'in_flight_mid'), 0)} | "
          f"{fmt(100 * rate if rate is not None else None, 2)} % | {fmt(med(k, 'energy_mj_per_request'))} |")
    w("")
    w("Where the time went, median over rounds (the nodes' /metrics over the whole run, warm-up included, "
      "every outcome): the entry's invocations from admission to answer; module loads on all nodes and "
      "their mean, which counts a call's wait behind another call's load of the same module (a load does "
      "not count against the time limit: under `baseline` it is a compile); the guests' own execution; "
      "and, of the recorded answers, the server-side mean by the node that ran them (a, the entry, ran "
      "its own; b and c ran what a forwarded); of the entry's forwards a peer answered, the mean round trip "
      "and the peers' own time in it (the rest is the way there and back, queues on both nodes included).")
    w("")
    w("| profile | configuration | invocations at a | admission to answer, mean ms | loads | load mean ms | guest execution mean ms | server-side mean ms, ran on a / b / c | forward round trip mean ms | of which on the peer |")
    w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p, c, k in present:
        w(f"| {p} | {c} | {fmt(med(k, 'entry_invocations'), 0)} | {fmt(med(k, 'entry_admitted_to_answer_ms'))} | "
          f"{fmt(med(k, 'loads'), 0)} | {fmt(med(k, 'cold_load_ms'))} | {fmt(med(k, 'exec_ms'), 3)} | "
          + " / ".join(fmt(node_med(k, n)) for n in NODES)
          + f" | {fmt(med(k, 'forward_round_trip_ms'))} | {fmt(med(k, 'forward_on_peer_ms'))} |")
    w("")
    w("Latency is of the 2xx answers: open loop from each request's planned send time, closed loop from "
      "its send; server-side is the entry node's own time per answered request (`x-tern-duration-us`). "
      "In the closed loop on a saturated machine, latency says where requests wait (in the node, or in "
      "the client and the sockets between), not how fast they are served: compare requests per second "
      "there. Energy is the node's CPU-time model (10 W per busy core) over the node processes and their "
      "cells. Errors by code, per run:")
    w("")
    for p, c, k in present:
        for r in sorted(runs[k]):
            e = runs[k][r]["errors_by_code"]
            w(f"- {p}, {c}, round {r}: {', '.join(f'{code} {n}' for code, n in e.items()) if e else 'none'}")
    w("")
    if "all-off" in configs:
        rows = [((p, c), k, f"all-off+{p}") for p, c, k in present if c != "all-off"]
        # Under a fixed rate requests per second only show who kept up; in a closed loop they
        # are the measure.
        metrics = RATIO_METRICS[:3] + [("requests per second", "throughput_rps")] + RATIO_METRICS[3:]
        against_everything_off(w, ["profile", "configuration / all-off"], rows, metrics, ratios, ratio_text)
    w("## The issue's target for this experiment")
    w("")
    k = "full+concurrent"
    if k in runs:
        errs = [runs[k][r]["errors"] for r in sorted(runs[k])]
        flight = [runs[k][r]["in_flight_mid"] for r in sorted(runs[k])]
        w(f"- 3,000 concurrent tasks with 0 errors (full system): errors per round {errs}, in flight at the "
          f"entry halfway {flight}: **{'met' if errs and max(errs) == 0 and not smoke else 'not met' if not smoke else 'smoke run: not judged'}**.")
    else:
        w("- 3,000 concurrent tasks with 0 errors: the full system did not run the concurrent profile.")
    if smoke:
        w("")
        w("**Smoke run**: one short round at cut rates to check the runner and this analysis; not a result.")
    w("")


def finish(out, setup, runs, lines, summary):
    open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1, sort_keys=True)
    print("\n".join(lines))
    # A run that lost requests is not a result: the recorded requests must be the planned ones.
    lost = [(p, r) for p in runs for r in runs[p]
            if runs[p][r]["planned"] is not None and runs[p][r]["requests"] != runs[p][r]["planned"]]
    if lost:
        print(f"runs with requests not recorded: {lost}", file=sys.stderr)
        sys.exit(1)
    # A smoke run checks that the functions were there and answered: at least one success per
    # run, and never not_found (functions missing on the entry).
    if setup.get("smoke") == "1":
        broken = [(p, r) for p in runs for r in runs[p]
                  if runs[p][r]["ok"] == 0 or "not_found" in runs[p][r]["errors_by_code"]]
        if broken:
            print(f"smoke runs without answers or with missing functions: {broken}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
