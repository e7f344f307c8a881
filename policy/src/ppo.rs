//! PPO (Eq. 5): rollout buffers, GAE, advantage normalisation, minibatch epochs. Backend-agnostic:
//! a [`Backend`] computes the clipped loss and takes optimizer steps on one minibatch; everything
//! else (sampling, GAE, shuffling) is plain Rust here so candle and tch train identically.

use crate::baselines::{DispatchCtx, Dispatcher, IdleHistogram, QuotaAction, QuotaPolicy};
use crate::error::{PolicyError, Result};
use crate::features::{NODE_FEATURES, NodeFeatures, QUOTA_FEATURES, QuotaFeatures};
use crate::policy::{PolicyWeights, QuotaDecision, pooled_features, quota_head_ranges};
use crate::rng::Rng;

/// PPO hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PpoConfig {
    /// Discount per decision.
    pub gamma: f32,
    /// GAE λ.
    pub gae_lambda: f32,
    /// Clip ε of Eq. 5.
    pub clip_eps: f32,
    /// Value loss weight.
    pub vf_coef: f32,
    /// Entropy bonus weight.
    pub ent_coef: f32,
    /// Adam learning rate.
    pub lr: f64,
    /// Passes over the batch per update.
    pub epochs: usize,
    /// Minibatch size (transitions).
    pub minibatch: usize,
    /// Global gradient-norm clip per network.
    pub max_grad_norm: f32,
    /// λ of Eq. 1 (logits per cold-start ms), used identically when sampling, training, serving.
    pub lambda_dispatch: f32,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            gamma: 0.95,
            gae_lambda: 0.9,
            clip_eps: 0.2,
            vf_coef: 0.5,
            ent_coef: 0.01,
            lr: 3e-3,
            epochs: 4,
            minibatch: 512,
            max_grad_norm: 0.5,
            lambda_dispatch: crate::policy::DEFAULT_LAMBDA_DISPATCH,
        }
    }
}

/// Generalised advantage estimation. `dones[t]` marks the last step of an episode (no
/// bootstrapping across it); `last_value` bootstraps after the final step when it is not done.
/// Returns `(advantages, returns)` with `returns = advantages + values`.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    dones: &[bool],
    last_value: f32,
    gamma: f32,
    lambda: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let n = rewards.len();
    if values.len() != n || dones.len() != n {
        return Err(PolicyError::Shape {
            what: "gae inputs".into(),
            expected: n,
            got: values.len().min(dones.len()),
        });
    }
    let mut adv = vec![0.0f32; n];
    let mut next_adv = 0.0f32;
    let mut next_value = last_value;
    for t in (0..n).rev() {
        let nonterminal = if dones[t] { 0.0 } else { 1.0 };
        let delta = rewards[t] + gamma * next_value * nonterminal - values[t];
        next_adv = delta + gamma * lambda * nonterminal * next_adv;
        adv[t] = next_adv;
        next_value = values[t];
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    Ok((adv, ret))
}

/// Normalise to zero mean, unit variance (no-op for fewer than two samples).
pub fn normalize(x: &mut [f32]) {
    if x.len() < 2 {
        return;
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt() + 1e-8;
    for v in x {
        *v = ((*v as f64 - mean) / std) as f32;
    }
}

/// The per-sample clipped surrogate of Eq. 5, `min(r·A, clip(r, 1−ε, 1+ε)·A)` (to be maximised).
/// The reference the backends' tensor versions are tested against.
pub fn clipped_surrogate(ratio: f32, adv: f32, eps: f32) -> f32 {
    (ratio * adv).min(ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
}

/// Log-softmax over the selectable entries; masked entries get `-inf`.
pub fn masked_log_softmax(scores: &[f32], mask: &[bool]) -> Vec<f32> {
    let max = scores
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(s, _)| *s)
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = max
        + scores
            .iter()
            .zip(mask)
            .filter(|(_, m)| **m)
            .map(|(s, _)| (s - max).exp())
            .sum::<f32>()
            .ln();
    scores
        .iter()
        .zip(mask)
        .map(|(s, m)| if *m { s - lse } else { f32::NEG_INFINITY })
        .collect()
}

fn log_softmax(x: &[f32]) -> Vec<f32> {
    masked_log_softmax(x, &vec![true; x.len()])
}

fn sample_log_probs(logp: &[f32], rng: &mut Rng) -> usize {
    let w: Vec<f64> = logp.iter().map(|l| (*l as f64).exp()).collect();
    rng.weighted(&w).unwrap_or(0)
}

/// Dispatch transitions of one or more episodes, flat for cheap minibatch gathering.
/// Every decision of one buffer has the same number of candidates `nodes`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DispatchRollout {
    /// Candidates per decision.
    pub nodes: usize,
    /// `[T][nodes][NODE_FEATURES]`.
    pub obs: Vec<f32>,
    /// `[T][nodes]`, 1.0 = selectable.
    pub mask: Vec<f32>,
    /// `[T][nodes]` expected cold-start ms (Eq. 1's c).
    pub cold: Vec<f32>,
    /// `[T][NODE_FEATURES]` value-head input.
    pub pooled: Vec<f32>,
    /// Chosen candidate.
    pub actions: Vec<u32>,
    /// Log-probability under the behaviour policy.
    pub logp: Vec<f32>,
    /// Value estimate under the behaviour policy.
    pub values: Vec<f32>,
    /// Reward.
    pub rewards: Vec<f32>,
    /// Last step of an episode.
    pub dones: Vec<bool>,
}

impl DispatchRollout {
    /// Number of transitions.
    pub fn len(&self) -> usize {
        self.actions.len()
    }
    /// No transitions.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Append one decision (features already computed). Rejects mismatched candidate counts.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        candidates: &[NodeFeatures],
        action: usize,
        logp: f32,
        value: f32,
        reward: f32,
        done: bool,
    ) -> Result<()> {
        if self.is_empty() && self.nodes == 0 {
            self.nodes = candidates.len();
        }
        if candidates.len() != self.nodes || action >= candidates.len() {
            return Err(PolicyError::Shape {
                what: "dispatch transition candidates".into(),
                expected: self.nodes,
                got: candidates.len(),
            });
        }
        if !candidates[action].selectable() || ![logp, value, reward].iter().all(|v| v.is_finite())
        {
            return Err(PolicyError::InvalidInput(
                "transition: action not selectable, or non-finite logp/value/reward".into(),
            ));
        }
        for c in candidates {
            // Non-finite candidates are masked; their features are zeroed so they cannot leak
            // NaN into the batch.
            if c.is_finite() {
                self.obs.extend_from_slice(&c.to_vector());
            } else {
                self.obs.extend_from_slice(&[0.0; NODE_FEATURES]);
            }
            self.mask.push(if c.selectable() { 1.0 } else { 0.0 });
            self.cold.push(if c.is_finite() {
                c.expected_cold_ms
            } else {
                0.0
            });
        }
        self.pooled.extend_from_slice(&pooled_features(candidates));
        self.actions.push(action as u32);
        self.logp.push(logp);
        self.values.push(value);
        self.rewards.push(reward);
        self.dones.push(done);
        Ok(())
    }

    /// Check that every field has the length the transition count implies and that actions
    /// point at selectable candidates (the fields are public, so a hand-built buffer could lie).
    pub fn validate(&self) -> Result<()> {
        let t = self.len();
        let (n, f) = (self.nodes, NODE_FEATURES);
        let checks = [
            ("obs", self.obs.len(), t * n * f),
            ("mask", self.mask.len(), t * n),
            ("cold", self.cold.len(), t * n),
            ("pooled", self.pooled.len(), t * f),
            ("logp", self.logp.len(), t),
            ("values", self.values.len(), t),
            ("rewards", self.rewards.len(), t),
            ("dones", self.dones.len(), t),
        ];
        for (what, got, expected) in checks {
            if got != expected {
                return Err(PolicyError::Shape {
                    what: format!("dispatch rollout {what}"),
                    expected,
                    got,
                });
            }
        }
        for (i, &a) in self.actions.iter().enumerate() {
            if a as usize >= n || self.mask[i * n + a as usize] == 0.0 {
                return Err(PolicyError::InvalidInput(format!(
                    "transition {i}: action {a} is not a selectable candidate"
                )));
            }
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !(finite(&self.obs)
            && finite(&self.cold)
            && finite(&self.logp)
            && finite(&self.values)
            && finite(&self.rewards))
        {
            return Err(PolicyError::InvalidInput(
                "non-finite value in dispatch rollout".into(),
            ));
        }
        Ok(())
    }

    /// Append another buffer with the same candidate count.
    pub fn extend(&mut self, o: &DispatchRollout) -> Result<()> {
        if self.is_empty() {
            self.nodes = o.nodes;
        }
        if o.nodes != self.nodes && !o.is_empty() {
            return Err(PolicyError::Shape {
                what: "rollout nodes".into(),
                expected: self.nodes,
                got: o.nodes,
            });
        }
        self.obs.extend_from_slice(&o.obs);
        self.mask.extend_from_slice(&o.mask);
        self.cold.extend_from_slice(&o.cold);
        self.pooled.extend_from_slice(&o.pooled);
        self.actions.extend_from_slice(&o.actions);
        self.logp.extend_from_slice(&o.logp);
        self.values.extend_from_slice(&o.values);
        self.rewards.extend_from_slice(&o.rewards);
        self.dones.extend_from_slice(&o.dones);
        Ok(())
    }
}

/// Quota transitions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaRollout {
    /// `[T][QUOTA_FEATURES]`.
    pub obs: Vec<f32>,
    /// `[T][3]` (cpu, mem, keep-warm) indices.
    pub actions: Vec<u32>,
    /// Sum of the three heads' log-probabilities.
    pub logp: Vec<f32>,
    /// Value estimate.
    pub values: Vec<f32>,
    /// Reward.
    pub rewards: Vec<f32>,
    /// Last step of an episode.
    pub dones: Vec<bool>,
}

impl QuotaRollout {
    /// Number of transitions.
    pub fn len(&self) -> usize {
        self.logp.len()
    }

    /// Check field lengths, action ranges and finiteness.
    pub fn validate(&self) -> Result<()> {
        let t = self.len();
        let checks = [
            ("obs", self.obs.len(), t * QUOTA_FEATURES),
            ("actions", self.actions.len(), t * 3),
            ("values", self.values.len(), t),
            ("rewards", self.rewards.len(), t),
            ("dones", self.dones.len(), t),
        ];
        for (what, got, expected) in checks {
            if got != expected {
                return Err(PolicyError::Shape {
                    what: format!("quota rollout {what}"),
                    expected,
                    got,
                });
            }
        }
        let heads = quota_head_ranges();
        for (k, &a) in self.actions.iter().enumerate() {
            if a as usize >= heads[k % 3].len() {
                return Err(PolicyError::InvalidInput(format!(
                    "quota action {a} out of range"
                )));
            }
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !(finite(&self.obs)
            && finite(&self.logp)
            && finite(&self.values)
            && finite(&self.rewards))
        {
            return Err(PolicyError::InvalidInput(
                "non-finite value in quota rollout".into(),
            ));
        }
        Ok(())
    }
    /// No transitions.
    pub fn is_empty(&self) -> bool {
        self.logp.is_empty()
    }
}

/// One minibatch for the dispatch network, gathered from a rollout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DispatchBatch {
    /// Transitions.
    pub batch: usize,
    /// Candidates per transition.
    pub nodes: usize,
    /// `[B][N][F]`.
    pub obs: Vec<f32>,
    /// `[B][N]`.
    pub mask: Vec<f32>,
    /// `[B][N]`.
    pub cold: Vec<f32>,
    /// `[B][F]`.
    pub pooled: Vec<f32>,
    /// `[B]`.
    pub actions: Vec<u32>,
    /// `[B]`.
    pub old_logp: Vec<f32>,
    /// `[B]` (normalised).
    pub adv: Vec<f32>,
    /// `[B]`.
    pub returns: Vec<f32>,
}

/// One minibatch for the quota network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuotaBatch {
    /// Transitions.
    pub batch: usize,
    /// `[B][QUOTA_FEATURES]`.
    pub obs: Vec<f32>,
    /// `[B][3]`.
    pub actions: Vec<u32>,
    /// `[B]`.
    pub old_logp: Vec<f32>,
    /// `[B]`.
    pub adv: Vec<f32>,
    /// `[B]`.
    pub returns: Vec<f32>,
}

/// Losses of one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossStats {
    /// −mean clipped surrogate.
    pub policy_loss: f32,
    /// Mean squared value error.
    pub value_loss: f32,
    /// Mean entropy.
    pub entropy: f32,
    /// Mean old-minus-new log-prob (approximate KL).
    pub approx_kl: f32,
    /// Fraction of samples whose ratio was clipped.
    pub clip_frac: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
}

/// A training backend: owns trainable copies of the networks and an optimizer.
pub trait Backend {
    /// Name for reports.
    fn name(&self) -> &'static str;
    /// Replace the trainable weights (and reset optimizer state).
    fn load(&mut self, w: &PolicyWeights) -> Result<()>;
    /// Export the current weights for the plain-Rust serving path.
    fn export(&self) -> Result<PolicyWeights>;
    /// One clipped-PPO step on the dispatch network and its value head.
    fn step_dispatch(&mut self, b: &DispatchBatch, cfg: &PpoConfig) -> Result<LossStats>;
    /// One clipped-PPO step on the quota network and its value head.
    fn step_quota(&mut self, b: &QuotaBatch, cfg: &PpoConfig) -> Result<LossStats>;
    /// Dispatch logits (before Eq. 1's cold-start term) for `obs = [N][F]`: agreement tests.
    fn dispatch_logits(&self, obs: &[f32], nodes: usize) -> Result<Vec<f32>>;
    /// Quota logits for one observation: agreement tests.
    fn quota_logits(&self, obs: &[f32]) -> Result<Vec<f32>>;
}

/// Statistics of one PPO update.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UpdateStats {
    /// Mean over dispatch steps.
    pub dispatch: LossStats,
    /// Mean over quota steps.
    pub quota: LossStats,
    /// Dispatch transitions used.
    pub dispatch_samples: usize,
    /// Quota transitions used.
    pub quota_samples: usize,
}

fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx
}

fn acc(a: &mut LossStats, b: &LossStats, k: f32) {
    a.policy_loss += b.policy_loss * k;
    a.value_loss += b.value_loss * k;
    a.entropy += b.entropy * k;
    a.approx_kl += b.approx_kl * k;
    a.clip_frac += b.clip_frac * k;
    a.grad_norm += b.grad_norm * k;
}

/// Gather a dispatch minibatch.
pub fn dispatch_batch(
    r: &DispatchRollout,
    idx: &[usize],
    adv: &[f32],
    ret: &[f32],
) -> DispatchBatch {
    let (n, f) = (r.nodes, NODE_FEATURES);
    let mut b = DispatchBatch {
        batch: idx.len(),
        nodes: n,
        ..DispatchBatch::default()
    };
    for &i in idx {
        b.obs.extend_from_slice(&r.obs[i * n * f..(i + 1) * n * f]);
        b.mask.extend_from_slice(&r.mask[i * n..(i + 1) * n]);
        b.cold.extend_from_slice(&r.cold[i * n..(i + 1) * n]);
        b.pooled.extend_from_slice(&r.pooled[i * f..(i + 1) * f]);
        b.actions.push(r.actions[i]);
        b.old_logp.push(r.logp[i]);
        b.adv.push(adv[i]);
        b.returns.push(ret[i]);
    }
    b
}

fn quota_batch(r: &QuotaRollout, idx: &[usize], adv: &[f32], ret: &[f32]) -> QuotaBatch {
    let f = QUOTA_FEATURES;
    let mut b = QuotaBatch {
        batch: idx.len(),
        ..QuotaBatch::default()
    };
    for &i in idx {
        b.obs.extend_from_slice(&r.obs[i * f..(i + 1) * f]);
        b.actions.extend_from_slice(&r.actions[i * 3..(i + 1) * 3]);
        b.old_logp.push(r.logp[i]);
        b.adv.push(adv[i]);
        b.returns.push(ret[i]);
    }
    b
}

/// One PPO update of both networks from the same rollouts: GAE, advantage normalisation, then
/// `epochs` passes of shuffled minibatches. At most `max_samples` transitions of each kind are
/// used (a seeded subsample, taken *after* GAE so advantages still see whole trajectories).
pub fn ppo_update(
    backend: &mut dyn Backend,
    d: &DispatchRollout,
    q: &QuotaRollout,
    cfg: &PpoConfig,
    max_samples: usize,
    rng: &mut Rng,
) -> Result<UpdateStats> {
    d.validate()?;
    q.validate()?;
    let mut stats = UpdateStats::default();
    if !d.is_empty() {
        let (loss, samples) = update_head(
            (&d.rewards, &d.values, &d.dones),
            cfg,
            max_samples,
            rng,
            |idx, adv, ret| backend.step_dispatch(&dispatch_batch(d, idx, adv, ret), cfg),
        )?;
        stats.dispatch = loss;
        stats.dispatch_samples = samples;
    }
    if !q.is_empty() {
        let (loss, samples) = update_head(
            (&q.rewards, &q.values, &q.dones),
            cfg,
            max_samples,
            rng,
            |idx, adv, ret| backend.step_quota(&quota_batch(q, idx, adv, ret), cfg),
        )?;
        stats.quota = loss;
        stats.quota_samples = samples;
    }
    Ok(stats)
}

/// The PPO update of one head (dispatch or quota), the same for both: GAE over the rollout,
/// a random subset of at most `max_samples` with normalised advantages, then `cfg.epochs` passes
/// of shuffled minibatches through `step` (which builds the head's batch from sample indices,
/// advantages and returns). Returns the mean loss statistics and the samples used.
fn update_head(
    (rewards, values, dones): (&[f32], &[f32], &[bool]),
    cfg: &PpoConfig,
    max_samples: usize,
    rng: &mut Rng,
    mut step: impl FnMut(&[usize], &[f32], &[f32]) -> Result<LossStats>,
) -> Result<(LossStats, usize)> {
    let (mut adv, ret) = gae(rewards, values, dones, 0.0, cfg.gamma, cfg.gae_lambda)?;
    let mut sel = shuffled(rewards.len(), rng);
    sel.truncate(max_samples.max(1));
    let mut sub_adv: Vec<f32> = sel.iter().map(|&i| adv[i]).collect();
    normalize(&mut sub_adv);
    for (k, &i) in sel.iter().enumerate() {
        adv[i] = sub_adv[k];
    }
    let mut total = LossStats::default();
    let mut steps = 0.0;
    for _ in 0..cfg.epochs {
        let order = shuffled(sel.len(), rng);
        for chunk in order.chunks(cfg.minibatch.max(1)) {
            let idx: Vec<usize> = chunk.iter().map(|&k| sel[k]).collect();
            acc(&mut total, &step(&idx, &adv, &ret)?, 1.0);
            steps += 1.0;
        }
    }
    let mut mean = LossStats::default();
    acc(&mut mean, &total, 1.0 / f32::max(steps, 1.0));
    Ok((mean, sel.len()))
}

/// Behaviour policy for dispatch during rollouts: samples from softmax(Eq. 1 scores) and records
/// every decision. Implements [`Dispatcher`] so it runs inside the simulator.
#[derive(Debug, Clone)]
pub struct SamplingDispatch {
    /// Current weights.
    pub weights: PolicyWeights,
    /// λ of Eq. 1.
    pub lambda: f32,
    rng: Rng,
    scores: Vec<Option<f32>>,
    /// Recorded decisions; rewards are filled in after the run.
    pub rollout: DispatchRollout,
    /// One entry per call: whether it produced a transition (false when nothing was selectable).
    pub recorded: Vec<bool>,
}

impl SamplingDispatch {
    /// New sampler.
    pub fn new(weights: PolicyWeights, lambda: f32, seed: u64) -> Self {
        SamplingDispatch {
            weights,
            lambda,
            rng: Rng::new(seed),
            scores: Vec::new(),
            rollout: DispatchRollout::default(),
            recorded: Vec::new(),
        }
    }

    /// Attach the simulator's per-call rewards (same order as calls) and mark the episode end.
    pub fn finish(&mut self, call_rewards: &[f32]) -> Result<DispatchRollout> {
        if call_rewards.len() != self.recorded.len() {
            return Err(PolicyError::Shape {
                what: "rewards vs dispatch calls".into(),
                expected: self.recorded.len(),
                got: call_rewards.len(),
            });
        }
        let rewards: Vec<f32> = self
            .recorded
            .iter()
            .zip(call_rewards)
            .filter(|(r, _)| **r)
            .map(|(_, &x)| x)
            .collect();
        let mut r = std::mem::take(&mut self.rollout);
        r.rewards = rewards;
        if let Some(last) = r.dones.last_mut() {
            *last = true;
        }
        self.recorded.clear();
        Ok(r)
    }
}

impl Dispatcher for SamplingDispatch {
    fn name(&self) -> String {
        "ppo-sampling".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        self.weights
            .dispatch_scores(c, self.lambda, &mut self.scores);
        let mask: Vec<bool> = self.scores.iter().map(Option::is_some).collect();
        if !mask.iter().any(|&m| m) || (!self.rollout.is_empty() && c.len() != self.rollout.nodes) {
            self.recorded.push(false);
            return None;
        }
        let s: Vec<f32> = self.scores.iter().map(|s| s.unwrap_or(0.0)).collect();
        let logp = masked_log_softmax(&s, &mask);
        let a = sample_log_probs(&logp, &mut self.rng);
        let v = self.weights.dispatch_value(c);
        let ok = self.rollout.push(c, a, logp[a], v, 0.0, false).is_ok();
        self.recorded.push(ok);
        Some(a)
    }
}

/// Behaviour policy for quotas during rollouts: samples each head and records decisions.
#[derive(Debug, Clone)]
pub struct SamplingQuota {
    /// Current weights.
    pub weights: PolicyWeights,
    /// Keep-alive applied with every decision, ms.
    pub keep_alive_ms: f64,
    rng: Rng,
    /// Recorded decisions; rewards filled in after the run.
    pub rollout: QuotaRollout,
}

impl SamplingQuota {
    /// New sampler.
    pub fn new(weights: PolicyWeights, keep_alive_ms: f64, seed: u64) -> Self {
        SamplingQuota {
            weights,
            keep_alive_ms,
            rng: Rng::new(seed),
            rollout: QuotaRollout::default(),
        }
    }

    /// Attach the simulator's quota rewards (one per `decide` call) and mark the episode end.
    pub fn finish(&mut self, rewards: &[f32]) -> Result<QuotaRollout> {
        if rewards.len() != self.rollout.len() {
            return Err(PolicyError::Shape {
                what: "rewards vs quota calls".into(),
                expected: self.rollout.len(),
                got: rewards.len(),
            });
        }
        let mut r = std::mem::take(&mut self.rollout);
        r.rewards = rewards.to_vec();
        if let Some(last) = r.dones.last_mut() {
            *last = true;
        }
        Ok(r)
    }
}

impl QuotaPolicy for SamplingQuota {
    fn name(&self) -> String {
        "ppo-quota-sampling".into()
    }
    fn decide(&mut self, f: &QuotaFeatures, _: &IdleHistogram) -> QuotaAction {
        let f = if f.is_finite() {
            *f
        } else {
            QuotaFeatures::default()
        };
        let logits = self
            .weights
            .quota_logits(&f)
            .unwrap_or_else(|_| vec![0.0; crate::policy::QUOTA_OUTPUTS]);
        let mut acts = [0usize; 3];
        let mut logp = 0.0;
        for (h, r) in quota_head_ranges().into_iter().enumerate() {
            let lp = log_softmax(&logits[r]);
            let a = sample_log_probs(&lp, &mut self.rng);
            acts[h] = a;
            logp += lp[a];
        }
        let v = self.weights.quota_value(&f);
        self.rollout.obs.extend_from_slice(&f.to_vector());
        self.rollout.actions.extend(acts.iter().map(|&a| a as u32));
        self.rollout.logp.push(logp);
        self.rollout.values.push(v);
        self.rollout.rewards.push(0.0);
        self.rollout.dones.push(false);
        QuotaAction {
            decision: QuotaDecision {
                cpu: acts[0],
                mem: acts[1],
                keep_warm: acts[2],
            },
            keep_alive_ms: self.keep_alive_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gae_matches_hand_computation() {
        // γ = 0.5, λ = 1 → plain discounted returns minus values.
        let (adv, ret) = gae(
            &[1.0, 1.0, 1.0],
            &[0.0, 0.0, 0.0],
            &[false, false, true],
            9.0,
            0.5,
            1.0,
        )
        .unwrap();
        assert_eq!(ret, vec![1.75, 1.5, 1.0]);
        assert_eq!(adv, ret);
        // Bootstrap from last_value when not done; λ = 0 → one-step TD error.
        let (adv, _) = gae(&[1.0, 2.0], &[0.5, 1.0], &[false, false], 4.0, 0.9, 0.0).unwrap();
        assert!((adv[0] - (1.0 + 0.9 * 1.0 - 0.5)).abs() < 1e-6);
        assert!((adv[1] - (2.0 + 0.9 * 4.0 - 1.0)).abs() < 1e-6);
        // Episode boundary: nothing flows from step 1 into step 0.
        let (adv, _) = gae(&[1.0, 100.0], &[0.0, 0.0], &[true, true], 0.0, 0.99, 0.95).unwrap();
        assert_eq!(adv[0], 1.0);
        assert!(gae(&[1.0], &[], &[true], 0.0, 0.9, 0.9).is_err());
    }

    #[test]
    fn clipped_surrogate_clips_in_the_right_direction() {
        // Positive advantage: gain capped at (1+ε)·A.
        assert_eq!(clipped_surrogate(2.0, 1.0, 0.2), 1.2);
        assert_eq!(clipped_surrogate(1.1, 1.0, 0.2), 1.1);
        // Negative advantage: pessimistic min keeps the unclipped (worse) value for large r …
        assert_eq!(clipped_surrogate(2.0, -1.0, 0.2), -2.0);
        // … and clips at (1−ε)·A for small r.
        assert_eq!(clipped_surrogate(0.5, -1.0, 0.2), -0.8);
        assert_eq!(clipped_surrogate(0.5, 1.0, 0.2), 0.5);
    }

    #[test]
    fn normalize_gives_zero_mean_unit_std() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        normalize(&mut x);
        let m: f32 = x.iter().sum::<f32>() / 4.0;
        let v: f32 = x.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 4.0;
        assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-4);
        let mut one = vec![5.0];
        normalize(&mut one);
        assert_eq!(one, vec![5.0]);
    }

    #[test]
    fn inconsistent_rollouts_are_rejected_before_training() {
        let mut r = DispatchRollout::default();
        let c = vec![NodeFeatures::default(); 3];
        r.push(&c, 1, -1.0, 0.0, -0.5, true).unwrap();
        r.validate().unwrap();
        let mut short = r.clone();
        short.rewards.clear();
        assert!(matches!(short.validate(), Err(PolicyError::Shape { .. })));
        let mut masked = r.clone();
        masked.mask[1] = 0.0;
        assert!(masked.validate().is_err(), "action on a masked node");
        let mut nan = r.clone();
        nan.rewards[0] = f32::NAN;
        assert!(nan.validate().is_err());
        let q = QuotaRollout {
            obs: vec![0.0; QUOTA_FEATURES],
            actions: vec![0, 0, 9],
            logp: vec![0.0],
            values: vec![0.0],
            rewards: vec![0.0],
            dones: vec![true],
        };
        assert!(q.validate().is_err(), "keep-warm index 9 out of range");
        assert!(
            r.push(&c[..2], 0, 0.0, 0.0, 0.0, false).is_err(),
            "candidate count changed"
        );
        assert!(
            r.push(&c, 5, 0.0, 0.0, 0.0, false).is_err(),
            "action out of range"
        );
    }

    #[test]
    fn masked_log_softmax_excludes_masked() {
        let lp = masked_log_softmax(&[1.0, 100.0, 1.0], &[true, false, true]);
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp[1], f32::NEG_INFINITY);
    }

    #[test]
    fn sampling_dispatch_never_samples_masked_and_lines_up_rewards() {
        let w = PolicyWeights::init(1).unwrap();
        let mut s = SamplingDispatch::new(w, 0.02, 7);
        let mut c = vec![NodeFeatures::default(); 4];
        c[1].alive = false;
        c[3].has_capacity = false;
        let ctx = DispatchCtx {
            function_key: 0,
            now_ms: 0.0,
        };
        for _ in 0..200 {
            let a = s.dispatch(&ctx, &c).unwrap();
            assert!(a == 0 || a == 2);
        }
        let dead = vec![
            NodeFeatures {
                alive: false,
                ..NodeFeatures::default()
            };
            4
        ];
        assert_eq!(s.dispatch(&ctx, &dead), None);
        let mut rewards = vec![-1.0; 200];
        rewards.push(-10.0);
        let r = s.finish(&rewards).unwrap();
        assert_eq!(r.len(), 200);
        assert!(r.rewards.iter().all(|&x| x == -1.0));
        assert_eq!(r.dones.iter().filter(|d| **d).count(), 1);
        assert!(s.finish(&[1.0]).is_err());
    }
}
