//! Watch registrations on one server: which sessions wait for which paths.
//!
//! One-shot watches (data, child) are removed as they fire; persistent ones stay, and recursive
//! ones cover every descendant. Firing costs O(1) per watcher: each registration is one entry in a
//! per-path set plus one in its session's reverse index, so an event touches only the sessions that
//! watch it, and a session's watches are dropped in time proportional to their number.

use crate::op::{EventType, OpError};
use crate::zxid::SessionId;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// Set by get_data and exists: fires on NodeCreated, NodeDataChanged, NodeDeleted.
    Data,
    /// Set by get_children: fires on NodeChildrenChanged, NodeDeleted.
    Child,
    /// Every event on the path itself; never removed by firing.
    Persistent,
    /// Every event but NodeChildrenChanged on the path and all its descendants.
    PersistentRecursive,
}

const KINDS: [WatchKind; 4] = [
    WatchKind::Data,
    WatchKind::Child,
    WatchKind::Persistent,
    WatchKind::PersistentRecursive,
];

#[derive(Debug)]
pub struct WatchManager {
    by_kind: [HashMap<String, HashSet<SessionId>>; 4],
    by_session: HashMap<SessionId, HashSet<(WatchKind, String)>>,
    watches_per_session_max: usize,
}

fn slot(kind: WatchKind) -> usize {
    match kind {
        WatchKind::Data => 0,
        WatchKind::Child => 1,
        WatchKind::Persistent => 2,
        WatchKind::PersistentRecursive => 3,
    }
}

impl WatchManager {
    pub fn new(watches_per_session_max: usize) -> WatchManager {
        WatchManager {
            by_kind: Default::default(),
            by_session: HashMap::new(),
            watches_per_session_max,
        }
    }

    pub fn add(&mut self, session: SessionId, kind: WatchKind, path: &str) -> Result<(), OpError> {
        let mine = self.by_session.entry(session).or_default();
        if mine.contains(&(kind, path.to_string())) {
            return Ok(());
        }
        if mine.len() >= self.watches_per_session_max {
            return Err(OpError::TooManyWatches(self.watches_per_session_max));
        }
        mine.insert((kind, path.to_string()));
        self.by_kind[slot(kind)]
            .entry(path.to_string())
            .or_default()
            .insert(session);
        Ok(())
    }

    fn remove_one(&mut self, session: SessionId, kind: WatchKind, path: &str) {
        let map = &mut self.by_kind[slot(kind)];
        if let Some(set) = map.get_mut(path) {
            set.remove(&session);
            if set.is_empty() {
                map.remove(path);
            }
        }
    }

    /// Removes every watch `session` holds on `path`; true if there was any.
    pub fn remove_path(&mut self, session: SessionId, path: &str) -> bool {
        let Some(mine) = self.by_session.get_mut(&session) else {
            return false;
        };
        let removed: Vec<WatchKind> = KINDS
            .into_iter()
            .filter(|&kind| mine.remove(&(kind, path.to_string())))
            .collect();
        if mine.is_empty() {
            self.by_session.remove(&session);
        }
        for &kind in &removed {
            self.remove_one(session, kind, path);
        }
        !removed.is_empty()
    }

    /// Drops every watch of a session (its connection closed or it ended).
    pub fn remove_session(&mut self, session: SessionId) {
        if let Some(mine) = self.by_session.remove(&session) {
            for (kind, path) in mine {
                self.remove_one(session, kind, &path);
            }
        }
    }

    /// Sessions holding at least one watch.
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.by_session
            .iter()
            .filter(|(_, mine)| !mine.is_empty())
            .map(|(&s, _)| s)
    }

    /// Asserts that the two indexes name the same registrations and no session is over its
    /// limit. A failure is a bug here.
    pub fn check_invariants(&self) {
        for (session, mine) in &self.by_session {
            assert!(
                mine.len() <= self.watches_per_session_max,
                "session {session} holds {} watches, over the limit {}",
                mine.len(),
                self.watches_per_session_max
            );
            for (kind, path) in mine {
                assert!(
                    self.by_kind[slot(*kind)]
                        .get(path)
                        .is_some_and(|set| set.contains(session)),
                    "session {session}'s {kind:?} watch on {path} is missing from the path index"
                );
            }
        }
        for kind in KINDS {
            for (path, set) in &self.by_kind[slot(kind)] {
                assert!(!set.is_empty(), "an empty watcher set for {path} is kept");
                for session in set {
                    assert!(
                        self.by_session
                            .get(session)
                            .is_some_and(|mine| mine.contains(&(kind, path.clone()))),
                        "{kind:?} watch of {session} on {path} is missing from the session index"
                    );
                }
            }
        }
    }

    pub fn count(&self, session: SessionId) -> usize {
        self.by_session.get(&session).map_or(0, HashSet::len)
    }

    /// The sessions to notify of `event` on `path`, each once, in a deterministic order. One-shot
    /// watches that fire are removed.
    pub fn trigger(&mut self, event: EventType, path: &str) -> Vec<SessionId> {
        let mut out = Vec::new();
        let one_shot: &[WatchKind] = match event {
            EventType::NodeCreated | EventType::NodeDataChanged => &[WatchKind::Data],
            EventType::NodeDeleted => &[WatchKind::Data, WatchKind::Child],
            EventType::NodeChildrenChanged => &[WatchKind::Child],
        };
        for &kind in one_shot {
            if let Some(set) = self.by_kind[slot(kind)].remove(path) {
                for session in set {
                    if let Some(mine) = self.by_session.get_mut(&session) {
                        mine.remove(&(kind, path.to_string()));
                    }
                    out.push(session);
                }
            }
        }
        if let Some(set) = self.by_kind[slot(WatchKind::Persistent)].get(path) {
            out.extend(set.iter().copied());
        }
        if event != EventType::NodeChildrenChanged
            && !self.by_kind[slot(WatchKind::PersistentRecursive)].is_empty()
        {
            let recursive = &self.by_kind[slot(WatchKind::PersistentRecursive)];
            for ancestor in ancestors_and_self(path) {
                if let Some(set) = recursive.get(ancestor) {
                    out.extend(set.iter().copied());
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// `/a/b/c`, `/a/b`, `/a`, `/`.
fn ancestors_and_self(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = if current == "/" {
            None
        } else {
            Some(crate::path::parent(current))
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SessionId = SessionId(1);
    const B: SessionId = SessionId(2);

    #[test]
    fn one_shot_watches_fire_once() {
        // ZooKeeper: a data watch is removed when it fires; the next change is not reported.
        let mut w = WatchManager::new(100);
        w.add(A, WatchKind::Data, "/x").unwrap();
        assert_eq!(w.trigger(EventType::NodeDataChanged, "/x"), vec![A]);
        assert!(w.trigger(EventType::NodeDataChanged, "/x").is_empty());
        assert_eq!(w.count(A), 0);
    }

    #[test]
    fn events_reach_the_right_kinds() {
        // Child watches ignore data changes; deletes fire both data and child watches.
        let mut w = WatchManager::new(100);
        w.add(A, WatchKind::Child, "/x").unwrap();
        w.add(B, WatchKind::Data, "/x").unwrap();
        assert_eq!(w.trigger(EventType::NodeDataChanged, "/x"), vec![B]);
        w.add(B, WatchKind::Data, "/x").unwrap();
        assert_eq!(w.trigger(EventType::NodeDeleted, "/x"), vec![A, B]);
    }

    #[test]
    fn persistent_recursive_watches_cover_descendants_but_not_child_events() {
        // ZooKeeper 3.6 addWatch semantics: PERSISTENT_RECURSIVE never gets NodeChildrenChanged.
        let mut w = WatchManager::new(100);
        w.add(A, WatchKind::PersistentRecursive, "/a").unwrap();
        w.add(B, WatchKind::Persistent, "/a").unwrap();
        assert_eq!(w.trigger(EventType::NodeCreated, "/a/b/c"), vec![A]);
        assert!(w.trigger(EventType::NodeChildrenChanged, "/a/b").is_empty());
        assert_eq!(w.trigger(EventType::NodeChildrenChanged, "/a"), vec![B]);
        assert_eq!(w.trigger(EventType::NodeDataChanged, "/a"), vec![A, B]);
        assert_eq!(w.trigger(EventType::NodeDataChanged, "/a"), vec![A, B]);
        assert!(w.trigger(EventType::NodeDataChanged, "/ab").is_empty());
    }

    #[test]
    fn a_session_is_notified_once_per_event() {
        let mut w = WatchManager::new(100);
        w.add(A, WatchKind::Data, "/x").unwrap();
        w.add(A, WatchKind::Persistent, "/x").unwrap();
        w.add(A, WatchKind::PersistentRecursive, "/").unwrap();
        assert_eq!(w.trigger(EventType::NodeDataChanged, "/x"), vec![A]);
    }

    #[test]
    fn limits_and_cleanup() {
        let mut w = WatchManager::new(2);
        w.add(A, WatchKind::Data, "/1").unwrap();
        w.add(A, WatchKind::Data, "/2").unwrap();
        assert_eq!(
            w.add(A, WatchKind::Data, "/3"),
            Err(OpError::TooManyWatches(2))
        );
        // Re-adding an existing watch is not a new one.
        w.add(A, WatchKind::Data, "/2").unwrap();
        assert!(w.remove_path(A, "/1"));
        assert!(!w.remove_path(A, "/1"));
        w.remove_session(A);
        assert!(w.trigger(EventType::NodeDataChanged, "/2").is_empty());
        assert!(w.by_kind.iter().all(HashMap::is_empty));
    }
}
