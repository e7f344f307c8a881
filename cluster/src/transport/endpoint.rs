//! The node's quinn endpoint: the TLS configuration both ways (mutual TLS against the cluster
//! CA, TLS 1.3 only, aws-lc-rs), dialling a peer, and the accept loop that bounds concurrent
//! handshakes. Kept apart from the connection code because it is the only place that deals
//! with sockets and certificates; what it hands out has already passed `hello.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use super::hello::{client_hello, close_code, server_handshake};
use super::{ALPN, Connection, TransportConfig, codes};
use crate::{ClusterError, NodeIdentity, NodeName};

/// This node's QUIC endpoint: dials peers and accepts their (verified) connections.
/// Must be created inside a tokio runtime.
pub struct Endpoint {
    inner: quinn::Endpoint,
    name: NodeName,
    client_config: quinn::ClientConfig,
    cfg: Arc<TransportConfig>,
    incoming: Mutex<mpsc::Receiver<Connection>>,
    rejected: Arc<AtomicU64>,
    members: Members,
    accept_task: JoinHandle<()>,
}

/// The names diallers may have (see [`Endpoint::accept_only`]); `None`: any the certificate
/// proves.
pub(super) type Members = Arc<std::sync::RwLock<Option<std::collections::BTreeSet<NodeName>>>>;

impl Endpoint {
    /// Binds a UDP socket on `addr` and starts accepting connections in the background.
    pub fn bind(
        identity: &NodeIdentity,
        addr: SocketAddr,
        cfg: TransportConfig,
    ) -> Result<Self, ClusterError> {
        let socket = std::net::UdpSocket::bind(addr).map_err(ClusterError::Bind)?;
        Self::from_socket(identity, socket, cfg)
    }

    /// Runs the endpoint on a UDP socket bound by the caller, and starts accepting
    /// connections in the background. Lets a caller that must know the address before the
    /// endpoint exists (peers configured with each other's addresses, socket activation) bind
    /// once and keep the port, instead of releasing it and binding it again.
    pub fn from_socket(
        identity: &NodeIdentity,
        socket: std::net::UdpSocket,
        cfg: TransportConfig,
    ) -> Result<Self, ClusterError> {
        let transport = Arc::new(cfg.quinn()?);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(identity.ca.clone())?;
        let roots = Arc::new(roots);

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let server_quic = QuicServerConfig::try_from(server_tls)
            .map_err(|_| ClusterError::NoInitialCipherSuite)?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server_config.transport_config(transport.clone());

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_quic = QuicClientConfig::try_from(client_tls)
            .map_err(|_| ClusterError::NoInitialCipherSuite)?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_quic));
        client_config.transport_config(transport);

        // What `quinn::Endpoint::server` does after binding; quinn makes the socket
        // non-blocking itself.
        let inner = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(ClusterError::Bind)?;
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::channel(cfg.accept_backlog);
        let rejected = Arc::new(AtomicU64::new(0));
        let members = Members::default();
        let accept_task = tokio::spawn(accept_loop(
            inner.clone(),
            identity.name.clone(),
            cfg.clone(),
            tx,
            rejected.clone(),
            members.clone(),
        ));
        Ok(Self {
            inner,
            name: identity.name.clone(),
            client_config,
            cfg,
            incoming: Mutex::new(rx),
            rejected,
            members,
            accept_task,
        })
    }

    /// From now on, refuses diallers whose (proven) name is not one of `names`, the cluster's
    /// members, in the handshake: the dialler's connect fails (`Rejected` with the identity
    /// code) and the refusal is counted, so a node with a valid certificate for a name outside
    /// the cluster never holds a connection, even for a moment.
    pub fn accept_only(&self, names: impl IntoIterator<Item = NodeName>) {
        let names = names.into_iter().collect();
        *self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(names);
    }

    pub fn name(&self) -> &NodeName {
        &self.name
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ClusterError> {
        self.inner.local_addr().map_err(ClusterError::Bind)
    }

    /// Incoming connections that failed the handshake or the identity check so far
    /// (an error metric counts it).
    pub fn rejected_handshakes(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Dials `peer` at `addr` and verifies it is `peer`. Fails with a typed error (never a
    /// half-verified connection) on a wrong CA, a wrong name, or a timeout.
    pub async fn connect(
        &self,
        peer: &NodeName,
        addr: SocketAddr,
    ) -> Result<Connection, ClusterError> {
        let fut = async {
            let conn = self
                .inner
                .connect_with(self.client_config.clone(), addr, &peer.dns_name())?
                .await?;
            match client_hello(&conn, &self.name, peer).await {
                Ok(()) => Ok(Connection::new(conn, peer.clone(), self.cfg.clone())),
                Err(e) => {
                    conn.close(VarInt::from_u32(close_code(&e)), b"identity check failed");
                    Err(e)
                }
            }
        };
        let bound = self.cfg.dial_timeout.min(self.cfg.handshake_timeout);
        tokio::time::timeout(bound, fut)
            .await
            .map_err(|_| ClusterError::Timeout("connect"))?
    }

    /// The next incoming connection whose peer passed the identity check.
    pub async fn accept(&self) -> Result<Connection, ClusterError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(ClusterError::EndpointClosed)
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.accept_task.abort();
        self.inner
            .close(VarInt::from_u32(codes::SHUTDOWN), b"shutdown");
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // The accept loop holds a handle to the quinn endpoint and would keep the socket open.
        self.accept_task.abort();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    me: NodeName,
    cfg: Arc<TransportConfig>,
    tx: mpsc::Sender<Connection>,
    rejected: Arc<AtomicU64>,
    members: Members,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(cfg.max_handshakes));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(remote = %incoming.remote_address(), "too many handshakes in progress; refused");
            incoming.refuse();
            continue;
        };
        let (me, cfg, tx, rejected, members) = (
            me.clone(),
            cfg.clone(),
            tx.clone(),
            rejected.clone(),
            members.clone(),
        );
        // One task per handshake: a slow dialler must not hold up the others.
        tokio::spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let result = tokio::time::timeout(
                cfg.handshake_timeout,
                server_handshake(incoming, &me, &cfg, &members),
            )
            .await
            .unwrap_or(Err(ClusterError::Timeout("handshake")));
            match result {
                Ok(conn) => {
                    // If nobody accepts any more, dropping the connection closes it.
                    let _ = tx.send(conn).await;
                }
                Err(e) => {
                    rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, error = %e, "rejected incoming peer connection");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki;

    fn n(s: &str) -> NodeName {
        s.parse().expect("valid name")
    }

    /// An endpoint on a socket bound beforehand listens on that very socket: its address is
    /// the socket's, and a peer dialling that address gets a verified connection.
    #[tokio::test]
    async fn an_endpoint_runs_on_a_socket_bound_beforehand() {
        let dir = tempfile::tempdir().expect("temp dir");
        pki::init(dir.path(), &[n("a"), n("b")]).expect("pki");
        let load = |name: &str| pki::load(dir.path(), &n(name)).expect("identity");
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("address");
        let b = Endpoint::from_socket(&load("b"), socket, TransportConfig::default())
            .expect("endpoint on the socket");
        assert_eq!(b.local_addr().expect("address"), addr);

        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let a = Endpoint::bind(&load("a"), any, TransportConfig::default()).expect("endpoint");
        let b_name = n("b");
        let (dialled, accepted) = tokio::join!(a.connect(&b_name, addr), b.accept());
        assert_eq!(dialled.expect("a dials b").peer(), &b_name);
        assert_eq!(accepted.expect("b accepts a").peer(), &n("a"));
        a.close();
        b.close();
    }
}
