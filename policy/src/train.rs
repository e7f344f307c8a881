//! Training the two networks in the simulator on trace windows, and evaluating policies.

use crate::baselines::{Dispatcher, LearnedDispatch, LearnedQuota, QuotaPolicy};
use crate::error::Result;
use crate::policy::PolicyWeights;
use crate::ppo::{Backend, PpoConfig, SamplingDispatch, SamplingQuota, UpdateStats, ppo_update};
use crate::rng::Rng;
use crate::sim::{FunctionSpec, SimConfig, SimReport, Simulator, Summary};
use crate::trace::Trace;

/// Training run configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// PPO updates.
    pub iterations: usize,
    /// Minutes of trace per rollout episode.
    pub window_minutes: usize,
    /// Trace minutes episodes are drawn from: `[train_from, train_to)`.
    pub train_from: usize,
    /// End of the training range (exclusive).
    pub train_to: usize,
    /// Each trace invocation is replayed this many times.
    pub scale: u32,
    /// Max transitions of each kind per update.
    pub max_samples: usize,
    /// Keep-alive applied by the learned quota side, ms.
    pub keep_alive_ms: f64,
    /// Train the quota network too (otherwise the default quota is used in rollouts).
    pub train_quota: bool,
    /// Seed for everything (episode choice, sampling, shuffling, init).
    pub seed: u64,
    /// PPO hyper-parameters.
    pub ppo: PpoConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            iterations: 30,
            window_minutes: 20,
            train_from: 0,
            train_to: 480,
            scale: 10,
            max_samples: 16_384,
            keep_alive_ms: 600_000.0,
            train_quota: true,
            seed: 1,
            ppo: PpoConfig::default(),
        }
    }
}

/// One point of the learning curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterLog {
    /// Iteration number (0-based).
    pub iteration: usize,
    /// First trace minute of the episode.
    pub window_start: usize,
    /// Summary of the (sampling) rollout episode.
    pub rollout: Summary,
    /// Mean quota reward of the episode.
    pub quota_reward: f64,
    /// Losses of the update.
    pub update: UpdateStats,
}

/// Everything needed to build a simulator for a trace.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The trace.
    pub trace: Trace,
    /// Function specs (one per trace function).
    pub functions: Vec<FunctionSpec>,
    /// Cluster and reward config.
    pub sim: SimConfig,
}

impl Scenario {
    /// Run one window with the given policies.
    pub fn run(
        &self,
        from: usize,
        to: usize,
        scale: u32,
        seed: u64,
        d: &mut dyn Dispatcher,
        q: &mut dyn QuotaPolicy,
    ) -> SimReport {
        let arrivals = self.trace.arrivals(from, to, scale, seed);
        let mut cfg = self.sim.clone();
        cfg.seed = seed;
        let mut sim = Simulator::new(cfg, self.functions.clone());
        sim.run(&arrivals, d, q)
    }
}

/// Train both networks with PPO from `init`, calling `log` after every update. Deterministic for
/// a given config, scenario and backend.
pub fn train(
    backend: &mut dyn Backend,
    scenario: &Scenario,
    cfg: &TrainConfig,
    init: &PolicyWeights,
    mut log: impl FnMut(&IterLog, &PolicyWeights),
) -> Result<PolicyWeights> {
    backend.load(init)?;
    let mut weights = init.clone();
    let mut rng = Rng::new(cfg.seed);
    let span = cfg
        .train_to
        .saturating_sub(cfg.train_from)
        .saturating_sub(cfg.window_minutes)
        .max(1);
    for it in 0..cfg.iterations {
        let start = cfg.train_from + rng.below(span);
        let ep_seed = rng.next_u64();
        let mut d = SamplingDispatch::new(weights.clone(), cfg.ppo.lambda_dispatch, ep_seed ^ 1);
        let mut q_sample = SamplingQuota::new(weights.clone(), cfg.keep_alive_ms, ep_seed ^ 2);
        let mut q_fixed = LearnedQuota {
            weights: weights.clone(),
            keep_alive_ms: cfg.keep_alive_ms,
        };
        let report = if cfg.train_quota {
            scenario.run(
                start,
                start + cfg.window_minutes,
                cfg.scale,
                ep_seed,
                &mut d,
                &mut q_sample,
            )
        } else {
            // Dispatch-only training: quota side fixed to its current greedy decisions.
            scenario.run(
                start,
                start + cfg.window_minutes,
                cfg.scale,
                ep_seed,
                &mut d,
                &mut q_fixed,
            )
        };
        let dro = d.finish(&report.dispatch_rewards)?;
        let qro = if cfg.train_quota {
            q_sample.finish(&report.quota_rewards)?
        } else {
            Default::default()
        };
        let quota_reward = qro.rewards.iter().map(|&x| x as f64).sum::<f64>()
            / (qro.rewards.len() as f64).max(1.0);
        let update = ppo_update(backend, &dro, &qro, &cfg.ppo, cfg.max_samples, &mut rng)?;
        weights = backend.export()?;
        log(
            &IterLog {
                iteration: it,
                window_start: start,
                rollout: report.summary(),
                quota_reward,
                update,
            },
            &weights,
        );
    }
    Ok(weights)
}

/// Greedy evaluation of learned weights (dispatch, and quota if `learned_quota`).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_learned(
    scenario: &Scenario,
    w: &PolicyWeights,
    lambda: f32,
    learned_quota: Option<f64>,
    from: usize,
    to: usize,
    scale: u32,
    seed: u64,
) -> Result<SimReport> {
    let mut d = LearnedDispatch::new(w, lambda)?;
    match learned_quota {
        Some(keep_alive_ms) => {
            let mut q = LearnedQuota {
                weights: w.clone(),
                keep_alive_ms,
            };
            Ok(scenario.run(from, to, scale, seed, &mut d, &mut q))
        }
        None => {
            let mut q = crate::baselines::FixedQuota::default();
            Ok(scenario.run(from, to, scale, seed, &mut d, &mut q))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::candle_backend::CandleBackend;
    use crate::sim::make_functions;

    fn scenario() -> Scenario {
        // 12 functions, 6 minutes, a few invocations per minute each.
        let mut text = String::new();
        for f in 0..12 {
            let counts: Vec<String> = (0..6).map(|m| ((f * 7 + m * 3) % 9).to_string()).collect();
            text.push_str(&format!("o{},a,f{f},http,{}\n", f % 3, counts.join(",")));
        }
        let trace = Trace::parse(&text).unwrap();
        let (_, tenant_of) = trace.tenants();
        Scenario {
            functions: make_functions(12, &tenant_of, 4),
            trace,
            sim: SimConfig::heterogeneous(4),
        }
    }

    fn run(seed: u64) -> (PolicyWeights, Vec<f64>) {
        let sc = scenario();
        let cfg = TrainConfig {
            iterations: 2,
            window_minutes: 3,
            train_from: 0,
            train_to: 6,
            scale: 5,
            seed,
            ppo: PpoConfig {
                minibatch: 64,
                ..PpoConfig::default()
            },
            ..TrainConfig::default()
        };
        let init = PolicyWeights::init(seed).unwrap();
        let mut be = CandleBackend::new(&init).unwrap();
        let mut rewards = Vec::new();
        let w = train(&mut be, &sc, &cfg, &init, |l, _| {
            rewards.push(l.rollout.mean_reward)
        })
        .unwrap();
        (w, rewards)
    }

    #[test]
    fn training_in_the_simulator_is_deterministic() {
        let (w1, r1) = run(3);
        let (w2, r2) = run(3);
        assert_eq!(r1.len(), 2);
        assert_eq!(r1, r2);
        assert_eq!(w1, w2, "same seed → bit-identical weights after training");
        let (w3, _) = run(4);
        assert_ne!(w1, w3);
        // The result is usable by the serving path.
        let rep = evaluate_learned(&scenario(), &w1, 0.02, Some(600_000.0), 0, 6, 5, 1).unwrap();
        assert!(!rep.latencies_ms.is_empty());
    }
}
