//! Allocator tests: feed events, run cycles, assert the exact offers, rescinds and skip records.

use super::*;
use crate::resources::PortRanges;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn agent(i: usize) -> AgentId {
    AgentId::parse(&format!("agent-{i:05}")).expect("valid agent id")
}
fn fw(name: &str) -> FrameworkId {
    FrameworkId::parse(name).expect("valid framework id")
}
fn role(name: &str) -> Role {
    Role::parse(name).expect("valid role")
}
fn res(millicpus: u64, mem_bytes: u64) -> Resources {
    Resources::from_millicpus(millicpus, mem_bytes, PortRanges::new())
}
fn res_ports(millicpus: u64, mem_bytes: u64, ports: &[(u16, u16)]) -> Resources {
    Resources::from_millicpus(
        millicpus,
        mem_bytes,
        PortRanges::from_ranges(ports).expect("valid ports"),
    )
}

/// An allocator with `n` agents of 1 cpu / 1 GiB / ports 31000-31009 and the given config.
fn cluster(n: usize, config: AllocatorConfig) -> Allocator {
    let mut a = Allocator::new(config);
    for i in 0..n {
        a.add_agent(
            agent(i),
            res_ports(1000, GIB, &[(31000, 31009)]),
            BTreeMap::new(),
        )
        .expect("add agent");
    }
    a
}

/// Runs a cycle, checks every invariant, and returns it.
fn cycle(a: &mut Allocator, now_ms: u64) -> Allocation {
    let out = a.allocate(now_ms);
    a.check_invariants();
    out
}

fn offers_to(out: &Allocation, f: &FrameworkId) -> usize {
    out.offers.iter().filter(|o| &o.framework == f).count()
}

#[test]
fn drf_equal_weights_split_agents_equally() {
    // Proves DRF: two frameworks with equal weights end with equal dominant shares, both in one
    // role and in two roles.
    let mut a = cluster(100, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    a.add_framework(fw("b"), role("r"), None).expect("add");
    let out = cycle(&mut a, 0);
    assert_eq!(
        (offers_to(&out, &fw("a")), offers_to(&out, &fw("b"))),
        (50, 50)
    );
    assert_eq!(a.allocated(&fw("a")), a.allocated(&fw("b")));

    let mut a = cluster(101, AllocatorConfig::default());
    a.add_framework(fw("x"), role("r1"), None).expect("add");
    a.add_framework(fw("y"), role("r2"), None).expect("add");
    let out = cycle(&mut a, 0);
    // Alternating from the tie (broken by role name): x gets the odd one out.
    assert_eq!(
        (offers_to(&out, &fw("x")), offers_to(&out, &fw("y"))),
        (51, 50)
    );
}

#[test]
fn drf_weights_two_to_one() {
    // Proves weighted DRF: role weights 2:1 (and framework weights 2:1 within a role) give a 2:1
    // split of identical agents.
    let mut a = cluster(300, AllocatorConfig::default());
    a.set_role_weight(role("heavy"), 2.0).expect("weight");
    a.add_framework(fw("h"), role("heavy"), None).expect("add");
    a.add_framework(fw("l"), role("light"), None).expect("add");
    let out = cycle(&mut a, 0);
    assert_eq!(
        (offers_to(&out, &fw("h")), offers_to(&out, &fw("l"))),
        (200, 100)
    );

    let mut a = cluster(300, AllocatorConfig::default());
    a.add_framework(fw("h"), role("r"), Some(2.0)).expect("add");
    a.add_framework(fw("l"), role("r"), Some(1.0)).expect("add");
    let out = cycle(&mut a, 0);
    assert_eq!(
        (offers_to(&out, &fw("h")), offers_to(&out, &fw("l"))),
        (200, 100)
    );
}

#[test]
fn drf_converges_as_resources_churn() {
    // Proves convergence: a framework that starts with the whole cluster is not offered freed
    // agents until the newcomer has caught up to an equal share.
    let mut a = cluster(40, AllocatorConfig::default());
    a.add_framework(fw("old"), role("r"), None).expect("add");
    let out = cycle(&mut a, 0);
    for o in &out.offers {
        a.offer_used(o.id, o.resources.clone()).expect("use all");
    }
    a.add_framework(fw("new"), role("r"), None).expect("add");
    // "old" finishes its tasks one agent at a time; each freed agent goes to "new" until equal.
    for i in 0..40 {
        let used = a.used(&agent(i), &fw("old")).cloned();
        if let Some(used) = used {
            a.recover_resources(i as u64, &fw("old"), &agent(i), used, 0)
                .expect("recover");
        }
        let out = cycle(&mut a, i as u64);
        for o in &out.offers {
            a.offer_used(o.id, o.resources.clone()).expect("use all");
        }
        let (old, new) = (a.allocated(&fw("old")), a.allocated(&fw("new")));
        let (old, new) = (
            old.map(|s| s.millicpus).unwrap_or(0),
            new.map(|s| s.millicpus).unwrap_or(0),
        );
        if i < 20 {
            assert_eq!(new, (i as u64 + 1) * 1000, "new catches up first");
        } else {
            assert!(old.abs_diff(new) <= 1000, "shares stay within one agent");
        }
    }
}

#[test]
fn decline_filter_holds_until_expiry_and_never_blocks_others() {
    // Proves decline filters: not re-offered to the decliner on that agent before expiry, offered
    // to the other framework meanwhile (a maximal 31-day filter included), offered again after.
    let mut a = cluster(1, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    a.add_framework(fw("b"), role("r"), None).expect("add");
    let out = cycle(&mut a, 0);
    assert_eq!(out.offers.len(), 1);
    assert_eq!(out.offers[0].framework, fw("a"), "tie broken by name");
    a.decline(0, out.offers[0].id, 5_000).expect("decline");

    let out = cycle(&mut a, 10);
    assert_eq!(out.offers.len(), 1);
    assert_eq!(out.offers[0].framework, fw("b"));
    assert_eq!(
        out.skipped,
        vec![Skip {
            framework: fw("a"),
            agent: agent(0),
            reason: SkipReason::Filtered { until_ms: 5_000 }
        }]
    );
    a.decline(10, out.offers[0].id, 0)
        .expect("decline, no filter");
    let out = cycle(&mut a, 4_999);
    assert_eq!(out.offers[0].framework, fw("b"), "a still filtered at 4999");
    a.decline(4_999, out.offers[0].id, 0).expect("decline");
    let out = cycle(&mut a, 5_000);
    assert_eq!(out.offers[0].framework, fw("a"), "filter expired at 5000");
    assert!(out.skipped.is_empty());

    // The longest filter allowed starves nobody else; one past it is refused, nothing changes.
    let max_ms = crate::limits::REFUSE_SECONDS_MAX * 1000;
    assert_eq!(
        a.decline(5_000, out.offers[0].id, max_ms + 1),
        Err(AllocatorError::RefuseTooLong {
            value_ms: max_ms + 1,
            max_seconds: crate::limits::REFUSE_SECONDS_MAX
        })
    );
    assert!(a.offer(out.offers[0].id).is_some());
    a.decline(5_000, out.offers[0].id, max_ms).expect("decline");
    let out = cycle(&mut a, 5_001);
    assert_eq!(out.offers[0].framework, fw("b"));
}

#[test]
fn filter_only_hides_what_was_refused() {
    // Proves a filter hides offers contained in the refused resources only: once more is free
    // on the agent, the decliner is offered it (Mesos' refused-resources semantics).
    let mut a = cluster(1, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    let out = cycle(&mut a, 0);
    a.offer_used(out.offers[0].id, res(500, GIB / 2))
        .expect("use half");
    let out = cycle(&mut a, 0);
    assert_eq!(
        out.offers[0].resources,
        res_ports(500, GIB / 2, &[(31000, 31009)])
    );
    a.decline(0, out.offers[0].id, 60_000).expect("decline");
    let out = cycle(&mut a, 1);
    assert!(out.offers.is_empty());
    a.recover_resources(2, &fw("a"), &agent(0), res(500, GIB / 2), 0)
        .expect("task ended");
    let out = cycle(&mut a, 3);
    assert_eq!(
        out.offers.len(),
        1,
        "the whole agent is more than was refused"
    );
}

#[test]
fn suppress_revive_idempotent_and_separate_from_filters() {
    // Proves suppress/revive are idempotent, revive leaves decline filters alone, and
    // clear_filters (not revive) drops them — the Mesos trap.
    let mut a = cluster(2, AllocatorConfig::default());
    let f = fw("a");
    a.add_framework(f.clone(), role("r"), None).expect("add");
    a.suppress(&f).expect("suppress");
    a.suppress(&f).expect("suppress again");
    let out = cycle(&mut a, 0);
    assert!(out.offers.is_empty());
    assert_eq!(
        out.frameworks_skipped,
        vec![(f.clone(), SkipReason::Suppressed)]
    );
    assert_eq!(
        a.explain(&f).expect("known"),
        vec![
            (agent(0), SkipReason::Suppressed),
            (agent(1), SkipReason::Suppressed)
        ]
    );
    a.revive(&f).expect("revive");
    a.revive(&f).expect("revive again");
    assert!(a.needs_allocation(1));
    let out = cycle(&mut a, 1);
    assert_eq!(out.offers.len(), 2);
    assert!(!a.needs_allocation(1), "a cycle clears the dirty flag");
    a.revive(&f).expect("revive while not suppressed");
    assert!(
        !a.needs_allocation(1),
        "a no-op revive does not trigger a cycle"
    );

    a.decline(1, out.offers[0].id, 60_000).expect("decline");
    a.suppress(&f).expect("suppress");
    a.revive(&f).expect("revive");
    let out = cycle(&mut a, 2);
    assert!(out.offers.is_empty(), "revive kept the filter");
    assert_eq!(
        out.skipped,
        vec![Skip {
            framework: f.clone(),
            agent: agent(0),
            reason: SkipReason::Filtered { until_ms: 60_001 }
        }]
    );
    assert_eq!(a.clear_filters(&f), Ok(1));
    assert_eq!(a.clear_filters(&f), Ok(0));
    let out = cycle(&mut a, 3);
    assert_eq!(out.offers.len(), 1);
    assert_eq!(out.offers[0].agent, agent(0));
}

#[test]
fn offer_timeout_rescinds_and_recovers() {
    // Proves an offer outstanding past offer_timeout_ms is rescinded, its resources recovered
    // and offered again, and needs_allocation fires at the deadline.
    let config = AllocatorConfig {
        offer_timeout_ms: Some(1_000),
        ..AllocatorConfig::default()
    };
    let mut a = cluster(1, config);
    a.add_framework(fw("a"), role("r"), None).expect("add");
    let first = cycle(&mut a, 0).offers[0].clone();
    assert_eq!(first.expires_at_ms, Some(1_000));
    assert_eq!(a.next_deadline_ms(), Some(1_000));
    assert!(!a.needs_allocation(999));
    let out = cycle(&mut a, 999);
    assert!(out.rescinds.is_empty() && out.offers.is_empty());
    assert_eq!(
        out.agents_skipped,
        vec![(
            agent(0),
            SkipReason::OfferOutstanding {
                offer: first.id,
                framework: fw("a")
            }
        )]
    );
    assert!(a.needs_allocation(1_000));
    let out = cycle(&mut a, 1_000);
    assert_eq!(out.rescinds, vec![first.id]);
    assert_eq!(out.offers.len(), 1);
    assert_ne!(out.offers[0].id, first.id);
    assert_eq!(out.offers[0].resources, first.resources);
    assert_eq!(
        a.offer_used(first.id, res(1, 1)),
        Err(AllocatorError::UnknownOffer(first.id))
    );
}

#[test]
fn agent_removal_rescinds_and_releases() {
    // Proves removing an agent rescinds its outstanding offer and releases what ran on it, so
    // the framework's share drops back.
    let mut a = cluster(2, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    let out = cycle(&mut a, 0);
    let (o0, o1) = (out.offers[0].id, out.offers[1].id);
    a.offer_used(o1, res(1000, GIB)).expect("use");
    assert_eq!(a.remove_agent(&agent(0)), Ok(vec![o0]));
    assert!(a.offer(o0).is_none());
    a.check_invariants();
    assert_eq!(a.remove_agent(&agent(1)), Ok(vec![]));
    a.check_invariants();
    assert_eq!(a.allocated(&fw("a")), Some(Scalars::default()));
    assert_eq!(
        a.remove_agent(&agent(1)),
        Err(AllocatorError::UnknownAgent(agent(1)))
    );
}

#[test]
fn recover_returns_resources() {
    // Proves offer_used keeps the used part, returns the rest, and recover_resources returns the
    // used part; over-returning is an error naming the field and changes nothing.
    let mut a = cluster(1, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    let offer = cycle(&mut a, 0).offers[0].clone();
    assert_eq!(
        a.offer_used(offer.id, res(2000, 0))
            .map_err(|e| e.to_string()),
        Err("used: cpus: subtracting more than is there".to_string())
    );
    let used = res_ports(250, GIB / 4, &[(31000, 31001)]);
    a.offer_used(offer.id, used.clone()).expect("use");
    assert_eq!(
        a.available(&agent(0)),
        Some(&res_ports(750, 3 * GIB / 4, &[(31002, 31009)]))
    );
    assert_eq!(a.used(&agent(0), &fw("a")), Some(&used));
    assert!(matches!(
        a.recover_resources(1, &fw("a"), &agent(0), res(500, 0), 0),
        Err(AllocatorError::Resources {
            field: "resources",
            ..
        })
    ));
    a.recover_resources(1, &fw("a"), &agent(0), used, 0)
        .expect("recover");
    a.check_invariants();
    assert_eq!(a.used(&agent(0), &fw("a")), None);
    assert_eq!(
        a.available(&agent(0)),
        Some(&res_ports(1000, GIB, &[(31000, 31009)]))
    );
    assert_eq!(a.allocated(&fw("a")), Some(Scalars::default()));
}

#[test]
fn update_agent_used_replaces_and_checks_fit() {
    // Proves update_agent_used (re-registration) replaces a framework's usage, counts it for
    // DRF, and refuses usage that does not fit with an error naming `used`.
    let mut a = cluster(1, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    a.update_agent_used(&agent(0), &fw("a"), res(600, GIB / 2))
        .expect("fits");
    a.check_invariants();
    assert_eq!(a.allocated(&fw("a")).map(|s| s.millicpus), Some(600));
    a.update_agent_used(&agent(0), &fw("a"), res(1000, GIB))
        .expect("replaces, not adds");
    assert!(matches!(
        a.update_agent_used(&agent(0), &fw("a"), res(1001, 0)),
        Err(AllocatorError::Resources { field: "used", .. })
    ));
    a.update_agent_used(&agent(0), &fw("a"), Resources::default())
        .expect("clear");
    a.check_invariants();
    assert_eq!(a.used(&agent(0), &fw("a")), None);
    assert_eq!(a.allocated(&fw("a")), Some(Scalars::default()));
}

#[test]
fn every_skip_has_a_reason() {
    // Proves skip reasons are recorded for each case (offer outstanding, insufficient
    // resources, filtered, suppressed, offer limit) and explain() answers per agent.
    let mut config = AllocatorConfig::default();
    config.limits.offers_outstanding_per_framework_max = 1;
    let mut a = cluster(4, config);
    a.add_agent(agent(4), res(5, 1 << 20), BTreeMap::new())
        .expect("tiny agent");
    let (f1, f2, f3) = (fw("f1"), fw("f2"), fw("f3"));
    for f in [&f1, &f2, &f3] {
        a.add_framework(f.clone(), role("r"), None).expect("add");
    }
    let out = cycle(&mut a, 0);
    // One offer each for f1, f2, f3 (limit 1), agent 3 left for nobody.
    let to: Vec<_> = out.offers.iter().map(|o| o.framework.clone()).collect();
    assert_eq!(to, vec![f1.clone(), f2.clone(), f3.clone()]);
    assert_eq!(
        out.frameworks_skipped,
        vec![
            (f1.clone(), SkipReason::OfferLimit { max: 1 }),
            (f2.clone(), SkipReason::OfferLimit { max: 1 }),
            (f3.clone(), SkipReason::OfferLimit { max: 1 }),
        ]
    );
    assert_eq!(
        a.explain(&f2).expect("known"),
        vec![
            (
                agent(0),
                SkipReason::OfferedToOther {
                    framework: f1.clone()
                }
            ),
            // f2 took agent 1 and reached its limit: from then on that is the reason.
            (agent(2), SkipReason::OfferLimit { max: 1 }),
            (agent(3), SkipReason::OfferLimit { max: 1 }),
            (
                agent(4),
                SkipReason::InsufficientResources {
                    available: res(5, 1 << 20)
                }
            ),
        ]
    );
    // f1 declines agent 0 with a filter; f3 suppresses. Next cycle: agent 0 skips f1
    // (filtered) and goes to... nobody else is below the limit, so it stays unoffered.
    a.decline(0, out.offers[0].id, 10_000).expect("decline");
    a.suppress(&f3).expect("suppress");
    let out = cycle(&mut a, 1);
    assert_eq!(out.offers.len(), 1);
    assert_eq!(
        (&out.offers[0].framework, &out.offers[0].agent),
        (&f1, &agent(3))
    );
    assert_eq!(
        out.skipped,
        vec![Skip {
            framework: f1.clone(),
            agent: agent(0),
            reason: SkipReason::Filtered { until_ms: 10_000 }
        }]
    );
    let explained = a.explain(&f1).expect("known");
    assert_eq!(
        explained[0],
        (agent(0), SkipReason::Filtered { until_ms: 10_000 })
    );
    assert!(matches!(
        explained[1],
        (_, SkipReason::OfferOutstanding { .. })
    ));
    assert_eq!(
        a.explain(&f3).expect("known")[0],
        (agent(0), SkipReason::Suppressed)
    );
    let f4 = fw("f4");
    a.add_framework(f4.clone(), role("r"), None).expect("add");
    let explained = a.explain(&f4).expect("known");
    assert_eq!(explained.len(), 5);
    assert!(
        explained
            .iter()
            .all(|(_, r)| r == &SkipReason::NotConsidered)
    );
    assert_eq!(
        a.explain(&fw("nobody")),
        Err(AllocatorError::UnknownFramework(fw("nobody")))
    );
}

#[test]
fn limits_and_bad_input_are_named_errors() {
    // Proves agents_max / frameworks_max, duplicate ids and invalid weights are named errors.
    let mut config = AllocatorConfig::default();
    config.limits.agents_max = 1;
    config.limits.frameworks_max = 1;
    let mut a = cluster(1, config);
    assert_eq!(
        a.add_agent(agent(1), res(1, 1), BTreeMap::new()),
        Err(AllocatorError::AgentsMax { max: 1 })
    );
    assert_eq!(
        a.add_agent(agent(0), res(1, 1), BTreeMap::new()),
        Err(AllocatorError::AgentExists(agent(0)))
    );
    assert_eq!(
        a.add_framework(fw("a"), role("r"), Some(f64::NAN))
            .map_err(|e| matches!(
                e,
                AllocatorError::InvalidWeight {
                    field: "weight",
                    ..
                }
            )),
        Err(true)
    );
    a.add_framework(fw("a"), role("r"), None).expect("add");
    assert_eq!(
        a.add_framework(fw("a"), role("r"), None),
        Err(AllocatorError::FrameworkExists(fw("a")))
    );
    assert_eq!(
        a.add_framework(fw("b"), role("r"), None),
        Err(AllocatorError::FrameworksMax { max: 1 })
    );
    assert!(a.set_role_weight(role("r"), 0.0).is_err());
    assert!(a.set_role_weight(role("r"), f64::INFINITY).is_err());
    assert_eq!(
        a.suppress(&fw("zz")),
        Err(AllocatorError::UnknownFramework(fw("zz")))
    );
    assert!(a.agents_len() == 1 && a.frameworks_len() == 1);
}

#[test]
fn removing_a_framework_frees_its_offers_and_tasks() {
    // Proves remove_framework returns its offers, frees its used resources and filters, and the
    // agents go to the remaining framework next cycle.
    let mut a = cluster(2, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    a.add_framework(fw("b"), role("s"), None).expect("add");
    let out = cycle(&mut a, 0);
    let a_offer = out
        .offers
        .iter()
        .find(|o| o.framework == fw("a"))
        .expect("a got one")
        .clone();
    let b_offer = out
        .offers
        .iter()
        .find(|o| o.framework == fw("b"))
        .expect("b got one")
        .clone();
    a.offer_used(b_offer.id, res(100, 100)).expect("use");
    assert_eq!(a.remove_framework(&fw("b")), Ok(vec![]));
    a.check_invariants();
    assert_eq!(a.drf_order(), vec![fw("a")]);
    let out = cycle(&mut a, 1);
    assert_eq!(out.offers.len(), 1);
    assert_eq!(out.offers[0].agent, b_offer.agent);
    assert_eq!(a.remove_framework(&fw("a")).map(|v| v.len()), Ok(2));
    assert!(a.offer(a_offer.id).is_none());
    a.check_invariants();
    assert!(a.drf_order().is_empty());
}

#[test]
fn five_thousand_agents_ten_frameworks() {
    // Proves the cycle is not quadratic in practice: 5,000 agents × 10 frameworks, a few cycles
    // with declines, filters and task churn (time printed, never asserted; run with --release
    // --nocapture to read it).
    let mut a = Allocator::new(AllocatorConfig::default());
    for i in 0..5_000 {
        a.add_agent(
            agent(i),
            res_ports(8000, 32 * GIB, &[(31000, 32000)]),
            BTreeMap::new(),
        )
        .expect("add agent");
    }
    for i in 0..10 {
        let r = role(&format!("role-{}", i % 3));
        a.add_framework(fw(&format!("fw-{i}")), r, None)
            .expect("add framework");
    }
    let mut now = 0;
    let mut times = Vec::new();
    for round in 0..5u64 {
        let start = std::time::Instant::now();
        let out = a.allocate(now);
        times.push(start.elapsed());
        if round == 0 {
            assert_eq!(out.offers.len(), 5_000);
        }
        for (k, o) in out.offers.iter().enumerate() {
            match k % 3 {
                0 => a.decline(now, o.id, 1_000).expect("decline"),
                1 => a.decline(now, o.id, 0).expect("decline"),
                _ => a.offer_used(o.id, res(1000, GIB)).expect("use"),
            }
        }
        now += 50;
    }
    a.check_invariants();
    eprintln!("5000 agents x 10 frameworks, allocate() per cycle: {times:?}");
}

// ---- property test: random event sequences against plain bookkeeping and brute-force DRF ----

#[derive(Clone, Debug)]
enum Op {
    Allocate,
    Advance(u64),
    Decline {
        pick: usize,
        refuse_ms: u64,
    },
    Use {
        pick: usize,
        quarters: u64,
        ports: u32,
    },
    Recover {
        agent: usize,
        fw: usize,
        refuse_ms: u64,
    },
    Suppress(usize),
    Revive(usize),
    ClearFilters(usize),
    RemoveAgent(usize),
    AddAgent(usize),
    RemoveFramework(usize),
    AddFramework(usize),
    RoleWeight(usize, u8),
    SetUsed {
        agent: usize,
        fw: usize,
        quarters: u64,
    },
}

const AGENTS: usize = 4;
const FRAMEWORKS: usize = 4;
const ROLES: [&str; 2] = ["r0", "r1"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Allocate),
        2 => (0u64..3_000).prop_map(Op::Advance),
        3 => (0usize..8, prop_oneof![Just(0u64), 1u64..5_000]).prop_map(|(pick, refuse_ms)| Op::Decline { pick, refuse_ms }),
        3 => (0usize..8, 0u64..5, 0u32..4).prop_map(|(pick, quarters, ports)| Op::Use { pick, quarters, ports }),
        2 => (0..AGENTS, 0..FRAMEWORKS, prop_oneof![Just(0u64), 1u64..5_000]).prop_map(|(agent, fw, refuse_ms)| Op::Recover { agent, fw, refuse_ms }),
        1 => (0..FRAMEWORKS).prop_map(Op::Suppress),
        1 => (0..FRAMEWORKS).prop_map(Op::Revive),
        1 => (0..FRAMEWORKS).prop_map(Op::ClearFilters),
        1 => (0..AGENTS).prop_map(Op::RemoveAgent),
        2 => (0..AGENTS).prop_map(Op::AddAgent),
        1 => (0..FRAMEWORKS).prop_map(Op::RemoveFramework),
        2 => (0..FRAMEWORKS).prop_map(Op::AddFramework),
        1 => (0..ROLES.len(), 1u8..4).prop_map(|(r, w)| Op::RoleWeight(r, w)),
        1 => (0..AGENTS, 0..FRAMEWORKS, 0u64..5).prop_map(|(agent, fw, quarters)| Op::SetUsed { agent, fw, quarters }),
    ]
}

fn agent_total(i: usize) -> Resources {
    // Uneven agents so cpu and memory dominate differently.
    res_ports(
        1000 * (i as u64 + 1),
        GIB * (AGENTS - i) as u64,
        &[(31000, 31003)],
    )
}

fn framework_role(i: usize) -> Role {
    role(ROLES[i % ROLES.len()])
}

fn framework_weight(i: usize) -> f64 {
    1.0 + (i / ROLES.len()) as f64
}

/// DRF order by brute force: from the public offers and used resources, recompute every
/// framework's and role's allocation and sort by (weighted dominant share, name).
fn brute_force_order(a: &Allocator, role_weights: &BTreeMap<Role, f64>) -> Vec<FrameworkId> {
    let mut total = Scalars::default();
    for i in 0..AGENTS {
        if a.available(&agent(i)).is_some() {
            total.add(agent_total(i).scalars());
        }
    }
    let mut fw_alloc: BTreeMap<FrameworkId, Scalars> = BTreeMap::new();
    for f in 0..FRAMEWORKS {
        let id = fw(&format!("f{f}"));
        if a.allocated(&id).is_none() {
            continue;
        }
        let mut s = Scalars::default();
        for o in a.offers().filter(|o| o.framework == id) {
            s.add(o.resources.scalars());
        }
        for i in 0..AGENTS {
            if let Some(u) = a.used(&agent(i), &id) {
                s.add(u.scalars());
            }
        }
        fw_alloc.insert(id, s);
    }
    let mut roles: BTreeMap<Role, (Scalars, Vec<(f64, FrameworkId)>)> = BTreeMap::new();
    for f in 0..FRAMEWORKS {
        let id = fw(&format!("f{f}"));
        let Some(s) = fw_alloc.get(&id) else { continue };
        let entry = roles.entry(framework_role(f)).or_default();
        entry.0.add(*s);
        entry
            .1
            .push((sorter::weighted_share(*s, framework_weight(f), total), id));
    }
    let mut role_order: Vec<(f64, Role)> = roles
        .iter()
        .map(|(r, (s, _))| {
            let w = role_weights.get(r).copied().unwrap_or(1.0);
            (sorter::weighted_share(*s, w, total), r.clone())
        })
        .collect();
    role_order.sort_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)));
    let mut out = Vec::new();
    for (_, r) in role_order {
        let mut fws = roles[&r].1.clone();
        fws.sort_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)));
        out.extend(fws.into_iter().map(|(_, id)| id));
    }
    out
}

/// No agent is over-allocated: every outstanding offer plus everything used fits its total,
/// checked from the public view alone.
fn assert_not_over_allocated(a: &Allocator) {
    for i in 0..AGENTS {
        let id = agent(i);
        let Some(free) = a.available(&id) else {
            continue;
        };
        let mut sum = free.clone();
        for o in a.offers().filter(|o| o.agent == id) {
            sum = sum.checked_add(&o.resources).expect("offer overlaps");
        }
        for f in 0..FRAMEWORKS {
            if let Some(u) = a.used(&id, &fw(&format!("f{f}"))) {
                sum = sum.checked_add(u).expect("used overlaps");
            }
        }
        assert!(agent_total(i).contains(&sum), "agent {i} over-allocated");
        assert_eq!(sum, agent_total(i));
    }
}

fn apply(a: &mut Allocator, now: &mut u64, weights: &mut BTreeMap<Role, f64>, op: Op) {
    let offer_ids: Vec<OfferId> = a.offers().map(|o| o.id).collect();
    let pick = |p: usize| offer_ids.get(p % offer_ids.len().max(1)).copied();
    // Errors are fine (unknown ids, duplicates); the invariants must hold either way.
    match op {
        Op::Allocate => {
            let out = a.allocate(*now);
            let mut agents = BTreeSet::new();
            for o in &out.offers {
                assert!(
                    agents.insert(o.agent.clone()),
                    "one offer per agent per cycle"
                );
            }
        }
        Op::Advance(ms) => *now += ms,
        Op::Decline { pick: p, refuse_ms } => {
            if let Some(id) = pick(p) {
                a.decline(*now, id, refuse_ms)
                    .expect("decline an outstanding offer");
            }
        }
        Op::Use {
            pick: p,
            quarters,
            ports,
        } => {
            if let Some(id) = pick(p) {
                let o = a.offer(id).expect("listed").resources.clone();
                let mut offered_ports = o.ports().clone();
                let ports = offered_ports
                    .take_n(ports)
                    .map(PortRanges::from_ports)
                    .unwrap_or_default();
                let used = Resources::from_millicpus(
                    o.millicpus() * quarters / 4,
                    o.mem_bytes() / 4 * quarters.min(4),
                    ports,
                );
                a.offer_used(id, used).expect("use part of an offer");
            }
        }
        Op::Recover {
            agent: i,
            fw: f,
            refuse_ms,
        } => {
            let id = fw(&format!("f{f}"));
            if let Some(u) = a.used(&agent(i), &id).cloned() {
                let half = Resources::from_millicpus(
                    u.millicpus() / 2,
                    u.mem_bytes() / 2,
                    u.ports().clone(),
                );
                a.recover_resources(*now, &id, &agent(i), half, refuse_ms)
                    .expect("recover part of what is used");
            }
        }
        Op::Suppress(f) => drop(a.suppress(&fw(&format!("f{f}")))),
        Op::Revive(f) => drop(a.revive(&fw(&format!("f{f}")))),
        Op::ClearFilters(f) => drop(a.clear_filters(&fw(&format!("f{f}")))),
        Op::RemoveAgent(i) => drop(a.remove_agent(&agent(i))),
        Op::AddAgent(i) => drop(a.add_agent(agent(i), agent_total(i), BTreeMap::new())),
        Op::RemoveFramework(f) => drop(a.remove_framework(&fw(&format!("f{f}")))),
        Op::AddFramework(f) => drop(a.add_framework(
            fw(&format!("f{f}")),
            framework_role(f),
            Some(framework_weight(f)),
        )),
        Op::RoleWeight(r, w) => {
            a.set_role_weight(role(ROLES[r]), f64::from(w))
                .expect("valid weight");
            weights.insert(role(ROLES[r]), f64::from(w));
        }
        Op::SetUsed {
            agent: i,
            fw: f,
            quarters,
        } => {
            // May not fit (an error, nothing changes); the invariants must hold either way.
            let t = agent_total(i);
            let used = res(t.millicpus() * quarters / 4, t.mem_bytes() / 4 * quarters);
            drop(a.update_agent_used(&agent(i), &fw(&format!("f{f}")), used));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_events_never_over_allocate_and_drf_matches_brute_force(
        ops in prop::collection::vec(op(), 1..80)
    ) {
        // Proves, over random event sequences: no agent is ever over-allocated (offered + used
        // + free == total), at most one offer per agent, and the allocator's DRF order equals a
        // brute-force sort by weighted dominant share.
        let mut a = Allocator::new(AllocatorConfig {
            offer_timeout_ms: Some(2_000),
            ..AllocatorConfig::default()
        });
        let mut weights = BTreeMap::new();
        let mut now = 0;
        for i in 0..2 {
            a.add_agent(agent(i), agent_total(i), BTreeMap::new()).expect("add");
            a.add_framework(fw(&format!("f{i}")), framework_role(i), Some(framework_weight(i))).expect("add");
        }
        for op in ops {
            apply(&mut a, &mut now, &mut weights, op);
            a.check_invariants();
            assert_not_over_allocated(&a);
            prop_assert_eq!(a.drf_order(), brute_force_order(&a, &weights));
        }
    }
}

/// One agent offered to framework `a` (role `r`), invariants checked.
fn one_offer() -> (Allocator, OfferId) {
    let mut a = cluster(1, AllocatorConfig::default());
    a.add_framework(fw("a"), role("r"), None).expect("add");
    let out = cycle(&mut a, 0);
    assert_eq!(out.offers.len(), 1);
    (a, out.offers[0].id)
}

#[test]
#[should_panic(expected = "allocator: agent agent-00000: free + used + offered != total")]
fn check_invariants_catches_resources_that_appear_from_nowhere() {
    // Proves a corrupted free pool (more free than the agent has) trips check_invariants.
    let (mut a, offer) = one_offer();
    a.offer_used(offer, res(500, GIB / 2)).expect("use");
    let agent = a.agents.get_mut(&agent(0)).expect("agent 0");
    agent.available = agent.available.checked_add(&res(1, 0)).expect("add");
    a.check_invariants();
}

#[test]
#[should_panic(
    expected = "allocator: framework a's DRF allocation is not its offered + used resources"
)]
fn check_invariants_catches_a_drf_share_out_of_step() {
    // Proves a sorter allocation that no longer matches offered + used trips check_invariants.
    let (mut a, _) = one_offer();
    a.role_frameworks
        .get_mut(&role("r"))
        .expect("role r")
        .allocated(
            &fw("a"),
            Scalars {
                millicpus: 1,
                mem_bytes: 0,
            },
        );
    a.check_invariants();
}

#[test]
#[should_panic(
    expected = "allocator: framework a holds 1 offers, above offers_outstanding_per_framework_max (0)"
)]
fn check_invariants_catches_a_framework_past_its_offer_limit() {
    // Proves the offer limit is an invariant, not just a skip reason: lowering it under an
    // outstanding offer (a corrupted config) trips check_invariants.
    let (mut a, _) = one_offer();
    a.config.limits.offers_outstanding_per_framework_max = 0;
    a.check_invariants();
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "allocator: framework a holds offer O1, which is not outstanding")]
fn events_check_what_they_touch_in_debug_builds() {
    // Proves an event method checks its framework's invariants on the way out (debug builds):
    // an offer dropped from the index but still held by the framework trips `suppress`.
    let (mut a, offer) = one_offer();
    a.offers.remove(&offer);
    let _ = a.suppress(&fw("a"));
}
