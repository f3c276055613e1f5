//! The leading master: the registry in coord, the allocator, offers, the task lifecycle and the
//! scheduler, agent and operator APIs.
//!
//! Two sans-IO cores do the deciding: `allocator` (DRF: which framework is offered which agent's
//! free resources, and why every other framework was passed over) and `core` (frameworks,
//! agents, tasks, offers and status updates for one leadership term). Neither does I/O, reads a
//! clock, draws randomness or spawns tasks; time comes in as `now_ms`. The async `driver` owns
//! the cores: it follows coord's leadership, writes the registry (`registry`), runs the
//! allocation timer and serves the gRPC APIs, converting wire types at its edge (`wire`).
//! `acl` owns tokens, policies and the checks every API makes once `--acl` is on.
//! Start at `core` (module doc), then `driver`, then `allocator`.

pub mod acl;
pub mod allocator;
pub mod cluster;
pub mod core;
pub mod driver;
pub mod http;
pub mod ids;
pub mod limits;
pub mod registry;
pub mod wire;

/// Resource arithmetic lives in `drover-types`, shared with the agents and the SDK.
pub use drover_types::resources;

pub use allocator::{
    Allocation, Allocator, AllocatorConfig, AllocatorError, Offer, Skip, SkipReason,
};
pub use drover_types::{PortRanges, Resources, ResourcesError, Scalars};
pub use ids::{AgentId, FrameworkId, IdError, OfferId, Role};
