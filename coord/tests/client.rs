//! The Rust client against a real coord server (the same driver `drover master` runs, in this
//! process, on a loopback port), sometimes behind a TCP proxy the test can cut, to break
//! connections without stopping the server.
#![allow(
    clippy::print_stderr,
    reason = "test diagnostics; the harness captures them"
)]

use drover_coord::client::{Client, ClientError, ClientOptions, SessionEvent, SessionState};
use drover_coord::driver::{self, CoordConfig};
use drover_coord::op::{CreateMode, ErrorCode, EventType, OpResult, WriteOp, ZNODE_BYTES_MAX};
use futures::{FutureExt, StreamExt};
use std::future::Future;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

/// Longest a test waits for anything; far above what any step takes.
const WAIT: Duration = Duration::from_secs(20);

struct Server {
    addr: String,
    _dir: tempfile::TempDir,
}

/// A coord server with short session bounds, so expiry tests run in about a second.
async fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = CoordConfig::new(dir.path().to_path_buf());
    config.server.session_timeout_min_ms = 300;
    config.server.session_expiry_bucket_ms = 50;
    config.tick_interval = Duration::from_millis(20);
    let handle = driver::start(config).expect("coord starts");
    let stopped = handle.stopped;
    tokio::spawn(async move {
        // A server that stops under a test is the first thing to know when a test fails.
        if let Ok(Err(e)) = stopped.await {
            eprintln!("coord server stopped: {e}");
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(handle.service)
            .serve_with_incoming(incoming),
    );
    Server { addr, _dir: dir }
}

/// What a test proxy does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Up,
    /// Keeps every connection open but forwards nothing: a server gone silent.
    Frozen,
    /// Drops every connection it carries and every new one.
    Down,
}

/// A TCP proxy to `upstream` that the test can freeze or cut, to break connections without
/// stopping the server.
struct Proxy {
    addr: String,
    mode: watch::Sender<Mode>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (mode, _) = watch::channel(Mode::Up);
        let upstream = upstream.to_string();
        let mode_rx = mode.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *mode_rx.borrow() == Mode::Down {
                    continue; // dropped: the client sees the connection close
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, mode_rx.clone()));
                tokio::spawn(pump(server_read, client_write, mode_rx.clone()));
            }
        });
        Proxy { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn set_up(&self, up: bool) {
        self.set(if up { Mode::Up } else { Mode::Down });
    }
}

/// Copies `from` to `to` while the mode allows; ends (dropping both halves) when it goes down.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m == Mode::Down) => return,
        };
        // Frozen: hold the bytes until the proxy is up again (or goes down).
        match mode.wait_for(|m| *m != Mode::Frozen).await.map(|m| *m) {
            Ok(Mode::Up) => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn options(session_timeout_ms: u64) -> ClientOptions {
    ClientOptions {
        session_timeout: Duration::from_millis(session_timeout_ms),
        connect_timeout: Duration::from_secs(2),
        establish_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

async fn client(addrs: &[&str]) -> Client {
    Client::connect(
        addrs.iter().map(|a| a.to_string()).collect(),
        options(10_000),
    )
    .await
    .expect("client connects")
}

/// Awaits `f` with the test's deadline.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `check` until it holds, or panics after the test's deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    r.expect_err("the call should fail").code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip_and_errors_name_the_path() {
    // Every call of the API against a real server, and the errors callers branch on.
    let server = start_server().await;
    let c = client(&[&server.addr]).await;

    assert_eq!(
        c.create("/app", "hello", CreateMode::Persistent)
            .await
            .unwrap(),
        "/app"
    );
    let (data, stat) = c.get("/app").await.unwrap();
    assert_eq!(
        (&data[..], stat.version, stat.data_length),
        (&b"hello"[..], 0, 5)
    );
    let stat = c.set("/app", "world", Some(0)).await.unwrap();
    assert_eq!(stat.version, 1);
    let err = c.set("/app", "x", Some(7)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadVersion));
    assert_eq!(
        err.to_string(),
        "bad version for /app: expected 7, the node is at version 1"
    );

    assert_eq!(c.exists("/app").await.unwrap().map(|s| s.version), Some(1));
    assert_eq!(c.exists("/nope").await.unwrap(), None);
    let err = c.get("/nope").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoNode));
    assert_eq!(err.to_string(), "no node at /nope");
    assert_eq!(
        code(c.create("/nope/child", "", CreateMode::Persistent).await),
        Some(ErrorCode::NoNode)
    );
    assert_eq!(
        code(c.create("/app", "", CreateMode::Persistent).await),
        Some(ErrorCode::NodeExists)
    );
    assert_eq!(
        code(c.create("bad", "", CreateMode::Persistent).await),
        Some(ErrorCode::BadArguments)
    );

    let first = c
        .create("/app/job-", "", CreateMode::PersistentSequential)
        .await
        .unwrap();
    let second = c
        .create("/app/job-", "", CreateMode::EphemeralSequential)
        .await
        .unwrap();
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("/app/job-0000000000", "/app/job-0000000001")
    );
    let (_, stat) = c
        .create_with_stat("/app/e", "", CreateMode::Ephemeral)
        .await
        .unwrap();
    assert_eq!(stat.ephemeral_owner, c.session_id().0);
    let mut children = c.children("/app").await.unwrap();
    children.sort();
    assert_eq!(children, ["e", "job-0000000000", "job-0000000001"]);
    assert_eq!(
        code(c.delete("/app", None).await),
        Some(ErrorCode::NotEmpty)
    );
    c.sync("/app").await.unwrap();

    let too_big = vec![0u8; ZNODE_BYTES_MAX + 1];
    let err = c.set("/app", too_big, None).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DataTooLarge));
    assert!(err.to_string().contains("limit is 1048576 bytes"), "{err}");

    for p in ["/app/e", &first, &second] {
        c.delete(p, None).await.unwrap();
    }
    assert_eq!(
        code(c.delete("/app", Some(3)).await),
        Some(ErrorCode::BadVersion)
    );
    c.delete("/app", Some(1)).await.unwrap();
    assert_eq!(c.exists("/app").await.unwrap(), None);
    assert!(c.last_zxid_seen().0 > 0);
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_is_all_or_nothing_and_names_the_failing_op() {
    let server = start_server().await;
    let c = client(&[&server.addr]).await;
    c.create("/m", "", CreateMode::Persistent).await.unwrap();
    let results = c
        .multi(vec![
            WriteOp::Create {
                path: "/m/a".into(),
                data: "1".into(),
                mode: CreateMode::Persistent,
                acl: drover_coord::acl::open_acl(),
            },
            WriteOp::SetData {
                path: "/m".into(),
                data: "x".into(),
                version: 0,
            },
            WriteOp::Check {
                path: "/m/a".into(),
                version: 0,
            },
            WriteOp::Delete {
                path: "/m/a".into(),
                version: 0,
            },
        ])
        .await
        .unwrap();
    assert!(
        matches!(&results[0], OpResult::Created { path, .. } if path == "/m/a"),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], OpResult::Stat(s) if s.version == 1),
        "{results:?}"
    );
    assert_eq!(results[2..], [OpResult::Checked, OpResult::Deleted]);

    let err = c
        .multi(vec![
            WriteOp::Create {
                path: "/m/b".into(),
                data: "".into(),
                mode: CreateMode::Persistent,
                acl: drover_coord::acl::open_acl(),
            },
            WriteOp::Check {
                path: "/m".into(),
                version: 0,
            },
        ])
        .await
        .unwrap_err();
    let ClientError::Server(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (e.code, e.op_index),
        (ErrorCode::BadVersion, Some(1)),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("op 1 of the multi failed: bad version for /m"),
        "{err}"
    );
    assert_eq!(
        c.exists("/m/b").await.unwrap(),
        None,
        "the create was rolled back"
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_watches_fire_once_with_zookeeper_routing() {
    let server = start_server().await;
    let a = client(&[&server.addr]).await;
    let b = client(&[&server.addr]).await;

    // An exists watch on a missing node fires on its creation.
    let (stat, created) = a.exists_watch("/w").await.unwrap();
    assert_eq!(stat, None);
    b.create("/w", "0", CreateMode::Persistent).await.unwrap();
    let e = within("NodeCreated", created).await.unwrap();
    assert_eq!((e.kind, e.path.as_str()), (EventType::NodeCreated, "/w"));

    // The watch event reaches the client before the reply of the write that fired it: once the
    // client's own set returns, the watch has already fired (ZooKeeper's ordering guarantee).
    let (_, _, changed) = a.get_watch("/w").await.unwrap();
    let (_, exists_changed) = a.exists_watch("/w").await.unwrap();
    let stat = a.set("/w", "1", None).await.unwrap();
    let e = changed
        .now_or_never()
        .expect("event before the reply")
        .unwrap();
    assert_eq!((e.kind, e.zxid), (EventType::NodeDataChanged, stat.mzxid));
    assert_eq!(
        exists_changed.now_or_never().expect("fired").unwrap().kind,
        EventType::NodeDataChanged
    );

    // Child watches see child-list changes and the node's own deletion, not data changes.
    let (children, child_changed) = a.children_watch("/w").await.unwrap();
    assert!(children.is_empty());
    let (_, _, data_watch) = a.get_watch("/w").await.unwrap();
    b.create("/w/x", "", CreateMode::Persistent).await.unwrap();
    let e = within("NodeChildrenChanged", child_changed).await.unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EventType::NodeChildrenChanged, "/w")
    );
    let (_, deleted) = a.children_watch("/w").await.unwrap();
    b.delete("/w/x", None).await.unwrap();
    within("child removal", deleted).await.unwrap();
    let (_, deleted) = a.children_watch("/w").await.unwrap();
    b.delete("/w", None).await.unwrap();
    assert_eq!(
        within("NodeDeleted", deleted).await.unwrap().kind,
        EventType::NodeDeleted
    );
    assert_eq!(
        within("NodeDeleted", data_watch).await.unwrap().kind,
        EventType::NodeDeleted
    );

    // A failed read leaves no watch (and returns no Watch).
    assert_eq!(
        a.get_watch("/w").await.unwrap_err().code(),
        Some(ErrorCode::NoNode)
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_watches_stay_and_recursive_ones_cover_descendants() {
    let server = start_server().await;
    let a = client(&[&server.addr]).await;
    let b = client(&[&server.addr]).await;
    b.create("/r", "", CreateMode::Persistent).await.unwrap();
    let mut own = a.watch("/r", false).await.unwrap();
    let mut tree = a.watch("/r", true).await.unwrap();

    b.create("/r/x", "", CreateMode::Persistent).await.unwrap();
    b.set("/r/x", "1", None).await.unwrap();
    b.set("/r", "1", None).await.unwrap();
    b.set("/r", "2", None).await.unwrap();

    let e = within("own event", own.next()).await.unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EventType::NodeChildrenChanged, "/r")
    );
    for _ in 0..2 {
        let e = within("own event", own.next()).await.unwrap();
        assert_eq!(
            (e.kind, e.path.as_str()),
            (EventType::NodeDataChanged, "/r")
        );
    }
    // Recursive watchers get no NodeChildrenChanged: the child's NodeCreated says it.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = within("recursive event", tree.next()).await.unwrap();
        seen.push((e.kind, e.path));
    }
    assert_eq!(
        seen,
        [
            (EventType::NodeCreated, "/r/x".to_string()),
            (EventType::NodeDataChanged, "/r/x".to_string()),
            (EventType::NodeDataChanged, "/r".to_string()),
            (EventType::NodeDataChanged, "/r".to_string()),
        ]
    );

    // Dropping one stream leaves the other working.
    drop(own);
    b.set("/r", "3", None).await.unwrap();
    let e = within("event after a drop", tree.next()).await.unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EventType::NodeDataChanged, "/r")
    );

    a.close().await.unwrap();
    assert_eq!(within("the stream to end", tree.next()).await, None);
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_deletes_ephemerals_and_ends_the_client() {
    let server = start_server().await;
    let a = client(&[&server.addr]).await;
    let b = client(&[&server.addr]).await;
    a.create("/eph", "", CreateMode::Ephemeral).await.unwrap();
    // A watch nothing fires (the ephemeral's own deletion may reach the closing session).
    let (_, watch) = a.exists_watch("/never").await.unwrap();
    let mut events = a.session_events();
    assert_eq!(events.next().await, Some(SessionEvent::Connected));

    a.close().await.unwrap();
    // The server acknowledged the close, so the ephemeral is already gone.
    assert_eq!(b.exists("/eph").await.unwrap(), None);
    assert_eq!(a.state(), SessionState::Closed);
    assert_eq!(
        within("Closed", events.next()).await,
        Some(SessionEvent::Closed)
    );
    assert_eq!(events.next().await, None);
    assert!(matches!(a.get("/").await, Err(ClientError::Closed)));
    assert!(matches!(
        within("the watch to end", watch).await,
        Err(ClientError::Closed)
    ));
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_keeps_the_session_and_fires_what_was_missed() {
    // The connection breaks; the client moves to the next address with the same session, and
    // SetWatches(relative_zxid = last seen) fires the change it missed while disconnected.
    let server = start_server().await;
    let p1 = Proxy::start(&server.addr).await;
    let p2 = Proxy::start(&server.addr).await;
    let a = client(&[&p1.addr, &p2.addr]).await;
    let b = client(&[&server.addr]).await;
    let session = a.session_id();
    a.create("/e", "", CreateMode::Ephemeral).await.unwrap();
    b.create("/w", "0", CreateMode::Persistent).await.unwrap();
    b.create("/r", "", CreateMode::Persistent).await.unwrap();
    let (_, _, missed) = a.get_watch("/w").await.unwrap();
    let (_, appeared) = a.exists_watch("/appear").await.unwrap();
    let mut tree = a.watch("/r", true).await.unwrap();
    let mut events = a.session_events();
    assert_eq!(events.next().await, Some(SessionEvent::Connected));

    p1.set_up(false);
    p2.set_up(false);
    assert_eq!(
        within("Disconnected", events.next()).await,
        Some(SessionEvent::Disconnected)
    );
    assert_eq!(a.state(), SessionState::Disconnected);
    b.set("/w", "1", None).await.unwrap();
    b.create("/appear", "", CreateMode::Persistent)
        .await
        .unwrap();
    // A call made while disconnected waits for the new connection (up to its timeout).
    let during = tokio::spawn({
        let a = a.clone();
        async move { a.create("/during", "", CreateMode::Persistent).await }
    });
    p2.set_up(true);
    assert_eq!(
        within("Reconnected", events.next()).await,
        Some(SessionEvent::Reconnected)
    );

    let e = within("the missed event", missed).await.unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EventType::NodeDataChanged, "/w")
    );
    let e = within("the missed creation", appeared).await.unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EventType::NodeCreated, "/appear")
    );
    assert_eq!(
        within("the queued call", during).await.unwrap().unwrap(),
        "/during"
    );
    assert_eq!(a.session_id(), session);
    assert!(
        b.exists("/e").await.unwrap().is_some(),
        "the session and its ephemeral live on"
    );
    b.create("/r/after", "", CreateMode::Persistent)
        .await
        .unwrap();
    let e = within("a recursive event after reconnecting", tree.next())
        .await
        .unwrap();
    assert_eq!(
        (e.kind, e.path.as_str()),
        (EventType::NodeCreated, "/r/after")
    );
    assert_eq!(a.get("/w").await.unwrap().0, "1");
    a.close().await.unwrap();
    assert_eq!(b.exists("/e").await.unwrap(), None);
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_fails_every_call_and_watch() {
    let server = start_server().await;
    let proxy = Proxy::start(&server.addr).await;
    let a = Client::connect(vec![proxy.addr.clone()], options(600))
        .await
        .unwrap();
    let b = client(&[&server.addr]).await;
    a.create("/gone", "", CreateMode::Ephemeral).await.unwrap();
    let (_, watch) = a.exists_watch("/gone").await.unwrap();
    let mut events = a.session_events();
    assert_eq!(events.next().await, Some(SessionEvent::Connected));

    proxy.set_up(false);
    // The server expires the session and deletes its ephemeral...
    eventually("the server to expire the session", || async {
        b.exists("/gone").await.unwrap().is_none()
    })
    .await;
    // ...and the client learns it, from the server or from its own clock.
    proxy.set_up(true);
    assert_eq!(
        within("Disconnected", events.next()).await,
        Some(SessionEvent::Disconnected)
    );
    assert_eq!(
        within("Expired", events.next()).await,
        Some(SessionEvent::Expired)
    );
    assert_eq!(events.next().await, None);
    assert_eq!(a.state(), SessionState::Expired);
    assert!(matches!(
        a.get("/").await,
        Err(ClientError::SessionExpired { .. })
    ));
    assert!(matches!(
        within("the watch to end", watch).await,
        Err(ClientError::SessionExpired { .. })
    ));
    assert!(
        a.close().await.is_ok(),
        "closing an expired session has nothing left to do"
    );
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_names_the_addresses_and_the_reason() {
    let unused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let options = ClientOptions {
        establish_timeout: Duration::from_millis(200),
        ..options(10_000)
    };
    let err = Client::connect(vec![unused.clone()], options)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoServer { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach any coord server at {unused} (connection refused)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_session() {
    let server = start_server().await;
    let b = client(&[&server.addr]).await;
    {
        let a = client(&[&server.addr]).await;
        a.create("/dropped", "", CreateMode::Ephemeral)
            .await
            .unwrap();
        let clone = a.clone();
        drop(a);
        clone
            .exists("/dropped")
            .await
            .unwrap()
            .expect("a clone keeps the session");
    }
    eventually("the dropped session's ephemeral to go", || async {
        b.exists("/dropped").await.unwrap().is_none()
    })
    .await;
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_detected_and_in_flight_calls_fail_with_connection_loss() {
    // No message from the server for 2/3 of the session timeout means the connection is dead
    // (a ping would have been answered): the call in flight fails with ConnectionLoss, naming
    // the address, and the client reconnects within the last third, keeping the session.
    let server = start_server().await;
    let proxy = Proxy::start(&server.addr).await;
    let a = Client::connect(vec![proxy.addr.clone()], options(6_000))
        .await
        .unwrap();
    let session = a.session_id();
    let mut events = a.session_events();
    assert_eq!(events.next().await, Some(SessionEvent::Connected));

    proxy.set(Mode::Frozen);
    let err = within("the connection to be declared lost", a.get("/"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::ConnectionLoss { addr } if *addr == proxy.addr),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(ErrorCode::ConnectionLoss));
    assert!(err.to_string().contains(&proxy.addr), "{err}");
    proxy.set(Mode::Up);
    assert_eq!(
        within("Disconnected", events.next()).await,
        Some(SessionEvent::Disconnected)
    );
    assert_eq!(
        within("Reconnected", events.next()).await,
        Some(SessionEvent::Reconnected)
    );
    assert_eq!(a.session_id(), session);
    a.get("/").await.unwrap();
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_through_the_driver_and_auth_survives_a_reconnect() {
    // The driver gives each connection its client's address (the ip scheme), add_auth adds a
    // digest id, get_acl / set_acl round trip with the aversion, and after a reconnect the client
    // authenticates again by itself, so what it could read it still can.
    use drover_coord::acl::{digest_id, parse_acl};
    let server = start_server().await;
    let p1 = Proxy::start(&server.addr).await;
    let p2 = Proxy::start(&server.addr).await;
    let a = client(&[&p1.addr, &p2.addr]).await;
    let other = client(&[&server.addr]).await;

    // Loopback clients match ip:127.0.0.1, not ip:10.0.0.0/8.
    let acl = parse_acl("ip:127.0.0.0/8:cdrwa").unwrap();
    a.create_with_acl("/local", "l", CreateMode::Persistent, acl.clone())
        .await
        .unwrap();
    assert_eq!(other.get("/local").await.unwrap().0, "l");
    let elsewhere = parse_acl("ip:10.0.0.0/8:cdrwa").unwrap();
    a.create_with_acl("/far", "f", CreateMode::Persistent, elsewhere)
        .await
        .unwrap();
    assert_eq!(code(other.get("/far").await), Some(ErrorCode::NoAuth));

    a.add_auth("digest", "alice:pw").await.unwrap();
    let alice = parse_acl(&format!("digest:{}:cdrwa", digest_id("alice:pw").unwrap())).unwrap();
    a.create_with_acl("/mine", "m", CreateMode::Persistent, alice.clone())
        .await
        .unwrap();
    let err = other.get("/mine").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoAuth));
    assert!(err.to_string().contains("/mine"), "{err}");
    let (got, stat) = a.get_acl("/mine").await.unwrap();
    assert_eq!((got, stat.aversion), (alice.clone(), 0));
    assert_eq!(
        code(a.add_auth("digest", "no-colon").await),
        Some(ErrorCode::AuthFailed)
    );
    // An empty ACL is refused by the client before it is sent (on the wire it would read as
    // "none given").
    assert_eq!(
        code(a.set_acl("/mine", Vec::new(), None).await),
        Some(ErrorCode::InvalidAcl)
    );
    assert_eq!(
        code(a.set_acl("/mine", alice.clone(), Some(5)).await),
        Some(ErrorCode::BadVersion)
    );

    let mut events = a.session_events();
    assert_eq!(events.next().await, Some(SessionEvent::Connected));
    p1.set_up(false);
    assert_eq!(
        within("Disconnected", events.next()).await,
        Some(SessionEvent::Disconnected)
    );
    assert_eq!(
        within("Reconnected", events.next()).await,
        Some(SessionEvent::Reconnected)
    );
    assert_eq!(a.get("/mine").await.unwrap().0, "m");
    let mut opened = alice.clone();
    opened.extend(parse_acl("world:anyone:r").unwrap());
    let stat = a.set_acl("/mine", opened, Some(0)).await.unwrap();
    assert_eq!(stat.aversion, 1);
    assert_eq!(other.get("/mine").await.unwrap().0, "m");
    a.close().await.unwrap();
    other.close().await.unwrap();
}
