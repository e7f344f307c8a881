//! Starting and stopping one node: storage, runtime, supervised actors, preheating, journal
//! replay, HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorRef};
use tern_actors::{NodeSupervisor, Pipeline, Services, ServicesConfig, SupervisorMsg};
use tern_metrics::Metrics;
use tern_placement::learned::{
    CheckpointError, GuardSettings, LearnedPlacement, TrainedClasses, read_checkpoint,
};
use tern_placement::{LeastLoaded, LocalFirst, Placement, WarmAffinity};
use tern_runtime::isolation::InProcess;
use tern_runtime::{Runtime, RuntimeConfig};
use tern_wire::FunctionName;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::{Config, ConfigError};
use crate::error::NodeError;
use crate::http;
use crate::sockets::Sockets;
use crate::store::Store;
use tern_link::{ClusterLink, LinkConfig, LocalNode};

/// A running node. Dropping it does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    janitor: JoinHandle<()>,
    store_watch: JoinHandle<()>,
    /// Takes over async work of peers that have been away (see `crate::takeover`).
    takeover: JoinHandle<()>,
    restart_wanted: watch::Receiver<bool>,
    supervisor: ActorRef<SupervisorMsg>,
    client_api: Option<crate::client_api::ClientApi>,
}

impl NodeHandle {
    /// Turns `true` when the node needs a restart to serve fully again: its store failed a
    /// write (sled then refuses every later one until it is opened again) and the data
    /// directory takes writes again. `tern up` then drains and re-executes itself.
    pub fn restart_wanted(&self) -> watch::Receiver<bool> {
        self.restart_wanted.clone()
    }

    /// The address the HTTP API listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster link, when the node is a cluster member.
    pub fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.app.cluster.get()
    }

    /// The UDP address of the QUIC client API, if `client_listen` is set.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_api.as_ref().map(|c| c.local_addr())
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn services(&self) -> &Arc<Services> {
        self.app.services()
    }

    /// Stops accepting, lets open requests finish (up to 10 s), stops the actors, flushes the
    /// store. Unfinished async invocations stay journaled and run again at the next start.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        if let Some(client_api) = self.client_api {
            client_api.shutdown().await;
        }
        let _ = self.server.await;
        self.janitor.abort();
        let _ = self.janitor.await;
        self.store_watch.abort();
        let _ = self.store_watch.await;
        self.takeover.abort();
        let _ = self.takeover.await;
        // Async invocations finish (their results are journaled) or, past 10 s, are left
        // pending in the journal to run again at the next start.
        for _ in 0..1000 {
            if self.app.background_tasks() == 0 && self.app.pipeline.admission().in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Peers see this node leave at once (not after the idle timeout) and stop placing work
        // here; work they already sent has been answered above.
        if let Some(cluster) = self.app.cluster.get() {
            cluster.shutdown().await;
        }
        let (tx, rx) = oneshot::channel();
        if self.supervisor.cast(SupervisorMsg::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        // No cell outlives the node (nor a process that replaces it).
        if let Some(cells) = self.app.cells.get() {
            cells.stop_all(Duration::from_secs(5)).await;
        }
        self.app.store.flush().await?;
        Ok(())
    }
}

/// Starts a node: everything is ready (functions preheated, journal replayed, socket bound)
/// when this returns.
pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
    start_with(config, Sockets::default()).await
}

/// [`start`] on sockets bound beforehand (by a test, or inherited through socket activation):
/// each one given is used instead of binding the address the configuration names for it.
pub async fn start_with(config: Config, sockets: Sockets) -> Result<NodeHandle, NodeError> {
    config.validate()?;
    raise_open_files_limit(&config);
    let Sockets { http, mesh, client } = sockets;
    if mesh.is_some() && config.cluster_dir.is_none() {
        return Err(ConfigError::Invalid(
            "a mesh socket was passed but cluster_dir is not set".into(),
        )
        .into());
    }
    // `validate` checked the configured address; an inherited listener may be bound to
    // another one.
    if let Some(inherited) = &http {
        config.check_open_listener(inherited.local_addr()?)?;
    }
    let client_listener = crate::client_api::ClientApi::bind(&config, client)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::open(&config.data_dir)?;
    let metrics = Arc::new(Metrics::default());
    let mut rt = RuntimeConfig::new(config.node_name.clone(), config.data_dir.join("artifacts"));
    rt.max_module_bytes = config.max_module_bytes;
    rt.compile_timeout = Duration::from_millis(config.compile_timeout_ms);
    rt.compile_concurrency = config.compile_concurrency;
    rt.max_instances = config.max_instances;
    let budget_mb = config.memory_budget_mb(mem_total_kib());
    if let Some(at_once) = config.check_memory_budget(budget_mb)? {
        tracing::warn!(
            budget_mb,
            max_instances = config.max_instances,
            max_memory_mb = config.max_memory_mb,
            "the memory budget holds {at_once} guests of max_memory_mb at once, fewer than \
             max_instances: larger guests wait for memory (set memory_budget_mb to change it)"
        );
    }
    rt.memory_budget_mb = budget_mb;
    metrics
        .memory_budget_mb
        .store(budget_mb, std::sync::atomic::Ordering::Relaxed);
    rt.max_memory_mb = config.max_memory_mb;
    rt.tenant_memory_percent = config.tenant_memory_percent;
    rt.keep_resident_bytes = config.keep_resident_bytes;
    rt.memory_profile = config.memory_profile.into();
    rt.runtime_profile = config.runtime_profile.into();
    if config.runtime_profile == crate::config::RuntimeProfile::Baseline {
        tracing::warn!(
            "runtime_profile = \"baseline\": functions are compiled on first use on this node, \
             nothing is preheated, no compiled artifact is kept; for measurement only"
        );
    }
    if config.memory_profile == crate::config::MemoryProfile::ExplicitBounds {
        tracing::warn!(
            "memory_profile = \"explicit-bounds\": guests run without Spectre mitigations for \
             heap and table accesses; a guest may be able to infer memory of other guests on \
             this node"
        );
    }
    rt.max_loaded_modules = config.max_loaded_modules;
    rt.max_output_bytes = config.max_output_bytes;
    rt.guest_log_bytes = config.guest_log_bytes;
    rt.guest_log_tenant_bytes = config.guest_log_tenant_bytes;
    rt.epoch_tick = config.epoch_tick();
    rt.share = config.share_params()?;
    let runtime = Runtime::new(rt, metrics.clone())?;
    let cells = match config.isolation {
        crate::config::Isolation::InProcess => None,
        crate::config::Isolation::Lci => Some(start_cells(&config, &runtime).await?),
        crate::config::Isolation::Auto => match start_cells(&config, &runtime).await {
            Ok(cells) => Some(cells),
            Err(e) => {
                tracing::warn!(
                    "isolation = \"auto\": running guests in-process, with no OS-level \
                     isolation between tenants: {e}"
                );
                None
            }
        },
    };
    let cells = match cells {
        None => None,
        Some(cells) => {
            let quotas = Arc::new(crate::cells::CellQuotas::new(
                &config,
                runtime.config(),
                crate::app::CELL_OVERHEAD_BYTES,
            )?);
            Some((cells, quotas))
        }
    };
    let sandbox: Arc<dyn tern_runtime::isolation::Sandbox> = match &cells {
        None => Arc::new(InProcess {
            max_output_bytes: config.max_output_bytes,
        }),
        Some((cells, quotas)) => Arc::new(tern_runtime::isolation::InCells {
            max_output_bytes: config.max_output_bytes,
            upkeep: Arc::new(crate::cells::CellUpkeep {
                cells: cells.clone(),
                quotas: quotas.clone(),
                runtime: runtime.clone(),
                metrics: metrics.clone(),
                keep_warm: Duration::from_secs(config.cell_keep_warm_secs),
            }),
        }),
    };
    let parallelism = match config.map_parallelism {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let services = Services::new(
        ServicesConfig {
            node_name: config.node_name.clone(),
            queue_cap: config.queue_cap,
            map_parallelism: parallelism,
            class_max_memory_mb: config.class_limits().max_memory_mb,
            class_max_timeout_ms: config.class_limits().max_timeout_ms,
            class: config.node_class,
        },
        runtime,
        metrics.clone(),
        sandbox,
        placement(&config, parallelism, &metrics)?,
    );
    let (supervisor, _) = Actor::spawn(None, NodeSupervisor, services.clone())
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    let pipeline = Pipeline::new(services);
    let listener = match http {
        Some(listener) => http::from_std(listener)?,
        None => http::bind(config.listen).await?,
    };
    let addr = listener.local_addr()?;
    let tenants = crate::tenants::Tenants::open(&store, &config.node_name)?;
    let auth = crate::auth::Auth::open(config.auth, &store, &config.data_dir, &tenants)?;
    let copies = crate::takeover::Copies::open(&store)?;
    let keys = crate::keyed::Keys::open(&store, config.result_ttl_secs)?;
    let app = App::new(config, store, pipeline, auth, tenants, copies, keys);
    if let Some((cells, quotas)) = cells {
        let _ = app.cells.set(cells);
        let _ = app.cell_quotas.set(quotas);
    }
    app.tenants_changed(&app.tenants.entries());

    let preheated = app.preheat().await?;
    deploy_examples(&app).await;
    if app.config.cluster_dir.is_some() {
        let node: std::sync::Weak<dyn LocalNode> = Arc::downgrade(&app) as _;
        let link = ClusterLink::start(link_config(&app.config, mesh)?, node).await?;
        if app.cluster.set(link.clone()).is_err()
            || app.services().remote.set(link.clone()).is_err()
        {
            return Err(NodeError::Replication("cluster link started twice".into()));
        }
        tracing::info!(mesh = %link.local_addr()?, "joined the cluster mesh");
    }
    let replayed = app.replay_journal().await?;
    tracing::info!(%addr, preheated, replayed, node = %app.config.node_name, "node ready");

    let client_api = client_listener.map(|l| l.serve(&app)).transpose()?;
    let (shutdown, rx) = watch::channel(false);
    let server = tokio::spawn(http::serve(listener, app.clone(), rx));
    let janitor = tokio::spawn({
        let app = app.clone();
        async move {
            let mut tick = tokio::time::interval(crate::app::EXPIRY_SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = app.janitor_wake.notified() => {}
                }
                if let Err(e) = app.remove_functions_of_removed_tenants().await {
                    tracing::warn!(error = %e, "cannot remove functions of removed tenants");
                }
                if let Err(e) = app.expire_results() {
                    tracing::warn!(error = %e, "cannot expire old results");
                }
                if let Err(e) = app.keys.async_keys.expire() {
                    tracing::warn!(error = %e, "cannot expire idempotency keys");
                }
                if let Err(e) = app.collect_garbage(crate::app::ARTIFACT_GRACE).await {
                    tracing::warn!(error = %e, "cannot collect unused modules and artifacts");
                }
            }
        }
    });
    let takeover = tokio::spawn({
        let app = app.clone();
        async move {
            let mut tick = tokio::time::interval(TAKEOVER_CHECK);
            loop {
                tick.tick().await;
                if let Err(e) = app.take_over().await {
                    tracing::warn!(error = %e, "cannot take over async work of a peer");
                }
            }
        }
    });
    let (wanted, restart_wanted) = watch::channel(false);
    let store_watch = tokio::spawn(watch_store(
        app.store.clone(),
        app.config.data_dir.clone(),
        wanted,
    ));
    Ok(NodeHandle {
        addr,
        app,
        shutdown,
        server,
        janitor,
        store_watch,
        takeover,
        restart_wanted,
        supervisor,
        client_api,
    })
}

/// How often the node checks that its store takes writes, and, once it does not, whether the
/// data directory takes writes again.
const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the node looks for copies of peers' async work due for takeover.
const TAKEOVER_CHECK: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Bytes a probe writes (and syncs) to see that the data directory takes writes again: room
/// for the store to write several segments (512 KiB each) and a large record, not just a few
/// bytes, so the restart that follows can open the store and replay.
const PROBE_BYTES: usize = 8 << 20;

/// Watches the store. sled keeps the first write error that reached it (a full or failing
/// disk) and refuses every write after it until it is opened again; the node meanwhile
/// answers sync calls and refuses writes with a retryable `unavailable`. Once the data
/// directory takes a probe write again, this asks for a restart, which opens the store again
/// (and replays what was left pending).
async fn watch_store(store: Store, data_dir: std::path::PathBuf, wanted: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(STORE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Any failed or timed-out flush counts, the callers' included: a write they could
        // not make (an attempt record, say) waits for the restart's replay. Once the store
        // has failed, it is not asked again (a flush that hangs holds a sled thread).
        if !store.failed() && store.takes_writes().await {
            continue;
        }
        tracing::error!(
            "the store failed a write and takes none until it is opened again; the node \
             restarts once its data directory takes writes again"
        );
        break;
    }
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dir = data_dir.clone();
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || probe_write(&dir)).await {
            tracing::error!("the data directory takes writes again: restarting the node");
            let _ = wanted.send(true);
            return;
        }
    }
}

/// Writes, syncs and removes a file of [`PROBE_BYTES`] in `dir`, if its file system says it
/// has room for twice that (no writes while it is full). Free blocks, not available ones: a
/// node running as root may write into the blocks reserved for root, and the write itself
/// says whether it can.
fn probe_write(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let fs = rustix::fs::statvfs(dir)?;
    if fs.f_bfree.saturating_mul(fs.f_frsize) < 2 * PROBE_BYTES as u64 {
        return Err(std::io::ErrorKind::StorageFull.into());
    }
    let path = dir.join(".write-probe");
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// Checks that this host can run cells (refusing to start, naming what is missing, if not)
/// and makes the runtime run guests in them.
async fn start_cells(
    config: &Config,
    runtime: &Arc<Runtime>,
) -> Result<Arc<tern_isolator::Cells>, NodeError> {
    let lci = |e: tern_cell::Error| {
        NodeError::Config(crate::config::ConfigError::Invalid(format!(
            "isolation = \"lci\": {e}"
        )))
    };
    let hierarchy = tern_cell::host_support().map_err(lci)?;
    let leftovers = hierarchy.prepare().map_err(lci)?;
    if leftovers > 0 {
        tracing::info!(
            leftovers,
            "removed the empty cgroups of an earlier run's cells"
        );
    }
    let program = match &config.cell_program {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    // A frame carries one MEU's input, or its output and stderr, and its envelope.
    let max_frame =
        config.max_body_bytes.max(config.max_output_bytes) + config.guest_log_bytes + (64 << 10);
    let args =
        tern_isolator::CellArgs::for_node(runtime.config(), std::path::PathBuf::new(), max_frame);
    let cells = tern_isolator::Cells::new(
        hierarchy,
        tern_isolator::CellsConfig {
            program,
            program_args: vec!["cell".into()],
            roots: config.data_dir.join("cells"),
            compatibility: runtime.compatibility().to_owned(),
            args,
            max_in_flight: config.max_instances as usize,
            start_timeout: CELL_START_TIMEOUT,
            strength_weights: config.isolation_weights.into(),
            log_sink: Some(runtime.logs().clone()),
        },
    );
    // The host's checks passed; a real cell must start and answer too before guests go there.
    cells.probe().await.map_err(|e| {
        NodeError::Config(crate::config::ConfigError::Invalid(format!(
            "isolation = \"lci\": a probe cell failed: {e}"
        )))
    })?;
    runtime.set_cell_runner(cells.clone());
    Ok(cells)
}

/// From spawning a cell to its `Ready` (it takes about 10–20 ms).
const CELL_START_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a peer may load a module before running a forwarded MEU: its compile bound when
/// nodes compile on first use (the baseline runtime profile), nothing when they preheat.
fn load_allowance(c: &Config) -> Duration {
    match c.runtime_profile {
        crate::config::RuntimeProfile::Optimised => Duration::ZERO,
        crate::config::RuntimeProfile::Baseline => Duration::from_millis(c.compile_timeout_ms),
    }
}

/// How the cluster link joins the mesh, from the node's configuration and, if one was
/// passed, the mesh socket.
fn link_config(c: &Config, mesh: Option<std::net::UdpSocket>) -> Result<LinkConfig, NodeError> {
    let cluster_dir = c
        .cluster_dir
        .clone()
        .ok_or_else(|| NodeError::Replication("cluster_dir is not set".into()))?;
    let mut peers = Vec::new();
    for (peer, addr) in c.parsed_peers()? {
        peers.push((peer.parse()?, addr));
    }
    Ok(LinkConfig {
        node_name: c.node_name.parse()?,
        cluster_dir,
        listen: c.cluster_listen,
        mesh_socket: mesh.map(Arc::new),
        peers,
        frame_limit: c
            .max_body_bytes
            .max(c.max_module_bytes)
            .max(c.max_output_bytes)
            .saturating_add(64 << 10),
        // A forwarded MEU may legitimately run for the longest function time limit, after
        // the peer compiled its module where nodes compile on first use.
        request_timeout: Duration::from_millis(u64::from(c.max_timeout_ms))
            + Duration::from_secs(10)
            + load_allowance(c),
        load_allowance: load_allowance(c),
        idle_lanes: c.cluster_idle_lanes,
        sync_grace: Duration::from_millis(c.cluster_sync_grace_ms),
        ractor_sessions: c.ractor_sessions,
    })
}

fn placement(
    config: &Config,
    parallelism: usize,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Placement>, NodeError> {
    Ok(match config.placement.as_str() {
        "local-first" => Arc::new(LocalFirst),
        "least-loaded" => Arc::new(LeastLoaded),
        "learned" => {
            let path = config.policy_checkpoint.as_deref().ok_or_else(|| {
                ConfigError::Invalid("placement = \"learned\" needs policy_checkpoint".into())
            })?;
            let checkpoint = read_checkpoint(path).map_err(ConfigError::from)?;
            let mut learned =
                LearnedPlacement::new(&checkpoint.weights, parallelism, metrics.clone())
                    .map_err(|e| ConfigError::from(CheckpointError::new(path, e.to_string())))?
                    .with_classes(TrainedClasses::of(checkpoint.calibration.as_ref()));
            if config.placement_guard {
                learned = learned.with_guard(GuardSettings {
                    window: config.placement_guard_window,
                    margin_ms: config.placement_guard_margin_ms,
                });
            }
            #[cfg(feature = "online-learning")]
            if config.online_learning {
                learned = learned
                    .with_online_learning(checkpoint.weights, config.online_batch)
                    .map_err(|e| ConfigError::Invalid(format!("online learning: {e}")))?;
            }
            tracing::info!(
                checkpoint = %path.display(),
                guard = config.placement_guard,
                online_learning = config.online_learning,
                "learned placement loaded"
            );
            Arc::new(learned)
        }
        // A queue of a few MEUs per core on the owner is normal; past that, spill.
        _ => Arc::new(WarmAffinity {
            spill_at: (4 * parallelism).max(8),
        }),
    })
}

/// Deploys the configured examples found in `examples_dir`, skipping any already deployed with
/// the same bytes (so a restart does not bump versions). Missing files are reported, not fatal.
async fn deploy_examples(app: &Arc<App>) {
    for example in &app.config.examples {
        let path = app.config.examples_dir.join(format!("{example}.wasm"));
        let Ok(name) = example.parse::<FunctionName>() else {
            tracing::warn!(example, "not a valid function name; skipped");
            continue;
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "example not found; run scripts/build-functions.sh");
                continue;
            }
        };
        let hash = Runtime::module_hash(&bytes);
        if app
            .services()
            .runtime
            .get(&name)
            .is_some_and(|d| d.info.hash == hash)
        {
            continue;
        }
        match app
            .deploy(name, bytes, crate::app::FunctionLimits::default())
            .await
        {
            Ok(info) => tracing::info!(function = %info.name, "example deployed"),
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot deploy example"),
        }
    }
}

/// The machine's memory in KiB (`MemTotal` in `/proc/meminfo`), if it can be read.
fn mem_total_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Raises this process's soft limit on open files to its hard limit, and warns if even that
/// is short of what the configuration may need: a node holds a descriptor per connection and
/// one per loaded module (wasmtime maps each artifact from its open file), far beyond the
/// soft limit of 1024 that many systems start processes with.
fn raise_open_files_limit(config: &Config) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum || (limit.maximum.is_none() && limit.current.is_some()) {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-files limit to its maximum");
        }
    }
    let want = (config.max_connections as u64)
        .saturating_add(config.max_loaded_modules as u64)
        .saturating_add(OWN_OPEN_FILES);
    if let Some(have) = getrlimit(Resource::Nofile).current
        && have < want
    {
        tracing::warn!(
            limit = have,
            max_connections = config.max_connections,
            max_loaded_modules = config.max_loaded_modules,
            "the open-files limit is below max_connections + max_loaded_modules: raise it \
             (ulimit -n, LimitNOFILE=) or lower them, or connections and loads will fail"
        );
    }
}

/// Descriptors a node needs besides connections and loaded modules: its store, sockets to
/// peers and cells, epoll and timers, logs.
const OWN_OPEN_FILES: u64 = 256;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn learned(checkpoint: &Path) -> Result<Arc<dyn Placement>, NodeError> {
        let config = Config {
            placement: "learned".into(),
            policy_checkpoint: Some(checkpoint.to_path_buf()),
            ..Config::default()
        };
        placement(&config, 2, &Arc::new(Metrics::default()))
    }

    #[test]
    fn learned_placement_serves_a_calibrated_checkpoint_and_refuses_half_a_calibration() {
        let calibrated = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policy/reports/calibrated/ppo-weights.safetensors");
        assert!(learned(&calibrated).is_ok());
        // The same weights with one measured constant missing from the metadata.
        let bytes = std::fs::read(&calibrated).unwrap();
        let (weights, mut meta) =
            tern_policy::policy::PolicyWeights::from_safetensors(&bytes).unwrap();
        assert!(meta.remove("calibration.standard.cold_start_ms").is_some());
        let dir = tempfile::tempdir().unwrap();
        let half = dir.path().join("half.safetensors");
        std::fs::write(&half, weights.to_safetensors(meta).unwrap()).unwrap();
        match learned(&half) {
            Err(NodeError::Config(ConfigError::PolicyCheckpoint { message, .. })) => {
                assert!(
                    message.contains("calibration.standard.cold_start_ms"),
                    "{message}"
                )
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a half-calibrated checkpoint was served"),
        }
    }
}
