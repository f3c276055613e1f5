//! The master's async driver: leadership, the term task that owns the core, and the gRPC
//! services (scheduler, agent, operator).
//!
//! Duties, in order of importance:
//! - **Lead only while coord leads.** A watcher follows coord's `Leadership`. When this replica
//!   becomes the established ZAB leader it starts a *term*: a coord client on its own address
//!   takes the registry over (`registry::Registry::take_over`: fencing node, `/drover/leader`,
//!   frameworks and agents), builds a fresh [`MasterCore`] and serves. When coord leadership
//!   goes (or the epoch changes, or a registry write is fenced) the term ends: every stream is
//!   closed with `UNAVAILABLE` and the new leader's address, and all soft state is dropped;
//!   agents and frameworks re-register with the next leader.
//! - **One owner.** The term task owns the core and every connection's sender. RPC handlers
//!   reach it through one bounded inbox (`INBOX_CAP`) and wait on a oneshot for their answer.
//! - **Execute actions in order.** Events and commands go out through bounded per-connection
//!   queues; a connection that cannot keep up is closed (a framework re-subscribes, an agent
//!   re-registers), never buffered without bound. Registry writes run concurrently as tasks
//!   and report back through the inbox; a write that is fenced ends the term.
//! - **Time.** A tick every `allocation_interval_ms` runs the core's timers and, when due, an
//!   allocation cycle: a burst of events costs one cycle.
//! - **Redirect.** A master that does not lead answers every call with `UNAVAILABLE` and the
//!   leader's address in the `drover-leader` metadata key.

use crate::acl::{AclGate, Caller, Principal, TaskUsers};
use crate::cluster::ClusterService;
use crate::core::types::*;
use crate::core::{CoreConfig, MasterCore};
use crate::ids::{AgentId, FrameworkId};
use crate::registry::{LeaderRecord, Registry, RegistryError};
use crate::wire;
use drover_coord::client::{Client, ClientOptions};
use drover_coord::driver::{Leadership, StatusQuery};
use drover_proto::v1;
use drover_proto::v1::acl_api_server::AclApiServer;
use drover_proto::v1::agent_api_server::{AgentApi, AgentApiServer};
use drover_proto::v1::operator_server::{Operator, OperatorServer};
use drover_proto::v1::scheduler_server::{Scheduler, SchedulerServer};
use futures::Stream;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Requests waiting for the term task.
pub const INBOX_CAP: usize = 8192;
/// Events queued for one framework before it counts as too slow and is disconnected. A framework
/// that launched 10,000 tasks at once gets their updates in a burst (a few hundred bytes each, so
/// a full queue is some tens of MiB); 4,096 cut such frameworks off in `drover bench scheduler`.
pub const FRAMEWORK_QUEUE_CAP: usize = 65_536;
/// Messages queued for one agent before it counts as too slow and its link is closed.
pub const AGENT_QUEUE_CAP: usize = 1024;

#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub master_id: u32,
    /// Every master's gRPC address by id (this one included), for `drover-leader`.
    pub peers: BTreeMap<u32, String>,
    pub core: CoreConfig,
    /// The term's coord client (on this master's own address).
    pub coord: ClientOptions,
    /// How long a new agent link may take to send its `Register`/`Reregister`.
    pub agent_first_message_timeout: Duration,
    /// How long an RPC waits for the term task's answer.
    pub call_timeout: Duration,
    /// `--acl`: every scheduler, operator, ACL and coord call needs a token (or a master
    /// certificate), default deny (`acl::gate`).
    pub acl: bool,
}

impl MasterConfig {
    pub fn new(master_id: u32, peers: BTreeMap<u32, String>) -> MasterConfig {
        MasterConfig {
            master_id,
            peers,
            core: CoreConfig::default(),
            coord: ClientOptions::default(),
            agent_first_message_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            acl: false,
        }
    }

    /// The certificate names the ACL store's subtree admits: this master's own and
    /// `master-N` for every master of the ensemble (what `drover tls init` names them).
    fn master_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.peers.keys().map(|id| format!("master-{id}")).collect();
        if let Some(own) = self.coord.tls.as_ref().and_then(|t| t.identity()) {
            names.push(own.name.clone());
        }
        names.sort();
        names.dedup();
        names
    }

    fn address(&self) -> String {
        self.peers.get(&self.master_id).cloned().unwrap_or_default()
    }
}

/// Where this master stands, as RPC handlers see it.
#[derive(Clone, Debug)]
enum Role {
    /// Another master leads (its address), or nobody does (`None`).
    Following(Option<String>),
    /// This master leads but is still taking the registry over.
    Starting,
    Leading(mpsc::Sender<Input>),
}

type EventTx = mpsc::Sender<Result<v1::Event, Status>>;
type AgentTx = mpsc::Sender<Result<v1::MasterMessage, Status>>;

enum Call {
    Accept {
        offers: Vec<String>,
        launches: Vec<v1::TaskInfo>,
        refuse_ms: Option<u64>,
    },
    Decline {
        offers: Vec<String>,
        refuse_ms: Option<u64>,
    },
    Revive {
        clear_filters: bool,
    },
    Suppress,
    Kill {
        task: String,
        grace_ms: u64,
    },
    Acknowledge {
        agent: Option<AgentId>,
        task: String,
        uuid: [u8; 16],
    },
    Reconcile {
        tasks: Vec<String>,
    },
    Teardown,
}

enum AgentFirst {
    Register(AgentInfo),
    Reregister(AgentInfo, Vec<ReportedTask>),
}

enum Input {
    Subscribe {
        conn: ConnId,
        info: FrameworkInfo,
        is_new: bool,
        suppressed: bool,
        events: EventTx,
        reply: oneshot::Sender<Result<FrameworkId, CallError>>,
    },
    Call {
        framework: FrameworkId,
        call: Call,
        /// The caller's token (ACLs on): its role and task users bound the call.
        principal: Option<Arc<Principal>>,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    FrameworkGone {
        conn: ConnId,
    },
    AgentAttach {
        conn: ConnId,
        first: AgentFirst,
        out: AgentTx,
    },
    AgentHeartbeat {
        conn: ConnId,
    },
    AgentStatus {
        conn: ConnId,
        framework: FrameworkId,
        status: v1::TaskStatus,
    },
    AgentGone {
        conn: ConnId,
    },
    Persisted {
        then: Completion,
        result: Result<(), RegistryError>,
    },
    GetState {
        reply: oneshot::Sender<v1::ClusterState>,
    },
    GetMetrics {
        reply: oneshot::Sender<v1::MasterMetrics>,
    },
}

struct Shared {
    config: MasterConfig,
    role: watch::Receiver<Role>,
    next_conn: AtomicU64,
}

impl Shared {
    fn conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The term's inbox, or the redirect to give the caller.
    fn inbox(&self) -> Result<mpsc::Sender<Input>, Status> {
        match &*self.role.borrow() {
            Role::Leading(tx) => Ok(tx.clone()),
            Role::Starting => Err(redirect(
                "this master is taking over as leader; retry shortly",
                Some(self.config.address()),
            )),
            Role::Following(leader) => {
                Err(redirect("this master is not the leader", leader.clone()))
            }
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T, Status> {
        let inbox = self.inbox()?;
        let (tx, rx) = oneshot::channel();
        let timeout = self.config.call_timeout;
        tokio::time::timeout(timeout, async {
            inbox
                .send(make(tx))
                .await
                .map_err(|_| lost_leadership(&self.role))?;
            rx.await.map_err(|_| lost_leadership(&self.role))
        })
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!("the master did not answer within {timeout:?}"))
        })?
    }

    async fn call(
        &self,
        caller: Option<&Caller>,
        framework_id: &str,
        call: Call,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let framework = FrameworkId::parse(framework_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let principal = caller.and_then(|c| c.principal()).cloned();
        self.ask(|reply| Input::Call {
            framework,
            call,
            principal,
            reply,
        })
        .await?
        .map_err(call_status)?;
        Ok(Response::new(v1::CallResponse {}))
    }
}

fn redirect(message: &str, leader: Option<String>) -> Status {
    let mut status = Status::unavailable(match &leader {
        Some(l) => format!("{message}; the leader is {l}"),
        None => format!("{message}; no master leads right now"),
    });
    if let Some(l) = leader
        && let Ok(v) = l.parse()
    {
        status
            .metadata_mut()
            .insert(drover_proto::LEADER_METADATA_KEY, v);
    }
    status
}

fn lost_leadership(role: &watch::Receiver<Role>) -> Status {
    match &*role.borrow() {
        Role::Following(l) => redirect("this master stopped leading", l.clone()),
        _ => redirect("this master's leadership term ended", None),
    }
}

fn call_status(e: CallError) -> Status {
    match e {
        CallError::PermissionDenied(m) => Status::permission_denied(m),
        CallError::NotFound(m) => Status::not_found(m),
        CallError::InvalidArgument(m) => Status::invalid_argument(m),
        CallError::Unavailable(m) => Status::unavailable(m),
    }
}

/// The services to mount next to coord's, and the task that follows leadership.
pub struct MasterServices {
    pub scheduler: SchedulerServer<SchedulerService>,
    pub agent_api: AgentApiServer<AgentApiService>,
    pub operator: OperatorServer<OperatorService>,
    /// `Cluster.Status`: answered by every master about itself, leading or not.
    pub cluster: ClusterService,
    /// For in-process readers (the HTTP endpoints).
    pub handle: MasterHandle,
    /// `drover.v1.AclApi`.
    pub acl: AclApiServer<crate::acl::service::AclService>,
    /// The ACL decisions (`--acl`): wrap each gRPC service with `gate.wrap`, and the HTTP side
    /// with `acl::http_gate`.
    pub gate: AclGate,
}

/// Reads the leading master's state from inside the process (same rules as the operator API:
/// a master that does not lead answers `UNAVAILABLE` naming the leader).
#[derive(Clone)]
pub struct MasterHandle {
    shared: Arc<Shared>,
}

impl MasterHandle {
    pub async fn state(&self) -> Result<v1::ClusterState, Status> {
        self.shared.ask(|reply| Input::GetState { reply }).await
    }

    pub async fn metrics(&self) -> Result<v1::MasterMetrics, Status> {
        self.shared.ask(|reply| Input::GetMetrics { reply }).await
    }

    /// This master leads and its term serves (the registry is taken over).
    pub fn serving(&self) -> bool {
        matches!(&*self.shared.role.borrow(), Role::Leading(_))
    }
}

/// Starts following `leadership` (coord's) and returns the services; `status` is the same
/// replica's status query, for `Cluster.Status`.
pub fn start(
    config: MasterConfig,
    leadership: watch::Receiver<Leadership>,
    status: StatusQuery,
) -> MasterServices {
    let (view_tx, view_rx) = watch::channel(Arc::new(crate::acl::AclView::default()));
    let (store_tx, store_rx) = watch::channel(None);
    let gate = AclGate::new(config.acl, view_rx.clone());
    if config.acl {
        tokio::spawn(crate::acl::store::follow(
            config.address(),
            config.coord.clone(),
            config.master_names(),
            view_tx,
            store_tx,
        ));
    }
    let (role_tx, role_rx) = watch::channel(Role::Following(None));
    let shared = Arc::new(Shared {
        config: config.clone(),
        role: role_rx,
        next_conn: AtomicU64::new(1),
    });
    tokio::spawn(follow_leadership(config, leadership, role_tx));
    let limit = drover_proto::MESSAGE_BYTES_MAX;
    MasterServices {
        acl: AclApiServer::new(crate::acl::service::AclService::new(
            gate.clone(),
            view_rx,
            store_rx,
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
        gate: gate.clone(),
        scheduler: SchedulerServer::new(SchedulerService {
            shared: shared.clone(),
            gate,
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
        agent_api: AgentApiServer::new(AgentApiService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
        operator: OperatorServer::new(OperatorService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
        cluster: ClusterService::new(
            shared.config.master_id,
            shared.config.peers.clone(),
            status,
            MasterHandle {
                shared: shared.clone(),
            },
            shared.config.coord.tls.clone(),
        ),
        handle: MasterHandle { shared },
    }
}

/// Starts and ends terms as coord's leadership changes.
async fn follow_leadership(
    config: MasterConfig,
    mut leadership: watch::Receiver<Leadership>,
    role: watch::Sender<Role>,
) {
    let mut term: Option<(u32, watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
    loop {
        let l = *leadership.borrow_and_update();
        let want = l.leading.then_some(l.epoch);
        let current = term.as_ref().map(|(e, _, h)| (*e, h.is_finished()));
        match (want, current) {
            (Some(epoch), Some((e, false))) if e == epoch => {}
            (Some(epoch), Some((e, true))) if e == epoch => {
                // The term ended by itself (fenced, or coord trouble) while coord still says
                // we lead: stay out until leadership changes.
            }
            (Some(epoch), _) => {
                if let Some((_, stop, handle)) = term.take() {
                    let _ = stop.send(true);
                    let _ = handle.await;
                }
                let _ = role.send(Role::Starting);
                let (stop_tx, stop_rx) = watch::channel(false);
                let handle = tokio::spawn(run_term(config.clone(), epoch, role.clone(), stop_rx));
                term = Some((epoch, stop_tx, handle));
            }
            (None, _) => {
                if let Some((_, stop, handle)) = term.take() {
                    let _ = stop.send(true);
                    let _ = handle.await;
                }
                let leader = l.leader.and_then(|id| config.peers.get(&id).cloned());
                let _ = role.send(Role::Following(leader));
            }
        }
        if leadership.changed().await.is_err() {
            // coord stopped; the process is going down.
            if let Some((_, stop, handle)) = term.take() {
                let _ = stop.send(true);
                let _ = handle.await;
            }
            let _ = role.send(Role::Following(None));
            return;
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One leadership term: take the registry over, then own the core until told to stop.
async fn run_term(
    config: MasterConfig,
    epoch: u32,
    role: watch::Sender<Role>,
    mut stop: watch::Receiver<bool>,
) {
    let address = config.address();
    let record = LeaderRecord {
        id: config.master_id,
        address: address.clone(),
        epoch,
    };
    let taken = tokio::select! {
        r = async {
            let client = Client::connect(vec![address.clone()], config.coord.clone()).await?;
            Registry::take_over(client, &record).await
        } => r,
        _ = stop.changed() => return,
    };
    let (registry, loaded) = match taken {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(epoch, error = %e, "cannot take the registry over; not leading");
            let _ = role.send(Role::Following(None));
            return;
        }
    };
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut core = MasterCore::new(config.core.clone());
    for f in loaded.frameworks {
        core.load_framework(0, f);
    }
    for a in loaded.agents {
        core.load_agent(0, a);
    }
    let (inbox_tx, mut inbox) = mpsc::channel(INBOX_CAP);
    let mut term = Term {
        epoch,
        master_id: config.master_id,
        address: address.clone(),
        core,
        registry,
        inbox: inbox_tx.clone(),
        frameworks: BTreeMap::new(),
        agents: BTreeMap::new(),
        subscribes: BTreeMap::new(),
        fenced: false,
        allocation_us: hdrhistogram::Histogram::new(3).expect("3 significant digits is valid"),
    };
    let _ = role.send(Role::Leading(inbox_tx));
    tracing::info!(epoch, address, "leading master: registry taken over");
    let mut tick = tokio::time::interval(Duration::from_millis(
        config.core.allocator.allocation_interval_ms.max(1),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            input = inbox.recv() => {
                let Some(input) = input else { break };
                term.handle(now_ms(), input);
                // Drain what is queued before running actions' follow-ups: fewer wakeups.
                while let Ok(input) = inbox.try_recv() {
                    term.handle(now_ms(), input);
                }
            }
            _ = tick.tick() => {
                let began = Instant::now();
                if term.core.tick(now_ms()) {
                    let us = began.elapsed().as_micros() as u64;
                    let _ = term.allocation_us.record(us.max(1));
                }
            }
        }
        term.execute(now_ms());
        if term.fenced {
            tracing::error!(
                epoch,
                "a newer leader fenced this master's registry writes; stepping down"
            );
            let _ = role.send(Role::Following(None));
            break;
        }
    }
    // End of term: every stream ends with a redirect (the watcher has published the new role).
    let status = || redirect("this master stopped leading", None);
    for (_, tx) in std::mem::take(&mut term.frameworks) {
        let _ = tx.try_send(Err(status()));
    }
    for (_, tx) in std::mem::take(&mut term.agents) {
        let _ = tx.try_send(Err(status()));
    }
    let _ = term.registry.client().close().await;
    tracing::info!(epoch, "leadership term over");
}

struct Term {
    epoch: u32,
    master_id: u32,
    address: String,
    core: MasterCore,
    registry: Registry,
    inbox: mpsc::Sender<Input>,
    frameworks: BTreeMap<ConnId, EventTx>,
    agents: BTreeMap<ConnId, AgentTx>,
    subscribes: BTreeMap<ConnId, oneshot::Sender<Result<FrameworkId, CallError>>>,
    fenced: bool,
    /// Allocation cycle durations (the whole tick that ran one), in microseconds.
    allocation_us: hdrhistogram::Histogram<u64>,
}

impl Term {
    fn handle(&mut self, now_ms: u64, input: Input) {
        match input {
            Input::Subscribe {
                conn,
                info,
                is_new,
                suppressed,
                events,
                reply,
            } => {
                self.frameworks.insert(conn, events);
                self.subscribes.insert(conn, reply);
                self.core.subscribe(now_ms, conn, info, is_new, suppressed);
            }
            Input::Call {
                framework,
                call,
                principal,
                reply,
            } => {
                let _ = reply.send(self.call(now_ms, &framework, call, principal.as_deref()));
            }
            Input::FrameworkGone { conn } => {
                self.frameworks.remove(&conn);
                self.subscribes.remove(&conn);
                self.core.framework_disconnected(now_ms, conn);
            }
            Input::AgentAttach { conn, first, out } => {
                self.agents.insert(conn, out);
                match first {
                    AgentFirst::Register(info) => self.core.agent_register(conn, info),
                    AgentFirst::Reregister(info, tasks) => {
                        self.core.agent_reregister(now_ms, conn, info, tasks)
                    }
                }
            }
            Input::AgentHeartbeat { conn } => self.core.agent_heartbeat(now_ms, conn),
            Input::AgentStatus {
                conn,
                framework,
                status,
            } => {
                let agent = self.core_agent_of(conn);
                match agent.map(|a| wire::status_from_agent(&status, &a)) {
                    Some(Ok(s)) => self.core.status_update(now_ms, conn, &framework, s),
                    Some(Err(e)) => tracing::warn!(conn, error = %e, "bad status update ignored"),
                    None => {}
                }
            }
            Input::AgentGone { conn } => {
                self.agents.remove(&conn);
                self.core.agent_disconnected(conn);
            }
            Input::Persisted { then, result } => {
                let result = match result {
                    Ok(()) => Ok(()),
                    Err(RegistryError::Fenced) => {
                        self.fenced = true;
                        Err("fenced by a newer leader".to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                self.core.persisted(now_ms, then, result);
            }
            Input::GetState { reply } => {
                let _ = reply.send(self.state());
            }
            Input::GetMetrics { reply } => {
                let (agents, frameworks, tasks) = self.core.sizes();
                let c = self.core.counters();
                let h = &self.allocation_us;
                let _ = reply.send(v1::MasterMetrics {
                    allocation_cycles: h.len(),
                    allocation_cycle_p50_us: h.value_at_quantile(0.5),
                    allocation_cycle_p99_us: h.value_at_quantile(0.99),
                    allocation_cycle_max_us: h.max(),
                    agents: agents as u64,
                    frameworks: frameworks as u64,
                    tasks_active: tasks as u64,
                    offers_sent: c.offers_sent,
                    tasks_launched: c.tasks_launched,
                    status_updates: c.status_updates,
                });
            }
        }
    }

    fn core_agent_of(&self, conn: ConnId) -> Option<AgentId> {
        self.core.agent_of(conn)
    }

    fn call(
        &mut self,
        now_ms: u64,
        fw: &FrameworkId,
        call: Call,
        principal: Option<&Principal>,
    ) -> Result<(), CallError> {
        let core = &mut self.core;
        // A token may act only on a framework whose role it may register.
        if let Some(p) = principal
            && let Some(role) = core.framework_role(fw)
            && let Err(denied) = p.require_role(role)
        {
            crate::acl::audit::record(
                &p.describe(),
                "framework",
                &format!("framework {fw}"),
                crate::acl::audit::Outcome::Denied,
                Some(&denied.0),
            );
            return Err(CallError::PermissionDenied(denied.0));
        }
        let users = principal.map_or(TaskUsers::Any, Principal::task_users);
        match call {
            Call::Accept {
                offers,
                launches,
                refuse_ms,
            } => {
                let offers = offers
                    .iter()
                    .map(|o| wire::offer_id_from_wire(self.epoch, o))
                    .collect();
                let launches = launches.iter().map(wire::task_from_wire).collect();
                core.accept_as(now_ms, fw, offers, launches, refuse_ms, &users)
            }
            Call::Decline { offers, refuse_ms } => {
                let offers = offers
                    .iter()
                    .map(|o| wire::offer_id_from_wire(self.epoch, o))
                    .collect();
                core.decline(now_ms, fw, offers, refuse_ms)
            }
            Call::Revive { clear_filters } => core.revive(fw, clear_filters),
            Call::Suppress => core.suppress(fw),
            Call::Kill { task, grace_ms } => core.kill(fw, &task, grace_ms),
            Call::Acknowledge { agent, task, uuid } => {
                core.acknowledge(fw, agent.as_ref(), &task, uuid)
            }
            Call::Reconcile { tasks } => core.reconcile(fw, &tasks),
            Call::Teardown => core.teardown(fw),
        }
    }

    /// Carries out the core's actions, and the follow-ups they cause, until none are left.
    fn execute(&mut self, now_ms: u64) {
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return;
            }
            let now_unix = now_unix_ms();
            for action in actions {
                match action {
                    Action::ToFramework { conn, event } => {
                        let event = self.event_to_wire(event, now_unix);
                        let full = match self.frameworks.get(&conn) {
                            Some(tx) => tx.try_send(Ok(event)).is_err(),
                            None => false,
                        };
                        if full {
                            tracing::warn!(
                                conn,
                                "framework stream cannot keep up (or is gone); disconnecting it"
                            );
                            self.frameworks.remove(&conn);
                            self.core.framework_disconnected(now_ms, conn);
                        }
                    }
                    Action::CloseFramework { conn, error } => {
                        if let Some(tx) = self.frameworks.remove(&conn)
                            && let Some(message) = error
                        {
                            let _ = tx.try_send(Ok(v1::Event {
                                event: Some(v1::event::Event::Error(v1::Error { message })),
                            }));
                        }
                    }
                    Action::SubscribeDone { conn, result } => {
                        if result.is_err() {
                            self.frameworks.remove(&conn);
                        }
                        if let Some(reply) = self.subscribes.remove(&conn) {
                            let _ = reply.send(result);
                        }
                    }
                    Action::ToAgent { conn, command } => {
                        let msg = self.command_to_wire(command);
                        let failed = match self.agents.get(&conn) {
                            Some(tx) => tx.try_send(Ok(msg)).is_err(),
                            None => false,
                        };
                        if failed {
                            tracing::warn!(
                                conn,
                                "agent link cannot keep up (or is gone); closing it"
                            );
                            self.agents.remove(&conn);
                            self.core.agent_disconnected(conn);
                        }
                    }
                    Action::CloseAgent { conn, refused } => {
                        if let Some(tx) = self.agents.remove(&conn)
                            && let Some(message) = refused
                        {
                            let _ = tx.try_send(Ok(v1::MasterMessage {
                                message: Some(v1::master_message::Message::Refused(
                                    v1::AgentRefused { message },
                                )),
                            }));
                        }
                    }
                    Action::Persist { write, then } => {
                        let registry = self.registry.clone();
                        let inbox = self.inbox.clone();
                        tokio::spawn(async move {
                            let result = registry.write(&write).await;
                            let _ = inbox.send(Input::Persisted { then, result }).await;
                        });
                    }
                }
            }
        }
    }

    fn event_to_wire(&self, event: FrameworkEvent, now_unix: u64) -> v1::Event {
        use v1::event::Event as E;
        let e = match event {
            FrameworkEvent::Subscribed {
                framework_id,
                heartbeat_interval_ms,
            } => E::Subscribed(v1::Subscribed {
                framework_id: framework_id.to_string(),
                heartbeat_interval_ms,
                master_id: self.registry_master_id(),
                leader: self.registry_address(),
            }),
            FrameworkEvent::Offers(offers) => {
                let fw = self.framework_of_offers(&offers);
                E::Offers(v1::Offers {
                    offers: offers
                        .iter()
                        .map(|o| wire::offer_to_wire(self.epoch, &fw, o))
                        .collect(),
                })
            }
            FrameworkEvent::Rescind(id) => E::Rescind(v1::Rescind {
                offer_id: wire::offer_id_to_wire(self.epoch, id),
            }),
            FrameworkEvent::Update(status) => E::Update(v1::Update {
                status: Some(wire::status_to_wire(&status, now_unix)),
            }),
            FrameworkEvent::Failure(agent) => E::Failure(v1::Failure {
                agent_id: agent.to_string(),
            }),
            FrameworkEvent::Heartbeat => E::Heartbeat(v1::Heartbeat {}),
        };
        v1::Event { event: Some(e) }
    }

    fn framework_of_offers(&self, offers: &[OfferOut]) -> FrameworkId {
        offers
            .first()
            .and_then(|o| self.core.allocator().offer(o.id))
            .map(|o| o.framework.clone())
            .unwrap_or_else(|| FrameworkId::parse("unknown").expect("valid id"))
    }

    fn registry_master_id(&self) -> String {
        format!("master-{}-epoch-{}", self.master_id, self.epoch)
    }

    fn registry_address(&self) -> String {
        self.address.clone()
    }

    fn command_to_wire(&self, command: AgentCommand) -> v1::MasterMessage {
        use v1::master_message::Message as M;
        let m = match command {
            AgentCommand::Registered {
                agent_id,
                heartbeat_interval_ms,
            } => M::Registered(v1::Registered {
                agent_id: agent_id.to_string(),
                heartbeat_interval_ms,
                master_id: self.registry_master_id(),
            }),
            AgentCommand::RunTask { framework, task } => M::RunTask(v1::RunTask {
                framework: Some(wire::framework_to_wire(&framework)),
                task: Some(wire::task_to_wire(&task)),
            }),
            AgentCommand::KillTask {
                framework,
                task,
                grace_ms,
            } => M::KillTask(v1::KillTask {
                framework_id: framework.to_string(),
                task_id: task.to_string(),
                kill_grace_period_ms: grace_ms,
            }),
            AgentCommand::Acknowledge {
                framework,
                task,
                uuid,
            } => M::Acknowledgement(v1::Acknowledgement {
                framework_id: framework.to_string(),
                task_id: task,
                uuid: uuid.to_vec(),
            }),
            AgentCommand::ShutdownFramework(fw) => M::ShutdownFramework(v1::ShutdownFramework {
                framework_id: fw.to_string(),
            }),
        };
        v1::MasterMessage { message: Some(m) }
    }

    fn state(&self) -> v1::ClusterState {
        let view = self.core.state();
        let now_unix = now_unix_ms();
        v1::ClusterState {
            leader: self.registry_address(),
            master_id: self.registry_master_id(),
            agents: view
                .agents
                .iter()
                .map(|a| v1::AgentState {
                    agent: Some(wire::agent_to_wire(&a.info)),
                    reachable: a.reachable,
                    used: Some(v1::Resources::from(&a.used)),
                    offered: Some(v1::Resources::from(&a.offered)),
                    registered_at_ms: a.registered_at_ms,
                })
                .collect(),
            frameworks: view
                .frameworks
                .iter()
                .map(|f| v1::FrameworkState {
                    framework: Some(wire::framework_to_wire(&f.info)),
                    connected: f.connected,
                    suppressed: f.suppressed,
                    used: Some(v1::Resources::from(&f.used)),
                    offered: Some(v1::Resources::from(&f.offered)),
                })
                .collect(),
            tasks: view
                .tasks
                .iter()
                .map(|t| v1::TaskSummary {
                    framework_id: t.framework.to_string(),
                    task: Some(wire::task_to_wire(&t.launch)),
                    status: Some(wire::status_to_wire(&t.status, now_unix)),
                })
                .collect(),
        }
    }
}

/// Tells the term when a stream's consumer went away (the framework disconnected).
struct Gone {
    inbox: mpsc::Sender<Input>,
    input: Option<Input>,
}

impl Drop for Gone {
    fn drop(&mut self) {
        let Some(input) = self.input.take() else {
            return;
        };
        match self.inbox.try_send(input) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(input)) => {
                let inbox = self.inbox.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = inbox.send(input).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A response stream that reports its own end to the term, and ends with `UNAUTHENTICATED`
/// when `ended` resolves (the token it was opened with was revoked or expired).
pub struct WatchedStream<T> {
    inner: ReceiverStream<Result<T, Status>>,
    _gone: Gone,
    /// `None` without ACLs, and once it fired.
    ended: Option<drover_coord::driver::EndedFuture>,
    /// `ended` fired: the stream is over.
    revoked: bool,
}

impl<T> Stream for WatchedStream<T> {
    type Item = Result<T, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.revoked {
            return Poll::Ready(None);
        }
        if let Some(ended) = self.ended.as_mut()
            && let Poll::Ready(reason) = ended.as_mut().poll(cx)
        {
            self.ended = None;
            self.revoked = true;
            return Poll::Ready(Some(Err(Status::unauthenticated(reason))));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

pub struct SchedulerService {
    shared: Arc<Shared>,
    gate: AclGate,
}

fn refuse_ms(filters: Option<&v1::Filters>) -> Result<Option<u64>, Status> {
    match filters.and_then(|f| f.refuse_seconds) {
        None => Ok(None),
        Some(s) => MasterCore::refuse_ms(s)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string())),
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    type SubscribeStream = WatchedStream<v1::Event>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let fresh = uuid::Uuid::new_v4().to_string();
        let (info, is_new) = wire::framework_from_wire(request.framework.as_ref(), &fresh)
            .map_err(Status::invalid_argument)?;
        // With ACLs, the token must grant the role; the stream ends when the token stops
        // being valid (revoked, expired).
        let ended = match caller.as_ref().and_then(|c| c.principal()) {
            None => None,
            Some(p) => {
                if let Err(denied) = p.require_role(info.role.as_str()) {
                    crate::acl::audit::record(
                        &p.describe(),
                        "framework-subscribe",
                        &format!("role {}", info.role),
                        crate::acl::audit::Outcome::Denied,
                        Some(&denied.0),
                    );
                    return Err(Status::permission_denied(denied.0));
                }
                let ended: drover_coord::driver::EndedFuture =
                    Box::pin(self.gate.clone().ended(p.accessor, None));
                Some(ended)
            }
        };
        let conn = self.shared.conn_id();
        let inbox = self.shared.inbox()?;
        let (tx, rx) = mpsc::channel(FRAMEWORK_QUEUE_CAP);
        let gone = Gone {
            inbox,
            input: Some(Input::FrameworkGone { conn }),
        };
        let id = self
            .shared
            .ask(|reply| Input::Subscribe {
                conn,
                info,
                is_new,
                suppressed: request.suppressed,
                events: tx,
                reply,
            })
            .await?
            .map_err(call_status)?;
        tracing::info!(framework_id = %id, conn, "framework subscribed");
        Ok(Response::new(WatchedStream {
            inner: ReceiverStream::new(rx),
            _gone: gone,
            ended,
            revoked: false,
        }))
    }

    async fn accept(
        &self,
        request: Request<v1::AcceptRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        let mut launches = Vec::new();
        for op in r.operations {
            match op.operation {
                Some(v1::operation::Operation::Launch(l)) => launches.extend(l.tasks),
                None => {
                    return Err(Status::invalid_argument(
                        "operations: an operation is empty",
                    ));
                }
            }
        }
        let refuse_ms = refuse_ms(r.filters.as_ref())?;
        self.shared
            .call(
                caller.as_ref(),
                &r.framework_id,
                Call::Accept {
                    offers: r.offer_ids,
                    launches,
                    refuse_ms,
                },
            )
            .await
    }

    async fn decline(
        &self,
        request: Request<v1::DeclineRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        let refuse_ms = refuse_ms(r.filters.as_ref())?;
        self.shared
            .call(
                caller.as_ref(),
                &r.framework_id,
                Call::Decline {
                    offers: r.offer_ids,
                    refuse_ms,
                },
            )
            .await
    }

    async fn revive(
        &self,
        request: Request<v1::ReviveRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        self.shared
            .call(
                caller.as_ref(),
                &r.framework_id,
                Call::Revive {
                    clear_filters: r.clear_filters,
                },
            )
            .await
    }

    async fn suppress(
        &self,
        request: Request<v1::SuppressRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        self.shared
            .call(caller.as_ref(), &r.framework_id, Call::Suppress)
            .await
    }

    async fn kill(
        &self,
        request: Request<v1::KillRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        if r.task_id.is_empty() {
            return Err(Status::invalid_argument("task_id: must not be empty"));
        }
        self.shared
            .call(
                caller.as_ref(),
                &r.framework_id,
                Call::Kill {
                    task: r.task_id,
                    grace_ms: r.kill_grace_period_ms,
                },
            )
            .await
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AcknowledgeRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        let uuid: [u8; 16] = r.uuid.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!(
                "uuid: {} bytes; an agent update's uuid has 16 (the master's updates need no acknowledgement)",
                r.uuid.len()
            ))
        })?;
        let agent = if r.agent_id.is_empty() {
            None
        } else {
            Some(AgentId::parse(&r.agent_id).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        self.shared
            .call(
                caller.as_ref(),
                &r.framework_id,
                Call::Acknowledge {
                    agent,
                    task: r.task_id,
                    uuid,
                },
            )
            .await
    }

    async fn reconcile(
        &self,
        request: Request<v1::ReconcileRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        let tasks = r.tasks.into_iter().map(|t| t.task_id).collect();
        self.shared
            .call(caller.as_ref(), &r.framework_id, Call::Reconcile { tasks })
            .await
    }

    async fn teardown(
        &self,
        request: Request<v1::TeardownRequest>,
    ) -> Result<Response<v1::CallResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        self.shared
            .call(caller.as_ref(), &r.framework_id, Call::Teardown)
            .await
    }
}

pub struct AgentApiService {
    shared: Arc<Shared>,
}

fn reported_tasks(r: &v1::Reregister) -> Vec<ReportedTask> {
    let mut out = Vec::new();
    for t in &r.tasks {
        let Some(info) = &t.task else { continue };
        let parsed = FrameworkId::parse(&t.framework_id)
            .map_err(|e| e.to_string())
            .and_then(|fw| {
                let launch = wire::task_from_wire(info).map_err(|e| e.message)?;
                let state = TaskState::from_wire(t.state).map_err(|e| e.to_string())?;
                Ok(ReportedTask {
                    framework: fw,
                    launch,
                    state,
                })
            });
        match parsed {
            Ok(task) => out.push(task),
            Err(e) => tracing::warn!(task_id = %info.task_id, error = %e, "reported task ignored"),
        }
    }
    out
}

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    type AttachStream = WatchedStream<v1::MasterMessage>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let inbox = self.shared.inbox()?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(
            self.shared.config.agent_first_message_timeout,
            inbound.message(),
        )
        .await
        .map_err(|_| Status::deadline_exceeded("no Register or Reregister in time"))??
        .ok_or_else(|| Status::invalid_argument("the link ended before Register"))?;
        use v1::agent_message::Message as M;
        let first = match first.message {
            Some(M::Register(r)) => {
                let id = uuid::Uuid::new_v4().to_string();
                AgentFirst::Register(
                    wire::agent_from_wire(r.agent.as_ref(), &id)
                        .map_err(Status::invalid_argument)?,
                )
            }
            Some(M::Reregister(r)) => {
                let id = r.agent.as_ref().map(|a| a.id.clone()).unwrap_or_default();
                let info = wire::agent_from_wire(r.agent.as_ref(), &id)
                    .map_err(Status::invalid_argument)?;
                let tasks = reported_tasks(&r);
                AgentFirst::Reregister(info, tasks)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on an agent link must be Register or Reregister",
                ));
            }
        };
        let conn = self.shared.conn_id();
        let (tx, rx) = mpsc::channel(AGENT_QUEUE_CAP);
        inbox
            .send(Input::AgentAttach {
                conn,
                first,
                out: tx,
            })
            .await
            .map_err(|_| lost_leadership(&self.shared.role))?;
        let reader_inbox = inbox.clone();
        tokio::spawn(async move {
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => break,
                };
                let input = match msg.message {
                    Some(M::Heartbeat(_)) => Input::AgentHeartbeat { conn },
                    Some(M::StatusUpdate(u)) => {
                        let (Ok(framework), Some(status)) =
                            (FrameworkId::parse(&u.framework_id), u.status)
                        else {
                            tracing::warn!(
                                conn,
                                "status update without a framework or status ignored"
                            );
                            continue;
                        };
                        Input::AgentStatus {
                            conn,
                            framework,
                            status,
                        }
                    }
                    _ => {
                        tracing::warn!(conn, "unexpected message on an agent link ignored");
                        continue;
                    }
                };
                if reader_inbox.send(input).await.is_err() {
                    break;
                }
            }
            let _ = reader_inbox.send(Input::AgentGone { conn }).await;
        });
        Ok(Response::new(WatchedStream {
            inner: ReceiverStream::new(rx),
            _gone: Gone {
                inbox,
                input: Some(Input::AgentGone { conn }),
            },
            ended: None,
            revoked: false,
        }))
    }
}

pub struct OperatorService {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn get_state(
        &self,
        _request: Request<v1::GetStateRequest>,
    ) -> Result<Response<v1::ClusterState>, Status> {
        let state = self.shared.ask(|reply| Input::GetState { reply }).await?;
        Ok(Response::new(state))
    }

    async fn get_metrics(
        &self,
        _request: Request<v1::GetMetricsRequest>,
    ) -> Result<Response<v1::MasterMetrics>, Status> {
        let metrics = self.shared.ask(|reply| Input::GetMetrics { reply }).await?;
        Ok(Response::new(metrics))
    }
}
