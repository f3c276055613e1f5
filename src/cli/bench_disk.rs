//! `drover bench disk`: what one durable coord write costs on a disk, measured with coord's own
//! transaction log (`drover_coord::storage::TxnLog`: append one record, then `sync`, the
//! fdatasync a replica does before it acknowledges a proposal).
//!
//! Each writer is a thread with its own log in its own directory, as each master has its own
//! data directory. One writer gives the disk's floor for one replica; three writers show what a
//! 3-master ensemble sharing one disk (a dev machine, `drover local --masters 3`, the bench's own
//! ensemble) pays: a write commits only once two replicas have synced, and on one device their
//! flushes queue behind each other. Throughput is the writers' syncs together per second.

use super::bench::new_histogram;
use super::{Context, Output};
use anyhow::{Context as _, bail};
use drover_coord::storage::{LogOptions, TxnLog};
use hdrhistogram::Histogram;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct DiskBenchArgs {
    /// Directory on the disk to measure (put it where the masters' --data-dir is); the bench
    /// works in a new directory inside it and removes that at the end. Default: the system's
    /// temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Concurrent writers to measure, comma-separated; each appends and syncs its own log.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub writers: Vec<usize>,
    /// Bytes of each logged record (a 128-byte `set` is about 216 bytes in the log).
    #[arg(long, default_value_t = 216)]
    pub record_size: usize,
    /// How long each writer count runs: 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = drover_types::units::parse_duration)]
    pub duration: Duration,
}

/// Most concurrent writers: each is a thread and a 64 MiB preallocated log file.
const WRITERS_MAX: usize = 64;
/// Largest record: coord's largest znode value (1 MiB) plus room for the request around it.
const RECORD_SIZE_MAX: usize = 2 << 20;
/// Longest run per writer count.
const DURATION_MAX: Duration = Duration::from_secs(600);

/// One writer count's measurements.
struct Round {
    writers: usize,
    syncs: u64,
    elapsed: Duration,
    sync_us: Histogram<u64>,
}

impl Round {
    fn per_sec(&self) -> f64 {
        self.syncs as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
    fn quantile_ms(&self, q: f64) -> f64 {
        self.sync_us.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn bench_disk(ctx: &Context, args: DiskBenchArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("drover-bench-disk-")
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "--dir {}: cannot create a directory in it",
                parent.display()
            )
        })?;
    if is_tmpfs(work.path()) {
        eprintln!(
            "drover bench: {} is on tmpfs, where a sync never reaches a disk; give --dir on the \
             disk that holds the masters' --data-dir",
            parent.display()
        );
    }
    let mut rounds = Vec::new();
    for &n in &args.writers {
        let dir = work.path().join(format!("writers-{n}"));
        let (record_size, duration) = (args.record_size, args.duration);
        let round =
            tokio::task::spawn_blocking(move || measure(&dir, n, record_size, duration)).await??;
        if ctx.output == Output::Human {
            print_row(rounds.is_empty(), &round);
        }
        rounds.push(round);
    }
    if ctx.output == Output::Json {
        let rows: Vec<_> = rounds
            .iter()
            .map(|r| {
                json!({
                    "writers": r.writers,
                    "syncs": r.syncs,
                    "seconds": r.elapsed.as_secs_f64(),
                    "syncs_per_sec": r.per_sec(),
                    "p50_ms": r.quantile_ms(0.5),
                    "p99_ms": r.quantile_ms(0.99),
                    "p999_ms": r.quantile_ms(0.999),
                    "max_ms": r.sync_us.max() as f64 / 1000.0,
                })
            })
            .collect();
        let report = json!({
            "dir": parent.display().to_string(),
            "record_size": args.record_size,
            "rounds": rows,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    work.close().with_context(|| {
        format!(
            "cannot remove the bench's directory in {}",
            parent.display()
        )
    })
}

fn check_args(args: &DiskBenchArgs) -> anyhow::Result<()> {
    if args.writers.is_empty() || args.writers.iter().any(|&n| n == 0 || n > WRITERS_MAX) {
        bail!("--writers needs counts from 1 to {WRITERS_MAX}, e.g. 1,3");
    }
    if args.record_size == 0 || args.record_size > RECORD_SIZE_MAX {
        bail!("--record-size must be from 1 to {RECORD_SIZE_MAX} bytes");
    }
    if args.duration.is_zero() || args.duration > DURATION_MAX {
        bail!(
            "--duration must be above 0 and at most {} s",
            DURATION_MAX.as_secs()
        );
    }
    Ok(())
}

fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Runs `writers` threads, each appending and syncing its own log under `dir` for `duration`,
/// all starting together.
fn measure(
    dir: &Path,
    writers: usize,
    record_size: usize,
    duration: Duration,
) -> anyhow::Result<Round> {
    let start = Arc::new(Barrier::new(writers));
    let threads: Vec<_> = (0..writers)
        .map(|i| {
            let log_dir = dir.join(format!("log-{i}"));
            let start = Arc::clone(&start);
            std::thread::Builder::new()
                .name(format!("bench-disk-{i}"))
                .spawn(move || write_log(&log_dir, record_size, duration, &start))
                .context("cannot start a writer thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut round = Round {
        writers,
        syncs: 0,
        elapsed: Duration::ZERO,
        sync_us: new_histogram(),
    };
    for thread in threads {
        let (syncs, elapsed, hist) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
        round.syncs += syncs;
        round.elapsed = round.elapsed.max(elapsed);
        round
            .sync_us
            .add(&hist)
            .context("merging latency histograms")?;
    }
    Ok(round)
}

/// One writer: append a record, sync, until `duration` has passed.
fn write_log(
    dir: &Path,
    record_size: usize,
    duration: Duration,
    start: &Barrier,
) -> anyhow::Result<(u64, Duration, Histogram<u64>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (mut log, _) = TxnLog::open(dir, LogOptions::default())
        .with_context(|| format!("cannot open a log in {}", dir.display()))?;
    let record = vec![0x5a; record_size];
    let mut hist = new_histogram();
    start.wait();
    let began = Instant::now();
    let mut zxid = 0;
    while began.elapsed() < duration {
        zxid += 1;
        let t = Instant::now();
        log.append(zxid, &record)?;
        log.sync()?;
        hist.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    Ok((zxid, began.elapsed(), hist))
}

fn print_row(header: bool, r: &Round) {
    if header {
        println!(
            "{:>7} {:>9} {:>9} {:>9} {:>9}",
            "writers", "syncs/s", "p50 ms", "p99 ms", "p999 ms"
        );
    }
    println!(
        "{:>7} {:>9.0} {:>9.3} {:>9.3} {:>9.3}",
        r.writers,
        r.per_sec(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.quantile_ms(0.999)
    );
}
