//! The task sandbox on disk and the records a supervisor leaves in it.
//!
//! Layout: `<work_dir>/sandboxes/<task_id>/<run_id>/` holding
//! - `stdout`, `stderr`: the task's output (appended);
//! - `supervisor.json`: who supervises the run ([`SupervisorRecord`]), rewritten atomically once the
//!   task has a pid;
//! - `exit.json`: how the run ended ([`ExitRecord`]), written once, atomically (tmp file, fsync,
//!   rename, fsync of the directory), before the supervisor exits.
//!
//! [`inspect`] turns those files into a [`TaskState`]; it is what re-adoption after an agent restart
//! builds on. Invariant: once `exit.json` exists it is complete and never changes.

use crate::path_io::{PathIoError, io_err};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::isolation::IsolationKind;
use crate::limits::{RECORD_BYTES_MAX, RUN_ID_BYTES_MAX};
use crate::procfs;

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

/// One run's sandbox directory.
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

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout")
    }
    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr")
    }
    pub fn supervisor_path(&self) -> PathBuf {
        self.dir.join("supervisor.json")
    }
    pub fn exit_path(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// Creates the directory and opens `stdout`/`stderr` for appending.
    pub fn create(&self) -> Result<(File, File), SandboxError> {
        fs::create_dir_all(&self.dir).map_err(io_err("create sandbox", &self.dir))?;
        let open = |p: PathBuf| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|source| {
                    SandboxError::Io(PathIoError::new("open output", p.clone(), source))
                })
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

/// Writes `value` as JSON to `path` so that readers see the old file or the complete new one, and
/// the new one survives a crash once this returns: tmp file, fsync, rename, fsync of the directory.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), SandboxError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| SandboxError::BadRecord {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
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
        sb.create().unwrap();
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
        assert_eq!(inspect(&sb).unwrap(), TaskState::Exited(rec));
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_state() {
        // Proves a corrupt exit.json surfaces as BadRecord naming the path instead of being misread.
        let tmp = tempfile::tempdir().unwrap();
        let sb = Sandbox::new(tmp.path(), "t", "r").unwrap();
        sb.create().unwrap();
        fs::write(sb.exit_path(), b"{\"status\":").unwrap();
        match inspect(&sb) {
            Err(SandboxError::BadRecord { path, .. }) => assert_eq!(path, sb.exit_path()),
            other => panic!("expected BadRecord, got {other:?}"),
        }
    }
}
