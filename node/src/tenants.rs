//! The cluster's tenants as this node keeps them: who may own functions and tokens, with
//! their weight, quotas and SLA class.
//!
//! The records and their merge rule are tern-tenancy's ([`TenantEntry`]: versioned, last
//! writer wins, removal as a tombstone). This module keeps them in memory for the request
//! path, persists every change in the store's `tenants` tree before it is acknowledged or
//! announced, and applies what peers announce. Every node starts with the `default` tenant:
//! the same first version everywhere (written at time 0 by no node), so fresh nodes agree on
//! it without exchanging anything and any change made later supersedes it.

use std::collections::BTreeMap;
use std::sync::RwLock;

use tern_tenancy::{QuotaKind, Quotas, Tenant, TenantEntry, TenantName, TenantSpec};

use crate::error::NodeError;
use crate::store::{Store, StoreError};

/// Largest encoded tenant entry written to the store.
const MAX_ENTRY_BYTES: usize = 4096;

/// The store tree of tenant entries in their current layout.
const TREE: &str = "tenants.2";

/// Tenant entries as nodes before request-rate quotas stored them (tree `tenants`). Read once
/// at start, rewritten in the current layout with no rate limit (what they had) and removed.
/// A separate tree, so no record is ever decoded in the wrong layout.
mod legacy {
    use serde::Deserialize;
    use tern_tenancy::{Quotas, SlaClass, Tenant, TenantName, TenantSpec, Weight};

    pub const TREE: &str = "tenants";

    #[derive(Deserialize)]
    pub struct TenantEntry {
        tenant: LegacyTenant,
        removed: bool,
        origin: String,
    }

    #[derive(Deserialize)]
    struct LegacyTenant {
        name: TenantName,
        spec: LegacySpec,
        version: u64,
        updated_at_ms: u64,
    }

    #[derive(Deserialize)]
    struct LegacySpec {
        weight: Weight,
        quotas: LegacyQuotas,
        sla: SlaClass,
    }

    /// Validated on the way in, as current records are (`Quotas::validate`).
    #[derive(Deserialize)]
    #[serde(try_from = "RawQuotas")]
    struct LegacyQuotas(Quotas);

    #[derive(Deserialize)]
    struct RawQuotas {
        max_concurrent: u32,
        memory_budget_bytes: u64,
        max_queued: u32,
        max_timeout_ms: u32,
        max_functions: u32,
        max_module_bytes: u64,
        max_stored_results: u32,
        max_stored_result_bytes: u64,
    }

    impl TryFrom<RawQuotas> for LegacyQuotas {
        type Error = tern_tenancy::Error;

        fn try_from(r: RawQuotas) -> Result<Self, Self::Error> {
            let q = Quotas {
                max_concurrent: r.max_concurrent,
                memory_budget_bytes: r.memory_budget_bytes,
                max_queued: r.max_queued,
                max_timeout_ms: r.max_timeout_ms,
                max_functions: r.max_functions,
                max_module_bytes: r.max_module_bytes,
                max_stored_results: r.max_stored_results,
                max_stored_result_bytes: r.max_stored_result_bytes,
                max_rate_per_s: u32::MAX,
                rate_burst: u32::MAX,
            };
            q.validate()?;
            Ok(Self(q))
        }
    }

    impl From<TenantEntry> for tern_tenancy::TenantEntry {
        fn from(e: TenantEntry) -> Self {
            Self {
                tenant: Tenant {
                    name: e.tenant.name,
                    spec: TenantSpec {
                        weight: e.tenant.spec.weight,
                        quotas: e.tenant.spec.quotas.0,
                        sla: e.tenant.spec.sla,
                    },
                    version: e.tenant.version,
                    updated_at_ms: e.tenant.updated_at_ms,
                },
                removed: e.removed,
                origin: e.origin,
            }
        }
    }

    #[cfg(test)]
    pub mod encode {
        //! The old layout, written as old nodes wrote it (for the migration test).
        use serde::Serialize;

        #[derive(Serialize)]
        pub struct Entry<'a> {
            pub tenant: Tenant<'a>,
            pub removed: bool,
            pub origin: &'a str,
        }
        #[derive(Serialize)]
        pub struct Tenant<'a> {
            pub name: &'a str,
            pub spec: Spec,
            pub version: u64,
            pub updated_at_ms: u64,
        }
        #[derive(Serialize)]
        pub struct Spec {
            pub weight: u32,
            pub quotas: [u64; 8],
            pub sla: tern_tenancy::SlaClass,
        }
    }
}

/// Every tenant entry this node knows, tombstones included.
pub struct Tenants {
    entries: RwLock<BTreeMap<TenantName, TenantEntry>>,
    tree: sled::Tree,
    store: Store,
    /// This node's name, recorded as the origin of the changes made here.
    origin: String,
}

impl Tenants {
    /// Loads the tenants from the store and makes sure `default` exists.
    pub fn open(store: &Store, origin: &str) -> Result<Self, NodeError> {
        let tree = store.tree(TREE)?;
        let mut entries = BTreeMap::new();
        // A damaged entry is quarantined and left out: the tenant is unknown here (its tokens
        // refused, the safe side) until a peer's copy arrives; `default` is recreated below.
        for entry in store.decoded::<TenantEntry>(&tree, "tenant") {
            let entry = entry?;
            entries.insert(entry.name().clone(), entry);
        }
        let legacy = store.tree(legacy::TREE)?;
        let mut migrated = Vec::new();
        for entry in store.decoded::<legacy::TenantEntry>(&legacy, "tenant (before rate quotas)") {
            let entry = TenantEntry::from(entry?);
            migrated.push(entry.name().clone());
            entries.entry(entry.name().clone()).or_insert(entry);
        }
        let tenants = Self {
            entries: RwLock::new(entries),
            tree,
            store: store.clone(),
            origin: origin.to_owned(),
        };
        // Rewritten in the current layout before the old copies go, so a crash in between
        // only means migrating again.
        for name in &migrated {
            let entry = tenants.read().get(name).cloned();
            if let Some(entry) = entry {
                tenants.persist(&entry)?;
            }
            legacy
                .remove(name.as_str().as_bytes())
                .map_err(StoreError::from)?;
        }
        if !migrated.is_empty() {
            tracing::info!(
                tenants = migrated.len(),
                "tenant records moved to the current layout (no rate quota until one is set)"
            );
        }
        let default = TenantName::default_tenant();
        if tenants.read().get(&default).is_none() {
            let first = TenantEntry::default_tenant(0, "");
            tenants.persist(&first)?;
            tenants.write().insert(default, first);
        }
        Ok(tenants)
    }

    /// The live tenant called `name`, if there is one.
    pub fn get(&self, name: &TenantName) -> Option<Tenant> {
        self.read()
            .get(name)
            .filter(|e| e.is_live())
            .map(|e| e.tenant.clone())
    }

    pub fn is_live(&self, name: &TenantName) -> bool {
        self.read().get(name).is_some_and(TenantEntry::is_live)
    }

    /// Whether `name` is known here as removed (a tombstone), not merely unknown.
    pub fn is_removed(&self, name: &TenantName) -> bool {
        self.read().get(name).is_some_and(|e| !e.is_live())
    }

    /// The live tenants, by name.
    pub fn list(&self) -> Vec<Tenant> {
        self.read()
            .values()
            .filter(|e| e.is_live())
            .map(|e| e.tenant.clone())
            .collect()
    }

    /// Every entry, tombstones included (for peers).
    pub fn entries(&self) -> Vec<TenantEntry> {
        self.read().values().cloned().collect()
    }

    /// Creates tenant `name`. A name that was removed before is created again with a version
    /// above its tombstone, so the new tenant wins on every node. Durable when this returns.
    pub fn create(
        &self,
        name: TenantName,
        spec: TenantSpec,
        now_ms: u64,
    ) -> Result<TenantEntry, NodeError> {
        self.change(&name, |current| match current {
            Some(e) if e.is_live() => Err(NodeError::Conflict(format!(
                "tenant {name} exists; update it instead"
            ))),
            Some(tombstone) => Ok(tombstone.update(spec, now_ms, &self.origin)),
            None => Ok(TenantEntry::create(
                name.clone(),
                spec,
                now_ms,
                &self.origin,
            )),
        })
    }

    /// Replaces the weight, quotas and class of live tenant `name`.
    pub fn update(
        &self,
        name: &TenantName,
        spec: TenantSpec,
        now_ms: u64,
    ) -> Result<TenantEntry, NodeError> {
        self.change(name, |current| match current {
            Some(e) if e.is_live() => Ok(e.update(spec, now_ms, &self.origin)),
            _ => Err(no_such_tenant(name)),
        })
    }

    /// Removes live tenant `name` (a tombstone, replicated like any change). `default` is
    /// never removed: functions deployed without a tenant belong to it.
    pub fn remove(&self, name: &TenantName, now_ms: u64) -> Result<TenantEntry, NodeError> {
        if *name == TenantName::default_tenant() {
            return Err(NodeError::Conflict(
                "the default tenant cannot be removed".into(),
            ));
        }
        self.change(name, |current| match current {
            Some(e) if e.is_live() => Ok(e.remove(now_ms, &self.origin)),
            _ => Err(no_such_tenant(name)),
        })
    }

    /// Merges entries learnt from a peer (last writer wins) and stores what changed; the
    /// entries that changed here.
    pub fn apply(&self, incoming: Vec<TenantEntry>) -> Result<Vec<TenantEntry>, NodeError> {
        let mut changed = Vec::new();
        let mut entries = self.write();
        for entry in incoming {
            if entry.supersedes(entries.get(entry.name())) {
                self.persist(&entry)?;
                entries.insert(entry.name().clone(), entry.clone());
                changed.push(entry);
            }
        }
        Ok(changed)
    }

    /// Computes the next entry of `name` from its current one, stores it, then makes it
    /// visible: all under the write lock, so two changes of one tenant are never numbered
    /// alike on this node.
    fn change(
        &self,
        name: &TenantName,
        next: impl FnOnce(Option<&TenantEntry>) -> Result<TenantEntry, NodeError>,
    ) -> Result<TenantEntry, NodeError> {
        let mut entries = self.write();
        let entry = next(entries.get(name))?;
        self.persist(&entry)?;
        entries.insert(name.clone(), entry.clone());
        Ok(entry)
    }

    fn persist(&self, entry: &TenantEntry) -> Result<(), NodeError> {
        let bytes = tern_wire::encode(entry, MAX_ENTRY_BYTES).map_err(|e| StoreError::Encode {
            what: "tenant",
            detail: e.to_string(),
        })?;
        self.tree
            .insert(entry.name().as_str().as_bytes(), bytes)
            .map_err(StoreError::from)?;
        self.store.flush_blocking()?;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TenantName, TenantEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<TenantName, TenantEntry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn no_such_tenant(name: &TenantName) -> NodeError {
    NodeError::NotFound(format!("no tenant named {name}"))
}

/// The limit `which` sets in `quotas`, as the API names it (for a refusal's message).
pub fn quota_limit(quotas: &Quotas, which: QuotaKind) -> String {
    match which {
        QuotaKind::Concurrency => format!("max_concurrent = {}", quotas.max_concurrent),
        QuotaKind::Memory => format!("memory_budget_bytes = {}", quotas.memory_budget_bytes),
        QuotaKind::Queue => format!("max_queued = {}", quotas.max_queued),
        QuotaKind::Functions => format!("max_functions = {}", quotas.max_functions),
        QuotaKind::ModuleBytes => format!("max_module_bytes = {}", quotas.max_module_bytes),
        QuotaKind::StoredResults => {
            format!("max_stored_results = {}", quotas.max_stored_results)
        }
        QuotaKind::StoredResultBytes => format!(
            "max_stored_result_bytes = {}",
            quotas.max_stored_result_bytes
        ),
        QuotaKind::Timeout => format!("max_timeout_ms = {}", quotas.max_timeout_ms),
        QuotaKind::Rate => format!(
            "max_rate_per_s = {}, rate_burst = {}",
            quotas.max_rate_per_s, quotas.rate_burst
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tern_tenancy::Weight;

    use super::*;

    fn name(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    fn weighted(w: u32) -> TenantSpec {
        TenantSpec {
            weight: Weight::new(w).unwrap(),
            ..TenantSpec::default()
        }
    }

    #[test]
    fn tenants_stored_before_rate_quotas_are_read_migrated_once_and_keep_no_rate_limit() {
        use super::legacy::encode::{Entry, Spec, Tenant};
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let old = Entry {
                tenant: Tenant {
                    name: "acme",
                    spec: Spec {
                        weight: 3,
                        quotas: [7, 1 << 30, 20, 5000, 4, 1 << 20, 9, 1 << 10],
                        sla: tern_tenancy::SlaClass::Batch,
                    },
                    version: 4,
                    updated_at_ms: 1234,
                },
                removed: false,
                origin: "node-a",
            };
            let bytes = tern_wire::encode(&old, MAX_ENTRY_BYTES).unwrap();
            store
                .tree(legacy::TREE)
                .unwrap()
                .insert("acme", bytes)
                .unwrap();
        }
        for _restart in 0..2 {
            let store = Store::open(dir.path()).unwrap();
            let tenants = Tenants::open(&store, "b").unwrap();
            let acme = tenants
                .entries()
                .into_iter()
                .find(|e| e.name().as_str() == "acme")
                .unwrap();
            assert_eq!(acme.tenant.version, 4);
            assert_eq!(acme.origin, "node-a");
            assert_eq!(acme.tenant.spec.weight.get(), 3);
            assert_eq!(acme.tenant.spec.sla, tern_tenancy::SlaClass::Batch);
            let q = &acme.tenant.spec.quotas;
            assert_eq!(
                (q.max_concurrent, q.max_queued, q.max_functions),
                (7, 20, 4)
            );
            assert_eq!(q.max_stored_result_bytes, 1 << 10);
            assert!(q.rate().is_unlimited(), "{q:?}");
            assert!(store.tree(legacy::TREE).unwrap().is_empty());
            assert_eq!(store.quarantined(), 0);
        }
    }

    #[test]
    fn every_node_starts_with_the_same_default_tenant() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ta = Tenants::open(&Store::open(a.path()).unwrap(), "a").unwrap();
        let tb = Tenants::open(&Store::open(b.path()).unwrap(), "b").unwrap();
        assert_eq!(ta.entries(), tb.entries());
        assert_eq!(ta.list().len(), 1);
        assert!(ta.is_live(&TenantName::default_tenant()));
        assert!(matches!(
            ta.remove(&TenantName::default_tenant(), 1),
            Err(NodeError::Conflict(_))
        ));
    }

    #[test]
    fn create_update_remove_and_recreate_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let acme = name("acme");
        {
            let t = Tenants::open(&Store::open(dir.path()).unwrap(), "a").unwrap();
            t.create(acme.clone(), weighted(3), 10).unwrap();
            assert!(matches!(
                t.create(acme.clone(), weighted(1), 11),
                Err(NodeError::Conflict(_))
            ));
            let v2 = t.update(&acme, weighted(5), 12).unwrap();
            assert_eq!(v2.tenant.version, 2);
            assert!(matches!(
                t.update(&name("nobody"), weighted(5), 12),
                Err(NodeError::NotFound(_))
            ));
        }
        let t = Tenants::open(&Store::open(dir.path()).unwrap(), "a").unwrap();
        assert_eq!(t.get(&acme).unwrap().spec.weight.get(), 5);
        let tomb = t.remove(&acme, 13).unwrap();
        assert!(!tomb.is_live());
        assert!(t.get(&acme).is_none());
        assert!(matches!(t.remove(&acme, 14), Err(NodeError::NotFound(_))));
        let again = t.create(acme.clone(), weighted(2), 15).unwrap();
        assert!(
            again.supersedes(Some(&tomb)),
            "re-creation beats the tombstone"
        );
        assert_eq!(t.get(&acme).unwrap().spec.weight.get(), 2);
    }

    #[test]
    fn applying_peer_entries_keeps_the_latest_and_reports_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenants::open(&Store::open(dir.path()).unwrap(), "a").unwrap();
        let v1 = TenantEntry::create(name("acme"), weighted(1), 10, "b");
        let v2 = v1.update(weighted(4), 20, "c");
        assert_eq!(t.apply(vec![v2.clone()]).unwrap(), vec![v2.clone()]);
        assert!(
            t.apply(vec![v1]).unwrap().is_empty(),
            "an older version loses"
        );
        assert_eq!(t.get(&name("acme")).unwrap().spec.weight.get(), 4);
        let gone = v2.remove(30, "b");
        assert_eq!(t.apply(vec![gone.clone()]).unwrap(), vec![gone]);
        assert!(!t.is_live(&name("acme")));
    }
}
