//! The two policy networks (dispatch and quota), their value heads, and the serving-time
//! decisions made from exported weights with the plain-Rust forward pass.

use crate::error::{PolicyError, Result};
use crate::features::{NODE_FEATURES, NodeFeatures, QUOTA_FEATURES, QuotaFeatures};
use crate::mlp::{Mlp, from_safetensors, to_safetensors};
use crate::rng::Rng;
use std::collections::BTreeMap;

/// CPU share choices of the quota network (cores).
pub const CPU_SHARES: [f32; 3] = [0.5, 1.0, 2.0];
/// Memory tier choices of the quota network (MiB per instance).
pub const MEM_TIERS_MB: [f32; 3] = [128.0, 256.0, 512.0];
/// Keep-warm count choices of the quota network (instances kept idle per function).
pub const KEEP_WARM: [u32; 4] = [0, 1, 2, 4];
/// Width of the quota network's output: the three categorical heads side by side.
pub const QUOTA_OUTPUTS: usize = CPU_SHARES.len() + MEM_TIERS_MB.len() + KEEP_WARM.len();
/// λ of Eq. 1 (logits per expected cold-start ms) the committed checkpoints were trained with;
/// `PpoConfig::lambda_dispatch` defaults to it. Serve with the λ the network was trained with.
pub const DEFAULT_LAMBDA_DISPATCH: f32 = 0.02;
/// Hidden widths of the shared per-node dispatch MLP.
pub const DISPATCH_HIDDEN: [usize; 2] = [32, 16];
/// Hidden width of the other MLPs.
pub const HIDDEN: usize = 32;

const H0: usize = DISPATCH_HIDDEN[0];
const H1: usize = DISPATCH_HIDDEN[1];

/// The dispatch scorer specialised to its fixed widths (`NODE_FEATURES → 32 → 16 → 1`): with
/// compile-time sizes the loops unroll and vectorise, which is what brings one decision over 16
/// nodes into the ~µs range. Same summation order as [`Mlp::forward_into`], so scores are
/// bit-identical to the generic path.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchScorer {
    w0: [[f32; H0]; NODE_FEATURES],
    b0: [f32; H0],
    w1: [[f32; H1]; H0],
    b1: [f32; H1],
    w2: [f32; H1],
    b2: f32,
}

impl DispatchScorer {
    /// Build from the dispatch MLP; errors unless its widths are exactly the fixed ones.
    pub fn from_mlp(m: &Mlp) -> Result<Self> {
        m.validate("dispatch")?;
        let dims: Vec<(usize, usize)> = m.layers.iter().map(|l| (l.inputs, l.outputs)).collect();
        if dims != [(NODE_FEATURES, H0), (H0, H1), (H1, 1)] {
            return Err(PolicyError::InvalidInput(format!(
                "dispatch widths {dims:?}, scorer needs {NODE_FEATURES}→{H0}→{H1}→1"
            )));
        }
        let mut s = DispatchScorer {
            w0: [[0.0; H0]; NODE_FEATURES],
            b0: [0.0; H0],
            w1: [[0.0; H1]; H0],
            b1: [0.0; H1],
            w2: [0.0; H1],
            b2: m.layers[2].bias[0],
        };
        for (i, row) in s.w0.iter_mut().enumerate() {
            row.copy_from_slice(&m.layers[0].weight[i * H0..(i + 1) * H0]);
        }
        s.b0.copy_from_slice(&m.layers[0].bias);
        for (i, row) in s.w1.iter_mut().enumerate() {
            row.copy_from_slice(&m.layers[1].weight[i * H1..(i + 1) * H1]);
        }
        s.b1.copy_from_slice(&m.layers[1].bias);
        s.w2.copy_from_slice(&m.layers[2].weight);
        Ok(s)
    }

    /// Policy logit of one node.
    #[inline]
    pub fn logit(&self, x: &[f32; NODE_FEATURES]) -> f32 {
        let mut h0 = self.b0;
        for (xi, row) in x.iter().zip(&self.w0) {
            for (h, w) in h0.iter_mut().zip(row) {
                *h += xi * w;
            }
        }
        let mut h1 = self.b1;
        for (hi, row) in h0.iter().zip(&self.w1) {
            let hi = hi.max(0.0);
            for (h, w) in h1.iter_mut().zip(row) {
                *h += hi * w;
            }
        }
        let mut y = self.b2;
        for (h, w) in h1.iter().zip(&self.w2) {
            y += h.max(0.0) * w;
        }
        y
    }

    /// Serving-time dispatch (Eq. 1): argmax over selectable candidates of
    /// `logit − λ · expected cold-start ms`; `None` if nothing is selectable or λ is not finite.
    pub fn choose(&self, candidates: &[NodeFeatures], lambda: f32) -> Option<usize> {
        if !lambda.is_finite() {
            return None;
        }
        let mut best: Option<(usize, f32)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.selectable() {
                continue;
            }
            let s = self.logit(&c.to_vector()) - lambda * c.expected_cold_ms;
            if s.is_finite() && best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The two otherwise identical idle warm candidates (one per node class: edge, standard,
    /// burst) that tell whether the network learned the hop cost: one local (RTT 0), one
    /// `rtt_ms` away. Reports and tests compare their logits.
    pub fn hop_probe(rtt_ms: f32) -> [(NodeFeatures, NodeFeatures); 3] {
        [(0u8, 50.0, 0.7), (1, 300.0, 1.0), (2, 900.0, 1.6)].map(|(class, limit, speed)| {
            let local = NodeFeatures {
                warm_instances: 1.0,
                concurrency: 8.0,
                expected_exec_ms: 12.0 / speed,
                recent_latency_ms: 20.0,
                time_limit_ms: limit,
                speed,
                class,
                ..NodeFeatures::default()
            };
            (local, NodeFeatures { rtt_ms, ..local })
        })
    }

    /// Logit of the local minus the remote candidate of [`DispatchScorer::hop_probe`], per
    /// class: positive where the network prefers not to forward.
    pub fn local_preference(&self, rtt_ms: f32) -> [f32; 3] {
        Self::hop_probe(rtt_ms)
            .map(|(local, remote)| self.logit(&local.to_vector()) - self.logit(&remote.to_vector()))
    }
}

/// All weights of the learned scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyWeights {
    /// Shared per-node scorer: node features → one logit.
    pub dispatch: Mlp,
    /// Dispatch value head: mean of the selectable nodes' features → V(s).
    pub dispatch_value: Mlp,
    /// Quota policy: function features → [`QUOTA_OUTPUTS`] logits (cpu | mem | keep-warm).
    pub quota: Mlp,
    /// Quota value head: function features → V(s).
    pub quota_value: Mlp,
}

/// Quota decision for one function for the next interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaDecision {
    /// Index into [`CPU_SHARES`].
    pub cpu: usize,
    /// Index into [`MEM_TIERS_MB`].
    pub mem: usize,
    /// Index into [`KEEP_WARM`].
    pub keep_warm: usize,
}

impl QuotaDecision {
    /// CPU share in cores.
    pub fn cpu_share(&self) -> f32 {
        CPU_SHARES[self.cpu.min(CPU_SHARES.len() - 1)]
    }
    /// Memory tier in MiB.
    pub fn mem_mb(&self) -> f32 {
        MEM_TIERS_MB[self.mem.min(MEM_TIERS_MB.len() - 1)]
    }
    /// Instances to keep warm.
    pub fn keep_warm_count(&self) -> u32 {
        KEEP_WARM[self.keep_warm.min(KEEP_WARM.len() - 1)]
    }
}

/// Index ranges of the three quota heads inside the quota network's output.
pub fn quota_head_ranges() -> [std::ops::Range<usize>; 3] {
    let a = CPU_SHARES.len();
    let b = a + MEM_TIERS_MB.len();
    [0..a, a..b, b..QUOTA_OUTPUTS]
}

fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Mean of the selectable candidates' feature vectors (value-head input); zeros if none.
pub fn pooled_features(candidates: &[NodeFeatures]) -> [f32; NODE_FEATURES] {
    let mut acc = [0.0f32; NODE_FEATURES];
    let mut n = 0.0f32;
    for c in candidates.iter().filter(|c| c.selectable()) {
        for (a, v) in acc.iter_mut().zip(c.to_vector()) {
            *a += v;
        }
        n += 1.0;
    }
    if n > 0.0 {
        for a in &mut acc {
            *a /= n;
        }
    }
    acc
}

impl PolicyWeights {
    /// Fresh random weights from a seed.
    pub fn init(seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        Ok(PolicyWeights {
            dispatch: Mlp::new(
                &[NODE_FEATURES, DISPATCH_HIDDEN[0], DISPATCH_HIDDEN[1], 1],
                &mut rng,
                0.1,
            )?,
            dispatch_value: Mlp::new(&[NODE_FEATURES, HIDDEN, 1], &mut rng, 0.1)?,
            quota: Mlp::new(&[QUOTA_FEATURES, HIDDEN, QUOTA_OUTPUTS], &mut rng, 0.1)?,
            quota_value: Mlp::new(&[QUOTA_FEATURES, HIDDEN, 1], &mut rng, 0.1)?,
        })
    }

    /// Check that every network has the widths the features and heads need.
    pub fn validate(&self) -> Result<()> {
        let nets = [
            ("dispatch", &self.dispatch, NODE_FEATURES, 1),
            ("dispatch_value", &self.dispatch_value, NODE_FEATURES, 1),
            ("quota", &self.quota, QUOTA_FEATURES, QUOTA_OUTPUTS),
            ("quota_value", &self.quota_value, QUOTA_FEATURES, 1),
        ];
        for (name, net, i, o) in nets {
            net.validate(name)?;
            if net.inputs() != i || net.outputs() != o {
                return Err(PolicyError::Shape {
                    what: format!("{name} in/out"),
                    expected: i * 1000 + o,
                    got: net.inputs() * 1000 + net.outputs(),
                });
            }
        }
        Ok(())
    }

    /// Per-candidate policy scores of Eq. 1: `logit − λ · expected_cold_ms`, `None` for masked
    /// candidates (dead, full or non-finite). `scores` is cleared and refilled.
    pub fn dispatch_scores(
        &self,
        candidates: &[NodeFeatures],
        lambda: f32,
        scores: &mut Vec<Option<f32>>,
    ) {
        scores.clear();
        let mut out = [0.0f32; 1];
        for c in candidates {
            if !c.selectable() {
                scores.push(None);
                continue;
            }
            // Validated weights and fixed-width input: this cannot fail, but stay total.
            let s = match self.dispatch.forward_into(&c.to_vector(), &mut out) {
                Ok(()) => out[0] - lambda * c.expected_cold_ms,
                Err(_) => f32::NAN,
            };
            scores.push(s.is_finite().then_some(s));
        }
    }

    /// Serving-time dispatch (Eq. 1): argmax over selectable candidates of
    /// `logit − λ · expected cold-start ms`. `None` when no candidate is selectable or λ is not
    /// finite. Pure: no clock, no allocation.
    pub fn choose(&self, candidates: &[NodeFeatures], lambda: f32) -> Option<usize> {
        if !lambda.is_finite() {
            return None;
        }
        let mut best: Option<(usize, f32)> = None;
        let mut out = [0.0f32; 1];
        for (i, c) in candidates.iter().enumerate() {
            if !c.selectable()
                || self
                    .dispatch
                    .forward_into(&c.to_vector(), &mut out)
                    .is_err()
            {
                continue;
            }
            let s = out[0] - lambda * c.expected_cold_ms;
            if s.is_finite() && best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Log-probability of choosing `action` under the policy's softmax over Eq. 1 scores (what
    /// PPO needs recorded with each online transition). `None` if `action` is masked or invalid.
    pub fn dispatch_log_prob(
        &self,
        candidates: &[NodeFeatures],
        lambda: f32,
        action: usize,
    ) -> Option<f32> {
        let mut scores = Vec::with_capacity(candidates.len());
        self.dispatch_scores(candidates, lambda, &mut scores);
        let chosen = (*scores.get(action)?)?;
        let max = scores
            .iter()
            .flatten()
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let lse = max
            + scores
                .iter()
                .flatten()
                .map(|s| (s - max).exp())
                .sum::<f32>()
                .ln();
        Some(chosen - lse)
    }

    /// Sum of the three heads' log-probabilities of `d` (quota analogue of
    /// [`PolicyWeights::dispatch_log_prob`]).
    pub fn quota_log_prob(&self, f: &QuotaFeatures, d: &QuotaDecision) -> Result<f32> {
        let logits = self.quota_logits(f)?;
        let mut lp = 0.0;
        for (r, a) in quota_head_ranges()
            .into_iter()
            .zip([d.cpu, d.mem, d.keep_warm])
        {
            let head = &logits[r];
            let Some(&x) = head.get(a) else {
                return Err(PolicyError::InvalidInput(format!(
                    "quota action {a} out of range"
                )));
            };
            let max = head.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            lp += x - (max + head.iter().map(|v| (v - max).exp()).sum::<f32>().ln());
        }
        Ok(lp)
    }

    /// Value estimate of a dispatch state.
    pub fn dispatch_value(&self, candidates: &[NodeFeatures]) -> f32 {
        self.dispatch_value
            .forward(&pooled_features(candidates))
            .map_or(0.0, |v| v[0])
    }

    /// Raw quota logits (length [`QUOTA_OUTPUTS`]).
    pub fn quota_logits(&self, f: &QuotaFeatures) -> Result<Vec<f32>> {
        if !f.is_finite() {
            return Err(PolicyError::InvalidInput(
                "non-finite quota features".into(),
            ));
        }
        self.quota.forward(&f.to_vector())
    }

    /// Serving-time quota decision: argmax of each head.
    pub fn quota_decision(&self, f: &QuotaFeatures) -> Result<QuotaDecision> {
        let logits = self.quota_logits(f)?;
        let [a, b, c] = quota_head_ranges();
        Ok(QuotaDecision {
            cpu: argmax(&logits[a]),
            mem: argmax(&logits[b]),
            keep_warm: argmax(&logits[c]),
        })
    }

    /// Value estimate of a quota state.
    pub fn quota_value(&self, f: &QuotaFeatures) -> f32 {
        self.quota_value
            .forward(&f.to_vector())
            .map_or(0.0, |v| v[0])
    }

    /// All weights as named tensors (`dispatch.0.weight`, …).
    pub fn named_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut v = self.dispatch.named_tensors("dispatch");
        v.extend(self.dispatch_value.named_tensors("dispatch_value"));
        v.extend(self.quota.named_tensors("quota"));
        v.extend(self.quota_value.named_tensors("quota_value"));
        v
    }

    /// Rebuild from named tensors.
    pub fn from_named(t: &BTreeMap<String, (Vec<usize>, Vec<f32>)>) -> Result<Self> {
        let w = PolicyWeights {
            dispatch: Mlp::from_named("dispatch", t)?,
            dispatch_value: Mlp::from_named("dispatch_value", t)?,
            quota: Mlp::from_named("quota", t)?,
            quota_value: Mlp::from_named("quota_value", t)?,
        };
        w.validate()?;
        Ok(w)
    }

    /// Checkpoint as safetensors bytes (metadata is free-form, e.g. seed and step).
    pub fn to_safetensors(&self, metadata: BTreeMap<String, String>) -> Result<Vec<u8>> {
        to_safetensors(&self.named_tensors(), metadata)
    }

    /// Load a safetensors checkpoint.
    pub fn from_safetensors(bytes: &[u8]) -> Result<(Self, BTreeMap<String, String>)> {
        let (t, meta) = from_safetensors(bytes)?;
        Ok((Self::from_named(&t)?, meta))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(warm: f32, queue: f32, cold: f32) -> NodeFeatures {
        NodeFeatures {
            warm_instances: warm,
            queue_depth: queue,
            concurrency: 4.0,
            expected_cold_ms: cold,
            expected_exec_ms: 20.0,
            ..NodeFeatures::default()
        }
    }

    #[test]
    fn masking_never_picks_dead_full_or_nan_nodes() {
        let w = PolicyWeights::init(1).unwrap();
        let mut c = vec![node(0.0, 0.0, 5.0); 4];
        c[0].alive = false;
        c[1].has_capacity = false;
        c[2].cpu_util = f32::NAN;
        assert_eq!(w.choose(&c, 0.01), Some(3));
        c[3].alive = false;
        assert_eq!(w.choose(&c, 0.01), None);
        assert_eq!(w.choose(&[], 0.01), None);
        assert_eq!(w.choose(&[node(0.0, 0.0, 1.0)], f32::NAN), None);
        let mut s = Vec::new();
        w.dispatch_scores(&c[..3], 0.0, &mut s);
        assert_eq!(s, vec![None, None, None]);
    }

    #[test]
    fn lambda_penalises_cold_start_cost() {
        let w = PolicyWeights::init(2).unwrap();
        // Two nodes identical except expected cold-start; with λ large the warm one must win
        // whatever the random logits say.
        let a = node(0.0, 0.0, 0.0);
        let b = NodeFeatures {
            expected_cold_ms: 60.0,
            ..a
        };
        assert_eq!(w.choose(&[b, a], 10.0), Some(1));
        assert_eq!(w.choose(&[a, b], 10.0), Some(0));
    }

    #[test]
    fn choose_is_argmax_of_scores() {
        let w = PolicyWeights::init(3).unwrap();
        let c: Vec<_> = (0..16)
            .map(|i| node((i % 3) as f32, (i % 5) as f32, (i * 7 % 60) as f32))
            .collect();
        let mut s = Vec::new();
        w.dispatch_scores(&c, 0.02, &mut s);
        let best = s
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| (i, v)))
            .fold(None::<(usize, f32)>, |b, (i, v)| match b {
                Some((_, bv)) if bv >= v => b,
                _ => Some((i, v)),
            })
            .map(|(i, _)| i);
        assert_eq!(w.choose(&c, 0.02), best);
    }

    #[test]
    fn fast_scorer_is_bit_identical_to_generic_path() {
        let w = PolicyWeights::init(12).unwrap();
        let fast = DispatchScorer::from_mlp(&w.dispatch).unwrap();
        for i in 0..50 {
            let n = node((i % 4) as f32, (i % 7) as f32, (i * 3 % 64) as f32);
            let x = n.to_vector();
            assert_eq!(fast.logit(&x), w.dispatch.forward(&x).unwrap()[0]);
        }
        let c: Vec<_> = (0..16)
            .map(|i| node((i % 2) as f32, i as f32, 4.2))
            .collect();
        assert_eq!(fast.choose(&c, 0.02), w.choose(&c, 0.02));
        assert_eq!(fast.choose(&[], 0.02), None);
        assert!(DispatchScorer::from_mlp(&w.quota).is_err());
    }

    #[test]
    fn log_probs_are_normalised_and_masked() {
        let w = PolicyWeights::init(5).unwrap();
        let mut c: Vec<_> = (0..5)
            .map(|i| node(i as f32, 1.0, 4.0 * i as f32))
            .collect();
        c[2].alive = false;
        let total: f32 = (0..5)
            .filter_map(|a| w.dispatch_log_prob(&c, 0.02, a))
            .map(f32::exp)
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert_eq!(w.dispatch_log_prob(&c, 0.02, 2), None);
        assert_eq!(w.dispatch_log_prob(&c, 0.02, 9), None);
        let f = QuotaFeatures::default();
        let mut total = 0.0;
        for cpu in 0..CPU_SHARES.len() {
            for mem in 0..MEM_TIERS_MB.len() {
                for keep_warm in 0..KEEP_WARM.len() {
                    let d = QuotaDecision {
                        cpu,
                        mem,
                        keep_warm,
                    };
                    total += w.quota_log_prob(&f, &d).unwrap().exp();
                }
            }
        }
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        let bad = QuotaDecision {
            cpu: 7,
            mem: 0,
            keep_warm: 0,
        };
        assert!(w.quota_log_prob(&f, &bad).is_err());
    }

    #[test]
    fn checkpoint_round_trip() {
        let w = PolicyWeights::init(9).unwrap();
        let mut meta = BTreeMap::new();
        meta.insert("seed".into(), "9".into());
        let bytes = w.to_safetensors(meta).unwrap();
        let (back, m) = PolicyWeights::from_safetensors(&bytes).unwrap();
        assert_eq!(back, w);
        assert_eq!(m.get("seed").map(String::as_str), Some("9"));
        let q = QuotaFeatures {
            latency_ms: 40.0,
            ..QuotaFeatures::default()
        };
        assert_eq!(
            back.quota_decision(&q).unwrap(),
            w.quota_decision(&q).unwrap()
        );
    }

    #[test]
    fn committed_benchmark_checkpoint_loads_and_serves() {
        // reports/ppo-weights.safetensors is written by policy-bench; it is the starting point
        // the SchedulerAgent can load, so it must keep matching this crate's format.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/reports/ppo-weights.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let (w, meta) = PolicyWeights::from_safetensors(&bytes).unwrap();
        // Chosen among the protocol's seeds on the validation window (see policy-bench.md).
        let seed = meta.get("seed").unwrap();
        assert!(
            meta.get("seeds").unwrap().split(',').any(|s| s == seed),
            "{meta:?}"
        );
        assert!(meta.get("selected_on").unwrap().starts_with("validation"));
        let scorer = DispatchScorer::from_mlp(&w.dispatch).unwrap();
        let mut c = vec![node(0.0, 0.0, 25.0); 4];
        c[2].alive = false;
        let pick = scorer.choose(&c, 0.02).unwrap();
        assert_ne!(pick, 2);
        assert!(w.quota_decision(&QuotaFeatures::default()).is_ok());
        assert!(PolicyWeights::from_safetensors(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn committed_checkpoint_prefers_the_local_node_over_an_identical_remote_one() {
        // The simulator charges a hop RTT for placing a request off its entry node (the `rtt_ms`
        // feature), so two otherwise identical idle warm candidates are not a tie: the local one
        // (rtt 0) must score higher than the remote one (rtt 2 ms), for every node class.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/reports/ppo-weights.safetensors"
        );
        let (w, _) = PolicyWeights::from_safetensors(&std::fs::read(path).unwrap()).unwrap();
        let scorer = DispatchScorer::from_mlp(&w.dispatch).unwrap();
        for (local, remote) in DispatchScorer::hop_probe(2.0) {
            let class = local.class;
            let (l, r) = (
                scorer.logit(&local.to_vector()),
                scorer.logit(&remote.to_vector()),
            );
            assert!(l > r, "class {class}: local {l} vs remote {r}");
            // Remote listed first, so a tie would not pass as a local pick.
            assert_eq!(
                scorer.choose(&[remote, local], 0.02),
                Some(1),
                "class {class}"
            );
        }
    }

    #[test]
    fn quota_rejects_nan_and_decodes_heads() {
        let w = PolicyWeights::init(4).unwrap();
        let bad = QuotaFeatures {
            latency_ms: f32::NAN,
            ..QuotaFeatures::default()
        };
        assert!(w.quota_decision(&bad).is_err());
        let d = QuotaDecision {
            cpu: 2,
            mem: 0,
            keep_warm: 3,
        };
        assert_eq!(d.cpu_share(), 2.0);
        assert_eq!(d.mem_mb(), 128.0);
        assert_eq!(d.keep_warm_count(), 4);
    }
}
