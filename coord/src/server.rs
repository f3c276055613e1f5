//! The request pipeline of one coord server, sans IO: connections, sessions, the per-connection
//! FIFO queue, applying committed transactions, replies and watch events.
//!
//! The driver feeds it `Input`s with the time and collects `Action`s. A write (and a sync) is
//! handed out as `Action::Submit` to the leader — this server's own ZAB leader or, on a follower,
//! the remote one — which turns it into a transaction with a zxid. The write is applied, and its
//! client answered, only when the transaction comes back committed (`Input::Committed`), that is
//! durable on a quorum. Reads are answered from the applied tree, but never ahead of an earlier
//! write of the same connection: a connection's requests are answered in the order they came
//! (ZooKeeper's FIFO client order). Watch events are emitted while a transaction is applied,
//! before its reply and before any later read, so a client always sees an event before the data
//! that caused it.
//!
//! Every server applies every committed transaction; only the server a transaction came through
//! (its `origin`) answers it. Only the leader expires sessions; followers report which sessions
//! they heard from (`Action::Touches`).
//!
//! ACLs: each connection holds its session's ids here (`Conn::auth`: what the transport saw,
//! `ConnIdentity`, plus what `addAuth` added), as ZooKeeper keeps them on the server connection;
//! a client that reconnects elsewhere authenticates again. Reads are checked here, by the server
//! that serves them; writes carry the ids in their `Submission` to the leader, which checks them
//! before proposing (`prep`), so a follower and the leader answer alike.

use crate::acl::{self, AUTH_IDS_PER_SESSION_MAX, Access, Id, Perms};
use crate::data_tree::{Applied, DataTree};
use crate::op::{
    EventType, MULTI_OPS_MAX, Op, OpError, OpResult, ReadOp, WatchEvent, WriteOp, ZNODE_BYTES_MAX,
};
use crate::path;
use crate::sessions::SessionTracker;
use crate::txn::{PASSWORD_BYTES, Txn, TxnKind};
use crate::watches::{WatchKind, WatchManager};
use crate::zxid::{SessionId, Zxid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use tracing::{debug, info};

/// A client connection, numbered by the driver.
pub type ConnId = u64;

/// xid of a session expiry, which no client waits for.
pub const EXPIRE_XID: i64 = -2;
/// xid of a client's own CloseSession.
pub const CLOSE_XID: i64 = -3;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub server_id: u32,
    /// Negotiated session timeouts are clamped to [min, max] (ZooKeeper: 2 and 20 ticks).
    pub session_timeout_min_ms: u32,
    pub session_timeout_max_ms: u32,
    /// Granularity of session expiry.
    pub session_expiry_bucket_ms: u64,
    /// A snapshot is taken after this many applied transactions.
    pub snapshot_every_txns: u64,
    pub watches_per_session_max: usize,
    /// Requests queued on one connection before new ones are refused with TooManyRequests.
    pub requests_queued_per_connection_max: usize,
    /// Submissions handed to the leader and not yet answered; past it, writes wait.
    pub submissions_in_flight_max: usize,
    /// Ids that pass every ACL check (ZooKeeper's superDigest), e.g. `digest:super:HASH`; see
    /// `acl::parse_super_id`. Every server of an ensemble must have the same list: reads are
    /// checked by each server, writes by the leader.
    pub super_ids: Vec<Id>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            server_id: 1,
            session_timeout_min_ms: 4_000,
            session_timeout_max_ms: 40_000,
            session_expiry_bucket_ms: 100,
            snapshot_every_txns: 100_000,
            watches_per_session_max: 65_536,
            requests_queued_per_connection_max: 4_096,
            submissions_in_flight_max: 16_384,
            super_ids: Vec::new(),
        }
    }
}

/// The two clocks the core is given: monotonic for timeouts, wall for ctime/mtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: i64,
}

/// What this server may do for clients, set by replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No established leader: clients are disconnected and refused, so they move on.
    NotServing,
    Following,
    /// Serves and expires sessions.
    Leading,
}

/// A request for the leader to order: a transaction to be, or a sync barrier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The server whose client asked; only it answers.
    pub origin: u32,
    /// For `CreateSession`, 0: the leader names the session after the transaction's zxid.
    pub session: SessionId,
    /// The client's xid; for `CreateSession`, the origin's connection id.
    pub xid: i64,
    pub kind: SubmitKind,
    /// The session's ids on the origin's connection, for the leader's ACL checks (`prep`); empty
    /// for what no client asked (expiry).
    pub auth: Arc<[Id]>,
}

/// What the transport knows about a client connection, for the ACL schemes that come from the
/// connection rather than from `addAuth`. The driver fills it in when the stream opens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnIdentity {
    /// The client's address as this server saw it: the `ip` scheme's id.
    pub addr: Option<IpAddr>,
    /// The principal name of the client's TLS certificate: the `x509` scheme's id. The hook for
    /// TLS: the driver sets it from the verified peer certificate (`driver::conn_identity`); it is
    /// `None` on plain connections.
    pub x509_principal: Option<String>,
    /// What the connection may touch beyond what ACLs say (`grants`); `None`: ACLs alone. Set
    /// by whoever admitted the stream (a master with `--acl`, from the caller's token).
    pub grants: Option<Arc<crate::grants::PathGrants>>,
}

impl ConnIdentity {
    /// The ids a connection starts with.
    pub fn ids(&self) -> Vec<Id> {
        let mut ids = Vec::new();
        if let Some(addr) = self.addr {
            ids.push(Id::new(acl::SCHEME_IP, &addr.to_canonical().to_string()));
        }
        if let Some(p) = &self.x509_principal {
            ids.push(Id::new(acl::SCHEME_X509, p));
        }
        ids
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitKind {
    Txn(TxnKind),
    /// Answered (`Input::Synced`) once every transaction proposed before it is committed.
    Sync,
}

#[derive(Clone, Debug)]
pub enum Input {
    /// A client opened a stream and asked for a session (`session == 0`: a new one).
    Connect {
        conn: ConnId,
        session: SessionId,
        password: Vec<u8>,
        timeout_ms: u32,
        last_zxid_seen: Zxid,
        /// Random bytes from the driver, the password if a new session is created.
        new_password: [u8; PASSWORD_BYTES],
        identity: ConnIdentity,
    },
    /// A request; `Err` when the driver could not decode it (answered in order, like any other).
    Request {
        conn: ConnId,
        xid: i64,
        op: Result<Op, OpError>,
    },
    Ping {
        conn: ConnId,
    },
    /// The client asks to end its session.
    CloseSession {
        conn: ConnId,
    },
    /// The stream is gone. The session lives on until it expires.
    Disconnected {
        conn: ConnId,
    },
    /// The next committed transaction, in zxid order.
    Committed(Txn),
    /// A sync barrier of this server's came back: everything before it is applied here.
    Synced {
        session: SessionId,
        xid: i64,
    },
    /// Sessions a follower heard from (leader only).
    Touches(Vec<SessionId>),
    /// Replication changed what this server may do.
    SetRole(Role),
    /// Replication replaced the whole state (a snapshot from the leader).
    Install(Box<DataTree>),
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMsg {
    Connected {
        session: SessionId,
        password: [u8; PASSWORD_BYTES],
        timeout_ms: u32,
        server_id: u32,
    },
    Reply {
        xid: i64,
        zxid: Zxid,
        result: Result<OpResult, OpError>,
    },
    Event(WatchEvent),
    Pong {
        zxid: Zxid,
    },
    /// The session ended (`None`: closed at the client's request); the stream closes after it.
    Ended(Option<OpError>),
}

#[derive(Clone, Debug)]
pub enum Action {
    /// For the leader to order.
    Submit(Submission),
    Send {
        conn: ConnId,
        msg: ServerMsg,
    },
    /// Close the stream after the messages already sent.
    CloseConn {
        conn: ConnId,
    },
    /// Write this state (an O(1) clone, consistent at its `last_applied`) as a snapshot.
    Snapshot(Box<DataTree>),
    /// Sessions heard from since the last tick, for the leader (followers only).
    Touches(Vec<SessionId>),
}

enum Queued {
    Op { xid: i64, op: Result<Op, OpError> },
    Close,
}

struct Conn {
    /// Set once the session is established (for a new session: once its creation is applied).
    session: Option<SessionId>,
    queue: VecDeque<Queued>,
    /// This connection's submissions not yet answered; reads wait while it is not zero.
    writes_in_flight: usize,
    closed: bool,
    /// The session's ids on this connection: `ConnIdentity::ids`, then each `addAuth`'s, without
    /// duplicates. Invariant: at most `AUTH_IDS_PER_SESSION_MAX`.
    auth: Arc<[Id]>,
    /// `ConnIdentity::grants`: checked on every op before it is queued.
    grants: Option<Arc<crate::grants::PathGrants>>,
}

pub struct ServerCore {
    config: ServerConfig,
    role: Role,
    tree: DataTree,
    watches: WatchManager,
    /// Session deadlines; kept only while leading.
    tracker: SessionTracker,
    /// Sessions heard from since the last tick (following only).
    touched: BTreeSet<SessionId>,
    conns: HashMap<ConnId, Conn>,
    /// The connection each live session is attached to here.
    session_conns: HashMap<SessionId, ConnId>,
    /// Sessions whose CloseSession is in flight: they accept no new connection or request.
    closing: HashSet<SessionId>,
    /// This server's submissions not yet answered, by (session, xid), with the connection waiting.
    /// A new session's key is (0, connection id).
    in_flight: HashMap<(SessionId, i64), ConnId>,
    txns_since_snapshot: u64,
    /// Connections that stopped processing their queue because too many submissions were out.
    blocked: Vec<ConnId>,
    /// `config.super_ids`, shared with each check.
    super_ids: Arc<[Id]>,
}

impl ServerCore {
    /// A server over a recovered tree; it serves nobody until replication gives it a role.
    pub fn new(config: ServerConfig, tree: DataTree) -> ServerCore {
        info!(nodes = tree.node_count(), last_zxid = %tree.last_applied(), "coord server ready");
        let super_ids = config.super_ids.clone().into();
        ServerCore {
            watches: WatchManager::new(config.watches_per_session_max),
            tracker: SessionTracker::new(config.session_expiry_bucket_ms),
            config,
            role: Role::NotServing,
            tree,
            touched: BTreeSet::new(),
            conns: HashMap::new(),
            session_conns: HashMap::new(),
            closing: HashSet::new(),
            in_flight: HashMap::new(),
            txns_since_snapshot: 0,
            blocked: Vec::new(),
            super_ids,
        }
    }

    pub fn tree(&self) -> &DataTree {
        &self.tree
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn step(&mut self, now: Now, input: Input, out: &mut Vec<Action>) {
        self.step_input(now, input, out);
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    /// Asserts what holds between every two steps: the connection, session and watch tables
    /// agree with each other and with the tree. A failure is a bug in this file, never bad input.
    pub fn check_invariants(&self) {
        let id = self.config.server_id;
        self.watches.check_invariants();
        self.tracker.check_invariants();
        if self.role == Role::NotServing {
            // Clients of a server without a leader were all sent away.
            assert!(
                self.conns.is_empty()
                    && self.session_conns.is_empty()
                    && self.in_flight.is_empty()
                    && self.closing.is_empty()
                    && self.blocked.is_empty(),
                "server {id}: serves nobody while not serving"
            );
        }
        if self.role != Role::Leading {
            assert!(
                self.tracker.is_empty(),
                "server {id}: only the leader tracks session deadlines"
            );
        }
        if self.role != Role::Following {
            assert!(
                self.touched.is_empty(),
                "server {id}: only a follower collects touches"
            );
        }
        for (&session, &conn) in &self.session_conns {
            assert!(
                self.conns.get(&conn).and_then(|c| c.session) == Some(session),
                "server {id}: session {session} is attached to connection {conn}, which holds it"
            );
        }
        for (&conn, c) in &self.conns {
            if let Some(session) = c.session {
                assert!(
                    self.session_conns.get(&session) == Some(&conn),
                    "server {id}: connection {conn} holds session {session}, attached elsewhere"
                );
                assert!(
                    self.tree.session(session).is_some(),
                    "server {id}: connection {conn} holds session {session}, which has ended"
                );
            }
        }
        for &session in &self.closing {
            assert!(
                self.tree.session(session).is_some(),
                "server {id}: closing session {session} still exists until its close applies"
            );
        }
        for session in self.watches.sessions() {
            assert!(
                self.session_conns.contains_key(&session),
                "server {id}: watches of session {session} belong to its connection here"
            );
        }
    }

    fn step_input(&mut self, now: Now, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Connect {
                conn,
                session,
                password,
                timeout_ms,
                last_zxid_seen,
                new_password,
                identity,
            } => self.connect(
                now,
                conn,
                session,
                &password,
                timeout_ms,
                last_zxid_seen,
                new_password,
                &identity,
                out,
            ),
            Input::Request { conn, xid, op } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                if c.queue.len() >= self.config.requests_queued_per_connection_max {
                    let limit = self.config.requests_queued_per_connection_max;
                    let zxid = self.tree.last_applied();
                    out.push(Action::Send {
                        conn,
                        msg: ServerMsg::Reply {
                            xid,
                            zxid,
                            result: Err(OpError::TooManyRequests(limit)),
                        },
                    });
                    return;
                }
                // Refused here, the op is still answered in order (as a failed op is).
                let op = match &c.grants {
                    Some(g) => op.and_then(|op| g.check(&op).map(|()| op)),
                    None => op,
                };
                c.queue.push_back(Queued::Op { xid, op });
                self.touch(now, conn);
                self.process_queue(conn, out);
            }
            Input::Ping { conn } => {
                self.touch(now, conn);
                if self.conns.contains_key(&conn) {
                    out.push(Action::Send {
                        conn,
                        msg: ServerMsg::Pong {
                            zxid: self.tree.last_applied(),
                        },
                    });
                }
            }
            Input::CloseSession { conn } => {
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
                c.queue.push_back(Queued::Close);
                self.process_queue(conn, out);
            }
            Input::Disconnected { conn } => self.disconnect(conn),
            Input::Committed(txn) => self.committed(now, txn, out),
            Input::Synced { session, xid } => {
                if let Some(conn) = self.in_flight.remove(&(session, xid)) {
                    self.answered(conn);
                    out.push(Action::Send {
                        conn,
                        msg: ServerMsg::Reply {
                            xid,
                            zxid: self.tree.last_applied(),
                            result: Ok(OpResult::Empty),
                        },
                    });
                    self.process_queue(conn, out);
                }
            }
            Input::Touches(sessions) => {
                if self.role == Role::Leading {
                    for session in sessions {
                        self.touch_session(now, session);
                    }
                }
            }
            Input::SetRole(role) => self.set_role(now, role, out),
            Input::Install(tree) => {
                assert!(
                    self.role == Role::NotServing,
                    "state is replaced only while not serving"
                );
                self.tree = *tree;
                self.txns_since_snapshot = 0;
            }
            Input::Tick => self.tick(now, out),
        }
    }

    fn set_role(&mut self, now: Now, role: Role, out: &mut Vec<Action>) {
        if role == self.role {
            return;
        }
        info!(server = self.config.server_id, ?role, "coord role changed");
        let was = std::mem::replace(&mut self.role, role);
        if role == Role::NotServing || was == Role::NotServing {
            // Clients of a server without a leader must move on (keeping their sessions); and a
            // server that starts serving has no client yet.
            let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
            conns.sort_unstable();
            for conn in conns {
                out.push(Action::CloseConn { conn });
            }
            self.conns.clear();
            self.session_conns.clear();
            self.in_flight.clear();
            self.blocked.clear();
            self.closing.clear();
            self.touched.clear();
            self.watches = WatchManager::new(self.config.watches_per_session_max);
        }
        self.tracker = SessionTracker::new(self.config.session_expiry_bucket_ms);
        if role == Role::Leading {
            // A new leader gives every session a full timeout, as ZooKeeper's does.
            for (id, meta) in self.tree.sessions() {
                self.tracker.touch(id, meta.timeout_ms, now.mono_ms);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        now: Now,
        conn: ConnId,
        session: SessionId,
        password: &[u8],
        timeout_ms: u32,
        last_zxid_seen: Zxid,
        new_password: [u8; PASSWORD_BYTES],
        identity: &ConnIdentity,
        out: &mut Vec<Action>,
    ) {
        let refuse = |err: OpError, out: &mut Vec<Action>| {
            out.push(Action::Send {
                conn,
                msg: ServerMsg::Ended(Some(err)),
            });
            out.push(Action::CloseConn { conn });
        };
        if self.role == Role::NotServing {
            return refuse(
                OpError::NotServing("this server has no quorum; try another".into()),
                out,
            );
        }
        if last_zxid_seen > self.tree.last_applied() {
            // The client saw newer state than this server has: it must go elsewhere (ZooKeeper
            // refuses such a connection for the same reason).
            return refuse(
                OpError::NotServing(format!(
                    "this server is at {}, behind the client's {}",
                    self.tree.last_applied(),
                    last_zxid_seen
                )),
                out,
            );
        }
        self.conns.insert(
            conn,
            Conn {
                session: None,
                queue: VecDeque::new(),
                writes_in_flight: 0,
                closed: false,
                auth: identity.ids().into(),
                grants: identity.grants.clone(),
            },
        );
        if session == SessionId(0) {
            let timeout_ms = timeout_ms.clamp(
                self.config.session_timeout_min_ms,
                self.config.session_timeout_max_ms,
            );
            let kind = TxnKind::CreateSession {
                timeout_ms,
                password: new_password,
            };
            self.submit(
                SessionId(0),
                conn as i64,
                SubmitKind::Txn(kind),
                no_ids(),
                conn,
                out,
            );
            return;
        }
        let Some(meta) = self.tree.session(session).copied() else {
            self.conns.remove(&conn);
            return refuse(OpError::SessionExpired(session), out);
        };
        if self.closing.contains(&session) {
            self.conns.remove(&conn);
            return refuse(OpError::SessionExpired(session), out);
        }
        if password != meta.password {
            self.conns.remove(&conn);
            return refuse(OpError::AuthFailed(session), out);
        }
        if let Some(old) = self.session_conns.insert(session, conn)
            && old != conn
        {
            // The session moved to a new connection: the old one must not answer for it.
            out.push(Action::Send {
                conn: old,
                msg: ServerMsg::Ended(Some(OpError::SessionMoved(session))),
            });
            out.push(Action::CloseConn { conn: old });
            if let Some(c) = self.conns.get_mut(&old) {
                c.session = None;
                c.closed = true;
            }
            self.watches.remove_session(session);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session);
        }
        self.touch_session(now, session);
        debug!(%session, conn, "session reconnected");
        out.push(Action::Send {
            conn,
            msg: ServerMsg::Connected {
                session,
                password: meta.password,
                timeout_ms: meta.timeout_ms,
                server_id: self.config.server_id,
            },
        });
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(session) = c.session
            && self.session_conns.get(&session) == Some(&conn)
        {
            self.session_conns.remove(&session);
            // Watches belong to the connection, as in ZooKeeper; a reconnecting client
            // re-registers them with SetWatches and misses nothing.
            self.watches.remove_session(session);
        }
    }

    fn touch(&mut self, now: Now, conn: ConnId) {
        if let Some(session) = self.conns.get(&conn).and_then(|c| c.session) {
            self.touch_session(now, session);
        }
    }

    fn touch_session(&mut self, now: Now, session: SessionId) {
        if self.closing.contains(&session) {
            return;
        }
        match self.role {
            Role::Leading => {
                if let Some(meta) = self.tree.session(session) {
                    self.tracker.touch(session, meta.timeout_ms, now.mono_ms);
                }
            }
            Role::Following => {
                self.touched.insert(session);
            }
            Role::NotServing => {}
        }
    }

    fn submit(
        &mut self,
        session: SessionId,
        xid: i64,
        kind: SubmitKind,
        auth: Arc<[Id]>,
        conn: ConnId,
        out: &mut Vec<Action>,
    ) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.writes_in_flight += 1;
        }
        self.in_flight.insert((session, xid), conn);
        out.push(Action::Submit(Submission {
            origin: self.config.server_id,
            session,
            xid,
            kind,
            auth,
        }));
    }

    fn answered(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.writes_in_flight = c.writes_in_flight.saturating_sub(1);
        }
    }

    /// Answers queued requests of `conn` in order: writes and syncs are submitted (pipelined),
    /// reads wait until every earlier submission of the connection has been answered.
    fn process_queue(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let Some(session) = c.session else {
                return;
            };
            if c.closed {
                return;
            }
            let Some(front) = c.queue.front() else {
                return;
            };
            let submits = match front {
                Queued::Op {
                    op: Ok(Op::Write(w)),
                    ..
                } => precheck_write(w).is_ok(),
                Queued::Op {
                    op: Ok(Op::Read(ReadOp::Sync { path })),
                    ..
                } => path::validate(path, false).is_ok(),
                Queued::Close => true,
                Queued::Op { .. } => false,
            };
            if submits {
                if self.in_flight.len() >= self.config.submissions_in_flight_max {
                    if !self.blocked.contains(&conn) {
                        self.blocked.push(conn);
                    }
                    return;
                }
                let item = c.queue.pop_front().expect("front checked above");
                let auth = Arc::clone(&c.auth);
                let (xid, kind) = match item {
                    Queued::Op {
                        xid,
                        op: Ok(Op::Write(w)),
                    } => (xid, SubmitKind::Txn(TxnKind::Write(w))),
                    Queued::Op {
                        xid,
                        op: Ok(Op::Read(ReadOp::Sync { .. })),
                    } => (xid, SubmitKind::Sync),
                    Queued::Close => {
                        self.closing.insert(session);
                        self.tracker.remove(session);
                        (CLOSE_XID, SubmitKind::Txn(TxnKind::CloseSession))
                    }
                    Queued::Op { .. } => unreachable!("classified as a submission above"),
                };
                self.submit(session, xid, kind, auth, conn, out);
                continue;
            }
            if c.writes_in_flight > 0 {
                return;
            }
            let Some(Queued::Op { xid, op }) = c.queue.pop_front() else {
                return;
            };
            let result = match op {
                Ok(Op::Read(read)) => self.read(session, read, out, conn),
                // A write that fails its static checks is answered here, in order, without a txn.
                Ok(Op::Write(w)) => {
                    Err(precheck_write(&w).expect_err("classified as failing above"))
                }
                Err(e) => Err(e),
            };
            out.push(Action::Send {
                conn,
                msg: ServerMsg::Reply {
                    xid,
                    zxid: self.tree.last_applied(),
                    result,
                },
            });
        }
    }
    fn read(
        &mut self,
        session: SessionId,
        read: ReadOp,
        out: &mut Vec<Action>,
        conn: ConnId,
    ) -> Result<OpResult, OpError> {
        let auth = self
            .conns
            .get(&conn)
            .map_or_else(no_ids, |c| Arc::clone(&c.auth));
        let super_ids = Arc::clone(&self.super_ids);
        let access = Access {
            ids: &auth,
            super_ids: &super_ids,
        };
        self.read_as(session, read, &access, out, conn)
    }

    /// Fails with `NoAuth` unless `access` may do `perm` on `path` (which exists).
    fn require(&self, access: &Access<'_>, path: &str, perm: Perms) -> Result<(), OpError> {
        match self.tree.acl(path) {
            Some(acl) if !access.allows(acl, perm) => Err(OpError::NoAuth {
                path: path.to_string(),
                perm,
            }),
            _ => Ok(()),
        }
    }

    fn read_as(
        &mut self,
        session: SessionId,
        read: ReadOp,
        access: &Access<'_>,
        out: &mut Vec<Action>,
        conn: ConnId,
    ) -> Result<OpResult, OpError> {
        match read {
            ReadOp::GetData { path, watch } => {
                let (data, stat) = self.tree.get_data(&path)?;
                // ZooKeeper's order: NoNode, then NoAuth; a refused read leaves no watch.
                self.require(access, &path, Perms::READ)?;
                if watch {
                    self.watches.add(session, WatchKind::Data, &path)?;
                }
                Ok(OpResult::Data { data, stat })
            }
            ReadOp::Exists { path, watch } => {
                let stat = self.tree.exists(&path)?;
                if watch {
                    self.watches.add(session, WatchKind::Data, &path)?;
                }
                Ok(stat.map_or(OpResult::NoStat, OpResult::Stat))
            }
            ReadOp::GetChildren { path, watch } => {
                let (children, stat) = self.tree.children(&path)?;
                self.require(access, &path, Perms::READ)?;
                if watch {
                    self.watches.add(session, WatchKind::Child, &path)?;
                }
                Ok(OpResult::Children { children, stat })
            }
            ReadOp::GetAcl { path } => {
                let (acl, stat) = self.tree.get_acl(&path)?;
                let wanted = Perms::READ.union(Perms::ADMIN);
                if !access.allows(&acl, wanted) {
                    return Err(OpError::NoAuth { path, perm: wanted });
                }
                let acl = if access.allows(&acl, Perms::ADMIN) {
                    acl
                } else {
                    acl::redacted(&acl)
                };
                Ok(OpResult::Acl { acl, stat })
            }
            ReadOp::AddAuth { scheme, auth } => {
                let bad = |reason: String| OpError::BadAuth {
                    scheme: scheme.clone(),
                    reason,
                };
                let id = acl::authenticate(&scheme, &auth).map_err(bad)?;
                let Some(c) = self.conns.get_mut(&conn) else {
                    return Ok(OpResult::Empty);
                };
                if !c.auth.contains(&id) {
                    if c.auth.len() >= AUTH_IDS_PER_SESSION_MAX {
                        return Err(bad(format!(
                            "this session already holds {AUTH_IDS_PER_SESSION_MAX} ids, the \
                             limit (AUTH_IDS_PER_SESSION_MAX)"
                        )));
                    }
                    let mut ids = c.auth.to_vec();
                    ids.push(id);
                    c.auth = ids.into();
                }
                Ok(OpResult::Empty)
            }
            ReadOp::AddWatch { path, recursive } => {
                path::validate(&path, false)?;
                // A persistent watch reports every change; it needs READ where there is a node
                // to read (none is needed to wait for a node to appear, as with `exists`).
                self.require(access, &path, Perms::READ)?;
                let kind = if recursive {
                    WatchKind::PersistentRecursive
                } else {
                    WatchKind::Persistent
                };
                self.watches.add(session, kind, &path)?;
                Ok(OpResult::Empty)
            }
            ReadOp::RemoveWatches { path } => {
                path::validate(&path, false)?;
                self.watches.remove_path(session, &path);
                Ok(OpResult::Empty)
            }
            // A sync with a valid path is submitted; only a malformed one is answered here.
            ReadOp::Sync { path } => path::validate(&path, false).map(|()| OpResult::Empty),
            ReadOp::SetWatches(sw) => {
                let rel = sw.relative_zxid;
                let last = self.tree.last_applied();
                let fire = |kind: EventType, path: &String, out: &mut Vec<Action>| {
                    out.push(Action::Send {
                        conn,
                        msg: ServerMsg::Event(WatchEvent {
                            kind,
                            path: path.clone(),
                            zxid: last,
                        }),
                    });
                };
                for p in &sw.data {
                    match self.tree.stat(p) {
                        None => fire(EventType::NodeDeleted, p, out),
                        Some(s) if s.mzxid > rel => fire(EventType::NodeDataChanged, p, out),
                        Some(_) => self.watches.add(session, WatchKind::Data, p)?,
                    }
                }
                for p in &sw.exist {
                    match self.tree.stat(p) {
                        Some(_) => fire(EventType::NodeCreated, p, out),
                        None => self.watches.add(session, WatchKind::Data, p)?,
                    }
                }
                for p in &sw.child {
                    match self.tree.stat(p) {
                        None => fire(EventType::NodeDeleted, p, out),
                        Some(s) if s.pzxid > rel => fire(EventType::NodeChildrenChanged, p, out),
                        Some(_) => self.watches.add(session, WatchKind::Child, p)?,
                    }
                }
                // Persistent watches are re-registered only where the session may still READ (it
                // could when it added them; the ACL may have changed since).
                for p in &sw.persistent {
                    if self.require(access, p, Perms::READ).is_ok() {
                        self.watches.add(session, WatchKind::Persistent, p)?;
                    }
                }
                for p in &sw.persistent_recursive {
                    if self.require(access, p, Perms::READ).is_ok() {
                        self.watches
                            .add(session, WatchKind::PersistentRecursive, p)?;
                    }
                }
                Ok(OpResult::Empty)
            }
        }
    }

    fn committed(&mut self, now: Now, txn: Txn, out: &mut Vec<Action>) {
        let applied = self.tree.apply(&txn);
        self.after_apply(now, &txn, applied, out);
        self.txns_since_snapshot += 1;
        if self.txns_since_snapshot >= self.config.snapshot_every_txns {
            self.txns_since_snapshot = 0;
            out.push(Action::Snapshot(Box::new(self.tree.clone())));
        }
        for conn in std::mem::take(&mut self.blocked) {
            self.process_queue(conn, out);
        }
    }

    fn after_apply(&mut self, now: Now, txn: &Txn, applied: Applied, out: &mut Vec<Action>) {
        // Events first: a client must see the event before any reply reflecting the change.
        for (kind, path) in &applied.events {
            for session in self.watches.trigger(*kind, path) {
                if let Some(&to) = self.session_conns.get(&session) {
                    out.push(Action::Send {
                        conn: to,
                        msg: ServerMsg::Event(WatchEvent {
                            kind: *kind,
                            path: path.clone(),
                            zxid: txn.zxid,
                        }),
                    });
                }
            }
        }
        let mine = txn.origin == self.config.server_id;
        match &txn.kind {
            TxnKind::CreateSession {
                timeout_ms,
                password,
            } => {
                if self.role == Role::Leading {
                    self.tracker.touch(txn.session, *timeout_ms, now.mono_ms);
                }
                let waiting = if mine {
                    self.in_flight.remove(&(SessionId(0), txn.xid))
                } else {
                    None
                };
                let Some(conn) = waiting.filter(|id| self.conns.contains_key(id)) else {
                    // The client left before its session existed; it expires unused.
                    return;
                };
                self.answered(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.session = Some(txn.session);
                }
                self.session_conns.insert(txn.session, conn);
                info!(session = %txn.session, timeout_ms, "session created");
                out.push(Action::Send {
                    conn,
                    msg: ServerMsg::Connected {
                        session: txn.session,
                        password: *password,
                        timeout_ms: *timeout_ms,
                        server_id: self.config.server_id,
                    },
                });
                self.process_queue(conn, out);
            }
            TxnKind::CloseSession => {
                self.closing.remove(&txn.session);
                self.tracker.remove(txn.session);
                self.touched.remove(&txn.session);
                self.watches.remove_session(txn.session);
                if mine {
                    self.in_flight.remove(&(txn.session, txn.xid));
                }
                if let Some(to) = self.session_conns.remove(&txn.session) {
                    let reason = if txn.xid == EXPIRE_XID {
                        Some(OpError::SessionExpired(txn.session))
                    } else {
                        None
                    };
                    info!(session = %txn.session, expired = reason.is_some(), "session closed");
                    out.push(Action::Send {
                        conn: to,
                        msg: ServerMsg::Ended(reason),
                    });
                    out.push(Action::CloseConn { conn: to });
                    if let Some(c) = self.conns.get_mut(&to) {
                        c.closed = true;
                        c.session = None;
                    }
                }
            }
            TxnKind::Write(_) | TxnKind::Refused(_) => {
                let waiting = if mine {
                    self.in_flight.remove(&(txn.session, txn.xid))
                } else {
                    None
                };
                if let Some(conn) = waiting.filter(|id| self.conns.contains_key(id)) {
                    self.answered(conn);
                    out.push(Action::Send {
                        conn,
                        msg: ServerMsg::Reply {
                            xid: txn.xid,
                            zxid: txn.zxid,
                            result: applied.result,
                        },
                    });
                    self.process_queue(conn, out);
                }
            }
        }
    }

    fn tick(&mut self, now: Now, out: &mut Vec<Action>) {
        match self.role {
            Role::Leading => {
                for session in self.tracker.expire(now.mono_ms) {
                    if self.closing.contains(&session) || self.tree.session(session).is_none() {
                        continue;
                    }
                    info!(%session, "session expired");
                    self.closing.insert(session);
                    out.push(Action::Submit(Submission {
                        origin: self.config.server_id,
                        session,
                        xid: EXPIRE_XID,
                        kind: SubmitKind::Txn(TxnKind::CloseSession),
                        auth: no_ids(),
                    }));
                }
            }
            Role::Following => {
                if !self.touched.is_empty() {
                    // Connected sessions count as heard from, pinged or not.
                    let touched = std::mem::take(&mut self.touched);
                    out.push(Action::Touches(touched.into_iter().collect()));
                }
            }
            Role::NotServing => {}
        }
    }
}

fn no_ids() -> Arc<[Id]> {
    Arc::from(Vec::new())
}

/// Checks a write needs no state for: path syntax, data size, multi shape, ACL syntax. A write
/// failing them never becomes a transaction. (Expanding `auth` needs the session's ids and is
/// the leader's, in `prep`.)
fn precheck_write(op: &WriteOp) -> Result<(), OpError> {
    let acl_syntax = |path: &str, acl: &[acl::AclEntry]| {
        acl::validate(acl).map_err(|reason| OpError::InvalidAcl {
            path: path.to_string(),
            reason,
        })
    };
    let size = |path: &str, data: &bytes::Bytes| {
        if data.len() > ZNODE_BYTES_MAX {
            Err(OpError::DataTooLarge {
                path: path.to_string(),
                len: data.len(),
                max: ZNODE_BYTES_MAX,
            })
        } else {
            Ok(())
        }
    };
    match op {
        WriteOp::Create {
            path,
            data,
            mode,
            acl,
        } => {
            path::validate(path, mode.is_sequential())?;
            size(path, data)?;
            acl_syntax(path, acl)
        }
        WriteOp::SetAcl { path, acl, .. } => {
            path::validate(path, false)?;
            acl_syntax(path, acl)
        }
        WriteOp::Delete { path, .. } | WriteOp::Check { path, .. } => path::validate(path, false),
        WriteOp::SetData { path, data, .. } => {
            path::validate(path, false)?;
            size(path, data)
        }
        WriteOp::Multi(ops) => {
            if ops.len() > MULTI_OPS_MAX {
                return Err(OpError::BadArguments(format!(
                    "a multi holds at most {MULTI_OPS_MAX} ops, got {}",
                    ops.len()
                )));
            }
            for op in ops {
                match op {
                    WriteOp::Multi(_) => {
                        return Err(OpError::BadArguments(
                            "a multi cannot contain a multi".into(),
                        ));
                    }
                    WriteOp::SetAcl { .. } => {
                        return Err(OpError::BadArguments(
                            "a multi cannot contain a setACL".into(),
                        ));
                    }
                    op => precheck_write(op)?,
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::CreateMode;
    use bytes::Bytes;

    struct Harness {
        core: ServerCore,
        now: Now,
        zxid: Zxid,
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with_super_ids(Vec::new())
        }

        fn with_super_ids(super_ids: Vec<Id>) -> Harness {
            let config = ServerConfig {
                session_timeout_min_ms: 1000,
                session_timeout_max_ms: 10_000,
                session_expiry_bucket_ms: 100,
                super_ids,
                ..ServerConfig::default()
            };
            let now = Now {
                mono_ms: 0,
                wall_ms: 1_000,
            };
            let mut h = Harness {
                core: ServerCore::new(config, DataTree::new()),
                now,
                zxid: Zxid::new(1, 0),
            };
            h.step(Input::SetRole(Role::Leading));
            h
        }

        fn step(&mut self, input: Input) -> Vec<Action> {
            let mut out = Vec::new();
            self.core.step(self.now, input, &mut out);
            out
        }

        /// Orders and commits every submission in `actions`, as a one-server leader would.
        fn commit_all(&mut self, actions: &[Action]) -> Vec<Action> {
            let mut out = Vec::new();
            for a in actions {
                let Action::Submit(sub) = a else { continue };
                match &sub.kind {
                    SubmitKind::Sync => out.extend(self.step(Input::Synced {
                        session: sub.session,
                        xid: sub.xid,
                    })),
                    SubmitKind::Txn(kind) => {
                        self.zxid = self.zxid.next().unwrap();
                        let session = if let TxnKind::CreateSession { .. } = kind {
                            SessionId(self.zxid.0)
                        } else {
                            sub.session
                        };
                        let txn = Txn {
                            zxid: self.zxid,
                            time_ms: self.now.wall_ms,
                            origin: sub.origin,
                            session,
                            xid: sub.xid,
                            kind: kind.clone(),
                        };
                        out.extend(self.step(Input::Committed(txn)));
                    }
                }
            }
            out
        }

        /// Opens a new session on `conn` and returns its id.
        fn connect(&mut self, conn: ConnId) -> SessionId {
            self.connect_as(conn, ConnIdentity::default())
        }

        /// `connect` from a client the transport identified as `identity`.
        fn connect_as(&mut self, conn: ConnId, identity: ConnIdentity) -> SessionId {
            let a = self.step(Input::Connect {
                conn,
                session: SessionId(0),
                password: vec![],
                timeout_ms: 2000,
                last_zxid_seen: Zxid::ZERO,
                new_password: [conn as u8; 16],
                identity,
            });
            let out = self.commit_all(&a);
            match &out[..] {
                [
                    Action::Send {
                        msg: ServerMsg::Connected { session, .. },
                        ..
                    },
                ] => *session,
                other => panic!("{other:?}"),
            }
        }

        fn request(&mut self, conn: ConnId, xid: i64, op: Op) -> Vec<Action> {
            self.step(Input::Request {
                conn,
                xid,
                op: Ok(op),
            })
        }
    }

    fn sends(actions: &[Action]) -> Vec<(ConnId, ServerMsg)> {
        actions
            .iter()
            .filter_map(|a| {
                if let Action::Send { conn, msg } = a {
                    Some((*conn, msg.clone()))
                } else {
                    None
                }
            })
            .collect()
    }

    fn create(path: &str) -> Op {
        Op::Write(WriteOp::Create {
            path: path.into(),
            data: Bytes::from_static(b"v"),
            mode: CreateMode::Persistent,
            acl: crate::acl::open_acl(),
        })
    }

    fn set(path: &str) -> Op {
        Op::Write(WriteOp::SetData {
            path: path.into(),
            data: Bytes::from_static(b"w"),
            version: -1,
        })
    }

    fn get(path: &str, watch: bool) -> Op {
        Op::Read(ReadOp::GetData {
            path: path.into(),
            watch,
        })
    }

    #[test]
    fn writes_are_answered_only_once_durable() {
        // Durability: no reply before the driver reports the transaction persisted.
        let mut h = Harness::new();
        h.connect(1);
        let a = h.request(1, 1, create("/a"));
        assert!(sends(&a).is_empty());
        assert!(matches!(&a[..], [Action::Submit(_)]));
        let out = h.commit_all(&a);
        assert!(matches!(
            &sends(&out)[..],
            [(
                1,
                ServerMsg::Reply {
                    xid: 1,
                    result: Ok(OpResult::Created { .. }),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn a_connections_requests_are_answered_in_order() {
        // FIFO client order: a read after a write waits for the write and sees it.
        let mut h = Harness::new();
        h.connect(1);
        let mut a = h.request(1, 1, create("/a"));
        a.extend(h.request(1, 2, get("/a", false)));
        a.extend(h.request(1, 3, set("/a")));
        assert_eq!(
            a.iter().filter(|x| matches!(x, Action::Submit(_))).count(),
            1,
            "the read holds back the later write"
        );
        assert!(sends(&a).is_empty());
        let out = h.commit_all(&a);
        let s = sends(&out);
        assert!(matches!(&s[0], (1, ServerMsg::Reply { xid: 1, .. })));
        assert!(matches!(
            &s[1],
            (
                1,
                ServerMsg::Reply {
                    xid: 2,
                    result: Ok(OpResult::Data { .. }),
                    ..
                }
            )
        ));
        assert_eq!(s.len(), 2);
        let out2 = h.commit_all(&out);
        assert!(matches!(
            &sends(&out2)[..],
            [(
                1,
                ServerMsg::Reply {
                    xid: 3,
                    result: Ok(OpResult::Stat(_)),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn watch_events_precede_the_data_that_caused_them() {
        // ZooKeeper ordering guarantee: the watcher gets the event before any reply showing the
        // change, and the writer (also watching) gets the event before its own reply.
        let mut h = Harness::new();
        h.connect(1);
        h.connect(2);
        let a = h.request(1, 1, create("/x"));
        h.commit_all(&a);
        h.request(1, 2, get("/x", true));
        h.request(2, 1, get("/x", true));
        let a = h.request(2, 2, set("/x"));
        let out = h.commit_all(&a);
        let s = sends(&out);
        assert_eq!(s.len(), 3, "{s:?}");
        let event_to = |c: ConnId| {
            s.iter().position(|(to, m)| {
                *to == c
                    && matches!(
                        m,
                        ServerMsg::Event(WatchEvent {
                            kind: EventType::NodeDataChanged,
                            ..
                        })
                    )
            })
        };
        let reply_pos = s
            .iter()
            .position(|(to, m)| *to == 2 && matches!(m, ServerMsg::Reply { xid: 2, .. }))
            .unwrap();
        assert!(event_to(1).is_some());
        assert!(event_to(2).unwrap() < reply_pos);
        // One-shot: a second change fires nothing.
        let a = h.request(2, 3, set("/x"));
        let out = h.commit_all(&a);
        assert_eq!(sends(&out).len(), 1);
    }

    #[test]
    fn expiry_removes_ephemerals_and_notifies_watchers() {
        let mut h = Harness::new();
        let s1 = h.connect(1);
        h.connect(2);
        let a = h.request(
            1,
            1,
            Op::Write(WriteOp::Create {
                path: "/e".into(),
                data: Bytes::new(),
                mode: CreateMode::Ephemeral,
                acl: crate::acl::open_acl(),
            }),
        );
        h.commit_all(&a);
        h.request(
            2,
            1,
            Op::Read(ReadOp::Exists {
                path: "/e".into(),
                watch: true,
            }),
        );
        // conn 2 keeps pinging, conn 1 is silent.
        h.now.mono_ms = 1500;
        h.step(Input::Ping { conn: 2 });
        h.now.mono_ms = 2100;
        let a = h.step(Input::Tick);
        let [Action::Submit(sub)] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(
            (sub.session, &sub.kind),
            (s1, &SubmitKind::Txn(TxnKind::CloseSession))
        );
        let out = h.commit_all(&a);
        let s = sends(&out);
        assert!(s.contains(&(
            2,
            ServerMsg::Event(WatchEvent {
                kind: EventType::NodeDeleted,
                path: "/e".into(),
                zxid: h.zxid
            })
        )));
        assert!(s.contains(&(1, ServerMsg::Ended(Some(OpError::SessionExpired(s1))))));
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::CloseConn { conn: 1 }))
        );
        assert!(h.core.tree().stat("/e").is_none());
        // The expired session cannot come back.
        let a = h.step(Input::Connect {
            conn: 3,
            session: s1,
            password: vec![1; 16],
            timeout_ms: 2000,
            last_zxid_seen: Zxid::ZERO,
            new_password: [0; 16],
            identity: Default::default(),
        });
        assert_eq!(
            sends(&a),
            vec![(3, ServerMsg::Ended(Some(OpError::SessionExpired(s1))))]
        );
    }

    #[test]
    fn reconnecting_keeps_the_session_and_checks_the_password() {
        let mut h = Harness::new();
        let s1 = h.connect(1);
        h.step(Input::Disconnected { conn: 1 });
        let a = h.step(Input::Connect {
            conn: 2,
            session: s1,
            password: vec![9; 16],
            timeout_ms: 0,
            last_zxid_seen: Zxid::ZERO,
            new_password: [0; 16],
            identity: Default::default(),
        });
        assert_eq!(
            sends(&a),
            vec![(2, ServerMsg::Ended(Some(OpError::AuthFailed(s1))))]
        );
        let a = h.step(Input::Connect {
            conn: 3,
            session: s1,
            password: vec![1; 16],
            timeout_ms: 0,
            last_zxid_seen: Zxid::ZERO,
            new_password: [0; 16],
            identity: Default::default(),
        });
        assert!(
            matches!(&sends(&a)[..], [(3, ServerMsg::Connected { session, .. })] if *session == s1)
        );
        // A client that has seen a newer zxid than this server must go elsewhere.
        let a = h.step(Input::Connect {
            conn: 4,
            session: s1,
            password: vec![1; 16],
            timeout_ms: 0,
            last_zxid_seen: Zxid::new(99, 1),
            new_password: [0; 16],
            identity: Default::default(),
        });
        assert!(matches!(
            &sends(&a)[..],
            [(4, ServerMsg::Ended(Some(OpError::NotServing(_))))]
        ));
    }

    #[test]
    fn statically_bad_writes_never_become_transactions() {
        let mut h = Harness::new();
        h.connect(1);
        let a = h.request(1, 1, create("/a/"));
        assert!(!a.iter().any(|x| matches!(x, Action::Submit(_))));
        assert!(matches!(
            &sends(&a)[..],
            [(
                1,
                ServerMsg::Reply {
                    xid: 1,
                    result: Err(OpError::BadPath { .. }),
                    ..
                }
            )]
        ));
        let big = Op::Write(WriteOp::SetData {
            path: "/a".into(),
            data: Bytes::from(vec![0; ZNODE_BYTES_MAX + 1]),
            version: -1,
        });
        let a = h.request(1, 2, big);
        assert!(matches!(
            &sends(&a)[..],
            [(
                1,
                ServerMsg::Reply {
                    xid: 2,
                    result: Err(OpError::DataTooLarge { .. }),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn persistent_watches_survive_firing() {
        let mut h = Harness::new();
        h.connect(1);
        h.connect(2);
        h.request(
            1,
            1,
            Op::Read(ReadOp::AddWatch {
                path: "/r".into(),
                recursive: true,
            }),
        );
        let mut count = 0;
        for (i, p) in ["/r", "/r/a", "/r/a/b"].iter().enumerate() {
            let a = h.request(2, i as i64, create(p));
            let out = h.commit_all(&a);
            count += sends(&out)
                .iter()
                .filter(|(c, m)| {
                    *c == 1
                        && matches!(
                            m,
                            ServerMsg::Event(WatchEvent {
                                kind: EventType::NodeCreated,
                                ..
                            })
                        )
                })
                .count();
        }
        assert_eq!(count, 3);
    }

    #[test]
    fn closing_a_session_answers_after_earlier_writes() {
        let mut h = Harness::new();
        let s1 = h.connect(1);
        let mut a = h.request(
            1,
            1,
            Op::Write(WriteOp::Create {
                path: "/e".into(),
                data: Bytes::new(),
                mode: CreateMode::Ephemeral,
                acl: crate::acl::open_acl(),
            }),
        );
        a.extend(h.step(Input::CloseSession { conn: 1 }));
        assert_eq!(
            a.iter().filter(|x| matches!(x, Action::Submit(_))).count(),
            2
        );
        let out = h.commit_all(&a);
        let s = sends(&out);
        assert!(matches!(
            &s[0],
            (
                1,
                ServerMsg::Reply {
                    xid: 1,
                    result: Ok(_),
                    ..
                }
            )
        ));
        assert_eq!(s[1], (1, ServerMsg::Ended(None)));
        assert!(h.core.tree().session(s1).is_none());
        assert!(h.core.tree().stat("/e").is_none());
    }

    fn from_ip(ip: &str) -> ConnIdentity {
        ConnIdentity {
            addr: Some(ip.parse().unwrap()),
            x509_principal: None,
            grants: None,
        }
    }

    fn create_with(path: &str, acl: &str) -> Op {
        Op::Write(WriteOp::Create {
            path: path.into(),
            data: Bytes::from_static(b"v"),
            mode: CreateMode::Persistent,
            acl: acl::parse_acl(acl).unwrap(),
        })
    }

    /// The one reply in `actions`.
    fn reply(actions: &[Action]) -> Result<OpResult, OpError> {
        let replies: Vec<_> = sends(actions)
            .into_iter()
            .filter_map(|(_, m)| match m {
                ServerMsg::Reply { result, .. } => Some(result),
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "{actions:?}");
        replies.into_iter().next().unwrap()
    }

    fn no_auth(path: &str, perm: Perms) -> Result<OpResult, OpError> {
        Err(OpError::NoAuth {
            path: path.into(),
            perm,
        })
    }

    #[test]
    fn reads_are_checked_by_the_serving_server_and_exists_is_not() {
        // ZooKeeper: getData and getChildren need READ (a refused read sets no watch), getACL
        // READ or ADMIN, exists nothing.
        let mut h = Harness::new();
        h.connect_as(1, from_ip("10.0.0.1"));
        h.connect_as(2, from_ip("10.0.0.2"));
        let a = h.request(1, 1, create_with("/s", "ip:10.0.0.1:cdrwa"));
        h.commit_all(&a);
        assert!(matches!(
            reply(&h.request(1, 2, get("/s", false))),
            Ok(OpResult::Data { .. })
        ));
        assert_eq!(
            reply(&h.request(2, 1, get("/s", true))),
            no_auth("/s", Perms::READ)
        );
        let children = Op::Read(ReadOp::GetChildren {
            path: "/s".into(),
            watch: true,
        });
        assert_eq!(
            reply(&h.request(2, 2, children)),
            no_auth("/s", Perms::READ)
        );
        let exists = Op::Read(ReadOp::Exists {
            path: "/s".into(),
            watch: false,
        });
        assert!(matches!(
            reply(&h.request(2, 3, exists)),
            Ok(OpResult::Stat(_))
        ));
        let getacl = Op::Read(ReadOp::GetAcl { path: "/s".into() });
        assert_eq!(
            reply(&h.request(2, 4, getacl.clone())),
            no_auth("/s", Perms::READ.union(Perms::ADMIN))
        );
        let add_watch = Op::Read(ReadOp::AddWatch {
            path: "/s".into(),
            recursive: true,
        });
        assert_eq!(
            reply(&h.request(2, 5, add_watch)),
            no_auth("/s", Perms::READ)
        );
        // A missing node is still NoNode, before any ACL.
        assert_eq!(
            reply(&h.request(2, 6, get("/none", false))),
            Err(OpError::NoNode("/none".into()))
        );
        // None of the refused reads left a watch: a change reaches nobody on connection 2.
        let a = h.request(1, 3, set("/s"));
        let out = h.commit_all(&a);
        assert!(sends(&out).iter().all(|(c, _)| *c == 1), "{out:?}");
        let Ok(OpResult::Acl { acl, stat }) = reply(&h.request(1, 4, getacl)) else {
            panic!()
        };
        assert_eq!(acl::format_acl(&acl), "ip:10.0.0.1:cdrwa");
        assert_eq!(stat.aversion, 0);
    }

    #[test]
    fn get_acl_without_admin_hides_digest_hashes() {
        let bob = acl::digest_id("bob:pw").unwrap();
        let mut h = Harness::new();
        h.connect_as(1, from_ip("10.0.0.1"));
        h.connect_as(2, from_ip("10.0.0.2"));
        let a = h.request(
            1,
            1,
            create_with("/n", &format!("digest:{bob}:cdrwa,ip:10.0.0.2:r")),
        );
        h.commit_all(&a);
        let getacl = || Op::Read(ReadOp::GetAcl { path: "/n".into() });
        let Ok(OpResult::Acl { acl, .. }) = reply(&h.request(2, 1, getacl())) else {
            panic!()
        };
        assert_eq!(acl::format_acl(&acl), "digest:bob:x:cdrwa,ip:10.0.0.2:r");
        let auth = Op::Read(ReadOp::AddAuth {
            scheme: "digest".into(),
            auth: Bytes::from_static(b"bob:pw"),
        });
        assert_eq!(reply(&h.request(2, 2, auth)), Ok(OpResult::Empty));
        let Ok(OpResult::Acl { acl, .. }) = reply(&h.request(2, 3, getacl())) else {
            panic!()
        };
        assert_eq!(
            acl::format_acl(&acl),
            format!("digest:{bob}:cdrwa,ip:10.0.0.2:r")
        );
    }

    #[test]
    fn add_auth_gives_the_connection_an_id_that_its_writes_carry() {
        // The session's ids live on its connection; each write's submission carries them to the
        // leader. Bad credentials and too many ids are refused naming the reason and the limit.
        let mut h = Harness::new();
        h.connect_as(1, from_ip("127.0.0.1"));
        let auth = |cred: &str| {
            Op::Read(ReadOp::AddAuth {
                scheme: "digest".into(),
                auth: Bytes::from(cred.to_string()),
            })
        };
        assert_eq!(reply(&h.request(1, 1, auth("bob:pw"))), Ok(OpResult::Empty));
        let a = h.request(1, 2, create("/x"));
        let [Action::Submit(sub)] = &a[..] else {
            panic!("{a:?}")
        };
        assert_eq!(
            &sub.auth[..],
            &[
                Id::new("ip", "127.0.0.1"),
                Id::new("digest", &acl::digest_id("bob:pw").unwrap())
            ]
        );
        h.commit_all(&a);
        let bad = |scheme: &str, cred: &'static [u8]| {
            Op::Read(ReadOp::AddAuth {
                scheme: scheme.into(),
                auth: Bytes::from_static(cred),
            })
        };
        for (xid, (op, want)) in [
            (bad("digest", b"nocolon"), "user:password"),
            (bad("ip", b"1.2.3.4"), "from the connection"),
            (bad("sasl", b"x"), "unknown auth scheme"),
        ]
        .into_iter()
        .enumerate()
        {
            let Err(e @ OpError::BadAuth { .. }) = reply(&h.request(1, 10 + xid as i64, op)) else {
                panic!("{want}")
            };
            assert!(e.to_string().contains(want), "{e}");
        }
        // The same id twice counts once; the limit counts the connection's own ip id.
        assert_eq!(
            reply(&h.request(1, 20, auth("bob:pw"))),
            Ok(OpResult::Empty)
        );
        for i in 0..AUTH_IDS_PER_SESSION_MAX - 2 {
            assert_eq!(
                reply(&h.request(1, 100 + i as i64, auth(&format!("u{i}:pw")))),
                Ok(OpResult::Empty)
            );
        }
        let Err(e) = reply(&h.request(1, 999, auth("one:more"))) else {
            panic!()
        };
        assert!(e.to_string().contains("64"), "{e}");
    }

    #[test]
    fn super_ids_read_everything() {
        let admin = Id::new("digest", &acl::digest_id("super:admin").unwrap());
        let mut h = Harness::with_super_ids(vec![admin]);
        h.connect_as(1, from_ip("10.0.0.1"));
        h.connect_as(2, from_ip("10.0.0.2"));
        let a = h.request(1, 1, create_with("/s", "ip:10.0.0.1:cdrwa"));
        h.commit_all(&a);
        assert_eq!(
            reply(&h.request(2, 1, get("/s", false))),
            no_auth("/s", Perms::READ)
        );
        let auth = Op::Read(ReadOp::AddAuth {
            scheme: "digest".into(),
            auth: Bytes::from_static(b"super:admin"),
        });
        assert_eq!(reply(&h.request(2, 2, auth)), Ok(OpResult::Empty));
        assert!(matches!(
            reply(&h.request(2, 3, get("/s", false))),
            Ok(OpResult::Data { .. })
        ));
    }

    #[test]
    fn statically_invalid_acls_never_become_transactions() {
        let mut h = Harness::new();
        h.connect(1);
        for (xid, text) in ["world:nobody:r", "digest:bob:r", "ip:300.0.0.1:r"]
            .iter()
            .enumerate()
        {
            let a = h.request(1, xid as i64 + 1, create_with("/a", text));
            assert!(!a.iter().any(|a| matches!(a, Action::Submit(_))), "{text}");
            let Err(OpError::InvalidAcl { path, reason }) = reply(&a) else {
                panic!("{text}")
            };
            assert_eq!(path, "/a");
            assert!(reason.contains("entry 0"), "{reason}");
        }
        let a = h.request(
            1,
            9,
            Op::Write(WriteOp::SetAcl {
                path: "/".into(),
                acl: Vec::new(),
                version: -1,
            }),
        );
        assert!(matches!(reply(&a), Err(OpError::InvalidAcl { .. })));
    }
}
