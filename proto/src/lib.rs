//! Wire types only: the `.proto` files of every Drover API and the code tonic/prost generate from
//! them. No logic lives here; each crate converts between these types and its own domain types at
//! its edge, so core logic never handles prost types. Start at `proto/coord.proto`.

/// Protobuf package `drover.v1`.
pub mod v1 {
    tonic::include_proto!("drover.v1");
}

/// Largest gRPC message any Drover endpoint decodes or encodes: a 1 MiB znode plus framing and a
/// `multi` of several such ops stays under it.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The response metadata key in which a master that does not lead names the leader
/// (`HOST:PORT`) on its `UNAVAILABLE` answers. Part of the wire contract: the master sets it and
/// every client (`drover-client`) reads it; defined here once.
pub const LEADER_METADATA_KEY: &str = "drover-leader";
