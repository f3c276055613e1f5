//! Accepting TLS connections on a listener, for tonic (a stream of `TlsStream`s) and for axum
//! (a [`axum::serve::Listener`]).
//!
//! One accept task per listener; each handshake runs in its own task, bounded in number
//! (`HandshakeLimits::in_flight_max`) and in time (`handshake_timeout`), so a slow or hostile
//! client costs the listener nothing. A connection whose first byte is not a TLS handshake
//! record is plaintext: it is refused with one log line, and an HTTP/1 client is also told why in
//! a `400` answer (so `curl http://…` explains itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::tls::CertIdentity;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE_CAPACITY: usize = 128;
/// After a refused handshake: the most bytes, and the longest wait, spent draining the client.
const LINGER_BYTES_MAX: usize = 64 << 10;
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Bounds on connections still in their handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// A client must finish its handshake within this (first byte included).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; more connections wait in the kernel's backlog.
    pub in_flight_max: usize,
}

impl Default for HandshakeLimits {
    fn default() -> HandshakeLimits {
        HandshakeLimits {
            handshake_timeout: Duration::from_secs(10),
            in_flight_max: 1024,
        }
    }
}

/// What the listener is for, in its refusal lines (`"gRPC"`, `"HTTP"`, `"peer"`).
pub type ListenerName = &'static str;

/// Accepts on `listener` and hands over each connection once its TLS handshake succeeded.
/// The task ends when the receiver is dropped.
pub fn accept_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: HandshakeLimits,
    name: ListenerName,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE_CAPACITY);
    let acceptor = TlsAcceptor::from(config);
    let in_flight = Arc::new(Semaphore::new(limits.in_flight_max.max(1)));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(listener = name, error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = tokio::time::timeout(
                    limits.handshake_timeout,
                    handshake(&acceptor, stream, remote, name),
                )
                .await;
                match handshake {
                    Ok(Some(tls)) => {
                        let _ = tx.send((tls, remote)).await;
                    }
                    Ok(None) => {}
                    Err(_) => debug!(
                        listener = name,
                        %remote,
                        timeout = ?limits.handshake_timeout,
                        "TLS handshake not finished in time; connection closed"
                    ),
                }
            });
        }
    });
    rx
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    name: ListenerName,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 16];
    let n = match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return None,
        Ok(n) => n,
    };
    if first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plaintext(stream, remote, name, &first[..n]).await;
        return None;
    }
    match acceptor.accept(stream).into_fallible().await {
        Ok(tls) => Some(tls),
        Err((e, stream)) => {
            warn!(listener = name, %remote, "TLS handshake refused: {}", handshake_reason(&e));
            linger(stream).await;
            None
        }
    }
}

/// Closes a refused connection so that the client reads the TLS alert we sent. In TLS 1.3 a
/// client sends its first request before the server has checked its certificate; closing with
/// that request unread makes the kernel answer with a reset, which can destroy the alert in
/// flight (the client then sees "broken pipe" instead of why). So: FIN, then read and discard
/// what the client still sends, bounded in bytes and time.
async fn linger(mut stream: TcpStream) {
    use tokio::io::AsyncReadExt as _;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES_MAX;
    let drain = async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

/// Why a handshake failed, in words an operator can act on.
fn handshake_reason(e: &std::io::Error) -> String {
    let inner = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::NoCertificatesPresented) => {
            "the client presented no certificate, and this port requires one".into()
        }
        Some(rustls::Error::InvalidCertificate(why)) => {
            format!(
                "the client's certificate is not accepted: {why:?} (is it signed by this cluster's CA?)"
            )
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

async fn refuse_plaintext(
    mut stream: TcpStream,
    remote: SocketAddr,
    name: ListenerName,
    first: &[u8],
) {
    warn!(
        listener = name,
        %remote,
        "plaintext connection refused: this port requires TLS"
    );
    let http1 = [
        &b"GET "[..],
        b"POST",
        b"PUT ",
        b"HEAD",
        b"DELE",
        b"OPTI",
        b"PATC",
    ]
    .iter()
    .any(|m| first.starts_with(m));
    if first.starts_with(b"PRI * HTTP/2.0") {
        // A plaintext HTTP/2 (gRPC) client: our SETTINGS, then GOAWAY with
        // INADEQUATE_SECURITY and the reason as debug data, so its error says "insufficient
        // security" instead of "connection closed".
        let debug = b"this port requires TLS";
        let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        let len = (8 + debug.len()) as u32;
        frames.extend_from_slice(&len.to_be_bytes()[1..]);
        frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
        frames.extend_from_slice(&0u32.to_be_bytes());
        frames.extend_from_slice(&0xcu32.to_be_bytes());
        frames.extend_from_slice(debug);
        let _ = stream.write_all(&frames).await;
    } else if http1 {
        let body = "this port requires TLS: use https:// and the cluster's CA (--cacert)\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// A gRPC listener's incoming TLS connections for tonic: `accept_tls` with this process's
/// certificate, client certificates optional (each service's `RoleGuard` decides), ALPN h2.
pub fn grpc_incoming(
    listener: TcpListener,
    tls: &crate::tls::TlsConfig,
    name: ListenerName,
) -> Result<
    impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>>,
    crate::tls::TlsError,
> {
    let config = tls.server_config(false, &[crate::tls::ALPN_H2])?;
    Ok(tonic_incoming(accept_tls(
        listener,
        config,
        HandshakeLimits::default(),
        name,
    )))
}

/// A tonic incoming stream over `accept_tls`.
pub fn tonic_incoming(
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
) -> impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(stream, _)| Ok(stream))
}

/// Who called, as the HTTP side sees it: the address and, over TLS, the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCaller {
    pub remote: SocketAddr,
    /// `None` over plaintext (`--insecure`) or when the client sent no certificate.
    pub cert: Option<CertIdentity>,
    pub tls: bool,
}

/// An axum listener over `accept_tls`.
pub struct TlsHttpListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsHttpListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        limits: HandshakeLimits,
    ) -> std::io::Result<TlsHttpListener> {
        let local = listener.local_addr()?;
        Ok(TlsHttpListener {
            rx: accept_tls(listener, config, limits, "HTTP"),
            local,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsHttpListener>>
    for HttpCaller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsHttpListener>) -> HttpCaller {
        stream.remote_addr().clone()
    }
}

impl axum::serve::Listener for TlsHttpListener {
    type Io = TlsStream<TcpStream>;
    type Addr = HttpCaller;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some((stream, remote)) => {
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| CertIdentity::of(der).ok());
                    return (
                        stream,
                        HttpCaller {
                            remote,
                            cert,
                            tls: true,
                        },
                    );
                }
                // The accept task only ends when this receiver is gone.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(HttpCaller {
            remote: self.local,
            cert: None,
            tls: true,
        })
    }
}
