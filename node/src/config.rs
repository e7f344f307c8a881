//! Node configuration: built-in defaults, overridden by a TOML file, overridden by `TERN_*`
//! environment variables, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use tern_wire::NodeClass;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// `policy_checkpoint` is unreadable, not a safetensors checkpoint of the learned policy,
    /// or has the wrong layer widths.
    #[error("policy_checkpoint {path}: {message}")]
    PolicyCheckpoint { path: String, message: String },
}

impl From<tern_placement::learned::CheckpointError> for ConfigError {
    fn from(e: tern_placement::learned::CheckpointError) -> Self {
        ConfigError::PolicyCheckpoint {
            path: e.path,
            message: e.message,
        }
    }
}

/// How the HTTP API authenticates callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every caller may do everything. Allowed only when `listen` is a loopback address: a
    /// node reachable from other machines without authentication refuses to start.
    Off,
    /// `Authorization: Bearer <token>` on every request but `/healthz`; roles decide what a
    /// token may do. The default: a node hosts other people's functions.
    #[default]
    Tokens,
}

/// How guests' linear memories are bounds-checked and recycled (the runtime's
/// [`tern_runtime::MemoryProfile`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryProfile {
    /// Guard pages and copy-on-write images, Spectre mitigations on (wasmtime's defaults).
    #[default]
    GuardPages,
    /// No virtual-memory work per instance: explicit bounds checks, no guard pages, memory
    /// reset by `memset`, and no Spectre mitigations for heap and table accesses.
    ExplicitBounds,
}

impl From<MemoryProfile> for tern_runtime::MemoryProfile {
    fn from(p: MemoryProfile) -> Self {
        match p {
            MemoryProfile::GuardPages => tern_runtime::MemoryProfile::GuardPages,
            MemoryProfile::ExplicitBounds => tern_runtime::MemoryProfile::ExplicitBounds,
        }
    }
}

/// How functions get from a deploy to a running instance (the runtime's
/// [`tern_runtime::RuntimeProfile`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeProfile {
    /// Compiled at deploy, artifacts on disk, preheated, pooled instances.
    #[default]
    Optimised,
    /// Compiled on first use per node, nothing preheated or written compiled, on-demand
    /// instances: what the optimisation is measured against, not for production.
    Baseline,
}

impl From<RuntimeProfile> for tern_runtime::RuntimeProfile {
    fn from(p: RuntimeProfile) -> Self {
        match p {
            RuntimeProfile::Optimised => tern_runtime::RuntimeProfile::Optimised,
            RuntimeProfile::Baseline => tern_runtime::RuntimeProfile::Baseline,
        }
    }
}

/// How tenants' guests are separated on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the node process: WebAssembly SFI, store limits, deadlines.
    InProcess,
    /// Light-container isolation: each tenant's guests in a cell of its own (namespaces, a
    /// cgroup, capabilities dropped, seccomp). The node refuses to start where the host cannot
    /// give cells, naming what is missing.
    Lci,
    /// `lci` where the host can give cells, else `in-process` with a warning at start naming
    /// what is missing. The default: tenants are separated as far as the host allows.
    #[default]
    Auto,
}

/// Who sets each tenant's cell quota (CPU cap, `memory_high`, keep-warm) every
/// `quota_interval_ms`, with `isolation = "lci"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CellQuota {
    /// `learned` when `policy_checkpoint` is set, `eq6` otherwise.
    #[default]
    Auto,
    /// The quota network of `policy_checkpoint`, guarded by the static Eq. 6 shares.
    Learned,
    /// The static Eq. 6 shares only: CPU by tenant weight, the hard memory quota, the node's
    /// keep-warm time.
    Eq6,
}

/// The weight of each resource dimension in the paper's Eq. 4 (`tern_isolation_strength`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsolationWeights {
    pub cpu: f64,
    pub memory: f64,
    pub pid: f64,
    pub net: f64,
    pub vfs: f64,
    pub syscalls: f64,
}

impl Default for IsolationWeights {
    fn default() -> Self {
        Self {
            cpu: 1.0,
            memory: 1.0,
            pid: 1.0,
            net: 1.0,
            vfs: 1.0,
            syscalls: 1.0,
        }
    }
}

impl IsolationWeights {
    fn all(&self) -> [f64; 6] {
        [
            self.cpu,
            self.memory,
            self.pid,
            self.net,
            self.vfs,
            self.syscalls,
        ]
    }
}

impl From<IsolationWeights> for tern_cell::strength::Weights {
    fn from(w: IsolationWeights) -> Self {
        Self(w.all())
    }
}

/// Every setting of a node. Field names are the TOML keys; the environment variable of a field
/// is `TERN_` + its name in upper case (e.g. `TERN_QUEUE_CAP=20000`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Where sled and the compiled artifacts live.
    pub data_dir: PathBuf,
    /// Name of this node (`x-tern-node`, `TERN_NODE` in guests).
    pub node_name: String,
    /// Directory of example `.wasm` files that `tern up` deploys at start.
    pub examples_dir: PathBuf,
    /// Which examples to deploy (file stem = function name).
    pub examples: Vec<String>,
    /// Most invocations in flight (sync and async) before 429 `overloaded`.
    pub queue_cap: usize,
    /// Largest invocation request body.
    pub max_body_bytes: usize,
    /// Largest module upload; checked before parsing.
    pub max_module_bytes: usize,
    pub default_timeout_ms: u32,
    pub max_timeout_ms: u32,
    pub default_memory_mb: u32,
    pub max_memory_mb: u32,
    /// Cap on a guest's stdout.
    pub max_output_bytes: usize,
    /// Each function's guest stderr lines kept on this node, bytes (0: discarded).
    pub guest_log_bytes: usize,
    /// The guest stderr lines of one tenant's functions kept on this node together, bytes:
    /// past it, the tenant's largest rings give up their oldest lines.
    pub guest_log_tenant_bytes: usize,
    /// Base URL of an OTLP/HTTP receiver (`http://collector:4318`; `/v1/traces` is appended)
    /// that invocation traces are sent to. Unset: the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` if set, else no export.
    pub otlp_endpoint: Option<String>,
    /// Also send the guest stderr lines this node keeps (`guest_log_bytes`) as OTLP log
    /// records, to `otlp_endpoint` (+ `/v1/logs`) or the standard
    /// `OTEL_EXPORTER_OTLP_[LOGS_]ENDPOINT`. Off by default: guests' output may hold their
    /// tenants' data.
    pub guest_logs_otlp: bool,
    /// Also send the node's own log lines (what `--log` lets through) as OTLP log records,
    /// to the same receiver as `guest_logs_otlp`. Off by default.
    pub node_logs_otlp: bool,
    /// Share of new invocations traced (0 to 1); a caller's sampled `traceparent` is always
    /// followed. Unset: `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, else 1.
    pub trace_sample_ratio: Option<f64>,
    /// Whether a caller's sampled `traceparent` decides (parent-based sampling, the
    /// OpenTelemetry default). `false`: only `trace_sample_ratio` decides, so no caller can
    /// make the node trace more. Unset: `OTEL_TRACES_SAMPLER` (its `parentbased_` forms
    /// follow callers), else `true`.
    pub trace_follow_caller: Option<bool>,
    /// Guests running at once (pooling allocator slots); more wait for a slot.
    pub max_instances: u32,
    /// MiB that running guests may claim together (each its function's `memory_mb`); more
    /// wait, within their time limit. 0 = three quarters of the machine's memory.
    pub memory_budget_mb: u64,
    /// Percentage (1-100) of the memory budget that one tenant with a finite
    /// `memory_budget_bytes` quota may hold on this node, at least one guest of
    /// `max_memory_mb`. Quotas are the same on every node, nodes are not: this keeps a quota
    /// sized for a large node from letting one tenant take a small one. A tenant whose
    /// memory quota is unlimited (`default`, unless an admin set one) is not held to it.
    pub tenant_memory_percent: u8,
    pub compile_timeout_ms: u64,
    pub compile_concurrency: usize,
    pub keep_resident_bytes: usize,
    /// `guard-pages` (the default) or `explicit-bounds`: no `mprotect` per instance, at the
    /// price of bounds checks in guest code and of Cranelift's Spectre mitigations for heap
    /// and table accesses (see the README before turning it on where tenants share a node).
    pub memory_profile: MemoryProfile,
    /// `optimised` (the default) or `baseline`: compile on first use, no preheating, no
    /// compiled artifacts kept, on-demand instance allocation. For measuring what the
    /// runtime optimisation is worth; slower in every way.
    pub runtime_profile: RuntimeProfile,
    /// `auto` (the default: `lci` where the host allows it), `lci` (each tenant's guests in a
    /// cell of its own) or `in-process`.
    pub isolation: Isolation,
    /// The executable cells run (with `cell` as its first argument); unset: this node's own.
    pub cell_program: Option<PathBuf>,
    /// A cell with no call for this long is stopped (its tenant's next call starts a new one).
    pub cell_keep_warm_secs: u64,
    /// Eq. 4's weight of each resource dimension.
    pub isolation_weights: IsolationWeights,
    /// Who decides each tenant's cell quota: `auto`, `learned` or `eq6`.
    pub cell_quota: CellQuota,
    /// How often each tenant's cell quota is decided, ms.
    pub quota_interval_ms: u64,
    pub max_loaded_modules: usize,
    pub epoch_tick_us: u64,
    /// Workers a `map` is spread over; 0 = number of CPUs.
    pub map_parallelism: usize,
    /// Finished async results are kept this long.
    pub result_ttl_secs: u64,
    /// In a cluster, each async invocation a node accepts is copied to the next member up
    /// (its keeper) before the 202; when the accepting node has been away this long, the
    /// keeper runs it instead. 0 turns copies and takeover off.
    pub async_takeover_secs: u64,
    /// Most functions deployed at once. A deploy of a new name past it is refused with 429
    /// `quota_exceeded`; new versions of deployed names are not. Replicated entries are
    /// applied regardless, so a cluster's registries still converge (set the same value on
    /// every node).
    pub max_functions: usize,
    /// Most asynchronous invocations the journal holds (pending and finished results); past
    /// it, new ones are refused with 429 `overloaded` until results expire.
    pub max_stored_results: u64,
    /// Most MiB of journal (inputs and results, as stored); past it, new asynchronous
    /// invocations are refused with 429 `overloaded`. Results of work already accepted are
    /// always stored, so the journal can pass this by at most what is in flight.
    pub max_stored_result_mb: u64,
    /// Idle keep-alive connections and slow request headers are cut after this long.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive within this long, plus its length at
    /// `min_body_bytes_per_sec`; past it the answer is 408 `request_timeout`.
    pub body_read_timeout_ms: u64,
    /// The slowest body upload accepted beyond `body_read_timeout_ms`.
    pub min_body_bytes_per_sec: u64,
    /// Open HTTP connections; more are answered 429 `overloaded` and closed at once.
    pub max_connections: usize,
    /// Open HTTP connections from one IP address; more are answered 429 and closed at once.
    pub max_connections_per_ip: usize,
    /// Eq. 6's α: how much a tenant's waits beyond its SLA class's latency target raise its
    /// share of instance slots.
    pub share_alpha: f64,
    /// Eq. 6's β: how much a tenant's queue fill (queued / `max_queued`) raises its share.
    pub share_beta: f64,
    /// Eq. 6's cap E on the latency term (waits of more than `1 + E` times the target count
    /// as `1 + E`), so no tenant's urgency can starve the others.
    pub share_max_latency_excess: f64,

    // --- cluster; all off by default, so `tern up` alone is a single node ---
    /// Directory written by `tern cluster init` (`ca.pem`, `<node>.pem`, `<node>.key`).
    /// Setting it turns the node into a cluster member named `node_name`.
    pub cluster_dir: Option<PathBuf>,
    /// UDP address of this node's QUIC mesh endpoint.
    pub cluster_listen: SocketAddr,
    /// The other members, as `name=host:port` (their `cluster_listen`).
    pub peers: Vec<String>,
    /// `standard`, `edge-small` (128 MiB, 50 ms) or `cpu-burst` (512 MiB, 900 ms): the most
    /// memory and time a function may need to be placed on this node (the paper's Eq. 2
    /// bounds a function's needs by its platform).
    pub node_class: NodeClass,
    /// `warm-affinity` (consistent hashing by function, spill to least loaded),
    /// `local-first`, `least-loaded` (the shortest queue, warm or not: a baseline for the
    /// learned policy), or `learned`: the PPO dispatch network of tern-policy scores every
    /// candidate node from its load features and picks the argmax of score − λ · expected
    /// cold-start ms (Eq. 1); dead, full and unfit nodes are masked, and an unusable policy
    /// output falls back to warm affinity (`tern_placement_decisions_total{policy=…}`).
    /// `learned` needs `policy_checkpoint`.
    pub placement: String,
    /// Exported weights of the learned policy (a safetensors checkpoint written by
    /// tern-policy, e.g. `policy/reports/ppo-weights.safetensors`), read once at start.
    /// Required by `placement = "learned"`; a missing, unreadable or wrongly shaped file is a
    /// start-up error. Unset by default.
    pub policy_checkpoint: Option<PathBuf>,
    /// `learned` placement only: a rolling-reward guard hands decisions to warm affinity while
    /// the learned policy's mean reward over the last `placement_guard_window` observed MEUs
    /// is more than `placement_guard_margin_ms` below the heuristic's. Every 20th decision
    /// goes to the arm not in charge, so both estimates stay fresh.
    pub placement_guard: bool,
    pub placement_guard_window: usize,
    pub placement_guard_margin_ms: f64,
    /// `learned` placement only: train the dispatch network online (PPO, in a background
    /// thread) from the outcomes of its own decisions, `online_batch` transitions per update,
    /// and swap the new weights in atomically. Needs a `tern` built with
    /// `--features online-learning` (the training backend, candle).
    pub online_learning: bool,
    pub online_batch: usize,
    /// UDP address of the QUIC API for `tern-client` (needs `cluster_dir` for its
    /// certificate); off when unset.
    pub client_listen: Option<SocketAddr>,
    /// Extra tokens accepted on the client API, each acting for every tenant (besides CA
    /// client certificates and, with `auth = "tokens"`, the node's bearer tokens). With
    /// `auth = "off"` and none set, the client API is open (loopback only).
    pub client_tokens: Vec<String>,
    /// Who may use the HTTP API: `tokens` (the default: a bearer token with a role; the first
    /// start writes an admin token to `<data_dir>/admin.token`, mode 0600) or `off` (anyone
    /// who reaches it; only on a loopback `listen` address).
    pub auth: AuthMode,
    /// Run a ractor_cluster session over each peer link (QUIC stream kind 0x01).
    pub ractor_sessions: bool,
    /// Idle data-plane streams kept open per peer for later forwarded requests (each request
    /// takes one, and gives it back). 0 opens a stream per request, which costs about four
    /// extra datagrams per forwarded invocation.
    pub cluster_idle_lanes: usize,
    /// After (re)starting, a member answers 503 instead of 404 for a function it does not
    /// know until it has pulled and applied a peer's registry; while no sync is under way
    /// (no peer reached), for at most this long.
    pub cluster_sync_grace_ms: u64,
}

const MAX_GUARD_WINDOW: usize = 1 << 16;
/// A function's stderr ring: the node holds up to `max_functions` of them.
const MAX_GUEST_LOG_BYTES: usize = 1 << 20;
/// One tenant's stderr rings together: the node holds up to one such budget per tenant.
const MAX_GUEST_LOG_TENANT_BYTES: usize = 64 << 20;
const MAX_GUARD_MARGIN_MS: f64 = 60_000.0;
const MAX_ONLINE_BATCH: usize = 1 << 16;

/// Keys whose default is "unset", so they are absent from the defaults table but may still be
/// set from the environment.
const OPTIONAL_KEYS: &[&str] = &[
    "otlp_endpoint",
    "trace_sample_ratio",
    "trace_follow_caller",
    "cluster_dir",
    "client_listen",
    "policy_checkpoint",
    "cell_program",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data_dir: PathBuf::from("./tern-data"),
            node_name: "local".into(),
            examples_dir: PathBuf::from("functions/dist"),
            examples: vec!["echo".into(), "matmul-json".into()],
            queue_cap: 16_384,
            max_body_bytes: 6 << 20,
            max_module_bytes: 64 << 20,
            default_timeout_ms: 10_000,
            max_timeout_ms: 900_000,
            default_memory_mb: 128,
            max_memory_mb: 512,
            max_output_bytes: 16 << 20,
            guest_log_bytes: 16 << 10,
            guest_log_tenant_bytes: 1 << 20,
            otlp_endpoint: None,
            guest_logs_otlp: false,
            node_logs_otlp: false,
            trace_sample_ratio: None,
            trace_follow_caller: None,
            max_instances: 1000,
            memory_budget_mb: 0,
            tenant_memory_percent: 25,
            compile_timeout_ms: 60_000,
            compile_concurrency: 1,
            keep_resident_bytes: 4 << 20,
            memory_profile: MemoryProfile::GuardPages,
            runtime_profile: RuntimeProfile::Optimised,
            isolation: Isolation::Auto,
            cell_program: None,
            cell_keep_warm_secs: 600,
            isolation_weights: IsolationWeights::default(),
            cell_quota: CellQuota::Auto,
            quota_interval_ms: 1000,
            max_loaded_modules: 1024,
            epoch_tick_us: 1000,
            map_parallelism: 0,
            result_ttl_secs: 3600,
            async_takeover_secs: 10,
            max_functions: 10_000,
            max_stored_results: 100_000,
            max_stored_result_mb: 4096,
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            min_body_bytes_per_sec: 64 << 10,
            max_connections: 16_384,
            max_connections_per_ip: 4096,
            share_alpha: 1.0,
            share_beta: 1.0,
            share_max_latency_excess: 2.0,
            cluster_dir: None,
            cluster_listen: SocketAddr::from(([127, 0, 0, 1], 7900)),
            peers: Vec::new(),
            node_class: NodeClass::Standard,
            placement: "warm-affinity".into(),
            policy_checkpoint: None,
            placement_guard: true,
            placement_guard_window: 256,
            placement_guard_margin_ms: 0.1,
            online_learning: false,
            online_batch: 512,
            client_listen: None,
            client_tokens: Vec::new(),
            auth: AuthMode::Tokens,
            ractor_sessions: true,
            cluster_idle_lanes: 256,
            cluster_sync_grace_ms: 10_000,
        }
    }
}

/// A peer as `--peer` (and `tern chaos relay --node`) takes it: `name=host:port`.
pub fn parse_peer(p: &str) -> Result<(String, SocketAddr), ConfigError> {
    let (name, addr) = p
        .split_once('=')
        .ok_or_else(|| ConfigError::Invalid(format!("peer {p:?} is not name=host:port")))?;
    let addr = addr
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("peer {p:?}: bad address: {e}")))?;
    Ok((name.to_owned(), addr))
}

impl Config {
    /// Defaults ← `file` (if any) ← `TERN_*` variables from `env`, validated.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config = Self::load_unvalidated(file, env)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] without [`Config::validate`], for a caller that overrides settings
    /// (command-line flags) and validates the result: a setting valid only with a flag's
    /// value (`client_listen` with `--cluster-dir`) must not be refused before the flag.
    pub fn load_unvalidated(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let file_table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
            table.extend(file_table);
        }
        for (key, value) in env {
            let Some(field) = key.strip_prefix("TERN_") else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if !table.contains_key(&field) && !OPTIONAL_KEYS.contains(&field.as_str()) {
                continue; // TERN_SERVER and friends belong to the CLI, not the node.
            }
            table.insert(field, env_value(&value));
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }

    /// The memory budget in force: `memory_budget_mb` if set, else three quarters of
    /// `mem_total_kib` (the machine's memory), else (memory unknown) enough for every slot at
    /// the largest size.
    pub fn memory_budget_mb(&self, mem_total_kib: Option<u64>) -> u64 {
        if self.memory_budget_mb > 0 {
            return self.memory_budget_mb;
        }
        match mem_total_kib {
            Some(kib) => kib / 1024 * 3 / 4,
            None => u64::from(self.max_instances) * u64::from(self.max_memory_mb),
        }
    }

    /// Checks the memory budget against the limits: a function of `max_memory_mb` must be able
    /// to run. Returns, when the slots at the largest size would claim more than the budget,
    /// how many such guests run at once (the budget, not `max_instances`, is then the cap).
    pub fn check_memory_budget(&self, budget_mb: u64) -> Result<Option<u64>, ConfigError> {
        if u64::from(self.max_memory_mb) > budget_mb {
            return Err(ConfigError::Invalid(format!(
                "max_memory_mb ({} MiB) is more than the memory budget ({budget_mb} MiB): a \
                 function of that size could never run; lower max_memory_mb or raise \
                 memory_budget_mb",
                self.max_memory_mb
            )));
        }
        let claimed = u64::from(self.max_instances) * u64::from(self.max_memory_mb);
        Ok((claimed > budget_mb).then(|| budget_mb / u64::from(self.max_memory_mb)))
    }

    /// Where and how much to export traces: this config's `otlp_endpoint` and
    /// `trace_sample_ratio` over the standard `OTEL_*` variables in `env`; `None`: off.
    pub fn trace_export(
        &self,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Option<tern_telemetry::ExportSettings>, ConfigError> {
        tern_telemetry::ExportSettings::resolve(
            tern_telemetry::NodeTraceConfig {
                otlp_endpoint: self.otlp_endpoint.as_deref(),
                sample_ratio: self.trace_sample_ratio,
                follow_caller: self.trace_follow_caller,
            },
            &self.node_name,
            env,
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Where log records go (guests' stderr lines with `guest_logs_otlp`, the node's own
    /// lines with `node_logs_otlp`), over the standard `OTEL_*` variables in `env`; `None`:
    /// nothing forwarded.
    pub fn log_export(
        &self,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Option<tern_telemetry::LogExportSettings>, ConfigError> {
        let asked_by = if self.guest_logs_otlp {
            Some("guest_logs_otlp")
        } else if self.node_logs_otlp {
            Some("node_logs_otlp")
        } else {
            None
        };
        tern_telemetry::LogExportSettings::resolve(
            asked_by,
            self.otlp_endpoint.as_deref(),
            &self.node_name,
            env,
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.guest_logs_otlp && self.guest_log_bytes == 0 {
            return bad(
                "guest_logs_otlp forwards the stderr lines the node keeps, and guest_log_bytes \
                 = 0 keeps none",
            );
        }
        if self.queue_cap == 0 {
            return bad("queue_cap must be at least 1");
        }
        if !self
            .isolation_weights
            .all()
            .iter()
            .all(|w| w.is_finite() && *w >= 0.0)
        {
            return bad("isolation_weights must be finite and not negative");
        }
        if self.max_instances == 0 {
            return bad("max_instances must be at least 1");
        }
        if self.guest_log_bytes > MAX_GUEST_LOG_BYTES {
            return bad("guest_log_bytes must be at most 1048576");
        }
        if !(self.guest_log_bytes..=MAX_GUEST_LOG_TENANT_BYTES)
            .contains(&self.guest_log_tenant_bytes)
        {
            return bad(
                "guest_log_tenant_bytes must be at least guest_log_bytes (one function can fill \
                 its ring) and at most 67108864",
            );
        }
        if !(100..=600_000).contains(&self.quota_interval_ms) {
            return bad("quota_interval_ms must be in 100..=600000");
        }
        if self.cell_quota == CellQuota::Learned && self.policy_checkpoint.is_none() {
            return bad(
                "cell_quota = \"learned\" needs policy_checkpoint (exported policy weights)",
            );
        }
        if !(1..=100).contains(&self.tenant_memory_percent) {
            return bad("tenant_memory_percent must be in 1..=100");
        }
        if self.default_timeout_ms == 0 || self.default_timeout_ms > self.max_timeout_ms {
            return bad("default_timeout_ms must be in 1..=max_timeout_ms");
        }
        if self.default_memory_mb == 0 || self.default_memory_mb > self.max_memory_mb {
            return bad("default_memory_mb must be in 1..=max_memory_mb");
        }
        if self.epoch_tick_us == 0 {
            return bad("epoch_tick_us must be at least 1");
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return bad("max_connections and max_connections_per_ip must be at least 1");
        }
        if self.max_functions == 0 {
            return bad("max_functions must be at least 1");
        }
        if self.max_stored_results == 0 || self.max_stored_result_mb == 0 {
            return bad("max_stored_results and max_stored_result_mb must be at least 1");
        }
        if self.body_read_timeout_ms == 0 || self.min_body_bytes_per_sec == 0 {
            return bad("body_read_timeout_ms and min_body_bytes_per_sec must be at least 1");
        }
        if self.node_name.is_empty() {
            return bad("node_name must not be empty");
        }
        if self
            .trace_sample_ratio
            .is_some_and(|r| !(0.0..=1.0).contains(&r))
        {
            return bad("trace_sample_ratio must be between 0 and 1");
        }
        // The trace export settings the node can check alone (the `OTEL_*` variables are
        // checked when export starts).
        self.trace_export(&std::collections::HashMap::new())?;
        if !["warm-affinity", "local-first", "least-loaded", "learned"]
            .contains(&self.placement.as_str())
        {
            return bad("placement must be warm-affinity, local-first, least-loaded or learned");
        }
        if self.placement == "learned" && self.policy_checkpoint.is_none() {
            return bad(
                "placement = \"learned\" needs policy_checkpoint (exported policy weights)",
            );
        }
        // Upper bounds keep the guard able to switch at all (it needs window/4 samples per
        // arm) and the trainer's queue (4 × batch) allocatable.
        if !(4..=MAX_GUARD_WINDOW).contains(&self.placement_guard_window) {
            return bad("placement_guard_window must be in 4..=65536");
        }
        if !(0.0..=MAX_GUARD_MARGIN_MS).contains(&self.placement_guard_margin_ms) {
            return bad("placement_guard_margin_ms must be in 0..=60000 (NaN is not)");
        }
        if self.online_learning {
            if self.placement != "learned" {
                return bad("online_learning needs placement = \"learned\"");
            }
            if !cfg!(feature = "online-learning") {
                return bad(
                    "online_learning needs a tern built with the training backend: \
                     cargo build --release -p tern-node --features online-learning",
                );
            }
            if !(2..=MAX_ONLINE_BATCH).contains(&self.online_batch) {
                return bad("online_batch must be in 2..=65536");
            }
        }
        self.parsed_peers()?;
        if self.client_listen.is_some() && self.cluster_dir.is_none() {
            return bad("client_listen needs cluster_dir (the node's certificate)");
        }
        self.share_params()?;
        self.check_open_listener(self.listen)?;
        if let Some(client) = self.client_listen {
            self.check_open_client_listener(client)?;
        }
        Ok(())
    }

    /// Eq. 6's parameters: α, β and E must be finite and non-negative.
    pub fn share_params(&self) -> Result<tern_tenancy::ShareParams, ConfigError> {
        tern_tenancy::ShareParams::new(
            self.share_alpha,
            self.share_beta,
            self.share_max_latency_excess,
        )
        .map_err(|e| {
            ConfigError::Invalid(format!(
                "share_alpha, share_beta and share_max_latency_excess: {e}"
            ))
        })
    }

    /// Refuses `auth = "off"` on an HTTP listener at `addr` that is not loopback: anyone who
    /// reached it could deploy, remove and invoke any function.
    pub fn check_open_listener(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if self.auth == AuthMode::Off && !addr.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "auth = \"off\" lets anyone who reaches {addr} deploy, remove and invoke any \
                 function; it is allowed only on a loopback listen address. Use auth = \
                 \"tokens\" (the default) or listen on 127.0.0.1"
            )));
        }
        Ok(())
    }

    /// Refuses `auth = "off"` without `client_tokens` on a client API listener at `addr` that
    /// is not loopback: any QUIC client reaching it could do anything.
    pub fn check_open_client_listener(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if self.auth == AuthMode::Off && self.client_tokens.is_empty() && !addr.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "auth = \"off\" without client_tokens lets any client that reaches the client \
                 API on {addr} deploy, remove and invoke any function; it is allowed only on a \
                 loopback client_listen address. Use auth = \"tokens\" (the default), set \
                 client_tokens, or listen on 127.0.0.1"
            )));
        }
        Ok(())
    }

    /// `peers` parsed as `(name, address)`.
    pub fn parsed_peers(&self) -> Result<Vec<(String, SocketAddr)>, ConfigError> {
        self.peers.iter().map(|p| parse_peer(p)).collect()
    }

    /// The most memory and time a function may need to be placed on this node: its class's
    /// fixed limits, or for `standard` the node's own maximums, and never more than those
    /// maximums (a class promises at most what the node is configured to give).
    pub fn class_limits(&self) -> ClassLimits {
        let (max_memory_mb, max_timeout_ms) = self
            .node_class
            .fixed_limits()
            .map_or((self.max_memory_mb, self.max_timeout_ms), |(m, t)| {
                (m.min(self.max_memory_mb), t.min(self.max_timeout_ms))
            });
        ClassLimits {
            max_memory_mb,
            max_timeout_ms,
        }
    }

    pub fn epoch_tick(&self) -> Duration {
        Duration::from_micros(self.epoch_tick_us)
    }
}

/// Largest limits a function may have to be placed on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLimits {
    pub max_memory_mb: u32,
    pub max_timeout_ms: u32,
}

/// An environment value as TOML: integers, floats (only with a decimal point) and booleans as
/// such, `[..]` as an array, otherwise a string.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    // Only with a decimal point: a name like `1e5` or `inf` stays a string.
    if raw.contains('.')
        && let Ok(f) = raw.parse::<f64>()
    {
        return toml::Value::Float(f);
    }
    if let Ok(b) = raw.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    if raw.starts_with('[')
        && let Ok(v) = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        && let Some(v) = v.get("v")
    {
        return v.clone();
    }
    toml::Value::String(raw.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tern.toml");
        std::fs::write(&file, "queue_cap = 5\nnode_name = \"edge-1\"\n").unwrap();
        let env = vec![
            ("TERN_QUEUE_CAP".to_string(), "7".to_string()),
            ("TERN_LISTEN".to_string(), "0.0.0.0:9000".to_string()),
            ("TERN_EXAMPLES".to_string(), "[\"echo\"]".to_string()),
            ("TERN_SERVER".to_string(), "ignored".to_string()),
            ("HOME".to_string(), "/root".to_string()),
            (
                "TERN_CLUSTER_DIR".to_string(),
                "/etc/tern/cluster".to_string(),
            ),
            (
                "TERN_PEERS".to_string(),
                "[\"b=127.0.0.1:7901\"]".to_string(),
            ),
        ];
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.queue_cap, 7);
        assert_eq!(c.node_name, "edge-1");
        assert_eq!(c.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(c.examples, vec!["echo".to_string()]);
        assert_eq!(c.max_instances, Config::default().max_instances);
        assert_eq!(c.cluster_dir, Some(PathBuf::from("/etc/tern/cluster")));
        assert_eq!(
            c.parsed_peers().unwrap(),
            vec![("b".to_string(), "127.0.0.1:7901".parse().unwrap())]
        );
        assert_eq!(c.client_listen, None);
    }

    #[test]
    fn node_classes_and_peers_are_checked() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let c = Config::load(None, env("TERN_NODE_CLASS", "edge-small")).unwrap();
        assert_eq!(c.node_class, NodeClass::EdgeSmall);
        assert_eq!(c.class_limits().max_memory_mb, 128);
        assert_eq!(c.class_limits().max_timeout_ms, 50);
        let tighter = Config {
            max_memory_mb: 64,
            max_timeout_ms: 20,
            default_memory_mb: 64,
            default_timeout_ms: 20,
            ..c
        };
        assert_eq!(tighter.class_limits().max_memory_mb, 64);
        assert_eq!(tighter.class_limits().max_timeout_ms, 20);
        let c = Config::default();
        assert_eq!(c.class_limits().max_timeout_ms, c.max_timeout_ms);
        assert_eq!(c.class_limits().max_memory_mb, c.max_memory_mb);
        assert!(Config::load(None, env("TERN_NODE_CLASS", "huge")).is_err());
        assert_eq!(Config::default().auth, AuthMode::Tokens);
        let c = Config::load(None, env("TERN_MEMORY_PROFILE", "explicit-bounds")).unwrap();
        assert_eq!(c.memory_profile, MemoryProfile::ExplicitBounds);
        assert!(Config::load(None, env("TERN_MEMORY_PROFILE", "no-checks")).is_err());
        assert_eq!(Config::default().runtime_profile, RuntimeProfile::Optimised);
        let c = Config::load(None, env("TERN_RUNTIME_PROFILE", "baseline")).unwrap();
        assert_eq!(c.runtime_profile, RuntimeProfile::Baseline);
        assert!(Config::load(None, env("TERN_RUNTIME_PROFILE", "turbo")).is_err());
        assert_eq!(Config::default().isolation, Isolation::Auto);
        let c = Config::load(None, env("TERN_ISOLATION", "lci")).unwrap();
        assert_eq!(c.isolation, Isolation::Lci);
        assert!(Config::load(None, env("TERN_ISOLATION", "vm")).is_err());
        let c = Config::load(None, env("TERN_ISOLATION", "in-process")).unwrap();
        assert_eq!(c.isolation, Isolation::InProcess);
        let c = Config::load(None, env("TERN_CELL_PROGRAM", "/opt/tern/bin/tern")).unwrap();
        assert_eq!(c.cell_program, Some(PathBuf::from("/opt/tern/bin/tern")));
        let c = Config::load(None, env("TERN_AUTH", "off")).unwrap();
        assert_eq!(c.auth, AuthMode::Off);
        assert!(Config::load(None, env("TERN_AUTH", "maybe")).is_err());
        assert!(Config::load(None, env("TERN_PLACEMENT", "psychic")).is_err());
        assert!(Config::load(None, env("TERN_PEERS", "[\"b\"]")).is_err());
        assert!(Config::load(None, env("TERN_PEERS", "[\"b=nowhere\"]")).is_err());
    }

    #[test]
    fn auth_is_on_by_default_and_off_is_refused_unless_the_listener_is_loopback() {
        let load = |listen: &str, auth: Option<&str>| {
            let mut vars = vec![("TERN_LISTEN".to_string(), listen.to_string())];
            if let Some(auth) = auth {
                vars.push(("TERN_AUTH".to_string(), auth.to_string()));
            }
            Config::load(None, vars)
        };
        assert_eq!(load("0.0.0.0:7878", None).unwrap().auth, AuthMode::Tokens);
        for open in ["0.0.0.0:7878", "10.1.2.3:7878", "[::]:7878"] {
            assert!(
                matches!(load(open, Some("off")), Err(ConfigError::Invalid(m)) if m.contains("loopback")),
                "auth off on {open}"
            );
        }
        for loopback in ["127.0.0.1:7878", "127.0.0.2:7878", "[::1]:7878"] {
            assert_eq!(load(loopback, Some("off")).unwrap().auth, AuthMode::Off);
        }
    }

    #[test]
    fn eq6_parameters_are_read_and_nonsense_is_refused() {
        let load = |vars: &[(&str, &str)]| {
            Config::load(
                None,
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        let c = load(&[("TERN_SHARE_ALPHA", "0.5"), ("TERN_SHARE_BETA", "0")]).unwrap();
        let params = c.share_params().unwrap();
        assert_eq!(
            (params.alpha(), params.beta(), params.max_latency_excess()),
            (0.5, 0.0, 2.0)
        );
        for (key, value) in [
            ("TERN_SHARE_ALPHA", "-1"),
            ("TERN_SHARE_BETA", "-0.5"),
            ("TERN_SHARE_MAX_LATENCY_EXCESS", "-2"),
        ] {
            assert!(
                matches!(load(&[(key, value)]), Err(ConfigError::Invalid(m)) if m.contains("share_alpha")),
                "{key}={value}"
            );
        }
    }

    #[test]
    fn the_client_api_needs_a_cluster_dir() {
        let listen = (
            "TERN_CLIENT_LISTEN".to_string(),
            "127.0.0.1:7901".to_string(),
        );
        let err = Config::load(None, vec![listen.clone()]).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid(m) if m.contains("cluster_dir")));
        let dir = (
            "TERN_CLUSTER_DIR".to_string(),
            "/etc/tern/cluster".to_string(),
        );
        let c = Config::load(None, vec![listen, dir]).unwrap();
        assert_eq!(c.client_listen, Some("127.0.0.1:7901".parse().unwrap()));
    }

    #[test]
    fn trace_export_is_off_by_default_and_set_by_endpoint_and_ratio() {
        let none = std::collections::HashMap::new();
        assert_eq!(Config::default().trace_export(&none).unwrap(), None);
        let c = Config::load(
            None,
            vec![
                (
                    "TERN_OTLP_ENDPOINT".to_string(),
                    "http://collector:4318".to_string(),
                ),
                ("TERN_TRACE_SAMPLE_RATIO".to_string(), "0.01".to_string()),
            ],
        )
        .unwrap();
        let export = c.trace_export(&none).unwrap().unwrap();
        assert_eq!(
            export.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(export.ratio, 0.01);
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(Config::load(None, env("TERN_TRACE_SAMPLE_RATIO", "2")).is_err());
        assert!(Config::load(None, env("TERN_OTLP_ENDPOINT", "https://c:4318")).is_err());
    }

    #[test]
    fn bad_values_are_typed_errors() {
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(Config::load(None, env("TERN_QUEUE_CAP", "0")).is_err());
        assert!(Config::load(None, env("TERN_QUEUE_CAP", "lots")).is_err());
        assert!(Config::load(None, env("TERN_LISTEN", "nowhere")).is_err());
        for percent in ["0", "101"] {
            assert!(
                Config::load(None, env("TERN_TENANT_MEMORY_PERCENT", percent)).is_err(),
                "{percent}"
            );
        }
        let c = Config::load(None, env("TERN_TENANT_MEMORY_PERCENT", "60")).unwrap();
        assert_eq!(c.tenant_memory_percent, 60);
        // Forwarding guests' stderr needs lines kept, and a receiver.
        let both = |a: (&str, &str), b: (&str, &str)| {
            vec![
                (a.0.to_string(), a.1.to_string()),
                (b.0.to_string(), b.1.to_string()),
            ]
        };
        let err = Config::load(
            None,
            both(
                ("TERN_GUEST_LOGS_OTLP", "true"),
                ("TERN_GUEST_LOG_BYTES", "0"),
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("guest_log_bytes"), "{err}");
        // A tenant's lines together hold at least one function's ring, and are bounded.
        for bytes in ["1000", "1000000000"] {
            let err = Config::load(None, env("TERN_GUEST_LOG_TENANT_BYTES", bytes)).unwrap_err();
            assert!(err.to_string().contains("guest_log_tenant_bytes"), "{err}");
        }
        let c = Config::load(None, env("TERN_GUEST_LOG_TENANT_BYTES", "16384")).unwrap();
        assert_eq!(c.guest_log_tenant_bytes, 16 << 10);
        for setting in ["guest_logs_otlp", "node_logs_otlp"] {
            let c = Config::load(
                None,
                env(&format!("TERN_{}", setting.to_uppercase()), "true"),
            )
            .unwrap();
            let err = c.log_export(&Default::default()).unwrap_err();
            assert!(err.to_string().contains("no receiver"), "{err}");
            assert!(err.to_string().contains(setting), "{err}");
        }
        assert_eq!(
            Config::default().log_export(&Default::default()).unwrap(),
            None
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "no_such_key = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&file), Vec::new()),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::load(Some(&dir.path().join("missing.toml")), Vec::new()),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn isolation_weights_come_from_a_table_default_to_one_and_must_not_be_negative() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "[isolation_weights]\ncpu = 2.0\nsyscalls = 0.5\n").unwrap();
        let c = Config::load(Some(&file), Vec::new()).unwrap();
        let w = c.isolation_weights;
        assert_eq!((w.cpu, w.memory, w.syscalls), (2.0, 1.0, 0.5));
        for bad in ["cpu = -1.0\n", "disk = 1.0\n", "cpu = nan\n"] {
            std::fs::write(&file, format!("[isolation_weights]\n{bad}")).unwrap();
            assert!(Config::load(Some(&file), Vec::new()).is_err(), "{bad}");
        }
    }

    #[test]
    fn cell_quota_defaults_to_auto_and_learned_needs_a_checkpoint() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!((c.cell_quota, c.quota_interval_ms), (CellQuota::Auto, 1000));
        assert!(matches!(
            Config::load(None, env(&[("TERN_CELL_QUOTA", "learned")])),
            Err(ConfigError::Invalid(m)) if m.contains("policy_checkpoint")
        ));
        let c = Config::load(None, env(&[("TERN_CELL_QUOTA", "eq6")])).unwrap();
        assert_eq!(c.cell_quota, CellQuota::Eq6);
        assert!(Config::load(None, env(&[("TERN_QUOTA_INTERVAL_MS", "50")])).is_err());
    }

    #[test]
    fn learned_placement_needs_a_checkpoint() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches!(
            Config::load(None, env(&[("TERN_PLACEMENT", "learned")])),
            Err(ConfigError::Invalid(m)) if m.contains("policy_checkpoint")
        ));
        assert!(Config::load(None, env(&[("TERN_PLACEMENT", "ppo")])).is_err());
        let c = Config::load(
            None,
            env(&[
                ("TERN_PLACEMENT", "learned"),
                ("TERN_POLICY_CHECKPOINT", "/x/dispatch.safetensors"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.policy_checkpoint.as_deref(),
            Some(Path::new("/x/dispatch.safetensors"))
        );
        assert!(c.placement_guard, "the guard is on by default");
        assert!(!c.online_learning, "online learning is opt-in");
        let learned = [
            ("TERN_PLACEMENT", "learned"),
            ("TERN_POLICY_CHECKPOINT", "/x/dispatch.safetensors"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = learned.to_vec();
            pairs.extend_from_slice(extra);
            Config::load(None, env(&pairs))
        };
        for (key, value, message) in [
            ("TERN_PLACEMENT_GUARD_WINDOW", "2", "placement_guard_window"),
            (
                "TERN_PLACEMENT_GUARD_WINDOW",
                "100000",
                "placement_guard_window",
            ),
            (
                "TERN_PLACEMENT_GUARD_MARGIN_MS",
                "1e999.0",
                "placement_guard_margin_ms",
            ),
            (
                "TERN_PLACEMENT_GUARD_MARGIN_MS",
                "-1.0",
                "placement_guard_margin_ms",
            ),
        ] {
            assert!(
                matches!(with(&[(key, value)]), Err(ConfigError::Invalid(m)) if m.contains(message)),
                "{key}={value}"
            );
        }
        // Online learning needs the learned placement, and a build with the trainer.
        assert!(matches!(
            Config::load(None, env(&[("TERN_ONLINE_LEARNING", "true")])),
            Err(ConfigError::Invalid(m)) if m.contains("placement")
        ));
        let online = with(&[("TERN_ONLINE_LEARNING", "true")]);
        if cfg!(feature = "online-learning") {
            assert!(online.unwrap().online_learning);
            assert!(matches!(
                with(&[("TERN_ONLINE_LEARNING", "true"), ("TERN_ONLINE_BATCH", "1")]),
                Err(ConfigError::Invalid(m)) if m.contains("online_batch")
            ));
            assert!(matches!(
                with(&[("TERN_ONLINE_LEARNING", "true"), ("TERN_ONLINE_BATCH", "9999999999")]),
                Err(ConfigError::Invalid(m)) if m.contains("online_batch")
            ));
        } else {
            assert!(
                matches!(online, Err(ConfigError::Invalid(m)) if m.contains("--features online-learning"))
            );
        }
    }

    #[test]
    fn the_memory_budget_is_three_quarters_of_the_machine_unless_set_and_fits_the_largest_guest() {
        let c = Config::default();
        assert_eq!(c.memory_budget_mb(Some(16 << 20)), 12 << 10);
        assert_eq!(
            c.memory_budget_mb(None),
            u64::from(c.max_instances) * u64::from(c.max_memory_mb)
        );
        let set = Config {
            memory_budget_mb: 4096,
            ..Config::default()
        };
        assert_eq!(set.memory_budget_mb(Some(16 << 20)), 4096);
        // 1000 slots of 512 MiB would claim 500 GiB: the budget holds 8 at once.
        assert_eq!(set.check_memory_budget(4096).unwrap(), Some(8));
        assert_eq!(
            Config {
                max_instances: 8,
                ..Config::default()
            }
            .check_memory_budget(4096)
            .unwrap(),
            None
        );
        assert!(c.check_memory_budget(511).is_err());
    }
}
