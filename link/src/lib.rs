//! `tern-link`: the node's cluster link. Joins the QUIC mesh (tern-cluster), serves peers'
//! data-plane requests, publishes this node's status, replicates the registry, and implements
//! the SchedulerAgent's [`Remote`] seam (forwarding MEUs to peers). It reaches the node it
//! links only through [`LocalNode`], and is configured by a [`LinkConfig`].
//!
//! Every exchange is one request frame and one answer frame on a QUIC stream that carries
//! nothing else meanwhile ([`PeerRequest`] / [`PeerResponse`] in tern-wire; the stream is a
//! lane kept for later exchanges), so a module transfer never delays an invocation or a
//! status update.
//!
//! The decisions are pure and tested without a network: what the peers' statuses make of
//! the placement candidates and what a membership change asks for ([`peers`]), what a
//! forwarded MEU's answer means for failover ([`forward`]), when the node knows the
//! registry ([`RegistrySync`]). [`ClusterLink`] is the shell that feeds them events and
//! time over a [`PeerNet`]: the QUIC mesh in a node, the in-memory mesh ([`memory`]) in
//! deterministic tests. Time is tokio's clock, so tests run it paused.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tern_actors::remote::{Remote, RemoteFuture};
use tern_cluster::membership::BackoffConfig;
use tern_cluster::mesh::Handler;
use tern_cluster::{
    Endpoint, Mesh, MeshConfig, NodeName, PartSender, PeerState, SessionConfig, Sessions,
    TransportConfig, pki,
};
use tern_metrics::Metrics;
use tern_placement::NodeView;
use tern_runtime::{AnswerStream, Meu};
use tern_sync::poison::{lock, read, write};
use tern_tenancy::{Demand, Reading, TenantName};
use tern_wire::ApiError as PeerError;
use tern_wire::peer::{
    AcceptedKey, AsyncCopy, KeyedCall, KeyedResult, NodeStatus, PeerRequest, PeerResponse,
    RegistryEntry, RemoteMeu, TenancyRecords,
};
use tern_wire::{
    AnswerPart, ApiError, ErrorCode, FunctionInfo, InvocationId, InvocationRecord, ModuleHash,
};
use tokio::task::JoinHandle;

pub mod control;
pub mod forward;
pub mod key_home;
pub mod memory;
pub mod net;
pub mod outstanding;
pub mod peers;
mod registry_sync;

use control::{ControlConfig, ControlPlane, ControlSink, PeerChange};
pub use net::PeerNet;
pub use peers::MemberView;
use peers::{LoadMeter, MembershipAction, PeerTable};
pub use registry_sync::RegistrySync;

/// How often a node publishes its status to each peer ("a few times a second").
pub const STATUS_INTERVAL: Duration = Duration::from_millis(200);
/// A peer whose last status is older than this is not offered to placement.
const STATUS_STALE: Duration = Duration::from_secs(2);
/// With the control plane on, how long a peer whose mesh link came up has to bring its
/// session up before its registry is pulled over a lane anyway.
const SESSION_WAIT: Duration = Duration::from_secs(3);
/// A forwarded MEU is answered by the end of its function's time limit (counted from its
/// admission on the entry node) plus this, for the answer to travel back; past it the
/// exchange is dropped (the peer cancels the guest) and the answer is a timeout.
pub const FORWARD_GRACE: Duration = Duration::from_millis(500);
/// Bound on a status or registry exchange (forwarded MEUs are bounded by the function's own
/// time limit instead).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a copy of async work reaching its keeper (the accept's 202 waits for it).
/// Short: while a dead keeper is not yet declared down, every accept waits this long.
const REPLICATE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound on asking the peers for an async invocation's record (a read waits for it).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A boxed future borrowing its receiver, for the object-safe [`LocalNode`].
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything that can go wrong starting the link or talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The mesh: identity, endpoint, connection, a frame on the QUIC transport.
    #[error(transparent)]
    Cluster(#[from] tern_cluster::ClusterError),
    /// There is no connection to the peer: nothing was sent.
    #[error("peer {0} is not connected")]
    NotConnected(NodeName),
    /// The peer did not answer within the exchange's bound.
    #[error("peer {0} did not answer in time")]
    TimedOut(NodeName),
    /// The link broke while the exchange was under way (it may have been served).
    #[error("the link to {peer} was lost: {detail}")]
    Lost { peer: NodeName, detail: String },
    /// The peer's answer is not one this request can have, or does not check out.
    #[error("peer {peer} answered badly: {detail}")]
    BadAnswer { peer: NodeName, detail: String },
    /// The peer answered with an error.
    #[error("peer {peer} refused: {}", .error.message)]
    Refused { peer: NodeName, error: ApiError },
    /// A message to a peer could not be encoded (larger than the frame limit, say).
    #[error("cannot encode a peer message: {0}")]
    Encode(tern_wire::WireError),
    /// The in-memory mesh has no socket address.
    #[error("an in-memory mesh has no socket address")]
    NoSocket,
}

/// How the link joins the mesh.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub node_name: NodeName,
    /// Directory written by `tern cluster init` (`ca.pem`, `<node>.pem`, `<node>.key`).
    pub cluster_dir: PathBuf,
    /// UDP address of this node's mesh endpoint.
    pub listen: SocketAddr,
    /// A UDP socket already bound for the mesh endpoint (by a test, or inherited through
    /// socket activation), used instead of binding `listen`. Shared so that the config stays
    /// `Clone`; the endpoint runs on a duplicate of it.
    pub mesh_socket: Option<Arc<std::net::UdpSocket>>,
    pub peers: Vec<(NodeName, SocketAddr)>,
    /// Largest frame on the mesh (the largest body, module or output, plus headroom).
    pub frame_limit: usize,
    /// Bound on one forwarded MEU (the longest function time limit, plus headroom).
    pub request_timeout: Duration,
    /// How long a peer may spend loading a module before it runs a forwarded MEU, on top of
    /// the function's time limit (which a load does not count against): zero where modules
    /// are preheated, the compile bound where nodes compile on first use.
    pub load_allowance: Duration,
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
    /// `stream` takes the answer as it is written when the peer asked for it that way (else
    /// it is empty).
    fn execute_for_peer(
        &self,
        meu: RemoteMeu,
        stream: AnswerStream,
    ) -> LocalFuture<'_, PeerResponse>;
    /// This node's status as published to peers, with the measurements the link made.
    fn status(&self, seq: u64, cpu_percent: u32, recent_mean_us: u64) -> NodeStatus;
    fn metrics(&self) -> &Metrics;
    /// Every tenant entry and bearer-token record this node knows (hashes, never secrets).
    fn tenancy(&self) -> Result<TenancyRecords, PeerError>;
    /// Merges tenant entries (last writer wins) and token records (revocation wins) learnt
    /// from a peer; how many changed.
    fn apply_tenancy(&self, records: TenancyRecords) -> Result<usize, PeerError>;
    /// Keeps `origin`'s copy of an async invocation it accepted, durably, until `origin`
    /// releases it or it is taken over. A node that keeps none answers with an error.
    fn hold_copy<'a>(
        &'a self,
        _origin: &'a NodeName,
        _copy: AsyncCopy,
    ) -> LocalFuture<'a, Result<(), PeerError>> {
        Box::pin(async {
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "this node keeps no copies of async work",
            ))
        })
    }
    /// Drops the copies of these async invocations, if held.
    fn release_copies(&self, _ids: Vec<InvocationId>) -> Result<(), PeerError> {
        Ok(())
    }
    /// This node's record of an async invocation (its own, or a copy it holds).
    fn find_invocation(&self, _id: &InvocationId) -> Result<Option<InvocationRecord>, PeerError> {
        Ok(None)
    }
    /// The async invocation a peer accepted under idempotency key `scope` whose copy came
    /// here, if the key is still kept.
    fn find_keyed(&self, _scope: &str) -> Result<Option<AcceptedKey>, PeerError> {
        Ok(None)
    }
    /// Keeps the result of a sync keyed call `origin` ran as the key's home, for as long as
    /// this node keeps its own; a node that keeps none answers with an error.
    fn keep_result(&self, _origin: &NodeName, _kept: KeyedResult) -> Result<(), PeerError> {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "this node keeps no results of keyed calls",
        ))
    }
    /// The result of a sync keyed call kept here, if any; an error while this node is running
    /// that call itself (the asker must not run it too).
    fn kept_result(&self, _scope: &str) -> Result<Option<KeyedResult>, PeerError> {
        Ok(None)
    }
    /// Runs a keyed call sent by `peer` because this node is its key's home (see
    /// [`key_home`]): once per key, answering retries with that run. A node that runs none
    /// answers with an error.
    fn keyed_call(
        self: Arc<Self>,
        _peer: NodeName,
        _call: KeyedCall,
    ) -> LocalFuture<'static, PeerResponse> {
        Box::pin(async {
            PeerResponse::Error(ApiError::new(
                ErrorCode::Unavailable,
                "this node runs no keyed calls",
            ))
        })
    }
    /// How many peers are up now (called whenever the link refreshes its view, whether or not
    /// the number changed): cluster-wide limits are split over the members that are up.
    fn peers_up(&self, _up: usize) {}
    /// After each status this node publishes: every tenant's demand at the other members
    /// with a fresh status (summed), whether every other member up has published since the
    /// last call, and how many members are up with this one. Tenants' cluster-wide quotas
    /// are split by these.
    fn cluster_demand(
        &self,
        _others: HashMap<TenantName, Demand>,
        _reading: Reading,
        _members_up: usize,
    ) {
    }
}

/// How a link behaves, whatever mesh it runs over.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    pub node_name: NodeName,
    /// Largest frame on the mesh.
    pub frame_limit: usize,
    /// How long a member with peers waits to pull a registry before answering "not found".
    pub sync_grace: Duration,
    /// Whether any peer is configured (a node alone knows the registry from the start).
    pub has_peers: bool,
    /// See [`LinkConfig::load_allowance`].
    pub load_allowance: Duration,
}

/// Now, on tokio's clock: the real time in a node, the paused clock in tests.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub struct ClusterLink {
    name: NodeName,
    net: Box<dyn PeerNet>,
    node: Weak<dyn LocalNode>,
    /// Peers' statuses and membership ages: the pure core the shell feeds.
    peers: RwLock<PeerTable>,
    frame_limit: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// ractor_cluster sessions over the peer links (`ractor_sessions`).
    sessions: Option<Sessions>,
    /// The control plane over `sessions`: statuses, announcements and membership as ractor
    /// messages. Set once, right after the link starts, when sessions are on.
    control: OnceLock<ControlPlane>,
    /// Whether this node knows the cluster registry yet.
    sync: Arc<RegistrySync>,
    /// MEUs forwarded to each peer and not answered yet: a floor under its stale queue depth.
    outstanding: outstanding::Outstanding,
    /// See [`LinkConfig::load_allowance`].
    load_allowance: Duration,
}

impl ClusterLink {
    /// Joins the mesh as `c.node_name`, serving peers on behalf of `node`. The caller plugs
    /// the link into the scheduler (it is the [`Remote`]).
    pub async fn start(c: LinkConfig, node: Weak<dyn LocalNode>) -> Result<Arc<Self>, LinkError> {
        let name = c.node_name.clone();
        let identity = pki::load(&c.cluster_dir, &name)?;
        let transport = TransportConfig {
            max_frame: c.frame_limit,
            request_timeout: c.request_timeout,
            max_concurrent_streams: 4096,
            max_idle_lanes: c.idle_lanes,
            ..TransportConfig::default()
        };
        let endpoint = match &c.mesh_socket {
            Some(socket) => {
                let socket = socket
                    .try_clone()
                    .map_err(tern_cluster::ClusterError::Bind)?;
                Endpoint::from_socket(&identity, socket, transport)?
            }
            None => Endpoint::bind(&identity, c.listen, transport)?,
        };
        let seed = tern_placement::WarmAffinity::weight("mesh-seed", name.as_str());
        let sessions = if c.ractor_sessions {
            Some(Sessions::start(&name, SessionConfig::default()).await?)
        } else {
            None
        };
        let options = LinkOptions {
            node_name: name,
            frame_limit: c.frame_limit,
            sync_grace: c.sync_grace,
            has_peers: !c.peers.is_empty(),
            load_allowance: c.load_allowance,
        };
        let peers = c.peers;
        let peer_names = peers.iter().map(|(n, _)| n.clone()).collect();
        let mesh_sessions = sessions.clone();
        let link = Self::with_net(options, node, sessions, move |handler| {
            Box::new(Mesh::start_with_sessions(
                endpoint,
                MeshConfig {
                    peers,
                    backoff: BackoffConfig::default(),
                    seed,
                },
                handler,
                mesh_sessions,
            ))
        });
        if let Err(e) = link.start_control(peer_names).await {
            link.shutdown().await;
            return Err(e);
        }
        Ok(link)
    }

    /// Starts the control plane over the link's sessions, if it has sessions and peers: from
    /// then on statuses and announcements go to peers with a linked control plane as ractor
    /// casts, and session membership drives anti-entropy. A peer not linked yet (tickets are
    /// confirmed a few milliseconds after its session comes up) is reached over a lane.
    async fn start_control(self: &Arc<Self>, peers: Vec<NodeName>) -> Result<(), LinkError> {
        // A node without peers has nothing to control.
        let Some(sessions) = self.sessions.as_ref().filter(|_| !peers.is_empty()) else {
            return Ok(());
        };
        let sink = Arc::new(LinkSink(Arc::downgrade(self)));
        let control = ControlPlane::start(
            sessions,
            sink,
            ControlConfig {
                peers,
                ..ControlConfig::default()
            },
        )
        .await?;
        if let Err(control) = self.control.set(control) {
            control.stop().await;
        }
        Ok(())
    }

    /// The control plane, when sessions are on.
    pub fn control(&self) -> Option<&ControlPlane> {
        self.control.get()
    }

    /// A link over the mesh `net` builds from the handler that serves peers' requests: the
    /// QUIC mesh in [`ClusterLink::start`], an in-memory one ([`memory::MemoryNet::attach`])
    /// in tests. Starts the status publisher and the membership watcher.
    pub fn with_net(
        options: LinkOptions,
        node: Weak<dyn LocalNode>,
        sessions: Option<Sessions>,
        net: impl FnOnce(Handler) -> Box<dyn PeerNet>,
    ) -> Arc<Self> {
        let sync_deadline = now() + options.sync_grace;
        let link = Arc::new_cyclic(|weak: &Weak<ClusterLink>| {
            let handler_link = weak.clone();
            let handler: Handler = Arc::new(move |peer, bytes, parts| {
                let link = handler_link.clone();
                Box::pin(async move {
                    match link.upgrade() {
                        Some(link) => link.handle(peer, bytes, parts).await,
                        None => Vec::new(),
                    }
                })
            });
            ClusterLink {
                name: options.node_name.clone(),
                sync: Arc::new(RegistrySync::new(!options.has_peers, sync_deadline)),
                outstanding: outstanding::Outstanding::default(),
                net: net(handler),
                node,
                peers: RwLock::new(PeerTable::new(STATUS_STALE)),
                frame_limit: options.frame_limit,
                load_allowance: options.load_allowance,
                tasks: Mutex::default(),
                sessions,
                control: OnceLock::new(),
            }
        });
        // Every configured peer is away until it comes up: a copy of a peer's async work is
        // taken over only after the peer has been away long enough, seen here or not.
        write(&link.peers).expect(link.net.members().into_keys(), now());
        let publisher = tokio::spawn(publish_status(Arc::downgrade(&link)));
        let watcher = tokio::spawn(watch_membership(Arc::downgrade(&link)));
        lock(&link.tasks).extend([publisher, watcher]);
        link
    }

    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        self.net.local_addr()
    }

    /// Every configured peer with its state and last status.
    pub fn members(&self) -> Vec<MemberView> {
        read(&self.peers).members(self.net.members(), now(), |peer| {
            self.sessions.as_ref().map(|s| s.ready(peer).is_some())
        })
    }

    /// Stops the mesh (connections close; peers see this node leave at once) and the
    /// ractor_cluster NodeServer.
    pub async fn shutdown(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        if let Some(control) = self.control.get() {
            control.stop().await;
        }
        self.net.shutdown();
        if let Some(sessions) = &self.sessions {
            sessions.shutdown().await;
        }
    }

    /// Sends registry entries to every connected peer, in the background: as ractor casts to
    /// peers with a linked control plane, over a lane to the others. A peer that misses them
    /// (down, or the send fails) catches up by anti-entropy when its link or session comes up.
    pub fn announce(self: &Arc<Self>, entries: Vec<RegistryEntry>) {
        let link = self.clone();
        tokio::spawn(async move {
            let reached = match link.control.get() {
                Some(control) => match control.announce(&entries).await {
                    Ok(announced) => announced.peers,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot announce over the control plane");
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            for (peer, state) in link.net.members() {
                if state != PeerState::Up || reached.contains(&peer) {
                    continue;
                }
                let link = link.clone();
                let entries = entries.clone();
                tokio::spawn(async move {
                    match link
                        .small_exchange(&peer, PeerRequest::Announce(entries))
                        .await
                    {
                        Ok(PeerResponse::Ack) => {}
                        Ok(other) => {
                            tracing::warn!(%peer, ?other, "peer did not apply an announcement")
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "cannot announce to peer"),
                    }
                });
            }
        });
    }

    /// Sends tenant entries and token records (new, changed or revoked) to every connected
    /// peer over lanes, in the background. They change rarely; a peer that misses them pulls
    /// them with the registry when its link comes up again.
    pub fn announce_tenancy(self: &Arc<Self>, records: TenancyRecords) {
        for (peer, state) in self.net.members() {
            if state != PeerState::Up {
                continue;
            }
            let link = self.clone();
            let records = records.clone();
            tokio::spawn(async move {
                match link
                    .small_exchange(&peer, PeerRequest::AnnounceTenancy(records))
                    .await
                {
                    Ok(PeerResponse::Ack) => {}
                    Ok(other) => {
                        tracing::warn!(%peer, ?other, "peer did not store tenancy records")
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot send tenancy records to peer")
                    }
                }
            });
        }
    }

    /// The peer that keeps the copy of this node's async work: the first peer up after this
    /// node in name order, wrapping around (each node's next neighbour, so copies spread).
    pub fn keeper(&self) -> Option<NodeName> {
        let members = self.net.members();
        let up = members
            .iter()
            .filter(|(_, state)| **state == tern_cluster::PeerState::Up)
            .map(|(name, _)| name);
        let me = &self.name;
        up.clone()
            .find(|name| *name > me)
            .or_else(|| up.min())
            .cloned()
    }

    /// Sends a copy of an async invocation this node accepted to `keeper`, and waits until
    /// the keeper has it on disk.
    pub async fn replicate(&self, keeper: &NodeName, copy: AsyncCopy) -> Result<(), LinkError> {
        // Briefly: the caller's 202 waits for it, and a keeper that does not answer (paused,
        // not yet declared down) must not hold every accept for long.
        let copy = PeerRequest::Replicate(Box::new(copy));
        self.briefly_acked(keeper, &copy, "a copy").await
    }

    /// `request` to `peer`, answered [`PeerResponse::Ack`] within [`REPLICATE_TIMEOUT`].
    async fn briefly_acked(
        &self,
        peer: &NodeName,
        request: &PeerRequest,
        asked: &str,
    ) -> Result<(), LinkError> {
        let answer = self
            .exchange(peer, request, Some(REPLICATE_TIMEOUT))
            .await?;
        expect(peer, answer, asked, |answer| match answer {
            PeerResponse::Ack => Ok(()),
            other => Err(other),
        })
    }

    /// An async invocation this node accepted has finished: in the background, its keeper
    /// gets the finished record (the result's copy) and every other peer up drops any copy
    /// it holds (a keeper from before a membership change). A peer that misses it keeps its
    /// copy until the copy expires.
    pub fn settle(self: &Arc<Self>, finished: InvocationRecord) {
        let link = self.clone();
        tokio::spawn(async move {
            let keeper = link.keeper();
            let id = finished.id.clone();
            if let Some(keeper) = &keeper
                && let Err(e) = link
                    .replicate(
                        keeper,
                        AsyncCopy {
                            record: finished,
                            key: None,
                        },
                    )
                    .await
            {
                tracing::debug!(%keeper, %id, error = %e, "cannot copy a finished async result");
            }
            for (peer, state) in link.net.members() {
                if state != tern_cluster::PeerState::Up || Some(&peer) == keeper.as_ref() {
                    continue;
                }
                if let Err(e) = link
                    .small_exchange(&peer, PeerRequest::Release(vec![id.clone()]))
                    .await
                {
                    tracing::debug!(%peer, error = %e, "cannot release copies of async work");
                }
            }
        });
    }

    /// Asks every peer up, at once and within one bound, for its record of an async
    /// invocation. Of the records found, a finished one wins over a pending one (a keeper
    /// whose finished copy never arrived still holds the pending one), then the one with
    /// the most attempts.
    pub async fn lookup(self: &Arc<Self>, id: &InvocationId) -> Option<InvocationRecord> {
        let mut asks = self.ask_peers_up(PeerRequest::Lookup(id.clone()), CONTROL_TIMEOUT);
        let mut best: Option<InvocationRecord> = None;
        let gather = async {
            while let Some(answer) = asks.join_next().await {
                if let Ok((_, Ok(PeerResponse::Invocation(Some(record))))) = answer
                    && record.id == *id
                {
                    let record = *record;
                    let rank = |r: &InvocationRecord| {
                        (r.status != tern_wire::InvocationStatus::Pending, r.attempts)
                    };
                    if best.as_ref().is_none_or(|b| rank(&record) > rank(b)) {
                        best = Some(record);
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LOOKUP_TIMEOUT, gather).await;
        best
    }

    /// Asks every peer up, at once and within the bound [`ClusterLink::lookup`] has, for the
    /// async invocation accepted under idempotency key `scope` ([`key_home::scope`]) whose
    /// copy it kept: what a node that stands in for the key's home (see
    /// [`ClusterLink::stands_in_for_key_home`]) asks before it accepts the call as new. The
    /// first peer that knows the key answers for all (normally only the home's keeper does).
    pub async fn lookup_key(self: &Arc<Self>, scope: &str) -> Option<AcceptedKey> {
        let mut asks = self.ask_peers_up(PeerRequest::LookupKey(scope.to_owned()), CONTROL_TIMEOUT);
        let first = async {
            while let Some(answer) = asks.join_next().await {
                if let Ok((_, Ok(PeerResponse::KeyAccepted(Some(found))))) = answer {
                    return Some(found);
                }
            }
            None
        };
        tokio::time::timeout(LOOKUP_TIMEOUT, first)
            .await
            .ok()
            .flatten()
    }

    /// The home of the calls with idempotency key `scope` ([`key_home::scope`]) as this node
    /// sees the members now; `None` when it is this node.
    pub fn key_home(&self, scope: &str) -> Option<NodeName> {
        let members = self.net.members();
        let up = members
            .iter()
            .filter(|(_, state)| **state == tern_cluster::PeerState::Up)
            .map(|(name, _)| name);
        let home = key_home::home_among(scope, std::iter::once(&self.name).chain(up))?;
        (*home != self.name).then(|| home.clone())
    }

    /// Whether every configured member is up.
    pub fn all_members_up(&self) -> bool {
        self.net
            .members()
            .values()
            .all(|state| *state == tern_cluster::PeerState::Up)
    }

    /// The member that takes the calls of `scope` ([`key_home::scope`]) if this node, their
    /// home, goes away: the key's home among the other members up. `None` when none is up.
    pub fn key_successor(&self, scope: &str) -> Option<NodeName> {
        let members = self.net.members();
        let up = members
            .iter()
            .filter(|(_, state)| **state == tern_cluster::PeerState::Up)
            .map(|(name, _)| name);
        key_home::home_among(scope, up).cloned()
    }

    /// Gives `successor` ([`ClusterLink::key_successor`]) the result of a sync keyed call this
    /// node ran as the key's home, and waits until it is kept (briefly).
    pub async fn keep_result(
        &self,
        successor: &NodeName,
        kept: KeyedResult,
    ) -> Result<(), LinkError> {
        let kept = PeerRequest::KeepResult(Box::new(kept));
        self.briefly_acked(successor, &kept, "a kept result").await
    }

    /// A result of the sync keyed call `scope` ([`key_home::scope`]) that a peer keeps: every
    /// peer up is asked at once, the first to hold one answers. `Ok(None)` when every peer up
    /// answered that it holds none (or none is up); an error when none held one and some peer
    /// did not answer within a short bound, so the caller cannot tell whether the call ran.
    pub async fn lookup_result(
        self: &Arc<Self>,
        scope: &str,
    ) -> Result<Option<KeyedResult>, LinkError> {
        let request = PeerRequest::LookupResult(scope.to_owned());
        let mut asks = self.ask_peers_up(request, REPLICATE_TIMEOUT);
        let mut failed = None;
        while let Some(answer) = asks.join_next().await {
            let found = match answer {
                Ok((peer, answer)) => answer.and_then(|answer| {
                    expect(&peer, answer, "a result lookup", |answer| match answer {
                        // Only the result asked for: an answer for another key is no answer.
                        PeerResponse::KeptResult(found) => {
                            Ok(found.filter(|kept| kept.scope == scope).map(|kept| *kept))
                        }
                        other => Err(other),
                    })
                }),
                Err(e) => Err(LinkError::Lost {
                    peer: self.name.clone(),
                    detail: e.to_string(),
                }),
            };
            match found {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// `request` to every peer up at once, each exchange within `bound`: the answers as they
    /// come, with the peer that gave each.
    fn ask_peers_up(
        self: &Arc<Self>,
        request: PeerRequest,
        bound: Duration,
    ) -> tokio::task::JoinSet<(NodeName, Result<PeerResponse, LinkError>)> {
        let mut asks = tokio::task::JoinSet::new();
        for (peer, state) in self.net.members() {
            if state != tern_cluster::PeerState::Up {
                continue;
            }
            let (link, request) = (self.clone(), request.clone());
            asks.spawn(async move {
                let answer = link.exchange(&peer, &request, Some(bound)).await;
                (peer, answer)
            });
        }
        asks
    }

    /// Whether the home of `scope` among every member, up or not, is another node: then a
    /// node that takes the key's calls stands in for a home that is away, and the home may
    /// have accepted calls under the key already (their copies are with its keeper).
    pub fn stands_in_for_key_home(&self, scope: &str) -> bool {
        let members = self.net.members();
        let every = members.keys();
        key_home::home_among(scope, std::iter::once(&self.name).chain(every))
            .is_some_and(|home| *home != self.name)
    }

    /// Sends a keyed call to its home and waits for the answer, up to `bound` if set: the
    /// result, the id, or the home's error as [`LinkError::Refused`].
    pub async fn keyed(
        &self,
        home: &NodeName,
        call: KeyedCall,
        bound: Option<Duration>,
    ) -> Result<PeerResponse, LinkError> {
        let answer = self
            .exchange(home, &PeerRequest::Keyed(Box::new(call)), bound)
            .await?;
        expect(home, answer, "a keyed call", |answer| match answer {
            PeerResponse::Output(_) | PeerResponse::Accepted(_) => Ok(answer),
            other => Err(other),
        })
    }

    /// Whether a peer came back less than `window` ago: up again after this node had seen it
    /// up and then away. While apart (a partition, or the peer down), either side may have
    /// stood in for the other's idempotency keys.
    pub fn a_peer_returned_within(&self, window: Duration) -> bool {
        read(&self.peers).returned_within(window, now())
    }

    /// How long `peer` has been away (not up), or `None` while it is up.
    pub fn away_for(&self, peer: &NodeName) -> Option<Duration> {
        let up = self.net.members().get(peer) == Some(&tern_cluster::PeerState::Up);
        if up {
            return None;
        }
        read(&self.peers).away_for(peer, now())
    }

    /// Whether any peer has been away for `at_least` (one read of the mesh's view for all).
    pub fn any_away_for(&self, at_least: Duration) -> bool {
        let (peers, now) = (read(&self.peers), now());
        self.net.members().iter().any(|(peer, state)| {
            *state != tern_cluster::PeerState::Up
                && peers
                    .away_for(peer, now)
                    .is_some_and(|away| away >= at_least)
        })
    }

    /// Pulls `peer`'s tenant and token records and merges them; how many changed here.
    async fn sync_tenancy(&self, peer: &NodeName) -> Result<usize, LinkError> {
        let answer = self.small_exchange(peer, PeerRequest::Tenancy).await?;
        let records = expect(peer, answer, "a tenancy pull", |answer| match answer {
            PeerResponse::Tenancy(records) => Ok(records),
            other => Err(other),
        })?;
        let Some(node) = self.node.upgrade() else {
            return Ok(0);
        };
        node.apply_tenancy(records)
            .map_err(|error| LinkError::Refused {
                peer: peer.clone(),
                error,
            })
    }

    /// The bytes of module `hash`, from `peer`, checked against the hash. Unbounded in time:
    /// a large module on a slow link takes what it takes (the connection's idle timeout still
    /// catches a dead peer).
    pub async fn fetch_module(
        &self,
        peer: &NodeName,
        hash: &ModuleHash,
    ) -> Result<Bytes, LinkError> {
        let answer = self
            .exchange(peer, &PeerRequest::FetchModule(*hash), None)
            .await?;
        let bytes = expect(peer, answer, "a module fetch", |answer| match answer {
            PeerResponse::Module(bytes) => Ok(bytes),
            other => Err(other),
        })?;
        let got = tern_runtime::Runtime::module_hash(&bytes);
        if got != *hash {
            return Err(LinkError::BadAnswer {
                peer: peer.clone(),
                detail: format!("sent module {got} for {hash}"),
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// Pulls `peer`'s registry and applies what is newer (anti-entropy when a link comes up,
    /// which also covers a node that restarted or missed announcements).
    async fn sync_registry(&self, peer: &NodeName) -> Result<usize, LinkError> {
        let answer = self.small_exchange(peer, PeerRequest::Registry).await?;
        let entries = expect(peer, answer, "a registry pull", |answer| match answer {
            PeerResponse::Registry(entries) => Ok(entries),
            other => Err(other),
        })?;
        let Some(node) = self.node.upgrade() else {
            return Ok(0);
        };
        let mut applied = 0;
        let mut pending = entries;
        // An entry can fail for a passing reason (its module's fetch timed out, the compile
        // pool was full): tried again after a short pause, so the node does not count itself
        // synced while missing a function it could have had. One refused for good (an invalid
        // module, a local limit) or that still fails is logged and does not hold the node
        // back any longer.
        for (attempt, pause) in SYNC_RETRY_PAUSES.iter().map(Some).chain([None]).enumerate() {
            let mut failed = Vec::new();
            for entry in pending {
                match node.apply_entry(entry.clone(), peer).await {
                    Ok(true) => applied += 1,
                    Ok(false) => {}
                    Err(e) if pause.is_some() && may_pass(&e) => {
                        tracing::debug!(%peer, attempt, error = %e, "registry entry not applied yet");
                        failed.push(entry);
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "cannot apply a registry entry"),
                }
            }
            match pause {
                Some(pause) if !failed.is_empty() => tokio::time::sleep(*pause).await,
                _ => break,
            }
            pending = failed;
        }
        Ok(applied)
    }

    /// A small request with a short bound.
    async fn small_exchange(
        &self,
        peer: &NodeName,
        req: PeerRequest,
    ) -> Result<PeerResponse, LinkError> {
        self.exchange(peer, &req, Some(CONTROL_TIMEOUT)).await
    }

    /// One request to `peer` on a lane of its own and its decoded answer, within `bound` if set.
    async fn exchange(
        &self,
        peer: &NodeName,
        req: &PeerRequest,
        bound: Option<Duration>,
    ) -> Result<PeerResponse, LinkError> {
        let bytes = self.encode(req)?;
        let exchange = self
            .net
            .request(peer, bytes)
            .ok_or_else(|| LinkError::NotConnected(peer.clone()))?;
        let answer = match bound {
            Some(bound) => tokio::time::timeout(bound, exchange)
                .await
                .map_err(|_| LinkError::TimedOut(peer.clone()))??,
            None => exchange.await?,
        };
        tern_wire::decode(&answer, self.frame_limit).map_err(|e| LinkError::BadAnswer {
            peer: peer.clone(),
            detail: e.to_string(),
        })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, LinkError> {
        tern_wire::encode(value, self.frame_limit).map_err(LinkError::Encode)
    }

    /// Runs a peer's MEU whose answer the peer takes as it is written: each part of it goes
    /// to `parts`, encoded, as the run makes it, and all of them before the answer. A part
    /// that cannot be encoded within the frame limit fails the run (the peer must not get an
    /// answer with a hole in it).
    async fn execute_streamed(
        &self,
        node: &dyn LocalNode,
        meu: RemoteMeu,
        parts: PartSender,
    ) -> PeerResponse {
        let (stream, mut written) = AnswerStream::new();
        let run = node.execute_for_peer(meu, stream);
        tokio::pin!(run);
        let pass = |part: &AnswerPart| match tern_wire::encode(part, self.frame_limit) {
            Ok(bytes) => {
                // A peer that gave up takes nothing more; the run is dropped with the stream.
                let _ = parts.send(bytes);
                Ok(())
            }
            Err(e) => Err(PeerResponse::Error(ApiError::new(
                ErrorCode::Internal,
                format!("a part of the answer cannot be sent: {e}"),
            ))),
        };
        // Whether the run still holds the sending end.
        let mut open = true;
        let response = loop {
            tokio::select! {
                biased;
                part = written.recv(), if open => match part {
                    Some(part) => {
                        if let Err(failed) = pass(&part) {
                            return failed;
                        }
                    }
                    None => open = false,
                },
                response = &mut run => break response,
            }
        };
        // The parts sent before the run ended go before its answer.
        while let Ok(part) = written.try_recv() {
            if let Err(failed) = pass(&part) {
                return failed;
            }
        }
        response
    }

    /// Answers one data-plane request from `peer`. Never panics on what a peer sends; every
    /// failure is an `Error` answer.
    /// `parts` is there when the peer takes the answer of an MEU as it is written.
    async fn handle(&self, peer: NodeName, bytes: Vec<u8>, parts: Option<PartSender>) -> Vec<u8> {
        let response = match tern_wire::decode::<PeerRequest>(&bytes, self.frame_limit) {
            Ok(req) => self.serve(peer, req, parts).await,
            Err(e) => PeerResponse::Error(ApiError::new(ErrorCode::InvalidRequest, e.to_string())),
        };
        tern_wire::encode(&response, self.frame_limit).unwrap_or_else(|e| {
            let fallback = PeerResponse::Error(ApiError::new(ErrorCode::Internal, e.to_string()));
            tern_wire::encode(&fallback, self.frame_limit).unwrap_or_default()
        })
    }

    async fn serve(
        &self,
        peer: NodeName,
        req: PeerRequest,
        parts: Option<PartSender>,
    ) -> PeerResponse {
        let Some(node) = self.node.upgrade() else {
            return PeerResponse::Error(ApiError::new(ErrorCode::Unavailable, "node stopping"));
        };
        let fail = PeerResponse::Error;
        match req {
            PeerRequest::Status(status) => {
                node.metrics().statuses_via_lane.fetch_add(1, Relaxed);
                // Keyed by the verified peer name, whatever the status claims.
                write(&self.peers).on_status(peer, status, now());
                PeerResponse::Ack
            }
            PeerRequest::Announce(entries) => {
                node.metrics().announcements_via_lane.fetch_add(1, Relaxed);
                // Applied in a task of its own: a requester that gives up resets the lane
                // and this handler is dropped, which must not stop an entry between being
                // stored and being installed.
                let applying = tokio::spawn(async move {
                    for entry in entries {
                        node.apply_entry(entry, &peer).await?;
                    }
                    Ok::<(), PeerError>(())
                });
                acked(applying.await, "applying an announcement")
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
            PeerRequest::Execute(meu) => match parts {
                None => node.execute_for_peer(meu, AnswerStream::default()).await,
                Some(parts) => self.execute_streamed(&*node, meu, parts).await,
            },
            PeerRequest::AnnounceTenancy(records) => match node.apply_tenancy(records) {
                Ok(_) => PeerResponse::Ack,
                Err(e) => fail(e),
            },
            PeerRequest::Tenancy => match node.tenancy() {
                Ok(records) => PeerResponse::Tenancy(records),
                Err(e) => fail(e),
            },
            PeerRequest::Replicate(copy) => {
                // In a task of its own, like an announcement: a sender that gives up must not
                // stop a copy between its write and its flush.
                let holding = tokio::spawn(async move { node.hold_copy(&peer, *copy).await });
                acked(holding.await, "keeping a copy")
            }
            PeerRequest::Release(ids) => match node.release_copies(ids) {
                Ok(()) => PeerResponse::Ack,
                Err(e) => fail(e),
            },
            PeerRequest::Lookup(id) => match node.find_invocation(&id) {
                Ok(record) => PeerResponse::Invocation(record.map(Box::new)),
                Err(e) => fail(e),
            },
            PeerRequest::LookupKey(scope) => match node.find_keyed(&scope) {
                Ok(found) => PeerResponse::KeyAccepted(found),
                Err(e) => fail(e),
            },
            PeerRequest::Keyed(call) => node.keyed_call(peer, *call).await,
            PeerRequest::KeepResult(kept) => match node.keep_result(&peer, *kept) {
                Ok(()) => PeerResponse::Ack,
                Err(e) => fail(e),
            },
            PeerRequest::LookupResult(scope) => match node.kept_result(&scope) {
                Ok(kept) => PeerResponse::KeptResult(kept.map(Box::new)),
                Err(e) => fail(e),
            },
        }
    }
}

impl Remote for ClusterLink {
    fn registry_synced(&self) -> bool {
        self.sync.is_synced(now())
    }

    fn candidates(&self, info: &FunctionInfo, out: &mut Vec<NodeView>) {
        // On the hot path (once per MEU): the mesh holds a connection to a peer exactly
        // while it is up, so one lookup gives both liveness and the RTT.
        let first = out.len();
        read(&self.peers).candidates(info, now(), |peer| self.net.rtt(peer), out);
        self.outstanding.apply(&mut out[first..]);
    }

    fn forwarding(&self) -> usize {
        self.outstanding.total()
    }

    fn reserve(&self, node: &str) -> Option<tern_actors::remote::Reservation> {
        Some(Box::new(self.outstanding.begin(node)))
    }

    fn execute(&self, node: &str, meu: Meu, info: &FunctionInfo, attempt: u32) -> RemoteFuture {
        let request = PeerRequest::Execute(forward::remote_meu(&meu, info, attempt));
        let limit = self.frame_limit;
        // A caller that takes the answer as it is written gets it so from the peer too: the
        // parts arrive on `part_frames`, the relay passes them on. Taken only once the
        // request is on its way, and given back if the peer fails before any part went on,
        // so the run placed next can still stream.
        let (part_frames, mut arriving) = tokio::sync::mpsc::unbounded_channel();
        let mut relay = None;
        let exchange = match (node.parse::<NodeName>(), self.encode(&request)) {
            (Ok(peer), Ok(frame)) => match meu.stream.is_open() {
                true => self
                    .net
                    .request_streamed(&peer, frame, part_frames)
                    .inspect(|_| {
                        // The whole answer would have had to fit one frame.
                        relay = meu
                            .stream
                            .take()
                            .map(|caller| forward::Relay::new(node, caller, limit, limit));
                    }),
                false => self.net.request(&peer, frame),
            }
            .ok_or(LinkError::NotConnected(peer)),
            (Err(e), _) => Err(LinkError::Cluster(e)),
            (_, Err(e)) => Err(e),
        };
        let stream = meu.stream.clone();
        let local = self.node.clone();
        let sent = std::time::Instant::now();
        let in_flight = self.outstanding.begin(node);
        let node = node.to_owned();
        let timeout_ms = info.timeout_ms;
        let answer_by = meu.accepted_at
            + Duration::from_millis(timeout_ms.into())
            + FORWARD_GRACE
            + self.load_allowance;
        Box::pin(async move {
            // Counted until the answer, a failure or the caller dropping this future.
            let _in_flight = in_flight;
            let answer = match exchange {
                Ok(exchange) => match tokio::time::timeout_at(
                    answer_by.into(),
                    relayed(exchange, &mut arriving, relay.as_mut()),
                )
                .await
                {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(tern_actors::remote::RemoteFailure::Failed(
                            tern_actors::Error::Runtime(tern_runtime::Error::Timeout {
                                timeout_ms,
                            }),
                        ));
                    }
                },
                Err(LinkError::Encode(e)) => {
                    return Err(tern_actors::remote::RemoteFailure::Failed(
                        tern_actors::Error::Encode(e.to_string()),
                    ));
                }
                Err(e) => Err(e),
            };
            let classified = forward::classify(&node, answer, limit);
            let (outcome, peer) = match relay {
                Some(relay) => relay.settle(&node, classified, &stream),
                None => classified,
            }?;
            if let Some(local) = local.upgrade() {
                let m = local.metrics();
                m.forward_time.observe_us(sent.elapsed().as_micros() as u64);
                m.forward_peer_time.observe_us(peer.as_micros() as u64);
            }
            Ok(outcome)
        })
    }
}

/// Waits for a forwarded MEU's answer, passing each part that arrives before it to `relay`
/// (parts of a whole answer never come).
async fn relayed(
    exchange: net::NetFuture,
    arriving: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    relay: Option<&mut forward::Relay>,
) -> Result<Vec<u8>, LinkError> {
    let Some(relay) = relay else {
        return exchange.await;
    };
    tokio::pin!(exchange);
    let answer = loop {
        tokio::select! {
            biased;
            Some(frame) = arriving.recv() => {
                relay.pass(&frame);
                if relay.is_broken() {
                    // The relay's verdict is the answer (`Relay::settle`); dropping the
                    // exchange resets the stream, so the peer stops the run.
                    return Ok(Vec::new());
                }
            }
            answer = &mut exchange => break answer,
        }
    };
    // The parts that came with the answer go on before it.
    while let Ok(frame) = arriving.try_recv() {
        relay.pass(&frame);
    }
    answer
}

/// Publishes this node's status to every connected peer every [`STATUS_INTERVAL`].
async fn publish_status(link: Weak<ClusterLink>) {
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut last_reading = None;
    let mut meter = LoadMeter::new(tern_actors::energy::process_cpu_time(), now(), (0, 0));
    loop {
        tick.tick().await;
        let Some(link) = link.upgrade() else {
            return;
        };
        let Some(node) = link.node.upgrade() else {
            return;
        };
        seq += 1;
        let load = meter.read(
            tern_actors::energy::process_cpu_time(),
            now(),
            node.metrics().latency_totals(),
        );
        let mut status = node.status(seq, load.cpu_percent, load.recent_mean_us);
        // What runs or waits here: MEUs forwarded to peers hold their permits here too. The
        // capacity shrinks by as much, so the headroom peers see (cap − depth) is still this
        // node's free admission permits.
        let forwarding = u32::try_from(link.outstanding.total()).unwrap_or(u32::MAX);
        status.queue_depth = status.queue_depth.saturating_sub(forwarding);
        status.queue_cap = status.queue_cap.saturating_sub(forwarding);
        let at = now();
        let (others, heard) = {
            let peers = read(&link.peers);
            (peers.tenant_demand(at), peers.heard_since(last_reading, at))
        };
        let up = up_count(&link);
        let reading = if heard >= up {
            Reading::Complete
        } else {
            Reading::Partial
        };
        last_reading = Some(at);
        node.cluster_demand(others, reading, up + 1);
        // The SchedulerAgent describes this node with the same numbers (`local_view`).
        let m = node.metrics();
        m.status_cpu_percent
            .store(u64::from(status.cpu_percent), Relaxed);
        m.status_memory_bytes.store(status.memory_bytes, Relaxed);
        m.status_recent_mean_us
            .store(status.recent_mean_us, Relaxed);
        // Casts to peers with a linked control plane, a lane request to the others.
        let reached = match link.control.get() {
            Some(control) => control.publish_status(&status).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot publish a status over the control plane");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let mut frame = None;
        for (peer, state) in link.net.members() {
            if state != PeerState::Up || reached.contains(&peer) {
                continue;
            }
            if frame.is_none() {
                match link.encode(&PeerRequest::Status(status.clone())) {
                    Ok(bytes) => frame = Some(bytes),
                    Err(_) => break,
                }
            }
            let Some(bytes) = frame.clone() else { break };
            let Some(exchange) = link.net.request(&peer, bytes) else {
                continue;
            };
            // Each send in its own task: a frozen peer must not delay the others' statuses.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(STATUS_INTERVAL * 5, exchange).await;
            });
        }
    }
}

/// Keeps the peer gauge and the rejected-handshake counter current, drops the status of lost
/// peers, and runs anti-entropy with every peer whose link comes up.
async fn watch_membership(link: Weak<ClusterLink>) {
    let Some(mut events) = link.upgrade().map(|l| l.net.subscribe()) else {
        return;
    };
    // Peers that were up before we subscribed are synced too.
    let initial: Vec<NodeName> = link
        .upgrade()
        .map(|l| {
            l.net
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
        // Refreshed before each wait, not after it: peers that came up before this task
        // subscribed send no event, and the gauge must not wait for the timeout to count them.
        match link.upgrade() {
            Some(l) => {
                refresh_link_gauges(&l);
                write(&l.peers).reconcile(&l.net.members(), now());
            }
            None => return,
        }
        let event = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
        let Some(l) = link.upgrade() else { return };
        match event {
            Ok(Ok(event)) => {
                let action = write(&l.peers).on_membership(event.node, event.state, event.at);
                if let MembershipAction::PullRegistry(peer) = action {
                    if l.control.get().is_some() {
                        spawn_sync_unless_session(&link, peer);
                    } else {
                        spawn_sync(&link, peer);
                    }
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                write(&l.peers).events_missed(now());
            }
            Err(_) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
        }
    }
}

/// Whether a registry entry that failed to apply may succeed if applied again: the node was
/// busy or unavailable, or something internal (a module fetch, store I/O) or a time bound
/// failed. An invalid module, a quota or any other answer about the entry itself would come
/// back the same.
fn may_pass(e: &PeerError) -> bool {
    e.code.is_retryable()
        || matches!(
            e.code,
            ErrorCode::Internal | ErrorCode::Timeout | ErrorCode::CompileTimeout
        )
}

/// Pauses before applying again the entries of a registry pull that failed (then once more
/// without a retry).
const SYNC_RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(100), Duration::from_millis(400)];

/// The answer to a request done in a task of its own (`what` it did, for a task that died).
fn acked(
    joined: Result<Result<(), PeerError>, tokio::task::JoinError>,
    what: &str,
) -> PeerResponse {
    match joined {
        Ok(Ok(())) => PeerResponse::Ack,
        Ok(Err(e)) => PeerResponse::Error(e),
        Err(e) => PeerResponse::Error(ApiError::new(
            ErrorCode::Internal,
            format!("{what} failed: {e}"),
        )),
    }
}

/// What a peer answered, as the variant that was asked for (`pick` returns the answer back
/// when it is another variant): a peer's `Error` becomes [`LinkError::Refused`], any other
/// variant [`LinkError::BadAnswer`] naming what was `asked`.
fn expect<T>(
    peer: &NodeName,
    answer: PeerResponse,
    asked: &str,
    pick: impl FnOnce(PeerResponse) -> Result<T, PeerResponse>,
) -> Result<T, LinkError> {
    match pick(answer) {
        Ok(value) => Ok(value),
        Err(PeerResponse::Error(error)) => Err(LinkError::Refused {
            peer: peer.clone(),
            error,
        }),
        Err(other) => Err(LinkError::BadAnswer {
            peer: peer.clone(),
            detail: format!("answered {asked} with {other:?}"),
        }),
    }
}

/// How many peers are up.
fn up_count(l: &ClusterLink) -> usize {
    l.net
        .members()
        .values()
        .filter(|s| **s == PeerState::Up)
        .count()
}

/// Copies the link's membership and refusal counts into the node's metrics.
fn refresh_link_gauges(l: &ClusterLink) {
    if let Some(node) = l.node.upgrade() {
        let m = node.metrics();
        let up = up_count(l);
        m.peers_up.store(up as i64, Relaxed);
        node.peers_up(up);
        m.rejected_handshakes
            .store(l.net.rejected_handshakes(), Relaxed);
        if let Some(sessions) = &l.sessions {
            m.rejected_session_streams
                .store(sessions.rejected_streams(), Relaxed);
        }
        if let Some(control) = l.control.get() {
            m.control_refused.store(control.counters().refused, Relaxed);
        }
    }
}

fn spawn_sync(link: &Weak<ClusterLink>, peer: NodeName) {
    let Some(l) = link.upgrade() else { return };
    // Counted from before the task starts until it ends however it ends, so there is no
    // moment where a reached peer's registry is neither pulled nor being pulled.
    let pulling = l.sync.pull_started();
    tokio::spawn(async move {
        match l.sync_registry(&peer).await {
            // Entries that failed to apply were tried again, then logged; one that still
            // fails will not become ready by waiting, so it does not hold the node in "not
            // synced".
            Ok(n) => {
                l.sync.pulled();
                tracing::info!(%peer, applied = n, "registry synced");
            }
            Err(e) => tracing::warn!(%peer, error = %e, "registry sync failed"),
        }
        drop(pulling);
        // Tenants and tokens come with the registry; they do not hold the node in "not
        // synced" (a token a node has not heard of yet is refused, never wrongly accepted).
        match l.sync_tenancy(&peer).await {
            Ok(n) => tracing::debug!(%peer, changed = n, "tenancy records synced"),
            Err(e) => tracing::warn!(%peer, error = %e, "tenancy sync failed"),
        }
    });
}

/// With the control plane on, a session coming up triggers the registry pull
/// ([`LinkSink::on_membership`]) and a mesh link coming up does not, so one link-up is one
/// pull (a session that fails is closed with its connection, which is dialled again). As a
/// safety net, a link that is up [`SESSION_WAIT`] later without a session is pulled from over
/// a lane all the same. Counted as a pull under way meanwhile, so the sync grace does not end
/// in between.
fn spawn_sync_unless_session(link: &Weak<ClusterLink>, peer: NodeName) {
    let Some(l) = link.upgrade() else { return };
    let expecting = l.sync.pull_started();
    let link = link.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SESSION_WAIT).await;
        let Some(l) = link.upgrade() else { return };
        let session_up = l
            .sessions
            .as_ref()
            .is_some_and(|s| s.ready(&peer).is_some());
        if !session_up && l.net.members().get(&peer) == Some(&PeerState::Up) {
            spawn_sync(&link, peer);
        }
        drop(expecting);
    });
}

/// What the control plane delivers, applied to the link: statuses into the peer table,
/// announced entries into the node, session membership into anti-entropy.
struct LinkSink(Weak<ClusterLink>);

impl ControlSink for LinkSink {
    fn on_status(&self, peer: NodeName, status: NodeStatus) {
        let Some(link) = self.0.upgrade() else { return };
        if let Some(node) = link.node.upgrade() {
            node.metrics().statuses_via_session.fetch_add(1, Relaxed);
        }
        write(&link.peers).on_status(peer, status, now());
    }

    fn on_announce(&self, peer: NodeName, entries: Vec<RegistryEntry>) -> LocalFuture<'_, ()> {
        Box::pin(async move {
            let Some(node) = self.0.upgrade().and_then(|l| l.node.upgrade()) else {
                return;
            };
            node.metrics()
                .announcements_via_session
                .fetch_add(1, Relaxed);
            for entry in entries {
                if let Err(e) = node.apply_entry(entry, &peer).await {
                    tracing::warn!(%peer, error = %e, "cannot apply an announced registry entry");
                }
            }
        })
    }

    fn on_membership(&self, peer: NodeName, change: PeerChange) {
        match change {
            // Casts sent while the session was down are lost: pull what they carried.
            PeerChange::Up => spawn_sync(&self.0, peer),
            PeerChange::Down => {
                if let Some(link) = self.0.upgrade() {
                    write(&link.peers).forget_status(&peer);
                }
            }
        }
    }
}

/// Resident memory of this process (Linux `/proc/self/statm`), 0 when unknown.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
