//! A throwaway ensemble of real `drover master` processes on loopback, for `drover bench`.
//!
//! Each master is this very executable, started on a free 127.0.0.1 port with its data under one
//! temp directory, in its own process group, with its log in a file there ([`process::spawn`]).
//! The `Ensemble` owns them: dropping it (normal exit, error, Ctrl-C handled by the caller, or a
//! panic unwinding) kills every master with SIGKILL and removes the directory; each master also
//! asks the kernel for SIGKILL when its parent dies, so not even a `kill -9` of the bench leaves
//! masters running.
//!
//! Roles come from the masters themselves (`Cluster.Status`, [`roles`]); the logs are only
//! quoted when something went wrong.

use crate::process::{self, Spawn};
use crate::roles::{self, Agreement};
use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, killpg};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often waits ask the masters again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Deadline of one status question to one master.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of each master's log shown when something went wrong.
pub const LOG_TAIL_LINES: usize = 15;

struct Master {
    id: u32,
    addr: String,
    data_dir: PathBuf,
    /// How many times this master was started; names the current log file.
    incarnation: u32,
    log: PathBuf,
    /// None once killed (and reaped).
    child: Option<Child>,
}

/// A running ensemble; see the module docs. Master ids are 1..=size.
pub struct Ensemble {
    root: PathBuf,
    exe: PathBuf,
    peers: String,
    master_args: Vec<String>,
    masters: Vec<Master>,
    /// With TLS: the operator's material (status questions, bench clients); `None`: plaintext.
    client_tls: Option<drover_security::TlsConfig>,
}

impl Ensemble {
    /// Starts `size` masters, each with `master_args` appended to its command line. Returns once
    /// they are spawned; `wait_ready` waits until they serve.
    pub fn start(size: u32, master_args: &[String], parent: &Path) -> anyhow::Result<Ensemble> {
        Ensemble::start_with(size, master_args, parent, false)
    }

    /// `start`, and with `tls` a throwaway CA and certificates in the ensemble's directory: the
    /// masters serve TLS (peer links included) and [`Ensemble::client_tls`] is an operator's.
    pub fn start_with(
        size: u32,
        master_args: &[String],
        parent: &Path,
        tls: bool,
    ) -> anyhow::Result<Ensemble> {
        let exe = std::env::current_exe().context("cannot find the drover executable")?;
        let root = make_temp_dir(parent)?;
        // Holding every listener until all are picked keeps the ports distinct; a stranger may
        // still take one before the master binds it, which the master reports.
        let listeners = (0..size)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>();
        let addrs = listeners
            .and_then(|ls| {
                ls.iter()
                    .map(|l| l.local_addr())
                    .collect::<Result<Vec<_>, _>>()
            })
            .context("cannot find free loopback ports");
        let addrs = match addrs {
            Ok(addrs) => addrs,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&root);
                return Err(e);
            }
        };
        let peers = (1..)
            .zip(&addrs)
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        let client_tls = if tls {
            match crate::tls::throwaway(&root.join("tls"), size as usize, 0) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&root);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let mut ensemble = Ensemble {
            client_tls: client_tls.as_ref().map(|t| t.operator.clone()),
            masters: (1..)
                .zip(&addrs)
                .map(|(id, addr)| Master {
                    id,
                    addr: addr.to_string(),
                    data_dir: root.join(format!("master-{id}")),
                    incarnation: 0,
                    log: PathBuf::new(),
                    child: None,
                })
                .collect(),
            root,
            exe,
            peers,
            master_args: master_args.to_vec(),
        };
        // From here on, dropping `ensemble` cleans up whatever was started.
        for id in 1..=size {
            ensemble.spawn(id)?;
        }
        Ok(ensemble)
    }

    /// The operator's TLS material when the masters serve TLS.
    pub fn client_tls(&self) -> Option<&drover_security::TlsConfig> {
        self.client_tls.as_ref()
    }

    /// The temp directory holding every master's data and logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Client addresses, in id order.
    pub fn addrs(&self) -> Vec<String> {
        self.masters.iter().map(|m| m.addr.clone()).collect()
    }

    /// Client addresses with the leader's last: client i of a round-robin spread then starts at
    /// a follower, as the ZooKeeper and etcd figures in ANCHORS.md were measured.
    pub fn addrs_leader_last(&self, leader: u32) -> Vec<String> {
        let (lead, mut rest): (Vec<_>, Vec<_>) = self.masters.iter().partition(|m| m.id == leader);
        rest.extend(lead);
        rest.into_iter().map(|m| m.addr.clone()).collect()
    }

    fn master(&mut self, id: u32) -> anyhow::Result<&mut Master> {
        self.masters
            .iter_mut()
            .find(|m| m.id == id)
            .with_context(|| format!("no master {id} in the ensemble"))
    }

    /// Starts (or restarts, on the same port and data) master `id`, logging to a fresh file.
    fn spawn(&mut self, id: u32) -> anyhow::Result<()> {
        let (exe, peers, root) = (self.exe.clone(), self.peers.clone(), self.root.clone());
        let mut master_args = self.master_args.clone();
        if self.client_tls.is_some() {
            master_args.extend(crate::tls::tls_args(
                &root.join("tls"),
                &format!("master-{id}"),
            ));
        }
        let m = self.master(id)?;
        assert!(m.child.is_none(), "master {id} is started while running");
        m.incarnation += 1;
        m.log = root.join(format!("master-{id}.{}.log", m.incarnation));
        let mut args = process::master_args(id, &m.addr, &m.data_dir);
        args.extend([
            "--peers".into(),
            peers.into(),
            // Three masters share this machine: one async worker each avoids cross-thread
            // wakeups (measured: +20% writes/s at 64 clients on 2 cores).
            "--worker-threads".into(),
            "1".into(),
        ]);
        args.extend(master_args.into_iter().map(Into::into));
        let child = process::spawn(Spawn {
            exe: &exe,
            args,
            log: &m.log,
            log_filter: "info",
            die_with_parent: true,
            env: Vec::new(),
        })
        .with_context(|| format!("cannot start master {id}"))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILL to master `id`'s process group, and reap it.
    pub fn kill9(&mut self, id: u32) -> anyhow::Result<()> {
        let m = self.master(id)?;
        let mut child = m
            .child
            .take()
            .with_context(|| format!("master {id} is not running"))?;
        if let Some(group) = process::group_of(&child) {
            killpg(group, Signal::SIGKILL).with_context(|| format!("cannot kill master {id}"))?;
        }
        child
            .wait()
            .with_context(|| format!("cannot reap master {id}"))?;
        Ok(())
    }

    /// Starts a killed master again, on the same port and data directory.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// Checks that every master the ensemble has not killed still runs.
    fn check_running(&mut self) -> anyhow::Result<()> {
        for m in &mut self.masters {
            let Some(child) = m.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait().context("cannot check a master")? {
                m.child = None;
                bail!(
                    "master {} exited ({status}); its log is {}",
                    m.id,
                    m.log.display()
                );
            }
        }
        Ok(())
    }

    /// The running masters' addresses.
    fn running_addrs(&self) -> Vec<String> {
        self.masters
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.addr.clone())
            .collect()
    }

    /// Waits until every master runs and serves under one leader in one epoch (the leader's
    /// term included); returns the agreement.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Agreement> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let answers =
                roles::ask_all(&self.addrs(), STATUS_TIMEOUT, self.client_tls.as_ref()).await;
            if let Some(agreed) = roles::agreement(&answers, self.masters.len(), true) {
                return Ok(agreed);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the ensemble did not serve with every master within {timeout:?} ({})",
                    roles::describe(&answers)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the running masters agree on a leader of an epoch after `epoch`; returns the
    /// agreement (with the time the leader was established, by its own account).
    pub async fn wait_leader_after(
        &mut self,
        epoch: u32,
        timeout: Duration,
    ) -> anyhow::Result<Agreement> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let addrs = self.running_addrs();
            let answers = roles::ask_all(&addrs, STATUS_TIMEOUT, self.client_tls.as_ref()).await;
            if let Some(agreed) = roles::agreement(&answers, addrs.len(), false)
                && agreed.epoch > epoch
            {
                return Ok(agreed);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no new leader after epoch {epoch} within {timeout:?} ({})",
                    roles::describe(&answers)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Whether each master still runs, and the last lines of its current log, for an error
    /// report.
    pub fn log_tails(&mut self, lines: usize) -> String {
        let mut out = String::new();
        for m in &mut self.masters {
            let state = match m.child.as_mut().map(Child::try_wait) {
                None => "killed by the bench".to_string(),
                Some(Ok(None)) => "running".to_string(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
            };
            out.push_str(&format!(
                "----- master {} ({state}; {}), last lines -----\n{}\n",
                m.id,
                m.log.display(),
                process::log_tail(&m.log, lines)
            ));
        }
        out
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for m in &mut self.masters {
            if let Some(mut child) = m.child.take() {
                process::kill_group(&mut child);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(
                dir = %self.root.display(),
                error = %e,
                "could not remove the bench ensemble's directory"
            );
        }
    }
}

/// A new, empty directory for one ensemble under `parent`, named after this process and the
/// time.
fn make_temp_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!("drover-bench-{}-{nanos:09}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
