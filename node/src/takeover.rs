//! Async work of a node that died, taken over by a live node.
//!
//! A node that accepts an async invocation journals it, and before it answers 202 sends a
//! copy to its keeper: the next member up after it in name order (`ClusterLink::keeper`). The
//! keeper holds the copy durably ([`Copies`]); when the accepting node (its origin) finishes
//! the invocation it sends the finished record to its keeper, which keeps it as the result's
//! copy, and tells the other peers to drop theirs (`ClusterLink::settle`). When the origin has
//! been away — not up in the keeper's view — for `async_takeover_secs`, the keeper takes over
//! each copy still pending: into its own journal, pending, counted as one attempt more than
//! the copy says (the origin may have started it), and run there. Any node finds a record,
//! finished or taken over, by asking its peers (`ClusterLink::lookup`), so a result outlives
//! its node being away.
//!
//! At least once, as everywhere else: an origin that comes back replays its own journal, so
//! work taken over may run on both nodes (each record counts its own attempts); a copy whose
//! release was lost may run again after its origin later goes away; an origin cut off by a
//! partition for longer than the takeover delay runs its work while the keeper does. Copies
//! are bounded by the keeper's `max_stored_results` (past it a copy is refused and the work
//! waits for its origin, as before) and expire after `result_ttl_secs`.
//!
//! A copy of work accepted under an idempotency key carries the key, and the keeper indexes
//! it (kept as long as the key would be, `result_ttl_secs` from the accept, whether the copy
//! is released or taken over meanwhile): while the key's home is away, the node standing in
//! for it asks its peers for the key before it accepts the call as new
//! (`ClusterLink::lookup_key`), so a caller that retries after losing the 202 gets the id the
//! home gave, not a second run.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_wire::peer::AcceptedKey;
use tern_wire::{InvocationId, InvocationRecord, InvocationStatus};

use crate::store::{Store, StoreError};

/// sled tree of the copies this node keeps for peers.
const TREE: &str = "async_copies";
/// sled tree of the idempotency keys (scoped to their function) of those copies.
const KEY_TREE: &str = "async_copy_keys";
/// Largest entry of the key tree.
const KEY_ENTRY_LIMIT: usize = 256;
/// Largest copy: a record with its input.
const COPY_LIMIT: usize = tern_wire::codec::MAX_MESSAGE;

#[derive(Debug, Serialize, Deserialize)]
struct Copy {
    origin: String,
    record: InvocationRecord,
}

/// The invocation a copy's key names, and when it was accepted (the key expires as the
/// home's own would).
#[derive(Debug, Serialize, Deserialize)]
struct KeyEntry {
    id: InvocationId,
    accepted_at_ms: u64,
}

/// Whether a copy whose origin has been away for `away` (`None`: up) is due for takeover.
pub fn due(away: Option<Duration>, after: Duration) -> bool {
    !after.is_zero() && away.is_some_and(|away| away >= after)
}

/// Why a copy was not kept.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("this node keeps {count} copies ({bytes} bytes) of peers' async work already")]
    Full { count: u64, bytes: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How many copies a node keeps, and their bytes (`max_stored_results`,
/// `max_stored_result_mb`: the same bounds as its own journal).
#[derive(Clone, Copy, Debug)]
pub struct CopyCaps {
    pub count: u64,
    pub bytes: u64,
}

/// The copies of peers' async work this node keeps.
pub struct Copies {
    store: Store,
    tree: sled::Tree,
    keys: sled::Tree,
    /// Copies kept and their encoded bytes: counted once at open, then on every change
    /// (sled's `len` walks the whole tree).
    count: AtomicU64,
    bytes: AtomicU64,
    /// Serialises "read the old copy, decide, write", so two writes of one copy cannot both
    /// pass the checks, and the counts stay exact.
    writing: std::sync::Mutex<()>,
}

impl Copies {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let tree = store.tree(TREE)?;
        let (mut count, mut bytes) = (0, 0);
        for kv in tree.iter() {
            let (_, v) = kv?;
            count += 1;
            bytes += v.len() as u64;
        }
        Ok(Self {
            store: store.clone(),
            tree,
            keys: store.tree(KEY_TREE)?,
            count: AtomicU64::new(count),
            bytes: AtomicU64::new(bytes),
            writing: std::sync::Mutex::new(()),
        })
    }

    /// Keeps `origin`'s copy of `record`, accepted under idempotency key `scope` if any: a
    /// pending one durably (its origin's 202 waits for it), a finished one with the next
    /// flush (lost in a crash, the pending copy stays: at worst run again, counted). A new
    /// copy past `caps` is refused; a finished record replaces its pending copy whatever the
    /// caps, and a pending one never replaces a finished copy (a late, retried copy must not
    /// bring finished work back). A key is indexed with a new copy only (so the index is no
    /// larger than the copies kept within a key's life), timed from the accept as the origin
    /// says but never later than `now_ms` here.
    pub async fn hold(
        &self,
        origin: &str,
        record: InvocationRecord,
        scope: Option<&str>,
        now_ms: u64,
        caps: CopyCaps,
    ) -> Result<(), CopyError> {
        let key = record.id.as_str().as_bytes().to_vec();
        let key_entry = scope
            .map(|scope| {
                let entry = KeyEntry {
                    id: record.id.clone(),
                    accepted_at_ms: record.accepted_at_ms.min(now_ms),
                };
                tern_wire::encode(&entry, KEY_ENTRY_LIMIT)
                    .map(|bytes| (scope.as_bytes().to_vec(), bytes))
                    .map_err(|e| StoreError::Encode {
                        what: "idempotency key of a copy",
                        detail: e.to_string(),
                    })
            })
            .transpose()?;
        let pending = record.status == InvocationStatus::Pending;
        let copy = Copy {
            origin: origin.to_owned(),
            record,
        };
        let bytes = tern_wire::encode(&copy, COPY_LIMIT).map_err(|e| StoreError::Encode {
            what: "copy of async work",
            detail: e.to_string(),
        })?;
        {
            let _one = tern_sync::poison::lock(&self.writing);
            let old = self.tree.get(&key).map_err(StoreError::from)?;
            match &old {
                None => {
                    let (count, kept) = (self.count.load(Relaxed), self.bytes.load(Relaxed));
                    if count >= caps.count || kept + bytes.len() as u64 > caps.bytes {
                        return Err(CopyError::Full { count, bytes: kept });
                    }
                }
                Some(old) => {
                    let finished = tern_wire::decode::<Copy>(old, COPY_LIMIT)
                        .is_ok_and(|c| c.record.status != InvocationStatus::Pending);
                    if finished && copy.record.status == InvocationStatus::Pending {
                        return Ok(());
                    }
                }
            }
            let new_len = bytes.len() as u64;
            // The key first: a crash between the two leaves a key naming no copy (its id is
            // then not found, as an expired result is not), never a copy whose key is lost.
            if let Some((scope, entry)) = key_entry
                && old.is_none()
            {
                self.keys.insert(scope, entry).map_err(StoreError::from)?;
            }
            self.tree.insert(key, bytes).map_err(StoreError::from)?;
            match old {
                None => {
                    self.count.fetch_add(1, Relaxed);
                    self.bytes.fetch_add(new_len, Relaxed);
                }
                Some(old) => {
                    self.bytes.fetch_add(new_len, Relaxed);
                    self.bytes.fetch_sub(old.len() as u64, Relaxed);
                }
            }
        }
        if pending {
            self.store.flush().await?;
        }
        Ok(())
    }

    /// Drops the copies of `ids` that are kept here.
    pub fn release(&self, ids: &[InvocationId]) -> Result<(), StoreError> {
        let _one = tern_sync::poison::lock(&self.writing);
        for id in ids {
            if let Some(old) = self.tree.remove(id.as_str().as_bytes())? {
                self.count.fetch_sub(1, Relaxed);
                self.bytes.fetch_sub(old.len() as u64, Relaxed);
            }
        }
        Ok(())
    }

    /// The copy of `id`, if kept here (a damaged one reads as none; the next sweep of the
    /// copies quarantines it).
    pub fn get(&self, id: &InvocationId) -> Result<Option<InvocationRecord>, StoreError> {
        let Some(bytes) = self.tree.get(id.as_str().as_bytes())? else {
            return Ok(None);
        };
        Ok(tern_wire::decode::<Copy>(&bytes, COPY_LIMIT)
            .ok()
            .map(|c| c.record))
    }

    /// The invocation a peer accepted under idempotency key `scope` whose copy came here (it
    /// may since have been released, or taken over), unless the key is older than `ttl_ms`
    /// at `now_ms` (as the origin's own key would be gone by then).
    pub fn keyed(
        &self,
        scope: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<AcceptedKey>, StoreError> {
        let Some(bytes) = self.keys.get(scope.as_bytes())? else {
            return Ok(None);
        };
        Ok(tern_wire::decode::<KeyEntry>(&bytes, KEY_ENTRY_LIMIT)
            .ok()
            .filter(|e| e.accepted_at_ms.saturating_add(ttl_ms) >= now_ms)
            .map(|e| AcceptedKey {
                id: e.id,
                accepted_at_ms: e.accepted_at_ms,
            }))
    }

    /// The pending copies whose origin `away` says has been away for `after` or longer, with
    /// their origin, in the order they are kept; `away(origin)` is `None` while it is up.
    pub fn due(
        &self,
        away: impl Fn(&str) -> Option<Duration>,
        after: Duration,
    ) -> Result<Vec<(String, InvocationRecord)>, StoreError> {
        let mut out = Vec::new();
        for copy in self.store.decoded::<Copy>(&self.tree, "copy of async work") {
            let copy = copy?;
            if copy.record.status == InvocationStatus::Pending && due(away(&copy.origin), after) {
                out.push((copy.origin, copy.record));
            }
        }
        Ok(out)
    }

    /// Drops copies older than `ttl_ms` at `now_ms`, as results expire: a finished one
    /// counted from when it finished, a pending one from when it was accepted (its release
    /// was lost, or its origin never came back and takeover is off); how many. Keys go
    /// `ttl_ms` after their accept, as the home's own do (a damaged one at once).
    pub fn expire(&self, now_ms: u64, ttl_ms: u64) -> Result<usize, StoreError> {
        for kv in self.keys.iter() {
            let (scope, bytes) = kv?;
            let stale = tern_wire::decode::<KeyEntry>(&bytes, KEY_ENTRY_LIMIT)
                .map_or(true, |e| e.accepted_at_ms.saturating_add(ttl_ms) < now_ms);
            if stale {
                // Only if unchanged: a copy kept meanwhile may have renewed it.
                let _ = self
                    .keys
                    .compare_and_swap(scope, Some(bytes), None::<&[u8]>)?;
            }
        }
        let mut stale = Vec::new();
        for copy in self.store.decoded::<Copy>(&self.tree, "copy of async work") {
            let copy = copy?;
            let since = copy
                .record
                .finished_at_ms
                .unwrap_or(copy.record.accepted_at_ms);
            if since.saturating_add(ttl_ms) < now_ms {
                stale.push(copy.record.id);
            }
        }
        self.release(&stale)?;
        Ok(stale.len())
    }

    /// How many copies are kept here.
    pub fn len(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A record taken over: pending, with one more attempt than its copy says — the origin may
/// have started it before it went away, and a duplicate must never go uncounted (the run
/// here counts the next).
pub fn taken_over(mut record: InvocationRecord) -> InvocationRecord {
    record.status = InvocationStatus::Pending;
    record.output = None;
    record.error = None;
    record.finished_at_ms = None;
    record.attempts = record.attempts.saturating_add(1);
    record
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_copy_is_due_once_its_origin_has_been_away_long_enough_and_never_when_off() {
        let after = Duration::from_secs(10);
        assert!(!due(None, after), "origin up");
        assert!(!due(Some(Duration::from_secs(9)), after));
        assert!(due(Some(Duration::from_secs(10)), after));
        assert!(due(Some(Duration::from_secs(600)), after));
        assert!(
            !due(Some(Duration::from_secs(600)), Duration::ZERO),
            "takeover off"
        );
    }

    fn record(id: &str, accepted_at_ms: u64) -> InvocationRecord {
        InvocationRecord {
            id: id.parse().unwrap(),
            function: "echo".parse().unwrap(),
            map: false,
            status: InvocationStatus::Pending,
            input: b"in".to_vec(),
            output: None,
            error: None,
            accepted_at_ms,
            finished_at_ms: None,
            attempts: 1,
        }
    }

    /// The keeper's clock in these tests: after every accept.
    const NOW: u64 = 10_000;

    const ROOMY: CopyCaps = CopyCaps {
        count: 100,
        bytes: u64::MAX,
    };

    /// A copy of finished work is never replaced by a pending one (a late, retried copy), and
    /// the byte cap refuses a new copy as the count cap does.
    #[tokio::test]
    async fn a_finished_copy_stays_finished_and_new_copies_are_held_to_the_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let copies = Copies::open(&store).unwrap();
        let a = "0123456789abcdef0123456789abcdea";
        let mut done = record(a, 1_000);
        done.status = InvocationStatus::Succeeded;
        done.finished_at_ms = Some(2_000);
        copies.hold("x", done, None, NOW, ROOMY).await.unwrap();
        copies
            .hold("x", record(a, 1_000), None, NOW, ROOMY)
            .await
            .unwrap();
        let kept = copies.get(&a.parse().unwrap()).unwrap().unwrap();
        assert_eq!(kept.status, InvocationStatus::Succeeded);
        assert_eq!(copies.len(), 1);

        let tight = CopyCaps {
            count: 100,
            bytes: 10,
        };
        let b = "0123456789abcdef0123456789abcdeb";
        assert!(matches!(
            copies.hold("x", record(b, 1_000), None, NOW, tight).await,
            Err(CopyError::Full { count: 1, .. })
        ));
        // Counted at open as they were kept.
        drop(copies);
        let copies = Copies::open(&store).unwrap();
        assert_eq!(copies.len(), 1);
    }

    #[tokio::test]
    async fn copies_are_kept_to_their_cap_released_found_due_by_origin_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let copies = Copies::open(&store).unwrap();
        let (a, b, c) = (
            "0123456789abcdef0123456789abcdea",
            "0123456789abcdef0123456789abcdeb",
            "0123456789abcdef0123456789abcdec",
        );
        let two = CopyCaps {
            count: 2,
            bytes: u64::MAX,
        };
        copies
            .hold("x", record(a, 1_000), None, NOW, two)
            .await
            .unwrap();
        copies
            .hold("y", record(b, 2_000), None, NOW, two)
            .await
            .unwrap();
        assert!(matches!(
            copies.hold("y", record(c, 3_000), None, NOW, two).await,
            Err(CopyError::Full { count: 2, .. })
        ));
        assert_eq!(
            copies.get(&a.parse().unwrap()).unwrap().unwrap().attempts,
            1
        );

        // x has been away 11 s, y is up.
        let away = |origin: &str| (origin == "x").then(|| Duration::from_secs(11));
        let due_now = copies.due(away, Duration::from_secs(10)).unwrap();
        assert_eq!(due_now.len(), 1);
        assert_eq!((due_now[0].0.as_str(), due_now[0].1.id.as_str()), ("x", a));
        assert!(copies.due(away, Duration::ZERO).unwrap().is_empty());

        copies.release(&[a.parse().unwrap()]).unwrap();
        assert!(copies.get(&a.parse().unwrap()).unwrap().is_none());
        // b was accepted at 2 s; with a 5 s retention it is gone at 8 s.
        assert_eq!(copies.expire(6_000, 5_000).unwrap(), 0);
        assert_eq!(copies.expire(8_000, 5_000).unwrap(), 1);
        assert!(copies.is_empty());
    }

    /// A keyed copy's key finds its invocation after the copy is released (a takeover
    /// releases it too) until the key's retention ends; a refused copy leaves no key, a copy
    /// already kept takes no new key, and a key is never dated after the keeper's clock.
    #[tokio::test]
    async fn a_copys_key_finds_its_invocation_until_the_key_expires_and_a_refused_copy_leaves_none()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let copies = Copies::open(&store).unwrap();
        let a = "0123456789abcdef0123456789abcdea";
        let one = CopyCaps {
            count: 1,
            bytes: u64::MAX,
        };
        let ttl = 5_000;
        let found = |scope: &str, now: u64| {
            copies
                .keyed(scope, now, ttl)
                .unwrap()
                .map(|k| (k.id.as_str().to_owned(), k.accepted_at_ms))
        };
        copies
            .hold("x", record(a, 1_000), Some("echo\0k1"), NOW, one)
            .await
            .unwrap();
        assert_eq!(found("echo\0k1", 2_000), Some((a.to_owned(), 1_000)));
        assert_eq!(found("echo\0k2", 2_000), None);
        // Full: the copy is refused and its key not kept.
        let b = "0123456789abcdef0123456789abcdeb";
        assert!(
            copies
                .hold("x", record(b, 1_000), Some("echo\0k2"), NOW, one)
                .await
                .is_err()
        );
        assert_eq!(found("echo\0k2", 2_000), None);
        // A copy already kept gets no second key.
        copies
            .hold("x", record(a, 1_000), Some("echo\0k3"), NOW, one)
            .await
            .unwrap();
        assert_eq!(found("echo\0k3", 2_000), None);
        // The finished record comes without its key, and the copy is then released: the key
        // stays, until 5 s after the accept.
        let mut done = record(a, 1_000);
        done.status = InvocationStatus::Succeeded;
        done.finished_at_ms = Some(1_500);
        copies.hold("x", done, None, NOW, one).await.unwrap();
        copies.release(&[a.parse().unwrap()]).unwrap();
        assert_eq!(found("echo\0k1", 6_000), Some((a.to_owned(), 1_000)));
        assert_eq!(found("echo\0k1", 6_001), None, "past its retention");
        copies.expire(6_000, ttl).unwrap();
        assert!(copies.keys.get("echo\0k1").unwrap().is_some());
        copies.expire(6_001, ttl).unwrap();
        assert!(copies.keys.get("echo\0k1").unwrap().is_none(), "swept");
        // An accept time from the future is the keeper's now.
        let c = "0123456789abcdef0123456789abcdec";
        copies
            .hold("x", record(c, u64::MAX), Some("echo\0k4"), NOW, one)
            .await
            .unwrap();
        assert_eq!(found("echo\0k4", NOW), Some((c.to_owned(), NOW)));
    }
}
