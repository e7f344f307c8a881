#!/usr/bin/env bash
# CI lane for tern-policy's `tch` backend: installs torch 2.13.0 from PyPI into a virtualenv,
# points tch's build script at it (LIBTORCH_USE_PYTORCH=1) and runs the crate's tests with
# `--features tch`, including the candle / tch / plain-Rust agreement test.
#
# Why the full PyPI wheel: PyPI only has the CUDA build of torch for Linux. `--no-deps` gets
# just the 527 MB torch wheel, but libtorch_cpu.so itself needs libcudart & co. (ldd: "not
# found"), so nothing links or loads. With its nvidia-* dependencies the venv is ~4.7 GB and took
# 3 min 54 s to install here (first time; pip's cache makes repeats faster). The venv is kept in
# $TERN_TORCH_VENV (default ~/.cache/tern/torch-2.13.0) and reused when torch imports.
#
# Usage: bash policy/ci/tch-lane.sh   (from anywhere in the repo)
set -euo pipefail

TORCH_VERSION=2.13.0 # must match torch-sys 0.26's TORCH_VERSION (see its build.rs)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${TERN_TORCH_VENV:-$HOME/.cache/tern/torch-$TORCH_VERSION}
# Shares the default policy lane's target dir: only tern-policy, tch and torch-sys rebuild.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target-policy}
start=$(date +%s)

if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "tch-lane: installing torch $TORCH_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --progress-bar off "torch==$TORCH_VERSION"
fi
echo "tch-lane: torch ready after $(( $(date +%s) - start )) s"

export VIRTUAL_ENV=$venv # torch-sys's build script then runs `python` (the venv's) not python3
export PATH=$venv/bin:$PATH
export LIBTORCH_USE_PYTORCH=1
site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
# Runtime library path: libtorch*.so, and the nvidia libraries they need (also needed by the
# linker to resolve libtorch_cuda.so's dependencies when linking the test binaries).
ld=$site/torch/lib
for d in "$site"/nvidia/*/lib; do ld=$ld:$d; done
export LD_LIBRARY_PATH=$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

cd "$repo"
cargo test -p tern-policy --features tch
# This lane is the only place the tch code compiles: lint it here too.
cargo clippy -p tern-policy --all-targets --features tch -- -D warnings
echo "tch-lane: done in $(( $(date +%s) - start )) s"
