#!/usr/bin/env bash
# A real Prometheus scraping a 3-node Tern cluster, and every query of the Grafana dashboard
# run against it. All on this machine: three `tern` processes on loopback (bearer tokens on,
# as by default), Debian's `prometheus` (installed if missing; the package registries are
# reachable), a little work (a tenant with quotas, echo calls through every node, a few
# refused calls), then each `expr` of deploy/grafana/tern.json through Prometheus's HTTP API,
# with `$instance` as `.*` and `$__rate_interval` as 30s.
#
# Fails (exit 1) if a node was not scraped at all in the last 20 s (each node's share of
# successful scrapes, 1 s apart with a 1 s timeout, and its last error are listed), a query is
# not valid PromQL, or a metric the
# dashboard names has no sample in Prometheus. Queries that are valid but empty (nothing of
# that kind happened, e.g. no failover) are listed, not failures.
#
# Usage: scripts/check-prometheus.sh [OUT_DIR]   (default bench/reports/prometheus-check)
# Writes OUT_DIR/summary.txt (generated; never edit it by hand) and OUT_DIR/queries.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/reports/prometheus-check}
mkdir -p "$out"
if ! command -v prometheus >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
bash scripts/build-functions.sh >/dev/null
cargo build --release -p tern-node
tern=target/release/tern
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

names=(a b c)
http=(127.0.0.1:7941 127.0.0.1:7942 127.0.0.1:7943)
mesh=(127.0.0.1:7951 127.0.0.1:7952 127.0.0.1:7953)
prom=127.0.0.1:7959
$tern cluster init --out "$work/pki" --nodes a,b,c >/dev/null
for i in 0 1 2; do
  peers=()
  for j in 0 1 2; do
    [ "$i" = "$j" ] || peers+=(--peer "${names[$j]}=${mesh[$j]}")
  done
  TERN_EXAMPLES='["echo"]' $tern up --node-name "${names[$i]}" --listen "${http[$i]}" \
    --data "$work/${names[$i]}" --cluster-dir "$work/pki" --cluster-listen "${mesh[$i]}" \
    "${peers[@]}" --log warn >"$work/${names[$i]}.log" 2>&1 &
  pids+=($!)
done
for h in "${http[@]}"; do
  for _ in $(seq 300); do curl -sf "http://$h/healthz" >/dev/null && break; sleep 0.1; done
done
# Node a's admin token, once every node knows it (tokens replicate): Prometheus scrapes all
# three with it. Tokens travel in files and TERN_TOKEN, never on a command line.
cp "$work/a/admin.token" "$work/admin.token"
chmod 600 "$work/admin.token"
export TERN_TOKEN
TERN_TOKEN=$(cat "$work/admin.token")
for h in "${http[@]}"; do
  for _ in $(seq 300); do
    $tern list --server "$h" --log error >/dev/null 2>&1 && break
    sleep 0.1
  done
done

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tern
    authorization:
      type: Bearer
      credentials_file: $work/admin.token
    static_configs:
      - targets: ["${http[0]}", "${http[1]}", "${http[2]}"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="$prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do curl -sf "http://$prom/-/ready" >/dev/null && break; sleep 0.1; done

# Work: a tenant with quotas and its own function, calls through every node, some refused.
$tern tenant create acme --quota max_concurrent=20 --quota max_stored_results=50 \
  --server "${http[0]}" --log warn >/dev/null
for i in 0 1 2; do
  $tern bench --server "${http[$i]}" --function echo --connections 4 --duration 5s --warmup 1s \
    --no-progress >/dev/null
done
for _ in $(seq 5); do $tern invoke no-such-function --data x --server "${http[1]}" --log error >/dev/null 2>&1 || true; done
# A guest that outlives its time limit: a failed invocation (outcome timeout).
$tern deploy loop functions/dist/loop.wasm --timeout-ms 50 --server "${http[0]}" --log warn >/dev/null
for i in 0 1 2; do $tern invoke loop --server "${http[$i]}" --log error >/dev/null 2>&1 || true; done
for i in 0 1 2; do $tern invoke echo --async --data later --server "${http[$i]}" --log error >/dev/null 2>&1 || true; done
sleep 5 # a few scrapes after the work, well inside the 30 s rate window

commit=$(git rev-parse HEAD)
dirty=$(git --no-optional-locks status --short --untracked-files=no -- . ':!bench/reports' | awk '{print $2}' | paste -sd, -)
python3 - "$prom" "$out" "$commit" "${dirty:-0}" "${http[@]}" <<'PY' | tee "$out/summary.txt"
import json, re, sys, urllib.parse, urllib.request
from datetime import datetime, timezone
prom, out, commit, dirty, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def query(q):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)
dash = json.load(open("deploy/grafana/tern.json"))
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(dash["panels"])
failures, empty, results = [], [], []
# Each target's share of successful scrapes over the work and after it (a scrape every
# second, each given a second), and what its last scrape said.
up = query('avg_over_time(up{job="tern"}[20s])')
share = {r["metric"]["instance"]: float(r["value"][1]) for r in up["data"]["result"]}
scraped = sorted(t for t, v in share.items() if v > 0)
with urllib.request.urlopen(f"http://{prom}/api/v1/targets", timeout=10) as r:
    active = json.load(r)["data"]["activeTargets"]
last = {t["labels"]["instance"]: (t["health"], t.get("lastError", ""), t.get("lastScrapeDuration", 0))
        for t in active}
for t in targets:
    if t not in scraped:
        failures.append(f"target {t} was never scraped in the last 20 s: {last.get(t)}")
metrics = sorted(set(re.findall(r"\btern_[a-z0-9_]+", " ".join(exprs))))
for m in metrics:
    r = query(f'count({{__name__="{m}",job="tern"}})')
    if r.get("status") != "success" or not r["data"]["result"]:
        failures.append(f"no samples of {m}")
for e in exprs:
    q = e.replace('"$instance"', '".*"').replace("$__rate_interval", "30s")
    r = query(q)
    if r.get("status") != "success":
        failures.append(f"query failed: {q}: {r.get('error')}")
        n = None
    else:
        n = len(r["data"]["result"])
        if n == 0:
            empty.append(q)
    results.append({"expr": q, "status": r.get("status"), "series": n})
json.dump(results, open(f"{out}/queries.json", "w"), indent=1)
print("# A real Prometheus scraping a 3-node Tern cluster; every dashboard query run against it.")
print("# Generated by scripts/check-prometheus.sh; never edit by hand.")
print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
print(f"commit: {commit}" + (f" plus uncommitted changes to {dirty}" if dirty != "0" else " (clean tree)"))
with urllib.request.urlopen(f"http://{prom}/api/v1/status/buildinfo", timeout=10) as r:
    print(f"prometheus: {json.load(r)['data'].get('version', 'unknown')}")
print(f"targets scraped: {len(scraped)} of {len(targets)}")
for t in targets:
    health, error, took = last.get(t, ("unknown", "", 0))
    print(f"  {t}: {share.get(t, 0):.0%} of scrapes in the last 20 s succeeded; last scrape "
          f"{health} in {float(took) * 1000:.0f} ms" + (f" ({error})" if error else ""))
print(f"metrics named by the dashboard: {len(metrics)}; with samples: {len(metrics) - sum(f.startswith('no samples') for f in failures)}")
print(f"queries: {len(exprs)}; succeeded: {sum(r['status'] == 'success' for r in results)}; "
      f"with data: {sum(bool(r['series']) for r in results)}")
for q in empty:
    print(f"empty (valid, nothing of the kind happened): {q}")
for f in failures:
    print(f"FAILURE: {f}")
print("result:", "FAILED" if failures else "ok")
sys.exit(1 if failures else 0)
PY
