//! Two-level scheduling end to end: a real `drover master`, real `drover agent`s running real
//! processes, and frameworks over the real scheduler API on loopback.
//!
//! The frameworks here are the `hello` example (a real binary) and a small test framework that
//! speaks the scheduler API directly, so each test can make exactly the calls it checks.

use crate::util;

use drover_proto::v1;
use drover_proto::v1::operator_client::OperatorClient;
use drover_proto::v1::scheduler_client::SchedulerClient;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use util::cluster::{
    AgentSpec, TestCluster, acknowledge_update, subscribe_framework, task_pids_under,
};
use util::{Proc, free_port, wait_listening};

pub(crate) const MIB: u64 = 1 << 20;
/// Generous: CI machines are slow and everything here runs real processes.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) const SMALL_AGENT: AgentSpec<'static> = AgentSpec {
    cpus: "2",
    mem: "1GiB",
    ports: "31000-31099",
};

/// A master with the timeouts these tests use (`master_flags` on top) and one agent per spec,
/// named `agent0`, `agent1`, ...
pub(crate) fn start_cluster(agents: &[AgentSpec<'_>], master_flags: &[&str]) -> TestCluster {
    let mut flags = vec![
        "--agent-unreachable-after-ms",
        "1500",
        "--framework-heartbeat-interval-ms",
        "1000",
    ];
    flags.extend_from_slice(master_flags);
    let mut cluster = TestCluster::start(&flags);
    for (n, spec) in agents.iter().enumerate() {
        cluster.add_agent(&format!("agent{n}"), *spec, &[]);
    }
    cluster
}

/// A framework that speaks the scheduler API directly. Its event stream is read in the
/// background; agent updates are acknowledged as they arrive. (Also used by `task_users`.)
pub(crate) struct TestFramework {
    pub(crate) id: String,
    client: SchedulerClient<Channel>,
    events: mpsc::UnboundedReceiver<v1::Event>,
    /// Every update seen, in order.
    updates: Vec<v1::TaskStatus>,
    offers: Vec<v1::Offer>,
}

impl TestFramework {
    pub(crate) async fn subscribe(addr: &str, name: &str) -> TestFramework {
        TestFramework::subscribe_with_failover(addr, name, 60.0).await
    }

    async fn subscribe_with_failover(addr: &str, name: &str, failover_s: f64) -> TestFramework {
        let (client, id, mut stream) = subscribe_framework(addr, name, failover_s, false).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut acker = client.clone();
        let framework_id = id.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                acknowledge_update(&mut acker, &framework_id, &event).await;
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        TestFramework {
            id,
            client,
            events: rx,
            updates: Vec::new(),
            offers: Vec::new(),
        }
    }

    /// Reads one event (recording updates and offers), or None after `timeout`.
    async fn next_event(&mut self, timeout: Duration) -> Option<v1::Event> {
        let event = tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()??;
        match &event.event {
            Some(v1::event::Event::Update(u)) => {
                self.updates.push(u.status.clone().expect("status"));
            }
            Some(v1::event::Event::Offers(o)) => self.offers.extend(o.offers.clone()),
            _ => {}
        }
        Some(event)
    }

    /// The next offer (offers already received first).
    pub(crate) async fn next_offer(&mut self) -> v1::Offer {
        let deadline = Instant::now() + WAIT;
        loop {
            if !self.offers.is_empty() {
                return self.offers.remove(0);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                self.next_event(left).await.is_some(),
                "no offer within {WAIT:?}"
            );
        }
    }

    /// Waits for an update of `task_id` that satisfies `pred` (earlier updates count too).
    pub(crate) async fn wait_update(
        &mut self,
        task_id: &str,
        pred: impl Fn(&v1::TaskStatus) -> bool,
    ) -> v1::TaskStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self
                .updates
                .iter()
                .find(|s| s.task_id == task_id && pred(s))
            {
                return s.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next_event(left).await.is_none() {
                panic!(
                    "no matching update for {task_id} within {WAIT:?}; its updates: {:?}",
                    self.updates
                        .iter()
                        .filter(|s| s.task_id == task_id)
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    pub(crate) async fn accept(
        &mut self,
        offer: &v1::Offer,
        tasks: Vec<v1::TaskInfo>,
        refuse: Option<f64>,
    ) {
        self.client
            .accept(v1::AcceptRequest {
                framework_id: self.id.clone(),
                offer_ids: vec![offer.id.clone()],
                operations: vec![v1::Operation {
                    operation: Some(v1::operation::Operation::Launch(v1::Launch { tasks })),
                }],
                filters: Some(v1::Filters {
                    refuse_seconds: refuse,
                }),
            })
            .await
            .expect("accept");
    }

    async fn decline(&mut self, offer: &v1::Offer, refuse: f64) {
        self.client
            .decline(v1::DeclineRequest {
                framework_id: self.id.clone(),
                offer_ids: vec![offer.id.clone()],
                filters: Some(v1::Filters {
                    refuse_seconds: Some(refuse),
                }),
            })
            .await
            .expect("decline");
    }

    async fn kill(&mut self, task_id: &str) {
        self.client
            .kill(v1::KillRequest {
                framework_id: self.id.clone(),
                task_id: task_id.into(),
                agent_id: String::new(),
                kill_grace_period_ms: 500,
            })
            .await
            .expect("kill");
    }
}

pub(crate) fn shell_task(
    id: &str,
    offer: &v1::Offer,
    millicpus: u64,
    mem: u64,
    shell: &str,
) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: id.into(),
        name: id.into(),
        agent_id: offer.agent_id.clone(),
        resources: Some(v1::Resources {
            millicpus,
            mem_bytes: mem,
            ports: vec![],
        }),
        command: Some(v1::CommandInfo {
            argv: vec![],
            shell: shell.into(),
            env: Default::default(),
        }),
        kill_grace_period_ms: 0,
        labels: Default::default(),
        user: String::new(),
    }
}

fn state_of(s: &v1::TaskStatus) -> v1::TaskState {
    v1::TaskState::try_from(s.state).unwrap_or(v1::TaskState::Unspecified)
}

pub(crate) fn is(state: v1::TaskState) -> impl Fn(&v1::TaskStatus) -> bool {
    move |s| state_of(s) == state
}

fn hello_bin() -> PathBuf {
    let drover = Path::new(util::drover_bin());
    let hello = drover.with_file_name("hello");
    assert!(
        hello.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        hello.display()
    );
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_keeps_n_real_processes_running_across_two_agents() {
    // Proves the whole path: hello subscribes, is offered both agents' resources, launches N
    // tasks that run as real processes, and replaces one killed from outside, which is reported
    // TASK_FAILED with its signal.
    let cluster = start_cluster(&[SMALL_AGENT, SMALL_AGENT], &[]);
    cluster.wait_agents(2).await;
    let hello = Proc::spawn_program(
        "hello",
        &hello_bin(),
        &[
            "--masters",
            &cluster.addr,
            "--instances",
            "4",
            "--cpus",
            "0.5",
            "--mem",
            "16MiB",
            "--",
            "sleep",
            "600",
        ],
        cluster.dir.path(),
    );
    let running = |state: &v1::ClusterState| -> Vec<v1::TaskSummary> {
        state
            .tasks
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| state_of(s) == v1::TaskState::TaskRunning)
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let tasks = loop {
        let tasks = running(&cluster.state().await);
        if tasks.len() == 4 {
            break tasks;
        }
        assert!(Instant::now() < deadline, "{} of 4 running", tasks.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for t in &tasks {
        let id = &t.task.as_ref().unwrap().task_id;
        let pids = cluster.task_pids(id);
        assert_eq!(pids.len(), 1, "task {id} is one real process: {pids:?}");
    }
    // Kill one instance from outside the cluster.
    let victim = tasks[0].task.as_ref().unwrap().task_id.clone();
    let pid = cluster.task_pids(&victim)[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the task");
    let deadline = Instant::now() + WAIT;
    loop {
        let state = cluster.state().await;
        let failed = state.tasks.iter().find(|t| {
            t.task.as_ref().unwrap().task_id == victim
                && t.status.as_ref().is_some_and(|s| {
                    state_of(s) == v1::TaskState::TaskFailed && s.signal == Some(9)
                })
        });
        let now_running = running(&state);
        if failed.is_some()
            && now_running.len() == 4
            && now_running
                .iter()
                .all(|t| t.task.as_ref().unwrap().task_id != victim)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TASK_FAILED (signal 9) for {victim} and a replacement; tasks: {:?}",
            state.tasks
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = hello.log_text();
    assert!(
        log.contains("TASK_RUNNING") && log.contains("TASK_FAILED"),
        "hello logs every update:\n{log}"
    );
    drop(hello);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_gives_task_killed_and_the_whole_process_group_is_gone() {
    // Proves Kill: TASK_KILLED comes back and no process of the task (a shell and two
    // children) survives it.
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "killer").await;
    let offer = fw.next_offer().await;
    let task = shell_task(
        "group",
        &offer,
        100,
        32 * MIB,
        "sleep 600 & sleep 600 & wait",
    );
    fw.accept(&offer, vec![task], Some(0.0)).await;
    fw.wait_update("group", is(v1::TaskState::TaskRunning))
        .await;
    util::wait_for("the task's processes", WAIT, || {
        (cluster.task_pids("group").len() >= 3).then_some(())
    });
    fw.kill("group").await;
    fw.wait_update("group", is(v1::TaskState::TaskKilled)).await;
    util::wait_for("every process of the task to be gone", WAIT, || {
        cluster.task_pids("group").is_empty().then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_memory_limit_is_killed_and_reported() {
    // Proves memory isolation: a task allocating far beyond its limit is stopped and reported
    // TASK_FAILED (reason memory_limit where cgroups work; a failed exit under rlimits).
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "hog").await;
    let offer = fw.next_offer().await;
    let hog = "head -c 300M /dev/zero | tail > /dev/null; sleep 600";
    let task = shell_task("hog", &offer, 100, 64 * MIB, hog);
    fw.accept(&offer, vec![task], Some(0.0)).await;
    let failed = fw.wait_update("hog", is(v1::TaskState::TaskFailed)).await;
    let agent_log = cluster.agent("agent0").log_text();
    if failed.reason != "memory_limit" {
        assert!(
            agent_log.contains("rlimit"),
            "only the rlimits fallback may report a memory hog without reason memory_limit: {failed:?}"
        );
    }
    util::wait_for("every process of the hog to be gone", WAIT, || {
        cluster.task_pids("hog").is_empty().then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_launches_are_refused_with_a_reason_and_harm_no_other_task() {
    // Proves launch validation end to end: over the offer, a reused offer, an unknown agent and
    // a malformed command each get TASK_ERROR naming why; a good task in the same call runs.
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "bad").await;
    let offer = fw.next_offer().await;
    let good = shell_task("good", &offer, 100, 32 * MIB, "exec sleep 600");
    let too_big = shell_task("too-big", &offer, 64_000, 32 * MIB, "exec sleep 600");
    let mut elsewhere = shell_task("elsewhere", &offer, 100, 32 * MIB, "exec sleep 600");
    elsewhere.agent_id = "no-such-agent".into();
    let mut malformed = shell_task("malformed", &offer, 100, 32 * MIB, "");
    malformed.command.as_mut().unwrap().shell.clear();
    fw.accept(&offer, vec![too_big, good, elsewhere, malformed], Some(0.0))
        .await;
    let cases = [
        ("too-big", "insufficient_resources", "resources"),
        ("elsewhere", "unknown_agent", "agent_id"),
        ("malformed", "invalid_task", "task.command"),
    ];
    for (task, reason, field) in cases {
        let s = fw.wait_update(task, is(v1::TaskState::TaskError)).await;
        assert_eq!(s.reason, reason, "{s:?}");
        assert!(
            s.message.contains(field),
            "{task}: {:?} names {field}",
            s.message
        );
    }
    fw.wait_update("good", is(v1::TaskState::TaskRunning)).await;
    // The same offer again: it was used.
    let again = shell_task("again", &offer, 100, 32 * MIB, "exec sleep 600");
    fw.accept(&offer, vec![again], None).await;
    let s = fw.wait_update("again", is(v1::TaskState::TaskError)).await;
    assert_eq!(s.reason, "invalid_offer");
    // The good task is untouched.
    assert_eq!(cluster.task_pids("good").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_offer_is_not_reoffered_before_refuse_seconds_but_others_get_it() {
    // Proves decline filters: the declining framework sees the agent again only after
    // refuse_seconds, while another framework is offered it meanwhile (no starvation).
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut a = TestFramework::subscribe(&cluster.addr, "a").await;
    let offer = a.next_offer().await;
    let declined_at = Instant::now();
    a.decline(&offer, 3.0).await;
    let mut b = TestFramework::subscribe(&cluster.addr, "b").await;
    let to_b = b.next_offer().await;
    assert_eq!(to_b.agent_id, offer.agent_id);
    b.decline(&to_b, 600.0).await;
    let again = a.next_offer().await;
    let waited = declined_at.elapsed();
    assert_eq!(again.agent_id, offer.agent_id);
    assert!(
        waited >= Duration::from_secs(3),
        "re-offered after {waited:?}, before refuse_seconds = 3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frameworks_with_equal_weights_get_equal_shares() {
    // Proves DRF: two frameworks that each launch one small task per offer and decline the
    // rest end with equal numbers of tasks (± 1) on a shared pool.
    let cluster = start_cluster(&[SMALL_AGENT, SMALL_AGENT], &[]);
    cluster.wait_agents(2).await;
    let mut fws = [
        TestFramework::subscribe(&cluster.addr, "one").await,
        TestFramework::subscribe(&cluster.addr, "two").await,
    ];
    // 4 cpus in all, 0.25 per task: 16 tasks fit. Run until the pool is full.
    let mut launched = [0usize; 2];
    let deadline = Instant::now() + WAIT;
    while launched.iter().sum::<usize>() < 16 {
        assert!(Instant::now() < deadline, "launched {launched:?}");
        for (i, fw) in fws.iter_mut().enumerate() {
            let Some(_) = fw.next_event(Duration::from_millis(50)).await else {
                continue;
            };
            while let Some(offer) = (!fw.offers.is_empty()).then(|| fw.offers.remove(0)) {
                let cpus = offer.resources.as_ref().map_or(0, |r| r.millicpus);
                if cpus >= 250 {
                    let id = format!("t{i}-{}", launched[i]);
                    let task = shell_task(&id, &offer, 250, 16 * MIB, "exec sleep 600");
                    fw.accept(&offer, vec![task], Some(0.0)).await;
                    launched[i] += 1;
                } else {
                    fw.decline(&offer, 0.0).await;
                }
            }
        }
    }
    assert!(
        launched[0].abs_diff(launched[1]) <= 1,
        "equal weights, equal shares: {launched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_heartbeating_makes_its_tasks_unreachable() {
    // Proves agent health: a stopped agent (SIGSTOP: no heartbeats) turns its tasks
    // TASK_UNREACHABLE; when it resumes it re-registers and the task is running again.
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "health").await;
    let offer = fw.next_offer().await;
    fw.accept(
        &offer,
        vec![shell_task(
            "steady",
            &offer,
            100,
            32 * MIB,
            "exec sleep 600",
        )],
        Some(0.0),
    )
    .await;
    fw.wait_update("steady", is(v1::TaskState::TaskRunning))
        .await;
    let agent = nix::unistd::Pid::from_raw(cluster.agent("agent0").pid());
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).expect("stop the agent");
    let s = fw
        .wait_update("steady", is(v1::TaskState::TaskUnreachable))
        .await;
    assert_eq!(s.reason, "agent_unreachable");
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).expect("resume the agent");
    let count = fw.updates.len();
    let deadline = Instant::now() + WAIT;
    loop {
        if fw.updates[count..]
            .iter()
            .any(|s| s.task_id == "steady" && state_of(s) == v1::TaskState::TaskRunning)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task is not reported running again"
        );
        fw.next_event(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cluster.task_pids("steady").len(),
        1,
        "the task kept running throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_gone_past_its_failover_timeout_is_torn_down_and_its_tasks_killed() {
    // Proves framework failover: while away for less than its timeout a framework keeps its
    // tasks; past it, it is removed and its tasks' processes are killed.
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut fw = TestFramework::subscribe_with_failover(&cluster.addr, "brief", 2.0).await;
    let offer = fw.next_offer().await;
    let task = shell_task("orphan", &offer, 100, 32 * MIB, "exec sleep 600");
    fw.accept(&offer, vec![task], Some(0.0)).await;
    fw.wait_update("orphan", is(v1::TaskState::TaskRunning))
        .await;
    let gone_at = Instant::now();
    drop(fw);
    // Still there a moment after the disconnect...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !cluster.task_pids("orphan").is_empty(),
        "the task outlives a short disconnect"
    );
    // ...and killed once the timeout has passed.
    util::wait_for("the torn-down framework's task to be killed", WAIT, || {
        cluster.task_pids("orphan").is_empty().then_some(())
    });
    assert!(
        gone_at.elapsed() >= Duration::from_secs(2),
        "killed before the failover timeout"
    );
    let state = cluster.state().await;
    assert!(state.frameworks.is_empty(), "{:?}", state.frameworks);
}

/// Stops the supervisors and tasks under a directory when dropped (before the masters go).
struct StopUnder(PathBuf);

impl Drop for StopUnder {
    fn drop(&mut self) {
        util::stop_processes_under(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_keeps_tasks_running_and_the_framework_subscribed() {
    // Proves leadership follows coord: a follower redirects with drover-leader; after kill -9
    // of the leading master, the new leader learns the running tasks from the re-registering
    // agent, hello re-subscribes with its id, and no task was stopped or launched again.
    let ensemble = util::Ensemble::start(
        3,
        &[
            "--allocation-interval-ms",
            "20",
            "--agent-heartbeat-interval-ms",
            "200",
            "--agent-unreachable-after-ms",
            "5000",
            "--framework-heartbeat-interval-ms",
            "500",
        ],
    );
    let _cleanup = StopUnder(ensemble.dir().to_path_buf());
    let (leader, _) = ensemble.wait_stable(WAIT);
    let all = ensemble
        .ids()
        .map(|id| ensemble.addr(id))
        .collect::<Vec<_>>()
        .join(",");
    // A follower redirects to the leader.
    let follower = ensemble.ids().find(|&id| id != leader).unwrap();
    let leader_addr = ensemble.addr(leader);
    util::wait_until("the follower to name the leader", WAIT, || async {
        let mut op = OperatorClient::connect(format!("http://{}", ensemble.addr(follower)))
            .await
            .ok()?;
        let err = op.get_state(v1::GetStateRequest {}).await.err()?;
        let named = err
            .metadata()
            .get("drover-leader")?
            .to_str()
            .ok()?
            .to_string();
        (err.code() == tonic::Code::Unavailable && named == leader_addr).then_some(())
    })
    .await;
    let work = ensemble.dir().join("agent0");
    let listen = format!("127.0.0.1:{}", free_port());
    let _agent = Proc::spawn(
        "agent0",
        &[
            "agent",
            "--masters",
            &all,
            "--listen",
            &listen,
            "--work-dir",
            work.to_str().unwrap(),
            "--cpus",
            "2",
            "--mem",
            "1GiB",
            "--ports",
            "31000-31099",
        ],
        ensemble.dir(),
    );
    let _hello = Proc::spawn_program(
        "hello",
        &hello_bin(),
        &[
            "--masters",
            &all,
            "--instances",
            "2",
            "--cpus",
            "0.1",
            "--mem",
            "16MiB",
            "--",
            "sleep",
            "600",
        ],
        ensemble.dir(),
    );
    let running_on = |addr: String| async move {
        let mut op = OperatorClient::connect(format!("http://{addr}"))
            .await
            .ok()?;
        let state = op
            .get_state(v1::GetStateRequest {})
            .await
            .ok()?
            .into_inner();
        let mut ids: Vec<String> = state
            .tasks
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| state_of(s) == v1::TaskState::TaskRunning)
            })
            .map(|t| t.task.as_ref().unwrap().task_id.clone())
            .collect();
        ids.sort();
        let connected = state.frameworks.iter().filter(|f| f.connected).count();
        (ids.len() == 2 && connected == 1).then_some(ids)
    };
    let before = util::wait_until("2 tasks running under the first leader", WAIT, || {
        running_on(leader_addr.clone())
    })
    .await;
    let pids: Vec<Vec<i32>> = before
        .iter()
        .map(|id| task_pids_under(ensemble.dir(), id))
        .collect();
    assert!(pids.iter().all(|p| p.len() == 1), "{pids:?}");
    let mut ensemble = ensemble;
    ensemble.kill9(leader);
    let (new_leader, _) = ensemble.wait_stable(WAIT);
    assert_ne!(new_leader, leader);
    let after = util::wait_until(
        "the same 2 tasks running under the new leader",
        WAIT,
        || running_on(ensemble.addr(new_leader)),
    )
    .await;
    assert_eq!(after, before, "the same tasks, none launched again");
    let pids_after: Vec<Vec<i32>> = after
        .iter()
        .map(|id| task_pids_under(ensemble.dir(), id))
        .collect();
    assert_eq!(
        pids_after, pids,
        "the task processes ran through the failover"
    );
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_side_mirrors_state_and_metrics() {
    // Proves `--http`: /api/v1/state is the operator state as JSON, /metrics is Prometheus text
    // with the leader's counters, / is the dashboard page.
    let http = format!("127.0.0.1:{}", free_port());
    let cluster = start_cluster(&[SMALL_AGENT], &["--http", &http]);
    cluster.wait_agents(1).await;
    wait_listening(&http);
    let (code, body) = http_get(&http, "/api/v1/state");
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(state["leader"], cluster.addr.as_str());
    assert_eq!(state["agents"].as_array().map(Vec::len), Some(1));
    assert_eq!(state["agents"][0]["resources"]["cpus"], 2.0);
    let (code, metrics) = http_get(&http, "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("drover_master_leading 1"), "{metrics}");
    assert!(metrics.contains("drover_master_agents 1"), "{metrics}");
    let (code, page) = http_get(&http, "/");
    assert_eq!(code, 200);
    assert!(page.contains("/api/v1/state"));
}
