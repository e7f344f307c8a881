//! Killing any actor of the pipeline under load: the supervisor restarts it, and every
//! accepted request is still answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use tern_actors::ActorKind;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_actor_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path())).await;
    let addr = node.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, sent, ok) = (stop.clone(), sent.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = conn(addr).await;
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (path, body) = if i.is_multiple_of(4) {
                    (
                        "/v1/functions/echo/invoke?map=1",
                        Bytes::from(format!("[{c},{i},\"x\"]")),
                    )
                } else {
                    ("/v1/functions/echo/invoke", Bytes::from(format!("{c}-{i}")))
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let r = conn
                    .request(Method::POST, path, &[], body.clone())
                    .await
                    .unwrap();
                if r.status == 200 && r.body == body {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push((r.status, String::from_utf8_lossy(&r.body).into_owned()));
                }
                i += 1;
            }
            failures
        }));
    }
    let services = node.services().clone();
    for kind in ActorKind::ALL {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let name = services.name(kind).to_owned();
        let before = ractor::registry::where_is(name.clone()).expect("actor running");
        let id = before.get_id();
        before.kill();
        let mut restarted = false;
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if ractor::registry::where_is(name.clone()).is_some_and(|c| c.get_id() != id)
                && services.metrics.restarts(kind.label()) == 1
            {
                restarted = true;
                break;
            }
        }
        assert!(restarted, "{} was not restarted", kind.label());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    let (sent, ok) = (sent.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    assert_eq!(sent, ok);
    assert!(
        sent > 100,
        "the load must have run throughout ({sent} requests)"
    );
    for kind in ActorKind::ALL {
        assert_eq!(
            services.metrics.restarts(kind.label()),
            1,
            "{}",
            kind.label()
        );
    }
    let restarts = metric(addr, "tern_actor_restarts_total").await;
    assert_eq!(restarts, 6.0);
    node.shutdown().await.unwrap();
}
