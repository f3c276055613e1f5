//! The agent's work directory and the records it keeps there.
//!
//! Layout of `--work-dir`:
//! - `agent.lock`: held (`flock`, exclusive) while an agent runs on the directory, so two agents
//!   never share one;
//! - `agent.json`: the agent id the master assigned ([`AgentRecord`]), written atomically once
//!   registered, so a restarted agent re-registers as itself;
//! - `status_updates/`: the status-update manager's checkpoints ([`crate::status_updates`]);
//! - `tasks/<framework_id>/<task_id>.json`: one task record ([`TaskEntry`]) per task the agent runs
//!   or whose terminal update is unacknowledged; deleted when that update is acknowledged;
//! - `frameworks/<framework_id>/sandboxes/<task_id>/<run_id>/`: a run's sandbox ([`Sandbox`]) with
//!   `spec.json` and `supervisor.log` next to what the supervisor writes. The framework is part of
//!   the path, so two frameworks' tasks with the same id never share a directory. Removed by
//!   the sandbox GC ([`super::sandbox_gc`]) once the run is over and acknowledged;
//! - `sandbox-gc-trash/`: sandboxes the GC has taken out of the tree and is deleting.
//!
//! Every record is written atomically (tmp file, fsync, rename, fsync of the directory).
//!
//! Tasks run as other users than the agent, so nothing here is theirs to read except their own
//! sandbox: the work dir and the directories on the path to a sandbox (`frameworks/`, `<fw>/`,
//! `sandboxes/`, `<task>/`, the run directory) are mode 0711 (a task passes through to its
//! sandbox but cannot list them and find its neighbours'); every other directory is 0700 and every
//! file 0600 (`agent.lock`, `agent.json`, task records, checkpoints, a run's `spec.json`,
//! `supervisor.json`, `exit.json`, `supervisor.log`). [`WorkDir::open`] sets these modes on what is
//! already there, and anything added to the work dir must be created private as well.

use crate::path_io::{
    PASS_THROUGH_DIR_MODE, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PathIoError, ensure_dir_mode,
    io_err, set_mode, sync_dir,
};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::tasks::{TaskEntry, TaskKey};
use crate::sandbox::{Sandbox, SandboxError, read_json, write_json_atomic};

const LOCK_FILE: &str = "agent.lock";
const AGENT_FILE: &str = "agent.json";
const STATUS_UPDATES_DIR: &str = "status_updates";
const TASKS_DIR: &str = "tasks";
/// Directory (in the work dir) of the frameworks' sandboxes.
pub const FRAMEWORKS_DIR: &str = "frameworks";
/// Directory (in a framework's directory) of its tasks' sandboxes, as [`Sandbox::new`] lays out.
pub const SANDBOXES_DIR: &str = "sandboxes";
const GC_TRASH_DIR: &str = "sandbox-gc-trash";
const RECORD_SUFFIX: &str = ".json";

/// Errors about the work directory itself.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("work dir {path} is in use by another agent (its {LOCK_FILE} is locked)")]
    Locked { path: PathBuf },
    #[error(transparent)]
    Record(#[from] SandboxError),
}

/// The content of `agent.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub agent_id: String,
}

/// An open, locked work directory.
#[derive(Debug)]
pub struct WorkDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl WorkDir {
    /// Creates the directory if needed, makes its path absolute, locks it, and gives it and what
    /// is in it the modes listed in the module docs.
    pub fn open(path: &Path) -> Result<WorkDir, WorkDirError> {
        fs::create_dir_all(path).map_err(io_err("create work dir", path))?;
        let root = path
            .canonicalize()
            .map_err(io_err("resolve work dir", path))?;
        let lock_path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(WorkDirError::Locked { path: root });
            }
            Err((_, errno)) => {
                return Err(WorkDirError::Io(PathIoError::new(
                    "lock",
                    lock_path,
                    io::Error::from(errno),
                )));
            }
        };
        let work = WorkDir { root, _lock: lock };
        work.secure()?;
        Ok(work)
    }

    /// Sets the modes of the work dir and its fixed entries (creating the directories), so a
    /// work dir from before tasks ran as other users is as private as a new one. Sandboxes of
    /// earlier runs are left as they are; their run ids are not guessable and the directories
    /// above them can no longer be listed.
    fn secure(&self) -> Result<(), WorkDirError> {
        set_mode(&self.root, PASS_THROUGH_DIR_MODE)?;
        set_mode(&self.root.join(LOCK_FILE), PRIVATE_FILE_MODE)?;
        let agent_file = self.root.join(AGENT_FILE);
        if agent_file.exists() {
            set_mode(&agent_file, PRIVATE_FILE_MODE)?;
        }
        for dir in [STATUS_UPDATES_DIR, TASKS_DIR, GC_TRASH_DIR] {
            ensure_dir_mode(&self.root.join(dir), PRIVATE_DIR_MODE)?;
        }
        ensure_dir_mode(&self.root.join(FRAMEWORKS_DIR), PASS_THROUGH_DIR_MODE)?;
        Ok(())
    }

    /// Creates the directories down to the task's sandboxes directory
    /// (`frameworks/<fw>/sandboxes/<task>/`), each mode 0711, also fixing ones an older agent
    /// made 0755. The ids must be valid ([`super::task_info::validate_ids`]).
    pub fn create_task_path(&self, key: &TaskKey) -> Result<(), WorkDirError> {
        let fw_dir = self.framework_dir(&key.framework_id);
        let sandboxes = fw_dir.join(SANDBOXES_DIR);
        let task_dir = sandboxes.join(&key.task_id);
        for dir in [
            &self.root.join(FRAMEWORKS_DIR),
            &fw_dir,
            &sandboxes,
            &task_dir,
        ] {
            ensure_dir_mode(dir, PASS_THROUGH_DIR_MODE)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn status_updates_dir(&self) -> PathBuf {
        self.root.join(STATUS_UPDATES_DIR)
    }

    /// The `work_dir` of a supervisor spec for one of the framework's tasks.
    pub fn framework_dir(&self, framework_id: &str) -> PathBuf {
        framework_dir(&self.root, framework_id)
    }

    /// A run's sandbox; the ids are validated.
    pub fn sandbox(&self, key: &TaskKey, run_id: &str) -> Result<Sandbox, SandboxError> {
        Sandbox::new(&self.framework_dir(&key.framework_id), &key.task_id, run_id)
    }

    fn tasks_dir(&self) -> PathBuf {
        self.root.join(TASKS_DIR)
    }

    fn task_record_path(&self, key: &TaskKey) -> PathBuf {
        self.tasks_dir()
            .join(&key.framework_id)
            .join(format!("{}{RECORD_SUFFIX}", key.task_id))
    }

    /// The agent id from `agent.json`, if the agent ever registered.
    pub fn read_agent_id(&self) -> Result<Option<String>, WorkDirError> {
        let record: Option<AgentRecord> = read_json(&self.root.join(AGENT_FILE))?;
        Ok(record.map(|r| r.agent_id))
    }

    pub fn write_agent_id(&self, agent_id: &str) -> Result<(), WorkDirError> {
        let record = AgentRecord {
            agent_id: agent_id.to_owned(),
        };
        write_json_atomic(&self.root.join(AGENT_FILE), &record)?;
        Ok(())
    }

    /// Writes (or rewrites) the task's record; durable when this returns.
    pub fn save_task(&self, entry: &TaskEntry) -> Result<(), WorkDirError> {
        let path = self.task_record_path(&entry.key());
        let fw_dir = path.parent().unwrap_or(&self.root);
        ensure_dir(&self.tasks_dir(), &self.root)?;
        ensure_dir(fw_dir, &self.tasks_dir())?;
        write_json_atomic(&path, entry)?;
        Ok(())
    }

    /// Deletes the task's record (no error if it is already gone); durable when this returns.
    pub fn remove_task(&self, key: &TaskKey) -> Result<(), WorkDirError> {
        let path = self.task_record_path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove", &path)(e).into()),
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Every task record, sorted by framework id then task id. A record that cannot be read is an
    /// error naming the file: skipping it would forget a task that may still run.
    pub fn load_tasks(&self) -> Result<Vec<TaskEntry>, WorkDirError> {
        let mut out = Vec::new();
        let tasks_dir = self.tasks_dir();
        for fw_dir in sorted_entries(&tasks_dir)? {
            if !fw_dir.is_dir() {
                continue;
            }
            for path in sorted_entries(&fw_dir)? {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".tmp") {
                    // An interrupted atomic write: the record it was replacing is still there.
                    let _ = fs::remove_file(&path);
                    continue;
                }
                if !name.ends_with(RECORD_SUFFIX) {
                    tracing::warn!(path = %path.display(), "ignoring unexpected file among task records");
                    continue;
                }
                let Some(entry) = read_json::<TaskEntry>(&path)? else {
                    continue;
                };
                if self.task_record_path(&entry.key()) != path {
                    return Err(WorkDirError::Io(PathIoError::new(
                        "check task record",
                        path,
                        io::Error::other(format!(
                            "it holds task {} of framework {}",
                            entry.task.task_id, entry.framework.id
                        )),
                    )));
                }
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// `<root>/frameworks/<framework_id>`: a supervisor spec's `work_dir`. The ids must be valid
/// ([`super::task_info::validate_ids`]).
pub fn framework_dir(root: &Path, framework_id: &str) -> PathBuf {
    root.join(FRAMEWORKS_DIR).join(framework_id)
}

/// `<root>/frameworks/<fw>/sandboxes/<task>`: the run sandboxes of one task. The ids must be
/// valid ([`super::task_info::validate_ids`]).
pub fn task_sandboxes_dir(root: &Path, key: &TaskKey) -> PathBuf {
    framework_dir(root, &key.framework_id)
        .join(SANDBOXES_DIR)
        .join(&key.task_id)
}

/// Where the sandbox GC moves sandboxes before deleting them (same file system: a rename).
pub fn gc_trash_dir(root: &Path) -> PathBuf {
    root.join(GC_TRASH_DIR)
}

/// Creates a private directory (mode 0700) in an existing `parent` if needed.
fn ensure_dir(dir: &Path, parent: &Path) -> Result<(), WorkDirError> {
    match fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(dir) {
        Ok(()) => Ok(sync_dir(parent)?),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create dir", dir)(e).into()),
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, WorkDirError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read dir", dir)(e).into()),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(io_err("read dir", dir))?.path());
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::task_info::{FrameworkDescription, TaskDescription};
    use crate::status_updates::TaskState;
    use std::os::unix::fs::PermissionsExt;

    fn entry(fw: &str, task: &str) -> TaskEntry {
        TaskEntry {
            framework: FrameworkDescription {
                id: fw.into(),
                ..Default::default()
            },
            task: TaskDescription {
                task_id: task.into(),
                ..Default::default()
            },
            run_id: Some("r1".into()),
            supervisor: None,
            state: TaskState::Running,
            kill: None,
        }
    }

    #[test]
    fn task_records_survive_reopening_and_removal_is_durable() {
        // Proves what a restarted agent finds: the saved records (latest version), minus removed ones.
        let tmp = tempfile::tempdir().unwrap();
        let work = WorkDir::open(tmp.path()).unwrap();
        let mut a = entry("fw-a", "web.1");
        work.save_task(&a).unwrap();
        work.save_task(&entry("fw-b", "web.1")).unwrap();
        a.state = TaskState::Finished;
        work.save_task(&a).unwrap();
        work.save_task(&entry("fw-a", "gone")).unwrap();
        work.remove_task(&TaskKey::new("fw-a", "gone")).unwrap();
        work.remove_task(&TaskKey::new("fw-a", "never")).unwrap();
        work.write_agent_id("agent-7").unwrap();
        drop(work);
        let work = WorkDir::open(tmp.path()).unwrap();
        let loaded = work.load_tasks().unwrap();
        assert_eq!(loaded, vec![a, entry("fw-b", "web.1")]);
        assert_eq!(work.read_agent_id().unwrap().as_deref(), Some("agent-7"));
    }

    #[test]
    fn nothing_in_the_work_dir_but_the_path_to_a_sandbox_is_open_to_others() {
        // Proves the modes `open` leaves, also on a work dir an older agent made world-readable:
        // the root and the path to sandboxes 0711, private dirs 0700, records and the lock 0600.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("w");
        fs::create_dir_all(root.join(STATUS_UPDATES_DIR)).unwrap();
        fs::write(root.join(AGENT_FILE), b"{\"agent_id\":\"a\"}").unwrap();
        for p in [
            &root,
            &root.join(STATUS_UPDATES_DIR),
            &root.join(AGENT_FILE),
        ] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
        }
        let work = WorkDir::open(&root).unwrap();
        work.save_task(&entry("fw", "t")).unwrap();
        work.create_task_path(&TaskKey::new("fw", "t")).unwrap();
        let mode = |rel: &str| fs::metadata(root.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(""), 0o711);
        for rel in [
            "frameworks",
            "frameworks/fw",
            "frameworks/fw/sandboxes",
            "frameworks/fw/sandboxes/t",
        ] {
            assert_eq!(mode(rel), 0o711, "{rel}");
        }
        for rel in [STATUS_UPDATES_DIR, TASKS_DIR, "tasks/fw", GC_TRASH_DIR] {
            assert_eq!(mode(rel), 0o700, "{rel}");
        }
        for rel in [LOCK_FILE, AGENT_FILE, "tasks/fw/t.json"] {
            assert_eq!(mode(rel), 0o600, "{rel}");
        }
    }

    #[test]
    fn two_agents_cannot_share_a_work_dir() {
        // Proves the lock: a second open fails with Locked while the first is held, and works after.
        let tmp = tempfile::tempdir().unwrap();
        let first = WorkDir::open(tmp.path()).unwrap();
        match WorkDir::open(tmp.path()) {
            Err(WorkDirError::Locked { .. }) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        WorkDir::open(tmp.path()).unwrap();
    }

    #[test]
    fn sandboxes_of_two_frameworks_never_collide() {
        // Proves the same task id and run id under two frameworks map to different directories.
        let tmp = tempfile::tempdir().unwrap();
        let work = WorkDir::open(tmp.path()).unwrap();
        let a = work.sandbox(&TaskKey::new("fw-a", "web.1"), "r1").unwrap();
        let b = work.sandbox(&TaskKey::new("fw-b", "web.1"), "r1").unwrap();
        assert_ne!(a.dir(), b.dir());
        assert!(a.dir().starts_with(work.root()));
        // The file API and the sandbox GC find runs where the supervisor puts them.
        let key = TaskKey::new("fw-a", "web.1");
        assert_eq!(
            a.dir().parent(),
            Some(task_sandboxes_dir(work.root(), &key).as_path())
        );
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        // Proves a corrupt task record stops recovery with its path instead of forgetting a task.
        let tmp = tempfile::tempdir().unwrap();
        let work = WorkDir::open(tmp.path()).unwrap();
        work.save_task(&entry("fw", "t")).unwrap();
        let path = work.task_record_path(&TaskKey::new("fw", "t"));
        fs::write(&path, b"{\"framework\":").unwrap();
        let e = work.load_tasks().unwrap_err();
        assert!(
            e.to_string().contains("t.json") || format!("{e:?}").contains("t.json"),
            "{e:?}"
        );
    }
}
