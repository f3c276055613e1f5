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
