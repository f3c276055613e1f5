//! Shared helpers for tests that start real `drover` processes: free loopback ports, temp dirs,
//! readiness waits, and processes killed (whole process group) when the test ends, with their
//! logs printed if it failed.
#![allow(dead_code)]

pub mod cluster;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn drover_bin() -> &'static str {
    env!("CARGO_BIN_EXE_drover")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `drover` process in its own process group, killed with the group on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], log_dir: &Path) -> Proc {
        Proc::spawn_program(name, Path::new(drover_bin()), args, log_dir)
    }

    /// Like `spawn`, for another program (an example framework built next to `drover`).
    pub fn spawn_program(name: &str, program: &Path, args: &[&str], log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        // A test thread may end before its processes should: no death signal tied to it.
        let child = drover_devcluster::process::spawn(drover_devcluster::process::Spawn {
            exe: program,
            args: args.iter().map(Into::into).collect(),
            log: &log,
            log_filter: "info",
            die_with_parent: false,
            env: Vec::new(),
        })
        .expect("spawn drover");
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// SIGKILL to the whole process group, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            drover_devcluster::process::kill_group(&mut child);
        }
    }

    /// Whether the process has exited (it is reaped then).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => false,
            Some(Ok(Some(_))) | Some(Err(_)) | None => true,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// Waits until `f` returns Some, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: &str) {
    wait_for(
        &format!("{addr} to listen"),
        Duration::from_secs(30),
        || std::net::TcpStream::connect(addr).ok().map(|_| ()),
    );
}

/// A single-replica master on a fresh port, with its data in `dir`.
pub fn start_master(dir: &Path, port: u16, name: &str, extra: &[&str]) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    let data = dir.join("data");
    let mut args = drover_devcluster::process::master_args(1, &addr, &data);
    args.extend(extra.iter().map(Into::into));
    let args: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().expect("utf-8 args"))
        .collect();
    let p = Proc::spawn(name, &args, dir);
    wait_listening(&addr);
    p
}

/// Runs a `drover` user command to completion with `--masters addr`.
pub fn drover(addr: &str, args: &[&str]) -> Output {
    Command::new(drover_bin())
        .arg("--masters")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run drover")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Waits, without blocking the async runtime, until `f` yields Some, or panics after `timeout`
/// naming `what`.
pub async fn wait_until<T, F>(what: &str, timeout: Duration, mut f: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub use drover_agent::daemon::runs::strip_ansi;

/// Flags that make a loopback ensemble elect quickly. A killed master is noticed at once by its
/// broken peer connections, so the silence timeout is long rather than short: a loaded test
/// machine that stalls a master for a second must not depose a leader. Votes are re-sent more
/// often than a quorum's choice is finalized, so a better vote arrives in time; otherwise a master
/// may follow a peer that never leads, until `--init-timeout-ms`.
pub const FAST_ZAB_FLAGS: &[&str] = &[
    "--tick-ms",
    "10",
    "--ping-interval-ms",
    "50",
    "--sync-timeout-ms",
    "5000",
    "--election-resend-ms",
    "20",
    "--election-finalize-ms",
    "100",
    "--init-timeout-ms",
    "2000",
];

/// A loopback port nobody listens on right now, picked at random below the kernel's ephemeral
/// range: unlike `free_port`, no outgoing connection (of a peer link or a client) can take it as
/// its local port between now and the moment a server binds it.
pub fn free_port_outside_ephemeral() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    if ephemeral_low <= low + 1000 {
        return free_port();
    }
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = low + (h.finish() % u64::from(ephemeral_low - low)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// `drover master` processes replicating coord with ZAB on loopback, each with its own free
/// port, data dir and log (`master-<id>.log`, appended to across restarts). Master `id` is
/// `1..=n`. Every process is killed on drop.
pub struct Ensemble {
    // Dropped before `dir`: the processes die before their data goes.
    masters: Vec<Option<Proc>>,
    ports: Vec<u16>,
    peers: String,
    flags: Vec<String>,
    /// With TLS: the certificates (each master runs on its own, the harness asks as operator).
    tls: Option<drover_devcluster::tls::ClusterTls>,
    dir: tempfile::TempDir,
}

impl Ensemble {
    /// Starts `n` masters with `flags` added to each command line, and waits until all serve.
    /// If a port was taken before its master could bind it, starts over on new ports.
    pub fn start(n: u32, flags: &[&str]) -> Ensemble {
        Ensemble::start_with(n, flags, false)
    }

    /// `start`; with `tls`, a throwaway CA and certificates under the ensemble's dir (`tls/`)
    /// and every master serving TLS, peer links included.
    pub fn start_with(n: u32, flags: &[&str], tls: bool) -> Ensemble {
        for _ in 0..5 {
            let ports: Vec<u16> = (0..n).map(|_| free_port_outside_ephemeral()).collect();
            let peers = ports
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            let mut e = Ensemble {
                masters: (0..n).map(|_| None).collect(),
                ports,
                peers,
                flags: flags.iter().map(|f| f.to_string()).collect(),
                tls: None,
                dir: tempfile::tempdir().expect("temp dir"),
            };
            if tls {
                e.tls = Some(
                    drover_devcluster::tls::throwaway(&e.dir.path().join("tls"), n as usize, 1)
                        .expect("certificates"),
                );
            }
            for id in 1..=n {
                e.spawn(id);
            }
            let ids: Vec<u32> = e.ids().collect();
            let started: Vec<Result<(), ()>> = ids
                .into_iter()
                .map(|id| {
                    wait_for(
                        &format!("master {id} to start"),
                        Duration::from_secs(30),
                        || e.started(id),
                    )
                })
                .collect();
            if started.iter().all(Result::is_ok) {
                return e;
            }
        }
        panic!("could not start {n} masters on free ports in 5 attempts");
    }

    pub fn ids(&self) -> std::ops::RangeInclusive<u32> {
        1..=self.masters.len() as u32
    }

    pub fn addr(&self, id: u32) -> String {
        format!("127.0.0.1:{}", self.ports[id as usize - 1])
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.masters[id as usize - 1].is_some()
    }

    fn spawn(&mut self, id: u32) {
        let addr = self.addr(id);
        let id_s = id.to_string();
        let data = self.dir.path().join(format!("data-{id}"));
        let mut args = vec![
            "master",
            "--id",
            &id_s,
            "--listen",
            &addr,
            "--peers",
            &self.peers,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
        ];
        args.extend(self.flags.iter().map(String::as_str));
        let tls_args = self
            .tls
            .as_ref()
            .map(|t| t.args(&format!("master-{id}")))
            .unwrap_or_default();
        args.extend(tls_args.iter().map(String::as_str));
        let p = Proc::spawn(&format!("master-{id}"), &args, self.dir.path());
        self.masters[id as usize - 1] = Some(p);
    }

    /// `kill -9` of master `id` (its whole process group).
    pub fn kill9(&mut self, id: u32) {
        if let Some(mut p) = self.masters[id as usize - 1].take() {
            p.kill9();
        }
    }

    /// Starts master `id` again, with the same id, port, data dir and log; waits until it serves
    /// (retrying while something else holds its port).
    pub fn restart(&mut self, id: u32) {
        self.kill9(id);
        wait_for(
            &format!("master {id} to start again"),
            Duration::from_secs(30),
            || {
                self.spawn(id);
                let started = wait_for(
                    &format!("master {id} to start"),
                    Duration::from_secs(30),
                    || self.started(id),
                );
                if started.is_err() {
                    self.kill9(id);
                }
                started.ok()
            },
        );
    }

    /// How master `id`'s latest run started: `Ok` once it answers `Cluster.Status`, `Err` if it
    /// exited (its port was taken: a master that cannot listen exits), None while neither.
    fn started(&mut self, id: u32) -> Option<Result<(), ()>> {
        let exited = self.masters[id as usize - 1]
            .as_mut()
            .is_none_or(Proc::exited);
        if exited {
            return Some(Err(()));
        }
        let answers = master_statuses_with(&[self.addr(id)], self.client_tls());
        answers[0].1.is_ok().then_some(Ok(()))
    }

    /// The certificates, when the ensemble runs TLS.
    pub fn tls(&self) -> Option<&drover_devcluster::tls::ClusterTls> {
        self.tls.as_ref()
    }

    /// The operator's TLS material, when the ensemble runs TLS.
    pub fn client_tls(&self) -> Option<&drover_security::TlsConfig> {
        self.tls.as_ref().map(|t| &t.operator)
    }

    /// The log of master `id` so far, without colour codes.
    pub fn log(&self, id: u32) -> String {
        let log = self.dir.path().join(format!("master-{id}.log"));
        strip_ansi(&std::fs::read_to_string(log).unwrap_or_default())
    }

    /// Waits until the running masters agree, by their own `Cluster.Status`: one leads an epoch
    /// and every other running master follows it in that epoch. Returns `(leader, epoch)`.
    pub fn wait_stable(&self, timeout: Duration) -> (u32, u64) {
        wait_for("the running masters to agree on a leader", timeout, || {
            self.stable()
        })
    }

    /// `(leader, epoch)` if the running masters agree right now, by their `Cluster.Status`.
    pub fn stable(&self) -> Option<(u32, u64)> {
        let addrs: Vec<String> = self
            .ids()
            .filter(|&id| self.is_running(id))
            .map(|id| self.addr(id))
            .collect();
        let answers = master_statuses_with(&addrs, self.client_tls());
        drover_devcluster::roles::agreement(&answers, addrs.len(), false)
            .map(|a| (a.leader, u64::from(a.epoch)))
    }
}

/// Every address's own `Cluster.Status` (or why it did not answer), asked on a thread of its
/// own so that sync and async tests alike may call it.
pub fn master_statuses(addrs: &[String]) -> Vec<drover_devcluster::roles::Answer> {
    master_statuses_with(addrs, None)
}

/// `master_statuses`, over TLS with `tls` when given.
pub fn master_statuses_with(
    addrs: &[String],
    tls: Option<&drover_security::TlsConfig>,
) -> Vec<drover_devcluster::roles::Answer> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(drover_devcluster::roles::ask_all(
                    addrs,
                    Duration::from_millis(500),
                    tls,
                ))
        })
        .join()
        .expect("status thread")
    })
}

/// Stops every task supervisor (and task) started under `dir`: supervisors are detached from
/// the agent on purpose (they outlive an agent restart), so killing the agent's process group
/// does not stop them. SIGTERM first (a supervisor then kills its task's whole group), SIGKILL
/// for whatever is left after a few seconds; a task is recognised by its working directory (its
/// sandbox) under `dir`.
pub fn stop_processes_under(dir: &Path) {
    use drover_devcluster::process::processes_under;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dirs = [dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())];
    for pid in processes_under(&dirs, &[]) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !processes_under(&dirs, &[]).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in processes_under(&dirs, &[]) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
