//! What the HTTP handlers call: deploys, async invocations and their journal. Shared by every
//! connection through one `Arc<App>`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;

use bytes::Bytes;
use tern_actors::admission::Permit;
use tern_actors::{Invocation, Pipeline, Services};
use tern_wire::{
    ApiError, FunctionInfo, FunctionName, InvocationId, InvocationRecord, InvocationStatus,
};

use crate::config::Config;
use crate::error::NodeError;
use crate::store::Store;
use tern_link::{ClusterLink, LocalFuture, LocalNode, resident_bytes};
use tern_metrics::Metrics;
use tern_runtime::Meu;
use tern_wire::peer::{
    AcceptedKey, KeyedResult, NodeStatus, PeerResponse, RegistryEntry, RemoteMeu, RemoteOutcome,
    TenancyRecords,
};
use tern_wire::{ModuleHash, TraceParent};

pub struct App {
    pub config: Config,
    pub store: Store,
    pub pipeline: Pipeline,
    pub ids: IdGen,
    /// Serialises the version bump and install of deploys (not their compilation, so a slow
    /// compile never holds up other deploys).
    deploy_lock: tokio::sync::Mutex<()>,
    /// Async invocations running in the background; shutdown waits for them.
    background: Arc<std::sync::atomic::AtomicUsize>,
    /// The cluster link, when the node is a cluster member (set once at start).
    pub cluster: std::sync::OnceLock<Arc<ClusterLink>>,
    /// Copies of peers' async work this node keeps, to take over if a peer dies.
    pub copies: crate::takeover::Copies,
    /// The idempotency keys of the client API this node is home of.
    pub keys: crate::keyed::Keys,
    /// Who may use the HTTP API.
    pub auth: crate::auth::Auth,
    /// The cluster's tenants.
    pub tenants: crate::tenants::Tenants,
    /// Peers up as the link last said: tenants' `max_concurrent` is split over them and this
    /// node.
    peers_up: std::sync::atomic::AtomicUsize,
    /// Serialises giving tenants' limits to the runtime, so a split computed with an older
    /// member count is never written after a newer one.
    tenants_to_runtime: std::sync::Mutex<()>,
    /// Held from a journal room check to the write it allows, so concurrent accepts (or
    /// results) cannot all pass a check that only one of them fits.
    journal_room: std::sync::Mutex<()>,
    /// When each tenant's oldest finished result expires (ms since the epoch), as the last
    /// expiry sweep found: the `Retry-After` of a call refused by a stored-result quota.
    /// Bounded by the tenants with finished results.
    result_expiry: std::sync::Mutex<HashMap<tern_tenancy::TenantName, u64>>,
    /// This node's parts of tenants' cluster-wide quotas (rate buckets, `max_concurrent`).
    pub cluster_quotas: crate::cluster_quotas::ClusterQuotas,
    /// Tenants' cells, with `isolation = "lci"` (set once at start).
    pub cells: std::sync::OnceLock<Arc<tern_isolator::Cells>>,
    /// Their quota decisions (set with `cells`).
    pub cell_quotas: std::sync::OnceLock<Arc<crate::cells::CellQuotas>>,
    /// Wakes the janitor early: a tenant was removed, or a function of a removed tenant
    /// arrived, so there may be functions to remove with their tenant.
    pub janitor_wake: tokio::sync::Notify,
}

/// The largest per-function `max_instances` a deploy may ask for: far above any node's
/// instance slots, a bound on what a caller can store rather than a limit anyone reaches.
pub const MAX_FUNCTION_INSTANCES: u32 = 1_000_000;

/// What a deploy asks of its function; `None` takes the node's default (for `max_instances`:
/// no per-function cap, only the tenant's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionLimits {
    pub timeout_ms: Option<u32>,
    pub memory_mb: Option<u32>,
    pub max_instances: Option<u32>,
}

/// The longest idempotency key a copy of async work may carry, scoped to its function (a
/// tenant-qualified function name, a separator and a key).
const MAX_SCOPED_KEY: usize = tern_tenancy::TenantName::MAX_LEN
    + 1
    + FunctionName::MAX_LEN
    + 1
    + tern_wire::client_proto::MAX_IDEMPOTENCY_KEY;

/// How often the janitor removes expired results (and collects unused modules).
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The cluster link's view of this node.
impl LocalNode for App {
    fn apply_entry<'a>(
        &'a self,
        entry: RegistryEntry,
        peer: &'a tern_cluster::NodeName,
    ) -> LocalFuture<'a, Result<bool, ApiError>> {
        Box::pin(async move {
            App::apply_entry(self, entry, peer)
                .await
                .map_err(|e| e.to_api())
        })
    }

    fn registry(&self) -> Result<Vec<RegistryEntry>, ApiError> {
        App::registry(self).map_err(|e| e.to_api())
    }

    fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, ApiError> {
        self.store
            .module(hash)
            .map_err(|e| NodeError::from(e).to_api())
    }

    fn execute_for_peer(
        &self,
        meu: RemoteMeu,
        stream: tern_runtime::AnswerStream,
    ) -> LocalFuture<'_, PeerResponse> {
        Box::pin(self.run_for_peer(meu, stream))
    }

    fn status(&self, seq: u64, cpu_percent: u32, recent_mean_us: u64) -> NodeStatus {
        let runtime = &self.services().runtime;
        let limits = self.config.class_limits();
        NodeStatus {
            node: self.config.node_name.clone(),
            class: self.config.node_class,
            max_memory_mb: limits.max_memory_mb,
            max_timeout_ms: limits.max_timeout_ms,
            queue_depth: self.pipeline.admission().in_flight().min(u32::MAX as usize) as u32,
            queue_cap: self.config.queue_cap.min(u32::MAX as usize) as u32,
            ready: runtime.list().into_iter().map(|f| f.hash).collect(),
            warm: runtime.loaded_hashes(),
            cpu_percent,
            memory_bytes: resident_bytes(),
            recent_mean_us,
            seq,
            tenant_demand: self.cluster_quotas.take_demand(
                &runtime
                    .tenants_slots()
                    .into_iter()
                    .map(|(t, running, waiting)| (t, (u64::from(running), u64::from(waiting))))
                    .collect(),
            ),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.services().metrics
    }

    fn tenancy(&self) -> Result<TenancyRecords, ApiError> {
        Ok(TenancyRecords {
            tenants: self.tenants.entries(),
            tokens: self.auth.records(),
        })
    }

    fn keyed_call(
        self: Arc<Self>,
        peer: tern_cluster::NodeName,
        call: tern_wire::peer::KeyedCall,
    ) -> LocalFuture<'static, PeerResponse> {
        Box::pin(crate::keyed::serve(self, peer, call))
    }

    fn peers_up(&self, up: usize) {
        if self.peers_up.swap(up, Ordering::Relaxed) != up {
            self.tenants_changed(&self.tenants.entries());
        }
    }

    fn cluster_demand(
        &self,
        others: std::collections::HashMap<tern_tenancy::TenantName, tern_tenancy::Demand>,
        reading: tern_tenancy::Reading,
        members_up: usize,
    ) {
        let runtime = &self.services().runtime;
        let _one_at_a_time = tern_sync::poison::lock(&self.tenants_to_runtime);
        let changed = self.cluster_quotas.share(
            &others,
            reading,
            u32::try_from(members_up).unwrap_or(u32::MAX),
        );
        for (tenant, max_concurrent) in changed {
            // A live tenant only (`get` answers no other).
            if let Some(live) = self.tenants.get(&tenant) {
                let mut lane = tern_tenancy::LaneConfig::from(&live.spec);
                lane.max_concurrent = max_concurrent;
                runtime.set_tenant(tenant, lane);
            }
        }
    }

    fn apply_tenancy(&self, records: TenancyRecords) -> Result<usize, ApiError> {
        let tenants = self
            .tenants
            .apply(records.tenants)
            .map_err(|e| e.to_api())?;
        self.tenants_changed(&tenants);
        let tokens = self.auth.apply(records.tokens).map_err(|e| e.to_api())?;
        Ok(tenants.len() + tokens)
    }

    fn hold_copy<'a>(
        &'a self,
        origin: &'a tern_cluster::NodeName,
        copy: tern_wire::peer::AsyncCopy,
    ) -> LocalFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let mut copy = copy;
            if copy.key.as_ref().is_some_and(|k| k.len() > MAX_SCOPED_KEY) {
                // No scoped key is that long: the work is covered, its key not indexed.
                tracing::warn!(%origin, id = %copy.record.id, "a copy's idempotency key is over {MAX_SCOPED_KEY} bytes: kept without it");
                copy.key = None;
            }
            if self.config.async_takeover_secs == 0 {
                // It would never run them: the sender should know its work is not covered.
                return Err(ApiError::new(
                    tern_wire::ErrorCode::Unavailable,
                    "this node does not take over async work (async_takeover_secs = 0)",
                ));
            }
            let caps = crate::takeover::CopyCaps {
                count: self.config.max_stored_results,
                bytes: self.config.max_stored_result_mb.saturating_mul(1 << 20),
            };
            self.copies
                .hold(
                    origin.as_str(),
                    copy.record,
                    copy.key.as_deref(),
                    now_ms(),
                    caps,
                )
                .await
                .map_err(|e| match e {
                    crate::takeover::CopyError::Full { .. } => {
                        ApiError::new(tern_wire::ErrorCode::Overloaded, e.to_string())
                    }
                    crate::takeover::CopyError::Store(e) => NodeError::from(e).to_api(),
                })
        })
    }

    fn release_copies(&self, ids: Vec<InvocationId>) -> Result<(), ApiError> {
        self.copies
            .release(&ids)
            .map_err(|e| NodeError::from(e).to_api())
    }

    fn find_invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, ApiError> {
        let own = self
            .store
            .invocation(id)
            .map_err(|e| NodeError::from(e).to_api())?;
        match own {
            Some(record) => Ok(Some(record)),
            None => self.copies.get(id).map_err(|e| NodeError::from(e).to_api()),
        }
    }

    fn find_keyed(&self, scope: &str) -> Result<Option<AcceptedKey>, ApiError> {
        self.kept_under_key(scope).map_err(|e| e.to_api())
    }

    fn keep_result(
        &self,
        origin: &tern_cluster::NodeName,
        kept: KeyedResult,
    ) -> Result<(), ApiError> {
        if kept.scope.len() > MAX_SCOPED_KEY {
            return Err(ApiError::new(
                tern_wire::ErrorCode::InvalidRequest,
                format!("{origin} sent a result whose key is over {MAX_SCOPED_KEY} bytes"),
            ));
        }
        self.keys.kept.keep(kept.scope, Arc::new(kept.result));
        Ok(())
    }

    fn kept_result(&self, scope: &str) -> Result<Option<KeyedResult>, ApiError> {
        if self.keys.sync_cache.running(scope) {
            return Err(ApiError::new(
                tern_wire::ErrorCode::Unavailable,
                "this node is running that call",
            ));
        }
        // A result another node ran that this node keeps, or one this node ran as the key's
        // stand-in.
        let Some(result) = self
            .keys
            .kept
            .finished(scope)
            .or_else(|| self.keys.sync_cache.finished(scope))
        else {
            return Ok(None);
        };
        Ok(Some(KeyedResult {
            scope: scope.to_owned(),
            result: result.as_ref().clone(),
        }))
    }
}

impl App {
    /// Runs an MEU another node placed here, if this node has exactly that version ready; its
    /// answer goes to `stream` as it is written if the peer takes it that way.
    async fn run_for_peer(
        &self,
        meu: RemoteMeu,
        stream: tern_runtime::AnswerStream,
    ) -> PeerResponse {
        let arrived = std::time::Instant::now();
        // The version the sender placed must be the one ready here; its time limit is the
        // unit's.
        let limit = match self.services().runtime.get(&meu.function) {
            Some(d) if d.info.hash == meu.hash => Duration::from_millis(d.info.timeout_ms.into()),
            _ => {
                return PeerResponse::Error(
                    tern_actors::Error::VersionNotReady {
                        function: meu.function,
                        hash: meu.hash,
                    }
                    .to_api(),
                );
            }
        };
        let permit = match self.pipeline.admit() {
            Ok(p) => p,
            Err(e) => return PeerResponse::Error(e.to_api()),
        };
        if meu.attempt > 1 {
            tracing::info!(request_id = %meu.request_id, attempt = meu.attempt, "running a re-placed MEU");
        }
        let trace = crate::traces::peer_meu(
            meu.trace.as_ref(),
            &meu.function,
            &meu.request_id,
            meu.attempt,
        );
        // The time limit runs from the sender's acceptance: what it already waited there is
        // spent. By tokio's clock, as every unit's acceptance.
        let accepted_at = meu.accepted_at(tokio::time::Instant::now().into_std(), limit);
        let local = Meu {
            trace: trace.clone(),
            accepted_at,
            stream,
            ..Meu::new(
                meu.request_id,
                meu.function,
                Bytes::from(meu.input),
                meu.items as usize,
            )
        };
        let result = self.pipeline.execute_for_peer(local, permit).await;
        if let Err(e) = &result {
            crate::traces::failed(&trace, e);
        }
        match result {
            Ok(o) => PeerResponse::Executed(RemoteOutcome {
                output: o.output.to_vec(),
                cold_start: o.cold_start,
                timings: o.timings,
                node: o.node.to_string(),
                peer_us: arrived.elapsed().as_micros() as u64,
            }),
            Err(e) => PeerResponse::Error(e.to_api()),
        }
    }
}

/// Counts one background task for as long as it lives.
struct BackgroundTask(Arc<std::sync::atomic::AtomicUsize>);

impl BackgroundTask {
    fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Node-unique ids: the boot time in milliseconds, then a sequence number.
pub struct IdGen {
    prefix: u64,
    seq: AtomicU64,
}

impl IdGen {
    pub fn new() -> Self {
        Self {
            prefix: now_ms(),
            seq: AtomicU64::new(0),
        }
    }

    /// A request id: unique on this node, cheap, and not a secret (a caller may also choose
    /// its own with `x-tern-request-id`).
    pub fn next(&self) -> InvocationId {
        InvocationId::from_parts(self.prefix, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// An async invocation's id: 128 random bits from the OS, so that knowing one id says
    /// nothing about any other (the id is what reads the result back).
    pub fn unguessable(&self) -> Result<InvocationId, NodeError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| NodeError::Randomness(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        hex.parse()
            .map_err(|e: tern_wire::WireError| NodeError::Randomness(e.to_string()))
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    pub fn new(
        config: Config,
        store: Store,
        pipeline: Pipeline,
        auth: crate::auth::Auth,
        tenants: crate::tenants::Tenants,
        copies: crate::takeover::Copies,
        keys: crate::keyed::Keys,
    ) -> Arc<Self> {
        Arc::new(Self {
            copies,
            keys,
            auth,
            tenants,
            config,
            store,
            pipeline,
            ids: IdGen::new(),
            deploy_lock: tokio::sync::Mutex::new(()),
            background: Arc::default(),
            cluster: std::sync::OnceLock::new(),
            peers_up: std::sync::atomic::AtomicUsize::new(0),
            tenants_to_runtime: std::sync::Mutex::new(()),
            journal_room: std::sync::Mutex::new(()),
            result_expiry: std::sync::Mutex::default(),
            cluster_quotas: crate::cluster_quotas::ClusterQuotas::new(),
            janitor_wake: tokio::sync::Notify::new(),
            cells: std::sync::OnceLock::new(),
            cell_quotas: std::sync::OnceLock::new(),
        })
    }

    /// Async invocations still running.
    pub fn background_tasks(&self) -> usize {
        self.background.load(Ordering::Acquire)
    }

    pub fn services(&self) -> &Arc<Services> {
        self.pipeline.services()
    }

    /// Validates, precompiles, stores and installs a module under `name`. Returns once the
    /// deployment is durable and callable.
    pub async fn deploy(
        &self,
        name: FunctionName,
        bytes: Bytes,
        limits: FunctionLimits,
    ) -> Result<FunctionInfo, NodeError> {
        let FunctionLimits {
            timeout_ms,
            memory_mb,
            max_instances,
        } = limits;
        // Without one asked for, the node's default timeout, but never past what the
        // owning tenant may use.
        let timeout_ms = timeout_ms.unwrap_or_else(|| {
            let default = self.config.default_timeout_ms;
            self.tenants
                .get(&name.tenant())
                .map_or(default, |t| default.min(t.spec.quotas.max_timeout_ms))
        });
        let memory_mb = memory_mb.unwrap_or(self.config.default_memory_mb);
        if timeout_ms == 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(NodeError::BadRequest(format!(
                "timeout_ms must be in 1..={}",
                self.config.max_timeout_ms
            )));
        }
        if memory_mb == 0 || memory_mb > self.config.max_memory_mb {
            return Err(NodeError::BadRequest(format!(
                "memory_mb must be in 1..={}",
                self.config.max_memory_mb
            )));
        }
        if max_instances.is_some_and(|n| n == 0 || n > MAX_FUNCTION_INSTANCES) {
            return Err(NodeError::BadRequest(format!(
                "max_instances must be in 1..={MAX_FUNCTION_INSTANCES} (leave it out for no \
                 per-function cap)"
            )));
        }
        // A member that has not pulled the cluster registry yet does not know the version in
        // force: its deploy could be numbered below it and overwritten by anti-entropy after
        // it was acknowledged.
        if !self.pipeline.registry_synced() {
            return Err(NodeError::NotSynced);
        }
        // Checked before compiling (no work for a refusal) and again under the lock.
        let asked = |module_bytes: u64| tern_tenancy::Deploy {
            module_bytes,
            timeout_ms,
            memory_bytes: u64::from(memory_mb) << 20,
            replaces_module_bytes: None,
        };
        self.check_function_room(&name, asked(bytes.len() as u64))?;
        let runtime = &self.services().runtime;
        let prepared = runtime.prepare(bytes.clone()).await?;
        let _guard = self.deploy_lock.lock().await;
        self.check_function_room(&name, asked(prepared.size_bytes))?;
        let version = self
            .store
            .function(&name)?
            .map(|r| r.info.version + 1)
            .unwrap_or(1);
        let info = FunctionInfo {
            name,
            hash: prepared.hash,
            version,
            timeout_ms,
            memory_mb,
            size_bytes: prepared.size_bytes,
            deployed_at_ms: crate::clock::wall_ms(),
            max_instances,
        };
        let entry = RegistryEntry {
            info: info.clone(),
            removed: false,
            origin: self.config.node_name.clone(),
        };
        self.store.put_module(&info.hash, &bytes)?;
        self.store.put_function(&entry)?;
        self.store.flush().await?;
        runtime.install(info.clone(), prepared);
        self.services()
            .metrics
            .deploys
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(function = %info.name, version, hash = %info.hash, "deployed");
        self.announce(entry);
        Ok(info)
    }

    /// Removes `name`. The removal is a tombstone one version above the deployment, so it
    /// replicates like a deploy and a node that was away cannot bring the function back.
    pub async fn remove(&self, name: &FunctionName) -> Result<FunctionInfo, NodeError> {
        let _guard = self.deploy_lock.lock().await;
        let synced = self.pipeline.registry_synced();
        let Some(record) = self.store.function(name)?.filter(|e| !e.removed) else {
            // Unsynced, "not deployed" could be wrong, and the removal would be lost.
            return Err(Pipeline::missing_function(name.clone(), synced).into());
        };
        let mut tombstone = record.clone();
        tombstone.removed = true;
        tombstone.info.version += 1;
        tombstone.info.deployed_at_ms = crate::clock::wall_ms();
        tombstone.origin = self.config.node_name.clone();
        self.store.put_function(&tombstone)?;
        self.store.flush().await?;
        self.services().runtime.remove(name);
        self.announce(tombstone);
        Ok(record.info)
    }

    fn announce(&self, entry: RegistryEntry) {
        if let Some(cluster) = self.cluster.get() {
            cluster.announce(vec![entry]);
        }
    }

    /// Every registry entry, tombstones included (for peers' anti-entropy).
    pub fn registry(&self) -> Result<Vec<RegistryEntry>, NodeError> {
        Ok(self.store.functions()?)
    }

    /// Applies a registry entry learnt from `from` if it is newer than ours (last writer wins,
    /// see [`RegistryEntry::supersedes`]). A deployment's module is fetched by hash from the
    /// peer if this node lacks it, checked against its hash, and compiled for this node before
    /// the function is installed (so a function is "ready" here only once it is callable).
    /// Returns whether anything changed.
    pub async fn apply_entry(
        &self,
        entry: RegistryEntry,
        from: &tern_cluster::NodeName,
    ) -> Result<bool, NodeError> {
        let current = self.store.function(&entry.info.name)?;
        if !entry.supersedes(current.as_ref()) {
            // A concurrent apply of this entry (a pull from another peer) stores it before it
            // installs it, both under the deploy lock: wait for that to finish, so that when a
            // registry pull has been applied its functions are served, not only stored.
            drop(self.deploy_lock.lock().await);
            return Ok(false);
        }
        let runtime = &self.services().runtime;
        let prepared = if entry.removed {
            None
        } else {
            let hash = entry.info.hash;
            let bytes = match self.store.module(&hash)? {
                Some(b) => Bytes::from(b),
                None => {
                    let cluster = self
                        .cluster
                        .get()
                        .ok_or_else(|| NodeError::Replication("not a cluster member".to_owned()))?;
                    cluster.fetch_module(from, &hash).await?
                }
            };
            let prepared = runtime.prepare(bytes.clone()).await?;
            if prepared.hash != hash {
                return Err(NodeError::Replication(format!(
                    "module from {from} hashes to {}, not {hash}",
                    prepared.hash
                )));
            }
            Some((prepared, bytes))
        };
        let _guard = self.deploy_lock.lock().await;
        // A newer entry may have been applied while this one compiled.
        if !entry.supersedes(self.store.function(&entry.info.name)?.as_ref()) {
            return Ok(false);
        }
        // The module is stored under the lock with its entry, so garbage collection (which
        // takes the lock) never sees one without the other.
        let prepared = match prepared {
            Some((prepared, bytes)) => {
                self.store.put_module(&entry.info.hash, &bytes)?;
                Some(prepared)
            }
            None => None,
        };
        self.store.put_function(&entry)?;
        self.store.flush().await?;
        match prepared {
            Some(prepared) => {
                runtime.install(entry.info.clone(), prepared);
                if self.tenants.is_removed(&entry.info.name.tenant()) {
                    self.janitor_wake.notify_one();
                }
            }
            None => {
                runtime.remove(&entry.info.name);
            }
        }
        self.services()
            .metrics
            .replicated
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            function = %entry.info.name,
            version = entry.info.version,
            removed = entry.removed,
            origin = %entry.origin,
            %from,
            "applied a replicated registry entry"
        );
        Ok(true)
    }

    /// Loads every stored function (from its artifact; recompiling only if the artifact is
    /// missing, stale or damaged) so the first request after a restart is warm. A function that
    /// cannot be loaded is reported and left out; the node still starts.
    pub async fn preheat(&self) -> Result<usize, NodeError> {
        let mut loaded = 0;
        for record in self.store.functions()? {
            if record.removed {
                continue;
            }
            let info = record.info;
            let Some(bytes) = self.store.module(&info.hash)? else {
                tracing::error!(function = %info.name, hash = %info.hash, "module bytes missing from the store; function not loaded");
                continue;
            };
            match self.services().runtime.prepare(Bytes::from(bytes)).await {
                Ok(prepared) => {
                    self.services().runtime.install(info, prepared);
                    loaded += 1;
                }
                Err(e) => {
                    tracing::error!(function = %info.name, error = %e, "cannot load function")
                }
            }
        }
        Ok(loaded)
    }

    /// Accepts an asynchronous invocation: journaled durably before the id is returned, then run
    /// in the background. It holds its admission place until it finishes.
    pub async fn accept_async(
        self: &Arc<Self>,
        function: FunctionName,
        input: Bytes,
        map: bool,
        trace: Option<TraceParent>,
    ) -> Result<InvocationId, NodeError> {
        let permit = self.pipeline.admit()?;
        self.accept_async_admitted(function, input, map, permit, trace)
            .await
    }

    /// The async invocation a peer accepted under idempotency key `scope` (scoped to its
    /// function) whose copy came to this node, while the key lives (`result_ttl_secs`).
    pub fn kept_under_key(&self, scope: &str) -> Result<Option<AcceptedKey>, NodeError> {
        let ttl_ms = self.config.result_ttl_secs.saturating_mul(1000);
        Ok(self.copies.keyed(scope, now_ms(), ttl_ms)?)
    }

    /// [`App::accept_async`] of a call under idempotency key `scope` (scoped to its
    /// function): the key goes with the copy to the keeper.
    pub async fn accept_async_keyed(
        self: &Arc<Self>,
        function: FunctionName,
        input: Bytes,
        map: bool,
        trace: Option<TraceParent>,
        scope: &str,
    ) -> Result<InvocationId, NodeError> {
        let permit = self.pipeline.admit()?;
        self.accept(function, input, map, permit, trace, Some(scope))
            .await
    }

    /// [`App::accept_async`] for a caller that already holds an admission permit (the HTTP
    /// front door admits before it reads the body).
    pub async fn accept_async_admitted(
        self: &Arc<Self>,
        function: FunctionName,
        input: Bytes,
        map: bool,
        permit: Permit,
        trace: Option<TraceParent>,
    ) -> Result<InvocationId, NodeError> {
        self.accept(function, input, map, permit, trace, None).await
    }

    async fn accept(
        self: &Arc<Self>,
        function: FunctionName,
        input: Bytes,
        map: bool,
        permit: Permit,
        trace: Option<TraceParent>,
        scope: Option<&str>,
    ) -> Result<InvocationId, NodeError> {
        let synced = self.pipeline.registry_synced();
        if self.services().runtime.get(&function).is_none() {
            return Err(self.pipeline.unknown_function(function, synced).into());
        }
        let record = {
            let _room = tern_sync::poison::lock(&self.journal_room);
            self.check_journal_room(&function, input.len())?;
            let record = InvocationRecord {
                id: self.ids.unguessable()?,
                function,
                map,
                status: InvocationStatus::Pending,
                input: input.to_vec(),
                output: None,
                error: None,
                accepted_at_ms: now_ms(),
                finished_at_ms: None,
                attempts: 0,
            };
            self.store.put_invocation(&record)?;
            record
        };
        if let Err(e) = self.store.flush().await {
            // Refused: taken back, so it does not run at the next start after the caller was
            // told otherwise (best effort: a timed-out flush may still land, and then the
            // record replays, at least once).
            let _ = self.store.remove_invocation(&record.id);
            return Err(e.into());
        }
        let id = record.id.clone();
        self.replicate(&record, scope).await;
        self.spawn_async(record, permit, trace);
        Ok(id)
    }

    /// Sends a copy of an async invocation just accepted to this node's keeper, so a live
    /// node can run it if this one dies first (see [`crate::takeover`]). Without a keeper up,
    /// or when the keeper refuses or does not answer, the invocation waits for this node as
    /// before; said in the log.
    async fn replicate(&self, record: &InvocationRecord, scope: Option<&str>) {
        let Some(link) = self.cluster.get() else {
            return;
        };
        if self.config.async_takeover_secs == 0 {
            return;
        }
        let uncopied = &self.services().metrics.async_uncopied;
        let Some(keeper) = link.keeper() else {
            // No peer up: nothing to copy to.
            uncopied.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let copy = tern_wire::peer::AsyncCopy {
            record: record.clone(),
            key: scope.map(str::to_owned),
        };
        if let Err(e) = link.replicate(&keeper, copy).await {
            uncopied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(id = %record.id, %keeper, error = %e, "no copy of an async invocation: it waits for this node if it dies");
        }
    }

    /// Runs the copies of async work whose origin has been away for `async_takeover_secs`
    /// here, as this node's own (see [`crate::takeover`]); how many.
    pub async fn take_over(self: &Arc<Self>) -> Result<usize, NodeError> {
        let after = Duration::from_secs(self.config.async_takeover_secs);
        let Some(link) = self.cluster.get() else {
            return Ok(0);
        };
        // The copies are read only while some peer has been away long enough.
        if after.is_zero() || self.copies.is_empty() || !link.any_away_for(after) {
            return Ok(0);
        }
        let away = |origin: &str| {
            origin
                .parse::<tern_cluster::NodeName>()
                .ok()
                .and_then(|name| link.away_for(&name))
        };
        let due = self.copies.due(away, after)?;
        let mut taken = 0;
        for (origin, record) in due {
            let id = record.id.clone();
            // Its origin may be back by now (this loop waits for admission): then it is the
            // origin's to run.
            if !crate::takeover::due(away(&origin), after) {
                continue;
            }
            // Taken over already (a release that did not arrive), or accepted here: run once.
            if self.store.invocation(&id)?.is_none() {
                let record = crate::takeover::taken_over(record);
                self.store.put_invocation(&record)?;
                if let Err(e) = self.store.flush().await {
                    // Not durable: taken back, and the copy stays for the next try.
                    let _ = self.store.remove_invocation(&id);
                    return Err(e.into());
                }
                let permit = self.admitted().await;
                tracing::info!(%id, function = %record.function, attempts = record.attempts, "took over async work of a node that has been away");
                self.services()
                    .metrics
                    .async_taken_over
                    .fetch_add(1, Ordering::Relaxed);
                self.spawn_async(record, permit, None);
                taken += 1;
            }
            self.copies.release(std::slice::from_ref(&id))?;
        }
        Ok(taken)
    }

    /// An admission permit for journaled work (a replay, a takeover), waiting for a place as
    /// long as it takes: that work was accepted already and must not be refused now.
    async fn admitted(&self) -> Permit {
        loop {
            match self.pipeline.admit() {
                Ok(p) => break p,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Runs an accepted async invocation in the background; `trace` is the span of the
    /// request that accepted it, when that was traced (none for a replay after a restart).
    fn spawn_async(
        self: &Arc<Self>,
        record: InvocationRecord,
        permit: Permit,
        trace: Option<TraceParent>,
    ) {
        let task = BackgroundTask::new(&self.background);
        let app = self.clone();
        let span = crate::traces::async_run(trace.as_ref(), &record.function, record.id.as_str());
        tokio::spawn(async move {
            app.run_async(record, permit, span).await;
            drop(task);
        });
    }

    async fn run_async(
        self: Arc<Self>,
        mut record: InvocationRecord,
        permit: Permit,
        trace: tracing::Span,
    ) {
        // Durable before the guest runs: were the node to die during the run, the replay
        // after its restart counts as the next attempt, so a duplicate is never under-counted.
        record.attempts += 1;
        let recorded = match self.store.put_invocation(&record) {
            Ok(()) => self.store.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            // Run now, and a duplicate after a restart would go uncounted. The record stays
            // pending in the journal: the replay at the node's next start runs it (a store that
            // cannot write makes the node restart once its disk takes writes again).
            tracing::warn!(
                id = %record.id,
                error = %e,
                "cannot record the attempt: left pending for the replay at the next start"
            );
            return;
        }
        let inv = Invocation {
            request_id: record.id.as_str().into(),
            function: record.function.clone(),
            input: Bytes::from(std::mem::take(&mut record.input)),
            map: record.map,
            trace: trace.clone(),
            stream: tern_runtime::AnswerStream::default(),
        };
        let input = inv.input.clone();
        let result = self.pipeline.invoke_admitted(inv, permit).await;
        crate::traces::outcome(&trace, &result);
        record.finished_at_ms = Some(now_ms());
        let room = tern_sync::poison::lock(&self.journal_room);
        match result {
            // The output takes the input's place in the record; one that would take the
            // tenant past its stored-result bytes is not kept, and the record says why.
            Ok(outcome) => match self.check_tenant_results(
                &record.function,
                outcome.output.len() as u64,
                Some(input.len() as u64),
            ) {
                Ok(()) => {
                    record.status = InvocationStatus::Succeeded;
                    record.output = Some(outcome.output.to_vec());
                }
                Err(e) => {
                    record.status = InvocationStatus::Failed;
                    record.error = Some(e.to_api());
                }
            },
            Err(e) => {
                record.status = InvocationStatus::Failed;
                record.error = Some(e.to_api());
            }
        }
        if let Err(e) = self.store.put_invocation(&record) {
            // Keep the input so the journal still holds a replayable record.
            record.input = input.to_vec();
            tracing::error!(id = %record.id, error = %e, "cannot record the result");
            return;
        }
        drop(room);
        // Finished here: the keeper keeps the result's copy and no one runs it again. (The
        // result is not flushed first, to spare a disk sync per invocation: a crash before it
        // reaches the disk replays the invocation here, counted, while the keeper may already
        // show the first run's result — both are runs of an at-least-once invocation.)
        if let Some(link) = self.cluster.get()
            && self.config.async_takeover_secs > 0
        {
            link.settle(record);
        }
    }

    /// Refuses a deploy of a name not deployed yet when `max_functions` are, a deploy for a
    /// tenant that does not exist, and one over its tenant's quotas (functions, module
    /// bytes, timeout, memory).
    fn check_function_room(
        &self,
        name: &FunctionName,
        mut asked: tern_tenancy::Deploy,
    ) -> Result<(), NodeError> {
        let runtime = &self.services().runtime;
        let existing = runtime.get(name);
        let max = self.config.max_functions;
        if existing.is_none() && runtime.function_count() >= max {
            return Err(NodeError::TooManyFunctions { max });
        }
        let owner = name.tenant();
        let tenant = self
            .tenants
            .get(&owner)
            .ok_or_else(|| crate::tenants::no_such_tenant(&owner))?;
        asked.replaces_module_bytes = existing.map(|d| d.info.size_bytes);
        let usage = self.tenant_usage(&owner);
        let quotas = &tenant.spec.quotas;
        quotas.check_deploy(&usage, &asked).map_err(|e| match e {
            tern_tenancy::Error::QuotaExceeded { which, .. } => NodeError::TenantQuota {
                tenant: owner,
                which,
                detail: crate::tenants::quota_limit(quotas, which),
            },
            other => NodeError::Tenancy(other),
        })
    }

    /// What `tenant`'s deployed functions take (counted from the functions installed here,
    /// which every member has).
    pub fn tenant_usage(&self, tenant: &tern_tenancy::TenantName) -> tern_tenancy::Usage {
        self.services().runtime.tenant_usage(tenant)
    }

    /// Removes a tenant that owns no function, and revokes its tokens; both are announced
    /// to peers.
    pub async fn remove_tenant(
        &self,
        name: &tern_tenancy::TenantName,
    ) -> Result<tern_tenancy::TenantEntry, NodeError> {
        // Under the deploy lock, so no deploy for it lands between the check and removal.
        let _guard = self.deploy_lock.lock().await;
        let owned = self.tenant_usage(name).functions;
        if owned > 0 {
            return Err(NodeError::Conflict(format!(
                "tenant {name} still owns {owned} function(s); remove them first"
            )));
        }
        let tombstone = self.tenants.remove(name, crate::clock::wall_ms())?;
        let tokens = self.auth.revoke_tenant(name)?;
        self.tenancy_changed_here(TenancyRecords {
            tenants: vec![tombstone.clone()],
            tokens,
        });
        Ok(tombstone)
    }

    /// Members up, this node included.
    fn members_up(&self) -> u32 {
        u32::try_from(self.peers_up.load(Ordering::Relaxed))
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Gives the runtime the weights and limits of changed tenants, so instance slots are
    /// shared by them (a removed tenant's waiting units are refused). A tenant's
    /// `max_concurrent` and request rate hold for the cluster: this node enforces its parts
    /// ([`crate::cluster_quotas`]).
    pub(crate) fn tenants_changed(&self, entries: &[tern_tenancy::TenantEntry]) {
        let runtime = &self.services().runtime;
        let _one_at_a_time = tern_sync::poison::lock(&self.tenants_to_runtime);
        let members_up = self.members_up();
        for entry in entries {
            if entry.is_live() {
                let spec = &entry.tenant.spec;
                let parts = self.cluster_quotas.set(
                    entry.name().clone(),
                    spec.quotas.cluster(),
                    members_up,
                );
                let mut lane = tern_tenancy::LaneConfig::from(spec);
                lane.max_concurrent = parts.max_concurrent;
                runtime.set_tenant(entry.name().clone(), lane);
                if let Some(cells) = self.cells.get() {
                    let limits = cell_limits(spec, runtime.config());
                    let (cells, tenant) = (cells.clone(), entry.name().clone());
                    spawn_if_in_runtime(async move {
                        if let Err(e) = cells.set_limits(&tenant, limits).await {
                            tracing::warn!(%tenant, error = %e, "cannot set a cell's limits");
                        }
                    });
                }
            } else {
                runtime.remove_tenant(entry.name());
                if let Some(cells) = self.cells.get() {
                    let (cells, tenant) = (cells.clone(), entry.name().clone());
                    spawn_if_in_runtime(async move { cells.stop(&tenant).await });
                }
                self.cluster_quotas.remove(entry.name());
                self.services().metrics.retire_tenant(entry.name().as_str());
                // Functions of it that this node has (deployed elsewhere before the removal
                // was known there) go with it.
                self.janitor_wake.notify_one();
            }
        }
    }

    /// Removes every function whose tenant was removed, as a removal made here (a
    /// tombstone, announced): a tenant is removed only when it owns no function on the
    /// node that removes it, but a deploy on another member that had not yet learnt of the
    /// removal, or an entry still in flight, can leave one behind. Every member that finds
    /// one removes it, and their tombstones agree by the registry's last-writer-wins rule.
    /// A function whose tenant is merely unknown here (its record still replicating) stays.
    /// How many were removed.
    pub async fn remove_functions_of_removed_tenants(&self) -> Result<usize, NodeError> {
        let orphans: Vec<FunctionName> = self
            .store
            .functions()?
            .into_iter()
            .filter(|e| !e.removed && self.tenants.is_removed(&e.info.name.tenant()))
            .map(|e| e.info.name)
            .collect();
        let mut removed = 0;
        for name in orphans {
            match self.remove(&name).await {
                Ok(_) => {
                    removed += 1;
                    tracing::info!(function = %name, "removed a function whose tenant was removed");
                }
                // Removed meanwhile by an entry from a peer.
                Err(e) if e.to_api().code == tern_wire::ErrorCode::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// After tenants or tokens changed on this node (an API call): the runtime takes the
    /// tenants' new weights and limits, and the records go to the cluster if there is one.
    pub fn tenancy_changed_here(&self, records: TenancyRecords) {
        self.tenants_changed(&records.tenants);
        if let Some(cluster) = self.cluster.get() {
            cluster.announce_tenancy(records);
        }
    }

    /// Charges one call of `function` to its tenant's request rate. Both front doors call
    /// this before they read the call's body; a refusal counts on the tenant's metrics.
    pub fn admit_rate(&self, function: &FunctionName) -> Result<(), NodeError> {
        let tenant = function.tenant();
        self.cluster_quotas.admit(&tenant).inspect_err(|e| {
            self.services()
                .metrics
                .tenant(tenant.as_str())
                .record_error(e.to_api().code);
        })
    }

    /// Copies the store's sizes, quarantine and write-failure counts into the metrics (before
    /// a scrape).
    pub fn publish_store_gauges(&self) {
        let m = &self.services().metrics;
        let usage = self.store.results();
        m.stored_results.store(
            i64::try_from(usage.count).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        m.stored_result_bytes.store(
            i64::try_from(usage.bytes).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        m.store_quarantined
            .store(self.store.quarantined(), Ordering::Relaxed);
        m.store_write_failures
            .store(self.store.write_failures(), Ordering::Relaxed);
    }

    /// Refuses a new asynchronous invocation of `function` whose `input_len` bytes would take
    /// the journal past `max_stored_results` or `max_stored_result_mb`, or the function's
    /// tenant past its stored-result quotas.
    fn check_journal_room(
        &self,
        function: &FunctionName,
        input_len: usize,
    ) -> Result<(), NodeError> {
        self.check_tenant_results(function, input_len as u64, None)
            .inspect_err(|e| {
                self.services()
                    .metrics
                    .tenant(function.tenant().as_str())
                    .record_error(e.to_api().code);
            })?;
        let usage = self.store.results();
        let (max_count, max_mib) = (
            self.config.max_stored_results,
            self.config.max_stored_result_mb,
        );
        let bytes_after = usage.bytes.saturating_add(input_len as u64);
        if usage.count >= max_count || bytes_after > max_mib.saturating_mul(1 << 20) {
            self.services()
                .metrics
                .journal_full_refusals
                .fetch_add(1, Ordering::Relaxed);
            return Err(NodeError::JournalFull {
                count: usage.count,
                mib: usage.bytes >> 20,
                max_count,
                max_mib,
            });
        }
        Ok(())
    }

    /// Refuses a stored result of `bytes` for `function`'s tenant that would take it past its
    /// quotas: a new record, or one `replacing` a record of that many bytes (a result
    /// written over its pending record). Counted on this node's journal: an asynchronous
    /// result is stored by the node that accepted it.
    fn check_tenant_results(
        &self,
        function: &FunctionName,
        bytes: u64,
        replacing: Option<u64>,
    ) -> Result<(), NodeError> {
        let owner = function.tenant();
        let Some(tenant) = self.tenants.get(&owner) else {
            // Removed meanwhile; the invocation is refused elsewhere.
            return Ok(());
        };
        let stored = self.store.results_of(&owner);
        let (count, bytes_now) = match replacing {
            Some(old) => (
                stored.count.saturating_sub(1),
                stored.bytes.saturating_sub(old),
            ),
            None => (stored.count, stored.bytes),
        };
        let usage = tern_tenancy::Usage {
            stored_results: u32::try_from(count).unwrap_or(u32::MAX),
            stored_result_bytes: bytes_now,
            ..Default::default()
        };
        let quotas = &tenant.spec.quotas;
        quotas
            .check_store_result(&usage, bytes)
            .map_err(|e| match e {
                // A result too large for what the tenant may store: waiting does not help
                // the result already computed.
                tern_tenancy::Error::QuotaExceeded { which, .. } if replacing.is_some() => {
                    NodeError::TenantQuota {
                        tenant: owner,
                        which,
                        detail: crate::tenants::quota_limit(quotas, which),
                    }
                }
                // One that could never fit, however many results expire.
                tern_tenancy::Error::QuotaExceeded { which, .. }
                    if quotas.max_stored_results == 0 || bytes > quotas.max_stored_result_bytes =>
                {
                    NodeError::TenantQuota {
                        tenant: owner,
                        which,
                        detail: crate::tenants::quota_limit(quotas, which),
                    }
                }
                tern_tenancy::Error::QuotaExceeded { which, .. } => NodeError::ResultQuota {
                    retry_after_ms: self.result_retry_after_ms(&owner),
                    tenant: owner,
                    which,
                    detail: crate::tenants::quota_limit(quotas, which),
                },
                other => NodeError::Tenancy(other),
            })
    }

    /// Re-runs invocations that were accepted but not finished when the node last stopped
    /// (at-least-once: one may have run before the crash). The journal is read one record at
    /// a time; each replay waits for an admission permit, so what is held in memory is
    /// bounded by the admission queue, not by the journal.
    pub async fn replay_journal(self: &Arc<Self>) -> Result<usize, NodeError> {
        let mut replayed = 0;
        for record in self.store.invocations() {
            let record = record?;
            if record.status != InvocationStatus::Pending {
                continue;
            }
            let permit = self.admitted().await;
            if self.services().runtime.get(&record.function).is_none() {
                let mut record = record;
                record.status = InvocationStatus::Failed;
                record.finished_at_ms = Some(now_ms());
                record.input.clear();
                record.error = Some(ApiError::new(
                    tern_wire::ErrorCode::NotFound,
                    format!("function {} is no longer deployed", record.function),
                ));
                self.store.put_invocation(&record)?;
                continue;
            }
            self.spawn_async(record, permit, None);
            replayed += 1;
        }
        Ok(replayed)
    }

    /// Whether `record` finished longer than the retention period ago (on the node's clock):
    /// it is gone for callers at once, and the next sweep deletes it.
    pub fn result_expired(&self, record: &InvocationRecord) -> bool {
        let ttl_ms = self.config.result_ttl_secs.saturating_mul(1000);
        record
            .finished_at_ms
            .is_some_and(|t| t < now_ms().saturating_sub(ttl_ms))
    }

    /// Deletes finished async results older than the retention period, reading the journal
    /// one record at a time.
    pub fn expire_results(&self) -> Result<usize, NodeError> {
        let ttl_ms = self.config.result_ttl_secs.saturating_mul(1000);
        let dropped = self.copies.expire(now_ms(), ttl_ms)?;
        if dropped > 0 {
            tracing::info!(
                copies = dropped,
                "dropped expired copies of peers' async work"
            );
        }
        let mut removed = 0;
        let mut expiry: HashMap<tern_tenancy::TenantName, u64> = HashMap::new();
        for record in self.store.invocations() {
            let record = record?;
            match record.finished_at_ms {
                Some(_) if self.result_expired(&record) => {
                    self.store.remove_invocation(&record.id)?;
                    removed += 1;
                }
                Some(t) => {
                    let at = t.saturating_add(ttl_ms);
                    expiry
                        .entry(record.function.tenant())
                        .and_modify(|e| *e = (*e).min(at))
                        .or_insert(at);
                }
                None => {}
            }
        }
        *tern_sync::poison::lock(&self.result_expiry) = expiry;
        Ok(removed)
    }

    /// How long until a call of `tenant` refused by its stored-result quotas may fit: until
    /// its oldest finished result expires (as the last sweep found) plus one sweep interval,
    /// since results are removed by the sweep; with no finished result known, a whole
    /// retention period plus one interval.
    fn result_retry_after_ms(&self, tenant: &tern_tenancy::TenantName) -> u64 {
        let ttl_ms = self.config.result_ttl_secs.saturating_mul(1000);
        let sweep_ms = EXPIRY_SWEEP_INTERVAL.as_millis() as u64;
        let until = match tern_sync::poison::lock(&self.result_expiry).get(tenant) {
            Some(at) => at.saturating_sub(now_ms()),
            None => ttl_ms,
        };
        until.saturating_add(sweep_ms).max(1000)
    }

    /// Deletes what no function needs any more: stored modules that no live registry entry
    /// names (older versions, removed functions, modules a newer entry superseded while they
    /// were fetched), and this node's compiled artifacts of those modules and of modules that
    /// never became functions (rejected after compiling, or compiled past the time bound).
    /// Runs under the deploy lock, so no deploy or replicated entry is between storing its
    /// module and its entry; artifacts younger than `artifact_grace` are kept, since a
    /// compile still under way writes its artifact before its function exists (the janitor
    /// passes [`ARTIFACT_GRACE`]).
    pub async fn collect_garbage(&self, artifact_grace: Duration) -> Result<Garbage, NodeError> {
        let _guard = self.deploy_lock.lock().await;
        let mut live = HashSet::new();
        for entry in self.store.functions()? {
            if !entry.removed {
                live.insert(entry.info.hash);
            }
        }
        let mut garbage = Garbage::default();
        let stale: Vec<ModuleHash> = self
            .store
            .module_hashes()
            .filter(|h| h.as_ref().map_or(true, |h| !live.contains(h)))
            .collect::<Result<_, _>>()?;
        for hash in stale {
            if self.store.remove_module(&hash)? {
                garbage.modules += 1;
            }
        }
        garbage.artifacts = self
            .services()
            .runtime
            .remove_artifacts_except(&live, artifact_grace)?;
        let m = &self.services().metrics;
        m.gc_modules_removed
            .fetch_add(garbage.modules, Ordering::Relaxed);
        m.gc_artifacts_removed
            .fetch_add(garbage.artifacts, Ordering::Relaxed);
        if garbage != Garbage::default() {
            tracing::info!(
                modules = garbage.modules,
                artifacts = garbage.artifacts,
                "removed modules and artifacts no function uses"
            );
        }
        Ok(garbage)
    }
}

/// Runs a registry change in a task of its own and waits for it: a caller that goes away
/// drops this future, not the change, which could otherwise stop between storing an entry
/// and installing it.
pub(crate) async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, NodeError>> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::spawn(change)
        .await
        .map_err(|e| NodeError::ChangeFailed(e.to_string()))?
}

/// Artifacts this recent are never collected: a compile under way (up to
/// `compile_timeout_ms`, whose thread may finish after the caller gave up) writes its
/// artifact before any function names it.
pub const ARTIFACT_GRACE: Duration = Duration::from_secs(30 * 60);

/// What one [`App::collect_garbage`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Garbage {
    pub modules: u64,
    pub artifacts: u64,
}

/// Memory a cell needs beyond its guests' (its runtime, thread stacks, page tables).
pub const CELL_OVERHEAD_BYTES: u64 = 256 << 20;
/// Tasks (processes and threads) one cell may have: its runtime needs about 15.
const CELL_MAX_TASKS: u64 = 128;

/// A tenant's cell limits from its record: CPU weight in proportion to its weight (1 ↔ the
/// cgroup default of 100), memory what its guests may hold on this node plus the cell's own.
fn cell_limits(
    spec: &tern_tenancy::TenantSpec,
    runtime: &tern_runtime::RuntimeConfig,
) -> tern_cell::CellLimits {
    let budget = runtime.memory_budget_mb.saturating_mul(1 << 20);
    let guests = match spec.quotas.memory_budget_bytes {
        u64::MAX => budget,
        quota => quota.min(runtime.tenant_memory_cap_bytes()),
    };
    tern_cell::CellLimits {
        cpu_weight: spec.weight.get().saturating_mul(100).clamp(1, 10_000),
        cpu_max: None,
        memory_max: Some(guests.saturating_add(CELL_OVERHEAD_BYTES)),
        memory_high: None,
        pids_max: Some(CELL_MAX_TASKS),
    }
}

/// Runs `task` on the current tokio runtime, if there is one (there always is in a running
/// node; unit tests may call without).
fn spawn_if_in_runtime(task: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(task);
    }
}
