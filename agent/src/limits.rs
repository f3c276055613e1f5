//! Every maximum the agent enforces, with its unit, in one place.

/// Longest accepted task id. It becomes a directory name and part of a cgroup name; the rule is
/// `drover_types::ids`' one entity-id rule.
pub const TASK_ID_BYTES_MAX: usize = drover_types::ids::ID_BYTES_MAX;
/// Longest accepted run id (one task id can run several times; each run gets its own sandbox).
pub const RUN_ID_BYTES_MAX: usize = 64;
/// Longest accepted cgroup parent name (one path component under the agent's own cgroup).
pub const CGROUP_PARENT_BYTES_MAX: usize = 64;
/// Most ports one task may be given (`PORT0..PORT{n-1}`).
pub const PORTS_PER_TASK_MAX: usize = 64;
/// Most argv entries of a task command.
pub const ARGV_ENTRIES_MAX: usize = 4096;
/// Most extra environment variables one task may be given.
pub const ENV_VARS_MAX: usize = 1024;
/// Smallest memory limit a task may ask for; below this nothing, not even a shell, starts.
pub const MEM_BYTES_MIN: u64 = 4 * 1024 * 1024;
/// Most CPUs a task may ask for.
pub const CPUS_MAX: f64 = 4096.0;
/// Longest interval between two OOM checks of a running task's cgroup.
pub const OOM_POLL_INTERVAL_MS_MAX: u64 = 60_000;
/// Longest grace period between SIGTERM and SIGKILL.
pub const GRACE_PERIOD_MS_MAX: u64 = 10 * 60 * 1000;
/// How long the supervisor keeps sweeping (SIGKILL, reap, cgroup rmdir) after a task before it
/// gives up and reports the leftover as an error.
pub const CLEANUP_DEADLINE_MS: u64 = 10_000;
/// Largest record file (`supervisor.json`, `exit.json`, `spec.json`) the agent will read.
pub const RECORD_BYTES_MAX: u64 = 1024 * 1024;
