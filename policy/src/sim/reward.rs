//! The per-request reward every policy is trained and judged on.

/// Weights of the per-request reward and its SLA term.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardConfig {
    /// Extra weight on cold-start ms (λ of the reward).
    pub lambda: f32,
    /// Weight on energy, ms-equivalent per joule (μ).
    pub mu: f32,
    /// SLA latency, ms.
    pub sla_ms: f32,
    /// Penalty for missing the SLA (in reward units, i.e. after the /100 scale).
    pub sla_penalty: f32,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            lambda: 1.0,
            mu: 2.0,
            sla_ms: 150.0,
            sla_penalty: 1.0,
        }
    }
}

impl RewardConfig {
    /// Reward = −(latency + λ·cold + μ·energy)/100 − SLA penalty if latency > SLA; clipped to
    /// [−10, 0] so one pathological request cannot dominate a batch's advantages.
    pub fn reward(&self, latency_ms: f64, cold_ms: f64, energy_j: f64) -> f32 {
        let cost = latency_ms + self.lambda as f64 * cold_ms + self.mu as f64 * energy_j;
        let mut r = -(cost / 100.0) as f32;
        if latency_ms > self.sla_ms as f64 {
            r -= self.sla_penalty;
        }
        r.clamp(-10.0, 0.0)
    }
}
