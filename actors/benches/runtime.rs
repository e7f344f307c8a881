//! Micro-benchmarks of the invocation path, in process (no HTTP):
//! - `execute/echo`: one MEU — fresh Store, instantiate from the preheated `InstancePre`, run
//!   echo to completion (our "instantiate + run echo" target: p50 ≤ 30 µs);
//! - `execute/echo-component`: the same for the `wasi:http/proxy` echo component invoked with
//!   plain input (a `POST /`), and `execute/echo-component-http` with an `HttpCall` as the
//!   `/fn/` route sends it (target: instantiate + run ≤ 50 µs);
//! - `pipeline/echo`: the same through `Pipeline::invoke` and the supervised actors (a plain
//!   call: SchedulerAgent → RuntimePool), to show what the actors cost per request;
//! - `*_x64`: 64 concurrent requests per iteration, the throughput view (no single mailbox
//!   may cap throughput: compare pipeline_x64 with execute_x64).
//!
//! Needs `functions/dist/echo.wasm` and `functions/dist/components/echo.wasm`
//! (scripts/build-functions.sh).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ractor::Actor;
use tern_actors::{Invocation, NodeSupervisor, Pipeline, Services, ServicesConfig};
use tern_metrics::Metrics;
use tern_placement::LocalFirst;
use tern_runtime::isolation::InProcess;
use tern_runtime::{Meu, Prepared, Runtime, RuntimeConfig};
use tern_wire::{FunctionInfo, FunctionName};

fn echo_wasm() -> Bytes {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../functions/dist/echo.wasm");
    Bytes::from(std::fs::read(path).expect("build the functions first: scripts/build-functions.sh"))
}

fn echo_component() -> Bytes {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../functions/dist/components/echo.wasm"
    );
    Bytes::from(std::fs::read(path).expect("build the functions first: scripts/build-functions.sh"))
}

fn info_for(name: &FunctionName, prepared: &Prepared) -> FunctionInfo {
    FunctionInfo {
        name: name.clone(),
        hash: prepared.hash,
        version: 1,
        timeout_ms: 10_000,
        memory_mb: 128,
        size_bytes: prepared.size_bytes,
        deployed_at_ms: 0,
        max_instances: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let name: FunctionName = "echo".parse().expect("name");
    let metrics = Arc::new(Metrics::default());
    let (runtime, pipeline) = rt.block_on(async {
        let metrics = metrics.clone();
        let runtime = Runtime::new(RuntimeConfig::new("bench", dir.path()), metrics.clone())
            .expect("runtime");
        let prepared = runtime.prepare(echo_wasm()).await.expect("prepare");
        runtime.install(info_for(&name, &prepared), prepared);
        let component: FunctionName = "echo-component".parse().expect("name");
        let prepared = runtime.prepare(echo_component()).await.expect("prepare");
        runtime.install(info_for(&component, &prepared), prepared);
        let services = Services::new(
            ServicesConfig {
                node_name: "bench".into(),
                queue_cap: 100_000,
                map_parallelism: 2,
                class_max_memory_mb: 512,
                class_max_timeout_ms: 900_000,
                class: tern_wire::NodeClass::Standard,
            },
            runtime.clone(),
            metrics,
            Arc::new(InProcess {
                max_output_bytes: 1 << 20,
            }),
            Arc::new(LocalFirst),
        );
        Actor::spawn(None, NodeSupervisor, services.clone())
            .await
            .expect("supervisor");
        (runtime, Pipeline::new(services))
    });
    let sandbox = InProcess {
        max_output_bytes: 1 << 20,
    };
    let meu = Meu::new("bench", name.clone(), Bytes::from_static(b"hello"), 1);
    let inv = Invocation {
        request_id: "bench".into(),
        function: name,
        input: Bytes::from_static(b"hello"),
        map: false,
        trace: tracing::Span::none(),
        stream: tern_runtime::AnswerStream::default(),
    };

    // Side by side in one run: how much of each linear memory stays resident between
    // instances (memset instead of madvise + page faults).
    let mut g = c.benchmark_group("keep_resident");
    g.measurement_time(Duration::from_secs(4));
    for kib in [0usize, 1024, 4096] {
        let runtime = rt.block_on(async {
            let mut cfg = RuntimeConfig::new("bench", dir.path().join(format!("kr{kib}")));
            cfg.keep_resident_bytes = kib << 10;
            cfg.max_instances = 128;
            let runtime = Runtime::new(cfg, Arc::new(Metrics::default())).expect("runtime");
            let prepared = runtime.prepare(echo_wasm()).await.expect("prepare");
            runtime.install(info_for(&meu.function, &prepared), prepared);
            runtime
        });
        g.bench_function(format!("execute/echo/{kib}KiB"), |b| {
            b.to_async(&rt).iter(|| async {
                let out = runtime.execute(fresh(&meu), &sandbox).await.expect("echo");
                assert_eq!(&out.output[..], b"hello");
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("single");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("execute/echo", |b| {
        b.to_async(&rt).iter(|| async {
            let out = runtime.execute(fresh(&meu), &sandbox).await.expect("echo");
            assert_eq!(&out.output[..], b"hello");
        })
    });
    let plain = Meu::new(
        "bench",
        "echo-component".parse().expect("name"),
        Bytes::from_static(b"hello"),
        1,
    );
    g.bench_function("execute/echo-component", |b| {
        b.to_async(&rt).iter(|| async {
            let out = runtime
                .execute(fresh(&plain), &sandbox)
                .await
                .expect("echo");
            assert_eq!(&out.output[..], b"hello");
        })
    });
    let call = tern_wire::HttpCall {
        method: "POST".into(),
        path_and_query: "/".into(),
        headers: vec![("host".into(), b"bench".to_vec())],
        body: b"hello".to_vec(),
        trailers: Vec::new(),
    };
    let routed = Meu {
        input: Bytes::from(call.encode().expect("encode")),
        ..plain.clone()
    };
    g.bench_function("execute/echo-component-http", |b| {
        b.to_async(&rt).iter(|| async {
            let out = runtime
                .execute(fresh(&routed), &sandbox)
                .await
                .expect("echo");
            let answer = tern_wire::HttpAnswer::decode(&out.output)
                .expect("an answer")
                .expect("a whole answer");
            assert_eq!((answer.status, &answer.body[..]), (200, &b"hello"[..]));
        })
    });
    // 256 KiB each way: 64 writes of 4 KiB by the guest, each handed to the reader as the
    // guest writes it. None of them should cost the guest its place on the fast lane.
    let big: Bytes = (0..256u32 << 10).map(|i| (i % 251) as u8).collect();
    let large = Meu {
        input: big.clone(),
        ..plain.clone()
    };
    let moves_before = metrics
        .slow_lane_moves
        .load(std::sync::atomic::Ordering::Relaxed);
    g.bench_function("execute/echo-component-256KiB", |b| {
        b.to_async(&rt).iter(|| async {
            let out = runtime
                .execute(fresh(&large), &sandbox)
                .await
                .expect("echo");
            assert_eq!(out.output.len(), big.len());
        })
    });
    println!(
        "execute/echo-component-256KiB: {} guests moved to the slow lane",
        metrics
            .slow_lane_moves
            .load(std::sync::atomic::Ordering::Relaxed)
            - moves_before
    );
    g.bench_function("pipeline/echo", |b| {
        b.to_async(&rt).iter(|| async {
            let out = pipeline.invoke(inv.clone()).await.expect("echo");
            assert_eq!(&out.output[..], b"hello");
        })
    });
    g.finish();

    let mut g = c.benchmark_group("concurrent");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(64));
    g.bench_function("execute_x64/echo", |b| {
        b.to_async(&rt).iter(|| async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (runtime, meu) = (runtime.clone(), fresh(&meu));
                    tokio::spawn(async move {
                        let sandbox = InProcess {
                            max_output_bytes: 1 << 20,
                        };
                        runtime.execute(meu, &sandbox).await.map(|o| o.output.len())
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.expect("join").expect("echo"), 5);
            }
        })
    });
    g.bench_function("pipeline_x64/echo", |b| {
        b.to_async(&rt).iter(|| async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (pipeline, inv) = (pipeline.clone(), inv.clone());
                    tokio::spawn(async move { pipeline.invoke(inv).await.map(|o| o.output.len()) })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.expect("join").expect("echo"), 5);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// `meu` accepted now: its time limit runs from acceptance, so a unit reused across a long
/// benchmark would run out of time.
fn fresh(meu: &Meu) -> Meu {
    Meu {
        accepted_at: std::time::Instant::now(),
        ..meu.clone()
    }
}
