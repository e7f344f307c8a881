//! The baseline runtime profile (`runtime_profile = "baseline"`), which the paper's ablation
//! "without the WebAssembly runtime optimisation" measures against: compile on first use per
//! node, nothing preheated, no compiled artifact kept, on-demand instances. It must serve the
//! same answers with the same limits, and pay the costs it claims to pay.

use std::path::Path;

use bytes::Bytes;
use hyper::Method;
use tern_node::config::{Isolation, RuntimeProfile};

use crate::lci::cells_config;
use crate::support::*;

/// Files in the node's artifact directory with extension `ext`.
fn files_with(data: &Path, ext: &str) -> usize {
    std::fs::read_dir(data.join("artifacts"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

async fn cold_start_header(addr: std::net::SocketAddr, function: &str, input: &str) -> String {
    let r = invoke(addr, function, input.to_owned()).await;
    assert_eq!(
        (r.status, &r.body[..]),
        (200, input.as_bytes()),
        "{function}"
    );
    r.header("x-tern-cold-start").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_profile_compiles_on_first_use_once_and_keeps_no_compiled_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples = vec!["echo".into()];
    cfg.runtime_profile = RuntimeProfile::Baseline;
    let node = start(cfg.clone()).await;
    let addr = node.addr();
    let text = metrics_text(addr, None).await;
    assert!(
        text.contains("tern_runtime_profile{profile=\"baseline\"} 1\n"),
        "{text}"
    );
    // The deploy compiled echo once to validate it, kept its bytes and nothing compiled.
    assert_eq!(metric(addr, "tern_compiles_total").await, 1.0);
    assert_eq!(
        (
            files_with(dir.path(), "wasm"),
            files_with(dir.path(), "cwasm")
        ),
        (1, 0)
    );
    assert_eq!(metric(addr, "tern_loaded_modules").await, 0.0);

    // Nothing preheated: the first call compiles, the next ones reuse.
    assert_eq!(cold_start_header(addr, "echo", "first").await, "true");
    assert_eq!(metric(addr, "tern_compiles_total").await, 2.0);
    assert_eq!(cold_start_header(addr, "echo", "second").await, "false");
    assert_eq!(metric(addr, "tern_compiles_total").await, 2.0);

    // A second function called by several callers at once is compiled once for all of them.
    let r = request(addr, Method::PUT, "/v1/functions/hello", wasm("echo")).await;
    assert_eq!(r.status, 201);
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/probe",
        wasm("sandbox-probe"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let compiled = metric(addr, "tern_compiles_total").await;
    // `hello` is echo's module: already validated, so only the probe compiled.
    assert_eq!(compiled, 3.0);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        calls.spawn(async move { invoke(addr, "probe", format!("{i}")).await });
    }
    while let Some(r) = calls.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(metric(addr, "tern_compiles_total").await, compiled + 1.0);

    // A first call's compile does not count against the function's time limit (it is
    // bounded by compile_timeout_ms): a 5 ms function whose first call took longer than that
    // to compile still answers.
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/quick?timeout_ms=5",
        wasm("matmul-json"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = invoke(addr, "quick", r#"{"n":4}"#).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-tern-cold-start"), Some("true"));
    let took_us: u64 = r.header("x-tern-duration-us").unwrap().parse().unwrap();
    assert!(
        took_us > 5_000,
        "the compile took {took_us} µs: not longer than the limit, so this shows nothing"
    );

    // A node that restarts compiles again on first use: no artifact cache.
    node.shutdown().await.unwrap();
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(metric(addr, "tern_compiles_total").await, 0.0);
    assert_eq!(
        cold_start_header(addr, "hello", "after restart").await,
        "true"
    );
    assert_eq!(metric(addr, "tern_compiles_total").await, 1.0);
    assert_eq!(files_with(dir.path(), "cwasm"), 0);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_profile_refuses_what_the_optimised_profile_refuses_and_keeps_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.examples.clear();
    cfg.runtime_profile = RuntimeProfile::Baseline;
    let node = start(cfg).await;
    let addr = node.addr();
    let r = request(
        addr,
        Method::PUT,
        "/v1/functions/junk",
        Bytes::from_static(b"\0asm\x01\0\0\0\x01\x05"),
    )
    .await;
    assert_eq!((r.status, code(&r).as_str()), (400, "invalid_module"));
    assert_eq!(files_with(dir.path(), "wasm"), 0);
    node.shutdown().await.unwrap();
}

/// With cells, the cell compiles on first use (the node never compiles to serve) and the
/// node's metrics count the cell's cold start and reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cells_the_baseline_profile_compiles_in_the_cell_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.examples = vec!["echo".into()];
    cfg.runtime_profile = RuntimeProfile::Baseline;
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(cold_start_header(addr, "echo", "in a cell").await, "true");
    assert_eq!(cold_start_header(addr, "echo", "again").await, "false");
    let labels = "function=\"echo\"";
    assert_eq!(
        metric_labelled(addr, "tern_cold_starts_total", labels).await,
        1.0
    );
    assert_eq!(
        metric_labelled(addr, "tern_module_reuse_total", labels).await,
        1.0
    );
    // Only the deploy's validation compiled in the node.
    assert_eq!(metric(addr, "tern_compiles_total").await, 1.0);
    assert_eq!(files_with(dir.path(), "cwasm"), 0);
    node.shutdown().await.unwrap();
}

/// The product's profile in cells: the cell has the function preheated, so the first call
/// is a reuse hit, and the node counts it as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cells_the_optimised_profile_serves_the_first_call_preheated() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cfg) = cells_config(dir.path(), Isolation::Lci) else {
        return;
    };
    cfg.examples = vec!["echo".into()];
    let node = start(cfg).await;
    let addr = node.addr();
    assert_eq!(cold_start_header(addr, "echo", "warm").await, "false");
    let labels = "function=\"echo\"";
    assert_eq!(
        metric_labelled(addr, "tern_cold_starts_total", labels).await,
        0.0
    );
    assert_eq!(
        metric_labelled(addr, "tern_module_reuse_total", labels).await,
        1.0
    );
    node.shutdown().await.unwrap();
}
