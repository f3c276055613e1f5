//! `drover services`: runs the services framework (`services::run`); run several for HA.

use super::Context;

/// Flags of `drover services` (the masters come from the global `--masters`).
#[derive(clap::Args, Debug)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub flags: services::Flags,
}

/// Runs one copy of the framework until Ctrl-C or SIGTERM.
pub async fn run(ctx: &Context, args: ServicesArgs) -> anyhow::Result<()> {
    let mut config = args.flags.config(&ctx.masters);
    config.connection.tls = ctx.tls.clone();
    config.connection.token = ctx.token.clone();
    services::run(config, services::shutdown_signal()).await
}
