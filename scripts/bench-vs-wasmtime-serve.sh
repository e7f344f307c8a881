#!/usr/bin/env bash
# Tern against `wasmtime serve` on this machine, doing the same work, measured by the same load
# generator in rotated rounds. The figure of record for the hot path.
#
#   wasmtime-serve        wasmtime-cli 48.0.8 (`cargo install --locked`, the serve feature and
#                         what it needs; cached in ~/.cache/tern), `wasmtime serve -S cli` (its
#                         defaults otherwise: it picks the pooling allocator itself), serving
#                         the echo component (functions/components/echo, wasm32-wasip2): 200
#                         with the request body. `-S cli` because Rust's std links
#                         wasi:cli/environment (its panic path reads RUST_BACKTRACE), which the
#                         plain proxy world does not provide; echo never calls it.
#   tern                  a release `tern up` with the product's defaults, the preview-1 `echo`
#                         deployed by tenant `bench` and invoked with that tenant's developer
#                         token (authentication, tenant quotas and admission on the path; the
#                         tenant's quotas set wide enough not to limit the run).
#   tern-explicit-bounds  the same with memory_profile = "explicit-bounds" (no virtual-memory
#                         work per instance, explicit bounds checks: see README "Memory profiles").
# Those two Tern servers are the default; configurations given on the command line replace them:
# NAME=VAR=VALUE[,VAR=VALUE...] sets node environment variables, and the variable MODULE (read by
# this script, not the node) names the .wasm deployed as echo (default functions/dist/echo.wasm),
# e.g. tern-old-echo=MODULE=/tmp/echo-old.wasm, and ROUTE the path the load goes to (default
# /v1/functions/echo/invoke), e.g. the echo component wasmtime serve runs, at its HTTP route:
# tern-component=MODULE=functions/dist/components/echo.wasm,ROUTE=/fn/echo, and BIN the tern
# binary that serves (default: the release build of this tree, made by this run), e.g.
# tern-before=BIN=/tmp/tern-before for a build kept from an earlier commit, to compare two builds
# in the same rounds (the summary names such a binary by its sha256). `NAME=` alone is the
# defaults.
#
# Load: wrk (Debian's package, installed if missing) POSTing a 10-byte body ("hello echo"),
# 10 s after a 2 s warm-up, at 1 connection (1 thread) then 64 connections (2 threads). The load
# generator shares the machine's two cores with the server, as a client on the same host would.
# CPU per request = utime + stime of the server and every process under it over the measured
# 10 s / requests. Each round runs every server once, in an order rotated round by round.
#
# Usage: scripts/bench-vs-wasmtime-serve.sh OUT_DIR ROUNDS [NAME=[VAR=VALUE,...] ...]
# Writes to OUT_DIR: summary.txt (generated from raw/; never edit it by hand), raw/ (wrk's JSON
# of every run, CPU readings, server logs, the node's /metrics) and commands.log (every command,
# with the load average).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/auth-header.sh
source scripts/lib/bench-node.sh
[ $# -ge 2 ] || { echo "usage: $0 OUT_DIR ROUNDS [NAME=[VAR=VALUE,...] ...]" >&2; exit 2; }
out=$1 rounds=$2
shift 2
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
[ $# -gt 0 ] || set -- tern= tern-explicit-bounds=TERN_MEMORY_PROFILE=explicit-bounds
names=(wasmtime-serve) envs=(-)
for spec in "$@"; do
  name=${spec%%=*} assignments=${spec#*=}
  [[ $spec == *=* && $name =~ ^[a-z0-9][a-z0-9-]*$ && $name != wasmtime-serve ]] ||
    { echo "bad configuration: $spec (NAME=[VAR=VALUE,...])" >&2; exit 2; }
  names+=("$name") envs+=("$assignments")
done

wasmtime_version=48.0.8
wasmtime_root=${XDG_CACHE_HOME:-$HOME/.cache}/tern/wasmtime-cli-$wasmtime_version
wasmtime=$wasmtime_root/bin/wasmtime
if [ ! -x "$wasmtime" ]; then
  echo "+ cargo install wasmtime-cli $wasmtime_version into $wasmtime_root (once; several minutes)"
  # What `wasmtime serve` needs (it uses the run command's options and WASIp3's futures): no
  # wast, wizer, debugger, GC, threads or other proposals.
  cargo install wasmtime-cli --version "$wasmtime_version" --locked --root "$wasmtime_root" \
    --no-default-features --features run,serve,component-model-async,cranelift,pooling-allocator,parallel-compilation
fi
if ! command -v wrk >/dev/null; then
  echo "+ apt-get install wrk"
  apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
fi
echo "+ cargo build --release (functions/components: the echo component)"
(cd functions/components && cargo build --release --locked --quiet)
component=functions/components/target/wasm32-wasip2/release/echo.wasm

bench_prepare
tern_addr=127.0.0.1:7935
wasmtime_addr=127.0.0.1:7936
body="hello echo"
duration=10
clk=$(getconf CLK_TCK)
quota_flags=(--quota max_rate_per_s=10000000 --quota rate_burst=10000000
  --quota max_concurrent=1000 --quota max_queued=100000)

server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  cleanup_node
}
trap cleanup EXIT

# wait_answers URL HEADER_FILE: waits up to 30 s for a POST to URL to answer 200 with the body
# echoed.
wait_answers() {
  local url=$1 header=$2 _
  for _ in $(seq 300); do
    [ "$(curl -s -m 1 -H @"$header" --data-binary "$body" "$url" 2>/dev/null)" = "$body" ] && return 0
    sleep 0.1
  done
  echo "$url did not echo within 30 s" >&2
  return 1
}

# load NAME ROUND URL HEADER_FILE PID: warm-up, then 1 and 64 connections against URL, with the
# CPU of PID's process tree over each measured run.
load() {
  local name=$1 r=$2 url=$3 header=$4 pid=$5 c threads before after
  log "WRK_HEADER_FILE=<$name header> wrk -t2 -c64 -d2s -s scripts/lib/wrk-report.lua $url  # warm-up"
  WRK_HEADER_FILE=$header WRK_BODY=$body WRK_OUT=/dev/null \
    wrk -t2 -c64 -d2s -s scripts/lib/wrk-report.lua "$url" >/dev/null
  for c in 1 64; do
    threads=$((c < 2 ? 1 : 2))
    log "WRK_HEADER_FILE=<$name header> wrk -t$threads -c$c -d${duration}s -s scripts/lib/wrk-report.lua $url"
    before=$(cpu_ticks "$pid")
    WRK_HEADER_FILE=$header WRK_BODY=$body WRK_OUT="$out/raw/r$r-$name-c$c.json" \
      wrk -t"$threads" -c"$c" -d"${duration}s" -s scripts/lib/wrk-report.lua "$url" \
      >"$out/raw/r$r-$name-c$c.wrk.txt"
    after=$(cpu_ticks "$pid")
    echo "$((after - before))" >"$out/raw/r$r-$name-c$c.cpu_ticks"
  done
}

one_wasmtime() {
  local r=$1 header="$out/raw/wasmtime-serve.header"
  # No token: wasmtime serve has no authentication. The header keeps wrk's requests alike.
  echo 'X-Bench: 1' >"$header"
  log "$wasmtime serve -S cli --addr $wasmtime_addr $component"
  "$wasmtime" serve -S cli --addr "$wasmtime_addr" "$component" >"$out/raw/r$r-wasmtime-serve-server.log" 2>&1 &
  server=$!
  wait_answers "http://$wasmtime_addr/" "$header"
  load wasmtime-serve "$r" "http://$wasmtime_addr/" "$header" "$server"
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=
}

# one_tern INDEX ROUND: a fresh node in configuration INDEX, echo deployed by tenant bench.
one_tern() {
  local i=$1 r=$2 name=${names[$1]} admin token module=functions/dist/echo.wasm assignment
  local route=/v1/functions/echo/invoke tern=$tern
  local -a assignments=()
  local -a vars=()
  if [ -n "${envs[$i]}" ]; then
    IFS=, read -ra assignments <<<"${envs[$i]}"
    for assignment in "${assignments[@]}"; do
      case $assignment in
        MODULE=*) module=${assignment#MODULE=} ;;
        ROUTE=*) route=${assignment#ROUTE=} ;;
        BIN=*) tern=${assignment#BIN=} ;;
        *) vars+=("$assignment") ;;
      esac
    done
  fi
  [ -f "$module" ] || { echo "$name: no module $module" >&2; exit 1; }
  [ -x "$tern" ] || { echo "$name: no tern binary $tern" >&2; exit 1; }
  echo "$name $(sha256sum "$module" | cut -c1-16) $module" >"$out/raw/r$r-$name-module.txt"
  if [ "$tern" = target/release/tern ]; then
    echo "the release build of the commit above" >"$out/raw/r$r-$name-binary.txt"
  else
    echo "$tern sha256 $(sha256sum "$tern" | cut -c1-16)..., not built by this run" >"$out/raw/r$r-$name-binary.txt"
  fi
  data=$(mktemp -d)
  log "env ${vars[*]} $tern up --data $data --listen $tern_addr --log warn"
  env "${vars[@]}" $tern up --data "$data" --listen "$tern_addr" --log warn >"$out/raw/r$r-$name-node.log" 2>&1 &
  node=$!
  wait_healthy "$tern_addr"
  admin=$(cat "$data/admin.token")
  # Tokens travel in TERN_TOKEN and header files, never on a command line.
  log "TERN_TOKEN=<admin token> $tern tenant create bench ${quota_flags[*]} --server $tern_addr"
  TERN_TOKEN=$admin $tern tenant create bench "${quota_flags[@]}" --server "$tern_addr" --log warn >/dev/null
  (
    umask 077
    TERN_TOKEN=$admin $tern token create --role developer --tenant bench --server "$tern_addr" --log warn |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' >"$data/bench.token"
  )
  token=$(cat "$data/bench.token")
  log "TERN_TOKEN=<developer token of bench> $tern deploy echo $module --server $tern_addr"
  TERN_TOKEN=$token $tern deploy echo "$module" --server "$tern_addr" --log warn >/dev/null
  auth_header_file "$data/bench.token" "$data/bench.header" >/dev/null
  wait_answers "http://$tern_addr$route" "$data/bench.header"
  load "$name" "$r" "http://$tern_addr$route" "$data/bench.header" "$node"
  # What the node says it ran (isolation mode, memory profile), for the summary.
  curl -sf -m 2 -H @"$(auth_header_file "$data/admin.token" "$data/admin.header")" \
    "http://$tern_addr/metrics" >"$out/raw/r$r-$name-metrics.txt" || true
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
  for i in "${order[@]}"; do echo "${names[$i]}"; done >"$out/raw/r$r-order.txt"
  for i in "${order[@]}"; do
    if [ "$i" = 0 ]; then one_wasmtime "$r"; else one_tern "$i" "$r"; fi
  done
  echo "round $r done ($(paste -sd' ' "$out/raw/r$r-order.txt"))"
done

python3 - "$out" "$rounds" "$commit" "$dirty" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$(nproc)" "$clk" "$duration" "$("$wasmtime" --version)" "$(wrk --version 2>&1 | head -1)" \
  "${names[@]}" -- "${envs[@]}" <<'PY' | tee "$out/summary.txt"
import json, os, statistics, sys
from datetime import datetime, timezone
out, rounds, commit, dirty, load_start, load_end, nproc, clk, duration, wasmtime, wrk = sys.argv[1:12]
rest = sys.argv[12:]
sep = rest.index("--")
names, envs = rest[:sep], rest[sep + 1:]
rounds, clk, duration = int(rounds), int(clk), int(duration)
base = names[0]
def raw(r, name, c, ext):
    return os.path.join(out, "raw", f"r{r}-{name}-c{c}.{ext}")
def run(r, name, c):
    d = json.load(open(raw(r, name, c, "json")))
    d["errors_total"] = sum(d["errors"].values())
    d["rps"] = d["requests"] / d["seconds"]
    d["cpu_us"] = int(open(raw(r, name, c, "cpu_ticks")).read()) / clk * 1e6 / max(d["requests"], 1)
    return d
def in_force(name, env):
    if name == base:
        return wasmtime + ", serve -S cli, otherwise its defaults"
    module = open(os.path.join(out, "raw", f"r{rounds}-{name}-module.txt")).read().split()
    binary = open(os.path.join(out, "raw", f"r{rounds}-{name}-binary.txt")).read().strip()
    asked = (f"asked for: {env.replace(',', ' ') or 'defaults'}; binary: {binary}; "
             f"echo module sha256 {module[1]}...; ")
    path = os.path.join(out, "raw", f"r{rounds}-{name}-metrics.txt")
    keep = ("tern_isolation_mode{", "tern_memory_profile{")
    try:
        lines = [l.strip() for l in open(path) if l.startswith(keep)]
    except OSError:
        return asked + "node reported: unknown (no /metrics)"
    return asked + "node reported: " + (", ".join(lines) or "unknown")
print("# Tern and wasmtime serve side by side, same echo work, same load generator, rotated rounds.")
print("# Generated by scripts/bench-vs-wasmtime-serve.sh from raw/; every command is in commands.log.")
print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
print(f"commit: {commit}" + (f" plus uncommitted changes to {dirty}" if dirty != "0" else " (clean tree)"))
print(f"machine: nproc {nproc}; load average at start {load_start}, at end {load_end}")
print(f"load: {wrk}, POST of a 10-byte body, {duration} s per run after a 2 s warm-up, "
      "1 connection (1 thread) and 64 connections (2 threads), on the same two cores as the server")
print("CPU per request: utime+stime of the server's process tree over the measured run / requests")
for name, env in zip(names, envs):
    print(f"server {name}: {in_force(name, env)}")
errors = 0
ratios = {n: {"rps": [], "cpu": [], "p50_1": [], "p99_1": [], "p99_64": []} for n in names[1:]}
for r in range(1, rounds + 1):
    order = open(os.path.join(out, "raw", f"r{r}-order.txt")).read().split()
    row, line = {}, []
    for name in names:
        c1, c64 = run(r, name, 1), run(r, name, 64)
        errors += c1["errors_total"] + c64["errors_total"]
        row[name] = (c1, c64)
        line.append(f"{name}: 64 conn {c64['rps']:.0f} req/s p50 {c64['latency_us']['p50']} "
                    f"p99 {c64['latency_us']['p99']} p99.9 {c64['latency_us']['p999']} us "
                    f"cpu {c64['cpu_us']:.1f} us/req; 1 conn {c1['rps']:.0f} req/s "
                    f"p50 {c1['latency_us']['p50']} p99 {c1['latency_us']['p99']} "
                    f"p99.9 {c1['latency_us']['p999']} us cpu {c1['cpu_us']:.1f} us/req")
    b1, b64 = row[base]
    for n in names[1:]:
        c1, c64 = row[n]
        x = ratios[n]
        x["rps"].append(c64["rps"] / b64["rps"])
        x["cpu"].append(c64["cpu_us"] / b64["cpu_us"])
        x["p50_1"].append(c1["latency_us"]["p50"] / b1["latency_us"]["p50"])
        x["p99_1"].append(c1["latency_us"]["p99"] / b1["latency_us"]["p99"])
        x["p99_64"].append(c64["latency_us"]["p99"] / b64["latency_us"]["p99"])
    print(f"round {r} ({', '.join(order)}): " + "; ".join(line))
print(f"errors (wrk: connect, read, write, non-2xx status, timeout) over all runs: {errors}")
for n in names[1:]:
    x = ratios[n]
    med = lambda k: statistics.median(x[k])
    rng = lambda k: f"{min(x[k]):.3f}-{max(x[k]):.3f}"
    print(f"{n}/{base} at 64 connections: req/s median {med('rps'):.3f} (per round {rng('rps')}), "
          f"CPU per request median {med('cpu'):.3f} (per round {rng('cpu')}), "
          f"p99 median {med('p99_64'):.3f}")
    print(f"{n}/{base} at 1 connection: p50 median {med('p50_1'):.3f} (per round {rng('p50_1')}), "
          f"p99 median {med('p99_1'):.3f} (per round {rng('p99_1')})")
PY
