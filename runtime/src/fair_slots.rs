//! Instance slots and the node's memory budget, shared fairly between tenants.
//!
//! The pooling allocator has `max_instances` slots, and the guests running at once may use at
//! most the node's memory budget (the sum of their memory limits). Who gets the next free
//! slot, with the memory its guest needs, is decided by tern-tenancy's [`FairQueue`]: weighted
//! fair queueing by the paper's Eq. 6 share, with each tenant held to its own concurrency cap,
//! memory budget and queue bound. Slots and memory are granted together, in that one order: a
//! tenant that floods the node waits in its own bounded lane and cannot push ahead of another
//! tenant for either. This module is the
//! async shell around that pure queue: a waiter queues a oneshot sender, grants are handed out
//! whenever a slot is free, and a [`SlotGuard`] gives its slot back (to the queue's accounting
//! and to the next waiter) when the guest ends.
//!
//! A waiter that gives up (its deadline passed, or its caller went away and the future was
//! dropped) never holds a slot: a grant that reaches a waiter that is gone is returned at
//! once and goes to the next one.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tern_tenancy::{FairQueue, GroupCap, LaneConfig, ShareParams, Slot, TenantName, TenantSpec};
use tokio::sync::oneshot;

/// Why no slot was given.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Refused at the door by the tenant's limits (queue full, an instance larger than its
    /// memory budget) or the node's waiting bound.
    Tenancy(tern_tenancy::Error),
    /// The deadline passed in the queue; `held_by` says what kept the unit waiting at that
    /// moment.
    Deadline { held_by: HeldBy },
    /// The unit's memory limit is larger than the node's whole memory budget.
    LargerThanNode,
    /// The tenant was removed while the unit waited.
    TenantRemoved,
}

/// What a unit that waited until its deadline was held back by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBy {
    /// Its function's own `max_instances` on this node.
    FunctionCap,
    /// Its tenant's own `max_concurrent` or memory budget on this node.
    TenantCaps,
    /// Every instance slot was busy (or other tenants' units were ahead of it).
    Slots,
    /// Slots were free but the node's memory budget had not enough left for it.
    NodeMemory,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Slot>,
    /// When it was queued: its wait is the tenant's latency sample (Eq. 6's `L_i`).
    queued_at: tokio::time::Instant,
}

struct State {
    queue: FairQueue<Waiter>,
    free: usize,
    /// Bytes of the node's memory budget not held by a running guest.
    free_memory: u64,
    memory_budget: u64,
    /// The most of `memory_budget` one tenant with a finite memory quota may hold.
    tenant_memory_cap: u64,
    next_id: u64,
}

/// `max_instances` slots, granted by weighted fair queueing over tenants.
pub struct FairSlots {
    state: Mutex<State>,
}

/// One instance slot, held until dropped.
pub struct SlotGuard {
    slots: Arc<FairSlots>,
    slot: Option<Slot>,
    since: Instant,
}

/// A waiter's end of its grant. A caller that goes away between a grant and its next poll
/// drops a slot with it: this gives it back (and to the next waiter) instead of losing it.
struct Pending<'a> {
    rx: oneshot::Receiver<Slot>,
    slots: &'a Arc<FairSlots>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // Closed first: a grant racing this drop then either fails to send (and `dispatch`
        // keeps the slot) or is already here to take back.
        self.rx.close();
        if let Ok(slot) = self.rx.try_recv() {
            let mut state = self.slots.lock();
            return_unused(&mut state, slot);
            dispatch(&mut state);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let ms = self.since.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
            let mut state = self.slots.lock();
            state.free_memory = state.free_memory.saturating_add(slot.memory_bytes());
            state.queue.complete(slot, ms);
            state.free += 1;
            dispatch(&mut state);
        }
    }
}

impl FairSlots {
    /// `slots` instance slots and `memory_budget` bytes for the guests holding them, of which
    /// one tenant with a finite memory quota holds at most `tenant_memory_cap`; at most
    /// `max_waiting` units queued for them over all tenants.
    pub fn new(
        slots: usize,
        memory_budget: u64,
        tenant_memory_cap: u64,
        max_waiting: usize,
        params: ShareParams,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: FairQueue::new(params, max_waiting),
                free: slots,
                free_memory: memory_budget,
                memory_budget,
                tenant_memory_cap,
                next_id: 0,
            }),
        })
    }

    /// Adds a tenant or changes its limits (running guests keep their slots). A finite
    /// memory quota is held to the node's per-tenant cap; an unlimited one (`u64::MAX`, the
    /// `default` tenant's) may use the whole budget.
    pub fn set_tenant(&self, tenant: TenantName, config: LaneConfig) {
        let mut state = self.lock();
        let config = state.capped(config);
        state.queue.upsert_tenant(tenant, config);
        // A raised cap may let queued work start now.
        dispatch(&mut state);
    }

    /// Removes a tenant: its queued units are refused at once; its running guests finish.
    pub fn remove_tenant(&self, tenant: &TenantName) {
        // Dropping the senders wakes their waiters with `TenantRemoved`.
        let drained = self.lock().queue.remove_tenant(tenant);
        drop(drained);
    }

    /// Waits for a slot for a guest of `tenant` that may use `memory_bytes`, until
    /// `deadline`; with `cap`, the guest also counts against its function's cap. A tenant the
    /// node has not configured yet (its record still replicating) gets the default limits.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &TenantName,
        memory_bytes: u64,
        cap: Option<&GroupCap>,
        deadline: Instant,
    ) -> Result<SlotGuard, Refused> {
        let (id, rx) = {
            let mut state = self.lock();
            if memory_bytes > state.memory_budget {
                return Err(Refused::LargerThanNode);
            }
            if state.queue.stats(tenant).is_none() {
                let config = state.capped(LaneConfig::from(&TenantSpec::default()));
                state.queue.upsert_tenant(tenant.clone(), config);
            }
            let id = state.next_id;
            state.next_id += 1;
            let (tx, rx) = oneshot::channel();
            state
                .queue
                .push_in_group(
                    tenant,
                    Waiter {
                        id,
                        tx,
                        queued_at: tokio::time::Instant::now(),
                    },
                    memory_bytes,
                    cap.cloned(),
                )
                .map_err(|r| Refused::Tenancy(r.error))?;
            dispatch(&mut state);
            (id, rx)
        };
        // Dropped before the grant (the caller went away, or the deadline below), the
        // receiver makes the grant's send fail and the slot goes straight to the next waiter;
        // dropped after a grant it had not taken yet, it gives the slot back.
        let mut pending = Pending { rx, slots: self };
        match tokio::time::timeout_at(deadline.into(), &mut pending.rx).await {
            Ok(Ok(slot)) => Ok(self.guard(slot)),
            Ok(Err(_)) => Err(Refused::TenantRemoved),
            Err(_) => {
                // Out of the queue, unless a grant raced the deadline: then the slot is ours
                // and goes back at once. The whole wait counts as the tenant's latency: a
                // tenant whose units time out waiting is the one most behind its target.
                let mut state = self.lock();
                let held_by = if cap.is_some_and(|c| !state.queue.group_has_room(tenant, c)) {
                    HeldBy::FunctionCap
                } else if !state.queue.within_caps(tenant, memory_bytes) {
                    HeldBy::TenantCaps
                } else if state.free > 0 && memory_bytes > state.free_memory {
                    HeldBy::NodeMemory
                } else {
                    HeldBy::Slots
                };
                let cancelled = state.queue.cancel(tenant, |w| w.id == id);
                if let Some(waiter) = cancelled.first() {
                    state
                        .queue
                        .record_wait(tenant, millis(waiter.queued_at.elapsed()));
                }
                // The unit may have been what held its lane back: another may fit now. A
                // grant that raced the deadline goes back as `pending` is dropped.
                dispatch(&mut state);
                drop(state);
                Err(Refused::Deadline { held_by })
            }
        }
    }

    /// Guests running and units waiting, over all tenants.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.queue.running(), state.queue.queued())
    }

    /// One tenant's running and waiting units.
    pub fn tenant_counts(&self, tenant: &TenantName) -> Option<(u32, u32)> {
        self.lock()
            .queue
            .stats(tenant)
            .map(|s| (s.running, s.queued))
    }

    /// Every tenant's running and waiting units, by name.
    pub fn all_tenant_counts(&self) -> Vec<(TenantName, u32, u32)> {
        self.lock()
            .queue
            .all_stats()
            .map(|(t, s)| (t.clone(), s.running, s.queued))
            .collect()
    }

    fn guard(self: &Arc<Self>, slot: Slot) -> SlotGuard {
        SlotGuard {
            slots: self.clone(),
            slot: Some(slot),
            since: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        tern_sync::poison::lock(&self.state)
    }
}

impl State {
    fn capped(&self, mut config: LaneConfig) -> LaneConfig {
        if config.memory_budget_bytes != u64::MAX {
            config.memory_budget_bytes = config.memory_budget_bytes.min(self.tenant_memory_cap);
        }
        config
    }
}

/// Hands free slots, with their memory, to the waiters the queue picks, while any fits. A
/// waiter that is gone gives its slot and memory straight back.
fn dispatch(state: &mut State) {
    while state.free > 0 {
        let Some(grant) = state.queue.grant_within(state.free_memory) else {
            return;
        };
        state.free -= 1;
        state.free_memory -= grant.slot.memory_bytes();
        let waited = millis(grant.item.queued_at.elapsed());
        state.queue.record_wait(grant.slot.tenant(), waited);
        if let Err(slot) = grant.item.tx.send(grant.slot) {
            return_unused(state, slot);
        }
    }
}

/// A slot granted but never used, back to the pool without a service time.
fn return_unused(state: &mut State, slot: Slot) {
    state.free_memory += slot.memory_bytes();
    state.queue.return_unused(slot);
    state.free += 1;
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;
    use std::time::Duration;

    use tern_tenancy::Weight;

    use super::*;

    fn name(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    fn lane(weight: u32, max_concurrent: u32, max_queued: u32) -> LaneConfig {
        LaneConfig {
            weight: Weight::new(weight).unwrap(),
            max_concurrent,
            memory_budget_bytes: 1 << 40,
            max_queued,
            latency_target_ms: 500,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    /// Two backlogged tenants with weights 1:3 on 2 slots: the slots they get match their
    /// weights within ±10 %.
    #[tokio::test(start_paused = true)]
    async fn backlogged_tenants_get_slots_in_proportion_to_their_weights() {
        let slots = FairSlots::new(2, u64::MAX, u64::MAX, 10_000, ShareParams::weights_only());
        slots.set_tenant(name("a"), lane(1, 100, 1000));
        slots.set_tenant(name("b"), lane(3, 100, 1000));
        let served: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let mut tasks = Vec::new();
        for i in 0..400 {
            let tenant = if i % 2 == 0 { "a" } else { "b" };
            let (slots, served) = (slots.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let guard = slots.acquire(&name(tenant), 0, None, far()).await.unwrap();
                *served.lock().unwrap().entry(tenant.to_owned()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(guard);
            }));
        }
        // Both stay backlogged for the first 200 grants (200 of each queued).
        tokio::time::sleep(Duration::from_millis(10 * 100 + 5)).await;
        let counts = served.lock().unwrap().clone();
        let (a, b) = (counts["a"] as f64, counts["b"] as f64);
        let share_b = b / (a + b);
        assert!(
            (share_b - 0.75).abs() <= 0.075,
            "b got {share_b:.3} of the slots ({counts:?})"
        );
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(slots.counts(), (0, 0));
    }

    /// Eq. 6's latency term, fed by the waits the slots measure: two backlogged tenants of
    /// equal weight wait hundreds of ms; that is far past one's 5 ms target (its demand
    /// factor reaches the cap, 1 + α·E = 3) and well within the other's 60 s one (1), so the
    /// first gets 3/4 of the slots (±10 %) instead of half.
    #[tokio::test(start_paused = true)]
    async fn a_tenant_waiting_past_its_latency_target_gets_a_larger_share() {
        let slots = FairSlots::new(
            1,
            u64::MAX,
            u64::MAX,
            10_000,
            ShareParams::new(1.0, 0.0, 2.0).unwrap(),
        );
        for (tenant, target) in [("urgent", 5), ("patient", 60_000)] {
            let config = LaneConfig {
                latency_target_ms: target,
                ..lane(1, 100, 1000)
            };
            slots.set_tenant(name(tenant), config);
        }
        let start = tokio::time::Instant::now();
        let grants: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();
        let mut tasks = Vec::new();
        for i in 0..600 {
            let tenant = if i % 2 == 0 { "urgent" } else { "patient" };
            let (slots, grants) = (slots.clone(), grants.clone());
            tasks.push(tokio::spawn(async move {
                let guard = slots.acquire(&name(tenant), 0, None, far()).await.unwrap();
                grants.lock().unwrap().push((tenant, start.elapsed()));
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(guard);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Grants 100 to 300 (1 s to 3 s): both tenants backlogged, latency levels built up.
        let window = Duration::from_secs(1)..Duration::from_secs(3);
        let grants = grants.lock().unwrap().clone();
        let in_window: Vec<_> = grants
            .iter()
            .filter(|(_, at)| window.contains(at))
            .collect();
        let urgent = in_window.iter().filter(|(t, _)| *t == "urgent").count() as f64;
        let share = urgent / in_window.len() as f64;
        assert!(
            (share - 0.75).abs() <= 0.075,
            "urgent got {share:.3} of {} grants",
            in_window.len()
        );
        let urgent_stats = slots.lock().queue.stats(&name("urgent")).unwrap();
        assert!(urgent_stats.latency_ms > 5.0, "{urgent_stats:?}");
        assert_eq!(slots.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_at_its_cap_waits_while_another_gets_the_free_slots() {
        let slots = FairSlots::new(4, u64::MAX, u64::MAX, 100, ShareParams::weights_only());
        slots.set_tenant(name("greedy"), lane(10, 1, 10));
        let held = slots
            .acquire(&name("greedy"), 0, None, far())
            .await
            .unwrap();
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move {
                slots
                    .acquire(&name("greedy"), 0, None, far())
                    .await
                    .map(drop)
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(slots.tenant_counts(&name("greedy")), Some((1, 1)));
        // Three slots free, none for greedy: an unconfigured tenant gets one at once.
        let other = slots.acquire(&name("other"), 0, None, far()).await.unwrap();
        assert_eq!(slots.tenant_counts(&name("other")), Some((1, 0)));
        drop(held);
        waiting.await.unwrap().unwrap();
        drop(other);
        assert_eq!(slots.counts(), (0, 0));
    }

    /// The node's memory budget is granted in the same fair order as slots: a tenant that
    /// holds it all and keeps a backlog does not get the memory its guests free ahead of
    /// another tenant's waiting unit, and a unit that waits for memory past its deadline says
    /// memory (not slots) held it back.
    #[tokio::test(start_paused = true)]
    async fn node_memory_is_granted_by_fair_order_not_first_come() {
        const MIB: u64 = 1 << 20;
        let slots = FairSlots::new(10, 256 * MIB, u64::MAX, 100, ShareParams::weights_only());
        let (flood, other) = (name("flood"), name("other"));
        let a = slots.acquire(&flood, 128 * MIB, None, far()).await.unwrap();
        let b = slots.acquire(&flood, 128 * MIB, None, far()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            slots.acquire(&other, 128 * MIB, None, soon).await.err(),
            Some(Refused::Deadline {
                held_by: HeldBy::NodeMemory
            }),
            "nine slots free; the memory is what was missing"
        );
        let flood_waiters: Vec<_> = (0..3)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(
                    async move { slots.acquire(&name("flood"), 128 * MIB, None, far()).await },
                )
            })
            .collect();
        tokio::task::yield_now().await;
        let victim = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(&name("other"), 128 * MIB, None, far()).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(slots.tenant_counts(&flood), Some((2, 3)));
        drop(a);
        let victim = victim.await.unwrap().unwrap();
        assert_eq!(
            slots.tenant_counts(&flood),
            Some((1, 3)),
            "the freed memory went to the other tenant, queued last"
        );
        drop(victim);
        drop(b);
        for w in flood_waiters {
            drop(w.await.unwrap().unwrap());
        }
        assert_eq!(slots.counts(), (0, 0));
        assert_eq!(
            slots.acquire(&other, 512 * MIB, None, far()).await.err(),
            Some(Refused::LargerThanNode)
        );
    }

    /// A tenant whose memory quota is larger than the node's per-tenant cap is held to the
    /// cap (so the rest of the node stays free for others); an unlimited one, and a tenant
    /// the node has not configured yet, likewise to theirs.
    #[tokio::test(start_paused = true)]
    async fn a_finite_memory_quota_is_held_to_the_nodes_per_tenant_cap() {
        const MIB: u64 = 1 << 20;
        let slots = FairSlots::new(10, 1024 * MIB, 256 * MIB, 100, ShareParams::weights_only());
        let mut big = lane(1, 10, 10);
        big.memory_budget_bytes = 100 * 1024 * MIB;
        slots.set_tenant(name("big"), big);
        let mut unlimited = lane(1, 10, 10);
        unlimited.memory_budget_bytes = u64::MAX;
        slots.set_tenant(name("unlimited"), unlimited);
        let soon = Instant::now() + Duration::from_millis(50);
        for tenant in ["big", "unconfigured"] {
            let held = slots
                .acquire(&name(tenant), 256 * MIB, None, far())
                .await
                .unwrap();
            assert_eq!(
                slots
                    .acquire(&name(tenant), 128 * MIB, None, soon)
                    .await
                    .err(),
                Some(Refused::Deadline {
                    held_by: HeldBy::TenantCaps
                }),
                "{tenant}: held to 256 MiB with 768 MiB of the node free"
            );
            drop(held);
        }
        let held: Vec<_> = acquire_n(&slots, "unlimited", 4, 256 * MIB).await;
        assert_eq!(slots.tenant_counts(&name("unlimited")), Some((4, 0)));
        drop(held);
        assert_eq!(slots.counts(), (0, 0));
    }

    #[test]
    fn the_per_tenant_memory_cap_is_a_percentage_of_the_budget_and_at_least_one_largest_guest() {
        let mut cfg = crate::RuntimeConfig::new("n", "/nonexistent");
        cfg.memory_budget_mb = 18_000;
        cfg.max_memory_mb = 512;
        cfg.tenant_memory_percent = 25;
        assert_eq!(cfg.tenant_memory_cap_bytes(), 4_500 << 20);
        cfg.memory_budget_mb = 1_000;
        assert_eq!(
            cfg.tenant_memory_cap_bytes(),
            512 << 20,
            "one 512 MiB guest"
        );
        cfg.tenant_memory_percent = 100;
        assert_eq!(cfg.tenant_memory_cap_bytes(), 1_000 << 20);
    }

    async fn acquire_n(
        slots: &Arc<FairSlots>,
        tenant: &str,
        n: usize,
        memory: u64,
    ) -> Vec<SlotGuard> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(
                slots
                    .acquire(&name(tenant), memory, None, far())
                    .await
                    .unwrap(),
            );
        }
        held
    }

    #[tokio::test(start_paused = true)]
    async fn a_function_at_its_cap_waits_and_says_so_while_the_tenants_other_functions_run() {
        let slots = FairSlots::new(8, u64::MAX, u64::MAX, 100, ShareParams::weights_only());
        let t = name("t");
        slots.set_tenant(t.clone(), lane(1, 8, 100));
        let capped = GroupCap {
            key: Arc::from("t.slow"),
            max_running: 2,
        };
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(slots.acquire(&t, 0, Some(&capped), far()).await.unwrap());
        }
        let soon = Instant::now() + Duration::from_millis(50);
        // A third of `slow` waits, and at its deadline says its function's cap held it.
        let third = {
            let (slots, capped) = (slots.clone(), capped.clone());
            tokio::spawn(async move {
                let t = name("t");
                slots.acquire(&t, 0, Some(&capped), soon).await.err()
            })
        };
        tokio::task::yield_now().await;
        // Meanwhile another function of the same tenant is not held back by it.
        let other = slots.acquire(&t, 0, None, soon).await;
        assert!(
            other.is_ok(),
            "an uncapped function waited behind a capped one"
        );
        assert_eq!(
            third.await.unwrap(),
            Some(Refused::Deadline {
                held_by: HeldBy::FunctionCap
            })
        );
        // One of `slow` ends: the next of `slow` starts.
        drop(held.pop());
        let later = Instant::now() + Duration::from_millis(50);
        assert!(slots.acquire(&t, 0, Some(&capped), later).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_its_deadline_or_dropped_holds_no_slot_and_no_place() {
        let slots = FairSlots::new(1, u64::MAX, u64::MAX, 100, ShareParams::weights_only());
        let t = name("t");
        let held = slots.acquire(&t, 0, None, far()).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            slots.acquire(&t, 0, None, soon).await.err(),
            Some(Refused::Deadline {
                held_by: HeldBy::Slots
            })
        );
        assert_eq!(slots.counts(), (1, 0), "out of the queue");
        // A waiter whose caller goes away: the grant that reaches it comes straight back.
        let abandoned = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(&name("t"), 0, None, far()).await.map(drop) })
        };
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        drop(held);
        let next = slots
            .acquire(&t, 0, None, soon + Duration::from_secs(1))
            .await;
        assert!(
            next.is_ok(),
            "the slot was not lost to the abandoned waiter"
        );
        drop(next);
        assert_eq!(slots.counts(), (0, 0));
    }

    /// A caller that goes away after its slot was granted but before it took it (its future
    /// dropped unpolled, as a connection that closed while another guest ended) gives the
    /// slot back: the next caller gets it at once.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_between_its_grant_and_its_next_poll_gives_the_slot_back() {
        let slots = FairSlots::new(1, u64::MAX, u64::MAX, 100, ShareParams::weights_only());
        let t = name("t");
        let held = slots.acquire(&t, 0, None, far()).await.unwrap();
        let mut waiter = Box::pin(slots.acquire(&t, 0, None, far()));
        assert!(futures_poll_once(waiter.as_mut()).is_none(), "queued");
        assert_eq!(slots.counts(), (1, 1));
        // The grant reaches the waiter's channel; the waiter is dropped before it looks.
        drop(held);
        assert_eq!(slots.counts(), (1, 0), "granted to the waiter");
        drop(waiter);
        assert_eq!(slots.counts(), (0, 0), "the granted slot came back");
        let soon = Instant::now() + Duration::from_millis(50);
        let next = slots.acquire(&t, 0, None, soon).await;
        assert!(next.is_ok(), "the slot was lost to the dropped waiter");
    }

    /// Polls `f` once with a waker that does nothing.
    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_tenant_queue_is_refused_at_once_and_a_removed_tenants_waiters_are_told() {
        let slots = FairSlots::new(1, u64::MAX, u64::MAX, 100, ShareParams::weights_only());
        let t = name("t");
        slots.set_tenant(t.clone(), lane(1, 1, 1));
        let held = slots.acquire(&t, 0, None, far()).await.unwrap();
        let queued = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(&name("t"), 0, None, far()).await.map(drop) })
        };
        tokio::task::yield_now().await;
        match slots.acquire(&t, 0, None, far()).await {
            Err(Refused::Tenancy(tern_tenancy::Error::QuotaExceeded { which, .. })) => {
                assert_eq!(which, tern_tenancy::QuotaKind::Queue)
            }
            other => panic!("{:?}", other.err()),
        }
        slots.remove_tenant(&t);
        assert_eq!(queued.await.unwrap().err(), Some(Refused::TenantRemoved));
        drop(held);
        assert_eq!(slots.counts(), (0, 0));
    }
}
