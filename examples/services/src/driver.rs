//! The framework process: leader election on coord, the subscription to the master, and the
//! execution of the core's actions.
//!
//! Duties, in the order they matter:
//! - Only the copy whose `/services/leader/member-N` node has the lowest sequence number acts;
//!   every other copy waits on the exists-watch of its predecessor (no herd on a change). A copy
//!   whose coord session expires has lost its node, so it stops at once: it drops its
//!   subscription (without tearing the framework down: the tasks keep running for the failover
//!   timeout) and joins the election again with a new session.
//! - Every coord write of a leader (status, instance records, the framework id) is a `multi` that
//!   first checks its member node exists: a copy that lost leadership cannot overwrite what the
//!   new leader writes. The master does the same for the scheduler API: a newer subscription
//!   with the framework id ends the older one with an `Error` event, on which a copy steps down.
//! - A new leader reads the specs, the instance records and the status nodes before it
//!   subscribes (with the id from `/services/framework-id`), and reconciles after every
//!   (re)subscription.
//! - An instance record is stored before its launch is sent, and deleted only after the task's
//!   terminal update (or when the instance is given up), so the next leader knows every task.
//! - Actions run in the order the core emitted them; the results the core must know (a failed
//!   launch, a failed suppress/revive, health-check results) go back into it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use drover_coord::client::{Client, ClientError, ClientOptions, SessionEvent};
use drover_coord::op::{ANY_VERSION, ErrorCode};
use drover_coord::{CreateMode, WriteOp};
use drover_sdk::{
    ConnectError, ConnectionOptions, Endpoints, Event, Events, Filters, Framework, FrameworkId,
    ReconcileTask, TaskId,
};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::core::{Action, Core, CoreConfig, InstanceRecord, Now, ProbeOutcome};
use crate::paths;
use crate::spec::ServiceSpec;

/// Health-check results queued from the probe tasks to the leader loop. A probe task waits for
/// room, so at most one result per running probe is ever outstanding.
pub const PROBE_RESULTS_QUEUE_CAPACITY: usize = 256;

/// Everything `run` needs. Every interval is a flag of `drover services`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Masters (`host:port`, each item may be a comma list); they serve both the scheduler API
    /// and coord.
    pub masters: Vec<String>,
    /// The framework's name.
    pub name: String,
    pub role: String,
    /// How long the master keeps the tasks while no copy is subscribed.
    pub failover_timeout: Duration,
    /// The core's timers.
    pub core: CoreConfig,
    /// How often the core's timers run (health checks, backoffs, status writes).
    pub tick_interval: Duration,
    /// How often the specs are read again in full, besides on every watch event.
    pub resync_interval: Duration,
    pub coord_session_timeout: Duration,
    pub coord_request_timeout: Duration,
    /// Waits between attempts to reach coord or subscribe: starts here, doubles to the max.
    pub retry_backoff_initial: Duration,
    pub retry_backoff_max: Duration,
    /// Most health checks running at once.
    pub probes_max: usize,
    /// The SDK's connection settings (call timeout, leader search backoff, heartbeats).
    pub connection: ConnectionOptions,
}

impl Config {
    /// A config with production defaults for these masters.
    pub fn new(masters: Vec<String>) -> Config {
        Config {
            masters,
            name: "services".to_string(),
            role: "*".to_string(),
            failover_timeout: Duration::from_secs(7 * 24 * 3600),
            core: CoreConfig::default(),
            tick_interval: Duration::from_millis(100),
            resync_interval: Duration::from_secs(30),
            coord_session_timeout: Duration::from_secs(10),
            coord_request_timeout: Duration::from_secs(10),
            retry_backoff_initial: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(5),
            probes_max: 64,
            connection: ConnectionOptions::default(),
        }
    }

    /// Refuses settings that cannot work, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        Endpoints::from_list(&self.masters).map_err(|e| anyhow::anyhow!("--masters: {e}"))?;
        if self.name.trim().is_empty() {
            bail!("--name: empty");
        }
        for (flag, value) in [
            ("--tick-interval", self.tick_interval),
            ("--resync-interval", self.resync_interval),
            ("--coord-session-timeout", self.coord_session_timeout),
            ("--coord-request-timeout", self.coord_request_timeout),
            ("--retry-backoff-initial", self.retry_backoff_initial),
            ("--backoff-initial", self.core.backoff_initial),
            ("--kill-retry-interval", self.core.kill_retry_interval),
            ("--reconcile-interval", self.core.reconcile_interval),
        ] {
            if value.is_zero() {
                bail!("{flag}: must be more than zero");
            }
        }
        if self.retry_backoff_max < self.retry_backoff_initial {
            bail!("--retry-backoff-max: less than --retry-backoff-initial");
        }
        if self.core.backoff_max < self.core.backoff_initial {
            bail!("--backoff-max: less than --backoff-initial");
        }
        if self.probes_max == 0 {
            bail!("--probes-max: must be at least 1");
        }
        Ok(())
    }
}

/// Runs one copy of the framework until `shutdown` resolves: joins the election, and while it
/// leads, keeps every service at its spec. Errors only on a bad config; everything else is
/// retried with backoff.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // One address per entry from here on (coord's client takes them so), in `Endpoints` order.
    let mut config = config;
    config.masters = Endpoints::from_list(&config.masters)
        .map_err(|e| anyhow::anyhow!("--masters: {e}"))?
        .to_vec();
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let clock = Clock::new();
    let mut backoff = config.retry_backoff_initial;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match term(&config, &clock, stop.clone()).await {
            End::Shutdown => {
                info!("stopped");
                return Ok(());
            }
            End::Stepped(why) => {
                warn!(why, "not leading any more; joining the election again");
                backoff = config.retry_backoff_initial;
            }
            End::Retry(why) => {
                warn!(why, retry_in = ?backoff, "coord or master unavailable");
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                backoff = (backoff * 2).min(config.retry_backoff_max);
            }
        }
    }
}

/// How one coord session (election and maybe a leadership term) ended.
enum End {
    Shutdown,
    /// Leadership lost (session expired, another copy took over); rejoin at once.
    Stepped(String),
    /// Something could not be reached; rejoin after a backoff.
    Retry(String),
}

impl From<ClientError> for End {
    fn from(e: ClientError) -> End {
        match e {
            ClientError::SessionExpired { .. } | ClientError::Closed => End::Stepped(e.to_string()),
            other => End::Retry(other.to_string()),
        }
    }
}

/// Monotonic and wall-clock time for the core.
struct Clock {
    start: tokio::time::Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono: self.start.elapsed(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// One coord session: election, then leadership until it ends.
async fn term(config: &Config, clock: &Clock, stop: watch::Receiver<bool>) -> End {
    let options = ClientOptions {
        session_timeout: config.coord_session_timeout,
        request_timeout: config.coord_request_timeout,
        // The framework's certificate serves coord as well as the scheduler API.
        tls: config.connection.tls.clone(),
        // And its token: the policy that lets it subscribe grants it `/services` in coord.
        token: config.connection.token.clone(),
        ..ClientOptions::default()
    };
    let client = match Client::connect(config.masters.clone(), options).await {
        Ok(client) => client,
        Err(e) => return End::Retry(format!("coord: {e}")),
    };
    let end = elect_and_lead(config, clock, &client, stop).await;
    // Closing deletes our member node at once, so a standby takes over without waiting for the
    // session to expire. The tasks keep running: the subscription was dropped, not torn down.
    if let Err(e) = client.close().await {
        debug!(error = %e, "closing the coord session");
    }
    end
}

async fn elect_and_lead(
    config: &Config,
    clock: &Clock,
    client: &Client,
    mut stop: watch::Receiver<bool>,
) -> End {
    for path in [
        paths::ROOT,
        paths::SPECS,
        paths::STATUS,
        paths::LEADER,
        paths::INSTANCES,
    ] {
        if let Err(e) = client.ensure_node(path).await {
            return e.into();
        }
    }
    let identity = format!(
        "{} pid {}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id()
    );
    let prefix = format!("{}/member-", paths::LEADER);
    let member = match client
        .create(
            &prefix,
            identity.into_bytes(),
            CreateMode::EphemeralSequential,
        )
        .await
    {
        Ok(path) => path,
        Err(e) => return e.into(),
    };
    let mine = member.rsplit('/').next().unwrap_or_default().to_string();
    info!(member = %member, "joined the election");
    let mut session = client.session_events();
    loop {
        let mut children = match client.children(paths::LEADER).await {
            Ok(children) => children,
            Err(e) => return e.into(),
        };
        children.retain(|c| c.starts_with("member-"));
        children.sort_by_key(|c| sequence_of(c));
        let Some(position) = children.iter().position(|c| *c == mine) else {
            return End::Stepped("our election node is gone".into());
        };
        if position == 0 {
            break;
        }
        let predecessor = format!("{}/{}", paths::LEADER, children[position - 1]);
        let watch = match client.exists_watch(&predecessor).await {
            Ok((None, _)) => continue,
            Ok((Some(_), watch)) => watch,
            Err(e) => return e.into(),
        };
        info!(waiting_on = %predecessor, "standing by");
        tokio::select! {
            fired = watch => {
                if let Err(e) = fired {
                    return e.into();
                }
            }
            event = session.next() => {
                if matches!(event, None | Some(SessionEvent::Expired | SessionEvent::Closed)) {
                    return End::Stepped("the coord session ended".into());
                }
            }
            _ = stop.wait_for(|s| *s) => return End::Shutdown,
        }
    }
    info!(member = %member, "leading");
    let mut leader = Leader {
        config,
        clock,
        client,
        fence: WriteOp::Check {
            path: member.clone(),
            version: ANY_VERSION,
        },
        core: Core::new(config.core.clone(), rand::random()),
        framework: None,
        instance_dirs: BTreeSet::new(),
        probes: Arc::new(Semaphore::new(config.probes_max)),
        probe_results: mpsc::channel(PROBE_RESULTS_QUEUE_CAPACITY),
    };
    leader.lead(session, stop).await
}

/// The sequence number of `member-0000000012`.
fn sequence_of(name: &str) -> u64 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// A health check's task and outcome.
type ProbeResult = (TaskId, ProbeOutcome);

/// One leadership term.
struct Leader<'a> {
    config: &'a Config,
    clock: &'a Clock,
    client: &'a Client,
    /// Checks that our election node still exists; first op of every write.
    fence: WriteOp,
    core: Core,
    framework: Option<Framework>,
    /// `/services/instances/NAME` nodes known to exist.
    instance_dirs: BTreeSet<String>,
    probes: Arc<Semaphore>,
    probe_results: (mpsc::Sender<ProbeResult>, mpsc::Receiver<ProbeResult>),
}

impl Leader<'_> {
    async fn lead(
        &mut self,
        mut session: futures::stream::BoxStream<'static, SessionEvent>,
        mut stop: watch::Receiver<bool>,
    ) -> End {
        // Desired state first, then what the previous leader left.
        if let Err(e) = self.read_specs().await {
            return e.into();
        }
        let records = match self.read_records().await {
            Ok(records) => records,
            Err(e) => return e.into(),
        };
        let status_names = match self.client.children(paths::STATUS).await {
            Ok(names) => names,
            Err(e) => return e.into(),
        };
        info!(instances = records.len(), "recovered the instance records");
        self.core.recover(self.clock.now(), records, status_names);
        let mut events = match self.subscribe(&mut session, &mut stop).await {
            Ok(events) => events,
            Err(end) => return end,
        };
        self.core.subscribed(self.clock.now());
        self.execute().await;
        let mut specs_watch = self.client.watch(paths::SPECS, true).await.ok();
        let mut tick = tokio::time::interval(self.config.tick_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync = tokio::time::interval(self.config.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return End::Shutdown,
                event = session.next() => {
                    match event {
                        None | Some(SessionEvent::Expired | SessionEvent::Closed) => {
                            return End::Stepped("the coord session ended".into());
                        }
                        Some(SessionEvent::Disconnected) => warn!("coord connection lost; reconnecting"),
                        Some(_) => {}
                    }
                }
                event = events.recv() => {
                    let now = self.clock.now();
                    match event {
                        None => return End::Retry("the master ended the event stream".into()),
                        Some(Event::Error(message)) => {
                            return End::Stepped(format!("the master ended the subscription: {message}"));
                        }
                        Some(Event::Offers(offers)) => self.core.offers(now, offers),
                        Some(Event::Update(status)) => {
                            debug!(%status, "update");
                            self.core.update(now, &status);
                        }
                        Some(Event::Reconnected) => {
                            info!("subscribed again; reconciling");
                            self.core.reconnected(now);
                        }
                        Some(Event::Disconnected) => warn!("lost the master; the SDK is reconnecting"),
                        Some(Event::Failure { agent_id }) => warn!(%agent_id, "agent lost"),
                        Some(Event::Rescind(_) | Event::Subscribed { .. }) => {}
                    }
                }
                fired = next_watch_event(&mut specs_watch) => {
                    if !fired {
                        // The watch ended (session trouble or lag): watch again, read it all.
                        specs_watch = self.client.watch(paths::SPECS, true).await.ok();
                    }
                    if let Err(e) = self.read_specs().await {
                        warn!(error = %e, "reading the specs");
                        if matches!(End::from(e), End::Stepped(_)) {
                            return End::Stepped("the coord session ended".into());
                        }
                    }
                }
                Some((task_id, result)) = self.probe_results.1.recv() => {
                    self.core.probe_result(self.clock.now(), &task_id, result);
                }
                _ = tick.tick() => self.core.tick(self.clock.now()),
                _ = resync.tick() => {
                    if specs_watch.is_none() {
                        specs_watch = self.client.watch(paths::SPECS, true).await.ok();
                    }
                    if let Err(e) = self.read_specs().await {
                        warn!(error = %e, "reading the specs");
                    }
                }
            }
            self.execute().await;
        }
    }

    /// Subscribes with the stored framework id (or registers and stores a new one), retrying
    /// while no master leads.
    async fn subscribe(
        &mut self,
        session: &mut futures::stream::BoxStream<'static, SessionEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Events, End> {
        let stored = match self.client.get(paths::FRAMEWORK_ID).await {
            Ok((data, _)) => {
                let id = String::from_utf8_lossy(&data).trim().to_string();
                (!id.is_empty()).then_some(FrameworkId(id))
            }
            Err(e) if e.code() == Some(ErrorCode::NoNode) => None,
            Err(e) => return Err(e.into()),
        };
        let mut wanted = stored.clone();
        let mut backoff = self.config.retry_backoff_initial;
        let (framework, events) = loop {
            let connect = Framework::builder()
                .name(self.config.name.clone())
                .role(self.config.role.clone())
                .masters(self.config.masters.iter())
                .failover_timeout(self.config.failover_timeout)
                .framework_id(wanted.clone())
                .connection_options(self.config.connection.clone())
                .connect();
            let result = tokio::select! {
                result = connect => result,
                _ = stop.wait_for(|s| *s) => return Err(End::Shutdown),
                event = session.next() => {
                    if matches!(event, None | Some(SessionEvent::Expired | SessionEvent::Closed)) {
                        return Err(End::Stepped("the coord session ended".into()));
                    }
                    continue;
                }
            };
            match result {
                Ok(connected) => break connected,
                Err(ConnectError::FrameworkNotFound {
                    framework_id,
                    message,
                }) => {
                    // Torn down (failover timeout passed): its tasks were killed with it.
                    warn!(%framework_id, message, "the stored framework id is gone; registering anew");
                    wanted = None;
                    self.core.framework_replaced(self.clock.now());
                    self.execute().await;
                }
                Err(e @ ConnectError::InvalidConfig { .. }) => {
                    error!(error = %e, "cannot subscribe");
                    return Err(End::Retry(e.to_string()));
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "subscribing");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return Err(End::Shutdown),
                    }
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        };
        let id = framework.framework_id().clone();
        info!(framework_id = %id, leader = ?framework.leader(), "subscribed");
        if stored.as_ref() != Some(&id)
            && let Err(e) = self
                .write(paths::FRAMEWORK_ID, id.as_str().as_bytes())
                .await
        {
            // Without it a successor registers anew and the tasks die with this id's timeout.
            error!(error = %e, "cannot store the framework id");
            return Err(e.into());
        }
        self.framework = Some(framework);
        Ok(events)
    }

    /// Reads every spec and hands them to the core.
    async fn read_specs(&mut self) -> Result<(), ClientError> {
        let names = self.client.children(paths::SPECS).await?;
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        for name in names {
            let path = format!("{}/{name}", paths::SPECS);
            let data = match self.client.get(&path).await {
                Ok((data, _)) => data,
                Err(e) if e.code() == Some(ErrorCode::NoNode) => continue,
                Err(e) => return Err(e),
            };
            match ServiceSpec::from_json(&String::from_utf8_lossy(&data)) {
                Ok(spec) if spec.name == name => valid.push(spec),
                Ok(spec) => invalid.push((
                    name.clone(),
                    format!("it is stored under {path} but names {:?}", spec.name),
                )),
                Err(e) => {
                    warn!(path, error = %e, "invalid spec");
                    invalid.push((name, e.to_string()));
                }
            }
        }
        self.core.set_specs(self.clock.now(), valid, invalid);
        Ok(())
    }

    async fn read_records(&mut self) -> Result<Vec<InstanceRecord>, ClientError> {
        let mut records = Vec::new();
        for service in self.client.children(paths::INSTANCES).await? {
            let dir = format!("{}/{service}", paths::INSTANCES);
            self.instance_dirs.insert(service.clone());
            for task in self.client.children(&dir).await? {
                let path = format!("{dir}/{task}");
                let data = match self.client.get(&path).await {
                    Ok((data, _)) => data,
                    Err(e) if e.code() == Some(ErrorCode::NoNode) => continue,
                    Err(e) => return Err(e),
                };
                match serde_json::from_slice::<InstanceRecord>(&data) {
                    Ok(record) => records.push(record),
                    Err(e) => warn!(path, error = %e, "unreadable instance record; ignored"),
                }
            }
        }
        Ok(records)
    }

    /// Runs the core's actions until it has none left (results may add more).
    async fn execute(&mut self) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.execute_one(action).await;
            }
        }
    }

    async fn execute_one(&mut self, action: Action) {
        let Some(framework) = self.framework.clone() else {
            // Before the subscription only coord actions can run.
            match action {
                Action::Forget { service, task_id } => self.forget(&service, &task_id).await,
                Action::PublishStatus(_) | Action::RemoveService(_) => {
                    self.execute_coord(action).await
                }
                _ => {}
            }
            return;
        };
        match action {
            Action::Launch {
                offer_id,
                tasks,
                records,
                refuse,
            } => {
                let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id.clone()).collect();
                if let Err(e) = self.store_records(&records).await {
                    warn!(error = %e, "cannot store instance records; not launching");
                    let _ = framework.decline(&[offer_id], Duration::ZERO).await;
                    self.core
                        .launch_failed(self.clock.now(), &ids, &format!("coord: {e}"));
                    return;
                }
                info!(offer_id = %offer_id, tasks = ids.len(), "launching");
                if let Err(e) = framework
                    .launch(&[offer_id], tasks, Filters::refuse(refuse))
                    .await
                {
                    warn!(error = %e, "launch failed");
                    self.core
                        .launch_failed(self.clock.now(), &ids, &e.to_string());
                }
            }
            Action::Decline { offer_ids, refuse } => {
                if let Err(e) = framework.decline(&offer_ids, refuse).await {
                    debug!(error = %e, "decline failed");
                }
            }
            Action::Kill { task_id, grace } => {
                if let Err(e) = framework.kill(&task_id, grace).await {
                    debug!(%task_id, error = %e, "kill failed; retried later");
                }
            }
            Action::Suppress => {
                if let Err(e) = framework.suppress().await {
                    debug!(error = %e, "suppress failed");
                    self.core.offers_call_failed();
                }
            }
            Action::Revive => {
                if let Err(e) = framework.revive_and_clear_filters().await {
                    debug!(error = %e, "revive failed");
                    self.core.offers_call_failed();
                }
            }
            Action::Reconcile(ids) => {
                let tasks = ids.into_iter().map(ReconcileTask::from).collect();
                if let Err(e) = framework.reconcile(tasks).await {
                    warn!(error = %e, "reconcile failed");
                }
            }
            Action::Probe(probe) => {
                let permits = Arc::clone(&self.probes);
                let results = self.probe_results.0.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    let result = crate::health::run_probe(&probe).await;
                    let _ = results.send((probe.task_id, result)).await;
                });
            }
            Action::Forget { service, task_id } => self.forget(&service, &task_id).await,
            other => self.execute_coord(other).await,
        }
    }

    async fn execute_coord(&mut self, action: Action) {
        match action {
            Action::PublishStatus(status) => {
                let path = format!("{}/{}", paths::STATUS, status.name);
                if let Err(e) = self.write(&path, status.to_json().as_bytes()).await {
                    warn!(path, error = %e, "cannot publish the status");
                }
            }
            Action::RemoveService(name) => {
                info!(service = name, "removed: no instance runs");
                let path = format!("{}/{name}", paths::STATUS);
                let ops = vec![
                    self.fence.clone(),
                    WriteOp::Delete {
                        path: path.clone(),
                        version: ANY_VERSION,
                    },
                ];
                if let Err(e) = self.client.multi(ops).await
                    && e.code() != Some(ErrorCode::NoNode)
                {
                    warn!(path, error = %e, "cannot delete the status");
                }
                let dir = format!("{}/{name}", paths::INSTANCES);
                self.instance_dirs.remove(&name);
                match self.client.delete(&dir, None).await {
                    Ok(()) => {}
                    Err(e) if matches!(e.code(), Some(ErrorCode::NoNode | ErrorCode::NotEmpty)) => {
                    }
                    Err(e) => debug!(dir, error = %e, "cannot delete the instances dir"),
                }
            }
            _ => {}
        }
    }

    /// Sets `path` (creating it if needed), fenced by our election node.
    async fn write(&self, path: &str, data: &[u8]) -> Result<(), ClientError> {
        let set = vec![
            self.fence.clone(),
            WriteOp::SetData {
                path: path.to_string(),
                data: data.to_vec().into(),
                version: ANY_VERSION,
            },
        ];
        match self.client.multi(set).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(ErrorCode::NoNode) => {
                let create = vec![
                    self.fence.clone(),
                    WriteOp::Create {
                        path: path.to_string(),
                        data: data.to_vec().into(),
                        mode: CreateMode::Persistent,
                        acl: drover_coord::acl::open_acl(),
                    },
                ];
                self.client.multi(create).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    async fn store_records(&mut self, records: &[InstanceRecord]) -> Result<(), ClientError> {
        let mut ops = vec![self.fence.clone()];
        for record in records {
            if !self.instance_dirs.contains(&record.service) {
                self.client
                    .ensure_node(&format!("{}/{}", paths::INSTANCES, record.service))
                    .await?;
                self.instance_dirs.insert(record.service.clone());
            }
            ops.push(WriteOp::Create {
                path: format!("{}/{}/{}", paths::INSTANCES, record.service, record.task_id),
                data: serde_json::to_vec(record)
                    .expect("a record always serializes")
                    .into(),
                mode: CreateMode::Persistent,
                acl: drover_coord::acl::open_acl(),
            });
        }
        self.client.multi(ops).await.map(drop)
    }

    async fn forget(&self, service: &str, task_id: &TaskId) {
        let path = format!("{}/{service}/{task_id}", paths::INSTANCES);
        let ops = vec![
            self.fence.clone(),
            WriteOp::Delete {
                path: path.clone(),
                version: ANY_VERSION,
            },
        ];
        match self.client.multi(ops).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::NoNode) => {}
            Err(e) => warn!(path, error = %e, "cannot delete the instance record"),
        }
    }
}

/// Waits for the next event of the specs watch: `true` for an event, `false` if the watch is
/// gone (then the caller watches again). Never resolves while there is no watch, so the resync
/// timer re-creates it.
async fn next_watch_event(watch: &mut Option<drover_coord::client::WatchStream>) -> bool {
    match watch {
        Some(stream) => match stream.next().await {
            Some(_) => true,
            None => {
                *watch = None;
                false
            }
        },
        None => std::future::pending().await,
    }
}
