//! The driver: the one task that owns the agent's state. See the duties in [`super`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_proto::v1::{self, agent_message, master_message};
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until};
use tonic::Streaming;
use uuid::Uuid;

use super::convert;
use super::master_link::{self, Link, LinkError, leader_hint};
use super::records::{self, WorkDir};
use super::runs::{self, ProcessIdentity, RunEvent, Watch, WatchTiming, spawn_supervisor};
use super::sandbox_gc::{Collected, GcReason, GcRound, select};
use super::task_info::{
    FrameworkDescription, InvalidTask, LaunchContext, TaskDescription, validate, validate_ids,
};
use super::tasks::{
    KillDecision, REASON_INVALID_TASK, REASON_UNKNOWN_TASK, RunOutcome, StatusDraft, TaskEntry,
    TaskKey, TaskTable,
};
use super::{AgentConfig, AgentError, duration_ms};
use crate::status_updates::{
    STATUS_MESSAGE_BYTES_MAX, StatusUpdate, StatusUpdateError, StatusUpdateManager, TaskState,
};
use crate::supervisor::SupervisorSpec;
use crate::task_user::{SystemUsers, TaskUserPolicy};

/// Run events (task started / ended) waiting for the driver.
const RUN_EVENTS_MAX: usize = 1024;
/// Messages from the master waiting for the driver.
const LINK_EVENTS_MAX: usize = 256;
/// Heartbeat interval used when a master's `Registered` gives none.
const HEARTBEAT_INTERVAL_FALLBACK: Duration = Duration::from_secs(1);
/// How far ahead the loop sleeps when no timer is due (it wakes on every event anyway).
const IDLE_WAKEUP: Duration = Duration::from_secs(3600);
/// Questions from the file API and the sandbox GC waiting for the driver.
pub(super) const QUERIES_MAX: usize = 256;
/// Tasks whose sandboxes the GC removed that the driver remembers (to tell a reader "removed by
/// the GC" rather than "never ran here"); the oldest are forgotten first.
const GC_REMOVED_REMEMBERED_MAX: usize = 65_536;

/// What the file API and the sandbox GC ask the driver (the owner of the task table).
#[derive(Debug)]
pub enum Query {
    /// What the table says about one task.
    Task {
        key: TaskKey,
        reply: oneshot::Sender<TaskView>,
    },
    /// A GC round: pick from the scanned runs and move the picked sandboxes to the trash.
    Collect {
        round: GcRound,
        reply: oneshot::Sender<Collected>,
    },
}

/// The driver's view of one task, for the file API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    /// The run the table tracks, and whether it is still going (not in a terminal state).
    pub run: Option<(String, bool)>,
    /// The sandbox GC removed sandboxes of this task (remembered since the agent started, up to
    /// a bound).
    pub removed_by_gc: bool,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct LinkEvent {
    generation: u64,
    kind: LinkEventKind,
}

enum LinkEventKind {
    Message(Box<v1::MasterMessage>),
    Closed {
        hint: Option<String>,
        reason: String,
    },
}

struct Connected {
    addr: String,
    generation: u64,
    out: mpsc::Sender<v1::AgentMessage>,
    reader: JoinHandle<()>,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
}

enum LinkState {
    /// Before the first connect starts.
    Idle,
    Connecting(JoinHandle<Result<Link, LinkError>>),
    Connected(Connected),
}

enum Step {
    Shutdown,
    Run(RunEvent),
    Link(LinkEvent),
    Registered(Result<Result<Link, LinkError>, JoinError>),
    WatcherDone(Result<(), JoinError>),
    Query(Query),
    Timer,
}

pub(super) struct Driver {
    config: AgentConfig,
    /// Who tasks run as (from `--task-user` and `--allow-root-tasks`).
    task_users: TaskUserPolicy,
    work: WorkDir,
    agent_id: Option<String>,
    table: TaskTable,
    updates: StatusUpdateManager,
    hello_tx: watch::Sender<v1::AgentMessage>,
    run_events_tx: mpsc::Sender<RunEvent>,
    run_events_rx: mpsc::Receiver<RunEvent>,
    link_events_tx: mpsc::Sender<LinkEvent>,
    link_events_rx: mpsc::Receiver<LinkEvent>,
    watchers: JoinSet<()>,
    link: LinkState,
    generation: u64,
    /// When to signal a killed task's supervisor next (escalation, then resends).
    kill_timers: BTreeMap<TaskKey, Instant>,
    /// Origin of the status-update manager's millisecond clock.
    clock_origin: Instant,
    queries_rx: mpsc::Receiver<Query>,
    /// Tasks whose sandboxes the GC removed, and the order they were added in (bounded by
    /// `GC_REMOVED_REMEMBERED_MAX`).
    gc_removed: BTreeSet<TaskKey>,
    gc_removed_order: VecDeque<TaskKey>,
}

impl Driver {
    /// Opens the checkpoints, recovers the tasks of an earlier run and starts connecting.
    pub(super) fn start(
        config: AgentConfig,
        task_users: TaskUserPolicy,
        work: WorkDir,
        queries_rx: mpsc::Receiver<Query>,
    ) -> Result<Driver, AgentError> {
        let (updates, recovered) =
            StatusUpdateManager::open(work.status_updates_dir(), config.status_update_config())?;
        let agent_id = work.read_agent_id()?;
        let entries = work.load_tasks()?;
        let (run_events_tx, run_events_rx) = mpsc::channel(RUN_EVENTS_MAX);
        let (link_events_tx, link_events_rx) = mpsc::channel(LINK_EVENTS_MAX);
        let (hello_tx, hello_rx) = watch::channel(v1::AgentMessage { message: None });
        let link_config = config.link_config();
        let mut driver = Driver {
            config,
            task_users,
            work,
            agent_id,
            table: TaskTable::new(),
            updates,
            hello_tx,
            run_events_tx,
            run_events_rx,
            link_events_tx,
            link_events_rx,
            watchers: JoinSet::new(),
            link: LinkState::Idle,
            generation: 0,
            kill_timers: BTreeMap::new(),
            clock_origin: Instant::now(),
            queries_rx,
            gc_removed: BTreeSet::new(),
            gc_removed_order: VecDeque::new(),
        };
        tracing::info!(
            agent_id = driver.agent_id.as_deref().unwrap_or(""),
            task_records = entries.len(),
            pending_updates = recovered.pending.len(),
            "recovering"
        );
        for entry in entries {
            driver.recover_task(entry)?;
        }
        driver.refresh_hello();
        driver.link = LinkState::Connecting(tokio::spawn(master_link::connect(
            link_config,
            hello_rx,
            None,
            Duration::ZERO,
        )));
        Ok(driver)
    }

    /// Re-adopts one task found in the work dir.
    fn recover_task(&mut self, mut entry: TaskEntry) -> Result<(), AgentError> {
        let key = entry.key();
        // The update checkpoint is written before the task record: it may know a newer state.
        let pending = self.updates.pending(&key.framework_id, &key.task_id);
        if let Some(last) = pending.last()
            && !entry.state.is_terminal()
            && last.state != entry.state
        {
            entry.state = last.state;
            self.work.save_task(&entry)?;
        }
        if entry.state.is_terminal() {
            if pending.is_empty() {
                // Its terminal update was acknowledged; the agent stopped before forgetting it.
                self.work.remove_task(&key)?;
            } else {
                tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, state = ?entry.state, "recovered a finished task awaiting acknowledgement");
                self.table.insert(entry);
            }
            return Ok(());
        }
        let Some(run_id) = entry.run_id.clone() else {
            self.table.insert(entry);
            self.emit_ended(
                &key,
                &RunOutcome::SupervisorLost {
                    detail: "the agent stopped before starting it".into(),
                },
            )?;
            return Ok(());
        };
        let sandbox = self.work.sandbox(&key, &run_id)?;
        let started = entry.state == TaskState::Running;
        if let Some(kill) = entry.kill {
            // Escalate when the grace asked for is over, counted from the original request.
            let due_unix = kill.requested_at_unix_ms.saturating_add(kill.grace_ms);
            let left = Duration::from_millis(due_unix.saturating_sub(now_unix_ms()));
            self.kill_timers.insert(key.clone(), Instant::now() + left);
        }
        tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, run_id = %run_id, state = ?entry.state, "re-adopting task");
        let supervisor = entry.supervisor;
        self.table.insert(entry);
        self.watch(Watch::new(key, run_id, sandbox, None, supervisor, started));
        Ok(())
    }

    pub(super) async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let result = loop {
            let deadline = self.next_deadline();
            let step = tokio::select! {
                _ = &mut shutdown => Step::Shutdown,
                Some(ev) = self.run_events_rx.recv() => Step::Run(ev),
                Some(ev) = self.link_events_rx.recv() => Step::Link(ev),
                res = registration(&mut self.link) => Step::Registered(res),
                Some(done) = self.watchers.join_next() => Step::WatcherDone(done),
                Some(q) = self.queries_rx.recv() => Step::Query(q),
                _ = sleep_until(deadline) => Step::Timer,
            };
            let handled = match step {
                Step::Shutdown => break Ok(()),
                Step::Run(ev) => self.on_run_event(ev),
                Step::Link(ev) => self.on_link_event(ev),
                Step::Registered(Ok(Ok(link))) => self.on_registered(link),
                Step::Registered(Ok(Err(e))) => Err(e.into()),
                Step::Registered(Err(join)) => {
                    tracing::error!(error = %join, "the connect task failed; reconnecting");
                    self.start_connecting(None, self.config.timing.reconnect_backoff_min);
                    Ok(())
                }
                Step::WatcherDone(Err(join)) if join.is_panic() => {
                    tracing::error!(error = %join, "a task watcher panicked");
                    Ok(())
                }
                Step::WatcherDone(_) => Ok(()),
                Step::Query(q) => {
                    self.on_query(q);
                    Ok(())
                }
                Step::Timer => self.on_timer(),
            };
            if let Err(e) = handled {
                break Err(e);
            }
        };
        self.stop().await;
        result
    }

    async fn stop(&mut self) {
        match &self.link {
            LinkState::Idle => {}
            LinkState::Connecting(h) => h.abort(),
            LinkState::Connected(c) => c.reader.abort(),
        }
        self.watchers.shutdown().await;
        tracing::info!(
            tasks = self.table.len(),
            "agent stopped; its tasks keep running and are re-adopted on the next start"
        );
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = Instant::now() + IDLE_WAKEUP;
        if let LinkState::Connected(c) = &self.link {
            deadline = deadline.min(c.next_heartbeat);
            if let Some(ms) = self.updates.next_deadline_ms() {
                deadline = deadline.min(self.clock_origin + Duration::from_millis(ms));
            }
        }
        if let Some(t) = self.kill_timers.values().min() {
            deadline = deadline.min(*t);
        }
        deadline
    }

    fn clock_ms(&self) -> u64 {
        duration_ms(self.clock_origin.elapsed())
    }

    fn watch_timing(&self) -> WatchTiming {
        let t = &self.config.timing;
        WatchTiming {
            start_poll: t.task_start_poll,
            start_timeout: t.task_start_timeout,
            exit_poll: t.task_exit_poll,
        }
    }

    fn watch(&mut self, w: Watch) {
        let timing = self.watch_timing();
        self.watchers
            .spawn(runs::watch_run(w, timing, self.run_events_tx.clone()));
    }

    fn default_grace_ms(&self) -> u64 {
        duration_ms(self.config.timing.kill_grace_default)
    }

    // ----- questions from the file API and the sandbox GC -----

    fn on_query(&mut self, query: Query) {
        match query {
            Query::Task { key, reply } => {
                let run = self
                    .table
                    .get(&key)
                    .and_then(|e| e.run_id.clone().map(|run| (run, !e.state.is_terminal())));
                let removed_by_gc = self.gc_removed.contains(&key);
                let _ = reply.send(TaskView { run, removed_by_gc });
            }
            Query::Collect { round, reply } => {
                let collected = self.collect(round);
                let _ = reply.send(collected);
            }
        }
    }

    /// The driver's part of a GC round (see [`super::sandbox_gc`]): picks the runs to remove and
    /// moves their sandboxes into the trash, then removes task and framework directories left
    /// empty. Failures are logged and skipped: the next round tries again.
    fn collect(&mut self, round: GcRound) -> Collected {
        let table = &self.table;
        let tracked = |r: &super::sandbox_gc::RunOnDisk| {
            table
                .get(&r.key)
                .is_some_and(|e| e.run_id.as_deref() == Some(r.run_id.as_str()))
        };
        let picked = select(&round.runs, tracked, round.now_ms, &round.policy);
        let mut out = Collected {
            bytes_left: round
                .runs
                .iter()
                .fold(0u64, |t, r| t.saturating_add(r.bytes)),
            ..Collected::default()
        };
        if picked.is_empty() {
            return out;
        }
        let trash_dir = records::gc_trash_dir(self.work.root());
        if let Err(e) =
            crate::path_io::ensure_dir_mode(&trash_dir, crate::path_io::PRIVATE_DIR_MODE)
        {
            tracing::error!(dir = %trash_dir.display(), error = %e, "cannot create the sandbox GC's trash directory");
            return out;
        }
        let mut emptied: BTreeSet<TaskKey> = BTreeSet::new();
        for (i, reason) in picked {
            let run = &round.runs[i];
            let trash: PathBuf = trash_dir.join(Uuid::new_v4().simple().to_string());
            match std::fs::rename(&run.dir, &trash) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(sandbox = %run.dir.display(), error = %e, "cannot remove a sandbox");
                    continue;
                }
            }
            tracing::info!(task_id = %run.key.task_id, framework_id = %run.key.framework_id, run_id = %run.run_id, bytes = run.bytes, ?reason, "sandbox GC: removing the sandbox of a finished run");
            match reason {
                GcReason::Age => out.by_age += 1,
                GcReason::Disk => out.by_disk += 1,
            }
            out.bytes = out.bytes.saturating_add(run.bytes);
            out.bytes_left = out.bytes_left.saturating_sub(run.bytes);
            out.trash.push(trash);
            emptied.insert(run.key.clone());
        }
        let mut frameworks: BTreeSet<String> = BTreeSet::new();
        for key in emptied {
            self.remember_gc_removed(key.clone());
            if !self.table.contains(&key) {
                // Fails (harmlessly) while other runs of the task are still there.
                let _ = std::fs::remove_dir(records::task_sandboxes_dir(self.work.root(), &key));
                frameworks.insert(key.framework_id);
            }
        }
        for fw in frameworks {
            if self.table.iter().any(|e| e.framework.id == fw) {
                continue;
            }
            let fw_dir = records::framework_dir(self.work.root(), &fw);
            if std::fs::remove_dir(fw_dir.join(records::SANDBOXES_DIR)).is_ok() {
                let _ = std::fs::remove_dir(&fw_dir);
            }
        }
        out
    }

    fn remember_gc_removed(&mut self, key: TaskKey) {
        if !self.gc_removed.insert(key.clone()) {
            return;
        }
        self.gc_removed_order.push_back(key);
        while self.gc_removed_order.len() > GC_REMOVED_REMEMBERED_MAX {
            if let Some(old) = self.gc_removed_order.pop_front() {
                self.gc_removed.remove(&old);
            }
        }
    }

    // ----- the master link -----

    fn start_connecting(&mut self, hint: Option<String>, delay: Duration) {
        if let LinkState::Connected(c) = &self.link {
            c.reader.abort();
        }
        self.link = LinkState::Idle;
        self.refresh_hello();
        self.link = LinkState::Connecting(tokio::spawn(master_link::connect(
            self.config.link_config(),
            self.hello_tx.subscribe(),
            hint,
            delay,
        )));
    }

    fn on_registered(&mut self, link: Link) -> Result<(), AgentError> {
        let id = link.registered.agent_id.clone();
        if id.is_empty() {
            tracing::warn!(master = %link.addr, "the master registered this agent without an id; reconnecting");
            self.start_connecting(None, self.config.timing.reconnect_backoff_min);
            return Ok(());
        }
        match &self.agent_id {
            None => {
                self.work.write_agent_id(&id)?;
                tracing::info!(agent_id = %id, master = %link.addr, master_id = %link.registered.master_id, "registered");
                self.agent_id = Some(id);
            }
            Some(ours) if *ours != id => {
                return Err(AgentError::IdChanged {
                    master: link.addr,
                    ours: ours.clone(),
                    theirs: id,
                });
            }
            Some(_) => {
                tracing::info!(agent_id = %id, master = %link.addr, master_id = %link.registered.master_id, tasks = self.table.len(), "re-registered");
            }
        }
        let heartbeat_interval = match link.registered.heartbeat_interval_ms {
            0 => HEARTBEAT_INTERVAL_FALLBACK,
            ms => Duration::from_millis(ms),
        };
        self.generation += 1;
        let reader = tokio::spawn(read_stream(
            link.inbound,
            self.generation,
            self.link_events_tx.clone(),
        ));
        self.link = LinkState::Connected(Connected {
            addr: link.addr,
            generation: self.generation,
            out: link.out,
            reader,
            heartbeat_interval,
            next_heartbeat: Instant::now() + heartbeat_interval,
        });
        self.updates.retry_all_now();
        self.flush_updates();
        Ok(())
    }

    fn on_link_event(&mut self, ev: LinkEvent) -> Result<(), AgentError> {
        let current =
            matches!(&self.link, LinkState::Connected(c) if c.generation == ev.generation);
        if !current {
            return Ok(());
        }
        match ev.kind {
            LinkEventKind::Message(msg) => self.on_master_message(*msg),
            LinkEventKind::Closed { hint, reason } => {
                let addr = match &self.link {
                    LinkState::Connected(c) => c.addr.clone(),
                    LinkState::Idle | LinkState::Connecting(_) => String::new(),
                };
                tracing::warn!(master = %addr, %reason, leader = hint.as_deref().unwrap_or(""), "lost the master; reconnecting");
                let delay = if hint.is_some() {
                    Duration::ZERO
                } else {
                    self.config.timing.reconnect_backoff_min
                };
                self.start_connecting(hint, delay);
                Ok(())
            }
        }
    }

    /// Queues a message to the master; false when not connected or the queue is full (status
    /// updates are retried anyway; a heartbeat is just skipped).
    fn send(&mut self, msg: v1::AgentMessage) -> bool {
        let LinkState::Connected(c) = &self.link else {
            return false;
        };
        match c.out.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(master = %c.addr, "outbound queue to the master is full; will retry");
                false
            }
            // The stream is closing; the reader reports it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn flush_updates(&mut self) {
        if !matches!(self.link, LinkState::Connected(_)) {
            return;
        }
        let Some(agent_id) = self.agent_id.clone() else {
            return;
        };
        for update in self.updates.next_to_send(self.clock_ms()) {
            tracing::debug!(task_id = %update.task_id, framework_id = %update.framework_id, state = ?update.state, uuid = %update.uuid, "sending status update");
            self.send(convert::status_update_message(&update, &agent_id));
        }
    }

    fn on_timer(&mut self) -> Result<(), AgentError> {
        let now = Instant::now();
        if let (LinkState::Connected(c), Some(agent_id)) = (&mut self.link, &self.agent_id)
            && now >= c.next_heartbeat
        {
            c.next_heartbeat = now + c.heartbeat_interval;
            let hb = v1::AgentMessage {
                message: Some(agent_message::Message::Heartbeat(v1::AgentHeartbeat {
                    agent_id: agent_id.clone(),
                })),
            };
            self.send(hb);
        }
        self.flush_updates();
        let due: Vec<TaskKey> = self
            .kill_timers
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if self.table.get(&key).is_some_and(|e| !e.state.is_terminal()) {
                tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, "kill grace over; signalling the supervisor again");
                self.signal_supervisor(&key);
                self.kill_timers
                    .insert(key, now + self.config.timing.kill_resend_interval);
            } else {
                self.kill_timers.remove(&key);
            }
        }
        Ok(())
    }

    fn hello(&self) -> v1::AgentMessage {
        let r = &self.config.resources;
        let agent = v1::AgentInfo {
            id: self.agent_id.clone().unwrap_or_default(),
            hostname: self.config.hostname.clone(),
            address: self.config.listen.clone(),
            resources: Some(convert::resources(r)),
            attributes: r
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        if self.agent_id.is_none() {
            return v1::AgentMessage {
                message: Some(agent_message::Message::Register(v1::Register {
                    agent: Some(agent),
                })),
            };
        }
        let mut frameworks: BTreeMap<String, v1::FrameworkInfo> = BTreeMap::new();
        let tasks = self
            .table
            .iter()
            .map(|e| {
                frameworks
                    .entry(e.framework.id.clone())
                    .or_insert_with(|| v1::FrameworkInfo::from(&e.framework));
                v1::AgentTask {
                    framework_id: e.framework.id.clone(),
                    task: Some(v1::TaskInfo::from(&e.task)),
                    state: v1::TaskState::from(e.state) as i32,
                }
            })
            .collect();
        v1::AgentMessage {
            message: Some(agent_message::Message::Reregister(v1::Reregister {
                agent: Some(agent),
                tasks,
                frameworks: frameworks.into_values().collect(),
            })),
        }
    }

    /// Keeps the hello the connect task sends current. While connected nobody reads it, so it is
    /// rebuilt (a walk over every task) only when connecting or about to.
    fn refresh_hello(&mut self) {
        if matches!(self.link, LinkState::Connected(_)) {
            return;
        }
        let hello = self.hello();
        self.hello_tx.send_replace(hello);
    }

    // ----- messages from the master -----

    fn on_master_message(&mut self, msg: v1::MasterMessage) -> Result<(), AgentError> {
        match msg.message {
            Some(master_message::Message::RunTask(rt)) => self.on_run_task(rt),
            Some(master_message::Message::KillTask(k)) => {
                let key = TaskKey::new(k.framework_id, k.task_id);
                self.kill(&key, k.kill_grace_period_ms, true)
            }
            Some(master_message::Message::Acknowledgement(a)) => self.on_ack(a),
            Some(master_message::Message::ShutdownFramework(s)) => {
                let keys = self.table.active_of_framework(&s.framework_id);
                tracing::info!(framework_id = %s.framework_id, tasks = keys.len(), "shutting down framework");
                for key in keys {
                    self.kill(&key, 0, false)?;
                }
                Ok(())
            }
            Some(master_message::Message::Refused(r)) => {
                let master = match &self.link {
                    LinkState::Connected(c) => c.addr.clone(),
                    LinkState::Idle | LinkState::Connecting(_) => String::new(),
                };
                Err(AgentError::Link(LinkError::Refused {
                    master,
                    message: r.message,
                }))
            }
            Some(master_message::Message::Registered(_)) => {
                tracing::warn!("ignoring a second Registered on an open stream");
                Ok(())
            }
            None => {
                tracing::warn!("ignoring an empty message from the master");
                Ok(())
            }
        }
    }

    fn on_run_task(&mut self, rt: v1::RunTask) -> Result<(), AgentError> {
        let (Some(fw_info), Some(task_info)) = (rt.framework.as_ref(), rt.task.as_ref()) else {
            tracing::warn!("ignoring a RunTask without framework or task");
            return Ok(());
        };
        let framework = FrameworkDescription::from(fw_info);
        let task = TaskDescription::from(task_info);
        let key = TaskKey::new(framework.id.clone(), task.task_id.clone());
        if let Err(invalid) = validate_ids(&key.framework_id, &key.task_id) {
            // No record can be kept under these ids: answer once, without a checkpoint.
            tracing::warn!(%invalid, "refusing a task whose ids cannot be stored");
            self.send_unrecorded(
                &key,
                StatusDraft::new(TaskState::Error, invalid.to_string(), REASON_INVALID_TASK),
            );
            return Ok(());
        }
        if self.table.contains(&key) {
            tracing::warn!(task_id = %key.task_id, framework_id = %key.framework_id, "ignoring RunTask for a task this agent already has");
            return Ok(());
        }
        if !self
            .updates
            .pending(&key.framework_id, &key.task_id)
            .is_empty()
        {
            // An earlier task with this id still has an unacknowledged terminal update (e.g. the
            // TASK_LOST of a kill for it): its stream takes no more updates until acknowledged.
            tracing::warn!(task_id = %key.task_id, framework_id = %key.framework_id, "ignoring RunTask for a task id whose last update is not acknowledged yet");
            return Ok(());
        }
        let agent_id = self.agent_id.clone().unwrap_or_default();
        let ctx = LaunchContext {
            agent_id: &agent_id,
            agent_ports: &self.config.resources.ports,
            default_kill_grace_ms: self.default_grace_ms(),
        };
        let validated = validate(&key.framework_id, &task, &ctx, |p| {
            self.table.port_holder(p)
        })
        .and_then(|valid| {
            // After the master: it checks (with ACLs) that the framework may use this user; the
            // agent checks that it has the user, and that root is allowed here.
            let user = self
                .task_users
                .resolve(&task.user, &SystemUsers)
                .map_err(|refusal| InvalidTask {
                    field: "task.user",
                    reason: refusal.to_string(),
                })?;
            Ok((valid, user))
        });
        let mut entry = TaskEntry {
            framework,
            task,
            run_id: None,
            supervisor: None,
            state: TaskState::Staging,
            kill: None,
        };
        let (valid, user) = match validated {
            Ok(v) => v,
            Err(invalid) => {
                tracing::warn!(task_id = %key.task_id, framework_id = %key.framework_id, %invalid, "refusing task");
                self.table.insert(entry);
                return self.emit(
                    &key,
                    StatusDraft::new(TaskState::Error, invalid.to_string(), REASON_INVALID_TASK),
                );
            }
        };
        let run_id = Uuid::new_v4().simple().to_string();
        let spec = SupervisorSpec {
            task_id: key.task_id.clone(),
            run_id: run_id.clone(),
            work_dir: self.work.framework_dir(&key.framework_id),
            command: valid.command,
            env: valid.env,
            ports: valid.ports,
            cpus: valid.cpus,
            mem_bytes: valid.mem_bytes,
            grace_period_ms: valid.grace_period_ms,
            oom_poll_interval_ms: duration_ms(self.config.timing.oom_poll),
            agent_id: Some(agent_id.clone()),
            isolation: self.config.isolation,
            cgroup_parent: self.config.cgroup_parent.clone(),
            user,
        };
        let sandbox = match spec.validate() {
            Ok(sandbox) => sandbox,
            Err(e) => {
                // validate() above covers every field; this is the supervisor's own last word.
                self.table.insert(entry);
                return self.emit(
                    &key,
                    StatusDraft::new(TaskState::Error, e.to_string(), REASON_INVALID_TASK),
                );
            }
        };
        entry.run_id = Some(run_id.clone());
        self.work.save_task(&entry)?;
        self.table.insert(entry);
        tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, %run_id, sandbox = %sandbox.dir().display(), user = spec.user.as_deref().unwrap_or("(the agent's)"), "launching task");
        let spawned = self
            .work
            .create_task_path(&key)
            .map_err(|e| crate::supervisor::error_chain(&e))
            .and_then(|()| spawn_supervisor(&self.config.supervisor, &spec, &sandbox));
        match spawned {
            Ok(spawned) => {
                if let Some(e) = self.table.get_mut(&key) {
                    e.supervisor = Some(spawned.identity);
                    self.work.save_task(e)?;
                }
                self.refresh_hello();
                self.watch(Watch::new(
                    key,
                    run_id,
                    sandbox,
                    Some(spawned.child),
                    Some(spawned.identity),
                    false,
                ));
                Ok(())
            }
            Err(error) => {
                tracing::error!(task_id = %key.task_id, %error, "cannot start the supervisor");
                self.emit_ended(&key, &RunOutcome::SpawnFailed { error })
            }
        }
    }

    /// A kill from the master (`answer_unknown`: a `KillTask`, which must be answered even for a
    /// task this agent does not know) or from `ShutdownFramework`.
    fn kill(
        &mut self,
        key: &TaskKey,
        grace_override_ms: u64,
        answer_unknown: bool,
    ) -> Result<(), AgentError> {
        let decision = self.table.request_kill(
            key,
            grace_override_ms,
            self.default_grace_ms(),
            now_unix_ms(),
        );
        match decision {
            KillDecision::Unknown if answer_unknown => {
                tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, "kill for an unknown task: answering TASK_LOST");
                let draft = StatusDraft::new(TaskState::Lost, "unknown task", REASON_UNKNOWN_TASK);
                if validate_ids(&key.framework_id, &key.task_id).is_err() {
                    self.send_unrecorded(key, draft);
                    return Ok(());
                }
                self.record(key, draft)?;
                self.flush_updates();
                Ok(())
            }
            KillDecision::Unknown
            | KillDecision::AlreadyTerminal
            | KillDecision::AlreadyKilling => {
                tracing::debug!(task_id = %key.task_id, framework_id = %key.framework_id, ?decision, "kill needs no action");
                Ok(())
            }
            KillDecision::Signal { grace_ms, first } => {
                if let Some(e) = self.table.get(key) {
                    self.work.save_task(e)?;
                }
                let escalate_at = Instant::now() + Duration::from_millis(grace_ms);
                if first {
                    tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, grace_ms, "killing task");
                    self.signal_supervisor(key);
                    self.kill_timers.insert(key.clone(), escalate_at);
                } else {
                    let t = self.kill_timers.entry(key.clone()).or_insert(escalate_at);
                    *t = (*t).min(escalate_at);
                }
                self.refresh_hello();
                Ok(())
            }
        }
    }

    /// SIGTERM to the task's supervisor (it kills the task's group, and escalates on a second).
    fn signal_supervisor(&mut self, key: &TaskKey) {
        let Some(entry) = self.table.get(key) else {
            return;
        };
        let identity = entry.supervisor.or_else(|| {
            let run_id = entry.run_id.as_ref()?;
            let rec = self
                .work
                .sandbox(key, run_id)
                .ok()?
                .read_supervisor()
                .ok()??;
            Some(ProcessIdentity {
                pid: rec.supervisor_pid,
                start_ticks: rec.supervisor_start_ticks,
            })
        });
        match identity {
            Some(sup) if sup.signal(Signal::SIGTERM) => {}
            Some(_) => {
                tracing::debug!(task_id = %key.task_id, "the supervisor is already gone; its watcher reports the end")
            }
            None => {
                tracing::debug!(task_id = %key.task_id, "no supervisor known yet; will signal again")
            }
        }
    }

    fn on_ack(&mut self, ack: v1::Acknowledgement) -> Result<(), AgentError> {
        let Ok(uuid) = Uuid::from_slice(&ack.uuid) else {
            tracing::warn!(task_id = %ack.task_id, framework_id = %ack.framework_id, len = ack.uuid.len(), "ignoring an acknowledgement whose uuid is not 16 bytes");
            return Ok(());
        };
        let key = TaskKey::new(ack.framework_id, ack.task_id);
        let in_flight = self
            .updates
            .pending(&key.framework_id, &key.task_id)
            .into_iter()
            .next();
        let terminal_acked = in_flight
            .as_ref()
            .is_some_and(|u| u.uuid == uuid && u.state.is_terminal());
        if terminal_acked && self.table.contains(&key) {
            // Forget the task first: a crash before the ack is checkpointed resends the update,
            // but a restarted agent never reports the task again.
            self.work.remove_task(&key)?;
            self.table.remove(&key);
            self.kill_timers.remove(&key);
            self.refresh_hello();
        }
        let outcome = self
            .updates
            .acknowledge(&key.framework_id, &key.task_id, uuid)?;
        tracing::debug!(task_id = %key.task_id, framework_id = %key.framework_id, %uuid, ?outcome, "acknowledgement");
        self.flush_updates();
        Ok(())
    }

    // ----- runs -----

    fn on_run_event(&mut self, ev: RunEvent) -> Result<(), AgentError> {
        let (key, run_id) = match &ev {
            RunEvent::Started { key, run_id } | RunEvent::Ended { key, run_id, .. } => {
                (key.clone(), run_id.clone())
            }
        };
        let current = self
            .table
            .get(&key)
            .is_some_and(|e| e.run_id.as_deref() == Some(run_id.as_str()));
        if !current {
            tracing::debug!(task_id = %key.task_id, %run_id, "ignoring an event of a run the agent no longer tracks");
            return Ok(());
        }
        match ev {
            RunEvent::Started { .. } => match self.table.on_started(&key) {
                Some(draft) => self.emit(&key, draft),
                None => Ok(()),
            },
            RunEvent::Ended { outcome, .. } => self.emit_ended(&key, &outcome),
        }
    }

    fn emit_ended(&mut self, key: &TaskKey, outcome: &RunOutcome) -> Result<(), AgentError> {
        self.kill_timers.remove(key);
        match self.table.on_ended(key, outcome) {
            Some(draft) => self.emit(key, draft),
            None => Ok(()),
        }
    }

    /// Checkpoints the update, then the task's new state, then sends.
    fn emit(&mut self, key: &TaskKey, draft: StatusDraft) -> Result<(), AgentError> {
        let state = draft.state;
        tracing::info!(task_id = %key.task_id, framework_id = %key.framework_id, ?state, message = %draft.message, reason = %draft.reason, exit_code = ?draft.exit_code, signal = ?draft.signal, "task state");
        self.record(key, draft)?;
        self.table.set_state(key, state);
        if let Some(e) = self.table.get(key) {
            self.work.save_task(e)?;
        }
        self.refresh_hello();
        self.flush_updates();
        Ok(())
    }

    /// Checkpoints an update in the status-update manager. Errors that lose only this update
    /// (limits, a refused field) are logged; a checkpoint that cannot be written is fatal.
    fn record(&mut self, key: &TaskKey, draft: StatusDraft) -> Result<(), AgentError> {
        let update = StatusUpdate {
            uuid: Uuid::new_v4(),
            framework_id: key.framework_id.clone(),
            task_id: key.task_id.clone(),
            state: draft.state,
            message: truncate(draft.message, STATUS_MESSAGE_BYTES_MAX),
            exit_code: draft.exit_code,
            signal: draft.signal,
            timestamp_ms: now_unix_ms(),
            reason: draft.reason,
        };
        match self.updates.record(update) {
            Ok(()) => Ok(()),
            Err(
                e @ (StatusUpdateError::TooManyPending { .. }
                | StatusUpdateError::TooManyPendingForTask { .. }
                | StatusUpdateError::AfterTerminal { .. }
                | StatusUpdateError::DuplicateUuid { .. }
                | StatusUpdateError::InvalidField { .. }),
            ) => {
                tracing::error!(task_id = %key.task_id, framework_id = %key.framework_id, error = %e, "status update not recorded");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends an update that cannot be checkpointed (its ids are not storable); at most once.
    fn send_unrecorded(&mut self, key: &TaskKey, draft: StatusDraft) {
        let Some(agent_id) = self.agent_id.clone() else {
            return;
        };
        let update = StatusUpdate {
            uuid: Uuid::new_v4(),
            framework_id: key.framework_id.clone(),
            task_id: key.task_id.clone(),
            state: draft.state,
            message: truncate(draft.message, STATUS_MESSAGE_BYTES_MAX),
            exit_code: draft.exit_code,
            signal: draft.signal,
            timestamp_ms: now_unix_ms(),
            reason: draft.reason,
        };
        self.send(convert::status_update_message(&update, &agent_id));
    }
}

/// The connect task's result, or never when connected.
async fn registration(link: &mut LinkState) -> Result<Result<Link, LinkError>, JoinError> {
    match link {
        LinkState::Connecting(handle) => handle.await,
        LinkState::Idle | LinkState::Connected(_) => std::future::pending().await,
    }
}

/// Forwards the master's messages to the driver until the stream ends.
async fn read_stream(
    mut inbound: Streaming<v1::MasterMessage>,
    generation: u64,
    events: mpsc::Sender<LinkEvent>,
) {
    let kind = loop {
        match inbound.message().await {
            Ok(Some(msg)) => {
                let ev = LinkEvent {
                    generation,
                    kind: LinkEventKind::Message(Box::new(msg)),
                };
                if events.send(ev).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                break LinkEventKind::Closed {
                    hint: None,
                    reason: "the master ended the stream".into(),
                };
            }
            Err(status) => {
                break LinkEventKind::Closed {
                    hint: leader_hint(&status),
                    reason: format!("{:?}: {}", status.code(), status.message()),
                };
            }
        }
    };
    let _ = events.send(LinkEvent { generation, kind }).await;
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        // Proves an over-long (multi-byte) message is shortened, never split inside a character.
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("héllo".into(), 3), "hé");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
