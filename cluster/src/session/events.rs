//! The NodeServer's view of sessions, turned into ours: ractor_cluster reports sessions by the
//! label we gave their stream (`<peer>#<connection id>`), and [`Subscriber`] maps them back to
//! a peer and a connection, keeps the ready table, publishes [`SessionEvent`]s, and closes a
//! connection whose session ended under it (a session lives exactly as long as its
//! connection).

use std::sync::Arc;

use ractor_cluster::{NodeEventSubscription, node::NodeServerSessionInformation};

use super::{SessionEvent, SessionInfo, Shared};
use crate::NodeName;
use crate::transport::codes;
use tern_sync::poison::lock;

/// This module's subscription at the NodeServer.
pub(super) struct Subscriber(pub(super) Arc<Shared>);

/// Our streams are labelled `<peer>#<connection id>`; ractor_cluster reports the label as the
/// session's `peer_addr`.
pub(super) fn label(peer: &NodeName, connection_id: u64) -> String {
    format!("{peer}#{connection_id}")
}

fn parse_label(label: &str) -> Option<(NodeName, u64)> {
    let (peer, id) = label.rsplit_once('#')?;
    Some((peer.parse().ok()?, id.parse().ok()?))
}

impl NodeEventSubscription for Subscriber {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(node_id = ses.node_id, peer = %ses.peer_addr, "ractor session opened");
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(node_id = ses.node_id, peer = %ses.peer_addr, "ractor session authenticated");
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let Some((peer, connection_id)) = parse_label(&ses.peer_addr) else {
            return;
        };
        let info = SessionInfo {
            peer: peer.clone(),
            node_id: ses.node_id,
            connection_id,
        };
        tracing::info!(%peer, node_id = ses.node_id, connection_id, "ractor session ready");
        lock(&self.0.state).ready.insert(peer, info.clone());
        let _ = self.0.events.send(SessionEvent::Ready(info));
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let Some((peer, connection_id)) = parse_label(&ses.peer_addr) else {
            return;
        };
        let (was_ready, conn) = {
            let mut state = lock(&self.0.state);
            let was_ready = match state.ready.get(&peer) {
                Some(info) if info.node_id == ses.node_id => state.ready.remove(&peer),
                _ => None,
            };
            (was_ready, state.attached.remove(&connection_id))
        };
        // A session lives as long as its connection: if the connection outlived it, close it
        // so that the peer pair redials and gets a fresh session.
        if let Some(conn) = conn.filter(|c| !c.is_closed()) {
            tracing::warn!(%peer, connection_id, "ractor session ended on a live connection; closing it");
            conn.close_with(codes::SESSION_LOST, b"ractor session ended");
        }
        if let Some(info) = was_ready {
            tracing::info!(%peer, node_id = ses.node_id, connection_id, "ractor session down");
            let _ = self.0.events.send(SessionEvent::Down(info));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        let b: NodeName = "b-1".parse().expect("valid name");
        assert_eq!(parse_label(&label(&b, 42)), Some((b, 42)));
        assert_eq!(parse_label("nonsense"), None);
    }
}
