//! Node-to-node data-plane messages: one [`PeerRequest`] frame on a QUIC stream, one
//! [`PeerResponse`] frame back. A stream carries one exchange at a time (it is kept open for
//! later ones: a lane, see tern-cluster's transport), so a module transfer never holds up an
//! invocation or a status update.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use tern_tenancy::{TenantEntry, TenantName, TokenRecord};

use crate::{
    ApiError, FunctionInfo, FunctionName, InvocationId, InvocationRecord, InvokeReply, ModuleHash,
};

/// What one node asks of another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The sender's load and warm modules; published a few times a second.
    Status(NodeStatus),
    /// Registry changes made on (or learnt by) the sender. Answered [`PeerResponse::Ack`]
    /// once applied, or with the first error.
    Announce(Vec<RegistryEntry>),
    /// The receiver's whole registry (anti-entropy when a session comes up).
    Registry,
    /// The bytes of a module, by hash.
    FetchModule(ModuleHash),
    /// Run one MEU here.
    Execute(RemoteMeu),
    /// Tenant entries and bearer-token records created, changed or revoked on (or learnt by)
    /// the sender. Answered [`PeerResponse::Ack`] once stored.
    AnnounceTenancy(TenancyRecords),
    /// The receiver's tenant and token records (anti-entropy, with the registry pull).
    Tenancy,
    /// Keep a copy of an async invocation the sender just accepted, so a live node can run it
    /// if the sender dies before finishing it. Answered [`PeerResponse::Ack`] once durable.
    Replicate(Box<AsyncCopy>),
    /// These async invocations finished (or were taken over): drop their copies, if held.
    /// Answered [`PeerResponse::Ack`].
    Release(Vec<InvocationId>),
    /// The receiver's record of an async invocation (its own, or a copy it holds), if any.
    /// Answered [`PeerResponse::Invocation`].
    Lookup(InvocationId),
    /// The receiver's copy of an async invocation accepted under this idempotency key (as
    /// scoped to its function), if it holds one: asked by a node standing in for the key's
    /// home while the home is away. Answered [`PeerResponse::KeyAccepted`].
    LookupKey(String),
    /// A client call with an idempotency key, sent by the node the caller reached to the
    /// key's home (see [`KeyedCall`]). Answered [`PeerResponse::Output`] for a sync call,
    /// [`PeerResponse::Accepted`] for an async one, or an error.
    Keyed(Box<KeyedCall>),
    /// The result of a sync keyed call the sender ran as the key's home: kept by the
    /// receiver, the member that takes the key's calls while the sender is away, so a retry
    /// there (or at the sender after a restart) is answered with this run instead of a second
    /// one. Answered [`PeerResponse::Ack`].
    KeepResult(Box<KeyedResult>),
    /// The result the receiver keeps of a sync call under this idempotency key (scoped to
    /// its function), if any: asked, of every peer up, by a node standing in for an away home
    /// and by a home that restarted (and so forgot the results it gave) before it runs a call.
    /// Answered [`PeerResponse::KeptResult`], or `unavailable` while the receiver is running
    /// the call itself.
    LookupResult(String),
}

/// The answer to a [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Ack,
    Registry(Vec<RegistryEntry>),
    Module(Vec<u8>),
    Executed(RemoteOutcome),
    Error(ApiError),
    Tenancy(TenancyRecords),
    Invocation(Option<Box<InvocationRecord>>),
    /// A sync keyed call's result (run or replayed at the key's home).
    Output(InvokeReply),
    /// The id of an async keyed call (accepted now, or earlier under the same key).
    Accepted(InvocationId),
    /// The async invocation accepted under a key, as its keeper knows it (an answer to
    /// [`PeerRequest::LookupKey`]).
    KeyAccepted(Option<AcceptedKey>),
    /// A sync keyed call's result as the receiver keeps it (an answer to
    /// [`PeerRequest::LookupResult`]).
    KeptResult(Option<Box<KeyedResult>>),
}

/// A sync call's result under an idempotency key, as its home answered it: the output, or an
/// error from running it (never a refusal such as `overloaded`, which ran nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedResult {
    /// The idempotency key scoped to its function (`tern_link::key_home::scope`).
    pub scope: String,
    pub result: Result<InvokeReply, ApiError>,
}

/// An async invocation accepted under an idempotency key, as the keeper of its copy indexed it
/// (kept after the copy itself is released, for as long as the key lives).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedKey {
    pub id: InvocationId,
    /// When it was accepted (the key expires `result_ttl_secs` after).
    pub accepted_at_ms: u64,
}

/// A copy of an async invocation for the peer that keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AsyncCopy {
    pub record: InvocationRecord,
    /// The idempotency key it was accepted under, scoped to its function: a node that stands
    /// in for the key's home while the home is away finds the invocation by it. `None` for a
    /// call without a key, and for the finished record (the keeper keeps the key it has).
    pub key: Option<String>,
}

/// A call with an idempotency key. Every node sends the keyed calls it is given to one home
/// per key (the same on every node that sees the same members up), which runs the call once
/// and answers every retry with that run, so a caller that retries on another node never
/// runs it twice. The entry node has already checked who is calling and what is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyedCall {
    pub key: String,
    /// The function as the entry node knows it: a home that has not learnt of it yet (a
    /// deploy still spreading) applies it before the call.
    pub entry: RegistryEntry,
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    pub map: bool,
    pub mode: KeyedMode,
    /// The entry node's span of the call, so the home's spans join its trace.
    pub trace: Option<crate::TraceParent>,
}

/// Whether a [`KeyedCall`] waits for its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyedMode {
    /// Answered with the result; `timeout_ms` is the caller's wait (the call carries on
    /// past it, and a retry with the key gets its result unless the home's key cache was
    /// full). With `entry_keeps`, the entry keeps the output it is answered with, so the
    /// home need not copy it to another node (it still does if no caller is left to take
    /// the answer, or the run failed).
    Sync {
        timeout_ms: Option<u32>,
        entry_keeps: bool,
    },
    /// Answered with the invocation's id once it is accepted.
    Async,
}

/// Who may use the cluster: tenant entries (versioned, tombstoned, last writer wins) and
/// bearer-token records (only hashes of secrets; a revocation wins). Replicated to every node
/// like the function registry; the receiver applies tenants before tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TenancyRecords {
    pub tenants: Vec<TenantEntry>,
    pub tokens: Vec<TokenRecord>,
}

impl TenancyRecords {
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.tokens.is_empty()
    }
}

/// One function's registry entry, replicated to every node. Last writer wins, ordered by
/// [`RegistryEntry::order_key`]; a removal is an entry with `removed` set (a tombstone), so a
/// node that was away cannot bring a removed function back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub info: FunctionInfo,
    pub removed: bool,
    /// Node where this version was deployed or removed (breaks ties between concurrent deploys
    /// of the same version on two nodes).
    pub origin: String,
}

impl RegistryEntry {
    /// Total order of versions of one function: higher wins everywhere, so every node ends up
    /// with the same entry whatever order announcements arrive in.
    pub fn order_key(&self) -> (u64, u64, &str) {
        (self.info.version, self.info.deployed_at_ms, &self.origin)
    }

    /// Whether `self` should replace `current`.
    pub fn supersedes(&self, current: Option<&RegistryEntry>) -> bool {
        current.is_none_or(|c| self.order_key() > c.order_key())
    }
}

/// A node's load as published to its peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// Node class: functions needing more memory or time than it admits are not placed there.
    pub class: NodeClass,
    pub max_memory_mb: u32,
    pub max_timeout_ms: u32,
    /// Invocations running or waiting on the node: admitted there, less the MEUs it forwarded
    /// to peers and has not had back (they hold their permits at the entry).
    pub queue_depth: u32,
    /// Admission capacity (queue_cap), less the same forwarded MEUs: `queue_cap − queue_depth`
    /// is the node's free admission permits.
    pub queue_cap: u32,
    /// Modules of the functions installed (callable) on the node.
    pub ready: Vec<ModuleHash>,
    /// Modules loaded (warm) on the node.
    pub warm: Vec<ModuleHash>,
    /// CPU use of the node process since the previous status, in percent of one core.
    pub cpu_percent: u32,
    /// Resident memory of the node process.
    pub memory_bytes: u64,
    /// Mean invocation latency over the last interval, microseconds (0 = no traffic).
    pub recent_mean_us: u64,
    /// Increases with every status from one boot of the node.
    pub seq: u64,
    /// Each tenant's demand here, for tenants with a cluster-wide quota and any demand,
    /// busiest first, at most [`MAX_TENANT_DEMANDS`]: the members split each tenant's
    /// cluster-wide quotas by these.
    pub tenant_demand: Vec<TenantDemand>,
}

/// The most tenants a status reports demand for (a receiver reads no more than these).
pub const MAX_TENANT_DEMANDS: usize = 256;

/// One tenant's recent demand at a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantDemand {
    pub tenant: TenantName,
    /// Calls a second over the last status interval, admitted or not (splits the rate).
    pub per_s: u64,
    /// Guests running or waiting for an instance slot (splits `max_concurrent`).
    pub slots: u64,
    /// Of those, the guests running (the others' parts leave room for them).
    pub running: u64,
}

/// One MEU sent to another node to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteMeu {
    /// The request id of the invocation: the same on every attempt, so reruns after a failover
    /// are visible in logs and traces.
    pub request_id: String,
    pub function: FunctionName,
    /// The version the sender resolved; the receiver refuses to run a different one.
    pub hash: ModuleHash,
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    pub items: u32,
    /// 1 for the first try, then counts reruns after a lost node.
    pub attempt: u32,
    /// Microseconds the unit had already waited on the sender since it was accepted: the
    /// function's time limit runs from acceptance, so the receiver starts it with only the
    /// rest (a duration, not a time: the nodes' clocks need not agree).
    pub waited_us: u64,
    /// The sender's forwarding span, when the invocation is traced: the receiver's spans join
    /// the sender's trace.
    pub trace: Option<crate::TraceParent>,
}

impl RemoteMeu {
    /// When the unit counts as accepted on a receiver whose clock reads `now`: what it
    /// already waited on the sender is spent, but at most `limit` (the function's time
    /// limit), so a peer's figure cannot reach back further than the limit needs.
    pub fn accepted_at(
        &self,
        now: std::time::Instant,
        limit: std::time::Duration,
    ) -> std::time::Instant {
        let waited = std::time::Duration::from_micros(self.waited_us).min(limit);
        now.checked_sub(waited).unwrap_or(now)
    }
}

/// What running a [`RemoteMeu`] produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteOutcome {
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    pub cold_start: bool,
    pub timings: Timings,
    pub node: String,
    /// The peer's own time on the MEU, µs: from its request reaching the peer's handler to
    /// the answer. The sender's round trip minus this is the way there and back.
    pub peer_us: u64,
}

/// What a node can run: the paper's two platforms (edge devices and servers, Eq. 2 of the
/// paper bounds a function's memory and time by its platform) plus a node that sets its own
/// limits. Sent to peers as its name, so a status reads the same in JSON and on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NodeClass {
    /// The node's own `max_memory_mb` / `max_timeout_ms`.
    #[default]
    Standard,
    /// An edge device: 128 MiB, 50 ms.
    EdgeSmall,
    /// A server for CPU bursts: 512 MiB, 900 ms.
    CpuBurst,
}

impl NodeClass {
    pub const ALL: [NodeClass; 3] = [
        NodeClass::Standard,
        NodeClass::EdgeSmall,
        NodeClass::CpuBurst,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NodeClass::Standard => "standard",
            NodeClass::EdgeSmall => "edge-small",
            NodeClass::CpuBurst => "cpu-burst",
        }
    }

    /// The class's fixed (memory MiB, time ms) limits; `None` for `standard`, whose limits are
    /// the node's configured maximums.
    pub fn fixed_limits(self) -> Option<(u32, u32)> {
        match self {
            NodeClass::Standard => None,
            NodeClass::EdgeSmall => Some((128, 50)),
            NodeClass::CpuBurst => Some((512, 900)),
        }
    }
}

impl fmt::Display for NodeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NodeClass {
    type Err = crate::WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| crate::WireError::Invalid {
                what: "node class",
                reason: format!("{s:?} is not standard, edge-small or cpu-burst"),
            })
    }
}

impl Serialize for NodeClass {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for NodeClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the time of one MEU went, in microseconds: the terms of the paper's Eq. 3 (latency
/// = preprocessing + either loading the module or reusing a loaded one + instantiation, plus
/// the guest's execution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Decoding, verifying and compiling the module (the paper's T_pre). Tern compiles at
    /// deploy, before any MEU runs, so an MEU's is always 0 (the compile time is the
    /// node's `tern_compile_seconds`); the term keeps the five-term wire layout.
    pub pre_us: u64,
    /// Loading (or compiling) the module when it was not warm.
    pub load_us: u64,
    /// Finding and resetting a reusable instance slot.
    pub reuse_us: u64,
    /// Instantiating the module in that slot.
    pub inst_us: u64,
    /// Running the guest.
    pub exec_us: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{decode, encode};

    fn entry(version: u64, at: u64, origin: &str, removed: bool) -> RegistryEntry {
        RegistryEntry {
            info: FunctionInfo {
                name: "f".parse().unwrap(),
                hash: ModuleHash([7; 32]),
                version,
                timeout_ms: 100,
                memory_mb: 64,
                size_bytes: 10,
                deployed_at_ms: at,
                max_instances: None,
            },
            removed,
            origin: origin.into(),
        }
    }

    #[test]
    fn last_writer_wins_is_a_total_order() {
        let a = entry(2, 10, "a", false);
        let b = entry(2, 10, "b", false);
        let older = entry(1, 99, "z", false);
        assert!(a.supersedes(None));
        assert!(b.supersedes(Some(&a)));
        assert!(!a.supersedes(Some(&b)));
        assert!(!a.supersedes(Some(&a)));
        assert!(a.supersedes(Some(&older)));
        assert!(!older.supersedes(Some(&a)));
        // A tombstone of a newer version beats the live entry, and the reverse.
        let gone = entry(3, 11, "a", true);
        assert!(gone.supersedes(Some(&b)));
        assert!(!b.supersedes(Some(&gone)));
    }

    /// A receiver starts a forwarded unit with only what is left of its time limit, and no
    /// figure from a peer takes more than the whole limit.
    #[test]
    fn a_forwarded_units_wait_on_its_sender_is_spent_up_to_the_whole_limit() {
        use std::time::{Duration, Instant};
        let now = Instant::now();
        let limit = Duration::from_millis(50);
        let meu = |waited_us| RemoteMeu {
            request_id: "r".into(),
            function: "f".parse().unwrap(),
            hash: ModuleHash([1; 32]),
            input: Vec::new(),
            items: 1,
            attempt: 1,
            waited_us,
            trace: None,
        };
        assert_eq!(meu(0).accepted_at(now, limit), now);
        assert_eq!(
            meu(20_000).accepted_at(now, limit),
            now - Duration::from_millis(20)
        );
        assert_eq!(meu(u64::MAX).accepted_at(now, limit), now - limit);
    }

    #[test]
    fn every_message_round_trips_and_garbage_is_a_typed_error() {
        let msgs = vec![
            PeerRequest::Status(NodeStatus {
                node: "a".into(),
                warm: vec![ModuleHash([1; 32])],
                seq: 9,
                ..NodeStatus::default()
            }),
            PeerRequest::Announce(vec![entry(1, 2, "a", false)]),
            PeerRequest::Registry,
            PeerRequest::FetchModule(ModuleHash([3; 32])),
            PeerRequest::Execute(RemoteMeu {
                request_id: "r".into(),
                function: "f".parse().unwrap(),
                hash: ModuleHash([4; 32]),
                input: b"hi".to_vec(),
                items: 1,
                attempt: 1,
                waited_us: 1_500,
                trace: Some(crate::TraceParent {
                    trace_id: [5; 16],
                    parent_id: [6; 8],
                    flags: 1,
                }),
            }),
            PeerRequest::Release(vec!["0123456789abcdef0123456789abcdef".parse().unwrap()]),
            PeerRequest::Lookup("0123456789abcdef0123456789abcdef".parse().unwrap()),
            PeerRequest::Keyed(Box::new(KeyedCall {
                key: "order-17".into(),
                entry: entry(1, 2, "a", false),
                input: b"hi".to_vec(),
                map: true,
                mode: KeyedMode::Sync {
                    timeout_ms: Some(500),
                    entry_keeps: true,
                },
                trace: None,
            })),
        ];
        for m in &msgs {
            let bytes = encode(m, 1 << 20).unwrap();
            assert_eq!(&decode::<PeerRequest>(&bytes, 1 << 20).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(decode::<PeerRequest>(&bytes[..cut], 1 << 20).is_err());
            }
        }
        let bad_name = encode(&(4u32, "r", "Bad Name"), 1 << 20).unwrap();
        assert!(decode::<PeerRequest>(&bad_name, 1 << 20).is_err());
    }

    #[test]
    fn node_class_crosses_the_wire_as_its_name_and_unknown_names_are_typed_errors() {
        for class in NodeClass::ALL {
            // The bytes of the name as a string: a status from a node that sent `class` as a
            // plain string decodes the same.
            let bytes = encode(&class, 64).unwrap();
            assert_eq!(bytes, encode(&class.name().to_owned(), 64).unwrap());
            assert_eq!(decode::<NodeClass>(&bytes, 64).unwrap(), class);
            assert_eq!(class.name().parse::<NodeClass>().unwrap(), class);
            assert_eq!(
                serde_json::to_string(&class).unwrap(),
                format!("\"{class}\"")
            );
        }
        let unknown = encode(&"gpu-huge".to_owned(), 64).unwrap();
        assert!(decode::<NodeClass>(&unknown, 64).is_err());
        assert!(matches!(
            "".parse::<NodeClass>(),
            Err(crate::WireError::Invalid {
                what: "node class",
                ..
            })
        ));
    }

    #[test]
    fn timings_encode_as_the_five_unlabelled_terms_they_replace() {
        let t = Timings {
            pre_us: 1,
            load_us: 2,
            reuse_us: 3,
            inst_us: 4,
            exec_us: 5,
        };
        let bytes = encode(&t, 64).unwrap();
        assert_eq!(bytes, encode(&[1u64, 2, 3, 4, 5], 64).unwrap());
        assert_eq!(decode::<Timings>(&bytes, 64).unwrap(), t);
    }
}
