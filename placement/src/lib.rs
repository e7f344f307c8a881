//! `tern-placement`: which node runs each minimum execution unit (MEU). The SchedulerAgent
//! asks a [`Placement`] over this node and its live peers ([`NodeView`]s); the cluster's
//! heuristics ([`LocalFirst`], [`WarmAffinity`], [`LeastLoaded`]) and the learned PPO dispatch policy
//! ([`learned::LearnedPlacement`], tern-policy's network behind a rolling-reward guard) plug in
//! here, and [`failover::Failover`] decides where an MEU goes when its node is lost.
//!
//! Pure: the cluster view and the MEU are arguments, there is no I/O and no clock (the one
//! exception is reading the machine's memory size once when a learned placement is built), so
//! every policy is tested deterministically.

pub mod failover;
pub mod learned;

/// No node can take the MEU: none is live, of a class that admits the function's memory and
/// time limits, and with room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no live node of a class that admits this function's memory and time limits has room")]
pub struct NoNodeFits;

/// A node as the scheduler sees it: this node from its own counters, peers from their last
/// published status (`tern_wire::peer::NodeStatus`). The load fields are what the learned
/// dispatch policy's per-node features are computed from; the heuristics only use the first
/// six. `Default` is an empty, dead node (fill at least `name`, `alive`, `fits`, `queue_cap`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub alive: bool,
    /// Whether the node's class admits the function's memory and time limits (the paper's Eq. 2: one executable per platform, here a node class).
    pub fits: bool,
    /// Invocations running or waiting on that node: admitted there and not forwarded to a
    /// peer (this node's own view leaves out the MEU being placed). A peer's is as of its last
    /// status, raised to at least what this node has forwarded to it and not had back.
    pub queue_depth: usize,
    /// Its admission capacity: a node at capacity is full and masked.
    pub queue_cap: usize,
    /// Whether the MEU's module is loaded there (no cold start).
    pub warm: bool,
    pub class: tern_wire::NodeClass,
    /// Class limits: most memory and time a function may need to run there.
    pub max_memory_mb: u32,
    pub max_timeout_ms: u32,
    /// CPU use of the node process over its last status interval, percent of one core.
    pub cpu_percent: u32,
    /// Resident memory of the node process.
    pub memory_bytes: u64,
    /// Mean invocation latency on the node over its last status interval, µs (0 = no traffic).
    pub recent_mean_us: u64,
    /// Round-trip time from the deciding node, µs (0 for the deciding node itself).
    pub rtt_us: u64,
}

impl NodeView {
    /// Live, of a fitting class, and not full.
    pub fn usable(&self) -> bool {
        self.alive && self.fits && self.queue_depth < self.queue_cap
    }
}

fn no_node() -> NoNodeFits {
    NoNodeFits
}

/// What the scheduler knows about the MEU being placed.
#[derive(Clone, Debug, Default)]
pub struct MeuView<'a> {
    pub function: &'a str,
    pub items: usize,
    /// The function's limits (its class must admit them; already folded into `fits`).
    pub memory_mb: u32,
    pub timeout_ms: u32,
    /// Mean guest execution time of one MEU of this function on this node so far, µs (0 when
    /// it has not run here yet).
    pub mean_exec_us: u64,
}

/// A placement decision: the chosen node, and an opaque tag the placement gets back with the
/// outcome in [`Placement::observe`] (e.g. which arm of a guard made the decision, and with
/// which weights).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Index into the candidate list.
    pub node: usize,
    pub tag: u64,
}

/// How a placed MEU ended, as far as placement is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fate {
    /// Answered (output or not, the node did its job).
    #[default]
    Answered,
    /// Hit its time limit: a slow or busy node may be to blame; the latency says how bad.
    TimedOut,
    /// The node could not take or finish it (overloaded, unavailable, internal error): a
    /// placement that keeps choosing such nodes is doing badly.
    Refused,
    /// The guest or the request failed (trap, bad exit, bad input): the same anywhere, so it
    /// says nothing about the placement.
    GuestError,
}

impl Fate {
    /// The fate of an MEU that ended with an error of this code.
    pub fn of_error(code: tern_wire::ErrorCode) -> Fate {
        use tern_wire::ErrorCode as C;
        match code {
            C::Timeout => Fate::TimedOut,
            c if c.is_retryable() || c == C::Internal => Fate::Refused,
            _ => Fate::GuestError,
        }
    }
}

/// What became of a placed MEU, as the SchedulerAgent measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// From the decision to the answer, µs: forwarding, queueing and failover included.
    pub latency_us: u64,
    /// Whether the node had to load or compile the module.
    pub cold_start: bool,
    /// Module load and instantiation time, µs.
    pub cold_us: u64,
    /// Guest execution time, µs.
    pub exec_us: u64,
    pub fate: Fate,
}

pub trait Placement: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Index into `nodes` of the node that should run the MEU.
    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, NoNodeFits>;

    /// [`Placement::place`] with a tag for [`Placement::observe`]. The SchedulerAgent calls
    /// this one.
    fn decide(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<Decision, NoNodeFits> {
        self.place(meu, nodes).map(|node| Decision { node, tag: 0 })
    }

    /// Whether this placement learns from outcomes. Only then does the SchedulerAgent pay for
    /// measuring them (one extra task per MEU) and call [`Placement::observe`].
    fn observes(&self) -> bool {
        false
    }

    /// The outcome of `decision`, taken over the same `meu` and candidate `nodes`. Called
    /// after the caller has its answer, off the decision path.
    fn observe(
        &self,
        _meu: &MeuView<'_>,
        _nodes: &[NodeView],
        _decision: Decision,
        _outcome: &Observed,
    ) {
    }
}

/// Single-node placement: the first live node (a one-node cluster has only itself). Prefers a
/// warm live node when there are several, so it is also a sane fallback in a cluster.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFirst;

impl Placement for LocalFirst {
    fn name(&self) -> &'static str {
        "local-first"
    }

    fn place(&self, _meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, NoNodeFits> {
        nodes
            .iter()
            .position(|n| n.usable() && n.warm)
            .or_else(|| nodes.iter().position(NodeView::usable))
            .ok_or_else(no_node)
    }
}

/// Warm affinity (the default): each function has an owner node chosen by rendezvous
/// (highest-random-weight) hashing over the usable nodes, so its instances stay warm in one
/// place and only the functions of a lost node move when membership changes. When the owner's
/// queue reaches `spill_at`, the MEU spills to the least-loaded usable node (ties go to the
/// node the function would hash to next, so spilling is deterministic too).
#[derive(Debug, Clone, Copy)]
pub struct WarmAffinity {
    pub spill_at: usize,
}

impl WarmAffinity {
    /// Rendezvous weight of `node` for `function`: a fixed hash, identical on every node, so
    /// all nodes agree on owners without talking.
    pub fn weight(function: &str, node: &str) -> u64 {
        mix(fnv1a(function.as_bytes()) ^ mix(fnv1a(node.as_bytes())))
    }

    /// The index of the owner of `function` among the usable `nodes`.
    pub fn owner(function: &str, nodes: &[NodeView]) -> Option<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.usable())
            .max_by_key(|(_, n)| Self::weight(function, &n.name))
            .map(|(i, _)| i)
    }
}

impl Placement for WarmAffinity {
    fn name(&self) -> &'static str {
        "warm-affinity"
    }

    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, NoNodeFits> {
        let owner = Self::owner(meu.function, nodes).ok_or_else(no_node)?;
        if nodes[owner].queue_depth < self.spill_at {
            return Ok(owner);
        }
        let least = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.usable())
            .min_by_key(|(_, n)| {
                (
                    n.queue_depth,
                    std::cmp::Reverse(Self::weight(meu.function, &n.name)),
                )
            })
            .map(|(i, _)| i)
            .unwrap_or(owner);
        Ok(least)
    }
}

/// Least loaded, a load-balancing baseline: the usable node with the shortest queue
/// ([`NodeView::queue_depth`]), whether or not it holds the function warm. Raw queue length,
/// not normalised by the node's speed (the policy simulator's least-loaded baseline scores
/// CPU use plus queue per unit of concurrency; on nodes of different speeds the two differ).
/// Ties go to a warm node, then in the function's rendezvous order, so equally loaded nodes do
/// not all pick the first candidate.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl Placement for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, NoNodeFits> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.usable())
            .min_by_key(|(_, n)| {
                (
                    n.queue_depth,
                    !n.warm,
                    std::cmp::Reverse(WarmAffinity::weight(meu.function, &n.name)),
                )
            })
            .map(|(i, _)| i)
            .ok_or_else(no_node)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(name: &str, alive: bool, warm: bool) -> NodeView {
        NodeView {
            name: name.into(),
            alive,
            fits: true,
            queue_depth: 0,
            queue_cap: 100,
            warm,
            ..NodeView::default()
        }
    }

    fn meu(function: &str) -> MeuView<'_> {
        MeuView {
            function,
            items: 1,
            ..MeuView::default()
        }
    }

    #[test]
    fn warm_affinity_spreads_functions_and_every_node_agrees() {
        let nodes: Vec<NodeView> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, true, true))
            .collect();
        let p = WarmAffinity { spill_at: 8 };
        let mut owners = [0usize; 3];
        for i in 0..300 {
            let f = format!("fn-{i}");
            let chosen = p.place(&meu(&f), &nodes).unwrap();
            owners[chosen] += 1;
            // Order of the candidate list does not matter: same owner by name.
            let mut reversed = nodes.clone();
            reversed.reverse();
            let again = p.place(&meu(&f), &reversed).unwrap();
            assert_eq!(reversed[again].name, nodes[chosen].name);
        }
        for n in owners {
            assert!((60..=140).contains(&n), "unbalanced owners {owners:?}");
        }
    }

    #[test]
    fn warm_affinity_moves_only_a_lost_nodes_functions() {
        let mut nodes: Vec<NodeView> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, true, true))
            .collect();
        let p = WarmAffinity { spill_at: 8 };
        let before: Vec<String> = (0..100)
            .map(|i| {
                nodes[p.place(&meu(&format!("f{i}")), &nodes).unwrap()]
                    .name
                    .clone()
            })
            .collect();
        nodes[1].alive = false;
        for (i, owner) in before.iter().enumerate() {
            let now = &nodes[p.place(&meu(&format!("f{i}")), &nodes).unwrap()].name;
            assert_ne!(now, "b");
            if owner != "b" {
                assert_eq!(now, owner, "f{i} moved although its owner is alive");
            }
        }
    }

    #[test]
    fn warm_affinity_spills_to_the_least_loaded_and_masks_full_or_unfit_nodes() {
        let mut nodes: Vec<NodeView> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, true, true))
            .collect();
        let p = WarmAffinity { spill_at: 4 };
        let owner = p.place(&meu("f"), &nodes).unwrap();
        nodes[owner].queue_depth = 4;
        let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
        nodes[others[0]].queue_depth = 3;
        nodes[others[1]].queue_depth = 1;
        assert_eq!(p.place(&meu("f"), &nodes).unwrap(), others[1]);
        // Full (at capacity) and unfit nodes are never chosen.
        nodes[others[1]].queue_depth = 100;
        assert_eq!(p.place(&meu("f"), &nodes).unwrap(), others[0]);
        nodes[others[0]].fits = false;
        assert_eq!(p.place(&meu("f"), &nodes).unwrap(), owner);
        nodes[owner].alive = false;
        assert!(matches!(p.place(&meu("f"), &nodes), Err(NoNodeFits)));
    }

    #[test]
    fn least_loaded_takes_the_shortest_queue_even_when_cold_and_breaks_ties_by_warmth() {
        let mut nodes: Vec<NodeView> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, true, false))
            .collect();
        let p = LeastLoaded;
        nodes[0].queue_depth = 3;
        nodes[0].warm = true;
        nodes[1].queue_depth = 2;
        nodes[2].queue_depth = 5;
        // Cold b beats warm a: load first.
        assert_eq!(p.place(&meu("f"), &nodes).unwrap(), 1);
        // Equal queues: the warm one.
        nodes[0].queue_depth = 2;
        assert_eq!(p.place(&meu("f"), &nodes).unwrap(), 0);
        // Equal and all cold: the function's rendezvous order, so functions spread and the
        // candidate order does not matter.
        for n in &mut nodes {
            n.queue_depth = 0;
            n.warm = false;
        }
        let mut chosen = std::collections::BTreeSet::new();
        for i in 0..30 {
            let f = format!("fn-{i}");
            let at = p.place(&meu(&f), &nodes).unwrap();
            let mut reversed = nodes.clone();
            reversed.reverse();
            let again = p.place(&meu(&f), &reversed).unwrap();
            assert_eq!(reversed[again].name, nodes[at].name);
            chosen.insert(at);
        }
        assert_eq!(chosen.len(), 3, "ties spread over the nodes");
        // Full, unfit and dead nodes are masked; none usable is the typed error.
        nodes[0].queue_depth = 100;
        nodes[1].fits = false;
        assert_eq!(p.place(&meu("f"), &nodes).unwrap(), 2);
        nodes[2].alive = false;
        assert!(matches!(p.place(&meu("f"), &nodes), Err(NoNodeFits)));
        assert_eq!(p.name(), "least-loaded");
    }

    #[test]
    fn picks_a_live_node_preferring_warm_and_fails_typed_when_none() {
        let meu = MeuView {
            function: "f",
            items: 1,
            ..MeuView::default()
        };
        let p = LocalFirst;
        assert_eq!(p.place(&meu, &[node("a", true, false)]).unwrap(), 0);
        assert_eq!(
            p.place(&meu, &[node("a", true, false), node("b", true, true)])
                .unwrap(),
            1
        );
        assert_eq!(
            p.place(&meu, &[node("a", false, true), node("b", true, false)])
                .unwrap(),
            1
        );
        assert!(matches!(
            p.place(&meu, &[node("a", false, true)]),
            Err(NoNodeFits)
        ));
        assert!(p.place(&meu, &[]).is_err());
    }
}
