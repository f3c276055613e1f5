//! `drover bench deploy`: how long a deploy takes, end to end, on a real local cluster.
//!
//! Starts its own cluster ([`LocalCluster`]: one master, `agents` agents, the services
//! framework, on a free port range), stores the caller's service spec of `instances` instances
//! in coord the way `drover service deploy` does, and measures from the moment the spec is
//! written: until the leading master reports every instance's task RUNNING
//! (`Operator.GetState`), and until the framework's published status (`/services/status/NAME`)
//! is at its spec — every instance running and healthy, which is what `deploy --wait` waits for.
//! Then it removes the service and measures until no instance runs any more. The cluster is
//! stopped at the end, also on error, Ctrl-C and SIGTERM.
//!
//! The spec and the status are the services framework's formats: the caller builds the spec and
//! reads the status ([`DeployConfig::read_status`]), so this crate needs no services code.

use crate::local::{AGENTS_MAX, LocalCluster, LocalConfig, Signals, get_state};
use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use services::paths;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The service the bench deploys.
pub const SERVICE_NAME: &str = "bench";
/// Where `drover service deploy` stores specs (the shared coord layout).
/// Attempts at finding a free base port range.
const BASE_PORT_ATTEMPTS: u32 = 50;
/// Lowest base port picked at random.
const BASE_PORT_LOW: u16 = 10_000;
/// Ports a picked range must have free above the base (the cluster uses base..base+40+agents).
const BASE_PORT_SPAN: u16 = 40 + AGENTS_MAX as u16;

/// What the services framework's published status says, as far as the bench looks.
#[derive(Clone, Debug, Default)]
pub struct ServiceProgress {
    pub staged: u32,
    pub running: u32,
    pub healthy: u32,
    pub at_spec: bool,
    /// Why the service is not at its spec; empty when it is.
    pub message: String,
}

/// What to deploy on what (`drover bench deploy`'s flags).
pub struct DeployConfig {
    /// The service spec of [`SERVICE_NAME`] as `drover service deploy` stores it.
    pub spec_json: String,
    /// Instances in the spec: the deploy is done once this many run.
    pub instances: u32,
    /// Agents of the bench's cluster.
    pub agents: u32,
    /// CPUs and memory each agent offers (None: the machine's).
    pub agent_cpus: Option<String>,
    pub agent_mem: Option<String>,
    /// The cluster's base port; None: a free range picked at random below the ephemeral ports.
    pub base_port: Option<u16>,
    /// How often the master's state and the service status are read while measuring.
    pub poll_interval: Duration,
    /// Longest the deploy (and then the removal) may take.
    pub timeout: Duration,
    pub master_args: Vec<String>,
    pub agent_args: Vec<String>,
    pub services_args: Vec<String>,
    /// Reads the services framework's status node (its JSON).
    pub read_status: fn(&str) -> anyhow::Result<ServiceProgress>,
    /// Run the bench's cluster with TLS (as `drover local` does) instead of plaintext.
    pub tls: bool,
}

/// What one deploy took, in ms from the spec write.
#[derive(Debug, Default)]
pub struct Timeline {
    /// The framework's status first lists every instance (staged or later).
    pub status_all_staged_ms: Option<f64>,
    /// The leading master reports every instance's task RUNNING.
    pub master_all_running_ms: Option<f64>,
    /// The status says every instance runs.
    pub status_all_running_ms: Option<f64>,
    /// The status says every instance runs healthy and the service is at its spec.
    pub status_at_spec_ms: Option<f64>,
    /// After `rm`: the master reports no RUNNING task of the service.
    pub removed_ms: Option<f64>,
}

/// The run's figures.
#[derive(Debug)]
pub struct DeployReport {
    pub timeline: Timeline,
    /// Cluster start → every process up.
    pub cluster_ready_ms: u128,
}

/// Starts the cluster, deploys and removes the service, stops the cluster (also on Ctrl-C and
/// SIGTERM) and returns the timeline. `notify` gets whole lines for the person watching.
pub async fn run(
    config: &DeployConfig,
    notify: Arc<dyn Fn(&str) + Send + Sync>,
) -> anyhow::Result<DeployReport> {
    let mut local = LocalConfig::new();
    local.masters = 1;
    local.agents = config.agents;
    local.agent_cpus = config.agent_cpus.clone();
    local.agent_mem = config.agent_mem.clone();
    local.master_args = config.master_args.clone();
    local.agent_args = config.agent_args.clone();
    local.services_args = config.services_args.clone();
    local.tls = config.tls;
    // A child that dies spoils the figures: the bench stops instead of restarting it.
    local.restart.deaths_max = 0;
    local.base_port = match config.base_port {
        Some(p) => p,
        None => free_base_port(BASE_PORT_SPAN)?,
    };
    // Task ports are not used by the bench's command but every agent offers some: a slice above
    // the cluster's own ports.
    let first = local.base_port + BASE_PORT_SPAN;
    local.task_ports = (first, first.saturating_add(config.agents as u16 * 10));
    let mut signals = Signals::new()?;
    let to_cluster = Arc::clone(&notify);
    let mut cluster = LocalCluster::start(
        local,
        Box::new(move |line| to_cluster(&format!("drover bench: {line}"))),
    )?;
    let measured = tokio::select! {
        m = measure(&mut cluster, config, &*notify) => m,
        _ = signals.recv() => Err(anyhow::anyhow!("interrupted")),
    };
    let mut hurry = Box::pin(signals.recv());
    let stopped = cluster.stop(&mut hurry).await;
    let (timeline, cluster_ready_ms) = measured?;
    stopped?;
    Ok(DeployReport {
        timeline,
        cluster_ready_ms,
    })
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
    config: &DeployConfig,
    notify: &dyn Fn(&str),
) -> anyhow::Result<(Timeline, u128)> {
    let ready = cluster.wait_ready().await?;
    notify(&format!(
        "drover bench: 1 master, {} agents and the services framework up in {} ms (data and logs \
         in {})",
        config.agents,
        ready.elapsed.as_millis(),
        cluster.dir().display()
    ));
    let addrs = cluster.master_addrs();
    let options = ClientOptions {
        tls: cluster.client_tls().cloned(),
        token: cluster.token().cloned(),
        ..ClientOptions::default()
    };
    let client = Client::connect(addrs.clone(), options)
        .await
        .context("cannot open a coord session")?;
    let result = deploy_and_remove(cluster, &client, &addrs, config).await;
    let _ = client.close().await;
    result.map(|t| (t, ready.elapsed.as_millis()))
}

async fn deploy_and_remove(
    cluster: &mut LocalCluster,
    client: &Client,
    addrs: &[String],
    config: &DeployConfig,
) -> anyhow::Result<Timeline> {
    for dir in [paths::ROOT, paths::SPECS] {
        client
            .ensure_node(dir)
            .await
            .with_context(|| format!("cannot create {dir}"))?;
    }
    let spec_path = paths::spec(SERVICE_NAME);
    let status_path = paths::status(SERVICE_NAME);
    let n = config.instances;
    let rpc_timeout = cluster.config().rpc_timeout;
    let tls = cluster.client_tls().cloned();
    let token = cluster.token().cloned();
    let mut t = Timeline::default();
    let t0 = Instant::now();
    let ms = |at: Instant| at.duration_since(t0).as_secs_f64() * 1000.0;
    client
        .create(
            &spec_path,
            config.spec_json.as_bytes().to_vec(),
            CreateMode::Persistent,
        )
        .await
        .with_context(|| format!("cannot store the spec at {spec_path}"))?;
    let deadline = t0 + config.timeout;
    let mut last = String::from("nothing yet");
    while t.status_at_spec_ms.is_none() || t.master_all_running_ms.is_none() {
        if let Some(running) =
            master_running(addrs, rpc_timeout, tls.as_ref(), token.as_ref()).await
            && running >= n
        {
            t.master_all_running_ms.get_or_insert(ms(Instant::now()));
        }
        if let Some(status) = read_status(client, &status_path, config.read_status).await? {
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
                config.timeout
            );
        }
        tokio::select! {
            e = cluster.supervise() => return Err(e),
            _ = tokio::time::sleep(config.poll_interval) => {}
        }
    }
    let r0 = Instant::now();
    client
        .delete(&spec_path, None)
        .await
        .with_context(|| format!("cannot remove {spec_path}"))?;
    let deadline = r0 + config.timeout;
    loop {
        if master_running(addrs, rpc_timeout, tls.as_ref(), token.as_ref()).await == Some(0) {
            t.removed_ms = Some(r0.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the service's tasks still run {:?} after rm",
                config.timeout
            );
        }
        tokio::select! {
            e = cluster.supervise() => return Err(e),
            _ = tokio::time::sleep(config.poll_interval) => {}
        }
    }
    Ok(t)
}

/// The service's tasks the leading master reports RUNNING; None if it cannot be asked now.
async fn master_running(
    addrs: &[String],
    timeout: Duration,
    tls: Option<&drover_security::TlsConfig>,
    token: Option<&drover_security::Secret>,
) -> Option<u32> {
    let state = get_state(addrs, timeout, tls, token).await.ok()?;
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
    parse: fn(&str) -> anyhow::Result<ServiceProgress>,
) -> anyhow::Result<Option<ServiceProgress>> {
    match client.get(path).await {
        Ok((data, _)) => {
            let text = String::from_utf8_lossy(&data);
            let status = parse(&text).with_context(|| format!("{path} is not a service status"))?;
            Ok(Some(status))
        }
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {path}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_base_port_lies_below_the_ephemeral_range() {
        // The picked range must not collide with ports the kernel hands to outgoing connections.
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let base = free_base_port(BASE_PORT_SPAN).expect("a free range on loopback");
        assert!(base >= BASE_PORT_LOW);
        assert!(u32::from(base) + 2 * u32::from(BASE_PORT_SPAN) <= u32::from(ephemeral_low));
    }
}
