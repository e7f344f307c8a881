//! The crate's errors. [`Error`](enum@Error) is the one type every fallible operation can be
//! converted into; [`AuthError`] and [`Denied`] are separate because the front doors treat them
//! differently: an `AuthError` says *why* a token failed (for the node's log only) while the
//! caller must only ever see [`Denied::Unauthorized`], so nothing tells an attacker whether a
//! token id exists, was revoked or had the wrong secret.
//!
//! Each error knows its HTTP status and API code ([`Error::http_status`], [`Error::code`]) so
//! HTTP and the QUIC client API answer the same thing for the same failure.

use std::fmt;

use thiserror::Error;

/// A quota a tenant can run into. The `Display` form (`concurrency`, `memory`, …) is what the
/// API reports as "which quota".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKind {
    /// Instances running at once.
    Concurrency,
    /// Sum of the memory limits of running instances.
    Memory,
    /// Invocations waiting for an instance slot.
    Queue,
    /// Deployed functions.
    Functions,
    /// Total bytes of deployed modules.
    ModuleBytes,
    /// Stored asynchronous results (count).
    StoredResults,
    /// Stored asynchronous results (bytes).
    StoredResultBytes,
    /// Longest timeout a function may ask for.
    Timeout,
    /// Invocations a second (with a burst).
    Rate,
}

impl QuotaKind {
    pub const ALL: [QuotaKind; 9] = [
        QuotaKind::Concurrency,
        QuotaKind::Memory,
        QuotaKind::Queue,
        QuotaKind::Functions,
        QuotaKind::ModuleBytes,
        QuotaKind::StoredResults,
        QuotaKind::StoredResultBytes,
        QuotaKind::Timeout,
        QuotaKind::Rate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Concurrency => "concurrency",
            QuotaKind::Memory => "memory",
            QuotaKind::Queue => "queue",
            QuotaKind::Functions => "functions",
            QuotaKind::ModuleBytes => "module_bytes",
            QuotaKind::StoredResults => "stored_results",
            QuotaKind::StoredResultBytes => "stored_result_bytes",
            QuotaKind::Timeout => "timeout",
            QuotaKind::Rate => "rate",
        }
    }
}

impl fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a presented token was not accepted. For logs and tests only: every variant must reach
/// the caller as the same 401 ([`Denied::Unauthorized`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum AuthError {
    /// Not of the form `tern_<16 hex>_<43 base64url>`.
    #[error("malformed token")]
    Malformed,
    /// Well formed, but no token with this id is known.
    #[error("unknown token id")]
    UnknownToken,
    /// The id is known but the secret does not match.
    #[error("wrong token secret")]
    WrongSecret,
    /// The secret matches but the token was revoked.
    #[error("token revoked")]
    Revoked,
}

/// An authorization refusal, as the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Denied {
    /// No token, or a token that does not authenticate: 401.
    #[error("unauthorized")]
    Unauthorized,
    /// Authenticated, but the role never allows this action: 403. Decided from the role and
    /// the action alone, so it reveals nothing about the resource.
    #[error("forbidden")]
    Forbidden,
    /// The resource belongs to another tenant: 404, worded exactly like a missing resource so
    /// a tenant cannot probe for another tenant's functions or invocations.
    #[error("not found")]
    NotFound,
}

impl From<AuthError> for Denied {
    fn from(_: AuthError) -> Self {
        Denied::Unauthorized
    }
}

/// Every error of the crate.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Error {
    #[error("invalid tenant name: {reason}")]
    InvalidTenantName { reason: &'static str },
    #[error("invalid token id: expected 16 lowercase hex digits")]
    InvalidTokenId,
    #[error("invalid role: expected admin, developer or invoker")]
    InvalidRole,
    #[error("invalid SLA class: expected latency-critical, standard or batch")]
    InvalidSlaClass,
    #[error("tenant weight must be in 1..={max}, got {got}")]
    InvalidWeight { got: u32, max: u32 },
    #[error("invalid {which} quota: {reason}")]
    InvalidQuota {
        which: QuotaKind,
        reason: &'static str,
    },
    #[error("invalid share parameters: {reason}")]
    InvalidShareParams { reason: &'static str },
    /// The operating system could not provide randomness for a token.
    #[error("no randomness available for a token: {0}")]
    Randomness(getrandom::Error),
    #[error("unknown tenant")]
    UnknownTenant,
    #[error("unknown token")]
    UnknownToken,
    /// Two different tokens with one id (a 2^-64 chance per pair; the caller should generate
    /// again).
    #[error("a different token with this id already exists")]
    DuplicateTokenId,
    /// Over one of the tenant's quotas. `retry_after_ms` is set when waiting can help (a slot
    /// or queue place frees up), unset when it cannot (the request itself is over the limit).
    #[error("{which} quota exceeded")]
    QuotaExceeded {
        which: QuotaKind,
        retry_after_ms: Option<u64>,
    },
    /// The node's own admission queue is full, whichever tenant is asking.
    #[error("overloaded")]
    Overloaded { retry_after_ms: u64 },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Denied(#[from] Denied),
}

impl Error {
    /// The HTTP status the front doors answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidTenantName { .. }
            | Error::InvalidTokenId
            | Error::InvalidRole
            | Error::InvalidSlaClass
            | Error::InvalidWeight { .. }
            | Error::InvalidQuota { .. }
            | Error::InvalidShareParams { .. } => 400,
            Error::Auth(_) | Error::Denied(Denied::Unauthorized) => 401,
            Error::Denied(Denied::Forbidden) => 403,
            Error::Denied(Denied::NotFound) | Error::UnknownTenant | Error::UnknownToken => 404,
            Error::DuplicateTokenId => 409,
            Error::QuotaExceeded { .. } | Error::Overloaded { .. } => 429,
            Error::Randomness(_) => 500,
        }
    }

    /// The machine-readable API error code.
    pub fn code(&self) -> &'static str {
        match self.http_status() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            429 if matches!(self, Error::Overloaded { .. }) => "overloaded",
            429 => "quota_exceeded",
            _ => "internal",
        }
    }

    /// When to try again (for `Retry-After`), if waiting can help.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::QuotaExceeded { retry_after_ms, .. } => *retry_after_ms,
            Error::Overloaded { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// What the caller is told. An authentication failure's reason stays in the log: the
    /// caller always reads `unauthorized`.
    pub fn public_message(&self) -> String {
        match self {
            Error::Auth(_) => Denied::Unauthorized.to_string(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_auth_failure_is_the_same_401_to_the_caller() {
        for e in [
            AuthError::Malformed,
            AuthError::UnknownToken,
            AuthError::WrongSecret,
            AuthError::Revoked,
        ] {
            let err = Error::from(e);
            assert_eq!(err.http_status(), 401);
            assert_eq!(err.code(), "unauthorized");
            assert_eq!(err.public_message(), "unauthorized");
            assert_eq!(Denied::from(e), Denied::Unauthorized);
        }
    }

    #[test]
    fn denials_and_quotas_map_to_the_documented_statuses_and_codes() {
        let cases = [
            (Error::Denied(Denied::Unauthorized), 401, "unauthorized"),
            (Error::Denied(Denied::Forbidden), 403, "forbidden"),
            (Error::Denied(Denied::NotFound), 404, "not_found"),
            (
                Error::QuotaExceeded {
                    which: QuotaKind::Concurrency,
                    retry_after_ms: Some(1500),
                },
                429,
                "quota_exceeded",
            ),
            (
                Error::Overloaded {
                    retry_after_ms: 200,
                },
                429,
                "overloaded",
            ),
            (Error::InvalidWeight { got: 0, max: 10 }, 400, "bad_request"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.http_status(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[test]
    fn retry_after_is_reported_only_when_waiting_helps() {
        let waiting = Error::QuotaExceeded {
            which: QuotaKind::Queue,
            retry_after_ms: Some(2000),
        };
        let never = Error::QuotaExceeded {
            which: QuotaKind::Timeout,
            retry_after_ms: None,
        };
        assert_eq!(waiting.retry_after_ms(), Some(2000));
        assert_eq!(never.retry_after_ms(), None);
        assert_eq!(Error::UnknownTenant.retry_after_ms(), None);
        assert_eq!(waiting.to_string(), "queue quota exceeded");
    }

    #[test]
    fn quota_kinds_have_distinct_api_names() {
        let mut names: Vec<_> = QuotaKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), QuotaKind::ALL.len());
    }
}
