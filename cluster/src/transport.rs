//! One QUIC endpoint per node, mutual TLS from the cluster CA, and the stream protocol.
//!
//! Connection setup:
//! 1. QUIC + TLS 1.3 handshake. The server requires a client certificate chained to the
//!    cluster CA; the client verifies the server's certificate against the CA for the server
//!    name `<peer>.node.tern`. aws-lc-rs is passed explicitly everywhere (ARCHITECTURE.md §5).
//! 2. Hello: the dialler opens the first bidirectional stream with kind [`KIND_HELLO`] and one
//!    frame holding the name it claims; the acceptor checks that the client certificate is
//!    for that name and answers with its own name. On any mismatch the connection is closed
//!    with [`codes::IDENTITY`]. A valid certificate alone proves membership of the cluster, not
//!    which node you are: without this check an impostor could take over another node's
//!    session (ARCHITECTURE.md §5). Only connections that passed it leave this module, so
//!    only they can ever produce a membership change.
//!
//! Streams: the first byte of every later bidirectional stream is its kind. [`KIND_DATA`]
//! carries length-prefixed frames (tern-wire framing), one request then its answer, as many
//! times as the requester likes: [`Connection::request`] keeps such streams open as lanes
//! and reuses them, because opening and closing a stream per request cost about four extra
//! datagrams (stream credit and the ACKs it elicits), each waking the peer process. An
//! oversized or late frame is refused by stopping and resetting that stream only; the
//! connection and its other streams carry on. [`KIND_RACTOR`] streams carry a ractor_cluster
//! session (see `session.rs`): `serve` hands them, unread past the kind byte, to whoever
//! claimed them with [`Connection::claim_session_streams`]; on a connection nobody claimed
//! them on they are refused like an unknown kind.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, RecvStream, SendStream, VarInt};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tern_wire::frame::HEADER_LEN;
use tern_wire::{FrameDecoder, WireError, encode_frame};
use tokio::sync::{Mutex, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use crate::pki::check_cert_name;
use crate::{ClusterError, NodeIdentity, NodeName};

/// First byte of the hello stream, the first stream a dialler opens.
pub const KIND_HELLO: u8 = 0x00;
/// A ractor_cluster session stream (`session.rs`); refused unless claimed on the connection.
pub const KIND_RACTOR: u8 = 0x01;
/// Data-plane request/response: a request frame, then its answer, repeated until the
/// requester finishes the stream.
pub const KIND_DATA: u8 = 0x02;

/// ALPN protocol id; a peer speaking anything else fails the handshake.
/// ALPN of the mesh protocol.
pub const ALPN: &[u8] = b"tern-mesh/1";
/// A hello frame holds a node name (≤ 64 bytes); anything bigger is hostile.
const MAX_HELLO: usize = 256;
/// Largest chunk read from a stream at once; bounds how far past a frame limit we read.
const READ_CHUNK: usize = 64 * 1024;

/// QUIC application error codes used when closing connections or refusing streams.
pub mod codes {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate is not for the name it claims, or the hello was malformed.
    pub const IDENTITY: u32 = 0x10;
    /// A frame was larger than the receiver's limit.
    pub const FRAME_TOO_LARGE: u32 = 0x20;
    /// The stream kind byte is unknown or not supported yet.
    pub const UNSUPPORTED_KIND: u32 = 0x21;
    /// The request did not arrive in time.
    pub const TIMEOUT: u32 = 0x22;
    /// The stream ended early or carried garbage.
    pub const PROTOCOL: u32 = 0x23;
    /// The requester gave up on the exchange (its own timeout, or it was cancelled).
    pub const CANCELLED: u32 = 0x24;
    /// Session stream refused: its first ractor_cluster frame is not a name message for the
    /// peer's verified node name (or the dialler's peer answered as someone else).
    pub const SESSION_IDENTITY: u32 = 0x30;
    /// Session stream refused: this connection already carries a session, or claims are
    /// backed up.
    pub const SESSION_EXISTS: u32 = 0x31;
    /// Session stream refused: the lower node name opens the session, so this side does not
    /// accept one from its peer.
    pub const SESSION_ROLE: u32 = 0x32;
    /// Connection closed because the ractor_cluster session on it ended while it was alive,
    /// so the peer redials and a fresh connection gets a fresh session.
    pub const SESSION_LOST: u32 = 0x33;
}

/// A ractor_cluster session stream accepted by [`Connection::serve`], the kind byte already read.
pub type SessionStream = (SendStream, RecvStream);

/// Where [`Connection::serve`] delivers session streams; shared by the clones of a connection.
#[derive(Debug, Default)]
struct SessionSink(std::sync::Mutex<Option<mpsc::Sender<SessionStream>>>);

/// Transport knobs. The defaults detect a dead or frozen peer in ≤ 1.5 s.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// No packet for this long closes the connection (quinn `max_idle_timeout`).
    pub idle_timeout: Duration,
    /// Keep-alives keep an idle but healthy connection from timing out; must be well below
    /// `idle_timeout` so a few lost ones are tolerated.
    pub keep_alive: Duration,
    /// Largest data-plane frame accepted or sent.
    pub max_frame: usize,
    /// Bound on handshake + hello, so a slow or silent dialler cannot hold a slot forever.
    pub handshake_timeout: Duration,
    /// Bound on one outgoing dial (handshake + hello). A dial started while the peer was
    /// unreachable waits for Initial retransmissions, which back off; past this bound a
    /// fresh dial (after the membership backoff) sends its first packet at once, so a healed
    /// partition reconnects within about 1.5 s. Long enough for a TLS handshake on a loaded
    /// node. Also capped by `handshake_timeout`.
    pub dial_timeout: Duration,
    /// RTT assumed before the first sample (quinn `initial_rtt`; QUIC's default is 333 ms).
    /// Cluster links are LAN or metro: 100 ms makes a lost Initial be resent after about
    /// 0.3 s and 1 s instead of 1 s and 3 s.
    pub initial_rtt: Duration,
    /// Bound on one request/response exchange, on both sides.
    pub request_timeout: Duration,
    /// Concurrent bidirectional streams a peer may open; bounds buffered frames per peer.
    pub max_concurrent_streams: u32,
    /// Idle data-plane streams ("lanes") kept open per connection for later requests. Idle
    /// lanes hold the peer's stream credit, so at most half of `max_concurrent_streams` are
    /// kept whatever this says. 0 opens and finishes a stream per request.
    pub max_idle_lanes: usize,
    /// Verified connections waiting for `accept`.
    pub accept_backlog: usize,
    /// Incoming handshakes (TLS + hello) in progress at once; more are refused at once, so a
    /// flood of connection attempts cannot hold unbounded memory for `handshake_timeout`.
    pub max_handshakes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_millis(250),
            max_frame: 16 << 20,
            handshake_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(2),
            initial_rtt: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
            max_concurrent_streams: 64,
            max_idle_lanes: 32,
            accept_backlog: 64,
            max_handshakes: 64,
        }
    }
}

impl TransportConfig {
    fn quinn(&self) -> Result<quinn::TransportConfig, ClusterError> {
        if self.keep_alive >= self.idle_timeout {
            return Err(ClusterError::Config(
                "keep_alive must be shorter than idle_timeout",
            ));
        }
        if self.accept_backlog == 0 {
            return Err(ClusterError::Config("accept_backlog must be at least 1"));
        }
        if self.max_handshakes == 0 {
            return Err(ClusterError::Config("max_handshakes must be at least 1"));
        }
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            IdleTimeout::try_from(self.idle_timeout)
                .map_err(|_| ClusterError::Config("idle_timeout out of range"))?,
        ));
        t.keep_alive_interval(Some(self.keep_alive));
        t.initial_rtt(self.initial_rtt);
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams));
        // Nothing uses unidirectional streams yet; do not let peers open any.
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        Ok(t)
    }
}

/// This node's QUIC endpoint: dials peers and accepts their (verified) connections.
/// Must be created inside a tokio runtime.
pub struct Endpoint {
    inner: quinn::Endpoint,
    name: NodeName,
    client_config: quinn::ClientConfig,
    cfg: Arc<TransportConfig>,
    incoming: Mutex<mpsc::Receiver<Connection>>,
    rejected: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl Endpoint {
    /// Binds a UDP socket on `addr` and starts accepting connections in the background.
    pub fn bind(
        identity: &NodeIdentity,
        addr: SocketAddr,
        cfg: TransportConfig,
    ) -> Result<Self, ClusterError> {
        let transport = Arc::new(cfg.quinn()?);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(identity.ca.clone())?;
        let roots = Arc::new(roots);

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let server_quic = QuicServerConfig::try_from(server_tls)
            .map_err(|_| ClusterError::NoInitialCipherSuite)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server_config.transport_config(transport.clone());

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_quic = QuicClientConfig::try_from(client_tls)
            .map_err(|_| ClusterError::NoInitialCipherSuite)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_quic));
        client_config.transport_config(transport);

        let inner = quinn::Endpoint::server(server_config, addr).map_err(ClusterError::Bind)?;
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::channel(cfg.accept_backlog);
        let rejected = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            inner.clone(),
            identity.name.clone(),
            cfg.clone(),
            tx,
            rejected.clone(),
        ));
        Ok(Self {
            inner,
            name: identity.name.clone(),
            client_config,
            cfg,
            incoming: Mutex::new(rx),
            rejected,
            accept_task,
        })
    }

    pub fn name(&self) -> &NodeName {
        &self.name
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ClusterError> {
        self.inner.local_addr().map_err(ClusterError::Bind)
    }

    /// Incoming connections that failed the handshake or the identity check so far
    /// (an error metric counts it).
    pub fn rejected_handshakes(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Dials `peer` at `addr` and verifies it is `peer`. Fails with a typed error (never a
    /// half-verified connection) on a wrong CA, a wrong name, or a timeout.
    pub async fn connect(
        &self,
        peer: &NodeName,
        addr: SocketAddr,
    ) -> Result<Connection, ClusterError> {
        let fut = async {
            let conn = self
                .inner
                .connect_with(self.client_config.clone(), addr, &peer.dns_name())?
                .await?;
            match client_hello(&conn, &self.name, peer).await {
                Ok(()) => Ok(Connection::new(conn, peer.clone(), self.cfg.clone())),
                Err(e) => {
                    conn.close(VarInt::from_u32(close_code(&e)), b"identity check failed");
                    Err(e)
                }
            }
        };
        let bound = self.cfg.dial_timeout.min(self.cfg.handshake_timeout);
        tokio::time::timeout(bound, fut)
            .await
            .map_err(|_| ClusterError::Timeout("connect"))?
    }

    /// The next incoming connection whose peer passed the identity check.
    pub async fn accept(&self) -> Result<Connection, ClusterError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(ClusterError::EndpointClosed)
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.accept_task.abort();
        self.inner
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // The accept loop holds a handle to the quinn endpoint and would keep the socket open.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    me: NodeName,
    cfg: Arc<TransportConfig>,
    tx: mpsc::Sender<Connection>,
    rejected: Arc<AtomicU64>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(cfg.max_handshakes));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes in progress; refused");
            incoming.refuse();
            continue;
        };
        let (me, cfg, tx, rejected) = (me.clone(), cfg.clone(), tx.clone(), rejected.clone());
        // One task per handshake: a slow dialler must not hold up the others.
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let result =
                tokio::time::timeout(cfg.handshake_timeout, server_handshake(incoming, &me, &cfg))
                    .await
                    .unwrap_or(Err(ClusterError::Timeout("handshake")));
            match result {
                Ok(conn) => {
                    // If nobody accepts any more, dropping the connection closes it.
                    let _ = tx.send(conn).await;
                }
                Err(e) => {
                    rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "rejected incoming peer connection");
                }
            }
        });
    }
}

async fn server_handshake(
    incoming: quinn::Incoming,
    me: &NodeName,
    cfg: &Arc<TransportConfig>,
) -> Result<Connection, ClusterError> {
    let conn = incoming.await?;
    let hello = async {
        let leaf = peer_leaf(&conn)?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let kind = read_kind(&mut recv).await?;
        if kind != KIND_HELLO {
            return Err(ClusterError::UnsupportedStreamKind(kind));
        }
        let claimed = parse_name(&read_frame(&mut recv, MAX_HELLO).await?)?;
        // The binding of name to certificate: rustls proved the chain, this proves the name.
        check_cert_name(&leaf, &claimed)?;
        send.write_all(&encode_frame(me.as_str().as_bytes(), MAX_HELLO)?)
            .await?;
        send.finish()?;
        Ok(claimed)
    };
    match hello.await {
        Ok(peer) => Ok(Connection::new(conn, peer, cfg.clone())),
        Err(e) => {
            conn.close(VarInt::from_u32(close_code(&e)), b"identity check failed");
            Err(e)
        }
    }
}

async fn client_hello(
    conn: &quinn::Connection,
    me: &NodeName,
    peer: &NodeName,
) -> Result<(), ClusterError> {
    // rustls already checked the server name; checking again here keeps the name binding
    // explicit and independent of how the TLS verifier is configured.
    check_cert_name(&peer_leaf(conn)?, peer)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[KIND_HELLO]).await?;
    send.write_all(&encode_frame(me.as_str().as_bytes(), MAX_HELLO)?)
        .await?;
    send.finish()?;
    // The answer also confirms the server accepted our certificate: in TLS 1.3 the client
    // finishes its handshake before the server has verified it.
    let answered = parse_name(&read_frame(&mut recv, MAX_HELLO).await?)?;
    if &answered != peer {
        return Err(ClusterError::WrongPeer {
            claimed: peer.to_string(),
            answered: answered.to_string(),
        });
    }
    Ok(())
}

fn close_code(e: &ClusterError) -> u32 {
    match e {
        ClusterError::Timeout(_) => codes::TIMEOUT,
        _ => codes::IDENTITY,
    }
}

fn parse_name(bytes: &[u8]) -> Result<NodeName, ClusterError> {
    std::str::from_utf8(bytes)
        .map_err(|_| ClusterError::InvalidNodeName {
            name: String::from_utf8_lossy(bytes).chars().take(80).collect(),
            reason: "not UTF-8",
        })?
        .parse()
}

fn peer_leaf(conn: &quinn::Connection) -> Result<CertificateDer<'static>, ClusterError> {
    let identity = conn
        .peer_identity()
        .ok_or(ClusterError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| ClusterError::NoPeerCertificate)?;
    chain
        .into_iter()
        .next()
        .ok_or(ClusterError::NoPeerCertificate)
}

fn frame_error(e: WireError) -> ClusterError {
    match e {
        WireError::TooLarge { size, limit } => ClusterError::FrameTooLarge { size, limit },
        other => ClusterError::Wire(other),
    }
}

async fn read_kind(recv: &mut RecvStream) -> Result<u8, ClusterError> {
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ClusterError::Truncated,
        quinn::ReadExactError::ReadError(e) => e.into(),
    })?;
    Ok(kind[0])
}

/// Reads one frame of at most `limit` bytes. An oversized header is refused as soon as it
/// arrives, before any of the body is read.
async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Vec<u8>, ClusterError> {
    read_frame_into(recv, &mut FrameDecoder::new(limit)).await
}

/// Reads the next frame through `decoder`, which keeps any bytes past it.
async fn read_frame_into(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Vec<u8>, ClusterError> {
    loop {
        if let Some(frame) = decoder.next_frame().map_err(frame_error)? {
            return Ok(frame);
        }
        // Read the header on its own so an oversized frame is refused after 4 bytes, not
        // after a whole chunk: a slow peer cannot hold memory by trickling.
        let want = match decoder.buffered() {
            b if b < HEADER_LEN => HEADER_LEN - b,
            _ => READ_CHUNK,
        };
        match recv.read_chunk(want, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes).map_err(frame_error)?,
            None => return Err(ClusterError::Truncated),
        }
    }
}

/// Waits for the next request on a data stream: `Ok(None)` when the peer finished the stream
/// between requests. An idle stream may wait for ever (it costs a task and one unit of
/// stream credit, both bounded by `max_concurrent_streams`); once a request has started it
/// must arrive within `request_timeout`.
async fn next_request(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
    cfg: &TransportConfig,
) -> Result<Option<Vec<u8>>, ClusterError> {
    if decoder.buffered() == 0 {
        // An idle lane holds no buffer while it waits.
        decoder.release();
        match recv.read_chunk(HEADER_LEN, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes).map_err(frame_error)?,
            None => return Ok(None),
        }
    }
    tokio::time::timeout(cfg.request_timeout, read_frame_into(recv, decoder))
        .await
        .unwrap_or(Err(ClusterError::Timeout("request")))
        .map(Some)
}

/// Refuses a stream in both directions with `code`; the connection is untouched.
pub(crate) fn refuse(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    // Errors here only mean the stream is already closed, which is what we want anyway.
    let _ = recv.stop(VarInt::from_u32(code));
    let _ = send.reset(VarInt::from_u32(code));
}

/// A [`KIND_DATA`] stream that carries one request/response exchange at a time, and is kept
/// for the next one. The decoder keeps what arrived past a frame in the same read, so a peer
/// that answers twice at once is noticed (and its lane dropped); a peer that sends a second
/// answer later could still desynchronise the lane, but such a peer can lie in its answers
/// anyway.
#[derive(Debug)]
struct Lane {
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
    /// Exchanges started on this lane; the kind byte goes out with the first request.
    uses: u64,
}

impl Lane {
    fn new(send: SendStream, recv: RecvStream, max_frame: usize) -> Self {
        Self {
            send,
            recv,
            decoder: FrameDecoder::new(max_frame),
            uses: 0,
        }
    }

    async fn exchange(&mut self, frame: &bytes::Bytes) -> Result<Vec<u8>, ClusterError> {
        self.uses += 1;
        if self.uses > 1 {
            self.send.write_all(frame).await?;
        } else {
            // Kind byte and frame in one write, so a small request leaves in one packet.
            let mut chunks = [bytes::Bytes::from_static(&[KIND_DATA]), frame.clone()];
            self.send.write_all_chunks(&mut chunks).await?;
        }
        let answer = read_frame_into(&mut self.recv, &mut self.decoder).await;
        if let Err(ClusterError::FrameTooLarge { .. }) = &answer {
            let _ = self.recv.stop(VarInt::from_u32(codes::FRAME_TOO_LARGE));
        }
        answer
    }

    /// After a failed exchange on a lane used before: the peer ended or refused the stream
    /// with code 0 before a byte of the answer came. That is how a node of the previous mesh
    /// version (one exchange per stream) treats a second request; it never read it. This
    /// version never ends a lane in use nor refuses with code 0.
    fn ended_unread(&self, e: &ClusterError) -> bool {
        // `uses` already counts the failed exchange.
        self.uses > 1
            && self.decoder.buffered() == 0
            && matches!(e, ClusterError::Truncated | ClusterError::StreamRefused(0))
    }
}

/// Idle lanes of one connection, most recently used last.
#[derive(Debug, Default)]
struct LanePool {
    idle: std::sync::Mutex<Vec<Lane>>,
    opened: AtomicU64,
    /// Signalled when a lane is given back, for requests waiting for stream credit.
    returned: tokio::sync::Notify,
}

impl LanePool {
    fn take(&self) -> Option<Lane> {
        tern_sync::poison::lock(&self.idle).pop()
    }

    /// Finishes every idle lane, so the peer gives their stream credit back.
    fn release_idle(&self) {
        for mut lane in tern_sync::poison::lock(&self.idle).drain(..) {
            let _ = lane.send.finish();
        }
    }
}

/// A lane in use. Unless given back after a clean exchange, it is reset on drop (an error,
/// a timeout, or a cancelled caller), so a half-done exchange is never reused.
struct LentLane<'a> {
    lane: Option<Lane>,
    pool: &'a LanePool,
}

impl LentLane<'_> {
    /// Returns the lane to the pool, or finishes it when `cap` lanes are already idle.
    fn give_back(mut self, cap: usize) {
        let Some(mut lane) = self.lane.take() else {
            return;
        };
        let mut idle = tern_sync::poison::lock(&self.pool.idle);
        if idle.len() < cap {
            lane.decoder.release();
            idle.push(lane);
            drop(idle);
            self.pool.returned.notify_one();
        } else {
            let _ = lane.send.finish();
        }
    }
}

impl Drop for LentLane<'_> {
    fn drop(&mut self) {
        if let Some(mut lane) = self.lane.take() {
            refuse(&mut lane.send, &mut lane.recv, codes::CANCELLED);
        }
    }
}

/// A verified connection to one peer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    peer: NodeName,
    cfg: Arc<TransportConfig>,
    sessions: Arc<SessionSink>,
    lanes: Arc<LanePool>,
}

impl Connection {
    fn new(inner: quinn::Connection, peer: NodeName, cfg: Arc<TransportConfig>) -> Self {
        Self {
            inner,
            peer,
            cfg,
            sessions: Arc::default(),
            lanes: Arc::default(),
        }
    }

    /// From now on, [`KIND_RACTOR`] streams that `serve` accepts on this connection are
    /// delivered to the returned receiver instead of being refused. At most one claim per
    /// connection ([`ClusterError::SessionStreamsClaimed`] otherwise). Claim before calling
    /// `serve`: a session stream that `serve` accepts before the claim is refused.
    /// Streams that arrive while `backlog` are already waiting are refused with
    /// [`codes::SESSION_EXISTS`].
    pub fn claim_session_streams(
        &self,
        backlog: usize,
    ) -> Result<mpsc::Receiver<SessionStream>, ClusterError> {
        let mut slot = self
            .sessions
            .0
            .lock()
            .map_err(|_| ClusterError::SessionStreamsClaimed)?;
        if slot.is_some() {
            return Err(ClusterError::SessionStreamsClaimed);
        }
        let (tx, rx) = mpsc::channel(backlog.max(1));
        *slot = Some(tx);
        Ok(rx)
    }

    /// Opens the [`KIND_RACTOR`] stream of a session (used by `session.rs`).
    pub(crate) async fn open_session_stream(&self) -> Result<SessionStream, ClusterError> {
        self.open_raw_stream(KIND_RACTOR).await
    }

    /// Closes the connection with an application `code` (e.g. [`codes::SESSION_LOST`]).
    pub(crate) fn close_with(&self, code: u32, reason: &[u8]) {
        self.inner.close(VarInt::from_u32(code), reason);
    }

    /// Whether the connection has already ended.
    pub fn is_closed(&self) -> bool {
        self.inner.close_reason().is_some()
    }

    /// The peer's node name, verified against its certificate.
    pub fn peer(&self) -> &NodeName {
        &self.peer
    }

    /// Distinguishes this connection from earlier or later ones to the same peer
    /// (see `Membership::connection_lost`).
    pub fn id(&self) -> u64 {
        self.inner.stable_id() as u64
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// QUIC's smoothed round-trip time estimate for this connection (quinn's `rtt()`; the
    /// handshake's estimate until traffic refines it).
    pub fn rtt(&self) -> Duration {
        self.inner.rtt()
    }

    /// Sends `payload` on a data-plane stream and waits for the one-frame answer.
    ///
    /// Streams are kept open between requests (see [`Lane`]): a stream per request cost
    /// about four extra datagrams per exchange on loopback (stream credit and the ACKs they
    /// elicit), each one waking the peer process.
    pub async fn request(&self, payload: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let frame =
            bytes::Bytes::from(encode_frame(payload, self.cfg.max_frame).map_err(frame_error)?);
        let exchange = async {
            let mut lent = self.lend().await?;
            let lane = lent.lane.as_mut().ok_or(ClusterError::ClosedStream)?;
            let answer = match lane.exchange(&frame).await {
                Err(e) if lane.ended_unread(&e) => {
                    // Not executed there: send it once more, on a stream of its own.
                    drop(lent);
                    lent = self.lend_new().await?;
                    let lane = lent.lane.as_mut().ok_or(ClusterError::ClosedStream)?;
                    lane.exchange(&frame).await
                }
                answer => answer,
            };
            let clean = lent
                .lane
                .as_ref()
                .is_some_and(|l| l.decoder.buffered() == 0);
            if answer.is_ok() && clean {
                let cap = self
                    .cfg
                    .max_idle_lanes
                    .min(self.cfg.max_concurrent_streams as usize / 2);
                lent.give_back(cap);
            }
            answer
        };
        tokio::time::timeout(self.cfg.request_timeout, exchange)
            .await
            .map_err(|_| ClusterError::Timeout("request"))?
    }

    /// A lane for one exchange: an idle one, else a new stream. While the peer's stream
    /// credit is used up, whichever comes first: a lane given back, or new credit.
    async fn lend(&self) -> Result<LentLane<'_>, ClusterError> {
        loop {
            let returned = self.lanes.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a lane given back after the look wakes us.
            returned.as_mut().enable();
            if let Some(lane) = self.lanes.take() {
                return Ok(LentLane {
                    lane: Some(lane),
                    pool: &self.lanes,
                });
            }
            tokio::select! {
                biased;
                opened = self.inner.open_bi() => return Ok(self.new_lane(opened?)),
                () = &mut returned => {}
            }
        }
    }

    /// A lane on a new stream.
    async fn lend_new(&self) -> Result<LentLane<'_>, ClusterError> {
        let opened = self.inner.open_bi().await?;
        Ok(self.new_lane(opened))
    }

    fn new_lane(&self, (send, recv): (SendStream, RecvStream)) -> LentLane<'_> {
        self.lanes.opened.fetch_add(1, Ordering::Relaxed);
        LentLane {
            lane: Some(Lane::new(send, recv, self.cfg.max_frame)),
            pool: &self.lanes,
        }
    }

    /// Data-plane streams this side has opened for [`Connection::request`]; each carries
    /// many requests, one at a time, so this grows with concurrency, not with requests.
    pub fn lanes_opened(&self) -> u64 {
        self.lanes.opened.load(Ordering::Relaxed)
    }

    /// UDP datagrams this side has sent on the connection (quinn's statistics).
    pub fn datagrams_sent(&self) -> u64 {
        self.inner.stats().udp_tx.datagrams
    }

    /// Opens a stream of the given kind and writes the kind byte. Only [`KIND_DATA`] is
    /// supported in this slice.
    pub async fn open_stream(&self, kind: u8) -> Result<(SendStream, RecvStream), ClusterError> {
        if kind != KIND_DATA {
            return Err(ClusterError::UnsupportedStreamKind(kind));
        }
        self.open_raw_stream(kind).await
    }

    /// The next stream the peer opens, unread, bypassing `serve`: lets tests play a peer of
    /// another protocol version.
    #[doc(hidden)]
    pub async fn accept_raw_stream(&self) -> Result<(SendStream, RecvStream), ClusterError> {
        Ok(self.inner.accept_bi().await?)
    }

    /// Like `open_stream` without the kind check, so tests can send what a hostile or newer
    /// peer would.
    #[doc(hidden)]
    pub async fn open_raw_stream(
        &self,
        first_byte: u8,
    ) -> Result<(SendStream, RecvStream), ClusterError> {
        let opened = tokio::select! {
            biased;
            opened = self.inner.open_bi() => Some(opened),
            () = std::future::ready(()) => None,
        };
        let (mut send, recv) = match opened {
            Some(opened) => opened?,
            None => {
                // The peer's stream credit is used up, perhaps by idle lanes: give theirs back.
                self.lanes.release_idle();
                self.inner.open_bi().await?
            }
        };
        send.write_all(&[first_byte]).await?;
        Ok((send, recv))
    }

    /// Serves data-plane requests from this peer with `handler` until the connection ends, and
    /// returns why it ended. Each stream runs in its own task; a bad stream is refused alone.
    /// [`KIND_RACTOR`] streams go to the receiver of [`Connection::claim_session_streams`], if
    /// any (else they are refused with [`codes::UNSUPPORTED_KIND`]).
    pub async fn serve<F, Fut>(&self, handler: F) -> ClusterError
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<u8>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        // A JoinSet so that stream tasks die with `serve` rather than outlive it.
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            let (send, recv) = match self.inner.accept_bi().await {
                Ok(streams) => streams,
                Err(e) => return e.into(),
            };
            let (handler, cfg, peer) = (handler.clone(), self.cfg.clone(), self.peer.clone());
            let sessions = self.sessions.clone();
            tasks.spawn(async move {
                if let Err(e) = serve_stream(send, recv, &*handler, &cfg, &sessions).await {
                    tracing::debug!(%peer, error = %e, "refused a data-plane stream");
                }
            });
        }
    }

    /// Resolves when the connection ends: idle timeout (dead or frozen peer), close, or reset.
    pub async fn closed(&self) -> ClusterError {
        self.inner.closed().await.into()
    }

    pub fn close(&self) {
        self.inner
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
    }
}

/// Hands a [`KIND_RACTOR`] stream to the session layer, or refuses it when nobody claimed
/// session streams on this connection (as before sessions existed) or the claim is backed up.
fn deliver_session_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    sessions: &SessionSink,
) -> Result<(), ClusterError> {
    let sender = sessions.0.lock().ok().and_then(|slot| slot.clone());
    let Some(sender) = sender else {
        refuse(&mut send, &mut recv, codes::UNSUPPORTED_KIND);
        return Err(ClusterError::UnsupportedStreamKind(KIND_RACTOR));
    };
    match sender.try_send((send, recv)) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full((mut send, mut recv))) => {
            refuse(&mut send, &mut recv, codes::SESSION_EXISTS);
            Err(ClusterError::SessionExists)
        }
        Err(mpsc::error::TrySendError::Closed((mut send, mut recv))) => {
            refuse(&mut send, &mut recv, codes::UNSUPPORTED_KIND);
            Err(ClusterError::UnsupportedStreamKind(KIND_RACTOR))
        }
    }
}

async fn serve_stream<F, Fut>(
    mut send: SendStream,
    mut recv: RecvStream,
    handler: &F,
    cfg: &TransportConfig,
    sessions: &SessionSink,
) -> Result<(), ClusterError>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    let mut decoder = FrameDecoder::new(cfg.max_frame);
    // The kind byte and the first request arrive together, under one deadline.
    let first = tokio::time::timeout(cfg.request_timeout, async {
        match read_kind(&mut recv).await? {
            KIND_RACTOR => Ok(None),
            KIND_DATA => read_frame_into(&mut recv, &mut decoder).await.map(Some),
            other => Err(ClusterError::UnsupportedStreamKind(other)),
        }
    })
    .await
    .unwrap_or(Err(ClusterError::Timeout("request")));
    let mut first = match first {
        Ok(None) => return deliver_session_stream(send, recv, sessions),
        first => Some(first),
    };
    loop {
        let request = match first.take() {
            Some(first) => first,
            None => next_request(&mut recv, &mut decoder, cfg).await,
        };
        let request = match request {
            Ok(Some(r)) => r,
            Ok(None) => {
                // The requester finished the stream between requests: a clean end.
                let _ = send.finish();
                return Ok(());
            }
            Err(e) => {
                let code = match &e {
                    ClusterError::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
                    ClusterError::UnsupportedStreamKind(_) => codes::UNSUPPORTED_KIND,
                    ClusterError::Timeout(_) => codes::TIMEOUT,
                    _ => codes::PROTOCOL,
                };
                refuse(&mut send, &mut recv, code);
                return Err(e);
            }
        };
        let response = handler(request).await;
        match encode_frame(&response, cfg.max_frame) {
            Ok(frame) => send.write_all(&frame).await?,
            Err(e) => {
                refuse(&mut send, &mut recv, codes::FRAME_TOO_LARGE);
                return Err(frame_error(e));
            }
        }
    }
}
