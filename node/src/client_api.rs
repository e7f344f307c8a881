//! The QUIC client API for `tern-client` (ALPN `tern-client/11`, protocol in
//! `tern_wire::client_proto`), on `client_listen`.
//!
//! - **TLS:** the node presents its cluster certificate (`<node>.node.tern`, from
//!   `cluster_dir`). If the cluster has a client CA (`client-ca.pem` in `cluster_dir`), clients
//!   may present a certificate, and it must chain to that CA or the handshake fails; the
//!   cluster CA is never trusted for clients, so a node certificate is no client credential.
//!   Without a client CA no certificate is asked for.
//! - **Authentication**, per request, before any of the read budget is granted: a client
//!   certificate names `<client>.<role>.<tenant>.client.tern` and acts for that tenant with
//!   that role (whatever token the request carries); otherwise the token, the request's first
//!   field, read with the frame's header and just enough bytes for the longest token
//!   ([`tern_wire::client_proto::MAX_TOKEN`]). A token listed in `client_tokens` acts for
//!   every tenant, like an admin; a bearer token of the node's token book (the HTTP API's)
//!   acts for its tenant with its role, under the same rules as on HTTP — another tenant's
//!   function or result is `not_found`. With `auth = "off"` and no `client_tokens`, every
//!   client is let in; otherwise anything else is `unauthorized` (`forbidden` for a role that
//!   never allows the operation), answered without the request's body being read.
//! - **Requests** map onto the same [`App`] methods as the HTTP handlers. A request that cannot
//!   be read (oversized, truncated, undecodable) is answered with a typed error on its own
//!   stream; the connection and the endpoint carry on.
//! - **Limits:** a request frame holds at most `max(max_body_bytes, max_module_bytes)` plus a
//!   small overhead; each connection may have at most [`MAX_STREAMS`] requests open at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, RecvStream, SendStream, VarInt};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tern_cluster::NodeName;
use tern_wire::client_proto::FRAME_OVERHEAD;
use tern_wire::frame::HEADER_LEN;
use tern_wire::{
    ApiError, CLIENT_ALPN, ClientOp, ClientReply, ClientRequest, ClientResponse, ErrorCode,
    TraceParent, encode_frame,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::app::App;
use crate::auth::{Caller, Need};
use crate::config::AuthMode;
use crate::config::{Config, ConfigError};
use crate::error::{ClientApiError, NodeError};
use crate::keyed;
use crate::service;
use crate::traces;
use tern_tenancy::{Action, Actor};

/// Requests a connection may have open at once (QUIC stream limit).
pub const MAX_STREAMS: u32 = 64;
/// Connections served at once; more are refused.
const MAX_CONNECTIONS: usize = 4096;
/// Bound on the QUIC + TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that hears nothing for this long is closed (clients send keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Open requests get this long to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// A whole request must arrive within `max(header_read_timeout_ms, this)`; a module upload
/// takes longer than request headers do.
const MIN_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Request bytes buffered at once across all connections are capped at
/// `max(2 × frame cap, this)`: 64 streams × 64 MiB per connection would otherwise let one
/// client make the node buffer gigabytes. Only authenticated requests draw on it.
const MIN_READ_BUDGET: usize = 256 << 20;
/// Leading bytes of a request read before any of the read budget is granted: a
/// `ClientRequest` starts with its token, which is checked on these alone, so a client that
/// cannot authenticate costs the node at most this much per stream. Room for the longest
/// token the protocol allows after bincode's option tag (1 byte) and length (at most 9).
const AUTH_PREFIX: usize = tern_wire::client_proto::MAX_TOKEN + 10;

/// QUIC application codes of the client API.
pub mod codes {
    /// Normal close (node shutting down).
    pub const SHUTDOWN: u32 = 0;
    /// The request frame is over the limit; the node stops reading it.
    pub const FRAME_TOO_LARGE: u32 = 0x20;
    /// The request did not arrive in time.
    pub const TIMEOUT: u32 = 0x22;
    /// The request's leading bytes did not authenticate; the node stops reading it.
    pub const UNAUTHORIZED: u32 = 0x23;
}

/// The running client API endpoint.
pub struct ClientApi {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// What every stream handler shares.
struct Ctx {
    app: Arc<App>,
    tokens: Vec<Vec<u8>>,
    /// Largest request frame payload.
    frame_cap: usize,
    /// Largest response payload.
    response_cap: usize,
    read_timeout: Duration,
    /// Request bytes being read or handled, in KiB (see [`MIN_READ_BUDGET`]).
    read_budget: Arc<Semaphore>,
}

/// The client API's endpoint, bound (so misconfiguration fails before the node does any
/// work) but not serving yet.
pub struct ClientApiListener {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl ClientApi {
    /// Loads the node's certificate and sets up the endpoint on `socket` if one is given (a
    /// socket bound beforehand), else on `client_listen` if that is set; `None` when neither
    /// is. Connections wait until [`ClientApiListener::serve`].
    pub fn bind(
        config: &Config,
        socket: Option<std::net::UdpSocket>,
    ) -> Result<Option<ClientApiListener>, NodeError> {
        if socket.is_none() && config.client_listen.is_none() {
            return Ok(None);
        }
        let Some(dir) = &config.cluster_dir else {
            return Err(ConfigError::Invalid(
                "the client API (client_listen or a client socket) needs cluster_dir (the \
                 node's certificate)"
                    .into(),
            )
            .into());
        };
        let name: NodeName = config.node_name.parse().map_err(ClientApiError::NodeName)?;
        let identity = tern_cluster::pki::load(dir, &name).map_err(ClientApiError::Identity)?;
        let client_ca = tern_cluster::pki::load_client_ca(dir).map_err(ClientApiError::Identity)?;
        let server_config = server_config(identity, client_ca)?;
        let endpoint = match (socket, config.client_listen) {
            (Some(socket), _) => {
                let addr = socket.local_addr()?;
                config.check_open_client_listener(addr)?;
                // What `quinn::Endpoint::server` does after binding.
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(server_config),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(|source| ClientApiError::Bind { addr, source })?
            }
            (None, Some(addr)) => quinn::Endpoint::server(server_config, addr)
                .map_err(|source| ClientApiError::Bind { addr, source })?,
            (None, None) => return Ok(None),
        };
        let addr = endpoint.local_addr()?;
        Ok(Some(ClientApiListener { endpoint, addr }))
    }
}

impl ClientApiListener {
    /// Starts serving requests with `app`.
    pub fn serve(self, app: &Arc<App>) -> Result<ClientApi, NodeError> {
        let Self { endpoint, addr } = self;
        let config = &app.config;
        let frame_cap = config
            .max_body_bytes
            .max(config.max_module_bytes)
            .saturating_add(FRAME_OVERHEAD);
        let ctx = Arc::new(Ctx {
            app: app.clone(),
            tokens: config
                .client_tokens
                .iter()
                .map(|t| t.as_bytes().to_vec())
                .collect(),
            frame_cap,
            response_cap: frame_cap
                .max(config.max_output_bytes.saturating_add(FRAME_OVERHEAD))
                .min(tern_wire::codec::MAX_MESSAGE),
            read_timeout: Duration::from_millis(config.header_read_timeout_ms)
                .max(MIN_READ_TIMEOUT),
            read_budget: Arc::new(Semaphore::new(
                frame_cap
                    .saturating_mul(2)
                    .max(MIN_READ_BUDGET)
                    .div_ceil(1024)
                    .min(Semaphore::MAX_PERMITS),
            )),
        });
        let (shutdown, rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(endpoint.clone(), ctx, rx));
        tracing::info!(%addr, "client API listening (QUIC)");
        Ok(ClientApi {
            addr,
            endpoint,
            shutdown,
            accept,
        })
    }
}

impl ClientApi {
    /// The UDP address the client API listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets open requests finish (up to 10 s), then closes every
    /// connection; clients fail over to another node.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept.await;
        self.endpoint
            .close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// TLS for the client API: the node's cluster certificate; client certificates are asked for
/// only if the cluster has a client CA, and only ones it issued are accepted (never the
/// cluster CA's: a node certificate is not a client credential).
fn server_config(
    identity: tern_cluster::NodeIdentity,
    client_ca: Option<CertificateDer<'static>>,
) -> Result<quinn::ServerConfig, ClientApiError> {
    // aws-lc-rs passed explicitly: with ring kept out of the build there is no default.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(vec![identity.cert], identity.key)?;
    tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|_| ClientApiError::NoInitialCipherSuite)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    server_config.transport_config(Arc::new(transport));
    Ok(server_config)
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        if connections.len() >= MAX_CONNECTIONS {
            incoming.refuse();
            continue;
        }
        connections.spawn(serve_connection(incoming, ctx.clone(), shutdown.clone()));
    }
    endpoint.set_server_config(None);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        connections.shutdown().await;
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, async { incoming.await }).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "client handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "client handshake timed out");
            return;
        }
    };
    // rustls has verified any certificate presented against the client CA.
    let cert = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
        .map_or(Certificate::None, |leaf| Certificate::read(&leaf));
    let cert = Arc::new(cert);
    let mut streams = JoinSet::new();
    loop {
        let (send, recv) = tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "client connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        streams.spawn(serve_stream(ctx.clone(), cert.clone(), send, recv));
    }
    let drain = async { while streams.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        streams.shutdown().await;
    }
    conn.close(VarInt::from_u32(codes::SHUTDOWN), b"node shutting down");
}

/// Why a request frame could not be read.
enum ReadFail {
    TooLarge,
    Truncated,
    /// The leading bytes did not authenticate; the rest is not read.
    Refused(ApiError),
    /// Reset by the client or connection lost: nobody to answer.
    Gone,
}

/// Reads a request frame's header and its first [`AUTH_PREFIX`] bytes (all of it if it is
/// shorter): the frame's length and those bytes. Refused from the header alone if the frame
/// is over `limit`. Nothing of the read budget is taken.
async fn read_prefix(recv: &mut RecvStream, limit: usize) -> Result<(usize, Vec<u8>), ReadFail> {
    let ended = |e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ReadFail::Truncated,
        quinn::ReadExactError::ReadError(_) => ReadFail::Gone,
    };
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(ended)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(ReadFail::TooLarge);
    }
    let mut prefix = vec![0u8; len.min(AUTH_PREFIX)];
    recv.read_exact(&mut prefix).await.map_err(ended)?;
    Ok((len, prefix))
}

/// Reads the rest of a frame of `len` bytes whose first bytes are `prefix`, once `budget` has
/// room for all of it.
async fn read_rest(
    recv: &mut RecvStream,
    len: usize,
    mut prefix: Vec<u8>,
    budget: &Arc<Semaphore>,
) -> Result<(Vec<u8>, OwnedSemaphorePermit), ReadFail> {
    let kib = u32::try_from(len.div_ceil(1024).max(1)).map_err(|_| ReadFail::TooLarge)?;
    let permit = budget
        .clone()
        .acquire_many_owned(kib)
        .await
        .map_err(|_| ReadFail::Gone)?;
    let start = prefix.len();
    prefix.resize(len, 0);
    let mut filled = start;
    while filled < len {
        match recv
            .read(&mut prefix[filled..len.min(filled + READ_CHUNK)])
            .await
        {
            Ok(Some(n)) => filled += n,
            Ok(None) => return Err(ReadFail::Truncated),
            Err(_) => return Err(ReadFail::Gone),
        }
    }
    Ok((prefix, permit))
}

fn api(code: ErrorCode, message: impl Into<String>) -> ClientResponse {
    ClientResponse::Err(ApiError::new(code, message))
}

async fn serve_stream(
    ctx: Arc<Ctx>,
    cert: Arc<Certificate>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let read = async {
        let (len, prefix) = read_prefix(&mut recv, ctx.frame_cap).await?;
        let caller = authenticate(&ctx, &cert, &prefix, len).map_err(ReadFail::Refused)?;
        let (bytes, permit) = read_rest(&mut recv, len, prefix, &ctx.read_budget).await?;
        Ok((caller, bytes, permit))
    };
    // Held until the answer is written: the request's bytes live that long.
    let mut _budget = None;
    let response = match tokio::time::timeout(ctx.read_timeout, read).await {
        Ok(Ok((caller, bytes, permit))) => {
            _budget = Some(permit);
            handle(&ctx, &caller, &bytes).await
        }
        Ok(Err(ReadFail::Gone)) => return,
        Ok(Err(ReadFail::Refused(e))) => {
            let _ = recv.stop(VarInt::from_u32(codes::UNAUTHORIZED));
            ClientResponse::Err(e)
        }
        Ok(Err(ReadFail::TooLarge)) => {
            let _ = recv.stop(VarInt::from_u32(codes::FRAME_TOO_LARGE));
            api(
                ErrorCode::PayloadTooLarge,
                format!("request frame over the {}-byte limit", ctx.frame_cap),
            )
        }
        Ok(Err(ReadFail::Truncated)) => api(
            ErrorCode::InvalidRequest,
            "the request stream ended before a whole frame arrived",
        ),
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(codes::TIMEOUT));
            api(
                ErrorCode::InvalidRequest,
                format!("no whole request within {:?}", ctx.read_timeout),
            )
        }
    };
    if let ClientResponse::Err(e) = &response
        && matches!(
            e.code,
            ErrorCode::Unauthorized | ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge
        )
    {
        ctx.app.services().metrics.request_errors[e.code.index()].fetch_add(1, Relaxed);
    }
    let payload = match tern_wire::encode(&response, ctx.response_cap) {
        Ok(p) => p,
        Err(e) => {
            let fallback = api(
                ErrorCode::OutputTooLarge,
                format!("the answer does not fit in a frame: {e}"),
            );
            match tern_wire::encode(&fallback, FRAME_OVERHEAD) {
                Ok(p) => p,
                Err(_) => return,
            }
        }
    };
    let Ok(frame) = encode_frame(&payload, usize::MAX) else {
        return;
    };
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who sent a request, from its leading bytes (`prefix` of a frame of `len` bytes), or why
/// it is refused: see the module's "Authentication". Only who the caller is; what its role
/// allows is checked once the whole request is read ([`handle`]).
fn authenticate(
    ctx: &Ctx,
    cert: &Certificate,
    prefix: &[u8],
    len: usize,
) -> Result<Caller, ApiError> {
    let token: Option<String> = match tern_wire::codec::decode_prefix(prefix) {
        Ok(token) => token,
        // The whole frame was read: it is not a request at all.
        Err(e) if prefix.len() == len => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("malformed request: {e}"),
            ));
        }
        // A token longer than the bytes read first (or damaged bytes): not one we issue.
        Err(_) => return Err(unauthorized()),
    };
    let token = token.as_deref();
    // Compare against every listed token (no early exit) to keep the timing flat.
    let listed = token.is_some_and(|token| {
        ctx.tokens
            .iter()
            .fold(false, |ok, t| ok | ct_eq(t, token.as_bytes()))
    });
    let app = &ctx.app;
    match cert {
        // The connection's certificate is who the caller is, whatever token it sends.
        Certificate::Names(actor) if app.tenants.is_live(&actor.tenant) => {
            return Ok(Caller::certified(actor.clone()));
        }
        Certificate::Names(actor) => {
            tracing::debug!(tenant = %actor.tenant, "refused a client certificate of a removed tenant");
            return Err(unauthorized());
        }
        Certificate::Unreadable(why) => {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                format!("the client certificate does not name a client: {why}"),
            ));
        }
        Certificate::None => {}
    }
    if listed {
        return Ok(Caller::unchecked());
    }
    if app.config.auth == AuthMode::Off {
        return match ctx.tokens.is_empty() {
            true => Ok(Caller::unchecked()),
            false => Err(unauthorized()),
        };
    }
    match app
        .auth
        .caller_with_token(token, Need::Nothing, &app.tenants)
    {
        Ok(caller) if caller.is_authenticated() => Ok(caller),
        Ok(_) | Err(NodeError::Unauthorized) => Err(unauthorized()),
        Err(other) => Err(other.to_api()),
    }
}

/// What a connection's TLS handshake proved about the client.
enum Certificate {
    None,
    /// A certificate from the client CA naming a tenant and a role.
    Names(Actor),
    /// A certificate from the client CA whose name is not `<client>.<role>.<tenant>`.
    Unreadable(String),
}

impl Certificate {
    /// Reads who a verified client certificate names: its one name under `client.tern`,
    /// `<client>.<role>.<tenant>` (what `tern cluster client-cert` issues).
    fn read(leaf: &CertificateDer<'_>) -> Self {
        let labels = match tern_cluster::pki::client_labels(leaf) {
            Ok(labels) => labels,
            Err(e) => return Self::Unreadable(e.to_string()),
        };
        let [label] = labels.as_slice() else {
            return Self::Unreadable(format!("{} client names, expected one", labels.len()));
        };
        match parse_client_label(label) {
            Ok(actor) => Self::Names(actor),
            Err(why) => Self::Unreadable(format!("{label}: {why}")),
        }
    }
}

/// `<client>.<role>.<tenant>` → the tenant and role it acts as.
pub fn parse_client_label(label: &str) -> Result<Actor, String> {
    let parts: Vec<&str> = label.split('.').collect();
    let [client, role, tenant] = parts.as_slice() else {
        return Err("expected <client>.<role>.<tenant>".into());
    };
    let label_ok = (1..=63).contains(&client.len())
        && client
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !client.starts_with('-')
        && !client.ends_with('-');
    if !label_ok {
        return Err(format!(
            "client name {client:?}: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'"
        ));
    }
    Ok(Actor {
        role: role
            .parse()
            .map_err(|e: tern_tenancy::Error| e.to_string())?,
        tenant: tenant
            .parse()
            .map_err(|e: tern_tenancy::Error| e.to_string())?,
    })
}

fn unauthorized() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "a valid token (one of the node's client_tokens, or with auth = \"tokens\" one of its \
         bearer tokens) or a client certificate from the cluster's client CA is required",
    )
}

/// What an operation does, as the token roles see it.
fn action_of(op: &ClientOp) -> Action {
    match op {
        ClientOp::Deploy { .. } => Action::Deploy,
        ClientOp::Invoke { .. } | ClientOp::InvokeAsync { .. } => Action::Invoke,
        ClientOp::Result { .. } => Action::ReadResult,
        ClientOp::List => Action::ListFunctions,
        ClientOp::Remove { .. } => Action::Remove,
    }
}

async fn handle(ctx: &Arc<Ctx>, caller: &Caller, bytes: &[u8]) -> ClientResponse {
    let request: ClientRequest = match tern_wire::decode(bytes, ctx.frame_cap) {
        Ok(r) => r,
        Err(e) => return api(ErrorCode::InvalidRequest, format!("malformed request: {e}")),
    };
    // The role against the operation, as HTTP checks it against the route.
    if let Err(e) = caller.may(action_of(&request.op), Some(&caller.tenant())) {
        let e = match e {
            NodeError::Unauthorized => unauthorized(),
            other => other.to_api(),
        };
        if e.code == ErrorCode::Forbidden {
            service::count_refusal(&ctx.app, e.code, Some(&caller.tenant()));
        }
        return ClientResponse::Err(e);
    }
    let kind = request.op.kind();
    match dispatch(ctx, caller, request.op, request.trace).await {
        Ok(reply) => ClientResponse::Ok(reply),
        Err(e) => {
            tracing::debug!(op = kind, error = %e, "client API request failed");
            if e.code == ErrorCode::Forbidden {
                service::count_refusal(&ctx.app, e.code, Some(&caller.tenant()));
            }
            ClientResponse::Err(e)
        }
    }
}

fn check_key(key: Option<&str>) -> Result<(), ApiError> {
    match key {
        Some(k) => tern_wire::check_idempotency_key(k)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string())),
        None => Ok(()),
    }
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    caller: &Caller,
    op: ClientOp,
    parent: Option<TraceParent>,
) -> Result<ClientReply, ApiError> {
    let app = &ctx.app;
    let node_err = |e: NodeError| e.to_api();
    match op {
        ClientOp::Deploy {
            name,
            module,
            timeout_ms,
            memory_mb,
            max_instances,
        } => service::Deploy::authorize(app, caller, name.as_str())
            .map_err(node_err)?
            .run(
                app,
                Bytes::from(module),
                crate::app::FunctionLimits {
                    timeout_ms,
                    memory_mb,
                    max_instances,
                },
            )
            .await
            .map(ClientReply::Deployed)
            .map_err(node_err),
        ClientOp::Invoke {
            name,
            input,
            map,
            idempotency_key,
            timeout_ms,
        } => {
            check_key(idempotency_key.as_deref())?;
            if timeout_ms == Some(0) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "timeout_ms must be at least 1",
                ));
            }
            let wait = timeout_ms.map(|ms| Duration::from_millis(u64::from(ms)));
            let name = service::Invoke::admit(app, caller, name.as_str())
                .and_then(|call| call.with_input(app, &input))
                .map_err(node_err)?;
            let trace = traces::invoke("client", parent.as_ref(), &name, "sync");
            let call = keyed::Call {
                function: name,
                input: Bytes::from(input),
                map,
                trace: trace.clone(),
            };
            let reply = keyed::invoke(app, call, idempotency_key, wait).await;
            if let Err(e) = &reply {
                traces::failed(&trace, &e.message);
            }
            reply.map(ClientReply::Output)
        }
        ClientOp::InvokeAsync {
            name,
            input,
            map,
            idempotency_key,
        } => {
            check_key(idempotency_key.as_deref())?;
            let name = service::Invoke::admit(app, caller, name.as_str())
                .and_then(|call| call.with_input(app, &input))
                .map_err(node_err)?;
            let input = Bytes::from(input);
            let trace = traces::invoke("client", parent.as_ref(), &name, "async");
            let under = tern_telemetry::traceparent(&trace);
            let (id, node) = keyed::accept(app, idempotency_key, name, input, map, under).await?;
            trace.record("request_id", id.as_str());
            Ok(ClientReply::Accepted { id, node })
        }
        ClientOp::Result { id } => {
            let mut record = service::invocation(app, caller, &id)
                .await
                .map_err(node_err)?;
            record.input = Vec::new();
            Ok(ClientReply::Invocation(record))
        }
        ClientOp::List => Ok(ClientReply::Functions(service::list(app, caller))),
        ClientOp::Remove { name } => service::remove(app, caller, name.as_str())
            .await
            .map(ClientReply::Removed)
            .map_err(node_err),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{ct_eq, parse_client_label};

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn a_client_label_names_one_client_one_role_and_one_live_tenant_name() {
        let actor = parse_client_label("alice.developer.acme").unwrap();
        assert_eq!(actor.tenant.as_str(), "acme");
        assert_eq!(actor.role, tern_tenancy::Role::Developer);
        for bad in [
            "developer.acme",
            "a.b.developer.acme",
            "alice.superuser.acme",
            "alice.developer.Acme",
            "-alice.developer.acme",
            ".developer.acme",
            "alice_x.developer.acme",
        ] {
            assert!(parse_client_label(bad).is_err(), "{bad}");
        }
    }
}
