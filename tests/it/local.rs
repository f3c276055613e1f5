//! `drover local` end to end: the whole cluster as real processes (one master, two agents, the
//! services framework), driven only through the `drover` CLI, with every claim checked against
//! the real processes on this machine (/proc) and real HTTP requests to the instances.
//!
//! The test owns everything it starts: `drover local` runs in its own process group with its
//! data under the test's temp dir; at the end (and on failure) it gets SIGTERM and is waited
//! for, then anything still running under the temp dir is swept.

use crate::util;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use util::{drover_bin, stop_processes_under};

/// Generous: everything here is real processes on a possibly loaded machine.
const WAIT: Duration = Duration::from_secs(90);
/// How long a user command may take before the test calls it hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How often conditions are looked at again.
const POLL: Duration = Duration::from_millis(100);
/// The framework's first restart backoff is 1 s (`drover services --backoff-initial`, doubling
/// per failure of the same instance): the replacement of one killed instance must run within
/// it, plus slack for a loaded machine.
const REPLACEMENT_WITHIN: Duration = Duration::from_secs(10);

/// `drover local` under test, with its stdout lines arriving on a channel.
struct Local {
    child: Option<Child>,
    dir: tempfile::TempDir,
    masters: String,
    /// The other `export NAME=VALUE` lines it printed (the TLS material), set for every
    /// command a test runs, as a person pasting them would.
    exports: Vec<(String, String)>,
    stderr_log: PathBuf,
}

impl Local {
    /// `drover local --masters 1 --agents N` with every agent at 2 cpus / 2 GiB, on a free
    /// base port, with `--data-dir` under the test's temp dir, or (`temp_data`) without it and
    /// `TMPDIR` there, so its own temp dir lands there too; returns once it printed `export
    /// DROVER_MASTERS=...`.
    fn start(agents: u32, temp_data: bool) -> Local {
        Local::start_masters(1, agents, temp_data)
    }

    /// Like `start`, with `masters` masters (1 or 3).
    fn start_masters(masters: u32, agents: u32, temp_data: bool) -> Local {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for attempt in 0..5 {
            let (base, tasks) = free_port_block();
            let stderr_log = dir.path().join(format!("local-{attempt}.log"));
            let log = std::fs::File::create(&stderr_log).expect("log file");
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(drover_bin());
            cmd.arg("local");
            if temp_data {
                cmd.env("TMPDIR", dir.path());
            } else {
                cmd.arg("--data-dir").arg(dir.path().join("data"));
            }
            let mut child = cmd
                .arg("--masters")
                .arg(masters.to_string())
                .arg("--agents")
                .arg(agents.to_string())
                .args(["--agent-cpus", "2", "--agent-mem", "2GiB", "--base-port"])
                .arg(base.to_string())
                .arg("--task-ports")
                .arg(format!("{}-{}", tasks, tasks + 199))
                .arg("--stop-timeout")
                .arg("20s")
                .env("RUST_LOG", "info")
                .env_remove("DROVER_MASTERS")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start drover local");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut local = Local {
                child: Some(child),
                dir,
                masters: String::new(),
                exports: Vec::new(),
                stderr_log,
            };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                match rx.recv_timeout(POLL) {
                    Ok(line) => {
                        if let Some(m) = line.strip_prefix("export DROVER_MASTERS=") {
                            local.masters = m.trim().to_string();
                        } else if let Some((name, value)) =
                            line.strip_prefix("export ").and_then(|e| e.split_once('='))
                        {
                            local.exports.push((name.to_string(), value.to_string()));
                        } else if line.starts_with("Ctrl-C stops everything") {
                            assert!(!local.masters.is_empty(), "no DROVER_MASTERS line");
                            // Keep draining stdout so drover local never blocks on a full pipe.
                            std::thread::spawn(move || while rx.recv().is_ok() {});
                            return local;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            // It exited (a port taken meanwhile?) or hung: stop it, and retry on other ports.
            local.signal(nix::sys::signal::Signal::SIGTERM);
            let status = local.wait();
            let log = std::fs::read_to_string(&local.stderr_log).unwrap_or_default();
            assert!(
                log.contains("is not free") || log.contains("cannot listen"),
                "drover local did not come up ({status:?}):\n{log}"
            );
            dir = std::mem::replace(&mut local.dir, tempfile::tempdir().expect("temp dir"));
        }
        panic!("drover local did not start on free ports in 5 attempts");
    }

    /// The cluster's data dir: `data` or `drover-local-*` under the test's dir.
    fn data(&self) -> PathBuf {
        let given = self.dir.path().join("data");
        if given.exists() {
            return given.canonicalize().unwrap_or(given);
        }
        std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("drover-local-"))
            })
            .map(|p| p.canonicalize().unwrap_or(p))
            .expect("drover local's temp data dir")
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// SIGTERM to `drover local` and wait for it.
    fn stop(&mut self) -> Option<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait()
    }

    /// Waits for `drover local` to exit (SIGKILL of its group after a minute).
    fn wait(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        child.wait().ok()
    }

    /// Runs `drover --masters M ARGS` to completion (killed after `COMMAND_TIMEOUT`).
    fn drover(&self, args: &[&str]) -> Output {
        let child = self.spawn_drover(args);
        wait_output(child, COMMAND_TIMEOUT)
    }

    fn spawn_drover(&self, args: &[&str]) -> Child {
        Command::new(drover_bin())
            .env_remove("DROVER_TLS_CA")
            .env_remove("DROVER_TLS_CERT")
            .env_remove("DROVER_TLS_KEY")
            .env_remove("DROVER_TOKEN")
            .envs(self.exports.iter().map(|(k, v)| (k, v)))
            .arg("--masters")
            .arg(&self.masters)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run drover")
    }

    /// `drover ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.drover(args);
        assert!(
            out.status.success(),
            "drover {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// The framework's published status of the service (the `status` member of `drover service
    /// status NAME --output json`); None while the command fails or there is no status yet.
    fn status(&self, name: &str) -> Option<Value> {
        let out = self.drover(&["service", "status", name, "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(doc.get("status")?.clone()).filter(|s| !s.is_null())
    }

    /// Whether `drover service status NAME` fails (the service is gone).
    fn service_gone(&self, name: &str) -> bool {
        !self
            .drover(&["service", "status", name, "--output", "json"])
            .status
            .success()
    }

    /// Waits until the service's status satisfies `f`; returns it.
    fn wait_status(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some(s) = self.status(name) {
                if f(&s) {
                    return s;
                }
                last = Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {last:#?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Writes a spec file under the test dir.
    fn spec_file(&self, file: &str, text: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write spec");
        path.to_string_lossy().to_string()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.stop();
        // Whatever drover local left behind (it should leave nothing): its children and the
        // task supervisors all name the data dir on their command line or run in it.
        stop_processes_under(self.dir.path());
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
            eprintln!("----- drover local's stderr -----\n{log}");
            let logs = self.dir.path().join("data").join("logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "----- last lines of {} -----\n{}",
                    entry.path().display(),
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
        }
    }
}

/// Waits for a child's output, killing it after `timeout`.
fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    // Pipes are read on threads so a chatty child cannot block on a full pipe meanwhile.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("a drover command did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A base port with the 42 ports `drover local --agents 2` listens on free, and 200 free task
/// ports, all below the kernel's ephemeral range (no outgoing connection takes them meanwhile).
fn free_port_block() -> (u16, u16) {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low - 400);
    for i in 0..1000u32 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(i);
        let base = low + (h.finish() % u64::from(high - low)) as u16;
        if (base..base + 300).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + 100);
        }
    }
    panic!("no block of 300 free loopback ports");
}

/// A task process found in /proc: it runs in a sandbox under `dir` and has `DROVER_TASK_ID`.
#[derive(Debug)]
struct TaskProc {
    pid: i32,
    task_id: String,
    env: BTreeMap<String, String>,
}

impl TaskProc {
    fn port0(&self) -> Option<u16> {
        self.env.get("PORT0")?.parse().ok()
    }
}

fn task_procs(dir: &Path) -> Vec<TaskProc> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let cwd = std::fs::read_link(proc_dir.join("cwd")).unwrap_or_default();
        if !cwd.starts_with(dir) {
            continue;
        }
        let environ = std::fs::read(proc_dir.join("environ")).unwrap_or_default();
        let env: BTreeMap<String, String> = environ
            .split(|&b| b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        if let Some(task_id) = env.get("DROVER_TASK_ID") {
            found.push(TaskProc {
                pid,
                task_id: task_id.clone(),
                env,
            });
        }
    }
    found
}

/// Task ids of the running task processes under `dir`.
fn running_task_ids(dir: &Path) -> BTreeSet<String> {
    task_procs(dir).into_iter().map(|p| p.task_id).collect()
}

/// Supervisor processes (`drover supervise SPEC`) whose spec lies under `dir`.
fn supervisors(dir: &Path) -> Vec<i32> {
    let dir = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.get(1).is_some_and(|a| a == "supervise") && args.iter().any(|a| a.starts_with(&dir))
        {
            found.push(pid);
        }
    }
    found
}

/// Every process whose command line names `needle` (a dir or an address of this test only).
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Whether `host:port` answers `GET /` with 200.
fn http_ok(host: &str, port: u16) -> bool {
    let Ok(addr) = format!("{host}:{port}").parse() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut first = [0u8; 12];
    s.read_exact(&mut first).is_ok()
        && (first.starts_with(b"HTTP/1.0 200") || first.starts_with(b"HTTP/1.1 200"))
}

fn instances(status: &Value) -> Vec<&Value> {
    status["instances"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn count(status: &Value, field: &str) -> u64 {
    status[field].as_u64().unwrap_or(0)
}

/// Running instances' task ids by the status.
fn status_task_ids(status: &Value) -> BTreeSet<String> {
    instances(status)
        .into_iter()
        .filter(|i| i["state"].as_str() == Some("TASK_RUNNING"))
        .filter_map(|i| i["task_id"].as_str().map(String::from))
        .collect()
}

/// The service is at its spec with `n` instances running and healthy.
fn settled(status: &Value, n: u64) -> bool {
    status["at_spec"].as_bool() == Some(true)
        && count(status, "desired") == n
        && count(status, "running") == n
        && count(status, "healthy") == n
        && status_task_ids(status).len() as u64 == n
}

/// Waits until the service runs exactly `n` instances, by its status and by the real
/// processes: the task processes alive under the data dir are exactly the status's instances,
/// and each instance answers HTTP on its host and port. Returns the status.
fn wait_settled_http(local: &Local, name: &str, n: u64) -> Value {
    let data = local.data();
    let deadline = Instant::now() + WAIT;
    loop {
        let status =
            local.wait_status(name, &format!("{name} at {n} instances"), |s| settled(s, n));
        let want = status_task_ids(&status);
        let alive = running_task_ids(&data);
        let answering = instances(&status).iter().all(|i| {
            let host = i["host"].as_str().unwrap_or_default();
            let port = i["ports"][0].as_u64().unwrap_or(0) as u16;
            http_ok(host, port)
        });
        if want == alive && answering {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: status instances {want:?}, task processes {alive:?}, all answering HTTP: \
             {answering}"
        );
        std::thread::sleep(POLL);
    }
}

fn web_spec(instances: u32, greeting: &str) -> String {
    format!(
        r#"name = "web"
cmd = ["python3", "-m", "http.server", "$PORT0"]
instances = {instances}
cpus = 0.25
mem = "64MiB"
ports = 1
env = {{ GREETING = "{greeting}" }}
kill_grace = "2s"
[health]
http = "/"
interval = "1s"
timeout = "1s"
grace = "30s"
max_failures = 3
[upgrade]
max_surge = 1
max_unavailable = 1
"#
    )
}

#[test]
fn local_cluster_runs_a_service_through_its_life() {
    let python = Command::new("python3").arg("--version").output();
    assert!(
        python.is_ok_and(|o| o.status.success()),
        "this test deploys `python3 -m http.server`: python3 must be installed"
    );
    let mut local = Local::start(2, false);
    let data = local.data();

    // Two agents registered, with distinct host names.
    let agents: Value = serde_json::from_str(&local.ok(&["agent", "ls", "--output", "json"]))
        .expect("agent ls JSON");
    assert_eq!(agents.as_array().map(Vec::len), Some(2), "{agents:#}");

    // It came up secure: the printed exports are TLS material and the management token, and
    // without them the masters refuse the connection (or the call), saying why.
    let names: Vec<&str> = local.exports.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "DROVER_TLS_CA",
            "DROVER_TLS_CERT",
            "DROVER_TLS_KEY",
            "DROVER_TOKEN"
        ]
    );
    let no_token = Command::new(drover_bin())
        .env_remove("DROVER_TOKEN")
        .envs(
            local
                .exports
                .iter()
                .filter(|(k, _)| k != "DROVER_TOKEN")
                .map(|(k, v)| (k, v)),
        )
        .args(["--masters", &local.masters, "agent", "ls"])
        .output()
        .expect("run drover");
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("no token: ACLs are on"),
        "{}",
        String::from_utf8_lossy(&no_token.stderr)
    );
    let plain = Command::new(drover_bin())
        .env_remove("DROVER_TLS_CA")
        .env_remove("DROVER_TLS_CERT")
        .env_remove("DROVER_TLS_KEY")
        .args(["--masters", &local.masters, "agent", "ls"])
        .output()
        .expect("run drover");
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("this port requires TLS"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );

    // An invalid spec is refused naming the field, and nothing is stored.
    let bad = local.spec_file(
        "bad.toml",
        &web_spec(4, "v1").replace("cpus = 0.25", "cpus = 0"),
    );
    let out = local.drover(&["service", "deploy", &bad]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cpus"), "{err}");
    let listed = local.ok(&["service", "ls", "--output", "json"]);
    assert!(!listed.contains("\"web\""), "nothing stored: {listed}");

    // Deploy 4 instances with --wait: each answers HTTP on its own port.
    let v1 = local.spec_file("web-v1.toml", &web_spec(4, "v1"));
    local.ok(&["service", "deploy", &v1, "--wait"]);
    let status = wait_settled_http(&local, "web", 4);
    let ports: BTreeSet<u64> = instances(&status)
        .iter()
        .filter_map(|i| i["ports"][0].as_u64())
        .collect();
    assert_eq!(ports.len(), 4, "one port each: {status:#}");

    // kill -9 of one instance's process: a replacement runs within the backoff.
    let victim = task_procs(&data)
        .into_iter()
        .next()
        .expect("a task process");
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    util::wait_for("a replacement process", WAIT, || {
        let ids = running_task_ids(&data);
        (ids.len() == 4 && !ids.contains(&victim.task_id)).then_some(())
    });
    let replaced_in = killed_at.elapsed();
    assert!(
        replaced_in < REPLACEMENT_WITHIN,
        "the replacement ran after {replaced_in:?}"
    );
    let status = wait_settled_http(&local, "web", 4);
    assert!(
        !status_task_ids(&status).contains(&victim.task_id),
        "the killed task {} was replaced: {status:#}",
        victim.task_id
    );
    eprintln!(
        "kill -9 of {}: a replacement process ran after {replaced_in:?}, all 4 healthy and \
         answering after {:?}",
        victim.task_id,
        killed_at.elapsed()
    );

    // Scale 4 → 6 → 2: exactly the instances of the status run.
    local.ok(&["service", "scale", "web", "6"]);
    wait_settled_http(&local, "web", 6);
    local.ok(&["service", "scale", "web", "2"]);
    wait_settled_http(&local, "web", 2);
    local.ok(&["service", "scale", "web", "4"]);
    let before = wait_settled_http(&local, "web", 4);

    // Rolling upgrade to a new env: never fewer than instances - max_unavailable = 3 task
    // processes answering HTTP, polled throughout.
    let v2 = local.spec_file("web-v2.toml", &web_spec(4, "v2"));
    let deploy = local.spawn_drover(&["service", "deploy", &v2, "--wait"]);
    let mut min_answering = usize::MAX;
    let mut polls = 0;
    let deadline = Instant::now() + WAIT;
    let mut deploy = Some(deploy);
    let mut deploy_out = None;
    loop {
        let procs = task_procs(&data);
        let answering = procs
            .iter()
            .filter(|p| p.port0().is_some_and(|port| http_ok("127.0.0.1", port)))
            .count();
        min_answering = min_answering.min(answering);
        polls += 1;
        if let Some(child) = deploy.as_mut()
            && child.try_wait().expect("wait").is_some()
        {
            deploy_out = Some(wait_output(deploy.take().expect("child"), COMMAND_TIMEOUT));
        }
        let upgraded = procs.len() == 4
            && procs
                .iter()
                .all(|p| p.env.get("GREETING").map(String::as_str) == Some("v2"));
        if deploy.is_none() && upgraded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rolling upgrade did not finish: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deploy_out = deploy_out.expect("deploy finished");
    assert!(
        deploy_out.status.success(),
        "deploy --wait of v2: {}",
        String::from_utf8_lossy(&deploy_out.stderr)
    );
    eprintln!("rolling upgrade: at least {min_answering} of 4 answering over {polls} polls");
    assert!(
        min_answering >= 3,
        "a rolling upgrade with max_unavailable = 1 had only {min_answering} of 4 instances answering"
    );
    let after = wait_settled_http(&local, "web", 4);
    assert_ne!(before["version"], after["version"], "the version changed");
    assert!(
        status_task_ids(&after).is_disjoint(&status_task_ids(&before)),
        "every instance was replaced"
    );

    // rm: no process left behind, no status.
    local.ok(&["service", "rm", "web"]);
    util::wait_for("web's processes to go", WAIT, || {
        (task_procs(&data).is_empty() && supervisors(&data).is_empty()).then_some(())
    });
    util::wait_for("web to be gone", WAIT, || {
        local.service_gone("web").then_some(())
    });

    // max_per_host = 1 with 3 instances on 2 agents: 2 run on distinct hosts, 1 is pending, and
    // the status says why.
    let one = local.spec_file(
        "one.toml",
        r#"name = "one"
cmd = "sleep 600"
instances = 3
cpus = 0.1
mem = "16MiB"
[placement]
max_per_host = 1
"#,
    );
    local.ok(&["service", "deploy", &one]);
    let status = local.wait_status("one", "2 of 3 running with a reason", |s| {
        count(s, "running") == 2
            && s["message"]
                .as_str()
                .is_some_and(|m| m.contains("max_per_host"))
    });
    let hosts: BTreeSet<&str> = instances(&status)
        .iter()
        .filter(|i| i["state"].as_str() == Some("TASK_RUNNING"))
        .filter_map(|i| i["host"].as_str())
        .collect();
    assert_eq!(hosts.len(), 2, "one per host: {status:#}");
    util::wait_for("2 sleep processes", WAIT, || {
        (running_task_ids(&data) == status_task_ids(&status)).then_some(())
    });
    eprintln!("max_per_host message: {}", status["message"]);
    local.ok(&["service", "rm", "one"]);
    util::wait_for("one's processes to go", WAIT, || {
        (task_procs(&data).is_empty() && supervisors(&data).is_empty()).then_some(())
    });

    // Stopping drover local stops everything it started.
    let masters = local.masters.clone();
    let status = local.stop().expect("drover local ran");
    assert!(status.success(), "drover local exited with {status}");
    let left: Vec<(i32, String)> = processes_naming(&data.to_string_lossy())
        .into_iter()
        .chain(processes_naming(&masters))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Ctrl-C (SIGINT here, SIGTERM above) with instances running: `drover local` stops the
/// framework, the agents, the task supervisors and their tasks, and the masters; nothing
/// survives, and its temp data dir is removed.
#[test]
fn stopping_local_leaves_no_process_behind() {
    let mut local = Local::start(1, true);
    let data = local.data();
    let spec = local.spec_file(
        "sleepers.toml",
        "name = \"sleepers\"\ncmd = \"sleep 600\"\ninstances = 3\ncpus = 0.1\nmem = \"16MiB\"\n",
    );
    local.ok(&["service", "deploy", &spec, "--wait"]);
    util::wait_for("3 sleepers", WAIT, || {
        (running_task_ids(&data).len() == 3).then_some(())
    });
    assert_eq!(supervisors(&data).len(), 3, "one supervisor per task");
    local.signal(nix::sys::signal::Signal::SIGINT);
    let status = local.wait().expect("drover local ran");
    assert!(status.success(), "drover local exited with {status}");
    let left: Vec<(i32, String)> = processes_naming(&data.to_string_lossy())
        .into_iter()
        .chain(processes_naming(&local.masters))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(task_procs(&data).is_empty());
    assert!(!data.exists(), "{} was removed", data.display());
}

/// `drover cluster status --output json` through `local`'s masters; None while it fails.
fn cluster_status(local: &Local) -> Option<Value> {
    let out = local.drover(&[
        "cluster",
        "status",
        "--output",
        "json",
        "--leader-wait-ms",
        "200",
    ]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `(leader id, epoch)` when every master answers, one leads and the others follow it in its
/// epoch.
fn settled_leader(status: &Value, masters: usize) -> Option<(u64, u64)> {
    let all = status["masters"].as_array()?;
    let answered: Vec<&Value> = all.iter().filter(|m| m["epoch"].is_u64()).collect();
    let leader = status["leader_id"].as_u64()?;
    let epoch = status["epoch"].as_u64()?;
    let agree = answered.len() == masters
        && answered.iter().all(|m| {
            let want = if m["master_id"] == leader {
                "leading"
            } else {
                "following"
            };
            m["role"] == want && m["epoch"] == epoch
        });
    agree.then_some((leader, epoch))
}

#[test]
fn three_masters_survive_a_killed_leader_which_comes_back_as_a_follower() {
    // Proves `drover local --masters 3` lets you try a failover: kill -9 of the leading master
    // does not stop the cluster; `cluster status` shows a new leader of a later epoch, the agent
    // stays registered, and `drover local` starts the killed master again on its data dir, where
    // it rejoins as a follower of the new leader.
    let mut local = Local::start_masters(3, 1, false);
    let data = local.data();
    let (leader, epoch) = util::wait_for("3 masters settled", WAIT, || {
        settled_leader(&cluster_status(&local)?, 3)
    });
    let needle = data.join(format!("master-{leader}"));
    let pids = processes_naming(&format!("--data-dir {}", needle.display()));
    assert_eq!(pids.len(), 1, "one process of master {leader}: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0].0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the leader");
    let (new_leader, new_epoch) = util::wait_for("a new leader", WAIT, || {
        let status = cluster_status(&local)?;
        let id = status["leader_id"].as_u64()?;
        let e = status["epoch"].as_u64()?;
        (id != leader && e > epoch).then_some((id, e))
    });
    let status = util::wait_for("the killed master back as a follower", WAIT, || {
        let status = cluster_status(&local)?;
        (settled_leader(&status, 3)? == (new_leader, new_epoch)).then_some(status)
    });
    assert_eq!(status["agents"]["reachable"], 1, "{status}");
    let again = processes_naming(&format!("--data-dir {}", needle.display()));
    assert_eq!(again.len(), 1, "master {leader} runs again: {again:?}");
    assert_ne!(again[0].0, pids[0].0, "a new process");
    let log = std::fs::read_to_string(&local.stderr_log).unwrap_or_default();
    assert!(
        log.contains(&format!("master-{leader} exited")) && log.contains("started again"),
        "drover local reported the death and the restart:\n{log}"
    );
    let stopped = local.stop().expect("drover local ran");
    assert!(stopped.success(), "drover local exited with {stopped}");
}
