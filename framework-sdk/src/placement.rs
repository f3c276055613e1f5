//! Turning offers into launches for N instances: spread, bin-pack, max per host, spread by an
//! attribute.
//!
//! `place` is a pure function of its inputs: no clock, no randomness, and ties broken by hostname,
//! agent id and offer id, so the same offers in any order give the same launches. Every offer that
//! got nothing carries a reason (and, when instances stay unplaced, every offer does), the way
//! Nomad's `FilterNode` answers "why not there?".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::offers::{AgentId, Offer, OfferId, TaskRequest};
use crate::resources::{PortRanges, Resources, cpus_from_millicpus, format_mem};

/// How to choose among offers that all fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Next instance to the host with the fewest instances of this task (existing ones counted),
    /// so instances go round-robin over hosts. Survives the loss of a host best.
    #[default]
    Spread,
    /// Next instance to the fullest offer that still fits (fewest instances left room for), so
    /// one offer fills before the next is touched and large offers stay whole for large tasks.
    #[serde(alias = "binpack")]
    BinPack,
}

/// Placement rules for one task group; the `[placement]` table of a service spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Placement {
    pub strategy: Strategy,
    /// At most this many instances per host, counting instances already running there.
    pub max_per_host: Option<u32>,
    /// Balance instance counts over the values of this agent attribute (e.g. `"rack"`) before the
    /// strategy chooses within them; an offer without the attribute is not used.
    pub spread_by: Option<String>,
}

/// An instance already running (or already launched), counted towards `max_per_host` and
/// `spread_by` balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingInstance {
    pub agent_id: AgentId,
    pub hostname: String,
    pub attributes: BTreeMap<String, String>,
}

impl From<&Offer> for ExistingInstance {
    /// The instance a launch on `offer` becomes.
    fn from(offer: &Offer) -> ExistingInstance {
        ExistingInstance {
            agent_id: offer.agent_id.clone(),
            hostname: offer.hostname.clone(),
            attributes: offer.attributes.clone(),
        }
    }
}

/// One instance to launch: accept `offer_id` with a task using `resources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub offer_id: OfferId,
    pub agent_id: AgentId,
    /// The instance's ports, lowest first: `PORT0`, `PORT1`, ... Distinct across all launches
    /// from the same offer, and all within the offer.
    pub ports: Vec<u16>,
    /// The request's cpus and memory plus exactly `ports`.
    pub resources: Resources,
}

/// Why an offer took no (further) instance. Cpus are `f64` cpus, memory bytes. When several
/// apply, the first in this order is reported; resources are what was left after any carving.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Unfit {
    NotEnoughCpus {
        need: f64,
        have: f64,
    },
    NotEnoughMem {
        need: u64,
        have: u64,
    },
    NotEnoughPorts {
        need: u32,
        have: u32,
    },
    /// The host already runs `max` instances (existing plus placed now).
    MaxPerHost {
        max: u32,
    },
    /// The offer's agent lacks the `spread_by` attribute `name`.
    MissingAttribute {
        name: String,
    },
    /// The offer fits, but every wanted instance was placed elsewhere.
    NotNeeded,
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::NotEnoughCpus { need, have } => {
                write!(f, "needs {need} cpus per instance, the offer has {have}")
            }
            Unfit::NotEnoughMem { need, have } => write!(
                f,
                "needs {} memory per instance, the offer has {}",
                format_mem(*need),
                format_mem(*have)
            ),
            Unfit::NotEnoughPorts { need, have } => {
                write!(f, "needs {need} ports per instance, the offer has {have}")
            }
            Unfit::MaxPerHost { max } => write!(f, "host already runs max_per_host={max}"),
            Unfit::MissingAttribute { name } => write!(f, "agent has no attribute {name:?}"),
            Unfit::NotNeeded => f.write_str("not needed: all instances placed"),
        }
    }
}

/// The result of [`place`].
///
/// Invariants: `launches.len() + unplaced == wanted`; every offer without a launch appears in
/// `reasons` exactly once, and when `unplaced > 0` every offer does (why it took no more), in the
/// order of the input offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementPlan {
    pub launches: Vec<Launch>,
    pub unplaced: u32,
    pub reasons: Vec<(AgentId, Unfit)>,
}

impl PlacementPlan {
    /// One line on why instances stayed unplaced, for a status page or log, e.g. "1 instance
    /// unplaced: needs 2 cpus per instance, the most offered is 1.5"; `None` if all were placed.
    pub fn explain(&self) -> Option<String> {
        if self.unplaced == 0 {
            return None;
        }
        let mut cpus: Option<(f64, f64)> = None;
        let mut mem: Option<(u64, u64)> = None;
        let mut ports: Option<(u32, u32)> = None;
        let mut max_per_host: Option<(u32, usize)> = None;
        let mut missing: Option<(&str, usize)> = None;
        for (_, unfit) in &self.reasons {
            match unfit {
                Unfit::NotEnoughCpus { need, have } => {
                    let best = cpus.map_or(*have, |(_, h)| h.max(*have));
                    cpus = Some((*need, best));
                }
                Unfit::NotEnoughMem { need, have } => {
                    mem = Some((*need, mem.map_or(*have, |(_, h)| h.max(*have))));
                }
                Unfit::NotEnoughPorts { need, have } => {
                    ports = Some((*need, ports.map_or(*have, |(_, h)| h.max(*have))));
                }
                Unfit::MaxPerHost { max } => {
                    max_per_host = Some((*max, max_per_host.map_or(1, |(_, n)| n + 1)));
                }
                Unfit::MissingAttribute { name } => {
                    missing = Some((name, missing.map_or(1, |(_, n)| n + 1)));
                }
                Unfit::NotNeeded => {}
            }
        }
        let mut parts = Vec::new();
        if self.reasons.is_empty() {
            parts.push("no offers".to_string());
        }
        if let Some((need, have)) = cpus {
            parts.push(format!(
                "needs {need} cpus per instance, the most offered is {have}"
            ));
        }
        if let Some((need, have)) = mem {
            parts.push(format!(
                "needs {} memory per instance, the most offered is {}",
                format_mem(need),
                format_mem(have)
            ));
        }
        if let Some((need, have)) = ports {
            parts.push(format!(
                "needs {need} ports per instance, the most offered is {have}"
            ));
        }
        if let Some((max, n)) = max_per_host {
            parts.push(format!("max_per_host={max} reached on {n} offer(s)"));
        }
        if let Some((name, n)) = missing {
            parts.push(format!("{n} offer(s) lack attribute {name:?}"));
        }
        let noun = if self.unplaced == 1 {
            "instance"
        } else {
            "instances"
        };
        Some(format!(
            "{} {noun} unplaced: {}",
            self.unplaced,
            parts.join("; ")
        ))
    }
}

/// Where "per host" is counted: the hostname, or the agent id when the hostname is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum HostKey<'a> {
    Name(&'a str),
    Agent(&'a AgentId),
}

fn host_key<'a>(hostname: &'a str, agent_id: &'a AgentId) -> HostKey<'a> {
    if hostname.is_empty() {
        HostKey::Agent(agent_id)
    } else {
        HostKey::Name(hostname)
    }
}

/// What is left of one offer while instances are carved out of it.
struct Remaining {
    millicpus: u64,
    mem_bytes: u64,
    ports: PortRanges,
}

impl Remaining {
    /// The first resource that cannot hold one more instance.
    fn shortfall(&self, request: &TaskRequest) -> Option<Unfit> {
        if self.millicpus < request.millicpus() {
            Some(Unfit::NotEnoughCpus {
                need: request.cpus(),
                have: cpus_from_millicpus(self.millicpus),
            })
        } else if self.mem_bytes < request.mem_bytes() {
            Some(Unfit::NotEnoughMem {
                need: request.mem_bytes(),
                have: self.mem_bytes,
            })
        } else if self.ports.count() < request.ports() {
            Some(Unfit::NotEnoughPorts {
                need: request.ports(),
                have: self.ports.count(),
            })
        } else {
            None
        }
    }

    /// How many more instances fit; the bin-pack measure of "full".
    fn slots(&self, request: &TaskRequest) -> u64 {
        let per = |have: u64, need: u64| have.checked_div(need).unwrap_or(u64::MAX);
        per(self.millicpus, request.millicpus())
            .min(per(self.mem_bytes, request.mem_bytes()))
            .min(per(
                u64::from(self.ports.count()),
                u64::from(request.ports()),
            ))
    }
}

/// Chooses offers for `wanted` instances of `request`, given the instances that already run.
///
/// Several instances may come from one offer: each takes the request's cpus and memory and the
/// lowest free ports of what is left. Instances go, one at a time, to the best offer that still
/// fits: first the `spread_by` attribute value with the fewest instances, then by `strategy`
/// (spread: the host with the fewest instances; bin-pack: the offer with the least room left),
/// then by hostname, agent id and offer id. `max_per_host` counts `existing` instances too.
/// Work is O(wanted × offers).
///
/// ```
/// use std::collections::BTreeMap;
/// use drover_sdk::{place, AgentId, Offer, OfferId, Placement, PortRanges, Resources, TaskRequest, Unfit};
///
/// let offer = |n: u32, cpus: f64| Offer {
///     id: OfferId(format!("o{n}")),
///     agent_id: AgentId(format!("a{n}")),
///     hostname: format!("host{n}"),
///     attributes: BTreeMap::new(),
///     resources: Resources::new(cpus, 4 << 30, PortRanges::from_ranges(&[(31000, 31099)]).unwrap()).unwrap(),
/// };
/// let offers = [offer(1, 4.0), offer(2, 4.0), offer(3, 1.5)];
/// let request = TaskRequest::new(2.0, Resources::parse_mem("512MiB")?, 1)?;
/// let placement = Placement { max_per_host: Some(1), ..Placement::default() };
///
/// let plan = place(&offers, &request, 3, &[], &placement);
/// let hosts: Vec<&str> = plan.launches.iter().map(|l| l.agent_id.0.as_str()).collect();
/// assert_eq!(hosts, ["a1", "a2"]);
/// assert_eq!(plan.launches[0].ports, [31000]);
/// assert_eq!(plan.unplaced, 1);
/// assert_eq!(plan.reasons[2], (AgentId::from("a3"), Unfit::NotEnoughCpus { need: 2.0, have: 1.5 }));
/// assert_eq!(
///     plan.explain().unwrap(),
///     "1 instance unplaced: needs 2 cpus per instance, the most offered is 1.5; max_per_host=1 reached on 2 offer(s)"
/// );
/// # Ok::<(), drover_sdk::ResourcesError>(())
/// ```
pub fn place(
    offers: &[Offer],
    request: &TaskRequest,
    wanted: u32,
    existing: &[ExistingInstance],
    placement: &Placement,
) -> PlacementPlan {
    let spread_by = placement.spread_by.as_deref();
    let mut per_host: BTreeMap<HostKey<'_>, u32> = BTreeMap::new();
    let mut per_value: BTreeMap<&str, u32> = BTreeMap::new();
    for e in existing {
        *per_host
            .entry(host_key(&e.hostname, &e.agent_id))
            .or_default() += 1;
        if let Some(v) = spread_by.and_then(|name| e.attributes.get(name)) {
            *per_value.entry(v).or_default() += 1;
        }
    }
    let mut remaining: Vec<Remaining> = offers
        .iter()
        .map(|o| Remaining {
            millicpus: o.resources.millicpus(),
            mem_bytes: o.resources.mem_bytes(),
            ports: o.resources.ports().clone(),
        })
        .collect();
    let mut got = vec![0u32; offers.len()];
    let mut launches = Vec::new();
    let host_full = |per_host: &BTreeMap<HostKey<'_>, u32>, o: &Offer| {
        placement.max_per_host.is_some_and(|max| {
            per_host
                .get(&host_key(&o.hostname, &o.agent_id))
                .copied()
                .unwrap_or(0)
                >= max
        })
    };
    // `wanted` bounds the loop; each round places one instance or stops.
    while launches.len() < wanted as usize {
        let best = offers
            .iter()
            .enumerate()
            .filter(|&(i, o)| {
                let has_attribute = spread_by.is_none_or(|name| o.attributes.contains_key(name));
                has_attribute
                    && remaining[i].shortfall(request).is_none()
                    && !host_full(&per_host, o)
            })
            .min_by_key(|&(i, o)| {
                let value_count = spread_by
                    .and_then(|name| o.attributes.get(name))
                    .map_or(0, |v| per_value.get(v.as_str()).copied().unwrap_or(0));
                let host = host_key(&o.hostname, &o.agent_id);
                let host_count = per_host.get(&host).copied().unwrap_or(0);
                let (primary, room) = match placement.strategy {
                    Strategy::Spread => (u64::from(host_count), 0),
                    Strategy::BinPack => (
                        remaining[i].slots(request),
                        // Among equally full offers, the one with less cpu and memory left.
                        u128::from(remaining[i].millicpus) << 64
                            | u128::from(remaining[i].mem_bytes),
                    ),
                };
                (value_count, primary, room, host, &o.agent_id, &o.id, i)
            })
            .map(|(i, _)| i);
        let Some(i) = best else { break };
        let offer = &offers[i];
        let r = &mut remaining[i];
        let ports = r
            .ports
            .take_n(request.ports())
            .expect("candidate offers have enough ports");
        r.millicpus -= request.millicpus();
        r.mem_bytes -= request.mem_bytes();
        got[i] += 1;
        *per_host
            .entry(host_key(&offer.hostname, &offer.agent_id))
            .or_default() += 1;
        if let Some(v) = spread_by.and_then(|name| offer.attributes.get(name)) {
            *per_value.entry(v).or_default() += 1;
        }
        launches.push(Launch {
            offer_id: offer.id.clone(),
            agent_id: offer.agent_id.clone(),
            resources: request.resources_with(&ports),
            ports,
        });
    }
    let placed = u32::try_from(launches.len()).expect("at most `wanted` launches");
    let unplaced = wanted - placed;
    let reasons = offers
        .iter()
        .enumerate()
        .filter(|&(i, _)| got[i] == 0 || unplaced > 0)
        .map(|(i, o)| {
            let unfit = if let Some(name) = spread_by.filter(|n| !o.attributes.contains_key(*n)) {
                Unfit::MissingAttribute {
                    name: name.to_string(),
                }
            } else if let Some(short) = remaining[i].shortfall(request) {
                short
            } else if host_full(&per_host, o) {
                Unfit::MaxPerHost {
                    max: placement.max_per_host.expect("host_full implies a max"),
                }
            } else {
                assert_eq!(unplaced, 0, "an offer that fits was left unused");
                Unfit::NotNeeded
            };
            (o.agent_id.clone(), unfit)
        })
        .collect();
    PlacementPlan {
        launches,
        unplaced,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // `super::Strategy` is the placement strategy; proptest's trait is only needed for methods.
    use super::Strategy;
    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;
    use std::collections::BTreeSet;

    const MIB: u64 = 1 << 20;

    fn offer(
        n: &str,
        cpus: f64,
        mem_bytes: u64,
        ports: &[(u16, u16)],
        attrs: &[(&str, &str)],
    ) -> Offer {
        Offer {
            id: OfferId(format!("offer-{n}")),
            agent_id: AgentId(format!("agent-{n}")),
            hostname: format!("host-{n}"),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resources: Resources::new(
                cpus,
                mem_bytes,
                PortRanges::from_ranges(ports).expect("valid test ports"),
            )
            .expect("valid test resources"),
        }
    }

    fn request(cpus: f64, mem_bytes: u64, ports: u32) -> TaskRequest {
        TaskRequest::new(cpus, mem_bytes, ports).expect("valid test request")
    }

    /// Launch count per agent id, in agent order.
    fn per_agent(plan: &PlacementPlan) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for l in &plan.launches {
            *m.entry(l.agent_id.0.clone()).or_default() += 1;
        }
        m.into_iter().collect()
    }

    fn three_hosts() -> Vec<Offer> {
        ["a", "b", "c"]
            .iter()
            .map(|n| offer(n, 4.0, 4096 * MIB, &[(31000, 31009)], &[]))
            .collect()
    }

    #[test]
    fn spread_goes_round_robin_over_hosts() {
        // Proves Spread puts one instance on each of 3 hosts before a second on any, in host order.
        let plan = place(
            &three_hosts(),
            &request(1.0, 256 * MIB, 1),
            5,
            &[],
            &Placement::default(),
        );
        let agents: Vec<&str> = plan
            .launches
            .iter()
            .map(|l| l.agent_id.0.as_str())
            .collect();
        assert_eq!(
            agents,
            ["agent-a", "agent-b", "agent-c", "agent-a", "agent-b"]
        );
        assert_eq!(plan.unplaced, 0);
        assert!(plan.reasons.is_empty(), "every offer got something");
        // The second instance on host a gets the next free port.
        assert_eq!(plan.launches[0].ports, [31000]);
        assert_eq!(plan.launches[3].ports, [31001]);
    }

    #[test]
    fn spread_starts_with_hosts_that_run_fewest() {
        // Proves existing instances count as load: the host already running two is filled last.
        let existing: Vec<ExistingInstance> = (0..2)
            .map(|_| ExistingInstance::from(&three_hosts()[0]))
            .collect();
        let plan = place(
            &three_hosts(),
            &request(1.0, 256 * MIB, 0),
            3,
            &existing,
            &Placement::default(),
        );
        let agents: Vec<&str> = plan
            .launches
            .iter()
            .map(|l| l.agent_id.0.as_str())
            .collect();
        assert_eq!(agents, ["agent-b", "agent-c", "agent-b"]);
    }

    #[test]
    fn bin_pack_fills_one_offer_first() {
        // Proves BinPack puts all 3 instances on one offer while it has room, then the fullest next.
        let mut offers = three_hosts();
        // Offer c is the smallest that fits 3: it is filled first, then the next fullest.
        offers[2] = offer("c", 3.0, 4096 * MIB, &[(31000, 31009)], &[]);
        let placement = Placement {
            strategy: Strategy::BinPack,
            ..Placement::default()
        };
        let plan = place(&offers, &request(1.0, 256 * MIB, 1), 3, &[], &placement);
        assert_eq!(per_agent(&plan), [("agent-c".to_string(), 3)]);
        assert_eq!(
            plan.launches
                .iter()
                .map(|l| l.ports.clone())
                .collect::<Vec<_>>(),
            [vec![31000], vec![31001], vec![31002]]
        );
        assert_eq!(
            plan.reasons,
            [
                (AgentId::from("agent-a"), Unfit::NotNeeded),
                (AgentId::from("agent-b"), Unfit::NotNeeded)
            ]
        );
        let plan = place(&offers, &request(1.0, 256 * MIB, 1), 5, &[], &placement);
        assert_eq!(
            per_agent(&plan),
            [("agent-a".to_string(), 2), ("agent-c".to_string(), 3)]
        );
    }

    #[test]
    fn max_per_host_leaves_the_rest_unplaced_with_reasons() {
        // Proves max_per_host=1 with 3 wanted on 2 hosts gives 2 launches, 1 unplaced, and a
        // MaxPerHost reason for each offer.
        let offers = &three_hosts()[..2];
        let placement = Placement {
            max_per_host: Some(1),
            ..Placement::default()
        };
        let plan = place(offers, &request(1.0, 256 * MIB, 1), 3, &[], &placement);
        assert_eq!(plan.launches.len(), 2);
        assert_eq!(plan.unplaced, 1);
        assert_eq!(
            plan.reasons,
            [
                (AgentId::from("agent-a"), Unfit::MaxPerHost { max: 1 }),
                (AgentId::from("agent-b"), Unfit::MaxPerHost { max: 1 })
            ]
        );
        assert_eq!(
            plan.explain().as_deref(),
            Some("1 instance unplaced: max_per_host=1 reached on 2 offer(s)")
        );
    }

    #[test]
    fn existing_instances_count_toward_max_per_host() {
        // Proves a host already running max_per_host instances gets none, and says why.
        let offers = three_hosts();
        let existing = [
            ExistingInstance::from(&offers[0]),
            ExistingInstance::from(&offers[1]),
        ];
        let placement = Placement {
            max_per_host: Some(1),
            ..Placement::default()
        };
        let plan = place(
            &offers,
            &request(1.0, 256 * MIB, 1),
            2,
            &existing,
            &placement,
        );
        assert_eq!(per_agent(&plan), [("agent-c".to_string(), 1)]);
        assert_eq!(plan.unplaced, 1);
        assert_eq!(
            plan.reasons,
            [
                (AgentId::from("agent-a"), Unfit::MaxPerHost { max: 1 }),
                (AgentId::from("agent-b"), Unfit::MaxPerHost { max: 1 }),
                (AgentId::from("agent-c"), Unfit::MaxPerHost { max: 1 }),
            ]
        );
        // Same host under a new agent id (the agent lost its work dir): still counted.
        let mut moved = existing[0].clone();
        moved.agent_id = AgentId::from("agent-a-reborn");
        let plan = place(
            &offers[..1],
            &request(1.0, 256 * MIB, 1),
            1,
            &[moved],
            &placement,
        );
        assert_eq!(plan.launches.len(), 0);
    }

    #[test]
    fn spread_by_rack_balances_counts_per_value() {
        // Proves spread_by balances instances over rack values (existing counted), not over hosts,
        // and an offer without the attribute is unused with a MissingAttribute reason.
        let offers = vec![
            offer("a", 8.0, 8192 * MIB, &[], &[("rack", "r1")]),
            offer("b", 8.0, 8192 * MIB, &[], &[("rack", "r1")]),
            offer("c", 8.0, 8192 * MIB, &[], &[("rack", "r2")]),
            offer("d", 8.0, 8192 * MIB, &[], &[]),
        ];
        let placement = Placement {
            spread_by: Some("rack".to_string()),
            ..Placement::default()
        };
        let plan = place(&offers, &request(1.0, 256 * MIB, 0), 4, &[], &placement);
        let mut per_rack: BTreeMap<&str, u32> = BTreeMap::new();
        for l in &plan.launches {
            let o = offers
                .iter()
                .find(|o| o.id == l.offer_id)
                .expect("launch from an offer");
            *per_rack.entry(o.attributes["rack"].as_str()).or_default() += 1;
        }
        assert_eq!(per_rack, BTreeMap::from([("r1", 2), ("r2", 2)]));
        // Within r1, spread still uses both hosts.
        assert_eq!(
            per_agent(&plan),
            [
                ("agent-a".to_string(), 1),
                ("agent-b".to_string(), 1),
                ("agent-c".to_string(), 2)
            ]
        );
        assert_eq!(
            plan.reasons,
            [(
                AgentId::from("agent-d"),
                Unfit::MissingAttribute {
                    name: "rack".to_string()
                }
            )]
        );
        // Two instances already in r1: the next two go to r2.
        let existing = [
            ExistingInstance::from(&offers[0]),
            ExistingInstance::from(&offers[1]),
        ];
        let plan = place(
            &offers,
            &request(1.0, 256 * MIB, 0),
            2,
            &existing,
            &placement,
        );
        assert_eq!(per_agent(&plan), [("agent-c".to_string(), 2)]);
    }

    #[test]
    fn ports_are_distinct_and_within_the_offer() {
        // Proves instances carved from one offer get distinct ports, lowest first, all offered,
        // and the offer stops taking instances when its ports run out.
        let offers = [offer(
            "a",
            16.0,
            16384 * MIB,
            &[(100, 102), (200, 201)],
            &[],
        )];
        let plan = place(
            &offers,
            &request(0.5, 64 * MIB, 2),
            3,
            &[],
            &Placement::default(),
        );
        assert_eq!(
            plan.launches
                .iter()
                .map(|l| l.ports.clone())
                .collect::<Vec<_>>(),
            [vec![100, 101], vec![102, 200]]
        );
        assert_eq!(
            plan.launches[1].resources.ports().ranges(),
            &[(102, 102), (200, 200)]
        );
        assert_eq!(plan.unplaced, 1);
        assert_eq!(
            plan.reasons,
            [(
                AgentId::from("agent-a"),
                Unfit::NotEnoughPorts { need: 2, have: 1 }
            )]
        );
    }

    #[test]
    fn every_unused_offer_says_why() {
        // Proves each shortfall is reported with need and have, and explain() names the largest.
        let offers = [
            offer("a", 1.5, 4096 * MIB, &[(1, 10)], &[]),
            offer("b", 1.0, 4096 * MIB, &[(1, 10)], &[]),
            offer("c", 8.0, 128 * MIB, &[(1, 10)], &[]),
            offer("d", 8.0, 4096 * MIB, &[], &[]),
        ];
        let plan = place(
            &offers,
            &request(2.0, 512 * MIB, 1),
            1,
            &[],
            &Placement::default(),
        );
        assert_eq!(plan.unplaced, 1);
        assert_eq!(
            plan.reasons,
            [
                (
                    AgentId::from("agent-a"),
                    Unfit::NotEnoughCpus {
                        need: 2.0,
                        have: 1.5
                    }
                ),
                (
                    AgentId::from("agent-b"),
                    Unfit::NotEnoughCpus {
                        need: 2.0,
                        have: 1.0
                    }
                ),
                (
                    AgentId::from("agent-c"),
                    Unfit::NotEnoughMem {
                        need: 512 * MIB,
                        have: 128 * MIB
                    }
                ),
                (
                    AgentId::from("agent-d"),
                    Unfit::NotEnoughPorts { need: 1, have: 0 }
                ),
            ]
        );
        assert_eq!(
            plan.explain().as_deref(),
            Some(
                "1 instance unplaced: needs 2 cpus per instance, the most offered is 1.5; \
                 needs 512MiB memory per instance, the most offered is 128MiB; \
                 needs 1 ports per instance, the most offered is 0"
            )
        );
        assert_eq!(
            plan.reasons[0].1.to_string(),
            "needs 2 cpus per instance, the offer has 1.5"
        );
        let none = place(&[], &request(1.0, 0, 0), 2, &[], &Placement::default());
        assert_eq!(
            none.explain().as_deref(),
            Some("2 instances unplaced: no offers")
        );
        assert_eq!(
            place(&[], &request(1.0, 0, 0), 0, &[], &Placement::default()).explain(),
            None
        );
    }

    // ---- property test: random offers, requests and rules ----

    fn arb_offers() -> impl proptest::strategy::Strategy<Value = Vec<Offer>> {
        let one = (
            0u8..4,     // host: few, so several offers share a host
            0u64..6000, // millicpus
            0u64..4096, // mem in MiB
            proptest::collection::vec((30000u16..30040, 0u16..5), 0..3),
            proptest::option::of(0u8..3), // rack
        );
        proptest::collection::vec(one, 0..7).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (host, milli, mem, ports, rack))| {
                    let ranges: Vec<(u16, u16)> = ports.iter().map(|&(s, l)| (s, s + l)).collect();
                    Offer {
                        id: OfferId(format!("o{i}")),
                        agent_id: AgentId(format!("agent{host}")),
                        hostname: if host == 3 {
                            String::new()
                        } else {
                            format!("h{host}")
                        },
                        attributes: rack
                            .map(|r| BTreeMap::from([("rack".to_string(), format!("r{r}"))]))
                            .unwrap_or_default(),
                        resources: Resources::from_millicpus(
                            milli,
                            mem * MIB,
                            PortRanges::from_ranges(&ranges).expect("valid ranges"),
                        ),
                    }
                })
                .collect()
        })
    }

    fn arb_placement() -> impl proptest::strategy::Strategy<Value = Placement> {
        (any::<bool>(), proptest::option::of(0u32..4), any::<bool>()).prop_map(
            |(pack, max, by_rack)| Placement {
                strategy: if pack {
                    Strategy::BinPack
                } else {
                    Strategy::Spread
                },
                max_per_host: max,
                spread_by: by_rack.then(|| "rack".to_string()),
            },
        )
    }

    proptest! {
        #[test]
        fn placement_never_overcommits(
            offers in arb_offers(),
            milli in 1u64..3000,
            mem in 0u64..2048,
            ports in 0u32..4,
            wanted in 0u32..12,
            existing_hosts in proptest::collection::vec(0usize..7, 0..4),
            placement in arb_placement(),
        ) {
            // Proves, for random offers and rules: launches ≤ wanted and add up with unplaced; the
            // sum of launches from an offer fits in it (cpus, mem, ports all distinct and offered);
            // each launch is exactly the request; max_per_host holds with existing instances; every
            // offer without a launch has a reason; and the result ignores the offers' input order.
            let request = TaskRequest::new(milli as f64 / 1000.0, mem * MIB, ports).expect("valid");
            let existing: Vec<ExistingInstance> = existing_hosts
                .iter()
                .filter_map(|&i| offers.get(i))
                .map(ExistingInstance::from)
                .collect();
            let plan = place(&offers, &request, wanted, &existing, &placement);

            prop_assert!(plan.launches.len() as u32 <= wanted);
            prop_assert_eq!(plan.launches.len() as u32 + plan.unplaced, wanted);
            let mut per_host: BTreeMap<HostKey<'_>, u32> = BTreeMap::new();
            for e in &existing {
                *per_host.entry(host_key(&e.hostname, &e.agent_id)).or_default() += 1;
            }
            let counted_before = per_host.clone();
            for o in &offers {
                let mine: Vec<&Launch> = plan.launches.iter().filter(|l| l.offer_id == o.id).collect();
                let mut sum = Resources::default();
                for l in &mine {
                    prop_assert_eq!(&l.agent_id, &o.agent_id);
                    prop_assert_eq!(&l.resources, &request.resources_with(&l.ports));
                    prop_assert_eq!(l.ports.len() as u32, request.ports());
                    prop_assert_eq!(l.ports.iter().collect::<BTreeSet<_>>().len(), l.ports.len());
                    // checked_add refuses a port already used by another launch.
                    sum = sum.checked_add(&l.resources).expect("ports distinct across launches");
                }
                prop_assert!(o.resources.contains(&sum), "offer {} over-committed: {} > {}", o.id, sum, o.resources);
                if !mine.is_empty() {
                    *per_host.entry(host_key(&o.hostname, &o.agent_id)).or_default() += mine.len() as u32;
                    if let Some(name) = &placement.spread_by {
                        prop_assert!(o.attributes.contains_key(name));
                    }
                }
            }
            // Exactly the offers without a launch (all of them if some are unplaced), in order.
            let needing_reasons: Vec<&AgentId> = offers
                .iter()
                .filter(|o| plan.unplaced > 0 || !plan.launches.iter().any(|l| l.offer_id == o.id))
                .map(|o| &o.agent_id)
                .collect();
            prop_assert_eq!(plan.reasons.iter().map(|(a, _)| a).collect::<Vec<_>>(), needing_reasons);
            if let Some(max) = placement.max_per_host {
                for (host, n) in &per_host {
                    let before = counted_before.get(host).copied().unwrap_or(0);
                    prop_assert!(*n <= max.max(before), "host {host:?} has {n} > {max}");
                }
            }
            if plan.unplaced > 0 {
                prop_assert_eq!(plan.reasons.len(), offers.len());
                prop_assert!(plan.reasons.iter().all(|(_, u)| *u != Unfit::NotNeeded));
            }

            let mut reversed = offers.clone();
            reversed.reverse();
            let again = place(&reversed, &request, wanted, &existing, &placement);
            prop_assert_eq!(&again.launches, &plan.launches);
            prop_assert_eq!(again.unplaced, plan.unplaced);
        }

        #[test]
        fn spread_keeps_counts_within_one(
            racks in proptest::collection::vec(0u8..3, 1..7),
            wanted in 0u32..20,
            by_rack in any::<bool>(),
        ) {
            // Proves Spread with room everywhere ends with per-host counts (or, with spread_by,
            // per-rack counts) differing by at most one, and places every wanted instance.
            let offers: Vec<Offer> = racks
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let rack = format!("r{r}");
                    offer(&i.to_string(), 64.0, 65536 * MIB, &[(1000, 1100)], &[("rack", rack.as_str())])
                })
                .collect();
            let placement = Placement {
                spread_by: by_rack.then(|| "rack".to_string()),
                ..Placement::default()
            };
            let plan = place(&offers, &request(1.0, 64 * MIB, 1), wanted, &[], &placement);
            prop_assert_eq!(plan.unplaced, 0);
            let mut counts: BTreeMap<String, u32> = BTreeMap::new();
            for o in &offers {
                let key = if by_rack { o.attributes["rack"].clone() } else { o.hostname.clone() };
                counts.entry(key).or_default();
            }
            for l in &plan.launches {
                let o = offers.iter().find(|o| o.id == l.offer_id).expect("launch from an offer");
                let key = if by_rack { o.attributes["rack"].clone() } else { o.hostname.clone() };
                *counts.entry(key).or_default() += 1;
            }
            let max = counts.values().max().copied().unwrap_or(0);
            let min = counts.values().min().copied().unwrap_or(0);
            prop_assert!(max - min <= 1, "unbalanced: {counts:?}");
        }
    }
}
