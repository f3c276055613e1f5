//! Tasks run as unprivileged users, end to end: a real `drover master`, a real `drover agent`
//! (root, as in production, so it switches users) and a test framework on the scheduler API.
//! A task run as `nobody` probes what it may read and write and prints each result; the test
//! checks the task's own output, read back through `drover logs` (the agent's file API reads the
//! task-owned files as root). Tests that need the agent to be root say so and skip otherwise.

use crate::scheduler::{MIB, SMALL_AGENT, TestFramework, WAIT, is, shell_task, start_cluster};
use crate::util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::task_user::{SystemUsers, UserEntry, UserLookup};
use drover_proto::v1;
use util::Proc;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn user(name: &str) -> UserEntry {
    SystemUsers
        .by_name(name)
        .expect("passwd lookup")
        .unwrap_or_else(|| panic!("this test needs a user {name} on the machine"))
}

/// The task directory of `task`'s only run under `work` (framework `fw`), once it exists.
fn task_sandbox(work: &Path, fw: &str, task: &str) -> PathBuf {
    let dir = work
        .join("frameworks")
        .join(fw)
        .join("sandboxes")
        .join(task);
    util::wait_for(&format!("the sandbox of {task}"), WAIT, || {
        let runs: Vec<PathBuf> = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path().join("sandbox"))
            .collect();
        (runs.len() == 1 && runs[0].is_dir()).then(|| runs[0].clone())
    })
}

/// Prints `NAME: allowed`, `NAME: permission denied` or `NAME: failed: <error>` for each attempt
/// (`try NAME 'COMMAND'`), so an attempt that fails for another reason (a wrong path) shows.
const PROBE_PRELUDE: &str = r#"
try() {
  if out=$(eval "$2" 2>&1); then echo "$1: allowed"
  else case "$out" in *"ermission denied"*) echo "$1: permission denied";; *) echo "$1: failed: $out";; esac
  fi
}
echo "uid $(id -u)"
"#;

/// What the probing task tries, and what a task run as `nobody` must get.
const PROBES: &[(&str, &str, &str)] = &[
    ("root-home", r#"ls /root"#, "permission denied"),
    ("work-dir", r#"ls "$WORK""#, "permission denied"),
    ("agent-id", r#"cat "$WORK/agent.json""#, "permission denied"),
    (
        "checkpoints",
        r#"ls "$WORK/status_updates""#,
        "permission denied",
    ),
    (
        "checkpoint",
        r#"cat "$WORK/status_updates/$FW/neighbour.updates""#,
        "permission denied",
    ),
    (
        "task-record",
        r#"cat "$WORK/tasks/$FW/neighbour.json""#,
        "permission denied",
    ),
    (
        "sandboxes",
        r#"ls "$WORK/frameworks/$FW/sandboxes""#,
        "permission denied",
    ),
    (
        "neighbour-file",
        r#"cat "$NEIGHBOUR/secret""#,
        "permission denied",
    ),
    ("neighbour-dir", r#"ls "$NEIGHBOUR""#, "permission denied"),
    (
        "own-records",
        r#"cat ../supervisor.json"#,
        "permission denied",
    ),
    ("own-spec", r#"cat ../spec.json"#, "permission denied"),
    (
        "own-sandbox",
        r#"echo written > mine && cat mine"#,
        "allowed",
    ),
    (
        "own-sandbox-by-path",
        r#"echo again >> "$DROVER_SANDBOX/mine""#,
        "allowed",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_as_nobody_cannot_read_root_the_work_dir_or_a_neighbour_but_writes_its_sandbox()
{
    // Proves the agent's default for tasks (root agent, no --task-user): the task runs as
    // nobody, and /root, the agent's work dir (listing, agent.json, checkpoints, task records),
    // a neighbour task's sandbox (run as another user) and its own run's records are each
    // permission denied, while it writes its own sandbox by relative and absolute path. The
    // output is read back with `drover logs`, and the sandboxes are owned by their tasks' users.
    // Would fail if the supervisor did not switch users (root reads everything) or if any of
    // those paths were left open to others.
    if !is_root() {
        eprintln!("skipped: the agent must run as root to switch tasks to other users");
        return;
    }
    let nobody = user("nobody");
    let neighbour_user = user("daemon");
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    // The temp dir is 0700: open it to others like /var/lib, so every "denied" below comes from
    // the agent's own modes, not from a directory above the work dir.
    fs::set_permissions(cluster.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    cluster.wait_agents(1).await;
    let work = cluster.work_dir("agent0");
    let mut fw = TestFramework::subscribe(&cluster.addr, "users").await;

    let offer = fw.next_offer().await;
    let mut neighbour = shell_task(
        "neighbour",
        &offer,
        100,
        16 * MIB,
        "echo private > secret; sleep 300",
    );
    neighbour.user = neighbour_user.name.clone();
    fw.accept(&offer, vec![neighbour], Some(0.0)).await;
    fw.wait_update("neighbour", is(v1::TaskState::TaskRunning))
        .await;
    let neighbour_dir = task_sandbox(&work, &fw.id, "neighbour");
    util::wait_for("the neighbour's secret", WAIT, || {
        neighbour_dir.join("secret").exists().then_some(())
    });
    let checkpoint = work.join(format!("status_updates/{}/neighbour.updates", fw.id));
    assert!(
        checkpoint.exists(),
        "{} is what the probe reads",
        checkpoint.display()
    );

    let mut script = PROBE_PRELUDE.to_string();
    for (name, command, _) in PROBES {
        script.push_str(&format!("try {name} '{command}'\n"));
    }
    let offer = fw.next_offer().await;
    let mut prober = shell_task("prober", &offer, 100, 16 * MIB, &script);
    let env = &mut prober.command.as_mut().unwrap().env;
    env.insert("WORK".into(), work.display().to_string());
    env.insert("FW".into(), fw.id.clone());
    env.insert("NEIGHBOUR".into(), neighbour_dir.display().to_string());
    fw.accept(&offer, vec![prober], Some(0.0)).await;
    let finished = fw
        .wait_update("prober", |s| {
            is(v1::TaskState::TaskFinished)(s) || is(v1::TaskState::TaskFailed)(s)
        })
        .await;
    assert!(
        is(v1::TaskState::TaskFinished)(&finished),
        "the probe failed: {finished:?}"
    );

    let logs = util::drover(&cluster.addr, &["logs", "prober"]);
    assert!(
        logs.status.success(),
        "drover logs prober: {}",
        util::stderr(&logs)
    );
    let mut expected = format!("uid {}\n", nobody.uid);
    for (name, _, result) in PROBES {
        expected.push_str(&format!("{name}: {result}\n"));
    }
    assert_eq!(util::stdout(&logs), expected);

    let prober_dir = task_sandbox(&work, &fw.id, "prober");
    let owner = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
    };
    assert_eq!(owner(&prober_dir), (nobody.uid, nobody.gid, 0o750));
    assert_eq!(owner(&prober_dir.join("stdout")).0, nobody.uid);
    assert_eq!(
        fs::read_to_string(prober_dir.join("mine")).unwrap(),
        "written\nagain\n"
    );
    assert_eq!(
        owner(&neighbour_dir),
        (neighbour_user.uid, neighbour_user.gid, 0o750)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_asking_for_root_or_a_missing_user_is_refused_naming_the_user() {
    // Proves the agent's refusals reach the framework as TASK_ERROR naming the user and the
    // reason: root without --allow-root-tasks (on an agent that is not root: any other user),
    // and a user the machine does not have; neither task gets a sandbox or a process.
    let cluster = start_cluster(&[SMALL_AGENT], &[]);
    cluster.wait_agents(1).await;
    let mut fw = TestFramework::subscribe(&cluster.addr, "users").await;
    let offer = fw.next_offer().await;
    let mut root = shell_task("wants-root", &offer, 100, 16 * MIB, "sleep 300");
    root.user = "root".into();
    let mut ghost = shell_task("wants-ghost", &offer, 100, 16 * MIB, "sleep 300");
    ghost.user = "no-such-user-drover".into();
    fw.accept(&offer, vec![root, ghost], Some(0.0)).await;

    let refused = fw
        .wait_update("wants-root", is(v1::TaskState::TaskError))
        .await;
    assert!(refused.message.contains("task.user"), "{refused:?}");
    if is_root() {
        assert!(
            refused.message.contains("user root is uid 0 (root)")
                && refused.message.contains("--allow-root-tasks"),
            "{refused:?}"
        );
        let ghost = fw
            .wait_update("wants-ghost", is(v1::TaskState::TaskError))
            .await;
        assert!(
            ghost
                .message
                .contains("user no-such-user-drover does not exist on this agent"),
            "{ghost:?}"
        );
    } else {
        assert!(
            refused
                .message
                .contains("user root: this agent is not root")
        );
    }
    let sandboxes = cluster
        .work_dir("agent0")
        .join("frameworks")
        .join(&fw.id)
        .join("sandboxes");
    for task in ["wants-root", "wants-ghost"] {
        assert!(!sandboxes.join(task).exists(), "{task} got a sandbox");
        assert!(cluster.task_pids(task).is_empty(), "{task} runs");
    }
}

#[test]
fn an_agent_refuses_to_start_with_a_task_user_it_cannot_use() {
    // Proves the start-up check: `--task-user` naming a missing user (and, for a root agent,
    // root without --allow-root-tasks) stops the agent at once with one line naming the flag
    // and the user.
    let dir = tempfile::tempdir().unwrap();
    let mut cases = vec![(
        "no-such-user-drover",
        "drover: --task-user no-such-user-drover: no such user on this machine",
    )];
    if is_root() {
        cases.push((
            "root",
            "drover: --task-user root is uid 0 (root): tasks run as root only with --allow-root-tasks",
        ));
    }
    for (task_user, line) in cases {
        let work = dir.path().join(format!("work-{task_user}"));
        let listen = format!("127.0.0.1:{}", util::free_port());
        let mut agent = Proc::spawn(
            &format!("agent-{task_user}"),
            &[
                "agent",
                "--masters",
                "127.0.0.1:1",
                "--listen",
                &listen,
                "--work-dir",
                work.to_str().unwrap(),
                "--task-user",
                task_user,
            ],
            dir.path(),
        );
        util::wait_for(
            &format!("the agent with --task-user {task_user} to exit"),
            Duration::from_secs(30),
            || agent.exited().then_some(()),
        );
        let log = agent.log_text();
        assert!(
            log.lines().any(|l| l.trim() == line),
            "expected the line {line:?} in:\n{log}"
        );
        assert!(
            !work.exists(),
            "the agent touched its work dir before refusing"
        );
    }
}
