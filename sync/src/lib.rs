//! Tern's hand-made concurrency protocols, kept free of I/O and of other dependencies so that
//! they can be model-checked with [loom](https://docs.rs/loom): `tests/loom.rs`, run with
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom cargo test -p tern-sync --release --test loom
//! ```
//!
//! - [`ParkGate`]: how the epoch ticker parks when no guest runs, without losing the wake of
//!   the next guest (used by `tern-runtime`'s epoch ticker).
//! - [`poison`]: lock access that ignores poisoning (everything those locks guard is valid
//!   after any single update).
//! - [`RepollOnSelfWake`]: a future wrapper that turns a task waking itself during its own
//!   poll into an immediate re-poll (used by `tern-node`'s HTTP server).
//!
//! Under `--cfg loom` the primitives come from loom instead of std (see [`shim`]), and the
//! types must then be used inside `loom::model`.
#![forbid(unsafe_code)]

pub mod park_gate;
pub mod poison;
pub mod self_wake;
pub mod shim;

pub use park_gate::{ParkGate, RunningGuest, Ticker};
pub use self_wake::{MAX_REPOLLS, RepollOnSelfWake};
