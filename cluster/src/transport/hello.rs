//! The identity check every new connection passes before it leaves the transport: the
//! dialler's hello stream ([`KIND_HELLO`]) claims a name, the acceptor checks the client
//! certificate is for that name and answers with its own. rustls proves the chain to the
//! cluster CA; this proves which node the certificate belongs to, so one member cannot pose
//! as another (ARCHITECTURE.md §5).

use std::sync::Arc;

use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use tern_wire::encode_frame;

use super::frame::{read_frame, read_kind};
use super::{Connection, KIND_HELLO, TransportConfig, codes};
use crate::pki::check_cert_name;
use crate::{ClusterError, NodeName};

/// A hello frame holds a node name (≤ 64 bytes); anything bigger is hostile.
const MAX_HELLO: usize = 256;

/// The acceptor's side: finishes the QUIC handshake, then checks the hello. On failure the
/// connection is closed with the code of [`close_code`].
pub(super) async fn server_handshake(
    incoming: quinn::Incoming,
    me: &NodeName,
    cfg: &Arc<TransportConfig>,
    members: &super::endpoint::Members,
) -> Result<Connection, ClusterError> {
    let conn = incoming.await?;
    let hello = async {
        let leaf = peer_leaf(&conn)?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let kind = read_kind(&mut recv).await?;
        if kind != KIND_HELLO {
            return Err(ClusterError::UnsupportedStreamKind(kind));
        }
        let claimed = parse_name(&read_frame(&mut recv, MAX_HELLO).await?)?;
        // The binding of name to certificate: rustls proved the chain, this proves the name.
        check_cert_name(&leaf, &claimed)?;
        let outsider = members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|names| !names.contains(&claimed));
        if outsider {
            return Err(ClusterError::NotAMember(claimed.to_string()));
        }
        send.write_all(&encode_frame(me.as_str().as_bytes(), MAX_HELLO)?)
            .await?;
        send.finish()?;
        Ok(claimed)
    };
    match hello.await {
        Ok(peer) => Ok(Connection::new(conn, peer, cfg.clone())),
        Err(e) => {
            conn.close(VarInt::from_u32(close_code(&e)), b"identity check failed");
            Err(e)
        }
    }
}

/// The dialler's side: sends our name, and checks the acceptor answers as `peer`.
pub(super) async fn client_hello(
    conn: &quinn::Connection,
    me: &NodeName,
    peer: &NodeName,
) -> Result<(), ClusterError> {
    // rustls already checked the server name; checking again here keeps the name binding
    // explicit and independent of how the TLS verifier is configured.
    check_cert_name(&peer_leaf(conn)?, peer)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[KIND_HELLO]).await?;
    send.write_all(&encode_frame(me.as_str().as_bytes(), MAX_HELLO)?)
        .await?;
    send.finish()?;
    // The answer also confirms the server accepted our certificate: in TLS 1.3 the client
    // finishes its handshake before the server has verified it.
    let answered = parse_name(&read_frame(&mut recv, MAX_HELLO).await?)?;
    if &answered != peer {
        return Err(ClusterError::WrongPeer {
            claimed: peer.to_string(),
            answered: answered.to_string(),
        });
    }
    Ok(())
}

/// The code a connection that failed the hello is closed with.
pub(super) fn close_code(e: &ClusterError) -> u32 {
    match e {
        ClusterError::Timeout(_) => codes::TIMEOUT,
        _ => codes::IDENTITY,
    }
}

fn parse_name(bytes: &[u8]) -> Result<NodeName, ClusterError> {
    std::str::from_utf8(bytes)
        .map_err(|_| ClusterError::InvalidNodeName {
            name: String::from_utf8_lossy(bytes).chars().take(80).collect(),
            reason: "not UTF-8",
        })?
        .parse()
}

fn peer_leaf(conn: &quinn::Connection) -> Result<CertificateDer<'static>, ClusterError> {
    let identity = conn
        .peer_identity()
        .ok_or(ClusterError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| ClusterError::NoPeerCertificate)?;
    chain
        .into_iter()
        .next()
        .ok_or(ClusterError::NoPeerCertificate)
}
