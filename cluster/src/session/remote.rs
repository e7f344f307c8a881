//! Remote actors over sessions: the pg group naming scheme, [`RemoteGroup`] (a peer's group
//! members, looked up again whenever its session changes, since remote actor ids die with the
//! session), and the size-capped send behind [`Sessions::cast`] and [`Sessions::call`]. Kept
//! apart from the session lifecycle because it only reads what the lifecycle publishes.

use std::collections::HashMap;

use ractor::message::SerializedMessage;
use ractor::{ActorCell, ActorId};
use ractor_cluster::NodeId;
use tokio::sync::broadcast;

use super::{SessionEvent, SessionInfo, Sessions};
use crate::{ClusterError, NodeName};
use tern_sync::poison::lock;

/// The pg group of the actors that take `message` in `version`: `tern.<message>.v<version>`.
pub fn group_name(message: &str, version: u32) -> String {
    format!("tern.{message}.v{version}")
}

/// Members of `group` that are remote actors reached through the session `node_id`.
pub(super) fn members_via(node_id: NodeId, group: &str) -> Vec<ActorCell> {
    ractor::pg::get_members(&group.to_owned())
        .into_iter()
        .filter(|cell| matches!(cell.get_id(), ActorId::Remote { node_id: n, .. } if n == node_id))
        .collect()
}

pub(super) fn send_capped<M: ractor::Message>(
    target: &ActorCell,
    message: M,
    limit: usize,
) -> Result<(), ClusterError> {
    if target.get_id().is_local() {
        return target
            .send_message(message)
            .map_err(|_| ClusterError::ActorGone);
    }
    if !M::serializable() {
        return Err(ClusterError::NotRemotable);
    }
    let serialized = message
        .serialize()
        .map_err(|_| ClusterError::NotRemotable)?;
    let size = match &serialized {
        SerializedMessage::Cast {
            variant,
            args,
            metadata,
        }
        | SerializedMessage::Call {
            variant,
            args,
            metadata,
            ..
        } => variant.len() + args.len() + metadata.as_ref().map_or(0, Vec::len),
        SerializedMessage::CallReply(_, bytes) => bytes.len(),
    };
    if size > limit {
        return Err(ClusterError::MessageTooLarge { size, limit });
    }
    // The same path ractor takes for a remote `send_message`: the RemoteActor forwards it.
    target
        .send_serialized(serialized)
        .map_err(|_| ClusterError::ActorGone)
}

/// Keeps the remote actors of one pg group per peer, looked up again on every session-ready
/// and dropped on session-down (ARCHITECTURE.md §5).
pub struct RemoteGroup {
    sessions: Sessions,
    group: String,
    events: broadcast::Receiver<SessionEvent>,
    members: HashMap<NodeName, Vec<ActorCell>>,
}

impl RemoteGroup {
    pub fn new(sessions: &Sessions, group: impl Into<String>) -> Self {
        let events = sessions.subscribe();
        let mut this = Self {
            sessions: sessions.clone(),
            group: group.into(),
            events,
            members: HashMap::new(),
        };
        this.relookup_all();
        this
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The current remote actors of `peer` in this group. Applies pending session events
    /// first, and looks up again when none are known (an actor may join after the session
    /// became ready).
    pub fn members(&mut self, peer: &NodeName) -> Vec<ActorCell> {
        self.apply_events();
        let known = self.members.get(peer).is_some_and(|m| !m.is_empty());
        if !known {
            self.relookup(peer);
        }
        self.members.get(peer).cloned().unwrap_or_default()
    }

    fn apply_events(&mut self) {
        loop {
            match self.events.try_recv() {
                Ok(SessionEvent::Ready(info)) => self.relookup(&info.peer),
                Ok(SessionEvent::Down(info)) => {
                    self.members.remove(&info.peer);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.relookup_all(),
                Err(_) => return,
            }
        }
    }

    fn relookup(&mut self, peer: &NodeName) {
        match self.sessions.remote_members(peer, &self.group) {
            Ok(found) => {
                self.members.insert(peer.clone(), found);
            }
            Err(_) => {
                self.members.remove(peer);
            }
        }
    }

    fn relookup_all(&mut self) {
        let ready: Vec<SessionInfo> = lock(&self.sessions.inner.shared.state)
            .ready
            .values()
            .cloned()
            .collect();
        self.members.clear();
        for info in ready {
            self.members
                .insert(info.peer.clone(), members_via(info.node_id, &self.group));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_named_per_message_and_version() {
        assert_eq!(group_name("status", 1), "tern.status.v1");
    }
}
