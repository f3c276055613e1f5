//! Interaction transcripts over `Replica`, in the style of etcd raft's datadriven interaction
//! tests (`rafttest.InteractionEnv`): each `coord/testdata/*.txt` is a sequence of commands, each
//! followed by the exact messages and actions that result, one line each. The harness plays the
//! driver: it carries messages between replicas only when told to, keeps a disk per replica
//! (durable log, appended-but-not-fsynced tail, epochs, snapshot) and reports `Durable` only when
//! told to, so a transcript can stop the world between any two steps.
//!
//! File format: `#` lines and blank lines are comments. A command is one line, then `----`, then
//! its output up to the next blank line. `DROVER_REWRITE_TRANSCRIPTS=1 cargo test -p drover-coord
//! --lib interaction` rewrites the outputs in place (review the diff); otherwise a mismatch fails
//! with a diff.
//!
//! Commands (ids are peer ids; `c=N` names a client connection; zxids are written `epoch.counter`):
//! - `add-nodes N [history=K] [down=I,J]`: voters 1..N with empty disks; starts all but `down`.
//!   `history` is `ZabConfig::history_txns_max`.
//! - `disk ID [accepted=E] [current=E] [log=1.1-1.3,2.1] [snapshot=1.2]`: sets what a stopped
//!   peer recovers. Log entries are made-up `CreateSession` transactions; the snapshot holds the
//!   log up to its zxid, and the log keeps what follows it.
//! - `start ID` / `crash ID`: a crash loses the appended, not fsynced, tail of the log.
//! - `deliver [from=I] [to=J] [count=N]` / `drop [from=I] [to=J] [count=N]`: messages in flight,
//!   oldest first; `deliver` shows what each one made its receiver do, indented under it.
//! - `durable [ID...] [upto=E.C]`: fsyncs appended transactions and reports `Durable`, which the
//!   driver normally does (with an install count, after a snapshot install).
//! - `tick [ID...] [ms=N]`: time moves on `ms` (default 10), then the peers tick.
//! - `connect ID c=N`, `create c=N PATH [DATA] [acl=ACL]`, `set c=N PATH DATA`, `read c=N PATH`,
//!   `sync c=N`, `add-auth c=N USER:PASSWORD` (digest), `getacl c=N PATH`,
//!   `setacl c=N PATH acl=ACL [version=N]`: a client's new session and requests (ACLs in zkCli's
//!   `scheme:id:perms` form).
//! - `stabilize [ID...]`: fsync and deliver (among these peers) until nothing moves.
//! - `status [ID...]`: each peer's ZAB state and disk.

use crate::data_tree::DataTree;
use crate::op::{CreateMode, Op, OpError, OpResult, ReadOp, WriteOp};
use crate::replica::{Action, Input, Note, Replica};
use crate::server::{self, ConnId, Now, Role, ServerConfig, ServerMsg, SubmitKind};
use crate::txn::{Txn, TxnKind};
use crate::zab::{self, PeerId, PeerMsg, VoteState, ZabConfig};
use crate::zxid::{SessionId, Zxid};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

/// `stabilize` gives up after this many rounds of fsync-then-deliver: a transcript that never
/// settles shows a liveness bug, not a hang.
const STABILIZE_ROUNDS_MAX: usize = 200;
/// Session timeout clients ask for, and of made-up recovered sessions: long enough that no
/// transcript's time moves past it.
const SESSION_TIMEOUT_MS: u32 = 40_000;

#[derive(Default)]
struct Disk {
    accepted_epoch: u32,
    current_epoch: u32,
    snapshot: DataTree,
    /// fsynced, after the snapshot.
    log: Vec<Txn>,
    /// Appended, not yet fsynced: lost in a crash.
    pending: Vec<Txn>,
    /// Snapshots installed by this process (the storage's count, which a restart resets).
    installs: u64,
    /// An install not yet reported as `Durable`.
    install_unreported: Option<Zxid>,
}

struct Node {
    replica: Option<Replica>,
    disk: Disk,
}

struct Conn {
    node: PeerId,
    next_xid: i64,
}

struct Env {
    voters: Vec<PeerId>,
    history_txns_max: usize,
    nodes: BTreeMap<PeerId, Node>,
    /// Messages in flight, oldest first.
    net: VecDeque<(PeerId, PeerId, PeerMsg)>,
    conns: BTreeMap<ConnId, Conn>,
    now_ms: u64,
    out: String,
}

/// A command's words: positional ones and `key=value` ones.
struct Args {
    positional: Vec<String>,
    keyed: BTreeMap<String, String>,
}

impl Args {
    fn parse(words: &[&str]) -> Args {
        let mut positional = Vec::new();
        let mut keyed = BTreeMap::new();
        for w in words {
            match w.split_once('=') {
                Some((k, v)) if !k.starts_with('/') => {
                    keyed.insert(k.to_string(), v.to_string());
                }
                _ => positional.push(w.to_string()),
            }
        }
        Args { positional, keyed }
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.keyed.remove(key)
    }

    fn take_num<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        self.take(key)
            .map(|v| v.parse().map_err(|_| format!("{key}={v}: not a number")))
            .transpose()
    }

    fn ids(&mut self) -> Result<Vec<PeerId>, String> {
        std::mem::take(&mut self.positional)
            .iter()
            .map(|w| w.parse().map_err(|_| format!("{w}: not a peer id")))
            .collect()
    }

    fn done(&self) -> Result<(), String> {
        match (self.keyed.keys().next(), self.positional.first()) {
            (Some(k), _) => Err(format!("unknown argument {k}=")),
            (None, Some(p)) => Err(format!("unexpected argument {p}")),
            (None, None) => Ok(()),
        }
    }
}

fn parse_zxid(s: &str) -> Result<Zxid, String> {
    let (e, c) = s
        .split_once('.')
        .ok_or_else(|| format!("{s}: a zxid is written epoch.counter"))?;
    let e = e.parse().map_err(|_| format!("{s}: bad epoch"))?;
    let c = c.parse().map_err(|_| format!("{s}: bad counter"))?;
    Ok(Zxid::new(e, c))
}

/// `1.1-1.3,2.1` → [1.1, 1.2, 1.3, 2.1].
fn parse_zxids(s: &str) -> Result<Vec<Zxid>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_zxid(a)?, parse_zxid(b)?);
                if a.epoch() != b.epoch() || a > b {
                    return Err(format!("{part}: a range stays within one epoch"));
                }
                out.extend((a.counter()..=b.counter()).map(|c| Zxid::new(a.epoch(), c)));
            }
            None => out.push(parse_zxid(part)?),
        }
    }
    Ok(out)
}

pub(crate) fn z(zxid: Zxid) -> String {
    format!("{}.{}", zxid.epoch(), zxid.counter())
}

fn sess(s: SessionId) -> String {
    format!("s{}", z(Zxid(s.0)))
}

pub(crate) fn txn_desc(t: &Txn) -> String {
    let what = match &t.kind {
        TxnKind::CreateSession { .. } => format!("create-session {}", sess(t.session)),
        TxnKind::CloseSession => format!("close-session {}", sess(t.session)),
        TxnKind::Write(w) => write_desc(w),
        TxnKind::Refused(r) => format!("refused ({})", result_desc(r)),
    };
    format!("{} {what}", z(t.zxid))
}

fn write_desc(w: &WriteOp) -> String {
    let data = |d: &bytes::Bytes| String::from_utf8_lossy(d).into_owned();
    match w {
        WriteOp::Create {
            path, data: d, acl, ..
        } if *acl != crate::acl::open_acl() => format!(
            "create {path} {} acl={}",
            data(d),
            crate::acl::format_acl(acl)
        ),
        WriteOp::Create { path, data: d, .. } => format!("create {path} {}", data(d)),
        WriteOp::SetAcl { path, acl, .. } => {
            format!("setacl {path} {}", crate::acl::format_acl(acl))
        }
        WriteOp::Delete { path, .. } => format!("delete {path}"),
        WriteOp::SetData { path, data: d, .. } => format!("set {path} {}", data(d)),
        WriteOp::Check { path, .. } => format!("check {path}"),
        WriteOp::Multi(ops) => format!("multi of {}", ops.len()),
    }
    .trim_end()
    .to_string()
}

pub(crate) fn msg_desc(msg: &PeerMsg) -> String {
    match msg {
        PeerMsg::Vote {
            round,
            proposal,
            state,
        } => {
            let state = match state {
                VoteState::Looking => "looking",
                VoteState::Following => "following",
                VoteState::Leading => "leading",
            };
            format!(
                "Vote round={round} leader={} epoch={} zxid={} {state}",
                proposal.leader,
                proposal.epoch,
                z(proposal.zxid)
            )
        }
        PeerMsg::FollowerInfo {
            accepted_epoch,
            last_zxid,
        } => format!(
            "FollowerInfo accepted={accepted_epoch} last={}",
            z(*last_zxid)
        ),
        PeerMsg::NewEpoch { epoch } => format!("NewEpoch {epoch}"),
        PeerMsg::AckEpoch {
            epoch,
            current_epoch,
            last_zxid,
            repeated,
        } => format!(
            "AckEpoch {epoch} current={current_epoch} last={}{}",
            z(*last_zxid),
            if *repeated { " repeated" } else { "" }
        ),
        PeerMsg::NotLeading => "NotLeading".to_string(),
        PeerMsg::Snap { epoch, tree } => {
            format!("Snap epoch={epoch} at={}", z(tree.last_applied()))
        }
        PeerMsg::Diff { epoch, prev, txns } => {
            let txns: Vec<String> = txns.iter().map(txn_desc).collect();
            format!("Diff epoch={epoch} prev={} [{}]", z(*prev), txns.join(", "))
        }
        PeerMsg::NewLeader { epoch, last_zxid } => {
            format!("NewLeader epoch={epoch} last={}", z(*last_zxid))
        }
        PeerMsg::AckNewLeader { epoch } => format!("AckNewLeader epoch={epoch}"),
        PeerMsg::UpToDate { epoch, committed } => {
            format!("UpToDate epoch={epoch} committed={}", z(*committed))
        }
        PeerMsg::Propose { epoch, prev, txn } => {
            format!("Propose epoch={epoch} prev={} {}", z(*prev), txn_desc(txn))
        }
        PeerMsg::Ack { epoch, zxid } => format!("Ack epoch={epoch} {}", z(*zxid)),
        PeerMsg::Commit { epoch, zxid } => format!("Commit epoch={epoch} {}", z(*zxid)),
        PeerMsg::Forward { epoch, sub } => {
            format!("Forward epoch={epoch} {}", submission_desc(sub))
        }
        PeerMsg::SyncDone {
            epoch,
            session,
            xid,
            zxid,
        } => format!(
            "SyncDone epoch={epoch} {} xid={xid} at={}",
            sess(*session),
            z(*zxid)
        ),
        PeerMsg::Ping { epoch, committed } => {
            format!("Ping epoch={epoch} committed={}", z(*committed))
        }
        PeerMsg::PingAck { epoch, touches } => {
            let t: Vec<String> = touches.iter().map(|s| sess(*s)).collect();
            format!("PingAck epoch={epoch} touches=[{}]", t.join(" "))
        }
    }
}

fn submission_desc(sub: &server::Submission) -> String {
    let what = match &sub.kind {
        SubmitKind::Sync => "sync".to_string(),
        SubmitKind::Txn(TxnKind::CreateSession { .. }) => "create-session".to_string(),
        SubmitKind::Txn(TxnKind::CloseSession) => "close-session".to_string(),
        SubmitKind::Txn(TxnKind::Write(w)) => write_desc(w),
        SubmitKind::Txn(TxnKind::Refused(r)) => format!("refused ({})", result_desc(r)),
    };
    format!(
        "{what} (from {} {} xid={})",
        sub.origin,
        sess(sub.session),
        sub.xid
    )
}

fn result_desc(r: &Result<OpResult, OpError>) -> String {
    match r {
        Ok(OpResult::Created { path, .. }) => format!("created {path}"),
        Ok(OpResult::Deleted) => "deleted".into(),
        Ok(OpResult::Stat(s)) => format!("version={}", s.version),
        Ok(OpResult::NoStat) => "no node".into(),
        Ok(OpResult::Checked) => "checked".into(),
        Ok(OpResult::Data { data, stat }) => format!(
            "data={} version={}",
            String::from_utf8_lossy(data),
            stat.version
        ),
        Ok(OpResult::Children { children, .. }) => format!("children={children:?}"),
        Ok(OpResult::Acl { acl, stat }) => format!(
            "acl={} aversion={}",
            crate::acl::format_acl(acl),
            stat.aversion
        ),
        Ok(OpResult::Multi(rs)) => format!("multi of {}", rs.len()),
        Ok(OpResult::Empty) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}

fn server_msg_desc(msg: &ServerMsg) -> String {
    match msg {
        ServerMsg::Connected {
            session,
            timeout_ms,
            server_id,
            ..
        } => format!(
            "Connected {} timeout={timeout_ms} server={server_id}",
            sess(*session)
        ),
        ServerMsg::Reply { xid, zxid, result } => {
            format!("Reply xid={xid} zxid={} {}", z(*zxid), result_desc(result))
        }
        ServerMsg::Event(e) => format!("Event {:?} {} at={}", e.kind, e.path, z(e.zxid)),
        ServerMsg::Pong { zxid } => format!("Pong {}", z(*zxid)),
        ServerMsg::Ended(None) => "Ended".into(),
        ServerMsg::Ended(Some(e)) => format!("Ended: {e}"),
    }
}

fn note_desc(note: &Note) -> String {
    match note {
        Note::Submit(sub) => format!("submit {}", submission_desc(sub)),
        Note::Commit(t) => format!("commit {}", txn_desc(t)),
        Note::Synced { session, xid } => format!("synced {} xid={xid}", sess(*session)),
        Note::Role(r) => format!("role {r:?}"),
        Note::Touches(t) => {
            let t: Vec<String> = t.iter().map(|s| sess(*s)).collect();
            format!("touches [{}]", t.join(" "))
        }
    }
}

/// A made-up recovered transaction: a session no client holds, so it changes the tree (and its
/// zxid) without anything else to say.
fn recovered_txn(zxid: Zxid) -> Txn {
    Txn {
        zxid,
        time_ms: 0,
        origin: 0,
        session: SessionId(zxid.0),
        xid: -1,
        kind: TxnKind::CreateSession {
            timeout_ms: SESSION_TIMEOUT_MS,
            password: [0; 16],
        },
    }
}

impl Env {
    fn new() -> Env {
        Env {
            voters: Vec::new(),
            history_txns_max: 50_000,
            nodes: BTreeMap::new(),
            net: VecDeque::new(),
            conns: BTreeMap::new(),
            now_ms: 0,
            out: String::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.now_ms,
            wall_ms: 1_700_000_000_000 + self.now_ms as i64,
        }
    }

    fn line(&mut self, indent: usize, text: &str) {
        let _ = writeln!(self.out, "{:indent$}{text}", "", indent = indent * 2);
    }

    fn run(&mut self, cmd: &str) -> Result<String, String> {
        self.out.clear();
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let Some((&name, rest)) = words.split_first() else {
            return Err("empty command".into());
        };
        let mut args = Args::parse(rest);
        match name {
            "add-nodes" => self.add_nodes(&mut args)?,
            "disk" => self.set_disk(&mut args)?,
            "start" => {
                for id in args.ids()? {
                    self.start(id)?;
                }
            }
            "crash" => {
                for id in args.ids()? {
                    self.crash(id)?;
                }
            }
            "deliver" | "drop" => {
                let from = args.take_num("from")?;
                let to = args.take_num("to")?;
                let count = args.take_num("count")?.unwrap_or(usize::MAX);
                let picked = self.pick(from, to, count);
                for (from, to, msg) in picked {
                    if name == "deliver" {
                        self.deliver(from, to, msg, 0);
                    } else {
                        self.line(0, &format!("dropped {from}->{to} {}", msg_desc(&msg)));
                    }
                }
            }
            "durable" => {
                let upto = args.take("upto").map(|s| parse_zxid(&s)).transpose()?;
                let mut ids = args.ids()?;
                if ids.is_empty() {
                    ids = self.nodes.keys().copied().collect();
                }
                for id in ids {
                    self.durable(id, upto, 0)?;
                }
            }
            "tick" => {
                let ms = args.take_num("ms")?.unwrap_or(10);
                let mut ids = args.ids()?;
                if ids.is_empty() {
                    ids = self.up();
                }
                self.now_ms += ms;
                for id in ids {
                    let acts = self.step(id, Input::Tick)?;
                    if !acts.is_empty() {
                        self.line(0, &format!("{id} tick at {} ms", self.now_ms));
                        self.print(1, &acts);
                    }
                }
            }
            "connect" => {
                let conn = args.take_num("c")?.ok_or("connect needs c=N")?;
                let ids = args.ids()?;
                let [id] = ids[..] else {
                    return Err("connect names one peer".into());
                };
                self.conns.insert(
                    conn,
                    Conn {
                        node: id,
                        next_xid: 1,
                    },
                );
                let input = server::Input::Connect {
                    conn,
                    session: SessionId(0),
                    password: Vec::new(),
                    timeout_ms: SESSION_TIMEOUT_MS,
                    last_zxid_seen: Zxid::ZERO,
                    new_password: [conn as u8; 16],
                    identity: Default::default(),
                };
                let acts = self.step(id, Input::Client(input))?;
                self.print(0, &acts);
            }
            "create" | "set" | "read" | "sync" | "add-auth" | "getacl" | "setacl" => {
                self.request(name, &mut args)?
            }
            "stabilize" => self.stabilize(&mut args)?,
            "status" => {
                let mut ids = args.ids()?;
                if ids.is_empty() {
                    ids = self.nodes.keys().copied().collect();
                }
                for id in ids {
                    let s = self.status(id)?;
                    self.line(0, &s);
                }
            }
            other => return Err(format!("unknown command {other}")),
        }
        args.done()?;
        if self.out.is_empty() {
            self.out.push_str("ok\n");
        }
        Ok(std::mem::take(&mut self.out))
    }

    fn up(&self) -> Vec<PeerId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.replica.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    fn node(&mut self, id: PeerId) -> Result<&mut Node, String> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| format!("no peer {id}"))
    }

    fn add_nodes(&mut self, args: &mut Args) -> Result<(), String> {
        let ids = args.ids()?;
        let [n] = ids[..] else {
            return Err("add-nodes N".into());
        };
        if !self.nodes.is_empty() {
            return Err("add-nodes comes once, first".into());
        }
        if let Some(h) = args.take_num("history")? {
            self.history_txns_max = h;
        }
        let down: BTreeSet<PeerId> = match args.take("down") {
            Some(d) => d
                .split(',')
                .map(|w| w.parse().map_err(|_| format!("down={d}: not peer ids")))
                .collect::<Result<_, _>>()?,
            None => BTreeSet::new(),
        };
        self.voters = (1..=n).collect();
        for id in 1..=n {
            self.nodes.insert(
                id,
                Node {
                    replica: None,
                    disk: Disk::default(),
                },
            );
        }
        for id in 1..=n {
            if !down.contains(&id) {
                self.start(id)?;
            }
        }
        Ok(())
    }

    fn set_disk(&mut self, args: &mut Args) -> Result<(), String> {
        let ids = args.ids()?;
        let [id] = ids[..] else {
            return Err("disk names one peer".into());
        };
        let accepted = args.take_num("accepted")?;
        let current = args.take_num("current")?;
        let log = args.take("log").map(|s| parse_zxids(&s)).transpose()?;
        let snapshot = args.take("snapshot").map(|s| parse_zxid(&s)).transpose()?;
        let node = self.node(id)?;
        if node.replica.is_some() {
            return Err(format!("peer {id} is running; crash it first"));
        }
        let disk = &mut node.disk;
        if let Some(a) = accepted {
            disk.accepted_epoch = a;
        }
        if let Some(c) = current {
            disk.current_epoch = c;
        }
        if let Some(log) = log {
            let at = snapshot.unwrap_or(Zxid::ZERO);
            let mut tree = DataTree::new();
            disk.log.clear();
            for zxid in log {
                let txn = recovered_txn(zxid);
                if zxid <= at {
                    tree.apply(&txn);
                } else {
                    disk.log.push(txn);
                }
            }
            disk.snapshot = tree;
            disk.pending.clear();
        }
        Ok(())
    }

    fn start(&mut self, id: PeerId) -> Result<(), String> {
        let voters = self.voters.clone();
        let history_txns_max = self.history_txns_max;
        let now = self.now();
        let node = self.node(id)?;
        if node.replica.is_some() {
            return Err(format!("peer {id} is already running"));
        }
        let mut zab_config = ZabConfig::new(id, voters);
        zab_config.history_txns_max = history_txns_max;
        let server_config = ServerConfig {
            server_id: id,
            ..ServerConfig::default()
        };
        // A new process: the storage's install count starts over.
        node.disk.installs = 0;
        node.disk.install_unreported = None;
        let tree = node.disk.snapshot.clone();
        let durable = zab::Durable {
            accepted_epoch: node.disk.accepted_epoch,
            current_epoch: node.disk.current_epoch,
            snapshot_zxid: tree.last_applied(),
            log: node.disk.log.clone(),
        };
        let mut out = Vec::new();
        let mut replica = Replica::new(server_config, zab_config, tree, durable, now, &mut out);
        replica.record_notes();
        // Notes from the constructor are not wanted: ZabPeer::new's SetRole is always there.
        let _ = replica.take_notes();
        replica.check_invariants();
        node.replica = Some(replica);
        self.line(0, &format!("{id} start"));
        let acts = self.carry_out(id, out);
        self.print(1, &acts);
        Ok(())
    }

    fn crash(&mut self, id: PeerId) -> Result<(), String> {
        let node = self.node(id)?;
        if node.replica.take().is_none() {
            return Err(format!("peer {id} is not running"));
        }
        let lost: Vec<String> = node.disk.pending.drain(..).map(|t| z(t.zxid)).collect();
        self.conns.retain(|_, c| c.node != id);
        let lost = if lost.is_empty() {
            String::new()
        } else {
            format!(" (lost unsynced {})", lost.join(" "))
        };
        self.line(0, &format!("{id} crash{lost}"));
        // Its connections are gone, and with them what was on its way to it (what it sent
        // before the crash may still arrive).
        let to_it = self.pick(None, Some(id), usize::MAX);
        for (from, to, msg) in to_it {
            self.line(1, &format!("lost {from}->{to} {}", msg_desc(&msg)));
        }
        Ok(())
    }

    /// Steps a running peer; its actions come back already carried out (messages queued, disk
    /// written), as lines of text with the notes in between.
    fn step(&mut self, id: PeerId, input: Input) -> Result<Vec<String>, String> {
        let now = self.now();
        let node = self.node(id)?;
        let replica = node
            .replica
            .as_mut()
            .ok_or_else(|| format!("peer {id} is not running"))?;
        let mut out = Vec::new();
        replica.step(now, input, &mut out);
        replica.check_invariants();
        Ok(self.carry_out(id, out))
    }

    fn carry_out(&mut self, id: PeerId, actions: Vec<Action>) -> Vec<String> {
        let notes = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.replica.as_mut())
            .map(Replica::take_notes)
            .unwrap_or_default();
        let mut notes = notes.into_iter().peekable();
        let mut lines = Vec::new();
        for (i, action) in actions.into_iter().enumerate() {
            while let Some((_, note)) = notes.next_if(|(at, _)| *at <= i) {
                lines.push(format!("{id}: {}", note_desc(&note)));
            }
            lines.push(self.carry_out_one(id, action));
        }
        for (_, note) in notes {
            lines.push(format!("{id}: {}", note_desc(&note)));
        }
        lines
    }

    fn carry_out_one(&mut self, id: PeerId, action: Action) -> String {
        let disk = &mut self
            .nodes
            .get_mut(&id)
            .expect("only running peers act")
            .disk;
        match action {
            Action::SendPeer { to, msg } => {
                let line = format!("{id}->{to} {}", msg_desc(&msg));
                self.net.push_back((id, to, msg));
                line
            }
            Action::SendClient { conn, msg } => format!("{id}->c{conn} {}", server_msg_desc(&msg)),
            Action::CloseClient { conn } => {
                self.conns.remove(&conn);
                format!("{id}: close c{conn}")
            }
            Action::Persist(txn) => {
                let line = format!("{id}: persist {}", txn_desc(&txn));
                disk.pending.push(txn);
                line
            }
            Action::PersistEpochs { accepted, current } => {
                // Durable before the next action, as the driver does it.
                disk.accepted_epoch = accepted;
                disk.current_epoch = current;
                format!("{id}: persist epochs accepted={accepted} current={current}")
            }
            Action::InstallSnapshot(tree) => {
                let at = tree.last_applied();
                // The storage writes the snapshot durably and drops every logged transaction
                // after it (they may be another leader's); earlier ones are covered by it.
                disk.log.clear();
                disk.pending.clear();
                disk.snapshot = *tree;
                disk.installs += 1;
                disk.install_unreported = Some(at);
                format!("{id}: install snapshot at {}", z(at))
            }
            Action::Snapshot(tree) => {
                let at = tree.last_applied();
                if at > disk.snapshot.last_applied() {
                    disk.log.retain(|t| t.zxid > at);
                    disk.snapshot = *tree;
                }
                format!("{id}: snapshot at {}", z(at))
            }
        }
    }

    fn print(&mut self, indent: usize, lines: &[String]) {
        for l in lines {
            self.line(indent, l);
        }
    }

    /// Takes up to `count` in-flight messages matching the filters, oldest first.
    fn pick(
        &mut self,
        from: Option<PeerId>,
        to: Option<PeerId>,
        count: usize,
    ) -> Vec<(PeerId, PeerId, PeerMsg)> {
        let mut picked = Vec::new();
        let mut kept = VecDeque::new();
        for m in std::mem::take(&mut self.net) {
            let matches = from.is_none_or(|f| f == m.0) && to.is_none_or(|t| t == m.1);
            if matches && picked.len() < count {
                picked.push(m);
            } else {
                kept.push_back(m);
            }
        }
        self.net = kept;
        picked
    }

    fn deliver(&mut self, from: PeerId, to: PeerId, msg: PeerMsg, indent: usize) {
        self.line(indent, &format!("{from}->{to} {}", msg_desc(&msg)));
        match self.step(to, Input::Peer { from, msg }) {
            Ok(acts) => self.print(indent + 1, &acts),
            Err(_) => self.line(indent + 1, &format!("{to} is down: lost")),
        }
    }

    /// Fsyncs `id`'s appended transactions (up to `upto`) and reports it, with any install.
    /// Says nothing when there is nothing to report.
    fn durable(&mut self, id: PeerId, upto: Option<Zxid>, indent: usize) -> Result<bool, String> {
        let node = self.node(id)?;
        if node.replica.is_none() {
            return Ok(false);
        }
        let disk = &mut node.disk;
        let upto = upto.unwrap_or(Zxid(u64::MAX));
        let moved: Vec<Txn> = disk
            .pending
            .iter()
            .filter(|t| t.zxid <= upto)
            .cloned()
            .collect();
        disk.pending.retain(|t| t.zxid > upto);
        let last = moved.last().map(|t| t.zxid);
        disk.log.extend(moved);
        let reported = match (last, disk.install_unreported.take()) {
            (Some(l), _) => l,
            (None, Some(at)) => at,
            (None, None) => return Ok(false),
        };
        let installs = disk.installs;
        let what = if installs > 0 {
            format!(" (installs {installs})")
        } else {
            String::new()
        };
        self.line(indent, &format!("{id} durable {}{what}", z(reported)));
        let acts = self.step(
            id,
            Input::Durable {
                upto: reported,
                installs,
            },
        )?;
        self.print(indent + 1, &acts);
        Ok(true)
    }

    fn request(&mut self, name: &str, args: &mut Args) -> Result<(), String> {
        let conn: ConnId = args.take_num("c")?.ok_or("a request needs c=N")?;
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or_else(|| format!("no connection c{conn}"))?;
        let xid = c.next_xid;
        c.next_xid += 1;
        let node = c.node;
        let words = std::mem::take(&mut args.positional);
        let path = || -> Result<String, String> {
            words
                .first()
                .cloned()
                .ok_or_else(|| format!("{name} needs a path"))
        };
        let data = bytes::Bytes::from(words.get(1).cloned().unwrap_or_default());
        let acl = args
            .take("acl")
            .map(|a| crate::acl::parse_acl(&a))
            .transpose()?;
        let version = args.take_num("version")?.unwrap_or(-1);
        let op = match name {
            "create" => Op::Write(WriteOp::Create {
                path: path()?,
                data,
                mode: CreateMode::Persistent,
                acl: acl.unwrap_or_else(crate::acl::open_acl),
            }),
            "setacl" => Op::Write(WriteOp::SetAcl {
                path: path()?,
                acl: acl.ok_or("setacl needs acl=")?,
                version,
            }),
            "getacl" => Op::Read(ReadOp::GetAcl { path: path()? }),
            "add-auth" => Op::Read(ReadOp::AddAuth {
                scheme: "digest".into(),
                auth: path()?.into_bytes().into(),
            }),
            "set" => Op::Write(WriteOp::SetData {
                path: path()?,
                data,
                version: -1,
            }),
            "read" => Op::Read(ReadOp::GetData {
                path: path()?,
                watch: false,
            }),
            _ => Op::Read(ReadOp::Sync { path: "/".into() }),
        };
        let acts = self.step(
            node,
            Input::Client(server::Input::Request {
                conn,
                xid,
                op: Ok(op),
            }),
        )?;
        self.print(0, &acts);
        Ok(())
    }

    fn stabilize(&mut self, args: &mut Args) -> Result<(), String> {
        let mut ids = args.ids()?;
        if ids.is_empty() {
            ids = self.nodes.keys().copied().collect();
        }
        let among: BTreeSet<PeerId> = ids.iter().copied().collect();
        for _ in 0..STABILIZE_ROUNDS_MAX {
            let mut moved = false;
            for &id in &ids {
                moved |= self.durable(id, None, 0)?;
            }
            let (now, later): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.net)
                .into_iter()
                .partition(|(f, t, _)| among.contains(f) && among.contains(t));
            self.net = later;
            for (from, to, msg) in now {
                moved = true;
                self.deliver(from, to, msg, 0);
            }
            if !moved {
                return Ok(());
            }
        }
        let tail: Vec<&str> = self.out.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!(
            "stabilize: still moving after {STABILIZE_ROUNDS_MAX} rounds; the last lines:\n{}",
            tail.join("\n")
        ))
    }

    fn status(&mut self, id: PeerId) -> Result<String, String> {
        let node = self.node(id)?;
        let disk = &node.disk;
        let log: Vec<String> = disk.log.iter().map(|t| z(t.zxid)).collect();
        let pending: Vec<String> = disk.pending.iter().map(|t| z(t.zxid)).collect();
        let disk_desc = format!(
            "disk: epochs {}/{} snapshot={} log=[{}] unsynced=[{}]",
            disk.accepted_epoch,
            disk.current_epoch,
            z(disk.snapshot.last_applied()),
            log.join(" "),
            pending.join(" ")
        );
        let Some(r) = &node.replica else {
            return Ok(format!("{id}: down; {disk_desc}"));
        };
        let zab = r.zab();
        let state = match (zab.is_leading(), zab.leader()) {
            (true, _) => "leading".to_string(),
            (false, Some(l)) => format!("following {l}"),
            (false, None) => "not established".to_string(),
        };
        let role = match r.server().role() {
            Role::NotServing => "not serving",
            Role::Following => "serving as follower",
            Role::Leading => "serving as leader",
        };
        Ok(format!(
            "{id}: {state}, {role}; epoch={} logged={} committed={} applied={}; {disk_desc}",
            zab.current_epoch(),
            z(zab.last_logged()),
            z(zab.committed()),
            z(r.server().tree().last_applied()),
        ))
    }
}

/// One `command / ---- / output` block of a transcript, with the text before it.
struct Block {
    before: Vec<String>,
    line_no: usize,
    command: String,
    expected: Vec<String>,
}

fn parse(text: &str) -> Result<(Vec<Block>, Vec<String>), String> {
    let mut blocks = Vec::new();
    let mut before = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            before.push(line.to_string());
            continue;
        }
        match lines.next() {
            Some((_, "----")) => {}
            _ => return Err(format!("line {}: `{line}` must be followed by ----", i + 1)),
        }
        let mut expected = Vec::new();
        while let Some((_, out)) = lines.next_if(|(_, l)| !l.trim().is_empty()) {
            expected.push(out.to_string());
        }
        // The blank line that ends the output belongs to the block.
        lines.next_if(|(_, l)| l.trim().is_empty());
        blocks.push(Block {
            before: std::mem::take(&mut before),
            line_no: i + 1,
            command: line.to_string(),
            expected,
        });
    }
    Ok((blocks, before))
}

/// The lines of `a` and `b` as a diff (`-` expected, `+` actual), from their longest common
/// subsequence. Transcripts are short, so the quadratic table is fine.
fn diff(a: &[String], b: &[String]) -> String {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            (i, j) = (i + 1, j + 1);
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

/// Runs one transcript; rewrites it with `DROVER_REWRITE_TRANSCRIPTS=1`, else fails on the first
/// block whose output differs.
fn run_transcript(name: &str) {
    let path = format!("{}/testdata/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (blocks, tail) = parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let rewrite = std::env::var("DROVER_REWRITE_TRANSCRIPTS").is_ok_and(|v| v == "1");
    let mut env = Env::new();
    let mut rewritten = String::new();
    for b in &blocks {
        let actual = env
            .run(&b.command)
            .unwrap_or_else(|e| panic!("{path}:{}: `{}`: {e}", b.line_no, b.command));
        let actual: Vec<String> = actual.lines().map(str::to_string).collect();
        if rewrite {
            for l in &b.before {
                let _ = writeln!(rewritten, "{l}");
            }
            let _ = writeln!(rewritten, "{}\n----", b.command);
            for l in &actual {
                let _ = writeln!(rewritten, "{l}");
            }
            rewritten.push('\n');
        } else if actual != b.expected {
            panic!(
                "{path}:{}: `{}` gave different output (- expected, + actual; \
                 DROVER_REWRITE_TRANSCRIPTS=1 rewrites):\n{}",
                b.line_no,
                b.command,
                diff(&b.expected, &actual)
            );
        }
    }
    if rewrite {
        for l in &tail {
            let _ = writeln!(rewritten, "{l}");
        }
        let text = format!("{}\n", rewritten.trim_end());
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test per transcript (each proves what its header comment says), and the list of
    /// them that `every_transcript_runs` compares with testdata/.
    macro_rules! transcripts {
        ($($name:ident),* $(,)?) => {
            const TRANSCRIPTS: &[&str] = &[$(stringify!($name)),*];
            $(
                #[test]
                fn $name() {
                    // The rule named in testdata/<name>.txt's header holds, step by step.
                    run_transcript(stringify!($name));
                }
            )*
        };
    }

    transcripts!(
        basics,
        primary_uniqueness,
        integrity_of_history,
        prefix,
        commit,
        durable_acknowledgement,
        sync_before_broadcast,
        acl,
    );

    #[test]
    fn every_transcript_runs() {
        // A transcript added to testdata/ without a test here would silently never run.
        let dir = format!("{}/testdata", env!("CARGO_MANIFEST_DIR"));
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".txt")
                    .map(String::from)
            })
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = TRANSCRIPTS.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "testdata/*.txt and TRANSCRIPTS differ");
    }

    #[test]
    fn the_diff_shows_what_changed() {
        // The failure message of a transcript is readable: kept lines, - expected, + actual.
        let a: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
        let b: Vec<String> = ["x", "w", "z"].iter().map(|s| s.to_string()).collect();
        assert_eq!(diff(&a, &b), "  x\n+ w\n- y\n  z\n");
    }
}
