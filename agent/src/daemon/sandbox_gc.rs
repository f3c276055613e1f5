//! The sandbox GC: removes the sandboxes of runs that are over and whose terminal update was
//! acknowledged, once they are older than `max_age`, or — oldest first — while all sandboxes
//! together take more than `disk_max`. Until then the logs of finished and replaced runs stay
//! readable through the file API.
//!
//! One round, every `interval`:
//! 1. [`scan`] (blocking, on a worker thread) lists every run sandbox under
//!    `frameworks/<fw>/sandboxes/<task>/<run>` with its size and what its files say about the run.
//! 2. The driver, which owns the task table, picks what goes with [`select`] (pure): never a run
//!    the table tracks (running, or ended with its terminal update not yet acknowledged), never
//!    one whose supervisor is alive. It moves each picked sandbox into `sandbox-gc-trash/`
//!    (`rename`: a reader sees a sandbox whole or not at all) and removes the task and framework
//!    directories left empty. Only the driver creates sandboxes, so nothing can be starting in a
//!    directory it removes; and a run scanned in step 1 can never become tracked later, since
//!    every run gets a new id and is entered in the table before its sandbox is created.
//! 3. The trash is deleted (blocking, on a worker thread); leftovers of an interrupted round go
//!    at the next start.
//!
//! Sizes are apparent sizes (file lengths) of everything under a sandbox, symlinks not followed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::driver::Query;
use super::records;
use super::runs::{ProcessIdentity, SPEC_FILE};
use super::task_info::validate_ids;
use super::tasks::TaskKey;
use crate::resources::{ResourceError, parse_bytes};
use crate::sandbox::{Sandbox, TaskState as RunState, inspect, validate_run_id};

/// Deepest directory level below a sandbox that the size walk descends to (a task may build any
/// tree in its sandbox; deeper levels are not counted).
const WALK_DEPTH_MAX: usize = 32;

/// How much disk the sandboxes may take together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskLimit {
    Bytes(u64),
    /// 1..=100 percent of the size of the file system holding the work dir.
    PercentOfDisk(u8),
}

impl DiskLimit {
    /// Parses `--sandbox-gc-disk-max`: bytes (`10GiB`, see [`parse_bytes`]) or a whole percentage
    /// of the work dir's file system (`10%`, 1..=100).
    pub fn parse(value: &str) -> Result<DiskLimit, ResourceError> {
        const FLAG: &str = "--sandbox-gc-disk-max";
        let s = value.trim();
        if let Some(p) = s.strip_suffix('%') {
            let digits = p.trim();
            let all_digits = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit());
            return match digits.parse::<u8>() {
                Ok(p) if all_digits && (1..=100).contains(&p) => Ok(DiskLimit::PercentOfDisk(p)),
                _ => Err(invalid_flag(
                    FLAG,
                    value,
                    "expected a whole percentage 1..=100 like 10%",
                )),
            };
        }
        parse_bytes(FLAG, value).map(DiskLimit::Bytes)
    }

    /// The limit in bytes on a file system of `filesystem_bytes`.
    pub fn bytes_for(self, filesystem_bytes: u64) -> u64 {
        match self {
            DiskLimit::Bytes(b) => b,
            DiskLimit::PercentOfDisk(p) => {
                u64::try_from(u128::from(filesystem_bytes) * u128::from(p) / 100)
                    .unwrap_or(u64::MAX)
            }
        }
    }
}

fn invalid_flag(flag: &'static str, value: &str, reason: &str) -> ResourceError {
    ResourceError::InvalidFlag {
        flag,
        value: value.chars().take(100).collect(),
        reason: reason.into(),
    }
}

/// When sandboxes are removed; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxGcConfig {
    /// A finished run's sandbox goes once it ended this long ago (0: at the next round).
    pub max_age: Duration,
    /// Past this total, finished runs' sandboxes go oldest first.
    pub disk_max: DiskLimit,
    /// How often the GC looks.
    pub interval: Duration,
}

impl Default for SandboxGcConfig {
    fn default() -> Self {
        use super::defaults::*;
        SandboxGcConfig {
            max_age: drover_types::units::parse_duration(SANDBOX_GC_AGE)
                .expect("the default sandbox GC age parses"),
            disk_max: DiskLimit::parse(SANDBOX_GC_DISK_MAX)
                .expect("the default sandbox GC disk maximum parses"),
            interval: Duration::from_millis(SANDBOX_GC_INTERVAL_MS),
        }
    }
}

impl SandboxGcConfig {
    /// Checks what flags cannot; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interval.is_zero() {
            return Err(("sandbox_gc_interval", "must be > 0".into()));
        }
        if let DiskLimit::PercentOfDisk(p) = self.disk_max
            && !(1..=100).contains(&p)
        {
            return Err(("sandbox_gc_disk_max", format!("{p}% is not 1..=100%")));
        }
        Ok(())
    }
}

/// One run's sandbox as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOnDisk {
    pub key: TaskKey,
    pub run_id: String,
    pub dir: PathBuf,
    /// Apparent size of everything in the sandbox.
    pub bytes: u64,
    /// The files say the run is over: `exit.json` exists, or its supervisor is not alive.
    pub ended: bool,
    /// Unix ms the run started (supervisor records, else when its spec was written); 0 unknown.
    pub started_at_ms: u64,
    /// Unix ms from `exit.json`, when the supervisor recorded the end.
    pub finished_at_ms: Option<u64>,
    /// Newest modification time (Unix ms) of anything in the sandbox.
    pub last_modified_ms: u64,
}

impl RunOnDisk {
    /// When the run ended, as well as the files tell: `exit.json`'s time, else the last write.
    pub fn ended_at_ms(&self) -> u64 {
        self.finished_at_ms.unwrap_or(self.last_modified_ms)
    }
}

/// The sizes that decide a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    pub max_age_ms: u64,
    pub disk_max_bytes: u64,
}

/// Why a run's sandbox is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcReason {
    /// It ended at least `max_age` ago.
    Age,
    /// The sandboxes took more than `disk_max`, and it was among the oldest finished runs.
    Disk,
}

/// The runs to remove (indexes into `runs`, in removal order) and why. Pure.
///
/// A run may go only if it `ended` and `tracked` says no (the task table holds it: running, or its
/// terminal update is not acknowledged). Of those, every run that ended at least `max_age_ms`
/// before `now_ms` goes; then, while all sandboxes (tracked ones included) together still exceed
/// `disk_max_bytes`, the remaining ones go oldest end first. When only protected runs are left the
/// total may stay above the maximum.
pub fn select(
    runs: &[RunOnDisk],
    tracked: impl Fn(&RunOnDisk) -> bool,
    now_ms: u64,
    policy: &GcPolicy,
) -> Vec<(usize, GcReason)> {
    let mut removable: Vec<usize> = (0..runs.len())
        .filter(|&i| runs[i].ended && !tracked(&runs[i]))
        .collect();
    removable.sort_by(|&a, &b| {
        let (ra, rb) = (&runs[a], &runs[b]);
        (ra.ended_at_ms(), &ra.key, &ra.run_id).cmp(&(rb.ended_at_ms(), &rb.key, &rb.run_id))
    });
    let mut total = runs.iter().fold(0u64, |t, r| t.saturating_add(r.bytes));
    let mut out = Vec::new();
    let mut kept = Vec::new();
    for i in removable {
        if now_ms.saturating_sub(runs[i].ended_at_ms()) >= policy.max_age_ms {
            out.push((i, GcReason::Age));
            total = total.saturating_sub(runs[i].bytes);
        } else {
            kept.push(i);
        }
    }
    for i in kept {
        if total <= policy.disk_max_bytes {
            break;
        }
        out.push((i, GcReason::Disk));
        total = total.saturating_sub(runs[i].bytes);
    }
    out
}

/// What one round of the driver's part removed.
#[derive(Debug, Default)]
pub struct Collected {
    /// Where the removed sandboxes now are, to be deleted.
    pub trash: Vec<PathBuf>,
    pub by_age: usize,
    pub by_disk: usize,
    pub bytes: u64,
    /// Total size of the sandboxes left.
    pub bytes_left: u64,
}

/// A round's request to the driver.
#[derive(Debug)]
pub struct GcRound {
    pub runs: Vec<RunOnDisk>,
    pub now_ms: u64,
    pub policy: GcPolicy,
}

fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Every run sandbox under the work dir `root`. Directories whose names are not valid ids are
/// skipped (the agent never made them); unreadable ones are logged and skipped.
pub fn scan(root: &Path) -> Vec<RunOnDisk> {
    let mut out = Vec::new();
    for (fw, fw_dir) in named_dirs(&root.join(records::FRAMEWORKS_DIR)) {
        for (task, task_dir) in named_dirs(&fw_dir.join(records::SANDBOXES_DIR)) {
            if validate_ids(&fw, &task).is_err() {
                tracing::debug!(dir = %task_dir.display(), "sandbox GC skips a directory that is not a task's");
                continue;
            }
            let key = TaskKey::new(fw.clone(), task);
            out.extend(scan_task_dir(&key, &task_dir));
        }
    }
    out
}

/// The runs of one task in its sandboxes directory (`frameworks/<fw>/sandboxes/<task>`).
pub fn scan_task_dir(key: &TaskKey, task_dir: &Path) -> Vec<RunOnDisk> {
    named_dirs(task_dir)
        .into_iter()
        .filter(|(run, _)| validate_run_id(run).is_ok())
        .map(|(run, dir)| describe_run(key.clone(), run, dir))
        .collect()
}

/// Subdirectories of `dir` (not symlinks) with UTF-8 names, sorted; none when it does not exist.
fn named_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read a sandbox directory");
            return Vec::new();
        }
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    out.sort();
    out
}

/// What a run's files say about it.
pub fn describe_run(key: TaskKey, run_id: String, dir: PathBuf) -> RunOnDisk {
    let sandbox = Sandbox::at(&dir);
    let (bytes, last_modified_ms) = usage(&dir);
    let (ended, finished_at_ms, mut started_at_ms) = match inspect(&sandbox) {
        Ok(RunState::Exited(exit)) => (
            true,
            Some(exit.finished_at_unix_ms),
            exit.started_at_unix_ms,
        ),
        Ok(RunState::Running { .. }) => {
            (false, None, started_from_supervisor(&sandbox).unwrap_or(0))
        }
        Ok(RunState::Lost) => (true, None, started_from_supervisor(&sandbox).unwrap_or(0)),
        Err(e) => {
            // A damaged record: the run counts as running while a recorded supervisor lives.
            let alive = sandbox.read_supervisor().ok().flatten().is_some_and(|r| {
                ProcessIdentity {
                    pid: r.supervisor_pid,
                    start_ticks: r.supervisor_start_ticks,
                }
                .is_alive()
            });
            tracing::warn!(sandbox = %dir.display(), error = %e, alive, "a sandbox record cannot be read");
            (!alive, None, 0)
        }
    };
    if started_at_ms == 0 {
        started_at_ms = fs::metadata(dir.join(SPEC_FILE))
            .or_else(|_| fs::metadata(&dir))
            .and_then(|m| m.modified())
            .map(unix_ms)
            .unwrap_or(0);
    }
    RunOnDisk {
        key,
        run_id,
        dir,
        bytes,
        ended,
        started_at_ms,
        finished_at_ms,
        last_modified_ms,
    }
}

fn started_from_supervisor(sandbox: &Sandbox) -> Option<u64> {
    sandbox
        .read_supervisor()
        .ok()
        .flatten()
        .map(|r| r.started_at_unix_ms)
}

/// Apparent size of everything under `dir` and the newest modification time, symlinks not
/// followed; what cannot be read is not counted.
fn usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut newest = fs::symlink_metadata(dir)
        .and_then(|m| m.modified())
        .map(unix_ms)
        .unwrap_or(0);
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if let Ok(m) = meta.modified() {
                newest = newest.max(unix_ms(m));
            }
            if meta.is_dir() {
                if depth < WALK_DEPTH_MAX {
                    stack.push((entry.path(), depth + 1));
                }
            } else {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    (bytes, newest)
}

/// Size of the file system holding `path`, in bytes.
// The statvfs field types differ between targets (u32 on some 32-bit ones).
#[allow(clippy::useless_conversion)]
fn filesystem_bytes(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(u64::from(st.blocks()).saturating_mul(u64::from(st.fragment_size())))
}

/// Deletes everything in the trash directory (what an interrupted round left).
fn empty_trash(trash_dir: &Path) {
    for (_, dir) in named_dirs(trash_dir) {
        remove_all(&dir);
    }
}

fn remove_all(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot delete a removed sandbox");
    }
}

/// The GC loop: a round at once, then every `config.interval`, until `stop` is set or the driver
/// goes away.
pub(super) async fn run(
    root: PathBuf,
    config: SandboxGcConfig,
    queries: mpsc::Sender<Query>,
    mut stop: watch::Receiver<bool>,
) {
    let trash_dir = records::gc_trash_dir(&root);
    {
        let trash_dir = trash_dir.clone();
        let _ = tokio::task::spawn_blocking(move || empty_trash(&trash_dir)).await;
    }
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if !round(&root, &config, &queries).await {
            return;
        }
    }
}

/// One round; false when the driver is gone.
async fn round(root: &Path, config: &SandboxGcConfig, queries: &mpsc::Sender<Query>) -> bool {
    let scan_root = root.to_path_buf();
    let disk_max = config.disk_max;
    let scanned = tokio::task::spawn_blocking(move || {
        let fs_bytes = match disk_max {
            DiskLimit::Bytes(_) => Ok(0),
            DiskLimit::PercentOfDisk(_) => filesystem_bytes(&scan_root),
        };
        (scan(&scan_root), fs_bytes)
    })
    .await;
    let (runs, fs_bytes) = match scanned {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the sandbox scan failed");
            return true;
        }
    };
    let disk_max_bytes = match fs_bytes {
        Ok(fs_bytes) => disk_max.bytes_for(fs_bytes),
        Err(e) => {
            tracing::warn!(work_dir = %root.display(), error = %e, "cannot read the work dir's file system size; the sandbox GC removes by age only this round");
            u64::MAX
        }
    };
    let scanned_runs = runs.len();
    let (reply, answer) = oneshot::channel();
    let gc_round = GcRound {
        runs,
        now_ms: now_unix_ms(),
        policy: GcPolicy {
            max_age_ms: super::duration_ms(config.max_age),
            disk_max_bytes,
        },
    };
    if queries
        .send(Query::Collect {
            round: gc_round,
            reply,
        })
        .await
        .is_err()
    {
        return false;
    }
    let Ok(collected) = answer.await else {
        return false;
    };
    if collected.trash.is_empty() {
        tracing::debug!(
            runs = scanned_runs,
            bytes = collected.bytes_left,
            disk_max_bytes,
            "sandbox GC: nothing to remove"
        );
    } else {
        tracing::info!(
            removed = collected.trash.len(),
            by_age = collected.by_age,
            by_disk = collected.by_disk,
            bytes = collected.bytes,
            bytes_left = collected.bytes_left,
            disk_max_bytes,
            "sandbox GC removed sandboxes of finished runs"
        );
    }
    if collected.bytes_left > disk_max_bytes {
        tracing::warn!(
            bytes_left = collected.bytes_left,
            disk_max_bytes,
            "the sandboxes of running (or unacknowledged) tasks alone exceed --sandbox-gc-disk-max"
        );
    }
    let trash = collected.trash;
    let _ = tokio::task::spawn_blocking(move || {
        for dir in trash {
            remove_all(&dir);
        }
    })
    .await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: &str, run: &str, bytes: u64, ended: bool, ended_at: u64) -> RunOnDisk {
        RunOnDisk {
            key: TaskKey::new("fw", task),
            run_id: run.into(),
            dir: PathBuf::from(format!("/w/frameworks/fw/sandboxes/{task}/{run}")),
            bytes,
            ended,
            started_at_ms: 0,
            finished_at_ms: ended.then_some(ended_at),
            last_modified_ms: ended_at,
        }
    }

    const DAY: u64 = 86_400_000;

    fn check(
        runs: &[RunOnDisk],
        tracked: &[&str],
        now: u64,
        policy: GcPolicy,
        expected: &[(&str, GcReason)],
    ) {
        let picked = select(runs, |r| tracked.contains(&r.run_id.as_str()), now, &policy);
        let got: Vec<(&str, GcReason)> = picked
            .iter()
            .map(|&(i, why)| (runs[i].run_id.as_str(), why))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn only_ended_untracked_runs_older_than_the_age_go() {
        // Proves the age rule and the two protections: a run still running (its supervisor
        // lives) and a run the task table tracks (terminal update unacknowledged) stay however
        // old; an ended, acknowledged run goes once it ended max_age ago, not before.
        let now = 10 * DAY;
        let runs = [
            run("a", "old", 10, true, now - 8 * DAY),
            run("b", "young", 10, true, now - 6 * DAY),
            run("c", "running", 10, false, now - 9 * DAY),
            run("d", "unacked", 10, true, now - 9 * DAY),
            run("e", "exactly", 10, true, now - 7 * DAY),
        ];
        let policy = GcPolicy {
            max_age_ms: 7 * DAY,
            disk_max_bytes: u64::MAX,
        };
        check(
            &runs,
            &["unacked"],
            now,
            policy,
            &[("old", GcReason::Age), ("exactly", GcReason::Age)],
        );
    }

    #[test]
    fn over_the_disk_maximum_the_oldest_finished_runs_go_until_it_fits() {
        // Proves the size rule: everything counts towards the total (protected runs too), but
        // only ended untracked runs are removed, oldest end first, and no more than needed.
        let now = DAY;
        let runs = [
            run("a", "newest", 100, true, now - 10),
            run("b", "oldest", 100, true, now - 1000),
            run("c", "middle", 100, true, now - 500),
            run("d", "running", 150, false, now - 2000),
        ];
        let policy = GcPolicy {
            max_age_ms: 7 * DAY,
            disk_max_bytes: 300,
        };
        // 450 in all: removing "oldest" leaves 350, "middle" then 250 <= 300.
        check(
            &runs,
            &[],
            now,
            policy,
            &[("oldest", GcReason::Disk), ("middle", GcReason::Disk)],
        );
        // Exactly at the maximum is within it.
        let policy = GcPolicy {
            disk_max_bytes: 450,
            ..policy
        };
        check(&runs, &[], now, policy, &[]);
    }

    #[test]
    fn age_removals_count_against_the_disk_total_and_protected_runs_may_stay_over_it() {
        // Proves runs removed for age are subtracted before the size rule looks, and that when
        // only protected runs remain the GC stops rather than touch them.
        let now = 30 * DAY;
        let runs = [
            run("a", "ancient", 500, true, 0),
            run("b", "recent", 100, true, now - 10),
            run("c", "running", 1000, false, now - 10),
            run("d", "unacked", 1000, true, now - 10),
        ];
        let policy = GcPolicy {
            max_age_ms: 7 * DAY,
            disk_max_bytes: 50,
        };
        check(
            &runs,
            &["unacked"],
            now,
            policy,
            &[("ancient", GcReason::Age), ("recent", GcReason::Disk)],
        );
        // 2600 in all; without "ancient" 2100 fits, so "recent" stays.
        let policy = GcPolicy {
            max_age_ms: 7 * DAY,
            disk_max_bytes: 2100,
        };
        check(
            &runs,
            &["unacked"],
            now,
            policy,
            &[("ancient", GcReason::Age)],
        );
    }

    #[test]
    fn age_zero_removes_every_finished_untracked_run_at_once() {
        // Proves max_age 0 is "as soon as acknowledged", and the clock going backwards (an end
        // in the future) does not underflow.
        let runs = [
            run("a", "done", 1, true, 100),
            run("b", "future", 1, true, 500),
            run("c", "live", 1, false, 100),
        ];
        let policy = GcPolicy {
            max_age_ms: 0,
            disk_max_bytes: u64::MAX,
        };
        check(
            &runs,
            &[],
            200,
            policy,
            &[("done", GcReason::Age), ("future", GcReason::Age)],
        );
    }

    #[test]
    fn flags_parse_and_bad_values_name_the_flag() {
        // Proves the GC flag syntaxes and that errors name the flag.
        assert_eq!(
            DiskLimit::parse("10GiB").unwrap(),
            DiskLimit::Bytes(10 << 30)
        );
        assert_eq!(
            DiskLimit::parse("25%").unwrap(),
            DiskLimit::PercentOfDisk(25)
        );
        assert_eq!(DiskLimit::PercentOfDisk(10).bytes_for(1000), 100);
        assert_eq!(DiskLimit::Bytes(7).bytes_for(1000), 7);
        for bad in ["0%", "101%", "-1%", "x%", "10GB", ""] {
            let e = DiskLimit::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("--sandbox-gc-disk-max"), "{e}");
        }
        assert_eq!(
            SandboxGcConfig::default().max_age,
            Duration::from_secs(7 * 86_400)
        );
    }

    #[test]
    fn a_scan_finds_runs_with_their_sizes_and_skips_foreign_names() {
        // Proves the scan: every run sandbox with its apparent size (nested files included,
        // symlinks not followed), ended when no supervisor lives, and directories whose names
        // are not ids are left out.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let run_dir = root.join("frameworks/fw-1/sandboxes/web.1/r1");
        fs::create_dir_all(run_dir.join("sub")).unwrap();
        fs::write(run_dir.join("stdout"), vec![b'x'; 1000]).unwrap();
        fs::write(run_dir.join("sub/data"), vec![b'y'; 24]).unwrap();
        let outside = root.join("big");
        fs::write(&outside, vec![b'z'; 5000]).unwrap();
        std::os::unix::fs::symlink(&outside, run_dir.join("link")).unwrap();
        fs::create_dir_all(root.join("frameworks/fw-1/sandboxes/web.1/not.a.run")).unwrap();
        fs::create_dir_all(root.join("frameworks/fw-1/sandboxes/bad task/r2")).unwrap();
        let runs = scan(root);
        assert_eq!(runs.len(), 1, "{runs:?}");
        let r = &runs[0];
        assert_eq!(r.key, TaskKey::new("fw-1", "web.1"));
        assert_eq!(r.run_id, "r1");
        let link_len = fs::symlink_metadata(run_dir.join("link")).unwrap().len();
        assert_eq!(r.bytes, 1024 + link_len);
        assert!(r.ended, "no supervisor record: not running");
        assert!(r.last_modified_ms > 0);
    }
}
