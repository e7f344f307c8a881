//! Deployments, artifacts and accepted async work survive a restart.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use command_fds::{CommandFdExt, FdMapping};
use hyper::Method;
use tern_node::store::Store;
use tern_wire::{InvocationRecord, InvocationStatus};

use crate::support::*;

/// A `tern up` process, `SIGKILL`ed when dropped.
pub(crate) struct KillOnDrop(Child);

impl KillOnDrop {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tern up` alone (no cluster) with `data`, on `listener` (socket activation, so a restart
/// gets the same address), once it answers; its admin token is the one requests use.
async fn spawn_tern(data: &Path, listener: &std::net::TcpListener) -> KillOnDrop {
    spawn_tern_with(data, listener, &[]).await
}

/// [`spawn_tern`] with `env` added to the node's environment.
pub(crate) async fn spawn_tern_with(
    data: &Path,
    listener: &std::net::TcpListener,
    env: &[(&str, &str)],
) -> KillOnDrop {
    let addr = listener.local_addr().unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.arg("up")
        .arg("--data")
        .arg(data)
        .arg("--examples-dir")
        .arg(functions_dir())
        .fd_mappings(vec![FdMapping {
            parent_fd: listener.try_clone().unwrap().into(),
            child_fd: 3,
        }])
        .unwrap()
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env_remove("LISTEN_PID")
        .env("TERN_EXAMPLES", "[]")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut node = KillOnDrop(cmd.spawn().expect("spawn tern"));
    wait_for_tern(
        &mut node.0,
        addr,
        data,
        &data.with_extension("log"),
        Duration::from_secs(60),
    )
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_run_cut_short_by_kill_9_counts_as_an_attempt_when_it_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let node = spawn_tern(&data, &listener).await;
    let r = deploy(addr, "loop", "?timeout_ms=1000").await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = request(
        addr,
        Method::POST,
        "/v1/functions/loop/invoke?mode=async",
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = json(&r)["id"].as_str().unwrap().to_owned();
    // Well inside the guest's second (it loops), and before the store's own periodic flush
    // (every 500 ms) would have saved the attempt anyway.
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(node);
    let _node = spawn_tern(&data, &listener).await;
    let status = wait_finished(addr, &id).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["error"]["code"], "timeout", "{status}");
    assert_eq!(
        status["attempts"], 2,
        "the run the crash cut short and the replay: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_functions_and_the_first_call_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples.clear();
    let node = start(cfg.clone()).await;
    let addr = node.addr();
    assert_eq!(deploy(addr, "trap", "").await.status, 201);
    let info = json(&request(addr, Method::PUT, "/v1/functions/hello", wasm("echo")).await);
    assert_eq!(metric(addr, "tern_compiles_total").await, 2.0);
    node.shutdown().await.unwrap();

    let node = start(cfg).await;
    let addr = node.addr();
    // Preheated from the artifact on disk: nothing compiled, first call warm.
    assert_eq!(metric(addr, "tern_compiles_total").await, 0.0);
    let r = invoke(addr, "hello", "again").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"again"[..]));
    assert_eq!(r.header("x-tern-cold-start"), Some("false"));
    let got = json(&request(addr, Method::GET, "/v1/functions/hello", Bytes::new()).await);
    assert_eq!(got, info);
    assert_eq!(metric(addr, "tern_compiles_total").await, 0.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_artifact_is_recompiled_never_executed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    let node = start(cfg.clone()).await;
    node.shutdown().await.unwrap();
    let artifacts: Vec<_> = std::fs::read_dir(dir.path().join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1);
    let mut bytes = std::fs::read(&artifacts[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&artifacts[0], &bytes).unwrap();

    let node = start(cfg).await;
    assert_eq!(metric(node.addr(), "tern_compiles_total").await, 1.0);
    let r = invoke(node.addr(), "echo", "ok").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_async_invocations_are_replayed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    let node = start(cfg.clone()).await;
    node.shutdown().await.unwrap();
    // What a crash leaves behind: accepted (journaled) but unfinished invocations.
    {
        let store = Store::open(dir.path()).unwrap();
        for (id, function) in [("crashed-1", "echo"), ("crashed-2", "gone")] {
            store
                .put_invocation(&InvocationRecord {
                    id: id.parse().unwrap(),
                    function: function.parse().unwrap(),
                    map: false,
                    status: InvocationStatus::Pending,
                    input: b"replayed".to_vec(),
                    output: None,
                    error: None,
                    accepted_at_ms: 1,
                    finished_at_ms: None,
                    attempts: 1,
                })
                .unwrap();
        }
        store.flush().await.unwrap();
    }
    let node = start(cfg).await;
    let addr = node.addr();
    let status = wait_finished(addr, "crashed-1").await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["result"], "replayed");
    assert_eq!(
        status["attempts"], 2,
        "at-least-once: the replay is the second attempt"
    );
    let gone = json(&request(addr, Method::GET, "/v1/invocations/crashed-2", Bytes::new()).await);
    assert_eq!(gone["status"], "failed");
    assert_eq!(gone["error"]["code"], "not_found");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_store_refuses_to_start_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    std::fs::write(dir.path().join("db/conf"), b"\xde\xad\xbe\xef garbage").unwrap();
    std::fs::write(dir.path().join("db/db"), vec![0x5a; 8192]).unwrap();
    let err = tern_node::start(config(dir.path()))
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("store"), "{err}");
}

/// The journal of asynchronous invocations has caps: past them a new one is refused with 429
/// `overloaded` (nothing is accepted that could not be stored), and room comes back as
/// results expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invocations_past_the_journal_caps_get_429_until_results_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.max_stored_results = 3;
    // Long enough that the janitor's first pass (at start, possibly delayed on a busy
    // machine) cannot expire the first results before the refusal is checked.
    cfg.result_ttl_secs = 2;
    let node = start(cfg).await;
    let addr = node.addr();
    let accept = |body: &'static str| async move {
        request(
            addr,
            Method::POST,
            "/v1/functions/echo/invoke?mode=async",
            body,
        )
        .await
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = accept("kept").await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        ids.push(json(&r)["id"].as_str().unwrap().to_owned());
    }
    let r = accept("one too many").await;
    assert_eq!(r.status, 429);
    assert_eq!(code(&r), "overloaded");
    assert!(r.header("retry-after").is_some());
    assert!(
        String::from_utf8_lossy(&r.body).contains("max_stored_results = 3"),
        "the refusal names the cap: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(metric(addr, "tern_journal_full_refusals_total").await, 1.0);
    assert_eq!(metric(addr, "tern_stored_results").await, 3.0);
    for id in &ids {
        assert_eq!(wait_finished(addr, id).await["result"], "kept");
    }
    // Past the retention period the janitor's pass makes room.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_eq!(node.app().expire_results().unwrap(), 3);
    assert_eq!(metric(addr, "tern_stored_results").await, 0.0);
    assert_eq!(metric(addr, "tern_stored_result_bytes").await, 0.0);
    let r = accept("room again").await;
    assert_eq!(r.status, 202);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_byte_cap_counts_inputs_and_stored_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.max_stored_result_mb = 1;
    let node = start(cfg).await;
    let addr = node.addr();
    let big = Bytes::from(vec![b'x'; 600 << 10]);
    let r = request(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?mode=async",
        big.clone(),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = json(&r)["id"].as_str().unwrap().to_owned();
    wait_finished(addr, &id).await;
    // The pending record held the input; the finished one holds the echoed output.
    let stored = metric(addr, "tern_stored_result_bytes").await;
    assert!(stored > f64::from(600 << 10), "{stored}");
    let r = request(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?mode=async",
        big,
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(String::from_utf8_lossy(&r.body).contains("max_stored_result_mb = 1"));
    // Synchronous calls store nothing and are not affected.
    let r = invoke(addr, "echo", "sync").await;
    assert_eq!(r.status, 200);
    node.shutdown().await.unwrap();
}

/// A journal record that no longer decodes is moved aside and counted; the node starts and
/// replays everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_record_is_quarantined_and_the_node_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    start(cfg.clone()).await.shutdown().await.unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .put_invocation(&InvocationRecord {
                id: "good-1".parse().unwrap(),
                function: "echo".parse().unwrap(),
                map: false,
                status: InvocationStatus::Pending,
                input: b"still here".to_vec(),
                output: None,
                error: None,
                accepted_at_ms: 1,
                finished_at_ms: None,
                attempts: 1,
            })
            .unwrap();
        store
            .tree("invocations")
            .unwrap()
            .insert(b"bad-1", &b"\xff\x00 torn write"[..])
            .unwrap();
        store.flush().await.unwrap();
    }
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(wait_finished(addr, "good-1").await["result"], "still here");
    assert_eq!(metric(addr, "tern_store_quarantined_total").await, 1.0);
    let r = request(addr, Method::GET, "/v1/invocations/bad-1", Bytes::new()).await;
    assert_eq!(r.status, 404, "a quarantined record is no longer served");
    let quarantined = node.app().store.quarantine().unwrap();
    assert_eq!(
        quarantined,
        vec![(
            "invocation/bad-1".to_owned(),
            b"\xff\x00 torn write".to_vec()
        )]
    );
    node.shutdown().await.unwrap();
}

fn artifact_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("artifacts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Modules and artifacts that no live function uses are deleted (an older version, a removed
/// function); those of live functions stay and still run without compiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_no_function_uses_are_collected_with_their_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    let node = start(cfg).await;
    let addr = node.addr();
    let store = &node.app().store;
    let v1 = json(&request(addr, Method::PUT, "/v1/functions/f", wasm("trap")).await);
    let v2 = json(&request(addr, Method::PUT, "/v1/functions/f", wasm("exit-code")).await);
    let g = json(&request(addr, Method::PUT, "/v1/functions/g", wasm("loop")).await);
    let r = request(addr, Method::DELETE, "/v1/functions/g", Bytes::new()).await;
    assert_eq!(r.status, 200);
    let hash = |v: &serde_json::Value| -> tern_wire::ModuleHash {
        v["hash"].as_str().unwrap().parse().unwrap()
    };
    let echo: tern_wire::ModuleHash =
        json(&request(addr, Method::GET, "/v1/functions/echo", Bytes::new()).await)["hash"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(
        artifact_files(dir.path()).len(),
        8,
        "4 artifacts and digests"
    );

    // Within the grace period artifacts stay (a compile may be under way); modules go.
    let first = node
        .app()
        .collect_garbage(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((first.modules, first.artifacts), (2, 0));
    let gone = node
        .app()
        .collect_garbage(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((gone.modules, gone.artifacts), (0, 2));
    for unused in [hash(&v1), hash(&g)] {
        assert_eq!(store.module(&unused).unwrap(), None);
    }
    for used in [hash(&v2), echo] {
        assert!(store.module(&used).unwrap().is_some());
    }
    let left = artifact_files(dir.path());
    assert_eq!(left.len(), 4, "{left:?}");
    for used in [hash(&v2), echo] {
        assert!(
            left.iter().any(|f| f.starts_with(&used.to_hex())),
            "{left:?}"
        );
    }
    assert_eq!(metric(addr, "tern_gc_modules_removed_total").await, 2.0);
    assert_eq!(metric(addr, "tern_gc_artifacts_removed_total").await, 2.0);
    // What is left still serves, from its artifact.
    let compiles = metric(addr, "tern_compiles_total").await;
    let r = invoke(addr, "echo", "still warm").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"still warm"[..]));
    assert_eq!(metric(addr, "tern_compiles_total").await, compiles);
    node.shutdown().await.unwrap();
}

/// A module refused after it compiled (not a WASI command, or importing what the host does
/// not provide) leaves no artifact behind: distinct bad uploads cannot fill the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_refused_after_compiling_leave_no_artifact() {
    /// Valid WebAssembly with no `_start`.
    const NO_START: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    let node = start(cfg).await;
    let addr = node.addr();
    let before = artifact_files(dir.path());
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/bad",
        Bytes::from_static(NO_START),
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_module"));
    assert_eq!(
        metric(addr, "tern_compiles_total").await,
        2.0,
        "it was compiled"
    );
    assert_eq!(artifact_files(dir.path()), before);
    node.shutdown().await.unwrap();
}

/// Deploying and removing ever new names leaves nothing behind in the node's metrics: the
/// removed function's series go, what it counted stays in the node-wide totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_functions_leave_no_metric_series_and_totals_keep_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    let node = start(cfg).await;
    let addr = node.addr();
    for i in 0..5 {
        let name = format!("brief-{i}");
        let r = request(
            addr,
            Method::PUT,
            &format!("/v1/functions/{name}"),
            wasm("echo"),
        )
        .await;
        assert_eq!(r.status, 201);
        assert_eq!(invoke(addr, &name, "x").await.status, 200);
        let r = request(
            addr,
            Method::DELETE,
            &format!("/v1/functions/{name}"),
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(node.services().metrics.function_count(), 1, "only echo");
    let text = request(addr, Method::GET, "/metrics", Bytes::new()).await;
    let text = String::from_utf8_lossy(&text.body);
    assert!(!text.contains("brief-"), "{text}");
    assert_eq!(node.services().metrics.finished_invocations(), 5);
    node.shutdown().await.unwrap();
}

/// A tmpfs mounted for a test, lazily unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size_mb: u32) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mb}m"),
                "tern-test",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` to its last byte with the file `dir/filler`.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

/// In a process of its own: sled's I/O thread pool is shared by every store in a process, and
/// the flushes a wedged store leaves waiting hold its threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_on_a_full_disk_is_a_prompt_unavailable_and_the_node_restarts_itself_once_there_is_room()
 {
    if !tern_cell::jail::is_root() {
        skip_or_fail("mounts a tmpfs: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _disk = Tmpfs::mount(&data, 32);
    // Its own address (no socket activation, so the restart re-executes `tern up`).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut node = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("up")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--examples-dir")
            .arg(functions_dir())
            .env("TERN_EXAMPLES", "[]")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn tern"),
    );
    wait_for_tern(&mut node.0, addr, &data, &log_path, Duration::from_secs(60)).await;
    let pid = node.0.id();
    let r = deploy(addr, "echo", "").await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    fill(&data);
    // sled writes a record over a quarter of a segment (128 KiB) as a file of its own; when
    // that write fails, every later flush waits for ever (no error is kept). Callers get a
    // retryable error within the flush bound, not a hang.
    let t0 = std::time::Instant::now();
    let big = vec![b'x'; 300_000];
    let r = request(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?mode=async",
        big,
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(code(&r), "unavailable");
    let small = request(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?mode=async",
        "x",
    )
    .await;
    assert_eq!(
        small.status,
        503,
        "{}",
        String::from_utf8_lossy(&small.body)
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // Sync calls go on, and the node stays up while the disk is full.
    assert_eq!(
        invoke(addr, "echo", "during").await.body,
        Bytes::from("during")
    );
    assert!(metric(addr, "tern_store_write_failures_total").await >= 1.0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let logged = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!logged().contains("restarting: "), "{}", logged());
    // Room again: the node restarts itself (the same process), opens its store again and
    // takes async work.
    std::fs::remove_file(data.join("filler")).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            tern_bench::request_once(
                addr,
                Method::POST,
                "/v1/functions/echo/invoke?mode=async",
                &authorization(&bearer_for(addr)),
                Bytes::from("after"),
            ),
        )
        .await;
        if let Ok(Ok(r)) = r
            && r.status == 202
        {
            let id = json(&r)["id"].as_str().unwrap().to_owned();
            let done = wait_finished(addr, &id).await;
            assert_eq!(done["result"], "after", "{done}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no async work taken within 30 s of the room; log:\n{}",
            logged()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        logged().contains("the data directory takes writes again: restarting the node")
            && logged().contains("restarting: "),
        "{}",
        logged()
    );
    assert_eq!(node.0.id(), pid);
    assert!(
        node.0.try_wait().unwrap().is_none(),
        "the same process, still running"
    );
}
