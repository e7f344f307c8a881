//! `placement = "learned"`: the PPO dispatch network of tern-policy behind the SchedulerAgent's
//! [`Placement`] seam.
//!
//! Every candidate [`NodeView`] (this node first, then the peers from their published status)
//! is mapped to tern-policy's per-node [`NodeFeatures`]; one shared MLP scores each node and the
//! node with the highest `score − λ · expected cold-start ms` (Eq. 1) wins. Nodes that are not
//! [`NodeView::usable`] (dead, full, or of a class that does not admit the function) are masked
//! and never chosen, whatever their score. The forward pass is tern-policy's plain-Rust
//! [`DispatchScorer`] over exported weights (no candle, no allocation for up to
//! [`STACK_CANDIDATES`] candidates).
//!
//! Guard: when the policy gives no usable answer (every score non-finite, e.g. weights that
//! overflow) while some node is usable, the decision goes to [`WarmAffinity`], the heuristic
//! the node uses by default. Decisions are counted by the policy that made them
//! (`tern_placement_decisions_total{policy="learned"|"fallback"}`).
//!
//! This lives in tern-node (not tern-actors) so the actors do not depend on tern-policy.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tern_actors::Error;
use tern_actors::metrics::Metrics;
use tern_actors::placement::{MeuView, NodeView, Placement, WarmAffinity};
use tern_policy::PolicyError;
use tern_policy::features::NodeFeatures;
use tern_policy::policy::{DEFAULT_LAMBDA_DISPATCH, DispatchScorer, PolicyWeights};
use tern_policy::sim::NodeClass as SimClass;

use crate::config::ConfigError;

/// Candidates whose features are built on the stack; larger clusters use a `Vec`.
pub const STACK_CANDIDATES: usize = 32;

/// Memory assumed when `/proc/meminfo` cannot be read (the features need a fraction).
const DEFAULT_MEMORY_BYTES: u64 = 8 << 30;

/// The learned dispatch policy as a [`Placement`].
#[derive(Debug)]
pub struct LearnedPlacement {
    scorer: DispatchScorer,
    /// λ of Eq. 1, logits per expected cold-start ms: the one the weights were trained with.
    lambda: f32,
    fallback: WarmAffinity,
    /// Execution slots assumed per node (queue depth per slot, CPU share): peers do not
    /// publish theirs, so every node is assumed to be like this one.
    slots: f32,
    /// Memory assumed per node, for the memory-use fraction (same assumption).
    memory_total_bytes: f64,
    metrics: Arc<Metrics>,
}

impl LearnedPlacement {
    /// From weights already in memory. Errors if the dispatch network does not have the
    /// scorer's fixed widths or has a non-finite weight. `slots` is this node's parallelism.
    pub fn new(
        weights: &PolicyWeights,
        slots: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PolicyError> {
        Ok(LearnedPlacement {
            scorer: DispatchScorer::from_mlp(&weights.dispatch)?,
            lambda: DEFAULT_LAMBDA_DISPATCH,
            // Same setting as `placement = "warm-affinity"`.
            fallback: WarmAffinity {
                spill_at: (4 * slots).max(8),
            },
            slots: slots.max(1) as f32,
            memory_total_bytes: system_memory_bytes() as f64,
            metrics,
        })
    }

    /// From a safetensors checkpoint written by tern-policy (`policy_checkpoint`). Every
    /// failure (unreadable, not safetensors, missing tensors, wrong widths, NaN) is a typed
    /// [`ConfigError::PolicyCheckpoint`].
    pub fn load(path: &Path, slots: usize, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::PolicyCheckpoint {
            path: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (weights, _meta) =
            PolicyWeights::from_safetensors(&bytes).map_err(|e| err(e.to_string()))?;
        Self::new(&weights, slots, metrics).map_err(|e| err(e.to_string()))
    }

    /// The per-node features the dispatch network sees for placing `meu` on `n`.
    pub fn features(&self, meu: &MeuView<'_>, n: &NodeView) -> NodeFeatures {
        let class = class_index(&n.class);
        NodeFeatures {
            warm_instances: if n.warm { 1.0 } else { 0.0 },
            queue_depth: n.queue_depth as f32,
            concurrency: self.slots,
            cpu_util: n.cpu_percent as f32 / (100.0 * self.slots),
            mem_util: (n.memory_bytes as f64 / self.memory_total_bytes) as f32,
            // A ready module is compiled on that node: a cold start there is a load and
            // instantiation, costed like the class the network was trained on.
            expected_cold_ms: if n.warm {
                0.0
            } else {
                class_cold_start_ms(class)
            },
            recent_latency_ms: n.recent_mean_us as f32 / 1000.0,
            rtt_ms: n.rtt_us as f32 / 1000.0,
            expected_exec_ms: meu.mean_exec_us as f32 / 1000.0,
            time_limit_ms: n.max_timeout_ms as f32,
            // Nodes are not benchmarked: all run at the reference speed.
            speed: 1.0,
            class,
            alive: n.alive,
            has_capacity: n.fits && n.queue_depth < n.queue_cap,
        }
    }

    /// Features of candidate `i`. The SchedulerAgent lists this node first, and its queue
    /// depth counts the invocation being placed (it holds an admission permit) where a peer's
    /// does not: that one is left out so that this node is not penalised for it.
    fn candidate_features(&self, meu: &MeuView<'_>, i: usize, n: &NodeView) -> NodeFeatures {
        let mut f = self.features(meu, n);
        if i == 0 && n.rtt_us == 0 {
            f.queue_depth = (f.queue_depth - 1.0).max(0.0);
        }
        f
    }

    /// The policy's pick (Eq. 1 over the unmasked candidates), `None` when it has no usable
    /// answer. No fallback, no counting.
    pub fn policy_choice(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Option<usize> {
        let pick = if nodes.len() <= STACK_CANDIDATES {
            let mut buf = [NodeFeatures::default(); STACK_CANDIDATES];
            for (i, (f, n)) in buf.iter_mut().zip(nodes).enumerate() {
                *f = self.candidate_features(meu, i, n);
            }
            self.scorer.choose(&buf[..nodes.len()], self.lambda)
        } else {
            let feats: Vec<NodeFeatures> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| self.candidate_features(meu, i, n))
                .collect();
            self.scorer.choose(&feats, self.lambda)
        };
        // The scorer masks exactly the non-usable nodes; re-check so that a mapping bug can
        // never send work to a dead or full node.
        pick.filter(|&i| nodes.get(i).is_some_and(NodeView::usable))
    }
}

impl Placement for LearnedPlacement {
    fn name(&self) -> &'static str {
        "learned"
    }

    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, Error> {
        if let Some(i) = self.policy_choice(meu, nodes) {
            self.metrics.placement_learned.fetch_add(1, Relaxed);
            return Ok(i);
        }
        // Only a decision the policy could have made counts as a fallback; with no usable
        // node the heuristic fails the same typed way.
        if nodes.iter().any(NodeView::usable) {
            self.metrics.placement_fallback.fetch_add(1, Relaxed);
        }
        self.fallback.place(meu, nodes)
    }
}

/// tern-policy's class index of a Tern node class: 0 edge, 1 standard, 2 CPU-burst.
pub fn class_index(class: &str) -> u8 {
    match class {
        "edge-small" => 0,
        "cpu-burst" => 2,
        _ => 1,
    }
}

fn class_cold_start_ms(class: u8) -> f32 {
    match class {
        0 => SimClass::edge(),
        2 => SimClass::burst(),
        _ => SimClass::standard(),
    }
    .cold_start_ms
}

/// `MemTotal` of `/proc/meminfo`, or 8 GiB when unknown.
fn system_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(DEFAULT_MEMORY_BYTES, |kib| kib * 1024)
        .max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;
    use tern_policy::features::NODE_FEATURES;
    use tern_policy::mlp::{Dense, Mlp};
    use tern_policy::policy::DISPATCH_HIDDEN;

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            alive: true,
            fits: true,
            queue_depth: 0,
            queue_cap: 100,
            warm: true,
            class: "standard".into(),
            max_memory_mb: 512,
            max_timeout_ms: 900_000,
            ..NodeView::default()
        }
    }

    fn meu() -> MeuView<'static> {
        MeuView {
            function: "f",
            items: 1,
            memory_mb: 128,
            timeout_ms: 10_000,
            mean_exec_us: 2_000,
        }
    }

    /// Dispatch weights whose logit is `gain · feature[k]` (through the two ReLU layers).
    fn weights_scoring_feature(k: usize, gain: f32) -> PolicyWeights {
        let [h0, h1] = DISPATCH_HIDDEN;
        let mut w = PolicyWeights::init(7).unwrap();
        let mut w0 = vec![0.0; NODE_FEATURES * h0];
        w0[k * h0] = 1.0;
        let mut w1 = vec![0.0; h0 * h1];
        w1[0] = 1.0;
        let mut w2 = vec![0.0; h1];
        w2[0] = gain;
        w.dispatch = Mlp {
            layers: vec![
                Dense {
                    inputs: NODE_FEATURES,
                    outputs: h0,
                    weight: w0,
                    bias: vec![0.0; h0],
                },
                Dense {
                    inputs: h0,
                    outputs: h1,
                    weight: w1,
                    bias: vec![0.0; h1],
                },
                Dense {
                    inputs: h1,
                    outputs: 1,
                    weight: w2,
                    bias: vec![0.0],
                },
            ],
        };
        w
    }

    fn placement(w: &PolicyWeights) -> (LearnedPlacement, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (
            LearnedPlacement::new(w, 4, metrics.clone()).unwrap(),
            metrics,
        )
    }

    #[test]
    fn node_views_map_to_the_policy_features() {
        let (p, _) = placement(&PolicyWeights::init(1).unwrap());
        let mut n = NodeView {
            queue_depth: 6,
            cpu_percent: 200,
            memory_bytes: 1 << 30,
            recent_mean_us: 12_500,
            rtt_us: 800,
            class: "edge-small".into(),
            max_timeout_ms: 50,
            ..node("b")
        };
        let f = p.features(&meu(), &n);
        assert_eq!(f.warm_instances, 1.0);
        assert_eq!(f.queue_depth, 6.0);
        assert_eq!(f.concurrency, 4.0);
        assert_eq!(f.cpu_util, 0.5, "200 % of one core on 4 slots");
        assert!(f.mem_util > 0.0 && f.mem_util <= 1.0, "{}", f.mem_util);
        assert_eq!(f.expected_cold_ms, 0.0, "warm: no cold start");
        assert_eq!(f.recent_latency_ms, 12.5);
        assert_eq!(f.rtt_ms, 0.8);
        assert_eq!(f.expected_exec_ms, 2.0);
        assert_eq!(f.time_limit_ms, 50.0);
        assert_eq!(f.class, 0);
        assert!(f.selectable());
        n.warm = false;
        assert_eq!(
            p.features(&meu(), &n).expected_cold_ms,
            SimClass::edge().cold_start_ms
        );
        assert_eq!(class_index("standard"), 1);
        assert_eq!(class_index("cpu-burst"), 2);
        assert_eq!(class_index("unknown"), 1);
        // Masking follows `usable()` exactly.
        for (view, usable) in [
            (node("a"), true),
            (
                NodeView {
                    alive: false,
                    ..node("a")
                },
                false,
            ),
            (
                NodeView {
                    fits: false,
                    ..node("a")
                },
                false,
            ),
            (
                NodeView {
                    queue_depth: 100,
                    ..node("a")
                },
                false,
            ),
        ] {
            assert_eq!(view.usable(), usable);
            assert_eq!(p.features(&meu(), &view).selectable(), usable, "{view:?}");
        }
    }

    #[test]
    fn the_policy_picks_the_best_score_but_never_a_masked_node() {
        // Score = 10 · (queue depth per slot): the busiest node scores highest.
        let (p, metrics) = placement(&weights_scoring_feature(1, 10.0));
        let mut nodes: Vec<NodeView> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
        for (i, q) in [1, 2, 3, 4].into_iter().enumerate() {
            nodes[i].queue_depth = q;
        }
        assert_eq!(p.place(&meu(), &nodes).unwrap(), 3);
        // Full: at its queue cap (the highest queue depth of all), still never chosen.
        nodes[3].queue_cap = 4;
        nodes[3].queue_depth = 9;
        assert_eq!(p.place(&meu(), &nodes).unwrap(), 2);
        nodes[2].alive = false;
        assert_eq!(p.place(&meu(), &nodes).unwrap(), 1);
        nodes[1].fits = false;
        assert_eq!(p.place(&meu(), &nodes).unwrap(), 0);
        assert_eq!(metrics.placement_learned.load(Relaxed), 4);
        assert_eq!(metrics.placement_fallback.load(Relaxed), 0);
        nodes[0].alive = false;
        assert!(matches!(
            p.place(&meu(), &nodes),
            Err(Error::Unavailable(_))
        ));
        assert_eq!(metrics.placement_fallback.load(Relaxed), 0);
        // Larger than the stack buffer: same answer through the Vec path.
        let mut many: Vec<NodeView> = (0..40).map(|i| node(&format!("n{i}"))).collect();
        many[37].queue_depth = 5;
        assert_eq!(p.policy_choice(&meu(), &many), Some(37));
    }

    #[test]
    fn eq1_penalises_the_expected_cold_start() {
        // Logit = gain · queue feature; the cold node (standard: 25 ms, λ · 25 = 0.5) has the
        // higher logit, by 0.25 · gain (4 queued on 4 slots → feature 0.25).
        let mut nodes = vec![node("a"), node("b")];
        nodes[0].warm = false;
        nodes[0].queue_depth = 4;
        nodes[1].queue_depth = 0;
        let (p, _) = placement(&weights_scoring_feature(1, 1.0));
        assert_eq!(
            p.place(&meu(), &nodes).unwrap(),
            1,
            "0.25 − 0.5 < 0: the warm node wins"
        );
        let (p, _) = placement(&weights_scoring_feature(1, 4.0));
        assert_eq!(
            p.place(&meu(), &nodes).unwrap(),
            0,
            "1.0 − 0.5 > 0: the cold node wins"
        );
    }

    #[test]
    fn this_nodes_queue_does_not_count_the_invocation_being_placed() {
        // Logit = −10 · queue feature: the shorter queue wins, ties go to the first node.
        let (p, _) = placement(&weights_scoring_feature(1, -10.0));
        let local = NodeView {
            queue_depth: 1, // the invocation being placed holds this node's admission permit
            queue_cap: usize::MAX,
            ..node("self")
        };
        let peer = NodeView {
            rtt_us: 400,
            ..node("peer")
        };
        assert_eq!(p.place(&meu(), &[local.clone(), peer.clone()]).unwrap(), 0);
        let busier = NodeView {
            queue_depth: 2,
            ..local
        };
        assert_eq!(p.place(&meu(), &[busier, peer]).unwrap(), 1);
    }

    #[test]
    fn unusable_policy_output_falls_back_to_warm_affinity() {
        // Finite weights whose forward pass overflows: inf − inf = NaN for every node.
        let [h0, h1] = DISPATCH_HIDDEN;
        let mut w = weights_scoring_feature(0, 1.0);
        let big = 3.0e38_f32;
        w.dispatch.layers[0].weight = vec![big; NODE_FEATURES * h0];
        w.dispatch.layers[1].weight = vec![big; h0 * h1];
        w.dispatch.layers[2].weight = (0..h1)
            .map(|i| if i % 2 == 0 { big } else { -big })
            .collect();
        let (p, metrics) = placement(&w);
        let nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        assert_eq!(p.policy_choice(&meu(), &nodes), None);
        let heuristic = WarmAffinity { spill_at: 16 }.place(&meu(), &nodes).unwrap();
        assert_eq!(p.place(&meu(), &nodes).unwrap(), heuristic);
        assert_eq!(metrics.placement_fallback.load(Relaxed), 1);
        assert_eq!(metrics.placement_learned.load(Relaxed), 0);
    }

    #[test]
    fn bad_checkpoints_are_typed_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let load = |name: &str| LearnedPlacement::load(&dir.path().join(name), 4, metrics.clone());
        assert!(matches!(
            load("missing.safetensors"),
            Err(ConfigError::PolicyCheckpoint { .. })
        ));
        std::fs::write(dir.path().join("garbage"), b"not a checkpoint").unwrap();
        assert!(matches!(
            load("garbage"),
            Err(ConfigError::PolicyCheckpoint { .. })
        ));
        // NaN weights are refused at load, not served.
        let mut nan = PolicyWeights::init(3).unwrap();
        nan.dispatch.layers[1].weight[5] = f32::NAN;
        std::fs::write(
            dir.path().join("nan"),
            nan.to_safetensors(BTreeMap::new()).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            load("nan"),
            Err(ConfigError::PolicyCheckpoint { message, .. }) if message.contains("non-finite")
        ));
        // Right input and output widths, wrong hidden width: the scorer refuses it.
        let mut narrow = PolicyWeights::init(3).unwrap();
        narrow.dispatch = Mlp::new(
            &[NODE_FEATURES, 8, 1],
            &mut tern_policy::rng::Rng::new(1),
            0.1,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("narrow"),
            narrow.to_safetensors(BTreeMap::new()).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            load("narrow"),
            Err(ConfigError::PolicyCheckpoint { message, .. }) if message.contains("widths")
        ));
        let good = PolicyWeights::init(3).unwrap();
        std::fs::write(
            dir.path().join("good"),
            good.to_safetensors(BTreeMap::new()).unwrap(),
        )
        .unwrap();
        assert!(load("good").is_ok());
    }

    #[test]
    fn the_committed_checkpoint_serves_and_decisions_are_fast() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/reports/ppo-weights.safetensors");
        let metrics = Arc::new(Metrics::default());
        let p = LearnedPlacement::load(&path, 4, metrics.clone()).unwrap();
        let mut nodes = vec![
            NodeView {
                rtt_us: 0,
                ..node("a")
            },
            NodeView {
                rtt_us: 300,
                warm: false,
                queue_depth: 3,
                ..node("b")
            },
            NodeView {
                rtt_us: 250,
                ..node("c")
            },
        ];
        let n = 20_000;
        let t0 = std::time::Instant::now();
        for i in 0..n {
            nodes[1].queue_depth = i % 7;
            let chosen = p.place(&meu(), &nodes).unwrap();
            assert!(nodes[chosen].usable());
        }
        let per = t0.elapsed() / n as u32;
        println!("learned placement: {per:?} per decision over 3 candidates (this build)");
        assert_eq!(metrics.placement_learned.load(Relaxed), n as u64);
        nodes[0].alive = false;
        nodes[2].alive = false;
        assert_eq!(p.place(&meu(), &nodes).unwrap(), 1);
    }
}
