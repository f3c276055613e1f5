//! The async driver of one coord server: gRPC `Session` streams in, the core in the middle, the
//! transaction log and snapshots on their own threads.
//!
//! Duties, in the order they matter:
//! 1. One tokio task owns the `ServerCore`. It selects over a bounded inbox (client messages), the
//!    storage thread's completions and a tick interval, and carries out the core's actions in the
//!    order they were emitted.
//! 2. `Action::Persist` transactions go to the log thread in batches. The log thread appends every
//!    batch waiting, fsyncs once (group commit) and only then reports `Persisted`; the core applies
//!    and answers a write only after that, so an acknowledged write is a durable write.
//! 3. A snapshot is written on a thread of its own from an O(1) clone of the tree, so neither
//!    appends nor applies stall while it is written; the log rolls at that point and old files are
//!    purged once the snapshot is durable.
//! 4. Each connection has a bounded outbound queue. A client that does not read its replies fast
//!    enough to keep it from filling is disconnected rather than let the server's memory grow.
//! 5. A storage failure (a failed write or fsync) stops the server: it cannot promise durability.

use crate::convert;
use crate::data_tree::DataTree;
use crate::server::{Action, ConnId, Input, Now, ServerConfig, ServerCore, ServerMsg};
use crate::storage::{self, LogOptions, SnapshotWriter, StorageError, TxnLog};
use crate::txn::{PASSWORD_BYTES, Txn};
use crate::zxid::{SessionId, Zxid};
use drover_proto::v1;
use drover_proto::v1::coord_server::{Coord, CoordServer};
use futures::Stream;
use std::collections::HashMap;
use std::io::BufWriter;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, instrument, warn};

/// Client messages waiting for the core.
const INBOX_CAP: usize = 16_384;
/// Server messages waiting to be written to one client.
const OUTBOUND_CAP: usize = 8_192;
/// Completions waiting for the core.
const COMPLETIONS_CAP: usize = 1_024;
/// Inbox messages the core handles before it flushes actions (batches the log's group commit).
const INBOX_BATCH_MAX: usize = 512;

#[derive(Clone, Debug)]
pub struct CoordConfig {
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    /// How often the core looks for expired sessions.
    pub tick_interval: Duration,
    /// Snapshots kept by purge (with the logs they need).
    pub snapshots_to_keep: usize,
    pub log: LogOptions,
}

impl CoordConfig {
    pub fn new(data_dir: PathBuf) -> CoordConfig {
        CoordConfig {
            data_dir,
            server: ServerConfig::default(),
            tick_interval: Duration::from_millis(50),
            snapshots_to_keep: 3,
            log: LogOptions::default(),
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum DriverError {
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot recover transaction {zxid} from the log: {reason}")]
    Recovery { zxid: Zxid, reason: String },
    #[error("the log thread is not taking work: {0}")]
    LogThreadGone(String),
    #[error("cannot start the log thread: {0}")]
    Thread(#[source] std::io::Error),
}

enum CoreMsg {
    Open {
        conn: ConnId,
        outbound: mpsc::Sender<ServerMsg>,
    },
    Input(Input),
}

enum Completion {
    Persisted(Zxid),
    Failed(StorageError),
}

enum LogCmd {
    Append(Vec<Txn>),
    /// Roll the log so the next file starts after this snapshot, then write it.
    Snapshot(Box<DataTree>),
}

/// Handle to a running coord server: its gRPC service and a way to wait for it to stop.
pub struct CoordHandle {
    pub service: CoordServer<CoordService>,
    /// Resolves when the core stops, with the reason if it failed.
    pub stopped: oneshot::Receiver<Result<(), DriverError>>,
}

/// Recovers the state in `config.data_dir` (snapshot + log tail, truncating a torn tail) and starts
/// the core and the storage threads. The caller mounts `service` on a tonic server.
pub fn start(config: CoordConfig) -> Result<CoordHandle, DriverError> {
    let started = Instant::now();
    let (log, recovered) = TxnLog::open(&config.data_dir, config.log.clone())?;
    let mut tree = match recovered.snapshot {
        Some((zxid, bytes)) => {
            DataTree::read_snapshot(&bytes).map_err(|e| DriverError::Recovery {
                zxid: Zxid(zxid),
                reason: e.to_string(),
            })?
        }
        None => DataTree::new(),
    };
    let replayed = recovered.records.len();
    for (zxid, bytes) in recovered.records {
        let txn = Txn::decode(&bytes).map_err(|e| DriverError::Recovery {
            zxid: Zxid(zxid),
            reason: e.to_string(),
        })?;
        if txn.zxid != Zxid(zxid) {
            return Err(DriverError::Recovery {
                zxid: Zxid(zxid),
                reason: format!("record holds transaction {}", txn.zxid),
            });
        }
        tree.apply(&txn);
    }
    info!(
        dir = %config.data_dir.display(),
        last_zxid = %tree.last_applied(),
        replayed,
        truncated_bytes = recovered.truncated_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "coord state recovered"
    );
    let clock = Clock::new();
    let core = ServerCore::new(config.server.clone(), tree, clock.now());

    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAP);
    let (done_tx, done_rx) = mpsc::channel(COMPLETIONS_CAP);
    let (log_tx, log_rx) = std::sync::mpsc::sync_channel(config.server.txns_in_flight_max + 64);
    let log_dir = config.data_dir.clone();
    let keep = config.snapshots_to_keep;
    let log_done = done_tx.clone();
    std::thread::Builder::new()
        .name("coord-log".into())
        .spawn(move || log_thread(log, log_dir, keep, log_rx, log_done))
        .map_err(DriverError::Thread)?;
    let (stopped_tx, stopped) = oneshot::channel();
    let tick = config.tick_interval;
    tokio::spawn(async move {
        let result = core_task(core, clock, tick, inbox_rx, done_rx, log_tx).await;
        let _ = stopped_tx.send(result);
    });
    let service = CoordService {
        inbox: inbox_tx,
        next_conn: Arc::new(AtomicU64::new(1)),
    };
    let service = CoordServer::new(service)
        .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX);
    Ok(CoordHandle { service, stopped })
}

/// Monotonic and wall time for the core, which reads no clock itself.
struct Clock {
    origin: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }
    fn now(&self) -> Now {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Now {
            mono_ms: self.origin.elapsed().as_millis() as u64,
            wall_ms,
        }
    }
}

async fn core_task(
    mut core: ServerCore,
    clock: Clock,
    tick: Duration,
    mut inbox: mpsc::Receiver<CoreMsg>,
    mut done: mpsc::Receiver<Completion>,
    log: std::sync::mpsc::SyncSender<LogCmd>,
) -> Result<(), DriverError> {
    let mut outbound: HashMap<ConnId, mpsc::Sender<ServerMsg>> = HashMap::new();
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut actions = Vec::new();
    let mut batch = Vec::new();
    loop {
        let now;
        tokio::select! {
            biased;
            completion = done.recv() => {
                now = clock.now();
                match completion {
                    Some(Completion::Persisted(upto)) => core.step(now, Input::Persisted { upto }, &mut actions),
                    Some(Completion::Failed(e)) => {
                        error!(error = %e, "coord storage failed; stopping this server");
                        return Err(e.into());
                    }
                    None => return Ok(()),
                }
            }
            msg = inbox.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                now = clock.now();
                let mut next = Some(msg);
                let mut handled = 0;
                while let Some(msg) = next.take() {
                    match msg {
                        CoreMsg::Open { conn, outbound: tx } => { outbound.insert(conn, tx); }
                        CoreMsg::Input(input) => {
                            if let Input::Disconnected { conn } = input { outbound.remove(&conn); }
                            core.step(now, input, &mut actions);
                        }
                    }
                    handled += 1;
                    if handled < INBOX_BATCH_MAX { next = inbox.try_recv().ok(); }
                }
            }
            _ = ticker.tick() => {
                now = clock.now();
                core.step(now, Input::Tick, &mut actions);
            }
        }
        let _ = now;
        for action in actions.drain(..) {
            match action {
                Action::Persist(txn) => batch.push(txn),
                Action::Send { conn, msg } => {
                    if let Some(tx) = outbound.get(&conn)
                        && tx.try_send(msg).is_err()
                    {
                        warn!(conn, "client is not reading its replies; disconnecting it");
                        outbound.remove(&conn);
                    }
                }
                Action::CloseConn { conn } => {
                    outbound.remove(&conn);
                }
                Action::Snapshot(tree) => {
                    if !batch.is_empty() {
                        send_log(&log, LogCmd::Append(std::mem::take(&mut batch)))?;
                    }
                    send_log(&log, LogCmd::Snapshot(tree))?;
                }
            }
        }
        if !batch.is_empty() {
            send_log(&log, LogCmd::Append(std::mem::take(&mut batch)))?;
        }
    }
}

fn send_log(log: &std::sync::mpsc::SyncSender<LogCmd>, cmd: LogCmd) -> Result<(), DriverError> {
    // The queue holds more batches than the core lets transactions be in flight, so it is never
    // full; a closed queue means the log thread died, which it reports through `done`.
    log.try_send(cmd)
        .map_err(|e| DriverError::LogThreadGone(e.to_string()))
}

/// Appends, group-commits and reports. Runs until the core drops its sender.
fn log_thread(
    mut log: TxnLog,
    dir: PathBuf,
    keep: usize,
    rx: std::sync::mpsc::Receiver<LogCmd>,
    done: mpsc::Sender<Completion>,
) {
    let mut snapshot_running: Option<std::thread::JoinHandle<()>> = None;
    let fail = |e: StorageError| {
        let _ = done.blocking_send(Completion::Failed(e));
    };
    while let Ok(first) = rx.recv() {
        let mut cmds = vec![first];
        while let Ok(more) = rx.try_recv() {
            cmds.push(more);
        }
        let mut last = None;
        for cmd in cmds {
            match cmd {
                LogCmd::Append(txns) => {
                    for txn in txns {
                        if let Err(e) = log.append(txn.zxid.0, &txn.encode()) {
                            return fail(e);
                        }
                        last = Some(txn.zxid);
                    }
                }
                LogCmd::Snapshot(tree) => {
                    if snapshot_running.as_ref().is_some_and(|h| !h.is_finished()) {
                        warn!("a snapshot is still being written; skipping this one");
                        continue;
                    }
                    let zxid = tree.last_applied();
                    if let Err(e) = log.roll(log.last_zxid().max(zxid.0) + 1) {
                        return fail(e);
                    }
                    let dir = dir.clone();
                    snapshot_running = std::thread::Builder::new()
                        .name("coord-snapshot".into())
                        .spawn(move || write_snapshot(&dir, &tree, keep))
                        .map_err(|e| warn!(error = %e, "cannot start the snapshot thread"))
                        .ok();
                }
            }
        }
        if let Some(upto) = last {
            if let Err(e) = log.sync() {
                return fail(e);
            }
            if done.blocking_send(Completion::Persisted(upto)).is_err() {
                return;
            }
        }
    }
}

fn write_snapshot(dir: &std::path::Path, tree: &DataTree, keep: usize) {
    let started = Instant::now();
    let zxid = tree.last_applied();
    let result = (|| -> Result<(), StorageError> {
        let writer = SnapshotWriter::create(dir, zxid.0)?;
        let mut buffered = BufWriter::with_capacity(1 << 20, writer);
        tree.write_snapshot(&mut buffered)
            .map_err(|e| StorageError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        let writer = buffered.into_inner().map_err(|e| StorageError::Io {
            path: dir.to_path_buf(),
            source: e.into_error(),
        })?;
        writer.finish()?;
        storage::purge(dir, keep)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            info!(%zxid, nodes = tree.node_count(), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot written")
        }
        // The log still holds everything; the next snapshot tries again.
        Err(e) => error!(%zxid, error = %e, "snapshot failed"),
    }
}

/// The gRPC `Coord` service: one `Session` stream per client connection.
#[derive(Clone)]
pub struct CoordService {
    inbox: mpsc::Sender<CoreMsg>,
    next_conn: Arc<AtomicU64>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Coord for CoordService {
    type SessionStream = SessionStream;

    #[instrument(skip_all)]
    async fn session(
        &self,
        request: Request<Streaming<v1::ClientMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let mut incoming = request.into_inner();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTBOUND_CAP);
        self.inbox
            .send(CoreMsg::Open { conn, outbound: tx })
            .await
            .map_err(|_| Status::unavailable("coord server is stopping"))?;
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            read_client(conn, &mut incoming, &inbox).await;
            let _ = inbox
                .send(CoreMsg::Input(Input::Disconnected { conn }))
                .await;
        });
        let stream = ReceiverStream::new(rx).map(|msg| Ok(server_msg_to_proto(msg)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Forwards one client's messages to the core until the stream ends.
async fn read_client(
    conn: ConnId,
    incoming: &mut Streaming<v1::ClientMessage>,
    inbox: &mpsc::Sender<CoreMsg>,
) {
    let mut connected = false;
    while let Some(msg) = incoming.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(status) => {
                tracing::debug!(conn, %status, "client stream ended");
                return;
            }
        };
        let input = match msg.body {
            Some(v1::client_message::Body::Connect(c)) if !connected => {
                connected = true;
                let mut new_password = [0u8; PASSWORD_BYTES];
                rand::Rng::fill(&mut rand::rng(), &mut new_password[..]);
                Input::Connect {
                    conn,
                    session: SessionId(c.session_id),
                    password: c.password,
                    timeout_ms: c.timeout_ms,
                    last_zxid_seen: Zxid(c.last_zxid_seen),
                    new_password,
                }
            }
            // Anything before Connect, or a second Connect, is a protocol error: drop the stream.
            _ if !connected => return,
            Some(v1::client_message::Body::Connect(_)) => return,
            Some(v1::client_message::Body::Request(r)) => {
                let (xid, op) = match convert::request_from_proto(r) {
                    Ok((xid, op)) => (xid, Ok(op)),
                    Err((xid, e)) => (xid, Err(e)),
                };
                Input::Request { conn, xid, op }
            }
            Some(v1::client_message::Body::Ping(_)) => Input::Ping { conn },
            Some(v1::client_message::Body::Close(_)) => Input::CloseSession { conn },
            None => return,
        };
        if inbox.send(CoreMsg::Input(input)).await.is_err() {
            return;
        }
    }
}

fn server_msg_to_proto(msg: ServerMsg) -> v1::ServerMessage {
    use v1::server_message::Body;
    let body = match msg {
        ServerMsg::Connected {
            session,
            password,
            timeout_ms,
            server_id,
        } => Body::Connected(v1::Connected {
            session_id: session.0,
            password: password.to_vec(),
            timeout_ms,
            server_id,
        }),
        ServerMsg::Reply { xid, zxid, result } => {
            Body::Reply(convert::reply_to_proto(xid, zxid, &result))
        }
        ServerMsg::Event(e) => Body::Event(convert::event_to_proto(&e)),
        ServerMsg::Pong { zxid } => Body::Pong(v1::Pong { zxid: zxid.0 }),
        ServerMsg::Ended(reason) => Body::Ended(match reason {
            None => v1::SessionEnded {
                code: v1::ErrorCode::Ok as i32,
                message: "session closed".into(),
            },
            Some(e) => v1::SessionEnded {
                code: convert::error_code_to_proto(e.code()) as i32,
                message: e.to_string(),
            },
        }),
    };
    v1::ServerMessage { body: Some(body) }
}
