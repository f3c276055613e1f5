//! `drover bench scheduler`: placement throughput of a real master.
//!
//! Starts a real `drover master` (unless `--masters` names one), a second process of simulated
//! agents (`drover bench sim-agents`: many agent links over a few HTTP/2 connections; each
//! agent reports TASK_RUNNING the moment it is asked to run a task), and SDK frameworks in this
//! process that launch `--tasks` tasks between them from offers. Prints placements per second
//! (task RUNNING updates received by frameworks), offer-to-launch latency (an offer's arrival at
//! a framework to its Accept being answered), the master's allocation-cycle p99 and its RSS.

use super::Context;
use anyhow::{Context as _, bail};
use drover_devcluster::process::{self, Guard, Spawn};
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
use tonic::transport::{Channel, Endpoint};

#[derive(clap::Args, Debug)]
pub struct SchedulerBenchArgs {
    /// Simulated agents (in one separate process).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub agents: u64,
    /// SDK frameworks sharing the work.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub frameworks: u64,
    /// Tasks to place in all.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub tasks: u64,
    /// Cpus each simulated agent offers.
    #[arg(long, default_value_t = 4.0)]
    pub agent_cpus: f64,
    /// Memory each simulated agent offers.
    #[arg(long, default_value = "16GiB")]
    pub agent_mem: String,
    /// Cpus per task.
    #[arg(long, default_value_t = 0.1)]
    pub task_cpus: f64,
    /// Memory per task.
    #[arg(long, default_value = "32MiB")]
    pub task_mem: String,
    /// Longest the run may take before it gives up.
    #[arg(long, default_value = "10m", value_parser = drover_types::units::parse_duration)]
    pub timeout: Duration,
    /// A flag for the bench's own master, e.g. `--master-arg=--allocation-interval-ms=20`.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct SimAgentsArgs {
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    #[arg(long, default_value_t = 4.0)]
    pub cpus: f64,
    #[arg(long, default_value = "16GiB")]
    pub mem: String,
    /// HTTP/2 connections the agent links share.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub connections: u64,
}

/// Messages queued towards the master per simulated agent.
const SIM_AGENT_QUEUE: usize = 256;
/// A simulated agent resends a status update not acknowledged this long after it was sent.
const SIM_UPDATE_RESEND_AFTER: Duration = Duration::from_secs(2);
/// Accept calls one framework has in flight at once.
const ACCEPTS_IN_FLIGHT_MAX: usize = 64;
/// Highest latency tracked, in microseconds.
const LATENCY_US_MAX: u64 = 600_000_000;

fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// `drover bench sim-agents`: `--count` agents over `--connections` HTTP/2 connections.
pub async fn sim_agents(ctx: &Context, args: SimAgentsArgs) -> anyhow::Result<()> {
    let addr = ctx
        .master_addrs()
        .into_iter()
        .next()
        .context("--masters is empty")?;
    let mem = Resources::parse_mem(&args.mem).map_err(|e| anyhow::anyhow!("--mem: {e}"))?;
    let millicpus = (args.cpus * 1000.0).round();
    if !(1.0..1e12).contains(&millicpus) {
        bail!("--cpus: {} is not a positive number of cpus", args.cpus);
    }
    let channels: Vec<Channel> = (0..args.connections)
        .map(|_| channel(&addr))
        .collect::<anyhow::Result<_>>()?;
    let registered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let ch = channels[(i % args.connections) as usize].clone();
        let registered = registered.clone();
        let info = v1::AgentInfo {
            id: String::new(),
            hostname: format!("sim-{i}"),
            address: format!("127.0.0.1:{}", 20_000 + i % 40_000),
            resources: Some(v1::Resources {
                millicpus: millicpus as u64,
                mem_bytes: mem,
                ports: vec![],
            }),
            attributes: Default::default(),
        };
        tasks.spawn(async move {
            if let Err(e) = sim_agent(ch, info, registered).await {
                eprintln!("sim agent {i}: {e:#}");
            }
        });
    }
    let started = Instant::now();
    while registered.load(Ordering::Relaxed) < args.count {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {} simulated agents registered",
                registered.load(Ordering::Relaxed),
                args.count
            );
        }
    }
    eprintln!(
        "sim-agents: {} agents registered in {} ms",
        args.count,
        started.elapsed().as_millis()
    );
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn sim_agent(
    channel: Channel,
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

/// A child process killed (with its group) on drop.
/// Starts `drover ARGS` with its output in `log`; killed with its process group when dropped.
fn spawn(args: &[String], log: &std::path::Path) -> anyhow::Result<Guard> {
    let exe = std::env::current_exe().context("cannot find the drover executable")?;
    let child = process::spawn(Spawn {
        exe: &exe,
        args: args.iter().map(Into::into).collect(),
        log,
        log_filter: "info",
        die_with_parent: true,
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
    addr: String,
    index: u64,
    quota: u64,
    task: Resources,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let (fw, mut events) = Framework::builder()
        .name(format!("bench-{index}"))
        .masters([addr])
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

pub async fn bench_scheduler(ctx: &Context, args: SchedulerBenchArgs) -> anyhow::Result<()> {
    let task_mem =
        Resources::parse_mem(&args.task_mem).map_err(|e| anyhow::anyhow!("--task-mem: {e}"))?;
    let task = Resources::new(args.task_cpus, task_mem, Default::default())
        .map_err(|e| anyhow::anyhow!("--task-cpus: {e}"))?;
    let agent_mem =
        Resources::parse_mem(&args.agent_mem).map_err(|e| anyhow::anyhow!("--agent-mem: {e}"))?;
    let agent = Resources::new(args.agent_cpus, agent_mem, Default::default())
        .map_err(|e| anyhow::anyhow!("--agent-cpus: {e}"))?;
    let capacity = fits(&agent, &task).saturating_mul(args.agents);
    if capacity < args.tasks {
        bail!(
            "--tasks {} do not fit: {} agents hold {capacity} tasks of {} cpus / {}",
            args.tasks,
            args.agents,
            args.task_cpus,
            args.task_mem
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("drover-bench-scheduler")
        .tempdir()
        .context("cannot make a temp dir")?;
    let given = super::bench::masters_given();
    let (addr, master) = if given {
        let addr = ctx
            .master_addrs()
            .into_iter()
            .next()
            .context("--masters is empty")?;
        (addr, None)
    } else {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut margs: Vec<String> = [
            "master",
            "--id",
            "1",
            "--listen",
            &addr,
            "--data-dir",
            &dir.path().join("master").to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        margs.extend(args.master_args.iter().cloned());
        let child = spawn(&margs, &dir.path().join("master.log"))?;
        (addr, Some(child))
    };
    eprintln!(
        "drover bench scheduler: master {addr}{}; logs in {}",
        if given { " (given)" } else { " (own)" },
        dir.path().display()
    );
    let operator = OperatorClient::new(channel(&addr)?);
    // Wait for the master to lead.
    let deadline = Instant::now() + Duration::from_secs(60);
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
            bail!("the master at {addr} does not lead after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sim_args: Vec<String> = vec![
        "--masters".into(),
        addr.clone(),
        "bench".into(),
        "sim-agents".into(),
        "--count".into(),
        args.agents.to_string(),
        "--cpus".into(),
        args.agent_cpus.to_string(),
        "--mem".into(),
        args.agent_mem.clone(),
    ];
    let _agents = spawn(&sim_args, &dir.path().join("sim-agents.log"))?;
    let registered_at = Instant::now();
    loop {
        let m = operator
            .clone()
            .get_metrics(v1::GetMetricsRequest {})
            .await?
            .into_inner();
        if m.agents >= args.agents {
            break;
        }
        if registered_at.elapsed() > Duration::from_secs(300) {
            bail!(
                "only {} of {} agents registered after 300 s",
                m.agents,
                args.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "drover bench scheduler: {} agents registered in {} ms",
        args.agents,
        registered_at.elapsed().as_millis()
    );
    let shared = Arc::new(Shared {
        offer_to_launch_us: std::sync::Mutex::new(Histogram::new_with_max(LATENCY_US_MAX, 3)?),
        running: AtomicU64::new(0),
        launched: AtomicU64::new(0),
        first_offer: std::sync::Mutex::new(None),
    });
    let mut frameworks = tokio::task::JoinSet::new();
    for i in 0..args.frameworks {
        let quota = args.tasks / args.frameworks + u64::from(i < args.tasks % args.frameworks);
        frameworks.spawn(bench_framework(
            addr.clone(),
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
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!(
                "  {:>6.1} s: {} launched, {} running",
                started.elapsed().as_secs_f64(),
                shared.launched.load(Ordering::Relaxed),
                shared.running.load(Ordering::Relaxed)
            );
        }
    };
    tokio::select! {
        r = run => r?,
        _ = progress => unreachable!("the progress loop never ends"),
        _ = tokio::time::sleep(args.timeout) => bail!(
            "timed out after {:?}: {} of {} tasks running",
            args.timeout,
            shared.running.load(Ordering::Relaxed),
            args.tasks
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
    let placements = args.tasks as f64 / elapsed;
    let ms = |us: u64| us as f64 / 1000.0;
    if ctx.output == super::Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "agents": args.agents, "frameworks": args.frameworks, "tasks": args.tasks,
                "seconds": elapsed, "placements_per_s": placements,
                "offer_to_launch_ms": {"p50": ms(h.value_at_quantile(0.5)), "p99": ms(h.value_at_quantile(0.99))},
                "allocation_cycle_ms": {"p50": ms(metrics.allocation_cycle_p50_us), "p99": ms(metrics.allocation_cycle_p99_us), "max": ms(metrics.allocation_cycle_max_us), "cycles": metrics.allocation_cycles},
                "master_rss_mib": rss.map(|(r, _)| r as f64 / 1024.0),
                "master_peak_rss_mib": rss.map(|(_, p)| p as f64 / 1024.0),
            })
        );
    } else {
        println!(
            "{} tasks on {} agents by {} frameworks: {:.1} s, {:.0} placements/s (RUNNING)",
            args.tasks, args.agents, args.frameworks, elapsed, placements
        );
        println!(
            "offer-to-launch: p50 {:.2} ms, p99 {:.2} ms ({} accepts)",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            h.len()
        );
        println!(
            "allocation cycle: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} cycles)",
            ms(metrics.allocation_cycle_p50_us),
            ms(metrics.allocation_cycle_p99_us),
            ms(metrics.allocation_cycle_max_us),
            metrics.allocation_cycles
        );
        match rss {
            Some((now, peak)) => println!(
                "master RSS: {:.0} MiB now, {:.0} MiB peak",
                now as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            None => println!("master RSS: not measured (the master is not the bench's own)"),
        }
    }
    Ok(())
}
