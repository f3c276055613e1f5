//! One task's cgroup: create with limits, join from the forked child, detect OOM kills, kill every
//! member, remove.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{CPU_PERIOD_US, IsolationError, IsolationKind, cpu_quota_us};

/// How often cleanup re-checks a cgroup that still has members.
const CLEANUP_POLL: Duration = Duration::from_millis(10);

/// A task's cgroup directories (v2: one; v1: `memory` first, then `cpu` if mounted).
/// Invariant: `join` holds an open `cgroup.procs` of each directory, in the same order.
#[derive(Debug)]
pub struct TaskCgroup {
    kind: IsolationKind,
    dirs: Vec<PathBuf>,
    join: Vec<File>,
}

fn cg_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IsolationError + 'a {
    move |source| IsolationError::Cgroup {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), IsolationError> {
    fs::write(path, value).map_err(cg_err("write", path))
}

impl TaskCgroup {
    pub(super) fn create(
        kind: IsolationKind,
        dirs: Vec<PathBuf>,
        mem_bytes: u64,
        cpus: f64,
    ) -> Result<TaskCgroup, IsolationError> {
        for dir in &dirs {
            let parent = dir.parent().unwrap_or(dir);
            match fs::create_dir(parent) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(cg_err("create cgroup", parent)(e)),
            }
            if kind == IsolationKind::CgroupV2 {
                // Children of the parent need cpu and memory; the parent itself holds no process.
                write(&parent.join("cgroup.subtree_control"), "+cpu +memory")?;
            }
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Left over from a lost run with the same name: empty it and start afresh.
                    tracing::warn!(cgroup = %dir.display(), "removing a stale task cgroup");
                    TaskCgroup::open(kind, vec![dir.clone()]).kill_and_remove()?;
                    fs::create_dir(dir).map_err(cg_err("create cgroup", dir))?;
                }
                Err(e) => return Err(cg_err("create cgroup", dir)(e)),
            }
        }
        let mut cg = TaskCgroup::open(kind, dirs);
        if let Err(e) = cg
            .set_limits(mem_bytes, cpus)
            .and_then(|()| cg.open_join_files())
        {
            // Best effort: do not leave an empty cgroup behind for a task that never starts.
            let _ = cg.kill_and_remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// A handle on existing task cgroup directories (e.g. from a lost run's `supervisor.json`), for
    /// [`TaskCgroup::kill_and_remove`].
    pub fn open(kind: IsolationKind, dirs: Vec<PathBuf>) -> TaskCgroup {
        TaskCgroup {
            kind,
            dirs,
            join: Vec::new(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn set_limits(&self, mem_bytes: u64, cpus: f64) -> Result<(), IsolationError> {
        let quota = cpu_quota_us(cpus);
        for dir in &self.dirs {
            match self.kind {
                IsolationKind::CgroupV2 => {
                    write(&dir.join("memory.max"), &mem_bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                    let group = dir.join("memory.oom.group");
                    if group.exists() {
                        // An OOM kill takes the whole task, not one random process of it.
                        write(&group, "1")?;
                    }
                    write(&dir.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                IsolationKind::CgroupV1 => {
                    if dir.join("memory.limit_in_bytes").exists() {
                        write(&dir.join("memory.limit_in_bytes"), &mem_bytes.to_string())?;
                        // memory+swap must be set after memory (it may never be below it); equal
                        // means no swap.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            write(&memsw, &mem_bytes.to_string())?;
                        }
                    }
                    if dir.join("cpu.cfs_quota_us").exists() {
                        write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
                IsolationKind::Rlimits => unreachable!("no cgroup under rlimits"),
            }
        }
        Ok(())
    }

    fn open_join_files(&mut self) -> Result<(), IsolationError> {
        for dir in &self.dirs {
            let procs = dir.join("cgroup.procs");
            let file = OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(cg_err("open", &procs))?;
            self.join.push(file);
        }
        Ok(())
    }

    /// `cgroup.procs` fds the forked child writes `0` to before `exec`, to join this cgroup.
    /// They stay open (and close-on-exec) for the life of `self`.
    pub(crate) fn join_fds(&self) -> Vec<RawFd> {
        self.join.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// How many times the kernel OOM-killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = self.dirs.first() else {
            return 0;
        };
        let file = match self.kind {
            IsolationKind::CgroupV2 => "memory.events",
            _ => "memory.oom_control",
        };
        let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .find_map(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Pids of every process in the cgroup (all hierarchies).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to every process in the cgroup once; returns how many there were.
    /// On v2, SIGKILL goes through `cgroup.kill`, which also catches processes forked meanwhile.
    /// On v1 a pid read from `cgroup.procs` could in principle exit and be reused before the
    /// signal lands; callers loop until the cgroup is empty, which narrows that to a rare race.
    pub fn signal_all(&self, signal: Signal) -> usize {
        let pids = self.pids();
        if self.kind == IsolationKind::CgroupV2
            && signal == Signal::SIGKILL
            && let Some(dir) = self.dirs.first()
            && fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return pids.len();
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        pids.len()
    }

    /// SIGKILLs every member until the cgroup is empty, then removes the directories. Gives up
    /// with [`IsolationError::CgroupBusy`] after [`crate::limits::CLEANUP_DEADLINE_MS`].
    /// The caller reaps its own children meanwhile (the supervisor does, between calls).
    pub fn kill_and_remove(&self) -> Result<(), IsolationError> {
        let deadline = Instant::now() + Duration::from_millis(crate::limits::CLEANUP_DEADLINE_MS);
        for dir in &self.dirs {
            loop {
                self.signal_all(Signal::SIGKILL);
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                        if Instant::now() >= deadline {
                            return Err(IsolationError::CgroupBusy { path: dir.clone() });
                        }
                        thread::sleep(CLEANUP_POLL);
                    }
                    Err(e) => return Err(cg_err("remove cgroup", dir)(e)),
                }
            }
        }
        Ok(())
    }
}
