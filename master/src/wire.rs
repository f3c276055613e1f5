//! Conversions between `drover_proto::v1` and the core's domain types: the one place the
//! master touches wire types. Input from the network is validated here; errors name the field.

use crate::core::types::*;
use crate::ids::{AgentId, FrameworkId, OfferId, Role, UserName};
use crate::resources::Resources;
use drover_proto::v1;
use std::collections::BTreeMap;

/// Most entries in a task's env or labels, and the longest argv.
pub const TASK_ENTRIES_MAX: usize = 1024;
/// Longest single string in a command, env value or label.
pub const TASK_STRING_BYTES_MAX: usize = 64 * 1024;

/// `r` as resources, or an error naming the path below `field` (e.g. `task.resources.ports: ...`;
/// every `ResourcesError` message starts with its own field).
pub fn resources_from_wire(field: &str, r: Option<&v1::Resources>) -> Result<Resources, String> {
    let Some(r) = r else {
        return Err(format!("{field}: missing"));
    };
    Resources::try_from(r).map_err(|e| format!("{field}.{e}"))
}

pub fn status_to_wire(s: &TaskStatus, now_unix_ms: u64) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: s.task_id.clone(),
        agent_id: s
            .agent_id
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        state: v1::TaskState::from(s.state).into(),
        message: s.message.clone(),
        uuid: s.uuid.map(|u| u.to_vec()).unwrap_or_default(),
        exit_code: s.exit_code,
        signal: s.signal,
        timestamp_ms: if s.timestamp_ms == 0 {
            now_unix_ms
        } else {
            s.timestamp_ms
        },
        source: match s.source {
            StatusSource::Agent => v1::StatusSource::SourceAgent,
            StatusSource::Master => v1::StatusSource::SourceMaster,
        }
        .into(),
        reason: s.reason.clone(),
    }
}

/// An agent's status update. The agent must send a 16-byte uuid.
pub fn status_from_agent(s: &v1::TaskStatus, agent: &AgentId) -> Result<TaskStatus, String> {
    let uuid: [u8; 16] = s.uuid.as_slice().try_into().map_err(|_| {
        format!(
            "status.uuid: {} bytes; an agent update needs 16",
            s.uuid.len()
        )
    })?;
    Ok(TaskStatus {
        task_id: s.task_id.clone(),
        agent_id: Some(agent.clone()),
        state: TaskState::from_wire(s.state).map_err(|e| e.to_string())?,
        message: s.message.clone(),
        reason: s.reason.clone(),
        uuid: Some(uuid),
        exit_code: s.exit_code,
        signal: s.signal,
        timestamp_ms: s.timestamp_ms,
        source: StatusSource::Agent,
    })
}

/// Offer ids on the wire carry the leader's epoch, so an old leader's ids never match.
pub fn offer_id_to_wire(epoch: u32, id: OfferId) -> String {
    format!("{epoch}-{}", id.0)
}

pub fn offer_id_from_wire(epoch: u32, s: &str) -> OfferRef {
    let parsed = s
        .split_once('-')
        .and_then(|(e, n)| Some((e.parse::<u32>().ok()?, n.parse::<u64>().ok()?)));
    match parsed {
        Some((e, n)) if e == epoch => OfferRef::Known(OfferId(n)),
        _ => OfferRef::Foreign(s.to_string()),
    }
}

pub fn framework_to_wire(f: &FrameworkInfo) -> v1::FrameworkInfo {
    v1::FrameworkInfo {
        id: f.id.to_string(),
        name: f.name.clone(),
        role: f.role.to_string(),
        principal: f.principal.clone(),
        failover_timeout_seconds: f.failover_timeout_ms as f64 / 1000.0,
        hostname: f.hostname.clone(),
    }
}

/// A `Subscribe`'s framework: `fresh_id` is used when it carries none. Returns the info and
/// whether the framework is new.
pub fn framework_from_wire(
    f: Option<&v1::FrameworkInfo>,
    fresh_id: &str,
) -> Result<(FrameworkInfo, bool), String> {
    let f = f.ok_or("framework: missing")?;
    let is_new = f.id.is_empty();
    let id = if is_new { fresh_id } else { &f.id };
    let role = if f.role.is_empty() { "*" } else { &f.role };
    Ok((
        FrameworkInfo {
            id: FrameworkId::parse(id).map_err(|e| format!("framework.id: {e}"))?,
            name: f.name.clone(),
            role: Role::parse(role).map_err(|e| format!("framework.{e}"))?,
            principal: f.principal.clone(),
            failover_timeout_ms: crate::core::MasterCore::failover_timeout_ms(
                f.failover_timeout_seconds,
            )
            .map_err(|e| e.to_string())?,
            hostname: f.hostname.clone(),
        },
        is_new,
    ))
}

pub fn agent_to_wire(a: &AgentInfo) -> v1::AgentInfo {
    v1::AgentInfo {
        id: a.id.to_string(),
        hostname: a.hostname.clone(),
        address: a.address.clone(),
        resources: Some(v1::Resources::from(&a.resources)),
        attributes: a.attributes.clone().into_iter().collect(),
    }
}

pub fn agent_from_wire(a: Option<&v1::AgentInfo>, id: &str) -> Result<AgentInfo, String> {
    let a = a.ok_or("agent: missing")?;
    Ok(AgentInfo {
        id: AgentId::parse(id).map_err(|e| format!("agent.{e}"))?,
        hostname: a.hostname.clone(),
        address: a.address.clone(),
        resources: resources_from_wire("agent.resources", a.resources.as_ref())?,
        attributes: a.attributes.clone().into_iter().collect(),
    })
}

fn check_strings<'a>(field: &str, items: impl Iterator<Item = &'a String>) -> Result<(), String> {
    for s in items {
        if s.len() > TASK_STRING_BYTES_MAX {
            return Err(format!(
                "{field}: an entry is {} bytes, longer than {TASK_STRING_BYTES_MAX}",
                s.len()
            ));
        }
    }
    Ok(())
}

fn map_from_wire(
    field: &str,
    m: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if m.len() > TASK_ENTRIES_MAX {
        return Err(format!(
            "{field}: {} entries, more than {TASK_ENTRIES_MAX}",
            m.len()
        ));
    }
    check_strings(field, m.keys().chain(m.values()))?;
    Ok(m.clone().into_iter().collect())
}

/// A task to launch. Everything about it is checked here except what needs the master's state
/// (offers, duplicates), which the core checks.
pub fn task_from_wire(t: &v1::TaskInfo) -> Result<TaskLaunch, InvalidLaunch> {
    let invalid = |message: String| InvalidLaunch {
        task_id: t.task_id.clone(),
        message,
    };
    let id = TaskId::parse(&t.task_id).map_err(|e| invalid(e.to_string()))?;
    let agent = AgentId::parse(&t.agent_id).map_err(|e| invalid(format!("task.{e}")))?;
    let resources = resources_from_wire("task.resources", t.resources.as_ref()).map_err(invalid)?;
    let command = t
        .command
        .as_ref()
        .ok_or_else(|| invalid("task.command: missing".into()))?;
    let program = match (command.argv.is_empty(), command.shell.is_empty()) {
        (false, true) => {
            if command.argv.len() > TASK_ENTRIES_MAX {
                return Err(invalid(format!(
                    "task.command.argv: {} entries, more than {TASK_ENTRIES_MAX}",
                    command.argv.len()
                )));
            }
            if command.argv[0].is_empty() {
                return Err(invalid(
                    "task.command.argv: the program (argv[0]) is empty".into(),
                ));
            }
            check_strings("task.command.argv", command.argv.iter()).map_err(invalid)?;
            Program::Argv(command.argv.clone())
        }
        (true, false) => {
            check_strings("task.command.shell", std::iter::once(&command.shell))
                .map_err(invalid)?;
            Program::Shell(command.shell.clone())
        }
        (true, true) => {
            return Err(invalid(
                "task.command: set argv or shell; both are empty".into(),
            ));
        }
        (false, false) => {
            return Err(invalid("task.command: set argv or shell, not both".into()));
        }
    };
    if t.name.len() > TASK_STRING_BYTES_MAX {
        return Err(invalid(format!(
            "task.name: longer than {TASK_STRING_BYTES_MAX} bytes"
        )));
    }
    for key in command.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(format!(
                "task.command.env: {key:?} is not a variable name"
            )));
        }
    }
    let user = match t.user.as_str() {
        "" => None,
        name => Some(UserName::parse(name).map_err(|e| invalid(format!("task.{e}")))?),
    };
    Ok(TaskLaunch {
        id,
        name: t.name.clone(),
        agent,
        resources,
        program,
        env: map_from_wire("task.command.env", &command.env).map_err(invalid)?,
        kill_grace_period_ms: t.kill_grace_period_ms,
        labels: map_from_wire("task.labels", &t.labels).map_err(invalid)?,
        user,
    })
}

pub fn task_to_wire(t: &TaskLaunch) -> v1::TaskInfo {
    let (argv, shell) = match &t.program {
        Program::Argv(a) => (a.clone(), String::new()),
        Program::Shell(s) => (Vec::new(), s.clone()),
    };
    v1::TaskInfo {
        task_id: t.id.to_string(),
        name: t.name.clone(),
        agent_id: t.agent.to_string(),
        resources: Some(v1::Resources::from(&t.resources)),
        command: Some(v1::CommandInfo {
            argv,
            shell,
            env: t.env.clone().into_iter().collect(),
        }),
        kill_grace_period_ms: t.kill_grace_period_ms,
        labels: t.labels.clone().into_iter().collect(),
        user: t.user.as_ref().map(ToString::to_string).unwrap_or_default(),
    }
}

pub fn offer_to_wire(epoch: u32, fw: &FrameworkId, o: &OfferOut) -> v1::Offer {
    v1::Offer {
        id: offer_id_to_wire(epoch, o.id),
        framework_id: fw.to_string(),
        agent_id: o.agent.to_string(),
        hostname: o.hostname.clone(),
        resources: Some(v1::Resources::from(&o.resources)),
        attributes: o.attributes.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> v1::TaskInfo {
        v1::TaskInfo {
            task_id: "t1".into(),
            name: "t".into(),
            agent_id: "a1".into(),
            resources: Some(v1::Resources {
                millicpus: 100,
                mem_bytes: 1 << 20,
                ports: vec![v1::PortRange {
                    begin: 31000,
                    end: 31000,
                }],
            }),
            command: Some(v1::CommandInfo {
                argv: vec!["sleep".into(), "1".into()],
                shell: String::new(),
                env: Default::default(),
            }),
            kill_grace_period_ms: 0,
            labels: Default::default(),
            user: String::new(),
        }
    }

    #[test]
    fn a_task_user_goes_to_the_agent_unchanged_and_empty_means_the_agents_default() {
        // Proves `TaskInfo.user` survives the master (wire → launch → RunTask's TaskInfo), and
        // that an empty user stays empty (the agent's --task-user applies).
        let mut t = task();
        assert_eq!(task_from_wire(&t).unwrap().user, None);
        assert_eq!(task_to_wire(&task_from_wire(&t).unwrap()).user, "");
        t.user = "www-data".into();
        let launch = task_from_wire(&t).unwrap();
        assert_eq!(launch.user.as_ref().map(UserName::as_str), Some("www-data"));
        assert_eq!(task_to_wire(&launch).user, "www-data");
    }

    #[test]
    fn malformed_launches_are_refused_naming_the_field() {
        // Proves each kind of malformed task becomes an InvalidLaunch whose message names the field.
        assert!(task_from_wire(&task()).is_ok());
        type Mutation = Box<dyn Fn(&mut v1::TaskInfo)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|t| t.task_id = "a/b".into()), "task_id"),
            (Box::new(|t| t.task_id = String::new()), "task_id"),
            (Box::new(|t| t.agent_id = String::new()), "agent_id"),
            (Box::new(|t| t.resources = None), "task.resources"),
            (
                Box::new(|t| t.resources.as_mut().unwrap().ports[0].end = 70_000),
                "task.resources.ports",
            ),
            (Box::new(|t| t.command = None), "task.command"),
            (
                Box::new(|t| t.command.as_mut().unwrap().argv.clear()),
                "task.command",
            ),
            (
                Box::new(|t| t.command.as_mut().unwrap().shell = "x".into()),
                "not both",
            ),
            (
                Box::new(|t| t.command.as_mut().unwrap().argv[0] = String::new()),
                "argv[0]",
            ),
            (
                Box::new(|t| {
                    t.command
                        .as_mut()
                        .unwrap()
                        .env
                        .insert("A=B".into(), "x".into());
                }),
                "task.command.env",
            ),
            (Box::new(|t| t.user = "a b".into()), "task.user"),
            (Box::new(|t| t.user = "-x".into()), "task.user"),
        ];
        for (mutate, field) in cases {
            let mut t = task();
            mutate(&mut t);
            let err = task_from_wire(&t).expect_err(field);
            assert!(
                err.message.contains(field),
                "{} should name {field}",
                err.message
            );
        }
    }

    #[test]
    fn offer_ids_carry_the_epoch() {
        // Proves an offer id from another leader's epoch, or garbage, never resolves.
        let wire = offer_id_to_wire(7, OfferId(42));
        assert_eq!(offer_id_from_wire(7, &wire), OfferRef::Known(OfferId(42)));
        assert!(matches!(offer_id_from_wire(8, &wire), OfferRef::Foreign(_)));
        assert!(matches!(offer_id_from_wire(7, "x"), OfferRef::Foreign(_)));
    }
}
