//! Cost per message of the control-plane paths, side by side, between two nodes in this
//! process over a real QUIC connection on 127.0.0.1 (mutual TLS from a throwaway CA) with a
//! ractor_cluster session on it:
//!
//! - `status/lane_rtt`: one `Connection::request` with an encoded `PeerRequest::Status`
//!   (1.6 KB: 16 ready and 8 warm modules) and its encoded `Ack`, one at a time: today's
//!   status path;
//! - `status/lane_x32`: the same with 32 requests in flight (the publisher does not wait);
//! - `status/ractor_cast`: a cast of the same bytes to the peer's remote actor, which decodes
//!   and counts; N casts until the peer has counted N (at most 256 outstanding);
//!   `status/ractor_cast_1`: one at a time, each until counted (a status every 200 ms is
//!   alone on the wire: this is its cost);
//! - `status/ractor_call`: a call with the same bytes answered with the same `Ack`, one at
//!   a time;
//! - `status/control_plane`, `status/control_plane_1`: `ControlPlane::publish_status` until
//!   the peer's sink has counted them, pipelined and one at a time (the cast, the ticket, its
//!   check, the sink);
//! - `blob64k/*`: an encoded `RemoteMeu` with a 64 KiB input, by lane (one at a time, and 8
//!   in flight) and by ractor cast.
//!
//! Every status is encoded on each send (the status types carry module hashes as hex
//! strings, which makes encoding a good part of the cost) and decoded on arrival, on every
//! path. Besides criterion's estimates, every sample's wall time and process CPU time
//! (`CLOCK_PROCESS_CPUTIME_ID`: both ends, the client and the QUIC stack) per message are
//! kept, and their medians over the measured samples printed as `CONTROL_BENCH` lines, which
//! `scripts/bench-control-paths.sh` collects. `CONTROL_BENCH_ORDER=reverse` runs the
//! benchmarks in reverse order (the script alternates rounds).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tern_actors::energy::process_cpu_time;
use tern_cluster::{Connection, Endpoint, NodeName, SessionConfig, Sessions, TransportConfig, pki};
use tern_link::LocalFuture;
use tern_link::control::{ControlConfig, ControlPlane, ControlSink, PeerChange};
use tern_wire::peer::{NodeClass, NodeStatus, PeerRequest, PeerResponse, RegistryEntry, RemoteMeu};
use tern_wire::{FunctionName, ModuleHash};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

const LIMIT: usize = 16 << 20;
const GROUP: &str = "bench.sink.v1";
/// Outstanding casts allowed before the sender waits for the peer to catch up: ractor
/// mailboxes are unbounded, and a benchmark must not measure a growing queue.
const WINDOW: u64 = 256;
const SAMPLES: usize = 15;

fn name(s: &str) -> NodeName {
    s.parse().expect("node name")
}

/// A realistic status: a node with 16 functions installed, 8 of them warm.
fn status() -> NodeStatus {
    NodeStatus {
        node: "node-b".to_owned(),
        class: NodeClass::Standard,
        max_memory_mb: 512,
        max_timeout_ms: 30_000,
        queue_depth: 3,
        queue_cap: 256,
        ready: (0..16).map(|i| ModuleHash([i; 32])).collect(),
        warm: (0..8).map(|i| ModuleHash([i; 32])).collect(),
        cpu_percent: 37,
        memory_bytes: 812 << 20,
        recent_mean_us: 1450,
        seq: 123_456,
        // Four tenants with a rate quota and recent calls here.
        tenant_demand: (0..4)
            .map(|i| tern_wire::peer::TenantDemand {
                tenant: format!("team-{i}").parse().expect("valid tenant name"),
                per_s: 250 * (i + 1),
                slots: 4 * (i + 1),
                running: 2 * (i + 1),
            })
            .collect(),
    }
}

fn blob() -> RemoteMeu {
    RemoteMeu {
        request_id: "bench-0123456789".to_owned(),
        function: "echo".parse::<FunctionName>().expect("function name"),
        hash: ModuleHash([9; 32]),
        input: vec![0x42; 64 << 10],
        items: 1,
        attempt: 1,
        waited_us: 0,
        trace: None,
    }
}

/// Counts messages; wakes one waiter once the count reaches what it waits for.
struct Counter {
    n: AtomicU64,
    want: AtomicU64,
    notify: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            n: AtomicU64::new(0),
            want: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        })
    }

    fn hit(&self) {
        let n = self.n.fetch_add(1, Relaxed) + 1;
        if n >= self.want.load(Relaxed) {
            self.notify.notify_one();
        }
    }

    fn count(&self) -> u64 {
        self.n.load(Relaxed)
    }

    async fn reach(&self, target: u64) {
        loop {
            self.want.store(target, Relaxed);
            let woken = self.notify.notified();
            if self.count() >= target {
                self.want.store(u64::MAX, Relaxed);
                return;
            }
            woken.await;
        }
    }
}

// ----- the ractor side: a message type sent as raw bytes, and a decoding, counting actor -----

struct Cast {
    variant: &'static str,
    args: Vec<u8>,
}

impl ractor::Message for Cast {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Cast {
            variant: self.variant.to_owned(),
            args: self.args,
            metadata: None,
        })
    }
}

struct Call {
    args: Vec<u8>,
    reply: RpcReplyPort<Vec<u8>>,
}

impl ractor::Message for Call {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(SerializedMessage::Call {
            variant: "status".to_owned(),
            args: self.args,
            reply: self.reply,
            metadata: None,
        })
    }
}

enum SinkMsg {
    Cast(String, Vec<u8>),
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl ractor::Message for SinkMsg {
    fn serializable() -> bool {
        true
    }

    fn deserialize(m: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match m {
            SerializedMessage::Cast { variant, args, .. } => Ok(SinkMsg::Cast(variant, args)),
            SerializedMessage::Call { args, reply, .. } => Ok(SinkMsg::Call(args, reply)),
            SerializedMessage::CallReply(..) => Err(BoxedDowncastErr),
        }
    }
}

struct SinkActor;

impl Actor for SinkActor {
    type Msg = SinkMsg;
    type State = Arc<Counter>;
    type Arguments = Arc<Counter>;

    async fn pre_start(
        &self,
        _: ActorRef<SinkMsg>,
        counter: Arc<Counter>,
    ) -> Result<Arc<Counter>, ActorProcessingErr> {
        Ok(counter)
    }

    async fn handle(
        &self,
        _: ActorRef<SinkMsg>,
        msg: SinkMsg,
        counter: &mut Arc<Counter>,
    ) -> Result<(), ActorProcessingErr> {
        // Decoded like the lane handler decodes, so both sides do the same work.
        match msg {
            SinkMsg::Cast(variant, args) => {
                let ok = if variant == "blob" {
                    tern_wire::decode::<RemoteMeu>(&args, LIMIT).is_ok()
                } else {
                    tern_wire::decode::<NodeStatus>(&args, LIMIT).is_ok()
                };
                if ok {
                    counter.hit();
                }
            }
            SinkMsg::Call(args, reply) => {
                if tern_wire::decode::<NodeStatus>(&args, LIMIT).is_ok() {
                    let _ = reply.send(ack());
                }
            }
        }
        Ok(())
    }
}

fn ack() -> Vec<u8> {
    tern_wire::encode(&PeerResponse::Ack, LIMIT).expect("ack")
}

/// The lane handler: what `ClusterLink::handle` does with a status, minus the table.
async fn answer(req: Vec<u8>) -> Vec<u8> {
    match tern_wire::decode::<PeerRequest>(&req, LIMIT) {
        Ok(PeerRequest::Status(_) | PeerRequest::Execute(_)) => ack(),
        _ => Vec::new(),
    }
}

struct CountingSink(Arc<Counter>);

impl ControlSink for CountingSink {
    fn on_status(&self, _: NodeName, _: NodeStatus) {
        self.0.hit();
    }

    fn on_announce(&self, _: NodeName, _: Vec<RegistryEntry>) -> LocalFuture<'_, ()> {
        Box::pin(async {})
    }

    fn on_membership(&self, _: NodeName, _: PeerChange) {}
}

// ----- two nodes -----

struct Pair {
    conn: Connection,
    sessions: Sessions,
    route: ActorCell,
    counter: Arc<Counter>,
    control_a: ControlPlane,
    control_counter: Arc<Counter>,
    // Kept alive for the run.
    _keep: (
        tempfile::TempDir,
        Sessions,
        ActorRef<SinkMsg>,
        ControlPlane,
        Endpoint,
        Endpoint,
    ),
}

async fn pair() -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (name("a"), name("b"));
    pki::init(dir.path(), &[a.clone(), b.clone()]).expect("pki");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let transport = TransportConfig {
        max_frame: LIMIT,
        ..TransportConfig::default()
    };
    let ep_a = Endpoint::bind(
        &pki::load(dir.path(), &a).expect("id"),
        any,
        transport.clone(),
    )
    .expect("bind");
    let ep_b =
        Endpoint::bind(&pki::load(dir.path(), &b).expect("id"), any, transport).expect("bind");
    let sa = Sessions::start(&a, SessionConfig::default())
        .await
        .expect("sessions");
    let sb = Sessions::start(&b, SessionConfig::default())
        .await
        .expect("sessions");

    let counter = Counter::new();
    let (sink, _) = Actor::spawn(None, SinkActor, counter.clone())
        .await
        .expect("sink");
    sb.join_group(GROUP, sink.get_cell()).expect("join");
    let control_counter = Counter::new();
    let cfg = |peer: &NodeName| ControlConfig {
        peers: vec![peer.clone()],
        ..ControlConfig::default()
    };
    let control_a = ControlPlane::start(&sa, Arc::new(CountingSink(Counter::new())), cfg(&b))
        .await
        .expect("control a");
    let control_b = ControlPlane::start(
        &sb,
        Arc::new(CountingSink(control_counter.clone())),
        cfg(&a),
    )
    .await
    .expect("control b");

    let accepted = async {
        let conn = ep_b.accept().await.expect("accept");
        sb.attach(&conn).expect("attach");
        serve(&conn);
    };
    let dial = async {
        let conn = ep_a
            .connect(&b, ep_b.local_addr().expect("addr"))
            .await
            .expect("connect");
        sa.attach(&conn).expect("attach");
        serve(&conn);
        conn
    };
    let ((), conn) = tokio::join!(accepted, dial);
    sa.wait_ready(&b, Duration::from_secs(10))
        .await
        .expect("session");
    control_a
        .wait_linked(std::slice::from_ref(&b), Duration::from_secs(10))
        .await
        .expect("control plane linked");
    let route = loop {
        if let Some(cell) = sa
            .remote_members(&b, GROUP)
            .expect("members")
            .into_iter()
            .next()
        {
            break cell;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Pair {
        conn,
        sessions: sa,
        route,
        counter,
        control_a,
        control_counter,
        _keep: (dir, sb, sink, control_b, ep_a, ep_b),
    }
}

fn serve(conn: &Connection) {
    let c = conn.clone();
    tokio::spawn(async move {
        c.serve(|req, _parts| answer(req)).await;
    });
}

// ----- measurement -----

/// Per-sample (messages, wall, CPU), by benchmark.
static SAMPLES_TAKEN: Mutex<Vec<(String, u64, Duration, Duration)>> = Mutex::new(Vec::new());

fn measured(id: &str, msgs: u64, run: impl FnOnce()) -> Duration {
    let (cpu0, t0) = (process_cpu_time(), Instant::now());
    run();
    let (wall, cpu) = (t0.elapsed(), process_cpu_time().saturating_sub(cpu0));
    if let Ok(mut s) = SAMPLES_TAKEN.lock() {
        s.push((id.to_owned(), msgs, wall, cpu));
    }
    wall
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn report() {
    let Ok(samples) = SAMPLES_TAKEN.lock() else {
        return;
    };
    let order = std::env::var("CONTROL_BENCH_ORDER").unwrap_or_else(|_| "forward".to_owned());
    let mut ids: Vec<&String> = samples.iter().map(|s| &s.0).collect();
    ids.dedup();
    for id in ids {
        // The last SAMPLES calls are criterion's measured samples; earlier ones warmed up.
        let mine: Vec<_> = samples.iter().filter(|s| &s.0 == id).collect();
        let measured = &mine[mine.len().saturating_sub(SAMPLES)..];
        let per = |f: fn(&(String, u64, Duration, Duration)) -> Duration| {
            median(
                measured
                    .iter()
                    .map(|s| f(s).as_nanos() as f64 / s.1.max(1) as f64)
                    .collect(),
            )
        };
        let msgs: u64 = measured.iter().map(|s| s.1).sum();
        println!(
            "CONTROL_BENCH name={id} order={order} wall_ns_per_msg={:.0} cpu_ns_per_msg={:.0} samples={} messages={msgs}",
            per(|s| s.2),
            per(|s| s.3),
            measured.len(),
        );
    }
}

type Bench = (&'static str, Box<dyn Fn(&mut Criterion)>);
/// Makes the bytes of one message. Statuses are encoded per message, as a publisher does
/// (and `publish_status` does): with its hashes as hex strings, encoding is a good part of a
/// status's cost, so every status path pays it.
type Make = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

fn benches(c: &mut Criterion) {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );
    let p = Arc::new(rt.block_on(pair()));
    let s = Arc::new(status());
    println!(
        "CONTROL_BENCH_SIZES status_request_bytes={} status_bytes={} blob_request_bytes={}",
        tern_wire::encode(&PeerRequest::Status(status()), LIMIT).map_or(0, |b| b.len()),
        tern_wire::encode(&status(), LIMIT).map_or(0, |b| b.len()),
        tern_wire::encode(&PeerRequest::Execute(blob()), LIMIT).map_or(0, |b| b.len()),
    );
    let status_req: Make = {
        let s = s.clone();
        Arc::new(move || {
            tern_wire::encode(&PeerRequest::Status((*s).clone()), LIMIT).expect("encode")
        })
    };
    let status_bytes: Make = Arc::new(move || tern_wire::encode(&*s, LIMIT).expect("encode"));
    // The 64 KiB payloads are encoded once: what is compared there is moving the bytes.
    let blob_req =
        Arc::new(tern_wire::encode(&PeerRequest::Execute(blob()), LIMIT).expect("encode"));
    let blob_req: Make = Arc::new(move || blob_req.as_ref().clone());
    let blob_bytes = Arc::new(tern_wire::encode(&blob(), LIMIT).expect("encode"));
    let blob_bytes: Make = Arc::new(move || blob_bytes.as_ref().clone());

    let mut list: Vec<Bench> = Vec::new();
    let lane_rtt = |id: &'static str, req: Make, rt: Arc<Runtime>, p: Arc<Pair>| -> Bench {
        (
            id,
            Box::new(move |c: &mut Criterion| {
                c.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        measured(id, iters, || {
                            rt.block_on(async {
                                for _ in 0..iters {
                                    let answer = p.conn.request(&req()).await.expect("lane");
                                    assert!(!answer.is_empty(), "refused");
                                }
                            })
                        })
                    })
                });
            }),
        )
    };
    let lane_many =
        |id: &'static str, req: Make, inflight: u64, rt: Arc<Runtime>, p: Arc<Pair>| -> Bench {
            (
                id,
                Box::new(move |c: &mut Criterion| {
                    c.bench_function(id, |b| {
                        b.iter_custom(|iters| {
                            measured(id, iters, || {
                                rt.block_on(async {
                                    let mut tasks = tokio::task::JoinSet::new();
                                    for w in 0..inflight.min(iters) {
                                        let (p, req) = (p.clone(), req.clone());
                                        let n = iters / inflight + u64::from(w < iters % inflight);
                                        tasks.spawn(async move {
                                            for _ in 0..n {
                                                p.conn.request(&req()).await.expect("lane");
                                            }
                                        });
                                    }
                                    while tasks.join_next().await.is_some() {}
                                })
                            })
                        })
                    });
                }),
            )
        };
    let cast = |id: &'static str,
                window: u64,
                variant: &'static str,
                args: Make,
                rt: Arc<Runtime>,
                p: Arc<Pair>|
     -> Bench {
        (
            id,
            Box::new(move |c: &mut Criterion| {
                c.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        measured(id, iters, || {
                            rt.block_on(async {
                                let base = p.counter.count();
                                for i in 1..=iters {
                                    let msg = Cast {
                                        variant,
                                        args: args(),
                                    };
                                    p.sessions.cast(&p.route, msg).expect("cast");
                                    if window == 1 {
                                        p.counter.reach(base + i).await;
                                    } else if i % (window / 2) == 0 && i >= window {
                                        p.counter.reach(base + i - window / 2).await;
                                    }
                                }
                                p.counter.reach(base + iters).await;
                            })
                        })
                    })
                });
            }),
        )
    };

    list.push(lane_rtt(
        "status/lane_rtt",
        status_req.clone(),
        rt.clone(),
        p.clone(),
    ));
    list.push(lane_many(
        "status/lane_x32",
        status_req,
        32,
        rt.clone(),
        p.clone(),
    ));
    list.push(cast(
        "status/ractor_cast",
        WINDOW,
        "status",
        status_bytes.clone(),
        rt.clone(),
        p.clone(),
    ));
    list.push(cast(
        "status/ractor_cast_1",
        1,
        "status",
        status_bytes.clone(),
        rt.clone(),
        p.clone(),
    ));
    {
        let (rt, p, args) = (rt.clone(), p.clone(), status_bytes);
        list.push((
            "status/ractor_call",
            Box::new(move |c: &mut Criterion| {
                let id = "status/ractor_call";
                c.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        measured(id, iters, || {
                            rt.block_on(async {
                                for _ in 0..iters {
                                    let answer = p
                                        .sessions
                                        .call(
                                            &p.route,
                                            |reply| Call {
                                                args: args(),
                                                reply,
                                            },
                                            Duration::from_secs(5),
                                        )
                                        .await
                                        .expect("call");
                                    assert!(!answer.is_empty());
                                }
                            })
                        })
                    })
                });
            }),
        ));
    }
    let publish = |id: &'static str, window: u64, rt: Arc<Runtime>, p: Arc<Pair>| -> Bench {
        (
            id,
            Box::new(move |c: &mut Criterion| {
                let s = status();
                c.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        measured(id, iters, || {
                            rt.block_on(async {
                                let base = p.control_counter.count();
                                for i in 1..=iters {
                                    p.control_a.publish_status(&s).expect("publish");
                                    if window == 1 {
                                        p.control_counter.reach(base + i).await;
                                    } else if i % (window / 2) == 0 && i >= window {
                                        p.control_counter.reach(base + i - window / 2).await;
                                    }
                                }
                                p.control_counter.reach(base + iters).await;
                            })
                        })
                    })
                });
            }),
        )
    };
    list.push(publish(
        "status/control_plane",
        WINDOW,
        rt.clone(),
        p.clone(),
    ));
    list.push(publish("status/control_plane_1", 1, rt.clone(), p.clone()));
    list.push(lane_rtt(
        "blob64k/lane_rtt",
        blob_req.clone(),
        rt.clone(),
        p.clone(),
    ));
    list.push(lane_many(
        "blob64k/lane_x8",
        blob_req,
        8,
        rt.clone(),
        p.clone(),
    ));
    list.push(cast(
        "blob64k/ractor_cast",
        WINDOW,
        "blob",
        blob_bytes,
        rt.clone(),
        p.clone(),
    ));

    if std::env::var("CONTROL_BENCH_ORDER").is_ok_and(|o| o == "reverse") {
        list.reverse();
    }
    for (_, run) in &list {
        run(c);
    }
    report();
}

criterion_group! {
    name = control_paths;
    config = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(control_paths);
