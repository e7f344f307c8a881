//! Durable state in sled: deployed functions, module bytes by hash, and the journal of accepted
//! asynchronous invocations. Values are `tern-wire` bincode with byte limits, so a corrupted
//! store yields typed errors, never a panic.
//!
//! What the store promises about size and damage:
//! - the journal is read one record at a time (expiry and replay stream; nothing loads every
//!   record at once);
//! - it knows how many invocation records it holds and their bytes ([`Store::results`]), in
//!   all and per tenant ([`Store::results_of`]), kept exact on every write and counted once at
//!   open, so callers can refuse work before the journal outgrows its caps or a tenant its
//!   quota;
//! - a record that does not decode is moved, bytes intact, to the `quarantine` tree and
//!   reported (log and [`Store::quarantined`]); the node keeps serving everything else. The
//!   quarantine only ever receives bytes that were already in the store, so it cannot grow the
//!   store;
//! - a write that cannot reach the disk (full, failing) is a typed error and counted
//!   ([`Store::write_failures`]). sled keeps the first such error and refuses every later write
//!   until the store is opened again, which the node does by restarting once its data
//!   directory takes writes again (`node::watch_store`; what it acknowledged is on disk and
//!   replays then).
//! - a store that lost writes it acknowledged (a damaged log, which sled cuts short at the
//!   damage without an error) does not open: [`StoreError::LostWrites`], found by the
//!   [`crate::watermark`] every flush advances.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tern_tenancy::TenantName;
use tern_wire::peer::RegistryEntry;
use tern_wire::{FunctionName, InvocationId, InvocationRecord, ModuleHash};

use crate::watermark::Watermark;

/// Largest record we ever decode from the store (a journaled input is at most the body cap).
const RECORD_LIMIT: usize = tern_wire::codec::MAX_MESSAGE;

/// The tree of registry entries in their current layout.
const FUNCTIONS: &str = "functions.2";

/// Registry entries as nodes before per-function `max_instances` stored them (tree
/// `functions`). Read once at open, rewritten in the current layout with no `max_instances`
/// (what they had) and removed. A separate tree, so no record is ever decoded in the wrong
/// layout.
mod legacy {
    use serde::{Deserialize, Serialize};
    use tern_wire::peer::RegistryEntry;
    use tern_wire::{FunctionInfo, FunctionName, ModuleHash};

    pub const TREE: &str = "functions";

    #[derive(Serialize, Deserialize)]
    pub struct Entry {
        pub info: Info,
        pub removed: bool,
        pub origin: String,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Info {
        pub name: FunctionName,
        pub hash: ModuleHash,
        pub version: u64,
        pub timeout_ms: u32,
        pub memory_mb: u32,
        pub size_bytes: u64,
        pub deployed_at_ms: u64,
    }

    impl From<Entry> for RegistryEntry {
        fn from(e: Entry) -> Self {
            let i = e.info;
            RegistryEntry {
                info: FunctionInfo {
                    name: i.name,
                    hash: i.hash,
                    version: i.version,
                    timeout_ms: i.timeout_ms,
                    memory_mb: i.memory_mb,
                    size_bytes: i.size_bytes,
                    deployed_at_ms: i.deployed_at_ms,
                    max_instances: None,
                },
                removed: e.removed,
                origin: e.origin,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store I/O: {0}")]
    Sled(#[from] sled::Error),
    /// The record was moved to the quarantine tree; the store goes on without it.
    #[error("corrupt {what} record {key:?} in the store (quarantined): {detail}")]
    Corrupt {
        what: &'static str,
        key: String,
        detail: String,
    },
    #[error("cannot encode a {what} record: {detail}")]
    Encode { what: &'static str, detail: String },
    /// A flush did not finish in time: sled wedges (every later flush waits for ever) when a
    /// large record, written as a file of its own, fails to reach a full disk.
    #[error("the store did not finish writing within {} s", FLUSH_TIMEOUT.as_secs())]
    FlushTimedOut,
    /// The flush's thread ended without an answer (the runtime shutting down, or a panic in
    /// sled).
    #[error("the store's flush ended without an answer: {0}")]
    FlushAbandoned(String),
    /// Every flush place stayed taken for [`FLUSH_TIMEOUT`]: the store is busy (or the
    /// flushes holding the places are failing, which they report themselves).
    #[error(
        "the store is busy: {CONCURRENT_FLUSHES} flushes held every place for {} s",
        FLUSH_TIMEOUT.as_secs()
    )]
    FlushBusy,
    /// The store holds fewer flushed writes than it acknowledged (see [`crate::watermark`]):
    /// its log was damaged, and sled recovered only what came before the damage.
    #[error(
        "the store lost writes it had acknowledged (it holds flush {found}, {path} records \
         flush {acknowledged}): its log is damaged. Restore the data directory from a backup; \
         or, to start with what the store still holds (losing the rest), remove {path}"
    )]
    LostWrites {
        acknowledged: u64,
        found: u64,
        path: String,
    },
    /// The watermark file (or the store's number) is not one: damaged, or not ours.
    #[error(
        "the store's watermark {path} is damaged ({detail}); remove it to start with what the \
         store holds, unchecked"
    )]
    WatermarkDamaged { path: String, detail: String },
    #[error("cannot read or write the store's watermark {path}: {source}")]
    Watermark {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the store on disk is damaged: the node must not start on it as it is.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StoreError::LostWrites { .. }
                | StoreError::WatermarkDamaged { .. }
                | StoreError::Open {
                    source: sled::Error::Corruption { .. },
                    ..
                }
                | StoreError::Sled(sled::Error::Corruption { .. })
        )
    }
}

/// The longest a flush may take before the store counts as failing. Far above a healthy
/// flush (milliseconds); a store that takes this long is not taking writes.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many invocation records the journal holds, and their encoded bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResultUsage {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    results: AtomicU64,
    result_bytes: AtomicU64,
    quarantined: AtomicU64,
    write_failures: AtomicU64,
    /// The journal by owner. A tenant with nothing stored has no entry, so the map is bounded
    /// by the tenants that have results, not by every tenant that ever had one.
    by_tenant: Mutex<HashMap<TenantName, ResultUsage>>,
}

impl Counters {
    /// Adds a record of `tenant` (`records` is 1 for a new one, 0 for a rewrite) and its
    /// change in bytes.
    fn add(&self, tenant: TenantName, records: u64, bytes_added: u64, bytes_removed: u64) {
        self.results.fetch_add(records, Relaxed);
        self.result_bytes.fetch_add(bytes_added, Relaxed);
        self.result_bytes.fetch_sub(bytes_removed, Relaxed);
        let mut by_tenant = self.by_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let usage = by_tenant.entry(tenant).or_default();
        usage.count += records;
        usage.bytes = (usage.bytes + bytes_added).saturating_sub(bytes_removed);
    }

    /// Takes away a record of `encoded` bytes; its owner is read from its leading fields
    /// (when even those are damaged, only the totals change).
    fn remove(&self, encoded: &[u8]) {
        self.results.fetch_sub(1, Relaxed);
        self.result_bytes.fetch_sub(encoded.len() as u64, Relaxed);
        let Ok(function) = InvocationRecord::function_of(encoded) else {
            return;
        };
        let mut by_tenant = self.by_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let tenant = function.tenant();
        if let Some(usage) = by_tenant.get_mut(&tenant) {
            usage.count = usage.count.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(encoded.len() as u64);
            if usage.count == 0 {
                by_tenant.remove(&tenant);
            }
        }
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    functions: sled::Tree,
    modules: sled::Tree,
    invocations: sled::Tree,
    quarantine: sled::Tree,
    counters: Arc<Counters>,
    /// Places for flushes running at once (see [`Store::flush`]).
    flushes: Arc<tokio::sync::Semaphore>,
    watermark: Arc<Watermark>,
}

/// At most this many flushes wait on the disk at once, each on a thread of tokio's blocking
/// pool; later callers wait for a place (and then find their writes mostly flushed already:
/// a flush makes everything written before it durable, whoever wrote it).
const CONCURRENT_FLUSHES: usize = 8;

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("db");
        // sled drops its directory lock from a background thread after the last handle goes,
        // so an in-process restart (tests, embedders) may briefly find it still held.
        let mut attempts = 0;
        let db = loop {
            match sled::Config::new().path(&path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_contention(&e) && attempts < 200 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        let watermark = Watermark::open(&db, dir)?;
        let invocations = db.open_tree("invocations")?;
        let counters = Counters::default();
        // One pass over the journal, one record in memory at a time.
        for kv in invocations.iter() {
            let (_, v) = kv?;
            match InvocationRecord::function_of(&v) {
                Ok(function) => counters.add(function.tenant(), 1, v.len() as u64, 0),
                // Damaged: counted in the totals until a read quarantines it.
                Err(_) => {
                    counters.results.fetch_add(1, Relaxed);
                    counters.result_bytes.fetch_add(v.len() as u64, Relaxed);
                }
            }
        }
        let store = Self {
            functions: db.open_tree(FUNCTIONS)?,
            modules: db.open_tree("modules")?,
            quarantine: db.open_tree("quarantine")?,
            invocations,
            counters: Arc::new(counters),
            flushes: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FLUSHES)),
            watermark: Arc::new(watermark),
            db,
        };
        store.migrate_functions()?;
        Ok(store)
    }

    /// Whether this store was opened on what an earlier run of the node left.
    pub fn recovered(&self) -> bool {
        self.db.was_recovered()
    }

    /// Moves registry entries of the previous layout into the current tree: each is written
    /// in the new layout before its old copy goes, so a crash in between only means migrating
    /// it again. A damaged old record is quarantined like any other.
    fn migrate_functions(&self) -> Result<(), StoreError> {
        let legacy = self.db.open_tree(legacy::TREE)?;
        let mut moved = 0usize;
        for kv in legacy.iter() {
            let (key, bytes) = kv?;
            let Ok(old) = self.decode_or_quarantine::<legacy::Entry>(
                &legacy,
                "function (before max_instances)",
                &key,
                &bytes,
            ) else {
                continue;
            };
            // An entry already in the current tree was written later: it wins.
            if !self.functions.contains_key(&key)? {
                self.functions
                    .insert(&key, encode("function", &RegistryEntry::from(old))?)?;
            }
            legacy.remove(&key)?;
            moved += 1;
        }
        if moved > 0 {
            self.flush_blocking()?;
            tracing::info!(
                functions = moved,
                "registry entries moved to the current layout (no max_instances)"
            );
        }
        Ok(())
    }

    /// Opens (creating if needed) another tree of the same database, for state kept by other
    /// modules (e.g. the client API's idempotency keys).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Waits until everything written so far is on disk.
    ///
    /// sled's blocking flush on tokio's blocking pool, [`CONCURRENT_FLUSHES`] at most at once,
    /// and never sled's `flush_async`: that runs each flush on sled's own small thread pool,
    /// where flushes waiting for the log can take every thread while the log write they wait
    /// for queues behind them, and then no flush ever ends (sled 0.34's issue 1241; seen here
    /// as every async accept through the client API timing out under a few hundred calls a
    /// second, and the node restarting itself for a store that would not write).
    ///
    /// Waiting for a place is bounded by [`FLUSH_TIMEOUT`] too, and is not the disk's fault:
    /// past it the caller gets [`StoreError::FlushBusy`] (retryable, not counted as a failed
    /// write). A store that hangs is found by the flushes holding the places, each of which
    /// times out and counts.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_stamped(true).await
    }

    /// [`Store::flush`], advancing the watermark when `stamp` (every flush that
    /// acknowledges writes does; a health check does not need to write).
    async fn flush_stamped(&self, stamp: bool) -> Result<(), StoreError> {
        let place =
            match tokio::time::timeout(FLUSH_TIMEOUT, self.flushes.clone().acquire_owned()).await {
                Ok(Ok(place)) => Some(place),
                // The semaphore is never closed; were it, the flush would run without a place.
                Ok(Err(_)) => None,
                Err(_) => return Err(StoreError::FlushBusy),
            };
        let (db, watermark) = (self.db.clone(), self.watermark.clone());
        // The place goes with the blocking flush: one abandoned at the timeout still holds it
        // while it runs. The stamp is a sled write too: on the blocking thread, under the
        // time bound and counted with the flush (a store that refuses writes refuses it).
        let flush = tokio::task::spawn_blocking(move || {
            let _place = place;
            let seq = if stamp {
                Some(watermark.stamp()?)
            } else {
                None
            };
            db.flush()?;
            match seq {
                Some(seq) => watermark.seal(seq),
                None => Ok(()),
            }
        });
        let failed = match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => e,
            Ok(Err(e)) => StoreError::FlushAbandoned(e.to_string()),
            Err(_) => StoreError::FlushTimedOut,
        };
        self.counters.write_failures.fetch_add(1, Relaxed);
        Err(failed)
    }

    /// [`Store::flush`] on the calling thread, with no place taken and no time bound: at
    /// open, and for the rare token and tenant writes (which block their worker meanwhile).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let flushed = self.watermark.stamp().and_then(|seq| {
            self.db.flush()?;
            self.watermark.seal(seq)
        });
        if flushed.is_err() {
            self.counters.write_failures.fetch_add(1, Relaxed);
        }
        flushed
    }

    /// Whether the store still takes writes. sled keeps the first write error that reached
    /// it and refuses every write after it; a flush reports that error (and is cheap when
    /// nothing is waiting to be written), or never ends (see [`StoreError::FlushTimedOut`]).
    /// Counted in [`Store::write_failures`] when it finds the store failing.
    pub async fn takes_writes(&self) -> bool {
        // Unstamped: it acknowledges nothing, so an idle node's check writes nothing.
        matches!(
            self.flush_stamped(false).await,
            Ok(()) | Err(StoreError::FlushBusy)
        )
    }

    /// Flushes that failed or timed out: what their callers wrote did not reach the disk.
    pub fn write_failures(&self) -> u64 {
        self.counters.write_failures.load(Relaxed)
    }

    /// Whether a flush has failed since the store was opened: it may take no writes (and
    /// dropping the last handle may wait on a flush that never ends).
    pub fn failed(&self) -> bool {
        self.write_failures() > 0
    }

    pub fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<(), StoreError> {
        if !self.modules.contains_key(hash.0)? {
            self.modules.insert(hash.0, bytes)?;
        }
        Ok(())
    }

    pub fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.modules.get(hash.0)?.map(|v| v.to_vec()))
    }

    /// The hashes of every stored module (read lazily).
    pub fn module_hashes(&self) -> impl Iterator<Item = Result<ModuleHash, StoreError>> + '_ {
        self.modules.iter().keys().filter_map(|k| match k {
            Ok(k) => <[u8; 32]>::try_from(k.as_ref())
                .ok()
                .map(|h| Ok(ModuleHash(h))),
            Err(e) => Some(Err(e.into())),
        })
    }

    /// Deletes a module's bytes; returns whether it was there.
    pub fn remove_module(&self, hash: &ModuleHash) -> Result<bool, StoreError> {
        Ok(self.modules.remove(hash.0)?.is_some())
    }

    /// Writes a function's registry entry (a deployment or a removal tombstone).
    pub fn put_function(&self, entry: &RegistryEntry) -> Result<(), StoreError> {
        let bytes = encode("function", entry)?;
        self.functions
            .insert(entry.info.name.as_str().as_bytes(), bytes)?;
        Ok(())
    }

    /// The registry entry of `name`, tombstones included. A corrupt entry is quarantined and
    /// reported as [`StoreError::Corrupt`]; asked again, the name is unknown.
    pub fn function(&self, name: &FunctionName) -> Result<Option<RegistryEntry>, StoreError> {
        let key = name.as_str().as_bytes();
        self.functions
            .get(key)?
            .map(|v| self.decode_or_quarantine(&self.functions, "function", key, &v))
            .transpose()
    }

    /// Every registry entry, tombstones included. Corrupt entries are quarantined and left
    /// out (each is logged and counted).
    pub fn functions(&self) -> Result<Vec<RegistryEntry>, StoreError> {
        self.records(&self.functions, "function").collect()
    }

    /// Writes an invocation record (new, or its next state) and keeps [`Store::results`]
    /// exact.
    pub fn put_invocation(&self, record: &InvocationRecord) -> Result<(), StoreError> {
        let bytes = encode("invocation", record)?;
        let len = bytes.len() as u64;
        let old = self
            .invocations
            .insert(record.id.as_str().as_bytes(), bytes)?;
        let tenant = record.function.tenant();
        match old {
            Some(old) => self.counters.add(tenant, 0, len, old.len() as u64),
            None => self.counters.add(tenant, 1, len, 0),
        }
        Ok(())
    }

    /// An invocation record. A corrupt one is quarantined and reported as
    /// [`StoreError::Corrupt`]; asked again, the id is unknown.
    pub fn invocation(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.invocations
            .get(key)?
            .map(|v| self.decode_or_quarantine(&self.invocations, "invocation", key, &v))
            .transpose()
    }

    pub fn remove_invocation(&self, id: &InvocationId) -> Result<(), StoreError> {
        if let Some(old) = self.invocations.remove(id.as_str().as_bytes())? {
            self.counters.remove(&old);
        }
        Ok(())
    }

    /// Every journaled invocation, read one at a time. Corrupt records are quarantined and
    /// left out (each is logged and counted); an error is an I/O failure of the store.
    pub fn invocations(&self) -> impl Iterator<Item = Result<InvocationRecord, StoreError>> + '_ {
        self.records(&self.invocations, "invocation")
    }

    /// The journal's size now: records and encoded bytes.
    pub fn results(&self) -> ResultUsage {
        ResultUsage {
            count: self.counters.results.load(Relaxed),
            bytes: self.counters.result_bytes.load(Relaxed),
        }
    }

    /// What `tenant`'s records in the journal take now.
    pub fn results_of(&self, tenant: &TenantName) -> ResultUsage {
        self.counters
            .by_tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    /// Records moved to quarantine since this store was opened.
    pub fn quarantined(&self) -> u64 {
        self.counters.quarantined.load(Relaxed)
    }

    /// The quarantined records, as `(what/key, bytes)`, for an operator to inspect.
    pub fn quarantine(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.quarantine
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    /// Every record of `tree` (another tree of this store, from [`Store::tree`]) decoded as a
    /// `what`, one at a time. A record that does not decode is moved to the quarantine and
    /// left out, as the store's own are, so damage to one record of another module's state
    /// does not stop the node.
    pub fn decoded<'a, T: serde::de::DeserializeOwned>(
        &'a self,
        tree: &'a sled::Tree,
        what: &'static str,
    ) -> impl Iterator<Item = Result<T, StoreError>> + 'a {
        self.records(tree, what)
    }

    fn records<'a, T: serde::de::DeserializeOwned>(
        &'a self,
        tree: &'a sled::Tree,
        what: &'static str,
    ) -> impl Iterator<Item = Result<T, StoreError>> + 'a {
        tree.iter().filter_map(move |kv| match kv {
            Err(e) => Some(Err(e.into())),
            // Reported (logged and counted) by decode_or_quarantine; the rest goes on.
            Ok((k, v)) => self.decode_or_quarantine(tree, what, &k, &v).ok().map(Ok),
        })
    }

    fn decode_or_quarantine<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        what: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        decode(what, &String::from_utf8_lossy(key), bytes).inspect_err(|e| {
            tracing::error!(error = %e, "moving a corrupt record to the store's quarantine");
            if let Err(io) = self.move_to_quarantine(tree, what, key, bytes) {
                tracing::error!(error = %io, "cannot quarantine a corrupt record");
            }
        })
    }

    fn move_to_quarantine(
        &self,
        tree: &sled::Tree,
        what: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let mut qkey = format!("{what}/").into_bytes();
        qkey.extend_from_slice(key);
        // Copied before it is removed, so a crash in between loses nothing; removed only if
        // it is still the same bytes, so a good record written meanwhile stays.
        self.quarantine.insert(&qkey, bytes)?;
        if tree
            .compare_and_swap(key, Some(bytes), None::<&[u8]>)?
            .is_err()
        {
            self.quarantine.remove(&qkey)?;
            return Ok(());
        }
        if tree.name() == self.invocations.name() {
            self.counters.remove(bytes);
        }
        self.counters.quarantined.fetch_add(1, Relaxed);
        Ok(())
    }
}

fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    tern_wire::encode(value, RECORD_LIMIT).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    tern_wire::decode(bytes, RECORD_LIMIT).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tern_wire::{FunctionInfo, InvocationStatus};

    /// A caller that cannot get a flush place in time is told the store is busy (a retryable
    /// error), and that is not a failed write: the node does not restart for it.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_flush_place_is_busy_not_a_failed_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store
            .flushes
            .clone()
            .acquire_many_owned(CONCURRENT_FLUSHES as u32)
            .await
            .unwrap();
        assert!(matches!(store.flush().await, Err(StoreError::FlushBusy)));
        assert_eq!(store.write_failures(), 0);
        assert!(!store.failed());
        assert!(store.takes_writes().await, "busy is not failing");
        drop(held);
    }

    /// Many writers flushing at once (as async accepts and idempotency keys do under load)
    /// all finish: sled's own `flush_async` runs each flush on sled's thread pool, where the
    /// waiting flushes can hold every thread that the log write they wait for needs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundreds_of_concurrent_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree("t").unwrap();
        for round in 0..20u32 {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..300u32 {
                let store = store.clone();
                let tree = tree.clone();
                tasks.spawn(async move {
                    tree.insert(format!("{round}-{i}"), vec![0u8; 64]).unwrap();
                    store.flush().await
                });
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap().unwrap();
            }
        }
    }

    /// One bit flipped in sled's log makes sled recover only what came before it, without an
    /// error; the store refuses to open instead of serving without acknowledged writes, until
    /// the operator removes the watermark to accept what is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_lost_acknowledged_writes_to_a_damaged_log_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let written = 300;
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..written {
                store.put_function(&entry(&format!("f{i}"))).unwrap();
                store.flush().await.unwrap();
            }
        }
        let log = dir.path().join("db").join("db");
        let mut bytes = std::fs::read(&log).unwrap();
        // A byte of written data two fifths in: the flushes after it are what sled drops.
        let at = (bytes.len() * 2 / 5..bytes.len())
            .find(|&i| bytes[i] != 0)
            .unwrap();
        bytes[at] ^= 0x04;
        std::fs::write(&log, &bytes).unwrap();

        let Err(e) = Store::open(dir.path()) else {
            panic!("a store missing acknowledged writes opened");
        };
        let StoreError::LostWrites {
            acknowledged,
            found,
            ..
        } = e
        else {
            panic!("wrong error: {e}");
        };
        assert!(found < acknowledged, "{found} < {acknowledged}");
        assert!(e.is_damage());
        assert!(e.to_string().contains("remove"), "says what to do: {e}");

        std::fs::remove_file(dir.path().join(crate::watermark::FILE)).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let left = store.functions().unwrap().len();
        assert!(left < written, "sled kept {left} of {written}");
        // Accepted: from now on the watermark follows this store.
        store.flush().await.unwrap();
        drop(store);
        Store::open(dir.path()).unwrap();
    }

    /// A log cut short (a torn write, a truncated copy of the data directory) loses the
    /// flushes after the cut: refused the same way, never opened without them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_whose_log_was_truncated_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..300 {
                store.put_function(&entry(&format!("f{i}"))).unwrap();
                store.flush().await.unwrap();
            }
        }
        let log = dir.path().join("db").join("db");
        let len = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        match Store::open(dir.path()) {
            Ok(_) => panic!("a store cut in half opened"),
            Err(e) => assert!(e.is_damage(), "not named as damage: {e}"),
        }
    }

    fn entry(name: &str) -> RegistryEntry {
        RegistryEntry {
            info: info(name),
            removed: false,
            origin: "n1".into(),
        }
    }

    fn info(name: &str) -> FunctionInfo {
        FunctionInfo {
            name: name.parse().unwrap(),
            hash: ModuleHash([7; 32]),
            version: 3,
            timeout_ms: 100,
            memory_mb: 64,
            size_bytes: 10,
            deployed_at_ms: 5,
            max_instances: None,
        }
    }

    #[test]
    fn entries_of_the_previous_layout_are_moved_to_the_current_tree_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = |name: &str, version: u64| legacy::Entry {
            info: legacy::Info {
                name: name.parse().unwrap(),
                hash: ModuleHash([7; 32]),
                version,
                timeout_ms: 100,
                memory_mb: 64,
                size_bytes: 10,
                deployed_at_ms: 5,
            },
            removed: false,
            origin: "n1".into(),
        };
        {
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .unwrap();
            let tree = db.open_tree(legacy::TREE).unwrap();
            tree.insert(b"a", encode("function", &old("a", 3)).unwrap())
                .unwrap();
            tree.insert(b"bad", &b"\xff\xff"[..]).unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.functions().unwrap(), vec![entry("a")]);
        assert_eq!(s.quarantined(), 1, "the damaged old record");
        let legacy_tree = s.db.open_tree(legacy::TREE).unwrap();
        assert!(legacy_tree.is_empty(), "old copies removed");
        // Reopened: nothing left to move, the entry stays.
        s.put_function(&RegistryEntry {
            info: FunctionInfo {
                max_instances: Some(3),
                ..info("a")
            },
            ..entry("a")
        })
        .unwrap();
        drop((s, legacy_tree));
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.functions().unwrap()[0].info.max_instances,
            Some(3),
            "a later write is not overwritten by a second migration"
        );
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_function(&entry("a")).unwrap();
            s.put_module(&ModuleHash([7; 32]), b"\0asm").unwrap();
            s.put_invocation(&InvocationRecord {
                id: "x-1".parse().unwrap(),
                function: "a".parse().unwrap(),
                map: false,
                status: InvocationStatus::Pending,
                input: b"in".to_vec(),
                output: None,
                error: None,
                accepted_at_ms: 1,
                finished_at_ms: None,
                attempts: 0,
            })
            .unwrap();
            s.db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.functions().unwrap(), vec![entry("a")]);
        assert_eq!(s.module(&ModuleHash([7; 32])).unwrap().unwrap(), b"\0asm");
        assert_eq!(s.invocations().count(), 1);
    }

    fn record(id: &str, input: &[u8]) -> InvocationRecord {
        InvocationRecord {
            id: id.parse().unwrap(),
            function: "a".parse().unwrap(),
            map: false,
            status: InvocationStatus::Pending,
            input: input.to_vec(),
            output: None,
            error: None,
            accepted_at_ms: 1,
            finished_at_ms: None,
            attempts: 0,
        }
    }

    fn encoded_len(r: &InvocationRecord) -> u64 {
        encode("invocation", r).unwrap().len() as u64
    }

    #[test]
    fn a_corrupt_function_entry_is_quarantined_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_function(&entry("a")).unwrap();
        s.functions.insert(b"bad", &b"\xff\xff\xff"[..]).unwrap();
        assert_eq!(s.functions().unwrap(), vec![entry("a")]);
        assert_eq!(s.quarantined(), 1);
        assert_eq!(
            s.quarantine().unwrap(),
            vec![("function/bad".to_owned(), b"\xff\xff\xff".to_vec())],
            "the damaged bytes are kept for inspection"
        );
        assert_eq!(s.functions().unwrap(), vec![entry("a")]);
        assert_eq!(s.quarantined(), 1, "moved once, not found again");
    }

    #[test]
    fn a_corrupt_record_read_by_key_is_a_typed_error_then_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.functions.insert(b"bad", &b"\xff"[..]).unwrap();
        let bad: FunctionName = "bad".parse().unwrap();
        assert!(matches!(
            s.function(&bad),
            Err(StoreError::Corrupt {
                what: "function",
                ..
            })
        ));
        assert!(s.function(&bad).unwrap().is_none());
        assert_eq!(s.quarantined(), 1);
    }

    #[test]
    fn journal_usage_is_exact_across_writes_removals_quarantine_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (record("x-1", b"in"), record("x-2", &[9; 1000]));
        let mut a_done = a.clone();
        a_done.status = InvocationStatus::Succeeded;
        a_done.output = Some(vec![1; 5000]);
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.results(), ResultUsage::default());
            s.put_invocation(&a).unwrap();
            s.put_invocation(&b).unwrap();
            assert_eq!(
                s.results(),
                ResultUsage {
                    count: 2,
                    bytes: encoded_len(&a) + encoded_len(&b)
                }
            );
            s.put_invocation(&a_done).unwrap();
            assert_eq!(
                s.results(),
                ResultUsage {
                    count: 2,
                    bytes: encoded_len(&a_done) + encoded_len(&b)
                },
                "an overwrite counts the new size, not both"
            );
            s.remove_invocation(&b.id).unwrap();
            s.remove_invocation(&b.id).unwrap();
            assert_eq!(
                s.results(),
                ResultUsage {
                    count: 1,
                    bytes: encoded_len(&a_done)
                },
                "a second removal changes nothing"
            );
            s.invocations.insert(b"x-3", &[0xff; 40][..]).unwrap();
            s.db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.results(),
            ResultUsage {
                count: 2,
                bytes: encoded_len(&a_done) + 40
            },
            "counted again at open, damaged record included"
        );
        let read: Vec<_> = s.invocations().map(Result::unwrap).collect();
        assert_eq!(read, vec![a_done.clone()]);
        assert_eq!(s.quarantined(), 1);
        assert_eq!(
            s.results(),
            ResultUsage {
                count: 1,
                bytes: encoded_len(&a_done)
            },
            "a quarantined record leaves the journal's usage"
        );
    }

    #[test]
    fn each_tenants_journal_usage_is_exact_across_writes_removals_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let acme: TenantName = "acme".parse().unwrap();
        let default = TenantName::default_tenant();
        let theirs = |id: &str, input: &[u8]| InvocationRecord {
            function: "acme.work".parse().unwrap(),
            ..record(id, input)
        };
        let (a1, a2, d1) = (
            theirs("x-1", b"in"),
            theirs("x-2", &[3; 700]),
            record("x-3", b"d"),
        );
        let mut a1_done = a1.clone();
        a1_done.output = Some(vec![1; 4000]);
        let usage = |count, bytes| ResultUsage { count, bytes };
        {
            let s = Store::open(dir.path()).unwrap();
            for r in [&a1, &a2, &d1] {
                s.put_invocation(r).unwrap();
            }
            s.put_invocation(&a1_done).unwrap();
            assert_eq!(
                s.results_of(&acme),
                usage(2, encoded_len(&a1_done) + encoded_len(&a2))
            );
            assert_eq!(s.results_of(&default), usage(1, encoded_len(&d1)));
            s.remove_invocation(&a2.id).unwrap();
            assert_eq!(s.results_of(&acme), usage(1, encoded_len(&a1_done)));
            s.db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.results_of(&acme),
            usage(1, encoded_len(&a1_done)),
            "counted again at open"
        );
        s.remove_invocation(&a1.id).unwrap();
        assert_eq!(s.results_of(&acme), ResultUsage::default());
        assert!(
            !s.counters.by_tenant.lock().unwrap().contains_key(&acme),
            "a tenant with nothing stored leaves no entry"
        );
        assert_eq!(s.results_of(&default), usage(1, encoded_len(&d1)));
    }

    #[test]
    fn a_record_rewritten_while_being_quarantined_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let good = record("x-1", b"in");
        s.put_invocation(&good).unwrap();
        // A reader saw damaged bytes that are no longer what the key holds.
        s.move_to_quarantine(&s.invocations, "invocation", b"x-1", b"\xff")
            .unwrap();
        assert_eq!(s.invocation(&good.id).unwrap(), Some(good));
        assert_eq!(s.quarantined(), 0);
        assert!(s.quarantine().unwrap().is_empty());
    }

    #[test]
    fn modules_are_listed_and_removed_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (h1, h2) = (ModuleHash([1; 32]), ModuleHash([2; 32]));
        s.put_module(&h1, b"one").unwrap();
        s.put_module(&h2, b"two").unwrap();
        let listed: Vec<_> = s.module_hashes().map(Result::unwrap).collect();
        assert_eq!(listed, vec![h1, h2]);
        assert!(s.remove_module(&h1).unwrap());
        assert!(!s.remove_module(&h1).unwrap());
        assert_eq!(s.module(&h1).unwrap(), None);
        assert_eq!(s.module(&h2).unwrap().unwrap(), b"two");
    }

    #[test]
    fn garbage_directory_is_refused_or_opened_empty_never_a_panic() {
        for conf in [&b"garbage"[..], &b"\xde\xad\xbe\xef garbage"[..], &[][..]] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("db")).unwrap();
            std::fs::write(dir.path().join("db").join("conf"), conf).unwrap();
            std::fs::write(dir.path().join("db").join("db"), vec![0xAB; 4096]).unwrap();
            let opened = std::panic::catch_unwind(|| Store::open(dir.path()))
                .expect("opening a damaged store must not panic");
            // Either a typed error, or a store holding nothing it did not acknowledge.
            if let Ok(store) = opened {
                assert!(store.functions().unwrap().is_empty());
                assert_eq!(store.invocations().count(), 0);
            }
        }
    }
}
