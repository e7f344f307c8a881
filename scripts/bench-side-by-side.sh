#!/usr/bin/env bash
# Side by side in one session: the current tree ("new", built from HEAD plus any uncommitted
# changes, which the report records) against an older revision ("old"), on this machine, with
# the two binaries alternated round by round (old,new / new,old / old,new / ...):
#   1. one node, echo over HTTP, load generator on the same machine: a fresh node per binary
#      per round, `tern bench --connections 1` (p50) then `--connections 64` (req/s, p99),
#      each `--duration 6s --warmup 2s` (as in bench/reports/single-node/fewer-wakes-side-by-side.txt),
#      with bearer tokens on (`TERN_AUTH=tokens`, the default since tokens became one);
#   2. forwarded-call overhead on a 3-node loopback cluster (forwarded p50 minus local p50,
#      1 connection through node c): `TERN_BIN=<binary> BENCH_QUICK=1 BENCH_ROUNDS=$CLUSTER_ROUNDS
#      BENCH_DURATION=6s scripts/bench-cluster.sh DIR` (this tree's script for both binaries).
# Each binary runs its own `tern bench` as the load generator.
#
# Usage: scripts/bench-side-by-side.sh OLD_REV [ROUNDS]     (ROUNDS default 4)
#   OUT_DIR        report folder (default bench/reports/architecture-pass)
#   CLUSTER_ROUNDS local/forwarded pairs per cluster run (default 2)
#   MAX_WAIT_LOAD  seconds to wait, after the builds, for the 1-minute load average to fall
#                  below 1.5 before measuring (default 180; the run starts anyway after it)
#   OLD_BIN        a release `tern` already built from OLD_REV: used instead of building one
#                  (build.txt says so and gives its sha256; the script cannot check what it was
#                  built from)
# Writes to OUT_DIR: summary.txt (generated), commands.log (every command line, with the load
# average before each measurement), build.txt, machine-start.txt / machine-end.txt, and raw/
# (the JSON and text output of every bench run). The old revision is built in a git worktree
# under /tmp (removed on exit) with its own target dir (/tmp/tern-old-target, kept so a rerun
# does not rebuild everything); the binaries are copied to /tmp/tern-old-bin and /tmp/tern-new-bin.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/auth-header.sh
root=$PWD

usage() { echo "usage: $0 OLD_REV [ROUNDS]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
old_commit=$(git rev-parse --verify "$1^{commit}") || usage
rounds=${2:-4}
[[ $rounds =~ ^[1-9][0-9]*$ ]] || usage
out=${OUT_DIR:-bench/reports/architecture-pass}
cluster_rounds=${CLUSTER_ROUNDS:-2}
max_wait_load=${MAX_WAIT_LOAD:-180}

worktree=/tmp/tern-old
old_target=/tmp/tern-old-target
old_bin=/tmp/tern-old-bin
new_bin=/tmp/tern-new-bin
single_addr=127.0.0.1:7931 # not bench-single-node.sh's 7899, so the two can't collide
dur=6s
warmup=2s

# One run at a time: runs share the worktree, the binaries' paths, the ports and the CPU.
exec 9>/tmp/tern-side-by-side.lock
flock -n 9 || { echo "another bench-side-by-side.sh is running (lock /tmp/tern-side-by-side.lock)" >&2; exit 1; }
rm -rf "$out/raw" "$out/commands.log"
mkdir -p "$out/raw"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
t_start=$(date +%s)

node_pid=
node_data=
cluster_pid=
own_worktree=0
logs=$(mktemp -d) # cargo output of the two builds
cleanup() {
  local rc=$?
  # timeout passes the signal on to its process group: bench-cluster.sh and its three nodes.
  [ -n "$cluster_pid" ] && kill "$cluster_pid" 2>/dev/null || true
  if [ -n "$node_pid" ]; then
    kill "$node_pid" 2>/dev/null || true
    sleep 0.5
    kill -9 "$node_pid" 2>/dev/null || true
  fi
  [ -n "$node_data" ] && rm -rf "$node_data"
  rm -rf "$logs"
  if [ "$own_worktree" = 1 ]; then
    git -C "$root" worktree remove --force "$worktree" 2>>"$out/commands.log" \
      || git -C "$root" worktree remove --force --force "$worktree" 2>>"$out/commands.log" || true
    git -C "$root" worktree prune 2>>"$out/commands.log" || true
    [ -e "$worktree" ] && echo "could not remove the worktree $worktree" | tee -a "$out/commands.log" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "$*" | tee -a "$out/commands.log"; }
# Logs a command line with the time, the load average and how many rustc processes are running.
logcmd() {
  printf '[%s load %s, rustc %s] %s\n' "$(date -u +%H:%M:%S)" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(pgrep -c -x rustc || true)" "$*" >>"$out/commands.log"
}
# Logs a command line, then runs it.
run() {
  logcmd "$@"
  "$@"
}
machine() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "nproc: $(nproc)"
  echo "cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  echo "memory: $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "loadavg: $(cat /proc/loadavg)"
  echo "busiest processes (pid %cpu command):"
  ps -eo pid,pcpu,comm --sort=-pcpu | sed -n '2,9p'
}

log "# bench-side-by-side.sh $*  (started $(date -u '+%Y-%m-%d %H:%M:%S UTC'))"

# ---- builds ---------------------------------------------------------------------------------
if [ -n "${OLD_BIN:-}" ]; then
  [ -x "$OLD_BIN" ] || { echo "OLD_BIN=$OLD_BIN is not an executable" >&2; exit 1; }
  log "# the old binary is OLD_BIN=$OLD_BIN, given as built from $old_commit: not built here"
  echo "(not built: OLD_BIN=$OLD_BIN)" >"$logs/old.log"
  t_old_build=0
  run cp "$OLD_BIN" "$old_bin"
elif [ -e "$worktree" ]; then
  # Reuse a worktree left at the right commit; anything else is not ours to remove.
  [ "$(git -C "$worktree" rev-parse HEAD 2>/dev/null)" = "$old_commit" ] \
    || { echo "$worktree exists and is not a worktree at $old_commit; remove it first" >&2; exit 1; }
  log "# reusing the worktree $worktree at $old_commit"
  own_worktree=1
else
  own_worktree=1
  run git worktree add --detach "$worktree" "$old_commit"
fi

if [ -z "${OLD_BIN:-}" ]; then
  t0=$(date +%s)
  run bash -c "cd $worktree && CARGO_TARGET_DIR=$old_target timeout 5400 cargo build --release --locked -p tern-node" \
    >"$logs/old.log" 2>&1 \
    || { tail -n 30 "$logs/old.log" >&2; exit 1; }
  t_old_build=$(($(date +%s) - t0))
  run cp "$old_target/release/tern" "$old_bin"
fi

new_commit=$(git rev-parse HEAD)
# (bench/reports/ and this script cannot change the binary: left out.)
new_status=$(git --no-optional-locks status --short --untracked-files=all -- . ':!scripts/bench-side-by-side.sh' \
  ':!bench/reports' ":!$out" | head -n 40)
t0=$(date +%s)
run timeout 5400 cargo build --release --locked -p tern-node \
  >"$logs/new.log" 2>&1 \
  || { tail -n 30 "$logs/new.log" >&2; exit 1; }
t_new_build=$(($(date +%s) - t0))
run cp target/release/tern "$new_bin"
new_commit_after=$(git rev-parse HEAD)
# Other people may commit or edit while this builds: say what the new binary was built from.
tree_note="the tree was clean at build time"
[ -n "$(git --no-optional-locks status --short --untracked-files=no -- . ':!bench/reports' ':!scripts/bench-side-by-side.sh')" ] \
  || [ -n "$new_status" ] \
  && tree_note="uncommitted changes in the tree at build time (see build.txt)"
[ "$new_commit" = "$new_commit_after" ] \
  || tree_note="$tree_note; HEAD moved during the build, to $new_commit_after"
run timeout 900 bash scripts/build-functions.sh >"$out/raw/build-functions.txt" 2>&1

{
  echo "old: $old_commit ($(git log -1 --format=%s "$old_commit" | cut -c1-100))"
  echo "new: $new_commit ($(git log -1 --format=%s "$new_commit" | cut -c1-100)); HEAD after the build: $new_commit_after"
  echo "new tree, uncommitted changes at build time (git status --short):"
  if [ -n "$new_status" ]; then echo "$new_status" | sed 's/^/  /'; else echo "  (none)"; fi
  echo "load generator source (tern-bench crate, bench/src) changed between the two: $(git diff --quiet "$old_commit" HEAD -- bench/src && echo no || echo yes)"
  if [ -n "${OLD_BIN:-}" ]; then
    echo "old build: none; OLD_BIN=$OLD_BIN, given as a release build of $old_commit (not checked)"
  else
    echo "old build: cd $worktree && CARGO_TARGET_DIR=$old_target cargo build --release --locked -p tern-node: ${t_old_build} s"
  fi
  tail -n 1 "$logs/old.log" | sed 's/^ */  /'
  echo "new build: cargo build --release --locked -p tern-node: ${t_new_build} s"
  tail -n 1 "$logs/new.log" | sed 's/^ */  /'
  echo "binaries (sha256):"
  sha256sum "$old_bin" "$new_bin" | sed 's/^/  /'
  echo "guest: functions/dist/echo.wasm $(sha256sum functions/dist/echo.wasm | cut -c1-16) (this tree's, for both)"
} >"$out/build.txt"
cat "$out/build.txt"

# Binaries are built: no more cargo from here on. Let the builds' load decay a little.
waited=0
while awk '{exit !($1 >= 1.5)}' /proc/loadavg && [ "$waited" -lt "$max_wait_load" ]; do
  sleep 10
  waited=$((waited + 10))
done
machine >"$out/machine-start.txt"
echo "waited ${waited} s after the builds for the 1-minute load average to fall below 1.5" >>"$out/machine-start.txt"
cat "$out/machine-start.txt"
t_measure=$(date +%s)

# ---- measurements ---------------------------------------------------------------------------
wait_http() {
  local i
  for i in $(seq 300); do curl -sf -m 1 "http://$1/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "node at $1 did not start" >&2
  return 1
}
port_free() { ! ss -Htunl | awk '{print $5}' | grep -qE ":$1\$"; }
wait_ports_free() {
  local p i
  for p in "$@"; do
    for i in $(seq 60); do port_free "$p" && break; sleep 1; done
    port_free "$p" || { echo "port $p is in use" >&2; return 1; }
  done
}

# single NAME ROUND: one fresh node, echo at 1 then 64 connections.
single() {
  local name=$1 r=$2 bin=/tmp/tern-$1-bin c base
  wait_ports_free "${single_addr##*:}"
  node_data=$(mktemp -d)
  log "== round $r $name: single node"
  # Bearer tokens on, as by default (explicitly, so both binaries run the same way; one from
  # before tokens ignores the variable, writes no token and needs none).
  logcmd env TERN_AUTH=tokens "$bin" up --data "$node_data" --listen "$single_addr" --log warn
  TERN_AUTH=tokens "$bin" up --data "$node_data" --listen "$single_addr" --log warn \
    >"$out/raw/r$r-$name-single-node.log" 2>&1 &
  node_pid=$!
  wait_http "$single_addr"
  local token header
  token=$(cat "$node_data/admin.token" 2>/dev/null || true)
  header=$(auth_header_file "$node_data/admin.token" "$node_data/auth.header")
  for _ in $(seq 100); do
    [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' -H @"$header" -X POST "http://$single_addr/v1/functions/echo/invoke" -d hi)" = 200 ] && break
    sleep 0.1
  done
  for c in 1 64; do
    base=$out/raw/r$r-$name-single-c$c
    TERN_TOKEN=$token run timeout 120 "$bin" bench --server "$single_addr" --function echo --connections "$c" \
      --duration "$dur" --warmup "$warmup" --no-progress --json "$base.json" >"$base.txt" 2>&1
  done
  kill "$node_pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
  node_pid=
  rm -rf "$node_data"
  node_data=
  python3 -c 'import json,sys
a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2]))
print("  1 conn p50 %d us; 64 conn %.0f req/s p99 %d us" % (a["latency_us"]["p50"], b["throughput_rps"], b["latency_us"]["p99"]))' \
    "$out/raw/r$r-$name-single-c1.json" "$out/raw/r$r-$name-single-c64.json" | tee -a "$out/commands.log"
}

# cluster NAME ROUND: scripts/bench-cluster.sh, forwarding part only, with this binary.
cluster() {
  local name=$1 r=$2 dir=$out/raw/r$r-$name-cluster
  wait_ports_free 7911 7912 7913 7921 7922 7923
  mkdir -p "$dir"
  log "== round $r $name: cluster forwarding"
  # timeout signals its whole process group, so the script's three nodes go too.
  local cmd=(timeout -k 10 600 env TERN_BIN="/tmp/tern-$name-bin" BENCH_QUICK=1
    BENCH_ROUNDS="$cluster_rounds" BENCH_DURATION="$dur" bash scripts/bench-cluster.sh "$dir")
  logcmd "${cmd[@]}"
  "${cmd[@]}" >"$dir/stdout.txt" 2>&1 &
  cluster_pid=$!
  wait "$cluster_pid" || { cluster_pid=; cat "$dir/stdout.txt" >&2; return 1; }
  cluster_pid=
  grep -E '^(owners|round)' "$dir/stdout.txt" | sed 's/^/  /' | tee -a "$out/commands.log"
}

for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order=(old new); else order=(new old); fi
  for name in "${order[@]}"; do single "$name" "$r"; done
  for name in "${order[@]}"; do cluster "$name" "$r"; done
done

t_end=$(date +%s)
machine >"$out/machine-end.txt"

# ---- summary --------------------------------------------------------------------------------
python3 - "$out" "$rounds" "$cluster_rounds" "$old_commit" "$new_commit" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$t_old_build" "$t_new_build" "$((t_end - t_measure))" \
  "$((t_end - t_start))" "$waited" "$dur $warmup" "$tree_note" <<'EOF'
import json, os, statistics, sys
(out, rounds, crounds, old_c, new_c, load_end, b_old, b_new, t_meas, t_total, waited,
 durs, tree_note) = sys.argv[1:]
rounds, crounds = int(rounds), int(crounds)
raw = os.path.join(out, "raw")
def load(p): return json.load(open(os.path.join(raw, p)))
med = statistics.median
def fmt(x): return f"{x:.1f}".rstrip("0").rstrip(".")

start = open(os.path.join(out, "machine-start.txt")).read()
load_start = next(l for l in start.splitlines() if l.startswith("loadavg:")).split()[1:4]
nproc = next(l for l in start.splitlines() if l.startswith("nproc:")).split()[1]
date = next(l for l in start.splitlines() if l.startswith("date:"))[6:]

data = {n: {"rps": [], "p99": [], "p50": [], "extra": [], "extra_run": [], "local": [], "fwd": []}
        for n in ("old", "new")}
errors = 0
lines = []
# commands.log: "[HH:MM:SS load L1 L5 L15, rustc N] command" before every measurement.
loads, rustcs = [], []
for l in open(os.path.join(out, "commands.log")):
    if l.startswith("[") and (" bench --server" in l or "bench-cluster.sh" in l):
        head_, _ = l[1:].split("]", 1)
        loads.append(float(head_.split()[2]))
        rustcs.append(int(head_.split("rustc")[1]))
for r in range(1, rounds + 1):
    order = ("old", "new") if r % 2 else ("new", "old")
    lines.append(f"round {r} (order {', '.join(order)})")
    for n in order:
        c1, c64 = load(f"r{r}-{n}-single-c1.json"), load(f"r{r}-{n}-single-c64.json")
        errors += c1["requests"] - c1["ok"] + c64["requests"] - c64["ok"]
        d = data[n]
        d["p50"].append(c1["latency_us"]["p50"])
        d["rps"].append(c64["throughput_rps"])
        d["p99"].append(c64["latency_us"]["p99"])
        lines.append(f"  {n} single node: 1 conn p50 {c1['latency_us']['p50']} us; "
                     f"64 conn {c64['throughput_rps']:.0f} req/s, p99 {c64['latency_us']['p99']} us")
    for n in order:
        d = data[n]
        ex = []
        parts = []
        for k in range(1, crounds + 1):
            l = load(f"r{r}-{n}-cluster/local-{k}.json")
            f = load(f"r{r}-{n}-cluster/forwarded-{k}.json")
            errors += l["requests"] - l["ok"] + f["requests"] - f["ok"]
            lp, fp = l["latency_us"]["p50"], f["latency_us"]["p50"]
            d["local"].append(lp); d["fwd"].append(fp); d["extra"].append(fp - lp); ex.append(fp - lp)
            parts.append(f"local {lp} / forwarded {fp} = +{fp - lp}")
        d["extra_run"].append(med(ex))
        lines.append(f"  {n} cluster, p50 us: " + "; ".join(parts) + f" (run median +{fmt(med(ex))})")

def ratio(key):
    return med(data["new"][key]) / med(data["old"][key])
def paired(key):
    rs = [b / a for a, b in zip(data["old"][key], data["new"][key])]
    return f"{min(rs):.2f}-{max(rs):.2f}"

head = [
    "# Side by side: old vs new tern, alternated rounds, one session on one machine.",
    "# Generated by scripts/bench-side-by-side.sh; raw output in raw/, command lines in commands.log.",
    f"date: {date}",
    f"old: {old_c}",
    f"new: {new_c} (this tree; {tree_note})",
    f"machine: nproc {nproc}; load average at start {' '.join(load_start)}, at end {load_end}"
    + ("  ** 1-minute load average above 1.5 at the start **" if float(load_start[0]) > 1.5 else ""),
    f"waited {waited} s after the builds for the load to settle; builds took {b_old} s (old) and {b_new} s (new)",
    f"measurements took {t_meas} s; whole run {t_total} s",
    f"single node: fresh node per binary per round (TERN_AUTH=tokens, the bench sends the admin token),"
    f" tern bench --function echo --connections 1, then 64,"
    f" --duration/--warmup {durs.replace(' ', '/')} each",
    f"cluster: TERN_BIN=<binary> BENCH_QUICK=1 BENCH_ROUNDS={crounds} BENCH_DURATION={durs.split()[0]}"
    f" scripts/bench-cluster.sh (extra = forwarded p50 - local p50, 1 connection through c)",
    f"errors (requests - ok) over all runs: {errors}",
    f"before each of the {len(loads)} measurements: 1-minute load average {min(loads):.2f}-{max(loads):.2f}"
    f" (the benchmarks themselves load both cores); rustc processes running: max {max(rustcs)}"
    + ("  ** other builds were running during the measurements **" if max(rustcs) else ""),
    "",
]
o, n = data["old"], data["new"]
tail = [
    "",
    f"medians over {rounds} rounds (cluster extra: over {rounds * crounds} local/forwarded pairs):",
    f"  64 conn req/s:     old {med(o['rps']):.0f}, new {med(n['rps']):.0f}  new/old {ratio('rps'):.3f}"
    f"  (per round {paired('rps')})",
    f"  64 conn p99 us:    old {fmt(med(o['p99']))}, new {fmt(med(n['p99']))}  new/old {ratio('p99'):.3f}"
    f"  (per round {paired('p99')})",
    f"  1 conn p50 us:     old {fmt(med(o['p50']))}, new {fmt(med(n['p50']))}  new/old {ratio('p50'):.3f}"
    f"  (per round {paired('p50')})",
    f"  forwarding extra:  old +{fmt(med(o['extra']))} us, new +{fmt(med(n['extra']))} us  new/old {ratio('extra'):.3f}"
    f"  (per-run medians old {', '.join(fmt(x) for x in o['extra_run'])}; new {', '.join(fmt(x) for x in n['extra_run'])})",
    f"  cluster local p50: old {fmt(med(o['local']))}, new {fmt(med(n['local']))} us; forwarded p50: old "
    f"{fmt(med(o['fwd']))}, new {fmt(med(n['fwd']))} us  new/old {ratio('fwd'):.3f}",
    "(ratios < 1 are better for p99, p50 and extra; > 1 is better for req/s)",
]
text = "\n".join(head + lines + tail) + "\n"
open(os.path.join(out, "summary.txt"), "w").write(text)
print(text, end="")
EOF
