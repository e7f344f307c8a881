use std::time::Duration;

use tern_wire::{ApiError, ErrorCode, FunctionName};

/// Everything that can go wrong deploying or running a function on this node.
///
/// Each variant maps to one stable API [`ErrorCode`]; the HTTP layer never invents codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Compiling, loading or running the function on this node's engine failed.
    #[error(transparent)]
    Runtime(#[from] tern_runtime::Error),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("admission queue full: {cap} invocations already in flight")]
    Overloaded { cap: usize },
    #[error("map contract violated: {0}")]
    MapContract(String),
    /// No usable node (live, of a class that admits the function's limits, with room).
    #[error(transparent)]
    NoNodeFits(#[from] tern_placement::NoNodeFits),
    /// The function is not known here and the node has not pulled the cluster registry yet:
    /// it may exist on another node.
    #[error(
        "function {0} is not known here, and this node has not synced the cluster registry \
         yet; retry"
    )]
    RegistryNotSynced(FunctionName),
    /// The version a peer asked this node to run is not the one installed here (placement
    /// saw a stale status): another node may have it.
    #[error("{function} version {hash} is not ready here")]
    VersionNotReady {
        function: FunctionName,
        hash: tern_wire::ModuleHash,
    },
    /// An actor stopped answering and its supervisor did not restart it in time.
    #[error("the {actor} did not recover within {window:?}")]
    ActorDown {
        actor: &'static str,
        window: Duration,
    },
    /// The MEU's node was not connected when it was sent (nothing was sent).
    #[error("node {0} is not connected")]
    PeerNotConnected(String),
    /// The link to the MEU's node broke before its answer came (the MEU may have run).
    #[error("node {node}: {detail}")]
    PeerLost { node: String, detail: String },
    /// An error another node answered with, passed through unchanged.
    #[error("{} (on node {node})", .error.message)]
    Remote {
        node: String,
        error: tern_wire::ApiError,
    },
    /// A task running one chunk of a `map` panicked or was cancelled.
    #[error("map chunk task failed: {0}")]
    MapChunkFailed(String),
    /// A message to a peer could not be encoded (a local bug, not the peer's).
    #[error("encoding a peer message: {0}")]
    Encode(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Runtime(e) => e.code(),
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::MapContract(_) => ErrorCode::GuestError,
            Error::NoNodeFits(_)
            | Error::RegistryNotSynced(_)
            | Error::VersionNotReady { .. }
            | Error::ActorDown { .. }
            | Error::PeerNotConnected(_)
            | Error::PeerLost { .. } => ErrorCode::Unavailable,
            Error::Remote { error, .. } => error.code,
            Error::MapChunkFailed(_) | Error::Encode(_) => ErrorCode::Internal,
        }
    }

    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}
