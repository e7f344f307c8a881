//! Turning the current process into a cell, in the layers of Firecracker's jailer.
//!
//! [`enter`] (while the process is still single-threaded):
//! 1. dies with its parent (`PR_SET_PDEATHSIG`): a cell never outlives its node;
//! 2. new PID, UTS, IPC, mount and network namespaces, and a user namespace when asked (where
//!    the node is not root): the cell sees only its own processes, no network interface but
//!    a down loopback, its own hostname and System V IPC;
//! 3. forks: the child is PID 1 of the new PID namespace and goes on; the original process
//!    waits for it and exits with its status (a signal `s` as exit code 128 + s), so whoever
//!    started the cell sees how it ended;
//! 4. an empty root: a small read-only tmpfs with only the artifact directory bind-mounted,
//!    read-only, at [`ARTIFACTS`]; the host's filesystem is unmounted (`pivot_root`, then a
//!    lazy unmount of the old root), and there is no `/proc`, `/dev` or `/sys`;
//! 5. `RLIMIT_CORE` 0 and a tight `RLIMIT_NOFILE`.
//!
//! Then the caller starts what must run before the gates close (the wasmtime runtime, which
//! opens and maps artifacts), and calls [`drop_privileges`] (every capability, in every set,
//! including the bounding set; an unprivileged user and group of its own where the node is
//! root) and installs the seccomp policy ([`crate::seccomp`]).
//!
//! Artifacts stay executable: wasmtime maps compiled code from the artifact file with
//! execute permission, which a `noexec` mount forbids. The mount is still read-only,
//! `nosuid` and `nodev`, and `execve` is not in the seccomp allow-list.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid};

use crate::error::Error;

/// Where the artifact directory appears inside a cell.
pub const ARTIFACTS: &str = "/artifacts";
/// Size of the cell's root tmpfs: directories only, nothing is written there.
const ROOT_TMPFS: &str = "size=64k,mode=0755";
const OLD_ROOT: &str = ".old-root";

/// What a cell is built from.
#[derive(Clone, Debug)]
pub struct JailSpec {
    /// An empty directory of the host to build the cell's root in (a tmpfs is mounted on
    /// it inside the cell's mount namespace only; the host sees it stay empty).
    pub root: PathBuf,
    /// Bind-mounted read-only at [`ARTIFACTS`].
    pub artifacts: Option<PathBuf>,
    pub hostname: String,
    /// `RLIMIT_NOFILE` inside the cell.
    pub max_open_files: u64,
    /// Also a new user namespace, mapping the caller's user and group to root inside it:
    /// how a node that is not root gets the other namespaces.
    pub user_namespace: bool,
}

/// Makes the calling process a cell (steps 1–5 of the module documentation). Returns in the
/// cell, as PID 1 of its PID namespace; in the calling process it never returns once the
/// fork succeeded.
///
/// Must be called while the process has a single thread: `fork` in a multi-threaded process
/// may leave the child with locks held by threads that do not exist in it.
pub fn enter(spec: &JailSpec) -> Result<(), Error> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Error::jail("pdeathsig"))?;
    let (uid, gid) = (Uid::current(), Gid::current());
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET;
    if spec.user_namespace {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(Error::jail("unshare"))?;
    if spec.user_namespace {
        map_to_root(uid, gid)?;
    }
    // SAFETY: the caller guarantees a single thread (see above), so the child is a complete
    // copy: no lock is held by a thread that is gone. Both sides only make system calls and
    // plain allocations afterwards.
    #[allow(unsafe_code)]
    let forked = unsafe { nix::unistd::fork() }.map_err(Error::jail("fork"))?;
    if let ForkResult::Parent { child } = forked {
        // It only waits from here on: it needs no capability, and keeps none a process that
        // reached it could use. (Best effort: it is not the cell, and must still report.)
        let _ = drop_privileges(None);
        let code = loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(_) => break 127,
            }
        };
        std::process::exit(code);
    }
    // The cell: PID 1. Its parent is the process above, which dies with the node.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Error::jail("pdeathsig"))?;
    nix::unistd::sethostname(&spec.hostname).map_err(Error::jail("sethostname"))?;
    build_root(spec)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(Error::jail("rlimit_core"))?;
    setrlimit(
        Resource::RLIMIT_NOFILE,
        spec.max_open_files,
        spec.max_open_files,
    )
    .map_err(Error::jail("rlimit_nofile"))?;
    Ok(())
}

/// Whether this process runs as root (then a cell needs no user namespace).
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// The unprivileged user and group a cell runs as, as Firecracker's jailer does (`--uid`,
/// `--gid`): a cell that got past its namespaces would be neither root nor any user of the
/// host, and owns no file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Drops every capability from every set (bounding first, while `CAP_SETPCAP` is still
/// held), becomes `run_as` if given (no supplementary groups; the parent-death signal, which
/// the kernel clears on a change of credentials, is set again), and sets `no_new_privs`, so
/// nothing the cell runs can gain a privilege back.
pub fn drop_privileges(run_as: Option<RunAs>) -> Result<(), Error> {
    use caps::CapSet;
    let err = |e: caps::errors::CapsError| Error::Capabilities(e.to_string());
    for cap in caps::all() {
        // Capabilities newer than this kernel are not in its bounding set anyway.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    if let Some(who) = run_as {
        let (uid, gid) = (Uid::from_raw(who.uid), Gid::from_raw(who.gid));
        nix::unistd::setgroups(&[]).map_err(Error::jail("setgroups"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(Error::jail("setresgid"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(Error::jail("setresuid"))?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Error::jail("pdeathsig"))?;
    }
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(err)?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(Error::jail("no_new_privs"))
}

/// Maps `uid`/`gid` of the parent user namespace to root in the new one.
fn map_to_root(uid: Uid, gid: Gid) -> Result<(), Error> {
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|e| Error::Jail {
            step: "user namespace map",
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1"))
}

fn build_root(spec: &JailSpec) -> Result<(), Error> {
    let none = None::<&str>;
    // Nothing mounted here propagates back to the host.
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(Error::jail("private mounts"))?;
    let root = spec.root.as_path();
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("tern-cell"),
        root,
        Some("tmpfs"),
        hardened | MsFlags::MS_NOEXEC,
        Some(ROOT_TMPFS),
    )
    .map_err(Error::jail("root tmpfs"))?;
    if let Some(artifacts) = &spec.artifacts {
        let target = root.join(ARTIFACTS.trim_start_matches('/'));
        make_dir(&target)?;
        mount(
            Some(artifacts.as_path()),
            &target,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .map_err(Error::jail("bind artifacts"))?;
        // A bind mount takes its flags only on a remount.
        mount(
            none,
            &target,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hardened,
            none,
        )
        .map_err(Error::jail("artifacts read-only"))?;
    }
    let old = root.join(OLD_ROOT);
    make_dir(&old)?;
    nix::unistd::pivot_root(root, &old).map_err(Error::jail("pivot_root"))?;
    nix::unistd::chdir("/").map_err(Error::jail("chdir /"))?;
    let old = Path::new("/").join(OLD_ROOT);
    umount2(&old, MntFlags::MNT_DETACH).map_err(Error::jail("unmount host root"))?;
    std::fs::remove_dir(&old).map_err(|e| Error::Jail {
        step: "remove old root",
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hardened | MsFlags::MS_NOEXEC,
        Some(ROOT_TMPFS),
    )
    .map_err(Error::jail("root read-only"))
}

fn make_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Jail {
        step: "mkdir",
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}
