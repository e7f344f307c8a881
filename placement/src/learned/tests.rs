#![allow(clippy::unwrap_used)]
use super::*;
use std::collections::BTreeMap;
use tern_policy::features::NODE_FEATURES;
use tern_policy::mlp::{Dense, Mlp};
use tern_policy::policy::DISPATCH_HIDDEN;
use tern_policy::sim::{Calibration, ClassCalibration, NodeClass as SimClass};
use tern_wire::NodeClass;

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.into(),
        alive: true,
        fits: true,
        queue_depth: 0,
        queue_cap: 100,
        warm: true,
        class: NodeClass::Standard,
        max_memory_mb: 512,
        max_timeout_ms: 900_000,
        ..NodeView::default()
    }
}

fn meu() -> MeuView<'static> {
    MeuView {
        function: "f",
        items: 1,
        memory_mb: 128,
        timeout_ms: 10_000,
        mean_exec_us: 2_000,
    }
}

/// Dispatch weights whose logit is `gain · feature[k]` (through the two ReLU layers).
fn weights_scoring_feature(k: usize, gain: f32) -> PolicyWeights {
    let [h0, h1] = DISPATCH_HIDDEN;
    let mut w = PolicyWeights::init(7).unwrap();
    let mut w0 = vec![0.0; NODE_FEATURES * h0];
    w0[k * h0] = 1.0;
    let mut w1 = vec![0.0; h0 * h1];
    w1[0] = 1.0;
    let mut w2 = vec![0.0; h1];
    w2[0] = gain;
    w.dispatch = Mlp {
        layers: vec![
            Dense {
                inputs: NODE_FEATURES,
                outputs: h0,
                weight: w0,
                bias: vec![0.0; h0],
            },
            Dense {
                inputs: h0,
                outputs: h1,
                weight: w1,
                bias: vec![0.0; h1],
            },
            Dense {
                inputs: h1,
                outputs: 1,
                weight: w2,
                bias: vec![0.0],
            },
        ],
    };
    w
}

fn placement(w: &PolicyWeights) -> (LearnedPlacement, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    (
        LearnedPlacement::new(w, 4, metrics.clone()).unwrap(),
        metrics,
    )
}

#[test]
fn node_views_map_to_the_policy_features() {
    let (p, _) = placement(&PolicyWeights::init(1).unwrap());
    let mut n = NodeView {
        queue_depth: 6,
        cpu_percent: 200,
        memory_bytes: 1 << 30,
        recent_mean_us: 12_500,
        rtt_us: 800,
        class: NodeClass::EdgeSmall,
        max_timeout_ms: 50,
        ..node("b")
    };
    let f = p.features(&meu(), &n);
    assert_eq!(f.warm_instances, 1.0);
    assert_eq!(f.queue_depth, 6.0);
    assert_eq!(f.concurrency, 4.0);
    assert_eq!(f.cpu_util, 0.5, "200 % of one core on 4 slots");
    assert!(f.mem_util > 0.0 && f.mem_util <= 1.0, "{}", f.mem_util);
    assert_eq!(f.expected_cold_ms, 0.0, "warm: no cold start");
    assert_eq!(f.recent_latency_ms, 12.5);
    assert_eq!(f.rtt_ms, 0.8);
    assert_eq!(f.expected_exec_ms, 2.0);
    assert_eq!(f.time_limit_ms, 50.0);
    assert_eq!(f.class, 0);
    assert!(f.selectable());
    n.warm = false;
    assert_eq!(
        p.features(&meu(), &n).expected_cold_ms,
        SimClass::edge().cold_start_ms
    );
    // An unknown class can no longer reach here: it is refused when the status decodes.
    assert_eq!(class_index(NodeClass::Standard), 1);
    assert_eq!(class_index(NodeClass::CpuBurst), 2);
    // Masking follows `usable()` exactly.
    for (view, usable) in [
        (node("a"), true),
        (
            NodeView {
                alive: false,
                ..node("a")
            },
            false,
        ),
        (
            NodeView {
                fits: false,
                ..node("a")
            },
            false,
        ),
        (
            NodeView {
                queue_depth: 100,
                ..node("a")
            },
            false,
        ),
    ] {
        assert_eq!(view.usable(), usable);
        assert_eq!(p.features(&meu(), &view).selectable(), usable, "{view:?}");
    }
}

#[test]
fn the_policy_picks_the_best_score_but_never_a_masked_node() {
    // Score = 10 · (queue depth per slot): the busiest node scores highest.
    let (p, metrics) = placement(&weights_scoring_feature(1, 10.0));
    let mut nodes: Vec<NodeView> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
    for (i, q) in [1, 2, 3, 4].into_iter().enumerate() {
        nodes[i].queue_depth = q;
    }
    assert_eq!(p.place(&meu(), &nodes).unwrap(), 3);
    // Full: at its queue cap (the highest queue depth of all), still never chosen.
    nodes[3].queue_cap = 4;
    nodes[3].queue_depth = 9;
    assert_eq!(p.place(&meu(), &nodes).unwrap(), 2);
    nodes[2].alive = false;
    assert_eq!(p.place(&meu(), &nodes).unwrap(), 1);
    nodes[1].fits = false;
    assert_eq!(p.place(&meu(), &nodes).unwrap(), 0);
    assert_eq!(metrics.placement_learned.load(Relaxed), 4);
    assert_eq!(metrics.placement_fallback.load(Relaxed), 0);
    nodes[0].alive = false;
    assert!(matches!(p.place(&meu(), &nodes), Err(NoNodeFits)));
    assert_eq!(metrics.placement_fallback.load(Relaxed), 0);
    // Larger than the stack buffer: same answer through the Vec path.
    let mut many: Vec<NodeView> = (0..40).map(|i| node(&format!("n{i}"))).collect();
    many[37].queue_depth = 5;
    assert_eq!(p.policy_choice(&meu(), &many), Some(37));
}

#[test]
fn eq1_penalises_the_expected_cold_start() {
    // Logit = gain · queue feature; the cold node (standard: 25 ms, λ · 25 = 0.5) has the
    // higher logit, by 0.25 · gain (4 queued on 4 slots → feature 0.25).
    let mut nodes = vec![node("a"), node("b")];
    nodes[0].warm = false;
    nodes[0].queue_depth = 4;
    nodes[1].queue_depth = 0;
    let (p, _) = placement(&weights_scoring_feature(1, 1.0));
    assert_eq!(
        p.place(&meu(), &nodes).unwrap(),
        1,
        "0.25 − 0.5 < 0: the warm node wins"
    );
    let (p, _) = placement(&weights_scoring_feature(1, 4.0));
    assert_eq!(
        p.place(&meu(), &nodes).unwrap(),
        0,
        "1.0 − 0.5 > 0: the cold node wins"
    );
}

#[test]
fn this_nodes_queue_is_scored_as_given_like_a_peers() {
    // Logit = −10 · queue feature: the shorter queue wins, ties go to the first node. The
    // SchedulerAgent has already left the MEU being placed out of this node's depth.
    let (p, _) = placement(&weights_scoring_feature(1, -10.0));
    let local = NodeView {
        queue_depth: 0,
        queue_cap: usize::MAX,
        ..node("self")
    };
    let peer = NodeView {
        rtt_us: 400,
        ..node("peer")
    };
    assert_eq!(p.place(&meu(), &[local.clone(), peer.clone()]).unwrap(), 0);
    let busier = NodeView {
        queue_depth: 1,
        ..local
    };
    assert_eq!(p.place(&meu(), &[busier, peer]).unwrap(), 1);
}

#[test]
fn unusable_policy_output_falls_back_to_warm_affinity() {
    // Finite weights whose forward pass overflows: inf − inf = NaN for every node.
    let [h0, h1] = DISPATCH_HIDDEN;
    let mut w = weights_scoring_feature(0, 1.0);
    let big = 3.0e38_f32;
    w.dispatch.layers[0].weight = vec![big; NODE_FEATURES * h0];
    w.dispatch.layers[1].weight = vec![big; h0 * h1];
    w.dispatch.layers[2].weight = (0..h1)
        .map(|i| if i % 2 == 0 { big } else { -big })
        .collect();
    let (p, metrics) = placement(&w);
    let nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
    assert_eq!(p.policy_choice(&meu(), &nodes), None);
    let heuristic = WarmAffinity { spill_at: 16 }.place(&meu(), &nodes).unwrap();
    assert_eq!(p.place(&meu(), &nodes).unwrap(), heuristic);
    assert_eq!(metrics.placement_fallback.load(Relaxed), 1);
    assert_eq!(metrics.placement_learned.load(Relaxed), 0);
}

#[test]
fn bad_checkpoints_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let load = |name: &str| LearnedPlacement::load(&dir.path().join(name), 4, metrics.clone());
    assert!(matches!(
        load("missing.safetensors"),
        Err(CheckpointError { .. })
    ));
    std::fs::write(dir.path().join("garbage"), b"not a checkpoint").unwrap();
    assert!(matches!(load("garbage"), Err(CheckpointError { .. })));
    // NaN weights are refused at load, not served.
    let mut nan = PolicyWeights::init(3).unwrap();
    nan.dispatch.layers[1].weight[5] = f32::NAN;
    std::fs::write(
        dir.path().join("nan"),
        nan.to_safetensors(BTreeMap::new()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        load("nan"),
        Err(CheckpointError { message, .. }) if message.contains("non-finite")
    ));
    // Right input and output widths, wrong hidden width: the scorer refuses it.
    let mut narrow = PolicyWeights::init(3).unwrap();
    narrow.dispatch = Mlp::new(
        &[NODE_FEATURES, 8, 1],
        &mut tern_policy::rng::Rng::new(1),
        0.1,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("narrow"),
        narrow.to_safetensors(BTreeMap::new()).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        load("narrow"),
        Err(CheckpointError { message, .. }) if message.contains("widths")
    ));
    let good = PolicyWeights::init(3).unwrap();
    std::fs::write(
        dir.path().join("good"),
        good.to_safetensors(BTreeMap::new()).unwrap(),
    )
    .unwrap();
    assert!(load("good").is_ok());
    // Calibration metadata that is there but incomplete: the constants the networks were
    // trained with are unknown, so the checkpoint is not served.
    let mut meta = calibration().to_metadata();
    meta.remove("calibration.edge.cold_start_ms");
    std::fs::write(
        dir.path().join("half-calibrated"),
        good.to_safetensors(meta).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        load("half-calibrated"),
        Err(CheckpointError { message, .. }) if message.contains("calibration.edge.cold_start_ms")
    ));
}

/// Measured constants unlike the assumed ones in every field the node uses.
fn calibration() -> Calibration {
    let class = |name: &str, cold: f32, watts: f32| ClassCalibration {
        class: name.into(),
        cold_start_ms: cold,
        reuse_ms: 0.001,
        overhead_ms: 0.2,
        speed: 1.0,
        busy_w_per_core: watts,
    };
    Calibration {
        source: "test".into(),
        hop_ms: 0.15,
        classes: vec![
            class("edge", 0.31, 11.0),
            class("standard", 0.28, 10.0),
            class("burst", 0.29, 12.0),
        ],
    }
}

#[test]
fn a_calibrated_checkpoint_is_served_with_the_constants_it_was_trained_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calibrated.safetensors");
    let weights = PolicyWeights::init(3).unwrap();
    std::fs::write(
        &path,
        weights.to_safetensors(calibration().to_metadata()).unwrap(),
    )
    .unwrap();
    let checkpoint = read_checkpoint(&path).unwrap();
    assert_eq!(checkpoint.calibration, Some(calibration()));
    let calibrated = LearnedPlacement::load(&path, 4, Arc::new(Metrics::default())).unwrap();
    let (assumed, _) = placement(&weights);
    let cold_edge = NodeView {
        warm: false,
        class: NodeClass::EdgeSmall,
        ..node("b")
    };
    // Expected cold start of a node without the module: the measured one, not 4.2 ms.
    assert_eq!(
        calibrated.features(&meu(), &cold_edge).expected_cold_ms,
        0.31
    );
    assert_eq!(
        assumed.features(&meu(), &cold_edge).expected_cold_ms,
        SimClass::edge().cold_start_ms
    );
    // Energy in the reward: the same guest time priced at the measured power (11 W on the
    // edge class, 10 W on standard), so edge is now the costlier of the two.
    let on =
        |p: &LearnedPlacement, class| p.reward(&NodeView { class, ..node("a") }, &ran_in(10_000));
    assert!(on(&calibrated, NodeClass::EdgeSmall) < on(&calibrated, NodeClass::Standard));
    assert!(on(&assumed, NodeClass::EdgeSmall) > on(&assumed, NodeClass::Standard));
    assert_eq!(
        TrainedClasses::of(Some(&calibration())).busy_watts_per_core(NodeClass::CpuBurst),
        12.0
    );
    assert_eq!(
        TrainedClasses::of(None),
        TrainedClasses::assumed(),
        "no calibration: the assumed classes"
    );
}

#[test]
fn the_committed_checkpoint_places_every_decision_on_a_usable_node() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/reports/ppo-weights.safetensors");
    let metrics = Arc::new(Metrics::default());
    let p = LearnedPlacement::load(&path, 4, metrics.clone()).unwrap();
    let mut nodes = vec![
        NodeView {
            rtt_us: 0,
            ..node("a")
        },
        NodeView {
            rtt_us: 300,
            warm: false,
            queue_depth: 3,
            ..node("b")
        },
        NodeView {
            rtt_us: 250,
            ..node("c")
        },
    ];
    let n = 20_000;
    let t0 = std::time::Instant::now();
    for i in 0..n {
        nodes[1].queue_depth = i % 7;
        let chosen = p.place(&meu(), &nodes).unwrap();
        assert!(nodes[chosen].usable());
    }
    let per = t0.elapsed() / n as u32;
    println!("learned placement: {per:?} per decision over 3 candidates (this build)");
    assert_eq!(metrics.placement_learned.load(Relaxed), n as u64);
    nodes[0].alive = false;
    nodes[2].alive = false;
    assert_eq!(p.place(&meu(), &nodes).unwrap(), 1);
}

fn ran_in(latency_us: u64) -> Observed {
    Observed {
        latency_us,
        exec_us: latency_us / 2,
        fate: Fate::Answered,
        ..Observed::default()
    }
}

/// Feature 6 is log RTT: a policy that prefers the farthest node.
const RTT_FEATURE: usize = 6;

#[test]
fn the_guard_hands_over_to_warm_affinity_while_the_policy_does_worse_and_back() {
    let (p, metrics) = placement(&weights_scoring_feature(RTT_FEATURE, 10.0));
    let p = p.with_guard(GuardSettings {
        window: 40,
        margin_ms: 0.1,
    });
    let mut nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
    let owner = WarmAffinity::owner("f", &nodes).unwrap();
    let far = (owner + 1) % 3;
    nodes[far].rtt_us = 2_000;
    assert_eq!(p.policy_choice(&meu(), &nodes), Some(far));
    assert_eq!(p.in_charge(), Arm::Learned);
    // Decide, then report 5 ms on `slow` and 0.5 ms anywhere else.
    let run = |slow: usize, n: usize| {
        for _ in 0..n {
            let d = p.decide(&meu(), &nodes).unwrap();
            let latency = if d.node == slow { 5_000 } else { 500 };
            p.observe(&meu(), &nodes, d, &ran_in(latency));
        }
    };
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    run(far, 400);
    assert_eq!(p.in_charge(), Arm::Heuristic, "the policy's node is slow");
    assert_eq!(metrics.placement_guard_learned.load(Relaxed), 0);
    let (learned, heuristic) = (
        count(&metrics.placement_learned),
        count(&metrics.placement_heuristic),
    );
    run(far, 100);
    assert_eq!(
        count(&metrics.placement_heuristic) - heuristic,
        95,
        "in charge: all but the probes (1 in {GUARD_PROBE_EVERY})"
    );
    assert_eq!(count(&metrics.placement_learned) - learned, 5);
    // Now the owner is the slow one: the learned probes show it and the policy is back.
    run(owner, 400);
    assert_eq!(p.in_charge(), Arm::Learned);
    assert_eq!(metrics.placement_guard_learned.load(Relaxed), 1);
    assert_eq!(count(&metrics.placement_observed), 900);
    assert_eq!(count(&metrics.placement_fallback), 0);
    // A guest's own errors say nothing about placement: not observed, the guard stays.
    for _ in 0..400 {
        let d = p.decide(&meu(), &nodes).unwrap();
        let failed = Observed {
            latency_us: if d.node == far { 9_000_000 } else { 1 },
            fate: Fate::GuestError,
            ..Observed::default()
        };
        p.observe(&meu(), &nodes, d, &failed);
    }
    assert_eq!(p.in_charge(), Arm::Learned);
    assert_eq!(count(&metrics.placement_observed), 900);
    // A node that refuses (overloaded, unavailable) answers fast, but counts as the worst
    // outcome: the policy that keeps choosing it loses charge.
    for _ in 0..400 {
        let d = p.decide(&meu(), &nodes).unwrap();
        let outcome = if d.node == far {
            Observed {
                latency_us: 10,
                fate: Fate::Refused,
                ..Observed::default()
            }
        } else {
            ran_in(2_000)
        };
        p.observe(&meu(), &nodes, d, &outcome);
    }
    assert_eq!(p.in_charge(), Arm::Heuristic);
    // A failover re-placement follows the arm in charge, without probing or counting a
    // heuristic decision twice.
    let probes = count(&metrics.placement_learned);
    for _ in 0..40 {
        assert_eq!(p.place(&meu(), &nodes).unwrap(), owner);
    }
    assert_eq!(count(&metrics.placement_learned), probes);
}

#[test]
fn rewards_charge_latency_cold_starts_energy_and_the_sla() {
    let (p, _) = placement(&PolicyWeights::init(1).unwrap());
    let warm = p.reward(&node("a"), &ran_in(1_000));
    let cold = p.reward(
        &node("a"),
        &Observed {
            cold_start: true,
            cold_us: 20_000,
            ..ran_in(1_000)
        },
    );
    let slower = p.reward(&node("a"), &ran_in(2_000));
    let late = p.reward(&node("a"), &ran_in(200_000));
    assert!(warm < 0.0 && warm > -0.1, "{warm}");
    assert!(slower < warm && cold < slower, "{warm} {slower} {cold}");
    assert!(late < -1.0, "past the 150 ms SLA: {late}");
    // The same guest time costs more energy on a class with hungrier cores.
    let edge = NodeView {
        class: NodeClass::EdgeSmall,
        ..node("a")
    };
    assert!(p.reward(&edge, &ran_in(10_000)) > p.reward(&node("a"), &ran_in(10_000)));
}

/// Online learning in the node: decisions sample from the policy, their outcomes become
/// PPO transitions, the trainer's weights are swapped in and serve, and they have learned
/// to avoid the node that answers slowly.
#[cfg(feature = "online-learning")]
#[test]
fn online_learning_swaps_in_weights_that_avoid_the_slow_node() {
    let weights = PolicyWeights::init(11).unwrap();
    let metrics = Arc::new(Metrics::default());
    let p = LearnedPlacement::new(&weights, 4, metrics.clone())
        .unwrap()
        .with_online_learning(weights.clone(), 64)
        .unwrap();
    assert!(p.observes());
    let nodes: Vec<NodeView> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| NodeView {
            rtt_us: 300 * i as u64,
            ..node(n)
        })
        .collect();
    // The farthest node is the slow one (a score rising or falling with one feature is
    // quick to learn from a near-uniform start).
    let slow = 2;
    let features = p.all_features(&meu(), &nodes);
    let p_slow = |w: &PolicyWeights| {
        w.dispatch_log_prob(&features, DEFAULT_LAMBDA_DISPATCH, slow)
            .unwrap()
            .exp()
    };
    let before = p_slow(&weights);
    let mut picks = [0usize; 3];
    // Rounds of one batch each: every round's decisions are made with the weights the
    // trainer last swapped in, so none is dropped as stale and the run is reproducible.
    for round in 1..=60u64 {
        for _ in 0..64 {
            let d = p.decide(&meu(), &nodes).unwrap();
            picks[d.node] += 1;
            let latency = if d.node == slow { 40_000 } else { 1_000 };
            p.observe(&meu(), &nodes, d, &ran_in(latency));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while p.online.as_ref().unwrap().learner.updates() < round {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no update"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert_eq!(metrics.policy_dropped_transitions.load(Relaxed), 0);
    // The next decision swaps the last weights in.
    p.decide(&meu(), &nodes).unwrap();
    assert_eq!(metrics.policy_updates.load(Relaxed), 60);
    assert!(
        picks.iter().all(|&n| n > 0),
        "sampling tries every node: {picks:?}"
    );
    let after = p_slow(&p.online.as_ref().unwrap().learner.weights().load());
    println!("P(slow node): {before:.3} → {after:.3}; picks {picks:?}");
    assert!(after < before * 0.5, "P(slow node) {before} → {after}");
    assert_eq!(metrics.placement_fallback.load(Relaxed), 0);
}

/// An outcome that arrives after the weights that decided it were replaced is still
/// trained on (with those weights' log-probability): the second batch fills only with it.
#[cfg(feature = "online-learning")]
#[test]
fn a_late_outcome_is_learned_with_the_weights_that_decided_it() {
    let weights = PolicyWeights::init(5).unwrap();
    let metrics = Arc::new(Metrics::default());
    let p = LearnedPlacement::new(&weights, 4, metrics)
        .unwrap()
        .with_online_learning(weights, 64)
        .unwrap();
    let nodes: Vec<NodeView> = ["a", "b"].iter().map(|n| node(n)).collect();
    let online = p.online.as_ref().unwrap();
    let wait_for = |updates: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while online.learner.updates() < updates {
            assert!(std::time::Instant::now() < deadline, "no update {updates}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    };
    let decisions: Vec<Decision> = (0..65).map(|_| p.decide(&meu(), &nodes).unwrap()).collect();
    for d in &decisions[..64] {
        p.observe(&meu(), &nodes, *d, &ran_in(1_000));
    }
    wait_for(1);
    // 63 decisions by the swapped-in weights, then the 65th outcome arrives, late: it
    // completes the second batch.
    for _ in 0..63 {
        let d = p.decide(&meu(), &nodes).unwrap();
        assert_eq!(d.tag >> TAG_BITS, 1, "decided by the swapped-in weights");
        p.observe(&meu(), &nodes, d, &ran_in(1_000));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        online.learner.updates(),
        1,
        "63 transitions do not make a batch"
    );
    p.observe(&meu(), &nodes, decisions[64], &ran_in(1_000));
    wait_for(2);
}
