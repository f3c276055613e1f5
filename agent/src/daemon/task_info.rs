//! What the master asks this agent to run, in the agent's own types, and the checks a task must
//! pass before a supervisor is started for it.
//!
//! [`TaskDescription`] and [`FrameworkDescription`] mirror `TaskInfo` and `FrameworkInfo` field for
//! field, so a task survives an agent restart in its task record and goes back to the master,
//! unchanged, in `Reregister`. The conversions to and from the wire types are the only place here
//! that sees prost types. [`validate`] turns a description into a [`ValidTask`] (what a
//! [`crate::SupervisorSpec`] needs) or an [`InvalidTask`] naming the `TaskInfo` field at fault.

use std::collections::BTreeMap;

use drover_proto::v1;
use serde::{Deserialize, Serialize};

use crate::limits::{
    ARGV_ENTRIES_MAX, CPUS_MAX, ENV_VARS_MAX, GRACE_PERIOD_MS_MAX, MEM_BYTES_MIN,
    PORTS_PER_TASK_MAX,
};
use crate::status_updates::validate_framework_id;
use crate::supervisor::{TaskCommand, is_reserved_env};

/// `FrameworkInfo`, as the agent keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrameworkDescription {
    pub id: String,
    pub name: String,
    pub role: String,
    pub principal: String,
    pub failover_timeout_seconds: f64,
    pub hostname: String,
}

/// `Resources` of a task: fixed-point CPUs, bytes, inclusive port ranges as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResources {
    pub millicpus: u64,
    pub mem_bytes: u64,
    pub ports: Vec<(u32, u32)>,
}

/// `CommandInfo`: argv or shell (exactly one is set in a valid task), plus extra environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandDescription {
    pub argv: Vec<String>,
    pub shell: String,
    pub env: BTreeMap<String, String>,
}

/// `TaskInfo`, as the agent keeps it (unvalidated: a refused task is kept too, until its
/// `TASK_ERROR` is acknowledged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDescription {
    pub task_id: String,
    pub name: String,
    pub agent_id: String,
    pub resources: Option<TaskResources>,
    pub command: Option<CommandDescription>,
    pub kill_grace_period_ms: u64,
    pub labels: BTreeMap<String, String>,
    /// `TaskInfo.user`; empty: the agent's `--task-user`. Absent from records written before
    /// tasks could name a user.
    #[serde(default)]
    pub user: String,
}

impl From<&v1::FrameworkInfo> for FrameworkDescription {
    fn from(f: &v1::FrameworkInfo) -> Self {
        FrameworkDescription {
            id: f.id.clone(),
            name: f.name.clone(),
            role: f.role.clone(),
            principal: f.principal.clone(),
            failover_timeout_seconds: f.failover_timeout_seconds,
            hostname: f.hostname.clone(),
        }
    }
}

impl From<&FrameworkDescription> for v1::FrameworkInfo {
    fn from(f: &FrameworkDescription) -> Self {
        v1::FrameworkInfo {
            id: f.id.clone(),
            name: f.name.clone(),
            role: f.role.clone(),
            principal: f.principal.clone(),
            failover_timeout_seconds: f.failover_timeout_seconds,
            hostname: f.hostname.clone(),
        }
    }
}

impl From<&v1::TaskInfo> for TaskDescription {
    fn from(t: &v1::TaskInfo) -> Self {
        TaskDescription {
            task_id: t.task_id.clone(),
            name: t.name.clone(),
            agent_id: t.agent_id.clone(),
            resources: t.resources.as_ref().map(|r| TaskResources {
                millicpus: r.millicpus,
                mem_bytes: r.mem_bytes,
                ports: r.ports.iter().map(|p| (p.begin, p.end)).collect(),
            }),
            command: t.command.as_ref().map(|c| CommandDescription {
                argv: c.argv.clone(),
                shell: c.shell.clone(),
                env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }),
            kill_grace_period_ms: t.kill_grace_period_ms,
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            user: t.user.clone(),
        }
    }
}

impl From<&TaskDescription> for v1::TaskInfo {
    fn from(t: &TaskDescription) -> Self {
        v1::TaskInfo {
            task_id: t.task_id.clone(),
            name: t.name.clone(),
            agent_id: t.agent_id.clone(),
            resources: t.resources.as_ref().map(|r| v1::Resources {
                millicpus: r.millicpus,
                mem_bytes: r.mem_bytes,
                ports: r
                    .ports
                    .iter()
                    .map(|&(begin, end)| v1::PortRange { begin, end })
                    .collect(),
            }),
            command: t.command.as_ref().map(|c| v1::CommandInfo {
                argv: c.argv.clone(),
                shell: c.shell.clone(),
                env: c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }),
            kill_grace_period_ms: t.kill_grace_period_ms,
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            user: t.user.clone(),
        }
    }
}

/// A task the agent will not run; `field` is the `TaskInfo` path at fault (`task.resources.ports`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidTask {
    pub field: &'static str,
    pub reason: String,
}

fn invalid<T>(field: &'static str, reason: impl Into<String>) -> Result<T, InvalidTask> {
    Err(InvalidTask {
        field,
        reason: reason.into(),
    })
}

/// What a task is checked against.
#[derive(Debug, Clone, Copy)]
pub struct LaunchContext<'a> {
    /// This agent's id; `TaskInfo.agent_id` must equal it.
    pub agent_id: &'a str,
    /// The agent's port ranges (inclusive); a task's ports must lie within them.
    pub agent_ports: &'a [(u16, u16)],
    /// Grace between SIGTERM and SIGKILL when the task gives none.
    pub default_kill_grace_ms: u64,
}

/// A task that passed [`validate`]: what its supervisor spec needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTask {
    pub command: TaskCommand,
    pub env: BTreeMap<String, String>,
    /// Every port of the task, in the order given (`PORT0`, `PORT1`, ...).
    pub ports: Vec<u16>,
    pub cpus: f64,
    pub mem_bytes: u64,
    pub grace_period_ms: u64,
}

/// Checks the ids of a task: both become path components (the status-update stream, the task
/// record, the sandbox). Fails when the agent could not even keep a record of the task.
pub fn validate_ids(framework_id: &str, task_id: &str) -> Result<(), InvalidTask> {
    // One rule for both, `drover_types::ids`' (the master checks the same at its edge).
    if validate_framework_id(framework_id).is_err() {
        return invalid(
            "framework.id",
            format!(
                "{:?} is not {}",
                shorten(framework_id),
                drover_types::ids::ID_RULE
            ),
        );
    }
    if let Err(e) = drover_types::TaskId::parse(task_id) {
        return invalid("task.task_id", format!("{:?}: {e}", shorten(task_id)));
    }
    Ok(())
}

/// Checks everything about a task this agent can check, in `TaskInfo` order; the error names the
/// first bad field. `ports_in_use` says which task already holds a port on this agent.
pub fn validate(
    framework_id: &str,
    task: &TaskDescription,
    ctx: &LaunchContext<'_>,
    ports_in_use: impl Fn(u16) -> Option<String>,
) -> Result<ValidTask, InvalidTask> {
    validate_ids(framework_id, &task.task_id)?;
    if task.agent_id != ctx.agent_id {
        return invalid(
            "task.agent_id",
            format!(
                "{:?} is not this agent ({})",
                shorten(&task.agent_id),
                ctx.agent_id
            ),
        );
    }

    let Some(resources) = &task.resources else {
        return invalid("task.resources", "missing");
    };
    if resources.millicpus == 0 {
        return invalid("task.resources.millicpus", "must be > 0");
    }
    // millicpus up to CPUS_MAX * 1000 are exact in f64.
    if resources.millicpus > (CPUS_MAX as u64) * 1000 {
        return invalid(
            "task.resources.millicpus",
            format!("{} exceeds {CPUS_MAX} cpus", resources.millicpus),
        );
    }
    let cpus = resources.millicpus as f64 / 1000.0;
    if resources.mem_bytes < MEM_BYTES_MIN {
        return invalid(
            "task.resources.mem_bytes",
            format!(
                "{} is below the minimum of {MEM_BYTES_MIN} bytes",
                resources.mem_bytes
            ),
        );
    }
    let ports = task_ports(&resources.ports, ctx.agent_ports)?;
    for &port in &ports {
        if let Some(holder) = ports_in_use(port) {
            return invalid(
                "task.resources.ports",
                format!("port {port} is in use by task {holder} on this agent"),
            );
        }
    }

    let Some(command) = &task.command else {
        return invalid("task.command", "missing");
    };
    let has_argv = !command.argv.is_empty();
    let has_shell = !command.shell.is_empty();
    let task_command = match (has_argv, has_shell) {
        (true, true) => {
            return invalid("task.command", "set either argv or shell, not both");
        }
        (false, false) => return invalid("task.command", "set argv or shell"),
        (true, false) => {
            if command.argv.len() > ARGV_ENTRIES_MAX {
                return invalid(
                    "task.command.argv",
                    format!(
                        "{} entries, limit is {ARGV_ENTRIES_MAX}",
                        command.argv.len()
                    ),
                );
            }
            if command.argv[0].is_empty() {
                return invalid("task.command.argv", "argv[0] is empty");
            }
            if command.argv.iter().any(|a| a.contains('\0')) {
                return invalid("task.command.argv", "contains NUL");
            }
            TaskCommand::Argv(command.argv.clone())
        }
        (false, true) => {
            if command.shell.trim().is_empty() {
                return invalid("task.command.shell", "is blank");
            }
            if command.shell.contains('\0') {
                return invalid("task.command.shell", "contains NUL");
            }
            TaskCommand::Shell(command.shell.clone())
        }
    };
    if command.env.len() > ENV_VARS_MAX {
        return invalid(
            "task.command.env",
            format!("{} variables, limit is {ENV_VARS_MAX}", command.env.len()),
        );
    }
    for (k, v) in &command.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return invalid(
                "task.command.env",
                format!("{:?} is not a valid variable", shorten(k)),
            );
        }
        if is_reserved_env(k) {
            return invalid(
                "task.command.env",
                format!("{k} is set by the agent for every task"),
            );
        }
    }

    if task.kill_grace_period_ms > GRACE_PERIOD_MS_MAX {
        return invalid(
            "task.kill_grace_period_ms",
            format!(
                "{} exceeds {GRACE_PERIOD_MS_MAX}",
                task.kill_grace_period_ms
            ),
        );
    }
    let grace_period_ms = match task.kill_grace_period_ms {
        0 => ctx.default_kill_grace_ms.min(GRACE_PERIOD_MS_MAX),
        ms => ms,
    };
    Ok(ValidTask {
        command: task_command,
        env: command.env.clone(),
        ports,
        cpus,
        mem_bytes: resources.mem_bytes,
        grace_period_ms,
    })
}

/// Expands the task's port ranges into ports, checking each range and that every port is within
/// the agent's ranges; at most [`PORTS_PER_TASK_MAX`] ports, none twice.
fn task_ports(ranges: &[(u32, u32)], agent: &[(u16, u16)]) -> Result<Vec<u16>, InvalidTask> {
    const FIELD: &str = "task.resources.ports";
    let mut ports: Vec<u16> = Vec::new();
    for &(begin, end) in ranges {
        if begin > end {
            return invalid(FIELD, format!("range {begin}-{end} is reversed"));
        }
        let (Ok(lo), Ok(hi)) = (u16::try_from(begin), u16::try_from(end)) else {
            return invalid(
                FIELD,
                format!("range {begin}-{end} is not within 1..=65535"),
            );
        };
        if lo == 0 {
            return invalid(
                FIELD,
                format!("range {begin}-{end} is not within 1..=65535"),
            );
        }
        let count = usize::from(hi - lo) + 1;
        if ports.len() + count > PORTS_PER_TASK_MAX {
            return invalid(
                FIELD,
                format!("more than {PORTS_PER_TASK_MAX} ports for one task"),
            );
        }
        if !agent.iter().any(|&(a, b)| a <= lo && hi <= b) {
            return invalid(
                FIELD,
                format!(
                    "range {lo}-{hi} is not within this agent's ports {}",
                    format_ranges(agent)
                ),
            );
        }
        for port in lo..=hi {
            if ports.contains(&port) {
                return invalid(FIELD, format!("port {port} is given twice"));
            }
            ports.push(port);
        }
    }
    Ok(ports)
}

/// The ports a description asks for, without validation (for the in-use check of running tasks,
/// which were validated at launch). Ranges that do not fit in u16 are skipped.
pub fn ports_of(task: &TaskDescription) -> Vec<u16> {
    let Some(resources) = &task.resources else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &(begin, end) in &resources.ports {
        if let (Ok(lo), Ok(hi)) = (u16::try_from(begin), u16::try_from(end))
            && lo <= hi
            && usize::from(hi - lo) < PORTS_PER_TASK_MAX
        {
            out.extend(lo..=hi);
        }
    }
    out
}

fn format_ranges(ranges: &[(u16, u16)]) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(",")
    }
}

/// At most 100 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "agent-1";
    const PORTS: &[(u16, u16)] = &[(31000, 31010), (32000, 32000)];

    fn ctx() -> LaunchContext<'static> {
        LaunchContext {
            agent_id: AGENT,
            agent_ports: PORTS,
            default_kill_grace_ms: 5_000,
        }
    }

    fn task() -> TaskDescription {
        TaskDescription {
            task_id: "web.1".into(),
            name: "web".into(),
            agent_id: AGENT.into(),
            resources: Some(TaskResources {
                millicpus: 250,
                mem_bytes: 64 << 20,
                ports: vec![(31000, 31001), (32000, 32000)],
            }),
            command: Some(CommandDescription {
                argv: vec!["sleep".into(), "30".into()],
                shell: String::new(),
                env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            }),
            kill_grace_period_ms: 0,
            labels: BTreeMap::from([("app".into(), "web".into())]),
            user: "www-data".into(),
        }
    }

    fn field(t: &TaskDescription) -> &'static str {
        validate("fw-1", t, &ctx(), |_| None)
            .expect_err("should be invalid")
            .field
    }

    #[test]
    fn a_good_task_becomes_a_supervisor_plan() {
        // Proves a valid TaskInfo maps to the exact ports, cpus, memory, command and default grace.
        let v = validate("fw-1", &task(), &ctx(), |_| None).unwrap();
        assert_eq!(v.ports, vec![31000, 31001, 32000]);
        assert_eq!(v.cpus, 0.25);
        assert_eq!(v.mem_bytes, 64 << 20);
        assert_eq!(
            v.command,
            TaskCommand::Argv(vec!["sleep".into(), "30".into()])
        );
        assert_eq!(v.grace_period_ms, 5_000);
        assert_eq!(v.env["GREETING"], "hi");
        let mut own_grace = task();
        own_grace.kill_grace_period_ms = 700;
        assert_eq!(
            validate("fw-1", &own_grace, &ctx(), |_| None)
                .unwrap()
                .grace_period_ms,
            700
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        // Proves each kind of bad TaskInfo is refused with the TaskInfo field at fault.
        type Mutation = Box<dyn Fn(&mut TaskDescription)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("task.task_id", Box::new(|t| t.task_id = String::new())),
            ("task.task_id", Box::new(|t| t.task_id = "a/b".into())),
            ("task.task_id", Box::new(|t| t.task_id = "a..b".into())),
            ("task.task_id", Box::new(|t| t.task_id = "x".repeat(201))),
            ("task.agent_id", Box::new(|t| t.agent_id = "other".into())),
            ("task.resources", Box::new(|t| t.resources = None)),
            (
                "task.resources.millicpus",
                Box::new(|t| t.resources.as_mut().unwrap().millicpus = 0),
            ),
            (
                "task.resources.mem_bytes",
                Box::new(|t| t.resources.as_mut().unwrap().mem_bytes = 1024),
            ),
            (
                "task.resources.ports",
                Box::new(|t| t.resources.as_mut().unwrap().ports = vec![(30999, 31000)]),
            ),
            (
                "task.resources.ports",
                Box::new(|t| t.resources.as_mut().unwrap().ports = vec![(31005, 31001)]),
            ),
            (
                "task.resources.ports",
                Box::new(|t| t.resources.as_mut().unwrap().ports = vec![(0, 0)]),
            ),
            (
                "task.resources.ports",
                Box::new(|t| t.resources.as_mut().unwrap().ports = vec![(70000, 70001)]),
            ),
            (
                "task.resources.ports",
                Box::new(|t| {
                    t.resources.as_mut().unwrap().ports = vec![(31000, 31001), (31001, 31001)]
                }),
            ),
            ("task.command", Box::new(|t| t.command = None)),
            (
                "task.command",
                Box::new(|t| t.command.as_mut().unwrap().shell = "true".into()),
            ),
            (
                "task.command",
                Box::new(|t| t.command.as_mut().unwrap().argv.clear()),
            ),
            (
                "task.command.argv",
                Box::new(|t| t.command.as_mut().unwrap().argv = vec![String::new()]),
            ),
            (
                "task.command.env",
                Box::new(|t| {
                    t.command
                        .as_mut()
                        .unwrap()
                        .env
                        .insert("PORT0".into(), "1".into());
                }),
            ),
            (
                "task.command.env",
                Box::new(|t| {
                    t.command
                        .as_mut()
                        .unwrap()
                        .env
                        .insert("A=B".into(), "1".into());
                }),
            ),
            (
                "task.kill_grace_period_ms",
                Box::new(|t| t.kill_grace_period_ms = GRACE_PERIOD_MS_MAX + 1),
            ),
        ];
        for (want, mutate) in cases {
            let mut t = task();
            mutate(&mut t);
            assert_eq!(field(&t), want, "{t:?}");
        }
        let e = validate("a/b", &task(), &ctx(), |_| None).unwrap_err();
        assert_eq!(e.field, "framework.id");
    }

    #[test]
    fn more_ports_than_a_task_may_have_are_refused_before_expanding() {
        // Proves a huge port range is refused by count (no 65k-element expansion), naming the field.
        let wide = [(1u16, 65535u16)];
        let c = LaunchContext {
            agent_ports: &wide,
            ..ctx()
        };
        let mut t = task();
        t.resources.as_mut().unwrap().ports = vec![(1, 65535)];
        let e = validate("fw-1", &t, &c, |_| None).unwrap_err();
        assert_eq!(e.field, "task.resources.ports");
        assert!(e.reason.contains("more than"), "{e}");
    }

    #[test]
    fn a_port_held_by_another_task_is_refused() {
        // Proves two tasks on one agent cannot be given the same port.
        let e = validate("fw-1", &task(), &ctx(), |p| {
            (p == 31001).then(|| "fw-2/db.1".to_string())
        })
        .unwrap_err();
        assert_eq!(e.field, "task.resources.ports");
        assert!(
            e.reason.contains("31001") && e.reason.contains("fw-2/db.1"),
            "{e}"
        );
    }

    #[test]
    fn descriptions_round_trip_through_the_wire_types() {
        // Proves Reregister sends back exactly the TaskInfo/FrameworkInfo the master sent.
        let info = v1::TaskInfo::from(&task());
        assert_eq!(TaskDescription::from(&info), task());
        let fw = FrameworkDescription {
            id: "fw-1".into(),
            name: "svc".into(),
            role: "web".into(),
            principal: "p".into(),
            failover_timeout_seconds: 60.5,
            hostname: "h".into(),
        };
        assert_eq!(
            FrameworkDescription::from(&v1::FrameworkInfo::from(&fw)),
            fw
        );
        let json = serde_json::to_string(&task()).unwrap();
        assert_eq!(
            serde_json::from_str::<TaskDescription>(&json).unwrap(),
            task()
        );
    }

    #[test]
    fn ports_of_expands_ranges() {
        // Proves the in-use check sees every port of a running task.
        assert_eq!(ports_of(&task()), vec![31000, 31001, 32000]);
        let mut none = task();
        none.resources = None;
        assert!(ports_of(&none).is_empty());
    }
}
