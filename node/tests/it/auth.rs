//! `auth = "tokens"`: every route of the HTTP API against no token, a bad token, a revoked
//! token, and each role.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use tern_node::config::AuthMode;

use crate::support::*;

pub(crate) async fn with_token(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<Bytes>,
) -> tern_bench::Response {
    let header = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("authorization", h)])
        .unwrap_or_default();
    tokio::time::timeout(
        Duration::from_secs(60),
        tern_bench::request_once(addr, method, path, &headers, body.into()),
    )
    .await
    .expect("request timed out")
    .expect("request failed")
}

async fn new_token(addr: SocketAddr, admin: &str, role: &str) -> (String, String) {
    new_token_for(addr, admin, role, "default").await
}

/// The secret of an admin token of `default` that has been revoked.
pub(crate) async fn revoked_admin_token(addr: SocketAddr, admin: &str) -> String {
    let (secret, id) = new_token(addr, admin, "admin").await;
    let r = with_token(
        addr,
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        Some(admin),
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(json(&r)["revoked_at_ms"].is_u64());
    secret
}

/// A new token of `tenant` with `role`: (secret, id).
pub(crate) async fn new_token_for(
    addr: SocketAddr,
    admin: &str,
    role: &str,
    tenant: &str,
) -> (String, String) {
    let r = with_token(
        addr,
        Method::POST,
        "/v1/tokens",
        Some(admin),
        format!(r#"{{"role":"{role}","tenant":"{tenant}"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = json(&r);
    assert_eq!(v["role"], role);
    assert_eq!(v["tenant"], tenant);
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// Callers, in the order of each row's expected statuses.
const CALLERS: [&str; 6] = ["none", "bad", "revoked", "invoker", "developer", "admin"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_its_role_allows() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.auth = AuthMode::Tokens;
    let node = start(cfg).await;
    let addr = node.addr();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    let (invoker, _) = new_token(addr, &admin, "invoker").await;
    let (developer, _) = new_token(addr, &admin, "developer").await;
    let revoked = revoked_admin_token(addr, &admin).await;
    // Well formed, unknown id: the same 401 as garbage.
    let bad = "tern_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let token = |caller: &str| -> Option<&str> {
        match caller {
            "none" => None,
            "bad" => Some(bad),
            "revoked" => Some(&revoked),
            "invoker" => Some(&invoker),
            "developer" => Some(&developer),
            "admin" => Some(&admin),
            _ => unreachable!(),
        }
    };
    // Resources each caller acts on in turn.
    for caller in CALLERS {
        let r = with_token(
            addr,
            Method::PUT,
            &format!("/v1/functions/gone-{caller}"),
            Some(&admin),
            wasm("echo"),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let r = with_token(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?mode=async",
        Some(&admin),
        "async",
    )
    .await;
    assert_eq!(r.status, 202);
    let invocation = json(&r)["id"].as_str().unwrap().to_owned();

    type Row = (Method, String, &'static str, [u16; 6]);
    let rows: Vec<Row> = vec![
        (Method::GET, "/healthz".into(), "", [200; 6]),
        (
            Method::GET,
            "/metrics".into(),
            "",
            [401, 401, 401, 403, 403, 200],
        ),
        (
            Method::GET,
            "/v1/cluster".into(),
            "",
            [401, 401, 401, 403, 403, 200],
        ),
        (
            Method::GET,
            "/v1/functions".into(),
            "",
            [401, 401, 401, 403, 200, 200],
        ),
        (
            Method::GET,
            "/v1/functions/echo".into(),
            "",
            [401, 401, 401, 403, 200, 200],
        ),
        (
            Method::PUT,
            "/v1/functions/fresh-{caller}".into(),
            "echo",
            [401, 401, 401, 403, 201, 201],
        ),
        (
            Method::DELETE,
            "/v1/functions/gone-{caller}".into(),
            "",
            [401, 401, 401, 403, 200, 200],
        ),
        (
            Method::POST,
            "/v1/functions/echo/invoke".into(),
            "hi",
            [401, 401, 401, 200, 200, 200],
        ),
        // A component's route needs the permission to invoke, whatever the method (`echo` is
        // a command: past authentication, the typed 400).
        (
            Method::DELETE,
            "/fn/echo/x".into(),
            "",
            [401, 401, 401, 400, 400, 400],
        ),
        (
            Method::GET,
            format!("/v1/invocations/{invocation}"),
            "",
            [401, 401, 401, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/tokens".into(),
            "",
            [401, 401, 401, 403, 403, 200],
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            r#"{"role":"invoker"}"#,
            [401, 401, 401, 403, 403, 201],
        ),
        (
            Method::GET,
            "/v1/tenants".into(),
            "",
            [401, 401, 401, 403, 403, 200],
        ),
        (
            Method::GET,
            "/v1/tenants/default".into(),
            "",
            [401, 401, 401, 403, 200, 200],
        ),
        (
            Method::POST,
            "/v1/tenants".into(),
            r#"{"name":"made-by-admin"}"#,
            [401, 401, 401, 403, 403, 201],
        ),
        (
            Method::PUT,
            "/v1/tenants/default".into(),
            r#"{"weight":2}"#,
            [401, 401, 401, 403, 403, 200],
        ),
        (
            Method::GET,
            "/no/such/route".into(),
            "",
            [401, 401, 401, 404, 404, 404],
        ),
    ];
    let (mut unauthorized, mut forbidden) = (0, 0);
    for (method, path, body, expected) in rows {
        for (caller, want) in CALLERS.into_iter().zip(expected) {
            let path = path.replace("{caller}", caller);
            let body = match body {
                "echo" => wasm("echo"),
                other => Bytes::from(other),
            };
            let r = with_token(addr, method.clone(), &path, token(caller), body).await;
            assert_eq!(
                r.status,
                want,
                "{method} {path} as {caller}: {}",
                String::from_utf8_lossy(&r.body)
            );
            match want {
                401 => {
                    assert_eq!(code(&r), "unauthorized");
                    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
                    unauthorized += 1;
                }
                403 => {
                    assert_eq!(code(&r), "forbidden");
                    forbidden += 1;
                }
                _ => {}
            }
        }
    }
    // Every refusal is counted by code, and every 403 against the caller's tenant (all of
    // these callers are of `default`).
    let text = metrics_text(addr, Some(&admin)).await;
    for line in [
        format!("tern_request_errors_total{{code=\"unauthorized\"}} {unauthorized}\n"),
        format!("tern_request_errors_total{{code=\"forbidden\"}} {forbidden}\n"),
        format!(
            "tern_tenant_invocations_total{{tenant=\"default\",outcome=\"forbidden\"}} {forbidden}\n"
        ),
    ] {
        assert!(text.contains(&line), "{line} in /metrics");
    }
    assert!(unauthorized > 0 && forbidden > 0);
    // A revoked or refused caller changed nothing: only the developer's and the admin's
    // deploys exist.
    let r = with_token(
        addr,
        Method::GET,
        "/v1/functions",
        Some(&admin),
        Bytes::new(),
    )
    .await;
    let names: Vec<String> = json(&r)
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .filter(|n| n.starts_with("fresh-"))
        .collect();
    assert_eq!(names, ["fresh-admin", "fresh-developer"]);
    node.shutdown().await.unwrap();
}

/// Token secrets are shown once and never listed; the listing shows who holds what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_listings_carry_no_secret_and_bad_token_requests_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.auth = AuthMode::Tokens;
    let node = start(cfg).await;
    let addr = node.addr();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = admin.trim();
    let (secret, _) = new_token(addr, admin, "developer").await;
    let r = with_token(addr, Method::GET, "/v1/tokens", Some(admin), Bytes::new()).await;
    let listing = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(json(&r).as_array().unwrap().len(), 2, "{listing}");
    assert!(!listing.contains(&secret[20..]), "{listing}");
    assert!(!listing.contains(&admin[20..]), "{listing}");
    for (body, why) in [
        (r#"{"role":"owner"}"#, "unknown role"),
        (
            r#"{"role":"invoker","tenant":"Not A Name"}"#,
            "invalid tenant name",
        ),
        (r#"{"role":"invoker","extra":1}"#, "unknown field"),
        ("not json", "not JSON"),
    ] {
        let r = with_token(addr, Method::POST, "/v1/tokens", Some(admin), body).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "invalid_request"),
            "{why}"
        );
    }
    let r = with_token(
        addr,
        Method::POST,
        "/v1/tokens",
        Some(admin),
        r#"{"role":"invoker","tenant":"other"}"#,
    )
    .await;
    assert_eq!(
        (r.status, code(&r).as_str()),
        (404, "not_found"),
        "a tenant that does not exist"
    );
    for id in ["nope", "0123456789abcdef"] {
        let r = with_token(
            addr,
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            Some(admin),
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, if id == "nope" { 400 } else { 404 }, "{id}");
    }
    node.shutdown().await.unwrap();
}

/// A result id nobody has: a caller the node lets through gets 404, one it refuses 401.
pub(crate) const NO_SUCH_RESULT: &str = "/v1/invocations/0123456789abcdef0123456789abcdef";

/// In a cluster, a tenant or token made on one node works on every node, and a revocation
/// on any node holds everywhere; each node's first-start admin token is known to all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_tokens_and_revocations_replicate_across_the_cluster() {
    use crate::cluster::{MeshSockets, eventually, init_pki, member_config, one_cluster_at_a_time};
    let _one = one_cluster_at_a_time().await;
    let root = tempfile::tempdir().unwrap();
    init_pki(&root.path().join("pki"));
    let mesh = MeshSockets::bind(3);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut cfg = member_config(root.path(), i, &mesh);
        cfg.auth = AuthMode::Tokens;
        nodes.push(mesh.start(i, cfg).await);
    }
    let admins: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(root.path().join(n).join("admin.token")).unwrap();
            t.trim().to_owned()
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr()).collect();
    let status = |addr: SocketAddr, token: String| async move {
        with_token(
            addr,
            Method::GET,
            "/v1/functions",
            Some(&token),
            Bytes::new(),
        )
        .await
        .status
    };
    // Every node's admin token, on every node, once the links are up and pulled.
    for admin in &admins {
        for &addr in &addrs {
            eventually("admin tokens replicated", Duration::from_secs(20), || {
                let admin = admin.clone();
                async move { (status(addr, admin).await == 200).then_some(()) }
            })
            .await;
        }
    }
    // A tenant made on a, with a developer token made on a, deploys through c.
    let r = with_token(
        addrs[0],
        Method::POST,
        "/v1/tenants",
        Some(&admins[0]),
        r#"{"name":"acme","weight":4}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let (acme, _) = new_token_for(addrs[0], &admins[0], "developer", "acme").await;
    let c = addrs[2];
    eventually(
        "the tenant and its token replicated",
        Duration::from_secs(10),
        || {
            let acme = acme.clone();
            async move {
                let r = with_token(c, Method::GET, "/v1/tenants/acme", Some(&acme), "").await;
                (r.status == 200).then(|| assert_eq!(json(&r)["spec"]["weight"], 4))
            }
        },
    )
    .await;
    let r = with_token(
        addrs[2],
        Method::PUT,
        "/v1/functions/work",
        Some(&acme),
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r)["name"], "acme.work");
    let b = addrs[1];
    eventually(
        "acme's function runs through b",
        Duration::from_secs(10),
        || {
            let acme = acme.clone();
            async move {
                let r = with_token(
                    b,
                    Method::POST,
                    "/v1/functions/work/invoke",
                    Some(&acme),
                    "from b",
                )
                .await;
                (r.status == 200).then(|| assert_eq!(&r.body[..], b"from b"))
            }
        },
    )
    .await;

    let (invoker, id) = new_token(addrs[0], &admins[0], "invoker").await;
    for &addr in &addrs[1..] {
        eventually("a new token replicated", Duration::from_secs(10), || {
            let invoker = invoker.clone();
            async move {
                let r = with_token(addr, Method::GET, NO_SUCH_RESULT, Some(&invoker), "").await;
                // Refused as unknown (401) until it arrives; then let through to the lookup.
                assert!(r.status == 404 || r.status == 401, "{}", r.status);
                (r.status == 404).then_some(())
            }
        })
        .await;
    }
    let r = with_token(
        addrs[1],
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        Some(&admins[1]),
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);
    for &addr in &addrs {
        eventually("the revocation replicated", Duration::from_secs(10), || {
            let invoker = invoker.clone();
            async move {
                let r = with_token(addr, Method::GET, NO_SUCH_RESULT, Some(&invoker), "").await;
                (r.status == 401).then_some(())
            }
        })
        .await;
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// The CLI sends `TERN_TOKEN` (or `--token`), and manages tokens with the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_carries_tern_token_and_manages_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.auth = AuthMode::Tokens;
    let node = start(cfg).await;
    let server = node.addr().to_string();
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    // Run from an empty directory, so no ./tern-data/admin.token is picked up.
    let cwd = tempfile::tempdir().unwrap();
    let tern = |token: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.current_dir(cwd.path())
            .env_remove("TERN_TOKEN")
            .env("TERN_SERVER", &server)
            .args(args);
        if let Some(t) = token {
            cmd.env("TERN_TOKEN", t.trim());
        }
        cmd.output().unwrap()
    };
    let out = tern(Some(&admin), &["token", "create", "--role", "invoker"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let invoker = created["token"].as_str().unwrap().to_owned();

    let out = tern(
        Some(&invoker),
        &["invoke", "echo", "--data", "with a token"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "with a token");

    let out = tern(None, &["invoke", "echo", "--data", "without"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized (401)"));

    let wasm_path = functions_dir().join("echo.wasm");
    let out = tern(
        Some(&invoker),
        &["deploy", "mine", wasm_path.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden (403)"));

    let out = tern(Some(&admin), &["token", "list", "-o", "json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // For people, a table: a header and a row per token.
    let out = tern(Some(&admin), &["token", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("ID ") && table.contains(" invoker "),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");

    let id = created["id"].as_str().unwrap();
    let out = tern(Some(&admin), &["token", "revoke", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tern(Some(&invoker), &["invoke", "echo", "--data", "revoked"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized (401)"));
    node.shutdown().await.unwrap();
}

/// A node without authentication must not be reachable from other machines: `auth = "off"`
/// on an inherited listener bound to every address is refused at start, and the same
/// listener is served with tokens (the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_node_refuses_a_listener_that_is_not_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let everywhere = || std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let open = tern_node::start_with(
        config(dir.path()),
        tern_node::Sockets {
            http: Some(everywhere()),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(&open, Err(tern_node::NodeError::Config(tern_node::config::ConfigError::Invalid(m))) if m.contains("loopback")),
        "{:?}",
        open.err()
    );
    let listener = everywhere();
    let port = listener.local_addr().unwrap().port();
    let node = tern_node::start_with(
        tern_node::Config {
            auth: AuthMode::Tokens,
            ..config(dir.path())
        },
        tern_node::Sockets {
            http: Some(listener),
            ..Default::default()
        },
    )
    .await
    .expect("starts with tokens");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let anonymous = with_token(addr, Method::GET, "/v1/functions", None, Bytes::new()).await;
    assert_eq!(anonymous.status, 401);
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let listed = with_token(
        addr,
        Method::GET,
        "/v1/functions",
        Some(admin.trim()),
        Bytes::new(),
    )
    .await;
    assert_eq!(listed.status, 200);
    node.shutdown().await.unwrap();
}
