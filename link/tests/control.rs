//! The control plane end to end: nodes in this process over real QUIC connections and
//! ractor_cluster sessions on 127.0.0.1, each with its own `ControlPlane` and a recording sink.
//!
//! ractor's pg groups and pid registry are process-global, so the tests run one at a time
//! (a lock) and each uses its own node names: a failed test's leftovers cannot answer for
//! another test's nodes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::message::SerializedMessage;
use ractor::{ActorCell, ActorId};
use tern_cluster::{Connection, Endpoint, NodeName, SessionConfig, Sessions, TransportConfig, pki};
use tern_link::LocalFuture;
use tern_link::control::{
    self, CONFIRM, CONTROL_FAMILY, ControlConfig, ControlPlane, ControlSink, GRANT, HELLO,
    PeerChange, STATUS, STATUS_FAMILY,
};
use tern_wire::peer::{NodeStatus, RegistryEntry};
use tern_wire::{FunctionInfo, ModuleHash};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: the VM is slow and shared.
const WAIT: Duration = Duration::from_secs(10);

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

#[derive(Default)]
struct Recorder {
    statuses: Mutex<Vec<(NodeName, NodeStatus)>>,
    announced: Mutex<Vec<(NodeName, Vec<RegistryEntry>)>>,
    membership: Mutex<Vec<(NodeName, PeerChange)>>,
}

impl ControlSink for Recorder {
    fn on_status(&self, peer: NodeName, status: NodeStatus) {
        self.statuses.lock().unwrap().push((peer, status));
    }

    fn on_announce(&self, peer: NodeName, entries: Vec<RegistryEntry>) -> LocalFuture<'_, ()> {
        Box::pin(async move {
            self.announced.lock().unwrap().push((peer, entries));
        })
    }

    fn on_membership(&self, peer: NodeName, change: PeerChange) {
        self.membership.lock().unwrap().push((peer, change));
    }
}

impl Recorder {
    fn statuses(&self) -> Vec<(NodeName, NodeStatus)> {
        self.statuses.lock().unwrap().clone()
    }

    fn membership(&self) -> Vec<(NodeName, PeerChange)> {
        self.membership.lock().unwrap().clone()
    }

    fn announced_entries(&self) -> Vec<(NodeName, RegistryEntry)> {
        let announced = self.announced.lock().unwrap();
        announced
            .iter()
            .flat_map(|(p, es)| es.iter().map(move |e| (p.clone(), e.clone())))
            .collect()
    }
}

struct Node {
    name: NodeName,
    ep: Arc<Endpoint>,
    sessions: Sessions,
    control: ControlPlane,
    sink: Arc<Recorder>,
}

impl Node {
    async fn shutdown(self) {
        self.control.stop().await;
        self.sessions.shutdown().await;
        self.ep.close();
    }
}

/// Node `name` of a cluster of `all` (its configured peers are the others).
async fn node(dir: &Path, name: &str, all: &[&str]) -> Node {
    let me = n(name);
    let id = pki::load(dir, &me).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ep = Arc::new(Endpoint::bind(&id, any, TransportConfig::default()).unwrap());
    let sessions = Sessions::start(&me, SessionConfig::default())
        .await
        .unwrap();
    let sink = Arc::new(Recorder::default());
    let cfg = ControlConfig {
        peers: all.iter().filter(|p| **p != name).map(|p| n(p)).collect(),
        ..ControlConfig::default()
    };
    let control = ControlPlane::start(&sessions, sink.clone(), cfg)
        .await
        .unwrap();
    Node {
        name: me,
        ep,
        sessions,
        control,
        sink,
    }
}

async fn cluster(names: &[&str]) -> (tempfile::TempDir, Vec<Node>) {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<NodeName> = names.iter().map(|s| n(s)).collect();
    pki::init(dir.path(), &all).unwrap();
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(node(dir.path(), name, names).await);
    }
    (dir, nodes)
}

fn serve(conn: &Connection) {
    let c = conn.clone();
    tokio::spawn(async move {
        c.serve(|req: Vec<u8>, _parts| async move { req }).await;
    });
}

/// `x` dials `y`; both attach their sessions before serving, as `Sessions::attach` asks.
/// Returns `x`'s side of the connection.
async fn link(x: &Node, y: &Node) -> Connection {
    let accepted = {
        let (ep, sessions) = (y.ep.clone(), y.sessions.clone());
        tokio::spawn(async move {
            let conn = ep.accept().await.unwrap();
            sessions.attach(&conn).unwrap();
            serve(&conn);
            conn
        })
    };
    let conn =
        x.ep.connect(&y.name, y.ep.local_addr().unwrap())
            .await
            .unwrap();
    x.sessions.attach(&conn).unwrap();
    serve(&conn);
    accepted.await.unwrap();
    conn
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached in time: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Time for a misrouted or duplicated message to show up, were there one.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn status(claimed_node: &str, seq: u64) -> NodeStatus {
    NodeStatus {
        node: claimed_node.to_owned(),
        queue_cap: 64,
        ready: vec![ModuleHash([7; 32]); 4],
        seq,
        ..NodeStatus::default()
    }
}

fn entry(i: u64) -> RegistryEntry {
    RegistryEntry {
        info: FunctionInfo {
            name: format!("function-{i:06}-{}", "x".repeat(40))
                .parse()
                .unwrap(),
            hash: ModuleHash([(i % 251) as u8; 32]),
            version: i,
            timeout_ms: 1000,
            memory_mb: 64,
            size_bytes: 4096,
            deployed_at_ms: i,
            max_instances: None,
        },
        removed: false,
        origin: "somewhere".to_owned(),
    }
}

/// What a hostile peer uses: a ref, on `from`'s side, to `to`'s actor in `family`.
async fn remote_ref(from: &Node, to: &Node, family: &str) -> ActorCell {
    let group = control::group(family, &to.name);
    for _ in 0..500 {
        let found = ractor::pg::get_members(&group).into_iter().find(|c| {
            matches!(c.get_id(), ActorId::Remote { .. })
                && c.get_status() == ractor::ActorStatus::Running
        });
        if let (Some(cell), Some(_)) = (found, from.sessions.ready(&to.name)) {
            return cell;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no ref to {}'s {family} actor", to.name);
}

fn raw_cast(cell: &ActorCell, variant: &str, args: Vec<u8>) {
    cell.send_serialized(SerializedMessage::Cast {
        variant: variant.to_owned(),
        args,
        metadata: None,
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_reaches_only_the_peer_it_was_sent_to_labelled_by_the_session_not_the_payload() {
    let _serial = SERIAL.lock().await;
    // a1 has sessions with b1 and c1; b1 and c1 have none with each other. In this process,
    // b1's session with a1 advertises c1's actor too: a status must still not reach c1.
    let (_dir, nodes) = cluster(&["a1", "b1", "c1"]).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes).ok().unwrap();
    link(&a, &b).await;
    link(&a, &c).await;
    a.control
        .wait_linked(&[n("b1"), n("c1")], WAIT)
        .await
        .unwrap();
    b.control.wait_linked(&[n("a1")], WAIT).await.unwrap();
    c.control.wait_linked(&[n("a1")], WAIT).await.unwrap();
    assert_eq!(b.control.linked().await.unwrap(), vec![n("a1")]);

    // b1 claims to be c1 in its status: the label comes from b1's ticket, from the session.
    let reached = b.control.publish_status(&status("c1", 7)).unwrap();
    assert_eq!(reached, vec![n("a1")], "a status goes to linked peers only");
    wait_for("a1 has b1's status", || !a.sink.statuses().is_empty()).await;
    settle().await;
    assert_eq!(a.sink.statuses(), vec![(n("b1"), status("c1", 7))]);
    assert!(c.sink.statuses().is_empty(), "{:?}", c.sink.statuses());
    assert!(b.sink.statuses().is_empty());

    c.control.publish_status(&status("c1", 9)).unwrap();
    wait_for("a1 has c1's status", || a.sink.statuses().len() == 2).await;
    settle().await;
    assert_eq!(a.sink.statuses()[1], (n("c1"), status("c1", 9)));
    assert!(b.sink.statuses().is_empty(), "{:?}", b.sink.statuses());
    for x in [&a, &b, &c] {
        assert_eq!(x.control.counters().refused, 0, "{}", x.name);
    }
    for x in [a, b, c] {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_full_mesh_every_peer_gets_exactly_one_copy_labelled_with_its_sender() {
    let _serial = SERIAL.lock().await;
    let (_dir, nodes) = cluster(&["a2", "b2", "c2"]).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes).ok().unwrap();
    link(&a, &b).await;
    link(&a, &c).await;
    link(&b, &c).await;
    for (x, peers) in [(&a, ["b2", "c2"]), (&b, ["a2", "c2"]), (&c, ["a2", "b2"])] {
        x.control.wait_linked(&peers.map(n), WAIT).await.unwrap();
    }
    for (i, x) in [&a, &b, &c].into_iter().enumerate() {
        x.control
            .publish_status(&status(x.name.as_str(), i as u64))
            .unwrap();
    }
    for x in [&a, &b, &c] {
        wait_for("two statuses", || x.sink.statuses().len() >= 2).await;
    }
    settle().await;
    for (i, x) in [&a, &b, &c].into_iter().enumerate() {
        let mut got = x.sink.statuses();
        got.sort_by_key(|(p, _)| p.clone());
        let expected: Vec<(NodeName, NodeStatus)> = [&a, &b, &c]
            .into_iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, y)| (y.name.clone(), status(y.name.as_str(), j as u64)))
            .collect();
        assert_eq!(got, expected, "at {}", x.name);
    }
    for x in [a, b, c] {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_over_the_cap_arrives_whole_in_chunks_under_it() {
    let _serial = SERIAL.lock().await;
    let (_dir, nodes) = cluster(&["a3", "b3"]).await;
    let [a, b] = <[Node; 2]>::try_from(nodes).ok().unwrap();
    link(&a, &b).await;
    // Announced as soon as a3's actor knows the session, likely before the tickets are
    // confirmed: queued chunks must go out too.
    wait_for("a3 sees b3 up", || {
        a.sink.membership().contains(&(n("b3"), PeerChange::Up))
    })
    .await;
    // About 100 bytes an entry: well over the 1 MiB cap in all.
    let entries: Vec<RegistryEntry> = (0..25_000).map(entry).collect();
    let announced = a.control.announce(&entries).await.unwrap();
    let chunks = announced.chunks;
    assert!(chunks >= 2, "{chunks} chunk(s)");
    assert_eq!(announced.peers, vec![n("b3")], "reached (cast or queued)");
    wait_for("every entry applied at b3", || {
        b.sink.announced_entries().len() >= entries.len()
    })
    .await;
    let got = b.sink.announced_entries();
    assert!(got.iter().all(|(p, _)| *p == n("a3")));
    let got: Vec<RegistryEntry> = got.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, entries, "in order, once each");
    assert_eq!(b.control.counters().announcements_received, chunks as u64);
    // Sessions::cast refuses anything over the cap: nothing was refused on the way.
    assert_eq!(a.control.counters().send_failed, 0);
    assert_eq!(b.control.counters().refused, 0);
    for x in [a, b] {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_pass_its_messages_off_as_another_peers() {
    let _serial = SERIAL.lock().await;
    let (_dir, nodes) = cluster(&["a4", "b4", "c4"]).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes).ok().unwrap();
    link(&a, &b).await;
    link(&a, &c).await;
    link(&b, &c).await;
    a.control
        .wait_linked(&[n("b4"), n("c4")], WAIT)
        .await
        .unwrap();
    b.control.wait_linked(&[n("a4")], WAIT).await.unwrap();
    let to_a = remote_ref(&c, &a, STATUS_FAMILY).await;
    let control_a = remote_ref(&c, &a, CONTROL_FAMILY).await;

    // c4 forges a status "from b4": it has no ticket b4 holds, so a random one.
    let forged = tern_wire::encode(&status("b4", 666), 1 << 20).unwrap();
    let mut args = vec![0x5a; 16];
    args.extend_from_slice(&forged);
    raw_cast(&to_a, STATUS, args);
    // c4 forges a grant "from b4" to a4: a4 asks b4 through its own session, b4 disowns it.
    #[derive(serde::Serialize)]
    struct Grant {
        from: String,
        to: String,
        ticket: [u8; 16],
    }
    let grant = |from: &str, to: &str| {
        tern_wire::encode(
            &Grant {
                from: from.to_owned(),
                to: to.to_owned(),
                ticket: [0xa5; 16],
            },
            1 << 20,
        )
        .unwrap()
    };
    raw_cast(&control_a, GRANT, grant("b4", "a4"));
    // A grant meant for someone else delivered here.
    raw_cast(&control_a, GRANT, grant("c4", "b4"));
    // A hello "from b4" only re-sends a4's ticket to the real b4: refused nowhere, harmless.
    raw_cast(
        &control_a,
        HELLO,
        tern_wire::encode(&"b4".to_owned(), 64).unwrap(),
    );

    wait_for("three refusals at a4", || a.control.counters().refused == 3).await;
    // The real b4 is still b4 both ways.
    b.control.publish_status(&status("b4", 1)).unwrap();
    a.control.publish_status(&status("a4", 2)).unwrap();
    wait_for("b4's status at a4", || !a.sink.statuses().is_empty()).await;
    wait_for("a4's status at b4", || !b.sink.statuses().is_empty()).await;
    settle().await;
    assert_eq!(a.sink.statuses(), vec![(n("b4"), status("b4", 1))]);
    assert_eq!(b.sink.statuses(), vec![(n("a4"), status("a4", 2))]);
    assert_eq!(a.control.counters().refused, 3);
    for x in [a, b, c] {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_oversized_payloads_are_refused_and_the_actor_carries_on() {
    let _serial = SERIAL.lock().await;
    let (_dir, nodes) = cluster(&["a5", "b5"]).await;
    let [a, b] = <[Node; 2]>::try_from(nodes).ok().unwrap();
    link(&a, &b).await;
    a.control.wait_linked(&[n("b5")], WAIT).await.unwrap();
    b.control.wait_linked(&[n("a5")], WAIT).await.unwrap();
    let status_a = remote_ref(&b, &a, STATUS_FAMILY).await;
    let control_a = remote_ref(&b, &a, CONTROL_FAMILY).await;

    // 2 MiB: past the 1 MiB cap that Sessions::cast enforces on send, which a peer may skip.
    raw_cast(&status_a, STATUS, vec![0; 2 << 20]);
    raw_cast(&status_a, "no-such-variant", vec![1, 2, 3]);
    raw_cast(&control_a, GRANT, vec![0xff; 64]);
    raw_cast(&control_a, HELLO, vec![0xff; 3]);
    raw_cast(&status_a, STATUS, vec![]);
    // A call the actor does not answer: the caller gets an error, not a hang.
    let (tx, rx) = ractor::concurrency::oneshot::<Vec<u8>>();
    control_a
        .send_serialized(SerializedMessage::Call {
            variant: CONFIRM.to_owned(),
            args: vec![1, 2, 3],
            reply: (tx, Duration::from_secs(5)).into(),
            metadata: None,
        })
        .unwrap();
    // The actor drops the port; ractor_cluster then sends no reply at all, so the caller's
    // own bound ends the wait (`Sessions::call` always has one).
    let answer = tokio::time::timeout(Duration::from_secs(2), rx).await;
    assert!(!matches!(answer, Ok(Ok(_))), "{answer:?}");

    wait_for("six refusals at a5", || a.control.counters().refused == 6).await;
    b.control.publish_status(&status("b5", 3)).unwrap();
    wait_for("b5's status at a5", || !a.sink.statuses().is_empty()).await;
    assert_eq!(a.sink.statuses(), vec![(n("b5"), status("b5", 3))]);
    for x in [a, b] {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_going_down_is_reported_and_a_new_session_links_again() {
    let _serial = SERIAL.lock().await;
    let (_dir, nodes) = cluster(&["a6", "b6", "c6"]).await;
    let [a, b, c] = <[Node; 3]>::try_from(nodes).ok().unwrap();
    let ab = link(&a, &b).await;
    link(&a, &c).await;
    link(&b, &c).await;
    a.control
        .wait_linked(&[n("b6"), n("c6")], WAIT)
        .await
        .unwrap();
    b.control
        .wait_linked(&[n("a6"), n("c6")], WAIT)
        .await
        .unwrap();
    c.control
        .wait_linked(&[n("a6"), n("b6")], WAIT)
        .await
        .unwrap();
    // Two independent sessions: either may be ready first.
    let mut ups = a.sink.membership();
    ups.sort_by_key(|(p, _)| p.clone());
    assert_eq!(
        ups,
        vec![(n("b6"), PeerChange::Up), (n("c6"), PeerChange::Up)]
    );

    ab.close();
    wait_for("a6 sees b6 down", || {
        a.sink.membership().contains(&(n("b6"), PeerChange::Down))
    })
    .await;
    wait_for("b6 sees a6 down", || {
        b.sink.membership().contains(&(n("a6"), PeerChange::Down))
    })
    .await;
    assert_eq!(a.control.linked().await.unwrap(), vec![n("c6")]);
    assert!(
        !c.sink
            .membership()
            .iter()
            .any(|(_, ch)| *ch == PeerChange::Down)
    );
    // The others still talk across the change (in this process their sessions' remote refs
    // share ids with the dead session's: they must not be lost with it). A status sent just
    // as a route died may be lost, like any status: the publisher sends the next one.
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.sink.statuses().is_empty() || b.sink.statuses().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "c6's status at a6 and b6"
        );
        c.control.publish_status(&status("c6", 1)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for x in [&a, &b] {
        assert!(
            x.sink
                .statuses()
                .iter()
                .all(|s| *s == (n("c6"), status("c6", 1)))
        );
    }
    let before = a.sink.statuses().len();

    // A new connection, a new session, new tickets.
    link(&a, &b).await;
    a.control
        .wait_linked(&[n("b6"), n("c6")], WAIT)
        .await
        .unwrap();
    b.control
        .wait_linked(&[n("a6"), n("c6")], WAIT)
        .await
        .unwrap();
    assert_eq!(
        a.sink
            .membership()
            .into_iter()
            .filter(|(p, _)| *p == n("b6"))
            .map(|(_, ch)| ch)
            .collect::<Vec<_>>(),
        vec![PeerChange::Up, PeerChange::Down, PeerChange::Up]
    );
    b.control.publish_status(&status("b6", 2)).unwrap();
    wait_for("b6's status at a6", || {
        a.sink.statuses().len() == before + 1
    })
    .await;
    assert_eq!(a.sink.statuses()[before], (n("b6"), status("b6", 2)));
    for x in [&a, &b, &c] {
        assert_eq!(x.control.counters().refused, 0, "{}", x.name);
    }
    for x in [a, b, c] {
        x.shutdown().await;
    }
}
