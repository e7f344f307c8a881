#!/usr/bin/env bash
# A victim tenant's latency while another tenant attacks the node: the abandonment attack. One
# node (this tree, release, the product's defaults: bearer tokens, fair admission of slots and
# memory, both execution lanes), two tenants created with the quotas a new tenant gets unless
# ATTACKER_QUOTAS says otherwise:
#   attacker  deploys `loop` (never returns) with timeout_ms=30000 and floods it through
#             ATTACKER_CONNECTIONS (default 300) connections, each giving up after 1 s and
#             reconnecting (tern bench --timeout 1s): abandoned calls, as fast as it can;
#   victim    deploys `echo` and calls it open loop (tern bench --rate) at 200 calls a second,
#             then at 1,500: within the 2,000 a second a new tenant may send.
# Three modes, rotated round by round so each runs first, second and third equally often:
#   solo            the victim alone;
#   attacked        the attacker's load generator at nice 19: it stands in for a client on
#                   another machine, so that its own CPU on these two shared cores is not
#                   counted against the node;
#   attacked-local  the attacker's load generator at normal priority, competing with the node
#                   and the victim's load generator for the two cores.
# While attacked, /metrics is sampled every 0.5 s: the attacker's running guests (held to its
# quotas) and, 3 s after the attacker stops, the guests still executing (abandoned work must
# not hold slots). Victim runs: 6 s after a 2 s warm-up; the attacker starts 2 s before.
#
# Usage: scripts/bench-noisy-neighbour.sh [OUT_DIR] [ROUNDS]   (default
# bench/reports/noisy-neighbour, 4 rounds). ATTACKER_QUOTAS: the attacker's quotas as JSON
# (default {}: a new tenant's). Writes to OUT_DIR: summary.txt (generated from raw/; never edit
# it by hand), raw/ (every run's JSON, the metric samples) and commands.log.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/auth-header.sh
source scripts/lib/bench-node.sh
out=${1:-bench/reports/noisy-neighbour}
rounds=${2:-4}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [OUT_DIR] [ROUNDS]" >&2; exit 2; }
attacker_quotas=${ATTACKER_QUOTAS:-"{}"}
attacker_connections=${ATTACKER_CONNECTIONS:-300}
bench_prepare
addr=127.0.0.1:7936

attack=
sampler=
data=$(mktemp -d)
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  [ -n "$attack" ] && kill "$attack" 2>/dev/null || true
  cleanup_node
}
trap cleanup EXIT
# metric NAME_AND_LABELS: the value of one sample on /metrics (0 when absent or when the
# scrape fails: a sample, never a reason to stop the run).
metric() {
  { curl -sf -m 2 -H @"$admin" "http://$addr/metrics" || true; } |
    awk -v m="$1" '$1 == m { v = $2 } END { print v + 0 }'
}

log "$tern up --data $data --listen $addr --log warn"
$tern up --data "$data" --listen "$addr" --log warn >"$out/raw/node.log" 2>&1 &
node=$!
wait_healthy "$addr"
admin=$(auth_header_file "$data/admin.token" "$data/admin.header")
log "tenant attacker, quotas $attacker_quotas; tenant victim, default quotas"
tenant_token "$admin" "$addr" attacker "{\"name\":\"attacker\",\"quotas\":$attacker_quotas}" "$data/attacker.token"
tenant_token "$admin" "$addr" victim '{"name":"victim"}' "$data/victim.token"
curl -sf -H @"$(auth_header_file "$data/attacker.token" "$data/attacker.header")" -X PUT \
  --data-binary @functions/dist/loop.wasm "http://$addr/v1/functions/loop?timeout_ms=30000" >/dev/null
curl -sf -H @"$(auth_header_file "$data/victim.token" "$data/victim.header")" -X PUT \
  --data-binary @functions/dist/echo.wasm "http://$addr/v1/functions/echo" >/dev/null
curl -sf -H @"$admin" "http://$addr/v1/tenants/attacker" >"$out/raw/attacker-tenant.json"

# victim NAME: the victim's echo, open loop at 200 then 1,500 calls a second.
victim() {
  local rate
  for rate in 200 1500; do
    log "TERN_TOKEN=<victim developer token> $tern bench --server $addr --function echo --rate $rate --connections 32 --duration 6s --warmup 2s"
    TERN_TOKEN=$(cat "$data/victim.token") $tern bench --server "$addr" --function echo --rate "$rate" \
      --connections 32 --duration 6s --warmup 2s --no-progress --json "$out/raw/$1-r$rate.json" >/dev/null
  done
}

# attacked MODE ROUND: the flood, the victim under it, the samples, then the flood stops.
attacked() {
  local mode=$1 r=$2 nice=0
  [ "$mode" = attacked ] && nice=19
  log "TERN_TOKEN=<attacker developer token> nice -n $nice $tern bench --server $addr --function loop --connections $attacker_connections --timeout 1s --duration 60s --warmup 0s"
  TERN_TOKEN=$(cat "$data/attacker.token") nice -n "$nice" $tern bench --server "$addr" --function loop --data x \
    --connections "$attacker_connections" --timeout 1s --duration 60s --warmup 0s --no-progress \
    >/dev/null 2>"$out/raw/r$r-$mode-attacker.stderr" &
  attack=$!
  (while :; do
    echo "$(metric 'tern_tenant_running{tenant="attacker"}') $(metric tern_executing)"
    sleep 0.5
  done) >"$out/raw/r$r-$mode-samples.txt" &
  sampler=$!
  sleep 2
  victim "r$r-$mode"
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  sampler=
  kill "$attack" 2>/dev/null || true
  wait "$attack" 2>/dev/null || true
  attack=
  sleep 3
  metric tern_executing >"$out/raw/r$r-$mode-executing-after.txt"
}

modes=(solo attacked attacked-local)
for r in $(seq "$rounds"); do
  order=()
  for i in 0 1 2; do order+=("${modes[$(((r - 1 + i) % 3))]}"); done
  echo "${order[*]}" >"$out/raw/r$r-order.txt"
  for mode in "${order[@]}"; do
    if [ "$mode" = solo ]; then victim "r$r-solo"; else attacked "$mode" "$r"; fi
  done
  echo "round $r done (${order[*]})"
done
curl -sf -m 2 -H @"$admin" "http://$addr/metrics" >"$out/raw/metrics-end.txt"

python3 - "$out" "$rounds" "$commit" "$dirty" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)" "$attacker_connections" <<'PY' | tee "$out/summary.txt"
import json, os, re, statistics, sys
from datetime import datetime, timezone
out, rounds, commit, dirty, load_start, load_end, nproc, conns = sys.argv[1:9]
rounds = int(rounds)
raw = lambda *p: os.path.join(out, "raw", *p)
RATES = (200, 1500)
MODES = ("solo", "attacked", "attacked-local")
def run(r, mode, rate):
    return json.load(open(raw(f"r{r}-{mode}-r{rate}.json")))
q = json.load(open(raw("attacker-tenant.json")))["spec"]["quotas"]
outcomes, started, abandoned = {}, 0, 0
for line in open(raw("metrics-end.txt")):
    m = re.match(r'tern_tenant_invocations_total\{tenant="attacker",outcome="([a-z_]+)"\} (\S+)', line)
    if m and float(m.group(2)) > 0:
        outcomes[m.group(1)] = int(float(m.group(2)))
    m = re.match(r'tern_meus_total\{function="attacker.loop"\} (\S+)', line)
    if m:
        started = int(float(m.group(1)))
    m = re.match(r'tern_abandoned_meus_total (\S+)', line)
    if m:
        abandoned = int(float(m.group(1)))
print("# A victim tenant's echo while another tenant floods a never-returning function and abandons its calls.")
print("# Generated by scripts/bench-noisy-neighbour.sh from raw/; every command is in commands.log.")
print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
print(f"commit: {commit}" + (f" plus uncommitted changes to {dirty}" if dirty != "0" else " (clean tree)"))
print(f"machine: nproc {nproc}; load average at start {load_start}, at end {load_end}")
print("node: one, release, the product's defaults (auth tokens, fair admission of slots and memory, fast and slow lanes), "
      "127.0.0.1; load generators on the same two cores")
print(f"attacker: tenant quotas max_concurrent {q['max_concurrent']}, memory_budget_bytes {q['memory_budget_bytes']}, "
      f"max_queued {q['max_queued']}, max_rate_per_s {q['max_rate_per_s']}; loop (timeout_ms 30000) through {conns} "
      "connections, each abandoning its call after 1 s (tern bench --timeout 1s); "
      "its load generator at nice 19 in mode attacked, at normal priority in attacked-local")
print("victim: echo, open loop (tern bench --rate, 32 connections) at 200 then 1500 calls/s, 6 s after a 2 s warm-up; "
      "latency from the intended send time (so it includes the load generator's timer lateness)")
ratios = {(m, c): [] for m in MODES[1:] for c in RATES}
errors = {m: 0 for m in MODES}
held = []
for r in range(1, rounds + 1):
    order = open(raw(f"r{r}-order.txt")).read().split()
    print(f"round {r} ({', '.join(order)}):")
    for mode in order:
        parts = []
        for c in RATES:
            x = run(r, mode, c)
            errors[mode] += x["requests"] - x["ok"]
            l = x["latency_us"]
            parts.append(f"{c}/s: p50 {l['p50']} p99 {l['p99']} p99.9 {l['p999']} us, {x['requests'] - x['ok']} errors")
        line = f"  {mode}: " + "; ".join(parts)
        if mode != "solo":
            samples = [tuple(float(v) for v in l.split()) for l in open(raw(f"r{r}-{mode}-samples.txt")) if l.strip()]
            most = max((s[0] for s in samples), default=0)
            held.append(most)
            after = float(open(raw(f"r{r}-{mode}-executing-after.txt")).read())
            line += (f"; attacker's running guests at most {most:.0f} ({len(samples)} samples), "
                     f"guests executing 3 s after it stopped {after:.0f}")
        print(line)
    for mode in MODES[1:]:
        for c in RATES:
            ratios[(mode, c)].append(run(r, mode, c)["latency_us"]["p99"] / run(r, "solo", c)["latency_us"]["p99"])
print("victim errors (requests - ok): " + ", ".join(f"{m} {errors[m]}" for m in MODES))
for mode in MODES[1:]:
    for c in RATES:
        x = ratios[(mode, c)]
        print(f"victim p99 {mode}/solo at {c} calls/s: median {statistics.median(x):.2f} "
              f"(per round {min(x):.2f}-{max(x):.2f}; target <= 2)")
print(f"attacker: at most {max(held):.0f} guests running in any sample; {started} of its calls reached the runtime "
      f"(tern_meus_total), {abandoned} calls cancelled because their caller went away (tern_abandoned_meus_total, "
      "node-wide; only the attacker gives up); its requests answered, by outcome: "
      + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none")
      + (" (forbidden: tern bench's own /metrics scrapes with the attacker's developer token, "
         "which may not read node metrics)" if "forbidden" in outcomes else ""))
PY
