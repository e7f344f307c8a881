//! Node-to-node data-plane messages: one [`PeerRequest`] frame on a QUIC stream, one
//! [`PeerResponse`] frame back. A stream carries one exchange at a time (it is kept open for
//! later ones: a lane, see tern-cluster's transport), so a module transfer never holds up an
//! invocation or a status update (design §4, "message size").

use serde::{Deserialize, Serialize};

use crate::{ApiError, FunctionInfo, FunctionName, ModuleHash};

/// What one node asks of another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The sender's load and warm modules; published a few times a second.
    Status(NodeStatus),
    /// Registry changes made on (or learnt by) the sender. Answered [`PeerResponse::Ack`]
    /// once applied, or with the first error.
    Announce(Vec<RegistryEntry>),
    /// The receiver's whole registry (anti-entropy when a session comes up).
    Registry,
    /// The bytes of a module, by hash.
    FetchModule(ModuleHash),
    /// Run one MEU here.
    Execute(RemoteMeu),
}

/// The answer to a [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PeerResponse {
    Ack,
    Registry(Vec<RegistryEntry>),
    Module(Vec<u8>),
    Executed(RemoteOutcome),
    Error(ApiError),
}

/// One function's registry entry, replicated to every node. Last writer wins, ordered by
/// [`RegistryEntry::order_key`]; a removal is an entry with `removed` set (a tombstone), so a
/// node that was away cannot bring a removed function back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub info: FunctionInfo,
    pub removed: bool,
    /// Node where this version was deployed or removed (breaks ties between concurrent deploys
    /// of the same version on two nodes).
    pub origin: String,
}

impl RegistryEntry {
    /// Total order of versions of one function: higher wins everywhere, so every node ends up
    /// with the same entry whatever order announcements arrive in.
    pub fn order_key(&self) -> (u64, u64, &str) {
        (self.info.version, self.info.deployed_at_ms, &self.origin)
    }

    /// Whether `self` should replace `current`.
    pub fn supersedes(&self, current: Option<&RegistryEntry>) -> bool {
        current.is_none_or(|c| self.order_key() > c.order_key())
    }
}

/// A node's load as published to its peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// Node class limits: functions needing more are not placed there.
    pub class: String,
    pub max_memory_mb: u32,
    pub max_timeout_ms: u32,
    /// Invocations admitted and unanswered.
    pub queue_depth: u32,
    /// Admission capacity (queue_cap).
    pub queue_cap: u32,
    /// Modules of the functions installed (callable) on the node.
    pub ready: Vec<ModuleHash>,
    /// Modules loaded (warm) on the node.
    pub warm: Vec<ModuleHash>,
    /// CPU use of the node process since the previous status, in percent of one core.
    pub cpu_percent: u32,
    /// Resident memory of the node process.
    pub memory_bytes: u64,
    /// Mean invocation latency over the last interval, microseconds (0 = no traffic).
    pub recent_mean_us: u64,
    /// Increases with every status from one boot of the node.
    pub seq: u64,
}

/// One MEU sent to another node to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteMeu {
    /// The request id of the invocation: the same on every attempt, so reruns after a failover
    /// are visible in logs and traces.
    pub request_id: String,
    pub function: FunctionName,
    /// The version the sender resolved; the receiver refuses to run a different one.
    pub hash: ModuleHash,
    pub input: Vec<u8>,
    pub items: u32,
    /// 1 for the first try, then counts reruns after a lost node.
    pub attempt: u32,
}

/// What running a [`RemoteMeu`] produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteOutcome {
    pub output: Vec<u8>,
    pub cold_start: bool,
    /// Eq. 3 terms, microseconds: pre, load, reuse, inst, exec.
    pub timings: [u64; 5],
    pub node: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::codec::{decode, encode};

    fn entry(version: u64, at: u64, origin: &str, removed: bool) -> RegistryEntry {
        RegistryEntry {
            info: FunctionInfo {
                name: "f".parse().unwrap(),
                hash: ModuleHash([7; 32]),
                version,
                timeout_ms: 100,
                memory_mb: 64,
                size_bytes: 10,
                deployed_at_ms: at,
            },
            removed,
            origin: origin.into(),
        }
    }

    #[test]
    fn last_writer_wins_is_a_total_order() {
        let a = entry(2, 10, "a", false);
        let b = entry(2, 10, "b", false);
        let older = entry(1, 99, "z", false);
        assert!(a.supersedes(None));
        assert!(b.supersedes(Some(&a)));
        assert!(!a.supersedes(Some(&b)));
        assert!(!a.supersedes(Some(&a)));
        assert!(a.supersedes(Some(&older)));
        assert!(!older.supersedes(Some(&a)));
        // A tombstone of a newer version beats the live entry, and the reverse.
        let gone = entry(3, 11, "a", true);
        assert!(gone.supersedes(Some(&b)));
        assert!(!b.supersedes(Some(&gone)));
    }

    #[test]
    fn every_message_round_trips_and_garbage_is_a_typed_error() {
        let msgs = vec![
            PeerRequest::Status(NodeStatus {
                node: "a".into(),
                warm: vec![ModuleHash([1; 32])],
                seq: 9,
                ..NodeStatus::default()
            }),
            PeerRequest::Announce(vec![entry(1, 2, "a", false)]),
            PeerRequest::Registry,
            PeerRequest::FetchModule(ModuleHash([3; 32])),
            PeerRequest::Execute(RemoteMeu {
                request_id: "r".into(),
                function: "f".parse().unwrap(),
                hash: ModuleHash([4; 32]),
                input: b"hi".to_vec(),
                items: 1,
                attempt: 1,
            }),
        ];
        for m in &msgs {
            let bytes = encode(m, 1 << 20).unwrap();
            assert_eq!(&decode::<PeerRequest>(&bytes, 1 << 20).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(decode::<PeerRequest>(&bytes[..cut], 1 << 20).is_err());
            }
        }
        let bad_name = encode(&(4u32, "r", "Bad Name"), 1 << 20).unwrap();
        assert!(decode::<PeerRequest>(&bad_name, 1 << 20).is_err());
    }
}
