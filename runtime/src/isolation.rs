//! The Isolator's seam: the limits one MEU runs under. Tern has two walls: WebAssembly's
//! software fault isolation (always: wasmtime `StoreLimits`, an epoch deadline and an output
//! cap), and, with `isolation = "lci"`, OS isolation of tenants in cells (worker processes
//! with namespaces, a cgroup and seccomp; `tern-cell`, run through [`crate::CellRunner`]).

use std::time::Duration;

use crate::Deployed;

/// How tenants are separated on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsolationMode {
    /// Guests run in the node process: wasm SFI, store limits, deadlines. No OS isolation.
    InProcess,
    /// Each tenant's guests run in its own cell (`tern-cell`): a worker process with its own
    /// namespaces, cgroup and seccomp filter, besides everything in-process has.
    Lci,
}

impl IsolationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationMode::InProcess => "in-process",
            IsolationMode::Lci => "lci",
        }
    }
}

/// The limits one MEU runs under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSpec {
    pub memory_bytes: usize,
    pub timeout: Duration,
    pub max_output_bytes: usize,
}

/// Chooses where and under which limits a MEU runs. Implementations must be cheap: this is on
/// the hot path of every MEU.
pub trait Sandbox: Send + Sync + 'static {
    fn mode(&self) -> IsolationMode;
    fn spec_for(&self, function: &Deployed) -> SandboxSpec;
}

/// Light-container isolation: the same limits as in-process, applied by the cell's runtime
/// (the node's runtime sends MEUs to cells through its `CellRunner`).
#[derive(Debug, Clone)]
pub struct InCells {
    pub max_output_bytes: usize,
}

impl Sandbox for InCells {
    fn mode(&self) -> IsolationMode {
        IsolationMode::Lci
    }

    fn spec_for(&self, function: &Deployed) -> SandboxSpec {
        InProcess {
            max_output_bytes: self.max_output_bytes,
        }
        .spec_for(function)
    }
}

/// In-process isolation: the function's own limits, the node's output cap.
#[derive(Debug, Clone)]
pub struct InProcess {
    pub max_output_bytes: usize,
}

impl Sandbox for InProcess {
    fn mode(&self) -> IsolationMode {
        IsolationMode::InProcess
    }

    fn spec_for(&self, function: &Deployed) -> SandboxSpec {
        SandboxSpec {
            memory_bytes: function.info.memory_mb as usize * (1 << 20),
            timeout: Duration::from_millis(u64::from(function.info.timeout_ms)),
            max_output_bytes: self.max_output_bytes,
        }
    }
}
