//! Node names: parsed once, so a `NodeName` that exists is valid and safe to put in a path or a
//! certificate name.

use std::fmt;
use std::str::FromStr;

use crate::ClusterError;

/// A node's name: 1–64 characters of `[a-z0-9_-]`, starting with a letter or digit (the same
/// rules as function names). Ordering is byte-wise and decides which side of a pair dials.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

/// Every node certificate carries exactly one DNS name, `<node>.node.tern`; the CA is
/// name-constrained to this suffix.
pub const DNS_SUFFIX: &str = "node.tern";

impl NodeName {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DNS name in this node's certificate, also the TLS server name used to dial it.
    pub fn dns_name(&self) -> String {
        format!("{}.{DNS_SUFFIX}", self.0)
    }
}

impl FromStr for NodeName {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        tern_wire::api::check_name(s).map_err(|reason| ClusterError::InvalidNodeName {
            // Truncate so a hostile peer cannot make us log megabytes.
            name: s.chars().take(80).collect(),
            reason,
        })?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["a", "node-1", "0x", "a_b", &"z".repeat(64)] {
            assert!(ok.parse::<NodeName>().is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a.b", "a/b", "é", &"z".repeat(65)] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad}");
        }
    }
}
