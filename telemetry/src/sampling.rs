//! Head sampling: whether an invocation is traced is decided once, where it enters the
//! cluster, and every later span follows that decision (OpenTelemetry's
//! `parentbased_traceidratio`). Deciding before any span exists is what makes an untraced
//! request free: no span is created for it anywhere.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tern_wire::TraceParent;

/// Whether export is on (set once by [`crate::Export::install`]).
static ON: AtomicBool = AtomicBool::new(false);
/// A root is traced when a uniform 64-bit draw is below this.
static THRESHOLD: AtomicU64 = AtomicU64::new(0);
/// Whether a caller's sampled flag decides (parent-based sampling).
static FOLLOW_CALLER: AtomicBool = AtomicBool::new(true);

/// Turns sampling on with `ratio` (0 to 1) of new traces kept, following callers' decisions
/// or not.
pub(crate) fn enable(ratio: f64, follow_caller: bool) {
    THRESHOLD.store(threshold(ratio), Relaxed);
    FOLLOW_CALLER.store(follow_caller, Relaxed);
    ON.store(true, Relaxed);
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio > 0.0 {
        (ratio * u64::MAX as f64) as u64
    } else {
        0
    }
}

/// Whether an invocation arriving with `parent` (its caller's span, if it sent one) is traced
/// here: never while export is off; as the caller decided when it sent a valid parent and
/// callers are followed; else by the configured ratio.
pub fn sample(parent: Option<&TraceParent>) -> bool {
    if !ON.load(Relaxed) {
        return false;
    }
    decide(
        parent,
        FOLLOW_CALLER.load(Relaxed),
        THRESHOLD.load(Relaxed),
        draw,
    )
}

/// Whether a hop inside the cluster (a peer's MEU, an async invocation's run) continues
/// `parent`: always when it is sampled and export is on, since the entry node decided.
pub fn sample_hop(parent: &TraceParent) -> bool {
    ON.load(Relaxed) && parent.is_valid() && parent.sampled()
}

fn decide(
    parent: Option<&TraceParent>,
    follow_caller: bool,
    threshold: u64,
    draw: impl FnOnce() -> u64,
) -> bool {
    match parent {
        Some(p) if follow_caller && p.is_valid() => p.sampled(),
        _ => threshold == u64::MAX || (threshold > 0 && draw() < threshold),
    }
}

/// A uniform 64-bit number from a per-thread xorshift generator, seeded from the standard
/// library's per-process random keys: sampling needs spread, not secrecy, and must not take a
/// lock or a system call per request.
fn draw() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(flags: u8) -> TraceParent {
        TraceParent {
            trace_id: [1; 16],
            parent_id: [2; 8],
            flags,
        }
    }

    #[test]
    fn a_valid_callers_decision_is_followed_whatever_the_ratio() {
        assert!(decide(Some(&parent(1)), true, 0, || unreachable!()));
        assert!(!decide(Some(&parent(0)), true, u64::MAX, || unreachable!()));
        // An invalid parent is no parent: the ratio decides.
        let invalid = TraceParent {
            trace_id: [0; 16],
            ..parent(1)
        };
        assert!(!decide(Some(&invalid), true, 0, || 0));
        assert!(decide(Some(&invalid), true, u64::MAX, || u64::MAX));
    }

    #[test]
    fn where_callers_are_not_followed_only_the_ratio_decides() {
        assert!(!decide(Some(&parent(1)), false, 0, || 0));
        assert!(decide(Some(&parent(0)), false, u64::MAX, || 0));
        let half = threshold(0.5);
        assert!(decide(Some(&parent(0)), false, half, || half - 1));
        assert!(!decide(Some(&parent(1)), false, half, || half));
    }

    #[test]
    fn ratio_zero_never_and_one_always_traces_a_new_invocation() {
        assert!(!decide(None, true, threshold(0.0), || 0));
        assert!(decide(None, true, threshold(1.0), || u64::MAX));
        assert_eq!(threshold(-3.0), 0);
        assert_eq!(threshold(f64::NAN), 0);
    }

    #[test]
    fn a_one_percent_ratio_keeps_about_one_invocation_in_a_hundred() {
        let t = threshold(0.01);
        let kept = (0..100_000).filter(|_| decide(None, true, t, draw)).count();
        assert!((700..=1300).contains(&kept), "kept {kept} of 100000");
    }
}
