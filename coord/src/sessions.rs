//! Session liveness on the server that expires sessions (the leader): when each session must be
//! heard from next. Expiry times are rounded up to buckets, as ZooKeeper's `ExpiryQueue` does, so a
//! tick looks at one bucket instead of every session.

use crate::zxid::SessionId;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug)]
pub struct SessionTracker {
    bucket_ms: u64,
    /// Invariant: a session is in exactly the bucket `deadline[session]` names.
    deadline: HashMap<SessionId, u64>,
    buckets: BTreeMap<u64, HashSet<SessionId>>,
}

impl SessionTracker {
    pub fn new(bucket_ms: u64) -> SessionTracker {
        SessionTracker {
            bucket_ms: bucket_ms.max(1),
            deadline: HashMap::new(),
            buckets: BTreeMap::new(),
        }
    }

    /// The session was heard from at `now_ms`; it expires `timeout_ms` later (rounded up).
    pub fn touch(&mut self, session: SessionId, timeout_ms: u32, now_ms: u64) {
        let at = (now_ms + u64::from(timeout_ms)).div_ceil(self.bucket_ms) * self.bucket_ms;
        if let Some(old) = self.deadline.insert(session, at) {
            if old == at {
                return;
            }
            self.unbucket(session, old);
        }
        self.buckets.entry(at).or_default().insert(session);
    }

    fn unbucket(&mut self, session: SessionId, at: u64) {
        if let Some(set) = self.buckets.get_mut(&at) {
            set.remove(&session);
            if set.is_empty() {
                self.buckets.remove(&at);
            }
        }
    }

    pub fn remove(&mut self, session: SessionId) {
        if let Some(at) = self.deadline.remove(&session) {
            self.unbucket(session, at);
        }
    }

    pub fn is_tracked(&self, session: SessionId) -> bool {
        self.deadline.contains_key(&session)
    }

    /// Removes and returns, in id order, every session whose deadline is at or before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<SessionId> {
        let mut out = Vec::new();
        while let Some((&at, _)) = self.buckets.first_key_value() {
            if at > now_ms {
                break;
            }
            if let Some(set) = self.buckets.remove(&at) {
                for session in set {
                    self.deadline.remove(&session);
                    out.push(session);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Asserts the invariant on `deadline`: each session sits in exactly its deadline's bucket,
    /// and no bucket is empty. A failure is a bug here.
    pub fn check_invariants(&self) {
        for (session, at) in &self.deadline {
            assert!(
                self.buckets.get(at).is_some_and(|b| b.contains(session)),
                "session {session} is missing from its bucket {at}"
            );
        }
        let bucketed: usize = self.buckets.values().map(HashSet::len).sum();
        assert_eq!(
            bucketed,
            self.deadline.len(),
            "every bucketed session has a deadline, once"
        );
        assert!(
            self.buckets.values().all(|b| !b.is_empty()),
            "no empty bucket is kept"
        );
    }

    pub fn len(&self) -> usize {
        self.deadline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadline.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_after_their_timeout_unless_touched() {
        let mut t = SessionTracker::new(100);
        t.touch(SessionId(1), 1000, 0);
        t.touch(SessionId(2), 1000, 0);
        assert!(t.expire(999).is_empty());
        t.touch(SessionId(2), 1000, 900);
        assert_eq!(t.expire(1000), vec![SessionId(1)]);
        assert!(t.expire(1899).is_empty());
        assert_eq!(t.expire(1900), vec![SessionId(2)]);
        assert!(t.is_empty());
    }

    #[test]
    fn deadlines_round_up_to_buckets() {
        // Never expires early: a deadline is rounded up, never down.
        let mut t = SessionTracker::new(500);
        t.touch(SessionId(1), 1000, 1);
        assert!(t.expire(1001).is_empty());
        assert_eq!(t.expire(1500), vec![SessionId(1)]);
    }

    #[test]
    fn removed_sessions_never_expire() {
        let mut t = SessionTracker::new(10);
        t.touch(SessionId(1), 10, 0);
        t.remove(SessionId(1));
        assert!(t.expire(100).is_empty());
        assert!(!t.is_tracked(SessionId(1)));
    }
}
