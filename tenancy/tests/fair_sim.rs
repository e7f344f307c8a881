//! Weighted fair admission in a seeded virtual-time simulation, through the public API only.
//!
//! A node with a fixed number of instance slots runs CPU-bound work: every MEU holds its slot
//! for a service time drawn from the same distribution for every tenant (8–12 ms, seeded), so
//! a tenant's fraction of slot grants is its fraction of the node. Time is a number of
//! milliseconds advanced from one completion to the next; nothing reads a clock.

#![allow(clippy::unwrap_used)]

use tern_tenancy::{FairQueue, LaneConfig, ShareParams, Slot, TenantName, Weight};

/// SplitMix64: a tiny seeded generator, so the simulation is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn service_ms(&mut self) -> u64 {
        8 + self.next() % 5
    }
}

fn name(s: &str) -> TenantName {
    s.parse().unwrap()
}

fn lane(weight: u32, max_concurrent: u32) -> LaneConfig {
    LaneConfig {
        weight: Weight::new(weight).unwrap(),
        max_concurrent,
        memory_budget_bytes: 1 << 40,
        max_queued: 64,
        latency_target_ms: 500,
    }
}

/// One tenant of a simulation.
struct Spec {
    name: &'static str,
    config: LaneConfig,
    /// Kept backlogged (queue topped up to its bound) from this time on; idle before.
    active_from_ms: u64,
    /// Latency level fed to Eq. 6, ms (None: the simulation measures the tenant's wait).
    latency_ms: Option<f64>,
}

fn spec(name: &'static str, weight: u32) -> Spec {
    Spec {
        name,
        config: lane(weight, u32::MAX),
        active_from_ms: 0,
        latency_ms: Some(0.0),
    }
}

#[derive(Default, Clone)]
struct Tally {
    /// Grants in the measured window.
    grants: u64,
    /// Eq. 6 share at each grant in the window, summed (to average).
    share_sum: f64,
    max_running: u32,
    /// Virtual time of the tenant's first grant.
    first_grant_ms: Option<u64>,
    /// Grants to others between the tenant's first push and its first grant.
    grants_before_first: u64,
}

struct Outcome {
    tallies: Vec<Tally>,
    window_grants: u64,
}

impl Outcome {
    fn fraction(&self, i: usize) -> f64 {
        self.tallies[i].grants as f64 / self.window_grants as f64
    }

    /// The Eq. 6 share the tenant had on average over the window's grants.
    fn mean_share(&self, i: usize) -> f64 {
        self.tallies[i].share_sum / self.window_grants as f64
    }
}

/// Runs `slots` instance slots until `end_ms`, counting grants from `measure_from_ms` on.
fn simulate(
    params: ShareParams,
    tenants: &[Spec],
    slots: usize,
    measure_from_ms: u64,
    end_ms: u64,
    seed: u64,
) -> Outcome {
    let mut rng = Rng(seed);
    let names: Vec<TenantName> = tenants.iter().map(|t| name(t.name)).collect();
    let mut q: FairQueue<u64> = FairQueue::new(params, 1 << 20);
    for (n, t) in names.iter().zip(tenants) {
        q.upsert_tenant(n.clone(), t.config);
    }
    // Each running MEU: (end time, tenant, its slot).
    let mut running: Vec<(u64, usize, Slot)> = Vec::new();
    let mut tallies = vec![Tally::default(); tenants.len()];
    // Measured waits: queued-at time of each item, by id; per tenant, a moving average.
    let mut queued_at: Vec<u64> = Vec::new();
    let mut wait_avg = vec![0.0f64; tenants.len()];
    let mut window_grants = 0u64;
    let mut now = 0u64;

    while now < end_ms {
        // Keep every active tenant backlogged: top its queue up to the bound.
        for (i, t) in tenants.iter().enumerate() {
            if now < t.active_from_ms {
                continue;
            }
            while q.stats(&names[i]).unwrap().queued < t.config.max_queued {
                q.push(&names[i], queued_at.len() as u64, 0).unwrap();
                queued_at.push(now);
            }
            let latency = t.latency_ms.unwrap_or(wait_avg[i]);
            q.set_latency(&names[i], latency);
        }
        // Fill every free slot.
        while running.len() < slots {
            let shares = q.shares();
            let Some(g) = q.grant() else { break };
            let i = names.iter().position(|n| n == g.slot.tenant()).unwrap();
            let wait = (now - queued_at[g.item as usize]) as f64;
            wait_avg[i] += 0.05 * (wait - wait_avg[i]);
            let tally = &mut tallies[i];
            if tally.first_grant_ms.is_none() {
                tally.first_grant_ms = Some(now);
            }
            if now >= measure_from_ms {
                tally.grants += 1;
                window_grants += 1;
                for (n, s) in &shares {
                    let k = names.iter().position(|m| m == n).unwrap();
                    tallies[k].share_sum += s;
                }
            }
            for (j, t) in tenants.iter().enumerate() {
                if j != i && now >= t.active_from_ms && tallies[j].first_grant_ms.is_none() {
                    tallies[j].grants_before_first += 1;
                }
            }
            running.push((now + rng.service_ms(), i, g.slot));
            let r = q.stats(&names[i]).unwrap().running;
            tallies[i].max_running = tallies[i].max_running.max(r);
        }
        // Advance to the next completion (the earliest; ties in slot order).
        let Some(k) = (0..running.len()).min_by_key(|&k| running[k].0) else {
            break;
        };
        let (end, _, slot) = running.swap_remove(k);
        let started = now;
        now = end.max(started);
        q.complete(slot, 10);
    }
    Outcome {
        tallies,
        window_grants,
    }
}

fn assert_within_10_percent(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 0.10 * want,
        "{what}: got {got:.4}, Eq. 6 share {want:.4}"
    );
}

#[test]
fn two_backlogged_tenants_weighted_1_to_3_get_a_quarter_and_three_quarters() {
    let tenants = [spec("a", 1), spec("b", 3)];
    let out = simulate(ShareParams::default(), &tenants, 8, 1_000, 20_000, 1);
    assert!(out.window_grants > 10_000, "{}", out.window_grants);
    for (i, want) in [0.25, 0.75].into_iter().enumerate() {
        assert_within_10_percent(out.mean_share(i), want, "Eq. 6 share");
        assert_within_10_percent(out.fraction(i), want, tenants[i].name);
    }
}

#[test]
fn three_backlogged_tenants_weighted_1_2_5_get_an_eighth_a_quarter_and_five_eighths() {
    let tenants = [spec("a", 1), spec("b", 2), spec("c", 5)];
    let out = simulate(ShareParams::default(), &tenants, 8, 1_000, 20_000, 2);
    for (i, want) in [0.125, 0.25, 0.625].into_iter().enumerate() {
        assert_within_10_percent(out.mean_share(i), want, "Eq. 6 share");
        assert_within_10_percent(out.fraction(i), want, tenants[i].name);
    }
}

#[test]
fn a_tenant_missing_its_latency_target_gets_its_larger_eq6_share() {
    // Equal weights; a waits 3× its 500 ms target: D_a = 1 + α·min(E, 2) + β·1 = 4 with the
    // defaults (α = β = 1, E = 2), D_b = 1 + 0 + 1 = 2 (queues full), so R = 2/3, 1/3.
    let mut a = spec("a", 1);
    a.latency_ms = Some(1500.0);
    let tenants = [a, spec("b", 1)];
    let out = simulate(ShareParams::default(), &tenants, 8, 1_000, 20_000, 3);
    for (i, want) in [2.0 / 3.0, 1.0 / 3.0].into_iter().enumerate() {
        assert_within_10_percent(out.mean_share(i), want, "Eq. 6 share");
        assert_within_10_percent(out.fraction(i), want, tenants[i].name);
    }
}

#[test]
fn with_measured_waits_fed_back_each_tenant_still_gets_its_current_eq6_share() {
    // The latency input is the simulation's own measured slot wait, which moves with the
    // shares; whatever it settles to, the slots follow the share Eq. 6 gives at each grant.
    // A 100 ms target, below the waits a 64-deep queue gives, makes the latency term matter.
    let mut tenants = [spec("a", 1), spec("b", 3)];
    for t in &mut tenants {
        t.latency_ms = None;
        t.config.latency_target_ms = 100;
    }
    let out = simulate(ShareParams::default(), &tenants, 8, 2_000, 30_000, 4);
    for (i, t) in tenants.iter().enumerate() {
        assert_within_10_percent(out.fraction(i), out.mean_share(i), t.name);
    }
    // The weight-1 tenant waits longer, so its demand factor and share rise above 1/4.
    assert!(out.mean_share(0) > 0.25, "{}", out.mean_share(0));
}

#[test]
fn an_idle_tenants_share_is_redistributed_to_the_backlogged_ones() {
    // c (weight 5) has nothing queued: a and b split the node 1:2, no slot stays idle.
    let mut c = spec("c", 5);
    c.active_from_ms = u64::MAX;
    let tenants = [spec("a", 1), spec("b", 2), c];
    let out = simulate(ShareParams::default(), &tenants, 8, 1_000, 20_000, 5);
    assert_eq!(out.tallies[2].grants, 0);
    assert_within_10_percent(out.fraction(0), 1.0 / 3.0, "a");
    assert_within_10_percent(out.fraction(1), 2.0 / 3.0, "b");
    // Work-conserving: 8 slots of ~10 ms over 19 s is ~15 200 grants.
    assert!(out.window_grants > 14_000, "{}", out.window_grants);
}

#[test]
fn a_tenant_at_its_concurrency_cap_never_exceeds_it_and_the_rest_goes_to_others() {
    // c would get 5/8 of 8 slots by weight, but is capped at 2 running.
    let mut c = spec("c", 5);
    c.config.max_concurrent = 2;
    let tenants = [spec("a", 1), spec("b", 2), c];
    let out = simulate(ShareParams::default(), &tenants, 8, 1_000, 20_000, 6);
    assert!(out.tallies[2].max_running <= 2);
    assert_eq!(
        out.tallies[2].max_running, 2,
        "the cap is used, not undershot"
    );
    // c holds 2 of 8 slots; a and b share the other 6 by weight 1:2.
    assert_within_10_percent(out.fraction(2), 0.25, "c");
    assert_within_10_percent(out.fraction(0), 0.75 / 3.0, "a");
    assert_within_10_percent(out.fraction(1), 0.75 * 2.0 / 3.0, "b");
    assert!(out.window_grants > 14_000, "{}", out.window_grants);
}

#[test]
fn a_tenant_that_arrives_late_is_served_within_one_grant_per_other_tenant() {
    // a and b have been backlogged for 5 s when c, weight 1, queues its first work.
    let mut c = spec("c", 1);
    c.active_from_ms = 5_000;
    let tenants = [spec("a", 1), spec("b", 10), c];
    let out = simulate(ShareParams::default(), &tenants, 8, 5_000, 10_000, 7);
    let c = &out.tallies[2];
    assert!(c.first_grant_ms.unwrap() >= 5_000);
    assert!(
        c.grants_before_first <= 2,
        "{} grants went to others first",
        c.grants_before_first
    );
    // And after arriving it gets its share, not a burst to catch up on its idle time:
    // weights 1:10:1 → 1/12.
    assert_within_10_percent(out.fraction(2), 1.0 / 12.0, "c");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let out = simulate(
            ShareParams::default(),
            &[spec("a", 1), spec("b", 3)],
            4,
            0,
            2_000,
            seed,
        );
        out.tallies.iter().map(|t| t.grants).collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
}
