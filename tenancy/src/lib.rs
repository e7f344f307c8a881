//! `tern-tenancy`: the decisions multi-tenancy needs, without any I/O.
//!
//! Who is calling ([`token`]), what they may do ([`authz`]), what each tenant is and may use
//! ([`tenant`], [`quota`]), how much of the node each tenant gets under contention (Eq. 6 of the
//! paper Tern follows, [`share`]) and whose work gets the next free instance slot ([`fair`]).
//!
//! Pure: no clock (times are `now_ms` arguments), no files, no sockets, no globals. The only OS
//! access is randomness when a token is generated. The node holds these types, persists them
//! (every record is serde; decoding validates), replicates tenant and token records through
//! the cluster registry, and calls the checks on every request at both front doors.
//!
//! - [`tenant`]: `TenantName`, `Weight`, `SlaClass`, `TenantSpec`, `Tenant`, and the
//!   replicated, last-writer-wins `TenantEntry`.
//! - [`quota`]: `Quotas`, `Usage`, and the deploy and stored-result checks.
//! - [`rate`]: `RateLimit` and the token `Bucket` behind request-rate quotas.
//! - [`demand`]: each node's part of a tenant's cluster-wide quotas (rate, `max_concurrent`)
//!   by where its work is (`demand_part`, `DemandBook`).
//! - [`token`]: `Role`, `Token` (generate, parse), the hashed `TokenRecord`, `TokenBook`
//!   (authenticate, revoke, list, replicate) and the authenticated `Principal`.
//! - [`authz`]: `Action` and `authorize` → 401 / 403 / 404.
//! - [`share`]: Eq. 6, `R_i = w_i·D_i / Σ_j w_j·D_j`, with the demand factor `D_i`.
//! - [`fair`]: `FairQueue`, start-time fair queueing of instance slots by Eq. 6 shares, with
//!   per-tenant caps, per-group (function) caps inside a lane, and bounded queues.
//! - [`error`]: `Error` (with HTTP status and API code), `AuthError`, `Denied`, `QuotaKind`.

pub mod authz;
pub mod demand;
pub mod error;
pub mod fair;
pub mod quota;
pub mod rate;
pub mod share;
pub mod tenant;
pub mod token;

pub use authz::{Action, Actor, authorize};
pub use demand::{ClusterQuota, Demand, DemandBook, Parts, Reading, demand_part};
pub use error::{AuthError, Denied, Error, QuotaKind};
pub use fair::{FairQueue, Grant, GroupCap, LaneConfig, LaneStats, Rejected, Slot};
pub use quota::{Deploy, Quotas, Usage};
pub use rate::{Bucket, RateLimit};
pub use share::{ShareParams, TenantLoad};
pub use tenant::{SlaClass, Tenant, TenantEntry, TenantName, TenantSpec, Weight};
pub use token::{Principal, Role, Secret, Token, TokenBook, TokenId, TokenInfo, TokenRecord};
