//! The policy benchmark behind the `policy-bench` binary, in three independent parts:
//!
//! - [`protocol`]: trains PPO per seed, runs every policy on the held-out test window, selects
//!   the committed checkpoint, and returns [`BenchData`]. No files, no printing, no clock of its
//!   own (the caller's [`Host`] provides time and takes progress lines).
//! - [`data`]: [`BenchData`], every number the report prints, with a JSON form so a committed
//!   report can be re-rendered without re-running the protocol.
//! - [`report`] and [`svg`]: pure renderers, `&BenchData` → markdown / SVG.
//!
//! The binary reads the trace, runs the protocol, and writes the JSON, the report, the chart and
//! the weights.

pub mod data;
pub mod protocol;
pub mod report;
pub mod svg;
#[cfg(test)]
mod tests;

pub use data::BenchData;
pub use protocol::{Host, Options, Outcome, run};

// Row names: the protocol writes rows under them and the report looks rows up by them, so both
// take them from here.

/// Least-loaded + fixed quota.
pub const LEAST_LOADED: &str = "least-loaded";
/// Warm affinity + fixed quota.
pub const WARM_AFFINITY: &str = "warm-affinity";
/// Warm affinity + histogram keep-alive.
pub const WARM_AFFINITY_HISTOGRAM: &str = "warm-affinity + histogram keep-alive";
/// Warm affinity with the resources the learned quota tends to pick.
pub const WARM_AFFINITY_2_CORES: &str = "warm-affinity + 2 cores, keep-warm 1";
/// Least-loaded with the resources the learned quota tends to pick.
pub const LEAST_LOADED_2_CORES: &str = "least-loaded + 2 cores, keep-warm 1";
/// The selected PPO dispatch weights with the default fixed quota.
pub const PPO_FIXED: &str = "ppo dispatch + fixed quota";
/// The selected PPO weights for both decisions: "PPO" in the targets.
pub const PPO: &str = "ppo dispatch + ppo quota";
/// [`PPO`] with dispatch behind the rolling-reward guard.
pub const PPO_GUARD: &str = "ppo + guard (fallback: warm affinity) + ppo quota";
/// Deliberately bad policy: the selected weights' scores inverted.
pub const INVERTED: &str = "inverted ppo dispatch";
/// Deliberately bad policy: the untrained initial weights.
pub const INITIAL: &str = "untrained ppo dispatch";

/// Row name of a deliberately bad policy run on its own.
pub fn bad_alone(bad: &str) -> String {
    format!("{bad} + fixed quota")
}

/// Row name of a deliberately bad policy run behind the guard.
pub fn bad_guarded(bad: &str) -> String {
    format!("{bad} + guard (fallback: warm affinity) + fixed quota")
}

/// Median (mean of the two middle values for an even count); NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
