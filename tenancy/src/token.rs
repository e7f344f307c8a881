//! API tokens: how a caller proves which tenant it acts for and with which [`Role`].
//!
//! A token is shown exactly once, when it is generated, as `tern_<id>_<secret>`: a fixed
//! prefix (so secret scanners and people recognise it), a 64-bit random public id (so the
//! node finds the record without comparing against every stored hash) and a 256-bit random
//! secret in unpadded base64url. Only a SHA-256 hash of the secret is stored and replicated
//! ([`TokenRecord`]); a leaked store or registry does not leak usable tokens.
//!
//! A plain SHA-256 (no salt, no slow KDF) is enough because the secret is 256 random bits, not
//! a password: there is nothing to brute-force or look up in a table. The comparison is
//! constant-time anyway so no timing can reveal how much of a hash matched.
//!
//! Parsing a presented token is total: any string, of any length or content, yields a typed
//! [`AuthError`] or a token, never a panic.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
// `subtle` rather than `constant_time_eq`: both are in Cargo.lock, but `subtle` 2.6 is the
// maintained RustCrypto/dalek crate the TLS stack already relies on (via rustls and digest),
// while the locked `constant_time_eq` is an old 0.1 release pulled in by `zip`.
use subtle::ConstantTimeEq;

use crate::error::{AuthError, Error};
use crate::tenant::TenantName;

/// What a token may do (see [`crate::authz`] for the exact table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages tenants and tokens and may act on every tenant's functions.
    Admin,
    /// Deploys, removes and invokes functions of its own tenant.
    Developer,
    /// Invokes functions of its own tenant (and reads the results of its invocations).
    Invoker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Developer, Role::Invoker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Invoker => "invoker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "admin" => Ok(Role::Admin),
            "developer" => Ok(Role::Developer),
            "invoker" => Ok(Role::Invoker),
            _ => Err(Error::InvalidRole),
        }
    }
}

/// A token's public id: 64 random bits, shown as 16 lowercase hex digits. Not secret (it is
/// printed by `tern token list` and may be logged), only unique.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId([u8; 8]);

impl TokenId {
    const HEX_LEN: usize = 16;
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl FromStr for TokenId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let b = s.as_bytes();
        if b.len() != Self::HEX_LEN {
            return Err(Error::InvalidTokenId);
        }
        let mut id = [0u8; 8];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            // Lowercase only, so one id has exactly one spelling.
            let hi = hex_digit(pair[0]).ok_or(Error::InvalidTokenId)?;
            let lo = hex_digit(pair[1]).ok_or(Error::InvalidTokenId)?;
            id[i] = hi << 4 | lo;
        }
        Ok(Self(id))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Serialize for TokenId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The full token string, shown to the user once. `Debug` does not print it, so it cannot end
/// up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The token to hand to the user (`Authorization: Bearer <this>`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A presented token, parsed. Holds the secret, so `Debug` shows only the id.
#[derive(Clone)]
pub struct Token {
    id: TokenId,
    secret: [u8; SECRET_LEN],
}

const SECRET_LEN: usize = 32;
/// 32 bytes in unpadded base64: ceil(32 · 4 / 3).
const SECRET_B64_LEN: usize = 43;
const TOKEN_LEN: usize = Token::PREFIX.len() + TokenId::HEX_LEN + 1 + SECRET_B64_LEN;
/// Domain separation: a hash computed for anything else can never equal a token hash.
const HASH_CONTEXT: &[u8] = b"tern-token-v1\0";

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Token {
    pub const PREFIX: &'static str = "tern_";

    /// A new token for `tenant` with `role`: the secret to print once, and the record to
    /// store. The only OS access of the crate: 320 random bits.
    pub fn generate(
        tenant: TenantName,
        role: Role,
        now_ms: u64,
    ) -> Result<(Secret, TokenRecord), Error> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut id).map_err(Error::Randomness)?;
        getrandom::fill(&mut secret).map_err(Error::Randomness)?;
        Ok(Self::from_parts(TokenId(id), secret, tenant, role, now_ms))
    }

    fn from_parts(
        id: TokenId,
        secret: [u8; SECRET_LEN],
        tenant: TenantName,
        role: Role,
        now_ms: u64,
    ) -> (Secret, TokenRecord) {
        let token = Token { id, secret };
        let record = TokenRecord {
            id,
            tenant,
            role,
            created_at_ms: now_ms,
            revoked_at_ms: None,
            hash: token.hash(),
        };
        (Secret(token.render()), record)
    }

    /// Parses `tern_<16 hex>_<43 base64url>`. Total: never panics, whatever the input.
    pub fn parse(presented: &str) -> Result<Token, AuthError> {
        // Length first: a megabyte of garbage costs one comparison.
        if presented.len() != TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let rest = presented
            .strip_prefix(Self::PREFIX)
            .ok_or(AuthError::Malformed)?;
        // The id is hex, so the first '_' ends it (base64url secrets may contain '_').
        let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
        let id: TokenId = id.parse().map_err(|_| AuthError::Malformed)?;
        if secret.len() != SECRET_B64_LEN {
            return Err(AuthError::Malformed);
        }
        let mut bytes = [0u8; SECRET_LEN];
        // The standard engine refuses non-zero trailing bits, so each secret has exactly one
        // spelling.
        let n = URL_SAFE_NO_PAD
            .decode_slice(secret, &mut bytes)
            .map_err(|_| AuthError::Malformed)?;
        if n != SECRET_LEN {
            return Err(AuthError::Malformed);
        }
        Ok(Token { id, secret: bytes })
    }

    pub fn id(&self) -> TokenId {
        self.id
    }

    fn render(&self) -> String {
        format!(
            "{}{}_{}",
            Self::PREFIX,
            self.id,
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }

    /// SHA-256 over the context, the id and the secret: binding the id means a record's hash
    /// only ever matches the token that carries that record's id.
    fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(HASH_CONTEXT);
        h.update(self.id.0);
        h.update(self.secret);
        h.finalize().into()
    }
}

/// What is stored and replicated about a token: never the secret, only its hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: TokenId,
    pub tenant: TenantName,
    pub role: Role,
    pub created_at_ms: u64,
    /// When it was revoked; a revoked token never authenticates again.
    pub revoked_at_ms: Option<u64>,
    hash: [u8; 32],
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .field("created_at_ms", &self.created_at_ms)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish_non_exhaustive()
    }
}

impl TokenRecord {
    /// Whether `presented` is this token and it has not been revoked. Constant-time in the
    /// secret.
    pub fn verify(&self, presented: &str) -> bool {
        Token::parse(presented).is_ok_and(|t| self.check(&t).is_ok())
    }

    fn check(&self, token: &Token) -> Result<(), AuthError> {
        if token.id != self.id {
            return Err(AuthError::UnknownToken);
        }
        let matches: bool = token.hash()[..].ct_eq(&self.hash[..]).into();
        if !matches {
            return Err(AuthError::WrongSecret);
        }
        // Revocation is checked only once the secret matched: without the secret nobody
        // learns anything about the token, not even that it was revoked.
        if self.revoked_at_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        Ok(())
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at_ms.is_some()
    }

    /// The record without its hash, for listings.
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id,
            tenant: self.tenant.clone(),
            role: self.role,
            created_at_ms: self.created_at_ms,
            revoked_at_ms: self.revoked_at_ms,
        }
    }
}

/// What `tern token list` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: TokenId,
    pub tenant: TenantName,
    pub role: Role,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Who is making a request, once its token has been checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub token: TokenId,
    pub tenant: TenantName,
    pub role: Role,
}

/// Every token a node knows, by id.
#[derive(Clone, Debug, Default)]
pub struct TokenBook {
    records: BTreeMap<TokenId, TokenRecord>,
}

impl TokenBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a freshly generated token. A different record under the same id is refused (the
    /// caller generates again); the same record again is a no-op.
    pub fn insert(&mut self, record: TokenRecord) -> Result<(), Error> {
        match self.records.get(&record.id) {
            Some(existing) if existing.hash != record.hash => Err(Error::DuplicateTokenId),
            Some(_) => Ok(()),
            None => {
                self.records.insert(record.id, record);
                Ok(())
            }
        }
    }

    /// Makes token `id` dead for good, whatever record of it this book has or learns later:
    /// for a token whose record was lost (damaged on disk), which may have been revoked.
    /// A revoked record created at time 0 with an all-zero hash, which no secret hashes to:
    /// by the merge rule it wins over any real record of that id, here and on every peer it
    /// reaches. Returns whether anything changed.
    pub fn deny(&mut self, id: TokenId, at_ms: u64) -> bool {
        self.apply(TokenRecord {
            id,
            tenant: TenantName::default_tenant(),
            role: Role::Invoker,
            created_at_ms: 0,
            revoked_at_ms: Some(at_ms),
            hash: [0; 32],
        })
    }

    /// Merges a record from a peer or from disk; returns whether anything changed.
    ///
    /// Records never change except by revocation, and revocation is permanent: the merge
    /// keeps a token revoked if either side revoked it (at the earlier time), so replicas
    /// converge whatever order they hear of it. Two different tokens under one id (a 2^-64
    /// accident) resolve to the same one everywhere: the earlier-created, then smaller hash.
    pub fn apply(&mut self, incoming: TokenRecord) -> bool {
        let Some(current) = self.records.get_mut(&incoming.id) else {
            self.records.insert(incoming.id, incoming);
            return true;
        };
        if current.hash != incoming.hash {
            let keep_incoming =
                (incoming.created_at_ms, incoming.hash) < (current.created_at_ms, current.hash);
            if keep_incoming {
                *current = incoming;
            }
            return keep_incoming;
        }
        let revoked = match (current.revoked_at_ms, incoming.revoked_at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let changed = revoked != current.revoked_at_ms;
        current.revoked_at_ms = revoked;
        changed
    }

    /// Checks a presented bearer token. Every error must reach the caller as the same 401;
    /// the variants are for the node's log.
    pub fn authenticate(&self, presented: &str) -> Result<Principal, AuthError> {
        let token = Token::parse(presented)?;
        // Looking the id up is not constant-time, and need not be: ids are not secret.
        let record = self.records.get(&token.id).ok_or(AuthError::UnknownToken)?;
        record.check(&token)?;
        Ok(Principal {
            token: record.id,
            tenant: record.tenant.clone(),
            role: record.role,
        })
    }

    /// Revokes a token. Revoking again keeps the first revocation time. Returns the record to
    /// store and replicate.
    pub fn revoke(&mut self, id: &TokenId, now_ms: u64) -> Result<&TokenRecord, Error> {
        let record = self.records.get_mut(id).ok_or(Error::UnknownToken)?;
        record.revoked_at_ms.get_or_insert(now_ms);
        Ok(record)
    }

    /// Revokes every token of a tenant (when the tenant is removed). Returns the records that
    /// changed, to store and replicate.
    pub fn revoke_tenant(&mut self, tenant: &TenantName, now_ms: u64) -> Vec<TokenRecord> {
        self.records
            .values_mut()
            .filter(|r| &r.tenant == tenant && r.revoked_at_ms.is_none())
            .map(|r| {
                r.revoked_at_ms = Some(now_ms);
                r.clone()
            })
            .collect()
    }

    /// Tokens without their hashes, of one tenant or of all, in id order.
    pub fn list(&self, tenant: Option<&TenantName>) -> Vec<TokenInfo> {
        self.records
            .values()
            .filter(|r| tenant.is_none_or(|t| &r.tenant == t))
            .map(TokenRecord::info)
            .collect()
    }

    pub fn get(&self, id: &TokenId) -> Option<&TokenRecord> {
        self.records.get(id)
    }

    /// Every record, for persisting or announcing.
    pub fn records(&self) -> impl Iterator<Item = &TokenRecord> {
        self.records.values()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn tenant(s: &str) -> TenantName {
        s.parse().unwrap()
    }

    fn fixed(id: u8, fill: u8, t: &str, role: Role) -> (Secret, TokenRecord) {
        Token::from_parts(TokenId([id; 8]), [fill; 32], tenant(t), role, 1000)
    }

    #[test]
    fn generated_tokens_have_the_documented_shape_and_verify() {
        let (secret, record) = Token::generate(tenant("acme"), Role::Developer, 42).unwrap();
        let s = secret.expose();
        assert_eq!(s.len(), TOKEN_LEN);
        assert!(s.starts_with("tern_"));
        assert_eq!(&s[5..21], record.id.to_string());
        assert_eq!(&s[21..22], "_");
        assert!(
            s[22..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(record.verify(s));
        assert_eq!(record.created_at_ms, 42);
        assert_eq!(record.tenant, tenant("acme"));
        assert_eq!(record.role, Role::Developer);
    }

    #[test]
    fn two_generated_tokens_differ() {
        let (a, ra) = Token::generate(tenant("acme"), Role::Admin, 0).unwrap();
        let (b, rb) = Token::generate(tenant("acme"), Role::Admin, 0).unwrap();
        assert_ne!(a, b);
        assert_ne!(ra.id, rb.id);
        assert!(!ra.verify(b.expose()) && !rb.verify(a.expose()));
    }

    #[test]
    fn the_record_and_debug_output_never_contain_the_secret() {
        let (secret, record) = fixed(1, 7, "acme", Role::Admin);
        let encoded_secret = &secret.expose()[22..];
        let stored = serde_json::to_string(&record).unwrap();
        assert!(!stored.contains(encoded_secret));
        assert!(!format!("{record:?}").contains(encoded_secret));
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let parsed = Token::parse(secret.expose()).unwrap();
        assert!(!format!("{parsed:?}").contains(encoded_secret));
    }

    #[test]
    fn a_changed_secret_or_id_does_not_verify() {
        let (secret, record) = fixed(1, 7, "acme", Role::Admin);
        let s = secret.expose();
        // Flip one character of the secret to another valid base64url character.
        let mut wrong_secret = s.to_owned();
        let last = wrong_secret.pop().unwrap();
        wrong_secret.push(if last == 'A' { 'Q' } else { 'A' });
        assert!(!record.verify(&wrong_secret));
        // Same secret under another id.
        let other_id = format!("tern_{}{}", "02".repeat(8), &s[21..]);
        assert!(!record.verify(&other_id));
        // Upper-case hex is a different spelling, refused rather than normalised.
        assert!(!record.verify(&s.replace("tern_0101", "tern_0A01")));
    }

    #[test]
    fn non_canonical_base64_is_malformed() {
        let (secret, _) = fixed(1, 0, "acme", Role::Admin);
        // 32 zero bytes end in 'A'; 'B' decodes to the same bytes with a stray trailing bit.
        let s = secret.expose();
        assert!(s.ends_with('A'));
        let stray = format!("{}B", &s[..s.len() - 1]);
        assert!(matches!(Token::parse(&stray), Err(AuthError::Malformed)));
    }

    #[test]
    fn authenticate_returns_the_principal_and_a_reason_for_each_failure() {
        let mut book = TokenBook::new();
        let (dev, dev_rec) = fixed(1, 7, "acme", Role::Developer);
        let (inv, inv_rec) = fixed(2, 8, "globex", Role::Invoker);
        book.insert(dev_rec.clone()).unwrap();
        book.insert(inv_rec).unwrap();

        assert_eq!(
            book.authenticate(dev.expose()).unwrap(),
            Principal {
                token: dev_rec.id,
                tenant: tenant("acme"),
                role: Role::Developer
            }
        );
        assert_eq!(book.authenticate(inv.expose()).unwrap().role, Role::Invoker);
        assert_eq!(book.authenticate(""), Err(AuthError::Malformed));
        assert_eq!(book.authenticate("Bearer x"), Err(AuthError::Malformed));
        let (unknown, _) = fixed(3, 7, "acme", Role::Admin);
        assert_eq!(
            book.authenticate(unknown.expose()),
            Err(AuthError::UnknownToken)
        );
        let (wrong, _) = fixed(1, 9, "acme", Role::Developer);
        assert_eq!(
            book.authenticate(wrong.expose()),
            Err(AuthError::WrongSecret)
        );

        book.revoke(&dev_rec.id, 5000).unwrap();
        assert_eq!(book.authenticate(dev.expose()), Err(AuthError::Revoked));
        assert!(!book.get(&dev_rec.id).unwrap().verify(dev.expose()));
        // Without the secret, a revoked token is indistinguishable from a wrong secret.
        assert_eq!(
            book.authenticate(wrong.expose()),
            Err(AuthError::WrongSecret)
        );
    }

    #[test]
    fn a_denied_id_never_authenticates_whatever_record_of_it_arrives() {
        let (secret, live) = fixed(4, 7, "acme", Role::Admin);
        // Denied before its live record arrives (a peer that missed the revocation).
        let mut book = TokenBook::new();
        assert!(book.deny(live.id, 10));
        assert!(
            !book.apply(live.clone()),
            "the live copy does not replace the denial"
        );
        assert!(book.authenticate(secret.expose()).is_err());
        // Denied after: the denial wins too, and denying again changes nothing.
        let mut book = TokenBook::new();
        book.insert(live.clone()).unwrap();
        assert!(book.authenticate(secret.expose()).is_ok());
        assert!(book.deny(live.id, 10));
        assert!(!book.deny(live.id, 20));
        assert!(book.authenticate(secret.expose()).is_err());
        // The denial travels: a peer that merges it denies the token as well.
        let mut peer = TokenBook::new();
        peer.insert(live).unwrap();
        for record in book.records().cloned().collect::<Vec<_>>() {
            peer.apply(record);
        }
        assert!(peer.authenticate(secret.expose()).is_err());
    }

    #[test]
    fn revoking_twice_keeps_the_first_time_and_unknown_ids_are_errors() {
        let mut book = TokenBook::new();
        let (_, rec) = fixed(1, 7, "acme", Role::Developer);
        let id = rec.id;
        book.insert(rec).unwrap();
        assert_eq!(book.revoke(&id, 10).unwrap().revoked_at_ms, Some(10));
        assert_eq!(book.revoke(&id, 20).unwrap().revoked_at_ms, Some(10));
        assert_eq!(
            book.revoke(&TokenId([9; 8]), 10).unwrap_err(),
            Error::UnknownToken
        );
    }

    #[test]
    fn removing_a_tenant_revokes_only_its_tokens() {
        let mut book = TokenBook::new();
        let (a, ra) = fixed(1, 1, "acme", Role::Developer);
        let (b, rb) = fixed(2, 2, "acme", Role::Invoker);
        let (c, rc) = fixed(3, 3, "globex", Role::Developer);
        for r in [ra, rb, rc] {
            book.insert(r).unwrap();
        }
        let changed = book.revoke_tenant(&tenant("acme"), 77);
        assert_eq!(changed.len(), 2);
        assert!(changed.iter().all(|r| r.revoked_at_ms == Some(77)));
        assert!(book.authenticate(a.expose()).is_err());
        assert!(book.authenticate(b.expose()).is_err());
        assert!(book.authenticate(c.expose()).is_ok());
        assert!(book.revoke_tenant(&tenant("acme"), 78).is_empty());
    }

    #[test]
    fn listing_filters_by_tenant_and_carries_no_hash() {
        let mut book = TokenBook::new();
        for (id, t) in [(1, "acme"), (2, "globex"), (3, "acme")] {
            book.insert(fixed(id, id, t, Role::Invoker).1).unwrap();
        }
        let acme = book.list(Some(&tenant("acme")));
        assert_eq!(
            acme.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![TokenId([1; 8]), TokenId([3; 8])]
        );
        assert_eq!(book.list(None).len(), 3);
        let json = serde_json::to_value(&acme[0]).unwrap();
        assert!(json.get("hash").is_none());
        assert_eq!(json["id"], "0101010101010101");
    }

    #[test]
    fn inserting_a_different_token_under_an_existing_id_is_refused() {
        let mut book = TokenBook::new();
        book.insert(fixed(1, 1, "acme", Role::Admin).1).unwrap();
        book.insert(fixed(1, 1, "acme", Role::Admin).1).unwrap();
        assert_eq!(
            book.insert(fixed(1, 2, "acme", Role::Admin).1),
            Err(Error::DuplicateTokenId)
        );
    }

    #[test]
    fn replicated_revocation_is_permanent_whatever_the_order() {
        let (secret, rec) = fixed(1, 1, "acme", Role::Developer);
        let mut revoked = rec.clone();
        revoked.revoked_at_ms = Some(50);
        let mut revoked_later = rec.clone();
        revoked_later.revoked_at_ms = Some(60);

        let mut a = TokenBook::new();
        assert!(a.apply(rec.clone()));
        assert!(a.apply(revoked_later.clone()));
        assert!(a.apply(revoked.clone()));
        assert!(!a.apply(rec.clone()), "a stale live copy changes nothing");

        let mut b = TokenBook::new();
        assert!(b.apply(revoked));
        assert!(!b.apply(revoked_later));
        assert!(!b.apply(rec));

        for book in [&a, &b] {
            assert_eq!(book.get(&TokenId([1; 8])).unwrap().revoked_at_ms, Some(50));
            assert_eq!(book.authenticate(secret.expose()), Err(AuthError::Revoked));
        }
    }

    #[test]
    fn records_round_trip_through_bincode() {
        let (secret, rec) = fixed(4, 4, "acme", Role::Invoker);
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&rec, cfg).unwrap();
        let (back, _): (TokenRecord, _) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, rec);
        assert!(back.verify(secret.expose()));
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert_eq!("root".parse::<Role>(), Err(Error::InvalidRole));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic_and_never_verify(s in any::<String>()) {
            let (_, rec) = fixed(1, 7, "acme", Role::Admin);
            let mut book = TokenBook::new();
            book.insert(rec.clone()).unwrap();
            let _ = Token::parse(&s);
            prop_assert!(!rec.verify(&s));
            prop_assert!(book.authenticate(&s).is_err());
        }

        /// Strings of exactly the token shape, with the record's own id, still never verify.
        #[test]
        fn well_formed_guesses_never_verify(secret in "[A-Za-z0-9_-]{43}") {
            let (real, rec) = fixed(1, 7, "acme", Role::Admin);
            let guess = format!("tern_0101010101010101_{secret}");
            prop_assume!(guess != real.expose());
            prop_assert!(!rec.verify(&guess));
        }

        #[test]
        fn token_ids_round_trip_through_their_text(bytes in any::<[u8; 8]>()) {
            let id = TokenId(bytes);
            prop_assert_eq!(id.to_string().parse::<TokenId>().unwrap(), id);
        }
    }
}
