//! Bad modules, bad guests and bad clients never take the node down; each gets a typed error
//! and the node keeps answering a canary.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::support::*;
use tern_node::config::RuntimeProfile;

/// A module importing a host function that does not exist.
const UNKNOWN_IMPORT: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
    0x02, 0x0b, 0x01, 0x03, b'e', b'n', b'v', 0x03, b'f', b'o', b'o', 0x00,
    0x00, // import env.foo
];
/// A valid module that is not a WASI command (no `_start`).
const EMPTY_MODULE: &[u8] = &[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

async fn canary(addr: std::net::SocketAddr) {
    let r = invoke(addr, "echo", "still here").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"still here"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_modules_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_module_bytes = 200_000;
    let node = start(cfg).await;
    let addr = node.addr();
    let compiles = metric(addr, "tern_compiles_total").await;

    for (bytes, why) in [
        (Bytes::from_static(b"definitely not wasm"), "magic"),
        (Bytes::from_static(UNKNOWN_IMPORT), "env::foo"),
        (Bytes::from_static(EMPTY_MODULE), "_start"),
        (wasm("echo").slice(..1000), "truncated"),
    ] {
        let r = request(addr, Method::PUT, "/v1/functions/bad", bytes).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "invalid_module"),
            "{why}"
        );
        let _ = why;
        canary(addr).await;
    }
    // Over the cap: refused from Content-Length, before anything is parsed or compiled.
    let big = vec![0u8; 200_001];
    let r = request(addr, Method::PUT, "/v1/functions/big", big).await;
    assert_eq!((r.status, code(&r).as_str()), (413, "payload_too_large"));
    let after = metric(addr, "tern_compiles_total").await;
    // Only the three modules that parsed far enough to reach the compiler count; not the big one.
    assert!(after - compiles <= 3.0, "{compiles} -> {after}");
    let r = request(addr, Method::GET, "/v1/functions/bad", Bytes::new()).await;
    assert_eq!(r.status, 404, "a refused module must not be deployed");
    canary(addr).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_time_bound_is_enforced_and_other_work_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.compile_timeout_ms = 1;
    cfg.examples.clear();
    let node = start(cfg).await;
    let addr = node.addr();
    let r = deploy(addr, "sandbox-probe", "").await;
    assert_eq!((r.status, code(&r).as_str()), (504, "compile_timeout"));
    let r = request(addr, Method::GET, "/healthz", Bytes::new()).await;
    assert_eq!(r.status, 200);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_get_typed_errors() {
    hostile_guests_get_typed_errors_under(
        tern_node::config::MemoryProfile::GuardPages,
        RuntimeProfile::Optimised,
    )
    .await;
}

/// The same guests under the baseline runtime profile (compiled on first use, on-demand
/// instances): the same typed errors, the same caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_get_the_same_typed_errors_under_the_baseline_runtime_profile() {
    hostile_guests_get_typed_errors_under(
        tern_node::config::MemoryProfile::GuardPages,
        RuntimeProfile::Baseline,
    )
    .await;
}

/// The same guests under the memory profile without guard pages (explicit bounds checks):
/// the same typed errors, the same caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_get_the_same_typed_errors_with_explicit_bounds_checks() {
    hostile_guests_get_typed_errors_under(
        tern_node::config::MemoryProfile::ExplicitBounds,
        RuntimeProfile::Optimised,
    )
    .await;
}

async fn hostile_guests_get_typed_errors_under(
    profile: tern_node::config::MemoryProfile,
    runtime: RuntimeProfile,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_output_bytes = 1 << 20;
    cfg.memory_profile = profile;
    cfg.runtime_profile = runtime;
    let node = start(cfg).await;
    let addr = node.addr();
    let text = metrics_text(addr, None).await;
    let in_force = tern_runtime::MemoryProfile::from(profile).as_str();
    assert!(
        text.contains(&format!(
            "tern_memory_profile{{profile=\"{in_force}\"}} 1\n"
        )),
        "the profile in force is on /metrics"
    );
    for f in [
        "loop",
        "membomb",
        "recurse",
        "trap",
        "bigoutput",
        "exit-code",
        "sandbox-probe",
    ] {
        // Generous deadlines except for the looper: on a VM, the first touch of fresh memory
        // can take seconds, and these tests are about the kind of error, not its timing.
        let timeout = if f == "loop" { 300 } else { 20_000 };
        let r = deploy(addr, f, &format!("?timeout_ms={timeout}&memory_mb=64")).await;
        assert_eq!(r.status, 201, "{f}: {}", String::from_utf8_lossy(&r.body));
    }

    let t = Instant::now();
    let r = invoke(addr, "loop", "").await;
    assert_eq!((r.status, code(&r).as_str()), (504, "timeout"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "timeout took {:?}",
        t.elapsed()
    );
    canary(addr).await;

    // memory.grow fails at the 64 MiB cap instead of growing the host.
    let r = invoke(addr, "membomb", "").await;
    assert_eq!(r.status, 200);
    let pages = json(&r)["total_pages"].as_u64().unwrap();
    assert!(pages <= 64 * 16, "grew to {pages} pages past a 64 MiB cap");
    assert!(
        pages > 60 * 16,
        "should grow close to the cap, got {pages} pages"
    );
    let r = invoke(addr, "membomb", "alloc").await;
    assert_eq!((r.status, code(&r).as_str()), (500, "guest_trap"));

    let r = invoke(addr, "recurse", "").await;
    assert_eq!((r.status, code(&r).as_str()), (500, "guest_trap"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("stack"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    let r = invoke(addr, "trap", "").await;
    assert_eq!((r.status, code(&r).as_str()), (500, "guest_trap"));

    // 64 MiB of output against a 1 MiB cap: a typed error, never truncated output.
    let r = invoke(addr, "bigoutput", "").await;
    assert_eq!((r.status, code(&r).as_str()), (502, "output_too_large"));
    let r = invoke(addr, "bigoutput", "1048576").await;
    assert_eq!((r.status, r.body.len()), (200, 1 << 20));
    let r = invoke(addr, "bigoutput", "1048577").await;
    assert_eq!(code(&r), "output_too_large");

    let r = invoke(addr, "exit-code", "").await;
    assert_eq!((r.status, code(&r).as_str()), (500, "guest_error"));
    assert!(String::from_utf8_lossy(&r.body).contains("status 3"));

    // No files, no sockets, and only the documented environment.
    let r = invoke(addr, "sandbox-probe", "").await;
    assert_eq!(r.status, 200);
    let probe = json(&r);
    for attempt in [
        "open_etc_passwd",
        "read_dir_root",
        "read_dir_cwd",
        "tcp_connect",
    ] {
        assert_eq!(probe[attempt]["ok"], false, "{attempt} succeeded: {probe}");
    }
    let env = probe["env"].as_object().unwrap();
    let keys: Vec<&str> = env.keys().map(String::as_str).collect();
    assert_eq!(keys, ["TERN_FUNCTION", "TERN_NODE", "TERN_REQUEST_ID"]);
    assert_eq!(env["TERN_FUNCTION"], "sandbox-probe");
    assert_eq!(env["TERN_NODE"], "test-node");

    canary(addr).await;
    let errors = metric(addr, "tern_invocations_total").await;
    assert!(errors >= 10.0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stack_overflow_a_thousand_times_leaves_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    deploy(addr, "recurse", "").await;
    let mut conn = conn(addr).await;
    for i in 0..1000 {
        let r = conn
            .request(
                Method::POST,
                "/v1/functions/recurse/invoke",
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 500, "repeat {i}");
    }
    canary(addr).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue_cap = 4;
    let node = start(cfg).await;
    let addr = node.addr();
    deploy(addr, "loop", "?timeout_ms=400").await;
    let tasks: Vec<_> = (0..12)
        .map(|_| tokio::spawn(async move { invoke(addr, "loop", "").await }))
        .collect();
    let (mut timeouts, mut rejected) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            504 => timeouts += 1,
            429 => {
                assert_eq!(code(&r), "overloaded");
                assert_eq!(r.header("retry-after"), Some("1"));
                rejected += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(timeouts + rejected, 12);
    assert!(timeouts >= 4, "the admitted ones ran to their deadline");
    assert!(rejected >= 1, "the queue cap must refuse some");
    assert_eq!(
        metric(addr, "tern_admission_rejected_total").await,
        f64::from(rejected)
    );
    // The queue recovers once the loopers' guests have ended (a permit is held until then,
    // which may be a moment after the 504 was sent).
    metric_until(addr, "tern_queue_in_flight", Duration::from_secs(2), |v| {
        v == 0.0
    })
    .await;
    canary(addr).await;
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.header_read_timeout_ms = 300;
    let node = start(cfg).await;
    let addr = node.addr();
    // Ten clients that send half a request line and then nothing.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // And ten that finish one request, then sit idle on the kept-alive connection.
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        slow.push(s);
    }
    canary(addr).await;
    let started = Instant::now();
    for mut s in slow {
        let mut buf = [0u8; 1024];
        // The server closes the connection (possibly after a 408): read reaches EOF.
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a slow connection was not cut");
    }
    // Idle timeout + 1 s: a slow or stalled client is cut within that.
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "{:?}",
        started.elapsed()
    );
    canary(addr).await;
    node.shutdown().await.unwrap();
}

/// The abandonment attack: callers flood a function that loops for 30 s and go away. Their
/// guests are cancelled (waiting or running), admission and the instance slots are free
/// again at once, and the next caller is served; nothing is counted as a guest fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_go_away_cancel_their_guests_and_free_their_places() {
    let dir = tempfile::tempdir().unwrap();
    callers_go_away(config(dir.path())).await;
}

/// The same with each tenant's guests in its cell, where a plain call is placed and waits
/// for its cell in the caller's own task: dropping that task cancels the guest in the cell
/// and counts the MEU as abandoned, as the RuntimePool's task does for guests in the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cells_callers_that_go_away_cancel_their_guests_and_free_their_places() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cfg) = crate::lci::cells_config(dir.path(), tern_node::config::Isolation::Lci) else {
        return;
    };
    callers_go_away(cfg).await;
}

/// Twelve callers of a 30 s loop with four instance slots go away; see the tests above.
async fn callers_go_away(mut cfg: tern_node::config::Config) {
    cfg.max_instances = 4;
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(deploy(addr, "loop", "?timeout_ms=30000").await.status, 201);
    let mut callers = Vec::new();
    for _ in 0..12 {
        callers.push(send_invoke(addr, "loop").await);
    }
    // All four slots run a looping guest; the other eight wait for one.
    metric_until(addr, "tern_executing", Duration::from_secs(10), |v| {
        v == 4.0
    })
    .await;
    metric_until(addr, "tern_queue_in_flight", Duration::from_secs(10), |v| {
        v == 12.0
    })
    .await;
    let left = Instant::now();
    drop(callers);
    metric_until(
        addr,
        "tern_abandoned_meus_total",
        Duration::from_secs(3),
        |v| v == 12.0,
    )
    .await;
    metric_until(addr, "tern_executing", Duration::from_secs(3), |v| v == 0.0).await;
    metric_until(addr, "tern_queue_in_flight", Duration::from_secs(3), |v| {
        v == 0.0
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(3),
        "{:?}",
        left.elapsed()
    );
    let t0 = Instant::now();
    canary(addr).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let text = metrics_text(addr, None).await;
    assert!(
        !text.contains("function=\"loop\",outcome=\"guest_trap\""),
        "an abandoned call was counted as a guest fault"
    );
    node.shutdown().await.unwrap();
}

/// A function whose guests keep outliving their first time slice has its next guests started
/// on the low-priority lane directly, except for one fast-lane probe in eight, so a flood of
/// its calls does not spend a fast-lane slice each; a function whose guests finish within
/// the slice never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_whose_guests_outlive_their_slice_starts_them_on_the_slow_lane() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    assert_eq!(deploy(addr, "loop", "?timeout_ms=200").await.status, 201);
    assert_eq!(deploy(addr, "echo", "").await.status, 201);
    for i in 0..20 {
        let r = invoke(addr, "echo", format!("call {i}")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(metric(addr, "tern_slow_lane_moves_total").await, 0.0);
    for _ in 0..12 {
        let r = invoke(addr, "loop", "").await;
        assert_eq!(r.status, 504, "{:?}", r.body);
    }
    // Four moves make a hog; of the next eight starts the first is a probe (it moves too).
    assert_eq!(metric(addr, "tern_slow_lane_moves_total").await, 5.0);
    assert_eq!(metric(addr, "tern_slow_lane_starts_total").await, 7.0);
    for i in 0..20 {
        let r = invoke(addr, "echo", format!("call {i}")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(metric(addr, "tern_slow_lane_starts_total").await, 7.0);
    node.shutdown().await.unwrap();
}

/// With every instance slot busy, a call waits for one only as long as its function's time
/// limit (which runs from admission), then gets 429 `overloaded`, never a guest error; and a
/// slot freed under heavy contention always finds a pooled instance free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_answers_429_within_the_deadline_and_freed_slots_are_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_instances = 2;
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(deploy(addr, "loop", "?timeout_ms=1500").await.status, 201);
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/echo-brief?timeout_ms=200",
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let loopers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { invoke(addr, "loop", "").await }))
        .collect();
    metric_until(addr, "tern_executing", Duration::from_secs(10), |v| {
        v == 2.0
    })
    .await;
    let t0 = Instant::now();
    let r = invoke(addr, "echo-brief", "hi").await;
    let waited = t0.elapsed();
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(code(&r), "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1000),
        "waited {waited:?} for a slot with a 200 ms limit"
    );
    for l in loopers {
        let r = l.await.unwrap();
        assert_eq!((r.status, code(&r).as_str()), (504, "timeout"));
    }
    // Two slots, 48 callers at once, three times over: every slot handed on is usable.
    for _ in 0..3 {
        let calls: Vec<_> = (0..48)
            .map(|i| tokio::spawn(async move { invoke(addr, "echo", format!("x{i}")).await }))
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.body, Bytes::from(format!("x{i}")));
        }
    }
    node.shutdown().await.unwrap();
}

/// A function deployed with `max_instances` runs at most that many guests on the node, even
/// across a redeploy; a call over it waits within its deadline, then gets 429 `overloaded`
/// naming the cap; the tenant's other functions run meanwhile; a bad cap is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_held_to_its_max_instances_leaves_the_tenants_other_functions_running() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    for bad in ["0", "1000001", "two"] {
        let r = deploy(addr, "loop", &format!("?max_instances={bad}")).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
    let r = deploy(addr, "loop", "?timeout_ms=3000&max_instances=2").await;
    assert_eq!(r.status, 201);
    assert_eq!(json(&r)["max_instances"], 2);
    let loopers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { invoke(addr, "loop", "").await }))
        .collect();
    let running = |text: &str, what: &str| -> f64 {
        let line = format!("tern_tenant_{what}{{tenant=\"default\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    // Two run, the third waits for one of them although 62 other slots are free.
    let t0 = Instant::now();
    loop {
        let text = metrics_text(addr, None).await;
        if running(&text, "running") == 2.0 && running(&text, "waiting") == 1.0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = invoke(addr, "echo", "still served").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"still served"[..]));
    // A redeploy with a short limit: its calls count against the same cap, which the first
    // version's guests still fill, so they wait out their 300 ms and are told why.
    let r = deploy(addr, "loop", "?timeout_ms=300&max_instances=2").await;
    assert_eq!(r.status, 201);
    let t1 = Instant::now();
    let r = invoke(addr, "loop", "").await;
    let waited = t1.elapsed();
    assert_eq!(
        (r.status, code(&r).as_str()),
        (429, "overloaded"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        String::from_utf8_lossy(&r.body).contains("max_instances"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_millis(2000),
        "waited {waited:?} with a 300 ms limit"
    );
    // The two that ran time out at their limit. The third's limit ends within moments of
    // theirs: it either got a freed instance and timed out too, or was refused at its limit.
    let mut answers = Vec::new();
    for l in loopers {
        let r = l.await.unwrap();
        answers.push((r.status, code(&r)));
    }
    let timeouts = answers
        .iter()
        .filter(|a| **a == (504, "timeout".into()))
        .count();
    let refused = answers
        .iter()
        .filter(|a| **a == (429, "overloaded".into()))
        .count();
    assert!(timeouts >= 2 && timeouts + refused == 3, "{answers:?}");
    node.shutdown().await.unwrap();
}

/// Reads from `s` until the server closes it (or 3 s pass) and returns what came.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A body that trickles in is cut at its deadline (`body_read_timeout_ms` plus its length at
/// the minimum rate) with 408 `request_timeout`, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_at_its_deadline() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.body_read_timeout_ms = 300;
    let node = start(cfg).await;
    let addr = node.addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(
        b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut s).await;
    let took = t0.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    canary(addr).await;
    node.shutdown().await.unwrap();
}

/// Past `max_connections` in all, or `max_connections_per_ip` from one address, a new
/// connection is answered 429 `overloaded` and closed at once; the open ones are served,
/// and a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_caps_are_refused_and_open_ones_are_served() {
    use tokio::io::AsyncWriteExt;
    for (max, per_ip) in [(3, 100), (100, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.max_connections = max;
        cfg.max_connections_per_ip = per_ip;
        let node = start(cfg).await;
        let addr = node.addr();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(tern_bench::HttpConn::connect(addr).await.unwrap());
        }
        // A fourth is over the cap: answered and closed, whatever it sends.
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let answer = read_to_close(&mut extra).await;
        assert!(
            answer.starts_with("HTTP/1.1 429"),
            "({max}, {per_ip}): {answer}"
        );
        assert!(answer.contains("\"overloaded\""), "{answer}");
        assert_eq!(
            metric_on(&mut held[0], "tern_http_connections_refused_total").await,
            1.0
        );
        // The held connections are served.
        for c in &mut held {
            let r = c
                .request(
                    Method::POST,
                    "/v1/functions/echo/invoke",
                    &[],
                    Bytes::from("held"),
                )
                .await
                .unwrap();
            assert_eq!((r.status, &r.body[..]), (200, &b"held"[..]));
        }
        // Closing one frees its place.
        held.pop();
        let t0 = Instant::now();
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                tern_bench::request_once(addr, Method::GET, "/healthz", &[], Bytes::new()),
            )
            .await
            .unwrap();
            if matches!(&r, Ok(r) if r.status == 200) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "the place was not freed: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.shutdown().await.unwrap();
    }
}

/// `/metrics` read over an open connection (a new one might be over the cap).
async fn metric_on(conn: &mut tern_bench::HttpConn, name: &str) -> f64 {
    let r = conn
        .request(Method::GET, "/metrics", &[], Bytes::new())
        .await
        .unwrap();
    tern_bench::prom::sum(std::str::from_utf8(&r.body).unwrap(), name).unwrap_or(0.0)
}

/// A full node refuses an invocation before reading its body: the 429 comes back at once
/// even though the body (declared 5 MB) is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_comes_before_the_body_is_read() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue_cap = 1;
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(deploy(addr, "loop", "?timeout_ms=2000").await.status, 201);
    let looper = send_invoke(addr, "loop").await;
    metric_until(addr, "tern_executing", Duration::from_secs(10), |v| {
        v == 1.0
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(
        b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap();
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop(looper);
    node.shutdown().await.unwrap();
}

/// Running guests claim their function's `memory_mb` from the node's memory budget: with
/// 256 MiB, two 128 MiB loopers fill it, and a third call waits only its time limit, then
/// gets 429 `overloaded`. A node whose `max_memory_mb` exceeds its budget refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_guests_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.memory_budget_mb = 256;
    cfg.max_memory_mb = 128;
    cfg.default_memory_mb = 128;
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(metric(addr, "tern_memory_budget_mb").await, 256.0);
    assert_eq!(deploy(addr, "loop", "?timeout_ms=1500").await.status, 201);
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/echo-brief?timeout_ms=200",
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let loopers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { invoke(addr, "loop", "").await }))
        .collect();
    metric_until(addr, "tern_executing", Duration::from_secs(10), |v| {
        v == 2.0
    })
    .await;
    let t0 = Instant::now();
    let r = invoke(addr, "echo-brief", "hi").await;
    assert_eq!((r.status, code(&r).as_str()), (429, "overloaded"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("memory budget"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t0.elapsed()
    );
    for l in loopers {
        assert_eq!(l.await.unwrap().status, 504);
    }
    // Once the loopers have ended, their memory is free again.
    metric_until(addr, "tern_queue_in_flight", Duration::from_secs(2), |v| {
        v == 0.0
    })
    .await;
    let r = invoke(addr, "echo-brief", "again").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"again"[..]));
    node.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.memory_budget_mb = 100;
    let refused = tern_node::start(cfg).await.err().expect("refused to start");
    assert!(refused.to_string().contains("memory budget"), "{refused}");
}

/// The number of deployed functions is capped: a new name past `max_functions` is refused
/// with 429 `quota_exceeded` before it is compiled; new versions of deployed names, and new
/// names once one is removed, are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_of_new_names_past_max_functions_get_quota_exceeded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.max_functions = 2;
    let node = start(cfg).await;
    let addr = node.addr();
    let put = |name: &'static str| async move {
        request(
            addr,
            Method::PUT,
            &format!("/v1/functions/{name}"),
            wasm("echo"),
        )
        .await
    };
    assert_eq!(put("second").await.status, 201);
    let compiles = metric(addr, "tern_compiles_total").await;
    let r = put("third").await;
    assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("max_functions = 2"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(metric(addr, "tern_compiles_total").await, compiles);
    assert_eq!(
        put("second").await.status,
        201,
        "a new version is not a new name"
    );
    let r = request(addr, Method::DELETE, "/v1/functions/second", Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(put("third").await.status, 201);
    canary(addr).await;
    node.shutdown().await.unwrap();
}

/// A WASI command whose start function loops forever (it runs while the module is
/// instantiated, before `_start`), encoded by hand: types `() -> ()`, a looping start
/// function, and an empty exported `_start`.
const LOOPING_START: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
    0x03, 0x03, 0x02, 0x00, 0x00, // functions: two of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01, // export _start
    0x08, 0x01, 0x00, // start: function 0
    0x0a, 0x0c, 0x02, // code: two bodies
    0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
    0x02, 0x00, 0x0b, // empty
];

/// A guest that never finishes instantiating is stopped at its deadline and answered as a
/// timeout, as one that never finishes running is (not as a trap of the guest), and the node
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_stuck_in_its_start_function_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/stuck?timeout_ms=200",
        Bytes::from_static(LOOPING_START),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = invoke(addr, "stuck", "").await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (504, "timeout"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    canary(addr).await;
    node.shutdown().await.unwrap();
}
