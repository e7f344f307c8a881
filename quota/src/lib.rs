//! Each tenant's resource quota on a node, decided every interval (the paper's quota policy
//! network, §3.3, with Eq. 6 as its guard).
//!
//! Every `quota_interval` the node hands [`QuotaController::decide`] what each tenant's
//! functions did in the interval ([`TenantWindow`]: calls, cold starts, latency and execution
//! sums from its metrics; what waits and runs now). For each active tenant the controller asks
//! the arm its guard has in charge:
//! - **learned**: tern-policy's quota network (plain-Rust forward pass over exported weights)
//!   picks a CPU share, a memory tier and a keep-warm count for each of the tenant's active
//!   functions, per guest, as in the simulator it was trained in; their sum becomes the
//!   tenant's cell CPU cap, `memory_high` and keep-warm time ([`TenantQuota`]);
//! - **static Eq. 6 shares**: CPU split by tenant weight under contention (the cell's
//!   `cpu.weight`, always in force), no cap, the tenant's hard memory quota, the node's
//!   keep-warm time.
//!
//! The decision a tenant had is judged at the next call by the interval's reward (the reward
//! the networks were trained with), and tern-policy's rolling-reward [`Guard`] keeps the
//! network in charge only while its rolling mean is no worse than the static shares' minus
//! [`GUARD_MARGIN`]; one decision in [`GUARD_PROBE_EVERY`] goes to the other arm.
//!
//! No decision goes past a tenant's hard quotas: the cell's `memory.max` and weight come from
//! the tenant's spec and are not the controller's to change.
//!
//! Pure: no clock, no I/O; the node's upkeep passes the windows in and applies the answers.
//!
//! [`Guard`]: tern_policy::online::Guard

mod controller;
mod window;

pub use controller::{
    Decisions, GUARD_MARGIN, GUARD_PROBE_EVERY, GUARD_WINDOW, MIN_CPU_CORES, QuotaController,
    QuotaSettings, Source, TenantQuota,
};
pub use tern_policy::sim::RewardConfig;
pub use window::{FunctionWindow, TenantWindow};

/// Why a controller cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The quota network's weights have the wrong widths or a non-finite value.
    #[error("quota network: {0}")]
    Weights(#[from] tern_policy::PolicyError),
    /// A setting out of range (named).
    #[error("quota settings: {0}")]
    Settings(String),
}

#[cfg(test)]
mod tests;
