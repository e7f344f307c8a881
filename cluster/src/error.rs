//! The one error type of this crate. Variants are precise so callers (and metrics) can tell a
//! bad peer from a dead one from a local misconfiguration.

use std::path::PathBuf;

/// Everything that can go wrong in the cluster mesh.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName { name: String, reason: &'static str },

    // --- PKI ---
    #[error("refusing to overwrite existing file {0}")]
    AlreadyExists(PathBuf),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not generate a certificate: {0}")]
    CertGen(#[from] rcgen::Error),
    #[error("bad PEM in {path}: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("duplicate node name {0} in the node list")]
    DuplicateNode(String),

    // --- TLS / endpoint setup ---
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the crypto provider lacks the QUIC initial cipher suite")]
    NoInitialCipherSuite,
    #[error("invalid transport config: {0}")]
    Config(&'static str),
    #[error("could not bind the UDP socket: {0}")]
    Bind(std::io::Error),

    // --- connections ---
    #[error("could not start a connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection lost: {0}")]
    Connection(quinn::ConnectionError),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate is malformed: {0}")]
    BadPeerCertificate(String),
    #[error("peer identity mismatch: expected {expected}, the peer's certificate is not for it")]
    IdentityMismatch { expected: String },
    #[error("{0} proved its name but is not a member of this cluster")]
    NotAMember(String),
    #[error("peer claims to be {claimed} but answered as {answered}")]
    WrongPeer { claimed: String, answered: String },
    #[error("peer closed the connection with code {code}: {reason}")]
    Rejected { code: u64, reason: String },
    #[error("the endpoint is closed")]
    EndpointClosed,

    // --- streams ---
    #[error("stream kind {0:#04x} is not supported")]
    UnsupportedStreamKind(u8),
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("peer refused the stream with code {0}")]
    StreamRefused(u64),
    #[error("stream ended before a whole frame arrived")]
    Truncated,
    /// The first byte of the frame (`None`: the frame was empty).
    #[error("an answer frame on a streamed exchange is marked {0:?}, neither a part nor the last")]
    UnmarkedAnswer(Option<u8>),
    #[error("stream already closed")]
    ClosedStream,
    #[error("wire: {0}")]
    Wire(#[from] tern_wire::WireError),

    // --- ractor_cluster sessions ---
    #[error("session streams on this connection are already claimed")]
    SessionStreamsClaimed,
    #[error("a session is already attached to connection {connection_id} with {peer}")]
    SessionAlreadyAttached { peer: String, connection_id: u64 },
    #[error("this connection already carries a ractor session")]
    SessionExists,
    #[error("{peer} sent a session stream, but this node opens the session of this pair")]
    SessionRole { peer: String },
    #[error("session stream from {expected} claims to be {claimed:?} in its first ractor frame")]
    SessionIdentity { expected: String, claimed: String },
    #[error("session handshake from {peer}: {reason}")]
    SessionProtocol { peer: String, reason: &'static str },
    #[error("could not start the ractor_cluster node server: {0}")]
    NodeServer(String),
    #[error("the ractor_cluster node server is gone")]
    NodeServerGone,
    #[error("no ractor session with {0} is ready")]
    SessionNotReady(String),
    #[error("message of {size} bytes exceeds the control-message limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("this message type cannot be sent to a remote actor")]
    NotRemotable,
    #[error("the target actor is gone")]
    ActorGone,
    #[error("the remote call was dropped without a reply")]
    NoReply,
}

impl From<quinn::ClosedStream> for ClusterError {
    fn from(_: quinn::ClosedStream) -> Self {
        Self::ClosedStream
    }
}

impl From<quinn::ReadError> for ClusterError {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => Self::StreamRefused(code.into_inner()),
            quinn::ReadError::ConnectionLost(e) => e.into(),
            quinn::ReadError::ClosedStream
            | quinn::ReadError::ZeroRttRejected
            | quinn::ReadError::IllegalOrderedRead => Self::ClosedStream,
        }
    }
}

impl From<quinn::WriteError> for ClusterError {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => Self::StreamRefused(code.into_inner()),
            quinn::WriteError::ConnectionLost(e) => e.into(),
            quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
                Self::ClosedStream
            }
        }
    }
}

/// "The peer closed the connection on purpose" becomes [`ClusterError::Rejected`] so callers
/// see the application code (e.g. an identity mismatch) instead of a generic loss.
impl From<quinn::ConnectionError> for ClusterError {
    fn from(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(close) => Self::Rejected {
                code: close.error_code.into_inner(),
                // Bounded: the reason comes from the peer.
                reason: String::from_utf8_lossy(&close.reason)
                    .chars()
                    .take(200)
                    .collect(),
            },
            other => Self::Connection(other),
        }
    }
}
