//! The HTTP API (hyper, HTTP/1.1). Routing is a match on method and path segments; every error
//! is `{"error":{"code":"...","message":"..."}}` with the status its code maps to.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tern_actors::{ActorKind, Invocation};
use tern_tenancy::{Action, TenantName, TenantSpec};
use tern_wire::peer::TenancyRecords;
use tern_wire::{ApiError, ErrorCode, FunctionName, InvocationId, TraceParent};

use crate::traces;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::app::App;
use crate::auth::Caller;
use crate::error::NodeError;
use crate::self_wake::RepollOnSelfWake;
use crate::service;
use crate::streamed::{CutShort, Streamed, StreamedBody};

type Body = Full<Bytes>;

/// Fields a component set after its body, carried on its response (as an extension) to
/// [`Sent`], which sends them after the body.
#[derive(Clone)]
struct Trailers(hyper::HeaderMap);

/// What a connection sends: a response's bytes at once, then a component's trailers if it set
/// any, or a component's answer as it is written ([`Streamed`]). With trailers the length is
/// left unknown, so hyper frames the body in chunks, the only HTTP/1.1 framing with room for
/// trailers; the node adds them only for callers that asked with `TE: trailers`.
enum Sent {
    Whole {
        body: Body,
        trailers: Option<hyper::HeaderMap>,
    },
    Streamed(Box<Streamed>),
}

impl Sent {
    fn new(resp: Response<Body>) -> Response<Self> {
        let (mut parts, body) = resp.into_parts();
        if let Some(streamed) = parts
            .extensions
            .remove::<StreamedBody>()
            .and_then(|s| s.take())
        {
            return Response::from_parts(parts, Sent::Streamed(Box::new(streamed)));
        }
        let trailers = parts.extensions.remove::<Trailers>().map(|t| t.0);
        Response::from_parts(parts, Sent::Whole { body, trailers })
    }
}

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = CutShort;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, CutShort>>> {
        match &mut *self {
            Sent::Whole { body, trailers } => match std::pin::Pin::new(body).poll_frame(cx) {
                std::task::Poll::Ready(None) => std::task::Poll::Ready(
                    trailers.take().map(|t| Ok(hyper::body::Frame::trailers(t))),
                ),
                std::task::Poll::Ready(Some(Ok(frame))) => std::task::Poll::Ready(Some(Ok(frame))),
                std::task::Poll::Ready(Some(Err(never))) => match never {},
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
            Sent::Streamed(streamed) => std::pin::Pin::new(&mut **streamed).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Sent::Whole { body, trailers } => trailers.is_none() && body.is_end_stream(),
            Sent::Streamed(streamed) => streamed.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Sent::Whole {
                body,
                trailers: None,
            } => body.size_hint(),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

/// The request headers or trailers a component sees: all but those it never sees.
fn fields_for_component(map: &hyper::HeaderMap) -> tern_wire::HttpFields {
    map.iter()
        .filter(|(name, _)| !HIDDEN_FROM_COMPONENTS.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// Whether the caller said it takes trailers: an HTTP/1.1 request with `TE: trailers`, and a
/// method whose answer has a body.
fn accepts_trailers<B>(req: &Request<B>) -> bool {
    can_stream_answer(req)
        && req.headers().get_all(hyper::header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|t| {
                    t.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("trailers")
                })
            })
        })
}

/// Whether an answer to `req` can go out as it is written: an HTTP/1.1 request (chunked
/// framing) whose answer has a body.
fn can_stream_answer<B>(req: &Request<B>) -> bool {
    req.version() == hyper::Version::HTTP_11 && req.method() != Method::HEAD
}

/// Accepts connections until `shutdown` flips to true, then lets open connections finish their
/// current request.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let header_timeout = Duration::from_millis(app.config.header_read_timeout_ms);
    let mut connections = tokio::task::JoinSet::new();
    let open = Arc::new(OpenConnections::new(
        app.config.max_connections,
        app.config.max_connections_per_ip,
    ));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with the node's uptime.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let Some(counted) = open.admit(peer.ip()) else {
            refuse_connection(&stream);
            app.services()
                .metrics
                .http_connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut shutdown = shutdown.clone();
        // hyper passes the request body to the service inside this task, which wakes the
        // task while it runs: poll again at once rather than through the scheduler.
        connections.spawn(RepollOnSelfWake::new(async move {
            let _counted = counted;
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(Sent::new(route(app, req).await)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }));
    }
    drop(listener);
    // Open connections finish their current request; give them 10 s, then cut them.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        connections.shutdown().await;
    }
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    // Before anything else, the body included: a caller without a valid token learns nothing
    // and costs no more than this check.
    let need = crate::auth::need(&method, &segments);
    let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let caller = match app.auth.caller(authorization, need, &app.tenants) {
        Ok(caller) => caller,
        Err(e) => {
            let e = e.to_api();
            let tenant = (e.code == ErrorCode::Forbidden)
                .then(|| app.auth.tenant_of(authorization))
                .flatten();
            crate::service::count_refusal(&app, e.code, tenant.as_ref());
            return error_response(&e);
        }
    };
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::POST, ["v1", "tokens"]) => create_token(&app, req).await,
        (&Method::GET, ["v1", "tokens"]) => list_tokens(&app, &req),
        (&Method::DELETE, ["v1", "tokens", id]) => revoke_token(&app, id),
        (&Method::GET, ["v1", "tenants"]) => Ok(json(StatusCode::OK, &app.tenants.list())),
        (&Method::POST, ["v1", "tenants"]) => create_tenant(&app, req).await,
        (&Method::GET, ["v1", "tenants", name]) => get_tenant(&app, &caller, name),
        (&Method::PUT, ["v1", "tenants", name]) => update_tenant(&app, name, req).await,
        (&Method::DELETE, ["v1", "tenants", name]) => remove_tenant(&app, name).await,
        (&Method::GET, ["metrics"]) => Ok(metrics(&app).await),
        (&Method::GET, ["v1", "functions"]) => Ok(list_functions(&app, &caller)),
        (&Method::PUT, ["v1", "functions", name]) => deploy(&app, &caller, name, req).await,
        (&Method::GET, ["v1", "functions", name]) => get_function(&app, &caller, name),
        (&Method::GET, ["v1", "functions", name, "logs"]) => logs(&app, &caller, name, &req),
        (&Method::DELETE, ["v1", "functions", name]) => remove(&app, &caller, name).await,
        (&Method::POST, ["v1", "functions", name, "invoke"]) => {
            // Server-side time on every answer, errors included, so clients can tell queueing
            // and network time apart from the node's.
            let started = Instant::now();
            let mut resp = invoke(&app, &caller, name, req)
                .await
                .unwrap_or_else(|e| node_error_response(&e));
            resp.headers_mut().insert(
                "x-tern-duration-us",
                HeaderValue::from(started.elapsed().as_micros() as u64),
            );
            Ok(resp)
        }
        (_, ["fn", name, ..]) => {
            let started = Instant::now();
            let mut resp = call_component(&app, &caller, name, req)
                .await
                .unwrap_or_else(|e| node_error_response(&e));
            resp.headers_mut().insert(
                "x-tern-duration-us",
                HeaderValue::from(started.elapsed().as_micros() as u64),
            );
            Ok(resp)
        }
        (&Method::GET, ["v1", "invocations", id]) => get_invocation(&app, &caller, id).await,
        (&Method::GET, ["v1", "cluster"]) => Ok(cluster(&app)),
        (
            _,
            ["healthz"]
            | ["metrics"]
            | ["v1", "cluster"]
            | ["v1", "functions", ..]
            | ["v1", "invocations", _]
            | ["v1", "tokens"]
            | ["v1", "tokens", _]
            | ["v1", "tenants"]
            | ["v1", "tenants", _],
        ) => Err(NodeError::MethodNotAllowed),
        _ => Err(NodeError::NotFound(format!("no route for {method} {path}"))),
    };
    result.unwrap_or_else(|e| {
        crate::service::count_refusal(&app, e.to_api().code, Some(&caller.tenant()));
        node_error_response(&e)
    })
}

/// `POST /v1/tokens` with `{"role": "admin" | "developer" | "invoker"}` and optionally
/// `"tenant"` (a live tenant; `default` if absent): the new token, shown this once.
async fn create_token(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, NodeError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NewToken {
        role: String,
        tenant: Option<String>,
    }
    #[derive(Serialize)]
    struct Created {
        #[serde(flatten)]
        info: tern_tenancy::TokenInfo,
        /// The secret: shown once, stored nowhere.
        token: String,
    }
    let body = read_body(app, req, 4096).await?;
    let asked: NewToken = serde_json::from_slice(&body).map_err(|e| {
        NodeError::BadRequest(format!(
            "expected {{\"role\": \"admin\" | \"developer\" | \"invoker\"}}: {e}"
        ))
    })?;
    let role: tern_tenancy::Role = asked
        .role
        .parse()
        .map_err(|e: tern_tenancy::Error| NodeError::BadRequest(e.to_string()))?;
    let tenant = match asked.tenant {
        Some(t) => t
            .parse()
            .map_err(|e: tern_tenancy::Error| NodeError::BadRequest(e.to_string()))?,
        None => tern_tenancy::TenantName::default_tenant(),
    };
    let (secret, record) = app.auth.create(tenant, role, &app.tenants)?;
    app.tenancy_changed_here(TenancyRecords {
        tenants: Vec::new(),
        tokens: vec![record.clone()],
    });
    Ok(json(
        StatusCode::CREATED,
        &Created {
            info: record.info(),
            token: secret.expose().to_owned(),
        },
    ))
}

/// `DELETE /v1/tokens/{id}`: the token never authenticates again.
fn revoke_token(app: &Arc<App>, id: &str) -> Result<Response<Body>, NodeError> {
    let id: tern_tenancy::TokenId = id
        .parse()
        .map_err(|e: tern_tenancy::Error| NodeError::BadRequest(e.to_string()))?;
    let record = app.auth.revoke(&id)?;
    app.tenancy_changed_here(TenancyRecords {
        tenants: Vec::new(),
        tokens: vec![record.clone()],
    });
    Ok(json(StatusCode::OK, &record.info()))
}

/// `GET /v1/tokens`, or `?tenant=NAME` for one tenant's.
fn list_tokens(app: &Arc<App>, req: &Request<Incoming>) -> Result<Response<Body>, NodeError> {
    let tenant = query(req)
        .get("tenant")
        .map(|t| parse_tenant(t))
        .transpose()?;
    Ok(json(StatusCode::OK, &app.auth.list(tenant.as_ref())))
}

fn parse_tenant(name: &str) -> Result<TenantName, NodeError> {
    name.parse()
        .map_err(|e: tern_tenancy::Error| NodeError::BadRequest(e.to_string()))
}

/// A tenant's settings as `POST /v1/tenants` and `PUT /v1/tenants/{name}` take them. Every
/// field is optional: what is left out keeps its current value (its default for a new
/// tenant). `quotas` takes any subset of the quota fields.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    name: Option<String>,
    weight: Option<u32>,
    sla: Option<String>,
    quotas: Option<serde_json::Map<String, serde_json::Value>>,
}

impl TenantBody {
    async fn read(app: &App, req: Request<Incoming>) -> Result<Self, NodeError> {
        let body = read_body(app, req, 16 << 10).await?;
        serde_json::from_slice(&body).map_err(|e| {
            NodeError::BadRequest(format!(
                "expected {{\"name\", \"weight\", \"sla\", \"quotas\": {{...}}}}: {e}"
            ))
        })
    }

    /// `base` with this body's changes.
    fn apply(self, mut spec: TenantSpec) -> Result<TenantSpec, NodeError> {
        let bad = |e: tern_tenancy::Error| NodeError::BadRequest(e.to_string());
        if let Some(w) = self.weight {
            spec.weight = tern_tenancy::Weight::new(w).map_err(bad)?;
        }
        if let Some(sla) = self.sla {
            spec.sla = sla.parse().map_err(bad)?;
        }
        if let Some(changes) = self.quotas {
            // Through JSON so that the quotas' own decoding (which validates) has the last
            // word, and an unknown field is an error rather than ignored.
            let mut quotas = match serde_json::to_value(&spec.quotas) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(NodeError::BadRequest("cannot read the quotas".into())),
            };
            for (k, v) in changes {
                if !quotas.contains_key(&k) {
                    return Err(NodeError::BadRequest(format!(
                        "unknown quota {k:?}; known: {}",
                        quotas.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                quotas.insert(k, v);
            }
            spec.quotas = serde_json::from_value(serde_json::Value::Object(quotas))
                .map_err(|e| NodeError::BadRequest(format!("invalid quotas: {e}")))?;
        }
        Ok(spec)
    }
}

/// A tenant as the API shows it: its record and what it uses.
#[derive(Serialize)]
struct TenantView {
    #[serde(flatten)]
    tenant: tern_tenancy::Tenant,
    usage: tern_tenancy::Usage,
}

/// `POST /v1/tenants`: a new tenant (201), announced to the cluster.
async fn create_tenant(
    app: &Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let body = TenantBody::read(app, req).await?;
    let name = parse_tenant(
        body.name
            .as_deref()
            .ok_or_else(|| NodeError::BadRequest("a new tenant needs a \"name\"".into()))?,
    )?;
    let spec = body.apply(TenantSpec::default())?;
    let entry = app.tenants.create(name, spec, crate::clock::wall_ms())?;
    app.tenancy_changed_here(TenancyRecords {
        tenants: vec![entry.clone()],
        tokens: Vec::new(),
    });
    Ok(json(
        StatusCode::CREATED,
        &TenantView {
            usage: app.tenant_usage(entry.name()),
            tenant: entry.tenant,
        },
    ))
}

/// `GET /v1/tenants/{name}`: for admins, and for the tenant's own developers.
fn get_tenant(app: &Arc<App>, caller: &Caller, name: &str) -> Result<Response<Body>, NodeError> {
    let name = parse_tenant(name)?;
    let missing = || crate::tenants::no_such_tenant(&name);
    caller.may_or(Action::ReadTenant, Some(&name), missing)?;
    let tenant = app.tenants.get(&name).ok_or_else(missing)?;
    Ok(json(
        StatusCode::OK,
        &TenantView {
            usage: app.tenant_usage(&name),
            tenant,
        },
    ))
}

/// `PUT /v1/tenants/{name}`: changes a live tenant's weight, class or quotas.
async fn update_tenant(
    app: &Arc<App>,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let name = parse_tenant(name)?;
    let body = TenantBody::read(app, req).await?;
    if body.name.as_deref().is_some_and(|n| n != name.as_str()) {
        return Err(NodeError::BadRequest(
            "a tenant cannot be renamed; create another".into(),
        ));
    }
    let current = app
        .tenants
        .get(&name)
        .ok_or_else(|| crate::tenants::no_such_tenant(&name))?;
    let spec = body.apply(current.spec)?;
    let entry = app.tenants.update(&name, spec, crate::clock::wall_ms())?;
    app.tenancy_changed_here(TenancyRecords {
        tenants: vec![entry.clone()],
        tokens: Vec::new(),
    });
    Ok(json(
        StatusCode::OK,
        &TenantView {
            usage: app.tenant_usage(&name),
            tenant: entry.tenant,
        },
    ))
}

/// `DELETE /v1/tenants/{name}`: removes a tenant that owns no function (409 otherwise) and
/// revokes its tokens.
async fn remove_tenant(app: &Arc<App>, name: &str) -> Result<Response<Body>, NodeError> {
    let name = parse_tenant(name)?;
    let app = app.clone();
    let entry = crate::app::to_completion(async move { app.remove_tenant(&name).await }).await?;
    Ok(json(StatusCode::OK, &entry.tenant))
}

/// `GET /v1/functions`: the caller's tenant's functions (every tenant's for an admin).
fn list_functions(app: &Arc<App>, caller: &Caller) -> Response<Body> {
    json(StatusCode::OK, &service::list_views(app, caller))
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

fn query_u32(q: &HashMap<String, String>, key: &str) -> Result<Option<u32>, NodeError> {
    q.get(key)
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| NodeError::BadRequest(format!("{key} must be a non-negative integer")))
        })
        .transpose()
}

fn query_flag(q: &HashMap<String, String>, key: &str) -> Result<bool, NodeError> {
    match q.get(key).map(String::as_str) {
        None | Some("0") | Some("false") => Ok(false),
        Some("") | Some("1") | Some("true") => Ok(true),
        Some(other) => Err(NodeError::BadRequest(format!(
            "{key} must be 1, 0, true or false, not {other:?}"
        ))),
    }
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit` — from the
/// Content-Length header before reading anything, or while streaming otherwise — and
/// within its deadline: `body_read_timeout_ms` plus its declared length (else `limit`) at
/// `min_body_bytes_per_sec`, so a stalled or trickling upload cannot hold the request.
async fn read_body(app: &App, req: Request<Incoming>, limit: usize) -> Result<Bytes, NodeError> {
    read_body_and_trailers(app, req, limit)
        .await
        .map(|(body, _)| body)
}

/// [`read_body`], and the trailers the caller sent after a chunked body (hyper bounds them as
/// it bounds headers: their count and 16 KiB).
async fn read_body_and_trailers(
    app: &App,
    req: Request<Incoming>,
    limit: usize,
) -> Result<(Bytes, Option<hyper::HeaderMap>), NodeError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(NodeError::BodyTooLarge { limit });
    }
    let c = &app.config;
    let expected = declared.unwrap_or(limit as u64);
    let allowed_ms = c
        .body_read_timeout_ms
        .saturating_add(expected.saturating_mul(1000) / c.min_body_bytes_per_sec);
    let read = Limited::new(req.into_body(), limit).collect();
    let collected = tokio::time::timeout(Duration::from_millis(allowed_ms), read)
        .await
        .map_err(|_| NodeError::BodyTimeout { allowed_ms })?;
    match collected {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            Ok((collected.to_bytes(), trailers))
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(NodeError::BodyTooLarge { limit })
        }
        Err(e) => Err(NodeError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// Open HTTP connections, in all and per IP address, against their caps.
struct OpenConnections {
    max: usize,
    max_per_ip: usize,
    counts: std::sync::Mutex<(usize, HashMap<std::net::IpAddr, usize>)>,
}

impl OpenConnections {
    fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max,
            max_per_ip,
            counts: std::sync::Mutex::default(),
        }
    }

    /// Counts a new connection from `ip`, or `None` if a cap is reached.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<CountedConnection> {
        let mut counts = tern_sync::poison::lock(&self.counts);
        let from_ip = counts.1.get(&ip).copied().unwrap_or(0);
        if counts.0 >= self.max || from_ip >= self.max_per_ip {
            return None;
        }
        counts.0 += 1;
        counts.1.insert(ip, from_ip + 1);
        Some(CountedConnection {
            open: self.clone(),
            ip,
        })
    }
}

/// One open connection; uncounted when its task ends.
struct CountedConnection {
    open: Arc<OpenConnections>,
    ip: std::net::IpAddr,
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        let mut counts = tern_sync::poison::lock(&self.open.counts);
        counts.0 = counts.0.saturating_sub(1);
        if let Some(n) = counts.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.1.remove(&self.ip);
            }
        }
    }
}

/// Answers a connection over a cap with 429 `overloaded` and closes it, without waiting: the
/// answer is written only if the socket takes it at once.
fn refuse_connection(stream: &tokio::net::TcpStream) {
    let body = ApiError::new(
        ErrorCode::Overloaded,
        "too many open connections; retry later",
    )
    .to_json();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

async fn deploy(
    app: &Arc<App>,
    caller: &Caller,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let deploy = service::Deploy::authorize(app, caller, name)?;
    let q = query(&req);
    let limits = crate::app::FunctionLimits {
        timeout_ms: query_u32(&q, "timeout_ms")?,
        memory_mb: query_u32(&q, "memory_mb")?,
        max_instances: query_u32(&q, "max_instances")?,
    };
    let bytes = read_body(app, req, app.config.max_module_bytes).await?;
    let kind = tern_runtime::kind_of(&bytes);
    let info = deploy.run(app, bytes, limits).await?;
    Ok(json(
        StatusCode::CREATED,
        &service::FunctionView { info, kind },
    ))
}

fn get_function(app: &Arc<App>, caller: &Caller, name: &str) -> Result<Response<Body>, NodeError> {
    Ok(json(StatusCode::OK, &service::describe(app, caller, name)?))
}

/// `GET /v1/functions/{name}/logs?after=SEQ&limit=N`: the function's guest stderr lines on
/// this node.
fn logs(
    app: &Arc<App>,
    caller: &Caller,
    name: &str,
    req: &Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let q = query(req);
    let number = |key: &str, default: u64| -> Result<u64, NodeError> {
        q.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                NodeError::BadRequest(format!("{key} must be a whole number, not {v:?}"))
            })
        })
    };
    let after = number("after", 0)?;
    let limit = number("limit", 1000)?;
    let page = service::logs(
        app,
        caller,
        name,
        after,
        usize::try_from(limit).unwrap_or(usize::MAX),
    )?;
    Ok(json(StatusCode::OK, &page))
}

async fn remove(app: &Arc<App>, caller: &Caller, name: &str) -> Result<Response<Body>, NodeError> {
    Ok(json(
        StatusCode::OK,
        &service::remove(app, caller, name).await?,
    ))
}

async fn invoke(
    app: &Arc<App>,
    caller: &Caller,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let call = service::Invoke::admit(app, caller, name)?;
    let q = query(&req);
    let map = query_flag(&q, "map")?;
    let asynchronous = match q.get("mode").map(String::as_str) {
        None | Some("sync") => false,
        Some("async") => true,
        Some(other) => {
            return Err(NodeError::BadRequest(format!(
                "mode must be sync or async, not {other:?}"
            )));
        }
    };
    run_call(app, call, asynchronous, CallShape::Plain { map }, req).await
}

/// Request headers a component does not see: the caller's Tern token, and the hop-by-hop
/// headers of the connection to this node.
const HIDDEN_FROM_COMPONENTS: [&str; 9] = [
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Response headers of a component the node does not pass on: hop-by-hop ones, and those the
/// node sets itself from the body it sends.
const NOT_PASSED_ON: [&str; 7] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Fields HTTP does not let a trailer carry (they frame, route, authenticate or describe the
/// whole message; hyper refuses to send them after a body), besides [`NOT_PASSED_ON`].
const NOT_SENT_AS_TRAILERS: [&str; 9] = [
    "authorization",
    "cache-control",
    "content-encoding",
    "content-range",
    "content-type",
    "host",
    "max-forwards",
    "set-cookie",
    "te",
];

/// `{ANY} /fn/{name}/{path…}`: an HTTP request for a `wasi:http/proxy` component. The
/// component sees the method, `/{path…}` with the query, the headers (less the caller's token
/// and hop-by-hop ones) and the body; its status, headers and body are the answer. It is
/// placed, forwarded and failed over like any invocation; errors before or around the guest
/// are the API's typed errors. With `x-tern-mode: async` (the query is the component's) the
/// call is journaled and answered 202 like `?mode=async`, and its result is the response.
async fn call_component(
    app: &Arc<App>,
    caller: &Caller,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let call = service::Invoke::admit(app, caller, name)?;
    let asynchronous = match req.headers().get("x-tern-mode").map(HeaderValue::as_bytes) {
        None | Some(b"sync") => false,
        Some(b"async") => true,
        Some(other) => {
            return Err(NodeError::BadRequest(format!(
                "x-tern-mode must be sync or async, not {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let shape = CallShape::component(&req);
    run_call(app, call, asynchronous, shape, req).await
}

/// How a call's input is made from the request and its answer sent back.
enum CallShape {
    /// `POST /v1/functions/{name}/invoke`: the body is the input, the output the body.
    Plain { map: bool },
    /// The `/fn/` route: the request is a component's `HttpCall` (its body read later), the
    /// output the component's `HttpAnswer`.
    Component {
        method: String,
        path_and_query: String,
        headers: Vec<(String, Vec<u8>)>,
        /// Whether the component's trailers are sent back ([`accepts_trailers`]).
        accepts_trailers: bool,
        /// Whether the answer is sent as it is written, when it runs on this node (not for
        /// `HEAD`, whose answer has no body to wait for, nor for HTTP/1.0, which could not
        /// tell a body cut short from a whole one).
        streams: bool,
    },
}

impl CallShape {
    fn component(req: &Request<Incoming>) -> Self {
        // What follows `/fn/{name}`, as the caller sent it: the path the component sees.
        let mut path_and_query = match req
            .uri()
            .path()
            .trim_start_matches('/')
            .splitn(3, '/')
            .nth(2)
        {
            Some(rest) => format!("/{rest}"),
            None => "/".to_owned(),
        };
        if let Some(q) = req.uri().query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        CallShape::Component {
            method: req.method().as_str().to_owned(),
            accepts_trailers: accepts_trailers(req),
            streams: can_stream_answer(req),
            path_and_query,
            headers: fields_for_component(req.headers()),
        }
    }
}

/// One invocation over HTTP, whatever its shape: the request id (a valid `x-tern-request-id`
/// is passed through), the trace (a valid W3C `traceparent` is continued), then the call.
async fn run_call(
    app: &Arc<App>,
    call: service::Invoke,
    asynchronous: bool,
    shape: CallShape,
    req: Request<Incoming>,
) -> Result<Response<Body>, NodeError> {
    let request_id = req
        .headers()
        .get("x-tern-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<InvocationId>().ok())
        .unwrap_or_else(|| app.ids.next());
    // W3C Trace Context; a malformed header is ignored, as the specification asks.
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TraceParent::parse(v).ok());
    let mode = if asynchronous { "async" } else { "sync" };
    let trace = traces::invoke("http", parent.as_ref(), call.name(), mode);
    trace.record("request_id", request_id.as_str());
    let result = run_call_traced(app, call, request_id, asynchronous, shape, req, &trace).await;
    if let Err(e) = &result {
        traces::failed(&trace, e);
    }
    result
}

async fn run_call_traced(
    app: &Arc<App>,
    call: service::Invoke,
    request_id: InvocationId,
    asynchronous: bool,
    shape: CallShape,
    req: Request<Incoming>,
    trace: &tracing::Span,
) -> Result<Response<Body>, NodeError> {
    // Admitted before the body is read: a full node refuses at once instead of taking in
    // megabytes it would then refuse.
    let permit = traces::admission(trace).in_scope(|| app.pipeline.admit())?;
    let (body, trailers) = read_body_and_trailers(app, req, app.config.max_body_bytes).await?;
    let name = call.with_input(app, &body)?;
    // For a component, whether its trailers go back to the caller and whether its answer is
    // sent as it is written.
    let (input, map, component) = match shape {
        CallShape::Plain { map } => (body, map, None),
        CallShape::Component {
            method,
            path_and_query,
            headers,
            accepts_trailers,
            streams,
        } => {
            let input = tern_wire::HttpCall {
                method,
                path_and_query,
                headers,
                body: body.to_vec(),
                trailers: trailers
                    .as_ref()
                    .map(fields_for_component)
                    .unwrap_or_default(),
            }
            .encode()
            .map_err(|e| NodeError::BadRequest(format!("cannot pass the request on: {e}")))?;
            (Bytes::from(input), false, Some((accepts_trailers, streams)))
        }
    };
    if asynchronous {
        let under = tern_telemetry::traceparent(trace);
        let id = app
            .accept_async_admitted(name, input, map, permit, under)
            .await?;
        let mut resp = json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id }));
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/invocations/{id}")) {
            resp.headers_mut().insert(LOCATION, v);
        }
        return Ok(resp);
    }
    // A component's answer is taken as it is written, wherever it runs (see `streamed`).
    let (stream, parts) = match component {
        Some((_, true)) => {
            let (stream, parts) = tern_runtime::AnswerStream::new();
            (stream, Some(parts))
        }
        _ => (tern_runtime::AnswerStream::default(), None),
    };
    let invocation = Invocation {
        request_id: request_id.as_str().into(),
        function: name,
        input,
        map,
        trace: trace.clone(),
        stream,
    };
    let result = match (parts, component) {
        (Some(parts), Some((accepts_trailers, _))) => {
            let run_app = app.clone();
            let run: crate::streamed::Run =
                Box::pin(async move { run_app.pipeline.invoke_admitted(invocation, permit).await });
            match first_part(parts, run).await {
                Head::Streamed {
                    parts,
                    run,
                    status,
                    headers,
                    cold_start,
                    node,
                } => {
                    return streamed_response(
                        app,
                        &request_id,
                        trace,
                        parts,
                        run,
                        (status, headers, cold_start, node),
                        accepts_trailers,
                    );
                }
                Head::Whole(result) => result,
            }
        }
        _ => app.pipeline.invoke_admitted(invocation, permit).await,
    };
    traces::outcome(trace, &result);
    let outcome = result?;
    let mut resp = if let Some((accepts_trailers, _)) = component {
        component_response(&outcome.output, accepts_trailers)?
    } else {
        let mut resp = Response::new(Full::new(outcome.output));
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert("x-tern-meus", HeaderValue::from(outcome.meus as u64));
        resp
    };
    insert_run_headers(
        resp.headers_mut(),
        outcome.cold_start,
        &outcome.node,
        &request_id,
    );
    Ok(resp)
}

/// The headers every answer to an invocation carries: whether it was a cold start, the node
/// that ran it, and the request id.
fn insert_run_headers(
    h: &mut hyper::HeaderMap,
    cold_start: bool,
    node: &str,
    request_id: &InvocationId,
) {
    h.insert(
        "x-tern-cold-start",
        HeaderValue::from_static(if cold_start { "true" } else { "false" }),
    );
    if let Ok(v) = HeaderValue::from_str(node) {
        h.insert("x-tern-node", v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        h.insert("x-tern-request-id", v);
    }
}

/// How a component's call is answered: as it is written (the run sent its head), or whole.
enum Head {
    Streamed {
        parts: tokio::sync::mpsc::UnboundedReceiver<tern_wire::AnswerPart>,
        /// The run going on, or its result if it has ended.
        run: Result<crate::streamed::Run, Result<tern_actors::Outcome, tern_actors::Error>>,
        status: u16,
        headers: tern_wire::HttpFields,
        cold_start: bool,
        /// The node that ran it, if not this one.
        node: Option<String>,
    },
    Whole(Result<tern_actors::Outcome, tern_actors::Error>),
}

/// Waits for the run's head or its result, whichever comes first; a head already sent wins
/// over a result that came with it (the result of a streamed run has no body).
async fn first_part(
    mut parts: tokio::sync::mpsc::UnboundedReceiver<tern_wire::AnswerPart>,
    mut run: crate::streamed::Run,
) -> Head {
    // The run as it stands: going on, or ended with this result.
    let (first, run) = tokio::select! {
        biased;
        part = parts.recv() => (part, Ok(run)),
        result = &mut run => (parts.try_recv().ok(), Err(result)),
    };
    match (first, run) {
        (
            Some(tern_wire::AnswerPart::Head {
                status,
                headers,
                cold_start,
                node,
            }),
            run,
        ) => Head::Streamed {
            parts,
            run,
            status,
            headers,
            cold_start,
            node,
        },
        // Closed before a head (the run answers whole, here or on another node, or failed
        // before its head), or a part out of order: the run's own result is the answer.
        (_, Ok(run)) => Head::Whole(run.await),
        (_, Err(result)) => Head::Whole(result),
    }
}

/// The response of a call whose run sent its head: the status and headers now, the body as it
/// comes.
fn streamed_response(
    app: &Arc<App>,
    request_id: &InvocationId,
    trace: &tracing::Span,
    parts: tokio::sync::mpsc::UnboundedReceiver<tern_wire::AnswerPart>,
    run: Result<crate::streamed::Run, Result<tern_actors::Outcome, tern_actors::Error>>,
    (status, headers, cold_start, node): (u16, tern_wire::HttpFields, bool, Option<String>),
    accepts_trailers: bool,
) -> Result<Response<Body>, NodeError> {
    // A cell's head is checked as a whole answer from it would be (the run is cancelled).
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| {
            NodeError::BadComponentAnswer(format!("the component answered with status {status}"))
        })?;
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    // The trailers are not known yet: those the component announced in its own `Trailer`
    // header are the ones hyper will send.
    append_component_headers(resp.headers_mut(), &headers, accepts_trailers);
    let node = node.as_deref().unwrap_or(&app.config.node_name);
    insert_run_headers(resp.headers_mut(), cold_start, node, request_id);
    let trace = trace.clone();
    let body = Streamed::new(
        parts,
        run,
        if accepts_trailers {
            trailers_for_caller
        } else {
            |_| hyper::HeaderMap::new()
        },
        Box::new(move |result, complete| {
            traces::outcome(&trace, result);
            if result.is_ok() && !complete {
                traces::failed(&trace, &"the run ended before its answer did");
            }
        }),
    );
    resp.extensions_mut().insert(StreamedBody::new(body));
    Ok(resp)
}

/// A component's headers onto `h`, less those the node sets itself; its `Trailer` header too
/// when `announced_trailers` (a streamed answer to a caller that takes trailers).
fn append_component_headers(
    h: &mut hyper::HeaderMap,
    headers: &tern_wire::HttpFields,
    announced_trailers: bool,
) {
    fields_onto(h, headers, |name| {
        NOT_PASSED_ON.contains(&name) && !(announced_trailers && name == "trailer")
    });
}

/// A component's trailers as a caller that takes trailers is sent them: less the names HTTP
/// does not allow in trailers.
fn trailers_for_caller(trailers: &tern_wire::HttpFields) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    fields_onto(&mut map, trailers, |name| {
        NOT_PASSED_ON.contains(&name) || NOT_SENT_AS_TRAILERS.contains(&name)
    });
    map
}

/// Appends a component's fields to `map`, less those `skip` names. wasi:http checked names and
/// values when the guest set them; one that is still not valid HTTP is skipped, not sent.
fn fields_onto(
    map: &mut hyper::HeaderMap,
    fields: &tern_wire::HttpFields,
    skip: impl Fn(&str) -> bool,
) {
    for (name, value) in fields {
        if skip(name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
}

/// The HTTP response a component's answer (`output`) stands for: its status, headers (less
/// those the node sets itself) and body, and its trailers for a caller that takes them (less
/// those HTTP does not allow in trailers).
fn component_response(output: &[u8], accepts_trailers: bool) -> Result<Response<Body>, NodeError> {
    let answer = match tern_wire::HttpAnswer::decode(output) {
        Some(Ok(answer)) => answer,
        Some(Err(e)) => {
            return Err(NodeError::BadComponentAnswer(format!(
                "the component's answer did not decode: {e}"
            )));
        }
        None => {
            return Err(NodeError::BadComponentAnswer(
                "the function answered with something other than an HTTP response".into(),
            ));
        }
    };
    let status = StatusCode::from_u16(answer.status).map_err(|_| {
        NodeError::BadComponentAnswer(format!(
            "the component answered with status {}",
            answer.status
        ))
    })?;
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = status;
    append_component_headers(resp.headers_mut(), &answer.headers, false);
    let h = resp.headers_mut();
    let trailers = if accepts_trailers {
        trailers_for_caller(&answer.trailers)
    } else {
        hyper::HeaderMap::new()
    };
    if !trailers.is_empty() {
        // Announced, as HTTP asks of a sender of trailers.
        let names: Vec<&str> = trailers.keys().map(|n| n.as_str()).collect();
        if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
            h.insert(hyper::header::TRAILER, v);
        }
        resp.extensions_mut().insert(Trailers(trailers));
    }
    Ok(resp)
}

/// `GET /v1/invocations/{id}` body.
#[derive(Serialize)]
struct InvocationView<'a> {
    id: &'a InvocationId,
    function: &'a FunctionName,
    status: tern_wire::InvocationStatus,
    /// The guest's stdout if it is UTF-8.
    result: Option<String>,
    /// The guest's stdout, base64, if it is not UTF-8.
    result_base64: Option<String>,
    /// A component's response to a call at its `/fn/` route (then `result` is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<ResponseView>,
    error: Option<&'a ApiError>,
    accepted_at_ms: u64,
    finished_at_ms: Option<u64>,
    attempts: u32,
}

/// A component's stored response.
#[derive(Serialize)]
struct ResponseView {
    status: u16,
    /// Values decoded as UTF-8, invalid bytes replaced.
    headers: Vec<(String, String)>,
    /// The body if it is UTF-8.
    body: Option<String>,
    /// The body, base64, if it is not UTF-8.
    body_base64: Option<String>,
    /// Fields the component set after the body, values as `headers`' (absent if none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    trailers: Vec<(String, String)>,
}

/// `bytes` as UTF-8 text, or else as base64.
fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_owned()), None),
        Err(_) => (None, Some(base64(bytes))),
    }
}

async fn get_invocation(
    app: &Arc<App>,
    caller: &Caller,
    id: &str,
) -> Result<Response<Body>, NodeError> {
    let id: InvocationId = id
        .parse()
        .map_err(|e: tern_wire::WireError| NodeError::BadRequest(e.to_string()))?;
    let record = service::invocation(app, caller, &id).await?;
    let answer = record
        .output
        .as_deref()
        .and_then(tern_wire::HttpAnswer::decode)
        .and_then(Result::ok);
    let (result, result_base64) = match (&record.output, &answer) {
        (Some(bytes), None) => text_or_base64(bytes),
        _ => (None, None),
    };
    let response = answer.map(|a| {
        let (body, body_base64) = text_or_base64(&a.body);
        ResponseView {
            status: a.status,
            headers: a
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            body,
            body_base64,
            trailers: a
                .trailers
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }
    });
    Ok(json(
        StatusCode::OK,
        &InvocationView {
            id: &record.id,
            function: &record.function,
            status: record.status,
            result,
            result_base64,
            response,
            error: record.error.as_ref(),
            accepted_at_ms: record.accepted_at_ms,
            finished_at_ms: record.finished_at_ms,
            attempts: record.attempts,
        },
    ))
}

/// The trace exporter's counters (zero while export is off).
/// The OTLP export counters of one signal: `prefix` (`tern_trace_spans`) and what it counts
/// (`Trace spans`).
fn otlp_export_metrics(prefix: &str, what: &str, stats: &tern_telemetry::ExportStats) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    for (outcome, help, value) in [
        (
            "exported",
            "accepted by the OTLP receiver.",
            &stats.exported,
        ),
        (
            "dropped",
            "dropped because the export queue was full.",
            &stats.dropped,
        ),
        (
            "failed",
            "sent but not accepted (receiver down, refused, timed out).",
            &stats.failed,
        ),
    ] {
        let name = format!("{prefix}_{outcome}_total");
        let help = format!("{what} {help}");
        out += &format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            value.load(Relaxed)
        );
    }
    out
}

async fn metrics(app: &Arc<App>) -> Response<Body> {
    app.publish_store_gauges();
    let services = app.services();
    let (tx, rx) = oneshot::channel();
    let via_actor = ractor::ActorRef::<tern_actors::metrics_collector::MetricsMsg>::where_is(
        services.name(ActorKind::MetricsCollector),
    )
    .is_some_and(|a| {
        a.cast(tern_actors::metrics_collector::MetricsMsg::Render(tx))
            .is_ok()
    });
    let body = match via_actor {
        true => match tokio::time::timeout(Duration::from_secs(2), rx).await {
            Ok(Ok(text)) => text,
            _ => tern_actors::metrics_collector::render(services),
        },
        // While the collector restarts, render directly: metrics must stay scrapeable.
        false => tern_actors::metrics_collector::render(services),
    };
    let (log_functions, log_bytes) = services.runtime.logs().usage();
    let body = body
        + &format!(
            "# HELP tern_guest_log_functions Functions with guest stderr lines kept on this node.\n\
             # TYPE tern_guest_log_functions gauge\ntern_guest_log_functions {log_functions}\n\
             # HELP tern_guest_log_bytes Bytes of guest stderr lines kept on this node.\n\
             # TYPE tern_guest_log_bytes gauge\ntern_guest_log_bytes {log_bytes}\n"
        )
        + &tenant_slot_metrics(&services.runtime.tenants_slots())
        + &tenant_stored_metrics(app)
        + &tenant_quota_metrics(app)
        + &app
            .cells
            .get()
            .map(|c| c.render_metrics())
            .unwrap_or_default()
        + &app
            .cell_quotas
            .get()
            .map(|q| q.render_metrics())
            .unwrap_or_default()
        + &otlp_export_metrics(
            "tern_trace_spans",
            "Trace spans",
            tern_telemetry::export::stats(),
        )
        + &otlp_export_metrics(
            "tern_log_records",
            "OTLP log records: guest stderr lines (guest_logs_otlp) and the node's log lines (node_logs_otlp)",
            tern_telemetry::logs::stats(),
        );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Each tenant's instance slots on this node, in Prometheus text: who holds the slots and
/// who waits for one (a tenant at its `max_concurrent` shows waiting units while others run).
/// Tenant names need no escaping: they are `[a-z0-9-]`.
fn tenant_slot_metrics(tenants: &[(TenantName, u32, u32)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# HELP tern_tenant_running Guests of the tenant holding an instance slot on this node.\n\
         # TYPE tern_tenant_running gauge\n",
    );
    for (tenant, running, _) in tenants {
        let _ = writeln!(out, "tern_tenant_running{{tenant=\"{tenant}\"}} {running}");
    }
    out.push_str(
        "# HELP tern_tenant_waiting Units of the tenant waiting for an instance slot on this node.\n\
         # TYPE tern_tenant_waiting gauge\n",
    );
    for (tenant, _, waiting) in tenants {
        let _ = writeln!(out, "tern_tenant_waiting{{tenant=\"{tenant}\"}} {waiting}");
    }
    out
}

/// What each live tenant's asynchronous results take in this node's journal, to read against
/// its `max_stored_results` and `max_stored_result_bytes`.
fn tenant_stored_metrics(app: &App) -> String {
    use std::fmt::Write as _;
    let usage: Vec<_> = app
        .tenants
        .entries()
        .into_iter()
        .filter(|e| e.is_live())
        .map(|e| {
            let stored = app.store.results_of(e.name());
            (e.name().clone(), stored)
        })
        .collect();
    let mut out = String::from(
        "# HELP tern_tenant_stored_results Asynchronous invocation records of the tenant in this node's journal.\n\
         # TYPE tern_tenant_stored_results gauge\n",
    );
    for (tenant, stored) in &usage {
        let _ = writeln!(
            out,
            "tern_tenant_stored_results{{tenant=\"{tenant}\"}} {}",
            stored.count
        );
    }
    out.push_str(
        "# HELP tern_tenant_stored_result_bytes Bytes of those records, as stored.\n\
         # TYPE tern_tenant_stored_result_bytes gauge\n",
    );
    for (tenant, stored) in &usage {
        let _ = writeln!(
            out,
            "tern_tenant_stored_result_bytes{{tenant=\"{tenant}\"}} {}",
            stored.bytes
        );
    }
    out
}

/// Each live tenant's quotas, to read its usage against: the cluster-wide values of its
/// record, and this node's part of those split between the members. Quotas without a limit
/// are left out.
fn tenant_quota_metrics(app: &App) -> String {
    use std::fmt::Write as _;
    let mut quotas = String::from(
        "# HELP tern_tenant_quota A quota of the tenant, as its record sets it (cluster-wide for max_concurrent, max_rate_per_s and rate_burst).\n\
         # TYPE tern_tenant_quota gauge\n",
    );
    let mut parts = String::from(
        "# HELP tern_tenant_node_part What this node enforces of a quota of the tenant: its part of a cluster-wide quota, or a memory budget held to the node's per-tenant cap.\n\
         # TYPE tern_tenant_node_part gauge\n",
    );
    for entry in app.tenants.entries().into_iter().filter(|e| e.is_live()) {
        let tenant = entry.name();
        let q = &entry.tenant.spec.quotas;
        let finite = [
            (
                "max_concurrent",
                u64::from(q.max_concurrent),
                u64::from(u32::MAX),
            ),
            ("memory_budget_bytes", q.memory_budget_bytes, u64::MAX),
            ("max_queued", u64::from(q.max_queued), u64::from(u32::MAX)),
            (
                "max_timeout_ms",
                u64::from(q.max_timeout_ms),
                u64::from(u32::MAX),
            ),
            (
                "max_functions",
                u64::from(q.max_functions),
                u64::from(u32::MAX),
            ),
            ("max_module_bytes", q.max_module_bytes, u64::MAX),
            (
                "max_stored_results",
                u64::from(q.max_stored_results),
                u64::from(u32::MAX),
            ),
            (
                "max_stored_result_bytes",
                q.max_stored_result_bytes,
                u64::MAX,
            ),
            (
                "max_rate_per_s",
                u64::from(q.max_rate_per_s),
                u64::from(u32::MAX),
            ),
            ("rate_burst", u64::from(q.rate_burst), u64::from(u32::MAX)),
        ];
        for (name, value, unlimited) in finite {
            if value != unlimited {
                let _ = writeln!(
                    quotas,
                    "tern_tenant_quota{{tenant=\"{tenant}\",quota=\"{name}\"}} {value}"
                );
            }
        }
        // Memory is per node: a finite budget is held to this node's per-tenant cap.
        if q.memory_budget_bytes != u64::MAX {
            let cap = app.services().runtime.config().tenant_memory_cap_bytes();
            let _ = writeln!(
                parts,
                "tern_tenant_node_part{{tenant=\"{tenant}\",quota=\"memory_budget_bytes\"}} {}",
                q.memory_budget_bytes.min(cap)
            );
        }
        let Some(part) = app.cluster_quotas.parts(tenant) else {
            continue;
        };
        for (name, value) in [
            ("max_concurrent", part.max_concurrent),
            ("max_rate_per_s", part.rate.per_s),
            ("rate_burst", part.rate.burst),
        ] {
            if value != u32::MAX {
                let _ = writeln!(
                    parts,
                    "tern_tenant_node_part{{tenant=\"{tenant}\",quota=\"{name}\"}} {value}"
                );
            }
        }
    }
    quotas + &parts
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// This node and its peers: `{"node", "members": [{"node", "state", ...}]}`; a node outside
/// a cluster has no members.
fn cluster(app: &App) -> Response<Body> {
    #[derive(Serialize)]
    struct View {
        node: String,
        class: &'static str,
        version: &'static str,
        isolation: &'static str,
        functions: usize,
        members: Vec<tern_link::MemberView>,
    }
    let services = app.services();
    let view = View {
        node: app.config.node_name.clone(),
        class: app.config.node_class.name(),
        version: env!("CARGO_PKG_VERSION"),
        isolation: services.sandbox.mode().as_str(),
        functions: services.runtime.function_count(),
        members: app.cluster.get().map(|c| c.members()).unwrap_or_default(),
    };
    json(StatusCode::OK, &view)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => error_response(&ApiError::new(ErrorCode::Internal, e.to_string())),
    }
}

/// The answer to a failed request: [`error_response`], with `Retry-After` in whole seconds
/// (rounded up) when the error says when trying again can succeed.
fn node_error_response(e: &NodeError) -> Response<Body> {
    let mut resp = error_response(&e.to_api());
    if let Some(ms) = e.retry_after_ms() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000).max(1)));
    }
    resp
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(e.to_json())));
    *resp.status_mut() =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if e.code == ErrorCode::Overloaded {
        h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.code == ErrorCode::Unauthorized {
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Binds the listener (separately from serving, so callers learn the port first).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })
}

/// The HTTP listener from a socket bound beforehand (a test's, or one inherited through
/// socket activation, which may come blocking: tokio needs it non-blocking).
pub fn from_std(listener: std::net::TcpListener) -> Result<TcpListener, NodeError> {
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
