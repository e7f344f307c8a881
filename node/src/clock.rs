//! The node's two clocks.
//!
//! [`now_ms`], for what a node stores and expires by itself (async invocation records and
//! their results, idempotency keys, invocation ids): the system's wall-clock time read once,
//! when the process first asks, plus monotonic time since. A jump of the system clock while
//! the node runs (an operator's `date -s`, NTP stepping) moves none of it: stored results and
//! keys expire after their retention period of time that actually passed, not at once when
//! the clock jumps forward a day nor an hour late when it jumps back. Across a restart the
//! wall clock is read again, so time that passed while the node was down counts (and a jump
//! made while it was down looks like downtime); time the machine spends suspended does not
//! (the results live that much longer). An invocation's `accepted_at_ms` and `finished_at_ms`
//! are on this clock: after a jump they differ from the system's by the jump until the node
//! restarts.
//!
//! [`wall_ms`], for stamps that other nodes compare (a deploy's or tenant change's time, which
//! breaks ties between concurrent changes of one version; token records): the system clock,
//! which NTP keeps in step across the cluster and corrects on a node that started wrong.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch and the monotonic instant they were read at.
static ORIGIN: OnceLock<(u64, Instant)> = OnceLock::new();

/// Milliseconds since the Unix epoch on the node's clock.
pub fn now_ms() -> u64 {
    let (wall_ms, at) = *ORIGIN.get_or_init(|| (wall_ms(), Instant::now()));
    since(wall_ms, at.elapsed())
}

/// The node's time `elapsed` after a start whose wall clock read `origin_ms`.
fn since(origin_ms: u64, elapsed: Duration) -> u64 {
    origin_ms.saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The system's wall clock now, ms since the Unix epoch (0 before 1970, which no real clock
/// reads).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_time_is_its_origin_plus_time_passed_and_saturates() {
        assert_eq!(since(1_000, Duration::from_millis(250)), 1_250);
        assert_eq!(since(u64::MAX - 1, Duration::from_secs(5)), u64::MAX);
    }

    #[test]
    fn the_node_clock_moves_with_monotonic_time_not_the_system_clock() {
        let (origin_ms, at) = *ORIGIN.get_or_init(|| (wall_ms(), Instant::now()));
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(20));
        let b = now_ms();
        assert!(b >= a + 20, "{a} then {b}");
        // Whatever the system clock did meanwhile, the node's time is the origin's reading
        // plus the monotonic time since it (read around the call).
        let lo = since(origin_ms, at.elapsed());
        let now = now_ms();
        let hi = since(origin_ms, at.elapsed());
        assert!(lo <= now && now <= hi, "{lo} <= {now} <= {hi}");
    }
}
