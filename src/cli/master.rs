//! `drover master`: a master process. It serves the coord store, replicated with ZAB across the
//! masters named by `--peers` (or alone), and next to it the scheduler, agent and operator APIs;
//! the master whose coord replica leads is the leading master (`drover_master::driver`).

use anyhow::Context as _;
use clap::Args;
use drover_coord::driver::{self, CoordConfig};
use drover_master::driver::MasterConfig;
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
    /// Every master of the ensemble, this one included: `1=127.0.0.1:5050,2=127.0.0.1:5060,...`.
    /// Without it the master is an ensemble of one.
    #[arg(long, env = "DROVER_PEERS")]
    pub peers: Option<String>,
    /// Directory for the transaction log and snapshots; created if missing.
    #[arg(long, env = "DROVER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Shortest session timeout a client may negotiate.
    #[arg(long, default_value_t = 4_000)]
    pub session_timeout_min_ms: u32,
    /// Longest session timeout a client may negotiate.
    #[arg(long, default_value_t = 40_000)]
    pub session_timeout_max_ms: u32,
    /// How often the replica looks at its timers (session expiry, elections, pings).
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// A looking master re-sends its vote this often.
    #[arg(long, default_value_t = 100)]
    pub election_resend_ms: u64,
    /// Once a quorum agrees on a leader, how long to wait for a better vote.
    #[arg(long, default_value_t = 30)]
    pub election_finalize_ms: u64,
    /// Discovery and synchronization with a new leader must finish within this.
    #[arg(long, default_value_t = 2_000)]
    pub init_timeout_ms: u64,
    /// Silence from the leader (or from a quorum, for the leader) before a new election.
    #[arg(long, default_value_t = 1_000)]
    pub sync_timeout_ms: u64,
    /// The leader pings its followers this often.
    #[arg(long, default_value_t = 100)]
    pub ping_interval_ms: u64,
    /// Take a snapshot after this many transactions.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every_txns: u64,
    /// Async worker threads (0: one per core). Several masters sharing a small machine (a dev
    /// cluster, the benchmark's own ensemble) do better with 1 each: fewer cross-thread wakeups.
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,
    /// Snapshots kept on disk (with the log files they need); older ones are purged.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshots_to_keep: u64,
    /// Events are batched for this long before an allocation cycle runs.
    #[arg(long, default_value_t = drover_master::allocator::ALLOCATION_INTERVAL_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub allocation_interval_ms: u64,
    /// An outstanding offer is rescinded after this long (0: never).
    #[arg(long, default_value_t = drover_master::allocator::OFFER_TIMEOUT_MS_DEFAULT)]
    pub offer_timeout_ms: u64,
    /// Agents are told to heartbeat this often.
    #[arg(long, default_value_t = drover_master::core::AGENT_HEARTBEAT_INTERVAL_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_heartbeat_interval_ms: u64,
    /// An agent silent for this long is unreachable: its tasks become TASK_UNREACHABLE.
    #[arg(long, default_value_t = drover_master::core::AGENT_UNREACHABLE_AFTER_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_unreachable_after_ms: u64,
    /// Frameworks get a Heartbeat event this often.
    #[arg(long, default_value_t = drover_master::core::FRAMEWORK_HEARTBEAT_INTERVAL_MS_DEFAULT, value_parser = clap::value_parser!(u64).range(1..))]
    pub framework_heartbeat_interval_ms: u64,
    /// Address for the HTTP side: dashboard `/`, `/api/v1/state`, `/metrics`. Off when unset.
    #[arg(long, env = "DROVER_HTTP")]
    pub http: Option<SocketAddr>,
    /// Decline filter applied when an Accept or Decline gives none.
    #[arg(long, default_value_t = drover_master::core::REFUSE_MS_DEFAULT)]
    pub refuse_default_ms: u64,
    /// Serve plaintext on a non-loopback --listen or --http (without --tls-*). Anyone who
    /// reaches the port can then run commands on every agent.
    #[arg(long, env = "DROVER_INSECURE")]
    pub insecure: bool,
    /// A coord id that passes every ACL check (ZooKeeper's superDigest), as scheme:id, e.g.
    /// digest:super:HASH (`drover coord digest super:PASSWORD` prints it); repeatable. Give every
    /// master the same list.
    #[arg(long = "coord-super-id", env = "DROVER_COORD_SUPER_IDS", value_delimiter = ',', value_parser = parse_super_id)]
    pub coord_super_ids: Vec<drover_coord::acl::Id>,
    /// Enforce ACL tokens, default deny: every scheduler, operator, ACL and coord call and the
    /// HTTP side need a token (`authorization: Bearer`) whose policies allow it; masters and
    /// agents are known by their certificates. Needs TLS. `drover acl bootstrap` makes the
    /// first token. Give every master the same setting.
    #[arg(long, env = "DROVER_ACL")]
    pub acl: bool,
}

fn parse_super_id(text: &str) -> Result<drover_coord::acl::Id, String> {
    drover_coord::acl::parse_super_id(text)
}

/// Who may call each gRPC service of a master when it serves TLS (`Cluster.Status` is open to
/// any TLS client). An agent's certificate reaches only the agent API; a framework's only the
/// scheduler API and coord (the services framework keeps its state there).
pub mod roles {
    use drover_security::Role;
    pub const PEER: &[Role] = &[Role::Master];
    pub const COORD: &[Role] = &[Role::Master, Role::Operator, Role::Framework];
    pub const SCHEDULER: &[Role] = &[Role::Framework, Role::Operator];
    pub const AGENT_API: &[Role] = &[Role::Agent];
    pub const OPERATOR: &[Role] = &[Role::Operator, Role::Master];
    pub const ACL: &[Role] = &[Role::Operator, Role::Master];
}

pub async fn run(ctx: &super::Context, args: MasterArgs) -> anyhow::Result<()> {
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
    if args.agent_unreachable_after_ms < args.agent_heartbeat_interval_ms {
        anyhow::bail!(
            "--agent-unreachable-after-ms ({}) is shorter than --agent-heartbeat-interval-ms ({})",
            args.agent_unreachable_after_ms,
            args.agent_heartbeat_interval_ms
        );
    }
    let tls = ctx.tls.clone();
    if let Some(tls) = &tls {
        tls.require_role(drover_security::Role::Master)?;
    }
    drover_security::check_plaintext_listen("--listen", args.listen, tls.is_some(), args.insecure)
        .map_err(anyhow::Error::msg)?;
    if args.acl && tls.is_none() {
        anyhow::bail!(
            "--acl needs TLS (--tls-ca, --tls-cert, --tls-key): tokens must not cross the network \
             in plaintext, and masters prove who they are to each other by certificate"
        );
    }
    if let Some(http) = args.http {
        drover_security::check_plaintext_listen("--http", http, tls.is_some(), args.insecure)
            .map_err(anyhow::Error::msg)?;
    }
    let peers = parse_peers(args.id, args.listen, args.peers.as_deref())?;
    let mut master = MasterConfig::new(args.id, peers.clone());
    master.core.allocator.allocation_interval_ms = args.allocation_interval_ms;
    master.core.allocator.offer_timeout_ms =
        (args.offer_timeout_ms > 0).then_some(args.offer_timeout_ms);
    master.core.agent_heartbeat_interval_ms = args.agent_heartbeat_interval_ms;
    master.core.agent_unreachable_after_ms = args.agent_unreachable_after_ms;
    master.core.framework_heartbeat_interval_ms = args.framework_heartbeat_interval_ms;
    master.core.refuse_ms_default = args.refuse_default_ms;
    master.acl = args.acl;
    master.coord.tls = tls.clone();
    let mut config = CoordConfig::new(args.data_dir.clone());
    config.zab = drover_coord::zab::ZabConfig::new(args.id, peers.keys().copied().collect());
    config.zab.election_resend_ms = args.election_resend_ms;
    config.zab.election_finalize_ms = args.election_finalize_ms;
    config.zab.init_timeout_ms = args.init_timeout_ms;
    config.zab.sync_timeout_ms = args.sync_timeout_ms;
    config.zab.ping_interval_ms = args.ping_interval_ms;
    config.peers = peers.into_iter().filter(|(id, _)| *id != args.id).collect();
    config.server.server_id = args.id;
    config.server.session_timeout_min_ms = args.session_timeout_min_ms;
    config.server.session_timeout_max_ms = args.session_timeout_max_ms;
    config.server.snapshot_every_txns = args.snapshot_every_txns;
    config.server.super_ids = args.coord_super_ids.clone();
    config.tick_interval = Duration::from_millis(args.tick_ms);
    config.snapshots_to_keep = args.snapshots_to_keep as usize;
    config.tls = tls.clone();
    let handle = driver::start(config)
        .with_context(|| format!("cannot start coord in {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(id = args.id, listen = %args.listen, data_dir = %args.data_dir.display(), tls = tls.is_some(), "master serving");
    let mut stopped = handle.stopped;
    let services =
        drover_master::driver::start(master, handle.leadership.clone(), handle.status.clone());
    if let Some(http) = args.http {
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("cannot listen on {http} (--http)"))?;
        // The certificate check runs first (outermost), then the token check.
        let app = drover_master::http::router(services.handle.clone(), services.cluster.clone())
            .layer(axum::middleware::from_fn_with_state(
                services.gate.clone(),
                drover_master::acl::http_gate,
            ))
            .layer(axum::middleware::from_fn(drover_security::http_guard));
        tracing::info!(%http, tls = tls.is_some(), "dashboard and HTTP API serving");
        match &tls {
            None => {
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "HTTP server failed");
                    }
                });
            }
            Some(tls) => {
                let config = tls.server_config(
                    false,
                    &[drover_security::ALPN_H2, drover_security::ALPN_HTTP1],
                )?;
                let listener = drover_security::TlsHttpListener::new(
                    listener,
                    config,
                    drover_security::HandshakeLimits::default(),
                )?;
                let app = app.into_make_service_with_connect_info::<drover_security::HttpCaller>();
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "HTTP server failed");
                    }
                });
            }
        }
    }
    let enforce = tls.is_some();
    let guard = |service, roles| drover_security::RoleGuard::new(service, roles, enforce);
    use tonic::service::interceptor::InterceptedService as Guarded;
    // Each API a token reaches: the certificate's role first, then the token (`acl::gate`).
    let gate = services.gate.clone();
    tracing::info!(acl = args.acl, "ACL enforcement");
    let router = tonic::transport::Server::builder()
        .add_service(Guarded::new(
            gate.wrap(handle.service),
            guard("drover.v1.Coord", roles::COORD),
        ))
        .add_service(Guarded::new(
            handle.peer_service,
            guard("drover.v1.Peer", roles::PEER),
        ))
        .add_service(Guarded::new(
            gate.wrap(services.scheduler),
            guard("drover.v1.Scheduler", roles::SCHEDULER),
        ))
        .add_service(Guarded::new(
            services.agent_api,
            guard("drover.v1.AgentApi", roles::AGENT_API),
        ))
        .add_service(Guarded::new(
            gate.wrap(services.operator),
            guard("drover.v1.Operator", roles::OPERATOR),
        ))
        .add_service(Guarded::new(
            gate.wrap(services.acl),
            guard("drover.v1.AclApi", roles::ACL),
        ))
        .add_service(services.cluster.into_server());
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let server = async move {
        match &tls {
            None => {
                // Small request/reply messages: Nagle's algorithm would hold them back.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            Some(tls) => {
                let incoming = drover_security::grpc_incoming(listener, tls, "gRPC")
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
        .map_err(anyhow::Error::from)
    };
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

/// Parses `--peers`; the ensemble must include this master, at the address it listens on.
fn parse_peers(
    id: u32,
    listen: SocketAddr,
    peers: Option<&str>,
) -> anyhow::Result<std::collections::BTreeMap<u32, String>> {
    let mut out = std::collections::BTreeMap::new();
    let Some(peers) = peers.filter(|p| !p.trim().is_empty()) else {
        out.insert(id, listen.to_string());
        return Ok(out);
    };
    for entry in peers.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (peer, addr) = entry
            .split_once('=')
            .with_context(|| format!("--peers entry {entry:?} is not ID=HOST:PORT"))?;
        let peer: u32 = peer
            .trim()
            .parse()
            .ok()
            .filter(|p| (1..=255).contains(p))
            .with_context(|| {
                format!("--peers entry {entry:?}: the id must be a number from 1 to 255")
            })?;
        if addr.trim().is_empty() {
            anyhow::bail!("--peers entry {entry:?} has no address");
        }
        if out.insert(peer, addr.trim().to_string()).is_some() {
            anyhow::bail!("--peers names master {peer} twice");
        }
    }
    if !out.contains_key(&id) {
        anyhow::bail!("--peers must include this master (--id {id})");
    }
    if out.len() > 7 {
        anyhow::bail!(
            "--peers names {} masters; an ensemble has at most 7",
            out.len()
        );
    }
    Ok(out)
}
