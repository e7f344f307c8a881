//! Tern's integration tests: real nodes (in-process, HTTP on 127.0.0.1 port 0) running the
//! real guest functions from `functions/`. All in one test binary, as wasmtime does.
//!
//! Tests under `timing::` measure latency or memory and are run on their own, one at a time
//! (`scripts/test.sh` does this), so that other tests do not disturb them.
#![allow(clippy::unwrap_used)]

mod api;
mod auth;
mod chaos;
mod client;
mod cluster;
mod cluster_process;
mod cluster_wire;
mod components;
mod dashboard;
mod energy;
mod hostile;
mod lci;
mod logs;
mod persistence;
mod replay;
mod runtime_profile;
mod supervision;
mod support;
mod tenants;
mod timing;
mod traces;
