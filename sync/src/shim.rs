//! The synchronisation primitives the protocols are written against: std's normally, loom's
//! under `--cfg loom` (then every atomic access, lock, park and unpark is a point where loom
//! explores other interleavings). Only what the crate uses is re-exported.

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, fence};
#[cfg(not(loom))]
pub use std::sync::{Arc, Mutex};
#[cfg(not(loom))]
pub use std::thread::{self, Thread};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, fence};
#[cfg(loom)]
pub use loom::sync::{Arc, Mutex};
#[cfg(loom)]
pub use loom::thread::{self, Thread};
