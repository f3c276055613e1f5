//! The agent daemon against a master played by the test: a small in-test `AgentApi` server that
//! speaks the master's side of the protocol (answers the hello, records what the agent sends, and
//! lets the test send RunTask / KillTask / Acknowledgement / ShutdownFramework, redirect, refuse or
//! drop the stream). Supervisors are real processes (`drover-supervise-test`) running real tasks.
//!
//! Every test uses its own master port, work dir and cgroup parent; on drop it stops the agent,
//! kills every supervisor and task group it finds in the work dir and removes its cgroups.
#![allow(
    clippy::print_stderr,
    reason = "test diagnostics; the harness captures them"
)]

include!("support/daemon_harness.rs");

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_heartbeats_with_its_resources() {
    // Proves the first hello is Register (no id) with the agent's resources, address, hostname
    // and attributes, the id from Registered is persisted, and heartbeats carry it.
    let mut h = Harness::new().await;
    h.start_agent();
    let (conn, hello) = h.master.wait_hello(0).await;
    let agent_message::Message::Register(r) = hello else {
        panic!("expected Register, got {hello:?}");
    };
    let info = r.agent.unwrap();
    assert_eq!(info.id, "");
    assert_eq!(info.hostname, "test-host");
    assert_eq!(info.address, h.listen);
    assert_eq!(info.attributes.get("rack").map(String::as_str), Some("r1"));
    let res = info.resources.unwrap();
    assert_eq!(res.millicpus, 2000);
    assert_eq!(res.mem_bytes, 1024 * MIB);
    assert_eq!(
        res.ports,
        vec![v1::PortRange {
            begin: 31000,
            end: 31009
        }]
    );
    let beats = h
        .master
        .wait_for("3 heartbeats", |hist| {
            let ids: Vec<String> = hist
                .iter()
                .filter(|s| s.conn == conn)
                .filter_map(|s| match &s.msg.message {
                    Some(agent_message::Message::Heartbeat(hb)) => Some(hb.agent_id.clone()),
                    _ => None,
                })
                .collect();
            (ids.len() >= 3).then_some(ids)
        })
        .await;
    assert!(
        beats
            .iter()
            .all(|id| id == "agent-0" || id.starts_with("agent-"))
    );
    let saved = fs::read_to_string(h.work_dir().join("agent.json")).unwrap();
    assert!(saved.contains(&beats[0]), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_retry_ack_and_kill_leave_nothing_behind() {
    // Proves RunTask → TASK_RUNNING (16-byte uuid, SOURCE_AGENT), resent until acknowledged and
    // not after; KillTask → TASK_KILLED, and the task's whole process group is gone.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    h.master
        .send(run_task(
            "fw-1",
            task(&id, "sleeper", argv(&["sleep", "30"])),
        ))
        .await;
    let running = h
        .master
        .wait_update("fw-1", "sleeper", v1::TaskState::TaskRunning)
        .await;
    assert_eq!(running.source, v1::StatusSource::SourceAgent as i32);
    assert_eq!(running.agent_id, id);
    let uuid = uuid_of(&running);
    let pid = h.task_pid("fw-1", "sleeper").await;
    assert!(alive(pid));
    // Unacknowledged: it comes again with the same uuid.
    h.master
        .wait_for("RUNNING resent", |hist| {
            (updates(hist).filter(|(_, _, s)| s.uuid == uuid).count() >= 2).then_some(())
        })
        .await;
    h.master.send(ack("fw-1", &running)).await;
    // After the ack it is no longer resent. Resends come every 100..400 ms; heartbeats every
    // 100 ms. Two heartbeats after the ack, at most one resend can still have crossed it; over the
    // next 20 heartbeats (five resend intervals) the count of copies must not grow.
    let at_ack = h.master.history.len();
    let copies = h
        .master
        .wait_for("2 heartbeats after the ack", |hist| {
            (heartbeats(&hist[at_ack..]) >= 2)
                .then(|| updates(hist).filter(|(_, _, s)| s.uuid == uuid).count())
        })
        .await;
    let then = h.master.history.len();
    h.master
        .wait_for("20 more heartbeats", |hist| {
            (heartbeats(&hist[then..]) >= 20).then_some(())
        })
        .await;
    assert_eq!(
        updates(&h.master.history)
            .filter(|(_, _, s)| s.uuid == uuid)
            .count(),
        copies,
        "TASK_RUNNING was resent after its acknowledgement"
    );

    h.master.send(kill_task("fw-1", "sleeper", 0)).await;
    let killed = h
        .master
        .wait_update("fw-1", "sleeper", v1::TaskState::TaskKilled)
        .await;
    assert_eq!(killed.reason, "killed");
    assert_ne!(uuid_of(&killed), uuid);
    assert!(!alive(pid), "task {pid} survived its kill");
    assert!(
        group_members(pid).is_empty(),
        "processes of group {pid} survived"
    );
    h.master.send(ack("fw-1", &killed)).await;
    let record = h.work_dir().join("tasks/fw-1/sleeper.json");
    wait_until("the task record to go", || !record.exists()).await;
    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_reported_with_code_and_a_missing_binary_with_its_reason() {
    // Proves exit 3 → TASK_FAILED exit_code 3, exit 0 → TASK_FINISHED, a binary that does not
    // exist → TASK_FAILED with reason failed_to_start and the OS error in the message.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    h.master
        .send(run_task("fw", task(&id, "three", shell("exit 3"))))
        .await;
    h.master
        .send(run_task("fw", task(&id, "zero", argv(&["true"]))))
        .await;
    h.master
        .send(run_task(
            "fw",
            task(&id, "nobin", argv(&["/nonexistent/drover-test-binary"])),
        ))
        .await;
    // Each task's updates come one at a time: acknowledge RUNNING to release the terminal one.
    for t in ["three", "zero"] {
        let r = h
            .master
            .wait_update("fw", t, v1::TaskState::TaskRunning)
            .await;
        h.master.send(ack("fw", &r)).await;
    }
    let failed = h
        .master
        .wait_update("fw", "three", v1::TaskState::TaskFailed)
        .await;
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.signal, None);
    let finished = h
        .master
        .wait_update("fw", "zero", v1::TaskState::TaskFinished)
        .await;
    assert_eq!(finished.exit_code, Some(0));
    let nobin = h
        .master
        .wait_update("fw", "nobin", v1::TaskState::TaskFailed)
        .await;
    assert_eq!(nobin.reason, "failed_to_start");
    assert!(nobin.message.contains("No such file"), "{}", nobin.message);
    assert!(
        !updates(&h.master.history)
            .any(|(_, _, s)| s.task_id == "nobin" && s.state == v1::TaskState::TaskRunning as i32),
        "a task that never started was reported RUNNING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tasks_and_unknown_kills_are_answered() {
    // Proves a TaskInfo the agent will not run gets TASK_ERROR naming the field (and runs nothing),
    // and a kill for a task the agent does not know gets TASK_LOST "unknown task".
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    let mut both = task(&id, "both", argv(&["true"]));
    both.command.as_mut().unwrap().shell = "true".into();
    let mut port = task(&id, "port", argv(&["true"]));
    port.resources.as_mut().unwrap().ports = vec![v1::PortRange {
        begin: 40000,
        end: 40000,
    }];
    let wrong_agent = task("someone-else", "wrong", argv(&["true"]));
    let mut no_res = task(&id, "nores", argv(&["true"]));
    no_res.resources = None;
    for t in [both, port, wrong_agent, no_res] {
        h.master.send(run_task("fw", t)).await;
    }
    for (t, field) in [
        ("both", "task.command"),
        ("port", "task.resources.ports"),
        ("wrong", "task.agent_id"),
        ("nores", "task.resources"),
    ] {
        let e = h
            .master
            .wait_update("fw", t, v1::TaskState::TaskError)
            .await;
        assert!(
            e.message.starts_with(&format!("invalid {field}:")),
            "{t}: {}",
            e.message
        );
        assert_eq!(e.reason, "invalid_task");
    }
    assert!(h.every_run().is_empty(), "a refused task got a sandbox");
    h.master.send(kill_task("fw", "ghost", 0)).await;
    let lost = h
        .master
        .wait_update("fw", "ghost", v1::TaskState::TaskLost)
        .await;
    assert_eq!(lost.message, "unknown task");
    assert_eq!(uuid_of(&lost).len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_frameworks_may_use_the_same_task_id() {
    // Proves (framework, task) is the key: same task id in two frameworks runs twice in separate
    // sandboxes, and killing one leaves the other running; ShutdownFramework kills all of its tasks.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    for fw in ["fw-a", "fw-b"] {
        h.master
            .send(run_task(fw, task(&id, "web.1", argv(&["sleep", "30"]))))
            .await;
    }
    h.master
        .send(run_task("fw-b", task(&id, "web.2", argv(&["sleep", "30"]))))
        .await;
    let ra = h
        .master
        .wait_update("fw-a", "web.1", v1::TaskState::TaskRunning)
        .await;
    let rb = h
        .master
        .wait_update("fw-b", "web.1", v1::TaskState::TaskRunning)
        .await;
    let rb2 = h
        .master
        .wait_update("fw-b", "web.2", v1::TaskState::TaskRunning)
        .await;
    for (fw, s) in [("fw-a", &ra), ("fw-b", &rb), ("fw-b", &rb2)] {
        h.master.send(ack(fw, s)).await;
    }
    let a = h.sandbox("fw-a", "web.1").await;
    let b = h.sandbox("fw-b", "web.1").await;
    assert_ne!(a.dir(), b.dir());
    let pa = h.task_pid("fw-a", "web.1").await;
    let pb = h.task_pid("fw-b", "web.1").await;
    let pb2 = h.task_pid("fw-b", "web.2").await;
    h.master.send(kill_task("fw-a", "web.1", 0)).await;
    h.master
        .wait_update("fw-a", "web.1", v1::TaskState::TaskKilled)
        .await;
    assert!(!alive(pa));
    assert!(alive(pb), "fw-b's web.1 was killed with fw-a's");
    h.master
        .send(master_message::Message::ShutdownFramework(
            v1::ShutdownFramework {
                framework_id: "fw-b".into(),
            },
        ))
        .await;
    h.master
        .wait_update("fw-b", "web.1", v1::TaskState::TaskKilled)
        .await;
    h.master
        .wait_update("fw-b", "web.2", v1::TaskState::TaskKilled)
        .await;
    assert!(!alive(pb) && !alive(pb2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_grace_shorter_than_the_tasks_is_honoured() {
    // Proves KillTask's kill_grace_period_ms applies when shorter than the task's own: a task that
    // ignores SIGTERM with a 10-minute grace is SIGKILLed after ~the requested 300 ms.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    let mut t = task(
        &id,
        "stubborn",
        shell("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
    );
    t.kill_grace_period_ms = 600_000;
    h.master.send(run_task("fw", t)).await;
    let r = h
        .master
        .wait_update("fw", "stubborn", v1::TaskState::TaskRunning)
        .await;
    h.master.send(ack("fw", &r)).await;
    let sandbox = h.sandbox("fw", "stubborn").await;
    wait_until("ready", || {
        fs::read_to_string(sandbox.stdout_path()).is_ok_and(|s| s.contains("ready"))
    })
    .await;
    let pid = h.task_pid("fw", "stubborn").await;
    h.master.send(kill_task("fw", "stubborn", 300)).await;
    let killed = h
        .master
        .wait_update("fw", "stubborn", v1::TaskState::TaskKilled)
        .await;
    assert!(killed.message.contains("SIGKILL"), "{}", killed.message);
    assert!(!alive(pid));
    let exit = sandbox.read_exit().unwrap().expect("exit.json");
    assert!(exit.kill_escalated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_re_adopts_running_tasks_and_reports_those_that_exited_meanwhile() {
    // Proves recovery: after an agent restart on the same work dir it re-registers with its id
    // (Reregister lists its tasks and frameworks), a task still running is left running and not
    // reported again, a task that exited while the agent was down is reported with its real exit
    // code, and an update that was never acknowledged is resent with its uuid.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    h.master
        .send(run_task("fw", task(&id, "long", argv(&["sleep", "30"]))))
        .await;
    h.master
        .send(run_task(
            "fw",
            task(
                &id,
                "gated",
                shell("while [ ! -e go ]; do sleep 0.02; done; exit 7"),
            ),
        ))
        .await;
    h.master
        .send(run_task(
            "fw-x",
            task(&id, "unacked", argv(&["sleep", "30"])),
        ))
        .await;
    let long = h
        .master
        .wait_update("fw", "long", v1::TaskState::TaskRunning)
        .await;
    let gated = h
        .master
        .wait_update("fw", "gated", v1::TaskState::TaskRunning)
        .await;
    let unacked = h
        .master
        .wait_update("fw-x", "unacked", v1::TaskState::TaskRunning)
        .await;
    h.master.send(ack("fw", &long)).await;
    h.master.send(ack("fw", &gated)).await;
    let long_pid = h.task_pid("fw", "long").await;
    let gated_box = h.sandbox("fw", "gated").await;
    h.wait_ack_checkpointed("fw", "long").await;
    h.wait_ack_checkpointed("fw", "gated").await;
    h.stop_agent().await;
    let conns_before = h.master.conns();

    // While the agent is down, "gated" exits 7.
    fs::write(gated_box.task_dir().join("go"), b"").unwrap();
    wait_until("gated's exit.json", || {
        gated_box.read_exit().ok().flatten().is_some()
    })
    .await;

    h.start_agent();
    let (conn, hello) = h.master.wait_hello(conns_before).await;
    let agent_message::Message::Reregister(rr) = hello else {
        panic!("expected Reregister, got {hello:?}");
    };
    assert_eq!(rr.agent.as_ref().unwrap().id, id);
    let listed: BTreeMap<(String, String), i32> = rr
        .tasks
        .iter()
        .map(|t| {
            (
                (
                    t.framework_id.clone(),
                    t.task.as_ref().unwrap().task_id.clone(),
                ),
                t.state,
            )
        })
        .collect();
    let running = v1::TaskState::TaskRunning as i32;
    assert_eq!(listed.get(&("fw".into(), "long".into())), Some(&running));
    assert_eq!(
        listed.get(&("fw-x".into(), "unacked".into())),
        Some(&running)
    );
    assert!(listed.contains_key(&("fw".into(), "gated".into())));
    let mut fws: Vec<&str> = rr.frameworks.iter().map(|f| f.id.as_str()).collect();
    fws.sort();
    assert_eq!(fws, vec!["fw", "fw-x"]);
    let listed_long = rr
        .tasks
        .iter()
        .find(|t| t.task.as_ref().unwrap().task_id == "long")
        .unwrap();
    assert_eq!(
        listed_long
            .task
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap()
            .argv,
        vec!["sleep", "30"]
    );

    let failed = h
        .master
        .wait_for("gated's TASK_FAILED after the restart", |hist| {
            updates(hist)
                .find(|(c, _, s)| {
                    *c == conn
                        && s.task_id == "gated"
                        && s.state == v1::TaskState::TaskFailed as i32
                })
                .map(|(_, _, s)| s.clone())
        })
        .await;
    assert_eq!(failed.exit_code, Some(7));
    let resent = h
        .master
        .wait_for("the unacknowledged RUNNING resent", |hist| {
            updates(hist)
                .find(|(c, _, s)| *c == conn && s.task_id == "unacked")
                .map(|(_, _, s)| s.clone())
        })
        .await;
    assert_eq!(
        resent.uuid, unacked.uuid,
        "a new update instead of the checkpointed one"
    );
    assert!(
        alive(long_pid),
        "the running task did not survive the agent restart"
    );
    assert!(
        !updates(&h.master.history).any(|(c, _, s)| c == conn && s.task_id == "long"),
        "the re-adopted task was reported again"
    );
    // The re-adopted task is still the agent's to kill.
    h.master.send(kill_task("fw", "long", 0)).await;
    h.master
        .wait_update("fw", "long", v1::TaskState::TaskKilled)
        .await;
    assert!(!alive(long_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_adopted_task_that_ends_later_is_reported() {
    // Proves a task whose supervisor is no longer the agent's child is still watched: it exits
    // after the restart and its end is reported with the exit code.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    h.master
        .send(run_task(
            "fw",
            task(
                &id,
                "later",
                shell("while [ ! -e go ]; do sleep 0.02; done; exit 5"),
            ),
        ))
        .await;
    let r = h
        .master
        .wait_update("fw", "later", v1::TaskState::TaskRunning)
        .await;
    h.master.send(ack("fw", &r)).await;
    let sandbox = h.sandbox("fw", "later").await;
    h.wait_ack_checkpointed("fw", "later").await;
    h.stop_agent().await;
    let before = h.master.conns();
    h.start_agent();
    h.master.wait_hello(before).await;
    fs::write(sandbox.task_dir().join("go"), b"").unwrap();
    let failed = h
        .master
        .wait_update("fw", "later", v1::TaskState::TaskFailed)
        .await;
    assert_eq!(failed.exit_code, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_leader_redirects_and_reregisters_after_a_failover() {
    // Proves leader discovery: a non-leading master's UNAVAILABLE + drover-leader is followed; when
    // the leader's stream ends with UNAVAILABLE naming another leader, the agent re-registers there
    // with the same id and its tasks, and resends what is unacknowledged.
    let mut h = Harness::new().await;
    let leader2 = Master::start(Mode::Lead {
        new_agent_id: "unused".into(),
    })
    .await;
    let follower = Master::start(Mode::Redirect {
        leader: h.master.addr.clone(),
    })
    .await;
    // The follower is listed first: the agent must be redirected to the leader.
    let config = h.config(vec![follower.addr.clone(), h.master.addr.clone()]);
    h.start_agent_with(config);
    let (_, hello) = h.master.wait_hello(0).await;
    assert!(matches!(hello, agent_message::Message::Register(_)));
    let id = match h.master.control.lock().unwrap().mode.clone() {
        Mode::Lead { new_agent_id } => new_agent_id,
        _ => unreachable!(),
    };
    h.master
        .send(run_task("fw", task(&id, "t", argv(&["sleep", "30"]))))
        .await;
    let running = h
        .master
        .wait_update("fw", "t", v1::TaskState::TaskRunning)
        .await;

    // Failover: the old leader ends the stream naming leader2 and redirects from now on.
    let mut leader2 = leader2;
    h.master.set_mode(Mode::Redirect {
        leader: leader2.addr.clone(),
    });
    let mut s = Status::unavailable("lost leadership");
    s.metadata_mut().insert(
        drover_proto::LEADER_METADATA_KEY,
        leader2.addr.parse().unwrap(),
    );
    h.master.end_stream(s).await;
    let (conn, hello) = leader2.wait_hello(0).await;
    let agent_message::Message::Reregister(rr) = hello else {
        panic!("expected Reregister, got {hello:?}");
    };
    assert_eq!(rr.agent.unwrap().id, id);
    assert_eq!(rr.tasks.len(), 1);
    assert_eq!(rr.tasks[0].state, v1::TaskState::TaskRunning as i32);
    let resent = leader2
        .wait_for("RUNNING resent to the new leader", |hist| {
            updates(hist)
                .find(|(c, _, s)| *c == conn && s.task_id == "t")
                .map(|(_, _, s)| s.clone())
        })
        .await;
    assert_eq!(resent.uuid, running.uuid);
    leader2.send(ack("fw", &resent)).await;
    leader2.send(kill_task("fw", "t", 0)).await;
    leader2
        .wait_update("fw", "t", v1::TaskState::TaskKilled)
        .await;
    drop(follower);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_agent_stops_with_the_masters_message() {
    // Proves AgentRefused ends the agent with an error carrying the master's message.
    let mut h = Harness::new().await;
    h.master.set_mode(Mode::Refuse {
        message: "agent id agent-9 was removed".into(),
    });
    h.start_agent();
    let a = h.agent.take().unwrap();
    let result = tokio::time::timeout(WAIT_DEADLINE, a.handle)
        .await
        .expect("agent stops")
        .unwrap();
    match result {
        Err(AgentError::Link(LinkError::Refused { message, .. })) => {
            assert_eq!(message, "agent id agent-9 was removed")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_memory_limit_is_failed_with_reason_memory_limit() {
    // Proves OOM reporting: under cgroups a task using more than its memory is TASK_FAILED with
    // reason memory_limit and a message naming the limit, and the whole task ends even though the
    // kernel killed only one of its processes (the shell goes on to `sleep`). Under rlimits-only
    // hosts the allocation just fails and the task keeps running until killed.
    let mut h = Harness::new().await;
    let id = h.registered_agent().await;
    let mut t = task(
        &id,
        "hog",
        shell("head -c 300M /dev/zero | tail > /dev/null; sleep 600"),
    );
    t.resources.as_mut().unwrap().mem_bytes = 32 * MIB;
    h.master.send(run_task("fw", t)).await;
    let r = h
        .master
        .wait_update("fw", "hog", v1::TaskState::TaskRunning)
        .await;
    h.master.send(ack("fw", &r)).await;
    let pid = h.task_pid("fw", "hog").await;
    if h.isolation.kind() == IsolationKind::Rlimits {
        h.master.send(kill_task("fw", "hog", 0)).await;
        h.master
            .wait_update("fw", "hog", v1::TaskState::TaskKilled)
            .await;
    } else {
        let failed = h
            .master
            .wait_update("fw", "hog", v1::TaskState::TaskFailed)
            .await;
        assert_eq!(failed.reason, "memory_limit", "{failed:?}");
        assert!(failed.message.contains("32 MiB"), "{}", failed.message);
    }
    assert!(
        group_members(pid).is_empty(),
        "processes of the hog survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_use_the_same_work_dir() {
    // Proves the work dir lock: a second agent on a directory in use fails at once, naming it.
    let mut h = Harness::new().await;
    h.registered_agent().await;
    let config = h.config(vec![h.master.addr.clone()]);
    let err = daemon::run(config, std::future::pending())
        .await
        .expect_err("a second agent on the same work dir");
    assert!(err.to_string().contains("in use by another agent"), "{err}");
    assert!(Path::new(&h.work_dir()).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_shows_in_ps_as_drover_supervise() {
    // Proves the agent starts a supervisor with the command's `arg0` as its argv[0]: with the
    // production name and word, /proc/PID/cmdline reads `drover supervise <run dir>/spec.json`,
    // not the path of the image it was started from.
    let mut h = Harness::new().await;
    let mut config = h.config(vec![h.master.addr.clone()]);
    config.supervisor.arg0 = Some(daemon::SUPERVISOR_ARG0.into());
    config.supervisor.args = vec!["supervise".into()];
    h.start_agent_with(config);
    let (_, hello) = h.master.wait_hello(0).await;
    assert!(matches!(hello, agent_message::Message::Register(_)));
    let id = match h.master.control.lock().unwrap().mode.clone() {
        Mode::Lead { new_agent_id } => new_agent_id,
        other => panic!("master mode {other:?}"),
    };
    h.master
        .send(run_task("fw", task(&id, "named", argv(&["sleep", "30"]))))
        .await;
    let running = h
        .master
        .wait_update("fw", "named", v1::TaskState::TaskRunning)
        .await;
    let sandbox = h.sandbox("fw", "named").await;
    let record = sandbox
        .read_supervisor()
        .unwrap()
        .expect("a running task has a supervisor record");
    let cmdline = fs::read(format!("/proc/{}/cmdline", record.supervisor_pid)).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv.len(), 3, "{argv:?}");
    assert_eq!(argv[..2], ["drover", "supervise"], "{argv:?}");
    assert!(argv[2].ends_with("/spec.json"), "{argv:?}");
    // One update in flight per task: TASK_KILLED goes out once RUNNING is acknowledged.
    h.master.send(ack("fw", &running)).await;
    h.master.send(kill_task("fw", "named", 0)).await;
    h.master
        .wait_update("fw", "named", v1::TaskState::TaskKilled)
        .await;
}
