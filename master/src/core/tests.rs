//! The core driven by hand: inputs in, the exact actions out.

use super::*;
use crate::ids::Role;
use crate::resources::PortRanges;

const FW: ConnId = 100;
const AGENT: ConnId = 200;

fn fw_info(id: &str, timeout_ms: u64) -> FrameworkInfo {
    FrameworkInfo {
        id: FrameworkId::parse(id).unwrap(),
        name: format!("{id}-name"),
        role: Role::parse("*").unwrap(),
        principal: String::new(),
        failover_timeout_ms: timeout_ms,
        hostname: "h".into(),
    }
}

fn agent_info(id: &str) -> AgentInfo {
    AgentInfo {
        id: AgentId::parse(id).unwrap(),
        hostname: format!("{id}.host"),
        address: "127.0.0.1:5051".into(),
        resources: Resources::from_millicpus(
            2000,
            2 << 30,
            PortRanges::from_ranges(&[(31000, 31009)]).unwrap(),
        ),
        attributes: BTreeMap::new(),
    }
}

fn launch(id: &str, agent: &str, millicpus: u64, mem: u64) -> TaskLaunch {
    TaskLaunch {
        id: TaskId::parse(id).unwrap(),
        name: id.into(),
        agent: AgentId::parse(agent).unwrap(),
        resources: Resources::from_millicpus(millicpus, mem, PortRanges::new()),
        program: Program::Argv(vec!["sleep".into(), "100".into()]),
        env: BTreeMap::new(),
        kill_grace_period_ms: 0,
        labels: BTreeMap::new(),
        user: None,
    }
}

fn config() -> CoreConfig {
    let mut c = CoreConfig::default();
    c.allocator.offer_timeout_ms = None;
    c.agent_unreachable_after_ms = 1_000_000;
    c.framework_heartbeat_interval_ms = 1_000_000;
    c
}

/// A core with framework `fw` subscribed on `FW` and agent `a1` registered on `AGENT`.
fn cluster(timeout_ms: u64) -> MasterCore {
    let mut core = MasterCore::new(config());
    core.subscribe(0, FW, fw_info("fw", timeout_ms), true, false);
    let actions = core.take_actions();
    assert!(matches!(
        &actions[..],
        [Action::Persist {
            write: RegistryWrite::PutFramework(_),
            then: Completion::FrameworkAdmitted { conn: FW }
        }]
    ));
    core.persisted(0, Completion::FrameworkAdmitted { conn: FW }, Ok(()));
    let actions = core.take_actions();
    assert!(matches!(
        &actions[..],
        [
            Action::SubscribeDone {
                conn: FW,
                result: Ok(_)
            },
            Action::ToFramework {
                conn: FW,
                event: FrameworkEvent::Subscribed { .. }
            }
        ]
    ));
    core.agent_register(AGENT, agent_info("a1"));
    core.take_actions();
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT }, Ok(()));
    let actions = core.take_actions();
    assert!(matches!(
        &actions[..],
        [Action::ToAgent {
            conn: AGENT,
            command: AgentCommand::Registered { .. }
        }]
    ));
    core
}

/// What `pick` finds in each action, in order.
fn pick<T>(actions: &[Action], f: impl Fn(&Action) -> Option<T>) -> Vec<T> {
    actions.iter().filter_map(f).collect()
}

fn offers(actions: &[Action]) -> Vec<OfferOut> {
    pick(actions, |a| match a {
        Action::ToFramework {
            event: FrameworkEvent::Offers(o),
            ..
        } => Some(o.clone()),
        _ => None,
    })
    .concat()
}

fn updates(actions: &[Action]) -> Vec<TaskStatus> {
    pick(actions, |a| match a {
        Action::ToFramework {
            event: FrameworkEvent::Update(s),
            ..
        } => Some(s.clone()),
        _ => None,
    })
}

fn runs(actions: &[Action]) -> Vec<String> {
    pick(actions, |a| match a {
        Action::ToAgent {
            command: AgentCommand::RunTask { task, .. },
            ..
        } => Some(task.id.to_string()),
        _ => None,
    })
}

fn offer_one(core: &mut MasterCore, now: u64) -> OfferOut {
    core.tick(now);
    let o = offers(&core.take_actions());
    assert_eq!(o.len(), 1, "one agent, one offer");
    o.into_iter().next().unwrap()
}

fn fw() -> FrameworkId {
    FrameworkId::parse("fw").unwrap()
}

fn agent_status(task: &str, state: TaskState, uuid: u8) -> TaskStatus {
    TaskStatus {
        task_id: task.into(),
        agent_id: Some(AgentId::parse("a1").unwrap()),
        state,
        message: String::new(),
        reason: String::new(),
        uuid: Some([uuid; 16]),
        exit_code: None,
        signal: None,
        timestamp_ms: 1,
        source: StatusSource::Agent,
    }
}

#[test]
fn an_offer_launches_tasks_and_bad_launches_get_task_error_without_harming_others() {
    // Proves launch validation: a good task runs; one over the offer, a duplicate id, a wrong
    // agent and a malformed one each get TASK_ERROR with a reason, and affect no other task.
    let mut core = cluster(60_000);
    let offer = offer_one(&mut core, 10);
    assert_eq!(offer.resources.millicpus(), 2000);
    let launches = vec![
        Ok(launch("good", "a1", 500, 1 << 20)),
        Ok(launch("huge", "a1", 5000, 1 << 20)),
        Ok(launch("good", "a1", 100, 1 << 20)),
        Ok(launch("elsewhere", "a2", 100, 1 << 20)),
        Err(InvalidLaunch {
            task_id: "bad".into(),
            message: "task.command: set argv or shell; both are empty".into(),
        }),
        Ok(launch("good2", "a1", 1500, 1 << 20)),
    ];
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        launches,
        Some(0),
    )
    .unwrap();
    let actions = core.take_actions();
    assert_eq!(runs(&actions), vec!["good", "good2"]);
    let errors: Vec<(String, String)> = updates(&actions)
        .into_iter()
        .map(|s| {
            assert_eq!(s.state, TaskState::Error);
            assert_eq!(s.source, StatusSource::Master);
            (s.task_id, s.reason)
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            ("huge".to_string(), "insufficient_resources".to_string()),
            ("good".to_string(), "duplicate_task_id".to_string()),
            ("elsewhere".to_string(), "unknown_agent".to_string()),
            ("bad".to_string(), "invalid_task".to_string()),
        ]
    );
    // The offer is used up: accepting it again is an invalid offer for every task in it.
    core.accept(
        30,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("again", "a1", 1, 1))],
        None,
    )
    .unwrap();
    let u = updates(&core.take_actions());
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].state, u[0].reason.as_str()),
        (TaskState::Error, "invalid_offer")
    );
    // An offer id from another epoch never resolves.
    core.accept(
        30,
        &fw(),
        vec![OfferRef::Foreign("9-1".into())],
        vec![Ok(launch("x", "a1", 1, 1))],
        None,
    )
    .unwrap();
    assert_eq!(updates(&core.take_actions())[0].reason, "invalid_offer");
    // Unknown framework: a call error, not a panic.
    assert!(matches!(
        core.accept(
            30,
            &FrameworkId::parse("nope").unwrap(),
            vec![],
            vec![],
            None
        ),
        Err(CallError::NotFound(_))
    ));
}

#[test]
fn status_updates_flow_to_the_framework_and_acks_back_to_the_agent() {
    // Proves an agent update is forwarded with its uuid, the framework's ack reaches the agent,
    // and a terminal state frees the task's resources for the next offer.
    let mut core = cluster(60_000);
    let offer = offer_one(&mut core, 10);
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("t1", "a1", 2000, 1 << 30))],
        Some(0),
    )
    .unwrap();
    core.take_actions();
    core.status_update(30, AGENT, &fw(), agent_status("t1", TaskState::Running, 1));
    let u = updates(&core.take_actions());
    assert_eq!((u[0].state, u[0].uuid), (TaskState::Running, Some([1; 16])));
    core.acknowledge(&fw(), None, "t1", [1; 16]).unwrap();
    assert!(matches!(
        &core.take_actions()[..],
        [Action::ToAgent { conn: AGENT, command: AgentCommand::Acknowledge { uuid, .. } }] if *uuid == [1; 16]
    ));
    // Everything but 1 GiB of memory is in use; the next offer holds the rest.
    let rest = offer_one(&mut core, 40);
    assert_eq!(rest.resources.millicpus(), 0);
    core.decline(45, &fw(), vec![OfferRef::Known(rest.id)], Some(0))
        .unwrap();
    core.status_update(50, AGENT, &fw(), agent_status("t1", TaskState::Failed, 2));
    core.take_actions();
    let offer = offer_one(&mut core, 60);
    assert_eq!(
        offer.resources.millicpus(),
        2000,
        "the failed task's cpus are free again"
    );
}

#[test]
fn a_declined_agent_is_not_reoffered_before_refuse_seconds() {
    // Proves Decline's filter: no offer of that agent to that framework until it expires.
    let mut core = cluster(60_000);
    let offer = offer_one(&mut core, 10);
    core.decline(20, &fw(), vec![OfferRef::Known(offer.id)], Some(5_000))
        .unwrap();
    core.tick(100);
    assert!(offers(&core.take_actions()).is_empty());
    core.tick(4_000);
    assert!(offers(&core.take_actions()).is_empty());
    assert_eq!(offer_one(&mut core, 5_100).agent.as_str(), "a1");
}

#[test]
fn a_silent_agent_makes_its_tasks_unreachable_and_comes_back_on_reregister() {
    // Proves missed heartbeats → TASK_UNREACHABLE + Failure; Reregister → the task is back
    // (reported as running again) and the agent is offered again.
    let mut core = cluster(60_000);
    let offer = offer_one(&mut core, 10);
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("t1", "a1", 500, 1 << 20))],
        Some(0),
    )
    .unwrap();
    core.take_actions();
    core.status_update(30, AGENT, &fw(), agent_status("t1", TaskState::Running, 1));
    core.take_actions();
    core.tick(1_000_031);
    let actions = core.take_actions();
    let u = updates(&actions);
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].state, u[0].reason.as_str()),
        (TaskState::Unreachable, "agent_unreachable")
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::ToFramework {
            event: FrameworkEvent::Failure(_),
            ..
        }
    )));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::CloseAgent { conn: AGENT, .. }))
    );
    // It comes back on a new link and says t1 runs.
    let reported = vec![ReportedTask {
        framework: fw(),
        launch: launch("t1", "a1", 500, 1 << 20),
        state: TaskState::Running,
    }];
    core.agent_reregister(1_000_100, AGENT + 1, agent_info("a1"), reported);
    let actions = core.take_actions();
    assert!(
        matches!(&actions[0], Action::ToAgent { conn, command: AgentCommand::Registered { .. } } if *conn == AGENT + 1)
    );
    let u = updates(&actions);
    assert_eq!(
        (u[0].state, u[0].reason.as_str()),
        (TaskState::Running, "agent_reregistered")
    );
    let offer = offer_one(&mut core, 2_200);
    assert_eq!(
        offer.resources.millicpus(),
        1500,
        "the running task's share stays used"
    );
}

#[test]
fn a_framework_past_its_failover_timeout_is_torn_down_and_its_tasks_killed() {
    // Proves framework failover: within the timeout it keeps its tasks and may re-subscribe;
    // past it, it is removed (registry delete) and its agents told to shut it down.
    let mut core = cluster(1_000);
    let offer = offer_one(&mut core, 10);
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("t1", "a1", 500, 1 << 20))],
        Some(0),
    )
    .unwrap();
    core.take_actions();
    core.framework_disconnected(100, FW);
    core.tick(600);
    assert!(
        core.take_actions()
            .iter()
            .all(|a| !matches!(a, Action::Persist { .. }))
    );
    // Re-subscribes in time, on a new stream: keeps its task.
    core.subscribe(700, FW + 1, fw_info("fw", 1_000), false, false);
    let actions = core.take_actions();
    assert!(matches!(
        &actions[0],
        Action::SubscribeDone { result: Ok(_), .. }
    ));
    assert!(core.task(&fw(), &TaskId::parse("t1").unwrap()).is_some());
    // Goes away again, for good.
    core.framework_disconnected(800, FW + 1);
    core.tick(1_900);
    let actions = core.take_actions();
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::ToAgent {
            command: AgentCommand::ShutdownFramework(_),
            ..
        }
    )));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Persist {
            write: RegistryWrite::DeleteFramework(_),
            ..
        }
    )));
    // Its id is gone: re-subscribing is NotFound.
    core.subscribe(2_000, FW + 2, fw_info("fw", 1_000), false, false);
    assert!(matches!(
        &core.take_actions()[..],
        [Action::SubscribeDone {
            result: Err(CallError::NotFound(_)),
            ..
        }]
    ));
}

#[test]
fn after_a_takeover_agents_rebuild_the_tasks_and_unknown_frameworks_are_shut_down() {
    // Proves soft state: a new term learns tasks from Reregister; tasks of a framework the
    // registry does not hold are shut down on the agent.
    let mut core = MasterCore::new(config());
    core.load_framework(0, fw_info("fw", 60_000));
    core.load_agent(0, agent_info("a1"));
    let reported = vec![
        ReportedTask {
            framework: fw(),
            launch: launch("t1", "a1", 500, 1 << 20),
            state: TaskState::Running,
        },
        ReportedTask {
            framework: FrameworkId::parse("gone").unwrap(),
            launch: launch("t2", "a1", 500, 1 << 20),
            state: TaskState::Running,
        },
    ];
    core.agent_reregister(10, AGENT, agent_info("a1"), reported);
    let actions = core.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::ToAgent { command: AgentCommand::ShutdownFramework(f), .. } if f.as_str() == "gone")));
    assert_eq!(
        core.task(&fw(), &TaskId::parse("t1").unwrap())
            .map(|t| t.status.state),
        Some(TaskState::Running)
    );
    // The framework comes back and reconciles: it hears t1 is running.
    core.subscribe(20, FW, fw_info("fw", 60_000), false, false);
    core.take_actions();
    core.reconcile(&fw(), &[]).unwrap();
    let u = updates(&core.take_actions());
    assert_eq!(
        (u[0].task_id.as_str(), u[0].state),
        ("t1", TaskState::Running)
    );
    core.reconcile(&fw(), &["nope".to_string()]).unwrap();
    assert_eq!(updates(&core.take_actions())[0].state, TaskState::Unknown);
}

#[test]
fn kill_reaches_the_agent_and_unknown_tasks_answer_unknown() {
    // Proves Kill is passed to the task's agent, and a kill of an unknown task says TASK_UNKNOWN.
    let mut core = cluster(60_000);
    let offer = offer_one(&mut core, 10);
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("t1", "a1", 500, 1 << 20))],
        Some(0),
    )
    .unwrap();
    core.take_actions();
    core.kill(&fw(), "t1", 0).unwrap();
    assert!(matches!(
        &core.take_actions()[..],
        [Action::ToAgent {
            conn: AGENT,
            command: AgentCommand::KillTask { .. }
        }]
    ));
    core.kill(&fw(), "t9", 0).unwrap();
    assert_eq!(updates(&core.take_actions())[0].state, TaskState::Unknown);
}

// ---- limits: each refusal names the limit ----------------------------------------------------

fn limited(f: impl FnOnce(&mut crate::limits::Limits)) -> MasterCore {
    let mut c = config();
    f(&mut c.allocator.limits);
    MasterCore::new(c)
}

fn refusals(actions: &[Action]) -> Vec<(ConnId, Option<String>)> {
    pick(actions, |a| match a {
        Action::CloseAgent { conn, refused } => Some((*conn, refused.clone())),
        _ => None,
    })
}

fn registered(actions: &[Action]) -> Vec<ConnId> {
    pick(actions, |a| match a {
        Action::ToAgent {
            conn,
            command: AgentCommand::Registered { .. },
        } => Some(*conn),
        _ => None,
    })
}

#[test]
fn an_agent_past_agents_max_is_refused_naming_the_limit() {
    // Proves agents_max is a refusal the agent receives (AgentRefused naming the limit), not
    // Registered: for a new Register (a pending admission counts), and for a Reregister of an
    // id this term does not know. A known agent re-registering is not refused.
    let mut core = limited(|l| l.agents_max = 1);
    core.agent_register(AGENT, agent_info("a1"));
    assert!(matches!(&core.take_actions()[..], [Action::Persist { .. }]));
    core.agent_register(AGENT + 1, agent_info("a2"));
    let refused = Some("agents_max (1) reached: the master has 1 agents".to_string());
    assert_eq!(
        core.take_actions(),
        vec![Action::CloseAgent {
            conn: AGENT + 1,
            refused: refused.clone()
        }]
    );
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT }, Ok(()));
    assert_eq!(registered(&core.take_actions()), vec![AGENT]);
    core.agent_reregister(10, AGENT + 2, agent_info("a3"), Vec::new());
    assert_eq!(
        core.take_actions(),
        vec![Action::CloseAgent {
            conn: AGENT + 2,
            refused
        }]
    );
    core.agent_reregister(20, AGENT + 3, agent_info("a1"), Vec::new());
    let actions = core.take_actions();
    assert_eq!(registered(&actions), vec![AGENT + 3]);
    assert_eq!(core.sizes().0, 1);
}

#[test]
fn registry_agents_past_agents_max_are_not_loaded() {
    // Proves the registry cannot push the master past agents_max (a lowered limit): the extra
    // agent is not loaded, so its Reregister is refused naming the limit.
    let mut core = limited(|l| l.agents_max = 1);
    core.load_agent(0, agent_info("a1"));
    core.load_agent(0, agent_info("a2"));
    assert_eq!(core.sizes().0, 1);
    core.agent_reregister(10, AGENT, agent_info("a2"), Vec::new());
    assert_eq!(
        refusals(&core.take_actions()),
        vec![(
            AGENT,
            Some("agents_max (1) reached: the master has 1 agents".to_string())
        )]
    );
}

#[test]
fn a_framework_past_frameworks_max_gets_a_subscribe_error_naming_the_limit() {
    // Proves frameworks_max: a new framework past it (a pending one counts) is refused with
    // Unavailable naming the limit; nothing is persisted for it.
    let mut core = limited(|l| l.frameworks_max = 1);
    core.subscribe(0, FW, fw_info("fw", 0), true, false);
    assert!(matches!(&core.take_actions()[..], [Action::Persist { .. }]));
    core.subscribe(0, FW + 1, fw_info("fw2", 0), true, false);
    assert_eq!(
        core.take_actions(),
        vec![Action::SubscribeDone {
            conn: FW + 1,
            result: Err(CallError::Unavailable(
                "frameworks_max reached (1)".to_string()
            ))
        }]
    );
}

#[test]
fn a_launch_past_tasks_per_framework_max_is_a_task_error_naming_the_limit() {
    // Proves tasks_per_framework_max: the launch past it gets TASK_ERROR with that reason and
    // a message naming the limit; the launches before it run, its resources stay free.
    let mut c = config();
    c.allocator.limits.tasks_per_framework_max = 1;
    let mut core = MasterCore::new(c);
    core.subscribe(0, FW, fw_info("fw", 60_000), true, false);
    core.persisted(0, Completion::FrameworkAdmitted { conn: FW }, Ok(()));
    core.agent_register(AGENT, agent_info("a1"));
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT }, Ok(()));
    core.take_actions();
    let offer = offer_one(&mut core, 10);
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![
            Ok(launch("t1", "a1", 500, 1 << 20)),
            Ok(launch("t2", "a1", 500, 1 << 20)),
        ],
        Some(0),
    )
    .unwrap();
    let actions = core.take_actions();
    assert_eq!(runs(&actions), vec!["t1"]);
    let u = updates(&actions);
    assert_eq!(u.len(), 1);
    assert_eq!(
        (
            u[0].task_id.as_str(),
            u[0].state,
            u[0].reason.as_str(),
            u[0].message.as_str()
        ),
        (
            "t2",
            TaskState::Error,
            "tasks_per_framework_max",
            "tasks_per_framework_max (1) reached: framework fw already has 1 non-terminal tasks"
        )
    );
    assert_eq!(offer_one(&mut core, 30).resources.millicpus(), 1500);
}

#[test]
fn refuse_seconds_past_refuse_seconds_max_is_an_invalid_argument_naming_the_field() {
    // Proves refuse_seconds_max: a Decline (or Accept) filter above it is refused naming the
    // field and the limit, and the offer stays outstanding.
    let mut c = config();
    c.allocator.limits.refuse_seconds_max = 10;
    let mut core = MasterCore::new(c);
    core.subscribe(0, FW, fw_info("fw", 60_000), true, false);
    core.persisted(0, Completion::FrameworkAdmitted { conn: FW }, Ok(()));
    core.agent_register(AGENT, agent_info("a1"));
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT }, Ok(()));
    core.take_actions();
    let offer = offer_one(&mut core, 10);
    let err = Err(CallError::InvalidArgument(
        "filters.refuse_seconds: 11 s is above the limit of 10 s".to_string(),
    ));
    assert_eq!(
        core.decline(20, &fw(), vec![OfferRef::Known(offer.id)], Some(11_000)),
        err
    );
    assert_eq!(
        core.accept(
            20,
            &fw(),
            vec![OfferRef::Known(offer.id)],
            vec![],
            Some(11_000)
        ),
        err
    );
    assert!(core.allocator().offer(offer.id).is_some());
}

#[test]
fn an_offer_limit_is_a_named_skip_reason() {
    // Proves offers_outstanding_per_framework_max: past it the framework is offered nothing
    // more, and "why no offer?" answers with the limit.
    let mut c = config();
    c.allocator.limits.offers_outstanding_per_framework_max = 1;
    let mut core = MasterCore::new(c);
    core.subscribe(0, FW, fw_info("fw", 60_000), true, false);
    core.persisted(0, Completion::FrameworkAdmitted { conn: FW }, Ok(()));
    for (i, id) in ["a1", "a2"].into_iter().enumerate() {
        core.agent_register(AGENT + i as u64, agent_info(id));
        core.persisted(
            0,
            Completion::AgentAdmitted {
                conn: AGENT + i as u64,
            },
            Ok(()),
        );
    }
    core.take_actions();
    offer_one(&mut core, 10);
    assert_eq!(
        core.allocator().explain(&fw()).unwrap(),
        vec![(
            AgentId::parse("a2").unwrap(),
            crate::allocator::SkipReason::OfferLimit { max: 1 }
        )]
    );
}

// ---- input that does not add up is refused, naming the thing ---------------------------------

#[test]
fn a_reregistration_whose_tasks_do_not_fit_the_agent_is_refused() {
    // Proves a report the allocator could not hold refuses the agent naming the problem
    // (tasks overlapping, tasks outgrowing agent.resources) instead of registering it with a
    // warning; the agent stays unknown and nothing is offered from it.
    let mut core = MasterCore::new(config());
    core.load_framework(0, fw_info("fw", 60_000));
    core.load_agent(0, agent_info("a1"));
    let task = |id: &str, millicpus: u64, ports: &[(u16, u16)]| ReportedTask {
        framework: fw(),
        launch: TaskLaunch {
            resources: Resources::from_millicpus(
                millicpus,
                1 << 20,
                PortRanges::from_ranges(ports).unwrap(),
            ),
            ..launch(id, "a1", 0, 0)
        },
        state: TaskState::Running,
    };
    core.agent_reregister(
        10,
        AGENT,
        agent_info("a1"),
        vec![
            task("t1", 100, &[(31000, 31000)]),
            task("t2", 100, &[(31000, 31001)]),
        ],
    );
    assert_eq!(
        core.take_actions(),
        vec![Action::CloseAgent {
            conn: AGENT,
            refused: Some(
                "agent a1: reported task t2 of framework fw overlaps another reported task (ports: adding ports that are already present)".into()
            )
        }]
    );
    core.agent_reregister(11, AGENT + 1, agent_info("a1"), vec![task("t1", 2001, &[])]);
    assert_eq!(
        refusals(&core.take_actions()),
        vec![(
            AGENT + 1,
            Some("agent a1: its reported tasks use 2.001 cpus, 1 MiB, ports [], more than agent.resources (2 cpus, 2048 MiB, ports [31000-31009])".into())
        )]
    );
    assert!(core.task(&fw(), &TaskId::parse("t1").unwrap()).is_none());
    assert_eq!(core.allocator().agents_len(), 0);
}

#[test]
fn an_agent_whose_resources_overflow_the_cluster_total_is_refused() {
    // Proves an allocator refusal of an agent (the cluster total would overflow) reaches the
    // agent as AgentRefused naming it, not Registered plus a log line.
    let mut core = MasterCore::new(config());
    let huge = |id: &str| AgentInfo {
        resources: Resources::from_millicpus(1000, u64::MAX, PortRanges::new()),
        ..agent_info(id)
    };
    core.agent_register(AGENT, huge("a1"));
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT }, Ok(()));
    assert_eq!(registered(&core.take_actions()), vec![AGENT]);
    core.agent_register(AGENT + 1, huge("a2"));
    core.take_actions();
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT + 1 }, Ok(()));
    assert_eq!(
        core.take_actions(),
        vec![Action::CloseAgent {
            conn: AGENT + 1,
            refused: Some("agent a2: total: mem_bytes: the sum overflows".into())
        }]
    );
    assert_eq!(core.sizes().0, 1);
}

#[test]
fn a_status_update_from_an_agent_the_task_is_not_on_is_acknowledged_and_ignored() {
    // Proves a confused agent cannot finish another agent's task: its update is acknowledged
    // (so it stops retrying), not forwarded, and the task keeps running on its own agent.
    let mut core = cluster(60_000);
    core.agent_register(AGENT + 1, agent_info("a2"));
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT + 1 }, Ok(()));
    core.take_actions();
    let offer = offer_one_of(&mut core, 10, "a1");
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("t1", "a1", 500, 1 << 20))],
        Some(0),
    )
    .unwrap();
    core.take_actions();
    core.status_update(
        30,
        AGENT + 1,
        &fw(),
        agent_status("t1", TaskState::Failed, 7),
    );
    assert_eq!(
        core.take_actions(),
        vec![Action::ToAgent {
            conn: AGENT + 1,
            command: AgentCommand::Acknowledge {
                framework: fw(),
                task: "t1".into(),
                uuid: [7; 16]
            }
        }]
    );
    assert_eq!(
        core.task(&fw(), &TaskId::parse("t1").unwrap())
            .map(|t| t.status.state),
        Some(TaskState::Staging)
    );
}

/// Ticks and returns the offer on `agent` (others are declined without a filter).
fn offer_one_of(core: &mut MasterCore, now: u64, agent: &str) -> OfferOut {
    core.tick(now);
    let mut mine = None;
    for o in offers(&core.take_actions()) {
        if o.agent.as_str() == agent {
            mine = Some(o);
        } else {
            core.decline(now, &fw(), vec![OfferRef::Known(o.id)], Some(0))
                .unwrap();
        }
    }
    core.take_actions();
    mine.expect("an offer on the agent")
}

#[test]
fn a_reused_task_id_keeps_one_completed_entry() {
    // Proves the completed list holds one entry per task id: a task id reused after its task
    // ended replaces the old entry, so eviction never drops the newer one.
    let mut c = config();
    c.completed_tasks_max = 2;
    let mut core = MasterCore::new(c);
    core.subscribe(0, FW, fw_info("fw", 60_000), true, false);
    core.persisted(0, Completion::FrameworkAdmitted { conn: FW }, Ok(()));
    core.agent_register(AGENT, agent_info("a1"));
    core.persisted(0, Completion::AgentAdmitted { conn: AGENT }, Ok(()));
    core.take_actions();
    for (round, id) in ["t1", "t1", "t2"].into_iter().enumerate() {
        let now = 10 * (round as u64 + 1);
        let offer = offer_one(&mut core, now);
        core.accept(
            now,
            &fw(),
            vec![OfferRef::Known(offer.id)],
            vec![Ok(launch(id, "a1", 500, 1 << 20))],
            Some(0),
        )
        .unwrap();
        core.status_update(
            now,
            AGENT,
            &fw(),
            agent_status(id, TaskState::Finished, round as u8),
        );
        core.take_actions();
    }
    assert_eq!(core.completed.len(), 2);
    assert_eq!(core.completed_tasks.len(), 2);
    assert!(core.task(&fw(), &TaskId::parse("t1").unwrap()).is_some());
}

// ---- corrupted state trips check_invariants ---------------------------------------------------

/// `cluster` with task t1 of fw running on a1 (500 millicpus, 1 MiB) and an offer of the rest.
fn running() -> MasterCore {
    let mut core = cluster(60_000);
    let offer = offer_one(&mut core, 10);
    core.accept(
        20,
        &fw(),
        vec![OfferRef::Known(offer.id)],
        vec![Ok(launch("t1", "a1", 500, 1 << 20))],
        Some(0),
    )
    .unwrap();
    core.status_update(30, AGENT, &fw(), agent_status("t1", TaskState::Running, 1));
    offer_one(&mut core, 40);
    core.take_actions();
    core.check_invariants();
    core
}

#[test]
#[should_panic(expected = "master: 0 offers have an owner, the allocator has 1 outstanding")]
fn check_invariants_catches_an_offer_without_an_owner() {
    // Proves an outstanding offer missing from offer_owner (its rescind would be lost) trips it.
    let mut core = running();
    core.offer_owner.clear();
    core.check_invariants();
}

#[test]
#[should_panic(expected = "master: task t1 of framework fw is not listed by its agent a1")]
fn check_invariants_catches_a_task_its_agent_does_not_list() {
    // Proves a live task its agent does not list (so it would never be marked lost) trips it.
    let mut core = running();
    core.agents
        .get_mut(&AgentId::parse("a1").unwrap())
        .unwrap()
        .tasks
        .clear();
    core.check_invariants();
}

#[test]
#[should_panic(
    expected = "master: on agent a1, the allocator holds 0.5 cpus, 1 MiB, ports [] for framework fw, its tasks use 0.4 cpus"
)]
fn check_invariants_catches_used_resources_out_of_step_with_the_tasks() {
    // Proves the allocator's used resources must be the sum of the tasks: a task that grew
    // behind the allocator's back trips it.
    let mut core = running();
    let task = core
        .tasks
        .get_mut(&(fw(), TaskId::parse("t1").unwrap()))
        .unwrap();
    task.launch.resources = Resources::from_millicpus(400, 1 << 20, PortRanges::new());
    core.check_invariants();
}

#[test]
#[should_panic(
    expected = "master: framework fw is not suppressed in the allocator, but it asked to be and is connected"
)]
fn check_invariants_catches_a_suppress_the_allocator_never_heard() {
    // Proves the framework's suppress flag and the allocator's must agree.
    let mut core = running();
    core.frameworks.get_mut(&fw()).unwrap().suppressed = true;
    core.check_invariants();
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "master: the allocator holds 1 agents, the master has 0 reachable")]
fn every_event_checks_the_invariants_in_debug_builds() {
    // Proves the event entry points run check_invariants (debug builds): a corruption shows
    // up at the next event, here a heartbeat.
    let mut core = running();
    core.agents
        .get_mut(&AgentId::parse("a1").unwrap())
        .unwrap()
        .reachable = false;
    core.agent_heartbeat(50, AGENT);
}

// ---- random event sequences ------------------------------------------------------------------

mod random {
    use super::*;
    use proptest::prelude::*;

    const AGENTS: usize = 3;
    const FRAMEWORKS: usize = 2;

    #[derive(Clone, Debug)]
    pub(super) enum Op {
        Agent(usize),
        AgentGone(usize),
        Heartbeat(usize),
        Subscribe(usize, bool),
        FrameworkGone(usize),
        /// Time passes; with `true` every linked agent heartbeats first.
        Advance(u64, bool),
        Accept {
            pick: usize,
            tasks: u64,
            quarters: u64,
        },
        Decline(usize),
        Status {
            pick: usize,
            state: u8,
        },
        Kill(usize),
        Suppress(usize, bool),
        Teardown(usize),
        FailPersists,
    }

    pub(super) fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..AGENTS).prop_map(Op::Agent),
            1 => (0..AGENTS).prop_map(Op::AgentGone),
            2 => (0..AGENTS).prop_map(Op::Heartbeat),
            2 => (0..FRAMEWORKS, prop::bool::weighted(0.2)).prop_map(|(f, s)| Op::Subscribe(f, s)),
            1 => (0..FRAMEWORKS).prop_map(Op::FrameworkGone),
            6 => (0u64..1_500, prop::bool::weighted(0.8)).prop_map(|(ms, hb)| Op::Advance(ms, hb)),
            6 => (0usize..4, 0u64..4, 1u64..4).prop_map(|(pick, tasks, quarters)| Op::Accept { pick, tasks, quarters }),
            1 => (0usize..4).prop_map(Op::Decline),
            3 => (0usize..8, 0u8..4).prop_map(|(pick, state)| Op::Status { pick, state }),
            1 => (0usize..8).prop_map(Op::Kill),
            1 => (0..FRAMEWORKS, any::<bool>()).prop_map(|(f, s)| Op::Suppress(f, s)),
            1 => (0..FRAMEWORKS).prop_map(Op::Teardown),
            1 => Just(Op::FailPersists),
        ]
    }

    /// What a driver would know: links by agent and framework, the next id and link number.
    #[derive(Default)]
    pub(super) struct World {
        now: u64,
        next_conn: ConnId,
        next_task: u64,
        agent_conns: BTreeMap<usize, ConnId>,
        fw_conns: BTreeMap<usize, ConnId>,
        conn_agent: BTreeMap<ConnId, usize>,
        conn_fw: BTreeMap<ConnId, usize>,
        fail_persists: bool,
    }

    fn agent_id(i: usize) -> AgentId {
        AgentId::parse(&format!("a{i}")).unwrap()
    }

    fn fw_id(f: usize) -> FrameworkId {
        FrameworkId::parse(&format!("f{f}")).unwrap()
    }

    impl World {
        fn conn(&mut self) -> ConnId {
            self.next_conn += 1;
            self.next_conn
        }

        /// Runs the driver's side of the actions: registry writes complete (or fail), links
        /// open and close.
        fn drain(&mut self, core: &mut MasterCore) {
            loop {
                let actions = core.take_actions();
                if actions.is_empty() {
                    return;
                }
                for a in actions {
                    match a {
                        Action::Persist { then, .. } => {
                            let result = if self.fail_persists {
                                Err("coord is down".to_string())
                            } else {
                                Ok(())
                            };
                            core.persisted(self.now, then, result);
                        }
                        Action::ToAgent {
                            conn,
                            command: AgentCommand::Registered { .. },
                        } => {
                            if let Some(&i) = self.conn_agent.get(&conn) {
                                self.agent_conns.insert(i, conn);
                            }
                        }
                        Action::CloseAgent { conn, .. } => {
                            if let Some(i) = self.conn_agent.remove(&conn)
                                && self.agent_conns.get(&i) == Some(&conn)
                            {
                                self.agent_conns.remove(&i);
                            }
                        }
                        Action::SubscribeDone { conn, result } => {
                            if result.is_err()
                                && let Some(f) = self.conn_fw.remove(&conn)
                            {
                                self.fw_conns.remove(&f);
                            }
                        }
                        Action::CloseFramework { conn, .. } => {
                            if let Some(f) = self.conn_fw.remove(&conn)
                                && self.fw_conns.get(&f) == Some(&conn)
                            {
                                self.fw_conns.remove(&f);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }

        pub(super) fn apply(&mut self, core: &mut MasterCore, op: Op) {
            self.fail_persists = false;
            let now = self.now;
            match op {
                Op::Agent(i) => {
                    let conn = self.conn();
                    self.conn_agent.insert(conn, i);
                    let info = agent_info(&format!("a{i}"));
                    // What the agent runs: the tasks the master has there (its word wins).
                    let reported: Vec<ReportedTask> = core
                        .tasks
                        .values()
                        .filter(|t| t.launch.agent == info.id)
                        .map(|t| ReportedTask {
                            framework: t.framework.clone(),
                            launch: t.launch.clone(),
                            state: TaskState::Running,
                        })
                        .collect();
                    if core.agents.contains_key(&info.id) {
                        core.agent_reregister(now, conn, info, reported);
                    } else {
                        core.agent_register(conn, info);
                    }
                }
                Op::AgentGone(i) => {
                    if let Some(conn) = self.agent_conns.remove(&i) {
                        self.conn_agent.remove(&conn);
                        core.agent_disconnected(conn);
                    }
                }
                Op::Heartbeat(i) => {
                    if let Some(&conn) = self.agent_conns.get(&i) {
                        core.agent_heartbeat(now, conn);
                    }
                }
                Op::Subscribe(f, suppressed) => {
                    let conn = self.conn();
                    let known = core.frameworks.contains_key(&fw_id(f));
                    if let Some(old) = self.fw_conns.insert(f, conn) {
                        self.conn_fw.remove(&old);
                    }
                    self.conn_fw.insert(conn, f);
                    let info = FrameworkInfo {
                        failover_timeout_ms: 3_000 * f as u64,
                        ..fw_info(&format!("f{f}"), 0)
                    };
                    core.subscribe(now, conn, info, !known, suppressed);
                }
                Op::FrameworkGone(f) => {
                    if let Some(conn) = self.fw_conns.remove(&f) {
                        self.conn_fw.remove(&conn);
                        core.framework_disconnected(now, conn);
                    }
                }
                Op::Advance(ms, heartbeats) => {
                    if heartbeats {
                        for &conn in self.agent_conns.values() {
                            core.agent_heartbeat(now, conn);
                        }
                    }
                    self.now += ms;
                    core.tick(self.now);
                }
                Op::Accept {
                    pick,
                    tasks,
                    quarters,
                } => {
                    let offers: Vec<crate::allocator::Offer> =
                        core.allocator().offers().cloned().collect();
                    if let Some(o) = offers.get(pick % offers.len().max(1)) {
                        let mut launches = Vec::new();
                        for _ in 0..tasks {
                            self.next_task += 1;
                            launches.push(Ok(launch(
                                &format!("t{}", self.next_task),
                                o.agent.as_str(),
                                o.resources.millicpus() * quarters / 8,
                                o.resources.mem_bytes() * quarters / 8,
                            )));
                        }
                        let _ = core.accept(
                            now,
                            &o.framework,
                            vec![OfferRef::Known(o.id)],
                            launches,
                            Some(1_000),
                        );
                    }
                }
                Op::Decline(pick) => {
                    let offers: Vec<crate::allocator::Offer> =
                        core.allocator().offers().cloned().collect();
                    if let Some(o) = offers.get(pick % offers.len().max(1)) {
                        let _ =
                            core.decline(now, &o.framework, vec![OfferRef::Known(o.id)], Some(500));
                    }
                }
                Op::Status { pick, state } => {
                    let tasks: Vec<Task> = core.tasks.values().cloned().collect();
                    if let Some(t) = tasks.get(pick % tasks.len().max(1)) {
                        let agent = (0..AGENTS).find(|&i| agent_id(i) == t.launch.agent);
                        if let Some(&conn) = agent.and_then(|i| self.agent_conns.get(&i)) {
                            let state = [
                                TaskState::Running,
                                TaskState::Finished,
                                TaskState::Failed,
                                TaskState::Killed,
                            ][usize::from(state)];
                            let mut s = agent_status(t.launch.id.as_str(), state, 1);
                            s.agent_id = Some(t.launch.agent.clone());
                            core.status_update(now, conn, &t.framework, s);
                        }
                    }
                }
                Op::Kill(pick) => {
                    let tasks: Vec<Task> = core.tasks.values().cloned().collect();
                    if let Some(t) = tasks.get(pick % tasks.len().max(1)) {
                        let _ = core.kill(&t.framework, t.launch.id.as_str(), 0);
                    }
                }
                Op::Suppress(f, on) => {
                    let _ = if on {
                        core.suppress(&fw_id(f))
                    } else {
                        core.revive(&fw_id(f), true)
                    };
                }
                Op::Teardown(f) => {
                    let _ = core.teardown(&fw_id(f));
                }
                Op::FailPersists => self.fail_persists = true,
            }
            self.drain(core);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn random_events_keep_every_invariant(ops in prop::collection::vec(op(), 1..200)) {
            // Proves, over random sequences of agents coming and going (re-registering with
            // what they run, missing heartbeats), frameworks subscribing, failing over and
            // tearing down, launches, declines, status updates, kills and failed registry
            // writes, that check_invariants holds after every event.
            let mut c = config();
            c.agent_unreachable_after_ms = 3_000;
            c.framework_heartbeat_interval_ms = 2_000;
            c.allocator.offer_timeout_ms = Some(2_000);
            c.completed_tasks_max = 4;
            c.allocator.limits.agents_max = AGENTS - 1;
            c.allocator.limits.tasks_per_framework_max = 3;
            let mut core = MasterCore::new(c);
            let mut world = World::default();
            let start = [Op::Agent(0), Op::Agent(1), Op::Subscribe(0, false), Op::Subscribe(1, false)];
            for op in start.into_iter().chain(ops) {
                world.apply(&mut core, op);
                core.check_invariants();
            }
        }
    }
}
