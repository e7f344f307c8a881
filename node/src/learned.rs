//! `placement = "learned"`: the PPO dispatch network of tern-policy behind the SchedulerAgent's
//! [`Placement`] seam, with its rolling-reward guard and (optionally) online learning.
//!
//! Every candidate [`NodeView`] (this node first, then the peers from their published status)
//! is mapped to tern-policy's per-node [`NodeFeatures`]; one shared MLP scores each node and the
//! node with the highest `score − λ · expected cold-start ms` (the paper's Eq. 1) wins. Nodes that are not
//! [`NodeView::usable`] (dead, full, or of a class that does not admit the function) are masked
//! and never chosen, whatever their score. The forward pass is tern-policy's plain-Rust
//! [`DispatchScorer`] over exported weights (no candle, no allocation for up to
//! [`STACK_CANDIDATES`] candidates).
//!
//! Three safety nets, counted by `tern_placement_decisions_total{policy=…}`:
//! - **fallback**: when the policy gives no usable answer (every score non-finite) while some
//!   node is usable, the decision goes to [`WarmAffinity`], the node's default heuristic;
//! - **guard** ([`tern_policy::online::Guard`]): the SchedulerAgent reports each MEU's outcome
//!   ([`Placement::observe`]); its reward (tern-policy's `RewardConfig`: latency, cold start,
//!   energy, SLA) feeds the guard, which keeps the learned policy in charge while its rolling
//!   mean reward is no worse than warm affinity's minus a margin, and hands decisions to warm
//!   affinity otherwise. A small share of decisions probes the arm not in charge
//!   (`policy="heuristic"` counts the heuristic's), so it can hand back;
//! - **online learning** (`online_learning`, feature `online-learning`): outcomes of the
//!   learned arm's decisions become PPO transitions for tern-policy's background trainer;
//!   new weights are swapped in between two decisions, never during one.
//!
//! This lives in tern-node (not tern-actors) so the actors do not depend on tern-policy.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use tern_actors::Error;
use tern_actors::placement::{
    Decision, Fate, MeuView, NodeView, Observed, Placement, WarmAffinity,
};
#[cfg(feature = "online-learning")]
use tern_cluster::sync::write;
use tern_cluster::sync::{lock, read};
use tern_metrics::Metrics;
use tern_policy::PolicyError;
use tern_policy::features::NodeFeatures;
use tern_policy::online::{Arm, Guard};
use tern_policy::policy::{DEFAULT_LAMBDA_DISPATCH, DispatchScorer, PolicyWeights};
use tern_policy::sim::{NodeClass as SimClass, RewardConfig};
use tern_wire::NodeClass;

use crate::config::ConfigError;

/// Candidates whose features are built on the stack; larger clusters use a `Vec`.
pub const STACK_CANDIDATES: usize = 32;

/// Memory assumed when `/proc/meminfo` cannot be read (the features need a fraction).
const DEFAULT_MEMORY_BYTES: u64 = 8 << 30;

/// Weight versions whose decisions are still learned from when their outcome arrives.
#[cfg(feature = "online-learning")]
const RECENT_WEIGHTS: usize = 4;

/// tern-policy's rewards are clipped to [−10, 0].
const MIN_REWARD: f32 = -10.0;

/// Every `GUARD_PROBE_EVERY`-th decision goes to the arm not in charge (5 %).
pub const GUARD_PROBE_EVERY: u64 = 20;

/// Which arm made a decision: the low bits of [`Decision::tag`]; the weights version that
/// served it is in the bits above.
const TAG_LEARNED: u64 = 0;
const TAG_FALLBACK: u64 = 1;
const TAG_HEURISTIC: u64 = 2;
const TAG_BITS: u32 = 2;

/// Settings of the rolling-reward guard (config `placement_guard_*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardSettings {
    /// Observed MEUs per arm in the rolling means.
    pub window: usize,
    /// How much worse (ms of latency-equivalent cost per MEU) the learned policy may be
    /// before the heuristic takes over.
    pub margin_ms: f64,
}

/// The learned dispatch policy as a [`Placement`].
#[derive(Debug)]
pub struct LearnedPlacement {
    serving: RwLock<Serving>,
    /// λ of Eq. 1, logits per expected cold-start ms: the one the weights were trained with.
    lambda: f32,
    fallback: WarmAffinity,
    /// Execution slots assumed per node (queue depth per slot, CPU share): peers do not
    /// publish theirs, so every node is assumed to be like this one.
    slots: f32,
    /// Memory assumed per node, for the memory-use fraction (same assumption).
    memory_total_bytes: f64,
    reward: RewardConfig,
    guard: Option<Mutex<Guard>>,
    #[cfg(feature = "online-learning")]
    online: Option<tern_policy::online::OnlineLearner>,
    /// Draws made by sampled decisions: the counter of a deterministic uniform sequence.
    #[cfg(feature = "online-learning")]
    draws: std::sync::atomic::AtomicU64,
    /// Set once the trainer has been seen gone (reported once, not per transition).
    #[cfg(feature = "online-learning")]
    trainer_gone: std::sync::atomic::AtomicBool,
    /// The weights of the last few versions that made decisions, by version.
    #[cfg(feature = "online-learning")]
    recent: Mutex<std::collections::VecDeque<(u64, Arc<PolicyWeights>)>>,
    metrics: Arc<Metrics>,
}

/// The scorer that serves, and the version of the online learner's weights it was built from
/// (0 without online learning).
#[derive(Debug)]
struct Serving {
    version: u64,
    scorer: DispatchScorer,
}

impl LearnedPlacement {
    /// From weights already in memory, without guard or online learning. Errors if the
    /// dispatch network does not have the scorer's fixed widths or has a non-finite weight.
    /// `slots` is this node's parallelism.
    pub fn new(
        weights: &PolicyWeights,
        slots: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PolicyError> {
        // Without a guard the learned policy is always in charge.
        metrics.placement_guard_learned.store(1, Relaxed);
        Ok(LearnedPlacement {
            serving: RwLock::new(Serving {
                version: 0,
                scorer: DispatchScorer::from_mlp(&weights.dispatch)?,
            }),
            lambda: DEFAULT_LAMBDA_DISPATCH,
            // Same setting as `placement = "warm-affinity"`.
            fallback: WarmAffinity {
                spill_at: (4 * slots).max(8),
            },
            slots: slots.max(1) as f32,
            memory_total_bytes: system_memory_bytes() as f64,
            reward: RewardConfig::default(),
            guard: None,
            #[cfg(feature = "online-learning")]
            online: None,
            #[cfg(feature = "online-learning")]
            draws: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "online-learning")]
            trainer_gone: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "online-learning")]
            recent: Mutex::default(),
            metrics,
        })
    }

    /// Turns the rolling-reward guard on (the learned policy starts in charge).
    pub fn with_guard(mut self, settings: GuardSettings) -> Self {
        // The guard compares rewards, which are costs in ms / 100.
        let margin = (settings.margin_ms / 100.0) as f32;
        self.guard = Some(Mutex::new(Guard::new(
            settings.window,
            margin,
            GUARD_PROBE_EVERY,
        )));
        self.metrics.placement_guard_learned.store(1, Relaxed);
        self
    }

    /// Trains the dispatch network online from `weights` (the ones this placement serves),
    /// `batch` transitions per PPO update, in tern-policy's background trainer thread.
    #[cfg(feature = "online-learning")]
    pub fn with_online_learning(
        mut self,
        weights: PolicyWeights,
        batch: usize,
    ) -> Result<Self, PolicyError> {
        use tern_policy::online::{OnlineConfig, OnlineLearner};
        let cfg = OnlineConfig {
            batch,
            queue: batch.saturating_mul(4).clamp(1024, 1 << 18),
            ..OnlineConfig::default()
        };
        self.online = Some(OnlineLearner::start(weights, cfg)?);
        Ok(self)
    }

    /// From a safetensors checkpoint written by tern-policy (`policy_checkpoint`). Every
    /// failure (unreadable, not safetensors, missing tensors, wrong widths, NaN) is a typed
    /// [`ConfigError::PolicyCheckpoint`].
    pub fn load(path: &Path, slots: usize, metrics: Arc<Metrics>) -> Result<Self, ConfigError> {
        Self::new(&read_checkpoint(path)?, slots, metrics)
            .map_err(|e| checkpoint_error(path, e.to_string()))
    }

    /// The per-node features the dispatch network sees for placing `meu` on `n`.
    pub fn features(&self, meu: &MeuView<'_>, n: &NodeView) -> NodeFeatures {
        let class = class_index(n.class);
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
    /// answer. No guard, no fallback, no counting.
    pub fn policy_choice(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Option<usize> {
        self.policy_choice_versioned(meu, nodes).0
    }

    /// [`Self::policy_choice`] and the weights version that made it.
    fn policy_choice_versioned(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
    ) -> (Option<usize>, u64) {
        self.refresh_weights();
        let serving = read(&self.serving);
        let pick = if nodes.len() <= STACK_CANDIDATES {
            let mut buf = [NodeFeatures::default(); STACK_CANDIDATES];
            for (i, (f, n)) in buf.iter_mut().zip(nodes).enumerate() {
                *f = self.candidate_features(meu, i, n);
            }
            serving.scorer.choose(&buf[..nodes.len()], self.lambda)
        } else {
            let feats = self.all_features(meu, nodes);
            serving.scorer.choose(&feats, self.lambda)
        };
        // The scorer masks exactly the non-usable nodes; re-check so that a mapping bug can
        // never send work to a dead or full node.
        let pick = pick.filter(|&i| nodes.get(i).is_some_and(NodeView::usable));
        (pick, serving.version)
    }

    fn all_features(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Vec<NodeFeatures> {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| self.candidate_features(meu, i, n))
            .collect()
    }

    /// Swaps in the online learner's newest weights, if there are any (one atomic load on the
    /// decision path otherwise).
    fn refresh_weights(&self) {
        #[cfg(feature = "online-learning")]
        if let Some(online) = &self.online {
            let cell = online.weights();
            let version = cell.version();
            if self.serving_version() == version {
                return;
            }
            let weights = cell.load();
            // The trainer validates what it exports; weights that still do not fit the
            // scorer are not served (the previous ones stay).
            let Ok(scorer) = DispatchScorer::from_mlp(&weights.dispatch) else {
                return;
            };
            let mut serving = write(&self.serving);
            if serving.version < version {
                *serving = Serving { version, scorer };
            }
            self.metrics.policy_updates.store(online.updates(), Relaxed);
        }
    }

    #[cfg(feature = "online-learning")]
    fn serving_version(&self) -> u64 {
        read(&self.serving).version
    }

    /// Reward of one observed MEU on `node` (tern-policy's reward: latency, cold start,
    /// energy of the guest's CPU time on that node class, SLA). A refusal (overloaded,
    /// unavailable) gets the lowest reward: it answered fast, but not with the work done. A
    /// timeout is charged its latency, which is past the SLA.
    pub fn reward(&self, node: &NodeView, outcome: &Observed) -> f32 {
        if outcome.fate == Fate::Refused {
            return MIN_REWARD;
        }
        let cold_ms = if outcome.cold_start {
            outcome.cold_us as f64 / 1000.0
        } else {
            0.0
        };
        let watts = sim_class(class_index(node.class)).busy_w_per_core as f64;
        let energy_j = outcome.exec_us as f64 / 1e6 * watts;
        self.reward
            .reward(outcome.latency_us as f64 / 1000.0, cold_ms, energy_j)
    }

    /// The learned arm's `choice` (node, weights version) as a counted decision; no choice
    /// while some node is usable goes to the heuristic as a fallback.
    fn learned_or_fallback(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
        choice: (Option<usize>, u64),
    ) -> Result<Decision, Error> {
        match choice {
            (Some(node), version) => {
                self.metrics.placement_learned.fetch_add(1, Relaxed);
                Ok(Decision {
                    node,
                    tag: version << TAG_BITS | TAG_LEARNED,
                })
            }
            // Only a decision the policy could have made counts as a fallback; with no
            // usable node the heuristic fails the same typed way.
            (None, _) if !nodes.iter().any(NodeView::usable) => {
                self.fallback.place(meu, nodes).map(|node| Decision {
                    node,
                    tag: TAG_FALLBACK,
                })
            }
            (None, _) => self.heuristic(meu, nodes, TAG_FALLBACK),
        }
    }

    /// The arm the guard has in charge (`Learned` without a guard).
    pub fn in_charge(&self) -> Arm {
        self.guard
            .as_ref()
            .map_or(Arm::Learned, |g| lock(g).in_charge())
    }

    fn heuristic(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
        tag: u64,
    ) -> Result<Decision, Error> {
        let node = self.fallback.place(meu, nodes)?;
        let counter = if tag == TAG_HEURISTIC {
            &self.metrics.placement_heuristic
        } else {
            &self.metrics.placement_fallback
        };
        counter.fetch_add(1, Relaxed);
        Ok(Decision { node, tag })
    }

    /// While learning online, the learned arm samples from the policy's softmax over the
    /// Eq. 1 scores instead of taking the argmax: PPO needs the actions its log-probabilities
    /// describe, and a policy that never tries another node cannot learn that it is better.
    /// A trained policy is sharp, so this rarely differs from the argmax. `None` (not
    /// learning online) means serve the argmax.
    #[cfg(feature = "online-learning")]
    fn sampled_choice(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
    ) -> Option<(Option<usize>, u64)> {
        let online = self.online.as_ref()?;
        self.metrics.policy_updates.store(online.updates(), Relaxed);
        let cell = online.weights();
        // Version first: weights newer than their tag make `learn` skip the transition,
        // never train on a mislabelled one.
        let (version, weights) = cell.load_versioned();
        self.remember(version, &weights);
        let features = self.all_features(meu, nodes);
        let mut scores = Vec::with_capacity(features.len());
        weights.dispatch_scores(&features, self.lambda, &mut scores);
        let usable = |i: usize| nodes.get(i).is_some_and(NodeView::usable);
        let max = scores
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.filter(|_| usable(i)))
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Some((None, version));
        }
        let mass: Vec<f64> = scores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.filter(|_| usable(i))
                    .map_or(0.0, |s| f64::from(s - max).exp())
            })
            .collect();
        let n = self.draws.fetch_add(1, Relaxed);
        let mut u = unit_interval(n) * mass.iter().sum::<f64>();
        let mut pick = None;
        for (i, m) in mass.iter().enumerate() {
            if *m > 0.0 {
                pick = Some(i);
                if u < *m {
                    break;
                }
                u -= m;
            }
        }
        Some((pick, version))
    }

    /// Keeps the weights of the last [`RECENT_WEIGHTS`] versions that decided, so that an
    /// outcome arriving after a swap is still learned from with the weights that made it.
    #[cfg(feature = "online-learning")]
    fn remember(&self, version: u64, weights: &Arc<PolicyWeights>) {
        let mut recent = lock(&self.recent);
        if recent.back().is_none_or(|(v, _)| *v != version) {
            recent.push_back((version, weights.clone()));
            if recent.len() > RECENT_WEIGHTS {
                recent.pop_front();
            }
        }
    }

    /// Hands a learned decision's outcome to the online learner as a PPO transition, with the
    /// log-probability under the weights that made the decision (PPO's clipped ratio tolerates
    /// them being a few updates old; older ones are skipped). Slow outcomes arrive after more
    /// swaps, so dropping every outcome of replaced weights would under-count them.
    #[cfg(feature = "online-learning")]
    fn learn(&self, meu: &MeuView<'_>, nodes: &[NodeView], decision: Decision, reward: f32) {
        use tern_policy::online::Transition;
        let Some(online) = &self.online else { return };
        let version = decision.tag >> TAG_BITS;
        let Some(weights) = lock(&self.recent)
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, w)| w.clone())
        else {
            return;
        };
        let candidates = self.all_features(meu, nodes);
        let Some(logp) = weights.dispatch_log_prob(&candidates, self.lambda, decision.node) else {
            return;
        };
        let value = weights.dispatch_value(&candidates);
        // A full queue drops (counted); a trainer that has stopped is reported once.
        if let Err(e) = online.record(Transition {
            candidates,
            action: decision.node,
            logp,
            value,
            reward,
        }) && !self.trainer_gone.swap(true, Relaxed)
        {
            tracing::error!(error = %e, "the online learner stopped; serving its last weights");
        }
        self.metrics
            .policy_dropped_transitions
            .store(online.dropped(), Relaxed);
        self.refresh_weights();
    }
}

impl Placement for LearnedPlacement {
    fn name(&self) -> &'static str {
        "learned"
    }

    /// Re-placement after a failover (the SchedulerAgent's only use of `place`): the arm in
    /// charge decides, greedily, without a probe, so that failovers neither shift the guard's
    /// probe schedule nor get sampled. Its outcome is credited to the first decision.
    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, Error> {
        let decision = if self.in_charge() == Arm::Heuristic {
            self.heuristic(meu, nodes, TAG_HEURISTIC)
        } else {
            self.learned_or_fallback(meu, nodes, self.policy_choice_versioned(meu, nodes))
        };
        decision.map(|d| d.node)
    }

    fn decide(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<Decision, Error> {
        let arm = self
            .guard
            .as_ref()
            .map_or(Arm::Learned, |g| lock(g).next_arm());
        if arm == Arm::Heuristic {
            return self.heuristic(meu, nodes, TAG_HEURISTIC);
        }
        #[cfg(feature = "online-learning")]
        let choice = match self.sampled_choice(meu, nodes) {
            Some(sampled) => sampled,
            None => self.policy_choice_versioned(meu, nodes),
        };
        #[cfg(not(feature = "online-learning"))]
        let choice = self.policy_choice_versioned(meu, nodes);
        self.learned_or_fallback(meu, nodes, choice)
    }

    fn observes(&self) -> bool {
        #[cfg(feature = "online-learning")]
        if self.online.is_some() {
            return true;
        }
        self.guard.is_some()
    }

    fn observe(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
        decision: Decision,
        outcome: &Observed,
    ) {
        // A guest's own error is the same on any node: it says nothing about the placement.
        let Some(node) = nodes
            .get(decision.node)
            .filter(|_| outcome.fate != Fate::GuestError)
        else {
            return;
        };
        self.metrics.placement_observed.fetch_add(1, Relaxed);
        let reward = self.reward(node, outcome);
        let arm = match decision.tag & ((1 << TAG_BITS) - 1) {
            TAG_LEARNED => Arm::Learned,
            TAG_HEURISTIC => Arm::Heuristic,
            // A fallback is neither arm's doing.
            _ => return,
        };
        if let Some(guard) = &self.guard {
            let mut g = lock(guard);
            g.record(arm, reward);
            let learned = i64::from(g.in_charge() == Arm::Learned);
            self.metrics.placement_guard_learned.store(learned, Relaxed);
        }
        #[cfg(feature = "online-learning")]
        if arm == Arm::Learned {
            self.learn(meu, nodes, decision, reward);
        }
        #[cfg(not(feature = "online-learning"))]
        let _ = meu;
    }
}

/// Reads a tern-policy checkpoint (`policy_checkpoint`) as a typed config error.
pub fn read_checkpoint(path: &Path) -> Result<PolicyWeights, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| checkpoint_error(path, e.to_string()))?;
    let (weights, _meta) = PolicyWeights::from_safetensors(&bytes)
        .map_err(|e| checkpoint_error(path, e.to_string()))?;
    Ok(weights)
}

/// The typed error for the checkpoint at `path`.
pub fn checkpoint_error(path: &Path, message: String) -> ConfigError {
    ConfigError::PolicyCheckpoint {
        path: path.display().to_string(),
        message,
    }
}

/// The `n`-th number of a fixed uniform sequence in [0, 1) (splitmix64 of `n`): sampling
/// needs no lock and no clock, and a run is reproducible.
#[cfg(feature = "online-learning")]
fn unit_interval(n: u64) -> f64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// tern-policy's class index of a Tern node class: 0 edge, 1 standard, 2 CPU-burst.
pub fn class_index(class: NodeClass) -> u8 {
    match class {
        NodeClass::EdgeSmall => 0,
        NodeClass::Standard => 1,
        NodeClass::CpuBurst => 2,
    }
}

fn sim_class(class: u8) -> SimClass {
    match class {
        0 => SimClass::edge(),
        2 => SimClass::burst(),
        _ => SimClass::standard(),
    }
}

fn class_cold_start_ms(class: u8) -> f32 {
    sim_class(class).cold_start_ms
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
            class: NodeClass::Standard,
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
            class: NodeClass::EdgeSmall,
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
        // An unknown class can no longer reach here: it is refused when the status decodes.
        assert_eq!(class_index(NodeClass::Standard), 1);
        assert_eq!(class_index(NodeClass::CpuBurst), 2);
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
        assert!(matches!(p.place(&meu(), &nodes), Err(Error::NoNodeFits)));
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
    fn the_committed_checkpoint_places_every_decision_on_a_usable_node() {
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

    fn ran_in(latency_us: u64) -> Observed {
        Observed {
            latency_us,
            exec_us: latency_us / 2,
            fate: Fate::Answered,
            ..Observed::default()
        }
    }

    /// Feature 6 is log RTT: a policy that prefers the farthest node.
    const RTT_FEATURE: usize = 6;

    #[test]
    fn the_guard_hands_over_to_warm_affinity_while_the_policy_does_worse_and_back() {
        let (p, metrics) = placement(&weights_scoring_feature(RTT_FEATURE, 10.0));
        let p = p.with_guard(GuardSettings {
            window: 40,
            margin_ms: 0.1,
        });
        let mut nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
        let owner = WarmAffinity::owner("f", &nodes).unwrap();
        let far = (owner + 1) % 3;
        nodes[far].rtt_us = 2_000;
        assert_eq!(p.policy_choice(&meu(), &nodes), Some(far));
        assert_eq!(p.in_charge(), Arm::Learned);
        // Decide, then report 5 ms on `slow` and 0.5 ms anywhere else.
        let run = |slow: usize, n: usize| {
            for _ in 0..n {
                let d = p.decide(&meu(), &nodes).unwrap();
                let latency = if d.node == slow { 5_000 } else { 500 };
                p.observe(&meu(), &nodes, d, &ran_in(latency));
            }
        };
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        run(far, 400);
        assert_eq!(p.in_charge(), Arm::Heuristic, "the policy's node is slow");
        assert_eq!(metrics.placement_guard_learned.load(Relaxed), 0);
        let (learned, heuristic) = (
            count(&metrics.placement_learned),
            count(&metrics.placement_heuristic),
        );
        run(far, 100);
        assert_eq!(
            count(&metrics.placement_heuristic) - heuristic,
            95,
            "in charge: all but the probes (1 in {GUARD_PROBE_EVERY})"
        );
        assert_eq!(count(&metrics.placement_learned) - learned, 5);
        // Now the owner is the slow one: the learned probes show it and the policy is back.
        run(owner, 400);
        assert_eq!(p.in_charge(), Arm::Learned);
        assert_eq!(metrics.placement_guard_learned.load(Relaxed), 1);
        assert_eq!(count(&metrics.placement_observed), 900);
        assert_eq!(count(&metrics.placement_fallback), 0);
        // A guest's own errors say nothing about placement: not observed, the guard stays.
        for _ in 0..400 {
            let d = p.decide(&meu(), &nodes).unwrap();
            let failed = Observed {
                latency_us: if d.node == far { 9_000_000 } else { 1 },
                fate: Fate::GuestError,
                ..Observed::default()
            };
            p.observe(&meu(), &nodes, d, &failed);
        }
        assert_eq!(p.in_charge(), Arm::Learned);
        assert_eq!(count(&metrics.placement_observed), 900);
        // A node that refuses (overloaded, unavailable) answers fast, but counts as the worst
        // outcome: the policy that keeps choosing it loses charge.
        for _ in 0..400 {
            let d = p.decide(&meu(), &nodes).unwrap();
            let outcome = if d.node == far {
                Observed {
                    latency_us: 10,
                    fate: Fate::Refused,
                    ..Observed::default()
                }
            } else {
                ran_in(2_000)
            };
            p.observe(&meu(), &nodes, d, &outcome);
        }
        assert_eq!(p.in_charge(), Arm::Heuristic);
        // A failover re-placement follows the arm in charge, without probing or counting a
        // heuristic decision twice.
        let probes = count(&metrics.placement_learned);
        for _ in 0..40 {
            assert_eq!(p.place(&meu(), &nodes).unwrap(), owner);
        }
        assert_eq!(count(&metrics.placement_learned), probes);
    }

    #[test]
    fn rewards_charge_latency_cold_starts_energy_and_the_sla() {
        let (p, _) = placement(&PolicyWeights::init(1).unwrap());
        let warm = p.reward(&node("a"), &ran_in(1_000));
        let cold = p.reward(
            &node("a"),
            &Observed {
                cold_start: true,
                cold_us: 20_000,
                ..ran_in(1_000)
            },
        );
        let slower = p.reward(&node("a"), &ran_in(2_000));
        let late = p.reward(&node("a"), &ran_in(200_000));
        assert!(warm < 0.0 && warm > -0.1, "{warm}");
        assert!(slower < warm && cold < slower, "{warm} {slower} {cold}");
        assert!(late < -1.0, "past the 150 ms SLA: {late}");
        // The same guest time costs more energy on a class with hungrier cores.
        let edge = NodeView {
            class: NodeClass::EdgeSmall,
            ..node("a")
        };
        assert!(p.reward(&edge, &ran_in(10_000)) > p.reward(&node("a"), &ran_in(10_000)));
    }

    /// Online learning in the node: decisions sample from the policy, their outcomes become
    /// PPO transitions, the trainer's weights are swapped in and serve, and they have learned
    /// to avoid the node that answers slowly.
    #[cfg(feature = "online-learning")]
    #[test]
    fn online_learning_swaps_in_weights_that_avoid_the_slow_node() {
        let weights = PolicyWeights::init(11).unwrap();
        let metrics = Arc::new(Metrics::default());
        let p = LearnedPlacement::new(&weights, 4, metrics.clone())
            .unwrap()
            .with_online_learning(weights.clone(), 64)
            .unwrap();
        assert!(p.observes());
        let nodes: Vec<NodeView> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| NodeView {
                rtt_us: 300 * i as u64,
                ..node(n)
            })
            .collect();
        // The farthest node is the slow one (a score rising or falling with one feature is
        // quick to learn from a near-uniform start).
        let slow = 2;
        let features = p.all_features(&meu(), &nodes);
        let p_slow = |w: &PolicyWeights| {
            w.dispatch_log_prob(&features, DEFAULT_LAMBDA_DISPATCH, slow)
                .unwrap()
                .exp()
        };
        let before = p_slow(&weights);
        let mut picks = [0usize; 3];
        // Rounds of one batch each: every round's decisions are made with the weights the
        // trainer last swapped in, so none is dropped as stale and the run is reproducible.
        for round in 1..=60u64 {
            for _ in 0..64 {
                let d = p.decide(&meu(), &nodes).unwrap();
                picks[d.node] += 1;
                let latency = if d.node == slow { 40_000 } else { 1_000 };
                p.observe(&meu(), &nodes, d, &ran_in(latency));
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while p.online.as_ref().unwrap().updates() < round {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: no update"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert_eq!(metrics.policy_dropped_transitions.load(Relaxed), 0);
        // The next decision swaps the last weights in.
        p.decide(&meu(), &nodes).unwrap();
        assert_eq!(metrics.policy_updates.load(Relaxed), 60);
        assert!(
            picks.iter().all(|&n| n > 0),
            "sampling tries every node: {picks:?}"
        );
        let after = p_slow(&p.online.as_ref().unwrap().weights().load());
        println!("P(slow node): {before:.3} → {after:.3}; picks {picks:?}");
        assert!(after < before * 0.5, "P(slow node) {before} → {after}");
        assert_eq!(metrics.placement_fallback.load(Relaxed), 0);
    }

    /// An outcome that arrives after the weights that decided it were replaced is still
    /// trained on (with those weights' log-probability): the second batch fills only with it.
    #[cfg(feature = "online-learning")]
    #[test]
    fn a_late_outcome_is_learned_with_the_weights_that_decided_it() {
        let weights = PolicyWeights::init(5).unwrap();
        let metrics = Arc::new(Metrics::default());
        let p = LearnedPlacement::new(&weights, 4, metrics)
            .unwrap()
            .with_online_learning(weights, 64)
            .unwrap();
        let nodes: Vec<NodeView> = ["a", "b"].iter().map(|n| node(n)).collect();
        let online = p.online.as_ref().unwrap();
        let wait_for = |updates: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while online.updates() < updates {
                assert!(std::time::Instant::now() < deadline, "no update {updates}");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        let decisions: Vec<Decision> = (0..65).map(|_| p.decide(&meu(), &nodes).unwrap()).collect();
        for d in &decisions[..64] {
            p.observe(&meu(), &nodes, *d, &ran_in(1_000));
        }
        wait_for(1);
        // 63 decisions by the swapped-in weights, then the 65th outcome arrives, late: it
        // completes the second batch.
        for _ in 0..63 {
            let d = p.decide(&meu(), &nodes).unwrap();
            assert_eq!(d.tag >> TAG_BITS, 1, "decided by the swapped-in weights");
            p.observe(&meu(), &nodes, d, &ran_in(1_000));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(online.updates(), 1, "63 transitions do not make a batch");
        p.observe(&meu(), &nodes, decisions[64], &ran_in(1_000));
        wait_for(2);
    }
}
