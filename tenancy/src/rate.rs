//! Request-rate limits: a token bucket, exact in integers. Each node holds one per tenant with
//! a finite rate, running at the node's part of the tenant's cluster-wide rate
//! ([`crate::demand`]).
//!
//! Pure: times are `now_ms` arguments on any monotonic clock, amounts are integers (a bucket
//! counts thousandths of a call), so every decision is exact and reproducible.

/// Thousandths of a call: a rate of `r` calls per second refills exactly `r` of these per
/// millisecond.
pub(crate) const MILLI: u64 = 1000;

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
    pub(crate) level: u64,
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

    pub(crate) fn refill(&mut self, limit: RateLimit, now_ms: u64) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(per_s: u32, burst: u32) -> RateLimit {
        RateLimit { per_s, burst }
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
    fn an_unlimited_bucket_never_refuses() {
        let mut b = Bucket::full(RateLimit::UNLIMITED, 0);
        for _ in 0..10_000 {
            b.take(RateLimit::UNLIMITED, 0).unwrap();
        }
    }
}
