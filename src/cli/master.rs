//! `drover master`: a master process. For now it serves the coord store (single replica); the
//! leading-master logic and replication arrive with later issues.

use anyhow::Context as _;
use clap::Args;
use drover_coord::driver::{self, CoordConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct MasterArgs {
    /// This master's id in the ensemble (1..=255).
    #[arg(long, env = "DROVER_MASTER_ID", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=255))]
    pub id: u32,
    /// gRPC address to serve coord (and, later, the scheduler, agent and operator APIs) on.
    #[arg(long, env = "DROVER_LISTEN", default_value = "127.0.0.1:5050")]
    pub listen: SocketAddr,
    /// Directory for the transaction log and snapshots; created if missing.
    #[arg(long, env = "DROVER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Shortest session timeout a client may negotiate.
    #[arg(long, default_value_t = 4_000)]
    pub session_timeout_min_ms: u32,
    /// Longest session timeout a client may negotiate.
    #[arg(long, default_value_t = 40_000)]
    pub session_timeout_max_ms: u32,
    /// How often expired sessions are looked for.
    #[arg(long, default_value_t = 50)]
    pub tick_ms: u64,
    /// Take a snapshot after this many transactions.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every_txns: u64,
    /// Snapshots kept on disk (with the log files they need); older ones are purged.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshots_to_keep: u64,
}

pub async fn run(args: MasterArgs) -> anyhow::Result<()> {
    if args.session_timeout_min_ms > args.session_timeout_max_ms {
        anyhow::bail!(
            "--session-timeout-min-ms ({}) is greater than --session-timeout-max-ms ({})",
            args.session_timeout_min_ms,
            args.session_timeout_max_ms
        );
    }
    if args.tick_ms == 0 || args.snapshot_every_txns == 0 {
        anyhow::bail!("--tick-ms and --snapshot-every-txns must be at least 1");
    }
    let mut config = CoordConfig::new(args.data_dir.clone());
    config.server.server_id = args.id;
    config.server.session_timeout_min_ms = args.session_timeout_min_ms;
    config.server.session_timeout_max_ms = args.session_timeout_max_ms;
    config.server.snapshot_every_txns = args.snapshot_every_txns;
    config.tick_interval = Duration::from_millis(args.tick_ms);
    config.snapshots_to_keep = args.snapshots_to_keep as usize;
    let handle = driver::start(config)
        .with_context(|| format!("cannot start coord in {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(id = args.id, listen = %args.listen, data_dir = %args.data_dir.display(), "master serving");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut stopped = handle.stopped;
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(handle.service)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        });
    tokio::select! {
        served = server => served.context("gRPC server failed")?,
        stopped = &mut stopped => match stopped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).context("coord stopped"),
            Err(_) => anyhow::bail!("coord stopped unexpectedly"),
        },
    }
    Ok(())
}
