//! `wasi:http/proxy` components end to end: deployed with the same `PUT` as modules, called at
//! `/fn/{name}/{path…}` with their own method, path, headers and status, invoked plainly
//! (sync and async), and refused with typed errors where they do not fit.

use bytes::Bytes;
use hyper::Method;
use tern_bench::Response;

use crate::support::*;

async fn deploy_component(addr: std::net::SocketAddr, name: &str, file: &str) -> Response {
    request(
        addr,
        Method::PUT,
        &format!("/v1/functions/{name}"),
        component(file),
    )
    .await
}

async fn call(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Response {
    tern_bench::request_once(addr, method, path, headers, Bytes::from_static(body))
        .await
        .unwrap()
}

/// POSTs `queued` asynchronously (`headers` must ask for it), expects 202, and returns the
/// finished invocation once it succeeded.
async fn call_async_and_wait(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> serde_json::Value {
    let resp = call(addr, Method::POST, path, headers, b"queued").await;
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    let id = json(&resp)["id"].as_str().unwrap().to_owned();
    let done = wait_finished(addr, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_sees_method_path_query_and_headers_and_sets_status_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "inspect", "inspect").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));

    let resp = call(
        addr,
        Method::PATCH,
        "/fn/inspect/a/b?x=1&y=2",
        &[
            ("x-status", "418"),
            ("x-custom", "teapot"),
            ("authorization", "Bearer not-for-the-guest"),
        ],
        b"abc",
    )
    .await;
    assert_eq!(resp.status, 418, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("x-inspected"), Some("yes"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.header("x-tern-node"), Some("test-node"));
    assert!(resp.header("x-tern-request-id").is_some());
    let seen = json(&resp);
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "x=1&y=2");
    assert_eq!(seen["body_bytes"], 3);
    let headers: Vec<(String, String)> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_owned(),
                h[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        headers.contains(&("x-custom".into(), "teapot".into())),
        "{headers:?}"
    );
    // The caller's Tern token stays with the node.
    assert!(
        headers.iter().all(|(n, _)| n != "authorization"),
        "{headers:?}"
    );

    // Asynchronously (the query is the component's, so the mode is a header): 202, and the
    // stored result is the response.
    let done = call_async_and_wait(
        addr,
        "/fn/inspect/later?z=9",
        &[("x-tern-mode", "async"), ("x-status", "202")],
    )
    .await;
    assert_eq!(done["response"]["status"], 202, "{done}");
    assert!(done["result"].is_null(), "{done}");
    assert!(
        done["response"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-inspected" && h[1] == "yes"),
        "{done}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(done["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(stored["path"], "/later");
    assert_eq!(stored["query"], "z=9");
    assert_eq!(stored["body_bytes"], 6);
    let resp = call(
        addr,
        Method::GET,
        "/fn/inspect",
        &[("x-tern-mode", "later")],
        b"",
    )
    .await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (400, "invalid_request")
    );

    // The bare route is the component's `/`.
    let resp = call(addr, Method::GET, "/fn/inspect", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(json(&resp)["path"], "/");
    assert_eq!(json(&resp)["method"], "GET");

    // Its stderr went to the function's logs.
    let logs = json(
        &request(
            addr,
            Method::GET,
            "/v1/functions/inspect/logs",
            Bytes::new(),
        )
        .await,
    );
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    assert!(lines.contains(&"inspect: PATCH /a/b"), "{logs}");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_invoked_plainly_gets_the_input_as_a_post_body_sync_and_async() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "echo-component", "echo").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));

    let resp = invoke(addr, "echo-component", "hello component").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(&resp.body[..], b"hello component");

    let resp = request(
        addr,
        Method::POST,
        "/v1/functions/echo-component/invoke?mode=async",
        "later",
    )
    .await;
    assert_eq!(resp.status, 202);
    let id = json(&resp)["id"].as_str().unwrap().to_owned();
    let done = wait_finished(addr, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], "later");

    // The same component at its HTTP route, with the same body.
    let resp = call(addr, Method::POST, "/fn/echo-component/", &[], b"routed").await;
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"routed");
    assert_eq!(resp.header("content-length"), Some("6"));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_output_cap_is_output_too_large_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_output_bytes = 1024;
    let node = start(cfg).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "echo-component", "echo").await;
    assert_eq!(resp.status, 201);
    let big: &'static [u8] = Box::leak(vec![b'x'; 200_000].into_boxed_slice());
    let resp = call(addr, Method::POST, "/fn/echo-component", &[], big).await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (502, "output_too_large"),
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    let resp = call(addr, Method::POST, "/fn/echo-component", &[], b"small").await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"small"[..]));

    // Trailers count too: `inspect` lists its headers in its body, so a 600-byte `x-trailer`
    // fits once (in the body) but not twice (body and trailer).
    let resp = deploy_component(addr, "inspect", "inspect").await;
    assert_eq!(resp.status, 201);
    let value = format!("x-big={}", "t".repeat(600));
    let resp = call(
        addr,
        Method::POST,
        "/fn/inspect",
        &[("x-echo", value.as_str())],
        b"",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let resp = call(
        addr,
        Method::POST,
        "/fn/inspect",
        &[("x-trailer", value.as_str())],
        b"",
    )
    .await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (502, "output_too_large"),
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_read_as_it_is_written_and_keeps_the_guest_on_the_fast_lane() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // A 100 ms time slice: this unoptimised build's guest uses well under it, so a move to
    // the slow lane could only come from the guest waiting on the host.
    cfg.epoch_tick_us = 100_000;
    let node = start(cfg).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "echo-component", "echo").await;
    assert_eq!(resp.status, 201);
    // 256 KiB: 64 writes of 4 KiB by the guest, each handed over through a one-chunk channel
    // (more hand-overs than tokio's cooperative budget allows one task poll), well within the
    // guest's first 1 ms slice of CPU.
    let big: &'static [u8] = Box::leak(
        (0..256 << 10)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into_boxed_slice(),
    );
    for _ in 0..5 {
        let resp = call(addr, Method::POST, "/fn/echo-component", &[], big).await;
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert!(resp.body == big, "the body came back changed");
    }
    // Waiting for the reader is not a yield: no guest moved to the slow lane.
    assert_eq!(metric(addr, "tern_slow_lane_moves_total").await, 0.0);
    node.shutdown().await.unwrap();
}

/// A component whose only import is an instance outside WASI 0.2 (with one function,
/// `poke: func()`), and which exports nothing.
fn component_importing(name: &str) -> Vec<u8> {
    let mut c = wasm_encoder::Component::new();
    let mut types = wasm_encoder::ComponentTypeSection::new();
    let mut instance = wasm_encoder::InstanceType::new();
    instance
        .ty()
        .function()
        .params(std::iter::empty::<(&str, wasm_encoder::ComponentValType)>())
        .result(None);
    instance.export("poke", wasm_encoder::ComponentTypeRef::Func(0));
    types.instance(&instance);
    c.section(&types);
    let mut imports = wasm_encoder::ComponentImportSection::new();
    imports.import(name, wasm_encoder::ComponentTypeRef::Instance(0));
    c.section(&imports);
    c.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_outside_the_proxy_world_and_commands_at_the_component_route_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();

    let foreign = component_importing("tern:forbidden/thing@1.0.0");
    let resp = request(addr, Method::PUT, "/v1/functions/foreign", foreign).await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (400, "invalid_module"),
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    let message = json(&resp)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("tern:forbidden/thing"), "{message}");

    let empty = wasm_encoder::Component::new().finish();
    let resp = request(addr, Method::PUT, "/v1/functions/empty", empty).await;
    assert_eq!((resp.status, code(&resp).as_str()), (400, "invalid_module"));
    let message = json(&resp)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("wasi:http/incoming-handler"), "{message}");

    // Nothing was deployed by the refusals.
    let resp = request(addr, Method::GET, "/v1/functions/foreign", Bytes::new()).await;
    assert_eq!(resp.status, 404);

    // `echo` is a preview-1 command: it has no HTTP route.
    let resp = call(addr, Method::GET, "/fn/echo/x", &[], b"").await;
    assert_eq!(
        (resp.status, code(&resp).as_str()),
        (400, "invalid_request"),
        "{}",
        String::from_utf8_lossy(&resp.body)
    );
    let message = json(&resp)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("WASI command"), "{message}");
    let resp = call(addr, Method::GET, "/fn/nope/x", &[], b"").await;
    assert_eq!((resp.status, code(&resp).as_str()), (404, "not_found"));
    // The node serves on.
    let resp = invoke(addr, "echo", "still here").await;
    assert_eq!((resp.status, &resp.body[..]), (200, &b"still here"[..]));
    node.shutdown().await.unwrap();
}

/// A component built by a toolchain nobody here wrote: componentize-py (CPython inside,
/// ~18 MB), built by `scripts/build-python-component.sh` (the test script runs it first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_component_built_by_componentize_py_deploys_and_answers() {
    let path = functions_dir().join("components/hello-python.wasm");
    if !path.exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-python-component.sh"))
            .status()
            .expect("running scripts/build-python-component.sh");
        assert!(status.success(), "scripts/build-python-component.sh failed");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Compiling CPython takes a while on a small, busy machine.
    cfg.compile_timeout_ms = 300_000;
    let node = start(cfg).await;
    let addr = node.addr();
    let resp = request(
        addr,
        Method::PUT,
        "/v1/functions/hello-python?timeout_ms=10000",
        component("hello-python"),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let resp = call(addr, Method::GET, "/fn/hello-python/x?y=1", &[], b"").await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(&resp.body[..], b"hello from python: GET /x?y=1\n");
    node.shutdown().await.unwrap();
}

/// The paper's workload as a component gives the module's result for the same request, over
/// HTTP with its own status for a bad request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_json_as_a_component_answers_as_the_module_does() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "matmul-component", "matmul-json").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let req = serde_json::json!({"task_id": "t-9", "n": 48, "seed": 5, "op": "matmul", "pad": "x".repeat(900)});
    let body: &'static [u8] = Box::leak(serde_json::to_vec(&req).unwrap().into_boxed_slice());
    let module = json(&invoke(addr, "matmul-json", body).await);
    let resp = call(addr, Method::POST, "/fn/matmul-component", &[], body).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let component = json(&resp);
    for key in ["task_id", "n", "checksum", "c00"] {
        assert_eq!(
            component[key], module[key],
            "{key}: {component} vs {module}"
        );
    }
    assert_eq!(component["node"], "test-node");
    assert_eq!(
        component["request_id"],
        resp.header("x-tern-request-id").unwrap()
    );
    let bad = call(
        addr,
        Method::POST,
        "/fn/matmul-component",
        &[],
        br#"{"op":"invert"}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    assert!(json(&bad)["error"].is_string());
    // Invoked plainly, the 400 is the guest's error, naming the status.
    let bad = invoke(addr, "matmul-component", r#"{"op":"invert"}"#).await;
    assert_eq!((bad.status, code(&bad).as_str()), (500, "guest_error"));
    let message = json(&bad)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("HTTP 400"), "{message}");
    node.shutdown().await.unwrap();
}

/// `tern call` reaches a component's route as curl would: method, path with its query,
/// headers and body in; with `-i` the status and headers, a blank line, then the body (and
/// after another blank line the trailers); GET
/// without a body; `--async` prints the invocation id; a function that does not exist is the
/// node's one-line error, and a header without a colon is refused before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_call_sends_method_path_headers_and_body_and_prints_the_components_response() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "inspect", "inspect").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let server = addr.to_string();
    let tern = |args: &[&str]| tern_at(&server, args);
    let (ok, out, err) = tern(&[
        "call",
        "inspect",
        "/a/b?x=1",
        "-X",
        "patch",
        "-H",
        "x-status: 418",
        "-H",
        "x-custom:teapot",
        "-H",
        "x-trailer: x-sum=9",
        "-d",
        "abc",
        "-i",
    ]);
    assert!(ok, "{err}");
    let (head, rest) = out.split_once("\n\n").unwrap();
    // The trailers come after the body, past a blank line.
    let (body, trailers) = rest.split_once("\n\n").unwrap();
    assert_eq!(trailers, "x-sum: 9\n", "{out}");
    assert!(head.starts_with("HTTP 418\n"), "{head}");
    assert!(head.contains("\nx-inspected: yes"), "{head}");
    assert!(head.contains("\nx-tern-node: test-node"), "{head}");
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        (
            &seen["method"],
            &seen["path"],
            &seen["query"],
            &seen["body_bytes"]
        ),
        (
            &serde_json::json!("PATCH"),
            &serde_json::json!("/a/b"),
            &serde_json::json!("x=1"),
            &serde_json::json!(3)
        ),
        "{seen}"
    );
    assert!(
        seen["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["x-custom", "teapot"])),
        "{seen}"
    );
    // No -d: GET at /, and the body alone.
    let (ok, out, err) = tern(&["call", "inspect"]);
    assert!(ok, "{err}");
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&seen["method"], &seen["path"]),
        (&serde_json::json!("GET"), &serde_json::json!("/"))
    );
    let (ok, out, err) = tern(&["call", "inspect", "later", "--async", "-d", "x"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("accepted: "), "{out}");
    let (ok, _, err) = tern(&["call", "nope"]);
    assert!(!ok);
    assert!(err.contains("not_found"), "{err}");
    let (ok, _, err) = tern(&["call", "inspect", "-H", "x-status"]);
    assert!(!ok);
    assert!(err.contains("expected 'Name: value'"), "{err}");
}

/// What a function is shows in the API and the CLI: `kind` is `component` for a
/// `wasi:http/proxy` component and `module` for a WASI command, in the list and for one
/// function, and the last column of `tern list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_tern_list_say_whether_a_function_is_a_module_or_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "inspect", "inspect").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let list = json(&request(addr, Method::GET, "/v1/functions", Bytes::new()).await);
    let kind = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["kind"].clone())
    };
    assert_eq!(
        kind("inspect"),
        Some(serde_json::json!("component")),
        "{list}"
    );
    assert_eq!(kind("echo"), Some(serde_json::json!("module")), "{list}");
    let one = json(&request(addr, Method::GET, "/v1/functions/inspect", Bytes::new()).await);
    assert_eq!(one["kind"], "component", "{one}");
    let (ok, table, err) = tern_at(&addr.to_string(), &["list"]);
    assert!(ok, "{err}");
    assert!(table.lines().next().unwrap().ends_with("KIND"), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{table}"))
            .to_owned()
    };
    assert!(row("inspect").ends_with("component"), "{table}");
    assert!(row("echo").ends_with("module"), "{table}");
}

/// A request over a raw connection (`Connection: close`), and the whole answer as sent.
async fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    String::from_utf8(answer).unwrap()
}

/// A chunked HTTP/1.1 answer: its head, its body, and its trailer section.
fn unchunk(answer: &str) -> (String, String, String) {
    let (head, mut rest) = answer.split_once("\r\n\r\n").unwrap();
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return (head.to_owned(), body, after.to_owned());
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap();
    }
}

/// Trailers both ways through the `/fn/` route: the fields a caller sends after a chunked body
/// reach the component's incoming body, and the trailers the component sets come back after
/// its body to a caller that asked with `TE: trailers` (announced in a `Trailer` header); a
/// caller that did not ask gets the same answer without them. An asynchronous call keeps them
/// with its stored response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_the_component_and_its_trailers_reach_a_caller_that_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "inspect", "inspect").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));

    // Among the trailers asked for, one HTTP does not allow in trailers; among those sent, a
    // token the component must not see.
    let request = |te: &str| {
        format!(
            "POST /fn/inspect/t HTTP/1.1\r\nHost: tern\r\nConnection: close\r\n{te}\
             Transfer-Encoding: chunked\r\nx-trailer: x-sum=9\r\nx-trailer: grpc-status=0\r\n\
             x-trailer: content-type=text/evil\r\n\r\n\
             3\r\nabc\r\n2\r\nde\r\n0\r\nx-checksum: 123\r\nauthorization: Bearer t\r\n\
             x-other: two\r\n\r\n"
        )
    };
    let answer = raw_exchange(addr, &request("TE: trailers\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let (head, body, trailers) = unchunk(&answer);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(head.contains("\r\ntrailer: x-sum, grpc-status"), "{head}");
    assert_eq!(trailers, "x-sum: 9\r\ngrpc-status: 0\r\n\r\n", "{answer}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["body_bytes"], 5, "{seen}");
    assert_eq!(
        seen["trailers"],
        serde_json::json!([["x-checksum", "123"], ["x-other", "two"]]),
        "{seen}"
    );

    // Without `TE: trailers` the caller did not say it can take them: the same body with its
    // length, and no trailers announced or sent.
    let answer = raw_exchange(addr, &request("")).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("\r\ntrailer:"), "{head}");
    assert!(!head.contains("\r\ntransfer-encoding:"), "{head}");
    assert!(
        head.contains(&format!("\r\ncontent-length: {}", body.len())),
        "{answer}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        seen
    );

    // A component that sets none: a plain answer with its length, no `Trailer` header.
    let resp = call(
        addr,
        Method::POST,
        "/fn/inspect",
        &[("te", "trailers")],
        b"x",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(resp.body.len())
    );
    assert!(resp.header("trailer").is_none());
    assert!(resp.trailers.is_empty(), "{:?}", resp.trailers);

    // Asynchronously: the stored response lists them.
    let done = call_async_and_wait(
        addr,
        "/fn/inspect/later",
        &[("x-tern-mode", "async"), ("x-trailer", "x-sum=10")],
    )
    .await;
    assert_eq!(
        done["response"]["trailers"],
        serde_json::json!([["x-sum", "10"]]),
        "{done}"
    );
    node.shutdown().await.unwrap();
}

/// Reads from `stream` into `buf` until `want` is in it or `within` has passed; whether it is.
pub(crate) async fn read_until(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    want: &[u8],
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt;
    let give_up = tokio::time::Instant::now() + within;
    let mut chunk = [0u8; 4096];
    while !buf.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout_at(give_up, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// Checks, at the node at `addr` where `drip` answers at `route`, that an answer still being
/// written reaches the caller as it is written: the head and the first chunk arrive while the
/// guest pauses 3 s before its second, then the rest, then the trailer it announced. Returns
/// the head, lower-cased.
pub(crate) async fn check_a_slow_answer_arrives_as_it_is_written(
    addr: std::net::SocketAddr,
    route: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {route} HTTP/1.1\r\nHost: tern\r\nConnection: close\r\nTE: trailers\r\n\
                 x-drip-chunks: 2\r\nx-drip-ms: 3000\r\nx-drip-trailer: x-done=yes\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let first = read_until(
        &mut stream,
        &mut buf,
        b"drip 0\n",
        std::time::Duration::from_secs(2),
    )
    .await;
    let so_far = String::from_utf8_lossy(&buf).into_owned();
    assert!(
        first,
        "the head and first chunk did not come before the guest's pause ended: {so_far:?}"
    );
    assert!(so_far.starts_with("HTTP/1.1 200 OK\r\n"), "{so_far}");
    assert!(!so_far.contains("drip 1"), "{so_far}");
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8(buf).unwrap();
    let (head, body, trailers) = unchunk(&answer);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(head.contains("\r\ntrailer: x-done"), "{head}");
    assert!(head.contains("\r\ncontent-type: text/plain"), "{head}");
    assert!(head.contains("\r\nx-tern-cold-start: "), "{head}");
    assert!(head.contains("\r\nx-tern-request-id: "), "{head}");
    assert_eq!(body, "drip 0\ndrip 1\n", "{answer}");
    assert_eq!(trailers, "x-done: yes\r\n\r\n", "{answer}");
    head
}

/// A component's answer that is still being written after its head goes out as it is written
/// (in the test's own process here; in a cell in the `lci` tests), while a quick one still
/// comes whole with its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_components_answer_reaches_the_caller_as_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = deploy_component(addr, "drip", "drip").await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    check_a_slow_answer_arrives_as_it_is_written(addr, "/fn/drip").await;
    let quick = call(addr, Method::GET, "/fn/drip", &[("x-drip-ms", "0")], b"").await;
    assert_eq!(quick.status, 200);
    assert_eq!(&quick.body[..], b"drip 0\ndrip 1\ndrip 2\n");
    assert_eq!(quick.header("content-length"), Some("21"));

    // An HTTP/1.0 caller could not tell a cut body from a whole one: it waits for the whole.
    let old = raw_exchange(
        addr,
        "GET /fn/drip HTTP/1.0\r\nHost: tern\r\nx-drip-chunks: 2\r\nx-drip-ms: 300\r\n\r\n",
    )
    .await;
    let (head, body) = old.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("\r\ncontent-length: 14"),
        "{old}"
    );
    assert_eq!(body, "drip 0\ndrip 1\n");

    // A quick answer past 64 KiB goes out as it is written too.
    let resp = deploy_component(addr, "echo-component", "echo").await;
    assert_eq!(resp.status, 201);
    let big: &'static [u8] = Box::leak(vec![b'e'; 200_000].into_boxed_slice());
    let resp = call(addr, Method::POST, "/fn/echo-component", &[], big).await;
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], big);
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    node.shutdown().await.unwrap();
}

/// Once its head has gone out, an answer whose guest then fails (here: it runs out of time
/// between two chunks) cannot become an error response: the body is cut short, without the
/// chunk that ends it, so the caller can tell. The node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_whose_guest_runs_out_of_time_is_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let resp = request(
        addr,
        Method::PUT,
        "/v1/functions/drip?timeout_ms=1000",
        component("drip"),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    let answer = raw_exchange(
        addr,
        "GET /fn/drip HTTP/1.1\r\nHost: tern\r\nConnection: close\r\n\
         x-drip-chunks: 2\r\nx-drip-ms: 5000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(answer.contains("drip 0\n"), "{answer}");
    assert!(!answer.contains("drip 1"), "{answer}");
    assert!(
        !answer.ends_with("\r\n0\r\n\r\n"),
        "the body was not cut: {answer}"
    );
    let quick = call(addr, Method::GET, "/fn/drip", &[("x-drip-ms", "0")], b"").await;
    assert_eq!(
        (quick.status, &quick.body[..]),
        (200, &b"drip 0\ndrip 1\ndrip 2\n"[..])
    );
    node.shutdown().await.unwrap();
}
