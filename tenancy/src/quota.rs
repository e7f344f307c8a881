//! Per-tenant quotas and the checks made against them.
//!
//! Two kinds of limits live here. Limits on *running* work (instances at once, their memory,
//! queued invocations) are enforced by the fair scheduler in [`crate::fair`], which owns that
//! usage. Limits on *stored* things (functions, module bytes, asynchronous results) and on
//! what a single request may ask for (timeout, memory) are checked here, against a [`Usage`]
//! the node keeps in its store: the checks are pure so they can run on every request.
//!
//! A [`Quotas`] that exists after deserialising is valid: decoding goes through
//! [`Quotas::validate`], so a corrupt or hostile record from disk or from a peer is refused at
//! the door instead of producing a tenant that can never run.

use serde::{Deserialize, Serialize};

use crate::error::{Error, QuotaKind};
use crate::rate::RateLimit;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What one tenant may use. Counts of zero are refused where they would make every request
/// fail (see [`Quotas::validate`]); zeros on stored things mean "none allowed" (a tenant with
/// `max_stored_results = 0` can only invoke synchronously).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedQuotas")]
pub struct Quotas {
    /// Instances of this tenant running at once in the cluster (each node enforces its part,
    /// see [`crate::demand`]).
    pub max_concurrent: u32,
    /// Sum of the memory limits (`memory_mb`, in bytes) of this tenant's running instances.
    pub memory_budget_bytes: u64,
    /// Invocations waiting for a slot; beyond this a call is refused with 429 instead of
    /// queueing without bound.
    pub max_queued: u32,
    /// Longest timeout one of this tenant's functions may ask for.
    pub max_timeout_ms: u32,
    /// Deployed functions.
    pub max_functions: u32,
    /// Total size of deployed modules.
    pub max_module_bytes: u64,
    /// Asynchronous results kept at once.
    pub max_stored_results: u32,
    /// Bytes of asynchronous results kept at once.
    pub max_stored_result_bytes: u64,
    /// Invocations a second, on average, across the cluster (see [`crate::demand`]).
    pub max_rate_per_s: u32,
    /// Invocations that may arrive at once above the average rate.
    pub rate_burst: u32,
}

impl Default for Quotas {
    /// What a tenant gets when created without explicit quotas, including the `default`
    /// tenant. Sized against a node with the default configuration (1000 instance slots,
    /// 128 MiB default and 512 MiB largest memory limit, 900 s longest timeout, 64 MiB module
    /// limit): one tenant gets a quarter of the slots, so a slow or hostile tenant can hold
    /// at most that many of them (slots are not preempted), and the memory budget lets every
    /// one of those instances use the default 128 MiB. Timeouts are not tighter than the
    /// node's own, so functions deployed before tenancy keep working in `default`.
    fn default() -> Self {
        Self {
            max_concurrent: 250,
            memory_budget_bytes: 250 * 128 * MIB,
            max_queued: 2_000,
            max_timeout_ms: 900_000,
            max_functions: 1_000,
            max_module_bytes: 4 * GIB,
            max_stored_results: 10_000,
            max_stored_result_bytes: GIB,
            // A node serves the smallest function at roughly 14,000 calls a second: one
            // tenant alone takes at most about a seventh of that, with a second's worth more
            // at once.
            max_rate_per_s: 2_000,
            rate_burst: 2_000,
        }
    }
}

impl Quotas {
    /// No per-tenant limit at all: only the node's own limits apply. What the `default`
    /// tenant starts with, so a node used by one team behaves as it would without tenancy
    /// (an admin may lower them like any tenant's).
    pub fn unlimited() -> Self {
        Self {
            max_concurrent: u32::MAX,
            memory_budget_bytes: u64::MAX,
            max_queued: u32::MAX,
            max_timeout_ms: u32::MAX,
            max_functions: u32::MAX,
            max_module_bytes: u64::MAX,
            max_stored_results: u32::MAX,
            max_stored_result_bytes: u64::MAX,
            max_rate_per_s: u32::MAX,
            rate_burst: u32::MAX,
        }
    }

    /// Refuses quotas under which the tenant could never run anything: no instance, no
    /// memory, no timeout, no place to wait for a slot (every invocation passes through
    /// the queue, even when a slot is free), or no call a second.
    pub fn validate(&self) -> Result<(), Error> {
        let zero = |which| Error::InvalidQuota {
            which,
            reason: "must be at least 1: with 0 the tenant could never run anything",
        };
        if self.max_concurrent == 0 {
            return Err(zero(QuotaKind::Concurrency));
        }
        if self.memory_budget_bytes == 0 {
            return Err(zero(QuotaKind::Memory));
        }
        if self.max_queued == 0 {
            return Err(zero(QuotaKind::Queue));
        }
        if self.max_timeout_ms == 0 {
            return Err(zero(QuotaKind::Timeout));
        }
        if self.max_rate_per_s == 0 || self.rate_burst == 0 {
            return Err(zero(QuotaKind::Rate));
        }
        Ok(())
    }

    /// Whether a deploy fits: the function's own limits against the per-request quotas, then
    /// the stored totals after the deploy.
    pub fn check_deploy(&self, usage: &Usage, deploy: &Deploy) -> Result<(), Error> {
        let never = |which| Error::QuotaExceeded {
            which,
            retry_after_ms: None,
        };
        if deploy.timeout_ms > self.max_timeout_ms {
            return Err(never(QuotaKind::Timeout));
        }
        // An instance that needs more than the whole budget could never start.
        if deploy.memory_bytes > self.memory_budget_bytes {
            return Err(never(QuotaKind::Memory));
        }
        let (functions, module_bytes) = match deploy.replaces_module_bytes {
            // A new version of an existing function: same count, its old module goes away.
            Some(old) => (
                u64::from(usage.functions),
                usage.module_bytes.saturating_sub(old),
            ),
            None => (u64::from(usage.functions) + 1, usage.module_bytes),
        };
        if functions > u64::from(self.max_functions) {
            return Err(never(QuotaKind::Functions));
        }
        if module_bytes.saturating_add(deploy.module_bytes) > self.max_module_bytes {
            return Err(never(QuotaKind::ModuleBytes));
        }
        Ok(())
    }

    /// The tenant's cluster-wide request rate.
    pub fn rate(&self) -> RateLimit {
        RateLimit {
            per_s: self.max_rate_per_s,
            burst: self.rate_burst,
        }
    }

    /// The quotas that hold for the whole cluster, each node enforcing its part.
    pub fn cluster(&self) -> crate::demand::ClusterQuota {
        crate::demand::ClusterQuota {
            rate: self.rate(),
            max_concurrent: self.max_concurrent,
        }
    }

    /// Whether one more asynchronous result of `bytes` may be stored. Results expire, so
    /// waiting may help, but only the node knows when the oldest one goes: it fills in
    /// `Retry-After` if it wants to.
    pub fn check_store_result(&self, usage: &Usage, bytes: u64) -> Result<(), Error> {
        let over = |which| Error::QuotaExceeded {
            which,
            retry_after_ms: None,
        };
        if u64::from(usage.stored_results) + 1 > u64::from(self.max_stored_results) {
            return Err(over(QuotaKind::StoredResults));
        }
        if usage.stored_result_bytes.saturating_add(bytes) > self.max_stored_result_bytes {
            return Err(over(QuotaKind::StoredResultBytes));
        }
        Ok(())
    }
}

/// The mirror `Quotas` is decoded through, so that decoding validates.
#[derive(Deserialize)]
struct UncheckedQuotas {
    max_concurrent: u32,
    memory_budget_bytes: u64,
    max_queued: u32,
    max_timeout_ms: u32,
    max_functions: u32,
    max_module_bytes: u64,
    max_stored_results: u32,
    max_stored_result_bytes: u64,
    max_rate_per_s: u32,
    rate_burst: u32,
}

impl TryFrom<UncheckedQuotas> for Quotas {
    type Error = Error;

    fn try_from(u: UncheckedQuotas) -> Result<Self, Error> {
        let q = Quotas {
            max_concurrent: u.max_concurrent,
            memory_budget_bytes: u.memory_budget_bytes,
            max_queued: u.max_queued,
            max_timeout_ms: u.max_timeout_ms,
            max_functions: u.max_functions,
            max_module_bytes: u.max_module_bytes,
            max_stored_results: u.max_stored_results,
            max_stored_result_bytes: u.max_stored_result_bytes,
            max_rate_per_s: u.max_rate_per_s,
            rate_burst: u.rate_burst,
        };
        q.validate()?;
        Ok(q)
    }
}

/// What a tenant currently stores, as counted by the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub functions: u32,
    pub module_bytes: u64,
    pub stored_results: u32,
    pub stored_result_bytes: u64,
}

/// A deploy as the quota check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deploy {
    pub module_bytes: u64,
    pub timeout_ms: u32,
    /// The function's memory limit, in bytes.
    pub memory_bytes: u64,
    /// `Some(size of the module it replaces)` when this is a new version of a deployed
    /// function.
    pub replaces_module_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn small() -> Quotas {
        Quotas {
            max_concurrent: 2,
            memory_budget_bytes: 256 * MIB,
            max_queued: 4,
            max_timeout_ms: 10_000,
            max_functions: 2,
            max_module_bytes: 10 * MIB,
            max_stored_results: 3,
            max_stored_result_bytes: 1000,
            max_rate_per_s: 10,
            rate_burst: 5,
        }
    }

    fn deploy(module_mib: u64, timeout_ms: u32, memory_mib: u64) -> Deploy {
        Deploy {
            module_bytes: module_mib * MIB,
            timeout_ms,
            memory_bytes: memory_mib * MIB,
            replaces_module_bytes: None,
        }
    }

    fn exceeded(which: QuotaKind) -> Result<(), Error> {
        Err(Error::QuotaExceeded {
            which,
            retry_after_ms: None,
        })
    }

    #[test]
    fn defaults_are_valid() {
        Quotas::default().validate().unwrap();
    }

    #[test]
    fn zero_is_refused_only_where_the_tenant_could_never_run() {
        type Case = (fn(&mut Quotas), Option<QuotaKind>);
        let cases: [Case; 10] = [
            (|q| q.max_concurrent = 0, Some(QuotaKind::Concurrency)),
            (|q| q.memory_budget_bytes = 0, Some(QuotaKind::Memory)),
            (|q| q.max_queued = 0, Some(QuotaKind::Queue)),
            (|q| q.max_timeout_ms = 0, Some(QuotaKind::Timeout)),
            (|q| q.max_rate_per_s = 0, Some(QuotaKind::Rate)),
            (|q| q.rate_burst = 0, Some(QuotaKind::Rate)),
            // Zero stored things is a restriction, not a contradiction.
            (|q| q.max_functions = 0, None),
            (|q| q.max_module_bytes = 0, None),
            (|q| q.max_stored_results = 0, None),
            (|q| q.max_stored_result_bytes = 0, None),
        ];
        for (zero_out, expected) in cases {
            let mut q = small();
            zero_out(&mut q);
            match (q.validate(), expected) {
                (Ok(()), None) => {}
                (Err(Error::InvalidQuota { which, .. }), Some(kind)) => assert_eq!(which, kind),
                (got, want) => panic!("{q:?}: got {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn decoding_refuses_invalid_quotas() {
        let mut json = serde_json::to_value(small()).unwrap();
        json["max_concurrent"] = 0.into();
        let err = serde_json::from_value::<Quotas>(json).unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");

        let bytes = bincode::serde::encode_to_vec(small(), bincode::config::standard()).unwrap();
        let (back, _): (Quotas, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, small());
    }

    #[test]
    fn deploy_within_every_limit_is_accepted() {
        let usage = Usage {
            functions: 1,
            module_bytes: 4 * MIB,
            ..Usage::default()
        };
        assert_eq!(
            small().check_deploy(&usage, &deploy(6, 10_000, 256)),
            Ok(())
        );
    }

    #[test]
    fn deploy_over_a_per_request_limit_names_that_limit() {
        let q = small();
        let none = Usage::default();
        assert_eq!(
            q.check_deploy(&none, &deploy(1, 10_001, 128)),
            exceeded(QuotaKind::Timeout)
        );
        assert_eq!(
            q.check_deploy(&none, &deploy(1, 1000, 257)),
            exceeded(QuotaKind::Memory)
        );
    }

    #[test]
    fn deploy_counts_functions_and_module_bytes_but_a_new_version_replaces_the_old() {
        let q = small();
        let full = Usage {
            functions: 2,
            module_bytes: 8 * MIB,
            ..Usage::default()
        };
        assert_eq!(
            q.check_deploy(&full, &deploy(1, 1000, 128)),
            exceeded(QuotaKind::Functions)
        );
        // Replacing a 4 MiB module with a 6 MiB one: 8 - 4 + 6 = 10 MiB, exactly the limit.
        let mut update = deploy(6, 1000, 128);
        update.replaces_module_bytes = Some(4 * MIB);
        assert_eq!(q.check_deploy(&full, &update), Ok(()));
        update.module_bytes += 1;
        assert_eq!(
            q.check_deploy(&full, &update),
            exceeded(QuotaKind::ModuleBytes)
        );
    }

    #[test]
    fn stored_results_are_capped_by_count_and_bytes() {
        let q = small();
        let usage = Usage {
            stored_results: 2,
            stored_result_bytes: 900,
            ..Usage::default()
        };
        assert_eq!(q.check_store_result(&usage, 100), Ok(()));
        assert_eq!(
            q.check_store_result(&usage, 101),
            exceeded(QuotaKind::StoredResultBytes)
        );
        let at_count = Usage {
            stored_results: 3,
            ..usage
        };
        assert_eq!(
            q.check_store_result(&at_count, 0),
            exceeded(QuotaKind::StoredResults)
        );
    }
}
