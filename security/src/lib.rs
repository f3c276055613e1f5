//! Transport security for every Drover listener and link: TLS material and the rustls configs
//! built from it (`tls`: certificates carry a role), accepting TLS connections for tonic and axum
//! with plaintext refused in one line (`incoming`), the per-service role check and the
//! secure-by-default listen rule (`guard`), the shared `--tls-*` flags (`args`),
//! `drover tls init` (`init`), and bearer token secrets as they travel and are hashed (`bearer`).
//!
//! Must not know about frameworks, offers, coord or the masters' protocol; it hands out configs
//! and identities, and the crates that own a listener decide who may call what. Start at
//! `tls::TlsConfig`, then `guard::RoleGuard`.

pub mod args;
pub mod bearer;
pub mod guard;
pub mod incoming;
pub mod init;
pub mod tls;

pub use args::TlsArgs;
pub use bearer::{BearerError, Secret, SecretHash};
pub use guard::{HTTP_ROLES, RoleGuard, check_plaintext_listen, http_guard};
pub use incoming::{
    HandshakeLimits, HttpCaller, TlsHttpListener, accept_tls, grpc_incoming, tonic_incoming,
};
pub use tls::{ALPN_H2, ALPN_HTTP1, ALPN_PEER, CertIdentity, Role, TlsConfig, TlsError};
