#!/usr/bin/env bash
# The learned scheduler on real nodes. Three `tern up` processes on this machine form a QUIC
# cluster of heterogeneous nodes; the Azure 2019 trace is replayed open loop through node a by
# `tern bench --trace` (each trace function its own deployed copy of matmul-json, n drawn per
# function); the cluster runs with `placement` = learned (the committed PPO checkpoint, behind
# its guard), warm-affinity (the default) and least-loaded in turn, ROUNDS rounds with the
# order rotated, a fresh cluster and the same seed for every run. bench/experiments/analyze.py
# writes the report from the raw files.
#
# Nodes (classes differ in the limits they admit; their speed differs by a cgroup v1 CPU
# quota, when root and /sys/fs/cgroup/cpu allow it, else not at all, and the report says so):
#   a  standard    1.0 CPU   the entry: every request arrives here
#   b  edge-small  0.5 CPU
#   c  cpu-burst   no quota (both of the machine's CPUs)
# Functions are deployed with timeout_ms=50 and memory_mb=64, so every class admits them.
#
# Usage: bench/experiments/placement.sh [--smoke] [OUT_DIR]
#   default OUT_DIR bench/reports/paper/placement/<UTC date>
#   --smoke: one round of a one-minute window at 12x (5 s per run), no settling, the binary
#            TERN_BIN (default target/debug/tern): checks the runner and the analysis, in CI.
# Environment (full run defaults): ROUNDS=3 MINUTES=600-610 SPEEDUP=5 SCALE=20 SEED=1
#   WORK_N=32-256 CONNECTIONS=256 POLICIES="learned warm-affinity least-loaded"
# Minutes 600-610 lie in the policy benchmark's test window [480, 720): the checkpoint was
# trained on [0, 420) and selected on [420, 450), never on these minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/bench-node.sh
source scripts/lib/auth-header.sh

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
if [ $smoke = 1 ]; then
  out=${1:-target/experiments-smoke/placement}
  rounds=${ROUNDS:-1} minutes=${MINUTES:-600-601} speedup=${SPEEDUP:-12} scale=${SCALE:-2}
else
  out=${1:-bench/reports/paper/placement/$(date -u +%F)}
  rounds=${ROUNDS:-3} minutes=${MINUTES:-600-610} speedup=${SPEEDUP:-5} scale=${SCALE:-20}
fi
seed=${SEED:-1} work_n=${WORK_N:-32-256} connections=${CONNECTIONS:-256}
policies=(${POLICIES:-learned warm-affinity least-loaded})
trace=traces/azure2019-http-12h.csv
checkpoint=policy/reports/ppo-weights.safetensors

# curl talks to the nodes; a fresh Debian machine may not have it.
if ! command -v curl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  else
    echo "the runner needs curl" >&2
    exit 1
  fi
fi
mkdir -p "$out"
rm -rf "$out/raw" "$out/commands.log"
mkdir -p "$out/raw"
if [ $smoke = 1 ]; then
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  tern=${TERN_BIN:-target/debug/tern}
  [ -x "$tern" ] || cargo build -p tern-node
  bash scripts/build-functions.sh >/dev/null
  load_start=$(cut -d' ' -f1-3 /proc/loadavg)
else
  if [ -n "${TERN_BIN:-}" ]; then
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    bash scripts/build-functions.sh >/dev/null
    tern=$TERN_BIN
    bench_settle
  else
    bench_prepare
  fi
fi
commit=$(git rev-parse HEAD)
dirty=$(tree_dirty)

names=(a b c)
classes=(standard edge-small cpu-burst)
quotas=(100000 50000 -1) # cpu.cfs_quota_us over a 100 ms period; -1: none
http=(127.0.0.1:7931 127.0.0.1:7932 127.0.0.1:7933)
mesh=(127.0.0.1:7941 127.0.0.1:7942 127.0.0.1:7943)
cg_root=/sys/fs/cgroup/cpu
cpu_limits=0
if [ "$(id -u)" = 0 ] && [ -w "$cg_root" ] && [ -e "$cg_root/cpu.cfs_quota_us" ]; then
  cpu_limits=1
fi

work=$(mktemp -d)
pids=()
stop_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  pids=()
  if [ $cpu_limits = 1 ]; then
    for n in "${names[@]}"; do
      local dir="$cg_root/tern-experiment-$n"
      [ -d "$dir" ] || continue
      # What is left anywhere below (the node's cells live in groups of their own under it)
      # is killed, then the groups are removed, deepest first.
      for _ in $(seq 50); do
        find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null && break
        sleep 0.1
      done
      [ -d "$dir" ] && echo "warning: could not remove $dir" >&2
    done
  fi
  return 0
}
cleanup() {
  stop_cluster
  rm -rf "$work"
}
trap cleanup EXIT

# start_cluster PLACEMENT RUN_DIR: three fresh nodes, each in its CPU group, with PLACEMENT.
# Fails if a port is taken, a node does not come up or the members do not see each other.
start_cluster() {
  local placement=$1 dir=$2 i j
  for i in 0 1 2; do
    if curl -s -m 1 -o /dev/null "http://${http[$i]}/healthz"; then
      echo "something already answers on ${http[$i]}: stop it first" >&2
      return 1
    fi
  done
  "$tern" cluster init --out "$dir/pki" --nodes a,b,c >/dev/null
  for i in 0 1 2; do
    local peers=()
    for j in 0 1 2; do
      [ "$i" = "$j" ] || peers+=(--peer "${names[$j]}=${mesh[$j]}")
    done
    local env=(TERN_EXAMPLES='[]' TERN_AUTH=tokens TERN_PLACEMENT="$placement")
    [ "$placement" = learned ] && env+=(TERN_POLICY_CHECKPOINT="$checkpoint")
    local cmd=("$tern" up --node-name "${names[$i]}" --listen "${http[$i]}"
      --data "$dir/${names[$i]}" --cluster-dir "$dir/pki" --cluster-listen "${mesh[$i]}"
      --node-class "${classes[$i]}" "${peers[@]}" --log warn)
    if [ $cpu_limits = 1 ]; then
      local cg="$cg_root/tern-experiment-${names[$i]}"
      mkdir -p "$cg"
      echo 100000 >"$cg/cpu.cfs_period_us"
      echo "${quotas[$i]}" >"$cg/cpu.cfs_quota_us"
      # The node joins its group before it starts, so its cells (created under the node's
      # own group) are inside the quota too.
      env "${env[@]}" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "${cmd[@]}" \
        2>>"$dir/${names[$i]}.log" &
    else
      env "${env[@]}" "${cmd[@]}" 2>>"$dir/${names[$i]}.log" &
    fi
    pids+=($!)
  done
  for i in 0 1 2; do wait_healthy "${http[$i]}"; done
  for i in 0 1 2; do
    local hdr
    hdr=$(auth_header_file "$dir/${names[$i]}/admin.token" "$dir/${names[$i]}.auth")
    local up=0
    for _ in $(seq 300); do
      if [ "$(curl -sf -H @"$hdr" "http://${http[$i]}/v1/cluster" | grep -o '"state":"up"' | wc -l)" = 2 ]; then
        up=1
        break
      fi
      sleep 0.1
    done
    [ $up = 1 ] || { echo "node ${names[$i]} does not see both peers up after 30 s" >&2; return 1; }
  done
}

# functions_everywhere RUN_DIR COUNT: waits until every node lists COUNT mm-* functions.
functions_everywhere() {
  local dir=$1 want=$2 i
  for i in 0 1 2; do
    local have=0
    for _ in $(seq 600); do
      have=$(curl -sf -H @"$dir/${names[$i]}.auth" "http://${http[$i]}/v1/functions" |
        python3 -c 'import json,sys; print(sum(1 for f in json.load(sys.stdin) if f["name"].startswith("mm-")))' || echo 0)
      [ "$have" = "$want" ] && break
      sleep 0.1
    done
    [ "$have" = "$want" ] || { echo "node ${names[$i]} has $have of $want functions after 60 s" >&2; return 1; }
  done
}

{
  echo "commit=$commit dirty=$dirty binary=$tern smoke=$smoke"
  echo "rounds=$rounds minutes=$minutes speedup=$speedup scale=$scale seed=$seed work_n=$work_n connections=$connections"
  echo "policies=$(IFS=,; echo "${policies[*]}") cpu_limits=$cpu_limits quotas_us=$(IFS=,; echo "${quotas[*]}") classes=$(IFS=,; echo "${classes[*]}")"
  echo "load_start=$(echo $load_start | tr " " ,) nproc=$(nproc)"
} >"$out/raw/setup.txt"

bench_args=(--trace "$trace" --minutes "$minutes" --speedup "$speedup" --scale "$scale"
  --seed "$seed" --function 'mm-{i}' --work-n "$work_n" --connections "$connections"
  --timeout 10s --no-progress)
# The functions the window calls: trace rows with an invocation in it, as `tern bench` names them.
functions=($(python3 - "$trace" "$minutes" <<'PY'
import sys
a, b = map(int, sys.argv[2].split("-"))
lines = [line for line in open(sys.argv[1]) if line.strip()]
# `tern bench` skips the dataset's header row, if there is one, before numbering the rows.
if lines and lines[0].startswith("HashOwner,"):
    lines = lines[1:]
rows = [line.split(",") for line in lines]
print(" ".join(f"mm-{i:03}" for i, r in enumerate(rows) if sum(map(int, r[4 + a:4 + b])) > 0))
PY
))

run_no=0
for round in $(seq 1 "$rounds"); do
  # Rotate the order each round, so no policy always runs first (or last) on this machine.
  order=()
  for k in "${!policies[@]}"; do
    order+=("${policies[$(((k + round - 1) % ${#policies[@]}))]}")
  done
  for placement in "${order[@]}"; do
    run_no=$((run_no + 1))
    tag="$placement-r$round"
    dir="$work/run-$run_no"
    mkdir -p "$dir"
    log "round $round: $placement"
    start_cluster "$placement" "$dir"
    # Deploy every function the window calls (on a; replicated to b and c), then wait until
    # every node has them, so no run starts with functions still on their way.
    for name in "${functions[@]}"; do
      TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" deploy "$name" functions/dist/matmul-json.wasm \
        --timeout-ms 50 --memory-mb 64 --server "${http[0]}" >/dev/null
    done
    functions_everywhere "$dir" "${#functions[@]}"
    sleep 1 # statuses: every node's ready versions reach its peers
    for i in 0 1 2; do
      curl -sf -H @"$dir/${names[$i]}.auth" "http://${http[$i]}/metrics" >"$out/raw/$tag-${names[$i]}-before.prom"
      echo "$(cpu_ticks "${pids[$i]}")" >"$out/raw/$tag-${names[$i]}-cpu-before"
    done
    TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" bench "${bench_args[@]}" --server "${http[0]}" \
      --records "$out/raw/$tag.jsonl" --json "$out/raw/$tag.json" >"$out/raw/$tag.txt"
    for i in 0 1 2; do
      curl -sf -H @"$dir/${names[$i]}.auth" "http://${http[$i]}/metrics" >"$out/raw/$tag-${names[$i]}-after.prom"
      echo "$(cpu_ticks "${pids[$i]}")" >"$out/raw/$tag-${names[$i]}-cpu-after"
      # A node that died during the run is a failed run, not a result.
      kill -0 "${pids[$i]}" 2>/dev/null || { echo "node ${names[$i]} died in $tag" >&2; exit 1; }
    done
    # Kept, compressed: a scrape of a node with ~180 functions is ~1.3 MB of text.
    gzip -9 "$out/raw/$tag.jsonl" "$out/raw/$tag"-*.prom
    stop_cluster
  done
done
log "done"
python3 bench/experiments/analyze.py "$out"
