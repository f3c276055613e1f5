//! `drover agent`: the agent daemon. Registers with the leading master (found from the global
//! `--masters`), offers this machine's resources, runs tasks under `drover supervise` processes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use drover_agent::daemon::{self, AgentConfig, AgentTiming, SupervisorCommand, defaults};
use drover_agent::{IsolationPolicy, ResourceOverrides};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsolationArg {
    /// cgroup v2 where delegated, else cgroup v1, else rlimits (with a warning).
    Auto,
    /// rlimits only (no cgroups).
    Rlimits,
}

/// `drover agent [FLAGS]` runs the daemon; `drover agent ls` lists the cluster's agents. The
/// daemon's flags and the subcommands exclude each other, and `--work-dir` is required only
/// without a subcommand.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentCmd {
    #[command(subcommand)]
    pub command: Option<AgentSubcommand>,
    #[command(flatten)]
    pub daemon: AgentArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum AgentSubcommand {
    /// List agents: id, hostname, address, reachable, cpus and memory used/total, tasks.
    Ls {
        #[command(flatten)]
        connect: super::operator::ConnectArgs,
    },
}

/// Runs the daemon, or the subcommand.
pub async fn run_cmd(ctx: &super::Context, cmd: AgentCmd) -> anyhow::Result<()> {
    match cmd.command {
        None => run(ctx.master_addrs(), ctx.tls.clone(), cmd.daemon).await,
        Some(AgentSubcommand::Ls { connect }) => super::agents::ls(ctx, &connect).await,
    }
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's own address: it serves its file API there (task logs for `drover logs`) and
    /// sends it to the master as `AgentInfo.address`.
    #[arg(long, env = "DROVER_AGENT_LISTEN", default_value = "127.0.0.1:5051")]
    pub listen: String,
    /// Serve the file API in plaintext on a non-loopback --listen (without --tls-*): anyone who
    /// reaches it can read every task's output.
    #[arg(long, env = "DROVER_INSECURE")]
    pub insecure: bool,
    /// Directory for the agent's id, checkpoints and task sandboxes; created if missing. A
    /// restarted agent on the same directory re-adopts its tasks.
    // Required to run the daemon; an `Option` only so that `drover agent ls` parses without it.
    #[arg(long, env = "DROVER_AGENT_WORK_DIR", required = true)]
    pub work_dir: Option<PathBuf>,
    /// Host name reported to the master (default: this machine's).
    #[arg(long, env = "DROVER_AGENT_HOSTNAME")]
    pub hostname: Option<String>,
    /// CPUs to offer (default: the machine's logical CPUs).
    #[arg(long)]
    pub cpus: Option<String>,
    /// Memory to offer, e.g. `8GiB` (default: RAM minus --mem-reserve).
    #[arg(long)]
    pub mem: Option<String>,
    /// Memory kept for the agent when --mem is not given: bytes (`512MiB`) or a percentage (`10%`).
    #[arg(long)]
    pub mem_reserve: Option<String>,
    /// Port ranges to offer, e.g. `31000-32000,33000` (default: 31000-32000).
    #[arg(long)]
    pub ports: Option<String>,
    /// An attribute `key=value` offered with the resources; repeat for several.
    #[arg(long = "attr")]
    pub attrs: Vec<String>,
    /// Task isolation.
    #[arg(long, value_enum, default_value_t = IsolationArg::Auto)]
    pub isolation: IsolationArg,
    /// Cgroup (below the agent's own) that holds the task cgroups.
    #[arg(long, default_value = defaults::CGROUP_PARENT)]
    pub cgroup_parent: String,
    /// The user tasks run as when they name none (`TaskInfo.user`); it must exist. Default:
    /// `nobody` when the agent runs as root. An agent that is not root runs every task as its own
    /// user and accepts no other.
    #[arg(long, env = "DROVER_TASK_USER", value_name = "USER")]
    pub task_user: Option<String>,
    /// Let tasks run as root (uid 0), keeping only Docker's default capabilities. Without it a
    /// task asking for root is refused (TASK_ERROR).
    #[arg(long)]
    pub allow_root_tasks: bool,
    /// Deadline of one connection attempt to a master.
    #[arg(long, default_value_t = defaults::CONNECT_TIMEOUT_MS)]
    pub connect_timeout_ms: u64,
    /// Deadline for a master's answer to Register/Reregister.
    #[arg(long, default_value_t = defaults::REGISTRATION_TIMEOUT_MS)]
    pub registration_timeout_ms: u64,
    /// First wait after a round of masters found no leader (doubles up to the max, jittered).
    #[arg(long, default_value_t = defaults::RECONNECT_BACKOFF_MIN_MS)]
    pub reconnect_backoff_min_ms: u64,
    #[arg(long, default_value_t = defaults::RECONNECT_BACKOFF_MAX_MS)]
    pub reconnect_backoff_max_ms: u64,
    /// HTTP/2 keepalive ping interval on the master stream.
    #[arg(long, default_value_t = defaults::KEEPALIVE_INTERVAL_MS)]
    pub keepalive_interval_ms: u64,
    /// A keepalive ping unanswered for this long ends the master stream.
    #[arg(long, default_value_t = defaults::KEEPALIVE_TIMEOUT_MS)]
    pub keepalive_timeout_ms: u64,
    /// First resend interval of an unacknowledged status update (doubles up to the max).
    #[arg(long, default_value_t = defaults::STATUS_UPDATE_RETRY_MIN_MS)]
    pub status_update_retry_min_ms: u64,
    #[arg(long, default_value_t = defaults::STATUS_UPDATE_RETRY_MAX_MS)]
    pub status_update_retry_max_ms: u64,
    /// Grace between SIGTERM and SIGKILL for tasks that give none.
    #[arg(long, default_value_t = defaults::KILL_GRACE_MS)]
    pub kill_grace_ms: u64,
    /// After a kill's grace, how often the supervisor is signalled again until the task ended.
    #[arg(long, default_value_t = defaults::KILL_RESEND_INTERVAL_MS)]
    pub kill_resend_interval_ms: u64,
    /// How long a supervisor may take to report that its task started.
    #[arg(long, default_value_t = defaults::TASK_START_TIMEOUT_MS)]
    pub task_start_timeout_ms: u64,
    /// How often a starting task's supervisor record is read.
    #[arg(long, default_value_t = defaults::TASK_START_POLL_MS)]
    pub task_start_poll_ms: u64,
    /// How often a re-adopted task (supervisor not our child) is checked for its end.
    #[arg(long, default_value_t = defaults::TASK_EXIT_POLL_MS)]
    pub task_exit_poll_ms: u64,
    /// How often a task's cgroup is checked for OOM kills (one OOM-killed process ends the task).
    #[arg(long, default_value_t = defaults::OOM_POLL_MS)]
    pub oom_poll_interval_ms: u64,
    /// Sandboxes (logs) of finished, acknowledged tasks are removed once they ended this long
    /// ago: a duration such as `7d`, `12h` or `1h30m` (units ns, us, ms, s, m, h, d).
    #[arg(long, default_value = defaults::SANDBOX_GC_AGE, value_parser = drover_types::units::parse_duration)]
    pub sandbox_gc_age: Duration,
    /// Most disk all sandboxes may take, in bytes (`10GiB`) or as a percentage of the work dir's
    /// file system (`10%`); past it, finished tasks' sandboxes are removed oldest first.
    #[arg(long, default_value = defaults::SANDBOX_GC_DISK_MAX)]
    pub sandbox_gc_disk_max: String,
    /// How often the sandbox GC looks.
    #[arg(long, default_value_t = defaults::SANDBOX_GC_INTERVAL_MS)]
    pub sandbox_gc_interval_ms: u64,
    /// How often a followed log (`drover logs --follow`) is checked for new output.
    #[arg(long, default_value_t = defaults::FILE_FOLLOW_POLL_MS)]
    pub file_follow_poll_ms: u64,
}

pub async fn run(
    masters: Vec<String>,
    tls: Option<drover_security::TlsConfig>,
    args: AgentArgs,
) -> anyhow::Result<()> {
    let overrides = ResourceOverrides::from_flags(
        args.cpus.as_deref(),
        args.mem.as_deref(),
        args.mem_reserve.as_deref(),
        args.ports.as_deref(),
        &args.attrs,
    )?;
    let resources = drover_agent::discover(overrides)?;
    let hostname = match args.hostname {
        Some(h) => h,
        None => daemon::local_hostname()
            .context("cannot read this machine's host name; pass --hostname")?,
    };
    let work_dir = args
        .work_dir
        .context("--work-dir is required to run the agent")?;
    let supervisor =
        SupervisorCommand::current_exe().context("cannot find the drover executable")?;
    let ms = Duration::from_millis;
    let mut config = AgentConfig::new(
        masters,
        args.listen,
        work_dir,
        hostname,
        resources,
        supervisor,
    );
    config.isolation = match args.isolation {
        IsolationArg::Auto => IsolationPolicy::Auto,
        IsolationArg::Rlimits => IsolationPolicy::Rlimits,
    };
    config.cgroup_parent = args.cgroup_parent;
    config.tls = tls;
    config.insecure = args.insecure;
    config.task_user = args.task_user;
    config.allow_root_tasks = args.allow_root_tasks;
    config.timing = AgentTiming {
        connect_timeout: ms(args.connect_timeout_ms),
        registration_timeout: ms(args.registration_timeout_ms),
        reconnect_backoff_min: ms(args.reconnect_backoff_min_ms),
        reconnect_backoff_max: ms(args.reconnect_backoff_max_ms),
        keepalive_interval: ms(args.keepalive_interval_ms),
        keepalive_timeout: ms(args.keepalive_timeout_ms),
        status_update_retry_min: ms(args.status_update_retry_min_ms),
        status_update_retry_max: ms(args.status_update_retry_max_ms),
        kill_grace_default: ms(args.kill_grace_ms),
        kill_resend_interval: ms(args.kill_resend_interval_ms),
        task_start_timeout: ms(args.task_start_timeout_ms),
        task_start_poll: ms(args.task_start_poll_ms),
        task_exit_poll: ms(args.task_exit_poll_ms),
        oom_poll: ms(args.oom_poll_interval_ms),
    };
    config.sandbox_gc = daemon::SandboxGcConfig {
        max_age: args.sandbox_gc_age,
        disk_max: daemon::DiskLimit::parse(&args.sandbox_gc_disk_max)?,
        interval: ms(args.sandbox_gc_interval_ms),
    };
    config.files.follow_poll = ms(args.file_follow_poll_ms);
    daemon::run(config, shutdown_signal()).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM. The agent then stops; its tasks keep running for the next start.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping the agent");
}
