//! The gRPC edge: conversions between the wire types of `drover_proto::v1` and coord's domain
//! types (`op`, `zxid`). Both sides use it: the server turns requests into `Op`s and results into
//! `Reply`s; the client does the reverse. Nothing else in coord touches prost types.
//!
//! The wire is lossy in two places, on purpose: `Deleted`, `Checked` and `Empty` all travel as
//! `Empty` (the client knows which op it sent, so it knows what an empty result means), and an
//! error travels as a code plus its one-line message, so the client gets a `ServerError`, not the
//! server's `OpError`. Paths are not validated here; the server does that with `path::validate`.

use crate::acl::{self, AclEntry, Id, Perms};
use crate::op::{
    CreateMode, ErrorCode, EventType, MULTI_OPS_MAX, Op, OpError, OpResult, ReadOp, SetWatches,
    Stat, WatchEvent, WriteOp,
};
use crate::zxid::Zxid;
use drover_proto::v1;
use std::fmt;

/// An error as the client receives it: the code to branch on and the server's one-line reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub code: ErrorCode,
    pub message: String,
    /// For a failed `multi`: the index of the op that failed (the others were rolled back).
    pub op_index: Option<usize>,
}

impl ServerError {
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.op_index {
            Some(i) => write!(f, "op {i} of the multi failed: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ServerError {}

/// A server message the client cannot make sense of (an unknown enum value, a missing field).
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
#[error("malformed message from the server: {0}")]
pub struct MalformedMessage(pub String);

// ---------------------------------------------------------------------------------------------
// Server side: requests in, replies and events out.
// ---------------------------------------------------------------------------------------------

/// Decodes a client request into its xid and domain op. A request without an op, with an
/// unknown enum value, or a multi holding anything but create/delete/set_data/check is refused
/// with `BadArguments` naming the field.
pub fn request_from_proto(req: v1::Request) -> Result<(i64, Op), (i64, OpError)> {
    let xid = req.xid;
    op_from_proto(req.op)
        .map(|op| (xid, op))
        .map_err(|e| (xid, e))
}

fn op_from_proto(op: Option<v1::request::Op>) -> Result<Op, OpError> {
    use v1::request::Op as P;
    let bad = |what: String| Err(OpError::BadArguments(what));
    let Some(op) = op else {
        return bad("request.op is missing".into());
    };
    Ok(match op {
        P::Create(c) => Op::Write(WriteOp::Create {
            mode: create_mode_from_proto(c.mode)?,
            // No ACL on the wire: ZooKeeper's default (and what clients before ACLs meant).
            acl: if c.acl.is_empty() {
                acl::open_acl()
            } else {
                acl_from_proto("create.acl", &c.path, c.acl)?
            },
            path: c.path,
            data: c.data.into(),
        }),
        P::SetAcl(a) => Op::Write(WriteOp::SetAcl {
            acl: acl_from_proto("set_acl.acl", &a.path, a.acl)?,
            path: a.path,
            version: a.version,
        }),
        P::GetAcl(g) => Op::Read(ReadOp::GetAcl { path: g.path }),
        P::AddAuth(a) => Op::Read(ReadOp::AddAuth {
            scheme: a.scheme,
            auth: a.auth.into(),
        }),
        P::Delete(d) => Op::Write(WriteOp::Delete {
            path: d.path,
            version: d.version,
        }),
        P::SetData(s) => Op::Write(WriteOp::SetData {
            path: s.path,
            data: s.data.into(),
            version: s.version,
        }),
        P::Check(c) => Op::Write(WriteOp::Check {
            path: c.path,
            version: c.version,
        }),
        P::Multi(m) => {
            if m.ops.len() > MULTI_OPS_MAX {
                return bad(format!(
                    "multi.ops holds {} ops; the limit is {MULTI_OPS_MAX}",
                    m.ops.len()
                ));
            }
            let mut ops = Vec::with_capacity(m.ops.len());
            for (i, sub) in m.ops.into_iter().enumerate() {
                match sub.op {
                    Some(P::Create(_) | P::Delete(_) | P::SetData(_) | P::Check(_)) => {
                        match op_from_proto(sub.op)? {
                            Op::Write(w) => ops.push(w),
                            // The arms above only decode to writes.
                            Op::Read(_) => unreachable!("create/delete/set_data/check are writes"),
                        }
                    }
                    Some(other) => {
                        return bad(format!(
                            "multi.ops[{i}] is {}; a multi holds only create, delete, set_data \
                             and check",
                            request_op_name(&other)
                        ));
                    }
                    None => return bad(format!("multi.ops[{i}].op is missing")),
                }
            }
            Op::Write(WriteOp::Multi(ops))
        }
        P::GetData(g) => Op::Read(ReadOp::GetData {
            path: g.path,
            watch: g.watch,
        }),
        P::Exists(e) => Op::Read(ReadOp::Exists {
            path: e.path,
            watch: e.watch,
        }),
        P::GetChildren(g) => Op::Read(ReadOp::GetChildren {
            path: g.path,
            watch: g.watch,
        }),
        P::Sync(s) => Op::Read(ReadOp::Sync { path: s.path }),
        P::AddWatch(a) => {
            let recursive = match v1::WatchMode::try_from(a.mode) {
                Ok(v1::WatchMode::PersistentWatch) => false,
                Ok(v1::WatchMode::PersistentRecursive) => true,
                Err(_) => return bad(format!("add_watch.mode: unknown watch mode {}", a.mode)),
            };
            Op::Read(ReadOp::AddWatch {
                path: a.path,
                recursive,
            })
        }
        P::RemoveWatches(r) => Op::Read(ReadOp::RemoveWatches { path: r.path }),
        P::SetWatches(s) => Op::Read(ReadOp::SetWatches(SetWatches {
            relative_zxid: Zxid(s.relative_zxid),
            data: s.data,
            exist: s.exist,
            child: s.child,
            persistent: s.persistent,
            persistent_recursive: s.persistent_recursive,
        })),
    })
}

fn request_op_name(op: &v1::request::Op) -> &'static str {
    use v1::request::Op as P;
    match op {
        P::Create(_) => "create",
        P::Delete(_) => "delete",
        P::SetData(_) => "set_data",
        P::Check(_) => "check",
        P::Multi(_) => "multi",
        P::GetData(_) => "get_data",
        P::Exists(_) => "exists",
        P::GetChildren(_) => "get_children",
        P::Sync(_) => "sync",
        P::AddWatch(_) => "add_watch",
        P::SetWatches(_) => "set_watches",
        P::RemoveWatches(_) => "remove_watches",
        P::SetAcl(_) => "set_acl",
        P::GetAcl(_) => "get_acl",
        P::AddAuth(_) => "add_auth",
    }
}

/// Decodes an ACL; too many entries or perms outside ZooKeeper's bits are `InvalidAcl`, naming
/// the field (the entries themselves are validated by the server, which names the entry).
fn acl_from_proto(field: &str, path: &str, acl: Vec<v1::Acl>) -> Result<Vec<AclEntry>, OpError> {
    let invalid = |reason: String| OpError::InvalidAcl {
        path: path.to_string(),
        reason,
    };
    if acl.len() > acl::ACL_ENTRIES_PER_NODE_MAX {
        return Err(invalid(format!(
            "{field} has {} entries; the limit is {}",
            acl.len(),
            acl::ACL_ENTRIES_PER_NODE_MAX
        )));
    }
    acl.into_iter()
        .enumerate()
        .map(|(i, a)| {
            Ok(AclEntry {
                perms: Perms::from_bits(a.perms)
                    .map_err(|why| invalid(format!("{field}[{i}]: {why}")))?,
                id: Id {
                    scheme: a.scheme,
                    id: a.id,
                },
            })
        })
        .collect()
}

fn acl_to_proto(acl: &[AclEntry]) -> Vec<v1::Acl> {
    acl.iter()
        .map(|e| v1::Acl {
            perms: e.perms.bits(),
            scheme: e.id.scheme.clone(),
            id: e.id.id.clone(),
        })
        .collect()
}

/// The client's decoding of an ACL: perms outside ZooKeeper's bits are a malformed reply.
fn acl_from_reply(acl: Vec<v1::Acl>) -> Result<Vec<AclEntry>, String> {
    acl.into_iter()
        .map(|a| {
            Ok(AclEntry {
                perms: Perms::from_bits(a.perms)?,
                id: Id {
                    scheme: a.scheme,
                    id: a.id,
                },
            })
        })
        .collect()
}

fn create_mode_from_proto(mode: i32) -> Result<CreateMode, OpError> {
    match v1::CreateMode::try_from(mode) {
        Ok(v1::CreateMode::Persistent) => Ok(CreateMode::Persistent),
        Ok(v1::CreateMode::Ephemeral) => Ok(CreateMode::Ephemeral),
        Ok(v1::CreateMode::PersistentSequential) => Ok(CreateMode::PersistentSequential),
        Ok(v1::CreateMode::EphemeralSequential) => Ok(CreateMode::EphemeralSequential),
        Err(_) => Err(OpError::BadArguments(format!(
            "create.mode: unknown create mode {mode}"
        ))),
    }
}

fn create_mode_to_proto(mode: CreateMode) -> v1::CreateMode {
    match mode {
        CreateMode::Persistent => v1::CreateMode::Persistent,
        CreateMode::Ephemeral => v1::CreateMode::Ephemeral,
        CreateMode::PersistentSequential => v1::CreateMode::PersistentSequential,
        CreateMode::EphemeralSequential => v1::CreateMode::EphemeralSequential,
    }
}

/// Encodes the answer to request `xid`. `zxid` is the last transaction the server had applied. An
/// error becomes its code plus `err.to_string()`. A failed multi carries the failing op's code and
/// message at the top level as well as every op's own result, as ZooKeeper's multi header does.
pub fn reply_to_proto(xid: i64, zxid: Zxid, result: &Result<OpResult, OpError>) -> v1::Reply {
    let mut reply = v1::Reply {
        xid,
        zxid: zxid.0,
        ..Default::default()
    };
    match result {
        Ok(ok) => {
            if let OpResult::Multi(results) = ok
                && let Some(err) = multi_failure(results)
            {
                reply.error = error_code_to_proto(err.code()) as i32;
                reply.message = err.to_string();
            }
            reply.result = result_to_proto(xid, zxid, ok);
        }
        Err(err) => {
            reply.error = error_code_to_proto(err.code()) as i32;
            reply.message = err.to_string();
        }
    }
    reply
}

/// The error of the op that made a multi fail: the first one that is not a rollback.
fn multi_failure(results: &[Result<OpResult, OpError>]) -> Option<&OpError> {
    let errors = || results.iter().filter_map(|r| r.as_ref().err());
    errors()
        .find(|e| **e != OpError::RuntimeInconsistency)
        .or_else(|| errors().next())
}

fn result_to_proto(xid: i64, zxid: Zxid, result: &OpResult) -> Option<v1::reply::Result> {
    use v1::reply::Result as R;
    match result {
        OpResult::Created { path, stat } => Some(R::Create(v1::CreateResult {
            path: path.clone(),
            stat: Some(stat_to_proto(stat)),
        })),
        OpResult::Deleted | OpResult::Checked | OpResult::Empty => Some(R::Empty(v1::Empty {})),
        OpResult::Stat(stat) => Some(R::Stat(stat_to_proto(stat))),
        OpResult::NoStat => None,
        OpResult::Data { data, stat } => Some(R::Data(v1::DataResult {
            data: data.to_vec(),
            stat: Some(stat_to_proto(stat)),
        })),
        OpResult::Children { children, stat } => Some(R::Children(v1::ChildrenResult {
            children: children.clone(),
            stat: Some(stat_to_proto(stat)),
        })),
        OpResult::Acl { acl, stat } => Some(R::Acl(v1::AclResult {
            acl: acl_to_proto(acl),
            stat: Some(stat_to_proto(stat)),
        })),
        OpResult::Multi(results) => Some(R::Multi(v1::MultiResult {
            results: results
                .iter()
                .map(|r| reply_to_proto(xid, zxid, r))
                .collect(),
        })),
    }
}

pub fn event_to_proto(e: &WatchEvent) -> v1::WatchEvent {
    let kind = match e.kind {
        EventType::NodeCreated => v1::EventType::NodeCreated,
        EventType::NodeDeleted => v1::EventType::NodeDeleted,
        EventType::NodeDataChanged => v1::EventType::NodeDataChanged,
        EventType::NodeChildrenChanged => v1::EventType::NodeChildrenChanged,
    };
    v1::WatchEvent {
        r#type: kind as i32,
        path: e.path.clone(),
        zxid: e.zxid.0,
    }
}

pub fn stat_to_proto(s: &Stat) -> v1::Stat {
    v1::Stat {
        czxid: s.czxid.0,
        mzxid: s.mzxid.0,
        pzxid: s.pzxid.0,
        ctime: s.ctime,
        mtime: s.mtime,
        version: s.version,
        cversion: s.cversion,
        aversion: s.aversion,
        ephemeral_owner: s.ephemeral_owner,
        data_length: s.data_length,
        num_children: s.num_children,
    }
}

pub fn error_code_to_proto(code: ErrorCode) -> v1::ErrorCode {
    match code {
        ErrorCode::NoNode => v1::ErrorCode::NoNode,
        ErrorCode::NodeExists => v1::ErrorCode::NodeExists,
        ErrorCode::BadVersion => v1::ErrorCode::BadVersion,
        ErrorCode::NoChildrenForEphemerals => v1::ErrorCode::NoChildrenForEphemerals,
        ErrorCode::NotEmpty => v1::ErrorCode::NotEmpty,
        ErrorCode::BadArguments => v1::ErrorCode::BadArguments,
        ErrorCode::DataTooLarge => v1::ErrorCode::DataTooLarge,
        ErrorCode::SessionExpired => v1::ErrorCode::SessionExpired,
        ErrorCode::SessionMoved => v1::ErrorCode::SessionMoved,
        ErrorCode::ConnectionLoss => v1::ErrorCode::ConnectionLoss,
        ErrorCode::NotLeader => v1::ErrorCode::NotLeader,
        ErrorCode::NoQuorum => v1::ErrorCode::NoQuorum,
        ErrorCode::TooManyWatches => v1::ErrorCode::TooManyWatches,
        ErrorCode::RuntimeInconsistency => v1::ErrorCode::RuntimeInconsistency,
        ErrorCode::AuthFailed => v1::ErrorCode::AuthFailed,
        ErrorCode::TooManyRequests => v1::ErrorCode::TooManyRequests,
        ErrorCode::SystemError => v1::ErrorCode::SystemError,
        ErrorCode::NoAuth => v1::ErrorCode::NoAuth,
        ErrorCode::InvalidAcl => v1::ErrorCode::InvalidAcl,
    }
}

/// The domain code of a wire code; `None` for `OK`. An unknown value (a newer server) reads as
/// `SystemError`, so the caller still sees a failure.
pub fn error_code_from_proto(code: i32) -> Option<ErrorCode> {
    let Ok(code) = v1::ErrorCode::try_from(code) else {
        return Some(ErrorCode::SystemError);
    };
    Some(match code {
        v1::ErrorCode::Ok => return None,
        v1::ErrorCode::NoNode => ErrorCode::NoNode,
        v1::ErrorCode::NodeExists => ErrorCode::NodeExists,
        v1::ErrorCode::BadVersion => ErrorCode::BadVersion,
        v1::ErrorCode::NoChildrenForEphemerals => ErrorCode::NoChildrenForEphemerals,
        v1::ErrorCode::NotEmpty => ErrorCode::NotEmpty,
        v1::ErrorCode::BadArguments => ErrorCode::BadArguments,
        v1::ErrorCode::DataTooLarge => ErrorCode::DataTooLarge,
        v1::ErrorCode::SessionExpired => ErrorCode::SessionExpired,
        v1::ErrorCode::SessionMoved => ErrorCode::SessionMoved,
        v1::ErrorCode::ConnectionLoss => ErrorCode::ConnectionLoss,
        v1::ErrorCode::NotLeader => ErrorCode::NotLeader,
        v1::ErrorCode::NoQuorum => ErrorCode::NoQuorum,
        v1::ErrorCode::TooManyWatches => ErrorCode::TooManyWatches,
        v1::ErrorCode::RuntimeInconsistency => ErrorCode::RuntimeInconsistency,
        v1::ErrorCode::AuthFailed => ErrorCode::AuthFailed,
        v1::ErrorCode::TooManyRequests => ErrorCode::TooManyRequests,
        v1::ErrorCode::SystemError => ErrorCode::SystemError,
        v1::ErrorCode::NoAuth => ErrorCode::NoAuth,
        v1::ErrorCode::InvalidAcl => ErrorCode::InvalidAcl,
    })
}

// ---------------------------------------------------------------------------------------------
// Client side: requests out, replies and events in.
// ---------------------------------------------------------------------------------------------

/// Encodes `op` as request `xid`. Ops inside a multi carry xid 0 (the server ignores them).
pub fn op_to_proto(xid: i64, op: &Op) -> v1::Request {
    use v1::request::Op as P;
    let op = match op {
        Op::Write(w) => write_op_to_proto(w),
        Op::Read(r) => match r {
            ReadOp::GetData { path, watch } => P::GetData(v1::GetData {
                path: path.clone(),
                watch: *watch,
            }),
            ReadOp::Exists { path, watch } => P::Exists(v1::Exists {
                path: path.clone(),
                watch: *watch,
            }),
            ReadOp::GetChildren { path, watch } => P::GetChildren(v1::GetChildren {
                path: path.clone(),
                watch: *watch,
            }),
            ReadOp::AddWatch { path, recursive } => {
                let mode = if *recursive {
                    v1::WatchMode::PersistentRecursive
                } else {
                    v1::WatchMode::PersistentWatch
                };
                P::AddWatch(v1::AddWatch {
                    path: path.clone(),
                    mode: mode as i32,
                })
            }
            ReadOp::RemoveWatches { path } => {
                P::RemoveWatches(v1::RemoveWatches { path: path.clone() })
            }
            ReadOp::SetWatches(s) => P::SetWatches(v1::SetWatches {
                relative_zxid: s.relative_zxid.0,
                data: s.data.clone(),
                exist: s.exist.clone(),
                child: s.child.clone(),
                persistent: s.persistent.clone(),
                persistent_recursive: s.persistent_recursive.clone(),
            }),
            ReadOp::Sync { path } => P::Sync(v1::Sync { path: path.clone() }),
            ReadOp::GetAcl { path } => P::GetAcl(v1::GetAcl { path: path.clone() }),
            ReadOp::AddAuth { scheme, auth } => P::AddAuth(v1::AddAuth {
                scheme: scheme.clone(),
                auth: auth.to_vec(),
            }),
        },
    };
    v1::Request { xid, op: Some(op) }
}

fn write_op_to_proto(op: &WriteOp) -> v1::request::Op {
    use v1::request::Op as P;
    match op {
        WriteOp::Create {
            path,
            data,
            mode,
            acl,
        } => P::Create(v1::Create {
            path: path.clone(),
            data: data.to_vec(),
            mode: create_mode_to_proto(*mode) as i32,
            acl: acl_to_proto(acl),
        }),
        WriteOp::SetAcl { path, acl, version } => P::SetAcl(v1::SetAcl {
            path: path.clone(),
            acl: acl_to_proto(acl),
            version: *version,
        }),
        WriteOp::Delete { path, version } => P::Delete(v1::Delete {
            path: path.clone(),
            version: *version,
        }),
        WriteOp::SetData {
            path,
            data,
            version,
        } => P::SetData(v1::SetData {
            path: path.clone(),
            data: data.to_vec(),
            version: *version,
        }),
        WriteOp::Check { path, version } => P::Check(v1::Check {
            path: path.clone(),
            version: *version,
        }),
        WriteOp::Multi(ops) => P::Multi(v1::Multi {
            ops: ops
                .iter()
                .map(|o| v1::Request {
                    xid: 0,
                    op: Some(write_op_to_proto(o)),
                })
                .collect(),
        }),
    }
}

/// Decodes a reply. A reply without a result reads as `NoStat` (`exists` on a missing node); an
/// `Empty` result reads as `OpResult::Empty` whatever the op was. A failed multi reads as the
/// failing op's error, with its index.
pub fn reply_from_proto(reply: v1::Reply) -> Result<OpResult, ServerError> {
    if let Some(code) = error_code_from_proto(reply.error) {
        if let Some(v1::reply::Result::Multi(m)) = &reply.result
            && let Some(failed) = failed_op(&m.results)
        {
            return Err(failed);
        }
        return Err(ServerError {
            code,
            message: reply.message,
            op_index: None,
        });
    }
    let result = match reply.result {
        None => OpResult::NoStat,
        Some(r) => result_from_proto(r)?,
    };
    Ok(result)
}

/// The first op of a multi's results that failed for a reason of its own (not a rollback).
fn failed_op(results: &[v1::Reply]) -> Option<ServerError> {
    let mut fallback = None;
    for (i, r) in results.iter().enumerate() {
        if let Some(code) = error_code_from_proto(r.error) {
            let err = ServerError {
                code,
                message: r.message.clone(),
                op_index: Some(i),
            };
            if code != ErrorCode::RuntimeInconsistency {
                return Some(err);
            }
            fallback.get_or_insert(err);
        }
    }
    fallback
}

fn result_from_proto(r: v1::reply::Result) -> Result<OpResult, ServerError> {
    use v1::reply::Result as R;
    Ok(match r {
        R::Create(c) => OpResult::Created {
            path: c.path,
            stat: opt_stat(c.stat.as_ref()),
        },
        R::Stat(s) => OpResult::Stat(stat_from_proto(&s)),
        R::Data(d) => OpResult::Data {
            data: d.data.into(),
            stat: opt_stat(d.stat.as_ref()),
        },
        R::Children(c) => OpResult::Children {
            children: c.children,
            stat: opt_stat(c.stat.as_ref()),
        },
        R::Multi(m) => {
            let mut results = Vec::with_capacity(m.results.len());
            for (i, r) in m.results.into_iter().enumerate() {
                // A successful multi has only successful ops; anything else is a server bug, and
                // the caller should see it rather than a half-decoded result.
                results.push(Ok(reply_from_proto(r).map_err(|e| ServerError {
                    op_index: Some(i),
                    ..e
                })?));
            }
            OpResult::Multi(results)
        }
        R::Acl(a) => OpResult::Acl {
            acl: acl_from_reply(a.acl).map_err(|why| ServerError {
                code: ErrorCode::SystemError,
                message: format!("malformed ACL in the reply: {why}"),
                op_index: None,
            })?,
            stat: opt_stat(a.stat.as_ref()),
        },
        R::Empty(_) => OpResult::Empty,
    })
}

fn opt_stat(s: Option<&v1::Stat>) -> Stat {
    s.map(stat_from_proto).unwrap_or_default()
}

pub fn stat_from_proto(s: &v1::Stat) -> Stat {
    Stat {
        czxid: Zxid(s.czxid),
        mzxid: Zxid(s.mzxid),
        pzxid: Zxid(s.pzxid),
        ctime: s.ctime,
        mtime: s.mtime,
        version: s.version,
        cversion: s.cversion,
        aversion: s.aversion,
        ephemeral_owner: s.ephemeral_owner,
        data_length: s.data_length,
        num_children: s.num_children,
    }
}

/// Decodes a watch event; `NONE` or an unknown type is malformed (the server never sends them).
pub fn event_from_proto(e: v1::WatchEvent) -> Result<WatchEvent, MalformedMessage> {
    let kind = match v1::EventType::try_from(e.r#type) {
        Ok(v1::EventType::NodeCreated) => EventType::NodeCreated,
        Ok(v1::EventType::NodeDeleted) => EventType::NodeDeleted,
        Ok(v1::EventType::NodeDataChanged) => EventType::NodeDataChanged,
        Ok(v1::EventType::NodeChildrenChanged) => EventType::NodeChildrenChanged,
        Ok(v1::EventType::None) | Err(_) => {
            return Err(MalformedMessage(format!(
                "watch event for {} has type {}",
                e.path, e.r#type
            )));
        }
    };
    Ok(WatchEvent {
        kind,
        path: e.path,
        zxid: Zxid(e.zxid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stat() -> Stat {
        Stat {
            czxid: Zxid::new(1, 2),
            mzxid: Zxid::new(1, 3),
            pzxid: Zxid::new(1, 4),
            ctime: 1_700_000_000_000,
            mtime: 1_700_000_000_001,
            version: 5,
            cversion: 6,
            aversion: 0,
            ephemeral_owner: 0x42,
            data_length: 3,
            num_children: 7,
        }
    }

    fn all_ops() -> Vec<Op> {
        let create = |mode| WriteOp::Create {
            path: "/a".into(),
            data: Bytes::from_static(b"x"),
            mode,
            acl: crate::acl::open_acl(),
        };
        vec![
            Op::Write(create(CreateMode::Persistent)),
            Op::Write(create(CreateMode::Ephemeral)),
            Op::Write(create(CreateMode::PersistentSequential)),
            Op::Write(create(CreateMode::EphemeralSequential)),
            Op::Write(WriteOp::Delete {
                path: "/a".into(),
                version: -1,
            }),
            Op::Write(WriteOp::SetData {
                path: "/a".into(),
                data: Bytes::new(),
                version: 3,
            }),
            Op::Write(WriteOp::Check {
                path: "/a".into(),
                version: 0,
            }),
            Op::Write(WriteOp::Multi(vec![
                create(CreateMode::Persistent),
                WriteOp::Check {
                    path: "/b".into(),
                    version: 1,
                },
                WriteOp::SetData {
                    path: "/b".into(),
                    data: Bytes::from_static(b"y"),
                    version: -1,
                },
                WriteOp::Delete {
                    path: "/c".into(),
                    version: 2,
                },
            ])),
            Op::Write(WriteOp::Multi(vec![])),
            Op::Read(ReadOp::GetData {
                path: "/a".into(),
                watch: true,
            }),
            Op::Read(ReadOp::Exists {
                path: "/a".into(),
                watch: false,
            }),
            Op::Read(ReadOp::GetChildren {
                path: "/".into(),
                watch: true,
            }),
            Op::Read(ReadOp::AddWatch {
                path: "/a".into(),
                recursive: false,
            }),
            Op::Read(ReadOp::AddWatch {
                path: "/a".into(),
                recursive: true,
            }),
            Op::Read(ReadOp::RemoveWatches { path: "/a".into() }),
            Op::Read(ReadOp::SetWatches(SetWatches {
                relative_zxid: Zxid::new(2, 9),
                data: vec!["/d".into()],
                exist: vec!["/e".into()],
                child: vec!["/c".into()],
                persistent: vec!["/p".into()],
                persistent_recursive: vec!["/r".into()],
            })),
            Op::Read(ReadOp::Sync { path: "/".into() }),
            Op::Write(WriteOp::Create {
                path: "/locked".into(),
                data: Bytes::new(),
                mode: CreateMode::Persistent,
                acl: crate::acl::parse_acl(
                    "digest:bob:xQJmxLMiHGwaqBvst5y6rkB6HQs=:cdrwa,ip:::1/64:r",
                )
                .unwrap(),
            }),
            Op::Write(WriteOp::SetAcl {
                path: "/locked".into(),
                acl: crate::acl::parse_acl("world:anyone:r").unwrap(),
                version: 2,
            }),
            Op::Read(ReadOp::GetAcl {
                path: "/locked".into(),
            }),
            Op::Read(ReadOp::AddAuth {
                scheme: "digest".into(),
                auth: Bytes::from_static(b"bob:pw"),
            }),
        ]
    }

    #[test]
    fn every_op_round_trips_through_a_request() {
        for (i, op) in all_ops().into_iter().enumerate() {
            let xid = i as i64 + 10;
            let req = op_to_proto(xid, &op);
            assert_eq!(request_from_proto(req), Ok((xid, op)));
        }
    }

    #[test]
    fn a_request_without_an_op_is_refused_naming_the_field() {
        let err = request_from_proto(v1::Request { xid: 7, op: None }).unwrap_err();
        assert_eq!(err.0, 7);
        assert!(
            matches!(&err.1, OpError::BadArguments(m) if m.contains("request.op")),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_enum_values_are_refused_naming_the_field() {
        let req = v1::Request {
            xid: 1,
            op: Some(v1::request::Op::Create(v1::Create {
                path: "/a".into(),
                data: vec![],
                mode: 9,
                acl: vec![],
            })),
        };
        let (_, err) = request_from_proto(req).unwrap_err();
        assert!(err.to_string().contains("create.mode"), "{err}");

        let req = v1::Request {
            xid: 1,
            op: Some(v1::request::Op::AddWatch(v1::AddWatch {
                path: "/a".into(),
                mode: 5,
            })),
        };
        let (_, err) = request_from_proto(req).unwrap_err();
        assert!(err.to_string().contains("add_watch.mode"), "{err}");
    }

    #[test]
    fn a_multi_holds_only_writes() {
        for bad in [
            v1::request::Op::GetData(v1::GetData {
                path: "/a".into(),
                watch: false,
            }),
            v1::request::Op::Multi(v1::Multi { ops: vec![] }),
            v1::request::Op::Sync(v1::Sync { path: "/".into() }),
        ] {
            let req = v1::Request {
                xid: 3,
                op: Some(v1::request::Op::Multi(v1::Multi {
                    ops: vec![
                        op_to_proto(
                            0,
                            &Op::Write(WriteOp::Check {
                                path: "/a".into(),
                                version: 1,
                            }),
                        ),
                        v1::Request {
                            xid: 0,
                            op: Some(bad),
                        },
                    ],
                })),
            };
            let (xid, err) = request_from_proto(req).unwrap_err();
            assert_eq!(xid, 3);
            assert!(err.to_string().contains("multi.ops[1]"), "{err}");
        }
        let too_many = v1::Request {
            xid: 3,
            op: Some(v1::request::Op::Multi(v1::Multi {
                ops: vec![
                    op_to_proto(
                        0,
                        &Op::Write(WriteOp::Check {
                            path: "/a".into(),
                            version: 1
                        })
                    );
                    MULTI_OPS_MAX + 1
                ],
            })),
        };
        assert!(request_from_proto(too_many).is_err());
    }

    #[test]
    fn results_round_trip_through_a_reply() {
        let data = OpResult::Data {
            data: Bytes::from_static(b"abc"),
            stat: stat(),
        };
        let cases = vec![
            (
                OpResult::Created {
                    path: "/a0000000001".into(),
                    stat: stat(),
                },
                None,
            ),
            (
                OpResult::Acl {
                    acl: crate::acl::parse_acl("x509:CN=a:ra,world:anyone:r").unwrap(),
                    stat: stat(),
                },
                None,
            ),
            (OpResult::Stat(stat()), None),
            (OpResult::NoStat, None),
            (data.clone(), None),
            (
                OpResult::Children {
                    children: vec!["x".into(), "y".into()],
                    stat: stat(),
                },
                None,
            ),
            (OpResult::Empty, None),
            // Empty results share one wire shape; the client knows which op it sent.
            (OpResult::Deleted, Some(OpResult::Empty)),
            (OpResult::Checked, Some(OpResult::Empty)),
            (
                OpResult::Multi(vec![Ok(OpResult::Stat(stat())), Ok(OpResult::Checked)]),
                Some(OpResult::Multi(vec![
                    Ok(OpResult::Stat(stat())),
                    Ok(OpResult::Empty),
                ])),
            ),
        ];
        for (result, expected) in cases {
            let reply = reply_to_proto(4, Zxid::new(1, 9), &Ok(result.clone()));
            assert_eq!(reply.xid, 4);
            assert_eq!(reply.zxid, Zxid::new(1, 9).0);
            assert_eq!(reply_from_proto(reply), Ok(expected.unwrap_or(result)));
        }
    }

    #[test]
    fn errors_travel_as_code_and_message() {
        let errs = vec![
            OpError::NoNode("/a".into()),
            OpError::NodeExists("/a".into()),
            OpError::BadVersion {
                path: "/a".into(),
                expected: 3,
                actual: 5,
            },
            OpError::NoChildrenForEphemerals("/e".into()),
            OpError::NotEmpty("/a".into()),
            OpError::BadPath {
                path: "a".into(),
                reason: "path must start with /".into(),
            },
            OpError::DataTooLarge {
                path: "/a".into(),
                len: 2 << 20,
                max: 1 << 20,
            },
            OpError::BadArguments("x".into()),
            OpError::SessionExpired(crate::SessionId(9)),
            OpError::SessionMoved(crate::SessionId(9)),
            OpError::RuntimeInconsistency,
            OpError::TooManyWatches(10),
            OpError::TooManyRequests(10),
            OpError::AuthFailed(crate::SessionId(9)),
            OpError::NotServing("electing".into()),
        ];
        for err in errs {
            let reply = reply_to_proto(1, Zxid(5), &Err(err.clone()));
            let got = reply_from_proto(reply).unwrap_err();
            assert_eq!(got.code(), err.code());
            assert_eq!(got.to_string(), err.to_string());
            assert_eq!(got.op_index, None);
        }
    }

    #[test]
    fn wire_acls_use_zookeepers_bits_and_a_missing_one_is_the_open_default() {
        let create = |acl: Vec<v1::Acl>| v1::Request {
            xid: 1,
            op: Some(v1::request::Op::Create(v1::Create {
                path: "/a".into(),
                data: vec![],
                mode: v1::CreateMode::Persistent as i32,
                acl,
            })),
        };
        let Ok((_, Op::Write(WriteOp::Create { acl, .. }))) = request_from_proto(create(vec![]))
        else {
            panic!()
        };
        assert_eq!(acl, crate::acl::open_acl());
        let entry = |perms| v1::Acl {
            perms,
            scheme: "world".into(),
            id: "anyone".into(),
        };
        let Ok((_, Op::Write(WriteOp::Create { acl, .. }))) =
            request_from_proto(create(vec![entry(1 | 16)]))
        else {
            panic!()
        };
        assert_eq!(acl[0].perms.letters(), "ra");
        let (_, err) = request_from_proto(create(vec![entry(64)])).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidAcl);
        assert!(err.to_string().contains("create.acl[0]"), "{err}");
        let (_, err) = request_from_proto(create(vec![entry(1); 65])).unwrap_err();
        assert!(err.to_string().contains("limit is 64"), "{err}");
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in [
            ErrorCode::NoNode,
            ErrorCode::NodeExists,
            ErrorCode::BadVersion,
            ErrorCode::NoChildrenForEphemerals,
            ErrorCode::NotEmpty,
            ErrorCode::BadArguments,
            ErrorCode::DataTooLarge,
            ErrorCode::SessionExpired,
            ErrorCode::SessionMoved,
            ErrorCode::ConnectionLoss,
            ErrorCode::NotLeader,
            ErrorCode::NoQuorum,
            ErrorCode::TooManyWatches,
            ErrorCode::RuntimeInconsistency,
            ErrorCode::AuthFailed,
            ErrorCode::TooManyRequests,
            ErrorCode::SystemError,
            ErrorCode::NoAuth,
            ErrorCode::InvalidAcl,
        ] {
            assert_eq!(
                error_code_from_proto(error_code_to_proto(code) as i32),
                Some(code)
            );
        }
        assert_eq!(error_code_from_proto(v1::ErrorCode::Ok as i32), None);
        assert_eq!(error_code_from_proto(999), Some(ErrorCode::SystemError));
    }

    #[test]
    fn a_failed_multi_reads_as_the_failing_ops_error_with_its_index() {
        let bad = OpError::BadVersion {
            path: "/b".into(),
            expected: 1,
            actual: 2,
        };
        let result = OpResult::Multi(vec![
            Err(OpError::RuntimeInconsistency),
            Err(bad.clone()),
            Err(OpError::RuntimeInconsistency),
        ]);
        let reply = reply_to_proto(2, Zxid(3), &Ok(result));
        assert_eq!(reply.error, v1::ErrorCode::BadVersion as i32);
        let err = reply_from_proto(reply).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadVersion);
        assert_eq!(err.op_index, Some(1));
        assert_eq!(err.message, bad.to_string());
        assert_eq!(err.to_string(), format!("op 1 of the multi failed: {bad}"));
    }

    #[test]
    fn events_and_stats_round_trip() {
        for kind in [
            EventType::NodeCreated,
            EventType::NodeDeleted,
            EventType::NodeDataChanged,
            EventType::NodeChildrenChanged,
        ] {
            let e = WatchEvent {
                kind,
                path: "/a/b".into(),
                zxid: Zxid::new(3, 4),
            };
            assert_eq!(event_from_proto(event_to_proto(&e)), Ok(e));
        }
        let none = v1::WatchEvent {
            r#type: 0,
            path: "/a".into(),
            zxid: 1,
        };
        assert!(event_from_proto(none).is_err());
        assert_eq!(stat_from_proto(&stat_to_proto(&stat())), stat());
    }
}
