//! The load generator: closed loop (N connections, each send → wait → repeat) or open
//! loop (requests scheduled at a fixed rate, or at the times of a [`ReplayPlan`], over a pool
//! of N connections, latency measured from the *intended* send time, so there is no
//! coordinated omission).
//!
//! # Design
//!
//! All connections are opened before the clock starts (at most
//! [`CONNECT_CONCURRENCY`] at a time, so 10 000 connections do not overflow the
//! server's accept backlog). They are then spread over at most [`MAX_LANES`] *lanes*:
//! a lane is one tokio task that drives its connections concurrently
//! (`FuturesUnordered`) and owns a private latency histogram and counters, so the hot
//! path takes no lock; lanes are merged at the end. (A histogram per connection would
//! cost ~140 KiB each, i.e. gigabytes for 10 000 connections.)

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use hyper::Method;
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};

use crate::BenchError;
use crate::http::{HttpConn, Prepared, request_once};
use crate::prom;
use crate::record::RequestRecord;
use crate::replay::ReplayPlan;
use crate::report::{ConfigEcho, LatencySummary, ModeName, Report, ServerStats};

/// At most this many connection attempts are in flight while opening the pool.
pub const CONNECT_CONCURRENCY: usize = 256;
/// Connections are multiplexed onto at most this many tasks (each with one histogram).
pub const MAX_LANES: usize = 64;
/// Highest recordable latency; slower requests are recorded as this value.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Pause after a transport error before the connection is used (re-opened) again.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Minimum time allowed for opening a connection of the initial pool.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Minimum time allowed for a `/metrics` scrape.
const MIN_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Error code for transport failures (connection refused/reset/closed mid-request).
pub const CODE_IO: &str = "io";
/// Error code for requests that did not complete within `request_timeout`.
pub const CODE_CLIENT_TIMEOUT: &str = "client_timeout";

/// How requests are issued.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadMode {
    /// Each of `connections` sends a request, waits for the response, and repeats.
    Closed { connections: usize },
    /// Requests are scheduled at `rate_per_sec` (intended send times `t0 + i/rate`) and
    /// sent on whichever of `connections` is free; if none is, the request waits and
    /// the wait counts in its latency.
    Open {
        rate_per_sec: f64,
        connections: usize,
    },
    /// Open loop at the planned times of a trace replay, each request to its own target
    /// with its own body (the config's path and body are not used). The run lasts the
    /// plan's length (and until the last request is answered); its first `warmup` is sent
    /// but not recorded.
    Replay {
        plan: Arc<ReplayPlan>,
        connections: usize,
    },
}

impl LoadMode {
    pub fn connections(&self) -> usize {
        match *self {
            LoadMode::Closed { connections }
            | LoadMode::Open { connections, .. }
            | LoadMode::Replay { connections, .. } => connections,
        }
    }
}

/// What to run. Every request of a run is identical, except in [`LoadMode::Replay`].
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The entry nodes: connection `i` goes to `addrs[i % addrs.len()]` (and reconnects
    /// there), and the node counters in the report are summed over all of them. At least one.
    pub addrs: Vec<SocketAddr>,
    pub method: Method,
    /// Origin-form target, e.g. `/invoke/echo?x=1`.
    pub path_and_query: String,
    /// Extra request headers (`Host` is added unless given).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub mode: LoadMode,
    /// Length of the measured window (after warm-up). Replay: not used (the window is the
    /// plan's length minus the warm-up).
    pub duration: Duration,
    /// Requests scheduled during warm-up are sent but not recorded.
    pub warmup: Duration,
    /// Draw a self-overwriting progress line on stderr (~4×/s).
    pub progress: bool,
    /// Per-request timeout (closed loop: from the send; open loop: from the intended
    /// send time, so a request queued longer than this is counted as `client_timeout`
    /// without being sent). Also bounds how long the run drains after the window.
    pub request_timeout: Duration,
}

/// Run the load described by `cfg` and report on the measured window.
///
/// Fails only if the configuration is invalid or the connection pool cannot be opened
/// (e.g. [`BenchError::TooManyOpenFiles`]: raise `ulimit -n`). Failed requests are
/// counted in the report; a missing `/metrics` endpoint only leaves
/// [`Report::server`] unavailable.
pub async fn run(cfg: &LoadConfig) -> Result<Report, BenchError> {
    run_inner(cfg, None).await
}

/// [`run`], also writing a JSON line per request of the measured window to `out` (see
/// [`record::write_jsonl`](crate::record::write_jsonl)), in the order the requests end.
/// Lines are written while the load runs, by a thread of their own (held in memory: at most
/// [`RECORDS_QUEUED`] records), so a long run does not keep its records. A failure to write
/// does not stop the load: the report comes back with the error, and what was written.
pub async fn run_with_records<W: std::io::Write + Send + 'static>(
    cfg: &LoadConfig,
    out: W,
) -> Result<(Report, std::io::Result<u64>), BenchError> {
    let plan = match &cfg.mode {
        LoadMode::Replay { plan, .. } => Some(plan.clone()),
        _ => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(RECORDS_QUEUED);
    let writer = tokio::task::spawn_blocking(move || write_records(rx, out, plan.as_deref()));
    let report = run_inner(cfg, Some(tx)).await;
    // The run's sender is gone (dropped with its context): the writer drains and ends.
    let written = writer.await.unwrap_or_else(propagate_panic);
    Ok((report?, written))
}

/// Records waiting for the writer thread; lanes wait when it falls this far behind.
pub const RECORDS_QUEUED: usize = 65_536;

fn write_records<W: std::io::Write>(
    mut rx: tokio::sync::mpsc::Receiver<RequestRecord>,
    out: W,
    plan: Option<&ReplayPlan>,
) -> std::io::Result<u64> {
    let mut out = std::io::BufWriter::new(out);
    let mut written = 0u64;
    let mut failed = None;
    while let Some(record) = rx.blocking_recv() {
        // After a failure, keep receiving so the load is never held up by a dead writer.
        if failed.is_some() {
            continue;
        }
        match crate::record::write_jsonl(&mut out, std::slice::from_ref(&record), plan) {
            Ok(()) => written += 1,
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    std::io::Write::flush(&mut out)?;
    Ok(written)
}

async fn run_inner(
    cfg: &LoadConfig,
    records: Option<tokio::sync::mpsc::Sender<RequestRecord>>,
) -> Result<Report, BenchError> {
    validate(cfg)?;
    let header_refs: Vec<(&str, &str)> = cfg
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let targets = match &cfg.mode {
        LoadMode::Replay { plan, .. } => plan
            .targets
            .iter()
            .map(|t| {
                Ok((
                    Prepared::new(cfg.method.clone(), &t.path_and_query, &header_refs)?,
                    t.body.clone(),
                ))
            })
            .collect::<Result<Vec<_>, BenchError>>()?,
        _ => vec![(
            Prepared::new(cfg.method.clone(), &cfg.path_and_query, &header_refs)?,
            cfg.body.clone(),
        )],
    };
    let window = match &cfg.mode {
        LoadMode::Replay { plan, .. } => plan.length.saturating_sub(cfg.warmup),
        _ => cfg.duration,
    };
    let connections = cfg.mode.connections();
    let conns = connect_all(
        &cfg.addrs,
        connections,
        cfg.request_timeout.max(MIN_CONNECT_TIMEOUT),
    )
    .await?;

    let addrs: Arc<[SocketAddr]> = cfg.addrs.clone().into();
    let scrape_timeout = cfg.request_timeout.max(MIN_SCRAPE_TIMEOUT);
    // `/metrics` needs a token on a node with authentication: the one the load sends (an
    // admin's, for the server's counters to show).
    let authorization: Option<Arc<str>> = cfg
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| Arc::from(v.as_str()));
    // With no warm-up, scrape before the first request; otherwise when warm-up ends.
    let before_now = if cfg.warmup.is_zero() {
        Some(scrape_all(&addrs, authorization.as_deref(), scrape_timeout).await)
    } else {
        None
    };

    let t0 = Instant::now();
    let warmup_end = t0 + cfg.warmup;
    let end = warmup_end + window;
    let before = match before_now {
        Some(snapshot) => tokio::spawn(std::future::ready(snapshot)),
        None => {
            let (authorization, addrs) = (authorization.clone(), addrs.clone());
            tokio::spawn(async move {
                sleep_until(warmup_end).await;
                scrape_all(&addrs, authorization.as_deref(), scrape_timeout).await
            })
        }
    };

    let ctx = Arc::new(Ctx {
        addrs: addrs.clone(),
        targets,
        request_timeout: cfg.request_timeout,
        t0,
        warmup_end,
        end,
        schedule: match &cfg.mode {
            LoadMode::Closed { .. } => Schedule::Closed,
            LoadMode::Open { rate_per_sec, .. } => Schedule::Rate(*rate_per_sec),
            LoadMode::Replay { plan, .. } => Schedule::Plan(plan.clone()),
        },
        records,
        next_slot: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    let progress = cfg
        .progress
        .then(|| tokio::spawn(progress_loop(ctx.clone())));

    let lanes = connections.min(MAX_LANES);
    let mut groups: Vec<Vec<(usize, HttpConn)>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, conn) in conns.into_iter().enumerate() {
        groups[i % lanes].push(conn);
    }
    let mut set = JoinSet::new();
    for group in groups {
        set.spawn(lane(group, ctx.clone()));
    }
    let mut total = LaneStats::new();
    while let Some(res) = set.join_next().await {
        total.merge(res.unwrap_or_else(propagate_panic));
    }
    // A replay's window is the plan's length even when its last minutes are quiet, so the
    // closing `/metrics` read sees what the node did in them (evictions, idle timeouts).
    if matches!(cfg.mode, LoadMode::Replay { .. }) {
        sleep_until(ctx.end).await;
    }

    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        // Final line: the average rate over the whole run (warm-up included).
        let now = Instant::now();
        let secs = now.saturating_duration_since(ctx.t0).as_secs_f64();
        let avg = if secs > 0.0 {
            ctx.done.load(Ordering::Relaxed) as f64 / secs
        } else {
            0.0
        };
        draw_progress(&ctx, now, avg);
        eprintln!();
    }

    let before = before.await.unwrap_or_else(propagate_panic);
    let after = scrape_all(&addrs, authorization.as_deref(), scrape_timeout).await;

    let errors: u64 = total.errors.values().sum();
    let requests = total.ok + errors;
    let (mode, rate_per_sec, replay, path) = match &cfg.mode {
        LoadMode::Closed { .. } => (ModeName::Closed, None, None, cfg.path_and_query.clone()),
        LoadMode::Open { rate_per_sec, .. } => (
            ModeName::Open,
            Some(*rate_per_sec),
            None,
            cfg.path_and_query.clone(),
        ),
        LoadMode::Replay { plan, .. } => (
            ModeName::Replay,
            None,
            Some(plan.echo.clone()),
            format!("/v1/functions/{}/invoke", plan.echo.function_template),
        ),
    };
    let report = Report {
        config: ConfigEcho {
            mode,
            connections,
            rate_per_sec,
            duration_secs: window.as_secs_f64(),
            warmup_secs: cfg.warmup.as_secs_f64(),
            method: cfg.method.to_string(),
            path,
            replay,
            entries: cfg.addrs.iter().map(|a| a.to_string()).collect(),
        },
        requests,
        ok: total.ok,
        errors_by_code: total.errors,
        throughput_rps: requests as f64 / window.as_secs_f64(),
        latency_us: LatencySummary::from_histogram(&total.hist),
        cold_start_responses: total.cold,
        server: server_stats(before, after),
    };
    Ok(report)
}

fn validate(cfg: &LoadConfig) -> Result<(), BenchError> {
    if cfg.addrs.is_empty() {
        return Err(BenchError::Config("no server to send to".into()));
    }
    if let Some(twice) = cfg
        .addrs
        .iter()
        .enumerate()
        .find_map(|(i, a)| cfg.addrs[..i].contains(a).then_some(a))
    {
        return Err(BenchError::Config(format!(
            "{twice} is given twice (its counters would be counted twice)"
        )));
    }
    if cfg.mode.connections() == 0 {
        return Err(BenchError::Config("connections must be at least 1".into()));
    }
    if cfg.mode.connections() < cfg.addrs.len() {
        return Err(BenchError::Config(format!(
            "{} connection(s) cannot reach {} entry nodes",
            cfg.mode.connections(),
            cfg.addrs.len()
        )));
    }
    if let LoadMode::Open { rate_per_sec, .. } = cfg.mode
        && !(rate_per_sec.is_finite() && rate_per_sec > 0.0)
    {
        return Err(BenchError::Config(format!(
            "rate must be a positive number of requests per second, got {rate_per_sec}"
        )));
    }
    match &cfg.mode {
        LoadMode::Replay { plan, .. } => {
            if cfg.warmup >= plan.length {
                return Err(BenchError::Config(format!(
                    "the warm-up ({:?}) leaves nothing of the {:?} replay to measure",
                    cfg.warmup, plan.length
                )));
            }
            if plan.targets.len() > u32::MAX as usize
                || plan
                    .requests
                    .iter()
                    .any(|r| r.target as usize >= plan.targets.len() || r.at >= plan.length)
            {
                return Err(BenchError::Config(
                    "the replay plan names a target it does not have or a time past its end".into(),
                ));
            }
            if plan.requests.windows(2).any(|w| w[0].at > w[1].at) {
                return Err(BenchError::Config(
                    "the replay plan's requests are not in time order".into(),
                ));
            }
        }
        _ if cfg.duration.is_zero() => {
            return Err(BenchError::Config("duration must be positive".into()));
        }
        _ => {}
    }
    if cfg.request_timeout.is_zero() {
        return Err(BenchError::Config(
            "request timeout must be positive".into(),
        ));
    }
    Ok(())
}

fn propagate_panic<T>(e: JoinError) -> T {
    match e.try_into_panic() {
        Ok(payload) => std::panic::resume_unwind(payload),
        // Only reachable if the runtime is shutting down underneath us.
        Err(e) => panic!("load task cancelled: {e}"),
    }
}

/// Open `n` connections, connection `i` to `addrs[i % addrs.len()]` (returned with that
/// index), at most [`CONNECT_CONCURRENCY`] attempts at a time; the first failure aborts the
/// rest and is returned.
async fn connect_all(
    addrs: &[SocketAddr],
    n: usize,
    connect_timeout: Duration,
) -> Result<Vec<(usize, HttpConn)>, BenchError> {
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        let entry = i % addrs.len();
        let addr = addrs[entry];
        set.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .expect("the connect semaphore is never closed");
            match timeout(connect_timeout, HttpConn::connect(addr)).await {
                Ok(res) => res.map(|conn| (entry, conn)),
                Err(_) => Err(BenchError::ConnectTimeout {
                    addr,
                    timeout: connect_timeout,
                }),
            }
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(res) = set.join_next().await {
        match res.unwrap_or_else(propagate_panic) {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                set.abort_all();
                return Err(match e {
                    BenchError::TooManyOpenFiles { addr, source, .. } => {
                        BenchError::TooManyOpenFiles {
                            addr,
                            opened: conns.len(),
                            source,
                        }
                    }
                    BenchError::NoLocalPort { addr, source, .. } => BenchError::NoLocalPort {
                        addr,
                        opened: conns.len(),
                        source,
                    },
                    other => other,
                });
            }
        }
    }
    Ok(conns)
}

/// When requests are sent.
enum Schedule {
    /// As soon as a connection is free, until the end of the window.
    Closed,
    /// Slot `i` at `t0 + i / rate`.
    Rate(f64),
    /// Slot `i` at `t0 + plan.requests[i].at`, to its own target.
    Plan(Arc<ReplayPlan>),
}

/// State shared by all lanes (read-only apart from the atomics).
struct Ctx {
    /// The entry nodes; each connection keeps to one.
    addrs: Arc<[SocketAddr]>,
    /// What to send, with its body: one, or one per replay target.
    targets: Vec<(Prepared, Bytes)>,
    request_timeout: Duration,
    t0: Instant,
    warmup_end: Instant,
    end: Instant,
    schedule: Schedule,
    /// Where a [`RequestRecord`] per measured request goes, if anywhere.
    records: Option<tokio::sync::mpsc::Sender<RequestRecord>>,
    /// Open loop: index of the next request slot to be claimed.
    next_slot: AtomicU64,
    /// Progress only: all completed requests (incl. warm-up) and the failed ones.
    done: AtomicU64,
    failed: AtomicU64,
}

/// The result of one request.
struct Outcome {
    /// Scheduled inside the measured window?
    recorded: bool,
    /// Scheduled send time, from `t0`.
    scheduled_us: u64,
    /// Index into [`Ctx::targets`].
    target: u32,
    /// From the scheduled send time to the end of the response; `None` without a response.
    latency_us: Option<u64>,
    status: Option<u16>,
    result: Result<(), Cow<'static, str>>,
    cold: bool,
    /// `x-tern-node` and `x-tern-duration-us`, read only when records are kept.
    node: Option<String>,
    server_us: Option<u64>,
}

/// Per-lane (and finally merged) measurements.
struct LaneStats {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    cold: u64,
}

impl LaneStats {
    fn new() -> Self {
        LaneStats {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("1 µs .. 60 s at 3 significant figures is a valid histogram range"),
            ok: 0,
            errors: BTreeMap::new(),
            cold: 0,
        }
    }

    /// Counts `o`, and gives back its record (`keep`) if it was measured.
    fn record(&mut self, o: Outcome, keep: bool) -> Option<RequestRecord> {
        if !o.recorded {
            return None;
        }
        if o.cold {
            self.cold += 1;
        }
        match &o.result {
            Ok(()) => {
                self.ok += 1;
                self.hist
                    .saturating_record(o.latency_us.unwrap_or_default().max(1));
            }
            Err(code) => match self.errors.get_mut(code.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    self.errors.insert(code.clone().into_owned(), 1);
                }
            },
        }
        keep.then(|| RequestRecord {
            at_us: o.scheduled_us,
            target: o.target,
            latency_us: o.latency_us,
            status: o.status,
            code: o.result.err().map(Cow::into_owned),
            node: o.node,
            cold: o.cold,
            server_us: o.server_us,
        })
    }

    fn merge(&mut self, other: LaneStats) {
        self.hist
            .add(&other.hist)
            .expect("all lane histograms have the same bounds");
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.cold += other.cold;
    }
}

/// Drive a group of connections until the schedule is exhausted.
async fn lane(conns: Vec<(usize, HttpConn)>, ctx: Arc<Ctx>) -> LaneStats {
    let mut stats = LaneStats::new();
    let mut in_flight = FuturesUnordered::new();
    for (entry, conn) in conns {
        in_flight.push(one_request(entry, Some(conn), ctx.clone()));
    }
    while let Some((entry, conn, outcome)) = in_flight.next().await {
        // `None`: no more requests to schedule; this connection retires.
        let Some(outcome) = outcome else { continue };
        ctx.done.fetch_add(1, Ordering::Relaxed);
        if outcome.result.is_err() {
            ctx.failed.fetch_add(1, Ordering::Relaxed);
        }
        in_flight.push(one_request(entry, conn, ctx.clone()));
        if let Some(record) = stats.record(outcome, ctx.records.is_some())
            && let Some(tx) = &ctx.records
        {
            // Waits only while the writer is [`RECORDS_QUEUED`] behind; a writer that
            // failed keeps draining, so this never blocks for good.
            let _ = tx.send(record).await;
        }
    }
    stats
}

/// Claim the next request (closed loop: now; open loop: the next rate slot; replay: the
/// next planned request), send it on `conn` (re-opening it if needed) and hand the
/// connection back with the outcome. Returns `None` as outcome once the schedule is over.
/// `entry` is the index of the connection's node in [`Ctx::addrs`], given back with it.
async fn one_request(
    entry: usize,
    conn: Option<HttpConn>,
    ctx: Arc<Ctx>,
) -> (usize, Option<HttpConn>, Option<Outcome>) {
    let (conn, outcome) = request_on(entry, conn, &ctx).await;
    (entry, conn, outcome)
}

async fn request_on(
    entry: usize,
    conn: Option<HttpConn>,
    ctx: &Ctx,
) -> (Option<HttpConn>, Option<Outcome>) {
    let (scheduled, target) = match &ctx.schedule {
        Schedule::Closed => {
            let now = Instant::now();
            if now >= ctx.end {
                return (conn, None);
            }
            (now, 0)
        }
        Schedule::Rate(rate) => {
            let slot = ctx.next_slot.fetch_add(1, Ordering::Relaxed);
            let Ok(offset) = Duration::try_from_secs_f64(slot as f64 / rate) else {
                return (conn, None);
            };
            let intended = ctx.t0 + offset;
            if intended >= ctx.end {
                return (conn, None);
            }
            sleep_until(intended).await;
            (intended, 0)
        }
        Schedule::Plan(plan) => {
            let slot = ctx.next_slot.fetch_add(1, Ordering::Relaxed);
            let Some(planned) = usize::try_from(slot)
                .ok()
                .and_then(|i| plan.requests.get(i))
            else {
                return (conn, None);
            };
            let intended = ctx.t0 + planned.at;
            sleep_until(intended).await;
            (intended, planned.target)
        }
    };
    let recorded = scheduled >= ctx.warmup_end;
    let scheduled_us =
        u64::try_from(scheduled.saturating_duration_since(ctx.t0).as_micros()).unwrap_or(u64::MAX);
    let deadline = scheduled + ctx.request_timeout;
    let failure = |code: &'static str| Outcome {
        recorded,
        scheduled_us,
        target,
        latency_us: None,
        status: None,
        result: Err(Cow::Borrowed(code)),
        cold: false,
        node: None,
        server_us: None,
    };
    let (prepared, body) = &ctx.targets[target as usize];

    let mut conn = match conn.filter(|c| !c.is_closed()) {
        Some(c) => c,
        None => match timeout_at(deadline, HttpConn::connect(ctx.addrs[entry])).await {
            Ok(Ok(c)) => c,
            Ok(Err(_)) => {
                sleep(ERROR_BACKOFF).await;
                return (None, Some(failure(CODE_IO)));
            }
            Err(_) => return (None, Some(failure(CODE_CLIENT_TIMEOUT))),
        },
    };
    if Instant::now() >= deadline {
        // Open loop, queued behind busy connections for longer than the timeout.
        return (Some(conn), Some(failure(CODE_CLIENT_TIMEOUT)));
    }
    match timeout_at(deadline, conn.send(prepared, body.clone())).await {
        // The connection is mid-exchange: it cannot be reused.
        Err(_) => (None, Some(failure(CODE_CLIENT_TIMEOUT))),
        Ok(Err(_)) => {
            sleep(ERROR_BACKOFF).await;
            (None, Some(failure(CODE_IO)))
        }
        Ok(Ok(resp)) => {
            let latency = Instant::now().saturating_duration_since(scheduled);
            let cold = resp
                .headers()
                .get("x-tern-cold-start")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
            let status = resp.status().as_u16();
            let result = if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(Cow::Owned(error_code(status, resp.body())))
            };
            let (node, server_us) = if ctx.records.is_some() {
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                (
                    header("x-tern-node"),
                    header("x-tern-duration-us").and_then(|v| v.parse().ok()),
                )
            } else {
                (None, None)
            };
            let outcome = Outcome {
                recorded,
                scheduled_us,
                target,
                latency_us: Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
                status: Some(status),
                result,
                cold,
                node,
                server_us,
            };
            (Some(conn), Some(outcome))
        }
    }
}

/// The error code of a non-2xx response: `error.code` from a Tern JSON error body for
/// statuses >= 400, else `http_<status>`.
pub fn error_code(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
    }
    if status >= 400
        && let Ok(b) = serde_json::from_slice::<Body>(body)
        && !b.error.code.is_empty()
    {
        return b.error.code;
    }
    format!("http_{status}")
}

/// The three server counters, summed over label sets.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    /// At least one of the three metrics was present.
    found: bool,
    cold_starts: f64,
    meus: f64,
    reuse: f64,
}

/// `GET /metrics`; `None` if it fails or is not a 200 (never an error for the run).
async fn scrape(
    addr: SocketAddr,
    authorization: Option<&str>,
    limit: Duration,
) -> Option<Snapshot> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let resp = timeout(
        limit,
        request_once(addr, Method::GET, "/metrics", &headers, Bytes::new()),
    )
    .await
    .ok()?
    .ok()?;
    if resp.status != 200 {
        return None;
    }
    let text = std::str::from_utf8(&resp.body).ok()?;
    let cold_starts = prom::sum(text, "tern_cold_starts_total");
    let meus = prom::sum(text, "tern_meus_total");
    let reuse = prom::sum(text, "tern_module_reuse_total");
    // A labelled counter that has not been touched yet is absent: that is 0.
    Some(Snapshot {
        found: cold_starts.is_some() || meus.is_some() || reuse.is_some(),
        cold_starts: cold_starts.unwrap_or(0.0),
        meus: meus.unwrap_or(0.0),
        reuse: reuse.unwrap_or(0.0),
    })
}

/// [`scrape`] of every entry node, summed; `None` if any of them cannot be read (a sum over
/// some of them would be mistaken for the whole).
async fn scrape_all(
    addrs: &[SocketAddr],
    authorization: Option<&str>,
    limit: Duration,
) -> Option<Snapshot> {
    let reads =
        futures_util::future::join_all(addrs.iter().map(|a| scrape(*a, authorization, limit)))
            .await;
    reads.into_iter().try_fold(
        Snapshot {
            found: false,
            cold_starts: 0.0,
            meus: 0.0,
            reuse: 0.0,
        },
        |sum, one| {
            let one = one?;
            Some(Snapshot {
                found: sum.found || one.found,
                cold_starts: sum.cold_starts + one.cold_starts,
                meus: sum.meus + one.meus,
                reuse: sum.reuse + one.reuse,
            })
        },
    )
}

fn server_stats(before: Option<Snapshot>, after: Option<Snapshot>) -> ServerStats {
    // Both scrapes must work, and the endpoint must look like Tern's at least once
    // (a fresh node may not have emitted its labelled counters before the run).
    let (Some(b), Some(a)) = (before, after) else {
        return ServerStats::default();
    };
    if !(b.found || a.found) {
        return ServerStats::default();
    }
    // Counters only go up; a negative delta means a server restart: report 0.
    let delta = |after: f64, before: f64| {
        let d = (after - before).round();
        if d.is_finite() && d > 0.0 {
            d as u64
        } else {
            0
        }
    };
    let meus = delta(a.meus, b.meus);
    let reuse_hits = delta(a.reuse, b.reuse);
    ServerStats {
        available: true,
        cold_starts: delta(a.cold_starts, b.cold_starts),
        meus,
        reuse_hits,
        reuse_hit_rate: (meus > 0).then(|| reuse_hits as f64 / meus as f64),
    }
}

async fn progress_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_done = ctx.done.load(Ordering::Relaxed);
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = ctx.done.load(Ordering::Relaxed);
        let dt = now.saturating_duration_since(last_at).as_secs_f64();
        let rps = if dt > 0.0 {
            (done - last_done) as f64 / dt
        } else {
            0.0
        };
        draw_progress(&ctx, now, rps);
        last_done = done;
        last_at = now;
    }
}

fn draw_progress(ctx: &Ctx, now: Instant, rps: f64) {
    let phase = if now < ctx.warmup_end {
        "warm-up"
    } else if now < ctx.end {
        "measure"
    } else {
        "drain"
    };
    let elapsed = now.saturating_duration_since(ctx.t0).as_secs_f64();
    let total = ctx.end.saturating_duration_since(ctx.t0).as_secs_f64();
    let line = format!(
        "\r[{phase:<7} {elapsed:6.1}/{total:.1} s] {:>10} req {rps:>10.0} req/s {:>8} err  ",
        ctx.done.load(Ordering::Relaxed),
        ctx.failed.load(Ordering::Relaxed),
    );
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        let body = br#"{"error":{"code":"overloaded","message":"x"}}"#;
        assert_eq!(error_code(429, body), "overloaded");
        assert_eq!(error_code(500, b"not json"), "http_500");
        assert_eq!(error_code(404, br#"{"error":{"message":"x"}}"#), "http_404");
        assert_eq!(error_code(302, body), "http_302");
    }

    #[test]
    fn server_stats_deltas() {
        let b = Snapshot {
            found: true,
            cold_starts: 2.0,
            meus: 10.0,
            reuse: 5.0,
        };
        let a = Snapshot {
            found: true,
            cold_starts: 3.0,
            meus: 30.0,
            reuse: 20.0,
        };
        let s = server_stats(Some(b), Some(a));
        assert!(s.available);
        assert_eq!((s.cold_starts, s.meus, s.reuse_hits), (1, 20, 15));
        assert_eq!(s.reuse_hit_rate, Some(0.75));
        let same = server_stats(Some(b), Some(b));
        assert_eq!(same.reuse_hit_rate, None);
        assert!(same.available);
        assert_eq!(server_stats(None, Some(a)), ServerStats::default());
        assert_eq!(server_stats(Some(a), None).reuse_hit_rate, None);
        // A fresh node: nothing before, counters after.
        let empty = Snapshot {
            found: false,
            cold_starts: 0.0,
            meus: 0.0,
            reuse: 0.0,
        };
        assert_eq!(server_stats(Some(empty), Some(a)).meus, 30);
        // Not a Tern /metrics at all.
        assert!(!server_stats(Some(empty), Some(empty)).available);
    }
}
