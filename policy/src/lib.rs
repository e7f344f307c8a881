//! `tern-policy`: Tern's learned scheduler.
//!
//! "Eq. N" in this crate is an equation of the paper Tern follows (a 2026 paper on serverless
//! WebAssembly at the edge); ARCHITECTURE.md §4 maps each one to code. The ones used here:
//! Eq. 1, dispatch = argmax over nodes of a learned score minus λ · expected cold-start cost;
//! Eq. 2, one function mapped to an executable per platform (node class); Eq. 5, PPO's
//! clipped surrogate objective (ε = 0.2); Eq. 6, tenant quota R_i = w_i·D_i / Σ w_j with
//! demand D_i = α_i·L_i + β_i·H_i; Eq. 7, mean latency; Eq. 8, requests per joule.
//!
//! Pure: no I/O, no clock. Time and inputs are arguments, so the SchedulerAgent (an actor) is a
//! thin shell and everything here is tested without sockets or timers.
//!
//! - [`policy`]: the dispatch and quota networks and the serving-time decisions (Eq. 1) over a
//!   plain-Rust forward pass ([`mlp`]).
//! - [`quota`]: tenant quota math (Eq. 6).
//! - [`baselines`]: round-robin, random, least-loaded, warm affinity, histogram keep-alive.
//! - [`sim`], [`trace`]: the deterministic cluster simulator and its workloads.
//! - `ppo`, `candle_backend` (and `tch_backend` with `--features tch`), `train`: PPO (Eq. 5)
//!   with a backend trait, and training in the simulator. Behind the default-on `candle`
//!   feature: the serving path builds with `default-features = false`.
//! - [`online`]: atomic weight swaps; the background trainer (`OnlineLearner`) needs the
//!   `candle` feature. [`guard`]: the rolling-reward guard that falls back to a heuristic.
//! - `bench` (`candle` feature): the `policy-bench` protocol, its results as data, and the
//!   markdown / SVG renderers. Its clock and progress output are the caller's.
//!
//! See `policy/README.md` for the model, the decisions behind it and the benchmark results.
#![forbid(unsafe_code)]

pub mod baselines;
#[cfg(feature = "candle")]
pub mod bench;
#[cfg(feature = "candle")]
pub mod candle_backend;
pub mod error;
pub mod features;
pub mod guard;
pub mod mlp;
pub mod online;
pub mod policy;
#[cfg(feature = "candle")]
pub mod ppo;
pub mod quota;
pub mod rng;
pub mod sim;
#[cfg(feature = "tch")]
pub mod tch_backend;
pub mod trace;
#[cfg(feature = "candle")]
pub mod train;

pub use error::{PolicyError, Result};
pub use features::{NodeFeatures, QuotaFeatures};
pub use policy::{DEFAULT_LAMBDA_DISPATCH, DispatchScorer, PolicyWeights, QuotaDecision};
