//! Deployments, artifacts and accepted async work survive a restart.

use bytes::Bytes;
use hyper::Method;
use tern_node::store::Store;
use tern_wire::{InvocationRecord, InvocationStatus};

use crate::support::*;

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
