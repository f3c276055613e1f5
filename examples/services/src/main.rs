//! `services`: the services framework on its own (the same as `drover services`). Run several
//! copies for HA; one leads.
//!
//! `services --masters 127.0.0.1:5050 [--check-host 127.0.0.1]`

use clap::Parser;

#[derive(Parser)]
#[command(about = "Keeps every service stored under /services/specs at its spec")]
struct Args {
    /// Masters (they serve coord too), HOST:PORT,...
    #[arg(long, env = "DROVER_MASTERS", default_value = "127.0.0.1:5050")]
    masters: String,
    /// ACL token (the secret) for masters started with `--acl`: its policy must grant the
    /// framework's role and write on `/services` in coord.
    #[arg(long, env = "DROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    flags: services::Flags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = args.flags.config(&args.masters);
    config.connection.token = args
        .token
        .as_deref()
        .map(drover_sdk::Secret::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--token (DROVER_TOKEN): {e}"))?;
    services::run(config, services::shutdown_signal()).await
}
