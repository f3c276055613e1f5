//! The task that owns a client's session: one gRPC `Session` stream at a time, the requests in
//! flight on it, the watch registrations, and reconnection.
//!
//! Duties, in order of precedence:
//! 1. Keep the session alive: ping after a third of the session timeout without sending, and
//!    declare the connection lost after two thirds without hearing from the server (the server
//!    expires the session after a whole timeout, so the last third is left for reconnecting).
//! 2. Match replies to requests by xid; publish the highest zxid seen.
//! 3. Route watch events (`watchers`), and register a read's watch when its reply arrives, so no
//!    event after that reply can be missed.
//! 4. On a broken connection: fail the requests in flight with `ConnectionLoss`, reconnect to the
//!    next address (round robin, capped backoff, all within one session timeout) with the same
//!    session id, password and last zxid seen, then send the `AddAuth`s the session was granted
//!    (a server keeps auth per connection, as ZooKeeper's does) and `SetWatches`, before any new
//!    request.
//! 5. On expiry or close: fail everything that waits, end every watch, and stop.

use super::watchers::{OneShotKind, Watchers};
use super::{ClientError, ClientOptions, Command, NewWatch, SessionEvent, SessionState, Shared};
use crate::convert::{event_from_proto, op_to_proto, reply_from_proto};
use crate::op::{ErrorCode, Op, OpResult, ReadOp};
use crate::zxid::{SessionId, Zxid};
use bytes::Bytes;
use drover_client::error_reason;
use drover_proto::MESSAGE_BYTES_MAX;
use drover_proto::v1::{self, client_message, coord_client::CoordClient, server_message};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, info, warn};

/// Messages queued towards the server beyond the requests in flight: pings, `SetWatches`,
/// `RemoveWatches` and `CloseSession`. The queue is sized `requests_in_flight_max` plus this, so
/// a full queue means the transport has stalled, and the connection is treated as lost.
const OUTBOUND_CONTROL_MESSAGES_MAX: usize = 64;

/// First wait after a full round of failed connection attempts; doubles up to the max.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Longest wait for the server's acknowledgement when the last handle is dropped without
/// `close()`: nobody waits for it, so give up early rather than keep the task alive.
const CLOSE_ON_DROP_TIMEOUT: Duration = Duration::from_secs(2);

/// One open `Session` stream.
struct Conn {
    addr: String,
    out: mpsc::Sender<v1::ClientMessage>,
    inbound: tonic::Streaming<v1::ServerMessage>,
    last_sent: Instant,
    last_recv: Instant,
}

impl Conn {
    fn send(&mut self, body: client_message::Body) -> Result<(), Lost> {
        match self.out.try_send(v1::ClientMessage { body: Some(body) }) {
            Ok(()) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Lost(
                "the outbound queue is full; the transport has stalled".into(),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Lost("the outbound stream was closed".into()))
            }
        }
    }
}

/// Why a connection ended while the session may still live.
struct Lost(String);

/// Why the session ended.
enum End {
    Closed,
    Expired(String),
}

/// Why one connection attempt failed.
enum AttemptError {
    /// The server ended the session: it is gone for good.
    SessionEnded { message: String },
    /// Anything else: try the next server.
    Failed(String),
}

/// The answer a request waits for.
enum Waiter {
    Caller {
        op: Op,
        watch: Option<NewWatch>,
        reply: oneshot::Sender<Result<OpResult, ClientError>>,
    },
    /// Requests the task makes itself (`SetWatches`, `RemoveWatches`): only logged.
    Internal(&'static str),
}

struct Session {
    addrs: Vec<String>,
    /// Index in `addrs` of the next address to try.
    next_addr: usize,
    options: ClientOptions,
    session_id: SessionId,
    password: Vec<u8>,
    /// The timeout the server granted; paces pings, loss detection and reconnection.
    timeout: Duration,
    /// Xids increase over the whole session, across connections.
    next_xid: i64,
    pending: BTreeMap<i64, Waiter>,
    watchers: Watchers,
    /// `(scheme, auth)` the server accepted, in order, sent again on every new connection.
    /// Invariant: no duplicates, at most `acl::AUTH_IDS_PER_SESSION_MAX`.
    auths: Vec<(String, Bytes)>,
    commands: mpsc::Receiver<Command>,
    /// False once every handle is gone.
    commands_open: bool,
    /// Set once the session is being closed: who waits for the acknowledgement.
    closing: Option<Vec<oneshot::Sender<Result<(), ClientError>>>>,
    closing_deadline: Option<Instant>,
    shared: Arc<Shared>,
}

/// Opens a new session (trying `addrs` round robin within `options.establish_timeout`) and
/// spawns the task that keeps it. Returns the session id.
pub(super) async fn spawn(
    addrs: Vec<String>,
    options: ClientOptions,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
) -> Result<SessionId, ClientError> {
    let no_server = |last_error: String| ClientError::NoServer {
        addrs: addrs.join(","),
        last_error,
    };
    if addrs.is_empty() {
        return Err(no_server("no address given".into()));
    }
    let deadline = Instant::now() + options.establish_timeout;
    let connect = v1::Connect {
        session_id: 0,
        password: Vec::new(),
        timeout_ms: millis(options.session_timeout),
        last_zxid_seen: 0,
    };
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut next_addr = 0;
    let mut last_error: String;
    let (conn, connected) = loop {
        let addr = &addrs[next_addr];
        next_addr = (next_addr + 1) % addrs.len();
        // The first round runs to its end whatever the deadline, so every address is tried.
        let attempt_deadline = Instant::now() + options.connect_timeout;
        match attempt(addr, connect.clone(), &options, attempt_deadline).await {
            Ok(ok) => break ok,
            Err(AttemptError::SessionEnded { message } | AttemptError::Failed(message)) => {
                debug!(addr = %addr, error = %message, "coord connection attempt failed");
                last_error = message;
            }
        }
        if next_addr == 0 {
            if Instant::now() + backoff >= deadline {
                return Err(no_server(last_error));
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
    };
    let session_id = SessionId(connected.session_id);
    let timeout = granted_timeout(&connected, &options);
    debug!(session_id = %session_id, addr = %conn.addr, timeout_ms = timeout.as_millis() as u64, "coord session opened");
    let session = Session {
        next_addr: addrs
            .iter()
            .position(|a| *a == conn.addr)
            .map_or(0, |i| (i + 1) % addrs.len()),
        addrs,
        options,
        session_id,
        password: connected.password,
        timeout,
        next_xid: 1,
        pending: BTreeMap::new(),
        watchers: Watchers::default(),
        auths: Vec::new(),
        commands,
        commands_open: true,
        closing: None,
        closing_deadline: None,
        shared,
    };
    let span = tracing::info_span!("coord_client", session_id = %session_id);
    tokio::spawn(session.run(conn).instrument(span));
    Ok(session_id)
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn granted_timeout(connected: &v1::Connected, options: &ClientOptions) -> Duration {
    match connected.timeout_ms {
        0 => options.session_timeout,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

/// One connection attempt to `addr`: connect, open the stream, send `connect`, wait for
/// `Connected`, all before `deadline`.
async fn attempt(
    addr: &str,
    connect: v1::Connect,
    options: &ClientOptions,
    deadline: Instant,
) -> Result<(Conn, v1::Connected), AttemptError> {
    let timed_out =
        || AttemptError::Failed(format!("no answer within {:?}", options.connect_timeout));
    let transport = drover_client::Transport {
        tls: options.tls.clone(),
        token: options.token.clone(),
        ..drover_client::Transport::plaintext(options.connect_timeout, options.request_timeout)
    };
    let endpoint = transport
        .endpoint(addr)
        .map_err(|e| AttemptError::Failed(e.to_string()))?;
    let channel = timeout_at(deadline, endpoint.connect())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| AttemptError::Failed(error_reason(&e)))?;
    let mut client = CoordClient::new(transport.with_credentials(channel))
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
    let (out, out_rx) =
        mpsc::channel(options.requests_in_flight_max + OUTBOUND_CONTROL_MESSAGES_MAX);
    // Queue `Connect` before opening the stream: it is the first thing the server reads.
    let first = v1::ClientMessage {
        body: Some(client_message::Body::Connect(connect)),
    };
    if out.try_send(first).is_err() {
        return Err(AttemptError::Failed(
            "cannot queue the connect message".into(),
        ));
    }
    let response = timeout_at(deadline, client.session(ReceiverStream::new(out_rx)))
        .await
        .map_err(|_| timed_out())?
        .map_err(|s| AttemptError::Failed(status_reason(&s)))?;
    let mut inbound = response.into_inner();
    let msg = timeout_at(deadline, inbound.message())
        .await
        .map_err(|_| timed_out())?
        .map_err(|s| AttemptError::Failed(status_reason(&s)))?;
    let now = Instant::now();
    let conn = Conn {
        addr: addr.to_string(),
        out,
        inbound,
        last_sent: now,
        last_recv: now,
    };
    match msg.and_then(|m| m.body) {
        Some(server_message::Body::Connected(c)) => Ok((conn, c)),
        Some(server_message::Body::Ended(e)) => Err(ended_error(&e)),
        None => Err(AttemptError::Failed(
            "the server closed the stream before answering".into(),
        )),
        Some(_) => Err(AttemptError::Failed(
            "the server did not answer Connect first".into(),
        )),
    }
}

fn ended_error(e: &v1::SessionEnded) -> AttemptError {
    let message = if e.message.is_empty() {
        format!("session ended ({})", e.code)
    } else {
        e.message.clone()
    };
    match crate::convert::error_code_from_proto(e.code) {
        Some(ErrorCode::SessionExpired | ErrorCode::AuthFailed) => {
            AttemptError::SessionEnded { message }
        }
        _ => AttemptError::Failed(message),
    }
}

fn status_reason(s: &tonic::Status) -> String {
    use std::error::Error;
    if s.code() == tonic::Code::Unimplemented {
        return "the server does not serve coord".into();
    }
    match s.source() {
        Some(src) => error_reason(src),
        None if s.message().is_empty() => format!("{:?}", s.code()),
        None => s.message().to_string(),
    }
}

impl Session {
    async fn run(mut self, mut conn: Conn) {
        let end = loop {
            let lost = match self.serve(&mut conn).await {
                Ok(end) => break end,
                Err(lost) => lost,
            };
            let lost_at = Instant::now();
            warn!(addr = %conn.addr, reason = %lost.0, "coord connection lost; reconnecting");
            self.fail_pending(|| ClientError::ConnectionLoss {
                addr: conn.addr.clone(),
            });
            self.shared
                .set_state(SessionState::Disconnected, SessionEvent::Disconnected);
            match self.reconnect(lost_at).await {
                Ok(new) => conn = new,
                Err(end) => break end,
            }
            info!(addr = %conn.addr, "coord session reconnected");
            self.shared
                .set_state(SessionState::Connected, SessionEvent::Reconnected);
        };
        match end {
            End::Closed => {
                debug!("coord session closed");
                self.finish(
                    ClientError::Closed,
                    SessionState::Closed,
                    SessionEvent::Closed,
                );
            }
            End::Expired(reason) => {
                warn!(reason = %reason, "coord session expired");
                let err = ClientError::SessionExpired {
                    session: self.session_id,
                };
                self.finish(err, SessionState::Expired, SessionEvent::Expired);
            }
        }
    }

    /// Fails everything that waits with `err`, then publishes the final state.
    fn finish(&mut self, err: ClientError, state: SessionState, event: SessionEvent) {
        // Publish first: callers whose reply channel closes read the state to pick their error.
        self.shared.set_state(state, event);
        self.fail_pending(|| err.clone());
        self.watchers.end_all(&err);
        // Closing is what the caller asked for; an expired session is as gone as a closed one.
        for reply in self.closing.take().into_iter().flatten() {
            let _ = reply.send(Ok(()));
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Request { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Close { reply } => {
                    let _ = reply.send(Ok(()));
                }
                Command::Unwatch { .. } => {}
            }
        }
    }

    fn fail_pending(&mut self, err: impl Fn() -> ClientError) {
        for (_, waiter) in std::mem::take(&mut self.pending) {
            if let Waiter::Caller { reply, .. } = waiter {
                let _ = reply.send(Err(err()));
            }
        }
    }

    /// Serves one connection until the session ends (`Ok`) or the connection breaks (`Err`).
    async fn serve(&mut self, conn: &mut Conn) -> Result<End, Lost> {
        loop {
            let ping_at = conn.last_sent + self.timeout / 3;
            let dead_at = conn.last_recv + self.timeout * 2 / 3;
            let closing_deadline = self.closing_deadline;
            let accept =
                self.commands_open && self.pending.len() < self.options.requests_in_flight_max;
            tokio::select! {
                cmd = self.commands.recv(), if accept => match cmd {
                    Some(cmd) => self.command(conn, cmd)?,
                    None => {
                        self.commands_open = false;
                        if self.closing.is_none() {
                            debug!("every client handle dropped; closing the session");
                            self.start_close(conn, None, Some(CLOSE_ON_DROP_TIMEOUT))?;
                        }
                    }
                },
                msg = conn.inbound.message() => match msg {
                    Ok(Some(msg)) => {
                        conn.last_recv = Instant::now();
                        if let Some(end) = self.message(conn, msg)? {
                            return Ok(end);
                        }
                    }
                    Ok(None) => return Err(Lost("the server closed the stream".into())),
                    Err(status) => return Err(Lost(status_reason(&status))),
                },
                _ = sleep_until(ping_at) => conn.send(client_message::Body::Ping(v1::Ping {}))?,
                _ = sleep_until(dead_at) => {
                    return Err(Lost(format!("no message from the server for {:?}", self.timeout * 2 / 3)));
                }
                _ = sleep_until(closing_deadline.unwrap_or(dead_at)), if closing_deadline.is_some() => {
                    // Nobody waits for this close (every handle is gone); the server expires
                    // the session by itself.
                    return Ok(End::Closed);
                }
            }
        }
    }

    fn start_close(
        &mut self,
        conn: &mut Conn,
        reply: Option<oneshot::Sender<Result<(), ClientError>>>,
        deadline: Option<Duration>,
    ) -> Result<(), Lost> {
        let first = self.closing.is_none();
        self.closing.get_or_insert_with(Vec::new).extend(reply);
        if let Some(d) = deadline {
            self.closing_deadline = Some(Instant::now() + d);
        }
        if first {
            conn.send(client_message::Body::Close(v1::CloseSession {}))?;
        }
        Ok(())
    }

    fn command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), Lost> {
        match cmd {
            Command::Request { reply, .. } if self.closing.is_some() => {
                let _ = reply.send(Err(ClientError::Closed));
                Ok(())
            }
            // The caller gave up (its request timeout passed while the request queued, e.g.
            // during a reconnect): sending it now would apply a write nobody waits for.
            Command::Request { reply, .. } if reply.is_closed() => Ok(()),
            Command::Request { op, watch, reply } => {
                self.request(conn, op, |op| Waiter::Caller { op, watch, reply })
            }
            Command::Unwatch {
                path,
                recursive,
                id,
            } => {
                if self.watchers.remove_persistent(&path, recursive, id) {
                    self.remove_watches(conn, path)?;
                }
                Ok(())
            }
            Command::Close { reply } => self.start_close(conn, Some(reply), None),
        }
    }

    /// Removes the server's watches on `path`, unless a read that sets a watch there is in
    /// flight: the server removes every watch of the path, and would take that one too.
    fn remove_watches(&mut self, conn: &mut Conn, path: String) -> Result<(), Lost> {
        let setting_watch_on_path = self.pending.values().any(|w| match w {
            Waiter::Caller {
                op:
                    Op::Read(
                        ReadOp::GetData { path: p, .. }
                        | ReadOp::Exists { path: p, .. }
                        | ReadOp::GetChildren { path: p, .. }
                        | ReadOp::AddWatch { path: p, .. },
                    ),
                watch: Some(_),
                ..
            } => *p == path,
            _ => false,
        });
        if setting_watch_on_path {
            return Ok(());
        }
        let op = Op::Read(ReadOp::RemoveWatches { path });
        self.request(conn, op, |_| Waiter::Internal("remove watches"))
    }

    /// Sends `op` with the next xid and files its waiter. The waiter is filed before sending, so
    /// a send that breaks the connection fails it with `ConnectionLoss` like any other.
    fn request(
        &mut self,
        conn: &mut Conn,
        op: Op,
        waiter: impl FnOnce(Op) -> Waiter,
    ) -> Result<(), Lost> {
        let xid = self.next_xid;
        self.next_xid += 1;
        let req = op_to_proto(xid, &op);
        let len = req.encoded_len();
        let waiter = waiter(op);
        if len > MESSAGE_BYTES_MAX {
            // Sending it would break the stream for every request in flight.
            if let Waiter::Caller { reply, .. } = waiter {
                let err = crate::op::OpError::BadArguments(format!(
                    "the request is {len} bytes; the limit is {MESSAGE_BYTES_MAX} bytes"
                ));
                let _ = reply.send(Err(ClientError::Server(crate::convert::ServerError {
                    code: err.code(),
                    message: err.to_string(),
                    op_index: None,
                })));
            }
            return Ok(());
        }
        self.pending.insert(xid, waiter);
        conn.send(client_message::Body::Request(req))
    }

    /// Handles one server message; `Some` when it ends the session.
    fn message(&mut self, conn: &mut Conn, msg: v1::ServerMessage) -> Result<Option<End>, Lost> {
        match msg.body {
            Some(server_message::Body::Reply(reply)) => {
                self.see_zxid(reply.zxid);
                self.reply(conn, reply)?;
            }
            Some(server_message::Body::Event(e)) => {
                self.see_zxid(e.zxid);
                match event_from_proto(e) {
                    Ok(e) => {
                        debug!(path = %e.path, kind = ?e.kind, zxid = %e.zxid, "watch event");
                        for path in self.watchers.route(&e) {
                            self.remove_watches(conn, path)?;
                        }
                    }
                    Err(err) => warn!(error = %err, "ignoring a watch event"),
                }
            }
            Some(server_message::Body::Pong(p)) => self.see_zxid(p.zxid),
            Some(server_message::Body::Ended(e)) => {
                let code = crate::convert::error_code_from_proto(e.code);
                return match code {
                    None => Ok(Some(End::Closed)),
                    Some(ErrorCode::SessionExpired | ErrorCode::AuthFailed) => {
                        Ok(Some(End::Expired(e.message)))
                    }
                    Some(_) => Err(Lost(format!(
                        "the server ended the connection: {}",
                        e.message
                    ))),
                };
            }
            Some(server_message::Body::Connected(_)) => {
                warn!(addr = %conn.addr, "ignoring a second Connected on one stream");
            }
            None => warn!(addr = %conn.addr, "ignoring an empty server message"),
        }
        Ok(None)
    }

    fn see_zxid(&mut self, zxid: u64) {
        self.shared.see_zxid(zxid);
    }

    fn reply(&mut self, conn: &mut Conn, reply: v1::Reply) -> Result<(), Lost> {
        let xid = reply.xid;
        let Some(waiter) = self.pending.remove(&xid) else {
            warn!(addr = %conn.addr, xid, "ignoring a reply to no request in flight");
            return Ok(());
        };
        let result = reply_from_proto(reply);
        match waiter {
            Waiter::Internal(what) => {
                if let Err(e) = result {
                    warn!(what, error = %e, "coord request of the client itself failed");
                }
            }
            Waiter::Caller { op, watch, reply } => {
                let mut result = result.map_err(ClientError::Server);
                if let Op::Read(ReadOp::Exists { .. }) = op {
                    // A missing node is an answer to `exists`, not a failure, whichever way the
                    // server says it.
                    if matches!(&result, Err(ClientError::Server(e)) if e.code == ErrorCode::NoNode)
                    {
                        result = Ok(OpResult::NoStat);
                    }
                }
                if let (Ok(r), Some(watch)) = (&result, watch) {
                    self.register(&op, r, watch);
                }
                if let (Ok(_), Op::Read(ReadOp::AddAuth { scheme, auth })) = (&result, &op) {
                    let granted = (scheme.clone(), auth.clone());
                    if !self.auths.contains(&granted)
                        && self.auths.len() < crate::acl::AUTH_IDS_PER_SESSION_MAX
                    {
                        self.auths.push(granted);
                    }
                }
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    /// Files the watch a successful read asked for. Done here, while handling the reply, so any
    /// event that follows the reply on the stream finds it.
    fn register(&mut self, op: &Op, result: &OpResult, watch: NewWatch) {
        let Op::Read(read) = op else { return };
        let path = match read {
            ReadOp::GetData { path, .. }
            | ReadOp::Exists { path, .. }
            | ReadOp::GetChildren { path, .. }
            | ReadOp::AddWatch { path, .. } => path.clone(),
            _ => return,
        };
        match watch {
            NewWatch::OneShot { kind, tx } => {
                // `exists` on a present node leaves a data watch, on a missing one an exist watch.
                let kind = match (kind, result) {
                    (OneShotKind::Exist, OpResult::Stat(_)) => OneShotKind::Data,
                    (kind, _) => kind,
                };
                self.watchers.add_one_shot(kind, path, tx);
            }
            NewWatch::Persistent { recursive, id, tx } => {
                self.watchers.add_persistent(path, recursive, id, tx);
            }
        }
    }

    /// Finds a server that takes the session back, within one session timeout of the loss.
    async fn reconnect(&mut self, lost_at: Instant) -> Result<Conn, End> {
        let deadline = lost_at + self.timeout;
        let mut backoff = RECONNECT_BACKOFF_MIN;
        let mut tried = 0;
        loop {
            if self.closing.is_some()
                && !self.commands_open
                && self.closing_deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Err(End::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(End::Expired(format!(
                    "no coord server took the session back within its timeout of {:?}",
                    self.timeout
                )));
            }
            let addr = self.addrs[self.next_addr].clone();
            self.next_addr = (self.next_addr + 1) % self.addrs.len();
            let connect = v1::Connect {
                session_id: self.session_id.0,
                password: self.password.clone(),
                timeout_ms: millis(self.options.session_timeout),
                last_zxid_seen: self
                    .shared
                    .last_zxid_seen
                    .load(std::sync::atomic::Ordering::Acquire),
            };
            let attempt_deadline = (now + self.options.connect_timeout).min(deadline);
            match attempt(&addr, connect, &self.options, attempt_deadline).await {
                Ok((mut conn, connected)) => {
                    if connected.session_id != self.session_id.0 {
                        return Err(End::Expired(format!(
                            "{addr} answered with session {} instead",
                            SessionId(connected.session_id)
                        )));
                    }
                    self.timeout = granted_timeout(&connected, &self.options);
                    match self.resume(&mut conn) {
                        Ok(()) => return Ok(conn),
                        Err(Lost(reason)) => {
                            debug!(addr = %addr, reason = %reason, "resuming failed")
                        }
                    }
                }
                Err(AttemptError::SessionEnded { message }) => return Err(End::Expired(message)),
                Err(AttemptError::Failed(reason)) => {
                    debug!(addr = %addr, reason = %reason, "coord reconnection attempt failed");
                }
            }
            tried += 1;
            if tried % self.addrs.len() == 0 {
                let wake = (Instant::now() + backoff).min(deadline);
                sleep_until(wake).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }

    /// First messages on a new connection: the watches to re-register, then the close that
    /// was under way.
    fn resume(&mut self, conn: &mut Conn) -> Result<(), Lost> {
        // Auth first: the watches and every later request are checked with it.
        for (scheme, auth) in self.auths.clone() {
            let op = Op::Read(ReadOp::AddAuth { scheme, auth });
            self.request(conn, op, |_| Waiter::Internal("add auth"))?;
        }
        let relative = Zxid(
            self.shared
                .last_zxid_seen
                .load(std::sync::atomic::Ordering::Acquire),
        );
        if let Some(set) = self.watchers.set_watches(relative) {
            debug!(
                relative_zxid = %relative,
                watches = set.data.len() + set.exist.len() + set.child.len() + set.persistent.len() + set.persistent_recursive.len(),
                "re-registering watches"
            );
            self.request(conn, Op::Read(ReadOp::SetWatches(set)), |_| {
                Waiter::Internal("set watches")
            })?;
        }
        if self.closing.is_some() {
            conn.send(client_message::Body::Close(v1::CloseSession {}))?;
        }
        Ok(())
    }
}
