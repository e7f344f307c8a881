//! Online learning for the SchedulerAgent: record transitions on the hot path (bounded, never
//! blocking), train in a background thread, swap weights in atomically, and a guard that falls
//! back to the best heuristic when the learned policy's rolling reward drops below it.
//!
//! No clock and no I/O here: the agent passes rewards in; the trainer thread only computes.

use crate::features::{NodeFeatures, QuotaFeatures};
use crate::policy::{PolicyWeights, QuotaDecision};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

// The guard lives in its own module (the baselines use it, and online learning uses the
// baselines' traits through PPO); its path here is kept for users of `online::{Arm, Guard}`.
pub use crate::guard::{Arm, Guard};
#[cfg(feature = "candle")]
pub use learner::{OnlineConfig, OnlineLearner};

/// Holder of the serving weights. Readers take an `Arc` snapshot (a pointer copy under a
/// briefly-held lock), so a swap never tears a decision in half and never waits for readers.
#[derive(Debug)]
pub struct WeightCell {
    current: Mutex<Arc<PolicyWeights>>,
    version: AtomicU64,
}

impl WeightCell {
    /// New cell at version 0.
    pub fn new(w: PolicyWeights) -> Self {
        WeightCell {
            current: Mutex::new(Arc::new(w)),
            version: AtomicU64::new(0),
        }
    }
    /// Snapshot of the current weights.
    pub fn load(&self) -> Arc<PolicyWeights> {
        // A poisoned lock still holds a valid Arc: keep serving rather than panic.
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// Snapshot of the current weights with their version, read together (a swap cannot fall
    /// between the two).
    pub fn load_versioned(&self) -> (u64, Arc<PolicyWeights>) {
        let g = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        (self.version.load(Ordering::Acquire), g.clone())
    }
    /// Replace the weights; returns the new version.
    pub fn store(&self, w: PolicyWeights) -> u64 {
        let mut g = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        *g = Arc::new(w);
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }
    /// Number of swaps so far.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// One completed dispatch decision with its reward (computed by the agent from measured latency,
/// cold start and energy, e.g. with [`crate::sim::RewardConfig::reward`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Candidates as seen at decision time (stable order).
    pub candidates: Vec<NodeFeatures>,
    /// Chosen index.
    pub action: usize,
    /// Log-probability of the action under the policy that chose it.
    pub logp: f32,
    /// Value estimate at decision time.
    pub value: f32,
    /// Reward.
    pub reward: f32,
}

/// One completed quota decision (one function, one interval) with its reward.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaTransition {
    /// Features the decision was taken on.
    pub features: QuotaFeatures,
    /// The decision.
    pub decision: QuotaDecision,
    /// Log-probability of the decision ([`PolicyWeights::quota_log_prob`]).
    pub logp: f32,
    /// Value estimate at decision time.
    pub value: f32,
    /// Reward over the interval.
    pub reward: f32,
}
#[cfg(feature = "candle")]
mod learner {
    //! The background trainer (PPO with the candle backend): only with the `candle` feature.
    use super::{QuotaTransition, Transition, WeightCell};
    use crate::candle_backend::CandleBackend;
    use crate::error::{PolicyError, Result};
    use crate::policy::{CPU_SHARES, KEEP_WARM, MEM_TIERS_MB, PolicyWeights};
    use crate::ppo::{DispatchRollout, PpoConfig, QuotaRollout, ppo_update};
    use crate::rng::Rng;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
    use std::thread::JoinHandle;

    /// Configuration of the background learner.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct OnlineConfig {
        /// Transitions per PPO update.
        pub batch: usize,
        /// Capacity of the hand-off channel (in transitions); `record` drops when it is full.
        pub queue: usize,
        /// PPO hyper-parameters.
        pub ppo: PpoConfig,
        /// Training seed.
        pub seed: u64,
    }

    impl Default for OnlineConfig {
        fn default() -> Self {
            OnlineConfig {
                batch: 2048,
                queue: 16_384,
                ppo: PpoConfig::default(),
                seed: 1,
            }
        }
    }

    enum Msg {
        T(Box<Transition>),
        Q(Box<QuotaTransition>),
        Flush,
    }

    /// The online learner: a background trainer thread fed through a bounded channel.
    #[derive(Debug)]
    pub struct OnlineLearner {
        cell: Arc<WeightCell>,
        tx: Option<SyncSender<Msg>>,
        handle: Option<JoinHandle<()>>,
        dropped: AtomicU64,
        updates: Arc<AtomicU64>,
        /// Set by `stop`: the trainer leaves at once instead of training on what is queued
        /// (a node shutting down must not wait for PPO updates).
        stopping: Arc<AtomicBool>,
    }

    impl OnlineLearner {
        /// Start the trainer thread from `init` weights.
        pub fn start(init: PolicyWeights, cfg: OnlineConfig) -> Result<Self> {
            init.validate()?;
            let cell = Arc::new(WeightCell::new(init.clone()));
            let (tx, rx) = sync_channel(cfg.queue.max(1));
            let updates = Arc::new(AtomicU64::new(0));
            let stopping = Arc::new(AtomicBool::new(false));
            let (c2, u2, s2) = (cell.clone(), updates.clone(), stopping.clone());
            let handle = std::thread::Builder::new()
                .name("tern-policy-trainer".into())
                .spawn(move || trainer(rx, init, cfg, c2, u2, s2))
                .map_err(|e| PolicyError::Trainer(e.to_string()))?;
            Ok(OnlineLearner {
                cell,
                tx: Some(tx),
                handle: Some(handle),
                dropped: AtomicU64::new(0),
                updates,
                stopping,
            })
        }

        /// The serving weights (share this with the SchedulerAgent).
        pub fn weights(&self) -> Arc<WeightCell> {
            self.cell.clone()
        }

        /// Hand one transition to the trainer. Never blocks: when the queue is full the transition
        /// is dropped and counted (the hot path must not wait for training).
        pub fn record(&self, t: Transition) -> Result<()> {
            self.offer(Msg::T(Box::new(t)))
        }

        /// Hand one quota transition to the trainer (same non-blocking contract as `record`). Quota
        /// transitions are trained together with the next dispatch batch.
        pub fn record_quota(&self, t: QuotaTransition) -> Result<()> {
            self.offer(Msg::Q(Box::new(t)))
        }

        /// The non-blocking send both `record`s share: a full queue drops and counts.
        fn offer(&self, msg: Msg) -> Result<()> {
            let tx = self
                .tx
                .as_ref()
                .ok_or_else(|| PolicyError::Trainer("stopped".into()))?;
            match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(TrySendError::Disconnected(_)) => {
                    Err(PolicyError::Trainer("trainer exited".into()))
                }
            }
        }

        /// Ask the trainer to train on whatever it has (at least 2 transitions) now.
        pub fn flush(&self) -> Result<()> {
            let tx = self
                .tx
                .as_ref()
                .ok_or_else(|| PolicyError::Trainer("stopped".into()))?;
            tx.send(Msg::Flush)
                .map_err(|_| PolicyError::Trainer("trainer exited".into()))
        }

        /// Transitions dropped because the queue was full.
        pub fn dropped(&self) -> u64 {
            self.dropped.load(Ordering::Relaxed)
        }

        /// PPO updates completed.
        pub fn updates(&self) -> u64 {
            self.updates.load(Ordering::Acquire)
        }

        /// Stop the trainer and wait for it: what is already queued is trained on first
        /// (a pending `flush` included). Dropping the learner stops it without that.
        pub fn stop(&mut self) -> Result<()> {
            self.tx = None;
            if let Some(h) = self.handle.take() {
                h.join()
                    .map_err(|_| PolicyError::Trainer("trainer thread panicked".into()))?;
            }
            Ok(())
        }
    }

    impl Drop for OnlineLearner {
        /// Leaves queued transitions untrained, so that dropping the learner (a node shutting
        /// down, maybe on an async runtime's thread) waits at most for an update in progress.
        fn drop(&mut self) {
            self.stopping.store(true, Ordering::Release);
            let _ = self.stop();
        }
    }

    fn trainer(
        rx: Receiver<Msg>,
        init: PolicyWeights,
        cfg: OnlineConfig,
        cell: Arc<WeightCell>,
        updates: Arc<AtomicU64>,
        stopping: Arc<AtomicBool>,
    ) {
        let Ok(mut backend) = CandleBackend::new(&init) else {
            return;
        };
        let mut rng = Rng::new(cfg.seed);
        let mut buf = DispatchRollout::default();
        let mut qbuf = QuotaRollout::default();
        while let Ok(msg) = rx.recv() {
            if stopping.load(Ordering::Acquire) {
                return;
            }
            let flush = match msg {
                Msg::T(t) => {
                    // A transition whose candidate count differs from the buffer's starts a new
                    // batch boundary: train on what we have first (a cluster resize).
                    if !buf.is_empty() && t.candidates.len() != buf.nodes {
                        train_once(
                            &mut backend,
                            &mut buf,
                            &mut qbuf,
                            &cfg,
                            &mut rng,
                            &cell,
                            &updates,
                        );
                    }
                    // Invalid transitions (masked action, NaN reward) are skipped, not trained on.
                    let _ = buf.push(&t.candidates, t.action, t.logp, t.value, t.reward, false);
                    buf.len() >= cfg.batch.max(2)
                }
                Msg::Q(q) => {
                    let ok = q.features.is_finite()
                        && [q.logp, q.value, q.reward].iter().all(|v| v.is_finite())
                        && q.decision.cpu < CPU_SHARES.len()
                        && q.decision.mem < MEM_TIERS_MB.len()
                        && q.decision.keep_warm < KEEP_WARM.len();
                    if ok {
                        qbuf.obs.extend_from_slice(&q.features.to_vector());
                        qbuf.actions.extend(
                            [q.decision.cpu, q.decision.mem, q.decision.keep_warm]
                                .map(|a| a as u32),
                        );
                        qbuf.logp.push(q.logp);
                        qbuf.values.push(q.value);
                        qbuf.rewards.push(q.reward);
                        qbuf.dones.push(false);
                    }
                    false
                }
                Msg::Flush => buf.len() >= 2 || qbuf.len() >= 2,
            };
            if flush {
                train_once(
                    &mut backend,
                    &mut buf,
                    &mut qbuf,
                    &cfg,
                    &mut rng,
                    &cell,
                    &updates,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn train_once(
        backend: &mut CandleBackend,
        buf: &mut DispatchRollout,
        qbuf: &mut QuotaRollout,
        cfg: &OnlineConfig,
        rng: &mut Rng,
        cell: &WeightCell,
        updates: &AtomicU64,
    ) {
        let mut ro = std::mem::take(buf);
        let mut qro = std::mem::take(qbuf);
        // Decisions are a continuing stream; treat the batch end as a truncation.
        if let Some(d) = ro.dones.last_mut() {
            *d = true;
        }
        if let Some(d) = qro.dones.last_mut() {
            *d = true;
        }
        let ok = ppo_update(backend, &ro, &qro, &cfg.ppo, usize::MAX, rng).is_ok();
        if ok && let Ok(w) = crate::ppo::Backend::export(backend) {
            cell.store(w);
            updates.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn weight_cell_swaps_atomically() {
        let a = PolicyWeights::init(1).unwrap();
        let b = PolicyWeights::init(2).unwrap();
        let cell = WeightCell::new(a.clone());
        let snap = cell.load();
        assert_eq!(cell.store(b.clone()), 1);
        assert_eq!(*snap, a, "an old snapshot is unaffected by the swap");
        assert_eq!(*cell.load(), b);
    }

    #[cfg(feature = "candle")]
    #[test]
    fn background_trainer_swaps_in_new_weights() {
        use crate::rng::Rng;
        let init = PolicyWeights::init(5).unwrap();
        let mut l = OnlineLearner::start(
            init.clone(),
            OnlineConfig {
                batch: 64,
                queue: 1024,
                ..OnlineConfig::default()
            },
        )
        .unwrap();
        let cell = l.weights();
        let mut r = Rng::new(1);
        for _ in 0..64 {
            let warm = r.below(4);
            let mut c = vec![NodeFeatures::default(); 4];
            c[warm].warm_instances = 1.0;
            let a = r.below(4);
            l.record(Transition {
                candidates: c,
                action: a,
                logp: (0.25f32).ln(),
                value: 0.0,
                reward: if a == warm { 0.0 } else { -1.0 },
            })
            .unwrap();
        }
        let q = QuotaFeatures {
            latency_ms: 30.0,
            ..QuotaFeatures::default()
        };
        let d = QuotaDecision {
            cpu: 2,
            mem: 1,
            keep_warm: 0,
        };
        for k in 0..8 {
            l.record_quota(QuotaTransition {
                features: q,
                decision: d,
                logp: init.quota_log_prob(&q, &d).unwrap(),
                value: 0.0,
                reward: -(k as f32) / 8.0,
            })
            .unwrap();
        }
        l.flush().unwrap();
        l.stop().unwrap();
        assert_eq!(
            l.updates(),
            2,
            "one batch update, one flush with the quota transitions"
        );
        assert_ne!(cell.load().quota, init.quota, "quota network trained too");
        assert_eq!(cell.version(), 2);
        assert_ne!(*cell.load(), init);
        assert!(
            l.record(Transition {
                candidates: vec![],
                action: 0,
                logp: 0.0,
                value: 0.0,
                reward: 0.0
            })
            .is_err()
        );
    }
}
