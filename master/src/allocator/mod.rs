//! The allocator: who gets offered which agent's free resources, and why others did not.
//!
//! A sans-IO core like coord's: event methods change state, `allocate(now_ms)` runs one cycle and
//! returns offers, rescinds and skip records. It never reads a clock (time comes in as `now_ms`,
//! milliseconds on the driver's monotonic clock), draws no randomness and keeps everything in
//! `BTreeMap`s, so the same events give the same offers.
//!
//! **Batching.** Events only set a dirty flag. The driver (the master's allocation task, built
//! with the networked master) owns the timer: every `allocation_interval_ms` (default 50 ms) it
//! calls `allocate` if `needs_allocation(now)`, so a burst of events costs one cycle. It also
//! sends the returned offers and rescinds to frameworks; the allocator only does the bookkeeping.
//!
//! **One cycle** (`allocate`): expire offers past `offer_timeout_ms` (rescind, recover their
//! resources without a filter), expire filters, then visit every agent in id order. An agent
//! with an outstanding offer, or with less free than `min_allocatable`, is skipped with a reason.
//! Otherwise walk roles by weighted dominant share (DRF), and within each role its frameworks by
//! weighted dominant share; the first framework that is neither suppressed, at its offer limit,
//! nor filtered on this agent is offered *everything* free on it (Mesos-style whole-agent
//! offers, one outstanding offer per agent). Offered resources count as allocated at once, so the
//! next agent goes to whoever is now furthest below their share. A filtered framework is
//! recorded and passed over; the agent goes to the next framework in order, so a long decline
//! never starves anyone else.
//!
//! Complexity: O(A · (log A + W · log F)) per cycle for A agents, F frameworks, W frameworks
//! walked per agent (1 plus the skipped ones: filtered, suppressed or at their limit); the sorter
//! updates one client in O(log F) per offer. Skip records are O(A + F + filters hit), not A × F:
//! a reason that holds for a whole agent or a whole framework is recorded once, and `explain`
//! expands it.
//!
//! **Mesos traps avoided.** `revive` only undoes `suppress`; it does not clear decline filters
//! (in Mesos, Revive does both, so a framework that only wanted offers again also lost the
//! filters that kept it from being re-offered agents it had rejected). `clear_filters` is the
//! separate call. Both `suppress` and `revive` are idempotent.
//!
//! **Invariants.** `check_invariants` (free + used + offered == total per agent, DRF
//! allocations == offered + used, indexes agree, counts within the limits) runs at the end of
//! every cycle in debug builds; each event checks only the agents and frameworks it touched
//! (`check_agent`, `check_framework`), so a debug build stays O(A) per cycle, not per event.

pub mod filters;
pub mod sorter;

use crate::ids::{AgentId, FrameworkId, OfferId, Role};
use crate::limits::{Limits, WEIGHT_MAX};
use crate::resources::{Resources, ResourcesError, Scalars};
use filters::Filters;
use sorter::{DrfSorter, Sorter};
use std::collections::{BTreeMap, BTreeSet};

#[cfg(test)]
mod tests;

/// Default batching interval the driver should use.
pub const ALLOCATION_INTERVAL_MS_DEFAULT: u64 = 50;
/// Default offer lifetime before it is rescinded.
pub const OFFER_TIMEOUT_MS_DEFAULT: u64 = 60_000;

#[derive(Clone, Debug, PartialEq)]
pub struct AllocatorConfig {
    /// Outstanding offers are rescinded this long after they were made; `None` = never (Mesos'
    /// default, which lets an idle framework hoard an agent).
    pub offer_timeout_ms: Option<u64>,
    /// For the driver: how long to batch events before a cycle (the allocator has no timer).
    pub allocation_interval_ms: u64,
    /// An agent is offered only if its free cpus or its free memory reach this (Mesos'
    /// `--min_allocatable_resources`, default cpus 0.01 | mem 32 MiB): crumbs are not offers.
    pub min_allocatable: Scalars,
    pub limits: Limits,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            offer_timeout_ms: Some(OFFER_TIMEOUT_MS_DEFAULT),
            allocation_interval_ms: ALLOCATION_INTERVAL_MS_DEFAULT,
            min_allocatable: Scalars {
                millicpus: 10,
                mem_bytes: 32 << 20,
            },
            limits: Limits::default(),
        }
    }
}

/// A request the allocator refuses; nothing changed. Variants name the id, field or limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocatorError {
    #[error("unknown agent {0}")]
    UnknownAgent(AgentId),
    #[error("unknown framework {0}")]
    UnknownFramework(FrameworkId),
    #[error("unknown offer {0} (rescinded, expired or already used)")]
    UnknownOffer(OfferId),
    #[error("agent {0} is already registered")]
    AgentExists(AgentId),
    #[error("framework {0} is already registered")]
    FrameworkExists(FrameworkId),
    #[error("agents_max reached ({max})")]
    AgentsMax { max: usize },
    #[error("frameworks_max reached ({max})")]
    FrameworksMax { max: usize },
    #[error("refuse_for_ms: {value_ms} ms is above refuse_seconds_max ({max_seconds} s)")]
    RefuseTooLong { value_ms: u64, max_seconds: u64 },
    #[error("{field}: {value} is not a weight (finite, > 0, <= {WEIGHT_MAX})")]
    InvalidWeight { field: &'static str, value: f64 },
    #[error("{field}: {source}")]
    Resources {
        field: &'static str,
        #[source]
        source: ResourcesError,
    },
}

/// Resources on one agent, offered to one framework until used, declined, rescinded or expired.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub id: OfferId,
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Resources,
    /// When it is rescinded if still outstanding; `None` if offers do not time out.
    pub expires_at_ms: Option<u64>,
}

/// Why a framework was not offered an agent.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipReason {
    /// The framework declined (or returned) these resources with `refuse_for`; the filter still
    /// covers what is free on the agent.
    Filtered { until_ms: u64 },
    /// The framework called `suppress` and has not called `revive`.
    Suppressed,
    /// The framework holds `offers_outstanding_per_framework_max` offers.
    OfferLimit { max: usize },
    /// The agent's free resources are already in an outstanding offer (one at a time).
    OfferOutstanding {
        offer: OfferId,
        framework: FrameworkId,
    },
    /// Less is free on the agent than `min_allocatable`.
    InsufficientResources { available: Resources },
    /// (`explain` only.) A framework ahead in DRF order was offered the agent.
    OfferedToOther { framework: FrameworkId },
    /// (`explain` only.) The agent or framework arrived after the last cycle.
    NotConsidered,
}

/// One framework passed over on one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub reason: SkipReason,
}

/// The result of one cycle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allocation {
    pub offers: Vec<Offer>,
    /// Offers that timed out; their resources are back in the pool. Tell their frameworks.
    pub rescinds: Vec<OfferId>,
    /// Framework × agent skips (filters), in visiting order.
    pub skipped: Vec<Skip>,
    /// Agents no framework could be offered, with the reason (holds for every framework).
    pub agents_skipped: Vec<(AgentId, SkipReason)>,
    /// Frameworks offered nothing from some point of the cycle on (suppressed, or at their
    /// offer limit), with the reason (holds for every agent from then on).
    pub frameworks_skipped: Vec<(FrameworkId, SkipReason)>,
}

#[derive(Clone, Debug)]
struct Agent {
    total: Resources,
    attributes: BTreeMap<String, String>,
    /// Resources in use by launched tasks, per framework (entries are never empty).
    used: BTreeMap<FrameworkId, Resources>,
    offer: Option<OfferId>,
    /// Invariant: `available + Σ used + offer.resources == total` (ports disjoint).
    available: Resources,
}

#[derive(Clone, Debug)]
struct Framework {
    role: Role,
    suppressed: bool,
    offers: BTreeSet<OfferId>,
}

/// What the last cycle decided, kept so `explain` can answer "why was nothing offered?".
#[derive(Clone, Debug, Default)]
struct LastCycle {
    /// Every agent visited, in order.
    visited: Vec<AgentId>,
    /// Frameworks registered when the cycle ran.
    considered: BTreeSet<FrameworkId>,
    /// Parallel to `visited` (a `Vec`, not a map: one push per agent keeps the cycle cheap).
    outcomes: Vec<Outcome>,
    pairs: BTreeMap<FrameworkId, BTreeMap<AgentId, SkipReason>>,
    /// Reason and the index in `visited` from which it applied.
    frameworks: BTreeMap<FrameworkId, (SkipReason, usize)>,
}

/// What happened to one visited agent.
#[derive(Clone, Debug)]
enum Outcome {
    Offered(FrameworkId),
    /// Skipped for every framework.
    Skipped(SkipReason),
    /// No eligible framework (every reason is per framework).
    Open,
}

/// The DRF allocator. See the module doc for the cycle and its guarantees.
#[derive(Clone, Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    agents: BTreeMap<AgentId, Agent>,
    frameworks: BTreeMap<FrameworkId, Framework>,
    offers: BTreeMap<OfferId, Offer>,
    /// Invariant: one `(expires_at_ms, id)` per offer with an expiry.
    offer_expiry: BTreeSet<(u64, OfferId)>,
    filters: Filters,
    role_weights: BTreeMap<Role, f64>,
    /// Roles with at least one framework.
    roles: DrfSorter<Role>,
    /// Per role, its frameworks. Invariant: a role is in `roles` iff it has an entry here, and
    /// every sorter's allocations equal the offered + used resources of its clients.
    role_frameworks: BTreeMap<Role, DrfSorter<FrameworkId>>,
    /// Σ agent totals (scalars), the pool shares are measured against.
    total: Scalars,
    next_offer_id: u64,
    dirty: bool,
    last: LastCycle,
}

fn check_weight(field: &'static str, w: f64) -> Result<f64, AllocatorError> {
    if w.is_finite() && w > 0.0 && w <= WEIGHT_MAX {
        Ok(w)
    } else {
        Err(AllocatorError::InvalidWeight { field, value: w })
    }
}

fn res_err(field: &'static str) -> impl FnOnce(ResourcesError) -> AllocatorError {
    move |source| AllocatorError::Resources { field, source }
}

impl Allocator {
    pub fn new(config: AllocatorConfig) -> Allocator {
        Allocator {
            config,
            agents: BTreeMap::new(),
            frameworks: BTreeMap::new(),
            offers: BTreeMap::new(),
            offer_expiry: BTreeSet::new(),
            filters: Filters::new(),
            role_weights: BTreeMap::new(),
            roles: DrfSorter::new(),
            role_frameworks: BTreeMap::new(),
            total: Scalars::default(),
            next_offer_id: 1,
            dirty: false,
            last: LastCycle::default(),
        }
    }

    pub fn config(&self) -> &AllocatorConfig {
        &self.config
    }

    // ---- events -------------------------------------------------------------------------

    /// Registers an agent with everything free.
    pub fn add_agent(
        &mut self,
        id: AgentId,
        total: Resources,
        attributes: BTreeMap<String, String>,
    ) -> Result<(), AllocatorError> {
        if self.agents.contains_key(&id) {
            return Err(AllocatorError::AgentExists(id));
        }
        if self.agents.len() >= self.config.limits.agents_max {
            return Err(AllocatorError::AgentsMax {
                max: self.config.limits.agents_max,
            });
        }
        let t = total.scalars();
        let new_total = Scalars {
            millicpus: self.total.millicpus.checked_add(t.millicpus).ok_or(
                AllocatorError::Resources {
                    field: "total",
                    source: ResourcesError::Overflow { field: "cpus" },
                },
            )?,
            mem_bytes: self.total.mem_bytes.checked_add(t.mem_bytes).ok_or(
                AllocatorError::Resources {
                    field: "total",
                    source: ResourcesError::Overflow { field: "mem_bytes" },
                },
            )?,
        };
        self.set_total(new_total);
        self.agents.insert(
            id.clone(),
            Agent {
                available: total.clone(),
                total,
                attributes,
                used: BTreeMap::new(),
                offer: None,
            },
        );
        self.dirty = true;
        self.touched(&[&id], &[]);
        Ok(())
    }

    /// Removes an agent (gone or lost): its outstanding offer is rescinded (returned, for the
    /// driver to tell the framework), what ran on it is released, its filters dropped.
    pub fn remove_agent(&mut self, id: &AgentId) -> Result<Vec<OfferId>, AllocatorError> {
        let Some(agent) = self.agents.remove(id) else {
            return Err(AllocatorError::UnknownAgent(id.clone()));
        };
        let mut rescinded = Vec::new();
        let mut touched: Vec<FrameworkId> = agent.used.keys().cloned().collect();
        if let Some(offer_id) = agent.offer {
            let offer = self.take_offer(offer_id);
            self.unallocate(&offer.framework, offer.resources.scalars());
            rescinded.push(offer_id);
            touched.push(offer.framework);
        }
        for (fw, used) in &agent.used {
            self.unallocate(fw, used.scalars());
        }
        self.filters.clear_agent(id);
        let mut total = self.total;
        total.sub(agent.total.scalars());
        self.set_total(total);
        self.touched(&[], &touched.iter().collect::<Vec<_>>());
        Ok(rescinded)
    }

    /// Registers a framework in `role`; `weight` (default 1) orders it among its role's
    /// frameworks.
    pub fn add_framework(
        &mut self,
        id: FrameworkId,
        role: Role,
        weight: Option<f64>,
    ) -> Result<(), AllocatorError> {
        let weight = check_weight("weight", weight.unwrap_or(1.0))?;
        if self.frameworks.contains_key(&id) {
            return Err(AllocatorError::FrameworkExists(id));
        }
        if self.frameworks.len() >= self.config.limits.frameworks_max {
            return Err(AllocatorError::FrameworksMax {
                max: self.config.limits.frameworks_max,
            });
        }
        let role_weight = self.role_weights.get(&role).copied().unwrap_or(1.0);
        self.roles.add(role.clone(), role_weight);
        let sorter = self.role_frameworks.entry(role.clone()).or_insert_with(|| {
            let mut s = DrfSorter::new();
            s.set_total(self.total);
            s
        });
        sorter.add(id.clone(), weight);
        self.frameworks.insert(
            id.clone(),
            Framework {
                role,
                suppressed: false,
                offers: BTreeSet::new(),
            },
        );
        self.dirty = true;
        self.touched(&[], &[&id]);
        Ok(())
    }

    /// Removes a framework (torn down). Its outstanding offers are dropped and returned (no
    /// rescind to send: the framework is gone); resources its tasks used are released, as the
    /// master kills those tasks; its filters go.
    pub fn remove_framework(&mut self, id: &FrameworkId) -> Result<Vec<OfferId>, AllocatorError> {
        let fw = self
            .frameworks
            .get(id)
            .ok_or_else(|| AllocatorError::UnknownFramework(id.clone()))?;
        let offer_ids: Vec<OfferId> = fw.offers.iter().copied().collect();
        let role = fw.role.clone();
        let mut touched = Vec::new();
        for &offer_id in &offer_ids {
            let offer = self.take_offer(offer_id);
            // No filter (refuse 0), so the time is irrelevant.
            self.recover(0, id, &offer.agent, offer.resources, 0);
            touched.push(offer.agent);
        }
        let mut released = Vec::new();
        for (agent_id, agent) in &mut self.agents {
            if let Some(used) = agent.used.remove(id) {
                agent.available = agent
                    .available
                    .checked_add(&used)
                    .expect("agent bookkeeping: used resources are disjoint from free ones");
                released.push((agent_id.clone(), used.scalars()));
            }
        }
        for (agent_id, used) in released {
            self.unallocate(id, used);
            touched.push(agent_id);
        }
        self.filters.clear_framework(id);
        self.frameworks.remove(id);
        if let Some(sorter) = self.role_frameworks.get_mut(&role) {
            sorter.remove(id);
            if sorter.is_empty() {
                self.role_frameworks.remove(&role);
                self.roles.remove(&role);
            }
        }
        self.dirty = true;
        self.touched(&touched.iter().collect::<Vec<_>>(), &[]);
        Ok(offer_ids)
    }

    /// Stop offering to `fw` until `revive`. Idempotent. Outstanding offers stay.
    pub fn suppress(&mut self, fw: &FrameworkId) -> Result<(), AllocatorError> {
        self.framework_mut(fw)?.suppressed = true;
        self.touched(&[], &[fw]);
        Ok(())
    }

    /// Undo `suppress`. Idempotent. Does **not** clear decline filters (see `clear_filters`).
    pub fn revive(&mut self, fw: &FrameworkId) -> Result<(), AllocatorError> {
        let f = self.framework_mut(fw)?;
        if f.suppressed {
            f.suppressed = false;
            self.dirty = true;
        }
        self.touched(&[], &[fw]);
        Ok(())
    }

    /// Drops all of `fw`'s decline filters, so it may be offered those agents again at once.
    /// Returns how many were dropped. Separate from `revive` on purpose (Mesos trap).
    pub fn clear_filters(&mut self, fw: &FrameworkId) -> Result<usize, AllocatorError> {
        self.framework_mut(fw)?;
        let n = self.filters.clear_framework(fw);
        if n > 0 {
            self.dirty = true;
        }
        self.touched(&[], &[fw]);
        Ok(n)
    }

    /// Sets a role's weight (default 1); it applies to frameworks added later too.
    pub fn set_role_weight(&mut self, role: Role, weight: f64) -> Result<(), AllocatorError> {
        let weight = check_weight("weight", weight)?;
        self.roles.set_weight(&role, weight);
        self.role_weights.insert(role, weight);
        self.dirty = true;
        if cfg!(debug_assertions) {
            self.roles.check_invariants("role", self.total);
        }
        Ok(())
    }

    /// The framework declined an offer: its resources go back to the pool, and with
    /// `refuse_for_ms > 0` it will not be offered them on that agent again before then.
    pub fn decline(
        &mut self,
        now_ms: u64,
        offer_id: OfferId,
        refuse_for_ms: u64,
    ) -> Result<(), AllocatorError> {
        self.check_refuse(refuse_for_ms)?;
        if !self.offers.contains_key(&offer_id) {
            return Err(AllocatorError::UnknownOffer(offer_id));
        }
        let offer = self.take_offer(offer_id);
        self.recover(
            now_ms,
            &offer.framework,
            &offer.agent,
            offer.resources,
            refuse_for_ms,
        );
        self.touched(&[&offer.agent], &[&offer.framework]);
        Ok(())
    }

    /// The framework accepted an offer and launched tasks using `used` (⊆ the offer); the rest
    /// goes back to the pool with no filter.
    pub fn offer_used(&mut self, offer_id: OfferId, used: Resources) -> Result<(), AllocatorError> {
        self.accept_offer(0, offer_id, used, 0)
    }

    /// The framework accepted an offer and launched tasks using `used` (⊆ the offer); the rest
    /// goes back to the pool, filtered for that framework on that agent for `refuse_for_ms`
    /// (the Accept call's filters, as in Mesos).
    pub fn accept_offer(
        &mut self,
        now_ms: u64,
        offer_id: OfferId,
        used: Resources,
        refuse_for_ms: u64,
    ) -> Result<(), AllocatorError> {
        self.check_refuse(refuse_for_ms)?;
        let offer = self
            .offers
            .get(&offer_id)
            .ok_or(AllocatorError::UnknownOffer(offer_id))?;
        let rest = offer
            .resources
            .checked_sub(&used)
            .map_err(res_err("used"))?;
        let offer = self.take_offer(offer_id);
        let agent = self
            .agents
            .get_mut(&offer.agent)
            .expect("an outstanding offer's agent is registered");
        let entry = agent.used.entry(offer.framework.clone()).or_default();
        *entry = entry
            .checked_add(&used)
            .expect("agent bookkeeping: offered resources are disjoint from used ones");
        if entry.is_empty() {
            agent.used.remove(&offer.framework);
        }
        if rest.is_empty() {
            self.dirty = true;
        } else {
            self.recover(now_ms, &offer.framework, &offer.agent, rest, refuse_for_ms);
        }
        self.touched(&[&offer.agent], &[&offer.framework]);
        Ok(())
    }

    /// Resources `fw` used on `agent` are free again (a task ended, or the framework gives them
    /// back); with `refuse_for_ms > 0` they are filtered for `fw` on that agent, as a decline.
    pub fn recover_resources(
        &mut self,
        now_ms: u64,
        fw: &FrameworkId,
        agent_id: &AgentId,
        res: Resources,
        refuse_for_ms: u64,
    ) -> Result<(), AllocatorError> {
        self.check_refuse(refuse_for_ms)?;
        if !self.frameworks.contains_key(fw) {
            return Err(AllocatorError::UnknownFramework(fw.clone()));
        }
        let agent = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| AllocatorError::UnknownAgent(agent_id.clone()))?;
        let used = agent.used.get(fw).cloned().unwrap_or_default();
        let left = used.checked_sub(&res).map_err(res_err("resources"))?;
        if left.is_empty() {
            agent.used.remove(fw);
        } else {
            agent.used.insert(fw.clone(), left);
        }
        self.recover(now_ms, fw, agent_id, res, refuse_for_ms);
        self.touched(&[agent_id], &[fw]);
        Ok(())
    }

    /// Sets what `fw`'s tasks use on `agent` to `used`, replacing what was recorded (an agent
    /// re-registering after a master failover reports its running tasks this way). The new
    /// amount must fit in what is free plus what `fw` used before; else an error naming `used`
    /// and nothing changes.
    pub fn update_agent_used(
        &mut self,
        agent_id: &AgentId,
        fw: &FrameworkId,
        used: Resources,
    ) -> Result<(), AllocatorError> {
        if !self.frameworks.contains_key(fw) {
            return Err(AllocatorError::UnknownFramework(fw.clone()));
        }
        let agent = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| AllocatorError::UnknownAgent(agent_id.clone()))?;
        let old = agent.used.get(fw).cloned().unwrap_or_default();
        let free = agent
            .available
            .checked_add(&old)
            .expect("agent bookkeeping: used resources are disjoint from free ones");
        let available = free.checked_sub(&used).map_err(res_err("used"))?;
        agent.available = available;
        if used.is_empty() {
            agent.used.remove(fw);
        } else {
            agent.used.insert(fw.clone(), used.clone());
        }
        self.unallocate(fw, old.scalars());
        let role = &self.frameworks[fw].role;
        self.roles.allocated(role, used.scalars());
        if let Some(s) = self.role_frameworks.get_mut(role) {
            s.allocated(fw, used.scalars());
        }
        self.dirty = true;
        self.touched(&[agent_id], &[fw]);
        Ok(())
    }

    // ---- the cycle ----------------------------------------------------------------------

    /// Whether a cycle would do anything new: an event arrived since the last one, or an offer
    /// or filter expires by `now_ms`.
    pub fn needs_allocation(&self, now_ms: u64) -> bool {
        self.dirty || self.next_deadline_ms().is_some_and(|at| at <= now_ms)
    }

    /// The earliest time an offer times out or a filter expires (the driver may sleep until
    /// then if nothing else happens).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let offer = self.offer_expiry.first().map(|(at, _)| *at);
        match (offer, self.filters.next_expiry_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs one allocation cycle at `now_ms` (see the module doc).
    pub fn allocate(&mut self, now_ms: u64) -> Allocation {
        let mut out = Allocation::default();
        self.expire_offers(now_ms, &mut out.rescinds);
        self.filters.expire(now_ms);
        self.dirty = false;

        let max = self.config.limits.offers_outstanding_per_framework_max;
        let mut last = LastCycle::default();
        let mut active = 0usize;
        last.considered = self.frameworks.keys().cloned().collect();
        for (id, fw) in &self.frameworks {
            let reason = if fw.suppressed {
                SkipReason::Suppressed
            } else if fw.offers.len() >= max {
                SkipReason::OfferLimit { max }
            } else {
                active += 1;
                continue;
            };
            out.frameworks_skipped.push((id.clone(), reason.clone()));
            last.frameworks.insert(id.clone(), (reason, 0));
        }

        // The loop needs `&mut` to each agent and to the rest of `self`, so the agents are moved
        // out for the loop and back after it; nothing in between reads `self.agents`. Walking
        // the map instead of looking each agent up saves O(log A) string compares per agent.
        let mut agents = std::mem::take(&mut self.agents);
        last.visited = agents.keys().cloned().collect();
        last.outcomes = Vec::with_capacity(last.visited.len());
        for (index, (agent_id, agent)) in agents.iter_mut().enumerate() {
            if let Some(offer) = agent.offer {
                let framework = self.offers[&offer].framework.clone();
                let reason = SkipReason::OfferOutstanding { offer, framework };
                last.outcomes.push(Outcome::Skipped(reason.clone()));
                out.agents_skipped.push((agent_id.clone(), reason));
                continue;
            }
            let free = agent.available.scalars();
            let min = self.config.min_allocatable;
            if free.millicpus < min.millicpus && free.mem_bytes < min.mem_bytes {
                let reason = SkipReason::InsufficientResources {
                    available: agent.available.clone(),
                };
                last.outcomes.push(Outcome::Skipped(reason.clone()));
                out.agents_skipped.push((agent_id.clone(), reason));
                continue;
            }
            if active == 0 {
                // Everyone is suppressed or at their limit: recorded once per framework above.
                last.outcomes.push(Outcome::Open);
                continue;
            }
            let Some(taker) = self.pick(now_ms, agent_id, &agent.available, &mut out.skipped)
            else {
                last.outcomes.push(Outcome::Open);
                continue;
            };
            let (offer, outstanding) = self.make_offer(now_ms, &taker, agent_id, agent);
            last.outcomes.push(Outcome::Offered(taker.clone()));
            out.offers.push(offer);
            if outstanding >= max {
                active -= 1;
                let reason = SkipReason::OfferLimit { max };
                out.frameworks_skipped.push((taker.clone(), reason.clone()));
                last.frameworks.insert(taker, (reason, index + 1));
            }
        }
        self.agents = agents;
        assert_eq!(
            last.outcomes.len(),
            last.visited.len(),
            "allocate: one outcome per visited agent"
        );
        for skip in &out.skipped {
            last.pairs
                .entry(skip.framework.clone())
                .or_default()
                .insert(skip.agent.clone(), skip.reason.clone());
        }
        self.last = last;
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        out
    }

    /// The first framework in DRF order (roles, then frameworks) that may be offered
    /// `available` on `agent`; filtered frameworks passed over on the way are recorded.
    fn pick(
        &self,
        now_ms: u64,
        agent: &AgentId,
        available: &Resources,
        skipped: &mut Vec<Skip>,
    ) -> Option<FrameworkId> {
        let max = self.config.limits.offers_outstanding_per_framework_max;
        for role in self.roles.sorted() {
            for id in self.role_frameworks[role].sorted() {
                let fw = &self.frameworks[id];
                if fw.suppressed || fw.offers.len() >= max {
                    continue;
                }
                if let Some(until_ms) = self.filters.filtered_until(id, agent, available, now_ms) {
                    skipped.push(Skip {
                        framework: id.clone(),
                        agent: agent.clone(),
                        reason: SkipReason::Filtered { until_ms },
                    });
                    continue;
                }
                return Some(id.clone());
            }
        }
        None
    }

    /// Why `fw` was not offered each agent in the last cycle (agents it was offered are left
    /// out). Reasons that held for a whole agent come first, then the framework's filter on
    /// that agent, then reasons that held for the framework, then "someone ahead took it".
    pub fn explain(&self, fw: &FrameworkId) -> Result<Vec<(AgentId, SkipReason)>, AllocatorError> {
        if !self.frameworks.contains_key(fw) {
            return Err(AllocatorError::UnknownFramework(fw.clone()));
        }
        let last = &self.last;
        let pairs = last.pairs.get(fw);
        let framework_reason = last.frameworks.get(fw);
        let mut out = Vec::new();
        if !last.considered.contains(fw) {
            return Ok(self
                .agents
                .keys()
                .map(|a| (a.clone(), SkipReason::NotConsidered))
                .collect());
        }
        for (index, (agent, outcome)) in last.visited.iter().zip(&last.outcomes).enumerate() {
            let offered_to = match outcome {
                Outcome::Offered(f) if f == fw => continue,
                Outcome::Offered(f) => Some(f),
                _ => None,
            };
            let reason = if let Outcome::Skipped(r) = outcome {
                r.clone()
            } else if let Some(r) = pairs.and_then(|p| p.get(agent)) {
                r.clone()
            } else if let Some((r, _)) = framework_reason.filter(|(_, from)| index >= *from) {
                r.clone()
            } else if let Some(other) = offered_to {
                SkipReason::OfferedToOther {
                    framework: other.clone(),
                }
            } else {
                SkipReason::NotConsidered
            };
            out.push((agent.clone(), reason));
        }
        for agent in self.agents.keys() {
            if last.visited.binary_search(agent).is_err() {
                out.push((agent.clone(), SkipReason::NotConsidered));
            }
        }
        Ok(out)
    }

    // ---- reads --------------------------------------------------------------------------

    pub fn offer(&self, id: OfferId) -> Option<&Offer> {
        self.offers.get(&id)
    }

    /// Outstanding offers, by id.
    pub fn offers(&self) -> impl Iterator<Item = &Offer> {
        self.offers.values()
    }

    /// What is free (neither offered nor used) on an agent.
    pub fn available(&self, agent: &AgentId) -> Option<&Resources> {
        self.agents.get(agent).map(|a| &a.available)
    }

    /// What `fw`'s tasks use on `agent` (none: `None`).
    pub fn used(&self, agent: &AgentId, fw: &FrameworkId) -> Option<&Resources> {
        self.agents.get(agent)?.used.get(fw)
    }

    /// What each framework's tasks use on `agent` (entries are never empty).
    pub fn agent_used(&self, agent: &AgentId) -> Option<&BTreeMap<FrameworkId, Resources>> {
        self.agents.get(agent).map(|a| &a.used)
    }

    /// Whether `fw` is suppressed; `None` if it is not registered.
    pub fn is_suppressed(&self, fw: &FrameworkId) -> Option<bool> {
        self.frameworks.get(fw).map(|f| f.suppressed)
    }

    pub fn agent_attributes(&self, agent: &AgentId) -> Option<&BTreeMap<String, String>> {
        self.agents.get(agent).map(|a| &a.attributes)
    }

    /// Offered + used scalars of a framework, as DRF counts them.
    pub fn allocated(&self, fw: &FrameworkId) -> Option<Scalars> {
        let role = &self.frameworks.get(fw)?.role;
        self.role_frameworks.get(role)?.allocation(fw)
    }

    /// Frameworks in the order the next cycle would consider them (roles by weighted dominant
    /// share, then frameworks within each role), suppressed ones included.
    pub fn drf_order(&self) -> Vec<FrameworkId> {
        self.roles
            .sorted()
            .flat_map(|role| self.role_frameworks[role].sorted().cloned())
            .collect()
    }

    pub fn agents_len(&self) -> usize {
        self.agents.len()
    }

    pub fn frameworks_len(&self) -> usize {
        self.frameworks.len()
    }

    // ---- internals ----------------------------------------------------------------------

    fn framework_mut(&mut self, fw: &FrameworkId) -> Result<&mut Framework, AllocatorError> {
        self.frameworks
            .get_mut(fw)
            .ok_or_else(|| AllocatorError::UnknownFramework(fw.clone()))
    }

    fn check_refuse(&self, refuse_for_ms: u64) -> Result<(), AllocatorError> {
        let max_seconds = self.config.limits.refuse_seconds_max;
        if refuse_for_ms > max_seconds.saturating_mul(1000) {
            return Err(AllocatorError::RefuseTooLong {
                value_ms: refuse_for_ms,
                max_seconds,
            });
        }
        Ok(())
    }

    fn set_total(&mut self, total: Scalars) {
        self.total = total;
        self.roles.set_total(total);
        for s in self.role_frameworks.values_mut() {
            s.set_total(total);
        }
    }

    fn unallocate(&mut self, fw: &FrameworkId, res: Scalars) {
        let role = &self.frameworks[fw].role;
        self.roles.unallocated(role, res);
        if let Some(s) = self.role_frameworks.get_mut(role) {
            s.unallocated(fw, res);
        }
    }

    /// Offers everything free on `agent` to `fw`; returns the offer and how many offers `fw`
    /// now holds. Does not touch `self.agents` (`allocate` has them moved out).
    fn make_offer(
        &mut self,
        now_ms: u64,
        fw: &FrameworkId,
        agent_id: &AgentId,
        agent: &mut Agent,
    ) -> (Offer, usize) {
        let id = OfferId(self.next_offer_id);
        self.next_offer_id += 1;
        let resources = std::mem::take(&mut agent.available);
        agent.offer = Some(id);
        let expires_at_ms = self
            .config
            .offer_timeout_ms
            .map(|t| now_ms.saturating_add(t));
        if let Some(at) = expires_at_ms {
            self.offer_expiry.insert((at, id));
        }
        let f = self
            .frameworks
            .get_mut(fw)
            .expect("offering to a registered framework");
        f.offers.insert(id);
        let outstanding = f.offers.len();
        let scalars = resources.scalars();
        self.roles.allocated(&f.role, scalars);
        if let Some(s) = self.role_frameworks.get_mut(&f.role) {
            s.allocated(fw, scalars);
        }
        let offer = Offer {
            id,
            framework: fw.clone(),
            agent: agent_id.clone(),
            resources,
            expires_at_ms,
        };
        self.offers.insert(id, offer.clone());
        (offer, outstanding)
    }

    /// Removes an outstanding offer from every index (its resources are still allocated to the
    /// framework in the sorters; the caller decides where they go). Panics on an unknown id:
    /// callers check first.
    fn take_offer(&mut self, id: OfferId) -> Offer {
        let offer = self.offers.remove(&id).expect("taking a known offer");
        if let Some(at) = offer.expires_at_ms {
            self.offer_expiry.remove(&(at, id));
        }
        if let Some(f) = self.frameworks.get_mut(&offer.framework) {
            f.offers.remove(&id);
        }
        if let Some(a) = self.agents.get_mut(&offer.agent) {
            a.offer = None;
        }
        offer
    }

    /// `res`, allocated to `fw` on `agent_id` and already taken out of its offer or used set,
    /// is free again; optionally filter it.
    fn recover(
        &mut self,
        now_ms: u64,
        fw: &FrameworkId,
        agent_id: &AgentId,
        res: Resources,
        refuse_for_ms: u64,
    ) {
        let agent = self
            .agents
            .get_mut(agent_id)
            .expect("recovering onto a registered agent");
        agent.available = agent
            .available
            .checked_add(&res)
            .expect("agent bookkeeping: recovered resources are disjoint from free ones");
        self.unallocate(fw, res.scalars());
        self.filters.add(fw, agent_id, res, now_ms, refuse_for_ms);
        self.dirty = true;
    }

    fn expire_offers(&mut self, now_ms: u64, rescinds: &mut Vec<OfferId>) {
        while let Some(&(at, id)) = self.offer_expiry.first() {
            if at > now_ms {
                break;
            }
            let offer = self.take_offer(id);
            self.recover(now_ms, &offer.framework, &offer.agent, offer.resources, 0);
            rescinds.push(id);
        }
    }

    /// Panics, naming the object, if one agent's bookkeeping is off: free + used + offered ==
    /// total with no overlap, no empty `used` entry, its offer is indexed both ways and belongs
    /// to a registered framework. O(frameworks using the agent).
    pub fn check_agent(&self, id: &AgentId) {
        let Some(a) = self.agents.get(id) else {
            return;
        };
        let mut sum = a.available.clone();
        for (fw, used) in &a.used {
            assert!(
                !used.is_empty(),
                "allocator: agent {id} has an empty used entry for framework {fw}"
            );
            assert!(
                self.frameworks.contains_key(fw),
                "allocator: agent {id} holds resources of unregistered framework {fw}"
            );
            sum = sum.checked_add(used).unwrap_or_else(|e| {
                panic!("allocator: agent {id}: what framework {fw} uses overlaps the rest ({e})")
            });
        }
        if let Some(o) = a.offer {
            let Some(offer) = self.offers.get(&o) else {
                panic!("allocator: agent {id} points at offer {o}, which is not outstanding");
            };
            assert_eq!(
                &offer.agent, id,
                "allocator: agent {id} points at offer {o}, which is on agent {}",
                offer.agent
            );
            assert!(
                self.frameworks
                    .get(&offer.framework)
                    .is_some_and(|f| f.offers.contains(&o)),
                "allocator: offer {o} on agent {id} is not held by its framework {}",
                offer.framework
            );
            sum = sum.checked_add(&offer.resources).unwrap_or_else(|e| {
                panic!("allocator: agent {id}: offer {o} overlaps free or used resources ({e})")
            });
        }
        assert_eq!(
            sum, a.total,
            "allocator: agent {id}: free + used + offered != total"
        );
    }

    /// Panics, naming the object, if one framework's bookkeeping is off: every offer it holds
    /// is outstanding and its own, it holds at most `offers_outstanding_per_framework_max`, and
    /// its role's sorters know it at the share they compute. O(its offers + log F).
    pub fn check_framework(&self, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get(id) else {
            return;
        };
        let max = self.config.limits.offers_outstanding_per_framework_max;
        assert!(
            fw.offers.len() <= max,
            "allocator: framework {id} holds {} offers, above offers_outstanding_per_framework_max ({max})",
            fw.offers.len()
        );
        for o in &fw.offers {
            let Some(offer) = self.offers.get(o) else {
                panic!("allocator: framework {id} holds offer {o}, which is not outstanding");
            };
            assert_eq!(
                &offer.framework, id,
                "allocator: framework {id} holds offer {o}, which is framework {}'s",
                offer.framework
            );
        }
        let Some(sorter) = self.role_frameworks.get(&fw.role) else {
            panic!("allocator: framework {id}'s role {} has no sorter", fw.role);
        };
        assert!(
            sorter.contains(id),
            "allocator: framework {id} is missing from role {}'s sorter",
            fw.role
        );
        assert!(
            self.roles.contains(&fw.role),
            "allocator: role {} of framework {id} is missing from the role sorter",
            fw.role
        );
    }

    /// Panics, naming the object, unless every bookkeeping invariant holds: each agent and
    /// framework as in `check_agent` / `check_framework`, every offer indexed from its agent,
    /// its framework and (with an expiry) `offer_expiry`, the pool total is the sum of the
    /// agents', DRF allocations (frameworks and roles) equal offered + used resources, the
    /// sorters are keyed at the shares they compute, filters name registered frameworks and
    /// agents, and the registered counts are within `agents_max` / `frameworks_max`.
    /// O(A + F + offers + filters). Runs after every cycle in debug builds, and in tests.
    pub fn check_invariants(&self) {
        let limits = &self.config.limits;
        assert!(
            self.agents.len() <= limits.agents_max,
            "allocator: {} agents, above agents_max ({})",
            self.agents.len(),
            limits.agents_max
        );
        assert!(
            self.frameworks.len() <= limits.frameworks_max,
            "allocator: {} frameworks, above frameworks_max ({})",
            self.frameworks.len(),
            limits.frameworks_max
        );
        let mut per_fw: BTreeMap<&FrameworkId, Scalars> = BTreeMap::new();
        let mut total = Scalars::default();
        for (id, a) in &self.agents {
            self.check_agent(id);
            total.add(a.total.scalars());
            for (fw, used) in &a.used {
                per_fw.entry(fw).or_default().add(used.scalars());
            }
        }
        assert_eq!(
            total, self.total,
            "allocator: the pool total is not the sum of the agents' totals"
        );
        for (id, offer) in &self.offers {
            assert_eq!(
                &offer.id, id,
                "allocator: offer {id} is stored as {}",
                offer.id
            );
            assert_eq!(
                self.agents.get(&offer.agent).and_then(|a| a.offer),
                Some(*id),
                "allocator: offer {id} is not its agent {}'s outstanding offer",
                offer.agent
            );
            if let Some(at) = offer.expires_at_ms {
                assert!(
                    self.offer_expiry.contains(&(at, *id)),
                    "allocator: offer {id} expiring at {at} ms is missing from the expiry index"
                );
            }
            per_fw
                .entry(&offer.framework)
                .or_default()
                .add(offer.resources.scalars());
        }
        assert_eq!(
            self.offer_expiry.len(),
            self.offers
                .values()
                .filter(|o| o.expires_at_ms.is_some())
                .count(),
            "allocator: the offer expiry index holds entries for offers that are gone"
        );
        let mut per_role: BTreeMap<&Role, Scalars> = BTreeMap::new();
        for (id, fw) in &self.frameworks {
            self.check_framework(id);
            let allocated = per_fw.get(id).copied().unwrap_or_default();
            assert_eq!(
                self.allocated(id),
                Some(allocated),
                "allocator: framework {id}'s DRF allocation is not its offered + used resources"
            );
            per_role.entry(&fw.role).or_default().add(allocated);
        }
        for (fw, _) in per_fw {
            assert!(
                self.frameworks.contains_key(fw),
                "allocator: unregistered framework {fw} holds resources"
            );
        }
        self.roles.check_invariants("role", self.total);
        assert_eq!(
            self.roles.len(),
            self.role_frameworks.len(),
            "allocator: the role sorter and the per-role sorters disagree on the roles"
        );
        for (role, sorter) in &self.role_frameworks {
            sorter.check_invariants(role.as_str(), self.total);
            assert!(
                !sorter.is_empty(),
                "allocator: role {role} has a sorter but no frameworks"
            );
            for fw in sorter.clients() {
                assert!(
                    self.frameworks.get(fw).is_some_and(|f| &f.role == role),
                    "allocator: role {role}'s sorter holds framework {fw}, which is not in that role"
                );
            }
            assert_eq!(
                self.roles.allocation(role),
                Some(per_role.get(role).copied().unwrap_or_default()),
                "allocator: role {role}'s DRF allocation is not the sum of its frameworks'"
            );
            assert_eq!(
                self.roles.weight(role),
                Some(self.role_weights.get(role).copied().unwrap_or(1.0)),
                "allocator: role {role}'s weight in the sorter is not the one set"
            );
        }
        self.filters.check_invariants();
        for (fw, agent) in self.filters.pairs() {
            assert!(
                self.frameworks.contains_key(fw) && self.agents.contains_key(agent),
                "allocator: a filter of framework {fw} on agent {agent} outlived one of them"
            );
        }
    }

    /// After an event, in debug builds: the invariants of what it touched. The whole state is
    /// checked once per cycle (`allocate`, itself O(A)); checking all of it after every event
    /// would make a debug build quadratic in agents.
    fn touched(&self, agents: &[&AgentId], frameworks: &[&FrameworkId]) {
        if cfg!(debug_assertions) {
            for a in agents {
                self.check_agent(a);
            }
            for f in frameworks {
                self.check_framework(f);
            }
        }
    }
}
