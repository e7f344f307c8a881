//! Who may use the HTTP API (`auth = "tokens"`): bearer tokens with roles, kept in the store.
//!
//! The decisions are tern-tenancy's (token parsing and hashing, [`TokenBook`], [`authorize`]);
//! this module holds the node's book, persists every record (only the hash of a secret is
//! ever stored), writes the first admin token to `<data_dir>/admin.token` (mode 0600), and
//! maps each HTTP route to the action it needs.
//!
//! One tenant exists so far, `default`: every function and invocation belongs to it, and
//! tokens are issued for it. Token records live in every node's store: the node that issues
//! or revokes one announces it to its peers, and a node whose link comes up pulls them all,
//! merging so that a revocation anywhere wins (see [`TokenBook::apply`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hyper::Method;
use tern_tenancy::{Action, AuthError, Denied, Principal, Role, Secret, TenantName};
use tern_tenancy::{Token, TokenBook, TokenId, TokenInfo, TokenRecord};

use crate::config::AuthMode;
use crate::error::NodeError;
use crate::store::{Store, StoreError};

/// File name of the admin token written at first start, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What a route needs: an action on a tenant's resource, or on the node as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Open to everyone (liveness).
    Nothing,
    /// `action` on a resource of the (single, `default`) tenant.
    Tenant(Action),
    /// `action` on node-wide data: admins only.
    Node(Action),
}

/// The action an HTTP request needs, from its method and path segments. Unknown routes need
/// a valid token too (they answer 404 only to callers who may use the API), so nothing about
/// the API is learnt without one.
pub fn need(method: &Method, segments: &[&str]) -> Need {
    use Action::*;
    match (method, segments) {
        (_, ["healthz"]) => Need::Nothing,
        (_, ["metrics"] | ["v1", "cluster"]) => Need::Node(ReadNodeMetrics),
        (_, ["v1", "tokens", ..]) => Need::Node(ManageTokens),
        (&Method::PUT, ["v1", "functions", _]) => Need::Tenant(Deploy),
        (&Method::DELETE, ["v1", "functions", _]) => Need::Tenant(Remove),
        (&Method::POST, ["v1", "functions", _, "invoke"]) => Need::Tenant(Invoke),
        (_, ["v1", "invocations", ..]) => Need::Tenant(ReadResult),
        (_, ["v1", "functions", ..]) => Need::Tenant(ListFunctions),
        // The least any role may do: a caller with any valid token learns the route is
        // unknown; one without learns nothing.
        _ => Need::Tenant(Invoke),
    }
}

/// The node's tokens, when `auth = "tokens"`.
pub struct Auth {
    mode: AuthMode,
    book: RwLock<TokenBook>,
    tree: sled::Tree,
}

impl Auth {
    /// Loads the tokens from the store. With `auth = "tokens"` and no token at all (first
    /// start), creates an admin token of the default tenant and writes it to
    /// `<data_dir>/admin.token` with mode 0600.
    pub fn open(mode: AuthMode, store: &Store, data_dir: &Path) -> Result<Self, NodeError> {
        let tree = store.tree("tokens")?;
        let mut book = TokenBook::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            let record: TokenRecord =
                tern_wire::decode(&v, 4096).map_err(|e| StoreError::Corrupt {
                    what: "token",
                    key: String::from_utf8_lossy(&k).into_owned(),
                    detail: e.to_string(),
                })?;
            book.apply(record);
        }
        let auth = Self {
            mode,
            book: RwLock::new(book),
            tree,
        };
        if mode == AuthMode::Tokens && auth.read().is_empty() {
            let (secret, record) = auth.create(TenantName::default_tenant(), Role::Admin)?;
            let info = record.info();
            let path = data_dir.join(ADMIN_TOKEN_FILE);
            write_secret_file(&path, &secret).map_err(|source| NodeError::TokenFile {
                path: path.clone(),
                source,
            })?;
            tracing::info!(token = %info.id, path = %path.display(), "created the admin token");
        }
        Ok(auth)
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks a request's `Authorization` header against what its route needs. `Ok(None)`
    /// when auth is off or the route is open.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        need: Need,
    ) -> Result<Option<Principal>, NodeError> {
        if self.mode == AuthMode::Off || need == Need::Nothing {
            return Ok(None);
        }
        let principal = match bearer(authorization) {
            Some(token) => match self.read().authenticate(token) {
                Ok(p) => Some(p),
                Err(e) => {
                    log_refusal(e);
                    None
                }
            },
            None => None,
        };
        let default = TenantName::default_tenant();
        let (action, tenant) = match need {
            Need::Nothing => return Ok(None),
            Need::Tenant(action) => (action, Some(&default)),
            Need::Node(action) => (action, None),
        };
        tern_tenancy::authorize(principal.as_ref(), action, tenant).map_err(|d| match d {
            Denied::Unauthorized => NodeError::Unauthorized,
            Denied::Forbidden => NodeError::Forbidden,
            Denied::NotFound => NodeError::NotFound("not found".into()),
        })?;
        Ok(principal)
    }

    /// A new token for `tenant` with `role`: the secret (shown once, never stored) and its
    /// record (to announce to peers). Durable when this returns.
    pub fn create(
        &self,
        tenant: TenantName,
        role: Role,
    ) -> Result<(Secret, TokenRecord), NodeError> {
        if tenant != TenantName::default_tenant() {
            return Err(NodeError::BadRequest(format!(
                "unknown tenant {tenant}: only the default tenant exists on this node"
            )));
        }
        let (secret, record) =
            Token::generate(tenant, role, crate::app::now_ms()).map_err(NodeError::Tenancy)?;
        self.persist(&record)?;
        self.write()
            .insert(record.clone())
            .map_err(NodeError::Tenancy)?;
        Ok((secret, record))
    }

    /// Revokes a token for good (revoking again keeps the first time); the record to
    /// announce.
    pub fn revoke(&self, id: &TokenId) -> Result<TokenRecord, NodeError> {
        let record = {
            let mut book = self.write();
            book.revoke(id, crate::app::now_ms())
                .map_err(|_| NodeError::NotFound(format!("no token {id}")))?
                .clone()
        };
        self.persist(&record)?;
        Ok(record)
    }

    /// Every token record (hashes, not secrets), for peers.
    pub fn records(&self) -> Vec<TokenRecord> {
        self.read().records().cloned().collect()
    }

    /// Merges records learnt from a peer (a revocation on either side wins) and stores what
    /// changed; how many changed. Kept whatever `auth` is, so a node switched to tokens later
    /// knows them.
    pub fn apply(&self, records: Vec<TokenRecord>) -> Result<usize, NodeError> {
        let mut changed = Vec::new();
        {
            let mut book = self.write();
            for record in records {
                let id = record.id;
                if book.apply(record)
                    && let Some(merged) = book.get(&id)
                {
                    changed.push(merged.clone());
                }
            }
        }
        for record in &changed {
            self.persist(record)?;
        }
        Ok(changed.len())
    }

    /// Every token (without secrets or hashes), in id order.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.read().list(None)
    }

    fn persist(&self, record: &TokenRecord) -> Result<(), NodeError> {
        let bytes = tern_wire::encode(record, 4096).map_err(|e| StoreError::Encode {
            what: "token",
            detail: e.to_string(),
        })?;
        self.tree
            .insert(record.id.to_string().as_bytes(), bytes)
            .map_err(StoreError::from)?;
        self.tree.flush().map_err(StoreError::from)?;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TokenBook> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TokenBook> {
        self.book.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(header: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(header?).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn log_refusal(e: AuthError) {
    // The caller sees one 401 whatever the reason; the log says which.
    tracing::debug!(reason = %e, "refused a bearer token");
}

/// Writes `secret` to a new file readable by its owner only (replacing an older one).
fn write_secret_file(path: &PathBuf, secret: &Secret) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.expose().as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn open(dir: &Path, mode: AuthMode) -> Auth {
        let store = Store::open(dir).unwrap();
        Auth::open(mode, &store, dir).unwrap()
    }

    #[test]
    fn the_first_start_writes_an_admin_token_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let auth = open(dir.path(), AuthMode::Tokens);
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let header = format!("Bearer {}", token.trim());
        let p = auth
            .check(Some(header.as_bytes()), Need::Node(Action::ManageTokens))
            .unwrap()
            .unwrap();
        assert_eq!(p.role, Role::Admin);
        assert_eq!(auth.list().len(), 1);
    }

    #[test]
    fn tokens_survive_a_restart_and_no_second_admin_token_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, id) = {
            let auth = open(dir.path(), AuthMode::Tokens);
            let (secret, info) = auth
                .create(TenantName::default_tenant(), Role::Invoker)
                .unwrap();
            (secret, info.id)
        };
        let first_admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        let auth = open(dir.path(), AuthMode::Tokens);
        assert_eq!(auth.list().len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap(),
            first_admin
        );
        let header = format!("bearer {}", secret.expose());
        let invoke = Need::Tenant(Action::Invoke);
        assert!(auth.check(Some(header.as_bytes()), invoke).is_ok());
        auth.revoke(&id).unwrap();
        drop(auth);
        let auth = open(dir.path(), AuthMode::Tokens);
        assert!(matches!(
            auth.check(Some(header.as_bytes()), invoke),
            Err(NodeError::Unauthorized)
        ));
    }

    #[test]
    fn roles_and_missing_or_bad_tokens_get_401_or_403() {
        let dir = tempfile::tempdir().unwrap();
        let auth = open(dir.path(), AuthMode::Tokens);
        let (invoker, _) = auth
            .create(TenantName::default_tenant(), Role::Invoker)
            .unwrap();
        let (developer, _) = auth
            .create(TenantName::default_tenant(), Role::Developer)
            .unwrap();
        let h = |s: &Secret| format!("Bearer {}", s.expose());
        let deploy = Need::Tenant(Action::Deploy);
        assert!(matches!(
            auth.check(None, deploy),
            Err(NodeError::Unauthorized)
        ));
        for bad in ["Bearer", "Bearer tern_nope", "Basic abc", "\u{0}"] {
            assert!(matches!(
                auth.check(Some(bad.as_bytes()), deploy),
                Err(NodeError::Unauthorized)
            ));
        }
        assert!(matches!(
            auth.check(Some(h(&invoker).as_bytes()), deploy),
            Err(NodeError::Forbidden)
        ));
        assert!(auth.check(Some(h(&developer).as_bytes()), deploy).is_ok());
        assert!(matches!(
            auth.check(
                Some(h(&developer).as_bytes()),
                Need::Node(Action::ReadNodeMetrics)
            ),
            Err(NodeError::Forbidden)
        ));
        assert!(auth.check(None, Need::Nothing).unwrap().is_none());
    }

    #[test]
    fn with_auth_off_nothing_is_checked_and_no_token_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let auth = open(dir.path(), AuthMode::Off);
        assert!(
            auth.check(None, Need::Node(Action::ManageTokens))
                .unwrap()
                .is_none()
        );
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists());
    }

    #[test]
    fn only_the_default_tenant_gets_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let auth = open(dir.path(), AuthMode::Tokens);
        assert!(matches!(
            auth.create("other".parse().unwrap(), Role::Developer),
            Err(NodeError::BadRequest(_))
        ));
    }

    #[test]
    fn every_route_needs_the_action_its_role_table_says() {
        use Action::*;
        let cases: &[(Method, &str, Need)] = &[
            (Method::GET, "healthz", Need::Nothing),
            (Method::GET, "metrics", Need::Node(ReadNodeMetrics)),
            (Method::GET, "v1/cluster", Need::Node(ReadNodeMetrics)),
            (Method::POST, "v1/tokens", Need::Node(ManageTokens)),
            (Method::GET, "v1/tokens", Need::Node(ManageTokens)),
            (
                Method::DELETE,
                "v1/tokens/0123456789abcdef",
                Need::Node(ManageTokens),
            ),
            (Method::GET, "v1/functions", Need::Tenant(ListFunctions)),
            (Method::GET, "v1/functions/f", Need::Tenant(ListFunctions)),
            (Method::PUT, "v1/functions/f", Need::Tenant(Deploy)),
            (Method::DELETE, "v1/functions/f", Need::Tenant(Remove)),
            (Method::POST, "v1/functions/f/invoke", Need::Tenant(Invoke)),
            (Method::GET, "v1/invocations/x", Need::Tenant(ReadResult)),
            (Method::GET, "nowhere", Need::Tenant(Invoke)),
        ];
        for (method, path, expected) in cases {
            let segments: Vec<&str> = path.split('/').collect();
            assert_eq!(need(method, &segments), *expected, "{method} {path}");
        }
    }
}
