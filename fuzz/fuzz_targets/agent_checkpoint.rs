//! The agent's readers of its own files after a restart: status-update checkpoints
//! (`StatusUpdateManager::open`), task records and `agent.json` (`WorkDir::load_tasks`,
//! `WorkDir::read_agent_id`), and a sandbox's `supervisor.json` / `exit.json`
//! (`Sandbox::read_supervisor`, `Sandbox::read_exit`).
//!
//! Input: a selector byte, then
//! - 0: the raw bytes of `<fw>/<task>.updates`;
//! - 1: records `[len: u16 LE][payload]` framed as the checkpoint format says (length, CRC32 of
//!   the payload, payload), so the JSON decoder behind the CRC is reached, then a raw tail;
//! - 2: a task record `tasks/fw-1/task-1.json`; 3: `agent.json`; 4: `supervisor.json`;
//!   5: `exit.json`.
//!
//! Checks: nothing panics; recovering a checkpoint twice gives the same pending updates and the
//! second time truncates nothing; a record that reads back is written (by the agent's own writer)
//! and read again equal.
#![no_main]

use drover_agent::daemon::WorkDir;
use drover_agent::sandbox::Sandbox;
use drover_agent::status_updates::{StatusUpdateConfig, StatusUpdateManager};
use drover_fuzz::{Cursor, clear, scratch_dir};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One locked work dir for the whole run (`WorkDir::open` takes an exclusive lock).
fn work_dir() -> &'static WorkDir {
    static WORK: OnceLock<WorkDir> = OnceLock::new();
    WORK.get_or_init(|| {
        let root = PathBuf::from(format!(
            "/dev/shm/drover-fuzz-workdir-{}",
            std::process::id()
        ));
        WorkDir::open(&root).expect("open work dir")
    })
}

fn checkpoint(stream: &[u8]) {
    let dir = scratch_dir();
    std::fs::create_dir(dir.join("fw-1")).unwrap();
    std::fs::write(dir.join("fw-1/task-1.updates"), stream).unwrap();
    let Ok((_, first)) = StatusUpdateManager::open(dir, StatusUpdateConfig::default()) else {
        return;
    };
    let (_, second) = StatusUpdateManager::open(dir, StatusUpdateConfig::default())
        .expect("a recovered checkpoint reopens");
    assert_eq!(second.pending, first.pending, "recovery is idempotent");
    assert!(
        second.truncated.is_empty(),
        "the first open already cut the tail"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    match input.u8() % 6 {
        0 => checkpoint(input.rest()),
        1 => {
            let mut stream = Vec::new();
            while !input.0.is_empty() && input.0[0] != 0xff {
                let len = usize::from(input.u16());
                let payload = input.bytes(len);
                let len = u32::try_from(payload.len()).expect("u16 length");
                stream.extend_from_slice(&len.to_le_bytes());
                stream.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                stream.extend_from_slice(payload);
            }
            stream.extend_from_slice(input.rest());
            checkpoint(&stream);
        }
        2 => {
            let work = work_dir();
            let tasks = work.root().join("tasks");
            clear(&tasks);
            std::fs::create_dir(tasks.join("fw-1")).unwrap();
            std::fs::write(tasks.join("fw-1/task-1.json"), input.rest()).unwrap();
            let Ok(entries) = work.load_tasks() else {
                return;
            };
            clear(&tasks);
            for entry in &entries {
                work.save_task(entry).expect("save a loaded task record");
            }
            let again = work.load_tasks().expect("saved task records load");
            assert_eq!(again, entries, "task record round trip");
        }
        3 => {
            let work = work_dir();
            std::fs::write(work.root().join("agent.json"), input.rest()).unwrap();
            if let Ok(Some(id)) = work.read_agent_id() {
                work.write_agent_id(&id).expect("write agent.json");
                assert_eq!(work.read_agent_id().expect("read agent.json"), Some(id));
            }
        }
        selector => {
            let dir = scratch_dir();
            let sandbox = Sandbox::at(dir);
            if selector == 4 {
                std::fs::write(sandbox.supervisor_path(), input.rest()).unwrap();
                if let Ok(Some(record)) = sandbox.read_supervisor() {
                    sandbox
                        .write_supervisor(&record)
                        .expect("write supervisor.json");
                    assert_eq!(sandbox.read_supervisor().expect("read"), Some(record));
                }
            } else {
                std::fs::write(sandbox.exit_path(), input.rest()).unwrap();
                if let Ok(Some(record)) = sandbox.read_exit() {
                    sandbox.write_exit(&record).expect("write exit.json");
                    assert_eq!(sandbox.read_exit().expect("read"), Some(record));
                }
            }
        }
    }
});
