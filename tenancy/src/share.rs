//! The paper's Eq. 6: each tenant's dynamic share of the node's instance slots,
//!
//! ```text
//! R_i = w_i · D_i / Σ_j w_j · D_j          (over tenants j with queued work)
//! D_i = 1 + α · min(E, max(0, L_i / T_i − 1)) + β · min(1, Q_i / Qmax_i)
//! ```
//!
//! `w_i` is the tenant's weight, `L_i` its recent latency level and `T_i` its SLA class's
//! latency target (both in ms, for the wait between admission and a slot), `Q_i` its queued
//! invocations and `Qmax_i` its queue quota. α, β and the cap E are [`ShareParams`].
//!
//! The paper names the inputs of the demand factor `D_i` (latency level and queue depth,
//! weighted by α and β) but not its exact form; `tern-policy`'s `quota` module implements the
//! literal `D_i = α·L_i + β·H_i` with `R_i` divided by `Σ w_j` only. This module normalises by
//! `Σ w_j·D_j` instead, so the shares are fractions that sum to 1 (the ratios `R_i / R_j` are
//! the same either way), and chooses a dimensionless `D_i` for these reasons:
//!
//! - **The constant 1**: a tenant that meets its target with an empty queue has `D_i = 1`, so
//!   in the calm case shares are exactly the weights, and a tenant never gets a zero share just
//!   because it has no latency history yet (the literal form needs a floor for that).
//! - **Latency relative to the target, only the excess**: a batch tenant with 10 s waits and a
//!   30 s target is not urgent, an interactive one with 100 ms waits and a 50 ms target is;
//!   raw milliseconds would reward slow SLA classes. Meeting the target earns nothing extra.
//! - **Queue depth relative to the tenant's own queue quota**: dimensionless, and comparable
//!   between a tenant allowed 10 queued calls and one allowed 10 000.
//! - **Both terms bounded** (by E and by 1): `D_i` lies in `[1, 1 + α·E + β]`, so urgency can
//!   shift shares by at most that factor and never starve a tenant whatever its weight (with
//!   the defaults α = 1, β = 1, E = 2: at most 4×). A tenant flooding its queue or running
//!   functions that make its own waits long gains a bounded amount, not the node.
//!
//! Only tenants with queued work take part (the share is work-conserving): an idle tenant's
//! share goes to the others, and comes back the moment it queues something.

use crate::error::Error;

/// α, β and the latency cap E of the demand factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShareParams {
    alpha: f64,
    beta: f64,
    max_latency_excess: f64,
}

impl Default for ShareParams {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: 1.0,
            max_latency_excess: 2.0,
        }
    }
}

impl ShareParams {
    /// Every parameter must be finite and non-negative. α = β = 0 gives plain weighted
    /// fairness.
    pub fn new(alpha: f64, beta: f64, max_latency_excess: f64) -> Result<Self, Error> {
        for (v, reason) in [
            (alpha, "alpha must be finite and >= 0"),
            (beta, "beta must be finite and >= 0"),
            (
                max_latency_excess,
                "the latency cap must be finite and >= 0",
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidShareParams { reason });
            }
        }
        Ok(Self {
            alpha,
            beta,
            max_latency_excess,
        })
    }

    /// Plain weighted fairness: `D_i = 1` for everyone.
    pub fn weights_only() -> Self {
        Self {
            alpha: 0.0,
            beta: 0.0,
            max_latency_excess: 0.0,
        }
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    pub fn beta(&self) -> f64 {
        self.beta
    }

    pub fn max_latency_excess(&self) -> f64 {
        self.max_latency_excess
    }

    /// The largest `D_i` can be.
    pub fn max_demand(&self) -> f64 {
        1.0 + self.alpha * self.max_latency_excess + self.beta
    }
}

/// One tenant's inputs to Eq. 6 at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TenantLoad {
    /// `w_i`.
    pub weight: u32,
    /// `L_i`: the tenant's recent latency level, ms.
    pub latency_ms: f64,
    /// `T_i`: its SLA latency target, ms.
    pub target_ms: u32,
    /// `Q_i`: invocations queued.
    pub queued: u32,
    /// `Qmax_i`: its queue quota.
    pub max_queued: u32,
}

/// `D_i`. Total: measurements that are not finite or negative count as "on target", a zero
/// target as 1 ms and a zero queue quota as a full queue when anything is queued, so a bad
/// sample degrades to plain weights instead of poisoning every share.
pub fn demand(params: &ShareParams, load: &TenantLoad) -> f64 {
    let target = f64::from(load.target_ms.max(1));
    let latency = if load.latency_ms.is_finite() && load.latency_ms > 0.0 {
        load.latency_ms
    } else {
        0.0
    };
    let excess = (latency / target - 1.0).clamp(0.0, params.max_latency_excess);
    let fill = if load.queued == 0 {
        0.0
    } else {
        (f64::from(load.queued) / f64::from(load.max_queued.max(1))).min(1.0)
    };
    1.0 + params.alpha * excess + params.beta * fill
}

/// `R_i` for every tenant, in input order: 0 for tenants with nothing queued (and for a
/// weight of 0, which a validated tenant never has), the rest summing to 1. All zeros when no
/// tenant has queued work.
pub fn shares(params: &ShareParams, loads: &[TenantLoad]) -> Vec<f64> {
    let raw: Vec<f64> = loads
        .iter()
        .map(|l| {
            if l.queued == 0 {
                0.0
            } else {
                f64::from(l.weight) * demand(params, l)
            }
        })
        .collect();
    let total: f64 = raw.iter().sum();
    if total <= 0.0 {
        return vec![0.0; loads.len()];
    }
    raw.into_iter().map(|r| r / total).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(weight: u32, latency_ms: f64, target_ms: u32, queued: u32) -> TenantLoad {
        TenantLoad {
            weight,
            latency_ms,
            target_ms,
            queued,
            max_queued: 100,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn on_target_with_equally_full_queues_the_shares_are_the_weights() {
        // α = β = 1, E = 2. Both at their target; queues 10/100 and 10/100:
        // D = 1 + 0 + 0.1 = 1.1 each, so R = w / Σw = 1/4, 3/4.
        let r = shares(
            &ShareParams::default(),
            &[load(1, 500.0, 500, 10), load(3, 100.0, 500, 10)],
        );
        assert!(close(r[0], 0.25) && close(r[1], 0.75), "{r:?}");
    }

    #[test]
    fn latency_over_target_and_a_fuller_queue_raise_the_share_by_hand_computed_amounts() {
        // A: w=1, L=150, T=50 → excess 2 (at the cap), queue 50/100 → D = 1 + 2 + 0.5 = 3.5
        // B: w=2, L=250, T=500 → excess 0, queue 100/100 → D = 1 + 0 + 1 = 2
        // C: w=1, L=1000, T=500 → excess 1, queue 20/100 → D = 1 + 1 + 0.2 = 2.2
        // w·D = 3.5, 4, 2.2; Σ = 9.7.
        let p = ShareParams::default();
        let loads = [
            load(1, 150.0, 50, 50),
            load(2, 250.0, 500, 100),
            load(1, 1000.0, 500, 20),
        ];
        assert!(close(demand(&p, &loads[0]), 3.5));
        assert!(close(demand(&p, &loads[1]), 2.0));
        assert!(close(demand(&p, &loads[2]), 2.2));
        let r = shares(&p, &loads);
        for (got, want) in r.iter().zip([3.5 / 9.7, 4.0 / 9.7, 2.2 / 9.7]) {
            assert!(close(*got, want), "{r:?}");
        }
    }

    #[test]
    fn alpha_and_beta_scale_their_terms() {
        // α = 0.5, β = 2, E = 10; L/T = 5 → excess 4; queue 25/100 → D = 1 + 2 + 0.5 = 3.5.
        let p = ShareParams::new(0.5, 2.0, 10.0).unwrap();
        assert!(close(demand(&p, &load(1, 250.0, 50, 25)), 3.5));
        assert!(close(p.max_demand(), 1.0 + 5.0 + 2.0));
    }

    #[test]
    fn latency_excess_is_capped_so_no_tenant_can_claim_everything() {
        let p = ShareParams::default();
        let absurd = demand(&p, &load(1, 1e12, 1, 100));
        assert!(close(absurd, p.max_demand()));
        // Against a weight-1 tenant at D = 1 + β (full queue), the absurd one gets at most
        // 4 / (4 + 2) of the slots.
        let r = shares(&p, &[load(1, 1e12, 1, 100), load(1, 0.0, 500, 100)]);
        assert!(close(r[0], 4.0 / 6.0), "{r:?}");
    }

    #[test]
    fn only_tenants_with_queued_work_share() {
        // The idle weight-5 tenant takes no share; 1 and 2 split everything 1:2.
        let p = ShareParams::weights_only();
        let r = shares(
            &p,
            &[
                load(1, 0.0, 500, 3),
                load(2, 0.0, 500, 3),
                load(5, 0.0, 500, 0),
            ],
        );
        assert!(
            close(r[0], 1.0 / 3.0) && close(r[1], 2.0 / 3.0) && r[2] == 0.0,
            "{r:?}"
        );
        assert_eq!(shares(&p, &[load(1, 0.0, 500, 0)]), vec![0.0]);
        assert!(shares(&p, &[]).is_empty());
    }

    #[test]
    fn garbage_measurements_degrade_to_weights_instead_of_poisoning_the_shares() {
        let p = ShareParams::new(1.0, 0.0, 2.0).unwrap();
        for latency in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0] {
            assert!(
                close(demand(&p, &load(1, latency, 500, 1)), 1.0),
                "{latency}"
            );
        }
        // Zero target: treated as 1 ms. Zero queue quota with something queued: a full queue.
        assert!(close(demand(&p, &load(1, 2.0, 0, 1)), 2.0));
        let q = ShareParams::new(0.0, 1.0, 0.0).unwrap();
        let zero_quota = TenantLoad {
            max_queued: 0,
            ..load(1, 0.0, 500, 1)
        };
        assert!(close(demand(&q, &zero_quota), 2.0));
    }

    #[test]
    fn invalid_params_are_typed_errors() {
        for (a, b, e) in [
            (-1.0, 1.0, 1.0),
            (1.0, f64::NAN, 1.0),
            (1.0, 1.0, f64::INFINITY),
        ] {
            assert!(matches!(
                ShareParams::new(a, b, e),
                Err(Error::InvalidShareParams { .. })
            ));
        }
    }
}
