#!/usr/bin/env bash
# The steady profile measured by two clients side by side: Locust (Debian's python3-locust, the
# load tool the paper used; locustfile bench/experiments/locust/tern.py) and `tern bench`'s open
# loop, against one release node with the product's defaults, the paper's workload at a size
# this machine can serve at the rate (matmul-json, n = N, ~1 KB JSON requests), RATE requests a
# second for DURATION, ROUNDS rounds with the order of the two clients alternated. The report
# (summary.md) is written from the raw files by the inline analysis below.
#
# Usage: bench/experiments/locust.sh [OUT_DIR]   (default bench/reports/paper/locust/<UTC date>)
# Environment: ROUNDS=2 RATE=200 DURATION=60 N=64 (the paper's n is 512: at 200 req/s that is
#   ~20 CPUs of matrix products, ten times this machine)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/bench-node.sh
source scripts/lib/auth-header.sh

out=${1:-bench/reports/paper/locust/$(date -u +%F)}
rounds=${ROUNDS:-2} rate=${RATE:-200} duration=${DURATION:-60} n=${N:-64}
addr=127.0.0.1:7951

if [ ! -x /usr/bin/locust ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-locust >/dev/null
  else
    echo "the runner needs Debian's python3-locust (/usr/bin/locust)" >&2
    exit 1
  fi
fi
mkdir -p "$out"
if [ -n "${TERN_BIN:-}" ]; then
  rm -rf "$out/raw" "$out/commands.log"
  mkdir -p "$out/raw"
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  bash scripts/build-functions.sh >/dev/null
  tern=$TERN_BIN
  commit=$(git rev-parse HEAD)
  dirty=$(tree_dirty)
  bench_settle
else
  bench_prepare
fi

data=$(mktemp -d)
node=
cleanup_node() {
  [ -n "$node" ] && kill "$node" 2>/dev/null || true
  rm -rf "$data"
  return 0
}
trap cleanup_node EXIT
if curl -s -m 1 -o /dev/null "http://$addr/healthz"; then
  echo "something already answers on $addr: stop it first" >&2
  exit 1
fi
"$tern" up --listen "$addr" --data "$data/node" --log warn 2>"$data/node.log" &
node=$!
wait_healthy "$addr"
token_file="$data/node/admin.token"
hdr=$(auth_header_file "$token_file" "$data/auth")

# The paper's request: ~1 KB of JSON for matmul-json.
python3 - "$n" >"$data/body.json" <<'PY'
import json, sys
head = {"task_id": "locust", "n": int(sys.argv[1]), "seed": 7}
body = json.dumps(head)[:-1] + ', "pad": "'
print(body + "x" * (1024 - len(body) - 2) + '"}', end="")
PY
cp "$data/body.json" "$out/raw/body.json"
curl -sf -H @"$hdr" -X POST "http://$addr/v1/functions/matmul-json/invoke" \
  --data-binary @"$data/body.json" >/dev/null

{
  echo "commit=$commit dirty=$dirty binary=$tern"
  echo "rounds=$rounds rate=$rate duration=$duration n=$n body_bytes=$(wc -c <"$data/body.json")"
  echo "load_start=$(echo $load_start | tr ' ' ,) nproc=$(nproc)"
} >"$out/raw/setup.txt"

run_locust() {
  local tag=$1
  log "locust: $rate users at 1 req/s each for ${duration}s"
  curl -sf -H @"$hdr" "http://$addr/metrics" >"$out/raw/$tag-before.prom"
  TERN_TOKEN=$(cat "$token_file") TERN_BODY_FILE="$data/body.json" TERN_USER_RPS=1 \
    /usr/bin/locust -f bench/experiments/locust/tern.py --headless -u "$rate" -r "$rate" \
    -t "${duration}s" --host "http://$addr" --csv "$out/raw/$tag" --only-summary \
    >"$out/raw/$tag.txt" 2>&1 || true
  curl -sf -H @"$hdr" "http://$addr/metrics" >"$out/raw/$tag-after.prom"
}
run_tern_bench() {
  local tag=$1
  log "tern bench: --rate $rate --duration ${duration}s"
  curl -sf -H @"$hdr" "http://$addr/metrics" >"$out/raw/$tag-before.prom"
  TERN_TOKEN=$(cat "$token_file") "$tern" bench --server "$addr" --function matmul-json \
    --data @"$data/body.json" --rate "$rate" --connections "$rate" --duration "${duration}s" \
    --warmup 0s --no-progress --json "$out/raw/$tag.json" >"$out/raw/$tag.txt"
  curl -sf -H @"$hdr" "http://$addr/metrics" >"$out/raw/$tag-after.prom"
}
for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    run_locust "locust-r$round"
    run_tern_bench "tern-bench-r$round"
  else
    run_tern_bench "tern-bench-r$round"
    run_locust "locust-r$round"
  fi
done
kill -0 "$node" 2>/dev/null || { echo "the node died during the run" >&2; exit 1; }
log done

python3 - "$out" <<'PY'
import csv, json, os, statistics, sys
sys.path.insert(0, "bench/experiments")
from analyze import delta, prom  # the placement report's Prometheus text reader
out = sys.argv[1]
raw = os.path.join(out, "raw")
setup = dict(kv.split("=", 1) for line in open(os.path.join(raw, "setup.txt")) for kv in line.split())

def server(tag):
    b, a = (prom(os.path.join(raw, f"{tag}-{w}.prom")) for w in ("before", "after"))
    count = delta(b, a, "tern_invocation_duration_seconds_count")
    total = delta(b, a, "tern_invocation_duration_seconds_sum")
    return int(round(count)), (1e3 * total / count if count else None)

rows = []
for tag in sorted(f[:-len("_stats.csv")] for f in os.listdir(raw) if f.endswith("_stats.csv")):
    agg = next(r for r in csv.DictReader(open(os.path.join(raw, f"{tag}_stats.csv"))) if r["Name"] == "Aggregated")
    count, mean_server = server(tag)
    rows.append({"client": "locust", "round": int(tag.rsplit("-r", 1)[1]), "requests": int(agg["Request Count"]),
                 "errors": int(agg["Failure Count"]), "rps": float(agg["Requests/s"]),
                 "p50_ms": float(agg["50%"]), "p99_ms": float(agg["99%"]), "mean_ms": float(agg["Average Response Time"]),
                 "server_count": count, "server_mean_ms": mean_server})
for f in sorted(f for f in os.listdir(raw) if f.startswith("tern-bench-") and f.endswith(".json")):
    tag = f[:-5]
    r = json.load(open(os.path.join(raw, f)))
    count, mean_server = server(tag)
    rows.append({"client": "tern bench", "round": int(tag.rsplit("-r", 1)[1]), "requests": r["requests"],
                 "errors": sum(r["errors_by_code"].values()), "rps": r["throughput_rps"],
                 "p50_ms": r["latency_us"]["p50"] / 1e3, "p99_ms": r["latency_us"]["p99"] / 1e3,
                 "mean_ms": r["latency_us"]["mean"] / 1e3, "server_count": count, "server_mean_ms": mean_server})
rows.sort(key=lambda r: (r["round"], r["client"]))
lines = ["# The steady profile from two clients: Locust and `tern bench`", "",
         "Generated by `bench/experiments/locust.sh` from `raw/`; not edited by hand.", "",
         f"- Build: commit `{setup['commit'][:12]}`, uncommitted changes: {setup['dirty']}; binary `{setup['binary']}`.",
         f"- One `tern up` with the product's defaults (tokens on, cells as root) on this {setup['nproc']}-CPU machine; "
         "both clients on the same CPUs.",
         f"- Workload: matmul-json, n = {setup['n']}, {setup['body_bytes']}-byte JSON requests "
         "(the paper's n is 512: at this rate that is ten times this machine).",
         f"- Locust 2.12 (Debian's python3-locust), {setup['rate']} users at 1 request/s each "
         f"(`constant_throughput`), {setup['duration']} s; `tern bench --rate {setup['rate']} "
         f"--connections {setup['rate']} --duration {setup['duration']}s` (open loop, latency from the planned send "
         "time). Locust times from the actual send, so a request that waits for a free user is not counted "
         "as waiting.",
         f"- {setup['rounds']} round(s), the order of the clients alternated. Load average at the start: {setup['load_start']}.",
         "", "| client | round | requests | errors | req/s | p50 ms | p99 ms | mean ms | server invocations | server mean ms |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in rows:
    sm = "n/a" if r["server_mean_ms"] is None else f"{r['server_mean_ms']:.2f}"
    lines.append(f"| {r['client']} | {r['round']} | {r['requests']} | {r['errors']} | {r['rps']:.1f} | "
                 f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | {r['server_count']} | {sm} |")
lines += ["", "The last two columns are the node's own count and mean time of the invocations in each "
          "client's window (`tern_invocation_duration_seconds`): where the clients' latencies differ and the "
          "server's own times differ as much, the difference is in the arrivals the clients make (Locust's users, "
          "started together, call together every second; `tern bench` spaces its requests evenly), not in how "
          "they time.", "", "Medians over rounds:", ""]
for client in ("locust", "tern bench"):
    rs = [r for r in rows if r["client"] == client]
    if rs:
        med = lambda k: statistics.median(r[k] for r in rs)
        lines.append(f"- {client}: {med('rps'):.1f} req/s, p50 {med('p50_ms'):.2f} ms, p99 {med('p99_ms'):.2f} ms, "
                     f"errors {med('errors'):.0f}")
lines.append("")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines))
print("\n".join(lines))
if not rows or any(r["requests"] == 0 for r in rows):
    sys.exit("a client recorded no requests")
PY
