#!/usr/bin/env bash
# Forwarded component calls, side by side: for each build, three `tern` processes on loopback
# (all builds' clusters up at once), the echo component (functions/dist/components/echo.wasm)
# deployed under twelve names, called at node c's `/fn/` route with wrk (1 connection, POST of
# a 10-byte body, scripts/lib/wrk-report.lua): once on a name c runs itself (local), once on a
# name b runs (forwarded over the mesh). Rounds alternate the builds, and local with forwarded.
#
# Usage: scripts/bench-forwarded-component.sh OUT_DIR ROUNDS NAME=BIN [NAME=BIN ...]
#   e.g. scripts/bench-forwarded-component.sh bench/reports/cluster/DATE-components 5 \
#          tern=target/release/tern tern-old=/tmp/tern-old
# Writes OUT_DIR/raw/ (wrk's JSON per run) and OUT_DIR/summary.txt, generated from raw/.
# With `perf` on the machine (Debian's linux-perf), each measured run also counts the context
# switches and futex calls of nodes b (which runs a forwarded call) and c (the entry node)
# with `perf stat -p`, and the summary gives them per request (BENCH_PERF=0 leaves them out).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR ROUNDS NAME=BIN [NAME=BIN ...]}
rounds=${2:?usage: $0 OUT_DIR ROUNDS NAME=BIN [NAME=BIN ...]}
shift 2
[ $# -ge 1 ] || { echo "name at least one NAME=BIN" >&2; exit 2; }
duration=${BENCH_DURATION:-10}
perf_on=${BENCH_PERF:-1}
command -v perf >/dev/null || perf_on=0
mkdir -p "$out/raw"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bash scripts/build-functions.sh >/dev/null
command -v wrk >/dev/null || {
  apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
}
source scripts/lib/auth-header.sh
export TERN_AUTH=tokens
work=$(mktemp -d)
pids=()
cleanup() {
  # Quietly: bash reports each killed node otherwise.
  exec 2>/dev/null
  for p in "${pids[@]}"; do kill -9 "$p" || true; done
  wait || true
  rm -rf "$work"
}
trap cleanup EXIT
log() { echo "+ $*" | tee -a "$out/raw/commands.txt"; }
: >"$out/raw/commands.txt"
body="hello echo"

wait_http() {
  for _ in $(seq 300); do curl -sf "http://$1/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "node at $1 did not start" >&2
  return 1
}

names=()
declare -A local_url forwarded_url header_of pid_b pid_c
k=0
for spec in "$@"; do
  name=${spec%%=*}
  bin=${spec#*=}
  names+=("$name")
  dir="$work/$name"
  mkdir -p "$dir"
  "$bin" cluster init --out "$dir/pki" --nodes a,b,c >/dev/null
  http=() mesh=()
  for i in 0 1 2; do
    http+=("127.0.0.1:$((7940 + 10 * k + i))")
    mesh+=("127.0.0.1:$((7945 + 10 * k + i))")
  done
  nodes=(a b c)
  for i in 0 1 2; do
    peers=()
    for j in 0 1 2; do
      [ "$i" = "$j" ] || peers+=(--peer "${nodes[$j]}=${mesh[$j]}")
    done
    log "$bin up --node-name ${nodes[$i]} --listen ${http[$i]} --cluster-listen ${mesh[$i]} ${peers[*]} --log warn"
    TERN_EXAMPLES='[]' "$bin" up --node-name "${nodes[$i]}" --listen "${http[$i]}" \
      --data "$dir/${nodes[$i]}" --cluster-dir "$dir/pki" --cluster-listen "${mesh[$i]}" \
      "${peers[@]}" --log warn >"$dir/${nodes[$i]}.log" 2>&1 &
    pids+=($!)
  done
  pid_b[$name]=${pids[-2]}
  pid_c[$name]=${pids[-1]}
  for h in "${http[@]}"; do wait_http "$h"; done
  header_a=$(auth_header_file "$dir/a/admin.token" "$dir/a.header")
  header_c=$(auth_header_file "$dir/c/admin.token" "$dir/c.header")
  for _ in $(seq 300); do
    [ "$(curl -sf -H @"$header_c" "http://${http[2]}/v1/cluster" | grep -o '"state":"up"' | wc -l)" = 2 ] && break
    sleep 0.1
  done
  for f in $(seq 0 11); do
    TERN_TOKEN=$(cat "$dir/a/admin.token") "$bin" deploy "echo-$f" functions/dist/components/echo.wasm \
      --server "${http[0]}" >/dev/null
  done
  # Where each name runs, as c places it once replicated and warm.
  local_name='' forwarded_name=''
  for _ in $(seq 100); do
    for f in $(seq 0 11); do
      node=$(curl -s -D - -o /dev/null -H @"$header_c" --data-binary "$body" "http://${http[2]}/fn/echo-$f" \
        | tr -d '\r' | awk -F': ' 'tolower($1)=="x-tern-node"{print $2}')
      [ "$node" = c ] && [ -z "$local_name" ] && local_name=echo-$f
      [ "$node" = b ] && [ -z "$forwarded_name" ] && forwarded_name=echo-$f
    done
    [ -n "$local_name" ] && [ -n "$forwarded_name" ] && break
    sleep 0.2
  done
  [ -n "$local_name" ] && [ -n "$forwarded_name" ] || { echo "$name: no name placed on c and on b" >&2; exit 1; }
  echo "$name: local $local_name on c, forwarded $forwarded_name on b"
  local_url[$name]="http://${http[2]}/fn/$local_name"
  forwarded_url[$name]="http://${http[2]}/fn/$forwarded_name"
  header_of[$name]=$header_c
  k=$((k + 1))
done

run() {
  local name=$1 r=$2 where=$3 url=$4
  log "WRK_HEADER_FILE=<$name c header> wrk -t1 -c1 -d${duration}s -s scripts/lib/wrk-report.lua $url  # $where"
  WRK_HEADER_FILE=${header_of[$name]} WRK_BODY=$body WRK_OUT=/dev/null \
    wrk -t1 -c1 -d2s -s scripts/lib/wrk-report.lua "$url" >/dev/null
  local counting=()
  if [ "$perf_on" = 1 ]; then
    for node in b c; do
      local pid
      if [ $node = b ]; then pid=${pid_b[$name]}; else pid=${pid_c[$name]}; fi
      perf stat -x, -e context-switches,syscalls:sys_enter_futex -p "$pid" \
        -o "$out/raw/r$r-$name-$where.perf-$node.csv" &
      counting+=($!)
    done
  fi
  WRK_HEADER_FILE=${header_of[$name]} WRK_BODY=$body WRK_OUT="$out/raw/r$r-$name-$where.json" \
    wrk -t1 -c1 -d"${duration}s" -s scripts/lib/wrk-report.lua "$url" >"$out/raw/r$r-$name-$where.wrk.txt"
  for p in "${counting[@]}"; do kill -INT "$p"; wait "$p" || true; done
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$rounds"); do
  order=("${names[@]}")
  # Alternate which build goes first, and which of local and forwarded.
  if [ $((r % 2)) = 0 ]; then order=($(printf '%s\n' "${names[@]}" | tac)); fi
  for name in "${order[@]}"; do
    if [ $((r % 2)) = 1 ]; then
      run "$name" "$r" local "${local_url[$name]}"
      run "$name" "$r" forwarded "${forwarded_url[$name]}"
    else
      run "$name" "$r" forwarded "${forwarded_url[$name]}"
      run "$name" "$r" local "${local_url[$name]}"
    fi
  done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$out" "$rounds" "$duration" "$(git rev-parse --short HEAD)" "$load_start" "$load_end" "${names[@]}" \
  >"$out/summary.txt" <<'EOF'
import json, statistics, sys
out, rounds, duration, commit, load_start, load_end, *names = sys.argv[1:]
rounds = int(rounds)
def run(r, name, where):
    return json.load(open(f"{out}/raw/r{r}-{name}-{where}.json"))
print("Forwarded component calls: the echo component at node c's /fn/ route, 1 connection (wrk,")
print(f"POST of a 10-byte body, {duration} s per run after a 2 s warm-up), on a name c runs itself")
print("(local) and on one b runs (forwarded over the QUIC mesh). Three node processes per build on")
print(f"this machine (loopback), every build's cluster up at once; {rounds} rounds alternating builds and")
print(f"local/forwarded. Script: scripts/bench-forwarded-component.sh (tree at {commit}).")
print(f"load average at start {load_start}, at end {load_end}")
print()
print("per round, p50 / p99 in µs (local, forwarded, forwarded minus local p50):")
errors = 0
for r in range(1, rounds + 1):
    cells = []
    for name in names:
        l, f = run(r, name, "local"), run(r, name, "forwarded")
        errors += sum(l["errors"].values()) + sum(f["errors"].values())
        cells.append(f"{name}: {l['latency_us']['p50']}/{l['latency_us']['p99']}, "
                     f"{f['latency_us']['p50']}/{f['latency_us']['p99']}, "
                     f"+{f['latency_us']['p50'] - l['latency_us']['p50']}")
    print(f"  round {r}: " + "; ".join(cells))
print()
print("medians over the rounds:")
med = {}
for name in names:
    lp50 = statistics.median(run(r, name, "local")["latency_us"]["p50"] for r in range(1, rounds + 1))
    fp50 = statistics.median(run(r, name, "forwarded")["latency_us"]["p50"] for r in range(1, rounds + 1))
    lp99 = statistics.median(run(r, name, "local")["latency_us"]["p99"] for r in range(1, rounds + 1))
    fp99 = statistics.median(run(r, name, "forwarded")["latency_us"]["p99"] for r in range(1, rounds + 1))
    extra = statistics.median(run(r, name, "forwarded")["latency_us"]["p50"]
                              - run(r, name, "local")["latency_us"]["p50"] for r in range(1, rounds + 1))
    med[name] = (lp50, fp50, lp99, fp99, extra)
    print(f"  {name}: local p50 {lp50} µs, p99 {lp99} µs; forwarded p50 {fp50} µs, p99 {fp99} µs; "
          f"forwarding adds {extra} µs at p50")
if len(names) > 1:
    base = names[0]
    print()
    for name in names[1:]:
        print(f"  {base} / {name}: forwarded p50 {med[base][1] / med[name][1]:.2f}x, "
              f"p99 {med[base][3] / med[name][3]:.2f}x; local p50 {med[base][0] / med[name][0]:.2f}x")
import os
def per_request(r, name, where, node):
    # perf stat -x, lines: value,unit,event,...; counted while the measured run ran.
    path = f"{out}/raw/r{r}-{name}-{where}.perf-{node}.csv"
    if not os.path.exists(path):
        return None
    counts = {}
    for line in open(path):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0])
    requests = run(r, name, where)["requests"]
    return {e: v / requests for e, v in counts.items()} if requests else None
if os.path.exists(f"{out}/raw/r1-{names[0]}-local.perf-c.csv"):
    print()
    print("per request, median over the rounds (perf stat -p on the node's process while wrk ran;")
    print("context switches and futex calls, all threads; b runs the forwarded calls, c is the entry):")
    for name in names:
        cells = []
        for where in ("local", "forwarded"):
            for node in ("c", "b"):
                got = [per_request(r, name, where, node) for r in range(1, rounds + 1)]
                got = [g for g in got if g]
                if not got:
                    continue
                cs = statistics.median(g.get("context-switches", 0) for g in got)
                fx = statistics.median(g.get("syscalls:sys_enter_futex", 0) for g in got)
                cells.append(f"{where} on {node}: {cs:.2f} switches, {fx:.2f} futex")
        print(f"  {name}: " + "; ".join(cells))
print()
print(f"errors (wrk: connect, read, write, non-2xx status, timeout) over all runs: {errors}")
EOF
cat "$out/summary.txt"
