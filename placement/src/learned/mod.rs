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
//! The pieces: [`features`] (a node view as the network's input), [`guard`] (the rolling-reward
//! guard, the fallback and the reward), [`online`] (online learning, feature
//! `online-learning`) and [`checkpoint`] (reading exported weights).

mod checkpoint;
mod features;
mod guard;
#[cfg(feature = "online-learning")]
mod online;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};

use tern_metrics::Metrics;
use tern_policy::PolicyError;
use tern_policy::features::NodeFeatures;
use tern_policy::online::{Arm, Guard};
use tern_policy::policy::{DEFAULT_LAMBDA_DISPATCH, DispatchScorer, PolicyWeights};
use tern_policy::sim::RewardConfig;
use tern_sync::poison::{lock, read};

pub use self::checkpoint::{Checkpoint, CheckpointError, read_checkpoint};
use self::features::system_memory_bytes;
pub use self::features::{TrainedClasses, class_index};
pub use self::guard::GuardSettings;
use crate::{Decision, Fate, MeuView, NoNodeFits, NodeView, Observed, Placement, WarmAffinity};

/// Candidates whose features are built on the stack; larger clusters use a `Vec`.
pub const STACK_CANDIDATES: usize = 32;

/// Every `GUARD_PROBE_EVERY`-th decision goes to the arm not in charge (5 %).
pub const GUARD_PROBE_EVERY: u64 = 20;

/// Which arm made a decision: the low bits of [`Decision::tag`]; the weights version that
/// served it is in the bits above.
const TAG_LEARNED: u64 = 0;
const TAG_FALLBACK: u64 = 1;
const TAG_HEURISTIC: u64 = 2;
const TAG_BITS: u32 = 2;

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
    /// The classes the weights were trained in: cold starts and powers as the network knows
    /// them.
    classes: TrainedClasses,
    reward: RewardConfig,
    guard: Option<Mutex<Guard>>,
    /// Online learning, when turned on ([`online`]).
    #[cfg(feature = "online-learning")]
    online: Option<online::Online>,
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
            classes: TrainedClasses::assumed(),
            reward: RewardConfig::default(),
            guard: None,
            #[cfg(feature = "online-learning")]
            online: None,
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

    /// Serves the weights with the classes they were trained in (the assumed ones until this
    /// is called).
    pub fn with_classes(mut self, classes: TrainedClasses) -> Self {
        self.classes = classes;
        self
    }

    /// From a safetensors checkpoint written by tern-policy (`policy_checkpoint`), with the
    /// classes it was trained in. Every failure (unreadable, not safetensors, missing tensors,
    /// wrong widths, NaN, incomplete calibration) is a typed [`CheckpointError`].
    pub fn load(path: &Path, slots: usize, metrics: Arc<Metrics>) -> Result<Self, CheckpointError> {
        let checkpoint = read_checkpoint(path)?;
        Ok(Self::new(&checkpoint.weights, slots, metrics)
            .map_err(|e| CheckpointError::new(path, e.to_string()))?
            .with_classes(TrainedClasses::of(checkpoint.calibration.as_ref())))
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

    /// Swaps in the online learner's newest weights, if there are any (one atomic load on the
    /// decision path otherwise).
    fn refresh_weights(&self) {
        #[cfg(feature = "online-learning")]
        self.refresh_online_weights();
    }
}

impl Placement for LearnedPlacement {
    fn name(&self) -> &'static str {
        "learned"
    }

    /// Re-placement after a failover (the SchedulerAgent's only use of `place`): the arm in
    /// charge decides, greedily, without a probe, so that failovers neither shift the guard's
    /// probe schedule nor get sampled. Its outcome is credited to the first decision.
    fn place(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<usize, NoNodeFits> {
        let decision = if self.in_charge() == Arm::Heuristic {
            self.heuristic(meu, nodes, TAG_HEURISTIC)
        } else {
            self.learned_or_fallback(meu, nodes, self.policy_choice_versioned(meu, nodes))
        };
        decision.map(|d| d.node)
    }

    fn decide(&self, meu: &MeuView<'_>, nodes: &[NodeView]) -> Result<Decision, NoNodeFits> {
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
