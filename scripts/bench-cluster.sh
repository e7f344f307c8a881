#!/usr/bin/env bash
# Cluster benchmarks, three `tern` processes on loopback plus the load generator, all
# on this machine:
#   1. forwarded vs local invocation latency (1 connection, closed loop, BENCH_ROUNDS alternated
#      rounds, default 5);
#   2. echo throughput: one standalone node vs three nodes with the load spread over all three;
#   3. replication: a 1 MiB module deployed on a, time until callable on b and c.
# Usage: scripts/bench-cluster.sh [OUT_DIR]   (default bench/reports/cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/reports/cluster}
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bash scripts/build-functions.sh >/dev/null
# TERN_BIN=PATH runs that binary instead of building this tree (to compare two builds side by
# side in one session).
if [ -n "${TERN_BIN:-}" ]; then
  tern=$TERN_BIN
else
  cargo build --release -p tern-node
  tern=target/release/tern
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
dur=${BENCH_DURATION:-10s}
# BENCH_QUICK=1: only part 1 (forwarding overhead), for iterating on the forwarding path.
quick=${BENCH_QUICK:-0}

names=(a b c)
http=(127.0.0.1:7911 127.0.0.1:7912 127.0.0.1:7913)
mesh=(127.0.0.1:7921 127.0.0.1:7922 127.0.0.1:7923)
$tern cluster init --out "$work/pki" --nodes a,b,c >/dev/null

# Bearer tokens are on, as by default (set explicitly, so an older binary compared side by side
# runs the same way); each node writes its own admin token at its first start. A binary from
# before tokens writes none and needs none.
export TERN_AUTH=tokens
# token DATA_DIR: the admin token a node with that data directory wrote (empty if none).
token() { cat "$1/admin.token" 2>/dev/null || true; }
# auth DATA_DIR: a file holding the curl header that goes with it (`curl -H @FILE`).
source scripts/lib/auth-header.sh
auth() { auth_header_file "$1/admin.token" "$1.auth-header"; }

wait_http() {
  for _ in $(seq 300); do curl -sf "http://$1/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "node at $1 did not start" >&2
  return 1
}

for i in 0 1 2; do
  peers=()
  for j in 0 1 2; do
    [ "$i" = "$j" ] || peers+=(--peer "${names[$j]}=${mesh[$j]}")
  done
  TERN_EXAMPLES='[]' $tern up --node-name "${names[$i]}" --listen "${http[$i]}" \
    --data "$work/${names[$i]}" --cluster-dir "$work/pki" --cluster-listen "${mesh[$i]}" \
    "${peers[@]}" --log warn &
  pids+=($!)
done
for h in "${http[@]}"; do wait_http "$h"; done
for i in 0 1 2; do
  for _ in $(seq 300); do
    [ "$(curl -sf -H @"$(auth "$work/${names[$i]}")" "http://${http[$i]}/v1/cluster" | grep -o '"state":"up"' | wc -l)" = 2 ] && break
    sleep 0.1
  done
done

# Deploy echo under several names and learn each name's owner from where it runs.
declare -A owner_of
for k in $(seq 0 11); do
  TERN_TOKEN=$(token "$work/a") $tern deploy "echo-$k" functions/dist/echo.wasm --server "${http[0]}" >/dev/null
done
sleep 1 # replication + a few status rounds
for k in $(seq 0 11); do
  owner_of[echo-$k]=$(curl -s -D - -o /dev/null -H @"$(auth "$work/c")" -X POST "http://${http[2]}/v1/functions/echo-$k/invoke" -d x \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="x-tern-node"{print $2}')
done
pick() { for k in $(seq 0 11); do [ "${owner_of[echo-$k]}" = "$1" ] && { echo "echo-$k"; return; }; done; }
fa=$(pick a); fb=$(pick b); fc=$(pick c)
echo "owners: $fa->a $fb->b $fc->c"

# UDP datagrams sent on this machine so far (all of them are mesh traffic here: the load
# generator speaks HTTP over TCP).
udp_out() { awk '/^Udp:/ { n++ } /^Udp:/ && n == 2 { print $5 }' /proc/net/snmp; }
# Writes the datagrams sent during the measured part of a run (after its 2 s warmup) to FILE.
measure_udp() {
  local t0
  sleep 2
  t0=$(udp_out)
  sleep "${dur%s}"
  echo $(($(udp_out) - t0)) >"$1"
}

rounds=${BENCH_ROUNDS:-5}
echo "== 1. forwarded vs local, 1 connection through c (local: $fc on c; forwarded: $fb on b), $rounds alternated rounds"
for round in $(seq "$rounds"); do
  TERN_TOKEN=$(token "$work/c") $tern bench --server "${http[2]}" --function "$fc" --connections 1 --duration "$dur" --warmup 2s \
    --no-progress --json "$out/local-$round.json" | tail -n 3
  measure_udp "$out/forwarded-$round-datagrams.txt" &
  udp_job=$!
  TERN_TOKEN=$(token "$work/c") $tern bench --server "${http[2]}" --function "$fb" --connections 1 --duration "$dur" --warmup 2s \
    --no-progress --json "$out/forwarded-$round.json" | tail -n 3
  wait "$udp_job"
done

if [ "$quick" = 1 ]; then
  for r in $(seq "$rounds"); do
    python3 -c "import json,sys;l=json.load(open(sys.argv[1]));f=json.load(open(sys.argv[2]));d=int(open(sys.argv[4]).read());print('round', sys.argv[3], 'local p50', l['latency_us']['p50'], 'forwarded p50', f['latency_us']['p50'], 'extra', f['latency_us']['p50']-l['latency_us']['p50'], 'datagrams per forwarded request %.2f' % (d / (f['throughput_rps'] * float(sys.argv[5]))))" "$out/local-$r.json" "$out/forwarded-$r.json" $r "$out/forwarded-$r-datagrams.txt" "${dur%s}"
  done
  exit 0
fi

# CPU time (clock ticks) the given processes have used so far.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
# Writes the node processes' CPU ticks over the measured part of a run (after its 2 s warmup)
# to FILE; call it in the background when the run starts.
measure_cpu() {
  local file=$1 t0
  shift
  sleep 2
  t0=$(cpu_ticks "$@")
  sleep "${dur%s}"
  echo $(($(cpu_ticks "$@") - t0)) >"$file"
}

# Three closed loops at once, 22 + 21 + 21 connections through a, b and c.
# Usage: three_entries REPORT_PREFIX FUNCTION_VIA_A FUNCTION_VIA_B FUNCTION_VIA_C
three_entries() {
  local prefix=$1 i bench=()
  shift
  local fns=("$@")
  measure_cpu "$out/$prefix-cpu-ticks.txt" "${pids[@]}" &
  bench+=($!)
  for i in 0 1 2; do
    TERN_TOKEN=$(token "$work/${names[$i]}") $tern bench --server "${http[$i]}" --function "${fns[$i]}" --connections $((i == 0 ? 22 : 21)) \
      --duration "$dur" --warmup 2s --no-progress --json "$out/$prefix-${names[$i]}.json" >/dev/null &
    bench+=($!)
  done
  wait "${bench[@]}"
}

echo "== 2a. three nodes, 64 connections spread over a, b, c, each on a function it owns"
three_entries spread "$fa" "$fb" "$fc"

echo "== 2b. three nodes, 64 connections spread over a, b, c, all on one function owned by b"
three_entries onefn "$fb" "$fb" "$fb"

echo "== 3. replication of a 1 MiB module (5 deploys on a; time until callable on b and c)"
python3 - functions/dist/echo.wasm "$work/big.wasm" <<'EOF'
import sys
src, dst = sys.argv[1], sys.argv[2]
wasm = open(src, "rb").read()
name = b"tern-padding"
def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)
payload = leb(len(name)) + name + bytes(1 << 20)
open(dst, "wb").write(wasm + b"\x00" + leb(len(payload)) + payload)
EOF
: >"$out/replication-ms.txt"
for r in $(seq 5); do
  # A distinct module each round (one differing byte), so nothing is cached on b or c.
  python3 -c "import sys;b=bytearray(open(sys.argv[1],'rb').read());b[-1]=$r;open(sys.argv[2],'wb').write(b)" "$work/big.wasm" "$work/big-$r.wasm"
  TERN_TOKEN=$(token "$work/a") $tern deploy "big-$r" "$work/big-$r.wasm" --server "${http[0]}" >/dev/null
  t0=$(date +%s%N)
  for i in 1 2; do
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -H @"$(auth "$work/${names[$i]}")" -X POST "http://${http[$i]}/v1/functions/big-$r/invoke" -d x)" = 200 ]; do
      sleep 0.005
    done
  done
  echo $(( ($(date +%s%N) - t0) / 1000000 )) | tee -a "$out/replication-ms.txt"
done

echo "== 2c. one standalone node (no cluster), 64 connections, same function"
kill -9 "${pids[@]}" 2>/dev/null || true
pids=()
TERN_EXAMPLES='["echo"]' $tern up --listen 127.0.0.1:7914 --data "$work/single" --log warn &
pids+=($!)
wait_http 127.0.0.1:7914
measure_cpu "$out/single-cpu-ticks.txt" "${pids[@]}" &
cpu_job=$!
TERN_TOKEN=$(token "$work/single") $tern bench --server 127.0.0.1:7914 --function echo --connections 64 --duration "$dur" --warmup 2s \
  --no-progress --json "$out/single.json" >/dev/null
wait "$cpu_job"

python3 - "$out" "${dur%s}" "$(getconf CLK_TCK)" "$rounds" <<'EOF'
import json, os, sys
out, dur, tck, rounds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(n): return json.load(open(os.path.join(out, n)))
lines = []
extras, grams = [], []
for r in range(1, rounds + 1):
    l, f = load(f"local-{r}.json"), load(f"forwarded-{r}.json")
    lines.append(f"round {r}: local p50 {l['latency_us']['p50']} us p99 {l['latency_us']['p99']} us; "
                 f"forwarded p50 {f['latency_us']['p50']} us p99 {f['latency_us']['p99']} us; "
                 f"extra p50 {f['latency_us']['p50'] - l['latency_us']['p50']} us")
    extras.append(f['latency_us']['p50'] - l['latency_us']['p50'])
    grams.append(int(open(os.path.join(out, f"forwarded-{r}-datagrams.txt")).read())
                 / (f['throughput_rps'] * dur))
extras.sort()
lines.append(f"extra p50 over {rounds} rounds: median {extras[len(extras) // 2]} us, "
             f"min {extras[0]} us, max {extras[-1]} us; "
             f"UDP datagrams per forwarded request (both ways) {min(grams):.2f}-{max(grams):.2f}")
single = load("single.json")["throughput_rps"]
spread = sum(load(f"spread-{n}.json")["throughput_rps"] for n in "abc")
onefn = sum(load(f"onefn-{n}.json")["throughput_rps"] for n in "abc")
errs = sum(load(f"{p}-{n}.json")["requests"] - load(f"{p}-{n}.json")["ok"] for p in ("spread", "onefn") for n in "abc")
lines.append(f"throughput: single node {single:.0f} req/s; three nodes, own functions {spread:.0f} req/s "
             f"({spread / single:.2f}x); three nodes, one function owned by b {onefn:.0f} req/s ({onefn / single:.2f}x); "
             f"errors {errs}")
# Node CPU per request over the measured window: what each configuration costs, whatever
# the cores it had. A projection, not a measurement, of 3 nodes on 3 machines of this size:
# 3 x single-node throughput x (single-node CPU per request / cluster CPU per request).
def cpu_us(prefix, rps):
    ticks = int(open(os.path.join(out, f"{prefix}-cpu-ticks.txt")).read())
    return ticks * 1e6 / tck / (rps * dur)
c1, cs, co = cpu_us("single", single), cpu_us("spread", spread), cpu_us("onefn", onefn)
lines.append(f"node CPU per request: single node {c1:.0f} us; three nodes, own functions {cs:.0f} us; "
             f"one function owned by b {co:.0f} us; projected 3-machine throughput "
             f"{3 * c1 / cs:.2f}x / {3 * c1 / co:.2f}x one node")
ms = sorted(int(x) for x in open(os.path.join(out, "replication-ms.txt")).read().split())
lines.append(f"replication of 1 MiB: median {ms[len(ms)//2]} ms, max {ms[-1]} ms over {len(ms)} deploys")
open(os.path.join(out, "summary.txt"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
