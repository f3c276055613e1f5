//! `drover bench disk`: what one durable coord write costs on a disk, measured with coord's own
//! transaction log (`drover_coord::storage::TxnLog`: append one record, then `sync`, the
//! fdatasync a replica does before it acknowledges a proposal).
//!
//! Each writer is a thread with its own log in its own directory, as each master has its own
//! data directory. One writer gives the disk's floor for one replica; three writers show what a
//! 3-master ensemble sharing one disk (a dev machine, `drover local --masters 3`, the bench's own
//! ensemble) pays: a write commits only once two replicas have synced, and on one device their
//! flushes queue behind each other. Throughput is the writers' syncs together per second.

use super::new_histogram;
use anyhow::{Context as _, bail};
use drover_coord::storage::{LogOptions, TxnLog};
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Most concurrent writers: each is a thread and a 64 MiB preallocated log file.
pub const WRITERS_MAX: usize = 64;
/// Largest record: coord's largest znode value (1 MiB) plus room for the request around it.
pub const RECORD_SIZE_MAX: usize = 2 << 20;
/// Longest run per writer count.
pub const DURATION_MAX: Duration = Duration::from_secs(600);

/// What to measure (`drover bench disk`'s flags, checked by [`DiskConfig::check`]).
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Directory on the disk to measure; the bench works in a new directory inside it and
    /// removes that at the end. None: the system's temporary directory.
    pub dir: Option<PathBuf>,
    /// Concurrent writer counts, measured one after the other.
    pub writers: Vec<usize>,
    /// Bytes of each logged record.
    pub record_size: usize,
    /// How long each writer count runs.
    pub duration: Duration,
}

impl DiskConfig {
    /// Every figure within its limit; the errors name the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.writers.is_empty() || self.writers.iter().any(|&n| n == 0 || n > WRITERS_MAX) {
            bail!("--writers needs counts from 1 to {WRITERS_MAX}, e.g. 1,3");
        }
        if self.record_size == 0 || self.record_size > RECORD_SIZE_MAX {
            bail!("--record-size must be from 1 to {RECORD_SIZE_MAX} bytes");
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            bail!(
                "--duration must be above 0 and at most {} s",
                DURATION_MAX.as_secs()
            );
        }
        Ok(())
    }

    /// The directory the bench works in (`dir` or the system's temporary directory).
    pub fn parent(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// One writer count's measurements.
pub struct Round {
    pub writers: usize,
    /// Syncs of all writers together.
    pub syncs: u64,
    /// The longest writer's run.
    pub elapsed: Duration,
    /// Append + sync latency, µs.
    pub sync_us: Histogram<u64>,
}

impl Round {
    pub fn per_sec(&self) -> f64 {
        self.syncs as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.sync_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs every writer count of `config` in order, handing each finished round to `on_round`
/// (so a table can grow while the next round runs), and returns them all.
pub async fn run(
    config: &DiskConfig,
    notify: &dyn Fn(&str),
    on_round: &dyn Fn(&Round),
) -> anyhow::Result<Vec<Round>> {
    config.check()?;
    let parent = config.parent();
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
        notify(&format!(
            "drover bench: {} is on tmpfs, where a sync never reaches a disk; give --dir on the \
             disk that holds the masters' --data-dir",
            parent.display()
        ));
    }
    let mut rounds = Vec::new();
    for &n in &config.writers {
        let dir = work.path().join(format!("writers-{n}"));
        let (record_size, duration) = (config.record_size, config.duration);
        let round =
            tokio::task::spawn_blocking(move || measure(&dir, n, record_size, duration)).await??;
        on_round(&round);
        rounds.push(round);
    }
    work.close().with_context(|| {
        format!(
            "cannot remove the bench's directory in {}",
            parent.display()
        )
    })?;
    Ok(rounds)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_the_flag() {
        // Each out-of-range figure is refused with the flag that set it.
        let ok = DiskConfig {
            dir: None,
            writers: vec![1, 3],
            record_size: 216,
            duration: Duration::from_secs(1),
        };
        assert!(ok.check().is_ok());
        let with = |f: &dyn Fn(&mut DiskConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.check().map_err(|e| e.to_string()).unwrap_err()
        };
        assert!(with(&|c| c.writers = vec![]).starts_with("--writers"));
        assert!(with(&|c| c.writers = vec![WRITERS_MAX + 1]).starts_with("--writers"));
        assert!(with(&|c| c.record_size = 0).starts_with("--record-size"));
        assert!(with(&|c| c.duration = DURATION_MAX * 2).starts_with("--duration"));
    }

    #[tokio::test]
    async fn a_round_counts_every_writers_syncs() {
        // Two writers for a short while: the round has their syncs together, one latency sample
        // per sync, and removes its directory afterwards.
        let parent = tempfile::tempdir().expect("temp dir");
        let config = DiskConfig {
            dir: Some(parent.path().to_path_buf()),
            writers: vec![2],
            record_size: 64,
            duration: Duration::from_millis(50),
        };
        let seen = std::cell::Cell::new(0);
        let rounds = run(&config, &|_| {}, &|_| seen.set(seen.get() + 1))
            .await
            .expect("runs");
        assert_eq!(seen.get(), 1);
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].writers, 2);
        assert!(rounds[0].syncs >= 2, "each writer syncs at least once");
        assert_eq!(rounds[0].sync_us.len(), rounds[0].syncs);
        let left = std::fs::read_dir(parent.path()).expect("readable").count();
        assert_eq!(left, 0, "the bench's directory is removed");
    }
}
