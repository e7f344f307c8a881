//! Node classes: the paper's heterogeneous platforms (edge devices, servers, a burst node).

/// A node class: the paper's heterogeneous platforms.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeClass {
    /// Name for reports.
    pub name: &'static str,
    /// Class index used in features.
    pub index: u8,
    /// Memory for instances, MiB.
    pub mem_mb: f32,
    /// Execution time limit, ms.
    pub time_limit_ms: f32,
    /// Concurrency slots.
    pub concurrency: usize,
    /// Full cold-start cost, ms.
    pub cold_start_ms: f32,
    /// CPU speed relative to the reference (1.0).
    pub speed: f32,
    /// Access RTT of the class, ms (client ↔ node): part of the latency of every request the
    /// node serves. Not the `rtt_ms` feature, which is the hop from the entry node.
    pub rtt_ms: f32,
    /// Dynamic power per busy core, W.
    pub busy_w_per_core: f32,
    /// Cost of a request on a node that still holds the function's compiled module but no idle
    /// instance of it, ms; `None`: a third of the cold start (the assumed classes).
    pub reuse_ms: Option<f32>,
    /// Time every request costs on top of its execution (routing, instantiation, the answer),
    /// ms. 0 in the assumed classes; measured on real nodes by a calibration.
    pub overhead_ms: f32,
}

impl NodeClass {
    /// Latency-optimised edge node (Workers-like: tiny cold start, 50 ms limit, slow CPU).
    pub fn edge() -> Self {
        NodeClass {
            name: "edge",
            index: 0,
            mem_mb: 2048.0,
            time_limit_ms: 50.0,
            concurrency: 8,
            cold_start_ms: 4.2,
            speed: 0.7,
            rtt_ms: 2.0,
            busy_w_per_core: 4.0,
            reuse_ms: None,
            overhead_ms: 0.0,
        }
    }
    /// General-purpose node.
    pub fn standard() -> Self {
        NodeClass {
            name: "standard",
            index: 1,
            mem_mb: 4096.0,
            time_limit_ms: 300.0,
            concurrency: 8,
            cold_start_ms: 25.0,
            speed: 1.0,
            rtt_ms: 6.0,
            busy_w_per_core: 6.0,
            reuse_ms: None,
            overhead_ms: 0.0,
        }
    }
    /// CPU-burst node (Lambda-like: 63.5 ms cold start, 900 ms limit, fast CPU).
    pub fn burst() -> Self {
        NodeClass {
            name: "burst",
            index: 2,
            mem_mb: 8192.0,
            time_limit_ms: 900.0,
            concurrency: 16,
            cold_start_ms: 63.5,
            speed: 1.6,
            rtt_ms: 15.0,
            busy_w_per_core: 9.0,
            reuse_ms: None,
            overhead_ms: 0.0,
        }
    }
}

impl NodeClass {
    /// Cost of a request that finds the module compiled but no idle instance, ms, as a
    /// feature (f32): [`NodeClass::reuse_ms`] or a third of the cold start.
    pub fn reuse_cost_ms(&self) -> f32 {
        self.reuse_ms.unwrap_or(self.cold_start_ms / 3.0)
    }

    /// The same, for the event engine's f64 arithmetic (computed in f64 when assumed, so runs
    /// of the assumed classes are bit-identical to those before the field existed).
    pub(super) fn reuse_cost_ms_f64(&self) -> f64 {
        match self.reuse_ms {
            Some(r) => f64::from(r),
            None => f64::from(self.cold_start_ms) / 3.0,
        }
    }
}
