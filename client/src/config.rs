//! [`ClientConfig`]: which nodes to talk to, how to authenticate, and the time and retry
//! budget of every call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::ClientError;

/// PEM text, given inline or as a file to read when the client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pem {
    /// A file holding PEM text.
    Path(PathBuf),
    /// PEM text.
    Bytes(Vec<u8>),
}

impl Pem {
    /// Reads the PEM text (from disk for [`Pem::Path`]).
    pub(crate) fn read(&self) -> Result<Vec<u8>, ClientError> {
        match self {
            Pem::Path(path) => std::fs::read(path).map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            }),
            Pem::Bytes(b) => Ok(b.clone()),
        }
    }
}

impl From<PathBuf> for Pem {
    fn from(p: PathBuf) -> Self {
        Pem::Path(p)
    }
}

impl From<&std::path::Path> for Pem {
    fn from(p: &std::path::Path) -> Self {
        Pem::Path(p.to_owned())
    }
}

impl From<Vec<u8>> for Pem {
    fn from(b: Vec<u8>) -> Self {
        Pem::Bytes(b)
    }
}

/// Settings of a [`crate::Client`]. Build one with [`ClientConfig::new`] and adjust the public
/// fields or use the `with_*` helpers.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The nodes to try, in order: `(node name, client API address)`. The node name is checked
    /// against the node's certificate (`<name>.node.tern`).
    pub seeds: Vec<(String, SocketAddr)>,
    /// The cluster CA (`ca.pem` written by `tern cluster init`).
    pub ca: Pem,
    /// Tenant token, sent with every request. Needed when the nodes have tokens configured,
    /// unless `client_cert` is set.
    pub token: Option<String>,
    /// Client certificate and key (PEM) from the cluster's client CA
    /// (`tern cluster client-cert`); it acts for the tenant and role it names, instead of a
    /// token. A certificate from another CA (a node's included) makes the node refuse the
    /// connection.
    pub client_cert: Option<(Pem, Pem)>,
    /// Bound on one request/response exchange with one node (not on the whole call with its
    /// retries).
    pub request_timeout: Duration,
    /// Bound on the QUIC + TLS handshake with one node.
    pub connect_timeout: Duration,
    /// A connection that hears nothing from its node for this long is considered lost
    /// (keep-alives are sent every quarter of it), so a dead node is noticed quickly.
    pub idle_timeout: Duration,
    /// Retries of a failed call after the first attempt (on timeouts, `overloaded`,
    /// `unavailable`, and when no node could be reached). Moving to another node after a
    /// connection loss does not count as a retry until every seed has been tried.
    pub retries: u32,
    /// First backoff; doubled after every retry, capped at `backoff_max`, then fully jittered
    /// (a uniformly random delay between zero and that value).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Largest response accepted from a node.
    pub max_response_bytes: usize,
    /// After failing over away from the first seed, the client tries the first seed again
    /// this often, in the background (never on a call's path); once it answers, later calls
    /// go there and calls in flight finish where they are. So a node that restarted gets its
    /// clients back. `None`: stay on whichever node answered last.
    pub failback_after: Option<Duration>,
}

impl ClientConfig {
    /// Defaults: 30 s requests, 3 s connects, 5 s idle timeout, 3 retries, backoff 50 ms
    /// doubling up to 2 s, 64 MiB responses, back to the first seed every 5 s once it answers.
    pub fn new(seeds: Vec<(String, SocketAddr)>, ca: impl Into<Pem>) -> Self {
        Self {
            seeds,
            ca: ca.into(),
            token: None,
            client_cert: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(5),
            retries: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_response_bytes: tern_wire::codec::MAX_MESSAGE,
            failback_after: Some(Duration::from_secs(5)),
        }
    }

    /// Sets the tenant token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the client certificate and its key.
    pub fn with_client_cert(mut self, cert: impl Into<Pem>, key: impl Into<Pem>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let bad = |m: String| Err(ClientError::Config(m));
        if self.seeds.is_empty() {
            return bad("at least one seed node is needed".into());
        }
        for (name, _) in &self.seeds {
            check_node_name(name)?;
        }
        if let Some(token) = &self.token
            && (token.is_empty() || token.len() > tern_wire::client_proto::MAX_TOKEN)
        {
            return bad(format!(
                "the token must be 1 to {} bytes",
                tern_wire::client_proto::MAX_TOKEN
            ));
        }
        for (what, d) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{what} must be more than zero"));
            }
        }
        if self.idle_timeout.as_millis() < 4 {
            return bad("idle_timeout must be at least 4 ms".into());
        }
        if self.failback_after.is_some_and(|d| d.is_zero()) {
            return bad("failback_after must be more than zero (None turns it off)".into());
        }
        if self.backoff_base > self.backoff_max {
            return bad("backoff_base must not exceed backoff_max".into());
        }
        Ok(())
    }
}

/// Node names follow the cluster's rules: 1–64 characters of `[a-z0-9_-]`, starting with a
/// letter or digit.
pub(crate) fn check_node_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ClientError::Config(format!(
            "seed node name {:?} is not 1-64 characters of a-z, 0-9, '-', '_'",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Parses `name=host:port` (the form of `--seed` and of a node's `peers`).
pub fn parse_seed(s: &str) -> Result<(String, SocketAddr), ClientError> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| ClientError::Config(format!("seed {s:?} is not name=host:port")))?;
    check_node_name(name)?;
    let addr = addr
        .parse()
        .map_err(|e| ClientError::Config(format!("seed {s:?}: bad address: {e}")))?;
    Ok((name.to_owned(), addr))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seeds_and_settings_are_checked() {
        assert_eq!(
            parse_seed("a=127.0.0.1:7901").unwrap(),
            ("a".to_string(), "127.0.0.1:7901".parse().unwrap())
        );
        for bad in [
            "a",
            "A=127.0.0.1:1",
            "a=nowhere",
            "=127.0.0.1:1",
            "a.b=1.2.3.4:5",
        ] {
            assert!(
                matches!(parse_seed(bad), Err(ClientError::Config(_))),
                "{bad}"
            );
        }
        let seed = parse_seed("a=127.0.0.1:7901").unwrap();
        let ok = ClientConfig::new(vec![seed], Pem::Bytes(Vec::new()));
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.seeds.clear();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.backoff_base = Duration::from_secs(10);
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        assert!(ok.clone().with_token("").validate().is_err());
        assert!(ok.with_token("t").validate().is_ok());
    }
}
