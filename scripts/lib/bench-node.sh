# Sourced by the bench scripts: the pieces every run of a release node on this machine shares.

# bench_build: the example functions and a release `tern`, with room for many connections.
bench_build() {
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  bash scripts/build-functions.sh >/dev/null
  cargo build --release -p tern-node
}

# tree_dirty: the tracked files (reports excluded) with uncommitted changes, comma-separated,
# or 0 for a clean tree. Recorded in every report beside the commit it was built from.
tree_dirty() {
  local dirty
  dirty=$(git --no-optional-locks status --short --untracked-files=no -- . ':!bench/reports' | awk '{print $2}' | paste -sd, -)
  echo "${dirty:-0}"
}

# wait_healthy ADDR: waits up to 30 s for the node at ADDR to answer /healthz; fails (and says
# so) if it does not, so a run never measures a node that is not there.
wait_healthy() {
  local _
  for _ in $(seq 300); do
    curl -sf -m 1 "http://$1/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "node at $1 did not become healthy within 30 s" >&2
  return 1
}

# tenant_token ADMIN_HEADER_FILE ADDR TENANT BODY TOKEN_FILE: creates TENANT (BODY: its JSON
# record, e.g. {"name":"a","weight":3}) and writes a developer token of it to TOKEN_FILE (mode
# 0600). Tokens never appear on a command line.
tenant_token() {
  local admin=$1 addr=$2 tenant=$3 body=$4 token_file=$5
  curl -sf -H @"$admin" -X POST "http://$addr/v1/tenants" -d "$body" >/dev/null
  (
    umask 077
    curl -sf -H @"$admin" -X POST "http://$addr/v1/tokens" \
      -d "{\"role\":\"developer\",\"tenant\":\"$tenant\"}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$token_file"
  )
}

# bench_prepare: what every report run starts with. Empties "$out"'s raw/ and command log,
# builds (bench_build), sets tern (the release binary) and the build's identity for the report
# (commit, dirty), then waits for the build's load to settle (bench_settle, load_start).
bench_prepare() {
  rm -rf "$out/raw" "$out/commands.log"
  mkdir -p "$out/raw"
  bench_build
  tern=target/release/tern
  commit=$(git rev-parse HEAD)
  dirty=$(tree_dirty)
  bench_settle
}

# bench_settle: waits for the build's load to settle, then records the load average in
# load_start.
bench_settle() {
  sleep 20
  load_start=$(cut -d' ' -f1-3 /proc/loadavg)
}

# The node a run measures and its data directory, while one is up: cleanup_node stops the one
# and removes the other (for `trap cleanup_node EXIT`).
node=
data=
cleanup_node() {
  [ -n "$node" ] && kill "$node" 2>/dev/null || true
  [ -n "$data" ] && rm -rf "$data"
  return 0
}

# log MESSAGE: appends MESSAGE to "$out/commands.log" with the time and the load average.
log() { echo "[$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)] $*" >>"$out/commands.log"; }

# cpu_ticks PID: utime + stime of process PID and of every process below it (a node's cells),
# with what their children that ended and were waited for used (cutime + cstime: a cell that
# exits during a run is not lost), in clock ticks. A process that ends between the listing and
# the read is counted as 0 (its parent's cutime then has it, once it is waited for).
cpu_ticks() {
  local pid total=0 queue=("$1") t
  while [ ${#queue[@]} -gt 0 ]; do
    pid=${queue[0]} queue=("${queue[@]:1}")
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
    queue+=($(cat /proc/"$pid"/task/*/children 2>/dev/null || true))
  done
  echo "$total"
}

# answer_fields: reads an HTTP answer's header block (`curl -D -`) on stdin and prints what a
# Tern answer says about itself, separated by `|` (an empty field stays a field when read
# with IFS='|'): status, x-tern-node (where it ran), x-tern-cold-start, x-tern-duration-us
# (the node's own time).
answer_fields() {
  tr -d '\r' | awk -F': ' '
    /^HTTP\// { split($0, s, " "); status = s[2] }
    tolower($1) == "x-tern-node" { node = $2 }
    tolower($1) == "x-tern-cold-start" { cold = $2 }
    tolower($1) == "x-tern-duration-us" { d = $2 }
    END { printf "%s|%s|%s|%s\n", status, node, cold, d }'
}
