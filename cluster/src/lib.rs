//! Tern's inter-node mesh: node names, the cluster PKI, the pure membership state
//! machine, the QUIC transport with mutual TLS and data-plane streams, and ractor_cluster
//! sessions over QUIC streams with a name check (`session`).
//!
//! Module replication and the node wiring come later; see `README.md`.
#![forbid(unsafe_code)]

pub mod membership;
pub mod mesh;
pub mod pki;
pub mod session;
pub mod transport;

mod error;
mod name;

pub use error::ClusterError;
pub use membership::{Membership, MembershipEvent, PeerState};
pub use mesh::{Mesh, MeshConfig};
pub use name::NodeName;
pub use pki::NodeIdentity;
pub use session::{SessionConfig, SessionEvent, SessionInfo, Sessions};
pub use transport::{Connection, Endpoint, PartSender, TransportConfig};
