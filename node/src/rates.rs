//! Tenants' request-rate quotas on this node: the shell around tern-tenancy's [`RateBook`].
//!
//! Both front doors ask [`NodeRates::admit`] before they read a call's body, charging the
//! tenant that owns the function. Each tenant's bucket runs at this node's part of the
//! tenant's cluster-wide rate: the whole rate on a node alone, and in a cluster the part the
//! members' published demand gives this node (recomputed after every status this node
//! publishes, [`NodeRates::share`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use tern_tenancy::{RateBook, RateLimit, TenantName};
use tern_wire::peer::{MAX_TENANT_DEMANDS, TenantDemand};
use tokio::time::Instant;

use crate::error::NodeError;

pub struct NodeRates {
    book: Mutex<RateBook>,
    /// Whether any tenant has a finite rate: while none has (a node used by one team), a
    /// call costs one atomic load here instead of a lock.
    any_limited: AtomicBool,
    /// Zero of the bucket clock (tokio's, so tests can pause it).
    origin: Instant,
    /// When the current demand window began, on the bucket clock.
    window_start_ms: Mutex<u64>,
}

impl Default for NodeRates {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeRates {
    pub fn new() -> Self {
        Self {
            book: Mutex::new(RateBook::new()),
            any_limited: AtomicBool::new(false),
            origin: Instant::now(),
            window_start_ms: Mutex::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, RateBook> {
        tern_sync::poison::lock(&self.book)
    }

    /// A tenant's cluster-wide rate quota changed (or the tenant is new); `members_up`
    /// counts this node.
    pub fn set(&self, tenant: TenantName, quota: RateLimit, members_up: u32) {
        let now = self.now_ms();
        let mut book = self.book();
        book.set(tenant, quota, members_up, now);
        self.any_limited.store(!book.is_empty(), Relaxed);
    }

    pub fn remove(&self, tenant: &TenantName) {
        let mut book = self.book();
        book.remove(tenant);
        self.any_limited.store(!book.is_empty(), Relaxed);
    }

    /// Admits one call to a function of `tenant`, or refuses it (429 `quota_exceeded`, with
    /// when to try again).
    pub fn admit(&self, tenant: &TenantName) -> Result<(), NodeError> {
        if !self.any_limited.load(Relaxed) {
            return Ok(());
        }
        let now = self.now_ms();
        let mut book = self.book();
        match book.admit(tenant, now) {
            Ok(()) => Ok(()),
            Err(e) => {
                let part = book.part(tenant).unwrap_or(RateLimit::UNLIMITED);
                Err(NodeError::RateLimited {
                    tenant: tenant.clone(),
                    per_s: part.per_s,
                    burst: part.burst,
                    retry_after_ms: e.retry_after_ms().unwrap_or(1),
                })
            }
        }
    }

    /// Ends the current demand window: each tenant's calls a second here since the last
    /// call, for this node's status.
    pub fn take_demand(&self) -> Vec<TenantDemand> {
        let now = self.now_ms();
        let elapsed = {
            let mut start = tern_sync::poison::lock(&self.window_start_ms);
            let elapsed = now.saturating_sub(*start);
            *start = now;
            elapsed
        };
        self.book()
            .take_demand(elapsed, MAX_TENANT_DEMANDS)
            .into_iter()
            .map(|(tenant, per_s)| TenantDemand { tenant, per_s })
            .collect()
    }

    /// Sets this node's part of every tenant's rate from its own demand and the other
    /// members' (`others`), with `members_up` members up, this one included.
    pub fn share(&self, others: &HashMap<TenantName, u64>, members_up: u32) {
        let now = self.now_ms();
        self.book().share_by_demand(others, members_up, now);
    }

    /// This node's part of `tenant`'s rate (`None`: no finite rate).
    pub fn part(&self, tenant: &TenantName) -> Option<RateLimit> {
        self.book().part(tenant)
    }
}
