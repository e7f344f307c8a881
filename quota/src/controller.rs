//! The interval's decisions: which arm decides each tenant, what the network chose, and what
//! that means for the tenant's cell.

use std::collections::BTreeMap;
use std::time::Duration;

use tern_policy::online::{Arm, Guard};
use tern_policy::policy::PolicyWeights;
use tern_policy::sim::RewardConfig;

use crate::QuotaError;
use crate::window::TenantWindow;

/// Rewards (tenant-intervals with calls) each arm keeps in the guard's rolling means.
pub const GUARD_WINDOW: usize = 32;
/// How much lower (reward units: ms of latency-equivalent cost per call / 100) the learned
/// arm's rolling mean may be before the static shares take over: 1 ms per call.
pub const GUARD_MARGIN: f32 = 0.01;
/// One decision in every block of this many goes to the arm not in charge, so both keep fresh
/// rewards. Quota decisions are few (one per active tenant per interval), hence a larger share
/// than dispatch's 5 %.
pub const GUARD_PROBE_EVERY: u64 = 5;
/// The smallest CPU cap a decision sets, cores: a tenant is never starved outright.
pub const MIN_CPU_CORES: f64 = 0.1;

/// What the controller knows about the node.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaSettings {
    /// How often [`QuotaController::decide`] is called (the windows' length).
    pub interval: Duration,
    /// CPU cores the node's cells share.
    pub node_cores: f64,
    /// Memory of the node's guests, bytes.
    pub node_memory_bytes: u64,
    /// What a cell needs besides its guests (runtime, stacks), bytes: added to the guests'
    /// memory in a `memory_high`.
    pub cell_overhead_bytes: u64,
    /// How long an idle cell is kept by default (`cell_keep_warm_secs`).
    pub keep_warm: Duration,
    /// Power of one busy core, W (energy term of the reward).
    pub watts_per_core: f64,
    /// The reward both arms are judged by.
    pub reward: RewardConfig,
}

/// Who decided a tenant's quota for an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The quota network.
    Learned,
    /// The static Eq. 6 shares: CPU by weight under contention (the cell's `cpu.weight`), no
    /// cap, the tenant's hard memory quota, the node's keep-warm.
    Eq6,
    /// The network gave no usable answer (non-finite features or outputs), so the static
    /// shares hold.
    Fallback,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Learned, Source::Eq6, Source::Fallback];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Learned => "learned",
            Source::Eq6 => "eq6",
            Source::Fallback => "fallback",
        }
    }
}

/// A tenant's quota on this node for the next interval, within its hard quotas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TenantQuota {
    pub source: Source,
    /// CPU cap, cores (the cell's `cpu.max` / `cpu.cfs_quota_us`); `None`: no cap.
    pub cpu_max_cores: Option<f64>,
    /// Where memory reclaim starts (`memory.high`; v1's soft limit); `None`: only the hard
    /// limit. Never above the tenant's hard limit.
    pub memory_high_bytes: Option<u64>,
    /// How long the tenant's cell is kept once idle.
    pub keep_warm: Duration,
}

/// Decisions taken for active tenants, by source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub learned: u64,
    pub eq6: u64,
    pub fallback: u64,
}

impl Decisions {
    pub fn get(&self, source: Source) -> u64 {
        match source {
            Source::Learned => self.learned,
            Source::Eq6 => self.eq6,
            Source::Fallback => self.fallback,
        }
    }
}

/// Per-tenant quota decisions on one node, one call per interval. Pure: the caller passes
/// the intervals in and applies the answers.
#[derive(Debug)]
pub struct QuotaController<K> {
    settings: QuotaSettings,
    /// The quota network, when one is served.
    network: Option<PolicyWeights>,
    guard: Guard,
    /// Who decided each tenant's current interval: judged by its reward at the next call.
    pub(crate) pending: BTreeMap<K, Source>,
    /// The keep-warm time of each tenant's last active decision: it holds while the tenant is
    /// idle, which is when keep-warm matters.
    keep_warm: BTreeMap<K, Duration>,
    decisions: Decisions,
}

impl<K: Ord + Clone> QuotaController<K> {
    /// Static Eq. 6 shares only.
    pub fn eq6(settings: QuotaSettings) -> Result<Self, QuotaError> {
        check(&settings)?;
        Ok(Self {
            settings,
            network: None,
            guard: Guard::new(GUARD_WINDOW, GUARD_MARGIN, GUARD_PROBE_EVERY),
            pending: BTreeMap::new(),
            keep_warm: BTreeMap::new(),
            decisions: Decisions::default(),
        })
    }

    /// The quota network of `weights`, guarded by the static shares (the network starts in
    /// charge). Refuses weights with wrong widths or non-finite values.
    pub fn learned(settings: QuotaSettings, weights: PolicyWeights) -> Result<Self, QuotaError> {
        weights.validate()?;
        let mut c = Self::eq6(settings)?;
        c.network = Some(weights);
        Ok(c)
    }

    /// Which arm is in charge (the static shares when no network is served).
    pub fn in_charge(&self) -> Source {
        match (&self.network, self.guard.in_charge()) {
            (Some(_), Arm::Learned) => Source::Learned,
            _ => Source::Eq6,
        }
    }

    /// Decisions taken so far, by source.
    pub fn decisions(&self) -> Decisions {
        self.decisions
    }

    /// The quota of each tenant for the next interval, from the interval that just ended.
    ///
    /// First the decision each tenant had for that interval is judged by the interval's
    /// reward (a tenant without calls gives none). Then each active tenant gets a decision
    /// from the arm the guard picks; an idle tenant gets the static shares with the keep-warm
    /// time of its last decision (that is when keep-warm matters), and nothing to judge.
    /// Tenants not passed are forgotten.
    pub fn decide(&mut self, tenants: &[(K, TenantWindow)]) -> Vec<(K, TenantQuota)> {
        let mut pending = std::mem::take(&mut self.pending);
        for (tenant, window) in tenants {
            let Some(source) = pending.remove(tenant) else {
                continue;
            };
            let arm = match source {
                Source::Learned => Arm::Learned,
                Source::Eq6 => Arm::Heuristic,
                // Not a choice of either arm.
                Source::Fallback => continue,
            };
            if let Some(r) = window.reward(&self.settings.reward, self.settings.watts_per_core) {
                self.guard.record(arm, r);
            }
        }
        let passed: std::collections::BTreeSet<&K> = tenants.iter().map(|(k, _)| k).collect();
        self.keep_warm.retain(|k, _| passed.contains(k));
        let mut out = Vec::with_capacity(tenants.len());
        for (tenant, window) in tenants {
            if !window.active() {
                let keep_warm = self
                    .keep_warm
                    .get(tenant)
                    .copied()
                    .unwrap_or(self.settings.keep_warm);
                let quota = TenantQuota {
                    keep_warm,
                    ..self.static_quota()
                };
                out.push((tenant.clone(), quota));
                continue;
            }
            let quota = match self.network.is_some().then(|| self.guard.next_arm()) {
                Some(Arm::Learned) => self.learned_quota(window),
                _ => self.static_quota(),
            };
            self.pending.insert(tenant.clone(), quota.source);
            self.keep_warm.insert(tenant.clone(), quota.keep_warm);
            match quota.source {
                Source::Learned => self.decisions.learned += 1,
                Source::Eq6 => self.decisions.eq6 += 1,
                Source::Fallback => self.decisions.fallback += 1,
            }
            out.push((tenant.clone(), quota));
        }
        out
    }

    fn static_quota(&self) -> TenantQuota {
        TenantQuota {
            source: Source::Eq6,
            cpu_max_cores: None,
            memory_high_bytes: None,
            keep_warm: self.settings.keep_warm,
        }
    }

    /// What the network decides for `window` (the static shares without a network); the
    /// guard is not asked and nothing is recorded.
    ///
    /// The network decides for each of the tenant's active functions, per guest, as in the
    /// simulator it was trained in (a CPU share, a memory tier, instances to keep warm); the
    /// cell gets their sum:
    /// - CPU cap: Σ share × the function's concurrency (at least one guest), at least
    ///   [`MIN_CPU_CORES`]; none when that is the node's whole CPU;
    /// - `memory_high`: Σ tier × max(concurrency, keep-warm, 1) plus the cell's overhead;
    ///   none when that reaches the hard limit (which always rules);
    /// - keep-warm: the node's keep-warm time if any function wants an instance kept,
    ///   otherwise two intervals (the cell goes soon after its tenant goes quiet).
    pub fn learned_quota(&self, window: &TenantWindow) -> TenantQuota {
        let s = &self.settings;
        let Some(network) = &self.network else {
            return self.static_quota();
        };
        let interval_s = s.interval.as_secs_f64();
        let (mut cores, mut memory_mib, mut keep) = (0.0f64, 0.0f64, 0u32);
        for f in &window.functions {
            if f.calls == 0 && f.queued <= 0.0 && f.running <= 0.0 {
                continue;
            }
            let features = f.features(interval_s, window.weight, s.node_memory_bytes);
            let Ok(d) = network.quota_decision(&features) else {
                return TenantQuota {
                    source: Source::Fallback,
                    ..self.static_quota()
                };
            };
            let guests = f.concurrency(interval_s).max(1.0);
            cores += f64::from(d.cpu_share()) * guests;
            memory_mib += f64::from(d.mem_mb()) * guests.ceil().max(f64::from(d.keep_warm_count()));
            keep = keep.saturating_add(d.keep_warm_count());
        }
        if !(cores.is_finite() && memory_mib.is_finite()) {
            return TenantQuota {
                source: Source::Fallback,
                ..self.static_quota()
            };
        }
        let cpu_max_cores = (cores < s.node_cores).then(|| cores.max(MIN_CPU_CORES));
        let high = (memory_mib * f64::from(1u32 << 20)) as u64 + s.cell_overhead_bytes;
        let hard = window
            .memory_max_bytes
            .unwrap_or(u64::MAX)
            .min(s.node_memory_bytes.saturating_add(s.cell_overhead_bytes));
        TenantQuota {
            source: Source::Learned,
            cpu_max_cores,
            memory_high_bytes: (high < hard).then_some(high),
            keep_warm: if keep > 0 {
                s.keep_warm
            } else {
                s.keep_warm.min(s.interval.saturating_mul(2))
            },
        }
    }
}

fn check(s: &QuotaSettings) -> Result<(), QuotaError> {
    let bad = |what: &str| Err(QuotaError::Settings(what.to_string()));
    if s.interval.is_zero() {
        return bad("interval must be more than zero");
    }
    if !(s.node_cores.is_finite() && s.node_cores > 0.0) {
        return bad("node_cores must be finite and more than zero");
    }
    if !(s.watts_per_core.is_finite() && s.watts_per_core >= 0.0) {
        return bad("watts_per_core must be finite and not negative");
    }
    Ok(())
}
