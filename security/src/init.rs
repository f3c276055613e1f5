//! `drover tls init`: a CA and role certificates for a small cluster (rcgen).
//!
//! Layout of the directory: `ca.pem` and `ca-key.pem`; `master-N.pem` / `master-N-key.pem` for
//! each master (N from 1, in `--masters` order, matching `drover master --id N`); `agent-N…`;
//! `operator…` (the CLI) and `framework…` (framework schedulers). A CA already in the directory
//! is reused and existing certificates are kept, so running it again with `--agents 10` after
//! `--agents 3` adds agents 4 to 10. Keys are written with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::tls::Role;

/// The most certificates of one kind `init` writes in one go.
pub const CERTS_PER_KIND_MAX: usize = 1000;
/// Longest validity `init` issues, in days.
pub const DAYS_MAX: u32 = 3650;
/// The CA's validity, in days.
const CA_DAYS: i64 = 3650;

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitPlan {
    /// Host names or IP addresses of the masters, in id order; each goes into that master's
    /// certificate (with `localhost` and `127.0.0.1`) beside `master.drover`.
    pub masters: Vec<String>,
    pub agents: usize,
    /// Validity of the role certificates.
    pub days: u32,
}

/// One certificate and key in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub name: String,
    pub role: Option<Role>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// False: it was already there and was kept.
    pub new: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Plan(String),
    #[error("{}: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot issue {name}: {source}")]
    Issue {
        name: String,
        #[source]
        source: rcgen::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl InitPlan {
    fn validate(&self) -> Result<(), InitError> {
        if self.masters.is_empty() {
            return Err(InitError::Plan(
                "--masters names no master (give their hosts, e.g. --masters 10.0.0.1,10.0.0.2,10.0.0.3)".into(),
            ));
        }
        if self.masters.len() > 255 {
            return Err(InitError::Plan(format!(
                "--masters names {} masters; master ids go up to 255",
                self.masters.len()
            )));
        }
        if let Some(bad) = self
            .masters
            .iter()
            .find(|h| h.trim().is_empty() || h.contains([' ', '/', ':']))
        {
            return Err(InitError::Plan(format!(
                "--masters entry {bad:?} is not a host name or IPv4 address"
            )));
        }
        if self.agents > CERTS_PER_KIND_MAX {
            return Err(InitError::Plan(format!(
                "--agents {} is over the limit of {CERTS_PER_KIND_MAX}",
                self.agents
            )));
        }
        if self.days == 0 || self.days > DAYS_MAX {
            return Err(InitError::Plan(format!(
                "--days {} is out of range 1..={DAYS_MAX}",
                self.days
            )));
        }
        Ok(())
    }
}

/// Writes the CA (unless there) and every certificate of `plan` not yet in `dir`.
pub fn init(dir: &Path, plan: &InitPlan) -> Result<Vec<Issued>, InitError> {
    plan.validate()?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let mut out = Vec::new();
    let (issuer, ca_new) = if ca_cert.exists() || ca_key.exists() {
        (load_ca(&ca_cert, &ca_key)?, false)
    } else {
        let key = KeyPair::generate().map_err(|source| InitError::Issue {
            name: "the CA".into(),
            source,
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Drover cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CA_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(|source| InitError::Issue {
                name: "the CA".into(),
                source,
            })?;
        write_new(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&ca_cert, cert.pem().as_bytes(), 0o644)?;
        (Issuer::new(params, key), true)
    };
    out.push(Issued {
        name: "ca".into(),
        role: None,
        cert: ca_cert,
        key: ca_key,
        new: ca_new,
    });
    let mut wanted: Vec<(String, Role, Vec<String>)> = Vec::new();
    for (i, host) in plan.masters.iter().enumerate() {
        let mut names = vec![
            Role::Master.server_name().to_string(),
            host.trim().to_string(),
        ];
        names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
        names.dedup();
        wanted.push((format!("master-{}", i + 1), Role::Master, names));
    }
    for i in 1..=plan.agents {
        wanted.push((
            format!("agent-{i}"),
            Role::Agent,
            vec![
                Role::Agent.server_name().into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
        ));
    }
    wanted.push((
        "operator".into(),
        Role::Operator,
        vec![Role::Operator.server_name().into()],
    ));
    wanted.push((
        "framework".into(),
        Role::Framework,
        vec![Role::Framework.server_name().into()],
    ));
    for (name, role, sans) in wanted {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        let new = !(cert.exists() && key.exists());
        if new {
            issue(&issuer, &name, role, sans, plan.days, &cert, &key)?;
        }
        out.push(Issued {
            name,
            role: Some(role),
            cert,
            key,
            new,
        });
    }
    Ok(out)
}

fn load_ca(cert: &Path, key: &Path) -> Result<Issuer<'static, KeyPair>, InitError> {
    let cert_pem = std::fs::read_to_string(cert).map_err(io(cert))?;
    let key_pem = std::fs::read_to_string(key).map_err(io(key))?;
    let key_pair = KeyPair::from_pem(&key_pem).map_err(|e| InitError::BadCa {
        path: key.to_path_buf(),
        reason: format!("not a usable CA key: {e}"),
    })?;
    Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|e| InitError::BadCa {
        path: cert.to_path_buf(),
        reason: format!("not a usable CA certificate: {e}"),
    })
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    role: Role,
    sans: Vec<String>,
    days: u32,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), InitError> {
    let err = |source| InitError::Issue {
        name: name.to_string(),
        source,
    };
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(sans).map_err(err)?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        // Masters and agents serve and also call (peer links, the master link).
        Role::Master | Role::Agent => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Operator | Role::Framework => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Writes a file that must not exist yet (never overwrites a key), and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InitError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertIdentity, TlsConfig};

    fn plan(agents: usize) -> InitPlan {
        InitPlan {
            masters: vec!["127.0.0.1".into(), "10.0.0.2".into()],
            agents,
            days: 30,
        }
    }

    #[test]
    fn init_writes_role_certificates_that_load_and_a_rerun_only_adds() {
        // Proves the files load as TLS configs with the right roles, keys are private, and a
        // second run reuses the CA and keeps existing certificates.
        let dir = tempfile::tempdir().expect("tempdir");
        let first = init(dir.path(), &plan(1)).expect("init");
        let names: Vec<&str> = first.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ca",
                "master-1",
                "master-2",
                "agent-1",
                "operator",
                "framework"
            ]
        );
        assert!(first.iter().all(|i| i.new));
        use std::os::unix::fs::PermissionsExt as _;
        for issued in &first {
            let mode = std::fs::metadata(&issued.key)
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", issued.key.display());
        }
        for (issued, role) in first[1..].iter().zip([
            Role::Master,
            Role::Master,
            Role::Agent,
            Role::Operator,
            Role::Framework,
        ]) {
            let config = TlsConfig::load(&first[0].cert, Some(&issued.cert), Some(&issued.key))
                .expect("loads");
            assert_eq!(
                config.identity(),
                Some(&CertIdentity {
                    role: Some(role),
                    name: issued.name.clone()
                })
            );
        }
        let ca_before = std::fs::read(&first[0].cert).expect("ca");
        let agent1_before = std::fs::read(&first[3].cert).expect("agent-1");
        let second = init(dir.path(), &plan(2)).expect("rerun");
        let new: Vec<&str> = second
            .iter()
            .filter(|i| i.new)
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(new, ["agent-2"]);
        assert_eq!(std::fs::read(&second[0].cert).expect("ca"), ca_before);
        assert_eq!(
            std::fs::read(&second[3].cert).expect("agent-1"),
            agent1_before
        );
        // agent-2 is signed by the same CA: it loads against it.
        let agent2 = second
            .iter()
            .find(|i| i.name == "agent-2")
            .expect("agent-2");
        TlsConfig::load(&second[0].cert, Some(&agent2.cert), Some(&agent2.key)).expect("same CA");
    }

    #[test]
    fn bad_plans_and_mismatched_files_are_named() {
        // Proves each bad input gets its own message naming the flag or file.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = plan(1);
        p.masters.clear();
        assert!(
            init(dir.path(), &p)
                .expect_err("no masters")
                .to_string()
                .contains("--masters")
        );
        let mut p = plan(1);
        p.days = 0;
        assert!(
            init(dir.path(), &p)
                .expect_err("days")
                .to_string()
                .contains("--days 0")
        );
        let mut p = plan(1);
        p.masters = vec!["a b".into()];
        assert!(
            init(dir.path(), &p)
                .expect_err("host")
                .to_string()
                .contains("\"a b\"")
        );
        let issued = init(dir.path(), &plan(1)).expect("init");
        let err = TlsConfig::load(&issued[0].cert, Some(&issued[1].cert), Some(&issued[3].key))
            .expect_err("wrong key");
        assert!(
            err.to_string()
                .contains("does not belong to the certificate"),
            "{err}"
        );
        let err = TlsConfig::load(&issued[1].key, None, None).expect_err("key as CA");
        assert!(err.to_string().starts_with("--tls-ca "), "{err}");
        let config = TlsConfig::load(&issued[0].cert, Some(&issued[3].cert), Some(&issued[3].key))
            .expect("agent");
        let err = config
            .require_role(Role::Master)
            .expect_err("agent is no master");
        assert!(
            err.to_string()
                .contains("is a certificate agent-1 (role agent), not a master certificate"),
            "{err}"
        );
    }
}
