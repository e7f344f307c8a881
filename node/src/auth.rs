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
use tern_tenancy::{Action, Actor, AuthError, Denied, Role, Secret, TenantName};
use tern_tenancy::{Token, TokenBook, TokenId, TokenInfo, TokenRecord};
use tern_wire::FunctionName;

use crate::config::AuthMode;
use crate::error::NodeError;
use crate::store::{Store, StoreError};
use crate::tenants::Tenants;

/// File name of the admin token written at first start, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// What a route needs: an action on a tenant's resource, or on the node as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Open to everyone (liveness).
    Nothing,
    /// `action` on a resource of a tenant: the caller's own unless the route names another
    /// (checked again by the handler once it knows the resource's tenant).
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
        (&Method::GET, ["v1", "tenants", _]) => Need::Tenant(ReadTenant),
        (_, ["v1", "tenants", ..]) => Need::Node(ManageTenants),
        (&Method::PUT, ["v1", "functions", _]) => Need::Tenant(Deploy),
        (&Method::DELETE, ["v1", "functions", _]) => Need::Tenant(Remove),
        (&Method::POST, ["v1", "functions", _, "invoke"]) => Need::Tenant(Invoke),
        // A component's own HTTP route, whatever the method.
        (_, ["fn", ..]) => Need::Tenant(Invoke),
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
    store: Store,
}

impl Auth {
    /// Loads the tokens from the store. With `auth = "tokens"` and no token at all (first
    /// start), creates an admin token of the default tenant and writes it to
    /// `<data_dir>/admin.token` with mode 0600.
    pub fn open(
        mode: AuthMode,
        store: &Store,
        data_dir: &Path,
        tenants: &Tenants,
    ) -> Result<Self, NodeError> {
        let tree = store.tree("tokens")?;
        let mut book = TokenBook::new();
        // A damaged record is quarantined and left out; its token no longer authenticates.
        for record in store.decoded::<TokenRecord>(&tree, "token") {
            book.apply(record?);
        }
        // A quarantined record may have held a revocation: its id is denied for good, so a
        // peer's live copy cannot bring the token back.
        for (key, _) in store.quarantine()? {
            if let Some(id) = key
                .strip_prefix("token/")
                .and_then(|id| id.parse::<TokenId>().ok())
            {
                book.deny(id, crate::clock::wall_ms());
            }
        }
        let auth = Self {
            mode,
            book: RwLock::new(book),
            tree,
            store: store.clone(),
        };
        if mode == AuthMode::Tokens && auth.read().is_empty() {
            let (secret, record) =
                auth.create(TenantName::default_tenant(), Role::Admin, tenants)?;
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

    /// Who sent a request, checked against what its route needs before anything else is
    /// read: 401 without a valid token (a token of a removed tenant is not valid), 403 when
    /// the role never allows the action. Whether the resource's tenant is the caller's is
    /// for the handler to ask ([`Caller::may`]) once it knows the resource.
    pub fn caller(
        &self,
        authorization: Option<&[u8]>,
        need: Need,
        tenants: &Tenants,
    ) -> Result<Caller, NodeError> {
        if self.mode == AuthMode::Off || need == Need::Nothing {
            return Ok(Caller::unchecked());
        }
        self.caller_with_token(bearer(authorization), need, tenants)
    }

    /// [`Auth::caller`] for a token that came without an HTTP header (the QUIC client API),
    /// checked whatever `auth` is.
    pub fn caller_with_token(
        &self,
        token: Option<&str>,
        need: Need,
        tenants: &Tenants,
    ) -> Result<Caller, NodeError> {
        let principal = match token {
            Some(token) => match self.read().authenticate(token) {
                Ok(p) if tenants.is_live(&p.tenant) => Some(p),
                Ok(p) => {
                    tracing::debug!(token = %p.token, tenant = %p.tenant, "refused a token of a removed tenant");
                    None
                }
                Err(e) => {
                    log_refusal(e);
                    None
                }
            },
            None => None,
        };
        let caller = Caller {
            checked: true,
            principal: principal.as_ref().map(Actor::from),
        };
        match need {
            Need::Nothing => {}
            Need::Tenant(action) => caller.may(action, Some(&caller.tenant()))?,
            Need::Node(action) => caller.may(action, None)?,
        }
        Ok(caller)
    }

    /// The tenant of the token in an `Authorization` header, if it authenticates (for
    /// counting a refusal against it).
    pub fn tenant_of(&self, authorization: Option<&[u8]>) -> Option<TenantName> {
        self.read()
            .authenticate(bearer(authorization)?)
            .ok()
            .map(|p| p.tenant)
    }

    /// A new token for `tenant` with `role`: the secret (shown once, never stored) and its
    /// record (to announce to peers). Durable when this returns.
    pub fn create(
        &self,
        tenant: TenantName,
        role: Role,
        tenants: &Tenants,
    ) -> Result<(Secret, TokenRecord), NodeError> {
        if !tenants.is_live(&tenant) {
            return Err(crate::tenants::no_such_tenant(&tenant));
        }
        let (secret, record) =
            Token::generate(tenant, role, crate::clock::wall_ms()).map_err(NodeError::Tenancy)?;
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
            book.revoke(id, crate::clock::wall_ms())
                .map_err(|_| NodeError::NotFound(format!("no token {id}")))?
                .clone()
        };
        self.persist(&record)?;
        Ok(record)
    }

    /// Revokes every token of `tenant` (when it is removed); the records to announce.
    pub fn revoke_tenant(&self, tenant: &TenantName) -> Result<Vec<TokenRecord>, NodeError> {
        let records = self.write().revoke_tenant(tenant, crate::clock::wall_ms());
        for record in &records {
            self.persist(record)?;
        }
        Ok(records)
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

    /// Tokens (without secrets or hashes) of one tenant or of all, in id order.
    pub fn list(&self, tenant: Option<&TenantName>) -> Vec<TokenInfo> {
        self.read().list(tenant)
    }

    fn persist(&self, record: &TokenRecord) -> Result<(), NodeError> {
        let bytes = tern_wire::encode(record, 4096).map_err(|e| StoreError::Encode {
            what: "token",
            detail: e.to_string(),
        })?;
        self.tree
            .insert(record.id.to_string().as_bytes(), bytes)
            .map_err(StoreError::from)?;
        self.store.flush_blocking()?;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TokenBook> {
        self.book.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TokenBook> {
        self.book.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who sent a request, once [`Auth::caller`] let it through.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Whether tokens are checked (`auth = "tokens"` on a route that needs one).
    checked: bool,
    principal: Option<Actor>,
}

impl Caller {
    /// A caller nothing is checked for (`auth = "off"`, or an open route): acts as an admin
    /// of `default`.
    pub fn unchecked() -> Self {
        Self {
            checked: false,
            principal: None,
        }
    }

    /// A caller that proved who it is without a token (a client certificate naming `actor`'s
    /// tenant and role), checked like a token's holder.
    pub fn certified(actor: Actor) -> Self {
        Self {
            checked: true,
            principal: Some(actor),
        }
    }

    /// Whether the caller is who it says: no checks at all, or a token that authenticated.
    pub fn is_authenticated(&self) -> bool {
        !self.checked || self.principal.is_some()
    }

    /// The tenant a function name without one means for this caller.
    pub fn tenant(&self) -> TenantName {
        self.principal
            .as_ref()
            .map_or_else(TenantName::default_tenant, |p| p.tenant.clone())
    }

    /// Whether this caller sees every tenant's resources (an admin, or no checks at all).
    pub fn sees_every_tenant(&self) -> bool {
        !self.checked
            || self
                .principal
                .as_ref()
                .is_some_and(|p| p.role == Role::Admin)
    }

    /// May this caller do `action` on a resource of `tenant` (`None`: node-wide)? A resource
    /// of another tenant is a plain [`NodeError::NotFound`].
    pub fn may(&self, action: Action, tenant: Option<&TenantName>) -> Result<(), NodeError> {
        self.may_or(action, tenant, || NodeError::NotFound("not found".into()))
    }

    /// [`Caller::may`], answering a resource of another tenant with `missing()`.
    pub fn may_or(
        &self,
        action: Action,
        tenant: Option<&TenantName>,
        missing: impl FnOnce() -> NodeError,
    ) -> Result<(), NodeError> {
        if !self.checked {
            return Ok(());
        }
        tern_tenancy::authorize(self.principal.as_ref(), action, tenant).map_err(|d| match d {
            Denied::Unauthorized => NodeError::Unauthorized,
            Denied::Forbidden => NodeError::Forbidden,
            Denied::NotFound => missing(),
        })
    }

    /// The function a path segment names for this caller: `name` is in the caller's tenant,
    /// `tenant.name` in that tenant. Another tenant's function is answered by `missing`, as
    /// if it did not exist.
    pub fn function(
        &self,
        segment: &str,
        action: Action,
        missing: impl FnOnce(FunctionName) -> NodeError,
    ) -> Result<FunctionName, NodeError> {
        let name: FunctionName = segment
            .parse()
            .map_err(|e: tern_wire::WireError| NodeError::BadRequest(e.to_string()))?;
        // Whether the segment named a tenant, `default.` included (which the parsed name no
        // longer shows: `default.echo` is spelled `echo`).
        let name = if segment.contains('.') {
            name
        } else {
            name.in_tenant(&self.tenant())
        };
        let owner = name.tenant();
        self.may_or(action, Some(&owner), || missing(name.clone()))?;
        Ok(name)
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

    fn open(dir: &Path, mode: AuthMode) -> (Auth, Tenants) {
        let store = Store::open(dir).unwrap();
        let tenants = Tenants::open(&store, "a").unwrap();
        (Auth::open(mode, &store, dir, &tenants).unwrap(), tenants)
    }

    fn default() -> TenantName {
        TenantName::default_tenant()
    }

    fn header(secret: &Secret) -> String {
        format!("Bearer {}", secret.expose())
    }

    #[test]
    fn the_first_start_writes_an_admin_token_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        let header = format!("Bearer {}", token.trim());
        let caller = auth
            .caller(
                Some(header.as_bytes()),
                Need::Node(Action::ManageTokens),
                &tenants,
            )
            .unwrap();
        assert!(caller.sees_every_tenant());
        assert_eq!(auth.list(None).len(), 1);
    }

    #[test]
    fn tokens_survive_a_restart_and_no_second_admin_token_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, id) = {
            let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
            let (secret, record) = auth.create(default(), Role::Invoker, &tenants).unwrap();
            (secret, record.id)
        };
        let first_admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
        assert_eq!(auth.list(None).len(), 2);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap(),
            first_admin
        );
        let h = header(&secret);
        let invoke = Need::Tenant(Action::Invoke);
        assert!(auth.caller(Some(h.as_bytes()), invoke, &tenants).is_ok());
        auth.revoke(&id).unwrap();
        drop((auth, tenants));
        let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
        assert!(matches!(
            auth.caller(Some(h.as_bytes()), invoke, &tenants),
            Err(NodeError::Unauthorized)
        ));
    }

    #[test]
    fn damaged_token_and_tenant_records_are_quarantined_and_the_node_opens() {
        let dir = tempfile::tempdir().unwrap();
        let acme: TenantName = "acme".parse().unwrap();
        let (secret, damaged_secret, damaged) = {
            let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
            tenants
                .create(acme.clone(), tern_tenancy::TenantSpec::default(), 1)
                .unwrap();
            let (secret, _) = auth.create(acme.clone(), Role::Invoker, &tenants).unwrap();
            let (damaged_secret, damaged) =
                auth.create(acme.clone(), Role::Invoker, &tenants).unwrap();
            (secret, damaged_secret, damaged)
        };
        let damaged_id = damaged.id;
        {
            let store = Store::open(dir.path()).unwrap();
            let tokens = store.tree("tokens").unwrap();
            tokens
                .insert(damaged_id.to_string().as_bytes(), &[0xff; 12][..])
                .unwrap();
            let tenants = store.tree("tenants").unwrap();
            tenants.insert(b"zzz", &b"not a tenant"[..]).unwrap();
            store.tree("tokens").unwrap().flush().unwrap();
            tenants.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let tenants = Tenants::open(&store, "a").unwrap();
        let auth = Auth::open(AuthMode::Tokens, &store, dir.path(), &tenants).unwrap();
        assert_eq!(store.quarantined(), 2, "one token, one tenant record");
        assert!(tenants.is_live(&acme), "the other records are read");
        let h = header(&secret);
        assert!(
            auth.caller(Some(h.as_bytes()), Need::Tenant(Action::Invoke), &tenants)
                .is_ok()
        );
        assert_eq!(
            auth.list(Some(&acme))
                .iter()
                .filter(|t| t.revoked_at_ms.is_none())
                .count(),
            1,
            "the damaged token no longer counts as live"
        );
        // A peer that still has the damaged token's live record cannot bring it back.
        auth.apply(vec![damaged]).unwrap();
        let h = header(&damaged_secret);
        assert!(matches!(
            auth.caller(Some(h.as_bytes()), Need::Tenant(Action::Invoke), &tenants),
            Err(NodeError::Unauthorized)
        ));
    }

    #[test]
    fn roles_and_missing_or_bad_tokens_get_401_or_403() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
        let (invoker, _) = auth.create(default(), Role::Invoker, &tenants).unwrap();
        let (developer, _) = auth.create(default(), Role::Developer, &tenants).unwrap();
        let deploy = Need::Tenant(Action::Deploy);
        let check = |h: Option<&str>, need| auth.caller(h.map(str::as_bytes), need, &tenants);
        assert!(matches!(check(None, deploy), Err(NodeError::Unauthorized)));
        for bad in ["Bearer", "Bearer tern_nope", "Basic abc", "\u{0}"] {
            assert!(matches!(
                check(Some(bad), deploy),
                Err(NodeError::Unauthorized)
            ));
        }
        assert!(matches!(
            check(Some(&header(&invoker)), deploy),
            Err(NodeError::Forbidden)
        ));
        assert!(check(Some(&header(&developer)), deploy).is_ok());
        assert!(matches!(
            check(
                Some(&header(&developer)),
                Need::Node(Action::ReadNodeMetrics)
            ),
            Err(NodeError::Forbidden)
        ));
        assert!(check(None, Need::Nothing).is_ok());
    }

    #[test]
    fn with_auth_off_nothing_is_checked_and_no_token_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, tenants) = open(dir.path(), AuthMode::Off);
        let caller = auth
            .caller(None, Need::Node(Action::ManageTokens), &tenants)
            .unwrap();
        assert!(caller.sees_every_tenant());
        let acme: TenantName = "acme".parse().unwrap();
        assert!(caller.may(Action::Deploy, Some(&acme)).is_ok());
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists());
    }

    #[test]
    fn tokens_are_issued_only_for_live_tenants_and_die_with_their_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
        let acme: TenantName = "acme".parse().unwrap();
        assert!(matches!(
            auth.create(acme.clone(), Role::Developer, &tenants),
            Err(NodeError::NotFound(_))
        ));
        tenants.create(acme.clone(), Default::default(), 1).unwrap();
        let (secret, _) = auth
            .create(acme.clone(), Role::Developer, &tenants)
            .unwrap();
        let h = header(&secret);
        let deploy = Need::Tenant(Action::Deploy);
        assert!(auth.caller(Some(h.as_bytes()), deploy, &tenants).is_ok());
        // Removed: refused at once, even before the revocations are written.
        tenants.remove(&acme, 2).unwrap();
        assert!(matches!(
            auth.caller(Some(h.as_bytes()), deploy, &tenants),
            Err(NodeError::Unauthorized)
        ));
        let revoked = auth.revoke_tenant(&acme).unwrap();
        assert_eq!(revoked.len(), 1);
        // Re-created under the same name: the old token stays dead.
        tenants.create(acme, Default::default(), 3).unwrap();
        assert!(matches!(
            auth.caller(Some(h.as_bytes()), deploy, &tenants),
            Err(NodeError::Unauthorized)
        ));
    }

    #[test]
    fn a_callers_function_names_mean_its_own_tenant_and_others_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, tenants) = open(dir.path(), AuthMode::Tokens);
        let acme: TenantName = "acme".parse().unwrap();
        tenants.create(acme.clone(), Default::default(), 1).unwrap();
        let (dev, _) = auth.create(acme, Role::Developer, &tenants).unwrap();
        let h = header(&dev);
        let caller = auth
            .caller(Some(h.as_bytes()), Need::Tenant(Action::Invoke), &tenants)
            .unwrap();
        let missing = |n: FunctionName| NodeError::NotFound(format!("no function {n}"));
        let own = caller.function("echo", Action::Invoke, missing).unwrap();
        assert_eq!(own.as_str(), "acme.echo");
        let spelled = caller
            .function("acme.echo", Action::Invoke, missing)
            .unwrap();
        assert_eq!(spelled, own);
        for other in ["default.echo", "globex.echo"] {
            match caller.function(other, Action::Invoke, missing) {
                Err(NodeError::NotFound(m)) => assert!(m.starts_with("no function"), "{m}"),
                r => panic!("{other}: {r:?}"),
            }
        }
        assert!(matches!(
            caller.function("Bad!", Action::Invoke, missing),
            Err(NodeError::BadRequest(_))
        ));
        assert!(!caller.sees_every_tenant());
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
            (Method::GET, "v1/tenants", Need::Node(ManageTenants)),
            (Method::POST, "v1/tenants", Need::Node(ManageTenants)),
            (Method::GET, "v1/tenants/acme", Need::Tenant(ReadTenant)),
            (Method::PUT, "v1/tenants/acme", Need::Node(ManageTenants)),
            (Method::DELETE, "v1/tenants/acme", Need::Node(ManageTenants)),
            (Method::GET, "v1/functions", Need::Tenant(ListFunctions)),
            (Method::GET, "v1/functions/f", Need::Tenant(ListFunctions)),
            // Guests' stderr: for those who deploy and inspect functions, not their callers.
            (
                Method::GET,
                "v1/functions/f/logs",
                Need::Tenant(ListFunctions),
            ),
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
