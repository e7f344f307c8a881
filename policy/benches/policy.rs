//! Criterion benches: one serving-time dispatch decision over 16 candidates (plain-Rust forward
//! pass; target p50 ≤ 2 µs) and one PPO epoch on 2,048 dispatch samples (candle backend).
//!
//! `CARGO_TARGET_DIR=target-policy cargo bench -p tern-policy --bench policy -- --quick`
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use tern_policy::candle_backend::CandleBackend;
use tern_policy::features::NodeFeatures;
use tern_policy::policy::{DispatchScorer, PolicyWeights};
use tern_policy::ppo::{DispatchRollout, PpoConfig, QuotaRollout, ppo_update};
use tern_policy::rng::Rng;

fn candidates(r: &mut Rng, n: usize) -> Vec<NodeFeatures> {
    (0..n)
        .map(|i| NodeFeatures {
            warm_instances: r.below(4) as f32,
            queue_depth: r.below(10) as f32,
            concurrency: 8.0,
            cpu_util: r.next_f32(),
            mem_util: r.next_f32(),
            expected_cold_ms: [0.0, 4.2, 25.0, 63.5][r.below(4)],
            recent_latency_ms: 100.0 * r.next_f32(),
            rtt_ms: 10.0 * r.next_f32(),
            expected_exec_ms: 50.0 * r.next_f32(),
            time_limit_ms: 300.0,
            speed: 1.0,
            class: (i % 3) as u8,
            alive: true,
            has_capacity: i != 3,
        })
        .collect()
}

fn dispatch_decision(c: &mut Criterion) {
    let w = PolicyWeights::init(1).unwrap();
    let fast = DispatchScorer::from_mlp(&w.dispatch).unwrap();
    let mut r = Rng::new(2);
    let sets: Vec<Vec<NodeFeatures>> = (0..64).map(|_| candidates(&mut r, 16)).collect();
    let mut k = 0;
    c.bench_function("dispatch_decision_16_nodes_plain_rust", |b| {
        b.iter(|| {
            k = (k + 1) & 63;
            black_box(fast.choose(black_box(&sets[k]), 0.02))
        })
    });
    c.bench_function("dispatch_decision_16_nodes_generic_mlp", |b| {
        b.iter(|| {
            k = (k + 1) & 63;
            black_box(w.choose(black_box(&sets[k]), 0.02))
        })
    });
}

fn ppo_epoch(c: &mut Criterion) {
    let w = PolicyWeights::init(1).unwrap();
    let mut r = Rng::new(3);
    let mut ro = DispatchRollout::default();
    for i in 0..2048 {
        let cands = candidates(&mut r, 16);
        let a = r.below(16);
        let a = if a == 3 { 4 } else { a };
        ro.push(
            &cands,
            a,
            (1.0f32 / 15.0).ln(),
            -0.2,
            -0.1 - r.next_f32() * 0.5,
            i % 256 == 255,
        )
        .unwrap();
    }
    let cfg = PpoConfig {
        epochs: 1,
        minibatch: 512,
        ..PpoConfig::default()
    };
    let mut be = CandleBackend::new(&w).unwrap();
    let mut rng = Rng::new(4);
    c.bench_function("ppo_epoch_2048_samples_16_nodes_candle", |b| {
        b.iter(|| {
            black_box(
                ppo_update(&mut be, &ro, &QuotaRollout::default(), &cfg, 2048, &mut rng).unwrap(),
            )
        })
    });
}

criterion_group! {
    name = decision;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = dispatch_decision
}
criterion_group! {
    name = training;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = ppo_epoch
}
criterion_main!(decision, training);
