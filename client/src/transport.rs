//! QUIC + TLS plumbing: the rustls configuration (aws-lc-rs passed explicitly, never ring),
//! dialling a node, and one request/response exchange on its own stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, IdleTimeout, RecvStream, VarInt};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_wire::frame::HEADER_LEN;
use tern_wire::{CLIENT_ALPN, FrameDecoder, WireError};

use crate::{ClientConfig, ClientError};

/// Suffix of every node's certificate name; a node `a` is dialled as `a.node.tern`.
pub(crate) const DNS_SUFFIX: &str = "node.tern";
/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// QUIC application code used when the client closes its connections.
const CLOSE_CLIENT: u32 = 0;

/// How one attempt against one node failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// The node could not be reached, or the connection broke: try another node.
    Lost(String),
    /// The node refused our TLS credentials during the handshake.
    Rejected(String),
    /// The node broke the protocol.
    Protocol(String),
}

pub(crate) struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    provider: Arc<CryptoProvider>,
}

fn tls_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Tls(e.to_string())
}

impl Transport {
    /// Builds the TLS configuration and opens the local UDP socket. Needs a tokio runtime.
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ca_pem = config.ca.read()?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            roots
                .add(cert.map_err(|e| tls_err(format!("CA: {e}")))?)
                .map_err(|e| tls_err(format!("CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls("the CA PEM holds no certificate".into()));
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots);
        let mut tls = match &config.client_cert {
            Some((cert, key)) => {
                let certs = CertificateDer::pem_slice_iter(&cert.read()?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_err(format!("client certificate: {e}")))?;
                if certs.is_empty() {
                    return Err(ClientError::Tls(
                        "the client certificate PEM holds no certificate".into(),
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(&key.read()?)
                    .map_err(|e| tls_err(format!("client key: {e}")))?;
                builder.with_client_auth_cert(certs, key).map_err(tls_err)?
            }
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls)
            .map_err(|_| ClientError::Tls("no QUIC initial cipher suite".into()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            IdleTimeout::try_from(config.idle_timeout)
                .map_err(|_| ClientError::Config("idle_timeout out of range".into()))?,
        ));
        transport.keep_alive_interval(Some(config.idle_timeout / 4));
        // Nodes never open streams towards a client.
        transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
        transport.max_concurrent_uni_streams(VarInt::from_u32(0));
        client_config.transport_config(Arc::new(transport));

        let bind = if config.seeds.iter().all(|(_, a)| a.is_ipv4()) {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Bind)?;
        Ok(Self {
            endpoint,
            client_config,
            provider,
        })
    }

    /// Dials node `name` at `addr`, checking its certificate is for `<name>.node.tern`.
    pub(crate) async fn connect(
        &self,
        name: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<quinn::Connection, AttemptError> {
        let server_name = format!("{name}.{DNS_SUFFIX}");
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, &server_name)
            .map_err(|e| AttemptError::Lost(format!("cannot dial: {e}")))?;
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(connection_error(e)),
            Err(_) => Err(AttemptError::Lost(format!(
                "no handshake within {timeout:?}"
            ))),
        }
    }

    /// Random bytes from the TLS provider's CSPRNG.
    pub(crate) fn random(&self, buf: &mut [u8]) -> bool {
        self.provider.secure_random.fill(buf).is_ok()
    }

    pub(crate) fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(CLOSE_CLIENT), b"client closed");
    }
}

/// Sorts a connection failure: a TLS alert from the node means it refused our credentials;
/// everything else means the node is gone or unusable.
pub(crate) fn connection_error(e: ConnectionError) -> AttemptError {
    match &e {
        ConnectionError::ConnectionClosed(close) if is_tls_alert(close.error_code.into()) => {
            AttemptError::Rejected(format!("TLS handshake refused: {e}"))
        }
        _ => AttemptError::Lost(format!("connection lost: {e}")),
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100–0x1ff (RFC 9001 §4.8).
fn is_tls_alert(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// One request/response exchange on a new stream: writes `frame` (already framed), reads one
/// frame of at most `max_response` bytes back.
pub(crate) async fn exchange(
    conn: &quinn::Connection,
    frame: &[u8],
    max_response: usize,
) -> Result<Vec<u8>, AttemptError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(connection_error)?;
    match send.write_all(frame).await {
        Ok(()) => {
            let _ = send.finish();
        }
        // The node stopped reading (it refuses the request, e.g. as oversized); its answer
        // says why.
        Err(quinn::WriteError::Stopped(_)) => {}
        Err(quinn::WriteError::ConnectionLost(e)) => return Err(connection_error(e)),
        Err(e) => return Err(AttemptError::Protocol(format!("cannot send: {e}"))),
    }
    read_frame(&mut recv, max_response).await
}

async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Vec<u8>, AttemptError> {
    let mut decoder = FrameDecoder::new(limit);
    let frame_err = |e: WireError| AttemptError::Protocol(format!("bad answer: {e}"));
    loop {
        if let Some(frame) = decoder.next_frame().map_err(frame_err)? {
            return Ok(frame);
        }
        let want = match decoder.buffered() {
            b if b < HEADER_LEN => HEADER_LEN - b,
            _ => READ_CHUNK,
        };
        match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes).map_err(frame_err)?,
            Ok(None) => {
                return Err(AttemptError::Protocol(
                    "the answer ended before a whole frame arrived".into(),
                ));
            }
            Err(quinn::ReadError::ConnectionLost(e)) => return Err(connection_error(e)),
            Err(quinn::ReadError::Reset(code)) => {
                return Err(AttemptError::Protocol(format!(
                    "the node reset the stream with code {code}"
                )));
            }
            Err(e) => return Err(AttemptError::Protocol(format!("cannot read: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_alerts_are_told_apart_from_other_closes() {
        assert!(is_tls_alert(0x100 | 42));
        assert!(is_tls_alert(0x100 | 48));
        assert!(!is_tls_alert(0x0a));
        assert!(!is_tls_alert(0x200));
    }
}
