use std::time::Duration;

use tern_wire::{ApiError, ErrorCode, FunctionName};

/// Everything that can go wrong deploying or running a function on this node.
///
/// Each variant maps to one stable API [`ErrorCode`]; the HTTP layer never invents codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("module is {size} bytes, over the {limit}-byte cap")]
    ModuleTooLarge { size: usize, limit: usize },
    #[error("invalid module: {0}")]
    InvalidModule(String),
    #[error("compiling the module took longer than {0:?}")]
    CompileTimeout(Duration),
    #[error("function {0} is not deployed")]
    FunctionNotFound(FunctionName),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("admission queue full: {cap} invocations already in flight")]
    Overloaded { cap: usize },
    #[error("guest trapped: {0}")]
    GuestTrap(String),
    #[error("guest exited with status {code}")]
    GuestExit { code: i32 },
    #[error("map contract violated: {0}")]
    MapContract(String),
    #[error("guest wrote more than {limit} bytes to stdout")]
    OutputTooLarge { limit: usize },
    #[error("invocation exceeded its time limit of {timeout_ms} ms")]
    Timeout { timeout_ms: u32 },
    /// No usable node (live, of a class that admits the function's limits, with room).
    #[error("no live node of a class that admits this function's memory and time limits has room")]
    NoNodeFits,
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
    /// The node is stopping: its compile or instance pool is closed.
    #[error("the {0} pool is closed: the node is stopping")]
    PoolClosed(&'static str),
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
    #[error("artifact store I/O: {0}")]
    ArtifactIo(#[from] std::io::Error),
    /// The wasmtime engine or linker could not be built from the configuration.
    #[error("engine setup: {0}")]
    EngineSetup(String),
    /// A compiled artifact on disk is corrupt or was built by another engine.
    #[error("artifact {path}: {reason}")]
    BadArtifact { path: String, reason: String },
    /// A background task (compile, load, guest, map chunk) panicked or was cancelled.
    #[error("{task} task failed: {detail}")]
    TaskFailed { task: &'static str, detail: String },
    /// A message to a peer could not be encoded (a local bug, not the peer's).
    #[error("encoding a peer message: {0}")]
    Encode(String),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::ModuleTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::InvalidModule(_) => ErrorCode::InvalidModule,
            Error::CompileTimeout(_) => ErrorCode::CompileTimeout,
            Error::FunctionNotFound(_) => ErrorCode::NotFound,
            Error::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::GuestTrap(_) => ErrorCode::GuestTrap,
            Error::GuestExit { .. } | Error::MapContract(_) => ErrorCode::GuestError,
            Error::OutputTooLarge { .. } => ErrorCode::OutputTooLarge,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::NoNodeFits
            | Error::RegistryNotSynced(_)
            | Error::VersionNotReady { .. }
            | Error::ActorDown { .. }
            | Error::PoolClosed(_)
            | Error::PeerNotConnected(_)
            | Error::PeerLost { .. } => ErrorCode::Unavailable,
            Error::Remote { error, .. } => error.code,
            Error::ArtifactIo(_)
            | Error::EngineSetup(_)
            | Error::BadArtifact { .. }
            | Error::TaskFailed { .. }
            | Error::Encode(_) => ErrorCode::Internal,
        }
    }

    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}
