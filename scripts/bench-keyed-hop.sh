#!/usr/bin/env bash
# What a keyed call costs through a node that owns its function and through one that does
# not. Three release `tern up` processes on loopback (a also serves the client API), echo's
# module deployed through a under two names: one whose keys' home (its warm-affinity owner)
# is a ("entry": it runs on a, its result copied to the key's successor) and one homed at b
# or c ("other": the call goes over the mesh to the home, which runs it, copies the result
# and answers); `tern-client` calls through a, one connection, closed loop, each with a fresh
# idempotency key, the two groups alternated round by round (node/examples/keyed-latency.rs).
# Every tern-client call carries a key; with three nodes, two functions in three are owned
# by a node other than the one a caller reaches.
#
# Usage: scripts/bench-keyed-hop.sh OUT_DIR [ROUNDS] [CALLS]   (defaults 5 rounds, 2000 calls
# per group and round). Writes OUT_DIR/raw/rounds.jsonl (the example's output), warmup.jsonl,
# commands.log and summary.txt (generated from raw/; never edit it by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [ROUNDS] [CALLS]" >&2; exit 2; }
out=$1 rounds=${2:-5} calls=${3:-2000}
[[ $rounds =~ ^[1-9][0-9]*$ && $calls =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS and CALLS must be positive integers" >&2; exit 2; }
source scripts/lib/auth-header.sh
source scripts/lib/bench-node.sh
rm -rf "$out/raw" "$out/commands.log"
mkdir -p "$out/raw"
bash scripts/build-functions.sh >/dev/null
cargo build --release -p tern-node --bin tern --example keyed-latency
tern=target/release/tern
probe=target/release/examples/keyed-latency
commit=$(git rev-parse HEAD)
dirty=$(tree_dirty)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
names=(a b c)
http=(127.0.0.1:7931 127.0.0.1:7932 127.0.0.1:7933)
mesh=(127.0.0.1:7941 127.0.0.1:7942 127.0.0.1:7943)
client_api=127.0.0.1:7951
log "$tern cluster init --out <work>/pki --nodes a,b,c"
$tern cluster init --out "$work/pki" --nodes a,b,c >/dev/null
for i in 0 1 2; do
  peers=()
  for j in 0 1 2; do
    [ "$i" = "$j" ] || peers+=(--peer "${names[$j]}=${mesh[$j]}")
  done
  extra=()
  [ "$i" = 0 ] && extra=(env TERN_CLIENT_LISTEN=$client_api)
  log "${extra[*]} TERN_EXAMPLES='[]' $tern up --node-name ${names[$i]} --listen ${http[$i]} --cluster-listen ${mesh[$i]} ${peers[*]}"
  "${extra[@]}" env TERN_EXAMPLES='[]' $tern up --node-name "${names[$i]}" --listen "${http[$i]}" \
    --data "$work/${names[$i]}" --cluster-dir "$work/pki" --cluster-listen "${mesh[$i]}" \
    "${peers[@]}" --log warn >"$out/raw/${names[$i]}.log" 2>&1 &
  pids+=($!)
done
for h in "${http[@]}"; do wait_healthy "$h"; done
for i in 0 1 2; do
  header=$(auth_header_file "$work/${names[$i]}/admin.token" "$work/${names[$i]}.header")
  for _ in $(seq 300); do
    [ "$(curl -sf -H @"$header" "http://${http[$i]}/v1/cluster" | grep -o '"state":"up"' | wc -l)" = 2 ] && break
    sleep 0.1
  done
done
admin=$(cat "$work/a/admin.token")
log "$probe --ca <work>/pki/ca.pem --entry a=$client_api --members a,b,c --pick echo"
read -r at_a elsewhere < <($probe --ca "$work/pki/ca.pem" --entry "a=$client_api" --members a,b,c --pick echo)
for f in "$at_a" "$elsewhere"; do
  log "TERN_TOKEN=<a's admin token> $tern deploy $f functions/dist/echo.wasm --server ${http[0]}"
  TERN_TOKEN=$admin $tern deploy "$f" functions/dist/echo.wasm --server "${http[0]}" --log warn >/dev/null
  for i in 0 1 2; do
    for _ in $(seq 300); do
      curl -sf -H @"$work/${names[$i]}.header" "http://${http[$i]}/v1/functions/$f" >/dev/null && break
      sleep 0.1
    done
  done
done
bench_settle
run_probe() {
  log "TERN_TOKEN=<a's admin token> $probe --ca <work>/pki/ca.pem --entry a=$client_api --members a,b,c --calls $1 --rounds $2 $at_a $elsewhere"
  TERN_TOKEN=$admin $probe --ca "$work/pki/ca.pem" --entry "a=$client_api" --members a,b,c \
    --calls "$1" --rounds "$2" "$at_a" "$elsewhere"
}
run_probe 300 1 >"$out/raw/warmup.jsonl"
run_probe "$calls" "$rounds" >"$out/raw/rounds.jsonl"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

python3 scripts/lib/keyed-hop-summary.py "$out" "$commit" "$dirty" "$load_start" "$load_end" "$calls" "$rounds" >"$out/summary.txt"
cat "$out/summary.txt"
