//! Newtype identifiers. They are opaque strings chosen by the master (framework, offer and agent
//! ids) or by the framework (task ids); the newtypes only keep them from being mixed up.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one offer; valid until the offer is accepted, declined or rescinded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OfferId(pub String);

/// Identifies one agent registration (a restarted agent that lost its work dir gets a new one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub String);

/// Identifies a framework; assigned by the master on the first subscription and reused to
/// re-subscribe (failover) for as long as the master keeps the framework.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FrameworkId(pub String);

/// Identifies a task; chosen by the framework, unique within it: 1..=255 bytes of
/// `[A-Za-z0-9._-]` (checked when a [`TaskInfo`](crate::TaskInfo) is built).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

macro_rules! id_impls {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> $t {
                $t(s.to_string())
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> $t {
                $t(s)
            }
        }
    };
}
id_impls!(OfferId);
id_impls!(AgentId);
id_impls!(FrameworkId);
id_impls!(TaskId);
