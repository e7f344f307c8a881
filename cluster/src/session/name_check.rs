//! The name check on a session stream, before any byte of it reaches ractor_cluster: the
//! peer's first ractor frames (`u64` big-endian length + protobuf `meta.NetworkMessage`) must
//! name the peer's verified [`NodeName`] as [`ractor_node_name`] does. The protobuf subset is
//! mirrored here (`wire`) so the name checked is the name ractor_cluster will decode.

use prost::Message as _;
use quinn::RecvStream;

use super::{FRAME_HEADER, MAX_CLAIM_FRAME, ractor_node_name};
use crate::{ClusterError, NodeName};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// We accepted the stream: the peer's first frame must be its name.
    Acceptor,
    /// We opened the stream: the peer answers with a status, then a challenge carrying its name.
    Opener,
}

/// Reads the peer's first ractor frames and checks the name they claim against `peer`.
/// Returns the bytes read, to be replayed to ractor_cluster.
pub(super) async fn read_claim(
    recv: &mut RecvStream,
    peer: &NodeName,
    role: Role,
) -> Result<Vec<u8>, ClusterError> {
    let mut consumed = Vec::new();
    let frames = match role {
        Role::Acceptor => 1,
        Role::Opener => 2,
    };
    for index in 0..frames {
        let mut header = [0u8; FRAME_HEADER];
        read_exact(recv, &mut header).await?;
        let len = u64::from_be_bytes(header);
        if len > MAX_CLAIM_FRAME {
            return Err(ClusterError::FrameTooLarge {
                size: usize::try_from(len).unwrap_or(usize::MAX),
                limit: MAX_CLAIM_FRAME as usize,
            });
        }
        // Bounded by MAX_CLAIM_FRAME above.
        let mut body = vec![0u8; len as usize];
        read_exact(recv, &mut body).await?;
        check_frame(&body, peer, role, index)?;
        consumed.extend_from_slice(&header);
        consumed.extend_from_slice(&body);
    }
    Ok(consumed)
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<(), ClusterError> {
    recv.read_exact(buf).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => ClusterError::Truncated,
        quinn::ReadExactError::ReadError(e) => e.into(),
    })
}

/// Checks frame `index` (0-based) of what `peer` sent us in `role`.
fn check_frame(body: &[u8], peer: &NodeName, role: Role, index: usize) -> Result<(), ClusterError> {
    let protocol = |reason| ClusterError::SessionProtocol {
        peer: peer.to_string(),
        reason,
    };
    let frame = wire::NetworkMessage::decode(body)
        .map_err(|_| protocol("first frames are not ractor protobuf"))?;
    let Some(wire::network_message::Message::Auth(auth)) = frame.message else {
        return Err(protocol("expected an authentication message first"));
    };
    use wire::authentication_message::Msg;
    let (name, connection_string) = match (role, index, auth.msg) {
        (Role::Acceptor, 0, Some(Msg::Name(n))) => (n.name, n.connection_string),
        (Role::Opener, 0, Some(Msg::ServerStatus(_))) => return Ok(()),
        (Role::Opener, 1, Some(Msg::ServerChallenge(c))) => (c.name, c.connection_string),
        _ => return Err(protocol("unexpected authentication message")),
    };
    let expected = ractor_node_name(peer);
    let host_ok = connection_string
        .strip_prefix(peer.dns_name().as_str())
        .is_some_and(|rest| rest.starts_with(':'));
    if name != expected || !host_ok {
        return Err(ClusterError::SessionIdentity {
            expected: expected.clone(),
            // Bounded: it comes from the peer.
            claimed: name.chars().take(80).collect(),
        });
    }
    Ok(())
}

/// The subset of ractor_cluster 0.16.5's `meta.proto` / `auth.proto` the name check reads.
/// Same tags and `oneof` shapes as ractor_cluster's generated code, so prost decodes a frame
/// here exactly as ractor_cluster will; the variants we never inspect stay opaque bytes.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NetworkMessage {
        #[prost(oneof = "network_message::Message", tags = "1, 2, 3")]
        pub(super) message: Option<network_message::Message>,
    }

    pub(super) mod network_message {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub(in super::super) enum Message {
            #[prost(message, tag = "1")]
            Auth(super::AuthenticationMessage),
            #[prost(bytes, tag = "2")]
            Node(Vec<u8>),
            #[prost(bytes, tag = "3")]
            Control(Vec<u8>),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct AuthenticationMessage {
        #[prost(oneof = "authentication_message::Msg", tags = "1, 2, 3, 4, 5, 6")]
        pub(super) msg: Option<authentication_message::Msg>,
    }

    pub(super) mod authentication_message {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub(in super::super) enum Msg {
            #[prost(message, tag = "1")]
            Name(super::NameMessage),
            #[prost(message, tag = "2")]
            ServerStatus(super::ServerStatus),
            #[prost(bytes, tag = "3")]
            ClientStatus(Vec<u8>),
            #[prost(message, tag = "4")]
            ServerChallenge(super::Challenge),
            #[prost(bytes, tag = "5")]
            ClientChallenge(Vec<u8>),
            #[prost(bytes, tag = "6")]
            ServerAck(Vec<u8>),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NameMessage {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(bytes, tag = "2")]
        pub(super) flags: Vec<u8>,
        #[prost(string, tag = "3")]
        pub(super) connection_string: String,
        #[prost(uint64, tag = "4")]
        pub(super) connection_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ServerStatus {
        #[prost(int32, tag = "1")]
        pub(super) status: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Challenge {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(bytes, tag = "2")]
        pub(super) flags: Vec<u8>,
        #[prost(uint32, tag = "3")]
        pub(super) challenge: u32,
        #[prost(string, tag = "4")]
        pub(super) connection_string: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        s.parse().expect("valid name")
    }

    fn name_frame(name: &str, conn: &str) -> Vec<u8> {
        let msg = wire::NetworkMessage {
            message: Some(wire::network_message::Message::Auth(
                wire::AuthenticationMessage {
                    msg: Some(wire::authentication_message::Msg::Name(wire::NameMessage {
                        name: name.to_owned(),
                        flags: vec![8, 1],
                        connection_string: conn.to_owned(),
                        connection_id: 7,
                    })),
                },
            )),
        };
        msg.encode_to_vec()
    }

    #[test]
    fn the_first_frame_must_name_the_certified_peer() {
        let a = n("a");
        let ok = name_frame("a@a.node.tern", "a.node.tern:4000");
        assert!(check_frame(&ok, &a, Role::Acceptor, 0).is_ok());
        for bad in [
            name_frame("c@c.node.tern", "c.node.tern:4000"),
            name_frame("a@evil", "a.node.tern:4000"),
            name_frame("a@a.node.tern", "b.node.tern:4000"),
            name_frame("a@a.node.tern", "a.node.ternx:1"),
        ] {
            assert!(matches!(
                check_frame(&bad, &a, Role::Acceptor, 0),
                Err(ClusterError::SessionIdentity { .. })
            ));
        }
        // A frame whose last oneof field is not the name decodes, like in ractor_cluster, as
        // that other field: no name, refused.
        let mut sneaky = ok.clone();
        sneaky.extend_from_slice(&[0x1a, 0x00]); // field 3 (control), empty
        assert!(matches!(
            check_frame(&sneaky, &a, Role::Acceptor, 0),
            Err(ClusterError::SessionProtocol { .. })
        ));
        assert!(check_frame(&[0xff, 0xff], &a, Role::Acceptor, 0).is_err());
        assert!(check_frame(&ok, &a, Role::Opener, 0).is_err());
    }
}
