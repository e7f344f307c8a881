#!/usr/bin/env bash
# What trace export costs the hot path: scripts/bench-configs.sh (one release binary, rotated
# rounds, echo at 1 and 64 connections) with trace export off (the default), on with 1 % of
# invocations sampled, and on with every invocation sampled, against an OTLP/HTTP receiver on
# this machine (scripts/lib/otlp-sink.py: answers every export 200 and counts requests and
# bytes). Export "on at 0.01" is the configuration an operator runs in production; "on at 1"
# shows the cost of a traced invocation.
#
# Usage: scripts/bench-tracing.sh [OUT_DIR] [ROUNDS]
# (default bench/reports/tracing/<date>, 3 rounds). Writes what bench-configs.sh writes, plus
# sink.txt (what the receiver got).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/reports/tracing/$(date -u +%Y-%m-%d)}
rounds=${2:-3}
mkdir -p "$out"
port=4318
python3 scripts/lib/otlp-sink.py "$port" "$out/sink.txt" &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.1
done
endpoint=http://127.0.0.1:$port
bash scripts/bench-configs.sh "$out" "$rounds" \
  off=TERN_TRACE_SAMPLE_RATIO=0.01 \
  on-1pct=TERN_OTLP_ENDPOINT=$endpoint,TERN_TRACE_SAMPLE_RATIO=0.01 \
  on-all=TERN_OTLP_ENDPOINT=$endpoint,TERN_TRACE_SAMPLE_RATIO=1
kill -INT $sink 2>/dev/null || true
wait $sink 2>/dev/null || true
cat "$out/sink.txt"
