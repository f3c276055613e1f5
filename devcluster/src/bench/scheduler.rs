//! `drover bench scheduler`: placement throughput of a real master.
//!
//! Starts a real `drover master` (unless the caller names one), a second process of simulated
//! agents (`drover bench sim-agents`, which runs [`sim_agents`]: many agent links over a few
//! HTTP/2 connections; each agent reports TASK_RUNNING the moment it is asked to run a task), and
//! SDK frameworks in this process that launch `tasks` tasks between them from offers. Measures
//! placements per second (task RUNNING updates received by frameworks), offer-to-launch latency
//! (an offer's arrival at a framework to its Accept being answered), the master's
//! allocation-cycle figures and its RSS.

use crate::process::{self, Guard, Spawn};
use anyhow::{Context as _, bail};
use drover_proto::v1;
use drover_proto::v1::agent_api_client::AgentApiClient;
use drover_proto::v1::operator_client::OperatorClient;
use drover_sdk::{Event, Filters, Framework, OfferId, Resources, TaskInfo, TaskSpec};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Messages queued towards the master per simulated agent.
const SIM_AGENT_QUEUE: usize = 256;
/// A simulated agent resends a status update not acknowledged this long after it was sent.
const SIM_UPDATE_RESEND_AFTER: Duration = Duration::from_secs(2);
/// Deadline of one connection attempt to the master.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for every simulated agent to register.
const AGENTS_REGISTERED_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the registered agents are counted meanwhile.
const AGENTS_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for the master to lead (answer `GetMetrics`).
const MASTER_LEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the master is asked meanwhile.
const MASTER_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often a progress line goes to `notify` while the frameworks work.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Accept calls one framework has in flight at once.
const ACCEPTS_IN_FLIGHT_MAX: usize = 64;
/// Highest latency tracked, in microseconds.
const LATENCY_US_MAX: u64 = 600_000_000;

/// The simulated agents' process (`drover bench sim-agents`).
#[derive(Clone, Debug)]
pub struct SimAgentsConfig {
    /// The master they register with.
    pub master: String,
    pub count: u64,
    /// What each agent offers.
    pub millicpus: u64,
    pub mem_bytes: u64,
    /// HTTP/2 connections the agent links share (at least 1).
    pub connections: u64,
    /// An agent certificate, when the master serves TLS.
    pub tls: Option<drover_security::TlsConfig>,
}

/// What to measure (`drover bench scheduler`'s flags).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// The caller's master; None: the bench starts its own.
    pub master: Option<String>,
    /// Simulated agents (in one separate process).
    pub agents: u64,
    /// SDK frameworks sharing the work.
    pub frameworks: u64,
    /// Tasks to place in all.
    pub tasks: u64,
    /// What each simulated agent offers.
    pub agent: Resources,
    /// What each task takes.
    pub task: Resources,
    /// Longest the run may take before it gives up.
    pub timeout: Duration,
    /// Flags appended to the own master's command line.
    pub master_args: Vec<String>,
    /// The own master serves TLS; the simulated agents, the frameworks and the bench's operator
    /// calls each use their role's certificate.
    pub tls: bool,
}

/// The run's figures.
pub struct SchedulerReport {
    /// First offer → the last task RUNNING.
    pub seconds: f64,
    pub placements_per_s: f64,
    /// Offer arrival → its Accept answered, µs; one sample per accepted offer.
    pub offer_to_launch_us: Histogram<u64>,
    pub allocation_cycles: u64,
    pub allocation_cycle_p50_us: u64,
    pub allocation_cycle_p99_us: u64,
    pub allocation_cycle_max_us: u64,
    /// The own master's (RSS, peak RSS) in KiB at the end; None for a given master.
    pub master_rss_kib: Option<(u64, u64)>,
}

/// How many tasks of `task` the `agents` agents of `agent` hold between them.
pub fn capacity(agent: &Resources, task: &Resources, agents: u64) -> u64 {
    fits(agent, task).saturating_mul(agents)
}

fn channel(
    addr: &str,
    tls: Option<&drover_security::TlsConfig>,
    token: Option<&drover_security::Secret>,
) -> anyhow::Result<drover_client::MasterChannel> {
    let transport = drover_client::Transport {
        tls: tls.cloned(),
        token: token.cloned(),
        ..drover_client::Transport::plaintext(CONNECT_TIMEOUT, CONNECT_TIMEOUT)
    };
    Ok(transport.connect_lazy(addr)?)
}

/// `--count` agents over `--connections` HTTP/2 connections, until they fail or the caller
/// drops this. `notify` gets a line for each agent that fails and one once all registered.
pub async fn sim_agents(
    config: &SimAgentsConfig,
    notify: Arc<dyn Fn(&str) + Send + Sync>,
) -> anyhow::Result<()> {
    if config.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let channels: Vec<drover_client::MasterChannel> = (0..config.connections)
        .map(|_| channel(&config.master, config.tls.as_ref(), None))
        .collect::<anyhow::Result<_>>()?;
    let registered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ch) in (0..config.count).zip(channels.iter().cycle()) {
        let ch = ch.clone();
        let registered = registered.clone();
        let notify = Arc::clone(&notify);
        let info = v1::AgentInfo {
            id: String::new(),
            hostname: format!("sim-{i}"),
            address: format!("127.0.0.1:{}", 20_000 + i % 40_000),
            resources: Some(v1::Resources {
                millicpus: config.millicpus,
                mem_bytes: config.mem_bytes,
                ports: vec![],
            }),
            attributes: Default::default(),
        };
        tasks.spawn(async move {
            if let Err(e) = sim_agent(ch, info, registered).await {
                notify(&format!("sim agent {i}: {e:#}"));
            }
        });
    }
    let started = Instant::now();
    while registered.load(Ordering::Relaxed) < config.count {
        tokio::time::sleep(AGENTS_POLL_INTERVAL).await;
        if started.elapsed() > AGENTS_REGISTERED_TIMEOUT {
            bail!(
                "only {} of {} simulated agents registered",
                registered.load(Ordering::Relaxed),
                config.count
            );
        }
    }
    notify(&format!(
        "sim-agents: {} agents registered in {} ms",
        config.count,
        started.elapsed().as_millis()
    ));
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn sim_agent(
    channel: drover_client::MasterChannel,
    info: v1::AgentInfo,
    registered: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    use v1::agent_message::Message as A;
    use v1::master_message::Message as M;
    let mut client = AgentApiClient::new(channel)
        .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX);
    let (tx, rx) = mpsc::channel(SIM_AGENT_QUEUE);
    tx.send(v1::AgentMessage {
        message: Some(A::Register(v1::Register { agent: Some(info) })),
    })
    .await?;
    let mut inbound = client
        .attach(ReceiverStream::new(rx))
        .await
        .context("attach")?
        .into_inner();
    let mut agent_id = String::new();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
    // Updates not yet acknowledged, by task, and when each was last sent: resent like a real
    // agent's, so a framework that lost its stream gets them after it re-subscribes.
    let mut unacknowledged: HashMap<String, (Instant, v1::AgentMessage)> = HashMap::new();
    let mut resend = tokio::time::interval(SIM_UPDATE_RESEND_AFTER);
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(msg) = msg? else { bail!("the master ended the link") };
                match msg.message {
                    Some(M::Registered(r)) => {
                        agent_id = r.agent_id;
                        heartbeat = tokio::time::interval(Duration::from_millis(r.heartbeat_interval_ms.max(1)));
                        registered.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(M::RunTask(run)) => {
                        let (Some(fw), Some(task)) = (run.framework, run.task) else { continue };
                        let status = v1::TaskStatus {
                            task_id: task.task_id,
                            agent_id: agent_id.clone(),
                            state: v1::TaskState::TaskRunning.into(),
                            uuid: uuid::Uuid::new_v4().as_bytes().to_vec(),
                            source: v1::StatusSource::SourceAgent.into(),
                            ..Default::default()
                        };
                        let task_id = status.task_id.clone();
                        let update = v1::AgentMessage {
                            message: Some(A::StatusUpdate(v1::StatusUpdate {
                                agent_id: agent_id.clone(),
                                framework_id: fw.id,
                                status: Some(status),
                            })),
                        };
                        tx.send(update.clone()).await?;
                        unacknowledged.insert(task_id, (Instant::now(), update));
                    }
                    Some(M::Acknowledgement(ack)) => {
                        let acked = unacknowledged.get(&ack.task_id).is_some_and(|(_, m)| {
                            matches!(&m.message, Some(A::StatusUpdate(u))
                                if u.status.as_ref().is_some_and(|s| s.uuid == ack.uuid))
                        });
                        if acked {
                            unacknowledged.remove(&ack.task_id);
                        }
                    }
                    Some(M::Refused(r)) => bail!("refused: {}", r.message),
                    _ => {}
                }
            }
            _ = resend.tick() => {
                let now = Instant::now();
                for (sent, update) in unacknowledged.values_mut() {
                    if now.duration_since(*sent) >= SIM_UPDATE_RESEND_AFTER {
                        *sent = now;
                        tx.send(update.clone()).await?;
                    }
                }
            }
            _ = heartbeat.tick(), if !agent_id.is_empty() => {
                tx.send(v1::AgentMessage {
                    message: Some(A::Heartbeat(v1::AgentHeartbeat { agent_id: agent_id.clone() })),
                })
                .await?;
            }
        }
    }
}

/// Starts `drover ARGS` with its output in `log`; killed with its process group when dropped.
fn spawn(args: Vec<std::ffi::OsString>, log: &std::path::Path) -> anyhow::Result<Guard> {
    let exe = std::env::current_exe().context("cannot find the drover executable")?;
    let child = process::spawn(Spawn {
        exe: &exe,
        args,
        log,
        log_filter: "info",
        die_with_parent: true,
        env: Vec::new(),
    })?;
    Ok(Guard(child))
}

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

struct Shared {
    offer_to_launch_us: std::sync::Mutex<Histogram<u64>>,
    running: AtomicU64,
    launched: AtomicU64,
    first_offer: std::sync::Mutex<Option<Instant>>,
}

/// One SDK framework launching `quota` tasks from its offers.
async fn bench_framework(
    (addr, tls, token): (
        String,
        Option<drover_security::TlsConfig>,
        Option<drover_security::Secret>,
    ),
    index: u64,
    quota: u64,
    task: Resources,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let (fw, mut events) = Framework::builder()
        .name(format!("bench-{index}"))
        .masters([addr])
        .tls(tls)
        .token(token)
        .failover_timeout(Duration::from_secs(600))
        .connect()
        .await
        .context("framework connect")?;
    let mut launched = 0u64;
    let mut running = 0u64;
    let mut next_id = 0u64;
    let mut batches = tokio::task::JoinSet::new();
    let mut seen_running = std::collections::HashSet::new();
    while running < quota {
        let event = tokio::select! {
            event = events.recv() => event,
            Some(batch) = batches.join_next() => {
                batch.context("an accept batch panicked")??;
                continue;
            }
        };
        let Some(event) = event else {
            bail!("framework {index}: event stream ended");
        };
        match event {
            Event::Offers(offers) => {
                let received = Instant::now();
                shared
                    .first_offer
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert(received);
                let mut unused = Vec::new();
                let mut accepts = Vec::new();
                for offer in offers {
                    let n = fits(&offer.resources, &task).min(quota - launched);
                    if n == 0 {
                        unused.push(offer.id.clone());
                        continue;
                    }
                    let mut tasks = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let spec = TaskSpec::new(
                            format!("b{index}-{next_id}"),
                            drover_sdk::Command::argv(["true"]),
                        );
                        next_id += 1;
                        tasks.push(spec.build(offer.agent_id.clone(), task.clone())?);
                    }
                    launched += n;
                    accepts.push((offer.id.clone(), tasks));
                }
                // The batch's calls go out on their own task: the event loop keeps reading
                // updates meanwhile, as a framework must (the master cuts a stream that falls
                // thousands of events behind).
                let suppress = launched >= quota;
                batches.spawn(accept_batch(
                    fw.clone(),
                    accepts,
                    unused,
                    suppress,
                    received,
                    shared.clone(),
                ));
            }
            // A resent update (its acknowledgement was lost) counts once.
            Event::Update(status)
                if status.state == drover_sdk::TaskState::Running
                    && seen_running.insert(status.task_id.clone()) =>
            {
                running += 1;
                shared.running.fetch_add(1, Ordering::Relaxed);
            }
            Event::Error(e) => bail!("framework {index}: {e}"),
            _ => {}
        }
    }
    Ok(())
}

/// Accepts one offer batch: the accepts go out together, as a framework with many offers would
/// send them, each one's latency counted from the batch's arrival; then declines what was not
/// used and suppresses once the framework has launched its quota.
async fn accept_batch(
    fw: Framework,
    accepts: Vec<(OfferId, Vec<TaskInfo>)>,
    unused: Vec<OfferId>,
    suppress: bool,
    received: Instant,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<u64>> = futures::stream::iter(accepts)
        .map(|(offer, tasks)| {
            let fw = fw.clone();
            let shared = shared.clone();
            async move {
                let n = tasks.len() as u64;
                fw.launch(&[offer], tasks, Filters::refuse(Duration::from_secs(5)))
                    .await?;
                shared.launched.fetch_add(n, Ordering::Relaxed);
                let us = received.elapsed().as_micros() as u64;
                let _ = shared
                    .offer_to_launch_us
                    .lock()
                    .expect("not poisoned")
                    .record(us.clamp(1, LATENCY_US_MAX));
                Ok(n)
            }
        })
        .buffer_unordered(ACCEPTS_IN_FLIGHT_MAX)
        .collect()
        .await;
    for r in results {
        r?;
    }
    if !unused.is_empty() {
        fw.decline(&unused, Duration::from_secs(600)).await?;
    }
    if suppress {
        fw.suppress().await?;
    }
    Ok(())
}

/// How many `task`s fit in `offer` (cpus and memory).
fn fits(offer: &Resources, task: &Resources) -> u64 {
    let by_cpu = if task.millicpus() == 0 {
        u64::MAX
    } else {
        offer.millicpus() / task.millicpus()
    };
    let by_mem = if task.mem_bytes() == 0 {
        u64::MAX
    } else {
        offer.mem_bytes() / task.mem_bytes()
    };
    by_cpu.min(by_mem)
}

/// Starts the master (unless given) and the simulated agents, runs the frameworks until every
/// task runs or `timeout` passes, and returns the figures. `notify` gets whole lines for the
/// person watching: what was started where, and the progress once a second.
pub async fn run(
    config: &SchedulerConfig,
    notify: &dyn Fn(&str),
) -> anyhow::Result<SchedulerReport> {
    if config.agents == 0 || config.frameworks == 0 || config.tasks == 0 {
        bail!("agents, frameworks and tasks must each be at least 1");
    }
    let capacity = capacity(&config.agent, &config.task, config.agents);
    if capacity < config.tasks {
        bail!(
            "{} tasks do not fit: {} agents hold {capacity}",
            config.tasks,
            config.agents
        );
    }
    let task = config.task.clone();
    let dir = tempfile::Builder::new()
        .prefix("drover-bench-scheduler")
        .tempdir()
        .context("cannot make a temp dir")?;
    let given = config.master.is_some();
    if given && config.tls {
        bail!("--tls sets up the bench's own master; with --masters there is none");
    }
    let certs = if config.tls {
        Some(crate::tls::throwaway(&dir.path().join("tls"), 1, 1)?)
    } else {
        None
    };
    let role_tls = |name: &str| {
        certs.as_ref().map(|c| {
            drover_security::TlsConfig::load(
                &c.dir.join("ca.pem"),
                Some(&c.dir.join(format!("{name}.pem"))),
                Some(&c.dir.join(format!("{name}-key.pem"))),
            )
        })
    };
    let framework_tls = role_tls("framework").transpose()?;
    let (addr, master) = if let Some(addr) = &config.master {
        (addr.clone(), None)
    } else {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut margs = process::master_args(1, &addr, &dir.path().join("master"));
        if let Some(certs) = &certs {
            margs.extend(certs.args("master-1").into_iter().map(Into::into));
            // TLS and tokens both on: what a secure cluster pays.
            margs.push("--acl".into());
        }
        margs.extend(config.master_args.iter().map(Into::into));
        let child = spawn(margs, &dir.path().join("master.log"))?;
        (addr, Some(child))
    };
    notify(&format!(
        "drover bench scheduler: master {addr}{}; logs in {}",
        if given { " (given)" } else { " (own)" },
        dir.path().display()
    ));
    let token = match &certs {
        Some(c) => Some(
            crate::local::bootstrap_token(
                std::slice::from_ref(&addr),
                Some(c.operator.clone()),
                MASTER_LEAD_TIMEOUT,
            )
            .await?,
        ),
        None => None,
    };
    let operator = OperatorClient::new(channel(
        &addr,
        certs.as_ref().map(|c| &c.operator),
        token.as_ref(),
    )?);
    // Wait for the master to lead.
    let deadline = Instant::now() + MASTER_LEAD_TIMEOUT;
    loop {
        if operator
            .clone()
            .get_metrics(v1::GetMetricsRequest {})
            .await
            .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the master at {addr} does not lead after {} s",
                MASTER_LEAD_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(MASTER_POLL_INTERVAL).await;
    }
    let sim_args: Vec<String> = vec![
        "--masters".into(),
        addr.clone(),
        "bench".into(),
        "sim-agents".into(),
        "--count".into(),
        config.agents.to_string(),
        // The agent's own figures, in units the flags take (cpus, bytes): what the sim agents
        // offer is exactly `config.agent`.
        "--cpus".into(),
        (config.agent.millicpus() as f64 / 1000.0).to_string(),
        "--mem".into(),
        config.agent.mem_bytes().to_string(),
    ];
    let sim_args: Vec<String> = match &certs {
        Some(c) => sim_args.into_iter().chain(c.args("agent-1")).collect(),
        None => sim_args,
    };
    let _agents = spawn(
        sim_args.iter().map(Into::into).collect(),
        &dir.path().join("sim-agents.log"),
    )?;
    let registered_at = Instant::now();
    loop {
        let m = operator
            .clone()
            .get_metrics(v1::GetMetricsRequest {})
            .await?
            .into_inner();
        if m.agents >= config.agents {
            break;
        }
        if registered_at.elapsed() > AGENTS_REGISTERED_TIMEOUT {
            bail!(
                "only {} of {} agents registered after {} s",
                m.agents,
                config.agents,
                AGENTS_REGISTERED_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(AGENTS_POLL_INTERVAL).await;
    }
    notify(&format!(
        "drover bench scheduler: {} agents registered in {} ms",
        config.agents,
        registered_at.elapsed().as_millis()
    ));
    let shared = Arc::new(Shared {
        offer_to_launch_us: std::sync::Mutex::new(Histogram::new_with_max(LATENCY_US_MAX, 3)?),
        running: AtomicU64::new(0),
        launched: AtomicU64::new(0),
        first_offer: std::sync::Mutex::new(None),
    });
    let mut frameworks = tokio::task::JoinSet::new();
    for i in 0..config.frameworks {
        let quota =
            config.tasks / config.frameworks + u64::from(i < config.tasks % config.frameworks);
        frameworks.spawn(bench_framework(
            (addr.clone(), framework_tls.clone(), token.clone()),
            i,
            quota,
            task.clone(),
            shared.clone(),
        ));
    }
    let started = Instant::now();
    let run = async {
        while let Some(done) = frameworks.join_next().await {
            done.context("framework task")??;
        }
        anyhow::Ok(())
    };
    let progress = async {
        loop {
            tokio::time::sleep(PROGRESS_INTERVAL).await;
            notify(&format!(
                "  {:>6.1} s: {} launched, {} running",
                started.elapsed().as_secs_f64(),
                shared.launched.load(Ordering::Relaxed),
                shared.running.load(Ordering::Relaxed)
            ));
        }
    };
    tokio::select! {
        r = run => r?,
        _ = progress => unreachable!("the progress loop never ends"),
        _ = tokio::time::sleep(config.timeout) => bail!(
            "timed out after {:?}: {} of {} tasks running",
            config.timeout,
            shared.running.load(Ordering::Relaxed),
            config.tasks
        ),
    }
    let finished = Instant::now();
    let first = shared
        .first_offer
        .lock()
        .expect("not poisoned")
        .unwrap_or(started);
    let elapsed = finished.duration_since(first).as_secs_f64();
    let metrics = operator
        .clone()
        .get_metrics(v1::GetMetricsRequest {})
        .await?
        .into_inner();
    let rss = master.as_ref().map(|m| m.0.id()).and_then(rss_kib);
    let h = shared
        .offer_to_launch_us
        .lock()
        .expect("not poisoned")
        .clone();
    Ok(SchedulerReport {
        seconds: elapsed,
        placements_per_s: config.tasks as f64 / elapsed,
        offer_to_launch_us: h,
        allocation_cycles: metrics.allocation_cycles,
        allocation_cycle_p50_us: metrics.allocation_cycle_p50_us,
        allocation_cycle_p99_us: metrics.allocation_cycle_p99_us,
        allocation_cycle_max_us: metrics.allocation_cycle_max_us,
        master_rss_kib: rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpus: f64, mem_mib: u64) -> Resources {
        Resources::new(cpus, mem_mib << 20, Default::default()).expect("valid resources")
    }

    #[test]
    fn tasks_fit_by_the_scarcer_resource() {
        // 4 cpus / 16 GiB hold 40 tasks of 0.1 cpus / 32 MiB (cpus run out first) and 2 tasks
        // of 0.1 cpus / 8 GiB (memory runs out first).
        let agent = res(4.0, 16 << 10);
        assert_eq!(fits(&agent, &res(0.1, 32)), 40);
        assert_eq!(fits(&agent, &res(0.1, 8 << 10)), 2);
        assert_eq!(capacity(&agent, &res(0.1, 32), 50), 2000);
        assert_eq!(fits(&res(0.05, 1), &res(0.1, 1)), 0);
    }

    #[test]
    fn rss_is_read_for_this_process() {
        // /proc/self has both fields, and the peak is never below the current figure.
        let (now, peak) = rss_kib(std::process::id()).expect("VmRSS and VmHWM");
        assert!(now > 0 && peak >= now);
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
