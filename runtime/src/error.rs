use std::time::Duration;

use tern_wire::{ApiError, ErrorCode, FunctionName};

/// Everything that can go wrong compiling, loading or running a function on this node's
/// engine. Each variant maps to one stable API [`ErrorCode`].
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
    #[error("guest trapped: {0}")]
    GuestTrap(String),
    #[error("guest exited with status {code}")]
    GuestExit { code: i32 },
    /// A component, invoked with plain input, answered with an error status.
    #[error("the component answered HTTP {status}: {body}")]
    GuestStatus { status: u16, body: String },
    /// A component ended without a usable response (it set none, or set an error).
    #[error("{0}")]
    NoAnswer(String),
    /// An HTTP call for a component that is not one (method, path or a header not valid HTTP).
    #[error("invalid HTTP request for the component: {0}")]
    BadHttpCall(String),
    /// An HTTP call for a function that is a WASI command, not a component.
    #[error(
        "function {0} is a WASI command, not a wasi:http component: invoke it with POST /v1/functions/{0}/invoke"
    )]
    NotAComponent(FunctionName),
    #[error("guest wrote more than {limit} bytes of output")]
    OutputTooLarge { limit: usize },
    #[error("invocation exceeded its time limit of {timeout_ms} ms")]
    Timeout { timeout_ms: u32 },
    /// Every instance slot stayed busy until the function's time limit (which runs from
    /// acceptance) was spent waiting: overload, answered with 429 like a full queue.
    #[error(
        "no instance slot became free within the function's time limit ({waited_ms} ms waited; all {slots} slots busy)"
    )]
    NoInstanceSlot { waited_ms: u64, slots: u32 },
    /// The function's time limit (which runs from acceptance) was spent before its guest
    /// could start: the unit waited in the node (for the CPU, for a forward, for a slot that
    /// came too late) and is refused as overload rather than run late. Nothing of the guest
    /// ran.
    #[error(
        "the function's time limit of {timeout_ms} ms ran out before its guest could start ({waited_ms} ms waited in the node)"
    )]
    LateStart { waited_ms: u64, timeout_ms: u32 },
    /// Running guests had claimed the memory budget until the function's time limit was
    /// spent waiting: overload, 429.
    #[error(
        "the node's memory budget did not free {memory_mb} MiB within the function's time limit ({waited_ms} ms waited; budget {budget_mb} MiB)"
    )]
    NoMemoryBudget {
        waited_ms: u64,
        memory_mb: u64,
        budget_mb: u64,
    },
    /// The owning tenant's limits refused the unit before it waited: its queue for slots
    /// is full (`retryable`: a slot frees up), or one instance needs more memory than the
    /// tenant's whole budget (never).
    #[error("tenant {tenant}: {refused}")]
    TenantLimit {
        tenant: tern_tenancy::TenantName,
        refused: String,
        retryable: bool,
    },
    /// The function's own instances held all of its `max_instances` on this node until its
    /// time limit was spent waiting: overload, 429.
    #[error(
        "function {function}: its {max_instances} instances (its max_instances on this node) stayed busy until the function's time limit ({waited_ms} ms waited)"
    )]
    FunctionLimit {
        function: FunctionName,
        max_instances: u32,
        waited_ms: u64,
    },
    /// The tenant's cell died (killed, out of memory, a forbidden system call) before it
    /// answered; what the node saw.
    #[error("isolation fault: {0}")]
    IsolationFault(String),
    /// No cell could take the MEU (one would not start, or its tenant's cells are being
    /// restarted too often): 503, try again later.
    #[error("isolation unavailable: {0}")]
    IsolationUnavailable(String),
    /// The cell's own runtime refused or failed the MEU (the guest trapped, timed out…): its
    /// answer, passed on as it is.
    #[error("{0}")]
    InCell(ApiError),
    /// wasmtime's instance pool refused an instance although a slot was granted.
    #[error("the instance pool is full: {0}")]
    InstancePoolFull(String),
    /// The node is stopping: its compile or instance pool is closed.
    #[error("the {0} pool is closed: the node is stopping")]
    PoolClosed(&'static str),
    #[error("artifact store I/O: {0}")]
    ArtifactIo(#[from] std::io::Error),
    /// The wasmtime engine or linker could not be built from the configuration.
    #[error("engine setup: {0}")]
    EngineSetup(String),
    /// A compiled artifact on disk is corrupt or was built by another engine.
    #[error("artifact {path}: {reason}")]
    BadArtifact { path: String, reason: String },
    /// A background task (compile, load, guest) panicked or was cancelled.
    #[error("{task} task failed: {detail}")]
    TaskFailed { task: &'static str, detail: String },
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::ModuleTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::InvalidModule(_) => ErrorCode::InvalidModule,
            Error::CompileTimeout(_) => ErrorCode::CompileTimeout,
            Error::FunctionNotFound(_) => ErrorCode::NotFound,
            Error::GuestTrap(_) => ErrorCode::GuestTrap,
            Error::GuestExit { .. } | Error::GuestStatus { .. } | Error::NoAnswer(_) => {
                ErrorCode::GuestError
            }
            Error::BadHttpCall(_) | Error::NotAComponent(_) => ErrorCode::InvalidRequest,
            Error::OutputTooLarge { .. } => ErrorCode::OutputTooLarge,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::NoInstanceSlot { .. }
            | Error::LateStart { .. }
            | Error::NoMemoryBudget { .. }
            | Error::FunctionLimit { .. }
            | Error::InstancePoolFull(_) => ErrorCode::Overloaded,
            Error::TenantLimit {
                retryable: true, ..
            } => ErrorCode::Overloaded,
            Error::TenantLimit {
                retryable: false, ..
            } => ErrorCode::QuotaExceeded,
            Error::PoolClosed(_) => ErrorCode::Unavailable,
            Error::IsolationFault(_) => ErrorCode::IsolationFault,
            Error::IsolationUnavailable(_) => ErrorCode::Unavailable,
            Error::InCell(e) => e.code,
            Error::ArtifactIo(_)
            | Error::EngineSetup(_)
            | Error::BadArtifact { .. }
            | Error::TaskFailed { .. } => ErrorCode::Internal,
        }
    }

    pub fn to_api(&self) -> ApiError {
        match self {
            Error::InCell(e) => e.clone(),
            other => ApiError::new(other.code(), other.to_string()),
        }
    }
}
