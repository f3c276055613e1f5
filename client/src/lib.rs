//! The one client layer for anything that talks to the masters (the SDK, the agent, the CLI, the
//! services framework): the validated master list ([`Endpoints`]), the leader-search rules
//! ([`LeaderSearch`]: `drover-leader` redirects, round robin, jittered bounded backoff, an
//! optional total wait), reading the redirect hint ([`leader_hint`], [`redirect`]), how one
//! master is connected to ([`Transport`]: connect timeout, per-call deadline, keepalive; where
//! TLS and credentials go), and the async driver that runs a search with the caller's attempt
//! ([`find_leader`]), and who leads as each master answers it ([`cluster`]: `Cluster.Status`).
//!
//! Must not know about frameworks, agents, offers or coord, nor depend on the master, agent or
//! SDK crates; `search` reads no clock and no global RNG (time elapsed and a seed are passed in)
//! and does no I/O. Start at `search` (the rules), then `driver::find_leader`.

pub mod cluster;
pub mod driver;
pub mod endpoints;
pub mod redirect;
pub mod search;
pub mod transport;

pub use driver::{Answer, Outcome, SearchError, find_leader, random_seed};
pub use endpoints::{Endpoints, EndpointsError, validate_addr};
pub use redirect::{LEADER_METADATA_KEY, Redirect, leader_hint, redirect};
pub use search::{
    Backoff, JITTER_FLOOR, LeaderSearch, LimitsError, REDIRECTS_MAX_DEFAULT, SearchLimits, Step,
};
pub use transport::{
    Credentials, Keepalive, MasterChannel, Transport, TransportError, error_reason, status_text,
};
