//! The SDK's own view of offers and of what a task asks for.
//!
//! These are plain domain types, not wire types: the event stream converts proto offers into
//! `Offer` (in `convert`), so framework code and the placement helper never see prost structs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::{PortRanges, Resources, ResourcesError, Scalars, millicpus_from_cpus};

pub use crate::ids::{AgentId, OfferId};

/// Resources on one agent offered to this framework.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub id: OfferId,
    pub agent_id: AgentId,
    /// The host the agent runs on; `max_per_host` counts per hostname (an agent id changes when an
    /// agent loses its work dir, the host does not). Empty if unknown: the agent id stands in.
    pub hostname: String,
    /// Operator-set labels such as `rack = "r1"`, matched by `Placement::spread_by`.
    pub attributes: BTreeMap<String, String>,
    pub resources: Resources,
}

/// What one instance of a task needs: cpus, memory, and how many ports (any free ones).
///
/// Invariant: `scalars.millicpus > 0`, so an offer holds finitely many instances.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "TaskRequestFields", into = "TaskRequestFields")]
pub struct TaskRequest {
    scalars: Scalars,
    ports: u32,
}

impl TaskRequest {
    /// `cpus` is rounded to the nearest millicpu and must come to at least one (`0.001`);
    /// otherwise `InvalidCpus` naming `cpus`.
    pub fn new(cpus: f64, mem_bytes: u64, ports: u32) -> Result<TaskRequest, ResourcesError> {
        let millicpus = millicpus_from_cpus("cpus", cpus)?;
        if millicpus == 0 {
            return Err(ResourcesError::InvalidCpus {
                field: "cpus",
                value: cpus,
            });
        }
        Ok(TaskRequest {
            scalars: Scalars {
                millicpus,
                mem_bytes,
            },
            ports,
        })
    }

    pub fn cpus(&self) -> f64 {
        self.scalars.cpus()
    }

    pub fn millicpus(&self) -> u64 {
        self.scalars.millicpus
    }

    pub fn mem_bytes(&self) -> u64 {
        self.scalars.mem_bytes
    }

    /// How many ports each instance gets (`PORT0..`).
    pub fn ports(&self) -> u32 {
        self.ports
    }

    /// The resources of one instance given the ports it was assigned.
    pub fn resources_with(&self, ports: &[u16]) -> Resources {
        Resources::from_millicpus(
            self.scalars.millicpus,
            self.scalars.mem_bytes,
            PortRanges::from_ports(ports.iter().copied()),
        )
    }
}

/// The serialized shape of a `TaskRequest`: cpus as a number, like a service spec.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequestFields {
    cpus: f64,
    mem_bytes: u64,
    #[serde(default)]
    ports: u32,
}

impl TryFrom<TaskRequestFields> for TaskRequest {
    type Error = ResourcesError;

    fn try_from(f: TaskRequestFields) -> Result<TaskRequest, ResourcesError> {
        TaskRequest::new(f.cpus, f.mem_bytes, f.ports)
    }
}

impl From<TaskRequest> for TaskRequestFields {
    fn from(r: TaskRequest) -> TaskRequestFields {
        TaskRequestFields {
            cpus: r.cpus(),
            mem_bytes: r.mem_bytes(),
            ports: r.ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_request_refuses_no_cpu() {
        // Proves a request must ask for at least one millicpu, and bad cpus name the field.
        for cpus in [0.0, 0.0004, -1.0, f64::NAN] {
            assert!(matches!(
                TaskRequest::new(cpus, 1, 0),
                Err(ResourcesError::InvalidCpus { field: "cpus", .. })
            ));
        }
        let r = TaskRequest::new(0.25, 64 << 20, 2).expect("valid");
        assert_eq!((r.millicpus(), r.cpus(), r.ports()), (250, 0.25, 2));
        assert_eq!(
            TaskRequest::try_from(TaskRequestFields::from(r.clone())),
            Ok(r)
        );
    }
}
