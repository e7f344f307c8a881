//! Reliability row 5: a cluster link through a relay that loses, delays and reorders
//! datagrams. QUIC delivers every forwarded invocation despite 10 % loss and jitter; when the
//! relay drops everything, invocations are re-placed within the liveness bound instead of
//! hanging; when it recovers, work returns to the owner.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_node::Config;
use tokio::net::UdpSocket;

use crate::cluster::{
    MeshSockets, eventually, init_pki, member_config, name_owned_by, one_cluster_at_a_time,
};
use crate::support::*;

/// A UDP relay in front of `target` for one dialler. Each datagram, either way, is dropped
/// with probability `loss_ppm` / 1,000,000 (changeable while running) and otherwise sent on
/// after a random delay in `0..max_delay`, so datagrams also overtake each other. Seeded:
/// the same decisions on every run. Returns the address to dial and the loss knob.
async fn lossy_relay(
    target: SocketAddr,
    max_delay: Duration,
    seed: u64,
) -> (SocketAddr, Arc<AtomicU32>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let loss = Arc::new(AtomicU32::new(0));
    let dialler: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let rng = Arc::new(Mutex::new(seed));
    // Direction 0: dialler → target (front → back); 1: target → dialler (back → front).
    for dir in 0..2 {
        let (from, to) = if dir == 0 {
            (front.clone(), back.clone())
        } else {
            (back.clone(), front.clone())
        };
        let (loss, dialler, rng) = (loss.clone(), dialler.clone(), rng.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, src)) = from.recv_from(&mut buf).await else {
                    return;
                };
                let dest = if dir == 0 {
                    *dialler.lock().unwrap() = Some(src);
                    target
                } else {
                    match *dialler.lock().unwrap() {
                        Some(d) => d,
                        None => continue,
                    }
                };
                let (roll, delay) = {
                    let mut s = rng.lock().unwrap();
                    (next(&mut s) % 1_000_000, next(&mut s))
                };
                if roll < u64::from(loss.load(Ordering::Relaxed)) {
                    continue;
                }
                let delay = max_delay.mul_f64((delay % 1000) as f64 / 1000.0);
                let (to, datagram) = (to.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = to.send_to(&datagram, dest).await;
                });
            }
        });
    }
    (addr, loss)
}

/// splitmix64.
fn next(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarding_survives_loss_delay_and_reordering_and_a_dead_link_is_replaced_not_hung() {
    let _one = one_cluster_at_a_time().await;
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    init_pki(&root.join("pki"));
    let mesh = MeshSockets::bind(3);
    let addrs = mesh.addrs();
    // a reaches b only through the relay (a dials b: the lower name dials); c never starts.
    let (relay, loss) = lossy_relay(addrs[1], Duration::from_millis(4), 7).await;
    let node = |i: usize, peer: String| Config {
        peers: vec![peer],
        ..member_config(root, i, &mesh)
    };
    let a = mesh.start(0, node(0, format!("b={relay}"))).await;
    let b = mesh.start(1, node(1, format!("a={}", addrs[0]))).await;
    let f = name_owned_by("b");
    // A member refuses deploys (503, retryable) until it has synced with a peer.
    eventually("a takes the deploy", Duration::from_secs(20), || async {
        let r = put_when_synced(a.addr(), &format!("/v1/functions/{f}"), wasm("echo")).await;
        assert!(
            r.status == 201 || r.status == 503,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        (r.status == 201).then_some(())
    })
    .await;
    eventually("a forwards to b", Duration::from_secs(20), || async {
        let r = invoke(a.addr(), &f, "x").await;
        (r.status == 200 && r.header("x-tern-node") == Some("b")).then_some(())
    })
    .await;

    // 10 % loss each way, 0–4 ms jitter: every invocation is answered, correctly, on b.
    loss.store(100_000, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut on_b = 0;
    for i in 0..200 {
        let body = format!("lossy {i}");
        let t0 = Instant::now();
        let r = invoke(a.addr(), &f, body.clone()).await;
        latencies.push(t0.elapsed());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.body, Bytes::from(body));
        on_b += usize::from(r.header("x-tern-node") == Some("b"));
    }
    let (p50, p99) = (
        percentile(&mut latencies, 50.0),
        percentile(&mut latencies, 99.0),
    );
    eprintln!("10 % loss, 0-4 ms jitter: {on_b}/200 ran on b, p50 {p50:?}, p99 {p99:?}");
    // Keep-alives every 250 ms against a 1 s idle timeout: 10 % loss does not flap the link.
    assert!(on_b >= 190, "only {on_b}/200 forwarded: the link flapped");

    // The relay drops everything: invocations are re-placed on a once the link is declared
    // dead, none waits longer than the liveness bound plus the run.
    loss.store(1_000_000, Ordering::Relaxed);
    let cut = Instant::now();
    let mut slowest = Duration::ZERO;
    while cut.elapsed() < Duration::from_secs(3) {
        let t0 = Instant::now();
        let r = invoke(a.addr(), &f, "cut").await;
        slowest = slowest.max(t0.elapsed());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(&r.body[..], b"cut");
    }
    eprintln!("dead link: slowest invocation {slowest:?}");
    assert!(slowest < Duration::from_millis(2500), "{slowest:?}");
    assert!(metric(a.addr(), "tern_failover_reruns_total").await >= 1.0);

    // Back to 10 % loss: the link returns and so does the work.
    loss.store(100_000, Ordering::Relaxed);
    eventually("work back on b", Duration::from_secs(10), || async {
        let r = invoke(a.addr(), &f, "again").await;
        assert_eq!(r.status, 200);
        (r.header("x-tern-node") == Some("b")).then_some(())
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
