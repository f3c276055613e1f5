//! `drover_proto::v1` ↔ these types. The one copy of the mapping the master, the agents and the
//! SDK all use at their edges.
//!
//! Incoming resources are checked: a port above 65535 or an inverted range is a
//! [`ResourcesError`] naming `ports`, never a panic or a silent truncation. Task states come two
//! ways: [`TaskState::from_wire`] refuses an unspecified or unknown number (the master validates
//! what agents send), while `From<v1::TaskState>` turns `UNSPECIFIED` into
//! [`TaskState::Unknown`] for readers that must tolerate a newer peer.

use drover_proto::v1;

use crate::resources::{PortRanges, Resources, ResourcesError};
use crate::task_state::TaskState;

/// A task state number the wire does not define, or `TASK_STATE_UNSPECIFIED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("state: {value} is not a task state")]
pub struct InvalidTaskState {
    pub value: i32,
}

impl TryFrom<&v1::Resources> for Resources {
    type Error = ResourcesError;

    fn try_from(r: &v1::Resources) -> Result<Resources, ResourcesError> {
        let port = |value: u32| {
            u16::try_from(value).map_err(|_| ResourcesError::InvalidPort {
                field: "ports",
                value,
            })
        };
        let mut ranges = Vec::with_capacity(r.ports.len());
        for p in &r.ports {
            ranges.push((port(p.begin)?, port(p.end)?));
        }
        let ports = PortRanges::from_ranges(&ranges)?;
        Ok(Resources::from_millicpus(r.millicpus, r.mem_bytes, ports))
    }
}

impl From<&Resources> for v1::Resources {
    fn from(r: &Resources) -> v1::Resources {
        v1::Resources {
            millicpus: r.millicpus(),
            mem_bytes: r.mem_bytes(),
            ports: r
                .ports()
                .ranges()
                .iter()
                .map(|&(begin, end)| v1::PortRange {
                    begin: u32::from(begin),
                    end: u32::from(end),
                })
                .collect(),
        }
    }
}

impl TaskState {
    /// A task state number from the wire; `UNSPECIFIED` and numbers the wire does not define are
    /// `InvalidTaskState`.
    pub fn from_wire(state: i32) -> Result<TaskState, InvalidTaskState> {
        match v1::TaskState::try_from(state) {
            Ok(v1::TaskState::Unspecified) | Err(_) => Err(InvalidTaskState { value: state }),
            Ok(s) => Ok(TaskState::from(s)),
        }
    }
}

impl From<v1::TaskState> for TaskState {
    /// `UNSPECIFIED` becomes `Unknown`; use [`TaskState::from_wire`] to refuse it instead.
    fn from(s: v1::TaskState) -> TaskState {
        use v1::TaskState as P;
        match s {
            P::TaskStaging => TaskState::Staging,
            P::TaskStarting => TaskState::Starting,
            P::TaskRunning => TaskState::Running,
            P::TaskKilling => TaskState::Killing,
            P::TaskFinished => TaskState::Finished,
            P::TaskFailed => TaskState::Failed,
            P::TaskKilled => TaskState::Killed,
            P::TaskError => TaskState::Error,
            P::TaskLost => TaskState::Lost,
            P::TaskDropped => TaskState::Dropped,
            P::TaskUnreachable => TaskState::Unreachable,
            P::TaskGone => TaskState::Gone,
            P::TaskGoneByOperator => TaskState::GoneByOperator,
            P::TaskUnknown | P::Unspecified => TaskState::Unknown,
        }
    }
}

impl From<TaskState> for v1::TaskState {
    fn from(s: TaskState) -> v1::TaskState {
        use v1::TaskState as P;
        match s {
            TaskState::Staging => P::TaskStaging,
            TaskState::Starting => P::TaskStarting,
            TaskState::Running => P::TaskRunning,
            TaskState::Killing => P::TaskKilling,
            TaskState::Finished => P::TaskFinished,
            TaskState::Failed => P::TaskFailed,
            TaskState::Killed => P::TaskKilled,
            TaskState::Error => P::TaskError,
            TaskState::Lost => P::TaskLost,
            TaskState::Dropped => P::TaskDropped,
            TaskState::Unreachable => P::TaskUnreachable,
            TaskState::Gone => P::TaskGone,
            TaskState::GoneByOperator => P::TaskGoneByOperator,
            TaskState::Unknown => P::TaskUnknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_round_trip_and_bad_ports_name_the_field() {
        // Proves resources survive proto and back, and out-of-range or inverted ports are refused
        // with an error naming `ports`.
        let r = Resources::from_millicpus(
            1500,
            64 << 20,
            PortRanges::from_ranges(&[(31000, 31009), (32000, 32000)]).expect("valid"),
        );
        let wire = v1::Resources::from(&r);
        assert_eq!(wire.ports.len(), 2);
        assert_eq!(Resources::try_from(&wire), Ok(r));

        let mut bad = wire.clone();
        bad.ports[0].end = 70000;
        let err = Resources::try_from(&bad).expect_err("port too big");
        assert_eq!(
            err,
            ResourcesError::InvalidPort {
                field: "ports",
                value: 70000
            }
        );
        assert_eq!(err.to_string(), "ports: 70000 is not a port (0..=65535)");
        let mut inverted = wire;
        inverted.ports[0] = v1::PortRange { begin: 9, end: 8 };
        assert_eq!(
            Resources::try_from(&inverted),
            Err(ResourcesError::InvalidRange {
                field: "ports",
                start: 9,
                end: 8
            })
        );
    }

    #[test]
    fn task_states_round_trip() {
        // Proves every state maps to its proto state and back under the same Mesos name;
        // unspecified and unknown numbers are refused by `from_wire` and `Unknown` leniently.
        for s in TaskState::ALL {
            let wire = v1::TaskState::from(s);
            assert_eq!(TaskState::from(wire), s);
            assert_eq!(wire.as_str_name(), s.as_str());
            assert_eq!(TaskState::from_wire(wire as i32), Ok(s));
        }
        assert_eq!(TaskState::from_wire(0), Err(InvalidTaskState { value: 0 }));
        assert_eq!(
            TaskState::from_wire(999).map_err(|e| e.to_string()),
            Err("state: 999 is not a task state".to_string())
        );
        assert_eq!(
            TaskState::from(v1::TaskState::Unspecified),
            TaskState::Unknown
        );
    }
}
