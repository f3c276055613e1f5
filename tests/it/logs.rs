//! `drover logs` end to end: a real `drover master`, real `drover agent`s (one keeping sandboxes,
//! one whose sandbox GC removes them as soon as they are acknowledged) and small test frameworks
//! on the scheduler API launching real shell tasks; the CLI is the real binary.

use crate::util;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_proto::v1;
use drover_proto::v1::scheduler_client::SchedulerClient;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use util::cluster::{AgentSpec, TestCluster, acknowledge_update, subscribe_framework};
use util::{stderr, stdout};

const MIB: u64 = 1 << 20;
/// Generous: CI machines are slow and everything here runs real processes.
const WAIT: Duration = Duration::from_secs(30);
/// The agent that keeps sandboxes (default GC) and the one that removes them at once.
const KEEPER: &str = "keeper";
const SWEEPER: &str = "sweeper";

const AGENT: AgentSpec<'static> = AgentSpec {
    cpus: "2",
    mem: "1GiB",
    ports: "31000-31099",
};

/// The master, [`KEEPER`] and [`SWEEPER`].
fn start_cluster() -> TestCluster {
    let mut cluster = TestCluster::start(&["--agent-unreachable-after-ms", "1500"]);
    let follow_poll = ["--file-follow-poll-ms", "20"];
    cluster.add_agent(KEEPER, AGENT, &follow_poll);
    cluster.add_agent(
        SWEEPER,
        AGENT,
        &[
            &follow_poll[..],
            &["--sandbox-gc-age", "0s", "--sandbox-gc-interval-ms", "50"],
        ]
        .concat(),
    );
    cluster
}

/// Runs `drover logs ARGS` against `cluster` to completion.
fn logs(cluster: &TestCluster, args: &[&str]) -> std::process::Output {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    util::drover(&cluster.addr, &all)
}

/// Waits until `drover logs ARGS` prints exactly `expected` (the task may still be writing).
fn wait_logs(cluster: &TestCluster, args: &[&str], expected: &str) {
    util::wait_for(
        &format!("drover logs {args:?} to print {expected:?}"),
        WAIT,
        || {
            let out = logs(cluster, args);
            (out.status.success() && stdout(&out) == expected).then_some(())
        },
    );
}

/// A framework on the scheduler API that launches shell tasks where the test says; its updates
/// are acknowledged as they arrive. It is suppressed, and declines every offer at once, except
/// while it launches: an idle framework holding offers would starve the other one.
struct TestFramework {
    id: String,
    client: SchedulerClient<Channel>,
    events: mpsc::UnboundedReceiver<v1::Event>,
    updates: Vec<v1::TaskStatus>,
    offers: Vec<v1::Offer>,
    /// Set while launching: offers are passed on instead of declined.
    wanting: Arc<AtomicBool>,
}

impl TestFramework {
    async fn subscribe(addr: &str, name: &str) -> TestFramework {
        let (client, sub_id, mut stream) = subscribe_framework(addr, name, 60.0, true).await;
        // Unbounded in this test only: the reader must never block the event stream.
        let (tx, rx) = mpsc::unbounded_channel();
        let mut calls = client.clone();
        let id = sub_id.clone();
        let wanting = Arc::new(AtomicBool::new(false));
        let wants = wanting.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                acknowledge_update(&mut calls, &id, &event).await;
                match &event.event {
                    Some(v1::event::Event::Offers(o)) if !wants.load(Ordering::SeqCst) => {
                        let _ = calls
                            .decline(v1::DeclineRequest {
                                framework_id: id.clone(),
                                offer_ids: o.offers.iter().map(|o| o.id.clone()).collect(),
                                filters: Some(v1::Filters {
                                    refuse_seconds: Some(0.0),
                                }),
                            })
                            .await;
                        continue;
                    }
                    _ => {}
                }
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        TestFramework {
            id: sub_id,
            client,
            events: rx,
            updates: Vec::new(),
            offers: Vec::new(),
            wanting,
        }
    }

    async fn next_event(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(event)) = tokio::time::timeout(left, self.events.recv()).await else {
            return false;
        };
        match event.event {
            Some(v1::event::Event::Update(u)) => self.updates.extend(u.status),
            Some(v1::event::Event::Offers(o)) => self.offers.extend(o.offers),
            Some(v1::event::Event::Rescind(r)) => self.offers.retain(|o| o.id != r.offer_id),
            _ => {}
        }
        true
    }

    /// Launches a shell task on the agent named `host` and waits until it is in `state`.
    async fn launch(&mut self, host: &str, task_id: &str, script: &str, state: v1::TaskState) {
        self.wanting.store(true, Ordering::SeqCst);
        self.client
            .revive(v1::ReviveRequest {
                framework_id: self.id.clone(),
                clear_filters: true,
            })
            .await
            .expect("revive");
        let deadline = Instant::now() + WAIT;
        let offer = loop {
            if let Some(i) = self.offers.iter().position(|o| o.hostname == host) {
                break self.offers.remove(i);
            }
            assert!(
                self.next_event(deadline).await,
                "no offer from {host} to launch {task_id}"
            );
        };
        let task = v1::TaskInfo {
            task_id: task_id.into(),
            name: task_id.into(),
            agent_id: offer.agent_id.clone(),
            resources: Some(v1::Resources {
                millicpus: 100,
                mem_bytes: 32 * MIB,
                ports: vec![],
            }),
            command: Some(v1::CommandInfo {
                argv: vec![],
                shell: script.into(),
                env: Default::default(),
            }),
            kill_grace_period_ms: 0,
            labels: Default::default(),
            user: String::new(),
        };
        self.client
            .accept(v1::AcceptRequest {
                framework_id: self.id.clone(),
                offer_ids: vec![offer.id.clone()],
                operations: vec![v1::Operation {
                    operation: Some(v1::operation::Operation::Launch(v1::Launch {
                        tasks: vec![task],
                    })),
                }],
                filters: Some(v1::Filters {
                    refuse_seconds: Some(0.0),
                }),
            })
            .await
            .expect("accept");
        // Idle again: suppressed, and whatever it holds goes back.
        self.wanting.store(false, Ordering::SeqCst);
        self.client
            .suppress(v1::SuppressRequest {
                framework_id: self.id.clone(),
            })
            .await
            .expect("suppress");
        while let Ok(event) = self.events.try_recv() {
            match event.event {
                Some(v1::event::Event::Update(u)) => self.updates.extend(u.status),
                Some(v1::event::Event::Offers(o)) => self.offers.extend(o.offers),
                _ => {}
            }
        }
        let held: Vec<String> = self.offers.drain(..).map(|o| o.id).collect();
        if !held.is_empty() {
            self.client
                .decline(v1::DeclineRequest {
                    framework_id: self.id.clone(),
                    offer_ids: held,
                    filters: Some(v1::Filters {
                        refuse_seconds: Some(0.0),
                    }),
                })
                .await
                .expect("decline");
        }
        self.wait_state(task_id, state).await;
    }

    async fn wait_state(&mut self, task_id: &str, state: v1::TaskState) {
        let deadline = Instant::now() + WAIT;
        while !self
            .updates
            .iter()
            .any(|s| s.task_id == task_id && s.state == state as i32)
        {
            assert!(
                self.next_event(deadline).await,
                "{task_id} never reached {state:?}; its updates: {:?}",
                self.updates
                    .iter()
                    .filter(|s| s.task_id == task_id)
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// The run directory of `task` (its only run) in `agent_work`'s sandboxes of framework `fw`.
fn run_dir(agent_work: &Path, fw: &str, task: &str) -> PathBuf {
    let dir = agent_work
        .join("frameworks")
        .join(fw)
        .join("sandboxes")
        .join(task);
    util::wait_for(&format!("the sandbox of {task}"), WAIT, || {
        let runs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        (runs.len() == 1).then(|| runs[0].clone())
    })
}

/// The one line `drover` printed to stderr on failure (tracing lines aside).
fn failure_line(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    let text = util::strip_ansi(&stderr(out));
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("drover: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {text}");
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_running_and_finished_tasks_and_one_line_errors() {
    // Proves `drover logs` prints a running task's stdout, its stderr with --stderr, a finished
    // task's output, JSON lines with --output json, and fails with one line for an unknown task,
    // an ambiguous task id (listing both frameworks; --framework picks one), a sandbox the
    // agent's GC removed, and an agent that is down.
    let mut cluster = start_cluster();
    cluster.wait_agents(2).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "logs-test").await;
    fw.launch(
        KEEPER,
        "talker",
        "echo out-line; echo err-line >&2; exec sleep 600",
        v1::TaskState::TaskRunning,
    )
    .await;
    wait_logs(&cluster, &["talker"], "out-line\n");
    wait_logs(&cluster, &["talker", "--stderr"], "err-line\n");
    let json = logs(&cluster, &["talker", "--output", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let line: serde_json::Value =
        serde_json::from_str(stdout(&json).lines().next().expect("a line")).expect("JSON");
    assert_eq!(line["data"], "out-line\n");
    assert_eq!(line["task_id"], "talker");
    assert_eq!(line["framework_id"], fw.id.as_str());

    fw.launch(
        KEEPER,
        "done",
        "echo finished-output; exit 3",
        v1::TaskState::TaskFailed,
    )
    .await;
    wait_logs(&cluster, &["done"], "finished-output\n");

    assert_eq!(
        failure_line(&logs(&cluster, &["web.1.nope"])),
        "drover: no task named web.1.nope"
    );

    // The same task id in a second framework.
    let mut other = TestFramework::subscribe(&cluster.addr, "other").await;
    other
        .launch(
            KEEPER,
            "talker",
            "echo other-out; exec sleep 600",
            v1::TaskState::TaskRunning,
        )
        .await;
    let e = failure_line(&logs(&cluster, &["talker"]));
    assert!(
        e.starts_with("drover: task id talker is used by 2 frameworks: ")
            && e.contains(&format!("{} (logs-test)", fw.id))
            && e.contains(&format!("{} (other)", other.id))
            && e.ends_with("; pass --framework"),
        "{e}"
    );
    wait_logs(
        &cluster,
        &["talker", "--framework", &other.id],
        "other-out\n",
    );
    wait_logs(&cluster, &["talker", "--framework", &fw.id], "out-line\n");

    // A finished task on the agent whose GC removes sandboxes once acknowledged.
    fw.launch(
        SWEEPER,
        "swept",
        "echo soon-gone",
        v1::TaskState::TaskFinished,
    )
    .await;
    let swept = cluster.work_dir(SWEEPER).join("frameworks").join(&fw.id);
    util::wait_for("the sweeper's GC", WAIT, || {
        (!swept.join("sandboxes").join("swept").exists()).then_some(())
    });
    assert_eq!(
        failure_line(&logs(&cluster, &["swept"])),
        "drover: the sandbox of swept was removed by the agent's GC"
    );

    // The keeper goes down: its tasks stay listed, its file API does not answer.
    cluster.agent_mut(KEEPER).kill9();
    let e = failure_line(&logs(&cluster, &["done", "--connect-timeout-ms", "1000"]));
    assert!(
        e.starts_with("drover: agent 127.0.0.1:") && e.contains(") is unreachable: "),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_new_output_and_ends_when_the_task_ends() {
    // Proves `drover logs --follow` prints output appended while it runs and exits 0 by itself
    // once the task has ended, with everything the task wrote.
    let cluster = start_cluster();
    cluster.wait_agents(2).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "follow-test").await;
    fw.launch(
        KEEPER,
        "stepper",
        "echo first; until [ -e go ]; do sleep 0.02; done; echo second",
        v1::TaskState::TaskRunning,
    )
    .await;
    wait_logs(&cluster, &["stepper"], "first\n");
    let mut child = Command::new(util::drover_bin())
        .args(["--masters", &cluster.addr, "logs", "stepper", "--follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drover logs --follow");
    let mut out = child.stdout.take().expect("stdout");
    // Read on a thread: the child's stdout blocks until it writes.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen != b"first\n" {
        seen.extend(rx.recv_timeout(WAIT).expect("the followed output"));
    }
    // Still following: the task has not ended.
    assert!(
        child.try_wait().expect("wait").is_none(),
        "--follow ended early"
    );
    let run = run_dir(&cluster.work_dir(KEEPER), &fw.id, "stepper");
    std::fs::write(run.join("sandbox/go"), b"").expect("go");
    fw.wait_state("stepper", v1::TaskState::TaskFinished).await;
    let status = util::wait_for("drover logs --follow to exit", WAIT, || {
        child.try_wait().expect("wait")
    });
    reader.join().expect("reader");
    seen.extend(rx.try_iter().flatten());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "{status:?}: {err}");
    assert_eq!(String::from_utf8_lossy(&seen), "first\nsecond\n");
}
