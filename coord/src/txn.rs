//! Transactions: every change of replicated state, as logged and as applied. A transaction holds
//! the request itself, not its effect; applying it to the tree is deterministic, so every replica
//! that applies the same sequence reaches the same state and the same results.
//!
//! Encoding (the log's records, `Txn::encode`): `[0x00][TXN_FORMAT][postcard(Txn)]`. Records
//! written before ACLs existed (format 1) are a bare postcard of the old shape; they start with
//! the zxid's varint, which is never 0x00 (a logged zxid is never 0), so the first byte tells the
//! two apart. Format 1 is still read (`v1`), its creates getting `world:anyone:cdrwa`, and never
//! written.

use crate::op::{OpError, OpResult, WriteOp};
use crate::zxid::{SessionId, Zxid};
use serde::{Deserialize, Serialize};

/// Length of a session password.
pub const PASSWORD_BYTES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub zxid: Zxid,
    /// The proposing leader's wall clock, ms since the Unix epoch: ctime/mtime of changed nodes.
    pub time_ms: i64,
    /// The server the request came through: the one that answers the client.
    pub origin: u32,
    /// The session that asked for it (the new session's own id for `CreateSession`).
    pub session: SessionId,
    /// The client's request id, so the server holding the session's connection can answer it.
    /// Negative for transactions no client waits for (expiry).
    pub xid: i64,
    pub kind: TxnKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnKind {
    CreateSession {
        timeout_ms: u32,
        password: [u8; PASSWORD_BYTES],
    },
    /// Ends the session and deletes its ephemerals, in this one transaction.
    CloseSession,
    Write(WriteOp),
    /// A write the leader refused while preparing it (`prep`; ZooKeeper's error transaction):
    /// it changes nothing, but takes its place in the order so the session's answers stay in
    /// order, and every replica answers it with this result.
    Refused(Result<OpResult, OpError>),
}

/// Marks a versioned record (see the module doc).
const TXN_FORMAT_MARK: u8 = 0;
/// Format 2: ACLs on create, setACL, refusals.
const TXN_FORMAT: u8 = 2;

/// Why a stored transaction could not be decoded.
#[derive(thiserror::Error, Debug)]
pub enum DecodeError {
    #[error("undecodable transaction record: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("transaction record of unknown format {0}")]
    UnknownFormat(u8),
}

impl Txn {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TXN_FORMAT_MARK, TXN_FORMAT];
        // Every field of Txn is encodable; a failure here is a bug, not bad input.
        postcard::to_io(self, &mut out).expect("transactions always encode");
        out
    }
    pub fn decode(bytes: &[u8]) -> Result<Txn, DecodeError> {
        match bytes {
            [TXN_FORMAT_MARK, TXN_FORMAT, rest @ ..] => Ok(postcard::from_bytes(rest)?),
            [TXN_FORMAT_MARK, format, ..] => Err(DecodeError::UnknownFormat(*format)),
            legacy => Ok(postcard::from_bytes::<v1::Txn>(legacy)?.into()),
        }
    }
}

/// The transaction shapes of format 1 (before ACLs), exactly as they were serialized: only for
/// reading old logs. Field and variant order matter (postcard is not self-describing).
mod v1 {
    use crate::acl;
    use crate::op::CreateMode;
    use crate::zxid::{SessionId, Zxid};
    use bytes::Bytes;
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Txn {
        zxid: Zxid,
        time_ms: i64,
        origin: u32,
        session: SessionId,
        xid: i64,
        kind: TxnKind,
    }

    #[derive(Deserialize)]
    enum TxnKind {
        CreateSession {
            timeout_ms: u32,
            password: [u8; super::PASSWORD_BYTES],
        },
        CloseSession,
        Write(WriteOp),
    }

    #[derive(Deserialize)]
    enum WriteOp {
        Create {
            path: String,
            data: Bytes,
            mode: CreateMode,
        },
        Delete {
            path: String,
            version: i32,
        },
        SetData {
            path: String,
            data: Bytes,
            version: i32,
        },
        Check {
            path: String,
            version: i32,
        },
        Multi(Vec<WriteOp>),
    }

    impl From<Txn> for super::Txn {
        fn from(t: Txn) -> super::Txn {
            super::Txn {
                zxid: t.zxid,
                time_ms: t.time_ms,
                origin: t.origin,
                session: t.session,
                xid: t.xid,
                kind: match t.kind {
                    TxnKind::CreateSession {
                        timeout_ms,
                        password,
                    } => super::TxnKind::CreateSession {
                        timeout_ms,
                        password,
                    },
                    TxnKind::CloseSession => super::TxnKind::CloseSession,
                    TxnKind::Write(w) => super::TxnKind::Write(w.into()),
                },
            }
        }
    }

    impl From<WriteOp> for crate::op::WriteOp {
        fn from(w: WriteOp) -> crate::op::WriteOp {
            use crate::op::WriteOp as New;
            match w {
                // Before ACLs every node was open to everyone; it stays so.
                WriteOp::Create { path, data, mode } => New::Create {
                    path,
                    data,
                    mode,
                    acl: acl::open_acl(),
                },
                WriteOp::Delete { path, version } => New::Delete { path, version },
                WriteOp::SetData {
                    path,
                    data,
                    version,
                } => New::SetData {
                    path,
                    data,
                    version,
                },
                WriteOp::Check { path, version } => New::Check { path, version },
                WriteOp::Multi(ops) => New::Multi(ops.into_iter().map(Into::into).collect()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::CreateMode;

    #[test]
    fn transactions_round_trip_through_their_encoding() {
        let txn = Txn {
            zxid: Zxid::new(1, 2),
            time_ms: 1_700_000_000_000,
            origin: 2,
            session: SessionId(9),
            xid: 4,
            kind: TxnKind::Write(WriteOp::Create {
                path: "/a".into(),
                data: bytes::Bytes::from_static(b"x"),
                mode: CreateMode::EphemeralSequential,
                acl: crate::acl::parse_acl("ip:10.0.0.0/8:r,world:anyone:c").unwrap(),
            }),
        };
        assert_eq!(Txn::decode(&txn.encode()).unwrap(), txn);
        assert!(Txn::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(matches!(
            Txn::decode(&[0, 9, 1, 2]),
            Err(DecodeError::UnknownFormat(9))
        ));
        let refused = Txn {
            kind: TxnKind::Refused(Err(OpError::NoAuth {
                path: "/a".into(),
                perm: crate::acl::Perms::READ,
            })),
            ..txn
        };
        assert_eq!(Txn::decode(&refused.encode()).unwrap(), refused);
    }

    #[test]
    fn format_1_records_still_decode_with_open_acls() {
        // A multi record as coord wrote it before ACLs (bytes from that build's Txn::encode).
        const V1: &[u8] = &[
            0x87, 0x80, 0x80, 0x80, 0x30, 0xf6, 0xa1, 0xab, 0xfe, 0xf9, 0x62, 0x02, 0x81, 0x80,
            0x80, 0x80, 0x10, 0x0a, 0x02, 0x04, 0x04, 0x00, 0x02, 0x2f, 0x61, 0x01, 0x78, 0x03,
            0x03, 0x02, 0x2f, 0x62, 0x06, 0x02, 0x02, 0x2f, 0x62, 0x01, 0x79, 0x01, 0x01, 0x02,
            0x2f, 0x63, 0x00,
        ];
        let txn = Txn::decode(V1).unwrap();
        assert_eq!((txn.zxid, txn.origin, txn.xid), (Zxid::new(3, 7), 2, 5));
        assert_eq!(txn.session, SessionId(0x1_0000_0001));
        let open = crate::acl::open_acl;
        let b = |s: &'static [u8]| bytes::Bytes::from_static(s);
        assert_eq!(
            txn.kind,
            TxnKind::Write(WriteOp::Multi(vec![
                WriteOp::Create {
                    path: "/a".into(),
                    data: b(b"x"),
                    mode: CreateMode::EphemeralSequential,
                    acl: open(),
                },
                WriteOp::Check {
                    path: "/b".into(),
                    version: 3
                },
                WriteOp::SetData {
                    path: "/b".into(),
                    data: b(b"y"),
                    version: -1
                },
                WriteOp::Delete {
                    path: "/c".into(),
                    version: 0
                },
            ]))
        );
        // Written again, it takes the current format.
        assert_eq!(txn.encode()[..2], [TXN_FORMAT_MARK, TXN_FORMAT]);
    }
}
