#!/usr/bin/env bash
# Node configurations side by side: one binary (this tree, release), one node at a time on
# 127.0.0.1, each configuration given as NAME=VAR=VALUE[,VAR=VALUE...] (node environment
# variables, e.g. guard-pages=TERN_MEMORY_PROFILE=guard-pages), rotated round by round so each
# runs first, second, ... equally often. Each run: a fresh node with the product's defaults
# plus those variables, `tern bench --function echo --connections 1` (p50) then
# `--connections 64` (req/s, p99, and the node's CPU per request: the utime + stime of the node
# and every process under it — its cells with isolation = "lci" — over the 64-connection run,
# warm-up included, divided by req/s × the run's length), 6 s after a 2 s
# warm-up each, with the node's admin token. The load generator shares the two cores.
#
# Usage: scripts/bench-configs.sh OUT_DIR ROUNDS NAME=VAR=VALUE[,VAR=VALUE...] ...
# BENCH_FUNCTION (default echo) and BENCH_DATA (default hello) choose the example function and
# the request body, e.g. BENCH_FUNCTION=matmul-json BENCH_DATA='{"task_id":"b","n":64,"seed":1}'.
# Writes to OUT_DIR: summary.txt (generated from raw/; never edit it by hand), raw/ (the JSON
# of every run, the CPU readings) and commands.log (every command, with the load average).
# Ratios are against the first configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/auth-header.sh
source scripts/lib/bench-node.sh
[ $# -ge 4 ] || { echo "usage: $0 OUT_DIR ROUNDS NAME=VAR=VALUE[,VAR=VALUE...] NAME=... [...]" >&2; exit 2; }
out=$1 rounds=$2
shift 2
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
names=() envs=()
for spec in "$@"; do
  name=${spec%%=*} assignments=${spec#*=}
  [[ $name =~ ^[a-z0-9-]+$ && $assignments == *=* ]] || { echo "bad configuration: $spec" >&2; exit 2; }
  names+=("$name") envs+=("$assignments")
done
rm -rf "$out/raw" "$out/commands.log"
mkdir -p "$out/raw"
bench_build
tern=target/release/tern
addr=127.0.0.1:7935
function=${BENCH_FUNCTION:-echo}
body=${BENCH_DATA:-hello}
commit=$(git rev-parse HEAD)
dirty=$(tree_dirty)
clk=$(getconf CLK_TCK)
bench_settle

trap cleanup_node EXIT
# utime + stime of process $1 and of every process below it (a node's cells), in clock ticks.
# A process that ends between the listing and the read is counted as 0.
cpu_ticks() {
  local pid total=0 queue=("$1") t
  while [ ${#queue[@]} -gt 0 ]; do
    pid=${queue[0]} queue=("${queue[@]:1}")
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
    queue+=($(cat /proc/"$pid"/task/*/children 2>/dev/null || true))
  done
  echo "$total"
}

# one INDEX ROUND: a fresh node in configuration INDEX, echo at 1 then 64 connections.
one() {
  local i=$1 r=$2 name=${names[$1]} token c before after
  local -a vars
  IFS=, read -ra vars <<<"${envs[$i]}"
  data=$(mktemp -d)
  log "env ${vars[*]} $tern up --data $data --listen $addr --log warn"
  env "${vars[@]}" $tern up --data "$data" --listen "$addr" --log warn >"$out/raw/r$r-$name-node.log" 2>&1 &
  node=$!
  wait_healthy "$addr"
  token=$(cat "$data/admin.token" 2>/dev/null || true)
  for c in 1 64; do
    log "TERN_TOKEN=<admin token> $tern bench --server $addr --function $function --data '$body' --connections $c --duration 6s --warmup 2s"
    before=$(cpu_ticks "$node")
    TERN_TOKEN=$token $tern bench --server "$addr" --function "$function" --data "$body" --connections "$c" \
      --duration 6s --warmup 2s --no-progress --json "$out/raw/r$r-$name-c$c.json" >/dev/null
    after=$(cpu_ticks "$node")
    echo "$((after - before))" >"$out/raw/r$r-$name-c$c.cpu_ticks"
  done
  # What the node says it ran (isolation mode, memory profile, cells), for the summary.
  curl -sf -m 2 -H @"$(auth_header_file "$data/admin.token" "$data/admin.header")" \
    "http://$addr/metrics" >"$out/raw/r$r-$name-metrics.txt" || true
  kill "$node"
  wait "$node" 2>/dev/null || true
  node=
  rm -rf "$data"
  data=
}

n=${#names[@]}
for r in $(seq "$rounds"); do
  order=()
  for k in $(seq 0 $((n - 1))); do order+=($(((r - 1 + k) % n))); done
  printf '%s\n' "${order[@]}" >"$out/raw/r$r-order.txt"
  for i in "${order[@]}"; do one "$i" "$r"; done
  echo "round $r done"
done

python3 - "$out" "$rounds" "$commit" "$dirty" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" "$clk" "$function" "$body" "${names[@]}" -- "${envs[@]}" <<'PY' | tee "$out/summary.txt"
import json, os, statistics, sys
from datetime import datetime, timezone
out, rounds, commit, dirty, load_start, load_end, nproc, clk, function, body = sys.argv[1:11]
rest = sys.argv[11:]
sep = rest.index("--")
names, envs = rest[:sep], rest[sep + 1:]
rounds, clk = int(rounds), int(clk)
def load(r, name, c):
    return json.load(open(os.path.join(out, "raw", f"r{r}-{name}-c{c}.json")))
def ticks(r, name, c):
    return int(open(os.path.join(out, "raw", f"r{r}-{name}-c{c}.cpu_ticks")).read())
print("# Node configurations side by side, one binary, rotated rounds.")
print("# Generated by scripts/bench-configs.sh from raw/; every command is in commands.log.")
print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
print(f"commit: {commit}" + (f" plus uncommitted changes to {dirty}" if dirty != "0" else " (clean tree)"))
print(f"machine: nproc {nproc}; load average at start {load_start}, at end {load_end}")
print("runs: a fresh node per run on 127.0.0.1 (release, defaults plus the configuration's variables, "
      f"admin token), tern bench --function {function} --data '{body}' --connections 1 then 64, "
      "6 s after a 2 s warm-up; "
      "CPU per request = utime+stime of the node and the processes under it (cells) over the "
      "64-connection run (warm-up included) / (req/s x 8 s)")
def in_force(name):
    # What the node reported at the end of its last run (not what it was asked for).
    path = os.path.join(out, "raw", f"r{rounds}-{name}-metrics.txt")
    keep = ("tern_isolation_mode{", "tern_memory_profile{", "tern_cells_running ", "tern_cell_starts_total ")
    try:
        lines = [l.strip() for l in open(path) if l.startswith(keep)]
    except OSError:
        return "unknown (no /metrics)"
    return ", ".join(lines) or "unknown"
for name, env in zip(names, envs):
    print(f"configuration {name}: {env.replace(',', ' ')}; node reported: {in_force(name)}")
base = names[0]
ratios = {n: {"rps": [], "p50": [], "p99": [], "cpu": []} for n in names[1:]}
errors = 0
for r in range(1, rounds + 1):
    order = [names[int(i)] for i in open(os.path.join(out, "raw", f"r{r}-order.txt")).read().split()]
    row, line = {}, []
    for name in names:
        c1, c64 = load(r, name, 1), load(r, name, 64)
        errors += (c1["requests"] - c1["ok"]) + (c64["requests"] - c64["ok"])
        cpu_us = ticks(r, name, 64) / clk * 1e6 / (c64["throughput_rps"] * 8)
        row[name] = (c64["throughput_rps"], c1["latency_us"]["p50"], c64["latency_us"]["p99"], cpu_us)
        line.append(f"{name}: {c64['throughput_rps']:.0f} req/s p99 {c64['latency_us']['p99']} us "
                    f"cpu {cpu_us:.0f} us/req, 1 conn p50 {c1['latency_us']['p50']} us "
                    f"p99 {c1['latency_us']['p99']} us")
    for n in names[1:]:
        for k, idx in (("rps", 0), ("p50", 1), ("p99", 2), ("cpu", 3)):
            ratios[n][k].append(row[n][idx] / row[base][idx])
    print(f"round {r} ({', '.join(order)}): " + "; ".join(line))
print(f"errors (requests - ok) over all runs: {errors}")
for n in names[1:]:
    x = ratios[n]
    med = lambda k: statistics.median(x[k])
    print(f"{n}/{base} at 64 connections: req/s median {med('rps'):.3f} "
          f"(per round {min(x['rps']):.3f}-{max(x['rps']):.3f}), p99 median {med('p99'):.3f}, "
          f"CPU per request median {med('cpu'):.3f} (per round {min(x['cpu']):.3f}-{max(x['cpu']):.3f})")
    print(f"{n}/{base} at 1 connection: p50 median {med('p50'):.3f} "
          f"(per round {min(x['p50']):.3f}-{max(x['p50']):.3f})")
PY
