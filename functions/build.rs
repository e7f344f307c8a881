//! Gives the ordinary functions a 64 KiB shadow stack instead of Rust's 1 MiB default, and
//! echo an initial memory it never has to grow.
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
    // echo's initial memory (128 KiB) covers its 64 KiB shadow stack, its data and the heap it
    // uses (the stdio buffers; `io::copy`'s buffer is on the stack), so it never grows, and no
    // more, since the node resets all of it after every call: see README "Guests on the fast
    // path" (a growth costs the node page-protection changes on this call and the next).
    println!("cargo:rustc-link-arg-bin=echo=--initial-memory=131072");
    println!("cargo:rerun-if-changed=build.rs");
}
