//! Every type that crosses a Tern process boundary, and the bounded codec that carries it.
//!
//! Keep this crate free of I/O: it is shared by the node, the client library, chaos and bench
//! tools. Decoding is the first line of defence against hostile peers, so every decoder here
//! takes an explicit byte limit and returns a typed [`WireError`] instead of panicking.
#![forbid(unsafe_code)]

pub mod api;
pub mod client_proto;
pub mod codec;
pub mod frame;
pub mod http_call;
pub mod peer;
pub mod trace;

pub use api::{
    ApiError, ErrorCode, FunctionInfo, FunctionKind, FunctionName, FunctionRef, InvocationId,
    InvocationRecord, InvocationStatus, LogLine, LogPage, ModuleHash,
};
pub use client_proto::{
    CLIENT_ALPN, ClientOp, ClientReply, ClientRequest, ClientResponse, InvokeReply,
    check_idempotency_key,
};
pub use codec::{decode, encode};
pub use frame::{FrameDecoder, encode_frame};
pub use http_call::{
    AnswerPart, HTTP_ANSWER_MAGIC, HTTP_CALL_MAGIC, HttpAnswer, HttpCall, HttpFields,
};
pub use peer::{NodeClass, Timings};
pub use trace::TraceParent;

/// Version of the wire protocol spoken between Tern processes. Bumped on any incompatible change
/// to a type in this crate that is persisted or sent between nodes. The mesh and client-API
/// handshakes carry it in their ALPN ids (`tern-mesh/N`, [`CLIENT_ALPN`]), so processes of
/// different versions refuse each other at connect time.
pub const PROTOCOL_VERSION: u16 = 11;

/// Everything that can go wrong turning bytes into Tern types, or back.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{len} trailing bytes after the message")]
    TrailingBytes { len: usize },
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}
