//! Tenant quota math, Eq. 6: `R_i = w_i · D_i / Σ_j w_j`, `D_i = α_i · L_i + β_i · H_i`.

use crate::error::{PolicyError, Result};

/// One tenant's inputs to Eq. 6 for one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantDemand {
    /// Weight w_i (≥ 0).
    pub weight: f64,
    /// α_i: preference for regulating latency.
    pub alpha: f64,
    /// β_i: preference for regulating backlog.
    pub beta: f64,
    /// L_i: recent latency level (ms).
    pub latency_ms: f64,
    /// H_i: task queue depth.
    pub queue_depth: f64,
}

impl TenantDemand {
    /// Driver factor D_i = α_i · L_i + β_i · H_i.
    pub fn driver(&self) -> f64 {
        self.alpha * self.latency_ms + self.beta * self.queue_depth
    }
}

fn check(tenants: &[TenantDemand]) -> Result<f64> {
    if tenants.is_empty() {
        return Err(PolicyError::InvalidInput("no tenants".into()));
    }
    for (i, t) in tenants.iter().enumerate() {
        let vals = [t.weight, t.alpha, t.beta, t.latency_ms, t.queue_depth];
        if vals.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(PolicyError::InvalidInput(format!(
                "tenant {i}: every Eq. 6 input must be finite and ≥ 0, got {t:?}"
            )));
        }
    }
    let sum_w: f64 = tenants.iter().map(|t| t.weight).sum();
    if sum_w <= 0.0 {
        return Err(PolicyError::InvalidInput("tenant weights sum to 0".into()));
    }
    Ok(sum_w)
}

/// Eq. 6 exactly as written: `R_i = w_i · D_i / Σ_j w_j` (in driver units, not normalised).
pub fn eq6_quotas(tenants: &[TenantDemand]) -> Result<Vec<f64>> {
    let sum_w = check(tenants)?;
    Ok(tenants
        .iter()
        .map(|t| t.weight * t.driver() / sum_w)
        .collect())
}

/// Split `capacity` (CPU cores, MiB, …) in proportion to Eq. 6's R_i, with a floor so that a
/// tenant with no recent demand still gets `min_share` of the capacity (otherwise an idle tenant
/// would get 0 and could never start). Shares sum to `capacity` exactly (up to rounding).
/// If every driver is zero, capacity is split by weight alone.
pub fn allocate(tenants: &[TenantDemand], capacity: f64, min_share: f64) -> Result<Vec<f64>> {
    if !capacity.is_finite() || capacity < 0.0 || !(0.0..=1.0).contains(&min_share) {
        return Err(PolicyError::InvalidInput(format!(
            "capacity {capacity} / min_share {min_share} out of range"
        )));
    }
    let r = eq6_quotas(tenants)?;
    let n = tenants.len() as f64;
    // The floor can never take more than the whole capacity.
    let floor = (min_share * capacity).min(capacity / n);
    let rest = capacity - floor * n;
    let sum_r: f64 = r.iter().sum();
    let sum_w: f64 = tenants.iter().map(|t| t.weight).sum();
    Ok(tenants
        .iter()
        .zip(&r)
        .map(|(t, ri)| {
            let frac = if sum_r > 0.0 {
                ri / sum_r
            } else {
                t.weight / sum_w
            };
            floor + rest * frac
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(w: f64, a: f64, b: f64, l: f64, h: f64) -> TenantDemand {
        TenantDemand {
            weight: w,
            alpha: a,
            beta: b,
            latency_ms: l,
            queue_depth: h,
        }
    }

    #[test]
    fn eq6_matches_hand_computation() {
        // D = [1·10 + 2·3, 0.5·40 + 0] = [16, 20]; Σw = 3; R = [1·16/3, 2·20/3]
        let r = eq6_quotas(&[t(1.0, 1.0, 2.0, 10.0, 3.0), t(2.0, 0.5, 1.0, 40.0, 0.0)]).unwrap();
        assert!((r[0] - 16.0 / 3.0).abs() < 1e-12);
        assert!((r[1] - 40.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn allocate_sums_to_capacity_and_respects_floor() {
        let ts = [
            t(1.0, 1.0, 0.0, 100.0, 0.0),
            t(1.0, 1.0, 0.0, 0.0, 0.0),
            t(3.0, 1.0, 1.0, 50.0, 5.0),
        ];
        let a = allocate(&ts, 8.0, 0.05).unwrap();
        assert!((a.iter().sum::<f64>() - 8.0).abs() < 1e-9);
        assert!(
            (a[1] - 0.4).abs() < 1e-9,
            "idle tenant gets exactly the floor: {a:?}"
        );
        assert!(a[2] > a[0], "heavier weight and larger driver wins: {a:?}");
    }

    #[test]
    fn zero_demand_splits_by_weight() {
        let a = allocate(
            &[t(1.0, 1.0, 1.0, 0.0, 0.0), t(3.0, 1.0, 1.0, 0.0, 0.0)],
            4.0,
            0.0,
        )
        .unwrap();
        assert!(
            (a[0] - 1.0).abs() < 1e-9 && (a[1] - 3.0).abs() < 1e-9,
            "{a:?}"
        );
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        assert!(eq6_quotas(&[]).is_err());
        assert!(eq6_quotas(&[t(f64::NAN, 1.0, 1.0, 1.0, 1.0)]).is_err());
        assert!(eq6_quotas(&[t(-1.0, 1.0, 1.0, 1.0, 1.0)]).is_err());
        assert!(eq6_quotas(&[t(0.0, 1.0, 1.0, 1.0, 1.0)]).is_err());
        assert!(allocate(&[t(1.0, 1.0, 1.0, 1.0, 1.0)], f64::INFINITY, 0.0).is_err());
        assert!(allocate(&[t(1.0, 1.0, 1.0, 1.0, 1.0)], 1.0, 2.0).is_err());
    }
}
