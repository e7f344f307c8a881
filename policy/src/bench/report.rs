//! The markdown report (`policy-bench.md`), rendered from [`BenchData`] alone: the protocol as
//! run, the per-seed targets, checkpoint selection, the guard, hop costs, synthetic profiles, the
//! learning curves and every policy's row. Numbers in the prose come from the data; what is fixed
//! text is the protocol's history (what was decided when), which no run can measure.

use super::data::{BenchData, NodeGroup, SeedResult};
use super::{
    INITIAL, INVERTED, LEAST_LOADED, PPO, PPO_GUARD, WARM_AFFINITY, bad_alone, bad_guarded, median,
};
use crate::sim::Summary;
use crate::trace::Profile;
use std::fmt::Write as _;

/// Header of the per-seed table of every policy.
const HEADER: &str = "| policy | requests | mean ms | p50 ms | p99 ms | cold-start rate | reuse hit rate | timeouts | energy mJ/req | mean reward | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// A guarded bad policy counts as "near warm affinity" when its p99 is at most this factor of
/// warm affinity's.
const NEAR_WARM_AFFINITY: f64 = 1.05;

/// The report of `data`.
pub fn markdown(data: &BenchData) -> String {
    let mut md = String::new();
    protocol(&mut md, data);
    targets_per_seed(&mut md, data);
    context(&mut md, data);
    selection(&mut md, data);
    guard(&mut md, data);
    hop_cost(&mut md, data);
    synthetic(&mut md, data);
    learning_curves(&mut md, data);
    all_policies(&mut md, data);
    md
}

/// Title, command, wall times, the protocol's bullets and the cluster.
fn protocol(md: &mut String, d: &BenchData) {
    let s = &d.setup;
    let o = &s.options;
    let (val, test, train) = (s.validation, s.test, s.train);
    let seeds = o.seeds_csv();
    let n = d.seeds.len();
    let _ = writeln!(
        md,
        "# Policy benchmark: PPO vs heuristics on the Azure 2019 trace ({n} seed{})\n",
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        md,
        "Command: `cargo run --release -p tern-policy --bin policy-bench -- --seeds {seeds} --iterations {} --scale {} --window {}{}{}`  ",
        o.iterations,
        o.scale,
        o.window,
        match (&o.calibration, &o.calibration_file) {
            (Some(_), Some(file)) => format!(" --calibration {file}"),
            (Some(_), None) => " --calibration <file>".to_string(),
            _ => String::new(),
        },
        if o.quick { " --quick" } else { "" }
    );
    let train_total: f64 = d.seeds.iter().map(|r| r.train_s).sum();
    let _ = writeln!(
        md,
        "Machine: 2 vCPU (shared), no GPU. Backend: candle (CPU). Training wall time: {:.1} s in total ({}), whole run {:.0} s.\n",
        train_total,
        d.seeds
            .iter()
            .map(|r| format!("seed {}: {:.1} s", r.seed, r.train_s))
            .collect::<Vec<_>>()
            .join(", "),
        d.total_s
    );
    let _ = writeln!(md, "## Protocol (fixed before the run)\n");
    let _ = writeln!(
        md,
        "- **Seeds:** {seeds}. Every seed is trained, evaluated and reported below; none is dropped or re-run. The seed sets the function specs (memory, execution time), initial weights, episode choice and PPO sampling; evaluation arrivals and execution noise use one fixed seed (0x{:X}), the same for every seed and policy.",
        s.eval_seed
    );
    let _ = writeln!(
        md,
        "- **Training:** {} PPO iterations per seed, one {}-minute episode each drawn from trace minutes {}–{}, trace replayed ×{}. Hyper-parameters are the crate defaults (`TrainConfig`, `PpoConfig`), the same for every seed. (40 iterations is the configuration first reported for seed 1; the 80-iteration re-run was chosen after seeing seed 2's test result and is not used.)",
        o.iterations, o.window, train.from, train.to, o.scale
    );
    let _ = writeln!(
        md,
        "- **Disclosure:** seeds 1–3 had been run with this configuration before the protocol was written (seed 2 missing target 1 is why it exists); seeds 4 and 5 were first run under it. Nothing below was changed after seeing their test results."
    );
    let _ = writeln!(
        md,
        "- **Windows:** validation = minutes {}–{}; test = minutes {}–{}, never used for training or selection. Every run starts from a cold cluster.",
        val.from, val.to, test.from, test.to
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
        "- **Targets** (PPO = PPO dispatch + PPO quota, on the test window, per seed): (1) p99 ≥ {} % below least-loaded; (2) p99 no worse than warm affinity; (3) cold-start rate no higher than warm affinity's. Reported: how many seeds meet each, and the median across seeds.\n",
        s.target_p99_cut_pct
    );
    let c = &s.cluster;
    let _ = writeln!(
        md,
        "Cluster (simulated): {}, each with its class's access RTT ({} ms) in every request's latency. Requests enter the cluster at nodes in turn (round-robin); one placed on another node than its entry node pays a hop of {} ms (the `rtt_ms` feature: 0 for the entry node, the hop for the others). Arrivals uniform within their minute.\n",
        c.groups
            .iter()
            .map(node_group)
            .collect::<Vec<_>>()
            .join(", "),
        c.groups
            .iter()
            .map(|g| g.access_rtt_ms.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        // A measured hop has more digits than the assumed 0.2 ms: four decimals keep them.
        (c.hop_rtt_ms * 1e4).round() / 1e4
    );
    match &c.calibrated_by {
        Some(source) => {
            let _ = writeln!(
                md,
                "**Calibrated** with constants measured on real Tern nodes ({source}): per class, cold start, reuse {}, per-request overhead {} ms, speed and power per busy core {} W replace the assumed ones. Memory, slots, time limits and the access RTTs stay as assumed: they are configuration and deployment, not something a node on this machine can measure.\n",
                c.groups
                    .iter()
                    .map(|g| format!("{} ms", g.reuse_ms))
                    .collect::<Vec<_>>()
                    .join(" / "),
                c.groups
                    .iter()
                    .map(|g| g.overhead_ms.to_string())
                    .collect::<Vec<_>>()
                    .join(" / "),
                c.groups
                    .iter()
                    .map(|g| g.busy_w_per_core.to_string())
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
        }
        None => {
            let _ = writeln!(
                md,
                "Constants **assumed**, not measured: the classes' cold starts, speeds and powers (a third of the cold start when the module is still compiled; no per-request overhead).\n"
            );
        }
    }
}

/// `4 edge (cold 4.2 ms, 50 ms limit, speed 0.7)`; the speed is left out at the reference 1.0.
fn node_group(g: &NodeGroup) -> String {
    let speed = if g.speed == 1.0 {
        String::new()
    } else {
        format!(", speed {}", g.speed)
    };
    format!(
        "{} {} (cold {} ms, {} ms limit{speed})",
        g.nodes, g.class, g.cold_start_ms, g.time_limit_ms
    )
}

/// The three targets for one seed: p99 reduction vs least-loaded in % and whether it reaches the
/// target, p99 no worse than warm affinity, cold-start rate no higher than warm affinity's.
struct Targets {
    d_ll: f64,
    vs_ll: bool,
    vs_wa_p99: bool,
    vs_wa_cold: bool,
}

fn targets(ll: &Summary, wa: &Summary, ppo: &Summary, cut_pct: f64) -> Targets {
    let d_ll = (1.0 - ppo.p99_ms / ll.p99_ms) * 100.0;
    Targets {
        d_ll,
        vs_ll: d_ll >= cut_pct,
        vs_wa_p99: ppo.p99_ms <= wa.p99_ms,
        vs_wa_cold: ppo.cold_rate <= wa.cold_rate,
    }
}

fn yn(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

/// The nine numeric columns of the per-seed table (p99 least-loaded / warm affinity / PPO,
/// PPO vs least-loaded, cold-start rates, mean latencies), one format for seeds and medians.
fn seed_columns(v: &[f64]) -> String {
    format!(
        "{:.1} | {:.1} | {:.1} | {:+.1} % | {:.2} | {:.2} | {:.2} | {:.1} | {:.1}",
        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]
    )
}

/// Per seed and median: the target metrics and which targets each seed meets.
fn targets_per_seed(md: &mut String, d: &BenchData) {
    let (test_from, test_to) = (d.setup.test.from, d.setup.test.to);
    let cut = d.setup.target_p99_cut_pct;
    let n = d.seeds.len();
    let _ = writeln!(
        md,
        "## Per seed: test window (minutes {test_from}–{test_to})\n\np99 in ms, cold-start rate in %.\n\n| seed | least-loaded p99 | warm-affinity p99 | PPO p99 | PPO p99 change vs least-loaded | least-loaded cold | warm-affinity cold | PPO cold | PPO mean ms | WA mean ms | (1) ≥ {cut} % below LL | (2) p99 ≤ WA | (3) cold ≤ WA |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut cols: [Vec<f64>; 10] = Default::default();
    let mut met = [0usize; 3];
    for r in &d.seeds {
        let (Some(ll), Some(wa), Some(ppo)) =
            (r.get(LEAST_LOADED), r.get(WARM_AFFINITY), r.get(PPO))
        else {
            continue;
        };
        let t = targets(&ll, &wa, &ppo, cut);
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
        if -m[3] >= cut { "met" } else { "not met" },
        m[2],
        m[1],
        m[6],
        m[5]
    );
}

/// `| seed 1 | seed 2 |` header cells and the matching `---|` separators.
fn seed_header(d: &BenchData, prefix: &str) -> (String, String) {
    (
        d.seeds
            .iter()
            .map(|r| format!("{prefix}seed {}", r.seed))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(d.seeds.len()),
    )
}

/// Every policy's p99, cold-start rate and energy per seed: where the gain comes from.
fn context(md: &mut String, d: &BenchData) {
    let (cells, sep) = seed_header(d, "");
    let _ = writeln!(
        md,
        "\n### Context per seed: p99 ms (cold-start %, energy mJ/request)\n\n| policy | {cells} |\n|---|{sep}"
    );
    let names: Vec<&str> = d
        .seeds
        .first()
        .map(|r| r.rows.iter().map(|x| x.name.as_str()).collect())
        .unwrap_or_default();
    for name in names {
        let cells: Vec<String> = d
            .seeds
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
}

/// The cross-seed validation table and the committed seed.
fn selection(md: &mut String, d: &BenchData) {
    let (val_from, val_to) = (d.setup.validation.from, d.setup.validation.to);
    let sel = &d.selection;
    let (cells, sep) = seed_header(d, "on ");
    let _ = writeln!(
        md,
        "\n## Checkpoint selection (validation minutes {val_from}–{val_to} only)\n\nMean validation reward of each seed's selected weights (rows) on each seed's validation scenario (columns).\n\n| weights of | picked at iteration | own validation reward | {cells} | mean |\n|---|---|---|{sep}---|"
    );
    for (r, row) in d.seeds.iter().zip(&sel.cross) {
        let seed = row.seed;
        let mark = if seed == sel.committed_seed {
            " **(committed)**"
        } else {
            ""
        };
        let _ = writeln!(
            md,
            "| seed {seed}{mark} | {} | {:.4} | {} | {:.4} |",
            r.chosen_iteration,
            r.chosen_val_reward,
            row.per_seed
                .iter()
                .map(|v| format!("{v:.4}"))
                .collect::<Vec<_>>()
                .join(" | "),
            row.mean
        );
    }
    let _ = writeln!(
        md,
        "\nCommitted: seed {}'s weights (iteration {}). Its test-window result is the seed-{} row above.",
        sel.committed_seed, sel.committed_iteration, sel.committed_seed
    );
}

/// Share of decisions served by the guarded arm and switches, of the row named `name`
/// (NaN and 0 when the row is missing or was not guarded).
fn share(r: &SeedResult, name: &str) -> (f64, u64) {
    r.row(name)
        .and_then(|x| x.guard)
        .map_or((f64::NAN, 0), |g| (g.learned_share, g.switches))
}

/// `1000` → `1,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rolling-reward guard: its cost with the trained weights, and what it saves with bad ones.
fn guard(md: &mut String, d: &BenchData) {
    let g = d.setup.guard;
    let n = d.seeds.len();
    let _ = writeln!(
        md,
        "\n## Rolling-reward guard (fallback: warm affinity)\n\n`GuardedDispatch` with `online::Guard::new({}, {}, {})`, each decision asks the guard which arm serves it; one decision in every block of {}, at a pseudo-random position in the block, goes to the arm not in charge (probe); each request's reward (`RewardConfig::reward`, the training reward) goes back to the guard under the arm that placed it when the request completes (simulated time); the learned arm loses charge when its rolling mean over the last {} rewards falls more than {} below the heuristic's, and takes it back once it is at least as good (hysteresis), at most one switch per {} rewards. The window, margin and probe rate were fixed before the first run; the hysteresis, the dwell and the probe positions were added after the first run showed the guard switching hundreds of times. Only dispatch is guarded; the quota side is as in the row's name.\n\n(a) Trained (selected) weights: what the guard costs.\n\n| seed | PPO p99 | PPO + guard p99 | PPO mean reward | PPO + guard mean reward | PPO cold | PPO + guard cold | decisions by PPO | switches |\n|---|---|---|---|---|---|---|---|---|",
        g.window,
        g.margin,
        g.probe_every,
        g.probe_every,
        thousands(g.window as u64),
        g.margin,
        thousands(g.min_between_switches as u64)
    );
    for r in &d.seeds {
        let (Some(p), Some(gd)) = (r.get(PPO), r.get(PPO_GUARD)) else {
            continue;
        };
        let (sh, sw) = share(r, PPO_GUARD);
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.4} | {:.4} | {:.2} % | {:.2} % | {:.1} % | {} |",
            r.seed,
            p.p99_ms,
            gd.p99_ms,
            p.mean_reward,
            gd.mean_reward,
            p.cold_rate * 100.0,
            gd.cold_rate * 100.0,
            sh * 100.0,
            sw
        );
    }
    {
        let (mut p99, mut gp99, mut rw, mut grw, mut sh) = (vec![], vec![], vec![], vec![], vec![]);
        for r in &d.seeds {
            if let (Some(p), Some(gd)) = (r.get(PPO), r.get(PPO_GUARD)) {
                p99.push(p.p99_ms);
                gp99.push(gd.p99_ms);
                rw.push(p.mean_reward);
                grw.push(gd.mean_reward);
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
    for r in &d.seeds {
        let Some(wa) = r.get(WARM_AFFINITY) else {
            continue;
        };
        for name in [INVERTED, INITIAL] {
            let guarded = bad_guarded(name);
            let (Some(b), Some(gd)) = (r.get(&bad_alone(name)), r.get(&guarded)) else {
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
                gd.p99_ms,
                wa.mean_reward,
                b.mean_reward,
                gd.mean_reward,
                gd.cold_rate * 100.0,
                sh * 100.0,
                sw
            );
        }
    }
    for name in [INVERTED, INITIAL] {
        let alone = bad_alone(name);
        let guarded = bad_guarded(name);
        let (mut b, mut gd, mut wa, mut sh, mut near) = (vec![], vec![], vec![], vec![], 0);
        for r in &d.seeds {
            if let (Some(x), Some(y), Some(w)) =
                (r.get(&alone), r.get(&guarded), r.get(WARM_AFFINITY))
            {
                b.push(x.mean_reward);
                gd.push(y.mean_reward);
                wa.push(w.mean_reward);
                sh.push(share(r, &guarded).0 * 100.0);
                near += usize::from(y.p99_ms <= NEAR_WARM_AFFINITY * w.p99_ms);
            }
        }
        let _ = writeln!(
            md,
            "\n{name}: median mean reward {:.4} alone, {:.4} behind the guard, {:.4} for warm affinity; the bad policy served a median {:.1} % of decisions behind the guard; guarded p99 within {:.0} % of warm affinity's on {near}/{n} seeds.",
            median(b),
            median(gd),
            median(wa),
            median(sh),
            (NEAR_WARM_AFFINITY - 1.0) * 100.0
        );
    }
}

/// Requests that paid the hop, and whether each seed's weights prefer the entry node.
fn hop_cost(md: &mut String, d: &BenchData) {
    let [near, far] = d.setup.hop_probe_rtts_ms;
    let n = d.seeds.len();
    let _ = writeln!(
        md,
        "\n## Hop cost: entry node vs another node\n\nShare of test-window requests placed off their entry node (each paid the hop), and, for each seed's selected weights, the dispatch logit of an idle warm node on the entry node (rtt 0) minus that of an otherwise identical node one hop away (rtt {near} ms, the simulated hop; and rtt {far} ms) for an edge / standard / burst node: positive = prefers the entry node.\n\n| seed | off entry: least-loaded | warm affinity | PPO | PPO + guard | local − remote logit, {near} ms (edge / standard / burst) | same, {far} ms | prefers local at {far} ms |\n|---|---|---|---|---|---|---|---|"
    );
    let mut prefer = 0;
    for r in &d.seeds {
        let off = |n: &str| r.get(n).map_or(f64::NAN, |s| s.off_entry_rate * 100.0);
        // Weights that did not load into the scorer print as NaN and do not prefer anything.
        let [d_near, d_far] = r.hop_preference.map(|p| p.unwrap_or([f32::NAN; 3]));
        let all = d_far.iter().all(|x| *x > 0.0);
        prefer += usize::from(all);
        let fmt = |v: [f32; 3]| {
            v.iter()
                .map(|x| format!("{x:+.4}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} |",
            r.seed,
            off(LEAST_LOADED),
            off(WARM_AFFINITY),
            off(PPO),
            off(PPO_GUARD),
            fmt(d_near),
            fmt(d_far),
            yn(all)
        );
    }
    let _ = writeln!(
        md,
        "\n{prefer}/{n} seeds' weights prefer the entry node for all three classes at {far} ms. (The test `committed_checkpoint_prefers_the_local_node_over_an_identical_remote_one` asserts it for the committed checkpoint.)"
    );
}

/// The synthetic profiles with the committed weights.
fn synthetic(md: &mut String, d: &BenchData) {
    let s = &d.synthetic;
    let _ = writeln!(
        md,
        "\n## Synthetic profiles ({:.0} simulated s each, {} Zipf functions, committed weights, seed {}'s function specs; never trained on)\n\n| profile | requests | least-loaded p99 | warm-affinity p99 | WA + 2 cores, keep-warm 1 p99 | PPO p99 | least-loaded cold | warm-affinity cold | PPO cold | rejected (LL / WA / WA+2c / PPO) |\n|---|---|---|---|---|---|---|---|---|---|",
        s.duration_s, s.functions, d.selection.committed_seed
    );
    for row in &s.rows {
        let (ll, wa, wa2, p) = (
            row.least_loaded,
            row.warm_affinity,
            row.warm_affinity_2_cores,
            row.ppo,
        );
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} % | {:.2} % | {:.2} % | {} / {} / {} / {} |",
            row.name,
            row.requests,
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
    let c = &d.setup.cluster;
    let wave = s.rows.iter().find_map(|r| match r.profile {
        Profile::Concurrent {
            tasks, spread_ms, ..
        } => Some(format!(
            ": a wave of {} tasks within {spread_ms} ms overflows it for every policy",
            thousands(tasks as u64)
        )),
        _ => None,
    });
    let _ = writeln!(
        md,
        "\nRejected = no node could admit the request (every node at {} queued requests per slot, or infeasible). Percentiles and rates are over admitted requests only, so read them together with rejections. The cluster has {} slots{}.",
        c.max_queue_per_slot,
        c.slots(),
        wave.unwrap_or_default()
    );
}

/// Validation p99 and reward per iteration and seed, with the selected iteration marked.
fn learning_curves(md: &mut String, d: &BenchData) {
    let (cells, sep) = seed_header(d, "");
    let _ = writeln!(
        md,
        "\n## Learning curves\n\n![learning curves](learning-curve.svg)\n\nValidation p99 ms (mean reward) of the greedy policy after each iteration; 0 = initial weights.\n\n| iteration | {cells} |\n|---|{sep}"
    );
    let iters = d.seeds.iter().map(|r| r.curve.len()).max().unwrap_or(0);
    for i in 0..iters {
        let cells: Vec<String> = d
            .seeds
            .iter()
            .map(|r| {
                r.curve.get(i).map_or("–".into(), |c| {
                    let mark = if c.iteration == r.chosen_iteration {
                        " ←"
                    } else {
                        ""
                    };
                    format!("{:.1} ({:.4}){mark}", c.p99_ms, c.mean_reward)
                })
            })
            .collect();
        let _ = writeln!(md, "| {i} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\n← = the iteration selected on validation. Per-iteration PPO statistics (losses, entropy, KL) are printed on stderr while training."
    );
}

/// Every policy's full row, per seed.
fn all_policies(md: &mut String, d: &BenchData) {
    let _ = writeln!(md, "\n## All policies per seed (test window)");
    for r in &d.seeds {
        let _ = writeln!(md, "\n### Seed {}\n\n{HEADER}", r.seed);
        for row in &r.rows {
            let s = &row.stats;
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.2} % | {:.1} % | {:.2} % | {:.1} | {:.3} | {:.2} |",
                row.name,
                s.requests,
                s.mean_ms,
                s.p50_ms,
                s.p99_ms,
                s.cold_rate * 100.0,
                s.reuse_rate * 100.0,
                s.timeout_rate * 100.0,
                s.energy_mj_per_req,
                s.mean_reward,
                row.wall_s
            );
        }
        if let Some(l) = r.last_iteration {
            let _ = writeln!(
                md,
                "\nLast training iteration: rollout p99 {:.1} ms, entropy {:.3}, approx KL {:+.5}.",
                l.rollout_p99_ms, l.entropy, l.approx_kl
            );
        }
    }
}
