//! The per-service status the leading framework copy publishes at `/services/status/NAME` (JSON),
//! for `drover service status|ls|deploy --wait` and the dashboard.
//!
//! Counts are over the instances the framework tracks (launched and not yet terminal, of any
//! version); `at_spec` is the one bit a `--wait` needs: exactly `desired` instances, all of the
//! spec's current `version`, all running and healthy, nothing else left. `message` says why not,
//! e.g. "1 instance pending: max_per_host=1 reached on 2 offer(s)", for people; `pending` says
//! why instances wait to be launched for programs (`--wait` fails on stuck ones, never by
//! reading `message`).

use serde::{Deserialize, Serialize};

/// Health of one instance as the framework's checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The spec has no health check: running counts as healthy.
    None,
    /// Not checked yet, or failing within its grace period.
    Unknown,
    Healthy,
    /// `max_failures` consecutive failures: the instance is being replaced.
    Unhealthy,
}

/// One launched instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub task_id: String,
    /// The instance index `N` of the task id `NAME.N.xxxx` and label `instance=N`.
    pub instance: u32,
    pub agent_id: String,
    /// The agent's hostname (from its offers): where the instance's ports are.
    pub host: String,
    /// `PORT0..` of the instance.
    pub ports: Vec<u16>,
    /// The latest task state, e.g. `TASK_RUNNING`.
    pub state: String,
    pub health: Health,
    /// How many instances with this index were replaced before this one.
    pub restarts: u32,
    /// The spec version it runs (label `version=V`).
    pub version: String,
    /// Unix milliseconds when it was first reported running; `None` until then.
    pub started_at_ms: Option<u64>,
    /// The message of its latest status update, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Instances of the current version that are wanted and not launched, by why. Records written
/// before these counts existed read as all zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PendingInstances {
    /// No offer has been tried for them yet: nothing is wrong, the framework waits for offers.
    pub waiting_for_offers: u32,
    /// The last offers could not take them (resources, placement rules), or their launch failed;
    /// `message` says why. The cluster as it is may never run them.
    pub unplaceable: u32,
    /// Replacements waiting out their restart backoff after failing.
    pub backing_off: u32,
}

impl PendingInstances {
    /// Pending for a reason other than offers yet to come: what a deploy may be stuck on.
    pub fn stuck(&self) -> u32 {
        self.unplaceable.saturating_add(self.backing_off)
    }
}

/// The status of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// The version of the spec the framework works towards ([`crate::spec::ServiceSpec::version`]).
    pub version: String,
    /// `instances` of the spec (0 while the service is being removed).
    pub desired: u32,
    /// Launched, not yet running (staging or starting).
    pub staged: u32,
    /// Running (any version).
    pub running: u32,
    /// Running and healthy (or running with no health check), any version.
    pub healthy: u32,
    /// Exactly `desired` instances of `version`, all running and healthy, and no other.
    pub at_spec: bool,
    /// The spec was removed: every instance is being killed, then this node goes away.
    #[serde(default)]
    pub removing: bool,
    /// Why the service is not at its spec; empty when it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Why instances of `version` wait to be launched (all zero when none wait).
    #[serde(default)]
    pub pending: PendingInstances,
    /// Instances ordered by index, then task id.
    pub instances: Vec<InstanceStatus>,
    /// Unix milliseconds of this status.
    pub updated_at_ms: u64,
}

impl ServiceStatus {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a status always serializes")
    }

    pub fn from_json(json: &str) -> Result<ServiceStatus, serde_json::Error> {
        serde_json::from_str(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_json() {
        let status = ServiceStatus {
            name: "web".into(),
            version: "0123456789abcdef".into(),
            desired: 2,
            staged: 1,
            running: 1,
            healthy: 1,
            at_spec: false,
            removing: false,
            message: "1 instance pending".into(),
            pending: PendingInstances {
                unplaceable: 1,
                ..PendingInstances::default()
            },
            instances: vec![InstanceStatus {
                task_id: "web.0.abcd".into(),
                instance: 0,
                agent_id: "a1".into(),
                host: "127.0.0.1".into(),
                ports: vec![31000],
                state: "TASK_RUNNING".into(),
                health: Health::Healthy,
                restarts: 2,
                version: "0123456789abcdef".into(),
                started_at_ms: Some(1_700_000_000_000),
                message: String::new(),
            }],
            updated_at_ms: 1_700_000_000_123,
        };
        let json = status.to_json();
        assert!(json.contains("\"health\": \"healthy\""), "{json}");
        assert!(json.contains("\"unplaceable\": 1"), "{json}");
        assert_eq!(ServiceStatus::from_json(&json).expect("reads back"), status);
    }

    #[test]
    fn a_record_from_before_the_pending_counts_reads_with_none_pending() {
        // Proves a status written by an older framework (no `pending`) still reads.
        let json = r#"{"name": "web", "version": "v1", "desired": 1, "staged": 0, "running": 0,
            "healthy": 0, "at_spec": false, "message": "1 instance pending: waiting for offers",
            "instances": [], "updated_at_ms": 1}"#;
        let status = ServiceStatus::from_json(json).expect("reads");
        assert_eq!(status.pending, PendingInstances::default());
    }
}
