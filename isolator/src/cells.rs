//! Every tenant's cell on this node, as the runtime's [`CellRunner`]: a tenant's cell is
//! started at its first deploy here (ahead of its first call) or, failing that, by its first
//! call; it gets each of the tenant's functions as they are installed, and again before a
//! call if it missed one; a cell that died is replaced by the next call, with a back-off
//! when cells keep dying young.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tern_cell::{CellLimits, Hierarchy};
use tern_runtime::{CellRunner, Meu, MeuOutcome};
use tern_tenancy::TenantName;
use tern_wire::{FunctionInfo, FunctionName, ModuleHash};
use tokio::time::Instant;

use tern_sync::poison::lock;

use crate::artifacts::ArtifactView;
use crate::error::Error;
use crate::inside::CellArgs;
use crate::process::{CellProcess, CellSpec, LogTo};
use tern_runtime::StreamTo;

/// Where a root node's cells get their users: tenant n's cells (in the order the node first
/// saw them) run as user `CELL_USERS + n` and group `CELL_USERS`, far above any distribution's
/// ranges of system, regular and container users.
pub const CELL_USERS: u32 = 3_000_000_000;

/// A cell that dies within this long of its start died young.
const YOUNG: Duration = Duration::from_secs(1);
/// Young deaths in a row before starts are spaced out.
const YOUNG_DEATHS_ALLOWED: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How this node's cells are started.
#[derive(Clone)]
pub struct CellsConfig {
    /// The cell executable and the arguments before the cell's own (the node's binary and
    /// `cell`).
    pub program: PathBuf,
    pub program_args: Vec<String>,
    /// Each tenant's cell builds its root in `<roots>/<tenant>` (an empty directory) and sees
    /// its artifacts in `<roots>/.artifacts/<tenant>` (tenant names never start with a dot).
    pub roots: PathBuf,
    /// The node's engines' compatibility (`Runtime::compatibility`): part of artifact names.
    pub compatibility: String,
    /// The cell's arguments; `root` is replaced per tenant.
    pub args: CellArgs,
    pub max_in_flight: usize,
    pub start_timeout: Duration,
    /// Eq. 4's weight of each resource dimension.
    pub strength_weights: tern_cell::strength::Weights,
    /// Where guests' stderr goes (the node runtime's guest logs); `None`: discarded.
    pub log_sink: Option<Arc<dyn tern_runtime::guest_logs::LogSink>>,
}

/// When a tenant's next cell may start, given how its last ones ended. Pure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    young_deaths: u32,
}

impl Backoff {
    /// A cell that lived `lived` has died.
    pub fn died(&mut self, lived: Duration) {
        if lived < YOUNG {
            self.young_deaths = self.young_deaths.saturating_add(1);
        } else {
            self.young_deaths = 0;
        }
    }

    /// How long to wait before the next start (zero while cells do not keep dying young).
    pub fn delay(&self) -> Duration {
        match self.young_deaths.checked_sub(YOUNG_DEATHS_ALLOWED + 1) {
            None => Duration::ZERO,
            Some(n) => FIRST_BACKOFF
                .saturating_mul(1u32 << n.min(16))
                .min(MAX_BACKOFF),
        }
    }
}

struct Running {
    process: Arc<CellProcess>,
    started: Instant,
    /// When a call last ended (or the cell started), and how many are under way: a cell idle
    /// past the keep-warm time is stopped.
    last_used: Mutex<Instant>,
    calls: AtomicU64,
    /// The version of each function the cell has.
    installed: Mutex<HashMap<FunctionName, ModuleHash>>,
    /// The artifacts the cell can open: those of the versions it has.
    artifacts: ArtifactView,
    /// Installs under way, by version: their artifacts stay in the view meanwhile.
    installing: Mutex<HashMap<ModuleHash, usize>>,
}

#[derive(Default)]
struct TenantCells {
    current: Option<Arc<Running>>,
    backoff: Backoff,
    /// No start before this (after young deaths).
    not_before: Option<Instant>,
    /// From the tenant's spec: its weight and hard limits.
    limits: CellLimits,
    /// The quota decided for the current interval, within `limits`.
    quota: CellQuota,
    /// The tenant's number on this node: its cells' user is [`CELL_USERS`] + this.
    user: u32,
}

impl TenantCells {
    /// The limits in force: the spec's, with the interval's CPU cap and `memory_high` (never
    /// above the hard `memory_max`).
    fn in_force(&self) -> CellLimits {
        let memory_high = match (self.quota.memory_high, self.limits.memory_max) {
            (Some(high), Some(max)) => Some(high.min(max)),
            (high, _) => high,
        };
        // The tighter CPU cap of the two, compared as CPU time per wall time.
        let cpu_max = match (self.quota.cpu_max, self.limits.cpu_max) {
            (Some(q), Some(s))
                if u128::from(q.quota_us) * u128::from(s.period_us)
                    > u128::from(s.quota_us) * u128::from(q.period_us) =>
            {
                Some(s)
            }
            (q, s) => q.or(s),
        };
        CellLimits {
            cpu_max,
            memory_high: memory_high.or(self.limits.memory_high),
            ..self.limits
        }
    }
}

/// What a tenant's quota decision sets on its cell for an interval, within the limits of its
/// spec (`None`: the spec's value, or the node's keep-warm time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellQuota {
    pub cpu_max: Option<tern_cell::CpuMax>,
    pub memory_high: Option<u64>,
    pub keep_warm: Option<Duration>,
}

/// The cells of one node.
pub struct Cells {
    this: Weak<Cells>,
    /// Makes this node's cell names (and so their cgroups) its own: nodes on one host share
    /// the cgroup hierarchy, and several nodes may even share a process (tests).
    prefix: String,
    hierarchy: Hierarchy,
    config: CellsConfig,
    tenants: Mutex<HashMap<TenantName, Arc<tokio::sync::Mutex<TenantCells>>>>,
    generation: AtomicU64,
    /// Each tenant's limits from its spec, readable without waiting for a starting cell.
    spec_limits: Mutex<HashMap<TenantName, CellLimits>>,
    /// Each tenant's cells found dead (killed, out of memory, seccomp, hung) and replaced.
    restarts: Mutex<HashMap<TenantName, u64>>,
    /// Tenants given a user so far.
    users: std::sync::atomic::AtomicU32,
    starts: AtomicU64,
    deaths: AtomicU64,
    reaped: AtomicU64,
    hangs: AtomicU64,
    /// Set by [`Cells::stop_all`]: no cell starts after it.
    stopping: std::sync::atomic::AtomicBool,
    /// From spawning a cell to its `Ready`.
    start_time: tern_metrics::Histogram,
}

/// Counters for the node's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellStats {
    pub running: u64,
    pub starts: u64,
    pub deaths: u64,
}

impl Cells {
    pub fn new(hierarchy: Hierarchy, config: CellsConfig) -> Arc<Self> {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        // Views of cells of an earlier run of this node (each cell's goes with it, unless the
        // node died first).
        let _ = std::fs::remove_dir_all(config.roots.join(".artifacts"));
        Arc::new_cyclic(|this| Self {
            this: this.clone(),
            prefix: format!("n{}_{instance}_", std::process::id()),
            hierarchy,
            config,
            tenants: Mutex::default(),
            generation: AtomicU64::new(0),
            spec_limits: Mutex::default(),
            restarts: Mutex::default(),
            users: std::sync::atomic::AtomicU32::new(1),
            starts: AtomicU64::new(0),
            deaths: AtomicU64::new(0),
            reaped: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            start_time: tern_metrics::Histogram::default(),
        })
    }

    /// Starts a cell for no tenant, checks it answers, and stops it: whether this host can
    /// really run cells (the checks of `tern_cell::host_support` cannot see everything: a
    /// container's seccomp profile or an LSM may still refuse a namespace or a mount).
    pub async fn probe(&self) -> Result<(), Error> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (spec, _view) = self.cell_spec(
            format!("{}probe-{generation}", self.prefix),
            self.config.roots.join(".probe"),
            self.config
                .roots
                .join(".artifacts")
                .join(format!(".probe-{generation}")),
            0,
            CellLimits::default(),
            1,
        )?;
        let process = CellProcess::start(&self.hierarchy, spec).await?;
        let answered = process.ping(self.config.start_timeout).await;
        process.kill();
        if answered {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "a probe cell started but did not answer".into(),
            ))
        }
    }

    /// Sets a tenant's cell limits from its spec (applied to its running cell at once, and to
    /// later ones).
    pub async fn set_limits(&self, tenant: &TenantName, limits: CellLimits) -> Result<(), Error> {
        self.lock_spec_limits().insert(tenant.clone(), limits);
        let slot = self.slot(tenant);
        let mut cells = slot.lock().await;
        cells.limits = limits;
        Self::apply(&cells).await
    }

    /// Sets a tenant's quota for the interval (applied like [`Cells::set_limits`]). A tenant
    /// the node does not know yet is left alone.
    pub async fn set_quota(&self, tenant: &TenantName, quota: CellQuota) -> Result<(), Error> {
        let Some(slot) = self.lock_tenants().get(tenant).cloned() else {
            return Ok(());
        };
        // A tenant whose cell is starting right now (its lock held for up to the start
        // timeout) gets its quota at the next interval: the upkeep does not wait on it.
        let Ok(mut cells) = slot.try_lock() else {
            return Ok(());
        };
        if cells.quota == quota {
            return Ok(());
        }
        cells.quota = quota;
        Self::apply(&cells).await
    }

    async fn apply(cells: &TenantCells) -> Result<(), Error> {
        let Some(running) = cells.current.as_ref().filter(|r| !r.process.has_ended()) else {
            return Ok(());
        };
        let (cgroup, limits) = (running.process.cgroup().clone(), cells.in_force());
        // A lower memory limit makes the kernel reclaim before the write returns: off the
        // async workers.
        tokio::task::spawn_blocking(move || cgroup.apply(&limits))
            .await
            .map_err(|e| Error::Unavailable(format!("applying a cell's limits: {e}")))??;
        Ok(())
    }

    /// Every tenant the node has cells settings for, with the limits of its spec.
    pub fn tenants(&self) -> Vec<(TenantName, CellLimits)> {
        self.lock_spec_limits()
            .iter()
            .map(|(t, l)| (t.clone(), *l))
            .collect()
    }

    fn lock_spec_limits(&self) -> std::sync::MutexGuard<'_, HashMap<TenantName, CellLimits>> {
        lock(&self.spec_limits)
    }

    /// The directory of `tenant`'s running cell's cgroup for `controller` (where its limits
    /// can be read back), if it has a running cell.
    pub async fn cgroup_dir(
        &self,
        tenant: &TenantName,
        controller: tern_cell::Controller,
    ) -> Option<PathBuf> {
        self.current(tenant)
            .await
            .filter(|r| !r.process.has_ended())
            .map(|r| r.process.cgroup().dir(controller).to_path_buf())
    }

    /// The limits in force on `tenant`'s cells (spec and quota), if the node knows it.
    pub async fn limits_in_force(&self, tenant: &TenantName) -> Option<CellLimits> {
        let slot = self.lock_tenants().get(tenant).cloned()?;
        Some(slot.lock().await.in_force())
    }

    /// Stops a tenant's cell (the tenant was removed); its artifact view goes with the cell.
    pub async fn stop(&self, tenant: &TenantName) {
        self.lock_spec_limits().remove(tenant);
        lock(&self.restarts).remove(tenant);
        let slot = self.lock_tenants().remove(tenant);
        if let Some(slot) = slot
            && let Some(running) = slot.lock().await.current.take()
        {
            running.process.kill();
        }
    }

    /// Stops every cell and waits, up to `within`, until each has exited: before the node's
    /// process ends or replaces itself, so no cell outlives it. Their cgroups go in the
    /// background once empty (a dead cell's init may wait a moment for the host's init to
    /// reap it; a stop does not wait for that).
    pub async fn stop_all(&self, within: Duration) {
        // Before the slots go: a call that would start a cell after this finds it set (it
        // checks under its tenant's lock, which this takes below).
        self.stopping.store(true, Ordering::SeqCst);
        let slots: Vec<_> = self.lock_tenants().drain().map(|(_, slot)| slot).collect();
        let mut stopping = Vec::new();
        for slot in slots {
            if let Some(running) = slot.lock().await.current.take() {
                running.process.kill();
                stopping.push(running);
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        let waited = tokio::time::timeout_at(deadline, async {
            for running in &stopping {
                running.process.wait_exited().await;
            }
            // The cell's own process (its PID namespace's init) dies with the process the
            // node started through its parent-death signal, which a cell whose parent died
            // while it was starting may not have set yet: whatever is left in its cgroup is
            // killed from here, and waited for.
            for running in &stopping {
                let cgroup = running.process.cgroup();
                if let Err(e) = cgroup.kill_all() {
                    tracing::warn!(error = %e, "cannot kill what is left of a cell");
                    continue;
                }
                while cgroup.processes().is_ok_and(|left| !left.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                cells = stopping.len(),
                "cells not all gone within {} ms of being killed",
                within.as_millis()
            );
        }
    }

    /// `tenant`'s current cell, if it has one (it may have died since; the next call finds
    /// out).
    async fn current(&self, tenant: &TenantName) -> Option<Arc<Running>> {
        // Looked up, never created: asking about a tenant (a removed one included) must not
        // bring it back.
        let slot = self.lock_tenants().get(tenant).cloned()?;
        slot.lock().await.current.clone()
    }

    /// The artifact directory `tenant`'s running cell sees, if it has one.
    pub async fn artifact_dir(&self, tenant: &TenantName) -> Option<PathBuf> {
        self.current(tenant)
            .await
            .map(|r| r.artifacts.dir().to_owned())
    }

    /// The processes in `tenant`'s running cell (empty if it has none).
    pub async fn processes(&self, tenant: &TenantName) -> Vec<u32> {
        self.current(tenant)
            .await
            .filter(|r| !r.process.has_ended())
            .and_then(|r| r.process.cgroup().processes().ok())
            .unwrap_or_default()
    }

    /// Stops the cells that have had no call for their tenant's keep-warm time (`keep_warm`
    /// unless its quota says otherwise; a tenant's next call starts a new one); how many. A
    /// cell busy with a call, or whose tenant is being served right now, is left alone.
    pub fn reap_idle(&self, keep_warm: Duration) -> usize {
        let slots: Vec<_> = self.lock_tenants().values().cloned().collect();
        let mut reaped = 0;
        for slot in slots {
            let Ok(mut cells) = slot.try_lock() else {
                continue;
            };
            let keep_warm = cells.quota.keep_warm.unwrap_or(keep_warm);
            let idle = cells.current.as_ref().is_some_and(|r| {
                r.calls.load(Ordering::Acquire) == 0
                    && !r.process.has_ended()
                    && lock(&r.last_used).elapsed() >= keep_warm
            });
            if idle && let Some(running) = cells.current.take() {
                running.process.kill();
                reaped += 1;
            }
        }
        self.reaped.fetch_add(reaped as u64, Ordering::Relaxed);
        reaped
    }

    /// Pings every running cell at once and kills those that do not answer within `within`
    /// (alive but serving nothing: stopped, or wedged); how many. Their waiting callers get
    /// `isolation_fault`, and the tenant's next call starts a new cell.
    pub async fn check_health(&self, within: Duration) -> usize {
        let slots: Vec<_> = self.lock_tenants().values().cloned().collect();
        let mut pings = tokio::task::JoinSet::new();
        for slot in slots {
            // A tenant whose cell is starting right now is checked next time.
            let Ok(cells) = slot.try_lock() else { continue };
            let current = cells.current.clone();
            drop(cells);
            if let Some(running) = current.filter(|r| !r.process.has_ended()) {
                pings.spawn(async move {
                    let alive = running.process.ping(within).await;
                    (running, alive)
                });
            }
        }
        let mut hung = 0;
        while let Some(Ok((running, alive))) = pings.join_next().await {
            if !alive && !running.process.has_ended() {
                tracing::warn!(
                    cell = running.process.name(),
                    "a cell did not answer a ping; killing it"
                );
                running.process.kill();
                hung += 1;
            }
        }
        self.hangs.fetch_add(hung as u64, Ordering::Relaxed);
        hung
    }

    /// CPU time `tenant`'s running cell has used, in microseconds (from its cgroup).
    pub async fn cpu_usage_us(&self, tenant: &TenantName) -> Option<u64> {
        self.current(tenant)
            .await
            .and_then(|r| r.process.cgroup().cpu_usage_us().ok())
    }

    /// The cells' metrics in Prometheus text.
    pub fn render_metrics(&self) -> String {
        let stats = self.stats();
        let mut out = format!(
            "# HELP tern_cells_running Tenants' cells running on this node.\n\
             # TYPE tern_cells_running gauge\n\
             tern_cells_running {}\n\
             # HELP tern_cell_starts_total Cells started (first starts and replacements).\n\
             # TYPE tern_cell_starts_total counter\n\
             tern_cell_starts_total {}\n\
             # HELP tern_cell_deaths_total Cells found dead (killed, out of memory, seccomp) \
             and replaced.\n\
             # TYPE tern_cell_deaths_total counter\n\
             tern_cell_deaths_total {}\n\
             # HELP tern_cells_reaped_total Idle cells stopped after the keep-warm time.\n\
             # TYPE tern_cells_reaped_total counter\n\
             tern_cells_reaped_total {}\n\
             # HELP tern_cell_hangs_total Cells killed for not answering a health check.\n\
             # TYPE tern_cell_hangs_total counter\n\
             tern_cell_hangs_total {}\n\
             # HELP tern_cell_start_seconds From spawning a cell to its ready message.\n\
             # TYPE tern_cell_start_seconds histogram\n",
            stats.running,
            stats.starts,
            stats.deaths,
            self.reaped.load(Ordering::Relaxed),
            self.hangs.load(Ordering::Relaxed)
        );
        self.start_time
            .render(&mut out, "tern_cell_start_seconds", "");
        out.push_str(&self.render_strength());
        out
    }

    /// Eq. 4 for each tenant with a running cell, and the sharing ratios it is computed from;
    /// each tenant's cell restarts.
    fn render_strength(&self) -> String {
        use std::fmt::Write as _;
        use tern_cell::strength::{Resource, Sharing};
        let slots: Vec<_> = self
            .lock_tenants()
            .iter()
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        let mut weights = Vec::new();
        for (tenant, slot) in slots {
            // A tenant being started or served right now shows at the next scrape.
            let Ok(cells) = slot.try_lock() else { continue };
            if cells
                .current
                .as_ref()
                .is_some_and(|r| !r.process.has_ended())
            {
                weights.push((tenant, cells.limits.cpu_weight));
            }
        }
        let mut restarts: Vec<(TenantName, u64)> = self
            .lock_spec_limits()
            .keys()
            .map(|t| (t.clone(), lock(&self.restarts).get(t).copied().unwrap_or(0)))
            .collect();
        restarts.sort();
        let mut out_restarts = String::from(
            "# HELP tern_cell_restarts_total The tenant's cells found dead (killed, out of \
             memory, seccomp, hung) and replaced.\n# TYPE tern_cell_restarts_total counter\n",
        );
        for (tenant, n) in &restarts {
            let _ = writeln!(
                out_restarts,
                "tern_cell_restarts_total{{tenant=\"{tenant}\"}} {n}"
            );
        }
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut out = String::from(
            "# HELP tern_isolation_strength Eq. 4 isolation strength of the tenant's cell, 0..1 \
             with unit weights.\n# TYPE tern_isolation_strength gauge\n",
        );
        let mut ratios = String::from(
            "# HELP tern_isolation_sharing The sharing ratio rho of each resource Eq. 4 reads \
             (0 own, 1 shared with every tenant).\n# TYPE tern_isolation_sharing gauge\n",
        );
        for (tenant, weight) in &weights {
            let sharing = Sharing::of_cell(*weight, total);
            let strength = sharing.strength(&self.config.strength_weights);
            let _ = writeln!(
                out,
                "tern_isolation_strength{{tenant=\"{tenant}\"}} {strength:.4}"
            );
            for r in Resource::ALL {
                let _ = writeln!(
                    ratios,
                    "tern_isolation_sharing{{tenant=\"{tenant}\",resource=\"{}\"}} {:.4}",
                    r.as_str(),
                    sharing.of(r)
                );
            }
        }
        out + &ratios + &out_restarts
    }

    pub fn stats(&self) -> CellStats {
        let running = self
            .lock_tenants()
            .values()
            .filter(|s| {
                // A tenant being started or served right now shows at the next look.
                s.try_lock()
                    .map(|c| c.current.as_ref().is_some_and(|r| !r.process.has_ended()))
                    .unwrap_or(false)
            })
            .count() as u64;
        CellStats {
            running,
            starts: self.starts.load(Ordering::Relaxed),
            deaths: self.deaths.load(Ordering::Relaxed),
        }
    }

    /// The tenant's running cell, started if it has none (or its last one died).
    /// The tenant's running cell, with a call counted in it (so it is not reaped under the
    /// caller), started if it has none (or its last one died). A start runs in a task of its
    /// own: a caller that goes away does not abort a start other callers wait for too.
    async fn running(&self, tenant: &TenantName) -> Result<InCall, Error> {
        {
            let slot = self.slot(tenant);
            let cells = slot.lock().await;
            if let Some(running) = cells.current.as_ref().filter(|r| !r.process.has_ended()) {
                return Ok(InCall::new(running.clone()));
            }
        }
        let this = self
            .this
            .upgrade()
            .ok_or(Error::Unavailable("the node is stopping".into()))?;
        let tenant = tenant.clone();
        tokio::spawn(async move { this.start_or_join(&tenant).await })
            .await
            .map_err(|e| Error::Unavailable(format!("starting a cell: {e}")))?
    }

    async fn start_or_join(&self, tenant: &TenantName) -> Result<InCall, Error> {
        let slot = self.slot(tenant);
        let mut cells = slot.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("the node is stopping".into()));
        }
        if let Some(running) = &cells.current {
            if !running.process.has_ended() {
                return Ok(InCall::new(running.clone()));
            }
            let lived = running.started.elapsed();
            self.deaths.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%tenant, lived_ms = lived.as_millis() as u64, "a cell died; starting another");
            cells.backoff.died(lived);
            *lock(&self.restarts).entry(tenant.clone()).or_default() += 1;
            cells.current = None;
            let delay = cells.backoff.delay();
            cells.not_before = (!delay.is_zero()).then(|| Instant::now() + delay);
        }
        if let Some(when) = cells.not_before
            && Instant::now() < when
        {
            return Err(Error::Unavailable(format!(
                "tenant {tenant}'s cells keep dying or failing to start; the next start is in {} ms",
                (when - Instant::now()).as_millis()
            )));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (spec, artifacts) = self.cell_spec(
            format!("{}{tenant}-{generation}", self.prefix),
            self.config.roots.join(tenant.as_str()),
            self.artifact_view(tenant, generation),
            cells.user,
            cells.in_force(),
            self.config.max_in_flight,
        )?;
        let spawned = Instant::now();
        let process = match CellProcess::start(&self.hierarchy, spec).await {
            Ok(p) => p,
            Err(e) => {
                // A start that fails counts as a cell dying young: a broken host is not
                // asked to spawn a process on every call.
                cells.backoff.died(Duration::ZERO);
                let delay = cells.backoff.delay();
                cells.not_before = (!delay.is_zero()).then(|| Instant::now() + delay);
                tracing::warn!(%tenant, error = %e, "a cell did not start");
                return Err(Error::Unavailable(format!(
                    "tenant {tenant}'s cell did not start: {e}"
                )));
            }
        };
        let start_us = u64::try_from(spawned.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.start_time.observe_us(start_us);
        self.starts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%tenant, pid = process.pid(), start_us, "cell started");
        let running = Arc::new(Running {
            process,
            started: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            calls: AtomicU64::new(0),
            installed: Mutex::default(),
            artifacts,
            installing: Mutex::default(),
        });
        cells.current = Some(running.clone());
        Ok(InCall::new(running))
    }

    /// How cell `name` is started: its root built in `root`, a fresh artifact view at `view`
    /// (returned: it lives as long as the cell), user [`CELL_USERS`] + `user` where the node
    /// is root, `limits`, at most `max_in_flight` runs waiting on it.
    fn cell_spec(
        &self,
        name: String,
        root: PathBuf,
        view: PathBuf,
        user: u32,
        limits: CellLimits,
        max_in_flight: usize,
    ) -> Result<(CellSpec, ArtifactView), Error> {
        std::fs::create_dir_all(&root).map_err(Error::Spawn)?;
        // A root node gives each tenant's cells an unprivileged user of their own; a node that
        // is not root maps only itself into its cells' user namespace, so they stay its user.
        let run_as = (!self.config.args.user_namespace).then(|| tern_cell::RunAs {
            uid: CELL_USERS.saturating_add(user),
            gid: CELL_USERS,
        });
        let view = ArtifactView::fresh(
            &self.config.args.artifacts,
            view,
            &self.config.compatibility,
            self.config.args.runtime_profile,
            run_as.map(|r| r.gid),
        )
        .map_err(Error::Artifact)?;
        let mut args = self.config.args.clone();
        args.root = root;
        args.artifacts = view.dir().to_owned();
        args.run_as = run_as;
        let spec = CellSpec {
            name,
            program: self.config.program.clone(),
            program_args: self.config.program_args.clone(),
            args,
            limits,
            max_in_flight,
            start_timeout: self.config.start_timeout,
        };
        Ok((spec, view))
    }

    /// Where `tenant`'s cell of `generation` finds its artifacts: a directory of its own,
    /// removed when the cell is gone ([`ArtifactView`]'s drop), so no other cell's start or
    /// stop can touch it.
    fn artifact_view(&self, tenant: &TenantName, generation: u64) -> PathBuf {
        self.config
            .roots
            .join(".artifacts")
            .join(format!("{tenant}-{generation}"))
    }

    fn slot(&self, tenant: &TenantName) -> Arc<tokio::sync::Mutex<TenantCells>> {
        self.lock_tenants()
            .entry(tenant.clone())
            .or_insert_with(|| {
                // Wraps after 1.29 billion tenants seen by one node run.
                let user = self.users.fetch_add(1, Ordering::Relaxed) % (u32::MAX - CELL_USERS);
                Arc::new(tokio::sync::Mutex::new(TenantCells {
                    user,
                    ..TenantCells::default()
                }))
            })
            .clone()
    }

    fn lock_tenants(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TenantName, Arc<tokio::sync::Mutex<TenantCells>>>> {
        lock(&self.tenants)
    }

    async fn run_in_cell(
        self: Arc<Self>,
        info: FunctionInfo,
        meu: Meu,
        cpu_ns: Arc<AtomicU64>,
    ) -> Result<MeuOutcome, tern_runtime::Error> {
        use tern_runtime::Error as RtError;
        let fault = |e: Error| match e {
            Error::Guest(api) => guest_error(api),
            Error::CellExited(why) | Error::EndedBeforeStart(why) => RtError::IsolationFault(why),
            Error::Unavailable(why) => RtError::IsolationUnavailable(why),
            other => RtError::IsolationUnavailable(other.to_string()),
        };
        let tenant = info.name.tenant();
        let called = Instant::now();
        // What the cell says the guest used, however the run ends; passed on when this
        // returns, capped (a guest runs on one thread at a time: no more CPU than the call's
        // time here).
        let reported = Arc::new(AtomicU64::new(0));
        let _pass_on = PassOnCpu {
            reported: reported.clone(),
            to: cpu_ns,
            called,
        };
        // A cell found dead before it started the MEU (it died since its last call, or while
        // the function was being installed): the MEU did not run, so it runs in the cell that
        // replaces it. Once: a cell that dies before starting anything twice in a row is not
        // tried a third time here.
        let mut attempts = 0;
        // A component's answer the caller takes as it is written: only a started run sends
        // parts, so an attempt that ended before starting leaves the stream unused.
        let stream = meu.stream.take();
        let (call, outcome) = loop {
            attempts += 1;
            let call = self.running(&tenant).await.map_err(fault)?;
            let ran = match install_if_missing(&call.0, &info).await {
                Ok(()) => {
                    let log = self.config.log_sink.clone().map(|sink| LogTo {
                        sink,
                        request_id: meu.request_id.clone(),
                        cap: self.config.args.guest_log_bytes,
                    });
                    call.0
                        .process
                        .run_logged(
                            info.name.clone(),
                            info.hash,
                            meu.input.to_vec(),
                            meu.items as u32,
                            &meu.request_id,
                            log,
                            Some(reported.clone()),
                            stream.clone().map(|parts| {
                                StreamTo::new(parts, self.config.args.max_output_bytes)
                            }),
                        )
                        .await
                }
                Err(Error::CellExited(why)) => Err(Error::EndedBeforeStart(why)),
                Err(e) => Err(e),
            };
            match ran {
                Err(Error::EndedBeforeStart(why)) if attempts < 2 => {
                    tracing::info!(%tenant, %why, "a call found its cell dead; running it in a new one");
                }
                // The cell has another version than it was given (two installs raced): give it
                // this one again, then ask again.
                Err(Error::Guest(api))
                    if attempts < 2 && api.code == tern_wire::ErrorCode::NotFound =>
                {
                    lock(&call.0.installed).remove(&info.name);
                }
                other => break (call, other.map_err(fault)?),
            }
        };
        // What a cell says is checked like a peer's: no more output than the node allows
        // (a cell claiming more is broken or hostile, and is ended), and times no longer than
        // the call took here.
        if outcome.output.len() > self.config.args.max_output_bytes {
            call.0.process.kill();
            return Err(RtError::IsolationFault(format!(
                "the cell answered {} bytes, over the output cap of {}",
                outcome.output.len(),
                self.config.args.max_output_bytes
            )));
        }
        let took = u64::try_from(called.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut timings = outcome.timings;
        for t in [
            &mut timings.pre_us,
            &mut timings.load_us,
            &mut timings.reuse_us,
            &mut timings.inst_us,
            &mut timings.exec_us,
        ] {
            *t = (*t).min(took);
        }
        // A cell cannot have grown its memory by more pages than the function may have: the
        // count is the cell's word, so a lying cell moves one counter only so far.
        let max_grows = u64::from(info.memory_mb) * 16;
        Ok(MeuOutcome {
            output: Bytes::from(outcome.output),
            cold_start: outcome.cold_start,
            timings,
            memory_grows: outcome.memory_grows.min(max_grows),
            cpu_ns: reported
                .load(Ordering::Relaxed)
                .min(took.saturating_mul(1000)),
        })
    }
}

/// Adds the guest CPU time a cell reported for one call to the caller's counter when the call
/// ends, capped by the call's time.
struct PassOnCpu {
    reported: Arc<AtomicU64>,
    to: Arc<AtomicU64>,
    called: Instant,
}

impl Drop for PassOnCpu {
    fn drop(&mut self) {
        let took_ns = u64::try_from(self.called.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let used = self.reported.load(Ordering::Relaxed).min(took_ns);
        self.to.fetch_add(used, Ordering::Relaxed);
    }
}

/// A cell's error answer, passed on only if it is one a guest can cause; any other code (one
/// that would make the node or its peers retry, re-place or blame the node) from a cell is
/// treated as the cell failing.
fn guest_error(api: tern_wire::ApiError) -> tern_runtime::Error {
    use tern_wire::ErrorCode as C;
    match api.code {
        C::GuestTrap | C::GuestError | C::OutputTooLarge | C::Timeout | C::InvalidModule => {
            tern_runtime::Error::InCell(api)
        }
        other => tern_runtime::Error::IsolationFault(format!(
            "the cell answered {other}: {}",
            api.message
        )),
    }
}

/// A call under way in a cell (counted, so the cell is not reaped under it); marks the cell
/// used when it ends.
struct InCall(Arc<Running>);

impl InCall {
    fn new(running: Arc<Running>) -> Self {
        running.calls.fetch_add(1, Ordering::AcqRel);
        Self(running)
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        *lock(&self.0.last_used) = Instant::now();
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Installs `info` in the cell unless it has that version already.
async fn install_if_missing(running: &Running, info: &FunctionInfo) -> Result<(), Error> {
    let has = lock(&running.installed).get(&info.name) == Some(&info.hash);
    if has {
        return Ok(());
    }
    *lock(&running.installing).entry(info.hash).or_default() += 1;
    let installed = match running.artifacts.add(&info.hash) {
        Ok(()) => running.process.install(info.clone()).await,
        Err(e) => Err(Error::Artifact(e)),
    };
    let mut has = lock(&running.installed);
    if installed.is_ok()
        && let Some(old) = has.insert(info.name.clone(), info.hash)
        && old != info.hash
    {
        forget_unused(running, &has, old);
    }
    drop(has);
    let mut installing = lock(&running.installing);
    if let Some(n) = installing.get_mut(&info.hash) {
        *n -= 1;
        if *n == 0 {
            installing.remove(&info.hash);
        }
    }
    installed
}

/// Takes `hash` out of the cell's artifact view unless one of its functions uses it or is
/// being given it.
fn forget_unused(
    running: &Running,
    installed: &HashMap<FunctionName, ModuleHash>,
    hash: ModuleHash,
) {
    if !installed.values().any(|h| *h == hash) && !lock(&running.installing).contains_key(&hash) {
        running.artifacts.remove(&hash);
    }
}

impl CellRunner for Cells {
    fn run(
        &self,
        function: &FunctionInfo,
        meu: Meu,
        cpu_ns: Arc<AtomicU64>,
    ) -> Pin<Box<dyn Future<Output = Result<MeuOutcome, tern_runtime::Error>> + Send>> {
        let this = self.this.upgrade();
        let info = function.clone();
        Box::pin(async move {
            match this {
                Some(cells) => cells.run_in_cell(info, meu, cpu_ns).await,
                None => Err(tern_runtime::Error::PoolClosed("cell")),
            }
        })
    }

    /// Starts the tenant's cell ahead of its first call and gives it the function.
    fn installed(&self, function: &FunctionInfo) {
        let Some(cells) = self.this.upgrade() else {
            return;
        };
        let info = function.clone();
        tokio::spawn(async move {
            let tenant = info.name.tenant();
            let installed = match cells.running(&tenant).await {
                Ok(call) => install_if_missing(&call.0, &info).await,
                Err(e) => Err(e),
            };
            if let Err(e) = installed {
                tracing::warn!(function = %info.name, error = %e, "cannot preheat a function in its cell; its next call tries again");
            }
        });
    }

    fn removed(&self, name: &FunctionName) {
        let Some(cells) = self.this.upgrade() else {
            return;
        };
        let name = name.clone();
        tokio::spawn(async move {
            if let Some(running) = cells.current(&name.tenant()).await {
                {
                    let mut installed = lock(&running.installed);
                    if let Some(old) = installed.remove(&name) {
                        forget_unused(&running, &installed, old);
                    }
                }
                let _ = running.process.remove(name).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_a_guest_can_cause_pass_through_from_a_cell() {
        use tern_wire::{ApiError, ErrorCode};
        for code in [
            ErrorCode::GuestTrap,
            ErrorCode::Timeout,
            ErrorCode::OutputTooLarge,
        ] {
            let e = guest_error(ApiError::new(code, "x"));
            assert_eq!(e.code(), code);
        }
        // A cell saying "overloaded" or "unavailable" would have its call placed again
        // elsewhere after it may have run, and the node marked as refusing.
        for code in [
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            let e = guest_error(ApiError::new(code, "x"));
            assert_eq!(e.code(), ErrorCode::IsolationFault, "{code}");
        }
    }

    #[test]
    fn starts_are_spaced_out_only_when_cells_keep_dying_young() {
        let mut b = Backoff::default();
        for _ in 0..YOUNG_DEATHS_ALLOWED {
            b.died(Duration::from_millis(10));
            assert_eq!(b.delay(), Duration::ZERO);
        }
        b.died(Duration::from_millis(10));
        assert_eq!(b.delay(), FIRST_BACKOFF);
        b.died(Duration::from_millis(10));
        assert_eq!(b.delay(), FIRST_BACKOFF * 2);
        for _ in 0..40 {
            b.died(Duration::ZERO);
        }
        assert_eq!(b.delay(), MAX_BACKOFF);
        // One cell that lived past its youth: back to starting at once.
        b.died(YOUNG);
        assert_eq!(b.delay(), Duration::ZERO);
    }
}
