//! The per-task supervisor: one small synchronous process per task run (`drover supervise`).
//!
//! Duties, in order:
//! 1. Validate the spec (errors name the field) before touching anything.
//! 2. Block SIGTERM/SIGINT/SIGHUP/SIGCHLD and read them from a signalfd; become a child subreaper so
//!    every descendant that loses its parent becomes ours to kill and reap.
//! 3. Look up the task's user (`user`, see [`crate::privileges`]); create the sandbox, owned by
//!    that user (a user that cannot be used is a [`ExitStatus::FailedToStart`] naming it); write
//!    `supervisor.json`, detect isolation (logged once at start), create the task cgroup with its
//!    limits.
//! 4. Fork the task: in the child, before `exec`, `setsid` (own session and process group), join
//!    the cgroup, apply rlimits when there is no cgroup, become the task's user with its groups and
//!    without capabilities ([`TaskIdentity::enter`]; the cgroup and rlimits need root, so they come
//!    first), and only then ask for SIGKILL if the supervisor dies (a change of uid clears that
//!    request). stdout/stderr go to the sandbox files; env gets `HOME`, `USER`, `LOGNAME` (of the
//!    task's user; the spec's env may override them), `PORT0..`, `PORT`, `DROVER_TASK_ID`,
//!    `DROVER_RUN_ID`, `DROVER_SANDBOX` and `DROVER_AGENT_ID` on top of the spec's env and `PATH`;
//!    nothing else of the supervisor's environment leaks into the task.
//! 5. Wait. SIGTERM/SIGINT to the supervisor means kill: SIGTERM to the task's group, then SIGKILL
//!    to the group and the cgroup once the grace period is over. A second SIGTERM/SIGINT during
//!    the grace period ends it at once (the agent's way to apply a shorter kill grace).
//! 6. When the main process has exited (seen with `WNOWAIT`, so its pid — and thus its process
//!    group id — cannot be reused yet), SIGKILL the group, reap the main process, then sweep: kill
//!    whatever is left in the cgroup or among our children and reap it, until nothing is left; then
//!    remove the cgroup. No process of the task survives it.
//! 7. Write `exit.json` atomically, then return (the caller exits).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, kill, killpg, signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpid, getppid, setsid};
use serde::{Deserialize, Serialize};

use crate::isolation::{Isolation, IsolationError, IsolationPolicy, TaskCgroup};
use crate::limits::{
    ARGV_ENTRIES_MAX, CGROUP_PARENT_BYTES_MAX, CLEANUP_DEADLINE_MS, CPUS_MAX, ENV_VARS_MAX,
    GRACE_PERIOD_MS_MAX, MEM_BYTES_MIN, OOM_POLL_INTERVAL_MS_MAX, PORTS_PER_TASK_MAX,
};
use crate::privileges::TaskIdentity;
use crate::procfs;
use crate::sandbox::{
    ExitRecord, ExitStatus, Sandbox, SandboxError, SupervisorRecord, validate_component,
};

/// How often the final sweep re-checks for leftover processes.
const SWEEP_POLL: Duration = Duration::from_millis(10);
/// `PATH` for the task when the supervisor has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run: an argv (looked up in the task's `PATH`) or a string for `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskCommand {
    Argv(Vec<String>),
    Shell(String),
}

/// Everything a supervisor needs for one task run. Serializable so the agent can hand it to the
/// `drover supervise` process as a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorSpec {
    pub task_id: String,
    /// Distinguishes runs of one task id; the sandbox is `<work_dir>/sandboxes/<task_id>/<run_id>`.
    pub run_id: String,
    pub work_dir: PathBuf,
    pub command: TaskCommand,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Become `PORT0..PORT{n-1}`, and `PORT` = `PORT0`.
    #[serde(default)]
    pub ports: Vec<u16>,
    pub cpus: f64,
    pub mem_bytes: u64,
    /// Time between SIGTERM and SIGKILL when the task is killed.
    pub grace_period_ms: u64,
    /// How often the task's cgroup is checked for OOM kills while it runs. An OOM kill of any of
    /// its processes ends the whole task (cgroup v1 kills only the one process; the task may not
    /// notice). Unused under rlimits.
    #[serde(default = "default_oom_poll_interval_ms")]
    pub oom_poll_interval_ms: u64,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub isolation: IsolationPolicy,
    /// Name of the cgroup below the agent's own that holds all task cgroups.
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
    /// The user the task runs as (the supervisor must be root to switch); `None`: the
    /// supervisor's own user. Either way the task keeps no capabilities unless it runs as root.
    /// Which users are allowed is the agent's decision ([`crate::task_user`]), made before.
    #[serde(default)]
    pub user: Option<String>,
}

fn default_cgroup_parent() -> String {
    "drover".to_owned()
}

/// Default of [`SupervisorSpec::oom_poll_interval_ms`].
pub const OOM_POLL_INTERVAL_MS_DEFAULT: u64 = 100;

fn default_oom_poll_interval_ms() -> u64 {
    OOM_POLL_INTERVAL_MS_DEFAULT
}

/// Why a supervisor could not do its job. A task that merely fails to start is not an error: it is
/// recorded as [`ExitStatus::FailedToStart`].
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{op}")]
    Os {
        op: &'static str,
        #[source]
        source: Errno,
    },
    /// The exit record was written, but something of the task could not be removed.
    #[error("cleanup after the task failed")]
    Cleanup(#[source] IsolationError),
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> SupervisorError {
    move |source| SupervisorError::Os { op, source }
}

impl SupervisorSpec {
    /// Checks every field; the error names the first bad one. Returns the run's sandbox.
    pub fn validate(&self) -> Result<Sandbox, SupervisorError> {
        let bad = |field: &'static str, reason: String| {
            Err(SupervisorError::InvalidSpec { field, reason })
        };
        let sandbox =
            Sandbox::new(&self.work_dir, &self.task_id, &self.run_id).map_err(|e| match e {
                SandboxError::InvalidId { field, reason } => {
                    SupervisorError::InvalidSpec { field, reason }
                }
                other => SupervisorError::Sandbox(other),
            })?;
        if !self.work_dir.is_absolute() {
            return bad(
                "work_dir",
                format!("{} is not absolute", self.work_dir.display()),
            );
        }
        match &self.command {
            TaskCommand::Argv(argv) if argv.is_empty() => {
                return bad("command", "argv is empty".into());
            }
            TaskCommand::Argv(argv) if argv[0].is_empty() => {
                return bad("command", "argv[0] is empty".into());
            }
            TaskCommand::Argv(argv) if argv.len() > ARGV_ENTRIES_MAX => {
                return bad(
                    "command",
                    format!("{} argv entries, limit is {ARGV_ENTRIES_MAX}", argv.len()),
                );
            }
            TaskCommand::Argv(argv) if argv.iter().any(|a| a.contains('\0')) => {
                return bad("command", "argv contains NUL".into());
            }
            TaskCommand::Shell(s) if s.trim().is_empty() => {
                return bad("command", "shell command is empty".into());
            }
            TaskCommand::Shell(s) if s.contains('\0') => {
                return bad("command", "shell command contains NUL".into());
            }
            _ => {}
        }
        if self.env.len() > ENV_VARS_MAX {
            return bad(
                "env",
                format!("{} variables, limit is {ENV_VARS_MAX}", self.env.len()),
            );
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return bad("env", format!("{k:?} is not a valid variable"));
            }
            if is_reserved_env(k) {
                return bad("env", format!("{k} is set by the supervisor"));
            }
        }
        if self.ports.len() > PORTS_PER_TASK_MAX {
            return bad(
                "ports",
                format!("{} ports, limit is {PORTS_PER_TASK_MAX}", self.ports.len()),
            );
        }
        if !(self.cpus.is_finite() && self.cpus > 0.0 && self.cpus <= CPUS_MAX) {
            return bad("cpus", format!("{} is not in (0, {CPUS_MAX}]", self.cpus));
        }
        if self.mem_bytes < MEM_BYTES_MIN {
            return bad(
                "mem_bytes",
                format!("{} is below the minimum {MEM_BYTES_MIN}", self.mem_bytes),
            );
        }
        if !(1..=OOM_POLL_INTERVAL_MS_MAX).contains(&self.oom_poll_interval_ms) {
            return bad(
                "oom_poll_interval_ms",
                format!(
                    "{} is not in 1..={OOM_POLL_INTERVAL_MS_MAX}",
                    self.oom_poll_interval_ms
                ),
            );
        }
        if self.grace_period_ms > GRACE_PERIOD_MS_MAX {
            return bad(
                "grace_period_ms",
                format!("{} exceeds {GRACE_PERIOD_MS_MAX}", self.grace_period_ms),
            );
        }
        if let Some(agent) = &self.agent_id
            && (agent.is_empty() || agent.contains('\0'))
        {
            return bad("agent_id", "must be non-empty without NUL".into());
        }
        if let Some(user) = &self.user
            && let Err(e) = drover_types::UserName::parse(user)
        {
            return bad("user", e.to_string());
        }
        validate_component(
            "cgroup_parent",
            &self.cgroup_parent,
            CGROUP_PARENT_BYTES_MAX,
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '_',
        )
        .map_err(|e| match e {
            SandboxError::InvalidId { field, reason } => {
                SupervisorError::InvalidSpec { field, reason }
            }
            other => SupervisorError::Sandbox(other),
        })?;
        Ok(sandbox)
    }

    /// The variables the task sees: `PATH` and the user's (`user_env`), the spec's env, then
    /// the supervisor's own.
    fn task_env(
        &self,
        sandbox: &Sandbox,
        user_env: Vec<(String, String)>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
        );
        env.extend(user_env);
        env.extend(self.env.clone());
        for (i, port) in self.ports.iter().enumerate() {
            env.insert(format!("PORT{i}"), port.to_string());
        }
        if let Some(first) = self.ports.first() {
            env.insert("PORT".to_owned(), first.to_string());
        }
        env.insert("DROVER_TASK_ID".to_owned(), self.task_id.clone());
        env.insert("DROVER_RUN_ID".to_owned(), self.run_id.clone());
        env.insert(
            "DROVER_SANDBOX".to_owned(),
            sandbox.task_dir().display().to_string(),
        );
        if let Some(agent) = &self.agent_id {
            env.insert("DROVER_AGENT_ID".to_owned(), agent.clone());
        }
        env
    }
}

pub(crate) fn is_reserved_env(key: &str) -> bool {
    key.starts_with("DROVER_")
        || key == "PORT"
        || key
            .strip_prefix("PORT")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Supervises one task run to its end and returns how it ended (also written to `exit.json`).
/// Call it from a process of its own: it blocks signals, becomes a child subreaper and reaps every
/// child of the calling process.
#[tracing::instrument(skip_all, fields(task_id = %spec.task_id, run_id = %spec.run_id))]
pub fn run_supervisor(spec: SupervisorSpec) -> Result<ExitRecord, SupervisorError> {
    let sandbox = spec.validate()?;

    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).map_err(os("block signals"))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(os("signalfd"))?;
    prctl::set_child_subreaper(true).map_err(os("set child subreaper"))?;

    let identity = TaskIdentity::resolve(spec.user.as_deref());
    let owner = identity.as_ref().ok().and_then(TaskIdentity::sandbox_owner);
    let (stdout, stderr) = sandbox.create(owner)?;
    let isolation = Isolation::select(spec.isolation);
    tracing::info!(isolation = ?isolation.kind(), description = isolation.description(), "supervisor starting");

    let me = getpid();
    let started_at_unix_ms = now_unix_ms();
    let mut record = SupervisorRecord {
        supervisor_pid: me.as_raw(),
        supervisor_start_ticks: procfs::stat(me.as_raw())
            .map(|s| s.start_ticks)
            .unwrap_or(0),
        task_pid: None,
        task_pgid: None,
        started_at_unix_ms,
        isolation: isolation.kind(),
        cgroups: Vec::new(),
    };
    sandbox.write_supervisor(&record)?;

    let failed = |reason: String| -> Result<ExitRecord, SupervisorError> {
        tracing::warn!(%reason, "task failed to start");
        let exit = ExitRecord {
            status: ExitStatus::FailedToStart(reason),
            started_at_unix_ms,
            finished_at_unix_ms: now_unix_ms(),
            task_pid: None,
            isolation: isolation.kind(),
            kill_escalated: false,
        };
        sandbox.write_exit(&exit)?;
        Ok(exit)
    };

    let identity = match identity {
        Ok(identity) => identity,
        Err(reason) => return failed(reason),
    };
    let who = identity.to_string();
    tracing::info!(user = %who, "the task runs as");

    let cgroup_name = format!("{}.{}", spec.task_id, spec.run_id);
    let cgroup = match isolation.create_task_cgroup(
        &spec.cgroup_parent,
        &cgroup_name,
        spec.mem_bytes,
        spec.cpus,
    ) {
        Ok(cg) => cg,
        Err(e) => return failed(error_chain(&e)),
    };

    let mut command = match &spec.command {
        TaskCommand::Argv(argv) => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        TaskCommand::Shell(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
    };
    command
        .env_clear()
        .envs(spec.task_env(&sandbox, identity.env()))
        .current_dir(sandbox.task_dir())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let join_fds = cgroup
        .as_ref()
        .map(TaskCgroup::join_fds)
        .unwrap_or_default();
    let data_limit = cgroup.is_none().then_some(spec.mem_bytes);
    // SAFETY: runs in the forked child before exec; it only makes async-signal-safe syscalls
    // (setsid, sigprocmask, signal, write, setrlimit, prctl, set*id, cap*, getppid) and allocates
    // nothing (join_fds and identity, with its group list, are computed before and moved in).
    unsafe {
        command.pre_exec(move || {
            setsid()?;
            // A clean signal state: the supervisor blocks the signals it reads from its signalfd,
            // and whoever started it may have ignored some (ignored dispositions survive exec).
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            for sig in [
                Signal::SIGHUP,
                Signal::SIGINT,
                Signal::SIGQUIT,
                Signal::SIGPIPE,
                Signal::SIGTERM,
            ] {
                signal(sig, SigHandler::SigDfl)?;
            }
            for &fd in &join_fds {
                // "0" moves the writing process itself; the fd was opened before fork.
                nix::unistd::write(BorrowedFd::borrow_raw(fd), b"0")?;
            }
            if let Some(bytes) = data_limit {
                setrlimit(Resource::RLIMIT_DATA, bytes, bytes)?;
            }
            // Last of what needs privileges: after it the child is the task's user.
            identity.enter()?;
            // After the switch: a change of uid or gid clears the death signal.
            prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != me {
                // The supervisor died before the death signal was armed.
                return Err(io::Error::other("supervisor exited"));
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            if let Some(cg) = &cgroup {
                let _ = cg.kill_and_remove();
            }
            return failed(format!("start the task as {who}: {e}"));
        }
    };
    let task =
        Pid::from_raw(i32::try_from(child.id()).map_err(|_| os("child pid")(Errno::EOVERFLOW))?);
    // `child` is not waited through std: the supervisor reaps with waitid/waitpid itself.
    drop(child);
    tracing::info!(task_pid = task.as_raw(), "task started");
    record.task_pid = Some(task.as_raw());
    record.task_pgid = Some(task.as_raw());
    record.cgroups = cgroup
        .as_ref()
        .map(|c| c.dirs().to_vec())
        .unwrap_or_default();
    sandbox.write_supervisor(&record)?;

    let waited = wait_for_task(
        task,
        &signal_fd,
        spec.grace_period_ms,
        spec.oom_poll_interval_ms,
        cgroup.as_ref(),
    )?;

    // The main process is a zombie: its pid, and so its process group id, are still ours.
    let _ = killpg(task, Signal::SIGKILL);
    let main_status = loop {
        match waitpid(task, None) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(os("reap task"))?,
        }
    };
    let sweep = sweep(me, cgroup.as_ref());

    let oom = cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
    let status = if oom {
        ExitStatus::OomKilled
    } else if waited.kill_requested {
        ExitStatus::Killed
    } else {
        match main_status {
            WaitStatus::Exited(_, code) => ExitStatus::Exited(code),
            WaitStatus::Signaled(_, sig, _) => ExitStatus::Signaled(sig as i32),
            other => unreachable!("waitpid without WUNTRACED returned {other:?}"),
        }
    };
    let cleanup = sweep.and_then(|()| cgroup.as_ref().map_or(Ok(()), TaskCgroup::kill_and_remove));
    let exit = ExitRecord {
        status,
        started_at_unix_ms,
        finished_at_unix_ms: now_unix_ms(),
        task_pid: Some(task.as_raw()),
        isolation: isolation.kind(),
        kill_escalated: waited.kill_escalated,
    };
    sandbox.write_exit(&exit)?;
    tracing::info!(status = ?exit.status, "task finished");
    if let Err(e) = cleanup {
        tracing::error!(error = %error_chain(&e), "processes of the task may have survived it");
        return Err(SupervisorError::Cleanup(e));
    }
    Ok(exit)
}

struct Waited {
    kill_requested: bool,
    kill_escalated: bool,
}

/// Waits until the main task process has exited (leaving it unreaped), handling kill requests.
/// Under a cgroup, an OOM kill of any process of the task ends the whole task.
fn wait_for_task(
    task: Pid,
    signal_fd: &SignalFd,
    grace_period_ms: u64,
    oom_poll_interval_ms: u64,
    cgroup: Option<&TaskCgroup>,
) -> Result<Waited, SupervisorError> {
    let mut waited = Waited {
        kill_requested: false,
        kill_escalated: false,
    };
    let mut kill_deadline: Option<Instant> = None;
    let mut oom_handled = false;
    let oom_poll = Duration::from_millis(oom_poll_interval_ms);
    loop {
        if main_exited(task)? {
            return Ok(waited);
        }
        if let Some(cg) = cgroup
            && !oom_handled
            && cg.oom_kills() > 0
        {
            // The kernel killed one process of the task (cgroup v1 picks one; v2 without
            // memory.oom.group too): the task as a whole ran out of memory, so it ends here.
            tracing::warn!("the task ran out of memory; killing all of it");
            oom_handled = true;
            let _ = killpg(task, Signal::SIGKILL);
            cg.signal_all(Signal::SIGKILL);
        }
        if let Some(deadline) = kill_deadline
            && !waited.kill_escalated
            && Instant::now() >= deadline
        {
            tracing::info!("grace period over, sending SIGKILL");
            waited.kill_escalated = true;
            let _ = killpg(task, Signal::SIGKILL);
            if let Some(cg) = cgroup {
                cg.signal_all(Signal::SIGKILL);
            }
        }
        let mut wait = match kill_deadline {
            // Round up so we do not spin on a sub-millisecond remainder.
            Some(d) if !waited.kill_escalated => {
                Some(d.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
            }
            _ => None,
        };
        if cgroup.is_some() && !oom_handled {
            wait = Some(wait.map_or(oom_poll, |w| w.min(oom_poll)));
        }
        let timeout = match wait {
            Some(w) => PollTimeout::try_from(w).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(os("poll signalfd")(e)),
        }
        while let Some(info) = signal_fd.read_signal().map_err(os("read signalfd"))? {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            let kill_signal = signo == Signal::SIGTERM as i32 || signo == Signal::SIGINT as i32;
            if kill_signal && !waited.kill_requested {
                tracing::info!(
                    grace_period_ms,
                    "kill requested, sending SIGTERM to the task"
                );
                waited.kill_requested = true;
                kill_deadline = Some(Instant::now() + Duration::from_millis(grace_period_ms));
                let _ = killpg(task, Signal::SIGTERM);
            } else if kill_signal && !waited.kill_escalated {
                // A second kill request ends the grace period now: the agent uses it to honour a
                // kill grace shorter than the one this run was started with.
                tracing::info!("second kill request, grace period cut short");
                kill_deadline = Some(Instant::now());
            }
            // SIGCHLD: the loop re-checks; SIGHUP: ignored, the supervisor outlives its terminal.
        }
    }
}

/// True once the main process has exited; reaps any other (orphaned, adopted) child on the way.
/// Never reaps the main process itself (`WNOWAIT`), so its pid stays reserved.
fn main_exited(task: Pid) -> Result<bool, SupervisorError> {
    loop {
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        match peek {
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Ok(status) => match status.pid() {
                Some(pid) if pid == task => return Ok(true),
                Some(pid) => {
                    let _ = waitpid(pid, None);
                }
                None => return Ok(false),
            },
            Err(Errno::EINTR) => {}
            // No children at all: the main process is gone (cannot happen before we reap it).
            Err(Errno::ECHILD) => return Ok(true),
            Err(e) => return Err(os("waitid")(e)),
        }
    }
}

/// Kills and reaps every leftover process of the task: cgroup members and our children (orphans
/// re-parented to us as subreaper), until none is left or the cleanup deadline passes.
fn sweep(me: Pid, cgroup: Option<&TaskCgroup>) -> Result<(), IsolationError> {
    let deadline = Instant::now() + Duration::from_millis(CLEANUP_DEADLINE_MS);
    loop {
        let mut left = cgroup.map_or(0, |c| c.signal_all(Signal::SIGKILL));
        for child in procfs::children_of(me.as_raw()) {
            // Our own children: their pids cannot be reused before we reap them.
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
            left += 1;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let path = cgroup
                .and_then(|c| c.dirs().first().cloned())
                .unwrap_or_default();
            return Err(IsolationError::CgroupBusy { path });
        }
        thread::sleep(SWEEP_POLL);
    }
}

/// `e` and each of its sources, joined by `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SupervisorSpec {
        SupervisorSpec {
            task_id: "t1".into(),
            run_id: "r1".into(),
            work_dir: PathBuf::from("/tmp/w"),
            command: TaskCommand::Shell("true".into()),
            env: BTreeMap::new(),
            ports: vec![31000, 31001],
            cpus: 0.5,
            mem_bytes: 64 << 20,
            grace_period_ms: 1000,
            oom_poll_interval_ms: OOM_POLL_INTERVAL_MS_DEFAULT,
            agent_id: Some("a1".into()),
            isolation: IsolationPolicy::Auto,
            cgroup_parent: "drover".into(),
            user: None,
        }
    }

    #[test]
    fn task_env_has_ports_and_ids_and_nothing_reserved_can_be_overridden() {
        // Proves PORT0.., PORT, DROVER_* are set by the supervisor and a spec cannot spoof them.
        let s = spec();
        let sb = s.validate().unwrap();
        let env = s.task_env(&sb, vec![("HOME".into(), "/home/u".into())]);
        assert_eq!(env["PORT0"], "31000");
        assert_eq!(env["PORT1"], "31001");
        assert_eq!(env["PORT"], "31000");
        assert_eq!(env["DROVER_TASK_ID"], "t1");
        assert_eq!(env["DROVER_AGENT_ID"], "a1");
        assert_eq!(env["HOME"], "/home/u");
        assert_eq!(env["DROVER_SANDBOX"], "/tmp/w/sandboxes/t1/r1/sandbox");
        let mut own_home = spec();
        own_home.env.insert("HOME".into(), "/data".into());
        let env = own_home.task_env(&sb, vec![("HOME".into(), "/home/u".into())]);
        assert_eq!(env["HOME"], "/data", "the spec's env wins over the user's");
        let mut bad_user = spec();
        bad_user.user = Some("a b".into());
        assert!(matches!(
            bad_user.validate(),
            Err(SupervisorError::InvalidSpec { field: "user", .. })
        ));
        for key in ["DROVER_TASK_ID", "PORT", "PORT3"] {
            let mut bad = spec();
            bad.env.insert(key.into(), "x".into());
            assert!(
                matches!(
                    bad.validate(),
                    Err(SupervisorError::InvalidSpec { field: "env", .. })
                ),
                "{key}"
            );
        }
        let mut ok = spec();
        ok.env.insert("PORTAL".into(), "x".into());
        ok.validate().unwrap();
    }

    #[test]
    fn spec_round_trips_through_json_with_defaults() {
        // Proves the agent can hand a spec to `drover supervise` as JSON, optional fields defaulted.
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SupervisorSpec>(&json).unwrap(), s);
        let minimal = r#"{"task_id":"t","run_id":"r","work_dir":"/w","command":{"Argv":["true"]},
                          "cpus":1.0,"mem_bytes":67108864,"grace_period_ms":0}"#;
        let m: SupervisorSpec = serde_json::from_str(minimal).unwrap();
        assert_eq!(m.cgroup_parent, "drover");
        assert_eq!(m.oom_poll_interval_ms, OOM_POLL_INTERVAL_MS_DEFAULT);
        assert_eq!(m.isolation, IsolationPolicy::Auto);
    }
}
