//! Observations: what the dispatch and quota networks see.
//!
//! Raw fields are in physical units (ms, counts, fractions) so callers (the SchedulerAgent, the
//! simulator) fill them without knowing the network; `to_vector` does the one normalisation both
//! training and serving use, so the two can never disagree about scaling.

/// Number of node classes the one-hot encoding has room for. Classes beyond this share the last slot.
pub const NODE_CLASSES: usize = 3;
/// Length of the per-node feature vector fed to the dispatch network.
pub const NODE_FEATURES: usize = 10 + NODE_CLASSES;
/// Length of the per-function feature vector fed to the quota network.
pub const QUOTA_FEATURES: usize = 8;

/// One candidate node as seen when placing one invocation of one function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeFeatures {
    /// Idle warm instances of *this* function on the node.
    pub warm_instances: f32,
    /// Requests waiting for a slot on the node.
    pub queue_depth: f32,
    /// Concurrency slots of the node (≥ 1).
    pub concurrency: f32,
    /// Fraction of CPU in use, 0..1.
    pub cpu_util: f32,
    /// Fraction of memory in use, 0..1.
    pub mem_util: f32,
    /// Expected cold-start cost on this node if no warm instance is available, ms
    /// (0 when a warm instance exists). This is c_t of Eq. 1.
    pub expected_cold_ms: f32,
    /// Recent (EWMA) end-to-end latency on this node, ms.
    pub recent_latency_ms: f32,
    /// Round-trip time from the deciding node, ms.
    pub rtt_ms: f32,
    /// Expected execution time of this function on this node, ms.
    pub expected_exec_ms: f32,
    /// Execution time limit of the node class, ms.
    pub time_limit_ms: f32,
    /// Relative CPU speed of the node class (1.0 = reference).
    pub speed: f32,
    /// Node class index (0 = latency-optimised edge, 1 = standard, 2 = CPU-burst).
    pub class: u8,
    /// Node is alive (a dead node is never chosen).
    pub alive: bool,
    /// Node can take the invocation (memory / admission); a full node is never chosen.
    pub has_capacity: bool,
}

impl Default for NodeFeatures {
    fn default() -> Self {
        NodeFeatures {
            warm_instances: 0.0,
            queue_depth: 0.0,
            concurrency: 1.0,
            cpu_util: 0.0,
            mem_util: 0.0,
            expected_cold_ms: 0.0,
            recent_latency_ms: 0.0,
            rtt_ms: 0.0,
            expected_exec_ms: 0.0,
            time_limit_ms: 1_000.0,
            speed: 1.0,
            class: 0,
            alive: true,
            has_capacity: true,
        }
    }
}

/// log(1 + x) scaled so typical millisecond values land in 0..~1.5.
#[inline]
fn log_ms(x: f32) -> f32 {
    (1.0 + x.max(0.0)).ln() / 7.0
}

impl NodeFeatures {
    /// Every numeric field is finite. Non-finite candidates are masked rather than scored,
    /// because a NaN score would poison argmax and the softmax.
    pub fn is_finite(&self) -> bool {
        [
            self.warm_instances,
            self.queue_depth,
            self.concurrency,
            self.cpu_util,
            self.mem_util,
            self.expected_cold_ms,
            self.recent_latency_ms,
            self.rtt_ms,
            self.expected_exec_ms,
            self.time_limit_ms,
            self.speed,
        ]
        .iter()
        .all(|v| v.is_finite())
    }

    /// Whether this candidate may be chosen at all.
    pub fn selectable(&self) -> bool {
        self.alive && self.has_capacity && self.is_finite()
    }

    /// Normalised feature vector (length [`NODE_FEATURES`]).
    pub fn to_vector(&self) -> [f32; NODE_FEATURES] {
        let conc = self.concurrency.max(1.0);
        let wait_ms = self.queue_depth.max(0.0) * self.expected_exec_ms.max(0.0) / conc;
        let mut v = [0.0f32; NODE_FEATURES];
        v[0] = (self.warm_instances.max(0.0) / 4.0).min(2.0);
        v[1] = (self.queue_depth.max(0.0) / conc).min(4.0) / 4.0;
        v[2] = self.cpu_util.clamp(0.0, 1.0);
        v[3] = self.mem_util.clamp(0.0, 1.0);
        v[4] = log_ms(self.expected_cold_ms);
        v[5] = log_ms(self.recent_latency_ms);
        v[6] = log_ms(self.rtt_ms);
        v[7] = (self.expected_exec_ms.max(0.0) / self.time_limit_ms.max(1.0)).min(2.0);
        v[8] = self.speed.clamp(0.0, 4.0);
        v[9] = log_ms(wait_ms);
        let class = (self.class as usize).min(NODE_CLASSES - 1);
        v[10 + class] = 1.0;
        v
    }
}

/// One function (of one tenant) as seen by the quota network each interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QuotaFeatures {
    /// Recent mean latency L, ms.
    pub latency_ms: f32,
    /// Queue depth H (requests waiting for this function).
    pub queue_depth: f32,
    /// Tenant weight w (Eq. 6).
    pub tenant_weight: f32,
    /// Memory in use by this function's instances, fraction of the cluster.
    pub mem_use: f32,
    /// Cold starts / invocations over the last interval, 0..1.
    pub cold_start_rate: f32,
    /// Invocations per second over the last interval.
    pub arrival_rate: f32,
    /// Mean execution time, ms.
    pub mean_exec_ms: f32,
    /// Median idle time between invocations, ms.
    pub idle_p50_ms: f32,
}

impl QuotaFeatures {
    /// Every field is finite.
    pub fn is_finite(&self) -> bool {
        [
            self.latency_ms,
            self.queue_depth,
            self.tenant_weight,
            self.mem_use,
            self.cold_start_rate,
            self.arrival_rate,
            self.mean_exec_ms,
            self.idle_p50_ms,
        ]
        .iter()
        .all(|v| v.is_finite())
    }

    /// Normalised feature vector (length [`QUOTA_FEATURES`]).
    pub fn to_vector(&self) -> [f32; QUOTA_FEATURES] {
        [
            log_ms(self.latency_ms),
            log_ms(self.queue_depth),
            self.tenant_weight.clamp(0.0, 10.0) / 4.0,
            self.mem_use.clamp(0.0, 1.0),
            self.cold_start_rate.clamp(0.0, 1.0),
            log_ms(self.arrival_rate),
            log_ms(self.mean_exec_ms),
            log_ms(self.idle_p50_ms) / 2.0,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_one_hot_and_clamping() {
        let f = NodeFeatures {
            class: 9,
            cpu_util: 5.0,
            queue_depth: 100.0,
            ..NodeFeatures::default()
        };
        let v = f.to_vector();
        assert_eq!(v[10 + NODE_CLASSES - 1], 1.0);
        assert_eq!(v[2], 1.0);
        assert_eq!(v[1], 1.0);
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn nan_makes_candidate_unselectable() {
        let f = NodeFeatures {
            rtt_ms: f32::NAN,
            ..NodeFeatures::default()
        };
        assert!(!f.selectable());
        assert!(NodeFeatures::default().selectable());
        let dead = NodeFeatures {
            alive: false,
            ..NodeFeatures::default()
        };
        assert!(!dead.selectable());
    }
}
