//! The agent: today the per-task supervisor, its isolation (cgroup v2, cgroup v1, else rlimits) and
//! the task sandbox on disk. Resource discovery, the status-update manager, the master connection
//! and re-adoption after a restart come next and build on [`sandbox::inspect`].
//!
//! Must not touch coord: agents reach the cluster only through the master over gRPC (`drover-proto`).
//! Nothing here is async or networked; a supervisor is a small synchronous process of its own.
//!
//! Start at [`supervisor::run_supervisor`] (what `drover supervise` runs for one task), then
//! [`sandbox`] (the files a supervisor leaves behind, and [`sandbox::inspect`] for recovery) and
//! [`isolation::Isolation::detect`].

pub mod isolation;
pub mod limits;
mod procfs;
pub mod sandbox;
pub mod supervisor;

pub use isolation::{Isolation, IsolationKind, IsolationPolicy};
pub use sandbox::{ExitRecord, ExitStatus, Sandbox, SupervisorRecord, TaskState, inspect};
pub use supervisor::{SupervisorError, SupervisorSpec, TaskCommand, run_supervisor};
