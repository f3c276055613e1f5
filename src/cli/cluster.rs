//! `drover cluster status`: who leads, which masters answer, and how many agents, frameworks and
//! tasks (by state) the leading master knows. Fails with one line while no master leads.

use std::collections::BTreeMap;

use serde_json::json;

use super::operator::{ConnectArgs, MasterAnswer, Operator};
use super::render;
use super::task;
use super::{Context, Output};

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// The leader, the masters that answer, agents, frameworks and tasks by state.
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(ctx: &Context, cmd: ClusterCmd) -> anyhow::Result<()> {
    let ClusterCmd::Status { connect } = cmd;
    let mut operator = Operator::new(ctx, &connect)?;
    // The state first: it waits (bounded) for a leader and fails with the reason if none leads.
    let state = operator.state().await?;
    let leader_addr = operator.leader().unwrap_or_default().to_string();
    let masters = operator.probe().await?;
    let agents_reachable = state.agents.iter().filter(|a| a.reachable).count();
    let frameworks_connected = state.frameworks.iter().filter(|f| f.connected).count();
    let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in &state.tasks {
        *by_state
            .entry(render::state_name(task::state_of(t)))
            .or_insert(0) += 1;
    }
    let (mut total_cpus, mut total_mem, mut used_cpus, mut used_mem) = (0u64, 0u64, 0u64, 0u64);
    for a in state.agents.iter().filter(|a| a.reachable) {
        let total = a
            .agent
            .as_ref()
            .and_then(|i| i.resources.clone())
            .unwrap_or_default();
        let used = a.used.clone().unwrap_or_default();
        total_cpus = total_cpus.saturating_add(total.millicpus);
        total_mem = total_mem.saturating_add(total.mem_bytes);
        used_cpus = used_cpus.saturating_add(used.millicpus);
        used_mem = used_mem.saturating_add(used.mem_bytes);
    }
    if ctx.output == Output::Json {
        let masters: Vec<_> = masters
            .iter()
            .map(|(addr, a)| {
                let mut m = json!({ "address": addr, "state": a.kind() });
                match a {
                    MasterAnswer::Following { leader } => m["leader"] = json!(leader),
                    MasterAnswer::NoLeader { message } => m["message"] = json!(message),
                    MasterAnswer::Unreachable { error } => m["error"] = json!(error),
                    MasterAnswer::Leading => {}
                }
                m
            })
            .collect();
        let out = json!({
            "leader": state.leader,
            "leader_answered_at": leader_addr,
            "master_id": state.master_id,
            "masters": masters,
            "agents": { "total": state.agents.len(), "reachable": agents_reachable },
            "frameworks": { "total": state.frameworks.len(), "connected": frameworks_connected },
            "tasks": { "total": state.tasks.len(), "by_state": by_state },
            "resources": {
                "total": { "millicpus": total_cpus, "mem_bytes": total_mem },
                "used": { "millicpus": used_cpus, "mem_bytes": used_mem },
            },
        });
        render::outln!("{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    let leader = if state.leader.is_empty() {
        leader_addr
    } else {
        state.leader.clone()
    };
    render::outln!("leader:      {leader} ({})", state.master_id)?;
    let masters_line = masters
        .iter()
        .map(|(addr, a)| match a {
            MasterAnswer::Leading => format!("{addr} leading"),
            MasterAnswer::Following { .. } => format!("{addr} following"),
            MasterAnswer::NoLeader { .. } => format!("{addr} up, sees no leader"),
            MasterAnswer::Unreachable { error } => format!("{addr} unreachable ({error})"),
        })
        .collect::<Vec<_>>()
        .join("; ");
    render::outln!("masters:     {masters_line}")?;
    render::outln!(
        "agents:      {agents_reachable} reachable of {}",
        state.agents.len()
    )?;
    render::outln!(
        "frameworks:  {frameworks_connected} connected of {}",
        state.frameworks.len()
    )?;
    let tasks_line = if by_state.is_empty() {
        "none".to_string()
    } else {
        by_state
            .iter()
            .map(|(s, n)| format!("{n} {}", s.strip_prefix("TASK_").unwrap_or(s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    render::outln!("tasks:       {tasks_line}")?;
    render::outln!(
        "resources:   cpus {}/{} used, mem {}/{} used (reachable agents)",
        render::cpus(used_cpus),
        render::cpus(total_cpus),
        render::bytes(used_mem),
        render::bytes(total_mem)
    )?;
    Ok(())
}
