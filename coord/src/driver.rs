//! The async driver of one coord replica: gRPC client `Session` streams and peer links in, the
//! sans-IO `Replica` in the middle, the transaction log written by the core itself.
//!
//! Duties, in the order they matter:
//! 1. One tokio task owns the `Replica`. It selects over a bounded inbox (client and peer
//!    messages) and a tick interval, and carries out the replica's actions in the order they were
//!    emitted.
//! 2. After each batch of inputs, the core first writes every peer message into its link's socket
//!    (`peer_net`: plain TCP, no task in between), so a proposal travels while the leader fsyncs.
//!    Then the `Persist`ed transactions are appended and fsynced once (group commit), by the log
//!    thread under load (the core goes on with new inputs meanwhile) or, under light load, by the
//!    core itself, which then tells the replica at once what is durable: no thread hand-off (two
//!    wakeups, ~50 µs each on a small VM) on the commit path (`CoordConfig::inline_log_txns_per_sec_max`).
//!    ZAB acknowledges (and so commits and answers) only what is durable. Installing a leader's
//!    snapshot goes the same way, in order with appends.
//! 3. `PersistEpochs` is written and fsynced before the next action is carried out: a follower's
//!    promise not to go back to an older epoch must survive a crash before it is sent.
//! 4. Periodic snapshots are written on a thread of their own from an O(1) clone of the tree, so
//!    neither appends nor applies stall; the log rolls at that point and old files are purged once
//!    the snapshot is durable.
//! 5. Each client connection and each peer link has a bounded outbound queue. A client that does
//!    not read fast enough is disconnected; a peer link that is full or broken drops messages and
//!    reports the peer down, which ZAB tolerates (a gap makes a follower resync).
//! 6. A storage failure (a failed write or fsync) stops the replica: it cannot promise durability.

mod peer_net;

pub use peer_net::PEER_HELLO_MAGIC;

use crate::convert;
use crate::data_tree::DataTree;
use crate::replica::{Action, Input, Replica};
use crate::server::{self, ConnId, Now, ServerConfig, ServerMsg};
use crate::storage::{self, LogOptions, SnapshotWriter, StorageError, TxnLog};
use crate::txn::{PASSWORD_BYTES, Txn};
use crate::zab::{self, PeerId, PeerMsg, ZabConfig};
use crate::zxid::{SessionId, Zxid};
use drover_proto::v1;
use drover_proto::v1::coord_server::{Coord, CoordServer};
use drover_proto::v1::peer_server::{Peer, PeerServer};
use futures::Stream;
use peer_net::{LinkTimings, OutLink, PeerListeners, PeerTls};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, instrument, warn};

/// Client and peer messages waiting for the core.
const INBOX_CAP: usize = 65_536;
/// Server messages waiting to be written to one client.
const OUTBOUND_CAP: usize = 8_192;
/// Largest peer message (a snapshot travels in one message).
pub const PEER_MESSAGE_BYTES_MAX: usize = 1 << 30;
/// Inbox messages the core handles before it flushes actions (batches the log's group commit).
const INBOX_BATCH_MAX: usize = 1_024;
/// The core writes the log itself only for batches of at most this many transactions...
const INLINE_TXNS_MAX: usize = 2;
/// ...and only while the log's rate, counted over windows this long, is light.
const INLINE_RATE_WINDOW: Duration = Duration::from_millis(10);
/// Completions waiting for the core.
const COMPLETIONS_CAP: usize = 1_024;
/// Batches waiting for the log thread; the core blocks (briefly) when it is full.
const LOG_QUEUE_CAP: usize = 4_096;
/// Reconnection backoff to a peer.
const PEER_BACKOFF_MIN: Duration = Duration::from_millis(20);
const PEER_BACKOFF_MAX: Duration = Duration::from_millis(1_000);
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct CoordConfig {
    pub data_dir: PathBuf,
    /// The client pipeline's settings, among them `super_ids`: the ACL super ids (ZooKeeper's
    /// superDigest), which must be the same on every replica.
    pub server: ServerConfig,
    pub zab: ZabConfig,
    /// gRPC address of every peer but this one (where `Peer.Endpoint` tells where its peer
    /// links are accepted).
    pub peers: BTreeMap<PeerId, String>,
    /// Port on which this replica accepts peer links, on the IP its peers reach its gRPC server
    /// at; 0 (the default) takes any free port. Peers learn it through `Peer.Endpoint`.
    pub peer_port: u16,
    /// How often the replica looks at its timers.
    pub tick_interval: Duration,
    /// Snapshots kept by purge (with the logs they need).
    pub snapshots_to_keep: usize,
    pub log: LogOptions,
    /// Under light load the core appends and fsyncs a small batch itself instead of handing it to
    /// the log thread (two thread wakeups less per commit, ~0.1 ms on a small VM): while the log
    /// takes at most this many transactions per second, the log thread is idle and no input
    /// waits. Under load the thread writes, so the core goes on with new inputs while it fsyncs.
    /// None: always the thread.
    pub inline_log_txns_per_sec_max: Option<u32>,
    /// This master's TLS material: peer links (both ways) use it when given.
    pub tls: Option<drover_security::TlsConfig>,
}

impl CoordConfig {
    /// A one-replica ensemble.
    pub fn new(data_dir: PathBuf) -> CoordConfig {
        CoordConfig {
            data_dir,
            server: ServerConfig::default(),
            zab: ZabConfig::new(1, vec![1]),
            peers: BTreeMap::new(),
            peer_port: 0,
            tick_interval: Duration::from_millis(10),
            snapshots_to_keep: 3,
            log: LogOptions::default(),
            inline_log_txns_per_sec_max: Some(4_000),
            tls: None,
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
    #[error("peer TLS: {0}")]
    Tls(#[from] drover_security::TlsError),
    #[error("cannot read or write the epochs file {path}: {source}")]
    Epochs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// This replica's view of the ensemble's leadership.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Established leader (this replica or another), if any.
    pub leader: Option<PeerId>,
    /// This replica is the established leader.
    pub leading: bool,
    pub epoch: u32,
}

impl Leadership {
    fn of(replica: &Replica) -> Leadership {
        let zab = replica.zab();
        Leadership {
            leader: zab.leader(),
            leading: zab.is_leading(),
            epoch: zab.current_epoch(),
        }
    }
}

enum CoreMsg {
    Open {
        conn: ConnId,
        outbound: mpsc::Sender<ServerMsg>,
    },
    Input(Input),
    Status(oneshot::Sender<ReplicaStatus>),
}

/// What [`StatusQuery::get`] answers: the ZAB peer's view plus what the server has applied.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    pub zab: zab::ZabStatus,
    /// Wall time (Unix ms) at which this replica's [`Leadership`] last changed: when it began to
    /// lead or follow the current leader, or stopped.
    pub leadership_since_wall_ms: i64,
    /// The server's tree holds every transaction up to here.
    pub last_applied: Zxid,
    pub znodes: usize,
    pub sessions: usize,
}

/// Asks the running replica how it stands ([`ReplicaStatus`]). Cloneable; answered by the core
/// between two inputs, so it costs one inbox message.
#[derive(Clone, Debug)]
pub struct StatusQuery {
    inbox: mpsc::Sender<CoreMsg>,
}

impl StatusQuery {
    /// None when the replica has stopped, or does not answer within `timeout`.
    pub async fn get(&self, timeout: Duration) -> Option<ReplicaStatus> {
        let (tx, rx) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            self.inbox.send(CoreMsg::Status(tx)).await.ok()?;
            rx.await.ok()
        })
        .await
        .ok()
        .flatten()
    }
}

/// Handle to a running coord replica: its gRPC services and a way to wait for it to stop.
pub struct CoordHandle {
    pub service: CoordServer<CoordService>,
    pub peer_service: PeerServer<PeerService>,
    /// Who leads the ensemble as this replica sees it; changes as elections happen. The embedding
    /// master leads exactly while `leading` is true here.
    pub leadership: watch::Receiver<Leadership>,
    /// This replica's role, epoch, zxids and peers, on request.
    pub status: StatusQuery,
    /// Resolves when the core stops, with the reason if it failed.
    pub stopped: oneshot::Receiver<Result<(), DriverError>>,
}

/// Recovers the state in `config.data_dir` (snapshot + log, truncating a torn tail) and starts the
/// core, the log thread and the peer links. The caller mounts both services on a tonic server.
pub fn start(config: CoordConfig) -> Result<CoordHandle, DriverError> {
    let started = Instant::now();
    let (log, recovered) = TxnLog::open(&config.data_dir, config.log.clone())?;
    let tree = match &recovered.snapshot {
        Some((zxid, bytes)) => {
            DataTree::read_snapshot(bytes).map_err(|e| DriverError::Recovery {
                zxid: Zxid(*zxid),
                reason: e.to_string(),
            })?
        }
        None => DataTree::new(),
    };
    let mut txns = Vec::with_capacity(recovered.records.len());
    for (zxid, bytes) in &recovered.records {
        let txn = Txn::decode(bytes).map_err(|e| DriverError::Recovery {
            zxid: Zxid(*zxid),
            reason: e.to_string(),
        })?;
        if txn.zxid != Zxid(*zxid) {
            return Err(DriverError::Recovery {
                zxid: Zxid(*zxid),
                reason: format!("record holds transaction {}", txn.zxid),
            });
        }
        txns.push(txn);
    }
    let (accepted_epoch, current_epoch) = read_epochs(&config.data_dir)?;
    info!(
        dir = %config.data_dir.display(),
        snapshot = %tree.last_applied(),
        logged = txns.len(),
        truncated_bytes = recovered.truncated_bytes,
        accepted_epoch,
        current_epoch,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "coord state recovered"
    );
    let durable = zab::Durable {
        accepted_epoch,
        current_epoch,
        snapshot_zxid: tree.last_applied(),
        log: txns,
    };
    let clock = Clock::new();
    let mut first_actions = Vec::new();
    let replica = Replica::new(
        config.server.clone(),
        config.zab.clone(),
        tree,
        durable,
        clock.now(),
        &mut first_actions,
    );

    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAP);
    let (done_tx, done_rx) = mpsc::channel(COMPLETIONS_CAP);
    let (log_tx, log_rx) = std::sync::mpsc::sync_channel(LOG_QUEUE_CAP);
    let log = Arc::new(Mutex::new(LogState {
        log,
        dir: config.data_dir.clone(),
        keep: config.snapshots_to_keep,
        installs: 0,
        snapshot_running: None,
    }));
    let thread_log = Arc::clone(&log);
    std::thread::Builder::new()
        .name("coord-log".into())
        .spawn(move || log_thread(thread_log, log_rx, done_tx))
        .map_err(DriverError::Thread)?;
    let peer_tls = config.tls.as_ref().map(PeerTls::new).transpose()?;
    let timings = LinkTimings {
        backoff_min: PEER_BACKOFF_MIN,
        backoff_max: PEER_BACKOFF_MAX,
        connect_timeout: PEER_CONNECT_TIMEOUT,
    };
    let mut links = HashMap::new();
    for (&peer, addr) in &config.peers {
        links.insert(
            peer,
            OutLink::spawn(
                config.zab.id,
                peer,
                addr.clone(),
                timings,
                peer_tls.clone(),
                inbox_tx.clone(),
            ),
        );
    }
    let (stopped_tx, stopped) = oneshot::channel();
    let (leadership_tx, leadership) = watch::channel(Leadership::of(&replica));
    let core = Core {
        leadership: leadership_tx,
        leadership_since_wall_ms: clock.now().wall_ms,
        replica,
        clock,
        data_dir: config.data_dir.clone(),
        outbound: HashMap::new(),
        links,
        log,
        log_tx,
        log_thread_batches: 0,
        pending: Vec::new(),
        inline_log_txns_max: config
            .inline_log_txns_per_sec_max
            .map(|per_sec| u64::from(per_sec) * INLINE_RATE_WINDOW.as_millis() as u64 / 1000),
        log_rate: LogRate::new(),
    };
    let tick = config.tick_interval;
    tokio::spawn(async move {
        let result = core.run(tick, first_actions, inbox_rx, done_rx).await;
        let _ = stopped_tx.send(result);
    });
    let listeners = Arc::new(PeerListeners::new(
        config.zab.id,
        config.zab.voters.clone(),
        config.peer_port,
        peer_tls,
        inbox_tx.clone(),
    ));
    let status = StatusQuery {
        inbox: inbox_tx.clone(),
    };
    let service = CoordService {
        inbox: inbox_tx.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
    };
    let service = CoordServer::new(service)
        .max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(drover_proto::MESSAGE_BYTES_MAX);
    let peer_service = PeerServer::new(PeerService {
        inbox: inbox_tx,
        voters: config.zab.voters.clone(),
        listeners,
    })
    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    Ok(CoordHandle {
        service,
        peer_service,
        leadership,
        status,
        stopped,
    })
}

const EPOCHS_FILE: &str = "epochs";

/// `(accepted_epoch, current_epoch)`; both 0 for a new replica.
fn read_epochs(dir: &Path) -> Result<(u32, u32), DriverError> {
    let path = dir.join(EPOCHS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(source) => return Err(DriverError::Epochs { path, source }),
    };
    let bad = || DriverError::Epochs {
        path: path.clone(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected two numbers, found {text:?}"),
        ),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(c)), None) => Ok((a, c)),
        _ => Err(bad()),
    }
}

/// Replaces the epochs file atomically and durably.
fn write_epochs(dir: &Path, accepted: u32, current: u32) -> Result<(), DriverError> {
    let path = dir.join(EPOCHS_FILE);
    let tmp = dir.join(format!("{EPOCHS_FILE}.tmp"));
    let io = |source| DriverError::Epochs {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{accepted} {current}\n").as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
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

/// What the transaction log is asked to do, in order.
enum LogCmd {
    Append(Vec<Txn>),
    /// Roll the log so the next file starts after this snapshot, then write it in the background.
    Snapshot(Box<DataTree>),
    /// Write the leader's state as a durable snapshot and drop logged transactions after it.
    Install(Box<DataTree>),
}

enum Completion {
    /// The log thread carried out `batches` batches; `durable` is what to report, if anything.
    Done {
        durable: Option<(Zxid, u64)>,
        batches: usize,
    },
    Failed(StorageError),
}

/// The transaction log and what goes with it. The core carries out log commands itself while
/// the log thread has none queued (see `Core::carry_out`), else hands them to the thread; so the
/// two take turns and commands stay in order.
struct LogState {
    log: TxnLog,
    dir: PathBuf,
    keep: usize,
    /// Snapshots installed from a leader so far (see `Input::Durable`).
    installs: u64,
    snapshot_running: Option<std::thread::JoinHandle<()>>,
}

impl LogState {
    /// Carries out `cmds` in order and fsyncs once (group commit). Returns what is durable now
    /// (`upto`, `installs`) if the commands logged anything.
    fn run(&mut self, cmds: Vec<LogCmd>) -> Result<Option<(Zxid, u64)>, StorageError> {
        let mut last = None;
        for cmd in cmds {
            match cmd {
                LogCmd::Append(txns) => {
                    for txn in txns {
                        self.log.append(txn.zxid.0, &txn.encode())?;
                        last = Some(txn.zxid);
                    }
                }
                LogCmd::Install(tree) => {
                    // Whatever was appended before the install is about to be dropped or kept
                    // below the snapshot; sync it first so the files stay consistent.
                    self.log.sync()?;
                    let zxid = tree.last_applied();
                    write_snapshot_file(&self.dir, &tree)?;
                    self.log.truncate_after(zxid.0)?;
                    self.log.roll(zxid.0 + 1)?;
                    self.installs += 1;
                    last = Some(zxid);
                }
                LogCmd::Snapshot(tree) => {
                    if self
                        .snapshot_running
                        .as_ref()
                        .is_some_and(|h| !h.is_finished())
                    {
                        warn!("a snapshot is still being written; skipping this one");
                        continue;
                    }
                    let zxid = tree.last_applied();
                    self.log.roll(self.log.last_zxid().max(zxid.0) + 1)?;
                    let (dir, keep) = (self.dir.clone(), self.keep);
                    self.snapshot_running = std::thread::Builder::new()
                        .name("coord-snapshot".into())
                        .spawn(move || write_snapshot(&dir, &tree, keep))
                        .map_err(|e| warn!(error = %e, "cannot start the snapshot thread"))
                        .ok();
                }
            }
        }
        match last {
            Some(upto) => {
                self.log.sync()?;
                Ok(Some((upto, self.installs)))
            }
            None => Ok(None),
        }
    }
}

fn lock_log(log: &Mutex<LogState>) -> MutexGuard<'_, LogState> {
    // A holder that panicked left the log poisoned itself if a write failed half way.
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Carries out what the core hands over, while the core goes on with new inputs. Runs until the
/// core drops its sender.
fn log_thread(
    log: Arc<Mutex<LogState>>,
    rx: std::sync::mpsc::Receiver<Vec<LogCmd>>,
    done: mpsc::Sender<Completion>,
) {
    while let Ok(first) = rx.recv() {
        let mut cmds = first;
        let mut batches = 1;
        while let Ok(more) = rx.try_recv() {
            cmds.extend(more);
            batches += 1;
        }
        let result = lock_log(&log).run(cmds);
        let completion = match result {
            Ok(durable) => Completion::Done { durable, batches },
            Err(e) => Completion::Failed(e),
        };
        let failed = matches!(completion, Completion::Failed(_));
        if done.blocking_send(completion).is_err() || failed {
            return;
        }
    }
}

/// Transactions logged per `INLINE_RATE_WINDOW`: how busy the log is.
struct LogRate {
    window_start: Instant,
    in_window: u64,
    last_window: u64,
}

impl LogRate {
    fn new() -> LogRate {
        LogRate {
            window_start: Instant::now(),
            in_window: 0,
            last_window: 0,
        }
    }

    /// Counts `txns` and returns the busier of this window and the last one.
    fn add(&mut self, txns: u64) -> u64 {
        let elapsed = self.window_start.elapsed();
        if elapsed >= INLINE_RATE_WINDOW {
            // A window with nothing logged in between counts as idle.
            self.last_window = if elapsed >= 2 * INLINE_RATE_WINDOW {
                0
            } else {
                self.in_window
            };
            self.in_window = 0;
            self.window_start = Instant::now();
        }
        self.in_window += txns;
        self.in_window.max(self.last_window)
    }
}

struct Core {
    leadership: watch::Sender<Leadership>,
    /// When `leadership` last changed (wall clock, Unix ms), for status.
    leadership_since_wall_ms: i64,
    replica: Replica,
    clock: Clock,
    data_dir: PathBuf,
    outbound: HashMap<ConnId, mpsc::Sender<ServerMsg>>,
    links: HashMap<PeerId, OutLink>,
    log: Arc<Mutex<LogState>>,
    log_tx: std::sync::mpsc::SyncSender<Vec<LogCmd>>,
    /// Batches handed to the log thread and not yet reported back.
    log_thread_batches: usize,
    /// Log commands of the actions being carried out.
    pending: Vec<LogCmd>,
    /// Most transactions per `INLINE_RATE_WINDOW` for the core to write the log itself; None
    /// when it never does.
    inline_log_txns_max: Option<u64>,
    log_rate: LogRate,
}

impl Core {
    async fn run(
        mut self,
        tick: Duration,
        first_actions: Vec<Action>,
        mut inbox: mpsc::Receiver<CoreMsg>,
        mut done: mpsc::Receiver<Completion>,
    ) -> Result<(), DriverError> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut actions = first_actions;
        self.carry_out(&mut actions, &inbox)?;
        loop {
            tokio::select! {
                biased;
                completion = done.recv() => {
                    match completion {
                        Some(Completion::Done { durable, batches }) => {
                            self.log_thread_batches -= batches;
                            if let Some((upto, installs)) = durable {
                                let now = self.clock.now();
                                self.replica
                                    .step(now, Input::Durable { upto, installs }, &mut actions);
                            }
                        }
                        Some(Completion::Failed(e)) => {
                            error!(error = %e, "coord storage failed; stopping this replica");
                            return Err(e.into());
                        }
                        None => return Ok(()),
                    }
                }
                msg = inbox.recv() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let now = self.clock.now();
                    let mut next = Some(msg);
                    let mut handled = 0;
                    while let Some(msg) = next.take() {
                        match msg {
                            CoreMsg::Open { conn, outbound } => {
                                self.outbound.insert(conn, outbound);
                            }
                            CoreMsg::Input(input) => {
                                if let Input::Client(server::Input::Disconnected { conn }) = &input {
                                    self.outbound.remove(conn);
                                }
                                self.replica.step(now, input, &mut actions);
                            }
                            CoreMsg::Status(reply) => {
                                let server = self.replica.server();
                                let _ = reply.send(ReplicaStatus {
                                    zab: self.replica.zab().status(now),
                                    leadership_since_wall_ms: self.leadership_since_wall_ms,
                                    last_applied: server.tree().last_applied(),
                                    znodes: server.tree().node_count(),
                                    sessions: server.tree().sessions().count(),
                                });
                            }
                        }
                        handled += 1;
                        if handled < INBOX_BATCH_MAX {
                            next = inbox.try_recv().ok();
                        }
                    }
                }
                _ = ticker.tick() => {
                    let now = self.clock.now();
                    self.replica.step(now, Input::Tick, &mut actions);
                }
            }
            self.carry_out(&mut actions, &inbox)?;
            let now = Leadership::of(&self.replica);
            if self
                .leadership
                .send_if_modified(|seen| std::mem::replace(seen, now) != now)
            {
                self.leadership_since_wall_ms = self.clock.now().wall_ms;
            }
        }
    }

    /// Carries out `actions`. Messages go out first (peer messages straight into the sockets);
    /// then the log commands: when nothing else waits (the inbox is empty and the log thread
    /// idle) the core appends and fsyncs itself and tells the replica at once what is durable,
    /// which may produce more actions (acknowledgements, commits, replies), carried out the same
    /// way; under load it hands them to the log thread and goes on with new inputs.
    fn carry_out(
        &mut self,
        actions: &mut Vec<Action>,
        inbox: &mpsc::Receiver<CoreMsg>,
    ) -> Result<(), DriverError> {
        loop {
            for action in actions.drain(..) {
                match action {
                    Action::Persist(txn) => match self.pending.last_mut() {
                        Some(LogCmd::Append(txns)) => txns.push(txn),
                        _ => self.pending.push(LogCmd::Append(vec![txn])),
                    },
                    Action::SendClient { conn, msg } => {
                        if let Some(tx) = self.outbound.get(&conn)
                            && tx.try_send(msg).is_err()
                        {
                            warn!(conn, "client is not reading its replies; disconnecting it");
                            self.outbound.remove(&conn);
                        }
                    }
                    Action::CloseClient { conn } => {
                        self.outbound.remove(&conn);
                    }
                    Action::SendPeer { to, msg } => {
                        if let Some(link) = self.links.get(&to) {
                            link.queue(&msg);
                        }
                    }
                    Action::PersistEpochs { accepted, current } => {
                        self.flush_links();
                        write_epochs(&self.data_dir, accepted, current)?
                    }
                    Action::InstallSnapshot(tree) => self.pending.push(LogCmd::Install(tree)),
                    Action::Snapshot(tree) => self.pending.push(LogCmd::Snapshot(tree)),
                }
            }
            self.flush_links();
            if self.pending.is_empty() {
                return Ok(());
            }
            let cmds = std::mem::take(&mut self.pending);
            let txns: usize = cmds
                .iter()
                .map(|c| match c {
                    LogCmd::Append(t) => t.len(),
                    _ => 0,
                })
                .sum();
            let light = self.log_rate.add(txns as u64);
            let inline = self.inline_log_txns_max.is_some_and(|max| {
                self.log_thread_batches == 0
                    && inbox.is_empty()
                    && txns <= INLINE_TXNS_MAX
                    && light <= max
            });
            if !inline {
                // Blocks only while the log thread is LOG_QUEUE_CAP batches behind.
                self.log_tx
                    .send(cmds)
                    .map_err(|e| DriverError::LogThreadGone(e.to_string()))?;
                self.log_thread_batches += 1;
                return Ok(());
            }
            let durable = lock_log(&self.log).run(cmds);
            let Some((upto, installs)) = durable? else {
                return Ok(());
            };
            let now = self.clock.now();
            self.replica
                .step(now, Input::Durable { upto, installs }, actions);
        }
    }

    fn flush_links(&self) {
        for link in self.links.values() {
            link.flush();
        }
    }
}

fn write_snapshot_file(dir: &Path, tree: &DataTree) -> Result<(), StorageError> {
    let writer = SnapshotWriter::create(dir, tree.last_applied().0)?;
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
    writer.finish()
}

fn write_snapshot(dir: &Path, tree: &DataTree, keep: usize) {
    let started = Instant::now();
    let zxid = tree.last_applied();
    match write_snapshot_file(dir, tree).and_then(|()| storage::purge(dir, keep).map(|_| ())) {
        Ok(()) => {
            info!(%zxid, nodes = tree.node_count(), elapsed_ms = started.elapsed().as_millis() as u64, "snapshot written")
        }
        // The log still holds everything; the next snapshot tries again.
        Err(e) => error!(%zxid, error = %e, "snapshot failed"),
    }
}

/// The gRPC `Peer` service: where this replica takes peer links (`Endpoint`), and the earlier
/// gRPC transport (`Deliver`: frames decoded and handed to the core).
#[derive(Clone)]
pub struct PeerService {
    inbox: mpsc::Sender<CoreMsg>,
    voters: Vec<PeerId>,
    listeners: Arc<PeerListeners>,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn endpoint(
        &self,
        request: Request<v1::PeerEndpointRequest>,
    ) -> Result<Response<v1::PeerEndpoint>, Status> {
        let from = request.get_ref().from;
        if !self.listeners.is_voter(from) {
            return Err(Status::permission_denied(format!(
                "peer {from} is not in this ensemble"
            )));
        }
        let Some(local) = request.local_addr() else {
            return Err(Status::failed_precondition(
                "this server does not know the address it was reached at",
            ));
        };
        let addr = self.listeners.endpoint(local.ip()).map_err(|e| {
            Status::unavailable(format!(
                "cannot listen for peer links on {}: {e}",
                local.ip()
            ))
        })?;
        Ok(Response::new(v1::PeerEndpoint {
            addr: addr.to_string(),
        }))
    }

    async fn deliver(
        &self,
        request: Request<Streaming<v1::PeerFrame>>,
    ) -> Result<Response<v1::PeerClosed>, Status> {
        let mut frames = request.into_inner();
        let mut from = None;
        while let Some(frame) = frames.next().await {
            let frame = match frame {
                Ok(f) => f,
                Err(status) => {
                    debug!(?from, %status, "peer stream ended");
                    break;
                }
            };
            if !self.voters.contains(&frame.from) {
                return Err(Status::permission_denied(format!(
                    "peer {} is not in this ensemble",
                    frame.from
                )));
            }
            from = Some(frame.from);
            for bytes in frame.messages {
                let msg = PeerMsg::decode(&bytes).map_err(|e| {
                    Status::invalid_argument(format!(
                        "undecodable peer message from {}: {e}",
                        frame.from
                    ))
                })?;
                if self
                    .inbox
                    .send(CoreMsg::Input(Input::Peer {
                        from: frame.from,
                        msg,
                    }))
                    .await
                    .is_err()
                {
                    return Err(Status::unavailable("coord is stopping"));
                }
            }
        }
        if let Some(peer) = from {
            let _ = self.inbox.send(CoreMsg::Input(Input::PeerDown(peer))).await;
        }
        Ok(Response::new(v1::PeerClosed {}))
    }
}

/// The gRPC `Coord` service: one `Session` stream per client connection.
#[derive(Clone)]
pub struct CoordService {
    inbox: mpsc::Sender<CoreMsg>,
    next_conn: Arc<AtomicU64>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::ServerMessage, Status>> + Send>>;

/// A future that resolves, with the reason, when a stream's credentials stop being valid.
pub type EndedFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// What the layer in front of the `Coord` service (a master's token check) decided about a
/// `Session` stream, put in the request's extensions. Without one, the stream is bounded by
/// ACLs alone and lives until it ends by itself.
#[derive(Clone)]
pub struct SessionGate {
    /// The connection's path grants (`ConnIdentity::grants`).
    pub grants: Option<Arc<crate::grants::PathGrants>>,
    /// Called once per stream; when its future resolves (the token was revoked, expired, or
    /// its grants changed) the stream ends with `UNAUTHENTICATED` and that reason, and the
    /// connection is dropped (the session lives on until it expires, as for any lost link).
    pub ended: Arc<dyn Fn() -> EndedFuture + Send + Sync>,
}

/// The server's messages until `ended` resolves, then one `UNAUTHENTICATED` and the end.
struct UntilEnded<S> {
    inner: S,
    /// `None` once it fired.
    ended: Option<EndedFuture>,
}

impl<S> Stream for UntilEnded<S>
where
    S: Stream<Item = Result<v1::ServerMessage, Status>> + Unpin,
{
    type Item = Result<v1::ServerMessage, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(ended) = this.ended.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        if let std::task::Poll::Ready(reason) = ended.as_mut().poll(cx) {
            this.ended = None;
            return std::task::Poll::Ready(Some(Err(Status::unauthenticated(reason))));
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

#[tonic::async_trait]
impl Coord for CoordService {
    type SessionStream = SessionStream;

    #[instrument(skip_all)]
    async fn session(
        &self,
        request: Request<Streaming<v1::ClientMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let gate = request.extensions().get::<SessionGate>().cloned();
        let mut identity = conn_identity(&request);
        identity.grants = gate.as_ref().and_then(|g| g.grants.clone());
        let mut incoming = request.into_inner();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(OUTBOUND_CAP);
        self.inbox
            .send(CoreMsg::Open { conn, outbound: tx })
            .await
            .map_err(|_| Status::unavailable("coord server is stopping"))?;
        let inbox = self.inbox.clone();
        let reader_ended = gate.as_ref().map(|g| (g.ended)());
        tokio::spawn(async move {
            match reader_ended {
                None => read_client(conn, identity, &mut incoming, &inbox).await,
                Some(ended) => tokio::select! {
                    () = read_client(conn, identity, &mut incoming, &inbox) => {}
                    reason = ended => debug!(conn, %reason, "client stream ended by its gate"),
                },
            }
            let _ = inbox
                .send(CoreMsg::Input(Input::Client(server::Input::Disconnected {
                    conn,
                })))
                .await;
        });
        let stream = ReceiverStream::new(rx).map(|msg| Ok(server_msg_to_proto(msg)));
        Ok(Response::new(match gate {
            None => Box::pin(stream),
            Some(g) => Box::pin(UntilEnded {
                inner: stream,
                ended: Some((g.ended)()),
            }),
        }))
    }
}

/// What the transport tells about a client, for the `ip` and `x509` ACL schemes: the peer
/// address tonic saw (the `ip` id), and the principal of a verified TLS client certificate (the
/// `x509` id): its common name (`operator`, `framework`, `master-2`), the name
/// `drover tls init` gives each certificate. On a plain connection, or over TLS without a client
/// certificate, it is `None`, so `x509` entries match nobody.
pub fn conn_identity<T>(request: &Request<T>) -> server::ConnIdentity {
    let x509_principal = request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .and_then(|leaf| drover_security::CertIdentity::of(&leaf).ok())
        .map(|id| id.name)
        .filter(|name| !name.is_empty());
    server::ConnIdentity {
        addr: request.remote_addr().map(|a| a.ip()),
        x509_principal,
        grants: None,
    }
}

/// Forwards one client's messages to the core until the stream ends.
async fn read_client(
    conn: ConnId,
    identity: server::ConnIdentity,
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
                server::Input::Connect {
                    conn,
                    session: SessionId(c.session_id),
                    password: c.password,
                    timeout_ms: c.timeout_ms,
                    last_zxid_seen: Zxid(c.last_zxid_seen),
                    new_password,
                    identity: identity.clone(),
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
                server::Input::Request { conn, xid, op }
            }
            Some(v1::client_message::Body::Ping(_)) => server::Input::Ping { conn },
            Some(v1::client_message::Body::Close(_)) => server::Input::CloseSession { conn },
            None => return,
        };
        if inbox
            .send(CoreMsg::Input(Input::Client(input)))
            .await
            .is_err()
        {
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
