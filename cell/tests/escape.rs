//! Escape probes: a child process is jailed as a cell (namespaces, empty read-only root,
//! capabilities dropped, a cgroup, and for some probes the seccomp policy) and then tries
//! to get out. Each probe runs in a child of its own, so one layer is tested at a time and a
//! probe killed by seccomp does not end the others.
//!
//! This binary is both sides: run by cargo it is the parent (its own `main`, not libtest's,
//! because the child must still be single-threaded when it jails itself); run with
//! `--probe` it is the child. Needs root; without it the run prints a loud SKIPPED line, and
//! fails instead where `TERN_NO_SKIP=1` (`.ci/run` as root).

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tern_cell::{CellLimits, Hierarchy, JailSpec, Policy};

/// The cell's exit code when the kernel killed it with `signal` (see `tern_cell::jail`).
fn killed_by(signal: i32) -> i32 {
    128 + signal
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Layers {
    /// Namespaces, root, rlimits, capabilities dropped.
    Jail,
    /// The same in a user namespace (how a node that is not root runs cells).
    UserJail,
    /// The same plus the seccomp policy.
    Seccomp,
    /// Namespaces, root, rlimits, capabilities dropped, and an unprivileged user and group
    /// (how a root node runs cells).
    Unprivileged,
}

/// The user and group the unprivileged probes run as.
const PROBE_USER: tern_cell::RunAs = tern_cell::RunAs {
    uid: 3_000_000_007,
    gid: 3_000_000_000,
};

impl Layers {
    fn arg(self) -> &'static str {
        match self {
            Layers::Jail => "jail",
            Layers::UserJail => "userjail",
            Layers::Seccomp => "seccomp",
            Layers::Unprivileged => "unprivileged",
        }
    }
}

/// How a case must end.
#[derive(Debug)]
enum Expect {
    /// The probe ran and reported every attempt blocked.
    Blocked,
    /// The probe ran and everything it tried worked (the filter is not a blanket ban).
    Allowed,
    /// The cell was killed by this signal (seccomp: `SIGSYS`; the OOM killer: `SIGKILL`).
    Killed(i32),
}

struct Case {
    probe: &'static str,
    layers: Layers,
    limits: CellLimits,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    let open = CellLimits::default();
    let case = |probe, layers, expect| Case {
        probe,
        layers,
        limits: open,
        expect,
    };
    vec![
        case("host_files", Layers::Jail, Expect::Blocked),
        case("host_files", Layers::UserJail, Expect::Blocked),
        case("writes", Layers::Jail, Expect::Blocked),
        case("network", Layers::Jail, Expect::Blocked),
        case("host_pids", Layers::Jail, Expect::Blocked),
        case("ptrace", Layers::Jail, Expect::Blocked),
        case("mount", Layers::Jail, Expect::Blocked),
        case("mount", Layers::UserJail, Expect::Blocked),
        case("hostname", Layers::Jail, Expect::Blocked),
        Case {
            probe: "fork_bomb",
            layers: Layers::Jail,
            limits: CellLimits {
                pids_max: Some(16),
                ..open
            },
            expect: Expect::Blocked,
        },
        Case {
            probe: "memory_bomb",
            layers: Layers::Jail,
            limits: CellLimits {
                memory_max: Some(32 << 20),
                ..open
            },
            expect: Expect::Killed(libc::SIGKILL),
        },
        case("identity", Layers::Unprivileged, Expect::Blocked),
        case("writes", Layers::Unprivileged, Expect::Blocked),
        case("allowed", Layers::Seccomp, Expect::Allowed),
        case("socket", Layers::Seccomp, Expect::Killed(libc::SIGSYS)),
        case("ptrace", Layers::Seccomp, Expect::Killed(libc::SIGSYS)),
        case("exec", Layers::Seccomp, Expect::Killed(libc::SIGSYS)),
        case("process", Layers::Seccomp, Expect::Killed(libc::SIGSYS)),
        case("kill", Layers::Seccomp, Expect::Killed(libc::SIGSYS)),
        case("write_open", Layers::Seccomp, Expect::Killed(libc::SIGSYS)),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--probe") {
        child(&args[2..]);
    }
    // libtest's arguments (a name filter, --list) are accepted and ignored: the cases are one
    // sequence.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        println!("SKIPPED: escape probes need root (namespaces, mounts, cgroups)");
        if std::env::var_os("TERN_NO_SKIP").is_some_and(|v| v == "1") {
            eprintln!("TERN_NO_SKIP=1 (CI as root): the escape probes must not be skipped");
            std::process::exit(1);
        }
        return;
    }
    let hierarchy = Hierarchy::detect().unwrap_or_else(|e| {
        eprintln!("no cgroup hierarchy: {e}");
        std::process::exit(1)
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mut failed = 0;
    let all = cases();
    for (i, case) in all.iter().enumerate() {
        let name = format!("{}/{}", case.probe, case.layers.arg());
        match run_case(&hierarchy, i, case, port) {
            Ok(detail) => println!("test {name} ... ok ({detail})"),
            Err(why) => {
                failed += 1;
                println!("test {name} ... FAILED: {why}");
            }
        }
    }
    drop(listener);
    println!(
        "\nescape probes: {} passed; {failed} failed",
        all.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Runs one case; what the cell reported (or how it ended) if it ended as expected.
fn run_case(hierarchy: &Hierarchy, index: usize, case: &Case, port: u16) -> Result<String, String> {
    let artifacts = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(artifacts.path().join("echo.cwasm"), b"compiled").map_err(|e| e.to_string())?;
    let owner_only = artifacts.path().join("owner-only");
    std::fs::write(&owner_only, b"root's").map_err(|e| e.to_string())?;
    std::fs::set_permissions(
        &owner_only,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(|e| e.to_string())?;
    // The artifact directory must let the cell in (a tempdir is 0700).
    std::fs::set_permissions(
        artifacts.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(|e| e.to_string())?;
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cgroup = hierarchy
        .create(
            &format!("escape-{}-{index}", std::process::id()),
            &case.limits,
        )
        .map_err(|e| e.to_string())?;
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--probe")
        .arg(case.layers.arg())
        .arg(case.probe)
        .arg(artifacts.path())
        .arg(root.path())
        .arg(std::process::id().to_string())
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    // In its cgroup before it jails itself, so everything it starts is in there too.
    cgroup.add_process(child.id()).map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"go")
        .map_err(|e| e.to_string())?;
    let status = wait(&mut child, Duration::from_secs(30))?;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let oom_kills = cgroup.oom_kills().unwrap_or(0);
    // Whatever the probe started is gone with its PID namespace; the cgroup can go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup.processes().map(|p| p.is_empty()).unwrap_or(true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let removed = cgroup.remove();
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let report = || format!("exit {code}; stdout {out:?}; stderr {err:?}");
    // A cell that died setting up its layers has tested nothing.
    let Some(out) = out.strip_prefix("jailed\n") else {
        return Err(format!("not jailed: {}", report()));
    };
    let detail = match case.expect {
        Expect::Blocked if code == 0 && out.starts_with("BLOCKED") => out.trim().to_owned(),
        Expect::Allowed if code == 0 && out.starts_with("ALLOWED") => out.trim().to_owned(),
        Expect::Killed(signal) if code == killed_by(signal) => {
            if signal == libc::SIGKILL && oom_kills == 0 {
                return Err(format!(
                    "killed, but not by the cell's OOM killer: {}",
                    report()
                ));
            }
            format!("killed by signal {signal}, {oom_kills} OOM kills in its cgroup")
        }
        _ => return Err(report()),
    };
    removed.map_err(|e| format!("cgroup left behind: {e}"))?;
    Ok(detail)
}

fn wait(child: &mut std::process::Child, within: Duration) -> Result<ExitStatus, String> {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            return Err(format!("still running after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The jailed side: waits for the parent's go, jails itself, runs one probe, reports.
fn child(args: &[String]) -> ! {
    let [layers, probe, artifacts, root, host_pid, port] = args else {
        eprintln!("bad probe arguments {args:?}");
        std::process::exit(2)
    };
    let mut go = [0u8; 2];
    if std::io::stdin().read_exact(&mut go).is_err() {
        std::process::exit(2);
    }
    let spec = JailSpec {
        root: root.into(),
        artifacts: Some(artifacts.into()),
        hostname: "cell".into(),
        max_open_files: 32,
        user_namespace: layers == "userjail",
    };
    if let Err(e) = tern_cell::enter(&spec) {
        eprintln!("jail: {e}");
        std::process::exit(3);
    }
    // Built before privileges go (nothing needs a capability for it, but the real cell
    // prepares its runtime at this point too).
    let policy = Policy::cell();
    let run_as = (layers == "unprivileged").then_some(PROBE_USER);
    if let Err(e) = tern_cell::drop_privileges(run_as) {
        eprintln!("drop privileges: {e}");
        std::process::exit(3);
    }
    if layers == "seccomp" {
        let installed = policy.and_then(|p| p.install());
        if let Err(e) = installed {
            eprintln!("seccomp: {e}");
            std::process::exit(3);
        }
    }
    // Every layer is in place: from here on, whatever kills the cell is the probe's doing.
    println!("jailed");
    let host_pid: i32 = host_pid.parse().unwrap_or(0);
    let port: u16 = port.parse().unwrap_or(0);
    let verdict = probe_once(probe, host_pid, port);
    match verdict {
        Ok(detail) => println!("{detail}"),
        Err(escaped) => println!("ESCAPED: {escaped}"),
    }
    std::process::exit(0)
}

/// `Ok(report)` when every attempt was blocked (or, for `allowed`, worked); `Err` names what
/// got through.
fn probe_once(probe: &str, host_pid: i32, port: u16) -> Result<String, String> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    match probe {
        "host_files" => {
            for path in [
                "/etc/passwd",
                "/proc/self/status",
                "/sys/kernel",
                "/dev/null",
            ] {
                if Path::new(path).exists() {
                    return Err(format!("{path} is visible"));
                }
            }
            let mut names: Vec<String> = std::fs::read_dir("/")
                .map_err(|e| format!("cannot list /: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect();
            names.sort();
            if names != ["artifacts"] {
                return Err(format!("/ holds {names:?}"));
            }
            Ok("BLOCKED: only /artifacts exists".into())
        }
        "identity" => {
            use nix::unistd::{Gid, Uid, getgroups};
            let ids = (
                Uid::current(),
                Uid::effective(),
                Gid::current(),
                Gid::effective(),
            );
            let expected = (
                Uid::from_raw(PROBE_USER.uid),
                Uid::from_raw(PROBE_USER.uid),
                Gid::from_raw(PROBE_USER.gid),
                Gid::from_raw(PROBE_USER.gid),
            );
            if ids != expected {
                return Err(format!("runs as {ids:?}"));
            }
            if !getgroups().map_err(|e| e.to_string())?.is_empty() {
                return Err("kept supplementary groups".into());
            }
            // Root's files in reach are root's: a root-owned 0600 file stays closed.
            if std::fs::read("/artifacts/owner-only").is_ok() {
                return Err("read a root-only file".into());
            }
            if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err("became root again".into());
            }
            Ok("BLOCKED: its own user and group, no way back to root".into())
        }
        "writes" => {
            let artifact = std::fs::read("/artifacts/echo.cwasm")
                .map_err(|e| format!("artifact unreadable (the cell could not work): {e}"))?;
            if artifact != b"compiled" {
                return Err("artifact changed".into());
            }
            for path in ["/artifacts/echo.cwasm", "/artifacts/new", "/new"] {
                if std::fs::write(path, b"x").is_ok() {
                    return Err(format!("wrote {path}"));
                }
            }
            Ok("BLOCKED: artifacts readable, nothing writable".into())
        }
        "network" => {
            let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(_) => Err(format!("connected to the host's {to}")),
                Err(e) => Ok(format!("BLOCKED: connect to the host: {e}")),
            }
        }
        "host_pids" => {
            let own = std::process::id();
            if own != 1 {
                return Err(format!("pid {own}, not 1 in its own namespace"));
            }
            match kill(Pid::from_raw(host_pid), None) {
                Ok(()) => Err(format!("host pid {host_pid} is visible")),
                Err(e) => Ok(format!("BLOCKED: pid 1; host pid {host_pid}: {e}")),
            }
        }
        "ptrace" => match nix::sys::ptrace::attach(Pid::from_raw(host_pid)) {
            Ok(()) => Err(format!("attached to host pid {host_pid}")),
            Err(e) => Ok(format!("BLOCKED: ptrace attach: {e}")),
        },
        "mount" => {
            let none = None::<&str>;
            match nix::mount::mount(
                Some("x"),
                "/artifacts",
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                none,
            ) {
                Ok(()) => Err("mounted a tmpfs".into()),
                Err(e) => Ok(format!("BLOCKED: mount: {e}")),
            }
        }
        "hostname" => {
            let name = nix::unistd::gethostname().map_err(|e| e.to_string())?;
            if name != "cell" {
                return Err(format!("hostname {name:?}"));
            }
            match nix::unistd::sethostname("host") {
                Ok(()) => Err("renamed the host".into()),
                Err(e) => Ok(format!("BLOCKED: own hostname; sethostname: {e}")),
            }
        }
        "fork_bomb" => {
            let mut started = 0;
            let blocked = loop {
                // SAFETY: this process is single-threaded (no runtime, no threads started),
                // and the child only sleeps until its PID namespace ends.
                #[allow(unsafe_code)]
                match unsafe { nix::unistd::fork() } {
                    Ok(nix::unistd::ForkResult::Child) => loop {
                        std::thread::sleep(Duration::from_secs(60));
                    },
                    Ok(nix::unistd::ForkResult::Parent { .. }) => started += 1,
                    Err(e) => break e,
                }
                if started > 500 {
                    return Err("500 processes started".into());
                }
            };
            Ok(format!("BLOCKED: fork failed after {started}: {blocked}"))
        }
        "memory_bomb" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..256 {
                held.push(vec![1u8; 1 << 20]);
            }
            Err(format!("held {} MiB", held.len()))
        }
        "allowed" => {
            let artifact = std::fs::read("/artifacts/echo.cwasm").map_err(|e| e.to_string())?;
            let worker = std::thread::spawn(move || artifact.len());
            let len = worker.join().map_err(|_| "thread panicked".to_string())?;
            let buf = vec![7u8; 8 << 20];
            Ok(format!(
                "ALLOWED: read {len} bytes in a thread, {} MiB",
                buf.len() >> 20
            ))
        }
        "socket" => std::net::UdpSocket::bind("0.0.0.0:0")
            .map(|_| "ESCAPED: opened a socket".to_owned())
            .map_err(|e| format!("socket refused but not killed: {e}")),
        "exec" => {
            use std::os::unix::process::CommandExt;
            Err(format!(
                "exec returned: {}",
                Command::new("/artifacts/echo.cwasm").exec()
            ))
        }
        "process" => {
            // SAFETY: single-threaded, as for the fork bomb.
            #[allow(unsafe_code)]
            let forked = unsafe { nix::unistd::fork() };
            Err(format!("fork returned {forked:?}"))
        }
        "kill" => Err(format!(
            "kill returned {:?}",
            kill(Pid::from_raw(1), Signal::SIGCONT)
        )),
        "write_open" => Err(format!(
            "open for writing returned {:?}",
            std::fs::OpenOptions::new()
                .write(true)
                .open("/artifacts/echo.cwasm")
        )),
        other => Err(format!("unknown probe {other}")),
    }
}
