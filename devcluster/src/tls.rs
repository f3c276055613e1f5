//! A throwaway CA and certificates for a dev cluster or a bench ensemble (`drover tls init`'s
//! code), and the `--tls-*` flags each process it starts gets.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use drover_security::TlsConfig;
use drover_security::init::{InitPlan, init};

/// Validity of a throwaway certificate.
const THROWAWAY_DAYS: u32 = 30;

/// The certificates of one dev cluster.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub dir: PathBuf,
    /// The operator's material: what `drover local` prints as `export` lines, and what the
    /// harness itself uses to ask the masters.
    pub operator: TlsConfig,
}

/// Writes (or reuses, in `dir`) a CA with `masters` master certificates (on 127.0.0.1),
/// `agents` agent certificates, an operator's and a framework's.
pub fn throwaway(dir: &Path, masters: usize, agents: usize) -> anyhow::Result<ClusterTls> {
    let plan = InitPlan {
        masters: vec!["127.0.0.1".to_string(); masters.max(1)],
        agents,
        days: THROWAWAY_DAYS,
    };
    init(dir, &plan).with_context(|| format!("cannot write certificates in {}", dir.display()))?;
    let operator = TlsConfig::load(
        &dir.join("ca.pem"),
        Some(&dir.join("operator.pem")),
        Some(&dir.join("operator-key.pem")),
    )?;
    Ok(ClusterTls {
        dir: dir.to_path_buf(),
        operator,
    })
}

impl ClusterTls {
    /// `--tls-ca … --tls-cert NAME.pem --tls-key NAME-key.pem` for the process holding the
    /// certificate `name` (`master-2`, `agent-1`, `framework`, `operator`).
    pub fn args(&self, name: &str) -> Vec<String> {
        tls_args(&self.dir, name)
    }
}

/// The flags for certificate `name` in `dir`.
pub fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--tls-cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--tls-key".into(),
        dir.join(format!("{name}-key.pem")).display().to_string(),
    ]
}
