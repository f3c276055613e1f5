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

    // ---- the registry, at the start of a term ------------------------------------------------

    /// A framework from the registry: disconnected (its failover timeout runs from `now_ms`)
    /// and suppressed in the allocator until it subscribes again.
    pub fn load_framework(&mut self, now_ms: u64, info: FrameworkInfo) {
        if self.frameworks.contains_key(&info.id) {
            return;
        }
        if let Err(e) = self
            .allocator
            .add_framework(info.id.clone(), info.role.clone(), None)
        {
            tracing::warn!(framework_id = %info.id, error = %e, "registry framework not loaded");
            return;
        }
        let _ = self.allocator.suppress(&info.id);
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

    /// An agent from the registry: known, but offered nothing until it re-registers.
    pub fn load_agent(&mut self, now_ms: u64, info: AgentInfo) {
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
                then: Completion::None,
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
            if let Err(e) = self
                .allocator
                .add_framework(id.clone(), info.role.clone(), None)
            {
                self.out.push(Action::SubscribeDone {
                    conn,
                    result: Err(CallError::Unavailable(e.to_string())),
                });
                return;
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
        let _ = if suppr {
            self.allocator.suppress(&id)
        } else {
            self.allocator.revive(&id)
        };
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

    /// The framework's stream ended (closed by the client, broken, or too slow to keep up).
    pub fn framework_disconnected(&mut self, now_ms: u64, conn: ConnId) {
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
        let _ = self.allocator.suppress(&id);
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
            let refusal = if launch.agent != agent_id {
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
            if let Some(f) = self.frameworks.get_mut(fw_id) {
                f.tasks.insert(launch.id.clone());
            }
            if let Some(a) = self.agents.get_mut(&agent_id) {
                a.tasks.insert(key.clone());
            }
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
            if let Err(e) = self.allocator.accept_offer(now_ms, o.id, u, refuse_ms) {
                tracing::error!(error = %e, "allocator refused an accepted offer");
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

    /// `Decline`: the offers return to the pool, filtered for this framework. Offers that are
    /// no longer outstanding are ignored (the call is idempotent).
    pub fn decline(
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

    pub fn revive(&mut self, fw_id: &FrameworkId, clear_filters: bool) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        let fw = self.frameworks.get_mut(fw_id).expect("checked");
        fw.suppressed = false;
        if fw.conn.is_some() {
            let _ = self.allocator.revive(fw_id);
        }
        if clear_filters {
            let _ = self.allocator.clear_filters(fw_id);
        }
        Ok(())
    }

    pub fn suppress(&mut self, fw_id: &FrameworkId) -> Result<(), CallError> {
        self.known_framework(fw_id)?;
        self.frameworks.get_mut(fw_id).expect("checked").suppressed = true;
        let _ = self.allocator.suppress(fw_id);
        Ok(())
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

    /// `Acknowledge`: passed on to the agent, which stops retrying that update.
    pub fn acknowledge(
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

    /// `Reconcile`: the latest status of each listed task (`TASK_UNKNOWN` for tasks the master
    /// does not know), or of every task of the framework when the list is empty.
    pub fn reconcile(&mut self, fw_id: &FrameworkId, task_ids: &[String]) -> Result<(), CallError> {
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

    /// `Teardown`: the framework is removed and all its tasks are killed.
    pub fn teardown(&mut self, fw_id: &FrameworkId) -> Result<(), CallError> {
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
        if let Ok(dropped) = self.allocator.remove_framework(fw_id) {
            for offer in dropped {
                self.offer_owner.remove(&offer);
            }
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
            then: Completion::None,
        });
    }

    // ---- agents ------------------------------------------------------------------------------

    /// A new agent's `Register`: admitted under `info.id` (a fresh id from the driver) once the
    /// registry holds it.
    pub fn agent_register(&mut self, conn: ConnId, info: AgentInfo) {
        if let Err(msg) = self.check_agent_info(&info) {
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(msg),
            });
            return;
        }
        if self.agents.len() + self.pending_agents.len() >= self.config.allocator.limits.agents_max
        {
            self.out.push(Action::CloseAgent {
                conn,
                refused: Some(format!(
                    "agents_max reached ({})",
                    self.config.allocator.limits.agents_max
                )),
            });
            return;
        }
        self.pending_agents.insert(conn, (info.clone(), Vec::new()));
        self.out.push(Action::Persist {
            write: RegistryWrite::PutAgent(info),
            then: Completion::AgentAdmitted { conn },
        });
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

    /// A known agent's `Reregister` (after its restart, a broken link or a master failover),
    /// with what it runs.
    pub fn agent_reregister(
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
        let was_reachable = std::mem::replace(&mut entry.reachable, true);
        self.conns.insert(conn, (Owner::Agent, id.to_string()));
        // Rebuild the allocator's view of this agent from what it reports.
        if was_reachable {
            self.remove_from_allocator(&id);
        }
        if let Err(e) =
            self.allocator
                .add_agent(id.clone(), info.resources.clone(), info.attributes.clone())
        {
            tracing::error!(agent_id = %id, error = %e, "agent not offerable");
        }
        tracing::info!(agent_id = %id, hostname = %info.hostname, is_new, tasks = reported.len(), "agent registered");
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
        let mut shutdown = BTreeSet::new();
        for r in reported {
            if !self.frameworks.contains_key(&r.framework) {
                shutdown.insert(r.framework.clone());
                continue;
            }
            let key = (r.framework.clone(), r.launch.id.clone());
            reported_keys.insert(key.clone());
            if !r.state.is_terminal() {
                let u = used.entry(r.framework.clone()).or_default();
                match u.checked_add(&r.launch.resources) {
                    Ok(sum) => *u = sum,
                    Err(e) => {
                        tracing::warn!(agent_id = %id, task_id = %r.launch.id, error = %e, "reported task resources overlap")
                    }
                }
            }
            let fw_conn = self.frameworks[&r.framework].conn;
            match self.tasks.get_mut(&key) {
                Some(task) => {
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
            if let Some(f) = self.frameworks.get_mut(&r.framework) {
                f.tasks.insert(key.1.clone());
            }
            self.agents
                .get_mut(&id)
                .expect("inserted above")
                .tasks
                .insert(key.clone());
            if r.state.is_terminal() {
                self.complete_task(&key);
            }
        }
        for fw in shutdown {
            self.out.push(Action::ToAgent {
                conn,
                command: AgentCommand::ShutdownFramework(fw),
            });
        }
        for (fw, u) in used {
            if let Err(e) = self.allocator.update_agent_used(&id, &fw, u) {
                tracing::warn!(agent_id = %id, framework_id = %fw, error = %e, "reported tasks do not fit the agent");
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
            self.complete_task(&key);
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

    fn remove_from_allocator(&mut self, id: &AgentId) {
        if let Ok(rescinded) = self.allocator.remove_agent(id) {
            for offer in rescinded {
                self.rescind(offer);
            }
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
    fn return_offer(&mut self, now_ms: u64, offer: OfferId, refuse_ms: u64) {
        self.offer_owner.remove(&offer);
        let _ = self.allocator.decline(now_ms, offer, refuse_ms);
    }

    /// Anything heard from an agent's link counts as a heartbeat.
    pub fn agent_heartbeat(&mut self, now_ms: u64, conn: ConnId) {
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

    /// An agent's link ended. It stays reachable until its heartbeats are missed.
    pub fn agent_disconnected(&mut self, conn: ConnId) {
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

    /// A status update from an agent: recorded, passed to the framework (which acknowledges
    /// it through the master), resources freed on a terminal state.
    pub fn status_update(
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
            return;
        };
        let fw_conn = fw.conn;
        if let Ok(task_id) = TaskId::parse(&status.task_id) {
            let key = (fw_id.clone(), task_id);
            if let Some(task) = self.tasks.get_mut(&key) {
                task.status = status.clone();
                if status.state.is_terminal() {
                    self.complete_task(&key);
                }
            } else if let Some(task) = self.completed_tasks.get_mut(&key) {
                task.status = status.clone();
            }
        }
        self.send_update(fw_conn, status);
    }

    /// Moves a task to the completed list and frees what it used.
    fn complete_task(&mut self, key: &(FrameworkId, TaskId)) {
        let Some(task) = self.tasks.remove(key) else {
            return;
        };
        if let Some(f) = self.frameworks.get_mut(&key.0) {
            f.tasks.remove(&key.1);
        }
        let agent_reachable = self
            .agents
            .get_mut(&task.launch.agent)
            .map(|a| {
                a.tasks.remove(key);
                a.reachable
            })
            .unwrap_or(false);
        if agent_reachable
            && let Err(e) = self.allocator.recover_resources(
                0,
                &key.0,
                &task.launch.agent,
                task.launch.resources.clone(),
                0,
            )
        {
            tracing::debug!(task_id = %key.1, error = %e, "resources of a finished task not recovered");
        }
        self.completed_tasks.insert(key.clone(), task);
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

    /// A registry write finished: `Ok` once durable in coord.
    pub fn persisted(&mut self, now_ms: u64, then: Completion, result: Result<(), String>) {
        match then {
            Completion::None => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "registry write failed");
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

    /// Runs the timers: unreachable agents, framework failover timeouts, heartbeats, and an
    /// allocation cycle when one is due. The driver calls it every `allocation_interval_ms`.
    /// Returns whether an allocation cycle ran.
    pub fn tick(&mut self, now_ms: u64) -> bool {
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
                continue;
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
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.reachable = false;
        tracing::warn!(agent_id = %id, "agent unreachable: heartbeats missed");
        let tasks: Vec<(FrameworkId, TaskId)> = agent.tasks.iter().cloned().collect();
        if let Some(conn) = agent.conn.take() {
            self.conns.remove(&conn);
            self.out.push(Action::CloseAgent {
                conn,
                refused: None,
            });
        }
        self.remove_from_allocator(id);
        for key in tasks {
            let fw_conn = self.frameworks.get(&key.0).and_then(|f| f.conn);
            if let Some(task) = self.tasks.get_mut(&key) {
                task.status = TaskStatus::from_master(
                    key.1.as_str(),
                    Some(id),
                    TaskState::Unreachable,
                    "agent_unreachable",
                    format!("agent {id} missed its heartbeats"),
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
