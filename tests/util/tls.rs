//! TLS helpers for tests on real processes: certificates from the real `drover tls init`, loaded
//! as a process would load them, and one HTTP/1.1 GET over TLS (optionally with a bearer token).

use std::path::Path;
use std::process::Command;

use drover_security::{Role, TlsConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// `drover tls init DIR --masters 127.0.0.1,… --agents 1`; panics with its output on failure.
pub fn tls_init(dir: &Path, masters: usize) {
    let hosts = vec!["127.0.0.1"; masters].join(",");
    let out = Command::new(super::drover_bin())
        .args(["tls", "init"])
        .arg(dir)
        .args(["--masters", &hosts, "--agents", "1"])
        .output()
        .expect("run drover tls init");
    assert!(out.status.success(), "{}", super::stderr(&out));
}

/// The CA of `certs` with the certificate and key `name` (`operator`, `agent-1`, …).
pub fn tls_config(certs: &Path, name: &str) -> TlsConfig {
    TlsConfig::load(
        &certs.join("ca.pem"),
        Some(&certs.join(format!("{name}.pem"))),
        Some(&certs.join(format!("{name}-key.pem"))),
    )
    .expect("load certificates")
}

/// One HTTP/1.1 GET over TLS as `client` (verifying the master as `master.drover`), with a
/// bearer header when `bearer` is given: the status code and body.
pub async fn https_get(
    addr: &str,
    path: &str,
    client: &TlsConfig,
    bearer: Option<&str>,
) -> (u16, String) {
    let config = client
        .client_config(&[drover_security::ALPN_HTTP1])
        .expect("client config");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(Role::Master.server_name()).expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let auth = bearer.map_or(String::new(), |b| format!("authorization: Bearer {b}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}
