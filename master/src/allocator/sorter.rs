//! Fair-share ordering of clients (roles, or the frameworks of one role), after Mesos' `sorter/`.
//!
//! The allocator asks a sorter "who is furthest below their fair share?" once per agent, so
//! `DrfSorter` keeps its clients in an ordered index and updates one entry per allocation change:
//! `allocated`/`unallocated` are O(log n), walking the order is O(1) per client visited. Only a
//! change of the cluster total (an agent added or removed) re-keys every client, O(n log n).

use crate::resources::Scalars;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// What the allocator needs from a fair-share policy. Weights are validated by the caller
/// (finite, > 0).
pub trait Sorter {
    type Client: Ord + Clone;

    /// Adds a client with no allocation; adding a present client only updates its weight.
    fn add(&mut self, client: Self::Client, weight: f64);
    fn remove(&mut self, client: &Self::Client);
    fn contains(&self, client: &Self::Client) -> bool;
    fn set_weight(&mut self, client: &Self::Client, weight: f64);
    /// `client` now also holds `res` (offered or in use).
    fn allocated(&mut self, client: &Self::Client, res: Scalars);
    /// `client` gave back `res`. Panics if it never held it: that is a bookkeeping bug.
    fn unallocated(&mut self, client: &Self::Client, res: Scalars);
    /// The pool shares are measured against.
    fn set_total(&mut self, total: Scalars);
    /// Clients, most deserving first (lowest weighted share; ties broken by client order).
    fn sorted(&self) -> impl Iterator<Item = &Self::Client> + '_;
    fn sort(&self) -> Vec<Self::Client> {
        self.sorted().cloned().collect()
    }
    /// The client's current weighted share, if present.
    fn share(&self, client: &Self::Client) -> Option<f64>;
    /// The client's current allocation, if present.
    fn allocation(&self, client: &Self::Client) -> Option<Scalars>;
}

/// An `f64` share with a total order (`total_cmp`) so it can key a `BTreeSet`. Shares are never
/// NaN (weights are > 0 and finite, totals non-zero or ignored).
#[derive(Clone, Copy, Debug)]
struct ShareKey(f64);
impl PartialEq for ShareKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for ShareKey {}
impl PartialOrd for ShareKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ShareKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    allocation: Scalars,
    weight: f64,
    /// Invariant: equals `weighted_share(allocation, weight, total)` and is the key this client
    /// has in `DrfSorter::order`.
    share: ShareKey,
}

/// Dominant Resource Fairness: a client's share is its dominant share of the total divided by
/// its weight (so weight 2 may hold twice as much before it is "equal").
#[derive(Clone, Debug)]
pub struct DrfSorter<K: Ord + Clone> {
    clients: BTreeMap<K, Entry>,
    /// Invariant: exactly one `(entry.share, key)` per client.
    order: BTreeSet<(ShareKey, K)>,
    total: Scalars,
}

impl<K: Ord + Clone> Default for DrfSorter<K> {
    fn default() -> Self {
        DrfSorter {
            clients: BTreeMap::new(),
            order: BTreeSet::new(),
            total: Scalars::default(),
        }
    }
}

/// The weighted dominant share DRF orders by. Public so tests can compute the order by brute
/// force with the very same arithmetic.
pub fn weighted_share(allocation: Scalars, weight: f64, total: Scalars) -> f64 {
    allocation.dominant_share(&total) / weight
}

impl<K: Ord + Clone> DrfSorter<K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client's weight, if present.
    pub fn weight(&self, client: &K) -> Option<f64> {
        self.clients.get(client).map(|e| e.weight)
    }

    /// The clients, in key order.
    pub fn clients(&self) -> impl Iterator<Item = &K> + '_ {
        self.clients.keys()
    }

    /// Panics, naming `what` and the client, unless the order index holds exactly one key per
    /// client, each equal to the client's weighted share of `total` (the allocator's total).
    pub fn check_invariants(&self, what: &str, total: Scalars)
    where
        K: std::fmt::Debug,
    {
        assert_eq!(
            self.total, total,
            "{what} sorter: total {:?} is not the allocator's {total:?}",
            self.total
        );
        assert_eq!(
            self.order.len(),
            self.clients.len(),
            "{what} sorter: {} order keys for {} clients",
            self.order.len(),
            self.clients.len()
        );
        for (k, e) in &self.clients {
            let share = weighted_share(e.allocation, e.weight, self.total);
            assert!(
                e.share.0.total_cmp(&share).is_eq(),
                "{what} sorter: client {k:?} is keyed at share {} but holds {:?} at weight {} ({share})",
                e.share.0,
                e.allocation,
                e.weight
            );
            assert!(
                self.order.contains(&(e.share, k.clone())),
                "{what} sorter: client {k:?} is missing from the order index"
            );
        }
    }

    /// Recomputes one client's key after its allocation or weight changed.
    fn rekey(&mut self, client: &K, change: impl FnOnce(&mut Entry)) {
        let total = self.total;
        let Some(entry) = self.clients.get_mut(client) else {
            panic!("sorter: update of a client that was never added");
        };
        let removed = self.order.remove(&(entry.share, client.clone()));
        assert!(removed, "sorter: order index out of step with clients");
        change(entry);
        entry.share = ShareKey(weighted_share(entry.allocation, entry.weight, total));
        self.order.insert((entry.share, client.clone()));
    }
}

impl<K: Ord + Clone> Sorter for DrfSorter<K> {
    type Client = K;

    fn add(&mut self, client: K, weight: f64) {
        if self.clients.contains_key(&client) {
            self.set_weight(&client, weight);
            return;
        }
        let allocation = Scalars::default();
        let share = ShareKey(weighted_share(allocation, weight, self.total));
        self.order.insert((share, client.clone()));
        self.clients.insert(
            client,
            Entry {
                allocation,
                weight,
                share,
            },
        );
    }

    fn remove(&mut self, client: &K) {
        if let Some(entry) = self.clients.remove(client) {
            self.order.remove(&(entry.share, client.clone()));
        }
    }

    fn contains(&self, client: &K) -> bool {
        self.clients.contains_key(client)
    }

    fn set_weight(&mut self, client: &K, weight: f64) {
        if self.clients.contains_key(client) {
            self.rekey(client, |e| e.weight = weight);
        }
    }

    fn allocated(&mut self, client: &K, res: Scalars) {
        self.rekey(client, |e| e.allocation.add(res));
    }

    fn unallocated(&mut self, client: &K, res: Scalars) {
        self.rekey(client, |e| e.allocation.sub(res));
    }

    fn set_total(&mut self, total: Scalars) {
        self.total = total;
        self.order.clear();
        for (k, e) in &mut self.clients {
            e.share = ShareKey(weighted_share(e.allocation, e.weight, total));
            self.order.insert((e.share, k.clone()));
        }
    }

    fn sorted(&self) -> impl Iterator<Item = &K> + '_ {
        self.order.iter().map(|(_, k)| k)
    }

    fn share(&self, client: &K) -> Option<f64> {
        self.clients.get(client).map(|e| e.share.0)
    }

    fn allocation(&self, client: &K) -> Option<Scalars> {
        self.clients.get(client).map(|e| e.allocation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(millicpus: u64, mem_bytes: u64) -> Scalars {
        Scalars {
            millicpus,
            mem_bytes,
        }
    }

    #[test]
    fn orders_by_weighted_dominant_share_then_name() {
        // Proves DRF order: lowest weighted dominant share first, ties broken by client name.
        let mut d = DrfSorter::new();
        d.set_total(s(10_000, 1000));
        for c in ["c", "a", "b"] {
            d.add(c, 1.0);
        }
        assert_eq!(d.sort(), vec!["a", "b", "c"]);
        // a: cpu-dominant 0.3; b: mem-dominant 0.2; c: nothing.
        d.allocated(&"a", s(3000, 100));
        d.allocated(&"b", s(1000, 200));
        assert_eq!(d.sort(), vec!["c", "b", "a"]);
        // Weight 2 halves a's share to 0.15, ahead of b's 0.2.
        d.set_weight(&"a", 2.0);
        assert_eq!(d.sort(), vec!["c", "a", "b"]);
        d.unallocated(&"a", s(3000, 100));
        d.remove(&"c");
        assert_eq!(d.sort(), vec!["a", "b"]);
        assert_eq!(d.allocation(&"a"), Some(s(0, 0)));
        // A bigger cluster re-keys everyone.
        d.set_total(s(20_000, 400));
        assert_eq!(d.share(&"b"), Some(0.5));
    }
}
