//! Proto ↔ SDK conversions, at the edge only: everything that crosses the wire passes through
//! here, so the rest of the SDK and every framework see domain types, never prost structs.
//!
//! Incoming data is checked: a port above 65535 or an inverted range in an offer is a
//! [`ConvertError`] naming the field, not a panic or a silent truncation. An unspecified or
//! unrecognised task state becomes [`TaskState::Unknown`] rather than an error, so an update from
//! a newer master is still delivered (and acknowledged) instead of being retried forever.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_proto::v1;

use crate::ids::{AgentId, OfferId, TaskId};
use crate::offers::Offer;
use crate::resources::Resources;
use crate::tasks::{Command, StatusSource, TaskInfo, TaskState, TaskStatus};

/// Wire data the SDK cannot represent; `field` names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConvertError {
    pub field: &'static str,
    pub reason: String,
}

impl TryFrom<&v1::Offer> for Offer {
    type Error = ConvertError;

    fn try_from(o: &v1::Offer) -> Result<Offer, ConvertError> {
        if o.id.is_empty() {
            return Err(ConvertError {
                field: "offer.id",
                reason: "empty".into(),
            });
        }
        let resources = match &o.resources {
            // The message names `ports`; the field says where it is in the offer.
            Some(r) => Resources::try_from(r).map_err(|e| ConvertError {
                field: "offer.resources",
                reason: e.to_string(),
            })?,
            None => Resources::default(),
        };
        Ok(Offer {
            id: OfferId(o.id.clone()),
            agent_id: AgentId(o.agent_id.clone()),
            hostname: o.hostname.clone(),
            attributes: o
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            resources,
        })
    }
}

/// A task state number from the wire; unspecified and unknown numbers are `TaskState::Unknown`.
pub fn task_state_from_wire(state: i32) -> TaskState {
    TaskState::from_wire(state).unwrap_or(TaskState::Unknown)
}

fn status_source_from_wire(source: i32) -> StatusSource {
    match v1::StatusSource::try_from(source) {
        Ok(v1::StatusSource::SourceAgent) => StatusSource::Agent,
        Ok(v1::StatusSource::SourceMaster) => StatusSource::Master,
        _ => StatusSource::Unspecified,
    }
}

impl From<&v1::TaskStatus> for TaskStatus {
    fn from(s: &v1::TaskStatus) -> TaskStatus {
        TaskStatus {
            task_id: TaskId(s.task_id.clone()),
            agent_id: AgentId(s.agent_id.clone()),
            state: task_state_from_wire(s.state),
            message: s.message.clone(),
            reason: s.reason.clone(),
            uuid: s.uuid.clone(),
            exit_code: s.exit_code,
            signal: s.signal,
            timestamp_ms: s.timestamp_ms,
            source: status_source_from_wire(s.source),
        }
    }
}

/// Milliseconds for a duration on the wire, saturating (no grace period is 584 million years).
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&TaskInfo> for v1::TaskInfo {
    fn from(t: &TaskInfo) -> v1::TaskInfo {
        let (argv, shell) = match &t.command {
            Command::Argv(argv) => (argv.clone(), String::new()),
            Command::Shell(script) => (Vec::new(), script.clone()),
        };
        v1::TaskInfo {
            task_id: t.task_id.0.clone(),
            name: t.name.clone(),
            agent_id: t.agent_id.0.clone(),
            resources: Some(v1::Resources::from(&t.resources)),
            command: Some(v1::CommandInfo {
                argv,
                shell,
                env: t.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }),
            kill_grace_period_ms: t.kill_grace.map_or(0, duration_ms),
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            user: t.user.clone().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PortRanges;

    #[test]
    fn offer_from_proto() {
        // Proves an offer keeps its id, agent, host, attributes and resources; an empty id or a bad
        // port is refused naming the field.
        let wire = v1::Offer {
            id: "o1".into(),
            framework_id: "f1".into(),
            agent_id: "a1".into(),
            hostname: "h1".into(),
            resources: Some(v1::Resources {
                millicpus: 2000,
                mem_bytes: 1 << 30,
                ports: vec![v1::PortRange {
                    begin: 31000,
                    end: 31001,
                }],
            }),
            attributes: [("rack".to_string(), "r1".to_string())].into(),
        };
        let offer = Offer::try_from(&wire).expect("valid");
        assert_eq!(offer.id, OfferId::from("o1"));
        assert_eq!(offer.agent_id, AgentId::from("a1"));
        assert_eq!(offer.hostname, "h1");
        assert_eq!(offer.attributes.get("rack").map(String::as_str), Some("r1"));
        assert_eq!(offer.resources.cpus(), 2.0);
        assert_eq!(offer.resources.ports().count(), 2);
        let mut bad_port = wire.clone();
        bad_port.resources.as_mut().expect("set").ports[0].end = 70000;
        assert_eq!(
            Offer::try_from(&bad_port)
                .expect_err("port too big")
                .to_string(),
            "offer.resources: ports: 70000 is not a port (0..=65535)"
        );
        let no_id = v1::Offer {
            id: String::new(),
            ..wire
        };
        assert_eq!(
            Offer::try_from(&no_id).expect_err("no id").field,
            "offer.id"
        );
    }

    #[test]
    fn unknown_task_states_are_tolerated() {
        // Proves the SDK delivers an update with an unspecified or unrecognised state as Unknown
        // instead of refusing it (the mapping itself is tested in drover-types).
        assert_eq!(task_state_from_wire(0), TaskState::Unknown);
        assert_eq!(task_state_from_wire(999), TaskState::Unknown);
        assert_eq!(
            task_state_from_wire(v1::TaskState::TaskRunning as i32),
            TaskState::Running
        );
    }

    #[test]
    fn status_from_proto() {
        // Proves every status field is carried over, including the uuid and optional exit/signal.
        let wire = v1::TaskStatus {
            task_id: "t1".into(),
            agent_id: "a1".into(),
            state: v1::TaskState::TaskFailed as i32,
            message: "boom".into(),
            uuid: vec![7; 16],
            exit_code: Some(2),
            signal: None,
            timestamp_ms: 42,
            source: v1::StatusSource::SourceAgent as i32,
            reason: "memory_limit".into(),
        };
        let s = TaskStatus::from(&wire);
        assert_eq!(s.task_id, TaskId::from("t1"));
        assert_eq!(s.state, TaskState::Failed);
        assert_eq!(s.uuid, vec![7; 16]);
        assert_eq!((s.exit_code, s.signal, s.timestamp_ms), (Some(2), None, 42));
        assert_eq!(s.source, StatusSource::Agent);
        assert_eq!(
            (s.message.as_str(), s.reason.as_str()),
            ("boom", "memory_limit")
        );
        let master = v1::TaskStatus {
            source: v1::StatusSource::SourceMaster as i32,
            uuid: vec![],
            ..wire
        };
        let m = TaskStatus::from(&master);
        assert_eq!(m.source, StatusSource::Master);
        assert!(!m.needs_acknowledgement());
    }

    #[test]
    fn task_info_to_proto() {
        // Proves argv and shell commands, env, labels, resources, the grace period and the user
        // reach the wire (no user: empty, the agent's default).
        use crate::tasks::TaskSpec;
        let res = Resources::from_millicpus(250, 16 << 20, PortRanges::from_ports([31005]));
        let task = TaskSpec::new("t1", Command::argv(["sleep", "10"]))
            .name("sleeper")
            .env("K", "V")
            .label("service", "web")
            .kill_grace(Duration::from_millis(1500))
            .user("www-data")
            .build(AgentId::from("a1"), res.clone())
            .expect("valid");
        let wire = v1::TaskInfo::from(&task);
        assert_eq!(
            (
                wire.task_id.as_str(),
                wire.name.as_str(),
                wire.agent_id.as_str()
            ),
            ("t1", "sleeper", "a1")
        );
        let command = wire.command.expect("command");
        assert_eq!(command.argv, ["sleep", "10"]);
        assert!(command.shell.is_empty());
        assert_eq!(command.env.get("K").map(String::as_str), Some("V"));
        assert_eq!(wire.labels.get("service").map(String::as_str), Some("web"));
        assert_eq!(wire.kill_grace_period_ms, 1500);
        assert_eq!(wire.user, "www-data");
        assert_eq!(
            Resources::try_from(&wire.resources.expect("resources")),
            Ok(res.clone())
        );
        let shell = TaskSpec::new("t2", Command::shell("echo $PORT0"))
            .build(AgentId::from("a1"), res)
            .expect("valid");
        let wire = v1::TaskInfo::from(&shell);
        let command = wire.command.expect("command");
        assert!(command.argv.is_empty());
        assert_eq!(command.shell, "echo $PORT0");
        assert_eq!(wire.kill_grace_period_ms, 0);
        assert_eq!(wire.user, "");
    }
}
