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
//!
//! **One node per process.** pg groups and actor pids are process-wide, each session
//! advertises every remotable actor of the process, and every NodeServer numbers its
//! sessions from 0. With several nodes in one process (tests), [`Sessions::remote_members`]
//! and [`RemoteGroup`] may therefore return another node's actors (a remote id names the
//! session number and the pid, not the NodeServer), and pg may keep only one of two refs
//! with equal ids. Name groups after the node that owns the actor, as tern-link's control
//! plane does (`tern.status.v1@b`), and do not run two nodes of the same name in one process.
//!
//! The files, one layer each:
//! - this one: [`Sessions`] (starting the NodeServer, attaching a connection, readiness),
//!   its config and its events;
//! - `attach.rs`: the work on one connection, opening or accepting its session stream;
//! - `name_check.rs`: the check of the peer's first ractor_cluster frames (a protobuf decoder
//!   mirroring ractor_cluster's schema);
//! - `stream.rs`: the adapter that hands a checked QUIC stream to ractor_cluster;
//! - `events.rs`: the NodeServer's session events turned into [`SessionEvent`]s;
//! - `remote.rs`: remote actors over a session (pg group names, [`RemoteGroup`], the
//!   size-capped send).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};
use ractor_cluster::{
    IncomingEncryptionMode, NodeId, NodeServer, NodeServerMessage, node::NodeConnectionMode,
};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::membership::should_dial;
use crate::transport::codes;
use crate::{ClusterError, Connection, NodeName};
use tern_sync::poison::lock;

mod attach;
mod events;
mod name_check;
mod remote;
mod stream;

use attach::{AttachCtx, refuse_all};
use events::Subscriber;
pub use remote::{RemoteGroup, group_name};
use remote::{members_via, send_capped};

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
    /// are dead. With several nodes in one process this may include other nodes' actors (see
    /// "One node per process" in the module doc).
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

    #[test]
    fn a_tern_node_is_the_ractor_node_named_after_its_certificate() {
        let a: NodeName = "a".parse().expect("valid name");
        assert_eq!(ractor_node_name(&a), "a@a.node.tern");
    }
}
