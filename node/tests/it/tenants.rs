//! Tenants over HTTP (`auth = "tokens"`): records an admin manages, functions each tenant
//! owns under its own names, nothing of one tenant visible to another, and quotas on what a
//! tenant deploys.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::Method;
use tern_node::config::AuthMode;

use crate::auth::{new_token_for, with_token};
use crate::support::*;

struct Node {
    node: tern_node::node::NodeHandle,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn node_with_tokens() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.auth = AuthMode::Tokens;
    let node = start(cfg).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    Node {
        node,
        admin: admin.trim().to_owned(),
        _dir: dir,
    }
}

async fn create_tenant(addr: SocketAddr, admin: &str, body: &str) -> tern_bench::Response {
    with_token(
        addr,
        Method::POST,
        "/v1/tenants",
        Some(admin),
        body.to_owned(),
    )
    .await
}

/// Creates tenant `acme` with `quotas` (JSON) and deploys the `echo` example as its `work`;
/// a developer token of acme.
async fn acme_with_work(n: &Node, quotas: &str) -> String {
    let addr = n.node.addr();
    let r = create_tenant(
        addr,
        &n.admin,
        &format!(r#"{{"name":"acme","quotas":{quotas}}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let (dev, _) = new_token_for(addr, &n.admin, "developer", "acme").await;
    let r = with_token(
        addr,
        Method::PUT,
        "/v1/functions/work",
        Some(&dev),
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    dev
}

/// `PUT /v1/tenants/acme` with `body`, as the admin.
async fn update_acme(n: &Node, body: &str) -> tern_bench::Response {
    with_token(
        n.node.addr(),
        Method::PUT,
        "/v1/tenants/acme",
        Some(&n.admin),
        body.to_owned(),
    )
    .await
}

/// The node's `/metrics` text, read with the admin token.
async fn admin_metrics_text(n: &Node) -> String {
    metrics_text(n.node.addr(), Some(&n.admin)).await
}

fn body(r: &tern_bench::Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn names(r: &tern_bench::Response) -> Vec<String> {
    let mut names: Vec<String> = json(r)
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_own_their_functions_and_see_nothing_of_each_other() {
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    for t in ["acme", "globex"] {
        let r = create_tenant(addr, &n.admin, &format!(r#"{{"name":"{t}"}}"#)).await;
        assert_eq!(r.status, 201, "{}", body(&r));
    }
    let (acme, _) = new_token_for(addr, &n.admin, "developer", "acme").await;
    let (globex, _) = new_token_for(addr, &n.admin, "developer", "globex").await;
    let call = |method: Method, path: String, token: String, body: Bytes| async move {
        with_token(addr, method, &path, Some(&token), body).await
    };

    // Both deploy a function called `work`: two functions, one name each.
    let r = call(
        Method::PUT,
        "/v1/functions/work".into(),
        acme.clone(),
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(json(&r)["name"], "acme.work");
    let r = call(
        Method::PUT,
        "/v1/functions/work".into(),
        globex.clone(),
        wasm("trap"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(json(&r)["name"], "globex.work");

    // Each runs its own.
    let invoke = "/v1/functions/work/invoke".to_owned();
    let r = call(Method::POST, invoke.clone(), acme.clone(), "hi".into()).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hi"[..]));
    let r = call(Method::POST, invoke.clone(), globex.clone(), "hi".into()).await;
    assert_eq!((r.status, code(&r).as_str()), (500, "guest_trap"));
    // The tenant-qualified spelling is the same function for its owner.
    let r = call(
        Method::POST,
        "/v1/functions/acme.work/invoke".into(),
        acme.clone(),
        "again".into(),
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (200, &b"again"[..]));

    // Listings: each tenant its own; the admin everything.
    let r = call(
        Method::GET,
        "/v1/functions".into(),
        acme.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!(names(&r), ["acme.work"]);
    let r = call(
        Method::GET,
        "/v1/functions".into(),
        n.admin.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!(names(&r), ["acme.work", "echo", "globex.work"]);

    // Another tenant's function, by any spelling and any route, is answered exactly like one
    // that does not exist.
    let absent = call(
        Method::GET,
        "/v1/functions/acme.nothing".into(),
        acme.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!((absent.status, code(&absent).as_str()), (404, "not_found"));
    for (method, path, payload) in [
        (Method::GET, "/v1/functions/globex.work", Bytes::new()),
        (Method::POST, "/v1/functions/globex.work/invoke", "x".into()),
        (Method::DELETE, "/v1/functions/globex.work", Bytes::new()),
        (Method::PUT, "/v1/functions/globex.work", wasm("echo")),
        (Method::GET, "/v1/functions/default.echo", Bytes::new()),
        (
            Method::POST,
            "/v1/functions/default.echo/invoke",
            "x".into(),
        ),
    ] {
        let r = call(method.clone(), path.into(), acme.clone(), payload).await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (404, "not_found"),
            "{method} {path}: {}",
            body(&r)
        );
        // Same message but for the name (`default.echo` is spelled `echo`).
        let name = path
            .split('/')
            .nth(3)
            .unwrap()
            .trim_start_matches("default.");
        assert_eq!(
            body(&r).replace(name, "NAME"),
            body(&absent).replace("acme.nothing", "NAME"),
            "{method} {path}: worded like a missing function"
        );
    }
    // globex's function is untouched by acme's attempts.
    let r = call(
        Method::GET,
        "/v1/functions/work".into(),
        globex.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, json(&r)["version"].as_u64()), (200, Some(1)));

    // Asynchronous results: only the invoking tenant (or an admin) reads them.
    let r = call(
        Method::POST,
        "/v1/functions/work/invoke?mode=async".into(),
        acme.clone(),
        "later".into(),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = json(&r)["id"].as_str().unwrap().to_owned();
    let result = format!("/v1/invocations/{id}");
    let r = call(Method::GET, result.clone(), globex.clone(), Bytes::new()).await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    assert_eq!(body(&r).replace(&id, "X"), {
        let none = call(
            Method::GET,
            "/v1/invocations/0123456789abcdef0123456789abcdef".into(),
            globex.clone(),
            Bytes::new(),
        )
        .await;
        body(&none).replace("0123456789abcdef0123456789abcdef", "X")
    });
    for token in [&acme, &n.admin] {
        crate::cluster::eventually(
            "the owner reads its result",
            std::time::Duration::from_secs(10),
            || {
                let (path, token) = (result.clone(), token.clone());
                async move {
                    let r = with_token(addr, Method::GET, &path, Some(&token), Bytes::new()).await;
                    assert_eq!(r.status, 200, "{}", body(&r));
                    (json(&r)["status"] == "succeeded").then_some(())
                }
            },
        )
        .await;
    }

    // A developer reads its own tenant's record, with what it uses, and no other.
    let r = call(
        Method::GET,
        "/v1/tenants/acme".into(),
        acme.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(json(&r)["usage"]["functions"], 1);
    let r = call(
        Method::GET,
        "/v1/tenants/globex".into(),
        acme.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (404, "not_found"));
    let r = call(
        Method::GET,
        "/v1/tenants".into(),
        acme.clone(),
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden"));
    n.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_quotas_refuse_deploys_and_removal_needs_an_empty_tenant_and_ends_its_tokens() {
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    let r = create_tenant(
        addr,
        &n.admin,
        r#"{"name":"acme","weight":3,"sla":"batch","quotas":{"max_functions":1,"max_timeout_ms":5000}}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let v = json(&r);
    assert_eq!(
        (&v["spec"]["weight"], &v["spec"]["sla"]),
        (&3.into(), &"batch".into())
    );
    assert_eq!(v["spec"]["quotas"]["max_functions"], 1);
    assert_eq!(
        v["spec"]["quotas"]["max_concurrent"], 250,
        "quotas left out keep their defaults"
    );
    let (dev, _) = new_token_for(addr, &n.admin, "developer", "acme").await;
    let deploy = |name: &'static str, query: &'static str| {
        let dev = dev.clone();
        async move {
            with_token(
                addr,
                Method::PUT,
                &format!("/v1/functions/{name}{query}"),
                Some(&dev),
                wasm("echo"),
            )
            .await
        }
    };
    let r = deploy("too-slow", "?timeout_ms=6000").await;
    assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    assert!(body(&r).contains("max_timeout_ms = 5000"), "{}", body(&r));
    assert!(r.header("retry-after").is_none(), "waiting does not help");
    let r = deploy("one", "").await;
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(
        json(&r)["timeout_ms"],
        5000,
        "the default timeout is capped at the tenant's"
    );
    let r = deploy("two", "").await;
    assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    assert!(
        body(&r).contains("tenant acme") && body(&r).contains("max_functions = 1"),
        "{}",
        body(&r)
    );
    assert_eq!(
        deploy("one", "").await.status,
        201,
        "a new version of a deployed function is not a new function"
    );
    // Raising the quota lets the deploy through; the rest of the record is kept.
    let r = update_acme(&n, r#"{"quotas":{"max_functions":2}}"#).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(json(&r)["spec"]["weight"], 3);
    assert_eq!(json(&r)["version"], 2);
    assert_eq!(deploy("two", "").await.status, 201);
    // The default tenant's functions do not count against acme's quota, nor acme's
    // against default's.
    let r = with_token(
        addr,
        Method::GET,
        "/v1/tenants/default",
        Some(&n.admin),
        Bytes::new(),
    )
    .await;
    assert_eq!(json(&r)["usage"]["functions"], 1);

    // A tenant that owns functions is not removed; once empty it is, and its tokens die.
    let remove = || async {
        with_token(
            addr,
            Method::DELETE,
            "/v1/tenants/acme",
            Some(&n.admin),
            Bytes::new(),
        )
        .await
    };
    let r = remove().await;
    assert_eq!((r.status, code(&r).as_str()), (409, "conflict"));
    assert!(body(&r).contains("2 function"), "{}", body(&r));
    for f in ["one", "two"] {
        let r = with_token(
            addr,
            Method::DELETE,
            &format!("/v1/functions/{f}"),
            Some(&dev),
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(remove().await.status, 200);
    assert_eq!(remove().await.status, 404, "removed already");
    assert_eq!(deploy("three", "").await.status, 401, "its tokens are dead");
    // Created again, it starts empty, and the old tokens stay dead.
    let r = create_tenant(addr, &n.admin, r#"{"name":"acme"}"#).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(json(&r)["spec"]["quotas"]["max_functions"], 1000);
    assert_eq!(deploy("three", "").await.status, 401);
    let r = with_token(
        addr,
        Method::GET,
        "/v1/tokens?tenant=acme",
        Some(&n.admin),
        Bytes::new(),
    )
    .await;
    let tokens = json(&r);
    assert_eq!(tokens.as_array().unwrap().len(), 1);
    assert!(tokens[0]["revoked_at_ms"].is_u64());
    n.node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tenant_requests_get_typed_errors_and_change_nothing() {
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    assert_eq!(
        create_tenant(addr, &n.admin, r#"{"name":"acme"}"#)
            .await
            .status,
        201
    );
    let cases: [(Method, &str, &str, u16, &str); 11] = [
        (
            Method::POST,
            "/v1/tenants",
            r#"{"name":"acme"}"#,
            409,
            "conflict",
        ),
        (Method::POST, "/v1/tenants", r#"{}"#, 400, "invalid_request"),
        (
            Method::POST,
            "/v1/tenants",
            r#"{"name":"Not Valid"}"#,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/tenants",
            r#"{"name":"x","weight":0}"#,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/tenants",
            r#"{"name":"x","sla":"gold"}"#,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/tenants",
            r#"{"name":"x","quotas":{"max_concurrent":0}}"#,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/tenants",
            r#"{"name":"x","quotas":{"max_cpus":4}}"#,
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/tenants/nobody",
            r#"{"weight":2}"#,
            404,
            "not_found",
        ),
        (
            Method::PUT,
            "/v1/tenants/acme",
            r#"{"name":"other"}"#,
            400,
            "invalid_request",
        ),
        (Method::DELETE, "/v1/tenants/default", "", 409, "conflict"),
        (
            Method::PATCH,
            "/v1/tenants/acme",
            "",
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, payload, status, want) in cases {
        let r = with_token(
            addr,
            method.clone(),
            path,
            Some(&n.admin),
            payload.to_owned(),
        )
        .await;
        assert_eq!(
            (r.status, code(&r).as_str()),
            (status, want),
            "{method} {path} {payload}: {}",
            body(&r)
        );
    }
    let r = with_token(
        addr,
        Method::GET,
        "/v1/tenants",
        Some(&n.admin),
        Bytes::new(),
    )
    .await;
    assert_eq!(
        names(&r),
        ["acme", "default"],
        "nothing was created by a bad request"
    );
    let r = with_token(
        addr,
        Method::GET,
        "/v1/tenants/acme",
        Some(&n.admin),
        Bytes::new(),
    )
    .await;
    assert_eq!(
        json(&r)["version"],
        1,
        "nothing was changed by a bad request"
    );
    n.node.shutdown().await.unwrap();
}

/// `tern tenant create|list|show|update|remove` and `tern token create --tenant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_tenants_and_their_tokens() {
    let n = node_with_tokens().await;
    let server = n.node.addr().to_string();
    // Run from an empty directory, so no ./tern-data/admin.token is picked up.
    let cwd = tempfile::tempdir().unwrap();
    let tern = |token: &str, args: &[&str]| {
        run_tern(
            tern_command()
                .current_dir(cwd.path())
                .env("TERN_TOKEN", token)
                .env("TERN_SERVER", &server)
                .args(args),
        )
    };
    let admin = n.admin.as_str();
    let (ok, out, err) = tern(
        admin,
        &[
            "tenant",
            "create",
            "acme",
            "--weight",
            "2",
            "--sla",
            "latency-critical",
            "--quota",
            "max_functions=3",
            "-o",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["spec"]["sla"], "latency-critical");
    assert_eq!(created["spec"]["quotas"]["max_functions"], 3);
    let (ok, _, err) = tern(admin, &["tenant", "create", "acme"]);
    assert!(!ok);
    assert!(err.contains("conflict (409)"), "{err}");
    let (ok, _, err) = tern(
        admin,
        &["tenant", "create", "x", "--quota", "max_functions"],
    );
    assert!(!ok);
    assert!(err.contains("NAME=VALUE"), "{err}");

    let (ok, out, err) = tern(
        admin,
        &["token", "create", "--role", "developer", "--tenant", "acme"],
    );
    assert!(ok, "{err}");
    let token: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dev = token["token"].as_str().unwrap().to_owned();
    let wasm_path = functions_dir().join("echo.wasm");
    let (ok, out, err) = tern(&dev, &["deploy", "work", wasm_path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("deployed acme.work version 1: 32 KiB, 128 MiB, 10000 ms, ")
            && out.lines().count() == 1,
        "{out}"
    );
    let (ok, out, err) = tern(&dev, &["invoke", "work", "--data", "hello acme"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "hello acme");

    let (ok, out, err) = tern(&dev, &["tenant", "show", "acme"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().next(),
        Some("tenant acme (version 1), weight 2, sla latency-critical"),
        "{out}"
    );
    let functions_row = out.lines().find(|l| l.starts_with("max_functions "));
    assert_eq!(
        functions_row.map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["max_functions", "3", "1"]),
        "limit 3, one used: {out}"
    );
    let (ok, out, err) = tern(&dev, &["tenant", "show", "acme", "-o", "json"]);
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["usage"]["functions"], 1);
    let (ok, out, err) = tern(
        admin,
        &["tenant", "update", "acme", "--weight", "7", "-o", "json"],
    );
    assert!(ok, "{err}");
    let updated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &updated["spec"]["weight"],
            &updated["spec"]["quotas"]["max_functions"]
        ),
        (&7.into(), &3.into())
    );
    let (ok, out, err) = tern(admin, &["tenant", "list", "-o", "json"]);
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (ok, out, err) = tern(admin, &["tenant", "list"]);
    assert!(ok, "{err}");
    let acme = out
        .lines()
        .find(|l| l.starts_with("acme"))
        .unwrap_or_default();
    assert_eq!(
        acme.split_whitespace().take(6).collect::<Vec<_>>(),
        ["acme", "7", "latency-critical", "3", "250", "2000"],
        "{out}"
    );
    let (ok, _, err) = tern(admin, &["tenant", "remove", "acme"]);
    assert!(!ok);
    assert!(err.contains("conflict (409)"), "{err}");
    let (ok, _, err) = tern(&dev, &["remove", "work"]);
    assert!(ok, "{err}");
    let (ok, _, err) = tern(admin, &["tenant", "remove", "acme"]);
    assert!(ok, "{err}");
    let (ok, out, err) = tern(admin, &["token", "list", "--tenant", "acme", "-o", "json"]);
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(listed[0]["revoked_at_ms"].is_u64(), "{out}");
    n.node.shutdown().await.unwrap();
}

/// One tenant floods a function that never returns; its instance slots stay within its
/// `max_concurrent`, its extra calls are refused (429) instead of queueing without bound, and
/// another tenant's short-deadline calls keep finding free slots: none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_is_held_to_its_cap_and_another_tenants_calls_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_instances = 6;
    let node = start(cfg).await;
    let addr = node.addr();
    let r = request(
        addr,
        Method::POST,
        "/v1/tenants",
        r#"{"name":"attacker","quotas":{"max_concurrent":2,"max_queued":3}}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let r = request(addr, Method::POST, "/v1/tenants", r#"{"name":"victim"}"#).await;
    assert_eq!(r.status, 201);
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/attacker.loop?timeout_ms=1500",
        wasm("loop"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", body(&r));
    // The victim's calls must start within 300 ms: with the attacker holding every slot
    // they could not.
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/victim.echo?timeout_ms=300",
        wasm("echo"),
    )
    .await;
    assert_eq!(r.status, 201);

    let flood: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { invoke(addr, "attacker.loop", "").await }))
        .collect();
    let attacker: tern_tenancy::TenantName = "attacker".parse().unwrap();
    let runtime = node.app().services().runtime.clone();
    let mut most_running = 0;
    let mut victim_failures = Vec::new();
    let mut most_running_scraped = 0.0f64;
    for i in 0..30 {
        if let Some((running, waiting)) = runtime.tenant_slots(&attacker) {
            most_running = most_running.max(running);
            assert!(waiting <= 3, "the attacker's queue is bounded: {waiting}");
        }
        let scraped = metric_labelled(addr, "tern_tenant_running", r#"tenant="attacker""#).await;
        most_running_scraped = most_running_scraped.max(scraped);
        let r = invoke(addr, "victim.echo", format!("call {i}")).await;
        if r.status != 200 {
            victim_failures.push((r.status, body(&r)));
        }
    }
    let mut statuses = Vec::new();
    for f in flood {
        let r = f.await.unwrap();
        statuses.push(r.status);
        assert!(
            r.status == 504 || r.status == 429,
            "the attacker gets timeouts and refusals, never a guest fault: {} {}",
            r.status,
            body(&r)
        );
    }
    assert!(victim_failures.is_empty(), "{victim_failures:?}");
    assert!(
        most_running >= 1,
        "the flood was running while the victim called"
    );
    assert!(
        most_running <= 2,
        "held to max_concurrent = 2: {most_running}"
    );
    assert!(
        (1.0..=2.0).contains(&most_running_scraped),
        "/metrics shows the attacker's slots: {most_running_scraped}"
    );
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 15,
        "beyond 2 running and 3 queued the attacker is refused: {statuses:?}"
    );
    node.shutdown().await.unwrap();
}

/// A tenant's asynchronous results are held to its stored-result quotas: past
/// `max_stored_results` a call is refused with 429 `quota_exceeded` naming the quota, a result
/// whose output would pass `max_stored_result_bytes` is not kept (the invocation fails and
/// says why), and another tenant's calls are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_stored_results_are_held_to_its_quotas() {
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    for (name, quotas) in [
        ("acme", r#"{"max_stored_results":2}"#),
        ("globex", r#"{"max_stored_result_bytes":100000}"#),
    ] {
        let r = create_tenant(
            addr,
            &n.admin,
            &format!(r#"{{"name":"{name}","quotas":{quotas}}}"#),
        )
        .await;
        assert_eq!(r.status, 201, "{}", body(&r));
    }
    let (acme, _) = new_token_for(addr, &n.admin, "developer", "acme").await;
    let (globex, _) = new_token_for(addr, &n.admin, "developer", "globex").await;
    for (token, function, module) in [
        (&acme, "work", "echo"),
        (&globex, "work", "echo"),
        (&globex, "big", "bigoutput"),
    ] {
        let path = format!("/v1/functions/{function}");
        let r = with_token(addr, Method::PUT, &path, Some(token), wasm(module)).await;
        assert_eq!(r.status, 201, "{}", body(&r));
    }
    let start = |token: &str, function: &str, input: Bytes| {
        let (token, path) = (
            token.to_owned(),
            format!("/v1/functions/{function}/invoke?mode=async"),
        );
        async move { with_token(addr, Method::POST, &path, Some(&token), input).await }
    };
    let finished = |token: &str, id: &str| {
        let (token, path) = (token.to_owned(), format!("/v1/invocations/{id}"));
        async move {
            crate::cluster::eventually("finished", std::time::Duration::from_secs(30), || async {
                let v =
                    json(&with_token(addr, Method::GET, &path, Some(&token), Bytes::new()).await);
                (v["status"] != "pending").then_some(v)
            })
            .await
        }
    };

    // Count: two kept, the third refused, the default tenant unaffected.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let r = start(&acme, "work", Bytes::from_static(b"hi")).await;
        assert_eq!(r.status, 202, "{}", body(&r));
        kept.push(json(&r)["id"].as_str().unwrap().to_owned());
    }
    let r = start(&acme, "work", Bytes::from_static(b"hi")).await;
    assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    assert!(
        body(&r).contains("tenant acme") && body(&r).contains("max_stored_results = 2"),
        "{}",
        body(&r)
    );
    // Before any expiry sweep has seen a finished result: a whole retention period (3,600 s
    // by default) plus one sweep interval (60 s); less only if a sweep ran since.
    let before: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3600..=3660).contains(&before), "{before}");
    // Once a sweep has seen acme's finished results: until the oldest expires, plus the
    // interval; the results finished moments ago, so just under 3,660 s.
    for id in &kept {
        finished(&acme, id).await;
    }
    n.node.app().expire_results().unwrap();
    let r = start(&acme, "work", Bytes::from_static(b"hi")).await;
    assert_eq!(r.status, 429);
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3630..=3660).contains(&after), "{after}");
    assert!(body(&r).contains("oldest in about"), "{}", body(&r));
    let r = start(&n.admin, "echo", Bytes::from_static(b"hi")).await;
    assert_eq!(r.status, 202, "{}", body(&r));
    // The refusal and the usage show per tenant on /metrics.
    let text = admin_metrics_text(&n).await;
    for line in [
        "tern_tenant_invocations_total{tenant=\"acme\",outcome=\"quota_exceeded\"} 2\n",
        "tern_tenant_stored_results{tenant=\"acme\"} 2\n",
    ] {
        assert!(text.contains(line), "{line} in /metrics");
    }

    // Bytes: an output past the quota is not kept; one within it is, and then counts.
    let r = start(&globex, "big", Bytes::from_static(b"200000")).await;
    assert_eq!(r.status, 202, "{}", body(&r));
    let v = finished(&globex, json(&r)["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "quota_exceeded", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_stored_result_bytes = 100000"),
        "{v}"
    );
    assert!(v["output"].is_null(), "{v}");
    let r = start(&globex, "big", Bytes::from_static(b"50000")).await;
    let v = finished(&globex, json(&r)["id"].as_str().unwrap()).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    let r = start(&globex, "work", Bytes::from(vec![b'x'; 60_000])).await;
    assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    assert!(body(&r).contains("max_stored_result_bytes"), "{}", body(&r));
    assert!(
        r.header("retry-after").is_some(),
        "fits once results expire"
    );
    let r = start(&globex, "work", Bytes::from(vec![b'x'; 100_001])).await;
    assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    assert!(
        r.header("retry-after").is_none(),
        "larger than the whole quota: waiting does not help"
    );
    let r = start(&globex, "work", Bytes::from(vec![b'x'; 10_000])).await;
    assert_eq!(r.status, 202, "still room for a smaller one: {}", body(&r));
}

/// Concurrent asynchronous calls cannot all pass a stored-result check that only some of them
/// fit: with `max_stored_results = 5` and 40 calls at once, exactly 5 are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_async_calls_get_exactly_the_stored_result_quota() {
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    let dev = acme_with_work(&n, r#"{"max_stored_results":5}"#).await;
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let dev = dev.clone();
            tokio::spawn(async move {
                with_token(
                    addr,
                    Method::POST,
                    "/v1/functions/work/invoke?mode=async",
                    Some(&dev),
                    format!("call {i}"),
                )
                .await
                .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((accepted, refused), (5, 35), "{statuses:?}");
}

/// A tenant's request rate: calls beyond `rate_burst` at once, or `max_rate_per_s` on average,
/// get 429 `quota_exceeded` naming the rate, with `Retry-After`, before their body is read;
/// other tenants are not slowed; a raised quota applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_other_tenants_do_not() {
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    let acme = acme_with_work(&n, r#"{"max_rate_per_s":1,"rate_burst":3}"#).await;
    let r = with_token(addr, Method::GET, "/v1/tenants/acme", Some(&n.admin), "").await;
    assert_eq!(json(&r)["spec"]["quotas"]["max_rate_per_s"], 1);
    let call = |token: &str, path: &str| {
        let (token, path) = (token.to_owned(), path.to_owned());
        async move { with_token(addr, Method::POST, &path, Some(&token), "hi").await }
    };

    // The burst, then refused: 1 a second refills one call every second.
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let r = call(&acme, "/v1/functions/work/invoke").await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    let r = call(&acme, "/v1/functions/work/invoke").await;
    let checked_edge = started.elapsed() < std::time::Duration::from_millis(600);
    if checked_edge {
        assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(
            body(&r).contains("tenant acme: rate quota exceeded"),
            "{}",
            body(&r)
        );
        // Async calls are charged the same way, before anything is journaled.
        let r = call(&acme, "/v1/functions/work/invoke?mode=async").await;
        assert_eq!((r.status, code(&r).as_str()), (429, "quota_exceeded"));
    } else {
        eprintln!("the machine was too slow to check the burst edge (a refill came first)");
    }
    // Another tenant (default, no rate quota) is not held back.
    for _ in 0..20 {
        let r = call(&n.admin, "/v1/functions/echo/invoke").await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    // After a refill interval, acme's calls fit again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = call(&acme, "/v1/functions/work/invoke").await;
    assert_eq!(r.status, 200, "{}", body(&r));

    let text = admin_metrics_text(&n).await;
    let refused = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "tern_tenant_invocations_total{tenant=\"acme\",outcome=\"quota_exceeded\"} ",
            )
        })
        .map(|v| v.parse::<u64>().unwrap())
        .unwrap_or(0);
    if checked_edge {
        assert_eq!(refused, 2, "both refusals counted for acme");
    }

    // Raised: 50 calls in a row fit.
    let r = update_acme(&n, r#"{"quotas":{"max_rate_per_s":1000,"rate_burst":100}}"#).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    for _ in 0..50 {
        let r = call(&acme, "/v1/functions/work/invoke").await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    // Usage can be read against the quotas on /metrics: the record's values, and this
    // node's part (alone, the whole); `default` has no limits, so no lines.
    let text = admin_metrics_text(&n).await;
    for line in [
        "tern_tenant_quota{tenant=\"acme\",quota=\"max_rate_per_s\"} 1000\n",
        "tern_tenant_quota{tenant=\"acme\",quota=\"rate_burst\"} 100\n",
        "tern_tenant_quota{tenant=\"acme\",quota=\"max_concurrent\"} 250\n",
        "tern_tenant_node_part{tenant=\"acme\",quota=\"max_rate_per_s\"} 1000\n",
        "tern_tenant_node_part{tenant=\"acme\",quota=\"max_concurrent\"} 250\n",
    ] {
        assert!(text.contains(line), "{line} in /metrics");
    }
    assert!(!text.contains("tern_tenant_quota{tenant=\"default\""));
    // The memory budget is per node, held to a quarter of the node's budget
    // (`tenant_memory_percent`), at least one largest guest (512 MiB).
    let budget_mb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tern_memory_budget_mb "))
        .unwrap()
        .parse()
        .unwrap();
    let quota: u64 = (250 * 128) << 20;
    let cap = (budget_mb << 20) / 100 * 25;
    let want = quota.min(cap.max(512 << 20));
    let line =
        format!("tern_tenant_node_part{{tenant=\"acme\",quota=\"memory_budget_bytes\"}} {want}\n");
    assert!(text.contains(&line), "{line} in /metrics");
    // A rate of zero could never admit anything: refused as a bad quota.
    let r = update_acme(&n, r#"{"quotas":{"max_rate_per_s":0}}"#).await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert!(body(&r).contains("rate"), "{}", body(&r));
}

/// A tenant removed on another member that had not yet seen one of its functions: when the
/// removal arrives here, the function goes with it (a tombstone made here, so it
/// replicates). A function whose tenant is merely unknown stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_tenant_removal_takes_the_tenants_remaining_functions_with_it() {
    use tern_link::LocalNode;
    let n = node_with_tokens().await;
    let addr = n.node.addr();
    acme_with_work(&n, "{}").await;
    let app = n.node.app();
    let work: tern_wire::FunctionName = "acme.work".parse().unwrap();
    let acme: tern_tenancy::TenantName = "acme".parse().unwrap();
    // A function of a tenant this node has not heard of yet is left alone.
    let mut stray = app.store.function(&work).unwrap().unwrap();
    stray.info.name = "later.f".parse().unwrap();
    stray.origin = "elsewhere".into();
    let peer: tern_cluster::NodeName = "elsewhere".parse().unwrap();
    assert!(app.apply_entry(stray, &peer).await.unwrap());
    // The removal as another member made it.
    let live = app
        .tenants
        .entries()
        .into_iter()
        .find(|e| e.name() == &acme)
        .unwrap();
    let tombstone = live.remove(live.tenant.updated_at_ms + 1, "elsewhere");
    app.apply_tenancy(tern_wire::peer::TenancyRecords {
        tenants: vec![tombstone],
        tokens: Vec::new(),
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let r = with_token(
            addr,
            Method::GET,
            "/v1/functions/acme.work",
            Some(&n.admin),
            "",
        )
        .await;
        if r.status == 404 {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "acme.work still there: {}",
            body(&r)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let entry = app.store.function(&work).unwrap().unwrap();
    assert!(entry.removed, "a tombstone, not a deleted record");
    assert_eq!(
        entry.origin, app.config.node_name,
        "made here, so it replicates"
    );
    let later = app
        .store
        .function(&"later.f".parse().unwrap())
        .unwrap()
        .unwrap();
    assert!(
        !later.removed,
        "a tenant not yet known is not a removed one"
    );
    n.node.shutdown().await.unwrap();
}
