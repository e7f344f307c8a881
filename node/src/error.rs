use tern_wire::{ApiError, ErrorCode};

use crate::config::ConfigError;
use crate::store::StoreError;

/// Everything that can go wrong in the node: starting it, or serving one request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] tern_actors::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the actors: {0}")]
    Spawn(String),
    /// A task running a registry change panicked or was cancelled.
    #[error("a registry change did not finish: {0}")]
    ChangeFailed(String),
    #[error("{0}")]
    BadRequest(String),
    /// A component's answer that cannot be sent as an HTTP response.
    #[error("{0}")]
    BadComponentAnswer(String),
    #[error("request body over the {limit}-byte limit")]
    BodyTooLarge { limit: usize },
    #[error("module over the {limit}-byte limit (max_module_bytes)")]
    ModuleTooLarge { limit: usize },
    /// The body did not arrive within its deadline (a slow or stalled upload).
    #[error("the request body did not arrive within {allowed_ms} ms")]
    BodyTimeout { allowed_ms: u64 },
    /// A deploy on a cluster member that has not synced the cluster registry yet.
    #[error(
        "this node has not synced the cluster registry yet; retry the deploy in a moment \
         (a deploy now could be numbered below the cluster's version and lost)"
    )]
    NotSynced,
    /// The journal of asynchronous invocations is at one of its caps.
    #[error(
        "this node holds the most asynchronous invocations it may ({count} records, {mib} MiB; \
         max_stored_results = {max_count}, max_stored_result_mb = {max_mib}); retry once results \
         expire, or invoke synchronously"
    )]
    JournalFull {
        count: u64,
        mib: u64,
        max_count: u64,
        max_mib: u64,
    },
    /// A deploy of a new name when `max_functions` are deployed.
    #[error(
        "this node holds the most functions it may (max_functions = {max}); remove one \
         before deploying a new name"
    )]
    TooManyFunctions { max: usize },
    /// `auth = "tokens"` and no valid bearer token (none, malformed, unknown, wrong secret,
    /// or revoked: the caller is not told which).
    #[error("a valid bearer token is needed (Authorization: Bearer <token>)")]
    Unauthorized,
    /// The token's role does not allow this action.
    #[error("this token's role does not allow this")]
    Forbidden,
    /// The admin token could not be written at first start.
    #[error("cannot write the admin token to {path}: {source}")]
    TokenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("tenancy: {0}")]
    Tenancy(tern_tenancy::Error),
    /// No randomness for an unguessable id.
    #[error("cannot draw random bytes: {0}")]
    Randomness(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (a tenant name taken, the default tenant).
    #[error("{0}")]
    Conflict(String),
    /// A deploy over one of its tenant's quotas; trying again does not help until something
    /// is removed or the quota raised.
    #[error("tenant {tenant}: {which} quota exceeded ({detail})")]
    TenantQuota {
        tenant: tern_tenancy::TenantName,
        which: tern_tenancy::QuotaKind,
        detail: String,
    },
    /// An asynchronous call over its tenant's stored-result quotas; room is made as the
    /// tenant's results expire, the oldest in about `retry_after_ms`.
    #[error(
        "tenant {tenant}: {which} quota exceeded ({detail}); results expire after the \
         retention period, the tenant's oldest in about {} s",
        retry_after_ms.div_ceil(1000)
    )]
    ResultQuota {
        tenant: tern_tenancy::TenantName,
        which: tern_tenancy::QuotaKind,
        detail: String,
        retry_after_ms: u64,
    },
    /// A call over its tenant's request rate on this node; it fits again after
    /// `retry_after_ms`.
    #[error(
        "tenant {tenant}: rate quota exceeded (this node admits {per_s} calls a second, \
         {burst} at once, as its part of the tenant's cluster-wide rate); retry in \
         {retry_after_ms} ms"
    )]
    RateLimited {
        tenant: tern_tenancy::TenantName,
        per_s: u32,
        burst: u32,
        retry_after_ms: u64,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(#[from] tern_cluster::ClusterError),
    #[error("cluster link: {0}")]
    Link(#[from] tern_link::LinkError),
    /// A registry entry from a peer could not be applied (module missing or damaged).
    #[error("replication: {0}")]
    Replication(String),
    #[error("client API: {0}")]
    ClientApi(#[from] ClientApiError),
}

impl From<tern_runtime::Error> for NodeError {
    fn from(e: tern_runtime::Error) -> Self {
        NodeError::Runtime(e.into())
    }
}

impl NodeError {
    /// When trying again can succeed, for `Retry-After`: `None` when waiting does not help
    /// or the node cannot tell.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            NodeError::RateLimited { retry_after_ms, .. }
            | NodeError::ResultQuota { retry_after_ms, .. } => Some(*retry_after_ms),
            NodeError::Tenancy(e) => e.retry_after_ms(),
            _ => None,
        }
    }

    pub fn to_api(&self) -> ApiError {
        match self {
            NodeError::Runtime(e) => e.to_api(),
            NodeError::BadRequest(m) => ApiError::new(ErrorCode::InvalidRequest, m.clone()),
            NodeError::BodyTooLarge { .. } | NodeError::ModuleTooLarge { .. } => {
                ApiError::new(ErrorCode::PayloadTooLarge, self.to_string())
            }
            NodeError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m.clone()),
            NodeError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m.clone()),
            NodeError::TenantQuota { .. }
            | NodeError::ResultQuota { .. }
            | NodeError::RateLimited { .. } => {
                ApiError::new(ErrorCode::QuotaExceeded, self.to_string())
            }
            NodeError::Tenancy(e) => {
                let code = match e.http_status() {
                    400 => ErrorCode::InvalidRequest,
                    401 => ErrorCode::Unauthorized,
                    403 => ErrorCode::Forbidden,
                    404 => ErrorCode::NotFound,
                    409 => ErrorCode::Conflict,
                    429 if matches!(e, tern_tenancy::Error::Overloaded { .. }) => {
                        ErrorCode::Overloaded
                    }
                    429 => ErrorCode::QuotaExceeded,
                    _ => ErrorCode::Internal,
                };
                ApiError::new(code, e.public_message())
            }
            NodeError::NotSynced => ApiError::new(ErrorCode::Unavailable, self.to_string()),
            NodeError::JournalFull { .. } => ApiError::new(ErrorCode::Overloaded, self.to_string()),
            NodeError::Unauthorized => ApiError::new(ErrorCode::Unauthorized, self.to_string()),
            NodeError::Forbidden => ApiError::new(ErrorCode::Forbidden, self.to_string()),
            NodeError::TooManyFunctions { .. } => {
                ApiError::new(ErrorCode::QuotaExceeded, self.to_string())
            }
            NodeError::BodyTimeout { .. } => {
                ApiError::new(ErrorCode::RequestTimeout, self.to_string())
            }
            NodeError::MethodNotAllowed => {
                ApiError::new(ErrorCode::MethodNotAllowed, self.to_string())
            }
            // The disk is full or failing: nothing was acknowledged, and another node may
            // take the request (a retryable code; tern-client fails over on it).
            // (sled's copy of the error has lost its OS code: its kind names the cause.)
            NodeError::Store(StoreError::Sled(sled::Error::Io(e))) => ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "this node's store is failing ({}); retry, another node may take the request",
                    e.kind()
                ),
            ),
            NodeError::Store(StoreError::FlushBusy) => ApiError::new(
                ErrorCode::Unavailable,
                format!("{self}; retry, another node may take the request"),
            ),
            NodeError::Store(StoreError::FlushTimedOut) => ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "this node's store is failing ({self}); retry, another node may take the request"
                ),
            ),
            NodeError::Config(_)
            | NodeError::Store(_)
            | NodeError::Bind { .. }
            | NodeError::Spawn(_)
            | NodeError::ChangeFailed(_)
            | NodeError::Randomness(_)
            | NodeError::TokenFile { .. }
            | NodeError::Io(_)
            | NodeError::Cluster(_)
            | NodeError::Link(_)
            | NodeError::Replication(_)
            | NodeError::ClientApi(_)
            | NodeError::BadComponentAnswer(_) => {
                ApiError::new(ErrorCode::Internal, self.to_string())
            }
        }
    }
}

/// Why the client API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientApiError {
    #[error("node_name is not a valid cluster node name: {0}")]
    NodeName(#[source] tern_cluster::ClusterError),
    #[error("cannot load this node's certificate: {0}")]
    Identity(#[source] tern_cluster::ClusterError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the crypto provider lacks the QUIC initial cipher suite")]
    NoInitialCipherSuite,
    #[error("cannot listen on {addr} (UDP): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_write_is_a_retryable_unavailable_naming_the_cause() {
        // As sled hands it over: a copy that keeps the kind, not the OS code.
        let full = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{:?}", std::io::Error::from_raw_os_error(28)),
        );
        let e = NodeError::Store(StoreError::Sled(sled::Error::Io(full)));
        let api = e.to_api();
        assert_eq!(api.code, ErrorCode::Unavailable);
        assert!(api.code.is_retryable());
        assert!(api.message.contains("no storage space"), "{}", api.message);
        assert!(!api.message.contains("Os {"), "{}", api.message);
        let hung = NodeError::Store(StoreError::FlushTimedOut).to_api();
        assert_eq!(hung.code, ErrorCode::Unavailable);
        assert!(
            hung.message.contains("did not finish writing"),
            "{}",
            hung.message
        );
        // Damage is not the disk's state: it stays an internal error.
        let damaged = NodeError::Store(StoreError::Corrupt {
            what: "function",
            key: "f".into(),
            detail: "bad".into(),
        });
        assert_eq!(damaged.to_api().code, ErrorCode::Internal);
    }
}
