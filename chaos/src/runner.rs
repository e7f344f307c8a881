//! The shell of `tern chaos run`: starts the scenario's cluster as `tern up` processes on this
//! machine, deploys the function, sends the open-loop workload over HTTP (or through
//! `tern-client`, one client per node failing over to the others) while the fault schedule
//! runs, reads every accepted async invocation's final record after the faults heal, stops
//! the cluster, and hands the history to the checkers. The only module of this crate that
//! does I/O.
//!
//! This runner injects process faults (`kill` with restart, `pause`, `rolling_restart`), a
//! full disk (`disk_full`: the node's data directory is a small tmpfs of its own, filled to the
//! last byte for the fault and emptied at its heal; root only), clock jumps (`clock_jump`: the
//! node runs under libfaketime, its wall clock offset by what the runner writes to its clock
//! file, its monotonic clock untouched), damaged artifacts (`corrupt` with `what =
//! "artifact"`: the node killed, its compiled artifacts cut in half, and started again),
//! impostors (`impostor`: a `tern up` with a bad identity dialling every member), and
//! partitions and bad links (`partition`, `link`: the nodes dial each other through the
//! runner's UDP relays, [`crate::relay`], which drop, delay, reorder or duplicate datagrams
//! while the fault holds), and a node added to the running cluster (`add_node`: started with
//! every member as its peer, then each member restarted with it among its peers, as an
//! operator grows a Tern cluster; it takes load once it sees every member up and serves the
//! workload's function).
//!
//! The runner binds every node's HTTP and mesh ports once and passes them to each start of the
//! node (socket activation). A killed node's port stays the run's: nothing else on the machine
//! can take it and then answer requests meant for the node, and the restart finds it free.
//! While the node is down the runner closes each connection at once, as a dead port would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use command_fds::{CommandFdExt, FdMapping};
use hyper::Method;

use tern_sync::poison::lock;

use crate::ChaosError;
use crate::check::{Report, check};
use crate::history::{DeployOutcome, EntryView, Event, History, Mode, Outcome, Phase};
use crate::links::{self, Impairment};
use crate::relay::{Counts, Relays};
use crate::scenario::{
    ADD_NODE_GAP_S, BadCredential, Corruption, FaultKind, Scenario, VERSIONS_FUNCTION, Via,
};

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChaosError {
    let what = what.into();
    move |source| ChaosError::Io { what, source }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The `tern` executable the nodes run.
    pub tern: PathBuf,
    /// Where the workload's function is (`<dir>/<function>.wasm`).
    pub examples_dir: PathBuf,
    /// Where the run writes its nodes' data and logs, the history and the report.
    pub out: PathBuf,
    /// The workload's seed (the scenario's unless given).
    pub seed: Option<u64>,
}

/// A node process and how to start it again.
struct NodeProc {
    name: String,
    http: SocketAddr,
    /// Its mesh address (what its peers dial).
    mesh: SocketAddr,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// Set while the schedule has it killed or paused (an exit then is not a failure).
    faulted: bool,
    /// Its admin token (each node makes its own at first start): for the runner's own reads
    /// of the node (cluster view, metrics).
    token: String,
    /// With `workload.tenant`: the developer token of that tenant, which the workload's
    /// calls, deploys and reads carry instead of the admin token.
    workload_token: Option<String>,
    /// The node's HTTP listener and mesh socket, bound once for the whole run and handed to
    /// every start of the node (socket activation): no other process on the machine can take
    /// its ports while it is down (and then get the workload's requests), and a restart never
    /// finds them taken.
    sockets: (std::net::TcpListener, std::net::UdpSocket),
    /// With `workload.via = "client"`: its client API's UDP socket (held and handed over the
    /// same way) and address.
    client_api: Option<(std::net::UdpSocket, SocketAddr)>,
    /// While the node is down: closes every connection the held listener accepts, as a
    /// crashed node's port would refuse them (instead of letting them wait for a restart).
    refuser: Option<tokio::task::JoinHandle<()>>,
    /// libfaketime's offset file of a node whose clock the scenario jumps, and the offset in
    /// it (the sum of the jumps so far).
    clock: Option<PathBuf>,
    clock_offset_s: f64,
    /// In the cluster: from the start, or once an `add_node` has joined it. The workload,
    /// the deploys and the reads go only to joined nodes.
    joined: bool,
}

impl NodeProc {
    /// The token the workload's calls, deploys and reads carry on this node.
    fn caller(&self) -> String {
        self.workload_token
            .clone()
            .unwrap_or_else(|| self.token.clone())
    }

    /// Whether its process is running (started, and not ended).
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// How its process ended, if it was started and has ended.
    fn ended(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn spawn(&mut self, tern: &Path) -> Result<(), ChaosError> {
        if self.running() {
            // Scenario checks refuse overlapping faults; this would orphan a live node.
            return Err(ChaosError::Io {
                what: format!("starting node {}", self.name),
                source: std::io::Error::other("its previous process is still running"),
            });
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io(format!("opening {}", self.log.display())))?;
        let err = log.try_clone().map_err(io("duplicating the log"))?;
        let dup = |what: &str| io(format!("passing node {}'s {what} socket", self.name));
        let http = self.sockets.0.try_clone().map_err(dup("HTTP"))?;
        let mesh = self.sockets.1.try_clone().map_err(dup("mesh"))?;
        let mut fds = vec![
            FdMapping {
                parent_fd: http.into(),
                child_fd: 3,
            },
            FdMapping {
                parent_fd: mesh.into(),
                child_fd: 4,
            },
        ];
        let mut names = "http:mesh";
        if let Some((client, _)) = &self.client_api {
            fds.push(FdMapping {
                parent_fd: client.try_clone().map_err(dup("client API"))?.into(),
                child_fd: 5,
            });
            names = "http:mesh:client";
        }
        if let Some(refuser) = self.refuser.take() {
            refuser.abort();
        }
        let count = fds.len().to_string();
        let mut command = Command::new(tern);
        // systemd's socket activation, as `tern up` documents it: fds 3, 4 (and 5), named in
        // order; no LISTEN_PID (unknown before the child runs), which the node takes as "for me".
        command
            .fd_mappings(fds)
            .map_err(|e| dup("inherited")(std::io::Error::other(e)))?;
        let child = command
            .env("LISTEN_FDS", count)
            .env("LISTEN_FDNAMES", names)
            .env_remove("LISTEN_PID")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {}", tern.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// From now until the node's next start, connections to its port are accepted and closed
    /// at once: callers see a dead node, promptly. Needs the run's runtime (a no-op without
    /// one, as when the run is torn down).
    fn refuse(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let listener = self
            .sockets
            .0
            .try_clone()
            .and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .and_then(|l| {
                let _guard = runtime.enter();
                tokio::net::TcpListener::from_std(l)
            });
        let Ok(listener) = listener else {
            // Connections then wait for the restart instead: slower answers, nothing wrong.
            return;
        };
        if let Some(old) = self.refuser.take() {
            old.abort();
        }
        self.refuser = Some(runtime.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((connection, _)) => drop(connection),
                    // Out of descriptors, or a connection reset before it was taken: the
                    // listener is still the run's, so go on after a breath.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }));
    }

    /// Sends `sig` to the node process (a system call, no helper process: the load runs on
    /// the same runtime).
    fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id() as i32))
        {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NodeProc {
    /// No node outlives the run, whatever ends it (an error, a panic): a paused one is
    /// continued first so it can die.
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::CONT);
        self.kill();
        if let Some(refuser) = self.refuser.take() {
            refuser.abort();
        }
    }
}

/// Where a run keeps its cluster CA's key when impostors need certificates of that CA.
const CA_KEY: &str = "ca.key";

/// How long an impostor keeps dialling the members (the mesh redials within a second).
const IMPOSTOR_LIFE: Duration = Duration::from_secs(5);

/// The name an `unknown_name` impostor's certificate is for: not a node name the runner gives
/// (those are single letters), and sorting before them, so it dials every member (of two
/// nodes, the one whose name sorts first dials).
const UNKNOWN_NAME: &str = "0-outsider";

/// Runs impostor `k`: a `tern up` process with a bad identity (`credential`) and every member
/// as its peer, for [`IMPOSTOR_LIFE`], watching its own cluster view and the members' refused
/// handshakes; then stops it and records what happened (an [`Event::Impostor`], judged by the
/// `impostors_refused` checker, which also fails a run whose impostor never started).
async fn impostor(
    credential: BadCredential,
    k: usize,
    env: Vec<(String, String)>,
    options: &RunOptions,
    nodes: &Mutex<Vec<NodeProc>>,
    history: &Mutex<History>,
    t0: Instant,
) {
    let label = format!("impostor-{k}");
    let what = match credential {
        BadCredential::WrongCa => "wrong_ca",
        BadCredential::Expired => "expired",
        BadCredential::UnknownName => "unknown_name",
    };
    // Not a fault window: an impostor excuses no error of the cluster it tries to join.
    let at_us = t0.elapsed().as_micros() as u64;
    let members: Vec<(String, SocketAddr, SocketAddr, String)> = lock(nodes)
        .iter()
        .filter(|n| n.joined)
        .map(|n| (n.name.clone(), n.http, n.mesh, n.token.clone()))
        .collect();
    // A member's name for a foreign or expired certificate (the strongest claim: a stolen or
    // outdated identity of a real member), a name outside the cluster for a valid one. The
    // first member's name, so it dials every other member (the name that sorts first dials).
    let claimed = match credential {
        BadCredential::UnknownName => UNKNOWN_NAME.to_owned(),
        _ => members
            .first()
            .map_or_else(|| "a".to_owned(), |m| m.0.clone()),
    };
    let rejected = || async {
        let mut sum = 0u64;
        for (_, http, _, token) in &members {
            sum += metric(*http, token, "tern_rejected_handshakes_total")
                .await
                .unwrap_or(0.0) as u64;
        }
        sum
    };
    let before = rejected().await;
    let dir = options.out.join("impostors").join(&label);
    let started = start_impostor(credential, &claimed, &dir, options, &members, env);
    let (mut answered, mut max_peers_up) = (false, 0u32);
    match started {
        Ok(mut proc) => {
            let token_file = dir.join("data").join("admin.token");
            // Its life counts from its first answer (a loaded machine starts it late), and a
            // start that takes a minute ends the attempt (never answered).
            let start_by = Instant::now() + Duration::from_secs(60);
            let mut until: Option<Instant> = None;
            while Instant::now() < until.unwrap_or(start_by) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Ok(token) = std::fs::read_to_string(&token_file) else {
                    continue;
                };
                if let Some(r) = get(proc.http, token.trim(), "/v1/cluster").await
                    && r.status == 200
                {
                    answered = true;
                    until.get_or_insert_with(|| Instant::now() + IMPOSTOR_LIFE);
                    let view: serde_json::Value =
                        serde_json::from_slice(&r.body).unwrap_or_default();
                    let up = view["members"].as_array().map_or(0, |m| {
                        m.iter()
                            .filter(|m| m["state"] == "up" && m["name"] != claimed.as_str())
                            .count()
                    });
                    max_peers_up = max_peers_up.max(u32::try_from(up).unwrap_or(u32::MAX));
                }
            }
            proc.kill();
        }
        Err(e) => eprintln!("tern chaos: the {what} impostor did not start: {e}"),
    }
    let after = rejected().await;
    lock(history).push(Event::Impostor {
        at_us,
        credential: what.to_owned(),
        claimed,
        answered,
        max_peers_up,
        rejected_handshakes: after.saturating_sub(before),
    });
}

/// The impostor's certificates in `dir/pki` and its process, started.
fn start_impostor(
    credential: BadCredential,
    claimed: &str,
    dir: &Path,
    options: &RunOptions,
    members: &[(String, SocketAddr, SocketAddr, String)],
    config_env: Vec<(String, String)>,
) -> Result<NodeProc, ChaosError> {
    use tern_cluster::pki;
    let pki_dir = dir.join("pki");
    let name: tern_cluster::NodeName = claimed
        .parse()
        .map_err(|e: tern_cluster::ClusterError| ChaosError::Pki(e.to_string()))?;
    let pki_err = |e: tern_cluster::ClusterError| ChaosError::Pki(e.to_string());
    std::fs::create_dir_all(&pki_dir).map_err(io(format!("creating {}", pki_dir.display())))?;
    let ca_key = options.out.join(CA_KEY);
    let copy_ca = || {
        std::fs::copy(
            options.out.join("pki").join("ca.pem"),
            pki_dir.join("ca.pem"),
        )
        .map(drop)
        .map_err(io("copying the cluster's CA certificate"))
    };
    match credential {
        // Another cluster's CA, which the members do not trust (nor it them).
        BadCredential::WrongCa => pki::init(&pki_dir, &[name]).map(drop).map_err(pki_err)?,
        BadCredential::Expired => {
            copy_ca()?;
            pki::add_expired_node(&pki_dir, &ca_key, &name)
                .map(drop)
                .map_err(pki_err)?;
        }
        BadCredential::UnknownName => {
            copy_ca()?;
            pki::add_node(&pki_dir, &ca_key, &name)
                .map(drop)
                .map_err(pki_err)?;
        }
    }
    let (listener, udp) = bind_node_sockets()?;
    let http = listener
        .local_addr()
        .map_err(io("reading an HTTP address"))?;
    let mesh = udp.local_addr().map_err(io("reading a mesh address"))?;
    let mut args: Vec<String> = vec![
        "up".into(),
        "--data".into(),
        dir.join("data").display().to_string(),
        "--node-name".into(),
        claimed.into(),
        "--cluster-dir".into(),
        pki_dir.display().to_string(),
        "--examples-dir".into(),
        options.examples_dir.display().to_string(),
    ];
    for (member, _, member_mesh, _) in members.iter().filter(|m| m.0 != claimed) {
        args.push("--peer".into());
        args.push(format!("{member}={member_mesh}"));
    }
    let mut proc = NodeProc {
        name: claimed.into(),
        http,
        mesh,
        args,
        env: [("TERN_EXAMPLES".to_owned(), "[]".to_owned())]
            .into_iter()
            .chain(config_env)
            .collect(),
        log: dir.join("impostor.log"),
        child: None,
        faulted: true,
        token: String::new(),
        workload_token: None,
        sockets: (listener, udp),
        client_api: None,
        refuser: None,
        clock: None,
        clock_offset_s: 0.0,
        joined: false,
    };
    proc.spawn(&options.tern)?;
    Ok(proc)
}

/// Metric `name` (unlabelled) from the node at `addr`, if it answers and exports it.
async fn metric(addr: SocketAddr, token: &str, name: &str) -> Option<f64> {
    let r = get(addr, token, "/metrics").await?;
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// libfaketime's multi-threaded library: `TERN_CHAOS_LIBFAKETIME`, else where Debian and
/// a source install put it.
pub fn libfaketime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TERN_CHAOS_LIBFAKETIME") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// How long a node under libfaketime may take to see a new offset (its cache lasts 1 s).
const CLOCK_FILE_REREAD: Duration = Duration::from_millis(1200);

/// A node's HTTP listener and mesh socket on free loopback ports, with their addresses.
fn bind_node_sockets() -> Result<(std::net::TcpListener, std::net::UdpSocket), ChaosError> {
    let addr = "127.0.0.1:0";
    let http = std::net::TcpListener::bind(addr).map_err(io("binding a node's HTTP port"))?;
    let mesh = std::net::UdpSocket::bind(addr).map_err(io("binding a node's mesh port"))?;
    Ok((http, mesh))
}

/// The scenario's node settings as the `TERN_*` variables every node gets.
fn config_env(scenario: &Scenario) -> Vec<(String, String)> {
    scenario
        .cluster
        .config
        .iter()
        .map(|(k, v)| (format!("TERN_{}", k.to_ascii_uppercase()), setting(v)))
        .collect()
}

fn setting(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `scenario` and returns the checkers' verdict; the history (`history.jsonl`), the
/// verdict (`verdict.json`), the timeline (`timeline.svg`) and `report.md` are in
/// `options.out`.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<Report, ChaosError> {
    for f in &scenario.faults {
        if matches!(f.kind, FaultKind::DiskFull { .. }) && !rustix::process::geteuid().is_root() {
            return Err(ChaosError::NeedsRoot {
                kind: "disk_full",
                why: "the node's data directory becomes a tmpfs of its own",
            });
        }
    }
    let clock_jumps = |name: &str| {
        scenario
            .faults
            .iter()
            .any(|f| matches!(&f.kind, FaultKind::ClockJump { node, .. } if node == name))
    };
    let faketime = if scenario.nodes().iter().any(|n| clock_jumps(n)) {
        Some(libfaketime().ok_or(ChaosError::NeedsTool {
            kind: "clock_jump",
            tool: "libfaketime",
            hint: "Debian: apt-get install faketime",
        })?)
    } else {
        None
    };
    // The load's arrivals, before anything starts (a trace that does not read stops the run
    // here).
    let trace_text = match &scenario.workload.trace {
        Some(t) => Some(
            std::fs::read_to_string(&t.file)
                .map_err(io(format!("reading the trace {}", t.file)))?,
        ),
        None => None,
    };
    let schedule = scenario
        .workload
        .schedule(trace_text.as_deref(), options.seed.unwrap_or(scenario.seed))?;
    scenario.check_schedule(&schedule)?;
    drop(trace_text);
    let out = &options.out;
    if out.join("data").exists() {
        return Err(ChaosError::OutInUse(out.display().to_string()));
    }
    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let pki = out.join("pki");
    // The nodes that start, then those added during the run.
    let names = scenario.all_nodes();
    let starting = scenario.nodes().len();
    let added_classes = scenario.added();
    let node_names: Vec<_> = names
        .iter()
        .map(|n| n.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: tern_cluster::ClusterError| ChaosError::Pki(e.to_string()))?;
    if !pki.join("ca.pem").exists() {
        // Impostors with this CA's certificates (expired, or for a name not in the cluster)
        // need its key; it stays in the run's directory, outside the nodes' `pki`.
        let keep = scenario
            .faults
            .iter()
            .any(|f| matches!(f.kind, FaultKind::Impostor { .. }))
            .then(|| out.join(CA_KEY));
        tern_cluster::pki::init_keeping_ca_key(&pki, &node_names, keep.as_deref())
            .map_err(|e| ChaosError::Pki(e.to_string()))?;
    }
    let mut nodes = Vec::new();
    let mut sockets = Vec::new();
    let mut mesh = Vec::new();
    for _ in names {
        let (http, udp) = bind_node_sockets()?;
        mesh.push(udp.local_addr().map_err(io("reading a mesh address"))?);
        sockets.push((http, udp));
    }
    // Links that a fault will cut or spoil run through relays; otherwise the nodes dial each
    // other directly, as in production.
    let relays = if scenario
        .faults
        .iter()
        .any(|f| matches!(f.kind, FaultKind::Partition { .. } | FaultKind::Link { .. }))
    {
        let seed = options.seed.unwrap_or(scenario.seed);
        // Between the nodes that start: an added node dials and is dialled directly.
        Some(Arc::new(
            Relays::start(&mesh[..starting], seed)
                .await
                .map_err(io("starting the link relays"))?,
        ))
    } else {
        None
    };
    for ((i, name), (listener, udp)) in names.iter().enumerate().zip(sockets) {
        let http = listener
            .local_addr()
            .map_err(io("reading an HTTP address"))?;
        let client_api = match scenario.workload.via {
            Via::Client => {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0")
                    .map_err(io("binding a node's client API port"))?;
                let addr = socket
                    .local_addr()
                    .map_err(io("reading a client API address"))?;
                Some((socket, addr))
            }
            Via::Http => None,
        };
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data".into(),
            out.join("data").join(name).display().to_string(),
            "--node-name".into(),
            (*name).into(),
            "--cluster-dir".into(),
            pki.display().to_string(),
            "--examples-dir".into(),
            options.examples_dir.display().to_string(),
        ];
        // A starting node's peers are the other starting nodes (an added one becomes its peer
        // when it is restarted for the add); an added node's are all the others.
        let joined = i < starting;
        for (j, peer) in names.iter().enumerate().filter(|(j, _)| *j != i) {
            if joined && j >= starting {
                continue;
            }
            let at = relays
                .as_ref()
                .filter(|_| joined && j < starting)
                .and_then(|r| r.address(i, j))
                .unwrap_or(mesh[j]);
            args.push("--peer".into());
            args.push(format!("{peer}={at}"));
        }
        let mut env = vec![("TERN_EXAMPLES".to_owned(), "[]".to_owned())];
        let class = match i.checked_sub(starting) {
            None => scenario.cluster.classes.get(i).map(String::as_str),
            Some(k) => added_classes.get(k).copied(),
        };
        if let Some(class) = class {
            env.push(("TERN_NODE_CLASS".into(), class.to_owned()));
        }
        env.extend(config_env(scenario));
        // A node whose clock jumps runs under libfaketime: its wall clock is the system's plus
        // the offset in its clock file (re-read at most once a second); its monotonic clock
        // is left alone, as a real clock jump leaves it.
        let clock = match &faketime {
            Some(lib) if clock_jumps(name) => {
                let file = out.join(format!("{name}.clock"));
                std::fs::write(&file, "+0\n").map_err(io(format!("writing {}", file.display())))?;
                for (k, v) in [
                    ("LD_PRELOAD", lib.display().to_string()),
                    ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
                    ("FAKETIME_CACHE_DURATION", "1".into()),
                ] {
                    env.push((k.to_owned(), v));
                }
                Some(file)
            }
            _ => None,
        };
        nodes.push(NodeProc {
            name: (*name).into(),
            http,
            mesh: mesh[i],
            args,
            env,
            log: out.join(format!("{name}.log")),
            child: None,
            faulted: false,
            token: String::new(),
            workload_token: None,
            sockets: (listener, udp),
            client_api,
            refuser: None,
            clock,
            clock_offset_s: 0.0,
            joined,
        });
    }
    // A node whose disk fills gets a data directory that can fill without filling the host's.
    let mut small_disks = SmallDisks::default();
    for f in &scenario.faults {
        if let FaultKind::DiskFull { node, .. } = &f.kind
            && !small_disks.0.iter().any(|d| d.ends_with(node))
        {
            small_disks.mount(&out.join("data").join(node))?;
        }
    }
    let nodes = Arc::new(Mutex::new(nodes));
    let result = drive(scenario, options, &nodes, relays.clone(), &schedule).await;
    // Whatever happened, no node outlives the run (and then its small disk can go).
    for n in lock(&nodes).iter_mut() {
        n.signal(rustix::process::Signal::CONT);
        n.kill();
    }
    drop(small_disks);
    drop(relays);
    let history = result?;
    std::fs::write(out.join("history.jsonl"), history.to_json_lines())
        .map_err(io("writing the history"))?;
    // echo's answer is its input; a map's joined array is not compared.
    let expected = |mode: Mode, input: &str| match mode {
        Mode::Sync | Mode::Async => Some(input.to_owned()),
        Mode::Map => None,
    };
    let report = if scenario.workload.function == "echo" {
        check(&history, scenario, expected)
    } else {
        check(&history, scenario, |_, _| None)
    };
    let verdict = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(out.join("verdict.json"), verdict).map_err(io("writing the verdict"))?;
    let timeline = crate::timeline::Timeline::of(&history)
        .svg()
        .map_err(ChaosError::Timeline)?;
    std::fs::write(out.join("timeline.svg"), timeline).map_err(io("writing the timeline"))?;
    std::fs::write(out.join("report.md"), markdown(scenario, &report))
        .map_err(io("writing the report"))?;
    Ok(report)
}

/// The size of a node's data directory when a scenario fills its disk: room for the store of a
/// run (a few MiB), and little to fill.
const SMALL_DISK_MB: u64 = 64;

/// The tmpfs data directories of a run, unmounted when dropped (whatever ends the run; the
/// nodes on them are stopped first).
#[derive(Default)]
struct SmallDisks(Vec<PathBuf>);

impl SmallDisks {
    fn mount(&mut self, dir: &Path) -> Result<(), ChaosError> {
        use rustix::mount::{MountFlags, mount};
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let options = std::ffi::CString::new(format!("size={SMALL_DISK_MB}m,mode=0700"))
            .map_err(|e| io("the tmpfs options")(std::io::Error::other(e)))?;
        mount(
            "tern-chaos",
            dir,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            options.as_c_str(),
        )
        .map_err(|e| io(format!("mounting a tmpfs on {}", dir.display()))(e.into()))?;
        self.0.push(dir.to_owned());
        Ok(())
    }
}

impl Drop for SmallDisks {
    fn drop(&mut self) {
        for dir in self.0.drain(..) {
            // Lazily: a process that still has a file open there cannot keep it mounted.
            if let Err(e) = rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH) {
                eprintln!("tern chaos: cannot unmount {}: {e}", dir.display());
            }
        }
    }
}

/// Fills the file system of `dir` to its last byte with a file `FILLER` there, and returns
/// how many bytes it took.
fn fill_disk(dir: &Path) -> std::io::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join(FILLER))?;
    let chunk = vec![0xA5u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                return Ok(written);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Cuts every compiled artifact (`*.cwasm`) in `dir` to half its length, as a crash in the
/// middle of a write or a bad disk would leave it; returns how many.
fn truncate_artifacts(dir: &Path) -> std::io::Result<usize> {
    let mut damaged = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let len = file.metadata()?.len();
            file.set_len(len / 2)?;
            damaged += 1;
        }
    }
    Ok(damaged)
}

/// Flips one bit of `file`, in a byte that is not zero (sled's log is mostly written data,
/// with zeroed space at the ends of its segments, where a flip would damage nothing), chosen
/// by `seed`. Says which, for the report (naming the file `label`).
fn flip_a_bit(file: &Path, label: &str, seed: u64) -> std::io::Result<String> {
    let mut bytes = std::fs::read(file)?;
    let written: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != 0).collect();
    if written.is_empty() {
        return Err(std::io::Error::other("the file holds no written byte"));
    }
    let mut draw = Draw::seeded(seed);
    let at = written[(draw.next() % written.len() as u64) as usize];
    let bit = draw.next() % 8;
    bytes[at] ^= 1 << bit;
    std::fs::write(file, &bytes)?;
    Ok(format!(
        "bit {bit} of byte {at} of {label} ({} bytes) flipped",
        bytes.len()
    ))
}

/// The file that fills a node's disk for a `disk_full` fault.
const FILLER: &str = "chaos-disk-filler";

async fn get(addr: SocketAddr, token: &str, path: &str) -> Option<tern_bench::Response> {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    tokio::time::timeout(
        Duration::from_secs(5),
        tern_bench::request_once(addr, Method::GET, path, &headers, Bytes::new()),
    )
    .await
    .ok()?
    .ok()
}

/// Starts every node and waits until each answers and sees every other one up.
async fn start_all(nodes: &Mutex<Vec<NodeProc>>, tern: &Path) -> Result<(), ChaosError> {
    for n in lock(nodes).iter_mut().filter(|n| n.joined) {
        n.spawn(tern)?;
    }
    let count = joined(nodes).len();
    for i in joined(nodes) {
        wait_ready(nodes, i, count - 1).await?;
    }
    Ok(())
}

/// The indexes of the nodes in the cluster now.
fn joined(nodes: &Mutex<Vec<NodeProc>>) -> Vec<usize> {
    lock(nodes)
        .iter()
        .enumerate()
        .filter(|(_, n)| n.joined)
        .map(|(i, _)| i)
        .collect()
}

/// Waits until node `i` answers its cluster view with at least `peers_up` peers up (every
/// other node at the start; none after a restart, when another node may be under a fault).
async fn wait_ready(
    nodes: &Mutex<Vec<NodeProc>>,
    i: usize,
    peers_up: usize,
) -> Result<(), ChaosError> {
    let (name, addr, log, data) = {
        let n = &lock(nodes)[i];
        let data = PathBuf::from(&n.args[2]);
        (n.name.clone(), n.http, n.log.clone(), data)
    };
    let t0 = Instant::now();
    loop {
        let exited = lock(nodes)[i].ended();
        if let Some(status) = exited {
            return Err(ChaosError::Exited {
                node: name,
                code: status.code(),
                log: log.display().to_string(),
            });
        }
        if let Ok(token) = std::fs::read_to_string(data.join("admin.token")) {
            let token = token.trim().to_owned();
            // Briefly: a node that is not up yet leaves the request waiting on the listener the
            // runner holds, and one that exited meanwhile should be noticed soon.
            let polled =
                tokio::time::timeout(Duration::from_secs(1), get(addr, &token, "/v1/cluster"))
                    .await
                    .ok()
                    .flatten();
            if let Some(r) = polled
                && r.status == 200
            {
                let view: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let up = view["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["state"] == "up").count());
                if up >= peers_up {
                    lock(nodes)[i].token = token;
                    return Ok(());
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(ChaosError::NotReady {
                node: name,
                secs: 60,
                log: log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tiny seeded generator (xorshift): the mode of each request.
struct Draw(u64);

impl Draw {
    /// Every seed its own sequence (splitmix64 of it; xorshift needs a non-zero state).
    fn seeded(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

async fn drive(
    scenario: &Scenario,
    options: &RunOptions,
    nodes: &Arc<Mutex<Vec<NodeProc>>>,
    relays: Option<Arc<Relays>>,
    schedule: &[Duration],
) -> Result<History, ChaosError> {
    let tern = options.tern.clone();
    start_all(nodes, &tern).await?;
    if let Some(tenant) = &scenario.workload.tenant {
        let token = tenant_token(nodes, tenant).await?;
        for n in lock(nodes).iter_mut() {
            n.workload_token = Some(token.clone());
        }
    }
    deploy(scenario, options, nodes).await?;
    let clients: Option<Clients> = match scenario.workload.via {
        Via::Client => Some(Arc::new(Mutex::new(connect_clients(options, nodes).await?))),
        Via::Http => None,
    };
    let history = Arc::new(Mutex::new(History::default()));
    let t0 = Instant::now();
    let now_us = move || t0.elapsed().as_micros() as u64;
    let faults = tokio::spawn(run_faults(
        scenario.clone(),
        options.clone(),
        nodes.clone(),
        relays,
        history.clone(),
        t0,
        clients.clone(),
    ));
    let watchdog = tokio::spawn(watch(nodes.clone(), history.clone(), tern.clone(), t0));
    let views = tokio::spawn(watch_views(nodes.clone(), history.clone(), t0));
    let deploys = scenario.workload.deploy_every_s.map(|every| {
        tokio::spawn(deploy_versions(
            scenario.clone(),
            options.clone(),
            every,
            nodes.clone(),
            history.clone(),
            t0,
        ))
    });
    // The open-loop workload: arrivals as scheduled (at the rate, or as the trace has them)
    // whatever the answers do.
    let w = &scenario.workload;
    let mix = w.mix;
    let total = u64::from(mix.sync + mix.asynchronous + mix.map);
    let mut draw = Draw::seeded(options.seed.unwrap_or(scenario.seed));
    let scheduled_ops = schedule.len() as u64;
    let mut requests = tokio::task::JoinSet::new();
    let mut max_lag_us = 0u64;
    let path = format!("/v1/functions/{}/invoke", w.function);
    for (op, at) in (1u64..).zip(schedule) {
        let next = t0 + *at;
        tokio::time::sleep_until(next.into()).await;
        // Open loop: the operation's time is its scheduled one, and how late the send is,
        // is measured (a generator that falls behind invalidates the run).
        let scheduled_us = next.duration_since(t0).as_micros() as u64;
        max_lag_us = max_lag_us.max(now_us().saturating_sub(scheduled_us));
        while requests.try_join_next().is_some() {}
        let pick = draw.next() % total;
        let mode = if pick < u64::from(mix.sync) {
            Mode::Sync
        } else if pick < u64::from(mix.sync + mix.asynchronous) {
            Mode::Async
        } else {
            Mode::Map
        };
        let (node, addr, token, client) = {
            let n = lock(nodes);
            let c = clients.as_ref().map(|c| lock(c));
            // Through tern-client, to the nodes there are clients for (those that started,
            // and those added once they joined).
            let targets: Vec<usize> = (0..n.len())
                .filter(|&k| n[k].joined && c.as_ref().is_none_or(|c| c.contains_key(&k)))
                .collect();
            let k = targets[(op as usize) % targets.len()];
            let client = c.as_ref().and_then(|c| c.get(&k).cloned());
            (n[k].name.clone(), n[k].http, n[k].caller(), client)
        };
        let input = match mode {
            Mode::Map => format!("[\"{op}-a\",\"{op}-b\"]"),
            _ => format!("op-{op}"),
        };
        let query = match mode {
            Mode::Sync => "",
            Mode::Async => "?mode=async",
            Mode::Map => "?map=1",
        };
        lock(&history).push(Event::Invoke {
            op,
            at_us: scheduled_us,
            node: node.clone(),
            mode,
            input: input.clone(),
        });
        let history = history.clone();
        let url = format!("{path}{query}");
        let function = w.function.clone();
        requests.spawn(async move {
            let outcome = match client {
                Some(client) => call_through(&client, &function, mode, input).await,
                None => {
                    match request_within(addr, Method::POST, &url, &token, Bytes::from(input)).await
                    {
                        Err(reason) => Outcome::Unknown { reason },
                        Ok(r) => outcome_of(mode, &r),
                    }
                }
            };
            lock(&history).push(Event::Complete {
                op,
                at_us: now_us(),
                outcome,
            });
        });
    }
    lock(&history).push(Event::Load {
        scheduled_ops,
        max_lag_us,
    });
    match faults.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(io("the fault schedule")(std::io::Error::other(e))),
    }
    let deployed = match deploys {
        Some(task) => task
            .await
            .map_err(|e| io("the deploys during the load")(std::io::Error::other(e)))??,
        None => false,
    };
    // The registries are watched from the moment the faults and deploys are over, while the
    // last requests drain: a request may wait for its whole timeout, and a watch started
    // after it would see the registries agree late however soon they did. Once the requests
    // are in, the last fault is given time to heal before every accepted async invocation's
    // record is read.
    let registries = async {
        if deployed {
            watch_registries(scenario, nodes, &history, t0).await;
        }
    };
    let drained = async {
        while requests.join_next().await.is_some() {}
        tokio::time::sleep(Duration::from_millis(scenario.expect.recovery_ms)).await;
    };
    tokio::join!(drained, registries);
    views.abort();
    lock(&history).push(Event::ViewsWatched { until_us: now_us() });
    let accepted: Vec<(u64, String, String)> = {
        let h = lock(&history);
        let sent_to: HashMap<u64, &str> = h
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Invoke { op, node, .. } => Some((*op, node.as_str())),
                _ => None,
            })
            .collect();
        h.events
            .iter()
            .filter_map(|e| match e {
                Event::Complete {
                    op,
                    outcome: Outcome::Accepted { id },
                    ..
                } => Some((*op, id.clone(), sent_to.get(op)?.to_string())),
                _ => None,
            })
            .collect()
    };
    // Time for the replays of a restarted node; past it, what is still pending stays so.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (op, id, node) in accepted {
        // Read where it was sent: over HTTP from that node — or, when it cannot answer, from
        // the others (a node asks its peers for records it does not hold) — or through the
        // client that sent it (which asks the node that accepted it first).
        let (others, client) = {
            let n = lock(nodes);
            let Some(k) = n.iter().position(|p| p.name == node) else {
                continue;
            };
            let client = clients.as_ref().and_then(|c| lock(c).get(&k).cloned());
            let mut others: Vec<(SocketAddr, String)> =
                n.iter().map(|p| (p.http, p.caller())).collect();
            others.rotate_left(k);
            // Only joined nodes answer (an add that failed leaves its node out).
            let answering: Vec<SocketAddr> =
                n.iter().filter(|p| p.joined).map(|p| p.http).collect();
            others.retain(|(addr, _)| answering.contains(addr));
            (others, client)
        };
        loop {
            let (status, attempts, output) = match &client {
                Some(client) => read_through(client, &id).await,
                None => {
                    let mut read = ("unreadable".to_owned(), 0, None);
                    for (addr, token) in &others {
                        read = read_over_http(*addr, token, &id).await;
                        if read.0 != "unreadable" {
                            break;
                        }
                    }
                    read
                }
            };
            if status == "pending" && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            lock(&history).push(Event::Finished {
                op,
                at_us: now_us(),
                status,
                attempts,
                output,
            });
            break;
        }
    }
    if let Some(clients) = &clients {
        for c in lock(clients).values() {
            c.close();
        }
    }
    watchdog.abort();
    let h = lock(&history).clone();
    Ok(h)
}

/// How long the runner waits for any answer to one of its requests (through `tern-client`:
/// to one exchange with one node).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the runner waits for a call through `tern-client` to end, the client's own
/// retries and failovers included (its default 3 retries of [`REQUEST_TIMEOUT`] each, with
/// backoff, fit).
const CLIENT_CALL_TIMEOUT: Duration = Duration::from_secs(75);

/// An async invocation's record as `GET /v1/invocations/{id}` on `addr` shows it: its status
/// (`unreadable` without an answer), attempts and output.
async fn read_over_http(addr: SocketAddr, token: &str, id: &str) -> (String, u32, Option<String>) {
    let record = get(addr, token, &format!("/v1/invocations/{id}"))
        .await
        .filter(|r| r.status == 200)
        .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok());
    let status = record
        .as_ref()
        .and_then(|v| v["status"].as_str())
        .unwrap_or("unreadable")
        .to_owned();
    let v = record.unwrap_or_default();
    (
        status,
        v["attempts"].as_u64().unwrap_or(0) as u32,
        v["result"].as_str().map(str::to_owned),
    )
}

/// The same record read through `client` (which asks the node that accepted it first).
async fn read_through(client: &tern_client::Client, id: &str) -> (String, u32, Option<String>) {
    let unreadable = || ("unreadable".to_owned(), 0, None);
    let Ok(id) = id.parse::<tern_client::InvocationId>() else {
        return unreadable();
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.result(&id)).await {
        Ok(Ok(record)) => {
            let status = match record.status {
                tern_client::InvocationStatus::Pending => "pending",
                tern_client::InvocationStatus::Succeeded => "succeeded",
                tern_client::InvocationStatus::Failed => "failed",
            };
            let output = record
                .output
                .map(|o| String::from_utf8_lossy(&o).into_owned());
            (status.to_owned(), record.attempts, output)
        }
        _ => unreadable(),
    }
}

/// The workload's clients (with `via = "client"`) by node index: one per starting node, and
/// one per added node once it has joined.
type Clients = Arc<Mutex<HashMap<usize, tern_client::Client>>>;

/// One `tern-client` per node, connected (see [`connect_client`]).
async fn connect_clients(
    options: &RunOptions,
    nodes: &Mutex<Vec<NodeProc>>,
) -> Result<HashMap<usize, tern_client::Client>, ChaosError> {
    let mut clients = HashMap::new();
    for k in joined(nodes) {
        clients.insert(k, connect_client(options, nodes, k).await?);
    }
    Ok(clients)
}

/// A `tern-client` for node `k`, connected: its seeds are every joined node's client API,
/// node `k`'s first, so the calls the runner sends to node `k` go there while it answers and
/// fail over to the next nodes when it does not, as the client promises its users. It carries
/// node `k`'s admin token (or the workload's tenant's token), which every node takes once the
/// nodes have linked (tokens replicate).
async fn connect_client(
    options: &RunOptions,
    nodes: &Mutex<Vec<NodeProc>>,
    k: usize,
) -> Result<tern_client::Client, ChaosError> {
    let (seeds, name, token) = {
        let n = lock(nodes);
        let mut order: Vec<usize> = (0..n.len()).filter(|&j| j == k || n[j].joined).collect();
        let first = order.iter().position(|&j| j == k).unwrap_or(0);
        order.rotate_left(first);
        let seeds: Vec<(String, SocketAddr)> = order
            .iter()
            .filter_map(|&j| Some((n[j].name.clone(), n[j].client_api.as_ref()?.1)))
            .collect();
        (seeds, n[k].name.clone(), n[k].caller())
    };
    let ca = options.out.join("pki").join("ca.pem");
    let mut config =
        tern_client::ClientConfig::new(seeds, tern_client::Pem::Path(ca)).with_token(token);
    config.request_timeout = REQUEST_TIMEOUT;
    tern_client::Client::connect(config)
        .await
        .map_err(|e| ChaosError::Client {
            node: name,
            detail: e.to_string(),
        })
}

/// One call of the workload through `client`, bounded by [`CLIENT_CALL_TIMEOUT`]: the API's
/// typed errors are failures with their code (and the status the HTTP API gives that code);
/// every other end (no answer, no node reachable, a broken exchange) is an unknown outcome.
async fn call_through(
    client: &tern_client::Client,
    function: &str,
    mode: Mode,
    input: String,
) -> Outcome {
    let options = tern_client::InvokeOptions {
        map: mode == Mode::Map,
        ..Default::default()
    };
    let call = async {
        match mode {
            Mode::Async => client
                .invoke_async_with(function, input, options)
                .await
                .map(|id| Outcome::Accepted { id: id.to_string() }),
            Mode::Sync | Mode::Map => {
                client
                    .invoke_with(function, input, options)
                    .await
                    .map(|out| Outcome::Ok {
                        output: String::from_utf8_lossy(&out.output).into_owned(),
                        ran_on: out.node,
                    })
            }
        }
    };
    match tokio::time::timeout(CLIENT_CALL_TIMEOUT, call).await {
        Err(_) => Outcome::Unknown {
            reason: format!("no answer within {} s", CLIENT_CALL_TIMEOUT.as_secs()),
        },
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => client_outcome(e),
    }
}

/// How a call through `tern-client` that ended in `e` is judged: the API's typed errors are
/// failures with their code and the status the HTTP API gives it; a call that may have run
/// (no answer in time, no node reachable, a broken answer) is an unknown outcome; a call the
/// client refused or could not send (credentials refused, a bad argument, its own setup) is
/// a client error — a 4xx, never excused by a fault.
fn client_outcome(e: tern_client::ClientError) -> Outcome {
    use tern_client::ClientError as E;
    let refused = |code: &str, status: u16| Outcome::Failed {
        code: code.to_owned(),
        status,
    };
    match e {
        E::Api(e) => Outcome::Failed {
            code: e.code.as_str().to_owned(),
            status: e.code.http_status(),
        },
        E::Timeout(_) | E::AllNodesUnreachable { .. } | E::Protocol { .. } => Outcome::Unknown {
            reason: e.to_string(),
        },
        E::Rejected { .. } => refused("client_rejected", 401),
        E::InvalidArgument(_) => refused("client_invalid_argument", 400),
        E::RequestTooLarge { .. } => refused("client_request_too_large", 413),
        E::Tls(_) | E::Config(_) | E::Io { .. } | E::Bind(_) | E::Closed => {
            refused("client_setup", 400)
        }
    }
}

/// One request with `token`, given [`REQUEST_TIMEOUT`]: the answer, or why there was none
/// (an operation's or a deploy's unknown outcome).
async fn request_within(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    body: Bytes,
) -> Result<tern_bench::Response, String> {
    let auth = format!("Bearer {token}");
    let headers = [("authorization", auth.as_str())];
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        tern_bench::request_once(addr, method, path, &headers, body),
    )
    .await
    {
        Err(_) => Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(r)) => Ok(r),
    }
}

/// The API's error code in an error answer, or `http_<status>` when its body has none.
fn error_code(r: &tern_bench::Response) -> String {
    tern_wire::ApiError::from_json(&r.body).map_or_else(
        || format!("http_{}", r.status),
        |e| e.code.as_str().to_owned(),
    )
}

fn outcome_of(mode: Mode, r: &tern_bench::Response) -> Outcome {
    match (mode, r.status) {
        (Mode::Async, 202) => {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            Outcome::Accepted {
                id: v["id"].as_str().unwrap_or_default().to_owned(),
            }
        }
        (_, 200) => Outcome::Ok {
            output: String::from_utf8_lossy(&r.body).into_owned(),
            ran_on: r.header("x-tern-node").unwrap_or_default().to_owned(),
        },
        (_, status) => Outcome::Failed {
            code: error_code(r),
            status,
        },
    }
}

/// Creates `tenant` through the first node and a developer token of it, and waits until every
/// node takes that token (tenants and tokens replicate): the token. Its request rate, burst
/// and stored results are set past anything a scenario sends (a run judges faults, not the
/// tenant's quotas); its other quotas are the defaults.
async fn tenant_token(nodes: &Mutex<Vec<NodeProc>>, tenant: &str) -> Result<String, ChaosError> {
    let fail = |detail: String| ChaosError::Tenant {
        tenant: tenant.to_owned(),
        detail,
    };
    let targets: Vec<(SocketAddr, String)> = lock(nodes)
        .iter()
        .filter(|n| n.joined)
        .map(|n| (n.http, n.token.clone()))
        .collect();
    let (a, admin) = targets[0].clone();
    let body = serde_json::json!({
        "name": tenant,
        "quotas": {
            "max_rate_per_s": u32::MAX,
            "rate_burst": u32::MAX,
            "max_stored_results": u32::MAX,
        },
    })
    .to_string();
    let created = request_within(a, Method::POST, "/v1/tenants", &admin, Bytes::from(body))
        .await
        .map_err(fail)?;
    if created.status != 201 {
        return Err(fail(format!(
            "creating it: {} {}",
            created.status,
            String::from_utf8_lossy(&created.body)
        )));
    }
    let body = serde_json::json!({ "role": "developer", "tenant": tenant }).to_string();
    let made = request_within(a, Method::POST, "/v1/tokens", &admin, Bytes::from(body))
        .await
        .map_err(fail)?;
    let token = serde_json::from_slice::<serde_json::Value>(&made.body)
        .ok()
        .filter(|_| made.status == 201)
        .and_then(|v| Some(v["token"].as_str()?.to_owned()))
        .ok_or_else(|| {
            fail(format!(
                "making its developer token: {} {}",
                made.status,
                String::from_utf8_lossy(&made.body)
            ))
        })?;
    let t0 = Instant::now();
    for (addr, _) in targets {
        while get(addr, &token, "/v1/functions")
            .await
            .is_none_or(|r| r.status != 200)
        {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(fail(format!(
                    "the node at {addr} did not take its token within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(token)
}

/// Deploys the workload's function through the first node and waits until every node runs it.
async fn deploy(
    scenario: &Scenario,
    options: &RunOptions,
    nodes: &Mutex<Vec<NodeProc>>,
) -> Result<(), ChaosError> {
    let f = &scenario.workload.function;
    let wasm = options.examples_dir.join(format!("{f}.wasm"));
    let module = std::fs::read(&wasm).map_err(io(format!("reading {}", wasm.display())))?;
    let targets: Vec<(SocketAddr, String)> = lock(nodes)
        .iter()
        .filter(|n| n.joined)
        .map(|n| (n.http, n.caller()))
        .collect();
    let (a, token) = targets[0].clone();
    let auth = format!("Bearer {token}");
    let t0 = Instant::now();
    loop {
        let r = tern_bench::request_once(
            a,
            Method::PUT,
            &format!("/v1/functions/{f}"),
            &[("authorization", auth.as_str())],
            Bytes::from(module.clone()),
        )
        .await;
        match r {
            Ok(r) if r.status == 201 => break,
            Ok(r) if t0.elapsed() > Duration::from_secs(30) || r.status < 500 => {
                return Err(ChaosError::Deploy {
                    function: f.clone(),
                    detail: format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                });
            }
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                return Err(ChaosError::Deploy {
                    function: f.clone(),
                    detail: e.to_string(),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    for (addr, token) in targets {
        loop {
            let r = get(addr, &token, &format!("/v1/functions/{f}")).await;
            if r.is_some_and(|r| r.status == 200) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(ChaosError::Deploy {
                    function: f.clone(),
                    detail: format!("not on the node at {addr} within 60 s"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `module` with a custom section `tern-chaos-deploy` holding `number`: a distinct module
/// (its own hash) that runs exactly as the original.
fn numbered(module: &[u8], number: u64) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    const NAME: &[u8] = b"tern-chaos-deploy";
    let payload = number.to_string();
    let mut body = Vec::new();
    leb(NAME.len(), &mut body);
    body.extend_from_slice(NAME);
    body.extend_from_slice(payload.as_bytes());
    let mut out = module.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// SHA-256 of `bytes` in hex, as the API names modules (`ModuleHash`'s spelling).
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    tern_wire::ModuleHash(sha2::Sha256::digest(bytes).into()).to_hex()
}

/// During the load: every `every` seconds a new version of the workload's function as
/// [`VERSIONS_FUNCTION`], through the nodes in turn (`a` first), one at a time, each given
/// 15 s; each deploy's outcome goes into the history. Returns whether any was sent.
async fn deploy_versions(
    scenario: Scenario,
    options: RunOptions,
    every: f64,
    nodes: Arc<Mutex<Vec<NodeProc>>>,
    history: Arc<Mutex<History>>,
    t0: Instant,
) -> Result<bool, ChaosError> {
    let f = &scenario.workload.function;
    let wasm = options.examples_dir.join(format!("{f}.wasm"));
    let module = std::fs::read(&wasm).map_err(io(format!("reading {}", wasm.display())))?;
    let end = Duration::from_secs(u64::from(scenario.workload.duration_s));
    let path = format!("/v1/functions/{VERSIONS_FUNCTION}");
    let mut number = 0u64;
    loop {
        let at = Duration::from_secs_f64(every * (number + 1) as f64);
        if at >= end {
            return Ok(number > 0);
        }
        // One at a time: a slow deploy delays the next rather than overlapping it.
        tokio::time::sleep_until((t0 + at).into()).await;
        let (node, addr, token) = {
            let n = lock(&nodes);
            let targets: Vec<usize> = (0..n.len()).filter(|&k| n[k].joined).collect();
            let k = targets[(number as usize) % targets.len()];
            (n[k].name.clone(), n[k].http, n[k].caller())
        };
        number += 1;
        let bytes = numbered(&module, number);
        let hash = sha256_hex(&bytes);
        let sent_us = t0.elapsed().as_micros() as u64;
        let answer = request_within(addr, Method::PUT, &path, &token, Bytes::from(bytes)).await;
        let outcome = match answer {
            Err(reason) => DeployOutcome::Unknown { reason },
            Ok(r) if r.status == 201 => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                match (v["version"].as_u64(), v["deployed_at_ms"].as_u64()) {
                    (Some(version), Some(deployed_at_ms)) => DeployOutcome::Acknowledged {
                        version,
                        deployed_at_ms,
                    },
                    _ => DeployOutcome::Failed {
                        code: "unreadable_answer".into(),
                        status: 201,
                    },
                }
            }
            Ok(r) => DeployOutcome::Failed {
                code: error_code(&r),
                status: r.status,
            },
        };
        lock(&history).push(Event::Deploy {
            number,
            node,
            sent_us,
            at_us: t0.elapsed().as_micros() as u64,
            module: hash,
            outcome,
        });
    }
}

/// After the run: polls every live node's entry for [`VERSIONS_FUNCTION`] every 100 ms,
/// recording each change, until they all show the same entry or the convergence bound (from
/// when the run settled: the last heal or the last deploy's end) and a second have passed.
async fn watch_registries(
    scenario: &Scenario,
    nodes: &Mutex<Vec<NodeProc>>,
    history: &Mutex<History>,
    t0: Instant,
) {
    let settled_us = lock(history)
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Fault {
                at_us,
                phase: Phase::End,
                ..
            }
            | Event::Deploy { at_us, .. } => Some(*at_us),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let live: Vec<(String, SocketAddr, String)> = lock(nodes)
        .iter_mut()
        .filter_map(|n| (n.running() && !n.faulted).then(|| (n.name.clone(), n.http, n.caller())))
        .collect();
    let until = t0
        + Duration::from_micros(settled_us)
        + Duration::from_millis(scenario.expect.convergence_ms)
        + Duration::from_secs(1);
    let path = format!("/v1/functions/{VERSIONS_FUNCTION}");
    let mut seen: HashMap<String, Option<EntryView>> = HashMap::new();
    let mut tick = tokio::time::interval(VIEW_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (name, addr, token) in &live {
            let at_us = t0.elapsed().as_micros() as u64;
            // A poll the node did not answer in time (busy with the last requests) says
            // nothing about its registry: recording it as "shows nothing" would make a node
            // that agreed long ago seem to agree again at its next answer.
            let Some(answer) = tokio::time::timeout(VIEW_TIMEOUT, get(*addr, token, &path))
                .await
                .ok()
                .flatten()
            else {
                continue;
            };
            let entry = Some(answer)
                .filter(|r| r.status == 200)
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                .and_then(|v| {
                    Some(EntryView {
                        hash: v["hash"].as_str()?.to_owned(),
                        version: v["version"].as_u64()?,
                        deployed_at_ms: v["deployed_at_ms"].as_u64()?,
                    })
                });
            if seen.get(name) != Some(&entry) {
                seen.insert(name.clone(), entry.clone());
                lock(history).push(Event::Registry {
                    node: name.clone(),
                    at_us,
                    entry,
                });
            }
        }
        let mut shown = seen.values();
        let agreed = shown
            .next()
            .is_some_and(|first| first.is_some() && shown.all(|e| e == first));
        if (agreed && seen.len() == live.len()) || Instant::now() >= until {
            break;
        }
    }
    lock(history).push(Event::RegistriesWatched {
        until_us: t0.elapsed().as_micros() as u64,
        settled_us,
        live: live.into_iter().map(|(name, ..)| name).collect(),
    });
}

/// The fault schedule, in order of time. Each fault's start and heal go into the history when
/// they happen (the checkers judge errors against these, not against the schedule).
async fn run_faults(
    scenario: Scenario,
    options: RunOptions,
    nodes: Arc<Mutex<Vec<NodeProc>>>,
    relays: Option<Arc<Relays>>,
    history: Arc<Mutex<History>>,
    t0: Instant,
    clients: Option<Clients>,
) -> Result<(), ChaosError> {
    use rustix::process::Signal;
    let tern = options.tern.clone();
    let mut impostors = 0usize;
    let mut next_added = scenario.nodes().len();
    let mut faults = scenario.faults.clone();
    faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    // Added nodes too: a fault naming one comes after its add, which runs to its end before
    // the next fault.
    let index = |name: &str| scenario.all_nodes().iter().position(|n| *n == name);
    let mut later = tokio::task::JoinSet::new();
    for f in faults {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(f.at_s)).into()).await;
        match f.kind {
            FaultKind::Kill {
                node,
                restart_after_s,
            } => {
                let Some(i) = index(&node) else { continue };
                // Recorded before it is done: an answer cut by the kill ends after it starts.
                record_fault(&history, t0, &node, Phase::Start, "kill");
                {
                    let mut n = lock(&nodes);
                    n[i].faulted = true;
                    n[i].kill();
                    n[i].refuse();
                }
                lock(&history).push(Event::NodeExit {
                    node: node.clone(),
                    at_us: t0.elapsed().as_micros() as u64,
                    scheduled: true,
                });
                if let Some(r) = restart_after_s {
                    let (nodes, history, tern) = (nodes.clone(), history.clone(), tern.clone());
                    later.spawn(async move {
                        tokio::time::sleep(Duration::from_secs_f64(r)).await;
                        restart(&nodes, &history, t0, i, &tern, "kill").await;
                    });
                }
            }
            FaultKind::Pause { node, for_s } => {
                let Some(i) = index(&node) else { continue };
                record_fault(&history, t0, &node, Phase::Start, "pause");
                {
                    let mut n = lock(&nodes);
                    n[i].faulted = true;
                    n[i].signal(Signal::STOP);
                }
                let (nodes, history) = (nodes.clone(), history.clone());
                later.spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(for_s)).await;
                    {
                        let mut n = lock(&nodes);
                        n[i].signal(Signal::CONT);
                        n[i].faulted = false;
                    }
                    record_fault(&history, t0, &node, Phase::End, "pause");
                });
            }
            FaultKind::RollingRestart { gap_s } => {
                for i in joined(&nodes) {
                    stop_gracefully(&nodes, &history, t0, i, "rolling_restart").await;
                    restart(&nodes, &history, t0, i, &tern, "rolling_restart").await;
                    tokio::time::sleep(Duration::from_secs_f64(gap_s)).await;
                }
            }
            FaultKind::AddNode { .. } => {
                // Added nodes join in the order of their faults, named on from the cluster's.
                let i = next_added;
                next_added += 1;
                let workload = Serving {
                    function: &scenario.workload.function,
                    clients: clients.as_ref(),
                    options: &options,
                };
                add_node(&nodes, &history, t0, i, &workload).await;
            }
            FaultKind::ClockJump { node, by_s } => {
                let Some(i) = index(&node) else { continue };
                record_fault(&history, t0, &node, Phase::Start, "clock_jump");
                let (file, offset) = {
                    let mut n = lock(&nodes);
                    n[i].clock_offset_s += by_s;
                    (n[i].clock.clone(), n[i].clock_offset_s)
                };
                // Checked before the run: every node a jump names has a clock file.
                let Some(file) = file else { continue };
                // Written whole, then renamed: the node never reads half an offset.
                let tmp = file.with_extension("clock.new");
                std::fs::write(&tmp, format!("{offset:+.0}\n"))
                    .and_then(|()| std::fs::rename(&tmp, &file))
                    .map_err(io(format!("jumping {}", file.display())))?;
                // The jump is for good; the fault ends once the node reads its new clock.
                let history = history.clone();
                later.spawn(async move {
                    tokio::time::sleep(CLOCK_FILE_REREAD).await;
                    record_fault(&history, t0, &node, Phase::End, "clock_jump");
                });
            }
            FaultKind::Corrupt { node, what } => {
                let Some(i) = index(&node) else { continue };
                record_fault(&history, t0, &node, Phase::Start, "corrupt");
                let data = {
                    let mut n = lock(&nodes);
                    n[i].faulted = true;
                    n[i].kill();
                    n[i].refuse();
                    PathBuf::from(&n[i].args[2])
                };
                lock(&history).push(Event::NodeExit {
                    node: node.clone(),
                    at_us: t0.elapsed().as_micros() as u64,
                    scheduled: true,
                });
                match what {
                    Corruption::Artifact => {
                        let dir = data.join("artifacts");
                        // A fault that did not happen would make a run pass for nothing.
                        let damaged = truncate_artifacts(&dir)
                            .map_err(io(format!("damaging the artifacts in {}", dir.display())))?;
                        if damaged == 0 {
                            return Err(
                                io(format!("damaging the artifacts in {}", dir.display()))(
                                    std::io::Error::other("the node has no compiled artifact"),
                                ),
                            );
                        }
                    }
                    Corruption::Sled => {
                        let log = data.join("db").join("db");
                        let seed = options.seed.unwrap_or(scenario.seed) ^ i as u64;
                        let what = flip_a_bit(&log, "<data>/db/db", seed)
                            .map_err(io(format!("damaging the sled log {}", log.display())))?;
                        lock(&history).push(Event::Damaged {
                            node: node.clone(),
                            at_us: t0.elapsed().as_micros() as u64,
                            what,
                        });
                    }
                }
                // At once, as after a crash: the node starts on what it finds.
                restart(&nodes, &history, t0, i, &tern, "corrupt").await;
            }
            FaultKind::Impostor { credential } => {
                impostors += 1;
                let (nodes, history, options) = (nodes.clone(), history.clone(), options.clone());
                // The members' settings, so it runs as they do but for its identity.
                let env = config_env(&scenario);
                later.spawn(async move {
                    impostor(credential, impostors, env, &options, &nodes, &history, t0).await
                });
            }
            FaultKind::DiskFull { node, for_s } => {
                let Some(i) = index(&node) else { continue };
                let data = PathBuf::from(&lock(&nodes)[i].args[2]);
                record_fault(&history, t0, &node, Phase::Start, "disk_full");
                let dir = data.clone();
                // A fault that did not happen would make a run pass for nothing.
                tokio::task::spawn_blocking(move || fill_disk(&dir))
                    .await
                    .map_err(|e| io("filling a disk")(std::io::Error::other(e)))?
                    .map_err(io(format!("filling {}", data.display())))?;
                let history = history.clone();
                later.spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(for_s)).await;
                    if let Err(e) = std::fs::remove_file(data.join(FILLER)) {
                        eprintln!("tern chaos: could not empty {}: {e}", data.display());
                    }
                    record_fault(&history, t0, &node, Phase::End, "disk_full");
                });
            }
            FaultKind::Partition {
                groups,
                one_way,
                for_s,
            } => {
                // Present whenever the scenario has a partition.
                let Some(relays) = relays.clone() else {
                    continue;
                };
                // Each node once, a bridge in two groups too.
                let members: std::collections::BTreeSet<String> =
                    groups.iter().flatten().cloned().collect();
                let groups: Vec<Vec<usize>> = groups
                    .iter()
                    .map(|g| g.iter().filter_map(|n| index(n)).collect())
                    .collect();
                let cut = links::cuts(&groups, one_way);
                for n in &members {
                    record_fault(&history, t0, n, Phase::Start, "partition");
                }
                for &(from, to) in &cut {
                    relays.impair(from, to, Impairment::CUT);
                }
                let (history, names) = (history.clone(), scenario.nodes().to_vec());
                later.spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(for_s)).await;
                    for &(from, to) in &cut {
                        let counts = relays.impair(from, to, Impairment::default());
                        record_link(&history, t0, names[from], names[to], counts);
                    }
                    for n in &members {
                        record_fault(&history, t0, n, Phase::End, "partition");
                    }
                });
            }
            FaultKind::Link {
                from,
                to,
                loss_percent,
                delay_ms,
                reorder_percent,
                duplicate_percent,
                for_s,
            } => {
                let (Some(relays), Some(f), Some(t)) = (relays.clone(), index(&from), index(&to))
                else {
                    continue;
                };
                for n in [&from, &to] {
                    record_fault(&history, t0, n, Phase::Start, "link");
                }
                relays.impair(
                    f,
                    t,
                    Impairment::link(loss_percent, delay_ms, reorder_percent, duplicate_percent),
                );
                let history = history.clone();
                later.spawn(async move {
                    tokio::time::sleep(Duration::from_secs_f64(for_s)).await;
                    let counts = relays.impair(f, t, Impairment::default());
                    record_link(&history, t0, &from, &to, counts);
                    for n in [&from, &to] {
                        record_fault(&history, t0, n, Phase::End, "link");
                    }
                });
            }
        }
    }
    while later.join_next().await.is_some() {}
    Ok(())
}

/// How often the runner reads every node's cluster view, and how long it waits for one.
const VIEW_POLL: Duration = Duration::from_millis(100);
const VIEW_TIMEOUT: Duration = Duration::from_millis(500);

/// Reads every node's cluster view every [`VIEW_POLL`] until aborted, and records what each
/// node says of each other one (up or not) when first read and whenever it changes. A node
/// that does not answer (killed, paused) records nothing meanwhile.
async fn watch_views(nodes: Arc<Mutex<Vec<NodeProc>>>, history: Arc<Mutex<History>>, t0: Instant) {
    let names: Vec<String> = lock(&nodes).iter().map(|n| n.name.clone()).collect();
    let mut polls = tokio::task::JoinSet::new();
    for i in 0..names.len() {
        let (nodes, history, names) = (nodes.clone(), history.clone(), names.clone());
        polls.spawn(async move {
            let mut seen: HashMap<String, bool> = HashMap::new();
            let mut tick = tokio::time::interval(VIEW_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (addr, token) = {
                    let n = &lock(&nodes)[i];
                    if !n.joined && n.child.is_none() {
                        continue;
                    }
                    (n.http, n.token.clone())
                };
                let at_us = t0.elapsed().as_micros() as u64;
                let Ok(Some(r)) =
                    tokio::time::timeout(VIEW_TIMEOUT, get(addr, &token, "/v1/cluster")).await
                else {
                    continue;
                };
                let Some(members) = (r.status == 200)
                    .then(|| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
                    .flatten()
                    .and_then(|v| v["members"].as_array().cloned())
                else {
                    continue;
                };
                for peer in names.iter().filter(|p| **p != names[i]) {
                    let up = members
                        .iter()
                        .any(|m| m["node"] == peer.as_str() && m["state"] == "up");
                    if seen.insert(peer.clone(), up) != Some(up) {
                        lock(&history).push(Event::View {
                            observer: names[i].clone(),
                            peer: peer.clone(),
                            up,
                            at_us,
                        });
                    }
                }
            }
        });
    }
    while polls.join_next().await.is_some() {}
}

fn record_link(history: &Mutex<History>, t0: Instant, from: &str, to: &str, c: Counts) {
    lock(history).push(Event::Link {
        from: from.to_owned(),
        to: to.to_owned(),
        at_us: t0.elapsed().as_micros() as u64,
        passed: c.passed,
        dropped: c.dropped,
        held: c.held,
        duplicated: c.duplicated,
    });
}

fn record_fault(history: &Mutex<History>, t0: Instant, node: &str, phase: Phase, what: &str) {
    lock(history).push(Event::Fault {
        node: node.to_owned(),
        at_us: t0.elapsed().as_micros() as u64,
        phase,
        what: what.to_owned(),
    });
}

/// Stops node `i` as its service manager would (SIGTERM: it drains its connections for up to
/// 10 s, then exits; past 15 s it is killed), recording the start of fault `what`.
async fn stop_gracefully(
    nodes: &Mutex<Vec<NodeProc>>,
    history: &Mutex<History>,
    t0: Instant,
    i: usize,
    what: &str,
) {
    let name = lock(nodes)[i].name.clone();
    record_fault(history, t0, &name, Phase::Start, what);
    {
        let mut n = lock(nodes);
        n[i].faulted = true;
        n[i].signal(rustix::process::Signal::TERM);
    }
    let stop_by = Instant::now() + Duration::from_secs(15);
    loop {
        let exited = !lock(nodes)[i].running();
        if exited || Instant::now() >= stop_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lock(nodes)[i].kill();
    lock(history).push(Event::NodeExit {
        node: name,
        at_us: t0.elapsed().as_micros() as u64,
        scheduled: true,
    });
}

/// What an added node must serve before it is in: the workload's function, and with
/// `via = "client"` a client of its own.
struct Serving<'a> {
    function: &'a str,
    clients: Option<&'a Clients>,
    options: &'a RunOptions,
}

/// Adds node `i` to the running cluster, as an operator grows one (membership is configured):
/// starts it with every member as its peer, restarts each member in turn with it among its
/// peers ([`ADD_NODE_GAP_S`] apart), and once it sees every member up, shows the workload's
/// function and (through tern-client) has a client of its own, lets the workload use it. Its
/// `add_node` fault spans all of it; each member's restart is an `add_node` fault of that
/// member. A new node that does not start, dies during
/// the restarts, never sees every member or never shows the function is an unscheduled end
/// (the fault never heals, and the `nodes_added` checker says so).
async fn add_node(
    nodes: &Mutex<Vec<NodeProc>>,
    history: &Mutex<History>,
    t0: Instant,
    i: usize,
    workload: &Serving<'_>,
) {
    let tern = &workload.options.tern;
    let (name, mesh) = {
        let n = lock(nodes);
        (n[i].name.clone(), n[i].mesh)
    };
    record_fault(history, t0, &name, Phase::Start, "add_node");
    // Under its fault until it joins: its exit meanwhile is this function's to notice (the
    // watchdog leaves faulted nodes alone).
    lock(nodes)[i].faulted = true;
    let started = lock(nodes)[i].spawn(tern);
    if started.is_err() || wait_ready(nodes, i, 0).await.is_err() {
        gave_up(nodes, history, t0, i);
        return;
    }
    let exited = |nodes: &Mutex<Vec<NodeProc>>| !lock(nodes)[i].running();
    for m in joined(nodes) {
        if exited(nodes) {
            // No member is restarted for a node that is gone.
            gave_up(nodes, history, t0, i);
            return;
        }
        lock(nodes)[m]
            .args
            .extend(["--peer".to_owned(), format!("{name}={mesh}")]);
        stop_gracefully(nodes, history, t0, m, "add_node").await;
        restart(nodes, history, t0, m, tern, "add_node").await;
        tokio::time::sleep(Duration::from_secs_f64(ADD_NODE_GAP_S)).await;
    }
    // In: once it sees every member that is up (a member under another fault is not waited
    // for), and serves the workload's function (pulled with their registries).
    let members = joined(nodes)
        .into_iter()
        .filter(|&m| !lock(nodes)[m].faulted)
        .count();
    if wait_ready(nodes, i, members).await.is_err() || !serves(nodes, i, workload.function).await {
        gave_up(nodes, history, t0, i);
        return;
    }
    // Through tern-client, it takes its share once its own client is connected (a client API
    // that cannot be reached is an add that failed).
    if let Some(clients) = workload.clients {
        match connect_client(workload.options, nodes, i).await {
            Ok(client) => {
                lock(clients).insert(i, client);
            }
            Err(e) => {
                eprintln!("tern chaos: {e}");
                gave_up(nodes, history, t0, i);
                return;
            }
        }
    }
    {
        let mut n = lock(nodes);
        n[i].joined = true;
        n[i].faulted = false;
    }
    record_fault(history, t0, &name, Phase::End, "add_node");
}

/// Whether node `i` shows `function` within 60 s (false at once if its process ended).
async fn serves(nodes: &Mutex<Vec<NodeProc>>, i: usize, function: &str) -> bool {
    let (addr, token) = {
        let n = &lock(nodes)[i];
        (n.http, n.caller())
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        let gone = !lock(nodes)[i].running();
        if gone {
            return false;
        }
        let r = get(addr, &token, &format!("/v1/functions/{function}")).await;
        if r.is_some_and(|r| r.status == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Node `i` never became ready: not left running; its port is refused as a dead node's, and
/// its end is recorded as unscheduled.
fn gave_up(nodes: &Mutex<Vec<NodeProc>>, history: &Mutex<History>, t0: Instant, i: usize) {
    let name = {
        let mut n = lock(nodes);
        n[i].kill();
        n[i].refuse();
        n[i].name.clone()
    };
    lock(history).push(Event::NodeExit {
        node: name,
        at_us: t0.elapsed().as_micros() as u64,
        scheduled: false,
    });
}

/// Starts node `i` again and waits until it is ready, which heals its fault; a restart that
/// fails is an unscheduled end of the node (the fault then never heals).
async fn restart(
    nodes: &Mutex<Vec<NodeProc>>,
    history: &Mutex<History>,
    t0: Instant,
    i: usize,
    tern: &Path,
    what: &str,
) {
    let spawned = lock(nodes)[i].spawn(tern);
    let ready = match spawned {
        Ok(()) => wait_ready(nodes, i, 0).await,
        Err(e) => Err(e),
    };
    let name = lock(nodes)[i].name.clone();
    if ready.is_ok() {
        lock(nodes)[i].faulted = false;
        record_fault(history, t0, &name, Phase::End, what);
    } else if let Err(ChaosError::Exited {
        code: Some(EXIT_STORE_DAMAGED),
        log,
        ..
    }) = ready
    {
        // Refused to start on a damaged store, as it must rather than start without what it
        // acknowledged: the fault stays on (the node is down for the rest of the run).
        lock(nodes)[i].refuse();
        let detail = last_error_line(Path::new(&log))
            .unwrap_or_else(|| format!("exit status {EXIT_STORE_DAMAGED}, no error line"));
        lock(history).push(Event::StoreRefused {
            node: name,
            at_us: t0.elapsed().as_micros() as u64,
            detail,
        });
    } else {
        gave_up(nodes, history, t0, i);
    }
}

/// The exit status with which `tern up` asks its service manager to start it again.
const EXIT_RESTART_ME: i32 = 75;

/// The exit status of `tern up` refusing to start on a damaged store (EX_DATAERR).
const EXIT_STORE_DAMAGED: i32 = 65;

/// The last line of a node's log that starts with `error:` (what `tern up` prints as it
/// exits), cut to 400 characters.
fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map(|l| l.chars().take(400).collect())
}

/// How many such restarts of one node a run grants; a node that keeps asking has ended.
const MAX_SELF_RESTARTS: u32 = 3;

/// Notices node processes that end when the schedule did not end them, and, as the nodes'
/// service manager, starts again one that exits asking for it.
async fn watch(
    nodes: Arc<Mutex<Vec<NodeProc>>>,
    history: Arc<Mutex<History>>,
    tern: PathBuf,
    t0: Instant,
) {
    let mut self_restarts: HashMap<String, u32> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut n = lock(&nodes);
        for p in n.iter_mut().filter(|p| !p.faulted) {
            let Some(status) = p.ended() else {
                continue;
            };
            let count = self_restarts.entry(p.name.clone()).or_default();
            if status.code() == Some(EXIT_RESTART_ME) && *count < MAX_SELF_RESTARTS {
                *count += 1;
                // Its connections wait on the held listener for the new process.
                if p.spawn(&tern).is_ok() {
                    lock(&history).push(Event::Restarted {
                        node: p.name.clone(),
                        at_us: t0.elapsed().as_micros() as u64,
                    });
                    continue;
                }
            }
            p.child = None;
            p.refuse();
            lock(&history).push(Event::NodeExit {
                node: p.name.clone(),
                at_us: t0.elapsed().as_micros() as u64,
                scheduled: false,
            });
        }
    }
}

/// The run's report for people: what ran, what held, what broke.
pub fn markdown(scenario: &Scenario, report: &Report) -> String {
    let s = &report.stats;
    let w = &scenario.workload;
    let via = match w.via {
        Via::Http => "over HTTP to each node in turn",
        Via::Client => "through tern-client, one client per node failing over to the others",
    };
    let tenant = w.tenant.as_ref().map_or(String::new(), |t| {
        format!(", as tenant `{t}` (a developer token)")
    });
    let mut out = format!(
        "# Chaos run: {}\n\n{}\n\nThe workload: `{}` at {} for {} s, {}{}.\n\n\
         Generated by `tern chaos run`; the history is `history.jsonl`, the verdict \
         `verdict.json`.\n\n**Verdict: {}**\n\n![Calls answered, p99 and errors by code per \
         second, the faults shaded](timeline.svg)\n\n",
        scenario.name,
        scenario.description,
        w.function,
        w.load(),
        w.duration_s,
        via,
        tenant,
        if report.passed() { "passed" } else { "FAILED" }
    );
    out += &format!(
        "| operations | ok | failed (typed) | unknown | async accepted | async rerun (duplicate runs) | p99 under faults | p99 otherwise |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | {} | {} | {} | {} | {} | {} ({}) | {} | {} |\n\n",
        s.operations,
        s.ok,
        s.failed.values().sum::<u64>(),
        s.unknown,
        s.async_accepted,
        s.async_rerun,
        s.duplicate_runs,
        s.p99_us_under_faults
            .map_or("-".into(), |v| format!("{:.1} ms", v as f64 / 1000.0)),
        s.p99_us_otherwise
            .map_or("-".into(), |v| format!("{:.1} ms", v as f64 / 1000.0)),
    );
    if !s.failed.is_empty() {
        out += "Typed errors by code: ";
        out += &s
            .failed
            .iter()
            .map(|(c, n)| format!("`{c}` {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        out += "\n\n";
    }
    for line in &s.impostors {
        out += &format!("Impostor: {line}.\n\n");
    }
    for line in &s.damage {
        out += &format!("Damage: {line}.\n\n");
    }
    for line in &s.added {
        out += &format!("Added: {line}.\n\n");
    }
    if s.async_stranded > 0 {
        out += &format!(
            "Stranded: {} accepted async invocations on a node that refused to start on its \
             damaged store (not run; the node named the loss, as it must).\n\n",
            s.async_stranded
        );
    }
    if !s.membership.is_empty() {
        out += "Membership (as the runner's polls of each node's cluster view saw it):\n\n";
        for line in &s.membership {
            out += &format!("- {line}\n");
        }
        out += "\n";
    }
    if let Some(line) = &s.registry {
        out += &format!("Registry: {line}.\n\n");
    }
    for v in &report.violations {
        let ops: Vec<String> = v.ops.iter().take(20).map(u64::to_string).collect();
        let involved = if ops.is_empty() {
            String::new()
        } else {
            format!(
                " (operations {}{})",
                ops.join(", "),
                if v.ops.len() > 20 { ", …" } else { "" }
            )
        };
        out += &format!("- **{}**: {}{involved}\n", v.invariant, v.detail);
    }
    out
}
