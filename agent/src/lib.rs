//! The agent: the `drover agent` daemon ([`daemon`]) and the per-task supervisor it starts for
//! every task (`drover supervise`, [`supervisor::run_supervisor`]), with its isolation (cgroup v2,
//! cgroup v1, else rlimits), the task sandbox on disk, resource discovery and flag parsing
//! ([`resources`]) and the status-update manager that checkpoints updates and retries them until
//! acknowledged ([`status_updates`]).
//!
//! Must not touch coord: agents reach the cluster only through the master over gRPC (`drover-proto`).
//! Two halves that do not mix: [`daemon`] is async and networked (tokio, tonic) and owns the
//! master connection, the task table and recovery; everything else is synchronous, and a
//! supervisor is a small synchronous process of its own that runs without the agent.
//!
//! Start at [`daemon::run`] (what `drover agent` runs) and the duties listed in [`daemon`]; then
//! [`supervisor::run_supervisor`] (what `drover supervise` runs for one task), [`sandbox`] (the
//! files a supervisor leaves behind, and [`sandbox::inspect`] for recovery) and
//! [`isolation::Isolation::detect`]; for what the agent offers, [`resources::discover`]; for status
//! updates, [`status_updates::StatusUpdateManager`]; for who tasks run as, [`task_user`] (the
//! agent's rules) and [`privileges`] (the supervisor's switch to the task's user).

pub mod daemon;
pub mod isolation;
pub mod limits;
pub mod path_io;
pub mod privileges;
mod procfs;
pub mod resources;
pub mod sandbox;
pub mod status_updates;
pub mod supervisor;
pub mod task_user;

pub use isolation::{Isolation, IsolationKind, IsolationPolicy};
pub use resources::{AgentResources, ResourceError, ResourceOverrides, discover};
pub use sandbox::{ExitRecord, ExitStatus, Sandbox, SupervisorRecord, TaskState, inspect};
// `status_updates::TaskState` (Mesos's task states) is not re-exported: the root `TaskState` is
// the sandbox's view of a run.
pub use status_updates::{
    AckOutcome, StatusUpdate, StatusUpdateConfig, StatusUpdateError, StatusUpdateManager,
};
pub use supervisor::{SupervisorError, SupervisorSpec, TaskCommand, run_supervisor};
