//! Tenants: who owns functions and invocations, and the record the cluster keeps about each.
//!
//! A tenant record ([`TenantEntry`]) is replicated through the cluster registry exactly like a
//! function's: versioned, last writer wins, removal as a tombstone, so every node converges on
//! the same record whatever order announcements arrive in and a node that was away cannot
//! bring a removed tenant back. Parse, don't validate: a [`TenantName`], [`Weight`] or
//! [`Quotas`] that exists (including one just decoded from disk or from a peer) is valid.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::quota::Quotas;

/// A tenant's name: 1–32 characters of `[a-z0-9-]`, starting and ending with a letter or
/// digit. Stricter than a function name (no `_`, shorter) so it is also a valid DNS label and
/// can be carried in a client certificate's name, a metric label or a store key unescaped.
///
/// Shared, not copied: the runtime keys its fair queue and every granted slot by tenant, so
/// a clone on the invocation path is a reference count, not an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(Arc<str>);

impl TenantName {
    pub const MAX_LEN: usize = 32;
    /// The tenant a fresh node creates, and that functions deployed before tenancy belong to.
    pub const DEFAULT: &'static str = "default";

    pub fn default_tenant() -> Self {
        static DEFAULT: std::sync::LazyLock<TenantName> =
            std::sync::LazyLock::new(|| TenantName(Arc::from(TenantName::DEFAULT)));
        DEFAULT.clone()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_tenant_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > TenantName::MAX_LEN {
        return Err("must be 1 to 32 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only a-z, 0-9 and '-' are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

impl FromStr for TenantName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        check_tenant_name(s).map_err(|reason| Error::InvalidTenantName { reason })?;
        Ok(Self(Arc::from(s)))
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TenantName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A tenant's weight `w_i` in Eq. 6: 1 to [`Weight::MAX`]. Whole numbers are enough to
/// express the ratios an operator means (1:3, 1:2:5) and keep records comparable exactly;
/// the upper bound keeps one tenant from being configured to starve all others by accident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u32);

impl Weight {
    pub const MAX: u32 = 10_000;

    pub fn new(w: u32) -> Result<Self, Error> {
        if w == 0 || w > Self::MAX {
            return Err(Error::InvalidWeight {
                got: w,
                max: Self::MAX,
            });
        }
        Ok(Self(w))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self(1)
    }
}

impl TryFrom<u32> for Weight {
    type Error = Error;

    fn try_from(w: u32) -> Result<Self, Error> {
        Self::new(w)
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

/// A tenant's service class: which latency it is promised, used as the target `T_i` against
/// which Eq. 6's demand factor measures the tenant's recent latency (see [`crate::share`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlaClass {
    /// Interactive traffic: waiting for a slot longer than 50 ms is already late.
    LatencyCritical,
    /// Ordinary request/response functions.
    #[default]
    Standard,
    /// Throughput work that tolerates seconds of queueing.
    Batch,
}

impl SlaClass {
    /// Latency target in milliseconds for the latency the scheduler can act on: the wait
    /// between admission and getting an instance slot. (The guest's own run time is the
    /// function's, not the scheduler's; measuring against it would make every long function
    /// look permanently late.)
    pub fn latency_target_ms(self) -> u32 {
        match self {
            SlaClass::LatencyCritical => 50,
            SlaClass::Standard => 500,
            SlaClass::Batch => 30_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SlaClass::LatencyCritical => "latency-critical",
            SlaClass::Standard => "standard",
            SlaClass::Batch => "batch",
        }
    }
}

impl fmt::Display for SlaClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SlaClass {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "latency-critical" => Ok(SlaClass::LatencyCritical),
            "standard" => Ok(SlaClass::Standard),
            "batch" => Ok(SlaClass::Batch),
            _ => Err(Error::InvalidSlaClass),
        }
    }
}

/// What an administrator sets on a tenant (`tern tenant create|update`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub weight: Weight,
    pub quotas: Quotas,
    pub sla: SlaClass,
}

/// One version of a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: TenantName,
    pub spec: TenantSpec,
    /// 1 for a new tenant, one more on every change (including removal).
    pub version: u64,
    /// When this version was written, on the writing node's clock (a tie-breaker only:
    /// clocks are never compared for anything else).
    pub updated_at_ms: u64,
}

/// A tenant's registry entry, replicated to every node. Last writer wins, ordered by
/// [`TenantEntry::order_key`]; removal is an entry with `removed` set (a tombstone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantEntry {
    pub tenant: Tenant,
    pub removed: bool,
    /// Node where this version was written (breaks ties between concurrent changes of the
    /// same version on two nodes).
    pub origin: String,
}

impl TenantEntry {
    /// The first version of a new tenant.
    pub fn create(name: TenantName, spec: TenantSpec, now_ms: u64, origin: &str) -> Self {
        Self {
            tenant: Tenant {
                name,
                spec,
                version: 1,
                updated_at_ms: now_ms,
            },
            removed: false,
            origin: origin.to_owned(),
        }
    }

    /// The `default` tenant a fresh node creates: default weight and class, and
    /// [`Quotas::unlimited`], so that only the node's own limits bound it until an admin
    /// sets others.
    pub fn default_tenant(now_ms: u64, origin: &str) -> Self {
        Self::create(
            TenantName::default_tenant(),
            TenantSpec {
                quotas: Quotas::unlimited(),
                ..TenantSpec::default()
            },
            now_ms,
            origin,
        )
    }

    /// The next version with a new spec. On a tombstone this re-creates the tenant, with a
    /// version above the tombstone's so the re-creation wins on every node.
    pub fn update(&self, spec: TenantSpec, now_ms: u64, origin: &str) -> Self {
        self.next(Some(spec), false, now_ms, origin)
    }

    /// The tombstone that removes this tenant everywhere.
    pub fn remove(&self, now_ms: u64, origin: &str) -> Self {
        self.next(None, true, now_ms, origin)
    }

    fn next(&self, spec: Option<TenantSpec>, removed: bool, now_ms: u64, origin: &str) -> Self {
        Self {
            tenant: Tenant {
                name: self.tenant.name.clone(),
                spec: spec.unwrap_or_else(|| self.tenant.spec.clone()),
                version: self.tenant.version.saturating_add(1),
                // Never earlier than the version it replaces, even if this node's clock is
                // behind the writer's.
                updated_at_ms: now_ms.max(self.tenant.updated_at_ms),
            },
            removed,
            origin: origin.to_owned(),
        }
    }

    pub fn name(&self) -> &TenantName {
        &self.tenant.name
    }

    pub fn is_live(&self) -> bool {
        !self.removed
    }

    /// Total order of versions of one tenant: higher wins everywhere, so every node ends up
    /// with the same entry whatever order announcements arrive in. Same key as a function's
    /// registry entry.
    pub fn order_key(&self) -> (u64, u64, &str) {
        (self.tenant.version, self.tenant.updated_at_ms, &self.origin)
    }

    /// Whether `self` should replace `current`.
    pub fn supersedes(&self, current: Option<&Self>) -> bool {
        current.is_none_or(|c| self.order_key() > c.order_key())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn name(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    fn entry(version: u64, at: u64, origin: &str, removed: bool) -> TenantEntry {
        TenantEntry {
            tenant: Tenant {
                name: name("acme"),
                spec: TenantSpec::default(),
                version,
                updated_at_ms: at,
            },
            removed,
            origin: origin.into(),
        }
    }

    #[test]
    fn tenant_names_follow_the_dns_label_rule() {
        for ok in ["a", "default", "team-42", "0abc", &"x".repeat(32)] {
            assert_eq!(name(ok).as_str(), ok);
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a b",
            "a/b",
            "é",
            &"x".repeat(33),
        ] {
            assert!(
                matches!(
                    bad.parse::<TenantName>(),
                    Err(Error::InvalidTenantName { .. })
                ),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn decoding_a_tenant_name_validates_it() {
        let back: TenantName = serde_json::from_str("\"team-a\"").unwrap();
        assert_eq!(back, name("team-a"));
        assert!(serde_json::from_str::<TenantName>("\"Team_A\"").is_err());
    }

    #[test]
    fn weight_must_be_positive_and_bounded() {
        assert_eq!(
            Weight::new(0),
            Err(Error::InvalidWeight {
                got: 0,
                max: Weight::MAX
            })
        );
        assert!(Weight::new(Weight::MAX + 1).is_err());
        assert_eq!(Weight::new(3).unwrap().get(), 3);
        assert_eq!(Weight::default().get(), 1);
        assert!(serde_json::from_str::<Weight>("0").is_err());
        assert_eq!(serde_json::from_str::<Weight>("5").unwrap().get(), 5);
    }

    #[test]
    fn sla_classes_parse_from_their_names_and_order_their_targets() {
        for class in [
            SlaClass::LatencyCritical,
            SlaClass::Standard,
            SlaClass::Batch,
        ] {
            assert_eq!(class.as_str().parse::<SlaClass>().unwrap(), class);
            assert_eq!(
                serde_json::to_string(&class).unwrap(),
                format!("\"{class}\"")
            );
        }
        assert_eq!("gold".parse::<SlaClass>(), Err(Error::InvalidSlaClass));
        assert!(
            SlaClass::LatencyCritical.latency_target_ms() < SlaClass::Standard.latency_target_ms()
                && SlaClass::Standard.latency_target_ms() < SlaClass::Batch.latency_target_ms()
        );
    }

    #[test]
    fn the_default_tenant_is_valid_and_named_default() {
        let e = TenantEntry::default_tenant(7, "n1");
        assert_eq!(e.name().as_str(), "default");
        assert_eq!(e.tenant.version, 1);
        assert_eq!(e.tenant.updated_at_ms, 7);
        assert!(e.is_live());
        e.tenant.spec.quotas.validate().unwrap();
        assert_eq!(
            e.tenant.spec.quotas,
            Quotas::unlimited(),
            "only the node's limits bound it"
        );
    }

    #[test]
    fn newer_version_wins_then_time_then_origin() {
        // The same cases as a function's registry entry.
        let a = entry(2, 10, "a", false);
        let b = entry(2, 10, "b", false);
        let older = entry(1, 99, "z", false);
        assert!(a.supersedes(None));
        assert!(b.supersedes(Some(&a)));
        assert!(!a.supersedes(Some(&b)));
        assert!(!a.supersedes(Some(&a)));
        assert!(a.supersedes(Some(&older)));
        assert!(!older.supersedes(Some(&a)));
        let later = entry(2, 11, "a", false);
        assert!(later.supersedes(Some(&b)));
        // A tombstone of a newer version beats the live entry, and the reverse.
        let gone = entry(3, 11, "a", true);
        assert!(gone.supersedes(Some(&b)));
        assert!(!b.supersedes(Some(&gone)));
    }

    #[test]
    fn update_and_remove_produce_versions_that_supersede_their_base() {
        let v1 = TenantEntry::create(name("acme"), TenantSpec::default(), 100, "n1");
        let spec = TenantSpec {
            weight: Weight::new(3).unwrap(),
            ..TenantSpec::default()
        };
        // Written on a node whose clock is behind: the time does not go backwards.
        let v2 = v1.update(spec.clone(), 50, "n2");
        assert_eq!(v2.tenant.version, 2);
        assert_eq!(v2.tenant.updated_at_ms, 100);
        assert_eq!(v2.tenant.spec, spec);
        assert!(v2.supersedes(Some(&v1)));

        let gone = v2.remove(200, "n1");
        assert!(gone.removed && gone.supersedes(Some(&v2)));
        assert_eq!(gone.tenant.spec, spec, "a tombstone keeps the last spec");

        let back = gone.update(TenantSpec::default(), 300, "n3");
        assert!(back.is_live() && back.supersedes(Some(&gone)));
        assert_eq!(back.tenant.version, 4);
    }

    #[test]
    fn entries_round_trip_through_bincode_and_bad_ones_are_refused() {
        let e = TenantEntry::default_tenant(1, "n1");
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&e, cfg).unwrap();
        let (back, _): (TenantEntry, _) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, e);

        let mut json = serde_json::to_value(&e).unwrap();
        json["tenant"]["spec"]["weight"] = 0.into();
        assert!(serde_json::from_value::<TenantEntry>(json).is_err());
        let mut json = serde_json::to_value(&e).unwrap();
        json["tenant"]["name"] = "Not Valid".into();
        assert!(serde_json::from_value::<TenantEntry>(json).is_err());
    }

    proptest! {
        #[test]
        fn parsing_any_string_as_a_tenant_name_never_panics_and_round_trips(s in ".{0,40}") {
            if let Ok(n) = s.parse::<TenantName>() {
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert!(n.as_str().len() <= TenantName::MAX_LEN);
            }
        }

        /// Whatever order announcements arrive in, every node keeps the same entry.
        #[test]
        fn last_writer_wins_converges_in_any_order(
            mut versions in proptest::collection::vec((0u64..4, 0u64..4, 0usize..3), 1..8),
            seed in any::<u64>(),
        ) {
            let origins = ["a", "b", "c"];
            // One node writes one version at one time once, so an order key identifies its
            // content: `removed` is derived from the key rather than drawn independently.
            let entries: Vec<TenantEntry> = versions
                .drain(..)
                .map(|(v, t, o)| {
                    let removed = (v + t + o as u64).is_multiple_of(2);
                    entry(v, t, origins[o], removed)
                })
                .collect();
            let apply = |order: &[usize]| {
                let mut cur: Option<TenantEntry> = None;
                for &i in order {
                    if entries[i].supersedes(cur.as_ref()) {
                        cur = Some(entries[i].clone());
                    }
                }
                cur
            };
            let forward: Vec<usize> = (0..entries.len()).collect();
            let mut shuffled = forward.clone();
            // A seeded Fisher-Yates shuffle; the result must not depend on the order.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(apply(&forward), apply(&shuffled));
        }
    }
}
