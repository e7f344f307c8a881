#!/usr/bin/env bash
# What authentication and tenancy cost on the hot path: one binary (this tree, release), one
# node at a time on 127.0.0.1, three configurations rotated round by round:
#   off     `auth = "off"`: no token checked, the default tenant (no per-tenant limits);
#   tokens  `auth = "tokens"` (the default): the load sends the admin token, default tenant;
#   quotas  `auth = "tokens"` and a tenant with every per-node and cluster-wide limit set
#           (request rate, max_concurrent, ...; high enough never to refuse), called with a
#           developer token of that tenant: the rate bucket and the tenant's slot caps are on
#           the path of every call.
# Each run: a fresh node, `tern bench --function echo --connections 1` (p50) then
# `--connections 64` (req/s, p99), `--duration 6s --warmup 2s` each. The load generator shares
# the two cores.
#
# Usage: scripts/bench-auth.sh [OUT_DIR] [ROUNDS]   (default bench/reports/auth, 8 rounds)
# Writes to OUT_DIR: summary.txt (generated from raw/; never edit it by hand), raw/ (the JSON
# of every run) and commands.log (every command, with the load average before it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/reports/auth}
rounds=${2:-8}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [OUT_DIR] [ROUNDS]" >&2; exit 2; }
rm -rf "$out/raw" "$out/commands.log"
mkdir -p "$out/raw"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bash scripts/build-functions.sh >/dev/null
cargo build --release -p tern-node
tern=target/release/tern
addr=127.0.0.1:7933
commit=$(git rev-parse HEAD)
# Uncommitted changes to tracked files when the binary was built (reports excluded), by path.
dirty=$(git --no-optional-locks status --short --untracked-files=no -- . ':!bench/reports' | awk '{print $2}' | paste -sd, -)
[ -n "$dirty" ] || dirty=0
sleep 20 # let the build's load settle
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# The tenant of the `quotas` runs: every limit finite, none reached by this load (a node
# serves ~15,000 echo calls a second; 1000 slots is the node's own max_instances).
quota_flags=(--quota max_rate_per_s=10000000 --quota rate_burst=10000000
  --quota max_concurrent=1000 --quota max_queued=100000)
modes=(off tokens quotas)

node=
data=
cleanup() {
  [ -n "$node" ] && kill "$node" 2>/dev/null || true
  [ -n "$data" ] && rm -rf "$data"
  return 0
}
trap cleanup EXIT
log() { echo "[$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)] $*" >>"$out/commands.log"; }

# one MODE ROUND: a fresh node in configuration MODE, echo at 1 then 64 connections.
one() {
  local mode=$1 r=$2 token c auth=tokens who="admin token"
  [ "$mode" = off ] && auth=off
  data=$(mktemp -d)
  log "TERN_AUTH=$auth $tern up --data $data --listen $addr --log warn"
  TERN_AUTH=$auth $tern up --data "$data" --listen "$addr" --log warn >"$out/raw/r$r-$mode-node.log" 2>&1 &
  node=$!
  for _ in $(seq 300); do curl -sf "http://$addr/healthz" >/dev/null && break; sleep 0.1; done
  token=$(cat "$data/admin.token" 2>/dev/null || true)
  if [ "$mode" = quotas ]; then
    # Tokens travel in TERN_TOKEN, never on a command line.
    log "TERN_TOKEN=<admin token> $tern tenant create bench ${quota_flags[*]} --server $addr"
    TERN_TOKEN=$token $tern tenant create bench "${quota_flags[@]}" --server "$addr" --log warn >/dev/null
    token=$(TERN_TOKEN=$token $tern token create --role developer --tenant bench --server "$addr" --log warn |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
    log "TERN_TOKEN=<developer token of bench> $tern deploy echo functions/dist/echo.wasm --server $addr"
    TERN_TOKEN=$token $tern deploy echo functions/dist/echo.wasm --server "$addr" --log warn >/dev/null
    who="developer token of tenant bench"
  fi
  for c in 1 64; do
    log "TERN_TOKEN=<$who, $mode> $tern bench --server $addr --function echo --connections $c --duration 6s --warmup 2s"
    TERN_TOKEN=$token $tern bench --server "$addr" --function echo --connections "$c" \
      --duration 6s --warmup 2s --no-progress --json "$out/raw/r$r-$mode-c$c.json" >/dev/null
  done
  kill "$node"
  wait "$node" 2>/dev/null || true
  node=
  rm -rf "$data"
  data=
}

# Round r starts with mode r mod 3 and goes on in order, so each mode runs first, second and
# third equally often.
for r in $(seq "$rounds"); do
  order=()
  for i in 0 1 2; do order+=("${modes[$(((r - 1 + i) % 3))]}"); done
  echo "${order[*]}" >"$out/raw/r$r-order.txt"
  for mode in "${order[@]}"; do one "$mode" "$r"; done
  echo "round $r done (${order[*]})"
done

python3 - "$out" "$rounds" "$commit" "$dirty" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" <<'PY' | tee "$out/summary.txt"
import json, os, statistics, sys
from datetime import datetime, timezone
out, rounds, commit, dirty, load_start, load_end, nproc = sys.argv[1:8]
rounds = int(rounds)
def load(r, mode, c):
    return json.load(open(os.path.join(out, "raw", f"r{r}-{mode}-c{c}.json")))
print("# Authentication and tenancy on the hot path: auth off / tokens / tokens + a tenant with every limit set,")
print("# one binary, rotated rounds. Generated by scripts/bench-auth.sh from raw/; every command is in commands.log.")
print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
print(f"commit: {commit}" + (f" plus uncommitted changes to {dirty}" if dirty != "0" else " (clean tree)"))
print(f"machine: nproc {nproc}; load average at start {load_start}, at end {load_end}")
print("runs: a fresh node per run on 127.0.0.1 (release, default configuration but auth), "
      "tern bench --function echo --connections 1 then 64, 6 s after a 2 s warm-up")
print("modes: off = auth off, default tenant; tokens = auth tokens, admin token, default tenant; "
      "quotas = auth tokens, developer token of a tenant with request rate, max_concurrent and "
      "max_queued set (never reached)")
modes = ("off", "tokens", "quotas")
ratios = {m: {"rps": [], "p50": [], "p99": []} for m in modes[1:]}
errors = 0
for r in range(1, rounds + 1):
    order = open(os.path.join(out, "raw", f"r{r}-order.txt")).read().split()
    row, line = {}, []
    for mode in modes:
        c1, c64 = load(r, mode, 1), load(r, mode, 64)
        errors += (c1["requests"] - c1["ok"]) + (c64["requests"] - c64["ok"])
        row[mode] = (c64["throughput_rps"], c1["latency_us"]["p50"], c64["latency_us"]["p99"])
        line.append(f"{mode}: {c64['throughput_rps']:.0f} req/s p99 {c64['latency_us']['p99']} us,"
                    f" 1 conn p50 {c1['latency_us']['p50']} us")
    for m in modes[1:]:
        ratios[m]["rps"].append(row[m][0] / row["off"][0])
        ratios[m]["p50"].append(row[m][1] / row["off"][1])
        ratios[m]["p99"].append(row[m][2] / row["off"][2])
    print(f"round {r} ({', '.join(order)}): " + "; ".join(line))
print(f"errors (requests - ok) over all runs: {errors}")
for m in modes[1:]:
    x = ratios[m]
    print(f"{m}/off at 64 connections, req/s: median {statistics.median(x['rps']):.3f} "
          f"(per round {min(x['rps']):.3f}-{max(x['rps']):.3f}); p99: median {statistics.median(x['p99']):.3f}")
    print(f"{m}/off at 1 connection, p50: median {statistics.median(x['p50']):.3f} "
          f"(per round {min(x['p50']):.3f}-{max(x['p50']):.3f})")
PY
