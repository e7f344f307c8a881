#!/usr/bin/env bash
# Runs one Tern node with the example functions (echo, matmul-json) on 127.0.0.1:7878, data in
# ./tern-data (sled + compiled artifacts). Extra arguments go to `tern up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-functions.sh
cargo build --release -p tern-node
exec target/release/tern up "$@"
