//! [`ClientError`]: every way a call can fail, precise enough to act on.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tern_wire::{ApiError, ErrorCode};

/// Why one node could not serve a call (an entry of [`ClientError::AllNodesUnreachable`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub node: String,
    pub addr: SocketAddr,
    pub reason: String,
    /// The node refused the client's TLS credentials (rather than being unreachable).
    pub rejected: bool,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.node, self.addr, self.reason)
    }
}

/// Everything that can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node answered with a typed API error (`not_found`, `unauthorized`, `guest_trap`…).
    /// `overloaded` and `unavailable` only surface once the retries are spent.
    #[error("{0}")]
    Api(ApiError),
    /// The node did not answer within `request_timeout`, on every attempt.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// No seed node could be connected to or kept connected (each attempt's reason is kept).
    #[error("no node could be reached: {}", join(.tried))]
    AllNodesUnreachable { tried: Vec<NodeFailure> },
    /// The node refused the client's TLS credentials (e.g. a client certificate from another
    /// CA). Not retried.
    #[error("node {node} refused the connection: {reason}")]
    Rejected { node: String, reason: String },
    /// Building the TLS configuration failed (bad PEM, unusable key…).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The [`crate::ClientConfig`] is unusable.
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An argument was refused before anything was sent (bad function name, bad id, bad
    /// idempotency key).
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] tern_wire::WireError),
    /// The request does not fit in one frame.
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
    /// The node broke the protocol: a truncated, oversized or undecodable answer, an answer of
    /// the wrong kind, or a refused stream. Not retried.
    #[error("protocol error with node {node}: {reason}")]
    Protocol { node: String, reason: String },
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket: {0}")]
    Bind(std::io::Error),
    /// [`crate::Client::close`] was called.
    #[error("the client is closed")]
    Closed,
}

fn join(tried: &[NodeFailure]) -> String {
    if tried.is_empty() {
        return "no attempt made".into();
    }
    tried
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// The API error code, for [`ClientError::Api`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }

    /// Whether trying the same call again later could succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Api(e) => e.code.is_retryable(),
            ClientError::Timeout(_) | ClientError::AllNodesUnreachable { .. } => true,
            _ => false,
        }
    }
}
