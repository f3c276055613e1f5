//! Agent types → wire types, at the edge only.

use drover_proto::v1;

use crate::resources::AgentResources;
use crate::status_updates::StatusUpdate;

/// A checkpointed update as the `TaskStatus` the agent sends (source `SOURCE_AGENT`, uuid set).
pub fn task_status(update: &StatusUpdate, agent_id: &str) -> v1::TaskStatus {
    v1::TaskStatus {
        task_id: update.task_id.clone(),
        agent_id: agent_id.to_owned(),
        state: v1::TaskState::from(update.state) as i32,
        message: update.message.clone(),
        uuid: update.uuid.as_bytes().to_vec(),
        exit_code: update.exit_code,
        signal: update.signal,
        timestamp_ms: update.timestamp_ms,
        source: v1::StatusSource::SourceAgent as i32,
        reason: update.reason.clone(),
    }
}

/// The `StatusUpdate` message for a checkpointed update.
pub fn status_update_message(update: &StatusUpdate, agent_id: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(v1::agent_message::Message::StatusUpdate(v1::StatusUpdate {
            agent_id: agent_id.to_owned(),
            framework_id: update.framework_id.clone(),
            status: Some(task_status(update, agent_id)),
        })),
    }
}

/// What the agent offers, on the wire: CPUs in millicpus (rounded to the nearest), bytes, ranges.
pub fn resources(r: &AgentResources) -> v1::Resources {
    // cpus is finite, > 0 and at most CPUS_MAX (4096), so the product fits a u64 exactly.
    let millicpus = (r.cpus * 1000.0).round() as u64;
    v1::Resources {
        millicpus,
        mem_bytes: r.mem_bytes,
        ports: r
            .ports
            .iter()
            .map(|&(begin, end)| v1::PortRange {
                begin: u32::from(begin),
                end: u32::from(end),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_updates::TaskState;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    #[test]
    fn an_update_goes_out_with_uuid_source_and_exit_info() {
        // Proves the wire TaskStatus carries the 16-byte uuid, SOURCE_AGENT, exit code and reason.
        let u = StatusUpdate {
            uuid: Uuid::from_u128(42),
            framework_id: "fw".into(),
            task_id: "t".into(),
            state: TaskState::Failed,
            message: "exited with status 3".into(),
            exit_code: Some(3),
            signal: None,
            timestamp_ms: 9,
            reason: "x".into(),
        };
        let s = task_status(&u, "agent-1");
        assert_eq!(s.uuid.len(), 16);
        assert_eq!(Uuid::from_slice(&s.uuid).unwrap(), u.uuid);
        assert_eq!(s.source, v1::StatusSource::SourceAgent as i32);
        assert_eq!(s.state, v1::TaskState::TaskFailed as i32);
        assert_eq!((s.exit_code, s.signal), (Some(3), None));
        assert_eq!((s.agent_id.as_str(), s.reason.as_str()), ("agent-1", "x"));
    }

    #[test]
    fn agent_resources_become_millicpus_and_ranges() {
        // Proves fractional CPUs round to millicpus and port ranges stay inclusive.
        let r = AgentResources {
            cpus: 1.5,
            mem_bytes: 1 << 30,
            ports: vec![(31000, 32000), (40000, 40000)],
            attributes: BTreeMap::new(),
        };
        let p = resources(&r);
        assert_eq!(p.millicpus, 1500);
        assert_eq!(p.mem_bytes, 1 << 30);
        assert_eq!(
            p.ports,
            vec![
                v1::PortRange {
                    begin: 31000,
                    end: 32000
                },
                v1::PortRange {
                    begin: 40000,
                    end: 40000
                }
            ]
        );
    }
}
