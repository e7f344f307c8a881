#!/usr/bin/env bash
# Build the guest WebAssembly functions (functions/, its own cargo workspace)
# for wasm32-wasip1 in release mode and copy them to functions/dist/<name>.wasm.
# Works from any cwd; a no-op build takes well under a second.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FUNCS_DIR="$(cd "$SCRIPT_DIR/../functions" && pwd)"
TARGET=wasm32-wasip1
FUNCTIONS=(echo matmul-json loop membomb recurse trap bigoutput sandbox-probe exit-code logger)

rustup target add "$TARGET" >/dev/null 2>&1 || rustup target add "$TARGET"

# cargo reads functions/.cargo/config.toml (simd128 rustflags) only when run
# from inside functions/, so cd there. Pin the target dir so an inherited
# CARGO_TARGET_DIR cannot move the artefacts away from where we copy them.
cd "$FUNCS_DIR"
export CARGO_TARGET_DIR="$FUNCS_DIR/target"
LOCKED=()
[[ -f Cargo.lock ]] && LOCKED=(--locked)
cargo build --release "${LOCKED[@]}" --target "$TARGET" --quiet

mkdir -p "$FUNCS_DIR/dist"
for name in "${FUNCTIONS[@]}"; do
    src="$CARGO_TARGET_DIR/$TARGET/release/$name.wasm"
    dst="$FUNCS_DIR/dist/$name.wasm"
    if [[ ! -f "$src" ]]; then
        echo "build-functions: missing $src" >&2
        exit 1
    fi
    if ! cmp -s "$src" "$dst" 2>/dev/null; then
        cp "$src" "$dst"
    fi
    printf '%-20s %10d bytes  %s\n' "$name.wasm" "$(stat -c %s "$dst")" "$dst"
done
