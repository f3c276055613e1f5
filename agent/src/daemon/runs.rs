//! Supervisor processes seen from the agent: start one per task run, tell it to kill, and watch a
//! run until it ends, whether the supervisor is our child or was re-adopted after an agent restart.
//!
//! A supervisor is started as `<program> <args...> <run dir>/spec.json` in a session of its own
//! (`setsid`), with stdin from `/dev/null` and stdout/stderr appended to `<run dir>/supervisor.log`,
//! so it outlives the agent and a signal to the agent's process group or terminal never reaches it.
//! Both files are private (0600): the spec holds the task's environment, which may hold secrets.
//! A process is only ever signalled after checking its identity (pid *and* start time), so a reused
//! pid is never hit.

use crate::supervisor::error_chain;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout_at};

use super::tasks::{RunOutcome, TaskKey};
use crate::isolation::TaskCgroup;
use crate::limits::CLEANUP_DEADLINE_MS;
use crate::path_io::{PASS_THROUGH_DIR_MODE, PRIVATE_FILE_MODE, ensure_dir_mode};
use crate::procfs;
use crate::sandbox::{Sandbox, SandboxError, TaskState as RunState, inspect, write_json_atomic};
use crate::supervisor::SupervisorSpec;

/// Name of the spec file in a run's sandbox.
pub const SPEC_FILE: &str = "spec.json";
/// Name of the supervisor's own log (its stdout and stderr) in a run's sandbox.
pub const SUPERVISOR_LOG_FILE: &str = "supervisor.log";
/// How often a lost run's leftovers are re-checked while they are being killed.
const CLEANUP_POLL: Duration = Duration::from_millis(20);

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
}

impl ProcessIdentity {
    /// The identity of the live process `pid`, if it exists.
    pub fn of(pid: i32) -> Option<ProcessIdentity> {
        procfs::stat(pid).map(|s| ProcessIdentity {
            pid,
            start_ticks: s.start_ticks,
        })
    }

    /// True while this very process exists and is not a zombie.
    pub fn is_alive(&self) -> bool {
        procfs::stat(self.pid)
            .is_some_and(|s| s.start_ticks == self.start_ticks && !s.is_zombie_or_dead())
    }

    /// Sends `signal` if the process is still this one; false when it is gone.
    pub fn signal(&self, signal: Signal) -> bool {
        self.is_alive() && kill(Pid::from_raw(self.pid), signal).is_ok()
    }
}

/// How to start a supervisor: `drover supervise` in production (the running binary with the
/// argument `supervise`); tests name a stand-alone supervisor binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorCommand {
    pub program: PathBuf,
    /// The process's `argv[0]`, what `ps` shows, when it should differ from `program`
    /// (`/proc/self/exe` says nothing to an operator); `None` keeps `program`.
    pub arg0: Option<OsString>,
    /// Arguments before the spec path.
    pub args: Vec<OsString>,
}

/// The `argv[0]` of production supervisors: `ps` shows `drover supervise <run dir>/spec.json`.
pub const SUPERVISOR_ARG0: &str = "drover";

impl SupervisorCommand {
    /// `<this executable> supervise`, where this executable is the running image itself.
    ///
    /// On Linux that is `/proc/self/exe`, opened afresh at each start (in the child, where it is
    /// still the agent's image until `exec`): it works after the `drover` file was deleted or
    /// replaced by an upgrade, when `current_exe()` names `.../drover (deleted)` or a newer
    /// binary, and agent and supervisor always run the same version (the spec and exit record
    /// formats between them are not versioned). Elsewhere, `current_exe()`.
    pub fn current_exe() -> io::Result<SupervisorCommand> {
        Ok(SupervisorCommand {
            program: own_image()?,
            arg0: Some(OsString::from(SUPERVISOR_ARG0)),
            args: vec![OsString::from("supervise")],
        })
    }
}

#[cfg(target_os = "linux")]
fn own_image() -> io::Result<PathBuf> {
    const PROC_SELF_EXE: &str = "/proc/self/exe";
    // Checked once here so that a missing /proc fails the agent's start, not every launch.
    fs::metadata(PROC_SELF_EXE)?;
    Ok(PathBuf::from(PROC_SELF_EXE))
}

#[cfg(not(target_os = "linux"))]
fn own_image() -> io::Result<PathBuf> {
    std::env::current_exe()
}

/// A started supervisor.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub identity: ProcessIdentity,
}

/// Writes the spec into the run directory (creating it, mode 0711; the directories above it are
/// the caller's) and starts the supervisor in its own session. The error says which step failed.
pub fn spawn_supervisor(
    command: &SupervisorCommand,
    spec: &SupervisorSpec,
    sandbox: &Sandbox,
) -> Result<Spawned, String> {
    let dir = sandbox.dir();
    ensure_dir_mode(dir, PASS_THROUGH_DIR_MODE).map_err(|e| error_chain(&e))?;
    let spec_path = dir.join(SPEC_FILE);
    write_json_atomic(&spec_path, spec).map_err(|e| error_chain(&e))?;
    let log_path = dir.join(SUPERVISOR_LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&command.program);
    if let Some(arg0) = &command.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&command.args)
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(false);
    // SAFETY: `setsid` is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", command.program.display()))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| "the supervisor exited at once".to_string())?;
    // Our unreaped child: the pid cannot have been reused yet.
    let identity =
        ProcessIdentity::of(pid).ok_or_else(|| "the supervisor exited at once".to_string())?;
    Ok(Spawned { child, identity })
}

/// What a watcher reports to the driver.
#[derive(Debug)]
pub enum RunEvent {
    /// The supervisor recorded the task's pid.
    Started { key: TaskKey, run_id: String },
    /// The run ended.
    Ended {
        key: TaskKey,
        run_id: String,
        outcome: RunOutcome,
    },
}

/// How a watcher polls.
#[derive(Debug, Clone, Copy)]
pub struct WatchTiming {
    /// How often `supervisor.json` is read while waiting for the task pid.
    pub start_poll: Duration,
    /// How long a supervisor may take to record the task pid.
    pub start_timeout: Duration,
    /// How often a running task is checked when its supervisor is not our child.
    pub exit_poll: Duration,
}

/// One run to watch.
#[derive(Debug)]
pub struct Watch {
    pub key: TaskKey,
    pub run_id: String,
    pub sandbox: Sandbox,
    /// The supervisor as our child (freshly started), or `None` after a restart.
    pub child: Option<Child>,
    /// The supervisor's identity when known (from the spawn or the task record).
    pub supervisor: Option<ProcessIdentity>,
    /// True when `TASK_RUNNING` was already recorded: skip waiting for the start.
    pub started: bool,
    /// Our child supervisor was reaped.
    child_exited: bool,
}

impl Watch {
    pub fn new(
        key: TaskKey,
        run_id: String,
        sandbox: Sandbox,
        child: Option<Child>,
        supervisor: Option<ProcessIdentity>,
        started: bool,
    ) -> Watch {
        Watch {
            key,
            run_id,
            sandbox,
            child,
            supervisor,
            started,
            child_exited: false,
        }
    }
}

/// Watches a run until it ends and reports `Started` (unless already started) and `Ended` to
/// `events`. Never returns before reporting `Ended`, except when `events` is closed.
pub async fn watch_run(mut w: Watch, timing: WatchTiming, events: mpsc::Sender<RunEvent>) {
    let outcome = match wait_started(&mut w, timing).await {
        Ok(()) => {
            let started = RunEvent::Started {
                key: w.key.clone(),
                run_id: w.run_id.clone(),
            };
            if events.send(started).await.is_err() {
                return;
            }
            wait_ended(&mut w, timing).await
        }
        Err(outcome) => outcome,
    };
    let _ = events
        .send(RunEvent::Ended {
            key: w.key,
            run_id: w.run_id,
            outcome,
        })
        .await;
}

/// Waits until the supervisor records a task pid (`Ok`), or returns how the run ended first.
async fn wait_started(w: &mut Watch, timing: WatchTiming) -> Result<(), RunOutcome> {
    if w.started {
        return Ok(());
    }
    let deadline = Instant::now() + timing.start_timeout;
    loop {
        match w.sandbox.read_supervisor() {
            Ok(Some(rec)) => {
                if w.supervisor.is_none() {
                    w.supervisor = Some(ProcessIdentity {
                        pid: rec.supervisor_pid,
                        start_ticks: rec.supervisor_start_ticks,
                    });
                }
                if rec.task_pid.is_some() {
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(sandbox = %w.sandbox.dir().display(), error = %error_chain(&e), "cannot read supervisor.json")
            }
        }
        match inspect(&w.sandbox) {
            Ok(RunState::Exited(record)) => return Err(RunOutcome::Exited(record)),
            Ok(RunState::Running { .. }) | Ok(RunState::Lost) | Err(_) => {}
        }
        if !supervisor_alive(w) {
            // Gone without recording a pid: it may still have written exit.json just now.
            return Err(match w.sandbox.read_exit() {
                Ok(Some(record)) => RunOutcome::Exited(record),
                _ => RunOutcome::SupervisorLost {
                    detail: with_log_tail(
                        "the supervisor exited before starting the task",
                        &w.sandbox,
                    ),
                },
            });
        }
        if Instant::now() >= deadline {
            if let Some(sup) = w.supervisor {
                sup.signal(Signal::SIGKILL);
            }
            if let Some(child) = &mut w.child {
                let _ = child.wait().await;
            }
            cleanup_lost_run(&w.sandbox).await;
            if let Ok(Some(record)) = w.sandbox.read_exit() {
                return Err(RunOutcome::Exited(record));
            }
            return Err(RunOutcome::StartTimedOut {
                after_ms: u64::try_from(timing.start_timeout.as_millis()).unwrap_or(u64::MAX),
            });
        }
        wait_a_little(w, timing.start_poll.min(deadline - Instant::now())).await;
    }
}

/// True while the supervisor may still be running: our child not yet exited, or (without a child)
/// a live process with the recorded identity. Without either we cannot tell yet: true.
fn supervisor_alive(w: &mut Watch) -> bool {
    if let Some(child) = &mut w.child {
        return matches!(child.try_wait(), Ok(None));
    }
    !w.child_exited && w.supervisor.is_none_or(|s| s.is_alive())
}

/// Sleeps up to `d`, waking early when our child supervisor exits.
async fn wait_a_little(w: &mut Watch, d: Duration) {
    match &mut w.child {
        Some(child) => {
            if timeout_at(Instant::now() + d, child.wait()).await.is_ok() {
                // Reaped: from now on the supervisor counts as gone.
                w.child = None;
                w.child_exited = true;
            }
        }
        None => sleep(d).await,
    }
}

async fn wait_ended(w: &mut Watch, timing: WatchTiming) -> RunOutcome {
    loop {
        match inspect(&w.sandbox) {
            Ok(RunState::Exited(record)) => return RunOutcome::Exited(record),
            Ok(RunState::Lost) => {
                cleanup_lost_run(&w.sandbox).await;
                return RunOutcome::SupervisorLost {
                    detail: with_log_tail(
                        "the supervisor exited without writing exit.json",
                        &w.sandbox,
                    ),
                };
            }
            Ok(RunState::Running { .. }) => {}
            Err(e) => {
                // A damaged exit.json or supervisor.json: the run cannot be followed any more.
                let detail = error_chain(&e);
                if matches!(
                    e,
                    SandboxError::BadRecord { .. } | SandboxError::RecordTooLarge { .. }
                ) {
                    if let Some(sup) = w.supervisor {
                        sup.signal(Signal::SIGKILL);
                    }
                    cleanup_lost_run(&w.sandbox).await;
                    return RunOutcome::SupervisorLost { detail };
                }
                tracing::warn!(sandbox = %w.sandbox.dir().display(), error = %detail, "cannot inspect the sandbox");
            }
        }
        wait_a_little(w, timing.exit_poll).await;
    }
}

/// Kills whatever a lost supervisor left behind: the task's cgroups, and the processes of the
/// task's process group that started after the supervisor (so a reused group id is never hit).
pub async fn cleanup_lost_run(sandbox: &Sandbox) {
    let Ok(Some(rec)) = sandbox.read_supervisor() else {
        return;
    };
    if !rec.cgroups.is_empty() {
        let cg = TaskCgroup::open(rec.isolation, rec.cgroups.clone());
        let result = tokio::task::spawn_blocking(move || cg.kill_and_remove()).await;
        if let Ok(Err(e)) = result {
            tracing::error!(error = %error_chain(&e), "cannot remove the cgroup of a lost run");
        }
    }
    let Some(pgid) = rec.task_pgid else {
        return;
    };
    let deadline = Instant::now() + Duration::from_millis(CLEANUP_DEADLINE_MS);
    loop {
        let left: Vec<i32> = procfs::group_members(pgid)
            .into_iter()
            .filter(|(_, s)| s.start_ticks >= rec.supervisor_start_ticks && !s.is_zombie_or_dead())
            .map(|(pid, _)| pid)
            .collect();
        if left.is_empty() {
            return;
        }
        tracing::warn!(
            pgid,
            count = left.len(),
            "killing leftover processes of a lost run"
        );
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if Instant::now() >= deadline {
            tracing::error!(pgid, "processes of a lost run survived SIGKILL");
            return;
        }
        sleep(CLEANUP_POLL).await;
    }
}

/// Longest piece of `supervisor.log` quoted in a status message.
const LOG_TAIL_BYTES_MAX: u64 = 512;

/// `what`, followed by the last line the supervisor logged, if any (it usually says why).
fn with_log_tail(what: &str, sandbox: &Sandbox) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let path = sandbox.dir().join(SUPERVISOR_LOG_FILE);
    let Ok(mut file) = fs::File::open(&path) else {
        return what.to_owned();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tail = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES_MAX)))
        .and_then(|_| file.take(LOG_TAIL_BYTES_MAX).read_to_end(&mut tail))
        .is_err()
    {
        return what.to_owned();
    }
    let text = strip_ansi(&String::from_utf8_lossy(&tail));
    match text.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!("{what}; its last log line: {line}"),
        None => what.to_owned(),
    }
}

/// `text` without ANSI escape sequences (tracing colours its output even into a file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_supervisors_are_named_drover_supervise() {
        // Proves the production command runs the agent's own image under the name `drover` with
        // the word `supervise`, so `ps` shows `drover supervise SPEC`, not `/proc/self/exe ...`.
        let command = SupervisorCommand::current_exe().unwrap();
        assert_eq!(command.arg0, Some(OsString::from("drover")));
        assert_eq!(command.args, vec![OsString::from("supervise")]);
        #[cfg(target_os = "linux")]
        assert_eq!(command.program, PathBuf::from("/proc/self/exe"));
    }

    #[test]
    fn a_lost_supervisor_is_explained_by_its_last_log_line() {
        // Proves the message of a lost run quotes the supervisor's last (colour-free) log line.
        let tmp = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::at(tmp.path());
        assert_eq!(with_log_tail("gone", &sandbox), "gone");
        fs::write(
            tmp.path().join(SUPERVISOR_LOG_FILE),
            "\u{1b}[32m INFO\u{1b}[0m starting\ndrover: supervisor failed: invalid cpus\n\n",
        )
        .unwrap();
        assert_eq!(
            with_log_tail("gone", &sandbox),
            "gone; its last log line: drover: supervisor failed: invalid cpus"
        );
        assert_eq!(strip_ansi("\u{1b}[2mx\u{1b}[0m y"), "x y");
    }
}
