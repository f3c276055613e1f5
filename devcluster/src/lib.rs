//! Dev clusters: trees of real `drover` processes on one machine. `drover local` (the whole
//! cluster, restarting what dies), the benches' own ensembles and clusters, and the integration
//! tests start, watch and stop masters, agents and frameworks through this crate.
//!
//! It owns process trees (each child in its own process group, logging to a file, killed by the
//! kernel if the parent dies; the task supervisors left under agents' work dirs), port schemes
//! and "who leads" as the masters answer it (`Cluster.Status`, never their logs). It must not
//! parse flags or print results: that is the binary's (`src/cli`). Start at `local::LocalCluster`,
//! then `ensemble::Ensemble` and `roles`. The harnesses behind `drover bench` live in `bench`
//! (one module per bench: a config in, the figures out).

pub mod bench;
pub mod ensemble;
pub mod local;
pub mod process;
pub mod roles;
pub mod tls;
