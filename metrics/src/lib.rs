//! Lock-free counters and histograms on the hot path, rendered as Prometheus text on demand.
//!
//! Recording is a few relaxed atomic adds: metrics must never become the bottleneck they are
//! meant to reveal. The MetricsCollector actor only renders and derives ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use tern_wire::ErrorCode;

/// Upper bucket bounds in microseconds.
const BOUNDS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_US.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_us(&self, us: u64) {
        if let Some(i) = BOUNDS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Appends the histogram in Prometheus text (`labels` without braces, may be empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BOUNDS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-tenant outcome counters: every invocation of the tenant's functions, and calls refused
/// for the tenant before they reached one (its stored-result quotas). A function's metrics
/// hold an `Arc` to their tenant's, so recording stays a few atomic adds.
#[derive(Debug, Default)]
pub struct TenantMetrics {
    pub ok: AtomicU64,
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
    /// CPU time of the tenant's guests, nanoseconds (see [`FunctionMetrics::guest_cpu_ns`]).
    pub guest_cpu_ns: AtomicU64,
}

/// Watts charged per fully busy core by the CPU-time energy model: a node's energy where it
/// has no RAPL counter, and every guest's share of the energy (its CPU time times this)
/// whether or not it has one.
pub const MODEL_WATTS_PER_CORE: f64 = 10.0;

impl TenantMetrics {
    pub fn record_error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }
}

/// The tenant a function name says owns it (`tenant.name`, or `default` for a plain name);
/// the naming rule of the node's function names.
fn tenant_of(function: &str) -> &str {
    function
        .split_once('.')
        .map_or("default", |(tenant, _)| tenant)
}

/// Per-function counters. The deployment holds an `Arc` to its own, so recording needs no map
/// lookup.
#[derive(Debug, Default)]
pub struct FunctionMetrics {
    /// End-to-end latency of whole invocations (Eq. 7 mean latency = sum / count).
    pub latency: Histogram,
    /// The paper's Eq. 3 terms, per minimum execution unit. Its T_pre (decode, verify,
    /// compile) is paid once at deploy, never by an MEU: it is `tern_compile_seconds`.
    pub t_load: Histogram,
    pub t_reuse: Histogram,
    pub t_inst: Histogram,
    pub t_exec: Histogram,
    pub meus: AtomicU64,
    pub cold_starts: AtomicU64,
    /// MEUs served without compiling or loading the module.
    pub reuse_hits: AtomicU64,
    /// The guests' own `memory.grow`s that added pages (not the initial allocation), in MEUs
    /// that succeeded.
    pub memory_grows: AtomicU64,
    /// CPU time the function's guests used, nanoseconds: instantiation and execution,
    /// measured on whichever threads ran them (in-process, every MEU; in a cell, the MEUs
    /// whose outcome the cell sent back). The node's own work for a call (HTTP, admission,
    /// placement) is not in it.
    pub guest_cpu_ns: AtomicU64,
    pub ok: AtomicU64,
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
    /// The owner's counters, counted with this function's outcomes.
    tenant: Arc<TenantMetrics>,
}

impl FunctionMetrics {
    /// One invocation answered successfully (counted for the function and its tenant).
    pub fn record_ok(&self) {
        self.ok.fetch_add(1, Relaxed);
        self.tenant.ok.fetch_add(1, Relaxed);
    }

    /// One invocation answered with `code` (counted for the function and its tenant).
    pub fn record_error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
        self.tenant.record_error(code);
    }

    /// `ns` of guest CPU time (counted for the function and its tenant).
    pub fn record_guest_cpu(&self, ns: u64) {
        self.guest_cpu_ns.fetch_add(ns, Relaxed);
        self.tenant.guest_cpu_ns.fetch_add(ns, Relaxed);
    }

    /// Invocations answered, successfully or not.
    pub fn finished(&self) -> u64 {
        self.ok.load(Relaxed) + self.errors.iter().map(|e| e.load(Relaxed)).sum::<u64>()
    }
}

/// All of a node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    functions: RwLock<BTreeMap<String, Arc<FunctionMetrics>>>,
    /// By tenant name; an entry lives until its tenant is removed ([`Metrics::retire_tenant`]),
    /// so a tenant's counters do not go backwards when one of its functions is removed.
    tenants: RwLock<BTreeMap<String, Arc<TenantMetrics>>>,
    /// What removed functions counted, so node-wide totals never go backwards when a
    /// function's series is dropped.
    retired: Retired,
    /// Invocations admitted and not yet answered (the admission queue depth).
    pub in_flight: AtomicI64,
    /// MEUs waiting for a free instance slot.
    pub waiting_for_slot: AtomicI64,
    /// MEUs currently running a guest.
    pub executing: AtomicI64,
    pub rejected_overloaded: AtomicU64,
    /// Errors for requests that never reached a function (unknown name, bad input…).
    pub request_errors: [AtomicU64; ErrorCode::ALL.len()],
    pub compiles: AtomicU64,
    pub compile_time: Histogram,
    pub deploys: AtomicU64,
    pub loaded_modules: AtomicI64,
    /// Invocations re-submitted because a pipeline actor died while holding them.
    pub resubmissions: AtomicU64,
    pub actor_restarts: Mutex<BTreeMap<String, u64>>,
    /// Guests moved to the low-priority lane after using a full time slice.
    pub slow_lane_moves: AtomicU64,
    /// Guests started on the low-priority lane because their function's recent guests all
    /// outlived their first time slice.
    pub slow_lane_starts: AtomicU64,
    /// Epoch ticks so far (the ticker parks while no guest runs).
    pub epoch_ticks: Arc<AtomicU64>,
    /// MEUs this node sent to another node to run.
    pub forwarded: AtomicU64,
    /// Of those a peer ran: from the entry sending one to its answer here.
    pub forward_time: Histogram,
    /// The same MEUs, the peer's own time on each as it reports it (from its request
    /// reaching the peer's handler to its answer): the rest of `forward_time` is the way
    /// there and back, queues on both nodes included.
    pub forward_peer_time: Histogram,
    /// The memory budget of running guests, MiB.
    pub memory_budget_mb: AtomicU64,
    /// HTTP connections answered 429 and closed because a connection cap was reached.
    pub http_connections_refused: AtomicU64,
    /// MEUs cancelled because their caller went away before the answer (waiting or running).
    pub abandoned_meus: AtomicU64,
    /// Records in the journal of asynchronous invocations (pending and finished).
    pub stored_results: AtomicI64,
    /// Bytes of those records, as stored.
    pub stored_result_bytes: AtomicI64,
    /// Asynchronous invocations refused because the journal was at a cap.
    pub journal_full_refusals: AtomicU64,
    /// Corrupt store records moved to the quarantine tree.
    pub store_quarantined: AtomicU64,
    /// Store flushes that failed (disk full or failing): the write was not acknowledged.
    pub store_write_failures: AtomicU64,
    /// Stored modules deleted because no live function uses them.
    pub gc_modules_removed: AtomicU64,
    /// Compiled artifacts deleted because no live function uses their module.
    pub gc_artifacts_removed: AtomicU64,
    /// MEUs this node ran for another node.
    pub served_for_peers: AtomicU64,
    /// MEUs run again elsewhere because the node running them was lost or refused them.
    pub failover_reruns: AtomicU64,
    /// Async invocations of a peer that stayed away, run here from the copy this node kept.
    pub async_taken_over: AtomicU64,
    /// Async invocations accepted here whose copy no peer took (none up, or it refused or did
    /// not answer): they wait for this node if it dies.
    pub async_uncopied: AtomicU64,
    /// Sync keyed results run here as their key's home that no peer kept (none up, or it
    /// refused or did not answer): a retry after this node's death runs the call again.
    pub sync_unkept: AtomicU64,
    /// Peers currently connected (cluster mode).
    pub peers_up: AtomicI64,
    /// Incoming mesh connections refused by the handshake or identity check.
    pub rejected_handshakes: AtomicU64,
    /// ractor_cluster session streams refused by the first-frame name check (or a second
    /// session on one link).
    pub rejected_session_streams: AtomicU64,
    /// Registry entries applied from other nodes.
    pub replicated: AtomicU64,
    /// Peers' statuses received over ractor_cluster sessions (the control plane).
    pub statuses_via_session: AtomicU64,
    /// Peers' statuses received over lanes (peers without a linked control plane).
    pub statuses_via_lane: AtomicU64,
    /// Announcements (chunks of registry entries) received over ractor_cluster sessions.
    pub announcements_via_session: AtomicU64,
    /// Announcements received over lanes.
    pub announcements_via_lane: AtomicU64,
    /// Control-plane messages refused: unknown ticket or variant, malformed, oversized, or a
    /// grant its named granter did not confirm.
    pub control_refused: AtomicU64,
    /// Placement decisions made by the learned policy (`placement = "learned"`).
    pub placement_learned: AtomicU64,
    /// Placement decisions the learned placement handed to its heuristic fallback (policy
    /// output unusable).
    pub placement_fallback: AtomicU64,
    /// Placement decisions the rolling-reward guard gave to the heuristic (it is in charge, or
    /// a probe while the learned policy is).
    pub placement_heuristic: AtomicU64,
    /// Placement outcomes fed back to the learned placement (guard and online learning).
    pub placement_observed: AtomicU64,
    /// 1 while the guard keeps the learned policy in charge, 0 while the heuristic is
    /// (learned placement only).
    pub placement_guard_learned: AtomicI64,
    /// Online PPO updates whose weights now serve (`online_learning`).
    pub policy_updates: AtomicU64,
    /// Transitions the online learner dropped because its queue was full.
    pub policy_dropped_transitions: AtomicU64,
    /// This node's load as last published to peers (cluster mode; 0 before the first status):
    /// CPU use of the process in percent of one core, resident bytes, mean invocation latency
    /// over the last status interval in µs. The SchedulerAgent's own placement candidate reads
    /// them, so this node is described like its peers.
    pub status_cpu_percent: AtomicU64,
    pub status_memory_bytes: AtomicU64,
    pub status_recent_mean_us: AtomicU64,
}

/// Totals of functions whose series were dropped ([`Metrics::retire`]).
#[derive(Debug, Default)]
struct Retired {
    meus: AtomicU64,
    reuse_hits: AtomicU64,
    cold_starts: AtomicU64,
    finished: AtomicU64,
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Drops `function`'s series (it is no longer deployed here), keeping what it counted in
    /// the node-wide totals. Without this, deploying and removing ever new names would grow
    /// the node's memory and its exposition without bound. A guest of the removed function
    /// still running records into the dropped series; that little is not in the totals.
    pub fn retire(&self, function: &str) {
        let removed = self
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function);
        let Some(f) = removed else { return };
        let r = &self.retired;
        r.meus.fetch_add(f.meus.load(Relaxed), Relaxed);
        r.reuse_hits.fetch_add(f.reuse_hits.load(Relaxed), Relaxed);
        r.cold_starts
            .fetch_add(f.cold_starts.load(Relaxed), Relaxed);
        r.finished.fetch_add(f.finished(), Relaxed);
        r.latency_count.fetch_add(f.latency.count(), Relaxed);
        r.latency_sum_us.fetch_add(f.latency.sum_us(), Relaxed);
    }

    /// Functions with a series of their own.
    pub fn function_count(&self) -> usize {
        self.read_functions().len()
    }

    /// The metrics of `function`, created on first use.
    pub fn function(&self, function: &str) -> Arc<FunctionMetrics> {
        if let Some(m) = self.read_functions().get(function) {
            return m.clone();
        }
        let tenant = self.tenant(tenant_of(function));
        let mut map = self.functions.write().unwrap_or_else(|p| p.into_inner());
        map.entry(function.to_owned())
            .or_insert_with(|| {
                Arc::new(FunctionMetrics {
                    tenant,
                    ..FunctionMetrics::default()
                })
            })
            .clone()
    }

    /// The metrics of `function` if it has any (a reader that must not bring back a removed
    /// function's series).
    pub fn existing_function(&self, function: &str) -> Option<Arc<FunctionMetrics>> {
        self.read_functions().get(function).cloned()
    }

    /// The counters of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantMetrics> {
        if let Some(m) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return m.clone();
        }
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        map.entry(tenant.to_owned()).or_default().clone()
    }

    /// Drops a removed tenant's series (it owns no function by then).
    pub fn retire_tenant(&self, tenant: &str) {
        self.tenants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(tenant);
    }

    /// Invocations answered and their summed latency, over all functions (for a node's
    /// recent-latency status: the difference of two readings).
    pub fn latency_totals(&self) -> (u64, u64) {
        let r = &self.retired;
        let retired = (
            r.latency_count.load(Relaxed),
            r.latency_sum_us.load(Relaxed),
        );
        self.read_functions().values().fold(retired, |(n, sum), m| {
            (n + m.latency.count(), sum + m.latency.sum_us())
        })
    }

    fn read_functions(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<FunctionMetrics>>> {
        self.functions.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record_restart(&self, actor: &str) {
        let mut map = self
            .actor_restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *map.entry(actor.to_owned()).or_default() += 1;
    }

    pub fn restarts(&self, actor: &str) -> u64 {
        let map = self
            .actor_restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(actor).copied().unwrap_or(0)
    }

    /// Totals over all functions: (meus, reuse hits, cold starts).
    pub fn reuse_totals(&self) -> (u64, u64, u64) {
        let r = &self.retired;
        let retired = (
            r.meus.load(Relaxed),
            r.reuse_hits.load(Relaxed),
            r.cold_starts.load(Relaxed),
        );
        self.read_functions()
            .values()
            .fold(retired, |(m, r, c), f| {
                (
                    m + f.meus.load(Relaxed),
                    r + f.reuse_hits.load(Relaxed),
                    c + f.cold_starts.load(Relaxed),
                )
            })
    }

    /// Invocations finished (successfully or not) over all functions.
    pub fn finished_invocations(&self) -> u64 {
        self.retired.finished.load(Relaxed)
            + self
                .read_functions()
                .values()
                .map(|f| f.finished())
                .sum::<u64>()
    }

    /// Share of MEUs served without compiling or loading; `None` before the first MEU.
    pub fn reuse_hit_rate(&self) -> Option<f64> {
        let (meus, hits, _) = self.reuse_totals();
        (meus > 0).then(|| hits as f64 / meus as f64)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, node: &str, max_instances: u32) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let node = escape(node);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        let hist = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        };
        let functions: Vec<(String, Arc<FunctionMetrics>)> = self
            .read_functions()
            .iter()
            .map(|(k, v)| (escape(k), v.clone()))
            .collect();

        counter(
            &mut out,
            "tern_invocations_total",
            "Finished invocations by function and outcome.",
        );
        for (f, m) in &functions {
            let labels = format!("function=\"{f}\"");
            render_outcomes(
                &mut out,
                "tern_invocations_total",
                &labels,
                &m.ok,
                &m.errors,
            );
        }
        counter(
            &mut out,
            "tern_tenant_invocations_total",
            "Invocations of the tenant's functions by outcome, its calls refused by its \
             quotas (outcome quota_exceeded), and its callers' requests refused for their role \
             (outcome forbidden).",
        );
        let tenants: Vec<(String, Arc<TenantMetrics>)> = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (escape(k), v.clone()))
            .collect();
        for (t, m) in &tenants {
            let labels = format!("tenant=\"{t}\"");
            render_outcomes(
                &mut out,
                "tern_tenant_invocations_total",
                &labels,
                &m.ok,
                &m.errors,
            );
        }
        render_guest_cpu(&mut out, "tenant", &tenants, |m| &m.guest_cpu_ns);
        counter(
            &mut out,
            "tern_request_errors_total",
            "Requests refused before reaching a function, by error code.",
        );
        for code in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "tern_request_errors_total{{code=\"{code}\"}} {}",
                self.request_errors[code.index()].load(Relaxed)
            );
        }
        for (name, help, pick) in [
            (
                "tern_meus_total",
                "Minimum execution units run.",
                (|m: &FunctionMetrics| &m.meus) as fn(&FunctionMetrics) -> &AtomicU64,
            ),
            (
                "tern_cold_starts_total",
                "MEUs that had to compile or load their module.",
                |m| &m.cold_starts,
            ),
            (
                "tern_module_reuse_total",
                "MEUs served without compiling or loading (reuse hits).",
                |m| &m.reuse_hits,
            ),
            (
                "tern_guest_memory_grows_total",
                "Guests' own memory.grow calls that added pages, in MEUs that succeeded: with \
                 guard pages, each costs page-protection changes then and when the next \
                 instance reuses the slot.",
                |m| &m.memory_grows,
            ),
        ] {
            counter(&mut out, name, help);
            for (f, m) in &functions {
                let _ = writeln!(out, "{name}{{function=\"{f}\"}} {}", pick(m).load(Relaxed));
            }
        }
        render_guest_cpu(&mut out, "function", &functions, |m| &m.guest_cpu_ns);
        gauge(
            &mut out,
            "tern_reuse_hit_ratio",
            "Share of MEUs served without compiling or loading since start.",
        );
        let _ = writeln!(
            out,
            "tern_reuse_hit_ratio{{node=\"{node}\"}} {}",
            self.reuse_hit_rate().unwrap_or(0.0)
        );
        for (name, help, pick) in [
            (
                "tern_invocation_duration_seconds",
                "End-to-end invocation latency on this node.",
                (|m: &FunctionMetrics| &m.latency) as fn(&FunctionMetrics) -> &Histogram,
            ),
            (
                "tern_meu_load_seconds",
                "Eq. 3 T_load: module load time paid on the request path (cold).",
                |m| &m.t_load,
            ),
            (
                "tern_meu_reuse_seconds",
                "Eq. 3 T_reuse: time to find the preheated module (warm).",
                |m| &m.t_reuse,
            ),
            (
                "tern_meu_instantiate_seconds",
                "Eq. 3 T_inst: instantiation time.",
                |m| &m.t_inst,
            ),
            ("tern_meu_exec_seconds", "Guest execution time.", |m| {
                &m.t_exec
            }),
        ] {
            hist(&mut out, name, help);
            for (f, m) in &functions {
                pick(m).render(&mut out, name, &format!("function=\"{f}\""));
            }
        }
        for (name, help, v) in [
            (
                "tern_queue_in_flight",
                "Invocations admitted and not yet answered.",
                self.in_flight.load(Relaxed),
            ),
            (
                "tern_queue_waiting_for_slot",
                "MEUs waiting for a free instance slot.",
                self.waiting_for_slot.load(Relaxed),
            ),
            (
                "tern_executing",
                "MEUs currently running a guest.",
                self.executing.load(Relaxed),
            ),
            (
                "tern_loaded_modules",
                "Modules loaded and ready to instantiate.",
                self.loaded_modules.load(Relaxed),
            ),
            (
                "tern_cluster_peers_up",
                "Peers this node has a verified connection to.",
                self.peers_up.load(Relaxed),
            ),
            (
                "tern_stored_results",
                "Records in the journal of asynchronous invocations (pending and finished).",
                self.stored_results.load(Relaxed),
            ),
            (
                "tern_stored_result_bytes",
                "Bytes of the journal of asynchronous invocations, as stored.",
                self.stored_result_bytes.load(Relaxed),
            ),
            (
                "tern_memory_budget_mb",
                "MiB that running guests may claim together (each its function's memory_mb).",
                self.memory_budget_mb.load(Relaxed) as i64,
            ),
            (
                "tern_placement_guard_learned_in_charge",
                "1 while the rolling-reward guard keeps the learned policy in charge, 0 while the heuristic is.",
                self.placement_guard_learned.load(Relaxed),
            ),
        ] {
            gauge(&mut out, name, help);
            let _ = writeln!(out, "{name} {v}");
        }
        gauge(
            &mut out,
            "tern_instance_utilisation",
            "Share of instance slots in use.",
        );
        let used = self.executing.load(Relaxed).max(0) as f64;
        let _ = writeln!(
            out,
            "tern_instance_utilisation {}",
            used / f64::from(max_instances.max(1))
        );
        for (name, help, v) in [
            (
                "tern_admission_rejected_total",
                "Invocations refused with 429 because the queue was full.",
                self.rejected_overloaded.load(Relaxed),
            ),
            (
                "tern_compiles_total",
                "Modules compiled (at deploy or on a missing artifact).",
                self.compiles.load(Relaxed),
            ),
            (
                "tern_deploys_total",
                "Successful deploys.",
                self.deploys.load(Relaxed),
            ),
            (
                "tern_resubmissions_total",
                "Invocations re-submitted after a pipeline actor died holding them.",
                self.resubmissions.load(Relaxed),
            ),
            (
                "tern_slow_lane_moves_total",
                "Guests moved to the low-priority lane after a full time slice.",
                self.slow_lane_moves.load(Relaxed),
            ),
            (
                "tern_slow_lane_starts_total",
                "Guests started on the low-priority lane: their function's recent guests outlived \
                 their first time slice.",
                self.slow_lane_starts.load(Relaxed),
            ),
            (
                "tern_epoch_ticks_total",
                "Epoch ticks (deadline clock); they stop while no guest runs.",
                self.epoch_ticks.load(Relaxed),
            ),
            (
                "tern_forwarded_meus_total",
                "MEUs sent to another node to run.",
                self.forwarded.load(Relaxed),
            ),
            (
                "tern_http_connections_refused_total",
                "HTTP connections answered 429 and closed: max_connections or max_connections_per_ip reached.",
                self.http_connections_refused.load(Relaxed),
            ),
            (
                "tern_abandoned_meus_total",
                "MEUs cancelled, waiting or running, because their caller went away.",
                self.abandoned_meus.load(Relaxed),
            ),
            (
                "tern_journal_full_refusals_total",
                "Asynchronous invocations refused with 429: max_stored_results or max_stored_result_mb reached.",
                self.journal_full_refusals.load(Relaxed),
            ),
            (
                "tern_store_quarantined_total",
                "Corrupt store records moved to the quarantine tree (the node goes on without them).",
                self.store_quarantined.load(Relaxed),
            ),
            (
                "tern_store_write_failures_total",
                "Store writes that did not reach the disk (full or failing); nothing was \
                 acknowledged. After the first, the store takes writes only once the node restarts.",
                self.store_write_failures.load(Relaxed),
            ),
            (
                "tern_gc_modules_removed_total",
                "Stored modules deleted because no live function uses them.",
                self.gc_modules_removed.load(Relaxed),
            ),
            (
                "tern_gc_artifacts_removed_total",
                "Compiled artifacts deleted because no live function uses their module.",
                self.gc_artifacts_removed.load(Relaxed),
            ),
            (
                "tern_served_for_peers_total",
                "MEUs run for another node.",
                self.served_for_peers.load(Relaxed),
            ),
            (
                "tern_failover_reruns_total",
                "MEUs run again elsewhere after the node running them was lost or refused them.",
                self.failover_reruns.load(Relaxed),
            ),
            (
                "tern_async_taken_over_total",
                "Async invocations of a peer that stayed away, run here from the copy kept here.",
                self.async_taken_over.load(Relaxed),
            ),
            (
                "tern_async_uncopied_total",
                "Async invocations accepted here that no peer kept a copy of.",
                self.async_uncopied.load(Relaxed),
            ),
            (
                "tern_sync_unkept_total",
                "Sync keyed results run here as their key's home that no peer kept.",
                self.sync_unkept.load(Relaxed),
            ),
            (
                "tern_rejected_handshakes_total",
                "Mesh connections refused by the TLS handshake or the node-name check.",
                self.rejected_handshakes.load(Relaxed),
            ),
            (
                "tern_rejected_session_streams_total",
                "ractor_cluster session streams refused by the node-name check.",
                self.rejected_session_streams.load(Relaxed),
            ),
            (
                "tern_replicated_entries_total",
                "Registry entries (deploys, removals) applied from other nodes.",
                self.replicated.load(Relaxed),
            ),
            (
                "tern_placement_observations_total",
                "Placement outcomes fed back to the learned placement.",
                self.placement_observed.load(Relaxed),
            ),
            (
                "tern_policy_updates_total",
                "Online PPO updates whose weights now serve.",
                self.policy_updates.load(Relaxed),
            ),
            (
                "tern_policy_transitions_dropped_total",
                "Transitions the online learner dropped because its queue was full.",
                self.policy_dropped_transitions.load(Relaxed),
            ),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {v}");
        }
        counter(
            &mut out,
            "tern_placement_decisions_total",
            "Placement decisions of the learned placement, by the policy that made them.",
        );
        for (policy, v) in [
            ("learned", &self.placement_learned),
            ("fallback", &self.placement_fallback),
            ("heuristic", &self.placement_heuristic),
        ] {
            let _ = writeln!(
                out,
                "tern_placement_decisions_total{{policy=\"{policy}\"}} {}",
                v.load(Relaxed)
            );
        }
        for (name, help, session, lane) in [
            (
                "tern_peer_statuses_received_total",
                "Peers' statuses received, by path: session (ractor control plane) or lane.",
                &self.statuses_via_session,
                &self.statuses_via_lane,
            ),
            (
                "tern_peer_announcements_received_total",
                "Registry announcements (chunks of entries) received from peers, by path.",
                &self.announcements_via_session,
                &self.announcements_via_lane,
            ),
        ] {
            counter(&mut out, name, help);
            for (path, v) in [("session", session), ("lane", lane)] {
                let _ = writeln!(out, "{name}{{path=\"{path}\"}} {}", v.load(Relaxed));
            }
        }
        counter(
            &mut out,
            "tern_control_refused_total",
            "Control-plane messages refused (bad ticket, malformed, oversized, unconfirmed grant).",
        );
        let _ = writeln!(
            out,
            "tern_control_refused_total {}",
            self.control_refused.load(Relaxed)
        );
        hist(&mut out, "tern_compile_seconds", "Module compile time.");
        self.compile_time
            .render(&mut out, "tern_compile_seconds", "");
        hist(
            &mut out,
            "tern_forward_seconds",
            "MEUs a peer ran for this node: from sending each to its answer here.",
        );
        self.forward_time
            .render(&mut out, "tern_forward_seconds", "");
        hist(
            &mut out,
            "tern_forward_peer_seconds",
            "The same MEUs: the peer's own time on each, as it reports it.",
        );
        self.forward_peer_time
            .render(&mut out, "tern_forward_peer_seconds", "");
        counter(
            &mut out,
            "tern_actor_restarts_total",
            "Actor restarts by the node supervisor.",
        );
        for (actor, n) in self
            .actor_restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "tern_actor_restarts_total{{actor=\"{}\"}} {n}",
                escape(actor)
            );
        }
        out
    }
}

/// One series of `name` per outcome: `ok` always, each error code once it has happened.
/// `tern_guest_cpu_seconds_total` and `tern_guest_energy_joules_total` (prefixed
/// `tern_tenant_` for tenants) for each of `series`, labelled `label`.
fn render_guest_cpu<M>(
    out: &mut String,
    label: &str,
    series: &[(String, Arc<M>)],
    cpu_ns: impl Fn(&M) -> &AtomicU64,
) {
    let prefix = if label == "tenant" {
        "tern_tenant_"
    } else {
        "tern_"
    };
    let _ = writeln!(
        out,
        "# HELP {prefix}guest_cpu_seconds_total CPU time of the {label}'s guests (instantiation \
         and execution).\n# TYPE {prefix}guest_cpu_seconds_total counter"
    );
    for (name, m) in series {
        let seconds = cpu_ns(m).load(Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "{prefix}guest_cpu_seconds_total{{{label}=\"{name}\"}} {seconds}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP {prefix}guest_energy_joules_total Energy of the {label}'s guests: their CPU \
         time at {MODEL_WATTS_PER_CORE} W per busy core (the CPU-time model).\n\
         # TYPE {prefix}guest_energy_joules_total counter"
    );
    for (name, m) in series {
        let joules = cpu_ns(m).load(Relaxed) as f64 / 1e9 * MODEL_WATTS_PER_CORE;
        let _ = writeln!(
            out,
            "{prefix}guest_energy_joules_total{{{label}=\"{name}\"}} {joules}"
        );
    }
}

fn render_outcomes(
    out: &mut String,
    name: &str,
    labels: &str,
    ok: &AtomicU64,
    errors: &[AtomicU64; ErrorCode::ALL.len()],
) {
    let _ = writeln!(
        out,
        "{name}{{{labels},outcome=\"ok\"}} {}",
        ok.load(Relaxed)
    );
    for code in ErrorCode::ALL {
        let n = errors[code.index()].load(Relaxed);
        if n > 0 {
            let _ = writeln!(out, "{name}{{{labels},outcome=\"{code}\"}} {n}");
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        for us in [5, 30, 30, 2_000_000, 99_000_000] {
            h.observe_us(us);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "f=\"a\"");
        assert!(
            out.contains("x_bucket{f=\"a\",le=\"0.00001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{f=\"a\",le=\"0.00005\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{f=\"a\",le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{f=\"a\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{f=\"a\"} 5\n"), "{out}");
    }

    #[test]
    fn a_retired_function_loses_its_series_but_not_its_share_of_the_totals() {
        let m = Metrics::default();
        for (name, meus, hits) in [("a", 4, 3), ("b", 6, 1)] {
            let f = m.function(name);
            f.meus.fetch_add(meus, Relaxed);
            f.reuse_hits.fetch_add(hits, Relaxed);
            f.cold_starts.fetch_add(meus - hits, Relaxed);
            f.ok.fetch_add(meus - 1, Relaxed);
            f.record_error(ErrorCode::Timeout);
            f.latency.observe_us(100 * meus);
        }
        let before = (
            m.reuse_totals(),
            m.finished_invocations(),
            m.latency_totals(),
        );
        m.retire("b");
        m.retire("b");
        m.retire("never-deployed");
        assert_eq!(m.function_count(), 1);
        assert_eq!(
            (
                m.reuse_totals(),
                m.finished_invocations(),
                m.latency_totals()
            ),
            before
        );
        let text = m.render("n", 1);
        assert!(!text.contains("function=\"b\""), "{text}");
        assert!(text.contains("function=\"a\""), "{text}");
        // Deployed again, it starts a fresh series; the totals keep growing.
        m.function("b").meus.fetch_add(1, Relaxed);
        assert_eq!(m.reuse_totals().0, before.0.0 + 1);
    }

    #[test]
    fn a_tenants_outcomes_add_up_its_functions_and_outlive_their_removal() {
        let m = Metrics::default();
        let (work, other, plain) = (
            m.function("acme.work"),
            m.function("acme.other"),
            m.function("echo"),
        );
        work.record_ok();
        work.record_ok();
        other.record_error(ErrorCode::QuotaExceeded);
        plain.record_ok();
        m.tenant("acme").record_error(ErrorCode::QuotaExceeded);
        m.retire("acme.work");
        let text = m.render("n", 1);
        for line in [
            "tern_tenant_invocations_total{tenant=\"acme\",outcome=\"ok\"} 2\n",
            "tern_tenant_invocations_total{tenant=\"acme\",outcome=\"quota_exceeded\"} 2\n",
            "tern_tenant_invocations_total{tenant=\"default\",outcome=\"ok\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        m.function("acme.work").record_ok();
        assert_eq!(
            m.tenant("acme").ok.load(Relaxed),
            3,
            "redeployed, same tenant series"
        );
        m.retire_tenant("acme");
        assert!(!m.render("n", 1).contains("tenant=\"acme\""));
    }

    #[test]
    fn reuse_rate_and_render() {
        let m = Metrics::default();
        assert_eq!(m.reuse_hit_rate(), None);
        let f = m.function("echo");
        f.meus.fetch_add(4, Relaxed);
        f.reuse_hits.fetch_add(3, Relaxed);
        f.cold_starts.fetch_add(1, Relaxed);
        f.record_error(ErrorCode::Timeout);
        assert_eq!(m.reuse_hit_rate(), Some(0.75));
        let text = m.render("n\"1", 10);
        assert!(text.contains("tern_meus_total{function=\"echo\"} 4\n"));
        assert!(text.contains("tern_invocations_total{function=\"echo\",outcome=\"timeout\"} 1\n"));
        assert!(text.contains("tern_reuse_hit_ratio{node=\"n\\\"1\"} 0.75\n"));
        m.placement_learned.fetch_add(2, Relaxed);
        m.placement_fallback.fetch_add(1, Relaxed);
        let text = m.render("n", 10);
        assert!(text.contains("tern_placement_decisions_total{policy=\"learned\"} 2\n"));
        assert!(text.contains("tern_placement_decisions_total{policy=\"fallback\"} 1\n"));
        m.placement_heuristic.fetch_add(3, Relaxed);
        m.placement_guard_learned.store(1, Relaxed);
        m.policy_updates.fetch_add(4, Relaxed);
        let text = m.render("n", 10);
        assert!(text.contains("tern_placement_decisions_total{policy=\"heuristic\"} 3\n"));
        assert!(text.contains("tern_placement_guard_learned_in_charge 1\n"));
        assert!(text.contains("tern_policy_updates_total 4\n"));
    }
}
