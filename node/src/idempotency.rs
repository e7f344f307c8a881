//! Idempotency keys of the client API, as the key's home node keeps them (which node that is,
//! and how calls reach it: [`crate::keyed`]).
//!
//! - **Async invocations** ([`AsyncKeys`]): `key → invocation id` is persisted in its own sled
//!   tree, so a retry with the same key at its home (even after a restart) gets the same
//!   id instead of a second invocation. Entries expire after `result_ttl_secs`, like results.
//! - **Sync invocations** ([`SyncCache`]): a bounded in-memory cache of finished results (by
//!   default 10,000 keys, 64 MiB of output, 5 minutes). A retry that arrives while the first
//!   attempt is still running waits for it instead of running the function again.
//!
//! Keys are scoped by function name: the same key used with two functions names two calls.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_wire::{ApiError, ErrorCode, FunctionName, InvocationId, InvokeReply};
use tokio::sync::watch;
// tokio's clock, so tests can pause and advance time instead of sleeping.
use tokio::time::Instant;

use crate::app::App;
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::store::{Store, StoreError};

/// sled tree of the async keys.
const ASYNC_TREE: &str = "client_idempotency";
/// Largest stored entry (an id and a timestamp).
const ENTRY_LIMIT: usize = 256;
/// Lock stripes serialising "look up, else accept and record" per key.
const STRIPES: usize = 64;

/// The storage key of `key` used with `function`.
fn scoped(function: &FunctionName, key: &str) -> String {
    tern_link::key_home::scope(function.as_str(), key)
}

#[derive(Debug, Serialize, Deserialize)]
struct AsyncEntry {
    id: InvocationId,
    created_ms: u64,
}

/// Persistent `idempotency key → invocation id` of async invocations.
pub struct AsyncKeys {
    store: Store,
    tree: sled::Tree,
    ttl_ms: u64,
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: RandomState,
}

impl AsyncKeys {
    pub fn open(store: &Store, ttl_secs: u64) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            tree: store.tree(ASYNC_TREE)?,
            ttl_ms: ttl_secs.saturating_mul(1000),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        })
    }

    fn get(&self, key: &str) -> Result<Option<AsyncEntry>, StoreError> {
        let Some(bytes) = self.tree.get(key.as_bytes())? else {
            return Ok(None);
        };
        let entry: AsyncEntry =
            tern_wire::decode(&bytes, ENTRY_LIMIT).map_err(|e| StoreError::Corrupt {
                what: "idempotency key",
                key: key.escape_debug().take(200).collect(),
                detail: e.to_string(),
            })?;
        let expired = entry.created_ms < now_ms().saturating_sub(self.ttl_ms);
        Ok((!expired).then_some(entry))
    }

    /// Accepts an async invocation under `key`, or returns the id already accepted under it.
    pub async fn accept(
        &self,
        app: &Arc<App>,
        key: &str,
        function: FunctionName,
        input: Bytes,
        map: bool,
        trace: Option<tern_wire::TraceParent>,
    ) -> Result<InvocationId, NodeError> {
        let key = scoped(&function, key);
        let stripe = self.hasher.hash_one(&key) as usize % STRIPES;
        let _guard = self.stripes[stripe].lock().await;
        if let Some(entry) = self.get(&key)? {
            return Ok(entry.id);
        }
        // Standing in for a home that is away: it may have accepted the call already, and
        // its keeper (this node, or a peer) knows the key — unless copies are off. Likewise
        // at a home back from a restart, or that saw a peer come back, within the time keys
        // are kept: a stand-in may have accepted the call meanwhile (while this node was
        // down, or cut off), and its keeper knows the key if the copy reached one. The id is
        // kept here as the first accept's, from the same accept time (it expires as that one
        // would). The lookup holds this key's stripe until every peer up answered or 2 s,
        // and a peer that cannot answer counts as one that does not know the key.
        let keys_kept = std::time::Duration::from_secs(app.config.result_ttl_secs);
        if let Some(link) = app.cluster.get()
            && app.config.async_takeover_secs > 0
            && (link.stands_in_for_key_home(&key)
                || link.a_peer_returned_within(keys_kept)
                || app.keys.restarted_within(keys_kept))
            && let Some(found) = match app.kept_under_key(&key)? {
                Some(found) => Some(found),
                None => link.lookup_key(&key).await,
            }
        {
            self.remember(&key, &found.id, found.accepted_at_ms).await?;
            return Ok(found.id);
        }
        let id = app
            .accept_async_keyed(function, input, map, trace, &key)
            .await?;
        self.remember(&key, &id, now_ms()).await?;
        Ok(id)
    }

    /// Keeps `key → id`, durably.
    async fn remember(
        &self,
        key: &str,
        id: &InvocationId,
        created_ms: u64,
    ) -> Result<(), StoreError> {
        let entry = AsyncEntry {
            id: id.clone(),
            created_ms,
        };
        let bytes = tern_wire::encode(&entry, ENTRY_LIMIT).map_err(|e| StoreError::Encode {
            what: "idempotency key",
            detail: e.to_string(),
        })?;
        self.tree
            .insert(key.as_bytes(), bytes)
            .map_err(StoreError::from)?;
        // A crash before this flush loses only the key: a retry then runs the function
        // again (at-least-once, as documented).
        self.store.flush().await?;
        Ok(())
    }

    /// Deletes keys older than the retention period; returns how many.
    pub fn expire(&self) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(self.ttl_ms);
        let mut removed = 0;
        for item in self.tree.iter() {
            let (k, v) = item?;
            let stale = tern_wire::decode::<AsyncEntry>(&v, ENTRY_LIMIT)
                .map(|e| e.created_ms < cutoff)
                // An undecodable entry is useless: drop it.
                .unwrap_or(true);
            if stale {
                self.tree.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A finished sync result, shared by every caller that asked with the same key.
pub type SharedResult = Arc<Result<InvokeReply, ApiError>>;

/// Limits of the [`SyncCache`].
#[derive(Clone, Copy, Debug)]
pub struct SyncCacheLimits {
    /// Keys kept (running and finished).
    pub max_keys: usize,
    /// Output bytes kept across finished entries.
    pub max_bytes: usize,
    /// How long a finished result is replayed.
    pub ttl: Duration,
}

impl Default for SyncCacheLimits {
    fn default() -> Self {
        Self {
            max_keys: 10_000,
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(300),
        }
    }
}

/// Bounded in-memory idempotency cache of sync invocations.
pub struct SyncCache {
    limits: SyncCacheLimits,
    inner: Mutex<SyncInner>,
}

#[derive(Default)]
struct SyncInner {
    slots: HashMap<String, Slot>,
    /// Insertion order, for eviction; entries whose generation no longer matches are stale.
    order: VecDeque<(String, u64)>,
    next_gen: u64,
    bytes: usize,
}

struct Slot {
    generation: u64,
    state: SlotState,
}

enum SlotState {
    Running(watch::Receiver<Option<SharedResult>>),
    Done {
        at: Instant,
        result: SharedResult,
        bytes: usize,
    },
}

/// What a caller with an idempotency key should do.
pub enum Begin {
    /// A finished result to replay.
    Done(SharedResult),
    /// Another attempt is running: wait for its result.
    Wait(watch::Receiver<Option<SharedResult>>),
    /// Run it, then [`RunGuard::finish`].
    Run(RunGuard),
    /// The cache is full of running calls: run without deduplication.
    Uncached,
}

/// The right (and duty) to run a keyed call. Dropping it unfinished forgets the key, so
/// waiters are told to retry and a retry runs the call.
pub struct RunGuard {
    cache: Arc<SyncCache>,
    key: String,
    generation: u64,
    tx: Option<watch::Sender<Option<SharedResult>>>,
}

impl RunGuard {
    /// A receiver that sees the result once [`RunGuard::finish`] is called.
    pub fn subscribe(&self) -> Option<watch::Receiver<Option<SharedResult>>> {
        self.tx.as_ref().map(|tx| tx.subscribe())
    }

    /// Whether a caller still waits for the result (the cache's own slot holds one receiver
    /// of its own, so a caller is any receiver beyond it).
    pub fn awaited(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 1)
    }

    /// Publishes the result to every waiter and keeps it for later retries (unless it is a
    /// retryable refusal such as `overloaded`, or too big to keep).
    pub fn finish(mut self, result: Result<InvokeReply, ApiError>) {
        let result = Arc::new(result);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(result.clone()));
        }
        self.cache.finish(&self.key, self.generation, result);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.cache.forget(&self.key, self.generation);
        }
    }
}

/// Whether a result is kept for retries: refusals (`overloaded`, `unavailable`) ran nothing,
/// and a retry must run the call.
pub fn keepable(result: &Result<InvokeReply, ApiError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => !e.code.is_retryable(),
    }
}

fn result_bytes(key: &str, result: &Result<InvokeReply, ApiError>) -> usize {
    key.len()
        + match result {
            Ok(r) => r.output.len() + r.node.len(),
            Err(e) => e.message.len(),
        }
}

impl SyncCache {
    pub fn new(limits: SyncCacheLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::new(SyncInner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncInner> {
        // The state stays consistent at every await-free step, so a poisoned lock is usable.
        tern_sync::poison::lock(&self.inner)
    }

    /// Looks `key` up, registering a new running call if it is unknown.
    pub fn begin(self: &Arc<Self>, function: &FunctionName, key: &str) -> Begin {
        let key = scoped(function, key);
        let mut inner = self.lock();
        let ttl = self.limits.ttl;
        let mut expired = false;
        match inner.slots.get(&key).map(|s| &s.state) {
            Some(SlotState::Running(rx)) => return Begin::Wait(rx.clone()),
            Some(SlotState::Done { at, result, .. }) => {
                if at.elapsed() < ttl {
                    return Begin::Done(result.clone());
                }
                expired = true;
            }
            None => {}
        }
        if expired {
            inner.remove(&key);
        }
        while inner.slots.len() >= self.limits.max_keys {
            if !inner.evict_oldest_done() {
                return Begin::Uncached;
            }
        }
        let (tx, rx) = watch::channel(None);
        let generation = inner.insert(key.clone(), SlotState::Running(rx));
        Begin::Run(RunGuard {
            cache: self.clone(),
            key,
            generation,
            tx: Some(tx),
        })
    }

    fn finish(&self, key: &str, generation: u64, result: SharedResult) {
        let mut inner = self.lock();
        if inner.slots.get(key).map(|s| s.generation) != Some(generation) {
            return;
        }
        let bytes = result_bytes(key, &result);
        if !keepable(&result) || bytes > self.limits.max_bytes {
            inner.remove(key);
            return;
        }
        while inner.bytes + bytes > self.limits.max_bytes {
            if !inner.evict_oldest_done() {
                break;
            }
        }
        if inner.bytes + bytes > self.limits.max_bytes {
            inner.remove(key);
            return;
        }
        inner.bytes += bytes;
        if let Some(slot) = inner.slots.get_mut(key) {
            slot.state = SlotState::Done {
                at: Instant::now(),
                result,
                bytes,
            };
        }
    }

    /// Keeps a result run elsewhere under `scope` (a key already scoped to its function), as a
    /// finished entry within the same limits, replacing what the key held: a peer's result,
    /// this node answers retries with while the peer is away. Refusals are not kept, nor a
    /// result that fits only by evicting running calls.
    pub fn keep(&self, scope: String, result: SharedResult) {
        let bytes = result_bytes(&scope, &result);
        if !keepable(&result) || bytes > self.limits.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.remove(&scope);
        while inner.slots.len() >= self.limits.max_keys
            || inner.bytes + bytes > self.limits.max_bytes
        {
            if !inner.evict_oldest_done() {
                return;
            }
        }
        inner.bytes += bytes;
        let done = SlotState::Done {
            at: Instant::now(),
            result,
            bytes,
        };
        inner.insert(scope, done);
    }

    /// Whether the call under `scope` (already scoped) is running here.
    pub fn running(&self, scope: &str) -> bool {
        matches!(
            self.lock().slots.get(scope).map(|s| &s.state),
            Some(SlotState::Running(_))
        )
    }

    /// The finished result under `scope` (already scoped), if one is kept and fresh.
    pub fn finished(&self, scope: &str) -> Option<SharedResult> {
        match &self.lock().slots.get(scope)?.state {
            SlotState::Done { at, result, .. } if at.elapsed() < self.limits.ttl => {
                Some(result.clone())
            }
            _ => None,
        }
    }

    fn forget(&self, key: &str, generation: u64) {
        let mut inner = self.lock();
        if inner.slots.get(key).map(|s| s.generation) == Some(generation) {
            inner.remove(key);
        }
    }

    /// Keys held (running and finished).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SyncInner {
    /// Puts `state` under `key` as a new generation, last in the eviction order; its
    /// generation. The caller has made room and counted a finished entry's bytes.
    fn insert(&mut self, key: String, state: SlotState) -> u64 {
        let generation = self.next_gen;
        self.next_gen += 1;
        self.slots.insert(key.clone(), Slot { generation, state });
        self.order.push_back((key, generation));
        self.compact_order();
        generation
    }

    /// Drops the stale entries of `order` (keys removed or replaced since) once they
    /// outnumber the live ones: a key refused, forgotten or kept again over and over must not
    /// grow it while the cache is never full enough to evict.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.slots.len() + 64 {
            let slots = &self.slots;
            self.order.retain(|(key, generation)| {
                slots.get(key).map(|s| s.generation) == Some(*generation)
            });
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(Slot {
            state: SlotState::Done { bytes, .. },
            ..
        }) = self.slots.remove(key)
        {
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }

    /// Removes the oldest finished entry; `false` if there is none (all are running).
    fn evict_oldest_done(&mut self) -> bool {
        let mut running = Vec::new();
        let mut evicted = false;
        while let Some((key, generation)) = self.order.pop_front() {
            match self.slots.get(&key) {
                Some(slot) if slot.generation == generation => match slot.state {
                    SlotState::Done { .. } => {
                        self.remove(&key);
                        evicted = true;
                        break;
                    }
                    SlotState::Running(_) => running.push((key, generation)),
                },
                // Stale: the key was removed or replaced since.
                _ => {}
            }
        }
        // Running entries keep their place at the front.
        for entry in running.into_iter().rev() {
            self.order.push_front(entry);
        }
        evicted
    }
}

/// Waits for the result of a running keyed call.
pub async fn wait(mut rx: watch::Receiver<Option<SharedResult>>) -> Result<InvokeReply, ApiError> {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => match value.as_ref() {
            Some(result) => result.as_ref().clone(),
            None => Err(abandoned()),
        },
        Err(_) => Err(abandoned()),
    }
}

fn abandoned() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "the earlier attempt with this idempotency key was abandoned; retry",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reply(out: &str) -> InvokeReply {
        InvokeReply {
            output: out.as_bytes().to_vec(),
            node: "n".into(),
            cold_start: false,
            meus: 1,
            duration_us: 5,
            replayed: false,
        }
    }

    fn f() -> FunctionName {
        "echo".parse().unwrap()
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_running_call_then_replays_it() {
        let cache = SyncCache::new(SyncCacheLimits::default());
        let Begin::Run(guard) = cache.begin(&f(), "k") else {
            panic!("first call must run")
        };
        let Begin::Wait(rx) = cache.begin(&f(), "k") else {
            panic!("retry while running must wait")
        };
        // Another function with the same key is another call.
        assert!(matches!(
            cache.begin(&"other".parse().unwrap(), "k"),
            Begin::Run(_)
        ));
        let waiter = tokio::spawn(wait(rx));
        guard.finish(Ok(reply("hi")));
        assert_eq!(waiter.await.unwrap().unwrap().output, b"hi");
        let Begin::Done(r) = cache.begin(&f(), "k") else {
            panic!("finished call must replay")
        };
        assert_eq!(r.as_ref().as_ref().unwrap().output, b"hi");
    }

    #[tokio::test]
    async fn refusals_and_abandoned_calls_are_not_kept() {
        let cache = SyncCache::new(SyncCacheLimits::default());
        let Begin::Run(guard) = cache.begin(&f(), "k") else {
            panic!()
        };
        guard.finish(Err(ApiError::new(ErrorCode::Overloaded, "full")));
        assert!(matches!(cache.begin(&f(), "k"), Begin::Run(_)));
        // (the guard above was dropped unfinished: the key is free again)
        let Begin::Run(guard) = cache.begin(&f(), "k") else {
            panic!()
        };
        let Begin::Wait(rx) = cache.begin(&f(), "k") else {
            panic!()
        };
        drop(guard);
        assert_eq!(wait(rx).await.unwrap_err().code, ErrorCode::Unavailable);
        assert!(cache.is_empty());
        // A guest error is an answer: kept.
        let Begin::Run(guard) = cache.begin(&f(), "k") else {
            panic!()
        };
        guard.finish(Err(ApiError::new(ErrorCode::GuestTrap, "boom")));
        assert!(matches!(cache.begin(&f(), "k"), Begin::Done(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_bytes_and_age_are_bounded() {
        let cache = SyncCache::new(SyncCacheLimits {
            max_keys: 3,
            max_bytes: 100,
            ttl: Duration::from_millis(50),
        });
        let run = |k: &str| match cache.begin(&f(), k) {
            Begin::Run(g) => g,
            _ => panic!("{k} must run"),
        };
        let running = run("r");
        run("a").finish(Ok(reply("1")));
        run("b").finish(Ok(reply("2")));
        // Full: the oldest finished key ("a") goes, the running one stays.
        run("c").finish(Ok(reply("3")));
        assert_eq!(cache.len(), 3);
        assert!(matches!(cache.begin(&f(), "a"), Begin::Run(_)));
        assert!(matches!(cache.begin(&f(), "r"), Begin::Wait(_)));
        // Too big to keep: not kept, and nothing else is evicted for it.
        run("big").finish(Ok(reply(&"x".repeat(200))));
        assert!(matches!(cache.begin(&f(), "big"), Begin::Run(_)));
        // Only running entries: no room, run uncached.
        let full = SyncCache::new(SyncCacheLimits {
            max_keys: 1,
            ..SyncCacheLimits::default()
        });
        let _g = match full.begin(&f(), "x") {
            Begin::Run(g) => g,
            _ => panic!(),
        };
        assert!(matches!(full.begin(&f(), "y"), Begin::Uncached));
        drop(running);
        // Expired results are not replayed.
        let g = run("old");
        g.finish(Ok(reply("o")));
        tokio::time::advance(Duration::from_millis(49)).await;
        assert!(matches!(cache.begin(&f(), "old"), Begin::Done(_)));
        tokio::time::advance(Duration::from_millis(11)).await;
        assert!(matches!(cache.begin(&f(), "old"), Begin::Run(_)));
    }

    #[tokio::test]
    async fn async_keys_return_the_same_entry_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = AsyncKeys::open(&store, 3600).unwrap();
        let k = scoped(&f(), "key-1");
        assert!(keys.get(&k).unwrap().is_none());
        let entry = AsyncEntry {
            id: "0001-0002".parse().unwrap(),
            created_ms: now_ms(),
        };
        keys.tree
            .insert(
                k.as_bytes(),
                tern_wire::encode(&entry, ENTRY_LIMIT).unwrap(),
            )
            .unwrap();
        assert_eq!(keys.get(&k).unwrap().unwrap().id, entry.id);
        assert_eq!(keys.expire().unwrap(), 0);
        let old = AsyncEntry {
            id: "0001-0003".parse().unwrap(),
            created_ms: 1,
        };
        keys.tree
            .insert(b"old", tern_wire::encode(&old, ENTRY_LIMIT).unwrap())
            .unwrap();
        keys.tree.insert(b"garbage", &b"\xff\xff"[..]).unwrap();
        assert!(
            keys.get("old").unwrap().is_none(),
            "expired entries are ignored"
        );
        assert!(keys.get("garbage").is_err());
        assert_eq!(keys.expire().unwrap(), 2);
        assert_eq!(keys.tree.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_result_is_bounded_like_a_run_one_and_refusals_are_not_kept() {
        let cache = SyncCache::new(SyncCacheLimits {
            max_keys: 2,
            max_bytes: 1_000,
            ttl: Duration::from_millis(50),
        });
        let scope = |k: &str| scoped(&f(), k);
        // A call running here is neither kept nor absent: a peer asking is told so.
        let Begin::Run(guard) = cache.begin(&f(), "a") else {
            panic!("first call must run")
        };
        assert!(cache.running(&scope("a")) && cache.finished(&scope("a")).is_none());
        drop(guard);
        assert!(!cache.running(&scope("a")));
        cache.keep(scope("a"), Arc::new(Ok(reply("one"))));
        cache.keep(
            scope("refused"),
            Arc::new(Err(ApiError::new(ErrorCode::Overloaded, "busy"))),
        );
        assert!(cache.finished(&scope("refused")).is_none());
        assert_eq!(
            cache
                .finished(&scope("a"))
                .unwrap()
                .as_ref()
                .as_ref()
                .unwrap()
                .output,
            b"one"
        );
        // A kept result answers a call begun here, as if it ran here.
        let Begin::Done(r) = cache.begin(&f(), "a") else {
            panic!("a kept result must replay")
        };
        assert_eq!(r.as_ref().as_ref().unwrap().output, b"one");
        // Errors from running are kept; a third key evicts the oldest.
        cache.keep(
            scope("b"),
            Arc::new(Err(ApiError::new(ErrorCode::GuestTrap, "trap"))),
        );
        cache.keep(scope("c"), Arc::new(Ok(reply("three"))));
        assert_eq!(cache.len(), 2);
        assert!(cache.finished(&scope("a")).is_none());
        assert!(cache.finished(&scope("b")).unwrap().is_err());
        // Too big for the byte bound: not kept, nothing evicted for it.
        cache.keep(scope("d"), Arc::new(Ok(reply(&"x".repeat(1_000)))));
        assert!(cache.finished(&scope("d")).is_none());
        assert_eq!(cache.len(), 2);
        // Kept again and again under one key, the cache's bookkeeping stays bounded.
        for _ in 0..1_000 {
            cache.keep(scope("c"), Arc::new(Ok(reply("three"))));
        }
        assert!(cache.lock().order.len() <= 2 * 2 + 64 + 1);
        tokio::time::advance(Duration::from_millis(51)).await;
        assert!(cache.finished(&scope("c")).is_none());
    }
}
