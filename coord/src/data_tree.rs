//! The znode tree and the replicated session table: what a transaction does.
//!
//! `apply` is deterministic: the same transactions in the same order give the same tree and the
//! same results on every replica, which is what lets ZAB replicate requests rather than effects.
//! The tree is built on persistent maps (`imbl`), so cloning it is O(1): a snapshot is a clone
//! handed to the storage thread while new transactions keep applying, and a `multi` rolls back by
//! restoring the clone taken before its first op.
//!
//! Each node holds its ACL. `apply` does not check ACLs: the leader did, before proposing
//! (`prep`, through `apply_checked`), so every replica applies exactly what the leader allowed.

use crate::acl::{self, Access, AclEntry, Perms};
use crate::op::{
    ANY_VERSION, CreateMode, EventType, OpError, OpResult, Stat, WriteOp, ZNODE_BYTES_MAX,
};
use crate::path;
use crate::txn::{PASSWORD_BYTES, Txn, TxnKind};
use crate::zxid::{SessionId, Zxid};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub data: Bytes,
    /// `num_children` and `data_length` are derived on read, not stored here.
    pub stat: Stat,
    /// Invariant: holds exactly the names of the nodes whose parent is this node.
    pub children: imbl::OrdSet<String>,
    /// Never empty for a node created through a transaction (create and setACL refuse an empty
    /// ACL). Shared: nodes with the same ACL usually hold one allocation.
    pub acl: Arc<[AclEntry]>,
}

/// What the replicated state knows of a session: enough for any server to accept its reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMeta {
    pub timeout_ms: u32,
    pub password: [u8; PASSWORD_BYTES],
}

/// The effect of one transaction: the client's result and the watch events, in firing order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub result: Result<OpResult, OpError>,
    pub events: Vec<(EventType, String)>,
}

#[derive(Clone, Debug)]
pub struct DataTree {
    nodes: imbl::HashMap<String, Node>,
    sessions: imbl::HashMap<SessionId, SessionMeta>,
    /// Invariant: for each session, exactly the paths of the nodes it owns.
    ephemerals: imbl::HashMap<SessionId, imbl::OrdSet<String>>,
    last_applied: Zxid,
}

impl Default for DataTree {
    fn default() -> Self {
        Self::new()
    }
}

impl DataTree {
    pub fn new() -> DataTree {
        let mut nodes = imbl::HashMap::new();
        nodes.insert(
            "/".to_string(),
            Node {
                data: Bytes::new(),
                stat: Stat::default(),
                children: imbl::OrdSet::new(),
                acl: acl::open_acl().into(),
            },
        );
        DataTree {
            nodes,
            sessions: imbl::HashMap::new(),
            ephemerals: imbl::HashMap::new(),
            last_applied: Zxid::ZERO,
        }
    }

    /// zxid of the last transaction applied.
    pub fn last_applied(&self) -> Zxid {
        self.last_applied
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn session(&self, id: SessionId) -> Option<&SessionMeta> {
        self.sessions.get(&id)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &SessionMeta)> {
        self.sessions.iter().map(|(id, meta)| (*id, meta))
    }

    pub fn ephemerals_of(&self, id: SessionId) -> Vec<String> {
        self.ephemerals
            .get(&id)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn stat_of(node: &Node) -> Stat {
        Stat {
            data_length: i32::try_from(node.data.len()).unwrap_or(i32::MAX),
            num_children: i32::try_from(node.children.len()).unwrap_or(i32::MAX),
            ..node.stat
        }
    }

    pub fn stat(&self, path: &str) -> Option<Stat> {
        self.nodes.get(path).map(Self::stat_of)
    }

    pub fn get_data(&self, path: &str) -> Result<(Bytes, Stat), OpError> {
        path::validate(path, false)?;
        let node = self
            .nodes
            .get(path)
            .ok_or_else(|| OpError::NoNode(path.to_string()))?;
        Ok((node.data.clone(), Self::stat_of(node)))
    }

    /// The ACL of `path`, if the node exists.
    pub fn acl(&self, path: &str) -> Option<&[AclEntry]> {
        self.nodes.get(path).map(|n| &*n.acl)
    }

    pub fn get_acl(&self, path: &str) -> Result<(Vec<AclEntry>, Stat), OpError> {
        path::validate(path, false)?;
        let node = self
            .nodes
            .get(path)
            .ok_or_else(|| OpError::NoNode(path.to_string()))?;
        Ok((node.acl.to_vec(), Self::stat_of(node)))
    }

    pub fn exists(&self, path: &str) -> Result<Option<Stat>, OpError> {
        path::validate(path, false)?;
        Ok(self.stat(path))
    }

    pub fn children(&self, path: &str) -> Result<(Vec<String>, Stat), OpError> {
        path::validate(path, false)?;
        let node = self
            .nodes
            .get(path)
            .ok_or_else(|| OpError::NoNode(path.to_string()))?;
        Ok((node.children.iter().cloned().collect(), Self::stat_of(node)))
    }

    /// Applies one committed transaction. Transactions must come in zxid order.
    pub fn apply(&mut self, txn: &Txn) -> Applied {
        self.apply_as(txn, None)
    }

    /// `apply`, checking every ACL the write needs against `access` first: what the leader does
    /// on its prepared tree before proposing (`prep`). An op refused fails with `NoAuth` (a multi
    /// the way a failed multi does) and changes nothing.
    pub fn apply_checked(&mut self, txn: &Txn, access: &Access<'_>) -> Applied {
        self.apply_as(txn, Some(access))
    }

    fn apply_as(&mut self, txn: &Txn, access: Option<&Access<'_>>) -> Applied {
        assert!(
            txn.zxid > self.last_applied,
            "transactions apply in zxid order: {} after {}",
            txn.zxid,
            self.last_applied
        );
        self.last_applied = txn.zxid;
        let mut events = Vec::new();
        let result = match &txn.kind {
            TxnKind::CreateSession {
                timeout_ms,
                password,
            } => {
                self.sessions.insert(
                    txn.session,
                    SessionMeta {
                        timeout_ms: *timeout_ms,
                        password: *password,
                    },
                );
                Ok(OpResult::Empty)
            }
            TxnKind::CloseSession => self.close_session(txn.zxid, txn.session, &mut events),
            TxnKind::Write(op) => {
                if !self.sessions.contains_key(&txn.session) {
                    Err(OpError::SessionExpired(txn.session))
                } else if let WriteOp::Multi(ops) = op {
                    self.apply_multi(txn, ops, access, &mut events)
                } else {
                    self.apply_write(txn, op, access, &mut events)
                }
            }
            // Decided by the leader; it changes nothing but the zxid.
            TxnKind::Refused(result) => result.clone(),
        };
        Applied { result, events }
    }

    fn close_session(
        &mut self,
        zxid: Zxid,
        session: SessionId,
        events: &mut Vec<(EventType, String)>,
    ) -> Result<OpResult, OpError> {
        if self.sessions.remove(&session).is_none() {
            return Err(OpError::SessionExpired(session));
        }
        let owned = self.ephemerals.remove(&session).unwrap_or_default();
        // Deepest first is not needed (ephemerals have no children); sorted order keeps it deterministic.
        for path in owned.iter() {
            // Invariant: every path in `ephemerals` names a live node owned by the session.
            let removed = self.remove_node(zxid, path, events);
            assert!(
                removed.is_ok(),
                "ephemeral {path} of session {session} must be deletable"
            );
        }
        Ok(OpResult::Empty)
    }

    fn apply_multi(
        &mut self,
        txn: &Txn,
        ops: &[WriteOp],
        access: Option<&Access<'_>>,
        events: &mut Vec<(EventType, String)>,
    ) -> Result<OpResult, OpError> {
        let checkpoint = self.clone();
        let mut results = Vec::with_capacity(ops.len());
        let mut multi_events = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let outcome = match op {
                WriteOp::Multi(_) => Err(OpError::BadArguments(
                    "a multi cannot contain a multi".into(),
                )),
                WriteOp::SetAcl { .. } => Err(OpError::BadArguments(
                    "a multi cannot contain a setACL".into(),
                )),
                op => self.apply_write(txn, op, access, &mut multi_events),
            };
            match outcome {
                Ok(result) => results.push(Ok(result)),
                Err(err) => {
                    // All or nothing: restore the tree as it was before the first op (but keep the
                    // zxid, which this transaction consumed all the same).
                    let last_applied = self.last_applied;
                    *self = checkpoint;
                    self.last_applied = last_applied;
                    let mut all: Vec<Result<OpResult, OpError>> = (0..ops.len())
                        .map(|_| Err(OpError::RuntimeInconsistency))
                        .collect();
                    all[i] = Err(err);
                    return Ok(OpResult::Multi(all));
                }
            }
        }
        events.extend(multi_events);
        Ok(OpResult::Multi(results))
    }

    fn apply_write(
        &mut self,
        txn: &Txn,
        op: &WriteOp,
        access: Option<&Access<'_>>,
        events: &mut Vec<(EventType, String)>,
    ) -> Result<OpResult, OpError> {
        match op {
            WriteOp::Create {
                path,
                data,
                mode,
                acl,
            } => self.create(txn, path, data, *mode, acl, access, events),
            WriteOp::Delete { path, version } => {
                path::validate(path, false)?;
                if path == "/" {
                    return Err(OpError::BadArguments(
                        "the root node / cannot be deleted".into(),
                    ));
                }
                let node = self
                    .nodes
                    .get(path)
                    .ok_or_else(|| OpError::NoNode(path.clone()))?;
                let parent_path = path::parent(path);
                if let Some(parent) = self.nodes.get(parent_path) {
                    check_acl(access, &parent.acl, Perms::DELETE, parent_path)?;
                }
                check_version(path, *version, node.stat.version)?;
                if !node.children.is_empty() {
                    return Err(OpError::NotEmpty(path.clone()));
                }
                self.remove_node(txn.zxid, path, events)?;
                Ok(OpResult::Deleted)
            }
            WriteOp::SetData {
                path,
                data,
                version,
            } => {
                path::validate(path, false)?;
                check_size(path, data)?;
                let node = self
                    .nodes
                    .get_mut(path)
                    .ok_or_else(|| OpError::NoNode(path.clone()))?;
                check_acl(access, &node.acl, Perms::WRITE, path)?;
                check_version(path, *version, node.stat.version)?;
                node.data = data.clone();
                node.stat.version = node.stat.version.wrapping_add(1);
                node.stat.mzxid = txn.zxid;
                node.stat.mtime = txn.time_ms;
                let stat = Self::stat_of(node);
                events.push((EventType::NodeDataChanged, path.clone()));
                Ok(OpResult::Stat(stat))
            }
            WriteOp::Check { path, version } => {
                path::validate(path, false)?;
                let node = self
                    .nodes
                    .get(path)
                    .ok_or_else(|| OpError::NoNode(path.clone()))?;
                check_acl(access, &node.acl, Perms::READ, path)?;
                check_version(path, *version, node.stat.version)?;
                Ok(OpResult::Checked)
            }
            WriteOp::SetAcl { path, acl, version } => {
                path::validate(path, false)?;
                check_stored_acl(path, acl)?;
                let node = self
                    .nodes
                    .get_mut(path)
                    .ok_or_else(|| OpError::NoNode(path.clone()))?;
                check_acl(access, &node.acl, Perms::ADMIN, path)?;
                check_version(path, *version, node.stat.aversion)?;
                node.acl = acl.clone().into();
                node.stat.aversion = node.stat.aversion.wrapping_add(1);
                Ok(OpResult::Stat(Self::stat_of(node)))
            }
            WriteOp::Multi(_) => Err(OpError::BadArguments(
                "a multi cannot contain a multi".into(),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        txn: &Txn,
        path: &str,
        data: &Bytes,
        mode: CreateMode,
        acl: &[AclEntry],
        access: Option<&Access<'_>>,
        events: &mut Vec<(EventType, String)>,
    ) -> Result<OpResult, OpError> {
        path::validate(path, mode.is_sequential())?;
        check_size(path, data)?;
        check_stored_acl(path, acl)?;
        let parent_path = path::parent(path).to_string();
        let parent = self
            .nodes
            .get(&parent_path)
            .ok_or_else(|| OpError::NoNode(parent_path.clone()))?;
        check_acl(access, &parent.acl, Perms::CREATE, &parent_path)?;
        if parent.stat.ephemeral_owner != 0 {
            return Err(OpError::NoChildrenForEphemerals(parent_path));
        }
        let full_path = if mode.is_sequential() {
            // ZooKeeper names sequential nodes after the parent's cversion, ten digits wide.
            format!("{path}{:010}", parent.stat.cversion)
        } else {
            path.to_string()
        };
        if self.nodes.contains_key(&full_path) {
            return Err(OpError::NodeExists(full_path));
        }
        let ephemeral_owner = if mode.is_ephemeral() {
            txn.session.0
        } else {
            0
        };
        let stat = Stat {
            czxid: txn.zxid,
            mzxid: txn.zxid,
            pzxid: txn.zxid,
            ctime: txn.time_ms,
            mtime: txn.time_ms,
            ephemeral_owner,
            ..Stat::default()
        };
        // Nodes created with the parent's ACL (or the open one) share its allocation.
        let acl: Arc<[AclEntry]> = if *parent.acl == *acl {
            Arc::clone(&parent.acl)
        } else {
            acl.into()
        };
        let node = Node {
            data: data.clone(),
            stat,
            children: imbl::OrdSet::new(),
            acl,
        };
        let result_stat = Self::stat_of(&node);
        self.nodes.insert(full_path.clone(), node);
        let parent = self
            .nodes
            .get_mut(&parent_path)
            .expect("parent checked above");
        parent.children.insert(path::name(&full_path).to_string());
        parent.stat.cversion = parent.stat.cversion.wrapping_add(1);
        parent.stat.pzxid = txn.zxid;
        if mode.is_ephemeral() {
            self.ephemerals
                .entry(txn.session)
                .or_default()
                .insert(full_path.clone());
        }
        events.push((EventType::NodeCreated, full_path.clone()));
        events.push((EventType::NodeChildrenChanged, parent_path));
        Ok(OpResult::Created {
            path: full_path,
            stat: result_stat,
        })
    }

    /// Removes a childless node and its ephemeral bookkeeping, updating the parent.
    fn remove_node(
        &mut self,
        zxid: Zxid,
        path: &str,
        events: &mut Vec<(EventType, String)>,
    ) -> Result<(), OpError> {
        let node = self
            .nodes
            .remove(path)
            .ok_or_else(|| OpError::NoNode(path.to_string()))?;
        let owner = SessionId(node.stat.ephemeral_owner);
        if node.stat.ephemeral_owner != 0
            && let Some(set) = self.ephemerals.get_mut(&owner)
        {
            set.remove(path);
            if set.is_empty() {
                self.ephemerals.remove(&owner);
            }
        }
        let parent_path = path::parent(path).to_string();
        let parent = self
            .nodes
            .get_mut(&parent_path)
            .expect("a node's parent exists while it does");
        parent.children.remove(path::name(path));
        parent.stat.cversion = parent.stat.cversion.wrapping_add(1);
        parent.stat.pzxid = zxid;
        events.push((EventType::NodeDeleted, path.to_string()));
        events.push((EventType::NodeChildrenChanged, parent_path));
        Ok(())
    }

    /// A digest of the whole replicated state, for comparing replicas in tests and simulation.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.last_applied.hash(&mut h);
        self.content_digest().hash(&mut h);
        h.finish()
    }

    /// `digest` without `last_applied`: equal for trees that differ only by transactions that
    /// changed nothing (a refusal, a failed write).
    pub fn content_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut paths: Vec<&String> = self.nodes.keys().collect();
        paths.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in paths {
            let n = &self.nodes[p];
            p.hash(&mut h);
            n.data.hash(&mut h);
            Self::stat_of(n).hash(&mut h);
            n.acl.hash(&mut h);
        }
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, m)| (id.0, m.timeout_ms))
            .collect();
        sessions.sort();
        sessions.hash(&mut h);
        h.finish()
    }

    /// Writes the whole state as a stream of length-prefixed records: a header, each distinct ACL
    /// once, then every node (naming its ACL by index). `self` is usually an O(1) clone taken at
    /// a zxid, so the stream is consistent.
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        let mut acl_index: std::collections::HashMap<&[AclEntry], u32> =
            std::collections::HashMap::new();
        let mut acls: Vec<&[AclEntry]> = Vec::new();
        for node in self.nodes.values() {
            if !acl_index.contains_key(&*node.acl) {
                let i = u32::try_from(acls.len())
                    .map_err(|_| io::Error::other("more than 2^32 distinct ACLs"))?;
                acl_index.insert(&node.acl, i);
                acls.push(&node.acl);
            }
        }
        let header = SnapshotHeader {
            format: SNAPSHOT_FORMAT,
            last_applied: self.last_applied,
            sessions: self.sessions.iter().map(|(id, m)| (*id, *m)).collect(),
            node_count: self.nodes.len() as u64,
            acl_count: acls.len() as u64,
        };
        write_record(w, &header)?;
        for acl in &acls {
            write_record(w, acl)?;
        }
        for (path, node) in self.nodes.iter() {
            write_record(
                w,
                &SnapshotNode {
                    path: path.clone(),
                    data: node.data.clone(),
                    stat: node.stat,
                    acl: acl_index[&*node.acl],
                },
            )?;
        }
        Ok(())
    }

    /// Rebuilds a tree from `write_snapshot`'s output, or from a format-1 snapshot (written before
    /// ACLs existed, whose nodes all get `world:anyone:cdrwa`); corrupt input is an error, never a
    /// panic.
    pub fn read_snapshot(mut bytes: &[u8]) -> Result<DataTree, SnapshotDecodeError> {
        let header_bytes = take_record(&mut bytes)?;
        let probe: FormatProbe = decode_record(header_bytes)?;
        let mut nodes: Vec<(String, Bytes, Stat, Arc<[AclEntry]>)> = Vec::new();
        let (last_applied, sessions) = match probe.format {
            SNAPSHOT_FORMAT => {
                let header: SnapshotHeader = decode_record(header_bytes)?;
                let mut acls: Vec<Arc<[AclEntry]>> = Vec::new();
                for _ in 0..header.acl_count {
                    let acl: Vec<AclEntry> = read_record(&mut bytes)?;
                    acls.push(acl.into());
                }
                for _ in 0..header.node_count {
                    let n: SnapshotNode = read_record(&mut bytes)?;
                    let acl = acls.get(n.acl as usize).cloned().ok_or_else(|| {
                        SnapshotDecodeError(format!(
                            "node {} names ACL {} of {}",
                            n.path,
                            n.acl,
                            acls.len()
                        ))
                    })?;
                    nodes.push((n.path, n.data, n.stat, acl));
                }
                (header.last_applied, header.sessions)
            }
            SNAPSHOT_FORMAT_V1 => {
                let header: SnapshotHeaderV1 = decode_record(header_bytes)?;
                let open: Arc<[AclEntry]> = acl::open_acl().into();
                for _ in 0..header.node_count {
                    let n: SnapshotNodeV1 = read_record(&mut bytes)?;
                    nodes.push((n.path, n.data, n.stat, Arc::clone(&open)));
                }
                (header.last_applied, header.sessions)
            }
            other => {
                return Err(SnapshotDecodeError(format!(
                    "unknown snapshot format {other}"
                )));
            }
        };
        if !bytes.is_empty() {
            return Err(SnapshotDecodeError(format!(
                "{} trailing bytes after the last node",
                bytes.len()
            )));
        }
        let mut tree = DataTree::new();
        tree.last_applied = last_applied;
        for (id, meta) in sessions {
            tree.sessions.insert(id, meta);
        }
        for (path, data, stat, acl) in &nodes {
            if path::validate(path, false).is_err() {
                return Err(SnapshotDecodeError(format!(
                    "invalid path {path:?} in snapshot"
                )));
            }
            tree.nodes.insert(
                path.clone(),
                Node {
                    data: data.clone(),
                    stat: *stat,
                    children: imbl::OrdSet::new(),
                    acl: Arc::clone(acl),
                },
            );
            if stat.ephemeral_owner != 0 {
                tree.ephemerals
                    .entry(SessionId(stat.ephemeral_owner))
                    .or_default()
                    .insert(path.clone());
            }
        }
        for (path, ..) in &nodes {
            if path == "/" {
                continue;
            }
            let parent = tree.nodes.get_mut(path::parent(path)).ok_or_else(|| {
                SnapshotDecodeError(format!("node {path} has no parent in the snapshot"))
            })?;
            parent.children.insert(path::name(path).to_string());
        }
        Ok(tree)
    }
}

/// `Ok` when no check is asked for (applying a committed transaction), or when `access` may do
/// `perm` on a node with `acl`.
fn check_acl(
    access: Option<&Access<'_>>,
    acl: &[AclEntry],
    perm: Perms,
    path: &str,
) -> Result<(), OpError> {
    match access {
        Some(a) if !a.allows(acl, perm) => Err(OpError::NoAuth {
            path: path.to_string(),
            perm,
        }),
        _ => Ok(()),
    }
}

/// An ACL as a transaction carries it: valid, and expanded (the leader replaces `auth` entries
/// by the session's ids before proposing).
fn check_stored_acl(path: &str, acl: &[AclEntry]) -> Result<(), OpError> {
    let invalid = |reason: String| OpError::InvalidAcl {
        path: path.to_string(),
        reason,
    };
    acl::validate(acl).map_err(invalid)?;
    if let Some((i, e)) = acl
        .iter()
        .enumerate()
        .find(|(_, e)| e.id.scheme == acl::SCHEME_AUTH)
    {
        return Err(invalid(format!(
            "entry {i} ({e}): the auth scheme must be expanded before a write is logged"
        )));
    }
    Ok(())
}

fn check_version(path: &str, expected: i32, actual: i32) -> Result<(), OpError> {
    if expected == ANY_VERSION || expected == actual {
        Ok(())
    } else {
        Err(OpError::BadVersion {
            path: path.to_string(),
            expected,
            actual,
        })
    }
}

fn check_size(path: &str, data: &Bytes) -> Result<(), OpError> {
    if data.len() > ZNODE_BYTES_MAX {
        return Err(OpError::DataTooLarge {
            path: path.to_string(),
            len: data.len(),
            max: ZNODE_BYTES_MAX,
        });
    }
    Ok(())
}

/// Format 2: ACLs (a table after the header, an index per node).
const SNAPSHOT_FORMAT: u32 = 2;
/// Format 1, written before ACLs existed: still read, never written.
const SNAPSHOT_FORMAT_V1: u32 = 1;

/// The first field of every header, read before the rest to pick the format.
#[derive(Deserialize)]
struct FormatProbe {
    format: u32,
}

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: u32,
    last_applied: Zxid,
    sessions: Vec<(SessionId, SessionMeta)>,
    node_count: u64,
    /// Records of `Vec<AclEntry>` that follow the header, before the nodes.
    acl_count: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotNode {
    path: String,
    data: Bytes,
    stat: Stat,
    /// Index into the ACL records.
    acl: u32,
}

#[derive(Deserialize)]
struct SnapshotHeaderV1 {
    #[allow(dead_code, reason = "read to reach the fields after it")]
    format: u32,
    last_applied: Zxid,
    sessions: Vec<(SessionId, SessionMeta)>,
    node_count: u64,
}

#[derive(Deserialize)]
struct SnapshotNodeV1 {
    path: String,
    data: Bytes,
    stat: Stat,
}

#[derive(thiserror::Error, Debug)]
#[error("corrupt snapshot: {0}")]
pub struct SnapshotDecodeError(String);

fn write_record<T: Serialize>(w: &mut impl Write, value: &T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::other("snapshot record over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)
}

fn read_record<T: for<'de> Deserialize<'de>>(bytes: &mut &[u8]) -> Result<T, SnapshotDecodeError> {
    decode_record(take_record(bytes)?)
}

/// The next record's bytes, without decoding them.
fn take_record<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], SnapshotDecodeError> {
    if bytes.len() < 4 {
        return Err(SnapshotDecodeError("truncated record length".into()));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Err(SnapshotDecodeError(format!(
            "record of {len} bytes runs past the end"
        )));
    }
    let (record, rest) = rest.split_at(len);
    *bytes = rest;
    Ok(record)
}

fn decode_record<T: for<'de> Deserialize<'de>>(record: &[u8]) -> Result<T, SnapshotDecodeError> {
    postcard::from_bytes(record).map_err(|e| SnapshotDecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SessionId = SessionId(100);

    /// A tree with one open session `S`, at zxid 1.
    fn tree() -> (DataTree, u32) {
        let mut t = DataTree::new();
        t.apply(&Txn {
            zxid: Zxid::new(1, 1),
            time_ms: 10,
            origin: 1,
            session: S,
            xid: -1,
            kind: TxnKind::CreateSession {
                timeout_ms: 5000,
                password: [7; 16],
            },
        });
        (t, 1)
    }

    fn write(t: &mut DataTree, counter: &mut u32, session: SessionId, op: WriteOp) -> Applied {
        *counter += 1;
        t.apply(&Txn {
            zxid: Zxid::new(1, *counter),
            time_ms: i64::from(*counter) * 10,
            origin: 1,
            session,
            xid: 1,
            kind: TxnKind::Write(op),
        })
    }

    fn create(path: &str, mode: CreateMode) -> WriteOp {
        WriteOp::Create {
            path: path.into(),
            data: Bytes::from_static(b"d"),
            mode,
            acl: crate::acl::open_acl(),
        }
    }

    #[test]
    fn sequential_nodes_are_named_after_the_parents_cversion() {
        // ZooKeeper: the suffix is the parent's cversion, 10 digits, zero padded.
        let (mut t, mut c) = tree();
        write(&mut t, &mut c, S, create("/q", CreateMode::Persistent));
        let mut names = Vec::new();
        for _ in 0..8 {
            match write(
                &mut t,
                &mut c,
                S,
                create("/q/job-", CreateMode::PersistentSequential),
            )
            .result
            {
                Ok(OpResult::Created { path, .. }) => names.push(path),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(names[0], "/q/job-0000000000");
        assert_eq!(names[7], "/q/job-0000000007");
        // Deletes also bump cversion, so numbers are never reused.
        write(
            &mut t,
            &mut c,
            S,
            WriteOp::Delete {
                path: names[7].clone(),
                version: -1,
            },
        );
        let Ok(OpResult::Created { path, .. }) = write(
            &mut t,
            &mut c,
            S,
            create("/q/", CreateMode::EphemeralSequential),
        )
        .result
        else {
            panic!()
        };
        assert_eq!(path, "/q/0000000009");
    }

    #[test]
    fn stat_fields_follow_zookeeper() {
        let (mut t, mut c) = tree();
        write(&mut t, &mut c, S, create("/a", CreateMode::Persistent));
        let created = Zxid::new(1, c);
        write(
            &mut t,
            &mut c,
            S,
            WriteOp::SetData {
                path: "/a".into(),
                data: Bytes::from_static(b"hello"),
                version: 0,
            },
        );
        let set = Zxid::new(1, c);
        write(&mut t, &mut c, S, create("/a/b", CreateMode::Persistent));
        let child = Zxid::new(1, c);
        let s = t.stat("/a").unwrap();
        assert_eq!((s.czxid, s.mzxid, s.pzxid), (created, set, child));
        assert_eq!((s.version, s.cversion, s.aversion), (1, 1, 0));
        assert_eq!(
            (s.data_length, s.num_children, s.ephemeral_owner),
            (5, 1, 0)
        );
        assert_eq!((s.ctime, s.mtime), (20, 30));
        let root = t.stat("/").unwrap();
        assert_eq!(root.num_children, 1);
    }

    #[test]
    fn failed_writes_change_nothing() {
        // Every refused write leaves the tree exactly as it was, with its own error.
        let (mut t, mut c) = tree();
        write(&mut t, &mut c, S, create("/a", CreateMode::Persistent));
        write(&mut t, &mut c, S, create("/a/b", CreateMode::Persistent));
        write(&mut t, &mut c, S, create("/e", CreateMode::Ephemeral));
        let cases = [
            (
                create("/a", CreateMode::Persistent),
                OpError::NodeExists("/a".into()),
            ),
            (
                create("/x/y", CreateMode::Persistent),
                OpError::NoNode("/x".into()),
            ),
            (
                create("/e/c", CreateMode::Persistent),
                OpError::NoChildrenForEphemerals("/e".into()),
            ),
            (
                WriteOp::Delete {
                    path: "/a".into(),
                    version: -1,
                },
                OpError::NotEmpty("/a".into()),
            ),
            (
                WriteOp::Delete {
                    path: "/zz".into(),
                    version: -1,
                },
                OpError::NoNode("/zz".into()),
            ),
            (
                WriteOp::Delete {
                    path: "/a/b".into(),
                    version: 3,
                },
                OpError::BadVersion {
                    path: "/a/b".into(),
                    expected: 3,
                    actual: 0,
                },
            ),
            (
                WriteOp::SetData {
                    path: "/a".into(),
                    data: Bytes::new(),
                    version: 9,
                },
                OpError::BadVersion {
                    path: "/a".into(),
                    expected: 9,
                    actual: 0,
                },
            ),
            (
                WriteOp::SetData {
                    path: "/a".into(),
                    data: Bytes::from(vec![0; ZNODE_BYTES_MAX + 1]),
                    version: -1,
                },
                OpError::DataTooLarge {
                    path: "/a".into(),
                    len: ZNODE_BYTES_MAX + 1,
                    max: ZNODE_BYTES_MAX,
                },
            ),
            (
                WriteOp::Check {
                    path: "/a".into(),
                    version: 2,
                },
                OpError::BadVersion {
                    path: "/a".into(),
                    expected: 2,
                    actual: 0,
                },
            ),
            (
                WriteOp::Delete {
                    path: "/".into(),
                    version: -1,
                },
                OpError::BadArguments("the root node / cannot be deleted".into()),
            ),
        ];
        for (op, expected) in cases {
            let before = t.clone();
            let applied = write(&mut t, &mut c, S, op.clone());
            assert_eq!(applied.result, Err(expected), "{op:?}");
            assert!(applied.events.is_empty());
            assert_eq!(t.nodes, before.nodes, "{op:?} changed the tree");
        }
        assert!(matches!(
            write(&mut t, &mut c, S, create("/a/../b", CreateMode::Persistent)).result,
            Err(OpError::BadPath { .. })
        ));
        // A session that no longer exists cannot write.
        assert_eq!(
            write(
                &mut t,
                &mut c,
                SessionId(5),
                create("/z", CreateMode::Persistent)
            )
            .result,
            Err(OpError::SessionExpired(SessionId(5)))
        );
    }

    #[test]
    fn closing_a_session_removes_its_ephemerals_in_one_transaction() {
        let (mut t, mut c) = tree();
        write(&mut t, &mut c, S, create("/p", CreateMode::Persistent));
        write(&mut t, &mut c, S, create("/p/e1", CreateMode::Ephemeral));
        write(
            &mut t,
            &mut c,
            S,
            create("/p/e2-", CreateMode::EphemeralSequential),
        );
        assert_eq!(t.ephemerals_of(S).len(), 2);
        let applied = t.apply(&Txn {
            zxid: Zxid::new(1, c + 1),
            time_ms: 0,
            origin: 1,
            session: S,
            xid: -2,
            kind: TxnKind::CloseSession,
        });
        assert_eq!(applied.result, Ok(OpResult::Empty));
        assert_eq!(t.children("/p").unwrap().0, Vec::<String>::new());
        assert!(t.stat("/p").is_some());
        assert!(t.session(S).is_none());
        assert_eq!(
            applied.events,
            vec![
                (EventType::NodeDeleted, "/p/e1".to_string()),
                (EventType::NodeChildrenChanged, "/p".to_string()),
                (EventType::NodeDeleted, "/p/e2-0000000001".to_string()),
                (EventType::NodeChildrenChanged, "/p".to_string()),
            ]
        );
        // Closing it again is an error that changes nothing.
        let again = t.apply(&Txn {
            zxid: Zxid::new(1, c + 2),
            time_ms: 0,
            origin: 1,
            session: S,
            xid: -2,
            kind: TxnKind::CloseSession,
        });
        assert_eq!(again.result, Err(OpError::SessionExpired(S)));
    }

    #[test]
    fn multi_is_all_or_nothing() {
        // ZooKeeper multi: the failing op reports its error, the others RuntimeInconsistency,
        // and no op takes effect.
        let (mut t, mut c) = tree();
        write(&mut t, &mut c, S, create("/x", CreateMode::Persistent));
        let before = t.nodes.clone();
        let applied = write(
            &mut t,
            &mut c,
            S,
            WriteOp::Multi(vec![
                create("/m", CreateMode::Persistent),
                create("/m/n", CreateMode::Persistent),
                WriteOp::SetData {
                    path: "/x".into(),
                    data: Bytes::new(),
                    version: 5,
                },
            ]),
        );
        let Ok(OpResult::Multi(results)) = applied.result else {
            panic!("{:?}", applied.result)
        };
        assert_eq!(results[0], Err(OpError::RuntimeInconsistency));
        assert_eq!(results[1], Err(OpError::RuntimeInconsistency));
        assert!(matches!(results[2], Err(OpError::BadVersion { .. })));
        assert!(applied.events.is_empty());
        assert_eq!(t.nodes, before);
        assert_eq!(t.last_applied(), Zxid::new(1, c));

        let applied = write(
            &mut t,
            &mut c,
            S,
            WriteOp::Multi(vec![
                create("/m", CreateMode::Persistent),
                create("/m/n", CreateMode::Persistent),
                WriteOp::Check {
                    path: "/x".into(),
                    version: 0,
                },
                WriteOp::Delete {
                    path: "/x".into(),
                    version: 0,
                },
            ]),
        );
        let Ok(OpResult::Multi(results)) = applied.result else {
            panic!()
        };
        assert!(results.iter().all(Result::is_ok));
        assert!(t.stat("/m/n").is_some() && t.stat("/x").is_none());
        assert_eq!(applied.events.len(), 6);
    }

    #[test]
    fn snapshots_round_trip_exactly() {
        let (mut t, mut c) = tree();
        write(&mut t, &mut c, S, create("/a", CreateMode::Persistent));
        write(&mut t, &mut c, S, create("/a/b", CreateMode::Ephemeral));
        write(
            &mut t,
            &mut c,
            S,
            WriteOp::SetData {
                path: "/a".into(),
                data: Bytes::from_static(b"v"),
                version: -1,
            },
        );
        // ACLs, the shared open one and others, with an ACL version, are kept too.
        let bob = acl::parse_acl("ip:10.0.0.0/8:rw,world:anyone:r").unwrap();
        write(
            &mut t,
            &mut c,
            S,
            WriteOp::Create {
                path: "/locked".into(),
                data: Bytes::new(),
                mode: CreateMode::Persistent,
                acl: bob.clone(),
            },
        );
        write(
            &mut t,
            &mut c,
            S,
            WriteOp::SetAcl {
                path: "/a".into(),
                acl: bob.clone(),
                version: 0,
            },
        );
        assert_eq!(t.stat("/a").unwrap().aversion, 1);
        let mut buf = Vec::new();
        t.write_snapshot(&mut buf).unwrap();
        let back = DataTree::read_snapshot(&buf).unwrap();
        assert_eq!(back.acl("/locked").unwrap(), &bob[..]);
        assert_eq!(back.acl("/a/b").unwrap(), &acl::open_acl()[..]);
        assert_eq!(back.stat("/a").unwrap().aversion, 1);
        assert_eq!(back.digest(), t.digest());
        assert_eq!(back.ephemerals_of(S), vec!["/a/b".to_string()]);
        assert_eq!(back.session(S), t.session(S));
        assert_eq!(back.nodes, t.nodes);
        // Truncated or garbled input is an error, not a panic.
        assert!(DataTree::read_snapshot(&buf[..buf.len() - 3]).is_err());
        assert!(DataTree::read_snapshot(&[0xff; 64]).is_err());
    }

    #[test]
    fn a_data_dir_from_before_acls_recovers_with_open_acls() {
        // testdata/format-v1 was written by coord before ACLs (snapshot format 1 and format-1
        // log records, a multi among them): it still loads, losing nothing, every node open to
        // world:anyone:cdrwa, and the recovered tree accepts new transactions.
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/format-v1");
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        let (_log, recovered) =
            crate::storage::TxnLog::open(dir.path(), crate::storage::LogOptions::default())
                .unwrap();
        let (zxid, bytes) = recovered.snapshot.expect("the fixture holds a snapshot");
        let mut t = DataTree::read_snapshot(&bytes).unwrap();
        assert_eq!(t.last_applied(), Zxid(zxid));
        assert_eq!(recovered.records.len(), 3);
        for (_, bytes) in &recovered.records {
            t.apply(&Txn::decode(bytes).unwrap());
        }
        let data = |t: &DataTree, p: &str| t.get_data(p).map(|(d, s)| (d.to_vec(), s.version));
        assert_eq!(data(&t, "/app"), Ok((b"world".to_vec(), 1)));
        assert_eq!(data(&t, "/app/cfg"), Ok((b"v2".to_vec(), 1)));
        assert_eq!(data(&t, "/app/job-0000000001"), Ok((b"j".to_vec(), 0)));
        assert_eq!(data(&t, "/m"), Ok((b"m".to_vec(), 0)));
        assert_eq!(data(&t, "/tail"), Ok((b"t".to_vec(), 0)));
        assert!(t.stat("/gone").is_none());
        assert_eq!(t.node_count(), 6);
        assert_eq!(t.sessions().count(), 1);
        for p in ["/", "/app", "/app/cfg", "/m", "/tail"] {
            assert_eq!(t.acl(p).unwrap(), &acl::open_acl()[..], "{p}");
            assert_eq!(t.stat(p).unwrap().aversion, 0);
        }
        let (session, _) = t.sessions().next().unwrap();
        let next = Zxid(t.last_applied().0 + 1);
        let applied = t.apply(&Txn {
            zxid: next,
            time_ms: 0,
            origin: 1,
            session,
            xid: 100,
            kind: TxnKind::Write(WriteOp::SetAcl {
                path: "/app".into(),
                acl: acl::parse_acl("world:anyone:r").unwrap(),
                version: 0,
            }),
        });
        assert!(applied.result.is_ok(), "{:?}", applied.result);
    }

    mod model {
        //! The tree against a plain model (a BTreeMap of path → data) over random op sequences.
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        fn arb_op() -> impl Strategy<Value = WriteOp> {
            let path = prop::sample::select(vec!["/a", "/b", "/a/x", "/a/y", "/b/x", "/a/x/z"]);
            prop_oneof![
                (path.clone(), any::<u8>()).prop_map(|(p, d)| WriteOp::Create {
                    path: p.into(),
                    data: Bytes::from(vec![d]),
                    mode: CreateMode::Persistent,
                    acl: crate::acl::open_acl(),
                }),
                (path.clone(), -1..2i32).prop_map(|(p, v)| WriteOp::Delete {
                    path: p.into(),
                    version: v
                }),
                (path, any::<u8>(), -1..2i32).prop_map(|(p, d, v)| WriteOp::SetData {
                    path: p.into(),
                    data: Bytes::from(vec![d]),
                    version: v
                }),
            ]
        }

        proptest! {
            #[test]
            fn tree_matches_a_map_model(ops in prop::collection::vec(arb_op(), 1..60)) {
                let (mut t, mut c) = tree();
                let mut model: BTreeMap<String, (Vec<u8>, i32)> = BTreeMap::new();
                for op in ops {
                    let applied = write(&mut t, &mut c, S, op.clone());
                    let expect_ok = match &op {
                        WriteOp::Create { path, data, .. } => {
                            let parent = crate::path::parent(path);
                            let ok = !model.contains_key(path.as_str()) && (parent == "/" || model.contains_key(parent));
                            if ok { model.insert(path.clone(), (data.to_vec(), 0)); }
                            ok
                        }
                        WriteOp::Delete { path, version } => {
                            let has_children = model.keys().any(|k| crate::path::parent(k) == path && k != path);
                            let ok = model.get(path.as_str()).is_some_and(|(_, v)| *version == -1 || v == version) && !has_children;
                            if ok { model.remove(path.as_str()); }
                            ok
                        }
                        WriteOp::SetData { path, data, version } => {
                            let ok = model.get(path.as_str()).is_some_and(|(_, v)| *version == -1 || v == version);
                            if ok { let e = model.get_mut(path.as_str()).unwrap(); e.0 = data.to_vec(); e.1 += 1; }
                            ok
                        }
                        _ => unreachable!(),
                    };
                    prop_assert_eq!(applied.result.is_ok(), expect_ok, "{:?}", op);
                }
                for (path, (data, version)) in &model {
                    let (d, s) = t.get_data(path).unwrap();
                    prop_assert_eq!(&d[..], &data[..]);
                    prop_assert_eq!(s.version, *version);
                }
                prop_assert_eq!(t.node_count(), model.len() + 1);
            }
        }
    }
}
