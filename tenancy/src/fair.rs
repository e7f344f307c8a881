//! Weighted fair admission: which tenant's queued work gets the next free instance slot.
//!
//! [`FairQueue`] keeps one bounded FIFO lane per tenant and hands out slots by start-time fair
//! queueing (stride scheduling over virtual time):
//!
//! - every lane has a virtual start tag `pass`; the next free slot goes to the eligible lane
//!   with the smallest `max(pass, V)`, where `V` is the start tag of the last grant;
//! - a grant advances that lane's `pass` by `STRIDE / (w_i · D_i)`, with `D_i` the Eq. 6
//!   demand factor of the lane at that moment ([`crate::share::demand`]), so over any stretch
//!   in which a set of tenants stays backlogged each receives slots in proportion to
//!   `w_i · D_i`, i.e. its Eq. 6 share `R_i`;
//! - taking `max(pass, V)` means a lane that was idle (or held at its cap) re-enters at the
//!   current virtual time: it cannot bank credit while it had nothing to run, and it is served
//!   within one grant per other lane of arriving (no starvation);
//! - a lane is eligible only if it has queued work, is below its concurrency cap and the
//!   memory limit of its oldest item fits its memory budget; otherwise it is skipped and the
//!   slot goes to someone else (work-conserving: a slot is never left idle while any lane
//!   could use it);
//! - inside a lane, an item may belong to a *group* with its own cap ([`GroupCap`]: the node
//!   uses one per function, its `max_instances`); an item whose group is at its cap is passed
//!   over and the lane's next item goes instead, so one capped function does not hold back the
//!   tenant's others (the lane's order is otherwise FIFO; finding the item scans the lane);
//! - the node's memory is the one exception: with [`FairQueue::grant_within`], the lane whose
//!   turn it is waits for enough free memory for its oldest item, and no other lane is served
//!   meanwhile, so large items are not starved by smaller ones.
//!
//! Fairness is over slot *grants*: with equal service times that is fairness of slot time;
//! with unequal ones the per-tenant concurrency cap bounds how much slot time a tenant with
//! long-running work can hold (slots are not preempted).
//!
//! Queues are bounded per tenant and in total: [`FairQueue::push`] refuses with a typed error
//! (and hands the item back) instead of growing. The queue does not own the slots: the node
//! calls [`FairQueue::grant`] whenever a slot is free and [`FairQueue::complete`] when the guest
//! ends, with the [`Slot`] the grant carried. Generic over the item, so the node queues its own
//! MEU handles. Choosing the next lane scans the lanes, O(tenants) per grant.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, QuotaKind};
use crate::share::{self, ShareParams, TenantLoad};
use crate::tenant::{TenantName, TenantSpec, Weight};

/// Virtual-time units per grant for a lane with `w · D = 1`. Large enough that strides of
/// the heaviest lane (weight 10 000, demand a few) still differ by thousands of units, so
/// ratios are kept to well under 0.1 %; `u128` start tags never overflow.
const STRIDE_SCALE: f64 = (1u64 << 32) as f64;
/// Service-time estimate before any completion was seen, for `Retry-After`.
const INITIAL_SERVICE_MS: f64 = 100.0;
/// Weight of the newest sample in the service-time average.
const SERVICE_EWMA_ALPHA: f64 = 0.2;
const MIN_RETRY_AFTER_MS: u64 = 1;
const MAX_RETRY_AFTER_MS: u64 = 60_000;

/// A tenant's limits as the fair queue applies them on one node. Built from the tenant's
/// [`TenantSpec`]; the node may lower `max_concurrent` to this node's part of a cluster-wide
/// quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneConfig {
    pub weight: Weight,
    pub max_concurrent: u32,
    pub memory_budget_bytes: u64,
    pub max_queued: u32,
    /// The SLA latency target `T_i` of Eq. 6.
    pub latency_target_ms: u32,
}

impl From<&TenantSpec> for LaneConfig {
    fn from(spec: &TenantSpec) -> Self {
        Self {
            weight: spec.weight,
            max_concurrent: spec.quotas.max_concurrent,
            memory_budget_bytes: spec.quotas.memory_budget_bytes,
            max_queued: spec.quotas.max_queued,
            latency_target_ms: spec.sla.latency_target_ms(),
        }
    }
}

/// A cap on a group of one tenant's items: at most `max_running` items with this `key` hold
/// slots at once. The node makes one per function with a `max_instances`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCap {
    pub key: Arc<str>,
    pub max_running: u32,
}

/// One granted instance slot. Hand it back to [`FairQueue::complete`] when the guest ends:
/// it is deliberately not `Clone`, so a slot cannot be completed twice.
#[must_use = "a slot that is never completed keeps counting against its tenant's caps"]
#[derive(Debug, PartialEq, Eq)]
pub struct Slot {
    tenant: TenantName,
    memory_bytes: u64,
    group: Option<Arc<str>>,
}

impl Slot {
    pub fn tenant(&self) -> &TenantName {
        &self.tenant
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// The group (function) the slot counts against, if its item had one.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// The item that won the next slot, and the slot.
#[derive(Debug)]
pub struct Grant<T> {
    pub item: T,
    pub slot: Slot,
}

/// A refused push: the error, and the item back so the caller can answer it.
pub struct Rejected<T> {
    pub item: T,
    pub error: Error,
}

impl<T> fmt::Debug for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> From<Rejected<T>> for Error {
    fn from(r: Rejected<T>) -> Error {
        r.error
    }
}

/// A tenant's lane at one moment, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LaneStats {
    pub queued: u32,
    pub running: u32,
    /// Sum of the memory limits of running items.
    pub memory_bytes: u64,
    /// The latency level `L_i` Eq. 6 uses (ms).
    pub latency_ms: f64,
}

/// An item waiting in its lane, with what it will hold once granted.
struct Queued<T> {
    item: T,
    memory: u64,
    group: Option<GroupCap>,
}

struct Lane<T> {
    config: LaneConfig,
    queue: VecDeque<Queued<T>>,
    running: u32,
    /// Running items per group key; a key leaves the map when its last item completes.
    groups: HashMap<Arc<str>, u32>,
    memory_bytes: u64,
    pass: u128,
    latency_ms: f64,
    service_ms: f64,
    /// Removed while instances were still running: refuses new work, and disappears when
    /// the last one completes.
    closed: bool,
}

impl<T> Lane<T> {
    fn new(config: LaneConfig) -> Self {
        Self {
            config,
            queue: VecDeque::new(),
            running: 0,
            groups: HashMap::new(),
            memory_bytes: 0,
            pass: 0,
            latency_ms: 0.0,
            service_ms: INITIAL_SERVICE_MS,
            closed: false,
        }
    }

    /// The position of the item this lane would run next: its oldest whose group is below
    /// its cap, if that item also fits the tenant's own caps.
    fn next(&self) -> Option<usize> {
        let at = self
            .queue
            .iter()
            .position(|q| q.group.as_ref().is_none_or(|g| self.group_has_room(g)))?;
        self.within_caps(self.queue[at].memory).then_some(at)
    }

    fn group_has_room(&self, group: &GroupCap) -> bool {
        self.groups.get(&group.key).copied().unwrap_or(0) < group.max_running
    }

    /// Counts a slot of `group` granted (`grant`) or freed.
    fn count_group(&mut self, group: Option<&Arc<str>>, grant: bool) {
        let Some(key) = group else { return };
        if grant {
            *self.groups.entry(key.clone()).or_default() += 1;
        } else if let Some(n) = self.groups.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.groups.remove(key);
            }
        }
    }

    /// Frees a slot against the lane's caps.
    fn release(&mut self, slot: &Slot) {
        self.running = self.running.saturating_sub(1);
        self.memory_bytes = self.memory_bytes.saturating_sub(slot.memory_bytes);
        self.count_group(slot.group.as_ref(), false);
    }

    /// One more item of `memory` bytes would stay within the tenant's caps.
    fn within_caps(&self, memory: u64) -> bool {
        self.running < self.config.max_concurrent
            && self.memory_bytes.saturating_add(memory) <= self.config.memory_budget_bytes
    }

    fn load(&self) -> TenantLoad {
        TenantLoad {
            weight: self.config.weight.get(),
            latency_ms: self.latency_ms,
            target_ms: self.config.latency_target_ms,
            queued: saturating_u32(self.queue.len()),
            max_queued: self.config.max_queued,
        }
    }

    /// How long until the lane has drained its current queue if it runs at its cap.
    fn retry_after_ms(&self) -> u64 {
        let rounds =
            (self.queue.len() as u64 + 1).div_ceil(u64::from(self.config.max_concurrent.max(1)));
        retry_after(rounds, self.service_ms)
    }

    fn stats(&self) -> LaneStats {
        LaneStats {
            queued: saturating_u32(self.queue.len()),
            running: self.running,
            memory_bytes: self.memory_bytes,
            latency_ms: self.latency_ms,
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn retry_after(rounds: u64, service_ms: f64) -> u64 {
    // Float to integer casts saturate, so an absurd estimate is clamped, not wrapped.
    let ms = (rounds as f64 * service_ms).ceil() as u64;
    ms.clamp(MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS)
}

fn ewma(current: f64, sample_ms: u64) -> f64 {
    current + SERVICE_EWMA_ALPHA * (sample_ms as f64 - current)
}

/// Weighted fair admission over tenants (see the module documentation).
pub struct FairQueue<T> {
    params: ShareParams,
    max_queued_total: usize,
    lanes: BTreeMap<TenantName, Lane<T>>,
    /// Start tag of the last grant: `V`.
    vtime: u128,
    queued: usize,
    running: usize,
    service_ms: f64,
}

impl<T> FairQueue<T> {
    /// An empty queue holding at most `max_queued_total` items over all tenants (the node's
    /// own admission bound), sharing slots by Eq. 6 with `params`.
    pub fn new(params: ShareParams, max_queued_total: usize) -> Self {
        Self {
            params,
            max_queued_total,
            lanes: BTreeMap::new(),
            vtime: 0,
            queued: 0,
            running: 0,
            service_ms: INITIAL_SERVICE_MS,
        }
    }

    /// Adds a tenant, or changes its limits. Items already queued or running stay; a lowered
    /// cap applies to the next grants (running items are never preempted). Re-adding a
    /// tenant that was removed while it still had running items reopens its lane.
    pub fn upsert_tenant(&mut self, tenant: TenantName, config: LaneConfig) {
        match self.lanes.get_mut(&tenant) {
            Some(lane) => {
                lane.config = config;
                lane.closed = false;
            }
            None => {
                self.lanes.insert(tenant, Lane::new(config));
            }
        }
    }

    /// Removes a tenant: its queued items are returned (to be answered), new pushes are
    /// refused, and its running items still complete normally.
    pub fn remove_tenant(&mut self, tenant: &TenantName) -> Vec<T> {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return Vec::new();
        };
        let drained: Vec<T> = lane.queue.drain(..).map(|q| q.item).collect();
        self.queued -= drained.len();
        if lane.running == 0 {
            self.lanes.remove(tenant);
        } else {
            lane.closed = true;
        }
        drained
    }

    /// Queues `item` for `tenant`; `memory_bytes` is the memory limit its instance will
    /// count against the tenant's memory budget while it runs.
    ///
    /// Refusals, most specific first: [`Error::UnknownTenant`]; the item alone is over the
    /// memory budget ([`Error::QuotaExceeded`] `memory`, no retry: it could never start); the
    /// tenant's queue is full (`queue`, with a retry estimate); the node's queue is full
    /// ([`Error::Overloaded`]).
    pub fn push(
        &mut self,
        tenant: &TenantName,
        item: T,
        memory_bytes: u64,
    ) -> Result<(), Rejected<T>> {
        self.push_in_group(tenant, item, memory_bytes, None)
    }

    /// As [`FairQueue::push`], for an item that also counts against `group`'s cap while it
    /// runs.
    pub fn push_in_group(
        &mut self,
        tenant: &TenantName,
        item: T,
        memory_bytes: u64,
        group: Option<GroupCap>,
    ) -> Result<(), Rejected<T>> {
        let reject = |item, error| Err(Rejected { item, error });
        let Some(lane) = self.lanes.get_mut(tenant).filter(|l| !l.closed) else {
            return reject(item, Error::UnknownTenant);
        };
        if memory_bytes > lane.config.memory_budget_bytes {
            return reject(
                item,
                Error::QuotaExceeded {
                    which: QuotaKind::Memory,
                    retry_after_ms: None,
                },
            );
        }
        if lane.queue.len() >= lane.config.max_queued as usize {
            let retry = lane.retry_after_ms();
            return reject(
                item,
                Error::QuotaExceeded {
                    which: QuotaKind::Queue,
                    retry_after_ms: Some(retry),
                },
            );
        }
        if self.queued >= self.max_queued_total {
            let rounds = (self.queued as u64 + 1).div_ceil(self.running.max(1) as u64);
            return reject(
                item,
                Error::Overloaded {
                    retry_after_ms: retry_after(rounds, self.service_ms),
                },
            );
        }
        lane.queue.push_back(Queued {
            item,
            memory: memory_bytes,
            group,
        });
        self.queued += 1;
        Ok(())
    }

    /// The item that gets the next free slot, or `None` if no lane can use one (nothing
    /// queued, or every lane with queued work at its concurrency cap or memory budget).
    pub fn grant(&mut self) -> Option<Grant<T>> {
        self.grant_within(u64::MAX)
    }

    /// As [`FairQueue::grant`], for a slot that comes with only `free_memory` bytes of the
    /// node's memory. The node's memory follows the same weighted fair order as its slots:
    /// if the oldest item of the lane whose turn it is needs more than `free_memory`, nothing
    /// is granted and the memory freed next is kept for it, so a stream of smaller items from
    /// other lanes cannot starve a larger one (a slot may stay idle meanwhile).
    pub fn grant_within(&mut self, free_memory: u64) -> Option<Grant<T>> {
        let v = self.vtime;
        let mut best: Option<(&TenantName, u128, usize)> = None;
        // BTreeMap order: equal start tags go to the first tenant by name, deterministically.
        for (name, lane) in &self.lanes {
            let Some(at) = lane.next() else {
                continue;
            };
            let start = lane.pass.max(v);
            if best.is_none_or(|(_, b, _)| start < b) {
                best = Some((name, start, at));
            }
        }
        let (name, start, at) = best?;
        let name = name.clone();
        let lane = self.lanes.get_mut(&name)?;
        if lane.queue.get(at).is_none_or(|q| q.memory > free_memory) {
            return None;
        }
        // D_i as the lane is now, its queue including the item about to leave it.
        let wd = f64::from(lane.config.weight.get()) * share::demand(&self.params, &lane.load());
        let stride = (STRIDE_SCALE / wd).ceil().max(1.0) as u128;
        lane.pass = start.saturating_add(stride);
        self.vtime = start;
        let Queued {
            item,
            memory: memory_bytes,
            group,
        } = lane.queue.remove(at)?;
        let group = group.map(|g| g.key);
        lane.running += 1;
        lane.memory_bytes = lane.memory_bytes.saturating_add(memory_bytes);
        lane.count_group(group.as_ref(), true);
        self.queued -= 1;
        self.running += 1;
        Some(Grant {
            item,
            slot: Slot {
                tenant: name,
                memory_bytes,
                group,
            },
        })
    }

    /// Whether one more item of `memory` bytes of `tenant` would stay within the tenant's
    /// own caps (an unknown tenant: no). Tells a unit that waited in vain whether its
    /// tenant's caps or the node held it back.
    pub fn within_caps(&self, tenant: &TenantName, memory: u64) -> bool {
        self.lanes
            .get(tenant)
            .is_some_and(|l| l.within_caps(memory))
    }

    /// Whether `group` of `tenant` is below its cap (an unknown tenant: yes, nothing of it
    /// runs). Tells a unit that waited in vain whether its function's cap held it back.
    pub fn group_has_room(&self, tenant: &TenantName, group: &GroupCap) -> bool {
        self.lanes
            .get(tenant)
            .is_none_or(|l| l.group_has_room(group))
    }

    /// A granted item's guest has ended (finished, failed, timed out or was cancelled) after
    /// `service_ms` in its slot. Frees the slot against the tenant's caps; the time feeds the
    /// `Retry-After` estimates.
    pub fn complete(&mut self, slot: Slot, service_ms: u64) {
        self.running = self.running.saturating_sub(1);
        self.service_ms = ewma(self.service_ms, service_ms);
        let Some(lane) = self.lanes.get_mut(&slot.tenant) else {
            return;
        };
        lane.release(&slot);
        lane.service_ms = ewma(lane.service_ms, service_ms);
        if lane.closed && lane.running == 0 {
            self.lanes.remove(&slot.tenant);
        }
    }

    /// A granted slot that was never used (its waiter had gone when the grant reached it):
    /// frees it against the tenant's caps like [`FairQueue::complete`], without counting a
    /// service time that would drag the `Retry-After` estimates towards zero.
    pub fn return_unused(&mut self, slot: Slot) {
        self.running = self.running.saturating_sub(1);
        let Some(lane) = self.lanes.get_mut(&slot.tenant) else {
            return;
        };
        lane.release(&slot);
        if lane.closed && lane.running == 0 {
            self.lanes.remove(&slot.tenant);
        }
    }

    /// Takes out of `tenant`'s queue every item `cancelled` says yes to (e.g. those of a
    /// caller that went away), keeping the others in order.
    pub fn cancel(&mut self, tenant: &TenantName, mut cancelled: impl FnMut(&T) -> bool) -> Vec<T> {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(lane.queue.len());
        for queued in lane.queue.drain(..) {
            if cancelled(&queued.item) {
                out.push(queued.item);
            } else {
                kept.push_back(queued);
            }
        }
        lane.queue = kept;
        self.queued -= out.len();
        out
    }

    /// One of `tenant`'s items waited `wait_ms` between being queued and getting a slot (or
    /// giving up at its deadline): folded into the tenant's latency level `L_i`, an
    /// exponentially weighted average of its recent waits, Eq. 6's latency input from the next
    /// grant on.
    pub fn record_wait(&mut self, tenant: &TenantName, wait_ms: u64) {
        if let Some(lane) = self.lanes.get_mut(tenant) {
            lane.latency_ms = ewma(lane.latency_ms, wait_ms);
        }
    }

    /// The tenant's recent latency level `L_i` (ms), as the node measures it: Eq. 6's latency
    /// input from the next grant on.
    pub fn set_latency(&mut self, tenant: &TenantName, latency_ms: f64) {
        if let Some(lane) = self.lanes.get_mut(tenant) {
            lane.latency_ms = latency_ms;
        }
    }

    /// Each tenant's current Eq. 6 share `R_i`, in name order: the fraction of slots it is
    /// being given while the queued tenants stay backlogged (0 for tenants with nothing
    /// queued). A tenant held at its cap gets less; the rest goes to the others.
    pub fn shares(&self) -> Vec<(TenantName, f64)> {
        let loads: Vec<TenantLoad> = self.lanes.values().map(Lane::load).collect();
        self.lanes
            .keys()
            .cloned()
            .zip(share::shares(&self.params, &loads))
            .collect()
    }

    pub fn stats(&self, tenant: &TenantName) -> Option<LaneStats> {
        self.lanes.get(tenant).map(Lane::stats)
    }

    /// Every tenant's lane, in name order.
    pub fn all_stats(&self) -> impl Iterator<Item = (&TenantName, LaneStats)> {
        self.lanes.iter().map(|(name, lane)| (name, lane.stats()))
    }

    /// Items queued over all tenants.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Slots granted and not yet completed.
    pub fn running(&self) -> usize {
        self.running
    }

    pub fn params(&self) -> &ShareParams {
        &self.params
    }

    pub fn set_params(&mut self, params: ShareParams) {
        self.params = params;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn name(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    fn config(weight: u32, max_concurrent: u32, max_queued: u32) -> LaneConfig {
        LaneConfig {
            weight: Weight::new(weight).unwrap(),
            max_concurrent,
            memory_budget_bytes: 1024 * MIB,
            max_queued,
            latency_target_ms: 500,
        }
    }

    fn queue(tenants: &[(&str, LaneConfig)]) -> FairQueue<u32> {
        let mut q = FairQueue::new(ShareParams::weights_only(), 1000);
        for (t, c) in tenants {
            q.upsert_tenant(name(t), *c);
        }
        q
    }

    #[test]
    fn items_of_one_tenant_leave_in_arrival_order() {
        let mut q = queue(&[("a", config(1, 10, 10))]);
        for i in 0..5 {
            q.push(&name("a"), i, 0).unwrap();
        }
        let order: Vec<u32> = std::iter::from_fn(|| q.grant().map(|g| g.item)).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert_eq!(q.running(), 5);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_group_at_its_cap_is_passed_over_for_the_tenants_next_item() {
        let mut q = queue(&[("a", config(1, 10, 10))]);
        let slow = GroupCap {
            key: Arc::from("slow"),
            max_running: 2,
        };
        for i in 0..4 {
            q.push_in_group(&name("a"), i, 0, Some(slow.clone()))
                .unwrap();
        }
        q.push(&name("a"), 10, 0).unwrap();
        q.push_in_group(&name("a"), 11, 0, Some(slow.clone()))
            .unwrap();
        let first: Vec<Grant<u32>> = std::iter::from_fn(|| q.grant()).collect();
        let items: Vec<u32> = first.iter().map(|g| g.item).collect();
        assert_eq!(items, vec![0, 1, 10], "two of `slow`, then past it to 10");
        assert!(!q.group_has_room(&name("a"), &slow));
        assert_eq!(first[0].slot.group(), Some("slow"));
        assert_eq!(first[2].slot.group(), None);
        // One of `slow` ends: its oldest waiting item goes next, in arrival order.
        let mut first = first.into_iter();
        q.complete(first.next().unwrap().slot, 1);
        assert_eq!(q.grant().map(|g| g.item), Some(2));
        assert!(q.grant().is_none(), "`slow` is at its cap again");
        assert_eq!(q.queued(), 2);
    }

    #[test]
    fn an_unused_slot_frees_its_tenants_cap_without_moving_the_service_estimate() {
        let mut q = queue(&[("a", config(1, 1, 10))]);
        q.push(&name("a"), 0, 0).unwrap();
        q.push(&name("a"), 1, 0).unwrap();
        let g = q.grant().unwrap();
        assert!(q.grant().is_none(), "at its cap of 1");
        let before = q.service_ms;
        q.return_unused(g.slot);
        assert_eq!((q.running(), q.service_ms), (0, before));
        assert_eq!(q.grant().unwrap().item, 1, "the cap is free again");
    }

    #[test]
    fn grants_interleave_by_weight() {
        // Weights 1:3, both backlogged: every window of 4 grants has 1 of a and 3 of b.
        let mut q = queue(&[("a", config(1, 100, 100)), ("b", config(3, 100, 100))]);
        for i in 0..40 {
            q.push(&name("a"), i, 0).unwrap();
            q.push(&name("b"), i, 0).unwrap();
        }
        let picks: Vec<String> = (0..40)
            .map(|_| {
                let g = q.grant().unwrap();
                let t = g.slot.tenant().to_string();
                q.complete(g.slot, 10);
                t
            })
            .collect();
        for window in picks.chunks(4) {
            assert_eq!(window.iter().filter(|t| *t == "a").count(), 1, "{picks:?}");
        }
    }

    #[test]
    fn a_tenant_at_its_cap_is_skipped_and_resumes_when_a_slot_completes() {
        let mut q = queue(&[("a", config(10, 1, 10)), ("b", config(1, 10, 10))]);
        for i in 0..3 {
            q.push(&name("a"), i, 0).unwrap();
            q.push(&name("b"), 10 + i, 0).unwrap();
        }
        let first = q.grant().unwrap();
        assert_eq!(first.slot.tenant().as_str(), "a");
        // a is at its cap of 1: despite weight 10 the next slots go to b.
        let b1 = q.grant().unwrap();
        let b2 = q.grant().unwrap();
        assert_eq!((b1.item, b2.item), (10, 11));
        q.complete(first.slot, 5);
        assert_eq!(
            q.grant().unwrap().item,
            1,
            "a is served again once under its cap"
        );
        assert_eq!(q.stats(&name("a")).unwrap().running, 1);
    }

    #[test]
    fn nothing_is_granted_when_every_backlogged_tenant_is_at_its_cap() {
        let mut q = queue(&[("a", config(1, 1, 10))]);
        q.push(&name("a"), 1, 0).unwrap();
        q.push(&name("a"), 2, 0).unwrap();
        let g = q.grant().unwrap();
        assert!(q.grant().is_none());
        q.complete(g.slot, 1);
        assert_eq!(q.grant().unwrap().item, 2);
    }

    #[test]
    fn the_memory_budget_holds_back_an_item_that_does_not_fit_yet() {
        let mut c = config(1, 10, 10);
        c.memory_budget_bytes = 512 * MIB;
        let mut q = queue(&[("a", c)]);
        q.push(&name("a"), 1, 384 * MIB).unwrap();
        q.push(&name("a"), 2, 256 * MIB).unwrap();
        let g = q.grant().unwrap();
        assert_eq!(g.slot.memory_bytes(), 384 * MIB);
        assert!(
            q.grant().is_none(),
            "384 + 256 MiB is over the 512 MiB budget"
        );
        q.complete(g.slot, 1);
        assert_eq!(q.grant().unwrap().item, 2);
        assert_eq!(q.stats(&name("a")).unwrap().memory_bytes, 256 * MIB);
    }

    #[test]
    fn node_memory_is_kept_for_the_lane_whose_turn_it_is() {
        let mut q = queue(&[("a", config(1, 10, 10)), ("b", config(1, 10, 10))]);
        q.push(&name("a"), 1, 256 * MIB).unwrap();
        q.push(&name("a"), 2, 256 * MIB).unwrap();
        q.push(&name("b"), 3, 64 * MIB).unwrap();
        q.push(&name("b"), 4, 64 * MIB).unwrap();
        // a's turn (equal tags go to the first name): b's smaller item, which would fit, does
        // not pass it.
        assert!(q.grant_within(128 * MIB).is_none());
        assert_eq!(q.grant_within(256 * MIB).unwrap().item, 1);
        // Now b's turn, then alternately.
        assert_eq!(q.grant_within(64 * MIB).unwrap().item, 3);
        assert!(q.grant_within(128 * MIB).is_none(), "a's turn, 256 MiB");
        assert_eq!(q.grant_within(1024 * MIB).unwrap().item, 2);
        assert_eq!(q.grant_within(1024 * MIB).unwrap().item, 4);
    }

    #[test]
    fn a_lane_held_by_its_own_caps_does_not_hold_the_node_memory() {
        let mut c = config(1, 1, 10);
        c.memory_budget_bytes = 1024 * MIB;
        let mut q = queue(&[("a", c), ("b", config(1, 10, 10))]);
        q.push(&name("a"), 1, 64 * MIB).unwrap();
        q.push(&name("a"), 2, 64 * MIB).unwrap();
        let first = q.grant_within(1024 * MIB).unwrap();
        assert_eq!(first.item, 1);
        assert!(
            !q.within_caps(&name("a"), 64 * MIB),
            "a is at max_concurrent 1"
        );
        q.push(&name("b"), 3, 512 * MIB).unwrap();
        assert_eq!(
            q.grant_within(512 * MIB).unwrap().item,
            3,
            "a is at its cap, so b's turn"
        );
        assert!(q.within_caps(&name("b"), 64 * MIB));
        assert!(!q.within_caps(&name("nobody"), 0));
    }

    #[test]
    fn push_refusals_are_typed_and_hand_the_item_back() {
        let mut c = config(1, 2, 2);
        c.memory_budget_bytes = 100;
        let mut q = FairQueue::new(ShareParams::default(), 3);
        q.upsert_tenant(name("a"), c);
        q.upsert_tenant(name("b"), config(1, 2, 10));

        let r = q.push(&name("nobody"), 7, 0).unwrap_err();
        assert_eq!((r.item, r.error), (7, Error::UnknownTenant));

        let r = q.push(&name("a"), 8, 101).unwrap_err();
        assert_eq!(
            (r.item, r.error),
            (
                8,
                Error::QuotaExceeded {
                    which: QuotaKind::Memory,
                    retry_after_ms: None
                }
            )
        );

        q.push(&name("a"), 1, 0).unwrap();
        q.push(&name("a"), 2, 0).unwrap();
        let r = q.push(&name("a"), 9, 0).unwrap_err();
        assert_eq!(r.item, 9);
        // Queue of 2, cap 2, nothing measured yet: ceil(3 / 2) rounds × 100 ms.
        assert_eq!(
            r.error,
            Error::QuotaExceeded {
                which: QuotaKind::Queue,
                retry_after_ms: Some(200)
            }
        );

        q.push(&name("b"), 3, 0).unwrap();
        let r = q.push(&name("b"), 10, 0).unwrap_err();
        assert_eq!(r.item, 10);
        assert!(matches!(r.error, Error::Overloaded { retry_after_ms } if retry_after_ms > 0));
        assert_eq!(Error::from(r).code(), "overloaded");
        assert_eq!(q.queued(), 3);
    }

    #[test]
    fn retry_after_follows_measured_service_times() {
        let mut q = queue(&[("a", config(1, 1, 1))]);
        q.push(&name("a"), 1, 0).unwrap();
        let g = q.grant().unwrap();
        // Many completions of 1000 ms pull the estimate to ~1000 ms.
        q.complete(g.slot, 1000);
        for i in 0..40 {
            q.push(&name("a"), i, 0).unwrap();
            let g = q.grant().unwrap();
            q.complete(g.slot, 1000);
        }
        q.push(&name("a"), 1, 0).unwrap();
        let r = q.push(&name("a"), 2, 0).unwrap_err();
        let Error::QuotaExceeded {
            retry_after_ms: Some(ms),
            ..
        } = r.error
        else {
            panic!("{:?}", r.error)
        };
        // Queue of 1 at cap 1: two rounds of ~1 s.
        assert!((1990..=2000).contains(&ms), "{ms}");
    }

    #[test]
    fn cancel_removes_only_the_chosen_items_and_keeps_the_order() {
        let mut q = queue(&[("a", config(1, 10, 10))]);
        for i in 0..6 {
            q.push(&name("a"), i, 0).unwrap();
        }
        let gone = q.cancel(&name("a"), |i| i % 2 == 1);
        assert_eq!(gone, vec![1, 3, 5]);
        assert_eq!(q.queued(), 3);
        let rest: Vec<u32> = std::iter::from_fn(|| q.grant().map(|g| g.item)).collect();
        assert_eq!(rest, vec![0, 2, 4]);
        assert!(q.cancel(&name("nobody"), |_| true).is_empty());
    }

    #[test]
    fn a_removed_tenant_refuses_work_and_its_running_slots_still_complete() {
        let mut q = queue(&[("a", config(1, 10, 10)), ("b", config(1, 10, 10))]);
        q.push(&name("a"), 1, 0).unwrap();
        q.push(&name("a"), 2, 0).unwrap();
        let g = q.grant().unwrap();
        assert_eq!(g.item, 1);
        assert_eq!(q.remove_tenant(&name("a")), vec![2]);
        assert_eq!(q.queued(), 0);
        assert_eq!(
            q.push(&name("a"), 3, 0).unwrap_err().error,
            Error::UnknownTenant
        );
        assert_eq!(q.stats(&name("a")).unwrap().running, 1);
        q.complete(g.slot, 1);
        assert_eq!(
            q.stats(&name("a")),
            None,
            "gone once its last slot completes"
        );
        assert_eq!(q.running(), 0);
    }

    #[test]
    fn the_lane_config_comes_from_the_tenant_spec() {
        let spec = TenantSpec {
            weight: Weight::new(4).unwrap(),
            sla: crate::tenant::SlaClass::LatencyCritical,
            ..TenantSpec::default()
        };
        let c = LaneConfig::from(&spec);
        assert_eq!(c.weight.get(), 4);
        assert_eq!(c.max_concurrent, spec.quotas.max_concurrent);
        assert_eq!(c.memory_budget_bytes, spec.quotas.memory_budget_bytes);
        assert_eq!(c.max_queued, spec.quotas.max_queued);
        assert_eq!(c.latency_target_ms, 50);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            tenant: usize,
            memory: u64,
            group: Option<usize>,
        },
        Grant,
        Complete {
            pick: usize,
        },
        Cancel {
            tenant: usize,
            modulus: u32,
        },
        Latency {
            tenant: usize,
            ms: u32,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..3, 0u64..6, proptest::option::of(0usize..2))
                .prop_map(|(tenant, memory, group)| Op::Push { tenant, memory, group }),
            4 => Just(Op::Grant),
            3 => any::<usize>().prop_map(|pick| Op::Complete { pick }),
            1 => (0usize..3, 1u32..4).prop_map(|(tenant, modulus)| Op::Cancel { tenant, modulus }),
            1 => (0usize..3, 0u32..3000).prop_map(|(tenant, ms)| Op::Latency { tenant, ms }),
        ]
    }

    /// Runs `ops` against a queue of three tenants and a model of it.
    fn check_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let names = [name("a"), name("b"), name("c")];
        let configs = [
            LaneConfig {
                memory_budget_bytes: 4,
                ..config(1, 2, 4)
            },
            LaneConfig {
                memory_budget_bytes: 5,
                ..config(3, 1, 3)
            },
            LaneConfig {
                memory_budget_bytes: 100,
                ..config(2, 3, 5)
            },
        ];
        // Two groups (functions) per tenant, capped at 1 and 2 running.
        let group_cap = |g: usize| GroupCap {
            key: Arc::from(format!("f{g}")),
            max_running: g as u32 + 1,
        };
        let mut q: FairQueue<u64> = FairQueue::new(ShareParams::default(), 10);
        for (n, c) in names.iter().zip(configs) {
            q.upsert_tenant(n.clone(), c);
        }
        // The model: each tenant's queue of (id, memory, group) in arrival order, and the
        // running set as (tenant, memory, group, slot).
        let mut model: [VecDeque<(u64, u64, Option<usize>)>; 3] = Default::default();
        let mut running: Vec<(usize, u64, Option<usize>, Slot)> = Vec::new();
        // The oldest item of tenant `t` whose group is below its cap.
        let next = |model: &[VecDeque<(u64, u64, Option<usize>)>; 3],
                    running: &[(usize, u64, Option<usize>, Slot)],
                    t: usize| {
            model[t].iter().position(|(_, _, g)| {
                g.is_none_or(|g| {
                    let n = running
                        .iter()
                        .filter(|r| r.0 == t && r.2 == Some(g))
                        .count();
                    (n as u32) < group_cap(g).max_running
                })
            })
        };
        // Every item that left the queue, granted or cancelled.
        let mut out: Vec<u64> = Vec::new();
        let mut accepted: Vec<u64> = Vec::new();
        let mut next_id = 0u64;

        for op in ops {
            match op {
                Op::Push {
                    tenant,
                    memory,
                    group,
                } => {
                    next_id += 1;
                    match q.push_in_group(&names[tenant], next_id, memory, group.map(group_cap)) {
                        Ok(()) => {
                            model[tenant].push_back((next_id, memory, group));
                            accepted.push(next_id);
                        }
                        Err(r) => {
                            prop_assert_eq!(r.item, next_id);
                            let total: usize = model.iter().map(VecDeque::len).sum();
                            let full = model[tenant].len() >= configs[tenant].max_queued as usize
                                || total >= 10
                                || memory > configs[tenant].memory_budget_bytes;
                            prop_assert!(full, "refused {:?} with room", r.error);
                        }
                    }
                }
                Op::Grant => match q.grant() {
                    Some(g) => {
                        let t = names.iter().position(|n| n == g.slot.tenant()).unwrap();
                        let at = next(&model, &running, t).unwrap();
                        let (id, memory, group) = model[t].remove(at).unwrap();
                        prop_assert_eq!(
                            g.item,
                            id,
                            "the tenant's oldest item whose group has room"
                        );
                        prop_assert_eq!(g.slot.memory_bytes(), memory);
                        let key = group.map(|g| group_cap(g).key);
                        prop_assert_eq!(g.slot.group(), key.as_deref());
                        out.push(g.item);
                        running.push((t, memory, group, g.slot));
                    }
                    None => {
                        for t in 0..3 {
                            let used: u64 = running.iter().filter(|r| r.0 == t).map(|r| r.1).sum();
                            let count = running.iter().filter(|r| r.0 == t).count() as u32;
                            let could_run = next(&model, &running, t).is_some_and(|at| {
                                count < configs[t].max_concurrent
                                    && used + model[t][at].1 <= configs[t].memory_budget_bytes
                            });
                            prop_assert!(!could_run, "tenant {} left waiting with a slot free", t);
                        }
                    }
                },
                Op::Complete { pick } => {
                    if !running.is_empty() {
                        let (_, _, _, slot) = running.swap_remove(pick % running.len());
                        q.complete(slot, 10);
                    }
                }
                Op::Cancel { tenant, modulus } => {
                    let gone = q.cancel(&names[tenant], |id| id % u64::from(modulus) == 0);
                    let expected: Vec<u64> = model[tenant]
                        .iter()
                        .map(|(id, _, _)| *id)
                        .filter(|id| id % u64::from(modulus) == 0)
                        .collect();
                    prop_assert_eq!(&gone, &expected);
                    model[tenant].retain(|(id, _, _)| id % u64::from(modulus) != 0);
                    out.extend(gone);
                }
                Op::Latency { tenant, ms } => q.set_latency(&names[tenant], f64::from(ms)),
            }
            for (t, n) in names.iter().enumerate() {
                let s = q.stats(n).unwrap();
                prop_assert!(s.running <= configs[t].max_concurrent);
                prop_assert!(s.memory_bytes <= configs[t].memory_budget_bytes);
                prop_assert!(s.queued <= configs[t].max_queued);
                prop_assert_eq!(s.queued as usize, model[t].len());
                prop_assert_eq!(
                    s.running as usize,
                    running.iter().filter(|r| r.0 == t).count()
                );
                for g in 0..2 {
                    let n = running
                        .iter()
                        .filter(|r| r.0 == t && r.2 == Some(g))
                        .count();
                    prop_assert!(n as u32 <= group_cap(g).max_running, "group cap exceeded");
                }
            }
            prop_assert!(q.queued() <= 10);
        }

        // Drain: everything accepted comes out exactly once, granted or cancelled.
        for (_, _, _, slot) in running.drain(..) {
            q.complete(slot, 1);
        }
        while let Some(g) = q.grant() {
            let t = names.iter().position(|n| n == g.slot.tenant()).unwrap();
            prop_assert_eq!(model[t].pop_front().map(|(id, _, _)| id), Some(g.item));
            out.push(g.item);
            q.complete(g.slot, 1);
        }
        prop_assert!(
            model.iter().all(VecDeque::is_empty),
            "left behind: {:?}",
            model
        );
        out.sort_unstable();
        accepted.sort_unstable();
        prop_assert_eq!(out, accepted);
        prop_assert_eq!(q.queued(), 0);
        prop_assert_eq!(q.running(), 0);
        Ok(())
    }

    proptest! {
        /// For any sequence of pushes, grants, completions, cancellations and latency
        /// changes: no cap (tenant or group), budget or queue bound is ever exceeded; each
        /// tenant's items leave in arrival order except those passed over while their group
        /// was at its cap; nothing queued is lost or granted twice; and `grant` returns
        /// `None` only when no tenant could use a slot.
        #[test]
        fn caps_hold_and_no_item_is_lost_or_duplicated(
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            check_ops(ops)?;
        }
    }
}
