//! Failover tests with real `tern` processes: `kill -9` of a node under steady load, and a
//! paused node (`SIGSTOP`, then `SIGCONT`). Either is detected within 1.5 s, no accepted
//! invocation is lost, and the node rejoins (after a restart, or when it resumes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use command_fds::{CommandFdExt, FdMapping};

use crate::cluster::{MeshSockets, NAMES, eventually, init_pki, name_owned_by};
use crate::support::*;

/// A `tern up` child process, killed when dropped (also when a test panics).
pub(crate) struct Proc {
    child: Child,
    http: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP listeners and mesh sockets of the three nodes, bound once by the test and passed
/// to every `tern up` (a restarted one too) by socket activation, so no other process can
/// take a port between the test choosing it and the node using it.
pub(crate) struct Listeners {
    http: Vec<std::net::TcpListener>,
    mesh: MeshSockets,
}

impl Listeners {
    pub(crate) fn bind() -> Self {
        Self {
            http: (0..3)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect(),
            mesh: MeshSockets::bind(3),
        }
    }

    pub(crate) fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http.iter().map(|l| l.local_addr().unwrap()).collect()
    }
}

/// Where node `i` gets its sockets.
#[derive(Clone, Copy)]
pub(crate) enum Listen<'a> {
    /// Inherited from the test (`LISTEN_FDS`, named `http` and `mesh`).
    Inherited(&'a Listeners),
    /// Bound by the node on these addresses (HTTP, mesh): each node in a network namespace
    /// of its own, where nothing else can take them.
    Bind {
        http: &'a [SocketAddr],
        mesh: &'a [SocketAddr],
    },
}

impl Listen<'_> {
    fn http(&self, i: usize) -> SocketAddr {
        match self {
            Listen::Inherited(l) => l.http_addrs()[i],
            Listen::Bind { http, .. } => http[i],
        }
    }

    fn mesh(&self) -> Vec<SocketAddr> {
        match self {
            Listen::Inherited(l) => l.mesh.addrs(),
            Listen::Bind { mesh, .. } => mesh.to_vec(),
        }
    }
}

fn log_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("{}.log", NAMES[i]))
}

async fn spawn_node(root: &Path, i: usize, listeners: &Listeners) -> Proc {
    spawn_node_in(None, root, i, Listen::Inherited(listeners), &[]).await
}

/// Starts node `i`, inside network namespace `netns` if given, with `env` added to its
/// environment.
pub(crate) async fn spawn_node_in(
    netns: Option<&str>,
    root: &Path,
    i: usize,
    listen: Listen<'_>,
    env: &[(&str, &str)],
) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(root, i))
        .unwrap();
    let mut cmd = match netns {
        // `ip netns exec` execs the command, so the child is still the node itself.
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tern")]);
            cmd
        }
        None => Command::new(env!("CARGO_BIN_EXE_tern")),
    };
    cmd.arg("up")
        .arg("--data")
        .arg(root.join(NAMES[i]))
        .arg("--node-name")
        .arg(NAMES[i])
        .arg("--examples-dir")
        .arg(functions_dir())
        .arg("--cluster-dir")
        .arg(root.join("pki"));
    match listen {
        Listen::Inherited(l) => {
            // systemd's socket activation: the sockets as fds 3 and 4, named in order. No
            // LISTEN_PID: the child's pid is not known before it runs, and the node takes an
            // unset LISTEN_PID as "for me".
            cmd.fd_mappings(vec![
                FdMapping {
                    parent_fd: l.http[i].try_clone().unwrap().into(),
                    child_fd: 3,
                },
                FdMapping {
                    parent_fd: l.mesh.socket(i).into(),
                    child_fd: 4,
                },
            ])
            .unwrap()
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", "http:mesh")
            .env_remove("LISTEN_PID");
        }
        Listen::Bind { http, mesh } => {
            cmd.arg("--listen")
                .arg(http[i].to_string())
                .arg("--cluster-listen")
                .arg(mesh[i].to_string());
        }
    }
    let mesh = listen.mesh();
    for j in (0..3).filter(|&j| j != i) {
        cmd.arg("--peer").arg(format!("{}={}", NAMES[j], mesh[j]));
    }
    cmd.envs(env.iter().copied());
    let child = cmd
        .env("TERN_EXAMPLES", "[]")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn tern");
    let mut proc = Proc {
        child,
        http: listen.http(i),
    };
    wait_for_tern(
        &mut proc.child,
        proc.http,
        &root.join(NAMES[i]),
        &log_path(root, i),
        Duration::from_secs(120),
    )
    .await;
    proc
}

async fn member(addr: SocketAddr, peer: &str) -> serde_json::Value {
    let view = json(&request(addr, Method::GET, "/v1/cluster", Bytes::new()).await);
    view["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == peer)
        .cloned()
        .unwrap_or_default()
}

pub(crate) async fn member_state(addr: SocketAddr, peer: &str) -> String {
    member(addr, peer).await["state"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Whether `addr`'s ractor_cluster session with `peer` is ready.
async fn session_ready(addr: SocketAddr, peer: &str) -> bool {
    member(addr, peer).await["session"] == true
}

/// Steady load through `entry`: sequential invocations on one keep-alive connection until
/// `stop`. Returns (requests, failures with detail).
async fn load(entry: SocketAddr, f: String, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut conn = conn(entry).await;
    let (mut sent, mut failures) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let body = format!("req-{sent}");
        let path = format!("/v1/functions/{f}/invoke");
        let bearer = bearer_for(entry);
        let headers = authorization(&bearer);
        match conn
            .request(Method::POST, &path, &headers, Bytes::from(body.clone()))
            .await
        {
            Ok(r) if r.status == 200 && r.body[..] == *body.as_bytes() => {}
            Ok(r) => failures.push(format!(
                "{}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => {
                failures.push(format!("transport: {e}"));
                conn = crate::support::conn(entry).await;
            }
        }
        sent += 1;
    }
    (sent, failures)
}

/// Deploys an echo function owned by b through `a`, and waits until `a` and `c` forward it
/// to b.
pub(crate) async fn deploy_owned_by_b(a: SocketAddr, c: SocketAddr) -> String {
    let f = name_owned_by("b");
    let r = put_when_synced(a, &format!("/v1/functions/{f}"), wasm("echo")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    for entry in [a, c] {
        eventually("forwarding to b", Duration::from_secs(30), || async {
            let r = invoke(entry, &f, "x").await;
            (r.status == 200 && r.header("x-tern-node") == Some("b")).then_some(())
        })
        .await;
    }
    f
}

/// Stops the `load` workers and returns how many requests they sent; every one must have
/// been answered correctly.
async fn stop_load(
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
) -> u64 {
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (sent, failures) = w.await.unwrap();
        total += sent;
        assert!(
            failures.is_empty(),
            "accepted invocations failed: {failures:?}"
        );
    }
    total
}

/// What happens to node b under load.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// `kill -9`, then a restart with the same data.
    Kill,
    /// `SIGSTOP` for a few seconds, then `SIGCONT`: b's connections have been closed by its
    /// peers meanwhile, so anything it answers late goes nowhere (the connection is the
    /// fence), and it rejoins without a restart.
    Pause,
}

fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(proc.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_nothing_and_the_node_rejoins() {
    fault_under_load(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_node_is_fenced_loses_nothing_and_rejoins_when_it_resumes() {
    fault_under_load(Fault::Pause).await;
}

async fn fault_under_load(fault: Fault) {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    init_pki(&root.join("pki"));
    let listeners = Listeners::bind();
    let http = listeners.http_addrs();
    let mut procs = Vec::new();
    for i in 0..3 {
        procs.push(Some(spawn_node(root, i, &listeners).await));
    }
    let (a, c) = (http[0], http[2]);
    for addr in [a, http[1], c] {
        for peer in NAMES {
            if peer != NAMES[http.iter().position(|h| *h == addr).unwrap()] {
                eventually("mesh up", Duration::from_secs(30), || async {
                    (member_state(addr, peer).await == "up").then_some(())
                })
                .await;
                eventually("ractor session", Duration::from_secs(30), || async {
                    session_ready(addr, peer).await.then_some(())
                })
                .await;
            }
        }
    }

    let f = deploy_owned_by_b(a, c).await;

    // Steady load through a and c, plus async invocations accepted by a.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for entry in [a, a, c, c] {
        workers.push(tokio::spawn(load(entry, f.clone(), stop.clone())));
    }
    let mut async_ids = Vec::new();
    for i in 0..20 {
        let r = request(
            a,
            Method::POST,
            &format!("/v1/functions/{f}/invoke?mode=async"),
            format!("async-{i}"),
        )
        .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        async_ids.push((i, json(&r)["id"].as_str().unwrap().to_owned()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed_at = Instant::now();
    match fault {
        Fault::Kill => drop(procs[1].take()),
        Fault::Pause => signal(procs[1].as_ref().unwrap(), "STOP"),
    }
    let mut detected = [Duration::ZERO; 2];
    for (k, entry) in [a, c].into_iter().enumerate() {
        detected[k] = eventually("b detected down", Duration::from_secs(10), || async {
            // `down` until the first redial, then `joining`: not up either way.
            (member_state(entry, "b").await != "up").then(|| killed_at.elapsed())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = stop_load(&stop, workers).await;
    assert!(total > 50, "too little load to mean anything: {total}");
    for (k, d) in detected.iter().enumerate() {
        assert!(
            *d <= Duration::from_millis(1500),
            "{} noticed b's death after {d:?}",
            ["a", "c"][k]
        );
    }
    for (i, id) in &async_ids {
        let rec = wait_finished(a, id).await;
        assert_eq!(rec["status"], "succeeded", "{rec}");
        assert_eq!(
            rec["result"].as_str().map(str::to_owned),
            Some(format!("async-{i}"))
        );
    }
    // Requests sent to b between its death and its detection were re-run elsewhere.
    let reruns = metric(a, "tern_failover_reruns_total").await
        + metric(c, "tern_failover_reruns_total").await;
    assert!(reruns >= 1.0, "no MEU was re-placed");
    eprintln!(
        "{fault:?}: {total} sync requests, 0 lost, {reruns} re-placed MEUs, detected after {:?} (a) / {:?} (c)",
        detected[0], detected[1]
    );

    // b restarts with its data (or resumes) and rejoins; work goes back to it.
    match fault {
        // On the sockets the test kept: nothing else could take b's ports meanwhile.
        Fault::Kill => procs[1] = Some(spawn_node(root, 1, &listeners).await),
        Fault::Pause => {
            // Paused past its peers' idle timeout: they closed their connections to it.
            signal(procs[1].as_ref().unwrap(), "CONT");
        }
    }
    for entry in [a, c] {
        eventually("b rejoined", Duration::from_secs(30), || async {
            (member_state(entry, "b").await == "up").then_some(())
        })
        .await;
        eventually(
            "a new ractor session with b",
            Duration::from_secs(30),
            || async { session_ready(entry, "b").await.then_some(()) },
        )
        .await;
        eventually("work back on b", Duration::from_secs(30), || async {
            let r = invoke(entry, &f, "again").await;
            assert_eq!(r.status, 200);
            (r.header("x-tern-node") == Some("b")).then_some(())
        })
        .await;
    }
}

/// Three network namespaces, one per node. Their mesh interfaces hang off one bridge in a
/// fourth namespace (the switch); each node also has a direct link from the test's namespace
/// for HTTP, so the test reaches every node even while one is cut off from the others.
/// Partitioning a node takes its bridge port down. Everything is removed on drop. One lab at a
/// time: they share names and addresses, and two clusters at once on two cores would measure
/// the machine, not the mesh.
struct Lab {
    tag: String,
    subnet: u8,
    _one: std::sync::MutexGuard<'static, ()>,
}

static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Lab {
    /// `None` (after saying why) when this is not root or network namespaces are unavailable.
    fn new() -> Option<Lab> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                line.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if uid != Some(0) {
            skip_or_fail("the partition test needs root (network namespaces)");
            return None;
        }
        // A lab whose test failed leaves nothing behind (its drop ran): the next may go on.
        let one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
        // Names and addresses of their own for each lab of this process: the kernel removes
        // a deleted namespace's links some time after `ip netns del` returns.
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Lab {
            tag: format!("t{}{}", pid % 100_000, n % 10),
            subnet: ((pid + 37 * n) % 200) as u8 + 20,
            _one: one,
        };
        match lab.build() {
            Ok(()) => Some(lab),
            Err(e) => {
                skip_or_fail(&format!(
                    "the partition test cannot build network namespaces: {e}"
                ));
                None
            }
        }
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}{}", self.tag, NAMES[i])
    }

    fn port(&self, i: usize) -> String {
        format!("{}m{i}", self.tag)
    }

    fn mesh_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([10, 77, self.subnet, i as u8 + 1], 7900))
    }

    fn http_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([10, 78, self.subnet, 4 * i as u8 + 2], 7878))
    }

    /// The client API's address (QUIC) of node `i`: its HTTP address's, another port.
    fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.http_addr(i).ip(), 7879)
    }

    fn build(&self) -> Result<(), String> {
        let (sw, s) = (self.switch(), self.subnet);
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..3 {
            let (ns, port, http) = (self.ns(i), self.port(i), format!("{}h{i}", self.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &port, "netns", &sw])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            let mesh_ip = format!("10.77.{s}.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &mesh_ip, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "link", "add", &http, "type", "veth", "peer", "name", "eth1", "netns", &ns,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("10.78.{s}.{}/30", 4 * i + 1),
                "dev",
                &http,
            ])?;
            ip(&["link", "set", &http, "up"])?;
            let node_ip = format!("10.78.{s}.{}/30", 4 * i + 2);
            ip(&["-n", &ns, "addr", "add", &node_ip, "dev", "eth1"])?;
            ip(&["-n", &ns, "link", "set", "eth1", "up"])?;
        }
        // Static neighbours: a cut and heal then measure Tern, not ARP's retry timers (an
        // unresolved neighbour is probed once a second after the link returns).
        for i in 0..3 {
            let mac = mac_of(&self.ns(i), "eth0")?;
            for j in (0..3).filter(|&j| j != i) {
                let addr = format!("10.77.{s}.{}", i + 1);
                ip(&[
                    "-n",
                    &self.ns(j),
                    "neigh",
                    "replace",
                    &addr,
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(())
    }

    /// Connects node `i` to the switch, or cuts it off.
    fn set_connected(&self, i: usize, connected: bool) {
        let state = if connected { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &self.port(i), state]).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for ns in (0..3).map(|i| self.ns(i)).chain([self.switch()]) {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// The MAC address of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", dev])
        .output()
        .map_err(|e| format!("ip link show: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| format!("no MAC for {dev} in {ns}: {text}"))
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F: std::future::Future + Send + 'static, const N: usize>(
    futures: [F; N],
) -> Vec<F::Output>
where
    F::Output: Send,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(N);
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// How long after `since` the node at `addr` saw `peer` enter `state`, by the node's own
/// clock (`state_age_ms`), so that polling delays do not count.
async fn entered(addr: SocketAddr, peer: &str, state: &str, since: Instant) -> Duration {
    eventually(state, Duration::from_secs(10), || async {
        let m = member(addr, peer).await;
        let age = Duration::from_millis(m["state_age_ms"].as_u64()?);
        (m["state"] == state).then(|| since.elapsed().saturating_sub(age))
    })
    .await
}

/// Three nodes, each in its namespace of `lab` (with the client API on `lab.client_addr(i)`
/// if `client_api`), once each sees both peers up; their HTTP addresses.
async fn three_in(lab: &Lab, root: &Path, client_api: bool) -> (Vec<Proc>, Vec<SocketAddr>) {
    init_pki(&root.join("pki"));
    let http: Vec<SocketAddr> = (0..3).map(|i| lab.http_addr(i)).collect();
    let mesh: Vec<SocketAddr> = (0..3).map(|i| lab.mesh_addr(i)).collect();
    let mut procs = Vec::new();
    for i in 0..3 {
        let listen = Listen::Bind {
            http: &http,
            mesh: &mesh,
        };
        let client = lab.client_addr(i).to_string();
        let mut env = Vec::new();
        if client_api {
            env.push(("TERN_CLIENT_LISTEN", client.as_str()));
        }
        procs.push(spawn_node_in(Some(&lab.ns(i)), root, i, listen, &env).await);
    }
    let all_up = |i: usize| {
        let addr = http[i];
        async move {
            for peer in NAMES.iter().filter(|&&p| p != NAMES[i]) {
                if member_state(addr, peer).await != "up" {
                    return None;
                }
            }
            Some(())
        }
    };
    for i in 0..3 {
        eventually("mesh up", Duration::from_secs(30), || all_up(i)).await;
    }
    (procs, http)
}

/// Keyed calls that a stand-in took while the key's home was cut off are not run again by
/// the home after the heal: the home did not restart, but it saw its peers come back, so it
/// asks them first. A sync retry through it is answered with the stand-in's run, an async one
/// with the stand-in's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_calls_a_stand_in_took_during_a_partition_are_not_run_again_by_their_home_after_the_heal()
 {
    use crate::client::{client_config, connect};
    use tern_client::InvokeOptions;

    let Some(lab) = Lab::new() else { return };
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (procs, http) = three_in(&lab, root, true).await;
    let (a, b, c) = (http[0], http[1], http[2]);
    // Keys of f are homed at b, its warm owner.
    let f = deploy_owned_by_b(a, c).await;
    let through = |i: usize| {
        let mut config = client_config(&root.join("pki"), &[(NAMES[i], lab.client_addr(i))]);
        let token = bearer_for(http[i]).expect("the node's admin token");
        config.token = Some(token.trim_start_matches("Bearer ").to_owned());
        connect(config)
    };
    let keyed = || InvokeOptions {
        idempotency_key: Some("once".into()),
        ..Default::default()
    };

    lab.set_connected(1, false);
    for (entry, peer) in [(a, "b"), (c, "b"), (b, "a"), (b, "c")] {
        eventually("partition seen", Duration::from_secs(10), || async {
            (member_state(entry, peer).await != "up").then_some(())
        })
        .await;
    }
    let via_a = through(0).await;
    let first = via_a
        .invoke_with(&f, b"run once".to_vec(), keyed())
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_ne!(first.node, "b", "run by a stand-in on a and c's side");
    let job = via_a
        .invoke_async_with(&f, b"job".to_vec(), keyed())
        .await
        .unwrap();
    let done = via_a
        .wait_result(&job, Duration::from_millis(10), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (done.attempts, done.output.as_deref()),
        (1, Some(&b"job"[..]))
    );
    // The stand-in's copy went to its keeper before the 202, within a bound; the finished
    // record follows in the background. Neither shows over HTTP: give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;

    lab.set_connected(1, true);
    for peer in ["a", "c"] {
        entered(b, peer, "up", Instant::now()).await;
    }
    let retry = through(1)
        .await
        .invoke_with(&f, b"run once".to_vec(), keyed())
        .await
        .unwrap();
    assert!(
        retry.replayed,
        "b ran the call again (first run on {}, retry answered by {})",
        first.node, retry.node
    );
    assert_eq!(retry.output, first.output);
    // The async call under the same key: b finds the id the stand-in gave (its copy is with
    // the stand-in's keeper) instead of accepting the call anew.
    let again = through(1)
        .await
        .invoke_async_with(&f, b"job".to_vec(), keyed())
        .await
        .unwrap();
    assert_eq!(again, job, "b accepted the async call again under its key");
    drop(procs);
}

/// Reliability row 1 with real processes and network namespaces: node b is cut off from a
/// and c under load through all three. Both sides notice within 1.5 s; every invocation
/// accepted by any node, minority included, is answered correctly (b runs its own work
/// itself, a and c re-place what b held); after the heal the links are back within 2 s and
/// work returns to b.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_keeps_serving_and_the_cluster_heals_within_2_s() {
    let Some(lab) = Lab::new() else { return };
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let (procs, http) = three_in(&lab, root, false).await;
    let (a, b, c) = (http[0], http[1], http[2]);
    let f = deploy_owned_by_b(a, c).await;
    eventually("b has the function", Duration::from_secs(30), || async {
        (invoke(b, &f, "x").await.status == 200).then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = [a, c, b, b]
        .into_iter()
        .map(|entry| tokio::spawn(load(entry, f.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cut_at = Instant::now();
    lab.set_connected(1, false);
    let pairs = [(a, "b"), (c, "b"), (b, "a"), (b, "c")];
    // All four views polled at once; a peer being redialled shows as `joining`, so "not up"
    // is what counts.
    let seen = futures_join(pairs.map(|(entry, peer)| async move {
        eventually("partition seen", Duration::from_secs(10), || async {
            (member_state(entry, peer).await != "up").then(|| cut_at.elapsed())
        })
        .await
    }))
    .await;
    for ((entry, peer), seen) in pairs.iter().zip(&seen) {
        assert!(
            *seen <= Duration::from_millis(1500),
            "{entry} saw {peer} go after {seen:?}"
        );
    }
    // Work goes on on both sides of the partition, while the redials back off to their cap.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for entry in [a, b] {
        let r = invoke(entry, &f, "during").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_ne!(
            r.header("x-tern-node") == Some("b"),
            entry == a,
            "ran across the cut"
        );
    }

    let healed_at = Instant::now();
    lab.set_connected(1, true);
    let mut back = Duration::ZERO;
    for (entry, peer) in pairs {
        let t = entered(entry, peer, "up", healed_at).await;
        eprintln!("{entry} sees {peer} up {t:?} after the heal");
        back = back.max(t);
    }
    let total = stop_load(&stop, workers).await;
    let reruns = metric(a, "tern_failover_reruns_total").await
        + metric(c, "tern_failover_reruns_total").await;
    eprintln!(
        "partition: {total} sync requests, 0 lost, {reruns} re-placed MEUs, links back {back:?} after the heal"
    );
    assert!(
        back <= Duration::from_secs(2),
        "links back only after {back:?}"
    );
    for entry in [a, c] {
        eventually("work back on b", Duration::from_secs(10), || async {
            let r = invoke(entry, &f, "again").await;
            assert_eq!(r.status, 200);
            (r.header("x-tern-node") == Some("b")).then_some(())
        })
        .await;
    }
    drop(procs);
}
