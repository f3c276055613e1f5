//! Tasks as the SDK sees them: what to launch ([`TaskSpec`] → [`TaskInfo`]) and what the cluster
//! reports back ([`TaskStatus`], [`TaskState`]).
//!
//! A `TaskSpec` is everything about a task except where it runs; it becomes a `TaskInfo` when it is
//! given an agent and resources, usually a [`Launch`] from [`place`](crate::place) (which carves
//! the instance's ports out of the offer) or an offer directly. Building validates what the master
//! would refuse anyway, so mistakes show up as an error naming the field instead of a `TASK_ERROR`
//! update later.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::ids::{AgentId, TaskId};
use crate::offers::{Offer, TaskRequest};
use crate::placement::Launch;
use crate::resources::Resources;

/// Longest task id the master (and the agent) accepts, in bytes: `drover_types::ids`' rule.
pub const TASK_ID_BYTES_MAX: usize = drover_types::ids::ID_BYTES_MAX;

/// A task that cannot be built; `field` names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {task_id:?}: {field}: {reason}")]
pub struct TaskError {
    pub task_id: String,
    pub field: &'static str,
    pub reason: String,
}

pub use drover_types::TaskState;

/// Who generated a status update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusSource {
    /// The agent or the task's supervisor: carries a uuid and must be acknowledged, or the agent
    /// sends it again.
    Agent,
    /// The master (a refused launch, an unreachable agent, a reconciliation answer): no uuid,
    /// nothing to acknowledge.
    Master,
    Unspecified,
}

/// One task status update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub agent_id: AgentId,
    pub state: TaskState,
    /// Human-readable reason; may be empty.
    pub message: String,
    /// Machine-readable reason, e.g. `memory_limit`, `invalid_offer`, `reconciliation`.
    pub reason: String,
    /// 16 bytes for agent updates, empty otherwise; what [`Framework::acknowledge`] sends back.
    ///
    /// [`Framework::acknowledge`]: crate::Framework::acknowledge
    pub uuid: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Unix milliseconds when the update was generated.
    pub timestamp_ms: u64,
    pub source: StatusSource,
}

impl TaskStatus {
    /// Whether this update waits for an acknowledgement (it carries a uuid).
    pub fn needs_acknowledgement(&self) -> bool {
        !self.uuid.is_empty()
    }
}

impl fmt::Display for TaskStatus {
    /// One line: task, state, agent, then whatever explains it (exit code, signal, reason,
    /// message), e.g. `web-1 TASK_FAILED on a1 exit 3 (task exited)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.task_id, self.state)?;
        if !self.agent_id.0.is_empty() {
            write!(f, " on {}", self.agent_id)?;
        }
        if let Some(code) = self.exit_code {
            write!(f, " exit {code}")?;
        }
        if let Some(signal) = self.signal {
            write!(f, " signal {signal}")?;
        }
        if !self.reason.is_empty() {
            write!(f, " [{}]", self.reason)?;
        }
        if !self.message.is_empty() {
            write!(f, " ({})", self.message)?;
        }
        Ok(())
    }
}

/// What a task runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Executed directly, no shell: `argv[0]` is the program.
    Argv(Vec<String>),
    /// Run under `sh -c`.
    Shell(String),
}

impl Command {
    /// `Command::Argv` from anything yielding strings.
    pub fn argv<I, S>(argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command::Argv(argv.into_iter().map(Into::into).collect())
    }

    pub fn shell(script: impl Into<String>) -> Command {
        Command::Shell(script.into())
    }
}

/// A task ready to launch: what runs, where, with which resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub task_id: TaskId,
    pub name: String,
    /// Must be the agent of the offers it is launched with.
    pub agent_id: AgentId,
    /// Must fit in the offers being accepted; ports are the ones the task gets as `PORT0..`.
    pub resources: Resources,
    pub command: Command,
    /// Added to the task's environment next to `PORT0..`, `DROVER_TASK_ID`, `DROVER_AGENT_ID`.
    pub env: BTreeMap<String, String>,
    /// Between SIGTERM and SIGKILL when the task is killed; `None`: the agent's default.
    pub kill_grace: Option<Duration>,
    pub labels: BTreeMap<String, String>,
    /// The OS user the task runs as on its agent; `None`: the agent's `--task-user`. The agent
    /// refuses (`TASK_ERROR`) a user it does not have, and root unless it allows root tasks.
    pub user: Option<String>,
}

/// Builds a [`TaskInfo`]: everything but the placement, then one of the `build*` methods.
///
/// ```
/// use drover_sdk::{place, Command, Placement, TaskRequest, TaskSpec, Resources};
/// # use drover_sdk::{AgentId, Offer, OfferId, PortRanges};
/// # let offer = Offer {
/// #     id: OfferId::from("o1"), agent_id: AgentId::from("a1"), hostname: "node1".into(),
/// #     attributes: Default::default(),
/// #     resources: Resources::new(2.0, 1 << 30, PortRanges::from_ranges(&[(31000, 31009)])?)?,
/// # };
/// let request = TaskRequest::new(0.5, Resources::parse_mem("64MiB")?, 1)?;
/// let plan = place(&[offer], &request, 1, &[], &Placement::default());
/// let task = TaskSpec::new("web-1", Command::argv(["python3", "-m", "http.server", "$PORT0"]))
///     .env("GREETING", "hi")
///     .build_for(&plan.launches[0])?;
/// assert_eq!(task.resources.ports().ranges(), &[(31000, 31000)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    task_id: TaskId,
    name: String,
    command: Command,
    env: BTreeMap<String, String>,
    kill_grace: Option<Duration>,
    labels: BTreeMap<String, String>,
    user: Option<String>,
}

impl TaskSpec {
    /// A task running `command`; its name defaults to the task id.
    pub fn new(task_id: impl Into<TaskId>, command: Command) -> TaskSpec {
        TaskSpec {
            task_id: task_id.into(),
            name: String::new(),
            command,
            env: BTreeMap::new(),
            kill_grace: None,
            labels: BTreeMap::new(),
            user: None,
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> TaskSpec {
        self.name = name.into();
        self
    }

    /// Sets one environment variable (a later value for the same key wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> TaskSpec {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> TaskSpec
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> TaskSpec {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Time between SIGTERM and SIGKILL when the task is killed (default: the agent's).
    pub fn kill_grace(mut self, grace: Duration) -> TaskSpec {
        self.kill_grace = Some(grace);
        self
    }

    /// The OS user the task runs as (default: the agent's `--task-user`). Checked when built:
    /// 1..=32 bytes of `[A-Za-z0-9._-]`, not starting with `-`; the agent checks that it exists
    /// there (and refuses root unless it runs with `--allow-root-tasks`).
    pub fn user(mut self, user: impl Into<String>) -> TaskSpec {
        self.user = Some(user.into());
        self
    }

    /// The task on `agent_id` with exactly `resources` (ports included).
    pub fn build(self, agent_id: AgentId, resources: Resources) -> Result<TaskInfo, TaskError> {
        let err = |field, reason: String| TaskError {
            task_id: self.task_id.0.clone(),
            field,
            reason,
        };
        validate_task_id(&self.task_id).map_err(|reason| err("task_id", reason))?;
        match &self.command {
            Command::Argv(argv) => match argv.first() {
                None => return Err(err("command", "argv is empty".into())),
                Some(program) if program.is_empty() => {
                    return Err(err("command", "argv[0] is empty".into()));
                }
                Some(_) => {}
            },
            Command::Shell(script) if script.trim().is_empty() => {
                return Err(err("command", "the shell command is empty".into()));
            }
            Command::Shell(_) => {}
        }
        if let Some(key) = self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(err(
                "env",
                format!("{key:?} is not a variable name (empty, or contains '=' or NUL)"),
            ));
        }
        if let Some((key, _)) = self.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(err("env", format!("the value of {key} contains NUL")));
        }
        if agent_id.0.is_empty() {
            return Err(err("agent_id", "empty".into()));
        }
        if resources.millicpus() == 0 {
            return Err(err("resources", "a task needs some cpus".into()));
        }
        if let Some(user) = &self.user {
            drover_types::UserName::parse(user).map_err(|e| err("user", e.to_string()))?;
        }
        let name = if self.name.is_empty() {
            self.task_id.0.clone()
        } else {
            self.name
        };
        Ok(TaskInfo {
            task_id: self.task_id,
            name,
            agent_id,
            resources,
            command: self.command,
            env: self.env,
            kill_grace: self.kill_grace,
            labels: self.labels,
            user: self.user,
        })
    }

    /// The task for one launch of a [`PlacementPlan`](crate::PlacementPlan): its agent, and its
    /// resources with the ports `place` carved out of the offer.
    pub fn build_for(self, launch: &Launch) -> Result<TaskInfo, TaskError> {
        self.build(launch.agent_id.clone(), launch.resources.clone())
    }

    /// The task on `offer`'s agent with `request`'s cpus and memory and the lowest
    /// `request.ports()` ports of the offer. For one task per offer; to launch several from one
    /// offer use [`place`](crate::place) and [`TaskSpec::build_for`], which gives each its own
    /// ports.
    pub fn build_from_offer(
        self,
        offer: &Offer,
        request: &TaskRequest,
    ) -> Result<TaskInfo, TaskError> {
        let mut free = offer.resources.ports().clone();
        let Some(ports) = free.take_n(request.ports()) else {
            return Err(TaskError {
                task_id: self.task_id.0.clone(),
                field: "resources",
                reason: format!(
                    "needs {} ports, offer {} has {}",
                    request.ports(),
                    offer.id,
                    offer.resources.ports().count()
                ),
            });
        };
        let resources = request.resources_with(&ports);
        if !offer.resources.contains(&resources) {
            return Err(TaskError {
                task_id: self.task_id.0.clone(),
                field: "resources",
                reason: format!("{resources} does not fit in offer {}", offer.id),
            });
        }
        self.build(offer.agent_id.clone(), resources)
    }
}

/// Checks the one task-id rule (`drover_types::ids::TaskId`), the one the master and the agent
/// apply, so a task built here is not refused there for its id.
fn validate_task_id(id: &TaskId) -> Result<(), String> {
    drover_types::TaskId::parse(id.as_str())
        .map(drop)
        .map_err(|_| format!("must be {}", drover_types::ids::ID_RULE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OfferId;
    use crate::resources::PortRanges;

    fn offer() -> Offer {
        Offer {
            id: OfferId::from("o1"),
            agent_id: AgentId::from("a1"),
            hostname: "h1".into(),
            attributes: BTreeMap::new(),
            resources: Resources::new(
                1.0,
                1 << 30,
                PortRanges::from_ranges(&[(31000, 31001)]).expect("valid"),
            )
            .expect("valid"),
        }
    }

    #[test]
    fn spec_builds_from_an_offer_with_its_lowest_ports() {
        // Proves build_from_offer takes the request's cpus/mem and the offer's lowest ports, and
        // the name defaults to the task id.
        let request = TaskRequest::new(0.5, 64 << 20, 2).expect("valid");
        let task = TaskSpec::new("t-1", Command::shell("echo hi"))
            .env("A", "1")
            .kill_grace(Duration::from_secs(2))
            .build_from_offer(&offer(), &request)
            .expect("fits");
        assert_eq!(task.name, "t-1");
        assert_eq!(task.agent_id, AgentId::from("a1"));
        assert_eq!(task.resources.millicpus(), 500);
        assert_eq!(task.resources.ports().ranges(), &[(31000, 31001)]);
        assert_eq!(task.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(task.kill_grace, Some(Duration::from_secs(2)));

        let too_many = TaskRequest::new(0.5, 64 << 20, 3).expect("valid");
        let err = TaskSpec::new("t-1", Command::shell("x"))
            .build_from_offer(&offer(), &too_many)
            .expect_err("3 ports do not fit in 2");
        assert_eq!(err.field, "resources");
        let too_big = TaskRequest::new(4.0, 64 << 20, 0).expect("valid");
        let err = TaskSpec::new("t-1", Command::shell("x"))
            .build_from_offer(&offer(), &too_big)
            .expect_err("4 cpus do not fit in 1");
        assert!(
            err.to_string().contains("does not fit in offer o1"),
            "{err}"
        );
    }

    #[test]
    fn spec_validation_names_the_field() {
        // Proves each invalid part of a task is refused with an error naming that field.
        let res = Resources::new(0.1, 1, PortRanges::new()).expect("valid");
        let build = |spec: TaskSpec| spec.build(AgentId::from("a1"), res.clone());
        let field = |r: Result<TaskInfo, TaskError>| r.expect_err("invalid").field;
        let ok = Command::argv(["true"]);
        assert_eq!(field(build(TaskSpec::new("", ok.clone()))), "task_id");
        assert_eq!(field(build(TaskSpec::new("a b", ok.clone()))), "task_id");
        assert_eq!(
            field(build(TaskSpec::new(
                "x".repeat(TASK_ID_BYTES_MAX + 1),
                ok.clone()
            ))),
            "task_id"
        );
        // The agent makes the id a directory name: `..` would climb out of the sandbox root.
        assert_eq!(field(build(TaskSpec::new("a..b", ok.clone()))), "task_id");
        assert!(build(TaskSpec::new("x".repeat(TASK_ID_BYTES_MAX), ok.clone())).is_ok());
        assert_eq!(
            field(build(TaskSpec::new("t", Command::Argv(vec![])))),
            "command"
        );
        assert_eq!(
            field(build(TaskSpec::new("t", Command::argv(["", "x"])))),
            "command"
        );
        assert_eq!(
            field(build(TaskSpec::new("t", Command::shell(" ")))),
            "command"
        );
        assert_eq!(
            field(build(TaskSpec::new("t", ok.clone()).env("A=B", "1"))),
            "env"
        );
        assert_eq!(
            field(build(TaskSpec::new("t", ok.clone()).env("A", "\0"))),
            "env"
        );
        assert_eq!(
            field(TaskSpec::new("t", ok.clone()).build(AgentId::from(""), res.clone())),
            "agent_id"
        );
        assert_eq!(
            field(TaskSpec::new("t", ok.clone()).build(AgentId::from("a"), Resources::default())),
            "resources"
        );
        assert_eq!(
            field(build(TaskSpec::new("t", ok.clone()).user("a b"))),
            "user"
        );
        assert_eq!(
            field(build(TaskSpec::new("t", ok.clone()).user(""))),
            "user"
        );
        assert!(build(TaskSpec::new("t", ok.clone()).user("nobody")).is_ok());
        let err = build(TaskSpec::new("a/b", ok)).expect_err("slash");
        assert_eq!(
            err.to_string(),
            "task \"a/b\": task_id: must be 1..=200 bytes of [A-Za-z0-9._-], not '.', without '..'"
        );
    }

    #[test]
    fn terminal_states() {
        // Proves is_terminal matches the proto's list (UNREACHABLE and UNKNOWN may come back).
        use TaskState::*;
        let terminal = [
            Finished,
            Failed,
            Killed,
            Error,
            Lost,
            Dropped,
            Gone,
            GoneByOperator,
        ];
        let live = [Staging, Starting, Running, Killing, Unreachable, Unknown];
        assert!(terminal.iter().all(|s| s.is_terminal()));
        assert!(live.iter().all(|s| !s.is_terminal()));
    }

    #[test]
    fn status_display_is_one_line() {
        // Proves the one-line rendering hello logs carries id, state, agent, exit and message.
        let status = TaskStatus {
            task_id: TaskId::from("web-1"),
            agent_id: AgentId::from("a1"),
            state: TaskState::Failed,
            message: "task exited".into(),
            reason: String::new(),
            uuid: vec![1; 16],
            exit_code: Some(3),
            signal: None,
            timestamp_ms: 0,
            source: StatusSource::Agent,
        };
        assert_eq!(
            status.to_string(),
            "web-1 TASK_FAILED on a1 exit 3 (task exited)"
        );
        assert!(status.needs_acknowledgement());
    }
}
