//! Task isolation: cgroup v2 where the host delegates `cpu` and `memory` to us, else cgroup v1 (a
//! `memory` hierarchy, plus `cpu` when mounted), else rlimits with a warning.
//!
//! Task cgroups live under the supervisor's *own* cgroup in each hierarchy:
//! `<own>/<parent>/<task_id>.<run_id>` (parent defaults to `drover`). Nesting below our own cgroup
//! keeps whatever limits the host put on the agent, and never takes processes out of a subtree
//! someone else manages. The task joins its cgroup in the forked child before `exec` (it writes
//! `0` — "myself" — to `cgroup.procs` fds opened beforehand), so it never runs a single instruction
//! of the task unconfined. See [`crate::supervisor`] for the order of things around a task.
//!
//! What each mode can promise:
//! - cgroups: memory is a hard limit; going over gets the task OOM-killed and reported
//!   [`crate::ExitStatus::OomKilled`] (v2 `memory.events`, v1 `memory.oom_control` `oom_kill`);
//!   CPU is a CFS quota; every process of the task is found and killed through the cgroup.
//! - rlimits: `RLIMIT_DATA` (heap and private mappings; not `RLIMIT_AS`, which breaks runtimes
//!   that reserve address space) makes allocations fail, so the task usually exits non-zero and is
//!   reported `Exited(code)`, not `OomKilled`. No CPU limit. Processes are found through the
//!   process group and the supervisor being a child subreaper.

mod cgroup;
mod detect;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cgroup::TaskCgroup;

/// Which isolation a supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsolationKind {
    CgroupV2,
    CgroupV1,
    Rlimits,
}

/// What the operator asked for: the strongest the host allows, or rlimits only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsolationPolicy {
    #[default]
    Auto,
    Rlimits,
}

/// Isolation errors; `path` is the cgroup file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("{op} {path}")]
    Cgroup {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still has processes after the cleanup deadline")]
    CgroupBusy { path: PathBuf },
}

/// The isolation this host supports, as found by [`Isolation::detect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    kind: IsolationKind,
    description: String,
    backend: Backend,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    /// Our own cgroup directory in the unified hierarchy.
    V2 {
        own: PathBuf,
    },
    /// Our own cgroup directory in the v1 `memory` hierarchy and, if mounted, the `cpu` one.
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
    },
    Rlimits,
}

impl Isolation {
    /// Finds the strongest isolation this host allows: cgroup v2 with `cpu` and `memory` available
    /// (or enable-able) below our own cgroup, else cgroup v1 with a writable `memory` hierarchy,
    /// else rlimits. Reads `/proc/self/mountinfo`, `/proc/self/cgroup` and cgroupfs; the only write
    /// is enabling `cpu`/`memory` in our own v2 `cgroup.subtree_control` when they are missing.
    pub fn detect() -> Isolation {
        detect::detect()
    }

    /// [`Isolation::detect`] unless the policy asks for rlimits only.
    pub fn select(policy: IsolationPolicy) -> Isolation {
        match policy {
            IsolationPolicy::Auto => Isolation::detect(),
            IsolationPolicy::Rlimits => Isolation::rlimits(
                "rlimits only, as configured (RLIMIT_DATA for memory, no CPU limit)",
            ),
        }
    }

    fn rlimits(description: impl Into<String>) -> Isolation {
        Isolation {
            kind: IsolationKind::Rlimits,
            description: description.into(),
            backend: Backend::Rlimits,
        }
    }

    pub fn kind(&self) -> IsolationKind {
        self.kind
    }

    /// One line saying which isolation is used and why, for the supervisor's and agent's start log.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Creates the task's cgroup `<own>/<parent>/<name>` with the limits set; `None` under rlimits.
    pub fn create_task_cgroup(
        &self,
        parent: &str,
        name: &str,
        mem_bytes: u64,
        cpus: f64,
    ) -> Result<Option<TaskCgroup>, IsolationError> {
        let dirs = match &self.backend {
            Backend::Rlimits => return Ok(None),
            Backend::V2 { own } => vec![own.join(parent).join(name)],
            Backend::V1 { memory, cpu } => {
                let mut dirs = vec![memory.join(parent).join(name)];
                dirs.extend(cpu.iter().map(|c| c.join(parent).join(name)));
                dirs
            }
        };
        TaskCgroup::create(self.kind, dirs, mem_bytes, cpus).map(Some)
    }
}

impl Isolation {
    /// The directories of `<own>/<parent>` (one per hierarchy); empty under rlimits.
    pub fn parent_dirs(&self, parent: &str) -> Vec<PathBuf> {
        match &self.backend {
            Backend::Rlimits => Vec::new(),
            Backend::V2 { own } => vec![own.join(parent)],
            Backend::V1 { memory, cpu } => {
                let mut dirs = vec![memory.join(parent)];
                dirs.extend(cpu.iter().map(|c| c.join(parent)));
                dirs
            }
        }
    }

    /// Kills every process in every task cgroup under `<own>/<parent>` and removes them and the
    /// parent itself. For tests and for retiring an agent's work dir; never used while tasks run.
    pub fn remove_parent(&self, parent: &str) -> Result<(), IsolationError> {
        for dir in self.parent_dirs(parent) {
            let children = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(IsolationError::Cgroup {
                        op: "list cgroup",
                        path: dir,
                        source,
                    });
                }
            };
            let tasks: Vec<PathBuf> = children
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            for task in tasks {
                TaskCgroup::open(self.kind, vec![task]).kill_and_remove()?;
            }
            TaskCgroup::open(self.kind, vec![dir]).kill_and_remove()?;
        }
        Ok(())
    }
}

/// CFS period used for CPU quotas, in microseconds (the kernel default).
const CPU_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota the kernel accepts, in microseconds.
const CPU_QUOTA_US_MIN: u64 = 1_000;

/// CFS quota for `cpus` CPUs per [`CPU_PERIOD_US`], rounded up and clamped to what the kernel takes.
fn cpu_quota_us(cpus: f64) -> u64 {
    let quota = (cpus * CPU_PERIOD_US as f64).ceil();
    if quota.is_finite() && quota >= CPU_QUOTA_US_MIN as f64 {
        // In range: cpus is validated to at most CPUS_MAX, so this fits in u64 exactly.
        quota as u64
    } else {
        CPU_QUOTA_US_MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_rounds_up_and_clamps() {
        // Proves fractional CPUs become a CFS quota that is never below the kernel minimum.
        assert_eq!(cpu_quota_us(1.0), 100_000);
        assert_eq!(cpu_quota_us(0.25), 25_000);
        assert_eq!(cpu_quota_us(0.000_001), CPU_QUOTA_US_MIN);
        assert_eq!(cpu_quota_us(2.5), 250_000);
    }

    #[test]
    fn rlimits_policy_never_touches_cgroups() {
        // Proves the rlimits policy yields no task cgroup, whatever the host supports.
        let iso = Isolation::select(IsolationPolicy::Rlimits);
        assert_eq!(iso.kind(), IsolationKind::Rlimits);
        assert!(
            iso.create_task_cgroup("p", "t.r", 1 << 30, 1.0)
                .unwrap()
                .is_none()
        );
    }
}
