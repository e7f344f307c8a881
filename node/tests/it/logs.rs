//! Guest logs: what guests write to stderr is kept per function on the node that ran them,
//! read with `GET /v1/functions/{name}/logs` and `tern logs`.

use hyper::Method;
use tern_wire::LogPage;

use crate::support::*;

async fn logs(addr: std::net::SocketAddr, name: &str, query: &str) -> tern_bench::Response {
    request(
        addr,
        Method::GET,
        &format!("/v1/functions/{name}/logs{query}"),
        bytes::Bytes::new(),
    )
    .await
}

fn page(r: &tern_bench::Response) -> LogPage {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).unwrap()
}

fn texts(p: &LogPage) -> Vec<&str> {
    p.lines.iter().map(|l| l.text.as_str()).collect()
}

/// Lines are kept in order, read from a cursor, include a panicking guest's message, and a
/// flooding function pushes out only its own lines; bad reads get typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_stderr_is_kept_on_the_node_and_read_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    for name in ["logger", "quiet"] {
        let r = request(
            addr,
            Method::PUT,
            &format!("/v1/functions/{name}"),
            wasm("logger"),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let r = invoke(addr, "logger", "first\nsecond").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"first\nsecond"[..]));
    let r = invoke(addr, "logger", "panic").await;
    assert_eq!(r.status, 500, "{}", code(&r));
    let all = page(&logs(addr, "logger", "").await);
    let t = texts(&all);
    assert_eq!(&t[..2], ["log: first", "log: second"]);
    assert!(t[2..].iter().any(|l| l.contains("asked to panic")), "{t:?}");
    assert_ne!(all.lines[0].request_id, all.lines[2].request_id);
    assert!(all.lines.iter().all(|l| l.at_ms > 1_700_000_000_000));
    // From the cursor on: nothing new yet, then only the new line.
    assert_eq!(
        page(&logs(addr, "logger", &format!("?after={}", all.next)).await).lines,
        vec![]
    );
    invoke(addr, "logger", "third").await;
    let newer = page(&logs(addr, "logger", &format!("?after={}", all.next)).await);
    assert_eq!(texts(&newer), ["log: third"]);
    // The CLI prints them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["logs", "logger", "--server", &addr.to_string()])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("log: first") && printed.contains("log: third"),
        "{printed}"
    );

    // A flood keeps the ring within its 16 KiB and leaves another function's lines alone.
    invoke(addr, "quiet", "still here").await;
    let r = invoke(addr, "logger", "flood").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"flooded"[..]));
    let flooded = page(&logs(addr, "logger", "?limit=10000").await);
    let kept: usize = flooded.lines.iter().map(|l| l.text.len()).sum();
    assert!(kept <= 16 << 10, "{kept}");
    assert!(flooded.dropped > 0);
    let last = flooded.lines.last().unwrap();
    assert!(
        last.text.contains("more bytes of stderr not kept"),
        "{}",
        last.text
    );
    assert_eq!(
        texts(&page(&logs(addr, "quiet", "").await)),
        ["log: still here"]
    );
    assert_eq!(metric(addr, "tern_guest_log_functions").await, 2.0);
    let held = metric(addr, "tern_guest_log_bytes").await;
    assert!(held > 0.0 && held <= f64::from((16 << 10) + 64), "{held}");

    // Typed errors: a bad cursor, a function that does not exist, one that was removed.
    let r = logs(addr, "logger", "?after=soon").await;
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_request"));
    let r = logs(addr, "nobody", "").await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let r = request(
        addr,
        Method::DELETE,
        "/v1/functions/logger",
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = logs(addr, "logger", "").await;
    assert_eq!(r.status, 404);
    node.shutdown().await.unwrap();
}

/// Logs are read by those who deploy and inspect functions: a developer of the tenant (and
/// admins), not its invokers, and another tenant's developer learns nothing of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_functions_logs_are_read_by_its_developers_not_its_invokers_or_other_tenants() {
    use crate::auth::{new_token_for, with_token};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.auth = tern_node::config::AuthMode::Tokens;
    let node = start(cfg).await;
    let addr = node.addr();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    use_admin_token(addr, admin.clone());
    for tenant in ["acme", "other"] {
        let body = format!(r#"{{"name":"{tenant}"}}"#);
        let r = with_token(addr, Method::POST, "/v1/tenants", Some(&admin), body).await;
        assert_eq!(r.status, 201);
    }
    let (dev, _) = new_token_for(addr, &admin, "developer", "acme").await;
    let (invoker, _) = new_token_for(addr, &admin, "invoker", "acme").await;
    let (stranger, _) = new_token_for(addr, &admin, "developer", "other").await;
    let r = with_token(
        addr,
        Method::PUT,
        "/v1/functions/talk",
        Some(&dev),
        wasm("logger"),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = with_token(
        addr,
        Method::POST,
        "/v1/functions/talk/invoke",
        Some(&invoker),
        "secret",
    )
    .await;
    assert_eq!(r.status, 200);
    let read = |token: String, path: &'static str| async move {
        with_token(addr, Method::GET, path, Some(&token), bytes::Bytes::new()).await
    };
    let r = read(dev.clone(), "/v1/functions/talk/logs").await;
    assert_eq!(texts(&page(&r)), ["log: secret"]);
    let r = read(admin.clone(), "/v1/functions/acme.talk/logs").await;
    assert_eq!(texts(&page(&r)), ["log: secret"]);
    let r = read(invoker, "/v1/functions/talk/logs").await;
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden"));
    let r = read(stranger, "/v1/functions/acme.talk/logs").await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let r = read(dev, "/v1/functions/talk/logs?limit=0").await;
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_request"));
    node.shutdown().await.unwrap();
}

/// `tern logs NAME --follow` prints what the function's guests write as they write it: lines
/// written after it started come out on its stdout, in order, without a second command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_logs_follow_prints_new_lines_as_the_guests_write_them() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let r = request(addr, Method::PUT, "/v1/functions/logger", wasm("logger")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(invoke(addr, "logger", "before").await.status, 200);
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["logs", "logger", "--follow", "--server", &addr.to_string()])
        .env_remove("TERN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line within 10 s")
            .unwrap()
            .expect("tern logs --follow is still running")
    };
    // What was there when it started, then what comes after.
    assert!(next_line().await.ends_with(" log: before"));
    for word in ["one", "two"] {
        assert_eq!(invoke(addr, "logger", word).await.status, 200);
        let line = next_line().await;
        assert!(line.ends_with(&format!(" log: {word}")), "{line}");
    }
    assert!(
        follow.try_wait().unwrap().is_none(),
        "--follow keeps running"
    );
    follow.kill().await.unwrap();
    node.shutdown().await.unwrap();
}

/// `tern up --log-format json`: every line the node logs is one JSON object with its level,
/// time, target and message, for log pipelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_up_with_log_format_json_logs_one_json_object_per_line() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "info",
            "--log-format",
            "json",
        ])
        .arg("--data")
        .arg(dir.path())
        .env("TERN_EXAMPLES", "[]")
        .env("TERN_ISOLATION", "in-process")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Up to its "listening" line: start-up logs at info level.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await
    {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key}: {line}");
        }
        assert!(v["fields"]["message"].is_string(), "{line}");
        let listening = line.contains("listening");
        seen.push(v);
        if listening {
            break;
        }
    }
    assert!(
        seen.iter().any(|v| v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("listening")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|v| v["level"] == "INFO" || v["level"] == "WARN")
    );
    node.kill().await.unwrap();
}
