use std::path::PathBuf;

/// Everything that can go wrong building or limiting a cell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cell limit {field}: {reason}")]
    InvalidLimit { field: &'static str, reason: String },
    /// The host has no usable cgroup hierarchy for a controller a cell needs.
    #[error("no cgroup {controller} controller found: {detail}")]
    NoCgroup {
        controller: &'static str,
        detail: String,
    },
    /// A cgroup file or directory could not be read, written or removed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cell name {0:?} is not a single path component of [a-z0-9_-]")]
    BadName(String),
    /// One step of building the jail failed; `step` names it.
    #[error("jail step {step}: {source}")]
    Jail {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("dropping capabilities: {0}")]
    Capabilities(String),
    #[error("seccomp filter: {0}")]
    Seccomp(String),
    /// The host cannot give cells; the message names every missing piece.
    #[error("this host cannot run cells: {0}")]
    HostUnsupported(String),
}

impl Error {
    pub(crate) fn jail(step: &'static str) -> impl FnOnce(nix::Error) -> Error {
        move |source| Error::Jail { step, source }
    }

    pub(crate) fn cgroup(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Cgroup { path, source }
    }
}
