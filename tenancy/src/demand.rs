//! Each node's part of a tenant's cluster-wide quotas, by where the tenant's work is.
//!
//! Three of a tenant's quotas hold for the whole cluster: its request rate (`max_rate_per_s`
//! with `rate_burst`) and `max_concurrent`. Every node enforces its *part* of each
//! ([`demand_part`]): the quota in proportion to the node's share of the tenant's recent
//! demand, as the members publish it in their statuses ([`Demand`]):
//! - for the rate, the calls a second that reached the node (admitted or not), since that is
//!   where calls are admitted;
//! - for `max_concurrent`, the tenant's guests running or waiting for an instance slot on the
//!   node, since that is where slots are granted (a call may run on another node than the one
//!   it reached).
//!
//! A node alone has the whole quotas. Demand, not an even split, so a tenant whose work
//! reaches one node gets (almost) all of its quota there instead of a third of it.
//!
//! Guests are not preempted, so a node whose `max_concurrent` part shrinks keeps running
//! what it started until those guests end, and members see each other's demand a status
//! late. Two rules keep the cluster's running guests near the quota all the same: a node's
//! part never exceeds the quota (plus the rounding slack, members − 1) less the guests the
//! other members last said they run; and a part grows only to what two consecutive demand
//! readings both give (it shrinks at once), so members that start a flood together see each
//! other before any of them takes more than an even part.
//!
//! A [`DemandBook`] is one node's view: the rate buckets, the demand counted since its last
//! status, and the parts. Pure: times are `now_ms` arguments, amounts are integers.

use std::collections::HashMap;

use crate::error::{Error, QuotaKind};
use crate::rate::{Bucket, MILLI, RateLimit};
use crate::tenant::TenantName;

/// A node with no recent demand for a tenant still gets this fraction (1/`FLOOR_DIVISOR` of
/// an even part, at least 1) of each quota, so the tenant's first work there is admitted
/// before its demand shows in a status.
const FLOOR_DIVISOR: u64 = 10;

/// A tenant's demand at one node, or summed over several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Calls a second that reached the node, admitted or not.
    pub calls_per_s: u64,
    /// Guests running or waiting for an instance slot.
    pub slots: u64,
    /// Of those, the guests running (holding a slot).
    pub running: u64,
}

impl Demand {
    pub fn saturating_add(self, other: Demand) -> Demand {
        Demand {
            calls_per_s: self.calls_per_s.saturating_add(other.calls_per_s),
            slots: self.slots.saturating_add(other.slots),
            running: self.running.saturating_add(other.running),
        }
    }

    pub fn is_zero(self) -> bool {
        self == Demand::default()
    }
}

/// A tenant's quotas that hold for the whole cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterQuota {
    pub rate: RateLimit,
    pub max_concurrent: u32,
}

impl ClusterQuota {
    pub fn is_unlimited(self) -> bool {
        self.rate.is_unlimited() && self.max_concurrent == u32::MAX
    }
}

/// One node's part of `whole` (a cluster-wide quota; `u32::MAX` means none and stays so),
/// given this node's demand `mine` and the other members' summed `others`, with
/// `members_up` members up, this node included.
///
/// - No demand anywhere: an even split, rounded up.
/// - Otherwise `whole` in proportion to this node's demand, rounded up, and never below a
///   floor of a tenth of an even part (at least 1), so a node whose demand is not yet known
///   can still admit a little.
///
/// While the members see the same demands, the parts add up to at most `whole`, plus one per
/// member (rounding), plus the floors of the members without demand (a tenth of `whole` in
/// all, or one per member if that is more). While they do not (a status in flight, a
/// partition), each side computes from what it sees, and the total can reach `whole` once
/// per side.
pub fn demand_part(whole: u32, mine: u64, others: u64, members_up: u32) -> u32 {
    if whole == u32::MAX {
        return u32::MAX;
    }
    let members = u64::from(members_up.max(1));
    let whole = u64::from(whole);
    let total = mine.saturating_add(others);
    let value = if total == 0 {
        whole.div_ceil(members)
    } else {
        let floor = (whole / (members * FLOOR_DIVISOR)).max(1);
        // u128: whole × mine may not fit in u64 for absurd demands.
        let proportional = (u128::from(whole) * u128::from(mine)).div_ceil(u128::from(total));
        u64::try_from(proportional).unwrap_or(u64::MAX).max(floor)
    };
    u32::try_from(value.min(whole)).unwrap_or(u32::MAX)
}

/// This node's parts of a tenant's cluster-wide quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts {
    pub rate: RateLimit,
    pub max_concurrent: u32,
}

impl Parts {
    /// The parts from the demands, and this reading's `max_concurrent` target (before the
    /// two rules of the module's doc), for the next reading. `previous_target` is the last
    /// reading's.
    fn of(
        quota: ClusterQuota,
        mine: Demand,
        others: Demand,
        members_up: u32,
        previous_target: u32,
    ) -> (Parts, u32) {
        let calls = |whole| demand_part(whole, mine.calls_per_s, others.calls_per_s, members_up);
        let target = demand_part(quota.max_concurrent, mine.slots, others.slots, members_up);
        let max_concurrent = if quota.max_concurrent == u32::MAX {
            u32::MAX
        } else {
            let room = (u64::from(quota.max_concurrent) + u64::from(members_up.max(1)) - 1)
                .saturating_sub(others.running);
            let room = u32::try_from(room).unwrap_or(u32::MAX);
            target.min(previous_target).min(room)
        };
        let parts = Parts {
            rate: RateLimit {
                per_s: calls(quota.rate.per_s),
                burst: calls(quota.rate.burst),
            },
            max_concurrent,
        };
        (parts, target)
    }
}

/// What the other members' demand passed to [`DemandBook::share_by_demand`] is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// Every other member up has published a status since the previous reading.
    Complete,
    /// Some member up has not (a status late or lost, a member starved of CPU): its demand
    /// in the reading is old or missing.
    Partial,
}

/// One node's view of every tenant with a cluster-wide quota: its rate bucket, the demand
/// seen here since the last [`DemandBook::take_demand`], and this node's parts.
#[derive(Debug, Default)]
pub struct DemandBook {
    lanes: HashMap<TenantName, Lane>,
}

#[derive(Debug)]
struct Lane {
    quota: ClusterQuota,
    parts: Parts,
    bucket: Bucket,
    /// Calls that arrived (admitted or not) since the demand was last taken.
    arrivals: u64,
    /// The demand measured here when it was last taken.
    demand: Demand,
    /// The other members' last published demand, summed.
    elsewhere: Demand,
    /// The last reading's `max_concurrent` target (a part grows only to what two
    /// consecutive readings give).
    target: u32,
}

impl DemandBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a tenant's cluster-wide quotas; this node's parts start as an even split over
    /// `members_up` until demands are known, and otherwise follow the last demands seen. A
    /// raised rate takes effect at once: the bucket gains what the burst grew by. A tenant
    /// without any cluster-wide limit has no lane, so its calls cost one map lookup.
    pub fn set(&mut self, tenant: TenantName, quota: ClusterQuota, members_up: u32, now_ms: u64) {
        if quota.is_unlimited() {
            self.lanes.remove(&tenant);
            return;
        }
        match self.lanes.get_mut(&tenant) {
            Some(lane) => {
                let target = if lane.quota.max_concurrent == quota.max_concurrent {
                    lane.target
                } else {
                    // A changed quota: from an even part of it.
                    demand_part(quota.max_concurrent, 0, 0, members_up)
                };
                let (parts, _) = Parts::of(quota, lane.demand, lane.elsewhere, members_up, target);
                lane.bucket.refill(lane.parts.rate, now_ms);
                if lane.quota.rate != quota.rate {
                    let grown = u64::from(parts.rate.burst.saturating_sub(lane.parts.rate.burst));
                    lane.bucket.level = lane.bucket.level.saturating_add(grown * MILLI);
                }
                lane.bucket.level = lane.bucket.level.min(u64::from(parts.rate.burst) * MILLI);
                lane.quota = quota;
                lane.parts = parts;
            }
            None => {
                let none = Demand::default();
                let even = demand_part(quota.max_concurrent, 0, 0, members_up);
                let (parts, target) = Parts::of(quota, none, none, members_up, even);
                self.lanes.insert(
                    tenant,
                    Lane {
                        quota,
                        parts,
                        bucket: Bucket::full(parts.rate, now_ms),
                        arrivals: 0,
                        demand: none,
                        elsewhere: none,
                        target,
                    },
                );
            }
        }
    }

    /// Whether no tenant has a cluster-wide limit.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Forgets a removed tenant.
    pub fn remove(&mut self, tenant: &TenantName) {
        self.lanes.remove(tenant);
    }

    /// Admits one call of `tenant` now against its rate, or refuses it with the time until
    /// one fits. Every call counts towards the tenant's demand here, admitted or not: a node
    /// turning calls away still needs its part.
    pub fn admit(&mut self, tenant: &TenantName, now_ms: u64) -> Result<(), Error> {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return Ok(());
        };
        lane.arrivals = lane.arrivals.saturating_add(1);
        lane.bucket
            .take(lane.parts.rate, now_ms)
            .map_err(|wait_ms| Error::QuotaExceeded {
                which: QuotaKind::Rate,
                retry_after_ms: Some(wait_ms),
            })
    }

    /// Ends a measuring window of `elapsed_ms`: every tenant's demand here (calls a second
    /// over the window, and its guests `(running, waiting)` now, as the node counts them in
    /// `slots`), leaving out tenants with none, busiest first, at most `max` of them (what a
    /// status can carry). The call counts start again from zero.
    pub fn take_demand(
        &mut self,
        elapsed_ms: u64,
        slots: &HashMap<TenantName, (u64, u64)>,
        max: usize,
    ) -> Vec<(TenantName, Demand)> {
        let elapsed_ms = elapsed_ms.max(1);
        let mut demand: Vec<(TenantName, Demand)> = Vec::new();
        for (tenant, lane) in &mut self.lanes {
            let (running, waiting) = slots.get(tenant).copied().unwrap_or((0, 0));
            lane.demand = Demand {
                calls_per_s: lane.arrivals.saturating_mul(1000).div_ceil(elapsed_ms),
                slots: running.saturating_add(waiting),
                running,
            };
            lane.arrivals = 0;
            if !lane.demand.is_zero() {
                demand.push((tenant.clone(), lane.demand));
            }
        }
        let weight = |d: &Demand| d.calls_per_s.saturating_add(d.slots);
        demand.sort_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then_with(|| a.0.cmp(&b.0)));
        demand.truncate(max);
        demand
    }

    /// Sets every tenant's parts on this node from its own last demand and the other
    /// members' (`others`, summed per tenant; a tenant not in it has none elsewhere). Returns
    /// the tenants whose `max_concurrent` part changed, with the new part, for the runtime.
    ///
    /// A [`Reading::Partial`] (some member up has not published since the last reading)
    /// may shrink a `max_concurrent` part but never grows one, and does not count as the
    /// first of the two readings a part grows by: what a silent member runs is unknown.
    pub fn share_by_demand(
        &mut self,
        others: &HashMap<TenantName, Demand>,
        reading: Reading,
        members_up: u32,
        now_ms: u64,
    ) -> Vec<(TenantName, u32)> {
        let mut changed = Vec::new();
        for (tenant, lane) in &mut self.lanes {
            lane.elsewhere = others.get(tenant).copied().unwrap_or_default();
            let previous = match reading {
                Reading::Complete => lane.target,
                Reading::Partial => lane.target.min(lane.parts.max_concurrent),
            };
            let (parts, target) = Parts::of(
                lane.quota,
                lane.demand,
                lane.elsewhere,
                members_up,
                previous,
            );
            lane.target = match reading {
                Reading::Complete => target,
                Reading::Partial => target.min(lane.target),
            };
            if parts.rate != lane.parts.rate {
                // Bring the bucket up to date at the old rate, then hold it to the new burst.
                lane.bucket.refill(lane.parts.rate, now_ms);
                lane.bucket.level = lane.bucket.level.min(u64::from(parts.rate.burst) * MILLI);
            }
            if parts.max_concurrent != lane.parts.max_concurrent {
                changed.push((tenant.clone(), parts.max_concurrent));
            }
            lane.parts = parts;
        }
        changed
    }

    /// This node's parts of `tenant`'s cluster-wide quotas, if it has any.
    pub fn parts(&self, tenant: &TenantName) -> Option<Parts> {
        self.lanes.get(tenant).map(|l| l.parts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(per_s: u32, burst: u32) -> RateLimit {
        RateLimit { per_s, burst }
    }

    fn rate_only(per_s: u32, burst: u32) -> ClusterQuota {
        ClusterQuota {
            rate: limit(per_s, burst),
            max_concurrent: u32::MAX,
        }
    }

    fn calls(per_s: u64) -> Demand {
        Demand {
            calls_per_s: per_s,
            ..Demand::default()
        }
    }

    /// `running` guests holding a slot and `waiting` more.
    fn guests(running: u64, waiting: u64) -> Demand {
        Demand {
            calls_per_s: 0,
            slots: running + waiting,
            running,
        }
    }

    fn name(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    fn rate_part(book: &DemandBook, t: &TenantName) -> Option<RateLimit> {
        book.parts(t).map(|p| p.rate)
    }

    #[test]
    fn unlimited_stays_unlimited_in_every_part_and_needs_no_lane() {
        assert_eq!(demand_part(u32::MAX, 5, 5, 3), u32::MAX);
        let mut book = DemandBook::new();
        let q = ClusterQuota {
            rate: RateLimit::UNLIMITED,
            max_concurrent: u32::MAX,
        };
        book.set(name("t"), q, 3, 0);
        assert!(book.is_empty());
    }

    #[test]
    fn without_demand_the_parts_are_even_and_a_lone_node_has_the_whole_quota() {
        assert_eq!(demand_part(100, 0, 0, 3), 34);
        assert_eq!(demand_part(30, 0, 0, 3), 10);
        assert_eq!(demand_part(100, 0, 0, 1), 100);
        assert_eq!(demand_part(100, 7, 0, 1), 100);
        assert_eq!(demand_part(100, 0, 0, 0), 100);
        for quota in [1u32, 2, 5, 50, 250, 1001] {
            for members in 1u32..=7 {
                let part = demand_part(quota, 0, 0, members);
                assert!(part >= 1, "every member may run one ({quota}/{members})");
                let total = part * members;
                assert!(total >= quota && total < quota + members);
            }
        }
    }

    #[test]
    fn parts_follow_demand_so_one_busy_node_gets_almost_all_of_the_quota() {
        // All the work reaches one of three nodes.
        assert_eq!(demand_part(300, 900, 0, 3), 300);
        assert_eq!(demand_part(300, 0, 900, 3), 10, "a tenth of an even part");
        assert_eq!(demand_part(60, 0, 900, 3), 2);
        // Split 1:2.
        assert_eq!(demand_part(300, 100, 200, 3), 100);
        assert_eq!(demand_part(300, 200, 100, 3), 200);
    }

    #[test]
    fn while_members_agree_the_parts_overshoot_by_rounding_and_floors_only() {
        // Every split of demand over 1..=5 members, as each member computes it.
        for (quota, floors) in [(97u64, 97 / 10), (13, 1)] {
            for members in 1u32..=5 {
                for pattern in 0u64..(4u64.pow(members)) {
                    let demands: Vec<u64> = (0..members)
                        .map(|i| [0, 1, 10, 1000][((pattern >> (2 * i)) & 3) as usize])
                        .collect();
                    let total: u64 = demands.iter().sum();
                    let parts: Vec<u32> = demands
                        .iter()
                        .map(|&mine| demand_part(quota as u32, mine, total - mine, members))
                        .collect();
                    let sum: u64 = parts.iter().map(|&p| u64::from(p)).sum();
                    let m = u64::from(members);
                    // Rounding: under 1 per member; floors: a tenth of the quota, or 1 each.
                    assert!(sum <= quota + m + floors.max(m), "{demands:?}: {sum}");
                    assert!(parts.iter().all(|&p| p >= 1));
                }
            }
        }
    }

    #[test]
    fn the_book_refuses_over_the_rate_with_a_retry_time_and_leaves_other_tenants_alone() {
        let mut book = DemandBook::new();
        let (a, b) = (name("a"), name("b"));
        book.set(a.clone(), rate_only(2, 2), 1, 0);
        book.admit(&a, 0).unwrap();
        book.admit(&a, 0).unwrap();
        assert_eq!(
            book.admit(&a, 0),
            Err(Error::QuotaExceeded {
                which: QuotaKind::Rate,
                retry_after_ms: Some(500)
            })
        );
        // No lane: no limit.
        for _ in 0..100 {
            book.admit(&b, 0).unwrap();
        }
        book.admit(&a, 500).unwrap();
        book.remove(&a);
        book.admit(&a, 500).unwrap();
    }

    #[test]
    fn demand_counts_refused_calls_and_moves_the_rate_to_where_calls_arrive() {
        let mut book = DemandBook::new();
        let t = name("t");
        // Three members: an even third (34 of 100) until demand is known.
        book.set(t.clone(), rate_only(100, 100), 3, 0);
        assert_eq!(rate_part(&book, &t), Some(limit(34, 34)));
        let admitted = (0..200).filter(|_| book.admit(&t, 0).is_ok()).count();
        assert_eq!(admitted, 34);
        // 200 calls in 200 ms: 1000 a second, refused ones included.
        let demand = book.take_demand(200, &HashMap::new(), 16);
        assert_eq!(demand, vec![(t.clone(), calls(1000))]);
        // Nobody else sees this tenant: this node gets the whole quota.
        book.share_by_demand(&HashMap::new(), Reading::Complete, 3, 200);
        assert_eq!(rate_part(&book, &t), Some(limit(100, 100)));
        // Another member reports three times our demand: a quarter.
        book.share_by_demand(
            &HashMap::from([(t.clone(), calls(3000))]),
            Reading::Complete,
            3,
            200,
        );
        assert_eq!(rate_part(&book, &t), Some(limit(25, 25)));
        // An empty window: no demand to report, and the part falls back to the floor.
        assert!(book.take_demand(200, &HashMap::new(), 16).is_empty());
        book.share_by_demand(
            &HashMap::from([(t.clone(), calls(3000))]),
            Reading::Complete,
            3,
            400,
        );
        assert_eq!(rate_part(&book, &t), Some(limit(3, 3)));
    }

    #[test]
    fn the_concurrency_part_follows_the_guests_where_they_run_after_two_readings() {
        let mut book = DemandBook::new();
        let t = name("t");
        let quota = ClusterQuota {
            rate: RateLimit::UNLIMITED,
            max_concurrent: 12,
        };
        book.set(t.clone(), quota, 3, 0);
        let part = |book: &DemandBook| book.parts(&t).unwrap().max_concurrent;
        assert_eq!(part(&book), 4, "an even third");
        // Calls arrive here but run elsewhere: the guests count, not the calls.
        for _ in 0..50 {
            book.admit(&t, 0).unwrap();
        }
        let demand = book.take_demand(1000, &HashMap::new(), 16);
        assert_eq!(demand, vec![(t.clone(), calls(50))]);
        let elsewhere = HashMap::from([(t.clone(), guests(4, 26))]);
        let changed = book.share_by_demand(&elsewhere, Reading::Complete, 3, 0);
        assert_eq!(
            changed,
            vec![(t.clone(), 1)],
            "shrinks at once, to the floor"
        );
        // Now the guests are here: 9 wanted here, 3 elsewhere (all running). The part grows
        // only once two readings agree.
        let here = HashMap::from([(t.clone(), (1, 8))]);
        let elsewhere = HashMap::from([(t.clone(), guests(3, 0))]);
        book.take_demand(1000, &here, 16);
        assert!(
            book.share_by_demand(&elsewhere, Reading::Complete, 3, 0)
                .is_empty(),
            "still 1"
        );
        book.take_demand(1000, &here, 16);
        assert_eq!(
            book.share_by_demand(&elsewhere, Reading::Complete, 3, 0),
            vec![(t.clone(), 9)]
        );
        // Nothing changed: nothing to tell the runtime.
        book.take_demand(1000, &here, 16);
        assert!(
            book.share_by_demand(&elsewhere, Reading::Complete, 3, 0)
                .is_empty()
        );
    }

    #[test]
    fn a_part_grows_only_after_two_complete_readings_and_a_partial_one_only_shrinks_it() {
        let mut book = DemandBook::new();
        let t = name("t");
        let quota = ClusterQuota {
            rate: RateLimit::UNLIMITED,
            max_concurrent: 50,
        };
        book.set(t.clone(), quota, 3, 0);
        let part = |book: &DemandBook| book.parts(&t).unwrap().max_concurrent;
        assert_eq!(part(&book), 17, "an even third");
        // A flood here; the other members' statuses still predate theirs (no demand).
        let here = HashMap::from([(t.clone(), (17, 13))]);
        let silent = HashMap::new();
        book.take_demand(200, &here, 16);
        book.share_by_demand(&silent, Reading::Complete, 3, 0);
        assert_eq!(part(&book), 17, "one reading: no growth yet");
        // The other members have not published since: their old demand does not count as
        // a second reading, however long they stay silent.
        for _ in 0..5 {
            book.take_demand(200, &here, 16);
            book.share_by_demand(&silent, Reading::Partial, 3, 0);
            assert_eq!(part(&book), 17, "a partial reading never grows a part");
        }
        // Their flood shows: the part stays at its share of the demand.
        let flooded = HashMap::from([(t.clone(), guests(34, 26))]);
        book.take_demand(200, &here, 16);
        book.share_by_demand(&flooded, Reading::Complete, 3, 0);
        assert_eq!(part(&book), 17);
        // A partial reading shrinks at once: the others now run 45.
        let busy = HashMap::from([(t.clone(), guests(45, 15))]);
        book.take_demand(200, &here, 16);
        book.share_by_demand(&busy, Reading::Partial, 3, 0);
        assert_eq!(part(&book), 50 + 2 - 45, "only the room the others leave");
        // Alone at last (the others' work ended) and heard from everyone twice: the whole.
        for _ in 0..2 {
            book.take_demand(200, &here, 16);
            book.share_by_demand(&silent, Reading::Complete, 3, 0);
        }
        assert_eq!(part(&book), 50);
    }

    #[test]
    fn a_part_never_takes_slots_the_other_members_still_run() {
        let mut book = DemandBook::new();
        let t = name("t");
        let quota = ClusterQuota {
            rate: RateLimit::UNLIMITED,
            max_concurrent: 7,
        };
        book.set(t.clone(), quota, 3, 0);
        // Another member ran the whole quota alone and still runs 7; work arrives here too.
        let here = HashMap::from([(t.clone(), (0, 12))]);
        let elsewhere = HashMap::from([(t.clone(), guests(7, 5))]);
        for _ in 0..3 {
            book.take_demand(200, &here, 16);
            book.share_by_demand(&elsewhere, Reading::Complete, 3, 0);
        }
        // Half the demand is here (4 of 7), but only the rounding slack (2) is free.
        assert_eq!(book.parts(&t).unwrap().max_concurrent, 2);
        // As the other member's guests end, the room comes back.
        let elsewhere = HashMap::from([(t.clone(), guests(3, 9))]);
        book.take_demand(200, &here, 16);
        book.share_by_demand(&elsewhere, Reading::Complete, 3, 0);
        assert_eq!(book.parts(&t).unwrap().max_concurrent, 4);
    }

    #[test]
    fn members_starting_a_flood_together_each_keep_an_even_part_while_they_learn_of_each_other() {
        // Three members, each with 12 guests wanted; the first to read sees nobody else yet.
        let quota = ClusterQuota {
            rate: RateLimit::UNLIMITED,
            max_concurrent: 7,
        };
        let t = name("t");
        let mut books: Vec<DemandBook> = (0..3).map(|_| DemandBook::new()).collect();
        for b in &mut books {
            b.set(t.clone(), quota, 3, 0);
        }
        let here = HashMap::from([(t.clone(), (0, 12))]);
        // Reading 1: member 0 knows nobody's demand, 1 knows 0's, 2 knows both.
        let seen = [guests(0, 0), guests(0, 12), guests(0, 24)];
        for (b, others) in books.iter_mut().zip(seen) {
            b.take_demand(200, &here, 16);
            b.share_by_demand(
                &HashMap::from([(t.clone(), others)]),
                Reading::Complete,
                3,
                0,
            );
        }
        let total: u32 = books
            .iter()
            .map(|b| b.parts(&t).unwrap().max_concurrent)
            .sum();
        assert!(total <= 7 + 2, "{total}");
        // Reading 2: everyone knows everyone.
        for b in &mut books {
            b.take_demand(200, &here, 16);
            b.share_by_demand(
                &HashMap::from([(t.clone(), guests(6, 18))]),
                Reading::Complete,
                3,
                0,
            );
        }
        let parts: Vec<u32> = books
            .iter()
            .map(|b| b.parts(&t).unwrap().max_concurrent)
            .collect();
        assert_eq!(parts, [3, 3, 3]);
    }

    #[test]
    fn a_smaller_part_empties_the_bucket_down_to_its_burst() {
        let mut book = DemandBook::new();
        let t = name("t");
        book.set(t.clone(), rate_only(100, 100), 1, 0);
        book.share_by_demand(
            &HashMap::from([(t.clone(), calls(1))]),
            Reading::Complete,
            2,
            0,
        );
        // Our demand is 0, the other member's is 1: the floor, 100 / 20 = 5.
        assert_eq!(rate_part(&book, &t), Some(limit(5, 5)));
        let admitted = (0..100).filter(|_| book.admit(&t, 0).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_raised_quota_applies_at_once_and_a_recount_of_members_keeps_the_demand_split() {
        let mut book = DemandBook::new();
        let t = name("t");
        book.set(t.clone(), rate_only(1, 2), 1, 0);
        assert_eq!((0..5).filter(|_| book.admit(&t, 0).is_ok()).count(), 2);
        // Raised to a burst of 10: 8 more at once, not a wait for the refill.
        book.set(t.clone(), rate_only(1, 10), 1, 0);
        assert_eq!((0..20).filter(|_| book.admit(&t, 0).is_ok()).count(), 8);
        // Lowered: the bucket holds no more than the new burst.
        book.set(t.clone(), rate_only(1000, 10), 1, 0);
        book.set(t.clone(), rate_only(1000, 4), 1, 5000);
        assert_eq!((0..20).filter(|_| book.admit(&t, 5000).is_ok()).count(), 4);

        // In a cluster: the part follows demand, and the same quota set again (members
        // recounted) keeps that split instead of taking the whole quota.
        book.take_demand(1000, &HashMap::new(), 16);
        book.set(t.clone(), rate_only(100, 100), 2, 5000);
        for _ in 0..10 {
            let _ = book.admit(&t, 5000);
        }
        book.take_demand(1000, &HashMap::new(), 16);
        book.share_by_demand(
            &HashMap::from([(t.clone(), calls(30))]),
            Reading::Complete,
            2,
            5000,
        );
        assert_eq!(rate_part(&book, &t), Some(limit(25, 25)));
        book.set(t.clone(), rate_only(100, 100), 3, 5000);
        assert_eq!(rate_part(&book, &t), Some(limit(25, 25)));
    }

    #[test]
    fn demand_is_reported_busiest_first_and_capped() {
        let mut book = DemandBook::new();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            book.set(name(n), rate_only(1, 1), 1, 0);
            for _ in 0..=i {
                let _ = book.admit(&name(n), 0);
            }
        }
        let slots = HashMap::from([(name("a"), (2, 3))]);
        let demand = book.take_demand(1000, &slots, 2);
        let a = Demand {
            calls_per_s: 1,
            slots: 5,
            running: 2,
        };
        assert_eq!(demand, vec![(name("a"), a), (name("c"), calls(3))]);
    }
}
