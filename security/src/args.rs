//! The TLS flags every `drover` process takes, and the environment variables clients read.

use std::path::PathBuf;

use crate::tls::{TlsConfig, TlsError};

/// `--tls-cert`, `--tls-key`, `--tls-ca` (global: the CLI's user commands, masters, agents and
/// frameworks all take them).
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsArgs {
    /// This process's certificate (PEM; from `drover tls init`). Servers present it; clients
    /// present it to prove their role.
    #[arg(
        long = "tls-cert",
        env = "DROVER_TLS_CERT",
        global = true,
        value_name = "PEM"
    )]
    pub cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long = "tls-key",
        env = "DROVER_TLS_KEY",
        global = true,
        value_name = "PEM"
    )]
    pub key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM). Turns TLS on: servers require it of clients, clients
    /// verify servers with it.
    #[arg(
        long = "tls-ca",
        env = "DROVER_TLS_CA",
        global = true,
        value_name = "PEM"
    )]
    pub ca: Option<PathBuf>,
}

impl TlsArgs {
    /// `None` when TLS is off (no `--tls-ca`); an error when the flags are half given or a file
    /// is bad.
    pub fn load(&self) -> Result<Option<TlsConfig>, TlsError> {
        match &self.ca {
            Some(ca) => TlsConfig::load(ca, self.cert.as_deref(), self.key.as_deref()).map(Some),
            None if self.cert.is_some() || self.key.is_some() => Err(TlsError::Incomplete(
                "--tls-cert and --tls-key need --tls-ca (the cluster's CA) as well".into(),
            )),
            None => Ok(None),
        }
    }

    /// The flags again, for a process this one starts.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, value) in [
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
            ("--tls-ca", &self.ca),
        ] {
            if let Some(path) = value {
                out.push(flag.to_string());
                out.push(path.display().to_string());
            }
        }
        out
    }
}
