//! The core's rules, input by input: placement, scale down, backoff, rolling upgrades,
//! suppress/revive, removal, recovery.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_sdk::{
    AgentId, Offer, OfferId, PortRanges, Resources, StatusSource, TaskId, TaskState, TaskStatus,
};

use super::*;
use crate::spec::{Format, parse};

const MIB: u64 = 1 << 20;

fn config() -> CoreConfig {
    CoreConfig {
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        backoff_reset_after: Duration::from_secs(10),
        ..CoreConfig::default()
    }
}

fn at(ms: u64) -> Now {
    Now {
        mono: Duration::from_millis(ms),
        unix_ms: 1_700_000_000_000 + ms,
    }
}

fn spec(extra: &str) -> ServiceSpec {
    let text = format!(
        "name = \"web\"\ncmd = [\"python3\", \"-m\", \"http.server\", \"$PORT0\"]\ncpus = 0.5\nmem = \"64MiB\"\nports = 1\n{extra}"
    );
    parse(&text, Format::Toml).expect("test spec is valid")
}

fn offer(n: u32, cpus: f64) -> Offer {
    Offer {
        id: OfferId(format!("o{n}")),
        agent_id: AgentId(format!("a{n}")),
        hostname: format!("host{n}"),
        attributes: BTreeMap::new(),
        resources: Resources::new(
            cpus,
            4096 * MIB,
            PortRanges::from_ranges(&[(31000, 31099)]).expect("ranges"),
        )
        .expect("resources"),
    }
}

fn status(task_id: &TaskId, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task_id.clone(),
        agent_id: AgentId::from("a1"),
        state,
        message: String::new(),
        reason: String::new(),
        uuid: vec![1; 16],
        exit_code: (state == TaskState::Failed).then_some(1),
        signal: None,
        timestamp_ms: 0,
        source: StatusSource::Agent,
    }
}

/// A core already subscribed with `spec` stored and its first actions dropped.
fn core_with(spec: ServiceSpec) -> Core {
    let mut core = Core::new(config(), 7);
    core.set_specs(at(0), vec![spec], vec![]);
    core.recover(at(0), vec![], vec![]);
    core.subscribed(at(0));
    core.take_actions();
    core
}

/// The launches in `actions`: (offer, task ids).
fn launches(actions: &[Action]) -> Vec<(String, Vec<TaskId>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Launch {
                offer_id, tasks, ..
            } => Some((
                offer_id.0.clone(),
                tasks.iter().map(|t| t.task_id.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn launched(actions: &[Action]) -> Vec<TaskId> {
    launches(actions).into_iter().flat_map(|(_, t)| t).collect()
}

fn kills(actions: &[Action]) -> Vec<TaskId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Kill { task_id, .. } => Some(task_id.clone()),
            _ => None,
        })
        .collect()
}

fn declines(actions: &[Action]) -> Vec<(Vec<String>, Duration)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Decline { offer_ids, refuse } => {
                Some((offer_ids.iter().map(|o| o.0.clone()).collect(), *refuse))
            }
            _ => None,
        })
        .collect()
}

fn has(actions: &[Action], wanted: &Action) -> bool {
    actions.contains(wanted)
}

/// Launches `n` instances (one offer per call as needed) and runs them all; returns their ids in
/// launch order.
fn launch_running(core: &mut Core, n: usize, now: Now) -> Vec<TaskId> {
    core.offers(now, vec![offer(1, 64.0)]);
    let ids = launched(&core.take_actions());
    assert_eq!(ids.len(), n, "launched");
    for id in &ids {
        core.update(now, &status(id, TaskState::Running));
    }
    core.take_actions();
    ids
}

#[test]
fn launches_missing_instances_with_labels_env_and_ports() {
    let mut core = core_with(spec("instances = 2\nenv = { GREETING = \"hi\" }"));
    core.offers(at(10), vec![offer(1, 4.0)]);
    let actions = core.take_actions();
    let Some(Action::Launch {
        offer_id,
        tasks,
        records,
        refuse,
    }) = actions.iter().find(|a| matches!(a, Action::Launch { .. }))
    else {
        panic!("no launch in {actions:?}");
    };
    assert_eq!(offer_id.0, "o1");
    assert_eq!(*refuse, config().leftover_refuse);
    assert_eq!(tasks.len(), 2);
    let first = &tasks[0];
    assert!(
        first.task_id.as_str().starts_with("web.0."),
        "{}",
        first.task_id
    );
    assert!(tasks[1].task_id.as_str().starts_with("web.1."));
    assert_eq!(first.task_id.as_str().len(), "web.0.".len() + 6);
    assert_eq!(first.labels["service"], "web");
    assert_eq!(first.labels["instance"], "0");
    assert_eq!(
        first.labels["version"],
        spec("instances = 0\nenv = { GREETING = \"hi\" }").version()
    );
    assert_eq!(first.env["GREETING"], "hi");
    assert_eq!(first.resources.ports().ranges(), &[(31000, 31000)]);
    assert_eq!(tasks[1].resources.ports().ranges(), &[(31001, 31001)]);
    assert_eq!(
        first.command,
        drover_sdk::Command::shell("exec 'python3' '-m' 'http.server' \"${PORT0}\"")
    );
    // Every launched instance has a record to store first.
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].task_id, first.task_id.0);
    assert_eq!(records[0].ports, vec![31000]);
    assert_eq!(records[0].hostname, "host1");
    // Satisfied now: no more offers wanted.
    assert!(has(&actions, &Action::Suppress), "{actions:?}");
}

#[test]
fn placement_leaves_one_pending_with_the_reason_and_declines_briefly() {
    let mut core = core_with(spec("instances = 3\n[placement]\nmax_per_host = 1"));
    let s = core.status("web", at(5)).expect("tracked");
    assert_eq!(
        s.pending,
        PendingInstances {
            waiting_for_offers: 3,
            ..PendingInstances::default()
        },
        "no offer tried yet: {}",
        s.message
    );
    core.offers(at(10), vec![offer(1, 4.0), offer(2, 4.0)]);
    let actions = core.take_actions();
    let l = launches(&actions);
    assert_eq!(l.len(), 2, "one per host: {actions:?}");
    assert!(!has(&actions, &Action::Suppress), "still wants the third");
    // The next offers of the same hosts cannot take it either.
    core.offers(at(20), vec![offer(1, 4.0), offer(2, 4.0)]);
    let actions = core.take_actions();
    assert!(launched(&actions).is_empty());
    assert_eq!(
        declines(&actions),
        vec![(
            vec!["o1".to_string(), "o2".to_string()],
            config().decline_refuse
        )]
    );
    let s = core.status("web", at(20)).expect("tracked");
    assert!(!s.at_spec);
    assert!(
        s.message
            .contains("1 instance pending: max_per_host=1 reached on 2 offer(s)"),
        "{}",
        s.message
    );
    assert_eq!(
        s.pending,
        PendingInstances {
            unplaceable: 1,
            ..PendingInstances::default()
        }
    );
}

#[test]
fn a_too_large_instance_says_what_the_largest_offer_has() {
    let mut core = core_with(spec("instances = 1").clone());
    let mut big = spec("instances = 1");
    big.cpus = 2.0;
    core.set_specs(at(1), vec![big], vec![]);
    core.offers(at(10), vec![offer(1, 1.5)]);
    let actions = core.take_actions();
    assert!(launched(&actions).is_empty());
    let s = core.status("web", at(10)).expect("tracked");
    assert!(
        s.message
            .contains("needs 2 cpus per instance, the most offered is 1.5"),
        "{}",
        s.message
    );
}

#[test]
fn offers_not_needed_are_declined_for_long_and_offers_suppressed() {
    let mut core = core_with(spec("instances = 1"));
    launch_running(&mut core, 1, at(10));
    core.offers(at(20), vec![offer(2, 4.0)]);
    let actions = core.take_actions();
    assert_eq!(
        declines(&actions),
        vec![(vec!["o2".to_string()], config().idle_refuse)]
    );
    assert!(core.status("web", at(20)).expect("tracked").at_spec);
}

#[test]
fn scale_down_kills_the_newest_first_and_scale_up_revives() {
    let mut core = core_with(spec("instances = 3"));
    let ids = launch_running(&mut core, 3, at(10));
    core.set_specs(at(20), vec![spec("instances = 1")], vec![]);
    let actions = core.take_actions();
    assert_eq!(kills(&actions), vec![ids[2].clone(), ids[1].clone()]);
    // Scaling is not an upgrade: the kept instance stays.
    assert!(!kills(&actions).contains(&ids[0]));
    // Killed instances end without counting as failures: no backoff, no relaunch.
    core.update(at(30), &status(&ids[2], TaskState::Killed));
    core.update(at(30), &status(&ids[1], TaskState::Killed));
    let actions = core.take_actions();
    assert!(launched(&actions).is_empty());
    assert!(!has(&actions, &Action::Revive));
    core.set_specs(at(40), vec![spec("instances = 2")], vec![]);
    let actions = core.take_actions();
    assert!(has(&actions, &Action::Revive), "{actions:?}");
    core.offers(at(50), vec![offer(1, 64.0)]);
    let new = launched(&core.take_actions());
    assert_eq!(new.len(), 1);
    assert!(
        new[0].as_str().starts_with("web.1."),
        "lowest free index: {}",
        new[0]
    );
}

#[test]
fn failed_instances_are_replaced_after_an_exponential_backoff_that_resets() {
    let mut core = core_with(spec("instances = 1"));
    let ids = launch_running(&mut core, 1, at(0));
    // First failure: 1 s backoff.
    core.update(at(1_000), &status(&ids[0], TaskState::Failed));
    let actions = core.take_actions();
    assert!(
        has(
            &actions,
            &Action::Forget {
                service: "web".into(),
                task_id: ids[0].clone()
            }
        ),
        "{actions:?}"
    );
    assert!(
        !has(&actions, &Action::Revive),
        "nothing may launch yet: {actions:?}"
    );
    core.offers(at(1_500), vec![offer(1, 4.0)]);
    let actions = core.take_actions();
    assert!(launched(&actions).is_empty(), "still backing off");
    let s = core.status("web", at(1_500)).expect("tracked");
    assert!(
        s.message
            .contains("instance 0 restarts in 0.5s after 1 failure"),
        "{}",
        s.message
    );
    assert_eq!(
        s.pending,
        PendingInstances {
            backing_off: 1,
            ..PendingInstances::default()
        }
    );
    core.tick(at(2_000));
    assert!(has(&core.take_actions(), &Action::Revive));
    core.offers(at(2_000), vec![offer(1, 4.0)]);
    let second = launched(&core.take_actions());
    assert_eq!(second.len(), 1);
    assert!(second[0].as_str().starts_with("web.0."));
    // The replacement carries the restart count.
    assert_eq!(
        core.status("web", at(2_000)).expect("tracked").instances[0].restarts,
        1
    );
    // Second failure right away: 2 s.
    core.update(at(2_100), &status(&second[0], TaskState::Running));
    core.update(at(2_200), &status(&second[0], TaskState::Finished));
    core.take_actions();
    core.tick(at(4_100));
    assert!(!has(&core.take_actions(), &Action::Revive), "2 s not over");
    core.tick(at(4_200));
    assert!(has(&core.take_actions(), &Action::Revive));
    core.offers(at(4_200), vec![offer(1, 4.0)]);
    let third = launched(&core.take_actions());
    assert_eq!(third.len(), 1);
    // Running healthy (no health check) for backoff_reset_after resets the count.
    core.update(at(4_300), &status(&third[0], TaskState::Running));
    core.tick(at(14_300));
    core.update(at(14_400), &status(&third[0], TaskState::Failed));
    core.take_actions();
    core.tick(at(15_400));
    assert!(has(&core.take_actions(), &Action::Revive), "back to 1 s");
}

#[test]
fn backoff_is_capped() {
    let mut core = core_with(spec("instances = 1"));
    let mut now = 0;
    for _ in 0..6 {
        core.tick(at(now));
        core.offers(at(now), vec![offer(1, 4.0)]);
        let ids = launched(&core.take_actions());
        assert_eq!(ids.len(), 1, "relaunched at {now}");
        core.update(at(now), &status(&ids[0], TaskState::Failed));
        core.take_actions();
        // The wait is min(1 s * 2^(n-1), 8 s); step past it.
        now += 8_000;
    }
}

#[test]
fn rolling_upgrade_with_surge_keeps_every_instance_healthy() {
    // max_surge 1, max_unavailable 0: one new at a time; an old one goes only once a new one is
    // healthy, so healthy never drops below 4 and at most 5 run.
    let mut core = core_with(spec("instances = 4"));
    let old = launch_running(&mut core, 4, at(0));
    core.set_specs(
        at(10),
        vec![spec("instances = 4\nenv = { V = \"2\" }")],
        vec![],
    );
    let actions = core.take_actions();
    assert!(
        kills(&actions).is_empty(),
        "no old one goes before a new one is healthy"
    );
    assert!(has(&actions, &Action::Revive));
    let mut now = 100;
    let mut remaining_old = old.clone();
    let mut rounds = 0;
    while !remaining_old.is_empty() {
        rounds += 1;
        assert!(rounds < 20, "upgrade does not finish");
        core.offers(at(now), vec![offer(1, 64.0)]);
        let new = launched(&core.take_actions());
        assert_eq!(new.len(), 1, "one at a time (surge 1)");
        let s = core.status("web", at(now)).expect("tracked");
        assert!(s.instances.len() <= 5, "at most instances + surge");
        assert!(s.healthy >= 4, "never fewer than 4 healthy");
        core.update(at(now), &status(&new[0], TaskState::Running));
        let actions = core.take_actions();
        let killed = kills(&actions);
        assert_eq!(
            killed.len(),
            1,
            "a new healthy one lets one old go: {actions:?}"
        );
        assert!(remaining_old.contains(&killed[0]));
        let s = core.status("web", at(now)).expect("tracked");
        assert!(s.healthy > 4, "the killed one still counts until it ends");
        remaining_old.retain(|id| *id != killed[0]);
        core.update(at(now + 10), &status(&killed[0], TaskState::Killed));
        core.take_actions();
        now += 100;
    }
    let s = core.status("web", at(now)).expect("tracked");
    assert!(s.at_spec, "{s:?}");
    assert!(s.instances.iter().all(|i| i.version == s.version));
}

#[test]
fn rolling_upgrade_without_surge_stays_within_max_unavailable() {
    let mut core = core_with(spec(
        "instances = 4\n[upgrade]\nmax_surge = 0\nmax_unavailable = 1",
    ));
    let old = launch_running(&mut core, 4, at(0));
    let new_spec =
        spec("instances = 4\nenv = { V = \"2\" }\n[upgrade]\nmax_surge = 0\nmax_unavailable = 1");
    core.set_specs(at(10), vec![new_spec], vec![]);
    let mut now = 10;
    let mut done = 0;
    let mut pending_kill = kills(&core.take_actions());
    assert_eq!(pending_kill.len(), 1, "one may be unavailable");
    while done < 4 {
        assert!(now < 10_000, "upgrade does not finish");
        let s = core.status("web", at(now)).expect("tracked");
        let healthy_not_killed = s
            .instances
            .iter()
            .filter(|i| i.state == "TASK_RUNNING" && !pending_kill.iter().any(|k| k.0 == i.task_id))
            .count();
        assert!(
            healthy_not_killed >= 3,
            "never fewer than instances - max_unavailable"
        );
        // Nothing new launches while the killed one still runs (no surge).
        core.offers(at(now), vec![offer(1, 64.0)]);
        assert!(launched(&core.take_actions()).is_empty(), "no surge");
        for id in pending_kill.drain(..) {
            assert!(old.contains(&id));
            core.update(at(now), &status(&id, TaskState::Killed));
        }
        core.take_actions();
        core.offers(at(now), vec![offer(1, 64.0)]);
        let new = launched(&core.take_actions());
        assert_eq!(new.len(), 1);
        core.update(at(now), &status(&new[0], TaskState::Running));
        done += 1;
        pending_kill = kills(&core.take_actions());
        assert!(pending_kill.len() <= 1);
        now += 100;
    }
    assert!(core.status("web", at(now)).expect("tracked").at_spec);
}

#[test]
fn unhealthy_instances_are_killed_after_max_failures_past_grace_and_replaced() {
    let mut core = core_with(spec(
        "instances = 1\n[health]\nhttp = \"/\"\ninterval = \"1s\"\ntimeout = \"500ms\"\ngrace = \"2s\"\nmax_failures = 2",
    ));
    core.offers(at(0), vec![offer(1, 4.0)]);
    let id = launched(&core.take_actions())[0].clone();
    core.update(at(0), &status(&id, TaskState::Running));
    core.tick(at(0));
    let actions = core.take_actions();
    let probe = actions
        .iter()
        .find_map(|a| match a {
            Action::Probe(p) => Some(p.clone()),
            _ => None,
        })
        .expect("probes at once");
    assert_eq!(probe.host, "host1");
    assert_eq!(probe.port, Some(31000));
    assert_eq!(probe.kind, HealthKind::Http { path: "/".into() });
    // No second probe while one runs.
    core.tick(at(1_500));
    assert!(
        !core
            .take_actions()
            .iter()
            .any(|a| matches!(a, Action::Probe(_)))
    );
    // Failures within the grace period do not count.
    core.probe_result(at(1_000), &id, ProbeOutcome::Failed("refused".into()));
    assert!(kills(&core.take_actions()).is_empty());
    assert!(!core.status("web", at(1_000)).expect("tracked").at_spec);
    core.probe_result(
        at(2_400),
        &id,
        ProbeOutcome::Unchecked("cannot resolve host1".into()),
    );
    assert!(
        kills(&core.take_actions()).is_empty(),
        "not the instance's fault"
    );
    let s = core.status("web", at(2_400)).expect("tracked");
    assert!(
        s.instances[0].message.contains("cannot check health"),
        "{s:?}"
    );
    core.probe_result(at(2_500), &id, ProbeOutcome::Passed);
    core.take_actions();
    assert!(core.status("web", at(2_500)).expect("tracked").at_spec);
    core.probe_result(at(3_500), &id, ProbeOutcome::Failed("500".into()));
    assert!(kills(&core.take_actions()).is_empty(), "1 of 2");
    core.probe_result(at(4_500), &id, ProbeOutcome::Failed("500".into()));
    let actions = core.take_actions();
    assert_eq!(kills(&actions), vec![id.clone()]);
    let s = core.status("web", at(4_500)).expect("tracked");
    assert_eq!(s.instances[0].health, Health::Unhealthy);
    // The replacement waits for the backoff of index 0 and for the old one to end.
    core.update(at(4_600), &status(&id, TaskState::Killed));
    core.offers(at(4_700), vec![offer(1, 4.0)]);
    assert!(launched(&core.take_actions()).is_empty());
    core.tick(at(5_500));
    core.offers(at(5_500), vec![offer(1, 4.0)]);
    assert_eq!(launched(&core.take_actions()).len(), 1);
}

#[test]
fn check_host_overrides_the_hostname() {
    let mut core = Core::new(
        CoreConfig {
            check_host: Some("127.0.0.1".into()),
            ..config()
        },
        1,
    );
    core.set_specs(
        at(0),
        vec![spec("instances = 1\n[health]\ntcp = true")],
        vec![],
    );
    core.subscribed(at(0));
    core.offers(at(0), vec![offer(1, 4.0)]);
    let id = launched(&core.take_actions())[0].clone();
    core.update(at(0), &status(&id, TaskState::Running));
    core.tick(at(0));
    let probe = core
        .take_actions()
        .into_iter()
        .find_map(|a| match a {
            Action::Probe(p) => Some(p),
            _ => None,
        })
        .expect("probe");
    assert_eq!(probe.host, "127.0.0.1");
}

#[test]
fn removed_services_are_stopped_then_forgotten() {
    let mut core = core_with(spec("instances = 2"));
    let ids = launch_running(&mut core, 2, at(0));
    core.set_specs(at(10), vec![], vec![]);
    let actions = core.take_actions();
    assert_eq!(kills(&actions).len(), 2);
    core.tick(at(20));
    let s = core
        .status("web", at(20))
        .expect("still tracked while instances run");
    assert!(s.removing);
    assert!(
        s.message.contains("removing: 2 instances still running"),
        "{}",
        s.message
    );
    core.update(at(30), &status(&ids[0], TaskState::Killed));
    assert!(!has(
        &core.take_actions(),
        &Action::RemoveService("web".into())
    ));
    core.update(at(40), &status(&ids[1], TaskState::Killed));
    let actions = core.take_actions();
    assert!(
        has(&actions, &Action::RemoveService("web".into())),
        "{actions:?}"
    );
    assert!(!core.has_service("web"));
    // Kills are repeated until the task ends.
    let mut core = core_with(spec("instances = 1"));
    let ids = launch_running(&mut core, 1, at(0));
    core.set_specs(at(10), vec![], vec![]);
    core.take_actions();
    core.tick(at(10 + 10_000));
    assert_eq!(kills(&core.take_actions()), ids);
}

#[test]
fn updates_for_unknown_tasks_kill_them() {
    let mut core = core_with(spec("instances = 0"));
    let stray = TaskId::from("web.3.zzzzzz");
    core.update(at(0), &status(&stray, TaskState::Running));
    assert_eq!(kills(&core.take_actions()), vec![stray.clone()]);
    core.update(at(0), &status(&stray, TaskState::Killed));
    assert!(kills(&core.take_actions()).is_empty());
}

#[test]
fn a_new_leader_recovers_records_reconciles_and_gives_up_unknown_tasks() {
    let mut core = Core::new(config(), 3);
    core.set_specs(at(0), vec![spec("instances = 2")], vec![]);
    let version = spec("instances = 0").version();
    let record = |id: &str, index: u32, ms: u64| InstanceRecord {
        task_id: id.into(),
        service: "web".into(),
        instance: index,
        version: version.clone(),
        agent_id: "a1".into(),
        hostname: "host1".into(),
        attributes: BTreeMap::new(),
        ports: vec![31000 + index as u16],
        restarts: 2,
        launched_at_ms: ms,
    };
    core.recover(
        at(0),
        vec![record("web.0.aaaaaa", 0, 1), record("web.1.bbbbbb", 1, 2)],
        vec!["web".into(), "gone".into()],
    );
    let actions = core.take_actions();
    // A status without spec or instances is a removed service.
    assert!(
        has(&actions, &Action::RemoveService("gone".into())),
        "{actions:?}"
    );
    // Both recovered instances count: nothing launches.
    assert!(has(&actions, &Action::Suppress));
    core.subscribed(at(0));
    let actions = core.take_actions();
    assert!(has(
        &actions,
        &Action::Reconcile(vec![
            TaskId::from("web.0.aaaaaa"),
            TaskId::from("web.1.bbbbbb")
        ])
    ));
    assert!(has(&actions, &Action::Reconcile(vec![])));
    core.update(
        at(100),
        &status(&TaskId::from("web.0.aaaaaa"), TaskState::Running),
    );
    let mut unknown = status(&TaskId::from("web.1.bbbbbb"), TaskState::Unknown);
    unknown.source = StatusSource::Master;
    core.update(at(100), &unknown);
    core.take_actions();
    let s = core.status("web", at(100)).expect("tracked");
    assert_eq!(s.instances[0].ports, vec![31000]);
    assert_eq!(s.instances[0].restarts, 2);
    // The master is asked again about tasks it did not know (agents may still re-register).
    core.tick(at(100 + 5_000));
    let actions = core.take_actions();
    assert!(
        has(
            &actions,
            &Action::Reconcile(vec![TaskId::from("web.1.bbbbbb")])
        ),
        "{actions:?}"
    );
    // A reconnection (say, after a master failover) reconciles implicitly only.
    core.reconnected(at(100 + 6_000));
    let reconciles: Vec<_> = core
        .take_actions()
        .into_iter()
        .filter(|a| matches!(a, Action::Reconcile(_)))
        .collect();
    assert_eq!(reconciles, vec![Action::Reconcile(vec![])]);
    // Past unknown_replace_after the unknown one is given up and replaced.
    core.tick(at(100 + 30_000));
    let actions = core.take_actions();
    assert_eq!(kills(&actions), vec![TaskId::from("web.1.bbbbbb")]);
    assert!(has(
        &actions,
        &Action::Forget {
            service: "web".into(),
            task_id: TaskId::from("web.1.bbbbbb")
        }
    ));
    assert!(has(&actions, &Action::Revive));
}

#[test]
fn a_replaced_framework_forgets_its_records() {
    let mut core = Core::new(config(), 3);
    core.set_specs(at(0), vec![spec("instances = 1")], vec![]);
    let record = InstanceRecord {
        task_id: "web.0.aaaaaa".into(),
        service: "web".into(),
        instance: 0,
        version: spec("instances = 0").version(),
        agent_id: "a1".into(),
        hostname: "host1".into(),
        attributes: BTreeMap::new(),
        ports: vec![31000],
        restarts: 0,
        launched_at_ms: 0,
    };
    core.recover(at(0), vec![record], vec![]);
    core.take_actions();
    core.framework_replaced(at(1));
    let actions = core.take_actions();
    assert!(has(
        &actions,
        &Action::Forget {
            service: "web".into(),
            task_id: TaskId::from("web.0.aaaaaa")
        }
    ));
    assert!(has(&actions, &Action::Revive));
}

#[test]
fn unreachable_instances_are_replaced_after_the_timeout() {
    let mut core = core_with(spec("instances = 1"));
    let ids = launch_running(&mut core, 1, at(0));
    core.update(at(1_000), &status(&ids[0], TaskState::Unreachable));
    core.tick(at(1_000 + 59_000));
    assert!(kills(&core.take_actions()).is_empty());
    core.tick(at(1_000 + 60_000));
    let actions = core.take_actions();
    assert_eq!(kills(&actions), ids);
    core.offers(at(62_000), vec![offer(1, 4.0)]);
    assert_eq!(launched(&core.take_actions()).len(), 1);
}

#[test]
fn status_is_published_when_changed_and_rate_limited() {
    let mut core = core_with(spec("instances = 1"));
    core.tick(at(0));
    let published = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::PublishStatus(_)))
            .count()
    };
    assert_eq!(published(&core.take_actions()), 1);
    core.tick(at(50));
    assert_eq!(published(&core.take_actions()), 0, "nothing changed");
    core.offers(at(60), vec![offer(1, 4.0)]);
    core.take_actions();
    core.tick(at(100));
    assert_eq!(published(&core.take_actions()), 0, "within status_interval");
    core.tick(at(300));
    let actions = core.take_actions();
    let Some(Action::PublishStatus(s)) = actions
        .iter()
        .find(|a| matches!(a, Action::PublishStatus(_)))
    else {
        panic!("due: {actions:?}");
    };
    assert_eq!(s.desired, 1);
    assert_eq!(s.staged, 1);
    assert_eq!(s.instances[0].state, "TASK_STAGING");
    assert!(s.message.contains("1 instance starting"), "{}", s.message);
}

#[test]
fn an_invalid_stored_spec_touches_nothing_and_says_why() {
    let mut core = Core::new(config(), 1);
    core.set_specs(
        at(0),
        vec![],
        vec![("bad".into(), "cpus: out of range".into())],
    );
    core.subscribed(at(0));
    core.tick(at(0));
    let actions = core.take_actions();
    assert!(!has(&actions, &Action::RemoveService("bad".into())));
    let s = core.status("bad", at(0)).expect("tracked");
    assert!(
        s.message.contains("the stored spec is invalid: cpus"),
        "{}",
        s.message
    );
    // A later valid spec takes over.
    let mut valid = spec("instances = 1");
    valid.name = "bad".into();
    core.set_specs(at(1), vec![valid], vec![]);
    assert!(has(&core.take_actions(), &Action::Revive));
}

#[test]
fn task_ids_name_their_service() {
    assert_eq!(service_of(&TaskId::from("web.0.abcdef")), Some("web"));
    assert_eq!(service_of(&TaskId::from("web-2.12.x")), Some("web-2"));
    assert_eq!(service_of(&TaskId::from("web.x.abcdef")), None);
    assert_eq!(service_of(&TaskId::from("hello-1")), None);
}

#[test]
fn launches_refused_for_the_offer_relaunch_at_once_but_invalid_tasks_back_off() {
    let mut core = core_with(spec("instances = 1"));
    core.offers(at(0), vec![offer(1, 4.0)]);
    let id = launched(&core.take_actions())[0].clone();
    let mut refused = status(&id, TaskState::Error);
    refused.source = StatusSource::Master;
    refused.uuid.clear();
    refused.reason = "invalid_offer".into();
    core.update(at(10), &refused);
    assert!(
        has(&core.take_actions(), &Action::Revive),
        "no backoff for a rescinded offer"
    );
    core.offers(at(20), vec![offer(2, 4.0)]);
    let id = launched(&core.take_actions())[0].clone();
    refused.task_id = id;
    refused.reason = "invalid_task".into();
    core.update(at(30), &refused);
    let actions = core.take_actions();
    assert!(
        !has(&actions, &Action::Revive),
        "an invalid task backs off: {actions:?}"
    );
    let message = core.status("web", at(30)).expect("tracked").message;
    assert!(message.contains("restarts in"), "{message}");
}

#[test]
fn recovered_and_launched_instances_get_distinct_launch_orders() {
    // Proves launch order (what scale-down sorts by, newest first) is unique across recovered
    // and newly launched instances; it used to start both counts at 1.
    let mut core = Core::new(config(), 3);
    core.set_specs(at(0), vec![spec("instances = 2")], vec![]);
    let record = InstanceRecord {
        task_id: "web.0.aaaaaa".into(),
        service: "web".into(),
        instance: 0,
        version: spec("instances = 0").version(),
        agent_id: "a1".into(),
        hostname: "host1".into(),
        attributes: BTreeMap::new(),
        ports: vec![31000],
        restarts: 0,
        launched_at_ms: 1,
    };
    core.recover(at(0), vec![record], vec![]);
    core.subscribed(at(0));
    core.offers(at(10), vec![offer(1, 4.0)]);
    assert_eq!(launched(&core.take_actions()).len(), 1);
    let seqs: BTreeSet<u64> = core.services["web"]
        .instances
        .values()
        .map(|i| i.seq)
        .collect();
    assert_eq!(seqs.len(), 2, "one launch order per instance");
    core.check_invariants();
}

#[test]
fn a_probe_answered_after_its_check_was_dropped_is_over() {
    // Proves a probe result ends the probe even when the spec no longer has a check, so a
    // check added back later probes the instance again instead of waiting forever.
    let with_check = spec("instances = 1\n[health]\ntcp = true");
    let mut core = core_with(with_check.clone());
    core.offers(at(0), vec![offer(1, 4.0)]);
    let id = launched(&core.take_actions())[0].clone();
    core.update(at(0), &status(&id, TaskState::Running));
    core.tick(at(1));
    assert!(
        core.take_actions()
            .iter()
            .any(|a| matches!(a, Action::Probe(p) if p.task_id == id))
    );
    let mut without = with_check;
    without.health = None;
    core.set_specs(at(2), vec![without], vec![]);
    core.probe_result(at(3), &id, ProbeOutcome::Passed);
    assert!(!core.services["web"].instances[&id].probing);
}

/// A core running two instances of `web` (their ids in launch order), invariants checked.
fn two_running() -> (Core, Vec<TaskId>) {
    let mut core = core_with(spec("instances = 2"));
    let ids = launch_running(&mut core, 2, at(0));
    core.check_invariants();
    (core, ids)
}

#[test]
#[should_panic(expected = "services: web: index 0 runs, yet waits to launch")]
fn check_invariants_catches_an_index_both_running_and_launchable() {
    // Proves an index counted both as running and as waiting to launch (which would launch a
    // second instance of it) trips check_invariants.
    let (mut core, _) = two_running();
    core.services.get_mut("web").unwrap().launchable = vec![0];
    core.check_invariants();
}

#[test]
#[should_panic(expected = "services: web: instance web.0.")]
fn check_invariants_catches_a_terminal_instance_still_tracked() {
    // Proves an instance in a terminal state still counted as live trips check_invariants.
    let (mut core, ids) = two_running();
    core.services
        .get_mut("web")
        .unwrap()
        .instances
        .get_mut(&ids[0])
        .unwrap()
        .state = TaskState::Finished;
    core.check_invariants();
}

#[test]
#[should_panic(expected = "services: offers are wanted though no instance may launch")]
fn check_invariants_catches_offers_wanted_for_nothing() {
    // Proves the revive/suppress state must match what can launch.
    let (mut core, _) = two_running();
    core.offers_wanted = Some(true);
    core.check_invariants();
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "services: web: index 3 failed 2 times but restarted 1")]
fn every_input_checks_the_invariants_in_debug_builds() {
    // Proves the inputs run check_invariants (debug builds): a corruption shows at the next
    // input, here a tick.
    let (mut core, _) = two_running();
    core.services.get_mut("web").unwrap().slots.insert(
        3,
        Slot {
            failures: 2,
            restarts: 1,
            ..Slot::default()
        },
    );
    core.tick(at(1));
}

/// splitmix64, so the simulation needs no dependency and replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random inputs, as a driver would give them: spec changes (scale, new version, health check,
/// removal), offers, status updates of tracked and stray tasks, probe results, failed launches,
/// time, reconnections. Records are kept as the driver would (Launch stores, Forget deletes).
fn simulate(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut core = Core::new(config(), seed);
    let mut records: BTreeSet<TaskId> = BTreeSet::new();
    let mut now_ms = 0;
    // Odd seeds start as a new leader that finds an instance of the previous one.
    let recovered: Vec<InstanceRecord> = (seed % 2 == 1)
        .then(|| InstanceRecord {
            task_id: "web.0.rec000".into(),
            service: "web".into(),
            instance: 0,
            version: spec("instances = 1").version(),
            agent_id: "a1".into(),
            hostname: "host1".into(),
            attributes: BTreeMap::new(),
            ports: vec![31000],
            restarts: 0,
            launched_at_ms: 1,
        })
        .into_iter()
        .collect();
    records.extend(recovered.iter().map(|r| TaskId(r.task_id.clone())));
    core.recover(at(0), recovered, vec![]);
    core.subscribed(at(0));
    for step in 0..steps {
        let now = at(now_ms);
        let tracked: Vec<TaskId> = core
            .services
            .values()
            .flat_map(|s| s.instances.keys().cloned())
            .collect();
        let pick = |rng: &mut Rng| {
            tracked
                .get(rng.below(tracked.len().max(1) as u64) as usize)
                .cloned()
        };
        match rng.below(10) {
            0 => {
                let mut specs = Vec::new();
                if rng.below(5) > 0 {
                    let health = if rng.below(2) == 0 {
                        "\n[health]\ntcp = true\nmax_failures = 1"
                    } else {
                        ""
                    };
                    specs.push(spec(&format!(
                        "instances = {}\nenv = {{ V = \"{}\" }}{health}",
                        rng.below(4),
                        rng.below(2)
                    )));
                }
                core.set_specs(now, specs, vec![]);
            }
            1 | 2 => {
                let offers = (0..rng.below(3))
                    .map(|n| offer(n as u32, rng.below(3) as f64 + 0.5))
                    .collect();
                core.offers(now, offers);
            }
            3 | 4 => {
                if let Some(id) = pick(&mut rng) {
                    let state = [
                        TaskState::Running,
                        TaskState::Running,
                        TaskState::Finished,
                        TaskState::Failed,
                        TaskState::Killed,
                        TaskState::Unreachable,
                        TaskState::Unknown,
                        TaskState::Error,
                    ][rng.below(8) as usize];
                    core.update(now, &status(&id, state));
                }
            }
            5 => {
                if let Some(id) = pick(&mut rng) {
                    let outcome = match rng.below(3) {
                        0 => ProbeOutcome::Passed,
                        1 => ProbeOutcome::Failed("refused".into()),
                        _ => ProbeOutcome::Unchecked("no route".into()),
                    };
                    core.probe_result(now, &id, outcome);
                }
            }
            6 => {
                now_ms += rng.below(20_000);
                core.tick(at(now_ms));
            }
            7 => core.update(
                now,
                &status(&TaskId::from("web.9.stray00"), TaskState::Running),
            ),
            8 => match rng.below(4) {
                0 => core.reconnected(now),
                1 => core.offers_call_failed(),
                2 => core.framework_replaced(now),
                _ => core.tick(now),
            },
            _ => {}
        }
        for action in core.take_actions() {
            match action {
                Action::Launch {
                    tasks, records: r, ..
                } => {
                    assert_eq!(
                        tasks.len(),
                        r.len(),
                        "seed {seed} step {step}: a record per task"
                    );
                    if rng.below(8) == 0 {
                        // The driver could not store or send it.
                        let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id.clone()).collect();
                        records.extend(ids.iter().cloned());
                        core.launch_failed(now, &ids, "coord is down");
                    } else {
                        records.extend(r.into_iter().map(|r| TaskId(r.task_id)));
                    }
                }
                Action::Forget { task_id, .. } => {
                    records.remove(&task_id);
                }
                _ => {}
            }
        }
        // launch_failed's own Forgets.
        for action in core.take_actions() {
            if let Action::Forget { task_id, .. } = action {
                records.remove(&task_id);
            }
        }
        core.check_invariants();
        let tracked: BTreeSet<TaskId> = core
            .services
            .values()
            .flat_map(|s| s.instances.keys().cloned())
            .collect();
        assert_eq!(
            tracked, records,
            "seed {seed} step {step}: the tracked instances are exactly the stored records"
        );
    }
}

#[test]
fn random_inputs_keep_every_invariant_and_a_record_per_instance() {
    // Proves, over random input sequences from fixed seeds, that check_invariants holds after
    // every input and the instances the core tracks are exactly the records a driver would
    // hold (each Launch stores its instances' records, each Forget deletes one).
    for seed in 0..64 {
        simulate(seed, 300);
    }
}
