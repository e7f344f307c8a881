//! Deterministic discrete-event cluster simulator.
//!
//! Events are invocation arrivals (in time order) and quota intervals. Each node is a FIFO
//! multi-server queue whose service times are known when a request is admitted, so completion,
//! keep-alive expiry and eviction events are resolved lazily from timestamps instead of being
//! pushed through a heap: the outcome is identical and a run is ~10⁵–10⁶ decisions per second.
//!
//! Latency of one request = the class's access RTT + the hop RTT if it runs off its entry node +
//! queueing wait + the class's per-request overhead (0 unless calibrated) + cold-start cost (0 on
//! a warm hit; the class's reuse cost, a third of its cold start unless calibrated, if the node
//! still holds the compiled module) + execution time. Requests enter the cluster at nodes in
//! turn (round-robin over arrivals); the `rtt_ms` feature of a candidate is the hop from the entry
//! node: 0 for the entry node itself, [`SimConfig::hop_rtt_ms`] for every other node. Requests
//! that exceed the node class's time limit are killed at the limit and retried once on a
//! reference node (cost: limit + full cold start + execution), and counted as timeouts.
//! Energy is the dynamic part only (busy CPU share × time × per-core power, plus memory held by
//! idle warm instances), identical static power is left out so policies compare on what they
//! change.

//!
//! The pieces: [`classes`] (node classes), [`calibration`] (measured constants for them), [`workload`] (function specs), [`reward`] (the
//! per-request reward), [`engine`] (the event engine, [`Simulator`]) and [`stats`] (reports
//! and their summaries).

mod calibration;
mod classes;
mod engine;
mod reward;
mod stats;
#[cfg(test)]
mod tests;
mod workload;

pub use calibration::{Calibration, ClassCalibration};
pub use classes::NodeClass;
pub use engine::Simulator;
pub use reward::RewardConfig;
pub use stats::{SimReport, Summary, percentile};
pub use workload::{FunctionSpec, make_functions};

/// Simulator configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Node classes, one entry per node.
    pub nodes: Vec<NodeClass>,
    /// Quota interval, ms.
    pub interval_ms: f64,
    /// Max queued requests per slot before a node reports itself full.
    pub max_queue_per_slot: f32,
    /// Modules a node keeps compiled (LRU).
    pub module_cache: usize,
    /// Reward weights.
    pub reward: RewardConfig,
    /// Tenant weights (Eq. 6 w_i); missing tenants weigh 1.
    pub tenant_weights: Vec<f32>,
    /// Execution-time noise (log-normal sigma).
    pub exec_noise: f64,
    /// Seed for execution-time noise.
    pub seed: u64,
    /// Mask nodes whose time limit is below the function's expected execution time, for every
    /// policy (a real scheduler knows the limits; without this the heuristics lose mostly by
    /// sending heavy functions to edge nodes to time out, which flatters the learned policy).
    pub mask_infeasible: bool,
    /// RTT between two nodes, ms: a request placed off its entry node pays it once (forwarding
    /// and the reply). Entry nodes are assigned round-robin over arrivals.
    pub hop_rtt_ms: f64,
}

impl SimConfig {
    /// The heterogeneous cluster used by the benchmark: 4 edge, 3 standard, 1 burst node.
    pub fn heterogeneous(seed: u64) -> Self {
        let mut nodes = vec![NodeClass::edge(); 4];
        nodes.extend(vec![NodeClass::standard(); 3]);
        nodes.push(NodeClass::burst());
        SimConfig {
            nodes,
            interval_ms: 60_000.0,
            max_queue_per_slot: 4.0,
            module_cache: 48,
            reward: RewardConfig::default(),
            tenant_weights: Vec::new(),
            exec_noise: 0.3,
            seed,
            mask_infeasible: true,
            hop_rtt_ms: 0.2,
        }
    }
}
