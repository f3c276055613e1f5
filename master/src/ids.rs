//! The master's identifiers. Agent, framework and task ids and roles are `drover_types::ids`
//! (one type per entity, shared with the agent and the SDK), validated where they come off the
//! wire (`wire`, `registry`, the driver's RPC handlers). Only the offer id is the master's own:
//! the allocator numbers offers from a counter.

use std::fmt;

pub use drover_types::ids::{
    AgentId, FrameworkId, ID_BYTES_MAX, IdError, ROLE_BYTES_MAX, Role, UserName,
};

/// An offer. The allocator numbers offers from a counter; the networked master qualifies them
/// with its leadership epoch on the wire so ids from an old leader are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OfferId(pub u64);

impl fmt::Display for OfferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "O{}", self.0)
    }
}
