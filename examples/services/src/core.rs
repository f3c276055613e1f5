//! The framework's decisions, sans-IO: desired state (specs) and actual state (instances, status
//! updates, health-check results, offers) in, [`Action`]s out.
//!
//! One `Core` lives for one leadership term of one framework copy. It reads no clock and draws no
//! randomness (time comes in as [`Now`], task-id suffixes from a seeded generator) and does no
//! I/O; the driver (`crate::driver`) executes its actions in order. Every input method ends with
//! [`Core::reconcile`], the one place desired and actual state are compared:
//!
//! - a service whose spec is gone has every instance killed, then its status removed;
//! - instances of the current version beyond `instances` are killed, newest first;
//! - instances of an older version are killed as long as the healthy count stays at least
//!   `instances - max_unavailable` (unhealthy old ones at once), and new ones launched as long as
//!   no more than `instances + max_surge` live;
//! - missing instances wait for their index's backoff, then for offers: the placement helper
//!   chooses, and what it cannot place is explained in the status message;
//! - offers are wanted (revive) exactly while some instance could launch now, else suppressed.
//!
//! Failures (any end the framework did not ask for, and unhealthy kills) put the instance's index
//! into exponential backoff; an index whose instance runs healthy for `backoff_reset_after` starts
//! over. Instances whose agent is unreachable, or whose task the master does not know, for too
//! long are given up (killed, forgotten, replaced); an update for a task the framework does not
//! track kills it.
//!
//! [`Core::check_invariants`] states what `reconcile` establishes (no index both running and
//! waiting, no terminal instance tracked, offers wanted exactly while something may launch, …);
//! it runs after every input in debug builds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover_sdk::{
    AgentId, ExistingInstance, Offer, OfferId, TaskId, TaskInfo, TaskSpec, TaskState, TaskStatus,
    place,
};
use serde::{Deserialize, Serialize};

use crate::spec::{HealthCheck, HealthKind, ServiceSpec};
use crate::status::{Health, InstanceStatus, PendingInstances, ServiceStatus};

/// Timers and refusal periods of the core. Every field is a flag of `drover services`.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreConfig {
    /// First wait before relaunching an index whose instance failed; doubles per failure.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// An index whose instance runs healthy this long has its failure count reset.
    pub backoff_reset_after: Duration,
    /// How long offers that cannot be used are refused while instances are still wanted.
    pub decline_refuse: Duration,
    /// How long offers are refused when nothing is wanted (the framework suppresses too).
    pub idle_refuse: Duration,
    /// How long the unused part of an accepted offer is refused.
    pub leftover_refuse: Duration,
    /// How often a kill is sent again until the task's terminal update arrives.
    pub kill_retry_interval: Duration,
    /// An instance whose agent is unreachable this long is given up and replaced.
    pub unreachable_replace_after: Duration,
    /// An instance the master does not know (TASK_UNKNOWN, or no answer to reconciliation) this
    /// long is given up and replaced.
    pub unknown_replace_after: Duration,
    /// How often tasks in state UNKNOWN are reconciled again (the master learns tasks from
    /// agents that re-register after a master failover).
    pub reconcile_interval: Duration,
    /// Shortest time between two status writes of one service.
    pub status_interval: Duration,
    /// Host for http/tcp health checks instead of each agent's hostname; `None`: the hostname.
    pub check_host: Option<String>,
}

impl Default for CoreConfig {
    fn default() -> CoreConfig {
        CoreConfig {
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            backoff_reset_after: Duration::from_secs(60),
            decline_refuse: Duration::from_secs(2),
            idle_refuse: Duration::from_secs(60),
            leftover_refuse: Duration::from_secs(1),
            kill_retry_interval: Duration::from_secs(10),
            unreachable_replace_after: Duration::from_secs(60),
            unknown_replace_after: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            status_interval: Duration::from_millis(250),
            check_host: None,
        }
    }
}

/// The time of an input: monotonic (for timers) and wall-clock (for status timestamps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    /// Since an arbitrary start, never going back.
    pub mono: Duration,
    pub unix_ms: u64,
}

/// What the framework stores at `/services/instances/NAME/TASK_ID` before it launches an instance
/// and deletes after the task's terminal update, so that the next leader knows every instance's
/// version, ports and host (status updates carry none of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub task_id: String,
    pub service: String,
    pub instance: u32,
    pub version: String,
    pub agent_id: String,
    pub hostname: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    pub restarts: u32,
    pub launched_at_ms: u64,
}

/// A health check to run once: the driver runs it and reports with [`Core::probe_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub task_id: TaskId,
    pub kind: HealthKind,
    pub host: String,
    /// The checked port (`PORT<port_index>`), when the instance has it.
    pub port: Option<u16>,
    /// All of the instance's ports (`PORT0..` for cmd checks).
    pub ports: Vec<u16>,
    pub timeout: Duration,
}

/// The result of a [`Probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Passed,
    /// The instance failed the check (counts towards `max_failures`).
    Failed(String),
    /// The framework could not check (the host does not resolve, the command cannot start): not
    /// the instance's fault, so it does not count; the status says why.
    Unchecked(String),
}

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Store `records` (all or nothing), then accept `offer_id` with `tasks`, refusing what is
    /// left for `refuse`. If either step fails, decline the offer and call
    /// [`Core::launch_failed`].
    Launch {
        offer_id: OfferId,
        tasks: Vec<TaskInfo>,
        records: Vec<InstanceRecord>,
        refuse: Duration,
    },
    Decline {
        offer_ids: Vec<OfferId>,
        refuse: Duration,
    },
    Kill {
        task_id: TaskId,
        grace: Option<Duration>,
    },
    /// Delete the instance's record.
    Forget {
        service: String,
        task_id: TaskId,
    },
    Suppress,
    /// Revive and clear decline filters (offers declined while idle are wanted again now).
    Revive,
    /// Ask the master for the latest state of these tasks (all of the framework's if empty).
    Reconcile(Vec<TaskId>),
    Probe(Probe),
    PublishStatus(ServiceStatus),
    /// The service is gone and none of its instances runs: delete its status (and records dir).
    RemoveService(String),
}

/// Why the framework killed an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillReason {
    ScaleDown,
    Upgrade,
    Unhealthy,
    Removed,
}

#[derive(Clone, Debug)]
struct Instance {
    task_id: TaskId,
    index: u32,
    version: String,
    agent_id: AgentId,
    hostname: String,
    attributes: BTreeMap<String, String>,
    ports: Vec<u16>,
    restarts: u32,
    /// Launch order within this core: higher is newer.
    seq: u64,
    launched_at_ms: u64,
    state: TaskState,
    state_since: Duration,
    running_since: Option<Duration>,
    started_at_ms: Option<u64>,
    health: Health,
    healthy_since: Option<Duration>,
    probe_failures: u32,
    next_probe: Duration,
    probing: bool,
    kill: Option<KillReason>,
    kill_sent: Duration,
    message: String,
}

impl Instance {
    fn is_running(&self) -> bool {
        self.state == TaskState::Running
    }

    /// Running and passing its health check (or running without one).
    fn is_healthy(&self) -> bool {
        self.is_running() && matches!(self.health, Health::Healthy | Health::None)
    }

    fn record(&self, service: &str) -> InstanceRecord {
        InstanceRecord {
            task_id: self.task_id.0.clone(),
            service: service.to_string(),
            instance: self.index,
            version: self.version.clone(),
            agent_id: self.agent_id.0.clone(),
            hostname: self.hostname.clone(),
            attributes: self.attributes.clone(),
            ports: self.ports.clone(),
            restarts: self.restarts,
            launched_at_ms: self.launched_at_ms,
        }
    }
}

/// Failure history of one instance index.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// Consecutive failures (reset after a healthy run).
    failures: u32,
    restarts: u32,
    backoff_until: Duration,
    last_failure: String,
}

#[derive(Clone, Debug)]
struct Service {
    /// `None`: the spec was removed and the service is being stopped.
    spec: Option<ServiceSpec>,
    version: String,
    instances: BTreeMap<TaskId, Instance>,
    slots: BTreeMap<u32, Slot>,
    /// Indices that may launch now (computed by `reconcile`).
    launchable: Vec<u32>,
    /// Indices missing but waiting for their backoff.
    backing_off: Vec<u32>,
    /// Why the last offers could not place everything; cleared once all were placed.
    placement_message: String,
    /// Why the stored spec could not be used (it stays at the last valid one).
    invalid_message: String,
    dirty: bool,
    last_published: Option<Duration>,
}

impl Service {
    fn new(spec: Option<ServiceSpec>) -> Service {
        Service {
            version: spec.as_ref().map(ServiceSpec::version).unwrap_or_default(),
            spec,
            instances: BTreeMap::new(),
            slots: BTreeMap::new(),
            launchable: Vec::new(),
            backing_off: Vec::new(),
            placement_message: String::new(),
            invalid_message: String::new(),
            dirty: true,
            last_published: None,
        }
    }
}

/// The decisions of one leadership term. See the module doc.
pub struct Core {
    config: CoreConfig,
    services: BTreeMap<String, Service>,
    /// What we last told the master: `Some(true)` revived, `Some(false)` suppressed.
    offers_wanted: Option<bool>,
    /// When tasks in state UNKNOWN were last reconciled explicitly.
    last_reconcile: Duration,
    next_seq: u64,
    rng: u64,
    out: Vec<Action>,
}

impl Core {
    /// A core for one term; `seed` makes task-id suffixes (give each term a different one).
    pub fn new(config: CoreConfig, seed: u64) -> Core {
        Core {
            config,
            services: BTreeMap::new(),
            offers_wanted: None,
            last_reconcile: Duration::ZERO,
            next_seq: 0,
            rng: seed,
            out: Vec::new(),
        }
    }

    /// The actions decided so far, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// Whether the core tracks `name` (with a spec or while removing it).
    pub fn has_service(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// What the previous leader left: instance records and services with a status node. Call
    /// once, before [`Core::subscribed`].
    pub fn recover(&mut self, now: Now, records: Vec<InstanceRecord>, status_names: Vec<String>) {
        let mut records = records;
        records.sort_by(|a, b| (a.launched_at_ms, &a.task_id).cmp(&(b.launched_at_ms, &b.task_id)));
        for name in status_names {
            self.services
                .entry(name)
                .or_insert_with(|| Service::new(None));
        }
        for r in records {
            let seq = self.next_seq();
            let service = self
                .services
                .entry(r.service.clone())
                .or_insert_with(|| Service::new(None));
            let slot = service.slots.entry(r.instance).or_default();
            slot.restarts = slot.restarts.max(r.restarts);
            let task_id = TaskId(r.task_id.clone());
            service.instances.insert(
                task_id.clone(),
                Instance {
                    task_id,
                    index: r.instance,
                    version: r.version,
                    agent_id: AgentId(r.agent_id),
                    hostname: r.hostname,
                    attributes: r.attributes,
                    ports: r.ports,
                    restarts: r.restarts,
                    seq,
                    launched_at_ms: r.launched_at_ms,
                    // Not confirmed until the master answers the reconciliation.
                    state: TaskState::Unknown,
                    state_since: now.mono,
                    running_since: None,
                    started_at_ms: None,
                    health: Health::Unknown,
                    healthy_since: None,
                    probe_failures: 0,
                    next_probe: now.mono,
                    probing: false,
                    kill: None,
                    kill_sent: now.mono,
                    message: String::new(),
                },
            );
        }
        self.reconcile(now);
    }

    /// The framework is subscribed for the first time in this term: reconcile every tracked task
    /// explicitly (the master answers TASK_UNKNOWN for those it does not know) and all of the
    /// framework's tasks implicitly.
    pub fn subscribed(&mut self, now: Now) {
        let tracked: Vec<TaskId> = self
            .services
            .values()
            .flat_map(|s| s.instances.keys().cloned())
            .collect();
        if !tracked.is_empty() {
            self.out.push(Action::Reconcile(tracked));
        }
        self.last_reconcile = now.mono;
        self.reconnected(now);
    }

    /// Subscribed again after a disconnection (e.g. a master failover): implicit reconciliation
    /// only, since a new master may not know every task until its agents re-register.
    pub fn reconnected(&mut self, now: Now) {
        self.out.push(Action::Reconcile(Vec::new()));
        self.offers_wanted = None;
        self.reconcile(now);
    }

    /// The master registered a new framework id: the tasks of the old one were killed with it.
    pub fn framework_replaced(&mut self, now: Now) {
        for (name, service) in &mut self.services {
            for task_id in std::mem::take(&mut service.instances).into_keys() {
                self.out.push(Action::Forget {
                    service: name.clone(),
                    task_id,
                });
            }
            service.dirty = true;
        }
        self.reconcile(now);
    }

    /// A suppress or revive call failed: send the right one again at the next chance.
    pub fn offers_call_failed(&mut self) {
        self.offers_wanted = None;
        self.debug_check();
    }

    /// The specs stored now (`valid`), and the names whose stored spec is invalid (with why).
    pub fn set_specs(&mut self, now: Now, valid: Vec<ServiceSpec>, invalid: Vec<(String, String)>) {
        let mut seen = BTreeSet::new();
        for spec in valid {
            seen.insert(spec.name.clone());
            let service = self
                .services
                .entry(spec.name.clone())
                .or_insert_with(|| Service::new(None));
            let version = spec.version();
            if service.spec.as_ref() != Some(&spec) {
                service.dirty = true;
            }
            if version != service.version {
                // The new version's placement is judged afresh.
                service.placement_message.clear();
            }
            service.version = version;
            service.spec = Some(spec);
            if !service.invalid_message.is_empty() {
                service.invalid_message.clear();
                service.dirty = true;
            }
        }
        for (name, why) in invalid {
            seen.insert(name.clone());
            let service = self
                .services
                .entry(name.clone())
                .or_insert_with(|| Service::new(None));
            let message = format!("the stored spec is invalid: {why}");
            if service.invalid_message != message {
                service.invalid_message = message;
                service.dirty = true;
            }
        }
        for (name, service) in &mut self.services {
            if !seen.contains(name)
                && (service.spec.is_some() || !service.invalid_message.is_empty())
            {
                service.spec = None;
                service.invalid_message.clear();
                service.dirty = true;
            }
        }
        self.reconcile(now);
    }

    /// Offers from the master: launch what is wanted, decline the rest.
    pub fn offers(&mut self, now: Now, offers: Vec<Offer>) {
        self.reconcile(now);
        let mut remaining = offers;
        let mut launches: BTreeMap<OfferId, (Vec<TaskInfo>, Vec<InstanceRecord>)> = BTreeMap::new();
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let service = &self.services[&name];
            let Some(spec) = service.spec.clone() else {
                continue;
            };
            if service.launchable.is_empty() {
                continue;
            }
            let existing: Vec<ExistingInstance> = service
                .instances
                .values()
                .map(|i| ExistingInstance {
                    agent_id: i.agent_id.clone(),
                    hostname: i.hostname.clone(),
                    attributes: i.attributes.clone(),
                })
                .collect();
            let wanted = u32::try_from(service.launchable.len()).unwrap_or(u32::MAX);
            let plan = place(
                &remaining,
                &spec.task_request(),
                wanted,
                &existing,
                &spec.placement,
            );
            let message = plan
                .explain()
                .map(|m| m.replacen(" unplaced: ", " pending: ", 1))
                .unwrap_or_default();
            let indices = service.launchable.clone();
            let version = service.version.clone();
            for (launch, index) in plan.launches.iter().zip(indices) {
                let Some(offer) = remaining.iter_mut().find(|o| o.id == launch.offer_id) else {
                    continue;
                };
                let task_id = self.new_task_id(&name, index);
                let seq = self.next_seq();
                let service = self.services.get_mut(&name).expect("iterating its names");
                let restarts = service.slots.get(&index).map_or(0, |s| s.restarts);
                let mut task = TaskSpec::new(task_id.clone(), spec.cmd.to_command())
                    .name(name.clone())
                    .envs(spec.env.clone())
                    .label("service", name.clone())
                    .label("instance", index.to_string())
                    .label("version", version.clone());
                if let Some(grace) = spec.kill_grace {
                    task = task.kill_grace(grace);
                }
                let info = match task.build_for(launch) {
                    Ok(info) => info,
                    Err(e) => {
                        // A validated spec builds; if not, say so rather than loop.
                        service.placement_message = format!("cannot build the task: {e}");
                        service.dirty = true;
                        continue;
                    }
                };
                // `place` carves each launch out of what is left of its offer.
                offer.resources = match offer.resources.checked_sub(&launch.resources) {
                    Ok(rest) => rest,
                    Err(e) => panic!(
                        "services: placement gave {task_id} more than offer {} has left: {e}",
                        offer.id.0
                    ),
                };
                let instance = Instance {
                    task_id: task_id.clone(),
                    index,
                    version: version.clone(),
                    agent_id: offer.agent_id.clone(),
                    hostname: offer.hostname.clone(),
                    attributes: offer.attributes.clone(),
                    ports: launch.ports.clone(),
                    restarts,
                    seq,
                    launched_at_ms: now.unix_ms,
                    state: TaskState::Staging,
                    state_since: now.mono,
                    running_since: None,
                    started_at_ms: None,
                    health: if spec.health.is_some() {
                        Health::Unknown
                    } else {
                        Health::None
                    },
                    healthy_since: None,
                    probe_failures: 0,
                    next_probe: now.mono,
                    probing: false,
                    kill: None,
                    kill_sent: now.mono,
                    message: String::new(),
                };
                let entry = launches.entry(launch.offer_id.clone()).or_default();
                entry.0.push(info);
                entry.1.push(instance.record(&name));
                service.instances.insert(task_id, instance);
                service.dirty = true;
            }
            let service = self.services.get_mut(&name).expect("iterating its names");
            if service.placement_message != message {
                service.placement_message = message;
                service.dirty = true;
            }
        }
        // Recompute what is still wanted after these launches.
        self.reconcile(now);
        let still_wanted = self.services.values().any(|s| !s.launchable.is_empty());
        let mut declined = Vec::new();
        for offer in remaining {
            match launches.remove(&offer.id) {
                Some((tasks, records)) => self.out.push(Action::Launch {
                    offer_id: offer.id,
                    tasks,
                    records,
                    refuse: self.config.leftover_refuse,
                }),
                None => declined.push(offer.id),
            }
        }
        if !declined.is_empty() {
            let refuse = if still_wanted {
                self.config.decline_refuse
            } else {
                self.config.idle_refuse
            };
            self.out.push(Action::Decline {
                offer_ids: declined,
                refuse,
            });
        }
    }

    /// A launch could not be stored or sent: the instances never started.
    pub fn launch_failed(&mut self, now: Now, task_ids: &[TaskId], message: &str) {
        for task_id in task_ids {
            let Some(name) = service_of(task_id) else {
                continue;
            };
            if let Some(service) = self.services.get_mut(name)
                && service.instances.remove(task_id).is_some()
            {
                service.placement_message = format!("launch failed: {message}");
                service.dirty = true;
                self.out.push(Action::Forget {
                    service: name.to_string(),
                    task_id: task_id.clone(),
                });
            }
        }
        self.reconcile(now);
    }

    /// A task status update.
    pub fn update(&mut self, now: Now, status: &TaskStatus) {
        let tracked = service_of(&status.task_id)
            .and_then(|name| self.services.get_mut(name).map(|s| (name.to_string(), s)))
            .filter(|(_, s)| s.instances.contains_key(&status.task_id));
        let Some((name, service)) = tracked else {
            // Not ours (any more): nothing of it may keep running.
            if !status.state.is_terminal() && status.state != TaskState::Unknown {
                self.out.push(Action::Kill {
                    task_id: status.task_id.clone(),
                    grace: None,
                });
            }
            return;
        };
        let health_check = service.spec.as_ref().and_then(|s| s.health.clone());
        service.dirty = true;
        let instance = service
            .instances
            .get_mut(&status.task_id)
            .expect("checked above");
        if instance.state != status.state {
            instance.state_since = now.mono;
        }
        instance.state = status.state;
        if !status.message.is_empty() {
            instance.message = status.message.clone();
        }
        if status.state == TaskState::Running && instance.running_since.is_none() {
            instance.running_since = Some(now.mono);
            instance.started_at_ms = Some(if status.timestamp_ms > 0 {
                status.timestamp_ms
            } else {
                now.unix_ms
            });
            match health_check {
                None => {
                    instance.health = Health::None;
                    instance.healthy_since = Some(now.mono);
                }
                Some(_) => {
                    instance.health = Health::Unknown;
                    instance.next_probe = now.mono;
                }
            }
        }
        if status.state.is_terminal() {
            let instance = service
                .instances
                .remove(&status.task_id)
                .expect("checked above");
            self.out.push(Action::Forget {
                service: name.clone(),
                task_id: status.task_id.clone(),
            });
            if instance.kill.is_none() && !launch_refused_by_circumstance(status) {
                let what = describe_end(status);
                self.fail_index(&name, instance.index, now, what);
            }
        }
        self.reconcile(now);
    }

    /// The result of a [`Probe`].
    pub fn probe_result(&mut self, now: Now, task_id: &TaskId, result: ProbeOutcome) {
        self.on_probe_result(now, task_id, result);
        self.debug_check();
    }

    fn on_probe_result(&mut self, now: Now, task_id: &TaskId, result: ProbeOutcome) {
        let Some(name) = service_of(task_id).map(str::to_string) else {
            return;
        };
        let Some(service) = self.services.get_mut(&name) else {
            return;
        };
        let check = service.spec.as_ref().and_then(|s| s.health.clone());
        let Some(instance) = service.instances.get_mut(task_id) else {
            return;
        };
        // The probe is over even if the spec dropped its check meanwhile: a check added back
        // later must probe this instance again.
        instance.probing = false;
        let Some(check) = check else {
            return;
        };
        if !instance.is_running() || instance.kill.is_some() {
            return;
        }
        match result {
            ProbeOutcome::Unchecked(why) => {
                let message = format!("cannot check health: {why}");
                if instance.message != message {
                    instance.message = message;
                    service.dirty = true;
                }
                return;
            }
            ProbeOutcome::Passed => {
                instance.probe_failures = 0;
                if instance.health != Health::Healthy {
                    instance.health = Health::Healthy;
                    instance.healthy_since = Some(now.mono);
                    instance.message.clear();
                    service.dirty = true;
                }
            }
            ProbeOutcome::Failed(why) => {
                let in_grace = instance.health != Health::Healthy
                    && instance
                        .running_since
                        .is_some_and(|since| now.mono < since + check.grace);
                if in_grace {
                    if instance.message != why {
                        instance.message = why;
                        service.dirty = true;
                    }
                    return;
                }
                instance.probe_failures += 1;
                instance.message = format!(
                    "health check failed {} of {}: {why}",
                    instance.probe_failures, check.max_failures
                );
                service.dirty = true;
                if instance.probe_failures >= check.max_failures {
                    instance.health = Health::Unhealthy;
                    instance.healthy_since = None;
                    let index = instance.index;
                    let what = format!("unhealthy: {why}");
                    let task_id = task_id.clone();
                    self.kill(&name, &task_id, KillReason::Unhealthy, now);
                    self.fail_index(&name, index, now, what);
                }
            }
        }
        self.reconcile(now);
    }

    /// Timers: health probes, kill retries, backoff expiry and reset, given-up instances, status
    /// publication.
    pub fn tick(&mut self, now: Now) {
        if now.mono.saturating_sub(self.last_reconcile) >= self.config.reconcile_interval {
            let unknown: Vec<TaskId> = self
                .services
                .values()
                .flat_map(|s| s.instances.values())
                .filter(|i| i.state == TaskState::Unknown)
                .map(|i| i.task_id.clone())
                .collect();
            if !unknown.is_empty() {
                self.last_reconcile = now.mono;
                self.out.push(Action::Reconcile(unknown));
            }
        }
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let service = self.services.get_mut(&name).expect("iterating its names");
            let check = service.spec.as_ref().and_then(|s| s.health.clone());
            let grace = service.spec.as_ref().and_then(|s| s.kill_grace);
            let mut give_up = Vec::new();
            for instance in service.instances.values_mut() {
                let waited = now.mono.saturating_sub(instance.state_since);
                match instance.state {
                    TaskState::Unknown if waited >= self.config.unknown_replace_after => {
                        give_up.push((instance.task_id.clone(), "the master does not know it"));
                    }
                    TaskState::Unreachable if waited >= self.config.unreachable_replace_after => {
                        give_up.push((instance.task_id.clone(), "its agent is unreachable"));
                    }
                    _ => {}
                }
                if instance.kill.is_some()
                    && now.mono.saturating_sub(instance.kill_sent)
                        >= self.config.kill_retry_interval
                {
                    instance.kill_sent = now.mono;
                    self.out.push(Action::Kill {
                        task_id: instance.task_id.clone(),
                        grace,
                    });
                }
                if let Some(check) = &check
                    && instance.is_running()
                    && instance.kill.is_none()
                    && !instance.probing
                    && now.mono >= instance.next_probe
                {
                    instance.probing = true;
                    instance.next_probe = now.mono + check.interval;
                    self.out.push(Action::Probe(probe_for(
                        instance,
                        check,
                        self.config.check_host.as_deref(),
                    )));
                }
                if instance.is_healthy()
                    && instance
                        .healthy_since
                        .is_some_and(|since| now.mono >= since + self.config.backoff_reset_after)
                    && let Some(slot) = service.slots.get_mut(&instance.index)
                    && slot.failures > 0
                {
                    slot.failures = 0;
                }
            }
            for (task_id, why) in give_up {
                let instance = service
                    .instances
                    .remove(&task_id)
                    .expect("collected from the map");
                tracing::warn!(task_id = %task_id, why, "giving the instance up; it is replaced");
                service.dirty = true;
                self.out.push(Action::Kill {
                    task_id: task_id.clone(),
                    grace,
                });
                self.out.push(Action::Forget {
                    service: name.clone(),
                    task_id,
                });
                if service.spec.is_some() {
                    let slot = service.slots.entry(instance.index).or_default();
                    slot.restarts += 1;
                    slot.last_failure = why.to_string();
                }
            }
        }
        self.reconcile(now);
        self.publish(now);
        self.debug_check();
    }

    /// Compares desired and actual state and decides kills, what may launch, and whether offers
    /// are wanted. Runs at the end of every input.
    pub fn reconcile(&mut self, now: Now) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.reconcile_service(&name, now);
        }
        let wanted = self.services.values().any(|s| !s.launchable.is_empty());
        if self.offers_wanted != Some(wanted) {
            self.offers_wanted = Some(wanted);
            self.out.push(if wanted {
                Action::Revive
            } else {
                Action::Suppress
            });
        }
        // Every input ends here, so this checks after every input.
        self.debug_check();
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// Panics, naming the service and instance, unless what `reconcile` establishes holds:
    ///
    /// - each instance is stored under its own task id, which names its service, and is not
    ///   terminal (a terminal update forgets it); launch orders are unique;
    /// - health and timestamps agree (healthy has a `healthy_since`, unhealthy is being killed,
    ///   `running_since` iff `started_at_ms`), and an index never failed more than it restarted;
    /// - `launchable` and `backing_off` are ascending, disjoint, empty without a spec, hold no
    ///   index a live current-version instance has, and with those live instances stay within
    ///   `instances`, which the live current-version instances never exceed;
    /// - a removed service still tracked has instances, all being killed;
    /// - offers are wanted exactly while something is launchable (or the call is to be redone);
    /// - the status counts each instance in at most one state, and pending instances are the
    ///   launchable plus the backing-off ones.
    ///
    /// O(instances log instances). Runs after every input in debug builds, and in tests.
    pub fn check_invariants(&self) {
        let mut seqs = BTreeSet::new();
        for (name, service) in &self.services {
            for (task_id, i) in &service.instances {
                assert_eq!(
                    &i.task_id, task_id,
                    "services: {name}: instance {task_id} is stored as {}",
                    i.task_id
                );
                assert_eq!(
                    service_of(task_id),
                    Some(name.as_str()),
                    "services: {name}: instance {task_id} names another service"
                );
                assert!(
                    !i.state.is_terminal(),
                    "services: {name}: instance {task_id} is {} but still tracked",
                    i.state
                );
                assert!(
                    i.seq <= self.next_seq && seqs.insert(i.seq),
                    "services: {name}: instance {task_id}'s launch order {} is reused or ahead of {}",
                    i.seq,
                    self.next_seq
                );
                assert!(
                    i.health != Health::Healthy || i.healthy_since.is_some(),
                    "services: {name}: instance {task_id} is healthy without a healthy_since"
                );
                assert!(
                    i.health != Health::Unhealthy || i.kill.is_some(),
                    "services: {name}: instance {task_id} is unhealthy but not being killed"
                );
                assert_eq!(
                    i.running_since.is_some(),
                    i.started_at_ms.is_some(),
                    "services: {name}: instance {task_id} has one of running_since and started_at_ms"
                );
            }
            for (index, slot) in &service.slots {
                assert!(
                    slot.failures <= slot.restarts,
                    "services: {name}: index {index} failed {} times but restarted {}",
                    slot.failures,
                    slot.restarts
                );
            }
            let ascending = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
            assert!(
                ascending(&service.launchable) && ascending(&service.backing_off),
                "services: {name}: launchable {:?} or backing off {:?} is not ascending",
                service.launchable,
                service.backing_off
            );
            if let Some(index) = service
                .launchable
                .iter()
                .find(|i| service.backing_off.contains(i))
            {
                panic!("services: {name}: index {index} is both launchable and backing off");
            }
            let Some(spec) = &service.spec else {
                assert!(
                    service.launchable.is_empty() && service.backing_off.is_empty(),
                    "services: {name}: no spec, yet indices wait to launch"
                );
                if service.invalid_message.is_empty() {
                    assert!(
                        !service.instances.is_empty(),
                        "services: {name}: removed with no instance left, yet still tracked"
                    );
                    if let Some(i) = service.instances.values().find(|i| i.kill.is_none()) {
                        panic!(
                            "services: {name}: removed, yet instance {} is not being killed",
                            i.task_id
                        );
                    }
                }
                continue;
            };
            let live: Vec<&Instance> = service
                .instances
                .values()
                .filter(|i| i.kill.is_none() && i.version == service.version)
                .collect();
            let desired = spec.instances as usize;
            assert!(
                live.len() <= desired,
                "services: {name}: {} live instances of the current version, {desired} wanted",
                live.len()
            );
            let indices: BTreeSet<u32> = live.iter().map(|i| i.index).collect();
            if let Some(index) = service
                .launchable
                .iter()
                .chain(&service.backing_off)
                .find(|i| indices.contains(i))
            {
                panic!("services: {name}: index {index} runs, yet waits to launch");
            }
            let waiting = service.launchable.len() + service.backing_off.len();
            assert!(
                indices.len() + waiting <= desired,
                "services: {name}: {} indices run and {waiting} wait, {desired} wanted",
                indices.len()
            );
        }
        let launchable = self.services.values().any(|s| !s.launchable.is_empty());
        assert!(
            self.offers_wanted.is_none_or(|w| w == launchable),
            "services: offers are {} though {}",
            if launchable { "suppressed" } else { "wanted" },
            if launchable {
                "an instance may launch"
            } else {
                "no instance may launch"
            }
        );
        let now = Now {
            mono: Duration::ZERO,
            unix_ms: 0,
        };
        for (name, service) in &self.services {
            let st = status_of(name, service, now);
            let lost = service
                .instances
                .values()
                .filter(|i| matches!(i.state, TaskState::Unreachable | TaskState::Unknown))
                .count();
            assert!(
                st.staged as usize + st.running as usize + lost <= service.instances.len()
                    && st.healthy <= st.running
                    && st.instances.len() == service.instances.len(),
                "services: {name}: the status counts {} staged, {} running ({} healthy) and {lost} lost of {} instances",
                st.staged,
                st.running,
                st.healthy,
                service.instances.len()
            );
            if service.spec.is_some() && !st.at_spec {
                let pending = &st.pending;
                assert!(
                    (pending.waiting_for_offers + pending.unplaceable) as usize
                        == service.launchable.len()
                        && pending.backing_off as usize == service.backing_off.len(),
                    "services: {name}: the status says {pending:?} pending, but {} may launch and {} back off",
                    service.launchable.len(),
                    service.backing_off.len()
                );
            }
        }
    }

    fn reconcile_service(&mut self, name: &str, now: Now) {
        let service = self.services.get_mut(name).expect("called with its names");
        let Some(spec) = service.spec.clone() else {
            service.launchable.clear();
            service.backing_off.clear();
            if !service.invalid_message.is_empty() {
                // A stored spec that was never valid here: touch nothing until it is fixed.
                return;
            }
            // Removed: kill everything, then forget the service.
            let live: Vec<TaskId> = service
                .instances
                .values()
                .filter(|i| i.kill.is_none())
                .map(|i| i.task_id.clone())
                .collect();
            for task_id in live {
                self.kill(name, &task_id, KillReason::Removed, now);
            }
            if self.services[name].instances.is_empty() {
                self.services.remove(name);
                self.out.push(Action::RemoveService(name.to_string()));
            }
            return;
        };
        let desired = spec.instances as usize;
        let version = service.version.clone();
        let active = |i: &&Instance| i.kill.is_none();
        let mut current: Vec<&Instance> = service
            .instances
            .values()
            .filter(active)
            .filter(|i| i.version == version)
            .collect();
        // Scale down: the newest first.
        current.sort_by_key(|i| std::cmp::Reverse(i.seq));
        let excess: Vec<TaskId> = current
            .iter()
            .take(current.len().saturating_sub(desired))
            .map(|i| i.task_id.clone())
            .collect();
        for task_id in &excess {
            self.kill(name, task_id, KillReason::ScaleDown, now);
        }
        // Rolling upgrade: old instances go while enough stay healthy.
        let service = &self.services[name];
        let mut old: Vec<&Instance> = service
            .instances
            .values()
            .filter(active)
            .filter(|i| i.version != version)
            .collect();
        old.sort_by_key(|i| (i.is_healthy(), std::cmp::Reverse(i.seq)));
        let mut healthy = service
            .instances
            .values()
            .filter(active)
            .filter(|i| i.is_healthy())
            .count();
        let healthy_min = desired.saturating_sub(spec.upgrade.max_unavailable as usize);
        let mut retire = Vec::new();
        for instance in &old {
            if instance.state == TaskState::Unknown {
                // Not confirmed by the master yet (just recovered): decide once it answers.
                continue;
            }
            if !instance.is_healthy() {
                retire.push(instance.task_id.clone());
            } else if healthy > healthy_min {
                healthy -= 1;
                retire.push(instance.task_id.clone());
            }
        }
        for task_id in &retire {
            self.kill(name, task_id, KillReason::Upgrade, now);
        }
        // What may launch.
        let service = self.services.get_mut(name).expect("called with its names");
        let current_indices: BTreeSet<u32> = service
            .instances
            .values()
            .filter(|i| i.kill.is_none() && i.version == version)
            .map(|i| i.index)
            .collect();
        let upgrading = service.instances.values().any(|i| i.version != version);
        let mut room = desired.saturating_sub(current_indices.len());
        if upgrading {
            let live = service.instances.len();
            room = room.min((desired + spec.upgrade.max_surge as usize).saturating_sub(live));
        }
        let mut launchable = Vec::new();
        let mut backing_off = Vec::new();
        let mut index = 0u32;
        while launchable.len() + backing_off.len() < room {
            if !current_indices.contains(&index) {
                match service.slots.get(&index) {
                    Some(slot) if slot.backoff_until > now.mono => backing_off.push(index),
                    _ => launchable.push(index),
                }
            }
            index += 1;
        }
        if service.launchable != launchable || service.backing_off != backing_off {
            service.dirty = true;
        }
        if launchable.is_empty() && !service.placement_message.is_empty() {
            service.placement_message.clear();
            service.dirty = true;
        }
        service.launchable = launchable;
        service.backing_off = backing_off;
    }

    /// Publishes the status of every changed service whose last write is old enough.
    fn publish(&mut self, now: Now) {
        for (name, service) in &mut self.services {
            let due = service
                .last_published
                .is_none_or(|at| now.mono >= at + self.config.status_interval);
            if service.dirty && due {
                service.dirty = false;
                service.last_published = Some(now.mono);
                self.out
                    .push(Action::PublishStatus(status_of(name, service, now)));
            }
        }
    }

    /// The status of `name` as it stands (also what the next publication will say).
    pub fn status(&self, name: &str, now: Now) -> Option<ServiceStatus> {
        self.services.get(name).map(|s| status_of(name, s, now))
    }

    fn kill(&mut self, name: &str, task_id: &TaskId, reason: KillReason, now: Now) {
        let service = self.services.get_mut(name).expect("called with its names");
        let grace = service.spec.as_ref().and_then(|s| s.kill_grace);
        let Some(instance) = service.instances.get_mut(task_id) else {
            return;
        };
        if instance.kill.is_some() {
            return;
        }
        tracing::info!(task_id = %task_id, ?reason, "killing instance");
        instance.kill = Some(reason);
        instance.kill_sent = now.mono;
        service.dirty = true;
        self.out.push(Action::Kill {
            task_id: task_id.clone(),
            grace,
        });
    }

    /// An instance of `index` ended without being asked to: count it and back off.
    fn fail_index(&mut self, name: &str, index: u32, now: Now, what: String) {
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        if service.spec.is_none() {
            return;
        }
        let slot = service.slots.entry(index).or_default();
        slot.failures += 1;
        slot.restarts += 1;
        let exponent = slot.failures.saturating_sub(1).min(30);
        let wait = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << exponent)
            .min(self.config.backoff_max);
        slot.backoff_until = now.mono + wait;
        tracing::info!(
            service = name,
            index,
            failures = slot.failures,
            ?wait,
            what,
            "instance failed"
        );
        slot.last_failure = what;
        service.dirty = true;
    }

    /// A fresh launch order: every instance's `seq` is unique and at most `next_seq`.
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// `NAME.N.xxxxxx` with a 6-character suffix unused by any tracked task.
    fn new_task_id(&mut self, name: &str, index: u32) -> TaskId {
        loop {
            // splitmix64
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
            let suffix: String = (0..6)
                .map(|i| char::from(ALPHABET[((z >> (i * 6)) % 36) as usize]))
                .collect();
            let id = TaskId(format!("{name}.{index}.{suffix}"));
            let taken = self
                .services
                .get(name)
                .is_some_and(|s| s.instances.contains_key(&id));
            if !taken {
                return id;
            }
        }
    }
}

/// The service name of a task id `NAME.N.xxxxxx`.
pub fn service_of(task_id: &TaskId) -> Option<&str> {
    let mut parts = task_id.as_str().split('.');
    let name = parts.next()?;
    let index = parts.next()?;
    (!name.is_empty() && index.parse::<u32>().is_ok() && parts.next().is_some()).then_some(name)
}

/// A launch the master refused because of the offer rather than the task (the offer was
/// rescinded or used up, the agent left): relaunch at once, it is not the instance's failure.
fn launch_refused_by_circumstance(status: &TaskStatus) -> bool {
    status.state == TaskState::Error
        && matches!(
            status.reason.as_str(),
            "invalid_offer" | "insufficient_resources" | "unknown_agent" | "duplicate_task_id"
        )
}

fn describe_end(status: &TaskStatus) -> String {
    let mut what = status.state.to_string();
    if let Some(code) = status.exit_code {
        what.push_str(&format!(" exit {code}"));
    }
    if let Some(signal) = status.signal {
        what.push_str(&format!(" signal {signal}"));
    }
    if !status.reason.is_empty() {
        what.push_str(&format!(" [{}]", status.reason));
    }
    if !status.message.is_empty() {
        what.push_str(&format!(" ({})", status.message));
    }
    what
}

fn probe_for(instance: &Instance, check: &HealthCheck, check_host: Option<&str>) -> Probe {
    Probe {
        task_id: instance.task_id.clone(),
        kind: check.kind.clone(),
        host: check_host.unwrap_or(&instance.hostname).to_string(),
        port: instance.ports.get(check.port_index as usize).copied(),
        ports: instance.ports.clone(),
        timeout: check.timeout,
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn status_of(name: &str, service: &Service, now: Now) -> ServiceStatus {
    let desired = service.spec.as_ref().map_or(0, |s| s.instances);
    let mut instances: Vec<InstanceStatus> = service
        .instances
        .values()
        .map(|i| InstanceStatus {
            task_id: i.task_id.0.clone(),
            instance: i.index,
            agent_id: i.agent_id.0.clone(),
            host: i.hostname.clone(),
            ports: i.ports.clone(),
            state: i.state.to_string(),
            health: i.health,
            restarts: i.restarts,
            version: i.version.clone(),
            started_at_ms: i.started_at_ms,
            message: i.message.clone(),
        })
        .collect();
    instances.sort_by(|a, b| (a.instance, &a.task_id).cmp(&(b.instance, &b.task_id)));
    let all: Vec<&Instance> = service.instances.values().collect();
    let staged = all
        .iter()
        .filter(|i| matches!(i.state, TaskState::Staging | TaskState::Starting))
        .count();
    let running = all.iter().filter(|i| i.is_running()).count();
    let healthy = all.iter().filter(|i| i.is_healthy()).count();
    let current_healthy = all
        .iter()
        .filter(|i| i.kill.is_none() && i.version == service.version && i.is_healthy())
        .count();
    let at_spec = service.spec.is_some()
        && all.len() == desired as usize
        && current_healthy == desired as usize
        && service.invalid_message.is_empty();
    let mut parts: Vec<String> = Vec::new();
    let mut pending = PendingInstances::default();
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    if !service.invalid_message.is_empty() {
        parts.push(service.invalid_message.clone());
    }
    if service.spec.is_none() {
        parts.push(format!(
            "removing: {} still running",
            plural(all.len(), "instance", "instances")
        ));
    } else if !at_spec {
        if !service.placement_message.is_empty() {
            parts.push(service.placement_message.clone());
            pending.unplaceable = count(service.launchable.len());
        } else if !service.launchable.is_empty() {
            parts.push(format!(
                "{} pending: waiting for offers",
                plural(service.launchable.len(), "instance", "instances")
            ));
            pending.waiting_for_offers = count(service.launchable.len());
        }
        pending.backing_off = count(service.backing_off.len());
        for index in &service.backing_off {
            if let Some(slot) = service.slots.get(index) {
                let wait = slot.backoff_until.saturating_sub(now.mono);
                parts.push(format!(
                    "instance {index} restarts in {:.1}s after {} (last: {})",
                    wait.as_secs_f64(),
                    plural(slot.failures as usize, "failure", "failures"),
                    slot.last_failure
                ));
            }
        }
        let old = all.iter().filter(|i| i.version != service.version).count();
        if old > 0 {
            let new = all.len() - old;
            parts.push(format!(
                "upgrading: {new} of {desired} at the new version, {} to stop",
                plural(old, "old instance", "old instances")
            ));
        }
        if staged > 0 {
            parts.push(format!(
                "{} starting",
                plural(staged, "instance", "instances")
            ));
        }
        let unhealthy = all
            .iter()
            .filter(|i| i.is_running() && !i.is_healthy())
            .count();
        if unhealthy > 0 {
            parts.push(format!(
                "{} running but not healthy yet",
                plural(unhealthy, "instance", "instances")
            ));
        }
        let stopping = all.iter().filter(|i| i.kill.is_some()).count();
        if stopping > 0 && old == 0 {
            parts.push(format!(
                "{} stopping",
                plural(stopping, "instance", "instances")
            ));
        }
        let lost = all
            .iter()
            .filter(|i| matches!(i.state, TaskState::Unreachable | TaskState::Unknown))
            .count();
        if lost > 0 {
            parts.push(format!(
                "{} unreachable or unknown to the master",
                plural(lost, "instance", "instances")
            ));
        }
    }
    ServiceStatus {
        name: name.to_string(),
        version: service.version.clone(),
        desired,
        staged: count(staged),
        running: count(running),
        healthy: count(healthy),
        at_spec,
        removing: service.spec.is_none(),
        message: parts.join("; "),
        pending,
        instances,
        updated_at_ms: now.unix_ms,
    }
}

#[cfg(test)]
mod tests;
