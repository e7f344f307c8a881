# Sourced by real-nodes.sh for `real-nodes.sh calibration`: measures on the experiment's three
# nodes (standard a, edge-small b, cpu-burst c, each in its CPU quota) the constants the
# policy simulator otherwise assumes. calibration.py turns the raw files into
# calibration.json and summary.md.
#
# The nodes run the product's configuration (warm-affinity placement, cells where the host
# allows them, the optimised runtime) with one change: max_loaded_modules = 2, so that a node
# keeps few modules loaded and cold starts can be provoked at will (with the default, 1,024, a
# node keeps everything it was deployed and never starts cold). The load path a cold start
# takes is the product's.
#
# Phases, every call made one at a time with curl straight to one node, its answer's
# x-tern-node (where it ran), x-tern-cold-start and x-tern-duration-us (server-side time at
# the node called) kept in raw/calls.tsv:
#   homes  each function once at node a: warm affinity gives every function one home node.
#   cold   each echo copy at its own home, in turn: more copies per node than it keeps
#          loaded, so every call loads its module (LRU); /metrics before and after give the
#          load time (Eq. 3 T_load) per node.
#   warm   per node, one echo copy homed there, called there (local) and at the other two
#          nodes (forwarded to it), interleaved: per-request overhead per node, and the hop
#          (forwarded minus local, same copy, same round).
#   work   per node, one matmul-json copy homed there, at each work size n, interleaved across
#          nodes: execution time per work size and node.
# Environment: CAL_ROUNDS (full 5, smoke 1) rounds of the cold phase; CAL_CALLS (full 30,
# smoke 3) calls per node and round of the warm phase, CAL_WORK_CALLS (full 10, smoke 2) per
# node and size of the work phase; CAL_WORK_N="32 64 128 256" work sizes
# (the experiment's trace mix draws n from 32-256).

calibrate() {
  local cal_rounds cal_calls work_calls echo_copies=24 mm_copies=9 i r k n f
  if [ "$smoke" = 1 ]; then
    cal_rounds=${CAL_ROUNDS:-1} cal_calls=${CAL_CALLS:-3} work_calls=${CAL_WORK_CALLS:-2}
  else
    cal_rounds=${CAL_ROUNDS:-5} cal_calls=${CAL_CALLS:-30} work_calls=${CAL_WORK_CALLS:-10}
  fi
  local work_n=(${CAL_WORK_N:-32 64 128 256})
  echo "cal_rounds=$cal_rounds cal_calls=$cal_calls work_calls=$work_calls work_n=$(IFS=,; echo "${work_n[*]}") max_loaded_modules=2 echo_copies=$echo_copies mm_copies=$mm_copies" \
    >>"$out/raw/setup.txt"
  node_env=(TERN_MAX_LOADED_MODULES=2)
  local dir="$work/calibration"
  mkdir -p "$dir" "$work/modules"
  log "calibration: start the cluster (warm-affinity auto optimised, max_loaded_modules=2)"
  start_cluster calibration "$dir"

  local echoes=() mms=()
  for k in $(seq -w 0 $((echo_copies - 1))); do echoes+=("cal-echo-$k"); done
  for k in $(seq 0 $((mm_copies - 1))); do mms+=("cal-mm-$k"); done
  python3 scripts/lib/with-custom-section.py functions/dist/echo.wasm tern-calibration \
    "$work/modules" "${echoes[@]}"
  python3 scripts/lib/with-custom-section.py functions/dist/matmul-json.wasm tern-calibration \
    "$work/modules" "${mms[@]}"
  # Limits every class admits (edge-small's are the tightest).
  for f in "${echoes[@]}" "${mms[@]}"; do
    TERN_TOKEN=$(cat "$dir/a/admin.token") "$tern" deploy "$f" "$work/modules/$f.wasm" \
      --timeout-ms 50 --memory-mb 64 --server "${http[0]}" >/dev/null
  done
  log "calibration: deployed ${#echoes[@]} echo and ${#mms[@]} matmul-json copies"
  functions_everywhere "$dir" $((echo_copies + mm_copies)) cal-
  sleep 1 # statuses: every node's ready versions reach its peers

  local calls="$out/raw/calls.tsv"
  printf 'phase\tround\tentry\tfunction\tn\tran\tcold\tduration_us\tstatus\n' >"$calls"
  # call PHASE ROUND ENTRY_INDEX FUNCTION N BODY: one invocation, one line of calls.tsv.
  call() {
    local status ran cold d
    IFS='|' read -r status ran cold d < <(curl -s -m 10 -o /dev/null -D - -H @"$dir/${names[$3]}.auth" \
      -X POST "http://${http[$3]}/v1/functions/$4/invoke" --data-binary "$6" | answer_fields)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${names[$3]}" "$4" "$5" "$ran" "$cold" "$d" \
      "$status" >>"$calls"
  }
  local matmul_body='{"task_id":"cal","n":NN,"seed":7,"op":"matmul"}'
  # scrape TAG: every node's /metrics as raw/TAG-NODE.prom.
  scrape() {
    for i in 0 1 2; do
      curl -sf -H @"$dir/${names[$i]}.auth" "http://${http[$i]}/metrics" >"$out/raw/$1-${names[$i]}.prom"
    done
  }

  log "calibration: homes"
  for f in "${echoes[@]}"; do call homes 1 0 "$f" 0 hi; done
  for f in "${mms[@]}"; do call homes 1 0 "$f" 32 "${matmul_body/NN/32}"; done
  # home FUNCTION: the node index FUNCTION ran on in the homes phase (empty if it failed).
  home() {
    local ran
    ran=$(awk -F'\t' -v f="$1" '$1 == "homes" && $4 == f { print $6 }' "$calls")
    for i in 0 1 2; do [ "$ran" = "${names[$i]}" ] && echo "$i"; done
    return 0
  }
  local -A echo_home mm_of
  local echo_of=()
  for f in "${echoes[@]}"; do
    echo_home[$f]=$(home "$f")
    i=${echo_home[$f]}
    [ -n "$i" ] && [ -z "${echo_of[$i]:-}" ] && echo_of[$i]=$f
  done
  for f in "${mms[@]}"; do
    i=$(home "$f")
    [ -n "$i" ] && [ -z "${mm_of[$i]:-}" ] && mm_of[$i]=$f
  done
  for i in 0 1 2; do
    [ -n "${echo_of[$i]:-}" ] || { echo "no echo copy is homed on ${names[$i]}: deploy more" >&2; return 1; }
    [ -n "${mm_of[$i]:-}" ] || { echo "no matmul-json copy is homed on ${names[$i]}: deploy more" >&2; return 1; }
  done

  log "calibration: cold ($cal_rounds rounds over ${#echoes[@]} copies, each at its home)"
  scrape cold-before
  for r in $(seq "$cal_rounds"); do
    for f in "${echoes[@]}"; do
      [ -n "${echo_home[$f]}" ] && call cold "$r" "${echo_home[$f]}" "$f" 0 hi
    done
  done
  scrape cold-after

  log "calibration: warm ($cal_calls rounds; per node its copy locally and from both peers)"
  scrape warm-before
  for r in $(seq "$cal_calls"); do
    for i in 0 1 2; do
      for k in 0 1 2; do call warm "$r" "$k" "${echo_of[$i]}" 0 hi; done
    done
  done
  scrape warm-after

  log "calibration: work (n = ${work_n[*]}, $work_calls calls per node and size)"
  for r in $(seq "$work_calls"); do
    for n in "${work_n[@]}"; do
      for i in 0 1 2; do call work "$r" "$i" "${mm_of[$i]}" "$n" "${matmul_body/NN/$n}"; done
    done
  done
  scrape end
  for i in 0 1 2; do
    kill -0 "${pids[$i]}" 2>/dev/null || { echo "node ${names[$i]} died during the calibration" >&2; return 1; }
  done
  stop_cluster
}
