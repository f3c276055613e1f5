//! ZAB, sans IO: fast leader election, discovery (a new epoch), synchronization (DIFF / SNAP) and
//! broadcast (propose → ack from a quorum → commit), for one peer.
//!
//! The peer owns the replicated history (the logged transactions after the last snapshot) and
//! decides what is committed; the `ServerCore` next to it applies what is committed and serves
//! clients. Inputs come with the time, outputs are `ZabAction`s the driver carries out in order.
//! Persisting the epochs must be durable before the next action is carried out; a `Persist`ed
//! transaction is durable once the driver reports `Durable`.
//!
//! The rules this code keeps, with the name they have in the ZAB paper (Junqueira, Reed, Serafini,
//! "Zab: High-performance broadcast for primary-backup systems", 2011):
//! - *Primary uniqueness*: a peer acknowledges a new epoch only if it is greater than every epoch
//!   it acknowledged before (`accepted_epoch`, durable), so two leaders never establish the same
//!   epoch, and it follows one leader at a time.
//! - *Integrity of history*: a prospective leader gives up if any follower of its discovery quorum
//!   has a more recent history than its own (compared by `(current_epoch, last zxid)`), so the
//!   established leader holds every committed transaction. Its whole history is committed once a
//!   quorum has acknowledged NEWLEADER.
//! - *Prefix*: a follower appends a proposal only if it directly follows its last logged one
//!   (`prev`), so every follower's log is a prefix of the leader's; a gap means resync.
//! - *Commit*: a transaction commits once a quorum (the leader included) has it durable; commits
//!   go out in zxid order, and a follower applies them only up to what it has.
//!
//! Two more that the code above depends on, named here (not in the paper's list):
//! - *Durable acknowledgement*: a follower acknowledges NEWLEADER and proposals only once its log
//!   holds them durably (`Durable`), and takes the leader's epoch as its `current_epoch` only
//!   then, so a peer claiming an epoch in an election holds that epoch's history.
//! - *Synchronization before broadcast*: a leader takes writes only once a quorum acknowledged
//!   NEWLEADER; a follower that joins later gets its DIFF (or SNAP + DIFF) and NEWLEADER before
//!   any proposal, and installs a SNAP only before NEWLEADER (installing drops logged
//!   transactions, which must never happen to acknowledged ones).
//!
//! Each rule has a transcript in `coord/testdata/` (see `interaction`) that shows it step by
//! step; `check_invariants` asserts what holds between any two steps.

use crate::data_tree::DataTree;
use crate::prep::Prep;
use crate::server::{Now, Role, Submission, SubmitKind};
use crate::txn::{Txn, TxnKind};
use crate::zxid::{SessionId, Zxid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tracing::{debug, info, warn};

pub type PeerId = u32;

#[derive(Clone, Debug)]
pub struct ZabConfig {
    pub id: PeerId,
    /// Every voting peer, this one included.
    pub voters: Vec<PeerId>,
    /// A looking peer re-sends its vote this often.
    pub election_resend_ms: u64,
    /// Once a quorum agrees, how long to wait for a better vote (ZooKeeper's finalizeWait).
    /// Skipped when every voter has answered.
    pub election_finalize_ms: u64,
    /// Discovery and synchronization must finish within this (ZooKeeper's initLimit).
    pub init_timeout_ms: u64,
    /// A follower that hears nothing from its leader, or a leader that hears from less than a
    /// quorum, for this long, goes back to election (ZooKeeper's syncLimit).
    pub sync_timeout_ms: u64,
    /// The leader pings its followers this often; followers answer with their sessions' activity.
    pub ping_interval_ms: u64,
    /// Committed transactions kept in memory to DIFF-sync followers; older ones need a SNAP.
    pub history_txns_max: usize,
    /// Deliberately broken: the leader commits as soon as it alone has a proposal durable. Only
    /// for proving that the simulation's checker catches a lost acknowledged write; it exists in
    /// test builds only, so no configuration of a real server can turn it on.
    #[cfg(test)]
    pub broken_commit_without_quorum: bool,
}

impl ZabConfig {
    pub fn new(id: PeerId, voters: Vec<PeerId>) -> ZabConfig {
        ZabConfig {
            id,
            voters,
            election_resend_ms: 100,
            election_finalize_ms: 30,
            init_timeout_ms: 2_000,
            sync_timeout_ms: 1_000,
            ping_interval_ms: 100,
            history_txns_max: 50_000,
            #[cfg(test)]
            broken_commit_without_quorum: false,
        }
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// A peer's claim in an election: who should lead, judged by that peer's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub leader: PeerId,
    pub epoch: u32,
    pub zxid: Zxid,
}

impl Proposal {
    fn rank(&self) -> (u32, Zxid, PeerId) {
        (self.epoch, self.zxid, self.leader)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteState {
    Looking,
    Following,
    Leading,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Fast leader election notification.
    Vote {
        round: u64,
        proposal: Proposal,
        state: VoteState,
    },
    FollowerInfo {
        accepted_epoch: u32,
        last_zxid: Zxid,
    },
    NewEpoch {
        epoch: u32,
    },
    AckEpoch {
        epoch: u32,
        current_epoch: u32,
        last_zxid: Zxid,
        /// The follower had already accepted this epoch before (from a leader it cannot tell
        /// apart, e.g. before a restart): it may join, but does not count towards establishing
        /// the epoch (ZooKeeper acks such an epoch with -1 for the same reason).
        repeated: bool,
    },
    /// Answer to FOLLOWERINFO from a peer that is not leading: look again, do not wait.
    NotLeading,
    /// The leader's committed state; a DIFF from its zxid follows.
    Snap {
        epoch: u32,
        #[serde(with = "tree_bytes")]
        tree: Box<DataTree>,
    },
    /// Transactions following `prev`.
    Diff {
        epoch: u32,
        prev: Zxid,
        txns: Vec<Txn>,
    },
    /// The follower has everything up to `last_zxid` once the sync before it is logged.
    NewLeader {
        epoch: u32,
        last_zxid: Zxid,
    },
    AckNewLeader {
        epoch: u32,
    },
    UpToDate {
        epoch: u32,
        committed: Zxid,
    },
    Propose {
        epoch: u32,
        prev: Zxid,
        txn: Txn,
    },
    /// Every proposal up to `zxid` is durable at the sender.
    Ack {
        epoch: u32,
        zxid: Zxid,
    },
    /// Every proposal up to `zxid` is committed.
    Commit {
        epoch: u32,
        zxid: Zxid,
    },
    Forward {
        epoch: u32,
        sub: Submission,
    },
    /// The sync is answered once the follower has applied up to `zxid`.
    SyncDone {
        epoch: u32,
        session: SessionId,
        xid: i64,
        zxid: Zxid,
    },
    Ping {
        epoch: u32,
        committed: Zxid,
    },
    PingAck {
        epoch: u32,
        touches: Vec<SessionId>,
    },
}

#[derive(Clone, Debug)]
pub enum ZabInput {
    Message {
        from: PeerId,
        msg: PeerMsg,
    },
    /// Everything persisted up to `upto` is fsynced. `installs` is how many `InstallSnapshot`s
    /// the storage had carried out when it said so; older reports are ignored.
    Durable {
        upto: Zxid,
        installs: u64,
    },
    /// A write or sync from this server's clients.
    Submit(Submission),
    /// Sessions this server's clients were heard from (for the leader).
    LocalTouches(Vec<SessionId>),
    /// The transport lost its connection to a peer.
    PeerDown(PeerId),
    Tick,
}

#[derive(Clone, Debug)]
pub enum ZabAction {
    Send {
        to: PeerId,
        msg: PeerMsg,
    },
    /// Append to the log; `Durable` reports it.
    Persist(Txn),
    /// Make these durable before carrying out any later action.
    PersistEpochs {
        accepted: u32,
        current: u32,
    },
    /// Write `tree` as a durable snapshot, drop every logged transaction after its zxid, then give
    /// the tree to the server. Counts as one install for `Durable`.
    InstallSnapshot(Box<DataTree>),
    /// Send this peer our committed state (the server's tree), as a `Snap` message.
    SendSnapshot {
        to: PeerId,
        epoch: u32,
    },
    /// Apply, in order.
    Commit(Txn),
    Synced {
        session: SessionId,
        xid: i64,
    },
    SetRole(Role),
    /// Sessions followers heard from, for the server's expiry.
    Touches(Vec<SessionId>),
}

/// A peer's role as operators see it: `Leading` and `Following` only once the epoch is
/// established (broadcast phase); discovery and sync count as `Looking`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZabRole {
    Looking,
    Following,
    Leading,
}

impl ZabRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ZabRole::Looking => "looking",
            ZabRole::Following => "following",
            ZabRole::Leading => "leading",
        }
    }
}

/// One other voter as this peer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub id: PeerId,
    /// How long since this peer last heard from it; None: not in contact (a follower hears only
    /// from its leader, a looking peer from nobody in particular).
    pub heard_ms_ago: Option<u64>,
    /// It is in broadcast with us: our synced follower (we lead) or our established leader.
    pub synced: bool,
    /// While looking: whom its vote in our round names.
    pub voted_for: Option<PeerId>,
}

/// [`ZabPeer::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZabStatus {
    pub id: PeerId,
    pub role: ZabRole,
    /// `election`, `discovery`, `epoch`, `sync` or `broadcast`.
    pub phase: &'static str,
    pub leader: Option<PeerId>,
    pub accepted_epoch: u32,
    pub current_epoch: u32,
    pub last_logged: Zxid,
    pub durable: Zxid,
    pub committed: Zxid,
    pub peers: Vec<PeerView>,
}

/// What the peer recovered from its disk.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    pub accepted_epoch: u32,
    pub current_epoch: u32,
    /// zxid of the snapshot the server's tree was loaded from (everything up to it is committed).
    pub snapshot_zxid: Zxid,
    /// Logged transactions after the snapshot, in order; not known to be committed.
    pub log: Vec<Txn>,
}

#[derive(Debug)]
struct Election {
    round: u64,
    proposal: Proposal,
    /// Votes of this round, by voter.
    votes: BTreeMap<PeerId, Proposal>,
    /// What peers outside the election (following or leading) told us.
    settled: BTreeMap<PeerId, (Proposal, VoteState)>,
    /// When a quorum first agreed on `proposal`.
    agreed_at: Option<u64>,
    last_sent_ms: u64,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum FollowerPhase {
    /// Sent FOLLOWERINFO, waiting for NEWEPOCH.
    Discovery,
    /// Acknowledged the epoch; receiving the sync.
    Syncing,
    Broadcast,
}

#[derive(Debug)]
struct Following {
    leader: PeerId,
    epoch: Option<u32>,
    phase: FollowerPhase,
    started_ms: u64,
    last_heard_ms: u64,
    last_info_ms: u64,
    /// NEWLEADER waiting to be acknowledged once the log is durable up to this zxid.
    ack_new_leader_at: Option<Zxid>,
    acked_new_leader: bool,
    /// The leader has every proposal up to here durable (its `Ack`s to us, in broadcast).
    leader_durable: Zxid,
    /// Local sessions heard from, sent with the next PINGACK.
    touches: BTreeSet<SessionId>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum LeaderPhase {
    /// Collecting FOLLOWERINFO from a quorum.
    Discovery,
    /// NEWEPOCH sent; collecting ACKEPOCH from a quorum.
    EpochAcks,
    /// Followers synced; collecting ACK of NEWLEADER from a quorum.
    Syncing,
    Broadcast,
}

#[derive(Debug, Default, Clone)]
struct FollowerView {
    accepted_epoch: u32,
    last_zxid: Zxid,
    acked_epoch: bool,
    /// Its epoch acknowledgement was a repeated one: it does not count towards the quorum.
    repeated_ack: bool,
    /// Sent its sync and NEWLEADER; proposals go to it from then on.
    synced: bool,
    acked_new_leader: bool,
    /// Durable up to here (meaningful once it acknowledged NEWLEADER).
    acked: Zxid,
    last_heard_ms: u64,
}

#[derive(Debug)]
struct Leading {
    /// The epoch being established (set once a discovery quorum answered).
    epoch: u32,
    phase: LeaderPhase,
    started_ms: u64,
    followers: BTreeMap<PeerId, FollowerView>,
    /// Leader's own history end when NEWLEADER went out; committed once a quorum acks it.
    new_leader_zxid: Zxid,
    next_counter: u32,
    last_ping_ms: u64,
    /// Syncs waiting for the commit of everything proposed before them.
    pending_syncs: VecDeque<(Zxid, Submission)>,
    /// Highest client xid proposed per session in this epoch: a submission that arrives twice
    /// (a duplicated forward) is proposed once. Client xids grow per session.
    last_xid: BTreeMap<SessionId, i64>,
}

#[derive(Debug)]
enum State {
    Looking(Election),
    Following(Following),
    Leading(Leading),
}

pub struct ZabPeer {
    config: ZabConfig,
    accepted_epoch: u32,
    current_epoch: u32,
    /// The leader whose NEWEPOCH equal to `accepted_epoch` we acknowledged (not durable: after a
    /// restart only a greater epoch is acknowledged).
    accepted_from: Option<PeerId>,
    /// Logged transactions after `history_base`, in zxid order: committed ones (a bounded window)
    /// and every uncommitted one.
    history: VecDeque<Txn>,
    history_base: Zxid,
    /// Last zxid handed to the log (equals the last of `history`, or `history_base`).
    last_logged: Zxid,
    /// fsynced up to here.
    durable: Zxid,
    installs: u64,
    /// Applied (handed out as `Commit`) up to here.
    committed: Zxid,
    state: State,
    round: u64,
}

impl ZabPeer {
    pub fn new(
        config: ZabConfig,
        recovered: Durable,
        now: Now,
        out: &mut Vec<ZabAction>,
    ) -> ZabPeer {
        assert!(
            config.voters.contains(&config.id),
            "a peer votes in its own ensemble"
        );
        let history: VecDeque<Txn> = recovered.log.into();
        let last_logged = history.back().map_or(recovered.snapshot_zxid, |t| t.zxid);
        let mut peer = ZabPeer {
            accepted_epoch: recovered.accepted_epoch.max(recovered.current_epoch),
            current_epoch: recovered.current_epoch,
            accepted_from: None,
            history,
            history_base: recovered.snapshot_zxid,
            last_logged,
            durable: last_logged,
            installs: 0,
            committed: recovered.snapshot_zxid,
            state: State::Looking(Election {
                round: 0,
                proposal: Proposal {
                    leader: config.id,
                    epoch: 0,
                    zxid: Zxid::ZERO,
                },
                votes: BTreeMap::new(),
                settled: BTreeMap::new(),
                agreed_at: None,
                last_sent_ms: 0,
            }),
            round: 0,
            config,
        };
        peer.look(now, out);
        peer
    }

    pub fn id(&self) -> PeerId {
        self.config.id
    }

    pub fn is_leading(&self) -> bool {
        matches!(&self.state, State::Leading(l) if l.phase == LeaderPhase::Broadcast)
    }

    pub fn is_broadcasting(&self) -> bool {
        match &self.state {
            State::Leading(l) => l.phase == LeaderPhase::Broadcast,
            State::Following(f) => f.phase == FollowerPhase::Broadcast,
            State::Looking(_) => false,
        }
    }

    /// The leader this peer follows or is, once established.
    pub fn leader(&self) -> Option<PeerId> {
        match &self.state {
            State::Leading(l) if l.phase == LeaderPhase::Broadcast => Some(self.config.id),
            State::Following(f) if f.phase == FollowerPhase::Broadcast => Some(f.leader),
            _ => None,
        }
    }

    pub fn current_epoch(&self) -> u32 {
        self.current_epoch
    }

    pub fn committed(&self) -> Zxid {
        self.committed
    }

    pub fn last_logged(&self) -> Zxid {
        self.last_logged
    }

    /// This peer's view of the ensemble right now, for operators (`Cluster.Status`). Cheap: no
    /// history is copied.
    pub fn status(&self, now: Now) -> ZabStatus {
        let ago = |heard_ms: u64| Some(now.mono_ms.saturating_sub(heard_ms));
        let (role, phase, peers) = match &self.state {
            State::Looking(e) => {
                let peers = self
                    .others()
                    .into_iter()
                    .map(|id| PeerView {
                        id,
                        heard_ms_ago: None,
                        synced: false,
                        voted_for: e.votes.get(&id).map(|p| p.leader),
                    })
                    .collect();
                (ZabRole::Looking, "election", peers)
            }
            State::Following(f) => {
                let phase = match f.phase {
                    FollowerPhase::Discovery => "discovery",
                    FollowerPhase::Syncing => "sync",
                    FollowerPhase::Broadcast => "broadcast",
                };
                let broadcasting = f.phase == FollowerPhase::Broadcast;
                let peers = self
                    .others()
                    .into_iter()
                    .map(|id| PeerView {
                        id,
                        // A follower hears only from its leader.
                        heard_ms_ago: (id == f.leader).then(|| ago(f.last_heard_ms)).flatten(),
                        synced: id == f.leader && broadcasting,
                        voted_for: None,
                    })
                    .collect();
                let role = if broadcasting {
                    ZabRole::Following
                } else {
                    ZabRole::Looking
                };
                (role, phase, peers)
            }
            State::Leading(l) => {
                let phase = match l.phase {
                    LeaderPhase::Discovery => "discovery",
                    LeaderPhase::EpochAcks => "epoch",
                    LeaderPhase::Syncing => "sync",
                    LeaderPhase::Broadcast => "broadcast",
                };
                let peers = self
                    .others()
                    .into_iter()
                    .map(|id| {
                        let view = l.followers.get(&id);
                        PeerView {
                            id,
                            heard_ms_ago: view.and_then(|v| ago(v.last_heard_ms)),
                            synced: view.is_some_and(|v| v.synced && v.acked_new_leader),
                            voted_for: None,
                        }
                    })
                    .collect();
                let role = if l.phase == LeaderPhase::Broadcast {
                    ZabRole::Leading
                } else {
                    ZabRole::Looking
                };
                (role, phase, peers)
            }
        };
        ZabStatus {
            id: self.config.id,
            role,
            phase,
            leader: self.leader(),
            accepted_epoch: self.accepted_epoch,
            current_epoch: self.current_epoch,
            last_logged: self.last_logged,
            durable: self.durable,
            committed: self.committed,
            peers,
        }
    }

    fn my_proposal(&self) -> Proposal {
        Proposal {
            leader: self.config.id,
            epoch: self.current_epoch,
            zxid: self.last_logged,
        }
    }

    fn others(&self) -> Vec<PeerId> {
        self.config
            .voters
            .iter()
            .copied()
            .filter(|&p| p != self.config.id)
            .collect()
    }

    /// Starts a new election round.
    fn look(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        if !matches!(self.state, State::Looking(_)) {
            info!(
                peer = self.config.id,
                epoch = self.current_epoch,
                "looking for a leader"
            );
        }
        out.push(ZabAction::SetRole(Role::NotServing));
        self.round += 1;
        self.state = State::Looking(Election {
            round: self.round,
            proposal: self.my_proposal(),
            votes: BTreeMap::new(),
            settled: BTreeMap::new(),
            agreed_at: None,
            last_sent_ms: now.mono_ms,
        });
        if let State::Looking(e) = &mut self.state {
            e.votes.insert(self.config.id, e.proposal);
        }
        self.send_vote_to_all(out);
        self.check_election(now, out);
    }

    fn send_vote_to_all(&mut self, out: &mut Vec<ZabAction>) {
        let State::Looking(e) = &self.state else {
            return;
        };
        let msg = PeerMsg::Vote {
            round: e.round,
            proposal: e.proposal,
            state: VoteState::Looking,
        };
        for to in self.others() {
            out.push(ZabAction::Send {
                to,
                msg: msg.clone(),
            });
        }
    }

    /// `prep` is the leader's preparation of writes (`prep::Prep`): while leading, every
    /// transaction passes through it, in zxid order, between getting its zxid and being proposed.
    pub fn step(&mut self, now: Now, input: ZabInput, prep: &mut Prep, out: &mut Vec<ZabAction>) {
        self.step_input(now, input, prep, out);
        // Every step of a debug build proves the state still makes sense (the simulation also
        // checks after every event); release builds skip the walk over the history.
        #[cfg(debug_assertions)]
        self.check_invariants();
    }

    fn step_input(&mut self, now: Now, input: ZabInput, prep: &mut Prep, out: &mut Vec<ZabAction>) {
        match input {
            ZabInput::Message { from, msg } => {
                if !self.config.voters.contains(&from) || from == self.config.id {
                    warn!(
                        peer = self.config.id,
                        from, "message from a peer outside the ensemble"
                    );
                    return;
                }
                self.on_message(now, from, msg, prep, out);
            }
            ZabInput::Durable { upto, installs } => {
                if installs == self.installs && upto > self.durable {
                    self.durable = upto.min(self.last_logged);
                    self.on_durable(now, out);
                }
            }
            ZabInput::Submit(sub) => self.on_submit(now, sub, prep, out),
            ZabInput::LocalTouches(sessions) => match &mut self.state {
                State::Following(f) => f.touches.extend(sessions),
                State::Leading(_) => out.push(ZabAction::Touches(sessions)),
                State::Looking(_) => {}
            },
            ZabInput::PeerDown(peer) => {
                if let State::Following(f) = &self.state
                    && f.leader == peer
                {
                    info!(
                        peer = self.config.id,
                        leader = peer,
                        "lost the connection to the leader"
                    );
                    self.look(now, out);
                }
            }
            ZabInput::Tick => self.tick(now, out),
        }
    }

    fn on_message(
        &mut self,
        now: Now,
        from: PeerId,
        msg: PeerMsg,
        prep: &mut Prep,
        out: &mut Vec<ZabAction>,
    ) {
        match msg {
            PeerMsg::Vote {
                round,
                proposal,
                state,
            } => self.on_vote(now, from, round, proposal, state, out),
            PeerMsg::FollowerInfo {
                accepted_epoch,
                last_zxid,
            } => self.on_follower_info(now, from, accepted_epoch, last_zxid, out),
            PeerMsg::NewEpoch { epoch } => self.on_new_epoch(now, from, epoch, out),
            PeerMsg::AckEpoch {
                epoch,
                current_epoch,
                last_zxid,
                repeated,
            } => self.on_ack_epoch(now, from, epoch, (current_epoch, last_zxid), repeated, out),
            PeerMsg::NotLeading => {
                if let State::Following(f) = &self.state
                    && f.leader == from
                    && f.phase == FollowerPhase::Discovery
                {
                    debug!(
                        peer = self.config.id,
                        leader = from,
                        "the peer we chose does not lead"
                    );
                    self.look(now, out);
                }
            }
            PeerMsg::Snap { epoch, tree } => {
                // Only before NEWLEADER: installing drops logged transactions, which must never
                // happen to ones we have acknowledged.
                let before_new_leader = matches!(&self.state, State::Following(f)
                    if f.phase == FollowerPhase::Syncing && f.ack_new_leader_at.is_none() && !f.acked_new_leader);
                if before_new_leader
                    && self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing)
                {
                    self.install(tree, out);
                }
            }
            PeerMsg::Diff { epoch, prev, txns } => {
                if self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing) {
                    self.append(prev, txns, now, out);
                }
            }
            PeerMsg::NewLeader { epoch, last_zxid } => {
                let syncing = matches!(&self.state, State::Following(f) if f.phase == FollowerPhase::Syncing && !f.acked_new_leader);
                if syncing && self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing) {
                    if self.last_logged != last_zxid {
                        // The sync before NEWLEADER did not all arrive: we must not take the new
                        // epoch as ours without the history that goes with it.
                        warn!(peer = self.config.id, have = %self.last_logged, leader_has = %last_zxid, "incomplete sync; resyncing");
                        return self.look(now, out);
                    }
                    if let State::Following(f) = &mut self.state {
                        f.ack_new_leader_at = Some(last_zxid);
                    }
                    self.on_durable(now, out);
                }
            }
            PeerMsg::UpToDate { epoch, committed } => {
                let acked = matches!(&self.state, State::Following(f) if f.acked_new_leader);
                if acked && self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing) {
                    if let State::Following(f) = &mut self.state {
                        f.phase = FollowerPhase::Broadcast;
                        info!(peer = self.config.id, leader = f.leader, epoch, "following");
                    }
                    self.commit_upto(committed, out);
                    out.push(ZabAction::SetRole(Role::Following));
                }
            }
            PeerMsg::Propose { epoch, prev, txn } => {
                if self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing) {
                    self.append(prev, vec![txn], now, out);
                }
            }
            PeerMsg::Commit { epoch, zxid } => {
                if self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing) {
                    self.follower_commit(now, zxid, out);
                }
            }
            PeerMsg::SyncDone {
                epoch,
                session,
                xid,
                zxid,
            } => {
                if self.heard_from_leader(now, from, epoch, FollowerPhase::Broadcast) {
                    if zxid > self.committed {
                        // Commits travel before the answer, so a miss means a lost message.
                        warn!(peer = self.config.id, need = %zxid, have = %self.committed, "sync answer ahead of our commits; resyncing");
                        return self.look(now, out);
                    }
                    out.push(ZabAction::Synced { session, xid });
                }
            }
            PeerMsg::Ping { epoch, committed } => {
                if self.heard_from_leader(now, from, epoch, FollowerPhase::Syncing) {
                    if !self.follower_commit(now, committed, out) {
                        return;
                    }
                    if let State::Following(f) = &mut self.state {
                        let touches = std::mem::take(&mut f.touches).into_iter().collect();
                        out.push(ZabAction::Send {
                            to: from,
                            msg: PeerMsg::PingAck { epoch, touches },
                        });
                    }
                }
            }
            PeerMsg::AckNewLeader { epoch } => {
                let committed = self.committed;
                if let Some(view) = self.my_follower(now, from, epoch)
                    && view.synced
                    && !view.acked_new_leader
                {
                    view.acked_new_leader = true;
                    view.acked = view.acked.max(view.last_zxid);
                    if matches!(&self.state, State::Leading(l) if l.phase == LeaderPhase::Broadcast)
                    {
                        // A follower that joined an established leader is up to date now.
                        out.push(ZabAction::Send {
                            to: from,
                            msg: PeerMsg::UpToDate { epoch, committed },
                        });
                    }
                    self.check_established(now, out);
                    self.advance_commit(out);
                }
            }
            PeerMsg::Ack { epoch, zxid } => {
                if matches!(self.state, State::Following(_)) {
                    // The leader's own durability, so we may commit without its COMMIT.
                    if self.heard_from_leader(now, from, epoch, FollowerPhase::Broadcast)
                        && let State::Following(f) = &mut self.state
                    {
                        f.leader_durable = f.leader_durable.max(zxid);
                        self.commit_known_durable(out);
                    }
                } else if let Some(view) = self.my_follower(now, from, epoch)
                    && view.acked_new_leader
                {
                    view.acked = view.acked.max(zxid);
                    self.advance_commit(out);
                }
            }
            PeerMsg::PingAck { epoch, touches } => {
                if self.my_follower(now, from, epoch).is_some() && !touches.is_empty() {
                    out.push(ZabAction::Touches(touches));
                }
            }
            PeerMsg::Forward { epoch, sub } => {
                if self.my_follower(now, from, epoch).is_some() {
                    self.on_submit(now, sub, prep, out);
                }
            }
        }
    }

    /// True if `from` is the leader we follow in `epoch` and we are at least in `phase`; refreshes
    /// the leader's liveness.
    fn heard_from_leader(
        &mut self,
        now: Now,
        from: PeerId,
        epoch: u32,
        phase: FollowerPhase,
    ) -> bool {
        let State::Following(f) = &mut self.state else {
            return false;
        };
        if f.leader != from || f.epoch != Some(epoch) {
            return false;
        }
        let ok = match phase {
            FollowerPhase::Discovery => true,
            FollowerPhase::Syncing => f.phase != FollowerPhase::Discovery,
            FollowerPhase::Broadcast => f.phase == FollowerPhase::Broadcast,
        };
        if ok {
            f.last_heard_ms = now.mono_ms;
        }
        ok
    }

    /// The view of a synced-or-syncing follower `from` of our current epoch; refreshes liveness.
    fn my_follower(&mut self, now: Now, from: PeerId, epoch: u32) -> Option<&mut FollowerView> {
        let State::Leading(l) = &mut self.state else {
            return None;
        };
        if l.epoch != epoch || l.phase == LeaderPhase::Discovery {
            return None;
        }
        let view = l.followers.get_mut(&from)?;
        view.last_heard_ms = now.mono_ms;
        Some(view)
    }

    fn on_vote(
        &mut self,
        now: Now,
        from: PeerId,
        round: u64,
        proposal: Proposal,
        state: VoteState,
        out: &mut Vec<ZabAction>,
    ) {
        let my_state = match &self.state {
            State::Looking(_) => VoteState::Looking,
            State::Following(_) => VoteState::Following,
            State::Leading(_) => VoteState::Leading,
        };
        if my_state != VoteState::Looking {
            // Tell a looking peer who leads, so it can join.
            if state == VoteState::Looking {
                let leader = match &self.state {
                    State::Following(f) => f.leader,
                    _ => self.config.id,
                };
                let claim = Proposal {
                    leader,
                    epoch: self.current_epoch,
                    zxid: self.last_logged,
                };
                out.push(ZabAction::Send {
                    to: from,
                    msg: PeerMsg::Vote {
                        round: self.round,
                        proposal: claim,
                        state: my_state,
                    },
                });
            }
            return;
        }
        let me = self.config.id;
        let mine = self.my_proposal();
        let State::Looking(e) = &mut self.state else {
            return;
        };
        if state == VoteState::Looking {
            if round > e.round {
                e.round = round;
                self.round = self.round.max(round);
                e.votes.clear();
                e.agreed_at = None;
                e.proposal = if proposal.rank() > mine.rank() {
                    proposal
                } else {
                    mine
                };
                e.votes.insert(me, e.proposal);
                e.votes.insert(from, proposal);
                self.send_vote_to_all(out);
            } else if round < e.round {
                out.push(ZabAction::Send {
                    to: from,
                    msg: PeerMsg::Vote {
                        round: e.round,
                        proposal: e.proposal,
                        state: VoteState::Looking,
                    },
                });
                return;
            } else {
                e.votes.insert(from, proposal);
                if proposal.rank() > e.proposal.rank() {
                    e.proposal = proposal;
                    e.agreed_at = None;
                    e.votes.insert(me, proposal);
                    self.send_vote_to_all(out);
                }
            }
        } else {
            e.settled.insert(from, (proposal, state));
            if round == e.round {
                e.votes.insert(from, proposal);
            }
        }
        self.check_election(now, out);
    }

    fn check_election(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        let quorum = self.config.quorum();
        let voters = self.config.voters.len();
        let State::Looking(e) = &mut self.state else {
            return;
        };
        // Join an established leader: a quorum (us included) names it and it says it leads.
        let mut joined = None;
        for (&peer, &(p, state)) in &e.settled {
            if state == VoteState::Leading && p.leader == peer {
                let backers = e.settled.values().filter(|(q, _)| q.leader == peer).count() + 1;
                if backers >= quorum {
                    joined = Some(peer);
                }
            }
        }
        if let Some(leader) = joined {
            return self.follow(now, leader, out);
        }
        let agreeing = e
            .votes
            .values()
            .filter(|p| p.leader == e.proposal.leader)
            .count();
        if agreeing < quorum {
            e.agreed_at = None;
            return;
        }
        let agreed_at = *e.agreed_at.get_or_insert(now.mono_ms);
        let everyone =
            e.votes.len() >= voters && e.votes.values().all(|p| p.leader == e.proposal.leader);
        if !everyone && now.mono_ms < agreed_at + self.config.election_finalize_ms {
            return;
        }
        let leader = e.proposal.leader;
        if leader == self.config.id {
            self.lead(now, out);
        } else {
            self.follow(now, leader, out);
        }
    }

    fn follow(&mut self, now: Now, leader: PeerId, out: &mut Vec<ZabAction>) {
        debug!(peer = self.config.id, leader, "following, discovery");
        self.state = State::Following(Following {
            leader,
            epoch: None,
            phase: FollowerPhase::Discovery,
            started_ms: now.mono_ms,
            last_heard_ms: now.mono_ms,
            last_info_ms: now.mono_ms,
            ack_new_leader_at: None,
            acked_new_leader: false,
            leader_durable: Zxid::ZERO,
            touches: BTreeSet::new(),
        });
        out.push(ZabAction::Send {
            to: leader,
            msg: PeerMsg::FollowerInfo {
                accepted_epoch: self.accepted_epoch,
                last_zxid: self.last_logged,
            },
        });
    }

    fn lead(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        debug!(peer = self.config.id, "leading, discovery");
        self.state = State::Leading(Leading {
            epoch: 0,
            phase: LeaderPhase::Discovery,
            started_ms: now.mono_ms,
            followers: BTreeMap::new(),
            new_leader_zxid: Zxid::ZERO,
            next_counter: 1,
            last_ping_ms: now.mono_ms,
            pending_syncs: VecDeque::new(),
            last_xid: BTreeMap::new(),
        });
        // Tell everyone, so followers still looking join quickly.
        let claim = Proposal {
            leader: self.config.id,
            epoch: self.current_epoch,
            zxid: self.last_logged,
        };
        for to in self.others() {
            out.push(ZabAction::Send {
                to,
                msg: PeerMsg::Vote {
                    round: self.round,
                    proposal: claim,
                    state: VoteState::Leading,
                },
            });
        }
        self.check_discovery(now, out);
    }

    fn on_follower_info(
        &mut self,
        now: Now,
        from: PeerId,
        accepted_epoch: u32,
        last_zxid: Zxid,
        out: &mut Vec<ZabAction>,
    ) {
        let State::Leading(l) = &mut self.state else {
            out.push(ZabAction::Send {
                to: from,
                msg: PeerMsg::NotLeading,
            });
            return;
        };
        let view = l.followers.entry(from).or_default();
        view.accepted_epoch = accepted_epoch;
        view.last_zxid = last_zxid;
        view.last_heard_ms = now.mono_ms;
        // A follower (re)joining starts over: it is synced again from scratch.
        view.acked_epoch = false;
        view.repeated_ack = false;
        view.synced = false;
        view.acked_new_leader = false;
        view.acked = Zxid::ZERO;
        if l.phase == LeaderPhase::Discovery {
            self.check_discovery(now, out);
        } else {
            let epoch = l.epoch;
            out.push(ZabAction::Send {
                to: from,
                msg: PeerMsg::NewEpoch { epoch },
            });
        }
    }

    fn check_discovery(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        let quorum = self.config.quorum();
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.phase != LeaderPhase::Discovery || l.followers.len() + 1 < quorum {
            return;
        }
        let max_accepted = l
            .followers
            .values()
            .map(|v| v.accepted_epoch)
            .max()
            .unwrap_or(0)
            .max(self.accepted_epoch);
        let epoch = max_accepted.checked_add(1).expect("epoch space exhausted");
        l.epoch = epoch;
        l.phase = LeaderPhase::EpochAcks;
        self.accepted_epoch = epoch;
        self.accepted_from = Some(self.config.id);
        out.push(ZabAction::PersistEpochs {
            accepted: epoch,
            current: self.current_epoch,
        });
        for &to in l.followers.keys() {
            out.push(ZabAction::Send {
                to,
                msg: PeerMsg::NewEpoch { epoch },
            });
        }
        self.check_epoch_acks(now, out);
    }

    fn on_new_epoch(&mut self, now: Now, from: PeerId, epoch: u32, out: &mut Vec<ZabAction>) {
        let State::Following(f) = &mut self.state else {
            return;
        };
        if f.leader != from || f.phase != FollowerPhase::Discovery {
            return;
        }
        // Primary uniqueness: an epoch counts towards establishing a leader only the first time we
        // acknowledge it; a repeated one (after a restart, or a leader we cannot tell apart) is
        // acknowledged as such and only lets us join.
        let repeated = epoch == self.accepted_epoch && self.accepted_from != Some(from);
        if epoch < self.accepted_epoch {
            info!(
                peer = self.config.id,
                leader = from,
                epoch,
                accepted = self.accepted_epoch,
                "refusing a stale epoch"
            );
            return self.look(now, out);
        }
        if epoch > self.accepted_epoch {
            self.accepted_epoch = epoch;
            out.push(ZabAction::PersistEpochs {
                accepted: epoch,
                current: self.current_epoch,
            });
        }
        self.accepted_from = Some(from);
        f.epoch = Some(epoch);
        f.phase = FollowerPhase::Syncing;
        f.last_heard_ms = now.mono_ms;
        out.push(ZabAction::Send {
            to: from,
            msg: PeerMsg::AckEpoch {
                epoch,
                current_epoch: self.current_epoch,
                last_zxid: self.last_logged,
                repeated,
            },
        });
    }

    fn on_ack_epoch(
        &mut self,
        now: Now,
        from: PeerId,
        epoch: u32,
        theirs: (u32, Zxid),
        repeated: bool,
        out: &mut Vec<ZabAction>,
    ) {
        let mine = (self.current_epoch, self.last_logged);
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.epoch != epoch || l.phase == LeaderPhase::Discovery {
            return;
        }
        let Some(view) = l.followers.get_mut(&from) else {
            return;
        };
        if theirs > mine {
            // Integrity of history: a follower knows more than we do; let it lead instead.
            warn!(
                peer = self.config.id,
                follower = from,
                ?mine,
                ?theirs,
                "a follower is ahead; giving up leadership"
            );
            return self.look(now, out);
        }
        view.acked_epoch = true;
        view.repeated_ack = repeated;
        view.last_zxid = theirs.1;
        view.last_heard_ms = now.mono_ms;
        match l.phase {
            LeaderPhase::EpochAcks => self.check_epoch_acks(now, out),
            LeaderPhase::Syncing | LeaderPhase::Broadcast => self.sync_follower(from, out),
            LeaderPhase::Discovery => {}
        }
    }

    /// Leader: once a quorum acknowledged the epoch, sync them all.
    fn check_epoch_acks(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        let quorum = self.config.quorum();
        let last_logged = self.last_logged;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.phase != LeaderPhase::EpochAcks {
            return;
        }
        let acked = l
            .followers
            .values()
            .filter(|v| v.acked_epoch && !v.repeated_ack)
            .count()
            + 1;
        if acked < quorum {
            return;
        }
        l.phase = LeaderPhase::Syncing;
        l.new_leader_zxid = last_logged;
        let ready: Vec<PeerId> = l
            .followers
            .iter()
            .filter(|(_, v)| v.acked_epoch)
            .map(|(&p, _)| p)
            .collect();
        for p in ready {
            self.sync_follower(p, out);
        }
        self.check_established(now, out);
    }

    /// Sends `to` what it lacks of our history (DIFF, or SNAP + DIFF), then NEWLEADER. From now
    /// on it gets every proposal.
    fn sync_follower(&mut self, to: PeerId, out: &mut Vec<ZabAction>) {
        let last_logged = self.last_logged;
        let committed = self.committed;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        let epoch = l.epoch;
        let Some(view) = l.followers.get_mut(&to) else {
            return;
        };
        let theirs = view.last_zxid;
        let in_history = theirs == self.history_base
            || self
                .history
                .binary_search_by_key(&theirs, |t| t.zxid)
                .is_ok();
        let prev = if theirs <= last_logged && in_history {
            theirs
        } else {
            out.push(ZabAction::SendSnapshot { to, epoch });
            committed
        };
        let start = self.history.partition_point(|t| t.zxid <= prev);
        let txns: Vec<Txn> = self.history.range(start..).cloned().collect();
        debug!(peer = self.config.id, follower = to, %theirs, %prev, diff = txns.len(), "syncing a follower");
        out.push(ZabAction::Send {
            to,
            msg: PeerMsg::Diff { epoch, prev, txns },
        });
        out.push(ZabAction::Send {
            to,
            msg: PeerMsg::NewLeader {
                epoch,
                last_zxid: last_logged,
            },
        });
        view.synced = true;
        view.last_zxid = last_logged;
        if l.phase == LeaderPhase::Broadcast {
            out.push(ZabAction::Send {
                to,
                msg: PeerMsg::Commit {
                    epoch,
                    zxid: committed,
                },
            });
        }
    }

    /// Leader: once a quorum acknowledged NEWLEADER, the whole history is committed.
    fn check_established(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        let quorum = self.config.quorum();
        let durable = self.durable;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        if l.phase != LeaderPhase::Syncing || durable < l.new_leader_zxid {
            return;
        }
        let acked = l.followers.values().filter(|v| v.acked_new_leader).count() + 1;
        if acked < quorum {
            return;
        }
        let epoch = l.epoch;
        l.phase = LeaderPhase::Broadcast;
        l.last_ping_ms = now.mono_ms;
        let upto = l.new_leader_zxid;
        for v in l.followers.values_mut() {
            v.last_heard_ms = now.mono_ms;
        }
        let ready: Vec<PeerId> = l
            .followers
            .iter()
            .filter(|(_, v)| v.acked_new_leader)
            .map(|(&p, _)| p)
            .collect();
        self.current_epoch = epoch;
        out.push(ZabAction::PersistEpochs {
            accepted: self.accepted_epoch,
            current: epoch,
        });
        self.commit_upto(upto, out);
        info!(peer = self.config.id, epoch, last_zxid = %upto, followers = ready.len(), "leading");
        for to in ready {
            out.push(ZabAction::Send {
                to,
                msg: PeerMsg::UpToDate {
                    epoch,
                    committed: upto,
                },
            });
        }
        out.push(ZabAction::SetRole(Role::Leading));
    }

    fn on_durable(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        let durable = self.durable;
        match &mut self.state {
            State::Following(f) => {
                if let Some(at) = f.ack_new_leader_at
                    && durable >= at
                    && self.last_logged >= at
                {
                    f.ack_new_leader_at = None;
                    f.acked_new_leader = true;
                    let epoch = f.epoch.expect("NEWLEADER comes after NEWEPOCH");
                    // The leader's history is durable here: only now is its epoch ours (a peer
                    // claiming an epoch must hold that epoch's history, or elections go wrong).
                    if self.current_epoch != epoch {
                        self.current_epoch = epoch;
                        out.push(ZabAction::PersistEpochs {
                            accepted: self.accepted_epoch,
                            current: epoch,
                        });
                    }
                    out.push(ZabAction::Send {
                        to: f.leader,
                        msg: PeerMsg::AckNewLeader { epoch },
                    });
                }
                if f.acked_new_leader && f.ack_new_leader_at.is_none() {
                    let epoch = f.epoch.expect("acked NEWLEADER");
                    out.push(ZabAction::Send {
                        to: f.leader,
                        msg: PeerMsg::Ack {
                            epoch,
                            zxid: durable,
                        },
                    });
                    self.commit_known_durable(out);
                }
            }
            State::Leading(l) => match l.phase {
                LeaderPhase::Syncing => self.check_established(now, out),
                LeaderPhase::Broadcast => {
                    self.advance_commit(out);
                    self.tell_followers_durable(out);
                }
                _ => {}
            },
            State::Looking(_) => {}
        }
    }

    /// Follower: append `txns`, which must follow `prev`; a gap or a conflict means resync.
    fn append(&mut self, prev: Zxid, txns: Vec<Txn>, now: Now, out: &mut Vec<ZabAction>) {
        let mut prev = prev;
        for txn in txns {
            if txn.zxid <= self.last_logged {
                // A duplicate of something we have (same zxid, same leader's history).
                prev = txn.zxid;
                continue;
            }
            if prev != self.last_logged {
                warn!(peer = self.config.id, %prev, last = %self.last_logged, "gap in the leader's stream; resyncing");
                return self.look(now, out);
            }
            prev = txn.zxid;
            self.last_logged = txn.zxid;
            out.push(ZabAction::Persist(txn.clone()));
            self.history.push_back(txn);
        }
    }

    fn install(&mut self, tree: Box<DataTree>, out: &mut Vec<ZabAction>) {
        let zxid = tree.last_applied();
        info!(peer = self.config.id, %zxid, "installing the leader's snapshot");
        self.history.clear();
        self.history_base = zxid;
        self.last_logged = zxid;
        self.committed = zxid;
        self.durable = Zxid::ZERO;
        self.installs += 1;
        out.push(ZabAction::InstallSnapshot(tree));
    }

    /// Follower: the leader says `zxid` is committed. Having less than that logged means a
    /// proposal was lost on the way: resync. False when it went back to election.
    fn follower_commit(&mut self, now: Now, zxid: Zxid, out: &mut Vec<ZabAction>) -> bool {
        if zxid > self.last_logged {
            warn!(peer = self.config.id, committed = %zxid, logged = %self.last_logged, "missing proposals; resyncing");
            self.look(now, out);
            return false;
        }
        self.commit_upto(zxid, out);
        true
    }

    /// Applies history up to `zxid` (as far as we have it).
    fn commit_upto(&mut self, zxid: Zxid, out: &mut Vec<ZabAction>) {
        let upto = zxid.min(self.last_logged);
        if upto <= self.committed {
            return;
        }
        // History is in zxid order: start right after the last commit.
        let start = self.history.partition_point(|t| t.zxid <= self.committed);
        for txn in self.history.range(start..) {
            if txn.zxid > upto {
                break;
            }
            out.push(ZabAction::Commit(txn.clone()));
        }
        self.committed = upto;
        // Keep a bounded window of committed history for DIFF syncs.
        while self.history.len() > self.config.history_txns_max
            && self
                .history
                .front()
                .is_some_and(|t| t.zxid <= self.committed)
        {
            if let Some(t) = self.history.pop_front() {
                self.history_base = t.zxid;
            }
        }
    }

    /// Leader in broadcast, after its own fsync: if that did not commit everything it has durable
    /// (a follower's ACK is still missing), tell the followers how far it is durable, so each can
    /// commit as soon as it has the proposals durable itself (see `commit_known_durable`).
    fn tell_followers_durable(&mut self, out: &mut Vec<ZabAction>) {
        let (durable, committed) = (self.durable, self.committed);
        let State::Leading(l) = &self.state else {
            return;
        };
        if l.phase != LeaderPhase::Broadcast || durable <= committed || self.config.quorum() > 2 {
            return;
        }
        for (&to, v) in &l.followers {
            if v.synced {
                out.push(ZabAction::Send {
                    to,
                    msg: PeerMsg::Ack {
                        epoch: l.epoch,
                        zxid: durable,
                    },
                });
            }
        }
    }

    /// Follower in broadcast: commits what it knows a quorum has durable without waiting for the
    /// leader's COMMIT. It knows two holders: itself (its log is a prefix of the leader's in this
    /// epoch, durable up to `durable`) and the leader (its `Ack`s). That is a quorum only in
    /// ensembles of up to three voters; larger ones wait for COMMIT as before. The transactions
    /// are committed either way (a quorum holds them durably in this epoch, so every later leader
    /// has them); this only learns it one network round trip sooner.
    fn commit_known_durable(&mut self, out: &mut Vec<ZabAction>) {
        let State::Following(f) = &self.state else {
            return;
        };
        if f.phase != FollowerPhase::Broadcast || self.config.quorum() > 2 {
            return;
        }
        let upto = self.durable.min(f.leader_durable);
        self.commit_upto(upto, out);
    }

    /// Leader in broadcast: commit whatever a quorum has durable.
    fn advance_commit(&mut self, out: &mut Vec<ZabAction>) {
        let quorum = self.config.quorum();
        let durable = self.durable;
        let State::Leading(l) = &self.state else {
            return;
        };
        if l.phase != LeaderPhase::Broadcast {
            return;
        }
        let mut acks: Vec<Zxid> = l
            .followers
            .values()
            .filter(|v| v.acked_new_leader)
            .map(|v| v.acked)
            .collect();
        acks.push(durable);
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&candidate) = acks.get(quorum - 1) else {
            return;
        };
        #[cfg(test)]
        let candidate = if self.config.broken_commit_without_quorum {
            durable
        } else {
            candidate
        };
        if candidate <= self.committed {
            return;
        }
        let epoch = l.epoch;
        let to: Vec<PeerId> = l
            .followers
            .iter()
            .filter(|(_, v)| v.synced)
            .map(|(&p, _)| p)
            .collect();
        self.commit_upto(candidate, out);
        let committed = self.committed;
        for p in to {
            out.push(ZabAction::Send {
                to: p,
                msg: PeerMsg::Commit {
                    epoch,
                    zxid: committed,
                },
            });
        }
        self.answer_syncs(out);
    }

    fn answer_syncs(&mut self, out: &mut Vec<ZabAction>) {
        let committed = self.committed;
        let me = self.config.id;
        let State::Leading(l) = &mut self.state else {
            return;
        };
        while l
            .pending_syncs
            .front()
            .is_some_and(|(at, _)| *at <= committed)
        {
            let (_, sub) = l.pending_syncs.pop_front().expect("front checked above");
            if sub.origin == me {
                out.push(ZabAction::Synced {
                    session: sub.session,
                    xid: sub.xid,
                });
            } else {
                out.push(ZabAction::Send {
                    to: sub.origin,
                    msg: PeerMsg::SyncDone {
                        epoch: l.epoch,
                        session: sub.session,
                        xid: sub.xid,
                        zxid: committed,
                    },
                });
            }
        }
    }

    fn on_submit(&mut self, now: Now, sub: Submission, prep: &mut Prep, out: &mut Vec<ZabAction>) {
        match &mut self.state {
            State::Following(f) if f.phase == FollowerPhase::Broadcast => {
                let epoch = f.epoch.expect("broadcast comes after NEWEPOCH");
                out.push(ZabAction::Send {
                    to: f.leader,
                    msg: PeerMsg::Forward { epoch, sub },
                });
            }
            State::Leading(l) if l.phase == LeaderPhase::Broadcast => {
                let kind = match sub.kind {
                    SubmitKind::Sync => {
                        l.pending_syncs.push_back((self.last_logged, sub));
                        return self.answer_syncs(out);
                    }
                    SubmitKind::Txn(kind) => kind,
                };
                match &kind {
                    TxnKind::Write(_) if sub.xid >= 0 => {
                        let last = l.last_xid.entry(sub.session).or_insert(-1);
                        if sub.xid <= *last {
                            debug!(peer = self.config.id, session = %sub.session, xid = sub.xid, "dropping a duplicate submission");
                            return;
                        }
                        *last = sub.xid;
                    }
                    TxnKind::CloseSession => {
                        l.last_xid.remove(&sub.session);
                    }
                    _ => {}
                }
                if l.next_counter == u32::MAX {
                    // The epoch's zxids are used up: a new election starts a new epoch.
                    warn!(
                        peer = self.config.id,
                        "zxid counter exhausted; starting a new epoch"
                    );
                    return self.look(now, out);
                }
                let counter = l.next_counter;
                l.next_counter += 1;
                let zxid = Zxid::new(l.epoch, counter);
                let session = if let TxnKind::CreateSession { .. } = kind {
                    SessionId(zxid.0)
                } else {
                    sub.session
                };
                let txn = Txn {
                    zxid,
                    time_ms: now.wall_ms,
                    origin: sub.origin,
                    session,
                    xid: sub.xid,
                    kind,
                };
                // ACLs are checked here, at the leader, before the write becomes a proposal.
                let txn = prep.prepare(txn, &sub.auth);
                let prev = self.last_logged;
                let epoch = l.epoch;
                for (&to, v) in &l.followers {
                    if v.synced {
                        out.push(ZabAction::Send {
                            to,
                            msg: PeerMsg::Propose {
                                epoch,
                                prev,
                                txn: txn.clone(),
                            },
                        });
                    }
                }
                self.last_logged = zxid;
                out.push(ZabAction::Persist(txn.clone()));
                self.history.push_back(txn);
            }
            // Not serving: the submitting server has (or will) close its clients' connections.
            _ => debug!(
                peer = self.config.id,
                "dropping a submission while not broadcasting"
            ),
        }
    }

    fn tick(&mut self, now: Now, out: &mut Vec<ZabAction>) {
        let quorum = self.config.quorum();
        let cfg = self.config.clone();
        match &mut self.state {
            State::Looking(e) => {
                if now.mono_ms >= e.last_sent_ms + cfg.election_resend_ms {
                    e.last_sent_ms = now.mono_ms;
                    self.send_vote_to_all(out);
                }
                self.check_election(now, out);
            }
            State::Following(f) => {
                if f.phase != FollowerPhase::Broadcast
                    && now.mono_ms >= f.started_ms + cfg.init_timeout_ms
                {
                    info!(
                        peer = cfg.id,
                        leader = f.leader,
                        "synchronization with the leader timed out"
                    );
                    return self.look(now, out);
                }
                if now.mono_ms >= f.last_heard_ms + cfg.sync_timeout_ms {
                    info!(peer = cfg.id, leader = f.leader, "the leader went silent");
                    return self.look(now, out);
                }
                if f.phase == FollowerPhase::Discovery
                    && now.mono_ms >= f.last_info_ms + cfg.election_resend_ms
                {
                    f.last_info_ms = now.mono_ms;
                    let msg = PeerMsg::FollowerInfo {
                        accepted_epoch: self.accepted_epoch,
                        last_zxid: self.last_logged,
                    };
                    out.push(ZabAction::Send { to: f.leader, msg });
                }
            }
            State::Leading(l) => {
                if l.phase != LeaderPhase::Broadcast {
                    if now.mono_ms >= l.started_ms + cfg.init_timeout_ms {
                        info!(peer = cfg.id, "establishing leadership timed out");
                        return self.look(now, out);
                    }
                    return;
                }
                let alive = l
                    .followers
                    .values()
                    .filter(|v| {
                        v.acked_new_leader && now.mono_ms < v.last_heard_ms + cfg.sync_timeout_ms
                    })
                    .count()
                    + 1;
                if alive < quorum {
                    warn!(
                        peer = cfg.id,
                        alive, quorum, "lost the quorum; stepping down"
                    );
                    return self.look(now, out);
                }
                if now.mono_ms >= l.last_ping_ms + cfg.ping_interval_ms {
                    l.last_ping_ms = now.mono_ms;
                    let msg = PeerMsg::Ping {
                        epoch: l.epoch,
                        committed: self.committed,
                    };
                    for (&to, v) in &l.followers {
                        if v.synced {
                            out.push(ZabAction::Send {
                                to,
                                msg: msg.clone(),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Asserts what holds between every two steps, TigerBeetle style: a failure is a bug in this
    /// file, never bad input (inputs that break a rule are refused where they arrive). Deliberately
    /// absent: `committed <= durable` (a follower commits what the leader says a quorum has, a
    /// leader what a quorum of followers has, before its own fsync ends) and any bound between
    /// the log's epochs and the recovered epochs (that is the disk's business).
    pub fn check_invariants(&self) {
        let me = self.config.id;
        assert!(
            self.accepted_epoch >= self.current_epoch,
            "peer {me}: accepted epoch {} is behind current epoch {}",
            self.accepted_epoch,
            self.current_epoch
        );
        assert!(
            self.history_base <= self.committed && self.committed <= self.last_logged,
            "peer {me}: history base {} <= committed {} <= last logged {}",
            self.history_base,
            self.committed,
            self.last_logged
        );
        assert!(
            self.durable <= self.last_logged,
            "peer {me}: durable {} is past last logged {}",
            self.durable,
            self.last_logged
        );
        assert_eq!(
            self.history.back().map_or(self.history_base, |t| t.zxid),
            self.last_logged,
            "peer {me}: last logged is the end of the history"
        );
        // Prefix: the history has no gap. Each zxid follows the one before it in the same epoch,
        // or is the first of a later epoch.
        let mut prev = self.history_base;
        for txn in &self.history {
            let z = txn.zxid;
            let follows = (z.epoch() == prev.epoch() && Some(z) == prev.next())
                || (z.epoch() > prev.epoch() && z.counter() == 1);
            assert!(follows, "peer {me}: history has {z} right after {prev}");
            prev = z;
        }
        match &self.state {
            State::Looking(e) => {
                assert_eq!(e.round, self.round, "peer {me}: the election is this round");
                assert!(
                    e.votes.get(&me) == Some(&e.proposal),
                    "peer {me}: votes for its own proposal"
                );
            }
            State::Following(f) => {
                assert!(
                    f.leader != me && self.config.voters.contains(&f.leader),
                    "peer {me}: follows another voter, not {}",
                    f.leader
                );
                assert_eq!(
                    f.epoch.is_none(),
                    f.phase == FollowerPhase::Discovery,
                    "peer {me}: knows the epoch exactly once past discovery"
                );
                if let Some(epoch) = f.epoch {
                    // Primary uniqueness: the epoch we follow in is the one we acknowledged last,
                    // to this leader.
                    assert!(
                        epoch == self.accepted_epoch && self.accepted_from == Some(f.leader),
                        "peer {me}: follows {} in epoch {epoch}, accepted {} from {:?}",
                        f.leader,
                        self.accepted_epoch,
                        self.accepted_from
                    );
                }
                if f.acked_new_leader {
                    assert!(
                        f.ack_new_leader_at.is_none() && f.epoch == Some(self.current_epoch),
                        "peer {me}: acknowledged NEWLEADER, so the epoch is its current one"
                    );
                }
                if f.ack_new_leader_at.is_some() {
                    assert_eq!(
                        f.phase,
                        FollowerPhase::Syncing,
                        "peer {me}: NEWLEADER waits only while syncing"
                    );
                }
                if f.phase == FollowerPhase::Broadcast {
                    assert!(
                        f.acked_new_leader,
                        "peer {me}: broadcast only after acknowledging NEWLEADER"
                    );
                }
            }
            State::Leading(l) => self.check_leading(l),
        }
    }

    fn check_leading(&self, l: &Leading) {
        let me = self.config.id;
        for (&p, v) in &l.followers {
            assert!(
                p != me && self.config.voters.contains(&p),
                "leader {me}: follower {p} is another voter"
            );
            // Each flag implies the one of the phase before it.
            let implies = |a: bool, b: bool| !a || b;
            assert!(
                implies(v.repeated_ack, v.acked_epoch)
                    && implies(v.synced, v.acked_epoch)
                    && implies(v.acked_new_leader, v.synced),
                "leader {me}: follower {p} went through the phases in order: {v:?}"
            );
            if l.phase == LeaderPhase::Discovery {
                assert!(
                    !v.acked_epoch,
                    "leader {me}: no epoch acknowledged before proposing one"
                );
            }
            if l.phase == LeaderPhase::EpochAcks {
                assert!(
                    !v.synced,
                    "leader {me}: no sync before a quorum took the epoch"
                );
            }
        }
        if l.phase == LeaderPhase::Discovery {
            assert_eq!(
                l.epoch, 0,
                "leader {me}: no epoch before a discovery quorum"
            );
        } else {
            assert!(
                l.epoch > 0 && l.epoch == self.accepted_epoch && self.accepted_from == Some(me),
                "leader {me}: leads in the epoch it accepted from itself ({} vs {} from {:?})",
                l.epoch,
                self.accepted_epoch,
                self.accepted_from
            );
        }
        if l.phase == LeaderPhase::Broadcast {
            assert_eq!(
                self.current_epoch, l.epoch,
                "leader {me}: broadcasts in its current epoch"
            );
            assert!(
                l.new_leader_zxid <= self.committed,
                "leader {me}: its history up to NEWLEADER is committed"
            );
            let expected = if self.last_logged.epoch() == l.epoch {
                self.last_logged.counter().checked_add(1)
            } else {
                Some(1)
            };
            assert_eq!(
                Some(l.next_counter),
                expected,
                "leader {me}: the next zxid follows the last logged {}",
                self.last_logged
            );
        } else {
            assert!(
                l.next_counter == 1 && l.pending_syncs.is_empty(),
                "leader {me}: nothing proposed before broadcast"
            );
        }
        if l.phase == LeaderPhase::Syncing {
            assert_eq!(
                l.new_leader_zxid, self.last_logged,
                "leader {me}: NEWLEADER names the whole history while syncing"
            );
        }
        let mut prev = Zxid::ZERO;
        for (at, _) in &l.pending_syncs {
            assert!(
                prev <= *at && *at <= self.last_logged,
                "leader {me}: pending syncs wait in zxid order for logged zxids"
            );
            prev = *at;
        }
    }
}

impl PeerMsg {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("peer messages always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<PeerMsg, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A snapshot crosses the wire in the snapshot file's own format.
mod tree_bytes {
    use crate::data_tree::DataTree;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tree: &DataTree, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        tree.write_snapshot(&mut bytes)
            .map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<DataTree>, D::Error> {
        let bytes: &[u8] = Deserialize::deserialize(d)?;
        DataTree::read_snapshot(bytes)
            .map(Box::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    //! Exact-action tests: each feeds one input and asserts every action that comes out, in
    //! order, through `check` (openraft's `engine/tests` style). Actions are compared in the
    //! transcripts' notation (`crate::interaction`), where zxids read `epoch.counter`.
    use super::*;
    use crate::interaction::{msg_desc, txn_desc, z};
    use crate::op::{CreateMode, WriteOp};

    fn show(a: &ZabAction) -> String {
        match a {
            ZabAction::Send { to, msg } => format!("->{to} {}", msg_desc(msg)),
            ZabAction::Persist(t) => format!("persist {}", txn_desc(t)),
            ZabAction::PersistEpochs { accepted, current } => {
                format!("epochs accepted={accepted} current={current}")
            }
            ZabAction::InstallSnapshot(tree) => format!("install {}", z(tree.last_applied())),
            ZabAction::SendSnapshot { to, epoch } => format!("->{to} snapshot epoch={epoch}"),
            ZabAction::Commit(t) => format!("commit {}", txn_desc(t)),
            ZabAction::Synced { session, xid } => format!("synced {session} xid={xid}"),
            ZabAction::SetRole(r) => format!("role {r:?}"),
            ZabAction::Touches(t) => format!("touches {t:?}"),
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            wall_ms: 1_000 + ms as i64,
        }
    }

    /// Steps `peer` with `input` at `ms` and asserts exactly `expected` comes out.
    fn check(peer: &mut ZabPeer, ms: u64, input: ZabInput, expected: &[&str]) {
        let mut out = Vec::new();
        // A fresh preparation per step: these tests are about ordering, not ACLs.
        let mut prep = Prep::new(Vec::new().into());
        prep.lead(DataTree::new());
        peer.step(at(ms), input, &mut prep, &mut out);
        let got: Vec<String> = out.iter().map(show).collect();
        assert_eq!(got, expected, "peer {}: actions differ", peer.id());
    }

    fn msg(from: PeerId, msg: PeerMsg) -> ZabInput {
        ZabInput::Message { from, msg }
    }

    fn vote(round: u64, leader: PeerId, epoch: u32, zxid: Zxid) -> PeerMsg {
        PeerMsg::Vote {
            round,
            proposal: Proposal {
                leader,
                epoch,
                zxid,
            },
            state: VoteState::Looking,
        }
    }

    fn txn(zxid: Zxid) -> Txn {
        Txn {
            zxid,
            time_ms: 0,
            origin: 3,
            session: SessionId(1),
            xid: 1,
            kind: TxnKind::Write(WriteOp::Create {
                path: format!("/t{}", zxid.counter()),
                data: bytes::Bytes::new(),
                mode: CreateMode::Persistent,
                acl: crate::acl::open_acl(),
            }),
        }
    }

    fn peer(id: PeerId, recovered: Durable) -> ZabPeer {
        let mut out = Vec::new();
        let p = ZabPeer::new(
            ZabConfig::new(id, vec![1, 2, 3]),
            recovered,
            at(0),
            &mut out,
        );
        let got: Vec<String> = out.iter().map(show).collect();
        let others: Vec<PeerId> = [1, 2, 3].into_iter().filter(|&o| o != id).collect();
        let (e, zx) = (p.current_epoch(), z(p.last_logged()));
        let vote = |to| format!("->{to} Vote round=1 leader={id} epoch={e} zxid={zx} looking");
        assert_eq!(
            got,
            vec![
                "role NotServing".to_string(),
                vote(others[0]),
                vote(others[1])
            ],
            "a new peer looks for a leader at once"
        );
        p
    }

    /// Peer 3 with `log` (current epoch `epoch`) wins the election: 1 and 2 vote for it.
    fn prospective_leader(epoch: u32, log: Vec<Txn>) -> ZabPeer {
        let last = log.last().map_or(Zxid::ZERO, |t| t.zxid);
        let mut p = peer(
            3,
            Durable {
                accepted_epoch: epoch,
                current_epoch: epoch,
                snapshot_zxid: Zxid::ZERO,
                log,
            },
        );
        let claim = format!("leader=3 epoch={epoch} zxid={}", z(last));
        // A quorum agrees, but not yet everyone: it waits for a better vote.
        check(&mut p, 1, msg(1, vote(1, 3, epoch, last)), &[]);
        // Every voter agrees: no finalize wait. Leading, it tells the others.
        check(
            &mut p,
            2,
            msg(2, vote(1, 3, epoch, last)),
            &[
                &format!("->1 Vote round=1 {claim} leading"),
                &format!("->2 Vote round=1 {claim} leading"),
            ],
        );
        p
    }

    #[test]
    fn a_discovery_quorum_gets_a_new_epoch_above_every_accepted_one() {
        // Primary uniqueness: the new epoch exceeds every epoch the quorum accepted, and is
        // durable before anyone hears of it.
        let mut p = prospective_leader(0, vec![]);
        let info = |accepted_epoch| PeerMsg::FollowerInfo {
            accepted_epoch,
            last_zxid: Zxid::ZERO,
        };
        check(
            &mut p,
            3,
            msg(1, info(4)),
            &["epochs accepted=5 current=0", "->1 NewEpoch 5"],
        );
        // A latecomer gets the epoch already chosen, not a new one.
        check(&mut p, 4, msg(2, info(7)), &["->2 NewEpoch 5"]);
    }

    #[test]
    fn a_follower_acks_only_a_greater_epoch() {
        // Primary uniqueness: NEWEPOCH is acknowledged (durably) only when greater than the
        // accepted epoch; a stale one sends the follower back to looking.
        let mut f = peer(1, Durable::default());
        check(
            &mut f,
            1,
            msg(3, vote(1, 3, 0, Zxid::ZERO)),
            &[
                "->2 Vote round=1 leader=3 epoch=0 zxid=0.0 looking",
                "->3 Vote round=1 leader=3 epoch=0 zxid=0.0 looking",
            ],
        );
        check(
            &mut f,
            2,
            msg(2, vote(1, 3, 0, Zxid::ZERO)),
            &["->3 FollowerInfo accepted=0 last=0.0"],
        );
        check(
            &mut f,
            3,
            msg(3, PeerMsg::NewEpoch { epoch: 2 }),
            &[
                "epochs accepted=2 current=0",
                "->3 AckEpoch 2 current=0 last=0.0",
            ],
        );

        let mut g = peer(
            2,
            Durable {
                accepted_epoch: 5,
                ..Durable::default()
            },
        );
        check(
            &mut g,
            1,
            msg(3, vote(1, 3, 0, Zxid::ZERO)),
            &[
                "->1 Vote round=1 leader=3 epoch=0 zxid=0.0 looking",
                "->3 Vote round=1 leader=3 epoch=0 zxid=0.0 looking",
            ],
        );
        check(
            &mut g,
            2,
            msg(1, vote(1, 3, 0, Zxid::ZERO)),
            &["->3 FollowerInfo accepted=5 last=0.0"],
        );
        check(
            &mut g,
            3,
            msg(3, PeerMsg::NewEpoch { epoch: 2 }),
            &[
                "role NotServing",
                "->1 Vote round=2 leader=2 epoch=0 zxid=0.0 looking",
                "->3 Vote round=2 leader=2 epoch=0 zxid=0.0 looking",
            ],
        );
    }

    fn ack_epoch(epoch: u32, current_epoch: u32, last_zxid: Zxid) -> PeerMsg {
        PeerMsg::AckEpoch {
            epoch,
            current_epoch,
            last_zxid,
            repeated: false,
        }
    }

    #[test]
    fn a_follower_with_a_suffix_missing_is_synced_by_diff() {
        // Integrity of history / sync: a follower whose last zxid is in the leader's history
        // gets exactly the transactions after it, then NEWLEADER with the leader's last zxid.
        let log = vec![txn(Zxid::new(1, 1)), txn(Zxid::new(1, 2))];
        let mut p = prospective_leader(1, log);
        let info = PeerMsg::FollowerInfo {
            accepted_epoch: 1,
            last_zxid: Zxid::new(1, 1),
        };
        check(
            &mut p,
            3,
            msg(1, info),
            &["epochs accepted=2 current=1", "->1 NewEpoch 2"],
        );
        check(
            &mut p,
            4,
            msg(1, ack_epoch(2, 1, Zxid::new(1, 1))),
            &[
                "->1 Diff epoch=2 prev=1.1 [1.2 create /t2]",
                "->1 NewLeader epoch=2 last=1.2",
            ],
        );
    }

    #[test]
    fn a_follower_off_the_leaders_history_is_synced_by_snap() {
        // Sync: a follower whose last zxid the leader never had (1.3, proposed in epoch 1 and
        // lost) gets the committed state, then the rest as a DIFF from it, then NEWLEADER.
        let log = vec![
            txn(Zxid::new(1, 1)),
            txn(Zxid::new(1, 2)),
            txn(Zxid::new(2, 1)),
        ];
        let mut p = prospective_leader(2, log);
        let info = PeerMsg::FollowerInfo {
            accepted_epoch: 1,
            last_zxid: Zxid::new(1, 3),
        };
        check(
            &mut p,
            3,
            msg(1, info),
            &["epochs accepted=3 current=2", "->1 NewEpoch 3"],
        );
        check(
            &mut p,
            4,
            msg(1, ack_epoch(3, 1, Zxid::new(1, 3))),
            &[
                "->1 snapshot epoch=3",
                "->1 Diff epoch=3 prev=0.0 [1.1 create /t1, 1.2 create /t2, 2.1 create /t1]",
                "->1 NewLeader epoch=3 last=2.1",
            ],
        );
    }

    /// Peer 3, established in epoch 1 over an empty history with followers 1 and 2.
    fn established_leader() -> ZabPeer {
        let mut p = prospective_leader(0, vec![]);
        let info = PeerMsg::FollowerInfo {
            accepted_epoch: 0,
            last_zxid: Zxid::ZERO,
        };
        check(
            &mut p,
            3,
            msg(1, info.clone()),
            &["epochs accepted=1 current=0", "->1 NewEpoch 1"],
        );
        check(&mut p, 3, msg(2, info), &["->2 NewEpoch 1"]);
        check(
            &mut p,
            4,
            msg(1, ack_epoch(1, 0, Zxid::ZERO)),
            &[
                "->1 Diff epoch=1 prev=0.0 []",
                "->1 NewLeader epoch=1 last=0.0",
            ],
        );
        check(
            &mut p,
            4,
            msg(2, ack_epoch(1, 0, Zxid::ZERO)),
            &[
                "->2 Diff epoch=1 prev=0.0 []",
                "->2 NewLeader epoch=1 last=0.0",
            ],
        );
        // One NEWLEADER acknowledgement plus the leader is a quorum: established.
        check(
            &mut p,
            5,
            msg(1, PeerMsg::AckNewLeader { epoch: 1 }),
            &[
                "epochs accepted=1 current=1",
                "->1 UpToDate epoch=1 committed=0.0",
                "role Leading",
            ],
        );
        check(
            &mut p,
            5,
            msg(2, PeerMsg::AckNewLeader { epoch: 1 }),
            &["->2 UpToDate epoch=1 committed=0.0"],
        );
        assert!(p.is_leading());
        p
    }

    fn write(xid: i64, path: &str) -> ZabInput {
        ZabInput::Submit(Submission {
            origin: 3,
            session: SessionId(1),
            xid,
            kind: SubmitKind::Txn(TxnKind::Write(WriteOp::Create {
                path: path.into(),
                data: bytes::Bytes::new(),
                mode: CreateMode::Persistent,
                acl: crate::acl::open_acl(),
            })),
            auth: Vec::new().into(),
        })
    }

    #[test]
    fn a_write_is_proposed_to_synced_followers_then_logged() {
        // Prefix: each proposal names the zxid it follows; the leader logs it as it sends it.
        let mut p = established_leader();
        check(
            &mut p,
            6,
            write(1, "/a"),
            &[
                "->1 Propose epoch=1 prev=0.0 1.1 create /a",
                "->2 Propose epoch=1 prev=0.0 1.1 create /a",
                "persist 1.1 create /a",
            ],
        );
        check(
            &mut p,
            6,
            write(2, "/b"),
            &[
                "->1 Propose epoch=1 prev=1.1 1.2 create /b",
                "->2 Propose epoch=1 prev=1.1 1.2 create /b",
                "persist 1.2 create /b",
            ],
        );
        // The same submission again (a duplicated forward) is proposed once.
        check(&mut p, 6, write(2, "/b"), &[]);
    }

    #[test]
    fn a_proposal_commits_once_a_quorum_has_it_durable() {
        // Commit: the leader's own fsync is not enough; a follower's ACK makes a quorum, and
        // the commit goes to every synced follower.
        let mut p = established_leader();
        check(
            &mut p,
            6,
            write(1, "/a"),
            &[
                "->1 Propose epoch=1 prev=0.0 1.1 create /a",
                "->2 Propose epoch=1 prev=0.0 1.1 create /a",
                "persist 1.1 create /a",
            ],
        );
        let durable = ZabInput::Durable {
            upto: Zxid::new(1, 1),
            installs: 0,
        };
        // Three voters: the leader tells its followers how far it is durable instead.
        check(
            &mut p,
            7,
            durable,
            &["->1 Ack epoch=1 1.1", "->2 Ack epoch=1 1.1"],
        );
        let ack = PeerMsg::Ack {
            epoch: 1,
            zxid: Zxid::new(1, 1),
        };
        check(
            &mut p,
            8,
            msg(2, ack.clone()),
            &[
                "commit 1.1 create /a",
                "->1 Commit epoch=1 1.1",
                "->2 Commit epoch=1 1.1",
            ],
        );
        // A second ACK of a committed proposal changes nothing.
        check(&mut p, 8, msg(1, ack), &[]);
    }

    #[test]
    fn a_follower_acks_a_proposal_only_once_durable() {
        // Durable acknowledgement: PROPOSE is logged at once; the ACK waits for the fsync.
        let mut f = peer(1, Durable::default());
        check(
            &mut f,
            1,
            msg(3, vote(1, 3, 0, Zxid::ZERO)),
            &[
                "->2 Vote round=1 leader=3 epoch=0 zxid=0.0 looking",
                "->3 Vote round=1 leader=3 epoch=0 zxid=0.0 looking",
            ],
        );
        check(
            &mut f,
            1,
            msg(2, vote(1, 3, 0, Zxid::ZERO)),
            &["->3 FollowerInfo accepted=0 last=0.0"],
        );
        check(
            &mut f,
            2,
            msg(3, PeerMsg::NewEpoch { epoch: 1 }),
            &[
                "epochs accepted=1 current=0",
                "->3 AckEpoch 1 current=0 last=0.0",
            ],
        );
        let diff = PeerMsg::Diff {
            epoch: 1,
            prev: Zxid::ZERO,
            txns: vec![],
        };
        check(&mut f, 3, msg(3, diff), &[]);
        let new_leader = PeerMsg::NewLeader {
            epoch: 1,
            last_zxid: Zxid::ZERO,
        };
        // Nothing to wait for: the (empty) sync is durable already.
        check(
            &mut f,
            3,
            msg(3, new_leader),
            &[
                "epochs accepted=1 current=1",
                "->3 AckNewLeader epoch=1",
                "->3 Ack epoch=1 0.0",
            ],
        );
        let up = PeerMsg::UpToDate {
            epoch: 1,
            committed: Zxid::ZERO,
        };
        check(&mut f, 4, msg(3, up), &["role Following"]);
        let propose = PeerMsg::Propose {
            epoch: 1,
            prev: Zxid::ZERO,
            txn: txn(Zxid::new(1, 1)),
        };
        check(&mut f, 5, msg(3, propose), &["persist 1.1 create /t1"]);
        check(
            &mut f,
            6,
            ZabInput::Durable {
                upto: Zxid::new(1, 1),
                installs: 0,
            },
            &["->3 Ack epoch=1 1.1"],
        );
        // The leader's COMMIT applies it.
        let commit = PeerMsg::Commit {
            epoch: 1,
            zxid: Zxid::new(1, 1),
        };
        check(&mut f, 7, msg(3, commit), &["commit 1.1 create /t1"]);
        // A proposal after a gap (1.2 lost) is not logged: back to looking.
        let gap = PeerMsg::Propose {
            epoch: 1,
            prev: Zxid::new(1, 2),
            txn: txn(Zxid::new(1, 3)),
        };
        check(
            &mut f,
            8,
            msg(3, gap),
            &[
                "role NotServing",
                "->2 Vote round=2 leader=1 epoch=1 zxid=1.1 looking",
                "->3 Vote round=2 leader=1 epoch=1 zxid=1.1 looking",
            ],
        );
    }
}
