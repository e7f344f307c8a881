//! Authorization: may this principal do this action on this tenant's resource?
//!
//! One function, [`authorize`], called by the service layer behind both front doors so the
//! rule exists once. The order of the checks is what keeps it from leaking:
//!
//! 1. no principal (no token, or one that did not authenticate) → [`Denied::Unauthorized`];
//! 2. an admin may do everything, on every tenant;
//! 3. a role that never allows the action → [`Denied::Forbidden`], decided from the role and
//!    the action alone, before the resource is looked at, so a 403 says nothing about
//!    whether the resource exists;
//! 4. a resource of another tenant → [`Denied::NotFound`], the answer the caller would get
//!    for a resource that does not exist, so tenants cannot discover each other's functions
//!    or invocation ids.
//!
//! Roles: developers work inside their tenant (deploy, remove, invoke, read results, list
//! functions, read the tenant's record and metrics); invokers only invoke and read the
//! results of invocations (an asynchronous invocation is useless without its result). Only
//! admins manage tenants and tokens and read node-wide data, which spans tenants.

use crate::error::Denied;
use crate::tenant::TenantName;
use crate::token::{Principal, Role};

/// Everything a caller can ask of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create, update or remove a tenant.
    ManageTenants,
    /// Create, revoke or list tokens.
    ManageTokens,
    /// Read a tenant's record, quotas and usage.
    ReadTenant,
    /// Deploy a function (or a new version of one).
    Deploy,
    /// Remove a function.
    Remove,
    /// Invoke a function, synchronously or not (also `map`).
    Invoke,
    /// Read an asynchronous invocation's status or result.
    ReadResult,
    /// List functions, or read one function's description.
    ListFunctions,
    /// Read a tenant's metrics.
    ReadTenantMetrics,
    /// Read node-wide data: the Prometheus endpoint and cluster status, which span tenants.
    ReadNodeMetrics,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::ManageTenants,
        Action::ManageTokens,
        Action::ReadTenant,
        Action::Deploy,
        Action::Remove,
        Action::Invoke,
        Action::ReadResult,
        Action::ListFunctions,
        Action::ReadTenantMetrics,
        Action::ReadNodeMetrics,
    ];
}

/// Whether `role` ever allows `action` (on its own tenant; admins on every tenant).
pub fn role_allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => true,
        Role::Developer => matches!(
            action,
            ReadTenant | Deploy | Remove | Invoke | ReadResult | ListFunctions | ReadTenantMetrics
        ),
        Role::Invoker => matches!(action, Invoke | ReadResult),
    }
}

/// May `actor` do `action` on a resource of `resource_tenant`?
///
/// `actor` is `None` when the request had no credential or it did not authenticate.
/// `resource_tenant` is the tenant owning the function, invocation, tenant record or metrics
/// acted on, or `None` for node-wide resources that belong to no single tenant (and for
/// requests that span tenants, like listing every tenant's functions): only admins reach
/// those.
pub fn authorize(
    actor: Option<&Actor>,
    action: Action,
    resource_tenant: Option<&TenantName>,
) -> Result<(), Denied> {
    let actor = actor.ok_or(Denied::Unauthorized)?;
    if actor.role == Role::Admin {
        return Ok(());
    }
    if !role_allows(actor.role, action) {
        return Err(Denied::Forbidden);
    }
    match resource_tenant {
        Some(t) if *t == actor.tenant => Ok(()),
        Some(_) => Err(Denied::NotFound),
        None => Err(Denied::Forbidden),
    }
}

/// Who acts, whatever proved it: a bearer token ([`Principal`]) or a client certificate
/// naming a tenant and a role. Authorization looks at nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub tenant: TenantName,
    pub role: Role,
}

impl From<&Principal> for Actor {
    fn from(p: &Principal) -> Self {
        Self {
            tenant: p.tenant.clone(),
            role: p.role,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::token::TokenId;

    type Outcome = Result<(), Denied>;
    const OK: Outcome = Ok(());
    const F: Outcome = Err(Denied::Forbidden);
    const NF: Outcome = Err(Denied::NotFound);

    /// One action: for admin, developer and invoker, the answer on [own tenant, another
    /// tenant, no tenant (node-wide)]. Written out by hand, not derived from the code.
    struct Row {
        action: Action,
        admin: [Outcome; 3],
        developer: [Outcome; 3],
        invoker: [Outcome; 3],
    }

    fn table() -> Vec<Row> {
        use Action::*;
        let row = |action, admin, developer, invoker| Row {
            action,
            admin,
            developer,
            invoker,
        };
        vec![
            row(ManageTenants, [OK, OK, OK], [F, F, F], [F, F, F]),
            row(ManageTokens, [OK, OK, OK], [F, F, F], [F, F, F]),
            row(ReadTenant, [OK, OK, OK], [OK, NF, F], [F, F, F]),
            row(Deploy, [OK, OK, OK], [OK, NF, F], [F, F, F]),
            row(Remove, [OK, OK, OK], [OK, NF, F], [F, F, F]),
            row(Invoke, [OK, OK, OK], [OK, NF, F], [OK, NF, F]),
            row(ReadResult, [OK, OK, OK], [OK, NF, F], [OK, NF, F]),
            row(ListFunctions, [OK, OK, OK], [OK, NF, F], [F, F, F]),
            row(ReadTenantMetrics, [OK, OK, OK], [OK, NF, F], [F, F, F]),
            row(ReadNodeMetrics, [OK, OK, OK], [F, F, F], [F, F, F]),
        ]
    }

    fn principal(role: Role) -> Actor {
        Actor::from(&Principal {
            token: "0123456789abcdef".parse::<TokenId>().unwrap(),
            tenant: "acme".parse().unwrap(),
            role,
        })
    }

    #[test]
    fn the_table_covers_every_action_once() {
        let rows = table();
        assert_eq!(rows.len(), Action::ALL.len());
        for action in Action::ALL {
            assert_eq!(
                rows.iter().filter(|r| r.action == action).count(),
                1,
                "{action:?}"
            );
        }
    }

    #[test]
    fn every_action_role_and_tenant_gets_the_documented_answer() {
        let own: TenantName = "acme".parse().unwrap();
        let other: TenantName = "globex".parse().unwrap();
        let resources = [Some(&own), Some(&other), None];
        for row in table() {
            for (role, expected) in [
                (Role::Admin, &row.admin),
                (Role::Developer, &row.developer),
                (Role::Invoker, &row.invoker),
            ] {
                let p = principal(role);
                for (resource, want) in resources.iter().zip(expected) {
                    assert_eq!(
                        authorize(Some(&p), row.action, *resource),
                        *want,
                        "{role:?} {:?} on {resource:?}",
                        row.action
                    );
                }
            }
            for resource in resources {
                assert_eq!(
                    authorize(None, row.action, resource),
                    Err(Denied::Unauthorized),
                    "no principal, {:?} on {resource:?}",
                    row.action
                );
            }
        }
    }

    #[test]
    fn a_forbidden_answer_does_not_depend_on_whose_resource_it_is() {
        // Whether the resource is ours, someone else's, or does not exist: same 403, so a
        // 403 cannot be used to probe for other tenants.
        let own: TenantName = "acme".parse().unwrap();
        let other: TenantName = "globex".parse().unwrap();
        let invoker = principal(Role::Invoker);
        assert_eq!(
            authorize(Some(&invoker), Action::Deploy, Some(&own)),
            authorize(Some(&invoker), Action::Deploy, Some(&other))
        );
    }
}
