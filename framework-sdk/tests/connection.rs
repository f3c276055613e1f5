//! The SDK's connection against in-test masters: small tonic `Scheduler` servers on loopback that
//! play the master's side of the contract (leading or redirecting with `drover-leader`, assigning
//! and remembering framework ids, heartbeats, ending streams) and record every request. They
//! exercise subscribe, redirects, re-subscription, calls and auto-acknowledgement; tests against
//! the real master live in the workspace's `tests/scheduler.rs`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1;
use drover_proto::v1::scheduler_server::{Scheduler, SchedulerServer};
use drover_sdk::{
    AgentId, CallError, Command, ConnectError, ConnectionOptions, Event, Events, Filters,
    Framework, FrameworkId, OfferId, PortRanges, Resources, TaskId, TaskSpec, TaskState,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// Every wait in these tests: long enough for a loaded 2-core machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(20);

/// Bound on recorded requests not yet read by a test.
const RECORDED_MAX: usize = 1024;

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A request the fake master received.
#[derive(Debug, Clone)]
enum Call {
    Subscribe(v1::SubscribeRequest),
    Accept(v1::AcceptRequest),
    Decline(v1::DeclineRequest),
    Revive(v1::ReviveRequest),
    Suppress(v1::SuppressRequest),
    Kill(v1::KillRequest),
    Acknowledge(v1::AcknowledgeRequest),
    Reconcile(v1::ReconcileRequest),
    Teardown(v1::TeardownRequest),
}

type EventSender = mpsc::Sender<Result<v1::Event, Status>>;

struct State {
    leading: bool,
    /// What a non-leading master puts in `drover-leader` (None: the key is absent).
    leader_hint: Option<String>,
    /// Framework ids this master knows; shared between masters to model the registry in coord.
    known: Arc<Mutex<HashSet<String>>>,
    heartbeat_interval_ms: u64,
    send_heartbeats: bool,
    /// Answer for calls instead of succeeding (e.g. a redirect or NOT_FOUND).
    call_answer: Option<Status>,
    /// The open subscription streams, newest last.
    streams: Vec<EventSender>,
}

#[derive(Clone)]
struct FakeMaster {
    addr: String,
    state: Arc<Mutex<State>>,
    recorded: mpsc::Sender<Call>,
}

fn redirect_status(message: &str, leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(message.to_string());
    if let Some(leader) = leader {
        status.metadata_mut().insert(
            drover_sdk::LEADER_METADATA_KEY,
            leader.parse().expect("an ASCII address"),
        );
    }
    status
}

impl FakeMaster {
    /// Starts a master on a free loopback port; returns it and the receiver of its recorded calls.
    async fn start(
        leading: bool,
        known: Arc<Mutex<HashSet<String>>>,
    ) -> (FakeMaster, mpsc::Receiver<Call>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (recorded, rx) = mpsc::channel(RECORDED_MAX);
        let master = FakeMaster {
            addr,
            state: Arc::new(Mutex::new(State {
                leading,
                leader_hint: None,
                known,
                heartbeat_interval_ms: 200,
                send_heartbeats: true,
                call_answer: None,
                streams: Vec::new(),
            })),
            recorded,
        };
        let service = SchedulerServer::new(master.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (master, rx)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("not poisoned"))
    }

    fn record(&self, call: Call) {
        self.recorded
            .try_send(call)
            .expect("recorded calls are read");
    }

    /// Sends `event` (or an error status ending the stream) on the newest subscription.
    async fn push(&self, item: Result<v1::event::Event, Status>) {
        let tx = self
            .with(|s| s.streams.last().cloned())
            .expect("an open subscription");
        tx.send(item.map(|e| v1::Event { event: Some(e) }))
            .await
            .expect("the subscription is open");
    }

    fn answer_call<T>(&self, call: Call, ok: T) -> Result<Response<T>, Status> {
        self.record(call);
        let answer = self.with(|s| {
            if !s.leading {
                return Some(redirect_status("not leading", s.leader_hint.as_deref()));
            }
            s.call_answer.clone()
        });
        match answer {
            Some(status) => Err(status),
            None => Ok(Response::new(ok)),
        }
    }
}

#[tonic::async_trait]
impl Scheduler for FakeMaster {
    type SubscribeStream = ReceiverStream<Result<v1::Event, Status>>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        self.record(Call::Subscribe(request.clone()));
        let framework = request.framework.unwrap_or_default();
        let (tx, rx) = mpsc::channel(64);
        let heartbeat = self.with(|s| -> Result<Option<u64>, Status> {
            if !s.leading {
                return Err(redirect_status("not leading", s.leader_hint.as_deref()));
            }
            let mut known = s.known.lock().expect("not poisoned");
            let id = if framework.id.is_empty() {
                let id = format!("fw-{}", known.len() + 1);
                known.insert(id.clone());
                id
            } else if known.contains(&framework.id) {
                framework.id.clone()
            } else {
                return Err(Status::not_found(format!("framework {}", framework.id)));
            };
            tx.try_send(Ok(v1::Event {
                event: Some(v1::event::Event::Subscribed(v1::Subscribed {
                    framework_id: id,
                    heartbeat_interval_ms: s.heartbeat_interval_ms,
                    master_id: self.addr.clone(),
                    leader: self.addr.clone(),
                })),
            }))
            .expect("room for the first event");
            s.streams.push(tx.clone());
            Ok(s.send_heartbeats.then_some(s.heartbeat_interval_ms))
        })?;
        if let Some(ms) = heartbeat {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(ms));
                loop {
                    tick.tick().await;
                    let beat = v1::Event {
                        event: Some(v1::event::Event::Heartbeat(v1::Heartbeat {})),
                    };
                    if tx.send(Ok(beat)).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn accept(
        &self,
        r: Request<v1::AcceptRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Accept(r.into_inner()), v1::CallResponse {})
    }
    async fn decline(
        &self,
        r: Request<v1::DeclineRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Decline(r.into_inner()), v1::CallResponse {})
    }
    async fn revive(
        &self,
        r: Request<v1::ReviveRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Revive(r.into_inner()), v1::CallResponse {})
    }
    async fn suppress(
        &self,
        r: Request<v1::SuppressRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Suppress(r.into_inner()), v1::CallResponse {})
    }
    async fn kill(
        &self,
        r: Request<v1::KillRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Kill(r.into_inner()), v1::CallResponse {})
    }
    async fn acknowledge(
        &self,
        r: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Acknowledge(r.into_inner()), v1::CallResponse {})
    }
    async fn reconcile(
        &self,
        r: Request<v1::ReconcileRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        self.answer_call(Call::Reconcile(r.into_inner()), v1::CallResponse {})
    }
    async fn teardown(
        &self,
        r: Request<v1::TeardownRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let request = r.into_inner();
        let result = self.answer_call(Call::Teardown(request.clone()), v1::CallResponse {});
        if result.is_ok() {
            // Like the master: forget the framework and end its stream with an Error event, which
            // may well arrive before this call's answer does.
            let streams = self.with(|s| {
                s.known
                    .lock()
                    .expect("not poisoned")
                    .remove(&request.framework_id);
                std::mem::take(&mut s.streams)
            });
            for tx in streams {
                let error = v1::event::Event::Error(v1::Error {
                    message: "framework torn down".into(),
                });
                // A full or closed stream is fine: it is ending either way.
                let _ = tx.try_send(Ok(v1::Event { event: Some(error) }));
            }
        }
        result
    }
}

fn registry() -> Arc<Mutex<HashSet<String>>> {
    Arc::new(Mutex::new(HashSet::new()))
}

/// Fast settings so failures surface in a test's time.
fn options() -> ConnectionOptions {
    ConnectionOptions {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(5),
        subscribe_timeout: Duration::from_secs(10),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        heartbeat_misses_max: 3,
        redirects_max: 3,
        tls: None,
        token: None,
    }
}

async fn connect(masters: &[&FakeMaster]) -> (Framework, Events) {
    Framework::builder()
        .name("test")
        .masters(masters.iter().map(|m| m.addr.as_str()))
        .connection_options(options())
        .connect()
        .await
        .expect("subscribed")
}

async fn next_event(events: &mut Events) -> Option<Event> {
    within("an event", events.recv()).await
}

/// The next recorded call other than subscribes.
async fn next_call(rx: &mut mpsc::Receiver<Call>) -> Call {
    loop {
        match within("a call", rx.recv()).await.expect("master alive") {
            Call::Subscribe(_) => continue,
            call => return call,
        }
    }
}

async fn next_subscribe(rx: &mut mpsc::Receiver<Call>) -> v1::SubscribeRequest {
    loop {
        if let Call::Subscribe(s) = within("a subscribe", rx.recv())
            .await
            .expect("master alive")
        {
            return s;
        }
    }
}

fn subscribed_id(event: Option<Event>) -> FrameworkId {
    match event {
        Some(Event::Subscribed { framework_id }) => framework_id,
        other => panic!("expected Subscribed, got {other:?}"),
    }
}

#[tokio::test]
async fn follows_the_leader_redirect_from_a_non_leader() {
    // Proves a framework given only a non-leading master follows its drover-leader metadata to
    // the leader and subscribes there.
    let known = registry();
    let (leader, mut leader_calls) = FakeMaster::start(true, known.clone()).await;
    let (follower, mut follower_calls) = FakeMaster::start(false, known).await;
    follower.with(|s| s.leader_hint = Some(leader.addr.clone()));

    let (framework, mut events) = connect(&[&follower]).await;
    let id = subscribed_id(next_event(&mut events).await);
    assert_eq!(&id, framework.framework_id());
    assert_eq!(framework.leader().as_deref(), Some(leader.addr.as_str()));
    assert!(
        next_subscribe(&mut follower_calls)
            .await
            .framework
            .expect("info")
            .id
            .is_empty()
    );
    let at_leader = next_subscribe(&mut leader_calls).await;
    assert_eq!(at_leader.framework.expect("info").name, "test");
}

#[tokio::test]
async fn a_broken_stream_gives_disconnected_then_reconnected_with_the_same_id() {
    // Proves a stream that breaks is followed by Disconnected, a re-subscription carrying the
    // same framework id and the current suppressed state, Reconnected, and working calls.
    let (master, mut calls) = FakeMaster::start(true, registry()).await;
    let (framework, mut events) = connect(&[&master]).await;
    let id = subscribed_id(next_event(&mut events).await);
    assert!(!next_subscribe(&mut calls).await.suppressed);

    framework.suppress().await.expect("suppress");
    assert!(matches!(next_call(&mut calls).await, Call::Suppress(s) if s.framework_id == id.0));
    master.push(Err(Status::internal("connection reset"))).await;
    assert_eq!(next_event(&mut events).await, Some(Event::Disconnected));
    assert_eq!(next_event(&mut events).await, Some(Event::Reconnected));
    let again = next_subscribe(&mut calls).await;
    assert_eq!(again.framework.expect("info").id, id.0);
    assert!(
        again.suppressed,
        "re-subscribes suppressed after suppress()"
    );
    assert!(framework.is_connected());

    framework
        .decline(&[OfferId::from("o1")], Duration::from_secs(30))
        .await
        .expect("decline after reconnecting");
    match next_call(&mut calls).await {
        Call::Decline(d) => {
            assert_eq!(d.framework_id, id.0);
            assert_eq!(d.offer_ids, ["o1"]);
            assert_eq!(d.filters.expect("filters").refuse_seconds, Some(30.0));
        }
        other => panic!("expected Decline, got {other:?}"),
    }
}

#[tokio::test]
async fn a_master_losing_leadership_hands_the_framework_to_the_new_leader() {
    // Proves a stream ended with UNAVAILABLE + drover-leader makes the SDK re-subscribe at the
    // named leader (not in its --masters list), keeping its id.
    let known = registry();
    let (old, _old_calls) = FakeMaster::start(true, known.clone()).await;
    let (new, mut new_calls) = FakeMaster::start(false, known).await;
    let (framework, mut events) = connect(&[&old]).await;
    let id = subscribed_id(next_event(&mut events).await);

    // The old master stops leading and, asked again, would not know who leads: only the status
    // that ends the stream names the new leader.
    new.with(|s| s.leading = true);
    old.with(|s| {
        s.leading = false;
        s.leader_hint = None;
    });
    old.push(Err(redirect_status("lost leadership", Some(&new.addr))))
        .await;
    assert_eq!(next_event(&mut events).await, Some(Event::Disconnected));
    assert_eq!(next_event(&mut events).await, Some(Event::Reconnected));
    assert_eq!(
        next_subscribe(&mut new_calls)
            .await
            .framework
            .expect("info")
            .id,
        id.0
    );
    assert_eq!(framework.leader().as_deref(), Some(new.addr.as_str()));
}

#[tokio::test]
async fn missed_heartbeats_count_as_a_dead_stream() {
    // Proves a stream that stays silent for heartbeat_misses_max intervals is treated as broken:
    // Disconnected, then a re-subscription with the same id.
    let (master, mut calls) = FakeMaster::start(true, registry()).await;
    master.with(|s| {
        s.heartbeat_interval_ms = 50;
        s.send_heartbeats = false;
    });
    let (_framework, mut events) = connect(&[&master]).await;
    let id = subscribed_id(next_event(&mut events).await);
    next_subscribe(&mut calls).await;
    master.with(|s| s.send_heartbeats = true);
    assert_eq!(next_event(&mut events).await, Some(Event::Disconnected));
    assert_eq!(next_event(&mut events).await, Some(Event::Reconnected));
    assert_eq!(
        next_subscribe(&mut calls).await.framework.expect("info").id,
        id.0
    );
}

fn agent_update(task: &str, uuid: &[u8]) -> v1::event::Event {
    v1::event::Event::Update(v1::Update {
        status: Some(v1::TaskStatus {
            task_id: task.into(),
            agent_id: "a1".into(),
            state: v1::TaskState::TaskRunning as i32,
            uuid: uuid.to_vec(),
            source: if uuid.is_empty() {
                v1::StatusSource::SourceMaster as i32
            } else {
                v1::StatusSource::SourceAgent as i32
            },
            ..Default::default()
        }),
    })
}

#[tokio::test]
async fn auto_acknowledge_acknowledges_agent_updates() {
    // Proves agent updates (with a uuid) are acknowledged with their task, agent and uuid once
    // the consumer has them, and master updates (no uuid) are not.
    let (master, mut calls) = FakeMaster::start(true, registry()).await;
    let (_framework, mut events) = connect(&[&master]).await;
    let id = subscribed_id(next_event(&mut events).await);
    master.push(Ok(agent_update("from-master", &[]))).await;
    master.push(Ok(agent_update("from-agent", &[7; 16]))).await;
    for want in ["from-master", "from-agent"] {
        match next_event(&mut events).await {
            Some(Event::Update(status)) => {
                assert_eq!(status.task_id, TaskId::from(want));
                assert_eq!(status.state, TaskState::Running);
            }
            other => panic!("expected an update, got {other:?}"),
        }
    }
    // Acknowledgements go out in order, so the first one shows the master update was skipped.
    match next_call(&mut calls).await {
        Call::Acknowledge(a) => {
            assert_eq!(
                (
                    a.framework_id.as_str(),
                    a.task_id.as_str(),
                    a.agent_id.as_str()
                ),
                (id.0.as_str(), "from-agent", "a1")
            );
            assert_eq!(a.uuid, vec![7; 16]);
        }
        other => panic!("expected Acknowledge, got {other:?}"),
    }
}

#[tokio::test]
async fn not_found_on_resubscribe_ends_the_stream_with_an_error() {
    // Proves a framework the master no longer knows gets Disconnected, then an Error naming its
    // id, then the end of the stream; calls then fail with NotConnected.
    let (master, _calls) = FakeMaster::start(true, registry()).await;
    let (framework, mut events) = connect(&[&master]).await;
    let id = subscribed_id(next_event(&mut events).await);
    master.with(|s| s.known.lock().expect("not poisoned").clear());
    master.push(Err(Status::unavailable("restarting"))).await;
    assert_eq!(next_event(&mut events).await, Some(Event::Disconnected));
    match next_event(&mut events).await {
        Some(Event::Error(message)) => assert!(message.contains(&id.0), "{message}"),
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(next_event(&mut events).await, None);
    assert!(matches!(
        framework.revive().await,
        Err(CallError::NotConnected { call: "revive" })
    ));
}

#[tokio::test]
async fn an_error_event_ends_the_stream() {
    // Proves the master's Error event is surfaced and ends the stream without a re-subscription.
    let (master, _calls) = FakeMaster::start(true, registry()).await;
    let (framework, mut events) = connect(&[&master]).await;
    subscribed_id(next_event(&mut events).await);
    master
        .push(Ok(v1::event::Event::Error(v1::Error {
            message: "another connection took over".into(),
        })))
        .await;
    assert_eq!(
        next_event(&mut events).await,
        Some(Event::Error("another connection took over".into()))
    );
    assert_eq!(next_event(&mut events).await, None);
    assert!(!framework.is_connected());
}

#[tokio::test]
async fn events_are_converted_from_the_wire() {
    // Proves offers, rescinds and agent failures reach the stream as SDK types, and a malformed
    // offer is dropped without losing the rest of its batch.
    let (master, _calls) = FakeMaster::start(true, registry()).await;
    let (_framework, mut events) = connect(&[&master]).await;
    subscribed_id(next_event(&mut events).await);
    let offer = |id: &str, end: u32| v1::Offer {
        id: id.into(),
        agent_id: "a1".into(),
        hostname: "h1".into(),
        resources: Some(v1::Resources {
            millicpus: 1500,
            mem_bytes: 1 << 30,
            ports: vec![v1::PortRange { begin: 31000, end }],
        }),
        ..Default::default()
    };
    master
        .push(Ok(v1::event::Event::Offers(v1::Offers {
            offers: vec![offer("bad", 99_999), offer("o1", 31009)],
        })))
        .await;
    master
        .push(Ok(v1::event::Event::Rescind(v1::Rescind {
            offer_id: "o1".into(),
        })))
        .await;
    master
        .push(Ok(v1::event::Event::Failure(v1::Failure {
            agent_id: "a1".into(),
        })))
        .await;
    match next_event(&mut events).await {
        Some(Event::Offers(offers)) => {
            assert_eq!(offers.len(), 1);
            assert_eq!(offers[0].id, OfferId::from("o1"));
            assert_eq!(offers[0].resources.cpus(), 1.5);
            assert_eq!(offers[0].resources.ports().count(), 10);
        }
        other => panic!("expected offers, got {other:?}"),
    }
    assert_eq!(
        next_event(&mut events).await,
        Some(Event::Rescind(OfferId::from("o1")))
    );
    assert_eq!(
        next_event(&mut events).await,
        Some(Event::Failure {
            agent_id: AgentId::from("a1")
        })
    );
}

#[tokio::test]
async fn calls_send_what_they_say_and_follow_redirects() {
    // Proves launch/revive/kill/reconcile send the right requests, a call answered with a
    // redirect is retried at the named leader, and NOT_FOUND / INVALID_ARGUMENT become the
    // matching CallError with the master's message.
    let known = registry();
    let (first, mut first_calls) = FakeMaster::start(true, known.clone()).await;
    let (second, mut second_calls) = FakeMaster::start(true, known).await;
    let (framework, mut events) = connect(&[&first]).await;
    let id = subscribed_id(next_event(&mut events).await);

    let task = TaskSpec::new("t-1", Command::argv(["sleep", "9"]))
        .env("K", "V")
        .build(
            AgentId::from("a1"),
            Resources::new(0.25, 16 << 20, PortRanges::from_ports([31000])).expect("valid"),
        )
        .expect("valid task");
    framework
        .launch(
            &[OfferId::from("o1")],
            vec![task],
            Filters::refuse(Duration::from_secs(7)),
        )
        .await
        .expect("launch");
    match next_call(&mut first_calls).await {
        Call::Accept(a) => {
            assert_eq!(a.framework_id, id.0);
            assert_eq!(a.offer_ids, ["o1"]);
            assert_eq!(a.filters.expect("filters").refuse_seconds, Some(7.0));
            let [op] = a.operations.as_slice() else {
                panic!("one operation")
            };
            let Some(v1::operation::Operation::Launch(launch)) = &op.operation else {
                panic!("a launch")
            };
            let wire = &launch.tasks[0];
            assert_eq!(
                (wire.task_id.as_str(), wire.agent_id.as_str()),
                ("t-1", "a1")
            );
            let command = wire.command.as_ref().expect("command");
            assert_eq!(command.argv, ["sleep", "9"]);
            assert_eq!(command.env.get("K").map(String::as_str), Some("V"));
            let res = wire.resources.as_ref().expect("resources");
            assert_eq!((res.millicpus, res.mem_bytes), (250, 16 << 20));
        }
        other => panic!("expected Accept, got {other:?}"),
    }
    framework.revive_and_clear_filters().await.expect("revive");
    assert!(matches!(next_call(&mut first_calls).await, Call::Revive(r) if r.clear_filters));
    framework
        .kill(&TaskId::from("t-1"), Some(Duration::from_secs(3)))
        .await
        .expect("kill");
    assert!(matches!(next_call(&mut first_calls).await,
        Call::Kill(k) if k.task_id == "t-1" && k.kill_grace_period_ms == 3000));
    framework
        .reconcile(vec![TaskId::from("t-1").into()])
        .await
        .expect("reconcile");
    assert!(matches!(next_call(&mut first_calls).await,
        Call::Reconcile(r) if r.tasks.len() == 1 && r.tasks[0].task_id == "t-1"));

    // The first master now redirects calls to the second.
    first.with(|s| s.call_answer = Some(redirect_status("not leading", Some(&second.addr))));
    framework.revive().await.expect("revive via the redirect");
    assert!(matches!(next_call(&mut first_calls).await, Call::Revive(_)));
    assert!(matches!(next_call(&mut second_calls).await,
        Call::Revive(r) if r.framework_id == id.0 && !r.clear_filters));

    first.with(|s| s.call_answer = Some(Status::not_found(format!("framework {id}"))));
    match framework.suppress().await {
        Err(CallError::FrameworkNotFound {
            call: "suppress",
            framework_id,
            message,
        }) => {
            assert_eq!(framework_id, id);
            assert!(message.contains(&id.0), "{message}");
        }
        other => panic!("expected FrameworkNotFound, got {other:?}"),
    }
    first.with(|s| s.call_answer = Some(Status::invalid_argument("offer_ids: empty")));
    let err = framework
        .decline(&[], Duration::ZERO)
        .await
        .expect_err("invalid");
    assert!(
        matches!(&err, CallError::InvalidArgument { call: "decline", message } if message.ends_with("offer_ids: empty"))
    );
    assert_eq!(
        err.to_string(),
        format!(
            "decline: invalid argument: {}: offer_ids: empty",
            first.addr
        )
    );
}

#[tokio::test]
async fn teardown_ends_the_stream_quietly() {
    // Proves a successful teardown reaches the master and the stream ends without an Error and
    // without a re-subscription.
    let (master, mut calls) = FakeMaster::start(true, registry()).await;
    let (framework, mut events) = connect(&[&master]).await;
    let id = subscribed_id(next_event(&mut events).await);
    framework.teardown().await.expect("teardown");
    assert!(matches!(next_call(&mut calls).await, Call::Teardown(t) if t.framework_id == id.0));
    assert_eq!(next_event(&mut events).await, None);
}

#[tokio::test]
async fn connect_backs_off_while_nobody_leads_then_subscribes() {
    // Proves connect keeps trying both masters while neither leads (no drover-leader), and
    // subscribes as soon as one does.
    let known = registry();
    let (a, mut a_calls) = FakeMaster::start(false, known.clone()).await;
    let (b, mut b_calls) = FakeMaster::start(false, known).await;
    let masters = [a.addr.clone(), b.addr.clone()];
    let connecting = tokio::spawn(
        Framework::builder()
            .name("patient")
            .masters(masters)
            .connection_options(options())
            .connect(),
    );
    // Three rounds over both masters, so at least two backoff waits happened.
    for _ in 0..3 {
        next_subscribe(&mut a_calls).await;
        next_subscribe(&mut b_calls).await;
    }
    b.with(|s| s.leading = true);
    let (framework, mut events) = within("connect", connecting)
        .await
        .expect("no panic")
        .expect("subscribed");
    subscribed_id(next_event(&mut events).await);
    assert_eq!(framework.leader().as_deref(), Some(b.addr.as_str()));
}

#[tokio::test]
async fn connect_gives_up_naming_the_masters() {
    // Proves connect fails with NoLeader after subscribe_timeout when no master leads, naming
    // the addresses and the last error.
    let (a, _calls) = FakeMaster::start(false, registry()).await;
    let err = Framework::builder()
        .name("impatient")
        .masters([a.addr.as_str()])
        .connection_options(ConnectionOptions {
            subscribe_timeout: Duration::from_millis(300),
            ..options()
        })
        .connect()
        .await
        .expect_err("nobody leads");
    match &err {
        ConnectError::NoLeader {
            masters,
            last_error,
            ..
        } => {
            assert_eq!(masters, &a.addr);
            assert!(last_error.contains("not leading"), "{last_error}");
        }
        other => panic!("expected NoLeader, got {other:?}"),
    }
}

#[tokio::test]
async fn resuming_an_unknown_framework_is_not_found() {
    // Proves connect with a framework id the master does not know fails with FrameworkNotFound.
    let (a, _calls) = FakeMaster::start(true, registry()).await;
    let err = Framework::builder()
        .name("ghost")
        .masters([a.addr.as_str()])
        .framework_id(Some(FrameworkId::from("fw-gone")))
        .connection_options(options())
        .connect()
        .await
        .expect_err("unknown id");
    assert!(
        matches!(&err, ConnectError::FrameworkNotFound { framework_id, .. } if framework_id.0 == "fw-gone"),
        "{err:?}"
    );
}

#[tokio::test]
async fn dropping_the_event_stream_closes_the_subscription() {
    // Proves the connection task ends (and the master sees the stream close) once Events is dropped.
    let (master, _calls) = FakeMaster::start(true, registry()).await;
    let (framework, events) = connect(&[&master]).await;
    drop(events);
    let tx = master
        .with(|s| s.streams.last().cloned())
        .expect("a subscription");
    within("the stream to close", tx.closed()).await;
    assert!(!framework.is_connected());
}
