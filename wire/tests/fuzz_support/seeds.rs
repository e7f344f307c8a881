//! The seed corpus: hand-picked valid values of every message kind (every variant, empty and
//! maximal fields, varint length boundaries) and what `regenerate_seed_corpus` writes for them.

use tern_wire::api::{ErrorCode, FunctionInfo, InvocationStatus};
use tern_wire::peer::{
    AcceptedKey, AsyncCopy, KeyedCall, KeyedMode, KeyedResult, NodeStatus, PeerRequest,
    PeerResponse, RegistryEntry, RemoteMeu, RemoteOutcome, TenancyRecords, TenantDemand,
};
use tern_wire::{
    ApiError, ClientOp, ClientReply, ClientRequest, ClientResponse, FunctionName, InvocationId,
    InvocationRecord, InvokeReply, ModuleHash, NodeClass, Timings, encode,
};

use super::{API_ERROR_DIR, FRAME_DIR, Kind, LIMIT, TEXT_DIRS, TEXT_FILE, frame_all};

/// A token record with fixed fields (records are only ever made with fresh randomness, so
/// seeds are built from their serialized form).
pub fn token_record(id: &str, role: &str, revoked_at_ms: Option<u64>) -> tern_tenancy::TokenRecord {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "tenant": "default",
        "role": role,
        "created_at_ms": 1_700_000_000_000u64,
        "revoked_at_ms": revoked_at_ms,
        "hash": vec![7u8; 32],
    }))
    .expect("seed token record")
}

pub fn tenant_entry(name: &str, removed: bool) -> tern_tenancy::TenantEntry {
    let entry = tern_tenancy::TenantEntry::create(
        name.parse().expect("seed tenant name"),
        tern_tenancy::TenantSpec::default(),
        1_700_000_000_000,
        "a",
    );
    if removed {
        entry.remove(1_700_000_000_001, "b")
    } else {
        entry
    }
}

fn name(s: &str) -> FunctionName {
    s.parse().expect("seed function name")
}

/// A name as a client writes it.
fn fref(s: &str) -> tern_wire::FunctionRef {
    s.parse().expect("seed function name")
}

fn id(s: &str) -> InvocationId {
    s.parse().expect("seed invocation id")
}

/// 0x00, 0x08, … 0xf8: every hex digit appears.
fn varied_hash() -> ModuleHash {
    ModuleHash(std::array::from_fn(|i| (i as u8).wrapping_mul(8)))
}

/// Long enough that its bincode length prefix takes three bytes (over 250).
fn big_bytes() -> Vec<u8> {
    (0..300u32).map(|i| (i * 7) as u8).collect()
}

fn info(n: &str) -> FunctionInfo {
    FunctionInfo {
        name: name(n),
        hash: ModuleHash([7; 32]),
        version: 3,
        timeout_ms: 500,
        memory_mb: 64,
        size_bytes: 1234,
        deployed_at_ms: 1_700_000_000_000,
        max_instances: None,
    }
}

fn info_max() -> FunctionInfo {
    FunctionInfo {
        name: name(&"z".repeat(64)),
        hash: ModuleHash([0xff; 32]),
        version: u64::MAX,
        timeout_ms: u32::MAX,
        memory_mb: u32::MAX,
        size_bytes: u64::MAX,
        deployed_at_ms: u64::MAX,
        max_instances: Some(u32::MAX),
    }
}

fn entry(n: &str, removed: bool) -> RegistryEntry {
    RegistryEntry {
        info: info(n),
        removed,
        origin: "node-1".into(),
    }
}

fn status_full(class: NodeClass) -> NodeStatus {
    NodeStatus {
        node: "node-1".into(),
        class,
        max_memory_mb: 128,
        max_timeout_ms: 50,
        queue_depth: 3,
        queue_cap: 256,
        ready: vec![ModuleHash([1; 32]), varied_hash()],
        warm: vec![ModuleHash([1; 32])],
        cpu_percent: 250,
        memory_bytes: 1 << 33,
        recent_mean_us: 1234,
        seq: u64::MAX,
        tenant_demand: vec![
            TenantDemand {
                tenant: "acme".parse().expect("valid tenant name"),
                per_s: 1500,
                slots: 7,
                running: 3,
            },
            TenantDemand {
                tenant: "default".parse().expect("valid tenant name"),
                per_s: u64::MAX,
                slots: u64::MAX,
                running: u64::MAX,
            },
        ],
    }
}

fn meu(input: Vec<u8>) -> RemoteMeu {
    RemoteMeu {
        request_id: "req-0001".into(),
        function: name("echo"),
        hash: varied_hash(),
        input,
        items: 1,
        attempt: 2,
        waited_us: 12_345,
        trace: Some(tern_wire::TraceParent {
            trace_id: [0xab; 16],
            parent_id: [0xcd; 8],
            flags: 1,
        }),
    }
}

fn outcome(timings: Timings) -> RemoteOutcome {
    RemoteOutcome {
        output: b"{\"ok\":true}".to_vec(),
        cold_start: true,
        timings,
        node: "node-2".into(),
        peer_us: 4_321,
    }
}

fn record(status: InvocationStatus) -> InvocationRecord {
    InvocationRecord {
        id: InvocationId::from_parts(0x1234, 7),
        function: name("echo"),
        map: false,
        status,
        input: b"hello".to_vec(),
        output: None,
        error: None,
        accepted_at_ms: 1,
        finished_at_ms: None,
        attempts: 0,
    }
}

pub fn peer_requests() -> Vec<(&'static str, PeerRequest)> {
    vec![
        ("status-default", PeerRequest::Status(NodeStatus::default())),
        (
            "status-edge-small",
            PeerRequest::Status(status_full(NodeClass::EdgeSmall)),
        ),
        (
            "status-cpu-burst",
            PeerRequest::Status(status_full(NodeClass::CpuBurst)),
        ),
        ("announce-empty", PeerRequest::Announce(Vec::new())),
        (
            "announce-live-and-tombstone",
            PeerRequest::Announce(vec![entry("echo", false), entry("gone", true)]),
        ),
        ("registry", PeerRequest::Registry),
        ("fetch-module", PeerRequest::FetchModule(varied_hash())),
        ("execute", PeerRequest::Execute(meu(b"hi".to_vec()))),
        ("execute-big-input", PeerRequest::Execute(meu(big_bytes()))),
        (
            "announce-tenancy-empty",
            PeerRequest::AnnounceTenancy(TenancyRecords::default()),
        ),
        (
            "announce-tenancy-tenants-and-tokens",
            PeerRequest::AnnounceTenancy(TenancyRecords {
                tenants: vec![tenant_entry("acme", false), tenant_entry("gone", true)],
                tokens: vec![
                    token_record("0123456789abcdef", "invoker", None),
                    token_record("fedcba9876543210", "admin", Some(u64::MAX)),
                ],
            }),
        ),
        ("tenancy", PeerRequest::Tenancy),
        (
            "replicate-pending",
            PeerRequest::Replicate(Box::new(AsyncCopy {
                record: record(InvocationStatus::Pending),
                key: None,
            })),
        ),
        (
            "replicate-keyed",
            PeerRequest::Replicate(Box::new(AsyncCopy {
                record: record(InvocationStatus::Pending),
                key: Some("echo\0order-17".into()),
            })),
        ),
        (
            "release-two",
            PeerRequest::Release(vec![
                InvocationId::from_parts(0x1234, 7),
                InvocationId::from_parts(u64::MAX, 0),
            ]),
        ),
        (
            "lookup",
            PeerRequest::Lookup(InvocationId::from_parts(0x1234, 7)),
        ),
        (
            "lookup-key",
            PeerRequest::LookupKey("echo\0order-17".into()),
        ),
        (
            "keyed-sync",
            PeerRequest::Keyed(Box::new(KeyedCall {
                key: "order-17".into(),
                entry: entry("echo", false),
                input: b"hi".to_vec(),
                map: false,
                mode: KeyedMode::Sync {
                    timeout_ms: Some(1_500),
                    entry_keeps: true,
                },
                trace: None,
            })),
        ),
        (
            "keyed-async-map",
            PeerRequest::Keyed(Box::new(KeyedCall {
                key: "~".repeat(200),
                entry: entry("echo", false),
                input: big_bytes(),
                map: true,
                mode: KeyedMode::Async,
                trace: Some(tern_wire::TraceParent {
                    trace_id: [7; 16],
                    parent_id: [9; 8],
                    flags: 1,
                }),
            })),
        ),
        (
            "keep-result-output",
            PeerRequest::KeepResult(Box::new(KeyedResult {
                scope: "echo\0order-17".into(),
                result: Ok(InvokeReply {
                    output: b"one".to_vec(),
                    node: "b".into(),
                    cold_start: true,
                    meus: 1,
                    duration_us: 120,
                    replayed: false,
                }),
            })),
        ),
        (
            "keep-result-error",
            PeerRequest::KeepResult(Box::new(KeyedResult {
                scope: "acme.echo\0~".into(),
                result: Err(ApiError::new(ErrorCode::GuestTrap, "trap")),
            })),
        ),
        (
            "lookup-result",
            PeerRequest::LookupResult("echo\0order-17".into()),
        ),
    ]
}

pub fn peer_responses() -> Vec<(&'static str, PeerResponse)> {
    vec![
        ("ack", PeerResponse::Ack),
        ("registry-empty", PeerResponse::Registry(Vec::new())),
        (
            "registry-two",
            PeerResponse::Registry(vec![
                entry("echo", false),
                RegistryEntry {
                    info: info_max(),
                    removed: true,
                    origin: "z".repeat(64),
                },
            ]),
        ),
        ("module-empty", PeerResponse::Module(Vec::new())),
        ("module-big", PeerResponse::Module(big_bytes())),
        (
            "executed-warm",
            PeerResponse::Executed(outcome(Timings::default())),
        ),
        (
            "executed-timings",
            PeerResponse::Executed(outcome(Timings {
                pre_us: 0,
                load_us: 250,
                reuse_us: 251,
                inst_us: 65_536,
                exec_us: u64::MAX,
            })),
        ),
        (
            "error-overloaded",
            PeerResponse::Error(ApiError::new(ErrorCode::Overloaded, "queue full")),
        ),
        (
            "error-unauthorized",
            PeerResponse::Error(ApiError::new(ErrorCode::Unauthorized, "")),
        ),
        (
            "tenancy-empty",
            PeerResponse::Tenancy(TenancyRecords::default()),
        ),
        (
            "tenancy-one-each",
            PeerResponse::Tenancy(TenancyRecords {
                tenants: vec![tenant_entry("default", false)],
                tokens: vec![token_record("00000000000000ff", "developer", None)],
            }),
        ),
        ("invocation-none", PeerResponse::Invocation(None)),
        ("key-accepted-none", PeerResponse::KeyAccepted(None)),
        (
            "key-accepted",
            PeerResponse::KeyAccepted(Some(AcceptedKey {
                id: InvocationId::from_parts(0x1234, 7),
                accepted_at_ms: 1_700_000_000_000,
            })),
        ),
        (
            "invocation-succeeded",
            PeerResponse::Invocation(Some(Box::new(record(InvocationStatus::Succeeded)))),
        ),
        (
            "output-replayed",
            PeerResponse::Output(InvokeReply {
                output: b"one".to_vec(),
                node: "b".into(),
                cold_start: false,
                meus: 1,
                duration_us: 120,
                replayed: true,
            }),
        ),
        (
            "accepted",
            PeerResponse::Accepted(InvocationId::from_parts(0x1234, 7)),
        ),
        ("kept-result-none", PeerResponse::KeptResult(None)),
        (
            "kept-result",
            PeerResponse::KeptResult(Some(Box::new(KeyedResult {
                scope: "echo\0order-17".into(),
                result: Err(ApiError::new(
                    ErrorCode::Timeout,
                    "no result within 5000 ms",
                )),
            }))),
        ),
    ]
}

pub fn client_requests() -> Vec<(&'static str, ClientRequest)> {
    let ops = vec![
        (
            "deploy",
            ClientOp::Deploy {
                name: fref("echo"),
                module: b"\0asm\x01\0\0\0".to_vec(),
                timeout_ms: Some(500),
                memory_mb: None,
                max_instances: None,
            },
        ),
        (
            "deploy-big",
            ClientOp::Deploy {
                name: fref("matmul-json"),
                module: big_bytes(),
                timeout_ms: None,
                memory_mb: Some(u32::MAX),
                max_instances: Some(u32::MAX),
            },
        ),
        (
            "invoke",
            ClientOp::Invoke {
                name: fref("echo"),
                input: b"hello".to_vec(),
                map: false,
                idempotency_key: Some("tc-0123abcd".into()),
                timeout_ms: Some(1000),
            },
        ),
        (
            "invoke-async-map",
            ClientOp::InvokeAsync {
                name: fref("0_x"),
                input: b"[1,2]".to_vec(),
                map: true,
                idempotency_key: None,
            },
        ),
        (
            "result",
            ClientOp::Result {
                id: id("0001-0002"),
            },
        ),
        ("list", ClientOp::List),
        ("remove", ClientOp::Remove { name: fref("echo") }),
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, (label, op))| {
            let token = match i % 3 {
                0 => None,
                1 => Some("tenant-token".to_owned()),
                _ => Some("t\u{e9}\u{1f980}\"\\\n".to_owned()),
            };
            let trace = (i % 2 == 1).then_some(tern_wire::TraceParent {
                trace_id: [0x4b; 16],
                parent_id: [0x0f; 8],
                flags: 1,
            });
            (label, ClientRequest { token, op, trace })
        })
        .collect()
}

pub fn client_responses() -> Vec<(&'static str, ClientResponse)> {
    vec![
        (
            "deployed",
            ClientResponse::Ok(ClientReply::Deployed(info("echo"))),
        ),
        (
            "output",
            ClientResponse::Ok(ClientReply::Output(InvokeReply {
                output: vec![0, 255, 1],
                node: "a".into(),
                cold_start: true,
                meus: 2,
                duration_us: 17,
                replayed: false,
            })),
        ),
        (
            "output-replayed-big",
            ClientResponse::Ok(ClientReply::Output(InvokeReply {
                output: big_bytes(),
                node: "node-1".into(),
                cold_start: false,
                meus: u32::MAX,
                duration_us: u64::MAX,
                replayed: true,
            })),
        ),
        (
            "accepted",
            ClientResponse::Ok(ClientReply::Accepted {
                id: id("0001-0002"),
                node: "b".into(),
            }),
        ),
        (
            "invocation-failed",
            ClientResponse::Ok(ClientReply::Invocation(InvocationRecord {
                input: Vec::new(),
                error: Some(ApiError::new(ErrorCode::GuestTrap, "boom")),
                finished_at_ms: Some(2),
                attempts: 1,
                ..record(InvocationStatus::Failed)
            })),
        ),
        (
            "functions-empty",
            ClientResponse::Ok(ClientReply::Functions(Vec::new())),
        ),
        (
            "functions-two",
            ClientResponse::Ok(ClientReply::Functions(vec![info("echo"), info_max()])),
        ),
        (
            "removed",
            ClientResponse::Ok(ClientReply::Removed(info("echo"))),
        ),
        (
            "err-unauthorized",
            ClientResponse::Err(ApiError::new(ErrorCode::Unauthorized, "no token")),
        ),
    ]
}

pub fn invocation_records() -> Vec<(&'static str, InvocationRecord)> {
    vec![
        ("pending", record(InvocationStatus::Pending)),
        (
            "succeeded-map",
            InvocationRecord {
                map: true,
                input: b"[1,2,3]".to_vec(),
                output: Some(b"[2,4,6]".to_vec()),
                finished_at_ms: Some(1_700_000_000_123),
                attempts: 1,
                ..record(InvocationStatus::Succeeded)
            },
        ),
        (
            "failed-after-replay",
            InvocationRecord {
                id: id("-"),
                error: Some(ApiError::new(ErrorCode::Timeout, "took too long \u{23f1}")),
                finished_at_ms: Some(u64::MAX),
                attempts: u32::MAX,
                ..record(InvocationStatus::Failed)
            },
        ),
        (
            "max",
            InvocationRecord {
                id: InvocationId::from_parts(u64::MAX, u64::MAX),
                function: name(&"z".repeat(64)),
                input: big_bytes(),
                output: Some(big_bytes()),
                accepted_at_ms: u64::MAX,
                ..record(InvocationStatus::Succeeded)
            },
        ),
    ]
}

pub fn registry_entries() -> Vec<(&'static str, RegistryEntry)> {
    vec![
        ("live", entry("echo", false)),
        ("tombstone", entry("echo", true)),
        (
            "max",
            RegistryEntry {
                info: info_max(),
                removed: false,
                origin: "z".repeat(64),
            },
        ),
    ]
}

fn encode_all<T: serde::Serialize>(seeds: Vec<(&'static str, T)>) -> Vec<(&'static str, Vec<u8>)> {
    seeds
        .into_iter()
        .map(|(label, v)| (label, encode(&v, LIMIT).expect("seed encodes")))
        .collect()
}

/// The encoded seeds of `kind`, as (label, bytes).
pub fn binary(kind: Kind) -> Vec<(&'static str, Vec<u8>)> {
    match kind {
        Kind::PeerRequest => encode_all(peer_requests()),
        Kind::PeerResponse => encode_all(peer_responses()),
        Kind::ClientRequest => encode_all(client_requests()),
        Kind::ClientResponse => encode_all(client_responses()),
        Kind::InvocationRecord => encode_all(invocation_records()),
        Kind::RegistryEntry => encode_all(registry_entries()),
    }
}

/// Valid text for each parser, one per line of its `seeds.txt`.
pub fn text(dir: &str) -> Vec<String> {
    match dir {
        "function_name" => ["echo", "matmul-json", "a", "0", "0_x", "a-b_c"]
            .into_iter()
            .map(str::to_owned)
            .chain([format!("a{}", "-".repeat(63))])
            .collect(),
        "invocation_id" => vec![
            "0001-0002".to_owned(),
            InvocationId::from_parts(0x1234, 7).to_string(),
            InvocationId::from_parts(u64::MAX, u64::MAX).to_string(),
            "-".to_owned(),
            "z".repeat(64),
        ],
        "module_hash" => vec![
            ModuleHash([0; 32]).to_hex(),
            ModuleHash([0xff; 32]).to_hex(),
            varied_hash().to_hex(),
        ],
        "idempotency_key" => vec![
            "a".to_owned(),
            "tc-0123abcd".to_owned(),
            "!~".to_owned(),
            (0x21u8..=0x7e).map(char::from).collect(),
            "k".repeat(128),
        ],
        "node_class" => NodeClass::ALL.iter().map(|c| c.to_string()).collect(),
        other => panic!("no text seeds for {other}"),
    }
}

/// Error bodies as the HTTP API sends them: every code, and a message that needs escaping.
pub fn api_errors() -> Vec<(String, ApiError)> {
    let mut out: Vec<(String, ApiError)> = ErrorCode::ALL
        .iter()
        .map(|c| {
            (
                c.as_str().replace('_', "-"),
                ApiError::new(*c, format!("{c} happened")),
            )
        })
        .collect();
    out.push((
        "escaped-message".to_owned(),
        ApiError::new(
            ErrorCode::InvalidRequest,
            "quote \" backslash \\ newline \n tab \t nul \0 \u{e9} \u{1f980}",
        ),
    ));
    out.push((
        "empty-message".to_owned(),
        ApiError::new(ErrorCode::Internal, ""),
    ));
    out
}

/// Frame-stream seeds: every binary seed of a kind framed back to back, plus raw payloads
/// (empty frames and one with a 300-byte payload).
pub fn frame_streams() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = [
        Kind::ClientRequest,
        Kind::ClientResponse,
        Kind::PeerRequest,
        Kind::PeerResponse,
    ]
    .into_iter()
    .map(|k| {
        let payloads: Vec<Vec<u8>> = binary(k).into_iter().map(|(_, b)| b).collect();
        (k.dir().to_owned(), frame_all(&payloads, LIMIT))
    })
    .collect();
    let raw = vec![Vec::new(), vec![0], big_bytes(), Vec::new()];
    out.push(("raw".to_owned(), frame_all(&raw, LIMIT)));
    out
}

/// Every file `regenerate_seed_corpus` writes, as (`dir/file`, contents), sorted.
pub fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in Kind::ALL {
        for (i, (label, bytes)) in binary(kind).into_iter().enumerate() {
            out.push((format!("{}/{i:02}-{label}.bin", kind.dir()), bytes));
        }
    }
    for (label, bytes) in frame_streams() {
        out.push((format!("{FRAME_DIR}/{label}.bin"), bytes));
    }
    for (i, (label, e)) in api_errors().into_iter().enumerate() {
        out.push((
            format!("{API_ERROR_DIR}/{i:02}-{label}.json"),
            e.to_json().into_bytes(),
        ));
    }
    for dir in TEXT_DIRS {
        let mut body = text(dir).join("\n");
        body.push('\n');
        out.push((format!("{dir}/{TEXT_FILE}"), body.into_bytes()));
    }
    out.sort();
    out
}
