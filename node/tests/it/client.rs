//! The QUIC client API and `tern-client` end to end: every operation, authentication by token
//! and by certificate, hostile frames, idempotency keys, and failover between two nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use tern_client::{
    Client, ClientConfig, ClientError, DeployOptions, ErrorCode, HttpCall, InvocationStatus,
    InvokeOptions,
};
use tern_node::config::ConfigError;
use tern_node::{Config, NodeError, NodeHandle};
use tern_wire::client_proto::{ClientOp, ClientRequest, ClientResponse};
use tern_wire::{decode, encode, encode_frame};

use crate::support::*;

/// `tern cluster init` for nodes `a` and `b` in `dir/name`.
fn init_pki(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    tern_cluster::pki::init(&out, &["a".parse().unwrap(), "b".parse().unwrap()]).unwrap();
    out
}

/// A node named `name` with the client API on a free UDP port and only `echo` deployed.
fn node_config(dir: &Path, pki: &Path, name: &str, tokens: &[&str]) -> Config {
    Config {
        node_name: name.into(),
        cluster_dir: Some(pki.to_owned()),
        client_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        // A cluster member without peers: its mesh endpoint must not collide with others.
        cluster_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        client_tokens: tokens.iter().map(|t| t.to_string()).collect(),
        examples: vec!["echo".into()],
        ..config(&dir.join(format!("data-{name}")))
    }
}

pub fn client_addr(node: &NodeHandle) -> SocketAddr {
    node.client_addr().expect("client API is on")
}

/// Generous per-request bounds (slow VM), short backoff so tests stay fast.
pub fn client_config(pki: &Path, seeds: &[(&str, SocketAddr)]) -> ClientConfig {
    let mut c = ClientConfig::new(
        seeds.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
        pki.join("ca.pem"),
    );
    c.request_timeout = Duration::from_secs(20);
    c.connect_timeout = Duration::from_secs(3);
    c.idle_timeout = Duration::from_secs(3);
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

pub async fn connect(config: ClientConfig) -> Client {
    tokio::time::timeout(Duration::from_secs(30), Client::connect(config))
        .await
        .expect("connect timed out")
        .expect("client connects")
}

fn api_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api(e)) => e.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Times `echo` ran successfully on `node`.
pub fn echo_runs(node: &NodeHandle) -> u64 {
    node.services()
        .runtime
        .get(&"echo".parse().unwrap())
        .unwrap()
        .metrics
        .ok
        .load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deploys_lists_invokes_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let node = start(node_config(dir.path(), &pki, "a", &[])).await;
    let client = connect(client_config(&pki, &[("a", client_addr(&node))])).await;
    assert_eq!(client.connected_node().await.as_deref(), Some("a"));

    let names = |l: Vec<tern_client::FunctionInfo>| -> Vec<String> {
        l.into_iter().map(|f| f.name.to_string()).collect()
    };
    assert_eq!(names(client.list().await.unwrap()), ["echo"]);

    let opts = DeployOptions {
        timeout_ms: Some(500),
        memory_mb: Some(64),
        max_instances: Some(3),
    };
    let info = client
        .deploy_with("echo2", wasm("echo").to_vec(), opts)
        .await
        .unwrap();
    assert_eq!(
        (
            info.name.as_str(),
            info.version,
            info.timeout_ms,
            info.memory_mb,
            info.max_instances
        ),
        ("echo2", 1, 500, 64, Some(3))
    );
    assert_eq!(names(client.list().await.unwrap()), ["echo", "echo2"]);
    let bad = client.deploy("bad", b"not wasm".to_vec()).await;
    assert_eq!(api_code(bad), ErrorCode::InvalidModule);

    let out = client
        .invoke("echo2", b"hello tern".to_vec())
        .await
        .unwrap();
    assert_eq!(&out.output[..], b"hello tern");
    assert_eq!(out.node, "a");
    assert!(!out.replayed);
    assert!(out.duration_us > 0);

    let map = InvokeOptions {
        map: true,
        ..Default::default()
    };
    let out = client
        .invoke_with("echo2", b"[1,2,3,4]".to_vec(), map)
        .await
        .unwrap();
    let joined: serde_json::Value = serde_json::from_slice(&out.output).unwrap();
    assert_eq!(joined, serde_json::json!([1, 2, 3, 4]));

    let id = client
        .invoke_async("echo2", b"later".to_vec())
        .await
        .unwrap();
    let record = client
        .wait_result(&id, Duration::from_millis(10), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, InvocationStatus::Succeeded);
    assert_eq!(record.output.as_deref(), Some(&b"later"[..]));
    assert!(record.input.is_empty(), "inputs are not sent back");
    let missing = client.result(&"0000-0000".parse().unwrap()).await;
    assert_eq!(api_code(missing), ErrorCode::NotFound);

    let removed = client.remove("echo2").await.unwrap();
    assert_eq!(removed.name.as_str(), "echo2");
    assert_eq!(
        api_code(client.invoke("echo2", b"x".to_vec()).await),
        ErrorCode::NotFound
    );
    assert_eq!(api_code(client.remove("echo2").await), ErrorCode::NotFound);
    assert_eq!(names(client.list().await.unwrap()), ["echo"]);
    // Refused locally, before anything is sent.
    assert!(matches!(
        client.invoke("Not A Name", Vec::new()).await,
        Err(ClientError::InvalidArgument(_))
    ));
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_node_certificates_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let node = start(node_config(dir.path(), &pki, "a", &["s3cret", "other"])).await;
    let seeds = [("a", client_addr(&node))];

    // No token, then a wrong one: unauthorized, not retried.
    let anonymous = connect(client_config(&pki, &seeds)).await;
    assert_eq!(api_code(anonymous.list().await), ErrorCode::Unauthorized);
    let wrong = connect(client_config(&pki, &seeds).with_token("s3cre")).await;
    let started = Instant::now();
    assert_eq!(
        api_code(wrong.invoke("echo", b"x".to_vec()).await),
        ErrorCode::Unauthorized
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The right token works; a node's certificate is no credential at all (the cluster has
    // no client CA, so the node does not even ask for one).
    let tenant = connect(client_config(&pki, &seeds).with_token("s3cret")).await;
    let out = tenant.invoke("echo", b"hi".to_vec()).await.unwrap();
    assert_eq!(&out.output[..], b"hi");
    let with_cert =
        connect(client_config(&pki, &seeds).with_client_cert(pki.join("b.pem"), pki.join("b.key")))
            .await;
    assert_eq!(api_code(with_cert.list().await), ErrorCode::Unauthorized);

    // A request that does not authenticate is refused on its leading bytes: announced as
    // 5 MiB, only its first 2 KiB sent, the answer is `unauthorized`, not "truncated" (the
    // node never waited for, or budgeted, the rest).
    let op = ClientOp::Invoke {
        name: "echo".parse().unwrap(),
        input: vec![7; 5 << 20],
        map: false,
        idempotency_key: None,
        timeout_ms: None,
    };
    let whole = encode(
        &ClientRequest {
            token: Some("s3cre".into()),
            op,
            trace: None,
        },
        8 << 20,
    )
    .unwrap();
    let framed = encode_frame(&whole, 8 << 20).unwrap();
    let bytes = anonymous.raw_request(&framed[..2048]).await.unwrap();
    match decode::<ClientResponse>(&bytes, 1 << 20).unwrap() {
        ClientResponse::Err(e) => assert_eq!(e.code, ErrorCode::Unauthorized, "{e}"),
        ok => panic!("expected unauthorized, got {ok:?}"),
    }
    // A token too long to be read first is refused the same way.
    let long = encode(
        &ClientRequest {
            token: Some("t".repeat(4096)),
            op: ClientOp::List,
            trace: None,
        },
        1 << 20,
    )
    .unwrap();
    let bytes = anonymous
        .raw_request(&encode_frame(&long, 1 << 20).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        decode::<ClientResponse>(&bytes, 1 << 20).unwrap(),
        ClientResponse::Err(e) if e.code == ErrorCode::Unauthorized
    ));

    // The node still serves, and counted the refusals.
    assert_eq!(
        &tenant.invoke("echo", b"ok".to_vec()).await.unwrap().output[..],
        b"ok"
    );
    let metrics = request(node.addr(), Method::GET, "/metrics", Bytes::new()).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let unauthorized = text
        .lines()
        .find_map(|l| l.strip_prefix("tern_request_errors_total{code=\"unauthorized\"} "))
        .unwrap();
    assert_eq!(
        unauthorized, "5",
        "three clients (one with a node certificate), two raw requests"
    );
    node.shutdown().await.unwrap();
}

/// With a client CA (`tern cluster client-ca`), a client certificate it issued acts for the
/// tenant and role it names (`<client>.<role>.<tenant>.client.tern`) exactly as a bearer
/// token of that tenant and role would; a certificate naming a tenant that does not exist is
/// refused; node certificates and certificates of another client CA fail the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_act_for_their_tenant_and_role_and_node_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let ca_key = dir.path().join("client-ca.key");
    let certs = dir.path().join("certs");
    // Through the CLI, as an operator would.
    let tern = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(args)
            .output()
            .unwrap()
    };
    let (pki_s, key_s, certs_s) = (
        pki.to_str().unwrap(),
        ca_key.to_str().unwrap(),
        certs.to_str().unwrap(),
    );
    let out = tern(&["cluster", "client-ca", "--dir", pki_s, "--key", key_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, role, tenant) in [
        ("alice", "developer", "acme"),
        ("ivan", "invoker", "acme"),
        ("root", "admin", "default"),
        ("ghost", "developer", "gone"),
    ] {
        let out = tern(&[
            "cluster",
            "client-cert",
            "--dir",
            pki_s,
            "--key",
            key_s,
            "--name",
            name,
            "--role",
            role,
            "--tenant",
            tenant,
            "--out",
            certs_s,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = tern(&[
        "cluster",
        "client-cert",
        "--dir",
        pki_s,
        "--key",
        key_s,
        "--name",
        "eve",
        "--role",
        "root",
        "--tenant",
        "acme",
        "--out",
        certs_s,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid role"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (node, _admin) = tokens_node_with_acme(dir.path(), &pki).await;
    let seeds = [("a", client_addr(&node))];
    let as_holder = |stem: &str| {
        connect(client_config(&pki, &seeds).with_client_cert(
            certs.join(format!("{stem}.pem")),
            certs.join(format!("{stem}.key")),
        ))
    };

    let alice = as_holder("alice").await;
    let deployed = alice.deploy("work", wasm("echo").to_vec()).await.unwrap();
    assert_eq!(deployed.name.as_str(), "acme.work");
    assert_eq!(&alice.invoke("work", "hi").await.unwrap().output[..], b"hi");
    assert_eq!(
        api_code(alice.invoke("echo", "x").await),
        ErrorCode::NotFound
    );
    let listed: Vec<String> = alice
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["acme.work"]);

    let ivan = as_holder("ivan").await;
    assert_eq!(&ivan.invoke("work", "ok").await.unwrap().output[..], b"ok");
    assert_eq!(
        api_code(ivan.deploy("other", wasm("echo").to_vec()).await),
        ErrorCode::Forbidden
    );

    let root = as_holder("root").await;
    assert_eq!(
        root.list().await.unwrap().len(),
        2,
        "an admin sees every tenant"
    );

    let ghost = as_holder("ghost").await;
    assert_eq!(api_code(ghost.list().await), ErrorCode::Unauthorized);

    // A node certificate, and a certificate from another cluster's client CA, fail the
    // handshake: the node trusts its client CA alone for clients.
    let foreign = init_pki(dir.path(), "foreign");
    let foreign_key = dir.path().join("foreign-client-ca.key");
    tern_cluster::pki::init_client_ca(&foreign, &foreign_key).unwrap();
    tern_cluster::pki::issue_client(
        &foreign,
        &foreign_key,
        "mallory.admin.default",
        &certs,
        "mallory",
    )
    .unwrap();
    for (cert, key) in [
        (pki.join("b.pem"), pki.join("b.key")),
        (certs.join("mallory.pem"), certs.join("mallory.key")),
    ] {
        let impostor = client_config(&pki, &seeds).with_client_cert(cert, key);
        let result = async {
            let c = Client::connect(impostor).await?;
            c.list().await
        };
        let result = tokio::time::timeout(Duration::from_secs(20), result)
            .await
            .unwrap();
        assert!(
            matches!(result, Err(ClientError::Rejected { ref node, .. }) if node == "a"),
            "{result:?}"
        );
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_typed_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let node = start(node_config(dir.path(), &pki, "a", &[])).await;
    let client = connect(client_config(&pki, &[("a", client_addr(&node))])).await;

    let answer = |raw: Vec<u8>| {
        let client = client.clone();
        async move {
            let bytes = client.raw_request(&raw).await.unwrap();
            match decode::<ClientResponse>(&bytes, 1 << 20).unwrap() {
                ClientResponse::Err(e) => e,
                ok => panic!("expected an error, got {ok:?}"),
            }
        }
    };
    let limit = 1 << 20;
    let request = |op: ClientOp| {
        encode(
            &ClientRequest {
                token: None,
                op,
                trace: None,
            },
            limit,
        )
        .unwrap()
    };

    // Not bincode of a request.
    let e = answer(encode_frame(b"\xff\xfe\xfd garbage", limit).unwrap()).await;
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    // A valid request with trailing bytes.
    let mut trailing = request(ClientOp::List);
    trailing.push(0);
    let e = answer(encode_frame(&trailing, limit).unwrap()).await;
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    // A header announcing 1 GiB: refused from the header.
    let mut bomb = (1u32 << 30).to_be_bytes().to_vec();
    bomb.extend_from_slice(&[0; 64]);
    let e = answer(bomb).await;
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");
    // Truncated frame, and an empty stream.
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[1; 10]);
    assert_eq!(answer(short).await.code, ErrorCode::InvalidRequest);
    assert_eq!(answer(Vec::new()).await.code, ErrorCode::InvalidRequest);
    // Bad idempotency keys are typed errors too.
    for key in ["", "has space", "tab\tkey", &"k".repeat(129)] {
        let op = ClientOp::InvokeAsync {
            name: "echo".parse().unwrap(),
            input: Vec::new(),
            map: false,
            idempotency_key: Some(key.to_owned()),
        };
        let e = answer(encode_frame(&request(op), limit).unwrap()).await;
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{key:?}: {e}");
        assert!(e.message.contains("idempotency key"), "{e}");
    }
    // An input over max_body_bytes.
    let op = ClientOp::Invoke {
        name: "echo".parse().unwrap(),
        input: vec![0; (6 << 20) + 1],
        map: false,
        idempotency_key: None,
        timeout_ms: None,
    };
    let big = encode(
        &ClientRequest {
            token: None,
            op,
            trace: None,
        },
        8 << 20,
    )
    .unwrap();
    let e = answer(encode_frame(&big, 8 << 20).unwrap()).await;
    assert_eq!(e.code, ErrorCode::PayloadTooLarge, "{e}");

    // The same connection, the endpoint and HTTP all still serve.
    let out = client.invoke("echo", b"still here".to_vec()).await.unwrap();
    assert_eq!(&out.output[..], b"still here");
    let fresh = connect(client_config(&pki, &[("a", client_addr(&node))])).await;
    assert_eq!(fresh.list().await.unwrap().len(), 1);
    assert_eq!(invoke(node.addr(), "echo", "http").await.status, 200);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_make_retries_safe() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let node = start(node_config(dir.path(), &pki, "a", &[])).await;
    let client = connect(client_config(&pki, &[("a", client_addr(&node))])).await;
    let keyed = |key: &str| InvokeOptions {
        idempotency_key: Some(key.into()),
        ..Default::default()
    };

    // Sync: the same key runs once; a retry gets the first result back.
    let before = echo_runs(&node);
    let first = client
        .invoke_with("echo", b"one".to_vec(), keyed("sync-1"))
        .await
        .unwrap();
    let again = client
        .invoke_with("echo", b"two".to_vec(), keyed("sync-1"))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(
        &again.output[..],
        b"one",
        "the first call's result is replayed"
    );
    assert_eq!(echo_runs(&node), before + 1);
    // Two concurrent calls with one key: one runs, the other waits for it.
    let (x, y) = tokio::join!(
        client.invoke_with("echo", b"same".to_vec(), keyed("sync-2")),
        client.invoke_with("echo", b"same".to_vec(), keyed("sync-2")),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!((&x.output[..], &y.output[..]), (&b"same"[..], &b"same"[..]));
    assert_eq!(u8::from(x.replayed) + u8::from(y.replayed), 1);
    assert_eq!(echo_runs(&node), before + 2);
    // Without a key of its own, each call gets a fresh one and runs.
    client.invoke("echo", b"a".to_vec()).await.unwrap();
    client.invoke("echo", b"a".to_vec()).await.unwrap();
    assert_eq!(echo_runs(&node), before + 4);
    // A bad key is refused locally.
    assert!(matches!(
        client
            .invoke_with("echo", Vec::new(), keyed("bad key"))
            .await,
        Err(ClientError::InvalidArgument(_))
    ));

    // Async: the same key gives the same id; another key another id.
    let id1 = client
        .invoke_async_with("echo", b"job".to_vec(), keyed("order-17"))
        .await
        .unwrap();
    let id2 = client
        .invoke_async_with("echo", b"job".to_vec(), keyed("order-17"))
        .await
        .unwrap();
    let id3 = client
        .invoke_async_with("echo", b"job".to_vec(), keyed("order-18"))
        .await
        .unwrap();
    assert_eq!(id1, id2);
    assert_ne!(id1, id3);
    for id in [&id1, &id3] {
        let r = client
            .wait_result(id, Duration::from_millis(10), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(r.status, InvocationStatus::Succeeded);
        assert_eq!(r.attempts, 1);
    }
    assert_eq!(echo_runs(&node), before + 6, "order-17 ran once");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_when_its_node_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    // No replication yet: each node has echo deployed on its own (from the examples).
    let a = start(node_config(dir.path(), &pki, "a", &["t"])).await;
    let b = start(node_config(dir.path(), &pki, "b", &["t"])).await;
    let seeds = [("a", client_addr(&a)), ("b", client_addr(&b))];
    let client = connect(client_config(&pki, &seeds).with_token("t")).await;

    let out = client.invoke("echo", b"before".to_vec()).await.unwrap();
    assert_eq!((&out.output[..], out.node.as_str()), (&b"before"[..], "a"));

    a.shutdown().await.unwrap();
    let started = Instant::now();
    let out = client.invoke("echo", b"after".to_vec()).await.unwrap();
    assert_eq!((&out.output[..], out.node.as_str()), (&b"after"[..], "b"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        started.elapsed()
    );
    assert_eq!(client.connected_node().await.as_deref(), Some("b"));
    // And it stays on b.
    assert_eq!(client.list().await.unwrap().len(), 1);
    let out = client.invoke("echo", b"again".to_vec()).await.unwrap();
    assert_eq!(out.node, "b");
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_when_its_node_goes_silent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let a = start(node_config(dir.path(), &pki, "a", &[])).await;
    let b = start(node_config(dir.path(), &pki, "b", &[])).await;
    let relay = relay(client_addr(&a)).await;
    let mut config = client_config(&pki, &[("a", relay.addr), ("b", client_addr(&b))]);
    config.idle_timeout = Duration::from_secs(2);
    let client = connect(config).await;
    assert_eq!(
        client.invoke("echo", b"x".to_vec()).await.unwrap().node,
        "a"
    );

    // a vanishes mid-conversation: no close ever reaches the client, the request is lost.
    relay.silent.store(true, Ordering::Relaxed);
    let (a_runs, b_runs) = (echo_runs(&a), echo_runs(&b));
    let started = Instant::now();
    let out = client
        .invoke("echo", b"lost in transit".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (&out.output[..], out.node.as_str()),
        (&b"lost in transit"[..], "b")
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failover took {:?}",
        started.elapsed()
    );
    assert_eq!((echo_runs(&a), echo_runs(&b)), (a_runs, b_runs + 1));
    relay.task.abort();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// After a failover the client tries its first seed again every `failback_after`, off the
/// calls' path; once that node answers, calls go back to it. With `failback_after = None` a
/// client stays where it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_goes_back_to_its_first_node_once_it_answers_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let a = start(node_config(dir.path(), &pki, "a", &[])).await;
    let b = start(node_config(dir.path(), &pki, "b", &[])).await;
    let (to_a, to_a_too) = (relay(client_addr(&a)).await, relay(client_addr(&a)).await);
    let config = |relay: &Relay, failback_after| {
        let mut c = client_config(&pki, &[("a", relay.addr), ("b", client_addr(&b))]);
        c.idle_timeout = Duration::from_secs(2);
        c.failback_after = failback_after;
        c
    };
    let client = connect(config(&to_a, Some(Duration::from_millis(300)))).await;
    let stayer = connect(config(&to_a_too, None)).await;
    let node_of = |c: &Client| {
        let c = c.clone();
        async move { c.invoke("echo", b"x".to_vec()).await.unwrap().node }
    };
    assert_eq!(node_of(&client).await, "a");
    assert_eq!(node_of(&stayer).await, "a");

    // a goes silent: both move to b (at their idle timeout).
    to_a.silent.store(true, Ordering::Relaxed);
    to_a_too.silent.store(true, Ordering::Relaxed);
    assert_eq!(node_of(&client).await, "b");
    assert_eq!(node_of(&stayer).await, "b");
    // While a stays silent its tries fail in the background (each waits out the 3 s connect
    // timeout), and calls are not held up by them.
    for _ in 0..8 {
        let t = Instant::now();
        assert_eq!(node_of(&client).await, "b");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // a answers again: the client is back on it within a try or two; the other stays on b.
    to_a.silent.store(false, Ordering::Relaxed);
    to_a_too.silent.store(false, Ordering::Relaxed);
    let t = Instant::now();
    while node_of(&client).await != "a" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never went back to a"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.connected_node().await.as_deref(), Some("a"));
    assert_eq!(node_of(&stayer).await, "b");
    to_a.task.abort();
    to_a_too.task.abort();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_seeds_and_impostors_are_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let b = start(node_config(dir.path(), &pki, "b", &[])).await;
    // Sockets that swallow every packet: a node that never answers.
    let silent1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead1 = silent1.local_addr().unwrap();
    let dead2 = silent2.local_addr().unwrap();
    let quick = |seeds: &[(&str, SocketAddr)]| {
        let mut c = client_config(&pki, seeds);
        c.connect_timeout = Duration::from_millis(500);
        c.retries = 1;
        c
    };

    // The first seed never answers: the client connects to the second.
    let client = connect(quick(&[("a", dead1), ("b", client_addr(&b))])).await;
    assert_eq!(
        client.invoke("echo", b"x".to_vec()).await.unwrap().node,
        "b"
    );

    // No seed answers: a typed error listing every attempt (2 seeds x 2 rounds).
    let err = Client::connect(quick(&[("a", dead1), ("b", dead2)]))
        .await
        .err()
        .unwrap();
    match &err {
        ClientError::AllNodesUnreachable { tried } => {
            assert_eq!(tried.len(), 4, "{err}");
            assert_eq!(tried[0].node, "a");
            assert_eq!(tried[1].node, "b");
            assert!(tried.iter().all(|f| !f.rejected));
        }
        other => panic!("expected AllNodesUnreachable, got {other:?}"),
    }
    assert!(err.is_retryable());

    // b's address under the name a: b's certificate is not a's, so the client refuses it.
    let err = Client::connect(quick(&[("a", client_addr(&b))]))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, ClientError::AllNodesUnreachable { tried } if tried.len() == 2),
        "{err:?}"
    );
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_listen_needs_a_cluster_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        client_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..config(dir.path())
    };
    let err = tern_node::start(config).await.err().unwrap();
    assert!(
        matches!(&err, NodeError::Config(ConfigError::Invalid(m)) if m.contains("cluster_dir")),
        "{err}"
    );
    // A cluster dir without this node's certificate is a typed error too.
    let pki = init_pki(dir.path(), "pki");
    let mut config = node_config(dir.path(), &pki, "zed", &[]);
    config.examples.clear();
    let err = tern_node::start(config).await.err().unwrap();
    assert!(matches!(err, NodeError::ClientApi(_)), "{err}");
}

/// A node started on sockets bound beforehand serves on exactly those: HTTP on the listener,
/// the client API on its UDP socket (which turns the client API on without `client_listen`).
/// A mesh socket for a node that is no cluster member is refused, not silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_on_the_sockets_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (http_addr, client_at) = (http.local_addr().unwrap(), client.local_addr().unwrap());
    let member = Config {
        client_listen: None,
        ..node_config(dir.path(), &pki, "a", &[])
    };
    let sockets = tern_node::Sockets {
        http: Some(http),
        client: Some(client),
        ..Default::default()
    };
    let node = tern_node::start_with(member, sockets).await.unwrap();
    assert_eq!(
        (node.addr(), node.client_addr()),
        (http_addr, Some(client_at))
    );
    let r = request(http_addr, Method::GET, "/healthz", Bytes::new()).await;
    assert_eq!(r.status, 200);
    let c = connect(client_config(&pki, &[("a", client_at)])).await;
    let out = c.invoke("echo", b"given".to_vec()).await.unwrap();
    assert_eq!(&out.output[..], b"given");
    node.shutdown().await.unwrap();

    let mesh = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sockets = tern_node::Sockets {
        mesh: Some(mesh),
        ..Default::default()
    };
    let single = Config {
        examples: Vec::new(),
        ..config(&dir.path().join("data-single"))
    };
    let err = tern_node::start_with(single, sockets).await.err().unwrap();
    assert!(
        matches!(&err, NodeError::Config(ConfigError::Invalid(m)) if m.contains("cluster_dir")),
        "{err}"
    );
}

/// Node `a` with bearer tokens on (its client API too) and a tenant `acme`, and the admin
/// token the node wrote at its first start.
async fn tokens_node_with_acme(
    dir: &std::path::Path,
    pki: &std::path::Path,
) -> (tern_node::node::NodeHandle, String) {
    let node = start(Config {
        auth: tern_node::config::AuthMode::Tokens,
        ..node_config(dir, pki, "a", &[])
    })
    .await;
    let admin = std::fs::read_to_string(dir.join("data-a").join("admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    let r = crate::auth::with_token(
        node.addr(),
        Method::POST,
        "/v1/tenants",
        Some(&admin),
        r#"{"name":"acme"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    (node, admin)
}

/// With `auth = "tokens"` the client API takes the node's bearer tokens under the HTTP API's
/// rules: a token acts for its tenant with its role, names without a tenant are its tenant's,
/// another tenant's function or result is `not_found`, and a client with neither a token nor
/// a certificate is refused even though `client_tokens` is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_takes_bearer_tokens_for_their_tenant_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let (node, admin) = tokens_node_with_acme(dir.path(), &pki).await;
    let seeds = [("a", client_addr(&node))];
    let (developer, _) = crate::auth::new_token_for(node.addr(), &admin, "developer", "acme").await;
    let (invoker, _) = crate::auth::new_token_for(node.addr(), &admin, "invoker", "acme").await;
    let with = |token: Option<&str>| {
        let mut c = client_config(&pki, &seeds);
        c.token = token.map(str::to_owned);
        connect(c)
    };

    let anonymous = with(None).await;
    assert_eq!(api_code(anonymous.list().await), ErrorCode::Unauthorized);
    let wrong = with(Some("tern_not-a-real-token")).await;
    assert_eq!(
        api_code(wrong.invoke("echo", "x").await),
        ErrorCode::Unauthorized
    );

    let dev = with(Some(&developer)).await;
    let deployed = dev.deploy("work", wasm("echo").to_vec()).await.unwrap();
    assert_eq!(deployed.name.as_str(), "acme.work");
    assert_eq!(&dev.invoke("work", "hi").await.unwrap().output[..], b"hi");
    let listed: Vec<String> = dev
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["acme.work"], "only its own tenant's functions");
    // `echo` is the default tenant's: for acme's token it does not exist.
    assert_eq!(api_code(dev.invoke("echo", "x").await), ErrorCode::NotFound);
    // Once acme has an `echo` of its own, `echo` is acme's and `default.echo` still is not:
    // names travel as written, so the node resolves them as HTTP does.
    dev.deploy("echo", wasm("echo").to_vec()).await.unwrap();
    assert_eq!(
        &dev.invoke("echo", "mine").await.unwrap().output[..],
        b"mine"
    );
    assert_eq!(
        api_code(dev.invoke("default.echo", "x").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        api_code(dev.remove("default.echo").await),
        ErrorCode::NotFound
    );
    assert_eq!(
        &dev.invoke("acme.echo", "kept").await.unwrap().output[..],
        b"kept"
    );
    dev.remove("echo").await.unwrap();

    let inv = with(Some(&invoker)).await;
    assert_eq!(
        &inv.invoke("acme.work", "ok").await.unwrap().output[..],
        b"ok"
    );
    assert_eq!(
        api_code(inv.deploy("other", wasm("echo").to_vec()).await),
        ErrorCode::Forbidden
    );
    assert_eq!(api_code(inv.remove("work").await), ErrorCode::Forbidden);

    // Results: the tenant's own are readable, another tenant's answer as missing.
    let id = inv.invoke_async("work", "later").await.unwrap();
    let done = dev
        .wait_result(&id, Duration::from_millis(20), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(done.output.as_deref(), Some(&b"later"[..]));
    let root = with(Some(&admin)).await;
    let theirs = root.invoke_async("echo", "default's").await.unwrap();
    assert_eq!(api_code(dev.result(&theirs).await), ErrorCode::NotFound);

    // An admin token sees every tenant.
    let mut all: Vec<String> = root
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name.as_str().to_owned())
        .collect();
    all.sort();
    assert_eq!(all, ["acme.work", "echo"]);
    assert_eq!(
        &root.invoke("acme.work", "x").await.unwrap().output[..],
        b"x"
    );

    // Request-rate quotas hold on this front door too, charged to the function's tenant
    // whoever calls, and are not retried by the client.
    let r = crate::auth::with_token(
        node.addr(),
        Method::PUT,
        "/v1/tenants/acme",
        Some(&admin),
        r#"{"quotas":{"max_rate_per_s":1,"rate_burst":1}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let started = std::time::Instant::now();
    let outcomes = [
        dev.invoke("work", "1").await.map(|_| ()),
        root.invoke("acme.work", "2").await.map(|_| ()),
        inv.invoke_async("work", "3").await.map(|_| ()),
    ];
    if started.elapsed() < Duration::from_millis(900) {
        let refused = outcomes
            .into_iter()
            .filter(|o| matches!(o, Err(ClientError::Api(e)) if e.code == ErrorCode::QuotaExceeded))
            .count();
        assert_eq!(refused, 2, "a burst of 1: one call in, two refused");
    } else {
        eprintln!("the machine was too slow to check the rate edge (a refill came first)");
    }
    node.shutdown().await.unwrap();
}

/// `auth = "off"` with no `client_tokens` would leave the client API open to anyone who
/// reaches it: refused unless it listens on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_client_api_must_listen_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let open = Config {
        client_listen: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
        ..node_config(dir.path(), &pki, "a", &[])
    };
    let err = tern_node::start(open.clone()).await.err().unwrap();
    assert!(
        matches!(&err, NodeError::Config(ConfigError::Invalid(m)) if m.contains("loopback")),
        "{err}"
    );
    let with_tokens = Config {
        client_tokens: vec!["t".into()],
        ..open
    };
    let node = start(with_tokens).await;
    node.shutdown().await.unwrap();
}

/// Every client API operation × every kind of caller → the documented answer, as
/// `every_route_answers_each_caller_as_its_role_allows` checks for HTTP: no, bad or revoked
/// token → `unauthorized`; a role that never allows the operation → `forbidden`; another
/// tenant's function or invocation → `not_found`, as if it did not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_operation_answers_each_caller_as_its_role_and_tenant_allow() {
    use ErrorCode::{Forbidden as F, NotFound as NF, Unauthorized as U};
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let (node, admin) = tokens_node_with_acme(dir.path(), &pki).await;
    let addr = node.addr();
    let (invoker, _) = crate::auth::new_token_for(addr, &admin, "invoker", "default").await;
    let (developer, _) = crate::auth::new_token_for(addr, &admin, "developer", "default").await;
    let (other, _) = crate::auth::new_token_for(addr, &admin, "developer", "acme").await;
    let revoked = crate::auth::revoked_admin_token(addr, &admin).await;
    let bad = "tern_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
    // Callers, in the order of each row's answers; `other` is a developer of another tenant,
    // and every row names `default`'s resources.
    let callers: [(&str, Option<String>); 7] = [
        ("none", None),
        ("bad", Some(bad)),
        ("revoked", Some(revoked)),
        ("invoker", Some(invoker)),
        ("developer", Some(developer)),
        ("admin", Some(admin.clone())),
        ("other", Some(other)),
    ];
    let seeds = [("a", client_addr(&node))];
    let root = connect(client_config(&pki, &seeds).with_token(admin.clone())).await;
    for (caller, _) in &callers {
        root.deploy(&format!("gone-{caller}"), wasm("echo").to_vec())
            .await
            .unwrap();
    }
    let invocation = root.invoke_async("echo", "async").await.unwrap();

    type Row = (&'static str, [Option<ErrorCode>; 7]);
    let rows: [Row; 6] = [
        (
            "list",
            [Some(U), Some(U), Some(U), Some(F), None, None, None],
        ),
        (
            "deploy",
            [Some(U), Some(U), Some(U), Some(F), None, None, Some(NF)],
        ),
        (
            "remove",
            [Some(U), Some(U), Some(U), Some(F), None, None, Some(NF)],
        ),
        (
            "invoke",
            [Some(U), Some(U), Some(U), None, None, None, Some(NF)],
        ),
        (
            "invoke_async",
            [Some(U), Some(U), Some(U), None, None, None, Some(NF)],
        ),
        (
            "result",
            [Some(U), Some(U), Some(U), None, None, None, Some(NF)],
        ),
    ];
    for (caller_index, (caller, token)) in callers.iter().enumerate() {
        let mut config = client_config(&pki, &seeds);
        config.token = token.clone();
        let client = connect(config).await;
        for (op, answers) in &rows {
            let outcome: Result<(), ClientError> = match *op {
                "list" => client.list().await.map(|_| ()),
                "deploy" => client
                    .deploy(&format!("default.fresh-{caller}"), wasm("echo").to_vec())
                    .await
                    .map(|_| ()),
                "remove" => client
                    .remove(&format!("default.gone-{caller}"))
                    .await
                    .map(|_| ()),
                "invoke" => client.invoke("default.echo", "hi").await.map(|_| ()),
                "invoke_async" => client.invoke_async("default.echo", "hi").await.map(|_| ()),
                "result" => client.result(&invocation).await.map(|_| ()),
                _ => unreachable!(),
            };
            let got = match outcome {
                Ok(()) => None,
                Err(ClientError::Api(e)) => Some(e.code),
                Err(other) => panic!("{caller} {op}: {other:?}"),
            };
            assert_eq!(got, answers[caller_index], "{caller} {op}");
        }
    }
    // Each 403 is counted by code and against the caller's tenant (the invoker's: default).
    let forbidden = rows
        .iter()
        .flat_map(|(_, answers)| answers.iter())
        .filter(|a| **a == Some(F))
        .count();
    assert!(forbidden > 0);
    let text = metrics_text(addr, Some(&admin)).await;
    for line in [
        format!("tern_request_errors_total{{code=\"forbidden\"}} {forbidden}\n"),
        format!(
            "tern_tenant_invocations_total{{tenant=\"default\",outcome=\"forbidden\"}} {forbidden}\n"
        ),
    ] {
        assert!(text.contains(&line), "{line} in /metrics");
    }
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_calls_a_component_with_its_method_path_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init_pki(dir.path(), "pki");
    let node = start(node_config(dir.path(), &pki, "a", &[])).await;
    let client = connect(client_config(&pki, &[("a", client_addr(&node))])).await;
    client
        .deploy("inspect", component("inspect").to_vec())
        .await
        .unwrap();
    let call = HttpCall {
        method: "PATCH".into(),
        path_and_query: "/a/b?x=1&y=2".into(),
        headers: vec![
            ("x-status".into(), b"418".to_vec()),
            ("x-custom".into(), b"teapot".to_vec()),
            ("x-trailer".into(), b"x-sum=9".to_vec()),
        ],
        body: b"abc".to_vec(),
        trailers: vec![("x-checksum".into(), b"123".to_vec())],
    };
    let out = client
        .call_component("inspect", &call, InvokeOptions::default())
        .await
        .unwrap();
    assert_eq!(out.status, 418, "{}", String::from_utf8_lossy(&out.body));
    assert_eq!(out.header("x-inspected"), Some("yes"));
    assert_eq!(out.header("Content-Type"), Some("application/json"));
    assert_eq!(out.node, "a");
    let seen: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "x=1&y=2");
    assert_eq!(seen["body_bytes"], 3);
    assert!(
        seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-custom" && h[1] == "teapot"),
        "{seen}"
    );
    // Trailers both ways.
    assert_eq!(seen["trailers"], serde_json::json!([["x-checksum", "123"]]));
    assert_eq!(out.trailers, vec![("x-sum".to_owned(), b"9".to_vec())]);
    // A command is not a component: refused, and the node keeps serving.
    let refused = client
        .call_component("echo", &call, InvokeOptions::default())
        .await;
    assert_eq!(api_code(refused), ErrorCode::InvalidRequest);
    assert_eq!(
        client.invoke("echo", "still here").await.unwrap().output,
        Bytes::from_static(b"still here")
    );
}
