//! The cluster link's distributed behaviour over the in-memory mesh, on tokio's paused clock:
//! statuses and candidates, partitions (both ways and one way), crashes, registry
//! anti-entropy, and the SchedulerAgent's failover loop forwarding MEUs through real
//! `ClusterLink`s. No socket and no sleep in real time: seconds of cluster time run in
//! milliseconds, and each scenario runs over several seeds (the mesh's frame delays).
//!
//! The nodes behind the links are stand-ins ([`FakeNode`]) that keep a registry with the
//! product's last-writer-wins rule (`RegistryEntry::supersedes`) and "run" an MEU by waiting a
//! fixed virtual time and echoing who ran it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tern_actors::remote::Remote;
use tern_actors::scheduler::{Placed, run_on_peers};
use tern_cluster::NodeName;
use tern_link::memory::MemoryNet;
use tern_link::{ClusterLink, LinkOptions, LocalFuture, LocalNode};
use tern_metrics::Metrics;
use tern_placement::{NodeView, WarmAffinity};
use tern_runtime::Meu;
use tern_tenancy::{Role, TenantEntry, TenantName, TenantSpec, Token, TokenBook};
use tern_wire::peer::{
    NodeStatus, PeerResponse, RegistryEntry, RemoteMeu, RemoteOutcome, TenancyRecords,
};
use tern_wire::{ApiError, ErrorCode, FunctionInfo, ModuleHash, NodeClass};
use tokio::time::sleep;

const SEEDS: u64 = 8;
/// One-way frame delay range of the mesh.
const DELAY: (Duration, Duration) = (Duration::from_micros(100), Duration::from_millis(3));
/// How long a stand-in takes to run an MEU.
const EXEC: Duration = Duration::from_millis(50);
const GRACE: Duration = Duration::from_secs(3);

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn info(name: &str, version: u64, hash: u8, origin_ms: u64) -> FunctionInfo {
    FunctionInfo {
        name: name.parse().unwrap(),
        hash: ModuleHash([hash; 32]),
        version,
        timeout_ms: 1000,
        memory_mb: 64,
        size_bytes: 1,
        deployed_at_ms: origin_ms,
        max_instances: None,
    }
}

fn entry(info: FunctionInfo, removed: bool, origin: &str) -> RegistryEntry {
    RegistryEntry {
        info,
        removed,
        origin: origin.into(),
    }
}

/// How a stand-in answers MEUs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Run,
    /// Full: refuses before running (retryable).
    Refuse,
    /// The guest traps (not retryable).
    Trap,
    /// Runs after this long first (a peer compiling the module on first use).
    Slow(Duration),
}

/// A node behind a link: a registry, and MEUs that take [`EXEC`] of virtual time.
struct FakeNode {
    name: NodeName,
    registry: Mutex<BTreeMap<String, RegistryEntry>>,
    answer: Mutex<Answer>,
    /// (request id, attempt) of every MEU it was asked to run.
    ran: Mutex<Vec<(String, u32)>>,
    /// What each of those MEUs said it had already waited on its sender, in µs.
    waited_us: Mutex<Vec<u64>>,
    stopped: AtomicBool,
    metrics: Metrics,
    /// Bearer-token records, merged by the product's rule (`TokenBook::apply`).
    tokens: Mutex<TokenBook>,
    tenants: Mutex<BTreeMap<TenantName, TenantEntry>>,
    /// Registry entries from peers still to be refused, with `failing_code` (by default
    /// `internal`, as a module fetch that timed out).
    failing_applies: std::sync::atomic::AtomicU32,
    failing_code: Mutex<ErrorCode>,
    /// Registry entries from peers it was asked to apply.
    apply_attempts: std::sync::atomic::AtomicU32,
}

impl FakeNode {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: n(name),
            registry: Mutex::default(),
            answer: Mutex::new(Answer::Run),
            ran: Mutex::default(),
            waited_us: Mutex::default(),
            stopped: AtomicBool::new(false),
            metrics: Metrics::default(),
            tokens: Mutex::default(),
            tenants: Mutex::default(),
            failing_applies: std::sync::atomic::AtomicU32::new(0),
            failing_code: Mutex::new(ErrorCode::Internal),
            apply_attempts: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Applies `e` locally (a deploy or removal on this node), by the same rule as a peer's.
    fn put(&self, e: RegistryEntry) -> bool {
        let mut registry = self.registry.lock().unwrap();
        let name = e.info.name.to_string();
        if e.supersedes(registry.get(&name)) {
            registry.insert(name, e);
            true
        } else {
            false
        }
    }

    fn get(&self, function: &str) -> Option<RegistryEntry> {
        self.registry.lock().unwrap().get(function).cloned()
    }

    fn ran(&self) -> Vec<(String, u32)> {
        self.ran.lock().unwrap().clone()
    }
}

impl LocalNode for FakeNode {
    fn apply_entry<'a>(
        &'a self,
        entry: RegistryEntry,
        _peer: &'a NodeName,
    ) -> LocalFuture<'a, Result<bool, ApiError>> {
        Box::pin(async move {
            self.apply_attempts.fetch_add(1, Ordering::SeqCst);
            let refuse = self
                .failing_applies
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                let code = *self.failing_code.lock().unwrap();
                return Err(ApiError::new(code, "refused by the stand-in"));
            }
            Ok(self.put(entry))
        })
    }

    fn tenancy(&self) -> Result<TenancyRecords, ApiError> {
        Ok(TenancyRecords {
            tenants: self.tenants.lock().unwrap().values().cloned().collect(),
            tokens: self.tokens.lock().unwrap().records().cloned().collect(),
        })
    }

    fn apply_tenancy(&self, records: TenancyRecords) -> Result<usize, ApiError> {
        let mut tenants = self.tenants.lock().unwrap();
        let mut changed = 0;
        for entry in records.tenants {
            if entry.supersedes(tenants.get(entry.name())) {
                tenants.insert(entry.name().clone(), entry);
                changed += 1;
            }
        }
        let mut book = self.tokens.lock().unwrap();
        Ok(changed
            + records
                .tokens
                .into_iter()
                .filter(|r| book.apply(r.clone()))
                .count())
    }

    fn registry(&self) -> Result<Vec<RegistryEntry>, ApiError> {
        Ok(self.registry.lock().unwrap().values().cloned().collect())
    }

    fn module(&self, _hash: &ModuleHash) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(None)
    }

    fn execute_for_peer(
        &self,
        meu: RemoteMeu,
        _stream: tern_runtime::AnswerStream,
    ) -> LocalFuture<'_, PeerResponse> {
        Box::pin(async move {
            if self.stopped.load(Ordering::SeqCst) {
                return PeerResponse::Error(ApiError::new(ErrorCode::Unavailable, "stopped"));
            }
            self.ran
                .lock()
                .unwrap()
                .push((meu.request_id.clone(), meu.attempt));
            self.waited_us.lock().unwrap().push(meu.waited_us);
            let answer = *self.answer.lock().unwrap();
            match answer {
                Answer::Refuse => {
                    PeerResponse::Error(ApiError::new(ErrorCode::Overloaded, "queue full"))
                }
                Answer::Trap => {
                    sleep(EXEC).await;
                    PeerResponse::Error(ApiError::new(ErrorCode::GuestTrap, "unreachable"))
                }
                Answer::Run | Answer::Slow(_) => {
                    if let Answer::Slow(first) = answer {
                        sleep(first).await;
                    }
                    sleep(EXEC).await;
                    PeerResponse::Executed(RemoteOutcome {
                        output: format!("{}:{}", self.name, String::from_utf8_lossy(&meu.input))
                            .into_bytes(),
                        cold_start: false,
                        timings: Default::default(),
                        node: self.name.to_string(),
                        peer_us: 0,
                    })
                }
            }
        })
    }

    fn status(&self, seq: u64, cpu_percent: u32, recent_mean_us: u64) -> NodeStatus {
        let ready = self
            .registry
            .lock()
            .unwrap()
            .values()
            .filter(|e| !e.removed)
            .map(|e| e.info.hash)
            .collect::<Vec<_>>();
        NodeStatus {
            node: self.name.to_string(),
            class: NodeClass::Standard,
            max_memory_mb: 512,
            max_timeout_ms: 10_000,
            queue_depth: 0,
            queue_cap: 64,
            warm: ready.clone(),
            ready,
            cpu_percent,
            memory_bytes: 0,
            recent_mean_us,
            seq,
            tenant_demand: Vec::new(),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Nodes on one in-memory mesh, each with its link.
struct Cluster {
    net: MemoryNet,
    nodes: BTreeMap<String, (Arc<FakeNode>, Arc<ClusterLink>)>,
    /// Every link's [`LinkOptions::load_allowance`].
    load_allowance: Duration,
}

impl Cluster {
    /// `names` all declared as peers of each other; only `running` start now.
    fn start(seed: u64, names: &[&str], running: &[&str]) -> Self {
        Self::start_allowing(seed, names, running, Duration::ZERO)
    }

    /// [`Cluster::start`] with links that allow peers `load_allowance` to load a module.
    fn start_allowing(
        seed: u64,
        names: &[&str],
        running: &[&str],
        load_allowance: Duration,
    ) -> Self {
        let all: Vec<NodeName> = names.iter().map(|s| n(s)).collect();
        let mut cluster = Self {
            net: MemoryNet::new(seed, &all, DELAY),
            nodes: BTreeMap::new(),
            load_allowance,
        };
        for name in running {
            cluster.boot(name, FakeNode::new(name));
        }
        cluster
    }

    /// Starts `node` (again) as `name`.
    fn boot(&mut self, name: &str, node: Arc<FakeNode>) {
        let weak: Weak<dyn LocalNode> = Arc::downgrade(&node) as Weak<FakeNode>;
        let options = LinkOptions {
            node_name: n(name),
            frame_limit: 1 << 20,
            sync_grace: GRACE,
            has_peers: true,
            load_allowance: self.load_allowance,
        };
        let net = self.net.clone();
        let link = ClusterLink::with_net(options, weak, None, |handler| {
            Box::new(net.attach(&n(name), handler).unwrap())
        });
        self.nodes.insert(name.to_owned(), (node, link));
    }

    fn node(&self, name: &str) -> &Arc<FakeNode> {
        &self.nodes[name].0
    }

    fn link(&self, name: &str) -> &Arc<ClusterLink> {
        &self.nodes[name].1
    }

    /// Deploys `e` on every running node, as if replication had already happened.
    fn deploy_everywhere(&self, e: &RegistryEntry) {
        for (node, _) in self.nodes.values() {
            node.put(e.clone());
        }
    }

    fn candidates(&self, from: &str, f: &FunctionInfo) -> Vec<String> {
        let mut out = Vec::new();
        self.link(from).candidates(f, &mut out);
        out.into_iter().map(|v| v.name).collect()
    }

    async fn stop(self) {
        for (_, link) in self.nodes.values() {
            link.shutdown().await;
        }
    }
}

/// This node as the SchedulerAgent describes itself to placement.
fn local_view(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        alive: true,
        fits: true,
        queue_depth: 0,
        queue_cap: usize::MAX,
        warm: true,
        class: NodeClass::Standard,
        max_memory_mb: 512,
        max_timeout_ms: 10_000,
        ..NodeView::default()
    }
}

fn meu(id: &str, f: &FunctionInfo) -> Meu {
    Meu::new(id, f.name.clone(), Bytes::from(id.to_owned()), 1)
}

/// Runs `meu` from `from` the way its SchedulerAgent does once placement chose `chosen`.
async fn forward(
    c: &Cluster,
    from: &str,
    m: Meu,
    f: &FunctionInfo,
    chosen: &str,
) -> (Placed, Vec<String>) {
    let mut nodes = vec![local_view(from)];
    c.link(from).candidates(f, &mut nodes);
    let names = nodes.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
    let chosen = names.iter().position(|x| x == chosen).unwrap();
    let placement = WarmAffinity { spill_at: 8 };
    let link: &dyn Remote = c.link(from).as_ref();
    let reserved = link.reserve(&names[chosen]);
    let placed = run_on_peers(
        link,
        &placement,
        &c.node(from).metrics,
        m,
        f,
        0,
        nodes,
        chosen,
        reserved,
    )
    .await;
    (placed, names)
}

fn answered_by(placed: &Placed) -> String {
    match placed {
        Placed::Answered(Ok(o)) => o.node.to_string(),
        Placed::Here(_) => "here".into(),
        Placed::Answered(Err(e)) => panic!("the MEU failed: {e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn statuses_over_the_mesh_make_every_peer_with_the_version_a_candidate() {
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b", "c"], &["a", "b", "c"]);
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        // g only on c: put there after the start-up anti-entropy, and not announced.
        let g = info("g", 1, 2, 10);
        c.node("c").put(entry(g.clone(), false, "c"));
        sleep(Duration::from_millis(500)).await;
        assert_eq!(c.candidates("a", &f), ["b", "c"], "seed {seed}");
        assert_eq!(c.candidates("a", &g), ["c"], "seed {seed}");
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_peer_stops_being_a_candidate_at_once_and_returns_after_the_heal() {
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b", "c"], &["a", "b", "c"]);
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        c.net.partition(&n("a"), &n("c"), true);
        // The membership event is delivered to the watcher task; give it a turn.
        sleep(Duration::from_millis(1)).await;
        assert_eq!(c.candidates("a", &f), ["b"], "seed {seed}");
        assert_eq!(c.candidates("c", &f), ["b"], "seed {seed}");
        c.net.partition(&n("a"), &n("c"), false);
        sleep(Duration::from_millis(500)).await;
        assert_eq!(c.candidates("a", &f), ["b", "c"], "seed {seed}");
        c.stop().await;
    }
}

/// A member that sees a peer come back after a partition says so for the window asked (the
/// keyed-call lookups depend on it), on both sides of the cut; peers coming up for the first
/// time, and a member that saw nothing of the cut, do not count.
#[tokio::test(start_paused = true)]
async fn both_sides_of_a_healed_partition_see_a_peer_return_for_the_window_and_the_first_start_is_none()
 {
    const WINDOW: Duration = Duration::from_secs(5);
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b", "c"], &["a", "b", "c"]);
        sleep(Duration::from_secs(1)).await;
        for node in ["a", "b", "c"] {
            assert!(
                !c.link(node).a_peer_returned_within(WINDOW),
                "{node}, seed {seed}"
            );
        }
        c.net.partition(&n("a"), &n("c"), true);
        sleep(Duration::from_secs(2)).await;
        assert!(
            !c.link("a").a_peer_returned_within(WINDOW),
            "seed {seed}: still cut"
        );
        c.net.partition(&n("a"), &n("c"), false);
        sleep(Duration::from_millis(500)).await;
        for node in ["a", "c"] {
            assert!(
                c.link(node).a_peer_returned_within(WINDOW),
                "{node}, seed {seed}"
            );
        }
        assert!(
            !c.link("b").a_peer_returned_within(WINDOW),
            "b saw no cut, seed {seed}"
        );
        sleep(WINDOW).await;
        assert!(
            !c.link("a").a_peer_returned_within(WINDOW),
            "seed {seed}: window over"
        );
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_whose_statuses_stop_arriving_drops_out_when_the_last_goes_stale() {
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b"], &["a", "b"]);
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        assert_eq!(c.candidates("a", &f), ["b"]);
        // One-way: b's frames to a vanish, the link stays up.
        c.net.drop_frames(&n("b"), &n("a"), true);
        sleep(Duration::from_millis(1500)).await;
        assert_eq!(c.candidates("a", &f), ["b"], "still fresh, seed {seed}");
        sleep(Duration::from_millis(1000)).await;
        assert!(c.candidates("a", &f).is_empty(), "stale, seed {seed}");
        assert!(c.net.is_up(&n("a"), &n("b")));
        c.net.drop_frames(&n("b"), &n("a"), false);
        sleep(Duration::from_millis(500)).await;
        assert_eq!(c.candidates("a", &f), ["b"], "back, seed {seed}");
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn registries_changed_on_both_sides_of_a_partition_converge_after_the_heal() {
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b"], &["a", "b"]);
        let v1 = entry(info("f", 1, 1, 10), false, "a");
        let doomed = entry(info("gone", 1, 3, 10), false, "a");
        c.deploy_everywhere(&v1);
        c.deploy_everywhere(&doomed);
        sleep(Duration::from_millis(500)).await;
        c.net.partition(&n("a"), &n("b"), true);
        sleep(Duration::from_millis(1)).await;
        // a deploys f v2; b removes `gone` and deploys `new`. Announcements cannot get
        // through (the link is down).
        let v2 = entry(info("f", 2, 2, 20), false, "a");
        c.node("a").put(v2.clone());
        c.link("a").announce(vec![v2.clone()]);
        let tomb = entry(info("gone", 2, 3, 30), true, "b");
        let new = entry(info("new", 1, 4, 30), false, "b");
        c.node("b").put(tomb.clone());
        c.node("b").put(new.clone());
        c.link("b").announce(vec![tomb.clone(), new.clone()]);
        sleep(Duration::from_secs(1)).await;
        assert_eq!(c.node("b").get("f"), Some(v1.clone()), "seed {seed}");
        c.net.partition(&n("a"), &n("b"), false);
        sleep(Duration::from_secs(1)).await;
        for node in ["a", "b"] {
            let node = c.node(node);
            assert_eq!(node.get("f"), Some(v2.clone()), "seed {seed}");
            assert_eq!(node.get("gone"), Some(tomb.clone()), "seed {seed}");
            assert_eq!(node.get("new"), Some(new.clone()), "seed {seed}");
        }
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn tenants_and_tokens_reach_every_peer_revocations_and_removals_win_and_a_returning_node_pulls_them()
 {
    for seed in 0..SEEDS {
        let mut c = Cluster::start(seed, &["a", "b", "c"], &["a", "b"]);
        sleep(Duration::from_millis(500)).await;
        let acme: TenantName = "acme".parse().unwrap();
        let created = TenantEntry::create(acme.clone(), TenantSpec::default(), 10, "a");
        let (secret, record) = Token::generate(acme.clone(), Role::Invoker, 10).unwrap();
        let both = TenancyRecords {
            tenants: vec![created.clone()],
            tokens: vec![record.clone()],
        };
        assert_eq!(c.node("a").apply_tenancy(both.clone()).unwrap(), 2);
        c.link("a").announce_tenancy(both);
        sleep(Duration::from_millis(100)).await;
        assert_eq!(
            c.node("b").tenants.lock().unwrap().get(&acme),
            Some(&created),
            "seed {seed}: the tenant was announced to b"
        );
        let knows = |node: &FakeNode| {
            node.tokens
                .lock()
                .unwrap()
                .authenticate(secret.expose())
                .is_ok()
        };
        assert!(knows(c.node("b")), "seed {seed}: announced to b");
        // b revokes; a hears of it; c, away, hears of neither yet.
        let revoked = {
            let mut book = c.node("b").tokens.lock().unwrap();
            book.revoke(&record.id, 20).unwrap().clone()
        };
        let removed = created.remove(20, "b");
        c.node("b")
            .tenants
            .lock()
            .unwrap()
            .insert(acme.clone(), removed.clone());
        c.link("b").announce_tenancy(TenancyRecords {
            tenants: vec![removed.clone()],
            tokens: vec![revoked],
        });
        sleep(Duration::from_millis(100)).await;
        assert!(!knows(c.node("a")), "seed {seed}: the revocation reached a");
        assert_eq!(
            c.node("a").tenants.lock().unwrap().get(&acme),
            Some(&removed),
            "seed {seed}: and the removal"
        );
        c.boot("c", FakeNode::new("c"));
        sleep(Duration::from_millis(200)).await;
        let c_book = c.node("c").tokens.lock().unwrap().clone();
        let got = c_book.get(&record.id).expect("c pulled the token");
        assert!(got.is_revoked(), "seed {seed}: and its revocation");
        assert_eq!(
            c.node("c").tenants.lock().unwrap().get(&acme),
            Some(&removed),
            "seed {seed}: c pulled the tenant's tombstone"
        );
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_whose_peers_are_unreachable_knows_the_registry_only_at_the_end_of_its_grace() {
    let c = Cluster::start(0, &["a", "b", "c"], &["a"]);
    sleep(GRACE - Duration::from_millis(10)).await;
    assert!(!c.link("a").registry_synced());
    sleep(Duration::from_millis(20)).await;
    assert!(c.link("a").registry_synced());
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_member_knows_the_registry_as_soon_as_it_pulled_one_peer() {
    for seed in 0..SEEDS {
        let mut c = Cluster::start(seed, &["a", "b", "c"], &["b"]);
        let f = entry(info("f", 1, 1, 10), false, "b");
        c.node("b").put(f.clone());
        c.boot("a", FakeNode::new("a"));
        assert!(!c.link("a").registry_synced());
        sleep(Duration::from_millis(50)).await;
        assert!(c.link("a").registry_synced(), "seed {seed}");
        assert_eq!(c.node("a").get("f"), Some(f), "seed {seed}");
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_entry_that_fails_to_apply_is_tried_again_before_the_member_counts_itself_synced() {
    for (failures, applied) in [(1, true), (2, true), (u32::MAX, false)] {
        let mut c = Cluster::start(0, &["a", "b", "c"], &["b"]);
        let f = entry(info("f", 1, 1, 10), false, "b");
        c.node("b").put(f.clone());
        let a = FakeNode::new("a");
        a.failing_applies.store(failures, Ordering::SeqCst);
        c.boot("a", a);
        for _ in 0..100 {
            sleep(Duration::from_millis(10)).await;
            let has_f = c.node("a").get("f").is_some();
            assert!(
                !c.link("a").registry_synced() || has_f || !applied,
                "synced without f after {failures} failure(s)"
            );
        }
        assert!(c.link("a").registry_synced(), "{failures} failure(s)");
        assert_eq!(
            c.node("a").get("f").is_some(),
            applied,
            "a bad entry does not hold the member back forever"
        );
        c.stop().await;
    }
}

/// A refusal that would come back the same (an invalid module, a quota) is not tried again;
/// one that may pass (internal, overloaded, unavailable, a timeout) is.
#[tokio::test(start_paused = true)]
async fn an_entry_refused_for_good_is_tried_once_and_a_passing_failure_again() {
    for (code, attempts) in [
        (ErrorCode::InvalidModule, 1),
        (ErrorCode::QuotaExceeded, 1),
        (ErrorCode::Overloaded, 2),
        (ErrorCode::Internal, 2),
    ] {
        let mut c = Cluster::start(0, &["a", "b", "c"], &["b"]);
        c.node("b").put(entry(info("f", 1, 1, 10), false, "b"));
        let a = FakeNode::new("a");
        a.failing_applies.store(1, Ordering::SeqCst);
        *a.failing_code.lock().unwrap() = code;
        c.boot("a", a);
        sleep(Duration::from_millis(300)).await;
        assert_eq!(
            c.node("a").apply_attempts.load(Ordering::SeqCst),
            attempts,
            "{code}"
        );
        assert_eq!(c.node("a").get("f").is_some(), attempts == 2, "{code}");
        assert!(c.link("a").registry_synced(), "{code}");
        c.stop().await;
    }
}

/// A peer's queue depth as placement sees it from `a` counts the MEUs `a` has placed there
/// and not had back: from the decision (`reserve`), before the peer's next status.
#[tokio::test(start_paused = true)]
async fn a_reserved_forward_raises_the_peers_queue_depth_at_once_and_its_end_lowers_it() {
    let c = Cluster::start(0, &["a", "b", "c"], &["a", "b", "c"]);
    let f = info("f", 1, 1, 10);
    c.deploy_everywhere(&entry(f.clone(), false, "a"));
    sleep(Duration::from_secs(1)).await;
    let link: &dyn Remote = c.link("a").as_ref();
    let depths = || {
        let mut out = Vec::new();
        link.candidates(&f, &mut out);
        out.iter()
            .map(|v| (v.name.clone(), v.queue_depth))
            .collect::<Vec<_>>()
    };
    assert_eq!(depths(), [("b".into(), 0), ("c".into(), 0)]);
    let first = link.reserve("b");
    let second = link.reserve("b");
    assert_eq!(depths(), [("b".into(), 2), ("c".into(), 0)]);
    assert_eq!(link.forwarding(), 2);
    drop(first);
    drop(second);
    assert_eq!(depths(), [("b".into(), 0), ("c".into(), 0)]);
    assert_eq!(link.forwarding(), 0);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_forwarded_meu_is_answered_by_the_peer_it_was_placed_on() {
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b", "c"], &["a", "b", "c"]);
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        let (placed, _) = forward(&c, "a", meu("r1", &f), &f, "b").await;
        let Placed::Answered(Ok(outcome)) = placed else {
            panic!("{placed:?}")
        };
        assert_eq!(&outcome.output[..], b"b:r1");
        assert_eq!(c.node("b").ran(), [("r1".to_owned(), 1)]);
        assert!(c.node("c").ran().is_empty());
        c.stop().await;
    }
}

/// The function's time limit runs from acceptance: a forwarded MEU tells its peer how long it
/// already waited; after its peer is lost mid-run, the rerun starts with the whole limit (the
/// lost run may have used any part of it), on a peer or here.
#[tokio::test(start_paused = true)]
async fn a_forwarded_meu_carries_the_time_it_waited_and_its_rerun_after_a_lost_peer_starts_afresh()
{
    let age = Duration::from_secs(5);
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b", "c"], &["a", "b", "c"]);
        // A limit the age leaves room in (the entry waits for the peer only within it).
        let f = FunctionInfo {
            timeout_ms: 9_000,
            ..info("f", 1, 1, 10)
        };
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        let aged = |id: &str| Meu {
            accepted_at: (tokio::time::Instant::now() - age).into_std(),
            ..meu(id, &f)
        };
        let (placed, _) = forward(&c, "a", aged("r1"), &f, "b").await;
        assert_eq!(answered_by(&placed), "b", "seed {seed}");
        let waited = c.node("b").waited_us.lock().unwrap().clone();
        assert_eq!(waited.len(), 1, "seed {seed}");
        assert!(
            (age.as_micros() as u64..age.as_micros() as u64 + 1_000_000).contains(&waited[0]),
            "seed {seed}: waited {waited:?}"
        );

        let crash = {
            let net = c.net.clone();
            tokio::spawn(async move {
                sleep(EXEC / 2).await;
                net.crash(&n("b"));
            })
        };
        let (placed, _) = forward(&c, "a", aged("r2"), &f, "b").await;
        crash.await.unwrap();
        assert_eq!(
            c.node("b").waited_us.lock().unwrap().len(),
            2,
            "seed {seed}"
        );
        match placed {
            Placed::Here(rerun) => assert!(
                tokio::time::Instant::from_std(rerun.accepted_at).elapsed() < age,
                "seed {seed}"
            ),
            Placed::Answered(Ok(o)) => {
                assert_eq!(&*o.node, "c", "seed {seed}");
                let rerun = c.node("c").waited_us.lock().unwrap().clone();
                assert!(
                    rerun.len() == 1 && rerun[0] < age.as_micros() as u64,
                    "{rerun:?}"
                );
            }
            Placed::Answered(Err(e)) => panic!("seed {seed}: {e}"),
        }
        c.stop().await;
    }
}

/// A peer that compiles the module first (nodes on the baseline runtime profile) may answer
/// after the function's limit plus the grace: within the link's load allowance the entry
/// waits for it; without one it gives up with `timeout`.
#[tokio::test(start_paused = true)]
async fn a_forwarded_meu_waits_for_a_peers_load_only_within_the_load_allowance() {
    for (allowance, waits) in [(Duration::ZERO, false), (Duration::from_secs(60), true)] {
        let c = Cluster::start_allowing(0, &["a", "b"], &["a", "b"], allowance);
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        // Three seconds of compiling, against a 1 s limit and the 0.5 s grace.
        *c.node("b").answer.lock().unwrap() = Answer::Slow(Duration::from_secs(3));
        let (placed, _) = forward(&c, "a", meu("r", &f), &f, "b").await;
        match placed {
            Placed::Answered(Ok(o)) => {
                assert!(waits, "answered without an allowance");
                assert_eq!(&o.output[..], b"b:r");
            }
            Placed::Answered(Err(e)) => {
                assert!(!waits, "gave up within the allowance: {e}");
                assert_eq!(e.code(), ErrorCode::Timeout);
            }
            Placed::Here(_) => panic!("placed back here"),
        }
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_meu_whose_peer_crashes_mid_run_is_rerun_once_elsewhere_and_answered_once() {
    for seed in 0..SEEDS {
        let c = Cluster::start(seed, &["a", "b", "c"], &["a", "b", "c"]);
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        let crash = {
            let net = c.net.clone();
            tokio::spawn(async move {
                sleep(EXEC / 2).await;
                net.crash(&n("b"));
            })
        };
        let (placed, nodes) = forward(&c, "a", meu("r2", &f), &f, "b").await;
        crash.await.unwrap();
        // WarmAffinity re-places among a and c by rendezvous hashing.
        let expected = if WarmAffinity::weight("f", "a") > WarmAffinity::weight("f", "c") {
            "here"
        } else {
            "c"
        };
        assert_eq!(answered_by(&placed), expected, "seed {seed}, {nodes:?}");
        assert_eq!(c.node("b").ran(), [("r2".to_owned(), 1)], "seed {seed}");
        let reruns = c.node("c").ran();
        if expected == "c" {
            assert_eq!(reruns, [("r2".to_owned(), 2)], "seed {seed}");
        } else {
            assert!(reruns.is_empty(), "seed {seed}");
        }
        assert_eq!(
            c.node("a").metrics.failover_reruns.load(Ordering::Relaxed),
            1
        );
        c.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_refuses_is_skipped_and_a_guest_failure_is_the_answer() {
    let c = Cluster::start(0, &["a", "b", "c"], &["a", "b", "c"]);
    let f = info("f", 1, 1, 10);
    c.deploy_everywhere(&entry(f.clone(), false, "a"));
    sleep(Duration::from_secs(1)).await;

    *c.node("b").answer.lock().unwrap() = Answer::Refuse;
    let (placed, _) = forward(&c, "a", meu("r3", &f), &f, "b").await;
    assert_ne!(answered_by(&placed), "b");
    assert_eq!(c.node("b").ran(), [("r3".to_owned(), 1)]);

    *c.node("b").answer.lock().unwrap() = Answer::Trap;
    let (placed, _) = forward(&c, "a", meu("r4", &f), &f, "b").await;
    let Placed::Answered(Err(e)) = placed else {
        panic!("{placed:?}")
    };
    assert_eq!(e.code(), ErrorCode::GuestTrap);
    assert!(
        !c.node("c").ran().iter().any(|(id, _)| id == "r4"),
        "a guest failure must not be re-run"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn random_crashes_and_partitions_never_lose_or_duplicate_an_answer() {
    for seed in 0..SEEDS {
        let names = ["a", "b", "c", "d"];
        let c = Arc::new(Cluster::start(seed, &names, &names));
        let f = info("f", 1, 1, 10);
        c.deploy_everywhere(&entry(f.clone(), false, "a"));
        sleep(Duration::from_secs(1)).await;
        // Faults: a seeded schedule over 400 ms of partitions, heals and one crash.
        let faults = {
            let net = c.net.clone();
            tokio::spawn(async move {
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for step in 0..20 {
                    sleep(Duration::from_millis(20)).await;
                    let peer = n(names[1 + (next() % 3) as usize]);
                    match next() % 3 {
                        0 => net.partition(&n("a"), &peer, true),
                        1 => net.partition(&n("a"), &peer, false),
                        _ if step == 10 => net.crash(&peer),
                        _ => {}
                    }
                }
            })
        };
        let mut runs = Vec::new();
        for i in 0..24 {
            let c = c.clone();
            let f = f.clone();
            runs.push(tokio::spawn(async move {
                sleep(Duration::from_millis(15 * i)).await;
                let mut nodes = vec![local_view("a")];
                c.link("a").candidates(&f, &mut nodes);
                let placement = WarmAffinity { spill_at: 8 };
                let Ok(chosen) = tern_placement::Placement::place(
                    &placement,
                    &tern_placement::MeuView {
                        function: "f",
                        items: 1,
                        memory_mb: 64,
                        timeout_ms: 1000,
                        mean_exec_us: 0,
                    },
                    &nodes,
                ) else {
                    unreachable!("this node always fits")
                };
                let id = format!("m{i}");
                if chosen == 0 {
                    return (id, "here".to_owned());
                }
                let link: &dyn Remote = c.link("a").as_ref();
                let reserved = link.reserve(&nodes[chosen].name);
                let placed = run_on_peers(
                    link,
                    &placement,
                    &c.node("a").metrics,
                    meu(&id, &f),
                    &f,
                    0,
                    nodes,
                    chosen,
                    reserved,
                )
                .await;
                (id, answered_by(&placed))
            }));
        }
        let mut answers = BTreeMap::new();
        for run in runs {
            let (id, by) = tokio::time::timeout(Duration::from_secs(30), run)
                .await
                .expect("an MEU was never answered")
                .unwrap();
            assert!(answers.insert(id, by).is_none());
        }
        faults.await.unwrap();
        assert_eq!(answers.len(), 24, "seed {seed}");
        // Every peer's answer is to an MEU it was asked to run, and an answered MEU was
        // answered by exactly the node whose output came back.
        for (id, by) in &answers {
            if by != "here" {
                assert!(
                    c.node(by).ran().iter().any(|(r, _)| r == id),
                    "seed {seed}: {id} answered by {by}, which never ran it"
                );
            }
        }
        match Arc::try_unwrap(c) {
            Ok(c) => c.stop().await,
            Err(_) => panic!("a task still holds the cluster"),
        }
    }
}
