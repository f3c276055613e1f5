//! The real `drover agent` process against a master played by the test (a small in-test
//! `AgentApi` server), for what only a real process shows: supervisors are detached from the
//! agent (SIGKILL to the agent's whole process group leaves its tasks running), and a restarted
//! agent process re-adopts them from its work dir, reports what ended meanwhile and can still
//! kill what it re-adopted. End-to-end scheduling with a real master is in `tests/scheduler.rs`.

use crate::util;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1::{
    self, agent_api_server::AgentApi, agent_api_server::AgentApiServer, agent_message,
    master_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use util::{Proc, free_port};

const WAIT: Duration = Duration::from_secs(30);
const AGENT_ID: &str = "agent-real-1";

type Outbound = mpsc::Sender<Result<v1::MasterMessage, Status>>;

/// The master's side: answers every hello with Registered (a new agent gets `AGENT_ID`), records
/// what the agent sends with the number of the stream it came on, and sends what the test asks.
#[derive(Clone)]
struct TestMaster {
    current: Arc<Mutex<Option<(u64, Outbound)>>>,
    conns: Arc<Mutex<u64>>,
    seen: mpsc::Sender<(u64, v1::AgentMessage)>,
}

#[tonic::async_trait]
impl AgentApi for TestMaster {
    type AttachStream = ReceiverStream<Result<v1::MasterMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no hello"))?;
        let agent_id = match &hello.message {
            Some(agent_message::Message::Register(_)) => AGENT_ID.to_string(),
            Some(agent_message::Message::Reregister(r)) => {
                r.agent.as_ref().map(|a| a.id.clone()).unwrap_or_default()
            }
            _ => return Err(Status::invalid_argument("first message is not a hello")),
        };
        let (tx, rx) = mpsc::channel(256);
        tx.send(Ok(v1::MasterMessage {
            message: Some(master_message::Message::Registered(v1::Registered {
                agent_id,
                heartbeat_interval_ms: 100,
                master_id: "test-master".into(),
            })),
        }))
        .await
        .map_err(|_| Status::internal("stream closed"))?;
        let conn = {
            let mut n = self.conns.lock().unwrap();
            *n += 1;
            *n
        };
        *self.current.lock().unwrap() = Some((conn, tx));
        let _ = self.seen.send((conn, hello)).await;
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if seen.send((conn, msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Master {
    addr: String,
    svc: TestMaster,
    rx: mpsc::Receiver<(u64, v1::AgentMessage)>,
    history: Vec<(u64, v1::AgentMessage)>,
    server: tokio::task::JoinHandle<()>,
}

impl Master {
    async fn start() -> Master {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (seen, rx) = mpsc::channel(4096);
        let svc = TestMaster {
            current: Arc::default(),
            conns: Arc::default(),
            seen,
        };
        let service = AgentApiServer::new(svc.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Master {
            addr,
            svc,
            rx,
            history: Vec::new(),
            server,
        }
    }

    fn conns(&self) -> u64 {
        *self.svc.conns.lock().unwrap()
    }

    async fn send(&self, message: master_message::Message) {
        let tx = self
            .svc
            .current
            .lock()
            .unwrap()
            .as_ref()
            .map(|(_, tx)| tx.clone())
            .expect("an agent stream");
        tx.send(Ok(v1::MasterMessage {
            message: Some(message),
        }))
        .await
        .expect("agent stream open");
    }

    async fn wait_for<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&[(u64, v1::AgentMessage)]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f(&self.history) {
                return v;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.history.push(m),
                Ok(None) => panic!("master channel closed waiting for {what}"),
                Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
            }
        }
    }

    async fn wait_hello(&mut self, after_conn: u64) -> (u64, agent_message::Message) {
        self.wait_for("a hello", |h| {
            h.iter().find_map(|(c, m)| match &m.message {
                Some(
                    m @ (agent_message::Message::Register(_)
                    | agent_message::Message::Reregister(_)),
                ) if *c > after_conn => Some((*c, m.clone())),
                _ => None,
            })
        })
        .await
    }

    /// The first update of `task` in `state` sent on a stream after `after_conn`.
    async fn wait_update(
        &mut self,
        after_conn: u64,
        task: &str,
        state: v1::TaskState,
    ) -> v1::TaskStatus {
        self.wait_for(&format!("{state:?} of {task}"), |h| {
            h.iter().find_map(|(c, m)| match &m.message {
                Some(agent_message::Message::StatusUpdate(u)) if *c > after_conn => u
                    .status
                    .as_ref()
                    .filter(|s| s.task_id == task && s.state == state as i32)
                    .cloned(),
                _ => None,
            })
        })
        .await
    }
}

impl Master {
    /// Runs `task` on the agent, waits for its RUNNING (first stream), acknowledges it, and
    /// returns its run directory under `work`.
    async fn run_running(&mut self, work: &Path, task: &str, port: u32, shell: &str) -> PathBuf {
        self.send(run_task(task, port, shell)).await;
        let running = self.wait_update(0, task, v1::TaskState::TaskRunning).await;
        self.send(ack(&running)).await;
        run_dir(work, task)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn run_task(task_id: &str, port: u32, shell: &str) -> master_message::Message {
    master_message::Message::RunTask(v1::RunTask {
        framework: Some(v1::FrameworkInfo {
            id: "fw".into(),
            name: "fw".into(),
            ..Default::default()
        }),
        task: Some(v1::TaskInfo {
            task_id: task_id.into(),
            name: task_id.into(),
            agent_id: AGENT_ID.into(),
            resources: Some(v1::Resources {
                millicpus: 100,
                mem_bytes: 32 << 20,
                ports: vec![v1::PortRange {
                    begin: port,
                    end: port,
                }],
            }),
            command: Some(v1::CommandInfo {
                shell: shell.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
}

fn ack(s: &v1::TaskStatus) -> master_message::Message {
    master_message::Message::Acknowledgement(v1::Acknowledgement {
        framework_id: "fw".into(),
        task_id: s.task_id.clone(),
        uuid: s.uuid.clone(),
    })
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// The single run directory of `task` under the agent's work dir.
fn run_dir(work: &Path, task: &str) -> PathBuf {
    let dir = work.join("frameworks/fw/sandboxes").join(task);
    util::wait_for(&format!("the sandbox of {task}"), WAIT, || {
        let runs: Vec<PathBuf> = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        (runs.len() == 1).then(|| runs[0].clone())
    })
}

fn task_pid(run: &Path) -> i32 {
    util::wait_for("the task pid", WAIT, || {
        let text = fs::read_to_string(run.join("supervisor.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["task_pid"].as_i64().and_then(|p| i32::try_from(p).ok())
    })
}

/// Cleans up what the agent started: supervisors and tasks under the temp dir, the test cgroup.
struct Cleanup {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        util::stop_processes_under(self.dir.path());
        let isolation = drover_agent::Isolation::detect();
        if let Err(e) = isolation.remove_parent(&self.cgroup_parent) {
            eprintln!("could not remove test cgroup {}: {e}", self.cgroup_parent);
        }
    }
}

fn start_agent(master: &str, work: &Path, log_dir: &Path, cgroup_parent: &str) -> Proc {
    start_agent_from(
        Path::new(util::drover_bin()),
        master,
        work,
        log_dir,
        cgroup_parent,
    )
}

/// `start_agent` with the `drover` binary at `program`.
fn start_agent_from(
    program: &Path,
    master: &str,
    work: &Path,
    log_dir: &Path,
    cgroup_parent: &str,
) -> Proc {
    let listen = format!("127.0.0.1:{}", free_port());
    Proc::spawn_program(
        "agent",
        program,
        &[
            "agent",
            "--masters",
            master,
            "--listen",
            &listen,
            "--work-dir",
            work.to_str().unwrap(),
            "--hostname",
            "real-agent",
            "--cpus",
            "1",
            "--mem",
            "512MiB",
            "--ports",
            "31000-31010",
            "--cgroup-parent",
            cgroup_parent,
            "--status-update-retry-min-ms",
            "100",
            "--status-update-retry-max-ms",
            "400",
            "--task-exit-poll-ms",
            "50",
            "--reconnect-backoff-min-ms",
            "20",
            "--reconnect-backoff-max-ms",
            "200",
        ],
        log_dir,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_leaves_its_tasks_running_and_re_adopts_them() {
    // Proves the agent process restart path end to end: SIGKILL to the agent's process group
    // leaves its tasks (in detached supervisors) running; the restarted `drover agent` on the same
    // work dir re-registers with its id listing them, reports the task that exited while it was
    // down with its real exit code, and kills the re-adopted one with nothing left behind.
    let cleanup = Cleanup {
        dir: tempfile::tempdir().unwrap(),
        cgroup_parent: format!("drover-atest-{}", std::process::id()),
    };
    let dir = cleanup.dir.path();
    let work = dir.join("work");
    let mut master = Master::start().await;
    let mut agent = start_agent(&master.addr, &work, dir, &cleanup.cgroup_parent);

    let (_, hello) = master.wait_hello(0).await;
    let agent_message::Message::Register(reg) = hello else {
        panic!("expected Register, got {hello:?}");
    };
    let info = reg.agent.unwrap();
    assert_eq!(info.hostname, "real-agent");
    assert_eq!(info.resources.unwrap().millicpus, 1000);

    let sleeper_run = master
        .run_running(&work, "sleeper", 31001, "echo port=$PORT0; sleep 300")
        .await;
    let sleeper = task_pid(&sleeper_run);
    util::wait_for("PORT0 in stdout", WAIT, || {
        fs::read_to_string(sleeper_run.join("sandbox/stdout"))
            .ok()
            .filter(|s| s.contains("port=31001"))
    });
    let gated_run = master
        .run_running(
            &work,
            "gated",
            31002,
            "while [ ! -e go ]; do sleep 0.02; done; exit 4",
        )
        .await;
    // Both acks checkpointed before the crash (else the RUNNING updates are rightly resent).
    for task in ["sleeper", "gated"] {
        let stream = work.join(format!("status_updates/fw/{task}.updates"));
        util::wait_for(&format!("the ack of {task} checkpointed"), WAIT, || {
            fs::read(&stream)
                .ok()
                .filter(|b| String::from_utf8_lossy(b).contains("\"kind\":\"ack\""))
        });
    }

    agent.kill9();
    assert!(
        alive(sleeper),
        "SIGKILL of the agent's group killed its task"
    );
    fs::write(gated_run.join("sandbox/go"), b"").unwrap();
    util::wait_for("gated's exit record", WAIT, || {
        gated_run.join("exit.json").exists().then_some(())
    });

    let before = master.conns();
    let _agent = start_agent(&master.addr, &work, dir, &cleanup.cgroup_parent);
    let (conn, hello) = master.wait_hello(before).await;
    let agent_message::Message::Reregister(rr) = hello else {
        panic!("expected Reregister, got {hello:?}");
    };
    assert_eq!(rr.agent.unwrap().id, AGENT_ID);
    let mut listed: Vec<String> = rr
        .tasks
        .iter()
        .map(|t| t.task.as_ref().unwrap().task_id.clone())
        .collect();
    listed.sort();
    assert_eq!(listed, vec!["gated", "sleeper"]);
    let failed = master
        .wait_update(before, "gated", v1::TaskState::TaskFailed)
        .await;
    assert_eq!(failed.exit_code, Some(4));
    assert!(alive(sleeper));

    master
        .send(master_message::Message::KillTask(v1::KillTask {
            framework_id: "fw".into(),
            task_id: "sleeper".into(),
            kill_grace_period_ms: 0,
        }))
        .await;
    let killed = master
        .wait_update(before, "sleeper", v1::TaskState::TaskKilled)
        .await;
    assert_eq!(killed.source, v1::StatusSource::SourceAgent as i32);
    assert!(!alive(sleeper), "the re-adopted task survived its kill");
    let _ = conn;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_binary_was_deleted_still_starts_supervisors() {
    // Proves the agent starts `drover supervise` from its own running image, not from the path
    // it was started as: once an upgrade has deleted that file, a task still launches and runs.
    // Under the target dir, so the binary can be hard-linked (a fresh copy could still be open
    // for writing in a child forked meanwhile: ETXTBSY).
    let cleanup = Cleanup {
        dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        cgroup_parent: format!("drover-atest-upgrade-{}", std::process::id()),
    };
    let dir = cleanup.dir.path();
    let work = dir.join("work");
    let binary = dir.join("drover");
    fs::hard_link(util::drover_bin(), &binary)
        .or_else(|_| fs::copy(util::drover_bin(), &binary).map(|_| ()))
        .unwrap();
    let mut master = Master::start().await;
    let _agent = start_agent_from(&binary, &master.addr, &work, dir, &cleanup.cgroup_parent);
    let (_, hello) = master.wait_hello(0).await;
    assert!(
        matches!(hello, agent_message::Message::Register(_)),
        "expected Register, got {hello:?}"
    );

    fs::remove_file(&binary).unwrap();
    let run = master
        .run_running(&work, "upgraded", 31001, "echo ran; sleep 300")
        .await;
    util::wait_for("the task's stdout", WAIT, || {
        fs::read_to_string(run.join("sandbox/stdout"))
            .ok()
            .filter(|s| s.contains("ran"))
    });
}
