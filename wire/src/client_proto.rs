//! The client API protocol spoken between `tern-client` and a node over QUIC
//! (ALPN [`CLIENT_ALPN`]).
//!
//! One bidirectional stream per request. The client writes one tern-wire frame
//! ([`crate::frame`], a big-endian `u32` length then the payload) holding a bincode-encoded
//! ([`crate::codec`]) [`ClientRequest`], and finishes its side of the stream. The node answers
//! with one frame holding a [`ClientResponse`] and finishes its side. A request the node cannot
//! read (oversized, truncated, not bincode, bad names or keys) is answered with a typed
//! [`ApiError`] whenever the stream is still writable; the connection and its other streams
//! carry on.

use serde::{Deserialize, Serialize};

use crate::WireError;
use crate::api::{ApiError, FunctionInfo, FunctionRef, InvocationId, InvocationRecord};

/// ALPN protocol id of the client API; a peer speaking anything else fails the handshake.
// Its number is `PROTOCOL_VERSION` (a test holds them together): a client and a node whose
// messages would not decode at each other fail the handshake instead.
pub const CLIENT_ALPN: &[u8] = b"tern-client/11";

/// Bytes a request or response frame may carry beyond its payload bytes (module, input or
/// output): names, keys, the token, the frame header and bincode length prefixes.
pub const FRAME_OVERHEAD: usize = 64 * 1024;

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Longest tenant token accepted on the wire.
pub const MAX_TOKEN: usize = 1024;

/// One request: the operation and the caller's tenant token (if any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Bearer token. Needed when the node has tokens configured, unless the connection
    /// presented a client certificate from the cluster's client CA. The first field, so the
    /// node can authenticate a request on its leading bytes.
    pub token: Option<String>,
    pub op: ClientOp,
    /// The caller's span, continued by the node's (W3C Trace Context); `None` starts a trace
    /// at the node if its sampler says so.
    pub trace: Option<crate::TraceParent>,
}

/// The operations of the client API. They map one to one onto the HTTP API. Names are as the
/// caller wrote them ([`FunctionRef`]): as on HTTP, `name` means the caller's tenant's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    /// Like `PUT /v1/functions/{name}`: `None` limits take the node's defaults (no
    /// `max_instances`: only the tenant's caps).
    Deploy {
        name: FunctionRef,
        module: Vec<u8>,
        timeout_ms: Option<u32>,
        memory_mb: Option<u32>,
        max_instances: Option<u32>,
    },
    /// Like `POST /v1/functions/{name}/invoke`. With an idempotency key, a retry of the same
    /// call, through any node, returns the first call's result instead of running it again
    /// (the key's home node runs it).
    /// `timeout_ms` bounds how long the node waits for the result (the guest's own deadline is
    /// the function's `timeout_ms`).
    Invoke {
        name: FunctionRef,
        input: Vec<u8>,
        map: bool,
        idempotency_key: Option<String>,
        timeout_ms: Option<u32>,
    },
    /// Like `POST /v1/functions/{name}/invoke?mode=async`. With an idempotency key, the same
    /// key through any node returns the same [`InvocationId`].
    InvokeAsync {
        name: FunctionRef,
        input: Vec<u8>,
        map: bool,
        idempotency_key: Option<String>,
    },
    /// Like `GET /v1/invocations/{id}`.
    Result { id: InvocationId },
    /// Like `GET /v1/functions`.
    List,
    /// Like `DELETE /v1/functions/{name}`.
    Remove { name: FunctionRef },
}

impl ClientOp {
    /// Short name of the operation, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientOp::Deploy { .. } => "deploy",
            ClientOp::Invoke { .. } => "invoke",
            ClientOp::InvokeAsync { .. } => "invoke_async",
            ClientOp::Result { .. } => "result",
            ClientOp::List => "list",
            ClientOp::Remove { .. } => "remove",
        }
    }
}

/// The answer to one [`ClientRequest`]: a reply or a typed error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    Ok(ClientReply),
    Err(ApiError),
}

impl ClientResponse {
    pub fn into_result(self) -> Result<ClientReply, ApiError> {
        match self {
            ClientResponse::Ok(r) => Ok(r),
            ClientResponse::Err(e) => Err(e),
        }
    }
}

impl From<Result<ClientReply, ApiError>> for ClientResponse {
    fn from(r: Result<ClientReply, ApiError>) -> Self {
        match r {
            Ok(r) => ClientResponse::Ok(r),
            Err(e) => ClientResponse::Err(e),
        }
    }
}

/// The successful answers, one per [`ClientOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// To `Deploy`.
    Deployed(FunctionInfo),
    /// To `Invoke`.
    Output(InvokeReply),
    /// To `InvokeAsync`: the invocation is durably journaled on `node`.
    Accepted { id: InvocationId, node: String },
    /// To `Result`. The record's `input` is always empty on the wire.
    Invocation(InvocationRecord),
    /// To `List`.
    Functions(Vec<FunctionInfo>),
    /// To `Remove`: what was removed.
    Removed(FunctionInfo),
}

/// The result of a synchronous invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeReply {
    /// The guest's stdout.
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// Node that ran the (last) unit of work.
    pub node: String,
    /// Whether any unit had to compile or load its module.
    pub cold_start: bool,
    /// Minimum execution units the invocation was split into.
    pub meus: u32,
    /// Time spent on the node, microseconds.
    pub duration_us: u64,
    /// Whether this answer was replayed from the idempotency cache instead of running again.
    pub replayed: bool,
}

/// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY`] printable ASCII characters
/// (`0x21..=0x7e`, no spaces or control characters).
pub fn check_idempotency_key(key: &str) -> Result<(), WireError> {
    let invalid = |reason: &str| WireError::Invalid {
        what: "idempotency key",
        reason: reason.to_owned(),
    };
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(invalid("must be 1 to 128 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("only printable ASCII without spaces is allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::{ErrorCode, InvocationStatus, ModuleHash};
    use crate::codec::{decode, encode};
    use crate::frame::{FrameDecoder, encode_frame};

    const LIMIT: usize = 1 << 20;

    #[test]
    fn the_client_alpn_carries_the_wire_protocol_version() {
        let expected = format!("tern-client/{}", crate::PROTOCOL_VERSION);
        assert_eq!(CLIENT_ALPN, expected.as_bytes());
    }

    fn info() -> FunctionInfo {
        FunctionInfo {
            name: "echo".parse().unwrap(),
            hash: ModuleHash([7; 32]),
            version: 3,
            timeout_ms: 500,
            memory_mb: 64,
            size_bytes: 1234,
            deployed_at_ms: 99,
            max_instances: None,
        }
    }

    fn requests() -> Vec<ClientRequest> {
        let name: FunctionRef = "default.echo".parse().unwrap();
        [
            ClientOp::Deploy {
                name: name.clone(),
                module: b"\0asm\x01\0\0\0".to_vec(),
                timeout_ms: Some(500),
                memory_mb: None,
                max_instances: Some(4),
            },
            ClientOp::Invoke {
                name: name.clone(),
                input: b"hello".to_vec(),
                map: false,
                idempotency_key: Some("k-1".into()),
                timeout_ms: Some(1000),
            },
            ClientOp::InvokeAsync {
                name: name.clone(),
                input: b"[1,2]".to_vec(),
                map: true,
                idempotency_key: None,
            },
            ClientOp::Result {
                id: "0001-0002".parse().unwrap(),
            },
            ClientOp::List,
            ClientOp::Remove { name },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, op)| ClientRequest {
            token: (i % 2 == 0).then(|| "tenant-token".to_owned()),
            op,
            trace: (i % 3 == 0).then_some(crate::TraceParent {
                trace_id: [7; 16],
                parent_id: [9; 8],
                flags: 1,
            }),
        })
        .collect()
    }

    fn responses() -> Vec<ClientResponse> {
        vec![
            ClientResponse::Ok(ClientReply::Deployed(info())),
            ClientResponse::Ok(ClientReply::Output(InvokeReply {
                output: vec![0, 255, 1],
                node: "a".into(),
                cold_start: true,
                meus: 2,
                duration_us: 17,
                replayed: false,
            })),
            ClientResponse::Ok(ClientReply::Accepted {
                id: "0001-0002".parse().unwrap(),
                node: "b".into(),
            }),
            ClientResponse::Ok(ClientReply::Invocation(InvocationRecord {
                id: "0001-0003".parse().unwrap(),
                function: "echo".parse().unwrap(),
                map: false,
                status: InvocationStatus::Failed,
                input: Vec::new(),
                output: None,
                error: Some(ApiError::new(ErrorCode::GuestTrap, "boom")),
                accepted_at_ms: 1,
                finished_at_ms: Some(2),
                attempts: 1,
            })),
            ClientResponse::Ok(ClientReply::Functions(vec![info(), info()])),
            ClientResponse::Ok(ClientReply::Removed(info())),
            ClientResponse::Err(ApiError::new(ErrorCode::Unauthorized, "no token")),
        ]
    }

    #[test]
    fn every_request_and_response_round_trips_through_a_frame() {
        for req in requests() {
            let frame = encode_frame(&encode(&req, LIMIT).unwrap(), LIMIT).unwrap();
            let mut dec = FrameDecoder::new(LIMIT);
            dec.push(&frame).unwrap();
            let payload = dec.next_frame().unwrap().unwrap();
            assert_eq!(decode::<ClientRequest>(&payload, LIMIT).unwrap(), req);
        }
        for resp in responses() {
            let bytes = encode(&resp, LIMIT).unwrap();
            assert_eq!(decode::<ClientResponse>(&bytes, LIMIT).unwrap(), resp);
        }
    }

    #[test]
    fn names_are_checked_while_decoding() {
        // Encode a request whose name field is raw text, then decode it as a ClientRequest:
        // the FunctionRef inside must refuse it.
        #[derive(Serialize)]
        enum RawOp {
            #[allow(dead_code)]
            Deploy,
            #[allow(dead_code)]
            Invoke,
            #[allow(dead_code)]
            InvokeAsync,
            #[allow(dead_code)]
            Result,
            #[allow(dead_code)]
            List,
            Remove {
                name: String,
            },
        }
        #[derive(Serialize)]
        struct Raw {
            token: Option<String>,
            op: RawOp,
            trace: Option<crate::TraceParent>,
        }
        let ok = encode(
            &Raw {
                token: None,
                op: RawOp::Remove {
                    name: "echo".into(),
                },
                trace: None,
            },
            LIMIT,
        )
        .unwrap();
        assert!(decode::<ClientRequest>(&ok, LIMIT).is_ok());
        for bad in ["../etc", "", "Echo", "a b"] {
            let bytes = encode(
                &Raw {
                    token: None,
                    op: RawOp::Remove { name: bad.into() },
                    trace: None,
                },
                LIMIT,
            )
            .unwrap();
            assert!(matches!(
                decode::<ClientRequest>(&bytes, LIMIT),
                Err(WireError::Malformed(_))
            ));
        }
    }

    #[test]
    fn truncations_bit_flips_and_limits_are_errors_never_panics() {
        for req in requests() {
            let bytes = encode(&req, LIMIT).unwrap();
            for cut in 0..bytes.len() {
                assert!(decode::<ClientRequest>(&bytes[..cut], LIMIT).is_err());
            }
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut flipped = bytes.clone();
                    flipped[i] ^= 1 << bit;
                    let _ = decode::<ClientRequest>(&flipped, LIMIT);
                }
            }
            assert!(matches!(
                decode::<ClientRequest>(&bytes, bytes.len() - 1),
                Err(WireError::TooLarge { .. })
            ));
        }
        for resp in responses() {
            let bytes = encode(&resp, LIMIT).unwrap();
            for cut in 0..bytes.len() {
                assert!(decode::<ClientResponse>(&bytes[..cut], LIMIT).is_err());
            }
        }
    }

    #[test]
    fn length_bombs_and_random_bytes_are_refused() {
        // Deploy (variant 0) of name "a" whose module length prefix claims ~2^60 bytes.
        let mut bomb = vec![0u8, 0, 1, b'a'];
        bomb.extend_from_slice(&[0xFF, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert!(decode::<ClientRequest>(&bomb, LIMIT).is_err());

        // xorshift64*: deterministic, so a failure reproduces.
        let mut state: u64 = 0x7e57_0002;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..50_000 {
            let len = (next() % 96) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode::<ClientRequest>(&bytes, LIMIT);
            let _ = decode::<ClientResponse>(&bytes, LIMIT);
        }
    }

    #[test]
    fn idempotency_keys_are_checked() {
        for ok in ["a", "tc-0123abcd", &"k".repeat(128), "!~"] {
            assert!(check_idempotency_key(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", &"k".repeat(129), "a b", "a\nb", "é", "\0"] {
            assert!(
                matches!(
                    check_idempotency_key(bad),
                    Err(WireError::Invalid { what, .. }) if what == "idempotency key"
                ),
                "{bad:?}"
            );
        }
    }
}
