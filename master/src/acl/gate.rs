//! The gate in front of the master's gRPC services and its HTTP side: who is calling
//! (`Caller`), and whether the method's rule (`authz::rpc_need`) lets them.
//!
//! With `--acl` off every caller is `Caller::Open`. With it on:
//! - a master certificate passes (masters are authenticated by certificate, need no token);
//! - a method without a rule is refused (`PERMISSION_DENIED`): default deny;
//! - otherwise the bearer token must be valid (`UNAUTHENTICATED` naming what is wrong: none,
//!   malformed, unknown/revoked, expired) and hold what the method needs (`PERMISSION_DENIED`
//!   naming the principal and the missing capability);
//! - before the first read of the store nothing is decided: `UNAVAILABLE`, retry.
//!
//! Each refusal writes an audit line. Admitted requests carry their `Caller` in the request
//! extensions; a `Coord.Session` also carries a `SessionGate` (the token's coord grants and its
//! revocation future).

use super::audit::{self, Outcome};
use super::authz::{AclView, AuthError, Grants, Need, Principal, rpc_need};
use super::now_unix_ms;
use super::policy::{Capability, CoordAccess};
use drover_coord::driver::{EndedFuture, SessionGate};
use drover_coord::grants::{Access, PathGrants};
use drover_security::{CertIdentity, Role};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tonic::Status;
use tonic::codegen::http;

/// Who a request comes from, as the gate decided. In every admitted request's extensions.
#[derive(Clone, Debug)]
pub enum Caller {
    /// ACLs are off, or the method needs no token (`AclApi.Bootstrap`).
    Open,
    /// A master's certificate (its name).
    Master(String),
    Token(Arc<Principal>),
}

impl Caller {
    /// How the audit log names the caller.
    pub fn describe(&self) -> String {
        match self {
            Caller::Open => "anonymous".into(),
            Caller::Master(name) => format!("master certificate {name}"),
            Caller::Token(p) => p.describe(),
        }
    }

    pub fn principal(&self) -> Option<&Arc<Principal>> {
        match self {
            Caller::Token(p) => Some(p),
            _ => None,
        }
    }
}

/// A refusal, for gRPC and HTTP alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The store is not read yet.
    Unavailable(String),
    Unauthenticated(String),
    Denied(String),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::Unavailable(m) => Status::unavailable(m),
            Refusal::Unauthenticated(m) => Status::unauthenticated(m),
            Refusal::Denied(m) => Status::permission_denied(m),
        }
    }
}

impl Refusal {
    pub fn http_status(&self) -> axum::http::StatusCode {
        match self {
            Refusal::Unavailable(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unauthenticated(_) => axum::http::StatusCode::UNAUTHORIZED,
            Refusal::Denied(_) => axum::http::StatusCode::FORBIDDEN,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::Unavailable(m) | Refusal::Unauthenticated(m) | Refusal::Denied(m) => m,
        }
    }
}

/// The ACL decisions of one master, over its cached view of the store. Cheap to clone.
#[derive(Clone)]
pub struct AclGate {
    enforce: bool,
    view: watch::Receiver<Arc<AclView>>,
}

impl AclGate {
    pub fn new(enforce: bool, view: watch::Receiver<Arc<AclView>>) -> AclGate {
        AclGate { enforce, view }
    }

    /// `--acl`: whether anything is checked.
    pub fn enforced(&self) -> bool {
        self.enforce
    }

    pub fn view(&self) -> Arc<AclView> {
        self.view.borrow().clone()
    }

    /// The principal of the bearer token in `headers` (gRPC metadata are HTTP/2 headers).
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Arc<Principal>, Refusal> {
        let view = self.view();
        if !view.loaded {
            return Err(Refusal::Unavailable(
                "this master has not read the ACL store yet; retry shortly".into(),
            ));
        }
        let secret = drover_security::bearer::from_headers(headers)
            .map_err(|e| AuthError::Malformed(e.to_string()))
            .and_then(|s| s.ok_or(AuthError::Missing))
            .map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        view.authenticate(&secret.sha256(), now_unix_ms())
            .map(Arc::new)
            .map_err(|e| Refusal::Unauthenticated(e.to_string()))
    }

    /// The whole decision for the gRPC method `path`, with the caller's certificate.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        cert: Option<&CertIdentity>,
    ) -> Result<(Caller, Option<SessionGate>), Refusal> {
        if !self.enforce {
            return Ok((Caller::Open, None));
        }
        if let Some(c) = cert
            && c.role == Some(Role::Master)
        {
            return Ok((Caller::Master(c.name.clone()), None));
        }
        let refuse = |r: Refusal, who: &str, action: &str| {
            let outcome = match r {
                Refusal::Denied(_) => Outcome::Denied,
                Refusal::Unauthenticated(_) => Outcome::Unauthenticated,
                // Not a decision about the caller.
                Refusal::Unavailable(_) => return r,
            };
            audit::record(who, action, path, outcome, Some(r.message()));
            r
        };
        let Some(need) = rpc_need(path) else {
            let r = Refusal::Denied(format!(
                "{path}: no ACL rule allows this method; refused by default"
            ));
            return Err(refuse(r, "unknown", "call"));
        };
        if need == Need::Nothing {
            return Ok((Caller::Open, None));
        }
        let principal = self
            .authenticate(headers)
            .map_err(|r| refuse(r, "unauthenticated", need_name(need)))?;
        let allowed = match need {
            Need::Nothing | Need::CoordSession => Ok(()),
            Need::Capability(c) => principal.require(c),
            Need::Framework => principal.require_framework(),
        };
        if let Err(d) = allowed {
            return Err(refuse(
                Refusal::Denied(d.0),
                &principal.describe(),
                need_name(need),
            ));
        }
        let session = (need == Need::CoordSession).then(|| SessionGate {
            grants: Some(Arc::new(path_grants(&principal))),
            ended: {
                let gate = self.clone();
                let accessor = principal.accessor;
                let grants = principal.grants.clone();
                // Called twice per stream (its reader and its writer): audited once, by the
                // writer, which is what ends the stream for the client.
                let calls = Arc::new(std::sync::atomic::AtomicBool::new(false));
                Arc::new(move || -> EndedFuture {
                    let audit = calls.swap(true, std::sync::atomic::Ordering::Relaxed);
                    Box::pin(
                        gate.clone()
                            .ended_with(accessor, Some(grants.clone()), audit),
                    )
                })
            },
        });
        Ok((Caller::Token(principal), session))
    }

    /// Resolves, with the reason, once the token `accessor` is revoked or expires (or, with
    /// `grants`, once its grants differ from those): what ends the streams opened with it.
    pub async fn ended(self, accessor: uuid::Uuid, grants: Option<Grants>) -> String {
        self.ended_with(accessor, grants, true).await
    }

    async fn ended_with(self, accessor: uuid::Uuid, grants: Option<Grants>, audit: bool) -> String {
        let mut view = self.view;
        loop {
            let current = view.borrow_and_update().clone();
            let principal = match current.principal(&accessor, now_unix_ms()) {
                Ok(p) => p,
                Err(e) => {
                    let reason = e.to_string();
                    if !audit {
                        return reason;
                    }
                    audit::record(
                        &format!("accessor {accessor}"),
                        "stream",
                        "open stream",
                        Outcome::Unauthenticated,
                        Some(&reason),
                    );
                    return reason;
                }
            };
            if let Some(g) = &grants
                && principal.grants != *g
            {
                return format!(
                    "the policies of {} changed; reconnect to get the new grants",
                    principal.describe()
                );
            }
            let expiry = principal
                .expires_unix_ms
                .map(|at| Duration::from_millis(at.saturating_sub(now_unix_ms()).max(1)));
            tokio::select! {
                changed = view.changed() => {
                    if changed.is_err() {
                        // The store's follower is gone: the process is stopping.
                        std::future::pending::<()>().await;
                    }
                }
                () = sleep_or_forever(expiry) => {}
            }
        }
    }

    /// `svc` behind this gate.
    pub fn wrap<S>(&self, svc: S) -> Gated<S> {
        Gated {
            inner: svc,
            gate: self.clone(),
        }
    }
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn need_name(need: Need) -> &'static str {
    match need {
        Need::Nothing => "none",
        Need::Capability(c) => c.as_str(),
        Need::Framework => "framework",
        Need::CoordSession => "coord-session",
    }
}

/// The coord bounds of a token's sessions: its grants, never the masters' `/drover`.
pub fn path_grants(p: &Principal) -> PathGrants {
    PathGrants {
        principal: p.describe(),
        prefixes: p
            .coord_grants()
            .into_iter()
            .map(|(prefix, a)| {
                (
                    prefix,
                    match a {
                        CoordAccess::Read => Access::Read,
                        CoordAccess::Write => Access::Write,
                    },
                )
            })
            .collect(),
        reserved: vec![super::store::DROVER_ROOT.to_string()],
    }
}

/// The verified client certificate of a gRPC request: as the `RoleGuard` in front of the gate
/// already parsed it, else from tonic's TLS connect info.
fn grpc_cert<B>(request: &http::Request<B>) -> Option<CertIdentity> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if let Some(identity) = request.extensions().get::<CertIdentity>() {
        return Some(identity.clone());
    }
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    CertIdentity::of(certs.first()?).ok()
}

/// A gRPC service behind the gate (a tower wrapper: it sees the method path, which a tonic
/// interceptor does not).
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: AclGate,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Gated<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let cert = grpc_cert(&request);
        let path = request.uri().path().to_string();
        match self.gate.admit(&path, request.headers(), cert.as_ref()) {
            Ok((caller, session)) => {
                request.extensions_mut().insert(caller);
                if let Some(s) = session {
                    request.extensions_mut().insert(s);
                }
                Box::pin(self.inner.call(request))
            }
            Err(refusal) => {
                let status = Status::from(refusal);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// axum middleware for the HTTP side (dashboard, `/api/v1/*`, `/metrics`): with `--acl`, a
/// master certificate or a bearer token with `state-read`; 401, 403 or 503 with one line.
pub async fn http_gate(
    axum::extract::State(gate): axum::extract::State<AclGate>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if !gate.enforce {
        return next.run(request).await;
    }
    let cert = request
        .extensions()
        .get::<axum::extract::ConnectInfo<drover_security::HttpCaller>>()
        .and_then(|c| c.0.cert.clone());
    if cert.as_ref().is_some_and(|c| c.role == Some(Role::Master)) {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    let capability = Capability::StateRead;
    let decided = gate.authenticate(request.headers()).and_then(|p| {
        p.require(capability).map_err(|d| {
            audit::record(
                &p.describe(),
                capability.as_str(),
                &path,
                Outcome::Denied,
                Some(&d.0),
            );
            Refusal::Denied(d.0)
        })
    });
    match decided {
        Ok(()) => next.run(request).await,
        Err(r) => {
            if let Refusal::Unauthenticated(m) = &r {
                audit::record(
                    "unauthenticated",
                    capability.as_str(),
                    &path,
                    Outcome::Unauthenticated,
                    Some(m),
                );
            }
            (r.http_status(), format!("{}\n", r.message())).into_response()
        }
    }
}
