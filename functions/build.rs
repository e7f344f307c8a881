//! Gives the ordinary functions a 64 KiB shadow stack instead of Rust's 1 MiB default.
//!
//! The runtime resets every byte of a guest's linear memory between requests, and the shadow
//! stack sits at the bottom of that memory: a 1 MiB stack means a 1 MiB reset per request even
//! for echo. `recurse` keeps the default, so that it exhausts the wasm call stack (a
//! `stack overflow` trap) before its shadow stack.
fn main() {
    for bin in [
        "echo",
        "matmul-json",
        "loop",
        "membomb",
        "trap",
        "bigoutput",
        "sandbox-probe",
        "exit-code",
    ] {
        println!("cargo:rustc-link-arg-bin={bin}=-zstack-size=65536");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
