//! Whether a cluster member knows the cluster's registry yet. Until it does, a function it
//! has not heard of may exist on another node, so the node answers "retry" (`unavailable`)
//! rather than "not found". Pure state: time is passed in, so every rule is tested without a
//! clock or a network.
//!
//! The rules:
//! - a node with no peers is synced from the start;
//! - pulling and applying any one peer's registry makes it synced for good;
//! - otherwise it gives up waiting at its deadline (start + `cluster_sync_grace_ms`), but
//!   only while no pull is under way: a pull that has started may still bring the function.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

#[derive(Debug)]
pub struct RegistrySync {
    /// A peer's registry has been pulled and applied (or there is no peer).
    synced: AtomicBool,
    /// Pulls under way: while one runs, the deadline does not apply.
    pulling: AtomicUsize,
    /// Past this, a node that is not pulling from anyone answers for what it has.
    deadline: Instant,
}

impl RegistrySync {
    pub fn new(no_peers: bool, deadline: Instant) -> Self {
        Self {
            synced: AtomicBool::new(no_peers),
            pulling: AtomicUsize::new(0),
            deadline,
        }
    }

    /// Whether the node may answer "not found" for a function it does not know, at `now`.
    pub fn is_synced(&self, now: Instant) -> bool {
        self.synced.load(Acquire) || (self.pulling.load(Acquire) == 0 && now >= self.deadline)
    }

    /// A pull from a peer starts; it counts as under way until the returned guard is
    /// dropped, however the pull ends (the guard can move into the task that pulls).
    pub fn pull_started(self: &Arc<Self>) -> Pulling {
        self.pulling.fetch_add(1, Release);
        Pulling(self.clone())
    }

    /// A peer's registry was pulled and applied.
    pub fn pulled(&self) {
        self.synced.store(true, Release);
    }
}

/// A registry pull under way (see [`RegistrySync::pull_started`]).
#[derive(Debug)]
pub struct Pulling(Arc<RegistrySync>);

impl Drop for Pulling {
    fn drop(&mut self) {
        self.0.pulling.fetch_sub(1, Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn a_node_without_peers_is_synced_from_the_start() {
        let t0 = Instant::now();
        assert!(RegistrySync::new(true, t0 + GRACE).is_synced(t0));
    }

    #[test]
    fn a_member_waits_until_its_deadline_then_answers_for_what_it_has() {
        let t0 = Instant::now();
        let s = Arc::new(RegistrySync::new(false, t0 + GRACE));
        assert!(!s.is_synced(t0));
        assert!(!s.is_synced(t0 + GRACE - Duration::from_millis(1)));
        assert!(s.is_synced(t0 + GRACE));
    }

    #[test]
    fn a_pull_under_way_holds_the_deadline_off_until_it_ends() {
        let t0 = Instant::now();
        let s = Arc::new(RegistrySync::new(false, t0 + GRACE));
        let late = t0 + GRACE * 2;
        let first = s.pull_started();
        let second = s.pull_started();
        assert!(!s.is_synced(late));
        drop(first);
        assert!(!s.is_synced(late), "one pull is still under way");
        drop(second);
        assert!(
            s.is_synced(late),
            "a failed pull does not hold the node forever"
        );
    }

    #[test]
    fn one_applied_pull_makes_the_node_synced_for_good_even_before_the_deadline() {
        let t0 = Instant::now();
        let s = Arc::new(RegistrySync::new(false, t0 + GRACE));
        let pull = s.pull_started();
        s.pulled();
        assert!(s.is_synced(t0));
        let _other = s.pull_started();
        drop(pull);
        assert!(s.is_synced(t0));
    }
}
