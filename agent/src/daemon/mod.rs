//! The `drover agent` daemon: registers with the leading master, runs the tasks it is sent under
//! one supervisor process each, reports their status until acknowledged, and picks everything up
//! again after its own restart. Start at [`run`].
//!
//! One tokio task, the driver ([`driver`]), owns all state: the task table ([`tasks`]), the
//! status-update manager, the work directory ([`records`]) and the master connection
//! ([`master_link`]). Everything else reports to it through bounded channels: one watcher task per
//! run ([`runs::watch_run`]), one reader task per master stream, and the connect task. The
//! supervisors themselves are separate, synchronous processes (`drover supervise`, see
//! [`crate::supervisor`]) that do not depend on the agent being alive.
//!
//! Driver duties, in order, for every event:
//! 1. A state change of a task is checkpointed in the status-update manager (fsynced) *before*
//!    anything is sent, then in the task record, and only then handed to the master.
//! 2. Only what [`crate::StatusUpdateManager::next_to_send`] returns is sent; an `Acknowledgement`
//!    releases the next. When a terminal update is acknowledged, the task record is deleted first
//!    and the acknowledgement checkpointed second, so a crash in between can resend the update but
//!    never report a task twice.
//! 3. After every (re)registration all unacknowledged updates are resent at once.
//! 4. A task record is written before its supervisor is started, and again with the supervisor's
//!    identity right after, so a restarted agent finds every run it may have started.
//! 5. Processes are signalled only after checking pid *and* start time.
//! 6. Sandboxes are created and removed only by the driver: the sandbox GC ([`sandbox_gc`])
//!    scans on a worker thread, but the driver picks what goes (never a run the task table
//!    tracks, never one whose supervisor lives) and moves it out of the way itself.
//!
//! Next to the driver, [`run`] serves the agent's file API ([`files`], `drover.v1.AgentFiles`) on
//! `--listen` and runs the sandbox GC loop; both ask the driver what they need to know about tasks
//! through one bounded query channel ([`driver::Query`]).

pub mod convert;
mod driver;
pub mod files;
pub mod master_link;
pub mod records;
pub mod runs;
pub mod sandbox_gc;
pub mod task_info;
pub mod tasks;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use files::FileApiConfig;
pub use master_link::{LinkConfig, LinkError};
pub use records::{WorkDir, WorkDirError};
pub use runs::{ProcessIdentity, SUPERVISOR_ARG0, SupervisorCommand};
pub use sandbox_gc::{DiskLimit, SandboxGcConfig};

use crate::isolation::{Isolation, IsolationKind, IsolationPolicy};
use crate::resources::AgentResources;
use crate::sandbox::SandboxError;
use crate::status_updates::{StatusUpdateConfig, StatusUpdateError};
use crate::task_user::{TaskUserError, TaskUserPolicy};

/// Every timer of the agent; [`AgentTiming::default`] holds the production values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTiming {
    /// Deadline of one TCP/HTTP2 connect to a master.
    pub connect_timeout: Duration,
    /// Deadline for a master's answer (`Registered`/`AgentRefused`) to the hello.
    pub registration_timeout: Duration,
    /// Backoff between rounds of connection attempts that found no leader: from min, doubling, to
    /// max (jittered).
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// HTTP/2 keepalive on the master stream, so a vanished master is noticed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Resend interval of an unacknowledged status update: from min, doubling, to max.
    pub status_update_retry_min: Duration,
    pub status_update_retry_max: Duration,
    /// Grace between SIGTERM and SIGKILL for a task that gives none.
    pub kill_grace_default: Duration,
    /// After a kill's grace period, the supervisor is signalled again this often until the task
    /// has ended (covers a signal that arrived before the supervisor could take it).
    pub kill_resend_interval: Duration,
    /// How long a supervisor may take to record that the task started.
    pub task_start_timeout: Duration,
    /// How often a starting run's `supervisor.json` is read.
    pub task_start_poll: Duration,
    /// How often a run whose supervisor is not our child (after a restart) is checked for its end.
    pub task_exit_poll: Duration,
    /// How often a supervisor checks its task's cgroup for OOM kills (an OOM kill ends the task).
    pub oom_poll: Duration,
}

/// Production values of [`AgentTiming`], in milliseconds (the `drover agent` flag defaults).
pub mod defaults {
    pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
    pub const REGISTRATION_TIMEOUT_MS: u64 = 10_000;
    pub const RECONNECT_BACKOFF_MIN_MS: u64 = 250;
    pub const RECONNECT_BACKOFF_MAX_MS: u64 = 10_000;
    pub const KEEPALIVE_INTERVAL_MS: u64 = 10_000;
    pub const KEEPALIVE_TIMEOUT_MS: u64 = 20_000;
    pub const STATUS_UPDATE_RETRY_MIN_MS: u64 = 1_000;
    pub const STATUS_UPDATE_RETRY_MAX_MS: u64 = 60_000;
    pub const KILL_GRACE_MS: u64 = 5_000;
    pub const KILL_RESEND_INTERVAL_MS: u64 = 5_000;
    pub const TASK_START_TIMEOUT_MS: u64 = 60_000;
    pub const TASK_START_POLL_MS: u64 = 20;
    pub const TASK_EXIT_POLL_MS: u64 = 1_000;
    pub const OOM_POLL_MS: u64 = crate::supervisor::OOM_POLL_INTERVAL_MS_DEFAULT;
    /// Sandboxes of finished (and acknowledged) runs older than this are removed: a week.
    pub const SANDBOX_GC_AGE: &str = "7d";
    /// The sandboxes together may take this much (bytes like `10GiB`, or a percentage of the
    /// work dir's file system); past it, finished runs go oldest first.
    pub const SANDBOX_GC_DISK_MAX: &str = "10%";
    /// How often the sandbox GC looks.
    pub const SANDBOX_GC_INTERVAL_MS: u64 = 60_000;
    /// How often a followed file is checked for appended bytes (and its run for its end).
    pub const FILE_FOLLOW_POLL_MS: u64 = 250;
    /// Most `ReadFile` streams open at once.
    pub const FILE_STREAMS_MAX: usize = 256;
    /// How long open file streams get to end when the agent stops.
    pub const FILE_API_STOP_GRACE_MS: u64 = 2_000;
    /// Name of the cgroup (below the agent's own) that holds the task cgroups.
    pub const CGROUP_PARENT: &str = "drover";
}

impl Default for AgentTiming {
    fn default() -> Self {
        use defaults::*;
        let ms = Duration::from_millis;
        AgentTiming {
            connect_timeout: ms(CONNECT_TIMEOUT_MS),
            registration_timeout: ms(REGISTRATION_TIMEOUT_MS),
            reconnect_backoff_min: ms(RECONNECT_BACKOFF_MIN_MS),
            reconnect_backoff_max: ms(RECONNECT_BACKOFF_MAX_MS),
            keepalive_interval: ms(KEEPALIVE_INTERVAL_MS),
            keepalive_timeout: ms(KEEPALIVE_TIMEOUT_MS),
            status_update_retry_min: ms(STATUS_UPDATE_RETRY_MIN_MS),
            status_update_retry_max: ms(STATUS_UPDATE_RETRY_MAX_MS),
            kill_grace_default: ms(KILL_GRACE_MS),
            kill_resend_interval: ms(KILL_RESEND_INTERVAL_MS),
            task_start_timeout: ms(TASK_START_TIMEOUT_MS),
            task_start_poll: ms(TASK_START_POLL_MS),
            task_exit_poll: ms(TASK_EXIT_POLL_MS),
            oom_poll: ms(OOM_POLL_MS),
        }
    }
}

/// This machine's host name, for `AgentInfo.hostname` when `--hostname` is not given.
pub fn local_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()?
        .into_string()
        .ok()
        .filter(|h| !h.is_empty())
}

/// Everything `drover agent` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `host:port` of every master.
    pub masters: Vec<String>,
    /// The agent's own address (`AgentInfo.address`), where it serves its file API.
    pub listen: String,
    pub work_dir: PathBuf,
    pub hostname: String,
    /// What the agent offers (see [`crate::discover`]).
    pub resources: AgentResources,
    /// How supervisors are started.
    pub supervisor: SupervisorCommand,
    pub isolation: IsolationPolicy,
    /// Cgroup (below the agent's own) that holds the task cgroups.
    pub cgroup_parent: String,
    pub timing: AgentTiming,
    /// When sandboxes of finished runs are removed.
    pub sandbox_gc: SandboxGcConfig,
    /// The file API served on `listen`.
    pub files: FileApiConfig,
    /// `None`: plaintext. Otherwise the agent's certificate (role agent), presented to the
    /// masters and served on the file API, which then admits only operators and masters.
    pub tls: Option<drover_security::TlsConfig>,
    /// Serve plaintext on a non-loopback `listen` anyway.
    pub insecure: bool,
    /// `--task-user`: who tasks that name no user run as; `None`: `nobody` when the agent is root,
    /// else the agent's own user (see [`crate::task_user`]).
    pub task_user: Option<String>,
    /// `--allow-root-tasks`: tasks may run as root (with Docker's default capabilities).
    pub allow_root_tasks: bool,
}

impl AgentConfig {
    /// A config with production timing, `drover supervise` supervisors, auto isolation and the
    /// `drover` cgroup parent.
    pub fn new(
        masters: Vec<String>,
        listen: String,
        work_dir: PathBuf,
        hostname: String,
        resources: AgentResources,
        supervisor: SupervisorCommand,
    ) -> AgentConfig {
        AgentConfig {
            masters,
            listen,
            work_dir,
            hostname,
            resources,
            supervisor,
            isolation: IsolationPolicy::Auto,
            cgroup_parent: defaults::CGROUP_PARENT.into(),
            timing: AgentTiming::default(),
            sandbox_gc: SandboxGcConfig::default(),
            files: FileApiConfig::default(),
            tls: None,
            insecure: false,
            task_user: None,
            allow_root_tasks: false,
        }
    }

    /// Checks what flags cannot: the error names the field.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |field: &'static str, reason: String| Err(AgentError::Config { field, reason });
        if let Err(e) = drover_client::Endpoints::from_list(&self.masters) {
            return bad("masters", e.to_string());
        }
        if !looks_like_host_port(&self.listen) {
            return bad("listen", format!("{:?} is not host:port", self.listen));
        }
        if self.hostname.is_empty() {
            return bad("hostname", "must not be empty".into());
        }
        if let Some(tls) = &self.tls
            && let Err(e) = tls.require_role(drover_security::Role::Agent)
        {
            return bad("tls", e.to_string());
        }
        if let Err(SandboxError::InvalidId { field, reason }) = crate::sandbox::validate_component(
            "cgroup_parent",
            &self.cgroup_parent,
            crate::limits::CGROUP_PARENT_BYTES_MAX,
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
        ) {
            return bad(field, reason);
        }
        let t = &self.timing;
        if t.reconnect_backoff_min.is_zero() || t.reconnect_backoff_min > t.reconnect_backoff_max {
            return bad(
                "reconnect_backoff_min",
                format!(
                    "must be > 0 and <= reconnect_backoff_max ({:?} > {:?})",
                    t.reconnect_backoff_min, t.reconnect_backoff_max
                ),
            );
        }
        if t.status_update_retry_min.is_zero()
            || t.status_update_retry_min > t.status_update_retry_max
        {
            return bad(
                "status_update_retry_min",
                format!(
                    "must be > 0 and <= status_update_retry_max ({:?} > {:?})",
                    t.status_update_retry_min, t.status_update_retry_max
                ),
            );
        }
        for (field, d) in [
            ("connect_timeout", t.connect_timeout),
            ("registration_timeout", t.registration_timeout),
            ("keepalive_interval", t.keepalive_interval),
            ("keepalive_timeout", t.keepalive_timeout),
            ("kill_resend_interval", t.kill_resend_interval),
            ("task_start_timeout", t.task_start_timeout),
            ("task_start_poll", t.task_start_poll),
            ("task_exit_poll", t.task_exit_poll),
            ("oom_poll", t.oom_poll),
        ] {
            if d.is_zero() {
                return bad(field, "must be > 0".into());
            }
        }
        if let Err((field, reason)) = self.sandbox_gc.validate() {
            return bad(field, reason);
        }
        if let Err((field, reason)) = self.files.validate() {
            return bad(field, reason);
        }
        let grace_ms = duration_ms(t.kill_grace_default);
        if grace_ms > crate::limits::GRACE_PERIOD_MS_MAX {
            return bad(
                "kill_grace_default",
                format!(
                    "{grace_ms} ms exceeds {} ms",
                    crate::limits::GRACE_PERIOD_MS_MAX
                ),
            );
        }
        Ok(())
    }

    fn status_update_config(&self) -> StatusUpdateConfig {
        StatusUpdateConfig {
            retry_min_ms: duration_ms(self.timing.status_update_retry_min),
            retry_max_ms: duration_ms(self.timing.status_update_retry_max),
            ..StatusUpdateConfig::default()
        }
    }

    fn link_config(&self) -> LinkConfig {
        LinkConfig {
            masters: self.masters.clone(),
            connect_timeout: self.timing.connect_timeout,
            registration_timeout: self.timing.registration_timeout,
            backoff_min: self.timing.reconnect_backoff_min,
            backoff_max: self.timing.reconnect_backoff_max,
            keepalive_interval: self.timing.keepalive_interval,
            keepalive_timeout: self.timing.keepalive_timeout,
            tls: self.tls.clone(),
        }
    }
}

fn looks_like_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Warns when a directory above the work dir is closed to others: tasks switched to another user
/// then still start in their sandbox (their working directory is set while still root) but cannot
/// reach it, or `$DROVER_SANDBOX`, by its path.
fn warn_if_unreachable(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for dir in root.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format_args!("{:o}", mode & 0o7777),
                "tasks run as another user cannot pass through this directory above the work dir: their sandboxes are reachable only as their working directory, not by path"
            );
            return;
        }
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why the agent stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    /// The status-update checkpoint cannot be written or read: updates could be lost, so the agent
    /// stops (its tasks keep running; a restart recovers them).
    #[error("status update checkpoint")]
    StatusUpdates(#[from] StatusUpdateError),
    #[error(transparent)]
    Link(#[from] LinkError),
    /// `--task-user` / `--allow-root-tasks` cannot be used on this machine.
    #[error(transparent)]
    TaskUser(#[from] TaskUserError),
    /// The file API cannot listen on `--listen`.
    #[error("cannot listen on {address} (--listen)")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The master answered a re-registration with another id.
    #[error("master {master} re-registered agent {ours} under another id {theirs}")]
    IdChanged {
        master: String,
        ours: String,
        theirs: String,
    },
}

impl From<SandboxError> for AgentError {
    fn from(e: SandboxError) -> Self {
        AgentError::WorkDir(WorkDirError::Record(e))
    }
}

/// A plaintext file API only on loopback, unless `--insecure`.
fn check_listen(config: &AgentConfig, addr: std::net::SocketAddr) -> Result<(), AgentError> {
    drover_security::check_plaintext_listen("--listen", addr, config.tls.is_some(), config.insecure)
        .map_err(|reason| AgentError::Config {
            field: "listen",
            reason,
        })
}

/// Runs the agent until `shutdown` completes (then returns `Ok`, leaving its tasks running for
/// the next start to re-adopt) or a fatal error: the master refused the agent, or its work
/// directory or checkpoints cannot be written.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    config.validate()?;
    let task_users =
        TaskUserPolicy::for_this_process(config.task_user.as_deref(), config.allow_root_tasks)?;
    let work = WorkDir::open(&config.work_dir)?;
    tracing::info!(policy = %task_users.describe(), "task users");
    if matches!(task_users, TaskUserPolicy::Switch { .. }) {
        warn_if_unreachable(work.root());
    }
    let isolation = Isolation::select(config.isolation);
    match isolation.kind() {
        IsolationKind::Rlimits => tracing::warn!(
            isolation = ?isolation.kind(),
            description = isolation.description(),
            "tasks run without cgroups: memory is limited with RLIMIT_DATA only and CPU is not limited"
        ),
        kind => {
            tracing::info!(isolation = ?kind, description = isolation.description(), "task isolation")
        }
    }
    let r = &config.resources;
    tracing::info!(
        cpus = r.cpus,
        mem_bytes = r.mem_bytes,
        ports = ?r.ports,
        attributes = ?r.attributes,
        hostname = %config.hostname,
        address = %config.listen,
        work_dir = %work.root().display(),
        "agent resources"
    );
    // Secure by default, checked before anything listens (a host name is checked once bound).
    if let Ok(addr) = config.listen.parse::<std::net::SocketAddr>() {
        check_listen(&config, addr)?;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| AgentError::Bind {
            address: config.listen.clone(),
            source,
        })?;
    if let Ok(local) = listener.local_addr() {
        check_listen(&config, local)?;
    }
    let root = work.root().to_path_buf();
    let (queries_tx, queries_rx) = tokio::sync::mpsc::channel(driver::QUERIES_MAX);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = files::spawn_server(
        listener,
        files::FileService::new(
            root.clone(),
            config.files.clone(),
            queries_tx.clone(),
            stop_rx.clone(),
        ),
        &config,
        stop_rx.clone(),
    );
    let gc = tokio::spawn(sandbox_gc::run(
        root,
        config.sandbox_gc.clone(),
        queries_tx,
        stop_rx,
    ));
    let stop_grace = config.files.stop_grace;
    let result = match driver::Driver::start(config, task_users, work, queries_rx) {
        Ok(driver) => driver.run(shutdown).await,
        Err(e) => Err(e),
    };
    let _ = stop_tx.send(true);
    gc.abort();
    let _ = gc.await;
    files::stop_server(server, stop_grace).await;
    result
}
