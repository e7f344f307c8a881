//! `tern-link`: the node's cluster link. Joins the QUIC mesh (tern-cluster), serves peers'
//! data-plane requests, publishes this node's status, replicates the registry, and implements
//! the SchedulerAgent's [`Remote`] seam (forwarding MEUs to peers). It reaches the node it
//! links only through [`LocalNode`], and is configured by a [`LinkConfig`].
//!
//! Every exchange is one request frame and one answer frame on a QUIC stream that carries
//! nothing else meanwhile ([`PeerRequest`] / [`PeerResponse`] in tern-wire; the stream is a
//! lane kept for later exchanges), so a module transfer never delays an invocation or a
//! status update.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tern_actors::remote::{Remote, RemoteFailure, RemoteFuture};
use tern_actors::{Error as RuntimeError, Outcome};
use tern_cluster::membership::BackoffConfig;
use tern_cluster::{
    Endpoint, Mesh, MeshConfig, NodeName, PeerState, SessionConfig, Sessions, TransportConfig, pki,
};
use tern_metrics::Metrics;
use tern_placement::NodeView;
use tern_runtime::Meu;
use tern_sync::poison::{lock, read, write};
use tern_wire::peer::{NodeStatus, PeerRequest, PeerResponse, RegistryEntry, RemoteMeu};
use tern_wire::{ApiError, ErrorCode, FunctionInfo, ModuleHash};
use tokio::task::JoinHandle;

mod registry_sync;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use registry_sync::RegistrySync;
use tern_wire::ApiError as PeerError;

/// How often a node publishes its status to each peer ("a few times a second").
pub const STATUS_INTERVAL: Duration = Duration::from_millis(200);
/// A peer whose last status is older than this is not offered to placement.
const STATUS_STALE: Duration = Duration::from_secs(2);
/// Bound on a status or registry exchange (forwarded MEUs are bounded by the function's own
/// time limit instead).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed future borrowing its receiver, for the object-safe [`LocalNode`].
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything that can go wrong starting the link or talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The mesh: identity, endpoint, connection.
    #[error(transparent)]
    Cluster(#[from] tern_cluster::ClusterError),
    /// A peer is not connected, did not answer in time, or answered something unusable.
    #[error("{0}")]
    Peer(String),
}

/// How the link joins the mesh.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub node_name: NodeName,
    /// Directory written by `tern cluster init` (`ca.pem`, `<node>.pem`, `<node>.key`).
    pub cluster_dir: PathBuf,
    /// UDP address of this node's mesh endpoint.
    pub listen: SocketAddr,
    pub peers: Vec<(NodeName, SocketAddr)>,
    /// Largest frame on the mesh (the largest body, module or output, plus headroom).
    pub frame_limit: usize,
    /// Bound on one forwarded MEU (the longest function time limit, plus headroom).
    pub request_timeout: Duration,
    /// Idle lanes kept per peer.
    pub idle_lanes: usize,
    /// How long a member with peers waits to pull a registry before answering "not found".
    pub sync_grace: Duration,
    /// Run ractor_cluster sessions over the peer links.
    pub ractor_sessions: bool,
}

/// What the cluster link needs of the node it links: its registry and modules, running an
/// MEU for a peer, its load, and its metrics. The node's `App` implements it; the link holds
/// it weakly and knows nothing else of the node, so it can be driven by a stand-in in tests
/// and moved next to the transport.
pub trait LocalNode: Send + Sync + 'static {
    /// Applies a registry entry learnt from `peer` if it is newer (last writer wins);
    /// whether anything changed.
    fn apply_entry<'a>(
        &'a self,
        entry: RegistryEntry,
        peer: &'a NodeName,
    ) -> LocalFuture<'a, Result<bool, PeerError>>;
    /// This node's whole registry, tombstones included.
    fn registry(&self) -> Result<Vec<RegistryEntry>, PeerError>;
    /// The bytes of a stored module.
    fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, PeerError>;
    /// Runs an MEU a peer placed here, if exactly that version is ready; every failure is an
    /// `Error` answer.
    fn execute_for_peer(&self, meu: RemoteMeu) -> LocalFuture<'_, PeerResponse>;
    /// This node's status as published to peers, with the measurements the link made.
    fn status(&self, seq: u64, cpu_percent: u32, recent_mean_us: u64) -> NodeStatus;
    fn metrics(&self) -> &Metrics;
}

pub struct ClusterLink {
    mesh: Mesh,
    node: Weak<dyn LocalNode>,
    statuses: RwLock<BTreeMap<NodeName, (NodeStatus, Instant)>>,
    /// When each peer entered its current membership state (from the mesh's events).
    state_since: RwLock<BTreeMap<NodeName, Instant>>,
    frame_limit: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// ractor_cluster sessions over the peer links (`ractor_sessions`).
    sessions: Option<Sessions>,
    /// Whether this node knows the cluster registry yet.
    sync: Arc<RegistrySync>,
}

/// One member as `GET /v1/cluster` shows it.
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub node: String,
    pub state: &'static str,
    /// Milliseconds since it entered `state` (absent until its first change seen here).
    pub state_age_ms: Option<u64>,
    /// Milliseconds since its last status (absent before the first).
    pub status_age_ms: Option<u64>,
    pub queue_depth: Option<u32>,
    pub class: Option<tern_wire::NodeClass>,
    /// Whether the ractor_cluster session with the peer is ready (absent when sessions are
    /// off).
    pub session: Option<bool>,
}

impl ClusterLink {
    /// Joins the mesh as `c.node_name`, serving peers on behalf of `node`. The caller plugs
    /// the link into the scheduler (it is the [`Remote`]).
    pub async fn start(c: LinkConfig, node: Weak<dyn LocalNode>) -> Result<Arc<Self>, LinkError> {
        let name = c.node_name.clone();
        let identity = pki::load(&c.cluster_dir, &name)?;
        let frame_limit = c.frame_limit;
        let transport = TransportConfig {
            max_frame: frame_limit,
            request_timeout: c.request_timeout,
            max_concurrent_streams: 4096,
            max_idle_lanes: c.idle_lanes,
            ..TransportConfig::default()
        };
        let endpoint = Endpoint::bind(&identity, c.listen, transport)?;
        let sync_deadline = Instant::now() + c.sync_grace;
        let peers = c.peers;
        let no_peers = peers.is_empty();
        let seed = tern_placement::WarmAffinity::weight("mesh-seed", name.as_str());
        let sessions = if c.ractor_sessions {
            Some(Sessions::start(&name, SessionConfig::default()).await?)
        } else {
            None
        };
        let link = Arc::new_cyclic(|weak: &Weak<ClusterLink>| {
            let handler_link = weak.clone();
            let handler: tern_cluster::mesh::Handler = Arc::new(move |peer, bytes| {
                let link = handler_link.clone();
                Box::pin(async move {
                    match link.upgrade() {
                        Some(link) => link.handle(peer, bytes).await,
                        None => Vec::new(),
                    }
                })
            });
            let mesh = Mesh::start_with_sessions(
                endpoint,
                MeshConfig {
                    peers,
                    backoff: BackoffConfig::default(),
                    seed,
                },
                handler,
                sessions.clone(),
            );
            ClusterLink {
                sync: Arc::new(RegistrySync::new(no_peers, sync_deadline)),
                mesh,
                node,
                statuses: RwLock::default(),
                state_since: RwLock::default(),
                frame_limit,
                tasks: Mutex::default(),
                sessions,
            }
        });
        let publisher = tokio::spawn(publish_status(Arc::downgrade(&link)));
        let watcher = tokio::spawn(watch_membership(Arc::downgrade(&link)));
        lock(&link.tasks).extend([publisher, watcher]);
        Ok(link)
    }

    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        Ok(self.mesh.local_addr()?)
    }

    /// Every configured peer with its state and last status.
    pub fn members(&self) -> Vec<MemberView> {
        let statuses = read(&self.statuses);
        let since = read(&self.state_since);
        self.mesh
            .members()
            .into_iter()
            .map(|(node, state)| {
                let status = statuses.get(&node);
                MemberView {
                    node: node.to_string(),
                    state: match state {
                        PeerState::Up => "up",
                        PeerState::Joining => "joining",
                        PeerState::Down => "down",
                    },
                    state_age_ms: since.get(&node).map(|at| at.elapsed().as_millis() as u64),
                    status_age_ms: status.map(|(_, at)| at.elapsed().as_millis() as u64),
                    queue_depth: status.map(|(s, _)| s.queue_depth),
                    class: status.map(|(s, _)| s.class),
                    session: self.sessions.as_ref().map(|s| s.ready(&node).is_some()),
                }
            })
            .collect()
    }

    /// Stops the mesh (connections close; peers see this node leave at once) and the
    /// ractor_cluster NodeServer.
    pub async fn shutdown(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.mesh.shutdown();
        if let Some(sessions) = &self.sessions {
            sessions.shutdown().await;
        }
    }

    /// Sends registry entries to every connected peer, in the background. A peer that misses
    /// them (down, or the send fails) catches up by anti-entropy when its link comes up.
    pub fn announce(self: &Arc<Self>, entries: Vec<RegistryEntry>) {
        let members = self.mesh.members();
        for (peer, state) in members {
            if state != PeerState::Up {
                continue;
            }
            let link = self.clone();
            let entries = entries.clone();
            tokio::spawn(async move {
                match link.control(&peer, PeerRequest::Announce(entries)).await {
                    Ok(PeerResponse::Ack) => {}
                    Ok(other) => {
                        tracing::warn!(%peer, ?other, "peer did not apply an announcement")
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "cannot announce to peer"),
                }
            });
        }
    }

    /// The bytes of module `hash`, from `peer`, checked against the hash. Unbounded in time:
    /// a large module on a slow link takes what it takes (the connection's idle timeout still
    /// catches a dead peer).
    pub async fn fetch_module(
        &self,
        peer: &NodeName,
        hash: &ModuleHash,
    ) -> Result<Bytes, LinkError> {
        match self
            .exchange(peer, &PeerRequest::FetchModule(*hash), None)
            .await?
        {
            PeerResponse::Module(bytes) => {
                let got = tern_runtime::Runtime::module_hash(&bytes);
                if got != *hash {
                    return Err(LinkError::Peer(format!(
                        "{peer} sent module {got} for {hash}"
                    )));
                }
                Ok(Bytes::from(bytes))
            }
            PeerResponse::Error(e) => Err(LinkError::Peer(format!(
                "{peer} cannot send module {hash}: {}",
                e.message
            ))),
            other => Err(LinkError::Peer(format!(
                "{peer} answered a module fetch with {other:?}"
            ))),
        }
    }

    /// Pulls `peer`'s registry and applies what is newer (anti-entropy when a link comes up,
    /// which also covers a node that restarted or missed announcements).
    async fn sync_registry(&self, peer: &NodeName) -> Result<usize, LinkError> {
        let PeerResponse::Registry(entries) = self.control(peer, PeerRequest::Registry).await?
        else {
            return Err(LinkError::Peer(format!("{peer} sent no registry")));
        };
        let Some(node) = self.node.upgrade() else {
            return Ok(0);
        };
        let mut applied = 0;
        for entry in entries {
            match node.apply_entry(entry, peer).await {
                Ok(true) => applied += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(%peer, error = %e, "cannot apply a registry entry"),
            }
        }
        Ok(applied)
    }

    /// A small request with a short bound.
    async fn control(&self, peer: &NodeName, req: PeerRequest) -> Result<PeerResponse, LinkError> {
        self.exchange(peer, &req, Some(CONTROL_TIMEOUT)).await
    }

    /// One request to `peer` on a lane of its own and its decoded answer, within `bound` if set.
    async fn exchange(
        &self,
        peer: &NodeName,
        req: &PeerRequest,
        bound: Option<Duration>,
    ) -> Result<PeerResponse, LinkError> {
        let conn = self
            .mesh
            .connection(peer)
            .ok_or_else(|| LinkError::Peer(format!("{peer} is not connected")))?;
        let bytes = self.encode(req)?;
        let answer = match bound {
            Some(bound) => tokio::time::timeout(bound, conn.request(&bytes))
                .await
                .map_err(|_| LinkError::Peer(format!("{peer} did not answer in time")))??,
            None => conn.request(&bytes).await?,
        };
        self.decode_response(&answer)
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, LinkError> {
        tern_wire::encode(value, self.frame_limit)
            .map_err(|e| LinkError::Peer(format!("cannot encode a peer message: {e}")))
    }

    fn decode_response(&self, bytes: &[u8]) -> Result<PeerResponse, LinkError> {
        tern_wire::decode(bytes, self.frame_limit)
            .map_err(|e| LinkError::Peer(format!("bad answer from a peer: {e}")))
    }

    /// Answers one data-plane request from `peer`. Never panics on what a peer sends; every
    /// failure is an `Error` answer.
    async fn handle(&self, peer: NodeName, bytes: Vec<u8>) -> Vec<u8> {
        let response = match tern_wire::decode::<PeerRequest>(&bytes, self.frame_limit) {
            Ok(req) => self.serve(peer, req).await,
            Err(e) => PeerResponse::Error(ApiError::new(ErrorCode::InvalidRequest, e.to_string())),
        };
        tern_wire::encode(&response, self.frame_limit).unwrap_or_else(|e| {
            let fallback = PeerResponse::Error(ApiError::new(ErrorCode::Internal, e.to_string()));
            tern_wire::encode(&fallback, self.frame_limit).unwrap_or_default()
        })
    }

    async fn serve(&self, peer: NodeName, req: PeerRequest) -> PeerResponse {
        let Some(node) = self.node.upgrade() else {
            return PeerResponse::Error(ApiError::new(ErrorCode::Unavailable, "node stopping"));
        };
        let fail = PeerResponse::Error;
        match req {
            PeerRequest::Status(status) => {
                // Keyed by the verified peer name, whatever the status claims.
                write(&self.statuses).insert(peer, (status, Instant::now()));
                PeerResponse::Ack
            }
            PeerRequest::Announce(entries) => {
                for entry in entries {
                    if let Err(e) = node.apply_entry(entry, &peer).await {
                        return fail(e);
                    }
                }
                PeerResponse::Ack
            }
            PeerRequest::Registry => match node.registry() {
                Ok(entries) => PeerResponse::Registry(entries),
                Err(e) => fail(e),
            },
            PeerRequest::FetchModule(hash) => match node.module(&hash) {
                Ok(Some(bytes)) => PeerResponse::Module(bytes),
                Ok(None) => PeerResponse::Error(ApiError::new(
                    ErrorCode::NotFound,
                    format!("module {hash} is not stored here"),
                )),
                Err(e) => fail(e),
            },
            PeerRequest::Execute(meu) => node.execute_for_peer(meu).await,
        }
    }
}

impl Remote for ClusterLink {
    fn registry_synced(&self) -> bool {
        self.sync.is_synced(Instant::now())
    }

    fn candidates(&self, info: &FunctionInfo, out: &mut Vec<NodeView>) {
        // On the hot path (once per MEU): only peers with a fresh status are candidates, and
        // the mesh holds a connection to a peer exactly while it is up, so one lookup gives
        // both liveness and the RTT. Sorted by name, so order-sensitive placements are
        // deterministic.
        let statuses = read(&self.statuses);
        for (node, (status, at)) in statuses.iter() {
            if at.elapsed() > STATUS_STALE || !status.ready.contains(&info.hash) {
                continue;
            }
            let Some(conn) = self.mesh.connection(node) else {
                continue;
            };
            let rtt_us = conn.rtt().as_micros().min(u128::from(u64::MAX)) as u64;
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
                rtt_us,
            });
        }
    }

    fn execute(&self, node: &str, meu: Meu, info: &FunctionInfo, attempt: u32) -> RemoteFuture {
        let conn = node
            .parse::<NodeName>()
            .ok()
            .and_then(|n| self.mesh.connection(&n));
        let request = PeerRequest::Execute(RemoteMeu {
            request_id: meu.request_id.to_string(),
            function: meu.function.clone(),
            hash: info.hash,
            input: meu.input.to_vec(),
            items: meu.items.min(u32::MAX as usize) as u32,
            attempt,
        });
        let encoded = self.encode(&request);
        let limit = self.frame_limit;
        let node = node.to_owned();
        Box::pin(async move {
            let lost = |detail: String| {
                RemoteFailure::Lost(RuntimeError::PeerLost {
                    node: node.clone(),
                    detail,
                })
            };
            let Some(conn) = conn else {
                return Err(RemoteFailure::Refused(RuntimeError::PeerNotConnected(
                    node.clone(),
                )));
            };
            let encoded =
                encoded.map_err(|e| RemoteFailure::Failed(RuntimeError::Encode(e.to_string())))?;
            let answer = conn
                .request(&encoded)
                .await
                .map_err(|e| lost(e.to_string()))?;
            match tern_wire::decode::<PeerResponse>(&answer, limit) {
                Ok(PeerResponse::Executed(o)) => Ok(Outcome {
                    output: Bytes::from(o.output),
                    cold_start: o.cold_start,
                    meus: 1,
                    timings: o.timings,
                    node: o.node.into(),
                }),
                Ok(PeerResponse::Error(error)) => {
                    let retry_elsewhere = error.code.is_retryable();
                    let e = RuntimeError::Remote { node, error };
                    Err(if retry_elsewhere {
                        RemoteFailure::Refused(e)
                    } else {
                        RemoteFailure::Failed(e)
                    })
                }
                Ok(other) => Err(lost(format!("unexpected answer {other:?}"))),
                Err(e) => Err(lost(format!("bad answer: {e}"))),
            }
        })
    }
}

/// Publishes this node's status to every connected peer every [`STATUS_INTERVAL`].
async fn publish_status(link: Weak<ClusterLink>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut last_cpu = tern_actors::energy::process_cpu_time();
    let mut last_at = Instant::now();
    let mut last_lat = (0u64, 0u64);
    loop {
        tick.tick().await;
        let Some(link) = link.upgrade() else {
            return;
        };
        let Some(node) = link.node.upgrade() else {
            return;
        };
        seq += 1;
        let cpu = tern_actors::energy::process_cpu_time();
        let wall = last_at.elapsed().max(Duration::from_millis(1));
        let cpu_percent =
            (cpu.saturating_sub(last_cpu).as_secs_f64() / wall.as_secs_f64() * 100.0) as u32;
        (last_cpu, last_at) = (cpu, Instant::now());
        let lat = node.metrics().latency_totals();
        let (dn, dsum) = (
            lat.0.saturating_sub(last_lat.0),
            lat.1.saturating_sub(last_lat.1),
        );
        last_lat = lat;
        let recent = dsum.checked_div(dn).unwrap_or(0);
        let status = node.status(seq, cpu_percent, recent);
        // The SchedulerAgent describes this node with the same numbers (`local_view`).
        let m = node.metrics();
        m.status_cpu_percent
            .store(u64::from(status.cpu_percent), Relaxed);
        m.status_memory_bytes.store(status.memory_bytes, Relaxed);
        m.status_recent_mean_us
            .store(status.recent_mean_us, Relaxed);
        let status = PeerRequest::Status(status);
        let Ok(bytes) = link.encode(&status) else {
            continue;
        };
        for (peer, state) in link.mesh.members() {
            let Some(conn) = link.mesh.connection(&peer) else {
                continue;
            };
            if state != PeerState::Up {
                continue;
            }
            let bytes = bytes.clone();
            // Each send in its own task: a frozen peer must not delay the others' statuses.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(STATUS_INTERVAL * 5, conn.request(&bytes)).await;
            });
        }
    }
}

/// Keeps the peer gauge and the rejected-handshake counter current, drops the status of lost
/// peers, and runs anti-entropy with every peer whose link comes up.
async fn watch_membership(link: Weak<ClusterLink>) {
    let Some(mut events) = link.upgrade().map(|l| l.mesh.subscribe()) else {
        return;
    };
    // Peers that were up before we subscribed are synced too.
    let initial: Vec<NodeName> = link
        .upgrade()
        .map(|l| {
            l.mesh
                .members()
                .into_iter()
                .filter(|(_, s)| *s == PeerState::Up)
                .map(|(n, _)| n)
                .collect()
        })
        .unwrap_or_default();
    for peer in initial {
        spawn_sync(&link, peer);
    }
    loop {
        let event = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
        let Some(l) = link.upgrade() else { return };
        if let Some(node) = l.node.upgrade() {
            let m = node.metrics();
            let up = l
                .mesh
                .members()
                .values()
                .filter(|s| **s == PeerState::Up)
                .count();
            m.peers_up.store(up as i64, Relaxed);
            m.rejected_handshakes
                .store(l.mesh.rejected_handshakes(), Relaxed);
            if let Some(sessions) = &l.sessions {
                m.rejected_session_streams
                    .store(sessions.rejected_streams(), Relaxed);
            }
        }
        if let Ok(Ok(event)) = &event {
            write(&l.state_since).insert(event.node.clone(), event.at);
        }
        match event {
            Ok(Ok(event)) => match event.state {
                PeerState::Up => spawn_sync(&link, event.node),
                PeerState::Down => {
                    write(&l.statuses).remove(&event.node);
                }
                PeerState::Joining => {}
            },
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
        }
    }
}

fn spawn_sync(link: &Weak<ClusterLink>, peer: NodeName) {
    let Some(l) = link.upgrade() else { return };
    // Counted from before the task starts until it ends however it ends, so there is no
    // moment where a reached peer's registry is neither pulled nor being pulled.
    let pulling = l.sync.pull_started();
    tokio::spawn(async move {
        let _pulling = pulling;
        match l.sync_registry(&peer).await {
            // Entries that failed to apply were logged; they will not become ready by
            // waiting, so they do not hold the node in "not synced".
            Ok(n) => {
                l.sync.pulled();
                tracing::info!(%peer, applied = n, "registry synced");
            }
            Err(e) => tracing::warn!(%peer, error = %e, "registry sync failed"),
        }
    });
}

/// Resident memory of this process (Linux `/proc/self/statm`), 0 when unknown.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
