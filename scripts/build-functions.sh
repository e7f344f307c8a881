#!/usr/bin/env bash
# Build the guest WebAssembly functions (functions/, its own cargo workspace)
# for wasm32-wasip1 in release mode and copy them to functions/dist/<name>.wasm,
# then the wasi:http/proxy components (functions/components/, another workspace)
# for wasm32-wasip2 and copy them to functions/dist/components/<name>.wasm.
# Works from any cwd; a no-op build takes well under a second.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FUNCS_DIR="$(cd "$SCRIPT_DIR/../functions" && pwd)"
TARGET=wasm32-wasip1
FUNCTIONS=(echo matmul-json loop membomb recurse trap bigoutput sandbox-probe exit-code logger)
COMPONENTS_DIR="$FUNCS_DIR/components"
COMPONENT_TARGET=wasm32-wasip2
COMPONENTS=(drip echo hello inspect matmul-json)

for target in "$TARGET" "$COMPONENT_TARGET"; do
    rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
done

# cargo reads functions/.cargo/config.toml (simd128 rustflags) only when run
# from inside functions/, so cd there. Pin the target dir so an inherited
# CARGO_TARGET_DIR cannot move the artefacts away from where we copy them.
cd "$FUNCS_DIR"
export CARGO_TARGET_DIR="$FUNCS_DIR/target"
LOCKED=()
[[ -f Cargo.lock ]] && LOCKED=(--locked)
cargo build --release "${LOCKED[@]}" --target "$TARGET" --quiet

# copy_out SRC DST: copy SRC to DST unless identical (a no-op keeps DST's mtime), print its size.
copy_out() {
    local src=$1 dst=$2
    if [[ ! -f "$src" ]]; then
        echo "build-functions: missing $src" >&2
        exit 1
    fi
    if ! cmp -s "$src" "$dst" 2>/dev/null; then
        cp "$src" "$dst"
    fi
    printf '%-20s %10d bytes  %s\n' "$(basename "$dst")" "$(stat -c %s "$dst")" "$dst"
}

mkdir -p "$FUNCS_DIR/dist"
for name in "${FUNCTIONS[@]}"; do
    copy_out "$CARGO_TARGET_DIR/$TARGET/release/$name.wasm" "$FUNCS_DIR/dist/$name.wasm"
done

# The components, the same way: cd there for functions/components/.cargo/config.toml (target
# wasm32-wasip2, stack size), pin the target dir.
cd "$COMPONENTS_DIR"
export CARGO_TARGET_DIR="$COMPONENTS_DIR/target"
LOCKED=()
[[ -f Cargo.lock ]] && LOCKED=(--locked)
cargo build --release "${LOCKED[@]}" --target "$COMPONENT_TARGET" --quiet

mkdir -p "$FUNCS_DIR/dist/components"
for name in "${COMPONENTS[@]}"; do
    # A cdylib's file is named after its lib target: hyphens become underscores.
    copy_out "$CARGO_TARGET_DIR/$COMPONENT_TARGET/release/${name//-/_}.wasm" \
        "$FUNCS_DIR/dist/components/$name.wasm"
done
