//! Round-trip time of one small data-plane request between two endpoints on loopback, in
//! one process: the transport's floor under forwarded invocations. Each endpoint runs on its
//! own single-threaded runtime (as a node's mesh does), and the requests are issued from a
//! multi-threaded runtime (as a node's invocation tasks are).
//! `cargo run --release -p tern-cluster --example rtt [REQUESTS]`
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use tern_cluster::{Connection, Endpoint, NodeName, TransportConfig, pki};

fn mesh_runtime() -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tx.send(rt.handle().clone()).unwrap();
        rt.block_on(std::future::pending::<()>());
    });
    rx.recv().unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mode = std::env::args().nth(2).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("tern-rtt-{}", std::process::id()));
    let names: Vec<NodeName> = ["a", "b"].iter().map(|s| s.parse().unwrap()).collect();
    pki::init(&dir, &names).unwrap();
    let main_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ha, hb) = if mode == "shared" {
        (main_rt.handle().clone(), main_rt.handle().clone())
    } else {
        (mesh_runtime(), mesh_runtime())
    };
    let work = main_rt.handle().clone();
    let bind = |name: &NodeName, h: &tokio::runtime::Handle| {
        let id = pki::load(&dir, name).unwrap();
        let _g = h.enter();
        Endpoint::bind(
            &id,
            "127.0.0.1:0".parse().unwrap(),
            TransportConfig::default(),
        )
        .unwrap()
    };
    let a = bind(&names[0], &ha);
    let b = Arc::new(bind(&names[1], &hb));
    let server = b.clone();
    hb.spawn(async move {
        let conn = server.accept().await.unwrap();
        conn.serve(move |req: Vec<u8>, _parts| {
            let work = work.clone();
            // The handler's work runs on the main runtime, as a node's executions do.
            async move { work.spawn(async move { req }).await.unwrap() }
        })
        .await;
    });
    let addr = b.local_addr().unwrap();
    let conn: Connection = ha
        .block_on(async { a.connect(&names[1], addr).await })
        .unwrap();
    let samples = main_rt.block_on(async move { main_rt_requests(conn, n).await });
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "{n} requests of 64 B ({}): p50 {:?} p90 {:?} p99 {:?}",
        if mode == "shared" {
            "endpoints on the main runtime"
        } else {
            "endpoints on their own threads"
        },
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn main_rt_requests(conn: Connection, n: usize) -> Vec<std::time::Duration> {
    tokio::spawn(async move {
        let payload = vec![7u8; 64];
        let mut samples = Vec::with_capacity(n);
        for i in 0..n + 1000 {
            let t0 = Instant::now();
            let answer = conn.request(&payload).await.unwrap();
            if i >= 1000 {
                samples.push(t0.elapsed());
            }
            assert_eq!(answer.len(), payload.len());
        }
        samples.sort();
        samples
    })
    .await
    .unwrap()
}
