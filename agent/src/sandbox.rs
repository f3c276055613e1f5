//! The task sandbox on disk and the records a supervisor leaves next to it.
//!
//! Layout: the run directory `<work_dir>/sandboxes/<task_id>/<run_id>/` (root's, mode 0711: the
//! task passes through it to its sandbox, but cannot list or read it) holding
//! - `supervisor.json`: who supervises the run ([`SupervisorRecord`]), rewritten atomically once the
//!   task has a pid;
//! - `exit.json`: how the run ended ([`ExitRecord`]), written once, atomically (tmp file, fsync,
//!   rename, fsync of the directory), before the supervisor exits;
//! - `sandbox/`: the task's own directory, its working directory and `$DROVER_SANDBOX`, owned by
//!   the task's user and primary group with mode 0750, holding `stdout` and `stderr` (the task's
//!   output, appended; owned by the task's user too, mode 0640).
//!
//! The records are the supervisor's and every record file is 0600: the task can neither read nor
//! replace them (a forged `supervisor.json` would make the agent signal someone else's process).
//! Runs from before the `sandbox/` directory kept `stdout`/`stderr` in the run directory itself;
//! [`Sandbox::output_dir`] finds them either way.
//!
//! [`inspect`] turns those files into a [`TaskState`]; it is what re-adoption after an agent restart
//! builds on. Invariant: once `exit.json` exists it is complete and never changes.

use crate::path_io::{
    PASS_THROUGH_DIR_MODE, PRIVATE_FILE_MODE, PathIoError, ensure_dir_mode, io_err, set_mode,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::isolation::IsolationKind;
use crate::limits::{RECORD_BYTES_MAX, RUN_ID_BYTES_MAX};
use crate::procfs;

/// Name of the task's own directory in a run directory.
pub const TASK_DIR: &str = "sandbox";
/// Mode of the task's own directory: its user writes, its group reads, nobody else enters.
pub const TASK_DIR_MODE: u32 = 0o750;
/// Mode of the task's `stdout` and `stderr`.
const OUTPUT_FILE_MODE: u32 = 0o640;

/// Errors about ids, sandbox paths and record files.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid {field}: {reason}")]
    InvalidId { field: &'static str, reason: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("record {path} is larger than {limit} bytes")]
    RecordTooLarge { path: PathBuf, limit: u64 },
    #[error("record {path} is not valid")]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Checks a task id: it becomes a directory name and part of a cgroup name, so it must be one safe
/// path component. The rule is `drover_types::ids::TaskId`'s (1..=[`TASK_ID_BYTES_MAX`](crate::limits::TASK_ID_BYTES_MAX) bytes of
/// `[A-Za-z0-9._-]`, not `.`, no `..`), so an id the master accepted is one the sandbox takes.
pub fn validate_task_id(id: &str) -> Result<(), SandboxError> {
    drover_types::TaskId::parse(id)
        .map(drop)
        .map_err(|_| SandboxError::InvalidId {
            field: "task_id",
            reason: format!("must be {}", drover_types::ids::ID_RULE),
        })
}

/// Checks a run id: 1..=[`RUN_ID_BYTES_MAX`] bytes of ASCII letters, digits, `-` and `_` (no `.`, so
/// `<task_id>.<run_id>` names are unambiguous).
pub fn validate_run_id(id: &str) -> Result<(), SandboxError> {
    validate_component("run_id", id, RUN_ID_BYTES_MAX, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })
}

pub(crate) fn validate_component(
    field: &'static str,
    id: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), SandboxError> {
    let bad = |reason: String| Err(SandboxError::InvalidId { field, reason });
    if id.is_empty() {
        return bad("must not be empty".into());
    }
    if id.len() > max {
        return bad(format!("is {} bytes, limit is {max}", id.len()));
    }
    if id.contains('\0') {
        return bad("must not contain NUL".into());
    }
    if id.contains('/') {
        return bad("must not contain '/'".into());
    }
    if id == "." || id.contains("..") {
        return bad("must not be '.' or contain '..'".into());
    }
    if let Some(c) = id.chars().find(|&c| !allowed(c)) {
        return bad(format!("character {c:?} is not allowed"));
    }
    Ok(())
}

/// How a run ended. `Killed` means the kill was requested (SIGTERM to the supervisor), whatever
/// signal finally ended the task; `OomKilled` wins over everything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    OomKilled,
    FailedToStart(String),
    Killed,
}

/// The content of `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: ExitStatus,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    /// Pid of the task's main process, if it started.
    pub task_pid: Option<i32>,
    pub isolation: IsolationKind,
    /// True when a requested kill had to escalate from SIGTERM to SIGKILL after the grace period.
    pub kill_escalated: bool,
}

/// The content of `supervisor.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorRecord {
    pub supervisor_pid: i32,
    /// Start time of the supervisor in clock ticks since boot (`/proc/PID/stat` field 22); with the
    /// pid it identifies the supervisor even after the pid is reused.
    pub supervisor_start_ticks: u64,
    pub task_pid: Option<i32>,
    /// The task's process group (equal to `task_pid`: the task leads its own session).
    pub task_pgid: Option<i32>,
    pub started_at_unix_ms: u64,
    pub isolation: IsolationKind,
    /// Cgroup directories of the task (one on v2, one per hierarchy on v1), for cleanup after a
    /// lost supervisor.
    pub cgroups: Vec<PathBuf>,
}

/// What the files of a sandbox say about its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// The supervisor is alive (same pid and same start time as recorded).
    Running { supervisor_pid: i32 },
    /// The run finished and its supervisor recorded how.
    Exited(ExitRecord),
    /// No exit record and no live supervisor: the supervisor died (or never got going).
    Lost,
}

/// One run's directory: the supervisor's records and the task's own sandbox directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// The sandbox of `task_id`/`run_id` under `work_dir`; both ids are validated.
    pub fn new(work_dir: &Path, task_id: &str, run_id: &str) -> Result<Sandbox, SandboxError> {
        validate_task_id(task_id)?;
        validate_run_id(run_id)?;
        Ok(Sandbox {
            dir: work_dir.join("sandboxes").join(task_id).join(run_id),
        })
    }

    /// A sandbox at an existing directory (e.g. one found while recovering).
    pub fn at(dir: impl Into<PathBuf>) -> Sandbox {
        Sandbox { dir: dir.into() }
    }

    /// The run directory (the records; root's).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The task's own directory: its working directory and `$DROVER_SANDBOX`.
    pub fn task_dir(&self) -> PathBuf {
        self.dir.join(TASK_DIR)
    }
    /// Where this run's `stdout` and `stderr` are: [`Sandbox::task_dir`], or the run directory
    /// itself for a run started before there was a task directory.
    pub fn output_dir(&self) -> PathBuf {
        let task_dir = self.task_dir();
        let old_layout = fs::symlink_metadata(&task_dir).is_err()
            && fs::symlink_metadata(self.dir.join("stdout")).is_ok();
        if old_layout {
            self.dir.clone()
        } else {
            task_dir
        }
    }
    pub fn stdout_path(&self) -> PathBuf {
        self.task_dir().join("stdout")
    }
    pub fn stderr_path(&self) -> PathBuf {
        self.task_dir().join("stderr")
    }
    pub fn supervisor_path(&self) -> PathBuf {
        self.dir.join("supervisor.json")
    }
    pub fn exit_path(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// Creates the run directory (mode 0711) and the task's directory in it (mode 0750), both
    /// owned by `owner` (the task's uid and primary gid; `None`: whoever we are), and opens
    /// `stdout`/`stderr` there for appending (mode 0640, same owner).
    pub fn create(&self, owner: Option<(Uid, Gid)>) -> Result<(File, File), SandboxError> {
        ensure_dir_mode(&self.dir, PASS_THROUGH_DIR_MODE)?;
        let task_dir = self.task_dir();
        match fs::create_dir(&task_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create sandbox", &task_dir)(e).into()),
        }
        // Checked before it is given away: a symlink here would hand the task someone else's
        // directory.
        let meta = fs::symlink_metadata(&task_dir).map_err(io_err("stat", &task_dir))?;
        if !meta.is_dir() {
            return Err(PathIoError::new(
                "create sandbox",
                task_dir,
                io::Error::other("exists and is not a directory"),
            )
            .into());
        }
        chown(&task_dir, owner)?;
        set_mode(&task_dir, TASK_DIR_MODE)?;
        let open = |p: PathBuf| -> Result<File, SandboxError> {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(OUTPUT_FILE_MODE)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&p)
                .map_err(io_err("open output", &p))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid.as_raw()), Some(gid.as_raw()))
                    .map_err(io_err("chown", &p))?;
            }
            file.set_permissions(fs::Permissions::from_mode(OUTPUT_FILE_MODE))
                .map_err(io_err("chmod", &p))?;
            Ok(file)
        };
        Ok((open(self.stdout_path())?, open(self.stderr_path())?))
    }

    pub fn write_supervisor(&self, record: &SupervisorRecord) -> Result<(), SandboxError> {
        write_json_atomic(&self.supervisor_path(), record)
    }
    pub fn write_exit(&self, record: &ExitRecord) -> Result<(), SandboxError> {
        write_json_atomic(&self.exit_path(), record)
    }
    /// `Ok(None)` when the file does not exist.
    pub fn read_supervisor(&self) -> Result<Option<SupervisorRecord>, SandboxError> {
        read_json(&self.supervisor_path())
    }
    /// `Ok(None)` when the file does not exist.
    pub fn read_exit(&self) -> Result<Option<ExitRecord>, SandboxError> {
        read_json(&self.exit_path())
    }
}

fn chown(path: &Path, owner: Option<(Uid, Gid)>) -> Result<(), PathIoError> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(io_err("chown", path)),
        None => Ok(()),
    }
}

/// Writes `value` as JSON to `path` so that readers see the old file or the complete new one, and
/// the new one survives a crash once this returns: tmp file, fsync, rename, fsync of the directory.
/// The file is private (mode 0600): records are the agent's and the supervisor's, never a task's.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), SandboxError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| SandboxError::BadRecord {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    // A tmp file left by an interrupted write keeps its old mode through `open`.
    file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE_MODE))
        .map_err(io_err("chmod", &tmp))?;
    file.write_all(&bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err("rename", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))?;
    Ok(())
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, SandboxError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e).into()),
    };
    let mut bytes = Vec::new();
    file.take(RECORD_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > RECORD_BYTES_MAX {
        return Err(SandboxError::RecordTooLarge {
            path: path.to_path_buf(),
            limit: RECORD_BYTES_MAX,
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| SandboxError::BadRecord {
            path: path.to_path_buf(),
            source,
        })
}

/// What a sandbox's files say about its run: `Exited` once `exit.json` exists; `Running` while the
/// recorded supervisor is alive (same pid *and* same start time, so a reused pid does not count);
/// otherwise `Lost`.
pub fn inspect(sandbox: &Sandbox) -> Result<TaskState, SandboxError> {
    if let Some(exit) = sandbox.read_exit()? {
        return Ok(TaskState::Exited(exit));
    }
    let Some(sup) = sandbox.read_supervisor()? else {
        return Ok(TaskState::Lost);
    };
    let alive = procfs::stat(sup.supervisor_pid)
        .is_some_and(|s| s.start_ticks == sup.supervisor_start_ticks && !s.is_zombie_or_dead());
    if alive {
        return Ok(TaskState::Running {
            supervisor_pid: sup.supervisor_pid,
        });
    }
    // The supervisor writes exit.json and then exits: it may have done both since the first read.
    Ok(match sandbox.read_exit()? {
        Some(exit) => TaskState::Exited(exit),
        None => TaskState::Lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::TASK_ID_BYTES_MAX;

    fn field_of(e: SandboxError) -> &'static str {
        match e {
            SandboxError::InvalidId { field, .. } => field,
            other => panic!("expected InvalidId, got {other}"),
        }
    }

    #[test]
    fn task_ids_that_could_escape_the_sandbox_are_rejected() {
        // Proves ids with '/', '..', NUL, or over the length limit never become paths, and the error names the field.
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".",
            "x\0y",
            "sp ace",
            "svc:3",
            &"x".repeat(TASK_ID_BYTES_MAX + 1),
        ] {
            let e = validate_task_id(bad).expect_err(bad);
            assert_eq!(field_of(e), "task_id");
        }
        for good in ["web.1", "svc-a_b.3", &"x".repeat(TASK_ID_BYTES_MAX)] {
            validate_task_id(good).expect(good);
        }
        assert_eq!(field_of(validate_run_id("a.b").unwrap_err()), "run_id");
        assert!(Sandbox::new(Path::new("/w"), "a/../../etc", "r1").is_err());
        let s = Sandbox::new(Path::new("/w"), "web.1", "r1").unwrap();
        assert_eq!(s.dir(), Path::new("/w/sandboxes/web.1/r1"));
    }

    #[test]
    fn exit_record_round_trips_and_leaves_no_tmp_file() {
        // Proves the atomic writer produces a readable record under the final name and no leftover tmp file.
        let tmp = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(tmp.path(), "t", "r").unwrap();
        sb.create(None).unwrap();
        assert_eq!(sb.read_exit().unwrap(), None);
        let rec = ExitRecord {
            status: ExitStatus::Exited(3),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
            task_pid: Some(10),
            isolation: IsolationKind::Rlimits,
            kill_escalated: false,
        };
        sb.write_exit(&rec).unwrap();
        assert_eq!(sb.read_exit().unwrap(), Some(rec.clone()));
        assert!(!sb.dir().join("exit.json.tmp").exists());
        let mode = fs::metadata(sb.exit_path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, PRIVATE_FILE_MODE, "records are private");
        assert_eq!(inspect(&sb).unwrap(), TaskState::Exited(rec));
    }

    #[test]
    fn the_task_dir_is_the_tasks_and_the_run_dir_is_only_passed_through() {
        // Proves the modes a sandbox is created with, whatever the umask: the run dir 0711 (the
        // records stay unreadable), the task dir 0750, stdout/stderr 0640 in it; and that a run
        // from before the task dir still has its output found where it was.
        let tmp = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(tmp.path(), "t", "r").unwrap();
        sb.create(None).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(sb.dir()), 0o711);
        assert_eq!(mode(&sb.task_dir()), 0o750);
        assert_eq!(mode(&sb.stdout_path()), 0o640);
        assert_eq!(mode(&sb.stderr_path()), 0o640);
        assert_eq!(sb.output_dir(), sb.task_dir());

        let old = Sandbox::new(tmp.path(), "t", "old").unwrap();
        fs::create_dir_all(old.dir()).unwrap();
        assert_eq!(old.output_dir(), old.task_dir(), "nothing there yet");
        fs::write(old.dir().join("stdout"), b"x").unwrap();
        assert_eq!(old.output_dir(), old.dir());
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_state() {
        // Proves a corrupt exit.json surfaces as BadRecord naming the path instead of being misread.
        let tmp = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(tmp.path(), "t", "r").unwrap();
        sb.create(None).unwrap();
        fs::write(sb.exit_path(), b"{\"status\":").unwrap();
        match inspect(&sb) {
            Err(SandboxError::BadRecord { path, .. }) => assert_eq!(path, sb.exit_path()),
            other => panic!("expected BadRecord, got {other:?}"),
        }
    }
}
