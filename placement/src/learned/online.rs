//! Online learning (feature `online-learning`): outcomes of the learned arm's decisions become
//! PPO transitions for tern-policy's background trainer, and the trainer's new weights are
//! swapped in between two decisions, never during one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

use tern_policy::PolicyError;
use tern_policy::online::{OnlineConfig, OnlineLearner, Transition};
use tern_policy::policy::{DispatchScorer, PolicyWeights};
use tern_sync::poison::{lock, read, write};

use super::{LearnedPlacement, Serving, TAG_BITS};
use crate::{Decision, MeuView, NodeView};

/// Weight versions whose decisions are still learned from when their outcome arrives.
const RECENT_WEIGHTS: usize = 4;

/// The online learner and what the placement keeps for it.
#[derive(Debug)]
pub(super) struct Online {
    pub(super) learner: OnlineLearner,
    /// Draws made by sampled decisions: the counter of a deterministic uniform sequence.
    draws: AtomicU64,
    /// Set once the trainer has been seen gone (reported once, not per transition).
    trainer_gone: AtomicBool,
    /// The weights of the last few versions that made decisions, by version.
    recent: Mutex<VecDeque<(u64, Arc<PolicyWeights>)>>,
}

impl Online {
    /// Keeps the weights of the last [`RECENT_WEIGHTS`] versions that decided, so that an
    /// outcome arriving after a swap is still learned from with the weights that made it.
    fn remember(&self, version: u64, weights: &Arc<PolicyWeights>) {
        let mut recent = lock(&self.recent);
        if recent.back().is_none_or(|(v, _)| *v != version) {
            recent.push_back((version, weights.clone()));
            if recent.len() > RECENT_WEIGHTS {
                recent.pop_front();
            }
        }
    }
}

impl LearnedPlacement {
    /// Trains the dispatch network online from `weights` (the ones this placement serves),
    /// `batch` transitions per PPO update, in tern-policy's background trainer thread.
    pub fn with_online_learning(
        mut self,
        weights: PolicyWeights,
        batch: usize,
    ) -> Result<Self, PolicyError> {
        let cfg = OnlineConfig {
            batch,
            queue: batch.saturating_mul(4).clamp(1024, 1 << 18),
            ..OnlineConfig::default()
        };
        self.online = Some(Online {
            learner: OnlineLearner::start(weights, cfg)?,
            draws: AtomicU64::new(0),
            trainer_gone: AtomicBool::new(false),
            recent: Mutex::default(),
        });
        Ok(self)
    }

    /// Swaps in the online learner's newest weights, if there are any (one atomic load on the
    /// decision path otherwise).
    pub(super) fn refresh_online_weights(&self) {
        let Some(online) = &self.online else { return };
        let cell = online.learner.weights();
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
        self.metrics
            .policy_updates
            .store(online.learner.updates(), Relaxed);
    }

    fn serving_version(&self) -> u64 {
        read(&self.serving).version
    }

    /// While learning online, the learned arm samples from the policy's softmax over the
    /// Eq. 1 scores instead of taking the argmax: PPO needs the actions its log-probabilities
    /// describe, and a policy that never tries another node cannot learn that it is better.
    /// A trained policy is sharp, so this rarely differs from the argmax. `None` (not
    /// learning online) means serve the argmax.
    pub(super) fn sampled_choice(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
    ) -> Option<(Option<usize>, u64)> {
        let online = self.online.as_ref()?;
        self.metrics
            .policy_updates
            .store(online.learner.updates(), Relaxed);
        let cell = online.learner.weights();
        // Version first: weights newer than their tag make `learn` skip the transition,
        // never train on a mislabelled one.
        let (version, weights) = cell.load_versioned();
        online.remember(version, &weights);
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
        let n = online.draws.fetch_add(1, Relaxed);
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

    /// Hands a learned decision's outcome to the online learner as a PPO transition, with the
    /// log-probability under the weights that made the decision (PPO's clipped ratio tolerates
    /// them being a few updates old; older ones are skipped). Slow outcomes arrive after more
    /// swaps, so dropping every outcome of replaced weights would under-count them.
    pub(super) fn learn(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
        decision: Decision,
        reward: f32,
    ) {
        let Some(online) = &self.online else { return };
        let version = decision.tag >> TAG_BITS;
        let Some(weights) = lock(&online.recent)
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
        if let Err(e) = online.learner.record(Transition {
            candidates,
            action: decision.node,
            logp,
            value,
            reward,
        }) && !online.trainer_gone.swap(true, Relaxed)
        {
            tracing::error!(error = %e, "the online learner stopped; serving its last weights");
        }
        self.metrics
            .policy_dropped_transitions
            .store(online.learner.dropped(), Relaxed);
        self.refresh_online_weights();
    }
}

/// The `n`-th number of a fixed uniform sequence in [0, 1) (splitmix64 of `n`): sampling
/// needs no lock and no clock, and a run is reproducible.
fn unit_interval(n: u64) -> f64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
