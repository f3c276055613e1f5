//! `drover bench coord`: throughput, latency and leader-failover behaviour of coord, measured from
//! real client sessions against real `drover master` processes.
//!
//! Without `--masters` (flag or `DROVER_MASTERS`) the bench starts its own ensemble of three
//! masters (`ensemble`) on loopback, with fsync on as always, and stops it at the end, also on
//! error, Ctrl-C, SIGTERM and panic. With `--masters` it measures the masters named there.
//!
//! Load (the default): for each `--clients` count, that many clients, each with its own session
//! and connection, spread like ZooKeeper clients (client i starts at server i mod S; with the own
//! ensemble the leader is listed last, so one client talks to a follower, as ANCHORS.md measured
//! ZooKeeper and etcd). Each creates its own znode, then `set`s a `--value-size` payload on it
//! back to back (closed loop, one request in flight per client) for `--warmup`, unmeasured, and
//! `--duration`, measured; then the same with `get`. Throughput is measured ops over the time
//! from the end of the warm-up to the last measured completion; latency is per op.
//!
//! Failover (`--kill-leader N`, own ensemble only): `--writers` clients `set` continuously while
//! the bench N times finds the leader (from the masters' logs), lets writes run for `--settle`,
//! kills it with SIGKILL, waits until writes succeed again and a new leader leads, restarts the
//! killed master on its port and data and waits until it has rejoined. For each kill at time K:
//! `gap` = (completion of the first successful write that completes after K) − K, where writes in
//! flight at K count by their completion time; `gap'` = the same over writes issued after K only,
//! which is how ANCHORS.md measured ZooKeeper's and etcd's window.
//!
//! Every phase is bounded in time and in ops per client, and every wait has a deadline.

use super::coord::{cli_error, ensure_node};
use super::{Context, Output};
use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientError, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use drover_devcluster::ensemble::{Ensemble, LOG_TAIL_LINES};
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Throughput and latency of coord writes (set) and reads (get), or with --kill-leader the
    /// write unavailability after a leader is killed. Starts its own 3-master ensemble unless
    /// --masters (or DROVER_MASTERS) names one.
    Coord(CoordBenchArgs),
    /// Placement throughput of a real master: simulated agents in a second process, SDK
    /// frameworks in this one. Starts its own master unless --masters names one.
    Scheduler(super::bench_scheduler::SchedulerBenchArgs),
    /// Time from a deploy to N instances RUNNING (and healthy) on its own local cluster (one
    /// master, --agents agents, the services framework).
    Deploy(super::bench_deploy::DeployBenchArgs),
    /// What one durable coord write costs on a disk: append + fdatasync of coord's own log by 1
    /// and by 3 concurrent writers (3 masters sharing one disk), latency and syncs/s.
    Disk(super::bench_disk::DiskBenchArgs),
    /// (Used by `bench scheduler`.) Many simulated agents in one process, each reporting
    /// TASK_RUNNING at once for every task it is given.
    #[command(hide = true)]
    SimAgents(super::bench_scheduler::SimAgentsArgs),
}

#[derive(clap::Args, Debug)]
pub struct CoordBenchArgs {
    /// Client counts to measure, comma-separated; each client has its own session.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Bytes written by each set.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// How long each measured phase (writes, then reads) runs per client count: 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = drover_types::units::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each measured phase (connections warm, buffers grown); 0 for none.
    #[arg(long, default_value = "1s", value_parser = drover_types::units::parse_duration)]
    pub warmup: Duration,
    /// Most measured ops one client issues in one phase, so a run stays bounded against any
    /// server.
    #[arg(long, default_value_t = 1_000_000)]
    pub ops_per_client_max: u64,
    /// Instead of the load phases: kill the leader with SIGKILL this many times while writers
    /// write, and report each write-unavailability gap. Needs the bench's own ensemble.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub kill_leader: u32,
    /// Writer clients during --kill-leader, each with its own session and znode.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// During --kill-leader: how long writes run on a fully joined ensemble before each kill.
    #[arg(long, default_value = "1s", value_parser = drover_types::units::parse_duration)]
    pub settle: Duration,
    /// Where the bench's own ensemble keeps its data and logs (a new directory inside it, removed
    /// at the end). Default: the system's temporary directory. On tmpfs (`/dev/shm`) fsync costs
    /// nothing, which shows how much of a write's latency is the disk's.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// A flag for each master of the bench's own ensemble, e.g.
    /// `--master-arg=--sync-timeout-ms=500`; repeat for more.
    #[arg(long = "master-arg", allow_hyphen_values = true)]
    pub master_args: Vec<String>,
}

/// Most clients in one round: each is a session (a connection and a task) on the masters.
const BENCH_CLIENTS_MAX: usize = 1024;
/// Masters in the bench's own ensemble.
const ENSEMBLE_SIZE: u32 = 3;
/// Parent of every run's znodes.
const BENCH_ROOT: &str = "/drover-bench";
/// Highest latency the histograms track; slower ops are recorded at this value.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Longest wait for a started (or restarted) ensemble to serve with every master.
const ENSEMBLE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest write unavailability waited out after a kill before the kill counts as unrecovered.
const WRITES_RESUME_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the failover controller looks whether writes succeed again.
const RESUME_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Successful writes one failover writer remembers; beyond it, later kills have no gap figure.
const WRITER_SUCCESSES_MAX: usize = 2_000_000;
/// Distinct error messages one failover writer remembers.
const ERROR_KINDS_MAX: usize = 4;
/// New sessions one failover writer may open after its session expired.
const WRITER_SESSIONS_MAX: u32 = 8;
/// Wait after a write failed at once, so a broken connection cannot turn a writer into a spin.
const FAILED_WRITE_PAUSE: Duration = Duration::from_millis(1);

pub async fn run(ctx: &Context, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Coord(args) => bench_coord(ctx, args).await,
        BenchCmd::Scheduler(args) => {
            until_interrupted(super::bench_scheduler::bench_scheduler(ctx, args)).await
        }
        BenchCmd::Deploy(args) => super::bench_deploy::bench_deploy(ctx, args).await,
        BenchCmd::Disk(args) => super::bench_disk::bench_disk(ctx, args).await,
        BenchCmd::SimAgents(args) => {
            until_interrupted(super::bench_scheduler::sim_agents(ctx, args)).await
        }
    }
}

async fn bench_coord(ctx: &Context, args: CoordBenchArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    if masters_given() {
        if args.kill_leader > 0 {
            bail!(
                "--kill-leader kills and restarts masters, so it needs the bench's own ensemble: \
                 leave out --masters and DROVER_MASTERS"
            );
        }
        if args.dir.is_some() {
            bail!("--dir places the bench's own ensemble; with --masters there is none");
        }
        let addrs = ctx.master_addrs();
        if addrs.is_empty() {
            bail!("--masters is empty; give at least one host:port");
        }
        return until_interrupted(load(ctx, &args, &addrs, "given")).await;
    }
    let started = Instant::now();
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut ensemble = Ensemble::start(ENSEMBLE_SIZE, &args.master_args, &parent)?;
    let result = until_interrupted(async {
        let agreed = ensemble.wait_ready(ENSEMBLE_READY_TIMEOUT).await?;
        let (leader, epoch) = (agreed.leader, agreed.epoch);
        eprintln!(
            "drover bench: {ENSEMBLE_SIZE} masters serving after {} ms (leader {leader}, epoch \
             {epoch}); data and logs in {}",
            started.elapsed().as_millis(),
            ensemble.dir().display()
        );
        if args.kill_leader > 0 {
            failover(ctx, &args, &mut ensemble).await
        } else {
            let addrs = ensemble.addrs_leader_last(leader);
            load(ctx, &args, &addrs, "own, leader last").await
        }
    })
    .await;
    if result.is_err() {
        eprint!("{}", ensemble.log_tails(LOG_TAIL_LINES));
    }
    // Kills the masters and removes their data now, before the error (if any) is printed.
    drop(ensemble);
    result
}

fn check_args(args: &CoordBenchArgs) -> anyhow::Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs counts of at least 1, e.g. 1,16,64");
    }
    if let Some(&n) = args
        .clients
        .iter()
        .chain([&args.writers])
        .find(|&&n| n > BENCH_CLIENTS_MAX)
    {
        bail!("--clients or --writers {n} is over the limit of {BENCH_CLIENTS_MAX}");
    }
    if args.writers == 0 {
        bail!("--writers must be at least 1");
    }
    if args.value_size > drover_coord::op::ZNODE_BYTES_MAX {
        bail!(
            "--value-size {} is over the znode limit of {} bytes",
            args.value_size,
            drover_coord::op::ZNODE_BYTES_MAX
        );
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    Ok(())
}

/// Whether the user named masters: `--masters` on the command line or `DROVER_MASTERS` set.
/// (The global flag has a default, so its value alone cannot tell.)
pub(super) fn masters_given() -> bool {
    std::env::var_os("DROVER_MASTERS").is_some_and(|v| !v.is_empty())
        || std::env::args_os()
            .any(|a| a == "--masters" || a.to_str().is_some_and(|s| s.starts_with("--masters=")))
}

/// Runs `work` until it ends or Ctrl-C / SIGTERM arrives; then `work` is dropped, which drops
/// the clients, and the caller's `Ensemble` guard stops the masters.
async fn until_interrupted<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    tokio::select! {
        result = work => result,
        signalled = tokio::signal::ctrl_c() => match signalled {
            Ok(()) => bail!("interrupted"),
            Err(e) => bail!("cannot watch for Ctrl-C: {e}"),
        },
        _ = term.recv() => bail!("terminated"),
    }
}

fn client_options() -> ClientOptions {
    ClientOptions {
        session_timeout: Duration::from_secs(10),
        establish_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

/// `addrs` rotated so client `i` tries server `i mod S` first (and the others in order after).
fn addrs_for(addrs: &[String], i: usize) -> Vec<String> {
    let mut mine = addrs.to_vec();
    mine.rotate_left(i % addrs.len().max(1));
    mine
}

/// Opens the session that owns a run's parent znode and creates it.
async fn open_run(addrs: &[String]) -> anyhow::Result<(Client, String)> {
    let admin = Client::connect(addrs.to_vec(), client_options())
        .await
        .map_err(cli_error)
        .context("the coord benchmark cannot reach the masters")?;
    let run_dir = format!(
        "{BENCH_ROOT}/run-{}-{}",
        std::process::id(),
        admin.session_id()
    );
    let created = async {
        ensure_node(&admin, BENCH_ROOT).await?;
        ensure_node(&admin, &run_dir).await
    }
    .await;
    if let Err(e) = created {
        let _ = admin.close().await;
        return Err(e);
    }
    Ok((admin, run_dir))
}

/// Deletes a run's parent znode (its children first) and ends the admin session. Failures are
/// only warned about: the figures are what matters.
async fn close_run(admin: Client, run_dir: &str) {
    if let Ok(children) = admin.children(run_dir).await {
        for child in children {
            let _ = admin.delete(&format!("{run_dir}/{child}"), None).await;
        }
    }
    if let Err(e) = admin.delete(run_dir, None).await
        && e.code() != Some(ErrorCode::NoNode)
    {
        tracing::warn!(path = %run_dir, error = %e, "could not delete the benchmark's znode");
    }
    let _ = admin.close().await;
}

/// Closes every client at once (each close waits for its server's acknowledgement).
async fn close_all(clients: impl IntoIterator<Item = Client>) {
    futures::future::join_all(clients.into_iter().map(|c| async move {
        let _ = c.close().await;
    }))
    .await;
}

// ------------------------------------------------------------------------------------------
// Load: throughput and latency.

/// One phase's measurements.
struct Phase {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
    fn to_json(&self) -> serde_json::Value {
        json!({
            "ops": self.ops,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": self.elapsed.as_secs_f64(),
            "per_sec": self.per_sec(),
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
        })
    }
}

/// What one client did in one phase.
struct ClientRun {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
    latency_us: Histogram<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Write,
    Read,
}

async fn load(
    ctx: &Context,
    args: &CoordBenchArgs,
    addrs: &[String],
    ensemble: &str,
) -> anyhow::Result<()> {
    let (admin, run_dir) = open_run(addrs).await?;
    let result = async {
        let mut rows = Vec::new();
        for &n in &args.clients {
            let (writes, reads) = round(addrs, n, args, &run_dir).await?;
            if ctx.output == Output::Human {
                print_load_row(rows.is_empty(), n, &writes, &reads);
            }
            rows.push(
                json!({ "clients": n, "writes": writes.to_json(), "reads": reads.to_json() }),
            );
        }
        anyhow::Ok(rows)
    }
    .await;
    close_run(admin, &run_dir).await;
    let rows = result?;
    if ctx.output == Output::Json {
        let doc = json!({
            "benchmark": "coord",
            "ensemble": ensemble,
            "masters": addrs,
            "value_size": args.value_size,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": args.duration.as_secs_f64(),
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

fn print_load_row(header: bool, n: usize, writes: &Phase, reads: &Phase) {
    if header {
        println!(
            "{:>7} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
            "clients",
            "writes/s",
            "w p50 ms",
            "w p99 ms",
            "w p999 ms",
            "reads/s",
            "r p50 ms",
            "r p99 ms",
            "errors"
        );
    }
    println!(
        "{:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {:>9.3} {:>9.3} {:>7}",
        n,
        writes.per_sec(),
        writes.quantile_ms(0.5),
        writes.quantile_ms(0.99),
        writes.quantile_ms(0.999),
        reads.per_sec(),
        reads.quantile_ms(0.5),
        reads.quantile_ms(0.99),
        writes.errors + reads.errors,
    );
    for (what, phase) in [("write", writes), ("read", reads)] {
        if let Some(e) = &phase.first_error {
            eprintln!(
                "drover bench: {} {what} errors at {n} clients; the first: {e}",
                phase.errors
            );
        }
    }
}

/// One client count: connect `n` sessions, run the write phase, then the read phase.
async fn round(
    addrs: &[String],
    n: usize,
    args: &CoordBenchArgs,
    run_dir: &str,
) -> anyhow::Result<(Phase, Phase)> {
    let mut clients = Vec::with_capacity(n);
    let connected = async {
        for i in 0..n {
            let client = Client::connect(addrs_for(addrs, i), client_options())
                .await
                .map_err(cli_error)?;
            let path = format!("{run_dir}/c{n}-{i}");
            let created = client
                .create(&path, bytes_of(args.value_size), CreateMode::Ephemeral)
                .await;
            clients.push((client, path));
            created.map_err(cli_error)?;
        }
        anyhow::Ok(())
    }
    .await;
    let result = async {
        connected?;
        let writes = phase(&clients, Kind::Write, args).await?;
        let reads = phase(&clients, Kind::Read, args).await?;
        anyhow::Ok((writes, reads))
    }
    .await;
    close_all(clients.into_iter().map(|(c, _)| c)).await;
    result
}

/// Every client runs `kind` back to back: unmeasured until the warm-up ends, then measured until
/// the deadline or its op budget.
async fn phase(
    clients: &[(Client, String)],
    kind: Kind,
    args: &CoordBenchArgs,
) -> anyhow::Result<Phase> {
    let warm_end = Instant::now() + args.warmup;
    let deadline = warm_end + args.duration;
    let ops_max = args.ops_per_client_max;
    let mut tasks = tokio::task::JoinSet::new();
    for (client, path) in clients {
        let (client, path) = (client.clone(), path.clone());
        tasks.spawn(async move {
            // The node holds the payload (written at create): read it back once, because the
            // buffer returned is reference counted, so each set below sends it without a copy.
            let payload = match kind {
                Kind::Write => Some(client.get(&path).await?.0),
                Kind::Read => None,
            };
            let mut run = ClientRun {
                ops: 0,
                errors: 0,
                first_error: None,
                last_done: None,
                latency_us: new_histogram(),
            };
            loop {
                let t0 = Instant::now();
                if t0 >= deadline || run.ops >= ops_max {
                    break;
                }
                let result = match &payload {
                    Some(data) => client.set(&path, data.clone(), None).await.map(drop),
                    None => client.get(&path).await.map(drop),
                };
                let t1 = Instant::now();
                if let Err(e) = result {
                    if matches!(e, ClientError::SessionExpired { .. } | ClientError::Closed) {
                        return Err(e);
                    }
                    if t0 >= warm_end {
                        run.errors += 1;
                        run.first_error.get_or_insert_with(|| e.to_string());
                    }
                    continue;
                }
                if t0 >= warm_end {
                    let us = u64::try_from((t1 - t0).as_micros()).unwrap_or(u64::MAX);
                    run.latency_us
                        .saturating_record(us.clamp(1, LATENCY_US_MAX));
                    run.ops += 1;
                    run.last_done = Some(t1);
                }
            }
            Ok(run)
        });
    }
    let mut total = Phase {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: args.duration,
        latency_us: new_histogram(),
    };
    let mut last_done = None;
    while let Some(joined) = tasks.join_next().await {
        let run = joined
            .context("a benchmark client panicked")?
            .map_err(cli_error)?;
        total.ops += run.ops;
        total.errors += run.errors;
        if total.first_error.is_none() {
            total.first_error = run.first_error;
        }
        total
            .latency_us
            .add(&run.latency_us)
            .context("merging latency histograms")?;
        last_done = last_done.max(run.last_done);
    }
    if let Some(last) = last_done {
        total.elapsed = last.saturating_duration_since(warm_end);
    }
    Ok(total)
}

pub(super) fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants: failure here is a bug.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn bytes_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

// ------------------------------------------------------------------------------------------
// Failover: write unavailability after the leader is killed.

/// What one failover writer saw; times are µs since the run's base instant.
#[derive(Default)]
struct WriterLog {
    /// (issued, completed) of each successful write, in order.
    ok: Vec<(u64, u64)>,
    /// Completion time of each failed write, in order.
    failed: Vec<u64>,
    error_kinds: Vec<String>,
    /// `ok` reached `WRITER_SUCCESSES_MAX` and stopped recording.
    truncated: bool,
}

/// One kill, as the controller saw it.
struct Kill {
    leader: u32,
    epoch: u32,
    at_us: u64,
    /// Whether a write issued after the kill succeeded within `WRITES_RESUME_TIMEOUT`.
    resumed: bool,
    new_leader: u32,
    /// Kill → the new leader established (its synced quorum), by its `Cluster.Status`.
    elected_ms: Option<f64>,
    /// Restart → every master serving again.
    rejoin_ms: f64,
}

/// One kill's figures, from the writers' logs.
struct Gap {
    gap_ms: Option<f64>,
    gap_issued_after_ms: Option<f64>,
    failed_writes: usize,
}

async fn failover(
    ctx: &Context,
    args: &CoordBenchArgs,
    ensemble: &mut Ensemble,
) -> anyhow::Result<()> {
    let addrs = ensemble.addrs();
    let (admin, run_dir) = open_run(&addrs).await?;
    let mut clients = Vec::with_capacity(args.writers);
    let result = async {
        for i in 0..args.writers {
            let mine = addrs_for(&addrs, i);
            let client = Client::connect(mine.clone(), client_options())
                .await
                .map_err(cli_error)?;
            let path = format!("{run_dir}/w{i}");
            let created = client
                .create(&path, bytes_of(args.value_size), CreateMode::Persistent)
                .await;
            clients.push((client, path, mine));
            created.map_err(cli_error)?;
        }
        let base = Instant::now();
        // Writers stop on `stop`, and in any case by this deadline, past the longest run the
        // controller's own deadlines allow.
        let per_kill = args.settle + WRITES_RESUME_TIMEOUT + 2 * ENSEMBLE_READY_TIMEOUT;
        let writers_deadline = base + per_kill * (args.kill_leader + 1);
        let stop = Arc::new(AtomicBool::new(false));
        // 1 + the issue time (µs since `base`) of the latest successful write; 0 for none yet.
        let progress = Arc::new(AtomicU64::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for (client, path, mine) in &clients {
            let writer = Writer {
                client: client.clone(),
                path: path.clone(),
                addrs: mine.clone(),
                base,
                deadline: writers_deadline,
                stop: Arc::clone(&stop),
                progress: Arc::clone(&progress),
            };
            writers.spawn(writer.run());
        }
        let kills = kill_leaders(args, ensemble, base, &progress).await;
        stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::with_capacity(args.writers);
        while let Some(joined) = writers.join_next().await {
            logs.push(joined.context("a failover writer panicked")?);
        }
        let kills = kills?;
        let gaps: Vec<Gap> = (0..kills.len())
            .map(|i| {
                let until = kills.get(i + 1).map_or(u64::MAX, |k| k.at_us);
                gap(kills[i].at_us, until, &logs)
            })
            .collect();
        report_failover(ctx, args, &addrs, &kills, &gaps, &logs)
    }
    .await;
    close_all(clients.into_iter().map(|(c, _, _)| c)).await;
    close_run(admin, &run_dir).await;
    result
}

/// The controller: `args.kill_leader` times, kill the leader, wait for writes and a new
/// leader, restart the killed master and wait until it has rejoined.
async fn kill_leaders(
    args: &CoordBenchArgs,
    ensemble: &mut Ensemble,
    base: Instant,
    progress: &AtomicU64,
) -> anyhow::Result<Vec<Kill>> {
    let mut kills = Vec::new();
    for k in 1..=args.kill_leader {
        let agreed = ensemble.wait_ready(ENSEMBLE_READY_TIMEOUT).await?;
        let (leader, epoch) = (agreed.leader, agreed.epoch);
        let before = progress.load(Ordering::Relaxed);
        tokio::time::sleep(args.settle).await;
        if progress.load(Ordering::Relaxed) == before {
            bail!(
                "no write succeeded in the {:?} before kill {k}, on a fully joined ensemble",
                args.settle
            );
        }
        let killed_wall = SystemTime::now();
        let at_us = micros_since(base);
        ensemble.kill9(leader)?;
        let resume_deadline = Instant::now() + WRITES_RESUME_TIMEOUT;
        let resumed = loop {
            if progress.load(Ordering::Relaxed) > at_us {
                break true;
            }
            if Instant::now() >= resume_deadline {
                break false;
            }
            tokio::time::sleep(RESUME_POLL_INTERVAL).await;
        };
        let elected = ensemble
            .wait_leader_after(epoch, ENSEMBLE_READY_TIMEOUT)
            .await?;
        let new_leader = elected.leader;
        let elected_at = UNIX_EPOCH + Duration::from_millis(elected.since_unix_ms);
        let elected_ms = elected_at
            .duration_since(killed_wall)
            .ok()
            .map(|d| d.as_secs_f64() * 1000.0);
        ensemble.restart(leader)?;
        let restarted = Instant::now();
        ensemble.wait_ready(ENSEMBLE_READY_TIMEOUT).await?;
        let rejoin_ms = restarted.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "drover bench: kill {k}/{}: leader {leader} (epoch {epoch}) killed; writes {}; \
             master {new_leader} leads{}; the killed master rejoined in {rejoin_ms:.0} ms",
            args.kill_leader,
            if resumed {
                "resumed".to_string()
            } else {
                format!("still failing after {WRITES_RESUME_TIMEOUT:?}")
            },
            elected_ms.map_or(String::new(), |ms| format!(" after {ms:.0} ms")),
        );
        kills.push(Kill {
            leader,
            epoch,
            at_us,
            resumed,
            new_leader,
            elected_ms,
            rejoin_ms,
        });
    }
    Ok(kills)
}

fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One writer of the failover run: sets its znode back to back and logs every outcome.
struct Writer {
    client: Client,
    path: String,
    /// Its rotated address list, for a new session should the old one expire.
    addrs: Vec<String>,
    base: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
}

impl Writer {
    async fn run(self) -> WriterLog {
        let mut log = WriterLog::default();
        let mut client = self.client.clone();
        let payload = match client.get(&self.path).await {
            // Reference counted: each set sends it without a copy.
            Ok((data, _)) => data,
            Err(e) => {
                log.error_kinds.push(format!("reading the payload: {e}"));
                return log;
            }
        };
        let mut sessions = 1;
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline {
            let issued = micros_since(self.base);
            let t0 = Instant::now();
            match client.set(&self.path, payload.clone(), None).await {
                Ok(_) => {
                    let done = micros_since(self.base);
                    self.progress.fetch_max(issued + 1, Ordering::Relaxed);
                    if log.ok.len() < WRITER_SUCCESSES_MAX {
                        log.ok.push((issued, done));
                    } else {
                        log.truncated = true;
                    }
                }
                Err(e) => {
                    log.failed.push(micros_since(self.base));
                    let kind = e.to_string();
                    if log.error_kinds.len() < ERROR_KINDS_MAX && !log.error_kinds.contains(&kind) {
                        log.error_kinds.push(kind);
                    }
                    if matches!(e, ClientError::SessionExpired { .. }) {
                        if sessions >= WRITER_SESSIONS_MAX {
                            break;
                        }
                        sessions += 1;
                        match Client::connect(self.addrs.clone(), client_options()).await {
                            Ok(c) => client = c,
                            Err(e) => {
                                log.error_kinds.push(format!("opening a new session: {e}"));
                                break;
                            }
                        }
                    } else if t0.elapsed() < FAILED_WRITE_PAUSE {
                        tokio::time::sleep(FAILED_WRITE_PAUSE).await;
                    }
                }
            }
        }
        if sessions > 1 {
            let _ = client.close().await;
        }
        log
    }
}

/// The figures of the kill at `at_us`, from every writer's log; `until_us` is the next kill.
fn gap(at_us: u64, until_us: u64, logs: &[WriterLog]) -> Gap {
    let mut first_done = None::<u64>;
    let mut first_issued_after = None::<u64>;
    let mut failed_writes = 0;
    for log in logs {
        // Both lists are in time order: a writer has one write in flight at a time.
        let from = log.ok.partition_point(|&(_, done)| done < at_us);
        if let Some(&(_, done)) = log.ok.get(from) {
            first_done = first_done.min(Some(done)).or(Some(done));
        }
        let from = log.ok.partition_point(|&(issued, _)| issued < at_us);
        if let Some(&(_, done)) = log.ok.get(from) {
            first_issued_after = first_issued_after.min(Some(done)).or(Some(done));
        }
        let lo = log.failed.partition_point(|&t| t < at_us);
        let hi = log.failed.partition_point(|&t| t < until_us);
        failed_writes += hi.saturating_sub(lo);
    }
    let ms = |t: u64| (t - at_us) as f64 / 1000.0;
    Gap {
        gap_ms: first_done.map(ms),
        gap_issued_after_ms: first_issued_after.map(ms),
        failed_writes,
    }
}

/// Nearest-rank quantile of a small sample.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn summary(values: impl Iterator<Item = Option<f64>>) -> serde_json::Value {
    let mut v: Vec<f64> = values.flatten().collect();
    v.sort_by(f64::total_cmp);
    json!({
        "n": v.len(),
        "p50_ms": quantile(&v, 0.5),
        "p99_ms": quantile(&v, 0.99),
        "max_ms": v.last(),
    })
}

fn report_failover(
    ctx: &Context,
    args: &CoordBenchArgs,
    addrs: &[String],
    kills: &[Kill],
    gaps: &[Gap],
    logs: &[WriterLog],
) -> anyhow::Result<()> {
    let writes_ok: usize = logs.iter().map(|l| l.ok.len()).sum();
    let writes_failed: usize = logs.iter().map(|l| l.failed.len()).sum();
    let mut error_kinds: Vec<&String> = logs.iter().flat_map(|l| &l.error_kinds).collect();
    error_kinds.sort();
    error_kinds.dedup();
    let truncated = logs.iter().any(|l| l.truncated);
    let gap_summary = summary(gaps.iter().map(|g| g.gap_ms));
    let issued_summary = summary(gaps.iter().map(|g| g.gap_issued_after_ms));
    let elected_summary = summary(kills.iter().map(|k| k.elected_ms));
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.1}"));
    let fmt_json =
        |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |ms| format!("{ms:.1}"));
    match ctx.output {
        Output::Human => {
            println!(
                "{:>4} {:>6} {:>6} {:>9} {:>9} {:>10} {:>7} {:>9}",
                "kill", "leader", "new", "gap ms", "gap' ms", "elected ms", "failed", "rejoin ms"
            );
            for (i, (k, g)) in kills.iter().zip(gaps).enumerate() {
                println!(
                    "{:>4} {:>6} {:>6} {:>9} {:>9} {:>10} {:>7} {:>9.0}{}",
                    i + 1,
                    k.leader,
                    k.new_leader,
                    fmt(g.gap_ms),
                    fmt(g.gap_issued_after_ms),
                    fmt(k.elected_ms),
                    g.failed_writes,
                    k.rejoin_ms,
                    if k.resumed {
                        ""
                    } else {
                        "  (writes did not resume)"
                    },
                );
            }
            for (name, s) in [
                ("gap", &gap_summary),
                ("gap'", &issued_summary),
                ("elected", &elected_summary),
            ] {
                println!(
                    "{name:>8}: p50 {} ms, p99 {} ms, max {} ms (n={})",
                    fmt_json(&s["p50_ms"]),
                    fmt_json(&s["p99_ms"]),
                    fmt_json(&s["max_ms"]),
                    s["n"]
                );
            }
            println!(
                "gap = first write to complete after the kill (in-flight ones count) − kill; \
                 gap' = the same over writes issued after the kill (ANCHORS.md's definition); \
                 elected = kill → new leader's \"leading\" log line."
            );
            println!(
                "{} writers, {writes_ok} writes succeeded, {writes_failed} failed{}",
                args.writers,
                if truncated {
                    "; some writers stopped recording (record limit)"
                } else {
                    ""
                }
            );
            for e in &error_kinds {
                println!("  error seen: {e}");
            }
        }
        Output::Json => {
            let rows: Vec<serde_json::Value> = kills
                .iter()
                .zip(gaps)
                .map(|(k, g)| {
                    json!({
                        "killed_leader": k.leader,
                        "epoch": k.epoch,
                        "new_leader": k.new_leader,
                        "gap_ms": g.gap_ms,
                        "gap_issued_after_ms": g.gap_issued_after_ms,
                        "elected_ms": k.elected_ms,
                        "failed_writes": g.failed_writes,
                        "writes_resumed": k.resumed,
                        "rejoin_ms": k.rejoin_ms,
                    })
                })
                .collect();
            let doc = json!({
                "benchmark": "coord-failover",
                "ensemble": "own",
                "masters": addrs,
                "writers": args.writers,
                "value_size": args.value_size,
                "settle_s": args.settle.as_secs_f64(),
                "kills": rows,
                "gap_ms": gap_summary,
                "gap_issued_after_ms": issued_summary,
                "elected_ms": elected_summary,
                "writes_ok": writes_ok,
                "writes_failed": writes_failed,
                "records_truncated": truncated,
                "errors_seen": error_kinds,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_i_starts_at_server_i_mod_s() {
        let addrs: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(addrs_for(&addrs, 0), ["a", "b", "c"]);
        assert_eq!(addrs_for(&addrs, 1), ["b", "c", "a"]);
        assert_eq!(addrs_for(&addrs, 5), ["c", "a", "b"]);
    }

    #[test]
    fn a_gap_ends_at_the_first_success_after_the_kill() {
        // Writer 0 had a write in flight at the kill (t=100) that succeeded at 150; writer 1's
        // first success issued after the kill completes at 400.
        let logs = vec![
            WriterLog {
                ok: vec![(10, 90), (90, 150), (500, 600)],
                failed: vec![300],
                ..WriterLog::default()
            },
            WriterLog {
                ok: vec![(20, 95), (120, 400)],
                failed: vec![110, 5000],
                ..WriterLog::default()
            },
        ];
        let g = gap(100, 1000, &logs);
        assert_eq!(g.gap_ms, Some(0.05));
        assert_eq!(g.gap_issued_after_ms, Some(0.3));
        assert_eq!(g.failed_writes, 2);
        let none = gap(700, u64::MAX, &logs);
        assert_eq!((none.gap_ms, none.gap_issued_after_ms), (None, None));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(5.0));
        assert_eq!(quantile(&v, 0.99), Some(10.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
