//! Policy benchmark: train PPO on the first part of the Azure trace, evaluate every policy on a
//! later part it never saw, on a heterogeneous simulated cluster; write a markdown report and an
//! SVG learning curve.
//!
//! `cargo run --release -p tern-policy --bin policy-bench -- [--iterations N] [--scale S]
//!  [--window MIN] [--seeds 1,2,3,4,5 | --seed S] [--out DIR] [--quick]`
//!
//! Without `--seed`/`--seeds` it runs the pre-registered multi-seed protocol (seeds 1–5; one seed
//! with `--quick`) and writes one report covering every seed.

use std::error::Error;
use std::fmt::Write as _;
use std::time::Instant;
use tern_policy::baselines::{
    Dispatcher, FixedQuota, GuardedDispatch, HistogramKeepAlive, InvertedDispatch, LearnedDispatch,
    LearnedQuota, LeastLoaded, QuotaPolicy, RandomChoice, RoundRobin, WarmAffinity,
};
use tern_policy::candle_backend::CandleBackend;
use tern_policy::policy::PolicyWeights;
use tern_policy::sim::{SimConfig, Summary, make_functions};
use tern_policy::trace::{Profile, Trace, synthetic};
use tern_policy::train::{IterLog, Scenario, TrainConfig, evaluate_learned, train};

struct Args {
    iterations: usize,
    scale: u32,
    window: usize,
    seeds: Vec<u64>,
    out: String,
    quick: bool,
}

/// The pre-registered seeds: every one is trained, evaluated and reported.
const PROTOCOL_SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let v: Vec<u64> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<u64>()
                .map_err(|e| format!("seed {x:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    if v.is_empty() {
        return Err("--seeds needs at least one seed".into());
    }
    let mut d = v.clone();
    d.sort_unstable();
    d.dedup();
    if d.len() != v.len() {
        return Err("--seeds has a duplicate".into());
    }
    Ok(v)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        iterations: 40,
        scale: 10,
        window: 20,
        seeds: Vec::new(),
        out: concat!(env!("CARGO_MANIFEST_DIR"), "/reports").to_string(),
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--iterations" => a.iterations = val()?.parse().map_err(|e| format!("{e}"))?,
            "--scale" => a.scale = val()?.parse().map_err(|e| format!("{e}"))?,
            "--window" => a.window = val()?.parse().map_err(|e| format!("{e}"))?,
            "--seed" => a.seeds = parse_seeds(&val()?)?,
            "--seeds" => a.seeds = parse_seeds(&val()?)?,
            "--out" => a.out = val()?,
            "--quick" => a.quick = true,
            "--bench" => {} // passed by `cargo bench`; ignored
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.quick {
        a.iterations = a.iterations.min(3);
        a.window = a.window.min(5);
    }
    if a.seeds.is_empty() {
        a.seeds = if a.quick {
            vec![1]
        } else {
            PROTOCOL_SEEDS.to_vec()
        };
    }
    Ok(a)
}

/// A heuristic configuration: dispatcher, quota policy, report name.
type Baseline = (Box<dyn Dispatcher>, Box<dyn QuotaPolicy>, String);

struct Row {
    name: String,
    s: Summary,
    wall_s: f64,
}

fn row_md(r: &Row) -> String {
    format!(
        "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} % | {:.1} % | {:.2} % | {:.1} | {:.3} | {:.2} |",
        r.name,
        r.s.requests,
        r.s.mean_ms,
        r.s.p50_ms,
        r.s.p99_ms,
        r.s.cold_rate * 100.0,
        r.s.reuse_rate * 100.0,
        r.s.timeout_rate * 100.0,
        r.s.energy_mj_per_req,
        r.s.mean_reward,
        r.wall_s
    )
}

const HEADER: &str = "| policy | requests | mean ms | p50 ms | p99 ms | cold-start rate | reuse hit rate | timeouts | energy mJ/req | mean reward | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// Colours of the per-seed learning curves.
const CURVE_COLORS: [&str; 8] = [
    "#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#2c3e50", "#f39c12",
];

fn svg_curve(curves: &[(String, Vec<(usize, f64)>)], refs: &[(String, f64)]) -> String {
    // x: iteration, y: validation p99 (ms). Hand-written polylines: no plotting dependency.
    let (w, h, pad) = (720.0, 360.0, 50.0);
    let max_it = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .chain(refs.iter().map(|r| r.1))
        .collect();
    let ymax = ys.iter().cloned().fold(1.0, f64::max) * 1.1;
    let x = |i: f64| pad + (w - 2.0 * pad) * i / max_it;
    let y = |v: f64| h - pad - (h - 2.0 * pad) * v / ymax;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">PPO iteration</text>
<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">validation p99 latency (ms)</text>
<text x="{}" y="20" text-anchor="middle">PPO learning curves (validation window, greedy policy, one line per seed)</text>
"#,
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0,
        w / 2.0
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text>"#,
            pad - 4.0,
            y(v) + 4.0,
            v
        );
    }
    for (k, (name, curve)) in curves.iter().enumerate() {
        let c = CURVE_COLORS[k % CURVE_COLORS.len()];
        let pts: Vec<String> = curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0 as f64), y(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{c}">{name}</text>"#,
            pad + 8.0 + 70.0 * k as f64,
            pad + 12.0
        );
    }
    for (k, (name, v)) in refs.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<line x1="{pad}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#7f8c8d" stroke-dasharray="{}"/><text x="{}" y="{:.1}" fill="#7f8c8d" text-anchor="end">{name}</text>"##,
            y(*v),
            w - pad,
            y(*v),
            if k == 0 { "5,4" } else { "2,3" },
            w - pad,
            y(*v) - 3.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn main() {
    if let Err(e) = run() {
        eprintln!("policy-bench: {e}");
        std::process::exit(1);
    }
}

/// Fixed windows of the protocol (trace minutes).
#[derive(Clone, Copy)]
struct Windows {
    val: (usize, usize),
    test: (usize, usize),
}

/// Arrival seed of every evaluation (validation and test): the same arrivals for every seed.
const EVAL_SEED: u64 = 0xE7A1;

fn scenario_for(trace: &Trace, seed: u64) -> Scenario {
    let (_, tenant_of) = trace.tenants();
    Scenario {
        functions: make_functions(trace.functions.len(), &tenant_of, seed),
        trace: trace.clone(),
        sim: SimConfig::heterogeneous(seed),
    }
}

fn fixed(cpu: usize, mem: usize, keep_warm: usize) -> FixedQuota {
    FixedQuota {
        decision: tern_policy::policy::QuotaDecision {
            cpu,
            mem,
            keep_warm,
        },
        ..FixedQuota::default()
    }
}

fn baselines(seed: u64) -> Vec<Baseline> {
    vec![
        (
            Box::new(RoundRobin::default()),
            Box::new(FixedQuota::default()),
            "round-robin".into(),
        ),
        (
            Box::new(RandomChoice::new(seed)),
            Box::new(FixedQuota::default()),
            "random".into(),
        ),
        (
            Box::new(LeastLoaded),
            Box::new(FixedQuota::default()),
            LL.into(),
        ),
        (
            Box::new(WarmAffinity::default()),
            Box::new(FixedQuota::default()),
            WA.into(),
        ),
        (
            Box::new(WarmAffinity::default()),
            Box::new(HistogramKeepAlive::default()),
            "warm-affinity + histogram keep-alive".into(),
        ),
        // The learned quota side mostly buys latency with CPU share: give the best heuristic
        // the same resources so the comparison is not only "more cores vs fewer".
        (
            Box::new(WarmAffinity::default()),
            Box::new(fixed(2, 1, 1)),
            WA2.into(),
        ),
        (
            Box::new(LeastLoaded),
            Box::new(fixed(2, 1, 1)),
            "least-loaded + 2 cores, keep-warm 1".into(),
        ),
    ]
}

const LL: &str = "least-loaded";
const WA: &str = "warm-affinity";
const WA2: &str = "warm-affinity + 2 cores, keep-warm 1";
const PPO_FIXED: &str = "ppo dispatch + fixed quota";
const PPO: &str = "ppo dispatch + ppo quota";
const PPO_GUARD: &str = "ppo + guard (fallback: warm affinity) + ppo quota";
const INV: &str = "inverted ppo dispatch";
const INIT: &str = "untrained ppo dispatch";

/// A deliberately bad dispatcher: name, an instance to run alone, one to run behind the guard.
type BadPolicy = (&'static str, Box<dyn Dispatcher>, Box<dyn Dispatcher>);

/// Everything one seed's run of the protocol produces.
struct SeedRun {
    seed: u64,
    scenario: Scenario,
    /// Test-window rows, every policy.
    rows: Vec<Row>,
    /// Validation p99 of least-loaded and warm affinity (learning-curve references).
    val_refs: Vec<(String, f64)>,
    /// (iteration, validation p99, validation mean reward); iteration 0 = initial weights.
    curve: Vec<(usize, f64, f64)>,
    logs: Vec<IterLog>,
    /// Weights selected on this seed's validation window, and the iteration they came from.
    chosen: PolicyWeights,
    chosen_iter: usize,
    /// Validation mean reward of the chosen weights on this seed's scenario.
    chosen_val_reward: f64,
    train_s: f64,
    /// Guarded and bad-policy rows: name and (share of decisions served by the learned arm,
    /// switches of the arm in charge) for guarded runs.
    guard: Vec<(String, Option<(f64, u64)>)>,
}

impl SeedRun {
    fn get(&self, name: &str) -> Option<Summary> {
        self.rows.iter().find(|r| r.name == name).map(|r| r.s)
    }
}

fn run_seed(args: &Args, trace: &Trace, seed: u64, w: Windows) -> Result<SeedRun, Box<dyn Error>> {
    let scenario = scenario_for(trace, seed);
    let cfg = TrainConfig {
        iterations: args.iterations,
        window_minutes: args.window,
        train_from: 0,
        train_to: 420,
        scale: args.scale,
        seed,
        ..TrainConfig::default()
    };
    let lambda = cfg.ppo.lambda_dispatch;
    let keep = Some(cfg.keep_alive_ms);
    let (val_from, val_to) = w.val;
    let (test_from, test_to) = w.test;

    // Baselines on the test window.
    let mut rows = Vec::new();
    let mut val_refs = Vec::new();
    for (mut d, mut q, name) in baselines(seed) {
        let t0 = Instant::now();
        let rep = scenario.run(
            test_from,
            test_to,
            args.scale,
            EVAL_SEED,
            d.as_mut(),
            q.as_mut(),
        );
        let wall_s = t0.elapsed().as_secs_f64();
        eprintln!(
            "seed {seed} {name}: p99 {:.1} ms ({:.2} s, {:.0} sim-s/wall-s)",
            rep.summary().p99_ms,
            wall_s,
            rep.sim_ms / 1000.0 / wall_s
        );
        rows.push(Row {
            name: name.clone(),
            s: rep.summary(),
            wall_s,
        });
        if name == LL || name == WA {
            let v = scenario.run(
                val_from,
                val_to,
                args.scale,
                EVAL_SEED,
                d.as_mut(),
                q.as_mut(),
            );
            val_refs.push((name, v.summary().p99_ms));
        }
    }

    // PPO training; model selection on the validation window only (never on the test window).
    let init = PolicyWeights::init(seed)?;
    let mut backend = CandleBackend::new(&init)?;
    let mut curve: Vec<(usize, f64, f64)> = Vec::new();
    let mut logs: Vec<IterLog> = Vec::new();
    let mut best: Option<(f64, usize, PolicyWeights)> = None;
    let t_train = Instant::now();
    let v0 = evaluate_learned(
        &scenario, &init, lambda, keep, val_from, val_to, args.scale, EVAL_SEED,
    )?;
    curve.push((0, v0.summary().p99_ms, v0.summary().mean_reward));
    let mut eval_err = None;
    let trained = train(&mut backend, &scenario, &cfg, &init, |l, wts| {
        let v = match evaluate_learned(
            &scenario, wts, lambda, keep, val_from, val_to, args.scale, EVAL_SEED,
        ) {
            Ok(v) => v,
            Err(e) => {
                eval_err = Some(e);
                return;
            }
        };
        let vs = v.summary();
        eprintln!(
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
        );
        curve.push((l.iteration + 1, vs.p99_ms, vs.mean_reward));
        if best.as_ref().is_none_or(|(b, _, _)| vs.mean_reward > *b) {
            best = Some((vs.mean_reward, l.iteration + 1, wts.clone()));
        }
        logs.push(*l);
    })?;
    if let Some(e) = eval_err {
        return Err(e.into());
    }
    let train_s = t_train.elapsed().as_secs_f64();
    let (chosen_val_reward, chosen_iter, chosen) =
        best.unwrap_or((v0.summary().mean_reward, args.iterations, trained));

    for (name, quota) in [(PPO_FIXED, None), (PPO, keep)] {
        let t0 = Instant::now();
        let rep = evaluate_learned(
            &scenario, &chosen, lambda, quota, test_from, test_to, args.scale, EVAL_SEED,
        )?;
        rows.push(Row {
            name: name.into(),
            s: rep.summary(),
            wall_s: t0.elapsed().as_secs_f64(),
        });
    }

    // Rolling-reward guard (fallback: warm affinity): with the selected weights, and with two
    // deliberately bad policies (the selected scores inverted; the untrained initial weights).
    let mut guard = Vec::new();
    let bad: [BadPolicy; 2] = [
        (
            INV,
            Box::new(InvertedDispatch::new(&chosen, lambda)?),
            Box::new(InvertedDispatch::new(&chosen, lambda)?),
        ),
        (
            INIT,
            Box::new(LearnedDispatch::new(&init, lambda)?),
            Box::new(LearnedDispatch::new(&init, lambda)?),
        ),
    ];
    let mut go = |name: String,
                  learned: Option<Box<dyn Dispatcher>>,
                  alone: Option<Box<dyn Dispatcher>>,
                  mut q: Box<dyn QuotaPolicy>| {
        let t0 = Instant::now();
        let (rep, share) = match (learned, alone) {
            (Some(l), _) => {
                let mut g = GuardedDispatch::new(
                    l,
                    Box::new(WarmAffinity::default()),
                    GuardedDispatch::default_guard(),
                );
                let rep = scenario.run(
                    test_from,
                    test_to,
                    args.scale,
                    EVAL_SEED,
                    &mut g,
                    q.as_mut(),
                );
                (rep, Some((g.learned_share(), g.switches())))
            }
            (None, Some(mut d)) => (
                scenario.run(
                    test_from,
                    test_to,
                    args.scale,
                    EVAL_SEED,
                    d.as_mut(),
                    q.as_mut(),
                ),
                None,
            ),
            (None, None) => return,
        };
        eprintln!("seed {seed} {name}: p99 {:.1} ms", rep.summary().p99_ms);
        rows.push(Row {
            name: name.clone(),
            s: rep.summary(),
            wall_s: t0.elapsed().as_secs_f64(),
        });
        guard.push((name, share));
    };
    go(
        PPO_GUARD.into(),
        Some(Box::new(LearnedDispatch::new(&chosen, lambda)?)),
        None,
        Box::new(LearnedQuota {
            weights: chosen.clone(),
            keep_alive_ms: cfg.keep_alive_ms,
        }),
    );
    for (name, alone, guarded) in bad {
        go(
            format!("{name} + fixed quota"),
            None,
            Some(alone),
            Box::<FixedQuota>::default(),
        );
        go(
            format!("{name} + guard (fallback: warm affinity) + fixed quota"),
            Some(guarded),
            None,
            Box::<FixedQuota>::default(),
        );
    }
    Ok(SeedRun {
        seed,
        scenario,
        guard,
        rows,
        val_refs,
        curve,
        logs,
        chosen,
        chosen_iter,
        chosen_val_reward,
        train_s,
    })
}

/// Dispatch logit of an idle warm node with rtt 0 minus that of the same node `rtt_ms` away, for
/// an edge, a standard and a burst node (NaN if the weights do not load into the scorer).
fn local_pref(w: &PolicyWeights, rtt_ms: f32) -> [f32; 3] {
    tern_policy::policy::DispatchScorer::from_mlp(&w.dispatch)
        .map_or([f32::NAN; 3], |scorer| scorer.local_preference(rtt_ms))
}

/// The nine numeric columns of the per-seed table (p99 least-loaded / warm affinity / PPO,
/// PPO vs least-loaded, cold-start rates, mean latencies), one format for seeds and medians.
fn seed_columns(v: &[f64]) -> String {
    format!(
        "{:.1} | {:.1} | {:.1} | {:+.1} % | {:.2} | {:.2} | {:.2} | {:.1} | {:.1}",
        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
    )
}

/// Median (mean of the two middle values for an even count); NaN for no values.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The three targets for one seed: (p99 reduction vs least-loaded in %, met?), p99 no worse
/// than warm affinity, cold-start rate no higher than warm affinity's.
struct Targets {
    d_ll: f64,
    vs_ll: bool,
    vs_wa_p99: bool,
    vs_wa_cold: bool,
}

fn targets(ll: &Summary, wa: &Summary, ppo: &Summary) -> Targets {
    let d_ll = (1.0 - ppo.p99_ms / ll.p99_ms) * 100.0;
    Targets {
        d_ll,
        vs_ll: d_ll >= 25.0,
        vs_wa_p99: ppo.p99_ms <= wa.p99_ms,
        vs_wa_cold: ppo.cold_rate <= wa.cold_rate,
    }
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../traces/azure2019-http-12h.csv"
    );
    let trace = Trace::parse(&std::fs::read_to_string(path)?)?;
    // Train on minutes [0, 420), validate on [420, 450), test on [480, 720).
    let w = Windows {
        val: (420, if args.quick { 425 } else { 450 }),
        test: (480, if args.quick { 490 } else { 720 }),
    };
    let (val_from, val_to) = w.val;
    let lambda = TrainConfig::default().ppo.lambda_dispatch;
    let keep_alive_ms = TrainConfig::default().keep_alive_ms;

    let t_all = Instant::now();
    let mut runs = Vec::new();
    for &seed in &args.seeds {
        runs.push(run_seed(&args, &trace, seed, w)?);
    }

    // Checkpoint selection (pre-registered, validation only): every seed's selected weights are
    // scored on every seed's validation scenario; the highest mean validation reward wins, the
    // lowest seed on ties.
    let mut cross: Vec<(u64, Vec<f64>, f64)> = Vec::new();
    for r in &runs {
        let mut per = Vec::new();
        for s in &runs {
            let v = evaluate_learned(
                &s.scenario,
                &r.chosen,
                lambda,
                Some(keep_alive_ms),
                val_from,
                val_to,
                args.scale,
                EVAL_SEED,
            )?;
            per.push(v.summary().mean_reward);
        }
        let mean = per.iter().sum::<f64>() / per.len().max(1) as f64;
        cross.push((r.seed, per, mean));
    }
    let sel_idx = cross
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.2.total_cmp(&b.1.2).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
        .ok_or("no seeds")?;
    let sel = &runs[sel_idx];
    eprintln!(
        "checkpoint: seed {} (cross-seed validation reward {:.4})",
        sel.seed, cross[sel_idx].2
    );

    // Synthetic profiles (paper's steady/burst/3,000 concurrent), short, selected checkpoint, on
    // the selected seed's function specs.
    let mut synth_rows = Vec::new();
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
    let synth_s = if args.quick { 20.0 } else { 120.0 };
    for (pname, p) in profiles {
        let arr = synthetic(p, 100, synth_s, EVAL_SEED);
        let run = |d: &mut dyn Dispatcher, q: &mut dyn QuotaPolicy| {
            let mut sim = tern_policy::sim::Simulator::new(
                sel.scenario.sim.clone(),
                sel.scenario.functions[..100].to_vec(),
            );
            sim.run(&arr, d, q).summary()
        };
        let ll = run(&mut LeastLoaded, &mut FixedQuota::default());
        let wa = run(&mut WarmAffinity::default(), &mut FixedQuota::default());
        let ppo = run(
            &mut tern_policy::baselines::LearnedDispatch::new(&sel.chosen, lambda)?,
            &mut tern_policy::baselines::LearnedQuota {
                weights: sel.chosen.clone(),
                keep_alive_ms,
            },
        );
        let wa2 = run(&mut WarmAffinity::default(), &mut fixed(2, 1, 1));
        synth_rows.push((pname, arr.len(), ll, wa, wa2, ppo));
    }
    let total_s = t_all.elapsed().as_secs_f64();

    // Outputs.
    std::fs::create_dir_all(&args.out)?;
    let curves: Vec<(String, Vec<(usize, f64)>)> = runs
        .iter()
        .map(|r| {
            (
                format!("seed {}", r.seed),
                r.curve.iter().map(|c| (c.0, c.1)).collect(),
            )
        })
        .collect();
    let refs: Vec<(String, f64)> = [LL, WA]
        .iter()
        .map(|n| {
            let v: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.val_refs.iter().filter(|x| x.0 == *n).map(|x| x.1))
                .collect();
            (format!("{n} (median)"), median(v))
        })
        .collect();
    std::fs::write(
        format!("{}/learning-curve.svg", args.out),
        svg_curve(&curves, &refs),
    )?;
    // The selected weights, loadable by the SchedulerAgent with PolicyWeights::from_safetensors.
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("seed".to_string(), sel.seed.to_string());
    meta.insert(
        "seeds".to_string(),
        args.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    meta.insert("iterations".to_string(), args.iterations.to_string());
    meta.insert("iteration".to_string(), sel.chosen_iter.to_string());
    meta.insert("lambda_dispatch".to_string(), lambda.to_string());
    meta.insert(
        "selected_on".to_string(),
        format!("validation minutes {val_from}-{val_to}, mean reward over all seeds' scenarios"),
    );
    std::fs::write(
        format!("{}/ppo-weights.safetensors", args.out),
        sel.chosen.to_safetensors(meta)?,
    )?;

    let md = report(
        &args,
        w,
        &runs,
        &cross,
        sel_idx,
        &synth_rows,
        synth_s,
        total_s,
    );
    std::fs::write(format!("{}/policy-bench.md", args.out), &md)?;
    println!("{md}");
    Ok(())
}

type SynthRow = (&'static str, usize, Summary, Summary, Summary, Summary);

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    w: Windows,
    runs: &[SeedRun],
    cross: &[(u64, Vec<f64>, f64)],
    sel_idx: usize,
    synth_rows: &[SynthRow],
    synth_s: f64,
    total_s: f64,
) -> String {
    let (val_from, val_to) = w.val;
    let (test_from, test_to) = w.test;
    let seeds = args
        .seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let n = runs.len();
    let sel = &runs[sel_idx];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Policy benchmark: PPO vs heuristics on the Azure 2019 trace ({n} seed{})\n",
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        md,
        "Command: `cargo run --release -p tern-policy --bin policy-bench -- --seeds {seeds} --iterations {} --scale {} --window {}{}`  ",
        args.iterations,
        args.scale,
        args.window,
        if args.quick { " --quick" } else { "" }
    );
    let train_total: f64 = runs.iter().map(|r| r.train_s).sum();
    let _ = writeln!(
        md,
        "Machine: 2 vCPU (shared), no GPU. Backend: candle (CPU). Training wall time: {:.1} s in total ({}), whole run {total_s:.0} s.\n",
        train_total,
        runs.iter()
            .map(|r| format!("seed {}: {:.1} s", r.seed, r.train_s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(md, "## Protocol (fixed before the run)\n");
    let _ = writeln!(
        md,
        "- **Seeds:** {seeds}. Every seed is trained, evaluated and reported below; none is dropped or re-run. The seed sets the function specs (memory, execution time), initial weights, episode choice and PPO sampling; evaluation arrivals and execution noise use one fixed seed (0x{EVAL_SEED:X}), the same for every seed and policy."
    );
    let _ = writeln!(
        md,
        "- **Training:** {} PPO iterations per seed, one {}-minute episode each drawn from trace minutes 0–420, trace replayed ×{}. Hyper-parameters are the crate defaults (`TrainConfig`, `PpoConfig`), the same for every seed. (40 iterations is the configuration first reported for seed 1; the 80-iteration re-run was chosen after seeing seed 2's test result and is not used.)",
        args.iterations, args.window, args.scale
    );
    let _ = writeln!(
        md,
        "- **Disclosure:** seeds 1–3 had been run with this configuration before the protocol was written (seed 2 missing target 1 is why it exists); seeds 4 and 5 were first run under it. Nothing below was changed after seeing their test results."
    );
    let _ = writeln!(
        md,
        "- **Windows:** validation = minutes {val_from}–{val_to}; test = minutes {test_from}–{test_to}, never used for training or selection. Every run starts from a cold cluster."
    );
    let _ = writeln!(
        md,
        "- **Model selection within a seed:** after every iteration the greedy policy (PPO dispatch + PPO quota) runs on that seed's validation window; the weights with the highest validation mean reward are that seed's result (ties: earliest)."
    );
    let _ = writeln!(
        md,
        "- **Committed checkpoint** (`ppo-weights.safetensors`, used by `placement = \"learned\"`): each seed's selected weights are run on every seed's validation scenario; the seed whose weights have the highest mean validation reward over those runs is committed (ties: lowest seed). The test window plays no part in it."
    );
    let _ = writeln!(
        md,
        "- **Targets** (PPO = PPO dispatch + PPO quota, on the test window, per seed): (1) p99 ≥ 25 % below least-loaded; (2) p99 no worse than warm affinity; (3) cold-start rate no higher than warm affinity's. Reported: how many seeds meet each, and the median across seeds.\n"
    );
    let _ = writeln!(
        md,
        "Cluster (simulated): 4 edge (cold 4.2 ms, 50 ms limit, speed 0.7), 3 standard (cold 25 ms, 300 ms limit), 1 burst (cold 63.5 ms, 900 ms limit, speed 1.6), each with its class's access RTT (2 / 6 / 15 ms) in every request's latency. Requests enter the cluster at nodes in turn (round-robin); one placed on another node than its entry node pays a hop of {:.1} ms (the `rtt_ms` feature: 0 for the entry node, the hop for the others). Arrivals uniform within their minute.\n",
        runs.first().map_or(0.0, |r| r.scenario.sim.hop_rtt_ms)
    );

    // Per-seed target metrics.
    let _ = writeln!(
        md,
        "## Per seed: test window (minutes {test_from}–{test_to})\n\np99 in ms, cold-start rate in %.\n\n| seed | least-loaded p99 | warm-affinity p99 | PPO p99 | PPO p99 change vs least-loaded | least-loaded cold | warm-affinity cold | PPO cold | PPO mean ms | WA mean ms | (1) ≥ 25 % below LL | (2) p99 ≤ WA | (3) cold ≤ WA |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut cols: [Vec<f64>; 10] = Default::default();
    let mut met = [0usize; 3];
    for r in runs {
        let (Some(ll), Some(wa), Some(ppo)) = (r.get(LL), r.get(WA), r.get(PPO)) else {
            continue;
        };
        let t = targets(&ll, &wa, &ppo);
        met[0] += usize::from(t.vs_ll);
        met[1] += usize::from(t.vs_wa_p99);
        met[2] += usize::from(t.vs_wa_cold);
        let vals = [
            ll.p99_ms,
            wa.p99_ms,
            ppo.p99_ms,
            -t.d_ll,
            ll.cold_rate * 100.0,
            wa.cold_rate * 100.0,
            ppo.cold_rate * 100.0,
            ppo.mean_ms,
            wa.mean_ms,
            0.0,
        ];
        for (c, v) in cols.iter_mut().zip(vals) {
            c.push(v);
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.seed,
            seed_columns(&vals),
            yn(t.vs_ll),
            yn(t.vs_wa_p99),
            yn(t.vs_wa_cold)
        );
    }
    let m: Vec<f64> = cols.iter().map(|c| median(c.clone())).collect();
    let _ = writeln!(
        md,
        "| **median** | {} | {}/{n} seeds | {}/{n} seeds | {}/{n} seeds |",
        seed_columns(&m),
        met[0],
        met[1],
        met[2]
    );
    let _ = writeln!(
        md,
        "\nMedians are per column (not one seed's row). Target (1) is met on **{}/{n}** seeds, (2) on **{}/{n}**, (3) on **{}/{n}**; on the medians: (1) {:.1} % below least-loaded ({}), (2) {:.1} vs {:.1} ms, (3) {:.2} vs {:.2} %.",
        met[0],
        met[1],
        met[2],
        -m[3],
        if -m[3] >= 25.0 { "met" } else { "not met" },
        m[2],
        m[1],
        m[6],
        m[5]
    );

    // Context rows: where the gain comes from.
    let _ = writeln!(
        md,
        "\n### Context per seed: p99 ms (cold-start %, energy mJ/request)\n\n| policy | {} |\n|---|{}",
        runs.iter()
            .map(|r| format!("seed {}", r.seed))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(n)
    );
    let names: Vec<String> = runs
        .first()
        .map(|r| r.rows.iter().map(|x| x.name.clone()).collect())
        .unwrap_or_default();
    for name in &names {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                r.get(name).map_or("–".into(), |s| {
                    format!(
                        "{:.1} ({:.1} %, {:.0})",
                        s.p99_ms,
                        s.cold_rate * 100.0,
                        s.energy_mj_per_req
                    )
                })
            })
            .collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }

    // Checkpoint selection.
    let _ = writeln!(
        md,
        "\n## Checkpoint selection (validation minutes {val_from}–{val_to} only)\n\nMean validation reward of each seed's selected weights (rows) on each seed's validation scenario (columns).\n\n| weights of | picked at iteration | own validation reward | {} | mean |\n|---|---|---|{}---|",
        runs.iter()
            .map(|r| format!("on seed {}", r.seed))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(n)
    );
    for (r, (seed, per, mean)) in runs.iter().zip(cross) {
        let mark = if *seed == sel.seed {
            " **(committed)**"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| seed {seed}{mark} | {} | {:.4} | {} | {:.4} |",
            r.chosen_iter,
            r.chosen_val_reward,
            per.iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(" | "),
            mean
        );
    }
    let _ = writeln!(
        md,
        "\nCommitted: seed {}'s weights (iteration {}). Its test-window result is the seed-{} row above.",
        sel.seed, sel.chosen_iter, sel.seed
    );

    // Guard.
    let share = |r: &SeedRun, name: &str| {
        r.guard
            .iter()
            .find(|g| g.0 == name)
            .and_then(|g| g.1)
            .unwrap_or((f64::NAN, 0))
    };
    let _ = writeln!(
        md,
        "\n## Rolling-reward guard (fallback: warm affinity)\n\n`GuardedDispatch` with `online::Guard::new(1000, 0.02, 20)`, each decision asks the guard which arm serves it; one decision in every block of 20, at a pseudo-random position in the block, goes to the arm not in charge (probe); each request's reward (`RewardConfig::reward`, the training reward) goes back to the guard under the arm that placed it when the request completes (simulated time); the learned arm loses charge when its rolling mean over the last 1,000 rewards falls more than 0.02 below the heuristic's, and takes it back once it is at least as good (hysteresis), at most one switch per 250 rewards. The window, margin and probe rate were fixed before the first run; the hysteresis, the dwell and the probe positions were added after the first run showed the guard switching hundreds of times. Only dispatch is guarded; the quota side is as in the row's name.\n\n(a) Trained (selected) weights: what the guard costs.\n\n| seed | PPO p99 | PPO + guard p99 | PPO mean reward | PPO + guard mean reward | PPO cold | PPO + guard cold | decisions by PPO | switches |\n|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let (Some(p), Some(g)) = (r.get(PPO), r.get(PPO_GUARD)) else {
            continue;
        };
        let (sh, sw) = share(r, PPO_GUARD);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.4} | {:.4} | {:.2} % | {:.2} % | {:.1} % | {} |",
            r.seed,
            p.p99_ms,
            g.p99_ms,
            p.mean_reward,
            g.mean_reward,
            p.cold_rate * 100.0,
            g.cold_rate * 100.0,
            sh * 100.0,
            sw
        );
    }
    {
        let (mut p99, mut gp99, mut rw, mut grw, mut sh) = (vec![], vec![], vec![], vec![], vec![]);
        for r in runs {
            if let (Some(p), Some(g)) = (r.get(PPO), r.get(PPO_GUARD)) {
                p99.push(p.p99_ms);
                gp99.push(g.p99_ms);
                rw.push(p.mean_reward);
                grw.push(g.mean_reward);
                sh.push(share(r, PPO_GUARD).0 * 100.0);
            }
        }
        let _ = writeln!(
            md,
            "\nMedians: p99 {:.1} ms without the guard, {:.1} ms with it; mean reward {:.4} vs {:.4}; PPO served {:.1} % of decisions.",
            median(p99),
            median(gp99),
            median(rw),
            median(grw),
            median(sh)
        );
    }
    let _ = writeln!(
        md,
        "\n(b) Deliberately bad policies, with the default fixed quota so only dispatch differs from warm affinity: the selected weights with their scores inverted (lowest Eq. 1 score wins), and the untrained initial weights.\n\n| seed | bad policy | warm-affinity p99 | bad p99 | bad + guard p99 | warm-affinity mean reward | bad mean reward | bad + guard mean reward | bad + guard cold | decisions by the bad policy | switches |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in runs {
        let Some(wa) = r.get(WA) else { continue };
        for name in [INV, INIT] {
            let alone = format!("{name} + fixed quota");
            let guarded = format!("{name} + guard (fallback: warm affinity) + fixed quota");
            let (Some(b), Some(g)) = (r.get(&alone), r.get(&guarded)) else {
                continue;
            };
            let (sh, sw) = share(r, &guarded);
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.4} | {:.4} | {:.4} | {:.2} % | {:.1} % | {} |",
                r.seed,
                name,
                wa.p99_ms,
                b.p99_ms,
                g.p99_ms,
                wa.mean_reward,
                b.mean_reward,
                g.mean_reward,
                g.cold_rate * 100.0,
                sh * 100.0,
                sw
            );
        }
    }

    for name in [INV, INIT] {
        let alone = format!("{name} + fixed quota");
        let guarded = format!("{name} + guard (fallback: warm affinity) + fixed quota");
        let (mut b, mut g, mut wa, mut sh, mut near) = (vec![], vec![], vec![], vec![], 0);
        for r in runs {
            if let (Some(x), Some(y), Some(w)) = (r.get(&alone), r.get(&guarded), r.get(WA)) {
                b.push(x.mean_reward);
                g.push(y.mean_reward);
                wa.push(w.mean_reward);
                sh.push(share(r, &guarded).0 * 100.0);
                near += usize::from(y.p99_ms <= 1.05 * w.p99_ms);
            }
        }
        let _ = writeln!(
            md,
            "\n{name}: median mean reward {:.4} alone, {:.4} behind the guard, {:.4} for warm affinity; the bad policy served a median {:.1} % of decisions behind the guard; guarded p99 within 5 % of warm affinity's on {near}/{n} seeds.",
            median(b),
            median(g),
            median(wa),
            median(sh)
        );
    }

    // Hop cost.
    let _ = writeln!(
        md,
        "\n## Hop cost: entry node vs another node\n\nShare of test-window requests placed off their entry node (each paid the hop), and, for each seed's selected weights, the dispatch logit of an idle warm node on the entry node (rtt 0) minus that of an otherwise identical node one hop away (rtt 0.2 ms, the simulated hop; and rtt 2 ms) for an edge / standard / burst node: positive = prefers the entry node.\n\n| seed | off entry: least-loaded | warm affinity | PPO | PPO + guard | local − remote logit, 0.2 ms (edge / standard / burst) | same, 2 ms | prefers local at 2 ms |\n|---|---|---|---|---|---|---|---|"
    );
    let mut prefer = 0;
    for r in runs {
        let off = |n: &str| r.get(n).map_or(f64::NAN, |s| s.off_entry_rate * 100.0);
        let d02 = local_pref(&r.chosen, 0.2);
        let d2 = local_pref(&r.chosen, 2.0);
        let all = d2.iter().all(|d| *d > 0.0);
        prefer += usize::from(all);
        let fmt = |d: [f32; 3]| {
            d.iter()
                .map(|x| format!("{x:+.4}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} |",
            r.seed,
            off(LL),
            off(WA),
            off(PPO),
            off(PPO_GUARD),
            fmt(d02),
            fmt(d2),
            yn(all)
        );
    }
    let _ = writeln!(
        md,
        "\n{prefer}/{n} seeds' weights prefer the entry node for all three classes at 2 ms. (The test `committed_checkpoint_prefers_the_local_node_over_an_identical_remote_one` asserts it for the committed checkpoint.)"
    );

    // Synthetic profiles.
    let _ = writeln!(
        md,
        "\n## Synthetic profiles ({synth_s:.0} simulated s each, 100 Zipf functions, committed weights, seed {}'s function specs; never trained on)\n\n| profile | requests | least-loaded p99 | warm-affinity p99 | WA + 2 cores, keep-warm 1 p99 | PPO p99 | least-loaded cold | warm-affinity cold | PPO cold | rejected (LL / WA / WA+2c / PPO) |\n|---|---|---|---|---|---|---|---|---|---|",
        sel.seed
    );
    for (nm, k, ll, wa, wa2, p) in synth_rows {
        let _ = writeln!(
            md,
            "| {nm} | {k} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} % | {:.2} % | {:.2} % | {} / {} / {} / {} |",
            ll.p99_ms,
            wa.p99_ms,
            wa2.p99_ms,
            p.p99_ms,
            ll.cold_rate * 100.0,
            wa.cold_rate * 100.0,
            p.cold_rate * 100.0,
            ll.rejected,
            wa.rejected,
            wa2.rejected,
            p.rejected
        );
    }
    let _ = writeln!(
        md,
        "\nRejected = no node could admit the request (every node at 4 queued requests per slot, or infeasible). Percentiles and rates are over admitted requests only, so read them together with rejections. The cluster has 72 slots: a wave of 3,000 tasks within 200 ms overflows it for every policy."
    );

    // Learning curves.
    let _ = writeln!(
        md,
        "\n## Learning curves\n\n![learning curves](learning-curve.svg)\n\nValidation p99 ms (mean reward) of the greedy policy after each iteration; 0 = initial weights.\n\n| iteration | {} |\n|---|{}",
        runs.iter()
            .map(|r| format!("seed {}", r.seed))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(n)
    );
    let iters = runs.iter().map(|r| r.curve.len()).max().unwrap_or(0);
    for i in 0..iters {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                r.curve.get(i).map_or("–".into(), |c| {
                    let mark = if c.0 == r.chosen_iter { " ←" } else { "" };
                    format!("{:.1} ({:.4}){mark}", c.1, c.2)
                })
            })
            .collect();
        let _ = writeln!(md, "| {i} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\n← = the iteration selected on validation. Per-iteration PPO statistics (losses, entropy, KL) are printed on stderr while training."
    );

    // Full per-seed tables.
    let _ = writeln!(md, "\n## All policies per seed (test window)");
    for r in runs {
        let _ = writeln!(md, "\n### Seed {}\n\n{HEADER}", r.seed);
        for row in &r.rows {
            let _ = writeln!(md, "{}", row_md(row));
        }
        let ro = r.logs.last();
        if let Some(l) = ro {
            let _ = writeln!(
                md,
                "\nLast training iteration: rollout p99 {:.1} ms, entropy {:.3}, approx KL {:+.5}.",
                l.rollout.p99_ms, l.update.dispatch.entropy, l.update.dispatch.approx_kl
            );
        }
    }
    md
}
