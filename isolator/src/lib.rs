//! `tern-isolator`: cell processes, both sides.
//!
//! - [`process`]: the node's [`CellProcess`]: starts a cell in its cgroup, installs
//!   functions, runs MEUs with a bound on those in flight, cancels what callers abandon, and
//!   answers every waiting caller with [`Error::CellExited`] when the cell dies;
//! - [`inside`]: the cell's own main: go, jail, runtime, privileges dropped, seccomp, serve;
//! - [`proto`]: the frames between them, and [`outbox`]: how each side writes them;
//! - [`cells`]: every tenant's cell on a node, as the runtime's `CellRunner`; [`artifacts`]:
//!   each tenant's view of the node's artifacts (only its own).
//!
//! The layers themselves are `tern-cell`'s. The node's Isolator actor runs the cells' upkeep
//! and quotas (the node's `cells` module).

pub mod artifacts;
pub mod cells;
pub mod error;
pub mod inside;
pub mod outbox;
pub mod process;
pub mod proto;

pub use artifacts::ArtifactView;
pub use cells::{CellQuota, Cells, CellsConfig};
pub use error::Error;
pub use inside::CellArgs;
pub use process::{CellProcess, CellSpec};
pub use tern_runtime::StreamTo;
