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
//! `[len: u32 LE][postcard PeerMsg]`. A link that breaks (write error, end of stream, bad frame)
//! reports the peer down to the core and reconnects with backoff; messages that could not be sent
//! are dropped, which ZAB tolerates (a gap makes a follower resync).

use super::{CoreMsg, PEER_MESSAGE_BYTES_MAX};
use crate::replica::Input;
use crate::zab::{PeerId, PeerMsg};
use drover_proto::v1;
use drover_proto::v1::peer_client::PeerClient;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, error, info, warn};

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
    stream: Option<Arc<TcpStream>>,
    /// Encoded frames not yet written.
    buf: Vec<u8>,
    /// The core saw the socket fail; the link task reconnects.
    broken: bool,
}

impl OutState {
    /// Writes what the socket takes now. False once the socket failed.
    fn write_some(&mut self) -> bool {
        let Some(stream) = self.stream.clone() else {
            self.buf.clear();
            return true;
        };
        let mut written = 0;
        while written < self.buf.len() {
            match stream.try_write(&self.buf[written..]) {
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
        inbox: mpsc::Sender<CoreMsg>,
    ) -> OutLink {
        let state = Arc::new(Mutex::new(OutState::default()));
        let notify = Arc::new(Notify::new());
        tokio::spawn(run_link(
            me,
            peer,
            addr,
            timings,
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
        if !ok || !st.buf.is_empty() {
            self.notify.notify_one();
        }
    }
}

/// Connects, serves until the link breaks, reports the peer down, backs off, and again; ends
/// when the core is gone.
async fn run_link(
    me: PeerId,
    peer: PeerId,
    addr: String,
    timings: LinkTimings,
    state: Arc<Mutex<OutState>>,
    notify: Arc<Notify>,
    inbox: mpsc::Sender<CoreMsg>,
) {
    let mut backoff = timings.backoff_min;
    loop {
        match connect(me, &addr, timings.connect_timeout).await {
            Ok((stream, raw)) => {
                backoff = timings.backoff_min;
                debug!(peer, %addr, %raw, "peer link up");
                let stream = Arc::new(stream);
                {
                    let mut st = lock(&state);
                    st.buf.clear();
                    st.broken = false;
                    st.stream = Some(Arc::clone(&stream));
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
                    Ok(_) => return "the peer sent bytes on a write-only link",
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
                st.buf.is_empty()
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

/// Asks `addr` (gRPC) where it takes peer links and opens one: (stream, its address).
async fn connect(
    me: PeerId,
    addr: &str,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), String> {
    let uri = if addr.starts_with("http") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("bad peer address: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
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
    stream
        .write_all(&hello)
        .await
        .map_err(|e| format!("hello to {raw}: {e}"))?;
    Ok((stream, raw))
}

/// The inbound side: listeners (one per local IP peers reach us on) and their readers.
pub struct PeerListeners {
    me: PeerId,
    voters: Vec<PeerId>,
    port: u16,
    inbox: mpsc::Sender<CoreMsg>,
    bound: Mutex<HashMap<IpAddr, SocketAddr>>,
}

impl PeerListeners {
    pub fn new(
        me: PeerId,
        voters: Vec<PeerId>,
        port: u16,
        inbox: mpsc::Sender<CoreMsg>,
    ) -> PeerListeners {
        PeerListeners {
            me,
            voters,
            port,
            inbox,
            bound: Mutex::new(HashMap::new()),
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
        info!(%addr, "accepting peer links");
        tokio::spawn(accept_loop(
            listener,
            self.me,
            self.voters.clone(),
            self.inbox.clone(),
        ));
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

/// Reads one inbound link: the hello, then frames, each handed to the core in order.
async fn read_link(
    stream: TcpStream,
    from_addr: SocketAddr,
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
        let listeners = PeerListeners::new(1, vec![1, 2, 3], 0, tx);
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
        let listeners = PeerListeners::new(1, vec![1, 2, 3], 0, tx);
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
