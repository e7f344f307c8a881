#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls): builds the guest
# functions, runs every test in the workspace, then the timing-sensitive tests one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { echo "+ $*"; "$@"; }

run bash scripts/build-functions.sh
run cargo test --workspace -- --skip timing::
# Latency, deadline and memory bounds: alone, so other tests do not disturb the measurement.
run cargo test -p tern-node --test it timing:: -- --test-threads=1
