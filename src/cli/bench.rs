//! `drover bench coord`: write and read throughput and latency of coord, measured from real
//! client sessions against running masters.
//!
//! For each client count, that many clients (each its own session, spread round robin over
//! `--masters`) each create their own ephemeral znode, then `set` a `--value-size` payload on it
//! back to back for `--duration`, then `get` it for `--duration`. Every phase is bounded in time
//! and in ops per client, so a run always ends. The znodes are ephemeral and die with their
//! sessions; the run's parent znode is deleted at the end.

use super::coord::{cli_error, connect};
use super::{Context, Output};
use anyhow::{Context as _, bail};
use drover_coord::client::{Client, ClientError, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Throughput and latency of coord writes (set) and reads (get).
    Coord(CoordBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct CoordBenchArgs {
    /// Client counts to measure, comma-separated; each client has its own session.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Bytes written by each set.
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// How long each phase (writes, then reads) runs per client count: 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Most ops one client issues in one phase, so a run stays bounded against any server.
    #[arg(long, default_value_t = 1_000_000)]
    pub ops_per_client_max: u64,
}

/// Most clients in one round: each is a session (a connection and a task) on the masters.
const BENCH_CLIENTS_MAX: usize = 1024;
/// Parent of every run's znodes.
const BENCH_ROOT: &str = "/drover-bench";
/// Highest latency the histograms track; slower ops are recorded at this value.
const LATENCY_US_MAX: u64 = 60_000_000;

pub async fn run(ctx: &Context, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Coord(args) => bench_coord(ctx, args).await,
    }
}

/// One phase's measurements.
struct Phase {
    ops: u64,
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
            "seconds": self.elapsed.as_secs_f64(),
            "per_sec": self.per_sec(),
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Write,
    Read,
}

async fn bench_coord(ctx: &Context, args: CoordBenchArgs) -> anyhow::Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs counts of at least 1, e.g. 1,16,64");
    }
    if let Some(&n) = args.clients.iter().find(|&&n| n > BENCH_CLIENTS_MAX) {
        bail!("--clients {n} is over the limit of {BENCH_CLIENTS_MAX}");
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
    let addrs = ctx.master_addrs();
    // The first session both checks that the masters answer and owns the run's parent znode.
    let admin = connect(ctx, bench_options()).await.context(
        "the coord benchmark needs a running master (start one with `drover master --data-dir DIR` \
         and pass its address with --masters)",
    )?;
    let run_dir = format!(
        "{BENCH_ROOT}/run-{}-{}",
        std::process::id(),
        admin.session_id()
    );
    let result = async {
        ensure_node(&admin, BENCH_ROOT).await?;
        ensure_node(&admin, &run_dir).await?;
        let mut rows = Vec::new();
        for &n in &args.clients {
            let (writes, reads) = round(&addrs, n, &args, &run_dir).await?;
            if ctx.output == Output::Human {
                if rows.is_empty() {
                    println!(
                        "{:>7} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}",
                        "clients",
                        "writes/s",
                        "w p50 ms",
                        "w p99 ms",
                        "w p999 ms",
                        "reads/s",
                        "r p50 ms",
                        "r p99 ms"
                    );
                }
                println!(
                    "{:>7} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>10.0} {:>9.3} {:>9.3}",
                    n,
                    writes.per_sec(),
                    writes.quantile_ms(0.5),
                    writes.quantile_ms(0.99),
                    writes.quantile_ms(0.999),
                    reads.per_sec(),
                    reads.quantile_ms(0.5),
                    reads.quantile_ms(0.99),
                );
            }
            rows.push(
                json!({ "clients": n, "writes": writes.to_json(), "reads": reads.to_json() }),
            );
        }
        anyhow::Ok(rows)
    }
    .await;
    // The clients' ephemerals are gone with their sessions; remove the run's parent too.
    let cleanup = admin.delete(&run_dir, None).await;
    let _ = admin.close().await;
    let rows = result?;
    if let Err(e) = cleanup
        && e.code() != Some(ErrorCode::NoNode)
    {
        tracing::warn!(path = %run_dir, error = %e, "could not delete the benchmark's znode");
    }
    if ctx.output == Output::Json {
        let doc = json!({
            "benchmark": "coord",
            "masters": addrs,
            "value_size": args.value_size,
            "duration_s": args.duration.as_secs_f64(),
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

fn bench_options() -> ClientOptions {
    ClientOptions {
        session_timeout: Duration::from_secs(10),
        establish_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    }
}

async fn ensure_node(client: &Client, path: &str) -> anyhow::Result<()> {
    match client
        .create(path, Vec::new(), CreateMode::Persistent)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::NodeExists) => Ok(()),
        Err(e) => Err(cli_error(e)),
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
    for i in 0..n {
        // Client i tries address i first, so sessions spread evenly over the masters.
        let mut mine = addrs.to_vec();
        mine.rotate_left(i % addrs.len().max(1));
        let client = Client::connect(mine, bench_options())
            .await
            .map_err(cli_error)?;
        let path = format!("{run_dir}/c{n}-{i}");
        client
            .create(&path, vec![0u8; args.value_size], CreateMode::Ephemeral)
            .await
            .map_err(cli_error)?;
        clients.push((client, path));
    }
    let result = async {
        let writes = phase(&clients, Kind::Write, args).await?;
        let reads = phase(&clients, Kind::Read, args).await?;
        anyhow::Ok((writes, reads))
    }
    .await;
    for (client, _) in &clients {
        let _ = client.close().await;
    }
    result
}

/// Every client runs `kind` back to back until the phase's deadline or its op budget.
async fn phase(
    clients: &[(Client, String)],
    kind: Kind,
    args: &CoordBenchArgs,
) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let deadline = start + args.duration;
    let payload = bytes_of(args.value_size);
    let mut tasks = tokio::task::JoinSet::new();
    for (client, path) in clients {
        let (client, path, payload) = (client.clone(), path.clone(), payload.clone());
        let ops_max = args.ops_per_client_max;
        tasks.spawn(
            async move { client_loop(client, path, kind, payload, deadline, ops_max).await },
        );
    }
    let mut total = new_histogram();
    let mut ops = 0;
    while let Some(joined) = tasks.join_next().await {
        let (n, hist) = joined
            .context("a benchmark client panicked")?
            .map_err(cli_error)?;
        ops += n;
        total.add(&hist).context("merging latency histograms")?;
    }
    Ok(Phase {
        ops,
        elapsed: start.elapsed(),
        latency_us: total,
    })
}

async fn client_loop(
    client: Client,
    path: String,
    kind: Kind,
    payload: Vec<u8>,
    deadline: Instant,
    ops_max: u64,
) -> Result<(u64, Histogram<u64>), ClientError> {
    let mut hist = new_histogram();
    let mut ops = 0;
    while ops < ops_max && Instant::now() < deadline {
        let t0 = Instant::now();
        match kind {
            Kind::Write => {
                client.set(&path, payload.clone(), None).await?;
            }
            Kind::Read => {
                client.get(&path).await?;
            }
        }
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
        ops += 1;
    }
    Ok((ops, hist))
}

fn new_histogram() -> Histogram<u64> {
    // Bounds and precision are constants: failure here is a bug.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn bytes_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
