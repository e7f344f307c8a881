//! ractor_cluster sessions over QUIC, end to end, in-process on 127.0.0.1 with ephemeral ports.
//!
//! ractor's pg groups and pid registry are process-global, so every node of every test here
//! shares them; the tests take a lock to run one at a time (each builds its own nodes) and use
//! one group per test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use tern_cluster::session::{RemoteGroup, group_name};
use tern_cluster::transport::{KIND_RACTOR, codes};
use tern_cluster::{
    ClusterError, Connection, Endpoint, NodeName, SessionConfig, SessionEvent, Sessions,
    TransportConfig, pki,
};
use tokio::sync::broadcast;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Generous: the VM is slow and shared.
const WAIT: Duration = Duration::from_secs(10);

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Node {
    ep: Arc<Endpoint>,
    sessions: Sessions,
}

async fn node(dir: &Path, name: &str) -> Node {
    let id = pki::load(dir, &n(name)).unwrap();
    let ep = Arc::new(Endpoint::bind(&id, any_port(), TransportConfig::default()).unwrap());
    let sessions = Sessions::start(&n(name), SessionConfig::default())
        .await
        .unwrap();
    Node { ep, sessions }
}

fn serve(conn: &Connection) {
    let c = conn.clone();
    tokio::spawn(async move {
        c.serve(|req: Vec<u8>, _parts| async move { req }).await;
    });
}

/// `dialler` connects to `acceptor`; both attach their sessions (before serving, as documented)
/// when `attach` is set. Returns the dialler's and the acceptor's view of the connection.
async fn link(dialler: &Node, acceptor: &Node, attach: bool) -> (Connection, Connection) {
    let accepted = {
        let ep = acceptor.ep.clone();
        let sessions = acceptor.sessions.clone();
        tokio::spawn(async move {
            let conn = ep.accept().await.unwrap();
            if attach {
                sessions.attach(&conn).unwrap();
            }
            serve(&conn);
            conn
        })
    };
    let conn = dialler
        .ep
        .connect(acceptor.sessions.name(), acceptor.ep.local_addr().unwrap())
        .await
        .unwrap();
    if attach {
        dialler.sessions.attach(&conn).unwrap();
    }
    serve(&conn);
    (conn, accepted.await.unwrap())
}

// ----- a remote-capable actor -----

#[derive(RactorClusterMessage)]
enum StatusMsg {
    #[rpc]
    Status(String, RpcReplyPort<String>),
    Blob(Vec<u8>),
}

struct StatusActor {
    answer_as: String,
}

impl Actor for StatusActor {
    type Msg = StatusMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StatusMsg::Status(question, reply) => {
                let _ = reply.send(format!("{}:{question}", self.answer_as));
            }
            StatusMsg::Blob(_) => {}
        }
        Ok(())
    }
}

async fn status_actor(node: &Node, group: &str, answer_as: &str) -> ActorRef<StatusMsg> {
    let (actor, _) = Actor::spawn(
        None,
        StatusActor {
            answer_as: answer_as.to_owned(),
        },
        (),
    )
    .await
    .unwrap();
    node.sessions.join_group(group, actor.get_cell()).unwrap();
    actor
}

async fn ask(sessions: &Sessions, target: &ractor::ActorCell) -> Result<String, ClusterError> {
    sessions
        .call(
            target,
            |reply| StatusMsg::Status("ping".to_owned(), reply),
            Duration::from_secs(3),
        )
        .await
}

async fn next_event(
    rx: &mut broadcast::Receiver<SessionEvent>,
    want: impl Fn(&SessionEvent) -> bool,
) -> SessionEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.unwrap();
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("session event not seen in time")
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached within 5 s: {what}");
}

/// The reset code a peer answered our stream with, from its read side.
async fn reset_code(recv: &mut quinn::RecvStream) -> u64 {
    match tokio::time::timeout(WAIT, recv.read_to_end(1024))
        .await
        .unwrap()
    {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => code.into_inner(),
        other => panic!("expected a reset, got {other:?}"),
    }
}

// ----- hand-made ractor_cluster frames (u64 BE length + protobuf), as a hostile peer sends -----

fn pb_len(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![(tag << 3 | 2) as u8];
    let mut len = bytes.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
    out
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u64).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// `NetworkMessage { auth: AuthenticationMessage { name: NameMessage { name, connection_string } } }`
fn name_frame(name: &str, connection_string: &str) -> Vec<u8> {
    let mut name_msg = pb_len(1, name.as_bytes());
    name_msg.extend(pb_len(3, connection_string.as_bytes()));
    frame(pb_len(1, &pb_len(1, &name_msg)))
}

/// `ServerStatus { OK }` then `Challenge { name, challenge: 5, connection_string }`.
fn server_answer(name: &str, connection_string: &str) -> Vec<u8> {
    let mut out = frame(pb_len(1, &pb_len(2, &[])));
    let mut challenge = pb_len(1, name.as_bytes());
    challenge.extend([3 << 3, 5]);
    challenge.extend(pb_len(4, connection_string.as_bytes()));
    out.extend(frame(pb_len(1, &pb_len(4, &challenge))));
    out
}

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_quic_finds_a_remote_actor_in_pg_and_answers_a_call() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &[n("a"), n("b")]).unwrap();
    let a = node(dir.path(), "a").await;
    let b = node(dir.path(), "b").await;
    let group = group_name("status", 1);
    let actor = status_actor(&a, &group, "a").await;

    let (conn_a, conn_b) = link(&a, &b, true).await;
    let at_b = b.sessions.wait_ready(&n("a"), WAIT).await.unwrap();
    let at_a = a.sessions.wait_ready(&n("b"), WAIT).await.unwrap();
    assert_eq!(at_b.connection_id, conn_b.id());
    assert_eq!(at_a.connection_id, conn_a.id());

    // From b, the group holds a remote actor reached through the session with a.
    let members = b.sessions.remote_members(&n("a"), &group).unwrap();
    assert!(
        !members.is_empty(),
        "no remote member of {group} seen from b"
    );
    for m in &members {
        assert!(
            matches!(m.get_id(), ractor::ActorId::Remote { node_id, .. } if node_id == at_b.node_id),
            "{:?}",
            m.get_id()
        );
    }
    assert_eq!(ask(&b.sessions, &members[0]).await.unwrap(), "a:ping");
    let mut tracked = RemoteGroup::new(&b.sessions, group.clone());
    let tracked_members = tracked.members(&n("a"));
    assert_eq!(
        ask(&b.sessions, &tracked_members[0]).await.unwrap(),
        "a:ping"
    );

    // Control messages stay small: refused before sending, typed; small ones pass.
    let err = b
        .sessions
        .cast(&members[0], StatusMsg::Blob(vec![0; 2 << 20]))
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::MessageTooLarge { limit, .. } if limit == 1 << 20),
        "{err:?}"
    );
    b.sessions
        .cast(&members[0], StatusMsg::Blob(vec![0; 64 << 10]))
        .unwrap();
    assert_eq!(ask(&b.sessions, &members[0]).await.unwrap(), "a:ping");
    // A group nobody joined has no remote members.
    assert!(
        b.sessions
            .remote_members(&n("a"), "tern.nothing.v1")
            .unwrap()
            .is_empty()
    );
    // Data-plane streams still work on the same connection.
    assert_eq!(conn_a.request(b"data").await.unwrap(), b"data");
    assert_eq!(
        a.sessions.rejected_streams() + b.sessions.rejected_streams(),
        0
    );

    actor.stop(None);
    a.sessions.shutdown().await;
    b.sessions.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_claiming_another_name_is_refused_before_ractor_sees_it() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &[n("a"), n("b"), n("c")]).unwrap();
    let a = node(dir.path(), "a").await;
    let b = node(dir.path(), "b").await;
    let group = group_name("status-b", 1);
    let _actor = status_actor(&a, &group, "a").await;
    let mut b_events = b.sessions.subscribe();

    // Only b attaches for now; a (verified by its certificate as `a`) plays the impostor.
    let (conn_a, conn_b) = {
        let accepted = {
            let (ep, sessions) = (b.ep.clone(), b.sessions.clone());
            tokio::spawn(async move {
                let conn = ep.accept().await.unwrap();
                sessions.attach(&conn).unwrap();
                serve(&conn);
                conn
            })
        };
        let conn =
            a.ep.connect(&n("b"), b.ep.local_addr().unwrap())
                .await
                .unwrap();
        (conn, accepted.await.unwrap())
    };

    // 1. A well-formed ractor name message, but for c.
    let (mut send, mut recv) = conn_a.open_raw_stream(KIND_RACTOR).await.unwrap();
    send.write_all(&name_frame("c@c.node.tern", "c.node.tern:1"))
        .await
        .unwrap();
    assert_eq!(
        reset_code(&mut recv).await,
        u64::from(codes::SESSION_IDENTITY)
    );
    // 2. a's own name with another host part.
    let (mut send, mut recv) = conn_a.open_raw_stream(KIND_RACTOR).await.unwrap();
    send.write_all(&name_frame("a@elsewhere", "a.node.tern:1"))
        .await
        .unwrap();
    assert_eq!(
        reset_code(&mut recv).await,
        u64::from(codes::SESSION_IDENTITY)
    );
    // 3. Not a name message at all (a ractor control frame).
    let (mut send, mut recv) = conn_a.open_raw_stream(KIND_RACTOR).await.unwrap();
    send.write_all(&frame(pb_len(3, &[]))).await.unwrap();
    assert_eq!(
        reset_code(&mut recv).await,
        u64::from(codes::SESSION_IDENTITY)
    );
    // 4. A length-prefix bomb.
    let (mut send, mut recv) = conn_a.open_raw_stream(KIND_RACTOR).await.unwrap();
    send.write_all(&u64::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(
        reset_code(&mut recv).await,
        u64::from(codes::FRAME_TOO_LARGE)
    );

    wait_for("4 rejections counted", || {
        b.sessions.rejected_streams() == 4
    })
    .await;
    assert!(b.sessions.ready(&n("c")).is_none());
    assert!(b.sessions.ready(&n("a")).is_none());
    assert!(
        b_events.try_recv().is_err(),
        "no session may form from a refused stream"
    );

    // The refused streams did not use up the connection's one session: the real one forms.
    a.sessions.attach(&conn_a).unwrap();
    serve(&conn_a);
    let at_b = b.sessions.wait_ready(&n("a"), WAIT).await.unwrap();
    assert_eq!(at_b.peer, n("a"));
    let members = b.sessions.remote_members(&n("a"), &group).unwrap();
    assert_eq!(ask(&b.sessions, &members[0]).await.unwrap(), "a:ping");

    // A second session stream on the same connection is refused, even with the right name.
    let (mut send, mut recv) = conn_a.open_raw_stream(KIND_RACTOR).await.unwrap();
    let _ = send
        .write_all(&name_frame("a@a.node.tern", "a.node.tern:1"))
        .await;
    assert_eq!(
        reset_code(&mut recv).await,
        u64::from(codes::SESSION_EXISTS)
    );
    assert_eq!(ask(&b.sessions, &members[0]).await.unwrap(), "a:ping");
    assert_eq!(b.sessions.rejected_streams(), 4);
    assert!(b.sessions.ready(&n("c")).is_none());
    // The higher name never opens the session of a pair: a refuses b's session stream.
    // a may refuse on the kind byte alone, before the frame is written: then the write
    // fails with the stream stopped, which is the refusal too.
    let (mut send, mut recv) = conn_b.open_raw_stream(KIND_RACTOR).await.unwrap();
    let _ = send
        .write_all(&name_frame("b@b.node.tern", "b.node.tern:1"))
        .await;
    assert_eq!(reset_code(&mut recv).await, u64::from(codes::SESSION_ROLE));
    assert_eq!(ask(&b.sessions, &members[0]).await.unwrap(), "a:ping");

    a.sessions.shutdown().await;
    b.sessions.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opening_side_refuses_an_acceptor_that_answers_as_someone_else() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &[n("a"), n("b")]).unwrap();
    let a = node(dir.path(), "a").await;
    let b = node(dir.path(), "b").await;
    let mut a_events = a.sessions.subscribe();

    // b (verified as `b`) takes the session stream itself and answers as c.
    let accepted = {
        let ep = b.ep.clone();
        tokio::spawn(async move {
            let conn = ep.accept().await.unwrap();
            let mut streams = conn.claim_session_streams(1).unwrap();
            serve(&conn);
            let (mut send, _recv) = streams.recv().await.unwrap();
            send.write_all(&server_answer("c@c.node.tern", "c.node.tern:1"))
                .await
                .unwrap();
            let stopped = tokio::time::timeout(WAIT, send.stopped()).await.unwrap();
            (conn, stopped)
        })
    };
    let conn_a =
        a.ep.connect(&n("b"), b.ep.local_addr().unwrap())
            .await
            .unwrap();
    a.sessions.attach(&conn_a).unwrap();
    serve(&conn_a);

    let (conn_b, stopped) = accepted.await.unwrap();
    match stopped {
        Ok(Some(code)) => assert_eq!(code.into_inner(), u64::from(codes::SESSION_IDENTITY)),
        // a closes the connection right after stopping the stream (the session died on it);
        // the close may overtake the stop.
        Err(quinn::StoppedError::ConnectionLost(_)) => {}
        other => panic!("expected the stream stopped or the connection closed: {other:?}"),
    }
    wait_for("the rejection is counted", || {
        a.sessions.rejected_streams() == 1
    })
    .await;
    // The half-open ractor session died; the connection does not outlive it.
    let why = tokio::time::timeout(WAIT, conn_b.closed()).await.unwrap();
    assert!(
        matches!(why, ClusterError::Rejected { code, .. } if code == u64::from(codes::SESSION_LOST)),
        "{why:?}"
    );
    assert!(a.sessions.ready(&n("b")).is_none());
    assert!(
        !matches!(a_events.try_recv(), Ok(SessionEvent::Ready(_))),
        "no session may become ready"
    );
    a.sessions.shutdown().await;
    b.sessions.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_connection_ends_the_session_and_a_reconnect_finds_the_new_actor() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &[n("a"), n("b")]).unwrap();
    let a = node(dir.path(), "a").await;
    let b = node(dir.path(), "b").await;
    let group = group_name("status-c", 1);
    let first = status_actor(&a, &group, "a/1").await;
    let mut tracked = RemoteGroup::new(&b.sessions, group.clone());

    let (conn_a, _conn_b) = link(&a, &b, true).await;
    let before = b.sessions.wait_ready(&n("a"), WAIT).await.unwrap();
    a.sessions.wait_ready(&n("b"), WAIT).await.unwrap();
    let old = tracked.members(&n("a"));
    assert!(!old.is_empty());
    assert_eq!(ask(&b.sessions, &old[0]).await.unwrap(), "a/1:ping");

    // The QUIC connection dies: both sides see the session go down.
    let (mut a_events, mut b_events) = (a.sessions.subscribe(), b.sessions.subscribe());
    conn_a.close();
    let down_b = next_event(&mut b_events, |e| matches!(e, SessionEvent::Down(_))).await;
    assert_eq!(down_b, SessionEvent::Down(before.clone()));
    let down_a = next_event(&mut a_events, |e| matches!(e, SessionEvent::Down(_))).await;
    assert!(matches!(down_a, SessionEvent::Down(info) if info.peer == n("b")));
    assert!(b.sessions.ready(&n("a")).is_none());
    assert!(matches!(
        b.sessions.remote_members(&n("a"), &group),
        Err(ClusterError::SessionNotReady(_))
    ));
    assert!(tracked.members(&n("a")).is_empty());
    // The old remote ref is dead: a typed error, not a hang.
    wait_for("old remote actor stopped", || {
        old[0].get_status() >= ractor::ActorStatus::Stopping
    })
    .await;
    assert!(ask(&b.sessions, &old[0]).await.is_err());

    // a "restarts" its actor, then the pair reconnects over a new connection.
    first.stop(None);
    let _second = status_actor(&a, &group, "a/2").await;
    let (conn_a2, _conn_b2) = link(&a, &b, true).await;
    assert_ne!(conn_a2.id(), conn_a.id());
    let after = next_event(&mut b_events, |e| matches!(e, SessionEvent::Ready(_))).await;
    let SessionEvent::Ready(after) = after else {
        unreachable!()
    };
    assert_eq!(after.peer, n("a"));
    assert_ne!(after.node_id, before.node_id, "a new session has a new id");
    a.sessions.wait_ready(&n("b"), WAIT).await.unwrap();

    // Looked up again on session-ready: the new actor, through the new session.
    let new = tracked.members(&n("a"));
    assert!(!new.is_empty());
    for m in &new {
        assert!(
            matches!(m.get_id(), ractor::ActorId::Remote { node_id, .. } if node_id == after.node_id)
        );
    }
    let answers: Vec<String> = {
        let mut v = Vec::new();
        for m in &new {
            v.push(ask(&b.sessions, m).await.unwrap());
        }
        v
    };
    assert!(answers.iter().all(|s| s == "a/2:ping"), "{answers:?}");
    assert_eq!(
        a.sessions.rejected_streams() + b.sessions.rejected_streams(),
        0
    );

    a.sessions.shutdown().await;
    b.sessions.shutdown().await;
}
