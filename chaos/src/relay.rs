//! UDP relays on the mesh links, through which the runner's `partition` and `link` faults
//! act, and through which `tern chaos relay` gives an experiment's links a delay: no network
//! namespace, no root. For every ordered pair of nodes (x, y) there is a relay
//! that x dials as y (`--peer y=<relay>`): datagrams from x go on to y's mesh socket from a
//! socket of the relay's own, and y's answers come back the same way. (Only the lower name of
//! a pair dials; the other relay of the pair stays idle.) Each direction of each relay has its
//! [`Impairment`] and its seeded draws ([`crate::links`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use tern_sync::poison::lock;

use crate::links::{Draws, Fate, Impairment};

/// What a direction of a link did with its datagrams since its impairment was last set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub dropped: u64,
    /// Of those passed, held back for others to overtake.
    pub held: u64,
    /// Of those passed, sent twice.
    pub duplicated: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.dropped += other.dropped;
        self.held += other.held;
        self.duplicated += other.duplicated;
    }
}

/// One relay's two directions (0 from the dialler to the target, 1 back): each one's
/// impairment and what it did since.
type Knobs = Arc<Mutex<[(Impairment, Counts); 2]>>;

struct Relay {
    front: SocketAddr,
    knobs: Knobs,
}

/// Every mesh link's relay, for as long as it is kept (its tasks end when it is dropped).
pub struct Relays {
    relays: HashMap<(usize, usize), Relay>,
    _tasks: JoinSet<()>,
}

impl Relays {
    /// A relay for every ordered pair of the nodes whose mesh sockets are at `mesh`, with
    /// draws seeded from `seed`.
    pub async fn start(mesh: &[SocketAddr], seed: u64) -> std::io::Result<Self> {
        let mut relays = HashMap::new();
        let mut tasks = JoinSet::new();
        for (x, _) in mesh.iter().enumerate() {
            for (y, &target) in mesh.iter().enumerate() {
                if x == y {
                    continue;
                }
                let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
                let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
                let knobs: Knobs = Arc::default();
                let dialler: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
                for dir in 0..2usize {
                    let (from, to) = if dir == 0 {
                        (front.clone(), back.clone())
                    } else {
                        (back.clone(), front.clone())
                    };
                    let pair = (x * mesh.len() + y) as u64;
                    let draws = Draws::seeded(seed ^ (pair << 1 | dir as u64).wrapping_mul(0x9e37));
                    tasks.spawn(forward(
                        from,
                        to,
                        dir,
                        target,
                        dialler.clone(),
                        knobs.clone(),
                        draws,
                    ));
                }
                relays.insert(
                    (x, y),
                    Relay {
                        front: front.local_addr()?,
                        knobs,
                    },
                );
            }
        }
        Ok(Self {
            relays,
            _tasks: tasks,
        })
    }

    /// The address node `from` dials to reach node `to`.
    pub fn address(&self, from: usize, to: usize) -> Option<SocketAddr> {
        self.relays.get(&(from, to)).map(|r| r.front)
    }

    /// Sets what happens to datagrams from node `from` to node `to`, whichever of the two
    /// dialled the other, and answers what happened to them since the last call. A later call
    /// replaces it: faults on one link do not stack.
    pub fn impair(&self, from: usize, to: usize, impairment: Impairment) -> Counts {
        let mut counts = Counts::default();
        for (pair, dir) in [((from, to), 0), ((to, from), 1)] {
            if let Some(r) = self.relays.get(&pair) {
                let old =
                    std::mem::replace(&mut lock(&r.knobs)[dir], (impairment, Counts::default()));
                counts.add(old.1);
            }
        }
        counts
    }
}

/// One direction of a relay: each datagram received on `from` is sent from `to` to the
/// target (direction 0, remembering the dialler's address) or back to the dialler (1), as its
/// fate says.
async fn forward(
    from: Arc<UdpSocket>,
    to: Arc<UdpSocket>,
    dir: usize,
    target: SocketAddr,
    dialler: Arc<Mutex<Option<SocketAddr>>>,
    knobs: Knobs,
    mut draws: Draws,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, src)) = from.recv_from(&mut buf).await else {
            // An ICMP error reported on the socket (a node down): keep relaying.
            tokio::task::yield_now().await;
            continue;
        };
        let dest = if dir == 0 {
            *lock(&dialler) = Some(src);
            target
        } else {
            match *lock(&dialler) {
                Some(d) => d,
                None => continue,
            }
        };
        let fate = {
            let mut k = lock(&knobs);
            let (impairment, counts) = &mut k[dir];
            let fate = impairment.fate(|| draws.next_ppm());
            match fate {
                Fate::Dropped => counts.dropped += 1,
                Fate::Sent { delay_ms, copies } => {
                    counts.passed += 1;
                    counts.held += u64::from(delay_ms > impairment.delay_ms);
                    counts.duplicated += u64::from(copies > 1);
                }
            }
            fate
        };
        let Fate::Sent { delay_ms, copies } = fate else {
            continue;
        };
        if delay_ms == 0 {
            for _ in 0..copies {
                let _ = to.send_to(&buf[..n], dest).await;
            }
        } else {
            let (to, datagram) = (to.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
                for _ in 0..copies {
                    let _ = to.send_to(&datagram, dest).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use super::*;

    /// Receives one datagram on `socket` within 5 s: its bytes and sender.
    async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
            .await
            .expect("a datagram within 5 s")
            .unwrap();
        (buf[..n].to_vec(), from)
    }

    #[tokio::test]
    async fn a_delayed_link_holds_each_datagram_its_delay_each_way_and_answers_reach_the_dialler() {
        let x = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let y = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mesh = [x.local_addr().unwrap(), y.local_addr().unwrap()];
        let relays = Relays::start(&mesh, 1).await.unwrap();
        let delay = Impairment::link(0.0, 40, 0.0, 0.0);
        relays.impair(0, 1, delay);
        relays.impair(1, 0, delay);
        let front = relays.address(0, 1).unwrap();
        assert_ne!(front, mesh[1], "x dials y at the relay, not at y");

        let sent = Instant::now();
        x.send_to(b"ping", front).await.unwrap();
        let (bytes, relay_back) = receive(&y).await;
        let there = sent.elapsed();
        assert_eq!(bytes, b"ping");
        assert!(
            there >= Duration::from_millis(40),
            "arrived after {there:?}"
        );

        let answered = Instant::now();
        y.send_to(b"pong", relay_back).await.unwrap();
        let (bytes, from) = receive(&x).await;
        let back = answered.elapsed();
        assert_eq!((bytes.as_slice(), from), (&b"pong"[..], front));
        assert!(
            back >= Duration::from_millis(40),
            "came back after {back:?}"
        );

        // Counted per direction: the ping from x to y, the pong from y to x.
        for (from, to) in [(0, 1), (1, 0)] {
            let counts = relays.impair(from, to, Impairment::default());
            assert_eq!((counts.passed, counts.dropped), (1, 0), "{counts:?}");
        }
    }
}
