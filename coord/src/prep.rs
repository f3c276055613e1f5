//! The leader's preparation of writes, sans IO (ZooKeeper's `PrepRequestProcessor`): what a write
//! may do depends on who asks, so the leader decides it before the write becomes a transaction,
//! with the session's ids that the submission carries (a follower forwards them with the write).
//!
//! For each transaction to be proposed, in zxid order, `Prep::prepare`:
//! 1. expands the `auth` scheme of the ACLs it sets into the session's authenticated ids, and
//!    refuses an ACL that is invalid (`InvalidAcl`, naming the entry);
//! 2. checks every ACL the write needs (`NoAuth`, naming the path and the permission) against the
//!    state the write will find: `tree`, the committed tree with every transaction proposed since
//!    applied (ZooKeeper keeps "outstanding changes" for the same reason). A write refused here
//!    becomes a `TxnKind::Refused` transaction holding its answer: it changes nothing, but keeps
//!    its place in the order, so the session's answers stay in order, and every replica answers
//!    it the same way (ZooKeeper's error transaction).
//!
//! A write that passes is proposed as the request itself; applying it on every replica gives the
//! result `prepare` saw, because `apply` is deterministic and the prepared tree is exactly the
//! state it applies to. Nothing here decides anything else: versions, existence and sizes are
//! still the tree's to check when the transaction is applied.

use crate::acl::{self, Access, AclEntry, Id};
use crate::data_tree::DataTree;
use crate::op::{OpError, OpResult, WriteOp};
use crate::txn::{Txn, TxnKind};
use std::sync::Arc;

pub struct Prep {
    super_ids: Arc<[Id]>,
    /// While leading: the committed tree with every transaction proposed since applied, so its
    /// `last_applied` is the last proposed zxid. `None` while not leading.
    tree: Option<DataTree>,
}

impl Prep {
    pub fn new(super_ids: Arc<[Id]>) -> Prep {
        Prep {
            super_ids,
            tree: None,
        }
    }

    /// This peer leads from now on; `committed` holds every transaction of its history.
    pub fn lead(&mut self, committed: DataTree) {
        self.tree = Some(committed);
    }

    /// This peer no longer leads: what it prepared is no one's business any more.
    pub fn stop(&mut self) {
        self.tree = None;
    }

    pub fn is_leading(&self) -> bool {
        self.tree.is_some()
    }

    /// The prepared state (leading only).
    pub fn tree(&self) -> Option<&DataTree> {
        self.tree.as_ref()
    }

    /// Once every proposal is committed the prepared tree equals `committed`; taking the
    /// committed one (an O(1) clone) lets the two share their structure again instead of each
    /// holding its own copy of what both changed.
    pub fn caught_up(&mut self, committed: &DataTree) {
        if let Some(tree) = &mut self.tree
            && tree.last_applied() == committed.last_applied()
        {
            *tree = committed.clone();
        }
    }

    /// The transaction to propose for `txn` (zxid assigned, not yet proposed), asked by a session
    /// holding `auth`. Must be called for every proposal, in zxid order, while leading.
    pub fn prepare(&mut self, txn: Txn, auth: &[Id]) -> Txn {
        let super_ids = Arc::clone(&self.super_ids);
        let tree = self
            .tree
            .as_mut()
            .expect("only a leader proposes, and a leader prepares every proposal");
        let TxnKind::Write(op) = &txn.kind else {
            tree.apply(&txn);
            return txn;
        };
        let op = match expand_acls(op, auth) {
            Ok(op) => op,
            Err(refusal) => return refuse(tree, txn, refusal),
        };
        let txn = Txn {
            kind: TxnKind::Write(op),
            ..txn
        };
        let mut trial = tree.clone();
        let access = Access {
            ids: auth,
            super_ids: &super_ids,
        };
        let applied = trial.apply_checked(&txn, &access);
        if is_refused(&applied.result) {
            return refuse(tree, txn, applied.result);
        }
        *tree = trial;
        txn
    }
}

/// Replaces `txn` by a refusal carrying `result` and applies that (which only moves the zxid).
fn refuse(tree: &mut DataTree, txn: Txn, result: Result<OpResult, OpError>) -> Txn {
    let refused = Txn {
        kind: TxnKind::Refused(result),
        ..txn
    };
    tree.apply(&refused);
    refused
}

/// A result the leader answers itself: an ACL check failed (alone, or as the op of a multi that
/// made it fail).
fn is_refused(result: &Result<OpResult, OpError>) -> bool {
    match result {
        Err(e) => e.is_access_error(),
        Ok(OpResult::Multi(results)) => results
            .iter()
            .any(|r| matches!(r, Err(e) if e.is_access_error())),
        Ok(_) => false,
    }
}

/// `op` with the ACLs it sets expanded (`acl::expand`), or the answer refusing it. A multi
/// with an invalid ACL fails the way a failed multi does: that op's error, `RuntimeInconsistency`
/// for the others.
fn expand_acls(op: &WriteOp, auth: &[Id]) -> Result<WriteOp, Result<OpResult, OpError>> {
    match op {
        WriteOp::Multi(ops) => {
            let mut out = Vec::with_capacity(ops.len());
            for (i, op) in ops.iter().enumerate() {
                match expand_one(op, auth) {
                    Ok(op) => out.push(op),
                    Err(err) => {
                        let mut all: Vec<Result<OpResult, OpError>> = (0..ops.len())
                            .map(|_| Err(OpError::RuntimeInconsistency))
                            .collect();
                        all[i] = Err(err);
                        return Err(Ok(OpResult::Multi(all)));
                    }
                }
            }
            Ok(WriteOp::Multi(out))
        }
        op => expand_one(op, auth).map_err(Err),
    }
}

fn expand_one(op: &WriteOp, auth: &[Id]) -> Result<WriteOp, OpError> {
    let expand = |path: &str, acl: &[AclEntry]| {
        acl::expand(acl, auth).map_err(|reason| OpError::InvalidAcl {
            path: path.to_string(),
            reason,
        })
    };
    Ok(match op {
        WriteOp::Create {
            path,
            data,
            mode,
            acl,
        } => WriteOp::Create {
            acl: expand(path, acl)?,
            path: path.clone(),
            data: data.clone(),
            mode: *mode,
        },
        WriteOp::SetAcl { path, acl, version } => WriteOp::SetAcl {
            acl: expand(path, acl)?,
            path: path.clone(),
            version: *version,
        },
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Perms, digest_id, open_acl, parse_acl};
    use crate::op::CreateMode;
    use crate::zxid::{SessionId, Zxid};
    use bytes::Bytes;

    /// Bob authenticated with digest bob:secret; Eve has only her address.
    const BOB: SessionId = SessionId(10);
    const EVE: SessionId = SessionId(11);

    struct Leader {
        prep: Prep,
        counter: u32,
    }

    fn bob() -> Vec<Id> {
        vec![
            Id::new("ip", "10.0.0.1"),
            Id::new("digest", &digest_id("bob:secret").unwrap()),
        ]
    }

    fn eve() -> Vec<Id> {
        vec![Id::new("ip", "10.0.0.2")]
    }

    fn bob_acl(perms: &str) -> Vec<AclEntry> {
        parse_acl(&format!(
            "digest:{}:{perms}",
            digest_id("bob:secret").unwrap()
        ))
        .unwrap()
    }

    fn leader(super_ids: Vec<Id>) -> Leader {
        let mut l = Leader {
            prep: Prep::new(super_ids.into()),
            counter: 0,
        };
        l.prep.lead(DataTree::new());
        for s in [BOB, EVE] {
            l.txn(
                s,
                TxnKind::CreateSession {
                    timeout_ms: 1000,
                    password: [0; 16],
                },
                &[],
            );
        }
        l
    }

    impl Leader {
        fn txn(&mut self, session: SessionId, kind: TxnKind, auth: &[Id]) -> Txn {
            self.counter += 1;
            let txn = Txn {
                zxid: Zxid::new(1, self.counter),
                time_ms: 0,
                origin: 1,
                session,
                xid: i64::from(self.counter),
                kind,
            };
            self.prep.prepare(txn, auth)
        }

        fn write(&mut self, session: SessionId, op: WriteOp, auth: &[Id]) -> TxnKind {
            self.txn(session, TxnKind::Write(op), auth).kind
        }

        fn tree(&self) -> &DataTree {
            self.prep.tree().unwrap()
        }
    }

    fn create(path: &str, acl: Vec<AclEntry>) -> WriteOp {
        WriteOp::Create {
            path: path.into(),
            data: Bytes::from_static(b"d"),
            mode: CreateMode::Persistent,
            acl,
        }
    }

    fn no_auth(path: &str, perm: Perms) -> TxnKind {
        TxnKind::Refused(Err(OpError::NoAuth {
            path: path.into(),
            perm,
        }))
    }

    #[test]
    fn each_write_needs_zookeepers_permission_and_a_refusal_names_it() {
        // ZooKeeper: create needs CREATE on the parent, delete DELETE on the parent, setData
        // WRITE, setACL ADMIN, check READ. A refused write is a Refused transaction.
        let mut l = leader(Vec::new());
        let op = create("/p", bob_acl("cdrwa"));
        assert_eq!(l.write(BOB, op.clone(), &bob()), TxnKind::Write(op));
        let op = create("/p/c", open_acl());
        assert_eq!(l.write(BOB, op.clone(), &bob()), TxnKind::Write(op));
        let cases = [
            (create("/p/x", open_acl()), "/p", Perms::CREATE),
            (
                WriteOp::Delete {
                    path: "/p/c".into(),
                    version: -1,
                },
                "/p",
                Perms::DELETE,
            ),
            (
                WriteOp::SetData {
                    path: "/p".into(),
                    data: Bytes::new(),
                    version: -1,
                },
                "/p",
                Perms::WRITE,
            ),
            (
                WriteOp::Check {
                    path: "/p".into(),
                    version: 1,
                },
                "/p",
                Perms::READ,
            ),
            (
                WriteOp::SetAcl {
                    path: "/p".into(),
                    acl: open_acl(),
                    version: -1,
                },
                "/p",
                Perms::ADMIN,
            ),
        ];
        for (op, path, perm) in cases {
            let before = l.tree().content_digest();
            assert_eq!(
                l.write(EVE, op.clone(), &eve()),
                no_auth(path, perm),
                "{op:?}"
            );
            assert_eq!(
                l.tree().content_digest(),
                before,
                "a refusal changed the tree: {op:?}"
            );
            // Bob holds every permission on /p (the setACL, last, opens it), so the same write
            // passes as the request itself.
            let kind = l.write(BOB, op.clone(), &bob());
            assert_eq!(kind, TxnKind::Write(op));
        }
        let e = OpError::NoAuth {
            path: "/p".into(),
            perm: Perms::WRITE,
        }
        .to_string();
        assert!(e.contains("/p") && e.contains("WRITE"), "{e}");
    }

    #[test]
    fn one_refused_op_refuses_the_whole_multi() {
        // multi is checked op by op and fails atomically: NoAuth for the op that lacks the
        // permission, RuntimeInconsistency for the others, and nothing changes.
        let mut l = leader(Vec::new());
        l.write(BOB, create("/mine", bob_acl("cdrwa")), &bob());
        l.write(BOB, create("/open", open_acl()), &bob());
        let before = l.tree().content_digest();
        let multi = WriteOp::Multi(vec![
            create("/open/a", open_acl()),
            WriteOp::SetData {
                path: "/mine".into(),
                data: Bytes::new(),
                version: -1,
            },
            create("/open/b", open_acl()),
        ]);
        let TxnKind::Refused(Ok(OpResult::Multi(results))) = l.write(EVE, multi.clone(), &eve())
        else {
            panic!("the multi was not refused")
        };
        assert_eq!(results[0], Err(OpError::RuntimeInconsistency));
        assert_eq!(
            results[1],
            Err(OpError::NoAuth {
                path: "/mine".into(),
                perm: Perms::WRITE
            })
        );
        assert_eq!(results[2], Err(OpError::RuntimeInconsistency));
        assert_eq!(l.tree().content_digest(), before);
        // A later op sees the ACL an earlier op of the same multi gave its parent.
        let multi = WriteOp::Multi(vec![
            create("/open/locked", bob_acl("r")),
            create("/open/locked/child", open_acl()),
        ]);
        let TxnKind::Refused(Ok(OpResult::Multi(results))) = l.write(BOB, multi, &bob()) else {
            panic!("CREATE on /open/locked is not Bob's")
        };
        assert!(matches!(&results[1], Err(OpError::NoAuth { path, .. }) if path == "/open/locked"));
    }

    #[test]
    fn checks_see_every_earlier_proposal_not_only_what_is_committed() {
        // The prepared state includes proposals not yet committed: a setACL in flight already
        // governs the next write (ZooKeeper's outstanding changes).
        let mut l = leader(Vec::new());
        l.write(BOB, create("/cfg", open_acl()), &bob());
        let lock = WriteOp::SetAcl {
            path: "/cfg".into(),
            acl: bob_acl("cdrwa"),
            version: 0,
        };
        assert_eq!(l.write(BOB, lock.clone(), &bob()), TxnKind::Write(lock));
        let set = WriteOp::SetData {
            path: "/cfg".into(),
            data: Bytes::new(),
            version: -1,
        };
        assert_eq!(l.write(EVE, set, &eve()), no_auth("/cfg", Perms::WRITE));
        assert_eq!(l.tree().stat("/cfg").unwrap().aversion, 1);
    }

    #[test]
    fn set_acl_checks_the_acl_version() {
        // setACL checks the expected aversion as setData checks version; -1 matches any.
        let mut l = leader(Vec::new());
        l.write(BOB, create("/n", open_acl()), &bob());
        let set = |version| WriteOp::SetAcl {
            path: "/n".into(),
            acl: parse_acl("world:anyone:r").unwrap(),
            version,
        };
        // Not an ACL refusal: the request is proposed and fails as it applies, everywhere.
        let txn = l.txn(BOB, TxnKind::Write(set(3)), &bob());
        assert_eq!(txn.kind, TxnKind::Write(set(3)));
        let mut committed = l.tree().clone();
        let bad = txn;
        // The prepared tree already applied it; apply it to a fresh copy to see the answer.
        let mut fresh = leader(Vec::new());
        fresh.write(BOB, create("/n", open_acl()), &bob());
        let mut t = fresh.tree().clone();
        let answer = t.apply(&Txn {
            zxid: Zxid::new(1, 99),
            ..bad
        });
        assert_eq!(
            answer.result,
            Err(OpError::BadVersion {
                path: "/n".into(),
                expected: 3,
                actual: 0
            })
        );
        assert_eq!(committed.stat("/n").unwrap().aversion, 0);
        let applied = committed.apply(&Txn {
            zxid: Zxid::new(1, 100),
            time_ms: 0,
            origin: 1,
            session: BOB,
            xid: 50,
            kind: TxnKind::Write(set(0)),
        });
        let Ok(OpResult::Stat(stat)) = applied.result else {
            panic!("{:?}", applied.result)
        };
        assert_eq!(stat.aversion, 1);
        assert_eq!(
            committed.acl("/n").unwrap(),
            &parse_acl("world:anyone:r").unwrap()[..]
        );
        assert!(applied.events.is_empty(), "setACL fires no watch");
    }

    #[test]
    fn the_auth_scheme_is_expanded_before_the_write_is_logged() {
        let mut l = leader(Vec::new());
        let op = create("/b", parse_acl("auth::cdrwa").unwrap());
        let TxnKind::Write(WriteOp::Create { acl, .. }) = l.write(BOB, op.clone(), &bob()) else {
            panic!()
        };
        assert_eq!(acl, bob_acl("cdrwa"));
        // A session with nothing to expand to gets InvalidAcl naming the entry.
        let TxnKind::Refused(Err(OpError::InvalidAcl { path, reason })) =
            l.write(EVE, create("/e", parse_acl("auth::r").unwrap()), &eve())
        else {
            panic!()
        };
        assert_eq!(path, "/e");
        assert!(reason.contains("entry 0"), "{reason}");
        // In a multi, the multi fails at that op.
        let multi = WriteOp::Multi(vec![
            create("/m1", open_acl()),
            create("/m2", parse_acl("auth::r").unwrap()),
        ]);
        let TxnKind::Refused(Ok(OpResult::Multi(r))) = l.write(EVE, multi, &eve()) else {
            panic!()
        };
        assert_eq!(r[0], Err(OpError::RuntimeInconsistency));
        assert!(matches!(&r[1], Err(OpError::InvalidAcl { path, .. }) if path == "/m2"));
        assert!(l.tree().stat("/m1").is_none());
    }

    #[test]
    fn a_super_id_passes_every_check() {
        let admin = Id::new("digest", &digest_id("super:admin").unwrap());
        let mut l = leader(vec![admin.clone()]);
        l.write(BOB, create("/p", bob_acl("r")), &bob());
        let op = create("/p/x", open_acl());
        assert_eq!(
            l.write(EVE, op.clone(), &eve()),
            no_auth("/p", Perms::CREATE)
        );
        assert_eq!(l.write(EVE, op.clone(), &[admin]), TxnKind::Write(op));
    }
}
