//! `drover local`: the flags, and the lines a person sees. The cluster itself (processes, port
//! scheme, readiness, restarts, the ordered stop) is `drover_devcluster::local`.

use super::{Context, Output, render};
use anyhow::bail;
use drover_devcluster::local::{
    AGENTS_MAX, LocalCluster, LocalConfig, MASTER_COUNTS, PORTS_HELP, Ready, Signals,
    parse_port_range,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[command(after_help = PORTS_HELP)]
pub struct LocalArgs {
    /// Agents to start, each with its own work dir, port and host name.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(AGENTS_MAX)))]
    pub agents: u32,
    /// The first master's gRPC port; every other port follows from it (see below).
    #[arg(long, default_value_t = 5050, value_parser = clap::value_parser!(u16).range(1..))]
    pub base_port: u16,
    /// Directory for the masters' data, the agents' work dirs and every log; kept on exit.
    /// Default: a temp dir, removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port range for tasks, split evenly between the agents.
    #[arg(long, default_value = "31000-32999")]
    pub task_ports: String,
    /// Longest wait for the cluster to come up (masters leading, agents registered, framework
    /// subscribed).
    #[arg(long, default_value = "60s", value_parser = drover_types::units::parse_duration)]
    pub ready_timeout: Duration,
    /// How long each stop phase (framework, agents, tasks, masters) waits after SIGTERM before
    /// SIGKILL. A second Ctrl-C cuts it short.
    #[arg(long, default_value = "10s", value_parser = drover_types::units::parse_duration)]
    pub stop_timeout: Duration,
    /// Plaintext, without certificates (everything still listens on 127.0.0.1 only). By
    /// default the cluster gets a throwaway CA and a certificate per process in its data dir.
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub processes: ProcessArgs,
}

/// What the cluster's processes offer and the flags they are given: shared by `drover local`
/// and `drover bench deploy`, which starts a local cluster of its own.
#[derive(clap::Args, Debug, Clone)]
pub struct ProcessArgs {
    /// CPUs each agent offers (default: all of this machine's).
    #[arg(long)]
    pub agent_cpus: Option<String>,
    /// Memory each agent offers, e.g. `2GiB` (default: this machine's RAM less the agent's
    /// reserve).
    #[arg(long)]
    pub agent_mem: Option<String>,
    /// A flag for every master, e.g. `--master-arg=--allocation-interval-ms=20`; repeat for more.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
    /// A flag for every agent, e.g. `--agent-arg=--isolation=rlimits`; repeat for more.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// A flag for the services framework; repeat for more.
    #[arg(long = "services-arg", allow_hyphen_values = true)]
    pub services_args: Vec<String>,
}

impl ProcessArgs {
    /// Refuses `--agent-cpus` and `--agent-mem` an agent would refuse, before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(cpus) = &self.agent_cpus {
            drover_agent::resources::parse_cpus(cpus)
                .map_err(|e| anyhow::anyhow!("--agent-cpus: {e}"))?;
        }
        if let Some(mem) = &self.agent_mem {
            drover_agent::resources::parse_mem(mem)
                .map_err(|e| anyhow::anyhow!("--agent-mem: {e}"))?;
        }
        Ok(())
    }
}

fn config_from_args(ctx: &Context, args: LocalArgs) -> anyhow::Result<LocalConfig> {
    let mut config = LocalConfig::new();
    config.masters = master_count(&ctx.masters)?;
    config.agents = args.agents;
    config.base_port = args.base_port;
    config.data_dir = args.data_dir;
    config.task_ports = parse_port_range(&args.task_ports)
        .map_err(|e| anyhow::anyhow!("--task-ports {:?}: {e}", args.task_ports))?;
    args.processes.validate()?;
    let p = args.processes;
    config.agent_cpus = p.agent_cpus;
    config.agent_mem = p.agent_mem;
    config.ready_timeout = args.ready_timeout;
    config.stop_timeout = args.stop_timeout;
    config.tls = !args.insecure;
    config.master_args = p.master_args;
    config.agent_args = p.agent_args;
    config.services_args = p.services_args;
    Ok(config)
}

/// `drover local --masters N`: the global `--masters` flag carries the count here. Addresses
/// (from `$DROVER_MASTERS` or the default) mean it was not given: one master.
fn master_count(masters: &str) -> anyhow::Result<u32> {
    let masters = masters.trim();
    if let Ok(n) = masters.parse::<u32>() {
        if !MASTER_COUNTS.contains(&n) {
            bail!("--masters {n}: drover local starts 1 or 3 masters");
        }
        return Ok(n);
    }
    let from_env = std::env::var("DROVER_MASTERS").ok();
    if masters == "127.0.0.1:5050" || from_env.as_deref().map(str::trim) == Some(masters) {
        return Ok(1);
    }
    bail!(
        "--masters {masters:?}: drover local takes the number of masters to start (1 or 3), not \
         addresses"
    )
}

pub async fn run(ctx: &Context, args: LocalArgs) -> anyhow::Result<()> {
    let config = config_from_args(ctx, args)?;
    let mut signals = Signals::new()?;
    let notify = Box::new(|line: &str| eprintln!("drover local: {line}"));
    let mut cluster = LocalCluster::start(config, notify)?;
    let ready = tokio::select! {
        ready = cluster.wait_ready() => ready,
        _ = signals.recv() => Err(anyhow::anyhow!("interrupted before the cluster was up")),
    };
    let ready = match ready {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("drover local: the cluster did not come up; stopping what was started");
            let hurry = Box::pin(signals.recv());
            let _ = stop_reporting(cluster, hurry).await;
            return Err(e);
        }
    };
    // A closed stdout (`drover local | head -1`) loses the banner, not the cluster.
    if let Err(e) = print_ready(ctx, &cluster, &ready) {
        eprintln!("drover local: cannot print to stdout ({e:#}); the cluster keeps running");
    }
    let died = tokio::select! {
        died = cluster.supervise() => Some(died),
        _ = signals.recv() => None,
    };
    if let Some(e) = &died {
        // The whole story (with the end of its log) comes last, once the rest is stopped.
        let first_line = e.to_string();
        let first_line = first_line.lines().next().unwrap_or_default();
        eprintln!("drover local: {first_line}");
    }
    let hurry = Box::pin(signals.recv());
    let stopped = stop_reporting(cluster, hurry).await;
    match died {
        Some(e) => Err(e),
        None => stopped,
    }
}

async fn stop_reporting(
    cluster: LocalCluster,
    mut hurry: std::pin::Pin<Box<impl Future<Output = ()>>>,
) -> anyhow::Result<()> {
    let dir = cluster.dir().to_path_buf();
    let temp = cluster.is_temp();
    eprintln!(
        "drover local: stopping the framework, the agents, their tasks and the masters (Ctrl-C \
         again to kill at once)"
    );
    let result = cluster.stop(&mut hurry).await;
    match &result {
        Ok(()) if temp => eprintln!("drover local: stopped; removed {}", dir.display()),
        Ok(()) => eprintln!("drover local: stopped; data kept in {}", dir.display()),
        Err(e) => eprintln!("drover local: {e:#}"),
    }
    result
}

fn print_ready(ctx: &Context, cluster: &LocalCluster, ready: &Ready) -> anyhow::Result<()> {
    let config = cluster.config();
    let masters = cluster.master_addrs().join(",");
    let scheme = if cluster.tls().is_some() {
        "https"
    } else {
        "http"
    };
    let dashboard = format!("{scheme}://127.0.0.1:{}/", config.master_http_port(1));
    let tls_exports: Vec<(&str, String)> = cluster
        .tls()
        .map(|t| {
            vec![
                ("DROVER_TLS_CA", t.dir.join("ca.pem").display().to_string()),
                (
                    "DROVER_TLS_CERT",
                    t.dir.join("operator.pem").display().to_string(),
                ),
                (
                    "DROVER_TLS_KEY",
                    t.dir.join("operator-key.pem").display().to_string(),
                ),
            ]
        })
        .unwrap_or_default();
    match ctx.output {
        Output::Human => {
            let plural = |n: u32, one: &str| {
                if n == 1 {
                    format!("1 {one}")
                } else {
                    format!("{n} {one}s")
                }
            };
            render::outln!(
                "drover local: {}, {} and the services framework are up ({} ms); data and logs \
                 in {}{}",
                plural(config.masters, "master"),
                plural(config.agents, "agent"),
                ready.elapsed.as_millis(),
                cluster.dir().display(),
                if cluster.is_temp() {
                    " (removed on exit)"
                } else {
                    ""
                }
            )?;
            render::outln!("dashboard: {dashboard}")?;
            render::outln!("export DROVER_MASTERS={masters}")?;
            for (name, value) in &tls_exports {
                render::outln!("export {name}={value}")?;
            }
            if let Some(token) = cluster.token() {
                render::outln!("export DROVER_TOKEN={}", token.expose())?;
            }
            if !tls_exports.is_empty() {
                let bearer = if cluster.token().is_some() {
                    " -H \"Authorization: Bearer $DROVER_TOKEN\""
                } else {
                    ""
                };
                render::outln!(
                    "HTTP API: curl --cacert $DROVER_TLS_CA --cert $DROVER_TLS_CERT --key $DROVER_TLS_KEY{bearer} {dashboard}api/v1/state"
                )?;
            }
            render::outln!("Ctrl-C stops everything.")?;
        }
        Output::Json => {
            let doc = serde_json::json!({
                "masters": masters,
                "leader": ready.state.leader,
                "dashboard": dashboard,
                "tls": tls_exports.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "token": cluster.token().map(|t| t.expose().to_string()),
                "data_dir": cluster.dir(),
                "temp": cluster.is_temp(),
                "agents": config.agents,
                "ready_ms": ready.elapsed.as_millis() as u64,
            });
            render::outln!("{doc}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_count_comes_from_the_global_flag() {
        assert_eq!(master_count("3").ok(), Some(3));
        assert_eq!(master_count("1").ok(), Some(1));
        assert_eq!(master_count("127.0.0.1:5050").ok(), Some(1), "the default");
        assert!(master_count("2").is_err());
        assert!(master_count("10.0.0.1:5050").is_err());
    }
}
