//! The leading master's core: frameworks, agents, tasks and the allocator, as one sans-IO state
//! machine for one leadership term.
//!
//! Event methods (`subscribe`, `accept`, `agent_register`, `status_update`, `tick`, …) take
//! `now_ms` (the driver's monotonic clock) and push [`Action`]s: events for framework streams,
//! commands for agent links, registry writes to make durable. The core never reads a clock,
//! draws randomness (new ids come in from the driver), touches coord or spawns anything, so the
//! same inputs give the same actions and the tests below drive it by hand.
//!
//! **Term.** A core lives while its master leads. It starts from the registry (frameworks as
//! disconnected, so their failover timeout runs from the takeover; agents as not yet back, so
//! nothing is offered from an agent until it re-registers and says what it runs): task state is
//! soft, rebuilt from agents' `Reregister` and reconciled with frameworks.
//!
//! **Who holds resources.** The allocator's bookkeeping is the truth: an agent's resources are
//! free, offered (one outstanding offer per agent) or used by a framework's non-terminal tasks.
//! A terminal status frees a task's resources; an agent that goes unreachable leaves the
//! allocator (its offer rescinded) and comes back with what it reports on `Reregister`.
//!
//! **Invariants, TigerBeetle style.** [`MasterCore::check_invariants`] states what must hold
//! between events (the allocator holds exactly the reachable agents and the registered
//! frameworks, every offer's owner is recorded, used resources are the sum of the live tasks, …)
//! and runs after every event in debug builds. What only a bug could cause is an `assert!`
//! naming the object; what input can cause (a report that does not fit its agent, a limit) is a
//! refusal naming the field or limit: the agent gets `AgentRefused`, the framework a call error
//! or a `TASK_ERROR`.

pub mod types;

#[cfg(test)]
mod tests;

use crate::allocator::{Allocator, AllocatorConfig};
use crate::ids::{AgentId, FrameworkId, OfferId};
use crate::resources::Resources;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
pub use types::*;

/// Default interval between `Heartbeat` events on a framework's stream (Mesos: 15 s).
pub const FRAMEWORK_HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 15_000;
/// Default interval at which agents must heartbeat.
pub const AGENT_HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 5_000;
/// Default silence after which an agent is unreachable (3 missed heartbeats).
pub const AGENT_UNREACHABLE_AFTER_MS_DEFAULT: u64 = 15_000;
/// Default decline filter when a call gives none (Mesos: 5 s).
pub const REFUSE_MS_DEFAULT: u64 = 5_000;
/// Terminal tasks remembered per master (for acknowledgements, reconciliation, state).
pub const COMPLETED_TASKS_MAX: usize = 10_000;
/// Offers per `Offers` event; more go in several events.
pub const OFFERS_PER_EVENT_MAX: usize = 1_000;
/// Longest framework failover timeout: one year.
pub const FAILOVER_TIMEOUT_MS_MAX: u64 = 365 * 24 * 3600 * 1000;
/// Longest framework name / principal / hostname, in bytes.
pub const LABEL_BYTES_MAX: usize = 255;

#[derive(Clone, Debug, PartialEq)]
pub struct CoreConfig {
    pub allocator: AllocatorConfig,
    pub framework_heartbeat_interval_ms: u64,
    pub agent_heartbeat_interval_ms: u64,
    pub agent_unreachable_after_ms: u64,
    pub refuse_ms_default: u64,
    pub completed_tasks_max: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            allocator: AllocatorConfig::default(),
            framework_heartbeat_interval_ms: FRAMEWORK_HEARTBEAT_INTERVAL_MS_DEFAULT,
            agent_heartbeat_interval_ms: AGENT_HEARTBEAT_INTERVAL_MS_DEFAULT,
            agent_unreachable_after_ms: AGENT_UNREACHABLE_AFTER_MS_DEFAULT,
            refuse_ms_default: REFUSE_MS_DEFAULT,
            completed_tasks_max: COMPLETED_TASKS_MAX,
        }
    }
}

#[derive(Clone, Debug)]
struct Framework {
    info: FrameworkInfo,
    conn: Option<ConnId>,
    /// Suppressed by the framework's own call (the allocator is also suppressed while the
    /// framework is away; this says what to restore when it comes back).
    suppressed: bool,
    /// Set while no stream is open; the failover timeout runs from here.
    disconnected_at_ms: Option<u64>,
    last_heartbeat_ms: u64,
    /// Its non-terminal tasks.
    tasks: BTreeSet<TaskId>,
}

#[derive(Clone, Debug)]
struct Agent {
    info: AgentInfo,
    conn: Option<ConnId>,
    last_heard_ms: u64,
    /// In the allocator (offerable) and trusted; false from a missed-heartbeat timeout (or
    /// the takeover) until it re-registers.
    reachable: bool,
    registered_at_ms: u64,
    tasks: BTreeSet<(FrameworkId, TaskId)>,
}

/// A task the master knows.
#[derive(Clone, Debug)]
pub struct Task {
    pub framework: FrameworkId,
    pub launch: TaskLaunch,
    pub status: TaskStatus,
    kill_requested: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Framework,
    Agent,
}

/// A read-only view for the operator API.
#[derive(Clone, Debug, Default)]
pub struct StateView {
    pub agents: Vec<AgentView>,
    pub frameworks: Vec<FrameworkView>,
    pub tasks: Vec<Task>,
}

#[derive(Clone, Debug)]
pub struct AgentView {
    pub info: AgentInfo,
    pub reachable: bool,
    pub used: Resources,
    pub offered: Resources,
    pub registered_at_ms: u64,
}

#[derive(Clone, Debug)]
pub struct FrameworkView {
    pub info: FrameworkInfo,
    pub connected: bool,
    pub suppressed: bool,
    pub used: Resources,
    pub offered: Resources,
}

pub struct MasterCore {
    config: CoreConfig,
    allocator: Allocator,
    frameworks: BTreeMap<FrameworkId, Framework>,
    agents: BTreeMap<AgentId, Agent>,
    tasks: BTreeMap<(FrameworkId, TaskId), Task>,
    /// Terminal tasks, oldest first, bounded by `completed_tasks_max`.
    completed: VecDeque<(FrameworkId, TaskId)>,
    completed_tasks: BTreeMap<(FrameworkId, TaskId), Task>,
    conns: BTreeMap<ConnId, (Owner, String)>,
    /// Who holds each outstanding offer (the allocator reports rescinds by id only).
    offer_owner: BTreeMap<OfferId, FrameworkId>,
    /// Subscriptions and registrations waiting for their registry write.
    pending_frameworks: BTreeMap<ConnId, (FrameworkInfo, bool)>,
    pending_agents: BTreeMap<ConnId, (AgentInfo, Vec<ReportedTask>)>,
    counters: Counters,
    out: Vec<Action>,
}

/// A `Reregister`'s tasks, sorted by `MasterCore::sort_report`.
#[derive(Debug, Default)]
struct SortedReport {
    /// Tasks of known frameworks, once each, not tracked on another agent.
    adopt: Vec<ReportedTask>,
    /// Frameworks the master does not know: shut down on the agent.
    shutdown: BTreeSet<FrameworkId>,
    /// Tasks the master tracks on another agent: killed on this one.
    kill: Vec<(FrameworkId, TaskId)>,
}

/// Totals since the term began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub offers_sent: u64,
    pub tasks_launched: u64,
    pub status_updates: u64,
}

fn ms_from_seconds(field: &str, s: f64, max_ms: u64) -> Result<u64, CallError> {
    if !s.is_finite() || s < 0.0 {
        return Err(CallError::InvalidArgument(format!(
            "{field}: {s} is not a finite, non-negative number of seconds"
        )));
    }
    let ms = (s * 1000.0).round();
    if ms > max_ms as f64 {
        return Err(CallError::InvalidArgument(format!(
            "{field}: {s} s is above the limit of {} s",
            max_ms / 1000
        )));
    }
    // Finite, non-negative and at most max_ms: fits in u64.
    Ok(ms as u64)
}

fn check_label(field: &str, s: &str) -> Result<(), CallError> {
    if s.len() > LABEL_BYTES_MAX {
        return Err(CallError::InvalidArgument(format!(
            "{field}: {} bytes, longer than {LABEL_BYTES_MAX}",
            s.len()
        )));
    }
    Ok(())
}

impl MasterCore {
    pub fn new(config: CoreConfig) -> MasterCore {
        MasterCore {
            allocator: Allocator::new(config.allocator.clone()),
            config,
            frameworks: BTreeMap::new(),
            agents: BTreeMap::new(),
            tasks: BTreeMap::new(),
            completed: VecDeque::new(),
            completed_tasks: BTreeMap::new(),
            conns: BTreeMap::new(),
            offer_owner: BTreeMap::new(),
            pending_frameworks: BTreeMap::new(),
            pending_agents: BTreeMap::new(),
            counters: Counters::default(),
            out: Vec::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The actions produced since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    // ---- events ------------------------------------------------------------------------------
    //
    // Each entry point (documented here) runs its handler `on_*` below, then, in debug
    // builds, `check_invariants`: a bug shows up at the event that caused it, not later.

    /// A framework from the registry: disconnected (its failover timeout runs from `now_ms`)
    /// and suppressed in the allocator until it subscribes again.
    pub fn load_framework(&mut self, now_ms: u64, info: FrameworkInfo) {
        self.on_load_framework(now_ms, info);
        self.debug_check();
    }

    /// An agent from the registry: known, but offered nothing until it re-registers.
    pub fn load_agent(&mut self, now_ms: u64, info: AgentInfo) {
        self.on_load_agent(now_ms, info);
        self.debug_check();
    }

    /// A `Subscribe` on connection `conn`. With no id in `info` the framework is new and gets
    /// `fresh_id` once the registry holds it; with an id it must be registered (failover).
    /// The answer comes as `Action::SubscribeDone`.
    pub fn subscribe(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        info: FrameworkInfo,
        is_new: bool,
        suppressed: bool,
    ) {
        self.on_subscribe(now_ms, conn, info, is_new, suppressed);
        self.debug_check();
    }

    /// The framework's stream ended (closed by the client, broken, or too slow to keep up).
    pub fn framework_disconnected(&mut self, now_ms: u64, conn: ConnId) {
        self.on_framework_disconnected(now_ms, conn);
        self.debug_check();
    }

    /// `Accept` with LAUNCH operations. Launches that cannot run become `TASK_ERROR` updates
    /// naming why; they affect no other task. `refuse_ms`: `None` for the default filter.
    pub fn accept(
        &mut self,
        now_ms: u64,
        fw_id: &FrameworkId,
        offers: Vec<OfferRef>,
        launches: Vec<Result<TaskLaunch, InvalidLaunch>>,
        refuse_ms: Option<u64>,
    ) -> Result<(), CallError> {
        self.accept_as(
            now_ms,
            fw_id,
            offers,
            launches,
            refuse_ms,
            &crate::acl::TaskUsers::Any,
        )
    }

    /// `accept`, for a caller whose token lets its tasks ask only for `users`: a launch asking
    /// for another user becomes a `TASK_ERROR` (`unauthorized_user`) naming the principal.
    pub fn accept_as(
        &mut self,
        now_ms: u64,
        fw_id: &FrameworkId,
        offers: Vec<OfferRef>,
        launches: Vec<Result<TaskLaunch, InvalidLaunch>>,
        refuse_ms: Option<u64>,
        users: &crate::acl::TaskUsers,
    ) -> Result<(), CallError> {
        let r = self.on_accept(now_ms, fw_id, offers, launches, refuse_ms, users);
        self.debug_check();
        r
    }

    /// The role a registered framework subscribed with.
    pub fn framework_role(&self, fw_id: &FrameworkId) -> Option<&str> {
        self.frameworks.get(fw_id).map(|f| f.info.role.as_str())
    }

    /// `Decline`: the offers return to the pool, filtered for this framework. Offers that are
    /// no longer outstanding are ignored (the call is idempotent).
    pub fn decline(
        &mut self,
        now_ms: u64,
        fw_id: &FrameworkId,
        offers: Vec<OfferRef>,
        refuse_ms: Option<u64>,
    ) -> Result<(), CallError> {
        let r = self.on_decline(now_ms, fw_id, offers, refuse_ms);
        self.debug_check();
        r
    }

    /// `Revive`: offers again (the allocator is revived once the framework is connected);
    /// with `clear_filters`, its decline filters go too.
    pub fn revive(&mut self, fw_id: &FrameworkId, clear_filters: bool) -> Result<(), CallError> {
        let r = self.on_revive(fw_id, clear_filters);
        self.debug_check();
        r
    }

    /// `Suppress`: no offers until `Revive`; outstanding offers stay.
    pub fn suppress(&mut self, fw_id: &FrameworkId) -> Result<(), CallError> {
        let r = self.on_suppress(fw_id);
        self.debug_check();
        r
    }

    /// `Kill`: the agent kills the task and reports `TASK_KILLED`. A task the master does not
    /// know is answered with `TASK_UNKNOWN`; one on an unreachable agent is killed when the
    /// agent comes back.
    pub fn kill(
        &mut self,
        fw_id: &FrameworkId,
        task_id: &str,
        grace_ms: u64,
    ) -> Result<(), CallError> {
        let r = self.on_kill(fw_id, task_id, grace_ms);
        self.debug_check();
        r
    }

    /// `Acknowledge`: passed on to the agent, which stops retrying that update.
    pub fn acknowledge(
        &mut self,
        fw_id: &FrameworkId,
        agent_id: Option<&AgentId>,
        task_id: &str,
        uuid: [u8; 16],
    ) -> Result<(), CallError> {
        let r = self.on_acknowledge(fw_id, agent_id, task_id, uuid);
        self.debug_check();
        r
    }

    /// `Reconcile`: the latest status of each listed task (`TASK_UNKNOWN` for tasks the master
    /// does not know), or of every task of the framework when the list is empty.
    pub fn reconcile(&mut self, fw_id: &FrameworkId, task_ids: &[String]) -> Result<(), CallError> {
        let r = self.on_reconcile(fw_id, task_ids);
        self.debug_check();
        r
    }

    /// `Teardown`: the framework is removed and all its tasks are killed.
    pub fn teardown(&mut self, fw_id: &FrameworkId) -> Result<(), CallError> {
        let r = self.on_teardown(fw_id);
        self.debug_check();
        r
    }

    /// A new agent's `Register`: admitted under `info.id` (a fresh id from the driver) once the
    /// registry holds it.
    pub fn agent_register(&mut self, conn: ConnId, info: AgentInfo) {
        self.on_agent_register(conn, info);
        self.debug_check();
    }

    /// A known agent's `Reregister` (after its restart, a broken link or a master failover),
    /// with what it runs.
    pub fn agent_reregister(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        info: AgentInfo,
        tasks: Vec<ReportedTask>,
    ) {
        self.on_agent_reregister(now_ms, conn, info, tasks);
        self.debug_check();
    }

    /// Anything heard from an agent's link counts as a heartbeat.
    pub fn agent_heartbeat(&mut self, now_ms: u64, conn: ConnId) {
        self.on_agent_heartbeat(now_ms, conn);
        self.debug_check();
    }

    /// An agent's link ended. It stays reachable until its heartbeats are missed.
    pub fn agent_disconnected(&mut self, conn: ConnId) {
        self.on_agent_disconnected(conn);
        self.debug_check();
    }

    /// A status update from an agent: recorded, passed to the framework (which acknowledges
    /// it through the master), resources freed on a terminal state.
    pub fn status_update(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        fw_id: &FrameworkId,
        status: TaskStatus,
    ) {
        self.on_status_update(now_ms, conn, fw_id, status);
        self.debug_check();
    }

    /// A registry write finished: `Ok` once durable in coord.
    pub fn persisted(&mut self, now_ms: u64, then: Completion, result: Result<(), String>) {
        self.on_persisted(now_ms, then, result);
        self.debug_check();
    }

    /// Runs the timers: unreachable agents, framework failover timeouts, heartbeats, and an
    /// allocation cycle when one is due. The driver calls it every `allocation_interval_ms`.
    /// Returns whether an allocation cycle ran.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        let r = self.on_tick(now_ms);
        self.debug_check();
        r
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    // ---- the registry, at the start of a term ------------------------------------------------

    /// The handler of [`Self::load_framework`].
    fn on_load_framework(&mut self, now_ms: u64, info: FrameworkInfo) {
        if self.frameworks.contains_key(&info.id) {
            return;
        }
        // Possible from the registry: more frameworks than `frameworks_max` (the limit was
        // lowered). The framework is left out of this term; its re-subscribe is NotFound.
        if let Err(e) = self
            .allocator
            .add_framework(info.id.clone(), info.role.clone(), None)
        {
            tracing::warn!(framework_id = %info.id, error = %e, "registry framework not loaded");
            return;
        }
        self.allocator
            .suppress(&info.id)
            .expect("the framework was just added to the allocator");
        self.frameworks.insert(
            info.id.clone(),
            Framework {
                info,
                conn: None,
                suppressed: false,
                disconnected_at_ms: Some(now_ms),
                last_heartbeat_ms: now_ms,
                tasks: BTreeSet::new(),
            },
        );
    }

    /// The handler of [`Self::load_agent`].
    fn on_load_agent(&mut self, now_ms: u64, info: AgentInfo) {
        let max = self.config.allocator.limits.agents_max;
        if !self.agents.contains_key(&info.id) && self.agents.len() >= max {
            // Possible from the registry (the limit was lowered): the agent is new to this term,
            // so its Reregister is refused naming the limit.
            tracing::warn!(agent_id = %info.id, agents_max = max, "registry agent not loaded: agents_max reached");
            return;
        }
        self.agents.entry(info.id.clone()).or_insert(Agent {
            info,
            conn: None,
            last_heard_ms: now_ms,
            reachable: false,
            registered_at_ms: now_ms,
            tasks: BTreeSet::new(),
        });
    }

    // ---- frameworks --------------------------------------------------------------------------

    /// The handler of [`Self::subscribe`].
    fn on_subscribe(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        info: FrameworkInfo,
        is_new: bool,
        suppressed: bool,
    ) {
        if let Err(e) = self.check_framework_info(&info) {
            self.out.push(Action::SubscribeDone {
                conn,
                result: Err(e),
            });
            return;
        }
        if is_new {
            if self.frameworks.len() + self.pending_frameworks.len()
                >= self.config.allocator.limits.frameworks_max
            {
                self.out.push(Action::SubscribeDone {
                    conn,
                    result: Err(CallError::Unavailable(format!(
                        "frameworks_max reached ({})",
                        self.config.allocator.limits.frameworks_max
                    ))),
                });
                return;
            }
            self.pending_frameworks
                .insert(conn, (info.clone(), suppressed));
            self.out.push(Action::Persist {
                write: RegistryWrite::PutFramework(info),
                then: Completion::FrameworkAdmitted { conn },
            });
            return;
        }
        let Some(fw) = self.frameworks.get(&info.id) else {
            self.out.push(Action::SubscribeDone {
                conn,
                result: Err(CallError::NotFound(format!(
                    "framework {} is not registered (torn down, or never subscribed)",
                    info.id
                ))),
            });
            return;
        };
        if fw.info.role != info.role {
            let msg = format!(
                "role: framework {} is registered with role {:?}; it cannot change to {:?} on re-subscribe",
                info.id,
                fw.info.role.as_str(),
                info.role.as_str()
            );
            self.out.push(Action::SubscribeDone {
                conn,
                result: Err(CallError::InvalidArgument(msg)),
            });
            return;
        }
        let changed = fw.info != info;
        if changed {
            self.out.push(Action::Persist {
                write: RegistryWrite::PutFramework(info.clone()),
                then: Completion::None {
                    what: format!("updating framework {}", info.id),
                },
            });
        }
        self.attach_framework(now_ms, conn, info, suppressed);
    }

    fn check_framework_info(&self, info: &FrameworkInfo) -> Result<(), CallError> {
        if info.name.trim().is_empty() {
            return Err(CallError::InvalidArgument(
                "framework.name: must not be empty".into(),
            ));
        }
        check_label("framework.name", &info.name)?;
        check_label("framework.principal", &info.principal)?;
        check_label("framework.hostname", &info.hostname)?;
        if info.failover_timeout_ms > FAILOVER_TIMEOUT_MS_MAX {
            return Err(CallError::InvalidArgument(format!(
                "framework.failover_timeout_seconds: above the limit of {} s",
                FAILOVER_TIMEOUT_MS_MAX / 1000
            )));
        }
        Ok(())
    }

    /// Converts `failover_timeout_seconds` from the wire, naming the field on error.
    pub fn failover_timeout_ms(seconds: f64) -> Result<u64, CallError> {
        ms_from_seconds(
            "framework.failover_timeout_seconds",
            seconds,
            FAILOVER_TIMEOUT_MS_MAX,
        )
    }

    fn attach_framework(&mut self, now_ms: u64, conn: ConnId, info: FrameworkInfo, suppr: bool) {
        let id = info.id.clone();
        let is_known = self.frameworks.contains_key(&id);
        if !is_known {
            // `subscribe` counted this framework against `frameworks_max` while it was pending,
            // and its id is fresh: the allocator has room and does not know it.
            if let Err(e) = self
                .allocator
                .add_framework(id.clone(), info.role.clone(), None)
            {
                panic!(
                    "framework {id}: the allocator refused a framework admitted within frameworks_max: {e}"
                );
            }
            self.frameworks.insert(
                id.clone(),
                Framework {
                    info: info.clone(),
                    conn: None,
                    suppressed: false,
                    disconnected_at_ms: None,
                    last_heartbeat_ms: now_ms,
                    tasks: BTreeSet::new(),
                },
            );
        }
        let fw = self.frameworks.get_mut(&id).expect("inserted above");
        if let Some(old) = fw.conn.take() {
            self.conns.remove(&old);
            self.out.push(Action::CloseFramework {
                conn: old,
                error: Some(format!(
                    "framework {id} subscribed again from another connection"
                )),
            });
        }
        fw.info = info;
        fw.conn = Some(conn);
        fw.disconnected_at_ms = None;
        fw.suppressed = suppr;
        fw.last_heartbeat_ms = now_ms;
        self.conns.insert(conn, (Owner::Framework, id.to_string()));
        if suppr {
            self.allocator.suppress(&id)
        } else {
            self.allocator.revive(&id)
        }
        .expect("a registered framework is in the allocator");
        self.out.push(Action::SubscribeDone {
            conn,
            result: Ok(id.clone()),
        });
        self.out.push(Action::ToFramework {
            conn,
            event: FrameworkEvent::Subscribed {
                framework_id: id,
                heartbeat_interval_ms: self.config.framework_heartbeat_interval_ms,
            },
        });
    }

    /// The handler of [`Self::framework_disconnected`].
    fn on_framework_disconnected(&mut self, now_ms: u64, conn: ConnId) {
        self.pending_frameworks.remove(&conn);
        let Some((Owner::Framework, id)) = self.conns.remove(&conn) else {
            return;
        };
        let Some(id) = self.framework_id(&id) else {
            return;
        };
        let Some(fw) = self.frameworks.get_mut(&id) else {
            return;
        };
        if fw.conn != Some(conn) {
            return;
        }
        fw.conn = None;
        fw.disconnected_at_ms = Some(now_ms);
        let failover_timeout_ms = fw.info.failover_timeout_ms;
        tracing::info!(framework_id = %id, failover_timeout_ms, "framework disconnected");
        // Its offers go back; nothing is offered to it while it is away.
        let offers: Vec<OfferId> = self
            .allocator
            .offers()
            .filter(|o| o.framework == id)
            .map(|o| o.id)
            .collect();
        for offer in offers {
            self.return_offer(now_ms, offer, 0);
        }
        self.allocator
            .suppress(&id)
            .expect("a registered framework is in the allocator");
        if failover_timeout_ms == 0 {
            self.remove_framework(&id, "its failover timeout is 0 and it disconnected");
        }
    }

    fn framework_id(&self, s: &str) -> Option<FrameworkId> {
        FrameworkId::parse(s).ok()
    }

    fn known_framework(&self, id: &FrameworkId) -> Result<&Framework, CallError> {
        self.frameworks
            .get(id)
            .ok_or_else(|| CallError::NotFound(format!("framework {id} is not registered")))
    }

    /// The handler of [`Self::accept`].
    fn on_accept(
        &mut self,
        now_ms: u64,
        fw_id: &FrameworkId,
        offers: Vec<OfferRef>,
        launches: Vec<Result<TaskLaunch, InvalidLaunch>>,
        refuse_ms: Option<u64>,
        users: &crate::acl::TaskUsers,
    ) -> Result<(), CallError> {
        let fw = self.known_framework(fw_id)?;
        let fw_conn = fw.conn;
        let fw_info = fw.info.clone();
        let refuse_ms = self.refuse(refuse_ms)?;
        if offers.is_empty() {
            return Err(CallError::InvalidArgument(
                "offer_ids: at least one offer is needed".into(),
            ));
        }
        // Resolve the offers: each must be outstanding, this framework's, all on one agent.
        let mut valid = Vec::new();
        let mut problem = None;
        for offer in &offers {
            match offer {
                OfferRef::Known(id) => match self.allocator.offer(*id) {
                    Some(o) if &o.framework == fw_id => valid.push(o.clone()),
                    _ => {
                        problem.get_or_insert_with(|| {
                            format!(
                                "offer {offer} is not outstanding for this framework (rescinded, expired, declined or already used)"
                            )
                        });
                    }
                },
                OfferRef::Foreign(_) => {
                    problem.get_or_insert_with(|| {
                        format!("offer {offer} is unknown to this master (from an earlier leader, or not an offer id)")
                    });
                }
            }
        }
        if problem.is_none() {
            let agents: BTreeSet<&AgentId> = valid.iter().map(|o| &o.agent).collect();
            if agents.len() > 1 {
                problem = Some("offer_ids: the offers are on different agents".into());
            }
            let unique: BTreeSet<OfferId> = valid.iter().map(|o| o.id).collect();
            if unique.len() != valid.len() {
                problem = Some("offer_ids: an offer is listed twice".into());
            }
        }
        if let Some(problem) = problem {
            for o in &valid {
                self.return_offer(now_ms, o.id, 0);
            }
            for launch in launches {
                let task_id = match &launch {
                    Ok(l) => l.id.to_string(),
                    Err(e) => e.task_id.clone(),
                };
                self.send_update(
                    fw_conn,
                    TaskStatus::from_master(
                        &task_id,
                        None,
                        TaskState::Error,
                        "invalid_offer",
                        &problem,
                    ),
                );
            }
            return Ok(());
        }
        let agent_id = valid[0].agent.clone();
        let mut remaining = Resources::default();
        for o in &valid {
            remaining = remaining
                .checked_add(&o.resources)
                .expect("one agent's offers are disjoint");
        }
        let offered = remaining.clone();
        let mut seen = BTreeSet::new();
        let agent_conn = self.agents.get(&agent_id).and_then(|a| a.conn);
        let tasks_max = self.config.allocator.limits.tasks_per_framework_max;
        for launch in launches {
            let launch = match launch {
                Ok(l) => l,
                Err(e) => {
                    self.send_update(
                        fw_conn,
                        TaskStatus::from_master(
                            &e.task_id,
                            Some(&agent_id),
                            TaskState::Error,
                            "invalid_task",
                            e.message,
                        ),
                    );
                    continue;
                }
            };
            let key = (fw_id.clone(), launch.id.clone());
            // The principal's task users (Mesos's `run_tasks` ACL); the agent still refuses users
            // it does not have, and root unless `--allow-root-tasks`.
            let user = launch.user.as_ref().map_or("", |u| u.as_str());
            let refusal = if let Err(reason) = users.check(user) {
                Some(("unauthorized_user", reason))
            } else if launch.agent != agent_id {
                Some((
                    "unknown_agent",
                    format!(
                        "agent_id: {} is not the agent of the accepted offers ({agent_id})",
                        launch.agent
                    ),
                ))
            } else if self.tasks.contains_key(&key) || !seen.insert(launch.id.clone()) {
                Some((
                    "duplicate_task_id",
                    format!("task_id: {} is already in use by this framework", launch.id),
                ))
            } else if self.frameworks[fw_id].tasks.len() >= tasks_max {
                Some((
                    "tasks_per_framework_max",
                    format!(
                        "tasks_per_framework_max ({tasks_max}) reached: framework {fw_id} already has {tasks_max} non-terminal tasks"
                    ),
                ))
            } else if launch.resources.millicpus() == 0 && launch.resources.mem_bytes() == 0 {
                Some((
                    "invalid_task",
                    "resources: a task needs some cpus or memory".to_string(),
                ))
            } else if !remaining.contains(&launch.resources) {
                Some((
                    "insufficient_resources",
                    format!(
                        "resources: the task needs {}, but the offers have only {} left",
                        describe(&launch.resources),
                        describe(&remaining)
                    ),
                ))
            } else {
                None
            };
            if let Some((reason, message)) = refusal {
                self.send_update(
                    fw_conn,
                    TaskStatus::from_master(
                        launch.id.as_str(),
                        Some(&agent_id),
                        TaskState::Error,
                        reason,
                        message,
                    ),
                );
                continue;
            }
            remaining = remaining
                .checked_sub(&launch.resources)
                .expect("checked by contains above");
            let status = TaskStatus::from_master(
                launch.id.as_str(),
                Some(&agent_id),
                TaskState::Staging,
                "",
                "",
            );
            self.frameworks
                .get_mut(fw_id)
                .expect("checked at the top")
                .tasks
                .insert(launch.id.clone());
            self.agents
                .get_mut(&agent_id)
                .expect("an outstanding offer's agent is known and reachable")
                .tasks
                .insert(key.clone());
            tracing::debug!(framework_id = %fw_id, task_id = %launch.id, agent_id = %agent_id, "launching task");
            self.counters.tasks_launched += 1;
            if let Some(conn) = agent_conn {
                self.out.push(Action::ToAgent {
                    conn,
                    command: AgentCommand::RunTask {
                        framework: Box::new(fw_info.clone()),
                        task: Box::new(launch.clone()),
                    },
                });
            }
            self.tasks.insert(
                key,
                Task {
                    framework: fw_id.clone(),
                    launch,
                    status,
                    kill_requested: None,
                },
            );
        }
        let used = offered
            .checked_sub(&remaining)
            .expect("remaining was carved out of offered");
        // One agent, one outstanding offer: the first carries the use, the rest return.
        let mut used = Some(used);
        for o in valid {
            let u = used.take().unwrap_or_default();
            self.offer_owner.remove(&o.id);
            // The offer is outstanding and this framework's, `u` was carved out of it, and
            // `refuse` applied the allocator's limit: a refusal here is a bookkeeping bug.
            if let Err(e) = self.allocator.accept_offer(now_ms, o.id, u, refuse_ms) {
                panic!(
                    "offer {}: the allocator refused an accepted offer of framework {fw_id}: {e}",
                    o.id
                );
            }
        }
        Ok(())
    }

    fn refuse(&self, refuse_ms: Option<u64>) -> Result<u64, CallError> {
        let ms = refuse_ms.unwrap_or(self.config.refuse_ms_default);
        let max = self.config.allocator.limits.refuse_seconds_max;
        if ms > max.saturating_mul(1000) {
            return Err(CallError::InvalidArgument(format!(
                "filters.refuse_seconds: {} s is above the limit of {max} s",
                ms / 1000
            )));
        }
        Ok(ms)
    }

    /// Converts `refuse_seconds` from the wire.
    pub fn refuse_ms(seconds: f64) -> Result<u64, CallError> {
        ms_from_seconds("filters.refuse_seconds", seconds, u64::MAX / 2)
    }

    /// The handler of [`Self::decline`].
    fn on_decline(
        &mut self,
        now_ms: u64,
        fw_id: &FrameworkId,
        offers: Vec<OfferRef>,
        refuse_ms: Option<u64>,
    ) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        let refuse_ms = self.refuse(refuse_ms)?;
        for offer in offers {
            if let OfferRef::Known(id) = offer
                && self
                    .allocator
                    .offer(id)
                    .is_some_and(|o| &o.framework == fw_id)
            {
                self.return_offer(now_ms, id, refuse_ms);
            }
        }
        Ok(())
    }

    /// The handler of [`Self::revive`].
    fn on_revive(&mut self, fw_id: &FrameworkId, clear_filters: bool) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        let fw = self.frameworks.get_mut(fw_id).expect("checked");
        fw.suppressed = false;
        if fw.conn.is_some() {
            self.allocator
                .revive(fw_id)
                .expect("a registered framework is in the allocator");
        }
        if clear_filters {
            self.allocator
                .clear_filters(fw_id)
                .expect("a registered framework is in the allocator");
        }
        Ok(())
    }

    /// The handler of [`Self::suppress`].
    fn on_suppress(&mut self, fw_id: &FrameworkId) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        self.frameworks.get_mut(fw_id).expect("checked").suppressed = true;
        self.allocator
            .suppress(fw_id)
            .expect("a registered framework is in the allocator");
        Ok(())
    }

    /// The handler of [`Self::kill`].
    fn on_kill(
        &mut self,
        fw_id: &FrameworkId,
        task_id: &str,
        grace_ms: u64,
    ) -> Result<(), CallError> {
        let fw_conn = self.known_framework(fw_id)?.conn;
        let task = TaskId::parse(task_id)
            .ok()
            .and_then(|t| self.tasks.get_mut(&(fw_id.clone(), t)));
        let Some(task) = task else {
            self.send_update(
                fw_conn,
                TaskStatus::from_master(
                    task_id,
                    None,
                    TaskState::Unknown,
                    "reconciliation",
                    "the master does not know this task",
                ),
            );
            return Ok(());
        };
        let grace = if grace_ms == 0 {
            task.launch.kill_grace_period_ms
        } else {
            grace_ms
        };
        task.kill_requested = Some(grace);
        let agent_conn = self
            .agents
            .get(&task.launch.agent)
            .filter(|a| a.reachable)
            .and_then(|a| a.conn);
        let command = AgentCommand::KillTask {
            framework: fw_id.clone(),
            task: task.launch.id.clone(),
            grace_ms: grace,
        };
        if let Some(conn) = agent_conn {
            self.out.push(Action::ToAgent { conn, command });
        }
        Ok(())
    }

    /// The handler of [`Self::acknowledge`].
    fn on_acknowledge(
        &mut self,
        fw_id: &FrameworkId,
        agent_id: Option<&AgentId>,
        task_id: &str,
        uuid: [u8; 16],
    ) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        let agent = match agent_id {
            Some(a) => Some(a.clone()),
            None => TaskId::parse(task_id).ok().and_then(|t| {
                let key = (fw_id.clone(), t);
                self.tasks
                    .get(&key)
                    .or_else(|| self.completed_tasks.get(&key))
                    .map(|t| t.launch.agent.clone())
            }),
        };
        let Some(agent) = agent else {
            return Err(CallError::NotFound(format!(
                "task {task_id}: the master does not know its agent; give agent_id"
            )));
        };
        // An agent that is not connected resends the update later; it is acknowledged then.
        if let Some(conn) = self.agents.get(&agent).and_then(|a| a.conn) {
            self.out.push(Action::ToAgent {
                conn,
                command: AgentCommand::Acknowledge {
                    framework: fw_id.clone(),
                    task: task_id.to_string(),
                    uuid,
                },
            });
        }
        Ok(())
    }

    /// The handler of [`Self::reconcile`].
    fn on_reconcile(&mut self, fw_id: &FrameworkId, task_ids: &[String]) -> Result<(), CallError> {
        let fw = self.known_framework(fw_id)?;
        let conn = fw.conn;
        let mut statuses = Vec::new();
        if task_ids.is_empty() {
            for t in &fw.tasks {
                if let Some(task) = self.tasks.get(&(fw_id.clone(), t.clone())) {
                    statuses.push(task.status.clone());
                }
            }
        } else {
            for id in task_ids {
                let known = TaskId::parse(id).ok().and_then(|t| {
                    let key = (fw_id.clone(), t);
                    self.tasks
                        .get(&key)
                        .or_else(|| self.completed_tasks.get(&key))
                });
                statuses.push(match known {
                    Some(t) => t.status.clone(),
                    None => TaskStatus::from_master(
                        id,
                        None,
                        TaskState::Unknown,
                        "reconciliation",
                        "the master does not know this task",
                    ),
                });
            }
        }
        for mut s in statuses {
            s.source = StatusSource::Master;
            s.uuid = None;
            s.reason = "reconciliation".into();
            self.send_update(conn, s);
        }
        Ok(())
    }

    /// The handler of [`Self::teardown`].
    fn on_teardown(&mut self, fw_id: &FrameworkId) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        self.remove_framework(fw_id, "it asked to be torn down");
        Ok(())
    }

    fn remove_framework(&mut self, fw_id: &FrameworkId, why: &str) {
        let Some(fw) = self.frameworks.remove(fw_id) else {
            return;
        };
        tracing::info!(framework_id = %fw_id, why, "framework removed");
        let mut agents = BTreeSet::new();
        for t in &fw.tasks {
            if let Some(task) = self.tasks.remove(&(fw_id.clone(), t.clone())) {
                agents.insert(task.launch.agent.clone());
                if let Some(a) = self.agents.get_mut(&task.launch.agent) {
                    a.tasks.remove(&(fw_id.clone(), t.clone()));
                }
            }
        }
        for agent in agents {
            if let Some(conn) = self.agents.get(&agent).and_then(|a| a.conn) {
                self.out.push(Action::ToAgent {
                    conn,
                    command: AgentCommand::ShutdownFramework(fw_id.clone()),
                });
            }
        }
        let dropped = self
            .allocator
            .remove_framework(fw_id)
            .expect("a registered framework is in the allocator");
        for offer in dropped {
            self.offer_owner.remove(&offer);
        }
        if let Some(conn) = fw.conn {
            self.conns.remove(&conn);
            self.out.push(Action::CloseFramework {
                conn,
                error: Some(format!("framework {fw_id} was torn down: {why}")),
            });
        }
        self.out.push(Action::Persist {
            write: RegistryWrite::DeleteFramework(fw_id.clone()),
            then: Completion::None {
                what: format!("deleting framework {fw_id}"),
            },
        });
    }

    // ---- agents ------------------------------------------------------------------------------

    /// The handler of [`Self::agent_register`].
    fn on_agent_register(&mut self, conn: ConnId, info: AgentInfo) {
        if let Err(msg) = self.check_agent_info(&info) {
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(msg),
            });
            return;
        }
        if let Err(msg) = self.check_agents_max() {
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(msg),
            });
            return;
        }
        self.pending_agents.insert(conn, (info.clone(), Vec::new()));
        self.out.push(Action::Persist {
            write: RegistryWrite::PutAgent(info),
            then: Completion::AgentAdmitted { conn },
        });
    }

    /// Room for one more agent: known agents (reachable or not) plus admissions of new ids
    /// waiting for their registry write stay within `agents_max`.
    fn check_agents_max(&self) -> Result<(), String> {
        let max = self.config.allocator.limits.agents_max;
        let pending_new = self
            .pending_agents
            .values()
            .filter(|(info, _)| !self.agents.contains_key(&info.id))
            .count();
        if self.agents.len() + pending_new >= max {
            return Err(format!(
                "agents_max ({max}) reached: the master has {} agents",
                self.agents.len() + pending_new
            ));
        }
        Ok(())
    }

    fn check_agent_info(&self, info: &AgentInfo) -> Result<(), String> {
        if info.resources.millicpus() == 0 && info.resources.mem_bytes() == 0 {
            return Err("agent.resources: an agent must offer some cpus or memory".into());
        }
        if info.hostname.is_empty() || info.hostname.len() > LABEL_BYTES_MAX {
            return Err(format!(
                "agent.hostname: must be 1..={LABEL_BYTES_MAX} bytes"
            ));
        }
        Ok(())
    }

    /// The handler of [`Self::agent_reregister`].
    fn on_agent_reregister(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        info: AgentInfo,
        tasks: Vec<ReportedTask>,
    ) {
        if let Err(msg) = self.check_agent_info(&info) {
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(msg),
            });
            return;
        }
        let stored = self.agents.get(&info.id).map(|a| a.info.clone());
        if stored.is_none()
            && let Err(msg) = self.check_agents_max()
        {
            // New to this term (a registry that lost it, or one past the limit at load).
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(msg),
            });
            return;
        }
        if stored.as_ref() == Some(&info) {
            self.admit_agent(now_ms, conn, info, tasks, false);
        } else {
            // New to this registry (or changed): store it first.
            self.pending_agents.insert(conn, (info.clone(), tasks));
            self.out.push(Action::Persist {
                write: RegistryWrite::PutAgent(info),
                then: Completion::AgentAdmitted { conn },
            });
        }
    }

    fn admit_agent(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        info: AgentInfo,
        reported: Vec<ReportedTask>,
        is_new: bool,
    ) {
        let id = info.id.clone();
        // Everything that can refuse the agent comes before anything changes.
        let report = match self.sort_report(&info, reported) {
            Ok(r) => r,
            Err(msg) => {
                tracing::warn!(agent_id = %id, reason = %msg, "agent refused");
                self.out.push(Action::CloseAgent {
                    conn,
                    refused: Some(msg),
                });
                return;
            }
        };
        // Rebuild the allocator's view of this agent from what it reports.
        let was_reachable = self.agents.get(&id).is_some_and(|a| a.reachable);
        if was_reachable {
            self.remove_from_allocator(&id);
        }
        if let Err(e) =
            self.allocator
                .add_agent(id.clone(), info.resources.clone(), info.attributes.clone())
        {
            // Possible from input: resources so large the cluster total overflows.
            let msg = format!("agent {id}: {e}");
            tracing::warn!(agent_id = %id, reason = %msg, "agent refused");
            if was_reachable {
                self.mark_unreachable(&id, &format!("agent {id} was refused: {e}"));
            }
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(msg),
            });
            return;
        }
        let entry = self.agents.entry(id.clone()).or_insert_with(|| Agent {
            info: info.clone(),
            conn: None,
            last_heard_ms: now_ms,
            reachable: false,
            registered_at_ms: now_ms,
            tasks: BTreeSet::new(),
        });
        if let Some(old) = entry.conn.replace(conn)
            && old != conn
        {
            self.conns.remove(&old);
            self.out.push(Action::CloseAgent {
                conn: old,
                refused: None,
            });
        }
        entry.info = info.clone();
        entry.last_heard_ms = now_ms;
        entry.reachable = true;
        self.conns.insert(conn, (Owner::Agent, id.to_string()));
        tracing::info!(agent_id = %id, hostname = %info.hostname, is_new, tasks = report.adopt.len(), "agent registered");
        self.out.push(Action::ToAgent {
            conn,
            command: AgentCommand::Registered {
                agent_id: id.clone(),
                heartbeat_interval_ms: self.config.agent_heartbeat_interval_ms,
            },
        });
        // Reconcile the tasks: the agent's word wins.
        let mut reported_keys = BTreeSet::new();
        let mut used: BTreeMap<FrameworkId, Resources> = BTreeMap::new();
        for r in report.adopt {
            let key = (r.framework.clone(), r.launch.id.clone());
            reported_keys.insert(key.clone());
            if !r.state.is_terminal() {
                let u = used.entry(r.framework.clone()).or_default();
                *u = u
                    .checked_add(&r.launch.resources)
                    .expect("sort_report checked the live tasks are disjoint");
            }
            let fw_conn = self.frameworks[&r.framework].conn;
            match self.tasks.get_mut(&key) {
                Some(task) => {
                    // What the agent runs it with is what the allocator is told below.
                    task.launch.resources = r.launch.resources.clone();
                    let was_unreachable = task.status.state == TaskState::Unreachable;
                    if was_unreachable || task.status.state != r.state {
                        task.status.state = r.state;
                        if was_unreachable {
                            let mut s = task.status.clone();
                            s.source = StatusSource::Master;
                            s.uuid = None;
                            s.reason = "agent_reregistered".into();
                            s.message = "the agent is reachable again".into();
                            self.send_update(fw_conn, s);
                        }
                    }
                }
                None => {
                    let status =
                        TaskStatus::from_master(r.launch.id.as_str(), Some(&id), r.state, "", "");
                    self.tasks.insert(
                        key.clone(),
                        Task {
                            framework: r.framework.clone(),
                            launch: r.launch,
                            status,
                            kill_requested: None,
                        },
                    );
                }
            }
            self.frameworks
                .get_mut(&key.0)
                .expect("sort_report keeps tasks of known frameworks")
                .tasks
                .insert(key.1.clone());
            self.agents
                .get_mut(&id)
                .expect("inserted above")
                .tasks
                .insert(key.clone());
            if r.state.is_terminal() {
                // Not counted in the allocator's fresh view of the agent.
                self.complete_task(&key, false);
            }
        }
        for fw in report.shutdown {
            self.out.push(Action::ToAgent {
                conn,
                command: AgentCommand::ShutdownFramework(fw),
            });
        }
        for (framework, task) in report.kill {
            self.out.push(Action::ToAgent {
                conn,
                command: AgentCommand::KillTask {
                    framework,
                    task,
                    grace_ms: 0,
                },
            });
        }
        for (fw, u) in used {
            // sort_report checked the live tasks fit the agent, which is all free right now.
            if let Err(e) = self.allocator.update_agent_used(&id, &fw, u) {
                panic!("agent {id}: reported tasks of framework {fw} checked to fit do not: {e}");
            }
        }
        // Tasks the master launched there that the agent does not know: lost on the way.
        let known: Vec<(FrameworkId, TaskId)> = self.agents[&id]
            .tasks
            .iter()
            .filter(|k| !reported_keys.contains(*k))
            .cloned()
            .collect();
        for key in known {
            let fw_conn = self.frameworks.get(&key.0).and_then(|f| f.conn);
            if let Some(task) = self.tasks.get_mut(&key) {
                task.status = TaskStatus::from_master(
                    key.1.as_str(),
                    Some(&id),
                    TaskState::Lost,
                    "task_unknown_to_agent",
                    "the agent does not know this task (the launch was lost)",
                );
                let s = task.status.clone();
                self.send_update(fw_conn, s);
            }
            // Not reported, so not counted in the allocator's fresh view either.
            self.complete_task(&key, false);
        }
        // Kills asked for while the agent was away.
        let kills: Vec<AgentCommand> = self.agents[&id]
            .tasks
            .iter()
            .filter_map(|k| {
                let t = self.tasks.get(k)?;
                Some(AgentCommand::KillTask {
                    framework: k.0.clone(),
                    task: k.1.clone(),
                    grace_ms: t.kill_requested?,
                })
            })
            .collect();
        for command in kills {
            self.out.push(Action::ToAgent { conn, command });
        }
    }

    /// Sorts a registration's task report out, or refuses the agent (naming the task) if its
    /// live tasks overlap each other or do not fit `agent.resources`: the allocator could not
    /// hold them, and an agent whose tasks outgrow it was restarted with less than it runs.
    /// Tasks of unknown frameworks are shut down; a task listed twice counts once; a task the
    /// master tracks on another agent is killed here (the master's record wins).
    fn sort_report(
        &self,
        info: &AgentInfo,
        reported: Vec<ReportedTask>,
    ) -> Result<SortedReport, String> {
        let id = &info.id;
        let mut out = SortedReport::default();
        let mut seen = BTreeSet::new();
        let mut live = Resources::default();
        for mut r in reported {
            if !self.frameworks.contains_key(&r.framework) {
                out.shutdown.insert(r.framework.clone());
                continue;
            }
            // It runs where it is reported from, whatever its TaskInfo said.
            r.launch.agent = id.clone();
            let key = (r.framework.clone(), r.launch.id.clone());
            if !seen.insert(key.clone()) {
                tracing::warn!(agent_id = %id, framework_id = %key.0, task_id = %key.1, "task reported twice; the first report counts");
                continue;
            }
            if let Some(task) = self.tasks.get(&key)
                && &task.launch.agent != id
            {
                tracing::warn!(agent_id = %id, framework_id = %key.0, task_id = %key.1, tracked_on = %task.launch.agent, "reported task is tracked on another agent; killing this copy");
                out.kill.push(key);
                continue;
            }
            if !r.state.is_terminal() {
                live = live.checked_add(&r.launch.resources).map_err(|e| {
                    format!(
                        "agent {id}: reported task {} of framework {} overlaps another reported task ({e})",
                        key.1, key.0
                    )
                })?;
            }
            out.adopt.push(r);
        }
        if !info.resources.contains(&live) {
            return Err(format!(
                "agent {id}: its reported tasks use {}, more than agent.resources ({})",
                describe(&live),
                describe(&info.resources)
            ));
        }
        Ok(out)
    }

    /// Only for a reachable agent, which is in the allocator (the invariant).
    fn remove_from_allocator(&mut self, id: &AgentId) {
        let rescinded = match self.allocator.remove_agent(id) {
            Ok(r) => r,
            Err(e) => panic!("agent {id}: a reachable agent is not in the allocator: {e}"),
        };
        for offer in rescinded {
            self.rescind(offer);
        }
    }

    /// Tells the offer's framework it is gone (the allocator already took it back).
    fn rescind(&mut self, offer: OfferId) {
        let Some(fw) = self.offer_owner.remove(&offer) else {
            return;
        };
        if let Some(conn) = self.frameworks.get(&fw).and_then(|f| f.conn) {
            self.out.push(Action::ToFramework {
                conn,
                event: FrameworkEvent::Rescind(offer),
            });
        }
    }

    /// Declines an outstanding offer on the framework's behalf (no filter).
    /// Callers pass an outstanding offer and a `refuse_ms` checked by `refuse` (the allocator's
    /// own limit), so the allocator cannot refuse it.
    fn return_offer(&mut self, now_ms: u64, offer: OfferId, refuse_ms: u64) {
        self.offer_owner.remove(&offer);
        if let Err(e) = self.allocator.decline(now_ms, offer, refuse_ms) {
            panic!("offer {offer}: the allocator refused to take back an outstanding offer: {e}");
        }
    }

    /// The handler of [`Self::agent_heartbeat`].
    fn on_agent_heartbeat(&mut self, now_ms: u64, conn: ConnId) {
        if let Some(agent) = self.agent_of(conn)
            && let Some(a) = self.agents.get_mut(&agent)
        {
            a.last_heard_ms = now_ms;
        }
    }

    /// The agent on link `conn`, if it is admitted.
    pub fn agent_of(&self, conn: ConnId) -> Option<AgentId> {
        match self.conns.get(&conn) {
            Some((Owner::Agent, id)) => AgentId::parse(id).ok(),
            _ => None,
        }
    }

    /// The handler of [`Self::agent_disconnected`].
    fn on_agent_disconnected(&mut self, conn: ConnId) {
        self.pending_agents.remove(&conn);
        if let Some(agent) = self.agent_of(conn) {
            self.conns.remove(&conn);
            if let Some(a) = self.agents.get_mut(&agent)
                && a.conn == Some(conn)
            {
                a.conn = None;
            }
        }
    }

    /// The handler of [`Self::status_update`].
    fn on_status_update(
        &mut self,
        now_ms: u64,
        conn: ConnId,
        fw_id: &FrameworkId,
        status: TaskStatus,
    ) {
        let Some(agent) = self.agent_of(conn) else {
            return;
        };
        self.counters.status_updates += 1;
        if let Some(a) = self.agents.get_mut(&agent) {
            a.last_heard_ms = now_ms;
        }
        let Some(fw) = self.frameworks.get(fw_id) else {
            // The framework is gone: acknowledge for it, so the agent stops retrying.
            self.acknowledge_for_framework(conn, fw_id, &status);
            return;
        };
        let fw_conn = fw.conn;
        if let Ok(task_id) = TaskId::parse(&status.task_id) {
            let key = (fw_id.clone(), task_id);
            if let Some(task) = self.tasks.get_mut(&key) {
                if task.launch.agent != agent {
                    // Possible from input (a confused agent): the master's record wins, and the
                    // update is acknowledged so the sender stops retrying it.
                    tracing::warn!(agent_id = %agent, framework_id = %fw_id, task_id = %key.1, tracked_on = %task.launch.agent, "status update for a task tracked on another agent; ignored");
                    self.acknowledge_for_framework(conn, fw_id, &status);
                    return;
                }
                task.status = status.clone();
                if status.state.is_terminal() {
                    // The sender has a link, so it is reachable and in the allocator.
                    self.complete_task(&key, true);
                }
            } else if let Some(task) = self.completed_tasks.get_mut(&key) {
                task.status = status.clone();
            }
        }
        self.send_update(fw_conn, status);
    }

    /// Acknowledges an agent's update on the framework's behalf (it will never).
    fn acknowledge_for_framework(
        &mut self,
        conn: ConnId,
        fw_id: &FrameworkId,
        status: &TaskStatus,
    ) {
        if let Some(uuid) = status.uuid {
            self.out.push(Action::ToAgent {
                conn,
                command: AgentCommand::Acknowledge {
                    framework: fw_id.clone(),
                    task: status.task_id.clone(),
                    uuid,
                },
            });
        }
    }

    /// Moves a task to the completed list; with `recover`, frees what it used in the allocator
    /// (the caller knows the allocator counts it: its agent is reachable and it was not just
    /// left out of a re-registration's fresh view).
    fn complete_task(&mut self, key: &(FrameworkId, TaskId), recover: bool) {
        let Some(task) = self.tasks.remove(key) else {
            return;
        };
        if let Some(f) = self.frameworks.get_mut(&key.0) {
            f.tasks.remove(&key.1);
        }
        if let Some(a) = self.agents.get_mut(&task.launch.agent) {
            a.tasks.remove(key);
        }
        if recover
            && let Err(e) = self.allocator.recover_resources(
                0,
                &key.0,
                &task.launch.agent,
                task.launch.resources.clone(),
                0,
            )
        {
            panic!(
                "task {} of framework {}: the allocator does not hold its resources on agent {}: {e}",
                key.1, key.0, task.launch.agent
            );
        }
        // A task id may be reused once its task ended: keep one completed entry per id, so the
        // eviction below never drops a newer entry for an older one.
        if self.completed_tasks.insert(key.clone(), task).is_some() {
            self.completed.retain(|k| k != key);
        }
        self.completed.push_back(key.clone());
        while self.completed.len() > self.config.completed_tasks_max {
            if let Some(old) = self.completed.pop_front() {
                self.completed_tasks.remove(&old);
            }
        }
    }

    fn send_update(&mut self, conn: Option<ConnId>, status: TaskStatus) {
        if let Some(conn) = conn {
            self.out.push(Action::ToFramework {
                conn,
                event: FrameworkEvent::Update(status),
            });
        }
    }

    // ---- registry completions ----------------------------------------------------------------

    /// The handler of [`Self::persisted`].
    fn on_persisted(&mut self, now_ms: u64, then: Completion, result: Result<(), String>) {
        match then {
            Completion::None { what } => {
                // Possible (coord lost quorum or leadership): an operator should know what the
                // registry now misses; the next term reloads whatever it holds.
                if let Err(e) = result {
                    tracing::error!(write = %what, error = %e, "registry write failed");
                }
            }
            Completion::FrameworkAdmitted { conn } => {
                let Some((info, suppressed)) = self.pending_frameworks.remove(&conn) else {
                    return; // the stream went away meanwhile
                };
                match result {
                    Ok(()) => {
                        tracing::info!(framework_id = %info.id, name = %info.name, role = %info.role, "framework registered");
                        self.attach_framework(now_ms, conn, info, suppressed)
                    }
                    Err(e) => self.out.push(Action::SubscribeDone {
                        conn,
                        result: Err(CallError::Unavailable(format!(
                            "cannot store the framework in the registry: {e}"
                        ))),
                    }),
                }
            }
            Completion::AgentAdmitted { conn } => {
                let Some((info, tasks)) = self.pending_agents.remove(&conn) else {
                    return;
                };
                match result {
                    Ok(()) => self.admit_agent(now_ms, conn, info, tasks, true),
                    Err(e) => {
                        // The agent retries its registration on a new link.
                        tracing::warn!(agent_id = %info.id, error = %e, "agent admission failed");
                        self.out.push(Action::CloseAgent {
                            conn,
                            refused: None,
                        });
                    }
                }
            }
        }
    }

    // ---- time --------------------------------------------------------------------------------

    /// The handler of [`Self::tick`].
    fn on_tick(&mut self, now_ms: u64) -> bool {
        let limit = self.config.agent_unreachable_after_ms;
        let lost: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, a)| a.reachable && now_ms.saturating_sub(a.last_heard_ms) > limit)
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            self.agent_unreachable(&id);
        }
        let expired: Vec<FrameworkId> = self
            .frameworks
            .iter()
            .filter(|(_, f)| {
                f.disconnected_at_ms
                    .is_some_and(|at| now_ms.saturating_sub(at) >= f.info.failover_timeout_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_framework(&id, "its failover timeout passed while it was disconnected");
        }
        let interval = self.config.framework_heartbeat_interval_ms;
        for fw in self.frameworks.values_mut() {
            if let Some(conn) = fw.conn
                && now_ms.saturating_sub(fw.last_heartbeat_ms) >= interval
            {
                fw.last_heartbeat_ms = now_ms;
                self.out.push(Action::ToFramework {
                    conn,
                    event: FrameworkEvent::Heartbeat,
                });
            }
        }
        let due = self.allocator.needs_allocation(now_ms);
        if due {
            self.allocate(now_ms);
        }
        due
    }

    fn allocate(&mut self, now_ms: u64) {
        let allocation = self.allocator.allocate(now_ms);
        for offer in allocation.rescinds {
            self.rescind(offer);
        }
        let mut per_framework: BTreeMap<FrameworkId, Vec<OfferOut>> = BTreeMap::new();
        for o in allocation.offers {
            let Some(agent) = self.agents.get(&o.agent) else {
                panic!(
                    "offer {}: the allocator offered agent {}, which the master does not know",
                    o.id, o.agent
                );
            };
            self.offer_owner.insert(o.id, o.framework.clone());
            self.counters.offers_sent += 1;
            per_framework
                .entry(o.framework)
                .or_default()
                .push(OfferOut {
                    id: o.id,
                    agent: o.agent,
                    hostname: agent.info.hostname.clone(),
                    resources: o.resources,
                    attributes: agent.info.attributes.clone(),
                });
        }
        for (fw_id, offers) in per_framework {
            match self.frameworks.get(&fw_id).and_then(|f| f.conn) {
                Some(conn) => {
                    for chunk in offers.chunks(OFFERS_PER_EVENT_MAX) {
                        self.out.push(Action::ToFramework {
                            conn,
                            event: FrameworkEvent::Offers(chunk.to_vec()),
                        });
                    }
                }
                None => {
                    for o in offers {
                        self.return_offer(now_ms, o.id, 0);
                    }
                }
            }
        }
    }

    fn agent_unreachable(&mut self, id: &AgentId) {
        tracing::warn!(agent_id = %id, "agent unreachable: heartbeats missed");
        self.remove_from_allocator(id);
        self.mark_unreachable(id, &format!("agent {id} missed its heartbeats"));
    }

    /// The agent is out of the allocator already: close its link, mark its tasks unreachable
    /// (saying `why`) and tell every framework.
    fn mark_unreachable(&mut self, id: &AgentId, why: &str) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.reachable = false;
        let tasks: Vec<(FrameworkId, TaskId)> = agent.tasks.iter().cloned().collect();
        if let Some(conn) = agent.conn.take() {
            self.conns.remove(&conn);
            self.out.push(Action::CloseAgent {
                conn,
                refused: None,
            });
        }
        for key in tasks {
            let fw_conn = self.frameworks.get(&key.0).and_then(|f| f.conn);
            if let Some(task) = self.tasks.get_mut(&key) {
                task.status = TaskStatus::from_master(
                    key.1.as_str(),
                    Some(id),
                    TaskState::Unreachable,
                    "agent_unreachable",
                    why,
                );
                let s = task.status.clone();
                self.send_update(fw_conn, s);
            }
        }
        let conns: Vec<ConnId> = self.frameworks.values().filter_map(|f| f.conn).collect();
        for conn in conns {
            self.out.push(Action::ToFramework {
                conn,
                event: FrameworkEvent::Failure(id.clone()),
            });
        }
    }

    // ---- invariants --------------------------------------------------------------------------

    /// Panics, naming the object, unless the core agrees with itself and with the allocator
    /// (whose own invariants are checked first):
    ///
    /// - at most `agents_max` agents and `frameworks_max` frameworks;
    /// - the allocator holds exactly the registered frameworks, suppressed exactly when the
    ///   framework asked or is disconnected, and exactly the reachable agents;
    /// - every link is its owner's current one (an agent with a link is reachable), and no
    ///   pending admission has one yet;
    /// - every outstanding offer is recorded in `offer_owner` under its framework, which is
    ///   connected, on an agent that is reachable (so no offer outlives its agent);
    /// - every live task is non-terminal, listed by its framework and its agent (and every listed
    ///   task is live), and on each reachable agent the allocator's used resources per
    ///   framework are exactly the sum of that framework's tasks there;
    /// - the completed list and map hold the same tasks, at most `completed_tasks_max`.
    ///
    /// O(agents + frameworks + tasks + offers). Runs after every event in debug builds.
    pub fn check_invariants(&self) {
        self.allocator.check_invariants();
        let limits = &self.config.allocator.limits;
        assert!(
            self.agents.len() <= limits.agents_max,
            "master: {} agents, above agents_max ({})",
            self.agents.len(),
            limits.agents_max
        );
        assert!(
            self.frameworks.len() <= limits.frameworks_max,
            "master: {} frameworks, above frameworks_max ({})",
            self.frameworks.len(),
            limits.frameworks_max
        );
        assert_eq!(
            self.allocator.frameworks_len(),
            self.frameworks.len(),
            "master: the allocator holds {} frameworks, the master {}",
            self.allocator.frameworks_len(),
            self.frameworks.len()
        );
        for (id, fw) in &self.frameworks {
            assert_eq!(
                &fw.info.id, id,
                "master: framework {id} is stored as {}",
                fw.info.id
            );
            let Some(suppressed) = self.allocator.is_suppressed(id) else {
                panic!("master: framework {id} is not in the allocator");
            };
            assert_eq!(
                suppressed,
                fw.suppressed || fw.conn.is_none(),
                "master: framework {id} is {}suppressed in the allocator, but it asked {} and is {}",
                if suppressed { "" } else { "not " },
                if fw.suppressed { "to be" } else { "not to be" },
                if fw.conn.is_some() {
                    "connected"
                } else {
                    "disconnected"
                }
            );
            assert_eq!(
                fw.conn.is_none(),
                fw.disconnected_at_ms.is_some(),
                "master: framework {id} has a failover clock iff it is disconnected"
            );
            if let Some(conn) = fw.conn {
                assert_eq!(
                    self.conns.get(&conn),
                    Some(&(Owner::Framework, id.to_string())),
                    "master: framework {id}'s link {conn} is not indexed to it"
                );
            }
            for t in &fw.tasks {
                assert!(
                    self.tasks.contains_key(&(id.clone(), t.clone())),
                    "master: framework {id} lists task {t}, which is not live"
                );
            }
        }
        let reachable = self.agents.values().filter(|a| a.reachable).count();
        assert_eq!(
            self.allocator.agents_len(),
            reachable,
            "master: the allocator holds {} agents, the master has {reachable} reachable",
            self.allocator.agents_len()
        );
        for (id, a) in &self.agents {
            assert_eq!(
                &a.info.id, id,
                "master: agent {id} is stored as {}",
                a.info.id
            );
            assert_eq!(
                self.allocator.available(id).is_some(),
                a.reachable,
                "master: agent {id} is {} but {} the allocator",
                if a.reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                if a.reachable { "not in" } else { "still in" }
            );
            if let Some(conn) = a.conn {
                assert!(
                    a.reachable,
                    "master: unreachable agent {id} has link {conn}"
                );
                assert_eq!(
                    self.conns.get(&conn),
                    Some(&(Owner::Agent, id.to_string())),
                    "master: agent {id}'s link {conn} is not indexed to it"
                );
            }
            for key in &a.tasks {
                assert!(
                    self.tasks.get(key).is_some_and(|t| &t.launch.agent == id),
                    "master: agent {id} lists task {} of framework {}, which is not live there",
                    key.1,
                    key.0
                );
            }
        }
        for (conn, (owner, id)) in &self.conns {
            let current = match owner {
                Owner::Framework => FrameworkId::parse(id)
                    .ok()
                    .and_then(|f| self.frameworks.get(&f))
                    .and_then(|f| f.conn),
                Owner::Agent => AgentId::parse(id)
                    .ok()
                    .and_then(|a| self.agents.get(&a))
                    .and_then(|a| a.conn),
            };
            assert_eq!(
                current,
                Some(*conn),
                "master: link {conn} is indexed to {owner:?} {id}, whose link is {current:?}"
            );
            assert!(
                !self.pending_frameworks.contains_key(conn)
                    && !self.pending_agents.contains_key(conn),
                "master: link {conn} is both admitted and pending"
            );
        }
        assert_eq!(
            self.offer_owner.len(),
            self.allocator.offers().count(),
            "master: {} offers have an owner, the allocator has {} outstanding",
            self.offer_owner.len(),
            self.allocator.offers().count()
        );
        for o in self.allocator.offers() {
            assert_eq!(
                self.offer_owner.get(&o.id),
                Some(&o.framework),
                "master: offer {} of framework {} is not recorded under it",
                o.id,
                o.framework
            );
            assert!(
                self.frameworks
                    .get(&o.framework)
                    .is_some_and(|f| f.conn.is_some()),
                "master: offer {} is outstanding for framework {}, which is not connected",
                o.id,
                o.framework
            );
            assert!(
                self.agents.get(&o.agent).is_some_and(|a| a.reachable),
                "master: offer {} is outstanding on agent {}, which is not reachable",
                o.id,
                o.agent
            );
        }
        let mut used: BTreeMap<(&AgentId, &FrameworkId), Resources> = BTreeMap::new();
        for ((fw, tid), task) in &self.tasks {
            assert!(
                &task.framework == fw && &task.launch.id == tid,
                "master: task {tid} of framework {fw} is stored as {} of {}",
                task.launch.id,
                task.framework
            );
            assert!(
                !task.status.state.is_terminal(),
                "master: task {tid} of framework {fw} is {} but still live",
                task.status.state
            );
            assert!(
                self.frameworks
                    .get(fw)
                    .is_some_and(|f| f.tasks.contains(tid)),
                "master: task {tid}'s framework {fw} does not list it (unknown or torn down)"
            );
            let agent_id = &task.launch.agent;
            let Some(agent) = self.agents.get(agent_id) else {
                panic!("master: task {tid} of framework {fw} is on unknown agent {agent_id}");
            };
            assert!(
                agent.tasks.contains(&(fw.clone(), tid.clone())),
                "master: task {tid} of framework {fw} is not listed by its agent {agent_id}"
            );
            if agent.reachable {
                let u = used.entry((agent_id, fw)).or_default();
                *u = u.checked_add(&task.launch.resources).unwrap_or_else(|e| {
                    panic!("master: task {tid} of framework {fw} overlaps another on agent {agent_id}: {e}")
                });
            }
        }
        for (id, a) in &self.agents {
            if !a.reachable {
                continue;
            }
            let in_allocator = self
                .allocator
                .agent_used(id)
                .expect("reachable: checked above");
            for (fw, r) in in_allocator {
                assert_eq!(
                    used.get(&(id, fw)),
                    Some(r),
                    "master: on agent {id}, the allocator holds {} for framework {fw}, its tasks use {}",
                    describe(r),
                    describe(&used.get(&(id, fw)).cloned().unwrap_or_default())
                );
            }
        }
        for ((agent, fw), r) in &used {
            let held = self.allocator.used(agent, fw);
            assert!(
                held == Some(r) || (held.is_none() && r.is_empty()),
                "master: on agent {agent}, framework {fw}'s tasks use {} but the allocator holds {}",
                describe(r),
                describe(&held.cloned().unwrap_or_default())
            );
        }
        assert_eq!(
            self.completed.len(),
            self.completed_tasks.len(),
            "master: the completed list has {} tasks, the completed map {}",
            self.completed.len(),
            self.completed_tasks.len()
        );
        assert!(
            self.completed.len() <= self.config.completed_tasks_max,
            "master: {} completed tasks kept, above completed_tasks_max ({})",
            self.completed.len(),
            self.config.completed_tasks_max
        );
        for key in &self.completed {
            assert!(
                self.completed_tasks.contains_key(key),
                "master: completed task {} of framework {} is listed but not kept",
                key.1,
                key.0
            );
        }
    }

    // ---- reads -------------------------------------------------------------------------------

    pub fn allocator(&self) -> &Allocator {
        &self.allocator
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// (agents, frameworks, non-terminal tasks).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.agents.len(), self.frameworks.len(), self.tasks.len())
    }

    pub fn task(&self, fw: &FrameworkId, task: &TaskId) -> Option<&Task> {
        let key = (fw.clone(), task.clone());
        self.tasks
            .get(&key)
            .or_else(|| self.completed_tasks.get(&key))
    }

    /// Everything the operator API shows.
    pub fn state(&self) -> StateView {
        let mut offered_by_agent: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        let mut offered_by_fw: BTreeMap<&FrameworkId, Resources> = BTreeMap::new();
        for o in self.allocator.offers() {
            let a = offered_by_agent.entry(&o.agent).or_default();
            *a = a.checked_add(&o.resources).unwrap_or_else(|_| a.clone());
            let f = offered_by_fw.entry(&o.framework).or_default();
            *f = f.checked_add(&o.resources).unwrap_or_else(|_| f.clone());
        }
        let mut used_by_agent: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        let mut used_by_fw: BTreeMap<&FrameworkId, Resources> = BTreeMap::new();
        for t in self.tasks.values() {
            let a = used_by_agent.entry(&t.launch.agent).or_default();
            *a = a
                .checked_add(&t.launch.resources)
                .unwrap_or_else(|_| a.clone());
            let f = used_by_fw.entry(&t.framework).or_default();
            *f = f
                .checked_add(&t.launch.resources)
                .unwrap_or_else(|_| f.clone());
        }
        StateView {
            agents: self
                .agents
                .iter()
                .map(|(id, a)| AgentView {
                    info: a.info.clone(),
                    reachable: a.reachable,
                    used: used_by_agent.get(id).cloned().unwrap_or_default(),
                    offered: offered_by_agent.get(id).cloned().unwrap_or_default(),
                    registered_at_ms: a.registered_at_ms,
                })
                .collect(),
            frameworks: self
                .frameworks
                .iter()
                .map(|(id, f)| FrameworkView {
                    info: f.info.clone(),
                    connected: f.conn.is_some(),
                    suppressed: f.suppressed,
                    used: used_by_fw.get(id).cloned().unwrap_or_default(),
                    offered: offered_by_fw.get(id).cloned().unwrap_or_default(),
                })
                .collect(),
            tasks: self
                .tasks
                .values()
                .chain(
                    self.completed
                        .iter()
                        .filter_map(|k| self.completed_tasks.get(k)),
                )
                .cloned()
                .collect(),
        }
    }
}

/// "2 cpus, 64 MiB, ports [31000-31001]" for messages.
pub fn describe(r: &Resources) -> String {
    format!(
        "{} cpus, {} MiB, ports {}",
        r.cpus(),
        r.mem_bytes() as f64 / (1 << 20) as f64,
        r.ports()
    )
}
