//! End-to-end tests of the load generator against an in-process hyper server.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tern_bench::http::HttpConn;
use tern_bench::load::{LoadConfig, LoadMode};
use tern_bench::report::ModeName;
use tern_bench::{BenchError, request_once};
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    /// Accepted TCP connections.
    accepted: AtomicU64,
    /// Every request except `/metrics`.
    total: AtomicU64,
    echo: AtomicU64,
    flaky: AtomicU64,
    cold_sent: AtomicBool,
    /// `/metrics` answers 401 without `authorization: Bearer t0ken`, as a node with
    /// authentication does.
    metrics_need_token: AtomicBool,
    /// `POST /t/{name}`: requests and the last body seen, per name.
    per_target: Mutex<BTreeMap<String, (u64, Bytes)>>,
}

struct TestServer {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl TestServer {
    fn get(&self, f: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        f(&self.counts).load(Ordering::SeqCst)
    }
}

async fn start_server() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.accepted.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, c.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestServer { addr, counts }
}

fn metrics_text(c: &Counts) -> String {
    let total = c.total.load(Ordering::SeqCst);
    let cold = u64::from(c.cold_sent.load(Ordering::SeqCst));
    format!(
        "# HELP tern_meus_total Executions.\n\
         # TYPE tern_meus_total counter\n\
         tern_meus_total{{function=\"even\"}} {}\n\
         tern_meus_total{{function=\"odd \\\"q\\\"\"}} {}\n\
         # TYPE tern_cold_starts_total counter\n\
         tern_cold_starts_total{{function=\"even\"}} {cold}\n\
         tern_module_reuse_total{{function=\"even\"}} {}\n\
         tern_module_reuse_total{{function=\"odd \\\"q\\\"\"}} 0\n",
        total.div_ceil(2),
        total / 2,
        total - cold,
    )
}

async fn handle(
    req: Request<Incoming>,
    c: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/metrics" {
        let authorized = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == "Bearer t0ken");
        if c.metrics_need_token.load(Ordering::SeqCst) && !authorized {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
            return Ok(resp);
        }
        return Ok(Response::new(Full::new(Bytes::from(metrics_text(&c)))));
    }
    c.total.fetch_add(1, Ordering::SeqCst);
    let cold = !c.cold_sent.swap(true, Ordering::SeqCst);
    let mut resp = match (req.method().clone(), path.as_str()) {
        (Method::POST, "/echo") => {
            c.echo.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(Full::new(body))
        }
        (Method::GET, "/flaky") => {
            let n = c.flaky.fetch_add(1, Ordering::SeqCst) + 1;
            if n.is_multiple_of(5) {
                let mut r = Response::new(Full::new(Bytes::from_static(
                    br#"{"error":{"code":"overloaded","message":"x"}}"#,
                )));
                *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                r
            } else {
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        }
        (Method::POST, p) if p.starts_with("/t/") => {
            let name = p["/t/".len()..].to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let node = format!("node-{}", name.len());
            {
                let mut seen = c.per_target.lock().unwrap();
                let entry = seen.entry(name).or_default();
                entry.0 += 1;
                entry.1 = body;
            }
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
            r.headers_mut().insert("x-tern-node", node.parse().unwrap());
            r.headers_mut()
                .insert("x-tern-duration-us", "17".parse().unwrap());
            r
        }
        (Method::GET, "/slow") => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Response::new(Full::new(Bytes::new()))
        }
        (Method::GET, "/hang") => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(Full::new(Bytes::new()))
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"nope")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    if cold {
        resp.headers_mut()
            .insert("x-tern-cold-start", "true".parse().unwrap());
    }
    Ok(resp)
}

fn config(addr: SocketAddr, method: Method, path: &str, mode: LoadMode, ms: u64) -> LoadConfig {
    LoadConfig {
        addrs: vec![addr],
        method,
        path_and_query: path.to_owned(),
        headers: vec![("x-test".to_owned(), "1".to_owned())],
        body: Bytes::from_static(b"hello tern"),
        mode,
        duration: Duration::from_millis(ms),
        warmup: Duration::ZERO,
        progress: false,
        request_timeout: Duration::from_secs(5),
    }
}

fn assert_percentiles_ordered(r: &tern_bench::Report) {
    let l = &r.latency_us;
    assert!(l.p50 > 0, "{l:?}");
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert!(l.mean > 0.0 && l.mean <= l.max as f64, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_conn_keeps_alive_and_reads_responses() {
    let s = start_server().await;
    let mut conn = HttpConn::connect(s.addr).await.unwrap();
    for i in 0..3 {
        let body = Bytes::from(format!("ping {i}"));
        let r = conn
            .request(Method::POST, "/echo", &[("X-A", "b")], body.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        assert_eq!(r.header("Content-Length"), Some("6"));
        // Only the very first request of the server is a cold start.
        assert_eq!(r.header("X-TERN-COLD-START"), (i == 0).then_some("true"));
    }
    assert_eq!(s.get(|c| &c.accepted), 1, "one connection for 3 requests");
    for _ in 0..4 {
        let r = conn
            .request(Method::GET, "/flaky", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let r = request_once(s.addr, Method::GET, "/flaky", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(
        tern_bench::load::error_code(r.status, &r.body),
        "overloaded"
    );
    assert_eq!(s.get(|c| &c.accepted), 2);
    let bad = conn
        .request(Method::GET, "no-slash", &[], Bytes::new())
        .await;
    assert!(matches!(bad, Err(BenchError::InvalidRequest(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_match_the_server() {
    let s = start_server().await;
    let cfg = config(
        s.addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: 8 },
        700,
    );
    let r = tern_bench::load::run(&cfg).await.unwrap();
    let served = s.get(|c| &c.echo);
    assert!(r.requests > 50, "{r:?}");
    assert_eq!(r.requests, served, "every request sent in the window");
    assert_eq!(r.ok, r.requests);
    assert!(r.errors_by_code.is_empty(), "{:?}", r.errors_by_code);
    assert_percentiles_ordered(&r);
    let expected_rps = r.requests as f64 / 0.7;
    assert!((r.throughput_rps - expected_rps).abs() < 1e-6 * expected_rps);
    // Keep-alive: 8 pool connections + the two /metrics scrapes, nothing else.
    assert_eq!(s.get(|c| &c.accepted), 10);
    assert_eq!(r.cold_start_responses, 1);
    assert!(r.server.available);
    assert_eq!(r.server.meus, r.requests);
    assert_eq!(r.server.cold_starts, 1);
    assert_eq!(r.server.reuse_hits, r.requests - 1);
    let rate = r.server.reuse_hit_rate.unwrap();
    assert!((rate - (r.requests - 1) as f64 / r.requests as f64).abs() < 1e-12);
    assert_eq!(r.config.mode, ModeName::Closed);
    assert_eq!(r.config.connections, 8);
    assert_eq!(r.config.rate_per_sec, None);
    // The text rendering and the JSON of a real run.
    let text = r.render_text();
    assert!(text.contains("closed loop, 8 connection(s)"), "{text}");
    let back = tern_bench::Report::from_json(&r.to_json_pretty()).unwrap();
    assert_eq!(back.requests, r.requests);
    assert_eq!(back.latency_us.p99, r.latency_us.p99);
    assert_eq!(back.server.meus, r.server.meus);
}

/// With two entry nodes the connections are split between them, every request is counted by
/// the node it went to, and the node counters are the sum of both nodes'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_every_entry_node_and_their_counters_are_summed() {
    let (s1, s2) = (start_server().await, start_server().await);
    let mut cfg = config(
        s1.addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: 6 },
        500,
    );
    cfg.addrs.push(s2.addr);
    let r = tern_bench::load::run(&cfg).await.unwrap();
    let (a, b) = (s1.get(|c| &c.echo), s2.get(|c| &c.echo));
    assert!(a > 10 && b > 10, "both entries served: {a} and {b}");
    assert_eq!(r.requests, a + b, "every request sent in the window");
    assert_eq!(r.ok, r.requests);
    // 3 pool connections on each, and each scraped twice.
    assert_eq!((s1.get(|c| &c.accepted), s2.get(|c| &c.accepted)), (5, 5));
    assert!(r.server.available);
    assert_eq!(r.server.meus, r.requests, "summed over both nodes");
    assert_eq!(r.server.cold_starts, 2, "one cold start on each node");
    assert_eq!(r.config.entries, [s1.addr.to_string(), s2.addr.to_string()]);
    assert!(r.render_text().contains("2 nodes"), "{}", r.render_text());
    // One entry that cannot be scraped leaves the counters unavailable, not half of them.
    s2.counts.metrics_need_token.store(true, Ordering::SeqCst);
    let r = tern_bench::load::run(&cfg).await.unwrap();
    assert!(!r.server.available, "{:?}", r.server);
    assert!(r.ok > 0);
    // An entry given twice, or more entries than connections, is a configuration error.
    cfg.addrs.push(s1.addr);
    assert!(matches!(
        tern_bench::load::run(&cfg).await,
        Err(BenchError::Config(e)) if e.contains("twice")
    ));
    cfg.addrs.pop();
    cfg.mode = LoadMode::Closed { connections: 1 };
    assert!(matches!(
        tern_bench::load::run(&cfg).await,
        Err(BenchError::Config(_))
    ));
    // No entry at all is a configuration error.
    cfg.addrs.clear();
    assert!(matches!(
        tern_bench::load::run(&cfg).await,
        Err(BenchError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_scrape_sends_the_loads_bearer_token() {
    let s = start_server().await;
    s.counts.metrics_need_token.store(true, Ordering::SeqCst);
    let mut cfg = config(
        s.addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: 2 },
        200,
    );
    let without = tern_bench::load::run(&cfg).await.unwrap();
    assert!(
        !without.server.available,
        "401 on /metrics: no server counters"
    );
    cfg.headers
        .push(("Authorization".to_owned(), "Bearer t0ken".to_owned()));
    let with = tern_bench::load::run(&cfg).await.unwrap();
    assert!(with.server.available);
    assert!(with.server.meus > 0, "{:?}", with.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_by_code() {
    let s = start_server().await;
    let cfg = config(
        s.addr,
        Method::GET,
        "/flaky",
        LoadMode::Closed { connections: 4 },
        600,
    );
    let r = tern_bench::load::run(&cfg).await.unwrap();
    let served = s.get(|c| &c.flaky);
    assert!(served >= 50, "too few requests to judge: {served}");
    assert_eq!(r.requests, served);
    let overloaded = r.errors_by_code.get("overloaded").copied().unwrap_or(0);
    assert_eq!(overloaded, served / 5, "{:?}", r.errors_by_code);
    assert_eq!(r.errors_by_code.len(), 1, "{:?}", r.errors_by_code);
    assert_eq!(r.ok, served - served / 5);
    assert_eq!(r.errors(), overloaded);
    let share = overloaded as f64 / r.requests as f64;
    assert!((share - 0.2).abs() < 0.02, "{share}");
    assert_percentiles_ordered(&r);
    assert!(r.render_text().contains("overloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_requests_are_sent_but_not_recorded() {
    let s = start_server().await;
    let mut cfg = config(
        s.addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: 2 },
        500,
    );
    cfg.warmup = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let r = tern_bench::load::run(&cfg).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800));
    let served = s.get(|c| &c.echo);
    assert!(r.requests > 20, "{r:?}");
    assert!(r.requests < served, "warm-up requests were sent");
    // The cold start happened during warm-up.
    assert_eq!(r.cold_start_responses, 0);
    assert_eq!(r.server.cold_starts, 0);
    // The window is 5/8 of the run; allow for timing noise on a busy machine.
    let share = r.requests as f64 / served as f64;
    assert!((0.4..0.85).contains(&share), "{share}");
    // The server saw about what we recorded in the window (scraped at warm-up end).
    let diff = r.server.meus.abs_diff(r.requests) as f64;
    assert!(
        diff <= 0.15 * r.requests as f64 + 4.0,
        "{} vs {}",
        r.server.meus,
        r.requests
    );
    assert_eq!(r.ok, r.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_at_the_scheduled_rate() {
    let s = start_server().await;
    let mut cfg = config(
        s.addr,
        Method::POST,
        "/echo",
        LoadMode::Open {
            rate_per_sec: 200.0,
            connections: 4,
        },
        1000,
    );
    cfg.warmup = Duration::from_millis(250);
    cfg.progress = true;
    let started = std::time::Instant::now();
    let r = tern_bench::load::run(&cfg).await.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1240), "{elapsed:?}");
    assert!((170..=230).contains(&r.requests), "{}", r.requests);
    assert_eq!(r.ok, r.requests);
    let served = s.get(|c| &c.echo);
    assert!((212..=288).contains(&served), "{served}");
    assert!(
        (r.throughput_rps - 200.0).abs() <= 30.0,
        "{}",
        r.throughput_rps
    );
    assert_percentiles_ordered(&r);
    assert_eq!(r.config.mode, ModeName::Open);
    assert_eq!(r.config.rate_per_sec, Some(200.0));
    assert!(r.render_text().contains("open loop, 200 req/s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_latency_includes_queueing() {
    // One connection, 50 ms per request, 40 req/s scheduled: requests queue up and the
    // k-th one (intended at 25k ms) completes at ~50(k+1) ms.
    let s = start_server().await;
    let cfg = config(
        s.addr,
        Method::GET,
        "/slow",
        LoadMode::Open {
            rate_per_sec: 40.0,
            connections: 1,
        },
        500,
    );
    let open = tern_bench::load::run(&cfg).await.unwrap();
    assert_eq!(open.requests, 20);
    assert_eq!(open.ok, 20);
    assert!(open.latency_us.max >= 450_000, "{:?}", open.latency_us);
    assert!(open.latency_us.p50 >= 220_000, "{:?}", open.latency_us);

    // The same endpoint in a closed loop only ever sees the service time.
    let closed_cfg = config(
        s.addr,
        Method::GET,
        "/slow",
        LoadMode::Closed { connections: 1 },
        300,
    );
    let closed = tern_bench::load::run(&closed_cfg).await.unwrap();
    assert!(closed.latency_us.p50 >= 50_000, "{:?}", closed.latency_us);
    assert!(closed.latency_us.p50 < 200_000, "{:?}", closed.latency_us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_and_reconnect() {
    let s = start_server().await;
    let mut cfg = config(
        s.addr,
        Method::GET,
        "/hang",
        LoadMode::Closed { connections: 2 },
        400,
    );
    cfg.request_timeout = Duration::from_millis(150);
    let r = tern_bench::load::run(&cfg).await.unwrap();
    let timeouts = r.errors_by_code.get("client_timeout").copied().unwrap_or(0);
    assert!(timeouts >= 4, "{:?}", r.errors_by_code);
    assert_eq!(r.requests, timeouts);
    assert_eq!(r.ok, 0);
    assert_eq!(r.latency_us.max, 0);
    // Each timed-out connection was replaced by a fresh one.
    assert!(
        s.get(|c| &c.accepted) >= 2 + timeouts,
        "{}",
        s.get(|c| &c.accepted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_count_as_io_and_missing_metrics_is_fine() {
    // Accepts connections and closes them at once: every request fails, and so does
    // the /metrics scrape.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let cfg = config(
        addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: 2 },
        300,
    );
    let r = tern_bench::load::run(&cfg).await.unwrap();
    assert_eq!(r.ok, 0);
    assert!(r.requests >= 4, "{r:?}");
    assert_eq!(r.errors_by_code.keys().collect::<Vec<_>>(), ["io"]);
    assert!(!r.server.available);
    assert_eq!(r.server.reuse_hit_rate, None);
    assert!(r.render_text().contains("/metrics unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_runs_are_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cfg = config(
        addr,
        Method::GET,
        "/",
        LoadMode::Closed { connections: 3 },
        100,
    );
    let err = tern_bench::load::run(&cfg).await.unwrap_err();
    assert!(matches!(err, BenchError::Connect { .. }), "{err:?}");
    assert!(
        request_once(addr, Method::GET, "/", &[], Bytes::new())
            .await
            .is_err()
    );

    let mut zero = cfg.clone();
    zero.mode = LoadMode::Closed { connections: 0 };
    assert!(matches!(
        tern_bench::load::run(&zero).await,
        Err(BenchError::Config(_))
    ));
    let mut no_rate = cfg.clone();
    no_rate.mode = LoadMode::Open {
        rate_per_sec: 0.0,
        connections: 1,
    };
    assert!(matches!(
        tern_bench::load::run(&no_rate).await,
        Err(BenchError::Config(_))
    ));
    let mut bad_header = cfg;
    bad_header.headers = vec![("bad header".into(), "x".into())];
    assert!(matches!(
        tern_bench::load::run(&bad_header).await,
        Err(BenchError::InvalidRequest(_))
    ));
}

/// Soft RLIMIT_NOFILE from /proc (Linux); a conservative 1024 elsewhere.
fn fd_soft_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections() {
    // Client and server share the process: each connection costs two fds. Other tests
    // run concurrently, so leave plenty of headroom.
    let n = (fd_soft_limit().saturating_sub(400) / 3).clamp(100, 1500) as usize;
    let s = start_server().await;
    let cfg = config(
        s.addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: n },
        400,
    );
    let r = tern_bench::load::run(&cfg).await.unwrap();
    assert!(r.errors_by_code.is_empty(), "{:?}", r.errors_by_code);
    assert!(r.requests >= n as u64, "{} < {n}", r.requests);
    assert_eq!(r.requests, s.get(|c| &c.echo));
    assert_eq!(s.get(|c| &c.accepted), n as u64 + 2);
    assert_percentiles_ordered(&r);
}

/// A replay plan's requests reach their own targets with their own bodies, at their planned
/// times, and every measured one comes back as a record in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_each_planned_request_to_its_target_and_records_it() {
    use tern_bench::replay::{PlannedRequest, ReplayEcho, ReplayPlan, ReplayTarget};
    let s = start_server().await;
    let target = |name: &str, body: &'static str| ReplayTarget {
        trace_function: name.len(),
        function: name.to_owned(),
        path_and_query: format!("/t/{name}"),
        body: Bytes::from_static(body.as_bytes()),
        n: Some(name.len() as u32),
    };
    // 30 requests over 600 ms: a to "a", b to "bb", every third to the missing target
    // "/nope" (404), the first 100 ms as warm-up.
    let mut targets = vec![target("a", "body-a"), target("bb", "body-b")];
    targets.push(ReplayTarget {
        path_and_query: "/nope".into(),
        ..target("ccc", "")
    });
    let requests: Vec<PlannedRequest> = (0..30u32)
        .map(|i| PlannedRequest {
            at: Duration::from_millis(20 * u64::from(i)),
            target: if i % 3 == 2 { 2 } else { i % 2 },
        })
        .collect();
    let plan = ReplayPlan {
        targets,
        requests: requests.clone(),
        length: Duration::from_millis(600),
        echo: ReplayEcho {
            minute_start: 0,
            minute_end: 1,
            scale: 1,
            speedup: 100.0,
            seed: 1,
            function_template: "{i}".into(),
            trace_functions: 3,
            deployed_functions: 3,
            work: "fixed".into(),
            planned_requests: 30,
        },
    };
    let mut cfg = config(
        s.addr,
        Method::POST,
        "/unused",
        LoadMode::Replay {
            plan: Arc::new(plan.clone()),
            connections: 3,
        },
        // Not used by a replay: the plan says how long it lasts.
        60_000,
    );
    cfg.warmup = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let buf = SharedBuf::default();
    let (r, written) = tern_bench::run_with_records(&cfg, buf.clone())
        .await
        .unwrap();
    // The run lasts the plan's length, however early its last request was answered.
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(written.unwrap(), 25);

    let seen = s.counts.per_target.lock().unwrap().clone();
    let sent_to = |t: u32| requests.iter().filter(|p| p.target == t).count() as u64;
    assert_eq!(seen["a"], (sent_to(0), Bytes::from_static(b"body-a")));
    assert_eq!(seen["bb"], (sent_to(1), Bytes::from_static(b"body-b")));
    assert_eq!(seen.len(), 2);
    // Requests planned at 100 ms or later are measured: 25 of the 30.
    assert_eq!(r.requests, 25);
    assert_eq!(r.errors_by_code.get("http_404"), Some(&9));
    assert_eq!(r.ok, 16);
    assert_eq!(r.config.mode, ModeName::Replay);
    assert!((r.config.duration_secs - 0.5).abs() < 1e-9);
    assert_eq!(r.config.replay, Some(plan.echo.clone()));
    assert!(r.render_text().contains("trace replay, minutes 0-1"));

    // A JSON line per measured request (in the order they ended), with each target's
    // function, trace row and size.
    let mut lines: Vec<serde_json::Value> = String::from_utf8(buf.0.lock().unwrap().clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    lines.sort_by(|a, b| {
        a["at_ms"]
            .as_f64()
            .unwrap()
            .total_cmp(&b["at_ms"].as_f64().unwrap())
    });
    assert_eq!(lines.len(), 25);
    for (line, planned) in lines.iter().zip(&requests[5..]) {
        assert_eq!(line["at_ms"], planned.at.as_secs_f64() * 1e3, "{line}");
        let target = &plan.targets[planned.target as usize];
        assert_eq!(line["function"], target.function.as_str(), "{line}");
        assert_eq!(line["trace_function"], target.trace_function, "{line}");
        assert_eq!(line["n"], target.n.unwrap(), "{line}");
        assert!(line["latency_us"].as_u64().unwrap() > 0, "{line}");
        if planned.target == 2 {
            assert_eq!(line["status"], 404, "{line}");
            assert_eq!(line["code"], "http_404", "{line}");
            assert_eq!(line["node"], serde_json::Value::Null, "{line}");
            assert_eq!(line["server_us"], serde_json::Value::Null, "{line}");
        } else {
            assert_eq!(line["status"], 200, "{line}");
            assert_eq!(line["code"], serde_json::Value::Null, "{line}");
            assert_eq!(line["node"], format!("node-{}", target.function.len()));
            assert_eq!(line["server_us"], 17, "{line}");
        }
        assert_eq!(line["cold"], false, "{line}");
    }
}

/// A `Write` the test can read after the run.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer that fails does not stop the load: the report comes back with the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_writer_leaves_the_load_and_its_report_intact() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }
    let s = start_server().await;
    let cfg = config(
        s.addr,
        Method::POST,
        "/echo",
        LoadMode::Closed { connections: 2 },
        300,
    );
    let (r, written) = tern_bench::run_with_records(&cfg, Broken).await.unwrap();
    assert!(r.requests > 10, "{r:?}");
    assert_eq!(r.ok, r.requests);
    assert_eq!(written.unwrap_err().to_string(), "disk full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_refuses_a_plan_naming_a_missing_target_out_of_order_or_all_warmup() {
    use tern_bench::replay::{PlannedRequest, ReplayEcho, ReplayPlan, ReplayTarget};
    // One target; requests at the given (ms, target).
    let plan = |requests: &[(u64, u32)]| ReplayPlan {
        targets: vec![ReplayTarget {
            trace_function: 0,
            function: "f".into(),
            path_and_query: "/t/f".into(),
            body: Bytes::new(),
            n: None,
        }],
        requests: requests
            .iter()
            .map(|&(ms, target)| PlannedRequest {
                at: Duration::from_millis(ms),
                target,
            })
            .collect(),
        length: Duration::from_secs(1),
        echo: ReplayEcho {
            minute_start: 0,
            minute_end: 1,
            scale: 1,
            speedup: 60.0,
            seed: 1,
            function_template: "f".into(),
            trace_functions: 1,
            deployed_functions: 1,
            work: "fixed".into(),
            planned_requests: requests.len() as u64,
        },
    };
    // Nothing listens on the discard port: every case must be refused before connecting.
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let refused = |plan: ReplayPlan, warmup_ms: u64| {
        let mut cfg = config(
            addr,
            Method::POST,
            "/x",
            LoadMode::Replay {
                plan: Arc::new(plan),
                connections: 1,
            },
            1,
        );
        cfg.warmup = Duration::from_millis(warmup_ms);
        async move {
            match tern_bench::run(&cfg).await {
                Err(BenchError::Config(m)) => m,
                other => panic!("expected a config error, got {other:?}"),
            }
        }
    };
    assert!(refused(plan(&[(0, 1)]), 0).await.contains("does not have"));
    assert!(
        refused(plan(&[(1000, 0)]), 0)
            .await
            .contains("past its end")
    );
    assert!(
        refused(plan(&[(5, 0), (4, 0)]), 0)
            .await
            .contains("time order")
    );
    assert!(
        refused(plan(&[(0, 0)]), 1000)
            .await
            .contains("nothing of the")
    );
}
