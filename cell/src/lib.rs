//! `tern-cell`: the light-container cell one tenant's guests run in, as layers in the manner
//! of Firecracker's jailer.
//!
//! - [`jail`]: namespaces (PID, UTS, IPC, mount, network; user where the node is not root),
//!   an empty read-only root with only the artifacts, resource limits, death with the parent,
//!   and every capability dropped;
//! - [`cgroup`]: the cell's cgroup under the node's own, on cgroup v2 or v1, with its
//!   [`limits`] (CPU weight and bandwidth, memory, tasks) and its measurements;
//! - [`seccomp`]: the allow-list of system calls, installed last;
//! - [`strength`]: the paper's Eq. 4, isolation strength from the separation in force.
//!
//! The node drives cells through these; this crate starts no process of its own and holds no
//! state, so each layer is tested on its own (the escape probes in `tests/escape.rs` run a
//! jailed child per probe and layer).

pub mod cgroup;
pub mod error;
pub mod jail;
pub mod limits;
pub mod seccomp;
pub mod strength;

pub use cgroup::{CellCgroup, Hierarchy};
pub use error::Error;
pub use jail::{ARTIFACTS, JailSpec, RunAs, drop_privileges, enter};
pub use limits::{CellLimits, CgroupVersion, Controller, CpuMax};
pub use seccomp::Policy;

/// Whether this host can run cells, and the cgroup hierarchy they go in. The error names
/// everything missing: root or user namespaces, a usable cgroup hierarchy, seccomp filters.
pub fn host_support() -> Result<Hierarchy, Error> {
    let mut missing = Vec::new();
    if !jail::is_root() {
        let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if userns == 0 {
            missing.push(
                "root, or user namespaces (/proc/sys/user/max_user_namespaces is 0)".to_owned(),
            );
        }
    }
    let hierarchy = Hierarchy::detect()
        .map_err(|e| missing.push(e.to_string()))
        .ok();
    if let Some(h) = &hierarchy {
        for controller in [Controller::Cpu, Controller::Memory, Controller::Pids] {
            if let Some(dir) = h.dir(controller)
                && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err()
            {
                missing.push(format!(
                    "write access to {} (a delegated cgroup)",
                    dir.display()
                ));
            }
        }
    }
    let seccomp = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:")));
    if !seccomp {
        missing.push("seccomp filters (the kernel reports no Seccomp state)".to_owned());
    }
    match hierarchy {
        Some(h) if missing.is_empty() => Ok(h),
        _ => Err(Error::HostUnsupported(missing.join("; "))),
    }
}
