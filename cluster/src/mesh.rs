//! The mesh shell: drives the pure [`Membership`] state machine with real time and real
//! connections. It accepts verified connections, dials the peers this node should dial (with
//! backoff), serves each peer's data-plane requests with one handler, notices lost
//! connections, and fans membership changes out to subscribers.
//!
//! All decisions (who dials, when to redial, what a loss means) stay in `membership.rs`; this
//! file only moves events between the transport, the clock and the state machine.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::membership::{BackoffConfig, LossReason};
use crate::session::Sessions;
use crate::transport::PartSender;
use crate::{ClusterError, Connection, Endpoint, Membership, MembershipEvent, NodeName, PeerState};
use tern_sync::poison::{read, write};

/// Answers one data-plane request from `peer`; with a [`PartSender`] for a request whose
/// answer may come in parts ([`Connection::request_streamed`]).
pub type Handler = Arc<
    dyn Fn(NodeName, Vec<u8>, Option<PartSender>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>>
        + Send
        + Sync,
>;

/// Who is in the cluster and how to reach them.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Every other member with the address of its mesh endpoint. Only peers this node dials
    /// (lower name dials) need a reachable address; the others dial us.
    pub peers: Vec<(NodeName, SocketAddr)>,
    pub backoff: BackoffConfig,
    /// Seeds the redial jitter.
    pub seed: u64,
}

/// A running mesh. Dropping it stops it (the task is aborted and connections close).
pub struct Mesh {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    endpoint: Endpoint,
    conns: RwLock<HashMap<NodeName, Connection>>,
    events: broadcast::Sender<MembershipEvent>,
    view: watch::Sender<BTreeMap<NodeName, PeerState>>,
}

enum Input {
    Accepted(Connection),
    Dialled(NodeName, Result<Connection, ClusterError>),
    Lost(NodeName, u64, LossReason),
}

impl Mesh {
    /// Starts the shell on `endpoint`. Peers this node dials are dialled at once.
    pub fn start(endpoint: Endpoint, cfg: MeshConfig, handler: Handler) -> Self {
        Self::start_with_sessions(endpoint, cfg, handler, None)
    }

    /// Like [`Mesh::start`], and runs a ractor_cluster session (see [`Sessions`]) on every
    /// verified connection, attached before the connection is served.
    pub fn start_with_sessions(
        endpoint: Endpoint,
        cfg: MeshConfig,
        handler: Handler,
        sessions: Option<Sessions>,
    ) -> Self {
        let now = Instant::now();
        endpoint.accept_only(cfg.peers.iter().map(|(n, _)| n.clone()));
        let membership = Membership::new(
            endpoint.name().clone(),
            cfg.peers.iter().map(|(n, _)| n.clone()),
            cfg.backoff,
            cfg.seed,
            now,
        );
        let initial = cfg
            .peers
            .iter()
            .filter(|(n, _)| n != endpoint.name())
            .map(|(n, _)| (n.clone(), PeerState::Down))
            .collect();
        let (events, _) = broadcast::channel(1024);
        let (view, _) = watch::channel(initial);
        let shared = Arc::new(Shared {
            endpoint,
            conns: RwLock::default(),
            events,
            view,
        });
        let addrs = cfg.peers.into_iter().collect();
        let task = tokio::spawn(run(shared.clone(), membership, addrs, handler, sessions));
        Self { shared, task }
    }

    pub fn name(&self) -> &NodeName {
        self.shared.endpoint.name()
    }

    /// The verified connection to `peer`, if it is up.
    pub fn connection(&self, peer: &NodeName) -> Option<Connection> {
        read(&self.shared.conns).get(peer).cloned()
    }

    /// Every configured peer and its state.
    pub fn members(&self) -> BTreeMap<NodeName, PeerState> {
        self.shared.view.borrow().clone()
    }

    /// Membership changes from now on. A slow subscriber that falls more than 1,024 events
    /// behind gets `Lagged` and should re-read [`Mesh::members`].
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.shared.events.subscribe()
    }

    /// The membership view as a watch channel (always the latest state).
    pub fn watch(&self) -> watch::Receiver<BTreeMap<NodeName, PeerState>> {
        self.shared.view.subscribe()
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ClusterError> {
        self.shared.endpoint.local_addr()
    }

    /// Incoming connections refused by the handshake or identity check.
    pub fn rejected_handshakes(&self) -> u64 {
        self.shared.endpoint.rejected_handshakes()
    }

    /// Closes every connection and stops.
    pub fn shutdown(&self) {
        self.task.abort();
        for conn in write(&self.shared.conns).drain().map(|(_, c)| c) {
            conn.close();
        }
        self.shared.endpoint.close();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn run(
    shared: Arc<Shared>,
    mut membership: Membership,
    addrs: HashMap<NodeName, SocketAddr>,
    handler: Handler,
    sessions: Option<Sessions>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    // Aborted with the mesh task: a JoinHandle in a guard would be tidier, but the accept
    // loop ends by itself once the endpoint closes.
    let accept = tokio::spawn({
        let (shared, tx) = (shared.clone(), tx.clone());
        async move {
            while let Ok(conn) = shared.endpoint.accept().await {
                if tx.send(Input::Accepted(conn)).is_err() {
                    break;
                }
            }
        }
    });
    let _accept = AbortOnDrop(accept);
    loop {
        let (dials, events) = membership.tick(Instant::now());
        publish(&shared, &membership, events);
        for dial in dials {
            let Some(&addr) = addrs.get(&dial.node) else {
                // Membership only schedules configured peers; a missing address is a config
                // error reported once and retried with backoff like any failed dial.
                tracing::warn!(peer = %dial.node, "no address configured for peer");
                let _ = tx.send(Input::Dialled(
                    dial.node,
                    Err(ClusterError::Config("no address for peer")),
                ));
                continue;
            };
            let (shared, tx) = (shared.clone(), tx.clone());
            tokio::spawn(async move {
                let result = shared.endpoint.connect(&dial.node, addr).await;
                let _ = tx.send(Input::Dialled(dial.node, result));
            });
        }
        let sleep = match membership.next_deadline() {
            Some(at) => tokio::time::sleep_until(at.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        let input = tokio::select! {
            input = rx.recv() => input,
            () = sleep => continue,
        };
        let Some(input) = input else { return };
        let now = Instant::now();
        let events = match input {
            Input::Accepted(conn) | Input::Dialled(_, Ok(conn)) => {
                let peer = conn.peer().clone();
                if membership.state(&peer).is_none() {
                    tracing::warn!(%peer, "verified peer is not a configured member; closing");
                    conn.close();
                    continue;
                }
                let events = membership.connected(&peer, conn.id(), now);
                let replaced = write(&shared.conns).insert(peer.clone(), conn.clone());
                if let Some(old) = replaced.filter(|old| old.id() != conn.id()) {
                    old.close();
                }
                if let Some(sessions) = &sessions
                    && let Err(e) = sessions.attach(&conn)
                {
                    tracing::warn!(%peer, error = %e, "cannot attach a ractor_cluster session");
                }
                tokio::spawn(serve(conn, handler.clone(), tx.clone()));
                events
            }
            Input::Dialled(peer, Err(e)) => {
                tracing::debug!(%peer, error = %e, "dial failed");
                membership.dial_failed(&peer, now)
            }
            Input::Lost(peer, id, reason) => {
                {
                    let mut conns = write(&shared.conns);
                    if conns.get(&peer).is_some_and(|c| c.id() == id) {
                        conns.remove(&peer);
                    }
                }
                tracing::info!(%peer, ?reason, "connection lost");
                membership.connection_lost(&peer, id, now, reason)
            }
        };
        publish(&shared, &membership, events);
    }
}

/// Serves `conn` until it ends, then reports the loss.
async fn serve(conn: Connection, handler: Handler, tx: mpsc::UnboundedSender<Input>) {
    let peer = conn.peer().clone();
    let h = handler.clone();
    let p = peer.clone();
    let ended = conn
        .serve(move |payload, parts| h(p.clone(), payload, parts))
        .await;
    let reason = match &ended {
        ClusterError::Connection(quinn::ConnectionError::TimedOut) => LossReason::TimedOut,
        ClusterError::Connection(
            quinn::ConnectionError::ApplicationClosed(_)
            | quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::LocallyClosed,
        ) => LossReason::Closed,
        other => LossReason::Other(other.to_string()),
    };
    let _ = tx.send(Input::Lost(peer, conn.id(), reason));
}

fn publish(shared: &Shared, membership: &Membership, events: Vec<MembershipEvent>) {
    if events.is_empty() {
        return;
    }
    shared.view.send_modify(|view| {
        for peer in view.keys().cloned().collect::<Vec<_>>() {
            if let Some(state) = membership.state(&peer) {
                view.insert(peer, state);
            }
        }
    });
    for event in events {
        tracing::info!(peer = %event.node, state = ?event.state, "membership");
        // No subscriber is fine.
        let _ = shared.events.send(event);
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
