//! A throwaway ensemble of real `drover master` processes on loopback, for `drover bench`.
//!
//! Each master is this very executable, started on a free 127.0.0.1 port with its data under one
//! temp directory, in its own process group, with its log in a file there. The `Ensemble` owns
//! them: dropping it (normal exit, error, Ctrl-C handled by the caller, or a panic unwinding)
//! kills every master with SIGKILL and removes the directory. As a last resort each master also
//! asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), so not even a
//! `kill -9` of the bench leaves masters running.
//!
//! There is no "who leads" RPC yet, so roles come from the masters' own logs (tracing at `info`,
//! no colours): ZAB logs `leading peer=N epoch=E` once a leader has a synced quorum,
//! `following peer=N leader=L epoch=E` once a follower serves, and `looking for a leader`
//! when a replica stops serving. Each incarnation of a master writes a log file of its own, so a
//! restarted master's old lines never count for it.

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often waits look at the logs and the processes.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Most log bytes read from one master in one look, so a chatty master cannot stall a wait.
const LOG_READ_BYTES_MAX: u64 = 4 << 20;
/// Lines of each master's log shown when something went wrong.
pub const LOG_TAIL_LINES: usize = 15;

/// What a master's current incarnation last said about its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Started, not yet in an ensemble that serves.
    Starting,
    Looking,
    /// `at` is the time stamp of the log line: when the leader had its synced quorum.
    Leading {
        epoch: u64,
        at: Option<SystemTime>,
    },
    Following {
        leader: u32,
        epoch: u64,
    },
}

impl Role {
    fn serving(self) -> bool {
        matches!(self, Role::Leading { .. } | Role::Following { .. })
    }
    fn epoch(self) -> Option<u64> {
        match self {
            Role::Leading { epoch, .. } | Role::Following { epoch, .. } => Some(epoch),
            Role::Starting | Role::Looking => None,
        }
    }
}

struct Master {
    id: u32,
    addr: String,
    data_dir: PathBuf,
    /// How many times this master was started; names the current log file.
    incarnation: u32,
    log: PathBuf,
    /// None once killed (and reaped).
    child: Option<Child>,
    /// Bytes of `log` already parsed; always at a line boundary.
    scanned: u64,
    role: Role,
}

impl Master {
    fn pid(&self) -> Option<Pid> {
        let pid = i32::try_from(self.child.as_ref()?.id()).ok()?;
        Some(Pid::from_raw(pid))
    }
}

/// A running ensemble; see the module docs. Master ids are 1..=size.
pub struct Ensemble {
    root: PathBuf,
    exe: PathBuf,
    peers: String,
    master_args: Vec<String>,
    masters: Vec<Master>,
}

impl Ensemble {
    /// Starts `size` masters, each with `master_args` appended to its command line. Returns once
    /// they are spawned; `wait_ready` waits until they serve.
    pub fn start(size: u32, master_args: &[String], parent: &Path) -> anyhow::Result<Ensemble> {
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
        let mut ensemble = Ensemble {
            masters: (1..)
                .zip(&addrs)
                .map(|(id, addr)| Master {
                    id,
                    addr: addr.to_string(),
                    data_dir: root.join(format!("master-{id}")),
                    incarnation: 0,
                    log: PathBuf::new(),
                    child: None,
                    scanned: 0,
                    role: Role::Starting,
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
        let master_args = self.master_args.clone();
        let m = self.master(id)?;
        assert!(m.child.is_none(), "master {id} is started while running");
        m.incarnation += 1;
        m.log = root.join(format!("master-{id}.{}.log", m.incarnation));
        m.scanned = 0;
        m.role = Role::Starting;
        let log = std::fs::File::create(&m.log)
            .with_context(|| format!("cannot create {}", m.log.display()))?;
        let log_err = log.try_clone().context("cannot share a log file")?;
        let mut cmd = Command::new(exe);
        cmd.arg("master")
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&m.addr)
            .arg("--peers")
            .arg(peers)
            .arg("--data-dir")
            .arg(&m.data_dir)
            // Three masters share this machine: one async worker each avoids cross-thread
            // wakeups (measured: +20% writes/s at 64 clients on 2 cores).
            .arg("--worker-threads")
            .arg("1")
            .args(master_args)
            // Roles are read from the log: make sure it has `info` lines without colour codes.
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        {
            use std::os::unix::process::CommandExt;
            // Its own group: a Ctrl-C at the terminal reaches only the bench, which then kills
            // the masters in order instead of racing them.
            cmd.process_group(0);
            // SAFETY: the closure runs in the child between fork and exec and only makes one
            // async-signal-safe system call. The death signal fires when the *thread* that
            // forked exits; the bench spawns masters from the runtime's `block_on` future, which
            // runs on the main thread, so that is when the process exits.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start master {id}"))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILL to master `id`'s process group, and reap it.
    pub fn kill9(&mut self, id: u32) -> anyhow::Result<()> {
        let m = self.master(id)?;
        let pid = m
            .pid()
            .with_context(|| format!("master {id} is not running"))?;
        killpg(pid, Signal::SIGKILL).with_context(|| format!("cannot kill master {id}"))?;
        if let Some(mut child) = m.child.take() {
            child
                .wait()
                .with_context(|| format!("cannot reap master {id}"))?;
        }
        m.role = Role::Starting;
        Ok(())
    }

    /// Starts a killed master again, on the same port and data directory.
    pub fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// Reads what the masters logged since the last look, and checks they still run.
    fn refresh(&mut self) -> anyhow::Result<()> {
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
            scan_log(m)?;
        }
        Ok(())
    }

    /// The leader by the logs: the running master leading in the highest epoch. None while the
    /// ensemble has none, or when a follower names another leader for that epoch.
    fn leader(&self) -> Option<(u32, u64, Option<SystemTime>)> {
        let (id, epoch, at) = self
            .masters
            .iter()
            .filter(|m| m.child.is_some())
            .filter_map(|m| match m.role {
                Role::Leading { epoch, at } => Some((m.id, epoch, at)),
                _ => None,
            })
            .max_by_key(|&(_, epoch, _)| epoch)?;
        let disputed = self.masters.iter().any(|m| {
            matches!(m.role, Role::Following { leader, epoch: e } if e == epoch && leader != id)
        });
        (!disputed).then_some((id, epoch, at))
    }

    /// Waits until every master runs and serves under one leader in one epoch; returns the
    /// leader's id and epoch.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<(u32, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh()?;
            if let Some((leader, epoch, _)) = self.leader() {
                let all = self.masters.iter().all(|m| {
                    m.child.is_some() && m.role.serving() && m.role.epoch() == Some(epoch)
                });
                if all {
                    return Ok((leader, epoch));
                }
            }
            if Instant::now() >= deadline {
                let roles: Vec<String> = self
                    .masters
                    .iter()
                    .map(|m| format!("{}: {:?}", m.id, m.role))
                    .collect();
                bail!(
                    "the ensemble did not serve with every master within {timeout:?} (roles: {})",
                    roles.join(", ")
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until a leader of an epoch after `epoch` has logged that it leads; returns its id
    /// and the time stamp of that line.
    pub async fn wait_leader_after(
        &mut self,
        epoch: u64,
        timeout: Duration,
    ) -> anyhow::Result<(u32, Option<SystemTime>)> {
        let deadline = Instant::now() + timeout;
        loop {
            self.refresh()?;
            if let Some((leader, e, at)) = self.leader()
                && e > epoch
            {
                return Ok((leader, at));
            }
            if Instant::now() >= deadline {
                bail!("no new leader after epoch {epoch} within {timeout:?}");
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
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "----- master {} ({state}; {}), last lines -----\n",
                m.id,
                m.log.display()
            ));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        for m in &mut self.masters {
            if let (Some(pid), Some(mut child)) = (m.pid(), m.child.take()) {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            eprintln!(
                "drover: could not remove the bench ensemble's directory {}: {e}",
                self.root.display()
            );
        }
    }
}

/// A new, empty directory under the system temp dir, named after this process and the time.
/// A new directory for one ensemble under `parent`.
fn make_temp_dir(parent: &Path) -> anyhow::Result<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!("drover-bench-{}-{nanos:09}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Parses the complete lines `m`'s log gained since the last scan into `m.role`.
fn scan_log(m: &mut Master) -> anyhow::Result<()> {
    let mut file = match std::fs::File::open(&m.log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", m.log.display())),
    };
    file.seek(SeekFrom::Start(m.scanned))
        .with_context(|| format!("cannot read {}", m.log.display()))?;
    let mut buf = Vec::new();
    file.take(LOG_READ_BYTES_MAX)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", m.log.display()))?;
    // Only whole lines: the master may be half way through writing the last one.
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
        return Ok(());
    };
    for line in String::from_utf8_lossy(&buf[..end]).lines() {
        if let Some(role) = parse_role(line, m.id) {
            m.role = role;
        }
    }
    m.scanned += end as u64 + 1;
    Ok(())
}

/// The role a log line of master `id` announces, if it announces one.
fn parse_role(line: &str, id: u32) -> Option<Role> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        words
            .iter()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    // Only lines about this peer, from the ZAB module (a client's line could say anything).
    if !line.contains("drover_coord::zab") || field("peer") != Some(u64::from(id)) {
        return None;
    }
    if line.contains(" leading peer=") {
        let at = words.first().and_then(|w| parse_rfc3339_utc(w));
        return Some(Role::Leading {
            epoch: field("epoch")?,
            at,
        });
    }
    if line.contains(" following peer=") {
        return Some(Role::Following {
            leader: u32::try_from(field("leader")?).ok()?,
            epoch: field("epoch")?,
        });
    }
    if line.contains(" looking for a leader ") {
        return Some(Role::Looking);
    }
    None
}

/// `2026-11-22T00:29:38.750774Z`, the time stamps tracing writes, as a `SystemTime`.
fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else if frac.len() <= 9 && frac.bytes().all(|b| b.is_ascii_digit()) {
        frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32)
    } else {
        return None;
    };
    // Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_from_zab_log_lines() {
        let lead = "2026-11-22T00:29:38.750774Z  INFO drover_coord::zab: leading peer=3 epoch=1 \
                    last_zxid=0x0 followers=1";
        let at = UNIX_EPOCH + Duration::new(1_795_307_378, 750_774_000);
        assert_eq!(
            parse_role(lead, 3),
            Some(Role::Leading {
                epoch: 1,
                at: Some(at)
            })
        );
        assert_eq!(parse_role(lead, 2), None, "a line about another peer");
        let follow = "2026-11-22T00:29:38.847673Z  INFO drover_coord::zab: following peer=1 \
                      leader=3 epoch=1";
        assert_eq!(
            parse_role(follow, 1),
            Some(Role::Following {
                leader: 3,
                epoch: 1
            })
        );
        let look = "2026-11-22T00:29:40.000000Z  INFO drover_coord::zab: looking for a leader \
                    peer=1 epoch=1";
        assert_eq!(parse_role(look, 1), Some(Role::Looking));
        let other = "2026-11-22T00:29:38.847704Z  INFO drover_coord::server: coord role changed \
                     server=1 role=Following";
        assert_eq!(parse_role(other, 1), None);
    }

    #[test]
    fn log_time_stamps_parse_as_utc() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:01.5Z"),
            Some(UNIX_EPOCH + Duration::new(951_868_801, 500_000_000))
        );
        assert_eq!(parse_rfc3339_utc("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("yesterday"), None);
    }
}
