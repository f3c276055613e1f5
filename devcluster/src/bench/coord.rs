//! `drover bench coord`: throughput, latency and leader-failover behaviour of coord, measured from
//! real client sessions against real `drover master` processes.
//!
//! Without given masters the bench starts its own ensemble of three masters
//! ([`crate::ensemble`]) on loopback, with fsync on as always, and stops it at the end, also on
//! error and on the caller's interrupt. With given masters it measures those.
//!
//! Load (the default): for each client count, that many clients, each with its own session and
//! connection, spread like ZooKeeper clients (client i starts at server i mod S; with the own
//! ensemble the leader is listed last, so one client talks to a follower, as ANCHORS.md measured
//! ZooKeeper and etcd). Each creates its own znode, then `set`s a `value_size` payload on it back
//! to back (closed loop, one request in flight per client) for `warmup`, unmeasured, and
//! `duration`, measured; then the same with `get`. Throughput is measured ops over the time from
//! the end of the warm-up to the last measured completion; latency is per op.
//!
//! Failover (`kill_leader` > 0, own ensemble only): `writers` clients `set` continuously while
//! the bench `kill_leader` times finds the leader (from the masters' `Cluster.Status`), lets
//! writes run for `settle`, kills it with SIGKILL, waits until writes succeed again and a new
//! leader leads, restarts the killed master on its port and data and waits until it has rejoined.
//! For each kill at time K: `gap` = (completion of the first successful write that completes
//! after K) − K, where writes in flight at K count by their completion time; `gap'` = the same
//! over writes issued after K only, which is how ANCHORS.md measured ZooKeeper's and etcd's
//! window.
//!
//! Every phase is bounded in time and in ops per client, and every wait has a deadline.

use super::{LATENCY_US_MAX, new_histogram};
use crate::ensemble::{Ensemble, LOG_TAIL_LINES};
use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientError, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BENCH_CLIENTS_MAX: usize = 1024;
/// Masters in the bench's own ensemble.
const ENSEMBLE_SIZE: u32 = 3;
/// Parent of every run's znodes.
const BENCH_ROOT: &str = "/drover-bench";
/// Highest latency the histograms track; slower ops are recorded at this value.
/// Session timeout of every bench client: long enough to ride out a leader change.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a bench client waits for its session to be established.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(5);
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

/// What to measure (`drover bench coord`'s flags, checked by [`CoordConfig::check`]).
#[derive(Clone, Debug)]
pub struct CoordConfig {
    /// Client counts measured one after the other; each client has its own session.
    pub clients: Vec<usize>,
    /// Bytes written by each set.
    pub value_size: usize,
    /// How long each measured phase (writes, then reads) runs per client count.
    pub duration: Duration,
    /// Unmeasured load before each measured phase.
    pub warmup: Duration,
    /// Most measured ops one client issues in one phase.
    pub ops_per_client_max: u64,
    /// Instead of the load phases: kill the leader this many times (own ensemble only).
    pub kill_leader: u32,
    /// Writer clients during the failover run.
    pub writers: usize,
    /// During the failover run: how long writes run on a fully joined ensemble before each kill.
    pub settle: Duration,
    /// Where the own ensemble keeps its data and logs; None: the system's temporary directory.
    pub dir: Option<PathBuf>,
    /// Flags appended to each own master's command line.
    pub master_args: Vec<String>,
    /// The own ensemble serves TLS (peer links included) and runs ACLs (`--acl`); the clients
    /// present an operator's certificate and the bootstrap token.
    pub tls: bool,
    /// TLS material of the clients for given masters (the CLI's `--tls-*`); set by `run` for
    /// the own ensemble when `tls`.
    pub client_tls: Option<drover_security::TlsConfig>,
    /// The clients' ACL token (the own ensemble's bootstrap token when `tls`).
    pub client_token: Option<drover_security::Secret>,
}

impl CoordConfig {
    /// Every figure within its limit; the errors name the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.clients.is_empty() || self.clients.contains(&0) {
            bail!("--clients needs counts of at least 1, e.g. 1,16,64");
        }
        if let Some(&n) = self
            .clients
            .iter()
            .chain([&self.writers])
            .find(|&&n| n > BENCH_CLIENTS_MAX)
        {
            bail!("--clients or --writers {n} is over the limit of {BENCH_CLIENTS_MAX}");
        }
        if self.writers == 0 {
            bail!("--writers must be at least 1");
        }
        if self.value_size > drover_coord::op::ZNODE_BYTES_MAX {
            bail!(
                "--value-size {} is over the znode limit of {} bytes",
                self.value_size,
                drover_coord::op::ZNODE_BYTES_MAX
            );
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0");
        }
        Ok(())
    }
}

/// Which masters a run measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masters {
    /// The caller's.
    Given,
    /// The bench's own ensemble, listed leader last.
    Own,
}

/// What a run found: the load table or the failover figures.
pub enum Report {
    Load(LoadReport),
    /// Boxed: its summaries make it several times the size of the load table's header.
    Failover(Box<FailoverReport>),
}

/// The load run's figures.
pub struct LoadReport {
    pub ensemble: Masters,
    /// In the order the clients were spread over them.
    pub masters: Vec<String>,
    pub rounds: Vec<LoadRound>,
}

/// One client count's figures.
pub struct LoadRound {
    pub clients: usize,
    pub writes: Phase,
    pub reads: Phase,
}

/// Starts the own ensemble (or uses `given` masters), runs the load or the failover run of
/// `config` and returns its figures. Each finished load round also goes to `on_round`, so a
/// table can grow while the next round runs. `interrupted` ends the run early with its error
/// (Ctrl-C, SIGTERM); the own ensemble is stopped and its directory removed in every case, and
/// on an error `notify` gets the tail of each master's log first.
pub async fn run(
    config: &CoordConfig,
    given: Option<Vec<String>>,
    interrupted: impl Future<Output = anyhow::Error>,
    notify: &dyn Fn(&str),
    on_round: &dyn Fn(&LoadRound),
) -> anyhow::Result<Report> {
    config.check()?;
    if let Some(addrs) = given {
        if config.kill_leader > 0 {
            bail!(
                "--kill-leader kills and restarts masters, so it needs the bench's own ensemble: \
                 leave out --masters and DROVER_MASTERS"
            );
        }
        if config.dir.is_some() {
            bail!("--dir places the bench's own ensemble; with --masters there is none");
        }
        if addrs.is_empty() {
            bail!("--masters is empty; give at least one host:port");
        }
        return tokio::select! {
            r = load(config, &addrs, Masters::Given, on_round) => r.map(Report::Load),
            e = interrupted => Err(e),
        };
    }
    let started = Instant::now();
    let parent = config.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut master_args = config.master_args.clone();
    if config.tls {
        // TLS and tokens both on: what a secure cluster pays.
        master_args.push("--acl".into());
    }
    let mut ensemble = Ensemble::start_with(ENSEMBLE_SIZE, &master_args, &parent, config.tls)?;
    let mut own = config.clone();
    own.client_tls = ensemble.client_tls().cloned();
    let work = async {
        let agreed = ensemble.wait_ready(ENSEMBLE_READY_TIMEOUT).await?;
        if config.tls {
            own.client_token = Some(
                crate::local::bootstrap_token(
                    &ensemble.addrs(),
                    own.client_tls.clone(),
                    ENSEMBLE_READY_TIMEOUT,
                )
                .await?,
            );
        }
        let config = &own;
        let (leader, epoch) = (agreed.leader, agreed.epoch);
        notify(&format!(
            "drover bench: {ENSEMBLE_SIZE} masters serving after {} ms (leader {leader}, epoch \
             {epoch}); data and logs in {}",
            started.elapsed().as_millis(),
            ensemble.dir().display()
        ));
        if config.kill_leader > 0 {
            failover(config, &mut ensemble, notify)
                .await
                .map(|r| Report::Failover(Box::new(r)))
        } else {
            let addrs = ensemble.addrs_leader_last(leader);
            load(config, &addrs, Masters::Own, on_round)
                .await
                .map(Report::Load)
        }
    };
    let result = tokio::select! {
        r = work => r,
        e = interrupted => Err(e),
    };
    if result.is_err() {
        let tails = ensemble.log_tails(LOG_TAIL_LINES);
        notify(tails.strip_suffix('\n').unwrap_or(&tails));
    }
    // Kills the masters and removes their data now, before the caller reports the error (if
    // any).
    drop(ensemble);
    result
}

/// The one-line wording of a client error the CLI uses (`drover coord`'s), so the bench's
/// failures read the same.
fn client_error(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NoServer { addrs, last_error } => {
            anyhow::anyhow!("cannot reach any master at {addrs} ({last_error})")
        }
        other => anyhow::Error::new(other),
    }
}

/// Creates `path` (empty, persistent) unless it exists.
async fn ensure_node(client: &Client, path: &str) -> anyhow::Result<()> {
    client.ensure_node(path).await.map_err(client_error)
}
fn client_options(config: &CoordConfig) -> ClientOptions {
    ClientOptions {
        session_timeout: SESSION_TIMEOUT,
        establish_timeout: ESTABLISH_TIMEOUT,
        tls: config.client_tls.clone(),
        token: config.client_token.clone(),
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
async fn open_run(config: &CoordConfig, addrs: &[String]) -> anyhow::Result<(Client, String)> {
    let admin = Client::connect(addrs.to_vec(), client_options(config))
        .await
        .map_err(client_error)
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
pub struct Phase {
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Phase {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
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
    config: &CoordConfig,
    addrs: &[String],
    ensemble: Masters,
    on_round: &dyn Fn(&LoadRound),
) -> anyhow::Result<LoadReport> {
    let (admin, run_dir) = open_run(config, addrs).await?;
    let result = async {
        let mut rounds = Vec::new();
        for &n in &config.clients {
            let (writes, reads) = round(addrs, n, config, &run_dir).await?;
            let row = LoadRound {
                clients: n,
                writes,
                reads,
            };
            on_round(&row);
            rounds.push(row);
        }
        anyhow::Ok(rounds)
    }
    .await;
    close_run(admin, &run_dir).await;
    Ok(LoadReport {
        ensemble,
        masters: addrs.to_vec(),
        rounds: result?,
    })
}

/// One client count: connect `n` sessions, run the write phase, then the read phase.
async fn round(
    addrs: &[String],
    n: usize,
    config: &CoordConfig,
    run_dir: &str,
) -> anyhow::Result<(Phase, Phase)> {
    let mut clients = Vec::with_capacity(n);
    let connected = async {
        for i in 0..n {
            let client = Client::connect(addrs_for(addrs, i), client_options(config))
                .await
                .map_err(client_error)?;
            let path = format!("{run_dir}/c{n}-{i}");
            let created = client
                .create(&path, bytes_of(config.value_size), CreateMode::Ephemeral)
                .await;
            clients.push((client, path));
            created.map_err(client_error)?;
        }
        anyhow::Ok(())
    }
    .await;
    let result = async {
        connected?;
        let writes = phase(&clients, Kind::Write, config).await?;
        let reads = phase(&clients, Kind::Read, config).await?;
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
    config: &CoordConfig,
) -> anyhow::Result<Phase> {
    let warm_end = Instant::now() + config.warmup;
    let deadline = warm_end + config.duration;
    let ops_max = config.ops_per_client_max;
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
        elapsed: config.duration,
        latency_us: new_histogram(),
    };
    let mut last_done = None;
    while let Some(joined) = tasks.join_next().await {
        let run = joined
            .context("a benchmark client panicked")?
            .map_err(client_error)?;
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
pub struct Kill {
    pub leader: u32,
    pub epoch: u32,
    at_us: u64,
    /// Whether a write issued after the kill succeeded within `WRITES_RESUME_TIMEOUT`.
    pub resumed: bool,
    pub new_leader: u32,
    /// Kill → the new leader established (its synced quorum), by its `Cluster.Status`.
    pub elected_ms: Option<f64>,
    /// Restart → every master serving again.
    pub rejoin_ms: f64,
}

/// One kill's figures, from the writers' logs.
pub struct Gap {
    pub gap_ms: Option<f64>,
    pub gap_issued_after_ms: Option<f64>,
    pub failed_writes: usize,
}

/// The failover run's figures.
pub struct FailoverReport {
    pub masters: Vec<String>,
    /// Each kill and its figures, in order.
    pub kills: Vec<(Kill, Gap)>,
    pub gap_ms: Summary,
    pub gap_issued_after_ms: Summary,
    pub elected_ms: Summary,
    pub writes_ok: usize,
    pub writes_failed: usize,
    /// Some writer reached its record limit and stopped recording.
    pub records_truncated: bool,
    /// Distinct errors the writers saw, sorted.
    pub errors_seen: Vec<String>,
}

async fn failover(
    config: &CoordConfig,
    ensemble: &mut Ensemble,
    notify: &dyn Fn(&str),
) -> anyhow::Result<FailoverReport> {
    let addrs = ensemble.addrs();
    let (admin, run_dir) = open_run(config, &addrs).await?;
    let mut clients = Vec::with_capacity(config.writers);
    let result = async {
        for i in 0..config.writers {
            let mine = addrs_for(&addrs, i);
            let client = Client::connect(mine.clone(), client_options(config))
                .await
                .map_err(client_error)?;
            let path = format!("{run_dir}/w{i}");
            let created = client
                .create(&path, bytes_of(config.value_size), CreateMode::Persistent)
                .await;
            clients.push((client, path, mine));
            created.map_err(client_error)?;
        }
        let base = Instant::now();
        // Writers stop on `stop`, and in any case by this deadline, past the longest run the
        // controller's own deadlines allow.
        let per_kill = config.settle + WRITES_RESUME_TIMEOUT + 2 * ENSEMBLE_READY_TIMEOUT;
        let writers_deadline = base + per_kill * (config.kill_leader + 1);
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
                options: client_options(config),
            };
            writers.spawn(writer.run());
        }
        let kills = kill_leaders(config, ensemble, base, &progress, notify).await;
        stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::with_capacity(config.writers);
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
        Ok(failover_report(&addrs, kills, gaps, &logs))
    }
    .await;
    close_all(clients.into_iter().map(|(c, _, _)| c)).await;
    close_run(admin, &run_dir).await;
    result
}

fn failover_report(
    addrs: &[String],
    kills: Vec<Kill>,
    gaps: Vec<Gap>,
    logs: &[WriterLog],
) -> FailoverReport {
    let mut errors_seen: Vec<String> = logs
        .iter()
        .flat_map(|l| l.error_kinds.iter().cloned())
        .collect();
    errors_seen.sort();
    errors_seen.dedup();
    FailoverReport {
        masters: addrs.to_vec(),
        gap_ms: summary(gaps.iter().map(|g| g.gap_ms)),
        gap_issued_after_ms: summary(gaps.iter().map(|g| g.gap_issued_after_ms)),
        elected_ms: summary(kills.iter().map(|k| k.elected_ms)),
        kills: kills.into_iter().zip(gaps).collect(),
        writes_ok: logs.iter().map(|l| l.ok.len()).sum(),
        writes_failed: logs.iter().map(|l| l.failed.len()).sum(),
        records_truncated: logs.iter().any(|l| l.truncated),
        errors_seen,
    }
}

/// The controller: `config.kill_leader` times, kill the leader, wait for writes and a new
/// leader, restart the killed master and wait until it has rejoined.
async fn kill_leaders(
    config: &CoordConfig,
    ensemble: &mut Ensemble,
    base: Instant,
    progress: &AtomicU64,
    notify: &dyn Fn(&str),
) -> anyhow::Result<Vec<Kill>> {
    let mut kills = Vec::new();
    for k in 1..=config.kill_leader {
        let agreed = ensemble.wait_ready(ENSEMBLE_READY_TIMEOUT).await?;
        let (leader, epoch) = (agreed.leader, agreed.epoch);
        let before = progress.load(Ordering::Relaxed);
        tokio::time::sleep(config.settle).await;
        if progress.load(Ordering::Relaxed) == before {
            bail!(
                "no write succeeded in the {:?} before kill {k}, on a fully joined ensemble",
                config.settle
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
        notify(&format!(
            "drover bench: kill {k}/{}: leader {leader} (epoch {epoch}) killed; writes {}; \
             master {new_leader} leads{}; the killed master rejoined in {rejoin_ms:.0} ms",
            config.kill_leader,
            if resumed {
                "resumed".to_string()
            } else {
                format!("still failing after {WRITES_RESUME_TIMEOUT:?}")
            },
            elected_ms.map_or(String::new(), |ms| format!(" after {ms:.0} ms")),
        ));
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
    /// For a new session should the old one expire.
    options: ClientOptions,
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
                        match Client::connect(self.addrs.clone(), self.options.clone()).await {
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

/// Nearest-rank quantiles of one figure over the kills that have it.
#[derive(Debug, PartialEq)]
pub struct Summary {
    /// Kills that have the figure.
    pub n: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

fn summary(values: impl Iterator<Item = Option<f64>>) -> Summary {
    let mut v: Vec<f64> = values.flatten().collect();
    v.sort_by(f64::total_cmp);
    Summary {
        n: v.len(),
        p50_ms: quantile(&v, 0.5),
        p99_ms: quantile(&v, 0.99),
        max_ms: v.last().copied(),
    }
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

    #[test]
    fn a_summary_skips_kills_without_the_figure() {
        // Kills with no figure (writes never resumed) are left out of n and the quantiles.
        let s = summary([Some(3.0), None, Some(1.0), Some(2.0)].into_iter());
        assert_eq!(
            s,
            Summary {
                n: 3,
                p50_ms: Some(2.0),
                p99_ms: Some(3.0),
                max_ms: Some(3.0)
            }
        );
        let empty = summary([None].into_iter());
        assert_eq!((empty.n, empty.max_ms), (0, None));
    }

    #[test]
    fn limits_name_the_flag() {
        // Each out-of-range figure is refused with the flag that set it.
        let ok = CoordConfig {
            clients: vec![1, 16],
            value_size: 128,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            ops_per_client_max: 10,
            kill_leader: 0,
            writers: 16,
            settle: Duration::from_secs(1),
            dir: None,
            master_args: vec![],
            tls: false,
            client_tls: None,
            client_token: None,
        };
        assert!(ok.check().is_ok());
        let with = |f: &dyn Fn(&mut CoordConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().map_err(|e| e.to_string()).unwrap_err()
        };
        assert!(with(&|c| c.clients = vec![0]).starts_with("--clients"));
        assert!(with(&|c| c.clients = vec![BENCH_CLIENTS_MAX + 1]).starts_with("--clients"));
        assert!(with(&|c| c.writers = 0).starts_with("--writers"));
        assert!(with(&|c| c.value_size = usize::MAX).starts_with("--value-size"));
        assert!(with(&|c| c.duration = Duration::ZERO).starts_with("--duration"));
    }
}
