//! The services framework end to end: a real master, two real agents running real HTTP servers,
//! and two copies of `drover services` (one leads, one stands by). Specs are written to coord the
//! way `drover service deploy` does; what runs is checked through processes, HTTP and the
//! published status.

use crate::util;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use drover_coord::CreateMode;
use drover_coord::client::{Client, ClientOptions};
use drover_coord::op::ErrorCode;
use services::spec::{Format, ServiceSpec, parse};
use services::status::{Health, ServiceStatus};
use util::Proc;
use util::cluster::{AgentSpec, TestCluster};

/// Generous: CI machines are slow and everything here runs real processes.
const WAIT: Duration = Duration::from_secs(60);

/// A master, two agents and `copies` framework copies, all under one temp dir.
struct Cluster {
    frameworks: Vec<Option<Proc>>,
    coord: Client,
    /// Dropped after the framework copies.
    tc: TestCluster,
}

impl Cluster {
    async fn start(copies: usize) -> Cluster {
        let mut tc = TestCluster::start(&[
            "--agent-unreachable-after-ms",
            "2000",
            "--framework-heartbeat-interval-ms",
            "1000",
            "--session-timeout-min-ms",
            "2000",
        ]);
        // Port ranges nobody uses now: other clusters on this machine run tasks too.
        for n in 0..2 {
            let ports = free_port_range(50);
            let spec = AgentSpec {
                cpus: "4",
                mem: "2GiB",
                ports: &ports,
            };
            tc.add_agent(&format!("agent{n}"), spec, &[]);
        }
        let addr = tc.addr.clone();
        let coord = Client::connect(vec![addr.clone()], ClientOptions::default())
            .await
            .expect("coord client");
        for path in ["/services", "/services/specs"] {
            match coord.create(path, Vec::new(), CreateMode::Persistent).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::NodeExists) => {}
                Err(e) => panic!("create {path}: {e}"),
            }
        }
        let mut cluster = Cluster {
            frameworks: Vec::new(),
            coord,
            tc,
        };
        for n in 0..copies {
            let copy = cluster.start_framework(n);
            cluster.frameworks.push(Some(copy));
        }
        cluster
    }

    fn start_framework(&self, n: usize) -> Proc {
        Proc::spawn(
            &format!("services{n}"),
            &[
                "services",
                "--masters",
                &self.tc.addr,
                "--check-host",
                "127.0.0.1",
                "--backoff-initial",
                "500ms",
                "--backoff-max",
                "2s",
                "--decline-refuse",
                "1s",
                "--tick-interval",
                "50ms",
                "--status-interval",
                "100ms",
                "--coord-session-timeout",
                "2s",
                "--failover-timeout",
                "10m",
            ],
            self.tc.dir.path(),
        )
    }

    async fn deploy(&self, text: &str) -> ServiceSpec {
        let spec = parse(text, Format::Toml).expect("valid spec");
        let path = services::paths::spec(&spec.name);
        let json = spec.to_json().into_bytes();
        match self.coord.exists(&path).await.expect("exists") {
            Some(_) => {
                self.coord.set(&path, json, None).await.expect("set spec");
            }
            None => {
                self.coord
                    .create(&path, json, CreateMode::Persistent)
                    .await
                    .expect("create spec");
            }
        }
        spec
    }

    async fn status(&self, name: &str) -> Option<ServiceStatus> {
        match self.coord.get(&services::paths::status(name)).await {
            Ok((data, _)) => Some(
                ServiceStatus::from_json(&String::from_utf8_lossy(&data)).expect("status JSON"),
            ),
            Err(e) if e.code() == Some(ErrorCode::NoNode) => None,
            Err(e) => panic!("get status: {e}"),
        }
    }

    /// Waits until the service's status says it is at `spec`'s version and instance count.
    async fn wait_at_spec(&self, spec: &ServiceSpec) -> ServiceStatus {
        let version = spec.version();
        self.wait_status(&spec.name, "the service at its spec", |s| {
            s.at_spec && s.version == version && s.desired == spec.instances
        })
        .await
    }

    async fn wait_status(
        &self,
        name: &str,
        what: &str,
        mut ok: impl FnMut(&ServiceStatus) -> bool,
    ) -> ServiceStatus {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(s) = self.status(name).await {
                if ok(&s) {
                    return s;
                }
                last = Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Live processes of tasks whose id starts with `prefix`, by task id.
    fn task_processes(&self, prefix: &str) -> std::collections::BTreeMap<String, Vec<i32>> {
        self.tc.task_processes(prefix)
    }

    /// The pid of the leading framework copy (from its election node).
    async fn leading_copy(&self) -> usize {
        let mut children = self
            .coord
            .children(services::paths::LEADER)
            .await
            .expect("election nodes");
        children.sort();
        let first = format!("{}/{}", services::paths::LEADER, children[0]);
        let (data, _) = self.coord.get(&first).await.expect("leader node");
        let text = String::from_utf8_lossy(&data).to_string();
        let pid: i32 = text
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("pid in the election node");
        self.frameworks
            .iter()
            .position(|f| f.as_ref().is_some_and(|f| f.pid() == pid))
            .expect("the leader is one of ours")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The framework copies first; then `tc` stops the agents and the tasks.
        self.frameworks.clear();
    }
}

/// `LOW-HIGH`: `len` consecutive ports below the ephemeral range that nobody listens on now.
fn free_port_range(len: u16) -> String {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let start = low + (h.finish() % u64::from(ephemeral_low - low - len)) as u16;
        let free =
            (start..start + len).all(|port| std::net::TcpListener::bind(("0.0.0.0", port)).is_ok());
        if free {
            return format!("{start}-{}", start + len - 1);
        }
    }
    panic!("no free range of {len} ports");
}

/// The environment variable `name` of process `pid`.
fn env_of(pid: i32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).to_string())
        .find_map(|v| v.strip_prefix(&prefix).map(str::to_string))
}

/// `GET /` on 127.0.0.1:port; the status code.
fn http_get(port: u16) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn web(instances: u32, extra: &str) -> String {
    format!(
        r#"
name = "web"
cmd = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "$PORT0"]
instances = {instances}
cpus = 0.1
mem = "64MiB"
ports = 1
kill_grace = "1s"
{extra}
[health]
http = "/"
interval = "1s"
timeout = "1s"
grace = "20s"
[upgrade]
max_surge = 1
max_unavailable = 1
"#
    )
}

/// Every instance in the status answers HTTP on its port, and each runs as a process.
fn assert_instances_answer(cluster: &Cluster, status: &ServiceStatus) {
    let processes = cluster.task_processes("web.");
    for instance in &status.instances {
        assert_eq!(instance.ports.len(), 1, "{instance:?}");
        assert_eq!(
            http_get(instance.ports[0]),
            Some(200),
            "{} on port {}",
            instance.task_id,
            instance.ports[0]
        );
        assert!(
            processes.contains_key(&instance.task_id),
            "{} has no process: {processes:?}",
            instance.task_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_replace_scale_upgrade_and_remove_real_http_servers() {
    // Proves the whole life of a service on real processes: deploy (every instance answers HTTP
    // on its own port), kill -9 → replaced, scale 4 → 6 → 2 (the newest go), a rolling upgrade
    // that never has fewer than instances - max_unavailable healthy, and rm leaving nothing.
    let cluster = Cluster::start(1).await;
    let spec = cluster.deploy(&web(4, "")).await;
    let status = cluster.wait_at_spec(&spec).await;
    assert_eq!(status.instances.len(), 4);
    assert!(status.instances.iter().all(|i| i.health == Health::Healthy));
    assert_instances_answer(&cluster, &status);
    let ports: BTreeSet<u16> = status.instances.iter().map(|i| i.ports[0]).collect();
    assert_eq!(ports.len(), 4, "every instance has its own port");

    // kill -9 one instance: a replacement runs and answers.
    let victim = status.instances[1].clone();
    let pids = cluster.task_processes(&victim.task_id)[&victim.task_id].clone();
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let status = cluster
        .wait_status("web", "the killed instance replaced", |s| {
            s.at_spec && s.instances.iter().all(|i| i.task_id != victim.task_id)
        })
        .await;
    let replacement = status
        .instances
        .iter()
        .find(|i| i.instance == victim.instance)
        .expect("same index replaced");
    assert_eq!(replacement.restarts, 1, "{replacement:?}");
    assert_instances_answer(&cluster, &status);

    // Scale 4 → 6 → 2: the two newest go, the others keep running untouched.
    let before: BTreeSet<String> = status.instances.iter().map(|i| i.task_id.clone()).collect();
    let spec = cluster.deploy(&web(6, "")).await;
    let status = cluster.wait_at_spec(&spec).await;
    assert_eq!(status.instances.len(), 6);
    assert_instances_answer(&cluster, &status);
    let six: Vec<_> = status.instances.clone();
    assert!(
        before.iter().all(|id| six.iter().any(|i| &i.task_id == id)),
        "scaling up kept every instance"
    );
    let spec = cluster.deploy(&web(2, "")).await;
    let status = cluster.wait_at_spec(&spec).await;
    assert_eq!(status.instances.len(), 2);
    let mut by_start = six.clone();
    by_start.sort_by_key(|i| i.started_at_ms);
    let kept: BTreeSet<String> = status.instances.iter().map(|i| i.task_id.clone()).collect();
    // The two kept are among the four oldest (the two launched by the scale-up went first).
    let new_two: BTreeSet<String> = six
        .iter()
        .filter(|i| !before.contains(&i.task_id))
        .map(|i| i.task_id.clone())
        .collect();
    assert!(
        kept.is_disjoint(&new_two),
        "the newest went first: kept {kept:?}, new {new_two:?}"
    );
    let processes = util::wait_for("only the kept instances to run", WAIT, || {
        let p = cluster.task_processes("web.");
        (p.keys().cloned().collect::<BTreeSet<_>>() == kept).then_some(p)
    });
    assert_eq!(processes.len(), 2);
    assert_instances_answer(&cluster, &status);

    // Rolling upgrade (new env) of 4 instances with max_unavailable = 1: never fewer than 3
    // healthy, and in the end every process has the new env.
    let spec = cluster.deploy(&web(4, "")).await;
    cluster.wait_at_spec(&spec).await;
    let old_version = spec.version();
    let spec = cluster.deploy(&web(4, "env = { RELEASE = \"2\" }")).await;
    assert_ne!(spec.version(), old_version);
    let mut lowest_healthy = u32::MAX;
    let mut samples = 0;
    let status = cluster
        .wait_status("web", "the upgrade done", |s| {
            samples += 1;
            let healthy = s
                .instances
                .iter()
                .filter(|i| i.state == "TASK_RUNNING" && i.health == Health::Healthy)
                .count() as u32;
            lowest_healthy = lowest_healthy.min(healthy);
            s.at_spec && s.version == spec.version()
        })
        .await;
    assert!(
        samples > 3,
        "the upgrade was observed while it ran ({samples} samples)"
    );
    assert!(
        lowest_healthy >= 3,
        "{lowest_healthy} healthy at some point; at least 3 expected"
    );
    assert_instances_answer(&cluster, &status);
    let processes = cluster.task_processes("web.");
    assert_eq!(processes.len(), 4, "{processes:?}");
    for pids in processes.values() {
        assert_eq!(env_of(pids[0], "RELEASE").as_deref(), Some("2"));
    }

    // rm: every instance stops, then the status goes.
    cluster
        .coord
        .delete(&services::paths::spec("web"), None)
        .await
        .expect("rm spec");
    let deadline = Instant::now() + WAIT;
    while cluster.status("web").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the status of a removed service stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = cluster.task_processes("web.");
    assert!(left.is_empty(), "processes left after rm: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_per_host_leaves_one_pending_and_says_why_and_a_standby_takes_over() {
    // Proves placement limits surface as a reason in the status, and HA: kill -9 of the leading
    // framework copy lets the standby take over with the same framework id without stopping a
    // task, and the new leader keeps reconciling (it places the pending instance once allowed).
    let cluster = Cluster::start(2).await;
    let spec = cluster
        .deploy(
            r#"
name = "solo"
cmd = "sleep 600"
instances = 3
cpus = 0.1
mem = "16MiB"
[placement]
max_per_host = 1
"#,
        )
        .await;
    let status = cluster
        .wait_status("solo", "two running and one pending with a reason", |s| {
            s.running == 2 && s.message.contains("1 instance pending")
        })
        .await;
    assert!(!status.at_spec);
    assert!(
        status.message.contains("max_per_host=1"),
        "the reason names the limit: {}",
        status.message
    );
    let hosts: BTreeSet<&str> = status.instances.iter().map(|i| i.host.as_str()).collect();
    assert_eq!(hosts.len(), 2);
    let running: BTreeSet<String> = status.instances.iter().map(|i| i.task_id.clone()).collect();
    let pids_before = cluster.task_processes("solo.");
    assert_eq!(
        pids_before.keys().cloned().collect::<BTreeSet<_>>(),
        running
    );
    let (framework_id, _) = cluster
        .coord
        .get(services::paths::FRAMEWORK_ID)
        .await
        .expect("framework id stored");

    // kill -9 the leading copy; the standby takes over.
    let leader = cluster.leading_copy().await;
    let mut cluster = cluster;
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    if let Some(mut copy) = cluster.frameworks[leader].take() {
        copy.kill9();
    }
    let standby = 1 - leader;
    let status = cluster
        .wait_status("solo", "the standby to publish", |s| {
            s.updated_at_ms > killed_at_ms
                && s.running == 2
                && s.message.contains("1 instance pending")
        })
        .await;
    let log = cluster.frameworks[standby]
        .as_ref()
        .expect("standby runs")
        .log_text();
    assert!(log.contains("leading"), "{log}");
    assert!(log.contains("recovered the instance records"), "{log}");
    // Nothing stopped: the same tasks, the same processes.
    let after: BTreeSet<String> = status.instances.iter().map(|i| i.task_id.clone()).collect();
    assert_eq!(after, running);
    assert_eq!(cluster.task_processes("solo."), pids_before);
    let (framework_id_after, _) = cluster
        .coord
        .get(services::paths::FRAMEWORK_ID)
        .await
        .expect("framework id");
    assert_eq!(
        framework_id_after, framework_id,
        "the standby resumed the same framework"
    );
    // The new leader acts on changes: scaled to what fits, the service is at its spec with the
    // very same two tasks; a killed one is replaced.
    let mut two = spec.clone();
    two.instances = 2;
    cluster
        .coord
        .set(
            &services::paths::spec("solo"),
            two.to_json().into_bytes(),
            None,
        )
        .await
        .expect("scale");
    let status = cluster.wait_at_spec(&two).await;
    let ids: BTreeSet<String> = status.instances.iter().map(|i| i.task_id.clone()).collect();
    assert_eq!(ids, running);
    assert_eq!(cluster.task_processes("solo."), pids_before);
    let victim = status.instances[0].task_id.clone();
    for pid in &pids_before[&victim] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    cluster
        .wait_status("solo", "the new leader to replace a killed task", |s| {
            s.at_spec && s.instances.iter().all(|i| i.task_id != victim)
        })
        .await;
}
