//! The status-update manager: every task status update is checkpointed before it is sent and
//! retried until the framework acknowledges it, so none is lost across an agent restart.
//!
//! Owns `<work_dir>/status_updates/` (the caller picks the directory), one **stream** per
//! (framework id, task id): `<dir>/<framework_id>/<task_id>.updates`, an append-only file of
//! records `[len: u32 LE][crc32 of payload: u32 LE][payload: JSON]`, where a payload is either an
//! update or the acknowledgement of one (by uuid). Start at [`StatusUpdateManager::open`], then
//! [`StatusUpdateManager::record`], [`StatusUpdateManager::next_to_send`] and
//! [`StatusUpdateManager::acknowledge`].
//!
//! Sans-IO in time, not in files: it reads no clock (`now_ms` is passed in) and sends nothing; the
//! agent's driver sends what [`StatusUpdateManager::next_to_send`] returns and feeds
//! acknowledgements back. Like Mesos's status-update manager:
//! - updates of one task go out **in order, one in flight per task**; the next is released only
//!   when the current one is acknowledged;
//! - an unacknowledged update is resent with exponential backoff from
//!   [`StatusUpdateConfig::retry_min_ms`] to [`StatusUpdateConfig::retry_max_ms`];
//!   [`StatusUpdateManager::retry_all_now`] resends at once (after re-registering with a master);
//! - only the update in flight can be acknowledged; a duplicate or stale ack is ignored and
//!   reported as such ([`AckOutcome`]);
//! - once a task's terminal update is acknowledged its stream is garbage-collected (file deleted).
//!
//! Durability: [`StatusUpdateManager::record`] and [`StatusUpdateManager::acknowledge`] return only
//! after the record is fsynced (a new file's directory is fsynced too), so an update handed to the
//! driver is never forgotten and an acknowledged one is never resent after a restart — except that
//! an ack that came in but whose checkpoint failed makes the update go out again, which is fine:
//! delivery is at-least-once and frameworks dedupe by uuid.
//!
//! Recovery: a torn tail (a record cut short by a crash, or zero-filled by the file system) is
//! truncated with a `warn`, keeping every record before it. A bad record with valid data after it
//! is not a crash artefact but corruption; [`StatusUpdateManager::open`] then fails with
//! [`StatusUpdateError::CorruptCheckpoint`] naming the file and offset, because dropping the rest
//! would silently lose updates: an operator must look.
//!
//! Limits: at most [`StatusUpdateConfig::pending_per_task_max`] unacknowledged updates per task and
//! [`StatusUpdateConfig::pending_total_max`] in all ([`StatusUpdateError::TooManyPendingForTask`],
//! [`StatusUpdateError::TooManyPending`]). A terminal update is always accepted: a task's end must
//! never be dropped, and there is at most one per task, so the total stays bounded by the task count.

use crate::path_io::{PathIoError, io_err, sync_dir};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sandbox::validate_task_id;

/// Longest accepted framework id (a directory name).
pub const FRAMEWORK_ID_BYTES_MAX: usize = drover_types::ids::ID_BYTES_MAX;
/// Longest accepted status message.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 16 * 1024;
/// Largest record payload written or read; an update with the longest ids and message is ~17 KiB.
pub const STATUS_RECORD_BYTES_MAX: usize = 64 * 1024;
/// Largest stream file read at recovery.
pub const STREAM_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// A stream file is rewritten with only its unacknowledged updates once it holds this many
/// records (and at least twice as many as are pending), so a long-running task's file stays small.
pub const STREAM_COMPACT_RECORDS: u64 = 256;

const HEADER_BYTES: usize = 8;
const STREAM_SUFFIX: &str = ".updates";
const TMP_SUFFIX: &str = ".updates.tmp";

/// The state of a task as reported to frameworks (Mesos `TaskState`; checkpointed by the same
/// names as on the wire). Not to be confused with [`crate::sandbox::TaskState`], which is what a
/// sandbox's files say.
pub use drover_types::TaskState;

/// One status update of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Unique per update; the framework acknowledges by it.
    pub uuid: Uuid,
    pub framework_id: String,
    pub task_id: String,
    pub state: TaskState,
    /// Human-readable reason; may be empty; at most [`STATUS_MESSAGE_BYTES_MAX`] bytes.
    pub message: String,
    /// Exit code, when the task exited.
    pub exit_code: Option<i32>,
    /// Terminating signal, when the task was signalled.
    pub signal: Option<i32>,
    /// Machine-readable reason (`memory_limit`, `failed_to_start`, ...); may be empty. Absent in
    /// checkpoints written before it existed, hence the default.
    #[serde(default)]
    pub reason: String,
    /// When the agent generated the update (Unix ms).
    pub timestamp_ms: u64,
}

/// Retry timing and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusUpdateConfig {
    /// First retry interval after a send; doubles on every resend.
    pub retry_min_ms: u64,
    /// Cap of the retry interval.
    pub retry_max_ms: u64,
    /// Most unacknowledged non-terminal updates of one task.
    pub pending_per_task_max: usize,
    /// Most unacknowledged non-terminal updates in all.
    pub pending_total_max: usize,
}

impl Default for StatusUpdateConfig {
    /// 1 s doubling to 1 min (Mesos goes to 10 min; re-registration resends at once anyway, so a
    /// shorter cap only costs a few messages to a master that is down), 256 per task, 10 000 total.
    fn default() -> Self {
        StatusUpdateConfig {
            retry_min_ms: 1_000,
            retry_max_ms: 60_000,
            pending_per_task_max: 256,
            pending_total_max: 10_000,
        }
    }
}

/// Errors of the status-update manager.
#[derive(Debug, thiserror::Error)]
pub enum StatusUpdateError {
    /// An id or field of an update is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// A checkpoint file is damaged somewhere other than its tail. The agent must not start on it:
    /// truncating would lose the updates after the damage.
    #[error("corrupt status update checkpoint {path} at byte {offset}: {reason}")]
    CorruptCheckpoint {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "task {task_id} of framework {framework_id} already has {limit} unacknowledged updates"
    )]
    TooManyPendingForTask {
        framework_id: String,
        task_id: String,
        limit: usize,
    },
    #[error("{limit} status updates are already unacknowledged")]
    TooManyPending { limit: usize },
    /// A task that reported a terminal state reports nothing more.
    #[error("task {task_id} already reported terminal state {state:?}")]
    AfterTerminal { task_id: String, state: TaskState },
    #[error("update {uuid} of task {task_id} was already recorded")]
    DuplicateUuid { task_id: String, uuid: Uuid },
}

/// What [`StatusUpdateManager::acknowledge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// The in-flight update was acknowledged (and the ack checkpointed). `next` is the update now
    /// in flight, if any (it is due at once); `stream_removed` is true when this acknowledged the
    /// task's terminal update and its stream was deleted.
    Acknowledged {
        next: Option<Uuid>,
        stream_removed: bool,
    },
    /// Ignored: this update was acknowledged before.
    Duplicate,
    /// Ignored: the uuid is not the update in flight (a later one, or one this task never had).
    NotInFlight,
    /// Ignored: no stream for this task (never recorded, or already garbage-collected).
    UnknownStream,
}

/// What [`StatusUpdateManager::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Every unacknowledged update, per stream in recording order (streams sorted by framework
    /// id, then task id).
    pub pending: Vec<StatusUpdate>,
    /// Files whose torn tail was cut off, with the length they were cut to.
    pub truncated: Vec<(PathBuf, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    Update(StatusUpdate),
    Ack { uuid: Uuid },
}

type StreamKey = (String, String);

#[derive(Debug)]
struct Stream {
    path: PathBuf,
    file: File,
    /// Bytes of valid records; the next record is written here.
    file_len: u64,
    /// Records in the file (updates and acks), for compaction.
    records: u64,
    /// Unacknowledged updates, oldest first; the front is the one in flight.
    pending: VecDeque<StatusUpdate>,
    /// Uuids acknowledged since the file was last compacted, to tell duplicates from strangers.
    acked: HashSet<Uuid>,
    /// The terminal state this task recorded, if any; nothing may follow it.
    terminal: Option<TaskState>,
    /// When the front may be sent (again); 0 = now.
    next_attempt_ms: u64,
    /// Interval to wait after the next send.
    backoff_ms: u64,
}

/// The status-update manager; see the module docs.
#[derive(Debug)]
pub struct StatusUpdateManager {
    dir: PathBuf,
    config: StatusUpdateConfig,
    streams: BTreeMap<StreamKey, Stream>,
    /// Unacknowledged non-terminal updates over all streams (what `pending_total_max` bounds).
    pending_non_terminal: usize,
}

impl StatusUpdateManager {
    /// Opens (creating if needed) the checkpoint directory and recovers every stream in it. Torn
    /// tails are truncated; streams whose terminal update was acknowledged are deleted; leftover
    /// compaction files are removed. Everything recovered is due at once.
    pub fn open(
        dir: impl Into<PathBuf>,
        config: StatusUpdateConfig,
    ) -> Result<(StatusUpdateManager, Recovered), StatusUpdateError> {
        if config.retry_min_ms == 0 || config.retry_min_ms > config.retry_max_ms {
            return Err(StatusUpdateError::InvalidField {
                field: "retry_min_ms",
                reason: format!(
                    "must be > 0 and <= retry_max_ms ({} > {})",
                    config.retry_min_ms, config.retry_max_ms
                ),
            });
        }
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("create dir", &dir))?;
        let mut manager = StatusUpdateManager {
            dir,
            config,
            streams: BTreeMap::new(),
            pending_non_terminal: 0,
        };
        let mut recovered = Recovered::default();
        for fw_dir in sorted_entries(&manager.dir)? {
            let Some(framework_id) = dir_name(&fw_dir) else {
                continue;
            };
            if !fw_dir.is_dir() || validate_framework_id(&framework_id).is_err() {
                tracing::warn!(path = %fw_dir.display(), "ignoring unexpected entry in status update dir");
                continue;
            }
            for path in sorted_entries(&fw_dir)? {
                let Some(name) = dir_name(&path) else {
                    continue;
                };
                if name.ends_with(TMP_SUFFIX) {
                    tracing::warn!(path = %path.display(), "removing leftover compaction file");
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    continue;
                }
                let task_id = match name.strip_suffix(STREAM_SUFFIX) {
                    Some(t) if validate_task_id(t).is_ok() && path.is_file() => t.to_string(),
                    _ => {
                        tracing::warn!(path = %path.display(), "ignoring unexpected entry in status update dir");
                        continue;
                    }
                };
                manager.recover_stream(framework_id.clone(), task_id, path, &mut recovered)?;
            }
        }
        Ok((manager, recovered))
    }

    fn recover_stream(
        &mut self,
        framework_id: String,
        task_id: String,
        path: PathBuf,
        recovered: &mut Recovered,
    ) -> Result<(), StatusUpdateError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        if len > STREAM_FILE_BYTES_MAX {
            return Err(StatusUpdateError::CorruptCheckpoint {
                path,
                offset: 0,
                reason: format!("file is {len} bytes, limit is {STREAM_FILE_BYTES_MAX}"),
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;

        let (records, good_len) = parse_records(&path, &bytes)?;
        if good_len < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = good_len,
                dropped_bytes = bytes.len() as u64 - good_len,
                "truncating torn tail of status update checkpoint"
            );
            file.set_len(good_len).map_err(io_err("truncate", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            recovered.truncated.push((path.clone(), good_len));
        }

        let mut stream = Stream {
            path,
            file,
            file_len: good_len,
            records: 0,
            pending: VecDeque::new(),
            acked: HashSet::new(),
            terminal: None,
            next_attempt_ms: 0,
            backoff_ms: self.config.retry_min_ms,
        };
        let mut terminal_acked = false;
        for (offset, record) in records {
            stream.records += 1;
            match record {
                Record::Update(u) => {
                    if u.framework_id != framework_id || u.task_id != task_id {
                        return Err(StatusUpdateError::CorruptCheckpoint {
                            path: stream.path,
                            offset,
                            reason: format!(
                                "update of {}/{} in the stream of {framework_id}/{task_id}",
                                u.framework_id, u.task_id
                            ),
                        });
                    }
                    if stream.acked.contains(&u.uuid)
                        || stream.pending.iter().any(|p| p.uuid == u.uuid)
                    {
                        tracing::warn!(path = %stream.path.display(), uuid = %u.uuid, "skipping duplicate update in checkpoint");
                        continue;
                    }
                    if u.state.is_terminal() {
                        stream.terminal = Some(u.state);
                    }
                    stream.pending.push_back(u);
                }
                Record::Ack { uuid } => match stream.pending.front() {
                    Some(front) if front.uuid == uuid => {
                        let done = stream.pending.pop_front().map(|u| u.state.is_terminal());
                        terminal_acked |= done == Some(true);
                        stream.acked.insert(uuid);
                    }
                    _ => {
                        tracing::warn!(path = %stream.path.display(), %uuid, "skipping ack of an update not in flight in checkpoint");
                    }
                },
            }
        }

        if terminal_acked && stream.pending.is_empty() {
            // Crashed between checkpointing the terminal ack and deleting the stream.
            remove_stream_file(&self.dir, &stream.path)?;
            return Ok(());
        }
        if stream.records == 0 {
            // Crashed after creating the file, before its first record was durable.
            remove_stream_file(&self.dir, &stream.path)?;
            return Ok(());
        }
        self.pending_non_terminal += stream
            .pending
            .iter()
            .filter(|u| !u.state.is_terminal())
            .count();
        recovered.pending.extend(stream.pending.iter().cloned());
        self.streams.insert((framework_id, task_id), stream);
        Ok(())
    }

    /// Checkpoints `update` (fsynced before this returns) and queues it behind the task's earlier
    /// unacknowledged updates.
    pub fn record(&mut self, update: StatusUpdate) -> Result<(), StatusUpdateError> {
        validate_framework_id(&update.framework_id)?;
        validate_task_id(&update.task_id).map_err(|_| StatusUpdateError::InvalidField {
            field: "task_id",
            reason: format!("must be {}", drover_types::ids::ID_RULE),
        })?;
        if update.message.len() > STATUS_MESSAGE_BYTES_MAX {
            return Err(StatusUpdateError::InvalidField {
                field: "message",
                reason: format!(
                    "is {} bytes, limit is {STATUS_MESSAGE_BYTES_MAX}",
                    update.message.len()
                ),
            });
        }
        let key = (update.framework_id.clone(), update.task_id.clone());
        let terminal = update.state.is_terminal();
        if let Some(stream) = self.streams.get(&key) {
            if let Some(state) = stream.terminal {
                return Err(StatusUpdateError::AfterTerminal {
                    task_id: update.task_id,
                    state,
                });
            }
            if stream.acked.contains(&update.uuid)
                || stream.pending.iter().any(|p| p.uuid == update.uuid)
            {
                return Err(StatusUpdateError::DuplicateUuid {
                    task_id: update.task_id,
                    uuid: update.uuid,
                });
            }
            if !terminal && stream.pending.len() >= self.config.pending_per_task_max {
                return Err(StatusUpdateError::TooManyPendingForTask {
                    framework_id: update.framework_id,
                    task_id: update.task_id,
                    limit: self.config.pending_per_task_max,
                });
            }
        } else if !terminal && self.config.pending_per_task_max == 0 {
            return Err(StatusUpdateError::TooManyPendingForTask {
                framework_id: update.framework_id,
                task_id: update.task_id,
                limit: 0,
            });
        }
        if !terminal && self.pending_non_terminal >= self.config.pending_total_max {
            return Err(StatusUpdateError::TooManyPending {
                limit: self.config.pending_total_max,
            });
        }

        let payload = encode(&Record::Update(update.clone()))?;
        if !self.streams.contains_key(&key) {
            let stream = self.create_stream(&key)?;
            self.streams.insert(key.clone(), stream);
        }
        let min = self.config.retry_min_ms;
        let stream = self
            .streams
            .get_mut(&key)
            .expect("stream was just looked up or inserted");
        if let Err(e) = append(stream, &payload) {
            if stream.records == 0 {
                // Leave no empty stream behind (recovery would delete its file anyway).
                let _ = fs::remove_file(&stream.path);
                self.streams.remove(&key);
            }
            return Err(e);
        }
        if stream.pending.is_empty() {
            stream.next_attempt_ms = 0;
            stream.backoff_ms = min;
        }
        if terminal {
            stream.terminal = Some(update.state);
        } else {
            self.pending_non_terminal += 1;
        }
        stream.pending.push_back(update);
        Ok(())
    }

    fn create_stream(&self, key: &StreamKey) -> Result<Stream, StatusUpdateError> {
        let fw_dir = self.dir.join(&key.0);
        if !fw_dir.is_dir() {
            fs::create_dir(&fw_dir).map_err(io_err("create dir", &fw_dir))?;
            sync_dir(&self.dir)?;
        }
        let path = fw_dir.join(format!("{}{STREAM_SUFFIX}", key.1));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        sync_dir(&fw_dir)?;
        Ok(Stream {
            path,
            file,
            file_len: 0,
            records: 0,
            pending: VecDeque::new(),
            acked: HashSet::new(),
            terminal: None,
            next_attempt_ms: 0,
            backoff_ms: self.config.retry_min_ms,
        })
    }

    /// The updates to send now: per task, the oldest unacknowledged one, if it has never been sent
    /// since it came to the front (or since [`Self::open`]/[`Self::retry_all_now`]) or its retry
    /// interval has passed. Each returned update's next retry is `now_ms` + its backoff, and the
    /// backoff doubles up to `retry_max_ms`.
    pub fn next_to_send(&mut self, now_ms: u64) -> Vec<StatusUpdate> {
        let max = self.config.retry_max_ms;
        let mut out = Vec::new();
        for stream in self.streams.values_mut() {
            let Some(front) = stream.pending.front() else {
                continue;
            };
            if stream.next_attempt_ms > now_ms {
                continue;
            }
            out.push(front.clone());
            stream.next_attempt_ms = now_ms.saturating_add(stream.backoff_ms);
            stream.backoff_ms = stream.backoff_ms.saturating_mul(2).min(max);
        }
        out
    }

    /// When [`Self::next_to_send`] will next have something, if anything is pending (0 = now).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.streams
            .values()
            .filter(|s| !s.pending.is_empty())
            .map(|s| s.next_attempt_ms)
            .min()
    }

    /// Makes every in-flight update due at once with the backoff reset, e.g. after (re-)registering
    /// with a new leading master, which has not seen any of them.
    pub fn retry_all_now(&mut self) {
        for stream in self.streams.values_mut() {
            stream.next_attempt_ms = 0;
            stream.backoff_ms = self.config.retry_min_ms;
        }
    }

    /// Handles the framework's acknowledgement of update `uuid` of a task. Only the update in
    /// flight (the task's oldest unacknowledged one) can be acknowledged; the ack is checkpointed
    /// before the next update is released. Acknowledging a terminal update deletes the stream.
    pub fn acknowledge(
        &mut self,
        framework_id: &str,
        task_id: &str,
        uuid: Uuid,
    ) -> Result<AckOutcome, StatusUpdateError> {
        let key = (framework_id.to_string(), task_id.to_string());
        let Some(stream) = self.streams.get_mut(&key) else {
            tracing::debug!(framework_id, task_id, %uuid, "ack for unknown status update stream ignored");
            return Ok(AckOutcome::UnknownStream);
        };
        if stream.pending.front().map(|u| u.uuid) != Some(uuid) {
            let outcome = if stream.acked.contains(&uuid) {
                AckOutcome::Duplicate
            } else {
                AckOutcome::NotInFlight
            };
            tracing::debug!(framework_id, task_id, %uuid, ?outcome, "status update ack ignored");
            return Ok(outcome);
        }
        append(stream, &encode(&Record::Ack { uuid })?)?;
        let done = stream.pending.pop_front().expect("front was checked above");
        stream.acked.insert(uuid);
        stream.next_attempt_ms = 0;
        stream.backoff_ms = self.config.retry_min_ms;
        if !done.state.is_terminal() {
            self.pending_non_terminal -= 1;
        }
        if done.state.is_terminal() {
            // Nothing can follow a terminal update, so the stream is finished.
            assert!(
                stream.pending.is_empty(),
                "an update was queued after terminal update {uuid} of {task_id}"
            );
            let path = stream.path.clone();
            self.streams.remove(&key);
            if let Err(e) = remove_stream_file(&self.dir, &path) {
                // The terminal ack is durable, so the next open deletes the file; the ack stands.
                tracing::warn!(path = %path.display(), error = %e, "cannot remove finished status update stream");
            }
            return Ok(AckOutcome::Acknowledged {
                next: None,
                stream_removed: true,
            });
        }
        let next = stream.pending.front().map(|u| u.uuid);
        if stream.records >= STREAM_COMPACT_RECORDS
            && stream.records >= 2 * stream.pending.len() as u64
            && let Err(e) = compact(stream)
        {
            // The ack itself is durable; a failed compaction only leaves a longer file.
            tracing::warn!(path = %stream.path.display(), error = %e, "status update compaction failed");
        }
        Ok(AckOutcome::Acknowledged {
            next,
            stream_removed: false,
        })
    }

    /// Unacknowledged updates of one task, oldest first.
    pub fn pending(&self, framework_id: &str, task_id: &str) -> Vec<StatusUpdate> {
        self.streams
            .get(&(framework_id.to_string(), task_id.to_string()))
            .map(|s| s.pending.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Unacknowledged updates over all tasks (terminal ones included).
    pub fn pending_count(&self) -> usize {
        self.streams.values().map(|s| s.pending.len()).sum()
    }

    /// The directory this manager owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Checks a framework id: it becomes a directory name, so it follows `drover_types::ids`' one
/// entity-id rule (1..=[`FRAMEWORK_ID_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`, no `..`).
pub fn validate_framework_id(id: &str) -> Result<(), StatusUpdateError> {
    drover_types::FrameworkId::parse(id)
        .map(drop)
        .map_err(|_| StatusUpdateError::InvalidField {
            field: "framework_id",
            reason: format!("must be {}", drover_types::ids::ID_RULE),
        })
}

fn encode(record: &Record) -> Result<Vec<u8>, StatusUpdateError> {
    let payload = serde_json::to_vec(record).map_err(|e| StatusUpdateError::InvalidField {
        field: "update",
        reason: format!("cannot be encoded: {e}"),
    })?;
    if payload.len() > STATUS_RECORD_BYTES_MAX {
        return Err(StatusUpdateError::InvalidField {
            field: "update",
            reason: format!(
                "encodes to {} bytes, limit is {STATUS_RECORD_BYTES_MAX}",
                payload.len()
            ),
        });
    }
    Ok(payload)
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len =
        u32::try_from(payload.len()).expect("payload was checked against STATUS_RECORD_BYTES_MAX");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes one record at the end of the valid records and fsyncs it. On failure the file is cut
/// back to its valid length, so a half-written record never sits in front of a later good one.
fn append(stream: &mut Stream, payload: &[u8]) -> Result<(), StatusUpdateError> {
    let mut buf = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame(payload, &mut buf);
    let result = stream
        .file
        .write_all_at(&buf, stream.file_len)
        .map_err(io_err("write", &stream.path))
        .and_then(|()| {
            stream
                .file
                .sync_data()
                .map_err(io_err("fsync", &stream.path))
        });
    if let Err(e) = result {
        let _ = stream.file.set_len(stream.file_len);
        return Err(e.into());
    }
    stream.file_len += buf.len() as u64;
    stream.records += 1;
    Ok(())
}

/// Rewrites a stream's file with only its pending updates: tmp file, fsync, rename, fsync dir.
fn compact(stream: &mut Stream) -> Result<(), StatusUpdateError> {
    let mut tmp = stream.path.clone().into_os_string();
    tmp.push(".tmp"); // `<task_id>.updates.tmp`, which recovery removes
    let tmp = PathBuf::from(tmp);
    let mut buf = Vec::new();
    for u in &stream.pending {
        frame(&encode(&Record::Update(u.clone()))?, &mut buf);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all_at(&buf, 0).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &stream.path).map_err(io_err("rename", &tmp))?;
    if let Some(parent) = stream.path.parent() {
        sync_dir(parent)?;
    }
    stream.file = file;
    stream.file_len = buf.len() as u64;
    stream.records = stream.pending.len() as u64;
    stream.acked.clear();
    Ok(())
}

/// Splits a stream file into records. Returns them with their offsets, and the length of the
/// valid prefix. A bad record that reaches the end of the file (cut short, or followed only by
/// zeros) is a torn tail and ends the valid prefix; any other bad record is corruption.
fn parse_records(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<(u64, Record)>, u64), StatusUpdateError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let torn = |reason: &str| -> Result<(), StatusUpdateError> {
            // Zero-filled tails are what a crash after extending the file leaves on ext4/xfs.
            if rest.iter().all(|&b| b == 0) {
                return Ok(());
            }
            Err(StatusUpdateError::CorruptCheckpoint {
                path: path.to_path_buf(),
                offset: offset as u64,
                reason: reason.to_string(),
            })
        };
        if rest.len() < HEADER_BYTES {
            break; // a cut-short header: torn tail
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > STATUS_RECORD_BYTES_MAX {
            torn(&format!(
                "record length {len} is not in 1..={STATUS_RECORD_BYTES_MAX}"
            ))?;
            break;
        }
        let end = HEADER_BYTES + len;
        if rest.len() < end {
            break; // a cut-short payload: torn tail
        }
        let payload = &rest[HEADER_BYTES..end];
        if crc32fast::hash(payload) != crc {
            // The last record with a bad checksum was being written when the agent died.
            if rest.len() == end {
                break;
            }
            torn("checksum mismatch")?;
            break;
        }
        let record: Record =
            serde_json::from_slice(payload).map_err(|e| StatusUpdateError::CorruptCheckpoint {
                path: path.to_path_buf(),
                offset: offset as u64,
                reason: format!("record with a valid checksum does not decode: {e}"),
            })?;
        records.push((offset as u64, record));
        offset += end;
    }
    Ok((records, offset as u64))
}

fn remove_stream_file(root: &Path, path: &Path) -> Result<(), StatusUpdateError> {
    fs::remove_file(path).map_err(io_err("remove", path))?;
    let Some(fw_dir) = path.parent() else {
        return Ok(());
    };
    sync_dir(fw_dir)?;
    // Drop the framework's directory once its last stream is gone; another stream being created
    // concurrently is impossible (one owner), so "not empty" just means other tasks remain.
    if fs::remove_dir(fw_dir).is_ok() {
        sync_dir(root)?;
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, StatusUpdateError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        out.push(entry.map_err(io_err("read dir", dir))?.path());
    }
    out.sort();
    Ok(out)
}

fn dir_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const FW: &str = "fw-1";

    fn config() -> StatusUpdateConfig {
        StatusUpdateConfig {
            retry_min_ms: 1_000,
            retry_max_ms: 8_000,
            pending_per_task_max: 4,
            pending_total_max: 6,
        }
    }

    fn open(dir: &Path) -> (StatusUpdateManager, Recovered) {
        StatusUpdateManager::open(dir, config()).unwrap()
    }

    fn update(task: &str, state: TaskState, n: u128) -> StatusUpdate {
        StatusUpdate {
            uuid: Uuid::from_u128(n),
            framework_id: FW.into(),
            task_id: task.into(),
            state,
            message: format!("update {n}"),
            exit_code: None,
            signal: None,
            timestamp_ms: 1_700_000_000_000 + n as u64,
            reason: String::new(),
        }
    }

    fn uuids(updates: &[StatusUpdate]) -> Vec<u128> {
        updates.iter().map(|u| u.uuid.as_u128()).collect()
    }

    fn stream_path(dir: &Path, task: &str) -> PathBuf {
        dir.join(FW).join(format!("{task}{STREAM_SUFFIX}"))
    }

    fn ack(m: &mut StatusUpdateManager, task: &str, n: u128) -> AckOutcome {
        m.acknowledge(FW, task, Uuid::from_u128(n)).unwrap()
    }

    #[test]
    fn updates_go_out_in_order_one_in_flight_per_task() {
        // Proves: next_to_send gives each task's oldest unacknowledged update only, tasks
        // independently, and nothing more until an ack or a retry time.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, recovered) = open(dir.path());
        assert_eq!(recovered, Recovered::default());
        m.record(update("a", TaskState::Starting, 1)).unwrap();
        m.record(update("a", TaskState::Running, 2)).unwrap();
        m.record(update("b", TaskState::Running, 3)).unwrap();
        assert_eq!(uuids(&m.next_to_send(0)), vec![1, 3]);
        assert_eq!(uuids(&m.next_to_send(999)), Vec::<u128>::new());
        assert_eq!(m.pending_count(), 3);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        // Proves: an unacknowledged update is resent after min, 2*min, 4*min... capped at max,
        // driven only by the now_ms passed in; retry_all_now makes it due at once with min backoff.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        m.record(update("a", TaskState::Running, 1)).unwrap();
        let mut sends = Vec::new();
        for now in (0..=40_000).step_by(250) {
            if !m.next_to_send(now).is_empty() {
                sends.push(now);
            }
        }
        // 0, +1s, +2s, +4s, +8s, then every 8 s (the cap).
        assert_eq!(
            sends,
            vec![0, 1_000, 3_000, 7_000, 15_000, 23_000, 31_000, 39_000]
        );
        assert_eq!(m.next_deadline_ms(), Some(47_000));
        m.retry_all_now();
        assert_eq!(m.next_deadline_ms(), Some(0));
        assert_eq!(m.next_to_send(40_000).len(), 1);
        assert_eq!(m.next_deadline_ms(), Some(41_000));
    }

    #[test]
    fn ack_releases_the_next_update_at_once() {
        // Proves: acknowledging the in-flight update makes the task's next one due immediately with
        // the backoff reset.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        m.record(update("a", TaskState::Starting, 1)).unwrap();
        m.record(update("a", TaskState::Running, 2)).unwrap();
        assert_eq!(uuids(&m.next_to_send(0)), vec![1]);
        assert_eq!(uuids(&m.next_to_send(1_000)), vec![1]);
        assert_eq!(
            ack(&mut m, "a", 1),
            AckOutcome::Acknowledged {
                next: Some(Uuid::from_u128(2)),
                stream_removed: false
            }
        );
        assert_eq!(uuids(&m.next_to_send(1_001)), vec![2]);
        assert_eq!(uuids(&m.next_to_send(2_001)), vec![2]);
    }

    #[test]
    fn duplicate_and_stale_acks_are_ignored() {
        // Proves: a second ack of the same update is Duplicate, an ack of a queued-but-not-in-flight
        // or never-seen uuid is NotInFlight, an ack for an unknown task is UnknownStream, and none
        // of them changes what is pending.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        m.record(update("a", TaskState::Starting, 1)).unwrap();
        m.record(update("a", TaskState::Running, 2)).unwrap();
        m.record(update("a", TaskState::Running, 3)).unwrap();
        assert_eq!(ack(&mut m, "a", 2), AckOutcome::NotInFlight);
        assert!(matches!(
            ack(&mut m, "a", 1),
            AckOutcome::Acknowledged { .. }
        ));
        assert_eq!(ack(&mut m, "a", 1), AckOutcome::Duplicate);
        assert_eq!(ack(&mut m, "a", 99), AckOutcome::NotInFlight);
        assert_eq!(ack(&mut m, "nope", 2), AckOutcome::UnknownStream);
        assert_eq!(uuids(&m.pending(FW, "a")), vec![2, 3]);
        // The ignored acks were not checkpointed: after a reopen it is still 2 then 3.
        drop(m);
        let (_, recovered) = open(dir.path());
        assert_eq!(uuids(&recovered.pending), vec![2, 3]);
    }

    #[test]
    fn reopen_after_crash_recovers_exactly_the_unacknowledged_updates_in_order() {
        // Proves: dropping the manager without any shutdown (a crash: every record was already
        // fsynced) and reopening yields exactly the unacknowledged updates, in order per task, all
        // due at once; acked ones are neither returned nor resent, and later acks still work.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        m.record(update("a", TaskState::Starting, 1)).unwrap();
        m.record(update("a", TaskState::Running, 2)).unwrap();
        m.record(update("a", TaskState::Finished, 3)).unwrap();
        m.record(update("b", TaskState::Running, 4)).unwrap();
        m.record(update("c", TaskState::Running, 5)).unwrap();
        m.next_to_send(0);
        ack(&mut m, "a", 1);
        ack(&mut m, "c", 5);
        drop(m);

        let (mut m, recovered) = open(dir.path());
        assert_eq!(uuids(&recovered.pending), vec![2, 3, 4]);
        assert!(recovered.truncated.is_empty());
        assert_eq!(uuids(&m.next_to_send(0)), vec![2, 4]);
        assert_eq!(ack(&mut m, "a", 1), AckOutcome::Duplicate);
        assert!(matches!(
            ack(&mut m, "a", 2),
            AckOutcome::Acknowledged { .. }
        ));
        // The stream of c (all acked, not terminal) is kept: nothing to send, still known.
        assert_eq!(ack(&mut m, "c", 5), AckOutcome::Duplicate);
        assert_eq!(uuids(&m.next_to_send(0)), vec![3]);
    }

    #[test]
    fn torn_tail_is_truncated_and_everything_before_kept() {
        // Proves: a half-written last record (cut header, cut payload, bad checksum on the last
        // record, or a zero-filled tail) is cut off with the prefix kept, and the stream then
        // appends cleanly after the cut.
        let full = {
            let mut buf = Vec::new();
            frame(
                &encode(&Record::Update(update("a", TaskState::Running, 9))).unwrap(),
                &mut buf,
            );
            buf
        };
        let mut bad_crc = full.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        let tails: Vec<Vec<u8>> = vec![
            full[..3].to_vec(),
            full[..full.len() - 5].to_vec(),
            bad_crc,
            vec![0; 4096],
        ];
        for tail in tails {
            let dir = tempfile::tempdir().unwrap();
            let (mut m, _) = open(dir.path());
            m.record(update("a", TaskState::Starting, 1)).unwrap();
            m.record(update("a", TaskState::Running, 2)).unwrap();
            ack(&mut m, "a", 1);
            drop(m);
            let path = stream_path(dir.path(), "a");
            let good_len = fs::metadata(&path).unwrap().len();
            OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(&tail)
                .unwrap();

            let (mut m, recovered) = open(dir.path());
            assert_eq!(
                uuids(&recovered.pending),
                vec![2],
                "tail {} bytes",
                tail.len()
            );
            assert_eq!(recovered.truncated, vec![(path.clone(), good_len)]);
            assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
            m.record(update("a", TaskState::Running, 3)).unwrap();
            drop(m);
            let (_, recovered) = open(dir.path());
            assert_eq!(uuids(&recovered.pending), vec![2, 3]);
            assert!(recovered.truncated.is_empty());
        }
    }

    #[test]
    fn corruption_before_the_tail_is_a_named_error_not_a_panic() {
        // Proves: a flipped byte in a record that has good records after it makes open fail with
        // CorruptCheckpoint naming the file and offset, instead of silently dropping later updates;
        // garbage files of random bytes never panic.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        m.record(update("a", TaskState::Starting, 1)).unwrap();
        m.record(update("a", TaskState::Running, 2)).unwrap();
        drop(m);
        let path = stream_path(dir.path(), "a");
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_BYTES + 3] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        match StatusUpdateManager::open(dir.path(), config()) {
            Err(StatusUpdateError::CorruptCheckpoint {
                path: p, offset, ..
            }) => {
                assert_eq!((p, offset), (path.clone(), 0));
            }
            other => panic!("expected CorruptCheckpoint, got {other:?}"),
        }

        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in [1usize, 7, 8, 9, 100, 5000] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            // A junk file that truncates to nothing is deleted with its directory; recreate both.
            fs::create_dir_all(dir.path().join(FW)).unwrap();
            fs::write(&path, &junk).unwrap();
            // Either a truncation or a named error; never a panic.
            let _ = StatusUpdateManager::open(dir.path(), config());
        }
    }

    #[test]
    fn terminal_ack_garbage_collects_the_stream() {
        // Proves: acknowledging a task's terminal update deletes its file (and the framework's
        // directory once empty); nothing may be recorded after a terminal update; a crash between
        // the checkpointed terminal ack and the delete is finished by the next open.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        m.record(update("a", TaskState::Running, 1)).unwrap();
        m.record(update("a", TaskState::Killed, 2)).unwrap();
        m.record(update("b", TaskState::Failed, 3)).unwrap();
        assert!(matches!(
            m.record(update("a", TaskState::Running, 4)),
            Err(StatusUpdateError::AfterTerminal {
                state: TaskState::Killed,
                ..
            })
        ));
        ack(&mut m, "a", 1);
        assert_eq!(
            ack(&mut m, "a", 2),
            AckOutcome::Acknowledged {
                next: None,
                stream_removed: true
            }
        );
        assert!(!stream_path(dir.path(), "a").exists());
        assert!(stream_path(dir.path(), "b").exists());
        assert_eq!(ack(&mut m, "a", 2), AckOutcome::UnknownStream);
        ack(&mut m, "b", 3);
        assert!(!dir.path().join(FW).exists());
        drop(m);

        // Simulate the crash window: a checkpoint whose terminal update is acked but still on disk.
        let (mut m, _) = open(dir.path());
        m.record(update("c", TaskState::Finished, 5)).unwrap();
        let path = stream_path(dir.path(), "c");
        let stream = m
            .streams
            .get_mut(&(FW.to_string(), "c".to_string()))
            .unwrap();
        append(
            stream,
            &encode(&Record::Ack {
                uuid: Uuid::from_u128(5),
            })
            .unwrap(),
        )
        .unwrap();
        drop(m);
        assert!(path.exists());
        let (m, recovered) = open(dir.path());
        assert!(recovered.pending.is_empty());
        assert!(!path.exists());
        assert_eq!(m.pending_count(), 0);
    }

    #[test]
    fn limits_give_named_errors_and_terminal_updates_always_fit() {
        // Proves: the per-task and total limits on unacknowledged updates reject with
        // TooManyPendingForTask / TooManyPending, acks free room, a terminal update is accepted
        // even at the limits, and bad ids, long messages and reused uuids are named errors.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        for n in 1..=4 {
            m.record(update("a", TaskState::Running, n)).unwrap();
        }
        assert!(matches!(
            m.record(update("a", TaskState::Running, 5)),
            Err(StatusUpdateError::TooManyPendingForTask { limit: 4, .. })
        ));
        m.record(update("b", TaskState::Running, 6)).unwrap();
        m.record(update("b", TaskState::Running, 7)).unwrap();
        assert!(matches!(
            m.record(update("c", TaskState::Running, 8)),
            Err(StatusUpdateError::TooManyPending { limit: 6 })
        ));
        m.record(update("a", TaskState::Failed, 9)).unwrap();
        m.record(update("c", TaskState::Lost, 10)).unwrap();
        ack(&mut m, "b", 6);
        m.record(update("d", TaskState::Running, 11)).unwrap();

        assert!(matches!(
            m.record(update("d", TaskState::Running, 11)),
            Err(StatusUpdateError::DuplicateUuid { .. })
        ));
        let mut u = update("../x", TaskState::Running, 12);
        assert!(matches!(
            m.record(u.clone()),
            Err(StatusUpdateError::InvalidField {
                field: "task_id",
                ..
            })
        ));
        u.task_id = "e".into();
        u.framework_id = "a/b".into();
        assert!(matches!(
            m.record(u.clone()),
            Err(StatusUpdateError::InvalidField {
                field: "framework_id",
                ..
            })
        ));
        u.framework_id = FW.into();
        u.message = "x".repeat(STATUS_MESSAGE_BYTES_MAX + 1);
        assert!(matches!(
            m.record(u),
            Err(StatusUpdateError::InvalidField {
                field: "message",
                ..
            })
        ));
        // Rejected updates leave no file behind.
        assert!(!stream_path(dir.path(), "e").exists());

        let bad = StatusUpdateConfig {
            retry_min_ms: 0,
            ..config()
        };
        assert!(matches!(
            StatusUpdateManager::open(dir.path(), bad),
            Err(StatusUpdateError::InvalidField {
                field: "retry_min_ms",
                ..
            })
        ));
    }

    #[test]
    fn long_running_streams_are_compacted() {
        // Proves: a task acknowledging many updates has its file rewritten to only its pending
        // updates, leaving no tmp file, and a reopen still recovers exactly the pending ones.
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = open(dir.path());
        let path = stream_path(dir.path(), "a");
        let n = u128::from(STREAM_COMPACT_RECORDS);
        for i in 1..=n {
            m.record(update("a", TaskState::Running, i)).unwrap();
            assert!(matches!(
                ack(&mut m, "a", i),
                AckOutcome::Acknowledged { .. }
            ));
        }
        m.record(update("a", TaskState::Running, n + 1)).unwrap();
        let len = fs::metadata(&path).unwrap().len();
        assert!(len < 4096, "file is {len} bytes after compaction");
        assert_eq!(fs::read_dir(dir.path().join(FW)).unwrap().count(), 1);
        drop(m);
        let (_, recovered) = open(dir.path());
        assert_eq!(uuids(&recovered.pending), vec![n + 1]);
    }

    #[test]
    fn task_states_use_mesos_names_and_terminality() {
        // Proves: states serialize with Mesos's TASK_* names and is_terminal matches Mesos.
        assert_eq!(
            serde_json::to_string(&TaskState::GoneByOperator).unwrap(),
            "\"TASK_GONE_BY_OPERATOR\""
        );
        assert!(TaskState::Lost.is_terminal() && TaskState::Finished.is_terminal());
        assert!(!TaskState::Unreachable.is_terminal() && !TaskState::Running.is_terminal());
    }
}
