//! The client's watch registrations. The server only sends (type, path, zxid); which caller wants
//! an event is bookkeeping kept here, by the connection task that owns it, with ZooKeeper's
//! routing rules:
//!
//! - one-shot data watches (from `get`, and `exists` on a node that exists) and exist watches
//!   (`exists` on a missing node) fire on NodeCreated, NodeDeleted and NodeDataChanged;
//! - one-shot child watches fire on NodeChildrenChanged and NodeDeleted;
//! - persistent watches fire on every event of their path, and are kept;
//! - persistent recursive watches fire on every event of their path and its descendants except
//!   NodeChildrenChanged (a recursive watcher sees the child's own NodeCreated instead).
//!
//! Data and exist watches are kept apart only because `SetWatches` asks the server to check them
//! differently after a reconnect (a data watch fires if the node changed or went away, an exist
//! watch if the node appeared).

use super::ClientError;
use crate::op::{EventType, SetWatches, WatchEvent};
use crate::zxid::Zxid;
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Where a one-shot watch's event goes.
pub(super) type OneShotSender = oneshot::Sender<Result<WatchEvent, ClientError>>;

/// Which one-shot table a watch set by a read belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OneShotKind {
    Data,
    Exist,
    Child,
}

/// A persistent watcher: an id (so one `WatchStream` can be removed among several on a path)
/// and the bounded buffer of its stream.
struct Persistent {
    id: u64,
    tx: mpsc::Sender<WatchEvent>,
}

#[derive(Default)]
pub(super) struct Watchers {
    data: HashMap<String, Vec<OneShotSender>>,
    exist: HashMap<String, Vec<OneShotSender>>,
    child: HashMap<String, Vec<OneShotSender>>,
    persistent: HashMap<String, Vec<Persistent>>,
    recursive: HashMap<String, Vec<Persistent>>,
}

impl Watchers {
    pub(super) fn add_one_shot(&mut self, kind: OneShotKind, path: String, tx: OneShotSender) {
        let table = match kind {
            OneShotKind::Data => &mut self.data,
            OneShotKind::Exist => &mut self.exist,
            OneShotKind::Child => &mut self.child,
        };
        let list = table.entry(path).or_default();
        // Callers may drop a `Watch` without awaiting it; forget those here so a path that is
        // watched over and over but never changes does not grow the list without bound.
        list.retain(|tx| !tx.is_closed());
        list.push(tx);
    }

    pub(super) fn add_persistent(
        &mut self,
        path: String,
        recursive: bool,
        id: u64,
        tx: mpsc::Sender<WatchEvent>,
    ) {
        let table = if recursive {
            &mut self.recursive
        } else {
            &mut self.persistent
        };
        table.entry(path).or_default().push(Persistent { id, tx });
    }

    /// Removes one persistent watcher. Returns true when no watcher of any kind is left on
    /// `path`, so the server's registration can go too.
    pub(super) fn remove_persistent(&mut self, path: &str, recursive: bool, id: u64) -> bool {
        let table = if recursive {
            &mut self.recursive
        } else {
            &mut self.persistent
        };
        if let Some(list) = table.get_mut(path) {
            list.retain(|p| p.id != id);
            if list.is_empty() {
                table.remove(path);
            }
        }
        !self.holds(path)
    }

    fn holds(&self, path: &str) -> bool {
        self.data.contains_key(path)
            || self.exist.contains_key(path)
            || self.child.contains_key(path)
            || self.persistent.contains_key(path)
            || self.recursive.contains_key(path)
    }

    /// Delivers `e` to every watcher it concerns. Returns the paths whose last persistent watcher
    /// went away while delivering (its stream was dropped, or its consumer fell a whole buffer
    /// behind), whose server registrations should be removed.
    pub(super) fn route(&mut self, e: &WatchEvent) -> Vec<String> {
        let path = e.path.as_str();
        let data_event = matches!(
            e.kind,
            EventType::NodeCreated | EventType::NodeDeleted | EventType::NodeDataChanged
        );
        let child_event = matches!(
            e.kind,
            EventType::NodeChildrenChanged | EventType::NodeDeleted
        );
        if data_event {
            fire_all(self.data.remove(path), e);
            fire_all(self.exist.remove(path), e);
        }
        if child_event {
            fire_all(self.child.remove(path), e);
        }
        let mut emptied = Vec::new();
        if deliver(&mut self.persistent, path, e) {
            emptied.push(path.to_string());
        }
        if e.kind != EventType::NodeChildrenChanged {
            for ancestor in ancestors_or_self(path) {
                if deliver(&mut self.recursive, ancestor, e) {
                    emptied.push(ancestor.to_string());
                }
            }
        }
        emptied.retain(|p| !self.holds(p));
        emptied.dedup();
        emptied
    }

    /// What to re-register after a reconnect, or `None` when nothing is watched. Forgets
    /// watchers whose receiving side is gone first.
    pub(super) fn set_watches(&mut self, relative_zxid: Zxid) -> Option<SetWatches> {
        for table in [&mut self.data, &mut self.exist, &mut self.child] {
            table.retain(|_, list| {
                list.retain(|tx| !tx.is_closed());
                !list.is_empty()
            });
        }
        for table in [&mut self.persistent, &mut self.recursive] {
            table.retain(|_, list| {
                list.retain(|p| !p.tx.is_closed());
                !list.is_empty()
            });
        }
        let s = SetWatches {
            relative_zxid,
            data: keys_of(&self.data),
            exist: keys_of(&self.exist),
            child: keys_of(&self.child),
            persistent: keys_of(&self.persistent),
            persistent_recursive: keys_of(&self.recursive),
        };
        let empty = s.data.is_empty()
            && s.exist.is_empty()
            && s.child.is_empty()
            && s.persistent.is_empty()
            && s.persistent_recursive.is_empty();
        (!empty).then_some(s)
    }

    /// Ends every watch: one-shot watchers get `err`, persistent streams end.
    pub(super) fn end_all(&mut self, err: &ClientError) {
        for table in [&mut self.data, &mut self.exist, &mut self.child] {
            for (_, list) in table.drain() {
                for tx in list {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
        self.persistent.clear();
        self.recursive.clear();
    }
}

fn keys_of<V>(t: &HashMap<String, V>) -> Vec<String> {
    let mut v: Vec<String> = t.keys().cloned().collect();
    v.sort();
    v
}

fn fire_all(list: Option<Vec<OneShotSender>>, e: &WatchEvent) {
    for tx in list.into_iter().flatten() {
        // The caller may have dropped its `Watch`; nothing to do then.
        let _ = tx.send(Ok(e.clone()));
    }
}

/// Sends `e` to the persistent watchers of `path` in `table`. A watcher whose stream is gone or
/// whose buffer is full is dropped: the driver must never block on a slow consumer, and a stream
/// that silently skipped an event would lie. Returns true when this emptied the path's list.
fn deliver(table: &mut HashMap<String, Vec<Persistent>>, path: &str, e: &WatchEvent) -> bool {
    let Some(list) = table.get_mut(path) else {
        return false;
    };
    list.retain(|p| match p.tx.try_send(e.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(path, "a watch stream fell a whole buffer behind; ending it");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
    if list.is_empty() {
        table.remove(path);
        true
    } else {
        false
    }
}

/// `/a/b` → `/a/b`, `/a`, `/`.
fn ancestors_or_self(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            _ if current == "/" => None,
            Some(0) => Some("/"),
            Some(i) => Some(&current[..i]),
            None => None,
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventType, path: &str) -> WatchEvent {
        WatchEvent {
            kind,
            path: path.into(),
            zxid: Zxid(7),
        }
    }

    fn one_shot(
        w: &mut Watchers,
        kind: OneShotKind,
        path: &str,
    ) -> oneshot::Receiver<Result<WatchEvent, ClientError>> {
        let (tx, rx) = oneshot::channel();
        w.add_one_shot(kind, path.into(), tx);
        rx
    }

    #[test]
    fn ancestors_run_up_to_the_root() {
        assert_eq!(
            ancestors_or_self("/a/b/c").collect::<Vec<_>>(),
            ["/a/b/c", "/a/b", "/a", "/"]
        );
        assert_eq!(ancestors_or_self("/").collect::<Vec<_>>(), ["/"]);
    }

    #[test]
    fn one_shot_watches_fire_once_for_their_kind_of_event() {
        // ZooKeeper's routing: data/exist watches see data events, child watches see child
        // events and the node's deletion.
        let mut w = Watchers::default();
        let mut data = one_shot(&mut w, OneShotKind::Data, "/a");
        let mut exist = one_shot(&mut w, OneShotKind::Exist, "/a");
        let mut child = one_shot(&mut w, OneShotKind::Child, "/a");
        w.route(&event(EventType::NodeChildrenChanged, "/a"));
        assert!(data.try_recv().is_err());
        assert!(exist.try_recv().is_err());
        assert_eq!(
            child.try_recv().unwrap().unwrap().kind,
            EventType::NodeChildrenChanged
        );

        w.route(&event(EventType::NodeDataChanged, "/a"));
        assert_eq!(
            data.try_recv().unwrap().unwrap().kind,
            EventType::NodeDataChanged
        );
        assert_eq!(
            exist.try_recv().unwrap().unwrap().kind,
            EventType::NodeDataChanged
        );
        assert!(w.set_watches(Zxid(1)).is_none(), "fired watches are gone");

        let mut child = one_shot(&mut w, OneShotKind::Child, "/a");
        let mut other = one_shot(&mut w, OneShotKind::Data, "/b");
        w.route(&event(EventType::NodeDeleted, "/a"));
        assert_eq!(
            child.try_recv().unwrap().unwrap().kind,
            EventType::NodeDeleted
        );
        assert!(other.try_recv().is_err());
    }

    #[test]
    fn persistent_watches_stay_and_recursive_ones_skip_child_events() {
        let mut w = Watchers::default();
        let (ptx, mut prx) = mpsc::channel(8);
        let (rtx, mut rrx) = mpsc::channel(8);
        w.add_persistent("/a".into(), false, 1, ptx);
        w.add_persistent("/".into(), true, 2, rtx);
        for e in [
            event(EventType::NodeChildrenChanged, "/a"),
            event(EventType::NodeCreated, "/a/b"),
            event(EventType::NodeDataChanged, "/a"),
        ] {
            assert!(w.route(&e).is_empty());
        }
        assert_eq!(prx.try_recv().unwrap().kind, EventType::NodeChildrenChanged);
        assert_eq!(prx.try_recv().unwrap().kind, EventType::NodeDataChanged);
        assert!(
            prx.try_recv().is_err(),
            "a persistent watch covers only its own path"
        );
        assert_eq!(rrx.try_recv().unwrap().path, "/a/b");
        assert_eq!(rrx.try_recv().unwrap().path, "/a");
        assert!(rrx.try_recv().is_err());

        let s = w.set_watches(Zxid(9)).unwrap();
        assert_eq!(
            (s.persistent, s.persistent_recursive),
            (vec!["/a".into()], vec!["/".into()])
        );
        assert!(w.remove_persistent("/a", false, 1));
        assert!(
            !w.remove_persistent("/", false, 2),
            "the recursive watcher on / is still there"
        );
    }

    #[test]
    fn a_dropped_or_full_stream_is_removed_and_reported() {
        let mut w = Watchers::default();
        let (tx, rx) = mpsc::channel(1);
        w.add_persistent("/a".into(), false, 1, tx);
        assert!(w.route(&event(EventType::NodeDataChanged, "/a")).is_empty());
        assert_eq!(
            w.route(&event(EventType::NodeDataChanged, "/a")),
            vec!["/a".to_string()]
        );
        drop(rx);

        let (tx, rx) = mpsc::channel(1);
        w.add_persistent("/b".into(), true, 2, tx);
        drop(rx);
        assert_eq!(
            w.route(&event(EventType::NodeCreated, "/b/c")),
            vec!["/b".to_string()]
        );
    }

    #[test]
    fn set_watches_splits_data_and_exist_watches() {
        let mut w = Watchers::default();
        let _d = one_shot(&mut w, OneShotKind::Data, "/d");
        let _e = one_shot(&mut w, OneShotKind::Exist, "/e");
        let _c = one_shot(&mut w, OneShotKind::Child, "/c");
        drop(one_shot(&mut w, OneShotKind::Data, "/gone"));
        let s = w.set_watches(Zxid(3)).unwrap();
        assert_eq!(s.relative_zxid, Zxid(3));
        assert_eq!(s.data, vec!["/d".to_string()]);
        assert_eq!(s.exist, vec!["/e".to_string()]);
        assert_eq!(s.child, vec!["/c".to_string()]);
    }

    #[test]
    fn end_all_fails_one_shot_watches_with_the_reason() {
        let mut w = Watchers::default();
        let mut d = one_shot(&mut w, OneShotKind::Data, "/d");
        w.end_all(&ClientError::Closed);
        assert!(matches!(d.try_recv().unwrap(), Err(ClientError::Closed)));
    }
}
