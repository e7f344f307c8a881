//! The rolling-reward guard around the learned arm, the heuristic fallback, and the reward
//! both are judged by.

use std::sync::atomic::Ordering::Relaxed;

use tern_policy::online::Arm;
use tern_sync::poison::lock;

use super::{LearnedPlacement, TAG_BITS, TAG_FALLBACK, TAG_HEURISTIC, TAG_LEARNED};
use crate::{Decision, Fate, MeuView, NoNodeFits, NodeView, Observed, Placement};

/// tern-policy's rewards are clipped to [−10, 0].
const MIN_REWARD: f32 = -10.0;

/// Settings of the rolling-reward guard (config `placement_guard_*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardSettings {
    /// Observed MEUs per arm in the rolling means.
    pub window: usize,
    /// How much worse (ms of latency-equivalent cost per MEU) the learned policy may be
    /// before the heuristic takes over.
    pub margin_ms: f64,
}

impl LearnedPlacement {
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
        let watts = f64::from(self.classes.busy_watts_per_core(node.class));
        let energy_j = outcome.exec_us as f64 / 1e6 * watts;
        self.reward
            .reward(outcome.latency_us as f64 / 1000.0, cold_ms, energy_j)
    }

    /// The learned arm's `choice` (node, weights version) as a counted decision; no choice
    /// while some node is usable goes to the heuristic as a fallback.
    pub(super) fn learned_or_fallback(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
        choice: (Option<usize>, u64),
    ) -> Result<Decision, NoNodeFits> {
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

    pub(super) fn heuristic(
        &self,
        meu: &MeuView<'_>,
        nodes: &[NodeView],
        tag: u64,
    ) -> Result<Decision, NoNodeFits> {
        let node = self.fallback.place(meu, nodes)?;
        let counter = if tag == TAG_HEURISTIC {
            &self.metrics.placement_heuristic
        } else {
            &self.metrics.placement_fallback
        };
        counter.fetch_add(1, Relaxed);
        Ok(Decision { node, tag })
    }
}
