//! Peer links over plain TCP: the core writes ZAB messages straight into the socket, so a proposal
//! is on its way to the followers before the core fsyncs its own log, with no task in between.
//!
//! Each replica opens one outbound link to every other replica and only writes on it; it only
//! reads on the links others opened to it. Finding a peer: `Peer.Endpoint` on the gRPC address
//! `--peers` names answers where that replica accepts peer links, a listener it opens (once per
//! local IP) on the IP the question arrived on, on `CoordConfig::peer_port` (0: any free port).
//! So `--peers` keeps naming one address per master.
//!
//! Wire: the connector sends `PEER_HELLO_MAGIC` and its id (u32 LE), then frames
//! `[len: u32 LE][postcard PeerMsg]`. With TLS (`PeerTls`) all of it travels inside a TLS
//! session: the acceptor requires a master certificate whose name is `master-<id>` for the id
//! the hello gives, and the connector verifies the acceptor as `master.drover`. The core still
//! writes without a task in between: it encrypts into the link's rustls connection and writes
//! the records the socket takes now (`OutState::write_some`). A link that breaks (write error, end of stream, bad frame)
//! reports the peer down to the core and reconnects with backoff; messages that could not be sent
//! are dropped, which ZAB tolerates (a gap makes a follower resync).

use super::{CoreMsg, PEER_MESSAGE_BYTES_MAX};
use crate::replica::Input;
use crate::zab::{PeerId, PeerMsg};
use drover_proto::v1;
use drover_proto::v1::peer_client::PeerClient;
use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, error, info, warn};

use drover_security::{ALPN_PEER, CertIdentity, HandshakeLimits, Role, TlsConfig, TlsError};

/// First bytes of every peer link.
pub const PEER_HELLO_MAGIC: &[u8; 8] = b"DRVPEER1";
/// Bytes one outbound link buffers while the socket does not take them; past it, messages are
/// dropped (one larger message, such as a snapshot, is still taken when nothing else waits).
const PEER_OUTBOUND_BYTES_MAX: usize = 64 << 20;
/// Buffer capacity a link keeps once empty (after a snapshot went out, say).
const PEER_BUFFER_KEPT_BYTES: usize = 1 << 20;
/// Read buffer of an inbound link.
const PEER_READ_BUFFER_BYTES: usize = 256 << 10;
/// A connector must send its hello within this.
const PEER_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// TLS for the peer links and for the `Peer.Endpoint` call that finds them.
#[derive(Clone)]
pub struct PeerTls {
    /// This master's TLS material (gRPC calls to peers).
    config: TlsConfig,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl PeerTls {
    pub fn new(config: &TlsConfig) -> Result<PeerTls, TlsError> {
        config.require_role(Role::Master)?;
        let mut server = (*config.server_config(true, &[ALPN_PEER])?).clone();
        // Session tickets would be the only bytes the acceptor ever sends on a write-only link.
        server.send_tls13_tickets = 0;
        Ok(PeerTls {
            config: config.clone(),
            client: config.client_config(&[ALPN_PEER])?,
            server: Arc::new(server),
        })
    }
}

/// A socket the link task and the core share, and for TLS the session the core encrypts with.
struct Link {
    stream: Arc<TcpStream>,
    tls: Option<rustls::ClientConnection>,
}

/// `io::Write` over a shared tokio socket that never waits (`WouldBlock` when full).
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How an outbound link (re)connects.
#[derive(Clone, Copy, Debug)]
pub struct LinkTimings {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
}

/// The core's handle on one outbound link: it queues messages and writes them without waiting.
pub struct OutLink {
    peer: PeerId,
    state: Arc<Mutex<OutState>>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct OutState {
    /// The connected socket; None while the link is down (messages are dropped).
    stream: Option<Link>,
    /// Encoded frames not yet written (for TLS: not yet handed to the session).
    buf: Vec<u8>,
    /// The core saw the socket fail; the link task reconnects.
    broken: bool,
}

impl OutState {
    /// Bytes still to go out: frames not written, or TLS records not yet sent.
    fn pending(&self) -> bool {
        !self.buf.is_empty()
            || self
                .stream
                .as_ref()
                .and_then(|l| l.tls.as_ref())
                .is_some_and(|t| t.wants_write())
    }

    /// Writes what the socket takes now. False once the socket failed.
    fn write_some(&mut self) -> bool {
        let Some(link) = self.stream.as_mut() else {
            self.buf.clear();
            return true;
        };
        let mut written = 0;
        match &mut link.tls {
            None => {
                while written < self.buf.len() {
                    match link.stream.try_write(&self.buf[written..]) {
                        Ok(0) => {
                            self.broken = true;
                            break;
                        }
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.broken = true;
                            break;
                        }
                    }
                }
            }
            Some(tls) => loop {
                // Hand frames to the session (it takes up to its buffer limit), then send the
                // records the socket takes; stop when either is full.
                if written < self.buf.len() {
                    match tls.writer().write(&self.buf[written..]) {
                        Ok(n) => written += n,
                        Err(_) => {
                            self.broken = true;
                            break;
                        }
                    }
                }
                let mut blocked = false;
                while tls.wants_write() {
                    match tls.write_tls(&mut TryWrite(&link.stream)) {
                        Ok(0) => {
                            self.broken = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            blocked = true;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            self.broken = true;
                            break;
                        }
                    }
                }
                if self.broken || blocked || written == self.buf.len() {
                    break;
                }
            },
        }
        if self.broken {
            self.buf.clear();
            self.stream = None;
            return false;
        }
        self.buf.drain(..written);
        if self.buf.is_empty() && self.buf.capacity() > PEER_BUFFER_KEPT_BYTES {
            // Do not hold on to a snapshot's worth of memory.
            self.buf = Vec::new();
        }
        true
    }
}

impl OutState {
    /// Bytes the acceptor sent on this write-only link: on plaintext always wrong; with TLS,
    /// records for the session (alerts, key updates) but never data.
    fn take_inbound(&mut self, mut bytes: &[u8]) -> Result<(), &'static str> {
        let Some(tls) = self.stream.as_mut().and_then(|l| l.tls.as_mut()) else {
            return Err("the peer sent bytes on a write-only link");
        };
        while !bytes.is_empty() {
            if tls.read_tls(&mut bytes).is_err() {
                return Err("TLS read failed");
            }
            let state = tls
                .process_new_packets()
                .map_err(|_| "TLS error from the peer")?;
            if state.peer_has_closed() {
                return Err("closed by the peer");
            }
            if state.plaintext_bytes_to_read() > 0 {
                let mut sink = [0u8; 1];
                let _ = tls.reader().read(&mut sink);
                return Err("the peer sent bytes on a write-only link");
            }
        }
        Ok(())
    }
}

fn lock(state: &Mutex<OutState>) -> std::sync::MutexGuard<'_, OutState> {
    // The state is a buffer and a socket: still consistent if a holder panicked.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OutLink {
    /// Starts the link task for `peer` at gRPC address `addr` and returns the core's handle.
    pub fn spawn(
        me: PeerId,
        peer: PeerId,
        addr: String,
        timings: LinkTimings,
        tls: Option<PeerTls>,
        inbox: mpsc::Sender<CoreMsg>,
    ) -> OutLink {
        let state = Arc::new(Mutex::new(OutState::default()));
        let notify = Arc::new(Notify::new());
        tokio::spawn(run_link(
            (me, peer),
            addr,
            timings,
            tls,
            Arc::clone(&state),
            Arc::clone(&notify),
            inbox,
        ));
        OutLink {
            peer,
            state,
            notify,
        }
    }

    /// Adds `msg` to what goes out at the next `flush`; dropped while the link is down or full.
    pub fn queue(&self, msg: &PeerMsg) {
        let mut st = lock(&self.state);
        if st.stream.is_none() {
            return;
        }
        let start = st.buf.len();
        if start >= PEER_OUTBOUND_BYTES_MAX {
            debug!(peer = self.peer, "peer link full; dropping a message");
            return;
        }
        st.buf.extend_from_slice(&[0; 4]);
        let buf = std::mem::take(&mut st.buf);
        st.buf = match postcard::to_extend(msg, buf) {
            Ok(buf) => buf,
            Err(e) => {
                // Cannot happen for our own types; keep the stream framed regardless.
                error!(peer = self.peer, error = %e, "cannot encode a peer message");
                return;
            }
        };
        let len = st.buf.len() - start - 4;
        if len > PEER_MESSAGE_BYTES_MAX || (start > 0 && st.buf.len() > PEER_OUTBOUND_BYTES_MAX) {
            debug!(
                peer = self.peer,
                bytes = len,
                "peer message over the link's limits; dropping it"
            );
            st.buf.truncate(start);
            return;
        }
        st.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    }

    /// Writes queued messages as far as the socket takes them now; the link task writes the rest
    /// once the socket is writable again.
    pub fn flush(&self) {
        let mut st = lock(&self.state);
        if st.buf.is_empty() {
            return;
        }
        let ok = st.write_some();
        if !ok || st.pending() {
            self.notify.notify_one();
        }
    }
}

/// Connects, serves until the link breaks, reports the peer down, backs off, and again; ends
/// when the core is gone.
async fn run_link(
    (me, peer): (PeerId, PeerId),
    addr: String,
    timings: LinkTimings,
    tls: Option<PeerTls>,
    state: Arc<Mutex<OutState>>,
    notify: Arc<Notify>,
    inbox: mpsc::Sender<CoreMsg>,
) {
    let mut backoff = timings.backoff_min;
    loop {
        match connect(me, &addr, timings.connect_timeout, tls.as_ref()).await {
            Ok((stream, session, raw)) => {
                backoff = timings.backoff_min;
                debug!(peer, %addr, %raw, tls = session.is_some(), "peer link up");
                let stream = Arc::new(stream);
                {
                    let mut st = lock(&state);
                    st.buf.clear();
                    st.broken = false;
                    st.stream = Some(Link {
                        stream: Arc::clone(&stream),
                        tls: session,
                    });
                }
                let why = serve_link(&stream, &state, &notify).await;
                debug!(peer, %addr, reason = why, "peer link down");
                let mut st = lock(&state);
                st.stream = None;
                st.buf.clear();
            }
            Err(e) => debug!(peer, %addr, error = %e, "cannot reach peer"),
        }
        if inbox
            .send(CoreMsg::Input(Input::PeerDown(peer)))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(timings.backoff_max);
    }
}

/// Finishes writes the core left when the socket was full, and watches for the peer closing.
/// Returns why the link broke.
async fn serve_link(stream: &TcpStream, state: &Mutex<OutState>, notify: &Notify) -> &'static str {
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            readable = stream.readable() => {
                if readable.is_err() {
                    return "socket error";
                }
                match stream.try_read(&mut probe) {
                    Ok(0) => return "closed by the peer",
                    Ok(n) => {
                        if let Err(why) = lock(state).take_inbound(&probe[..n]) {
                            return why;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return "socket error",
                }
            }
        }
        loop {
            let done = {
                let mut st = lock(state);
                if st.broken || st.stream.is_none() || !st.write_some() {
                    return "write failed";
                }
                !st.pending()
            };
            if done {
                break;
            }
            if stream.writable().await.is_err() {
                return "socket error";
            }
        }
    }
}

/// Asks `addr` (gRPC) where it takes peer links and opens one: (stream, TLS session, its
/// address).
async fn connect(
    me: PeerId,
    addr: &str,
    timeout: Duration,
    tls: Option<&PeerTls>,
) -> Result<(TcpStream, Option<rustls::ClientConnection>, SocketAddr), String> {
    let transport = drover_client::Transport {
        tls: tls.map(|t| t.config.clone()),
        ..drover_client::Transport::plaintext(timeout, timeout)
    };
    let endpoint = transport
        .endpoint(addr)
        .map_err(|e| format!("bad peer address: {e}"))?
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| drover_client::error_reason(&e))?;
    let answer = PeerClient::new(channel)
        .endpoint(v1::PeerEndpointRequest { from: me })
        .await
        .map_err(|s| format!("Endpoint: {s}"))?
        .into_inner();
    let raw: SocketAddr = answer
        .addr
        .parse()
        .map_err(|e| format!("Endpoint answered {:?}: {e}", answer.addr))?;
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(raw))
        .await
        .map_err(|_| format!("connecting to {raw} timed out"))?
        .map_err(|e| format!("connecting to {raw}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut hello = [0u8; 12];
    hello[..8].copy_from_slice(PEER_HELLO_MAGIC);
    hello[8..].copy_from_slice(&me.to_le_bytes());
    let Some(tls) = tls else {
        stream
            .write_all(&hello)
            .await
            .map_err(|e| format!("hello to {raw}: {e}"))?;
        return Ok((stream, None, raw));
    };
    let name = rustls_pki_types_name(Role::Master.server_name())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.client));
    let mut session = tokio::time::timeout(timeout, connector.connect(name, stream))
        .await
        .map_err(|_| format!("TLS handshake with {raw} timed out"))?
        .map_err(|e| format!("TLS handshake with {raw}: {e}"))?;
    session
        .write_all(&hello)
        .await
        .map_err(|e| format!("hello to {raw}: {e}"))?;
    session
        .flush()
        .await
        .map_err(|e| format!("hello to {raw}: {e}"))?;
    let (stream, session) = session.into_inner();
    Ok((stream, Some(session), raw))
}

fn rustls_pki_types_name(
    name: &'static str,
) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(name).map_err(|e| format!("server name {name}: {e}"))
}

/// The inbound side: listeners (one per local IP peers reach us on) and their readers.
pub struct PeerListeners {
    me: PeerId,
    voters: Vec<PeerId>,
    port: u16,
    inbox: mpsc::Sender<CoreMsg>,
    bound: Mutex<HashMap<IpAddr, SocketAddr>>,
    tls: Option<PeerTls>,
}

impl PeerListeners {
    pub fn new(
        me: PeerId,
        voters: Vec<PeerId>,
        port: u16,
        tls: Option<PeerTls>,
        inbox: mpsc::Sender<CoreMsg>,
    ) -> PeerListeners {
        PeerListeners {
            me,
            voters,
            port,
            inbox,
            bound: Mutex::new(HashMap::new()),
            tls,
        }
    }

    pub fn is_voter(&self, peer: PeerId) -> bool {
        peer != self.me && self.voters.contains(&peer)
    }

    /// Where peers reaching us at `ip` open their links; listens there first if not yet.
    pub fn endpoint(&self, ip: IpAddr) -> io::Result<SocketAddr> {
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = bound.get(&ip) {
            return Ok(*addr);
        }
        let std_listener = std::net::TcpListener::bind((ip, self.port))?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        info!(%addr, tls = self.tls.is_some(), "accepting peer links");
        match &self.tls {
            None => {
                tokio::spawn(accept_loop(
                    listener,
                    self.me,
                    self.voters.clone(),
                    self.inbox.clone(),
                ));
            }
            Some(tls) => {
                let limits = HandshakeLimits {
                    handshake_timeout: PEER_HELLO_TIMEOUT,
                    ..HandshakeLimits::default()
                };
                let accepted =
                    drover_security::accept_tls(listener, Arc::clone(&tls.server), limits, "peer");
                tokio::spawn(accept_tls_loop(
                    accepted,
                    self.me,
                    self.voters.clone(),
                    self.inbox.clone(),
                ));
            }
        }
        bound.insert(ip, addr);
        Ok(addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    me: PeerId,
    voters: Vec<PeerId>,
    inbox: mpsc::Sender<CoreMsg>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, from_addr)) => {
                if inbox.is_closed() {
                    return;
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(read_link(
                    stream,
                    from_addr,
                    None,
                    me,
                    voters.clone(),
                    inbox.clone(),
                ));
            }
            Err(e) => {
                warn!(error = %e, "cannot accept a peer link");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
        if inbox.is_closed() {
            return;
        }
    }
}

/// Inbound TLS links: the handshake (a master certificate, required) is done; each link's
/// reader checks that the hello's id is the certificate's.
async fn accept_tls_loop(
    mut accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    me: PeerId,
    voters: Vec<PeerId>,
    inbox: mpsc::Sender<CoreMsg>,
) {
    while let Some((stream, from_addr)) = accepted.recv().await {
        if inbox.is_closed() {
            return;
        }
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(CertIdentity::of);
        let identity = match identity {
            Some(Ok(id)) if id.role == Some(Role::Master) => id,
            Some(Ok(id)) => {
                warn!(%from_addr, "peer link refused: {} is not a master certificate", id.describe());
                continue;
            }
            Some(Err(e)) => {
                warn!(%from_addr, "peer link refused: {e}");
                continue;
            }
            None => {
                warn!(%from_addr, "peer link refused: no client certificate");
                continue;
            }
        };
        tokio::spawn(read_link(
            stream,
            from_addr,
            Some(identity),
            me,
            voters.clone(),
            inbox.clone(),
        ));
    }
}

/// Reads one inbound link: the hello, then frames, each handed to the core in order. Over TLS,
/// `identity` is the connector's certificate: its name must be `master-<id>` of the hello.
async fn read_link<S: tokio::io::AsyncRead + Unpin>(
    stream: S,
    from_addr: SocketAddr,
    identity: Option<CertIdentity>,
    me: PeerId,
    voters: Vec<PeerId>,
    inbox: mpsc::Sender<CoreMsg>,
) {
    let mut reader = BufReader::with_capacity(PEER_READ_BUFFER_BYTES, stream);
    let mut hello = [0u8; 12];
    match tokio::time::timeout(PEER_HELLO_TIMEOUT, reader.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return debug!(%from_addr, error = %e, "peer link closed before its hello"),
        Err(_) => return debug!(%from_addr, "peer link sent no hello in time"),
    }
    if &hello[..8] != PEER_HELLO_MAGIC {
        return warn!(%from_addr, "not a peer link (bad hello); closing it");
    }
    let from = u32::from_le_bytes([hello[8], hello[9], hello[10], hello[11]]);
    if from == me || !voters.contains(&from) {
        return warn!(%from_addr, from, "peer link from outside this ensemble; closing it");
    }
    if let Some(identity) = &identity
        && identity.name != format!("master-{from}")
    {
        return warn!(
            %from_addr,
            from,
            "peer link refused: {} cannot speak for master {from} (its name must be master-{from})",
            identity.describe()
        );
    }
    let mut buf = Vec::new();
    loop {
        let len = match reader.read_u32_le().await {
            Ok(len) => len as usize,
            Err(e) => {
                debug!(from, error = %e, "inbound peer link ended");
                break;
            }
        };
        if len > PEER_MESSAGE_BYTES_MAX {
            warn!(
                from,
                bytes = len,
                max = PEER_MESSAGE_BYTES_MAX,
                "peer message over the limit; closing the link"
            );
            break;
        }
        buf.resize(len, 0);
        if let Err(e) = reader.read_exact(&mut buf).await {
            debug!(from, error = %e, "inbound peer link ended inside a message");
            break;
        }
        let msg = match PeerMsg::decode(&buf) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(from, error = %e, "undecodable peer message; closing the link");
                break;
            }
        };
        if buf.capacity() > PEER_READ_BUFFER_BYTES {
            // Do not hold on to a snapshot's worth of memory.
            buf = Vec::new();
        }
        if inbox
            .send(CoreMsg::Input(Input::Peer { from, msg }))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = inbox.send(CoreMsg::Input(Input::PeerDown(from))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zxid::Zxid;
    use std::net::Ipv4Addr;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(10);

    async fn connect_raw(addr: SocketAddr, from: PeerId) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut hello = PEER_HELLO_MAGIC.to_vec();
        hello.extend_from_slice(&from.to_le_bytes());
        s.write_all(&hello).await.expect("hello");
        s
    }

    fn frame(msg: &PeerMsg) -> Vec<u8> {
        let bytes = msg.encode();
        let mut out = (bytes.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&bytes);
        out
    }

    /// Reads until the peer closes the connection; false if it stays open past `WAIT`.
    async fn closed_by_peer(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(timeout(WAIT, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn inbound_links_deliver_frames_in_order_and_report_the_peer_down() {
        let (tx, mut rx) = mpsc::channel(16);
        let listeners = PeerListeners::new(1, vec![1, 2, 3], 0, None, tx);
        let addr = listeners
            .endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("listen");
        assert_eq!(
            listeners.endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap(),
            addr,
            "one listener per IP"
        );
        let mut s = connect_raw(addr, 2).await;
        let first = PeerMsg::Ack {
            epoch: 4,
            zxid: Zxid(7),
        };
        let second = PeerMsg::Commit {
            epoch: 4,
            zxid: Zxid(7),
        };
        let mut bytes = frame(&first);
        bytes.extend(frame(&second));
        // Split mid-frame: the reader must reassemble.
        let (a, b) = bytes.split_at(5);
        s.write_all(a).await.unwrap();
        s.flush().await.unwrap();
        s.write_all(b).await.unwrap();
        for want in [first, second] {
            let got = timeout(WAIT, rx.recv())
                .await
                .expect("in time")
                .expect("open");
            match got {
                CoreMsg::Input(Input::Peer { from: 2, msg }) => {
                    assert_eq!(format!("{msg:?}"), format!("{want:?}"))
                }
                _ => panic!("expected a message from peer 2"),
            }
        }
        drop(s);
        let got = timeout(WAIT, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        assert!(matches!(got, CoreMsg::Input(Input::PeerDown(2))));
    }

    #[tokio::test]
    async fn strangers_bad_hellos_and_oversized_frames_are_closed() {
        let (tx, mut rx) = mpsc::channel(16);
        let listeners = PeerListeners::new(1, vec![1, 2, 3], 0, None, tx);
        let addr = listeners
            .endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .expect("listen");
        // Not a voter, and ourselves.
        for from in [9, 1] {
            let mut s = connect_raw(addr, from).await;
            assert!(closed_by_peer(&mut s).await, "peer {from} was not refused");
        }
        // Not a peer link at all.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(closed_by_peer(&mut s).await);
        // A length over the limit.
        let mut s = connect_raw(addr, 3).await;
        s.write_all(&(u32::MAX).to_le_bytes()).await.unwrap();
        assert!(closed_by_peer(&mut s).await);
        let got = timeout(WAIT, rx.recv())
            .await
            .expect("in time")
            .expect("open");
        assert!(
            matches!(got, CoreMsg::Input(Input::PeerDown(3))),
            "only the accepted link reports anything"
        );
    }
}
