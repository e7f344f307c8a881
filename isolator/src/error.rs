use std::time::Duration;

use tern_wire::ApiError;

/// Everything that can go wrong with a cell process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting a cell: {0}")]
    Spawn(#[source] std::io::Error),
    /// A compiled artifact could not be put in the tenant's artifact view.
    #[error("giving the cell its artifact: {0}")]
    Artifact(#[source] std::io::Error),
    /// Its cgroup could not be made or joined.
    #[error("cell: {0}")]
    Cell(#[from] tern_cell::Error),
    #[error("the cell was not ready within {0:?}")]
    StartTimeout(Duration),
    /// The cell died (killed, crashed, a seccomp violation, the OOM killer) or broke the
    /// protocol and was killed; what the node saw.
    #[error("isolation fault: {0}")]
    CellExited(String),
    /// The cell died before it started the MEU: safe to run it again in another cell.
    #[error("the cell ended before the call started: {0}")]
    EndedBeforeStart(String),
    #[error("cell protocol: {0}")]
    Protocol(String),
    /// No cell can serve the call now (it would not start, or is being restarted too often);
    /// trying again later may work.
    #[error("no cell available: {0}")]
    Unavailable(String),
    /// The cell answered with an error of its own runtime (the guest trapped, timed out…).
    #[error("{0}")]
    Guest(ApiError),
}
