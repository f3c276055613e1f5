//! The leading master's domain types: what the core reasons about, free of wire types. The
//! driver converts between these and `drover_proto::v1` at its edge (`crate::wire`).

use crate::ids::{AgentId, FrameworkId, Role, UserName};
use crate::resources::Resources;
use std::collections::BTreeMap;
use std::fmt;

/// One connection (a framework's event stream or an agent's link), numbered by the driver.
pub type ConnId = u64;

pub use drover_types::ids::TaskId;

pub use drover_types::TaskState;

/// Who generated a status update: the agent's need an acknowledgement, the master's do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusSource {
    Agent,
    Master,
}

/// A task's status as frameworks see it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskStatus {
    /// As the framework named it (a master-made `TASK_ERROR` may carry an invalid id back).
    pub task_id: String,
    pub agent_id: Option<AgentId>,
    pub state: TaskState,
    pub message: String,
    /// Machine-readable reason, e.g. `invalid_offer`, `agent_unreachable`; may be empty.
    pub reason: String,
    /// Set on agent updates (acknowledge by it); `None` on the master's.
    pub uuid: Option<[u8; 16]>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Unix ms; 0 on master-made statuses (the driver stamps them when it sends).
    pub timestamp_ms: u64,
    pub source: StatusSource,
}

impl TaskStatus {
    /// A status the master makes up (no uuid, nothing to acknowledge).
    pub fn from_master(
        task_id: &str,
        agent_id: Option<&AgentId>,
        state: TaskState,
        reason: &str,
        message: impl Into<String>,
    ) -> TaskStatus {
        TaskStatus {
            task_id: task_id.to_string(),
            agent_id: agent_id.cloned(),
            state,
            message: message.into(),
            reason: reason.to_string(),
            uuid: None,
            exit_code: None,
            signal: None,
            timestamp_ms: 0,
            source: StatusSource::Master,
        }
    }
}

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    Argv(Vec<String>),
    Shell(String),
}

/// A task as launched: validated, with the resources it holds on its agent.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskLaunch {
    pub id: TaskId,
    pub name: String,
    pub agent: AgentId,
    pub resources: Resources,
    pub program: Program,
    pub env: BTreeMap<String, String>,
    /// 0: the agent's default.
    pub kill_grace_period_ms: u64,
    pub labels: BTreeMap<String, String>,
    /// The OS user the task asks to run as; `None`: the agent's `--task-user`. Only its syntax is
    /// checked here; the agent refuses a user it does not have (or root, unless it allows root
    /// tasks). Whether the framework may use this user is the ACL check in `on_accept`.
    pub user: Option<UserName>,
}

/// A framework as registered (and stored in the registry).
#[derive(Clone, Debug, PartialEq)]
pub struct FrameworkInfo {
    pub id: FrameworkId,
    pub name: String,
    pub role: Role,
    pub principal: String,
    pub failover_timeout_ms: u64,
    pub hostname: String,
}

/// An agent as admitted (and stored in the registry).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInfo {
    pub id: AgentId,
    pub hostname: String,
    /// The agent's own API address.
    pub address: String,
    pub resources: Resources,
    pub attributes: BTreeMap<String, String>,
}

/// An offer as a framework sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OfferOut {
    pub id: crate::ids::OfferId,
    pub agent: AgentId,
    pub hostname: String,
    pub resources: Resources,
    pub attributes: BTreeMap<String, String>,
}

/// An offer id as a framework sent it back: one of this master's, or something else (an old
/// leader's, or garbage), which is never valid.
#[derive(Clone, Debug, PartialEq)]
pub enum OfferRef {
    Known(crate::ids::OfferId),
    Foreign(String),
}

impl fmt::Display for OfferRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfferRef::Known(id) => write!(f, "{id}"),
            OfferRef::Foreign(s) => f.write_str(s),
        }
    }
}

/// A launch the driver could not even convert (bad command, bad id, bad resources): it
/// becomes a `TASK_ERROR` naming the problem.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidLaunch {
    pub task_id: String,
    pub message: String,
}

/// Events for a framework's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum FrameworkEvent {
    Subscribed {
        framework_id: FrameworkId,
        heartbeat_interval_ms: u64,
    },
    Offers(Vec<OfferOut>),
    Rescind(crate::ids::OfferId),
    Update(TaskStatus),
    Failure(AgentId),
    Heartbeat,
}

/// Messages for an agent's link.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentCommand {
    Registered {
        agent_id: AgentId,
        heartbeat_interval_ms: u64,
    },
    RunTask {
        framework: Box<FrameworkInfo>,
        task: Box<TaskLaunch>,
    },
    KillTask {
        framework: FrameworkId,
        task: TaskId,
        grace_ms: u64,
    },
    Acknowledge {
        framework: FrameworkId,
        task: String,
        uuid: [u8; 16],
    },
    ShutdownFramework(FrameworkId),
}

/// A registry change the driver writes to coord (fenced by the leader's epoch node).
#[derive(Clone, Debug, PartialEq)]
pub enum RegistryWrite {
    PutFramework(FrameworkInfo),
    DeleteFramework(FrameworkId),
    PutAgent(AgentInfo),
}

/// What to do once a registry write is durable (or failed).
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    /// Nothing waits on it; `what` names the write for the log if it fails.
    None {
        what: String,
    },
    FrameworkAdmitted {
        conn: ConnId,
    },
    AgentAdmitted {
        conn: ConnId,
    },
}

/// A call the core refuses; the driver maps each to a gRPC code.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The caller's token does not allow this (ACLs on).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unavailable(String),
}

/// What the core asks the driver to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    ToFramework {
        conn: ConnId,
        event: FrameworkEvent,
    },
    /// Send an `Error` event with this message (if any) and end the stream.
    CloseFramework {
        conn: ConnId,
        error: Option<String>,
    },
    /// The answer to a `subscribe` (right away, or once the registry write is durable).
    SubscribeDone {
        conn: ConnId,
        result: Result<FrameworkId, CallError>,
    },
    ToAgent {
        conn: ConnId,
        command: AgentCommand,
    },
    /// Send `AgentRefused` with this message (if any) and end the link.
    CloseAgent {
        conn: ConnId,
        refused: Option<String>,
    },
    Persist {
        write: RegistryWrite,
        then: Completion,
    },
}

/// A task the agent says it runs (or ran), from its `Reregister`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportedTask {
    pub framework: FrameworkId,
    pub launch: TaskLaunch,
    pub state: TaskState,
}
