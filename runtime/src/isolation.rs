//! The Isolator's seam: the limits one MEU runs under. Tern has two walls: WebAssembly's
//! software fault isolation (always: wasmtime `StoreLimits`, an epoch deadline and an output
//! cap), and, with `isolation = "lci"`, OS isolation of tenants in cells (worker processes
//! with namespaces, a cgroup and seccomp; `tern-cell`, run through [`crate::CellRunner`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
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
    /// The mode's periodic work, which the Isolator actor runs (none in-process).
    fn upkeep(&self) -> Option<Arc<dyn Upkeep>> {
        None
    }
}

/// One kind of an isolation mode's periodic work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chore {
    /// Looking after the cells: stopping those idle past their keep-warm time, pinging the
    /// others and replacing those that do not answer.
    Housekeeping,
    /// Deciding each tenant's quota for the next interval and applying it.
    Quotas,
}

/// An isolation mode's periodic work. The Isolator actor runs each chore, then schedules its
/// next run `every` later (a slow run delays the next one; runs never pile up).
pub trait Upkeep: Send + Sync + 'static {
    /// The chores, and how long after one run ends the next begins.
    fn chores(&self) -> Vec<(Chore, Duration)>;
    fn run(&self, chore: Chore) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Light-container isolation: the same limits as in-process, applied by the cell's runtime
/// (the node's runtime sends MEUs to cells through its `CellRunner`).
#[derive(Clone)]
pub struct InCells {
    pub max_output_bytes: usize,
    /// Looking after the cells and their quotas.
    pub upkeep: Arc<dyn Upkeep>,
}

impl Sandbox for InCells {
    fn mode(&self) -> IsolationMode {
        IsolationMode::Lci
    }

    fn upkeep(&self) -> Option<Arc<dyn Upkeep>> {
        Some(self.upkeep.clone())
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
