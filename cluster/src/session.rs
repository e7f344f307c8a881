//! ractor_cluster sessions over QUIC (ARCHITECTURE.md §5: inter-node transport, identity,
//! "remote actor refs", "message size").
//!
//! Each node runs one ractor_cluster [`NodeServer`] in [`NodeConnectionMode::Isolated`] (it never
//! dials anyone by itself). Its TCP listener, which ractor_cluster insists on, is bound to an
//! ephemeral loopback port and wrapped in TLS that requires a client certificate from a
//! throwaway CA generated in memory at start and dropped at once: nothing can ever complete a
//! session through it. Real sessions only come from [`Sessions::attach`]:
//!
//! * the side with the lower node name (`membership::should_dial`, whichever side dialled QUIC)
//!   opens one [`KIND_RACTOR`](crate::transport::KIND_RACTOR) stream on the verified [`Connection`] and hands it to its
//!   NodeServer with `client_connect_external`;
//! * the other side receives it through [`Connection::claim_session_streams`] (delivered by
//!   `Connection::serve`), and hands it over with `NodeServerMessage::ConnectionOpenedExternal`.
//!
//! **Name check.** ractor_cluster frames are a `u64` big-endian length followed by a protobuf
//! `meta.NetworkMessage`. Before any byte reaches ractor_cluster:
//! * the accepting side reads the first frame, which must be `auth.NameMessage` whose `name` is
//!   exactly [`ractor_node_name`] of the peer's verified [`NodeName`] (and whose
//!   `connection_string` is on the peer's DNS name); otherwise the stream is stopped and reset
//!   with [`codes::SESSION_IDENTITY`], counted in [`Sessions::rejected_streams`], and no
//!   NodeSession is ever created. The bytes read are replayed to ractor_cluster.
//! * the opening side holds back what the peer sends until its first two frames are
//!   `auth.ServerStatus` and `auth.Challenge` naming the peer in the same way; otherwise the
//!   read half fails (the session dies before authenticating) and the stream is stopped with
//!   [`codes::SESSION_IDENTITY`].
//!
//! The protobuf decoding here mirrors ractor_cluster's own schema for the fields that matter
//! (same tags, same `oneof` "last field wins" rule, via prost like ractor_cluster), so the
//! name we check is the name ractor_cluster will see. ractor_cluster's server side accepts a
//! name only in the first authentication message and closes on anything else, and we require
//! it in the very first frame, so a later frame cannot change it.
//!
//! **Names.** A Tern node `x` is the ractor node `x@x.node.tern` ([`ractor_node_name`]):
//! node_name = the Tern name, hostname = its certificate DNS name. Distinct hostnames also keep
//! ractor_cluster's self-connection check (which compares `host:port` strings) from firing on
//! two nodes that happen to pick the same loopback port.
//!
//! **One session per connection.** A second session stream on a connection that already
//! carries one is refused with [`codes::SESSION_EXISTS`]; a session stream from the peer that
//! should not open one with [`codes::SESSION_ROLE`]. When a session ends while its connection
//! is still up (ractor_cluster's duplicate-session election, an oversized frame, ...), the
//! connection is closed with [`codes::SESSION_LOST`] so that the redial loop builds a new
//! connection with a new session: a session lives exactly as long as its connection.
//!
//! **Remote actors.** Remote-capable actors join a pg group named per message type and
//! version ([`group_name`], e.g. `tern.status.v1`). Remote actor ids change when the peer
//! restarts or reconnects, so refs are never kept across sessions: look them up again on every
//! [`SessionEvent::Ready`] ([`RemoteGroup`] does that) and call with a timeout
//! ([`Sessions::call`]). Messages to remote actors are capped on send
//! ([`SessionConfig::max_message`], 1 MiB): bytes go on data-plane streams.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message as _;
use quinn::{RecvStream, SendStream};
use ractor::message::SerializedMessage;
use ractor::{Actor, ActorCell, ActorId, ActorRef, RpcReplyPort};
use ractor_cluster::{
    BoxRead, BoxWrite, ClusterBidiStream, IncomingEncryptionMode, NodeEventSubscription, NodeId,
    NodeServer, NodeServerMessage, node::NodeConnectionMode, node::NodeServerSessionInformation,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::membership::should_dial;
use crate::transport::{SessionStream, codes, refuse};
use crate::{ClusterError, Connection, NodeName};
use tern_sync::poison::lock;

/// Default cap on one message sent to a remote actor (ARCHITECTURE.md §5).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// A first ractor frame (a name, a status or a challenge) is tiny; anything bigger is hostile.
const MAX_CLAIM_FRAME: u64 = 4096;
/// Length prefix of a ractor_cluster frame.
const FRAME_HEADER: usize = 8;
/// Session streams waiting for the name check on one connection; more are refused.
const SESSION_BACKLOG: usize = 4;
/// Subscription id of this module at the NodeServer.
const SUBSCRIPTION_ID: &str = "tern-sessions";

/// Session knobs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// ractor_cluster's shared cookie. Not a secret here: peers are authenticated by mutual
    /// TLS and the name check, and the TCP listener is unusable; this only has to match.
    pub cookie: String,
    /// Bound on receiving the peer's first ractor frames (the name check).
    pub claim_timeout: Duration,
    /// Largest message (serialized arguments) sent to a remote actor.
    pub max_message: usize,
    /// Largest inbound ractor frame; a bigger one tears down the session (ractor_cluster).
    /// Must exceed `max_message` plus framing, and replies, which are not capped on send.
    pub max_inbound_frame: u64,
    /// Session events buffered per subscriber before it lags.
    pub event_capacity: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            cookie: "tern-mesh".to_owned(),
            claim_timeout: Duration::from_secs(5),
            max_message: DEFAULT_MAX_MESSAGE,
            max_inbound_frame: ractor_cluster::DEFAULT_MAX_INBOUND_FRAME_SIZE,
            event_capacity: 256,
        }
    }
}

/// The ractor_cluster node name of a Tern node: `<name>@<name>.node.tern`.
pub fn ractor_node_name(name: &NodeName) -> String {
    format!("{name}@{}", name.dns_name())
}

/// The pg group of the actors that take `message` in `version`: `tern.<message>.v<version>`.
pub fn group_name(message: &str, version: u32) -> String {
    format!("tern.{message}.v{version}")
}

/// One ractor_cluster session with a peer, over one QUIC connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub peer: NodeName,
    /// ractor_cluster's id for this session on this node; remote actor ids carry it.
    pub node_id: NodeId,
    /// The [`Connection::id`] carrying the session.
    pub connection_id: u64,
}

/// What subscribers of [`Sessions::subscribe`] see, per peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Authenticated and pg groups exchanged: look remote actors up (again) now.
    Ready(SessionInfo),
    /// The session ended; its remote actor refs are dead.
    Down(SessionInfo),
}

/// This node's ractor_cluster sessions. Cheap to clone; the NodeServer stops when the last
/// clone is dropped (or at [`Sessions::shutdown`]).
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeName,
    cfg: SessionConfig,
    server: ActorRef<NodeServerMessage>,
    shared: Arc<Shared>,
    tasks: Mutex<JoinSet<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.stop(Some("tern sessions dropped".to_owned()));
        lock(&self.tasks).abort_all();
    }
}

/// State shared with the NodeServer's event subscription and the per-connection tasks.
struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<SessionEvent>,
    rejected: AtomicU64,
}

#[derive(Default)]
struct State {
    ready: HashMap<NodeName, SessionInfo>,
    attached: HashMap<u64, Connection>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("me", &self.inner.me)
            .field("ready", &lock(&self.inner.shared.state).ready)
            .finish()
    }
}

impl Sessions {
    /// Starts this node's NodeServer (isolated, listener on a loopback ephemeral port behind
    /// an unreachable TLS client check). Must be called inside a tokio runtime.
    pub async fn start(me: &NodeName, cfg: SessionConfig) -> Result<Self, ClusterError> {
        if cfg.max_inbound_frame < cfg.max_message as u64 + FRAME_HEADER as u64 {
            return Err(ClusterError::Config(
                "max_inbound_frame must exceed max_message",
            ));
        }
        let server = NodeServer::new(
            0,
            cfg.cookie.clone(),
            me.to_string(),
            me.dns_name(),
            Some(IncomingEncryptionMode::Tls(unusable_tls_acceptor()?)),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(Ipv4Addr::LOCALHOST.into())
        .with_max_inbound_frame_size(cfg.max_inbound_frame);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| ClusterError::NodeServer(e.to_string()))?;
        let (events, _) = broadcast::channel(cfg.event_capacity.max(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            events,
            rejected: AtomicU64::new(0),
        });
        // Subscribed before any session can exist: the server handles its mailbox in order.
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: SUBSCRIPTION_ID.to_owned(),
                subscription: Box::new(Subscriber(shared.clone())),
            })
            .map_err(|_| ClusterError::NodeServerGone)?;
        Ok(Self {
            inner: Arc::new(Inner {
                me: me.clone(),
                cfg,
                server,
                shared,
                tasks: Mutex::new(JoinSet::new()),
            }),
        })
    }

    pub fn name(&self) -> &NodeName {
        &self.inner.me
    }

    /// Session events from now on. Read [`Sessions::ready`] after subscribing to learn the
    /// sessions that are already up.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.shared.events.subscribe()
    }

    /// The ready session with `peer`, if any.
    pub fn ready(&self, peer: &NodeName) -> Option<SessionInfo> {
        lock(&self.inner.shared.state).ready.get(peer).cloned()
    }

    /// Session streams refused by the name check (or malformed / late / oversized first
    /// frames) so far, on both the accepting and the opening side.
    pub fn rejected_streams(&self) -> u64 {
        self.inner.shared.rejected.load(Ordering::Relaxed)
    }

    /// Runs a ractor_cluster session on `conn` (at most once per connection). Returns at once;
    /// watch [`Sessions::subscribe`] for the outcome. Call it **before** `conn.serve(..)`: the
    /// accepting side gets its session stream through `serve`, and a session stream that
    /// `serve` sees before this claim is refused.
    pub fn attach(&self, conn: &Connection) -> Result<(), ClusterError> {
        let peer = conn.peer().clone();
        if peer == self.inner.me {
            return Err(ClusterError::Config("cannot attach a session to ourselves"));
        }
        let opener = should_dial(&self.inner.me, &peer);
        // Claim first, synchronously, so that `serve` started right after us routes to us.
        let incoming = conn.claim_session_streams(if opener { 1 } else { SESSION_BACKLOG })?;
        {
            let mut state = lock(&self.inner.shared.state);
            if state.attached.contains_key(&conn.id()) {
                return Err(ClusterError::SessionAlreadyAttached {
                    peer: peer.to_string(),
                    connection_id: conn.id(),
                });
            }
            state.attached.insert(conn.id(), conn.clone());
        }
        let ctx = AttachCtx {
            me: self.inner.me.clone(),
            conn: conn.clone(),
            server: self.inner.server.clone(),
            shared: self.inner.shared.clone(),
            claim_timeout: self.inner.cfg.claim_timeout,
        };
        let mut tasks = lock(&self.inner.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let run = async {
                if opener {
                    ctx.open().await;
                    refuse_all(incoming, &ctx.conn, codes::SESSION_ROLE).await;
                } else {
                    ctx.accept(incoming).await;
                }
            };
            tokio::select! {
                () = run => {}
                _ = ctx.conn.closed() => {}
            }
            ctx.conn.closed().await;
            lock(&ctx.shared.state).attached.remove(&ctx.conn.id());
        });
        Ok(())
    }

    /// Waits until a session with `peer` is ready.
    pub async fn wait_ready(
        &self,
        peer: &NodeName,
        timeout: Duration,
    ) -> Result<SessionInfo, ClusterError> {
        let mut events = self.subscribe();
        if let Some(info) = self.ready(peer) {
            return Ok(info);
        }
        tokio::time::timeout(timeout, async {
            loop {
                match events.recv().await {
                    Ok(SessionEvent::Ready(info)) if &info.peer == peer => return Ok(info),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(info) = self.ready(peer) {
                            return Ok(info);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ClusterError::NodeServerGone);
                    }
                }
            }
        })
        .await
        .map_err(|_| ClusterError::Timeout("session ready"))?
    }

    /// The actors of `peer` in pg group `group`, as seen through the current session with
    /// `peer`. Call again after every [`SessionEvent::Ready`]: refs from an earlier session
    /// are dead.
    pub fn remote_members(
        &self,
        peer: &NodeName,
        group: &str,
    ) -> Result<Vec<ActorCell>, ClusterError> {
        let info = self
            .ready(peer)
            .ok_or_else(|| ClusterError::SessionNotReady(peer.to_string()))?;
        Ok(members_via(info.node_id, group))
    }

    /// Adds a local actor to pg group `group`, so that peers' sessions advertise it.
    pub fn join_group(&self, group: &str, actor: ActorCell) -> Result<(), ClusterError> {
        if !actor.supports_remoting() {
            return Err(ClusterError::NotRemotable);
        }
        ractor::pg::join(group.to_owned(), vec![actor]);
        Ok(())
    }

    /// Sends `message` to `target` (local or remote), refusing a remote message whose
    /// serialized form exceeds [`SessionConfig::max_message`].
    pub fn cast<M: ractor::Message>(
        &self,
        target: &ActorCell,
        message: M,
    ) -> Result<(), ClusterError> {
        send_capped(target, message, self.inner.cfg.max_message)
    }

    /// A call with a timeout: builds the message around a reply port, sends it like
    /// [`Sessions::cast`] and waits at most `timeout` for the reply.
    pub async fn call<M, R>(
        &self,
        target: &ActorCell,
        build: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<R, ClusterError>
    where
        M: ractor::Message,
        R: Send + 'static,
    {
        let (tx, rx) = ractor::concurrency::oneshot();
        send_capped(
            target,
            build((tx, timeout).into()),
            self.inner.cfg.max_message,
        )?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClusterError::NoReply),
            Err(_) => Err(ClusterError::Timeout("remote call")),
        }
    }

    /// Stops the NodeServer (and with it every session) and the per-connection tasks.
    pub async fn shutdown(&self) {
        lock(&self.inner.tasks).abort_all();
        let _ = self
            .inner
            .server
            .stop_and_wait(Some("shutdown".to_owned()), Some(Duration::from_secs(5)))
            .await;
    }
}

/// Members of `group` that are remote actors reached through the session `node_id`.
fn members_via(node_id: NodeId, group: &str) -> Vec<ActorCell> {
    ractor::pg::get_members(&group.to_owned())
        .into_iter()
        .filter(|cell| matches!(cell.get_id(), ActorId::Remote { node_id: n, .. } if n == node_id))
        .collect()
}

fn send_capped<M: ractor::Message>(
    target: &ActorCell,
    message: M,
    limit: usize,
) -> Result<(), ClusterError> {
    if target.get_id().is_local() {
        return target
            .send_message(message)
            .map_err(|_| ClusterError::ActorGone);
    }
    if !M::serializable() {
        return Err(ClusterError::NotRemotable);
    }
    let serialized = message
        .serialize()
        .map_err(|_| ClusterError::NotRemotable)?;
    let size = match &serialized {
        SerializedMessage::Cast {
            variant,
            args,
            metadata,
        }
        | SerializedMessage::Call {
            variant,
            args,
            metadata,
            ..
        } => variant.len() + args.len() + metadata.as_ref().map_or(0, Vec::len),
        SerializedMessage::CallReply(_, bytes) => bytes.len(),
    };
    if size > limit {
        return Err(ClusterError::MessageTooLarge { size, limit });
    }
    // The same path ractor takes for a remote `send_message`: the RemoteActor forwards it.
    target
        .send_serialized(serialized)
        .map_err(|_| ClusterError::ActorGone)
}

/// Keeps the remote actors of one pg group per peer, looked up again on every session-ready
/// and dropped on session-down (ARCHITECTURE.md §5).
pub struct RemoteGroup {
    sessions: Sessions,
    group: String,
    events: broadcast::Receiver<SessionEvent>,
    members: HashMap<NodeName, Vec<ActorCell>>,
}

impl RemoteGroup {
    pub fn new(sessions: &Sessions, group: impl Into<String>) -> Self {
        let events = sessions.subscribe();
        let mut this = Self {
            sessions: sessions.clone(),
            group: group.into(),
            events,
            members: HashMap::new(),
        };
        this.relookup_all();
        this
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The current remote actors of `peer` in this group. Applies pending session events
    /// first, and looks up again when none are known (an actor may join after the session
    /// became ready).
    pub fn members(&mut self, peer: &NodeName) -> Vec<ActorCell> {
        self.apply_events();
        let known = self.members.get(peer).is_some_and(|m| !m.is_empty());
        if !known {
            self.relookup(peer);
        }
        self.members.get(peer).cloned().unwrap_or_default()
    }

    fn apply_events(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(SessionEvent::Ready(info)) => self.relookup(&info.peer),
                Ok(SessionEvent::Down(info)) => {
                    self.members.remove(&info.peer);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.relookup_all(),
                Err(_) => return,
            }
        }
    }

    fn relookup(&mut self, peer: &NodeName) {
        match self.sessions.remote_members(peer, &self.group) {
            Ok(found) => {
                self.members.insert(peer.clone(), found);
            }
            Err(_) => {
                self.members.remove(peer);
            }
        }
    }

    fn relookup_all(&mut self) {
        let ready: Vec<SessionInfo> = lock(&self.sessions.inner.shared.state)
            .ready
            .values()
            .cloned()
            .collect();
        self.members.clear();
        for info in ready {
            self.members
                .insert(info.peer.clone(), members_via(info.node_id, &self.group));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NodeServer events

struct Subscriber(Arc<Shared>);

/// Our streams are labelled `<peer>#<connection id>`; ractor_cluster reports the label as the
/// session's `peer_addr`.
fn label(peer: &NodeName, connection_id: u64) -> String {
    format!("{peer}#{connection_id}")
}

fn parse_label(label: &str) -> Option<(NodeName, u64)> {
    let (peer, id) = label.rsplit_once('#')?;
    Some((peer.parse().ok()?, id.parse().ok()?))
}

impl NodeEventSubscription for Subscriber {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(node_id = ses.node_id, peer = %ses.peer_addr, "ractor session opened");
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(node_id = ses.node_id, peer = %ses.peer_addr, "ractor session authenticated");
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let Some((peer, connection_id)) = parse_label(&ses.peer_addr) else {
            return;
        };
        let info = SessionInfo {
            peer: peer.clone(),
            node_id: ses.node_id,
            connection_id,
        };
        tracing::info!(%peer, node_id = ses.node_id, connection_id, "ractor session ready");
        lock(&self.0.state).ready.insert(peer, info.clone());
        let _ = self.0.events.send(SessionEvent::Ready(info));
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let Some((peer, connection_id)) = parse_label(&ses.peer_addr) else {
            return;
        };
        let (was_ready, conn) = {
            let mut state = lock(&self.0.state);
            let was_ready = match state.ready.get(&peer) {
                Some(info) if info.node_id == ses.node_id => state.ready.remove(&peer),
                _ => None,
            };
            (was_ready, state.attached.remove(&connection_id))
        };
        // A session lives as long as its connection: if the connection outlived it, close it
        // so that the peer pair redials and gets a fresh session.
        if let Some(conn) = conn.filter(|c| !c.is_closed()) {
            tracing::warn!(%peer, connection_id, "ractor session ended on a live connection; closing it");
            conn.close_with(codes::SESSION_LOST, b"ractor session ended");
        }
        if let Some(info) = was_ready {
            tracing::info!(%peer, node_id = ses.node_id, connection_id, "ractor session down");
            let _ = self.0.events.send(SessionEvent::Down(info));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-connection work

struct AttachCtx {
    me: NodeName,
    conn: Connection,
    server: ActorRef<NodeServerMessage>,
    shared: Arc<Shared>,
    claim_timeout: Duration,
}

impl AttachCtx {
    /// The opening side: one stream, its read half name-checked, handed to ractor_cluster.
    async fn open(&self) {
        let peer = self.conn.peer().clone();
        let (send, recv) = match self.conn.open_session_stream().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not open a session stream");
                self.conn
                    .close_with(codes::SESSION_LOST, b"no session stream");
                return;
            }
        };
        let check = {
            let (peer, shared, timeout) = (peer.clone(), self.shared.clone(), self.claim_timeout);
            Box::pin(async move {
                let mut recv = recv;
                match tokio::time::timeout(timeout, read_claim(&mut recv, &peer, Role::Opener))
                    .await
                    .unwrap_or(Err(ClusterError::Timeout("session handshake")))
                {
                    Ok(prefix) => Ok((prefix, recv)),
                    Err(e) => {
                        if counts_as_rejection(&e) {
                            shared.rejected.fetch_add(1, Ordering::Relaxed);
                            let _ = recv.stop(quinn::VarInt::from_u32(rejection_code(&e)));
                        }
                        tracing::warn!(%peer, error = %e, "session peer failed the name check");
                        Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            e.to_string(),
                        ))
                    }
                }
            })
        };
        let stream = QuicSessionStream {
            send,
            read: CheckedRead {
                state: ReadState::Checking(check),
            },
            peer_label: label(&peer, self.conn.id()),
            local_label: self.me.to_string(),
        };
        if let Err(e) =
            ractor_cluster::client_connect_external(&self.server, Box::new(stream)).await
        {
            tracing::warn!(%peer, error = %e, "NodeServer refused the session stream");
            self.conn
                .close_with(codes::SESSION_LOST, b"node server gone");
        }
    }

    /// The accepting side: check each offered stream's first frame; hand the first good one
    /// to ractor_cluster and refuse every later one.
    async fn accept(&self, mut incoming: tokio::sync::mpsc::Receiver<SessionStream>) {
        let peer = self.conn.peer().clone();
        let mut carrying = false;
        while let Some((mut send, mut recv)) = incoming.recv().await {
            if carrying {
                refuse(&mut send, &mut recv, codes::SESSION_EXISTS);
                tracing::warn!(%peer, "refused a second session stream on one connection");
                continue;
            }
            let claim = tokio::time::timeout(
                self.claim_timeout,
                read_claim(&mut recv, &peer, Role::Acceptor),
            )
            .await
            .unwrap_or(Err(ClusterError::Timeout("session handshake")));
            let prefix = match claim {
                Ok(prefix) => prefix,
                Err(e) => {
                    if counts_as_rejection(&e) {
                        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    refuse(&mut send, &mut recv, rejection_code(&e));
                    tracing::warn!(%peer, error = %e, "refused a session stream");
                    continue;
                }
            };
            carrying = true;
            let stream = QuicSessionStream {
                send,
                read: CheckedRead {
                    state: ReadState::Passing {
                        prefix,
                        pos: 0,
                        recv,
                    },
                },
                peer_label: label(&peer, self.conn.id()),
                local_label: self.me.to_string(),
            };
            let opened = self
                .server
                .cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream: Box::new(stream),
                    is_server: true,
                });
            if opened.is_err() {
                tracing::warn!(%peer, "NodeServer gone; closing the connection");
                self.conn
                    .close_with(codes::SESSION_LOST, b"node server gone");
                return;
            }
        }
    }
}

/// Refuses every session stream offered on `conn` with `code` until it closes.
async fn refuse_all(
    mut incoming: tokio::sync::mpsc::Receiver<SessionStream>,
    conn: &Connection,
    code: u32,
) {
    while let Some((mut send, mut recv)) = incoming.recv().await {
        refuse(&mut send, &mut recv, code);
        tracing::warn!(peer = %conn.peer(), "refused a session stream from the wrong side");
    }
}

fn counts_as_rejection(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::SessionIdentity { .. }
            | ClusterError::SessionProtocol { .. }
            | ClusterError::FrameTooLarge { .. }
            | ClusterError::Timeout(_)
    )
}

fn rejection_code(e: &ClusterError) -> u32 {
    match e {
        ClusterError::SessionIdentity { .. } | ClusterError::SessionProtocol { .. } => {
            codes::SESSION_IDENTITY
        }
        ClusterError::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
        ClusterError::Timeout(_) => codes::TIMEOUT,
        _ => codes::PROTOCOL,
    }
}

// ---------------------------------------------------------------------------------------------
// The name check

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// We accepted the stream: the peer's first frame must be its name.
    Acceptor,
    /// We opened the stream: the peer answers with a status, then a challenge carrying its name.
    Opener,
}

/// Reads the peer's first ractor frames and checks the name they claim against `peer`.
/// Returns the bytes read, to be replayed to ractor_cluster.
async fn read_claim(
    recv: &mut RecvStream,
    peer: &NodeName,
    role: Role,
) -> Result<Vec<u8>, ClusterError> {
    let mut consumed = Vec::new();
    let frames = match role {
        Role::Acceptor => 1,
        Role::Opener => 2,
    };
    for index in 0..frames {
        let mut header = [0u8; FRAME_HEADER];
        read_exact(recv, &mut header).await?;
        let len = u64::from_be_bytes(header);
        if len > MAX_CLAIM_FRAME {
            return Err(ClusterError::FrameTooLarge {
                size: usize::try_from(len).unwrap_or(usize::MAX),
                limit: MAX_CLAIM_FRAME as usize,
            });
        }
        // Bounded by MAX_CLAIM_FRAME above.
        let mut body = vec![0u8; len as usize];
        read_exact(recv, &mut body).await?;
        check_frame(&body, peer, role, index)?;
        consumed.extend_from_slice(&header);
        consumed.extend_from_slice(&body);
    }
    Ok(consumed)
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), ClusterError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ClusterError::Truncated,
        quinn::ReadExactError::ReadError(e) => e.into(),
    })
}

/// Checks frame `index` (0-based) of what `peer` sent us in `role`.
fn check_frame(body: &[u8], peer: &NodeName, role: Role, index: usize) -> Result<(), ClusterError> {
    let protocol = |reason| ClusterError::SessionProtocol {
        peer: peer.to_string(),
        reason,
    };
    let frame = wire::NetworkMessage::decode(body)
        .map_err(|_| protocol("first frames are not ractor protobuf"))?;
    let Some(wire::network_message::Message::Auth(auth)) = frame.message else {
        return Err(protocol("expected an authentication message first"));
    };
    use wire::authentication_message::Msg;
    let (name, connection_string) = match (role, index, auth.msg) {
        (Role::Acceptor, 0, Some(Msg::Name(n))) => (n.name, n.connection_string),
        (Role::Opener, 0, Some(Msg::ServerStatus(_))) => return Ok(()),
        (Role::Opener, 1, Some(Msg::ServerChallenge(c))) => (c.name, c.connection_string),
        _ => return Err(protocol("unexpected authentication message")),
    };
    let expected = ractor_node_name(peer);
    let host_ok = connection_string
        .strip_prefix(peer.dns_name().as_str())
        .is_some_and(|rest| rest.starts_with(':'));
    if name != expected || !host_ok {
        return Err(ClusterError::SessionIdentity {
            expected: expected.clone(),
            // Bounded: it comes from the peer.
            claimed: name.chars().take(80).collect(),
        });
    }
    Ok(())
}

/// The subset of ractor_cluster 0.16.5's `meta.proto` / `auth.proto` the name check reads.
/// Same tags and `oneof` shapes as ractor_cluster's generated code, so prost decodes a frame
/// here exactly as ractor_cluster will; the variants we never inspect stay opaque bytes.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NetworkMessage {
        #[prost(oneof = "network_message::Message", tags = "1, 2, 3")]
        pub(super) message: Option<network_message::Message>,
    }

    pub(super) mod network_message {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub(in super::super) enum Message {
            #[prost(message, tag = "1")]
            Auth(super::AuthenticationMessage),
            #[prost(bytes, tag = "2")]
            Node(Vec<u8>),
            #[prost(bytes, tag = "3")]
            Control(Vec<u8>),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct AuthenticationMessage {
        #[prost(oneof = "authentication_message::Msg", tags = "1, 2, 3, 4, 5, 6")]
        pub(super) msg: Option<authentication_message::Msg>,
    }

    pub(super) mod authentication_message {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub(in super::super) enum Msg {
            #[prost(message, tag = "1")]
            Name(super::NameMessage),
            #[prost(message, tag = "2")]
            ServerStatus(super::ServerStatus),
            #[prost(bytes, tag = "3")]
            ClientStatus(Vec<u8>),
            #[prost(message, tag = "4")]
            ServerChallenge(super::Challenge),
            #[prost(bytes, tag = "5")]
            ClientChallenge(Vec<u8>),
            #[prost(bytes, tag = "6")]
            ServerAck(Vec<u8>),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NameMessage {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(bytes, tag = "2")]
        pub(super) flags: Vec<u8>,
        #[prost(string, tag = "3")]
        pub(super) connection_string: String,
        #[prost(uint64, tag = "4")]
        pub(super) connection_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ServerStatus {
        #[prost(int32, tag = "1")]
        pub(super) status: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Challenge {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(bytes, tag = "2")]
        pub(super) flags: Vec<u8>,
        #[prost(uint32, tag = "3")]
        pub(super) challenge: u32,
        #[prost(string, tag = "4")]
        pub(super) connection_string: String,
    }
}

// ---------------------------------------------------------------------------------------------
// The stream handed to ractor_cluster

type ClaimFuture = Pin<Box<dyn Future<Output = io::Result<(Vec<u8>, RecvStream)>> + Send>>;

/// The read half given to ractor_cluster: first (on the opening side) the name check, then the
/// bytes it read, then the QUIC stream itself.
struct CheckedRead {
    state: ReadState,
}

enum ReadState {
    Checking(ClaimFuture),
    Passing {
        prefix: Vec<u8>,
        pos: usize,
        recv: RecvStream,
    },
    Failed,
}

impl AsyncRead for CheckedRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                ReadState::Checking(check) => match check.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((prefix, recv))) => {
                        this.state = ReadState::Passing {
                            prefix,
                            pos: 0,
                            recv,
                        };
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = ReadState::Failed;
                        return Poll::Ready(Err(e));
                    }
                },
                ReadState::Passing { prefix, pos, recv } => {
                    if *pos < prefix.len() {
                        let n = buf.remaining().min(prefix.len() - *pos);
                        buf.put_slice(&prefix[*pos..*pos + n]);
                        *pos += n;
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(recv).poll_read(cx, buf);
                }
                ReadState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "session stream failed the name check",
                    )));
                }
            }
        }
    }
}

/// A name-checked QUIC session stream, as ractor_cluster's external transport.
struct QuicSessionStream {
    send: SendStream,
    read: CheckedRead,
    peer_label: String,
    local_label: String,
}

impl ClusterBidiStream for QuicSessionStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.read), Box::new(self.send))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer_label.clone())
    }

    fn local_label(&self) -> Option<String> {
        Some(self.local_label.clone())
    }
}

/// TLS for the TCP listener ractor_cluster insists on: it demands a client certificate from a
/// CA generated here and dropped at once, so no handshake there can ever succeed. aws-lc-rs is
/// passed explicitly (ARCHITECTURE.md §5).
fn unusable_tls_acceptor() -> Result<tokio_rustls::TlsAcceptor, ClusterError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let nobody = rcgen::generate_simple_self_signed(vec!["nobody.invalid".to_owned()])?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(nobody.cert.der().clone())?;
    drop(nobody);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let listener = rcgen::generate_simple_self_signed(vec!["loopback.invalid".to_owned()])?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(listener.signing_key.serialize_der())
        .map_err(|e| ClusterError::BadPeerCertificate(e.to_owned()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![listener.cert.der().clone()], key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        s.parse().expect("valid name")
    }

    fn name_frame(name: &str, conn: &str) -> Vec<u8> {
        let msg = wire::NetworkMessage {
            message: Some(wire::network_message::Message::Auth(
                wire::AuthenticationMessage {
                    msg: Some(wire::authentication_message::Msg::Name(wire::NameMessage {
                        name: name.to_owned(),
                        flags: vec![8, 1],
                        connection_string: conn.to_owned(),
                        connection_id: 7,
                    })),
                },
            )),
        };
        msg.encode_to_vec()
    }

    #[test]
    fn names_map_one_to_one() {
        assert_eq!(ractor_node_name(&n("a")), "a@a.node.tern");
        assert_eq!(group_name("status", 1), "tern.status.v1");
        assert_eq!(parse_label(&label(&n("b-1"), 42)), Some((n("b-1"), 42)));
        assert_eq!(parse_label("nonsense"), None);
    }

    #[test]
    fn the_first_frame_must_name_the_certified_peer() {
        let a = n("a");
        let ok = name_frame("a@a.node.tern", "a.node.tern:4000");
        assert!(check_frame(&ok, &a, Role::Acceptor, 0).is_ok());
        for bad in [
            name_frame("c@c.node.tern", "c.node.tern:4000"),
            name_frame("a@evil", "a.node.tern:4000"),
            name_frame("a@a.node.tern", "b.node.tern:4000"),
            name_frame("a@a.node.tern", "a.node.ternx:1"),
        ] {
            assert!(matches!(
                check_frame(&bad, &a, Role::Acceptor, 0),
                Err(ClusterError::SessionIdentity { .. })
            ));
        }
        // A frame whose last oneof field is not the name decodes, like in ractor_cluster, as
        // that other field: no name, refused.
        let mut sneaky = ok.clone();
        sneaky.extend_from_slice(&[0x1a, 0x00]); // field 3 (control), empty
        assert!(matches!(
            check_frame(&sneaky, &a, Role::Acceptor, 0),
            Err(ClusterError::SessionProtocol { .. })
        ));
        assert!(check_frame(&[0xff, 0xff], &a, Role::Acceptor, 0).is_err());
        assert!(check_frame(&ok, &a, Role::Opener, 0).is_err());
    }
}
