//! Decline filters: "don't offer me this agent's resources again for a while".
//!
//! One filter per framework × agent (a newer decline replaces it), holding what was refused and
//! when the filter expires. As in Mesos, a filter only hides offers that are contained in the
//! refused resources: if more becomes free on the agent (a task ended), the framework sees the
//! larger offer. A filter never affects other frameworks: the allocator skips the filtered
//! framework and offers the agent to the next one in DRF order, so a 31-day decline cannot
//! starve anyone else.

use crate::ids::{AgentId, FrameworkId};
use crate::resources::Resources;
use std::collections::{BTreeMap, BTreeSet};

/// One decline filter.
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub refused: Resources,
    /// The filter applies while `now_ms < expires_at_ms`.
    pub expires_at_ms: u64,
}

/// All active filters.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    by_framework: BTreeMap<FrameworkId, BTreeMap<AgentId, Filter>>,
    /// Invariant: one `(expires_at_ms, framework, agent)` per filter in `by_framework`.
    by_expiry: BTreeSet<(u64, FrameworkId, AgentId)>,
}

impl Filters {
    pub fn new() -> Filters {
        Filters::default()
    }

    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    /// Adds (or replaces) the filter for `framework` on `agent`. A zero duration removes nothing
    /// and adds nothing: "refuse for 0" means no filter.
    pub fn add(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        refused: Resources,
        now_ms: u64,
        refuse_for_ms: u64,
    ) {
        if refuse_for_ms == 0 {
            return;
        }
        self.remove(framework, agent);
        let expires_at_ms = now_ms.saturating_add(refuse_for_ms);
        self.by_expiry
            .insert((expires_at_ms, framework.clone(), agent.clone()));
        self.by_framework
            .entry(framework.clone())
            .or_default()
            .insert(
                agent.clone(),
                Filter {
                    refused,
                    expires_at_ms,
                },
            );
    }

    pub fn get(&self, framework: &FrameworkId, agent: &AgentId) -> Option<&Filter> {
        self.by_framework.get(framework)?.get(agent)
    }

    /// If `framework` must not be offered `available` on `agent` at `now_ms`, the time the
    /// filter expires.
    pub fn filtered_until(
        &self,
        framework: &FrameworkId,
        agent: &AgentId,
        available: &Resources,
        now_ms: u64,
    ) -> Option<u64> {
        let f = self.get(framework, agent)?;
        (now_ms < f.expires_at_ms && f.refused.contains(available)).then_some(f.expires_at_ms)
    }

    fn remove(&mut self, framework: &FrameworkId, agent: &AgentId) {
        let Some(per_agent) = self.by_framework.get_mut(framework) else {
            return;
        };
        if let Some(old) = per_agent.remove(agent) {
            self.by_expiry
                .remove(&(old.expires_at_ms, framework.clone(), agent.clone()));
        }
        if per_agent.is_empty() {
            self.by_framework.remove(framework);
        }
    }

    /// Drops every filter of `framework`; returns how many there were.
    pub fn clear_framework(&mut self, framework: &FrameworkId) -> usize {
        let Some(per_agent) = self.by_framework.remove(framework) else {
            return 0;
        };
        for (agent, f) in &per_agent {
            self.by_expiry
                .remove(&(f.expires_at_ms, framework.clone(), agent.clone()));
        }
        per_agent.len()
    }

    /// Drops every filter on `agent` (it left the cluster). O(frameworks with filters).
    pub fn clear_agent(&mut self, agent: &AgentId) {
        let frameworks: Vec<FrameworkId> = self.by_framework.keys().cloned().collect();
        for fw in frameworks {
            self.remove(&fw, agent);
        }
    }

    /// Drops filters that expired at or before `now_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while let Some((at, _, _)) = self.by_expiry.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, fw, agent)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(per_agent) = self.by_framework.get_mut(&fw) {
                per_agent.remove(&agent);
                if per_agent.is_empty() {
                    self.by_framework.remove(&fw);
                }
            }
            n += 1;
        }
        n
    }

    /// When the next filter expires (the agent may then be offered to its framework again).
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.by_expiry.first().map(|(at, _, _)| *at)
    }

    /// Every (framework, agent) pair with a filter.
    pub fn pairs(&self) -> impl Iterator<Item = (&FrameworkId, &AgentId)> + '_ {
        self.by_framework
            .iter()
            .flat_map(|(fw, per_agent)| per_agent.keys().map(move |a| (fw, a)))
    }

    /// Panics, naming the filter, if the two indexes disagree.
    pub fn check_invariants(&self) {
        let mut n = 0;
        for (fw, per_agent) in &self.by_framework {
            assert!(
                !per_agent.is_empty(),
                "filters: framework {fw} has an empty filter map"
            );
            for (agent, f) in per_agent {
                n += 1;
                assert!(
                    self.by_expiry
                        .contains(&(f.expires_at_ms, fw.clone(), agent.clone())),
                    "filters: filter of framework {fw} on agent {agent} is missing from the expiry index"
                );
            }
        }
        assert_eq!(
            n,
            self.by_expiry.len(),
            "filters: the expiry index holds {} entries for {n} filters",
            self.by_expiry.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PortRanges;

    #[test]
    fn filters_hide_only_contained_offers_until_expiry() {
        // Proves a filter hides offers ⊆ the refused resources until it expires, then is dropped.
        let fw = FrameworkId::parse("fw").expect("valid");
        let a = AgentId::parse("a").expect("valid");
        let refused = Resources::from_millicpus(1000, 100, PortRanges::new());
        let mut f = Filters::new();
        f.add(&fw, &a, refused.clone(), 10, 0);
        assert!(f.is_empty(), "refuse_for 0 is no filter");
        f.add(&fw, &a, refused.clone(), 10, 5);
        assert_eq!(f.filtered_until(&fw, &a, &refused, 14), Some(15));
        let bigger = Resources::from_millicpus(2000, 100, PortRanges::new());
        assert_eq!(f.filtered_until(&fw, &a, &bigger, 14), None);
        assert_eq!(f.next_expiry_ms(), Some(15));
        assert_eq!(f.expire(14), 0);
        assert_eq!(f.expire(15), 1);
        assert!(f.is_empty());
        f.add(&fw, &a, refused.clone(), 0, 100);
        f.add(&fw, &a, refused, 0, 50);
        assert_eq!(f.len(), 1, "a newer decline replaces the older filter");
        assert_eq!(f.clear_framework(&fw), 1);
        assert_eq!(f.next_expiry_ms(), None);
    }
}
