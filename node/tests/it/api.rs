//! The HTTP API end to end: deploy, list, inspect, invoke (sync, async, map), remove, errors.

use bytes::Bytes;
use hyper::Method;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_list_inspect_invoke_remove() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();

    // The examples were deployed at start.
    let list = json(&request(addr, Method::GET, "/v1/functions", Bytes::new()).await);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "matmul-json"]);

    let resp = deploy(addr, "trap", "?timeout_ms=500&memory_mb=64").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let info = json(&resp);
    assert_eq!(info["name"], "trap");
    assert_eq!(info["version"], 1);
    assert_eq!(info["timeout_ms"], 500);
    assert_eq!(info["memory_mb"], 64);
    assert_eq!(info["hash"].as_str().unwrap().len(), 64);
    // Redeploying bumps the version and keeps the content hash.
    let again = json(&deploy(addr, "trap", "").await);
    assert_eq!(again["version"], 2);
    assert_eq!(again["hash"], info["hash"]);

    let got = json(&request(addr, Method::GET, "/v1/functions/trap", Bytes::new()).await);
    assert_eq!(got["version"], 2);

    let resp = invoke(addr, "echo", "hello tern").await;
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"hello tern");
    assert_eq!(resp.header("x-tern-cold-start"), Some("false"));
    assert_eq!(resp.header("x-tern-node"), Some("test-node"));
    assert!(
        resp.header("x-tern-duration-us")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(resp.header("x-tern-request-id").is_some());

    let resp = request(addr, Method::DELETE, "/v1/functions/trap", Bytes::new()).await;
    assert_eq!(resp.status, 200);
    let resp = invoke(addr, "trap", "").await;
    assert_eq!((resp.status, code(&resp).as_str()), (404, "not_found"));
    let resp = request(addr, Method::DELETE, "/v1/functions/trap", Bytes::new()).await;
    assert_eq!(resp.status, 404);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_json_runs_the_papers_workload() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let req = serde_json::json!({"task_id": "t-7", "n": 32, "seed": 3, "op": "matmul", "pad": "x".repeat(900)});
    let body = serde_json::to_vec(&req).unwrap();
    assert!(body.len() > 900);
    let resp = invoke(node.addr(), "matmul-json", body.clone()).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let out = json(&resp);
    assert_eq!(out["task_id"], "t-7");
    assert_eq!(out["n"], 32);
    assert_eq!(out["node"], "test-node");
    assert_eq!(out["request_id"], resp.header("x-tern-request-id").unwrap());
    assert!(out["checksum"].is_number());
    // Deterministic: the same request gives the same checksum; another seed does not.
    let again = json(&invoke(node.addr(), "matmul-json", body).await);
    assert_eq!(again["checksum"], out["checksum"]);
    let other = json(&invoke(node.addr(), "matmul-json", r#"{"n":32,"seed":4}"#).await);
    assert_ne!(other["checksum"], out["checksum"]);
    // Branching on input: an unknown op is the guest's own error (exit 2).
    let bad = invoke(node.addr(), "matmul-json", r#"{"op":"invert"}"#).await;
    assert_eq!((bad.status, code(&bad).as_str()), (500, "guest_error"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_splits_runs_in_parallel_and_joins_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let items: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"i": i, "s": "x".repeat(i % 7)}))
        .collect();
    let input = serde_json::to_vec(&items).unwrap();
    let resp = request(addr, Method::POST, "/v1/functions/echo/invoke?map=1", input).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(json(&resp), serde_json::Value::Array(items));
    let meus: usize = resp.header("x-tern-meus").unwrap().parse().unwrap();
    assert!(
        meus >= 2,
        "a 100-item map should run as several units, ran {meus}"
    );

    let tasks: Vec<serde_json::Value> = (0..6)
        .map(|i| serde_json::json!({"task_id": i, "n": 16, "seed": i}))
        .collect();
    let resp = request(
        addr,
        Method::POST,
        "/v1/functions/matmul-json/invoke?map=1",
        serde_json::to_vec(&tasks).unwrap(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let out = json(&resp);
    let ids: Vec<i64> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 4, 5]);

    let resp = request(addr, Method::POST, "/v1/functions/echo/invoke?map=1", "[]").await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"[]"[..]));
    let resp = request(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?map=1",
        r#"{"not":"an array"}"#,
    )
    .await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (400, "invalid_request")
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_invocations_are_journaled_answered_and_have_unguessable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = request(
        addr,
        Method::POST,
        "/v1/functions/echo/invoke?mode=async",
        "later",
    )
    .await;
    assert_eq!(resp.status, 202);
    let id = json(&resp)["id"].as_str().unwrap().to_owned();
    assert_eq!(
        resp.header("location").unwrap(),
        format!("/v1/invocations/{id}")
    );
    let status = wait_finished(addr, &id).await;
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["result"], "later");
    assert_eq!(status["attempts"], 1);
    let first_id = id;

    // A failing async invocation records its typed error.
    deploy(addr, "trap", "").await;
    let id = json(
        &request(
            addr,
            Method::POST,
            "/v1/functions/trap/invoke?mode=async",
            "",
        )
        .await,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = wait_finished(addr, &id).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"]["code"], "guest_trap");

    // Ids are 128 random bits: 32 hex digits, and ids taken one after another share no
    // prefix to walk from.
    let ids: Vec<String> = {
        let mut ids = vec![first_id.clone(), id.clone()];
        for _ in 0..6 {
            let r = request(
                addr,
                Method::POST,
                "/v1/functions/echo/invoke?mode=async",
                "x",
            )
            .await;
            assert_eq!(r.status, 202);
            ids.push(json(&r)["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    let common_prefix =
        |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let longest = ids
        .windows(2)
        .map(|w| common_prefix(&w[0], &w[1]))
        .max()
        .unwrap();
    assert!(
        longest < 8,
        "consecutive ids share {longest} leading digits: {ids:?}"
    );

    let resp = request(
        addr,
        Method::GET,
        "/v1/invocations/no-such-id",
        Bytes::new(),
    )
    .await;
    assert_eq!((resp.status, code(&resp).as_str()), (404, "not_found"));
    let resp = request(addr, Method::GET, "/v1/invocations/..%2F..", Bytes::new()).await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (400, "invalid_request")
    );
    let resp = request(
        addr,
        Method::POST,
        "/v1/functions/nope/invoke?mode=async",
        "x",
    )
    .await;
    assert_eq!((resp.status, code(&resp).as_str()), (404, "not_found"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_are_typed_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_body_bytes = 1024;
    let node = start(cfg).await;
    let addr = node.addr();
    for (method, path, status, want) in [
        (Method::GET, "/nowhere", 404, "not_found"),
        (Method::POST, "/v1/functions/nope/invoke", 404, "not_found"),
        (
            Method::PATCH,
            "/v1/functions/echo",
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/v1/functions/Bad%20Name/invoke",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/functions/echo/invoke?mode=sideways",
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/functions/echo/invoke?map=maybe",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/functions/echo?timeout_ms=-1",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/functions/echo?timeout_ms=0",
            400,
            "invalid_request",
        ),
        (
            Method::PUT,
            "/v1/functions/echo?memory_mb=100000",
            400,
            "invalid_request",
        ),
    ] {
        let body = if method == Method::PUT {
            wasm("echo")
        } else {
            Bytes::new()
        };
        let resp = request(addr, method.clone(), path, body).await;
        assert_eq!(
            (resp.status, code(&resp)),
            (status, want.to_owned()),
            "{method} {path}"
        );
        assert_eq!(resp.header("content-type"), Some("application/json"));
    }
    let resp = invoke(addr, "echo", vec![b'x'; 1025]).await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (413, "payload_too_large")
    );
    let resp = invoke(addr, "echo", vec![b'x'; 1024]).await;
    assert_eq!(resp.status, 200);
    let resp = request(addr, Method::GET, "/healthz", Bytes::new()).await;
    assert_eq!(resp.status, 200);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_invocations_reuse_and_eq3_terms() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    for _ in 0..5 {
        assert_eq!(invoke(addr, "echo", "x").await.status, 200);
    }
    invoke(addr, "nope", "x").await;
    let text = metrics_text(addr, None).await;
    for needle in [
        "tern_invocations_total{function=\"echo\",outcome=\"ok\"} 5",
        "tern_meus_total{function=\"echo\"} 5",
        "tern_module_reuse_total{function=\"echo\"} 5",
        "tern_cold_starts_total{function=\"echo\"} 0",
        "tern_request_errors_total{code=\"not_found\"} 1",
        "tern_reuse_hit_ratio{node=\"test-node\"} 1",
        "tern_meu_instantiate_seconds_count{function=\"echo\"} 5",
        "tern_meu_reuse_seconds_count{function=\"echo\"} 5",
        "tern_invocation_duration_seconds_count{function=\"echo\"} 5",
        "tern_isolation_mode{mode=\"in-process\"} 1",
        "tern_memory_profile{profile=\"guard-pages\"} 1",
        "tern_runtime_profile{profile=\"optimised\"} 1",
        "tern_queue_in_flight 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The paper's Eq. 8 (requests per joule): energy is counted (this VM has no RAPL: the CPU-time model) and so are
    // requests per joule.
    assert!(metric(addr, "tern_energy_joules_total").await > 0.0);
    assert!(metric(addr, "tern_requests_per_joule").await > 0.0);
    node.shutdown().await.unwrap();
}

/// The example echo's initial memory covers what it uses, so it stays on the fast path (no
/// page-protection changes per call); matmul-json allocates matrices beyond its initial memory
/// and is counted growing on every call: each call is a fresh instance at the module's initial
/// size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_memory_grows_are_counted_per_function_and_echo_never_grows() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    for _ in 0..3 {
        assert_eq!(invoke(addr, "echo", vec![b'x'; 1024]).await.status, 200);
        let r = invoke(addr, "matmul-json", r#"{"n":64,"seed":1}"#).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let name = "tern_guest_memory_grows_total";
    assert_eq!(metric_labelled(addr, name, r#"function="echo""#).await, 0.0);
    let matmul = metric_labelled(addr, name, r#"function="matmul-json""#).await;
    assert!(matmul >= 3.0, "matmul-json grew {matmul} times in 3 calls");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_module_is_a_cold_start_then_warm_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_loaded_modules = 1;
    let node = start(cfg).await;
    let addr = node.addr();
    // Only one module stays loaded: alternating functions forces loads (T_load, cold).
    let r = invoke(addr, "echo", "a").await;
    let first = r.header("x-tern-cold-start").unwrap().to_owned();
    let r = invoke(addr, "matmul-json", r#"{"n":2}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tern-cold-start"), Some("true"));
    let r = invoke(addr, "matmul-json", r#"{"n":2}"#).await;
    assert_eq!(r.header("x-tern-cold-start"), Some("false"));
    let r = invoke(addr, "echo", "a").await;
    assert_eq!(r.header("x-tern-cold-start"), Some("true"));
    assert_eq!(&r.body[..], b"a");
    assert_eq!(
        first, "true",
        "matmul-json was deployed last, so echo was not loaded"
    );
    assert!(metric(addr, "tern_cold_starts_total").await >= 3.0);
    assert!(metric(addr, "tern_meu_load_seconds_count").await >= 3.0);
    node.shutdown().await.unwrap();
}

/// The CLI reads like its peers: tables by default, the node's JSON with `-o json`, `tern
/// status`, completion scripts, and one-line errors with a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_tables_json_status_completions_and_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let server = node.addr().to_string();
    let tern = |args: &[&str]| tern_at(&server, args);
    let (ok, table, err) = tern(&["list"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("NAME "), "{table}");
    let echo: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(&echo[..5], ["echo", "1", "128", "MiB", "10000"], "{table}");
    let (ok, json, _) = tern(&["list", "-o", "json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(list.as_array().unwrap().iter().any(|f| f["name"] == "echo"));
    let (ok, status, err) = tern(&["status"]);
    assert!(ok, "{err}");
    assert!(
        status.starts_with("node test-node (standard), tern ")
            && status.contains("isolation in-process, 2 functions")
            && status.ends_with("not in a cluster\n"),
        "{status}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("_tern()"));
    // A deploy with limits asks for each of them and prints what the node set.
    let echo_wasm = functions_dir().join("echo.wasm");
    let (ok, deployed, err) = tern(&[
        "deploy",
        "capped",
        echo_wasm.to_str().unwrap(),
        "--timeout-ms",
        "500",
        "--memory-mb",
        "64",
        "--max-instances",
        "3",
    ]);
    assert!(ok, "{err}");
    assert!(
        deployed
            .starts_with("deployed capped version 1: 32 KiB, 64 MiB, 500 ms, max instances 3, "),
        "{deployed}"
    );
    // An asynchronous call prints its id and how to wait for it; the id reads the result.
    let (ok, accepted, err) = tern(&["invoke", "echo", "--async", "--data", "later"]);
    assert!(ok, "{err}");
    let id = accepted
        .strip_prefix("accepted: ")
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("{accepted}"))
        .to_owned();
    assert!(
        accepted.contains(&format!("tern result {id} --wait")),
        "{accepted}"
    );
    let (ok, result, err) = tern(&["result", &id, "--wait"]);
    assert!(ok, "{err}");
    assert!(
        result
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["output", "later"]),
        "{result}"
    );
    let (ok, json_accept, err) = tern(&["invoke", "echo", "--async", "--data", "x", "-o", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json_accept).unwrap();
    assert!(v["id"].is_string(), "{json_accept}");
    let (ok, _, err) = tern(&["invoke", "nope", "--data", "x"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: not_found (404): ") && err.contains("; hint: `tern list`"),
        "{err}"
    );
    node.shutdown().await.unwrap();
}
