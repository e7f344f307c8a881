//! What one tenant's functions did on this node during the interval that just ended, and the
//! quota network's input built from it.

use tern_policy::QuotaFeatures;
use tern_policy::sim::RewardConfig;

/// One function's interval: counter differences the node takes from its metrics, plus what is
/// waiting and running right now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FunctionWindow {
    /// Invocations that finished in the interval.
    pub calls: u64,
    /// Of those MEUs, how many had to instantiate a fresh guest.
    pub cold_starts: u64,
    /// Sum of the finished invocations' end-to-end latencies, µs.
    pub latency_us: u64,
    /// Sum of the MEUs' guest execution time, µs.
    pub exec_us: u64,
    /// Sum of the cold MEUs' instantiation time, µs.
    pub cold_us: u64,
    /// Units of this function waiting for a slot now.
    pub queued: f64,
    /// Guests of this function running now.
    pub running: f64,
    /// Memory one guest of the function may use, bytes.
    pub guest_memory_bytes: u64,
}

impl FunctionWindow {
    /// Mean end-to-end latency, ms (0 without calls).
    pub fn mean_latency_ms(&self) -> f64 {
        per_call(self.latency_us, self.calls) / 1000.0
    }

    /// Mean guest execution time, ms (0 without calls).
    pub fn mean_exec_ms(&self) -> f64 {
        per_call(self.exec_us, self.calls) / 1000.0
    }

    /// Guests the function keeps busy on average (Little's law: arrivals × execution time), at
    /// least those running now.
    pub fn concurrency(&self, interval_s: f64) -> f64 {
        let little = if interval_s > 0.0 {
            self.calls as f64 / interval_s * self.mean_exec_ms() / 1000.0
        } else {
            0.0
        };
        little.max(self.running).max(0.0)
    }

    /// The quota network's input for this function (tern-policy's [`QuotaFeatures`], built the
    /// way the simulator builds it).
    ///
    /// The node keeps counters, not every gap between arrivals, so the median idle time is
    /// taken as the mean gap (interval / calls, the whole interval without calls).
    pub fn features(
        &self,
        interval_s: f64,
        tenant_weight: f64,
        node_memory_bytes: u64,
    ) -> QuotaFeatures {
        let interval_ms = interval_s * 1000.0;
        let idle_ms = if self.calls > 0 {
            interval_ms / self.calls as f64
        } else {
            interval_ms
        };
        let memory = self.running.max(0.0) * self.guest_memory_bytes as f64;
        QuotaFeatures {
            latency_ms: self.mean_latency_ms() as f32,
            queue_depth: self.queued.max(0.0) as f32,
            tenant_weight: tenant_weight as f32,
            mem_use: (memory / node_memory_bytes.max(1) as f64) as f32,
            cold_start_rate: (self.cold_starts.min(self.calls) as f64 / self.calls.max(1) as f64)
                as f32,
            arrival_rate: if interval_s > 0.0 {
                (self.calls as f64 / interval_s) as f32
            } else {
                0.0
            },
            mean_exec_ms: self.mean_exec_ms() as f32,
            idle_p50_ms: idle_ms as f32,
        }
    }
}

fn per_call(sum: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        sum as f64 / calls as f64
    }
}

/// One tenant's interval on this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantWindow {
    /// The tenant's weight (its share of contended CPU is weight / Σ weights).
    pub weight: f64,
    /// Its hard memory limit on this node (the cell's `memory.max`), if it has one: no
    /// decision goes above it.
    pub memory_max_bytes: Option<u64>,
    /// Its functions that ran or waited in the interval.
    pub functions: Vec<FunctionWindow>,
}

impl TenantWindow {
    /// Whether anything of the tenant ran, finished or waited in the interval.
    pub fn active(&self) -> bool {
        self.functions
            .iter()
            .any(|f| f.calls > 0 || f.queued > 0.0 || f.running > 0.0)
    }

    /// The interval's reward, by the reward the networks were trained with (tern-policy's
    /// [`RewardConfig`]: latency, cold start, energy, SLA), over the tenant's calls: the mean
    /// call's latency, cold-start time per call and energy of its guest CPU time at
    /// `watts_per_core`. `None` without calls (nothing to judge the decision by).
    pub fn reward(&self, reward: &RewardConfig, watts_per_core: f64) -> Option<f32> {
        let calls: u64 = self.functions.iter().map(|f| f.calls).sum();
        if calls == 0 {
            return None;
        }
        let sum = |f: fn(&FunctionWindow) -> u64| {
            self.functions.iter().map(f).fold(0u64, u64::saturating_add) as f64
        };
        let n = calls as f64;
        let latency_ms = sum(|f| f.latency_us) / n / 1000.0;
        let cold_ms = sum(|f| f.cold_us) / n / 1000.0;
        let energy_j = sum(|f| f.exec_us) / n / 1e6 * watts_per_core;
        Some(reward.reward(latency_ms, cold_ms, energy_j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> FunctionWindow {
        FunctionWindow {
            calls: 100,
            cold_starts: 10,
            latency_us: 500_000,
            exec_us: 200_000,
            cold_us: 30_000,
            queued: 3.0,
            running: 1.0,
            guest_memory_bytes: 64 << 20,
        }
    }

    #[test]
    fn features_are_the_interval_means_and_rates() {
        let f = busy().features(2.0, 3.0, 1 << 30);
        assert_eq!(f.latency_ms, 5.0);
        assert_eq!(f.mean_exec_ms, 2.0);
        assert_eq!(f.arrival_rate, 50.0);
        assert_eq!(f.cold_start_rate, 0.1);
        assert_eq!(f.queue_depth, 3.0);
        assert_eq!(f.tenant_weight, 3.0);
        assert_eq!(f.mem_use, 1.0 / 16.0);
        assert_eq!(f.idle_p50_ms, 20.0);
        assert!(f.is_finite());
    }

    #[test]
    fn an_idle_function_has_finite_features_and_the_whole_interval_as_its_idle_time() {
        let f = FunctionWindow::default().features(1.0, 1.0, 0);
        assert!(f.is_finite());
        assert_eq!(f.idle_p50_ms, 1000.0);
        assert_eq!(f.latency_ms, 0.0);
        assert_eq!(f.cold_start_rate, 0.0);
    }

    #[test]
    fn concurrency_is_littles_law_or_what_runs_now_whichever_is_more() {
        // 50 calls a second of 2 ms each keep 0.1 guests busy; one is running now.
        assert_eq!(busy().concurrency(2.0), 1.0);
        let many = FunctionWindow {
            running: 0.0,
            calls: 2_000,
            exec_us: 2_000 * 10_000,
            ..busy()
        };
        // 1,000 calls a second of 10 ms each: 10 guests.
        assert!((many.concurrency(2.0) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_tenant_without_calls_has_no_reward_and_a_slower_one_a_lower_reward() {
        let cfg = RewardConfig::default();
        let idle = TenantWindow {
            weight: 1.0,
            memory_max_bytes: None,
            functions: vec![FunctionWindow::default()],
        };
        assert_eq!(idle.reward(&cfg, 5.0), None);
        assert!(!idle.active());
        let fast = TenantWindow {
            functions: vec![busy()],
            ..idle.clone()
        };
        let slow = TenantWindow {
            functions: vec![FunctionWindow {
                latency_us: 5_000_000,
                ..busy()
            }],
            ..idle
        };
        let (f, s) = (
            fast.reward(&cfg, 5.0).unwrap_or(f32::NAN),
            slow.reward(&cfg, 5.0).unwrap_or(f32::NAN),
        );
        assert!(f > s, "fast {f} slow {s}");
        assert!(fast.active());
    }
}
