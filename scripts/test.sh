#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls): builds the guest
# functions, runs every test in the workspace, the timing-sensitive tests one at a time, and
# smoke runs of the benchmarks. With --with-tch (as .ci/run calls it) it also runs the tch
# backend's lane, which installs torch from PyPI (about 4.7 GB, cached).
#
# Usage: bash scripts/test.sh [--with-tch]
set -euo pipefail
cd "$(dirname "$0")/.."
# Each command's wall time follows it, so the slow stages of a run can be read from its log.
run() {
  local t0=$SECONDS
  echo "+ $*"
  "$@"
  echo "  [$(( SECONDS - t0 )) s: $*]"
}

with_tch=0
for arg in "$@"; do
  case $arg in
    --with-tch) with_tch=1 ;;
    *) echo "usage: bash scripts/test.sh [--with-tch]" >&2; exit 2 ;;
  esac
done

# libfaketime for the chaos tool's clock jumps (Debian's faketime package), when root can install
# it; without it those tests print SKIPPED (and fail under TERN_NO_SKIP=1, as in CI).
if [[ $(id -u) == 0 ]] && ! ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1; then
  echo "+ apt-get install faketime"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q faketime >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q faketime >/dev/null; }
fi
run bash scripts/build-functions.sh
# A wasi:http component from a toolchain nobody here wrote (componentize-py from PyPI, cached
# in ~/.cache/tern; ~17 MB download the first time), for the component tests.
run bash scripts/build-python-component.sh
# tern-client must stay light: no wasmtime, tch or candle (nor ring) in its dependency graph.
echo "+ cargo tree -p tern-client -e normal,build  # must not contain wasmtime, tch, candle or ring"
client_deps=$(cargo tree -p tern-client -e normal,build --prefix none)
if grep -E '^(wasmtime|tch|torch-sys|candle|ring) ' <<<"$client_deps"; then
  echo "tern-client depends on a heavy or forbidden crate (above)" >&2
  exit 1
fi
# `online-learning` links tern-policy's trainer into the node (its tests need it); the
# workspace build has candle anyway, for tern-policy's own tests.
run cargo test --workspace --features tern-node/online-learning -- --skip timing::
# Latency, deadline and memory bounds: alone, so other tests do not disturb the measurement.
# The whole workspace selected, as above, so its dependencies resolve to the same features and
# nothing is built again (`-p tern-node` would rebuild some of them and relink the suite).
run cargo test --workspace --features tern-node/online-learning --test it timing:: -- --test-threads=1
# The node without its `online-learning` feature, as `tern up` builds it: the unit tests of
# every crate, config's included, and learned placement's without online learning. With the
# whole workspace selected, dependencies keep the features of the build above, so only the
# crates that depend on tern-placement are built again (not wasmtime and the rest).
run cargo test --workspace --lib
# tern-policy with the tch backend: torch 2.13.0 from PyPI in a venv (~4.7 GB, cached in
# ~/.cache/tern), then the crate's tests and clippy with `--features tch`.
if [[ $with_tch == 1 ]]; then
  run env CARGO_TARGET_DIR="$PWD/target" bash policy/ci/tch-lane.sh
else
  echo "+ (tch lane not run: pass --with-tch to install torch and test tern-policy's tch backend)"
fi
# tern-sync's loom models (the epoch ticker's park gate, RepollOnSelfWake): every interleaving,
# in a couple of seconds. `--cfg loom` in its own target dir, so the main one is not rebuilt.
run env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$PWD/target-loom" cargo test -p tern-sync --release --test loom
# Benchmarks are not tests, but their harnesses must keep working: each criterion benchmark
# runs once (with the workspace's features, so only the benchmarks are built), and the policy
# benchmark on a short slice of the trace.
run cargo test --workspace --features tern-node/online-learning --benches
# Built with the workspace's features (as the tests were), so nothing else is built again.
run cargo build --workspace --features tern-node/online-learning --bin policy-bench
run target/debug/policy-bench --quick --out target/policy-bench-smoke
# The experiments' runner and reports on a one-minute window (three nodes of the binary the
# tests built; about a minute each): placement, and three of the ablations.
run env TERN_BIN=target/debug/tern bash bench/experiments/real-nodes.sh placement --smoke
run env TERN_BIN=target/debug/tern bash bench/experiments/real-nodes.sh ablations --smoke
# The paper's load profiles (steady, burst, 3,000 concurrent) at cut rates (~30 s).
run env TERN_BIN=target/debug/tern bash bench/experiments/real-nodes.sh profiles --smoke
# The simulator's calibration on the same three nodes (~10 s), and the policy benchmark's
# short slice in the cluster it measured.
run env TERN_BIN=target/debug/tern bash bench/experiments/real-nodes.sh calibration --smoke
run target/debug/policy-bench --quick \
  --calibration target/experiments-smoke/calibration/calibration.json \
  --out target/policy-bench-calibrated-smoke
