//! Sockets bound before the node starts, used instead of binding the configured addresses.
//!
//! Two callers need this. Tests whose nodes must know each other's addresses before they
//! start bind every socket once and hand it over, so no other process can take a port between
//! choosing it and the node binding it. And an operator can let a supervisor bind the sockets
//! (systemd socket activation, [`Sockets::from_listen_fds`]), which also keeps them, and the
//! connections waiting on them, across restarts of the node.

use std::net::{TcpListener, UdpSocket};

use crate::config::ConfigError;

/// Pre-bound sockets for [`crate::node::start_with`]; a `None` socket is bound from the
/// configuration as usual.
#[derive(Debug, Default)]
pub struct Sockets {
    /// The HTTP API's listener, instead of binding `listen`.
    pub http: Option<TcpListener>,
    /// The mesh endpoint's UDP socket, instead of binding `cluster_listen`. Needs
    /// `cluster_dir`.
    pub mesh: Option<UdpSocket>,
    /// The QUIC client API's UDP socket, instead of binding `client_listen`; passing one turns
    /// the client API on even when `client_listen` is unset. Needs `cluster_dir`.
    pub client: Option<UdpSocket>,
}

/// What an inherited socket is for, from its name in `LISTEN_FDNAMES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Http,
    Mesh,
    Client,
}

impl Role {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "http" => Some(Role::Http),
            "mesh" => Some(Role::Mesh),
            "client" => Some(Role::Client),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Http => "http",
            Role::Mesh => "mesh",
            Role::Client => "client",
        }
    }
}

impl Sockets {
    /// The sockets passed by systemd's socket activation protocol: `LISTEN_FDS` descriptors
    /// from fd 3 on (ignored when `LISTEN_PID` is set to another process), named in order by
    /// `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`): `http` (a TCP listener), `mesh` and
    /// `client` (UDP sockets). A socket with another name, a name used twice, a missing name or
    /// a socket of the wrong type is an error rather than a socket silently left unused. No
    /// `LISTEN_FDS` gives no sockets.
    ///
    /// Call it before starting any thread (the `tern` binary does, first thing in `main`):
    /// listenfd removes `LISTEN_FDS` and `LISTEN_PID` from the environment, so they are not
    /// passed on, and the environment must not change while another thread may read it.
    pub fn from_listen_fds() -> Result<Self, ConfigError> {
        let names = std::env::var("LISTEN_FDNAMES").ok();
        let mut fds = listenfd::ListenFd::from_env();
        let roles = roles(names.as_deref(), fds.len())?;
        let mut sockets = Sockets::default();
        for (index, role) in roles.into_iter().enumerate() {
            let taken = |e: std::io::Error| {
                ConfigError::Invalid(format!(
                    "inherited socket {index} ({}): {e}; http must be a TCP listener, mesh \
                     and client UDP sockets",
                    role.name()
                ))
            };
            let gone = || ConfigError::Invalid(format!("inherited socket {index} is gone"));
            match role {
                Role::Http => {
                    sockets.http = Some(
                        fds.take_tcp_listener(index)
                            .map_err(taken)?
                            .ok_or_else(gone)?,
                    );
                }
                Role::Mesh => {
                    sockets.mesh = Some(
                        fds.take_udp_socket(index)
                            .map_err(taken)?
                            .ok_or_else(gone)?,
                    );
                }
                Role::Client => {
                    sockets.client = Some(
                        fds.take_udp_socket(index)
                            .map_err(taken)?
                            .ok_or_else(gone)?,
                    );
                }
            }
        }
        Ok(sockets)
    }
}

/// The role of each of `count` inherited sockets, from `LISTEN_FDNAMES`.
fn roles(names: Option<&str>, count: usize) -> Result<Vec<Role>, ConfigError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let Some(names) = names else {
        return bad(format!(
            "{count} inherited sockets (LISTEN_FDS) but no LISTEN_FDNAMES: name them http, \
             mesh or client (systemd: FileDescriptorName=)"
        ));
    };
    let names: Vec<&str> = names.split(':').collect();
    if names.len() != count {
        return bad(format!(
            "{count} inherited sockets (LISTEN_FDS) but {} names in LISTEN_FDNAMES",
            names.len()
        ));
    }
    let mut roles = Vec::with_capacity(count);
    for name in names {
        // Bounded: the names come from the environment, which anyone starting us controls.
        let shown: String = name.chars().take(64).collect();
        let Some(role) = Role::from_name(name) else {
            return bad(format!(
                "inherited socket named {shown:?}: expected http, mesh or client"
            ));
        };
        if roles.contains(&role) {
            return bad(format!("two inherited sockets are named {shown:?}"));
        }
        roles.push(role);
    }
    Ok(roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(r: Result<Vec<Role>, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn inherited_sockets_are_assigned_by_name() {
        assert_eq!(roles(None, 0).ok(), Some(vec![]));
        assert_eq!(
            roles(Some("mesh:http:client"), 3).ok(),
            Some(vec![Role::Mesh, Role::Http, Role::Client])
        );
        assert_eq!(roles(Some("http"), 1).ok(), Some(vec![Role::Http]));
    }

    #[test]
    fn unnamed_misnamed_or_doubly_named_sockets_are_refused() {
        assert!(invalid(roles(None, 1)).contains("LISTEN_FDNAMES"));
        assert!(invalid(roles(Some("http"), 2)).contains("1 names"));
        assert!(invalid(roles(Some("http:mesh"), 1)).contains("2 names"));
        // systemd's default name is the socket unit's: it must be set explicitly.
        assert!(invalid(roles(Some("tern.socket"), 1)).contains("expected http"));
        assert!(invalid(roles(Some("mesh:mesh"), 2)).contains("two inherited"));
        assert!(invalid(roles(Some(""), 1)).contains("expected http"));
    }
}
