//! The agent's task table: every task it runs or whose terminal update is not yet acknowledged,
//! keyed by (framework id, task id), and the rules for moving a task between states. Pure: no
//! clock, no files, no processes; the driver does those and asks the table what to report.
//!
//! Life of an entry: inserted `TASK_STAGING` when a `RunTask` is accepted (a refused one goes
//! straight to `TASK_ERROR`); `TASK_RUNNING` once its supervisor recorded the task's pid; a
//! terminal state once the run ended (how it ended, and whether a kill was asked for, decide which:
//! [`terminal_status`]); removed when the framework acknowledges the terminal update. A task
//! never leaves a terminal state, and the table reports each transition once.

use std::collections::BTreeMap;
use std::fmt;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::runs::ProcessIdentity;
use super::task_info::{FrameworkDescription, TaskDescription, ports_of};
use crate::sandbox::{ExitRecord, ExitStatus};
use crate::status_updates::TaskState;

/// Reason given with `TASK_FAILED` when the kernel killed the task for using too much memory.
pub const REASON_MEMORY_LIMIT: &str = "memory_limit";
/// Reason given when the command could not be started (binary not found, not executable, ...).
pub const REASON_FAILED_TO_START: &str = "failed_to_start";
/// Reason given when the task's supervisor went away without recording how the task ended.
pub const REASON_SUPERVISOR_LOST: &str = "supervisor_lost";
/// Reason given when the supervisor did not start the task within the start timeout.
pub const REASON_START_TIMEOUT: &str = "start_timeout";
/// Reason given when the agent could not start a supervisor at all.
pub const REASON_SUPERVISOR_FAILED: &str = "supervisor_failed";
/// Reason given with `TASK_ERROR` for a `TaskInfo` the agent will not run.
pub const REASON_INVALID_TASK: &str = "invalid_task";
/// Reason given with `TASK_KILLED`.
pub const REASON_KILLED: &str = "killed";
/// Reason of the `TASK_LOST` answer to a kill for a task the agent does not know.
pub const REASON_UNKNOWN_TASK: &str = "unknown_task";

/// A task's identity on this agent: two frameworks may use the same task id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub framework_id: String,
    pub task_id: String,
}

impl TaskKey {
    pub fn new(framework_id: impl Into<String>, task_id: impl Into<String>) -> TaskKey {
        TaskKey {
            framework_id: framework_id.into(),
            task_id: task_id.into(),
        }
    }
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.framework_id, self.task_id)
    }
}

/// A kill the master asked for: when, and the grace between SIGTERM and SIGKILL that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillRequest {
    pub requested_at_unix_ms: u64,
    pub grace_ms: u64,
}

/// One task of the table; also what the agent checkpoints per task (its task record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEntry {
    pub framework: FrameworkDescription,
    pub task: TaskDescription,
    /// The run's id (its sandbox directory); `None` for a task that was refused and never ran.
    pub run_id: Option<String>,
    /// The supervisor process, once started.
    pub supervisor: Option<ProcessIdentity>,
    /// The latest state recorded for the task (`TASK_STAGING` until `TASK_RUNNING` is recorded).
    pub state: TaskState,
    pub kill: Option<KillRequest>,
}

impl TaskEntry {
    pub fn key(&self) -> TaskKey {
        TaskKey::new(self.framework.id.clone(), self.task.task_id.clone())
    }

    /// The grace this run's supervisor was started with.
    pub fn run_grace_ms(&self, default_kill_grace_ms: u64) -> u64 {
        match self.task.kill_grace_period_ms {
            0 => default_kill_grace_ms,
            ms => ms,
        }
    }
}

/// How a run ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The supervisor recorded the end in `exit.json`.
    Exited(ExitRecord),
    /// The supervisor is gone and recorded nothing; `detail` says what was found.
    SupervisorLost { detail: String },
    /// The supervisor did not record a task pid within the start timeout and was killed.
    StartTimedOut { after_ms: u64 },
    /// The agent could not start the supervisor process.
    SpawnFailed { error: String },
}

/// The content of a status update the table asks the driver to record and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusDraft {
    pub state: TaskState,
    pub message: String,
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

impl StatusDraft {
    pub fn new(state: TaskState, message: impl Into<String>, reason: &str) -> StatusDraft {
        StatusDraft {
            state,
            message: message.into(),
            reason: reason.to_owned(),
            exit_code: None,
            signal: None,
        }
    }
}

/// What the table says about a kill request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillDecision {
    /// No such task: answer `TASK_LOST` "unknown task".
    Unknown,
    /// The task already ended; its terminal update is (or was) on its way.
    AlreadyTerminal,
    /// Signal the supervisor now; escalate after `grace_ms`. `first` is false when a kill was
    /// already under way and this one only shortened its grace.
    Signal { grace_ms: u64, first: bool },
    /// A kill is under way with a grace no longer than the one asked for: nothing to do.
    AlreadyKilling,
}

/// The task table; see the module docs.
#[derive(Debug, Default)]
pub struct TaskTable {
    entries: BTreeMap<TaskKey, TaskEntry>,
}

impl TaskTable {
    pub fn new() -> TaskTable {
        TaskTable::default()
    }

    /// Adds a task; false (and nothing changes) when the key is already in the table.
    pub fn insert(&mut self, entry: TaskEntry) -> bool {
        let key = entry.key();
        if self.entries.contains_key(&key) {
            return false;
        }
        self.entries.insert(key, entry);
        true
    }

    pub fn get(&self, key: &TaskKey) -> Option<&TaskEntry> {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &TaskKey) -> Option<&mut TaskEntry> {
        self.entries.get_mut(key)
    }

    pub fn contains(&self, key: &TaskKey) -> bool {
        self.entries.contains_key(key)
    }

    pub fn remove(&mut self, key: &TaskKey) -> Option<TaskEntry> {
        self.entries.remove(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TaskEntry> {
        self.entries.values()
    }

    /// Keys of the framework's tasks that have not ended.
    pub fn active_of_framework(&self, framework_id: &str) -> Vec<TaskKey> {
        self.entries
            .iter()
            .filter(|(k, e)| k.framework_id == framework_id && !e.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The task (as `framework/task`) that holds `port`, among tasks that have not ended.
    pub fn port_holder(&self, port: u16) -> Option<String> {
        self.entries
            .values()
            .filter(|e| !e.state.is_terminal())
            .find(|e| ports_of(&e.task).contains(&port))
            .map(|e| e.key().to_string())
    }

    /// The supervisor recorded the task's pid: `TASK_RUNNING`, once, unless the task was already
    /// asked to die (then its terminal update follows and `RUNNING` would only be noise).
    pub fn on_started(&self, key: &TaskKey) -> Option<StatusDraft> {
        let entry = self.entries.get(key)?;
        if entry.state != TaskState::Staging || entry.kill.is_some() {
            return None;
        }
        Some(StatusDraft::new(TaskState::Running, "", ""))
    }

    /// The run ended: the terminal update, once.
    pub fn on_ended(&self, key: &TaskKey, outcome: &RunOutcome) -> Option<StatusDraft> {
        let entry = self.entries.get(key)?;
        if entry.state.is_terminal() {
            return None;
        }
        let mem_bytes = entry.task.resources.as_ref().map_or(0, |r| r.mem_bytes);
        Some(terminal_status(outcome, entry.kill.is_some(), mem_bytes))
    }

    /// Records that `state` was checkpointed for the task. A terminal state is final.
    pub fn set_state(&mut self, key: &TaskKey, state: TaskState) {
        let entry = self
            .entries
            .get_mut(key)
            .unwrap_or_else(|| panic!("set_state for {key}, which is not in the table"));
        assert!(
            !entry.state.is_terminal(),
            "task {key} moved from terminal {:?} to {state:?}",
            entry.state
        );
        entry.state = state;
    }

    /// A kill for the task: `grace_override_ms` (0 = the task's own) applies when it is shorter
    /// than the grace the run was started with (the supervisor cannot wait longer than that).
    pub fn request_kill(
        &mut self,
        key: &TaskKey,
        grace_override_ms: u64,
        default_kill_grace_ms: u64,
        now_unix_ms: u64,
    ) -> KillDecision {
        let Some(entry) = self.entries.get_mut(key) else {
            return KillDecision::Unknown;
        };
        if entry.state.is_terminal() {
            return KillDecision::AlreadyTerminal;
        }
        let run_grace = entry.run_grace_ms(default_kill_grace_ms);
        let grace_ms = match grace_override_ms {
            0 => run_grace,
            ms => ms.min(run_grace),
        };
        match &mut entry.kill {
            None => {
                entry.kill = Some(KillRequest {
                    requested_at_unix_ms: now_unix_ms,
                    grace_ms,
                });
                KillDecision::Signal {
                    grace_ms,
                    first: true,
                }
            }
            Some(k) => {
                let left =
                    (k.requested_at_unix_ms.saturating_add(k.grace_ms)).saturating_sub(now_unix_ms);
                if grace_ms < left {
                    k.grace_ms = now_unix_ms.saturating_sub(k.requested_at_unix_ms) + grace_ms;
                    KillDecision::Signal {
                        grace_ms,
                        first: false,
                    }
                } else {
                    KillDecision::AlreadyKilling
                }
            }
        }
    }
}

/// The terminal update for a run that ended with `outcome`. A requested kill turns an ending by
/// signal (or a lost supervisor) into `TASK_KILLED`; running out of memory is `TASK_FAILED` with
/// reason `memory_limit` whatever else happened; a clean exit is `TASK_FINISHED` even after a
/// kill request (the task finished before the kill reached it).
pub fn terminal_status(outcome: &RunOutcome, kill_requested: bool, mem_bytes: u64) -> StatusDraft {
    use TaskState::{Failed, Finished, Killed};
    match outcome {
        RunOutcome::Exited(record) => {
            let mut draft = match &record.status {
                ExitStatus::OomKilled => StatusDraft::new(
                    Failed,
                    format!(
                        "the task used more than its memory limit of {} and was killed by the kernel OOM killer",
                        format_bytes(mem_bytes)
                    ),
                    REASON_MEMORY_LIMIT,
                ),
                ExitStatus::Killed => {
                    let how = if record.kill_escalated {
                        "killed with SIGKILL after the grace period"
                    } else {
                        "killed"
                    };
                    StatusDraft::new(Killed, how, REASON_KILLED)
                }
                ExitStatus::Exited(0) => StatusDraft::new(Finished, "exited with status 0", ""),
                ExitStatus::Exited(code) => {
                    StatusDraft::new(Failed, format!("exited with status {code}"), "")
                }
                ExitStatus::Signaled(sig) => {
                    let name = signal_name(*sig);
                    let mut d = if kill_requested {
                        StatusDraft::new(Killed, format!("killed by {name}"), REASON_KILLED)
                    } else {
                        StatusDraft::new(Failed, format!("killed by {name}"), "")
                    };
                    d.signal = Some(*sig);
                    d
                }
                ExitStatus::FailedToStart(why) => StatusDraft::new(
                    Failed,
                    format!("the command could not start: {why}"),
                    REASON_FAILED_TO_START,
                ),
            };
            if let ExitStatus::Exited(code) = record.status {
                draft.exit_code = Some(code);
            }
            draft
        }
        RunOutcome::SupervisorLost { detail } if kill_requested => StatusDraft::new(
            Killed,
            format!("killed (the supervisor is gone: {detail})"),
            REASON_KILLED,
        ),
        RunOutcome::SupervisorLost { detail } => StatusDraft::new(
            Failed,
            format!(
                "the task's supervisor went away without recording how the task ended: {detail}"
            ),
            REASON_SUPERVISOR_LOST,
        ),
        RunOutcome::StartTimedOut { .. } if kill_requested => {
            StatusDraft::new(Killed, "killed before it started", REASON_KILLED)
        }
        RunOutcome::StartTimedOut { after_ms } => StatusDraft::new(
            Failed,
            format!("the supervisor did not start the task within {after_ms} ms"),
            REASON_START_TIMEOUT,
        ),
        RunOutcome::SpawnFailed { error } => StatusDraft::new(
            Failed,
            format!("the agent could not start the task's supervisor: {error}"),
            REASON_SUPERVISOR_FAILED,
        ),
    }
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

fn format_bytes(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::task_info::TaskResources;
    use crate::isolation::IsolationKind;

    fn entry(fw: &str, task: &str, ports: Vec<(u32, u32)>) -> TaskEntry {
        TaskEntry {
            framework: FrameworkDescription {
                id: fw.into(),
                ..Default::default()
            },
            task: TaskDescription {
                task_id: task.into(),
                resources: Some(TaskResources {
                    millicpus: 100,
                    mem_bytes: 64 << 20,
                    ports,
                }),
                kill_grace_period_ms: 2_000,
                ..Default::default()
            },
            run_id: Some("r1".into()),
            supervisor: None,
            state: TaskState::Staging,
            kill: None,
        }
    }

    fn exited(status: ExitStatus, escalated: bool) -> RunOutcome {
        RunOutcome::Exited(ExitRecord {
            status,
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
            task_pid: Some(7),
            isolation: IsolationKind::Rlimits,
            kill_escalated: escalated,
        })
    }

    #[test]
    fn same_task_id_in_two_frameworks_are_two_tasks() {
        // Proves tasks are keyed by (framework, task): a second framework's "web.1" is not a duplicate.
        let mut t = TaskTable::new();
        assert!(t.insert(entry("fw-a", "web.1", vec![])));
        assert!(t.insert(entry("fw-b", "web.1", vec![])));
        assert!(!t.insert(entry("fw-a", "web.1", vec![])));
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.active_of_framework("fw-a"),
            vec![TaskKey::new("fw-a", "web.1")]
        );
    }

    #[test]
    fn running_then_terminal_each_reported_once() {
        // Proves the lifecycle STAGING -> RUNNING -> terminal emits each update exactly once.
        let mut t = TaskTable::new();
        t.insert(entry("fw", "a", vec![]));
        let k = TaskKey::new("fw", "a");
        let d = t.on_started(&k).expect("RUNNING");
        assert_eq!(d.state, TaskState::Running);
        t.set_state(&k, d.state);
        assert_eq!(t.on_started(&k), None);
        let end = t
            .on_ended(&k, &exited(ExitStatus::Exited(0), false))
            .unwrap();
        assert_eq!(end.state, TaskState::Finished);
        t.set_state(&k, end.state);
        assert_eq!(t.on_ended(&k, &exited(ExitStatus::Exited(1), false)), None);
        assert_eq!(t.on_started(&k), None);
        assert_eq!(t.on_started(&TaskKey::new("fw", "nope")), None);
    }

    #[test]
    #[should_panic(expected = "moved from terminal")]
    fn leaving_a_terminal_state_is_a_bug() {
        // Proves the table refuses (loudly) to resurrect a finished task.
        let mut t = TaskTable::new();
        t.insert(entry("fw", "a", vec![]));
        let k = TaskKey::new("fw", "a");
        t.set_state(&k, TaskState::Failed);
        t.set_state(&k, TaskState::Running);
    }

    #[test]
    fn exits_map_to_mesos_states_with_codes_signals_and_reasons() {
        // Proves the exit-record -> TaskStatus mapping for every way a run can end.
        let d = terminal_status(&exited(ExitStatus::Exited(3), false), false, 0);
        assert_eq!(
            (d.state, d.exit_code, d.signal),
            (TaskState::Failed, Some(3), None)
        );
        let d = terminal_status(&exited(ExitStatus::Exited(0), false), true, 0);
        assert_eq!((d.state, d.exit_code), (TaskState::Finished, Some(0)));
        let d = terminal_status(&exited(ExitStatus::Signaled(9), false), false, 0);
        assert_eq!((d.state, d.signal), (TaskState::Failed, Some(9)));
        assert!(d.message.contains("SIGKILL"), "{}", d.message);
        let d = terminal_status(&exited(ExitStatus::Signaled(15), false), true, 0);
        assert_eq!((d.state, d.signal), (TaskState::Killed, Some(15)));
        let d = terminal_status(&exited(ExitStatus::Killed, true), true, 0);
        assert_eq!(
            (d.state, d.reason.as_str()),
            (TaskState::Killed, REASON_KILLED)
        );
        assert!(d.message.contains("SIGKILL"));
        let d = terminal_status(&exited(ExitStatus::OomKilled, false), true, 64 << 20);
        assert_eq!(
            (d.state, d.reason.as_str()),
            (TaskState::Failed, REASON_MEMORY_LIMIT)
        );
        assert!(d.message.contains("64 MiB"), "{}", d.message);
        let d = terminal_status(
            &exited(ExitStatus::FailedToStart("No such file".into()), false),
            false,
            0,
        );
        assert_eq!(
            (d.state, d.reason.as_str()),
            (TaskState::Failed, REASON_FAILED_TO_START)
        );
        assert!(d.message.contains("No such file"));
        let lost = RunOutcome::SupervisorLost {
            detail: "gone".into(),
        };
        assert_eq!(
            terminal_status(&lost, false, 0).reason,
            REASON_SUPERVISOR_LOST
        );
        assert_eq!(terminal_status(&lost, true, 0).state, TaskState::Killed);
        let slow = RunOutcome::StartTimedOut { after_ms: 5 };
        assert_eq!(
            terminal_status(&slow, false, 0).reason,
            REASON_START_TIMEOUT
        );
        let spawn = RunOutcome::SpawnFailed {
            error: "ENOENT".into(),
        };
        assert_eq!(terminal_status(&spawn, false, 0).state, TaskState::Failed);
    }

    #[test]
    fn kill_grace_is_the_shorter_of_the_request_and_the_run() {
        // Proves KillTask's grace applies only when shorter than the run's, and a repeat kill
        // can shorten but never lengthen the grace; unknown and finished tasks are told apart.
        let mut t = TaskTable::new();
        t.insert(entry("fw", "a", vec![]));
        let k = TaskKey::new("fw", "a");
        assert_eq!(
            t.request_kill(&TaskKey::new("fw", "x"), 0, 5_000, 100),
            KillDecision::Unknown
        );
        assert_eq!(
            t.request_kill(&k, 10_000, 5_000, 100),
            KillDecision::Signal {
                grace_ms: 2_000,
                first: true
            }
        );
        assert_eq!(
            t.request_kill(&k, 0, 5_000, 200),
            KillDecision::AlreadyKilling
        );
        assert_eq!(
            t.request_kill(&k, 500, 5_000, 600),
            KillDecision::Signal {
                grace_ms: 500,
                first: false
            }
        );
        assert_eq!(t.get(&k).unwrap().kill.unwrap().grace_ms, 1_000);
        assert_eq!(t.on_started(&k), None, "no RUNNING after a kill request");
        t.set_state(&k, TaskState::Killed);
        assert_eq!(
            t.request_kill(&k, 0, 5_000, 700),
            KillDecision::AlreadyTerminal
        );
    }

    #[test]
    fn ports_are_held_only_by_tasks_that_have_not_ended() {
        // Proves a finished task's ports are free again for the in-use check.
        let mut t = TaskTable::new();
        t.insert(entry("fw", "a", vec![(31000, 31001)]));
        assert_eq!(t.port_holder(31001).as_deref(), Some("fw/a"));
        assert_eq!(t.port_holder(31002), None);
        t.set_state(&TaskKey::new("fw", "a"), TaskState::Finished);
        assert_eq!(t.port_holder(31001), None);
    }
}
