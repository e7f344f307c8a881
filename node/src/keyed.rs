//! Where a call with an idempotency key runs: at its key's home, once, whichever node the
//! caller reached.
//!
//! A `tern-client` that loses its node retries the call on the next one with the same key.
//! Deduplication on each node alone would run the call again there; instead each node sends
//! a keyed call to the key's home ([`tern_link::key_home`]: the function's warm-affinity owner,
//! the same member on every node that sees the same members up), which keeps the key
//! ([`crate::idempotency`]) and runs the call once, usually on itself, where the function is
//! warm. A home that is this node runs it here. So a retry anywhere gets the first run's result
//! (sync) or id (async) while the home stays up and reachable.
//!
//! A home the entry still counts as up but that does not answer is `unavailable` to the caller
//! (retried with the same key): the entry does not run the call in its place, since the home
//! may have run it already. Once the home is counted down (about a second), its keys move to
//! the next member. An async call's key went with its copy to the home's keeper
//! ([`crate::takeover`]), and the member standing in asks for it before accepting the call as
//! new, so a retry gets the home's id. A sync call's output is kept by a second node: the entry,
//! when it is another node than the home, keeps the output it relays; otherwise (the entry
//! is the home, the run failed, or no caller was left to take the answer) the home sends
//! the result to the key's successor (the member that stands in if it goes away) as the
//! answer goes, not waited for (one that does not take it within 0.5 s is counted,
//! `tern_sync_unkept_total`). A node standing in for an away home, back from a restart on
//! its store within the 5 minutes results are kept (it forgot those it gave), or that saw a
//! peer come back within those 5 minutes (the peer may have stood in for it during a
//! partition), asks its peers for a sync result before running a call, answering
//! `unavailable` when it cannot tell; so a retry is answered with the run a caller could have
//! seen. A call whose home died while running it, or in the instant between answering and
//! its copy arriving, runs again. (Async keys: see [`crate::idempotency::AsyncKeys::accept`].)
//! Nodes that disagree on who is up (a partition, or a link cut one way) may pick two homes
//! for one key.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_actors::Invocation;
use tern_cluster::NodeName;
use tern_link::ClusterLink;
use tern_wire::peer::{KeyedCall, KeyedMode, PeerResponse};
use tern_wire::{ApiError, ErrorCode, FunctionName, InvocationId, InvokeReply, TraceParent};

use crate::app::App;
use crate::error::NodeError;
use crate::idempotency::{self, AsyncKeys, Begin, SyncCache, SyncCacheLimits};
use crate::store::StoreError;
use crate::traces;

/// How long an entry waits for a key's home to accept an async call (a journal flush and a
/// copy to the home's keeper; at a node standing in for an away home, first a lookup of the
/// key at its peers, 2 s at most).
const ACCEPT_BOUND: Duration = Duration::from_secs(5);

/// How long after a restart a node waits for every member's link before it takes those not
/// up to be away (until then, a keyed sync call it would look up is `unavailable`).
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// The idempotency keys this node is home of.
pub struct Keys {
    pub async_keys: AsyncKeys,
    pub sync_cache: Arc<SyncCache>,
    /// Outputs of sync keyed calls another node ran as the keys' home: relayed by this node
    /// as the entry, or sent by the home as this node is the key's successor.
    pub kept: Arc<SyncCache>,
    /// When this node started on a store an earlier run left, which forgot the sync results
    /// that run gave: until they would have expired, a keyed call new here is first looked
    /// up at every peer up.
    restarted: Option<tokio::time::Instant>,
}

impl Keys {
    pub fn open(store: &crate::store::Store, result_ttl_secs: u64) -> Result<Self, StoreError> {
        Ok(Self {
            async_keys: AsyncKeys::open(store, result_ttl_secs)?,
            sync_cache: SyncCache::new(SyncCacheLimits::default()),
            kept: SyncCache::new(SyncCacheLimits::default()),
            restarted: store.recovered().then(tokio::time::Instant::now),
        })
    }

    /// Whether this node started on a store an earlier run left less than `window` ago.
    pub fn restarted_within(&self, window: Duration) -> bool {
        self.restarted.is_some_and(|at| at.elapsed() < window)
    }

    /// Whether this node restarted less than [`RECONNECT_GRACE`] ago.
    fn reconnecting(&self) -> bool {
        self.restarted_within(RECONNECT_GRACE)
    }

    /// Whether sync results given before this node's restart may still be asked for.
    fn may_have_forgotten(&self) -> bool {
        self.restarted_within(SyncCacheLimits::default().ttl)
    }
}

/// One synchronous invocation, admitted by a front door.
pub struct Call {
    pub function: FunctionName,
    pub input: Bytes,
    pub map: bool,
    /// Its root span (`Span::none()` when not traced).
    pub trace: tracing::Span,
}

/// The key's home when it is another node, with the link to reach it.
fn remote_home(
    app: &App,
    function: &FunctionName,
    key: &str,
) -> Option<(Arc<ClusterLink>, NodeName)> {
    let link = app.cluster.get()?;
    let home = link.key_home(&tern_link::key_home::scope(function.as_str(), key))?;
    Some((link.clone(), home))
}

/// The keyed call to send to a home: the function's registry entry goes with it, for a home
/// that has not learnt of it yet.
fn keyed_call(
    app: &App,
    function: &FunctionName,
    key: String,
    input: &Bytes,
    map: bool,
    mode: KeyedMode,
    trace: Option<TraceParent>,
) -> Result<KeyedCall, ApiError> {
    // Read before the lookup, as the pipeline does: a pull that completes in between must not
    // turn a retryable miss into `not_found`.
    let synced = app.pipeline.registry_synced();
    let entry = app
        .store
        .function(function)
        .map_err(|e| NodeError::from(e).to_api())?
        .filter(|e| !e.removed)
        // As the pipeline says it: `unavailable` (retried) while this node has not pulled the
        // registry, `not_found` once it has.
        .ok_or_else(|| {
            NodeError::from(tern_actors::Pipeline::missing_function(
                function.clone(),
                synced,
            ))
            .to_api()
        })?;
    Ok(KeyedCall {
        key,
        entry,
        input: input.to_vec(),
        map,
        mode,
        trace,
    })
}

/// What an entry tells its caller when the key's home did not answer.
fn home_unreachable(home: &NodeName, e: &tern_link::LinkError) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!(
            "node {home}, which runs the calls of this idempotency key, did not answer ({e}); \
             retry with the same key"
        ),
    )
}

/// A synchronous invocation, with or without an idempotency key, waiting at most `wait`.
pub async fn invoke(
    app: &Arc<App>,
    call: Call,
    key: Option<String>,
    wait: Option<Duration>,
) -> Result<InvokeReply, ApiError> {
    let Some(key) = key else {
        return within(wait, run(app, call)).await;
    };
    let Some((link, home)) = remote_home(app, &call.function, &key) else {
        return invoke_here(app, call, key, wait, false).await;
    };
    let timeout_ms = wait.map(|w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX));
    let scope = tern_link::key_home::scope(call.function.as_str(), &key);
    let sent = keyed_call(
        app,
        &call.function,
        key,
        &call.input,
        call.map,
        KeyedMode::Sync {
            timeout_ms,
            entry_keeps: true,
        },
        tern_telemetry::traceparent(&call.trace),
    )?;
    // Bounded by `wait` if given; otherwise by the mesh's own request timeout (the longest
    // function timeout a node admits, plus slack), past which the home is `unavailable`.
    let bound = wait.map(|w| w.saturating_add(tern_link::FORWARD_GRACE));
    match link.keyed(&home, sent, bound).await {
        Ok(PeerResponse::Output(reply)) => {
            // This node is not the home: kept here, the output outlives the home's death, and
            // the home sends no copy of its own. A replay was kept when it ran (kept again,
            // it would outlive the time results are kept).
            if !reply.replayed {
                app.keys.kept.keep(scope, Arc::new(Ok(reply.clone())));
            }
            Ok(reply)
        }
        Ok(other) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("node {home} answered a keyed call with {other:?}"),
        )),
        Err(tern_link::LinkError::Refused { error, .. }) => Err(error),
        Err(tern_link::LinkError::TimedOut(_)) if wait.is_some() => Err(waited_out(wait)),
        Err(e) => Err(home_unreachable(&home, &e)),
    }
}

/// Accepts an async invocation, with or without an idempotency key; its id and the node that
/// accepted it.
pub async fn accept(
    app: &Arc<App>,
    key: Option<String>,
    function: FunctionName,
    input: Bytes,
    map: bool,
    trace: Option<TraceParent>,
) -> Result<(InvocationId, String), ApiError> {
    let here = |id| (id, app.config.node_name.clone());
    let Some(key) = key else {
        return app
            .accept_async(function, input, map, trace)
            .await
            .map(here)
            .map_err(|e| e.to_api());
    };
    let Some((link, home)) = remote_home(app, &function, &key) else {
        return app
            .keys
            .async_keys
            .accept(app, &key, function, input, map, trace)
            .await
            .map(here)
            .map_err(|e| e.to_api());
    };
    let sent = keyed_call(app, &function, key, &input, map, KeyedMode::Async, trace)?;
    match link.keyed(&home, sent, Some(ACCEPT_BOUND)).await {
        Ok(PeerResponse::Accepted(id)) => Ok((id, home.to_string())),
        Ok(other) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("node {home} answered a keyed call with {other:?}"),
        )),
        Err(tern_link::LinkError::Refused { error, .. }) => Err(error),
        Err(e) => Err(home_unreachable(&home, &e)),
    }
}

/// Runs a keyed call `peer` sent because this node is its key's home.
pub async fn serve(app: Arc<App>, peer: NodeName, call: KeyedCall) -> PeerResponse {
    match serve_call(app, peer, call).await {
        Ok(answer) => answer,
        Err(e) => PeerResponse::Error(e),
    }
}

async fn serve_call(
    app: Arc<App>,
    peer: NodeName,
    call: KeyedCall,
) -> Result<PeerResponse, ApiError> {
    tern_wire::check_idempotency_key(&call.key)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    if call.input.len() > app.config.max_body_bytes {
        return Err(NodeError::BodyTooLarge {
            limit: app.config.max_body_bytes,
        }
        .to_api());
    }
    let function = call.entry.info.name.clone();
    if app.services().runtime.get(&function).is_none() && !call.entry.removed {
        // A deploy the entry knows of and this node not yet: applied as an announcement
        // would be (last writer wins, the module fetched from the entry by hash), in a task
        // of its own, so an entry that gives up cannot stop it between storing the entry and
        // installing the function.
        let (installer, entry) = (app.clone(), call.entry);
        crate::app::to_completion(async move { installer.apply_entry(entry, &peer).await })
            .await
            .map_err(|e| match e {
                // The module could not be fetched from the entry: a retry may well succeed.
                NodeError::Link(e) => ApiError::new(
                    ErrorCode::Unavailable,
                    format!("cannot fetch {function}'s module here yet ({e}); retry"),
                ),
                other => other.to_api(),
            })?;
    }
    let input = Bytes::from(call.input);
    match call.mode {
        KeyedMode::Sync {
            timeout_ms,
            entry_keeps,
        } => {
            let trace = traces::home(call.trace.as_ref(), &function, "sync");
            let wait = timeout_ms.map(|ms| Duration::from_millis(u64::from(ms)));
            let run = Call {
                function,
                input,
                map: call.map,
                trace: trace.clone(),
            };
            let reply = invoke_here(&app, run, call.key, wait, entry_keeps).await;
            if let Err(e) = &reply {
                traces::failed(&trace, &e.message);
            }
            reply.map(PeerResponse::Output)
        }
        KeyedMode::Async => {
            // In a task of its own: an entry that gives up must not stop an accept between
            // its journal write and the key's.
            let accepting = tokio::spawn(async move {
                app.keys
                    .async_keys
                    .accept(&app, &call.key, function, input, call.map, call.trace)
                    .await
            });
            match accepting.await {
                Ok(Ok(id)) => Ok(PeerResponse::Accepted(id)),
                Ok(Err(e)) => Err(e.to_api()),
                Err(e) => Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("accepting a keyed call failed: {e}"),
                )),
            }
        }
    }
}

/// Runs one invocation through the pipeline (what `POST /v1/functions/{name}/invoke` does).
async fn run(app: &Arc<App>, call: Call) -> Result<InvokeReply, ApiError> {
    let started = Instant::now();
    let request_id = app.ids.next();
    call.trace.record("request_id", request_id.as_str());
    let permit = traces::admission(&call.trace)
        .in_scope(|| app.pipeline.admit())
        .map_err(|e| {
            traces::failed(&call.trace, &e);
            e.to_api()
        })?;
    let result = app
        .pipeline
        .invoke_admitted(
            Invocation {
                request_id: request_id.as_str().into(),
                function: call.function,
                input: call.input,
                map: call.map,
                trace: call.trace.clone(),
                stream: tern_runtime::AnswerStream::default(),
            },
            permit,
        )
        .await;
    traces::outcome(&call.trace, &result);
    let outcome = result.map_err(|e| e.to_api())?;
    Ok(InvokeReply {
        output: outcome.output.to_vec(),
        node: outcome.node.to_string(),
        cold_start: outcome.cold_start,
        meus: u32::try_from(outcome.meus).unwrap_or(u32::MAX),
        duration_us: started.elapsed().as_micros() as u64,
        replayed: false,
    })
}

fn waited_out(wait: Option<Duration>) -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        format!(
            "no result within {} ms; with an idempotency key the invocation carries on and a \
             retry with the same key returns its result (unless the node's key cache was full)",
            wait.unwrap_or_default().as_millis()
        ),
    )
}

async fn within<F>(wait: Option<Duration>, fut: F) -> Result<InvokeReply, ApiError>
where
    F: Future<Output = Result<InvokeReply, ApiError>>,
{
    match wait {
        None => fut.await,
        Some(limit) => tokio::time::timeout(limit, fut)
            .await
            .unwrap_or_else(|_| Err(waited_out(wait))),
    }
}

/// A keyed sync call at its home: run once, retries answered with that run. `entry_keeps`:
/// the entry, another node, keeps the output it is answered with.
async fn invoke_here(
    app: &Arc<App>,
    call: Call,
    key: String,
    wait: Option<Duration>,
    entry_keeps: bool,
) -> Result<InvokeReply, ApiError> {
    match app.keys.sync_cache.begin(&call.function, &key) {
        Begin::Done(result) => {
            let mut reply = result.as_ref().clone()?;
            reply.replayed = true;
            Ok(reply)
        }
        Begin::Wait(rx) => {
            let result = within(wait, idempotency::wait(rx)).await;
            // The run this call joined may have been another entry's, which keeps its output
            // only if it still waited for it: a caller answered here has a second node keep
            // it too (kept twice at worst).
            if !entry_keeps && result.is_ok() {
                let scope = tern_link::key_home::scope(call.function.as_str(), &key);
                keep_at_successor_soon(app, scope, &result);
            }
            let mut reply = result?;
            reply.replayed = true;
            Ok(reply)
        }
        Begin::Run(guard) => {
            let Some(rx) = guard.subscribe() else {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "idempotency slot closed",
                ));
            };
            let scope = tern_link::key_home::scope(call.function.as_str(), &key);
            // Its own task, so the invocation finishes (and is remembered for retries) even if
            // this caller goes away.
            let app = app.clone();
            tokio::spawn(async move {
                let result = match run_elsewhere(&app, &scope).await {
                    Some(earlier) => earlier,
                    None => {
                        let result = run(&app, call).await;
                        // A second node keeps what a caller could have been answered: the
                        // entry, if it is another node and still waits for an output; else
                        // the key's successor, sent as the answer goes (not waited for).
                        if !(entry_keeps && result.is_ok() && guard.awaited()) {
                            keep_at_successor_soon(&app, scope, &result);
                        }
                        result
                    }
                };
                guard.finish(result);
            });
            within(wait, idempotency::wait(rx)).await
        }
        // Run without the cache, still in a task of its own: a keyed call runs to completion
        // whoever stops waiting.
        Begin::Uncached => {
            let app = app.clone();
            let running = tokio::spawn(async move { run(&app, call).await });
            within(wait, async {
                running.await.unwrap_or_else(|e| {
                    Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("a keyed call failed: {e}"),
                    ))
                })
            })
            .await
        }
    }
}

/// A run of the sync keyed call `scope` that this node did not give as its home, if there
/// is one, as the answer to replay (`replayed` set); `None` to run the call. One another node
/// ran that this node keeps; else, when this node stands in for an away home, restarted on
/// its store within the time results are kept (and may have forgotten one it gave), or saw a
/// peer come back within that time (it may have stood in for this node), one a peer keeps —
/// every peer up asked at once. When that cannot be told (a peer did not answer
/// or runs the call, or a restarted node is not linked to every member yet),
/// `Some(Err(unavailable))`: not kept, so the caller's retry asks again rather than the call
/// running twice.
async fn run_elsewhere(app: &App, scope: &str) -> Option<Result<InvokeReply, ApiError>> {
    let mut earlier = find_elsewhere(app, scope).await?;
    if let Ok(reply) = &mut earlier {
        reply.replayed = true;
    }
    Some(earlier)
}

async fn find_elsewhere(app: &App, scope: &str) -> Option<Result<InvokeReply, ApiError>> {
    if let Some(kept) = app.keys.kept.finished(scope) {
        return Some(kept.as_ref().clone());
    }
    let link = app.cluster.get()?;
    let restarted = app.keys.may_have_forgotten();
    // A peer back from a partition may have stood in for this node's keys meanwhile, and kept
    // the runs it gave as their home.
    let rejoined = link.a_peer_returned_within(SyncCacheLimits::default().ttl);
    if !restarted && !rejoined && !link.stands_in_for_key_home(scope) {
        return None;
    }
    let unknown = |why: String| {
        Some(Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "cannot tell whether this keyed call ran already ({why}); retry with the same key"
            ),
        )))
    };
    // A peer not up yet after a restart may be the one that kept the output: its calls wait
    // (for a bound, past which a peer still not up is taken to be away).
    if restarted && app.keys.reconnecting() && !link.all_members_up() {
        return unknown("this node restarted and is not linked to every member yet".into());
    }
    // Peers come back one by one after a partition: one not back yet may hold the run.
    if rejoined && link.a_peer_returned_within(RECONNECT_GRACE) && !link.all_members_up() {
        return unknown("a peer came back and not every member is linked again yet".into());
    }
    match link.lookup_result(scope).await {
        Ok(Some(kept)) => Some(kept.result),
        Ok(None) => None,
        Err(e) => unknown(e.to_string()),
    }
}

/// Gives the key's successor (the member that takes its calls if this node goes away) the
/// result of a sync keyed call this node ran as home, in a task of its own (the answer does
/// not wait for it): a retry that reaches a stand-in after this node's death is answered with
/// this run. A successor that cannot take it (or none up) is counted and logged, and the
/// result stands (a retry there would run the call again). Refusals are not kept.
fn keep_at_successor_soon(app: &Arc<App>, scope: String, result: &Result<InvokeReply, ApiError>) {
    let Some(link) = app.cluster.get().cloned() else {
        return;
    };
    if !idempotency::keepable(result) {
        return;
    }
    let (app, result) = (app.clone(), result.clone());
    tokio::spawn(async move {
        let unkept = || {
            app.services()
                .metrics
                .sync_unkept
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        let Some(successor) = link.key_successor(&scope) else {
            unkept();
            return;
        };
        let kept = tern_wire::peer::KeyedResult { scope, result };
        if let Err(e) = link.keep_result(&successor, kept).await {
            unkept();
            tracing::warn!(%successor, error = %e, "a keyed call's result was not kept by its successor");
        }
    });
}
