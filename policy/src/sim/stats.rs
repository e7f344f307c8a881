//! What a run reports, and its summary statistics.

/// Per-run totals and the per-decision rewards (in decision order) for training.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimReport {
    /// Latencies of completed requests, ms (arrival order).
    pub latencies_ms: Vec<f32>,
    /// Requests that found no selectable node.
    pub rejected: u64,
    /// Requests that hit no idle warm instance.
    pub cold_starts: u64,
    /// Requests served with the module already compiled/loaded on the node.
    pub reuse_hits: u64,
    /// Requests killed at the time limit.
    pub timeouts: u64,
    /// Requests over the SLA.
    pub sla_misses: u64,
    /// Requests placed on another node than their entry node (they paid the hop RTT).
    pub off_entry: u64,
    /// Dynamic energy, J.
    pub energy_j: f64,
    /// Reward of each dispatch decision, in the order the dispatcher was called (rejections
    /// included, with the worst reward, so recorded decisions and rewards always line up).
    pub dispatch_rewards: Vec<f32>,
    /// Reward of each quota decision, in call order.
    pub quota_rewards: Vec<f32>,
    /// Simulated duration, ms.
    pub sim_ms: f64,
}

/// Summary statistics of a report.
///
/// With the `candle` feature it is serialisable: `policy-bench` writes it to its JSON as is, so a
/// renamed or added field changes that format (and a committed JSON may no longer load).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "candle", derive(serde::Serialize, serde::Deserialize))]
pub struct Summary {
    /// Requests served.
    pub requests: u64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Cold starts / requests.
    pub cold_rate: f64,
    /// Reuse hits / requests.
    pub reuse_rate: f64,
    /// Dynamic energy per request, mJ.
    pub energy_mj_per_req: f64,
    /// Timeouts / requests.
    pub timeout_rate: f64,
    /// Rejected requests.
    pub rejected: u64,
    /// Requests placed off their entry node / requests.
    pub off_entry_rate: f64,
    /// Mean dispatch reward.
    pub mean_reward: f64,
}

/// Nearest-rank percentile of unsorted data (`q` in 0..=1); 0 for empty input.
pub fn percentile(data: &[f32], q: f64) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f32> = data.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64
}

impl SimReport {
    /// Compute the summary.
    pub fn summary(&self) -> Summary {
        let n = self.latencies_ms.len() as f64;
        let div = n.max(1.0);
        Summary {
            requests: self.latencies_ms.len() as u64,
            mean_ms: self.latencies_ms.iter().map(|&x| x as f64).sum::<f64>() / div,
            p50_ms: percentile(&self.latencies_ms, 0.5),
            p99_ms: percentile(&self.latencies_ms, 0.99),
            cold_rate: self.cold_starts as f64 / div,
            reuse_rate: self.reuse_hits as f64 / div,
            energy_mj_per_req: self.energy_j * 1000.0 / div,
            timeout_rate: self.timeouts as f64 / div,
            rejected: self.rejected,
            off_entry_rate: self.off_entry as f64 / div,
            mean_reward: self.dispatch_rewards.iter().map(|&x| x as f64).sum::<f64>()
                / (self.dispatch_rewards.len() as f64).max(1.0),
        }
    }
}
