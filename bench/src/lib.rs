//! `tern-bench`: an HTTP/1.1 load generator and experiment reports for Tern.
//!
//! * [`http`]: a tiny keep-alive HTTP/1.1 client (one TCP connection per [`HttpConn`]).
//! * [`load`]: closed- and open-loop load generation ([`run`]).
//! * [`replay`]: a per-minute invocation trace turned into a plan of timed requests.
//! * [`record`]: one record per request, written as JSON Lines.
//! * [`prom`]: a minimal Prometheus text-format parser (sum of a metric over all labels).
//! * [`report`]: the [`Report`] of a run, as a text table or JSON.

pub mod error;
pub mod http;
pub mod load;
pub mod prom;
pub mod record;
pub mod replay;
pub mod report;

pub use error::BenchError;
pub use http::{HttpConn, Response, request_once};
pub use load::{LoadConfig, LoadMode, run, run_with_records};
pub use report::Report;
