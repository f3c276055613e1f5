//! The async Rust client of coord, the way frameworks, the CLI and the master use the store.
//!
//! A `Client` is a cheap, cloneable handle: a bounded sender to one background task
//! (`connection`) that owns the gRPC `Session` stream, the requests in flight and the watch
//! registrations. Nothing is shared behind a lock; the handle only reads two atomics (session
//! state and the last zxid seen) that the task publishes.
//!
//! Semantics follow ZooKeeper's client. Requests carry increasing xids and the server answers a
//! connection's requests in order. When the connection breaks, the requests in flight fail with
//! `ConnectionLoss` (they may or may not have been applied; the caller decides whether to retry),
//! and the task reconnects to the next address with the same session, then re-registers its
//! watches with one `SetWatches` so the server fires whatever changed meanwhile. The session is
//! expired when the server says so, or when no server could be reached for a whole session
//! timeout (the server will have expired it, so ephemerals and leadership are gone); every call
//! then fails with `SessionExpired`. Start at `Client::connect`.

mod connection;
mod watchers;

use crate::Op;
use crate::acl::{self, AclEntry};
use crate::convert::ServerError;
use crate::op::{
    ANY_VERSION, CreateMode, ErrorCode, OpResult, ReadOp, Stat, WatchEvent, WriteOp,
    ZNODE_BYTES_MAX,
};
use crate::zxid::{SessionId, Zxid};
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use watchers::OneShotKind;

/// Commands queued from handles to the connection task. Callers wait (bounded by their request
/// timeout) when it is full, which is the back-pressure towards a slow server.
const COMMANDS_CAP: usize = 256;

/// Session events buffered per `session_events()` subscriber; a subscriber that falls further
/// behind skips the oldest (it can still read the current state with `Client::state`).
const SESSION_EVENTS_CAP: usize = 64;

/// Events buffered per `WatchStream`. A consumer that falls this far behind loses its stream
/// (it ends), because the connection task must never block on one consumer, and silently
/// skipping events would make the stream lie. Re-read the state and watch again then.
pub const WATCH_STREAM_EVENTS_MAX: usize = 1024;

/// How a client connects and how long it waits. Every wait has a field here.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Session timeout asked of the server (which clamps it to its own bounds). The server
    /// expires the session when it hears nothing from the client for this long.
    pub session_timeout: Duration,
    /// Longest wait for one server to accept the TCP/HTTP2 connection and answer `Connected`.
    pub connect_timeout: Duration,
    /// How long `Client::connect` keeps trying the addresses, round robin with backoff, before
    /// it gives up with `NoServer`. Every address is tried at least once.
    pub establish_timeout: Duration,
    /// Longest wait for the answer to one call, queueing included.
    pub request_timeout: Duration,
    /// Most requests sent and not yet answered; further calls wait for room.
    pub requests_in_flight_max: usize,
    /// `None`: plaintext. Otherwise servers are verified as masters against its CA, and its
    /// certificate (if any) is presented.
    pub tls: Option<drover_security::TlsConfig>,
    /// The ACL token the session stream is opened with (a master with `--acl` admits a coord
    /// session only with a valid token or a master certificate). `Debug` redacts it.
    pub token: Option<drover_security::Secret>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            establish_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            requests_in_flight_max: 1024,
            tls: None,
            token: None,
        }
    }
}

/// Why a call failed.
#[derive(thiserror::Error, Clone, Debug)]
pub enum ClientError {
    /// The server refused the op (no node, bad version, ...); `code()` says which.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The connection broke while the request was in flight: it may or may not have been applied.
    #[error("lost the connection to {addr}; the request may or may not have been applied")]
    ConnectionLoss { addr: String },
    /// The session is gone, and with it its ephemeral nodes and watches. Make a new client.
    #[error("session {session} has expired")]
    SessionExpired { session: SessionId },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("cannot reach any coord server at {addrs} ({last_error})")]
    NoServer { addrs: String, last_error: String },
    /// `close()` was called, or every handle was dropped.
    #[error("the coord client is closed")]
    Closed,
    /// The server answered with a result that does not fit the request (a server bug).
    #[error("unexpected reply to {what}: {detail}")]
    UnexpectedReply { what: String, detail: String },
}

impl ClientError {
    /// The coord error code of this failure, when it has one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            ClientError::ConnectionLoss { .. } => Some(ErrorCode::ConnectionLoss),
            ClientError::SessionExpired { .. } => Some(ErrorCode::SessionExpired),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Connected,
    /// Reconnecting; calls wait (up to their timeout) for a new connection.
    Disconnected,
    Expired,
    Closed,
}

/// A change of `SessionState`, as `session_events()` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    Connected,
    Disconnected,
    Reconnected,
    Expired,
    Closed,
}

impl SessionEvent {
    fn is_terminal(self) -> bool {
        matches!(self, SessionEvent::Expired | SessionEvent::Closed)
    }
}

/// What the handles and the connection task share: written only by the task.
struct Shared {
    state: AtomicU8,
    last_zxid_seen: AtomicU64,
    next_watcher_id: AtomicU64,
    events: broadcast::Sender<SessionEvent>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            state: AtomicU8::new(state_to_u8(SessionState::Connected)),
            last_zxid_seen: AtomicU64::new(0),
            next_watcher_id: AtomicU64::new(1),
            events: broadcast::channel(SESSION_EVENTS_CAP).0,
        }
    }
    fn state(&self) -> SessionState {
        match self.state.load(Ordering::Acquire) {
            0 => SessionState::Connected,
            1 => SessionState::Disconnected,
            2 => SessionState::Expired,
            _ => SessionState::Closed,
        }
    }
    fn set_state(&self, state: SessionState, event: SessionEvent) {
        self.state.store(state_to_u8(state), Ordering::Release);
        // No subscriber is fine.
        let _ = self.events.send(event);
    }
    fn see_zxid(&self, zxid: u64) {
        self.last_zxid_seen.fetch_max(zxid, Ordering::AcqRel);
    }
}

fn state_to_u8(s: SessionState) -> u8 {
    match s {
        SessionState::Connected => 0,
        SessionState::Disconnected => 1,
        SessionState::Expired => 2,
        SessionState::Closed => 3,
    }
}

/// A watch to register together with a read, once the read succeeds.
enum NewWatch {
    OneShot {
        kind: OneShotKind,
        tx: watchers::OneShotSender,
    },
    Persistent {
        recursive: bool,
        id: u64,
        tx: mpsc::Sender<WatchEvent>,
    },
}

enum Command {
    Request {
        op: Op,
        watch: Option<NewWatch>,
        reply: oneshot::Sender<Result<OpResult>>,
    },
    /// A `WatchStream` was dropped.
    Unwatch {
        path: String,
        recursive: bool,
        id: u64,
    },
    Close {
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A handle to one coord session. Clones share the session.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    session_id: SessionId,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens a new session on one of `addrs` (`host:port`), trying them round robin until one
    /// answers or `options.establish_timeout` has passed.
    pub async fn connect(addrs: Vec<String>, options: ClientOptions) -> Result<Client> {
        let shared = Arc::new(Shared::new());
        let (commands, rx) = mpsc::channel(COMMANDS_CAP);
        let request_timeout = options.request_timeout;
        let session_id = connection::spawn(addrs, options, Arc::clone(&shared), rx).await?;
        Ok(Client {
            commands,
            shared,
            session_id,
            request_timeout,
        })
    }

    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    pub fn state(&self) -> SessionState {
        self.shared.state()
    }

    /// The highest zxid this client has seen in a reply, a pong or a watch event.
    pub fn last_zxid_seen(&self) -> Zxid {
        Zxid(self.shared.last_zxid_seen.load(Ordering::Acquire))
    }

    /// The session's state changes: first the current state, then every change; it ends after
    /// `Expired` or `Closed`.
    pub fn session_events(&self) -> BoxStream<'static, SessionEvent> {
        // Subscribe before reading the state, so no change falls between the two.
        let rx = self.shared.events.subscribe();
        let first = match self.shared.state() {
            SessionState::Connected => SessionEvent::Connected,
            SessionState::Disconnected => SessionEvent::Disconnected,
            SessionState::Expired => SessionEvent::Expired,
            SessionState::Closed => SessionEvent::Closed,
        };
        Box::pin(futures::stream::unfold(
            (Some(first), rx, false),
            |(first, mut rx, done)| async move {
                if done {
                    return None;
                }
                if let Some(e) = first {
                    return Some((e, (None, rx, e.is_terminal())));
                }
                loop {
                    match rx.recv().await {
                        Ok(e) => return Some((e, (None, rx, e.is_terminal()))),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    /// Creates `path` and returns the path created (with its sequence suffix for sequential
    /// modes).
    pub async fn create(
        &self,
        path: &str,
        data: impl Into<Bytes>,
        mode: CreateMode,
    ) -> Result<String> {
        Ok(self.create_with_stat(path, data, mode).await?.0)
    }

    /// Creates `path` as an empty persistent node unless it exists (the parent must exist).
    pub async fn ensure_node(&self, path: &str) -> Result<()> {
        match self.create(path, Vec::new(), CreateMode::Persistent).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::NodeExists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `create` with the ZooKeeper default ACL, `world:anyone:cdrwa`.
    pub async fn create_with_stat(
        &self,
        path: &str,
        data: impl Into<Bytes>,
        mode: CreateMode,
    ) -> Result<(String, Stat)> {
        self.create_with_acl(path, data, mode, acl::open_acl())
            .await
    }

    /// Creates `path` with `acl` (`acl::parse_acl` reads zkCli's text form; `auth::cdrwa` gives
    /// the node to this session's authenticated ids). Needs CREATE on the parent.
    pub async fn create_with_acl(
        &self,
        path: &str,
        data: impl Into<Bytes>,
        mode: CreateMode,
        acl: Vec<AclEntry>,
    ) -> Result<(String, Stat)> {
        let data = data.into();
        check_size(path, &data)?;
        check_acl(path, &acl)?;
        let op = Op::Write(WriteOp::Create {
            path: path.into(),
            data,
            mode,
            acl,
        });
        match self.call(op, None).await? {
            OpResult::Created { path, stat } => Ok((path, stat)),
            other => Err(unexpected("create", path, &other)),
        }
    }

    /// Deletes `path`, if its version is `version` (any version for `None`).
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<()> {
        let op = Op::Write(WriteOp::Delete {
            path: path.into(),
            version: version.unwrap_or(ANY_VERSION),
        });
        match self.call(op, None).await? {
            OpResult::Empty | OpResult::Deleted => Ok(()),
            other => Err(unexpected("delete", path, &other)),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<Option<Stat>> {
        let op = Op::Read(ReadOp::Exists {
            path: path.into(),
            watch: false,
        });
        exists_result(path, self.call(op, None).await?)
    }

    pub async fn get(&self, path: &str) -> Result<(Bytes, Stat)> {
        let op = Op::Read(ReadOp::GetData {
            path: path.into(),
            watch: false,
        });
        data_result(path, self.call(op, None).await?)
    }

    /// Replaces the data of `path`, if its version is `version` (any version for `None`).
    pub async fn set(
        &self,
        path: &str,
        data: impl Into<Bytes>,
        version: Option<i32>,
    ) -> Result<Stat> {
        let data = data.into();
        check_size(path, &data)?;
        let op = Op::Write(WriteOp::SetData {
            path: path.into(),
            data,
            version: version.unwrap_or(ANY_VERSION),
        });
        match self.call(op, None).await? {
            OpResult::Stat(stat) => Ok(stat),
            other => Err(unexpected("set", path, &other)),
        }
    }

    /// The ACL of `path` and its stat (`aversion` is the ACL's version). Needs READ or ADMIN;
    /// without ADMIN, digest ids come back as `user:x`.
    pub async fn get_acl(&self, path: &str) -> Result<(Vec<AclEntry>, Stat)> {
        let op = Op::Read(ReadOp::GetAcl { path: path.into() });
        match self.call(op, None).await? {
            OpResult::Acl { acl, stat } => Ok((acl, stat)),
            other => Err(unexpected("get_acl", path, &other)),
        }
    }

    /// Replaces the ACL of `path` if its ACL version is `version` (any for `None`). Needs ADMIN.
    pub async fn set_acl(
        &self,
        path: &str,
        acl: Vec<AclEntry>,
        version: Option<i32>,
    ) -> Result<Stat> {
        check_acl(path, &acl)?;
        let op = Op::Write(WriteOp::SetAcl {
            path: path.into(),
            acl,
            version: version.unwrap_or(ANY_VERSION),
        });
        match self.call(op, None).await? {
            OpResult::Stat(stat) => Ok(stat),
            other => Err(unexpected("set_acl", path, &other)),
        }
    }

    /// Authenticates this session as `scheme`/`auth` (`"digest"`, `b"user:password"`) on its
    /// connection. Like ZooKeeper's client, it keeps what was accepted and sends it again after
    /// every reconnect, before anything else.
    pub async fn add_auth(&self, scheme: &str, auth: impl Into<Bytes>) -> Result<()> {
        let op = Op::Read(ReadOp::AddAuth {
            scheme: scheme.into(),
            auth: auth.into(),
        });
        match self.call(op, None).await? {
            OpResult::Empty => Ok(()),
            other => Err(unexpected("add_auth", scheme, &other)),
        }
    }

    /// The names (not paths) of the children of `path`.
    pub async fn children(&self, path: &str) -> Result<Vec<String>> {
        let op = Op::Read(ReadOp::GetChildren {
            path: path.into(),
            watch: false,
        });
        children_result(path, self.call(op, None).await?)
    }

    /// Applies `ops` all or nothing. On failure, the error is the failing op's, with its index
    /// in `ServerError::op_index`.
    pub async fn multi(&self, ops: Vec<WriteOp>) -> Result<Vec<OpResult>> {
        for op in &ops {
            if let WriteOp::Create { path, data, .. } | WriteOp::SetData { path, data, .. } = op {
                check_size(path, data)?;
            }
        }
        let kinds: Vec<WriteOp> = ops.clone();
        match self.call(Op::Write(WriteOp::Multi(ops)), None).await? {
            OpResult::Multi(results) if results.len() == kinds.len() => {
                let mut out = Vec::with_capacity(results.len());
                for (op, result) in kinds.iter().zip(results) {
                    // Successful multis hold only successes (convert guarantees it).
                    let result = result.map_err(|e| ClientError::UnexpectedReply {
                        what: "multi".into(),
                        detail: e.to_string(),
                    })?;
                    // Empty results share one wire shape; name them after the op that made them.
                    out.push(match (op, result) {
                        (WriteOp::Delete { .. }, OpResult::Empty) => OpResult::Deleted,
                        (WriteOp::Check { .. }, OpResult::Empty) => OpResult::Checked,
                        (_, r) => r,
                    });
                }
                Ok(out)
            }
            other => Err(ClientError::UnexpectedReply {
                what: format!("multi of {} ops", kinds.len()),
                detail: format!("{other:?}"),
            }),
        }
    }

    /// Waits until the server this client is connected to has applied every write committed
    /// before the call, so the next read sees them.
    pub async fn sync(&self, path: &str) -> Result<()> {
        let op = Op::Read(ReadOp::Sync { path: path.into() });
        match self.call(op, None).await? {
            OpResult::Empty => Ok(()),
            other => Err(unexpected("sync", path, &other)),
        }
    }

    /// `exists`, leaving a one-shot watch that fires when the node is created, deleted or its
    /// data changes.
    pub async fn exists_watch(&self, path: &str) -> Result<(Option<Stat>, Watch)> {
        let (tx, watch) = self.one_shot();
        // The connection task files it as a data or an exist watch, after the answer.
        let new = NewWatch::OneShot {
            kind: OneShotKind::Exist,
            tx,
        };
        let op = Op::Read(ReadOp::Exists {
            path: path.into(),
            watch: true,
        });
        Ok((exists_result(path, self.call(op, Some(new)).await?)?, watch))
    }

    /// `get`, leaving a one-shot watch that fires when the data changes or the node is deleted.
    pub async fn get_watch(&self, path: &str) -> Result<(Bytes, Stat, Watch)> {
        let (tx, watch) = self.one_shot();
        let new = NewWatch::OneShot {
            kind: OneShotKind::Data,
            tx,
        };
        let op = Op::Read(ReadOp::GetData {
            path: path.into(),
            watch: true,
        });
        let (data, stat) = data_result(path, self.call(op, Some(new)).await?)?;
        Ok((data, stat, watch))
    }

    /// `children`, leaving a one-shot watch that fires when a child is added or removed or the
    /// node is deleted.
    pub async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        let (tx, watch) = self.one_shot();
        let new = NewWatch::OneShot {
            kind: OneShotKind::Child,
            tx,
        };
        let op = Op::Read(ReadOp::GetChildren {
            path: path.into(),
            watch: true,
        });
        Ok((
            children_result(path, self.call(op, Some(new)).await?)?,
            watch,
        ))
    }

    /// A persistent watch on `path` (and, with `recursive`, on every descendant, without
    /// NodeChildrenChanged events). Dropping the stream removes the watch. The stream ends when
    /// the session ends, or if its consumer falls `WATCH_STREAM_EVENTS_MAX` events behind.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(WATCH_STREAM_EVENTS_MAX);
        let id = self.shared.next_watcher_id.fetch_add(1, Ordering::Relaxed);
        let new = NewWatch::Persistent { recursive, id, tx };
        let op = Op::Read(ReadOp::AddWatch {
            path: path.into(),
            recursive,
        });
        match self.call(op, Some(new)).await? {
            OpResult::Empty => Ok(WatchStream {
                rx,
                path: path.into(),
                recursive,
                id,
                commands: self.commands.clone(),
            }),
            other => Err(unexpected("watch", path, &other)),
        }
    }

    /// Closes the session: the server deletes its ephemeral nodes and acknowledges. Waits for
    /// the acknowledgement up to the request timeout. Later calls fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let after = self.request_timeout;
        let wait = async {
            if self
                .commands
                .send(Command::Close { reply: tx })
                .await
                .is_err()
            {
                return self.terminal_result();
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => self.terminal_result(),
            }
        };
        match tokio::time::timeout(after, wait).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: "closing the session".into(),
                after,
            }),
        }
    }

    fn one_shot(&self) -> (watchers::OneShotSender, Watch) {
        let (tx, rx) = oneshot::channel();
        (
            tx,
            Watch {
                rx,
                shared: Arc::clone(&self.shared),
                session_id: self.session_id,
            },
        )
    }

    async fn call(&self, op: Op, watch: Option<NewWatch>) -> Result<OpResult> {
        let after = self.request_timeout;
        let what = describe(&op);
        let (tx, rx) = oneshot::channel();
        let wait = async {
            let cmd = Command::Request {
                op,
                watch,
                reply: tx,
            };
            if self.commands.send(cmd).await.is_err() {
                return Err(self.terminal_error());
            }
            rx.await.unwrap_or_else(|_| Err(self.terminal_error()))
        };
        match tokio::time::timeout(after, wait).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout { what, after }),
        }
    }

    /// The error for a call made after the connection task has ended.
    fn terminal_error(&self) -> ClientError {
        terminal_error(&self.shared, self.session_id)
    }

    /// `close()` after the task ended: an expired session is as gone as a closed one.
    fn terminal_result(&self) -> Result<()> {
        match self.shared.state() {
            SessionState::Expired | SessionState::Closed => Ok(()),
            _ => Err(ClientError::Closed),
        }
    }
}

fn terminal_error(shared: &Shared, session: SessionId) -> ClientError {
    match shared.state() {
        SessionState::Expired => ClientError::SessionExpired { session },
        _ => ClientError::Closed,
    }
}

/// Refuses an ACL the server would refuse (and, above all, an empty one, which on the wire would
/// read as "no ACL given", the open default).
fn check_acl(path: &str, acl: &[AclEntry]) -> Result<()> {
    acl::validate(acl).map_err(|reason| {
        let err = crate::op::OpError::InvalidAcl {
            path: path.into(),
            reason,
        };
        ClientError::Server(ServerError {
            code: err.code(),
            message: err.to_string(),
            op_index: None,
        })
    })
}

/// Refuses oversized data here rather than letting the server do it, so one oversized call
/// cannot push a message past the transport limit and break the connection for everyone.
fn check_size(path: &str, data: &Bytes) -> Result<()> {
    if data.len() > ZNODE_BYTES_MAX {
        let err = crate::op::OpError::DataTooLarge {
            path: path.into(),
            len: data.len(),
            max: ZNODE_BYTES_MAX,
        };
        return Err(ClientError::Server(ServerError {
            code: err.code(),
            message: err.to_string(),
            op_index: None,
        }));
    }
    Ok(())
}

fn exists_result(path: &str, r: OpResult) -> Result<Option<Stat>> {
    match r {
        OpResult::Stat(stat) => Ok(Some(stat)),
        OpResult::NoStat => Ok(None),
        other => Err(unexpected("exists", path, &other)),
    }
}

fn data_result(path: &str, r: OpResult) -> Result<(Bytes, Stat)> {
    match r {
        OpResult::Data { data, stat } => Ok((data, stat)),
        other => Err(unexpected("get", path, &other)),
    }
}

fn children_result(path: &str, r: OpResult) -> Result<Vec<String>> {
    match r {
        OpResult::Children { children, .. } => Ok(children),
        other => Err(unexpected("children", path, &other)),
    }
}

fn unexpected(op: &str, path: &str, got: &OpResult) -> ClientError {
    ClientError::UnexpectedReply {
        what: format!("{op} {path}"),
        detail: format!("{got:?}"),
    }
}

/// A short name of a request for error messages: `get /a`, `multi of 3 ops`.
fn describe(op: &Op) -> String {
    match op {
        Op::Write(WriteOp::Create { path, .. }) => format!("create {path}"),
        Op::Write(WriteOp::Delete { path, .. }) => format!("delete {path}"),
        Op::Write(WriteOp::SetData { path, .. }) => format!("set {path}"),
        Op::Write(WriteOp::Check { path, .. }) => format!("check {path}"),
        Op::Write(WriteOp::Multi(ops)) => format!("multi of {} ops", ops.len()),
        Op::Write(WriteOp::SetAcl { path, .. }) => format!("set_acl {path}"),
        Op::Read(ReadOp::GetAcl { path }) => format!("get_acl {path}"),
        Op::Read(ReadOp::AddAuth { scheme, .. }) => format!("add_auth {scheme}"),
        Op::Read(ReadOp::GetData { path, .. }) => format!("get {path}"),
        Op::Read(ReadOp::Exists { path, .. }) => format!("exists {path}"),
        Op::Read(ReadOp::GetChildren { path, .. }) => format!("children {path}"),
        Op::Read(ReadOp::AddWatch { path, .. }) => format!("watch {path}"),
        Op::Read(ReadOp::RemoveWatches { path }) => format!("remove watches on {path}"),
        Op::Read(ReadOp::SetWatches(_)) => "set watches".into(),
        Op::Read(ReadOp::Sync { path }) => format!("sync {path}"),
    }
}

/// A one-shot watch: resolves to the event that fired it, or to an error when the session ends
/// first (`SessionExpired`, `Closed`).
pub struct Watch {
    rx: oneshot::Receiver<Result<WatchEvent>>,
    shared: Arc<Shared>,
    session_id: SessionId,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Future for Watch {
    type Output = Result<WatchEvent>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(Err(terminal_error(&self.shared, self.session_id))),
        }
    }
}

/// The events of a persistent watch. Ends when the session ends or the consumer falls too far
/// behind (see `WATCH_STREAM_EVENTS_MAX`). Dropping it removes the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<WatchEvent>,
    path: String,
    recursive: bool,
    id: u64,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("path", &self.path)
            .field("recursive", &self.recursive)
            .finish_non_exhaustive()
    }
}

impl WatchStream {
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Stream for WatchStream {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        // Drop cannot wait. If the queue is full the connection task still finds the closed
        // stream when the next event for the path arrives, and removes the watch then.
        let _ = self.commands.try_send(Command::Unwatch {
            path: std::mem::take(&mut self.path),
            recursive: self.recursive,
            id: self.id,
        });
    }
}
