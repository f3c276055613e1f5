//! Connecting to the leading master and keeping the subscription alive.
//!
//! [`FrameworkBuilder::connect`] finds the leader (`drover_client`'s search rules and driver; the
//! attempt here is one `Subscribe`), subscribes, and
//! spawns one connection task per subscription. Its duties, in order:
//! 1. Read the master's events, convert them at the edge (`convert`) and queue them for
//!    [`Events`] (bounded: a slow consumer slows the reading, nothing grows).
//! 2. Treat `heartbeat_misses_max` heartbeat intervals without any event as a dead stream.
//! 3. On a broken stream: publish "not connected" (calls fail fast), queue `Disconnected`, search
//!    for the leader again (starting with the one the ending status named, else the last one),
//!    re-subscribe with the same framework id and the current suppressed state, publish the new
//!    link, queue `Reconnected`.
//! 4. End the stream with `Error` when the master refuses to go on (an `Error` event, `NOT_FOUND`
//!    for the framework id); end it quietly after a teardown or when the consumer drops `Events`.
//!
//! The current link (leader address + gRPC client) lives in a `watch` channel the connection task
//! owns; calls read it and never block on the task. A second task, when auto-acknowledge is on,
//! acknowledges the agent updates `Events` has yielded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use drover_client::MasterChannel;
use drover_client::{
    Endpoints, LeaderSearch, Outcome, SearchError, SearchLimits, Transport, find_leader,
    random_seed,
};
use drover_proto::MESSAGE_BYTES_MAX;
use drover_proto::v1;
use drover_proto::v1::scheduler_client::SchedulerClient;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};
use tonic::Streaming;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::error::ConnectError;
use crate::events::{
    ACKNOWLEDGEMENTS_IN_FLIGHT_MAX, ACKNOWLEDGEMENTS_QUEUE_CAPACITY, EVENTS_QUEUE_CAPACITY, Event,
    Events, WarnEvery,
};
use crate::ids::{AgentId, FrameworkId, OfferId};
use crate::leader::{Verdict, classify, verdict};
use crate::offers::Offer;
use crate::tasks::TaskStatus;

/// Timeouts, backoff and liveness settings of a connection. Every field has a production default.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionOptions {
    /// Opening a TCP/HTTP2 connection to one master.
    pub connect_timeout: Duration,
    /// One call (`launch`, `decline`, ...) including the redirects it follows; also how long a
    /// master may take to answer `Subscribe` with `Subscribed`.
    pub call_timeout: Duration,
    /// How long [`FrameworkBuilder::connect`] looks for a leader before giving up. Later
    /// re-subscriptions keep trying until the master says the framework is gone.
    pub subscribe_timeout: Duration,
    /// Ceiling of the first wait after a full round of masters failed; doubles up to
    /// `backoff_max`. Each wait is drawn between half its ceiling and the ceiling (jitter).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Heartbeat intervals without any event after which the stream counts as dead.
    pub heartbeat_misses_max: u32,
    /// `drover-leader` redirects followed in a row before an attempt counts as failed.
    pub redirects_max: u32,
    /// `None`: plaintext. Otherwise masters are verified against its CA and its certificate
    /// (a framework's) is presented.
    pub tls: Option<drover_security::TlsConfig>,
    /// The ACL token sent on every call (masters with `--acl` need one). `Debug` redacts it.
    pub token: Option<drover_security::Secret>,
}

impl ConnectionOptions {
    /// How every connection to a master is opened and bounded.
    pub(crate) fn transport(&self) -> Transport {
        Transport {
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
            keepalive: None,
            tls: self.tls.clone(),
            token: self.token.clone(),
        }
    }
}

impl Default for ConnectionOptions {
    fn default() -> ConnectionOptions {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            heartbeat_misses_max: 3,
            redirects_max: 3,
            tls: None,
            token: None,
        }
    }
}

/// Configures and connects a framework; see [`Framework::builder`].
#[derive(Clone, Debug)]
pub struct FrameworkBuilder {
    name: String,
    role: String,
    principal: String,
    hostname: String,
    masters: Vec<String>,
    failover_timeout: Duration,
    framework_id: Option<FrameworkId>,
    suppressed: bool,
    auto_acknowledge: bool,
    options: ConnectionOptions,
}

/// What `connect` needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) info: v1::FrameworkInfo,
    pub(crate) masters: Endpoints,
    pub(crate) suppressed: bool,
    pub(crate) auto_acknowledge: bool,
    pub(crate) options: ConnectionOptions,
}

impl Default for FrameworkBuilder {
    fn default() -> FrameworkBuilder {
        FrameworkBuilder {
            name: String::new(),
            role: "*".to_string(),
            principal: String::new(),
            hostname: String::new(),
            masters: Vec::new(),
            failover_timeout: Duration::from_secs(60),
            framework_id: None,
            suppressed: false,
            auto_acknowledge: true,
            options: ConnectionOptions::default(),
        }
    }
}

impl FrameworkBuilder {
    /// The framework's name, shown by `drover framework ls` (required).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The role whose share the framework's resources count against (default `"*"`).
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// Who the framework authenticates as (default: none).
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = principal.into();
        self
    }

    /// The host the framework runs on, for operators (default: empty).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// The masters to look for the leader at, `HOST:PORT` each (required). Each item may itself
    /// be a comma-separated list, so `$DROVER_MASTERS` can be passed as it is.
    pub fn masters<I, S>(mut self, masters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.masters = masters
            .into_iter()
            .flat_map(|s| {
                s.as_ref()
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        self
    }

    /// How long the master keeps the framework's tasks while it is disconnected (default 60 s).
    /// Re-subscribing within it resumes the framework; past it the framework is torn down.
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

    /// Resume the framework with this id (e.g. stored from an earlier run) instead of registering
    /// a new one; `None` registers a new one.
    pub fn framework_id(mut self, id: Option<FrameworkId>) -> Self {
        self.framework_id = id;
        self
    }

    /// Subscribe suppressed: no offers until [`Framework::revive`] (default false).
    pub fn suppressed(mut self, suppressed: bool) -> Self {
        self.suppressed = suppressed;
        self
    }

    /// Acknowledge agent updates (those carrying a uuid) as soon as [`Events`] yields them
    /// (default true). Turn it off to acknowledge with [`Framework::acknowledge`] only after the
    /// update is durably handled: an unacknowledged update is sent again by the agent, also
    /// across framework restarts, so nothing is missed.
    pub fn auto_acknowledge(mut self, auto: bool) -> Self {
        self.auto_acknowledge = auto;
        self
    }

    /// TLS to the masters (`None`, the default: plaintext): they are verified against its CA,
    /// and its certificate (a framework's, from `drover tls init`) is presented.
    pub fn tls(mut self, tls: Option<drover_security::TlsConfig>) -> Self {
        self.options.tls = tls;
        self
    }

    /// The ACL token to present (`None`, the default: none). A master with `--acl` lets a
    /// framework subscribe only with a token whose policies grant its role (`[framework]
    /// roles`), and launch only as the task users they grant.
    pub fn token(mut self, token: Option<drover_security::Secret>) -> Self {
        self.options.token = token;
        self
    }

    /// Timeouts, backoff and liveness settings (default: [`ConnectionOptions::default`]).
    pub fn connection_options(mut self, options: ConnectionOptions) -> Self {
        self.options = options;
        self
    }

    /// Validates the settings; errors name the setting.
    pub(crate) fn config(&self) -> Result<Config, ConnectError> {
        let invalid = |field, reason: &str| ConnectError::InvalidConfig {
            field,
            reason: reason.to_string(),
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name", "empty; every framework needs a name"));
        }
        if self.role.trim().is_empty() {
            return Err(invalid("role", "empty (leave it unset for \"*\")"));
        }
        let masters =
            Endpoints::from_list(&self.masters).map_err(|e| ConnectError::InvalidConfig {
                field: "masters",
                reason: e.to_string(),
            })?;
        if let Some(id) = &self.framework_id
            && id.as_str().trim().is_empty()
        {
            return Err(invalid("framework_id", "empty (use None to register anew)"));
        }
        let o = &self.options;
        for (field, value) in [
            ("connect_timeout", o.connect_timeout),
            ("call_timeout", o.call_timeout),
            ("subscribe_timeout", o.subscribe_timeout),
            ("backoff_initial", o.backoff_initial),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be more than zero"));
            }
        }
        if o.backoff_max < o.backoff_initial {
            return Err(invalid("backoff_max", "is less than backoff_initial"));
        }
        if o.heartbeat_misses_max == 0 {
            return Err(invalid("heartbeat_misses_max", "must be at least 1"));
        }
        Ok(Config {
            info: v1::FrameworkInfo {
                id: self
                    .framework_id
                    .as_ref()
                    .map(|id| id.0.clone())
                    .unwrap_or_default(),
                name: self.name.clone(),
                role: self.role.clone(),
                principal: self.principal.clone(),
                failover_timeout_seconds: self.failover_timeout.as_secs_f64(),
                hostname: self.hostname.clone(),
            },
            masters,
            suppressed: self.suppressed,
            auto_acknowledge: self.auto_acknowledge,
            options: self.options.clone(),
        })
    }

    /// Finds the leading master, subscribes, and returns the handle for calls and the event
    /// stream, whose first event is [`Event::Subscribed`]. Retries with backoff while no master
    /// leads, for up to [`ConnectionOptions::subscribe_timeout`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use drover_sdk::{Event, Framework};
    /// use futures::StreamExt;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let (framework, mut events) = Framework::builder()
    ///     .name("example")
    ///     .masters(["127.0.0.1:5050", "127.0.0.1:5060"])
    ///     .failover_timeout(Duration::from_secs(300))
    ///     .connect()
    ///     .await?;
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         Event::Offers(offers) => {
    ///             let ids: Vec<_> = offers.into_iter().map(|o| o.id).collect();
    ///             framework.decline(&ids, Duration::from_secs(30)).await?;
    ///         }
    ///         Event::Update(status) => println!("{status}"),
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self) -> Result<(Framework, Events), ConnectError> {
        let config = self.config()?;
        let Config {
            info,
            masters,
            suppressed,
            auto_acknowledge,
            options,
        } = config;
        // The first search is bounded by the subscribe timeout; re-subscriptions are not.
        let limits = SearchLimits {
            redirects_max: options.redirects_max,
            backoff_min: options.backoff_initial,
            backoff_max: options.backoff_max,
            total_wait: Some(options.subscribe_timeout),
        };
        let mut search = LeaderSearch::new(&masters, &limits, random_seed());
        let request = v1::SubscribeRequest {
            framework: Some(info.clone()),
            suppressed,
        };
        let sub = match subscribe(&mut search, &request, &options).await {
            Ok(sub) => sub,
            Err(SearchError::Stopped {
                addr,
                error: Refusal::NotFound(message),
            }) => {
                return Err(ConnectError::FrameworkNotFound {
                    framework_id: FrameworkId(info.id.clone()),
                    message: format!("{addr}: {message}"),
                });
            }
            Err(SearchError::Stopped {
                addr,
                error: Refusal::Refused(message),
            }) => {
                return Err(ConnectError::Refused {
                    message: format!("{addr}: {message}"),
                });
            }
            Err(SearchError::GaveUp {
                waited, last_error, ..
            }) => {
                return Err(ConnectError::NoLeader {
                    masters: masters.to_string(),
                    waited,
                    last_error,
                });
            }
        };
        search.set_total_wait(None);
        let framework_id = FrameworkId(sub.subscribed.framework_id.clone());
        if framework_id.as_str().is_empty() {
            return Err(ConnectError::Refused {
                message: format!("{}: Subscribed carries no framework id", sub.addr),
            });
        }
        if !info.id.is_empty() && info.id != framework_id.0 {
            return Err(ConnectError::Refused {
                message: format!(
                    "{}: asked to resume framework {} but was given {framework_id}",
                    sub.addr, info.id
                ),
            });
        }
        info!(framework_id = %framework_id, leader = %sub.addr, "subscribed");
        let (link_tx, link_rx) = watch::channel(Some(sub.link()));
        let framework = Framework {
            inner: Arc::new(Inner {
                framework_id: framework_id.clone(),
                options: options.clone(),
                link: link_rx,
                suppressed: AtomicBool::new(suppressed),
                torn_down: AtomicBool::new(false),
            }),
        };
        let (events_tx, events_rx) = mpsc::channel(EVENTS_QUEUE_CAPACITY);
        events_tx
            .try_send(Event::Subscribed {
                framework_id: framework_id.clone(),
            })
            .expect("a new event queue has room for its first event");
        let driver = Driver {
            info: v1::FrameworkInfo {
                id: framework_id.0.clone(),
                ..info
            },
            framework: framework.clone(),
            link: link_tx,
            events: events_tx,
            search,
        };
        let span = info_span!("framework", framework_id = %framework_id);
        tokio::spawn(driver.run(sub).instrument(span.clone()));
        let acknowledgements = auto_acknowledge.then(|| {
            let (tx, rx) = mpsc::channel(ACKNOWLEDGEMENTS_QUEUE_CAPACITY);
            tokio::spawn(acknowledge_loop(framework.clone(), rx).instrument(span));
            tx
        });
        Ok((
            framework,
            Events {
                rx: events_rx,
                acknowledgements,
                unacknowledged: Default::default(),
            },
        ))
    }
}

/// A subscribed framework: the handle for calls. Cheap to clone; every clone makes calls for the
/// same subscription. The calls are in the `calls` module ([`Framework::launch`] and the rest).
#[derive(Clone)]
pub struct Framework {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) framework_id: FrameworkId,
    pub(crate) options: ConnectionOptions,
    /// The current leader, `None` while (re)connecting or after the stream ended. Written only
    /// by the connection task.
    pub(crate) link: watch::Receiver<Option<Link>>,
    /// Whether the framework wants no offers: re-subscriptions carry it.
    pub(crate) suppressed: AtomicBool,
    /// Set when a teardown is under way or done: the connection task does not re-subscribe.
    pub(crate) torn_down: AtomicBool,
}

/// A subscription's master and the gRPC client on the same connection.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) addr: String,
    pub(crate) client: SchedulerClient<MasterChannel>,
}

impl Framework {
    /// Starts configuring a framework; finish with [`FrameworkBuilder::connect`].
    ///
    /// ```
    /// use drover_sdk::Framework;
    /// let builder = Framework::builder()
    ///     .name("hello")
    ///     .role("web")
    ///     .principal("ops")
    ///     .masters(["127.0.0.1:5050,127.0.0.1:5060"])
    ///     .framework_id(None)
    ///     .suppressed(false)
    ///     .auto_acknowledge(true);
    /// # drop(builder);
    /// ```
    pub fn builder() -> FrameworkBuilder {
        FrameworkBuilder::default()
    }

    /// The id the master gave this framework; store it to resume after a restart.
    pub fn framework_id(&self) -> &FrameworkId {
        &self.inner.framework_id
    }

    /// Whether a subscription is live right now.
    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().is_some()
    }

    /// The leading master's address while connected.
    pub fn leader(&self) -> Option<String> {
        self.inner.link.borrow().as_ref().map(|l| l.addr.clone())
    }
}

impl std::fmt::Debug for Framework {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framework")
            .field("framework_id", &self.inner.framework_id)
            .field("leader", &self.leader())
            .finish_non_exhaustive()
    }
}

/// A scheduler client on `channel`, with the message size limits set.
pub(crate) fn scheduler_client(channel: MasterChannel) -> SchedulerClient<MasterChannel> {
    SchedulerClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// A scheduler client connected to the master at `addr`.
pub(crate) async fn connect_client(
    addr: &str,
    options: &ConnectionOptions,
) -> Result<SchedulerClient<MasterChannel>, String> {
    let channel = options
        .transport()
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    Ok(scheduler_client(channel))
}

/// A live subscription: the master's `Subscribed` and the rest of its stream.
struct Subscription {
    addr: String,
    client: SchedulerClient<MasterChannel>,
    stream: Streaming<v1::Event>,
    subscribed: v1::Subscribed,
}

impl Subscription {
    fn link(&self) -> Link {
        Link {
            addr: self.addr.clone(),
            client: self.client.clone(),
        }
    }

    /// How long the stream may stay silent before it counts as dead; `None` if the master
    /// promised no heartbeats.
    fn silence_max(&self, misses_max: u32) -> Option<Duration> {
        match self.subscribed.heartbeat_interval_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms).saturating_mul(misses_max)),
        }
    }
}

/// Why a subscribe attempt ended the whole search.
#[derive(Debug)]
enum Refusal {
    /// The master does not know the framework id.
    NotFound(String),
    /// The master refused the subscription for good.
    Refused(String),
}

/// Subscribes at the leader, following the search rules (`drover_client::find_leader`).
async fn subscribe(
    search: &mut LeaderSearch,
    request: &v1::SubscribeRequest,
    options: &ConnectionOptions,
) -> Result<Subscription, SearchError<Refusal>> {
    find_leader(search, &options.transport(), |channel, addr| {
        subscribe_once(channel, addr, request.clone())
    })
    .await
}

/// One subscribe attempt: call `Subscribe` on `channel` (to `addr`), wait for `Subscribed`. The
/// driver bounds it by the call timeout.
async fn subscribe_once(
    channel: MasterChannel,
    addr: String,
    request: v1::SubscribeRequest,
) -> Outcome<Subscription, Refusal> {
    let mut client = scheduler_client(channel);
    let mut stream = match client.subscribe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(&status, &addr),
    };
    let first = match stream.message().await {
        Ok(first) => first,
        Err(status) => return failed(&status, &addr),
    };
    match first.and_then(|e| e.event) {
        Some(v1::event::Event::Subscribed(subscribed)) => Outcome::Done(Subscription {
            addr,
            client,
            stream,
            subscribed,
        }),
        Some(v1::event::Event::Error(e)) => Outcome::Stop(Refusal::Refused(e.message)),
        None => Outcome::Unreachable("the stream ended before Subscribed".into()),
        Some(_) => Outcome::Unreachable("the first event was not Subscribed".into()),
    }
}

/// What a failed `Subscribe` means for the search.
fn failed(status: &tonic::Status, addr: &str) -> Outcome<Subscription, Refusal> {
    match verdict(status, addr) {
        Verdict::Redirect(leader) => Outcome::Redirect(leader),
        Verdict::Retry(m) if status.code() == tonic::Code::Unavailable => Outcome::NotLeading(m),
        Verdict::Retry(m) => Outcome::Unreachable(m),
        Verdict::NotFound(m) => Outcome::Stop(Refusal::NotFound(m)),
        Verdict::InvalidArgument(m) | Verdict::Refused(_, m) => Outcome::Stop(Refusal::Refused(m)),
    }
}

/// How a subscription's stream ended.
enum End {
    /// `Events` was dropped: nobody listens any more.
    ConsumerGone,
    /// The master will not go on with this framework.
    Fatal(String),
    /// The connection broke; `leader` is where the ending status said the leader is.
    Broken {
        reason: String,
        leader: Option<String>,
    },
}

/// The connection task's state. See the module doc for its duties.
struct Driver {
    /// With the framework id set: what every re-subscription sends.
    info: v1::FrameworkInfo,
    framework: Framework,
    link: watch::Sender<Option<Link>>,
    events: mpsc::Sender<Event>,
    search: LeaderSearch,
}

impl Driver {
    async fn run(mut self, mut sub: Subscription) {
        loop {
            let end = self.pump(&mut sub).await;
            self.link.send_replace(None);
            let torn_down = self.framework.inner.torn_down.load(Ordering::SeqCst);
            let (reason, leader) = match end {
                End::ConsumerGone => {
                    debug!("the event stream was dropped; closing the subscription");
                    return;
                }
                End::Fatal(_) | End::Broken { .. } if torn_down => {
                    info!("torn down; the event stream ends");
                    return;
                }
                End::Fatal(message) => {
                    warn!(error = %message, "the master ended the subscription");
                    self.emit(Event::Error(message)).await;
                    return;
                }
                End::Broken { reason, leader } => (reason, leader),
            };
            warn!(reason = %reason, "subscription lost; re-subscribing");
            if let Some(leader) = leader {
                self.search.prefer(leader);
            }
            if !self.emit(Event::Disconnected).await {
                return;
            }
            match self.resubscribe().await {
                Some(next) => sub = next,
                None => return,
            }
        }
    }

    /// Queues `event`; false if the consumer is gone.
    async fn emit(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// Searches for the leader until a re-subscription works (queues `Reconnected`) or cannot
    /// (queues `Error`); `None` when the stream must end.
    async fn resubscribe(&mut self) -> Option<Subscription> {
        let request = v1::SubscribeRequest {
            framework: Some(self.info.clone()),
            suppressed: self.framework.inner.suppressed.load(Ordering::SeqCst),
        };
        let options = self.framework.inner.options.clone();
        let found = tokio::select! {
            found = subscribe(&mut self.search, &request, &options) => found,
            _ = self.events.closed() => return None,
        };
        let error = match found {
            Ok(sub) if sub.subscribed.framework_id == self.info.id => {
                info!(leader = %sub.addr, "re-subscribed");
                self.link.send_replace(Some(sub.link()));
                return self.emit(Event::Reconnected).await.then_some(sub);
            }
            Ok(sub) => format!(
                "{}: re-subscribed as framework {} but was given {}",
                sub.addr, self.info.id, sub.subscribed.framework_id
            ),
            Err(SearchError::Stopped {
                addr,
                error: Refusal::NotFound(message),
            }) => format!(
                "framework {} is not known to the master any more (torn down?): {addr}: {message}",
                self.info.id
            ),
            Err(SearchError::Stopped {
                addr,
                error: Refusal::Refused(message),
            }) => format!("{addr}: {message}"),
            // Re-subscriptions have no total wait, so this is not expected; say what happened.
            Err(SearchError::GaveUp { last_error, .. }) => last_error,
        };
        warn!(error = %error, "cannot re-subscribe");
        self.emit(Event::Error(error)).await;
        None
    }

    /// Reads `sub`'s stream and queues its events until it ends.
    async fn pump(&mut self, sub: &mut Subscription) -> End {
        let silence_max = sub.silence_max(self.framework.inner.options.heartbeat_misses_max);
        let mut last_heard = Instant::now();
        loop {
            let stream = &mut sub.stream;
            let next = async {
                match silence_max {
                    Some(max) => timeout_at(last_heard + max, stream.message()).await.ok(),
                    None => Some(stream.message().await),
                }
            };
            let next = tokio::select! {
                biased;
                next = next => next,
                _ = self.events.closed() => return End::ConsumerGone,
            };
            let event = match next {
                None => {
                    return End::Broken {
                        reason: format!(
                            "{}: no event for {:?} (heartbeats missed)",
                            sub.addr,
                            silence_max.unwrap_or_default()
                        ),
                        leader: None,
                    };
                }
                Some(Ok(Some(event))) => event,
                Some(Ok(None)) => {
                    return End::Broken {
                        reason: format!("{}: the master ended the stream", sub.addr),
                        leader: None,
                    };
                }
                Some(Err(status)) => {
                    return match classify(&status, &sub.addr) {
                        Verdict::Redirect(leader) => End::Broken {
                            reason: format!("{}: no longer leading", sub.addr),
                            leader: Some(leader),
                        },
                        Verdict::Retry(reason) => End::Broken {
                            reason,
                            leader: None,
                        },
                        Verdict::NotFound(m) => End::Fatal(format!(
                            "framework {} is not known to the master any more: {m}",
                            self.info.id
                        )),
                        Verdict::InvalidArgument(m) | Verdict::Refused(_, m) => End::Fatal(m),
                    };
                }
            };
            last_heard = Instant::now();
            let out = match event.event {
                Some(v1::event::Event::Heartbeat(_)) => continue,
                Some(v1::event::Event::Subscribed(_)) => {
                    debug!("ignoring a repeated Subscribed");
                    continue;
                }
                Some(v1::event::Event::Offers(offers)) => {
                    let offers: Vec<Offer> = offers
                        .offers
                        .iter()
                        .filter_map(|wire| {
                            Offer::try_from(wire)
                                .inspect_err(|e| {
                                    warn!(offer_id = %wire.id, error = %e, "ignoring an offer the SDK cannot read");
                                })
                                .ok()
                        })
                        .collect();
                    if offers.is_empty() {
                        continue;
                    }
                    Event::Offers(offers)
                }
                Some(v1::event::Event::Rescind(r)) => Event::Rescind(OfferId(r.offer_id)),
                Some(v1::event::Event::Update(update)) => match update.status {
                    Some(status) => Event::Update(TaskStatus::from(&status)),
                    None => {
                        warn!("ignoring an update without a status");
                        continue;
                    }
                },
                Some(v1::event::Event::Failure(f)) => Event::Failure {
                    agent_id: AgentId(f.agent_id),
                },
                Some(v1::event::Event::Error(e)) => return End::Fatal(e.message),
                None => {
                    debug!("ignoring an event of an unknown kind");
                    continue;
                }
            };
            if !self.emit(out).await {
                return End::ConsumerGone;
            }
        }
    }
}

/// Acknowledges the agent updates `Events` has yielded, up to `ACKNOWLEDGEMENTS_IN_FLIGHT_MAX`
/// at once, until `Events` is dropped. A failed acknowledgement is only logged: the agent sends
/// the update again, and it is acknowledged then.
async fn acknowledge_loop(framework: Framework, mut statuses: mpsc::Receiver<TaskStatus>) {
    use futures::StreamExt;
    let failed = std::sync::Mutex::new(WarnEvery::default());
    futures::stream::poll_fn(|cx| statuses.poll_recv(cx))
        .for_each_concurrent(ACKNOWLEDGEMENTS_IN_FLIGHT_MAX, |status| {
            let (framework, failed) = (&framework, &failed);
            async move {
                let Err(error) = framework.acknowledge(&status).await else {
                    return;
                };
                let due = failed.lock().map(|mut f| f.count()).unwrap_or(Some(1));
                if let Some(updates) = due {
                    warn!(task_id = %status.task_id, updates, error = %error, "acknowledgement failed; the agent will send these updates again");
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> FrameworkBuilder {
        Framework::builder().name("t").masters(["127.0.0.1:5050"])
    }

    fn field(b: FrameworkBuilder) -> &'static str {
        match b.config() {
            Err(ConnectError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn builder_defaults_and_masters_list() {
        // Proves the defaults (role "*", 60 s failover, auto-ack on, not suppressed) and that
        // comma-separated master lists are split and trimmed.
        let config = Framework::builder()
            .name("hello")
            .masters(["127.0.0.1:5050, 127.0.0.1:5060", "node:7"])
            .config()
            .expect("valid");
        assert_eq!(
            config.masters.as_slice(),
            ["127.0.0.1:5050", "127.0.0.1:5060", "node:7"]
        );
        assert_eq!(config.info.role, "*");
        assert_eq!(config.info.failover_timeout_seconds, 60.0);
        assert!(config.info.id.is_empty());
        assert!(config.auto_acknowledge && !config.suppressed);
        assert_eq!(config.options, ConnectionOptions::default());

        let resumed = valid()
            .framework_id(Some(FrameworkId::from("f-1")))
            .failover_timeout(Duration::from_millis(1500))
            .suppressed(true)
            .auto_acknowledge(false)
            .principal("p")
            .role("r")
            .hostname("h")
            .config()
            .expect("valid");
        assert_eq!(resumed.info.id, "f-1");
        assert_eq!(resumed.info.failover_timeout_seconds, 1.5);
        assert_eq!(
            (
                resumed.info.principal.as_str(),
                resumed.info.role.as_str(),
                resumed.info.hostname.as_str()
            ),
            ("p", "r", "h")
        );
        assert!(resumed.suppressed && !resumed.auto_acknowledge);
    }

    #[test]
    fn builder_validation_names_the_setting() {
        // Proves every unusable setting is refused before any network traffic, naming it.
        assert_eq!(field(valid().name(" ")), "name");
        assert_eq!(field(valid().role("")), "role");
        assert_eq!(field(valid().masters(Vec::<String>::new())), "masters");
        assert_eq!(field(valid().masters([","])), "masters");
        assert_eq!(field(valid().masters(["127.0.0.1"])), "masters");
        assert_eq!(field(valid().masters(["a:1", "b:x"])), "masters");
        assert_eq!(
            field(valid().framework_id(Some(FrameworkId::from("")))),
            "framework_id"
        );
        let options = |f: fn(&mut ConnectionOptions)| {
            let mut o = ConnectionOptions::default();
            f(&mut o);
            valid().connection_options(o)
        };
        assert_eq!(
            field(options(|o| o.call_timeout = Duration::ZERO)),
            "call_timeout"
        );
        assert_eq!(
            field(options(|o| o.connect_timeout = Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(
            field(options(|o| o.subscribe_timeout = Duration::ZERO)),
            "subscribe_timeout"
        );
        assert_eq!(
            field(options(|o| o.backoff_initial = Duration::ZERO)),
            "backoff_initial"
        );
        assert_eq!(
            field(options(|o| o.backoff_max = Duration::from_millis(1))),
            "backoff_max"
        );
        assert_eq!(
            field(options(|o| o.heartbeat_misses_max = 0)),
            "heartbeat_misses_max"
        );
        let err = valid().masters(["h:0"]).config().expect_err("port 0");
        assert_eq!(
            err.to_string(),
            "masters: \"h:0\" is not HOST:PORT (\"0\" is not a port 1..=65535)"
        );
    }

    #[tokio::test]
    async fn connect_refuses_a_bad_config_without_the_network() {
        // Proves connect() surfaces validation errors (no master is listening anywhere here).
        let err = Framework::builder()
            .masters(["127.0.0.1:1"])
            .connect()
            .await
            .expect_err("no name");
        assert!(matches!(
            err,
            ConnectError::InvalidConfig { field: "name", .. }
        ));
    }
}
