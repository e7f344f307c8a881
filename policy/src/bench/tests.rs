//! Tests of the bench module: the renderers on small hand-built data (so every expected line is
//! worked out by hand), the JSON form, the options, and the protocol on a tiny trace.
#![allow(clippy::unwrap_used)]

use super::data::{
    BenchData, Cluster, CrossRow, CurvePoint, GuardSetup, GuardStats, LastIteration, NodeGroup,
    PolicyRow, SeedResult, Selection, Setup, Span, Synthetic, SyntheticRow, ValidationRef,
};
use super::protocol::{Host, Options, PROTOCOL_SEEDS};
use super::{
    INITIAL, INVERTED, LEAST_LOADED, PPO, PPO_GUARD, WARM_AFFINITY, bad_alone, bad_guarded, median,
    report, svg,
};
use crate::error::PolicyError;
use crate::sim::{SimConfig, Summary};
use crate::trace::{Profile, Trace};

fn stats(p99_ms: f64, cold_rate: f64, mean_ms: f64) -> Summary {
    Summary {
        requests: 1000,
        mean_ms,
        p50_ms: mean_ms,
        p99_ms,
        cold_rate,
        mean_reward: -p99_ms / 100.0,
        ..Summary::default()
    }
}

fn row(name: &str, s: Summary, guard: Option<GuardStats>) -> PolicyRow {
    PolicyRow {
        name: name.to_string(),
        stats: s,
        wall_s: 0.25,
        guard,
    }
}

/// One seed with least-loaded, warm affinity, PPO (given as (p99, cold rate, mean)), PPO behind
/// the guard, and the two bad policies alone and guarded.
fn seed(seed: u64, ll: Summary, wa: Summary, ppo: Summary) -> SeedResult {
    let guarded = Some(GuardStats {
        learned_share: 0.9,
        switches: 2,
    });
    SeedResult {
        seed,
        rows: vec![
            row(LEAST_LOADED, ll, None),
            row(WARM_AFFINITY, wa, None),
            row(PPO, ppo, None),
            row(PPO_GUARD, ppo, guarded),
            row(&bad_alone(INVERTED), stats(150.0, 0.5, 60.0), None),
            row(&bad_guarded(INVERTED), stats(83.0, 0.1, 30.0), guarded),
            row(&bad_alone(INITIAL), stats(110.0, 0.4, 40.0), None),
            row(&bad_guarded(INITIAL), stats(90.0, 0.1, 30.0), guarded),
        ],
        validation_refs: vec![
            ValidationRef {
                policy: LEAST_LOADED.into(),
                p99_ms: ll.p99_ms,
            },
            ValidationRef {
                policy: WARM_AFFINITY.into(),
                p99_ms: wa.p99_ms,
            },
        ],
        curve: vec![
            CurvePoint {
                iteration: 0,
                p99_ms: 120.0,
                mean_reward: -0.9,
            },
            CurvePoint {
                iteration: 1,
                p99_ms: 90.0,
                mean_reward: -0.5,
            },
            CurvePoint {
                iteration: 2,
                p99_ms: 95.0,
                mean_reward: -0.6,
            },
        ],
        last_iteration: Some(LastIteration {
            rollout_p99_ms: 91.0,
            entropy: 1.5,
            approx_kl: 0.001,
        }),
        chosen_iteration: 1,
        chosen_val_reward: -0.5,
        train_s: 3.0,
        hop_preference: [Some([0.01, 0.02, 0.03]), Some([0.1, -0.2, 0.3])],
    }
}

/// Two seeds: seed 1 meets all three targets; seed 2 misses (1) (15 % below least-loaded) and
/// (2) (p99 85 > warm affinity's 60) and meets (3). Seed 2's weights are committed.
fn fixture() -> BenchData {
    let seeds = vec![
        seed(
            1,
            stats(100.0, 0.10, 30.0),
            stats(80.0, 0.03, 25.0),
            stats(70.0, 0.02, 20.0),
        ),
        seed(
            2,
            stats(100.0, 0.10, 30.0),
            stats(60.0, 0.05, 22.0),
            stats(85.0, 0.04, 24.0),
        ),
    ];
    BenchData {
        setup: Setup {
            options: Options {
                iterations: 2,
                scale: 10,
                window: 5,
                seeds: vec![1, 2],
                quick: false,
                calibration: None,
                calibration_file: None,
            },
            train: Span { from: 0, to: 420 },
            validation: Span { from: 420, to: 450 },
            test: Span { from: 480, to: 720 },
            eval_seed: 0xE7A1,
            lambda_dispatch: 0.02,
            cluster: Cluster::of(&SimConfig::heterogeneous(1), None),
            guard: GuardSetup {
                window: 1000,
                margin: 0.02,
                probe_every: 20,
                min_between_switches: 250,
            },
            target_p99_cut_pct: 25.0,
            hop_probe_rtts_ms: [0.2, 2.0],
        },
        seeds,
        selection: Selection {
            cross: vec![
                CrossRow {
                    seed: 1,
                    per_seed: vec![-0.5, -0.7],
                    mean: -0.6,
                },
                CrossRow {
                    seed: 2,
                    per_seed: vec![-0.45, -0.55],
                    mean: -0.5,
                },
            ],
            committed_seed: 2,
            committed_iteration: 1,
        },
        synthetic: Synthetic {
            duration_s: 120.0,
            functions: 100,
            rows: vec![SyntheticRow {
                name: "3,000 concurrent".into(),
                profile: Profile::Concurrent {
                    tasks: 3000,
                    spread_ms: 200.0,
                    period_s: 20.0,
                },
                requests: 3000,
                least_loaded: stats(175.0, 0.8, 90.0),
                warm_affinity: stats(163.0, 0.8, 80.0),
                warm_affinity_2_cores: stats(160.0, 0.8, 80.0),
                ppo: stats(170.0, 0.8, 85.0),
            }],
        },
        total_s: 42.0,
    }
}

fn lines(md: &str) -> Vec<&str> {
    md.lines().collect()
}

#[test]
fn targets_table_has_a_row_per_seed_with_met_and_missed_targets() {
    let md = report::markdown(&fixture());
    let l = lines(&md);
    assert!(l.contains(
        &"| 1 | 100.0 | 80.0 | 70.0 | -30.0 % | 10.00 | 3.00 | 2.00 | 20.0 | 25.0 | yes | yes | yes |"
    ));
    assert!(l.contains(
        &"| 2 | 100.0 | 60.0 | 85.0 | -15.0 % | 10.00 | 5.00 | 4.00 | 24.0 | 22.0 | **no** | **no** | yes |"
    ));
    // Medians are per column: p99 (80 + 60) / 2, (70 + 85) / 2, change (−30 − 15) / 2, …
    assert!(l.contains(
        &"| **median** | 100.0 | 70.0 | 77.5 | -22.5 % | 10.00 | 4.00 | 3.00 | 22.0 | 23.5 | 1/2 seeds | 1/2 seeds | 2/2 seeds |"
    ));
}

#[test]
fn win_count_sentence_counts_seeds_per_target_and_judges_the_median() {
    let md = report::markdown(&fixture());
    assert!(md.contains(
        "Target (1) is met on **1/2** seeds, (2) on **1/2**, (3) on **2/2**; on the medians: (1) 22.5 % below least-loaded (not met), (2) 77.5 vs 70.0 ms, (3) 3.00 vs 4.00 %."
    ));
}

#[test]
fn target_threshold_in_prose_and_verdicts_comes_from_the_data() {
    let mut d = fixture();
    d.setup.target_p99_cut_pct = 10.0;
    let md = report::markdown(&d);
    assert!(md.contains("(1) p99 ≥ 10 % below least-loaded"));
    assert!(md.contains("| (1) ≥ 10 % below LL |"));
    // Seed 2's 15 % cut now meets target (1), and so does the 22.5 % median.
    assert!(md.contains("Target (1) is met on **2/2** seeds"));
    assert!(md.contains("(1) 22.5 % below least-loaded (met)"));
}

#[test]
fn committed_seed_is_marked_once_and_named_in_the_selection_sentence() {
    let md = report::markdown(&fixture());
    let l = lines(&md);
    assert!(l.contains(&"| seed 1 | 1 | -0.5000 | -0.5000 | -0.7000 | -0.6000 |"));
    assert!(l.contains(&"| seed 2 **(committed)** | 1 | -0.5000 | -0.4500 | -0.5500 | -0.5000 |"));
    assert_eq!(md.matches("**(committed)**").count(), 1);
    assert!(md.contains("Committed: seed 2's weights (iteration 1)."));
    assert!(md.contains("committed weights, seed 2's function specs"));
}

#[test]
fn cluster_sentence_is_rendered_from_the_recorded_cluster() {
    let md = report::markdown(&fixture());
    assert!(md.contains(
        "Cluster (simulated): 4 edge (cold 4.2 ms, 50 ms limit, speed 0.7), 3 standard (cold 25 ms, 300 ms limit), 1 burst (cold 63.5 ms, 900 ms limit, speed 1.6), each with its class's access RTT (2 / 6 / 15 ms) in every request's latency."
    ));
    assert!(md.contains("pays a hop of 0.2 ms"));
    assert!(md.contains("Constants **assumed**, not measured"));
    assert!(md.contains("The cluster has 72 slots: a wave of 3,000 tasks within 200 ms"));

    let mut d = fixture();
    d.setup.cluster = Cluster {
        groups: vec![NodeGroup {
            class: "edge".into(),
            nodes: 2,
            cold_start_ms: 5.0,
            time_limit_ms: 60.0,
            speed: 1.0,
            access_rtt_ms: 3.0,
            slots_per_node: 4,
            reuse_ms: 0.25,
            overhead_ms: 0.4,
            busy_w_per_core: 10.0,
        }],
        hop_rtt_ms: 1.5,
        max_queue_per_slot: 2.0,
        calibrated_by: Some("real-nodes.sh calibration at abc".into()),
    };
    let md = report::markdown(&d);
    assert!(md.contains("**Calibrated** with constants measured on real Tern nodes (real-nodes.sh calibration at abc): per class, cold start, reuse 0.25 ms, per-request overhead 0.4 ms, speed and power per busy core 10 W"), "{md}");
    assert!(!md.contains("Constants **assumed**"));
    assert!(md.contains(
        "Cluster (simulated): 2 edge (cold 5 ms, 60 ms limit), each with its class's access RTT (3 ms)"
    ));
    assert!(md.contains("pays a hop of 1.5 ms"));
    assert!(md.contains("every node at 2 queued requests per slot"));
    assert!(md.contains("The cluster has 8 slots: a wave"));
}

#[test]
fn guard_prose_uses_the_recorded_guard_settings() {
    let mut d = fixture();
    d.setup.guard = GuardSetup {
        window: 12_000,
        margin: 0.05,
        probe_every: 7,
        min_between_switches: 3000,
    };
    let md = report::markdown(&d);
    assert!(md.contains("`online::Guard::new(12000, 0.05, 7)`"));
    assert!(md.contains("one decision in every block of 7,"));
    assert!(md.contains("over the last 12,000 rewards falls more than 0.05 below"));
    assert!(md.contains("at most one switch per 3,000 rewards"));
}

#[test]
fn guard_tables_show_the_share_served_by_the_guarded_arm() {
    let md = report::markdown(&fixture());
    let l = lines(&md);
    assert!(l.contains(&"| 1 | 70.0 | 70.0 | -0.7000 | -0.7000 | 2.00 % | 2.00 % | 90.0 % | 2 |"));
    assert!(l.contains(
        &"| 2 | inverted ppo dispatch | 60.0 | 150.0 | 83.0 | -0.6000 | -1.5000 | -0.8300 | 10.00 % | 90.0 % | 2 |"
    ));
    // Inverted behind the guard: 83 ≤ 1.05 · 80 on seed 1, not ≤ 1.05 · 60 on seed 2.
    assert!(md.contains(
        "inverted ppo dispatch: median mean reward -1.5000 alone, -0.8300 behind the guard, -0.7000 for warm affinity; the bad policy served a median 90.0 % of decisions behind the guard; guarded p99 within 5 % of warm affinity's on 1/2 seeds."
    ));
}

#[test]
fn hop_table_counts_seeds_preferring_the_entry_node_at_the_far_probe() {
    let mut d = fixture();
    d.seeds[1].hop_preference[1] = Some([0.1, 0.2, 0.3]);
    d.seeds[0].hop_preference[1] = None;
    let md = report::markdown(&d);
    let l = lines(&md);
    assert!(l.contains(
        &"| 2 | 0.0 % | 0.0 % | 0.0 % | 0.0 % | +0.0100 / +0.0200 / +0.0300 | +0.1000 / +0.2000 / +0.3000 | yes |"
    ));
    assert!(l.contains(
        &"| 1 | 0.0 % | 0.0 % | 0.0 % | 0.0 % | +0.0100 / +0.0200 / +0.0300 | NaN / NaN / NaN | **no** |"
    ));
    assert!(md.contains("1/2 seeds' weights prefer the entry node for all three classes at 2 ms."));
    assert!(md.contains("| local − remote logit, 0.2 ms (edge / standard / burst) | same, 2 ms |"));
}

#[test]
fn learning_curve_table_marks_the_selected_iteration() {
    let md = report::markdown(&fixture());
    let l = lines(&md);
    assert!(l.contains(&"| 0 | 120.0 (-0.9000) | 120.0 (-0.9000) |"));
    assert!(l.contains(&"| 1 | 90.0 (-0.5000) ← | 90.0 (-0.5000) ← |"));
    assert!(l.contains(&"| 2 | 95.0 (-0.6000) | 95.0 (-0.6000) |"));
}

#[test]
fn every_policy_gets_a_full_row_per_seed_with_its_wall_time() {
    let d = fixture();
    let md = report::markdown(&d);
    assert!(md.contains(
        "| least-loaded | 1000 | 30.0 | 30.0 | 100.0 | 10.00 % | 0.0 % | 0.00 % | 0.0 | -1.000 | 0.25 |"
    ));
    let full_rows = md
        .lines()
        .filter(|l| l.ends_with("| 0.25 |") && l.starts_with("| "))
        .count();
    assert_eq!(
        full_rows,
        d.seeds.iter().map(|s| s.rows.len()).sum::<usize>()
    );
    assert!(md.contains(
        "Last training iteration: rollout p99 91.0 ms, entropy 1.500, approx KL +0.00100."
    ));
}

#[test]
fn header_records_the_command_and_the_wall_times() {
    let md = report::markdown(&fixture());
    assert!(
        md.starts_with("# Policy benchmark: PPO vs heuristics on the Azure 2019 trace (2 seeds)\n")
    );
    assert!(md.contains("-- --seeds 1,2 --iterations 2 --scale 10 --window 5`  \n"));
    assert!(md.contains(
        "Training wall time: 6.0 s in total (seed 1: 3.0 s, seed 2: 3.0 s), whole run 42 s."
    ));
    assert!(md.contains("one fixed seed (0xE7A1)"));
    assert!(md.contains("drawn from trace minutes 0–420, trace replayed ×10"));
}

#[test]
fn json_round_trip_gives_back_equal_data() {
    let mut d = fixture();
    // Values with no short decimal form must survive exactly.
    d.seeds[0].rows[0].stats.mean_ms = 0.1 + 0.2;
    d.seeds[0].chosen_val_reward = 1.0 / 3.0;
    d.seeds[1].hop_preference[0] = None;
    d.total_s = 1e-300;
    let back = BenchData::from_json(&d.to_json().unwrap()).unwrap();
    assert_eq!(back, d);
    assert_eq!(report::markdown(&back), report::markdown(&d));
    assert_eq!(svg::learning_curve(&back), svg::learning_curve(&d));
}

#[test]
fn malformed_json_is_a_bench_data_error() {
    let err = BenchData::from_json("{\"setup\": 1}").unwrap_err();
    assert!(matches!(err, PolicyError::BenchData(_)), "{err:?}");
}

#[test]
fn checkpoint_metadata_names_the_committed_seed_and_the_validation_window() {
    let meta = fixture().checkpoint_metadata();
    assert_eq!(meta["seed"], "2");
    assert_eq!(meta["seeds"], "1,2");
    assert_eq!(meta["iterations"], "2");
    assert_eq!(meta["iteration"], "1");
    assert_eq!(meta["lambda_dispatch"], "0.02");
    assert_eq!(
        meta["selected_on"],
        "validation minutes 420-450, mean reward over all seeds' scenarios"
    );
}

#[test]
fn chart_has_a_curve_per_seed_scaled_to_the_last_iteration_and_median_references() {
    let chart = svg::learning_curve(&fixture());
    assert_eq!(chart.matches("<polyline").count(), 2);
    // x runs from pad 50 (iteration 0) to 720 − 50 (the last iteration).
    assert!(chart.contains(r#"points="50.0,"#));
    assert!(chart.contains(" 670.0,"));
    assert!(chart.contains(">least-loaded (median)</text>"));
    assert!(chart.contains(">warm-affinity (median)</text>"));
    // ymax = 1.1 · 120 (the highest value): warm affinity's median 70 ms sits at
    // 310 − 260 · 70 / 132.
    let y = 310.0 - 260.0 * 70.0 / 132.0;
    assert!(chart.contains(&format!(r#"y1="{y:.1}""#)), "{chart}");
    assert!(chart.ends_with("</svg>\n"));
}

#[test]
fn median_averages_the_middle_pair_and_is_nan_for_nothing() {
    assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    assert!(median(vec![]).is_nan());
}

#[test]
fn quick_caps_iterations_and_window_and_runs_seed_1() {
    let o = Options {
        quick: true,
        ..Options::default()
    }
    .resolved();
    assert_eq!((o.iterations, o.window, o.seeds.clone()), (3, 5, vec![1]));
    assert_eq!(o.resolved(), o);
    let full = Options::default().resolved();
    assert_eq!(
        (full.iterations, full.window, full.seeds),
        (40, 20, PROTOCOL_SEEDS.to_vec())
    );
    let chosen = Options {
        seeds: vec![7, 3],
        iterations: 2,
        ..Options::default()
    }
    .resolved();
    assert_eq!((chosen.iterations, chosen.seeds), (2, vec![7, 3]));
}

#[test]
fn cluster_groups_consecutive_nodes_of_a_class() {
    let c = Cluster::of(&SimConfig::heterogeneous(3), None);
    let groups: Vec<(&str, usize)> = c
        .groups
        .iter()
        .map(|g| (g.class.as_str(), g.nodes))
        .collect();
    assert_eq!(groups, [("edge", 4), ("standard", 3), ("burst", 1)]);
    assert_eq!(c.slots(), 4 * 8 + 3 * 8 + 16);
}

/// A fake clock that advances a quarter second per reading, and a log of progress lines.
#[derive(Default)]
struct Recorder {
    t: std::cell::Cell<f64>,
    lines: Vec<String>,
}

impl Host for Recorder {
    fn now_s(&self) -> f64 {
        self.t.set(self.t.get() + 0.25);
        self.t.get()
    }
    fn progress(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }
}

/// 100 functions over 720 minutes, one invocation per function every third minute.
fn tiny_trace() -> Trace {
    let text: String = (0..100)
        .map(|f| {
            let counts: Vec<&str> = (0..720)
                .map(|m| if (m + f) % 3 == 0 { "1" } else { "0" })
                .collect();
            format!("owner{},app{f},fn{f},http,{}\n", f % 4, counts.join(","))
        })
        .collect();
    Trace::parse(&text).unwrap()
}

#[test]
fn duplicate_seeds_are_rejected_before_any_work() {
    let mut host = Recorder::default();
    let o = Options {
        seeds: vec![2, 2],
        ..Options::default()
    };
    let err = super::run(&o, &tiny_trace(), &mut host).unwrap_err();
    assert!(matches!(err, PolicyError::InvalidInput(_)), "{err:?}");
    assert!(host.lines.is_empty());
}

#[test]
fn protocol_on_a_tiny_trace_produces_complete_renderable_data() {
    let mut host = Recorder::default();
    let o = Options {
        iterations: 1,
        scale: 1,
        window: 1,
        seeds: vec![4, 2],
        quick: true,
        calibration: None,
        calibration_file: None,
    };
    let out = super::run(&o, &tiny_trace(), &mut host).unwrap();
    let d = &out.data;
    assert_eq!(d.setup.options.seeds, [4, 2]);
    assert_eq!(d.setup.validation, Span { from: 420, to: 425 });
    assert_eq!(d.setup.test, Span { from: 480, to: 490 });
    assert_eq!(d.seeds.iter().map(|s| s.seed).collect::<Vec<_>>(), [4, 2]);
    for s in &d.seeds {
        // 7 heuristics, 2 PPO, PPO behind the guard, 2 bad policies alone and guarded.
        assert_eq!(s.rows.len(), 14);
        for name in [LEAST_LOADED, WARM_AFFINITY, PPO] {
            assert!(s.get(name).is_some_and(|x| x.requests > 0), "{name}");
        }
        assert_eq!(s.rows.iter().filter(|r| r.guard.is_some()).count(), 3);
        assert_eq!(s.curve.len(), 2);
        assert!(s.curve.iter().any(|c| c.iteration == s.chosen_iteration));
        assert_eq!(s.validation_refs.len(), 2);
        assert!(s.last_iteration.is_some());
        assert!(s.hop_preference.iter().all(Option::is_some));
    }
    assert_eq!(d.selection.cross.len(), 2);
    assert!(d.selection.cross.iter().all(|r| r.per_seed.len() == 2));
    let committed = d.committed().unwrap();
    assert_eq!(d.selection.committed_iteration, committed.chosen_iteration);
    assert_eq!(d.synthetic.rows.len(), 3);
    assert_eq!(d.synthetic.functions, 100);
    assert_eq!(d.setup.guard.window, 1000);
    // Wall times come from the host's clock, so the fake one makes them positive and exact
    // multiples of its tick.
    assert!(d.total_s > 0.0 && (d.total_s * 4.0).fract() == 0.0);
    assert!(
        host.lines
            .iter()
            .any(|l| l.starts_with("checkpoint: seed "))
    );
    let md = report::markdown(d);
    assert!(md.contains("(2 seeds)"));
    assert!(md.contains("--seeds 4,2 --iterations 1 --scale 1 --window 1 --quick"));
    assert_eq!(BenchData::from_json(&d.to_json().unwrap()).unwrap(), *d);
}

#[test]
fn protocol_with_a_calibration_simulates_the_measured_cluster_and_says_so() {
    let class = |name: &str, cold: f32| crate::sim::ClassCalibration {
        class: name.into(),
        cold_start_ms: cold,
        reuse_ms: 0.0,
        overhead_ms: 0.3,
        speed: 1.0,
        busy_w_per_core: 10.0,
    };
    let cal = crate::sim::Calibration {
        source: "a test calibration".into(),
        hop_ms: 0.15,
        classes: vec![
            class("edge", 2.0),
            class("standard", 1.0),
            class("burst", 0.5),
        ],
    };
    let o = Options {
        iterations: 1,
        scale: 1,
        window: 1,
        seeds: vec![1],
        quick: true,
        calibration: Some(cal.clone()),
        calibration_file: Some("cal/calibration.json".into()),
    };
    let out = super::run(&o, &tiny_trace(), &mut Recorder::default()).unwrap();
    let c = &out.data.setup.cluster;
    assert_eq!(c.calibrated_by.as_deref(), Some("a test calibration"));
    assert_eq!(c.hop_rtt_ms, 0.15);
    let colds: Vec<f32> = c.groups.iter().map(|g| g.cold_start_ms).collect();
    assert_eq!(colds, [2.0, 1.0, 0.5]);
    assert!(
        c.groups
            .iter()
            .all(|g| g.overhead_ms == 0.3 && g.reuse_ms == 0.0)
    );
    assert_eq!(out.data.setup.options.calibration, Some(cal.clone()));
    // The data round-trips through its JSON with the calibration in it.
    let back = BenchData::from_json(&out.data.to_json().unwrap()).unwrap();
    assert_eq!(back.setup.cluster, *c);
    let md = report::markdown(&out.data);
    assert!(
        md.contains("--calibration cal/calibration.json --quick`"),
        "{md}"
    );
    assert!(md.contains(
        "**Calibrated** with constants measured on real Tern nodes (a test calibration)"
    ));

    let mut bad = cal;
    bad.classes.pop();
    let o = Options {
        calibration: Some(bad),
        ..o
    };
    assert!(matches!(
        super::run(&o, &tiny_trace(), &mut Recorder::default()),
        Err(PolicyError::InvalidInput(_))
    ));
}
