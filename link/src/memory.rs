//! An in-memory mesh: the links of several [`ClusterLink`]s in one process, with scripted
//! partitions, one-way frame loss and crashes, and seeded per-frame delays on tokio's clock.
//! Run under paused time (`#[tokio::test(start_paused = true)]`), a scenario that spans
//! seconds of cluster time — statuses going stale, failover, anti-entropy after a partition —
//! takes milliseconds and replays the same way for the same seed.
//!
//! The model, kept close to what the QUIC mesh does:
//! - every declared node is a configured peer of every other; a link is up while both ends
//!   are attached (running) and it is not partitioned, and each end sees `Up`/`Down`
//!   membership events when that changes;
//! - a request over a link that is down is not sent (the link's `request` answers `None`);
//!   requests in flight when it goes down fail as lost, while the peer's handler, already
//!   started, runs to its end (the MEU may have run);
//! - frames dropped in one direction ([`MemoryNet::drop_frames`]) vanish while the link stays
//!   up: the exchange hangs until the caller's own deadline, as over a one-way partition
//!   before the idle timeout notices;
//! - each frame is delayed by a duration drawn from the seeded generator.
//!
//! [`ClusterLink`]: crate::ClusterLink

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_cluster::mesh::Handler;
use tern_cluster::{MembershipEvent, NodeName, PartSender, PeerState};
use tern_sync::poison::lock;
use tokio::sync::{broadcast, watch};

use crate::LinkError;
use crate::net::{NetFuture, PeerNet};

/// The shared in-memory network. Cheap to clone.
#[derive(Clone)]
pub struct MemoryNet {
    state: Arc<Mutex<State>>,
}

struct State {
    rng: StdRng,
    /// One-way delay of a frame: uniform in this range.
    delay: (Duration, Duration),
    nodes: BTreeMap<NodeName, Slot>,
    /// Keyed by the pair in name order.
    links: BTreeMap<(NodeName, NodeName), Link>,
    /// Frames from `.0` to `.1` vanish.
    dropping: BTreeSet<(NodeName, NodeName)>,
}

struct Slot {
    /// The node's request handler while it runs.
    handler: Option<Handler>,
    events: broadcast::Sender<MembershipEvent>,
}

struct Link {
    partitioned: bool,
    /// Bumped every time the link goes down: exchanges in flight watch it and fail.
    epoch: watch::Sender<u64>,
}

fn key(a: &NodeName, b: &NodeName) -> (NodeName, NodeName) {
    if a <= b {
        (a.clone(), b.clone())
    } else {
        (b.clone(), a.clone())
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl State {
    fn is_up(&self, a: &NodeName, b: &NodeName) -> bool {
        let attached = |n: &NodeName| self.nodes.get(n).is_some_and(|s| s.handler.is_some());
        a != b
            && attached(a)
            && attached(b)
            && self.links.get(&key(a, b)).is_some_and(|l| !l.partitioned)
    }

    fn up_view(&self) -> BTreeSet<(NodeName, NodeName)> {
        self.links
            .keys()
            .filter(|(a, b)| self.is_up(a, b))
            .cloned()
            .collect()
    }

    /// Emits membership events for every link whose state differs from `before`, and fails
    /// the exchanges in flight on links that went down.
    fn settle(&self, before: &BTreeSet<(NodeName, NodeName)>) {
        let after = self.up_view();
        for pair in before.symmetric_difference(&after) {
            let up = after.contains(pair);
            if !up && let Some(link) = self.links.get(pair) {
                link.epoch.send_modify(|e| *e += 1);
            }
            let state = if up { PeerState::Up } else { PeerState::Down };
            for (me, peer) in [(&pair.0, &pair.1), (&pair.1, &pair.0)] {
                if let Some(slot) = self.nodes.get(me)
                    && slot.handler.is_some()
                {
                    let _ = slot.events.send(MembershipEvent {
                        node: peer.clone(),
                        state,
                        at: now(),
                    });
                }
            }
        }
    }
}

impl MemoryNet {
    /// A network of the nodes `names` (each a configured peer of the others, none running
    /// yet), whose frames are each delayed by a duration in `delay`, drawn from a generator
    /// seeded with `seed`.
    pub fn new(seed: u64, names: &[NodeName], delay: (Duration, Duration)) -> Self {
        let mut links = BTreeMap::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                links.insert(
                    key(a, b),
                    Link {
                        partitioned: false,
                        epoch: watch::channel(0).0,
                    },
                );
            }
        }
        let nodes = names
            .iter()
            .map(|n| {
                let slot = Slot {
                    handler: None,
                    events: broadcast::channel(256).0,
                };
                (n.clone(), slot)
            })
            .collect();
        Self {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                delay: (delay.0, delay.1.max(delay.0)),
                nodes,
                links,
                dropping: BTreeSet::new(),
            })),
        }
    }

    /// Starts `name` on the network, serving requests with `handler`: its links to the
    /// running, unpartitioned nodes come up. Returns its end of the network, for
    /// [`ClusterLink::with_net`](crate::ClusterLink::with_net).
    pub fn attach(&self, name: &NodeName, handler: Handler) -> Result<MemoryPeer, LinkError> {
        let mut state = lock(&self.state);
        let before = state.up_view();
        let slot = state
            .nodes
            .get_mut(name)
            .ok_or_else(|| LinkError::NotConnected(name.clone()))?;
        slot.handler = Some(handler);
        state.settle(&before);
        Ok(MemoryPeer {
            net: self.clone(),
            me: name.clone(),
        })
    }

    /// Stops `name` abruptly (a crash): its links go down, exchanges in flight with it fail.
    pub fn crash(&self, name: &NodeName) {
        let mut state = lock(&self.state);
        let before = state.up_view();
        if let Some(slot) = state.nodes.get_mut(name) {
            slot.handler = None;
        }
        state.settle(&before);
    }

    /// Cuts (`true`) or restores (`false`) the link between `a` and `b`, both ways.
    pub fn partition(&self, a: &NodeName, b: &NodeName, cut: bool) {
        let mut state = lock(&self.state);
        let before = state.up_view();
        if let Some(link) = state.links.get_mut(&key(a, b)) {
            link.partitioned = cut;
        }
        state.settle(&before);
    }

    /// Cuts (`true`) or restores (`false`) every link of `node`.
    pub fn isolate(&self, node: &NodeName, cut: bool) {
        let mut state = lock(&self.state);
        let before = state.up_view();
        for ((a, b), link) in state.links.iter_mut() {
            if a == node || b == node {
                link.partitioned = cut;
            }
        }
        state.settle(&before);
    }

    /// Makes frames from `from` to `to` vanish (`true`) or arrive again (`false`), while the
    /// link stays up.
    pub fn drop_frames(&self, from: &NodeName, to: &NodeName, drop: bool) {
        let mut state = lock(&self.state);
        let pair = (from.clone(), to.clone());
        if drop {
            state.dropping.insert(pair);
        } else {
            state.dropping.remove(&pair);
        }
    }

    /// Whether the link between `a` and `b` is up now.
    pub fn is_up(&self, a: &NodeName, b: &NodeName) -> bool {
        lock(&self.state).is_up(a, b)
    }
}

/// One node's end of a [`MemoryNet`].
pub struct MemoryPeer {
    net: MemoryNet,
    me: NodeName,
}

impl MemoryPeer {
    /// One exchange with `peer`, its parts (if any) to `parts`.
    fn exchange(
        &self,
        peer: &NodeName,
        frame: Vec<u8>,
        parts: Option<PartSender>,
    ) -> Option<NetFuture> {
        let mut state = lock(&self.net.state);
        if !state.is_up(&self.me, peer) {
            return None;
        }
        let handler = state.nodes.get(peer)?.handler.clone()?;
        let mut epoch = state.links.get(&key(&self.me, peer))?.epoch.subscribe();
        let (lo, hi) = state.delay;
        let mut draw = || {
            if hi > lo {
                state.rng.random_range(lo..=hi)
            } else {
                lo
            }
        };
        let (there, back) = (draw(), draw());
        let drop_request = state.dropping.contains(&(self.me.clone(), peer.clone()));
        let drop_answer = state.dropping.contains(&(peer.clone(), self.me.clone()));
        drop(state);
        let (me, peer) = (self.me.clone(), peer.clone());
        Some(Box::pin(async move {
            let exchange = async {
                tokio::time::sleep(there).await;
                if drop_request {
                    std::future::pending::<()>().await;
                }
                // Parts go straight through (they are not delayed or dropped one by one);
                // a requester whose answers are dropped gets none.
                let parts = parts.filter(|_| !drop_answer);
                // The peer runs the request in its own task: it finishes even if the link
                // breaks meanwhile, as a real peer would.
                let answer = tokio::spawn(handler(me, frame, parts)).await;
                tokio::time::sleep(back).await;
                if drop_answer {
                    std::future::pending::<()>().await;
                }
                answer
            };
            tokio::select! {
                answer = exchange => answer.map_err(|e| LinkError::Lost {
                    peer: peer.clone(),
                    detail: format!("the peer's handler failed: {e}"),
                }),
                _ = epoch.changed() => Err(LinkError::Lost {
                    peer: peer.clone(),
                    detail: "the link went down".to_owned(),
                }),
            }
        }))
    }
}

impl PeerNet for MemoryPeer {
    fn members(&self) -> BTreeMap<NodeName, PeerState> {
        let state = lock(&self.net.state);
        state
            .nodes
            .keys()
            .filter(|n| **n != self.me)
            .map(|n| {
                let s = if state.is_up(&self.me, n) {
                    PeerState::Up
                } else {
                    PeerState::Down
                };
                (n.clone(), s)
            })
            .collect()
    }

    fn rtt(&self, peer: &NodeName) -> Option<Duration> {
        let state = lock(&self.net.state);
        state
            .is_up(&self.me, peer)
            .then(|| state.delay.0 + state.delay.1)
    }

    fn request(&self, peer: &NodeName, frame: Vec<u8>) -> Option<NetFuture> {
        self.exchange(peer, frame, None)
    }

    fn request_streamed(
        &self,
        peer: &NodeName,
        frame: Vec<u8>,
        parts: PartSender,
    ) -> Option<NetFuture> {
        self.exchange(peer, frame, Some(parts))
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        let state = lock(&self.net.state);
        match state.nodes.get(&self.me) {
            Some(slot) => slot.events.subscribe(),
            // Unreachable for a peer made by `attach`; an empty channel otherwise.
            None => broadcast::channel(1).1,
        }
    }

    fn rejected_handshakes(&self) -> u64 {
        // No handshakes in memory.
        0
    }

    fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        Err(LinkError::NoSocket)
    }

    fn shutdown(&self) {
        self.net.crash(&self.me);
    }
}
