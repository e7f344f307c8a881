//! Tern's supervised actors and the pure logic they wrap.
//!
//! The invocation path is a chain of ractor actors — [`ingress`] → [`decomposer`] →
//! [`scheduler`] → [`runtime_pool`] for a `map`, [`scheduler`] → [`runtime_pool`] for a plain
//! call (see [`Pipeline`]) — under a [`NodeSupervisor`] that restarts any that fails,
//! with an [`isolator`] and a [`metrics_collector`] beside them. Actors are thin shells:
//! decisions live in pure modules ([`decompose`], [`placement`], [`admission`], [`isolation`])
//! and heavy state lives in shared objects ([`tern_runtime::Runtime`], [`tern_metrics::Metrics`]) that
//! survive an actor restart.
//!
//! Rules the shells follow:
//! - Nothing enters a mailbox without an admission permit ([`admission`]): ractor mailboxes
//!   are unbounded.
//! - Handlers only decide and forward; WebAssembly never runs inside a message handler (the
//!   RuntimePool hands each MEU to its own task), so no single mailbox caps throughput.
//! - The reply channel travels with the message. If an actor dies holding a message, the
//!   channel closes and [`Pipeline`] submits the invocation again once the supervisor has
//!   restarted the actor: an accepted invocation is answered, never silently dropped.
#![deny(unsafe_code)]

pub mod admission;
pub mod decompose;
pub mod decomposer;
mod delivery;
pub mod energy;
mod error;
pub mod ingress;
pub mod isolator;
mod message;
pub mod metrics_collector;
mod pipeline;
pub mod remote;
pub mod runtime_pool;
pub mod scheduler;
mod services;
mod supervisor;

pub use error::Error;
pub use message::{Invocation, Outcome, Reply};
pub use pipeline::Pipeline;
pub use services::{ActorKind, Services, ServicesConfig};
pub use supervisor::{NodeSupervisor, SupervisorMsg};
