//! `drover bench deploy`: the flags, the service spec and the table of
//! `drover_devcluster::bench::deploy`, which measures how long a deploy takes, end to end, on
//! its own local cluster (one master, `--agents` agents, the services framework): from the spec
//! stored in coord to every instance RUNNING (master) and at its spec, healthy (the framework's
//! status), then from `rm` to no instance running.

use super::local::ProcessArgs;
use super::{Context, Output};
use drover_devcluster::bench::deploy::{
    self, DeployConfig, SERVICE_NAME, ServiceProgress, Timeline,
};
use drover_devcluster::local::AGENTS_MAX;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct DeployBenchArgs {
    /// Instances of the service.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub instances: u32,
    /// Agents of the bench's cluster.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=i64::from(AGENTS_MAX)))]
    pub agents: u32,
    /// What each instance runs (under `sh -c`).
    #[arg(long, default_value = "sleep 600")]
    pub cmd: String,
    /// Cpus per instance.
    #[arg(long, default_value_t = 0.01)]
    pub cpus: f64,
    /// Memory per instance.
    #[arg(long, default_value = "8MiB")]
    pub mem: String,
    /// The cluster's base port (see `drover local --help`); default: a free range picked at
    /// random below the kernel's ephemeral ports.
    #[arg(long)]
    pub base_port: Option<u16>,
    /// How often the master's state and the service status are read while measuring.
    #[arg(long, default_value = "5ms", value_parser = drover_types::units::parse_duration)]
    pub poll_interval: Duration,
    /// Longest the deploy (and then the removal) may take before the bench gives up.
    #[arg(long, default_value = "2m", value_parser = drover_types::units::parse_duration)]
    pub timeout: Duration,
    /// Run the bench's cluster with TLS, as `drover local` does (default: plaintext).
    #[arg(long)]
    pub tls: bool,
    #[command(flatten)]
    pub processes: ProcessArgs,
}

pub async fn bench_deploy(ctx: &Context, args: DeployBenchArgs) -> anyhow::Result<()> {
    args.processes.validate()?;
    let p = &args.processes;
    let config = DeployConfig {
        spec_json: spec_json(&args)?,
        instances: args.instances,
        agents: args.agents,
        agent_cpus: p.agent_cpus.clone(),
        agent_mem: p.agent_mem.clone(),
        base_port: args.base_port,
        poll_interval: args.poll_interval,
        timeout: args.timeout,
        master_args: p.master_args.clone(),
        agent_args: p.agent_args.clone(),
        services_args: p.services_args.clone(),
        read_status,
        tls: args.tls,
    };
    let report = deploy::run(&config, Arc::new(|line| eprintln!("{line}"))).await?;
    self::report(ctx, &args, &report.timeline, report.cluster_ready_ms)
}

/// The spec, validated by the services library, as it is stored.
fn spec_json(args: &DeployBenchArgs) -> anyhow::Result<String> {
    let toml = format!(
        "name = {name:?}\ncmd = {cmd:?}\ninstances = {n}\ncpus = {cpus}\nmem = {mem:?}\n",
        name = SERVICE_NAME,
        cmd = args.cmd,
        n = args.instances,
        cpus = args.cpus,
        mem = args.mem,
    );
    let spec = services::spec::parse(&toml, services::spec::Format::Toml)
        .map_err(|e| anyhow::anyhow!("the bench's service spec: {e}"))?;
    Ok(spec.to_json())
}

/// The services framework's status node, as far as the bench looks at it.
fn read_status(json: &str) -> anyhow::Result<ServiceProgress> {
    let status = services::status::ServiceStatus::from_json(json)?;
    Ok(ServiceProgress {
        staged: status.staged,
        running: status.running,
        healthy: status.healthy,
        at_spec: status.at_spec,
        message: status.message,
    })
}

fn report(
    ctx: &Context,
    args: &DeployBenchArgs,
    t: &Timeline,
    ready_ms: u128,
) -> anyhow::Result<()> {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
    match ctx.output {
        Output::Human => {
            println!(
                "deploy of {} instances of {:?} ({} cpus, {} each) on {} agents (cluster up in \
                 {ready_ms} ms):",
                args.instances, args.cmd, args.cpus, args.mem, args.agents
            );
            println!(
                "  spec stored → all staged (status)       {}",
                fmt(t.status_all_staged_ms)
            );
            println!(
                "  spec stored → all RUNNING (master)      {}",
                fmt(t.master_all_running_ms)
            );
            println!(
                "  spec stored → all running (status)      {}",
                fmt(t.status_all_running_ms)
            );
            println!(
                "  spec stored → at spec, healthy (status) {}   (what deploy --wait waits for)",
                fmt(t.status_at_spec_ms)
            );
            println!(
                "  rm → no task RUNNING (master)           {}",
                fmt(t.removed_ms)
            );
        }
        Output::Json => {
            let doc = json!({
                "benchmark": "deploy",
                "instances": args.instances,
                "agents": args.agents,
                "cmd": args.cmd,
                "cpus": args.cpus,
                "mem": args.mem,
                "cluster_ready_ms": ready_ms as u64,
                "all_staged_status_ms": t.status_all_staged_ms,
                "all_running_master_ms": t.master_all_running_ms,
                "all_running_status_ms": t.status_all_running_ms,
                "at_spec_status_ms": t.status_at_spec_ms,
                "removed_master_ms": t.removed_ms,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}
