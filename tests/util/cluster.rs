//! One `drover master` (a single coord replica) and its `drover agent`s on loopback, each in its
//! own process group, all under one temp dir; dropping the cluster stops every process it started,
//! the tasks' detached supervisors and the tasks included.

use super::{Proc, free_port, wait_listening};
use drover_proto::v1;
use drover_proto::v1::operator_client::OperatorClient;
use drover_proto::v1::scheduler_client::SchedulerClient;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest wait for the master's state to show what a helper waits for.
const STATE_WAIT: Duration = Duration::from_secs(30);

/// What an agent offers.
#[derive(Clone, Copy, Debug)]
pub struct AgentSpec<'a> {
    pub cpus: &'a str,
    pub mem: &'a str,
    pub ports: &'a str,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    /// The master's gRPC address.
    pub addr: String,
    master: Proc,
    /// By name, in the order they were added.
    pub agents: Vec<(String, Proc)>,
    /// How the harness itself talks to the master (an operator's certificate when it serves
    /// TLS).
    pub client_tls: Option<drover_security::TlsConfig>,
}

impl TestCluster {
    /// Starts the master with test timings (allocation every 20 ms, agent heartbeats every
    /// 200 ms) and `master_flags` on top (timeouts each test picks), and waits until it listens.
    pub fn start(master_flags: &[&str]) -> TestCluster {
        TestCluster::start_with_client(master_flags, None)
    }

    /// `start`, with the harness's own calls made over TLS with `client_tls`.
    pub fn start_with_client(
        master_flags: &[&str],
        client_tls: Option<drover_security::TlsConfig>,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut flags = vec![
            "--allocation-interval-ms",
            "20",
            "--agent-heartbeat-interval-ms",
            "200",
        ];
        flags.extend_from_slice(master_flags);
        let master = super::start_master(dir.path(), port, "master", &flags);
        let addr = format!("127.0.0.1:{port}");
        TestCluster {
            dir,
            addr,
            master,
            agents: Vec::new(),
            client_tls,
        }
    }

    /// Whether the master process has exited.
    pub fn master_exited(&mut self) -> bool {
        self.master.exited()
    }

    /// The master's log so far.
    pub fn master_log(&self) -> String {
        self.master.log_text()
    }

    /// Starts agent `name` (hostname `name`, work dir [`TestCluster::work_dir`]) with `spec` and
    /// `extra` flags, and waits until its API listens; returns that address.
    pub fn add_agent(&mut self, name: &str, spec: AgentSpec<'_>, extra: &[&str]) -> String {
        let work = self.work_dir(name);
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "agent",
            "--masters",
            &self.addr,
            "--listen",
            &listen,
            "--work-dir",
            work.to_str().expect("utf-8"),
            "--cpus",
            spec.cpus,
            "--mem",
            spec.mem,
            "--ports",
            spec.ports,
            "--hostname",
            name,
        ];
        args.extend_from_slice(extra);
        let agent = Proc::spawn(name, &args, self.dir.path());
        wait_listening(&listen);
        self.agents.push((name.to_string(), agent));
        listen
    }

    pub fn work_dir(&self, agent: &str) -> PathBuf {
        self.dir.path().join(agent)
    }

    pub fn agent(&self, name: &str) -> &Proc {
        self.agents
            .iter()
            .find_map(|(n, p)| (n == name).then_some(p))
            .unwrap_or_else(|| panic!("no agent {name} in this cluster"))
    }

    pub fn agent_mut(&mut self, name: &str) -> &mut Proc {
        self.agents
            .iter_mut()
            .find_map(|(n, p)| (n == name).then_some(p))
            .unwrap_or_else(|| panic!("no agent {name} in this cluster"))
    }

    /// The master's `GetState`, retried while the master is not answering yet.
    pub async fn state(&self) -> v1::ClusterState {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let transport = drover_client::Transport {
                tls: self.client_tls.clone(),
                ..drover_client::Transport::plaintext(STATE_WAIT, STATE_WAIT)
            };
            let answer = match transport.connect(&self.addr).await {
                Ok(channel) => OperatorClient::new(channel)
                    .get_state(v1::GetStateRequest {})
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(state) => return state,
                Err(e) if Instant::now() >= deadline => panic!("GetState failed: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until exactly `n` agents are registered and reachable; returns them.
    pub async fn wait_agents(&self, n: usize) -> Vec<v1::AgentState> {
        let deadline = Instant::now() + STATE_WAIT;
        loop {
            let state = self.state().await;
            let up: Vec<_> = state.agents.into_iter().filter(|a| a.reachable).collect();
            if up.len() == n {
                return up;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} agents registered",
                up.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Live processes of task `task_id` started by this cluster's agents.
    pub fn task_pids(&self, task_id: &str) -> Vec<i32> {
        task_pids_under(self.dir.path(), task_id)
    }

    /// Live processes of this cluster's tasks whose id starts with `prefix`, by task id.
    pub fn task_processes(&self, prefix: &str) -> BTreeMap<String, Vec<i32>> {
        task_processes_under(self.dir.path(), prefix)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The agents first (their groups), then the detached supervisors and their tasks.
        self.agents.clear();
        super::stop_processes_under(self.dir.path());
    }
}

/// Live processes of task `task_id` whose working directory (their sandbox) is under `dir`:
/// another run of the same tests on this machine uses the same task ids.
pub fn task_pids_under(dir: &Path, task_id: &str) -> Vec<i32> {
    task_processes_under(dir, task_id)
        .remove(task_id)
        .unwrap_or_default()
}

/// Live (not zombie) processes whose environment names a task (`DROVER_TASK_ID`) starting with
/// `prefix` and whose working directory is under `dir`, by task id.
pub fn task_processes_under(dir: &Path, prefix: &str) -> BTreeMap<String, Vec<i32>> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        // Zombies have an empty environ; count only processes that still run.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if zombie || !cwd.starts_with(&dir) {
            continue;
        }
        for var in env.split(|&b| b == 0) {
            if let Some(id) = String::from_utf8_lossy(var).strip_prefix("DROVER_TASK_ID=")
                && id.starts_with(prefix)
            {
                found.entry(id.to_string()).or_default().push(pid);
            }
        }
    }
    found
}

/// Subscribes framework `name` on the scheduler API at `addr` (retrying until the master takes
/// it, up to `STATE_WAIT`); returns its client, its id and its event stream after `Subscribed`.
pub async fn subscribe_framework(
    addr: &str,
    name: &str,
    failover_timeout_seconds: f64,
    suppressed: bool,
) -> (
    SchedulerClient<tonic::transport::Channel>,
    String,
    tonic::Streaming<v1::Event>,
) {
    let mut client = SchedulerClient::connect(format!("http://{addr}"))
        .await
        .expect("scheduler client");
    let deadline = Instant::now() + STATE_WAIT;
    let mut stream = loop {
        let request = v1::SubscribeRequest {
            framework: Some(v1::FrameworkInfo {
                name: name.into(),
                failover_timeout_seconds,
                ..Default::default()
            }),
            suppressed,
        };
        match client.subscribe(request).await {
            Ok(s) => break s.into_inner(),
            Err(e) => {
                assert!(Instant::now() < deadline, "subscribe failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let first = stream
        .message()
        .await
        .expect("stream")
        .expect("first event");
    let Some(v1::event::Event::Subscribed(sub)) = first.event else {
        panic!("first event is not Subscribed: {first:?}");
    };
    (client, sub.framework_id, stream)
}

/// Acknowledges `event` for framework `id` if it is an update that wants it.
pub async fn acknowledge_update(
    client: &mut SchedulerClient<tonic::transport::Channel>,
    id: &str,
    event: &v1::Event,
) {
    if let Some(v1::event::Event::Update(u)) = &event.event
        && let Some(s) = &u.status
        && !s.uuid.is_empty()
    {
        let _ = client
            .acknowledge(v1::AcknowledgeRequest {
                framework_id: id.to_string(),
                agent_id: s.agent_id.clone(),
                task_id: s.task_id.clone(),
                uuid: s.uuid.clone(),
            })
            .await;
    }
}
