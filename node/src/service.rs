//! The operations behind both front doors.
//!
//! HTTP (`http.rs`) and the QUIC client API (`client_api.rs`) each find out who is calling
//! their own way (a bearer header; a token field or a client certificate) and speak their own
//! protocol, but everything between is decided here, once: which function a name means for
//! the caller (`name` is the caller's tenant's; another tenant's function or invocation is
//! answered exactly as a missing one), whether the caller's role allows the action, the
//! tenant's request rate, and the node's limits on what is sent.
//!
//! An operation decided before its body is read comes in two steps: a handle only this module
//! makes ([`Deploy::authorize`], [`Invoke::admit`]), then the run with the body. A front door
//! cannot deploy or invoke without going through the check.

use std::sync::Arc;

use bytes::Bytes;
use tern_actors::Pipeline;
use tern_tenancy::Action;
use tern_wire::{FunctionInfo, FunctionName, InvocationId, InvocationRecord, InvocationStatus};

use crate::app::App;
use crate::auth::Caller;
use crate::error::NodeError;

/// The function `name` (as the caller wrote it) means for `caller`, if the caller may do
/// `action` on it; another tenant's is answered exactly as a missing one.
fn resolve(
    app: &App,
    caller: &Caller,
    name: &str,
    action: Action,
) -> Result<FunctionName, NodeError> {
    let synced = app.pipeline.registry_synced();
    caller.function(name, action, |name| {
        Pipeline::missing_function(name, synced).into()
    })
}

/// Counts a request refused for who is calling: 401 and 403 node-wide by code
/// (`tern_request_errors_total`), and a 403 also against the caller's tenant
/// (`tern_tenant_invocations_total{outcome="forbidden"}`); a 401 has no tenant to charge.
pub fn count_refusal(
    app: &App,
    code: tern_wire::ErrorCode,
    tenant: Option<&tern_tenancy::TenantName>,
) {
    use tern_wire::ErrorCode;
    if !matches!(code, ErrorCode::Unauthorized | ErrorCode::Forbidden) {
        return;
    }
    let metrics = &app.services().metrics;
    metrics.request_errors[code.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if code == ErrorCode::Forbidden
        && let Some(tenant) = tenant
    {
        metrics.tenant(tenant.as_str()).record_error(code);
    }
}

/// A deploy the caller may make.
#[derive(Debug)]
pub struct Deploy {
    name: FunctionName,
}

impl Deploy {
    /// May `caller` deploy (or replace) `name`? Decided before the module is read.
    pub fn authorize(app: &App, caller: &Caller, name: &str) -> Result<Self, NodeError> {
        Ok(Self {
            name: resolve(app, caller, name, Action::Deploy)?,
        })
    }

    /// Deploys `module` (at most `max_module_bytes`). Runs to completion even if the caller
    /// goes away, so an acknowledged deploy is never half done.
    pub async fn run(
        self,
        app: &Arc<App>,
        module: Bytes,
        limits: crate::app::FunctionLimits,
    ) -> Result<FunctionInfo, NodeError> {
        let limit = app.config.max_module_bytes;
        if module.len() > limit {
            return Err(NodeError::ModuleTooLarge { limit });
        }
        let app = app.clone();
        let name = self.name;
        crate::app::to_completion(async move { app.deploy(name, module, limits).await }).await
    }
}

/// A call the caller may make now: authorized, and charged to the function's tenant's request
/// rate.
#[derive(Debug)]
pub struct Invoke {
    name: FunctionName,
}

impl Invoke {
    /// May `caller` invoke `name`, and does the function's tenant's request rate allow one
    /// more call now? Decided before the input is read, so a tenant over its rate costs the
    /// node this check only.
    pub fn admit(app: &App, caller: &Caller, name: &str) -> Result<Self, NodeError> {
        let name = resolve(app, caller, name, Action::Invoke)?;
        app.admit_rate(&name)?;
        Ok(Self { name })
    }

    /// The function the call resolved to.
    pub fn name(&self) -> &FunctionName {
        &self.name
    }

    /// The function to run, once the input fits the node's `max_body_bytes`.
    pub fn with_input(self, app: &App, input: &[u8]) -> Result<FunctionName, NodeError> {
        let limit = app.config.max_body_bytes;
        if input.len() > limit {
            return Err(NodeError::BodyTooLarge { limit });
        }
        Ok(self.name)
    }
}

/// The record of `name` as deployed on this node.
pub fn describe(app: &App, caller: &Caller, name: &str) -> Result<FunctionView, NodeError> {
    let name = resolve(app, caller, name, Action::ListFunctions)?;
    let synced = app.pipeline.registry_synced();
    match app.services().runtime.get(&name) {
        Some(deployed) => Ok(FunctionView {
            info: deployed.info.clone(),
            kind: deployed.kind,
        }),
        None => Err(Pipeline::missing_function(name, synced).into()),
    }
}

/// A function as the HTTP API shows it: its registry entry and what it is.
#[derive(Debug, serde::Serialize)]
pub struct FunctionView {
    #[serde(flatten)]
    pub info: FunctionInfo,
    pub kind: tern_wire::FunctionKind,
}

/// [`list`] with what each function is.
pub fn list_views(app: &App, caller: &Caller) -> Vec<FunctionView> {
    let mut functions = app.services().runtime.list_with_kinds();
    if !caller.sees_every_tenant() {
        let own = caller.tenant();
        functions.retain(|(f, _)| f.name.is_owned_by(&own));
    }
    functions
        .into_iter()
        .map(|(info, kind)| FunctionView { info, kind })
        .collect()
}

/// The most log lines one read returns.
pub const MAX_LOG_LINES: usize = 10_000;

/// `name`'s guest stderr lines on this node after `after` (0: all it keeps), at most
/// `limit` (capped at [`MAX_LOG_LINES`]).
pub fn logs(
    app: &App,
    caller: &Caller,
    name: &str,
    after: u64,
    limit: usize,
) -> Result<tern_wire::LogPage, NodeError> {
    // Guests' stderr is for those who deploy and inspect functions, not for their callers.
    let name = resolve(app, caller, name, Action::ListFunctions)?;
    if limit == 0 {
        return Err(NodeError::BadRequest("limit must be at least 1".into()));
    }
    let synced = app.pipeline.registry_synced();
    let runtime = &app.services().runtime;
    if runtime.get(&name).is_none() {
        return Err(Pipeline::missing_function(name, synced).into());
    }
    Ok(runtime.logs().read(&name, after, limit.min(MAX_LOG_LINES)))
}

/// Removes `name`; what was removed. Runs to completion even if the caller goes away.
pub async fn remove(
    app: &Arc<App>,
    caller: &Caller,
    name: &str,
) -> Result<FunctionInfo, NodeError> {
    let name = resolve(app, caller, name, Action::Remove)?;
    let app = app.clone();
    crate::app::to_completion(async move { app.remove(&name).await }).await
}

/// The functions the caller may see: its tenant's, or every tenant's for an admin.
pub fn list(app: &App, caller: &Caller) -> Vec<FunctionInfo> {
    list_views(app, caller)
        .into_iter()
        .map(|v| v.info)
        .collect()
}

/// The record of asynchronous invocation `id`, if the caller may read it.
pub async fn invocation(
    app: &App,
    caller: &Caller,
    id: &InvocationId,
) -> Result<InvocationRecord, NodeError> {
    let missing = || NodeError::NotFound(format!("no invocation {id}"));
    let mut record = app.store.invocation(id)?;
    // Accepted elsewhere (its node down, or the caller moved): the copy this node keeps, if
    // it is its node's keeper, and the peers are asked — but only for a caller that may read
    // results in its own tenant at all, so no one else makes this node ask its peers.
    if record.is_none()
        && let Some(link) = app.cluster.get()
    {
        caller.may_or(Action::ReadResult, Some(&caller.tenant()), missing)?;
        let kept = app.copies.get(id)?;
        record = match kept {
            // Finished: the result's copy, nothing to ask for.
            Some(kept) if kept.status != InvocationStatus::Pending => Some(kept),
            kept => {
                // As the peers' records are weighed: finished first, then most attempts.
                let rank =
                    |r: &InvocationRecord| (r.status != InvocationStatus::Pending, r.attempts);
                match (kept, link.lookup(id).await) {
                    (Some(kept), Some(asked)) => Some(if rank(&asked) > rank(&kept) {
                        asked
                    } else {
                        kept
                    }),
                    (kept, asked) => kept.or(asked),
                }
            }
        };
    }
    let record = record
        // Past its retention period a result is gone, whether or not a sweep deleted it yet.
        .filter(|r| !app.result_expired(r))
        .ok_or_else(missing)?;
    // Another tenant's invocation is answered exactly as one that does not exist.
    caller.may_or(Action::ReadResult, Some(&record.function.tenant()), missing)?;
    Ok(record)
}
