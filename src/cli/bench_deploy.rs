//! `drover bench deploy`: how long a deploy takes, end to end, on a real local cluster.
//!
//! Starts its own cluster (`local::LocalCluster`: one master, `--agents` agents, the services
//! framework, on a free port range), stores a service spec of `--instances` instances of a small
//! command in coord the way `drover service deploy` does, and measures from the moment the spec
//! is written: until the leading master reports every instance's task RUNNING
//! (`Operator.GetState`), and until the framework's published status (`/services/status/NAME`)
//! is at its spec — every instance running and healthy, which is what `deploy --wait` waits for.
//! Then it removes the service and measures until no instance runs any more. The cluster is
//! stopped at the end, also on error, Ctrl-C and SIGTERM.

use super::{Context, Output};
use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use drover_devcluster::local::{AGENTS_MAX, LocalCluster, LocalConfig, Signals, get_state};
use serde_json::json;
use std::time::{Duration, Instant};

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
    /// CPUs each agent offers (default: the machine's).
    #[arg(long)]
    pub agent_cpus: Option<String>,
    /// Memory each agent offers (default: the machine's).
    #[arg(long)]
    pub agent_mem: Option<String>,
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
    /// A flag for the master, e.g. `--master-arg=--allocation-interval-ms=20`; repeat for more.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
    /// A flag for every agent; repeat for more.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
    /// A flag for the services framework; repeat for more.
    #[arg(long = "services-arg", allow_hyphen_values = true)]
    pub services_args: Vec<String>,
}

/// The service the bench deploys.
const SERVICE_NAME: &str = "bench";
/// Where `drover service deploy` stores specs (the shared coord layout).
const SPECS_DIR: &str = "/services/specs";
const STATUS_DIR: &str = "/services/status";
/// Attempts at finding a free base port range.
const BASE_PORT_ATTEMPTS: u32 = 50;
/// Lowest base port picked at random.
const BASE_PORT_LOW: u16 = 10_000;
/// Ports a picked range must have free above the base (the cluster uses base..base+40+agents).
const BASE_PORT_SPAN: u16 = 40 + AGENTS_MAX as u16;

/// What one deploy took, in ms from the spec write.
#[derive(Default)]
struct Timeline {
    /// The framework's status first lists every instance (staged or later).
    status_all_staged_ms: Option<f64>,
    /// The leading master reports every instance's task RUNNING.
    master_all_running_ms: Option<f64>,
    /// The status says every instance runs.
    status_all_running_ms: Option<f64>,
    /// The status says every instance runs healthy and the service is at its spec.
    status_at_spec_ms: Option<f64>,
    /// After `rm`: the master reports no RUNNING task of the service.
    removed_ms: Option<f64>,
}

pub async fn bench_deploy(ctx: &Context, args: DeployBenchArgs) -> anyhow::Result<()> {
    let spec = spec_json(&args)?;
    let mut config = LocalConfig::new();
    config.masters = 1;
    config.agents = args.agents;
    config.agent_cpus = args.agent_cpus.clone();
    config.agent_mem = args.agent_mem.clone();
    config.master_args = args.master_args.clone();
    config.agent_args = args.agent_args.clone();
    config.services_args = args.services_args.clone();
    // A child that dies spoils the figures: the bench stops instead of restarting it.
    config.restart.deaths_max = 0;
    config.base_port = match args.base_port {
        Some(p) => p,
        None => free_base_port(BASE_PORT_SPAN)?,
    };
    // Task ports are not used by the bench's command but every agent offers some: a slice above
    // the cluster's own ports.
    let first = config.base_port + BASE_PORT_SPAN;
    config.task_ports = (first, first.saturating_add(args.agents as u16 * 10));
    let mut signals = Signals::new()?;
    let mut cluster =
        LocalCluster::start(config, Box::new(|line| eprintln!("drover bench: {line}")))?;
    let measured = tokio::select! {
        m = measure(&mut cluster, &args, &spec) => m,
        _ = signals.recv() => Err(anyhow::anyhow!("interrupted")),
    };
    let mut hurry = Box::pin(signals.recv());
    let stopped = cluster.stop(&mut hurry).await;
    let (timeline, started_ms) = measured?;
    stopped?;
    report(ctx, &args, &timeline, started_ms)
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

/// A base port with `span` free ports above it, below the kernel's ephemeral range (so no
/// outgoing connection takes one of them meanwhile).
fn free_base_port(span: u16) -> anyhow::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.saturating_sub(span * 2);
    if high <= BASE_PORT_LOW {
        bail!("no room for the bench's ports below the ephemeral range; pass --base-port");
    }
    for attempt in 0..BASE_PORT_ATTEMPTS {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(attempt);
        let base = BASE_PORT_LOW + (h.finish() % u64::from(high - BASE_PORT_LOW)) as u16;
        let free =
            (base..base + span * 2).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("found no {span} free ports in {BASE_PORT_ATTEMPTS} attempts; pass --base-port")
}

async fn measure(
    cluster: &mut LocalCluster,
    args: &DeployBenchArgs,
    spec: &str,
) -> anyhow::Result<(Timeline, u128)> {
    let ready = cluster.wait_ready().await?;
    eprintln!(
        "drover bench: 1 master, {} agents and the services framework up in {} ms (data and logs \
         in {})",
        args.agents,
        ready.elapsed.as_millis(),
        cluster.dir().display()
    );
    let addrs = cluster.master_addrs();
    let options = ClientOptions::default();
    let client = Client::connect(addrs.clone(), options)
        .await
        .context("cannot open a coord session")?;
    let result = deploy_and_remove(cluster, &client, &addrs, args, spec).await;
    let _ = client.close().await;
    result.map(|t| (t, ready.elapsed.as_millis()))
}

async fn deploy_and_remove(
    cluster: &mut LocalCluster,
    client: &Client,
    addrs: &[String],
    args: &DeployBenchArgs,
    spec: &str,
) -> anyhow::Result<Timeline> {
    for dir in ["/services", SPECS_DIR] {
        match client.create(dir, Vec::new(), CreateMode::Persistent).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::NodeExists) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {dir}")),
        }
    }
    let spec_path = format!("{SPECS_DIR}/{SERVICE_NAME}");
    let status_path = format!("{STATUS_DIR}/{SERVICE_NAME}");
    let n = args.instances;
    let rpc_timeout = cluster.config().rpc_timeout;
    let mut t = Timeline::default();
    let t0 = Instant::now();
    let ms = |at: Instant| at.duration_since(t0).as_secs_f64() * 1000.0;
    client
        .create(&spec_path, spec.as_bytes().to_vec(), CreateMode::Persistent)
        .await
        .with_context(|| format!("cannot store the spec at {spec_path}"))?;
    let deadline = t0 + args.timeout;
    let mut last = String::from("nothing yet");
    while t.status_at_spec_ms.is_none() || t.master_all_running_ms.is_none() {
        if let Some(running) = master_running(addrs, rpc_timeout).await
            && running >= n
        {
            t.master_all_running_ms.get_or_insert(ms(Instant::now()));
        }
        if let Some(status) = read_status(client, &status_path).await? {
            let now = ms(Instant::now());
            if status.staged + status.running >= n {
                t.status_all_staged_ms.get_or_insert(now);
            }
            if status.running >= n {
                t.status_all_running_ms.get_or_insert(now);
            }
            if status.at_spec && status.healthy >= n {
                t.status_at_spec_ms.get_or_insert(now);
            }
            last = format!(
                "{} staged, {} running, {} healthy of {n}: {}",
                status.staged, status.running, status.healthy, status.message
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the deploy did not finish within {:?} ({last})",
                args.timeout
            );
        }
        tokio::select! {
            e = cluster.supervise() => return Err(e),
            _ = tokio::time::sleep(args.poll_interval) => {}
        }
    }
    let r0 = Instant::now();
    client
        .delete(&spec_path, None)
        .await
        .with_context(|| format!("cannot remove {spec_path}"))?;
    let deadline = r0 + args.timeout;
    loop {
        if master_running(addrs, rpc_timeout).await == Some(0) {
            t.removed_ms = Some(r0.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        if Instant::now() >= deadline {
            bail!("the service's tasks still run {:?} after rm", args.timeout);
        }
        tokio::select! {
            e = cluster.supervise() => return Err(e),
            _ = tokio::time::sleep(args.poll_interval) => {}
        }
    }
    Ok(t)
}

/// The service's tasks the leading master reports RUNNING; None if it cannot be asked now.
async fn master_running(addrs: &[String], timeout: Duration) -> Option<u32> {
    let state = get_state(addrs, timeout).await.ok()?;
    let running = state
        .tasks
        .iter()
        .filter(|t| {
            t.task
                .as_ref()
                .and_then(|task| task.labels.get("service"))
                .is_some_and(|s| s == SERVICE_NAME)
                && t.status
                    .as_ref()
                    .is_some_and(|s| s.state == drover_proto::v1::TaskState::TaskRunning as i32)
        })
        .count();
    Some(u32::try_from(running).unwrap_or(u32::MAX))
}

async fn read_status(
    client: &Client,
    path: &str,
) -> anyhow::Result<Option<services::status::ServiceStatus>> {
    match client.get(path).await {
        Ok((data, _)) => {
            let text = String::from_utf8_lossy(&data);
            let status = services::status::ServiceStatus::from_json(&text)
                .with_context(|| format!("{path} is not a service status"))?;
            Ok(Some(status))
        }
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {path}")),
    }
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
