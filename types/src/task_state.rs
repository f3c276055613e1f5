//! `TaskState`: the Mesos task states, as the master, the agents and frameworks all see them.
//!
//! Serialized (the agent's checkpointed status updates) by the Mesos names, e.g. `TASK_RUNNING`,
//! the same names the wire uses.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Mesos task states, with the same meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    #[serde(rename = "TASK_STAGING")]
    Staging,
    #[serde(rename = "TASK_STARTING")]
    Starting,
    #[serde(rename = "TASK_RUNNING")]
    Running,
    #[serde(rename = "TASK_KILLING")]
    Killing,
    #[serde(rename = "TASK_FINISHED")]
    Finished,
    #[serde(rename = "TASK_FAILED")]
    Failed,
    #[serde(rename = "TASK_KILLED")]
    Killed,
    #[serde(rename = "TASK_ERROR")]
    Error,
    #[serde(rename = "TASK_LOST")]
    Lost,
    #[serde(rename = "TASK_DROPPED")]
    Dropped,
    /// The agent is unreachable; the task may come back when the agent does (not terminal).
    #[serde(rename = "TASK_UNREACHABLE")]
    Unreachable,
    #[serde(rename = "TASK_GONE")]
    Gone,
    #[serde(rename = "TASK_GONE_BY_OPERATOR")]
    GoneByOperator,
    /// The master does not know the task's state (not terminal). Also what an unspecified or
    /// unrecognised state on the wire becomes where the reader chooses to be lenient.
    #[serde(rename = "TASK_UNKNOWN")]
    Unknown,
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 14] = [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Killing,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Error,
        TaskState::Lost,
        TaskState::Dropped,
        TaskState::Unreachable,
        TaskState::Gone,
        TaskState::GoneByOperator,
        TaskState::Unknown,
    ];

    /// Whether the task will never run again (Mesos `protobuf::isTerminalState`): FINISHED,
    /// FAILED, KILLED, ERROR, LOST, DROPPED, GONE, GONE_BY_OPERATOR. UNREACHABLE and UNKNOWN are
    /// not terminal: the task may still come back.
    ///
    /// ```
    /// use drover_types::TaskState;
    /// assert!(TaskState::Failed.is_terminal());
    /// assert!(!TaskState::Unreachable.is_terminal());
    /// ```
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Dropped
                | TaskState::Gone
                | TaskState::GoneByOperator
        )
    }

    /// The Mesos-style name, e.g. `TASK_RUNNING`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Error => "TASK_ERROR",
            TaskState::Lost => "TASK_LOST",
            TaskState::Dropped => "TASK_DROPPED",
            TaskState::Unreachable => "TASK_UNREACHABLE",
            TaskState::Gone => "TASK_GONE",
            TaskState::GoneByOperator => "TASK_GONE_BY_OPERATOR",
            TaskState::Unknown => "TASK_UNKNOWN",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_mesos_names() {
        // Proves checkpoints keep using the Mesos names (`"TASK_RUNNING"`), the same as `as_str`,
        // so status-update files written before the move still load.
        for s in TaskState::ALL {
            let json = serde_json::to_string(&s).expect("serializes");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<TaskState>(&json).ok(), Some(s));
        }
    }
}
