// The in-test master and the agent harness shared by `daemon.rs` and `files.rs` (included
// with `include!`, so both see the same private items). See `daemon.rs` for what it does.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_agent::daemon::{self, AgentConfig, AgentError, LinkError, SupervisorCommand};
use drover_agent::{AgentResources, Isolation, IsolationKind, IsolationPolicy, Sandbox};
use drover_proto::v1::{
    self, agent_api_server::AgentApi, agent_api_server::AgentApiServer, agent_message,
    master_message,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const WAIT_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
const HEARTBEAT_MS: u64 = 100;
const MIB: u64 = 1024 * 1024;

static NEXT: AtomicU32 = AtomicU32::new(0);

// ----- the master's side, played by the test -----

/// What the test master does with a new stream.
#[derive(Clone, Debug)]
enum Mode {
    /// Lead: answer the hello with Registered (a new agent gets `new_agent_id`).
    Lead { new_agent_id: String },
    /// Do not lead: UNAVAILABLE naming `leader` in `drover-leader`.
    Redirect { leader: String },
    /// Refuse the agent with this message.
    Refuse { message: String },
}

/// One message the agent sent, with the number of the stream (1, 2, ...) it came on.
#[derive(Clone, Debug)]
struct Seen {
    conn: u64,
    msg: v1::AgentMessage,
}

struct Control {
    mode: Mode,
    conns: u64,
    current: Option<(u64, mpsc::Sender<Result<v1::MasterMessage, Status>>)>,
}

#[derive(Clone)]
struct TestMaster {
    control: Arc<Mutex<Control>>,
    seen: mpsc::Sender<Seen>,
}

#[tonic::async_trait]
impl AgentApi for TestMaster {
    type AttachStream = ReceiverStream<Result<v1::MasterMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mode = self.control.lock().unwrap().mode.clone();
        let new_agent_id = match mode {
            Mode::Redirect { leader } => {
                let mut s = Status::unavailable("not the leader");
                s.metadata_mut()
                    .insert(drover_proto::LEADER_METADATA_KEY, leader.parse().unwrap());
                return Err(s);
            }
            Mode::Refuse { .. } | Mode::Lead { .. } => match &mode {
                Mode::Lead { new_agent_id } => Some(new_agent_id.clone()),
                _ => None,
            },
        };
        let mut inbound = request.into_inner();
        let hello = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no hello"))?;
        let (tx, rx) = mpsc::channel(256);
        let conn = {
            let mut c = self.control.lock().unwrap();
            c.conns += 1;
            c.conns
        };
        let reply = match (&new_agent_id, &hello.message) {
            (None, _) => master_message::Message::Refused(v1::AgentRefused {
                message: match &mode {
                    Mode::Refuse { message } => message.clone(),
                    _ => unreachable!(),
                },
            }),
            (Some(new_id), Some(agent_message::Message::Register(_))) => {
                master_message::Message::Registered(v1::Registered {
                    agent_id: new_id.clone(),
                    heartbeat_interval_ms: HEARTBEAT_MS,
                    master_id: "test-master".into(),
                })
            }
            (Some(_), Some(agent_message::Message::Reregister(r))) => {
                master_message::Message::Registered(v1::Registered {
                    agent_id: r.agent.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                    heartbeat_interval_ms: HEARTBEAT_MS,
                    master_id: "test-master".into(),
                })
            }
            _ => return Err(Status::invalid_argument("first message is not a hello")),
        };
        tx.send(Ok(v1::MasterMessage {
            message: Some(reply),
        }))
        .await
        .unwrap();
        // Only now may the test send on this stream (and learn of the hello): nothing it sends
        // can overtake the answer to the hello.
        self.control.lock().unwrap().current = Some((conn, tx.clone()));
        let _ = self
            .seen
            .send(Seen {
                conn,
                msg: hello.clone(),
            })
            .await;
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if seen.send(Seen { conn, msg }).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A test master serving on a loopback port, plus everything the agent sent it.
struct Master {
    addr: String,
    control: Arc<Mutex<Control>>,
    rx: mpsc::Receiver<Seen>,
    history: Vec<Seen>,
    server: JoinHandle<()>,
}

impl Master {
    async fn start(mode: Mode) -> Master {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let control = Arc::new(Mutex::new(Control {
            mode,
            conns: 0,
            current: None,
        }));
        let (seen, rx) = mpsc::channel(4096);
        let svc = TestMaster {
            control: control.clone(),
            seen,
        };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AgentApiServer::new(svc))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Master {
            addr,
            control,
            rx,
            history: Vec::new(),
            server,
        }
    }

    fn set_mode(&self, mode: Mode) {
        self.control.lock().unwrap().mode = mode;
    }

    fn conns(&self) -> u64 {
        self.control.lock().unwrap().conns
    }

    /// Sends to the agent on the current stream.
    async fn send(&self, message: master_message::Message) {
        let tx = self
            .control
            .lock()
            .unwrap()
            .current
            .as_ref()
            .map(|(_, tx)| tx.clone())
            .expect("an agent stream");
        tx.send(Ok(v1::MasterMessage {
            message: Some(message),
        }))
        .await
        .expect("agent stream open");
    }

    /// Ends the current stream with `status` (as a master losing leadership does).
    async fn end_stream(&self, status: Status) {
        let tx = self
            .control
            .lock()
            .unwrap()
            .current
            .take()
            .map(|(_, tx)| tx)
            .expect("an agent stream");
        let _ = tx.send(Err(status)).await;
    }

    /// Waits until `f` finds something in everything the agent sent so far.
    async fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(&[Seen]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            if let Some(v) = f(&self.history) {
                return v;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(s)) => self.history.push(s),
                Ok(None) => panic!("master channel closed while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {WAIT_DEADLINE:?} waiting for {what}; the agent sent:\n{}",
                    describe(&self.history)
                ),
            }
        }
    }

    /// Waits for the first status update of `fw/task` in `state` and returns it.
    async fn wait_update(&mut self, fw: &str, task: &str, state: v1::TaskState) -> v1::TaskStatus {
        let what = format!("{state:?} of {fw}/{task}");
        self.wait_for(&what, |h| {
            updates(h)
                .find(|(_, f, s)| f.as_str() == fw && s.task_id == task && s.state == state as i32)
                .map(|(_, _, s)| s.clone())
        })
        .await
    }

    /// Waits for a hello on a stream after `after_conn`.
    async fn wait_hello(&mut self, after_conn: u64) -> (u64, agent_message::Message) {
        self.wait_for("a hello", |h| {
            h.iter().find_map(|s| match &s.msg.message {
                Some(
                    m @ (agent_message::Message::Register(_)
                    | agent_message::Message::Reregister(_)),
                ) if s.conn > after_conn => Some((s.conn, m.clone())),
                _ => None,
            })
        })
        .await
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn updates(h: &[Seen]) -> impl Iterator<Item = (u64, &String, &v1::TaskStatus)> {
    h.iter().filter_map(|s| match &s.msg.message {
        Some(agent_message::Message::StatusUpdate(u)) => {
            u.status.as_ref().map(|st| (s.conn, &u.framework_id, st))
        }
        _ => None,
    })
}

fn heartbeats(h: &[Seen]) -> usize {
    h.iter()
        .filter(|s| matches!(s.msg.message, Some(agent_message::Message::Heartbeat(_))))
        .count()
}

fn describe(h: &[Seen]) -> String {
    h.iter()
        .filter(|s| !matches!(s.msg.message, Some(agent_message::Message::Heartbeat(_))))
        .map(|s| format!("  [{}] {:?}", s.conn, s.msg.message))
        .collect::<Vec<_>>()
        .join("\n")
}

// ----- building the master's messages -----

fn framework(id: &str) -> v1::FrameworkInfo {
    v1::FrameworkInfo {
        id: id.into(),
        name: format!("{id}-name"),
        role: "*".into(),
        ..Default::default()
    }
}

fn task(agent_id: &str, task_id: &str, command: v1::CommandInfo) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: task_id.into(),
        name: task_id.into(),
        agent_id: agent_id.into(),
        resources: Some(v1::Resources {
            millicpus: 100,
            mem_bytes: 64 * MIB,
            ports: vec![],
        }),
        command: Some(command),
        kill_grace_period_ms: 0,
        labels: Default::default(),
        user: String::new(),
    }
}

fn argv(args: &[&str]) -> v1::CommandInfo {
    v1::CommandInfo {
        argv: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn shell(script: &str) -> v1::CommandInfo {
    v1::CommandInfo {
        shell: script.into(),
        ..Default::default()
    }
}

fn run_task(fw: &str, t: v1::TaskInfo) -> master_message::Message {
    master_message::Message::RunTask(v1::RunTask {
        framework: Some(framework(fw)),
        task: Some(t),
    })
}

fn kill_task(fw: &str, task_id: &str, grace_ms: u64) -> master_message::Message {
    master_message::Message::KillTask(v1::KillTask {
        framework_id: fw.into(),
        task_id: task_id.into(),
        kill_grace_period_ms: grace_ms,
    })
}

fn ack(fw: &str, status: &v1::TaskStatus) -> master_message::Message {
    master_message::Message::Acknowledgement(v1::Acknowledgement {
        framework_id: fw.into(),
        task_id: status.task_id.clone(),
        uuid: status.uuid.clone(),
    })
}

// ----- processes -----

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let Some((_, rest)) = s.rsplit_once(')') else {
                    return false;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.first().is_some_and(|st| *st != "Z" && *st != "X")
                    && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
            })
        })
        .collect()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

// ----- the agent under test -----

struct RunningAgent {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), AgentError>>,
}

struct Harness {
    tmp: tempfile::TempDir,
    /// The agent's `--listen` (its file API), a free loopback port.
    listen: String,
    master: Master,
    agent: Option<RunningAgent>,
    cgroup_parent: String,
    isolation: Isolation,
}

impl Harness {
    async fn new() -> Harness {
        // The agent's log goes to the test's captured output (shown when a test fails).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "debug,h2=info,tonic=info,hyper=info,tower=info",
                    )
                }),
            )
            .with_test_writer()
            .try_init();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .to_string();
        Harness {
            tmp: tempfile::tempdir().unwrap(),
            listen,
            master: Master::start(Mode::Lead {
                new_agent_id: format!("agent-{n}"),
            })
            .await,
            agent: None,
            cgroup_parent: format!("drover-dtest-{}-{n}", std::process::id()),
            isolation: Isolation::detect(),
        }
    }

    fn work_dir(&self) -> PathBuf {
        self.tmp.path().join("work")
    }

    fn config(&self, masters: Vec<String>) -> AgentConfig {
        let mut c = AgentConfig::new(
            masters,
            self.listen.clone(),
            self.work_dir(),
            "test-host".into(),
            AgentResources {
                cpus: 2.0,
                mem_bytes: 1024 * MIB,
                ports: vec![(31000, 31009)],
                attributes: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
            },
            SupervisorCommand {
                program: PathBuf::from(env!("CARGO_BIN_EXE_drover-supervise-test")),
                arg0: None,
                args: vec![],
            },
        );
        c.cgroup_parent = self.cgroup_parent.clone();
        c.isolation = IsolationPolicy::Auto;
        let t = &mut c.timing;
        t.reconnect_backoff_min = Duration::from_millis(20);
        t.reconnect_backoff_max = Duration::from_millis(200);
        t.connect_timeout = Duration::from_secs(2);
        t.registration_timeout = Duration::from_secs(5);
        t.status_update_retry_min = Duration::from_millis(100);
        t.status_update_retry_max = Duration::from_millis(400);
        t.kill_grace_default = Duration::from_secs(2);
        t.kill_resend_interval = Duration::from_millis(500);
        t.task_start_poll = Duration::from_millis(10);
        t.task_exit_poll = Duration::from_millis(50);
        c
    }

    fn start_agent_with(&mut self, config: AgentConfig) {
        assert!(self.agent.is_none(), "agent already running");
        let (stop, stopped) = oneshot::channel();
        let handle = tokio::spawn(daemon::run(config, async move {
            let _ = stopped.await;
        }));
        self.agent = Some(RunningAgent { stop, handle });
    }

    fn start_agent(&mut self) {
        let config = self.config(vec![self.master.addr.clone()]);
        self.start_agent_with(config);
    }

    /// Stops the agent (as a shutdown would); its tasks keep running.
    async fn stop_agent(&mut self) {
        let a = self.agent.take().expect("agent running");
        let _ = a.stop.send(());
        let result = tokio::time::timeout(WAIT_DEADLINE, a.handle)
            .await
            .expect("agent stops")
            .expect("agent task");
        result.expect("agent stopped cleanly");
    }

    /// Starts the agent and waits for its first registration; returns the agent id.
    async fn registered_agent(&mut self) -> String {
        self.start_agent();
        let (_, hello) = self.master.wait_hello(0).await;
        match hello {
            agent_message::Message::Register(r) => {
                assert_eq!(r.agent.unwrap().id, "", "a new agent has no id");
            }
            other => panic!("expected Register, got {other:?}"),
        }
        let id = match self.master.control.lock().unwrap().mode.clone() {
            Mode::Lead { new_agent_id } => new_agent_id,
            other => panic!("master mode {other:?}"),
        };
        let path = self.work_dir().join("agent.json");
        wait_until("agent.json", || {
            fs::read_to_string(&path).is_ok_and(|s| s.contains(&id))
        })
        .await;
        id
    }

    /// The one run sandbox of `fw/task` (waits for it to exist).
    async fn sandbox(&self, fw: &str, task: &str) -> Sandbox {
        let dir = self
            .work_dir()
            .join("frameworks")
            .join(fw)
            .join("sandboxes")
            .join(task);
        let mut found = None;
        wait_until(&format!("the sandbox of {fw}/{task}"), || {
            let runs: Vec<PathBuf> = fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            if runs.len() == 1 {
                found = Some(runs[0].clone());
                true
            } else {
                assert!(runs.len() <= 1, "several runs of {fw}/{task}: {runs:?}");
                false
            }
        })
        .await;
        Sandbox::at(found.unwrap())
    }

    /// The task's pid (its process group id too), once its supervisor recorded it.
    async fn task_pid(&self, fw: &str, task: &str) -> i32 {
        let sandbox = self.sandbox(fw, task).await;
        let mut pid = None;
        wait_until(&format!("the task pid of {fw}/{task}"), || {
            pid = sandbox
                .read_supervisor()
                .ok()
                .flatten()
                .and_then(|r| r.task_pid);
            pid.is_some()
        })
        .await;
        pid.unwrap()
    }

    fn every_run(&self) -> Vec<Sandbox> {
        let mut out = Vec::new();
        let fws = self.work_dir().join("frameworks");
        for fw in fs::read_dir(fws).into_iter().flatten().flatten() {
            for task in fs::read_dir(fw.path().join("sandboxes"))
                .into_iter()
                .flatten()
                .flatten()
            {
                for run in fs::read_dir(task.path()).into_iter().flatten().flatten() {
                    out.push(Sandbox::at(run.path()));
                }
            }
        }
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            a.handle.abort();
        }
        // Supervisors run in sessions of their own and outlive the agent: take down whatever this
        // test left running (a passing test leaves nothing; a failing one may).
        for sandbox in self.every_run() {
            if sandbox.read_exit().ok().flatten().is_some() {
                continue;
            }
            if let Ok(Some(rec)) = sandbox.read_supervisor() {
                if let Some(pgid) = rec.task_pgid
                    && alive(pgid)
                {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                if alive(rec.supervisor_pid) {
                    let _ = kill(Pid::from_raw(rec.supervisor_pid), Signal::SIGKILL);
                }
            }
        }
        if let Err(e) = self.isolation.remove_parent(&self.cgroup_parent) {
            eprintln!("could not remove test cgroup {}: {e}", self.cgroup_parent);
        }
    }
}

impl Harness {
    /// Waits until the agent has checkpointed an acknowledgement for `fw/task` (the ack record in
    /// its status-update stream), i.e. the ack is no longer in flight.
    async fn wait_ack_checkpointed(&self, fw: &str, task: &str) {
        let path = self
            .work_dir()
            .join("status_updates")
            .join(fw)
            .join(format!("{task}.updates"));
        wait_until(&format!("the ack of {fw}/{task} checkpointed"), || {
            fs::read(&path).is_ok_and(|b| String::from_utf8_lossy(&b).contains("\"kind\":\"ack\""))
        })
        .await;
    }
}

fn uuid_of(s: &v1::TaskStatus) -> [u8; 16] {
    s.uuid.as_slice().try_into().expect("a 16-byte uuid")
}
