//! Domain types that the master, the agents and the framework SDK share: `Resources` (fixed-point
//! cpus, memory bytes, port ranges, checked arithmetic), `Scalars` (what DRF shares out),
//! `TaskState` (the Mesos task states), one validated id type per entity (`ids`), the one grammar for durations and memory sizes (`units`),
//! plus their one mapping to and from the `drover-proto` wire types.
//!
//! Plain values only: no I/O, no async, no clock. Must not depend on coord, the master, the agent
//! or the SDK; wire types appear only in `convert`. Start at [`Resources`] and [`TaskState`].

pub mod convert;
pub mod ids;
pub mod resources;
pub mod task_state;
pub mod units;

pub use convert::InvalidTaskState;
pub use ids::{AgentId, FrameworkId, IdError, Role, TaskId, UserName};
pub use resources::{
    MILLICPUS_PER_CPU, PortRanges, Resources, ResourcesError, Scalars, cpus_from_millicpus,
    format_mem, millicpus_from_cpus,
};
pub use task_state::TaskState;
pub use units::{UnitError, format_duration, parse_duration};
