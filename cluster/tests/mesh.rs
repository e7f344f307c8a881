//! End-to-end tests of the QUIC mesh, all in-process on 127.0.0.1 with ephemeral ports.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tern_cluster::membership::{BackoffConfig, LossReason, Membership, PeerState};

use tern_cluster::transport::{KIND_DATA, KIND_RACTOR, KIND_STREAMED, codes};
use tern_cluster::{
    ClusterError, Connection, Endpoint, NodeIdentity, NodeName, PartSender, TransportConfig, pki,
};

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn cluster(dir: &Path, nodes: &[&str]) {
    let names: Vec<NodeName> = nodes.iter().map(|s| n(s)).collect();
    pki::init(dir, &names).unwrap();
}

fn bind(dir: &Path, name: &str, cfg: TransportConfig) -> Endpoint {
    let id = pki::load(dir, &n(name)).unwrap();
    Endpoint::bind(&id, any_port(), cfg).unwrap()
}

/// Accepts one connection on `ep` and serves it with a handler that echoes with a prefix,
/// sleeping first when asked to (to keep a stream open while others are refused). Asked
/// `parts` with a part sender, it first sends `part 0` and `part 1`, 300 ms apart.
fn serve_one(ep: &std::sync::Arc<Endpoint>) -> tokio::task::JoinHandle<Connection> {
    serve_one_with(ep, std::sync::Arc::new(AtomicBool::new(false)))
}

/// [`serve_one`], setting `dropped` when a `parts` request's work is dropped unfinished.
fn serve_one_with(
    ep: &std::sync::Arc<Endpoint>,
    dropped: std::sync::Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Connection> {
    let ep = ep.clone();
    tokio::spawn(async move {
        let conn = ep.accept().await.unwrap();
        let server = conn.clone();
        tokio::spawn(async move {
            server
                .serve(move |req: Vec<u8>, parts: Option<PartSender>| {
                    let dropped = dropped.clone();
                    async move {
                        if req == b"slow" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        if let (b"parts", Some(parts)) = (req.as_slice(), parts) {
                            let unfinished = SetOnDrop(dropped);
                            parts.send(b"part 0".to_vec()).unwrap();
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            parts.send(b"part 1".to_vec()).unwrap();
                            std::mem::forget(unfinished);
                        }
                        let mut out = b"echo:".to_vec();
                        out.extend(req);
                        out
                    }
                })
                .await
        });
        conn
    })
}

/// Sets its flag when dropped.
struct SetOnDrop(std::sync::Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A node added later with the kept CA key (`tern cluster add-node`) is trusted by the
/// original nodes, both ways; a key from another cluster cannot add one, and nothing is
/// overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_with_the_kept_ca_key_is_trusted_by_the_original_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (pki_dir, ca_key) = (dir.path().join("pki"), dir.path().join("ca.key"));
    let written = pki::init_keeping_ca_key(&pki_dir, &[n("a"), n("b")], Some(&ca_key)).unwrap();
    assert!(written.contains(&ca_key));
    assert!(
        !pki_dir.join("ca.key").exists(),
        "the CA key stays out of the shared dir"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ca_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "CA key must be private");
    }
    let added = pki::add_node(&pki_dir, &ca_key, &n("d")).unwrap();
    assert_eq!(added, vec![pki_dir.join("d.pem"), pki_dir.join("d.key")]);
    assert!(matches!(
        pki::add_node(&pki_dir, &ca_key, &n("d")),
        Err(ClusterError::AlreadyExists(_))
    ));
    // Another cluster's CA key is refused before anything is written.
    let other = dir.path().join("other");
    let other_key = dir.path().join("other-ca.key");
    pki::init_keeping_ca_key(&other, &[n("x")], Some(&other_key)).unwrap();
    assert!(matches!(
        pki::add_node(&pki_dir, &other_key, &n("e")),
        Err(ClusterError::BadPem { .. })
    ));
    assert!(!pki_dir.join("e.pem").exists());

    // d dials a (d > a, so only a test does that) and a dials d: verified both ways.
    let a = std::sync::Arc::new(bind(&pki_dir, "a", TransportConfig::default()));
    let d = std::sync::Arc::new(bind(&pki_dir, "d", TransportConfig::default()));
    let at_a = serve_one(&a);
    let conn = d.connect(&n("a"), a.local_addr().unwrap()).await.unwrap();
    assert_eq!(conn.request(b"hi").await.unwrap(), b"echo:hi");
    assert_eq!(at_a.await.unwrap().peer(), &n("d"));
    let at_d = serve_one(&d);
    let conn = a.connect(&n("d"), d.local_addr().unwrap()).await.unwrap();
    assert_eq!(conn.request(b"yo").await.unwrap(), b"echo:yo");
    assert_eq!(at_d.await.unwrap().peer(), &n("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_ca_peers_connect_verify_names_and_exchange_requests() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = std::sync::Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let accepted = serve_one(&b);

    let t0 = Instant::now();
    let mut membership = Membership::new(n("a"), [n("b")], BackoffConfig::default(), 1, t0);
    let (dials, _) = membership.tick(t0);
    assert_eq!(dials.len(), 1);

    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    assert_eq!(conn.peer(), &n("b"));
    let events = membership.connected(conn.peer(), conn.id(), Instant::now());
    assert_eq!(events[0].state, PeerState::Up);

    let server_side = accepted.await.unwrap();
    assert_eq!(
        server_side.peer(),
        &n("a"),
        "acceptor learns the verified dialler name"
    );

    assert_eq!(conn.request(b"hello").await.unwrap(), b"echo:hello");
    assert_eq!(conn.request(b"").await.unwrap(), b"echo:");
    // Many concurrent requests on one connection.
    let mut handles = Vec::new();
    for i in 0..20u8 {
        let c = conn.clone();
        handles.push(tokio::spawn(async move { c.request(&[i; 1000]).await }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.await.unwrap().unwrap();
        assert_eq!(&out[5..], &[i as u8; 1000][..]);
    }
    assert_eq!(a.rejected_handshakes() + b.rejected_handshakes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_ca_is_rejected_both_ways() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    cluster(ours.path(), &["a", "b"]);
    cluster(theirs.path(), &["a", "b"]);
    let a = bind(ours.path(), "a", TransportConfig::default());
    let foreign_b = bind(theirs.path(), "b", TransportConfig::default());

    // We dial them: their server certificate does not chain to our CA.
    let err = a
        .connect(&n("b"), foreign_b.local_addr().unwrap())
        .await
        .unwrap_err();
    println!("dialling a foreign node: {err}");
    assert!(matches!(err, ClusterError::Connection(_)), "{err:?}");

    // They dial us: our server refuses their client certificate.
    let foreign_a = bind(theirs.path(), "a", TransportConfig::default());
    let b = bind(ours.path(), "b", TransportConfig::default());
    let err = foreign_a
        .connect(&n("b"), b.local_addr().unwrap())
        .await
        .unwrap_err();
    println!("dialled by a foreign node: {err}");
    assert!(
        matches!(
            err,
            ClusterError::Connection(_) | ClusterError::Rejected { .. }
        ),
        "{err:?}"
    );
    // Nothing reaches accept; the rejection is counted.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.accept())
            .await
            .is_err()
    );
    wait_for(|| b.rejected_handshakes() >= 1).await;
}

/// A certificate of the cluster's own CA for a member's name, but expired (a node that kept
/// an old identity): the member it dials refuses it and counts the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_of_the_clusters_own_ca_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (pki_dir, ca_key) = (dir.path().join("pki"), dir.path().join("ca.key"));
    pki::init_keeping_ca_key(&pki_dir, &[n("a"), n("b")], Some(&ca_key)).unwrap();
    let old = dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(pki_dir.join("ca.pem"), old.join("ca.pem")).unwrap();
    pki::add_expired_node(&old, &ca_key, &n("b")).unwrap();
    assert!(matches!(
        pki::add_expired_node(&old, &ca_key, &n("b")),
        Err(ClusterError::AlreadyExists(_))
    ));
    let a = std::sync::Arc::new(bind(&pki_dir, "a", TransportConfig::default()));
    let expired = bind(&old, "b", TransportConfig::default());
    let accepted = {
        let a = a.clone();
        tokio::spawn(
            async move { tokio::time::timeout(Duration::from_millis(500), a.accept()).await },
        )
    };
    let err = expired
        .connect(&n("a"), a.local_addr().unwrap())
        .await
        .map(|_| ())
        .unwrap_err();
    println!("expired certificate dialling: {err}");
    assert!(
        !matches!(accepted.await.unwrap(), Ok(Ok(_))),
        "a accepted a connection from an expired certificate"
    );
    wait_for(|| a.rejected_handshakes() >= 1).await;
    // The same name with a current certificate is let in: the refusal was the date.
    let b = bind(&pki_dir, "b", TransportConfig::default());
    let _served = serve_one(&a);
    b.connect(&n("a"), a.local_addr().unwrap()).await.unwrap();
}

/// A node with a valid certificate of the cluster's CA but a name outside the members an
/// endpoint accepts is refused in the handshake (its connect fails, the refusal is counted);
/// a member still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_for_a_name_outside_the_members_is_refused_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b", "x"]);
    let a = std::sync::Arc::new(bind(dir.path(), "a", TransportConfig::default()));
    a.accept_only([n("a"), n("b")]);
    let x = bind(dir.path(), "x", TransportConfig::default());
    let err = x
        .connect(&n("a"), a.local_addr().unwrap())
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Rejected { code, .. } if code == u64::from(codes::IDENTITY)),
        "{err:?}"
    );
    wait_for(|| a.rejected_handshakes() == 1).await;
    let b = bind(dir.path(), "b", TransportConfig::default());
    let _served = serve_one(&a);
    b.connect(&n("a"), a.local_addr().unwrap()).await.unwrap();
    assert_eq!(a.rejected_handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_a_valid_cert_is_rejected_and_changes_no_membership() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b", "c"]);
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    // Holds b's valid certificate and key but claims to be c.
    let impostor_id =
        NodeIdentity::from_pem(n("c"), &read("b.pem"), &read("b.key"), &read("ca.pem")).unwrap();
    let impostor = Endpoint::bind(&impostor_id, any_port(), TransportConfig::default()).unwrap();
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = bind(dir.path(), "b", TransportConfig::default());

    // `a`'s view: only connections that come out of accept()/connect() verified may call
    // `connected`; everything else must leave membership untouched.
    let t0 = Instant::now();
    let mut membership = Membership::new(n("a"), [n("b"), n("c")], BackoffConfig::default(), 9, t0);
    let mut events = Vec::new();

    // 1. The impostor dials `a` claiming to be `c` (names sort so `a` would normally dial,
    //    but any dialler is checked the same way).
    let err = impostor
        .connect(&n("a"), a.local_addr().unwrap())
        .await
        .unwrap_err();
    println!("impostor dialling: {err}");
    assert!(
        matches!(err, ClusterError::Rejected { code, .. } if code == u64::from(codes::IDENTITY)),
        "{err:?}"
    );
    if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_millis(300), a.accept()).await {
        events.extend(membership.connected(conn.peer(), conn.id(), Instant::now()));
    }
    wait_for(|| a.rejected_handshakes() == 1).await;

    // 2. `a` dials the real `b` at its address but as `c`: b's certificate is not c's.
    let (dials, ev) = membership.tick(Instant::now());
    events.extend(ev);
    assert_eq!(dials.len(), 2);
    match a.connect(&n("c"), b.local_addr().unwrap()).await {
        Ok(conn) => events.extend(membership.connected(conn.peer(), conn.id(), Instant::now())),
        Err(e) => {
            println!("dialling b as c: {e}");
            events.extend(membership.dial_failed(&n("c"), Instant::now()));
        }
    }

    assert!(
        events.iter().all(|e| e.state != PeerState::Up),
        "no peer may come up: {events:?}"
    );
    assert_eq!(membership.state(&n("c")), Some(PeerState::Down));
    assert_eq!(membership.up().count(), 0);
    wait_for(|| b.rejected_handshakes() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_refused_on_its_stream_only() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let small = TransportConfig {
        max_frame: 1024,
        ..TransportConfig::default()
    };
    let b = std::sync::Arc::new(bind(dir.path(), "b", small));
    let _accepted = serve_one(&b);
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();

    // A request in flight on another stream while the big one is refused.
    let slow = {
        let c = conn.clone();
        tokio::spawn(async move { c.request(b"slow").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = conn.request(&vec![7u8; 64 * 1024]).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::StreamRefused(code) if code == u64::from(codes::FRAME_TOO_LARGE)),
        "{err:?}"
    );
    assert_eq!(slow.await.unwrap().unwrap(), b"echo:slow");
    assert_eq!(
        conn.request(b"still here").await.unwrap(),
        b"echo:still here"
    );

    // A length-prefix bomb: the header alone claims 4 GiB.
    let (mut send, mut recv) = conn.open_stream(KIND_DATA).await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    match recv.read_to_end(1024).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), u64::from(codes::FRAME_TOO_LARGE));
        }
        other => panic!("expected a reset, got {other:?}"),
    }

    // The reserved ractor stream kind is refused locally and by the peer.
    assert!(matches!(
        conn.open_stream(KIND_RACTOR).await,
        Err(ClusterError::UnsupportedStreamKind(0x01))
    ));
    let (mut send, mut recv) = conn.open_raw_stream(KIND_RACTOR).await.unwrap();
    send.finish().unwrap();
    match recv.read_to_end(1024).await {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), u64::from(codes::UNSUPPORTED_KIND));
        }
        other => panic!("expected a reset, got {other:?}"),
    }

    // Our own limit applies to what we send too.
    let a_small = bind(
        dir.path(),
        "a",
        TransportConfig {
            max_frame: 16,
            ..TransportConfig::default()
        },
    );
    let _accepted2 = serve_one(&b);
    let conn2 = a_small
        .connect(&n("b"), b.local_addr().unwrap())
        .await
        .unwrap();
    assert!(matches!(
        conn2.request(&[0; 17]).await,
        Err(ClusterError::FrameTooLarge {
            size: 17,
            limit: 16
        })
    ));
    // The response ("echo:" + 12 bytes) exceeds a's 16-byte limit: refused, typed.
    assert!(matches!(
        conn2.request(&[1; 12]).await,
        Err(ClusterError::FrameTooLarge { .. })
    ));
    assert_eq!(conn2.request(b"ok").await.unwrap(), b"echo:ok");
    assert_eq!(
        conn.request(b"first conn").await.unwrap(),
        b"echo:first conn"
    );
}

/// Requests reuse a few long-lived streams: sequential requests share one, concurrent ones
/// open at most one each, and a request costs the requester about one datagram (a stream
/// per request cost three: the request, and ACKs for the answer and for stream credit).
/// An idle lane outlives `request_timeout` on the serving side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_lanes_and_send_about_one_datagram_each() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let short = TransportConfig {
        request_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let b = std::sync::Arc::new(bind(dir.path(), "b", short));
    let _accepted = serve_one(&b);
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();

    assert_eq!(conn.request(b"warm").await.unwrap(), b"echo:warm");
    let sent = conn.datagrams_sent();
    for i in 0..200u32 {
        let req = i.to_be_bytes();
        let mut want = b"echo:".to_vec();
        want.extend(req);
        assert_eq!(conn.request(&req).await.unwrap(), want);
    }
    let per_request = (conn.datagrams_sent() - sent) as f64 / 200.0;
    assert!(
        per_request < 1.5,
        "{per_request:.2} datagrams sent per request"
    );
    assert_eq!(conn.lanes_opened(), 1, "sequential requests share one lane");

    // Idle for longer than the server's request timeout: the lane is still good.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(conn.request(b"later").await.unwrap(), b"echo:later");
    assert_eq!(conn.lanes_opened(), 1);

    // Concurrent requests open at most one lane each, and every answer is its own.
    let handles: Vec<_> = (0..8u8)
        .map(|i| {
            let c = conn.clone();
            tokio::spawn(async move { (i, c.request(&[i; 100]).await.unwrap()) })
        })
        .collect();
    for h in handles {
        let (i, answer) = h.await.unwrap();
        assert_eq!(&answer[5..], &[i; 100]);
    }
    assert!(conn.lanes_opened() <= 9, "{}", conn.lanes_opened());

    // Without idle lanes every request opens (and finishes) a stream of its own.
    let one_shot = bind(
        dir.path(),
        "a",
        TransportConfig {
            max_idle_lanes: 0,
            ..TransportConfig::default()
        },
    );
    let _accepted2 = serve_one(&b);
    let conn2 = one_shot
        .connect(&n("b"), b.local_addr().unwrap())
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(conn2.request(b"x").await.unwrap(), b"echo:x");
    }
    assert_eq!(conn2.lanes_opened(), 3);
}

/// A request abandoned mid-exchange (its timeout fired while the server was still working)
/// never leaves a lane whose late answer the next request would read as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_does_not_leak_its_answer_into_the_next() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let impatient = TransportConfig {
        request_timeout: Duration::from_millis(100),
        ..TransportConfig::default()
    };
    let a = bind(dir.path(), "a", impatient);
    let b = std::sync::Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let _accepted = serve_one(&b);
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    assert_eq!(conn.request(b"first").await.unwrap(), b"echo:first");
    assert!(matches!(
        conn.request(b"slow").await,
        Err(ClusterError::Timeout(_))
    ));
    // The slow answer arrives while these run; none of them may see it.
    for i in 0..5u8 {
        assert_eq!(
            conn.request(&[i]).await.unwrap(),
            [b"echo:".as_slice(), &[i]].concat()
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(
        conn.lanes_opened(),
        2,
        "the abandoned lane is replaced once"
    );
}

/// a's connection to b, where b serves with [`serve_one_with`]`(dropped)`; the rest is kept
/// so that both ends stay up.
async fn a_connected_to_served_b(
    dropped: Arc<AtomicBool>,
) -> (Connection, (tempfile::TempDir, Endpoint, Arc<Endpoint>)) {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let _accepted = serve_one_with(&b, dropped);
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    (conn, (dir, a, b))
}

/// A streamed request's parts reach the requester as the server sends them, before its
/// answer; a plain request to the same handler has no parts to send. Streamed requests reuse
/// their stream as plain ones reuse lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_requests_parts_arrive_as_they_are_sent_then_its_answer() {
    let (conn, _kept) = a_connected_to_served_b(Arc::new(AtomicBool::new(false))).await;
    let (parts, mut got) = tokio::sync::mpsc::unbounded_channel();
    let requester = conn.clone();
    let exchange = tokio::spawn(async move { requester.request_streamed(b"parts", &parts).await });
    let first = tokio::time::timeout(Duration::from_millis(250), got.recv())
        .await
        .expect("the first part comes before the server's pause ends");
    assert_eq!(first.unwrap(), b"part 0");
    assert!(!exchange.is_finished(), "the answer is still to come");
    assert_eq!(exchange.await.unwrap().unwrap(), b"echo:parts");
    assert_eq!(got.recv().await.unwrap(), b"part 1");
    assert!(got.recv().await.is_none(), "nothing after the answer");
    // Whole answers on the same connection are unchanged, streamed or not.
    let (parts, mut got) = tokio::sync::mpsc::unbounded_channel();
    assert_eq!(
        conn.request_streamed(b"plain", &parts).await.unwrap(),
        b"echo:plain"
    );
    drop(parts);
    assert!(got.recv().await.is_none());
    assert_eq!(conn.request(b"parts").await.unwrap(), b"echo:parts");
    // One streamed lane carried both streamed requests, one plain lane the plain one.
    assert_eq!(conn.lanes_opened(), 2);
}

/// A streamed lane that ends after passing a part on is not tried again on a new lane: the
/// part has reached the caller, so the request fails instead of running twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_lane_ended_after_a_part_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let server = b.clone();
    let peer = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        let (mut streams, mut requests) = (0, 0);
        let frame = |mark: u8, payload: &[u8]| {
            tern_wire::encode_frame(&[&[mark], payload].concat(), 1024).unwrap()
        };
        while let Ok((mut send, mut recv)) = conn.accept_raw_stream().await {
            streams += 1;
            let mut kind = [0u8; 1];
            recv.read_exact(&mut kind).await.unwrap();
            loop {
                let mut header = [0u8; 4];
                if recv.read_exact(&mut header).await.is_err() {
                    break;
                }
                let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                recv.read_exact(&mut body).await.unwrap();
                requests += 1;
                if requests == 2 {
                    // A part, then the stream ends without its last frame.
                    send.write_all(&frame(1, b"part")).await.unwrap();
                    send.finish().unwrap();
                    break;
                }
                send.write_all(&frame(0, b"whole")).await.unwrap();
            }
        }
        (streams, requests)
    });
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    let (parts, mut got) = tokio::sync::mpsc::unbounded_channel();
    assert_eq!(conn.request_streamed(b"1", &parts).await.unwrap(), b"whole");
    let second = conn.request_streamed(b"2", &parts).await;
    assert!(second.is_err(), "{second:?}");
    drop(parts);
    assert_eq!(got.recv().await.unwrap(), b"part");
    assert!(got.recv().await.is_none());
    conn.close();
    assert_eq!(
        peer.await.unwrap(),
        (1, 2),
        "one stream, each request sent once"
    );
}

/// A requester that gives up on a streamed request resets its stream, and the server drops
/// the work instead of finishing it for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_streamed_request_stops_the_servers_work() {
    let dropped = Arc::new(AtomicBool::new(false));
    let (conn, _kept) = a_connected_to_served_b(dropped.clone()).await;
    let (parts, mut got) = tokio::sync::mpsc::unbounded_channel();
    let requester = conn.clone();
    let exchange = tokio::spawn(async move { requester.request_streamed(b"parts", &parts).await });
    assert_eq!(got.recv().await.unwrap(), b"part 0");
    exchange.abort();
    wait_for(|| dropped.load(Ordering::SeqCst)).await;
    assert_eq!(conn.request(b"after").await.unwrap(), b"echo:after");
}

/// A node of the previous version refuses the streamed stream kind before reading it: the
/// request goes again on a lane, and its answer comes whole; later ones go on lanes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_streamed_answers_is_asked_on_a_lane_instead() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = std::sync::Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let server = b.clone();
    let old_peer = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        let mut kinds = Vec::new();
        while let Ok((mut send, mut recv)) = conn.accept_raw_stream().await {
            let mut kind = [0u8; 1];
            recv.read_exact(&mut kind).await.unwrap();
            kinds.push(kind[0]);
            if kind[0] != KIND_DATA {
                let code = quinn::VarInt::from_u32(codes::UNSUPPORTED_KIND);
                let _ = recv.stop(code);
                let _ = send.reset(code);
                continue;
            }
            let mut header = [0u8; 4];
            recv.read_exact(&mut header).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            recv.read_exact(&mut body).await.unwrap();
            let answer = [b"old:".as_slice(), &body].concat();
            send.write_all(&tern_wire::encode_frame(&answer, 1024).unwrap())
                .await
                .unwrap();
            send.finish().unwrap();
        }
        kinds
    });
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    for x in [b"x", b"y"] {
        let (parts, mut got) = tokio::sync::mpsc::unbounded_channel();
        assert_eq!(
            conn.request_streamed(x, &parts).await.unwrap(),
            [b"old:".as_slice(), x].concat()
        );
        drop(parts);
        assert!(got.recv().await.is_none(), "no parts from a whole answer");
    }
    conn.close();
    // Asked once: after the refusal, straight to lanes (a new one each time, as this peer
    // answers once per stream).
    assert_eq!(
        old_peer.await.unwrap(),
        vec![KIND_STREAMED, KIND_DATA, KIND_DATA]
    );
}

/// A node of the previous mesh version answers one request per stream, then finishes it.
/// A lane kept after such an answer is refused or ended on its next use, before the request
/// is read: it is sent again on a fresh stream, so every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_once_per_stream_still_gets_every_request() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = std::sync::Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let server = b.clone();
    let old_peer = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        let mut served = 0u32;
        while let Ok((mut send, mut recv)) = conn.accept_raw_stream().await {
            let mut kind = [0u8; 1];
            recv.read_exact(&mut kind).await.unwrap();
            assert_eq!(kind[0], KIND_DATA);
            let mut header = [0u8; 4];
            recv.read_exact(&mut header).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            recv.read_exact(&mut body).await.unwrap();
            let answer = [b"old:".as_slice(), &body].concat();
            send.write_all(&tern_wire::encode_frame(&answer, 1024).unwrap())
                .await
                .unwrap();
            send.finish().unwrap();
            drop(recv);
            served += 1;
        }
        served
    });
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    for i in 0..10u8 {
        assert_eq!(
            conn.request(&[i]).await.unwrap(),
            [b"old:".as_slice(), &[i]].concat()
        );
    }
    conn.close();
    assert_eq!(old_peer.await.unwrap(), 10, "each request was read once");
}

/// Idle lanes hold the peer's stream credit. A peer that grants fewer streams than this side
/// would keep idle: a request waiting for credit takes a lane given back instead, and
/// opening another kind of stream gives the idle lanes' credit back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_lanes_never_starve_other_streams_of_credit() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let stingy = TransportConfig {
        max_concurrent_streams: 4,
        ..TransportConfig::default()
    };
    let b = std::sync::Arc::new(bind(dir.path(), "b", stingy));
    let _accepted = serve_one(&b);
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let c = conn.clone();
            tokio::spawn(async move { c.request(b"slow").await })
        })
        .collect();
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), b"echo:slow");
    }
    assert!(conn.lanes_opened() <= 4, "{}", conn.lanes_opened());
    // All four streams b grants are idle lanes now.
    let opened = tokio::time::timeout(Duration::from_secs(2), conn.open_stream(KIND_DATA)).await;
    let (mut send, mut recv) = opened
        .expect("no stream credit while lanes sat idle")
        .unwrap();
    send.write_all(&tern_wire::encode_frame(b"raw", 64).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(64).await.unwrap();
    assert_eq!(&answer[4..], b"echo:raw");
    assert_eq!(conn.request(b"after").await.unwrap(), b"echo:after");
}

/// Idle lanes of one kind do not keep the other kind waiting: with every stream the peer
/// grants held by idle data lanes, a streamed request finishes them and goes on a new stream
/// (and the other way round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_lanes_of_one_kind_give_their_credit_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let stingy = TransportConfig {
        max_concurrent_streams: 4,
        ..TransportConfig::default()
    };
    let b = Arc::new(bind(dir.path(), "b", stingy));
    let _accepted = serve_one_with(&b, Arc::new(AtomicBool::new(false)));
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    let hold_all_credit = |streamed: bool| {
        let slow: Vec<_> = (0..4)
            .map(|_| {
                let c = conn.clone();
                tokio::spawn(async move {
                    if streamed {
                        let (parts, _got) = tokio::sync::mpsc::unbounded_channel();
                        c.request_streamed(b"slow", &parts).await
                    } else {
                        c.request(b"slow").await
                    }
                })
            })
            .collect::<Vec<_>>();
        async move {
            for s in slow {
                assert_eq!(s.await.unwrap().unwrap(), b"echo:slow");
            }
        }
    };
    // Four data lanes, idle now, hold the four streams b grants.
    hold_all_credit(false).await;
    let (parts, _got) = tokio::sync::mpsc::unbounded_channel();
    let streamed = tokio::time::timeout(
        Duration::from_secs(2),
        conn.request_streamed(b"after", &parts),
    )
    .await
    .expect("a streamed request waited for credit idle data lanes held");
    assert_eq!(streamed.unwrap(), b"echo:after");
    // And the other way round.
    hold_all_credit(true).await;
    let plain = tokio::time::timeout(Duration::from_secs(2), conn.request(b"plain"))
        .await
        .expect("a request waited for credit idle streamed lanes held");
    assert_eq!(plain.unwrap(), b"echo:plain");
}

/// The serving side answers every request on a stream in order, whether the requester keeps
/// the stream (a lane) or finishes it after pipelining several requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_stream_carries_several_requests_in_order() {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let a = bind(dir.path(), "a", TransportConfig::default());
    let b = std::sync::Arc::new(bind(dir.path(), "b", TransportConfig::default()));
    let _accepted = serve_one(&b);
    let conn = a.connect(&n("b"), b.local_addr().unwrap()).await.unwrap();
    let (mut send, mut recv) = conn.open_stream(KIND_DATA).await.unwrap();
    for req in [b"one".as_slice(), b"two", b""] {
        send.write_all(&tern_wire::encode_frame(req, 1024).unwrap())
            .await
            .unwrap();
    }
    send.finish().unwrap();
    let answers = recv.read_to_end(1024).await.unwrap();
    let mut decoder = tern_wire::FrameDecoder::new(1024);
    decoder.push(&answers).unwrap();
    let mut got = Vec::new();
    while let Some(frame) = decoder.next_frame().unwrap() {
        got.push(frame);
    }
    assert_eq!(
        got,
        vec![
            b"echo:one".to_vec(),
            b"echo:two".to_vec(),
            b"echo:".to_vec()
        ]
    );
}

enum Death {
    /// The peer's runtime is blocked: like SIGSTOP, nothing is read or sent.
    Freeze,
    /// The peer's runtime and everything in it is dropped without a goodbye.
    Drop,
}

/// Runs `b` on its own single-threaded runtime so the test can freeze or kill it whole.
async fn peer_death_is_noticed(death: Death) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b"]);
    let b_id = pki::load(dir.path(), &n("b")).unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let peer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ep = std::sync::Arc::new(
                Endpoint::bind(&b_id, any_port(), TransportConfig::default()).unwrap(),
            );
            addr_tx.send(ep.local_addr().unwrap()).unwrap();
            let keep = (ep.clone(), serve_one(&ep));
            die_rx.await.unwrap();
            match death {
                Death::Freeze => {
                    std::thread::sleep(Duration::from_secs(3));
                    drop(keep);
                }
                // Leaves the endpoint inside a task; dropping the runtime drops it undriven.
                Death::Drop => {
                    tokio::spawn(async move {
                        let _keep = keep;
                        std::future::pending::<()>().await
                    });
                }
            }
        });
        drop(rt);
    });
    let b_addr = addr_rx.recv().unwrap();
    let a = bind(dir.path(), "a", TransportConfig::default());
    let conn = a.connect(&n("b"), b_addr).await.unwrap();
    assert_eq!(conn.request(b"ping").await.unwrap(), b"echo:ping");

    let mut membership = Membership::new(
        n("a"),
        [n("b")],
        BackoffConfig::default(),
        1,
        Instant::now(),
    );
    membership.tick(Instant::now());
    membership.connected(conn.peer(), conn.id(), Instant::now());

    let t0 = Instant::now();
    die_tx.send(()).unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    let took = t0.elapsed();
    let reason = match &why {
        ClusterError::Connection(quinn::ConnectionError::TimedOut) => LossReason::TimedOut,
        _ => LossReason::Other(why.to_string()),
    };
    let events = membership.connection_lost(&n("b"), conn.id(), Instant::now(), reason);
    assert_eq!(events[0].state, PeerState::Down);
    println!("peer death noticed after {took:?}: {why}");
    assert!(took <= Duration::from_millis(2500), "took {took:?}");
    // Later requests fail typed and fast instead of hanging.
    assert!(conn.request(b"late").await.is_err());
    tokio::task::spawn_blocking(move || peer.join().unwrap())
        .await
        .unwrap();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_detected_within_the_idle_timeout() {
    peer_death_is_noticed(Death::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abruptly_dropped_peer_is_detected_within_the_idle_timeout() {
    peer_death_is_noticed(Death::Drop).await;
}

async fn wait_for(cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached within 2 s");
}

mod shell {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tern_cluster::mesh::Handler;
    use tern_cluster::{Mesh, MeshConfig};

    use super::*;

    fn handler() -> Handler {
        Arc::new(|peer: NodeName, req: Vec<u8>, _parts: Option<PartSender>| {
            Box::pin(async move {
                let mut out = format!("{peer}:").into_bytes();
                out.extend(req);
                out
            })
        })
    }

    fn start(ep: Endpoint, peers: &[(NodeName, SocketAddr)]) -> Mesh {
        let cfg = MeshConfig {
            peers: peers.to_vec(),
            backoff: BackoffConfig {
                base: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            seed: 7,
        };
        Mesh::start(ep, cfg, handler())
    }

    /// Waits until `mesh` no longer has `peer` up.
    async fn wait_gone(mesh: &Mesh, peer: &str, within: Duration) -> Duration {
        let t0 = Instant::now();
        let mut watch = mesh.watch();
        while watch.borrow_and_update().get(&n(peer)) == Some(&PeerState::Up) {
            let left = within.saturating_sub(t0.elapsed());
            assert!(!left.is_zero(), "{}: {peer} still up", mesh.name());
            let _ = tokio::time::timeout(left, watch.changed()).await;
        }
        t0.elapsed()
    }

    async fn wait_for(mesh: &Mesh, want: &[(&str, PeerState)], within: Duration) -> Duration {
        let t0 = Instant::now();
        let want: BTreeMap<NodeName, PeerState> =
            want.iter().map(|(name, s)| (n(name), *s)).collect();
        let mut watch = mesh.watch();
        loop {
            let view = watch.borrow_and_update().clone();
            if want.iter().all(|(k, v)| view.get(k) == Some(v)) {
                return t0.elapsed();
            }
            let left = within.saturating_sub(t0.elapsed());
            assert!(
                !left.is_zero(),
                "{}: wanted {want:?}, have {view:?}",
                mesh.name()
            );
            let _ = tokio::time::timeout(left, watch.changed()).await;
        }
    }

    /// Three nodes form a full mesh by themselves, serve requests both ways, notice a node that
    /// vanished within the liveness bound, and take it back when it restarts on its address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_form_a_mesh_detect_loss_and_rejoin() {
        let dir = tempfile::tempdir().unwrap();
        cluster(dir.path(), &["a", "b", "c"]);
        let eps: Vec<Endpoint> = ["a", "b", "c"]
            .iter()
            .map(|name| bind(dir.path(), name, TransportConfig::default()))
            .collect();
        let peers: Vec<(NodeName, SocketAddr)> = eps
            .iter()
            .map(|ep| (ep.name().clone(), ep.local_addr().unwrap()))
            .collect();
        let c_addr = peers[2].1;
        let mut meshes: Vec<Mesh> = eps.into_iter().map(|ep| start(ep, &peers)).collect();
        let all_up = Duration::from_secs(10);
        wait_for(
            &meshes[0],
            &[("b", PeerState::Up), ("c", PeerState::Up)],
            all_up,
        )
        .await;
        wait_for(
            &meshes[1],
            &[("a", PeerState::Up), ("c", PeerState::Up)],
            all_up,
        )
        .await;
        wait_for(
            &meshes[2],
            &[("a", PeerState::Up), ("b", PeerState::Up)],
            all_up,
        )
        .await;

        // c did not dial a (a is lower), yet it can send on a's connection: one link per pair.
        let to_a = meshes[2].connection(&n("a")).unwrap();
        assert_eq!(to_a.request(b"hi").await.unwrap(), b"c:hi");
        drop(to_a); // a live handle would keep c's socket open after c stops
        let to_c = meshes[0].connection(&n("c")).unwrap();
        assert_eq!(to_c.request(b"yo").await.unwrap(), b"a:yo");

        // c stops (a crash without goodbye is the `kill -9` test of tern-node, and the frozen
        // peer test above).
        let mut events = meshes[0].subscribe();
        let c = meshes.pop().unwrap();
        c.shutdown();
        // Down lasts only until the first redial (50–100 ms here), then it is Joining: "not up"
        // is what a watcher can rely on seeing.
        let lost = wait_gone(&meshes[0], "c", Duration::from_secs(5)).await;
        assert!(lost <= Duration::from_millis(1500), "c lost after {lost:?}");
        wait_gone(&meshes[1], "c", Duration::from_secs(5)).await;
        // The subscription may still deliver the Up of a dial that raced the shutdown; the
        // first change after that must be Down.
        let event = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let event = events.recv().await.unwrap();
                if event.node == n("c") && event.state != PeerState::Up {
                    break event;
                }
            }
        })
        .await
        .expect("no change of c after Up within 5 s");
        assert_eq!((event.node, event.state), (n("c"), PeerState::Down));
        drop(c);

        // c restarts on the same address; a and b (both lower) redial it.
        // The old socket is released once quinn's driver has finished closing.
        let id = pki::load(dir.path(), &n("c")).unwrap();
        let t0 = Instant::now();
        let ep = loop {
            match Endpoint::bind(&id, c_addr, TransportConfig::default()) {
                Ok(ep) => break ep,
                Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind c: {e}"),
            }
        };
        let c = start(ep, &peers);
        wait_for(&c, &[("a", PeerState::Up), ("b", PeerState::Up)], all_up).await;
        wait_for(&meshes[0], &[("c", PeerState::Up)], all_up).await;
        let to_c = meshes[0].connection(&n("c")).unwrap();
        assert_eq!(to_c.request(b"back").await.unwrap(), b"a:back");
    }
}

/// A dialler that completes TLS but never sends its hello holds a handshake slot until the
/// handshake timeout; with every slot held, further dials are refused at once (and counted),
/// and a slot freed lets the next dial in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_bounded() {
    use std::sync::Arc;

    use quinn::crypto::rustls::QuicClientConfig;
    use rustls::RootCertStore;

    let dir = tempfile::tempdir().unwrap();
    cluster(dir.path(), &["a", "b", "c"]);
    let cfg = TransportConfig {
        max_handshakes: 1,
        handshake_timeout: Duration::from_secs(30),
        ..TransportConfig::default()
    };
    let b = Arc::new(bind(dir.path(), "b", cfg));
    let b_addr = b.local_addr().unwrap();
    let _accepted = serve_one(&b);

    // c completes TLS with a valid certificate, then stays silent.
    let c = pki::load(dir.path(), &n("c")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(c.ca.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![c.cert.clone()], c.key.clone_key())
        .unwrap();
    tls.alpn_protocols = vec![tern_cluster::transport::ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut silent = quinn::Endpoint::client(any_port()).unwrap();
    silent.set_default_client_config(client);
    let stuck = silent
        .connect(b_addr, &n("b").dns_name())
        .unwrap()
        .await
        .unwrap();

    // The only slot is taken: a's dial is refused, not queued.
    let a = bind(dir.path(), "a", TransportConfig::default());
    let before = b.rejected_handshakes();
    let t0 = Instant::now();
    assert!(a.connect(&n("b"), b_addr).await.is_err());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "refusal was not immediate"
    );
    assert_eq!(b.rejected_handshakes(), before + 1);

    // The silent dialler leaves; its slot frees once b notices, and a gets in.
    stuck.close(0u32.into(), b"bye");
    let t0 = Instant::now();
    let conn = loop {
        match a.connect(&n("b"), b_addr).await {
            Ok(conn) => break conn,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "slot never freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(conn.request(b"in").await.unwrap(), b"echo:in");
}
