//! Tern's inter-node mesh (issue 3), first slice: node names, the cluster PKI, the pure
//! membership state machine, and the QUIC transport with mutual TLS and data-plane streams.
//!
//! ractor_cluster sessions over QUIC, module replication and the node wiring come later; see
//! `README.md`.
#![forbid(unsafe_code)]

pub mod membership;
pub mod mesh;
pub mod pki;
pub mod transport;

mod error;
mod name;

pub use error::ClusterError;
pub use membership::{Membership, MembershipEvent, PeerState};
pub use mesh::{Mesh, MeshConfig};
pub use name::NodeName;
pub use pki::NodeIdentity;
pub use transport::{Connection, Endpoint, TransportConfig};
