//! How a client reaches one master: the tonic `Endpoint` and `Channel` for an address, with the
//! connect timeout, the per-call deadline and HTTP/2 keepalive. [`Transport::endpoint`] is the
//! one place every master connection is built, so TLS is added there; the bearer token rides on
//! every call through the [`Credentials`] interceptor of a [`MasterChannel`].

use std::time::Duration;

use drover_security::{Role, Secret, TlsConfig};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A channel to a master whose every call carries the transport's bearer token (if any).
pub type MasterChannel = InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer SECRET` to each request. `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct Credentials {
    authorization: Option<AsciiMetadataValue>,
}

impl Credentials {
    /// Sends `token` on every call; `None` sends nothing.
    pub fn new(token: Option<&Secret>) -> Credentials {
        Credentials {
            // A Secret is URL-safe base64, always a valid header value.
            authorization: token.and_then(|t| {
                let mut v: AsciiMetadataValue = MetadataValue::try_from(t.bearer_value()).ok()?;
                v.set_sensitive(true);
                Some(v)
            }),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.authorization {
            Some(_) => "Credentials(bearer <redacted>)",
            None => "Credentials(none)",
        })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.authorization {
            request
                .metadata_mut()
                .insert(drover_security::bearer::AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

/// HTTP/2 keepalive pings, so a dead master is noticed on an idle long-lived stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    /// A ping unanswered for this long closes the connection.
    pub timeout: Duration,
}

/// Connection settings shared by every call to the masters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// Deadline of opening the TCP/HTTP2 connection to one master.
    pub connect_timeout: Duration,
    /// Deadline of one attempt once connected (the call, or a stream's first answer).
    pub call_timeout: Duration,
    /// `None`: no pings (short-lived callers).
    pub keepalive: Option<Keepalive>,
    /// `None`: plaintext. Otherwise servers are verified against its CA under their role's
    /// name (`master.drover`), and its certificate, if any, is presented.
    pub tls: Option<TlsConfig>,
    /// The ACL token sent on every call to a master (never to an agent). `Debug` redacts it.
    pub token: Option<Secret>,
}

/// Why a connection to one master could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("{addr}: bad address: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("{addr}: no connection within {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("{addr}: {reason}")]
    Connect { addr: String, reason: String },
}

impl TransportError {
    /// The failure without the address, for callers that key their reports by address.
    pub fn reason(&self) -> String {
        match self {
            TransportError::BadAddress { reason, .. } => format!("bad address: {reason}"),
            TransportError::ConnectTimeout { timeout, .. } => {
                format!("no connection within {timeout:?}")
            }
            TransportError::Connect { reason, .. } => reason.clone(),
        }
    }
}

impl Transport {
    /// Plaintext, for callers (tests, benches) that set the rest themselves.
    pub fn plaintext(connect_timeout: Duration, call_timeout: Duration) -> Transport {
        Transport {
            connect_timeout,
            call_timeout,
            keepalive: None,
            tls: None,
            token: None,
        }
    }

    /// What each call to a master carries: the bearer token.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.token.as_ref())
    }

    /// `channel` (to a master) with this transport's credentials on every call.
    pub fn with_credentials(&self, channel: Channel) -> MasterChannel {
        InterceptedService::new(channel, self.credentials())
    }

    /// The endpoint for the master at `addr` (`HOST:PORT`).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TransportError> {
        self.endpoint_for(addr, Role::Master)
    }

    /// The endpoint for a server of `role` (a master, or an agent's file API) at `addr`.
    pub fn endpoint_for(&self, addr: &str, role: Role) -> Result<Endpoint, TransportError> {
        let bad = |reason: String| TransportError::BadAddress {
            addr: addr.to_string(),
            reason,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad(error_reason(&e)))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.tonic_client(role))
                .map_err(|e| bad(format!("TLS: {}", error_reason(&e))))?;
        }
        Ok(match self.keepalive {
            Some(k) => endpoint
                .http2_keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(true),
            None => endpoint,
        })
    }

    /// Connects to the master at `addr` within the connect timeout; calls carry the token.
    pub async fn connect(&self, addr: &str) -> Result<MasterChannel, TransportError> {
        let channel = self.connect_to(addr, Role::Master).await?;
        Ok(self.with_credentials(channel))
    }

    /// A channel to the master at `addr` that connects on first use (and reconnects after a
    /// failure); calls carry the token.
    pub fn connect_lazy(&self, addr: &str) -> Result<MasterChannel, TransportError> {
        Ok(self.with_credentials(self.endpoint(addr)?.connect_lazy()))
    }

    /// Connects to the server of `role` at `addr` within the connect timeout. The channel
    /// carries no token: a master's token is not an agent's business.
    pub async fn connect_to(&self, addr: &str, role: Role) -> Result<Channel, TransportError> {
        let endpoint = self.endpoint_for(addr, role)?;
        tokio::time::timeout(self.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                addr: addr.to_string(),
                timeout: self.connect_timeout,
            })?
            .map_err(|e| TransportError::Connect {
                addr: addr.to_string(),
                reason: error_reason(&e),
            })
    }
}

/// A one-phrase reason for a transport failure: the innermost I/O error where there is one
/// ("connection refused"), else the innermost message.
pub fn error_reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return tls_reason(tls);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return tls_reason(tls);
            }
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string(),
            };
        }
        match current.source() {
            Some(next) => current = next,
            None => return current.to_string(),
        }
    }
}

/// One line for a failed call: the status message and its deepest cause ("Connection refused
/// (os error 111)"), or for a TLS failure anywhere in the chain the words of [`error_reason`].
pub fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    let mut cause = status.source();
    let mut deepest = None;
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<rustls::Error>())
        }) {
            deepest = Some(tls_reason(tls));
            break;
        }
        deepest = Some(c.to_string());
        cause = c.source();
    }
    // Some layers (h2 after the handshake) keep a TLS alert only as text.
    let deepest = deepest.map(|d| match d.strip_prefix("received fatal alert: ") {
        Some(alert) => format!(
            "the server refused the TLS session ({alert}): is --tls-cert (DROVER_TLS_CERT) signed by this cluster's CA?"
        ),
        None => d,
    });
    if let Some(d) = deepest
        && !text.contains(&d)
    {
        text = format!("{text}: {d}");
    }
    text.replace('\n', " ")
}

/// A TLS failure in words that say which side to fix.
fn tls_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(why) => format!(
            "the server's certificate is not trusted ({why:?}): is --tls-ca (DROVER_TLS_CA) this cluster's CA?"
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "the server refused the TLS handshake ({alert:?}): is --tls-cert (DROVER_TLS_CERT) signed by this cluster's CA?"
        ),
        other => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport() -> Transport {
        Transport {
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
            keepalive: None,
            tls: None,
            token: None,
        }
    }

    #[test]
    fn credentials_add_the_bearer_header_and_never_print_it() {
        // Proves every call through the interceptor carries `authorization: Bearer SECRET`,
        // none without a token, and Debug of the transport hides the secret.
        use tonic::service::Interceptor as _;
        let secret = Secret::generate();
        let mut t = transport();
        let none = t.credentials().call(tonic::Request::new(())).expect("ok");
        assert!(none.metadata().get("authorization").is_none());
        t.token = Some(secret.clone());
        let req = t.credentials().call(tonic::Request::new(())).expect("ok");
        assert_eq!(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some(secret.bearer_value().as_str())
        );
        let shown = format!("{t:?} {:?}", t.credentials());
        assert!(!shown.contains(secret.expose()), "{shown}");
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_and_names_the_address() {
        // Proves connect fails (not hangs) on a port nobody listens on, naming address and cause.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let err = transport()
            .connect(&addr)
            .await
            .expect_err("nobody listens");
        assert_eq!(
            err,
            TransportError::Connect {
                addr: addr.clone(),
                reason: "connection refused".into()
            }
        );
        assert_eq!(err.to_string(), format!("{addr}: connection refused"));
        assert_eq!(err.reason(), "connection refused");
    }

    #[tokio::test]
    async fn a_listening_master_is_reached() {
        // Proves connect succeeds against a real listener speaking HTTP/2 (a tonic server).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(incoming),
        );
        let mut t = transport();
        t.keepalive = Some(Keepalive {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        });
        t.connect(&addr).await.expect("connects");
        server.abort();
    }
}
