//! `tern-runtime`: Tern's WebAssembly engine, the engine room of the RuntimePool actor. A
//! content-addressed store of precompiled artifacts, a cache of ready-to-instantiate modules
//! (preheating), and execution of one minimum execution unit (MEU) in a fresh wasmtime
//! `Store` under the limits the [`isolation::Sandbox`] gives it: memory, deadline (the
//! [`epoch`] ticker), output cap (`capped_pipe`), and CPU fairness (the slow lane, `lanes`).
//!
//! Front door: [`Runtime`] (`new`, `prepare`, `install`, `execute`). It knows nothing of
//! actors, placement or the network; the actors crate drives it.
//!
//! Design (ARCHITECTURE.md §5): modules are compiled once at deploy into an artifact
//! keyed by module hash and engine compatibility hash, loaded with `Module::deserialize_file`
//! (mmap) and kept as an `InstancePre`; every MEU gets a fresh `Store` from the pooling
//! allocator (copy-on-write memory images, `linear_memory_keep_resident`), `StoreLimits` and an
//! epoch deadline. A MEU that finds its module ready is a *reuse hit*; one that must load or
//! compile it is a *cold start* (Eq. 3: T_exec = T_pre + min(T_load, T_reuse) + T_inst).

#![deny(unsafe_code)]

mod capped_pipe;
mod cpu_time;
pub mod epoch;
mod error;
pub mod fair_slots;
pub(crate) mod guest_limits;
pub mod guest_logs;
mod http_component;
pub mod isolation;
mod lanes;

pub use error::Error;
pub use http_component::{AnswerSender, AnswerStream, PART_OVERHEAD, StreamTo, part_size};

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::guest_logs::{GuestLogs, LogSink, RecordOnDrop, StderrCapture};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tern_wire::{FunctionInfo, FunctionName, ModuleHash};
use tokio::sync::Semaphore;
use wasmtime::component::Component;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Precompiled, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, SinkOutputStream};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use self::capped_pipe::CappedPipe;
use self::cpu_time::{CpuMetered, thread_cpu_time};
use self::epoch::{EpochTicker, IDLE_BEFORE_PARK, RunningGuest};
use self::fair_slots::{FairSlots, HeldBy, Refused, SlotGuard};
use self::guest_limits::GuestLimits;
use self::lanes::Lanes;
use crate::isolation::{Sandbox, SandboxSpec};
use tern_metrics::{FunctionMetrics, Metrics};

/// Tunables of the runtime pool. Defaults suit a small edge node.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// This node's name, given to guests as `TERN_NODE`.
    pub node_name: String,
    /// Where precompiled artifacts live.
    pub artifact_dir: PathBuf,
    /// Modules larger than this are refused before parsing.
    pub max_module_bytes: usize,
    /// Upper bound on one compilation. Cranelift cannot be cancelled, so a compile that runs
    /// over is reported as `compile_timeout` while it finishes in the background, still holding
    /// its compile slot (so compile concurrency stays bounded).
    pub compile_timeout: Duration,
    /// Modules compiled at the same time.
    pub compile_concurrency: usize,
    /// Instance slots of the pooling allocator: the most guests running at once. MEUs beyond
    /// this wait for a slot.
    pub max_instances: u32,
    /// MiB that running guests may claim together: each holds its function's `memory_mb`
    /// from before it is instantiated until it ends, so the memory guests may commit stays
    /// within what the machine has. MEUs beyond it wait, within their deadline.
    pub memory_budget_mb: u64,
    /// The largest `memory_mb` a function may ask for (the size of a pool memory slot).
    pub max_memory_mb: u32,
    /// The percentage of `memory_budget_mb` one tenant with a finite memory quota may hold
    /// on this node (never less than one guest of `max_memory_mb`), so that no such tenant
    /// can take the whole node even when its quota, sized for a larger node, would allow it.
    pub tenant_memory_percent: u8,
    /// Bytes of each linear memory kept resident (memset instead of madvise) between uses.
    pub keep_resident_bytes: usize,
    /// Most modules kept loaded; beyond this the least recently used is unloaded and a later
    /// MEU pays T_load (a cold start).
    pub max_loaded_modules: usize,
    /// Cap on a guest's stdout.
    pub max_output_bytes: usize,
    /// A function's stderr lines kept on this node, bytes (0: guests' stderr is discarded).
    pub guest_log_bytes: usize,
    /// The stderr lines of one tenant's functions kept on this node together, bytes.
    pub guest_log_tenant_bytes: usize,
    /// Epoch tick: the granularity of deadlines and of the fast-lane time slice.
    pub epoch_tick: Duration,
    /// Threads of the low-priority lane for guests that outlive one time slice.
    pub slow_lane_threads: usize,
    /// Eq. 6 parameters for sharing instance slots between tenants.
    pub share: tern_tenancy::ShareParams,
    /// How guests' linear memories are bounds-checked and recycled.
    pub memory_profile: MemoryProfile,
    /// Whether modules are compiled ahead and preheated (the product) or compiled on first
    /// use (the baseline the paper's runtime optimisation is measured against).
    pub runtime_profile: RuntimeProfile,
}

/// How functions get from a deploy to a running instance. The product runs
/// [`RuntimeProfile::Optimised`]; [`RuntimeProfile::Baseline`] exists to measure what that
/// optimisation is worth (the paper's ablation "without the WebAssembly runtime
/// optimisation"), and serves the same functions with the same limits and errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeProfile {
    /// Compiled once at deploy into an artifact on disk (reloaded, never recompiled, after a
    /// restart), loaded and linked at deploy, replication and start (preheating), instances
    /// from the pooling allocator with memory kept resident between uses.
    #[default]
    Optimised,
    /// Compiled on first use: deploy validates the module by compiling it and keeps only its
    /// bytes (no compiled artifact is written), nothing is loaded before a call needs it, each
    /// node (each cell) compiles a function the first time it runs it there and again after
    /// every restart or eviction, and instances come from wasmtime's on-demand allocator
    /// (memory mapped and unmapped per instance, nothing kept resident, data segments copied
    /// in rather than mapped copy-on-write). What was compiled
    /// stays loaded, like `wasmtime serve`, up to `max_loaded_modules`.
    Baseline,
}

impl RuntimeProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeProfile::Optimised => "optimised",
            RuntimeProfile::Baseline => "baseline",
        }
    }
}

/// How guests' linear memories are bounds-checked and recycled between instances. Every
/// profile gives each invocation a fresh instance whose memory starts as its module says,
/// caps memory at the function's `memory_mb` and traps out-of-bounds accesses; they differ in
/// what the host does per instance and what the compiled code checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryProfile {
    /// wasmtime's defaults: out-of-bounds accesses hit guard pages (no bounds checks in the
    /// compiled code), memory images are mapped copy-on-write, and Cranelift's Spectre
    /// mitigations for heap and table accesses are on. A guest that grew its memory costs
    /// the next instance in its slot an `mprotect` to shrink it back, and every `mprotect`
    /// a TLB shootdown across the node's CPUs.
    #[default]
    GuardPages,
    /// No virtual-memory work per instance: explicit bounds checks in the compiled code
    /// (signals-based traps off), no guard pages, no copy-on-write images (data segments
    /// copied in), memory reset by `memset` up to `keep_resident_bytes`. Costs guest speed
    /// (a check on every memory access) and **Spectre protection**: wasmtime requires
    /// Cranelift's heap and table access Spectre mitigations off without signals-based traps,
    /// so a guest could use speculative execution past a bounds check to infer memory of the
    /// host process, including other tenants' guests in it. Offered for measurement and for
    /// nodes that run one party's code; not the default.
    ExplicitBounds,
}

impl MemoryProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryProfile::GuardPages => "guard-pages",
            MemoryProfile::ExplicitBounds => "explicit-bounds",
        }
    }
}

impl RuntimeConfig {
    /// Bytes of the memory budget one tenant with a finite memory quota may hold:
    /// `tenant_memory_percent` of it, but at least one guest of `max_memory_mb`.
    pub fn tenant_memory_cap_bytes(&self) -> u64 {
        let budget = self.memory_budget_mb.saturating_mul(1 << 20);
        let part = budget / 100 * u64::from(self.tenant_memory_percent.min(100));
        part.max(u64::from(self.max_memory_mb) << 20).min(budget)
    }

    pub fn new(node_name: impl Into<String>, artifact_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            artifact_dir: artifact_dir.into(),
            max_module_bytes: 64 << 20,
            compile_timeout: Duration::from_secs(60),
            compile_concurrency: 1,
            max_instances: 1000,
            memory_budget_mb: 1000 * 512,
            max_memory_mb: 512,
            tenant_memory_percent: 25,
            keep_resident_bytes: 4 << 20,
            max_loaded_modules: 1024,
            max_output_bytes: 16 << 20,
            guest_log_bytes: 16 << 10,
            guest_log_tenant_bytes: 1 << 20,
            epoch_tick: Duration::from_millis(1),
            slow_lane_threads: 1,
            share: tern_tenancy::ShareParams::default(),
            memory_profile: MemoryProfile::GuardPages,
            runtime_profile: RuntimeProfile::Optimised,
        }
    }
}

/// A function as the runtime serves it.
#[derive(Debug)]
pub struct Deployed {
    pub info: FunctionInfo,
    /// A command or a component (from the binary).
    pub kind: tern_wire::FunctionKind,
    pub metrics: Arc<FunctionMetrics>,
    /// The owner, parsed once at install rather than from the name on every call.
    pub tenant: tern_tenancy::TenantName,
    /// The function's `max_instances` as a cap inside its tenant's lane.
    instance_cap: Option<tern_tenancy::GroupCap>,
    /// How this version's recent guests ran: the lane its next guest starts on.
    lane_history: lanes::LaneHistory,
}

/// Something an MEU holds for exactly as long as its guest holds an instance slot, so that
/// its owner learns from the drop that the guest is gone: the node's admission permit, so a
/// caller that goes away cannot free a place in the queue while its guest still runs.
pub type Lease = Arc<dyn std::any::Any + Send + Sync>;

/// One minimum execution unit.
#[derive(Clone, Debug)]
pub struct Meu {
    pub request_id: Arc<str>,
    pub function: FunctionName,
    pub input: Bytes,
    /// Items of a `map` input in this unit (1 for a plain call).
    pub items: usize,
    /// When the unit was accepted (the invocation's admission, or the map chunk's creation):
    /// the function's time limit runs from here, through the wait for an instance slot.
    pub accepted_at: Instant,
    /// Held until the guest ends (see [`Lease`]).
    pub lease: Option<Lease>,
    /// The span this unit's spans are children of when its invocation is traced (exported
    /// spans have target `tern::trace`); `Span::none()` otherwise, and then no span is made.
    pub trace: tracing::Span,
    /// Where a component's answer goes as it is written, if its caller takes it that way
    /// (empty otherwise; a command's output is always whole).
    pub stream: AnswerStream,
}

impl Meu {
    /// An MEU accepted now, without a lease.
    pub fn new(
        request_id: impl Into<Arc<str>>,
        function: FunctionName,
        input: Bytes,
        items: usize,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            function,
            input,
            items,
            // tokio's clock: the real one in a node, the paused one in tests that pause it.
            accepted_at: tokio::time::Instant::now().into_std(),
            lease: None,
            trace: tracing::Span::none(),
            stream: AnswerStream::default(),
        }
    }
}

/// Where the time of one MEU went (the terms of the paper's Eq. 3), in microseconds.
pub use tern_wire::Timings;

#[derive(Debug)]
pub struct MeuOutcome {
    pub output: Bytes,
    pub cold_start: bool,
    pub timings: Timings,
    /// The guest's own `memory.grow`s that added pages (see `guest_limits`).
    pub memory_grows: u64,
    /// CPU time the guest used (instantiation and execution), nanoseconds.
    pub cpu_ns: u64,
}

/// A module compiled (or found compiled) and ready to install.
pub struct Prepared {
    pub hash: ModuleHash,
    pub size_bytes: u64,
    /// Whether this call compiled it (false when the artifact already existed).
    pub compiled: bool,
    kind: tern_wire::FunctionKind,
    /// Linked and ready to instantiate (preheated); `None` under the baseline profile, which
    /// loads nothing before a call needs it.
    pre: Option<Loaded>,
}

/// What a binary would deploy as, from its header: a component or (anything else) a module.
pub fn kind_of(bytes: &[u8]) -> tern_wire::FunctionKind {
    if wasmparser::Parser::is_component(bytes) {
        tern_wire::FunctionKind::Component
    } else {
        tern_wire::FunctionKind::Module
    }
}

impl Prepared {
    /// A command or a component.
    pub fn kind(&self) -> tern_wire::FunctionKind {
        self.kind
    }
}

impl Loaded {
    fn kind(&self) -> tern_wire::FunctionKind {
        match self {
            Loaded::Http(_) => tern_wire::FunctionKind::Component,
            Loaded::Command(_) => tern_wire::FunctionKind::Module,
        }
    }
}

/// A function linked against the host, ready to instantiate.
#[derive(Clone)]
enum Loaded {
    /// A WASI preview-1 command: stdin in, stdout out.
    Command(InstancePre<HostState>),
    /// A `wasi:http/proxy` component: an HTTP request in, its response out.
    Http(ProxyPre<http_component::State>),
}

/// A compiled artifact as loaded from disk.
enum Artifact {
    Module(Module),
    Component(Component),
}

struct HostState {
    wasi: WasiP1Ctx,
    limits: GuestLimits,
}

struct LoadedModule {
    /// `None`: loaded in this node's cells, not in this process.
    pre: Option<Loaded>,
    last_used: u64,
}

#[derive(Default)]
struct ModuleCache {
    modules: HashMap<ModuleHash, LoadedModule>,
    clock: u64,
    /// Modules being loaded (or compiled) for a call right now: later calls for the same
    /// module wait for that load instead of doing it again.
    loading: HashMap<ModuleHash, Arc<tokio::sync::Mutex<()>>>,
}

/// The runtime pool's shared state. Cheap to share (`Arc`), safe to use from many tasks.
pub struct Runtime {
    cfg: RuntimeConfig,
    engine: Engine,
    linker: Linker<HostState>,
    component_linker: wasmtime::component::Linker<http_component::State>,
    compat: String,
    functions: RwLock<HashMap<FunctionName, Arc<Deployed>>>,
    modules: Mutex<ModuleCache>,
    compile_slots: Arc<Semaphore>,
    /// Instance slots and the memory budget, shared between tenants by weighted fair
    /// queueing.
    instance_slots: Arc<FairSlots>,
    lanes: Lanes,
    metrics: Arc<Metrics>,
    ticker: EpochTicker,
    /// Where guests run when tenants are isolated in cells (`None`: in this process).
    cells: std::sync::OnceLock<Arc<dyn CellRunner>>,
    /// Guests' stderr lines, per function.
    logs: Arc<GuestLogs>,
    /// This runtime, for work that must finish even if the call that started it goes away
    /// (a load or compile for a call: what it loads is kept for the next one).
    this: std::sync::Weak<Runtime>,
}

/// Runs MEUs in tenants' cells (isolated worker processes) instead of this process. The
/// runtime still admits each MEU here (an instance slot and its memory, in the tenants' fair
/// order, within the deadline) and holds the slot while the cell runs it.
pub trait CellRunner: Send + Sync + 'static {
    /// Runs `meu` of `function` in its tenant's cell, adding the CPU time the cell says the
    /// guest used to `cpu_ns` (nanoseconds) whatever the run's result.
    fn run(
        &self,
        function: &FunctionInfo,
        meu: Meu,
        cpu_ns: Arc<AtomicU64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<MeuOutcome, Error>> + Send>>;
    /// `function` was installed (deployed, replicated or preheated) on this node.
    fn installed(&self, function: &FunctionInfo);
    /// `name` was removed from this node.
    fn removed(&self, name: &FunctionName);
}

/// The wasmtime engine every guest of a runtime with `cfg` runs in.
fn engine(cfg: &RuntimeConfig) -> Result<Engine, Error> {
    let max_memory = cfg.max_memory_mb as usize * (1 << 20);
    let mut pool = PoolingAllocationConfig::default();
    // A component is several core instances (its code, the shims toolchains add) sharing one
    // linear memory: room for every instance slot to run one.
    pool.total_core_instances(
        cfg.max_instances
            .saturating_mul(CORE_INSTANCES_PER_COMPONENT),
    )
    .total_component_instances(cfg.max_instances)
    .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
    .total_memories(cfg.max_instances)
    .max_memories_per_component(1)
    .total_tables(cfg.max_instances.saturating_mul(TABLES_PER_SLOT))
    .total_stacks(cfg.max_instances)
    .max_memory_size(max_memory)
    .linear_memory_keep_resident(cfg.keep_resident_bytes)
    .table_keep_resident(64 << 10);
    let mut config = Config::new();
    config.epoch_interruption(true);
    match cfg.memory_profile {
        MemoryProfile::GuardPages => {
            config.memory_init_cow(true);
        }
        MemoryProfile::ExplicitBounds => {
            // With signals-based traps off, wasmtime turns the Spectre mitigations for heap
            // and table accesses off itself (they rely on faulting loads), and resets a
            // recycled slot's memory without changing its protection (`cow.rs`,
            // `MemoryImageSlot::instantiate`: only with guard pages or virtual-memory bounds
            // checks is the accessible region shrunk back).
            config
                .signals_based_traps(false)
                .memory_guard_size(0)
                .guard_before_linear_memory(false)
                .memory_reservation(max_memory as u64)
                .memory_init_cow(false);
        }
    }
    match cfg.runtime_profile {
        RuntimeProfile::Optimised => {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        RuntimeProfile::Baseline => {
            // No copy-on-write memory images either: for a module compiled in memory (not
            // mapped from an artifact file) wasmtime would build each image in a `memfd`,
            // which a cell's seccomp filter refuses; data segments are copied in instead.
            config
                .allocation_strategy(InstanceAllocationStrategy::OnDemand)
                .memory_init_cow(false);
        }
    }
    Engine::new(&config).map_err(|e| Error::EngineSetup(format!("engine: {e}")))
}

/// The most core instances (and tables) one component may instantiate: a Rust component has
/// a handful, componentize-py's CPython 14.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// Tables in the pool per instance slot: components define a few (two for those measured),
/// modules one; a burst of components with more waits like one over the instance slots.
const TABLES_PER_SLOT: u32 = 4;

/// Most units waiting for an instance slot over all tenants (see `Runtime::new`).
const MAX_WAITING_FOR_SLOTS: usize = 1 << 20;

/// The file name of `hash`'s compiled artifact for engines of `compatibility`
/// ([`Runtime::compatibility`]): the same module compiled by differently configured engines
/// gets different files.
pub fn artifact_file_name(hash: &ModuleHash, compatibility: &str) -> String {
    format!("{}-{compatibility}.cwasm", hash.to_hex())
}

/// The files a runtime of `profile` and `compatibility` keeps for module `hash` in its
/// artifact directory: the compiled artifact and its digest, or (baseline) the module's bytes.
pub fn function_files(
    hash: &ModuleHash,
    compatibility: &str,
    profile: RuntimeProfile,
) -> Vec<String> {
    match profile {
        RuntimeProfile::Optimised => {
            let code = artifact_file_name(hash, compatibility);
            vec![format!("{}.sha256", code.trim_end_matches(".cwasm")), code]
        }
        RuntimeProfile::Baseline => vec![source_file_name(hash, compatibility)],
    }
}

/// Name of the file the `baseline` profile keeps a module's bytes in: beside where its
/// compiled artifact would be, `.wasm` instead of `.cwasm`.
fn source_file_name(hash: &ModuleHash, compatibility: &str) -> String {
    let code = artifact_file_name(hash, compatibility);
    format!("{}.wasm", code.trim_end_matches(".cwasm"))
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, Error> {
        std::fs::create_dir_all(&cfg.artifact_dir)?;
        let engine = engine(&cfg)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut HostState| &mut s.wasi)
            .map_err(|e| Error::EngineSetup(format!("linker: {e}")))?;
        let component_linker = http_component::linker(&engine)?;
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat = format!("{:016x}", hasher.finish());

        let ticker = EpochTicker::spawn(
            engine.clone(),
            cfg.epoch_tick,
            IDLE_BEFORE_PARK,
            metrics.epoch_ticks.clone(),
        )?;
        let (cfg_log_bytes, cfg_tenant_log_bytes) =
            (cfg.guest_log_bytes, cfg.guest_log_tenant_bytes);
        let lanes = Lanes::new(cfg.slow_lane_threads)?;
        Ok(Arc::new_cyclic(|this| Self {
            this: this.clone(),
            compile_slots: Arc::new(Semaphore::new(cfg.compile_concurrency.max(1))),
            // Waiting units are bounded by the node's admission (`queue_cap`) already; this
            // bound only keeps the queue finite if a caller bypasses it.
            instance_slots: FairSlots::new(
                cfg.max_instances as usize,
                cfg.memory_budget_mb.saturating_mul(1 << 20),
                cfg.tenant_memory_cap_bytes(),
                MAX_WAITING_FOR_SLOTS,
                cfg.share,
            ),
            lanes,
            cfg,
            engine,
            linker,
            component_linker,
            compat,
            functions: RwLock::default(),
            modules: Mutex::default(),
            metrics,
            ticker,
            cells: std::sync::OnceLock::new(),
            logs: Arc::new(GuestLogs::new(
                cfg_log_bytes,
                cfg_tenant_log_bytes,
                Box::new(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                }),
            )),
        }))
    }

    /// Guests' stderr lines kept on this node.
    pub fn logs(&self) -> &Arc<GuestLogs> {
        &self.logs
    }

    /// Runs guests in cells from now on (set once, at start, before any MEU).
    pub fn set_cell_runner(&self, cells: Arc<dyn CellRunner>) {
        let _ = self.cells.set(cells);
    }

    /// Whether guests run in cells.
    pub fn runs_in_cells(&self) -> bool {
        self.cells.get().is_some()
    }

    /// Sets a tenant's share weight and limits on this node's instance slots (a tenant
    /// never set gets the default ones).
    pub fn set_tenant(&self, tenant: tern_tenancy::TenantName, lane: tern_tenancy::LaneConfig) {
        self.instance_slots.set_tenant(tenant, lane);
    }

    /// Forgets a removed tenant: its waiting units are refused; running guests finish.
    pub fn remove_tenant(&self, tenant: &tern_tenancy::TenantName) {
        self.instance_slots.remove_tenant(tenant);
    }

    /// A tenant's running guests and units waiting for a slot on this node.
    pub fn tenant_slots(&self, tenant: &tern_tenancy::TenantName) -> Option<(u32, u32)> {
        self.instance_slots.tenant_counts(tenant)
    }

    /// Every tenant's running guests and waiting units on this node, by name.
    pub fn tenants_slots(&self) -> Vec<(tern_tenancy::TenantName, u32, u32)> {
        self.instance_slots.all_tenant_counts()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// Identifies this node's class of artifacts (engine settings + CPU features).
    pub fn compatibility(&self) -> &str {
        &self.compat
    }

    pub fn module_hash(bytes: &[u8]) -> ModuleHash {
        ModuleHash(Sha256::digest(bytes).into())
    }

    fn artifact_path(&self, hash: &ModuleHash) -> PathBuf {
        self.cfg
            .artifact_dir
            .join(artifact_file_name(hash, &self.compat))
    }

    /// Validates, compiles (on the bounded compile pool, unless an artifact already exists)
    /// and loads `bytes`. Does not make it callable: see [`Runtime::install`].
    pub async fn prepare(&self, bytes: Bytes) -> Result<Prepared, Error> {
        if bytes.len() > self.cfg.max_module_bytes {
            return Err(Error::ModuleTooLarge {
                size: bytes.len(),
                limit: self.cfg.max_module_bytes,
            });
        }
        let hash = Self::module_hash(&bytes);
        if self.cfg.runtime_profile == RuntimeProfile::Baseline {
            return self.prepare_source(hash, bytes).await;
        }
        let path = self.artifact_path(&hash);
        let mut compiled = false;
        let artifact = match self.load_artifact(&path).await {
            Ok(m) => m,
            Err(e) => {
                if let Error::BadArtifact { reason, .. } = &e {
                    // Truncated or bit-flipped on disk: never executed, compiled again.
                    tracing::warn!(module = %hash, %reason, "compiled artifact damaged; compiling it again");
                }
                self.compile_to(&bytes, &path).await?;
                compiled = true;
                match self.load_artifact(&path).await {
                    Ok(artifact) => artifact,
                    // What compiles but does not load is the module's fault (a component over
                    // the pool's limits, say), and leaves nothing on disk.
                    Err(Error::BadArtifact { reason, .. }) => {
                        remove_artifact_files(&path);
                        return Err(Error::InvalidModule(reason));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let pre = match self.link(&artifact) {
            Ok(pre) => pre,
            Err(e) => {
                // A module refused after compiling leaves nothing on disk: a caller sending
                // distinct invalid modules must not fill the artifact directory.
                remove_artifact_files(&path);
                return Err(e);
            }
        };
        Ok(Prepared {
            hash,
            size_bytes: bytes.len() as u64,
            compiled,
            kind: pre.kind(),
            pre: Some(pre),
        })
    }

    /// [`Runtime::prepare`] under the baseline profile: the module's bytes are kept (as
    /// `<hash>-<compatibility>.wasm` beside where artifacts go, for this node's cells too);
    /// the first time they are kept they are compiled, only to refuse what the optimised
    /// profile refuses, and the result is dropped.
    async fn prepare_source(&self, hash: ModuleHash, bytes: Bytes) -> Result<Prepared, Error> {
        let path = self.source_path(&hash);
        let kind = kind_of(&bytes);
        let size_bytes = bytes.len() as u64;
        let kept = matches!(read_source(&path, &hash), Ok(Some(_)));
        if !kept {
            let pre = self.compile_source(bytes.clone()).await?;
            debug_assert_eq!(pre.kind(), kind);
            write_source(&path, &bytes)?;
        }
        Ok(Prepared {
            hash,
            size_bytes,
            compiled: !kept,
            kind,
            pre: None,
        })
    }

    /// `bytes` compiled in memory (on the bounded compile pool, within `compile_timeout`)
    /// and linked, as the baseline profile does for a call.
    async fn compile_source(&self, bytes: Bytes) -> Result<Loaded, Error> {
        let artifact = self
            .on_compile_pool(move |engine| {
                if wasmparser::Parser::is_component(&bytes) {
                    Component::new(engine, &bytes).map(Artifact::Component)
                } else {
                    Module::new(engine, &bytes).map(Artifact::Module)
                }
                .map_err(|e| Error::InvalidModule(format!("{e:#}")))
            })
            .await?;
        self.link(&artifact)
    }

    /// Where the baseline profile keeps module `hash`'s bytes.
    fn source_path(&self, hash: &ModuleHash) -> PathBuf {
        self.cfg
            .artifact_dir
            .join(source_file_name(hash, &self.compat))
    }

    /// Loads the artifact another runtime with the same engine settings compiled for module
    /// `hash` (`size_bytes` long), without compiling and without writing anything: how a
    /// cell, whose artifact directory is read-only, gets a function the node deployed.
    pub async fn load_compiled(
        &self,
        hash: ModuleHash,
        size_bytes: u64,
    ) -> Result<Prepared, Error> {
        if self.cfg.runtime_profile == RuntimeProfile::Baseline {
            // Nothing is loaded before a call needs it; the bytes must be there for that call.
            let source = required_source(&self.source_path(&hash), &hash)?;
            return Ok(Prepared {
                hash,
                size_bytes,
                compiled: false,
                kind: kind_of(&source),
                pre: None,
            });
        }
        let artifact = self.load_artifact(&self.artifact_path(&hash)).await?;
        let pre = self.link(&artifact)?;
        Ok(Prepared {
            hash,
            size_bytes,
            compiled: false,
            kind: pre.kind(),
            pre: Some(pre),
        })
    }

    /// `artifact` linked against the host: a WASI command, or a `wasi:http/proxy` component.
    fn link(&self, artifact: &Artifact) -> Result<Loaded, Error> {
        match artifact {
            Artifact::Module(module) => self.command_pre(module).map(Loaded::Command),
            Artifact::Component(component) => {
                http_component::proxy_pre(&self.component_linker, component).map(Loaded::Http)
            }
        }
    }

    /// `module` linked against the host, if it is a WASI command.
    fn command_pre(&self, module: &Module) -> Result<InstancePre<HostState>, Error> {
        if matches!(
            module.get_export("_start"),
            Some(wasmtime::ExternType::Func(_))
        ) {
            self.linker
                .instantiate_pre(module)
                .map_err(|e| Error::InvalidModule(format!("{e:#}")))
        } else {
            Err(Error::InvalidModule(
                "not a WASI command: it exports no `_start` function".into(),
            ))
        }
    }

    async fn compile_to(&self, bytes: &Bytes, path: &Path) -> Result<(), Error> {
        let bytes = bytes.clone();
        let path = path.to_owned();
        self.on_compile_pool(move |engine| {
            let artifact = if wasmparser::Parser::is_component(&bytes) {
                engine.precompile_component(&bytes)
            } else {
                engine.precompile_module(&bytes)
            }
            .map_err(|e| Error::InvalidModule(format!("{e:#}")))?;
            Ok((artifact, path))
        })
        .await
        .and_then(|(artifact, path)| write_artifact(&path, &artifact))
    }

    /// Runs `compile` on a blocking thread once one of `compile_concurrency` compile slots is
    /// free, counting it in `tern_compiles_total` and its time, and gives up waiting after
    /// `compile_timeout` (the compile, which cannot be cancelled, finishes in the background
    /// still holding its slot).
    async fn on_compile_pool<T: Send + 'static>(
        &self,
        compile: impl FnOnce(&Engine) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let permit = self
            .compile_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::PoolClosed("compile"))?;
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let start = Instant::now();
            let compiled = compile(&engine)?;
            metrics.compiles.fetch_add(1, Relaxed);
            metrics
                .compile_time
                .observe_us(start.elapsed().as_micros() as u64);
            Ok(compiled)
        });
        match tokio::time::timeout(self.cfg.compile_timeout, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(Error::TaskFailed {
                task: "compile",
                detail: e.to_string(),
            }),
            Err(_) => Err(Error::CompileTimeout(self.cfg.compile_timeout)),
        }
    }

    async fn load_artifact(&self, path: &Path) -> Result<Artifact, Error> {
        let engine = self.engine.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || load_verified_artifact(&engine, &path))
            .await
            .map_err(|e| Error::TaskFailed {
                task: "load",
                detail: e.to_string(),
            })?
    }

    /// Makes `prepared` the current version of `info.name` and keeps it loaded (preheating).
    pub fn install(&self, info: FunctionInfo, prepared: Prepared) -> Arc<Deployed> {
        let kind = prepared.kind();
        if let Some(pre) = prepared.pre {
            self.cache_module(prepared.hash, Some(pre));
        }
        let deployed = Arc::new(Deployed {
            kind,
            metrics: self.metrics.function(info.name.as_str()),
            tenant: info.name.tenant(),
            instance_cap: info
                .max_instances
                .map(|max_running| tern_tenancy::GroupCap {
                    key: Arc::from(info.name.as_str()),
                    max_running,
                }),
            info,
            lane_history: lanes::LaneHistory::default(),
        });
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(deployed.info.name.clone(), deployed.clone());
        self.logs.open(&deployed.info.name);
        if let Some(cells) = self.cells.get() {
            cells.installed(&deployed.info);
        }
        deployed
    }

    /// Deletes this node's artifact files (artifact, digest, half-written temporary) except
    /// those of `keep` compiled with the current engine settings, and except files modified
    /// within `grace` (a compile under way writes its artifact before any function names
    /// it). Artifacts of other engine settings or CPU features are never loaded again, so
    /// they go too. Returns how many artifacts (not files) were deleted.
    pub fn remove_artifacts_except(
        &self,
        keep: &HashSet<ModuleHash>,
        grace: Duration,
    ) -> Result<u64, Error> {
        let suffix = format!("-{}", self.compat);
        let mut removed = 0;
        for dirent in std::fs::read_dir(&self.cfg.artifact_dir)? {
            let dirent = dirent?;
            let path = dirent.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            if !["cwasm", "sha256", "tmp", "wasm"].contains(&ext) {
                continue;
            }
            let ours = stem
                .strip_suffix(&suffix)
                .and_then(|hex| hex.parse::<ModuleHash>().ok())
                .is_some_and(|hash| keep.contains(&hash));
            let recent = dirent
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < grace);
            if ours || recent {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) if ext == "cwasm" || ext == "wasm" => removed += 1,
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// Makes `name` uncallable and drops its metric series (its counts stay in the node's
    /// totals). Its artifact stays on disk until garbage collection (other names may share
    /// the module).
    pub fn remove(&self, name: &FunctionName) -> Option<Arc<Deployed>> {
        let removed = self
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if removed.is_some() {
            self.metrics.retire(name.as_str());
            self.logs.remove(name);
            if let Some(cells) = self.cells.get() {
                cells.removed(name);
            }
        }
        removed
    }

    pub fn get(&self, name: &FunctionName) -> Option<Arc<Deployed>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Functions installed (callable) here.
    pub fn function_count(&self) -> usize {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// How many functions `tenant` has installed here, and their modules' bytes.
    pub fn tenant_usage(&self, tenant: &tern_tenancy::TenantName) -> tern_tenancy::Usage {
        let mut usage = tern_tenancy::Usage::default();
        for d in self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|d| d.tenant == *tenant)
        {
            usage.functions = usage.functions.saturating_add(1);
            usage.module_bytes = usage.module_bytes.saturating_add(d.info.size_bytes);
        }
        usage
    }

    /// Every function installed here with what it is, sorted by name.
    pub fn list_with_kinds(&self) -> Vec<(FunctionInfo, tern_wire::FunctionKind)> {
        let mut out: Vec<_> = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|d| (d.info.clone(), d.kind))
            .collect();
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    pub fn list(&self) -> Vec<FunctionInfo> {
        self.list_with_kinds().into_iter().map(|(i, _)| i).collect()
    }

    /// Keeps `hash` loaded (`pre`), or notes that this node's cells have it loaded (`None`,
    /// which never replaces a module loaded here).
    fn cache_module(&self, hash: ModuleHash, pre: Option<Loaded>) {
        let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        cache.clock += 1;
        let clock = cache.clock;
        let entry = cache.modules.entry(hash).or_insert(LoadedModule {
            pre: None,
            last_used: clock,
        });
        entry.last_used = clock;
        if pre.is_some() {
            entry.pre = pre;
        }
        while cache.modules.len() > self.cfg.max_loaded_modules.max(1) {
            let Some(oldest) = cache
                .modules
                .iter()
                .min_by_key(|(_, m)| m.last_used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            cache.modules.remove(&oldest);
        }
        self.metrics
            .loaded_modules
            .store(cache.modules.len() as i64, Relaxed);
    }

    fn cached_module(&self, hash: &ModuleHash) -> Option<Loaded> {
        let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        cache.clock += 1;
        let clock = cache.clock;
        let m = cache.modules.get_mut(hash)?;
        m.last_used = clock;
        m.pre.clone()
    }

    /// `hash` loaded and linked for a call that found it not loaded: read from its artifact
    /// (optimised profile) or compiled from its bytes (baseline), once however many calls
    /// want it at the same time. The load runs in a task of its own, so that a call that
    /// gives up (its caller gone, its cell's answer past the node's deadline) does not throw
    /// away a compile that was nearly done: what it loads is kept for the next call.
    async fn load_for_call(&self, hash: ModuleHash) -> Result<Loaded, Error> {
        let this = self.this.upgrade().ok_or(Error::PoolClosed("runtime"))?;
        tokio::spawn(async move { this.load_once(hash).await })
            .await
            .map_err(|e| Error::TaskFailed {
                task: "load",
                detail: e.to_string(),
            })?
    }

    async fn load_once(&self, hash: ModuleHash) -> Result<Loaded, Error> {
        let gate = {
            let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            cache.loading.entry(hash).or_default().clone()
        };
        let loaded = {
            let _turn = gate.lock().await;
            match self.cached_module(&hash) {
                // Another call loaded it while this one waited.
                Some(pre) => Ok(pre),
                None => {
                    let loaded = self.load_uncached(hash).await;
                    if let Ok(pre) = &loaded {
                        self.cache_module(hash, Some(pre.clone()));
                    }
                    loaded
                }
            }
        };
        let mut cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        // The last of the calls that waited on this gate removes it.
        if Arc::strong_count(&gate) <= 2 {
            cache.loading.remove(&hash);
        }
        loaded
    }

    async fn load_uncached(&self, hash: ModuleHash) -> Result<Loaded, Error> {
        match self.cfg.runtime_profile {
            RuntimeProfile::Optimised => {
                let artifact = self.load_artifact(&self.artifact_path(&hash)).await?;
                self.link(&artifact)
            }
            RuntimeProfile::Baseline => {
                let path = self.source_path(&hash);
                let source = tokio::task::spawn_blocking(move || required_source(&path, &hash))
                    .await
                    .map_err(|e| Error::TaskFailed {
                        task: "load",
                        detail: e.to_string(),
                    })??;
                self.compile_source(Bytes::from(source)).await
            }
        }
    }

    /// Whether `hash` is loaded right now (a MEU for it would be a reuse hit).
    /// Hashes of the modules loaded right now (warm).
    pub fn loaded_hashes(&self) -> Vec<ModuleHash> {
        let cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        cache.modules.keys().copied().collect()
    }

    pub fn is_loaded(&self, hash: &ModuleHash) -> bool {
        let cache = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        cache.modules.contains_key(hash)
    }

    /// An instance slot and the guest's memory limit out of the node's memory budget, granted
    /// together by weighted fair queueing among tenants (within the tenant's caps and the
    /// function's `max_instances`) by `deadline`, or the typed refusal.
    async fn acquire_slot(
        &self,
        deployed: &Deployed,
        meu: &Meu,
        sandbox: &SandboxSpec,
        deadline: Instant,
    ) -> Result<SlotGuard, Error> {
        let memory_mb = sandbox.memory_bytes.div_ceil(1 << 20).max(1) as u64;
        self.metrics.waiting_for_slot.fetch_add(1, Relaxed);
        let tenant = deployed.tenant.clone();
        let reserved = self
            .instance_slots
            .acquire(
                &tenant,
                sandbox.memory_bytes as u64,
                deployed.instance_cap.as_ref(),
                deadline,
            )
            .await;
        self.metrics.waiting_for_slot.fetch_sub(1, Relaxed);
        let waited_ms = || meu.accepted_at.elapsed().as_millis() as u64;
        match reserved {
            Ok(slot) => Ok(slot),
            Err(Refused::TenantRemoved) => Err(Error::PoolClosed("instance")),
            Err(Refused::Tenancy(refused)) => Err(Error::TenantLimit {
                tenant,
                refused: refused.to_string(),
                retryable: refused.retry_after_ms().is_some(),
            }),
            Err(Refused::Deadline {
                held_by: HeldBy::FunctionCap,
            }) => Err(Error::FunctionLimit {
                function: meu.function.clone(),
                max_instances: deployed.info.max_instances.unwrap_or(0),
                waited_ms: waited_ms(),
            }),
            Err(Refused::Deadline {
                held_by: HeldBy::TenantCaps,
            }) => Err(Error::TenantLimit {
                tenant,
                refused: format!(
                    "its guests held all of its max_concurrent slots or memory budget on \
                         this node until the function's time limit ({} ms waited)",
                    waited_ms()
                ),
                retryable: true,
            }),
            Err(
                Refused::Deadline {
                    held_by: HeldBy::NodeMemory,
                }
                | Refused::LargerThanNode,
            ) => Err(Error::NoMemoryBudget {
                waited_ms: waited_ms(),
                memory_mb,
                budget_mb: self.cfg.memory_budget_mb,
            }),
            Err(Refused::Deadline {
                held_by: HeldBy::Slots,
            }) => Err(Error::NoInstanceSlot {
                waited_ms: waited_ms(),
                slots: self.cfg.max_instances,
            }),
        }
    }

    /// The rest of [`Runtime::execute`] when guests run in cells: the cell runs the guest,
    /// the slot (and the MEU's lease) are held until it answers or the deadline passes.
    async fn execute_in_cell(
        &self,
        cells: &dyn CellRunner,
        deployed: &Deployed,
        mut meu: Meu,
        slot: SlotGuard,
        deadline: Instant,
        mut timings: Timings,
    ) -> Result<MeuOutcome, Error> {
        let _held = (slot, meu.lease.take());
        self.metrics.executing.fetch_add(1, Relaxed);
        let _executing = DecrementOnDrop(&self.metrics.executing);
        // The cell may have to load the module first, which does not count against the
        // function's time (see `run_meu`): under the baseline profile that is a compile.
        let load_allowance = match self.cfg.runtime_profile {
            RuntimeProfile::Optimised => Duration::ZERO,
            RuntimeProfile::Baseline => self.cfg.compile_timeout,
        };
        let answer_by = deadline + self.cfg.epoch_tick * 2 + load_allowance;
        // The guest's CPU time in the cell, counted for its function however the run ends (a
        // cell that does not answer in time has told nothing: 0).
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let _count_cpu = RecordCpuOnDrop {
            used_ns: cpu_ns.clone(),
            metrics: &deployed.metrics,
        };
        let run = cells.run(&deployed.info, meu, cpu_ns);
        let outcome = match tokio::time::timeout_at(answer_by.into(), run).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    timeout_ms: deployed.info.timeout_ms,
                });
            }
        };
        timings.load_us = outcome.timings.load_us;
        timings.reuse_us = outcome.timings.reuse_us;
        timings.inst_us = outcome.timings.inst_us;
        timings.exec_us = outcome.timings.exec_us;
        let metrics = &deployed.metrics;
        if outcome.cold_start {
            metrics.cold_starts.fetch_add(1, Relaxed);
            metrics.t_load.observe_us(timings.load_us);
        } else {
            metrics.reuse_hits.fetch_add(1, Relaxed);
            metrics.t_reuse.observe_us(timings.reuse_us);
        }
        // Warm on this node from now on, whatever the profile (placement asks).
        self.cache_module(deployed.info.hash, None);
        deployed.metrics.t_inst.observe_us(timings.inst_us);
        deployed.metrics.t_exec.observe_us(timings.exec_us);
        if outcome.memory_grows > 0 {
            deployed
                .metrics
                .memory_grows
                .fetch_add(outcome.memory_grows, Relaxed);
        }
        Ok(MeuOutcome {
            output: outcome.output,
            cold_start: outcome.cold_start,
            timings,
            memory_grows: outcome.memory_grows,
            cpu_ns: outcome.cpu_ns,
        })
    }

    /// Runs one MEU to completion under the limits `sandbox` gives its function.
    pub async fn execute(&self, meu: Meu, sandbox: &dyn Sandbox) -> Result<MeuOutcome, Error> {
        self.execute_with(meu, sandbox, RunSinks::default()).await
    }

    /// [`Runtime::execute`], with what the run leaves behind going where `sinks` says as well
    /// (a cell gives each run its own, to send back with its answer).
    pub async fn execute_with(
        &self,
        meu: Meu,
        sandbox: &dyn Sandbox,
        sinks: RunSinks,
    ) -> Result<MeuOutcome, Error> {
        if meu.trace.is_disabled() {
            return self.run_meu(meu, sandbox, sinks).await;
        }
        // The guest's span: in a cell the guest runs in another process, which exports
        // nothing (it has no network), so the span covers the round trip and is named `cell`.
        let span = tracing::info_span!(
            target: "tern::trace",
            parent: &meu.trace,
            "guest",
            otel.name = if self.cells.get().is_some() { "cell" } else { "guest" },
            function = %meu.function,
            items = meu.items,
            cold_start = tracing::field::Empty,
            load_us = tracing::field::Empty,
            reuse_us = tracing::field::Empty,
            inst_us = tracing::field::Empty,
            exec_us = tracing::field::Empty,
            error = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let result =
            tracing::Instrument::instrument(self.run_meu(meu, sandbox, sinks), span.clone()).await;
        match &result {
            Ok(o) => {
                let t = &o.timings;
                span.record("cold_start", o.cold_start);
                span.record("load_us", t.load_us);
                span.record("reuse_us", t.reuse_us);
                span.record("inst_us", t.inst_us);
                span.record("exec_us", t.exec_us);
            }
            Err(e) => {
                span.record("error", tracing::field::display(e));
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn run_meu(
        &self,
        meu: Meu,
        sandbox: &dyn Sandbox,
        sinks: RunSinks,
    ) -> Result<MeuOutcome, Error> {
        let deployed = self
            .get(&meu.function)
            .ok_or_else(|| Error::FunctionNotFound(meu.function.clone()))?;
        let sandbox = sandbox.spec_for(&deployed);
        let metrics = deployed.metrics.clone();
        metrics.meus.fetch_add(1, Relaxed);
        let mut timings = Timings::default();

        // A request a component cannot be given is refused before anything is loaded.
        let mut request = match deployed.kind {
            tern_wire::FunctionKind::Module if tern_wire::HttpCall::is_call(&meu.input) => {
                return Err(Error::NotAComponent(meu.function.clone()));
            }
            tern_wire::FunctionKind::Module => None,
            tern_wire::FunctionKind::Component => {
                Some(http_component::Request::from_input(&meu.input)?)
            }
        };
        // The time limit runs from acceptance: waiting for a slot is part of it, and a unit
        // that finds none in time is refused as overload, not run late. A cold start's load
        // is not (it is bounded by `compile_timeout` when it compiles): the limit is moved on
        // by the time the load took.
        let deadline = meu.accepted_at + sandbox.timeout;
        if let Some(cells) = self.cells.get() {
            // The cell loads (or finds loaded) the module, and says which it was.
            let slot = self
                .acquire_slot(&deployed, &meu, &sandbox, deadline)
                .await?;
            starts_in_time(&meu, deadline, &sandbox)?;
            return self
                .execute_in_cell(cells.as_ref(), &deployed, meu, slot, deadline, timings)
                .await;
        }

        let lookup = Instant::now();
        let (pre, cold_start) = match self.cached_module(&deployed.info.hash) {
            Some(pre) => {
                timings.reuse_us = lookup.elapsed().as_micros() as u64;
                metrics.reuse_hits.fetch_add(1, Relaxed);
                metrics.t_reuse.observe_us(timings.reuse_us);
                (pre, false)
            }
            None => {
                metrics.cold_starts.fetch_add(1, Relaxed);
                let pre = self.load_for_call(deployed.info.hash).await?;
                timings.load_us = lookup.elapsed().as_micros() as u64;
                metrics.t_load.observe_us(timings.load_us);
                (pre, true)
            }
        };
        let deadline = deadline + Duration::from_micros(timings.load_us);
        let slot = self
            .acquire_slot(&deployed, &meu, &sandbox, deadline)
            .await?;
        starts_in_time(&meu, deadline, &sandbox)?;

        let start = deployed.lane_history.start();
        let start_slow = start == lanes::Start::Slow;
        // Whatever the guest writes to stderr is recorded when this goes, however the MEU
        // ends.
        let (mut wasi, _stderr) = self.guest_wasi(&meu, sinks.log, matches!(pre, Loaded::Http(_)));
        let host_metrics = self.metrics.clone();
        // Epochs advance only while some guest holds one of these (an idle ticker parks).
        let ticking = self.ticker.guest_running();
        let lease = meu.lease;
        type Guest =
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<GuestRun, Error>> + Send>>;
        let timeout_ms = sandbox.timeout.as_millis() as u32;
        let (guest, stdout, plain): (Guest, Option<CappedPipe>, bool) = match pre {
            Loaded::Command(pre) => {
                let stdout = CappedPipe::new(sandbox.max_output_bytes);
                wasi.stdin(MemoryInputPipe::new(meu.input.clone()))
                    .stdout(stdout.clone());
                let limits = guest_store_limits(sandbox.memory_bytes, 1, 4);
                let store = self.guest_store(
                    HostState {
                        wasi: wasi.build_p1(),
                        limits: GuestLimits::new(limits),
                    },
                    deadline,
                    start_slow,
                );
                let guest = async move {
                    let mut held = Held::new(store, slot, lease, ticking, host_metrics);
                    let inst_start = Instant::now();
                    let instance = pre
                        .instantiate_async(&mut held.store)
                        .await
                        .map_err(|e| instantiation_error(e, timeout_ms))?;
                    let inst_us = held.instantiated(inst_start);
                    let start = instance
                        .get_typed_func::<(), ()>(&mut held.store, "_start")
                        .map_err(|e| Error::InvalidModule(format!("{e:#}")))?;
                    let exec_start = Instant::now();
                    let result = start.call_async(&mut held.store, ()).await;
                    Ok(held.ran(result, inst_us, exec_start, None))
                };
                (Box::pin(guest), Some(stdout), false)
            }
            Loaded::Http(pre) => {
                let request = request.take().ok_or_else(|| Error::TaskFailed {
                    task: "guest",
                    detail: "a component's request went missing".into(),
                })?;
                let limits = guest_store_limits(
                    sandbox.memory_bytes,
                    CORE_INSTANCES_PER_COMPONENT as usize,
                    CORE_INSTANCES_PER_COMPONENT as usize,
                );
                // A plain invocation's output is the body, judged by its status: whole.
                let stream = (!request.plain).then(|| meu.stream.take()).flatten();
                let mut store = self.guest_store(
                    http_component::State::new(wasi.build(), GuestLimits::new(limits)),
                    deadline,
                    start_slow,
                );
                let (incoming, out, response) =
                    http_component::hand_over(store.data_mut(), request.http)?;
                let cap = sandbox.max_output_bytes;
                // Not held to tokio's cooperative budget: every chunk handed from the guest to
                // the reader costs budget, and running out would look like a yield (a move to
                // the slow lane). The guest still yields at its epoch deadline.
                let guest = tokio::task::coop::unconstrained(async move {
                    let mut held = Held::new(store, slot, lease, ticking, host_metrics);
                    let inst_start = Instant::now();
                    let proxy = pre
                        .instantiate_async(&mut held.store)
                        .await
                        .map_err(|e| instantiation_error(e, timeout_ms))?;
                    let inst_us = held.instantiated(inst_start);
                    let exec_start = Instant::now();
                    let call = proxy.wasi_http_incoming_handler().call_handle(
                        &mut held.store,
                        incoming,
                        out,
                    );
                    let progress = std::sync::atomic::AtomicU64::new(0);
                    let answer = http_component::collect_answer(
                        &progress, response, cap, stream, cold_start,
                    );
                    let (result, answer) = answer_while_running(call, answer, &progress).await;
                    Ok(held.ran(result, inst_us, exec_start, answer))
                });
                (Box::pin(guest), None, request.plain)
            }
        };

        let moved_metrics = self.metrics.clone();
        let moved = std::sync::atomic::AtomicBool::new(false);
        // A guest's own epoch check traps it within a tick of the deadline while it runs; one
        // waiting on a busy low-priority lane may not run again for a while. The caller is
        // answered at deadline + 2 ticks regardless, and the guest's task is cancelled.
        let answer_by = deadline + self.cfg.epoch_tick * 2;
        if start_slow {
            self.metrics.slow_lane_starts.fetch_add(1, Relaxed);
        }
        // The guest's CPU time, counted for its function however the guest ends (at its
        // deadline too: a guest that runs until it is stopped costs the most).
        let cpu_ns = sinks.cpu_ns.unwrap_or_default();
        let _count_cpu = RecordCpuOnDrop {
            used_ns: cpu_ns.clone(),
            metrics: &metrics,
        };
        let guest = CpuMetered::new(guest, cpu_ns.clone());
        let run = self.lanes.run(guest, start_slow, || {
            moved_metrics.slow_lane_moves.fetch_add(1, Relaxed);
            moved.store(true, Relaxed);
            deployed.lane_history.ran(start, true);
        });
        let ran = match tokio::time::timeout_at(answer_by.into(), run).await {
            Ok(r) => {
                if !start_slow && !moved.load(Relaxed) {
                    deployed.lane_history.ran(start, false);
                }
                r?
            }
            Err(_) => {
                return Err(Error::Timeout {
                    timeout_ms: sandbox.timeout.as_millis() as u32,
                });
            }
        };
        timings.inst_us = ran.inst_us;
        timings.exec_us = ran.exec_us;
        tracing::debug!(
            cold_start,
            load_us = timings.load_us,
            reuse_us = timings.reuse_us,
            inst_us = ran.inst_us,
            exec_us = ran.exec_us,
            "guest finished"
        );
        metrics.t_inst.observe_us(ran.inst_us);
        metrics.t_exec.observe_us(ran.exec_us);
        if stdout.as_ref().is_some_and(CappedPipe::overflowed) {
            return Err(Error::OutputTooLarge {
                limit: sandbox.max_output_bytes,
            });
        }
        classify(ran.result, &sandbox)?;
        let output = match (stdout, ran.answer) {
            (Some(stdout), _) => stdout.take(),
            (None, Some(answer)) => http_component::output(answer?, plain)?,
            (None, None) => {
                return Err(Error::NoAnswer(
                    "the component ended without setting its response".into(),
                ));
            }
        };
        // Counted for MEUs that succeed, as a cell reports them (only with its answer).
        if ran.memory_grows > 0 {
            metrics.memory_grows.fetch_add(ran.memory_grows, Relaxed);
        }
        Ok(MeuOutcome {
            output,
            cold_start,
            timings,
            memory_grows: ran.memory_grows,
            cpu_ns: cpu_ns.load(Relaxed),
        })
    }

    /// A store for one guest: its limits in force and its deadline armed (see
    /// [`arm_deadline`]).
    fn guest_store<T: Limited>(&self, data: T, deadline: Instant, start_slow: bool) -> Store<T> {
        let mut store = Store::new(&self.engine, data);
        store.limiter(|s| s.limits());
        arm_deadline(&mut store, deadline, self.cfg.epoch_tick, start_slow);
        store
    }

    /// The WASI context of one guest: stderr (and, for a component, stdout: it has no other
    /// use) captured for the function's logs, and `TERN_FUNCTION`, `TERN_REQUEST_ID` and
    /// `TERN_NODE` in its environment. Returns the capture's recorder, which records what was
    /// written when it is dropped.
    fn guest_wasi(
        &self,
        meu: &Meu,
        log: Option<Arc<dyn LogSink>>,
        stdout_too: bool,
    ) -> (WasiCtxBuilder, Option<RecordOnDrop>) {
        let mut wasi = WasiCtxBuilder::new();
        let recorder = match self.cfg.guest_log_bytes {
            0 => {
                wasi.stderr(SinkOutputStream);
                if stdout_too {
                    wasi.stdout(SinkOutputStream);
                }
                None
            }
            cap => {
                let capture = StderrCapture::new(cap);
                wasi.stderr(capture.clone());
                if stdout_too {
                    wasi.stdout(capture.clone());
                }
                Some(RecordOnDrop {
                    capture,
                    sink: log.unwrap_or_else(|| self.logs.clone()),
                    function: meu.function.clone(),
                    request_id: meu.request_id.clone(),
                })
            }
        };
        wasi.env("TERN_FUNCTION", meu.function.as_str())
            .env("TERN_REQUEST_ID", &*meu.request_id)
            .env("TERN_NODE", &self.cfg.node_name);
        (wasi, recorder)
    }
}

/// Adds a guest's CPU time to its function's metrics when the MEU ends, however it ends.
struct RecordCpuOnDrop<'a> {
    used_ns: Arc<std::sync::atomic::AtomicU64>,
    metrics: &'a FunctionMetrics,
}

impl Drop for RecordCpuOnDrop<'_> {
    fn drop(&mut self) {
        self.metrics.record_guest_cpu(self.used_ns.load(Relaxed));
    }
}

/// Where a run's by-products go besides this runtime's own logs and metrics, when its caller
/// wants them (a cell sends them back to the node with its answer).
#[derive(Default)]
pub struct RunSinks {
    /// The guest's stderr, instead of this runtime's [`GuestLogs`].
    pub log: Option<Arc<dyn LogSink>>,
    /// Added to: the guest's CPU time, nanoseconds, however the run ends.
    pub cpu_ns: Option<Arc<AtomicU64>>,
}

/// How one guest ran, whatever its kind.
struct GuestRun {
    result: wasmtime::Result<()>,
    inst_us: u64,
    exec_us: u64,
    memory_grows: u64,
    /// A component's response (`None` for a command, which answers on stdout, or when the
    /// component failed before answering).
    answer: Option<Result<tern_wire::HttpAnswer, Error>>,
}

/// The most chunks handed from a guest to the reader in one poll before its task lets others
/// run (a guest writing a large body goes on where it was, on the same lane).
const HANDOFFS_PER_POLL: usize = 256;

/// Runs a component's `handle` while reading its response as it is written, in one task and,
/// where it can, in one poll: when the guest waits for room in its body's channel, the reader
/// makes room and the guest is polled again at once (`progress` counts what the reader took),
/// so a guest leaves the fast lane only when it yields at its epoch deadline. Ends when both
/// are done; when reading the answer fails (over the output cap, say), cancelling the guest; or
/// once the guest has returned and the reader can take nothing more (an answer left unfinished
/// is then `None`).
async fn answer_while_running(
    call: impl std::future::Future<Output = wasmtime::Result<()>>,
    answer: impl std::future::Future<Output = Result<tern_wire::HttpAnswer, Error>>,
    progress: &std::sync::atomic::AtomicU64,
) -> (
    wasmtime::Result<()>,
    Option<Result<tern_wire::HttpAnswer, Error>>,
) {
    use std::task::Poll;
    let mut call = std::pin::pin!(call);
    let mut answer = std::pin::pin!(answer);
    let mut called = None;
    let mut answered = None;
    std::future::poll_fn(|cx| {
        for _ in 0..HANDOFFS_PER_POLL {
            let before = progress.load(Relaxed);
            if called.is_none()
                && let Poll::Ready(c) = call.as_mut().poll(cx)
            {
                called = Some(c);
            }
            if answered.is_none()
                && let Poll::Ready(a) = answer.as_mut().poll(cx)
            {
                answered = Some(a);
            }
            if matches!(answered, Some(Err(_))) || (called.is_some() && answered.is_some()) {
                return Poll::Ready(());
            }
            if progress.load(Relaxed) == before {
                // Nothing moved: the guest waits for its deadline's yield (or has returned,
                // and what it left unfinished will never finish).
                return if called.is_some() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
        }
        // The guest's last wait was woken by the reader: this task runs again soon.
        Poll::Pending
    })
    .await;
    let called = called.unwrap_or(Ok(()));
    (called, answered)
}

/// A guest's `StoreLimits`: its function's memory in one linear memory, and room for the
/// core instances and tables its kind needs.
fn guest_store_limits(memory_bytes: usize, instances: usize, tables: usize) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(memory_bytes)
        .instances(instances)
        .memories(1)
        .tables(tables)
        .trap_on_grow_failure(false)
        .build()
}

/// Refuses (as overload) a unit whose `deadline` passed before its guest could start.
///
/// A free slot is granted without waiting however late the unit asks, and a short guest ends
/// before its first epoch check: on a node whose CPU is saturated, units that spent their
/// whole time limit queued before the slot (for the CPU between stages, in a mailbox, on the
/// way from another node) would otherwise still run and be answered long past the limit.
fn starts_in_time(meu: &Meu, deadline: Instant, sandbox: &SandboxSpec) -> Result<(), Error> {
    // By tokio's clock, as the unit's acceptance and its waits for a slot.
    let now = tokio::time::Instant::now().into_std();
    if now < deadline {
        return Ok(());
    }
    Err(Error::LateStart {
        waited_ms: now.saturating_duration_since(meu.accepted_at).as_millis() as u64,
        timeout_ms: sandbox.timeout.as_millis().min(u32::MAX as u128) as u32,
    })
}

/// Interrupts the guest at `deadline` and moves it to the slow lane once it has burnt a time
/// slice (`tick`) of CPU.
///
/// Ticks are wall-clock, so a tick passing does not mean the guest used the CPU: on a busy
/// machine the OS may simply have preempted it. A guest yields (and so moves to the slow lane)
/// only once it has itself burnt a full slice of CPU time; until then it keeps running on the
/// fast lane. Thread CPU time is a valid measure here because, until its first yield, the
/// guest runs without interruption on the thread that created the store. The first check comes
/// after two ticks so a short guest that started just before a tick is never checked at all.
/// A known CPU hog starts on the slow lane, yielding every tick from the start (its thread is
/// not the one measured here).
fn arm_deadline<T>(store: &mut Store<T>, deadline: Instant, tick: Duration, start_slow: bool) {
    let cpu_start = thread_cpu_time();
    let mut yielded = start_slow;
    store.set_epoch_deadline(2);
    store.epoch_deadline_callback(move |_| {
        if Instant::now() >= deadline {
            return Ok(UpdateDeadline::Interrupt);
        }
        if !yielded && thread_cpu_time().saturating_sub(cpu_start) < tick {
            return Ok(UpdateDeadline::Continue(1));
        }
        yielded = true;
        Ok(UpdateDeadline::Yield(1))
    });
}

/// The data of a guest's store, whatever its kind: it runs under [`GuestLimits`].
trait Limited: Send + 'static {
    fn limits(&mut self) -> &mut GuestLimits;
}

impl Limited for HostState {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

impl Limited for http_component::State {
    fn limits(&mut self) -> &mut GuestLimits {
        &mut self.limits
    }
}

/// What a running guest holds, dropped in this order: its count in `executing` and its hold
/// on the epoch ticker; its store (the pooled instance goes back to wasmtime's pool); then its
/// instance slot with its memory reservation, then its lease. Released the other way round, a
/// unit woken by the free slot could find the pool still full.
struct Held<T: 'static> {
    _executing: Executing,
    _ticking: RunningGuest,
    store: Store<T>,
    _slot: SlotGuard,
    _lease: Option<Lease>,
}

impl<T: Limited> Held<T> {
    fn new(
        store: Store<T>,
        slot: SlotGuard,
        lease: Option<Lease>,
        ticking: RunningGuest,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            _executing: Executing::new(metrics),
            _ticking: ticking,
            store,
            _slot: slot,
            _lease: lease,
        }
    }

    /// The instantiation that began at `since` is done: its time (T_inst, µs); the guest's own
    /// memory growths count from here.
    fn instantiated(&mut self, since: Instant) -> u64 {
        let inst_us = since.elapsed().as_micros() as u64;
        self.store.data_mut().limits().instantiated();
        inst_us
    }

    /// How the guest that began executing at `exec_start` ran.
    fn ran(
        &mut self,
        result: wasmtime::Result<()>,
        inst_us: u64,
        exec_start: Instant,
        answer: Option<Result<tern_wire::HttpAnswer, Error>>,
    ) -> GuestRun {
        GuestRun {
            result,
            inst_us,
            exec_us: exec_start.elapsed().as_micros() as u64,
            memory_grows: self.store.data_mut().limits().grows(),
            answer,
        }
    }
}

/// Counts a guest in the node's `executing` gauge for as long as it lives.
struct Executing(Arc<Metrics>);

impl Executing {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.executing.fetch_add(1, Relaxed);
        Self(metrics)
    }
}

impl Drop for Executing {
    fn drop(&mut self) {
        self.0.executing.fetch_sub(1, Relaxed);
    }
}

/// An instantiation failure: the pool being full is overload (a slot was granted, so this
/// should not happen), anything else is the guest's (its start section trapped, say).
/// Why instantiating a guest failed: a full pool, its deadline (a module's start function, or
/// an instantiation slowed past the deadline, is interrupted like a running guest), or a trap.
fn instantiation_error(e: wasmtime::Error, timeout_ms: u32) -> Error {
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        Error::InstancePoolFull(format!("{e:#}"))
    } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        Error::Timeout { timeout_ms }
    } else {
        Error::GuestTrap(format!("instantiation failed: {e:#}"))
    }
}

struct DecrementOnDrop<'a>(&'a std::sync::atomic::AtomicI64);

impl Drop for DecrementOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Turns the guest's result into success or a typed error.
fn classify(result: wasmtime::Result<()>, sandbox: &SandboxSpec) -> Result<(), Error> {
    let Err(err) = result else {
        return Ok(());
    };
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return match exit.0 {
            0 => Ok(()),
            code => Err(Error::GuestExit { code }),
        };
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return Err(match trap {
            Trap::Interrupt => Error::Timeout {
                timeout_ms: sandbox.timeout.as_millis() as u32,
            },
            other => Error::GuestTrap(other.to_string()),
        });
    }
    Err(Error::GuestTrap(format!("{err:#}")))
}

/// Deletes an artifact and its digest, if present (best effort: a leftover is collected
/// later by [`Runtime::remove_artifacts_except`]).
fn remove_artifact_files(path: &Path) {
    for p in [path.to_owned(), path.with_extension("sha256")] {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot delete a refused module's artifact");
        }
    }
}

/// Writes the artifact and, beside it, its SHA-256, each through a temporary file and a rename
/// so that a crash never leaves a half-written artifact under the final name.
fn write_artifact(path: &Path, artifact: &[u8]) -> Result<(), Error> {
    let digest = ModuleHash(Sha256::digest(artifact).into()).to_hex();
    let sum_path = path.with_extension("sha256");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, artifact)?;
    std::fs::rename(&tmp, path)?;
    std::fs::write(&tmp, digest)?;
    std::fs::rename(&tmp, &sum_path)?;
    Ok(())
}

/// Writes a module's bytes through a temporary file and a rename (the baseline profile's
/// copy; its name is its hash, so it needs no digest beside it).
fn write_source(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A module's bytes kept by the baseline profile, if they are there (`None` if not), checked
/// against the hash they are kept under.
/// [`read_source`] where the bytes must be there: a module the `baseline` profile is about to
/// compile or hand over.
fn required_source(path: &Path, hash: &ModuleHash) -> Result<Vec<u8>, Error> {
    read_source(path, hash)?.ok_or_else(|| Error::BadArtifact {
        path: path.display().to_string(),
        reason: "the module's bytes are not there".into(),
    })
}

fn read_source(path: &Path, hash: &ModuleHash) -> Result<Option<Vec<u8>>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if Runtime::module_hash(&bytes) != *hash {
        return Err(Error::BadArtifact {
            path: path.display().to_string(),
            reason: "does not match its module hash".into(),
        });
    }
    Ok(Some(bytes))
}

/// Loads an artifact only if its bytes still match the digest written beside it: a truncated
/// or bit-flipped file on disk must be recompiled, never executed.
fn load_verified_artifact(engine: &Engine, path: &Path) -> Result<Artifact, Error> {
    let bytes = std::fs::read(path)?;
    let expected = std::fs::read_to_string(path.with_extension("sha256"))?;
    let actual = ModuleHash(Sha256::digest(&bytes).into()).to_hex();
    if expected.trim() != actual {
        return Err(Error::BadArtifact {
            path: path.display().to_string(),
            reason: "does not match its digest".into(),
        });
    }
    let bad = |e: wasmtime::Error| Error::BadArtifact {
        path: path.display().to_string(),
        reason: format!("{e:#}"),
    };
    // SAFETY (both arms): `path` is in the node's own artifact directory, was written by
    // `Engine::precompile_module` or `Engine::precompile_component` of an engine with this
    // compatibility hash (it is part of the file name), and its bytes were just checked
    // against the digest written with it. wasmtime additionally refuses artifacts from an
    // incompatible engine, and a component's artifact where a module's is expected.
    match Engine::detect_precompiled(&bytes) {
        Some(Precompiled::Component) => {
            #[allow(unsafe_code)]
            let component = unsafe { Component::deserialize_file(engine, path) }.map_err(bad)?;
            Ok(Artifact::Component(component))
        }
        _ => {
            #[allow(unsafe_code)]
            let module = unsafe { Module::deserialize_file(engine, path) }.map_err(bad)?;
            Ok(Artifact::Module(module))
        }
    }
}

#[cfg(test)]
mod memory_profile_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use wasmtime::Instance;

    /// `(memory 1 16)` and three exports: `poke(addr, byte)`, `peek(addr) -> byte` and
    /// `grow(pages) -> old pages`, encoded by hand (the build has no WAT parser).
    const PROBE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x0b, 0x02, 0x60, 0x02, 0x7f, 0x7f, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f, // types
        0x03, 0x04, 0x03, 0x00, 0x01, 0x01, // functions
        0x05, 0x04, 0x01, 0x01, 0x01, 0x10, // memory 1..16 pages
        0x07, 0x16, 0x03, // exports
        0x04, b'p', b'o', b'k', b'e', 0x00, 0x00, //
        0x04, b'p', b'e', b'e', b'k', 0x00, 0x01, //
        0x04, b'g', b'r', b'o', b'w', 0x00, 0x02, //
        0x0a, 0x1a, 0x03, // code
        0x09, 0x00, 0x20, 0x00, 0x20, 0x01, 0x3a, 0x00, 0x00, 0x0b, // i32.store8
        0x07, 0x00, 0x20, 0x00, 0x2d, 0x00, 0x00, 0x0b, // i32.load8_u
        0x06, 0x00, 0x20, 0x00, 0x40, 0x00, 0x0b, // memory.grow
    ];

    /// Whatever the profile: a recycled slot starts with the module's memory (nothing the
    /// previous guest wrote, not the size it grew to), out-of-bounds accesses trap, and
    /// memory grows no further than the module's maximum.
    #[test]
    fn every_memory_profile_gives_each_instance_fresh_bounded_memory() {
        for profile in [MemoryProfile::GuardPages, MemoryProfile::ExplicitBounds] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = RuntimeConfig::new("test", dir.path());
            // One slot, so the second instance reuses the first one's memory.
            cfg.max_instances = 1;
            cfg.max_memory_mb = 1;
            cfg.keep_resident_bytes = 1 << 20;
            cfg.memory_profile = profile;
            let engine = engine(&cfg).unwrap();
            let module = Module::new(&engine, PROBE).unwrap();
            let page = 65_536;
            {
                let mut store = Store::new(&engine, ());
                store.set_epoch_deadline(u64::MAX / 2);
                let instance = Instance::new(&mut store, &module, &[]).unwrap();
                let grow = instance
                    .get_typed_func::<i32, i32>(&mut store, "grow")
                    .unwrap();
                let poke = instance
                    .get_typed_func::<(i32, i32), ()>(&mut store, "poke")
                    .unwrap();
                assert_eq!(grow.call(&mut store, 3).unwrap(), 1, "{profile:?}");
                poke.call(&mut store, (10, 7)).unwrap();
                poke.call(&mut store, (2 * page + 5, 42)).unwrap();
                assert_eq!(grow.call(&mut store, 100).unwrap(), -1, "past the maximum");
            }
            let mut store = Store::new(&engine, ());
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = Instance::new(&mut store, &module, &[]).unwrap();
            let peek = instance
                .get_typed_func::<i32, i32>(&mut store, "peek")
                .unwrap();
            let grow = instance
                .get_typed_func::<i32, i32>(&mut store, "grow")
                .unwrap();
            assert_eq!(peek.call(&mut store, 10).unwrap(), 0, "{profile:?}: reset");
            let trap = peek.call(&mut store, 2 * page + 5).unwrap_err();
            assert_eq!(
                trap.downcast_ref::<Trap>(),
                Some(&Trap::MemoryOutOfBounds),
                "{profile:?}: back to one page"
            );
            assert_eq!(grow.call(&mut store, 2).unwrap(), 1);
            assert_eq!(
                peek.call(&mut store, 2 * page + 5).unwrap(),
                0,
                "{profile:?}"
            );
        }
    }
}

#[cfg(test)]
mod late_start_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::isolation::InProcess;

    /// A command whose `_start` does nothing and that imports nothing, encoded by hand.
    const NOOP_COMMAND: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // one type: () -> ()
        0x03, 0x02, 0x01, 0x00, // one function of that type
        0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
        0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // its empty body
    ];

    /// A unit whose time limit was spent before it reached the runtime (queued for the CPU,
    /// in a mailbox, on the way from another node) is refused as overload with every slot
    /// free, and its guest is never instantiated; the same unit accepted now runs.
    #[tokio::test]
    async fn a_unit_whose_time_limit_passed_before_its_guest_started_is_refused_as_overload() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(
            RuntimeConfig::new("test", dir.path()),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let prepared = runtime
            .prepare(Bytes::from_static(NOOP_COMMAND))
            .await
            .unwrap();
        let name: FunctionName = "noop".parse().unwrap();
        let deployed = runtime.install(
            FunctionInfo {
                name: name.clone(),
                hash: prepared.hash,
                version: 1,
                // Long enough that the unit accepted now starts in time on a loaded machine.
                timeout_ms: 2_000,
                memory_mb: 16,
                size_bytes: prepared.size_bytes,
                deployed_at_ms: 0,
                max_instances: None,
            },
            prepared,
        );
        let sandbox = InProcess {
            max_output_bytes: 1024,
        };
        let meu = |age: Duration| Meu {
            accepted_at: Instant::now().checked_sub(age).unwrap(),
            ..Meu::new("r", name.clone(), Bytes::new(), 1)
        };

        let late = runtime
            .execute(meu(Duration::from_millis(2_100)), &sandbox)
            .await
            .unwrap_err();
        assert!(
            matches!(late, Error::LateStart { waited_ms, timeout_ms: 2_000 } if waited_ms >= 2_100),
            "{late:?}"
        );
        assert_eq!(late.code(), tern_wire::ErrorCode::Overloaded);
        assert_eq!(
            deployed.metrics.t_inst.count(),
            0,
            "the guest never started"
        );

        runtime
            .execute(meu(Duration::ZERO), &sandbox)
            .await
            .unwrap();
        assert_eq!(deployed.metrics.t_inst.count(), 1);
    }
}
