//! The znode tree and the replicated session table: what a transaction does.
//!
//! `apply` is deterministic: the same transactions in the same order give the same tree and the
//! same results on every replica, which is what lets ZAB replicate requests rather than effects.
//! The tree is built on persistent maps (`imbl`), so cloning it is O(1): a snapshot is a clone
//! handed to the storage thread while new transactions keep applying, and a `multi` rolls back by
//! restoring the clone taken before its first op.

use crate::op::{
    ANY_VERSION, CreateMode, EventType, OpError, OpResult, Stat, WriteOp, ZNODE_BYTES_MAX,
};
use crate::path;
use crate::txn::{PASSWORD_BYTES, Txn, TxnKind};
use crate::zxid::{SessionId, Zxid};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub data: Bytes,
    /// `num_children` and `data_length` are derived on read, not stored here.
    pub stat: Stat,
    /// Invariant: holds exactly the names of the nodes whose parent is this node.
    pub children: imbl::OrdSet<String>,
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
                    self.apply_multi(txn, ops, &mut events)
                } else {
                    self.apply_write(txn, op, &mut events)
                }
            }
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
                op => self.apply_write(txn, op, &mut multi_events),
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
        events: &mut Vec<(EventType, String)>,
    ) -> Result<OpResult, OpError> {
        match op {
            WriteOp::Create { path, data, mode } => self.create(txn, path, data, *mode, events),
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
                check_version(path, *version, node.stat.version)?;
                Ok(OpResult::Checked)
            }
            WriteOp::Multi(_) => Err(OpError::BadArguments(
                "a multi cannot contain a multi".into(),
            )),
        }
    }

    fn create(
        &mut self,
        txn: &Txn,
        path: &str,
        data: &Bytes,
        mode: CreateMode,
        events: &mut Vec<(EventType, String)>,
    ) -> Result<OpResult, OpError> {
        path::validate(path, mode.is_sequential())?;
        check_size(path, data)?;
        let parent_path = path::parent(path).to_string();
        let parent = self
            .nodes
            .get(&parent_path)
            .ok_or_else(|| OpError::NoNode(parent_path.clone()))?;
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
        let node = Node {
            data: data.clone(),
            stat,
            children: imbl::OrdSet::new(),
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
        let mut paths: Vec<&String> = self.nodes.keys().collect();
        paths.sort();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.last_applied.hash(&mut h);
        for p in paths {
            let n = &self.nodes[p];
            p.hash(&mut h);
            n.data.hash(&mut h);
            Self::stat_of(n).hash(&mut h);
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

    /// Writes the whole state as a stream of length-prefixed records: a header, the sessions, then
    /// every node. `self` is usually an O(1) clone taken at a zxid, so the stream is consistent.
    pub fn write_snapshot(&self, w: &mut impl Write) -> io::Result<()> {
        let header = SnapshotHeader {
            format: SNAPSHOT_FORMAT,
            last_applied: self.last_applied,
            sessions: self.sessions.iter().map(|(id, m)| (*id, *m)).collect(),
            node_count: self.nodes.len() as u64,
        };
        write_record(w, &header)?;
        for (path, node) in self.nodes.iter() {
            write_record(
                w,
                &SnapshotNode {
                    path: path.clone(),
                    data: node.data.clone(),
                    stat: node.stat,
                },
            )?;
        }
        Ok(())
    }

    /// Rebuilds a tree from `write_snapshot`'s output; corrupt input is an error, never a panic.
    pub fn read_snapshot(mut bytes: &[u8]) -> Result<DataTree, SnapshotDecodeError> {
        let header: SnapshotHeader = read_record(&mut bytes)?;
        if header.format != SNAPSHOT_FORMAT {
            return Err(SnapshotDecodeError(format!(
                "unknown snapshot format {}",
                header.format
            )));
        }
        let mut tree = DataTree::new();
        tree.last_applied = header.last_applied;
        for (id, meta) in header.sessions {
            tree.sessions.insert(id, meta);
        }
        let mut nodes = Vec::new();
        for _ in 0..header.node_count {
            let n: SnapshotNode = read_record(&mut bytes)?;
            nodes.push(n);
        }
        if !bytes.is_empty() {
            return Err(SnapshotDecodeError(format!(
                "{} trailing bytes after the last node",
                bytes.len()
            )));
        }
        for n in &nodes {
            if path::validate(&n.path, false).is_err() {
                return Err(SnapshotDecodeError(format!(
                    "invalid path {:?} in snapshot",
                    n.path
                )));
            }
            tree.nodes.insert(
                n.path.clone(),
                Node {
                    data: n.data.clone(),
                    stat: n.stat,
                    children: imbl::OrdSet::new(),
                },
            );
            if n.stat.ephemeral_owner != 0 {
                tree.ephemerals
                    .entry(SessionId(n.stat.ephemeral_owner))
                    .or_default()
                    .insert(n.path.clone());
            }
        }
        for n in &nodes {
            if n.path == "/" {
                continue;
            }
            let parent = tree.nodes.get_mut(path::parent(&n.path)).ok_or_else(|| {
                SnapshotDecodeError(format!("node {} has no parent in the snapshot", n.path))
            })?;
            parent.children.insert(path::name(&n.path).to_string());
        }
        Ok(tree)
    }
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

const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: u32,
    last_applied: Zxid,
    sessions: Vec<(SessionId, SessionMeta)>,
    node_count: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotNode {
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
    let value =
        postcard::from_bytes(&rest[..len]).map_err(|e| SnapshotDecodeError(e.to_string()))?;
    *bytes = &rest[len..];
    Ok(value)
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
        let mut buf = Vec::new();
        t.write_snapshot(&mut buf).unwrap();
        let back = DataTree::read_snapshot(&buf).unwrap();
        assert_eq!(back.digest(), t.digest());
        assert_eq!(back.ephemerals_of(S), vec!["/a/b".to_string()]);
        assert_eq!(back.session(S), t.session(S));
        assert_eq!(back.nodes, t.nodes);
        // Truncated or garbled input is an error, not a panic.
        assert!(DataTree::read_snapshot(&buf[..buf.len() - 3]).is_err());
        assert!(DataTree::read_snapshot(&[0xff; 64]).is_err());
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
                    mode: CreateMode::Persistent
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
