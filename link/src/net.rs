//! The transport seam of the link: who the peers are, whether each is connected, and one
//! request/answer exchange with a peer. The QUIC [`Mesh`] implements it for real nodes; the
//! in-memory mesh ([`crate::memory`]) implements it for deterministic tests, where partitions,
//! crashes and delays are scripted and time is tokio's paused clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tern_cluster::{MembershipEvent, Mesh, NodeName, PartSender, PeerState};
use tokio::sync::broadcast;

use crate::LinkError;

/// One exchange's answer frame, or why there is none.
pub type NetFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, LinkError>> + Send>>;

/// What the link needs of a mesh.
pub trait PeerNet: Send + Sync + 'static {
    /// Every configured peer and its membership state.
    fn members(&self) -> BTreeMap<NodeName, PeerState>;
    /// The round-trip time to `peer` while it is connected; `None` when it is not.
    fn rtt(&self, peer: &NodeName) -> Option<Duration>;
    /// Sends `frame` to `peer` and waits for its answer frame. `None` when `peer` is not
    /// connected (nothing was sent).
    fn request(&self, peer: &NodeName, frame: Vec<u8>) -> Option<NetFuture>;
    /// Like [`PeerNet::request`], for a request whose answer may come in parts: each part
    /// frame goes to `parts` as it arrives, before the answer frame.
    fn request_streamed(
        &self,
        peer: &NodeName,
        frame: Vec<u8>,
        parts: PartSender,
    ) -> Option<NetFuture>;
    /// Membership changes from now on.
    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent>;
    /// Handshakes refused because the peer's identity did not check out.
    fn rejected_handshakes(&self) -> u64;
    /// The address peers reach this node at.
    fn local_addr(&self) -> Result<SocketAddr, LinkError>;
    /// Closes every connection; peers see this node leave at once.
    fn shutdown(&self);
}

impl PeerNet for Mesh {
    fn members(&self) -> BTreeMap<NodeName, PeerState> {
        Mesh::members(self)
    }

    fn rtt(&self, peer: &NodeName) -> Option<Duration> {
        self.connection(peer).map(|c| c.rtt())
    }

    fn request(&self, peer: &NodeName, frame: Vec<u8>) -> Option<NetFuture> {
        let conn = self.connection(peer)?;
        Some(Box::pin(async move { Ok(conn.request(&frame).await?) }))
    }

    fn request_streamed(
        &self,
        peer: &NodeName,
        frame: Vec<u8>,
        parts: PartSender,
    ) -> Option<NetFuture> {
        let conn = self.connection(peer)?;
        Some(Box::pin(async move {
            Ok(conn.request_streamed(&frame, &parts).await?)
        }))
    }

    fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        Mesh::subscribe(self)
    }

    fn rejected_handshakes(&self) -> u64 {
        Mesh::rejected_handshakes(self)
    }

    fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        Ok(Mesh::local_addr(self)?)
    }

    fn shutdown(&self) {
        Mesh::shutdown(self)
    }
}
