//! `drover framework ls`: the frameworks the leading master knows, from `Operator.GetState`.

use std::collections::BTreeMap;

use drover_proto::v1;
use serde_json::json;

use super::agents::resources_json;
use super::operator::{ConnectArgs, Operator};
use super::render::{self, Table};
use super::task;
use super::{Context, Output};

#[derive(clap::Subcommand, Debug)]
pub enum FrameworkCmd {
    /// List frameworks: id, name, role, connected, tasks, resources used.
    Ls {
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(ctx: &Context, cmd: FrameworkCmd) -> anyhow::Result<()> {
    let FrameworkCmd::Ls { connect } = cmd;
    let state = Operator::new(ctx, &connect)?.state().await?;
    let tasks = active_tasks_by_framework(&state);
    let mut frameworks: Vec<&v1::FrameworkState> = state.frameworks.iter().collect();
    frameworks.sort_by(|a, b| {
        let key =
            |s: &&v1::FrameworkState| s.framework.as_ref().map(|f| (f.name.clone(), f.id.clone()));
        key(a).cmp(&key(b))
    });
    if ctx.output == Output::Json {
        let list: Vec<_> = frameworks
            .iter()
            .map(|f| {
                let info = f.framework.clone().unwrap_or_default();
                json!({
                    "id": info.id,
                    "name": info.name,
                    "role": role(&info.role),
                    "principal": info.principal,
                    "hostname": info.hostname,
                    "failover_timeout_seconds": info.failover_timeout_seconds,
                    "connected": f.connected,
                    "suppressed": f.suppressed,
                    "tasks": tasks.get(info.id.as_str()).copied().unwrap_or(0),
                    "used": resources_json(&f.used.clone().unwrap_or_default()),
                    "offered": resources_json(&f.offered.clone().unwrap_or_default()),
                })
            })
            .collect();
        render::outln!("{}", serde_json::to_string_pretty(&list)?)?;
        return Ok(());
    }
    let mut t = Table::new(&["ID", "NAME", "ROLE", "CONNECTED", "TASKS", "CPUS", "MEM"]);
    for f in frameworks {
        let info = f.framework.clone().unwrap_or_default();
        let used = f.used.clone().unwrap_or_default();
        t.row(vec![
            info.id.clone(),
            info.name,
            role(&info.role).to_string(),
            if f.connected { "yes" } else { "no" }.into(),
            tasks
                .get(info.id.as_str())
                .copied()
                .unwrap_or(0)
                .to_string(),
            render::cpus(used.millicpus),
            render::bytes(used.mem_bytes),
        ]);
    }
    render::out!("{}", t.render())?;
    Ok(())
}

/// The role as the master treats it: empty means `*`.
fn role(role: &str) -> &str {
    if role.is_empty() { "*" } else { role }
}

/// Framework id → how many of its tasks are not terminal.
pub fn active_tasks_by_framework(state: &v1::ClusterState) -> BTreeMap<&str, usize> {
    let mut out = BTreeMap::new();
    for t in &state.tasks {
        if !render::is_terminal(task::state_of(t)) {
            *out.entry(t.framework_id.as_str()).or_insert(0) += 1;
        }
    }
    out
}
