//! Transactions: every change of replicated state, as logged and as applied. A transaction holds
//! the request itself, not its effect; applying it to the tree is deterministic, so every replica
//! that applies the same sequence reaches the same state and the same results.

use crate::op::WriteOp;
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
}

/// Why a stored transaction could not be decoded.
#[derive(thiserror::Error, Debug)]
#[error("undecodable transaction record: {0}")]
pub struct DecodeError(#[from] postcard::Error);

impl Txn {
    pub fn encode(&self) -> Vec<u8> {
        // Every field of Txn is encodable; a failure here is a bug, not bad input.
        postcard::to_stdvec(self).expect("transactions always encode")
    }
    pub fn decode(bytes: &[u8]) -> Result<Txn, DecodeError> {
        Ok(postcard::from_bytes(bytes)?)
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
            }),
        };
        assert_eq!(Txn::decode(&txn.encode()).unwrap(), txn);
        assert!(Txn::decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
