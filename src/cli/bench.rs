//! `drover bench coord`: the flags, and the tables and JSON of
//! `drover_devcluster::bench::coord`, which measures throughput, latency and leader failover of
//! coord from real client sessions against real `drover master` processes: its own ensemble of
//! three unless `--masters` (or `DROVER_MASTERS`) names one. The other benches' flags and
//! rendering are in `bench_scheduler`, `bench_deploy` and `bench_disk`.

use super::{Context, Output};
use anyhow::Context as _;
use drover_devcluster::bench::coord::{
    self, CoordConfig, FailoverReport, LoadReport, LoadRound, Masters, Phase, Report, Summary,
};
use serde_json::json;
use std::time::Duration;

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
    /// Security on the bench's own ensemble: `on` is TLS everywhere (peer links included) and ACLs
    /// (`--acl`, clients with the bootstrap token); off, on, or both (the whole run twice,
    /// plaintext first, then a table of what it costs). With --masters,
    /// the clients use the global --tls-* flags instead.
    #[arg(long, value_enum, default_value_t = TlsMode::Off)]
    pub tls: TlsMode,
}

/// `drover bench coord --tls`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    On,
    Both,
}

pub async fn run(ctx: &Context, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Coord(args) => bench_coord(ctx, args).await,
        BenchCmd::Scheduler(args) => {
            until_interrupted(super::bench_scheduler::bench_scheduler(
                ctx,
                args,
                masters_given(),
            ))
            .await
        }
        BenchCmd::Deploy(args) => super::bench_deploy::bench_deploy(ctx, args).await,
        BenchCmd::Disk(args) => super::bench_disk::bench_disk(ctx, args).await,
        BenchCmd::SimAgents(args) => {
            until_interrupted(super::bench_scheduler::sim_agents(ctx, args)).await
        }
    }
}

async fn bench_coord(ctx: &Context, args: CoordBenchArgs) -> anyhow::Result<()> {
    let base = CoordConfig {
        clients: args.clients,
        value_size: args.value_size,
        duration: args.duration,
        warmup: args.warmup,
        ops_per_client_max: args.ops_per_client_max,
        kill_leader: args.kill_leader,
        writers: args.writers,
        settle: args.settle,
        dir: args.dir,
        master_args: args.master_args,
        tls: false,
        client_tls: None,
        client_token: None,
    };
    let given = masters_given().then(|| ctx.master_addrs());
    if given.is_some() && args.tls != TlsMode::Off {
        anyhow::bail!(
            "--tls sets up the bench's own ensemble; with --masters the clients use --tls-ca, \
             --tls-cert and --tls-key"
        );
    }
    let modes: &[bool] = match args.tls {
        TlsMode::Off => &[false],
        TlsMode::On => &[true],
        TlsMode::Both => &[false, true],
    };
    let mut loads = Vec::new();
    for &tls in modes {
        let mut config = base.clone();
        config.tls = tls;
        if given.is_some() {
            config.client_tls = ctx.tls.clone();
            config.client_token = ctx.token.clone();
        }
        if modes.len() > 1 && ctx.output == Output::Human {
            println!("TLS {}:", if tls { "on" } else { "off" });
        }
        let header = std::cell::Cell::new(true);
        let report = coord::run(
            &config,
            given.clone(),
            interrupted(),
            &|line| eprintln!("{line}"),
            &|round| {
                if ctx.output == Output::Human {
                    print_load_row(header.replace(false), round);
                }
            },
        )
        .await?;
        match report {
            Report::Load(load) => {
                if ctx.output == Output::Json {
                    print_load_json(&config, &load)?;
                }
                loads.push(load);
            }
            Report::Failover(failover) => report_failover(ctx, &config, &failover)?,
        }
    }
    if let [off, on] = loads.as_slice()
        && ctx.output == Output::Human
    {
        print_tls_cost(off, on);
    }
    Ok(())
}

/// What TLS costs, client count by client count: throughput with it against without it.
fn print_tls_cost(off: &LoadReport, on: &LoadReport) {
    println!("TLS cost (on vs off, same sitting):");
    println!(
        "{:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}",
        "clients", "writes/s off", "writes/s on", "change", "reads/s off", "reads/s on", "change"
    );
    let change = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    for (a, b) in off.rounds.iter().zip(&on.rounds) {
        let (wa, wb) = (a.writes.per_sec(), b.writes.per_sec());
        let (ra, rb) = (a.reads.per_sec(), b.reads.per_sec());
        println!(
            "{:>7} {:>12.0} {:>12.0} {:>7.1}% {:>12.0} {:>12.0} {:>7.1}%",
            a.clients,
            wa,
            wb,
            change(wa, wb),
            ra,
            rb,
            change(ra, rb)
        );
    }
}

/// Whether the user named masters: `--masters` on the command line or `DROVER_MASTERS` set.
/// (The global flag has a default, so its value alone cannot tell.)
fn masters_given() -> bool {
    std::env::var_os("DROVER_MASTERS").is_some_and(|v| !v.is_empty())
        || std::env::args_os()
            .any(|a| a == "--masters" || a.to_str().is_some_and(|s| s.starts_with("--masters=")))
}

/// Runs `work` until it ends or Ctrl-C / SIGTERM arrives; then `work` is dropped, which drops
/// its clients and the guards of the processes it started.
async fn until_interrupted<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        e = interrupted() => Err(e),
    }
}

/// Ends with why the bench must stop: Ctrl-C or SIGTERM arrived, or cannot be watched for.
async fn interrupted() -> anyhow::Error {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()).context("cannot watch for SIGTERM") {
        Ok(term) => term,
        Err(e) => return e,
    };
    tokio::select! {
        signalled = tokio::signal::ctrl_c() => match signalled {
            Ok(()) => anyhow::anyhow!("interrupted"),
            Err(e) => anyhow::anyhow!("cannot watch for Ctrl-C: {e}"),
        },
        _ = term.recv() => anyhow::anyhow!("terminated"),
    }
}

fn phase_json(phase: &Phase) -> serde_json::Value {
    json!({
        "ops": phase.ops,
        "errors": phase.errors,
        "first_error": phase.first_error,
        "seconds": phase.elapsed.as_secs_f64(),
        "per_sec": phase.per_sec(),
        "p50_ms": phase.quantile_ms(0.5),
        "p99_ms": phase.quantile_ms(0.99),
        "p999_ms": phase.quantile_ms(0.999),
        "max_ms": phase.latency_us.max() as f64 / 1000.0,
    })
}

fn print_load_json(config: &CoordConfig, load: &LoadReport) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = load
        .rounds
        .iter()
        .map(|r| {
            json!({ "clients": r.clients, "writes": phase_json(&r.writes), "reads": phase_json(&r.reads) })
        })
        .collect();
    let doc = json!({
        "benchmark": "coord",
        "ensemble": match load.ensemble {
            Masters::Given => "given",
            Masters::Own => "own, leader last",
        },
        "masters": load.masters,
        "value_size": config.value_size,
        "tls": config.tls || config.client_tls.is_some(),
        "warmup_s": config.warmup.as_secs_f64(),
        "duration_s": config.duration.as_secs_f64(),
        "results": rows,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn print_load_row(header: bool, round: &LoadRound) {
    let (n, writes, reads) = (round.clients, &round.writes, &round.reads);
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

fn summary_json(s: &Summary) -> serde_json::Value {
    json!({
        "n": s.n,
        "p50_ms": s.p50_ms,
        "p99_ms": s.p99_ms,
        "max_ms": s.max_ms,
    })
}

fn report_failover(
    ctx: &Context,
    config: &CoordConfig,
    report: &FailoverReport,
) -> anyhow::Result<()> {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |ms| format!("{ms:.1}"));
    match ctx.output {
        Output::Human => {
            println!(
                "{:>4} {:>6} {:>6} {:>9} {:>9} {:>10} {:>7} {:>9}",
                "kill", "leader", "new", "gap ms", "gap' ms", "elected ms", "failed", "rejoin ms"
            );
            for (i, (k, g)) in report.kills.iter().enumerate() {
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
                ("gap", &report.gap_ms),
                ("gap'", &report.gap_issued_after_ms),
                ("elected", &report.elected_ms),
            ] {
                println!(
                    "{name:>8}: p50 {} ms, p99 {} ms, max {} ms (n={})",
                    fmt(s.p50_ms),
                    fmt(s.p99_ms),
                    fmt(s.max_ms),
                    s.n
                );
            }
            println!(
                "gap = first write to complete after the kill (in-flight ones count) − kill; \
                 gap' = the same over writes issued after the kill (ANCHORS.md's definition); \
                 elected = kill → new leader's \"leading\" log line."
            );
            println!(
                "{} writers, {} writes succeeded, {} failed{}",
                config.writers,
                report.writes_ok,
                report.writes_failed,
                if report.records_truncated {
                    "; some writers stopped recording (record limit)"
                } else {
                    ""
                }
            );
            for e in &report.errors_seen {
                println!("  error seen: {e}");
            }
        }
        Output::Json => {
            let rows: Vec<serde_json::Value> = report
                .kills
                .iter()
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
                    "masters": report.masters,
                    "writers": config.writers,
                    "value_size": config.value_size,
            "tls": config.tls || config.client_tls.is_some(),
                    "settle_s": config.settle.as_secs_f64(),
                    "kills": rows,
                    "gap_ms": summary_json(&report.gap_ms),
                    "gap_issued_after_ms": summary_json(&report.gap_issued_after_ms),
                    "elected_ms": summary_json(&report.elected_ms),
                    "writes_ok": report.writes_ok,
                    "writes_failed": report.writes_failed,
                    "records_truncated": report.records_truncated,
                    "errors_seen": report.errors_seen,
                });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    Ok(())
}
