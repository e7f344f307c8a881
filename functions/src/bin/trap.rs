//! `trap`: executes the wasm `unreachable` instruction immediately, so the
//! host sees a trap (not an exit code) before anything is written.

fn main() {
    core::arch::wasm32::unreachable()
}
