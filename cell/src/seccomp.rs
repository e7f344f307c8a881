//! The system calls a cell may make: an allow-list compiled to seccomp-BPF with Firecracker's
//! `seccompiler`, installed on every thread of the cell once its runtime is up.
//!
//! What a cell needs after start-up: memory management (wasmtime maps, protects and resets
//! instance memory), threads (`clone` only with `CLONE_THREAD`: new threads, never new
//! processes), futexes and timers, I/O on descriptors it already holds (the pipes to the
//! node, artifacts opened read-only), signal handling (wasmtime turns faults into traps) and
//! randomness. Anything else — opening a socket, `execve`, `ptrace`, `mount`, `kill`, a new
//! process, changing credentials — kills the whole cell with `SIGSYS`
//! (`SECCOMP_RET_KILL_PROCESS`), which the node sees as the cell's exit status.
//!
//! `clone3` passes its flags in memory the filter cannot read, so it answers `ENOSYS` (a
//! second filter; the kernel applies the strictest answer of all filters), and the C library
//! falls back to `clone`, whose flags the first filter checks.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::Error;

/// System calls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // I/O on descriptors the cell holds.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_ppoll,
    // Memory.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_membarrier,
    // Threads, scheduling, time.
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getrandom,
    libc::SYS_prlimit64,
    // The slow lane lowers its threads' priority (raising it needs a capability the cell has
    // not got; its PID namespace holds only its own threads).
    libc::SYS_setpriority,
    libc::SYS_getpriority,
    // Signals: wasmtime's trap handlers, and a thread signalling itself (abort).
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
];

/// Allowed on x86-64 only (aarch64 has only the newer forms above).
#[cfg(target_arch = "x86_64")]
const ALLOWED_X86_64: &[libc::c_long] = &[libc::SYS_poll, libc::SYS_epoll_wait];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_X86_64: &[libc::c_long] = &[];

/// `prctl(PR_GET_AUXV)` (Linux 6.4; not in the libc crate yet).
const PR_GET_AUXV: u64 = 0x4155_5856;

/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ..)` (Linux 5.17): names an anonymous mapping of
/// the caller's own. The node's allocator (mimalloc) names every region it maps this way, so
/// refusing it would kill a cell the first time its heap grows.
const PR_SET_VMA: u64 = 0x5356_4d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;

/// The compiled filters, in the order they are installed.
pub struct Policy {
    filters: Vec<BpfProgram>,
}

impl Policy {
    /// The cell's policy for this machine's architecture.
    pub fn cell() -> Result<Self, Error> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|e| Error::Seccomp(format!("architecture: {e}")))?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for call in ALLOWED.iter().chain(ALLOWED_X86_64) {
            rules.insert(*call, Vec::new());
        }
        let cond = |index, op, value| {
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| Error::Seccomp(e.to_string()))
        };
        let rule =
            |conditions| SeccompRule::new(conditions).map_err(|e| Error::Seccomp(e.to_string()));
        let thread = libc::CLONE_THREAD as u64;
        rules.insert(
            libc::SYS_clone,
            vec![rule(vec![cond(
                0,
                SeccompCmpOp::MaskedEq(thread),
                thread,
            )?])?],
        );
        // Answered by the second filter.
        rules.insert(libc::SYS_clone3, Vec::new());
        // Files: read-only opens only (the cell's filesystem is read-only as well).
        let access = libc::O_ACCMODE as u64;
        rules.insert(
            libc::SYS_openat,
            vec![rule(vec![cond(
                2,
                SeccompCmpOp::MaskedEq(access),
                libc::O_RDONLY as u64,
            )?])?],
        );
        // Non-blocking mode on a descriptor, nothing else.
        rules.insert(
            libc::SYS_ioctl,
            vec![rule(vec![cond(1, SeccompCmpOp::Eq, libc::FIONBIO)?])?],
        );
        // Thread names, reading the process's own auxiliary vector (CPU feature detection
        // asks for it) and naming its own anonymous memory (the allocator does), nothing else.
        rules.insert(
            libc::SYS_prctl,
            vec![
                rule(vec![cond(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?])?,
                rule(vec![cond(0, SeccompCmpOp::Eq, libc::PR_GET_NAME as u64)?])?,
                rule(vec![cond(0, SeccompCmpOp::Eq, PR_GET_AUXV)?])?,
                rule(vec![
                    cond(0, SeccompCmpOp::Eq, PR_SET_VMA)?,
                    cond(1, SeccompCmpOp::Eq, PR_SET_VMA_ANON_NAME)?,
                ])?,
            ],
        );
        let allow_list = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            arch,
        )
        .map_err(|e| Error::Seccomp(e.to_string()))?;
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(|e| Error::Seccomp(e.to_string()))?;
        // The allow-list last: installing a filter itself makes calls (seccompiler sets
        // `no_new_privs` each time) that the allow-list does not allow.
        let filters = [clone3, allow_list]
            .into_iter()
            .map(|f| BpfProgram::try_from(f).map_err(|e| Error::Seccomp(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Self { filters })
    }

    /// Installs the filters on every thread of this process (and, inherited, on every thread
    /// it starts later). Irreversible. Sets `no_new_privs`, which installing a filter
    /// without `CAP_SYS_ADMIN` requires.
    pub fn install(&self) -> Result<(), Error> {
        nix::sys::prctl::set_no_new_privs().map_err(Error::jail("no_new_privs"))?;
        for filter in &self.filters {
            seccompiler::apply_filter_all_threads(filter)
                .map_err(|e| Error::Seccomp(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cell_policy_compiles_for_this_architecture_without_escape_hatches() {
        let policy = Policy::cell().unwrap();
        assert_eq!(policy.filters.len(), 2);
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_kill,
            libc::SYS_setuid,
            libc::SYS_unshare,
            libc::SYS_open_by_handle_at,
        ] {
            assert!(
                !ALLOWED.contains(&forbidden) && !ALLOWED_X86_64.contains(&forbidden),
                "{forbidden} allowed"
            );
        }
    }
}
