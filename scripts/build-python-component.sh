#!/usr/bin/env bash
# Build the Python guest functions (functions/python/) into wasi:http/proxy components
# with componentize-py, written to functions/dist/components/<name>-python.wasm.
#
#   scripts/build-python-component.sh          # from anywhere
#   FORCE=1 scripts/build-python-component.sh  # rebuild even if up to date
#
# componentize-py (PyPI, pinned below with its wheels' hashes) is installed once into
# a venv of its own under ~/.cache/tern/componentize-py-<version>; it needs Python >= 3.10
# (PYTHON=... to pick one) and nothing else: no Rust, no wasm-tools, no network after the
# first run. It also writes IDE/type-checker stubs of the world's bindings to
# functions/python/bindings/ (gitignored; the build itself generates real bindings on the
# fly). A build whose output is newer than its inputs (the app's .py files, the WIT, this
# script) is skipped, so a no-op run takes about 30 ms.
#
# The output is not byte-for-byte reproducible: componentize-py pre-initialises CPython
# at build time and snapshots its heap, which depends on the interpreter's random hash
# seed, so two builds of the same inputs differ by a few KiB but behave the same.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FUNCS_DIR="$(cd "$SCRIPT_DIR/../functions" && pwd)"
PY_DIR="$FUNCS_DIR/python"
WIT_DIR="$PY_DIR/wit"
OUT_DIR="$FUNCS_DIR/dist/components"
WORLD='wasi:http/proxy@0.2.0'
# <module in functions/python> -> functions/dist/components/<module>-python.wasm
APPS=(hello)

# 0.25.1 is the newest release (it also targets WASI 0.3, which this script does not use).
# The hashes are those of its Linux wheels (x86_64, aarch64); the wheel has no dependencies.
CPY_VERSION=0.25.1
CPY_HASHES=(
    sha256:8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f # manylinux_2_28_x86_64
    sha256:7b6a87c520358166843af0daa86d2312d7af4cbcbbf1e598951085cf7f2991ca # manylinux_2_28_aarch64
)
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/tern"
VENV="$CACHE_ROOT/componentize-py-$CPY_VERSION"
CPY="$VENV/bin/componentize-py"
PYTHON="${PYTHON:-python3}"

run() {
    printf '+ %s\n' "$*" >&2
    "$@"
}

# True if $1 is missing, FORCE=1, or this script or any file in functions/python named
# like one of the patterns that follow (outside bindings/ and __pycache__/) is newer.
stale() {
    local out="$1" pattern
    shift
    [[ "${FORCE:-0}" == 1 || ! -f "$out" ]] && return 0
    [[ "$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")" -nt "$out" ]] && return 0
    local names=()
    for pattern in "$@"; do
        names+=(${names[0]+-o} -name "$pattern")
    done
    [[ -n "$(find "$PY_DIR" \( -name bindings -o -name __pycache__ \) -prune -o \
        -type f \( "${names[@]}" \) -newer "$out" -print -quit)" ]]
}

# The venv counts as installed once its stamp exists, so an interrupted install is redone.
ensure_componentize_py() {
    if [[ -f "$VENV/.installed" && -x "$CPY" ]]; then
        return
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "build-python-component: componentize-py needs Python >= 3.10 (set PYTHON=...)" >&2
        exit 1
    fi
    rm -rf "$VENV"
    run "$PYTHON" -m venv "$VENV"
    {
        printf 'componentize-py==%s' "$CPY_VERSION"
        printf ' --hash=%s' "${CPY_HASHES[@]}"
        printf '\n'
    } >"$VENV/requirements.txt"
    run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: --require-hashes -r "$VENV/requirements.txt"
    local version
    version="$("$CPY" --version)"
    if [[ "$version" != "componentize-py $CPY_VERSION" ]]; then
        echo "build-python-component: $CPY says '$version', not $CPY_VERSION" >&2
        exit 1
    fi
    touch "$VENV/.installed"
}

mkdir -p "$OUT_DIR"
# A VIRTUAL_ENV of the caller's would add its site-packages to the app's module path.
unset VIRTUAL_ENV

# IDE/type-checker stubs of the world's bindings (`wit_world`, `componentize_py_types`).
bindings_stamp="$PY_DIR/bindings/.stamp"
if stale "$bindings_stamp" "*.wit"; then
    ensure_componentize_py
    rm -rf "$PY_DIR/bindings"
    run "$CPY" -q -d "$WIT_DIR" -w "$WORLD" bindings "$PY_DIR/bindings"
    touch "$bindings_stamp"
fi

for app in "${APPS[@]}"; do
    dst="$OUT_DIR/$app-python.wasm"
    if stale "$dst" "*.py" "*.wit"; then
        ensure_componentize_py
        tmp_out="$OUT_DIR/.$app-python.wasm.tmp"
        run "$CPY" -q -d "$WIT_DIR" -w "$WORLD" componentize -p "$PY_DIR" "$app" -o "$tmp_out"
        mv -f "$tmp_out" "$dst"
    fi
    printf '%-20s %10d bytes  %s\n' "$app-python.wasm" "$(stat -c %s "$dst")" "$dst"
done
