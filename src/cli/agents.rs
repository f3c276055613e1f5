//! `drover agent ls`: the agents the leading master knows, with what they offer and what runs on
//! them, from `Operator.GetState`. (`drover agent` without a subcommand runs the agent daemon:
//! `agent.rs`.)

use std::collections::BTreeMap;

use drover_proto::v1;
use serde_json::json;

use super::operator::{ConnectArgs, Operator};
use super::render::{self, Table};
use super::task;
use super::{Context, Output};

pub async fn ls(ctx: &Context, connect: &ConnectArgs) -> anyhow::Result<()> {
    let state = Operator::new(ctx, connect)?.state().await?;
    let tasks = active_tasks_by_agent(&state);
    let mut agents: Vec<&v1::AgentState> = state.agents.iter().collect();
    agents.sort_by(|a, b| {
        let key =
            |s: &&v1::AgentState| s.agent.as_ref().map(|a| (a.hostname.clone(), a.id.clone()));
        key(a).cmp(&key(b))
    });
    if ctx.output == Output::Json {
        let list: Vec<_> = agents
            .iter()
            .map(|a| {
                let info = a.agent.clone().unwrap_or_default();
                let total = info.resources.clone().unwrap_or_default();
                let used = a.used.clone().unwrap_or_default();
                json!({
                    "id": info.id,
                    "hostname": info.hostname,
                    "address": info.address,
                    "reachable": a.reachable,
                    "registered_at_ms": a.registered_at_ms,
                    "attributes": info.attributes.iter().collect::<BTreeMap<_, _>>(),
                    "total": resources_json(&total),
                    "used": resources_json(&used),
                    "offered": resources_json(&a.offered.clone().unwrap_or_default()),
                    "tasks": tasks.get(info.id.as_str()).copied().unwrap_or(0),
                })
            })
            .collect();
        render::outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "ID",
        "HOSTNAME",
        "ADDRESS",
        "REACHABLE",
        "CPUS",
        "MEM",
        "TASKS",
    ]);
    for a in agents {
        let info = a.agent.clone().unwrap_or_default();
        let total = info.resources.clone().unwrap_or_default();
        let used = a.used.clone().unwrap_or_default();
        t.row(vec![
            info.id.clone(),
            info.hostname,
            info.address,
            if a.reachable { "yes" } else { "no" }.into(),
            format!(
                "{}/{}",
                render::cpus(used.millicpus),
                render::cpus(total.millicpus)
            ),
            format!(
                "{}/{}",
                render::bytes(used.mem_bytes),
                render::bytes(total.mem_bytes)
            ),
            tasks
                .get(info.id.as_str())
                .copied()
                .unwrap_or(0)
                .to_string(),
        ]);
    }
    render::out!("{}", t.render())?;
    Ok(())
}

/// Agent id → how many of its tasks are not terminal.
pub fn active_tasks_by_agent(state: &v1::ClusterState) -> BTreeMap<&str, usize> {
    let mut out = BTreeMap::new();
    for t in &state.tasks {
        if !render::is_terminal(task::state_of(t)) {
            *out.entry(task::agent_id(t)).or_insert(0) += 1;
        }
    }
    out
}

/// Resources for `--output json`.
pub fn resources_json(r: &v1::Resources) -> serde_json::Value {
    json!({
        "millicpus": r.millicpus,
        "mem_bytes": r.mem_bytes,
        "ports": r.ports.iter().map(|p| json!({"begin": p.begin, "end": p.end})).collect::<Vec<_>>(),
    })
}
