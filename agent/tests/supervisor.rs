//! Real supervisor processes (`drover-supervise-test`) running real tasks in temp dirs. Every test
//! kills what it started (the `Harness` drop) and removes the cgroup parent it created under a
//! unique name; nothing outside the temp dir and that cgroup subtree is touched.
#![allow(
    clippy::print_stderr,
    reason = "test diagnostics; the harness captures them"
)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use drover_agent::sandbox::validate_task_id;
use drover_agent::{
    ExitRecord, ExitStatus, Isolation, IsolationKind, IsolationPolicy, Sandbox, SupervisorError,
    SupervisorRecord, SupervisorSpec, TaskCommand, TaskState, inspect, run_supervisor,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const WAIT_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
const MIB: u64 = 1024 * 1024;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Waits for `cond` with a deadline; panics with `what` when it never holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(POLL);
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

fn pgid_of(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// The task pid once `supervisor.json` records it.
fn task_pid(s: &Started) -> Option<i32> {
    s.sandbox.read_supervisor().ok().flatten()?.task_pid
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

struct Harness {
    tmp: tempfile::TempDir,
    isolation: Isolation,
    cgroup_parent: String,
    started: Vec<(Child, Sandbox)>,
}

struct Started {
    index: usize,
    sandbox: Sandbox,
    pid: i32,
    supervisor_err: PathBuf,
}

impl Harness {
    fn new() -> Harness {
        let isolation = Isolation::detect();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Harness {
            tmp: tempfile::tempdir().expect("tempdir"),
            cgroup_parent: format!("drover-test-{}-{n}", std::process::id()),
            isolation,
            started: Vec::new(),
        }
    }

    fn spec(&self, task_id: &str, command: TaskCommand) -> SupervisorSpec {
        SupervisorSpec {
            task_id: task_id.into(),
            run_id: "r1".into(),
            work_dir: self.tmp.path().to_path_buf(),
            command,
            env: BTreeMap::new(),
            ports: vec![31000, 31001],
            cpus: 0.5,
            mem_bytes: 64 * MIB,
            grace_period_ms: 30_000,
            oom_poll_interval_ms: 100,
            agent_id: Some("agent-1".into()),
            isolation: IsolationPolicy::Auto,
            cgroup_parent: self.cgroup_parent.clone(),
            user: None,
        }
    }

    /// Starts a real supervisor process for `spec`.
    fn start(&mut self, spec: &SupervisorSpec) -> Started {
        let sandbox = spec.validate().expect("valid spec");
        let spec_path = self.tmp.path().join(format!("{}.spec.json", spec.task_id));
        fs::write(&spec_path, serde_json::to_vec(spec).unwrap()).unwrap();
        let log = |name: &str| {
            fs::File::create(self.tmp.path().join(format!("{}.{name}", spec.task_id))).unwrap()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_drover-supervise-test"))
            .arg(&spec_path)
            .env("LEAK_CHECK", "leaked")
            .stdin(Stdio::null())
            .stdout(log("supervisor.out"))
            .stderr(log("supervisor.err"))
            .spawn()
            .expect("spawn supervisor");
        let pid = i32::try_from(child.id()).unwrap();
        self.started.push((child, sandbox.clone()));
        let supervisor_err = self
            .tmp
            .path()
            .join(format!("{}.supervisor.err", spec.task_id));
        Started {
            index: self.started.len() - 1,
            sandbox,
            pid,
            supervisor_err,
        }
    }

    /// Waits for the supervisor to exit successfully and returns its exit record.
    fn finish(&mut self, s: &Started) -> ExitRecord {
        let child = &mut self.started[s.index].0;
        let deadline = Instant::now() + WAIT_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "supervisor {} did not exit",
                s.pid
            );
            thread::sleep(POLL);
        };
        let err = fs::read_to_string(&s.supervisor_err).unwrap_or_default();
        assert!(status.success(), "supervisor failed: {status}: {err}");
        s.sandbox.read_exit().unwrap().expect("exit.json written")
    }

    fn supervisor_record(&self, s: &Started) -> SupervisorRecord {
        s.sandbox
            .read_supervisor()
            .unwrap()
            .expect("supervisor.json")
    }

    /// Waits until the task is running and `file` (relative to the task's directory) contains
    /// `text`.
    fn wait_for_output(&self, s: &Started, file: &str, text: &str) -> i32 {
        wait_until(&format!("{text:?} in {file}"), || {
            fs::read_to_string(s.sandbox.task_dir().join(file)).is_ok_and(|c| c.contains(text))
                && task_pid(s).is_some()
        });
        self.supervisor_record(s)
            .task_pid
            .expect("task pid recorded")
    }

    fn uses_cgroups(&self) -> bool {
        self.isolation.kind() != IsolationKind::Rlimits
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (child, sandbox) in &mut self.started {
            if child.try_wait().ok().flatten().is_none() {
                // Still running (the test failed): take the task's group down with it.
                if let Ok(Some(SupervisorRecord {
                    task_pgid: Some(pgid),
                    ..
                })) = sandbox.read_supervisor()
                {
                    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            // Pids the test scripts recorded (`*.pid`): on a failed test these may have escaped
            // both the group and a dead supervisor. Only then: after a passing test they are dead
            // and their pids may already belong to someone else.
            if !thread::panicking() {
                continue;
            }
            for entry in fs::read_dir(sandbox.task_dir())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "pid")
                    && let Some(pid) = read_pid(&path)
                    && alive(pid)
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if let Err(e) = self.isolation.remove_parent(&self.cgroup_parent) {
            eprintln!("could not remove test cgroup {}: {e}", self.cgroup_parent);
        }
        for dir in self.isolation.parent_dirs(&self.cgroup_parent) {
            assert!(!dir.exists(), "test cgroup {} left behind", dir.display());
        }
    }
}

fn sh(script: &str) -> TaskCommand {
    TaskCommand::Shell(script.into())
}

#[test]
fn output_env_and_exit_code_are_recorded() {
    // Proves stdout/stderr land in the sandbox, PORT0/PORT/DROVER_* are set, the supervisor's own
    // env does not leak, and `exit 3` is recorded as Exited(3) in an atomically written exit.json.
    let mut h = Harness::new();
    let spec = h.spec(
        "out-1",
        sh("echo \"port=$PORT0,$PORT1,$PORT task=$DROVER_TASK_ID agent=$DROVER_AGENT_ID leak=${LEAK_CHECK:-none}\"; \
            echo oops >&2; pwd; exit 3"),
    );
    let s = h.start(&spec);
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Exited(3));
    assert!(!exit.kill_escalated);
    assert!(exit.finished_at_unix_ms >= exit.started_at_unix_ms);
    let out = fs::read_to_string(s.sandbox.stdout_path()).unwrap();
    let dir = s.sandbox.task_dir().display().to_string();
    assert_eq!(
        out,
        format!("port=31000,31001,31000 task=out-1 agent=agent-1 leak=none\n{dir}\n")
    );
    assert_eq!(
        fs::read_to_string(s.sandbox.stderr_path()).unwrap(),
        "oops\n"
    );
    assert!(!s.sandbox.dir().join("exit.json.tmp").exists());
    assert_eq!(
        inspect(&s.sandbox).unwrap(),
        TaskState::Exited(exit.clone())
    );
    let printed = fs::read_to_string(h.tmp.path().join("out-1.supervisor.out")).unwrap();
    assert_eq!(serde_json::from_str::<ExitRecord>(&printed).unwrap(), exit);
}

#[test]
fn task_killed_from_outside_is_signaled_9() {
    // Proves a task SIGKILLed by someone else is reported Signaled(9), not Killed.
    let mut h = Harness::new();
    let s = h.start(&h.spec(
        "ext-kill",
        TaskCommand::Argv(vec!["sleep".into(), "1000".into()]),
    ));
    wait_until("task pid", || task_pid(&s).is_some());
    let task = h.supervisor_record(&s).task_pid.unwrap();
    kill(Pid::from_raw(task), Signal::SIGKILL).unwrap();
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Signaled(9));
    assert_eq!(exit.task_pid, Some(task));
}

#[test]
fn sigterm_to_supervisor_reaches_the_task() {
    // Proves SIGTERM to the supervisor is forwarded as SIGTERM to the task's group (the task's trap
    // runs; no escalation within a 30 s grace period) and the run is recorded as Killed.
    let mut h = Harness::new();
    let s = h.start(&h.spec(
        "term-1",
        sh("trap 'echo got-term; exit 0' TERM; echo ready; sleep 1000 & wait"),
    ));
    h.wait_for_output(&s, "stdout", "ready");
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Killed);
    assert!(!exit.kill_escalated, "task should have exited on SIGTERM");
    assert!(
        fs::read_to_string(s.sandbox.stdout_path())
            .unwrap()
            .contains("got-term")
    );
}

#[test]
fn task_ignoring_sigterm_is_sigkilled_after_grace() {
    // Proves a task that ignores SIGTERM is SIGKILLed once the grace period is over.
    let mut h = Harness::new();
    let mut spec = h.spec("term-ignore", sh("trap '' TERM; echo ready; sleep 1000"));
    spec.grace_period_ms = 200;
    let s = h.start(&spec);
    let task = h.wait_for_output(&s, "stdout", "ready");
    let sent = Instant::now();
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Killed);
    assert!(exit.kill_escalated);
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "SIGKILL came before the grace period"
    );
    assert!(!alive(task));
}

#[test]
fn a_second_sigterm_ends_the_grace_period_at_once() {
    // Proves the agent's way to apply a shorter kill grace: with a 10-minute grace and a task that
    // traps SIGTERM, a second SIGTERM to the supervisor escalates to SIGKILL right away.
    let mut h = Harness::new();
    let mut spec = h.spec(
        "term-twice",
        sh("trap 'echo got-term' TERM; echo ready; while :; do sleep 0.05; done"),
    );
    spec.grace_period_ms = 600_000;
    let s = h.start(&spec);
    let task = h.wait_for_output(&s, "stdout", "ready");
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    // The first kill request has been taken (forwarded to the task) before the second is sent;
    // two SIGTERMs pending at once would be read as one.
    h.wait_for_output(&s, "stdout", "got-term");
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Killed);
    assert!(exit.kill_escalated);
    assert!(!alive(task));
}

/// A script that starts a background child in the task's group and one that escapes into its own
/// session, and records both pids in the sandbox.
const BACKGROUND: &str = "sleep 1000 & echo $! > bg.pid; \
    setsid sh -c 'echo $$ > escaped.pid.tmp; mv escaped.pid.tmp escaped.pid; exec sleep 1000' & \
    while [ ! -s escaped.pid ]; do sleep 0.01; done; echo ready;";

fn assert_background_gone(s: &Started, task_pgid: Option<i32>) {
    let bg = read_pid(&s.sandbox.task_dir().join("bg.pid")).expect("bg.pid");
    let escaped = read_pid(&s.sandbox.task_dir().join("escaped.pid")).expect("escaped.pid");
    if let Some(pgid) = task_pgid {
        assert_ne!(
            pgid_of(escaped),
            Some(pgid),
            "escapee should have left the task's group"
        );
    }
    assert!(!alive(bg), "background child {bg} survived its task");
    assert!(!alive(escaped), "escaped child {escaped} survived its task");
}

fn kill_leaves_no_process_behind(policy: IsolationPolicy) {
    let mut h = Harness::new();
    let mut spec = h.spec("bg-kill", sh(&format!("{BACKGROUND} wait")));
    spec.isolation = policy;
    let s = h.start(&spec);
    let task = h.wait_for_output(&s, "stdout", "ready");
    let escaped = read_pid(&s.sandbox.task_dir().join("escaped.pid")).unwrap();
    assert_ne!(pgid_of(escaped), Some(task));
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Killed);
    assert_background_gone(&s, None);
}

#[test]
fn kill_leaves_no_process_behind_with_host_isolation() {
    // Proves killing a task also kills its background child and a child that left the task's
    // process group (setsid): no process survives its task (cgroups where the host has them).
    kill_leaves_no_process_behind(IsolationPolicy::Auto);
}

#[test]
fn kill_leaves_no_process_behind_with_rlimits_only() {
    // Proves the same without cgroups: the process group plus the supervisor as child subreaper
    // still find and kill the child that escaped the group.
    kill_leaves_no_process_behind(IsolationPolicy::Rlimits);
}

fn orphans_die_when_the_main_process_exits_first(policy: IsolationPolicy) {
    let mut h = Harness::new();
    let mut spec = h.spec("bg-orphan", sh(&format!("{BACKGROUND} exit 0")));
    spec.isolation = policy;
    let s = h.start(&spec);
    let exit = h.finish(&s);
    assert_eq!(exit.status, ExitStatus::Exited(0));
    assert_background_gone(&s, exit.task_pid);
}

#[test]
fn orphans_die_when_the_main_process_exits_first_with_host_isolation() {
    // Proves that when the main process exits on its own, its orphans (in the group or escaped)
    // are killed too, and the run is still recorded as Exited(0).
    orphans_die_when_the_main_process_exits_first(IsolationPolicy::Auto);
}

#[test]
fn orphans_die_when_the_main_process_exits_first_with_rlimits_only() {
    // Proves the same without cgroups (process group kill plus subreaper sweep).
    orphans_die_when_the_main_process_exits_first(IsolationPolicy::Rlimits);
}

const MEMORY_HOG: &str = "head -c 300M /dev/zero | tail > /dev/null";

#[test]
fn task_over_its_memory_limit_is_oom_killed_under_cgroups() {
    // Proves a task allocating ~300 MiB under a 64 MiB limit is stopped: OomKilled under cgroups
    // (the strongest this host allows), a non-zero exit under rlimits-only hosts.
    let mut h = Harness::new();
    eprintln!(
        "isolation: {:?}: {}",
        h.isolation.kind(),
        h.isolation.description()
    );
    let s = h.start(&h.spec("oom-1", sh(MEMORY_HOG)));
    let exit = h.finish(&s);
    assert_eq!(exit.isolation, h.isolation.kind());
    if h.uses_cgroups() {
        assert_eq!(exit.status, ExitStatus::OomKilled);
    } else {
        assert!(
            matches!(exit.status, ExitStatus::Exited(c) if c != 0),
            "{:?}",
            exit.status
        );
    }
}

#[test]
fn rlimits_only_makes_the_allocation_fail_instead() {
    // Proves the rlimits fallback: RLIMIT_DATA is set to the memory limit, a hog fails with a
    // non-zero exit (reported Exited, not OomKilled), and no cgroup is created.
    let mut h = Harness::new();
    let mut spec = h.spec("rlim-1", sh(&format!("ulimit -d; {MEMORY_HOG}")));
    spec.isolation = IsolationPolicy::Rlimits;
    let s = h.start(&spec);
    let exit = h.finish(&s);
    assert_eq!(exit.isolation, IsolationKind::Rlimits);
    assert!(
        matches!(exit.status, ExitStatus::Exited(c) if c != 0),
        "{:?}",
        exit.status
    );
    assert_eq!(
        fs::read_to_string(s.sandbox.stdout_path()).unwrap().trim(),
        (64 * MIB / 1024).to_string()
    );
    assert!(h.supervisor_record(&s).cgroups.is_empty());
}

#[test]
fn cgroup_limits_are_applied_and_the_cgroup_removed() {
    // Proves the task runs inside its own cgroup with memory and CPU limits from the spec, and the
    // cgroup is gone after the task. Under rlimits-only hosts: RLIMIT_DATA is the memory limit.
    let mut h = Harness::new();
    eprintln!(
        "isolation: {:?}: {}",
        h.isolation.kind(),
        h.isolation.description()
    );
    let s = h.start(&h.spec("limits-1", sh("echo ready; exec sleep 1000")));
    let task = h.wait_for_output(&s, "stdout", "ready");
    let cgroups: Vec<PathBuf> = h.supervisor_record(&s).cgroups;
    let read =
        |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match h.isolation.kind() {
        IsolationKind::CgroupV2 => {
            assert_eq!(cgroups.len(), 1);
            assert_eq!(
                read(cgroups[0].join("memory.max")).trim(),
                (64 * MIB).to_string()
            );
            assert_eq!(read(cgroups[0].join("cpu.max")).trim(), "50000 100000");
        }
        IsolationKind::CgroupV1 => {
            let mem = cgroups
                .iter()
                .find(|d| d.join("memory.limit_in_bytes").exists())
                .expect("memory cgroup");
            assert_eq!(
                read(mem.join("memory.limit_in_bytes")).trim(),
                (64 * MIB).to_string()
            );
            if let Some(cpu) = cgroups.iter().find(|d| d.join("cpu.cfs_quota_us").exists()) {
                assert_eq!(read(cpu.join("cpu.cfs_quota_us")).trim(), "50000");
            }
        }
        IsolationKind::Rlimits => {
            let limits = read(PathBuf::from(format!("/proc/{task}/limits")));
            assert!(
                limits
                    .lines()
                    .any(|l| l.starts_with("Max data size") && l.contains(&(64 * MIB).to_string()))
            );
        }
    }
    for dir in &cgroups {
        let procs = read(dir.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l.trim() == task.to_string()),
            "task not in {}",
            dir.display()
        );
    }
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    assert_eq!(h.finish(&s).status, ExitStatus::Killed);
    for dir in &cgroups {
        assert!(!dir.exists(), "cgroup {} not removed", dir.display());
    }
}

#[test]
fn inspect_tells_running_exited_and_lost_apart() {
    // Proves inspect() sees a live supervisor as Running, then Exited with its record, and reports
    // Lost for a dead pid, a reused pid (same pid, other start time) and an empty sandbox.
    let mut h = Harness::new();
    let s = h.start(&h.spec(
        "insp-1",
        TaskCommand::Argv(vec!["sleep".into(), "1000".into()]),
    ));
    wait_until("Running", || {
        inspect(&s.sandbox).unwrap()
            == TaskState::Running {
                supervisor_pid: s.pid,
            }
            && task_pid(&s).is_some()
    });
    kill(Pid::from_raw(s.pid), Signal::SIGTERM).unwrap();
    let exit = h.finish(&s);
    assert_eq!(inspect(&s.sandbox).unwrap(), TaskState::Exited(exit));

    let sandbox = |task: &str| {
        let sb = Sandbox::new(h.tmp.path(), task, "r1").unwrap();
        sb.create(None).unwrap();
        sb
    };
    let empty = sandbox("lost-empty");
    assert_eq!(inspect(&empty).unwrap(), TaskState::Lost);

    let live = h.supervisor_record(&s);
    // Our own pid is alive, but not with the recorded start time: a reused pid.
    let reused = sandbox("lost-reused");
    let me = i32::try_from(std::process::id()).unwrap();
    reused
        .write_supervisor(&SupervisorRecord {
            supervisor_pid: me,
            ..live.clone()
        })
        .unwrap();
    assert_eq!(inspect(&reused).unwrap(), TaskState::Lost);

    let mut dead_child = Command::new("true").spawn().unwrap();
    dead_child.wait().unwrap();
    let dead = sandbox("lost-dead");
    let dead_pid = i32::try_from(dead_child.id()).unwrap();
    dead.write_supervisor(&SupervisorRecord {
        supervisor_pid: dead_pid,
        ..live
    })
    .unwrap();
    assert_eq!(inspect(&dead).unwrap(), TaskState::Lost);
}

#[test]
fn a_command_that_cannot_start_is_recorded_failed_to_start() {
    // Proves exec failure is an exit record (FailedToStart with the reason), not a supervisor error,
    // and leaves no cgroup behind.
    let mut h = Harness::new();
    let s = h.start(&h.spec(
        "nostart",
        TaskCommand::Argv(vec!["/nonexistent/drover-test-prog".into()]),
    ));
    let exit = h.finish(&s);
    match &exit.status {
        ExitStatus::FailedToStart(reason) => assert!(reason.contains("No such file"), "{reason}"),
        other => panic!("expected FailedToStart, got {other:?}"),
    }
    assert!(h.supervisor_record(&s).cgroups.is_empty());
}

#[test]
fn bad_input_is_rejected_naming_the_field() {
    // Proves invalid task ids, empty commands, zero memory and bad CPU counts are rejected before
    // anything is created, with an error naming the field.
    let h = Harness::new();
    let field = |spec: SupervisorSpec| match run_supervisor(spec) {
        Err(SupervisorError::InvalidSpec { field, .. }) => field,
        other => panic!("expected InvalidSpec, got {other:?}"),
    };
    let ok = h.spec("ok", sh("true"));
    for bad_id in ["../x", "a/b", "", "x\0y", &"x".repeat(201)] {
        assert_eq!(
            field(SupervisorSpec {
                task_id: bad_id.into(),
                ..ok.clone()
            }),
            "task_id",
            "{bad_id:?}"
        );
        assert!(validate_task_id(bad_id).is_err());
    }
    assert_eq!(
        field(SupervisorSpec {
            command: TaskCommand::Argv(vec![]),
            ..ok.clone()
        }),
        "command"
    );
    assert_eq!(
        field(SupervisorSpec {
            command: sh("  "),
            ..ok.clone()
        }),
        "command"
    );
    assert_eq!(
        field(SupervisorSpec {
            mem_bytes: 0,
            ..ok.clone()
        }),
        "mem_bytes"
    );
    assert_eq!(
        field(SupervisorSpec {
            cpus: 0.0,
            ..ok.clone()
        }),
        "cpus"
    );
    assert_eq!(
        field(SupervisorSpec {
            cpus: f64::NAN,
            ..ok.clone()
        }),
        "cpus"
    );
    assert_eq!(
        field(SupervisorSpec {
            run_id: "a.b".into(),
            ..ok.clone()
        }),
        "run_id"
    );
    assert_eq!(
        field(SupervisorSpec {
            cgroup_parent: "../up".into(),
            ..ok.clone()
        }),
        "cgroup_parent"
    );
    assert_eq!(
        field(SupervisorSpec {
            ports: vec![1; 65],
            ..ok
        }),
        "ports"
    );
    assert!(
        fs::read_dir(h.tmp.path()).unwrap().next().is_none(),
        "nothing may be created"
    );
}

/// The `Cap*` and `NoNewPrivs` lines of a `/proc/PID/status`, as numbers.
fn privileges_in(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap") || *k == "NoNewPrivs")
        .map(|(k, v)| {
            let v = v.trim();
            let n = if k == "NoNewPrivs" {
                v.parse().unwrap()
            } else {
                u64::from_str_radix(v, 16).unwrap()
            };
            (k.to_string(), n)
        })
        .collect()
}

/// The task prints its `/proc/self/status` privilege lines between these markers.
const STATUS_SCRIPT: &str = "echo ---; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; echo ---";

fn skip_unless_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("{test}: skipped, switching users needs root");
    }
    !root
}

#[test]
fn a_task_run_as_nobody_has_its_ids_no_capabilities_and_owns_its_sandbox() {
    // Proves the switch a root supervisor makes for a non-root user: uid, gid and groups are
    // nobody's; every capability set (bounding and ambient included) is empty and no_new_privs
    // is set; HOME/USER/LOGNAME are nobody's; the task owns its sandbox (0750) and its output
    // files and can write there, but cannot read the supervisor's records next to it.
    if skip_unless_root("a_task_run_as_nobody") {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("nobody exists");
    let mut h = Harness::new();
    let mut spec = h.spec(
        "as-nobody",
        sh(&format!(
            "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"; {STATUS_SCRIPT}; \
             echo mine > mine && cat mine; \
             cat ../supervisor.json >/dev/null 2>&1 && echo records-read || echo records-denied"
        )),
    );
    spec.user = Some("nobody".into());
    let s = h.start(&spec);
    let exit = h.finish(&s);
    let out = fs::read_to_string(s.sandbox.stdout_path()).unwrap();
    assert_eq!(exit.status, ExitStatus::Exited(0), "{out}");
    let (ids, rest) = out.split_once("---\n").unwrap();
    let (status, after) = rest.split_once("---\n").unwrap();
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    let home = nobody.dir.display().to_string();
    assert_eq!(
        ids,
        format!("{uid}\n{gid}\n{gid}\n{home} nobody nobody\n"),
        "uid, gid, groups (only nobody's), HOME USER LOGNAME"
    );
    let privileges = privileges_in(status);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            privileges[set], 0,
            "{set} of a task run as nobody: {status}"
        );
    }
    assert_eq!(privileges["NoNewPrivs"], 1);
    assert_eq!(after, "mine\nrecords-denied\n");

    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let task_dir = fs::metadata(s.sandbox.task_dir()).unwrap();
    assert_eq!(
        (task_dir.uid(), task_dir.gid()),
        (nobody.uid.as_raw(), nobody.gid.as_raw())
    );
    assert_eq!(task_dir.permissions().mode() & 0o7777, 0o750);
    let stdout = fs::metadata(s.sandbox.stdout_path()).unwrap();
    assert_eq!(stdout.uid(), nobody.uid.as_raw());
    let record = fs::metadata(s.sandbox.exit_path()).unwrap();
    assert_eq!(
        (record.uid(), record.permissions().mode() & 0o777),
        (0, 0o600)
    );
}

#[test]
fn a_root_task_keeps_only_dockers_default_capabilities() {
    // Proves a task run as root (what --allow-root-tasks permits) is not all-powerful: its
    // bounding, permitted and effective sets are Docker's default set (as far as the supervisor
    // had them), nothing is inheritable or ambient, and no_new_privs is set.
    if skip_unless_root("a_root_task_keeps_only_dockers_default_capabilities") {
        return;
    }
    let mine = privileges_in(&fs::read_to_string("/proc/self/status").unwrap());
    let mut h = Harness::new();
    let mut spec = h.spec("as-root", sh(&format!("id -u; {STATUS_SCRIPT}")));
    spec.user = Some("root".into());
    let s = h.start(&spec);
    let exit = h.finish(&s);
    let out = fs::read_to_string(s.sandbox.stdout_path()).unwrap();
    assert_eq!(exit.status, ExitStatus::Exited(0), "{out}");
    let (uid, rest) = out.split_once("---\n").unwrap();
    assert_eq!(uid, "0\n");
    let privileges = privileges_in(rest.trim_end_matches("---\n"));
    let docker = drover_agent::privileges::ROOT_TASK_CAPS & mine["CapBnd"];
    assert_ne!(
        docker, mine["CapBnd"],
        "the supervisor had more than Docker's set"
    );
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(privileges[set], docker, "{set}: {rest}");
    }
    assert_eq!(privileges["CapInh"], 0);
    assert_eq!(privileges["CapAmb"], 0);
    assert_eq!(privileges["NoNewPrivs"], 1);
}

#[test]
fn a_task_user_that_does_not_exist_fails_the_start_naming_the_user() {
    // Proves the supervisor records a user it cannot find as FailedToStart naming the user, and
    // starts nothing.
    let mut h = Harness::new();
    let mut spec = h.spec("no-user", sh("echo ran"));
    spec.user = Some("no-such-user-drover".into());
    let s = h.start(&spec);
    let exit = h.finish(&s);
    assert_eq!(
        exit.status,
        ExitStatus::FailedToStart("user no-such-user-drover does not exist on this agent".into())
    );
    assert_eq!(exit.task_pid, None);
    assert_eq!(fs::read_to_string(s.sandbox.stdout_path()).unwrap(), "");
}
