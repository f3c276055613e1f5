//! `drover logs TASK_ID [--stderr] [--follow] [--framework ID]`: what a task wrote to its stdout
//! (or stderr), read from its sandbox on its agent.
//!
//! 1. The leading master's `Operator.GetState` (through [`Operator`]: redirects, bounded waits)
//!    names the task's framework and agent; terminal tasks stay listed there up to the master's
//!    bound, so finished and replaced instances can be read too. A task id used by several
//!    frameworks needs `--framework`.
//! 2. The agent's file API (`AgentFiles.ReadFile` on `AgentInfo.address`) streams the file of the
//!    task's latest run on that agent to stdout; with `--follow` until the task has ended.
//!
//! Every failure is one line: no such task, an agent that cannot be reached, a sandbox the
//! agent's GC removed.

use drover_client::status_text;
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use drover_proto::v1;
use drover_proto::v1::agent_files_client::AgentFilesClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use super::operator::{ConnectArgs, Operator};
use super::render;
use super::{Context, Output};

/// Metadata key (and value) on the agent's NOT_FOUND when its sandbox GC removed the sandboxes
/// (`drover_agent::daemon::files::SANDBOX_METADATA_KEY`).
const SANDBOX_METADATA_KEY: &str = "drover-sandbox";
const SANDBOX_REMOVED: &str = "removed";

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The task's id, as `drover task ls` shows it.
    pub task_id: String,
    /// Print the task's stderr instead of its stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing what the task appends, until it ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The task's framework id, needed when several frameworks use the task id.
    #[arg(long)]
    pub framework: Option<String>,
    /// HTTP/2 keepalive ping interval on the agent connection (a vanished agent ends --follow).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_keepalive_interval_ms: u64,
    /// A keepalive ping unanswered this long ends the stream with an error.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub agent_keepalive_timeout_ms: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The task to read and where it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    framework_id: String,
    agent_id: String,
    address: String,
}

impl Located {
    /// `127.0.0.1:5051 (agent-id)`, as errors name an agent.
    fn agent(&self) -> String {
        format!("{} ({})", self.address, self.agent_id)
    }
}

pub async fn run(ctx: &Context, args: LogsArgs) -> anyhow::Result<()> {
    let state = Operator::new(ctx, &args.connect)?.state().await?;
    let at = locate(&state, &args.task_id, args.framework.as_deref())?;
    let mut client = connect_agent(&at, &args, ctx.tls.as_ref()).await?;
    let file = if args.stderr {
        v1::SandboxFile::Stderr
    } else {
        v1::SandboxFile::Stdout
    };
    let request = v1::ReadFileRequest {
        framework_id: at.framework_id.clone(),
        task_id: args.task_id.clone(),
        run_id: String::new(),
        file: file as i32,
        offset: 0,
        follow: args.follow,
    };
    let timeout = Duration::from_millis(args.connect.request_timeout_ms);
    let mut stream = match tokio::time::timeout(timeout, client.read_file(request)).await {
        Err(_) => bail!("agent {} did not answer within {timeout:?}", at.agent()),
        Ok(Err(status)) => return Err(read_error(&status, &args.task_id, &at)),
        Ok(Ok(response)) => response.into_inner(),
    };
    let file_name = if args.stderr { "stderr" } else { "stdout" };
    loop {
        let chunk = match stream.message().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(status) => bail!(
                "agent {} stopped sending the {file_name} of {}: {}",
                at.agent(),
                args.task_id,
                status_text(&status)
            ),
        };
        // A reader that went away (`drover logs ... | head`) ends the command quietly in `main`.
        match ctx.output {
            Output::Human => render::write_stdout(&chunk.data)?,
            Output::Json => {
                let line = json!({
                    "task_id": args.task_id,
                    "framework_id": at.framework_id,
                    "agent_id": at.agent_id,
                    "run_id": chunk.run_id,
                    "file": file_name,
                    "offset": chunk.offset,
                    "data": String::from_utf8_lossy(&chunk.data),
                });
                render::outln!("{line}")?;
            }
        }
    }
}

/// Finds the task in the master's state: its framework (which `--framework` must pick when the
/// id is not unique) and its agent's address.
fn locate(
    state: &v1::ClusterState,
    task_id: &str,
    framework: Option<&str>,
) -> anyhow::Result<Located> {
    let named: Vec<&v1::TaskSummary> = state
        .tasks
        .iter()
        .filter(|t| t.task.as_ref().is_some_and(|i| i.task_id == task_id))
        .collect();
    let candidates: Vec<&v1::TaskSummary> = named
        .iter()
        .copied()
        .filter(|t| framework.is_none_or(|f| t.framework_id == f))
        .collect();
    if candidates.is_empty() {
        match framework {
            Some(f) if !named.is_empty() => bail!(
                "no task named {task_id} in framework {f} (it is in {})",
                describe_frameworks(state, &named)
            ),
            Some(f) => bail!("no task named {task_id} in framework {f}"),
            None => bail!("no task named {task_id}"),
        }
    }
    let frameworks: BTreeSet<&str> = candidates.iter().map(|t| t.framework_id.as_str()).collect();
    if frameworks.len() > 1 {
        bail!(
            "task id {task_id} is used by {} frameworks: {}; pass --framework",
            frameworks.len(),
            describe_frameworks(state, &candidates)
        );
    }
    // The master lists a task once; should it list a finished and a running task of the same id,
    // the running one is the one to read.
    let task = candidates
        .iter()
        .copied()
        .find(|t| !t.status.as_ref().is_some_and(|s| is_terminal(s.state)))
        .unwrap_or(candidates[candidates.len() - 1]);
    let agent_id = match task.status.as_ref().map(|s| s.agent_id.as_str()) {
        Some(a) if !a.is_empty() => a,
        _ => task.task.as_ref().map_or("", |i| i.agent_id.as_str()),
    };
    if agent_id.is_empty() {
        bail!("task {task_id} has not been placed on an agent");
    }
    let agent = state
        .agents
        .iter()
        .filter_map(|a| a.agent.as_ref())
        .find(|a| a.id == agent_id);
    let Some(agent) = agent else {
        bail!("task {task_id} ran on agent {agent_id}, which the master no longer knows");
    };
    if agent.address.is_empty() {
        bail!("agent {agent_id} of task {task_id} has no address");
    }
    Ok(Located {
        framework_id: task.framework_id.clone(),
        agent_id: agent_id.to_string(),
        address: agent.address.clone(),
    })
}

/// `fw-1 (web), fw-2 (batch)`: the distinct frameworks of `tasks`, with their names.
fn describe_frameworks(state: &v1::ClusterState, tasks: &[&v1::TaskSummary]) -> String {
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.framework_id.as_str()).collect();
    ids.into_iter()
        .map(|id| {
            let name = state
                .frameworks
                .iter()
                .filter_map(|f| f.framework.as_ref())
                .find(|f| f.id == id)
                .map(|f| f.name.as_str())
                .filter(|n| !n.is_empty());
            match name {
                Some(n) => format!("{id} ({n})"),
                None => id.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_terminal(state: i32) -> bool {
    use v1::TaskState::*;
    matches!(
        v1::TaskState::try_from(state),
        Ok(TaskFinished
            | TaskFailed
            | TaskKilled
            | TaskError
            | TaskLost
            | TaskDropped
            | TaskGone
            | TaskGoneByOperator)
    )
}

async fn connect_agent(
    at: &Located,
    args: &LogsArgs,
    tls: Option<&drover_security::TlsConfig>,
) -> anyhow::Result<AgentFilesClient<Channel>> {
    let connect_timeout = Duration::from_millis(args.connect.connect_timeout_ms);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = match Endpoint::from_shared(format!("{scheme}://{}", at.address)) {
        Ok(e) => e,
        Err(e) => bail!(
            "agent {} has an address that is not host:port: {e}",
            at.agent()
        ),
    };
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.tonic_client(drover_security::Role::Agent))
            .map_err(|e| anyhow::anyhow!("agent {}: TLS: {e}", at.agent()))?;
    }
    let endpoint = endpoint
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_millis(args.agent_keepalive_interval_ms))
        .keep_alive_timeout(Duration::from_millis(args.agent_keepalive_timeout_ms))
        .keep_alive_while_idle(true);
    let channel = match tokio::time::timeout(connect_timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => bail!("agent {} is unreachable: {}", at.agent(), error_chain(&e)),
        Err(_) => bail!(
            "agent {} is unreachable: no connection within {connect_timeout:?}",
            at.agent()
        ),
    };
    Ok(AgentFilesClient::new(channel)
        .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX))
}

/// The one-line error for a refused `ReadFile`.
fn read_error(status: &tonic::Status, task_id: &str, at: &Located) -> anyhow::Error {
    let removed = status
        .metadata()
        .get(SANDBOX_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        == Some(SANDBOX_REMOVED);
    match status.code() {
        tonic::Code::NotFound if removed => {
            anyhow::anyhow!("the sandbox of {task_id} was removed by the agent's GC")
        }
        tonic::Code::NotFound => anyhow::anyhow!(
            "agent {} has no sandbox of {task_id} (the task never started there, or the agent's GC removed it)",
            at.agent()
        ),
        tonic::Code::Unavailable if is_transport(status) => {
            anyhow::anyhow!(
                "agent {} is unreachable: {}",
                at.agent(),
                status_text(status)
            )
        }
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "agent {} does not serve the file API (an older agent?): {}",
            at.agent(),
            status_text(status)
        ),
        _ => anyhow::anyhow!("agent {}: {}", at.agent(), status_text(status)),
    }
}

/// True when `status` stands for a transport failure rather than the agent's own answer.
fn is_transport(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
}

/// The deepest cause of an error chain ("Connection refused (os error 111)" says most).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        deepest = c.to_string();
        cause = c.source();
    }
    deepest.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(fw: &str, task: &str, agent: &str, state: v1::TaskState) -> v1::TaskSummary {
        v1::TaskSummary {
            framework_id: fw.into(),
            task: Some(v1::TaskInfo {
                task_id: task.into(),
                agent_id: agent.into(),
                ..Default::default()
            }),
            status: Some(v1::TaskStatus {
                task_id: task.into(),
                agent_id: agent.into(),
                state: state as i32,
                ..Default::default()
            }),
        }
    }

    fn state() -> v1::ClusterState {
        v1::ClusterState {
            agents: vec![v1::AgentState {
                agent: Some(v1::AgentInfo {
                    id: "a1".into(),
                    address: "127.0.0.1:5051".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            frameworks: vec![v1::FrameworkState {
                framework: Some(v1::FrameworkInfo {
                    id: "fw-1".into(),
                    name: "services".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            tasks: vec![
                summary("fw-1", "web.1.abc", "a1", v1::TaskState::TaskRunning),
                summary("fw-1", "dup", "a1", v1::TaskState::TaskRunning),
                summary("fw-2", "dup", "a1", v1::TaskState::TaskFinished),
                summary("fw-1", "lost", "gone-agent", v1::TaskState::TaskLost),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_task_is_found_with_its_agent_and_ambiguous_ids_need_a_framework() {
        // Proves the lookup: a unique id gives its framework and agent address; an id used by
        // two frameworks is refused listing both (with names where known) until --framework
        // picks one; unknown ids and agents are one-line errors naming them.
        let s = state();
        let at = locate(&s, "web.1.abc", None).unwrap();
        assert_eq!(
            at,
            Located {
                framework_id: "fw-1".into(),
                agent_id: "a1".into(),
                address: "127.0.0.1:5051".into(),
            }
        );
        assert_eq!(at.agent(), "127.0.0.1:5051 (a1)");
        let e = locate(&s, "dup", None).unwrap_err().to_string();
        assert_eq!(
            e,
            "task id dup is used by 2 frameworks: fw-1 (services), fw-2; pass --framework"
        );
        assert_eq!(
            locate(&s, "dup", Some("fw-2")).unwrap().framework_id,
            "fw-2"
        );
        assert_eq!(
            locate(&s, "nope", None).unwrap_err().to_string(),
            "no task named nope"
        );
        assert_eq!(
            locate(&s, "web.1.abc", Some("fw-9"))
                .unwrap_err()
                .to_string(),
            "no task named web.1.abc in framework fw-9 (it is in fw-1 (services))"
        );
        assert_eq!(
            locate(&s, "lost", None).unwrap_err().to_string(),
            "task lost ran on agent gone-agent, which the master no longer knows"
        );
    }

    #[test]
    fn the_agents_refusals_become_one_line_errors() {
        // Proves the GC marker turns NOT_FOUND into the GC message, other NOT_FOUNDs name the
        // agent, and nothing spans two lines.
        let at = Located {
            framework_id: "fw".into(),
            agent_id: "a1".into(),
            address: "127.0.0.1:5051".into(),
        };
        let mut removed = tonic::Status::not_found("gone");
        removed
            .metadata_mut()
            .insert(SANDBOX_METADATA_KEY, SANDBOX_REMOVED.parse().unwrap());
        assert_eq!(
            read_error(&removed, "web.1.abc", &at).to_string(),
            "the sandbox of web.1.abc was removed by the agent's GC"
        );
        let e = read_error(&tonic::Status::not_found("x"), "t", &at).to_string();
        assert!(
            e.starts_with("agent 127.0.0.1:5051 (a1) has no sandbox of t"),
            "{e}"
        );
        let e = read_error(&tonic::Status::internal("a\nb"), "t", &at).to_string();
        assert_eq!(e, "agent 127.0.0.1:5051 (a1): a b");
    }
}
