//! Certificates, keys and the rustls configurations built from them.
//!
//! Every Drover certificate carries its **role** as a DNS name in its subject alternative names:
//! `master.drover`, `agent.drover`, `operator.drover` or `framework.drover` (the way Nomad's
//! certificates say `server.global.nomad`). A client connecting to a master verifies the name
//! `master.drover`, so an agent's certificate cannot pose as a master whatever address it is
//! served on; a server reads the role of a client's certificate to decide what it may call
//! ([`crate::guard`]). The common name says which one (`master-2`, `agent-7`, `operator`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS suffix of role names: `master.drover`.
pub const ROLE_DOMAIN: &str = "drover";

/// ALPN of gRPC listeners (HTTP/2 only).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the HTTP side (dashboard, `/api/v1`, `/metrics`): HTTP/2 or HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of the masters' raw peer links.
pub const ALPN_PEER: &[u8] = b"drover-peer/1";

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A master: the peer port, coord, the scheduler and operator sides of other masters.
    Master,
    /// An agent: registers with the masters and serves its file API.
    Agent,
    /// A person or tool running `drover` commands.
    Operator,
    /// A framework scheduler.
    Framework,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Master, Role::Agent, Role::Operator, Role::Framework];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Framework => "framework",
        }
    }

    /// The DNS name a certificate of this role carries, and that clients verify servers by.
    pub fn server_name(self) -> &'static str {
        match self {
            Role::Master => "master.drover",
            Role::Agent => "agent.drover",
            Role::Operator => "operator.drover",
            Role::Framework => "framework.drover",
        }
    }

    fn from_dns_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.server_name() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// `None`: signed by the CA but with no Drover role name (it may not call anything that
    /// needs a role).
    pub role: Option<Role>,
    /// The subject's common name (`master-2`); empty when it has none.
    pub name: String,
}

impl CertIdentity {
    /// Reads role and name from a DER certificate (already verified by rustls).
    pub fn of(der: &CertificateDer<'_>) -> Result<CertIdentity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut role = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for general in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = general
                    && let Some(r) = Role::from_dns_name(dns)
                {
                    if role.is_some_and(|seen| seen != r) {
                        // Two roles in one certificate: honour neither rather than guess.
                        return Err(format!("certificate {name:?} names more than one role"));
                    }
                    role = Some(r);
                }
            }
        }
        Ok(CertIdentity { role, name })
    }

    /// `agent-1 (role agent)`, for refusals.
    pub fn describe(&self) -> String {
        let name = if self.name.is_empty() {
            "without a common name"
        } else {
            &self.name
        };
        match self.role {
            Some(role) => format!("certificate {name} (role {role})"),
            None => format!("certificate {name} (no Drover role)"),
        }
    }
}

/// Why TLS material could not be loaded or used. Each names the file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: {reason}", path.display())]
    Bad {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Incomplete(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A process's TLS material, loaded and checked: the CA it trusts and, for servers and clients
/// with a certificate, its own chain and key. The PEM bytes are kept for tonic's client config.
#[derive(Clone)]
pub struct TlsConfig {
    ca_path: PathBuf,
    ca_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    own: Option<OwnCert>,
}

#[derive(Clone)]
struct OwnCert {
    cert_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    identity: CertIdentity,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca_path)
            .field("cert", &self.own.as_ref().map(|o| &o.cert_path))
            .field("identity", &self.own.as_ref().map(|o| &o.identity))
            .finish()
    }
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &TlsConfig) -> bool {
        self.ca_pem == other.ca_pem
            && self.own.as_ref().map(|o| (&o.cert_pem, &o.key_pem))
                == other.own.as_ref().map(|o| (&o.cert_pem, &o.key_pem))
    }
}

impl Eq for TlsConfig {}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn bad(flag: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Bad {
        flag,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn certs(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(flag, path, "holds no certificate"));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Loads `ca` (required) and, when given, `cert` with its `key` (both or neither).
    pub fn load(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<TlsConfig, TlsError> {
        let ca_pem = read("--tls-ca", ca)?;
        let mut roots = RootCertStore::empty();
        for der in certs("--tls-ca", ca, &ca_pem)? {
            roots
                .add(der)
                .map_err(|e| bad("--tls-ca", ca, format!("not a usable CA certificate: {e}")))?;
        }
        let own = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::Incomplete(
                    "--tls-cert is given without --tls-key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete(
                    "--tls-key is given without --tls-cert".into(),
                ));
            }
            (Some(cert), Some(key)) => {
                let cert_pem = read("--tls-cert", cert)?;
                let key_pem = read("--tls-key", key)?;
                let chain = certs("--tls-cert", cert, &cert_pem)?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| bad("--tls-key", key, format!("not a PEM private key: {e}")))?;
                let identity =
                    CertIdentity::of(&chain[0]).map_err(|e| bad("--tls-cert", cert, e))?;
                // Catch a certificate paired with the wrong key now, not at the first handshake.
                let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
                    .map_err(|e| bad("--tls-key", key, format!("unsupported key: {e}")))?;
                rustls::sign::CertifiedKey::new(chain.clone(), signer)
                    .keys_match()
                    .map_err(|_| {
                        bad(
                            "--tls-key",
                            key,
                            format!("does not belong to the certificate in {}", cert.display()),
                        )
                    })?;
                Some(OwnCert {
                    cert_path: cert.to_path_buf(),
                    cert_pem,
                    key_pem,
                    chain,
                    key: Arc::new(key_der),
                    identity,
                })
            }
        };
        Ok(TlsConfig {
            ca_path: ca.to_path_buf(),
            ca_pem,
            roots: Arc::new(roots),
            own,
        })
    }

    /// Who this process's certificate says it is; `None` without one.
    pub fn identity(&self) -> Option<&CertIdentity> {
        self.own.as_ref().map(|o| &o.identity)
    }

    /// Fails unless this process holds a certificate of `role` (a master must not run on an
    /// agent's certificate).
    pub fn require_role(&self, role: Role) -> Result<(), TlsError> {
        match &self.own {
            None => Err(TlsError::Incomplete(format!(
                "a {role} needs its own certificate: give --tls-cert and --tls-key"
            ))),
            Some(own) if own.identity.role == Some(role) => Ok(()),
            Some(own) => Err(bad(
                "--tls-cert",
                &own.cert_path,
                format!(
                    "is a {}, not a {role} certificate (its names must include {})",
                    own.identity.describe(),
                    role.server_name()
                ),
            )),
        }
    }

    /// ring, as tonic's `tls-ring` client: one crypto library, no C toolchain beyond cc.
    /// (rustls deprecates it for lacking post-quantum key exchange; moving both to aws-lc-rs
    /// is the way to get that.)
    #[allow(
        deprecated,
        reason = "ring has no post-quantum key exchange; see above"
    )]
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server config presenting this process's certificate. Client certificates are checked
    /// against the CA; `client_cert_required` refuses clients without one at the handshake.
    pub fn server_config(
        &self,
        client_cert_required: bool,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let own = self.own.as_ref().ok_or_else(|| {
            TlsError::Incomplete("a TLS listener needs --tls-cert and --tls-key".into())
        })?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), Self::provider());
        let verifier = if client_cert_required {
            verifier.build()?
        } else {
            verifier.allow_unauthenticated().build()?
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(own.chain.clone(), own.key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A rustls client config (for the raw peer links) presenting this process's certificate
    /// when it has one.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.own {
            Some(own) => builder.with_client_auth_cert(own.chain.clone(), own.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// tonic's client config for a server of `role`: verified against the CA under the name
    /// `role.server_name()`, presenting this process's certificate when it has one.
    pub fn tonic_client(&self, role: Role) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(role.server_name());
        match &self.own {
            Some(own) => config.identity(tonic::transport::Identity::from_pem(
                &own.cert_pem,
                &own.key_pem,
            )),
            None => config,
        }
    }

    /// The CA file, for messages and for processes a dev cluster starts.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }
}
