//! Failover of one MEU placed on another node: which node runs it next when the one it was
//! sent to is lost or refuses it. Pure logic — no I/O, no clock, no actor — so every path is
//! tested deterministically; the SchedulerAgent's task only sends the MEU where
//! [`Failover::next`] says and reports back what happened.
//!
//! The rules: a node that lost or refused the MEU is marked dead for the rest of this MEU's
//! life, and the MEU is placed again among the others with the same [`Placement`]. This node
//! (candidate 0) can always take it back — it holds the MEU's admission permit — unless its
//! class does not admit the function, and then the placement's error is the answer. Each
//! re-placement marks one more node dead, so an MEU is sent at most once per candidate and
//! the loop ends.

use crate::{MeuView, NoNodeFits, NodeView, Placement};

/// Where an MEU goes next.
#[derive(Debug)]
pub enum Next {
    /// Run it on this node (candidate 0).
    Here,
    /// Send it to `nodes[node]`; `attempt` is 1 for the first try and counts re-runs.
    Peer { node: usize, attempt: u32 },
    /// No node can take it: answer the caller with this error.
    GiveUp(NoNodeFits),
}

/// The failover state of one MEU: its candidates (index 0 is this node), the node it is on
/// now, and how many times it has been sent.
#[derive(Debug)]
pub struct Failover {
    nodes: Vec<NodeView>,
    chosen: usize,
    attempt: u32,
}

impl Failover {
    /// An MEU the placement sent to `nodes[chosen]`.
    pub fn new(nodes: Vec<NodeView>, chosen: usize) -> Self {
        Self {
            nodes,
            chosen,
            attempt: 1,
        }
    }

    /// Where the MEU runs now.
    pub fn next(&self) -> Next {
        match self.chosen {
            0 => Next::Here,
            node => Next::Peer {
                node,
                attempt: self.attempt,
            },
        }
    }

    /// The candidates, with the nodes that failed this MEU marked dead.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    /// The node the MEU was sent to was lost or refused it: marks that node dead, places the
    /// MEU again among the rest and says where it goes.
    pub fn failed(&mut self, placement: &dyn Placement, meu: &MeuView<'_>) -> Next {
        if let Some(node) = self.nodes.get_mut(self.chosen) {
            node.alive = false;
        }
        self.attempt = self.attempt.saturating_add(1);
        self.chosen = match placement.place(meu, &self.nodes) {
            // A placement that offers a dead node again is wrong; this node takes the MEU
            // rather than sending it back to a node that just failed it.
            Ok(i) if self.nodes.get(i).is_some_and(|n| n.alive) => i,
            Ok(_) => 0,
            Err(_) if self.nodes[0].fits => 0,
            Err(e) => return Next::GiveUp(e),
        };
        self.next()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{LocalFirst, WarmAffinity};

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            alive: true,
            fits: true,
            queue_cap: 100,
            ..NodeView::default()
        }
    }

    fn meu() -> MeuView<'static> {
        MeuView {
            function: "f",
            items: 1,
            ..MeuView::default()
        }
    }

    /// What a scripted peer does with an MEU sent to it.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum PeerDoes {
        Answers,
        /// Lost or refused: the failover treats both alike.
        Fails,
    }

    /// The SchedulerAgent's remote loop against scripted peers, without any I/O: returns the
    /// nodes visited in order and how it ended (`None` = answered here or by a peer).
    fn drive(
        placement: &dyn Placement,
        mut failover: Failover,
        peers: &BTreeMap<usize, PeerDoes>,
    ) -> (Vec<(usize, u32)>, Option<NoNodeFits>) {
        let mut visited = Vec::new();
        let mut next = failover.next();
        loop {
            match next {
                Next::Here => {
                    visited.push((0, 0));
                    return (visited, None);
                }
                Next::GiveUp(e) => return (visited, Some(e)),
                Next::Peer { node, attempt } => {
                    visited.push((node, attempt));
                    assert!(
                        visited.len() <= failover.nodes().len(),
                        "no end: {visited:?}"
                    );
                    match peers[&node] {
                        PeerDoes::Answers => return (visited, None),
                        PeerDoes::Fails => next = failover.failed(placement, &meu()),
                    }
                }
            }
        }
    }

    #[test]
    fn a_lost_peer_is_never_tried_again_and_the_meu_comes_home_when_all_peers_fail() {
        let nodes: Vec<NodeView> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
        // Local-first takes the MEU home as soon as the peer it was sent to fails.
        let peers = BTreeMap::from([
            (1, PeerDoes::Fails),
            (2, PeerDoes::Fails),
            (3, PeerDoes::Fails),
        ]);
        let (visited, end) = drive(&LocalFirst, Failover::new(nodes, 2), &peers);
        assert!(end.is_none());
        assert_eq!(visited, [(2, 1), (0, 0)]);
    }

    #[test]
    fn attempts_count_up_and_each_failed_peer_is_marked_dead() {
        let mut nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        // This node is full here, so warm affinity keeps the MEU among the peers.
        nodes[0].queue_depth = 100;
        let placement = WarmAffinity { spill_at: 1000 };
        let first = placement.place(&meu(), &nodes).unwrap();
        assert_ne!(first, 0);
        let other = 3 - first;
        let peers = BTreeMap::from([(first, PeerDoes::Fails), (other, PeerDoes::Answers)]);
        let failover = Failover::new(nodes, first);
        let (visited, end) = drive(&placement, failover, &peers);
        assert!(end.is_none());
        assert_eq!(visited, [(first, 1), (other, 2)]);
    }

    #[test]
    fn an_unfit_local_node_gives_up_with_the_placement_error_when_every_peer_fails() {
        let mut nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        nodes[0].fits = false;
        let peers = BTreeMap::from([(1, PeerDoes::Fails), (2, PeerDoes::Fails)]);
        let (visited, end) = drive(&LocalFirst, Failover::new(nodes, 1), &peers);
        assert_eq!(visited, [(1, 1), (2, 2)]);
        assert!(matches!(end, Some(NoNodeFits)));
    }

    /// A placement that always offers the first candidate, dead or alive.
    struct Stubborn;
    impl Placement for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        fn place(&self, _meu: &MeuView<'_>, _nodes: &[NodeView]) -> Result<usize, NoNodeFits> {
            Ok(1)
        }
    }

    #[test]
    fn a_placement_that_offers_a_dead_node_again_sends_the_meu_home_instead() {
        let nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        let mut failover = Failover::new(nodes, 1);
        assert!(matches!(failover.failed(&Stubborn, &meu()), Next::Here));
        assert!(!failover.nodes()[1].alive);
    }

    /// xorshift64*: a seeded stream for the randomized runs below.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn over_random_clusters_every_meu_ends_within_one_try_per_node_and_never_revisits() {
        for seed in 1..=500u64 {
            let mut next = rng(seed);
            let n = 2 + (next() % 7) as usize;
            let mut nodes: Vec<NodeView> = (0..n).map(|i| node(&format!("n{i}"))).collect();
            for v in nodes.iter_mut() {
                v.queue_depth = (next() % 5) as usize;
                v.warm = next().is_multiple_of(2);
                v.fits = !next().is_multiple_of(4);
            }
            let peers: BTreeMap<usize, PeerDoes> = (1..n)
                .map(|i| {
                    let does = if next().is_multiple_of(3) {
                        PeerDoes::Answers
                    } else {
                        PeerDoes::Fails
                    };
                    (i, does)
                })
                .collect();
            let placement = WarmAffinity { spill_at: 3 };
            let Ok(first) = placement.place(&meu(), &nodes) else {
                continue;
            };
            let local_fits = nodes[0].fits;
            let (visited, end) = drive(&placement, Failover::new(nodes.clone(), first), &peers);
            let peers_visited: Vec<usize> = visited
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| *i != 0)
                .collect();
            let distinct: BTreeSet<usize> = peers_visited.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                peers_visited.len(),
                "seed {seed}: {visited:?}"
            );
            for (k, (i, attempt)) in visited.iter().enumerate() {
                if *i != 0 {
                    assert_eq!(*attempt as usize, k + 1, "seed {seed}: {visited:?}");
                    assert!(nodes[*i].fits, "seed {seed}: sent to an unfit node");
                }
            }
            match end {
                None => {
                    let (last, _) = *visited.last().unwrap();
                    assert!(
                        last == 0 || peers[&last] == PeerDoes::Answers,
                        "seed {seed}"
                    );
                    if last == 0 {
                        assert!(local_fits || first == 0, "seed {seed}");
                    }
                }
                Some(e) => {
                    assert!(
                        !local_fits,
                        "seed {seed}: gave up ({e}) with a fitting local node"
                    );
                    assert!(
                        peers_visited.iter().all(|i| peers[i] == PeerDoes::Fails),
                        "seed {seed}"
                    );
                }
            }
        }
    }
}
