//! `drover task ls [--service NAME]`: the tasks the leading master knows (running ones, and
//! terminal ones up to the master's bound), from `Operator.GetState`.

use std::collections::BTreeMap;

use drover_proto::v1;
use serde_json::json;

use super::operator::{ConnectArgs, Operator};
use super::render::{self, Table};
use super::{Context, Output};

/// The task label that names a task's service (set by the services framework).
pub const SERVICE_LABEL: &str = "service";

#[derive(clap::Subcommand, Debug)]
pub enum TaskCmd {
    /// List tasks: id, framework, agent, state, ports, last update, exit.
    Ls {
        /// Only the tasks of this service (tasks labelled `service=NAME`).
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub async fn run(ctx: &Context, cmd: TaskCmd) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Ls { service, connect } => {
            let state = Operator::new(ctx, &connect)?.state().await?;
            let tasks = select(&state, service.as_deref());
            let now = render::now_unix_ms();
            if ctx.output == Output::Json {
                let list: Vec<_> = tasks.iter().map(|t| task_json(&state, t)).collect();
                render::outln!("{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                render::out!("{}", table(&state, &tasks, now).render())?;
            }
            Ok(())
        }
    }
}

/// The tasks of `service` (all with `None`), by framework then task id.
pub fn select<'a>(state: &'a v1::ClusterState, service: Option<&str>) -> Vec<&'a v1::TaskSummary> {
    let mut tasks: Vec<&v1::TaskSummary> = state
        .tasks
        .iter()
        .filter(|t| service.is_none_or(|s| service_of(t) == Some(s)))
        .collect();
    tasks.sort_by(|a, b| {
        (a.framework_id.as_str(), task_id(a)).cmp(&(b.framework_id.as_str(), task_id(b)))
    });
    tasks
}

/// The service a task belongs to, by its label.
pub fn service_of(t: &v1::TaskSummary) -> Option<&str> {
    t.task
        .as_ref()
        .and_then(|i| i.labels.get(SERVICE_LABEL))
        .map(String::as_str)
}

fn task_id(t: &v1::TaskSummary) -> &str {
    t.task.as_ref().map_or("", |i| i.task_id.as_str())
}

/// The task's agent: the one its latest status names, else the one it was launched on.
pub fn agent_id(t: &v1::TaskSummary) -> &str {
    match t.status.as_ref().map(|s| s.agent_id.as_str()) {
        Some(a) if !a.is_empty() => a,
        _ => t.task.as_ref().map_or("", |i| i.agent_id.as_str()),
    }
}

/// The latest state, `TASK_STATE_UNSPECIFIED` when the master has none.
pub fn state_of(t: &v1::TaskSummary) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

/// Agent id → host name, from the cluster state.
pub fn hostnames(state: &v1::ClusterState) -> BTreeMap<&str, &str> {
    state
        .agents
        .iter()
        .filter_map(|a| a.agent.as_ref())
        .map(|a| (a.id.as_str(), a.hostname.as_str()))
        .collect()
}

/// Framework id → name, from the cluster state.
pub fn framework_names(state: &v1::ClusterState) -> BTreeMap<&str, &str> {
    state
        .frameworks
        .iter()
        .filter_map(|f| f.framework.as_ref())
        .map(|f| (f.id.as_str(), f.name.as_str()))
        .collect()
}

fn table(state: &v1::ClusterState, tasks: &[&v1::TaskSummary], now_ms: u64) -> Table {
    let hosts = hostnames(state);
    let frameworks = framework_names(state);
    let mut t = Table::new(&[
        "TASK",
        "FRAMEWORK",
        "AGENT",
        "HOST",
        "STATE",
        "PORTS",
        "UPDATED",
        "EXIT",
    ]);
    for task in tasks {
        let info = task.task.as_ref();
        let agent = agent_id(task);
        let framework = frameworks
            .get(task.framework_id.as_str())
            .filter(|n| !n.is_empty())
            .map_or(task.framework_id.as_str(), |n| n);
        let status = task.status.clone().unwrap_or_default();
        t.row(vec![
            task_id(task).to_string(),
            framework.to_string(),
            agent.to_string(),
            hosts.get(agent).copied().unwrap_or_default().to_string(),
            render::state_short(state_of(task)).to_string(),
            render::ports(
                info.and_then(|i| i.resources.as_ref())
                    .map_or(&[][..], |r| &r.ports),
            ),
            render::age(status.timestamp_ms, now_ms),
            if render::is_terminal(status.state) {
                render::exit_info(&status)
            } else {
                render::one_line(&status.message)
            },
        ]);
    }
    t
}

/// One task for `--output json`.
pub fn task_json(state: &v1::ClusterState, t: &v1::TaskSummary) -> serde_json::Value {
    let hosts = hostnames(state);
    let frameworks = framework_names(state);
    let info = t.task.clone().unwrap_or_default();
    let status = t.status.clone().unwrap_or_default();
    let resources = info.resources.clone().unwrap_or_default();
    let agent = agent_id(t);
    json!({
        "task_id": info.task_id,
        "name": info.name,
        "framework_id": t.framework_id,
        "framework": frameworks.get(t.framework_id.as_str()),
        "agent_id": agent,
        "hostname": hosts.get(agent),
        "state": render::state_name(status.state),
        "ports": render::port_numbers(&resources.ports),
        "millicpus": resources.millicpus,
        "mem_bytes": resources.mem_bytes,
        "labels": info.labels.iter().collect::<BTreeMap<_, _>>(),
        "updated_at_ms": status.timestamp_ms,
        "exit_code": status.exit_code,
        "signal": status.signal,
        "reason": status.reason,
        "message": status.message,
    })
}
