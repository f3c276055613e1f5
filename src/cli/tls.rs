//! `drover tls init`: a CA and role certificates for a small cluster, and the flags to use them.

use std::path::PathBuf;

use clap::Subcommand;
use drover_security::init::{InitPlan, init};

use super::Context;
use super::render::{Table, outln};

#[derive(Subcommand, Debug)]
pub enum TlsCmd {
    /// Write a CA (or reuse the one in DIR) and certificates for masters, agents, the operator
    /// and frameworks. Existing files are kept; keys are written 0600. The masters are the
    /// global --masters in id order (`--masters 10.0.0.1,10.0.0.2,10.0.0.3`; ports optional):
    /// master N gets `master-N.pem`, valid for its host, localhost and `master.drover`.
    Init {
        /// Directory for the files; created if missing.
        dir: PathBuf,
        /// Agent certificates to write (agent-1 … agent-N).
        #[arg(long, default_value_t = 1)]
        agents: usize,
        /// Validity of the role certificates, in days (the CA's is 10 years).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(ctx: &Context, cmd: TlsCmd) -> anyhow::Result<()> {
    match cmd {
        TlsCmd::Init { dir, agents, days } => {
            // The global --masters, in id order (`drover master --id N` uses `master-N.pem`):
            // hosts, with or without their ports.
            let master_hosts = ctx.master_addrs().iter().map(|a| host_of(a)).collect();
            let issued = init(
                &dir,
                &InitPlan {
                    masters: master_hosts,
                    agents,
                    days,
                },
            )?;
            if ctx.output == super::Output::Json {
                let rows: Vec<serde_json::Value> = issued
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "name": i.name,
                            "role": i.role.map(|r| r.as_str()),
                            "cert": i.cert,
                            "key": i.key,
                            "new": i.new,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "ROLE", "CERTIFICATE", "KEY", ""]);
            for i in &issued {
                table.row(vec![
                    i.name.clone(),
                    i.role.map_or("ca", |r| r.as_str()).to_string(),
                    i.cert.display().to_string(),
                    i.key.display().to_string(),
                    if i.new { "written" } else { "kept" }.to_string(),
                ]);
            }
            super::render::out!("{}", table.render())?;
            let ca = &issued[0].cert;
            outln!()?;
            outln!("# The CLI, as operator:")?;
            outln!("export DROVER_TLS_CA={}", ca.display())?;
            if let Some(op) = issued.iter().find(|i| i.name == "operator") {
                outln!("export DROVER_TLS_CERT={}", op.cert.display())?;
                outln!("export DROVER_TLS_KEY={}", op.key.display())?;
            }
            outln!(
                "# Master N: drover master --id N --tls-ca {} --tls-cert {d}/master-N.pem --tls-key {d}/master-N-key.pem …",
                ca.display(),
                d = dir.display()
            )?;
            Ok(())
        }
    }
}

/// `10.0.0.1:5050` → `10.0.0.1`; `[::1]:5050` → `::1`; a bare host stays.
fn host_of(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() && !host.contains(':') => host.into(),
        _ => addr.to_string(),
    }
}
