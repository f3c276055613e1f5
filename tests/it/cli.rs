//! The user CLI against real processes: `drover task|agent|framework|cluster` read the leading
//! master's Operator API (following redirects), `drover service` writes specs to coord and reads
//! what the services framework publishes there.
//!
//! The services framework itself is not run here (its own tests and the `drover local` end-to-end
//! test do that). Where a test needs the framework's side of the contract, it plays it with the
//! contract's own types: tasks labelled `service=NAME` launched through the SDK, and
//! `services::status::ServiceStatus` written to `/services/status/NAME`.

use crate::util;

use std::process::Output;
use std::time::{Duration, Instant};

use drover_coord::client::{Client, ClientOptions};
use drover_coord::op::{CreateMode, ErrorCode};
use drover_sdk::{Command, Event, Filters, Framework, TaskId, TaskRequest, TaskSpec};
use serde_json::Value;
use services::status::{Health, InstanceStatus, PendingInstances, ServiceStatus};
use util::cluster::{AgentSpec, TestCluster};
use util::{Proc, free_port};

/// Generous: everything here runs real processes on a small shared machine.
const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// One master and one agent (`agent0`: 2 cpus, 1 GiB, ports 31000-31099) under a temp dir.
struct Cluster {
    tc: TestCluster,
}

impl Cluster {
    fn start() -> Cluster {
        let mut tc = TestCluster::start(&[]);
        let spec = AgentSpec {
            cpus: "2",
            mem: "1GiB",
            ports: "31000-31099",
        };
        tc.add_agent("agent0", spec, &[]);
        Cluster { tc }
    }

    /// `drover --masters ADDR ARGS...`, run to completion off the async runtime.
    async fn drover(&self, args: &[&str]) -> Output {
        drover_at(&self.tc.addr, args).await
    }

    /// Waits until `drover agent ls --output json` shows the agent reachable.
    async fn wait_agent(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self.drover(&["agent", "ls", "--output", "json"]).await;
            if out.status.success() {
                let agents: Value = json(&out);
                if agents
                    .as_array()
                    .is_some_and(|a| a.len() == 1 && a[0]["reachable"] == true)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent0 did not register: {}",
                util::stderr(&out)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn coord(&self) -> Client {
        Client::connect(vec![self.tc.addr.clone()], ClientOptions::default())
            .await
            .expect("coord session")
    }
}

async fn drover_at(addr: &str, args: &[&str]) -> Output {
    let addr = addr.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        util::drover(&addr, &args)
    })
    .await
    .expect("drover ran")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr: {}",
            util::stdout(out),
            util::stderr(out)
        )
    })
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "drover failed: {}\nstdout: {}",
        util::stderr(out),
        util::stdout(out)
    );
    util::stdout(out)
}

/// Asserts the command failed with exactly one line on stderr, and returns it.
fn one_line_failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        util::stdout(out)
    );
    let err = util::stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].starts_with("drover: "), "{err}");
    lines[0].to_string()
}

/// Asserts the command failed and its last stderr line is the one-line reason (a `--wait`
/// prints progress lines before it when stderr is not a terminal), and returns it.
fn final_line_failure(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        util::stdout(out)
    );
    let err = util::stderr(out);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(last.starts_with("drover: "), "{err}");
    assert_eq!(err.matches("drover: ").count(), 1, "{err}");
    last.to_string()
}

/// A table's data rows (header dropped), split on runs of spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// A task for `TestFramework::launch`: id, labels, number of ports.
type TestTask<'a> = (&'a str, Vec<(&'a str, &'a str)>, u32);

/// A framework that launches the given tasks (id, labels, ports) from its first offer with room
/// and then just keeps its subscription, declining everything.
struct TestFramework {
    fw: Framework,
    task: tokio::task::JoinHandle<()>,
}

impl TestFramework {
    async fn launch(addr: &str, tasks: Vec<TestTask<'_>>) -> TestFramework {
        let (fw, mut events) = Framework::builder()
            .name("cli-test")
            .masters([addr])
            .failover_timeout(Duration::from_secs(60))
            .connect()
            .await
            .expect("subscribe");
        let mut pending: Vec<TaskSpec> = Vec::new();
        let mut requests = Vec::new();
        for (id, labels, ports) in tasks {
            let mut spec =
                TaskSpec::new(id.to_string(), Command::argv(["sleep", "600"])).name(id.to_string());
            for (k, v) in labels {
                spec = spec.label(k, v);
            }
            pending.push(spec);
            requests.push(TaskRequest::new(0.1, 32 * MIB, ports).expect("request"));
        }
        let deadline = Instant::now() + WAIT;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, events.recv())
                .await
                .expect("an offer in time")
                .expect("event stream");
            let Event::Offers(offers) = event else {
                continue;
            };
            for offer in offers {
                // One task per offer at most: each takes the offer's lowest ports.
                let Some(spec) = pending.pop() else {
                    let _ = fw
                        .decline(std::slice::from_ref(&offer.id), Duration::from_secs(1))
                        .await;
                    continue;
                };
                let request = requests.pop().expect("one request per task");
                let task = spec.build_from_offer(&offer, &request).expect("fits");
                fw.launch(
                    std::slice::from_ref(&offer.id),
                    vec![task],
                    Filters::default(),
                )
                .await
                .expect("launch");
            }
        }
        let keeper = fw.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Event::Offers(offers) = event {
                    for o in offers {
                        let _ = keeper.decline(&[o.id], Duration::from_secs(5)).await;
                    }
                }
            }
        });
        TestFramework { fw, task }
    }
}

impl Drop for TestFramework {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `drover task ls --output json` shows every id in `ids` in `state`.
async fn wait_tasks(c: &Cluster, ids: &[&str], state: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = c.drover(&["task", "ls", "--output", "json"]).await;
        let tasks = json(&out);
        let all = ids.iter().all(|id| {
            tasks
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t["task_id"] == *id && t["state"] == state))
        });
        if all {
            return tasks;
        }
        assert!(
            Instant::now() < deadline,
            "tasks {ids:?} not {state}: {tasks}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_agent_framework_and_cluster_commands_print_tables_and_json() {
    // Proves the read-only commands show what the leading master knows, as aligned tables by
    // default and as JSON with --output json, and that task ls --service filters by label.
    let c = Cluster::start();
    c.wait_agent().await;
    let _fw = TestFramework::launch(
        &c.tc.addr,
        vec![
            ("web.0.abcd", vec![("service", "web"), ("instance", "0")], 1),
            ("other-1", vec![], 0),
        ],
    )
    .await;
    let tasks = wait_tasks(&c, &["web.0.abcd", "other-1"], "TASK_RUNNING").await;
    let web = tasks
        .as_array()
        .and_then(|a| a.iter().find(|t| t["task_id"] == "web.0.abcd"))
        .expect("web task")
        .clone();
    assert_eq!(web["framework"], "cli-test");
    assert_eq!(web["hostname"], "agent0");
    assert_eq!(web["labels"]["service"], "web");
    assert_eq!(web["millicpus"], 100);
    let port = web["ports"][0].as_u64().expect("one port");
    assert!((31000..=31099).contains(&port), "{web}");

    // task ls
    let table = ok(&c.drover(&["task", "ls"]).await);
    assert!(
        table.starts_with("TASK ") && table.contains("FRAMEWORK") && table.contains("PORTS"),
        "{table}"
    );
    let r = rows(&table);
    assert_eq!(r.len(), 2, "{table}");
    let web_row = r.iter().find(|r| r[0] == "web.0.abcd").expect("web row");
    assert_eq!(web_row[1], "cli-test");
    assert_eq!(web_row[3], "agent0");
    assert_eq!(web_row[4], "RUNNING");
    assert_eq!(web_row[5], port.to_string());
    let filtered = ok(&c.drover(&["task", "ls", "--service", "web"]).await);
    let r = rows(&filtered);
    assert_eq!(r.len(), 1, "{filtered}");
    assert_eq!(r[0][0], "web.0.abcd");
    let none = json(
        &c.drover(&["task", "ls", "--service", "nope", "--output", "json"])
            .await,
    );
    assert_eq!(none, serde_json::json!([]));

    // agent ls
    let table = ok(&c.drover(&["agent", "ls"]).await);
    assert!(table.starts_with("ID "), "{table}");
    let r = rows(&table);
    assert_eq!(r.len(), 1, "{table}");
    assert_eq!(
        &r[0][1..],
        [
            "agent0",
            r[0][2].as_str(),
            "yes",
            "0.2/2",
            "64MiB/1GiB",
            "2"
        ]
    );
    let agents = json(&c.drover(&["agent", "ls", "--output", "json"]).await);
    assert_eq!(agents[0]["hostname"], "agent0");
    assert_eq!(agents[0]["reachable"], true);
    assert_eq!(agents[0]["tasks"], 2);
    assert_eq!(agents[0]["total"]["millicpus"], 2000);
    assert_eq!(agents[0]["used"]["mem_bytes"], 64 * MIB);
    assert_eq!(agents[0]["address"], r[0][2]);

    // framework ls
    let table = ok(&c.drover(&["framework", "ls"]).await);
    let r = rows(&table);
    assert_eq!(r.len(), 1, "{table}");
    assert_eq!(&r[0][1..], ["cli-test", "*", "yes", "2", "0.2", "64MiB"]);
    let frameworks = json(&c.drover(&["framework", "ls", "--output", "json"]).await);
    assert_eq!(frameworks[0]["name"], "cli-test");
    assert_eq!(frameworks[0]["connected"], true);
    assert_eq!(frameworks[0]["tasks"], 2);
    assert_eq!(frameworks[0]["used"]["millicpus"], 200);

    // cluster status
    let text = ok(&c.drover(&["cluster", "status"]).await);
    assert!(
        text.contains(&format!("leader:      {}", c.tc.addr)),
        "{text}"
    );
    let master_row = text
        .lines()
        .find(|l| l.starts_with("  ") && l.contains(&c.tc.addr))
        .unwrap_or_default();
    assert!(master_row.contains(" leading "), "{text}");
    assert!(text.contains("agents:      1 reachable of 1"), "{text}");
    assert!(text.contains("frameworks:  1 connected of 1"), "{text}");
    assert!(text.contains("tasks:       2 RUNNING"), "{text}");
    let status = json(&c.drover(&["cluster", "status", "--output", "json"]).await);
    assert_eq!(status["leader"], c.tc.addr.as_str());
    assert_eq!(status["masters"][0]["role"], "leading", "{status}");
    assert_eq!(status["masters"][0]["serving"], true, "{status}");
    assert_eq!(status["leader_id"], status["masters"][0]["master_id"]);
    assert_eq!(status["agents"]["reachable"], 1);
    assert_eq!(status["tasks"]["by_state"]["TASK_RUNNING"], 2);

    // `drover agent` without a subcommand is still the daemon: it insists on --work-dir.
    let out = c.drover(&["agent"]).await;
    assert!(!out.status.success());
    assert!(
        util::stderr(&out).contains("--work-dir"),
        "{}",
        util::stderr(&out)
    );
}

/// Runs `drover --masters ADDR ARGS...` with stdout on a pipe whose reader is already closed,
/// as `drover agent ls | head -1` is once `head` has its line.
fn drover_into_closed_pipe(addr: &str, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    std::process::Command::new(util::drover_bin())
        .arg("--masters")
        .arg(addr)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|child| child.wait_with_output())
        .expect("run drover")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_quietly_with_status_0_when_stdout_is_closed() {
    // Proves a user command whose stdout reader went away (`| head -1`) neither panics
    // ("failed printing to stdout: Broken pipe") nor prints anything: it exits 0.
    let c = Cluster::start();
    c.wait_agent().await;
    for args in [
        &["agent", "ls"][..],
        &["agent", "ls", "--output", "json"],
        &["task", "ls"],
        &["framework", "ls", "--output", "json"],
        &["cluster", "status"],
        &["service", "ls"],
        &["coord", "ls", "/"],
        &["coord", "get", "/", "--stat"],
    ] {
        let addr = c.tc.addr.clone();
        let out = tokio::task::spawn_blocking(move || drover_into_closed_pipe(&addr, args))
            .await
            .expect("drover ran");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "drover {}: {}, stderr: {}",
            args.join(" "),
            out.status,
            util::stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_follow_redirects_and_fail_with_one_line_while_no_master_leads() {
    // Proves a follower's UNAVAILABLE + drover-leader is followed, `cluster status` tells the
    // leader from the followers, and with no quorum (no leader) or nobody listening every
    // command exits non-zero with one line.
    let mut e = util::Ensemble::start(3, util::FAST_ZAB_FLAGS);
    let (leader, _) = e.wait_stable(WAIT);
    let follower = e.ids().find(|&id| id != leader).expect("a follower");
    let follower_addr = e.addr(follower);
    let all = e.ids().map(|id| e.addr(id)).collect::<Vec<_>>().join(",");
    // The master may take a moment after ZAB settles to lead the scheduler side.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let out = drover_at(&follower_addr, &["cluster", "status", "--output", "json"]).await;
        if out.status.success() {
            break json(&out);
        }
        assert!(Instant::now() < deadline, "{}", util::stderr(&out));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["leader"], e.addr(leader).as_str(), "{status}");
    assert_eq!(status["leader_id"], leader, "{status}");
    // Asked through one follower, the command still lists all three masters (their peers).
    let masters = status["masters"].as_array().expect("masters");
    assert_eq!(masters.len(), 3, "{status}");
    for m in masters {
        let want = if m["master_id"] == leader {
            "leading"
        } else {
            "following"
        };
        assert_eq!(m["role"], want, "{status}");
        assert_eq!(m["epoch"], status["epoch"], "{status}");
    }
    let out = drover_at(&follower_addr, &["agent", "ls", "--output", "json"]).await;
    assert_eq!(json(&out), serde_json::json!([]));
    let text = ok(&drover_at(&all, &["cluster", "status"]).await);
    assert_eq!(text.matches(" leading").count(), 1, "{text}");
    assert_eq!(text.matches(" following").count(), 2, "{text}");

    // Two of three gone: the last master answers, but nobody leads.
    for id in e.ids().filter(|&id| id != follower).collect::<Vec<_>>() {
        e.kill9(id);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let out = drover_at(
            &follower_addr,
            &["cluster", "status", "--leader-wait-ms", "500"],
        )
        .await;
        if !out.status.success() {
            let line = one_line_failure(&out);
            if line.contains("no master leads right now") {
                assert!(line.contains(&follower_addr), "{line}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "still a leader: {}",
            util::stdout(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for cmd in [&["task", "ls"][..], &["agent", "ls"], &["framework", "ls"]] {
        let mut args = cmd.to_vec();
        args.extend(["--leader-wait-ms", "300"]);
        let line = one_line_failure(&drover_at(&follower_addr, &args).await);
        assert!(
            line.contains("no master leads right now"),
            "{cmd:?}: {line}"
        );
    }

    // Nobody listening at all.
    let dead = format!("127.0.0.1:{}", free_port());
    for cmd in [
        &["cluster", "status"][..],
        &["task", "ls"],
        &["agent", "ls"],
        &["framework", "ls"],
        &["service", "ls"],
        &["service", "status", "web"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--leader-wait-ms", "300"]);
        let started = Instant::now();
        let line = one_line_failure(&drover_at(&dead, &args).await);
        assert!(line.contains("cannot reach any master"), "{cmd:?}: {line}");
        assert!(line.contains(&dead), "{cmd:?}: {line}");
        assert!(started.elapsed() < WAIT, "bounded by --leader-wait-ms");
    }
}

/// A valid spec; each invalid case changes one field of it.
const BASE_SPEC: &str = r#"name = "web"
cmd = ["sleep", "600"]
instances = 2
cpus = 0.1
mem = "32MiB"
ports = 1
env = { GREETING = "hi" }

[health]
tcp = true

[placement]
max_per_host = 1

[upgrade]
max_surge = 1
max_unavailable = 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_naming_the_field_and_nothing_is_stored() {
    // Proves deploy validates before storing: each bad value exits non-zero with one line that
    // names the file and the field, and coord holds no spec afterwards.
    let c = Cluster::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"web\"", "name = \"Web_1\"", "name"),
        ("name = \"web\"", "name = \"\"", "name"),
        ("cmd = [\"sleep\", \"600\"]", "cmd = []", "cmd"),
        ("instances = 2", "instances = -1", "instances"),
        ("instances = 2", "instances = 20000", "instances"),
        ("instances = 2\n", "", "instances"),
        ("cpus = 0.1", "cpus = 0", "cpus"),
        ("cpus = 0.1", "cpus = -1", "cpus"),
        ("cpus = 0.1", "cpus = 2000", "cpus"),
        ("mem = \"32MiB\"", "mem = \"lots\"", "mem"),
        ("mem = \"32MiB\"", "mem = 0", "mem"),
        ("ports = 1", "ports = 33", "ports"),
        (
            "env = { GREETING = \"hi\" }",
            "env = { \"1X\" = \"a\" }",
            "env.1X",
        ),
        (
            "tcp = true",
            "tcp = true\nport_index = 3",
            "health.port_index",
        ),
        (
            "tcp = true",
            "tcp = true\ninterval = \"0s\"",
            "health.interval",
        ),
        (
            "tcp = true",
            "tcp = true\nmax_failures = 0",
            "health.max_failures",
        ),
        (
            "max_per_host = 1",
            "max_per_host = 0",
            "placement.max_per_host",
        ),
        (
            "max_per_host = 1",
            "spread_by = \"\"",
            "placement.spread_by",
        ),
        ("max_surge = 1", "max_surge = -1", "upgrade.max_surge"),
        (
            "max_unavailable = 0",
            "max_unavailable = -1",
            "upgrade.max_unavailable",
        ),
        ("instances = 2", "instances = 2\nreplicas = 3", "replicas"),
    ];
    for (i, (from, to, field)) in cases.iter().enumerate() {
        assert!(
            BASE_SPEC.contains(from),
            "case {i}: {from:?} not in the base"
        );
        let text = BASE_SPEC.replacen(from, to, 1);
        let file = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&file, &text).expect("write spec");
        let out = c
            .drover(&["service", "deploy", file.to_str().expect("utf-8")])
            .await;
        let line = one_line_failure(&out);
        assert!(line.contains(&format!("case{i}.toml")), "case {i}: {line}");
        assert!(
            line.contains(field),
            "case {i} ({to:?}) should name {field}: {line}"
        );
    }
    // JSON and YAML go through the same checks; an unknown extension is refused.
    let json_file = dir.path().join("bad.json");
    std::fs::write(
        &json_file,
        r#"{"name": "web", "cmd": ["x"], "instances": 1, "cpus": -1, "mem": "1MiB"}"#,
    )
    .expect("write");
    let line = one_line_failure(
        &c.drover(&["service", "deploy", json_file.to_str().expect("utf-8")])
            .await,
    );
    assert!(line.contains("cpus"), "{line}");
    let yaml_file = dir.path().join("bad.yml");
    std::fs::write(
        &yaml_file,
        "name: web\ncmd: [x]\ninstances: 1\ncpus: 1\nmem: 1MiB\nbogus: 1\n",
    )
    .expect("write");
    let line = one_line_failure(
        &c.drover(&["service", "deploy", yaml_file.to_str().expect("utf-8")])
            .await,
    );
    assert!(line.contains("bogus"), "{line}");
    let txt = dir.path().join("web.txt");
    std::fs::write(&txt, BASE_SPEC).expect("write");
    let line = one_line_failure(
        &c.drover(&["service", "deploy", txt.to_str().expect("utf-8")])
            .await,
    );
    assert!(line.contains(".toml"), "{line}");
    // The cluster was up all along, and nothing reached coord.
    let coord = c.coord().await;
    match coord.children("/services/specs").await {
        Ok(children) => assert!(children.is_empty(), "stored: {children:?}"),
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::NoNode), "{e}"),
    }
    let listed = json(&c.drover(&["service", "ls", "--output", "json"]).await);
    assert_eq!(listed, serde_json::json!([]));
    // The valid base deploys, to prove the cases failed for their one change.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, BASE_SPEC).expect("write");
    ok(&c
        .drover(&["service", "deploy", good.to_str().expect("utf-8")])
        .await);
}

fn instance(i: u32, state: &str, health: Health, version: &str) -> InstanceStatus {
    InstanceStatus {
        task_id: format!("web.{i}.abcd"),
        instance: i,
        agent_id: "agent-id".into(),
        host: "127.0.0.1".into(),
        ports: vec![31000 + i as u16],
        state: state.into(),
        health,
        restarts: i,
        version: version.into(),
        started_at_ms: Some(1_700_000_000_000),
        message: String::new(),
    }
}

fn service_status(version: &str, desired: u32, instances: Vec<InstanceStatus>) -> ServiceStatus {
    let running = instances
        .iter()
        .filter(|i| i.state == "TASK_RUNNING")
        .count() as u32;
    let healthy = instances
        .iter()
        .filter(|i| i.state == "TASK_RUNNING" && i.health == Health::Healthy)
        .count() as u32;
    ServiceStatus {
        name: "web".into(),
        version: version.into(),
        desired,
        staged: instances.len() as u32 - running,
        running,
        healthy,
        at_spec: healthy == desired && instances.len() as u32 == desired,
        removing: false,
        message: String::new(),
        pending: PendingInstances::default(),
        instances,
        updated_at_ms: 1_700_000_000_000,
    }
}

/// Writes the framework's side: `/services/status/web`.
async fn publish(coord: &Client, status: &ServiceStatus) {
    for p in ["/services", "/services/status"] {
        match coord.create(p, Vec::new(), CreateMode::Persistent).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::NodeExists) => {}
            Err(e) => panic!("create {p}: {e}"),
        }
    }
    let data = status.to_json().into_bytes();
    match coord
        .create("/services/status/web", data.clone(), CreateMode::Persistent)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::NodeExists) => {
            coord
                .set("/services/status/web", data, None)
                .await
                .expect("set status");
        }
        Err(e) => panic!("create status: {e}"),
    }
}

async fn stored_spec(coord: &Client) -> Value {
    let (data, _) = coord.get("/services/specs/web").await.expect("spec stored");
    serde_json::from_slice(&data).expect("spec is JSON")
}

/// Starts `drover ARGS` in the background (for --wait).
fn spawn_drover(addr: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(util::drover_bin())
        .arg("--masters")
        .arg(addr)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn drover")
}

async fn finished(child: tokio::process::Child) -> Output {
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("drover finished in time")
        .expect("drover output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_deploy_ls_status_scale_rm_through_coord() {
    // Proves the service commands keep the coord contract: deploy stores the validated JSON
    // (create, replace, unchanged), ls/status render the framework's published status, scale is
    // a conditional rewrite of instances only, --wait follows the status to success or to the
    // framework's reason, rm deletes the spec and waits for the status node and the service's
    // tasks to go, and unknown names fail with one line.
    let c = Cluster::start();
    c.wait_agent().await;
    let coord = c.coord().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("web.toml");
    std::fs::write(&file, BASE_SPEC).expect("write");
    let file_s = file.to_str().expect("utf-8");

    // deploy: created, then unchanged, then updated.
    let out = json(
        &c.drover(&["service", "deploy", file_s, "--output", "json"])
            .await,
    );
    assert_eq!(out["stored"], "created");
    assert_eq!(out["instances"], 2);
    let version = out["version"].as_str().expect("version").to_string();
    let spec = stored_spec(&coord).await;
    assert_eq!(spec["name"], "web");
    assert_eq!(spec["instances"], 2);
    let text = ok(&c.drover(&["service", "deploy", file_s]).await);
    assert_eq!(
        text,
        format!("service web unchanged: 2 instances, version {version}\n")
    );

    // ls and status before the framework published anything.
    let table = ok(&c.drover(&["service", "ls"]).await);
    let r = rows(&table);
    assert_eq!(r.len(), 1, "{table}");
    assert_eq!(r[0][..4], ["web", "-/2", "-", version.as_str()]);
    assert!(table.contains("no status yet"), "{table}");
    let text = ok(&c.drover(&["service", "status", "web"]).await);
    assert!(text.contains("instances:  2 desired"), "{text}");

    // The framework's status: one healthy, one starting.
    publish(
        &coord,
        &service_status(
            &version,
            2,
            vec![
                instance(0, "TASK_RUNNING", Health::Healthy, &version),
                instance(1, "TASK_STARTING", Health::Unknown, &version),
            ],
        ),
    )
    .await;
    let table = ok(&c.drover(&["service", "ls"]).await);
    let r = rows(&table);
    assert_eq!(r[0][..4], ["web", "1/2", "1", version.as_str()]);
    let listed = json(&c.drover(&["service", "ls", "--output", "json"]).await);
    assert_eq!(listed[0]["running"], 1);
    assert_eq!(listed[0]["healthy"], 1);
    assert_eq!(listed[0]["instances"], 2);
    assert_eq!(listed[0]["at_spec"], false);
    let text = ok(&c.drover(&["service", "status", "web"]).await);
    assert!(
        text.contains("instances:  2 desired, 1 staged, 1 running, 1 healthy"),
        "{text}"
    );
    let table = &text[text.find("INSTANCE").expect("instance table")..];
    let r = rows(table);
    assert_eq!(r.len(), 2, "{table}");
    assert_eq!(
        r[0][..8],
        [
            "0",
            "web.0.abcd",
            "agent-id",
            "127.0.0.1",
            "31000",
            "RUNNING",
            "healthy",
            "0"
        ]
    );
    assert_eq!(r[1][5..8], ["STARTING", "unknown", "1"]);
    let st = json(
        &c.drover(&["service", "status", "web", "--output", "json"])
            .await,
    );
    assert_eq!(st["spec"]["instances"], 2);
    assert_eq!(st["status"]["instances"][1]["state"], "TASK_STARTING");

    // deploy --wait: follows the status until at spec.
    let child = spawn_drover(
        &c.tc.addr,
        &["service", "deploy", file_s, "--wait", "--poll-ms", "100"],
    );
    publish(
        &coord,
        &service_status(
            &version,
            2,
            vec![
                instance(0, "TASK_RUNNING", Health::Healthy, &version),
                instance(1, "TASK_RUNNING", Health::Healthy, &version),
            ],
        ),
    )
    .await;
    let out = finished(child).await;
    let text = ok(&out);
    assert!(
        text.contains("service web is at its spec: 2 instances running and healthy"),
        "{text}"
    );

    // scale: only instances changes, conditionally; bad counts and unknown names are refused.
    let out = json(
        &c.drover(&["service", "scale", "web", "3", "--output", "json"])
            .await,
    );
    assert_eq!(out["previous"], 2);
    assert_eq!(out["instances"], 3);
    assert_eq!(
        out["version"],
        version.as_str(),
        "scaling keeps the version"
    );
    let spec = stored_spec(&coord).await;
    assert_eq!(spec["instances"], 3);
    assert_eq!(spec["cmd"], serde_json::json!(["sleep", "600"]));
    for bad in ["-1", "10001", "many"] {
        let line = one_line_failure(&c.drover(&["service", "scale", "web", bad]).await);
        assert!(line.contains("instances"), "{bad}: {line}");
    }
    assert_eq!(stored_spec(&coord).await["instances"], 3, "nothing changed");

    // scale --wait fails with the framework's reason once nothing moves for the grace.
    publish(&coord, &{
        let mut s = service_status(
            &version,
            3,
            vec![
                instance(0, "TASK_RUNNING", Health::Healthy, &version),
                instance(1, "TASK_RUNNING", Health::Healthy, &version),
            ],
        );
        s.message = "1 instance pending: max_per_host = 1 and only 2 agents".into();
        s.pending.unplaceable = 1;
        s
    })
    .await;
    let out = c
        .drover(&[
            "service",
            "scale",
            "web",
            "3",
            "--wait",
            "--place-grace-ms",
            "300",
            "--poll-ms",
            "50",
        ])
        .await;
    let line = final_line_failure(&out);
    assert!(
        util::stderr(&out)
            .contains("web: 2/3 staged, 2/3 running, 2/3 healthy - 1 instance pending"),
        "progress lines: {}",
        util::stderr(&out)
    );
    assert!(
        line.contains("service web cannot reach its spec: 1 instance pending: max_per_host = 1"),
        "{line}"
    );
    let out = c
        .drover(&[
            "service",
            "scale",
            "web",
            "3",
            "--wait",
            "--place-grace-ms",
            "300",
            "--output",
            "json",
        ])
        .await;
    assert!(!out.status.success());
    let result = json(&out);
    assert_eq!(result["at_spec"], false);
    assert!(
        result["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_per_host")),
        "{result}"
    );

    // A --wait whose framework never publishes the new version times out saying so.
    let changed = dir.path().join("web2.toml");
    std::fs::write(
        &changed,
        BASE_SPEC.replace("GREETING = \"hi\"", "GREETING = \"hello\""),
    )
    .expect("write");
    let line = final_line_failure(
        &c.drover(&[
            "service",
            "deploy",
            changed.to_str().expect("utf-8"),
            "--wait",
            "--timeout-ms",
            "500",
        ])
        .await,
    );
    assert!(line.contains("timed out after"), "{line}");
    assert!(line.contains("is it running?"), "{line}");
    let spec = stored_spec(&coord).await;
    assert_eq!(
        spec["env"]["GREETING"], "hello",
        "the new spec is stored (updated)"
    );
    assert_eq!(spec["instances"], 2, "deploy stores the file's instances");

    // Unknown services: one line each.
    for cmd in [
        &["service", "status", "nope"][..],
        &["service", "scale", "nope", "3"],
        &["service", "rm", "nope"],
    ] {
        let line = one_line_failure(&c.drover(cmd).await);
        assert_eq!(line, "drover: no service named nope", "{cmd:?}");
    }

    // rm waits for the status node and the service's tasks; the framework's side is played here:
    // a running task labelled service=web, killed and its status removed after the spec goes.
    let fw = TestFramework::launch(
        &c.tc.addr,
        vec![("web.0.efgh", vec![("service", "web"), ("instance", "0")], 1)],
    )
    .await;
    wait_tasks(&c, &["web.0.efgh"], "TASK_RUNNING").await;
    let child = spawn_drover(&c.tc.addr, &["service", "rm", "web", "--poll-ms", "100"]);
    let deadline = Instant::now() + WAIT;
    while coord
        .exists("/services/specs/web")
        .await
        .expect("exists")
        .is_some()
    {
        assert!(Instant::now() < deadline, "rm did not delete the spec");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fw.fw
        .kill(&TaskId::from("web.0.efgh".to_string()), None)
        .await
        .expect("kill");
    wait_tasks(&c, &["web.0.efgh"], "TASK_KILLED").await;
    coord
        .delete("/services/status/web", None)
        .await
        .expect("delete status");
    let out = finished(child).await;
    let text = ok(&out);
    assert!(
        text.starts_with("service web removed: no instance runs"),
        "{text}"
    );
    let listed = json(&c.drover(&["service", "ls", "--output", "json"]).await);
    assert_eq!(listed, serde_json::json!([]));

    // rm whose framework never finishes times out naming what is left.
    std::fs::write(&file, BASE_SPEC).expect("write");
    ok(&c.drover(&["service", "deploy", file_s]).await);
    publish(&coord, &service_status(&version, 2, vec![])).await;
    let line = final_line_failure(
        &c.drover(&["service", "rm", "web", "--timeout-ms", "300"])
            .await,
    );
    assert!(
        line.contains("/services/status/web is still there"),
        "{line}"
    );
    assert!(
        coord
            .exists("/services/specs/web")
            .await
            .expect("exists")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_scale_and_rm_with_the_real_services_framework() {
    // Proves the CLI and the services framework agree on the coord contract end to end: deploy
    // --wait returns once the framework runs the instances, status/ls/task ls show them, scale
    // --wait follows a scale up, an unplaceable spec fails --wait with the framework's reason,
    // and rm waits until no instance runs.
    let c = Cluster::start();
    c.wait_agent().await;
    // `drover services` runs the same framework as the `services` binary.
    let _services = Proc::spawn(
        "services",
        &[
            "services",
            "--masters",
            &c.tc.addr,
            "--check-host",
            "127.0.0.1",
        ],
        c.tc.dir.path(),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sleeper = dir.path().join("sleeper.toml");
    std::fs::write(
        &sleeper,
        "name = \"sleeper\"\ncmd = [\"sleep\", \"600\"]\ninstances = 2\ncpus = 0.1\nmem = \"16MiB\"\nports = 1\n",
    )
    .expect("write");
    let sleeper = sleeper.to_str().expect("utf-8");
    let out = c
        .drover(&["service", "deploy", sleeper, "--wait", "--output", "json"])
        .await;
    let result = json(&out);
    assert!(out.status.success(), "{result} {}", util::stderr(&out));
    assert_eq!(result["at_spec"], true);
    assert_eq!(result["status"]["running"], 2);
    let version = result["version"].as_str().expect("version").to_string();

    let tasks = json(
        &c.drover(&["task", "ls", "--service", "sleeper", "--output", "json"])
            .await,
    );
    let tasks = tasks.as_array().expect("array");
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for t in tasks {
        assert_eq!(t["state"], "TASK_RUNNING", "{t}");
        assert_eq!(t["labels"]["service"], "sleeper", "{t}");
        assert_eq!(t["labels"]["version"], version.as_str(), "{t}");
        assert_eq!(t["ports"].as_array().map(Vec::len), Some(1), "{t}");
    }
    let table = ok(&c.drover(&["service", "ls"]).await);
    let r = rows(&table);
    assert_eq!(
        r[0][..4],
        ["sleeper", "2/2", "2", version.as_str()],
        "{table}"
    );
    let text = ok(&c.drover(&["service", "status", "sleeper"]).await);
    let table = &text[text.find("INSTANCE").expect("instance table")..];
    let r = rows(table);
    assert_eq!(r.len(), 2, "{text}");
    for row in &r {
        assert_eq!(row[3], "agent0", "{text}");
        assert_eq!(row[5], "RUNNING", "{text}");
    }

    let out = c
        .drover(&["service", "scale", "sleeper", "3", "--wait"])
        .await;
    let text = ok(&out);
    assert!(
        text.contains("service sleeper is at its spec: 3 instances"),
        "{text}"
    );
    let tasks = json(
        &c.drover(&["task", "ls", "--service", "sleeper", "--output", "json"])
            .await,
    );
    let running = tasks
        .as_array()
        .expect("array")
        .iter()
        .filter(|t| t["state"] == "TASK_RUNNING")
        .count();
    assert_eq!(running, 3, "{tasks}");

    // The agent has 2 cpus: 4 per instance can never be placed.
    let big = dir.path().join("big.toml");
    std::fs::write(
        &big,
        "name = \"big\"\ncmd = [\"sleep\", \"600\"]\ninstances = 1\ncpus = 4\nmem = \"16MiB\"\n",
    )
    .expect("write");
    let out = c
        .drover(&[
            "service",
            "deploy",
            big.to_str().expect("utf-8"),
            "--wait",
            "--place-grace-ms",
            "1000",
        ])
        .await;
    let line = final_line_failure(&out);
    assert!(line.contains("service big cannot reach its spec"), "{line}");
    assert!(line.contains("needs 4 cpus per instance"), "{line}");

    ok(&c.drover(&["service", "rm", "big"]).await);
    let text = ok(&c.drover(&["service", "rm", "sleeper"]).await);
    assert!(
        text.starts_with("service sleeper removed: no instance runs"),
        "{text}"
    );
    let tasks = json(
        &c.drover(&["task", "ls", "--service", "sleeper", "--output", "json"])
            .await,
    );
    assert!(
        tasks
            .as_array()
            .expect("array")
            .iter()
            .all(|t| t["state"] != "TASK_RUNNING"),
        "{tasks}"
    );
    assert_eq!(
        json(&c.drover(&["service", "ls", "--output", "json"]).await),
        serde_json::json!([])
    );
}
