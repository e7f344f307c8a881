//! The error type of this crate.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything that can go wrong in `tern-bench`.
///
/// Note that failures of *individual requests* during a load run are not errors of
/// [`crate::load::run`]: they are counted in the report. `run` only fails when the run
/// cannot be carried out at all (bad configuration, cannot open the connections).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The process ran out of file descriptors (EMFILE/ENFILE) while opening connections.
    #[error(
        "too many open files while connecting to {addr} ({opened} connection(s) already open): \
         each connection needs one file descriptor; raise the limit with `ulimit -n 65536` \
         (or setrlimit(RLIMIT_NOFILE) in the caller) and retry"
    )]
    TooManyOpenFiles {
        addr: SocketAddr,
        opened: usize,
        #[source]
        source: std::io::Error,
    },
    /// No local ephemeral port left for another connection to the same address.
    #[error(
        "no local port available to connect to {addr} ({opened} connection(s) already open): \
         widen net.ipv4.ip_local_port_range or use fewer connections"
    )]
    NoLocalPort {
        addr: SocketAddr,
        opened: usize,
        #[source]
        source: std::io::Error,
    },
    /// TCP connect failed (refused, unreachable, ...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// TCP connect did not complete in time.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    /// The HTTP/1 handshake on a fresh connection failed.
    #[error("HTTP/1 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// Sending a request or receiving its response failed (connection reset, closed, ...).
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (bad path, header name or value).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A request did not complete in time.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The load configuration is unusable.
    #[error("invalid load configuration: {0}")]
    Config(String),
    /// JSON (de)serialisation of a report failed.
    #[error("report JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// EMFILE / ENFILE have these numbers on Linux and the BSDs (incl. macOS).
#[cfg(unix)]
const FD_EXHAUSTED: [i32; 2] = [24, 23];
#[cfg(not(unix))]
const FD_EXHAUSTED: [i32; 0] = [];

impl BenchError {
    /// Map an I/O error from `connect` to the most helpful variant.
    /// `opened` is how many connections the caller already holds (for the message).
    pub fn from_connect_error(addr: SocketAddr, opened: usize, source: std::io::Error) -> Self {
        if source
            .raw_os_error()
            .is_some_and(|code| FD_EXHAUSTED.contains(&code))
        {
            BenchError::TooManyOpenFiles {
                addr,
                opened,
                source,
            }
        } else if source.kind() == std::io::ErrorKind::AddrNotAvailable {
            BenchError::NoLocalPort {
                addr,
                opened,
                source,
            }
        } else {
            BenchError::Connect { addr, source }
        }
    }

    /// True for errors that say the local machine ran out of resources (fds, ports):
    /// retrying will not help.
    pub fn is_resource_exhaustion(&self) -> bool {
        matches!(
            self,
            BenchError::TooManyOpenFiles { .. } | BenchError::NoLocalPort { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn emfile_maps_to_ulimit_hint() {
        let addr: SocketAddr = "127.0.0.1:80".parse().expect("literal addr");
        let e = BenchError::from_connect_error(addr, 7, std::io::Error::from_raw_os_error(24));
        assert!(matches!(e, BenchError::TooManyOpenFiles { opened: 7, .. }));
        assert!(e.is_resource_exhaustion());
        let msg = e.to_string();
        assert!(msg.contains("ulimit -n"), "{msg}");
        let refused = BenchError::from_connect_error(
            addr,
            0,
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        );
        assert!(matches!(refused, BenchError::Connect { .. }));
        assert!(!refused.is_resource_exhaustion());
    }
}
