//! Tenants' cluster-wide quotas on this node (request rate, `max_concurrent`): the shell
//! around tern-tenancy's [`DemandBook`].
//!
//! Both front doors ask [`ClusterQuotas::admit`] before they read a call's body, charging the
//! tenant that owns the function against its rate. Each status this node publishes carries
//! every such tenant's demand here ([`ClusterQuotas::take_demand`]); after it, the link hands
//! over the other members' demand and the node's parts are set from both
//! ([`ClusterQuotas::share`]): the rate buckets directly, `max_concurrent` through the
//! runtime's fair slots (the caller passes the changes on). A node alone has the whole quotas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use tern_tenancy::{ClusterQuota, Demand, DemandBook, Parts, RateLimit, Reading, TenantName};
use tern_wire::peer::{MAX_TENANT_DEMANDS, TenantDemand};
use tokio::time::Instant;

use crate::error::NodeError;

pub struct ClusterQuotas {
    book: Mutex<DemandBook>,
    /// Whether any tenant has a cluster-wide limit: while none has (a node used by one
    /// team), a call costs one atomic load here instead of a lock.
    any_limited: AtomicBool,
    /// Zero of the bucket clock (tokio's, so tests can pause it).
    origin: Instant,
    /// When the current demand window began, on the bucket clock.
    window_start_ms: Mutex<u64>,
}

impl Default for ClusterQuotas {
    fn default() -> Self {
        Self::new()
    }
}

impl ClusterQuotas {
    pub fn new() -> Self {
        Self {
            book: Mutex::new(DemandBook::new()),
            any_limited: AtomicBool::new(false),
            origin: Instant::now(),
            window_start_ms: Mutex::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, DemandBook> {
        tern_sync::poison::lock(&self.book)
    }

    /// A tenant's cluster-wide quotas changed (or the tenant is new, or the members up were
    /// recounted; `members_up` counts this node): its parts here.
    pub fn set(&self, tenant: TenantName, quota: ClusterQuota, members_up: u32) -> Parts {
        let now = self.now_ms();
        let mut book = self.book();
        book.set(tenant.clone(), quota, members_up, now);
        self.any_limited.store(!book.is_empty(), Relaxed);
        book.parts(&tenant).unwrap_or(Parts {
            rate: RateLimit::UNLIMITED,
            max_concurrent: u32::MAX,
        })
    }

    pub fn remove(&self, tenant: &TenantName) {
        let mut book = self.book();
        book.remove(tenant);
        self.any_limited.store(!book.is_empty(), Relaxed);
    }

    /// Admits one call to a function of `tenant` against its rate, or refuses it (429
    /// `quota_exceeded`, with when to try again).
    pub fn admit(&self, tenant: &TenantName) -> Result<(), NodeError> {
        if !self.any_limited.load(Relaxed) {
            return Ok(());
        }
        let now = self.now_ms();
        let mut book = self.book();
        match book.admit(tenant, now) {
            Ok(()) => Ok(()),
            Err(e) => {
                let part = book.parts(tenant).map_or(RateLimit::UNLIMITED, |p| p.rate);
                Err(NodeError::RateLimited {
                    tenant: tenant.clone(),
                    per_s: part.per_s,
                    burst: part.burst,
                    retry_after_ms: e.retry_after_ms().unwrap_or(1),
                })
            }
        }
    }

    /// Ends the current demand window: each tenant's demand here since the last call (calls
    /// a second, and its guests `(running, waiting)` now, from `slots`), for this node's
    /// status.
    pub fn take_demand(&self, slots: &HashMap<TenantName, (u64, u64)>) -> Vec<TenantDemand> {
        let now = self.now_ms();
        let elapsed = {
            let mut start = tern_sync::poison::lock(&self.window_start_ms);
            let elapsed = now.saturating_sub(*start);
            *start = now;
            elapsed
        };
        self.book()
            .take_demand(elapsed, slots, MAX_TENANT_DEMANDS)
            .into_iter()
            .map(|(tenant, d)| TenantDemand {
                tenant,
                per_s: d.calls_per_s,
                slots: d.slots,
                running: d.running,
            })
            .collect()
    }

    /// Sets this node's parts of every tenant's quotas from its own demand and the other
    /// members' (`others`), with `members_up` members up, this one included. Returns the
    /// tenants whose `max_concurrent` part changed, with the new part.
    pub fn share(
        &self,
        others: &HashMap<TenantName, Demand>,
        reading: Reading,
        members_up: u32,
    ) -> Vec<(TenantName, u32)> {
        let now = self.now_ms();
        self.book()
            .share_by_demand(others, reading, members_up, now)
    }

    /// This node's parts of `tenant`'s cluster-wide quotas (`None`: it has none).
    pub fn parts(&self, tenant: &TenantName) -> Option<Parts> {
        self.book().parts(tenant)
    }
}
