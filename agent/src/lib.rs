//! The agent: resource discovery (sysinfo), the per-task supervisor, isolation (cgroups, rlimits),
//! sandboxes, the status-update manager, checkpointing and recovery after a restart.
//!
//! Not built yet: this crate arrives with the two-level scheduling issue. It talks to the leading
//! master over gRPC through `drover-proto` and never touches coord.
