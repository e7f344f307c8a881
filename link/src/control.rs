//! The control plane over ractor_cluster sessions: peers' statuses, registry announcements and
//! membership, carried as ractor messages between the nodes' [`ControlPlane`] actors, while
//! the data plane (forwarded MEUs, module bytes, registry pulls) stays on lanes.
//!
//! **How the link uses it** (`ClusterLink`, when `ractor_sessions` is on): one
//! [`ControlPlane`] starts right after the link, with the configured peers and a
//! [`ControlSink`] that writes statuses into the peer table, applies announced entries through
//! `LocalNode::apply_entry`, pulls the peer's registry over a lane on [`PeerChange::Up`]
//! (anti-entropy: casts sent while a session was down are lost) and drops its status on
//! [`PeerChange::Down`]. The status publisher calls [`ControlPlane::publish_status`] and
//! `ClusterLink::announce` calls [`ControlPlane::announce`]; both say which peers they reached,
//! and the link sends to every other connected peer over a lane (the moments before tickets
//! are confirmed, or a peer running without sessions), so nothing depends on the handshake
//! having finished.
//!
//! **What it costs, measured** (`scripts/bench-control-paths.sh`, report in
//! `bench/reports/control-plane/`: two nodes in one process over QUIC on 127.0.0.1, 2 shared
//! vCPUs, medians of 4 alternated rounds; CPU is the process, both ends; a 1.6 KB status,
//! encoded and decoded on every path):
//!
//! | per status | wall | CPU |
//! | --- | --- | --- |
//! | lane request/answer, one at a time | 254 µs | 263 µs |
//! | ractor cast, one at a time, until the peer has it | 237 µs | 261 µs |
//! | [`ControlPlane::publish_status`], one at a time | 254 µs | 279 µs |
//! | ractor call round trip | 287 µs | 333 µs |
//! | lane requests, 32 in flight | 59 µs | 104 µs |
//! | ractor casts, pipelined | 55 µs | 107 µs |
//! | [`ControlPlane::publish_status`], pipelined | 59 µs | 112 µs |
//!
//! So moving statuses and announcements to casts saves no CPU per message (a status every
//! 200 ms travels alone, where wakes, QUIC and the encoding dominate: the hashes are hex strings,
//! a quarter to a third of a status's cost), and the tickets cost nothing measurable (within
//! 7% of a bare cast, inside the noise). What casts buy is the shape: no answer to wait for,
//! so no task and timeout per peer per tick, and membership from the sessions that carry the
//! messages. The data plane stays on lanes because it is request/answer and bulk: a ractor
//! call costs 1.26x the CPU of a lane exchange (1.13x the time), and everything on a session
//! shares one ordered stream, so a large message holds up every status behind it (a 5 MiB one
//! stalled RPCs 15–17 ms, ARCHITECTURE.md §5) even though a 64 KiB cast moves bytes about as
//! cheaply as a lane (482 vs 550 µs CPU, 8 lanes in flight). Registry **pulls stay on lanes**
//! too: a whole registry is bulk (past 1 MiB at about ten thousand functions), a ractor reply
//! is not capped on send (one over the inbound frame limit tears the session down), and a pull
//! needs an answer.
//!
//! **Who sent it.** ractor_cluster does not tell a receiving actor which session a message
//! came through: the session hands it `SerializedMessage::Cast { variant, args, metadata }`,
//! all chosen by the sender, and every session advertises every remotable actor of the
//! process, so a per-peer receiving actor could be addressed by any peer. What a sender
//! *cannot* choose is where its own sends go: a remote actor ref reached through our session
//! with `b` delivers to `b` only (mutual TLS, name-checked session). So each node gives each
//! peer, through the session with that peer, a random 128-bit **ticket** for the session's
//! lifetime, and a peer's message must carry the ticket we gave it: the sender's name is the
//! holder of the ticket, never a field it fills in. A grant names its sender, which the
//! receiver cannot check either, so it confirms the grant with a call *through its own
//! session* with the named granter before using it (a forged grant is refused there).
//! A lost grant is recovered by asking again (`hello`), which only re-sends the existing
//! ticket through the session with the asker.
//!
//! **One process, many nodes** (tests): pg groups and the pid registry are process-global,
//! each session advertises every node's actors, and ractor_cluster numbers sessions from 0 in
//! every NodeServer, so remote refs of different nodes' sessions share `ActorId`s and evict
//! each other from pg. Hence: each node's actor joins groups named after the node
//! ([`group`], `tern.status.v1@b`), so a ref found there reaches `b`'s actor whatever
//! session carried the advertisement (pids are process-unique); refs are collected from pg's
//! join notifications rather than read back from pg (where a colliding ref may have been
//! evicted); and a ticket is only valid at the node that minted it, so a misrouted message
//! would be refused, not misattributed. In one node per process, the same rules reduce to
//! "the ref through the current session with `b`".

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort,
    SupervisionEvent,
};
use serde::{Deserialize, Serialize};
use tern_cluster::session::{DEFAULT_MAX_MESSAGE, group_name};
use tern_cluster::{ClusterError, NodeName, SessionEvent, SessionInfo, Sessions};
use tern_sync::poison::lock;
use tern_wire::WireError;
use tern_wire::peer::{NodeStatus, RegistryEntry};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::{LinkError, LocalFuture};

/// Message families, one pg group each per node and version (ARCHITECTURE.md §5), so that a
/// node that stops speaking one version of a family is simply not found for it.
pub const CONTROL_FAMILY: &str = "control";
pub const STATUS_FAMILY: &str = "status";
pub const REGISTRY_FAMILY: &str = "registry";
/// Version of every family above.
pub const VERSION: u32 = 1;

/// Wire variants (ractor's `variant` tag). Casts unless noted.
pub const HELLO: &str = "hello.v1";
pub const GRANT: &str = "grant.v1";
/// A call: the ticket's 16 bytes in, the holder's name (`Option<String>`, bincode) out.
pub const CONFIRM: &str = "confirm.v1";
pub const STATUS: &str = "status.v1";
pub const ANNOUNCE: &str = "announce.v1";

/// Bytes of a ticket, the prefix of every status and announcement.
pub const TICKET_LEN: usize = 16;
type Ticket = [u8; TICKET_LEN];

/// How often pending handshakes are retried (a grant whose route was not known yet, a
/// confirmation that timed out, a lost grant).
const TICK: Duration = Duration::from_millis(250);
/// A peer's `hello` re-sends its ticket at most this often: a hello is unauthenticated.
const REGRANT_EVERY: Duration = Duration::from_millis(200);
/// Announcement chunks kept for a peer whose session is up but whose ticket is not confirmed
/// yet (a few milliseconds after the session comes up); beyond, announcements to the peer
/// are left to the caller (the link sends them over a lane).
const MAX_QUEUED_CHUNKS: usize = 256;
/// Remote refs kept per group; only reached if refs were never pruned (they are, when dead).
const MAX_REFS_PER_GROUP: usize = 64;
/// bincode's length prefix of a sequence is at most this long.
const SEQ_PREFIX: usize = 10;

/// The pg group a node's control actor joins for `family`: `tern.<family>.v1@<node>`.
pub fn group(family: &str, node: &NodeName) -> String {
    format!("{}@{node}", group_name(family, VERSION))
}

/// Where the control plane delivers what peers send. The peer is always the session's
/// authenticated peer (see the module doc), never a name from the message.
pub trait ControlSink: Send + Sync + 'static {
    /// A peer's status. Called on the control actor: keep it short.
    fn on_status(&self, peer: NodeName, status: NodeStatus);
    /// Registry entries a peer announced, one chunk at a time, in the order the peer sent
    /// them; run in a task per peer, so applying them never holds up statuses.
    fn on_announce(&self, peer: NodeName, entries: Vec<RegistryEntry>) -> LocalFuture<'_, ()>;
    /// The session with `peer` came up or went down. Called on the control actor.
    fn on_membership(&self, peer: NodeName, change: PeerChange);
}

/// What [`ControlSink::on_membership`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// A session with the peer is ready (again): pull its registry, expect its status.
    Up,
    /// The session ended: its status is stale, nothing more comes through it.
    Down,
}

/// Control plane knobs.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// The configured peers: sessions already ready at start, and after a lagged event
    /// stream, are looked up for these.
    pub peers: Vec<NodeName>,
    /// The session's cap on one message (`SessionConfig::max_message`): statuses must fit,
    /// announcements are split under it, and bigger inbound payloads are refused.
    pub max_message: usize,
    /// Bound on confirming a grant with the granter.
    pub call_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            max_message: DEFAULT_MAX_MESSAGE,
            call_timeout: Duration::from_secs(2),
        }
    }
}

/// What [`ControlPlane::announce`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announced {
    /// Chunks the entries were split into.
    pub chunks: usize,
    /// Peers the chunks were cast or queued to.
    pub peers: Vec<NodeName>,
}

/// Counts since start, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlCounters {
    pub statuses_received: u64,
    /// Announcement chunks received and handed to the sink.
    pub announcements_received: u64,
    /// Inbound messages refused: unknown ticket or variant, malformed, oversized, misrouted,
    /// or a grant its named granter did not confirm.
    pub refused: u64,
    /// Messages cast to peers (statuses, chunks, handshakes).
    pub sent: u64,
    /// Casts that failed locally (the route died, over the cap).
    pub send_failed: u64,
}

#[derive(Default)]
struct Counters {
    statuses_received: AtomicU64,
    announcements_received: AtomicU64,
    refused: AtomicU64,
    sent: AtomicU64,
    send_failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ControlCounters {
        ControlCounters {
            statuses_received: self.statuses_received.load(Relaxed),
            announcements_received: self.announcements_received.load(Relaxed),
            refused: self.refused.load(Relaxed),
            sent: self.sent.load(Relaxed),
            send_failed: self.send_failed.load(Relaxed),
        }
    }
}

/// This node's control plane: one ractor actor in the pg groups of every family, plus the
/// task feeding it session events. Stops when dropped.
pub struct ControlPlane {
    actor: ActorRef<Msg>,
    sessions: Sessions,
    outlets: Outlets,
    counters: Arc<Counters>,
    max_message: usize,
    forwarder: JoinHandle<()>,
}

impl ControlPlane {
    /// Starts the control actor of `sessions`' node, delivering to `sink`.
    pub async fn start(
        sessions: &Sessions,
        sink: Arc<dyn ControlSink>,
        cfg: ControlConfig,
    ) -> Result<Self, LinkError> {
        // Fail now rather than at the first session if tickets cannot be made.
        mint()?;
        let counters = Arc::new(Counters::default());
        let outlets = Outlets::default();
        let max_message = cfg.max_message;
        // Subscribed before the actor reads which sessions are ready, so none is missed.
        let events = sessions.subscribe();
        let args = Args {
            sessions: sessions.clone(),
            sink,
            cfg,
            counters: counters.clone(),
            outlets: outlets.clone(),
        };
        let (actor, _) = Actor::spawn(None, ControlActor, args)
            .await
            .map_err(|e| ClusterError::NodeServer(format!("control plane actor: {e}")))?;
        let forwarder = tokio::spawn(forward_events(events, actor.clone()));
        Ok(Self {
            actor,
            sessions: sessions.clone(),
            outlets,
            counters,
            max_message,
            forwarder,
        })
    }

    /// Sends `status` to every peer whose session is ready and whose ticket is confirmed;
    /// returns those peers (the caller reaches any other peer another way). Returns at once
    /// (casts); a peer that misses one gets the next.
    ///
    /// Sent from the caller's thread through the routes the actor keeps, not through the
    /// actor's mailbox, so a status never waits behind a peer's large announcement being
    /// decoded there.
    pub fn publish_status(&self, status: &NodeStatus) -> Result<Vec<NodeName>, LinkError> {
        let body = tern_wire::encode(status, self.budget(STATUS)).map_err(LinkError::Encode)?;
        let outlets = lock(&self.outlets.0).clone();
        let mut reached = Vec::with_capacity(outlets.len());
        for outlet in outlets {
            let args = signed(&outlet.ticket, &body);
            match self.sessions.cast(
                &outlet.cell,
                Outbound {
                    variant: STATUS,
                    args,
                },
            ) {
                Ok(()) => {
                    self.counters.sent.fetch_add(1, Relaxed);
                    reached.push(outlet.peer);
                }
                // The route died since the actor last looked: it will have news shortly.
                Err(_) => {
                    self.counters.send_failed.fetch_add(1, Relaxed);
                }
            }
        }
        Ok(reached)
    }

    /// Sends `entries` to every peer with a ready session, split into chunks under the
    /// message cap. A peer whose ticket is not confirmed yet gets them once it is. Returns
    /// the chunk count and the peers the chunks went or are queued to; a peer that is not
    /// among them is not reached through the control plane (the caller sends another way,
    /// or the peer pulls the registry when its session comes up).
    pub async fn announce(&self, entries: &[RegistryEntry]) -> Result<Announced, LinkError> {
        let chunks = chunk_entries(entries, self.budget(ANNOUNCE)).map_err(LinkError::Encode)?;
        let n = chunks.len();
        if n == 0 {
            return Ok(Announced::default());
        }
        let chunks = chunks.into_iter().map(Arc::from).collect();
        let peers = ractor::call!(self.actor, Msg::Announce, chunks)
            .map_err(|_| LinkError::from(ClusterError::ActorGone))?;
        Ok(Announced { chunks: n, peers })
    }

    /// The peers a status goes to now (session ready, ticket confirmed, route known).
    pub async fn linked(&self) -> Result<Vec<NodeName>, LinkError> {
        ractor::call!(self.actor, Msg::Linked).map_err(|_| ClusterError::ActorGone.into())
    }

    /// Waits until every one of `peers` is [linked](Self::linked).
    pub async fn wait_linked(
        &self,
        peers: &[NodeName],
        timeout: Duration,
    ) -> Result<(), LinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let linked = self.linked().await?;
            if peers.iter().all(|p| linked.contains(p)) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout("control plane link").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn counters(&self) -> ControlCounters {
        self.counters.snapshot()
    }

    /// Stops the actor (it leaves its groups; peers' refs to it die) and waits for it.
    pub async fn stop(&self) {
        self.forwarder.abort();
        let _ = self
            .actor
            .stop_and_wait(
                Some("control plane stopped".to_owned()),
                Some(Duration::from_secs(5)),
            )
            .await;
    }

    /// What the body of a `variant` message may take: the cap less the variant tag (counted
    /// by the session's cap) and the ticket.
    fn budget(&self, variant: &str) -> usize {
        self.max_message.saturating_sub(variant.len() + TICKET_LEN)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.forwarder.abort();
        self.actor.stop(Some("control plane dropped".to_owned()));
    }
}

async fn forward_events(mut events: broadcast::Receiver<SessionEvent>, actor: ActorRef<Msg>) {
    loop {
        let msg = match events.recv().await {
            Ok(event) => Msg::Session(event),
            Err(broadcast::error::RecvError::Lagged(_)) => Msg::Resync,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if actor.cast(msg).is_err() {
            return;
        }
    }
}

/// Splits `entries` into encoded `Vec<RegistryEntry>` bodies of at most `budget` bytes each,
/// in order. An entry that alone exceeds the budget is an error (nothing is sent).
fn chunk_entries(entries: &[RegistryEntry], budget: usize) -> Result<Vec<Vec<u8>>, WireError> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut size = SEQ_PREFIX;
    for (i, entry) in entries.iter().enumerate() {
        let one = tern_wire::encode(entry, budget)?.len();
        if SEQ_PREFIX + one > budget {
            return Err(WireError::TooLarge {
                size: SEQ_PREFIX + one,
                limit: budget,
            });
        }
        if size + one > budget {
            chunks.push(tern_wire::encode(&&entries[start..i], budget)?);
            (start, size) = (i, SEQ_PREFIX);
        }
        size += one;
    }
    if start < entries.len() {
        chunks.push(tern_wire::encode(&&entries[start..], budget)?);
    }
    Ok(chunks)
}

/// A status or an announcement, with the peer its ticket names.
#[derive(Debug, PartialEq)]
enum Signed {
    Status(NodeName, NodeStatus),
    Announce(NodeName, Vec<RegistryEntry>),
}

/// Opens a ticket-prefixed [`STATUS`] or [`ANNOUNCE`]: the sender is whoever `holder` says
/// holds the ticket; the body must decode whole within `limit`. The error says why not.
fn open_signed(
    variant: &str,
    args: &[u8],
    limit: usize,
    holder: impl Fn(&[u8]) -> Option<NodeName>,
) -> Result<Signed, &'static str> {
    if args.len() > limit {
        return Err("oversized");
    }
    let Some(peer) = args.get(..TICKET_LEN).and_then(holder) else {
        return Err("no valid ticket");
    };
    let body = &args[TICKET_LEN..];
    match variant {
        STATUS => tern_wire::decode(body, limit)
            .map(|s| Signed::Status(peer, s))
            .map_err(|_| "malformed status"),
        ANNOUNCE => tern_wire::decode(body, limit)
            .map(|e| Signed::Announce(peer, e))
            .map_err(|_| "malformed announcement"),
        _ => Err("not a signed variant"),
    }
}

/// `ticket` then `body`: the arguments of a status or an announcement.
fn signed(ticket: &Ticket, body: &[u8]) -> Vec<u8> {
    let mut args = Vec::with_capacity(TICKET_LEN + body.len());
    args.extend_from_slice(ticket);
    args.extend_from_slice(body);
    args
}

/// The peers a status goes to right now, kept by the actor for
/// [`ControlPlane::publish_status`]: each peer's status route and our ticket for it.
#[derive(Clone, Default)]
struct Outlets(Arc<Mutex<Vec<Outlet>>>);

#[derive(Clone)]
struct Outlet {
    peer: NodeName,
    cell: ActorCell,
    ticket: Ticket,
}

/// A fresh ticket from the OS's random source.
fn mint() -> Result<Ticket, ClusterError> {
    const SOURCE: &str = "/dev/urandom";
    let mut ticket = [0u8; TICKET_LEN];
    std::fs::File::open(SOURCE)
        .and_then(|mut f| f.read_exact(&mut ticket))
        .map_err(|source| ClusterError::Io {
            path: SOURCE.into(),
            source,
        })?;
    Ok(ticket)
}

/// Compares tickets in time independent of where they differ: a ticket is a secret.
fn same_ticket(a: &Ticket, b: &[u8]) -> bool {
    b.len() == TICKET_LEN && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------------
// What crosses the session

/// The body of a [`GRANT`]: "`from` gives `to` this ticket for messages to `from`".
#[derive(Serialize, Deserialize)]
struct Grant {
    from: String,
    to: String,
    ticket: Ticket,
}

/// A cast as sent to a peer's actor. Only ever serialized: the receiving type is [`Msg`].
struct Outbound {
    variant: &'static str,
    args: Vec<u8>,
}

impl ractor::Message for Outbound {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Cast {
            variant: self.variant.to_owned(),
            args: self.args,
            metadata: None,
        })
    }
}

/// A [`CONFIRM`] call as sent; the reply is the raw answer bytes, decoded by the caller.
struct ConfirmCall {
    ticket: Ticket,
    reply: RpcReplyPort<Vec<u8>>,
}

impl ractor::Message for ConfirmCall {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Call {
            variant: CONFIRM.to_owned(),
            args: self.ticket.to_vec(),
            reply: self.reply,
            metadata: None,
        })
    }
}

/// The control actor's messages: what peers send (kept raw until the ticket is checked, so a
/// bad payload is counted rather than dropped unseen by ractor), and local requests.
enum Msg {
    Cast {
        variant: String,
        args: Vec<u8>,
    },
    Call {
        variant: String,
        args: Vec<u8>,
        reply: RpcReplyPort<Vec<u8>>,
    },
    Session(SessionEvent),
    Resync,
    Announce(Vec<Arc<[u8]>>, RpcReplyPort<Vec<NodeName>>),
    Confirmed {
        peer: NodeName,
        node_id: u64,
        ticket: Ticket,
    },
    ConfirmFailed {
        peer: NodeName,
        node_id: u64,
        ticket: Ticket,
        refused: bool,
    },
    Linked(RpcReplyPort<Vec<NodeName>>),
    Tick,
}

impl ractor::Message for Msg {
    fn serializable() -> bool {
        // Makes the actor remotable; what it sends goes as `Outbound` / `ConfirmCall`.
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Err(BoxedDowncastErr)
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Cast { variant, args, .. } => Ok(Msg::Cast { variant, args }),
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } => Ok(Msg::Call {
                variant,
                args,
                reply,
            }),
            SerializedMessage::CallReply(..) => Err(BoxedDowncastErr),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

struct ControlActor;

struct Args {
    sessions: Sessions,
    sink: Arc<dyn ControlSink>,
    cfg: ControlConfig,
    counters: Arc<Counters>,
    outlets: Outlets,
}

struct State {
    me: NodeName,
    sessions: Sessions,
    sink: Arc<dyn ControlSink>,
    cfg: ControlConfig,
    counters: Arc<Counters>,
    outlets: Outlets,
    routes: Routes,
    peers: BTreeMap<NodeName, Peer>,
    tick: Option<JoinHandle<()>>,
}

/// What this node knows of one peer for the current session.
#[derive(Default)]
struct Peer {
    session: Option<SessionInfo>,
    /// The ticket this node gave the peer: its messages to us carry it.
    inbound: Option<Ticket>,
    /// Whether `inbound` was sent (a route to the peer's actor was known).
    granted: bool,
    last_grant: Option<Instant>,
    /// The ticket the peer gave us, confirmed with it: our messages to it carry it.
    outbound: Option<Ticket>,
    /// A grant received and not confirmed yet.
    offered: Option<Ticket>,
    confirming: bool,
    /// Announcement chunks waiting for `outbound`.
    queued: VecDeque<Arc<[u8]>>,
    /// The task applying this peer's announcements in order.
    applier: Option<mpsc::UnboundedSender<Vec<RegistryEntry>>>,
}

/// Remote refs to peers' control actors, by group, as sessions joined them to pg (collected
/// from pg's notifications: see the module doc for why not read back from pg).
#[derive(Default)]
struct Routes {
    groups: HashMap<String, Vec<ActorCell>>,
}

fn alive(cell: &ActorCell) -> bool {
    cell.get_status() < ActorStatus::Stopping
}

impl Routes {
    fn learn(&mut self, group: &str, cells: impl IntoIterator<Item = ActorCell>) {
        if !is_control_group(group) {
            return;
        }
        let refs = self.groups.entry(group.to_owned()).or_default();
        refs.retain(alive);
        refs.extend(
            cells
                .into_iter()
                .filter(|c| !c.get_id().is_local() && alive(c)),
        );
        let excess = refs.len().saturating_sub(MAX_REFS_PER_GROUP);
        refs.drain(..excess);
    }

    fn prune(&mut self, group: &str) {
        if let Some(refs) = self.groups.get_mut(group) {
            refs.retain(alive);
        }
    }

    /// A live ref in `group` reached through session `node_id`.
    fn find(&mut self, group: &str, node_id: u64) -> Option<ActorCell> {
        let refs = self.groups.get_mut(group)?;
        refs.retain(alive);
        refs.iter()
            .find(|c| matches!(c.get_id(), ActorId::Remote { node_id: n, .. } if n == node_id))
            .cloned()
    }
}

fn is_control_group(group: &str) -> bool {
    [CONTROL_FAMILY, STATUS_FAMILY, REGISTRY_FAMILY]
        .iter()
        .any(|f| group.starts_with(&format!("{}@", group_name(f, VERSION))))
}

/// The node a control group belongs to.
fn group_node(group: &str) -> Option<NodeName> {
    group.rsplit_once('@')?.1.parse().ok()
}

impl Actor for ControlActor {
    type Msg = Msg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<Msg>,
        args: Args,
    ) -> Result<State, ActorProcessingErr> {
        let me = args.sessions.name().clone();
        // Watch before reading pg, so no join falls between the read and the watch.
        ractor::pg::monitor_scope(ractor::pg::DEFAULT_SCOPE.to_owned(), myself.get_cell());
        let mut routes = Routes::default();
        for g in ractor::pg::which_groups() {
            if is_control_group(&g) {
                let members = ractor::pg::get_members(&g);
                routes.learn(&g, members);
            }
        }
        for family in [CONTROL_FAMILY, STATUS_FAMILY, REGISTRY_FAMILY] {
            args.sessions
                .join_group(&group(family, &me), myself.get_cell())?;
        }
        let mut state = State {
            me,
            sessions: args.sessions,
            sink: args.sink,
            peers: args
                .cfg
                .peers
                .iter()
                .map(|p| (p.clone(), Peer::default()))
                .collect(),
            cfg: args.cfg,
            counters: args.counters,
            outlets: args.outlets,
            routes,
            tick: None,
        };
        state.resync(&myself);
        state.refresh_outlets();
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Msg>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        state.tick = Some(myself.send_interval(TICK, || Msg::Tick));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Msg>,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(tick) = state.tick.take() {
            tick.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Msg>,
        msg: Msg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        // Whether the peers a status goes to may have changed (not on the hot path).
        let refresh = !matches!(
            msg,
            Msg::Cast { .. } | Msg::Call { .. } | Msg::Announce(..) | Msg::Linked(_)
        );
        match msg {
            Msg::Cast { variant, args } => state.on_cast(&myself, &variant, args),
            Msg::Call {
                variant,
                args,
                reply,
            } => state.on_call(&variant, &args, reply),
            Msg::Session(SessionEvent::Ready(info)) => state.session_ready(&myself, info),
            Msg::Session(SessionEvent::Down(info)) => state.session_down(&info),
            Msg::Resync => state.resync(&myself),
            Msg::Announce(chunks, reply) => {
                let peers = state.announce(chunks);
                let _ = reply.send(peers);
            }
            Msg::Confirmed {
                peer,
                node_id,
                ticket,
            } => state.confirmed(&myself, &peer, node_id, ticket),
            Msg::ConfirmFailed {
                peer,
                node_id,
                ticket,
                refused,
            } => state.confirm_failed(&peer, node_id, ticket, refused),
            Msg::Linked(reply) => {
                let linked = state.linked();
                let _ = reply.send(linked);
            }
            Msg::Tick => {
                let peers: Vec<NodeName> = state.peers.keys().cloned().collect();
                for peer in peers {
                    state.progress(&myself, &peer, true);
                }
            }
        }
        if refresh {
            state.refresh_outlets();
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Msg>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        // This actor supervises nothing; pg notifications are all it gets here.
        if let SupervisionEvent::ProcessGroupChanged(change) = event {
            let g = change.get_group();
            if change.get_scope() != ractor::pg::DEFAULT_SCOPE || !is_control_group(&g) {
                return Ok(());
            }
            match change {
                ractor::pg::GroupChangeMessage::Join(_, _, cells) => {
                    state.routes.learn(&g, cells);
                    if let Some(peer) = group_node(&g) {
                        state.progress(&myself, &peer, false);
                    }
                }
                ractor::pg::GroupChangeMessage::Leave(..) => state.routes.prune(&g),
            }
            state.refresh_outlets();
        }
        Ok(())
    }
}

impl State {
    fn refuse(&self, why: &str) {
        self.counters.refused.fetch_add(1, Relaxed);
        tracing::debug!(node = %self.me, why, "refused a control message");
    }

    /// The peer holding `ticket` on its current session.
    fn holder(&self, ticket: &[u8]) -> Option<NodeName> {
        self.peers
            .iter()
            .find(|(_, p)| {
                p.session.is_some() && p.inbound.as_ref().is_some_and(|t| same_ticket(t, ticket))
            })
            .map(|(n, _)| n.clone())
    }

    /// Casts to `peer`'s actor in `family` through the current session with `peer`.
    fn cast(
        &mut self,
        peer: &NodeName,
        family: &str,
        variant: &'static str,
        args: Vec<u8>,
    ) -> bool {
        let Some(node_id) = self
            .peers
            .get(peer)
            .and_then(|p| p.session.as_ref())
            .map(|s| s.node_id)
        else {
            return false;
        };
        let Some(cell) = self.routes.find(&group(family, peer), node_id) else {
            return false;
        };
        match self.sessions.cast(&cell, Outbound { variant, args }) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Relaxed);
                true
            }
            Err(e) => {
                self.counters.send_failed.fetch_add(1, Relaxed);
                tracing::debug!(%peer, variant, error = %e, "control cast failed");
                false
            }
        }
    }

    /// Peers a status goes to now: ticket confirmed, status route known.
    fn linked(&mut self) -> Vec<NodeName> {
        let targets: Vec<(NodeName, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.outbound.is_some())
            .filter_map(|(n, p)| Some((n.clone(), p.session.as_ref()?.node_id)))
            .collect();
        targets
            .into_iter()
            .filter(|(peer, node_id)| {
                self.routes
                    .find(&group(STATUS_FAMILY, peer), *node_id)
                    .is_some()
            })
            .map(|(peer, _)| peer)
            .collect()
    }

    /// Rebuilds the status routes [`ControlPlane::publish_status`] sends through.
    fn refresh_outlets(&mut self) {
        let targets: Vec<(NodeName, u64, Ticket)> = self
            .peers
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), p.session.as_ref()?.node_id, p.outbound?)))
            .collect();
        let fresh = targets
            .into_iter()
            .filter_map(|(peer, node_id, ticket)| {
                let cell = self.routes.find(&group(STATUS_FAMILY, &peer), node_id)?;
                Some(Outlet { peer, cell, ticket })
            })
            .collect();
        *lock(&self.outlets.0) = fresh;
    }

    /// Casts `chunks` to every peer with a session, or queues them until its ticket is
    /// confirmed; returns the peers reached so. A peer whose route failed, or whose queue is
    /// full (a handshake that does not finish), is left out for the caller to reach another
    /// way: nothing is dropped here.
    fn announce(&mut self, chunks: Vec<Arc<[u8]>>) -> Vec<NodeName> {
        let peers: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut reached = Vec::with_capacity(peers.len());
        for peer in peers {
            let outbound = self.peers.get(&peer).and_then(|p| p.outbound);
            let ok = match outbound {
                Some(ticket) => chunks.iter().all(|chunk| {
                    self.cast(&peer, REGISTRY_FAMILY, ANNOUNCE, signed(&ticket, chunk))
                }),
                None => match self.peers.get_mut(&peer) {
                    Some(p) if p.queued.len() + chunks.len() <= MAX_QUEUED_CHUNKS => {
                        p.queued.extend(chunks.iter().cloned());
                        true
                    }
                    _ => false,
                },
            };
            if ok {
                reached.push(peer);
            }
        }
        reached
    }

    fn session_ready(&mut self, myself: &ActorRef<Msg>, info: SessionInfo) {
        let peer = info.peer.clone();
        let p = self.peers.entry(peer.clone()).or_default();
        if p.session
            .as_ref()
            .is_some_and(|s| s.node_id == info.node_id)
        {
            return;
        }
        // A grant may arrive through the new session before its Ready event: keep it.
        let offered = p.offered.take();
        *p = Peer {
            session: Some(info),
            inbound: mint()
                .inspect_err(|e| tracing::error!(%peer, error = %e, "cannot mint a ticket"))
                .ok(),
            offered,
            ..Peer::default()
        };
        self.sink.on_membership(peer.clone(), PeerChange::Up);
        self.progress(myself, &peer, false);
    }

    fn session_down(&mut self, info: &SessionInfo) {
        let Some(p) = self.peers.get_mut(&info.peer) else {
            return;
        };
        if p.session.as_ref().is_none_or(|s| s.node_id != info.node_id) {
            return;
        }
        // Dropping the applier's sender lets it finish what it has, then end.
        *p = Peer::default();
        self.sink.on_membership(info.peer.clone(), PeerChange::Down);
    }

    /// Brings our view of sessions in line with `Sessions` (at start, and after missing
    /// events).
    fn resync(&mut self, myself: &ActorRef<Msg>) {
        let peers: Vec<NodeName> = self.peers.keys().cloned().collect();
        for peer in peers {
            let now = self.sessions.ready(&peer);
            let known = self.peers.get(&peer).and_then(|p| p.session.clone());
            if let Some(old) =
                known.filter(|old| now.as_ref().is_none_or(|n| n.node_id != old.node_id))
            {
                self.session_down(&old);
            }
            if let Some(info) = now {
                self.session_ready(myself, info);
            }
        }
    }

    /// Moves the handshake with `peer` on as far as routes allow: send our grant, confirm
    /// theirs, and (on ticks) ask for theirs again if we have none.
    fn progress(&mut self, myself: &ActorRef<Msg>, peer: &NodeName, tick: bool) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(node_id) = p.session.as_ref().map(|s| s.node_id) else {
            return;
        };
        if p.inbound.is_none() {
            p.inbound = mint().ok();
        }
        let (granted, inbound, offered, confirming, outbound) =
            (p.granted, p.inbound, p.offered, p.confirming, p.outbound);
        if let (false, Some(ticket)) = (granted, inbound) {
            let grant = Grant {
                from: self.me.to_string(),
                to: peer.to_string(),
                ticket,
            };
            if let Ok(args) = tern_wire::encode(&grant, self.cfg.max_message)
                && self.cast(peer, CONTROL_FAMILY, GRANT, args)
                && let Some(p) = self.peers.get_mut(peer)
            {
                p.granted = true;
                p.last_grant = Some(Instant::now());
            }
        }
        if let (Some(ticket), false) = (offered, confirming) {
            self.confirm(myself, peer, node_id, ticket);
        } else if tick && outbound.is_none() && offered.is_none() && !confirming {
            // Our grant from the peer may have been lost (sent before our actor was
            // advertised to it, or before a restart of this actor): ask for it again.
            if let Ok(args) = tern_wire::encode(&self.me.to_string(), self.cfg.max_message) {
                self.cast(peer, CONTROL_FAMILY, HELLO, args);
            }
        }
    }

    /// Asks `peer`, through our session with it, whether `ticket` is the one it gave us.
    fn confirm(&mut self, myself: &ActorRef<Msg>, peer: &NodeName, node_id: u64, ticket: Ticket) {
        let Some(cell) = self.routes.find(&group(CONTROL_FAMILY, peer), node_id) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(peer) {
            p.confirming = true;
        }
        let (sessions, me, myself, peer) = (
            self.sessions.clone(),
            self.me.clone(),
            myself.clone(),
            peer.clone(),
        );
        let timeout = self.cfg.call_timeout;
        tokio::spawn(async move {
            let answer = sessions
                .call(&cell, |reply| ConfirmCall { ticket, reply }, timeout)
                .await;
            let msg = match answer {
                Ok(bytes) => match tern_wire::decode::<Option<String>>(&bytes, 256) {
                    Ok(Some(holder)) if holder == me.as_str() => Msg::Confirmed {
                        peer,
                        node_id,
                        ticket,
                    },
                    _ => Msg::ConfirmFailed {
                        peer,
                        node_id,
                        ticket,
                        refused: true,
                    },
                },
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "could not confirm a grant; will retry");
                    Msg::ConfirmFailed {
                        peer,
                        node_id,
                        ticket,
                        refused: false,
                    }
                }
            };
            let _ = myself.cast(msg);
        });
    }

    fn confirmed(&mut self, myself: &ActorRef<Msg>, peer: &NodeName, node_id: u64, ticket: Ticket) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.confirming = false;
        let current = p.session.as_ref().is_some_and(|s| s.node_id == node_id);
        if !current || p.offered != Some(ticket) {
            // Superseded meanwhile (new session or newer grant): go on with that.
            self.progress(myself, peer, false);
            return;
        }
        p.offered = None;
        p.outbound = Some(ticket);
        let queued: Vec<Arc<[u8]>> = p.queued.drain(..).collect();
        for chunk in queued {
            self.cast(peer, REGISTRY_FAMILY, ANNOUNCE, signed(&ticket, &chunk));
        }
    }

    fn confirm_failed(&mut self, peer: &NodeName, node_id: u64, ticket: Ticket, refused: bool) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        p.confirming = false;
        let current = p.session.as_ref().is_some_and(|s| s.node_id == node_id);
        if refused && current && p.offered == Some(ticket) {
            // Not the granter's ticket for us: forged, or from an older session.
            p.offered = None;
            self.refuse("a grant its named granter did not confirm");
        }
        // A timeout keeps the offer: the next tick asks again.
    }

    fn on_cast(&mut self, myself: &ActorRef<Msg>, variant: &str, args: Vec<u8>) {
        if args.len() > self.cfg.max_message {
            return self.refuse("oversized");
        }
        match variant {
            STATUS | ANNOUNCE => {
                match open_signed(variant, &args, self.cfg.max_message, |t| self.holder(t)) {
                    Ok(Signed::Status(peer, status)) => {
                        self.counters.statuses_received.fetch_add(1, Relaxed);
                        self.sink.on_status(peer, status);
                    }
                    Ok(Signed::Announce(peer, entries)) => {
                        self.counters.announcements_received.fetch_add(1, Relaxed);
                        self.apply(peer, entries);
                    }
                    Err(why) => self.refuse(why),
                }
            }
            GRANT => {
                let Ok(grant) = tern_wire::decode::<Grant>(&args, self.cfg.max_message) else {
                    return self.refuse("malformed grant");
                };
                if grant.to != self.me.as_str() {
                    return self.refuse("a grant for another node");
                }
                let Some(from) = grant.from.parse::<NodeName>().ok() else {
                    return self.refuse("a grant from a malformed name");
                };
                let Some(p) = self.peers.get_mut(&from) else {
                    return self.refuse("a grant from an unknown peer");
                };
                // The ticket we already use: a re-sent grant (after a hello), nothing to do.
                if p.outbound == Some(grant.ticket) || p.offered == Some(grant.ticket) {
                    return;
                }
                p.offered = Some(grant.ticket);
                self.progress(myself, &from, false);
            }
            HELLO => {
                let Some(from) = tern_wire::decode::<String>(&args, 256)
                    .ok()
                    .and_then(|s| s.parse::<NodeName>().ok())
                else {
                    return self.refuse("malformed hello");
                };
                let Some(p) = self.peers.get_mut(&from) else {
                    return self.refuse("a hello from an unknown peer");
                };
                // Re-sends the same ticket through the session with `from`: a forged hello
                // reveals nothing and changes nothing, but is rate-limited all the same.
                if p.session.is_some() && p.last_grant.is_none_or(|t| t.elapsed() >= REGRANT_EVERY)
                {
                    p.granted = false;
                    self.progress(myself, &from, false);
                }
            }
            _ => self.refuse("unknown cast variant"),
        }
    }

    fn on_call(&mut self, variant: &str, args: &[u8], reply: RpcReplyPort<Vec<u8>>) {
        if variant != CONFIRM || args.len() != TICKET_LEN {
            // Dropping the port answers the caller with an error.
            return self.refuse("unknown call or malformed confirm");
        }
        let holder = self.holder(args).map(|n| n.to_string());
        if let Ok(bytes) = tern_wire::encode(&holder, 256) {
            let _ = reply.send(bytes);
        }
    }

    /// Hands `entries` to `peer`'s applier task, starting it if needed.
    fn apply(&mut self, peer: NodeName, entries: Vec<RegistryEntry>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let applier = p.applier.get_or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<RegistryEntry>>();
            let (sink, peer) = (self.sink.clone(), peer.clone());
            tokio::spawn(async move {
                while let Some(entries) = rx.recv().await {
                    sink.on_announce(peer.clone(), entries).await;
                }
            });
            tx
        });
        let _ = applier.send(entries);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_wire::{FunctionInfo, ModuleHash};

    fn entry(i: u64, name_len: usize) -> RegistryEntry {
        let name = format!("f{i}-{}", "x".repeat(name_len));
        RegistryEntry {
            info: FunctionInfo {
                name: name.chars().take(60).collect::<String>().parse().unwrap(),
                hash: ModuleHash([i as u8; 32]),
                version: i,
                timeout_ms: 1000,
                memory_mb: 64,
                size_bytes: 1 << 20,
                deployed_at_ms: i * 7,
                max_instances: None,
            },
            removed: i.is_multiple_of(3),
            origin: "a".to_owned(),
        }
    }

    #[test]
    fn announcements_split_in_order_into_chunks_under_the_budget() {
        let entries: Vec<RegistryEntry> = (0..500).map(|i| entry(i, 40)).collect();
        let budget = 4096;
        let chunks = chunk_entries(&entries, budget).unwrap();
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        let mut back = Vec::new();
        for c in &chunks {
            assert!(c.len() <= budget, "chunk of {} bytes", c.len());
            back.extend(tern_wire::decode::<Vec<RegistryEntry>>(c, budget).unwrap());
        }
        assert_eq!(back, entries);
        assert!(chunk_entries(&[], budget).unwrap().is_empty());
        // Everything fits in one chunk under the real cap.
        assert_eq!(
            chunk_entries(&entries, DEFAULT_MAX_MESSAGE).unwrap().len(),
            1
        );
    }

    #[test]
    fn an_entry_larger_than_the_budget_alone_is_refused() {
        let err = chunk_entries(&[entry(1, 40)], 64).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { limit: 64, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn groups_are_per_node_and_versioned() {
        let b: NodeName = "b".parse().unwrap();
        assert_eq!(group(STATUS_FAMILY, &b), "tern.status.v1@b");
        assert!(is_control_group("tern.registry.v1@b"));
        assert!(!is_control_group("tern.status.v1"));
        assert!(!is_control_group("tern.status.v2@b"));
        assert_eq!(group_node("tern.control.v1@node-7"), "node-7".parse().ok());
    }

    #[test]
    fn tickets_compare_whole_and_are_fresh() {
        let t = mint().unwrap();
        assert!(same_ticket(&t, &t));
        let mut other = t;
        other[TICKET_LEN - 1] ^= 1;
        assert!(!same_ticket(&t, &other));
        assert!(!same_ticket(&t, &t[..TICKET_LEN - 1]));
        assert_ne!(mint().unwrap(), t);
    }

    #[test]
    fn a_signed_message_is_the_ticket_holders_and_a_bad_body_is_refused() {
        let b: NodeName = "b".parse().unwrap();
        let ticket = mint().unwrap();
        let holder = |t: &[u8]| same_ticket(&ticket, t).then(|| b.clone());
        let status = NodeStatus {
            // What the sender claims to be is not who it is taken for.
            node: "c".to_owned(),
            seq: 3,
            ..NodeStatus::default()
        };
        let body = tern_wire::encode(&status, 1 << 20).unwrap();
        let good = signed(&ticket, &body);
        assert_eq!(
            open_signed(STATUS, &good, 1 << 20, holder),
            Ok(Signed::Status(b.clone(), status))
        );
        let mut stranger = good.clone();
        stranger[0] ^= 1;
        assert_eq!(
            open_signed(STATUS, &stranger, 1 << 20, holder),
            Err("no valid ticket")
        );
        assert_eq!(
            open_signed(STATUS, &good[..5], 1 << 20, holder),
            Err("no valid ticket")
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            open_signed(STATUS, &trailing, 1 << 20, holder),
            Err("malformed status")
        );
        let garbage = signed(&ticket, &[0xff; 40]);
        assert_eq!(
            open_signed(STATUS, &garbage, 1 << 20, holder),
            Err("malformed status")
        );
        assert_eq!(
            open_signed(ANNOUNCE, &garbage, 1 << 20, holder),
            Err("malformed announcement")
        );
        // A length prefix claiming far more than was sent allocates nothing and fails.
        let mut bomb = signed(&ticket, &[0xfd]);
        bomb.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            open_signed(ANNOUNCE, &bomb, 1 << 20, holder),
            Err("malformed announcement")
        );
        assert_eq!(
            open_signed(STATUS, &good, good.len() - 1, holder),
            Err("oversized")
        );
        assert_eq!(
            open_signed(GRANT, &good, 1 << 20, holder),
            Err("not a signed variant")
        );
    }

    #[test]
    fn any_serialized_message_decodes_to_a_raw_message_without_panicking() {
        let cast = SerializedMessage::Cast {
            variant: "\u{0}garbage".to_owned(),
            args: vec![0xff; 33],
            metadata: Some(vec![1, 2, 3]),
        };
        assert!(matches!(
            <Msg as ractor::Message>::deserialize(cast),
            Ok(Msg::Cast { .. })
        ));
        assert!(
            <Msg as ractor::Message>::deserialize(SerializedMessage::CallReply(1, vec![])).is_err()
        );
    }
}
