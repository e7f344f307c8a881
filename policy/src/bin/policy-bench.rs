//! Policy benchmark: train PPO on the first part of the Azure trace, evaluate every policy on a
//! later part it never saw, on a heterogeneous simulated cluster; write a markdown report and an
//! SVG learning curve.
//!
//! `cargo run --release -p tern-policy --bin policy-bench -- [--iterations N] [--scale S]
//!  [--window MIN] [--seed S] [--out DIR] [--quick]`

use std::fmt::Write as _;
use std::time::Instant;
use tern_policy::baselines::{
    Dispatcher, FixedQuota, HistogramKeepAlive, LeastLoaded, QuotaPolicy, RandomChoice, RoundRobin,
    WarmAffinity,
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
    seed: u64,
    out: String,
    quick: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        iterations: 40,
        scale: 10,
        window: 20,
        seed: 1,
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
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("{e}"))?,
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

fn svg_curve(curve: &[(usize, f64, f64)], refs: &[(String, f64)]) -> String {
    // x: iteration, y: validation p99 (ms). Hand-written polyline: no plotting dependency.
    let (w, h, pad) = (720.0, 360.0, 50.0);
    let max_it = curve.iter().map(|c| c.0).max().unwrap_or(1).max(1) as f64;
    let ys: Vec<f64> = curve
        .iter()
        .map(|c| c.1)
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
<text x="{}" y="20" text-anchor="middle">PPO learning curve (validation window, greedy policy)</text>
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
    let pts: Vec<String> = curve
        .iter()
        .map(|c| format!("{:.1},{:.1}", x(c.0 as f64), y(c.1)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{}"/>"##,
        pts.join(" ")
    );
    let colors = ["#2980b9", "#27ae60", "#8e44ad", "#7f8c8d"];
    for (k, (name, v)) in refs.iter().enumerate() {
        let c = colors[k % colors.len()];
        let _ = writeln!(
            s,
            r#"<line x1="{pad}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{c}" stroke-dasharray="5,4"/><text x="{}" y="{:.1}" fill="{c}" text-anchor="end">{name}</text>"#,
            y(*v),
            w - pad,
            y(*v),
            w - pad,
            y(*v) - 3.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#c0392b">PPO (greedy)</text></svg>"##,
        pad + 8.0,
        pad + 12.0
    );
    s
}

fn main() {
    if let Err(e) = run() {
        eprintln!("policy-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../traces/azure2019-http-12h.csv"
    );
    let trace = Trace::parse(&std::fs::read_to_string(path)?)?;
    let (_, tenant_of) = trace.tenants();
    let functions = make_functions(trace.functions.len(), &tenant_of, args.seed);
    let scenario = Scenario {
        trace,
        functions,
        sim: SimConfig::heterogeneous(args.seed),
    };
    // Train on minutes [0, 420), validate (learning curve) on [420, 480), test on [480, 720).
    let (val_from, val_to) = (420, if args.quick { 425 } else { 450 });
    let (test_from, test_to) = (480, if args.quick { 490 } else { 720 });
    let cfg = TrainConfig {
        iterations: args.iterations,
        window_minutes: args.window,
        train_from: 0,
        train_to: 420,
        scale: args.scale,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let lambda = cfg.ppo.lambda_dispatch;
    let eval_seed = 0xE7A1;

    // Baselines on the test window.
    let mut rows = Vec::new();
    let mut val_refs = Vec::new();
    let baselines: Vec<Baseline> = vec![
        (
            Box::new(RoundRobin::default()),
            Box::new(FixedQuota::default()),
            "round-robin".into(),
        ),
        (
            Box::new(RandomChoice::new(args.seed)),
            Box::new(FixedQuota::default()),
            "random".into(),
        ),
        (
            Box::new(LeastLoaded),
            Box::new(FixedQuota::default()),
            "least-loaded".into(),
        ),
        (
            Box::new(WarmAffinity::default()),
            Box::new(FixedQuota::default()),
            "warm-affinity".into(),
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
            Box::new(FixedQuota {
                decision: tern_policy::policy::QuotaDecision {
                    cpu: 2,
                    mem: 1,
                    keep_warm: 1,
                },
                ..FixedQuota::default()
            }),
            "warm-affinity + 2 cores, keep-warm 1".into(),
        ),
        (
            Box::new(LeastLoaded),
            Box::new(FixedQuota {
                decision: tern_policy::policy::QuotaDecision {
                    cpu: 2,
                    mem: 1,
                    keep_warm: 1,
                },
                ..FixedQuota::default()
            }),
            "least-loaded + 2 cores, keep-warm 1".into(),
        ),
    ];
    for (mut d, mut q, name) in baselines {
        let t0 = Instant::now();
        let rep = scenario.run(
            test_from,
            test_to,
            args.scale,
            eval_seed,
            d.as_mut(),
            q.as_mut(),
        );
        let wall_s = t0.elapsed().as_secs_f64();
        eprintln!(
            "{name}: p99 {:.1} ms ({:.2} s, {:.0} sim-s/wall-s)",
            rep.summary().p99_ms,
            wall_s,
            rep.sim_ms / 1000.0 / wall_s
        );
        rows.push(Row {
            name: name.clone(),
            s: rep.summary(),
            wall_s,
        });
        if name == "least-loaded" || name == "warm-affinity" {
            let v = scenario.run(
                val_from,
                val_to,
                args.scale,
                eval_seed,
                d.as_mut(),
                q.as_mut(),
            );
            val_refs.push((name, v.summary().p99_ms));
        }
    }

    // PPO training.
    let init = PolicyWeights::init(args.seed)?;
    let mut backend = CandleBackend::new(&init)?;
    let mut curve: Vec<(usize, f64, f64)> = Vec::new();
    let mut logs: Vec<IterLog> = Vec::new();
    let mut best: Option<(f64, PolicyWeights)> = None;
    let t_train = Instant::now();
    let v0 = evaluate_learned(
        &scenario,
        &init,
        lambda,
        Some(cfg.keep_alive_ms),
        val_from,
        val_to,
        args.scale,
        eval_seed,
    )?;
    curve.push((0, v0.summary().p99_ms, v0.summary().mean_reward));
    let mut eval_err = None;
    let trained = train(&mut backend, &scenario, &cfg, &init, |l, w| {
        let v = match evaluate_learned(
            &scenario,
            w,
            lambda,
            Some(cfg.keep_alive_ms),
            val_from,
            val_to,
            args.scale,
            eval_seed,
        ) {
            Ok(v) => v,
            Err(e) => {
                eval_err = Some(e);
                return;
            }
        };
        let vs = v.summary();
        eprintln!(
            "iter {:>3} window@{:>3} rollout p99 {:>7.1} reward {:>7.3} | val p99 {:>7.1} mean {:>6.1} cold {:>5.2}% | pg {:+.4} v {:.4} ent {:.3} kl {:+.4} qr {:.3}",
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
        // Model selection on the validation window only (never on the test window).
        if best.as_ref().is_none_or(|(b, _)| vs.mean_reward > *b) {
            best = Some((vs.mean_reward, w.clone()));
        }
        logs.push(*l);
    })?;
    if let Some(e) = eval_err {
        return Err(e.into());
    }
    if let Some(e) = eval_err {
        return Err(e.into());
    }
    let train_s = t_train.elapsed().as_secs_f64();
    let chosen = best.map(|(_, w)| w).unwrap_or(trained);

    let t0 = Instant::now();
    let rep = evaluate_learned(
        &scenario, &chosen, lambda, None, test_from, test_to, args.scale, eval_seed,
    )?;
    rows.push(Row {
        name: "ppo dispatch + fixed quota".into(),
        s: rep.summary(),
        wall_s: t0.elapsed().as_secs_f64(),
    });
    let t0 = Instant::now();
    let rep = evaluate_learned(
        &scenario,
        &chosen,
        lambda,
        Some(cfg.keep_alive_ms),
        test_from,
        test_to,
        args.scale,
        eval_seed,
    )?;
    rows.push(Row {
        name: "ppo dispatch + ppo quota".into(),
        s: rep.summary(),
        wall_s: t0.elapsed().as_secs_f64(),
    });

    // Synthetic profiles (paper's steady/burst/3,000 concurrent), short, same trained weights.
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
        let arr = synthetic(p, 100, synth_s, eval_seed);
        let run = |d: &mut dyn Dispatcher, q: &mut dyn QuotaPolicy| {
            let mut sim = tern_policy::sim::Simulator::new(
                scenario.sim.clone(),
                scenario.functions[..100].to_vec(),
            );
            sim.run(&arr, d, q).summary()
        };
        let ll = run(&mut LeastLoaded, &mut FixedQuota::default());
        let wa = run(&mut WarmAffinity::default(), &mut FixedQuota::default());
        let ppo = run(
            &mut tern_policy::baselines::LearnedDispatch::new(&chosen, lambda)?,
            &mut tern_policy::baselines::LearnedQuota {
                weights: chosen.clone(),
                keep_alive_ms: cfg.keep_alive_ms,
            },
        );
        let wa2 = run(
            &mut WarmAffinity::default(),
            &mut FixedQuota {
                decision: tern_policy::policy::QuotaDecision {
                    cpu: 2,
                    mem: 1,
                    keep_warm: 1,
                },
                ..FixedQuota::default()
            },
        );
        synth_rows.push((pname, arr.len(), ll, wa, wa2, ppo));
    }

    // Report.
    std::fs::create_dir_all(&args.out)?;
    let svg = svg_curve(
        &curve.iter().map(|c| (c.0, c.1, c.2)).collect::<Vec<_>>(),
        &val_refs,
    );
    std::fs::write(format!("{}/learning-curve.svg", args.out), svg)?;
    // The selected weights, loadable by the SchedulerAgent with PolicyWeights::from_safetensors.
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("seed".to_string(), args.seed.to_string());
    meta.insert("iterations".to_string(), args.iterations.to_string());
    meta.insert("lambda_dispatch".to_string(), lambda.to_string());
    meta.insert(
        "selected_on".to_string(),
        format!("validation minutes {val_from}-{val_to}"),
    );
    std::fs::write(
        format!("{}/ppo-weights.safetensors", args.out),
        chosen.to_safetensors(meta)?,
    )?;
    let find = |n: &str| rows.iter().find(|r| r.name == n).map(|r| r.s);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Policy benchmark: PPO vs heuristics on the Azure 2019 trace\n"
    );
    let _ = writeln!(
        md,
        "Command: `cargo run --release -p tern-policy --bin policy-bench -- --iterations {} --scale {} --window {} --seed {}{}`  ",
        args.iterations,
        args.scale,
        args.window,
        args.seed,
        if args.quick { " --quick" } else { "" }
    );
    let _ = writeln!(
        md,
        "Machine: 2 vCPU, no GPU (the project's CI/dev machine kind). Backend: candle (CPU). Training wall time: {train_s:.1} s.\n"
    );
    let _ = writeln!(
        md,
        "Cluster (simulated): 4 edge (cold 4.2 ms, 50 ms limit, speed 0.7), 3 standard (cold 25 ms, 300 ms limit), 1 burst (cold 63.5 ms, 900 ms limit, speed 1.6). Trace replayed ×{} (each invocation repeated), arrivals uniform within their minute. Train: minutes 0–420 ({}-minute episodes); validation (model selection and learning curve): minutes {val_from}–{val_to}; test: minutes {test_from}–{test_to}, never seen in training. Every run starts from a cold cluster. The seed sets the function specs (memory, execution time), execution noise, initial weights and training; test arrivals are the same for every seed.\n",
        args.scale, args.window
    );
    let _ = writeln!(
        md,
        "## Test window (minutes {test_from}–{test_to})\n\n{HEADER}"
    );
    for r in &rows {
        let _ = writeln!(md, "{}", row_md(r));
    }
    if let (Some(ll), Some(wa), Some(ppo)) = (
        find("least-loaded"),
        find("warm-affinity"),
        find("ppo dispatch + ppo quota"),
    ) {
        let _ = writeln!(md, "\n## Against the targets\n");
        let d_ll = (1.0 - ppo.p99_ms / ll.p99_ms) * 100.0;
        let _ = writeln!(
            md,
            "- p99 vs least-loaded: {:.1} ms vs {:.1} ms → {:.1} % lower (target ≥ 25 %): **{}**",
            ppo.p99_ms,
            ll.p99_ms,
            d_ll,
            if d_ll >= 25.0 { "met" } else { "not met" }
        );
        let _ = writeln!(
            md,
            "- p99 vs warm affinity: {:.1} ms vs {:.1} ms (target: no worse): **{}**",
            ppo.p99_ms,
            wa.p99_ms,
            if ppo.p99_ms <= wa.p99_ms {
                "met"
            } else {
                "not met"
            }
        );
        let _ = writeln!(
            md,
            "- cold-start rate vs warm affinity: {:.2} % vs {:.2} % (target: no higher): **{}**",
            ppo.cold_rate * 100.0,
            wa.cold_rate * 100.0,
            if ppo.cold_rate <= wa.cold_rate {
                "met"
            } else {
                "not met"
            }
        );
        let _ = writeln!(
            md,
            "- mean latency: PPO {:.1} ms, least-loaded {:.1} ms, warm affinity {:.1} ms; energy/request: PPO {:.1}, least-loaded {:.1}, warm affinity {:.1} mJ",
            ppo.mean_ms,
            ll.mean_ms,
            wa.mean_ms,
            ppo.energy_mj_per_req,
            ll.energy_mj_per_req,
            wa.energy_mj_per_req
        );
    }
    let _ = writeln!(
        md,
        "\n## Synthetic profiles ({synth_s:.0} simulated s each, 100 Zipf functions, same trained weights; never trained on)\n\n| profile | requests | least-loaded p99 | warm-affinity p99 | WA + 2 cores, keep-warm 1 p99 | PPO p99 | least-loaded cold | warm-affinity cold | PPO cold | rejected (LL / WA / WA+2c / PPO) |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (n, k, ll, wa, wa2, p) in &synth_rows {
        let _ = writeln!(
            md,
            "| {n} | {k} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} % | {:.2} % | {:.2} % | {} / {} / {} / {} |",
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
    let _ = writeln!(
        md,
        "\n## Learning curve\n\n![learning curve](learning-curve.svg)\n\n| iteration | validation p99 ms | validation mean reward |\n|---|---|---|"
    );
    for (i, p, r) in &curve {
        let _ = writeln!(md, "| {i} | {p:.1} | {r:.4} |");
    }
    let _ = writeln!(
        md,
        "\n### Per-iteration training log\n\n| it | window | rollout p99 ms | rollout reward | pg loss | value loss | entropy | approx KL | clip frac | quota reward |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in &logs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.4} | {:+.4} | {:.4} | {:.3} | {:+.5} | {:.3} | {:.4} |",
            l.iteration,
            l.window_start,
            l.rollout.p99_ms,
            l.rollout.mean_reward,
            l.update.dispatch.policy_loss,
            l.update.dispatch.value_loss,
            l.update.dispatch.entropy,
            l.update.dispatch.approx_kl,
            l.update.dispatch.clip_frac,
            l.quota_reward
        );
    }
    std::fs::write(format!("{}/policy-bench.md", args.out), &md)?;
    println!("{md}");
    Ok(())
}
