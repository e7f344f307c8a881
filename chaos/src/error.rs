//! [`ChaosError`]: everything that stops `tern chaos` before a verdict — a scenario (or a link
//! delay) it refuses, naming the field; a fault this machine or runner cannot inject; or the
//! run itself failing (a node that never answered, a deploy refused, I/O). A verdict with
//! broken invariants is not an error: it is a [`crate::Report`] with violations.

/// What stops `tern chaos`.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The scenario is not TOML of the scenario's shape (an unknown field, a wrong type).
    #[error("not a scenario: {0}")]
    Parse(String),
    /// A value is out of bounds or contradicts another (the field path says which).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{kind} faults need root ({why}); run tern chaos as root")]
    NeedsRoot {
        kind: &'static str,
        why: &'static str,
    },
    #[error(
        "{kind} faults need {tool} ({hint}); set TERN_CHAOS_LIBFAKETIME to its libfaketimeMT.so.1 if it is installed elsewhere"
    )]
    NeedsTool {
        kind: &'static str,
        tool: &'static str,
        hint: &'static str,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the cluster's certificates: {0}")]
    Pki(String),
    #[error("node {node} did not become ready within {secs} s (log: {log})")]
    NotReady {
        node: String,
        secs: u64,
        log: String,
    },
    /// A node process ended while the runner waited for it to become ready.
    #[error("node {node} exited ({}) before it was ready (log: {log})", code.map_or("by a signal".to_owned(), |c| format!("status {c}")))]
    Exited {
        node: String,
        code: Option<i32>,
        log: String,
    },
    #[error("cannot set up tenant {tenant} for the workload: {detail}")]
    Tenant { tenant: String, detail: String },
    #[error("cannot deploy {function}: {detail}")]
    Deploy { function: String, detail: String },
    /// `workload.via = "client"`: a `tern-client` could not be set up or connected.
    #[error("cannot connect tern-client to node {node}: {detail}")]
    Client { node: String, detail: String },
    #[error("{0} holds an earlier run (its data directory); give another --out")]
    OutInUse(String),
    #[error("cannot draw the run's timeline: {0}")]
    Timeline(String),
}
