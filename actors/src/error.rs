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
    #[error("{0}")]
    Unavailable(String),
    /// An error another node answered with, passed through unchanged.
    #[error("{} (on node {node})", .error.message)]
    Remote {
        node: String,
        error: tern_wire::ApiError,
    },
    #[error("artifact store I/O: {0}")]
    ArtifactIo(#[from] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
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
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Remote { error, .. } => error.code,
            Error::ArtifactIo(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn to_api(&self) -> ApiError {
        ApiError::new(self.code(), self.to_string())
    }
}
