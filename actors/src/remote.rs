//! The seam between the SchedulerAgent and other nodes. The cluster layer (tern-node on top
//! of tern-cluster) implements [`Remote`]; this crate only decides *where* an MEU runs and
//! what to do when a node is lost, so the decision logic is tested without a network.

use std::future::Future;
use std::pin::Pin;

use tern_wire::FunctionInfo;

use crate::{Error, Outcome};
use tern_placement::NodeView;
use tern_runtime::Meu;

/// Why running an MEU on another node did not produce its answer.
#[derive(Debug)]
pub enum RemoteFailure {
    /// The link broke or the node vanished before answering: the MEU may or may not have run
    /// there. Functions are stateless, so it is re-run elsewhere (at-least-once).
    Lost(Error),
    /// The node refused before running it (full, not ready for this version): try another.
    Refused(Error),
    /// It ran and failed (trap, timeout, bad input…): this is the answer.
    Failed(Error),
}

pub type RemoteFuture = Pin<Box<dyn Future<Output = Result<Outcome, RemoteFailure>> + Send>>;

/// What [`Remote::reserve`] holds: dropping it ends the reservation.
pub type Reservation = Box<dyn Send>;

/// Other nodes of the cluster, as the SchedulerAgent uses them.
pub trait Remote: Send + Sync + 'static {
    /// Appends the live peers that have `info`'s version ready, as placement candidates.
    fn candidates(&self, info: &FunctionInfo, out: &mut Vec<NodeView>);
    /// Runs `meu` (of version `info`) on `node`; `attempt` counts reruns after failover.
    fn execute(&self, node: &str, meu: Meu, info: &FunctionInfo, attempt: u32) -> RemoteFuture;
    /// Whether this node knows the cluster's registry: it has pulled a peer's since it
    /// started, has no peers, or has given up waiting. Until then a function it does not
    /// know may exist in the cluster, so asking for it is answered `Unavailable` (retry,
    /// perhaps through another node) instead of `NotFound`.
    fn registry_synced(&self) -> bool {
        true
    }
    /// MEUs this node has forwarded to peers and not had answered. Each still holds its
    /// admission permit here, so the scheduler takes them off this node's own queue depth:
    /// they run elsewhere.
    fn forwarding(&self) -> usize {
        0
    }
    /// Counts an MEU as forwarded to `node` from the moment it is placed there: the attempt
    /// is sent from a task of its own, and decisions taken before that task runs must see it.
    /// Held until the first attempt's [`Remote::execute`] has started counting it.
    fn reserve(&self, _node: &str) -> Option<Reservation> {
        None
    }
}
