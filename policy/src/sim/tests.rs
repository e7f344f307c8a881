#![allow(clippy::unwrap_used)]
use super::*;
use crate::baselines::{
    DispatchCtx, Dispatcher, FixedQuota, LeastLoaded, RoundRobin, WarmAffinity,
};
use crate::features::NodeFeatures;
use crate::trace::{Arrival, Profile, synthetic};

fn funcs(n: usize) -> Vec<FunctionSpec> {
    make_functions(n, &[], 11)
}

#[test]
fn second_call_on_same_node_is_warm() {
    let cfg = SimConfig {
        nodes: vec![NodeClass::standard()],
        exec_noise: 0.0,
        ..SimConfig::heterogeneous(1)
    };
    let f = vec![FunctionSpec {
        key: 1,
        tenant: 0,
        mem_mb: 128.0,
        exec_ms: 10.0,
    }];
    let mut sim = Simulator::new(cfg, f);
    let arr = [
        Arrival {
            t_ms: 0.0,
            function: 0,
        },
        Arrival {
            t_ms: 1_000.0,
            function: 0,
        },
    ];
    let rep = sim.run(&arr, &mut RoundRobin::default(), &mut FixedQuota::default());
    assert_eq!(rep.cold_starts, 1);
    assert_eq!(rep.reuse_hits, 1);
    // cold: rtt 6 + cold 25 + exec 10; warm: 6 + 10
    assert!(
        (rep.latencies_ms[0] - 41.0).abs() < 1e-3,
        "{:?}",
        rep.latencies_ms
    );
    assert!(
        (rep.latencies_ms[1] - 16.0).abs() < 1e-3,
        "{:?}",
        rep.latencies_ms
    );
}

#[test]
fn keep_alive_expiry_makes_it_cold_again_but_module_cached() {
    let cfg = SimConfig {
        nodes: vec![NodeClass::standard()],
        exec_noise: 0.0,
        ..SimConfig::heterogeneous(1)
    };
    let f = funcs(1);
    let mut sim = Simulator::new(cfg, f);
    let arr = [
        Arrival {
            t_ms: 0.0,
            function: 0,
        },
        Arrival {
            t_ms: 11.0 * 60_000.0,
            function: 0,
        },
    ];
    let rep = sim.run(&arr, &mut RoundRobin::default(), &mut FixedQuota::default());
    assert_eq!(rep.cold_starts, 2);
    assert_eq!(rep.reuse_hits, 1, "module still compiled on the node");
}

#[test]
fn queueing_adds_wait_when_slots_are_busy() {
    let mut class = NodeClass::standard();
    class.concurrency = 1;
    let cfg = SimConfig {
        nodes: vec![class],
        exec_noise: 0.0,
        ..SimConfig::heterogeneous(1)
    };
    let f = vec![FunctionSpec {
        key: 1,
        tenant: 0,
        mem_mb: 128.0,
        exec_ms: 100.0,
    }];
    let mut sim = Simulator::new(cfg, f);
    let arr = [
        Arrival {
            t_ms: 0.0,
            function: 0,
        },
        Arrival {
            t_ms: 10.0,
            function: 0,
        },
    ];
    let rep = sim.run(&arr, &mut RoundRobin::default(), &mut FixedQuota::default());
    // first: 6 + 25 + 100 = 131, ends at 125; second starts at 125 (waits 115), warm: 6+115+100
    assert!(
        (rep.latencies_ms[1] - 221.0).abs() < 1e-3,
        "{:?}",
        rep.latencies_ms
    );
}

#[test]
fn edge_time_limit_masks_or_times_out() {
    let masked = SimConfig {
        nodes: vec![NodeClass::edge()],
        exec_noise: 0.0,
        ..SimConfig::heterogeneous(1)
    };
    let f = vec![FunctionSpec {
        key: 1,
        tenant: 0,
        mem_mb: 128.0,
        exec_ms: 100.0,
    }];
    let mut sim = Simulator::new(masked.clone(), f);
    let rep = sim.run(
        &[Arrival {
            t_ms: 0.0,
            function: 0,
        }],
        &mut RoundRobin::default(),
        &mut FixedQuota::default(),
    );
    assert_eq!(rep.rejected, 1, "infeasible node is masked");
    let cfg = SimConfig {
        mask_infeasible: false,
        ..masked
    };
    let f = vec![FunctionSpec {
        key: 1,
        tenant: 0,
        mem_mb: 128.0,
        exec_ms: 100.0,
    }];
    let mut sim = Simulator::new(cfg, f);
    let rep = sim.run(
        &[Arrival {
            t_ms: 0.0,
            function: 0,
        }],
        &mut RoundRobin::default(),
        &mut FixedQuota::default(),
    );
    assert_eq!(rep.timeouts, 1);
    assert!(rep.latencies_ms[0] > 150.0);
}

#[test]
fn deterministic_and_affinity_beats_round_robin_on_cold_starts() {
    let arr = synthetic(Profile::Steady { rps: 200.0 }, 60, 30.0, 5);
    let run = |d: &mut dyn Dispatcher| {
        let mut sim = Simulator::new(SimConfig::heterogeneous(3), funcs(60));
        sim.run(&arr, d, &mut FixedQuota::default())
    };
    let a = run(&mut WarmAffinity::default());
    let b = run(&mut WarmAffinity::default());
    assert_eq!(a, b);
    let rr = run(&mut RoundRobin::default());
    let ll = run(&mut LeastLoaded);
    assert!(
        a.cold_starts < rr.cold_starts,
        "{} vs {}",
        a.cold_starts,
        rr.cold_starts
    );
    assert_eq!(a.dispatch_rewards.len(), arr.len());
    assert_eq!(ll.latencies_ms.len() as u64 + ll.rejected, arr.len() as u64);
}

#[test]
fn dispatcher_returning_garbage_is_rejected_not_panicking() {
    struct Bad;
    impl Dispatcher for Bad {
        fn name(&self) -> String {
            "bad".into()
        }
        fn dispatch(&mut self, _: &DispatchCtx, _: &[NodeFeatures]) -> Option<usize> {
            Some(999)
        }
    }
    let mut sim = Simulator::new(SimConfig::heterogeneous(1), funcs(3));
    let rep = sim.run(
        &[
            Arrival {
                t_ms: 0.0,
                function: 0,
            },
            Arrival {
                t_ms: 1.0,
                function: 7,
            },
        ],
        &mut Bad,
        &mut FixedQuota::default(),
    );
    assert_eq!(rep.rejected, 1);
    assert!(rep.latencies_ms.is_empty());
}

/// A deliberately bad dispatcher: always the selectable node with the largest expected cold
/// start (so it chases cold nodes).
struct ColdChaser;
impl Dispatcher for ColdChaser {
    fn name(&self) -> String {
        "cold-chaser".into()
    }
    fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
        (0..c.len())
            .filter(|&i| c[i].selectable())
            .max_by(|&a, &b| c[a].expected_cold_ms.total_cmp(&c[b].expected_cold_ms))
    }
}

#[test]
fn every_decision_gets_its_reward_back_once() {
    #[derive(Default)]
    struct Counting {
        rr: RoundRobin,
        calls: u64,
        seen: Vec<(u64, f32)>,
    }
    impl Dispatcher for Counting {
        fn name(&self) -> String {
            "counting".into()
        }
        fn dispatch(&mut self, ctx: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
            self.calls += 1;
            self.rr.dispatch(ctx, c)
        }
        fn on_complete(&mut self, decision: u64, reward: f32) {
            // Only decisions already taken can complete.
            assert!(decision < self.calls, "{decision} >= {}", self.calls);
            self.seen.push((decision, reward));
        }
    }
    let arr = synthetic(Profile::Steady { rps: 200.0 }, 30, 5.0, 9);
    let mut d = Counting::default();
    let mut sim = Simulator::new(SimConfig::heterogeneous(2), funcs(30));
    let rep = sim.run(&arr, &mut d, &mut FixedQuota::default());
    assert_eq!(d.calls, arr.len() as u64);
    let mut seen = d.seen.clone();
    seen.sort_by_key(|s| s.0);
    assert_eq!(seen.len(), arr.len(), "one reward per decision");
    for (k, (dec, r)) in seen.iter().enumerate() {
        assert_eq!(*dec, k as u64);
        assert_eq!(*r, rep.dispatch_rewards[k], "decision {k}");
    }
    // Rewards arrive in completion order, not decision order, once requests overlap.
    assert_ne!(d.seen, seen);
}

#[test]
fn guard_falls_back_from_a_bad_policy_to_near_warm_affinity() {
    use crate::baselines::GuardedDispatch;
    use crate::online::Arm;
    let arr = synthetic(Profile::Steady { rps: 200.0 }, 60, 60.0, 5);
    let run = |d: &mut dyn Dispatcher| {
        let mut sim = Simulator::new(SimConfig::heterogeneous(3), funcs(60));
        sim.run(&arr, d, &mut FixedQuota::default()).summary()
    };
    let bad = run(&mut ColdChaser);
    let wa = run(&mut WarmAffinity::default());
    // A window sized to this short run (12,000 decisions): the guard decides after 50
    // rewards of each arm, i.e. after ~1,000 decisions at one probe in 20.
    let guard = || crate::online::Guard::new(200, 0.02, 20);
    let mut g = GuardedDispatch::new(
        Box::new(ColdChaser),
        Box::new(WarmAffinity::default()),
        guard(),
    );
    let guarded = run(&mut g);
    eprintln!(
        "bad {:.4} / {:.1} ms / cold {:.3}; guarded {:.4} / {:.1} ms / cold {:.3} (learned share {:.3}); warm affinity {:.4} / {:.1} ms / cold {:.3}",
        bad.mean_reward,
        bad.mean_ms,
        bad.cold_rate,
        guarded.mean_reward,
        guarded.mean_ms,
        guarded.cold_rate,
        g.learned_share(),
        wa.mean_reward,
        wa.mean_ms,
        wa.cold_rate
    );
    assert_eq!(g.in_charge(), Arm::Heuristic);
    assert!(g.learned_share() < 0.15, "{}", g.learned_share());
    assert!(g.switches() <= 2, "{}", g.switches());
    // Much better than the bad policy alone: most of the gap to warm affinity is closed.
    let gap = wa.mean_reward - bad.mean_reward;
    assert!(gap > 0.1, "the bad policy must actually be bad: gap {gap}");
    assert!(guarded.mean_reward > bad.mean_reward + 0.75 * gap);
    assert!(guarded.cold_rate < 0.5 * bad.cold_rate);
    // And within a margin of warm affinity on its own.
    assert!(guarded.mean_reward > wa.mean_reward - 0.25 * gap);
    assert!(guarded.mean_ms < 1.2 * wa.mean_ms);

    // An arm exactly as good as the fallback keeps most decisions. With a 200-reward window
    // the rolling means are noisy enough to hand over now and then; the hysteresis (back
    // only when at least as good) and the dwell keep that to a few switches (20 without
    // them), and the arm in charge then keeps it a while: harmless, the arms are identical.
    let mut same = GuardedDispatch::new(
        Box::new(WarmAffinity::default()),
        Box::new(WarmAffinity::default()),
        guard(),
    );
    let s = run(&mut same);
    eprintln!(
        "same: learned share {:.3}, switches {}",
        same.learned_share(),
        same.switches()
    );
    assert!(same.learned_share() > 0.6, "{}", same.learned_share());
    assert!(same.switches() <= 6, "{}", same.switches());
    assert_eq!(s, wa, "two identical arms behave like one");
}

#[test]
fn requests_placed_off_their_entry_node_pay_the_hop() {
    // Two identical nodes; entries alternate 0, 1, 0, …; the dispatcher always picks node 1
    // and records the rtt feature it saw.
    struct Second(Vec<Vec<f32>>);
    impl Dispatcher for Second {
        fn name(&self) -> String {
            "second".into()
        }
        fn dispatch(&mut self, _: &DispatchCtx, c: &[NodeFeatures]) -> Option<usize> {
            self.0.push(c.iter().map(|n| n.rtt_ms).collect());
            Some(1)
        }
    }
    let cfg = SimConfig {
        nodes: vec![NodeClass::standard(); 2],
        exec_noise: 0.0,
        hop_rtt_ms: 2.0,
        ..SimConfig::heterogeneous(1)
    };
    let f = vec![FunctionSpec {
        key: 1,
        tenant: 0,
        mem_mb: 128.0,
        exec_ms: 10.0,
    }];
    let mut sim = Simulator::new(cfg, f);
    let arr: Vec<Arrival> = (0..3)
        .map(|k| Arrival {
            t_ms: 1_000.0 * k as f64,
            function: 0,
        })
        .collect();
    let mut d = Second(Vec::new());
    let rep = sim.run(&arr, &mut d, &mut FixedQuota::default());
    assert_eq!(d.0, vec![vec![0.0, 2.0], vec![2.0, 0.0], vec![0.0, 2.0]]);
    // cold via entry 0: 6 + 2 + 25 + 10; warm via entry 1 (local): 6 + 10; warm via 0: + 2.
    assert_eq!(rep.latencies_ms, vec![43.0, 16.0, 18.0]);
    assert_eq!(rep.off_entry, 2);
}

#[test]
fn percentile_nearest_rank() {
    let v: Vec<f32> = (1..=100).map(|x| x as f32).collect();
    assert_eq!(percentile(&v, 0.99), 99.0);
    assert_eq!(percentile(&v, 0.5), 50.0);
    assert_eq!(percentile(&[], 0.5), 0.0);
}

/// A calibration with every class measured alike except where a test says otherwise.
fn calibration() -> Calibration {
    let class = |name: &str, cold: f32, speed: f32| ClassCalibration {
        class: name.into(),
        cold_start_ms: cold,
        reuse_ms: 0.0,
        overhead_ms: 0.5,
        speed,
        busy_w_per_core: 10.0,
    };
    Calibration {
        source: "test".into(),
        hop_ms: 0.3,
        classes: vec![
            class("edge", 1.5, 0.5),
            class("standard", 1.0, 1.0),
            class("burst", 0.8, 1.2),
        ],
    }
}

#[test]
fn a_calibrated_cluster_takes_the_measured_constants_and_keeps_the_configured_ones() {
    let assumed = SimConfig::heterogeneous(1);
    let cal = SimConfig::calibrated(1, &calibration()).unwrap();
    assert_eq!(cal.hop_rtt_ms, 0.3);
    assert_eq!(cal.nodes.len(), assumed.nodes.len());
    for (c, a) in cal.nodes.iter().zip(&assumed.nodes) {
        let (cold, speed) = match a.name {
            "edge" => (1.5, 0.5),
            "standard" => (1.0, 1.0),
            _ => (0.8, 1.2),
        };
        assert_eq!((c.cold_start_ms, c.speed), (cold, speed), "{}", a.name);
        assert_eq!(
            (c.reuse_ms, c.overhead_ms, c.busy_w_per_core),
            (Some(0.0), 0.5, 10.0)
        );
        // Configuration and deployment stay as they were.
        assert_eq!(
            (c.mem_mb, c.time_limit_ms, c.concurrency, c.rtt_ms, c.index),
            (a.mem_mb, a.time_limit_ms, a.concurrency, a.rtt_ms, a.index)
        );
    }
}

#[test]
fn a_calibration_missing_a_class_or_with_a_bad_figure_is_refused() {
    let mut missing = calibration();
    missing.classes.retain(|c| c.class != "burst");
    let mut twice = calibration();
    twice.classes.push(twice.classes[0].clone());
    let mut unknown = calibration();
    unknown.classes[0].class = "lambda".into();
    let mut negative = calibration();
    negative.classes[1].overhead_ms = -0.1;
    let mut nan = calibration();
    nan.classes[2].cold_start_ms = f32::NAN;
    let mut zero_speed = calibration();
    zero_speed.classes[0].speed = 0.0;
    let mut hop = calibration();
    hop.hop_ms = f64::INFINITY;
    for (what, c) in [
        ("missing", missing),
        ("twice", twice),
        ("unknown", unknown),
        ("negative", negative),
        ("nan", nan),
        ("zero speed", zero_speed),
        ("hop", hop),
    ] {
        assert!(
            matches!(
                SimConfig::calibrated(1, &c),
                Err(crate::error::PolicyError::InvalidInput(_))
            ),
            "{what} accepted"
        );
    }
    assert!(calibration().validate().is_ok());
}

#[test]
fn calibrated_overhead_and_reuse_cost_are_in_every_latency() {
    let cal = calibration();
    let standard = cal.apply(&NodeClass::standard());
    let cfg = SimConfig {
        nodes: vec![standard],
        exec_noise: 0.0,
        ..SimConfig::heterogeneous(1)
    };
    let f = vec![FunctionSpec {
        key: 1,
        tenant: 0,
        mem_mb: 128.0,
        exec_ms: 10.0,
    }];
    let mut sim = Simulator::new(cfg, f);
    let arr = [0.0, 1_000.0, 11.0 * 60_000.0].map(|t_ms| Arrival { t_ms, function: 0 });
    let rep = sim.run(&arr, &mut RoundRobin::default(), &mut FixedQuota::default());
    // First: access rtt 6 + overhead 0.5 + cold 1.0 + exec 10. Warm: 6 + 0.5 + 10. After the
    // keep-alive expired, the module is still compiled: reuse 0 instead of a third of the cold.
    let want = [17.5, 16.5, 16.5];
    for (got, want) in rep.latencies_ms.iter().zip(want) {
        assert!((got - want).abs() < 1e-3, "{:?}", rep.latencies_ms);
    }
    assert_eq!((rep.cold_starts, rep.reuse_hits), (2, 2));
}

#[test]
fn a_calibration_travels_in_checkpoint_metadata_and_incomplete_metadata_is_refused() {
    let cal = calibration();
    let meta = cal.to_metadata();
    assert_eq!(Calibration::from_metadata(&meta).unwrap(), Some(cal));
    // A checkpoint trained with the assumed classes carries none.
    let plain = std::collections::BTreeMap::from([("seed".to_string(), "3".to_string())]);
    assert_eq!(Calibration::from_metadata(&plain).unwrap(), None);
    let mut missing = meta.clone();
    missing.remove("calibration.burst.speed");
    let mut garbage = meta.clone();
    garbage.insert("calibration.edge.cold_start_ms".into(), "fast".into());
    let mut negative = meta;
    negative.insert("calibration.hop_ms".into(), "-1".into());
    for bad in [missing, garbage, negative] {
        assert!(matches!(
            Calibration::from_metadata(&bad),
            Err(crate::error::PolicyError::Checkpoint(_))
        ));
    }
}
