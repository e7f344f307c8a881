//! The Tern node: configuration, the HTTP API, durable storage (sled) and the wiring of the
//! supervised actors. The `tern` binary (main.rs) is a thin CLI over this library, and the
//! integration tests start nodes in-process through [`node::start`] (or [`node::start_with`] on
//! sockets they bound themselves).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod cells;
pub mod client_api;
pub mod clock;
pub mod cluster_quotas;
pub mod config;
mod error;
pub mod http;
pub mod idempotency;
pub mod keyed;
pub mod node;
pub mod present;
pub mod service;
pub mod sockets;
// `RepollOnSelfWake` lives in tern-sync, where loom model-checks it.
pub use tern_sync::self_wake;
pub mod store;
mod streamed;
pub mod takeover;
pub mod tenants;
pub mod traces;
pub mod watermark;

pub use config::Config;
pub use error::NodeError;
pub use node::{NodeHandle, start, start_with};
pub use sockets::Sockets;
