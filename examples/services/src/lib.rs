//! The services framework: keeps N instances of each service running across a Drover cluster, the
//! way Marathon does on Mesos.
//!
//! Owns the service spec (`spec`: parsing, validation, the stored JSON form), the published status
//! (`status`), and the framework process (`run`). Built only on the public SDK (`drover-sdk`) and
//! coord's client (`drover_coord::client`), which it uses as Marathon uses ZooKeeper: specs,
//! status, leader election and the framework id live under `/services`.
//!
//! Start at [`spec::parse`] and [`status::ServiceStatus`].

pub mod spec;
pub mod status;
