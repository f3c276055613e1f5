//! `drover local`: the whole cluster on this machine, as a tree of real processes.
//!
//! `LocalCluster` starts `drover master` ×1 or ×3 (with `--peers`), then the agents (each with
//! its own `--work-dir`, `--listen`, host name and slice of the task port range) and the services
//! framework (`drover services`), waits until the masters lead, every agent is registered and the
//! framework is subscribed (`Operator.GetState`), and stops everything in order: the framework,
//! the agents, the tasks the agents leave behind on purpose (their detached supervisors, found
//! under the agents' work dirs), then the masters. `drover bench deploy` reuses it.
//!
//! While it runs, [`LocalCluster::supervise`] restarts a child that dies — a master on its data
//! dir (so killing the leader shows a failover and the old leader rejoining as a follower), an
//! agent on its work dir (it recovers its tasks), the framework — after a backoff that doubles
//! per death ([`RestartPolicy`]). Only a child that keeps dying (more than `deaths_max` exits
//! within `window`) ends the cluster.
//!
//! Every child runs in its own process group (a Ctrl-C at the terminal reaches only `drover
//! local`, which then stops the children in order) with `PR_SET_PDEATHSIG`, so a `kill -9` of
//! `drover local` still takes the masters, agents and framework down; only the task supervisors,
//! detached by design, would then survive, until the next `drover local` on the same
//! `--data-dir` recovers them (or a sweep of the dir). Logs go to `DATA/logs/NAME.log`.
//!
//! Port scheme, from `--base-port` B: master i's gRPC port is B + 10·(i−1) (B, B+10, B+20), its
//! HTTP port B + 30 + (i−1) (the dashboard is on B+30), agent i's API B + 40 + (i−1). Agent i
//! reports the host name 127.0.0.i: distinct hosts for `max_per_host` and `spread_by`, and an
//! address every instance can be reached at (tasks that listen on all interfaces).

use crate::process::{self, Spawn, processes_under};
use anyhow::{Context as _, bail};
use drover_proto::v1;
use drover_proto::v1::acl_api_client::AclApiClient;
use drover_proto::v1::operator_client::OperatorClient;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Master counts `drover local` starts: one, or a replicated ensemble of three.
pub const MASTER_COUNTS: [u32; 2] = [1, 3];
/// Most agents one `drover local` starts (127.0.0.1 … 127.0.0.64 as host names).
pub const AGENTS_MAX: u32 = 64;
/// Distance between two masters' gRPC ports.
const MASTER_PORT_STEP: u16 = 10;
/// Offset of master 1's HTTP port (dashboard, `/api/v1/state`, `/metrics`) from the base port.
const MASTER_HTTP_OFFSET: u16 = 30;
/// Offset of agent 1's API port from the base port.
const AGENT_OFFSET: u16 = 40;
/// The name the services framework subscribes with.
pub const SERVICES_FRAMEWORK_NAME: &str = "services";
/// Lines of a child's log quoted when it died or the cluster did not come up.
const LOG_TAIL_LINES: usize = 20;

pub const PORTS_HELP: &str = "\
Ports, from --base-port B: masters serve gRPC on B, B+10, B+20 (so DROVER_MASTERS=127.0.0.1:B \
reaches the cluster) and HTTP on B+30, B+31, B+32 (the dashboard is http://127.0.0.1:B+30/); \
agent i (1..N) serves its API on B+40+i-1 and reports the host name 127.0.0.i. Tasks get ports \
from --task-ports, split evenly between the agents.

--masters takes the number of masters to start here (1 or 3), not addresses.

Data and logs (DATA/logs/*.log) go under --data-dir, or a temp dir removed on exit. Ctrl-C or \
SIGTERM stops everything: the framework, the agents, their tasks, then the masters.";

/// What to start; `LocalArgs` is one way to fill it, `drover bench deploy` another.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// 1 or 3.
    pub masters: u32,
    pub agents: u32,
    pub base_port: u16,
    /// None: a temp dir, removed when the cluster is dropped.
    pub data_dir: Option<PathBuf>,
    pub agent_cpus: Option<String>,
    pub agent_mem: Option<String>,
    /// Inclusive range of task ports, split between the agents.
    pub task_ports: (u16, u16),
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    /// Deadline of one `GetState` call (connection included).
    pub rpc_timeout: Duration,
    /// How often readiness and stop phases look again.
    pub poll_interval: Duration,
    /// While the cluster is not up after this long, say once what it waits for.
    pub progress_after: Duration,
    pub master_args: Vec<String>,
    pub agent_args: Vec<String>,
    pub services_args: Vec<String>,
    /// `RUST_LOG` for the children when this process has none.
    pub log_filter: String,
    /// When a dead child is started again, and when the cluster gives up on it.
    pub restart: RestartPolicy,
    /// Secure: a throwaway CA and certificates in the data dir (`tls/`); every process serves
    /// and calls over TLS with its own role's certificate. Off: plaintext on loopback.
    pub tls: bool,
}

/// How [`LocalCluster::supervise`] restarts a child that died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubles with every further death within `window`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A child that exits more than this many times within `window` keeps dying: the cluster
    /// stops. 0: the first exit stops it (a benchmark must not measure a restart).
    pub deaths_max: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            deaths_max: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl LocalConfig {
    /// Production defaults: 1 master, 1 agent with the machine's resources, base port 5050.
    pub fn new() -> LocalConfig {
        LocalConfig {
            masters: 1,
            agents: 1,
            base_port: 5050,
            data_dir: None,
            agent_cpus: None,
            agent_mem: None,
            task_ports: (31000, 32999),
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_millis(50),
            progress_after: Duration::from_secs(5),
            master_args: Vec::new(),
            agent_args: Vec::new(),
            services_args: Vec::new(),
            log_filter: "info".into(),
            restart: RestartPolicy::default(),
            tls: true,
        }
    }

    /// Checks everything that can be checked before a process starts; errors name the flag.
    fn validate(&self) -> anyhow::Result<()> {
        if !MASTER_COUNTS.contains(&self.masters) {
            bail!(
                "--masters {}: drover local starts 1 or 3 masters",
                self.masters
            );
        }
        if !(1..=AGENTS_MAX).contains(&self.agents) {
            bail!("--agents {}: must be from 1 to {AGENTS_MAX}", self.agents);
        }
        let top = u32::from(self.base_port) + u32::from(AGENT_OFFSET) + self.agents - 1;
        if top > u32::from(u16::MAX) {
            bail!(
                "--base-port {}: the cluster needs ports up to base + {} = {top}, past 65535",
                self.base_port,
                top - u32::from(self.base_port)
            );
        }
        let (lo, hi) = self.task_ports;
        if lo > hi || u32::from(hi - lo) + 1 < self.agents {
            bail!(
                "--task-ports {lo}-{hi}: needs at least one port per agent ({})",
                self.agents
            );
        }
        let own = (u32::from(self.base_port), top);
        if u32::from(lo) <= own.1 && own.0 <= u32::from(hi) {
            bail!(
                "--task-ports {lo}-{hi} overlaps the cluster's own ports {}-{}; move --base-port \
                 or --task-ports",
                own.0,
                own.1
            );
        }
        if self.poll_interval.is_zero() || self.rpc_timeout.is_zero() {
            bail!("the poll interval and the RPC timeout must be > 0");
        }
        if self.restart.backoff_min > self.restart.backoff_max {
            bail!(
                "the restart backoff's minimum ({:?}) is above its maximum ({:?})",
                self.restart.backoff_min,
                self.restart.backoff_max
            );
        }
        Ok(())
    }

    /// Master `id`'s gRPC port (1-based id).
    pub fn master_port(&self, id: u32) -> u16 {
        self.base_port + MASTER_PORT_STEP * (id as u16 - 1)
    }

    /// Master `id`'s HTTP port.
    pub fn master_http_port(&self, id: u32) -> u16 {
        self.base_port + MASTER_HTTP_OFFSET + (id as u16 - 1)
    }

    /// Agent `n`'s API port (1-based).
    pub fn agent_port(&self, n: u32) -> u16 {
        self.base_port + AGENT_OFFSET + (n as u16 - 1)
    }

    /// Agent `n`'s slice of the task ports (1-based, inclusive).
    pub fn agent_task_ports(&self, n: u32) -> (u16, u16) {
        let (lo, hi) = (u32::from(self.task_ports.0), u32::from(self.task_ports.1));
        let per = (hi - lo + 1) / self.agents;
        let first = lo + per * (n - 1);
        let last = if n == self.agents {
            hi
        } else {
            first + per - 1
        };
        (first as u16, last as u16)
    }

    /// The masters' client addresses (`--masters`/`DROVER_MASTERS` for the cluster).
    pub fn master_addrs(&self) -> Vec<String> {
        (1..=self.masters)
            .map(|id| format!("127.0.0.1:{}", self.master_port(id)))
            .collect()
    }

    /// Every port the cluster's processes listen on, with who listens there.
    fn listen_ports(&self) -> Vec<(u16, String)> {
        let mut ports = Vec::new();
        for id in 1..=self.masters {
            ports.push((self.master_port(id), format!("master {id}'s gRPC")));
            ports.push((self.master_http_port(id), format!("master {id}'s HTTP")));
        }
        for n in 1..=self.agents {
            ports.push((self.agent_port(n), format!("agent {n}'s API")));
        }
        ports
    }
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig::new()
    }
}

/// `LO-HI` (inclusive) or a single port.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("{lo} is greater than {hi}"));
    }
    Ok((lo, hi))
}

/// What a child of the cluster is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Master,
    Agent,
    Services,
}

struct Member {
    name: String,
    role: Role,
    /// Its command line, to start it again after it died.
    args: Vec<OsString>,
    /// Its environment beyond this process's (its token).
    env: Vec<(String, String)>,
    /// None once it exited and was reaped.
    child: Option<Child>,
    log: PathBuf,
    /// When it exited, within the restart window (oldest first).
    deaths: std::collections::VecDeque<Instant>,
    /// Dead and waiting to be started again at this time.
    restart_at: Option<Instant>,
}

impl Member {
    fn pgid(&self) -> Option<Pid> {
        process::group_of(self.child.as_ref()?)
    }
}

/// What [`LocalCluster::supervise`] saw happen.
#[derive(Debug)]
pub enum Supervised {
    /// A child died and will be started again after `after`.
    Died {
        name: String,
        status: std::process::ExitStatus,
        after: Duration,
        deaths: u32,
    },
    /// A dead child was started again.
    Restarted { name: String },
}

enum DataDir {
    /// Removed on drop; the path is the canonical form of the temp dir's.
    #[allow(dead_code)] // held for its drop
    Temp(tempfile::TempDir, PathBuf),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(_, p) | DataDir::Given(p) => p,
        }
    }
}

/// A running local cluster. Dropping it without `stop` kills every process at once (SIGKILL)
/// and removes a temp data dir.
pub struct LocalCluster {
    config: LocalConfig,
    // Dropped after the processes are gone (see `Drop`).
    data: DataDir,
    exe: PathBuf,
    members: Vec<Member>,
    /// Wakes `supervise` when a child exits.
    sigchld: tokio::signal::unix::Signal,
    stopped: bool,
    /// Says what the cluster is doing or waiting for (one line each), for the person watching.
    notify: Box<dyn Fn(&str) + Send>,
    /// `Some` when `config.tls`: the certificates under the data dir.
    tls: Option<crate::tls::ClusterTls>,
    /// With TLS the masters enforce ACLs: the cluster's tokens, once `wait_ready` made them.
    tokens: Option<ClusterTokens>,
}

/// The policy `drover local` gives the services framework: any role and task user, and write on
/// `/services` in coord, where it keeps all its state (`services::paths`).
pub const SERVICES_POLICY: &str = r#"description = "the services framework of drover local"

[framework]
roles = ["*"]
task_users = ["*"]

[[coord]]
prefix = "/services"
access = "write"
"#;

/// The tokens of a local cluster with ACLs, kept as files under `DATA/acl/` (0600) so that a
/// restart on the same `--data-dir` finds them (a secret cannot be read back from the masters).
#[derive(Clone, Debug)]
pub struct ClusterTokens {
    /// The bootstrap (management) token: what `export DROVER_TOKEN=` prints.
    pub management: drover_security::Secret,
    /// The services framework's (policy `services`).
    pub services: drover_security::Secret,
}

/// How the cluster looked once ready.
pub struct Ready {
    pub state: v1::ClusterState,
    pub elapsed: Duration,
}

impl LocalCluster {
    /// Checks the config and the ports, creates the data dir and starts the masters. The agents
    /// and the framework start in `wait_ready`, once a master leads. `notify` gets a line for
    /// each thing worth telling the person watching (still waiting, a child died, restarted).
    pub fn start(
        config: LocalConfig,
        notify: Box<dyn Fn(&str) + Send>,
    ) -> anyhow::Result<LocalCluster> {
        config.validate()?;
        for (port, who) in config.listen_ports() {
            if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                bail!(
                    "port {port} ({who}) is not free on 127.0.0.1: {e}; pick another --base-port \
                     (drover local uses {} to {})",
                    config.base_port,
                    config.agent_port(config.agents)
                );
            }
        }
        let exe = std::env::current_exe().context("cannot find the drover executable")?;
        let data = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("--data-dir: cannot create {}", dir.display()))?;
                let dir = dir
                    .canonicalize()
                    .with_context(|| format!("--data-dir: cannot resolve {}", dir.display()))?;
                DataDir::Given(dir)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("drover-local-")
                    .tempdir()
                    .context("cannot create a temp dir for the cluster's data")?;
                // Canonical, so the sweep's path comparisons hold (e.g. a symlinked /tmp).
                let dir = t
                    .path()
                    .canonicalize()
                    .context("cannot resolve the temp dir")?;
                DataDir::Temp(t, dir)
            }
        };
        let logs = data.path().join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .context("cannot watch for exiting children (SIGCHLD)")?;
        let tls = if config.tls {
            Some(crate::tls::throwaway(
                &data.path().join("tls"),
                config.masters as usize,
                config.agents as usize,
            )?)
        } else {
            None
        };
        let mut cluster = LocalCluster {
            tls,
            config,
            data,
            exe,
            members: Vec::new(),
            sigchld,
            stopped: false,
            notify,
            tokens: None,
        };
        // From here on, dropping `cluster` cleans up whatever was started.
        let peers = (1..=cluster.config.masters)
            .map(|id| format!("{id}=127.0.0.1:{}", cluster.config.master_port(id)))
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=cluster.config.masters {
            let dir = cluster.dir().join(format!("master-{id}"));
            let listen = format!("127.0.0.1:{}", cluster.config.master_port(id));
            let mut args = process::master_args(id, &listen, &dir);
            args.extend([
                "--http".into(),
                format!("127.0.0.1:{}", cluster.config.master_http_port(id)).into(),
            ]);
            if cluster.config.masters > 1 {
                args.extend(["--peers".into(), peers.clone().into()]);
                // Several masters share this machine: one async worker each avoids
                // cross-thread wakeups (see `ensemble`).
                args.extend(["--worker-threads".into(), "1".into()]);
            }
            if let Some(tls) = &cluster.tls {
                args.extend(
                    tls.args(&format!("master-{id}"))
                        .into_iter()
                        .map(OsString::from),
                );
                // Secure by default: with certificates come ACLs (tokens, default deny).
                args.push("--acl".into());
            }
            args.extend(cluster.config.master_args.iter().map(OsString::from));
            cluster.spawn(&format!("master-{id}"), Role::Master, args, Vec::new())?;
        }
        Ok(cluster)
    }

    /// The cluster's certificates, when it runs TLS.
    pub fn tls(&self) -> Option<&crate::tls::ClusterTls> {
        self.tls.as_ref()
    }

    /// The operator's TLS material, for talking to this cluster.
    pub fn client_tls(&self) -> Option<&drover_security::TlsConfig> {
        self.tls.as_ref().map(|t| &t.operator)
    }

    /// The management token, once the cluster is up (ACLs are on with TLS).
    pub fn token(&self) -> Option<&drover_security::Secret> {
        self.tokens.as_ref().map(|t| &t.management)
    }

    /// The data dir (canonical).
    pub fn dir(&self) -> &Path {
        self.data.path()
    }

    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    /// Whether the data dir goes away with the cluster.
    pub fn is_temp(&self) -> bool {
        matches!(self.data, DataDir::Temp(..))
    }

    pub fn master_addrs(&self) -> Vec<String> {
        self.config.master_addrs()
    }

    fn agent_work_dir(&self, n: u32) -> PathBuf {
        self.dir().join(format!("agent-{n}"))
    }

    fn spawn(
        &mut self,
        name: &str,
        role: Role,
        args: Vec<OsString>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let log = self.dir().join("logs").join(format!("{name}.log"));
        let child = self.start_child(name, &args, &env, &log)?;
        self.members.push(Member {
            name: name.to_string(),
            role,
            args,
            env,
            child: Some(child),
            log,
            deaths: Default::default(),
            restart_at: None,
        });
        Ok(())
    }

    fn start_child(
        &self,
        name: &str,
        args: &[OsString],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let child = process::spawn(Spawn {
            exe: &self.exe,
            args: args.to_vec(),
            log,
            log_filter: &self.config.log_filter,
            die_with_parent: true,
            env: env.to_vec(),
        })
        .with_context(|| format!("cannot start {name}"))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(child)
    }

    fn spawn_agents_and_framework(&mut self) -> anyhow::Result<()> {
        let masters = self.master_addrs().join(",");
        for n in 1..=self.config.agents {
            let (lo, hi) = self.config.agent_task_ports(n);
            let mut args: Vec<OsString> = vec![
                "agent".into(),
                "--masters".into(),
                masters.clone().into(),
                "--listen".into(),
                format!("127.0.0.1:{}", self.config.agent_port(n)).into(),
                "--work-dir".into(),
                self.agent_work_dir(n).into(),
                "--hostname".into(),
                format!("127.0.0.{n}").into(),
                "--ports".into(),
                format!("{lo}-{hi}").into(),
            ];
            if let Some(cpus) = &self.config.agent_cpus {
                args.extend(["--cpus".into(), cpus.into()]);
            }
            if let Some(mem) = &self.config.agent_mem {
                args.extend(["--mem".into(), mem.into()]);
            }
            if let Some(tls) = &self.tls {
                args.extend(
                    tls.args(&format!("agent-{n}"))
                        .into_iter()
                        .map(OsString::from),
                );
            }
            args.extend(self.config.agent_args.iter().map(OsString::from));
            self.spawn(&format!("agent-{n}"), Role::Agent, args, Vec::new())?;
        }
        // Every agent runs on this machine, under its own host name: health checks go to
        // 127.0.0.1, which reaches tasks that listen on loopback only too.
        let mut args: Vec<OsString> = vec![
            "services".into(),
            "--masters".into(),
            masters.into(),
            "--check-host".into(),
            "127.0.0.1".into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend(tls.args("framework").into_iter().map(OsString::from));
        }
        args.extend(self.config.services_args.iter().map(OsString::from));
        let env = match &self.tokens {
            Some(t) => vec![("DROVER_TOKEN".to_string(), t.services.expose().to_string())],
            None => Vec::new(),
        };
        self.spawn("services", Role::Services, args, env)
    }

    /// Reaps children that exited; the first one found is an error naming it, with the end of
    /// its log.
    fn check_children(&mut self) -> anyhow::Result<()> {
        for m in &mut self.members {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait().context("cannot check a child process")? {
                m.child = None;
                bail!(
                    "{} exited unexpectedly ({status}); the end of its log {}:\n{}",
                    m.name,
                    m.log.display(),
                    process::log_tail(&m.log, LOG_TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    /// Waits until a master leads, then starts the agents and the framework and waits until
    /// every agent is registered and reachable and the framework subscribed. Fails at once if a
    /// child exits, and after `ready_timeout` saying what is missing.
    pub async fn wait_ready(&mut self) -> anyhow::Result<Ready> {
        let started = Instant::now();
        let deadline = started + self.config.ready_timeout;
        let addrs = self.master_addrs();
        let mut last_error = String::new();
        let mut told = false;
        loop {
            self.check_children()?;
            // With ACLs, the tokens come first: nothing else answers without one.
            if self.tls.is_some() && self.tokens.is_none() {
                match self.make_tokens(&addrs).await {
                    Ok(tokens) => self.tokens = Some(tokens),
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            if self.tls.is_none() || self.tokens.is_some() {
                match get_state(
                    &addrs,
                    self.config.rpc_timeout,
                    self.client_tls(),
                    self.token(),
                )
                .await
                {
                    Ok(_) => break,
                    Err(e) => last_error = format!("{e:#}"),
                }
            }
            self.progress(
                started,
                &mut told,
                &format!("no master leads yet ({last_error})"),
            );
            if Instant::now() >= deadline {
                bail!(
                    "no master leads after {:?} ({last_error}); logs are in {}",
                    self.config.ready_timeout,
                    self.dir().join("logs").display()
                );
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
        self.spawn_agents_and_framework()?;
        let agents: Vec<String> = (1..=self.config.agents)
            .map(|n| format!("127.0.0.1:{}", self.config.agent_port(n)))
            .collect();
        loop {
            self.check_children()?;
            let missing = match get_state(
                &addrs,
                self.config.rpc_timeout,
                self.client_tls(),
                self.token(),
            )
            .await
            {
                Ok(state) => {
                    let missing = missing_members(&state, &agents);
                    if missing.is_empty() {
                        return Ok(Ready {
                            state,
                            elapsed: started.elapsed(),
                        });
                    }
                    missing.join(", ")
                }
                Err(e) => format!("{e:#}"),
            };
            self.progress(started, &mut told, &missing);
            if Instant::now() >= deadline {
                bail!(
                    "the cluster did not come up within {:?}: {missing}; logs are in {}",
                    self.config.ready_timeout,
                    self.dir().join("logs").display()
                );
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// The cluster's tokens: read from `DATA/acl/` if an earlier run made them, else the
    /// bootstrap token (`AclApi.Bootstrap`), the `services` policy and the framework's token,
    /// each saved (0600) as soon as it exists. Fails (to be retried) while no master answers.
    async fn make_tokens(&self, addrs: &[String]) -> anyhow::Result<ClusterTokens> {
        use drover_security::Secret;
        let dir = self.dir().join("acl");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let management_file = dir.join("management.token");
        let services_file = dir.join("services.token");
        let timeout = self.config.rpc_timeout;
        let tls = self.client_tls().cloned();
        let management = match read_token(&management_file)? {
            Some(t) => t,
            None => {
                let created = acl_call(addrs, timeout, tls.clone(), None, |mut c| async move {
                    c.bootstrap(v1::BootstrapRequest {}).await
                })
                .await
                .map_err(|e| {
                    if e.to_string().contains("already bootstrapped") {
                        anyhow::anyhow!(
                            "the masters in {} were bootstrapped by an earlier run, but {} is \
                             gone: the management token cannot be read back; start with a new \
                             --data-dir",
                            self.dir().display(),
                            management_file.display()
                        )
                    } else {
                        e
                    }
                })?;
                let secret = Secret::parse(&created.secret)
                    .map_err(|e| anyhow::anyhow!("the bootstrap token: {e}"))?;
                write_token(&management_file, &secret)?;
                secret
            }
        };
        let services = match read_token(&services_file)? {
            Some(t) => t,
            None => {
                let policy = v1::ApplyPolicyRequest {
                    name: "services".into(),
                    text: SERVICES_POLICY.into(),
                };
                acl_call(addrs, timeout, tls.clone(), Some(&management), |mut c| {
                    let r = policy.clone();
                    async move { c.apply_policy(r).await }
                })
                .await?;
                let request = v1::CreateTokenRequest {
                    name: "services".into(),
                    policies: vec!["services".into()],
                    r#type: "client".into(),
                    ttl_ms: 0,
                };
                let created = acl_call(addrs, timeout, tls, Some(&management), |mut c| {
                    let r = request.clone();
                    async move { c.create_token(r).await }
                })
                .await?;
                let secret = Secret::parse(&created.secret)
                    .map_err(|e| anyhow::anyhow!("the services token: {e}"))?;
                write_token(&services_file, &secret)?;
                secret
            }
        };
        Ok(ClusterTokens {
            management,
            services,
        })
    }

    /// Says once, after `progress_after`, what the cluster is still waiting for. A framework
    /// standing by is the usual reason after an unclean stop: the killed copy's coord session
    /// (and its leadership) lasts until its timeout.
    fn progress(&self, started: Instant, told: &mut bool, missing: &str) {
        if *told || started.elapsed() < self.config.progress_after {
            return;
        }
        *told = true;
        (self.notify)(&format!(
            "still waiting after {:?}: {missing} (logs in {}; giving up after {:?})",
            self.config.progress_after,
            self.dir().join("logs").display(),
            self.config.ready_timeout
        ));
    }

    /// Watches the children until one keeps dying: a child that exits is started again with
    /// the same command line (a master on its data dir, an agent on its work dir) after the
    /// policy's backoff, and each death and restart goes to `notify`. Returns the error that
    /// ends the cluster: a child that died more than `deaths_max` times within `window`, with
    /// the end of its log. Cancel-safe: dropping the future between events loses nothing.
    pub async fn supervise(&mut self) -> anyhow::Error {
        loop {
            match self.supervise_step().await {
                Ok(Some(event)) => (self.notify)(&describe(&event)),
                Ok(None) => {}
                Err(e) => return e,
            }
        }
    }

    /// Reaps and schedules, restarts what is due, or waits for the next exit or restart time.
    async fn supervise_step(&mut self) -> anyhow::Result<Option<Supervised>> {
        let now = Instant::now();
        let policy = self.config.restart.clone();
        for m in &mut self.members {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            let Some(status) = child.try_wait().context("cannot check a child process")? else {
                continue;
            };
            m.child = None;
            while m
                .deaths
                .front()
                .is_some_and(|&t| now.duration_since(t) > policy.window)
            {
                m.deaths.pop_front();
            }
            m.deaths.push_back(now);
            let deaths = m.deaths.len() as u32;
            if policy.deaths_max == 0 {
                bail!(
                    "{} exited unexpectedly ({status}); the end of its log {}:\n{}",
                    m.name,
                    m.log.display(),
                    process::log_tail(&m.log, LOG_TAIL_LINES)
                );
            }
            if deaths > policy.deaths_max {
                bail!(
                    "{} keeps dying: {deaths} exits within {:?}, the last {status}; the end of \
                     its log {}:\n{}",
                    m.name,
                    policy.window,
                    m.log.display(),
                    process::log_tail(&m.log, LOG_TAIL_LINES)
                );
            }
            let after = policy
                .backoff_min
                .saturating_mul(1 << (deaths - 1).min(16))
                .min(policy.backoff_max);
            m.restart_at = Some(now + after);
            return Ok(Some(Supervised::Died {
                name: m.name.clone(),
                status,
                after,
                deaths,
            }));
        }
        let due = self
            .members
            .iter()
            .position(|m| m.restart_at.is_some_and(|at| at <= now));
        if let Some(i) = due {
            let (name, args, env, log) = {
                let m = &self.members[i];
                (m.name.clone(), m.args.clone(), m.env.clone(), m.log.clone())
            };
            let child = self.start_child(&name, &args, &env, &log)?;
            let m = &mut self.members[i];
            m.child = Some(child);
            m.restart_at = None;
            return Ok(Some(Supervised::Restarted { name }));
        }
        let next = self.members.iter().filter_map(|m| m.restart_at).min();
        // Every exit raises SIGCHLD after the child became reapable; looking before each wait
        // leaves no gap.
        tokio::select! {
            got = self.sigchld.recv() => {
                if got.is_none() {
                    bail!("cannot watch for exiting children any more");
                }
            }
            _ = sleep_until(next) => {}
        }
        Ok(None)
    }

    /// Stops everything in order: the framework, the agents, the task supervisors (and tasks)
    /// under the agents' work dirs, the masters. Each phase sends SIGTERM and waits up to
    /// `stop_timeout` (or until `hurry` resolves, e.g. a second Ctrl-C) before SIGKILL. Errors
    /// if some task process survived even SIGKILL.
    pub async fn stop(
        mut self,
        hurry: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<()> {
        let mut hurried = false;
        for role in [Role::Services, Role::Agent] {
            self.stop_role(role, hurry, &mut hurried).await;
        }
        let swept = self.sweep_tasks(hurry, &mut hurried).await;
        self.stop_role(Role::Master, hurry, &mut hurried).await;
        self.stopped = true;
        swept
    }

    async fn stop_role(
        &mut self,
        role: Role,
        hurry: &mut (impl Future<Output = ()> + Unpin),
        hurried: &mut bool,
    ) {
        let signal = if *hurried {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        for m in self.members.iter().filter(|m| m.role == role) {
            if let Some(pgid) = m.pgid() {
                let _ = killpg(pgid, signal);
            }
        }
        let deadline = Instant::now() + self.config.stop_timeout;
        loop {
            let mut running = false;
            for m in self.members.iter_mut().filter(|m| m.role == role) {
                if let Some(child) = m.child.as_mut() {
                    match child.try_wait() {
                        Ok(None) => running = true,
                        Ok(Some(_)) | Err(_) => m.child = None,
                    }
                }
            }
            if !running {
                return;
            }
            if *hurried || Instant::now() >= deadline {
                for m in self.members.iter_mut().filter(|m| m.role == role) {
                    if let (Some(pgid), Some(mut child)) = (m.pgid(), m.child.take()) {
                        if !*hurried {
                            (self.notify)(&format!(
                                "{} still runs {:?} after SIGTERM; SIGKILL",
                                m.name, self.config.stop_timeout
                            ));
                        }
                        let _ = killpg(pgid, Signal::SIGKILL);
                        let _ = child.wait();
                    }
                }
                return;
            }
            tokio::select! {
                _ = &mut *hurry, if !*hurried => *hurried = true,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// The agents leave their tasks' supervisors running when they stop (agent recovery needs
    /// them): SIGTERM to every supervisor and task under the agents' work dirs (a supervisor then
    /// kills its task's whole process group), SIGKILL to what is left after `stop_timeout`.
    async fn sweep_tasks(
        &mut self,
        hurry: &mut (impl Future<Output = ()> + Unpin),
        hurried: &mut bool,
    ) -> anyhow::Result<()> {
        let dirs: Vec<PathBuf> = (1..=self.config.agents)
            .map(|n| self.agent_work_dir(n))
            .collect();
        let ours: Vec<i32> = self
            .members
            .iter()
            .filter_map(|m| m.pgid().map(Pid::as_raw))
            .collect();
        let found = || processes_under(&dirs, &ours);
        let first = if *hurried {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        for pid in found() {
            let _ = kill(Pid::from_raw(pid), first);
        }
        let deadline = Instant::now() + self.config.stop_timeout;
        while !*hurried && Instant::now() < deadline && !found().is_empty() {
            tokio::select! {
                _ = &mut *hurry => *hurried = true,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        let left = found();
        if left.is_empty() {
            return Ok(());
        }
        if !*hurried {
            (self.notify)(&format!(
                "{} task processes still run {:?} after SIGTERM; SIGKILL",
                left.len(),
                self.config.stop_timeout
            ));
        }
        for &pid in &left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // SIGKILL cannot be caught; only a process stuck in the kernel takes a moment.
        let deadline = Instant::now() + self.config.stop_timeout;
        loop {
            let left = found();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} task processes under {} survived SIGKILL: pids {left:?}",
                    left.len(),
                    self.dir().display()
                );
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Not stopped in order (an error or a panic on the way): everything dies at once.
        let dirs: Vec<PathBuf> = (1..=self.config.agents)
            .map(|n| self.agent_work_dir(n))
            .collect();
        for m in &mut self.members {
            if let (Some(pgid), Some(mut child)) = (m.pgid(), m.child.take()) {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        let deadline = Instant::now() + self.config.stop_timeout;
        loop {
            let left = processes_under(&dirs, &[]);
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(self.config.poll_interval);
        }
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One line for the person watching.
pub fn describe(event: &Supervised) -> String {
    match event {
        Supervised::Died {
            name,
            status,
            after,
            deaths,
        } => format!(
            "{name} exited ({status}); starting it again in {} ms (exit {deaths} in the restart \
             window)",
            after.as_millis()
        ),
        Supervised::Restarted { name } => format!("{name} started again"),
    }
}

/// What the cluster still lacks to be ready, by the leading master's state.
fn missing_members(state: &v1::ClusterState, agents: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    for addr in agents {
        let registered = state
            .agents
            .iter()
            .any(|a| a.reachable && a.agent.as_ref().is_some_and(|info| &info.address == addr));
        if !registered {
            missing.push(format!("agent {addr} not registered"));
        }
    }
    let subscribed = state.frameworks.iter().any(|f| {
        f.connected
            && f.framework
                .as_ref()
                .is_some_and(|info| info.name == SERVICES_FRAMEWORK_NAME)
    });
    if !subscribed {
        missing.push("the services framework not subscribed".into());
    }
    missing
}

/// `Operator.GetState` from the leading master: the masters are asked in turn (a follower
/// answers UNAVAILABLE); the last error when none answers.
pub async fn get_state(
    addrs: &[String],
    timeout: Duration,
    tls: Option<&drover_security::TlsConfig>,
    token: Option<&drover_security::Secret>,
) -> anyhow::Result<v1::ClusterState> {
    let transport = drover_client::Transport {
        tls: tls.cloned(),
        token: token.cloned(),
        ..drover_client::Transport::plaintext(timeout, timeout)
    };
    let mut last = None;
    for addr in addrs {
        let call = async {
            let channel = transport
                .with_credentials(transport.endpoint(addr)?.timeout(timeout).connect().await?);
            let mut client = OperatorClient::new(channel)
                .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
                .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX);
            let state = client.get_state(v1::GetStateRequest {}).await?;
            anyhow::Ok(state.into_inner())
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(state)) => return Ok(state),
            Ok(Err(e)) => last = Some(e.context(format!("master {addr}"))),
            Err(_) => {
                last = Some(anyhow::anyhow!(
                    "master {addr}: no answer within {timeout:?}"
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no master address")))
}

/// A saved token, if the file exists.
fn read_token(path: &Path) -> anyhow::Result<Option<drover_security::Secret>> {
    match std::fs::read_to_string(path) {
        Ok(text) => drover_security::Secret::parse(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Saves a token readable by this user only.
fn write_token(path: &Path, secret: &drover_security::Secret) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(secret.expose().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// One `AclApi` call, asking the masters in turn (any master serves it); the last error when
/// none answers.
/// A fresh ensemble's management token (`AclApi.Bootstrap`), retried for up to `wait` while its
/// masters elect a leader and load their ACL store (benches with TLS and tokens on).
pub(crate) async fn bootstrap_token(
    addrs: &[String],
    tls: Option<drover_security::TlsConfig>,
    wait: Duration,
) -> anyhow::Result<drover_security::Secret> {
    let deadline = Instant::now() + wait;
    loop {
        let answer = acl_call(
            addrs,
            Duration::from_secs(2),
            tls.clone(),
            None,
            |mut c| async move { c.bootstrap(v1::BootstrapRequest {}).await },
        )
        .await;
        match answer {
            Ok(created) => {
                return drover_security::Secret::parse(&created.secret)
                    .map_err(|e| anyhow::anyhow!("the bootstrap token: {e}"));
            }
            Err(e) if Instant::now() >= deadline => return Err(e.context("ACL bootstrap")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) async fn acl_call<T, F, Fut>(
    addrs: &[String],
    timeout: Duration,
    tls: Option<drover_security::TlsConfig>,
    token: Option<&drover_security::Secret>,
    mut rpc: F,
) -> anyhow::Result<T>
where
    F: FnMut(AclApiClient<drover_client::MasterChannel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let transport = drover_client::Transport {
        tls,
        token: token.cloned(),
        ..drover_client::Transport::plaintext(timeout, timeout)
    };
    let mut last = None;
    for addr in addrs {
        let call = async {
            let channel = transport.connect(addr).await?;
            let answer = rpc(AclApiClient::new(channel)).await?;
            anyhow::Ok(answer.into_inner())
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = Some(e.context(format!("master {addr}"))),
            Err(_) => {
                last = Some(anyhow::anyhow!(
                    "master {addr}: no answer within {timeout:?}"
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no master address")))
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot watch for Ctrl-C")?,
            term: signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_follow_the_base_port() {
        let mut c = LocalConfig::new();
        c.masters = 3;
        c.agents = 3;
        c.base_port = 6000;
        c.task_ports = (40000, 40099);
        assert_eq!(
            c.master_addrs(),
            ["127.0.0.1:6000", "127.0.0.1:6010", "127.0.0.1:6020"]
        );
        assert_eq!((c.master_http_port(1), c.master_http_port(3)), (6030, 6032));
        assert_eq!((c.agent_port(1), c.agent_port(3)), (6040, 6042));
        assert_eq!(c.agent_task_ports(1), (40000, 40032));
        assert_eq!(c.agent_task_ports(2), (40033, 40065));
        assert_eq!(
            c.agent_task_ports(3),
            (40066, 40099),
            "the last takes the rest"
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_configs_name_the_flag() {
        let err = |f: &dyn Fn(&mut LocalConfig)| {
            let mut c = LocalConfig::new();
            f(&mut c);
            c.validate().expect_err("invalid").to_string()
        };
        assert!(err(&|c| c.masters = 2).contains("--masters 2"));
        assert!(err(&|c| c.agents = 0).contains("--agents"));
        assert!(err(&|c| c.base_port = 65500).contains("--base-port"));
        assert!(err(&|c| c.task_ports = (5060, 5070)).contains("overlaps"));
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("31000-32999"), Ok((31000, 32999)));
        assert_eq!(parse_port_range("8080"), Ok((8080, 8080)));
        assert!(parse_port_range("2-1").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("a-b").is_err());
    }
}
