//! Who may call what: a role check per gRPC service, from the client certificate, and the
//! secure-by-default rule for listeners.

use std::net::SocketAddr;

use tonic::{Request, Status};

use crate::tls::{CertIdentity, Role};

/// A tonic interceptor admitting callers whose client certificate has one of `roles`.
/// With `enforce` off (a plaintext `--insecure` server) it admits everyone: there is no identity
/// to check.
#[derive(Debug, Clone)]
pub struct RoleGuard {
    service: &'static str,
    roles: &'static [Role],
    enforce: bool,
}

impl RoleGuard {
    pub fn new(service: &'static str, roles: &'static [Role], enforce: bool) -> RoleGuard {
        RoleGuard {
            service,
            roles,
            enforce,
        }
    }

    fn needs(&self) -> String {
        let names: Vec<&str> = self.roles.iter().map(|r| r.as_str()).collect();
        match names.as_slice() {
            [one] => format!("a {one} certificate"),
            _ => format!("a certificate with one of the roles {}", names.join(", ")),
        }
    }

    /// The check itself, on the caller's certificates (the leaf first).
    pub fn admit(
        &self,
        certs: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<CertIdentity, Status> {
        let Some(leaf) = certs.and_then(|c| c.first()) else {
            return Err(Status::unauthenticated(format!(
                "{}: no client certificate; this API needs {}",
                self.service,
                self.needs()
            )));
        };
        let identity = CertIdentity::of(leaf).map_err(|e| {
            Status::unauthenticated(format!("{}: client certificate: {e}", self.service))
        })?;
        match identity.role {
            Some(role) if self.roles.contains(&role) => Ok(identity),
            _ => Err(Status::permission_denied(format!(
                "{}: {} may not call this API; it needs {}",
                self.service,
                identity.describe(),
                self.needs()
            ))),
        }
    }
}

impl tonic::service::Interceptor for RoleGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if !self.enforce {
            return Ok(request);
        }
        let certs = request.peer_certs();
        let identity = self.admit(certs.as_deref().map(Vec::as_slice))?;
        // Parsed once per call: what runs after the guard (the master's ACL gate) reads it here.
        let mut request = request;
        request.extensions_mut().insert(identity);
        Ok(request)
    }
}

/// Who may read the HTTP side (dashboard, `/api/v1/*`, `/metrics`) when it serves TLS.
pub const HTTP_ROLES: &[Role] = &[Role::Operator, Role::Master];

/// axum middleware for the HTTP side: over TLS (the connection carries an [`HttpCaller`]) the
/// client certificate must have one of `HTTP_ROLES`; `401` without one, `403` with another.
/// A plaintext server (no `HttpCaller`) admits everyone.
pub async fn http_guard(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let caller = request
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::incoming::HttpCaller>>()
        .map(|c| c.0.clone());
    match caller {
        Some(caller) if caller.tls => match &caller.cert {
            None => (
                axum::http::StatusCode::UNAUTHORIZED,
                "no client certificate: this HTTP API needs an operator certificate (curl --cert/--key)\n",
            )
                .into_response(),
            Some(cert) if cert.role.is_some_and(|r| HTTP_ROLES.contains(&r)) => {
                next.run(request).await
            }
            Some(cert) => (
                axum::http::StatusCode::FORBIDDEN,
                format!(
                    "{} may not read this HTTP API; it needs an operator certificate\n",
                    cert.describe()
                ),
            )
                .into_response(),
        },
        _ => next.run(request).await,
    }
}

/// Secure by default: a plaintext listener only on loopback, unless the operator said
/// `--insecure`. The error is the one line the process exits with.
pub fn check_plaintext_listen(
    flag: &str,
    addr: SocketAddr,
    tls: bool,
    insecure: bool,
) -> Result<(), String> {
    if tls || insecure || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "{flag} {addr} is not a loopback address and TLS is off: anyone who reaches it could run \
         commands on every agent; give --tls-cert, --tls-key and --tls-ca (see `drover tls init`), \
         or --insecure to serve plaintext anyway"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_unless_insecure() {
        // Proves the secure-by-default rule: loopback or TLS or --insecure, else a named refusal.
        let lo: SocketAddr = "127.0.0.1:5050".parse().expect("addr");
        let lo6: SocketAddr = "[::1]:5050".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:5050".parse().expect("addr");
        assert!(check_plaintext_listen("--listen", lo, false, false).is_ok());
        assert!(check_plaintext_listen("--listen", lo6, false, false).is_ok());
        assert!(check_plaintext_listen("--listen", any, true, false).is_ok());
        assert!(check_plaintext_listen("--listen", any, false, true).is_ok());
        let err = check_plaintext_listen("--http", any, false, false).expect_err("refused");
        assert!(
            err.starts_with("--http 0.0.0.0:5050 is not a loopback address"),
            "{err}"
        );
        assert!(err.contains("--insecure"), "{err}");
    }

    #[test]
    fn no_certificate_is_unauthenticated_and_a_wrong_role_is_denied() {
        // Proves the guard's two refusals and their words; with enforcement off all pass.
        let guard = RoleGuard::new("drover.v1.Peer", &[Role::Master], true);
        let err = guard.admit(None).expect_err("no cert");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(
            err.message().contains("needs a master certificate"),
            "{}",
            err.message()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let set = crate::init::init(
            dir.path(),
            &crate::init::InitPlan {
                masters: vec!["127.0.0.1".into()],
                agents: 1,
                days: 30,
            },
        )
        .expect("init");
        let agent = &set
            .iter()
            .find(|f| f.name == "agent-1")
            .expect("agent cert")
            .cert;
        let pem = std::fs::read(agent).expect("read");
        let der: Vec<_> = {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .expect("pem")
        };
        let err = guard.admit(Some(&der)).expect_err("agent is no master");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "drover.v1.Peer: certificate agent-1 (role agent) may not call this API; it needs a master certificate"
        );
        let master = &set
            .iter()
            .find(|f| f.name == "master-1")
            .expect("master cert")
            .cert;
        let pem = std::fs::read(master).expect("read");
        let der: Vec<_> = {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .expect("pem")
        };
        let id = guard.admit(Some(&der)).expect("master admitted");
        assert_eq!(
            (id.role, id.name.as_str()),
            (Some(Role::Master), "master-1")
        );
        let mut open = RoleGuard::new("drover.v1.Peer", &[Role::Master], false);
        assert!(tonic::service::Interceptor::call(&mut open, Request::new(())).is_ok());
    }
}
