//! The agent's file API, `drover.v1.AgentFiles` (`proto/agent_files.proto`), served on
//! `--listen`: a task's sandbox `stdout` or `stderr`, read from an offset, optionally followed
//! until the run ends; and the list of a task's runs. `drover logs` reads through it.
//!
//! Rules:
//! - Ids are checked exactly as for a launch ([`validate_ids`], [`validate_run_id`]) before any
//!   path is built, so a request never names a path outside the sandboxes; files are opened
//!   with `O_NOFOLLOW | O_NONBLOCK` and must be regular files (the task owns its sandbox and may
//!   replace its own `stdout` with a symlink or a FIFO; the agent reads as root).
//! - Which run is the latest, and whether a run is over, comes from the driver's task table
//!   ([`Query::Task`]) first and from the sandbox's files second: a run is over once `exit.json`
//!   exists, or when the table no longer tracks it as going and no supervisor of it lives.
//! - A followed stream reads to the end of the file, then polls (`follow_poll`) for appended
//!   bytes; once the run is over it reads what is left and ends. It also ends when the client
//!   goes away or the agent stops (`UNAVAILABLE`).
//! - Chunks are at most [`CHUNK_BYTES_MAX`]; at most `streams_max` streams are open at once.

use crate::path_io::PathIoError;
use std::fs::OpenOptions;
use std::io::{self, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1::{
    self, SandboxFile,
    agent_files_server::{AgentFiles, AgentFilesServer},
};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use super::driver::{Query, TaskView};
use super::records::task_sandboxes_dir;
use super::sandbox_gc::{RunOnDisk, scan_task_dir};
use super::task_info::validate_ids;
use super::tasks::TaskKey;
use super::{AgentConfig, defaults};
use crate::sandbox::{Sandbox, TaskState as RunState, inspect, validate_run_id};

/// Largest `FileChunk.data`.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Chunks of one stream waiting to be sent (each at most [`CHUNK_BYTES_MAX`]).
const CHUNKS_QUEUED_MAX: usize = 4;
/// Metadata key on a `NOT_FOUND` status: `removed` when the sandbox GC removed the sandboxes.
pub const SANDBOX_METADATA_KEY: &str = "drover-sandbox";
/// Value of [`SANDBOX_METADATA_KEY`] for sandboxes the GC removed.
pub const SANDBOX_REMOVED: &str = "removed";

/// The file API's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileApiConfig {
    /// How often a followed file is checked for appended bytes (and its run for its end).
    pub follow_poll: Duration,
    /// Most `ReadFile` streams open at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub streams_max: usize,
    /// How long open streams get to end when the agent stops, before the server is dropped.
    pub stop_grace: Duration,
}

impl Default for FileApiConfig {
    fn default() -> Self {
        FileApiConfig {
            follow_poll: Duration::from_millis(defaults::FILE_FOLLOW_POLL_MS),
            streams_max: defaults::FILE_STREAMS_MAX,
            stop_grace: Duration::from_millis(defaults::FILE_API_STOP_GRACE_MS),
        }
    }
}

impl FileApiConfig {
    /// Checks what flags cannot; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.follow_poll.is_zero() {
            return Err(("file_follow_poll", "must be > 0".into()));
        }
        if self.streams_max == 0 {
            return Err(("file_streams_max", "must be > 0".into()));
        }
        Ok(())
    }
}

/// Why a file request failed; one `tonic::Status` code each.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(
        "the sandbox of task {task_id} (framework {framework_id}) was removed by the agent's sandbox GC"
    )]
    RemovedByGc {
        framework_id: String,
        task_id: String,
    },
    #[error("no sandbox of task {task_id} (framework {framework_id}) on this agent")]
    NoSandbox {
        framework_id: String,
        task_id: String,
    },
    #[error("task {task_id} (framework {framework_id}) has no run {run_id} on this agent{hint}")]
    NoRun {
        framework_id: String,
        task_id: String,
        run_id: String,
        /// Empty, or why it may be gone.
        hint: &'static str,
    },
    #[error("offset {offset} is past the end of {file} ({size} bytes)")]
    OffsetPastEnd {
        file: &'static str,
        offset: u64,
        size: u64,
    },
    #[error("{limit} file streams are open, the most this agent serves at once")]
    TooManyStreams { limit: usize },
    #[error("the agent is stopping")]
    Stopping,
    #[error("{file} of the run is not a regular file with a single link")]
    NotAFile { file: &'static str },
    #[error(transparent)]
    Io(#[from] PathIoError),
}

impl From<FileError> for Status {
    fn from(e: FileError) -> Status {
        let text = match &e {
            FileError::Io(io) => format!("{e}: {}", io.source),
            _ => e.to_string(),
        };
        match e {
            FileError::InvalidArgument { .. } => Status::invalid_argument(text),
            FileError::RemovedByGc { .. } => {
                let mut s = Status::not_found(text);
                s.metadata_mut().insert(
                    SANDBOX_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static(SANDBOX_REMOVED),
                );
                s
            }
            FileError::NoSandbox { .. } | FileError::NoRun { .. } => Status::not_found(text),
            FileError::OffsetPastEnd { .. } => Status::out_of_range(text),
            FileError::TooManyStreams { .. } => Status::resource_exhausted(text),
            FileError::Stopping => Status::unavailable(text),
            FileError::NotAFile { .. } => Status::failed_precondition(text),
            FileError::Io(_) => Status::internal(text),
        }
    }
}

/// The `AgentFiles` service.
#[derive(Clone)]
pub struct FileService {
    inner: Arc<Inner>,
}

struct Inner {
    /// The work dir (absolute).
    root: PathBuf,
    config: FileApiConfig,
    queries: mpsc::Sender<Query>,
    streams: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

/// One run picked for reading.
struct PickedRun {
    run_id: String,
    dir: PathBuf,
}

impl FileService {
    pub(super) fn new(
        root: PathBuf,
        config: FileApiConfig,
        queries: mpsc::Sender<Query>,
        stop: watch::Receiver<bool>,
    ) -> FileService {
        let streams = Arc::new(Semaphore::new(config.streams_max));
        FileService {
            inner: Arc::new(Inner {
                root,
                config,
                queries,
                streams,
                stop,
            }),
        }
    }
}

impl Inner {
    async fn task_view(&self, key: &TaskKey) -> Result<TaskView, FileError> {
        let (reply, answer) = oneshot::channel();
        self.queries
            .send(Query::Task {
                key: key.clone(),
                reply,
            })
            .await
            .map_err(|_| FileError::Stopping)?;
        answer.await.map_err(|_| FileError::Stopping)
    }

    /// The task's runs on disk, oldest first.
    async fn runs_on_disk(&self, key: &TaskKey) -> Result<Vec<RunOnDisk>, FileError> {
        let dir = task_sandboxes_dir(&self.root, key);
        let k = key.clone();
        let mut runs = tokio::task::spawn_blocking(move || scan_task_dir(&k, &dir))
            .await
            .map_err(|_| FileError::Stopping)?;
        runs.sort_by(|a, b| (a.started_at_ms, &a.run_id).cmp(&(b.started_at_ms, &b.run_id)));
        Ok(runs)
    }

    fn not_found(key: &TaskKey, view: &TaskView) -> FileError {
        let (framework_id, task_id) = (key.framework_id.clone(), key.task_id.clone());
        if view.removed_by_gc {
            FileError::RemovedByGc {
                framework_id,
                task_id,
            }
        } else {
            FileError::NoSandbox {
                framework_id,
                task_id,
            }
        }
    }

    /// The run to read: the one asked for, else the one the table tracks, else the latest on
    /// disk.
    async fn pick_run(
        &self,
        key: &TaskKey,
        run_id: &str,
        view: &TaskView,
    ) -> Result<PickedRun, FileError> {
        let task_dir = task_sandboxes_dir(&self.root, key);
        if !run_id.is_empty() {
            let dir = task_dir.join(run_id);
            if is_dir(&dir).await {
                return Ok(PickedRun {
                    run_id: run_id.to_string(),
                    dir,
                });
            }
            return Err(FileError::NoRun {
                framework_id: key.framework_id.clone(),
                task_id: key.task_id.clone(),
                run_id: run_id.to_string(),
                hint: if view.removed_by_gc {
                    " (the sandbox GC removed runs of it)"
                } else {
                    ""
                },
            });
        }
        if let Some((current, _)) = &view.run {
            let dir = task_dir.join(current);
            if is_dir(&dir).await {
                return Ok(PickedRun {
                    run_id: current.clone(),
                    dir,
                });
            }
        }
        match self.runs_on_disk(key).await?.pop() {
            Some(r) => Ok(PickedRun {
                run_id: r.run_id,
                dir: r.dir,
            }),
            None => Err(Inner::not_found(key, view)),
        }
    }

    /// True once nothing more will be appended to the run's files.
    async fn run_over(&self, key: &TaskKey, run: &PickedRun) -> Result<bool, FileError> {
        let sandbox = Sandbox::at(&run.dir);
        if tokio::fs::try_exists(sandbox.exit_path())
            .await
            .unwrap_or(false)
        {
            return Ok(true);
        }
        let view = self.task_view(key).await?;
        if view
            .run
            .as_ref()
            .is_some_and(|(r, going)| *going && *r == run.run_id)
        {
            return Ok(false);
        }
        let running = tokio::task::spawn_blocking(move || {
            matches!(inspect(&sandbox), Ok(RunState::Running { .. }))
        })
        .await
        .unwrap_or(false);
        Ok(!running)
    }

    async fn open_stream(
        self: Arc<Self>,
        req: v1::ReadFileRequest,
    ) -> Result<ReceiverStream<Result<v1::FileChunk, Status>>, FileError> {
        let key = check_ids(&req.framework_id, &req.task_id)?;
        let file = file_name(req.file)?;
        if !req.run_id.is_empty() {
            validate_run_id(&req.run_id).map_err(|e| FileError::InvalidArgument {
                field: "run_id",
                reason: id_reason(e),
            })?;
        }
        let permit =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| FileError::TooManyStreams {
                    limit: self.config.streams_max,
                })?;
        let view = self.task_view(&key).await?;
        let run = self.pick_run(&key, &req.run_id, &view).await?;
        // The task's own directory: the task may have replaced the files (see `open_regular`).
        let path = Sandbox::at(&run.dir).output_dir().join(file);
        let mut opened = open_regular(&path, file).await?;
        let size = opened.as_ref().map_or(0, |(_, len)| *len);
        if req.offset > size {
            return Err(FileError::OffsetPastEnd {
                file,
                offset: req.offset,
                size,
            });
        }
        if let Some((f, _)) = &mut opened {
            f.seek(SeekFrom::Start(req.offset))
                .await
                .map_err(|source| FileError::Io(PathIoError::new("seek", path.clone(), source)))?;
        }
        tracing::debug!(task_id = %key.task_id, framework_id = %key.framework_id, run_id = %run.run_id, file, offset = req.offset, follow = req.follow, "streaming a sandbox file");
        let (tx, rx) = mpsc::channel(CHUNKS_QUEUED_MAX);
        let stream = FileStream {
            inner: self.clone(),
            key,
            run,
            file,
            path,
            offset: req.offset,
            follow: req.follow,
            _permit: permit,
        };
        tokio::spawn(stream.run(opened.map(|(f, _)| f), tx));
        Ok(ReceiverStream::new(rx))
    }

    async fn list_runs(&self, req: v1::ListRunsRequest) -> Result<v1::ListRunsResponse, FileError> {
        let key = check_ids(&req.framework_id, &req.task_id)?;
        let view = self.task_view(&key).await?;
        let runs = self.runs_on_disk(&key).await?;
        if runs.is_empty() {
            return Err(Inner::not_found(&key, &view));
        }
        let going = view
            .run
            .as_ref()
            .filter(|(_, going)| *going)
            .map(|(r, _)| r);
        Ok(v1::ListRunsResponse {
            runs: runs
                .into_iter()
                .map(|r| {
                    let output = Sandbox::at(&r.dir).output_dir();
                    let stdout_bytes = file_len(&output.join("stdout"));
                    let stderr_bytes = file_len(&output.join("stderr"));
                    v1::RunInfo {
                        ended: r.finished_at_ms.is_some() || (r.ended && going != Some(&r.run_id)),
                        started_at_ms: r.started_at_ms,
                        finished_at_ms: r.finished_at_ms.unwrap_or(0),
                        run_id: r.run_id,
                        stdout_bytes,
                        stderr_bytes,
                    }
                })
                .collect(),
        })
    }
}

/// One `ReadFile` stream.
struct FileStream {
    inner: Arc<Inner>,
    key: TaskKey,
    run: PickedRun,
    file: &'static str,
    path: PathBuf,
    /// Where the next read starts.
    offset: u64,
    follow: bool,
    _permit: OwnedSemaphorePermit,
}

impl FileStream {
    async fn run(
        mut self,
        mut file: Option<tokio::fs::File>,
        tx: mpsc::Sender<Result<v1::FileChunk, Status>>,
    ) {
        let mut stop = self.inner.stop.clone();
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        let mut first = true;
        // Set once the run is over: what is left is read, then the stream ends.
        let mut over = false;
        loop {
            if file.is_none() {
                // Not created yet when the stream started (the run was starting).
                match open_regular(&self.path, self.file).await {
                    Ok(Some((mut f, _))) => {
                        if let Err(source) = f.seek(SeekFrom::Start(self.offset)).await {
                            let e =
                                FileError::Io(PathIoError::new("seek", self.path.clone(), source));
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                        file = Some(f);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
            let n = match &mut file {
                Some(f) => match f.read(&mut buf).await {
                    Ok(n) => n,
                    Err(source) => {
                        let e = FileError::Io(PathIoError::new("read", self.path.clone(), source));
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                },
                None => 0,
            };
            if n > 0 || first {
                first = false;
                let chunk = v1::FileChunk {
                    run_id: self.run.run_id.clone(),
                    offset: self.offset,
                    data: buf[..n].to_vec(),
                };
                self.offset += n as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                if n > 0 {
                    continue;
                }
            }
            if !self.follow || over {
                return;
            }
            match self.inner.run_over(&self.key, &self.run).await {
                Ok(true) => {
                    over = true;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            if *stop.borrow() {
                let _ = tx.send(Err(FileError::Stopping.into())).await;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.follow_poll) => {}
                _ = tx.closed() => return,
                _ = stop.changed() => {
                    let _ = tx.send(Err(FileError::Stopping.into())).await;
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AgentFiles for FileService {
    type ReadFileStream = ReceiverStream<Result<v1::FileChunk, Status>>;

    #[tracing::instrument(skip_all, fields(task_id = %request.get_ref().task_id, framework_id = %request.get_ref().framework_id))]
    async fn read_file(
        &self,
        request: Request<v1::ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        let stream = self
            .inner
            .clone()
            .open_stream(request.into_inner())
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "ReadFile refused");
                Status::from(e)
            })?;
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(task_id = %request.get_ref().task_id, framework_id = %request.get_ref().framework_id))]
    async fn list_runs(
        &self,
        request: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let response = self.inner.list_runs(request.into_inner()).await?;
        Ok(Response::new(response))
    }
}

/// The task's key, once both ids pass the checks a launch passes; the error names the request
/// field.
fn check_ids(framework_id: &str, task_id: &str) -> Result<TaskKey, FileError> {
    validate_ids(framework_id, task_id).map_err(|e| FileError::InvalidArgument {
        field: match e.field {
            "framework.id" => "framework_id",
            _ => "task_id",
        },
        reason: e.reason,
    })?;
    Ok(TaskKey::new(framework_id, task_id))
}

fn id_reason(e: crate::sandbox::SandboxError) -> String {
    match e {
        crate::sandbox::SandboxError::InvalidId { reason, .. } => reason,
        other => other.to_string(),
    }
}

fn file_name(file: i32) -> Result<&'static str, FileError> {
    match SandboxFile::try_from(file) {
        Ok(SandboxFile::Stdout) => Ok("stdout"),
        Ok(SandboxFile::Stderr) => Ok("stderr"),
        _ => Err(FileError::InvalidArgument {
            field: "file",
            reason: format!("{file} is not SANDBOX_FILE_STDOUT (1) or SANDBOX_FILE_STDERR (2)"),
        }),
    }
}

async fn is_dir(path: &Path) -> bool {
    tokio::fs::symlink_metadata(path)
        .await
        .is_ok_and(|m| m.is_dir())
}

fn file_len(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len())
}

/// Opens a sandbox file for reading without following a symlink or blocking on a FIFO; `None`
/// when it does not exist (yet). Returns the file and its length.
async fn open_regular(
    path: &Path,
    file: &'static str,
) -> Result<Option<(tokio::fs::File, u64)>, FileError> {
    let p = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(FileError::NotAFile { file });
            }
            Err(source) => {
                return Err(FileError::Io(PathIoError::new("open", p, source)));
            }
        };
        let meta = f
            .metadata()
            .map_err(|source| FileError::Io(PathIoError::new("stat", p.clone(), source)))?;
        // A second link would be the task's hard link to a file it may not read itself (where
        // `fs.protected_hardlinks` is off); the agent reads as root.
        if !meta.is_file() || std::os::unix::fs::MetadataExt::nlink(&meta) != 1 {
            return Err(FileError::NotAFile { file });
        }
        Ok(Some((f, meta.len())))
    })
    .await
    .map_err(|_| FileError::Stopping)??;
    Ok(opened.map(|(f, len)| (tokio::fs::File::from_std(f), len)))
}

/// Who may read sandboxes over the file API when it serves TLS.
pub const FILE_API_ROLES: &[drover_security::Role] = &[
    drover_security::Role::Operator,
    drover_security::Role::Master,
];

/// Serves the file API on `listener` until `stop` is set.
pub(super) fn spawn_server(
    listener: TcpListener,
    service: FileService,
    config: &AgentConfig,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let svc = AgentFilesServer::new(service)
        .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX);
    let keepalive_interval = config.timing.keepalive_interval;
    let keepalive_timeout = config.timing.keepalive_timeout;
    let address = listener
        .local_addr()
        .map_or_else(|_| config.listen.clone(), |a| a.to_string());
    let tls = config.tls.clone();
    tokio::spawn(async move {
        tracing::info!(%address, tls = tls.is_some(), "file API listening");
        // Task output is for operators (`drover logs`) and masters, never for another agent or
        // a framework's certificate.
        let guard =
            drover_security::RoleGuard::new("drover.v1.AgentFiles", FILE_API_ROLES, tls.is_some());
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive_interval))
            .http2_keepalive_timeout(Some(keepalive_timeout))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                svc, guard,
            ));
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        let result = match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
                    .await
            }
            Some(tls) => match drover_security::grpc_incoming(listener, &tls, "file API") {
                Ok(incoming) => router.serve_with_incoming_shutdown(incoming, stopped).await,
                Err(e) => {
                    tracing::error!(%address, error = %e, "the file API cannot serve TLS");
                    return;
                }
            },
        };
        if let Err(e) = result {
            tracing::error!(%address, error = %e, "the file API stopped");
        }
    })
}

/// Waits up to `grace` for the server to finish its open streams, then drops it.
pub(super) async fn stop_server(server: JoinHandle<()>, grace: Duration) {
    let abort = server.abort_handle();
    if tokio::time::timeout(grace, server).await.is_err() {
        tracing::warn!(
            ?grace,
            "file API streams did not end in time; dropping them"
        );
        abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_leave_the_sandboxes_are_invalid_arguments_naming_the_field() {
        // Proves the file API refuses, before building any path, ids the launch path refuses.
        for (fw, task, field) in [
            ("..", "t", "framework_id"),
            ("a/b", "t", "framework_id"),
            ("", "t", "framework_id"),
            ("fw", "../../etc", "task_id"),
            ("fw", "..", "task_id"),
            ("fw", "a/b", "task_id"),
            ("fw", "", "task_id"),
            ("fw", "x\0y", "task_id"),
        ] {
            match check_ids(fw, task) {
                Err(FileError::InvalidArgument { field: f, .. }) => {
                    assert_eq!(f, field, "{fw:?} {task:?}")
                }
                other => panic!("{fw:?}/{task:?}: expected InvalidArgument, got {other:?}"),
            }
        }
        assert!(check_ids("fw-1", "web.1.abc").is_ok());
        assert!(file_name(0).is_err());
        assert!(file_name(7).is_err());
        assert_eq!(file_name(SandboxFile::Stderr as i32).unwrap(), "stderr");
    }

    #[tokio::test]
    async fn symlinks_and_fifos_are_not_read() {
        // Proves a task cannot make the agent read outside its sandbox by replacing stdout with
        // a symlink or a hard link, nor hang it with a FIFO.
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        let link = tmp.path().join("stdout");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(matches!(
            open_regular(&link, "stdout").await,
            Err(FileError::NotAFile { .. })
        ));
        let fifo = tmp.path().join("stderr");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            open_regular(&fifo, "stderr").await,
            Err(FileError::NotAFile { .. })
        ));
        assert!(
            open_regular(&tmp.path().join("none"), "stdout")
                .await
                .unwrap()
                .is_none()
        );
        let (_, len) = open_regular(&secret, "stdout").await.unwrap().unwrap();
        assert_eq!(len, 6);
        let hard = tmp.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        assert!(matches!(
            open_regular(&hard, "stdout").await,
            Err(FileError::NotAFile { .. })
        ));
    }
}
