//! Request-rate quotas: a token bucket per tenant on each node, and each node's part of a
//! tenant's cluster-wide rate, split by where the tenant's calls arrive.
//!
//! A tenant's `max_rate_per_s` and `rate_burst` hold for the whole cluster. Every node admits
//! the calls that reach it against its own bucket, whose rate is the node's *part*
//! ([`rate_part`]): the quota in proportion to the node's share of the tenant's recent demand
//! (calls that arrived, admitted or not), as the members publish it in their statuses. A node
//! alone has the whole quota. Demand, not an even split, so a client that talks to one node
//! gets (almost) the whole rate there instead of a third of it.
//!
//! Pure: times are `now_ms` arguments on any monotonic clock, amounts are integers (a bucket
//! counts thousandths of a call), so every decision is exact and reproducible.

use std::collections::HashMap;

use crate::error::{Error, QuotaKind};
use crate::tenant::TenantName;

/// Thousandths of a call: a rate of `r` calls per second refills exactly `r` of these per
/// millisecond.
const MILLI: u64 = 1000;

/// A node with no recent demand for a tenant still gets this fraction (1/`FLOOR_DIVISOR` of
/// an even part) of its rate, so the first calls that reach it are admitted before its demand
/// shows in a status.
const FLOOR_DIVISOR: u64 = 10;

/// A rate limit: `per_s` calls a second on average, up to `burst` at once. `u32::MAX` for
/// either means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_s: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const UNLIMITED: RateLimit = RateLimit {
        per_s: u32::MAX,
        burst: u32::MAX,
    };

    pub fn is_unlimited(self) -> bool {
        self.per_s == u32::MAX || self.burst == u32::MAX
    }
}

/// A token bucket: holds up to `burst` calls, refills at `per_s`, and a call takes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Thousandths of a call available.
    level: u64,
    /// When `level` was last brought up to date.
    at_ms: u64,
}

impl Bucket {
    /// A full bucket: a tenant may burst as soon as it exists.
    pub fn full(limit: RateLimit, now_ms: u64) -> Self {
        Self {
            level: u64::from(limit.burst) * MILLI,
            at_ms: now_ms,
        }
    }

    /// Takes one call, or says in how many milliseconds one will be available.
    pub fn take(&mut self, limit: RateLimit, now_ms: u64) -> Result<(), u64> {
        if limit.is_unlimited() {
            return Ok(());
        }
        self.refill(limit, now_ms);
        if self.level >= MILLI {
            self.level -= MILLI;
            return Ok(());
        }
        // At least 1 (per_s ≥ 1 is a quota invariant; 0 here would mean never).
        let per_ms = u64::from(limit.per_s).max(1);
        Err((MILLI - self.level).div_ceil(per_ms))
    }

    fn refill(&mut self, limit: RateLimit, now_ms: u64) {
        // A clock that went back (it should not: callers pass a monotonic one) refills nothing.
        let elapsed = now_ms.saturating_sub(self.at_ms);
        let cap = u64::from(limit.burst) * MILLI;
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(u64::from(limit.per_s)))
            .min(cap);
        self.at_ms = self.at_ms.max(now_ms);
    }
}

/// One node's part of a tenant's cluster-wide rate limit, given this node's recent demand
/// (`mine`, calls a second that arrived here) and the sum of the other members' (`others`),
/// with `members_up` members up, this node included.
///
/// - No demand anywhere: an even split (as [`crate::node_share`]).
/// - Otherwise the quota in proportion to this node's demand, rounded up, and never below a
///   floor of a tenth of an even part (at least 1), so a node whose demand is not yet known
///   can still admit a trickle.
///
/// The burst is split in the same proportion. While the members see the same demands, the
/// parts add up to at most the quota, plus one per member (rounding), plus the floors of the
/// members without demand (a tenth of the quota in all, or one per member if that is more).
/// While they do not (a status in flight, a partition), each side computes from what it
/// sees, and the total can reach the quota once per side.
pub fn rate_part(quota: RateLimit, mine: u64, others: u64, members_up: u32) -> RateLimit {
    if quota.is_unlimited() {
        return RateLimit::UNLIMITED;
    }
    let members = u64::from(members_up.max(1));
    let part = |whole: u32| -> u32 {
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
    };
    RateLimit {
        per_s: part(quota.per_s),
        burst: part(quota.burst),
    }
}

/// The rate buckets of every tenant with a finite rate on one node, and the demand it has
/// seen since the last [`RateBook::take_demand`].
#[derive(Debug, Default)]
pub struct RateBook {
    lanes: HashMap<TenantName, Lane>,
}

#[derive(Debug)]
struct Lane {
    /// The tenant's cluster-wide quota.
    quota: RateLimit,
    /// This node's part of it.
    part: RateLimit,
    bucket: Bucket,
    /// Calls that arrived (admitted or not) since the demand was last taken.
    arrivals: u64,
    /// The last demand measured here, calls a second.
    demand: u64,
    /// The other members' last published demand, summed.
    elsewhere: u64,
}

impl RateBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a tenant's cluster-wide rate quota; this node's part starts as an even split over
    /// `members_up` until demands are known, and otherwise follows the last demands seen. A
    /// raised quota takes effect at once: the bucket gains what the burst grew by. A tenant
    /// without a finite rate has no lane, so its calls cost one map lookup.
    pub fn set(&mut self, tenant: TenantName, quota: RateLimit, members_up: u32, now_ms: u64) {
        if quota.is_unlimited() {
            self.lanes.remove(&tenant);
            return;
        }
        match self.lanes.get_mut(&tenant) {
            Some(lane) => {
                let part = rate_part(quota, lane.demand, lane.elsewhere, members_up);
                lane.bucket.refill(lane.part, now_ms);
                let grown = u64::from(part.burst.saturating_sub(lane.part.burst));
                if lane.quota != quota {
                    lane.bucket.level = lane.bucket.level.saturating_add(grown * MILLI);
                }
                lane.bucket.level = lane.bucket.level.min(u64::from(part.burst) * MILLI);
                lane.quota = quota;
                lane.part = part;
            }
            None => {
                let part = rate_part(quota, 0, 0, members_up);
                self.lanes.insert(
                    tenant,
                    Lane {
                        quota,
                        part,
                        bucket: Bucket::full(part, now_ms),
                        arrivals: 0,
                        demand: 0,
                        elsewhere: 0,
                    },
                );
            }
        }
    }

    /// Whether no tenant has a finite rate.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Forgets a removed tenant.
    pub fn remove(&mut self, tenant: &TenantName) {
        self.lanes.remove(tenant);
    }

    /// Admits one call of `tenant` now, or refuses it with the time until one fits. Every
    /// call counts towards the tenant's demand here, admitted or not: a node turning calls
    /// away still needs its part.
    pub fn admit(&mut self, tenant: &TenantName, now_ms: u64) -> Result<(), Error> {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return Ok(());
        };
        lane.arrivals = lane.arrivals.saturating_add(1);
        lane.bucket
            .take(lane.part, now_ms)
            .map_err(|wait_ms| Error::QuotaExceeded {
                which: QuotaKind::Rate,
                retry_after_ms: Some(wait_ms),
            })
    }

    /// Ends a measuring window of `elapsed_ms`: every tenant's demand here in calls a second
    /// (tenants with none are left out), busiest first, at most `max` of them (what a status
    /// can carry). The counts start again from zero.
    pub fn take_demand(&mut self, elapsed_ms: u64, max: usize) -> Vec<(TenantName, u64)> {
        let elapsed_ms = elapsed_ms.max(1);
        let mut demand: Vec<(TenantName, u64)> = Vec::new();
        for (tenant, lane) in &mut self.lanes {
            lane.demand = lane.arrivals.saturating_mul(1000).div_ceil(elapsed_ms);
            lane.arrivals = 0;
            if lane.demand > 0 {
                demand.push((tenant.clone(), lane.demand));
            }
        }
        demand.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        demand.truncate(max);
        demand
    }

    /// Sets every tenant's part on this node from its own last demand and the other members'
    /// (`others`, summed per tenant; a tenant not in it has none elsewhere).
    pub fn share_by_demand(
        &mut self,
        others: &HashMap<TenantName, u64>,
        members_up: u32,
        now_ms: u64,
    ) {
        for (tenant, lane) in &mut self.lanes {
            let elsewhere = others.get(tenant).copied().unwrap_or(0);
            lane.elsewhere = elsewhere;
            let part = rate_part(lane.quota, lane.demand, elsewhere, members_up);
            if part != lane.part {
                // Bring the bucket up to date at the old rate, then hold it to the new burst.
                lane.bucket.refill(lane.part, now_ms);
                lane.bucket.level = lane.bucket.level.min(u64::from(part.burst) * MILLI);
                lane.part = part;
            }
        }
    }

    /// This node's current part of `tenant`'s rate, if it has a finite one.
    pub fn part(&self, tenant: &TenantName) -> Option<RateLimit> {
        self.lanes.get(tenant).map(|l| l.part)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(per_s: u32, burst: u32) -> RateLimit {
        RateLimit { per_s, burst }
    }

    fn name(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    #[test]
    fn a_full_bucket_admits_the_burst_then_one_call_per_refill_interval() {
        let l = limit(10, 3);
        let mut b = Bucket::full(l, 0);
        for _ in 0..3 {
            b.take(l, 0).unwrap();
        }
        // 10 a second: the next call fits after 100 ms, not before.
        assert_eq!(b.take(l, 0), Err(100));
        assert_eq!(b.take(l, 40), Err(60));
        b.take(l, 100).unwrap();
        assert_eq!(b.take(l, 100), Err(100));
        // A long pause refills only up to the burst.
        for _ in 0..3 {
            b.take(l, 60_000).unwrap();
        }
        assert!(b.take(l, 60_000).is_err());
    }

    #[test]
    fn over_any_window_a_bucket_admits_at_most_burst_plus_rate_times_time() {
        // Calls every millisecond for 10 s against 50/s with a burst of 20.
        let l = limit(50, 20);
        let mut b = Bucket::full(l, 0);
        let admitted = (0..10_000u64).filter(|&t| b.take(l, t).is_ok()).count() as u64;
        assert!(admitted <= 20 + 50 * 10, "{admitted}");
        assert!(
            admitted >= 50 * 10,
            "the rate itself is available: {admitted}"
        );
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let l = limit(1000, 1);
        let mut b = Bucket::full(l, 1000);
        b.take(l, 1000).unwrap();
        assert!(b.take(l, 500).is_err());
        assert!(
            b.take(l, 1000).is_err(),
            "no refill for time already counted"
        );
        b.take(l, 1001).unwrap();
    }

    #[test]
    fn unlimited_is_never_refused_and_stays_unlimited_in_every_part() {
        let mut b = Bucket::full(RateLimit::UNLIMITED, 0);
        for _ in 0..10_000 {
            b.take(RateLimit::UNLIMITED, 0).unwrap();
        }
        assert_eq!(
            rate_part(RateLimit::UNLIMITED, 5, 5, 3),
            RateLimit::UNLIMITED
        );
    }

    #[test]
    fn without_demand_the_parts_are_even_and_a_lone_node_has_the_whole_quota() {
        assert_eq!(rate_part(limit(100, 30), 0, 0, 3), limit(34, 10));
        assert_eq!(rate_part(limit(100, 30), 0, 0, 1), limit(100, 30));
        assert_eq!(rate_part(limit(100, 30), 7, 0, 1), limit(100, 30));
        assert_eq!(rate_part(limit(100, 30), 0, 0, 0), limit(100, 30));
    }

    #[test]
    fn parts_follow_demand_so_one_busy_node_gets_almost_all_of_the_rate() {
        // All the calls reach one of three nodes.
        let busy = rate_part(limit(300, 60), 900, 0, 3);
        let idle = rate_part(limit(300, 60), 0, 900, 3);
        assert_eq!(busy, limit(300, 60));
        assert_eq!(idle, limit(10, 2), "a tenth of an even part");
        // Split 1:2.
        assert_eq!(rate_part(limit(300, 60), 100, 200, 3), limit(100, 20));
        assert_eq!(rate_part(limit(300, 60), 200, 100, 3), limit(200, 40));
    }

    #[test]
    fn while_members_agree_the_parts_overshoot_by_rounding_and_floors_only() {
        // Every split of demand over 1..=5 members, as each member computes it.
        let quota = limit(97, 13);
        for members in 1u32..=5 {
            for pattern in 0u64..(4u64.pow(members)) {
                let demands: Vec<u64> = (0..members)
                    .map(|i| [0, 1, 10, 1000][((pattern >> (2 * i)) & 3) as usize])
                    .collect();
                let total: u64 = demands.iter().sum();
                let parts: Vec<RateLimit> = demands
                    .iter()
                    .map(|&mine| rate_part(quota, mine, total - mine, members))
                    .collect();
                let rate: u64 = parts.iter().map(|p| u64::from(p.per_s)).sum();
                let burst: u64 = parts.iter().map(|p| u64::from(p.burst)).sum();
                let m = u64::from(members);
                // Rounding: under 1 per member; floors: a tenth of the quota, at least 1 each.
                assert!(rate <= 97 + m + (97 / 10).max(m), "{demands:?}: {rate}");
                assert!(burst <= 13 + m + m, "{demands:?}: {burst}");
                assert!(parts.iter().all(|p| p.per_s >= 1 && p.burst >= 1));
            }
        }
    }

    #[test]
    fn the_book_refuses_over_the_rate_with_a_retry_time_and_leaves_other_tenants_alone() {
        let mut book = RateBook::new();
        let (a, b) = (name("a"), name("b"));
        book.set(a.clone(), limit(2, 2), 1, 0);
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
    fn demand_counts_refused_calls_and_moves_the_part_to_where_calls_arrive() {
        let mut book = RateBook::new();
        let t = name("t");
        // Three members: an even third (34 of 100) until demand is known.
        book.set(t.clone(), limit(100, 100), 3, 0);
        assert_eq!(book.part(&t), Some(limit(34, 34)));
        let admitted = (0..200).filter(|_| book.admit(&t, 0).is_ok()).count();
        assert_eq!(admitted, 34);
        // 200 calls in 200 ms: 1000 a second, refused ones included.
        let demand = book.take_demand(200, 16);
        assert_eq!(demand, vec![(t.clone(), 1000)]);
        // Nobody else sees this tenant: this node gets the whole quota.
        book.share_by_demand(&HashMap::new(), 3, 200);
        assert_eq!(book.part(&t), Some(limit(100, 100)));
        // Another member reports three times our demand: a quarter.
        book.share_by_demand(&HashMap::from([(t.clone(), 3000)]), 3, 200);
        assert_eq!(book.part(&t), Some(limit(25, 25)));
        // An empty window: no demand to report, and the part falls back to the floor.
        assert!(book.take_demand(200, 16).is_empty());
        book.share_by_demand(&HashMap::from([(t.clone(), 3000)]), 3, 400);
        assert_eq!(book.part(&t), Some(limit(3, 3)));
    }

    #[test]
    fn a_smaller_part_empties_the_bucket_down_to_its_burst() {
        let mut book = RateBook::new();
        let t = name("t");
        book.set(t.clone(), limit(100, 100), 1, 0);
        book.share_by_demand(&HashMap::from([(t.clone(), 1)]), 2, 0);
        // Our demand is 0, the other member's is 1: the floor, 100 / 20 = 5.
        assert_eq!(book.part(&t), Some(limit(5, 5)));
        let admitted = (0..100).filter(|_| book.admit(&t, 0).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_raised_quota_applies_at_once_and_a_recount_of_members_keeps_the_demand_split() {
        let mut book = RateBook::new();
        let t = name("t");
        book.set(t.clone(), limit(1, 2), 1, 0);
        assert_eq!((0..5).filter(|_| book.admit(&t, 0).is_ok()).count(), 2);
        // Raised to a burst of 10: 8 more at once, not a wait for the refill.
        book.set(t.clone(), limit(1, 10), 1, 0);
        assert_eq!((0..20).filter(|_| book.admit(&t, 0).is_ok()).count(), 8);
        // Lowered: the bucket holds no more than the new burst.
        book.set(t.clone(), limit(1000, 10), 1, 0);
        book.set(t.clone(), limit(1000, 4), 1, 5000);
        assert_eq!((0..20).filter(|_| book.admit(&t, 5000).is_ok()).count(), 4);

        // In a cluster: the part follows demand, and the same quota set again (members
        // recounted) keeps that split instead of taking the whole quota.
        book.take_demand(1000, 16);
        book.set(t.clone(), limit(100, 100), 2, 5000);
        for _ in 0..10 {
            let _ = book.admit(&t, 5000);
        }
        book.take_demand(1000, 16);
        book.share_by_demand(&HashMap::from([(t.clone(), 30)]), 2, 5000);
        assert_eq!(book.part(&t), Some(limit(25, 25)));
        book.set(t.clone(), limit(100, 100), 3, 5000);
        assert_eq!(book.part(&t), Some(limit(25, 25)));
    }

    #[test]
    fn demand_is_reported_busiest_first_and_capped() {
        let mut book = RateBook::new();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            book.set(name(n), limit(1, 1), 1, 0);
            for _ in 0..=i {
                let _ = book.admit(&name(n), 0);
            }
        }
        let demand = book.take_demand(1000, 2);
        assert_eq!(demand, vec![(name("c"), 3), (name("b"), 2)]);
    }
}
