//! `tern-cell`: the light-container cell one tenant's guests run in, as layers in the manner
//! of Firecracker's jailer.
//!
//! - [`jail`]: namespaces (PID, UTS, IPC, mount, network; user where the node is not root),
//!   an empty read-only root with only the artifacts, resource limits, death with the parent,
//!   and every capability dropped;
//! - [`cgroup`]: the cell's cgroup under the node's own, on cgroup v2 or v1, with its
//!   [`limits`] (CPU weight and bandwidth, memory, tasks) and its measurements;
//! - [`seccomp`]: the allow-list of system calls, installed last.
//!
//! The node drives cells through these; this crate starts no process of its own and holds no
//! state, so each layer is tested on its own (the escape probes in `tests/escape.rs` run a
//! jailed child per probe and layer).

pub mod cgroup;
pub mod error;
pub mod jail;
pub mod limits;
pub mod seccomp;

pub use cgroup::{CellCgroup, Hierarchy};
pub use error::Error;
pub use jail::{ARTIFACTS, JailSpec, drop_privileges, enter};
pub use limits::{CellLimits, CgroupVersion, Controller, CpuMax};
pub use seccomp::Policy;
