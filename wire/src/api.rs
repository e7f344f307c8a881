//! The public vocabulary of the HTTP API and the journal: names, hashes, ids, error codes.
//!
//! Parse, don't validate: a [`FunctionName`] or [`InvocationId`] that exists is valid, so code
//! deeper in the node never re-checks them (and never builds a path or key from raw input).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use tern_tenancy::TenantName;

use crate::WireError;

/// A deployed function's name, which says which tenant owns it: `name` for the `default`
/// tenant, `tenant.name` for any other. `name` is 1–64 characters of `[a-z0-9_-]` starting
/// with a letter or digit; `tenant` is a [`TenantName`] (no `.` in either, so the split is
/// unambiguous). `default.name` is accepted and means `name`: one function, one spelling.
///
/// The owner is part of the name so that every store key, registry entry, metric label,
/// idempotency scope and journal record already says whose function it is, and two tenants
/// can both have an `echo`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionName(String);

impl FunctionName {
    /// Longest name within a tenant (the part after the tenant's `.`).
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant that owns this function.
    pub fn tenant(&self) -> TenantName {
        match self.0.split_once('.') {
            // Checked when the name was parsed.
            Some((tenant, _)) => tenant
                .parse()
                .unwrap_or_else(|_| TenantName::default_tenant()),
            None => TenantName::default_tenant(),
        }
    }

    /// Whether `tenant` owns this function (without building the owner's name).
    pub fn is_owned_by(&self, tenant: &TenantName) -> bool {
        match self.0.split_once('.') {
            Some((owner, _)) => owner == tenant.as_str(),
            None => tenant.as_str() == TenantName::DEFAULT,
        }
    }

    /// The name within its tenant.
    pub fn local(&self) -> &str {
        self.0.split_once('.').map_or(&self.0, |(_, local)| local)
    }

    /// Whether the name says its tenant (`tenant.name`) rather than meaning `default`.
    pub fn is_qualified(&self) -> bool {
        self.0.contains('.')
    }

    /// This function's name within `tenant` (whatever tenant it named before).
    pub fn in_tenant(&self, tenant: &TenantName) -> FunctionName {
        if tenant.as_str() == TenantName::DEFAULT {
            FunctionName(self.local().to_owned())
        } else {
            FunctionName(format!("{tenant}.{}", self.local()))
        }
    }
}

/// The naming rule shared by functions and nodes: 1–64 characters of `[a-z0-9_-]`, starting
/// with a letter or digit. Returns why a name breaks it.
pub fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > FunctionName::MAX_LEN {
        return Err("must be 1 to 64 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err("only a-z, 0-9, '-' and '_' are allowed");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    Ok(())
}

impl FromStr for FunctionName {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| WireError::Invalid {
            what: "function name",
            reason,
        };
        let (tenant, local) = match s.split_once('.') {
            Some((tenant, local)) => {
                let tenant: TenantName = tenant
                    .parse()
                    .map_err(|e: tern_tenancy::Error| invalid(format!("before the '.': {e}")))?;
                (Some(tenant), local)
            }
            None => (None, s),
        };
        check_name(local).map_err(|reason| invalid(reason.to_owned()))?;
        let name = Self(local.to_owned());
        Ok(match tenant {
            Some(t) => name.in_tenant(&t),
            None => name,
        })
    }
}

/// A function name as a caller wrote it, spelling kept: `name` or `tenant.name`, with
/// `default.name` kept apart from `name`. Valid exactly when it parses as a [`FunctionName`];
/// which function it means depends on who asks (`name` is the caller's own tenant's), so the
/// node resolves it once it knows the caller. The client API carries names this way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FunctionRef(String);

impl FunctionRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FunctionRef {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<FunctionName>()?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<FunctionName> for FunctionRef {
    fn from(name: FunctionName) -> Self {
        Self(name.0)
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a module's bytes: the key of the content-addressed module store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn to_hex(&self) -> String {
        self.hex_str(&mut [0; 64]).to_owned()
    }

    /// The 64 lowercase hex digits, written into `buf` (no allocation: a hash is serialised
    /// into every frame that runs a function).
    fn hex_str<'a>(&self, buf: &'a mut [u8; 64]) -> &'a str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[usize::from(b >> 4)];
            buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        // Every byte written is an ASCII hex digit.
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", self.to_hex())
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex_str(&mut [0; 64]))
    }
}

impl FromStr for ModuleHash {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || WireError::Invalid {
            what: "module hash",
            reason: "expected 64 lowercase hex digits".to_owned(),
        };
        // `u8::from_str_radix` alone would also take upper case and a leading '+': a hash
        // has exactly one spelling, the one `to_hex` writes.
        let nibble = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        if s.len() != 64 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
                return Err(invalid());
            };
            *o = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

impl Serialize for ModuleHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex_str(&mut [0; 64]))
    }
}

impl<'de> Deserialize<'de> for ModuleHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Parses the string where the format holds it, without copying it first.
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = ModuleHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 lowercase hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ModuleHash, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Hex)
    }
}

macro_rules! string_newtype_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_newtype_serde!(FunctionName);
string_newtype_serde!(FunctionRef);
string_newtype_serde!(InvocationId);

/// Identifies one accepted invocation: 1–64 characters of `[0-9a-z-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId(String);

impl InvocationId {
    /// Builds an id from a node-unique prefix and a sequence number.
    pub fn from_parts(prefix: u64, seq: u64) -> Self {
        Self(format!("{prefix:012x}-{seq:08x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InvocationId {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
        if !ok {
            return Err(WireError::Invalid {
                what: "invocation id",
                reason: "expected 1 to 64 characters of 0-9, a-z and '-'".to_owned(),
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stable, documented error codes of the API. Each maps to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The uploaded bytes are not a valid WebAssembly module, or it imports something the host
    /// does not provide.
    InvalidModule,
    /// The request itself is malformed (bad name, bad query value, map input not a JSON array).
    InvalidRequest,
    NotFound,
    MethodNotAllowed,
    /// Request body or module larger than the configured cap; refused before parsing.
    PayloadTooLarge,
    /// Admission control refused the request: the queue is full. Retry after `Retry-After`.
    Overloaded,
    /// The guest trapped (unreachable, stack overflow, out-of-bounds access, memory exhausted…).
    GuestTrap,
    /// The guest exited with a non-zero status.
    GuestError,
    /// The guest wrote more than the output cap to stdout.
    OutputTooLarge,
    /// The invocation exceeded its time limit.
    Timeout,
    /// Compiling a module exceeded the compile time bound.
    CompileTimeout,
    /// The node could not run the work right now (a component was restarting for too long).
    Unavailable,
    Internal,
    /// No valid token: the HTTP API with `auth = "tokens"` (no, malformed, unknown, wrong or
    /// revoked bearer token), or the client API (no valid token and no client certificate
    /// from the cluster CA).
    Unauthorized,
    /// The HTTP request body did not arrive in time (`body_read_timeout_ms`, plus its length at
    /// `min_body_bytes_per_sec`). Only the HTTP front door answers it.
    RequestTimeout,
    /// The caller's token is valid but its role does not allow this action.
    Forbidden,
    /// A limit on what may be kept was reached (for example `max_functions`); the message
    /// names it. Trying again does not help until something is removed.
    QuotaExceeded,
    /// The request conflicts with what exists: creating a tenant whose name is taken, or
    /// removing one that still owns functions.
    Conflict,
    /// The tenant's cell (its isolated worker process) died while running the call: killed,
    /// out of memory, or stopped for a forbidden system call. The cell is restarted; the call
    /// was not answered by the guest.
    IsolationFault,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidModule,
        ErrorCode::InvalidRequest,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Overloaded,
        ErrorCode::GuestTrap,
        ErrorCode::GuestError,
        ErrorCode::OutputTooLarge,
        ErrorCode::Timeout,
        ErrorCode::CompileTimeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::RequestTimeout,
        ErrorCode::Forbidden,
        ErrorCode::QuotaExceeded,
        ErrorCode::Conflict,
        ErrorCode::IsolationFault,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidModule => "invalid_module",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::GuestTrap => "guest_trap",
            ErrorCode::GuestError => "guest_error",
            ErrorCode::OutputTooLarge => "output_too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::CompileTimeout => "compile_timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Conflict => "conflict",
            ErrorCode::IsolationFault => "isolation_fault",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidModule | ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Overloaded | ErrorCode::QuotaExceeded => 429,
            ErrorCode::GuestTrap
            | ErrorCode::GuestError
            | ErrorCode::Internal
            | ErrorCode::IsolationFault => 500,
            ErrorCode::OutputTooLarge => 502,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout | ErrorCode::CompileTimeout => 504,
        }
    }

    /// Whether the same call may succeed if tried again, here later or on another node: the
    /// node refused it before running the function (`overloaded`) or could not reach the
    /// state that runs it (`unavailable`). Every other code is the call's own answer and
    /// would come back the same. The client's retries, the cluster link's re-placement of a
    /// refused MEU, the idempotency cache (which forgets refusals so a retry runs the
    /// function) and placement's view of a node all ask this one question.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Overloaded | ErrorCode::Unavailable)
    }

    /// Position in [`ErrorCode::ALL`], for array-indexed counters.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the API returns it: `{"error":{"code":"...","message":"..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize, Deserialize)]
struct ApiErrorEnvelope {
    error: ApiError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The JSON body the HTTP API sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&ApiErrorEnvelope {
            error: self.clone(),
        })
        .unwrap_or_else(|_| format!("{{\"error\":{{\"code\":\"{}\"}}}}", self.code))
    }

    /// Parses an API error body; `None` if the body is not one.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        serde_json::from_slice::<ApiErrorEnvelope>(body)
            .ok()
            .map(|e| e.error)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// What `PUT /v1/functions/{name}` returns and `GET /v1/functions` lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: FunctionName,
    pub hash: ModuleHash,
    /// Increases by one on every deploy of this name.
    pub version: u64,
    pub timeout_ms: u32,
    pub memory_mb: u32,
    pub size_bytes: u64,
    pub deployed_at_ms: u64,
    /// At most this many instances of the function run at once on each node (`None`: only
    /// its tenant's caps apply). Calls beyond it wait for one of its instances, within their
    /// deadline, while the tenant's other functions go ahead.
    pub max_instances: Option<u32>,
}

/// What a deployed function is, told from its binary at deploy: a WASI preview-1 command (a
/// core module: stdin in, stdout out) or a `wasi:http/proxy` component (an HTTP request in,
/// its response out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionKind {
    Module,
    Component,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    /// Accepted and journaled, not finished yet.
    Pending,
    Succeeded,
    Failed,
}

/// One accepted asynchronous invocation, as journaled and as `GET /v1/invocations/{id}` shows it.
/// `id` and `function` come first and stay first: [`InvocationRecord::function_of`] reads the
/// owner from the encoded record without decoding the input and output after them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    pub id: InvocationId,
    pub function: FunctionName,
    /// Whether the input is split as a `map` (a JSON array).
    pub map: bool,
    pub status: InvocationStatus,
    /// Kept until the invocation finishes so that a restart can run it again.
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub output: Option<Vec<u8>>,
    pub error: Option<ApiError>,
    pub accepted_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// How many times execution was started (more than one after a crash and replay).
    pub attempts: u32,
}

impl InvocationRecord {
    /// The function of an encoded record (as [`crate::encode`] wrote it), read from its
    /// leading fields only.
    pub fn function_of(encoded: &[u8]) -> Result<FunctionName, WireError> {
        #[derive(Deserialize)]
        struct Leading {
            // Read to get past it (fields are positional), not used.
            _id: InvocationId,
            function: FunctionName,
        }
        crate::codec::decode_prefix::<Leading>(encoded).map(|l| l.function)
    }
}

/// One line a guest wrote to stderr.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Numbers the function's lines on this node, from 1, in the order they were kept.
    pub seq: u64,
    /// When the MEU that wrote it ended, ms since the Unix epoch.
    pub at_ms: u64,
    pub request_id: String,
    pub text: String,
}

/// Lines of a function from a cursor on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// Pass as `after` to get only newer lines.
    pub next: u64,
    /// Lines of the function this node no longer keeps (pushed out by newer ones).
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn function_names_are_parsed_strictly() {
        for ok in ["echo", "matmul-json", "a", "0_x", &"a".repeat(64)] {
            assert_eq!(ok.parse::<FunctionName>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-x",
            "_x",
            "Echo",
            "a/b",
            "..",
            ".echo",
            "acme.",
            "Acme.echo",
            "a.b.c",
            "-acme.echo",
            &format!("{}.echo", "a".repeat(33)),
            "a b",
            &"a".repeat(65),
            "é",
        ] {
            assert!(bad.parse::<FunctionName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_function_name_says_its_tenant_and_default_has_one_spelling() {
        let own: FunctionName = "acme.echo".parse().unwrap();
        assert_eq!(
            (own.tenant().as_str(), own.local(), own.is_qualified()),
            ("acme", "echo", true)
        );
        let plain: FunctionName = "echo".parse().unwrap();
        assert_eq!(
            (plain.tenant().as_str(), plain.local(), plain.is_qualified()),
            ("default", "echo", false)
        );
        let spelled: FunctionName = "default.echo".parse().unwrap();
        assert_eq!(spelled, plain);
        let acme: TenantName = "acme".parse().unwrap();
        assert_eq!(plain.in_tenant(&acme), own);
        assert_eq!(own.in_tenant(&TenantName::default_tenant()), plain);
        assert_ne!(own, plain, "two tenants may both have an echo");
        let default = TenantName::default_tenant();
        assert!(own.is_owned_by(&acme) && !own.is_owned_by(&default));
        assert!(plain.is_owned_by(&default) && !plain.is_owned_by(&acme));
        let acmex: TenantName = "acmex".parse().unwrap();
        assert!(!own.is_owned_by(&acmex), "a prefix is not the owner");
        // Round trip through serde, as the store and the wire do.
        let json = serde_json::to_string(&own).unwrap();
        assert_eq!(serde_json::from_str::<FunctionName>(&json).unwrap(), own);
        assert!(serde_json::from_str::<FunctionName>("\"x.y.z\"").is_err());
        // As written: `default.echo` stays apart from `echo` until a node resolves it.
        let written: FunctionRef = "default.echo".parse().unwrap();
        assert_eq!(written.as_str(), "default.echo");
        assert_ne!(written, "echo".parse::<FunctionRef>().unwrap());
        assert!("x.y.z".parse::<FunctionRef>().is_err());
        assert!(serde_json::from_str::<FunctionRef>("\"Bad\"").is_err());
    }

    #[test]
    fn module_hash_hex_round_trip_and_rejects_garbage() {
        // Every nibble value, in both halves of a byte.
        let h = ModuleHash(std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a));
        let spelled: String = h.0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h.to_hex(), spelled);
        assert_eq!(h.to_string(), spelled);
        assert_eq!(spelled.parse::<ModuleHash>().unwrap(), h);
        assert!("zz".repeat(32).parse::<ModuleHash>().is_err());
        assert!("ab".parse::<ModuleHash>().is_err());
        assert!(spelled.to_uppercase().parse::<ModuleHash>().is_err());
        assert!(format!("+{}", &spelled[1..]).parse::<ModuleHash>().is_err());
        assert!(format!("{spelled}00").parse::<ModuleHash>().is_err());
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{spelled}\""));
        assert_eq!(serde_json::from_str::<ModuleHash>(&json).unwrap(), h);
        let frame = crate::codec::encode(&h, 1 << 10).unwrap();
        assert_eq!(
            crate::codec::decode::<ModuleHash>(&frame, 1 << 10).unwrap(),
            h
        );
        assert!(serde_json::from_str::<ModuleHash>("\"ab\"").is_err());
    }

    #[test]
    fn error_codes_have_stable_strings_and_statuses() {
        let e = ApiError::new(ErrorCode::Overloaded, "queue full");
        assert_eq!(
            e.to_json(),
            r#"{"error":{"code":"overloaded","message":"queue full"}}"#
        );
        assert_eq!(ApiError::from_json(e.to_json().as_bytes()).unwrap(), e);
        assert_eq!(ErrorCode::InvalidModule.http_status(), 400);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::Timeout.http_status(), 504);
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
        assert_eq!(ErrorCode::Unauthorized.as_str(), "unauthorized");
        assert_eq!(ErrorCode::RequestTimeout.http_status(), 408);
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
    }

    #[test]
    fn only_refusals_are_retryable() {
        let retryable: Vec<ErrorCode> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(retryable, [ErrorCode::Overloaded, ErrorCode::Unavailable]);
    }

    #[test]
    fn error_code_bincode_tags_are_positions_in_all() {
        // Journaled records hold error codes as bincode variant tags: new codes go at the end.
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(crate::codec::encode(c, 16).unwrap(), vec![i as u8]);
        }
    }

    #[test]
    fn invocation_ids() {
        let id = InvocationId::from_parts(0x1234, 7);
        assert_eq!(id.as_str(), "000000001234-00000007");
        assert_eq!(id.as_str().parse::<InvocationId>().unwrap(), id);
        assert!("../etc".parse::<InvocationId>().is_err());
    }
}
