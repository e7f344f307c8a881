//! One QUIC endpoint per node, mutual TLS from the cluster CA, and the stream protocol.
//!
//! This file holds what both ends of the protocol agree on (stream kinds, ALPN, close and
//! refusal codes) and the transport knobs; the layers live in their own files, each one using
//! only those below it:
//! - `endpoint.rs`: the quinn endpoint, its TLS configuration, dialling and the accept loop;
//! - `hello.rs`: the identity check that runs on every new connection before it is handed out;
//! - `connection.rs`: a verified [`Connection`] and its requester side (`request` over lanes,
//!   opening streams, handing session streams over);
//! - `lanes.rs`: the kept-open data-plane streams `request` reuses;
//! - `serve.rs`: the serving side of one incoming stream;
//! - `frame.rs`: reading kind bytes and length-prefixed frames off a QUIC stream, and
//!   refusing a stream.
//!
//! Connection setup:
//! 1. QUIC + TLS 1.3 handshake. The server requires a client certificate chained to the
//!    cluster CA; the client verifies the server's certificate against the CA for the server
//!    name `<peer>.node.tern`. aws-lc-rs is passed explicitly everywhere (ARCHITECTURE.md §5).
//! 2. Hello: the dialler opens the first bidirectional stream with kind [`KIND_HELLO`] and one
//!    frame holding the name it claims; the acceptor checks that the client certificate is
//!    for that name and answers with its own name. On any mismatch the connection is closed
//!    with [`codes::IDENTITY`]. A valid certificate alone proves membership of the cluster, not
//!    which node you are: without this check an impostor could take over another node's
//!    session (ARCHITECTURE.md §5). Only connections that passed it leave this module, so
//!    only they can ever produce a membership change.
//!
//! Streams: the first byte of every later bidirectional stream is its kind. [`KIND_DATA`]
//! carries length-prefixed frames (tern-wire framing), one request then its answer, as many
//! times as the requester likes: [`Connection::request`] keeps such streams open as lanes
//! and reuses them, because opening and closing a stream per request cost about four extra
//! datagrams (stream credit and the ACKs it elicits), each waking the peer process. An
//! oversized or late frame is refused by stopping and resetting that stream only; the
//! connection and its other streams carry on. [`KIND_RACTOR`] streams carry a ractor_cluster
//! session (see `session/`): `serve` hands them, unread past the kind byte, to whoever
//! claimed them with [`Connection::claim_session_streams`]; on a connection nobody claimed
//! them on they are refused like an unknown kind. [`KIND_STREAMED`] streams carry requests
//! whose answers may come in parts ([`Connection::request_streamed`]), one at a time and kept
//! between requests as data lanes are: each answer frame starts with [`PART`] or [`LAST`]; a
//! peer that does not know the kind refuses it with [`codes::UNSUPPORTED_KIND`], and the
//! request is then sent again the usual way.

use std::time::Duration;

use quinn::{IdleTimeout, VarInt};

use crate::ClusterError;

mod connection;
mod endpoint;
mod frame;
mod hello;
mod lanes;
mod serve;

pub use connection::{Connection, SessionStream};
pub use endpoint::Endpoint;
pub(crate) use frame::refuse;

/// First byte of the hello stream, the first stream a dialler opens.
pub const KIND_HELLO: u8 = 0x00;
/// A ractor_cluster session stream (`session/`); refused unless claimed on the connection.
pub const KIND_RACTOR: u8 = 0x01;
/// Data-plane request/response: a request frame, then its answer, repeated until the
/// requester finishes the stream.
pub const KIND_DATA: u8 = 0x02;
/// Requests whose answers may come in parts: a request frame, then answer frames each
/// starting with [`PART`] or [`LAST`], repeated until the requester finishes the stream.
pub const KIND_STREAMED: u8 = 0x03;
/// First byte of an answer frame on a [`KIND_STREAMED`] stream that more frames follow.
pub const PART: u8 = 1;
/// First byte of the last answer frame on a [`KIND_STREAMED`] stream.
pub const LAST: u8 = 0;

/// Where a handler sends the parts of a streamed answer (each one frame, in order) before it
/// returns the last; `None` for a request on a [`KIND_DATA`] stream, which has one answer.
/// Unbounded: the handler bounds what it sends (a node, by the output cap of the run).
pub type PartSender = tokio::sync::mpsc::UnboundedSender<Vec<u8>>;

/// ALPN protocol id of the mesh; a peer speaking anything else fails the handshake. Its
/// number is tern-wire's `PROTOCOL_VERSION` (a test holds them together), so nodes whose
/// messages would not decode at each other refuse to connect instead.
pub const ALPN: &[u8] = b"tern-mesh/11";

/// QUIC application error codes used when closing connections or refusing streams.
pub mod codes {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer's certificate is not for the name it claims, or the hello was malformed.
    pub const IDENTITY: u32 = 0x10;
    /// A frame was larger than the receiver's limit.
    pub const FRAME_TOO_LARGE: u32 = 0x20;
    /// The stream kind byte is unknown or not supported yet.
    pub const UNSUPPORTED_KIND: u32 = 0x21;
    /// The request did not arrive in time.
    pub const TIMEOUT: u32 = 0x22;
    /// The stream ended early or carried garbage.
    pub const PROTOCOL: u32 = 0x23;
    /// The requester gave up on the exchange (its own timeout, or it was cancelled).
    pub const CANCELLED: u32 = 0x24;
    /// Session stream refused: its first ractor_cluster frame is not a name message for the
    /// peer's verified node name (or the dialler's peer answered as someone else).
    pub const SESSION_IDENTITY: u32 = 0x30;
    /// Session stream refused: this connection already carries a session, or claims are
    /// backed up.
    pub const SESSION_EXISTS: u32 = 0x31;
    /// Session stream refused: the lower node name opens the session, so this side does not
    /// accept one from its peer.
    pub const SESSION_ROLE: u32 = 0x32;
    /// Connection closed because the ractor_cluster session on it ended while it was alive,
    /// so the peer redials and a fresh connection gets a fresh session.
    pub const SESSION_LOST: u32 = 0x33;
}

/// Transport knobs. The defaults detect a dead or frozen peer in ≤ 1.5 s.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// No packet for this long closes the connection (quinn `max_idle_timeout`).
    pub idle_timeout: Duration,
    /// Keep-alives keep an idle but healthy connection from timing out; must be well below
    /// `idle_timeout` so a few lost ones are tolerated.
    pub keep_alive: Duration,
    /// Largest data-plane frame accepted or sent.
    pub max_frame: usize,
    /// Bound on handshake + hello, so a slow or silent dialler cannot hold a slot forever.
    pub handshake_timeout: Duration,
    /// Bound on one outgoing dial (handshake + hello). A dial started while the peer was
    /// unreachable waits for Initial retransmissions, which back off; past this bound a
    /// fresh dial (after the membership backoff) sends its first packet at once, so a healed
    /// partition reconnects within about 1.5 s. Long enough for a TLS handshake on a loaded
    /// node. Also capped by `handshake_timeout`.
    pub dial_timeout: Duration,
    /// RTT assumed before the first sample (quinn `initial_rtt`; QUIC's default is 333 ms).
    /// Cluster links are LAN or metro: 100 ms makes a lost Initial be resent after about
    /// 0.3 s and 1 s instead of 1 s and 3 s.
    pub initial_rtt: Duration,
    /// Bound on one request/response exchange, on both sides.
    pub request_timeout: Duration,
    /// Concurrent bidirectional streams a peer may open; bounds buffered frames per peer.
    pub max_concurrent_streams: u32,
    /// Idle data-plane streams ("lanes") kept open per connection for later requests. Idle
    /// lanes hold the peer's stream credit, so at most half of `max_concurrent_streams` are
    /// kept whatever this says (data and streamed lanes together; a request that finds the
    /// credit used up finishes the other kind's idle lanes). 0 opens and finishes a stream
    /// per request.
    pub max_idle_lanes: usize,
    /// Verified connections waiting for `accept`.
    pub accept_backlog: usize,
    /// Incoming handshakes (TLS + hello) in progress at once; more are refused at once, so a
    /// flood of connection attempts cannot hold unbounded memory for `handshake_timeout`.
    pub max_handshakes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_millis(250),
            max_frame: 16 << 20,
            handshake_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(2),
            initial_rtt: Duration::from_millis(100),
            request_timeout: Duration::from_secs(10),
            max_concurrent_streams: 64,
            max_idle_lanes: 32,
            accept_backlog: 64,
            max_handshakes: 64,
        }
    }
}

impl TransportConfig {
    fn quinn(&self) -> Result<quinn::TransportConfig, ClusterError> {
        if self.keep_alive >= self.idle_timeout {
            return Err(ClusterError::Config(
                "keep_alive must be shorter than idle_timeout",
            ));
        }
        if self.accept_backlog == 0 {
            return Err(ClusterError::Config("accept_backlog must be at least 1"));
        }
        if self.max_handshakes == 0 {
            return Err(ClusterError::Config("max_handshakes must be at least 1"));
        }
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            IdleTimeout::try_from(self.idle_timeout)
                .map_err(|_| ClusterError::Config("idle_timeout out of range"))?,
        ));
        t.keep_alive_interval(Some(self.keep_alive));
        t.initial_rtt(self.initial_rtt);
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_streams));
        // Nothing uses unidirectional streams yet; do not let peers open any.
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_alpn_carries_the_wire_protocol_version() {
        let expected = format!("tern-mesh/{}", tern_wire::PROTOCOL_VERSION);
        assert_eq!(ALPN, expected.as_bytes());
    }
}
