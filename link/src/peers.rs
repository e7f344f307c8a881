//! What this node knows of its peers: their last status, when each entered its membership
//! state, and from that the placement candidates for an MEU. Pure state: time is passed in
//! and the transport is asked nothing but the RTT, so every rule is tested without a clock or
//! a network.
//!
//! The rules:
//! - a peer is a candidate only while its last status is fresh (younger than `stale_after`),
//!   names the function's exact version as ready, and the transport has a connection to it;
//! - a peer that goes down loses its status at once (it is not offered until it publishes
//!   again);
//! - a peer coming up must have its registry pulled (anti-entropy), whatever it was before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_cluster::{NodeName, PeerState};
use tern_placement::NodeView;
use tern_tenancy::{Demand, TenantName};
use tern_wire::FunctionInfo;
use tern_wire::peer::{MAX_TENANT_DEMANDS, NodeStatus};

/// What the shell must do after a membership change.
#[derive(Debug, PartialEq, Eq)]
pub enum MembershipAction {
    /// Pull this peer's registry and apply what is newer.
    PullRegistry(NodeName),
    /// Nothing.
    None,
}

/// Statuses and membership ages of the peers.
#[derive(Debug)]
pub struct PeerTable {
    statuses: BTreeMap<NodeName, (NodeStatus, Instant)>,
    state_since: BTreeMap<NodeName, Instant>,
    /// Since when each peer that is not up has been away: its last loss, or when this node
    /// started watching it (redials flip a lost peer between down and joining; this does not
    /// move with them).
    away_since: BTreeMap<NodeName, Instant>,
    /// Peers seen up since this node started.
    seen_up: BTreeSet<NodeName>,
    /// When a peer last came back: up again after this node had seen it up and then away.
    /// While they were apart, each side may have taken the other's idempotency keys.
    last_return: Option<Instant>,
    stale_after: Duration,
}

/// One member as `GET /v1/cluster` shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct MemberView {
    pub node: String,
    pub state: &'static str,
    /// Milliseconds since it entered `state` (absent until its first change seen here).
    pub state_age_ms: Option<u64>,
    /// Milliseconds since its last status (absent before the first).
    pub status_age_ms: Option<u64>,
    pub queue_depth: Option<u32>,
    /// CPU use of its process over its last status interval, percent of one core.
    pub cpu_percent: Option<u32>,
    /// Function versions it has compiled and can run (a member missing some is still
    /// catching up with the registry).
    pub ready: Option<usize>,
    pub class: Option<tern_wire::NodeClass>,
    /// Whether the ractor_cluster session with the peer is ready (absent when sessions are
    /// off).
    pub session: Option<bool>,
}

impl PeerTable {
    /// A table whose statuses stop counting `stale_after` they were received.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            statuses: BTreeMap::new(),
            state_since: BTreeMap::new(),
            away_since: BTreeMap::new(),
            seen_up: BTreeSet::new(),
            last_return: None,
            stale_after,
        }
    }

    /// Starts watching `peers`, away until they come up.
    pub fn expect(&mut self, peers: impl IntoIterator<Item = NodeName>, now: Instant) {
        for peer in peers {
            self.away_since.entry(peer).or_insert(now);
        }
    }

    /// Brings the away times in line with the mesh's view: a peer up there is not away (it
    /// may have come up before the watcher subscribed, or in events it lagged behind on); one
    /// not up is away from now unless it already was.
    pub fn reconcile(&mut self, members: &BTreeMap<NodeName, PeerState>, now: Instant) {
        for (peer, state) in members {
            if *state == PeerState::Up {
                self.came_up(peer, now);
            } else {
                self.away_since.entry(peer.clone()).or_insert(now);
            }
        }
    }

    /// `peer` is up at `at`: no longer away, and back if it had been up before.
    fn came_up(&mut self, peer: &NodeName, at: Instant) {
        let was_away = self.away_since.remove(peer).is_some();
        let seen_before = !self.seen_up.insert(peer.clone());
        if was_away && seen_before {
            self.returned(at);
        }
    }

    /// Membership events were lost (the watcher lagged behind): a peer may have gone and come
    /// back unseen, so that counts as a return now.
    pub fn events_missed(&mut self, now: Instant) {
        self.returned(now);
    }

    fn returned(&mut self, at: Instant) {
        // Events may carry an older time than a reconcile already recorded.
        self.last_return = Some(self.last_return.map_or(at, |last| last.max(at)));
    }

    /// Whether a peer came back less than `window` before `now` (see [`PeerTable::came_up`]):
    /// a peer's first time up since this node started is not a return.
    pub fn returned_within(&self, window: Duration, now: Instant) -> bool {
        self.last_return
            .is_some_and(|at| now.saturating_duration_since(at) < window)
    }

    /// How long `peer` has been away at `now` (none while it is up, or for a peer not watched).
    pub fn away_for(&self, peer: &NodeName, now: Instant) -> Option<Duration> {
        self.away_since
            .get(peer)
            .map(|since| now.saturating_duration_since(*since))
    }

    /// A status from `peer` (the verified name of the sender, whatever the status claims),
    /// received at `now`.
    pub fn on_status(&mut self, peer: NodeName, status: NodeStatus, now: Instant) {
        self.statuses.insert(peer, (status, now));
    }

    /// Drops `peer`'s status (its control session ended: nothing vouches for it now).
    pub fn forget_status(&mut self, peer: &NodeName) {
        self.statuses.remove(peer);
    }

    /// `peer` entered `state` at `at`.
    pub fn on_membership(
        &mut self,
        peer: NodeName,
        state: PeerState,
        at: Instant,
    ) -> MembershipAction {
        self.state_since.insert(peer.clone(), at);
        if state == PeerState::Up {
            self.came_up(&peer, at);
        } else {
            self.away_since.entry(peer.clone()).or_insert(at);
        }
        match state {
            PeerState::Up => MembershipAction::PullRegistry(peer),
            PeerState::Down => {
                self.statuses.remove(&peer);
                MembershipAction::None
            }
            PeerState::Joining => MembershipAction::None,
        }
    }

    /// Each tenant's demand at the peers with a fresh status, summed over them, reading at
    /// most [`MAX_TENANT_DEMANDS`] entries of each status.
    pub fn tenant_demand(&self, now: Instant) -> HashMap<TenantName, Demand> {
        let mut sum: HashMap<TenantName, Demand> = HashMap::new();
        for (status, at) in self.statuses.values() {
            if now.saturating_duration_since(*at) > self.stale_after {
                continue;
            }
            for d in status.tenant_demand.iter().take(MAX_TENANT_DEMANDS) {
                let total = sum.entry(d.tenant.clone()).or_default();
                *total = total.saturating_add(Demand {
                    calls_per_s: d.per_s,
                    slots: d.slots,
                    running: d.running,
                });
            }
        }
        sum
    }

    /// How many peers have a fresh status received after `since` (every fresh status when
    /// `None`).
    pub fn heard_since(&self, since: Option<Instant>, now: Instant) -> usize {
        self.statuses
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= self.stale_after)
            .filter(|(_, at)| since.is_none_or(|since| *at > since))
            .count()
    }

    /// Appends to `out` the peers that can run `info` now: fresh status with that version
    /// ready, and connected (`rtt` answers `None` for a peer the transport has no connection
    /// to). Sorted by name, so order-sensitive placements are deterministic.
    pub fn candidates(
        &self,
        info: &FunctionInfo,
        now: Instant,
        rtt: impl Fn(&NodeName) -> Option<Duration>,
        out: &mut Vec<NodeView>,
    ) {
        for (node, (status, at)) in &self.statuses {
            if now.saturating_duration_since(*at) > self.stale_after
                || !status.ready.contains(&info.hash)
            {
                continue;
            }
            let Some(rtt) = rtt(node) else {
                continue;
            };
            out.push(NodeView {
                name: node.to_string(),
                alive: true,
                fits: info.memory_mb <= status.max_memory_mb
                    && info.timeout_ms <= status.max_timeout_ms,
                queue_depth: status.queue_depth as usize,
                queue_cap: status.queue_cap as usize,
                warm: status.warm.contains(&info.hash),
                class: status.class,
                max_memory_mb: status.max_memory_mb,
                max_timeout_ms: status.max_timeout_ms,
                cpu_percent: status.cpu_percent,
                memory_bytes: status.memory_bytes,
                recent_mean_us: status.recent_mean_us,
                rtt_us: rtt.as_micros().min(u128::from(u64::MAX)) as u64,
            });
        }
    }

    /// Every member the transport knows, with what this table knows of it, at `now`.
    /// `session` says whether a peer's ractor_cluster session is ready (`None` when sessions
    /// are off).
    pub fn members(
        &self,
        states: BTreeMap<NodeName, PeerState>,
        now: Instant,
        session: impl Fn(&NodeName) -> Option<bool>,
    ) -> Vec<MemberView> {
        let age_ms = |at: &Instant| now.saturating_duration_since(*at).as_millis() as u64;
        states
            .into_iter()
            .map(|(node, state)| {
                let status = self.statuses.get(&node);
                MemberView {
                    node: node.to_string(),
                    state: match state {
                        PeerState::Up => "up",
                        PeerState::Joining => "joining",
                        PeerState::Down => "down",
                    },
                    state_age_ms: self.state_since.get(&node).map(age_ms),
                    status_age_ms: status.map(|(_, at)| age_ms(at)),
                    queue_depth: status.map(|(s, _)| s.queue_depth),
                    cpu_percent: status.map(|(s, _)| s.cpu_percent),
                    ready: status.map(|(s, _)| s.ready.len()),
                    class: status.map(|(s, _)| s.class),
                    session: session(&node),
                }
            })
            .collect()
    }
}

/// Turns the node's cumulative counters into the per-interval numbers a status carries: CPU
/// use in percent of one core, and the mean latency of the invocations answered since the
/// previous status. Fed with readings, so it is tested without `/proc` or a clock.
#[derive(Debug)]
pub struct LoadMeter {
    last_cpu: Duration,
    last_at: Instant,
    last_latency: (u64, u64),
}

/// One interval's load, as published.
#[derive(Debug, PartialEq, Eq)]
pub struct Load {
    pub cpu_percent: u32,
    pub recent_mean_us: u64,
}

impl LoadMeter {
    pub fn new(cpu: Duration, at: Instant, latency_totals: (u64, u64)) -> Self {
        Self {
            last_cpu: cpu,
            last_at: at,
            last_latency: latency_totals,
        }
    }

    /// The load since the previous reading, given the process CPU time, the time, and the
    /// latency totals (count, sum in µs) now. Counters that go backwards count as zero.
    pub fn read(&mut self, cpu: Duration, at: Instant, latency_totals: (u64, u64)) -> Load {
        let wall = at
            .saturating_duration_since(self.last_at)
            .max(Duration::from_millis(1));
        let cpu_percent =
            (cpu.saturating_sub(self.last_cpu).as_secs_f64() / wall.as_secs_f64() * 100.0) as u32;
        let n = latency_totals.0.saturating_sub(self.last_latency.0);
        let sum = latency_totals.1.saturating_sub(self.last_latency.1);
        (self.last_cpu, self.last_at, self.last_latency) = (cpu, at, latency_totals);
        Load {
            cpu_percent,
            recent_mean_us: sum.checked_div(n).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_wire::{ModuleHash, NodeClass};

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn info(hash: ModuleHash) -> FunctionInfo {
        FunctionInfo {
            name: "f".parse().unwrap(),
            hash,
            version: 1,
            timeout_ms: 1000,
            memory_mb: 64,
            size_bytes: 0,
            deployed_at_ms: 0,
            max_instances: None,
        }
    }

    fn status(ready: &[ModuleHash], warm: &[ModuleHash]) -> NodeStatus {
        NodeStatus {
            class: NodeClass::EdgeSmall,
            max_memory_mb: 128,
            max_timeout_ms: 2000,
            queue_depth: 3,
            queue_cap: 10,
            ready: ready.to_vec(),
            warm: warm.to_vec(),
            ..NodeStatus::default()
        }
    }

    const H1: ModuleHash = ModuleHash([1; 32]);
    const H2: ModuleHash = ModuleHash([2; 32]);
    const STALE: Duration = Duration::from_secs(2);

    fn connected(_: &NodeName) -> Option<Duration> {
        Some(Duration::from_micros(250))
    }

    /// Only a peer that was up, then away, then up again is a return, whether the mesh's
    /// event or a reconcile saw it first; the return counts for the window given.
    #[test]
    fn a_peer_returns_only_when_up_again_after_being_up_and_away() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let window = Duration::from_secs(300);
        let mut t = PeerTable::new(STALE);
        t.expect([n("b"), n("c")], at(0));
        t.on_membership(n("b"), PeerState::Up, at(10));
        let mut members = BTreeMap::from([(n("b"), PeerState::Up), (n("c"), PeerState::Up)]);
        t.reconcile(&members, at(20));
        assert!(!t.returned_within(window, at(30)), "first time up");
        // Up again while up (a repeated event) is no return either.
        t.on_membership(n("b"), PeerState::Up, at(40));
        assert!(!t.returned_within(window, at(50)));

        t.on_membership(n("c"), PeerState::Down, at(1_000));
        t.on_membership(n("c"), PeerState::Joining, at(1_500));
        assert!(!t.returned_within(window, at(1_600)), "still away");
        t.on_membership(n("c"), PeerState::Up, at(2_000));
        assert!(t.returned_within(window, at(2_000)));
        assert!(t.returned_within(window, at(301_999)));
        assert!(
            !t.returned_within(window, at(302_000)),
            "the window is over"
        );

        // A loss and return the reconcile sees before the events do; the events, older,
        // do not move the return back.
        members.insert(n("b"), PeerState::Down);
        t.reconcile(&members, at(400_000));
        members.insert(n("b"), PeerState::Up);
        t.reconcile(&members, at(401_000));
        assert!(t.returned_within(window, at(401_000)));
        t.on_membership(n("b"), PeerState::Down, at(399_000));
        t.on_membership(n("b"), PeerState::Up, at(399_500));
        assert!(t.returned_within(window, at(700_999)));
        assert!(!t.returned_within(window, at(701_000)));

        // Lost events count as a return.
        t.events_missed(at(800_000));
        assert!(t.returned_within(window, at(800_000)));
    }

    /// Away time runs from a peer's loss (or from when watching began), does not restart as
    /// redials flip it between down and joining, and ends when it is up.
    #[test]
    fn a_peer_is_away_from_its_loss_through_redials_until_it_is_up_again() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut table = PeerTable::new(STALE);
        table.expect([n("b")], t0);
        assert_eq!(
            table.away_for(&n("b"), at(300)),
            Some(Duration::from_millis(300))
        );
        table.on_membership(n("b"), PeerState::Up, at(500));
        assert_eq!(table.away_for(&n("b"), at(900)), None);
        table.on_membership(n("b"), PeerState::Down, at(1_000));
        table.on_membership(n("b"), PeerState::Joining, at(1_100));
        table.on_membership(n("b"), PeerState::Down, at(1_600));
        assert_eq!(
            table.away_for(&n("b"), at(11_000)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(table.away_for(&n("c"), at(11_000)), None, "not watched");

        // A peer up in the mesh's view is not away, whatever events were missed; one that is
        // not up is away from when that was first seen.
        let members = |b, c| BTreeMap::from([(n("b"), b), (n("c"), c)]);
        table.reconcile(&members(PeerState::Up, PeerState::Down), at(12_000));
        assert_eq!(table.away_for(&n("b"), at(13_000)), None);
        assert_eq!(
            table.away_for(&n("c"), at(13_000)),
            Some(Duration::from_secs(1))
        );
        table.reconcile(&members(PeerState::Up, PeerState::Joining), at(13_000));
        assert_eq!(
            table.away_for(&n("c"), at(14_000)),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn a_fresh_status_with_the_version_ready_makes_a_connected_candidate() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_status(n("b"), status(&[H1], &[H1]), t0);
        let mut out = Vec::new();
        table.candidates(
            &info(H1),
            t0 + Duration::from_millis(500),
            connected,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let b = &out[0];
        assert_eq!(b.name, "b");
        assert!(b.alive && b.fits && b.warm);
        assert_eq!((b.queue_depth, b.queue_cap, b.rtt_us), (3, 10, 250));
        assert_eq!(b.class, NodeClass::EdgeSmall);
    }

    #[test]
    fn a_peer_without_that_version_ready_is_not_a_candidate() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_status(n("b"), status(&[H2], &[]), t0);
        let mut out = Vec::new();
        table.candidates(&info(H1), t0, connected, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_status_older_than_stale_after_is_ignored_until_the_next_one() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_status(n("b"), status(&[H1], &[]), t0);
        let mut out = Vec::new();
        table.candidates(&info(H1), t0 + STALE, connected, &mut out);
        assert_eq!(out.len(), 1, "exactly stale_after old still counts");
        out.clear();
        let late = t0 + STALE + Duration::from_millis(1);
        table.candidates(&info(H1), late, connected, &mut out);
        assert!(out.is_empty());
        table.on_status(n("b"), status(&[H1], &[]), late);
        table.candidates(&info(H1), late, connected, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn an_unconnected_peer_is_not_a_candidate_even_with_a_fresh_status() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_status(n("b"), status(&[H1], &[]), t0);
        let mut out = Vec::new();
        table.candidates(&info(H1), t0, |_| None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_function_larger_than_the_peer_class_is_offered_as_not_fitting() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_status(n("b"), status(&[H1], &[]), t0);
        let big = FunctionInfo {
            memory_mb: 129,
            ..info(H1)
        };
        let mut out = Vec::new();
        table.candidates(&big, t0, connected, &mut out);
        assert!(!out[0].fits);
    }

    #[test]
    fn candidates_come_sorted_by_name() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        for peer in ["d", "b", "c"] {
            table.on_status(n(peer), status(&[H1], &[]), t0);
        }
        let mut out = Vec::new();
        table.candidates(&info(H1), t0, connected, &mut out);
        let names: Vec<_> = out.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
    }

    #[test]
    fn a_peer_going_down_loses_its_status_and_coming_up_asks_for_a_registry_pull() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_status(n("b"), status(&[H1], &[]), t0);
        assert_eq!(
            table.on_membership(n("b"), PeerState::Down, t0),
            MembershipAction::None
        );
        let mut out = Vec::new();
        table.candidates(&info(H1), t0, connected, &mut out);
        assert!(out.is_empty());
        assert_eq!(
            table.on_membership(n("b"), PeerState::Up, t0),
            MembershipAction::PullRegistry(n("b"))
        );
        assert_eq!(
            table.on_membership(n("b"), PeerState::Joining, t0),
            MembershipAction::None
        );
    }

    #[test]
    fn members_show_state_ages_and_last_status() {
        let t0 = Instant::now();
        let mut table = PeerTable::new(STALE);
        table.on_membership(n("b"), PeerState::Up, t0);
        let s = NodeStatus {
            cpu_percent: 37,
            ..status(&[H1], &[])
        };
        table.on_status(n("b"), s, t0 + Duration::from_millis(100));
        let states = BTreeMap::from([(n("b"), PeerState::Up), (n("c"), PeerState::Joining)]);
        let view = table.members(states, t0 + Duration::from_millis(350), |p| {
            Some(p.as_str() == "b")
        });
        assert_eq!(
            view,
            vec![
                MemberView {
                    node: "b".into(),
                    state: "up",
                    state_age_ms: Some(350),
                    status_age_ms: Some(250),
                    queue_depth: Some(3),
                    cpu_percent: Some(37),
                    ready: Some(1),
                    class: Some(NodeClass::EdgeSmall),
                    session: Some(true),
                },
                MemberView {
                    node: "c".into(),
                    state: "joining",
                    state_age_ms: None,
                    status_age_ms: None,
                    queue_depth: None,
                    cpu_percent: None,
                    ready: None,
                    class: None,
                    session: Some(false),
                },
            ]
        );
    }

    #[test]
    fn load_meter_reports_cpu_share_and_mean_latency_of_the_interval() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::new(Duration::from_millis(100), t0, (10, 1_000));
        let load = meter.read(
            Duration::from_millis(150),
            t0 + Duration::from_millis(200),
            (14, 1_800),
        );
        assert_eq!(
            load,
            Load {
                cpu_percent: 25,
                recent_mean_us: 200
            }
        );
        // No traffic and no CPU in the next interval.
        let idle = meter.read(
            Duration::from_millis(150),
            t0 + Duration::from_millis(400),
            (14, 1_800),
        );
        assert_eq!(
            idle,
            Load {
                cpu_percent: 0,
                recent_mean_us: 0
            }
        );
    }

    #[test]
    fn load_meter_treats_counters_going_backwards_as_zero() {
        let t0 = Instant::now();
        let mut meter = LoadMeter::new(Duration::from_secs(5), t0, (100, 10_000));
        let load = meter.read(Duration::from_secs(1), t0, (1, 5));
        assert_eq!(
            load,
            Load {
                cpu_percent: 0,
                recent_mean_us: 0
            }
        );
    }

    #[test]
    fn heard_since_counts_fresh_statuses_received_after_the_last_reading() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut table = PeerTable::new(Duration::from_secs(1));
        assert_eq!(table.heard_since(None, t0), 0, "nobody yet");
        table.on_status(n("b"), NodeStatus::default(), ms(10));
        table.on_status(n("c"), NodeStatus::default(), ms(20));
        assert_eq!(table.heard_since(None, ms(30)), 2);
        // A reading at 30: b publishes again, c stays silent.
        table.on_status(n("b"), NodeStatus::default(), ms(210));
        assert_eq!(table.heard_since(Some(ms(30)), ms(230)), 1);
        table.on_status(n("c"), NodeStatus::default(), ms(220));
        assert_eq!(table.heard_since(Some(ms(30)), ms(230)), 2);
        // A status received exactly at the reading came before it.
        assert_eq!(table.heard_since(Some(ms(220)), ms(230)), 0);
        // b's status goes stale: it is not heard, whenever it came.
        table.on_status(n("c"), NodeStatus::default(), ms(1300));
        assert_eq!(table.heard_since(None, ms(1300)), 1);
    }

    #[test]
    fn tenant_demand_sums_fresh_statuses_only_and_reads_a_bounded_number_of_entries() {
        use tern_wire::peer::TenantDemand;
        let t0 = Instant::now();
        let demand = |pairs: &[(&str, u64)]| NodeStatus {
            tenant_demand: pairs
                .iter()
                .map(|(t, per_s)| TenantDemand {
                    tenant: t.parse().unwrap(),
                    per_s: *per_s,
                    slots: 1,
                    running: 1,
                })
                .collect(),
            ..NodeStatus::default()
        };
        let mut table = PeerTable::new(Duration::from_secs(1));
        table.on_status(n("b"), demand(&[("acme", 100), ("zed", 5)]), t0);
        table.on_status(n("c"), demand(&[("acme", 50)]), t0);
        let sum = table.tenant_demand(t0);
        let summed = |calls_per_s, n| Demand {
            calls_per_s,
            slots: n,
            running: n,
        };
        assert_eq!(sum.get(&"acme".parse().unwrap()), Some(&summed(150, 2)));
        assert_eq!(sum.get(&"zed".parse().unwrap()), Some(&summed(5, 1)));
        // c's status goes stale: only b counts.
        table.on_status(
            n("b"),
            demand(&[("acme", 100)]),
            t0 + Duration::from_secs(2),
        );
        let sum = table.tenant_demand(t0 + Duration::from_secs(2));
        assert_eq!(sum.get(&"acme".parse().unwrap()), Some(&summed(100, 1)));
        // A status listing more tenants than allowed: the rest is not read.
        let many: Vec<(String, u64)> = (0..MAX_TENANT_DEMANDS + 10)
            .map(|i| (format!("t{i}"), 1))
            .collect();
        let pairs: Vec<(&str, u64)> = many.iter().map(|(t, d)| (t.as_str(), *d)).collect();
        table.on_status(n("b"), demand(&pairs), t0 + Duration::from_secs(2));
        assert_eq!(
            table.tenant_demand(t0 + Duration::from_secs(2)).len(),
            MAX_TENANT_DEMANDS
        );
    }
}
