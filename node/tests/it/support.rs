//! Helpers shared by the integration tests: in-process nodes on port 0, the guest functions,
//! and a small HTTP client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tern_bench::{HttpConn, Response};
use tern_node::{Config, NodeHandle};

/// `functions/dist`, built on first use if missing (the test script builds it beforehand).
/// Skips a test that needs a host feature this machine lacks (root, network namespaces), with
/// a `SKIPPED: <why>` line written past the test harness's output capture so it shows in the
/// run's log. Where a skip would hide a regression — `TERN_NO_SKIP=1`, which `.ci/run` sets
/// when it runs as root — the test fails instead.
pub fn skip_or_fail(why: &str) {
    if std::env::var_os("TERN_NO_SKIP").is_some_and(|v| v == "1") {
        panic!("TERN_NO_SKIP=1 but this test would have skipped: {why}");
    }
    use std::io::Write as _;
    // Not `eprintln!`: libtest captures that for passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

pub fn functions_dir() -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dist = root.join("functions/dist");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let complete = dist.join("echo.wasm").exists() && dist.join("components/echo.wasm").exists();
    if !*built && !complete {
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-functions.sh"))
            .status()
            .expect("running scripts/build-functions.sh");
        assert!(status.success(), "scripts/build-functions.sh failed");
    }
    *built = true;
    dist
}

pub fn wasm(name: &str) -> Bytes {
    let path = functions_dir().join(format!("{name}.wasm"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A `wasi:http/proxy` component from `functions/dist/components`.
pub fn component(name: &str) -> Bytes {
    let path = functions_dir().join(format!("components/{name}.wasm"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A node config for tests: port 0, its own data dir, echo and matmul-json deployed.
pub fn config(data: &Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.to_owned(),
        node_name: "test-node".into(),
        examples_dir: functions_dir(),
        max_instances: 200,
        // Open on loopback, so tests of other things need no token; the auth and tenant
        // tests turn tokens on.
        auth: tern_node::config::AuthMode::Off,
        // Guests in the test's own process, whatever the host allows: these tests are about
        // everything but the isolation between tenants (`lci.rs` runs cells, and so do the
        // nodes of `cluster_process.rs`, on the default `auto` as root).
        isolation: tern_node::config::Isolation::InProcess,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> NodeHandle {
    tern_node::start(config).await.expect("node starts")
}

/// Admin tokens of nodes that run with bearer tokens (the default) although their test is
/// about something else (nodes in their own processes), by HTTP address: [`request`] and
/// [`auth_headers`] send them. A node not listed here is open (`auth = "off"`) or is one an
/// auth test talks to with explicit headers.
static ADMIN_TOKENS: Mutex<Vec<(SocketAddr, String)>> = Mutex::new(Vec::new());

/// From now on, the helpers call the node at `addr` as its admin, with `token`.
pub fn use_admin_token(addr: SocketAddr, token: String) {
    let mut tokens = ADMIN_TOKENS.lock().unwrap_or_else(|p| p.into_inner());
    tokens.retain(|(a, _)| *a != addr);
    tokens.push((addr, token));
}

/// The `authorization` header value for the node at `addr`, if [`use_admin_token`] gave one.
pub fn bearer_for(addr: SocketAddr) -> Option<String> {
    ADMIN_TOKENS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, t)| format!("Bearer {t}"))
}

/// The request headers that send `bearer` (none without one).
pub fn authorization(bearer: &Option<String>) -> Vec<(&str, &str)> {
    bearer
        .as_deref()
        .map(|b| ("authorization", b))
        .into_iter()
        .collect()
}

pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> Response {
    let bearer = bearer_for(addr);
    let headers = authorization(&bearer);
    tokio::time::timeout(
        Duration::from_secs(60),
        tern_bench::request_once(addr, method, path, &headers, body.into()),
    )
    .await
    .expect("request timed out")
    .expect("request failed")
}

pub async fn deploy(addr: SocketAddr, name: &str, query: &str) -> Response {
    request(
        addr,
        Method::PUT,
        &format!("/v1/functions/{name}{query}"),
        wasm(name),
    )
    .await
}

pub async fn invoke(addr: SocketAddr, name: &str, body: impl Into<Bytes>) -> Response {
    request(
        addr,
        Method::POST,
        &format!("/v1/functions/{name}/invoke"),
        body,
    )
    .await
}

/// The error code of an API error body.
pub fn code(resp: &Response) -> String {
    tern_wire::ApiError::from_json(&resp.body)
        .map(|e| e.code.as_str().to_owned())
        .unwrap_or_else(|| format!("not an API error: {}", String::from_utf8_lossy(&resp.body)))
}

pub fn json(resp: &Response) -> serde_json::Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&resp.body)))
}

/// The node's `/metrics` text, read with `token` (a node with bearer tokens answers only an
/// admin).
pub async fn metrics_text(addr: SocketAddr, token: Option<&str>) -> String {
    let r = crate::auth::with_token(addr, Method::GET, "/metrics", token, Bytes::new()).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).expect("utf-8 metrics")
}

/// Sum of all samples of `name` in the node's /metrics.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let resp = request(addr, Method::GET, "/metrics", Bytes::new()).await;
    assert_eq!(resp.status, 200);
    tern_bench::prom::sum(
        std::str::from_utf8(&resp.body).expect("utf-8 metrics"),
        name,
    )
    .unwrap_or(0.0)
}

/// The value of `name` with exactly the labels `labels` (`path="session"`), 0 when absent.
pub async fn metric_labelled(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    let resp = request(addr, Method::GET, "/metrics", Bytes::new()).await;
    assert_eq!(resp.status, 200);
    tern_bench::prom::samples(std::str::from_utf8(&resp.body).expect("utf-8 metrics"))
        .filter(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
        .sum()
}

pub async fn conn(addr: SocketAddr) -> HttpConn {
    HttpConn::connect(addr).await.expect("connect")
}

/// p-th percentile (0..=100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p / 100.0).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// Polls `GET /v1/invocations/{id}` until the invocation has finished; returns its record.
pub async fn wait_finished(addr: SocketAddr, id: &str) -> serde_json::Value {
    let mut status = serde_json::Value::Null;
    for _ in 0..500 {
        status = json(
            &request(
                addr,
                Method::GET,
                &format!("/v1/invocations/{id}"),
                Bytes::new(),
            )
            .await,
        );
        if status["status"] != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    status
}

/// Opens a connection and sends a whole `POST /v1/functions/{name}/invoke` with an empty body,
/// without reading the answer: a caller that can walk away.
pub async fn send_invoke(addr: SocketAddr, name: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/functions/{name}/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Polls `name` in `addr`'s metrics until `ok` holds, or panics after `within`.
pub async fn metric_until(
    addr: SocketAddr,
    name: &str,
    within: Duration,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = metric(addr, name).await;
        if ok(v) {
            return v;
        }
        assert!(t0.elapsed() < within, "{name} = {v} after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PUT (a deploy), sent again while the node answers 503 `unavailable`: a cluster member
/// refuses deploys until it has synced the registry, a moment after its peers are up.
pub async fn put_when_synced(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Response {
    let body = body.into();
    let t0 = Instant::now();
    loop {
        let r = request(addr, Method::PUT, path, body.clone()).await;
        if r.status != 503 || t0.elapsed() > Duration::from_secs(20) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test process's resident memory (the nodes it runs), from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Waits until the `tern up` process `child`, listening at `addr` with its data in `data`,
/// answers `/healthz`, then makes its admin token the one requests to `addr` send. Fails at
/// once if the process exits, and after `within`, showing the node's `log`.
pub async fn wait_for_tern(
    child: &mut std::process::Child,
    addr: SocketAddr,
    data: &Path,
    log: &Path,
    within: Duration,
) {
    let t0 = std::time::Instant::now();
    loop {
        // With an inherited listener the kernel accepts the connection before the node runs;
        // the node answers once it is ready, as with a listener it binds when ready.
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(2),
            tern_bench::request_once(addr, Method::GET, "/healthz", &[], Bytes::new()),
        )
        .await
            && r.status == 200
        {
            // Bearer tokens are on, as by default; the first start wrote the admin token.
            let token = std::fs::read_to_string(data.join("admin.token"))
                .expect("the node wrote its admin token");
            use_admin_token(addr, token.trim().to_owned());
            return;
        }
        let exited = child.try_wait().ok().flatten();
        assert!(
            t0.elapsed() < within && exited.is_none(),
            "tern up at {addr} did not start ({exited:?}); log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `tern` binary of this build, to be given its arguments and run with [`run_tern`].
pub fn tern_command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// Runs `tern ARGS --server SERVER` (no token from the environment) to its end: whether it
/// succeeded, its stdout and its stderr.
pub fn tern_at(server: &str, args: &[&str]) -> (bool, String, String) {
    run_tern(
        tern_command()
            .args(args)
            .args(["--server", server])
            .env_remove("TERN_TOKEN"),
    )
}

/// Runs a `tern` command to its end: whether it succeeded, its stdout and its stderr.
pub fn run_tern(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A UDP relay in front of a node that can go silent: what a client sees when the node
/// crashes or is cut off, without any QUIC close reaching it.
pub struct Relay {
    pub addr: SocketAddr,
    /// Nothing passes either way.
    pub silent: Arc<AtomicBool>,
    /// The node's packets are dropped: requests arrive, answers never do.
    pub deaf: Arc<AtomicBool>,
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn relay(target: SocketAddr) -> Relay {
    use tokio::net::UdpSocket;
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(target).await.unwrap();
    let addr = front.local_addr().unwrap();
    let silent = Arc::new(AtomicBool::new(false));
    let deaf = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (silent, deaf) = (silent.clone(), deaf.clone());
        async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if !silent.load(Ordering::Relaxed) {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    r = back.recv(&mut down) => {
                        let Ok(n) = r else { continue };
                        if let Some(c) = client
                            && !silent.load(Ordering::Relaxed)
                            && !deaf.load(Ordering::Relaxed)
                        {
                            let _ = front.send_to(&down[..n], c).await;
                        }
                    }
                }
            }
        }
    });
    Relay {
        addr,
        silent,
        deaf,
        task,
    }
}
