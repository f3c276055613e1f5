//! The services framework: keeps N instances of each service running across a Drover cluster, the
//! way Marathon does on Mesos.
//!
//! Owns the service spec (`spec`: parsing, validation, the stored JSON form), the published status
//! (`status`), the decisions (`core`, sans-IO: desired vs actual state in, actions out), health
//! checks (`health`) and the framework process (`driver`, started with [`run`]). Built only on the
//! public SDK (`drover-sdk`) and coord's client (`drover_coord::client`), which it uses as Marathon
//! uses ZooKeeper: specs, status, instance records, leader election and the framework id live
//! under `/services` ([`paths`]). Must not touch the master's or the agent's internals.
//!
//! Start at [`spec::parse`], [`core::Core`] (its module doc lists the rules) and
//! [`driver`] (its module doc lists the driver's duties).

pub mod core;
pub mod driver;
pub mod health;
pub mod spec;
pub mod status;

use std::time::Duration;

pub use driver::{Config, run};

/// Where the framework keeps its state in coord.
pub mod paths {
    /// The parent of everything below.
    pub const ROOT: &str = "/services";
    /// `/services/specs/NAME`: the validated spec as JSON (`ServiceSpec::to_json`), written by
    /// `drover service deploy|scale`, removed by `drover service rm`.
    pub const SPECS: &str = "/services/specs";
    /// `/services/status/NAME`: `ServiceStatus` JSON, written by the leading copy.
    pub const STATUS: &str = "/services/status";
    /// `/services/leader/member-NNNNNNNNNN`: ephemeral-sequential election nodes.
    pub const LEADER: &str = "/services/leader";
    /// The framework id the leading copy subscribes with.
    pub const FRAMEWORK_ID: &str = "/services/framework-id";
    /// `/services/instances/NAME/TASK_ID`: `core::InstanceRecord` JSON of every launched
    /// instance until its terminal update (version, ports, host: what status updates lack).
    pub const INSTANCES: &str = "/services/instances";

    /// The spec node of a service.
    pub fn spec(name: &str) -> String {
        format!("{SPECS}/{name}")
    }

    /// The status node of a service.
    pub fn status(name: &str) -> String {
        format!("{STATUS}/{name}")
    }
}

/// The framework's flags (all but `--masters`, which `drover` has globally), shared by
/// `drover services` and the `services` binary.
#[derive(clap::Args, Clone, Debug)]
pub struct Flags {
    /// The framework's name, as `drover framework ls` shows it.
    #[arg(long, default_value = "services")]
    pub name: String,
    /// The role the framework's resources count against.
    #[arg(long, default_value = "*")]
    pub role: String,
    /// How long the master keeps the tasks while no copy of the framework is subscribed.
    #[arg(long, default_value = "168h", value_parser = drover_sdk::units::parse_duration)]
    pub failover_timeout: Duration,
    /// Host to run http/tcp health checks against instead of each agent's hostname (e.g.
    /// 127.0.0.1 when every agent runs on this machine under its own label, as in `drover local`).
    #[arg(long, env = "DROVER_SERVICES_CHECK_HOST")]
    pub check_host: Option<String>,
    /// First wait before relaunching an instance that failed; doubles per failure.
    #[arg(long, default_value = "1s", value_parser = drover_sdk::units::parse_duration)]
    pub backoff_initial: Duration,
    /// Longest wait before relaunching a failing instance.
    #[arg(long, default_value = "5m", value_parser = drover_sdk::units::parse_duration)]
    pub backoff_max: Duration,
    /// An instance running healthy this long resets its failure count.
    #[arg(long, default_value = "60s", value_parser = drover_sdk::units::parse_duration)]
    pub backoff_reset_after: Duration,
    /// How long offers that cannot be used are refused while instances are wanted.
    #[arg(long, default_value = "2s", value_parser = drover_sdk::units::parse_duration)]
    pub decline_refuse: Duration,
    /// How long offers are refused when nothing is wanted.
    #[arg(long, default_value = "60s", value_parser = drover_sdk::units::parse_duration)]
    pub idle_refuse: Duration,
    /// How long the unused part of an accepted offer is refused.
    #[arg(long, default_value = "1s", value_parser = drover_sdk::units::parse_duration)]
    pub leftover_refuse: Duration,
    /// How often a kill is repeated until the task ends.
    #[arg(long, default_value = "10s", value_parser = drover_sdk::units::parse_duration)]
    pub kill_retry_interval: Duration,
    /// An instance whose agent is unreachable this long is replaced.
    #[arg(long, default_value = "60s", value_parser = drover_sdk::units::parse_duration)]
    pub unreachable_replace_after: Duration,
    /// An instance the master does not know this long is replaced.
    #[arg(long, default_value = "30s", value_parser = drover_sdk::units::parse_duration)]
    pub unknown_replace_after: Duration,
    /// How often tasks the master does not know are asked about again.
    #[arg(long, default_value = "5s", value_parser = drover_sdk::units::parse_duration)]
    pub reconcile_interval: Duration,
    /// Shortest time between two status writes of one service.
    #[arg(long, default_value = "250ms", value_parser = drover_sdk::units::parse_duration)]
    pub status_interval: Duration,
    /// How often timers run (health checks, backoffs, status writes).
    #[arg(long, default_value = "100ms", value_parser = drover_sdk::units::parse_duration)]
    pub tick_interval: Duration,
    /// How often the specs are read again in full, besides on every change.
    #[arg(long, default_value = "30s", value_parser = drover_sdk::units::parse_duration)]
    pub resync_interval: Duration,
    /// Coord session timeout: a leader that is gone this long is replaced by a standby.
    #[arg(long, default_value = "10s", value_parser = drover_sdk::units::parse_duration)]
    pub coord_session_timeout: Duration,
    /// Longest wait for one coord call.
    #[arg(long, default_value = "10s", value_parser = drover_sdk::units::parse_duration)]
    pub coord_request_timeout: Duration,
    /// Waits between attempts to reach coord or subscribe: starts here, doubles to the max.
    #[arg(long, default_value = "200ms", value_parser = drover_sdk::units::parse_duration)]
    pub retry_backoff_initial: Duration,
    /// Longest wait between attempts to reach coord or subscribe.
    #[arg(long, default_value = "5s", value_parser = drover_sdk::units::parse_duration)]
    pub retry_backoff_max: Duration,
    /// One scheduler call (launch, kill, ...) including redirects.
    #[arg(long, default_value = "10s", value_parser = drover_sdk::units::parse_duration)]
    pub call_timeout: Duration,
    /// Most health checks running at once.
    #[arg(long, default_value_t = 64)]
    pub probes_max: usize,
}

impl Flags {
    /// The config for these flags and masters (`host:port,...`, as `--masters` takes them; split
    /// and checked by the SDK's `Endpoints` when the framework runs).
    pub fn config(&self, masters: &str) -> Config {
        let mut config = Config::new(vec![masters.to_string()]);
        config.name = self.name.clone();
        config.role = self.role.clone();
        config.failover_timeout = self.failover_timeout;
        config.core = core::CoreConfig {
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            backoff_reset_after: self.backoff_reset_after,
            decline_refuse: self.decline_refuse,
            idle_refuse: self.idle_refuse,
            leftover_refuse: self.leftover_refuse,
            kill_retry_interval: self.kill_retry_interval,
            unreachable_replace_after: self.unreachable_replace_after,
            unknown_replace_after: self.unknown_replace_after,
            reconcile_interval: self.reconcile_interval,
            status_interval: self.status_interval,
            check_host: self.check_host.clone(),
        };
        config.tick_interval = self.tick_interval;
        config.resync_interval = self.resync_interval;
        config.coord_session_timeout = self.coord_session_timeout;
        config.coord_request_timeout = self.coord_request_timeout;
        config.retry_backoff_initial = self.retry_backoff_initial;
        config.retry_backoff_max = self.retry_backoff_max;
        config.connection.call_timeout = self.call_timeout;
        config.probes_max = self.probes_max;
        config
    }
}

/// Resolves on Ctrl-C or SIGTERM: what both binaries stop on (the framework then closes its coord
/// session, so a standby takes over at once, and leaves its tasks running).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
