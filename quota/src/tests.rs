#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tern_policy::policy::{CPU_SHARES, KEEP_WARM, MEM_TIERS_MB, PolicyWeights, quota_head_ranges};
use tern_policy::sim::RewardConfig;

use crate::*;

fn settings() -> QuotaSettings {
    QuotaSettings {
        interval: Duration::from_secs(1),
        node_cores: 2.0,
        node_memory_bytes: 4 << 30,
        cell_overhead_bytes: 64 << 20,
        keep_warm: Duration::from_secs(600),
        watts_per_core: 5.0,
        reward: RewardConfig::default(),
    }
}

/// Weights whose quota network always picks `cpu`, `mem` and `keep` (the last layer's biases
/// decide; its weights are zero).
fn network_choosing(cpu: usize, mem: usize, keep: usize) -> PolicyWeights {
    let mut w = PolicyWeights::init(5).unwrap();
    let last = w.quota.layers.last_mut().unwrap();
    last.weight.iter_mut().for_each(|x| *x = 0.0);
    last.bias.iter_mut().for_each(|x| *x = 0.0);
    let [a, b, c] = quota_head_ranges();
    last.bias[a.start + cpu] = 5.0;
    last.bias[b.start + mem] = 5.0;
    last.bias[c.start + keep] = 5.0;
    w
}

/// One function: `calls` in the interval of `exec_ms` each, `latency_ms` end to end.
fn function(calls: u64, exec_ms: u64, latency_ms: u64) -> FunctionWindow {
    FunctionWindow {
        calls,
        cold_starts: 0,
        latency_us: calls * latency_ms * 1000,
        exec_us: calls * exec_ms * 1000,
        cold_us: 0,
        queued: 0.0,
        running: 0.0,
        guest_memory_bytes: 64 << 20,
    }
}

fn tenant(functions: Vec<FunctionWindow>) -> TenantWindow {
    TenantWindow {
        weight: 1.0,
        memory_max_bytes: Some(2 << 30),
        functions,
    }
}

#[test]
fn without_a_network_every_tenant_gets_the_static_shares() {
    let mut c = QuotaController::eq6(settings()).unwrap();
    let out = c.decide(&[("a", tenant(vec![function(100, 5, 6)]))]);
    assert_eq!(
        out,
        vec![(
            "a",
            TenantQuota {
                source: Source::Eq6,
                cpu_max_cores: None,
                memory_high_bytes: None,
                keep_warm: Duration::from_secs(600),
            }
        )]
    );
    assert_eq!(c.in_charge(), Source::Eq6);
    assert_eq!(c.decisions().eq6, 1);
}

#[test]
fn the_networks_choice_per_guest_becomes_the_cells_cap_memory_high_and_keep_warm() {
    // 0.5 cores, 256 MiB and 2 kept warm per guest.
    let c = QuotaController::<&str>::learned(settings(), network_choosing(0, 1, 2)).unwrap();
    // 100 calls of 5 ms a second keep 0.5 guests busy (one counts); 1,000 of 2 ms keep 2.
    let q = c.learned_quota(&tenant(vec![function(100, 5, 6), function(1_000, 2, 3)]));
    assert_eq!(q.source, Source::Learned);
    assert_eq!(q.cpu_max_cores, Some(CPU_SHARES[0] as f64 * (1.0 + 2.0)));
    let guests_kept = 2.0f64.max(KEEP_WARM[2] as f64) + 1.0f64.max(KEEP_WARM[2] as f64);
    let mib = MEM_TIERS_MB[1] as f64 * guests_kept;
    assert_eq!(
        q.memory_high_bytes,
        Some((mib * (1u64 << 20) as f64) as u64 + (64 << 20))
    );
    assert_eq!(q.keep_warm, Duration::from_secs(600));
}

#[test]
fn a_choice_past_the_node_or_the_hard_limit_sets_no_cap_and_keeping_none_warm_shortens_keep_warm() {
    // 2 cores and 512 MiB per guest, none kept warm.
    let c = QuotaController::<&str>::learned(settings(), network_choosing(2, 2, 0)).unwrap();
    let mut t = tenant(vec![function(10, 1, 2)]);
    t.memory_max_bytes = Some(300 << 20);
    let q = c.learned_quota(&t);
    assert_eq!(q.source, Source::Learned);
    assert_eq!(q.cpu_max_cores, None, "2 cores is the whole node");
    assert_eq!(q.memory_high_bytes, None, "the hard limit (300 MiB) rules");
    assert_eq!(q.keep_warm, Duration::from_secs(2), "two intervals");
}

#[test]
fn an_idle_tenant_gets_the_static_shares_and_no_decision_to_judge() {
    let mut c = QuotaController::learned(settings(), network_choosing(0, 0, 0)).unwrap();
    let idle = tenant(vec![FunctionWindow::default()]);
    let q = c.decide(&[("idle", idle)])[0].1;
    assert_eq!(q.source, Source::Eq6);
    assert_eq!(q.cpu_max_cores, None);
    assert_eq!(
        c.decisions(),
        Decisions::default(),
        "nothing decided for an idle tenant"
    );
    assert!(c.pending.is_empty());
}

#[test]
fn an_idle_tenant_keeps_the_keep_warm_time_of_its_last_decision_until_forgotten() {
    // The network keeps nothing warm: two intervals.
    let mut c = QuotaController::learned(settings(), network_choosing(0, 0, 0)).unwrap();
    let busy = tenant(vec![function(10, 1, 2)]);
    let idle = tenant(vec![FunctionWindow::default()]);
    // Until a learned decision comes (the guard probes the static shares now and then).
    let mut last = None;
    for _ in 0..GUARD_PROBE_EVERY {
        last = Some(c.decide(&[("a", busy.clone())])[0].1);
        if last.is_some_and(|q| q.source == Source::Learned) {
            break;
        }
    }
    assert_eq!(last.map(|q| q.source), Some(Source::Learned));
    let q = c.decide(&[("a", idle.clone())])[0].1;
    assert_eq!(q.source, Source::Eq6);
    assert_eq!(
        q.keep_warm,
        Duration::from_secs(2),
        "the network's, while idle"
    );
    // Forgotten once not passed: back to the node's keep-warm.
    c.decide(&[]);
    let q = c.decide(&[("a", idle)])[0].1;
    assert_eq!(q.keep_warm, Duration::from_secs(600));
}

#[test]
fn non_finite_features_fall_back_to_the_static_shares() {
    let mut c = QuotaController::learned(settings(), network_choosing(0, 0, 0)).unwrap();
    let mut t = tenant(vec![function(10, 1, 2)]);
    t.weight = f64::NAN;
    let q = c.learned_quota(&t);
    assert_eq!(q.source, Source::Fallback);
    assert_eq!(q.cpu_max_cores, None);
    // Through `decide`, whichever arm the guard picks: the decision is counted by source.
    for _ in 0..GUARD_PROBE_EVERY {
        c.decide(&[("a", t.clone())]);
    }
    assert!(c.decisions().fallback >= 1, "{:?}", c.decisions());
    assert_eq!(c.decisions().learned, 0);
}

#[test]
fn weights_of_the_wrong_shape_are_refused() {
    let mut w = PolicyWeights::init(1).unwrap();
    w.quota.layers.pop();
    assert!(matches!(
        QuotaController::<&str>::learned(settings(), w),
        Err(QuotaError::Weights(_))
    ));
    let mut s = settings();
    s.interval = Duration::ZERO;
    assert!(matches!(
        QuotaController::<&str>::eq6(s),
        Err(QuotaError::Settings(_))
    ));
}

/// Runs `intervals` intervals in which a tenant's latency is `learned_ms` after a learned
/// decision and `static_ms` after a static one; which arm ends in charge, and the decisions.
fn run(learned_ms: u64, static_ms: u64, intervals: usize) -> (Source, Decisions) {
    let mut c = QuotaController::learned(settings(), network_choosing(1, 1, 1)).unwrap();
    let mut last: Option<Source> = None;
    for _ in 0..intervals {
        let latency = match last {
            Some(Source::Learned) => learned_ms,
            Some(_) => static_ms,
            None => 1,
        };
        let out = c.decide(&[("a", tenant(vec![function(50, 1, latency)]))]);
        last = Some(out[0].1.source);
    }
    (c.in_charge(), c.decisions())
}

#[test]
fn the_guard_hands_decisions_to_the_static_shares_while_the_network_does_worse() {
    let (in_charge, d) = run(200, 5, 200);
    assert_eq!(in_charge, Source::Eq6);
    assert!(d.eq6 > d.learned, "{d:?}");
    // Probes keep the network's rewards fresh.
    assert!(
        d.learned >= 200 / GUARD_PROBE_EVERY - GUARD_WINDOW as u64,
        "{d:?}"
    );
}

#[test]
fn the_network_keeps_charge_while_it_does_at_least_as_well() {
    let (in_charge, d) = run(5, 200, 200);
    assert_eq!(in_charge, Source::Learned);
    assert!(d.learned > d.eq6, "{d:?}");
}

#[test]
fn tenants_are_judged_by_their_own_interval_and_forgotten_when_gone() {
    let mut c = QuotaController::learned(settings(), network_choosing(1, 1, 1)).unwrap();
    let busy = tenant(vec![function(50, 1, 2)]);
    c.decide(&[("a", busy.clone()), ("b", busy.clone())]);
    assert_eq!(c.pending.len(), 2);
    c.decide(&[("a", busy)]);
    assert_eq!(c.pending.keys().copied().collect::<Vec<_>>(), vec!["a"]);
}
