#!/usr/bin/env bash
# Macro benchmarks of one node: echo over HTTP at 64 connections, first call after
# deploy, and 3,000 / 10,000 concurrent connections. Load generator on the same machine.
# Usage: scripts/bench-single-node.sh [OUT_DIR]   (default bench/reports/single-node)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/reports/single-node}
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bash scripts/build-functions.sh >/dev/null
cargo build --release -p tern-node
tern=target/release/tern
data=$(mktemp -d)
addr=127.0.0.1:7899
$tern up --data "$data" --listen $addr --log warn &
node=$!
trap 'kill $node 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do curl -sf "http://$addr/healthz" >/dev/null && break; sleep 0.1; done
# Bearer tokens are on (the default): the first start wrote the admin token; `tern` reads
# TERN_TOKEN.
export TERN_TOKEN=$(cat "$data/admin.token")

echo "== echo, closed loop, 64 connections"
$tern bench --server $addr --function echo --connections 64 --duration 15s --warmup 3s \
  --no-progress --json "$out/echo-64.json"

echo "== first invocation after deploy (server-side x-tern-duration-us), 20 fresh functions"
for i in $(seq 20); do
  $tern deploy "first-$i" functions/dist/echo.wasm --server $addr >/dev/null
  curl -s -o /dev/null -D - -H "Authorization: Bearer $TERN_TOKEN" -X POST "http://$addr/v1/functions/first-$i/invoke" -d hi \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="x-tern-duration-us"{print $2}'
done | sort -n | tee "$out/first-call-us.txt" | awk '{a[NR]=$1} END {print "first call after deploy: median " a[int((NR+1)/2)] " us, max " a[NR] " us"}'

for c in 3000 10000; do
  echo "== echo, closed loop, $c connections"
  $tern bench --server $addr --function echo --connections $c --duration 10s --warmup 3s \
    --no-progress --json "$out/echo-$c.json"
done

echo "== matmul-json (n=64), closed loop, 64 connections"
$tern bench --server $addr --function matmul-json --data '{"task_id":"b","n":64,"seed":1}' \
  --connections 64 --duration 10s --warmup 2s --no-progress --json "$out/matmul64-64.json"
