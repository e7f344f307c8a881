//! `tern-client`: a client library for Tern nodes.
//!
//! It talks to a node's QUIC client API (`client_listen` in the node's configuration, ALPN
//! `tern-client/11`) with TLS 1.3, verifying the node's certificate against the cluster CA
//! written by `tern cluster init`. It authenticates with a tenant token, a client
//! certificate signed by the cluster CA, or both.
//!
//! What a [`Client`] does for every call:
//! - **Timeouts:** each exchange with a node is bounded by `request_timeout`, each handshake
//!   by `connect_timeout`, and a silent connection is dropped after `idle_timeout`.
//! - **Retries:** timeouts, `overloaded` and `unavailable` answers, and rounds where no node
//!   could be reached are retried up to `retries` times, with exponential backoff and full
//!   jitter.
//! - **Idempotency:** [`Client::invoke`] and [`Client::invoke_async`] attach an idempotency
//!   key, generated once per call and reused by its retries, so a retry that reaches any node
//!   of the cluster returns the first attempt's result (or id) instead of running the function
//!   again (every node sends keyed calls to the key's home node).
//! - **Failover:** when the connection to a node is lost or a node cannot be reached, the
//!   client moves to the next seed and carries on, without surfacing an error.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_client::ClientError> {
//! use tern_client::{Client, ClientConfig};
//!
//! let config = ClientConfig::new(
//!     vec![
//!         ("a".into(), "127.0.0.1:7901".parse().unwrap()),
//!         ("b".into(), "127.0.0.1:7902".parse().unwrap()),
//!     ],
//!     std::path::PathBuf::from("cluster/ca.pem"),
//! )
//! .with_token("tenant-secret");
//! let client = Client::connect(config).await?;
//! let out = client.invoke("echo", b"hello".to_vec()).await?;
//! assert_eq!(&out.output[..], b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! Limits of this version: a sync call's key and result live on its home node only, so if
//! that node is lost a retry runs the function again on the next (at-least-once; an async
//! key goes with its invocation's copy to the home's keeper); [`Client::result`] asks
//! the node the client is connected to, which asks its peers for a record it does not hold.
#![forbid(unsafe_code)]

mod config;
mod error;
mod retry;
mod transport;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_wire::frame::HEADER_LEN;
use tern_wire::{ClientOp, ClientReply, ClientRequest, ClientResponse, encode_frame};

pub use config::{ClientConfig, Pem, parse_seed};
pub use error::{ClientError, NodeFailure};
pub use tern_wire::{
    ApiError, ErrorCode, FunctionInfo, FunctionName, HttpCall, InvocationId, InvocationRecord,
    InvocationStatus, TraceParent,
};

use transport::{AttemptError, Transport};

/// How many async invocation ids the client remembers the accepting node of.
const MAX_ROUTES: usize = 10_000;

/// The first seed: where the client goes back to after a failover (see
/// [`ClientConfig::failback_after`]).
const HOME: usize = 0;

/// Extra time the client waits beyond a per-call `timeout` for the node's answer to arrive.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

/// Options of [`Client::deploy_with`]. `None` takes the node's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeployOptions {
    /// The function's deadline per invocation (node default 10,000 ms).
    pub timeout_ms: Option<u32>,
    /// The function's memory cap (node default 128 MiB).
    pub memory_mb: Option<u32>,
    /// At most this many instances of the function at once on each node; calls beyond it
    /// wait for one of them within their deadline (default: only the tenant's caps).
    pub max_instances: Option<u32>,
}

/// Options of [`Client::invoke_with`] and [`Client::invoke_async_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InvokeOptions {
    /// Split a JSON array input into parallel units and join their outputs in order.
    pub map: bool,
    /// Your own idempotency key (1–128 printable ASCII characters) to make retries across
    /// your own restarts safe; by default a random key is generated per call.
    pub idempotency_key: Option<String>,
    /// How long to wait for a synchronous result, on the node and here, instead of
    /// `request_timeout`. Ignored by `invoke_async_with`.
    pub timeout: Option<Duration>,
    /// The span this call continues (W3C Trace Context): your own span's, or a new trace
    /// from [`Client::start_trace`]. The node's spans of the invocation join that trace
    /// when the node exports traces; `None` leaves it to the node's sampler.
    pub trace: Option<TraceParent>,
}

/// The result of a synchronous invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvokeOutput {
    /// The guest's stdout.
    pub output: Bytes,
    /// Node that ran the function.
    pub node: String,
    /// Whether the module had to be compiled or loaded for this call.
    pub cold_start: bool,
    /// Units of work the invocation was split into.
    pub meus: u32,
    /// Time spent on the node, microseconds.
    pub duration_us: u64,
    /// Whether the node answered from its idempotency cache (a retry of a call that had
    /// already run) instead of running the function again.
    pub replayed: bool,
}

/// A `wasi:http/proxy` component's answer to [`Client::call_component`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentOutput {
    /// The component's status code.
    pub status: u16,
    /// The component's headers, in its order; values are bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The component's body.
    pub body: Bytes,
    /// The fields the component set after its body, in its order (empty if none).
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Node that ran the component.
    pub node: String,
    /// Whether the component had to be loaded for this call.
    pub cold_start: bool,
    /// Time spent on the node, microseconds.
    pub duration_us: u64,
    /// Whether the node answered from its idempotency cache.
    pub replayed: bool,
}

impl ComponentOutput {
    /// The first value of header `name` (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A connection to a Tern cluster through its seed nodes. Cheap to clone; clones share the
/// connection. Dropping the last clone closes it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seeds", &self.inner.config.seeds)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: ClientConfig,
    transport: Transport,
    state: tokio::sync::Mutex<State>,
    closed: AtomicBool,
    routes: std::sync::Mutex<Routes>,
    /// Fallback entropy if the CSPRNG ever fails.
    counter: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.transport.close();
    }
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// Seed to try first when there is no current connection.
    next: usize,
    /// Away from the first seed: when the client last tried it (or left it), and whether a
    /// try is under way (see [`ClientConfig::failback_after`]).
    home_tried_at: Option<std::time::Instant>,
    probing_home: bool,
}

struct Current {
    index: usize,
    conn: quinn::Connection,
}

/// Which node accepted which async invocation (bounded, oldest forgotten first).
#[derive(Default)]
struct Routes {
    by_id: HashMap<InvocationId, usize>,
    order: VecDeque<InvocationId>,
}

impl Routes {
    fn insert(&mut self, id: InvocationId, node: usize) {
        if self.by_id.insert(id.clone(), node).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_ROUTES {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }
}

/// What one call carries through its attempts.
struct Call {
    frame: Vec<u8>,
    /// Bound on one exchange.
    timeout: Duration,
    /// Node to try first.
    prefer: Option<usize>,
}

impl Client {
    /// Builds the TLS configuration and connects to the first reachable seed, in order.
    /// Fails with [`ClientError::AllNodesUnreachable`] if none answers (after the retries),
    /// or at once on a configuration or TLS setup error.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let transport = Transport::new(&config)?;
        let client = Self {
            inner: Arc::new(Inner {
                config,
                transport,
                state: tokio::sync::Mutex::new(State::default()),
                closed: AtomicBool::new(false),
                routes: std::sync::Mutex::new(Routes::default()),
                counter: AtomicU64::new(0),
            }),
        };
        client.ensure_connected().await?;
        Ok(client)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The name of the node the client is connected to now, if any.
    pub async fn connected_node(&self) -> Option<String> {
        let state = self.inner.state.lock().await;
        state
            .current
            .as_ref()
            .filter(|c| c.conn.close_reason().is_none())
            .map(|c| self.inner.config.seeds[c.index].0.clone())
    }

    /// Closes the connection; later calls fail with [`ClientError::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.transport.close();
    }

    /// Deploys `module` (WebAssembly bytes) as `name` with the node's default limits.
    /// Redeploying a name bumps its version.
    pub async fn deploy(
        &self,
        name: &str,
        module: impl Into<Vec<u8>>,
    ) -> Result<FunctionInfo, ClientError> {
        self.deploy_with(name, module, DeployOptions::default())
            .await
    }

    /// Deploys `module` as `name` with explicit limits.
    pub async fn deploy_with(
        &self,
        name: &str,
        module: impl Into<Vec<u8>>,
        options: DeployOptions,
    ) -> Result<FunctionInfo, ClientError> {
        let op = ClientOp::Deploy {
            name: name.parse()?,
            module: module.into(),
            timeout_ms: options.timeout_ms,
            memory_mb: options.memory_mb,
            max_instances: options.max_instances,
        };
        match self.call(op, None, None, None).await? {
            (ClientReply::Deployed(info), _) => Ok(info),
            (other, node) => Err(self.unexpected(node, &other)),
        }
    }

    /// Runs `name` with `input` on its stdin and returns its stdout.
    pub async fn invoke(
        &self,
        name: &str,
        input: impl Into<Vec<u8>>,
    ) -> Result<InvokeOutput, ClientError> {
        self.invoke_with(name, input, InvokeOptions::default())
            .await
    }

    /// [`Client::invoke`] with options (map mode, your own idempotency key, a deadline).
    pub async fn invoke_with(
        &self,
        name: &str,
        input: impl Into<Vec<u8>>,
        options: InvokeOptions,
    ) -> Result<InvokeOutput, ClientError> {
        let timeout_ms = options
            .timeout
            .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1));
        let op = ClientOp::Invoke {
            name: name.parse()?,
            input: input.into(),
            map: options.map,
            idempotency_key: Some(self.key(options.idempotency_key)?),
            timeout_ms,
        };
        let timeout = options.timeout.map(|t| t + TIMEOUT_MARGIN);
        match self.call(op, timeout, None, options.trace).await? {
            (ClientReply::Output(r), _) => Ok(InvokeOutput {
                output: Bytes::from(r.output),
                node: r.node,
                cold_start: r.cold_start,
                meus: r.meus,
                duration_us: r.duration_us,
                replayed: r.replayed,
            }),
            (other, node) => Err(self.unexpected(node, &other)),
        }
    }

    /// Calls component `name` with an HTTP request, as `/fn/{name}{path}` does over HTTP: the
    /// component sees `call`'s method, path and query, headers, body and trailers, and its
    /// status, headers, body and trailers come back. A core module (a command) is refused with
    /// `invalid_request`; an answer that is not a component's is a [`ClientError::Protocol`].
    pub async fn call_component(
        &self,
        name: &str,
        call: &HttpCall,
        options: InvokeOptions,
    ) -> Result<ComponentOutput, ClientError> {
        let input = call.encode()?;
        let out = self.invoke_with(name, input, options).await?;
        let answer = match tern_wire::HttpAnswer::decode(&out.output) {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => {
                return Err(ClientError::Protocol {
                    node: out.node,
                    reason: format!("the component's answer did not decode: {e}"),
                });
            }
            None => {
                return Err(ClientError::Protocol {
                    node: out.node,
                    reason: "the function answered with something other than an HTTP response"
                        .into(),
                });
            }
        };
        Ok(ComponentOutput {
            status: answer.status,
            headers: answer.headers,
            body: Bytes::from(answer.body),
            trailers: answer.trailers,
            node: out.node,
            cold_start: out.cold_start,
            duration_us: out.duration_us,
            replayed: out.replayed,
        })
    }

    /// Starts `name` with `input` in the background and returns its id once the node has
    /// durably journaled it. Poll with [`Client::result`] or [`Client::wait_result`].
    pub async fn invoke_async(
        &self,
        name: &str,
        input: impl Into<Vec<u8>>,
    ) -> Result<InvocationId, ClientError> {
        self.invoke_async_with(name, input, InvokeOptions::default())
            .await
    }

    /// [`Client::invoke_async`] with options. The same idempotency key returns the same id,
    /// through any node, and after the key's home node is lost if its copy of the invocation
    /// reached its keeper (see the crate's README).
    pub async fn invoke_async_with(
        &self,
        name: &str,
        input: impl Into<Vec<u8>>,
        options: InvokeOptions,
    ) -> Result<InvocationId, ClientError> {
        let op = ClientOp::InvokeAsync {
            name: name.parse()?,
            input: input.into(),
            map: options.map,
            idempotency_key: Some(self.key(options.idempotency_key)?),
        };
        match self.call(op, None, None, options.trace).await? {
            (ClientReply::Accepted { id, .. }, node) => {
                if let Ok(mut routes) = self.inner.routes.lock() {
                    routes.insert(id.clone(), node);
                }
                Ok(id)
            }
            (other, node) => Err(self.unexpected(node, &other)),
        }
    }

    /// The state of an async invocation (`pending`, `succeeded` with its output, or `failed`
    /// with its error). The record's `input` is always empty.
    pub async fn result(&self, id: &InvocationId) -> Result<InvocationRecord, ClientError> {
        let prefer = self
            .inner
            .routes
            .lock()
            .ok()
            .and_then(|r| r.by_id.get(id).copied());
        let op = ClientOp::Result { id: id.clone() };
        match self.call(op, None, prefer, None).await? {
            (ClientReply::Invocation(record), _) => Ok(record),
            (other, node) => Err(self.unexpected(node, &other)),
        }
    }

    /// Polls [`Client::result`] every `poll` until the invocation has finished or `timeout`
    /// has passed ([`ClientError::Timeout`]).
    pub async fn wait_result(
        &self,
        id: &InvocationId,
        poll: Duration,
        timeout: Duration,
    ) -> Result<InvocationRecord, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.result(id).await?;
            if record.status != InvocationStatus::Pending {
                return Ok(record);
            }
            if Instant::now() + poll > deadline {
                return Err(ClientError::Timeout(timeout));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The deployed functions.
    pub async fn list(&self) -> Result<Vec<FunctionInfo>, ClientError> {
        match self.call(ClientOp::List, None, None, None).await? {
            (ClientReply::Functions(list), _) => Ok(list),
            (other, node) => Err(self.unexpected(node, &other)),
        }
    }

    /// Removes `name`; returns what was removed. A retry after a lost connection may answer
    /// `not_found` if the first attempt had already removed it.
    pub async fn remove(&self, name: &str) -> Result<FunctionInfo, ClientError> {
        let op = ClientOp::Remove {
            name: name.parse()?,
        };
        match self.call(op, None, None, None).await? {
            (ClientReply::Removed(info), _) => Ok(info),
            (other, node) => Err(self.unexpected(node, &other)),
        }
    }

    /// Sends `bytes` as they are on a new stream of the current connection and returns the
    /// node's raw answer (a frame payload). For protocol tests: no retries, no failover.
    #[doc(hidden)]
    pub async fn raw_request(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (index, conn) = self.ensure_connected().await?;
        let node = self.inner.config.seeds[index].0.clone();
        let exchange = transport::exchange(&conn, bytes, self.inner.config.max_response_bytes);
        match tokio::time::timeout(self.inner.config.request_timeout, exchange).await {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(AttemptError::Protocol(reason))) => Err(ClientError::Protocol { node, reason }),
            Ok(Err(e)) => Err(all_failed(vec![failure(
                &self.inner.config.seeds,
                index,
                e,
            )])),
            Err(_) => Err(ClientError::Timeout(self.inner.config.request_timeout)),
        }
    }

    fn unexpected(&self, node: usize, reply: &ClientReply) -> ClientError {
        let kind = match reply {
            ClientReply::Deployed(_) => "Deployed",
            ClientReply::Output(_) => "Output",
            ClientReply::Accepted { .. } => "Accepted",
            ClientReply::Invocation(_) => "Invocation",
            ClientReply::Functions(_) => "Functions",
            ClientReply::Removed(_) => "Removed",
        };
        ClientError::Protocol {
            node: self.inner.config.seeds[node].0.clone(),
            reason: format!("unexpected {kind} answer"),
        }
    }

    /// A new sampled trace to pass in [`InvokeOptions::trace`]: the nodes record the
    /// invocation under its trace id (`TraceParent::trace_id`), whatever their sampling ratio
    /// (unless they are set not to follow callers). Its parent id stands for this call; it is
    /// not exported, so a trace viewer shows the node's `invoke` span under a missing parent.
    pub fn start_trace(&self) -> TraceParent {
        let mut bytes = [0u8; 24];
        if !self.inner.transport.random(&mut bytes) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
            bytes[..16].copy_from_slice(&now.to_le_bytes());
            bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
            bytes[20..].copy_from_slice(&(n as u32).to_le_bytes());
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        trace_id.copy_from_slice(&bytes[..16]);
        parent_id.copy_from_slice(&bytes[16..]);
        // All-zero ids are invalid; make sure neither is.
        trace_id[15] |= 1;
        parent_id[7] |= 1;
        TraceParent {
            trace_id,
            parent_id,
            flags: 1,
        }
    }

    /// The caller's key, checked, or a fresh random one.
    fn key(&self, given: Option<String>) -> Result<String, ClientError> {
        if let Some(key) = given {
            tern_wire::check_idempotency_key(&key)?;
            return Ok(key);
        }
        let mut bytes = [0u8; 16];
        if !self.inner.transport.random(&mut bytes) {
            // Unique enough without a CSPRNG: time, process and a counter.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0) as u64;
            let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
            bytes[..8].copy_from_slice(&now.to_le_bytes());
            bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
            bytes[12..].copy_from_slice(&(n as u32).to_le_bytes());
        }
        Ok(retry::key_from(bytes))
    }

    fn backoff(&self, retry: u32) -> Duration {
        let mut bytes = [0u8; 8];
        if !self.inner.transport.random(&mut bytes) {
            bytes = self
                .inner
                .counter
                .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
                .to_le_bytes();
        }
        retry::backoff(
            retry,
            self.inner.config.backoff_base,
            self.inner.config.backoff_max,
            u64::from_le_bytes(bytes),
        )
    }

    /// Connects if there is no live connection, trying every seed once, then retrying whole
    /// rounds with backoff.
    async fn ensure_connected(&self) -> Result<(usize, quinn::Connection), ClientError> {
        let mut tried = Vec::new();
        for retry in 0..=self.inner.config.retries {
            let mut excluded = HashSet::new();
            if let Some(found) = self.connection(&mut excluded, None, &mut tried).await {
                return Ok(found);
            }
            // Refused credentials stay refused: do not retry.
            if !tried.is_empty() && tried.iter().all(|f| f.rejected) {
                break;
            }
            if retry < self.inner.config.retries {
                tokio::time::sleep(self.backoff(retry)).await;
            }
        }
        Err(all_failed(tried))
    }

    /// A live connection to a node not in `excluded`: the preferred node if it can be
    /// reached, else the current connection, else the next seeds in order. Nodes that cannot
    /// be reached are added to `excluded` and their failures to `tried`. `None` when every
    /// seed is excluded.
    async fn connection(
        &self,
        excluded: &mut HashSet<usize>,
        prefer: Option<usize>,
        tried: &mut Vec<NodeFailure>,
    ) -> Option<(usize, quinn::Connection)> {
        let seeds = &self.inner.config.seeds;
        let mut state = self.inner.state.lock().await;
        if let Some(current) = &state.current
            && (current.conn.close_reason().is_some() || excluded.contains(&current.index))
        {
            state.next = (current.index + 1) % seeds.len();
            state.current = None;
        }
        let live = state.current.as_ref().map(|c| c.index);
        if live.is_some_and(|l| l != HOME) {
            self.maybe_probe_home(&mut state);
        }
        let mut order: Vec<usize> = Vec::with_capacity(seeds.len() + 2);
        if let Some(p) = prefer.filter(|p| *p < seeds.len()) {
            order.push(p);
        }
        if let Some(l) = live {
            order.push(l);
        }
        order.extend((0..seeds.len()).map(|i| (state.next + i) % seeds.len()));
        for index in order {
            if excluded.contains(&index) {
                continue;
            }
            if let Some(current) = &state.current
                && current.index == index
            {
                return Some((index, current.conn.clone()));
            }
            let (name, addr) = &seeds[index];
            match self
                .inner
                .transport
                .connect(name, *addr, self.inner.config.connect_timeout)
                .await
            {
                Ok(conn) => {
                    tracing::debug!(node = %name, %addr, "connected");
                    if index != HOME && state.current.as_ref().is_none_or(|c| c.index == HOME) {
                        state.home_tried_at = Some(std::time::Instant::now());
                    }
                    // A replaced connection closes once the calls still using it are done.
                    state.current = Some(Current {
                        index,
                        conn: conn.clone(),
                    });
                    return Some((index, conn));
                }
                Err(e) => {
                    let failure = failure(seeds, index, e);
                    tracing::debug!(node = %name, %addr, reason = %failure.reason, "cannot connect");
                    excluded.insert(index);
                    tried.push(failure);
                }
            }
        }
        None
    }

    /// Away from the first seed for [`ClientConfig::failback_after`] since it was last tried:
    /// tries it in the background, and makes it the current connection if it answers.
    fn maybe_probe_home(&self, state: &mut State) {
        let Some(every) = self.inner.config.failback_after else {
            return;
        };
        let now = std::time::Instant::now();
        if state.probing_home || state.home_tried_at.is_some_and(|t| now - t < every) {
            return;
        }
        state.probing_home = true;
        state.home_tried_at = Some(now);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let (name, addr) = &inner.config.seeds[HOME];
            let connected = inner
                .transport
                .connect(name, *addr, inner.config.connect_timeout)
                .await;
            let mut state = inner.state.lock().await;
            state.probing_home = false;
            state.home_tried_at = Some(std::time::Instant::now());
            match connected {
                Ok(conn)
                    if !inner.closed.load(Ordering::Acquire)
                        && state.current.as_ref().is_some_and(|c| c.index != HOME) =>
                {
                    tracing::debug!(node = %name, %addr, "back on the first seed");
                    // The connection replaced closes once the calls still using it are done.
                    state.current = Some(Current { index: HOME, conn });
                }
                Ok(_) => {}
                Err(e) => {
                    let failure = failure(&inner.config.seeds, HOME, e);
                    tracing::debug!(node = %name, %addr, reason = %failure.reason, "first seed still unreachable");
                }
            }
        });
    }

    /// Forgets the current connection if it is still `conn` (another call may already have
    /// replaced it), so the next attempt connects afresh or to the next seed.
    async fn forget(&self, index: usize, conn: &quinn::Connection) {
        let mut state = self.inner.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
        {
            state.current = None;
            state.next = (index + 1) % self.inner.config.seeds.len();
        }
    }

    /// Runs `op` with retries and failover; returns the reply and the index of the node that
    /// gave it.
    async fn call(
        &self,
        op: ClientOp,
        timeout: Option<Duration>,
        prefer: Option<usize>,
        trace: Option<TraceParent>,
    ) -> Result<(ClientReply, usize), ClientError> {
        let request = ClientRequest {
            token: self.inner.config.token.clone(),
            op,
            trace,
        };
        let limit = tern_wire::codec::MAX_MESSAGE - HEADER_LEN;
        let payload = tern_wire::encode(&request, limit).map_err(|e| match e {
            tern_wire::WireError::TooLarge { size, limit } => {
                ClientError::RequestTooLarge { size, limit }
            }
            other => ClientError::InvalidArgument(other),
        })?;
        let frame = encode_frame(&payload, limit)?;
        drop(payload);
        let call = Call {
            frame,
            timeout: timeout.unwrap_or(self.inner.config.request_timeout),
            prefer,
        };
        self.run(call, request.op.kind()).await
    }

    async fn run(&self, call: Call, kind: &str) -> Result<(ClientReply, usize), ClientError> {
        let config = &self.inner.config;
        let mut tried: Vec<NodeFailure> = Vec::new();
        let mut excluded: HashSet<usize> = HashSet::new();
        let mut retries_used = 0u32;
        let mut prefer = call.prefer;
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            let Some((index, conn)) = self
                .connection(&mut excluded, prefer.take(), &mut tried)
                .await
            else {
                // Every seed failed in this round.
                let all_rejected = !tried.is_empty() && tried.iter().all(|f| f.rejected);
                if all_rejected || retries_used >= config.retries {
                    return Err(all_failed(tried));
                }
                tokio::time::sleep(self.backoff(retries_used)).await;
                retries_used += 1;
                excluded.clear();
                continue;
            };
            let node = &config.seeds[index].0;
            let exchange = transport::exchange(&conn, &call.frame, config.max_response_bytes);
            let error = match tokio::time::timeout(call.timeout, exchange).await {
                Ok(Ok(payload)) => {
                    match tern_wire::decode::<ClientResponse>(&payload, config.max_response_bytes) {
                        Ok(ClientResponse::Ok(reply)) => return Ok((reply, index)),
                        Ok(ClientResponse::Err(api)) if api.code.is_retryable() => {
                            ClientError::Api(api)
                        }
                        Ok(ClientResponse::Err(api)) => return Err(ClientError::Api(api)),
                        Err(e) => {
                            return Err(ClientError::Protocol {
                                node: node.clone(),
                                reason: format!("undecodable answer: {e}"),
                            });
                        }
                    }
                }
                Ok(Err(AttemptError::Protocol(reason))) => {
                    return Err(ClientError::Protocol {
                        node: node.clone(),
                        reason,
                    });
                }
                Ok(Err(e @ (AttemptError::Lost(_) | AttemptError::Rejected(_)))) => {
                    // Fail over at once: the next loop picks another node.
                    let failure = failure(&config.seeds, index, e);
                    tracing::debug!(%node, op = kind, reason = %failure.reason, "node lost; failing over");
                    self.forget(index, &conn).await;
                    excluded.insert(index);
                    tried.push(failure);
                    continue;
                }
                Err(_) => ClientError::Timeout(call.timeout),
            };
            if retries_used >= config.retries {
                return Err(error);
            }
            tracing::debug!(%node, op = kind, error = %error, retry = retries_used, "retrying");
            tokio::time::sleep(self.backoff(retries_used)).await;
            retries_used += 1;
        }
    }
}

fn failure(seeds: &[(String, SocketAddr)], index: usize, e: AttemptError) -> NodeFailure {
    let (reason, rejected) = match e {
        AttemptError::Lost(r) | AttemptError::Protocol(r) => (r, false),
        AttemptError::Rejected(r) => (r, true),
    };
    NodeFailure {
        node: seeds[index].0.clone(),
        addr: seeds[index].1,
        reason,
        rejected,
    }
}

/// The error for "no node could serve the call": [`ClientError::Rejected`] if every node
/// refused our credentials, else [`ClientError::AllNodesUnreachable`].
fn all_failed(tried: Vec<NodeFailure>) -> ClientError {
    if let Some(first) = tried.first()
        && tried.iter().all(|f| f.rejected)
    {
        return ClientError::Rejected {
            node: first.node.clone(),
            reason: first.reason.clone(),
        };
    }
    ClientError::AllNodesUnreachable { tried }
}
