//! The operations clients ask of coord, their results and their errors, as domain types. The
//! gRPC edge (`convert`) maps them to and from `drover_proto`; nothing here knows about the wire.

use crate::acl::{AclEntry, Perms};
use crate::zxid::{SessionId, Zxid};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Largest znode payload, as in ZooKeeper (`jute.maxbuffer`'s default).
pub const ZNODE_BYTES_MAX: usize = 1024 * 1024;

/// Most ops in one `multi`.
pub const MULTI_OPS_MAX: usize = 1024;

/// A version of -1 matches any version, as in ZooKeeper.
pub const ANY_VERSION: i32 = -1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateMode {
    Persistent,
    Ephemeral,
    PersistentSequential,
    EphemeralSequential,
}

impl CreateMode {
    pub fn is_ephemeral(self) -> bool {
        matches!(
            self,
            CreateMode::Ephemeral | CreateMode::EphemeralSequential
        )
    }
    pub fn is_sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential | CreateMode::EphemeralSequential
        )
    }
}

/// ZooKeeper's stat structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stat {
    /// zxid of the transaction that created the node.
    pub czxid: Zxid,
    /// zxid of the transaction that last changed its data.
    pub mzxid: Zxid,
    /// zxid of the transaction that last changed its children.
    pub pzxid: Zxid,
    /// Creation time, ms since the Unix epoch (the leader's clock).
    pub ctime: i64,
    pub mtime: i64,
    /// Number of changes to the data.
    pub version: i32,
    /// Number of changes to the children.
    pub cversion: i32,
    /// Number of changes to the ACL.
    pub aversion: i32,
    /// Owning session of an ephemeral node, 0 otherwise.
    pub ephemeral_owner: u64,
    pub data_length: i32,
    pub num_children: i32,
}

/// A write: the part of a request that becomes a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Needs CREATE on the parent. `acl` is the new node's (see `acl::open_acl` for
    /// ZooKeeper's default); its `auth` entries are expanded by the leader before it is logged.
    Create {
        path: String,
        data: Bytes,
        mode: CreateMode,
        acl: Vec<AclEntry>,
    },
    /// Needs DELETE on the parent.
    Delete { path: String, version: i32 },
    /// Needs WRITE.
    SetData {
        path: String,
        data: Bytes,
        version: i32,
    },
    /// Needs READ (as in ZooKeeper, since the check tells the version).
    Check { path: String, version: i32 },
    /// All or nothing. Holds only `Create`, `Delete`, `SetData` and `Check`.
    Multi(Vec<WriteOp>),
    /// Replaces the ACL if the node's ACL version (`aversion`) is `version`, and bumps it. Needs
    /// ADMIN. Fires no watch, as in ZooKeeper.
    SetAcl {
        path: String,
        acl: Vec<AclEntry>,
        version: i32,
    },
}

/// A read, or a request about the session itself, served by the server the client is connected
/// to. ACLs are checked there, with the connection's ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// Needs READ, also for the watch.
    GetData {
        path: String,
        watch: bool,
    },
    /// Not ACL-checked, as in ZooKeeper.
    Exists {
        path: String,
        watch: bool,
    },
    /// Needs READ, also for the watch.
    GetChildren {
        path: String,
        watch: bool,
    },
    /// Needs READ or ADMIN; without ADMIN, digest ids come back without their hash.
    GetAcl {
        path: String,
    },
    /// Adds an id to this connection's auth (`acl::authenticate`): `digest` with `user:password`.
    AddAuth {
        scheme: String,
        auth: Bytes,
    },
    /// Needs READ on the node if it exists.
    AddWatch {
        path: String,
        recursive: bool,
    },
    RemoveWatches {
        path: String,
    },
    SetWatches(SetWatches),
    /// Answered once every write committed before it has been applied here.
    Sync {
        path: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetWatches {
    pub relative_zxid: Zxid,
    pub data: Vec<String>,
    pub exist: Vec<String>,
    pub child: Vec<String>,
    pub persistent: Vec<String>,
    pub persistent_recursive: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write(WriteOp),
    Read(ReadOp),
}

/// What a successful op returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Created {
        path: String,
        stat: Stat,
    },
    Deleted,
    Stat(Stat),
    /// `exists` on a missing node.
    NoStat,
    Checked,
    Data {
        data: Bytes,
        stat: Stat,
    },
    Children {
        children: Vec<String>,
        stat: Stat,
    },
    Acl {
        acl: Vec<AclEntry>,
        stat: Stat,
    },
    /// One entry per op, in order. When any op fails, every entry is an error: the failing op's
    /// own, and `RuntimeInconsistency` for the others.
    Multi(Vec<Result<OpResult, OpError>>),
    Empty,
}

/// Why a single op failed. Each variant maps to its own wire error code.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpError {
    #[error("no node at {0}")]
    NoNode(String),
    #[error("node {0} already exists")]
    NodeExists(String),
    #[error("bad version for {path}: expected {expected}, the node is at version {actual}")]
    BadVersion {
        path: String,
        expected: i32,
        actual: i32,
    },
    #[error("{0} is ephemeral and cannot have children")]
    NoChildrenForEphemerals(String),
    #[error("{0} has children; delete them first")]
    NotEmpty(String),
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: String },
    #[error("data for {path} is {len} bytes; the limit is {max} bytes")]
    DataTooLarge {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("bad arguments: {0}")]
    BadArguments(String),
    #[error("session {0} has expired")]
    SessionExpired(SessionId),
    #[error("session {0} is connected to another server")]
    SessionMoved(SessionId),
    #[error("rolled back: another op of the multi failed")]
    RuntimeInconsistency,
    #[error("too many watches for this session (limit {0})")]
    TooManyWatches(usize),
    #[error("too many requests in flight (limit {0}); retry later")]
    TooManyRequests(usize),
    #[error("wrong password for session {0}")]
    AuthFailed(SessionId),
    #[error("this server is not serving: {0}")]
    NotServing(String),
    /// ZooKeeper's NOAUTH: no entry of `path`'s ACL grants `perm` to any id of the session.
    #[error(
        "not authorized: the ACL of {path} grants {} to none of this session's ids \
         (addAuth the credentials it names)",
        perm.names()
    )]
    NoAuth { path: String, perm: Perms },
    /// ZooKeeper's INVALIDACL: the ACL given for `path` cannot be stored; `reason` names the entry.
    #[error("invalid ACL for {path}: {reason}")]
    InvalidAcl { path: String, reason: String },
    /// `addAuth` refused: unknown scheme, malformed credentials, or the session's id limit.
    #[error("addAuth {scheme}: {reason}")]
    BadAuth { scheme: String, reason: String },
    /// The connection's path grants (`grants::PathGrants`, set by whoever admitted the stream:
    /// a master's token check) do not cover `path` for `access`. Checked by the server the
    /// client is connected to, before the op is queued; never logged.
    #[error("not authorized: {by} has no coord {access} grant covering {path}")]
    NotGranted {
        path: String,
        access: String,
        by: String,
    },
}

/// Kinds of watch events, as in ZooKeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    NodeCreated,
    NodeDeleted,
    NodeDataChanged,
    NodeChildrenChanged,
}

/// A watch notification for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventType,
    pub path: String,
    pub zxid: Zxid,
}

/// The code of an error, the part callers branch on; the wire carries it with a one-line message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    NoNode,
    NodeExists,
    BadVersion,
    NoChildrenForEphemerals,
    NotEmpty,
    BadArguments,
    DataTooLarge,
    SessionExpired,
    SessionMoved,
    ConnectionLoss,
    NotLeader,
    NoQuorum,
    TooManyWatches,
    RuntimeInconsistency,
    AuthFailed,
    TooManyRequests,
    SystemError,
    NoAuth,
    InvalidAcl,
}

impl OpError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OpError::NoNode(_) => ErrorCode::NoNode,
            OpError::NodeExists(_) => ErrorCode::NodeExists,
            OpError::BadVersion { .. } => ErrorCode::BadVersion,
            OpError::NoChildrenForEphemerals(_) => ErrorCode::NoChildrenForEphemerals,
            OpError::NotEmpty(_) => ErrorCode::NotEmpty,
            OpError::BadPath { .. } | OpError::BadArguments(_) => ErrorCode::BadArguments,
            OpError::DataTooLarge { .. } => ErrorCode::DataTooLarge,
            OpError::SessionExpired(_) => ErrorCode::SessionExpired,
            OpError::SessionMoved(_) => ErrorCode::SessionMoved,
            OpError::RuntimeInconsistency => ErrorCode::RuntimeInconsistency,
            OpError::TooManyWatches(_) => ErrorCode::TooManyWatches,
            OpError::TooManyRequests(_) => ErrorCode::TooManyRequests,
            OpError::AuthFailed(_) => ErrorCode::AuthFailed,
            OpError::NotServing(_) => ErrorCode::NoQuorum,
            OpError::NoAuth { .. } => ErrorCode::NoAuth,
            OpError::InvalidAcl { .. } => ErrorCode::InvalidAcl,
            OpError::BadAuth { .. } => ErrorCode::AuthFailed,
            OpError::NotGranted { .. } => ErrorCode::NoAuth,
        }
    }

    /// Failures that depend on who asks: the leader answers these itself (`prep`).
    pub fn is_access_error(&self) -> bool {
        matches!(self, OpError::NoAuth { .. } | OpError::InvalidAcl { .. })
    }
}
