//! Exponential backoff with full jitter, and idempotency keys.

use std::time::Duration;

/// The delay before retry number `retry` (0 for the first retry): a uniformly random duration
/// in `[0, min(max, base * 2^retry)]`, drawn from `random` ("full jitter", so clients that
/// failed together do not retry together).
pub(crate) fn backoff(retry: u32, base: Duration, max: Duration, random: u64) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let ceiling_ns = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    if ceiling_ns == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % (ceiling_ns + 1))
}

/// An idempotency key from 16 random bytes: `tc-` and 32 hex digits (printable ASCII, so the
/// node accepts it).
pub(crate) fn key_from(random: [u8; 16]) -> String {
    let mut key = String::with_capacity(3 + 32);
    key.push_str("tc-");
    for b in random {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_is_capped_and_jittered() {
        let base = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        // Ceilings: 50, 100, 200 ms … capped at 2 s.
        for (retry, ceiling_ms) in [(0, 50), (1, 100), (2, 200), (5, 1600), (6, 2000)] {
            let d = backoff(retry, base, max, u64::MAX);
            assert!(d <= Duration::from_millis(ceiling_ms), "{retry}: {d:?}");
        }
        assert!(backoff(40, base, max, u64::MAX) <= max);
        assert_eq!(backoff(100, base, max, 0), Duration::ZERO);
        // Jitter: different random inputs give different delays within the ceiling.
        let delays: std::collections::BTreeSet<Duration> = (0..64u64)
            .map(|r| backoff(3, base, max, r.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        assert!(delays.len() > 32);
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert_eq!(backoff(3, Duration::ZERO, max, 12345), Duration::ZERO);
    }

    #[test]
    fn keys_are_valid_idempotency_keys() {
        let key = key_from([0xab; 16]);
        assert_eq!(key.len(), 35);
        assert!(key.starts_with("tc-abab"));
        tern_wire::check_idempotency_key(&key).unwrap_or_else(|e| panic!("{e}"));
    }
}
