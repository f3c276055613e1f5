//! Replicated coordination store: znode tree, sessions, watches, ZAB replication, transaction log
//! and snapshots, the gRPC `Session` and `Peer` services and the Rust client.
//!
//! Must not know about frameworks, agents or offers. The core (`data_tree`, `watches`, `sessions`,
//! `server`, `zab`, `replica`) reads no clock or RNG, does no I/O and spawns nothing: time and
//! randomness come in as arguments, and it answers with actions that `driver` carries out (and
//! that the deterministic simulation in `sim` carries out under faults). Start at
//! `replica::Replica`, then `server::ServerCore` (the client pipeline), `zab::ZabPeer` (ordering
//! and durability across replicas), `prep::Prep` (the leader's ACL checks before it proposes),
//! `data_tree::DataTree` (what a transaction does), `acl` (ZooKeeper's ACL model), then `driver`.

pub mod acl;
pub mod client;
pub mod convert;
pub mod data_tree;
pub mod driver;
pub mod grants;
#[cfg(test)]
mod interaction;
pub mod op;
pub mod path;
pub mod prep;
pub mod replica;
pub mod server;
pub mod sessions;
#[cfg(test)]
mod sim;
pub mod storage;
pub mod txn;
pub mod watches;
pub mod zab;
pub mod zxid;

pub use op::{CreateMode, EventType, Op, OpError, OpResult, ReadOp, Stat, WatchEvent, WriteOp};
pub use zxid::{SessionId, Zxid};
