//! `drover cluster status`: every master with its role (from each master's own `Cluster.Status`),
//! the leader, and how many agents, frameworks and tasks (by state) the leading master knows.
//! Fails with one line while no master leads.

use std::collections::BTreeMap;

use drover_client::cluster as client_cluster;
use drover_master::cluster::{self as status, PEER_STATUS_TIMEOUT};
use drover_proto::v1;
use serde_json::json;

use super::operator::{ConnectArgs, Operator};
use super::render;
use super::task;
use super::{Context, Output};

#[derive(clap::Subcommand, Debug)]
pub enum ClusterCmd {
    /// Every master with its role, epoch and zxids; agents, frameworks and tasks by state.
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// What one master said about itself, or why it did not.
struct Answer {
    address: String,
    status: Result<v1::MasterStatus, String>,
}

/// Asks every address in `addrs` and then every peer they name that was not asked yet, so
/// `--masters` may name any one master of the ensemble. Sorted by master id (unreachable
/// addresses last).
async fn ask_ensemble(addrs: Vec<String>, tls: Option<drover_security::TlsConfig>) -> Vec<Answer> {
    let mut asked: BTreeMap<String, Result<v1::MasterStatus, String>> = BTreeMap::new();
    let mut next = addrs;
    // Two rounds: the given addresses, then the peers they name.
    for _ in 0..2 {
        next.retain(|a| !asked.contains_key(a));
        next.sort();
        next.dedup();
        if next.is_empty() {
            break;
        }
        let transport = client_cluster::status_transport(PEER_STATUS_TIMEOUT, tls.clone());
        let answers = client_cluster::ask_all(&transport, &next).await;
        next = answers
            .iter()
            .filter_map(|(_, s)| s.as_ref().ok())
            .flat_map(|s| s.peers.iter().map(|p| p.address.clone()))
            .collect();
        asked.extend(answers);
    }
    let mut out: Vec<Answer> = asked
        .into_iter()
        .map(|(address, status)| Answer { address, status })
        .collect();
    out.sort_by_key(|a| match &a.status {
        Ok(s) => (0, s.master_id),
        Err(_) => (1, 0),
    });
    out
}

pub async fn run(ctx: &Context, cmd: ClusterCmd) -> anyhow::Result<()> {
    let ClusterCmd::Status { connect } = cmd;
    let mut operator = Operator::new(ctx, &connect)?;
    // The state first: it waits (bounded) for a leader and fails with the reason if none leads.
    let state = operator.state().await?;
    let leader_addr = operator.leader().unwrap_or_default().to_string();
    let masters = ask_ensemble(ctx.master_addrs(), ctx.tls.clone()).await;
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
    let leader = if state.leader.is_empty() {
        leader_addr
    } else {
        state.leader.clone()
    };
    let leading = masters.iter().find_map(|a| match &a.status {
        Ok(s) if s.role == v1::MasterRole::Leading as i32 => Some(s),
        _ => None,
    });
    if ctx.output == Output::Json {
        let masters: Vec<_> = masters
            .iter()
            .map(|a| match &a.status {
                Ok(s) => status::status_json(s),
                Err(error) => {
                    json!({ "address": a.address, "role": "unreachable", "error": error })
                }
            })
            .collect();
        let out = json!({
            "leader": leader,
            "leader_id": leading.map(|s| s.master_id),
            "epoch": leading.map(|s| s.epoch),
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
    match leading {
        Some(s) => render::outln!(
            "leader:      {leader} (master {}, epoch {})",
            s.master_id,
            s.epoch
        )?,
        None => render::outln!("leader:      {leader} ({})", state.master_id)?,
    }
    let mut table = render::Table::new(&[
        "ID", "ADDRESS", "ROLE", "EPOCH", "LOGGED", "APPLIED", "PEERS",
    ]);
    for a in &masters {
        table.row(match &a.status {
            Ok(s) => vec![
                s.master_id.to_string(),
                a.address.clone(),
                client_cluster::role_name(s.role).to_string(),
                s.epoch.to_string(),
                status::zxid_text(s.last_logged_zxid),
                status::zxid_text(s.last_applied_zxid),
                peers_text(s),
            ],
            Err(error) => vec![
                String::new(),
                a.address.clone(),
                "unreachable".into(),
                String::new(),
                String::new(),
                String::new(),
                error.clone(),
            ],
        });
    }
    render::outln!("masters:")?;
    for line in table.render().lines() {
        render::outln!("  {line}")?;
    }
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

/// `2 synced 12ms, 3 not heard` — each peer as this master sees it. A follower is in contact
/// with its leader only, so it lists just that one.
fn peers_text(s: &v1::MasterStatus) -> String {
    let following = s.role == v1::MasterRole::Following as i32;
    let text: Vec<String> = s
        .peers
        .iter()
        .filter(|p| !following || Some(p.id) == s.leader_id)
        .map(|p| match (p.heard_ms_ago, p.synced) {
            (Some(ms), true) => format!("{} synced {ms}ms", p.id),
            (Some(ms), false) => format!("{} unsynced {ms}ms", p.id),
            (None, _) => format!("{} not heard", p.id),
        })
        .collect();
    text.join(", ")
}
