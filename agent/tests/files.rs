//! The agent's file API (`drover.v1.AgentFiles`) and sandbox GC against a real agent daemon, an
//! in-test master (the harness of `daemon.rs`) and real supervisors running real tasks: reading
//! stdout/stderr from offsets, following until the task ends, refusing ids and files that could
//! leave the sandbox, and the GC removing only what it should.
#![allow(
    clippy::print_stderr,
    reason = "test diagnostics; the harness captures them"
)]
#![allow(dead_code, unused_imports)]

include!("support/daemon_harness.rs");

use drover_agent::daemon::files::{CHUNK_BYTES_MAX, SANDBOX_METADATA_KEY, SANDBOX_REMOVED};
use drover_agent::daemon::{DiskLimit, SandboxGcConfig};
use drover_proto::v1::agent_files_client::AgentFilesClient;
use tonic::transport::Channel;

const FW: &str = "fw-files";
const KIB: u64 = 1024;

/// A client of the agent's file API, once it listens.
async fn files_client(h: &Harness) -> AgentFilesClient<Channel> {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        match AgentFilesClient::connect(format!("http://{}", h.listen)).await {
            Ok(c) => return c.max_decoding_message_size(drover_proto::MESSAGE_BYTES_MAX),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the file API never listened: {e}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

fn request(task: &str, file: v1::SandboxFile, offset: u64, follow: bool) -> v1::ReadFileRequest {
    v1::ReadFileRequest {
        framework_id: FW.into(),
        task_id: task.into(),
        run_id: String::new(),
        file: file as i32,
        offset,
        follow,
    }
}

/// Reads a stream to its end: the run id and the bytes, after checking every chunk is bounded
/// and starts where the previous one ended.
async fn read_stream(
    c: &mut AgentFilesClient<Channel>,
    req: v1::ReadFileRequest,
) -> Result<(String, Vec<u8>), tonic::Status> {
    let mut offset = req.offset;
    let mut stream = c.read_file(req).await?.into_inner();
    let mut run = None;
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert!(
            chunk.data.len() <= CHUNK_BYTES_MAX,
            "chunk of {}",
            chunk.data.len()
        );
        assert_eq!(chunk.offset, offset, "chunks are contiguous");
        offset += chunk.data.len() as u64;
        let r = run.get_or_insert_with(|| chunk.run_id.clone());
        assert_eq!(*r, chunk.run_id);
        data.extend_from_slice(&chunk.data);
    }
    Ok((run.expect("at least one chunk"), data))
}

/// Reads `file` of `task` until it is `expected` (the task may still be writing it).
async fn wait_content(
    c: &mut AgentFilesClient<Channel>,
    task: &str,
    file: v1::SandboxFile,
    expected: &[u8],
) -> String {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let got = read_stream(c, request(task, file, 0, false)).await;
        match got {
            Ok((run, data)) if data == expected => return run,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "{task} {file:?} never became {:?}; last: {other:?}",
                    String::from_utf8_lossy(expected)
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

impl Harness {
    fn task_dir(&self, task: &str) -> PathBuf {
        self.work_dir()
            .join("frameworks")
            .join(FW)
            .join("sandboxes")
            .join(task)
    }

    /// Starts the agent with this sandbox GC and waits for its registration.
    async fn registered_agent_with_gc(&mut self, gc: SandboxGcConfig) -> String {
        let mut config = self.config(vec![self.master.addr.clone()]);
        config.sandbox_gc = gc;
        config.files.follow_poll = Duration::from_millis(20);
        self.start_agent_with(config);
        let (_, hello) = self.master.wait_hello(0).await;
        assert!(matches!(hello, agent_message::Message::Register(_)));
        let Mode::Lead { new_agent_id } = self.master.control.lock().unwrap().mode.clone() else {
            panic!("master not leading");
        };
        new_agent_id
    }

    /// Starts a shell task and acknowledges its TASK_RUNNING (updates of a task come one at a
    /// time: the terminal one follows only then).
    async fn start_task(&mut self, id: &str, task_id: &str, script: &str) {
        self.master
            .send(run_task(FW, task(id, task_id, shell(script))))
            .await;
        let running = self
            .master
            .wait_update(FW, task_id, v1::TaskState::TaskRunning)
            .await;
        self.master.send(ack(FW, &running)).await;
    }

    /// Runs a task to its end and acknowledges its terminal update (`state`).
    async fn run_to_end(&mut self, id: &str, task_id: &str, script: &str, state: v1::TaskState) {
        self.start_task(id, task_id, script).await;
        let end = self.master.wait_update(FW, task_id, state).await;
        self.master.send(ack(FW, &end)).await;
    }
}

fn no_gc() -> SandboxGcConfig {
    SandboxGcConfig {
        max_age: Duration::from_secs(365 * 86_400),
        disk_max: DiskLimit::Bytes(u64::MAX),
        interval: Duration::from_secs(3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stdout_and_stderr_from_offsets_in_bounded_chunks() {
    // Proves ReadFile returns what the task wrote to stdout and stderr, from any offset up to
    // the end, in contiguous chunks of at most 64 KiB (a 200 000-byte output), refuses an offset
    // past the end with OUT_OF_RANGE, and ListRuns shows the one run, not ended, with its sizes.
    let mut h = Harness::new().await;
    let id = h.registered_agent_with_gc(no_gc()).await;
    h.start_task(
        &id,
        "talker",
        "printf 'hello\\nworld\\n'; printf 'oops\\n' >&2; sleep 60",
    )
    .await;
    h.start_task(
        &id,
        "bulk",
        "head -c 200000 /dev/zero | tr '\\0' a; sleep 60",
    )
    .await;
    let mut c = files_client(&h).await;
    use v1::SandboxFile::{Stderr, Stdout};
    let run = wait_content(&mut c, "talker", Stdout, b"hello\nworld\n").await;
    wait_content(&mut c, "talker", Stderr, b"oops\n").await;
    let (r, tail) = read_stream(&mut c, request("talker", Stdout, 6, false))
        .await
        .unwrap();
    assert_eq!(
        (r.as_str(), tail.as_slice()),
        (run.as_str(), &b"world\n"[..])
    );
    // At the end: one empty chunk naming the run.
    let (_, empty) = read_stream(&mut c, request("talker", Stdout, 12, false))
        .await
        .unwrap();
    assert!(empty.is_empty());
    let past = read_stream(&mut c, request("talker", Stdout, 13, false))
        .await
        .unwrap_err();
    assert_eq!(past.code(), tonic::Code::OutOfRange, "{past:?}");
    assert!(past.message().contains("offset 13"), "{}", past.message());
    // The same run asked for by id.
    let mut by_id = request("talker", Stdout, 0, false);
    by_id.run_id = run.clone();
    assert_eq!(
        read_stream(&mut c, by_id).await.unwrap().1,
        b"hello\nworld\n"
    );

    let big = vec![b'a'; 200_000];
    wait_content(&mut c, "bulk", Stdout, &big).await;

    let runs = c
        .list_runs(v1::ListRunsRequest {
            framework_id: FW.into(),
            task_id: "talker".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].run_id, run);
    assert!(!runs[0].ended);
    assert_eq!((runs[0].stdout_bytes, runs[0].stderr_bytes), (12, 5));
    assert!(runs[0].started_at_ms > 0);
    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sees_appended_output_and_ends_when_the_task_ends() {
    // Proves a followed stream delivers output appended after it started, and ends by itself,
    // with everything the task wrote, once the task has finished; the same for a killed task.
    let mut h = Harness::new().await;
    let id = h.registered_agent_with_gc(no_gc()).await;
    h.start_task(
        &id,
        "stepper",
        "echo first; until [ -e go ]; do sleep 0.02; done; echo second; exit 0",
    )
    .await;
    let mut c = files_client(&h).await;
    let run = wait_content(&mut c, "stepper", v1::SandboxFile::Stdout, b"first\n").await;
    let mut stream = c
        .read_file(request("stepper", v1::SandboxFile::Stdout, 0, true))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen != b"first\n" {
        let chunk = tokio::time::timeout(WAIT_DEADLINE, stream.message())
            .await
            .expect("a chunk in time")
            .unwrap()
            .expect("the stream stays open while the task runs");
        seen.extend(chunk.data);
    }
    // Let the task write more, then end.
    fs::write(h.task_dir("stepper").join(&run).join("sandbox/go"), b"").unwrap();
    while let Some(chunk) = tokio::time::timeout(WAIT_DEADLINE, stream.message())
        .await
        .expect("a chunk or the end in time")
        .unwrap()
    {
        seen.extend(chunk.data);
    }
    assert_eq!(seen, b"first\nsecond\n");
    h.master
        .wait_update(FW, "stepper", v1::TaskState::TaskFinished)
        .await;

    // A killed task's stream ends too.
    h.start_task(&id, "forever", "echo up; sleep 600").await;
    wait_content(&mut c, "forever", v1::SandboxFile::Stdout, b"up\n").await;
    let mut c2 = c.clone();
    let follower = tokio::spawn(async move {
        read_stream(
            &mut c2,
            request("forever", v1::SandboxFile::Stdout, 0, true),
        )
        .await
    });
    h.master.send(kill_task(FW, "forever", 0)).await;
    h.master
        .wait_update(FW, "forever", v1::TaskState::TaskKilled)
        .await;
    let (_, data) = tokio::time::timeout(WAIT_DEADLINE, follower)
        .await
        .expect("the follow ends after the kill")
        .unwrap()
        .unwrap();
    assert_eq!(data, b"up\n");
    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_files_that_could_leave_the_sandbox_are_refused() {
    // Proves traversal attempts in every id field are INVALID_ARGUMENT naming the field, an
    // unknown task is NOT_FOUND naming the task, and a stdout the task replaced with a symlink
    // to a file outside its sandbox is not followed.
    let mut h = Harness::new().await;
    let id = h.registered_agent_with_gc(no_gc()).await;
    let mut c = files_client(&h).await;
    let bad = |fw: &str, task: &str, run: &str| v1::ReadFileRequest {
        framework_id: fw.into(),
        task_id: task.into(),
        run_id: run.into(),
        file: v1::SandboxFile::Stdout as i32,
        offset: 0,
        follow: false,
    };
    for (req, field) in [
        (bad("..", "t", ""), "framework_id"),
        (bad("../..", "t", ""), "framework_id"),
        (bad(FW, "../../../etc", ""), "task_id"),
        (bad(FW, "..", ""), "task_id"),
        (bad(FW, "a/b", ""), "task_id"),
        (bad(FW, "t", "../x"), "run_id"),
        (bad(FW, "t", ".."), "run_id"),
    ] {
        let e = read_stream(&mut c, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(
            e.message().starts_with(&format!("invalid {field}")),
            "{req:?}: {}",
            e.message()
        );
    }
    let mut no_file = request("t", v1::SandboxFile::Stdout, 0, false);
    no_file.file = 0;
    let e = read_stream(&mut c, no_file).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("file"), "{}", e.message());

    let e = read_stream(
        &mut c,
        request("web.1.nope", v1::SandboxFile::Stdout, 0, false),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("web.1.nope"), "{}", e.message());
    assert!(e.metadata().get(SANDBOX_METADATA_KEY).is_none());

    let secret = h.tmp.path().join("secret");
    fs::write(&secret, b"not for tasks").unwrap();
    let script = format!(
        "rm stdout && ln -s {} stdout && echo swapped > swapped; sleep 60",
        secret.display()
    );
    h.start_task(&id, "sneaky", &script).await;
    let sandbox = h.sandbox(FW, "sneaky").await;
    wait_until("the task to swap its stdout", || {
        sandbox.task_dir().join("swapped").exists()
    })
    .await;
    let e = read_stream(&mut c, request("sneaky", v1::SandboxFile::Stdout, 0, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(!e.message().contains("not for tasks"));
    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_only_finished_acknowledged_runs() {
    // Proves the age rule end to end with age 0: the sandbox of a finished, acknowledged task
    // goes (and reading it says the GC removed it); a running task's sandbox and a finished
    // task's whose terminal update is not acknowledged stay, the latter until it is.
    let mut h = Harness::new().await;
    let id = h
        .registered_agent_with_gc(SandboxGcConfig {
            max_age: Duration::ZERO,
            disk_max: DiskLimit::Bytes(u64::MAX),
            interval: Duration::from_millis(50),
        })
        .await;
    let mut c = files_client(&h).await;
    h.start_task(&id, "runner", "echo run; sleep 600").await;
    h.start_task(&id, "unacked", "echo bye").await;
    let unacked_end = h
        .master
        .wait_update(FW, "unacked", v1::TaskState::TaskFinished)
        .await;
    wait_content(&mut c, "runner", v1::SandboxFile::Stdout, b"run\n").await;
    h.run_to_end(&id, "done", "echo done", v1::TaskState::TaskFinished)
        .await;
    let done_dir = h.task_dir("done");
    wait_until("the GC to remove done's sandbox", || !done_dir.exists()).await;
    let e = read_stream(&mut c, request("done", v1::SandboxFile::Stdout, 0, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        e.message().contains("done") && e.message().contains("GC"),
        "{}",
        e.message()
    );
    assert_eq!(
        e.metadata()
            .get(SANDBOX_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(SANDBOX_REMOVED)
    );
    // The Task query is answered after the GC round that removed "done": the others are there.
    assert_eq!(
        read_stream(
            &mut c,
            request("unacked", v1::SandboxFile::Stdout, 0, false)
        )
        .await
        .unwrap()
        .1,
        b"bye\n"
    );
    assert_eq!(
        read_stream(&mut c, request("runner", v1::SandboxFile::Stdout, 0, false))
            .await
            .unwrap()
            .1,
        b"run\n"
    );
    assert!(h.task_dir("runner").exists() && h.task_dir("unacked").exists());
    // Acknowledged now: it goes too; the running one still stays.
    h.master.send(ack(FW, &unacked_end)).await;
    let unacked_dir = h.task_dir("unacked");
    wait_until("the GC to remove unacked's sandbox", || {
        !unacked_dir.exists()
    })
    .await;
    assert_eq!(
        read_stream(&mut c, request("runner", v1::SandboxFile::Stdout, 0, false))
            .await
            .unwrap()
            .1,
        b"run\n"
    );
    // The trash is emptied.
    let trash = h.work_dir().join("sandbox-gc-trash");
    wait_until("the GC trash to be emptied", || {
        fs::read_dir(&trash).map_or(true, |mut d| d.next().is_none())
    })
    .await;
    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_over_the_disk_maximum_removes_the_oldest_finished_run_first() {
    // Proves the size rule end to end: three sandboxes of ~100, ~100 and ~150 KiB (the last one
    // running) against a 300 KiB maximum: only the oldest finished run goes.
    let mut h = Harness::new().await;
    let id = h
        .registered_agent_with_gc(SandboxGcConfig {
            max_age: Duration::from_secs(365 * 86_400),
            disk_max: DiskLimit::Bytes(300 * KIB),
            interval: Duration::from_millis(50),
        })
        .await;
    let c = files_client(&h).await;
    let write = |n: u64| format!("head -c {} /dev/zero", n * KIB);
    h.run_to_end(&id, "old1", &write(100), v1::TaskState::TaskFinished)
        .await;
    h.run_to_end(&id, "old2", &write(100), v1::TaskState::TaskFinished)
        .await;
    // The two finished runs alone (~200 KiB) are within the maximum.
    let runs = |c: &AgentFilesClient<Channel>, t: &str| {
        let mut c = c.clone();
        let t = t.to_string();
        async move {
            c.list_runs(v1::ListRunsRequest {
                framework_id: FW.into(),
                task_id: t,
            })
            .await
        }
    };
    assert!(runs(&c, "old1").await.is_ok() && runs(&c, "old2").await.is_ok());
    h.start_task(&id, "big", &format!("{}; sleep 600", write(150)))
        .await;
    let old1 = h.task_dir("old1");
    wait_until("the GC to remove old1", || !old1.exists()).await;
    // Answered after the round that removed old1: old2 and the running task are still there.
    let old2 = runs(&c, "old2").await.expect("old2 kept").into_inner();
    assert!(old2.runs[0].ended);
    assert_eq!(old2.runs[0].stdout_bytes, 100 * KIB);
    let big = runs(&c, "big").await.expect("big kept").into_inner();
    assert!(!big.runs[0].ended);
    h.stop_agent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_is_a_startup_error_naming_it() {
    // Proves the agent does not start without its file API, and says which address failed.
    let h = Harness::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut config = h.config(vec![h.master.addr.clone()]);
    config.listen = addr.clone();
    let err = tokio::time::timeout(WAIT_DEADLINE, daemon::run(config, std::future::pending()))
        .await
        .expect("fails at once")
        .expect_err("address in use");
    assert!(matches!(err, AgentError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr), "{err}");
    drop(taken);
}
