#!/usr/bin/env bash
# The paper's experiment on real nodes. Three `tern up` processes on this machine form a QUIC
# cluster of heterogeneous nodes; the Azure 2019 trace is replayed open loop through node a by
# `tern bench --trace` (each trace function its own deployed copy of matmul-json, n drawn per
# function); the cluster runs in each configuration of the experiment in turn, ROUNDS rounds
# with the order rotated, a fresh cluster and the same seed for every run.
# bench/experiments/analyze.py writes the report from the raw files.
#
# Experiments (a configuration is placement / isolation / runtime profile):
#   placement  the learned scheduler on real nodes: learned (the committed PPO checkpoint,
#              behind its guard), warm-affinity (the default) and least-loaded, each with the
#              product's isolation (`auto`: cells as root) and runtime (`optimised`).
#   ablations  the paper's §4.4 ablations: the full system (learned / lci / optimised); each
#              component switched off in turn (the scheduler by warm-affinity and by
#              least-loaded, LCI by in-process, the runtime optimisation by the `baseline`
#              runtime profile); everything off (least-loaded / in-process / baseline); and
#              each component alone on top of everything off.
#   profiles   the paper's load profiles instead of the trace (bench/experiments/profiles.sh):
#              steady 200 req/s, a 1,000 req/s burst, and 3,000 concurrent tasks, in the full
#              system, warm-affinity (the product's default) and everything off.
#   calibration  the constants the policy simulator assumes, measured on the same three nodes
#              in the product's configuration (warm-affinity / auto / optimised): per class,
#              the load paid by a cold start, the reuse lookup, the per-request overhead, the
#              speed against the standard node, the energy model's power per busy core, and
#              the hop of a forwarded request. No trace: calls one at a time with curl, each
#              straight to a node. bench/experiments/calibration.py writes calibration.json
#              (read by `policy-bench --calibration`) and summary.md.
#
# Nodes (classes differ in the limits they admit; their speed differs by a cgroup v1 CPU
# quota, when root and /sys/fs/cgroup/cpu allow it, else not at all, and the report says so):
#   a  standard    1.0 CPU   the entry: every request arrives here (ENTRIES=all: a, b and c)
#   b  edge-small  0.5 CPU
#   c  cpu-burst   no quota (both of the machine's CPUs)
# Functions are deployed with timeout_ms=50 and memory_mb=64, so every class admits them.
#
# Usage: bench/experiments/real-nodes.sh placement|ablations|profiles|calibration [--smoke] [OUT_DIR]
#   default OUT_DIR bench/reports/paper/<experiment>/<UTC date>
#   --smoke: one round of a one-minute window at 12x (5 s per run), no settling, the binary
#            TERN_BIN (default target/debug/tern): checks the runner and the analysis, in CI
#            (ablations: full, no-runtime-opt and all-off only, every function deployed
#            from one module).
# Environment (full run defaults): ROUNDS=3 MINUTES=600-610 (ablations: 600-604) SPEEDUP=5
#   SCALE=20 SEED=1 WORK_N=32-256 CONNECTIONS=256 CONFIGS="<the experiment's, by name>"
#   CHECKPOINT=policy/reports/ppo-weights.safetensors (what `learned` serves; a checkpoint
#   trained in a calibrated simulator carries its constants, and the nodes use them)
#   MODULES=shared|distinct (placement: shared, every function deployed from matmul-json
#   itself; ablations: distinct, each with a custom section naming it, so no two functions
#   share a compiled module)
#   LINK_DELAY_MS=0 and LINK_DELAYS="A-B=MS ..." (per link): each mesh link's delay each way,
#   added by `tern chaos relay` (UDP relays on loopback, started before each cluster; it runs
#   on the same CPUs, outside the nodes' quotas). Both unset or 0: the nodes dial each other.
#   ENTRIES=a|all: the trace's requests all enter through a (the default, as the committed
#   reports ran), or are spread over a, b and c (`tern bench --entry`: the connections
#   round-robin over the three, each request sent on whichever connection is free and placed
#   by the node it reached). The trace replays only (placement, ablations); profiles and
#   calibration send as they always did.
# Minutes 600-610 lie in the policy benchmark's test window [480, 720): the checkpoint was
# trained on [0, 420) and selected on [420, 450), never on these minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/bench-node.sh
source scripts/lib/auth-header.sh

experiment=${1:-}
shift || true
# configuration NAME: its placement, isolation and runtime profile ("" if NAME is unknown).
configuration() {
  case $1 in
    learned | full) echo "learned auto optimised" ;;
    warm-affinity) echo "warm-affinity auto optimised" ;;
    least-loaded) echo "least-loaded auto optimised" ;;
    no-lci) echo "learned in-process optimised" ;;
    no-runtime-opt) echo "learned auto baseline" ;;
    all-off) echo "least-loaded in-process baseline" ;;
    learned-alone) echo "learned in-process baseline" ;;
    lci-alone) echo "least-loaded auto baseline" ;;
    runtime-opt-alone) echo "least-loaded in-process optimised" ;;
    calibration) echo "warm-affinity auto optimised" ;;
  esac
}
case $experiment in
  placement)
    default_configs="learned warm-affinity least-loaded" default_minutes=600-610
    default_modules=shared ;;
  ablations)
    default_configs="full warm-affinity least-loaded no-lci no-runtime-opt all-off learned-alone lci-alone runtime-opt-alone"
    default_minutes=600-604
    # Each trace function is a different application: under the baseline runtime profile a
    # node compiles each one on first use, not one module for all.
    default_modules=distinct ;;
  profiles)
    default_configs="full warm-affinity all-off" default_minutes=600-601 default_modules=shared ;;
  calibration)
    default_configs=calibration default_minutes=600-601 default_modules=distinct ;;
  *)
    echo "usage: bench/experiments/real-nodes.sh placement|ablations|profiles|calibration [--smoke] [OUT_DIR]" >&2
    exit 2 ;;
esac
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
if [ $smoke = 1 ]; then
  # Three ablations cover every component on and off: cells compiling on first use included.
  [ "$experiment" = ablations ] && default_configs="full no-runtime-opt all-off"
  # Every function deployed from one module: 92 distinct ones took ~50 s of each run to compile
  # on three nodes, most of the smoke's time, and checked nothing the shared module does not.
  [ "$experiment" = ablations ] && default_modules=shared
  [ "$experiment" = profiles ] && default_configs="full all-off"
  out=${1:-target/experiments-smoke/$experiment}
  rounds=${ROUNDS:-1} minutes=${MINUTES:-600-601} speedup=${SPEEDUP:-12} scale=${SCALE:-2}
else
  out=${1:-bench/reports/paper/$experiment/$(date -u +%F)}
  rounds=${ROUNDS:-3} minutes=${MINUTES:-$default_minutes} speedup=${SPEEDUP:-5} scale=${SCALE:-20}
fi
seed=${SEED:-1} work_n=${WORK_N:-32-256} connections=${CONNECTIONS:-256}
link_delay_ms=${LINK_DELAY_MS:-0} link_delays=(${LINK_DELAYS:-})
relayed=0 # whether the mesh links go through `tern chaos relay`
if [ "$link_delay_ms" != 0 ] || [ ${#link_delays[@]} -gt 0 ]; then relayed=1; fi
modules=${MODULES:-$default_modules}
case $modules in shared | distinct) ;; *) echo "MODULES is shared or distinct" >&2; exit 2 ;; esac
entries=${ENTRIES:-a}
case $entries in a | all) ;; *) echo "ENTRIES is a or all" >&2; exit 2 ;; esac
# Only the trace replays send through several entries.
case $experiment in placement | ablations) ;; *) entries=a ;; esac
configs=(${CONFIGS:-$default_configs})
for c in "${configs[@]}"; do
  [ -n "$(configuration "$c")" ] || { echo "unknown configuration $c" >&2; exit 2; }
done
trace=traces/azure2019-http-12h.csv
checkpoint=${CHECKPOINT:-policy/reports/ppo-weights.safetensors}
[ -f "$checkpoint" ] || { echo "CHECKPOINT $checkpoint: no such file" >&2; exit 2; }

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
relay_pid=
# Settings every node of the experiment gets on top of its configuration's.
node_env=()
stop_cluster() {
  for p in "${pids[@]}" $relay_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $relay_pid; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  pids=() relay_pid=
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

# start_cluster CONFIGURATION RUN_DIR: three fresh nodes, each in its CPU group, in
# CONFIGURATION. Fails if a port is taken, a node does not come up or the members do not see
# each other.
start_cluster() {
  local dir=$2 i j placement isolation runtime
  read -r placement isolation runtime <<<"$(configuration "$1")"
  for i in 0 1 2; do
    if curl -s -m 1 -o /dev/null "http://${http[$i]}/healthz"; then
      echo "something already answers on ${http[$i]}: stop it first" >&2
      return 1
    fi
  done
  "$tern" cluster init --out "$dir/pki" --nodes a,b,c >/dev/null
  # With link delays, node x dials node y at the relay `tern chaos relay` prints as "x y ADDR".
  if [ $relayed = 1 ]; then
    local links=()
    for j in "${link_delays[@]}"; do links+=(--link "$j"); done
    "$tern" chaos relay --node "a=${mesh[0]}" --node "b=${mesh[1]}" --node "c=${mesh[2]}" \
      --delay-ms "$link_delay_ms" "${links[@]}" >"$dir/relays" 2>>"$dir/relay.log" &
    relay_pid=$!
    for _ in $(seq 100); do
      [ "$(wc -l <"$dir/relays")" = 6 ] && break
      kill -0 $relay_pid 2>/dev/null || { cat "$dir/relay.log" >&2; return 1; }
      sleep 0.1
    done
    [ "$(wc -l <"$dir/relays")" = 6 ] || { echo "the relays did not start in 10 s" >&2; return 1; }
  fi
  for i in 0 1 2; do
    local peers=() at
    for j in 0 1 2; do
      [ "$i" = "$j" ] && continue
      at=${mesh[$j]}
      [ -z "$relay_pid" ] || at=$(awk -v f="${names[$i]}" -v t="${names[$j]}" '$1 == f && $2 == t { print $3 }' "$dir/relays")
      peers+=(--peer "${names[$j]}=$at")
    done
    local env=(TERN_EXAMPLES='[]' TERN_AUTH=tokens TERN_PLACEMENT="$placement"
      TERN_ISOLATION="$isolation" TERN_RUNTIME_PROFILE="$runtime" "${node_env[@]}")
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

# functions_everywhere RUN_DIR COUNT [PREFIX]: waits until every node lists COUNT functions
# whose names start with PREFIX (default mm-).
functions_everywhere() {
  local dir=$1 want=$2 prefix=${3:-mm-} i
  for i in 0 1 2; do
    local have=0
    for _ in $(seq 600); do
      have=$(curl -sf -H @"$dir/${names[$i]}.auth" "http://${http[$i]}/v1/functions" |
        python3 -c 'import json,sys; print(sum(1 for f in json.load(sys.stdin) if f["name"].startswith(sys.argv[1])))' "$prefix" || echo 0)
      [ "$have" = "$want" ] && break
      sleep 0.1
    done
    [ "$have" = "$want" ] || { echo "node ${names[$i]} has $have of $want functions after 60 s" >&2; return 1; }
  done
}

# rotated_configs ROUND: the configurations in ROUND's order, one per line, rotated each
# round so that no configuration always runs first (or last) here.
rotated_configs() {
  local k
  for k in "${!configs[@]}"; do
    echo "${configs[$(((k + $1 - 1) % ${#configs[@]}))]}"
  done
}

# snapshot_nodes TAG before|after RUN_DIR: every node's /metrics and CPU ticks as
# raw/TAG-NODE-WHEN.prom and raw/TAG-NODE-cpu-WHEN. After a run, a node that died fails it:
# a failed run is not a result.
snapshot_nodes() {
  local tag=$1 when=$2 dir=$3 i
  for i in 0 1 2; do
    curl -sf -H @"$dir/${names[$i]}.auth" "http://${http[$i]}/metrics" >"$out/raw/$tag-${names[$i]}-$when.prom"
    cpu_ticks "${pids[$i]}" >"$out/raw/$tag-${names[$i]}-cpu-$when"
    if [ "$when" = after ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "node ${names[$i]} died in $tag" >&2
      return 1
    fi
  done
}

{
  echo "commit=$commit dirty=$dirty binary=$tern smoke=$smoke"
  echo "rounds=$rounds minutes=$minutes speedup=$speedup scale=$scale seed=$seed work_n=$work_n connections=$connections"
  echo "experiment=$experiment configs=$(IFS=,; echo "${configs[*]}") modules=$modules checkpoint=$checkpoint entries=$entries"
  for c in "${configs[@]}"; do
    read -r placement isolation runtime <<<"$(configuration "$c")"
    echo "config.$c=$placement/$isolation/$runtime"
  done
  echo "cpu_limits=$cpu_limits quotas_us=$(IFS=,; echo "${quotas[*]}") classes=$(IFS=,; echo "${classes[*]}")"
  if [ $relayed = 1 ]; then
    echo "link_delay_ms=$link_delay_ms link_delays=$(IFS=,; echo "${link_delays[*]}")"
  fi
  echo "load_start=$(echo $load_start | tr " " ,) nproc=$(nproc)"
} >"$out/raw/setup.txt"

# The load profiles and the calibration replace the trace: a script of their own runs them,
# and their analysis writes the report.
case $experiment in
  profiles) run=run_profiles analysis=analyze.py ;;
  calibration) run=calibrate analysis=calibration.py ;;
  *) run= ;;
esac
if [ -n "$run" ]; then
  source "bench/experiments/$experiment.sh"
  "$run"
  log "done"
  python3 "bench/experiments/$analysis" "$out"
  exit 0
fi

bench_args=(--trace "$trace" --minutes "$minutes" --speedup "$speedup" --scale "$scale"
  --seed "$seed" --function 'mm-{i}' --work-n "$work_n" --connections "$connections"
  --timeout 10s --no-progress)
if [ "$entries" = all ]; then
  bench_args+=(--entry "${http[1]}" --entry "${http[2]}")
fi
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

# The module each function is deployed from: matmul-json itself (`shared`), or matmul-json
# with a custom section naming the function (`distinct`: same code, a different module hash).
mkdir -p "$work/modules"
if [ "$modules" = distinct ]; then
  python3 scripts/lib/with-custom-section.py functions/dist/matmul-json.wasm tern-experiment \
    "$work/modules" "${functions[@]}"
else
  for name in "${functions[@]}"; do cp functions/dist/matmul-json.wasm "$work/modules/$name.wasm"; done
fi

run_no=0
for round in $(seq 1 "$rounds"); do
  for config in $(rotated_configs "$round"); do
    run_no=$((run_no + 1))
    tag="$config-r$round"
    dir="$work/run-$run_no"
    mkdir -p "$dir"
    log "round $round: $config ($(configuration "$config"))"
    start_cluster "$config" "$dir"
    # Deploy every function the window calls (on a; replicated to b and c), then wait until
    # every node has them, so no run starts with functions still on their way.
    for name in "${functions[@]}"; do
      TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" deploy "$name" "$work/modules/$name.wasm" \
        --timeout-ms 50 --memory-mb 64 --server "${http[0]}" >/dev/null
    done
    functions_everywhere "$dir" "${#functions[@]}"
    sleep 1 # statuses: every node's ready versions reach its peers
    snapshot_nodes "$tag" before "$dir"
    TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" bench "${bench_args[@]}" --server "${http[0]}" \
      --records "$out/raw/$tag.jsonl" --json "$out/raw/$tag.json" >"$out/raw/$tag.txt"
    snapshot_nodes "$tag" after "$dir"
    # Kept, compressed: a scrape of a node with ~180 functions is ~1.3 MB of text.
    gzip -9 "$out/raw/$tag.jsonl" "$out/raw/$tag"-*.prom
    stop_cluster
  done
done
log "done"
python3 bench/experiments/analyze.py "$out"
# The paper's Fig. 3 and Fig. 4 for the ablations, drawn by Debian's matplotlib.
if [ "$experiment" = ablations ]; then
  if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null && [ "$(id -u)" = 0 ] &&
    command -v apt-get >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq python3-matplotlib >/dev/null; } || true
  fi
  if /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
    /usr/bin/python3 bench/experiments/plots.py "$out"
  else
    echo "SKIPPED: the ablations' figures: Debian's python3-matplotlib is not installed and could not be" >&2
    # CI runs as root, where it can be installed: there a missing figure is a failure.
    [ "${TERN_NO_SKIP:-0}" != 1 ] || exit 1
  fi
fi
