//! The benchmark protocol: which policies run, on which windows and seeds, how PPO is trained
//! and its weights selected, and the cross-seed choice of the committed checkpoint. It returns
//! [`BenchData`] and the committed weights; it writes no file and prints nothing. Time and
//! progress go through a [`Host`] the caller supplies, so the library reads no clock.

use super::data::{
    BenchData, Cluster, CrossRow, CurvePoint, GuardSetup, GuardStats, LastIteration, PolicyRow,
    SeedResult, Selection, Setup, Span, Synthetic, SyntheticRow, ValidationRef,
};
use super::{
    INITIAL, INVERTED, LEAST_LOADED, LEAST_LOADED_2_CORES, PPO, PPO_FIXED, PPO_GUARD,
    WARM_AFFINITY, WARM_AFFINITY_2_CORES, WARM_AFFINITY_HISTOGRAM, bad_alone, bad_guarded,
};
use crate::baselines::{
    Dispatcher, FixedQuota, GuardedDispatch, HistogramKeepAlive, InvertedDispatch, LearnedDispatch,
    LearnedQuota, LeastLoaded, QuotaPolicy, RandomChoice, RoundRobin, WarmAffinity,
};
use crate::candle_backend::CandleBackend;
use crate::error::{PolicyError, Result};
use crate::policy::{DispatchScorer, PolicyWeights, QuotaDecision};
use crate::sim::{Calibration, SimConfig, Simulator, make_functions};
use crate::trace::{Profile, Trace, synthetic};
use crate::train::{Scenario, TrainConfig, evaluate_learned, train};
use serde::{Deserialize, Serialize};

/// The pre-registered seeds: every one is trained, evaluated and reported.
pub const PROTOCOL_SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

/// Arrival seed of every evaluation (validation and test): the same arrivals for every seed.
pub const EVAL_SEED: u64 = 0xE7A1;

/// Training episodes are drawn from trace minutes `[0, TRAIN_TO)`.
const TRAIN_TO: usize = 420;

/// Target (1): PPO's test p99 at least this many percent below least-loaded's.
const TARGET_P99_CUT_PCT: f64 = 25.0;

/// A hop an order of magnitude above the simulated one: does the preference for the entry node
/// hold when forwarding is clearly expensive?
const FAR_HOP_RTT_MS: f32 = 2.0;

/// Functions of the synthetic profiles (Zipf popularity over the first specs of a seed).
const SYNTHETIC_FUNCTIONS: usize = 100;

/// What to run. `--quick` caps and the default seeds are applied by [`Options::resolved`]; the
/// report records the resolved options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// PPO iterations per seed.
    pub iterations: usize,
    /// Each trace invocation is replayed this many times.
    pub scale: u32,
    /// Minutes of trace per training episode.
    pub window: usize,
    /// Seeds to run; empty = the pre-registered ones (one with `quick`).
    pub seeds: Vec<u64>,
    /// Short windows and few iterations: a smoke run, not a result.
    pub quick: bool,
    /// Constants measured on real nodes for the simulated cluster (`None`: the assumed
    /// classes).
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// The file the calibration was read from, as given on the command line (for the report's
    /// command).
    #[serde(default)]
    pub calibration_file: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            iterations: 40,
            scale: 10,
            window: 20,
            seeds: Vec::new(),
            quick: false,
            calibration: None,
            calibration_file: None,
        }
    }
}

impl Options {
    /// The options the protocol actually runs: with `quick`, at most 3 iterations of 5-minute
    /// episodes; no seeds = [`PROTOCOL_SEEDS`] (seed 1 alone with `quick`).
    pub fn resolved(&self) -> Options {
        let mut o = self.clone();
        if o.quick {
            o.iterations = o.iterations.min(3);
            o.window = o.window.min(5);
        }
        if o.seeds.is_empty() {
            o.seeds = if o.quick {
                vec![1]
            } else {
                PROTOCOL_SEEDS.to_vec()
            };
        }
        o
    }

    /// The seeds as `1,2,3`.
    pub fn seeds_csv(&self) -> String {
        self.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the protocol needs from its caller: a clock for the wall times it reports, and a sink
/// for progress lines (the binary prints them on stderr).
pub trait Host {
    /// Seconds since an arbitrary fixed origin; must not go backwards.
    fn now_s(&self) -> f64;
    /// One line of progress for a human watching the run.
    fn progress(&mut self, line: &str);
}

/// The protocol's result: the data for the report, and the committed weights (not part of the
/// data: they are written as their own checkpoint file).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every number the report needs.
    pub data: BenchData,
    /// The committed seed's selected weights.
    pub weights: PolicyWeights,
}

/// Run the protocol on `trace` (the Azure 2019 layout; at least 720 minutes for a full run, and
/// at least 100 functions for the synthetic profiles).
pub fn run(options: &Options, trace: &Trace, host: &mut dyn Host) -> Result<Outcome> {
    let options = options.resolved();
    let mut sorted = options.seeds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != options.seeds.len() {
        return Err(PolicyError::InvalidInput("seeds: duplicate seed".into()));
    }
    // A bad calibration is refused before anything is trained.
    if let Some(cal) = &options.calibration {
        cal.validate()?;
    }
    // Train on minutes [0, 420), validate on [420, 450), test on [480, 720).
    let windows = Windows {
        train: Span {
            from: 0,
            to: TRAIN_TO,
        },
        val: Span {
            from: 420,
            to: if options.quick { 425 } else { 450 },
        },
        test: Span {
            from: 480,
            to: if options.quick { 490 } else { 720 },
        },
    };
    let defaults = TrainConfig::default();
    let lambda = defaults.ppo.lambda_dispatch;
    let keep_alive_ms = defaults.keep_alive_ms;

    let t_all = host.now_s();
    let mut runs = Vec::new();
    for &seed in &options.seeds {
        runs.push(run_seed(&options, trace, seed, windows, host)?);
    }

    // Checkpoint selection (pre-registered, validation only): every seed's selected weights are
    // scored on every seed's validation scenario; the highest mean validation reward wins, the
    // lowest seed on ties.
    let mut cross = Vec::new();
    for r in &runs {
        let mut per_seed = Vec::new();
        for s in &runs {
            let v = evaluate_learned(
                &s.scenario,
                &r.chosen,
                lambda,
                Some(keep_alive_ms),
                windows.val.from,
                windows.val.to,
                options.scale,
                EVAL_SEED,
            )?;
            per_seed.push(v.summary().mean_reward);
        }
        let mean = per_seed.iter().sum::<f64>() / per_seed.len().max(1) as f64;
        cross.push(CrossRow {
            seed: r.result.seed,
            per_seed,
            mean,
        });
    }
    let sel_idx = cross
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
        .ok_or_else(|| PolicyError::InvalidInput("no seeds".into()))?;
    let sel = &runs[sel_idx];
    host.progress(&format!(
        "checkpoint: seed {} (cross-seed validation reward {:.4})",
        sel.result.seed, cross[sel_idx].mean
    ));

    // Synthetic profiles (paper's steady/burst/3,000 concurrent), short, selected checkpoint, on
    // the selected seed's function specs.
    let profiles = [
        ("steady 200 req/s", Profile::Steady { rps: 200.0 }),
        (
            "bursts 500–1,000 req/s",
            Profile::Bursty {
                base_rps: 200.0,
                burst_lo: 500.0,
                burst_hi: 1000.0,
                burst_s: 10.0,
                period_s: 30.0,
            },
        ),
        (
            "3,000 concurrent",
            Profile::Concurrent {
                tasks: 3000,
                spread_ms: 200.0,
                period_s: 20.0,
            },
        ),
    ];
    let synth_s = if options.quick { 20.0 } else { 120.0 };
    let synth_functions = sel
        .scenario
        .functions
        .get(..SYNTHETIC_FUNCTIONS)
        .ok_or_else(|| {
            PolicyError::InvalidInput(format!(
                "the synthetic profiles need {SYNTHETIC_FUNCTIONS} functions, the trace has {}",
                sel.scenario.functions.len()
            ))
        })?;
    let mut synth_rows = Vec::new();
    for (name, profile) in profiles {
        let arr = synthetic(profile, SYNTHETIC_FUNCTIONS, synth_s, EVAL_SEED);
        let run = |d: &mut dyn Dispatcher, q: &mut dyn QuotaPolicy| {
            let mut sim = Simulator::new(sel.scenario.sim.clone(), synth_functions.to_vec());
            sim.run(&arr, d, q).summary()
        };
        let least_loaded = run(&mut LeastLoaded, &mut FixedQuota::default());
        let warm_affinity = run(&mut WarmAffinity::default(), &mut FixedQuota::default());
        let ppo = run(
            &mut LearnedDispatch::new(&sel.chosen, lambda)?,
            &mut LearnedQuota {
                weights: sel.chosen.clone(),
                keep_alive_ms,
            },
        );
        let warm_affinity_2_cores = run(&mut WarmAffinity::default(), &mut fixed(2, 1, 1));
        synth_rows.push(SyntheticRow {
            name: name.to_string(),
            profile,
            requests: arr.len(),
            least_loaded,
            warm_affinity,
            warm_affinity_2_cores,
            ppo,
        });
    }
    let total_s = host.now_s() - t_all;

    let guard = GuardedDispatch::default_guard();
    let setup = Setup {
        train: windows.train,
        validation: windows.val,
        test: windows.test,
        eval_seed: EVAL_SEED,
        lambda_dispatch: lambda,
        cluster: Cluster::of(
            &sel.scenario.sim,
            options.calibration.as_ref().map(|c| c.source.clone()),
        ),
        guard: GuardSetup {
            window: guard.window(),
            margin: guard.margin(),
            probe_every: guard.probe_every(),
            min_between_switches: guard.min_between_switches(),
        },
        target_p99_cut_pct: TARGET_P99_CUT_PCT,
        hop_probe_rtts_ms: hop_probe_rtts(&sel.scenario.sim),
        options,
    };
    let selection = Selection {
        cross,
        committed_seed: sel.result.seed,
        committed_iteration: sel.result.chosen_iteration,
    };
    let weights = sel.chosen.clone();
    Ok(Outcome {
        data: BenchData {
            setup,
            seeds: runs.into_iter().map(|r| r.result).collect(),
            selection,
            synthetic: Synthetic {
                duration_s: synth_s,
                functions: SYNTHETIC_FUNCTIONS,
                rows: synth_rows,
            },
            total_s,
        },
        weights,
    })
}

/// Fixed windows of the protocol.
#[derive(Clone, Copy)]
struct Windows {
    train: Span,
    val: Span,
    test: Span,
}

/// The simulated hop, and [`FAR_HOP_RTT_MS`].
fn hop_probe_rtts(sim: &SimConfig) -> [f32; 2] {
    [sim.hop_rtt_ms as f32, FAR_HOP_RTT_MS]
}

/// One seed's run: its report data, and what the cross-seed steps still need.
struct SeedRun {
    result: SeedResult,
    scenario: Scenario,
    /// Weights selected on this seed's validation window.
    chosen: PolicyWeights,
}

/// Seed `seed`'s scenario: the heterogeneous cluster, with `calibration`'s measured constants
/// when there is one.
fn scenario_for(trace: &Trace, seed: u64, calibration: Option<&Calibration>) -> Result<Scenario> {
    let (_, tenant_of) = trace.tenants();
    Ok(Scenario {
        functions: make_functions(trace.functions.len(), &tenant_of, seed),
        trace: trace.clone(),
        sim: match calibration {
            Some(cal) => SimConfig::calibrated(seed, cal)?,
            None => SimConfig::heterogeneous(seed),
        },
    })
}

fn fixed(cpu: usize, mem: usize, keep_warm: usize) -> FixedQuota {
    FixedQuota {
        decision: QuotaDecision {
            cpu,
            mem,
            keep_warm,
        },
        ..FixedQuota::default()
    }
}

/// A heuristic configuration: dispatcher, quota policy, report name.
type Baseline = (Box<dyn Dispatcher>, Box<dyn QuotaPolicy>, &'static str);

fn baselines(seed: u64) -> Vec<Baseline> {
    vec![
        (
            Box::new(RoundRobin::default()),
            Box::new(FixedQuota::default()),
            "round-robin",
        ),
        (
            Box::new(RandomChoice::new(seed)),
            Box::new(FixedQuota::default()),
            "random",
        ),
        (
            Box::new(LeastLoaded),
            Box::new(FixedQuota::default()),
            LEAST_LOADED,
        ),
        (
            Box::new(WarmAffinity::default()),
            Box::new(FixedQuota::default()),
            WARM_AFFINITY,
        ),
        (
            Box::new(WarmAffinity::default()),
            Box::new(HistogramKeepAlive::default()),
            WARM_AFFINITY_HISTOGRAM,
        ),
        // The learned quota side mostly buys latency with CPU share: give the best heuristic
        // the same resources so the comparison is not only "more cores vs fewer".
        (
            Box::new(WarmAffinity::default()),
            Box::new(fixed(2, 1, 1)),
            WARM_AFFINITY_2_CORES,
        ),
        (
            Box::new(LeastLoaded),
            Box::new(fixed(2, 1, 1)),
            LEAST_LOADED_2_CORES,
        ),
    ]
}

/// How a dispatcher runs in one of the guard experiments.
enum Guarding {
    /// On its own.
    Alone(Box<dyn Dispatcher>),
    /// Behind the rolling-reward guard, warm affinity as the fallback.
    Guarded(Box<dyn Dispatcher>),
}

fn run_seed(
    options: &Options,
    trace: &Trace,
    seed: u64,
    w: Windows,
    host: &mut dyn Host,
) -> Result<SeedRun> {
    let scenario = scenario_for(trace, seed, options.calibration.as_ref())?;
    let cfg = TrainConfig {
        iterations: options.iterations,
        window_minutes: options.window,
        train_from: w.train.from,
        train_to: w.train.to,
        scale: options.scale,
        seed,
        ..TrainConfig::default()
    };
    let scale = options.scale;
    let lambda = cfg.ppo.lambda_dispatch;
    let keep = Some(cfg.keep_alive_ms);
    let (val_from, val_to) = (w.val.from, w.val.to);
    let (test_from, test_to) = (w.test.from, w.test.to);

    // Baselines on the test window.
    let mut rows = Vec::new();
    let mut validation_refs = Vec::new();
    for (mut d, mut q, name) in baselines(seed) {
        let t0 = host.now_s();
        let rep = scenario.run(test_from, test_to, scale, EVAL_SEED, d.as_mut(), q.as_mut());
        let wall_s = host.now_s() - t0;
        host.progress(&format!(
            "seed {seed} {name}: p99 {:.1} ms ({:.2} s, {:.0} sim-s/wall-s)",
            rep.summary().p99_ms,
            wall_s,
            rep.sim_ms / 1000.0 / wall_s
        ));
        rows.push(PolicyRow {
            name: name.to_string(),
            stats: rep.summary(),
            wall_s,
            guard: None,
        });
        if name == LEAST_LOADED || name == WARM_AFFINITY {
            let v = scenario.run(val_from, val_to, scale, EVAL_SEED, d.as_mut(), q.as_mut());
            validation_refs.push(ValidationRef {
                policy: name.to_string(),
                p99_ms: v.summary().p99_ms,
            });
        }
    }

    // PPO training; model selection on the validation window only (never on the test window).
    let init = PolicyWeights::init(seed)?;
    let mut backend = CandleBackend::new(&init)?;
    let mut curve = Vec::new();
    let mut last_iteration = None;
    let mut best: Option<(f64, usize, PolicyWeights)> = None;
    let t_train = host.now_s();
    let v0 = evaluate_learned(
        &scenario, &init, lambda, keep, val_from, val_to, scale, EVAL_SEED,
    )?;
    curve.push(CurvePoint {
        iteration: 0,
        p99_ms: v0.summary().p99_ms,
        mean_reward: v0.summary().mean_reward,
    });
    let mut eval_err = None;
    let trained = train(&mut backend, &scenario, &cfg, &init, |l, wts| {
        let v = match evaluate_learned(
            &scenario, wts, lambda, keep, val_from, val_to, scale, EVAL_SEED,
        ) {
            Ok(v) => v,
            Err(e) => {
                eval_err = Some(e);
                return;
            }
        };
        let vs = v.summary();
        host.progress(&format!(
            "seed {seed} iter {:>3} window@{:>3} rollout p99 {:>7.1} reward {:>7.3} | val p99 {:>7.1} mean {:>6.1} cold {:>5.2}% | pg {:+.4} v {:.4} ent {:.3} kl {:+.4} qr {:.3}",
            l.iteration,
            l.window_start,
            l.rollout.p99_ms,
            l.rollout.mean_reward,
            vs.p99_ms,
            vs.mean_ms,
            vs.cold_rate * 100.0,
            l.update.dispatch.policy_loss,
            l.update.dispatch.value_loss,
            l.update.dispatch.entropy,
            l.update.dispatch.approx_kl,
            l.quota_reward
        ));
        curve.push(CurvePoint {
            iteration: l.iteration + 1,
            p99_ms: vs.p99_ms,
            mean_reward: vs.mean_reward,
        });
        if best.as_ref().is_none_or(|(b, _, _)| vs.mean_reward > *b) {
            best = Some((vs.mean_reward, l.iteration + 1, wts.clone()));
        }
        last_iteration = Some(LastIteration {
            rollout_p99_ms: l.rollout.p99_ms,
            entropy: l.update.dispatch.entropy,
            approx_kl: l.update.dispatch.approx_kl,
        });
    })?;
    if let Some(e) = eval_err {
        return Err(e);
    }
    let train_s = host.now_s() - t_train;
    let (chosen_val_reward, chosen_iteration, chosen) =
        best.unwrap_or((v0.summary().mean_reward, options.iterations, trained));

    for (name, quota) in [(PPO_FIXED, None), (PPO, keep)] {
        let t0 = host.now_s();
        let rep = evaluate_learned(
            &scenario, &chosen, lambda, quota, test_from, test_to, scale, EVAL_SEED,
        )?;
        rows.push(PolicyRow {
            name: name.to_string(),
            stats: rep.summary(),
            wall_s: host.now_s() - t0,
            guard: None,
        });
    }

    // Rolling-reward guard (fallback: warm affinity): with the selected weights, and with two
    // deliberately bad policies (the selected scores inverted; the untrained initial weights).
    let mut experiments: Vec<(String, Guarding, Box<dyn QuotaPolicy>)> = vec![(
        PPO_GUARD.to_string(),
        Guarding::Guarded(Box::new(LearnedDispatch::new(&chosen, lambda)?)),
        Box::new(LearnedQuota {
            weights: chosen.clone(),
            keep_alive_ms: cfg.keep_alive_ms,
        }),
    )];
    for (name, alone, guarded) in [
        (
            INVERTED,
            Box::new(InvertedDispatch::new(&chosen, lambda)?) as Box<dyn Dispatcher>,
            Box::new(InvertedDispatch::new(&chosen, lambda)?) as Box<dyn Dispatcher>,
        ),
        (
            INITIAL,
            Box::new(LearnedDispatch::new(&init, lambda)?),
            Box::new(LearnedDispatch::new(&init, lambda)?),
        ),
    ] {
        experiments.push((
            bad_alone(name),
            Guarding::Alone(alone),
            Box::<FixedQuota>::default(),
        ));
        experiments.push((
            bad_guarded(name),
            Guarding::Guarded(guarded),
            Box::<FixedQuota>::default(),
        ));
    }
    for (name, guarding, mut q) in experiments {
        let t0 = host.now_s();
        let (rep, guard) = match guarding {
            Guarding::Guarded(learned) => {
                let mut g = GuardedDispatch::new(
                    learned,
                    Box::new(WarmAffinity::default()),
                    GuardedDispatch::default_guard(),
                );
                let rep = scenario.run(test_from, test_to, scale, EVAL_SEED, &mut g, q.as_mut());
                let stats = GuardStats {
                    learned_share: g.learned_share(),
                    switches: g.switches(),
                };
                (rep, Some(stats))
            }
            Guarding::Alone(mut d) => (
                scenario.run(test_from, test_to, scale, EVAL_SEED, d.as_mut(), q.as_mut()),
                None,
            ),
        };
        host.progress(&format!(
            "seed {seed} {name}: p99 {:.1} ms",
            rep.summary().p99_ms
        ));
        rows.push(PolicyRow {
            name,
            stats: rep.summary(),
            wall_s: host.now_s() - t0,
            guard,
        });
    }

    let hop_rtts = hop_probe_rtts(&scenario.sim);
    let scorer = DispatchScorer::from_mlp(&chosen.dispatch).ok();
    let hop_preference = hop_rtts.map(|rtt| scorer.as_ref().map(|s| s.local_preference(rtt)));
    Ok(SeedRun {
        result: SeedResult {
            seed,
            rows,
            validation_refs,
            curve,
            last_iteration,
            chosen_iteration,
            chosen_val_reward,
            train_s,
            hop_preference,
        },
        scenario,
        chosen,
    })
}
