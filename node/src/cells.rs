//! The node's side of cells (`isolation = "lci"`): their upkeep, which the Isolator actor runs
//! ([`CellUpkeep`]), and each tenant's cell quota every `quota_interval_ms` ([`CellQuotas`]):
//! the interval of each tenant's functions is read from the node's metrics and slot counts,
//! [`tern_quota::QuotaController`] decides, and the decisions go to the tenants' cells
//! ([`tern_isolator::Cells::set_quota`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_isolator::{CellQuota, Cells};
use tern_metrics::Metrics;
use tern_placement::learned::TrainedClasses;
use tern_quota::{
    FunctionWindow, QuotaController, QuotaSettings, Source, TenantQuota, TenantWindow,
};
use tern_runtime::Runtime;
use tern_runtime::isolation::Chore;
use tern_sync::poison::lock;
use tern_tenancy::TenantName;
use tern_wire::FunctionName;

use crate::config::{CellQuota as QuotaChoice, Config};
use crate::error::NodeError;

/// How often idle cells are looked for and every cell is pinged.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// How long a cell has to answer a health check (it answers from its reader, apart from the
/// guests, in well under a millisecond).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The cells' upkeep, run by the Isolator actor: housekeeping every second (idle cells past
/// their tenant's keep-warm time stopped, the others pinged and replaced if they hang) and
/// the tenants' quotas every `quota_interval_ms`.
pub struct CellUpkeep {
    pub cells: Arc<Cells>,
    pub quotas: Arc<CellQuotas>,
    pub runtime: Arc<Runtime>,
    pub metrics: Arc<Metrics>,
    /// `cell_keep_warm_secs`, for tenants without a quota decision yet.
    pub keep_warm: Duration,
}

impl tern_runtime::isolation::Upkeep for CellUpkeep {
    fn chores(&self) -> Vec<(Chore, Duration)> {
        vec![
            (Chore::Housekeeping, HOUSEKEEPING_EVERY),
            (Chore::Quotas, self.quotas.interval()),
        ]
    }

    fn run(&self, chore: Chore) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            match chore {
                Chore::Housekeeping => {
                    let reaped = self.cells.reap_idle(self.keep_warm);
                    if reaped > 0 {
                        tracing::info!(reaped, "stopped cells idle past their keep-warm time");
                    }
                    self.cells.check_health(HEALTH_TIMEOUT).await;
                }
                Chore::Quotas => {
                    self.quotas
                        .tick(&self.cells, &self.runtime, &self.metrics)
                        .await
                }
            }
        })
    }
}

/// The CFS period of a CPU cap.
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// A function's counters at the last decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    calls: u64,
    cold_starts: u64,
    latency_us: u64,
    exec_us: u64,
    inst_us: u64,
}

/// The node's quota decisions and what they are based on.
pub struct CellQuotas {
    controller: Mutex<QuotaController<TenantName>>,
    last: Mutex<HashMap<FunctionName, Counters>>,
    interval: Duration,
    /// The last decision of each tenant, for the metrics.
    decided: Mutex<HashMap<TenantName, TenantQuota>>,
}

impl CellQuotas {
    /// The controller `cell_quota` asks for; `learned` reads the quota network from
    /// `policy_checkpoint`.
    pub fn new(
        config: &Config,
        runtime: &tern_runtime::RuntimeConfig,
        cell_overhead_bytes: u64,
    ) -> Result<Self, NodeError> {
        let interval = Duration::from_millis(config.quota_interval_ms);
        let invalid_checkpoint = |e: tern_placement::learned::CheckpointError| {
            NodeError::Config(crate::config::ConfigError::Invalid(e.to_string()))
        };
        let checkpoint = match config.cell_quota {
            QuotaChoice::Eq6 => None,
            QuotaChoice::Learned | QuotaChoice::Auto => config
                .policy_checkpoint
                .as_deref()
                .map(tern_placement::learned::read_checkpoint)
                .transpose()
                .map_err(invalid_checkpoint)?,
        };
        // The quota network's reward prices energy as in the cluster it was trained in.
        let classes = TrainedClasses::of(checkpoint.as_ref().and_then(|c| c.calibration.as_ref()));
        let settings = QuotaSettings {
            interval,
            node_cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            node_memory_bytes: runtime.memory_budget_mb.saturating_mul(1 << 20),
            cell_overhead_bytes,
            keep_warm: Duration::from_secs(config.cell_keep_warm_secs),
            watts_per_core: f64::from(classes.busy_watts_per_core(config.node_class)),
            reward: tern_quota::RewardConfig::default(),
        };
        let invalid = |e: tern_quota::QuotaError| {
            NodeError::Config(crate::config::ConfigError::Invalid(e.to_string()))
        };
        let controller = match checkpoint {
            None => QuotaController::eq6(settings).map_err(invalid)?,
            Some(checkpoint) => {
                QuotaController::learned(settings, checkpoint.weights).map_err(invalid)?
            }
        };
        tracing::info!(
            policy = controller.in_charge().as_str(),
            interval_ms = config.quota_interval_ms,
            "cell quotas"
        );
        Ok(Self {
            controller: Mutex::new(controller),
            last: Mutex::default(),
            interval,
            decided: Mutex::default(),
        })
    }

    /// How often [`CellQuotas::tick`] is to be called.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One interval: reads what each tenant's functions did since the last call, decides,
    /// and sets the decisions on the tenants' cells.
    pub async fn tick(&self, cells: &Cells, runtime: &Runtime, metrics: &Metrics) {
        let windows = self.windows(cells, runtime, metrics);
        let decisions = lock(&self.controller).decide(&windows);
        for (tenant, quota) in &decisions {
            if let Err(e) = cells.set_quota(tenant, cell_quota(quota)).await {
                tracing::warn!(%tenant, error = %e, "cannot set a cell's quota");
            }
        }
        *lock(&self.decided) = decisions.into_iter().collect();
    }

    /// Each tenant's interval: its functions' counter differences since the last call, and
    /// its running and waiting units now, shared among its functions by their calls.
    fn windows(
        &self,
        cells: &Cells,
        runtime: &Runtime,
        metrics: &Metrics,
    ) -> Vec<(TenantName, TenantWindow)> {
        let mut tenants: HashMap<TenantName, TenantWindow> = cells
            .tenants()
            .into_iter()
            .map(|(tenant, limits)| {
                let window = TenantWindow {
                    weight: f64::from(limits.cpu_weight) / 100.0,
                    memory_max_bytes: limits.memory_max,
                    functions: Vec::new(),
                };
                (tenant, window)
            })
            .collect();
        let functions = runtime.list();
        {
            let mut last = lock(&self.last);
            // Baselines of removed functions go; every other one stays until it is updated
            // (a function skipped this time keeps its baseline, so its next window is one
            // interval, not its whole life).
            let live: std::collections::HashSet<&FunctionName> =
                functions.iter().map(|f| &f.name).collect();
            last.retain(|name, _| live.contains(name));
            for info in &functions {
                let Some(window) = tenants.get_mut(&info.name.tenant()) else {
                    continue;
                };
                let Some(m) = metrics.existing_function(info.name.as_str()) else {
                    continue;
                };
                let counters = Counters {
                    calls: m.latency.count(),
                    cold_starts: m.cold_starts.load(Relaxed),
                    latency_us: m.latency.sum_us(),
                    exec_us: m.t_exec.sum_us(),
                    inst_us: m.t_inst.sum_us(),
                };
                let before = last.get(&info.name).copied().unwrap_or_default();
                window.functions.push(FunctionWindow {
                    calls: counters.calls.saturating_sub(before.calls),
                    cold_starts: counters.cold_starts.saturating_sub(before.cold_starts),
                    latency_us: counters.latency_us.saturating_sub(before.latency_us),
                    exec_us: counters.exec_us.saturating_sub(before.exec_us),
                    cold_us: counters.inst_us.saturating_sub(before.inst_us),
                    queued: 0.0,
                    running: 0.0,
                    guest_memory_bytes: u64::from(info.memory_mb) << 20,
                });
                last.insert(info.name.clone(), counters);
            }
        }
        for (tenant, running, waiting) in runtime.tenants_slots() {
            if let Some(window) = tenants.get_mut(&tenant) {
                share(
                    &mut window.functions,
                    f64::from(running),
                    f64::from(waiting),
                );
            }
        }
        let mut out: Vec<_> = tenants.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The decisions' metrics in Prometheus text.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let controller = lock(&self.controller);
        let decisions = controller.decisions();
        let mut out = String::from(
            "# HELP tern_quota_decisions_total Cell quota decisions for active tenants, by who \
             took them (learned: the quota network; eq6: the static shares; fallback: the \
             network gave no usable answer).\n# TYPE tern_quota_decisions_total counter\n",
        );
        for source in Source::ALL {
            let _ = writeln!(
                out,
                "tern_quota_decisions_total{{policy=\"{}\"}} {}",
                source.as_str(),
                decisions.get(source)
            );
        }
        let _ = write!(
            out,
            "# HELP tern_quota_learned_in_charge 1 while the quota network decides (its guard \
             has not handed decisions to the static shares).\n\
             # TYPE tern_quota_learned_in_charge gauge\ntern_quota_learned_in_charge {}\n",
            u8::from(controller.in_charge() == Source::Learned)
        );
        drop(controller);
        let decided = lock(&self.decided);
        let mut tenants: Vec<_> = decided.iter().collect();
        tenants.sort_by(|a, b| a.0.cmp(b.0));
        out.push_str(
            "# HELP tern_cell_cpu_max_cores The CPU cap of the tenant's cell for this interval, \
             cores (absent: no cap).\n# TYPE tern_cell_cpu_max_cores gauge\n",
        );
        for (tenant, q) in &tenants {
            if let Some(cores) = q.cpu_max_cores {
                let _ = writeln!(
                    out,
                    "tern_cell_cpu_max_cores{{tenant=\"{tenant}\"}} {cores:.4}"
                );
            }
        }
        out.push_str(
            "# HELP tern_cell_memory_high_bytes Where memory reclaim starts in the tenant's cell \
             for this interval (absent: only the hard limit).\n\
             # TYPE tern_cell_memory_high_bytes gauge\n",
        );
        for (tenant, q) in &tenants {
            if let Some(bytes) = q.memory_high_bytes {
                let _ = writeln!(
                    out,
                    "tern_cell_memory_high_bytes{{tenant=\"{tenant}\"}} {bytes}"
                );
            }
        }
        out.push_str(
            "# HELP tern_cell_keep_warm_seconds How long the tenant's cell is kept once idle, \
             this interval.\n# TYPE tern_cell_keep_warm_seconds gauge\n",
        );
        for (tenant, q) in &tenants {
            let _ = writeln!(
                out,
                "tern_cell_keep_warm_seconds{{tenant=\"{tenant}\"}} {}",
                q.keep_warm.as_secs_f64()
            );
        }
        out
    }
}

/// A tenant's running and waiting units, which the node counts per tenant, shared among its
/// functions in proportion to their calls (evenly when none had calls).
fn share(functions: &mut [FunctionWindow], running: f64, waiting: f64) {
    let calls: u64 = functions.iter().map(|f| f.calls).sum();
    let n = functions.len() as f64;
    for f in functions.iter_mut() {
        let part = if calls > 0 {
            f.calls as f64 / calls as f64
        } else {
            1.0 / n
        };
        f.running = running * part;
        f.queued = waiting * part;
    }
}

/// A decision as a cell quota: a CPU cap in CFS periods of 100 ms.
fn cell_quota(q: &TenantQuota) -> CellQuota {
    CellQuota {
        cpu_max: q.cpu_max_cores.map(|cores| tern_cell::CpuMax {
            quota_us: ((cores * CPU_PERIOD_US as f64) as u64).max(MIN_CPU_QUOTA_US),
            period_us: CPU_PERIOD_US,
        }),
        memory_high: q.memory_high_bytes,
        keep_warm: Some(q.keep_warm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(n: u64) -> FunctionWindow {
        FunctionWindow {
            calls: n,
            ..FunctionWindow::default()
        }
    }

    #[test]
    fn a_tenants_units_are_shared_by_calls_or_evenly_without_any() {
        let mut fs = [calls(30), calls(10)];
        share(&mut fs, 4.0, 8.0);
        assert_eq!((fs[0].running, fs[0].queued), (3.0, 6.0));
        assert_eq!((fs[1].running, fs[1].queued), (1.0, 2.0));
        let mut idle = [calls(0), calls(0)];
        share(&mut idle, 2.0, 0.0);
        assert_eq!((idle[0].running, idle[1].running), (1.0, 1.0));
    }

    #[test]
    fn a_cap_in_cores_is_a_cfs_quota_of_100_ms_periods_and_never_below_a_millisecond() {
        let q = |cores| TenantQuota {
            source: Source::Learned,
            cpu_max_cores: cores,
            memory_high_bytes: Some(5),
            keep_warm: Duration::from_secs(2),
        };
        let c = cell_quota(&q(Some(1.5)));
        assert_eq!(
            c.cpu_max,
            Some(tern_cell::CpuMax {
                quota_us: 150_000,
                period_us: 100_000
            })
        );
        assert_eq!(c.memory_high, Some(5));
        assert_eq!(c.keep_warm, Some(Duration::from_secs(2)));
        assert_eq!(
            cell_quota(&q(Some(0.0))).cpu_max.map(|m| m.quota_us),
            Some(1_000)
        );
        assert_eq!(cell_quota(&q(None)).cpu_max, None);
    }
}
