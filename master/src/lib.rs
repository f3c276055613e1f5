//! The leading master's scheduling logic. Today: the DRF allocator, a sans-IO core that decides
//! which framework is offered which agent's free resources, and records why every other
//! framework was passed over.
//!
//! Must not do I/O, read a clock, draw randomness or spawn tasks: time comes in as `now_ms`, and
//! the (future) allocation driver owns the batching timer and sends offers and rescinds. Must not
//! depend on `drover-proto` or `drover-coord` yet, nor see wire types: the networked master
//! (registry in coord, scheduler/agent/operator APIs) will wrap this core and convert at its
//! edge. Start at `allocator` (module doc: the cycle, batching, the Mesos traps avoided), then
//! `allocator::sorter` (DRF), `allocator::filters` (decline filters), `resources` and `limits`.

pub mod allocator;
pub mod ids;
pub mod limits;
pub mod resources;

pub use allocator::{
    Allocation, Allocator, AllocatorConfig, AllocatorError, Offer, Skip, SkipReason,
};
pub use ids::{AgentId, FrameworkId, IdError, OfferId, Role};
pub use resources::{Ports, Resources, ResourcesError, Scalars};
