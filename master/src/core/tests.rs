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
