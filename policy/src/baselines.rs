//! Heuristic baselines: the fallbacks the SchedulerAgent ships with and the yardsticks every
//! claim about the learned policy is measured against.

use crate::features::NodeFeatures;
use crate::features::QuotaFeatures;
use crate::guard::{Arm, Guard};
use crate::policy::{DispatchScorer, PolicyWeights, QuotaDecision};
use crate::rng::Rng;

/// What a dispatcher knows about the invocation being placed besides the candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatchCtx {
    /// Stable key of the function (hash of its id), for affinity.
    pub function_key: u64,
    /// Current time, ms (passed in: this crate has no clock).
    pub now_ms: f64,
}

/// A node-selection policy. Candidates must be in a stable order (e.g. by node id) across calls:
/// round-robin and consistent hashing rely on it.
pub trait Dispatcher {
    /// Short name for reports.
    fn name(&self) -> String;
    /// Index of the chosen candidate, or `None` when none is selectable.
    fn dispatch(&mut self, ctx: &DispatchCtx, candidates: &[NodeFeatures]) -> Option<usize>;
    /// Feedback: the request placed by this dispatcher's `decision`-th call (0-based count of
    /// `dispatch` calls) completed with `reward` ([`crate::sim::RewardConfig::reward`]). The
    /// simulator delivers it in completion-time order, before the first decision taken after the
    /// completion. Ignored by default.
    fn on_complete(&mut self, decision: u64, reward: f32) {
        let _ = (decision, reward);
    }
}

/// Cycle through selectable nodes.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: usize,
}

impl Dispatcher for RoundRobin {
    fn name(&self) -> String {
        "round-robin".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        let n = c.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if c[i].selectable() {
                self.next = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }
}

/// Uniformly random selectable node (seeded).
#[derive(Debug, Clone)]
pub struct RandomChoice {
    rng: Rng,
}

impl RandomChoice {
    /// Seeded random dispatcher.
    pub fn new(seed: u64) -> Self {
        RandomChoice {
            rng: Rng::new(seed),
        }
    }
}

impl Dispatcher for RandomChoice {
    fn name(&self) -> String {
        "random".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        let ok: Vec<usize> = (0..c.len()).filter(|&i| c[i].selectable()).collect();
        if ok.is_empty() {
            return None;
        }
        Some(ok[self.rng.below(ok.len())])
    }
}

/// Load of a node in "slots worth of work": busy fraction plus queued per slot.
fn load(c: &NodeFeatures) -> f32 {
    c.cpu_util + c.queue_depth / c.concurrency.max(1.0)
}

/// Least-loaded selectable node (lowest index on ties).
#[derive(Debug, Default, Clone)]
pub struct LeastLoaded;

/// Index of the least-loaded selectable candidate.
pub fn least_loaded(c: &[NodeFeatures]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, n) in c.iter().enumerate() {
        if !n.selectable() {
            continue;
        }
        let l = load(n);
        if best.is_none_or(|(_, b)| l < b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i)
}

impl Dispatcher for LeastLoaded {
    fn name(&self) -> String {
        "least-loaded".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        least_loaded(c)
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Warm affinity: consistent hashing of the function onto a ring of nodes (with virtual nodes),
/// walking the ring past nodes that are not selectable or are saturated (spill-over). If every
/// node is saturated, falls back to least-loaded.
#[derive(Debug, Clone)]
pub struct WarmAffinity {
    ring: Vec<(u64, usize)>,
    nodes: usize,
    vnodes: usize,
    /// A node is saturated when queued requests per slot exceed this.
    pub spill_queue_per_slot: f32,
}

impl WarmAffinity {
    /// `vnodes` virtual points per node on the ring.
    pub fn new(vnodes: usize, spill_queue_per_slot: f32) -> Self {
        WarmAffinity {
            ring: Vec::new(),
            nodes: 0,
            vnodes: vnodes.max(1),
            spill_queue_per_slot,
        }
    }

    fn rebuild(&mut self, n: usize) {
        self.ring = (0..n)
            .flat_map(|i| (0..self.vnodes).map(move |v| (i, v)))
            .map(|(i, v)| (mix64(((i as u64) << 32) ^ v as u64 ^ 0x5EED), i))
            .collect();
        self.ring.sort_unstable();
        self.nodes = n;
    }
}

impl Default for WarmAffinity {
    fn default() -> Self {
        WarmAffinity::new(16, 0.5)
    }
}

impl Dispatcher for WarmAffinity {
    fn name(&self) -> String {
        "warm-affinity".into()
    }
    fn dispatch(&mut self, ctx: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        if c.is_empty() {
            return None;
        }
        if self.nodes != c.len() {
            self.rebuild(c.len());
        }
        let h = mix64(ctx.function_key);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let mut seen = vec![false; c.len()];
        for k in 0..self.ring.len() {
            let (_, i) = self.ring[(start + k) % self.ring.len()];
            if seen[i] {
                continue;
            }
            seen[i] = true;
            let n = &c[i];
            if n.selectable() && n.queue_depth / n.concurrency.max(1.0) <= self.spill_queue_per_slot
            {
                return Some(i);
            }
        }
        least_loaded(c)
    }
}

/// The learned dispatch policy at serving time (argmax of Eq. 1 over the plain-Rust forward pass).
#[derive(Debug, Clone)]
pub struct LearnedDispatch {
    scorer: DispatchScorer,
    /// Cold-start penalty weight λ of Eq. 1 (logits per ms).
    pub lambda: f32,
}

impl LearnedDispatch {
    /// Serving dispatcher from exported weights.
    pub fn new(weights: &PolicyWeights, lambda: f32) -> crate::error::Result<Self> {
        Ok(LearnedDispatch {
            scorer: DispatchScorer::from_mlp(&weights.dispatch)?,
            lambda,
        })
    }
}

impl Dispatcher for LearnedDispatch {
    fn name(&self) -> String {
        "ppo".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        self.scorer.choose(c, self.lambda)
    }
}

/// A deliberately bad dispatcher for testing the guard: the *lowest* Eq. 1 score among
/// selectable candidates (the learned policy's scores inverted).
#[derive(Debug, Clone)]
pub struct InvertedDispatch {
    scorer: DispatchScorer,
    /// Cold-start penalty weight λ of Eq. 1.
    pub lambda: f32,
}

impl InvertedDispatch {
    /// Inverted dispatcher from exported weights.
    pub fn new(weights: &PolicyWeights, lambda: f32) -> crate::error::Result<Self> {
        Ok(InvertedDispatch {
            scorer: DispatchScorer::from_mlp(&weights.dispatch)?,
            lambda,
        })
    }
}

impl Dispatcher for InvertedDispatch {
    fn name(&self) -> String {
        "inverted ppo".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        let mut worst: Option<(usize, f32)> = None;
        for (i, n) in c.iter().enumerate() {
            if !n.selectable() {
                continue;
            }
            let s = self.scorer.logit(&n.to_vector()) - self.lambda * n.expected_cold_ms;
            if s.is_finite() && worst.is_none_or(|(_, w)| s < w) {
                worst = Some((i, s));
            }
        }
        worst.map(|(i, _)| i)
    }
}

/// The learned dispatcher behind the rolling-reward [`Guard`]: each decision asks the guard
/// which arm serves it, and each completed request's reward goes back to the guard under the
/// arm that placed it. The guard (see [`Guard`]) keeps the learned arm in charge while its
/// rolling mean reward is within a margin of the heuristic's, and probes the other arm with a
/// fixed share of decisions.
pub struct GuardedDispatch {
    learned: Box<dyn Dispatcher>,
    heuristic: Box<dyn Dispatcher>,
    guard: Guard,
    /// Arm of each decision whose request has not completed yet.
    pending: std::collections::BTreeMap<u64, Arm>,
    seq: u64,
    served: [u64; 2],
    switches: u64,
    last_in_charge: Arm,
}

impl std::fmt::Debug for GuardedDispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedDispatch")
            .field("learned", &self.learned.name())
            .field("heuristic", &self.heuristic.name())
            .field("guard", &self.guard)
            .field("served", &self.served)
            .field("switches", &self.switches)
            .finish()
    }
}

impl GuardedDispatch {
    /// Guard `learned` with `heuristic` as the fallback.
    pub fn new(learned: Box<dyn Dispatcher>, heuristic: Box<dyn Dispatcher>, guard: Guard) -> Self {
        let last_in_charge = guard.in_charge();
        GuardedDispatch {
            learned,
            heuristic,
            guard,
            pending: std::collections::BTreeMap::new(),
            seq: 0,
            served: [0; 2],
            switches: 0,
            last_in_charge,
        }
    }

    /// The guard settings the simulator benchmark uses: a 1,000-reward window per arm, a margin
    /// of 0.02 reward units (2 ms-equivalent) and every 20th decision probing the other arm.
    pub fn default_guard() -> Guard {
        Guard::new(1000, 0.02, 20)
    }

    /// Decisions served by the learned arm and by the heuristic arm.
    pub fn served(&self) -> (u64, u64) {
        (self.served[0], self.served[1])
    }

    /// Share of decisions served by the learned arm (0 before any decision).
    pub fn learned_share(&self) -> f64 {
        let total = self.served[0] + self.served[1];
        if total == 0 {
            0.0
        } else {
            self.served[0] as f64 / total as f64
        }
    }

    /// How many times the arm in charge changed.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The arm currently in charge.
    pub fn in_charge(&self) -> Arm {
        self.guard.in_charge()
    }
}

impl Dispatcher for GuardedDispatch {
    fn name(&self) -> String {
        format!(
            "{} + guard (fallback: {})",
            self.learned.name(),
            self.heuristic.name()
        )
    }
    fn dispatch(&mut self, ctx: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        let seq = self.seq;
        self.seq += 1;
        let arm = self.guard.next_arm();
        let choice = match arm {
            Arm::Learned => {
                self.served[0] += 1;
                self.learned.dispatch(ctx, c)
            }
            Arm::Heuristic => {
                self.served[1] += 1;
                self.heuristic.dispatch(ctx, c)
            }
        };
        self.pending.insert(seq, arm);
        choice
    }
    fn on_complete(&mut self, decision: u64, reward: f32) {
        if let Some(arm) = self.pending.remove(&decision) {
            self.guard.record(arm, reward);
            let now = self.guard.in_charge();
            if now != self.last_in_charge {
                self.switches += 1;
                self.last_in_charge = now;
            }
        }
    }
}

/// Per-function resource decision for the next interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaAction {
    /// CPU share / memory tier / keep-warm count.
    pub decision: QuotaDecision,
    /// How long an idle instance is kept before it is reclaimed, ms.
    pub keep_alive_ms: f64,
}

/// A quota-side policy: decides per function each interval.
pub trait QuotaPolicy {
    /// Short name for reports.
    fn name(&self) -> String;
    /// Decide for one function. `idle_hist` is the function's idle-time histogram (1-minute bins).
    fn decide(&mut self, f: &QuotaFeatures, idle_hist: &IdleHistogram) -> QuotaAction;
}

/// A fixed decision for every function; the default is the provider default: 1 core, 256 MiB,
/// no pre-warming, 10-minute keep-alive.
#[derive(Debug, Clone)]
pub struct FixedQuota {
    /// Keep-alive, ms.
    pub keep_alive_ms: f64,
    /// Decision applied to every function.
    pub decision: QuotaDecision,
}

impl Default for FixedQuota {
    fn default() -> Self {
        FixedQuota {
            keep_alive_ms: 10.0 * 60_000.0,
            decision: DEFAULT_DECISION,
        }
    }
}

/// The default decision (1 core, 256 MiB, keep-warm 0).
pub const DEFAULT_DECISION: QuotaDecision = QuotaDecision {
    cpu: 1,
    mem: 1,
    keep_warm: 0,
};

impl QuotaPolicy for FixedQuota {
    fn name(&self) -> String {
        "fixed".into()
    }
    fn decide(&mut self, _: &QuotaFeatures, _: &IdleHistogram) -> QuotaAction {
        QuotaAction {
            decision: self.decision,
            keep_alive_ms: self.keep_alive_ms,
        }
    }
}

/// Idle-time histogram of one function: minute bins up to `bins` minutes, plus an overflow count.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleHistogram {
    /// Counts per 1-minute bin.
    pub counts: Vec<u32>,
    /// Idle times beyond the last bin.
    pub overflow: u32,
}

impl IdleHistogram {
    /// Empty histogram with `bins` one-minute bins.
    pub fn new(bins: usize) -> Self {
        IdleHistogram {
            counts: vec![0; bins.max(1)],
            overflow: 0,
        }
    }

    /// Record one idle time (ms). Negative or non-finite values are ignored.
    pub fn record(&mut self, idle_ms: f64) {
        if !idle_ms.is_finite() || idle_ms < 0.0 {
            return;
        }
        let bin = (idle_ms / 60_000.0) as usize;
        match self.counts.get_mut(bin) {
            Some(c) => *c += 1,
            None => self.overflow += 1,
        }
    }

    /// Total samples.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum::<u32>() + self.overflow
    }

    /// Upper edge (minutes) of the bin holding quantile `q`; `None` if empty or if the quantile
    /// falls in the overflow.
    pub fn quantile_minutes(&self, q: f64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let target = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u32;
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            if acc >= target {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Histogram keep-alive (Shahrad et al., ATC '20, simplified): keep an idle instance until the
/// 99th percentile of the function's observed idle times (+10 % margin); fall back to the fixed
/// window while there are too few samples or idle times overflow the histogram.
#[derive(Debug, Clone)]
pub struct HistogramKeepAlive {
    /// Samples needed before the histogram is trusted.
    pub min_samples: u32,
    /// Window used before that, ms.
    pub default_keep_alive_ms: f64,
}

impl Default for HistogramKeepAlive {
    fn default() -> Self {
        HistogramKeepAlive {
            min_samples: 5,
            default_keep_alive_ms: 10.0 * 60_000.0,
        }
    }
}

impl QuotaPolicy for HistogramKeepAlive {
    fn name(&self) -> String {
        "histogram-keepalive".into()
    }
    fn decide(&mut self, _: &QuotaFeatures, h: &IdleHistogram) -> QuotaAction {
        let keep_alive_ms = if h.total() < self.min_samples {
            self.default_keep_alive_ms
        } else {
            match h.quantile_minutes(0.99) {
                Some(m) => m as f64 * 60_000.0 * 1.1,
                None => self.default_keep_alive_ms,
            }
        };
        QuotaAction {
            decision: DEFAULT_DECISION,
            keep_alive_ms,
        }
    }
}

/// The learned quota network at serving time (argmax of each head) with a fixed keep-alive.
#[derive(Debug, Clone)]
pub struct LearnedQuota {
    /// Exported weights.
    pub weights: PolicyWeights,
    /// Keep-alive, ms.
    pub keep_alive_ms: f64,
}

impl QuotaPolicy for LearnedQuota {
    fn name(&self) -> String {
        "ppo-quota".into()
    }
    fn decide(&mut self, f: &QuotaFeatures, _: &IdleHistogram) -> QuotaAction {
        QuotaAction {
            decision: self.weights.quota_decision(f).unwrap_or(DEFAULT_DECISION),
            keep_alive_ms: self.keep_alive_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nodes(n: usize) -> Vec<NodeFeatures> {
        (0..n)
            .map(|_| NodeFeatures {
                concurrency: 4.0,
                ..NodeFeatures::default()
            })
            .collect()
    }
    const CTX: DispatchCtx = DispatchCtx {
        function_key: 77,
        now_ms: 0.0,
    };

    #[test]
    fn round_robin_cycles_and_skips_masked() {
        let mut c = nodes(3);
        c[1].alive = false;
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..4).map(|_| rr.dispatch(&CTX, &c).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        assert_eq!(rr.dispatch(&CTX, &[]), None);
    }

    #[test]
    fn random_is_seeded_and_masked() {
        let mut c = nodes(5);
        c[0].has_capacity = false;
        let a: Vec<_> = {
            let mut r = RandomChoice::new(5);
            (0..50).map(|_| r.dispatch(&CTX, &c).unwrap()).collect()
        };
        let b: Vec<_> = {
            let mut r = RandomChoice::new(5);
            (0..50).map(|_| r.dispatch(&CTX, &c).unwrap()).collect()
        };
        assert_eq!(a, b);
        assert!(!a.contains(&0));
    }

    #[test]
    fn least_loaded_picks_min_load() {
        let mut c = nodes(3);
        c[0].cpu_util = 0.5;
        c[1].cpu_util = 0.25;
        c[2].cpu_util = 0.0;
        c[2].queue_depth = 4.0;
        assert_eq!(LeastLoaded.dispatch(&CTX, &c), Some(1));
        c[1].alive = false;
        assert_eq!(LeastLoaded.dispatch(&CTX, &c), Some(0));
    }

    #[test]
    fn warm_affinity_is_sticky_then_spills() {
        let mut c = nodes(8);
        let mut wa = WarmAffinity::default();
        let home = wa.dispatch(&CTX, &c).unwrap();
        for _ in 0..5 {
            assert_eq!(wa.dispatch(&CTX, &c), Some(home));
        }
        // Different functions spread over several nodes.
        let homes: std::collections::BTreeSet<_> = (0..64)
            .map(|k| {
                wa.dispatch(
                    &DispatchCtx {
                        function_key: k,
                        now_ms: 0.0,
                    },
                    &c,
                )
                .unwrap()
            })
            .collect();
        assert!(homes.len() >= 4, "{homes:?}");
        c[home].queue_depth = 10.0;
        let spill = wa.dispatch(&CTX, &c).unwrap();
        assert_ne!(spill, home);
        c[home].queue_depth = 0.0;
        c[home].alive = false;
        assert_eq!(wa.dispatch(&CTX, &c), Some(spill));
    }

    #[test]
    fn histogram_keepalive_tracks_p99() {
        let mut h = IdleHistogram::new(240);
        let mut p = HistogramKeepAlive::default();
        let f = QuotaFeatures::default();
        assert_eq!(p.decide(&f, &h).keep_alive_ms, 600_000.0);
        for _ in 0..100 {
            h.record(90_000.0); // 1.5 min → bin 1
        }
        let ka = p.decide(&f, &h).keep_alive_ms;
        assert!((ka - 2.0 * 60_000.0 * 1.1).abs() < 1e-6, "{ka}");
        h.record(f64::NAN);
        assert_eq!(h.total(), 100);
        for _ in 0..10 {
            h.record(1e9);
        }
        assert_eq!(h.quantile_minutes(0.99), None);
        assert_eq!(p.decide(&f, &h).keep_alive_ms, 600_000.0);
    }
}
