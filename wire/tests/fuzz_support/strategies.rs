//! proptest strategies: arbitrary *valid* values of every message type, and the raw material
//! (bytes, text, mutations) of the fuzzing properties.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use tern_wire::api::{ErrorCode, FunctionInfo, InvocationStatus};
use tern_wire::peer::{
    NodeStatus, PeerRequest, PeerResponse, RegistryEntry, RemoteMeu, RemoteOutcome, TenancyRecords,
    TenantDemand,
};
use tern_wire::{
    ApiError, ClientOp, ClientReply, ClientRequest, ClientResponse, FunctionName, InvocationId,
    InvocationRecord, InvokeReply, ModuleHash, NodeClass, Timings,
};

// Scalars biased to the interesting ones: bincode varints change width at 251, 2^16, 2^32.

pub fn num64() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=260,
        Just(u64::MAX),
        select(vec![250u64, 251, 65_535, 65_536, u32::MAX as u64, 1 << 32]),
        any::<u64>(),
    ]
}

pub fn num32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=260, Just(u32::MAX), any::<u32>()]
}

/// Payload bytes: mostly short, sometimes long enough for a 3-byte length prefix.
pub fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => vec(any::<u8>(), 0..24), 1 => vec(any::<u8>(), 250..320)]
}

/// Free text (node names, messages, tokens): ASCII, any Unicode, or empty.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9 -]{0,12}", "(?s).{0,12}", Just(String::new())]
}

/// Bytes that are not uniformly random: small values (valid enum tags, short lengths, bools)
/// are overrepresented, and the varint markers 251–253 too, so decoding gets past the first
/// byte more often.
pub fn wire_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![3 => any::<u8>(), 3 => 0u8..8, 1 => 251u8..=253, 1 => b'a'..=b'z'],
        0..=max_len,
    )
}

pub fn function_name() -> impl Strategy<Value = FunctionName> {
    "[a-z0-9][a-z0-9_-]{0,63}".prop_map(|s| s.parse().expect("strategy yields valid names"))
}

pub fn invocation_id() -> impl Strategy<Value = InvocationId> {
    prop_oneof![
        "[0-9a-z-]{1,64}".prop_map(|s| s.parse().expect("strategy yields valid ids")),
        (any::<u64>(), any::<u64>()).prop_map(|(p, s)| InvocationId::from_parts(p, s)),
    ]
}

pub fn module_hash() -> impl Strategy<Value = ModuleHash> {
    any::<[u8; 32]>().prop_map(ModuleHash)
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ErrorCode::ALL.to_vec())
}

pub fn api_error() -> impl Strategy<Value = ApiError> {
    (error_code(), text()).prop_map(|(code, message)| ApiError { code, message })
}

pub fn node_class() -> impl Strategy<Value = NodeClass> {
    select(NodeClass::ALL.to_vec())
}

pub fn timings() -> impl Strategy<Value = Timings> {
    (num64(), num64(), num64(), num64(), num64()).prop_map(
        |(pre_us, load_us, reuse_us, inst_us, exec_us)| Timings {
            pre_us,
            load_us,
            reuse_us,
            inst_us,
            exec_us,
        },
    )
}

pub fn function_info() -> impl Strategy<Value = FunctionInfo> {
    (
        function_name(),
        module_hash(),
        num64(),
        num32(),
        num32(),
        num64(),
        num64(),
        proptest::option::of(num32()),
    )
        .prop_map(
            |(
                name,
                hash,
                version,
                timeout_ms,
                memory_mb,
                size_bytes,
                deployed_at_ms,
                max_instances,
            )| {
                FunctionInfo {
                    name,
                    hash,
                    version,
                    timeout_ms,
                    memory_mb,
                    size_bytes,
                    deployed_at_ms,
                    max_instances,
                }
            },
        )
}

pub fn registry_entry() -> impl Strategy<Value = RegistryEntry> {
    (function_info(), any::<bool>(), text()).prop_map(|(info, removed, origin)| RegistryEntry {
        info,
        removed,
        origin,
    })
}

pub fn node_status() -> impl Strategy<Value = NodeStatus> {
    (
        (text(), node_class(), num32(), num32(), num32(), num32()),
        (
            vec(module_hash(), 0..4),
            vec(module_hash(), 0..4),
            num32(),
            num64(),
            num64(),
            num64(),
        ),
        vec(
            (
                select(vec!["default", "acme", "a-b-c"]),
                num64(),
                num64(),
                num64(),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(
                (node, class, max_memory_mb, max_timeout_ms, queue_depth, queue_cap),
                (ready, warm, cpu_percent, memory_bytes, recent_mean_us, seq),
                demand,
            )| NodeStatus {
                node,
                class,
                max_memory_mb,
                max_timeout_ms,
                queue_depth,
                queue_cap,
                ready,
                warm,
                cpu_percent,
                memory_bytes,
                recent_mean_us,
                seq,
                tenant_demand: demand
                    .into_iter()
                    .map(|(tenant, per_s, slots, running)| TenantDemand {
                        tenant: tenant.parse().expect("valid tenant name"),
                        per_s,
                        slots,
                        running,
                    })
                    .collect(),
            },
        )
}

pub fn remote_meu() -> impl Strategy<Value = RemoteMeu> {
    (
        text(),
        function_name(),
        module_hash(),
        payload(),
        num32(),
        num32(),
        num64(),
        proptest::option::of(trace_parent()),
    )
        .prop_map(
            |(request_id, function, hash, input, items, attempt, waited_us, trace)| RemoteMeu {
                request_id,
                function,
                hash,
                input,
                items,
                attempt,
                waited_us,
                trace,
            },
        )
}

pub fn remote_outcome() -> impl Strategy<Value = RemoteOutcome> {
    (payload(), any::<bool>(), timings(), text(), num64()).prop_map(
        |(output, cold_start, timings, node, peer_us)| RemoteOutcome {
            output,
            cold_start,
            timings,
            node,
            peer_us,
        },
    )
}

/// Any valid token record (built through its serialized form: its hash is private).
pub fn tenant_entry() -> impl Strategy<Value = tern_tenancy::TenantEntry> {
    (
        select(vec!["default", "acme", "a-b-c"]),
        1u32..=tern_tenancy::Weight::MAX,
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        select(vec!["a", "node-7"]),
    )
        .prop_map(|(name, weight, version, at, removed, origin)| {
            let mut entry = tern_tenancy::TenantEntry::create(
                name.parse().expect("valid tenant name"),
                tern_tenancy::TenantSpec {
                    weight: tern_tenancy::Weight::new(weight).expect("weight in range"),
                    ..Default::default()
                },
                at,
                origin,
            );
            entry.tenant.version = version;
            entry.removed = removed;
            entry
        })
}

pub fn tenancy_records() -> impl Strategy<Value = TenancyRecords> {
    (vec(tenant_entry(), 0..3), vec(token_record(), 0..4))
        .prop_map(|(tenants, tokens)| TenancyRecords { tenants, tokens })
}

pub fn token_record() -> impl Strategy<Value = tern_tenancy::TokenRecord> {
    (
        any::<u64>(),
        select(vec!["default", "team-a", "z"]),
        select(vec!["admin", "developer", "invoker"]),
        any::<u64>(),
        proptest::option::of(any::<u64>()),
        any::<[u8; 32]>(),
    )
        .prop_map(|(id, tenant, role, created, revoked, hash)| {
            serde_json::from_value(serde_json::json!({
                "id": format!("{id:016x}"),
                "tenant": tenant,
                "role": role,
                "created_at_ms": created,
                "revoked_at_ms": revoked,
                "hash": hash.to_vec(),
            }))
            .expect("valid token record")
        })
}

pub fn peer_request() -> impl Strategy<Value = PeerRequest> {
    prop_oneof![
        node_status().prop_map(PeerRequest::Status),
        vec(registry_entry(), 0..4).prop_map(PeerRequest::Announce),
        Just(PeerRequest::Registry),
        module_hash().prop_map(PeerRequest::FetchModule),
        remote_meu().prop_map(PeerRequest::Execute),
        tenancy_records().prop_map(PeerRequest::AnnounceTenancy),
        Just(PeerRequest::Tenancy),
        (invocation_record(), proptest::option::of("[ -~]{1,40}")).prop_map(|(record, key)| {
            PeerRequest::Replicate(Box::new(tern_wire::peer::AsyncCopy { record, key }))
        }),
        vec(invocation_id(), 0..4).prop_map(PeerRequest::Release),
        invocation_id().prop_map(PeerRequest::Lookup),
        "[ -~]{0,40}".prop_map(PeerRequest::LookupKey),
        keyed_call().prop_map(|c| PeerRequest::Keyed(Box::new(c))),
        keyed_result().prop_map(|r| PeerRequest::KeepResult(Box::new(r))),
        "[ -~]{0,40}".prop_map(PeerRequest::LookupResult),
    ]
}

pub fn keyed_result() -> impl Strategy<Value = tern_wire::peer::KeyedResult> {
    (
        "[ -~]{0,40}",
        prop_oneof![invoke_reply().prop_map(Ok), api_error().prop_map(Err)],
    )
        .prop_map(|(scope, result)| tern_wire::peer::KeyedResult { scope, result })
}

pub fn keyed_call() -> impl Strategy<Value = tern_wire::peer::KeyedCall> {
    use tern_wire::peer::{KeyedCall, KeyedMode};
    (
        text(),
        registry_entry(),
        payload(),
        any::<bool>(),
        prop_oneof![
            (proptest::option::of(num32()), any::<bool>()).prop_map(|(timeout_ms, entry_keeps)| {
                KeyedMode::Sync {
                    timeout_ms,
                    entry_keeps,
                }
            }),
            Just(KeyedMode::Async),
        ],
        proptest::option::of(trace_parent()),
    )
        .prop_map(|(key, entry, input, map, mode, trace)| KeyedCall {
            key,
            entry,
            input,
            map,
            mode,
            trace,
        })
}

pub fn invoke_reply() -> impl Strategy<Value = InvokeReply> {
    (
        payload(),
        text(),
        any::<bool>(),
        num32(),
        num64(),
        any::<bool>(),
    )
        .prop_map(
            |(output, node, cold_start, meus, duration_us, replayed)| InvokeReply {
                output,
                node,
                cold_start,
                meus,
                duration_us,
                replayed,
            },
        )
}

pub fn peer_response() -> impl Strategy<Value = PeerResponse> {
    prop_oneof![
        Just(PeerResponse::Ack),
        vec(registry_entry(), 0..4).prop_map(PeerResponse::Registry),
        payload().prop_map(PeerResponse::Module),
        remote_outcome().prop_map(PeerResponse::Executed),
        api_error().prop_map(PeerResponse::Error),
        tenancy_records().prop_map(PeerResponse::Tenancy),
        proptest::option::of(invocation_record())
            .prop_map(|r| PeerResponse::Invocation(r.map(Box::new))),
        invoke_reply().prop_map(PeerResponse::Output),
        invocation_id().prop_map(PeerResponse::Accepted),
        proptest::option::of((invocation_id(), any::<u64>())).prop_map(|k| {
            PeerResponse::KeyAccepted(
                k.map(|(id, accepted_at_ms)| tern_wire::peer::AcceptedKey { id, accepted_at_ms }),
            )
        }),
        proptest::option::of(keyed_result())
            .prop_map(|r| PeerResponse::KeptResult(r.map(Box::new))),
    ]
}

pub fn invocation_status() -> impl Strategy<Value = InvocationStatus> {
    select(vec![
        InvocationStatus::Pending,
        InvocationStatus::Succeeded,
        InvocationStatus::Failed,
    ])
}

pub fn invocation_record() -> impl Strategy<Value = InvocationRecord> {
    (
        invocation_id(),
        function_name(),
        any::<bool>(),
        invocation_status(),
        payload(),
        proptest::option::of(payload()),
        proptest::option::of(api_error()),
        num64(),
        proptest::option::of(num64()),
        num32(),
    )
        .prop_map(
            |(
                id,
                function,
                map,
                status,
                input,
                output,
                error,
                accepted_at_ms,
                finished_at_ms,
                attempts,
            )| {
                InvocationRecord {
                    id,
                    function,
                    map,
                    status,
                    input,
                    output,
                    error,
                    accepted_at_ms,
                    finished_at_ms,
                    attempts,
                }
            },
        )
}

/// Keys as clients send them; the decoder does not check them (the node does), so any text.
fn maybe_key() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof!["[!-~]{1,128}", text()])
}

pub fn client_op() -> impl Strategy<Value = ClientOp> {
    let opt32 = || proptest::option::of(num32());
    prop_oneof![
        (function_name(), payload(), opt32(), opt32(), opt32()).prop_map(
            |(name, module, timeout_ms, memory_mb, max_instances)| ClientOp::Deploy {
                name: name.into(),
                module,
                timeout_ms,
                memory_mb,
                max_instances,
            }
        ),
        (
            function_name(),
            payload(),
            any::<bool>(),
            maybe_key(),
            opt32()
        )
            .prop_map(
                |(name, input, map, idempotency_key, timeout_ms)| ClientOp::Invoke {
                    name: name.into(),
                    input,
                    map,
                    idempotency_key,
                    timeout_ms,
                }
            ),
        (function_name(), payload(), any::<bool>(), maybe_key()).prop_map(
            |(name, input, map, idempotency_key)| ClientOp::InvokeAsync {
                name: name.into(),
                input,
                map,
                idempotency_key,
            }
        ),
        invocation_id().prop_map(|id| ClientOp::Result { id }),
        Just(ClientOp::List),
        function_name().prop_map(|name| ClientOp::Remove { name: name.into() }),
    ]
}

pub fn client_request() -> impl Strategy<Value = ClientRequest> {
    (
        proptest::option::of(text()),
        client_op(),
        proptest::option::of(trace_parent()),
    )
        .prop_map(|(token, op, trace)| ClientRequest { token, op, trace })
}

pub fn trace_parent() -> impl Strategy<Value = tern_wire::TraceParent> {
    (any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>()).prop_map(|(trace_id, parent_id, flags)| {
        tern_wire::TraceParent {
            trace_id,
            parent_id,
            flags,
        }
    })
}

pub fn client_reply() -> impl Strategy<Value = ClientReply> {
    prop_oneof![
        function_info().prop_map(ClientReply::Deployed),
        invoke_reply().prop_map(ClientReply::Output),
        (invocation_id(), text()).prop_map(|(id, node)| ClientReply::Accepted { id, node }),
        invocation_record().prop_map(ClientReply::Invocation),
        vec(function_info(), 0..4).prop_map(ClientReply::Functions),
        function_info().prop_map(ClientReply::Removed),
    ]
}

pub fn client_response() -> impl Strategy<Value = ClientResponse> {
    prop_oneof![
        3 => client_reply().prop_map(ClientResponse::Ok),
        1 => api_error().prop_map(ClientResponse::Err),
    ]
}

/// One edit of a seed. Positions are taken modulo the length at the time (shrinking moves
/// them towards the start).
#[derive(Clone, Debug)]
pub enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// Keep only a prefix shorter than the input.
    Truncate(usize),
    /// Append bytes.
    Extend(Vec<u8>),
    Insert(usize, Vec<u8>),
    /// Remove up to 16 bytes from a position.
    Remove(usize, usize),
    /// Overwrite from a position with a 9-byte varint claiming a huge length (a length bomb
    /// when it lands on a length prefix).
    LengthBomb(usize, u64),
    /// Replace everything from a position with the tail of another seed (any kind): (position,
    /// donor seed, donor position).
    Splice(usize, usize, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = || any::<usize>();
    prop_oneof![
        3 => (pos(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (pos(), prop_oneof![any::<u8>(), select(vec![0u8, 1, 2, 5, 250, 251, 252, 253, 255])])
            .prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => pos().prop_map(Mutation::Truncate),
        1 => wire_bytes(16).prop_map(Mutation::Extend),
        1 => (pos(), wire_bytes(16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (pos(), 1usize..=16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (pos(), prop_oneof![Just(u64::MAX), (1u64 << 26)..=u64::MAX, 300u64..(1 << 26)])
            .prop_map(|(i, n)| Mutation::LengthBomb(i, n)),
        1 => (pos(), pos(), pos()).prop_map(|(a, s, b)| Mutation::Splice(a, s, b)),
    ]
}

/// `pos` as a position in `0..len` (0 when `len` is 0).
fn at(pos: usize, len: usize) -> usize {
    pos.checked_rem(len).unwrap_or(0)
}

impl Mutation {
    /// Applies the edit; `donors` are the splice donors (not empty).
    pub fn apply(&self, bytes: &mut Vec<u8>, donors: &[Vec<u8>]) {
        let len = bytes.len();
        match self {
            Mutation::FlipBit(i, bit) => {
                if len > 0 {
                    bytes[at(*i, len)] ^= 1 << bit;
                }
            }
            Mutation::SetByte(i, v) => {
                if len > 0 {
                    bytes[at(*i, len)] = *v;
                }
            }
            Mutation::Truncate(i) => bytes.truncate(at(*i, len)),
            Mutation::Extend(more) => bytes.extend_from_slice(more),
            Mutation::Insert(i, more) => {
                let p = at(*i, len + 1);
                bytes.splice(p..p, more.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let p = at(*i, len);
                bytes.drain(p..(p + n).min(len));
            }
            Mutation::LengthBomb(i, n) => {
                let p = at(*i, len + 1);
                let mut bomb = vec![253u8];
                bomb.extend_from_slice(&n.to_le_bytes());
                bytes.splice(p..(p + bomb.len()).min(len), bomb);
            }
            Mutation::Splice(i, donor, from) => {
                let donor = &donors[at(*donor, donors.len())];
                bytes.truncate(at(*i, len + 1));
                bytes.extend_from_slice(&donor[at(*from, donor.len() + 1)..]);
            }
        }
    }
}

/// Strings aimed at the name/id/key rules: their alphabet plus near misses (upper case,
/// separators, NUL, non-ASCII), lengths around the limits, and any Unicode at all.
pub fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_-]{0,66}",
        2 => "[a-zA-Z0-9_./ \u{0}\u{e9}-]{0,70}",
        1 => "[!-~]{120,132}",
        1 => "(?s).{0,70}",
        1 => (0usize..=3).prop_map(|extra| "a".repeat(63 + extra)),
    ]
}

/// Strings aimed at the module-hash rule: 64 hex digits, near misses, and anything.
pub fn hash_like() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[0-9a-f]{64}",
        1 => "[0-9a-fA-F]{64}",
        1 => r"(\+[0-9a-fA-F]|[0-9a-f]{2}){32}",
        1 => "[0-9a-fA-F+g -]{64}",
        1 => "[0-9a-f]{60,68}",
        1 => "(?s).{0,70}",
        1 => "[0-9a-f\u{e9}]{62,64}",
    ]
}
