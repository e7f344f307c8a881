//! Membership and liveness as a pure state machine: no I/O, no clock, no randomness source.
//!
//! The actor shell feeds it what the transport saw (`connected`, `connection_lost`,
//! `dial_failed`) with the current monotonic time, calls `tick` to learn which peers to dial,
//! and fans the returned [`MembershipEvent`]s out to subscribers. Keeping it pure makes every
//! transition testable without sockets or sleeps, and using `Instant` only keeps
//! wall-clock jumps out of it (a clock stepped by NTP must not kill or revive a peer).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::NodeName;

/// Where a peer stands as seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// No verified connection. The dialling side has a redial scheduled.
    Down,
    /// A dial is in flight (only on the dialling side).
    Joining,
    /// A connection whose peer identity was verified is open.
    Up,
}

/// A state change, for subscribers (scheduler masks, client failover, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipEvent {
    pub node: NodeName,
    pub state: PeerState,
    pub at: Instant,
}

/// Why a connection ended; kept for diagnostics, it does not change the transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// No packet within the idle timeout: the peer crashed, froze or is partitioned away.
    TimedOut,
    /// The peer or we closed the connection.
    Closed,
    /// Anything else the transport reported.
    Other(String),
}

/// Identifies one connection, so a late loss report about a replaced connection does not take
/// down its successor. The transport's `Connection::id` provides it.
pub type ConnId = u64;

/// The only thing `tick` asks the shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dial {
    pub node: NodeName,
}

/// Redial backoff: `base` doubling per failed attempt up to `max`, each delay drawn uniformly
/// from `[d/2, d]` so peers that lost a node at the same instant do not redial in lockstep.
#[derive(Clone, Copy, Debug)]
pub struct BackoffConfig {
    pub base: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            // A dial to an unreachable peer costs a few packets, and after a partition heals
            // the link must be back within 2 s of a healed partition: the dial in flight at the
            // heal resends its Initial at most ~1 s later or gives up (`dial_timeout`), and
            // the next one starts at most 500 ms later.
            max: Duration::from_millis(500),
        }
    }
}

/// Only the lower name of a pair dials, so each pair has one connection and no dial races
/// (ARCHITECTURE.md §5).
pub fn should_dial(self_name: &NodeName, peer: &NodeName) -> bool {
    self_name < peer
}

/// splitmix64: tiny, deterministic, good enough for jitter; seeded so tests reproduce.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[derive(Clone, Debug)]
struct Peer {
    state: PeerState,
    /// The connection that made this peer `Up`.
    conn: Option<ConnId>,
    /// Failed dials since the last success; drives the backoff exponent.
    failures: u32,
    /// When the next dial is due (dialling side, while not `Up` and no dial in flight).
    next_dial: Option<Instant>,
    last_loss: Option<LossReason>,
}

/// The membership of a statically configured cluster, from one node's point of view.
#[derive(Clone, Debug)]
pub struct Membership {
    self_name: NodeName,
    peers: BTreeMap<NodeName, Peer>,
    backoff: BackoffConfig,
    rng: SplitMix64,
}

impl Membership {
    /// All peers start `Down`; the ones this node dials are due immediately.
    pub fn new(
        self_name: NodeName,
        peers: impl IntoIterator<Item = NodeName>,
        backoff: BackoffConfig,
        seed: u64,
        now: Instant,
    ) -> Self {
        let peers = peers
            .into_iter()
            .filter(|p| *p != self_name)
            .map(|name| {
                let next_dial = should_dial(&self_name, &name).then_some(now);
                let peer = Peer {
                    state: PeerState::Down,
                    conn: None,
                    failures: 0,
                    next_dial,
                    last_loss: None,
                };
                (name, peer)
            })
            .collect();
        Self {
            self_name,
            peers,
            backoff,
            rng: SplitMix64(seed),
        }
    }

    pub fn self_name(&self) -> &NodeName {
        &self.self_name
    }

    /// `None` for a name that is not a configured peer.
    pub fn state(&self, node: &NodeName) -> Option<PeerState> {
        self.peers.get(node).map(|p| p.state)
    }

    pub fn last_loss(&self, node: &NodeName) -> Option<&LossReason> {
        self.peers.get(node).and_then(|p| p.last_loss.as_ref())
    }

    /// When `node`'s next dial is due, if one is scheduled.
    pub fn next_dial(&self, node: &NodeName) -> Option<Instant> {
        self.peers.get(node).and_then(|p| p.next_dial)
    }

    /// The earliest scheduled dial, so the shell knows how long it may sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.next_dial).min()
    }

    /// Peers currently `Up`.
    pub fn up(&self) -> impl Iterator<Item = &NodeName> {
        self.peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Up)
            .map(|(n, _)| n)
    }

    /// A connection to `node` passed identity verification. Call only for verified
    /// connections: an unverified one must never change membership.
    /// A new connection replaces the previous one.
    pub fn connected(
        &mut self,
        node: &NodeName,
        conn: ConnId,
        now: Instant,
    ) -> Vec<MembershipEvent> {
        let Some(peer) = self.peers.get_mut(node) else {
            return Vec::new();
        };
        peer.conn = Some(conn);
        peer.failures = 0;
        peer.next_dial = None;
        peer.last_loss = None;
        transition(node, peer, PeerState::Up, now)
    }

    /// Connection `conn` to `node` ended. Ignored unless it is the connection that made the
    /// peer `Up` (a stale report about a replaced connection must not take the peer down).
    pub fn connection_lost(
        &mut self,
        node: &NodeName,
        conn: ConnId,
        now: Instant,
        reason: LossReason,
    ) -> Vec<MembershipEvent> {
        let dials = should_dial(&self.self_name, node);
        let Some(peer) = self.peers.get_mut(node) else {
            return Vec::new();
        };
        if peer.conn != Some(conn) {
            return Vec::new();
        }
        peer.conn = None;
        peer.last_loss = Some(reason);
        if dials {
            // A peer that was just working is most likely back soon (a blip or a restart):
            // the first redial uses the base delay.
            peer.failures = 0;
            let delay = backoff_delay(&self.backoff, &mut self.rng, 0);
            peer.next_dial = Some(now + delay);
        }
        transition(node, peer, PeerState::Down, now)
    }

    /// A dial started by `tick` failed (refused, timed out, or the identity check failed).
    pub fn dial_failed(&mut self, node: &NodeName, now: Instant) -> Vec<MembershipEvent> {
        let Some(peer) = self.peers.get_mut(node) else {
            return Vec::new();
        };
        if peer.state != PeerState::Joining {
            return Vec::new();
        }
        peer.failures = peer.failures.saturating_add(1);
        let delay = backoff_delay(&self.backoff, &mut self.rng, peer.failures);
        peer.next_dial = Some(now + delay);
        transition(node, peer, PeerState::Down, now)
    }

    /// Dials due at `now`. Each returned peer moves to `Joining` until the shell reports
    /// `connected` or `dial_failed`.
    pub fn tick(&mut self, now: Instant) -> (Vec<Dial>, Vec<MembershipEvent>) {
        let mut dials = Vec::new();
        let mut events = Vec::new();
        for (name, peer) in &mut self.peers {
            if peer.state == PeerState::Down && peer.next_dial.is_some_and(|due| due <= now) {
                peer.next_dial = None;
                dials.push(Dial { node: name.clone() });
                events.extend(transition(name, peer, PeerState::Joining, now));
            }
        }
        (dials, events)
    }
}

fn transition(
    node: &NodeName,
    peer: &mut Peer,
    state: PeerState,
    now: Instant,
) -> Vec<MembershipEvent> {
    if peer.state == state {
        return Vec::new();
    }
    peer.state = state;
    vec![MembershipEvent {
        node: node.clone(),
        state,
        at: now,
    }]
}

/// Delay before dial number `failures + 1`: `min(base · 2^failures, max)`, jittered into
/// `[d/2, d]`.
fn backoff_delay(cfg: &BackoffConfig, rng: &mut SplitMix64, failures: u32) -> Duration {
    let base = cfg.base.as_millis().min(u128::from(u64::MAX)) as u64;
    let max = cfg.max.as_millis().min(u128::from(u64::MAX)) as u64;
    let factor = 1u64.checked_shl(failures.min(63)).unwrap_or(u64::MAX);
    let d = base.saturating_mul(factor).min(max);
    let half = d / 2;
    let jitter = rng.next() % (d - half + 1);
    Duration::from_millis(half + jitter)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn ms(t0: Instant, m: u64) -> Instant {
        t0 + Duration::from_millis(m)
    }

    fn mem(self_name: &str, seed: u64, t0: Instant) -> Membership {
        Membership::new(
            n(self_name),
            [n("a"), n("b"), n("c")],
            BackoffConfig::default(),
            seed,
            t0,
        )
    }

    #[test]
    fn lower_name_dials() {
        assert!(should_dial(&n("a"), &n("b")));
        assert!(!should_dial(&n("b"), &n("a")));
        assert!(!should_dial(&n("a"), &n("a")));
    }

    #[test]
    fn only_peers_we_dial_are_dialled_and_self_is_not_a_peer() {
        let t0 = Instant::now();
        let mut m = mem("b", 1, t0);
        assert_eq!(m.state(&n("b")), None);
        let (dials, events) = m.tick(t0);
        assert_eq!(dials, vec![Dial { node: n("c") }]);
        assert_eq!(
            events,
            vec![MembershipEvent {
                node: n("c"),
                state: PeerState::Joining,
                at: t0
            }]
        );
        // `a` dials us; we never dial it.
        assert_eq!(m.state(&n("a")), Some(PeerState::Down));
        assert_eq!(m.next_dial(&n("a")), None);
        // A dial in flight is not repeated.
        assert!(m.tick(ms(t0, 10_000)).0.is_empty());
    }

    #[test]
    fn deterministic_transitions() {
        let t0 = Instant::now();
        let mut m = mem("a", 7, t0);
        let (dials, _) = m.tick(t0);
        assert_eq!(dials.len(), 2);
        let ev = m.connected(&n("b"), 1, ms(t0, 5));
        assert_eq!(ev[0].state, PeerState::Up);
        assert_eq!(m.up().cloned().collect::<Vec<_>>(), vec![n("b")]);
        let ev = m.connection_lost(&n("b"), 1, ms(t0, 100), LossReason::TimedOut);
        assert_eq!(
            ev,
            vec![MembershipEvent {
                node: n("b"),
                state: PeerState::Down,
                at: ms(t0, 100)
            }]
        );
        assert_eq!(m.last_loss(&n("b")), Some(&LossReason::TimedOut));
        // First redial after a loss uses the base delay, jittered into [50, 100] ms.
        let due = m.next_dial(&n("b")).unwrap();
        let d = due - ms(t0, 100);
        assert!(
            d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
            "{d:?}"
        );
        assert!(m.tick(due - Duration::from_millis(1)).0.is_empty());
        assert_eq!(m.tick(due).0, vec![Dial { node: n("b") }]);
    }

    #[test]
    fn backoff_grows_caps_and_resets_on_success() {
        let t0 = Instant::now();
        let mut m = mem("a", 42, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let (dials, _) = m.tick(now);
            assert!(dials.contains(&Dial { node: n("b") }));
            m.dial_failed(&n("b"), now);
            let due = m.next_dial(&n("b")).unwrap();
            delays.push((due - now).as_millis() as u64);
            now = due;
        }
        // Failure k waits in [d/2, d] with d = min(100·2^k, 500).
        for (i, d) in delays.iter().enumerate() {
            let cap = (100u64 << (i + 1)).min(500);
            assert!(*d >= cap / 2 && *d <= cap, "attempt {i}: {d} vs cap {cap}");
        }
        assert!(delays.iter().all(|d| *d <= 500));
        assert!(delays[11] >= 250, "capped, not reset: {delays:?}");
        // Success resets the exponent: the next loss redials after ~base again.
        m.tick(now);
        m.connected(&n("b"), 9, now);
        m.connection_lost(&n("b"), 9, now, LossReason::Closed);
        let d = m.next_dial(&n("b")).unwrap() - now;
        assert!(d <= Duration::from_millis(100), "{d:?}");
    }

    #[test]
    fn jitter_is_deterministic_per_seed() {
        let run = |seed| {
            let t0 = Instant::now();
            let mut m = mem("a", seed, t0);
            let mut out = Vec::new();
            let mut now = t0;
            for _ in 0..8 {
                m.tick(now);
                m.dial_failed(&n("c"), now);
                let due = m.next_dial(&n("c")).unwrap();
                out.push(due - now);
                now = due;
            }
            out
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn unknown_peers_and_duplicates_change_nothing() {
        let t0 = Instant::now();
        let mut m = mem("a", 1, t0);
        assert!(m.connected(&n("zz"), 1, t0).is_empty());
        assert!(
            m.connection_lost(&n("zz"), 1, t0, LossReason::Closed)
                .is_empty()
        );
        assert!(m.dial_failed(&n("zz"), t0).is_empty());
        assert_eq!(m.state(&n("zz")), None);

        assert_eq!(m.connected(&n("b"), 1, t0).len(), 1);
        // Same state again: no event.
        assert!(m.connected(&n("b"), 1, t0).is_empty());
        // dial_failed without a dial in flight: ignored.
        assert!(m.dial_failed(&n("b"), t0).is_empty());
        assert_eq!(m.state(&n("b")), Some(PeerState::Up));
        assert_eq!(
            m.connection_lost(&n("b"), 1, t0, LossReason::Closed).len(),
            1
        );
        assert!(
            m.connection_lost(&n("b"), 1, t0, LossReason::Closed)
                .is_empty()
        );
    }

    #[test]
    fn a_stale_loss_does_not_take_down_the_replacement_connection() {
        let t0 = Instant::now();
        let mut m = mem("a", 1, t0);
        m.connected(&n("b"), 1, t0);
        // The peer restarted and reconnected before we noticed the old connection die.
        assert!(m.connected(&n("b"), 2, ms(t0, 1)).is_empty());
        assert!(
            m.connection_lost(&n("b"), 1, ms(t0, 2), LossReason::TimedOut)
                .is_empty()
        );
        assert_eq!(m.state(&n("b")), Some(PeerState::Up));
    }

    #[test]
    fn non_dialling_side_just_waits() {
        let t0 = Instant::now();
        let mut m = mem("c", 1, t0);
        assert!(m.tick(t0).0.is_empty());
        m.connected(&n("a"), 5, t0);
        m.connection_lost(&n("a"), 5, t0, LossReason::Closed);
        assert_eq!(m.state(&n("a")), Some(PeerState::Down));
        assert_eq!(m.next_deadline(), None);
    }
}
