//! One coord replica, sans IO: the client pipeline (`ServerCore`) and its ZAB peer (`ZabPeer`)
//! wired together. Both the async driver and the deterministic simulation drive this one type,
//! so what the simulation checks is what runs.
//!
//! Between the two sits the leader's `Prep` (its ACL checks before proposing): ZAB hands it every
//! transaction it is about to propose, and the replica keeps it in step with leadership — started
//! on the committed tree when this replica starts leading, dropped when it stops.

use crate::data_tree::DataTree;
use crate::prep::Prep;
#[cfg(test)]
use crate::server::Submission;
use crate::server::{self, ConnId, Now, Role, ServerConfig, ServerCore, ServerMsg};
use crate::txn::Txn;
use crate::zab::{self, PeerId, PeerMsg, ZabAction, ZabConfig, ZabInput, ZabPeer};
#[cfg(test)]
use crate::zxid::SessionId;
use crate::zxid::Zxid;
use std::collections::VecDeque;

#[derive(Clone, Debug)]
pub enum Input {
    /// A client event (connect, request, ping, close, disconnect).
    Client(server::Input),
    Peer {
        from: PeerId,
        msg: PeerMsg,
    },
    /// The log is fsynced up to `upto` (see `zab::ZabInput::Durable`).
    Durable {
        upto: Zxid,
        installs: u64,
    },
    PeerDown(PeerId),
    Tick,
}

#[derive(Clone, Debug)]
pub enum Action {
    SendClient {
        conn: ConnId,
        msg: ServerMsg,
    },
    CloseClient {
        conn: ConnId,
    },
    SendPeer {
        to: PeerId,
        msg: PeerMsg,
    },
    /// Append to the log; report `Durable` once fsynced.
    Persist(Txn),
    /// Make durable before carrying out any later action.
    PersistEpochs {
        accepted: u32,
        current: u32,
    },
    /// Write as a durable snapshot, drop logged transactions after its zxid, then report
    /// `Durable { upto: its zxid, installs }` with the new install count.
    InstallSnapshot(Box<DataTree>),
    /// Write as a snapshot when convenient (periodic; the log keeps everything meanwhile).
    Snapshot(Box<DataTree>),
}

enum Work {
    Server(server::Input),
    Zab(ZabInput),
}

/// Test builds: what passed between the two cores inside one step, which the replica's own
/// actions do not show (a commit, a role change, a submission). The interaction transcripts print
/// these between the actions, where they happened.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) enum Note {
    Submit(Submission),
    Commit(Txn),
    Synced { session: SessionId, xid: i64 },
    Role(Role),
    Touches(Vec<SessionId>),
}

pub struct Replica {
    server: ServerCore,
    zab: ZabPeer,
    /// Leading: the state after every proposal, for ACL checks (see `prep`).
    prep: Prep,
    work: VecDeque<Work>,
    /// Test builds, when enabled: each note with the number of actions handed out before it.
    #[cfg(test)]
    notes: Option<Vec<(usize, Note)>>,
}

impl Replica {
    /// A replica over what was recovered from disk: the snapshot's tree and the log after it.
    pub fn new(
        server_config: ServerConfig,
        zab_config: ZabConfig,
        tree: DataTree,
        durable: zab::Durable,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Replica {
        assert_eq!(
            tree.last_applied(),
            durable.snapshot_zxid,
            "the tree is the snapshot the log follows"
        );
        let prep = Prep::new(server_config.super_ids.clone().into());
        let server = ServerCore::new(server_config, tree);
        let mut zab_out = Vec::new();
        let zab = ZabPeer::new(zab_config, durable, now, &mut zab_out);
        let mut replica = Replica {
            server,
            zab,
            prep,
            work: VecDeque::new(),
            #[cfg(test)]
            notes: None,
        };
        replica.carry_out_zab(now, zab_out, out);
        replica.drain(now, out);
        replica
    }

    pub fn server(&self) -> &ServerCore {
        &self.server
    }

    pub fn zab(&self) -> &ZabPeer {
        &self.zab
    }

    /// Asserts both cores' invariants (see `ZabPeer::check_invariants` and
    /// `ServerCore::check_invariants`), and that the server has applied exactly what ZAB
    /// committed: the two halves of one replica never disagree about where it is.
    pub fn check_invariants(&self) {
        self.zab.check_invariants();
        self.server.check_invariants();
        self.check_cores_agree();
    }

    /// The part of `check_invariants` that neither core can check alone.
    pub fn check_cores_agree(&self) {
        let id = self.zab.id();
        assert_eq!(
            self.server.tree().last_applied(),
            self.zab.committed(),
            "replica {id}: the server applied up to exactly what ZAB committed"
        );
        assert_eq!(
            self.prep.is_leading(),
            self.server.role() == Role::Leading,
            "replica {id}: the leader prepares its proposals, and only the leader"
        );
        if let Some(prepared) = self.prep.tree() {
            assert_eq!(
                prepared.last_applied(),
                self.zab.last_logged(),
                "replica {id}: every proposal went through the leader's preparation"
            );
            if prepared.last_applied() == self.server.tree().last_applied() {
                assert_eq!(
                    prepared.digest(),
                    self.server.tree().digest(),
                    "replica {id}: with nothing in flight, the prepared state is the committed one"
                );
            }
        }
    }

    /// Starts recording notes (see `Note`); a replica built with notes off records nothing.
    #[cfg(test)]
    pub(crate) fn record_notes(&mut self) {
        self.notes.get_or_insert_with(Vec::new);
    }

    /// The notes since the last call, each with the index into that step's actions it preceded.
    #[cfg(test)]
    pub(crate) fn take_notes(&mut self) -> Vec<(usize, Note)> {
        self.notes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    #[cfg(test)]
    fn note(&mut self, at: usize, note: impl FnOnce() -> Note) {
        if let Some(notes) = &mut self.notes {
            notes.push((at, note()));
        }
    }

    pub fn step(&mut self, now: Now, input: Input, out: &mut Vec<Action>) {
        let work = match input {
            Input::Client(i) => Work::Server(i),
            Input::Peer { from, msg } => Work::Zab(ZabInput::Message { from, msg }),
            Input::Durable { upto, installs } => Work::Zab(ZabInput::Durable { upto, installs }),
            Input::PeerDown(p) => Work::Zab(ZabInput::PeerDown(p)),
            Input::Tick => {
                self.work.push_back(Work::Zab(ZabInput::Tick));
                Work::Server(server::Input::Tick)
            }
        };
        self.work.push_back(work);
        self.drain(now, out);
    }

    fn drain(&mut self, now: Now, out: &mut Vec<Action>) {
        while let Some(work) = self.work.pop_front() {
            match work {
                Work::Server(input) => self.run_server(now, input, out),
                Work::Zab(input) => {
                    let mut zab_out = Vec::new();
                    self.zab.step(now, input, &mut self.prep, &mut zab_out);
                    self.carry_out_zab(now, zab_out, out);
                }
            }
        }
    }

    /// Steps the server at once; what it submits waits in the queue for ZAB, so neither core is
    /// re-entered while it is stepping.
    fn run_server(&mut self, now: Now, input: server::Input, out: &mut Vec<Action>) {
        let mut server_out = Vec::new();
        self.server.step(now, input, &mut server_out);
        for action in server_out {
            match action {
                server::Action::Submit(sub) => {
                    #[cfg(test)]
                    self.note(out.len(), || Note::Submit(sub.clone()));
                    self.work.push_back(Work::Zab(ZabInput::Submit(sub)))
                }
                server::Action::Touches(t) => {
                    self.work.push_back(Work::Zab(ZabInput::LocalTouches(t)))
                }
                server::Action::Send { conn, msg } => out.push(Action::SendClient { conn, msg }),
                server::Action::CloseConn { conn } => out.push(Action::CloseClient { conn }),
                server::Action::Snapshot(tree) => out.push(Action::Snapshot(tree)),
            }
        }
    }

    /// Carries out ZAB's actions in their order: outputs go out, server inputs are applied at
    /// once (so a snapshot sent after a commit contains it).
    fn carry_out_zab(&mut self, now: Now, actions: Vec<ZabAction>, out: &mut Vec<Action>) {
        for action in actions {
            match action {
                ZabAction::Send { to, msg } => out.push(Action::SendPeer { to, msg }),
                ZabAction::Persist(txn) => out.push(Action::Persist(txn)),
                ZabAction::PersistEpochs { accepted, current } => {
                    out.push(Action::PersistEpochs { accepted, current })
                }
                ZabAction::InstallSnapshot(tree) => {
                    out.push(Action::InstallSnapshot(tree.clone()));
                    self.run_server(now, server::Input::Install(tree), out);
                }
                ZabAction::SendSnapshot { to, epoch } => {
                    let tree = Box::new(self.server.tree().clone());
                    // ZAB's commits reach the server within the same step, in order, so the tree
                    // is exactly the committed state ZAB means to send.
                    assert_eq!(
                        tree.last_applied(),
                        self.zab.committed(),
                        "a snapshot for peer {to} is the committed state"
                    );
                    out.push(Action::SendPeer {
                        to,
                        msg: PeerMsg::Snap { epoch, tree },
                    });
                }
                ZabAction::Commit(txn) => {
                    #[cfg(test)]
                    self.note(out.len(), || Note::Commit(txn.clone()));
                    self.run_server(now, server::Input::Committed(txn), out);
                    self.prep.caught_up(self.server.tree());
                }
                ZabAction::Synced { session, xid } => {
                    #[cfg(test)]
                    self.note(out.len(), || Note::Synced { session, xid });
                    self.run_server(now, server::Input::Synced { session, xid }, out)
                }
                ZabAction::SetRole(role) => {
                    #[cfg(test)]
                    self.note(out.len(), || Note::Role(role));
                    self.run_server(now, server::Input::SetRole(role), out);
                    if role == Role::Leading {
                        // ZAB commits its whole history before it starts leading (the commits
                        // came first in this step), so this is the state proposals build on.
                        assert_eq!(
                            self.server.tree().last_applied(),
                            self.zab.last_logged(),
                            "a new leader has applied its whole history"
                        );
                        self.prep.lead(self.server.tree().clone());
                    } else {
                        self.prep.stop();
                    }
                }
                ZabAction::Touches(t) => {
                    #[cfg(test)]
                    self.note(out.len(), || Note::Touches(t.clone()));
                    self.run_server(now, server::Input::Touches(t), out)
                }
            }
        }
    }
}
