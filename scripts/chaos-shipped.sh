#!/usr/bin/env bash
# Runs the shipped chaos scenarios (`tern chaos run NAME`, release
# build, this tree) and keeps each run's report, verdict, timeline and history (gzipped) in
# OUT_DIR/<scenario>/, plus summary.txt (generated here from the verdicts; never edit it).
# The nodes' data, logs and certificates stay in a temporary directory, removed at the end.
#
# Usage: scripts/chaos-shipped.sh [OUT_DIR] [SEED]   (default bench/reports/chaos/<date>, 1)
# SCENARIOS="a b" runs only those (for more seeds of a few).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/reports/chaos/$(date -u +%Y-%m-%d)}
seed=${2:-1}
scenarios=(kill-one-under-load kill-one-under-client-load kill-one-under-trace pause-one-under-load rolling-restart add-node impostors corrupt-artifact-at-restart corrupt-sled-at-restart partition-minority partition-one-way partition-bridge lossy-link)
# disk-full needs root (a tmpfs for the node whose disk fills).
if [[ $(id -u) == 0 ]]; then
  scenarios+=(disk-full)
else
  echo "(disk-full not run: it needs root)"
fi
# clock-jumps needs libfaketime (Debian's faketime package).
if ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || [[ -n ${TERN_CHAOS_LIBFAKETIME:-} ]]; then
  scenarios+=(clock-jumps)
else
  echo "(clock-jumps not run: it needs libfaketime; apt-get install faketime)"
fi
if [[ -n ${SCENARIOS:-} ]]; then
  read -ra scenarios <<<"$SCENARIOS"
fi
bash scripts/build-functions.sh >/dev/null
cargo build --release -p tern-node
tern=target/release/tern
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
commit=$(git rev-parse --short HEAD)
dirty=$(git --no-optional-locks status --short --untracked-files=no -- . ':!bench/reports' | wc -l)
status=0
for s in "${scenarios[@]}"; do
  echo "== $s"
  rm -rf "${out:?}/$s"
  mkdir -p "$out/$s"
  if "$tern" chaos run "$s" --seed "$seed" --out "$work/$s" --examples-dir functions/dist >"$out/$s/stdout.txt" 2>&1; then
    echo "$s: passed"
  else
    echo "$s: FAILED (see $out/$s/report.md)"
    status=1
  fi
  cp "$work/$s/report.md" "$work/$s/verdict.json" "$work/$s/timeline.svg" "$out/$s/" 2>/dev/null || true
  gzip -c "$work/$s/history.jsonl" >"$out/$s/history.jsonl.gz" 2>/dev/null || true
done
python3 scripts/lib/chaos-summary.py "$out" "$commit" "$dirty" "$seed" "${scenarios[@]}" | tee "$out/summary.txt"
exit $status
