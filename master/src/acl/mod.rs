//! Principals and authorization: ACL tokens (bearer secrets; only their SHA-256 is stored),
//! TOML policies, and the default-deny checks on every API a token reaches once `--acl` is on.
//!
//! Pure parts: `policy` (the TOML format, validation naming the field and line), `token` (the
//! stored record, expiry), `authz` (a store snapshot `AclView` → `Principal` → allowed or
//! `Denied`, and `rpc_need`, the capability each gRPC method needs). Async parts: `store` (the
//! subtree `/drover/acl` in coord, and `follow`, which keeps each master's cached view current
//! through a coord watch), `gate` (the tower wrapper and axum middleware that decide each
//! request, and the revocation futures that end open streams), `service` (`drover.v1.AclApi`),
//! `audit` (one JSON line per denial and per change). Start at `authz`, then `gate`.

pub mod audit;
pub mod authz;
pub mod gate;
pub mod policy;
pub mod service;
pub mod store;
pub mod token;

pub use authz::{AclView, AuthError, Denied, Need, Principal, TaskUsers, rpc_need};
pub use gate::{AclGate, Caller, Gated, http_gate};
pub use policy::{Capability, CoordAccess, Policy, PolicyError};
pub use token::{TokenKind, TokenRecord};

/// Wall-clock time for expiry and the audit log (the driver's edge, never a core).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
