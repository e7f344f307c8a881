# Sourced by real-nodes.sh for `real-nodes.sh profiles`: the paper's load profiles on the
# experiment's three nodes, in each configuration, instead of the trace.
#
#   steady      open loop at 200 requests a second for 30 s (the paper's steady profile);
#   burst       open loop at 1,000 requests a second for 10 s on an idle cluster (the top of
#               the paper's 500-1,000 req/s bursts, as a step from nothing);
#   concurrent  3,000 connections in a closed loop for 20 s after 5 s of warm-up: 3,000 tasks
#               in flight at once, each sending its next when its last is answered (the
#               paper's 3,000 concurrent tasks); the entry node's in-flight gauge is sampled
#               halfway through.
# Every request is the paper's workload at a size this machine can serve at these rates:
# matmul-json at n = WORK_N (default 64; n = 512 takes ~70 ms of one core here, so 200 a
# second would need 14 cores), padded to ~1 KB, to one function deployed from matmul-json with
# a time limit of LIMIT_MS (default 10 s; a request may wait that long for an instance slot
# before it is refused as overloaded). A node runs only functions its class admits: edge-small
# at most 50 ms, cpu-burst 900 ms, so with the default only the standard node a runs it (the
# entry, admission and placement are a cluster's, the work one node's); LIMIT_MS=50 lets all
# three run it, and refuses what waits longer. Each (configuration, profile) pair gets a fresh
# cluster, so every profile starts cold. Records, /metrics and CPU ticks as for the trace runs;
# analyze.py reads them.
# Environment (full defaults): PROFILES="steady burst concurrent" WORK_N=64 LIMIT_MS=10000;
# smoke: rates and durations cut (50 req/s for 3 s, 200 req/s for 2 s, 300 connections for 3 s).

# profile_args PROFILE: the `tern bench` arguments of PROFILE (smoke-sized when smoke=1).
profile_args() {
  case $1:$smoke in
    steady:0) echo "--rate 200 --duration 30s --warmup 0s --connections 256" ;;
    burst:0) echo "--rate 1000 --duration 10s --warmup 0s --connections 1024" ;;
    concurrent:0) echo "--connections 3000 --duration 20s --warmup 5s" ;;
    steady:1) echo "--rate 50 --duration 3s --warmup 0s --connections 64" ;;
    burst:1) echo "--rate 200 --duration 2s --warmup 0s --connections 128" ;;
    concurrent:1) echo "--connections 300 --duration 3s --warmup 1s" ;;
  esac
}

# profile_midpoint PROFILE: seconds from the start of PROFILE's run to its halfway point.
profile_midpoint() {
  case $1:$smoke in
    concurrent:0) echo 15 ;;
    concurrent:1) echo 2 ;;
    *) echo "" ;;
  esac
}

run_profiles() {
  local profiles=(${PROFILES:-steady burst concurrent}) work_n=${WORK_N:-64} limit_ms=${LIMIT_MS:-10000} p
  [[ $limit_ms =~ ^[1-9][0-9]*$ ]] || { echo "LIMIT_MS must be a positive integer" >&2; return 1; }
  for p in "${profiles[@]}"; do
    [ -n "$(profile_args "$p")" ] || { echo "unknown profile $p" >&2; return 1; }
  done
  echo "profiles=$(IFS=,; echo "${profiles[*]}") profile_work_n=$work_n profile_limit_ms=$limit_ms" >>"$out/raw/setup.txt"
  for p in "${profiles[@]}"; do echo "profile.$p=$(profile_args "$p" | tr ' ' ,)" >>"$out/raw/setup.txt"; done
  # The paper's request: a ~1 KB JSON object.
  python3 - "$work_n" >"$work/request.json" <<'PY'
import json, sys
body = {"task_id": "profile", "n": int(sys.argv[1]), "seed": 7, "op": "matmul", "scale": 1.0}
body["pad"] = "x" * max(0, 1024 - len(json.dumps(body)) - 10)
print(json.dumps(body), end="")
PY
  local run_no=0 round config profile
  for round in $(seq 1 "$rounds"); do
    for config in $(rotated_configs "$round"); do
      for profile in "${profiles[@]}"; do
        run_no=$((run_no + 1))
        local tag="$config+$profile-r$round" dir="$work/run-$run_no"
        mkdir -p "$dir"
        log "round $round: $config ($(configuration "$config")), profile $profile"
        start_cluster "$config" "$dir"
        TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" deploy mm-000 functions/dist/matmul-json.wasm \
          --timeout-ms "$limit_ms" --memory-mb 64 --server "${http[0]}" >/dev/null
        functions_everywhere "$dir" 1
        sleep 1 # statuses: every node's ready versions reach its peers
        snapshot_nodes "$tag" before "$dir"
        local mid sampler=
        mid=$(profile_midpoint "$profile")
        if [ -n "$mid" ]; then
          (sleep "$mid"; curl -sf -m 5 -H @"$dir/a.auth" "http://${http[0]}/metrics" >"$out/raw/$tag-a-mid.prom") &
          sampler=$!
        fi
        # shellcheck disable=SC2046 # the profile's arguments are words
        TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" bench --function mm-000 \
          --data @"$work/request.json" $(profile_args "$profile") --timeout 30s --no-progress \
          --server "${http[0]}" --records "$out/raw/$tag.jsonl" --json "$out/raw/$tag.json" \
          >"$out/raw/$tag.txt"
        [ -n "$sampler" ] && wait "$sampler"
        snapshot_nodes "$tag" after "$dir" || return 1
        gzip -9 "$out/raw/$tag.jsonl" "$out/raw/$tag"-*.prom
        stop_cluster
      done
    done
  done
}
