//! Durability on one replica, on real processes: what a master acknowledged survives `kill -9`,
//! and a log with a torn last record starts cleanly and keeps everything before it.

use crate::util;

use drover_coord::CreateMode;
use drover_coord::client::{Client, ClientOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use util::*;

fn options() -> ClientOptions {
    ClientOptions {
        session_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

async fn connect(addr: &str) -> Client {
    Client::connect(vec![addr.to_string()], options())
        .await
        .expect("connect to the master")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut master = start_master(dir.path(), port, "master-1", &[]);
    let client = connect(&addr).await;
    client
        .create("/w", Vec::new(), CreateMode::Persistent)
        .await
        .unwrap();

    // 16 writers, each creating nodes one after another; each records what was acknowledged.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..16 {
        let client = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for k in 0.. {
                let path = format!("/w/n-{w}-{k}");
                match client
                    .create(&path, path.clone().into_bytes(), CreateMode::Persistent)
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(path),
                    Err(_) => return,
                }
            }
        }));
    }
    wait_for("writes to be acknowledged", Duration::from_secs(30), || {
        (acked.lock().unwrap().len() >= 2000).then_some(())
    });
    master.kill9();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(20), w).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 2000);

    let master2 = start_master(dir.path(), port, "master-2", &[]);
    let client = connect(&addr).await;
    for path in &acked {
        let (data, _) = client
            .get(path)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {path} lost after kill -9: {e}"));
        assert_eq!(&data[..], path.as_bytes());
    }
    drop(master2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_truncated_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut master = start_master(dir.path(), port, "master-1", &[]);
    let client = connect(&addr).await;
    for i in 0..100 {
        client
            .create(
                &format!("/n{i}"),
                vec![i as u8; 100],
                CreateMode::Persistent,
            )
            .await
            .unwrap();
    }
    master.kill9();

    // Tear the last record: cut the newest log file in the middle of its last record, as a crash
    // in the middle of a write would.
    let log = newest_log(&dir.path().join("data"));
    let end = data_end(&log);
    let last_start = last_record_start(&log);
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(last_start + (end - last_start) / 2).unwrap();
    drop(f);

    let _master = start_master(dir.path(), port, "master-2", &[]);
    let client = connect(&addr).await;
    for i in 0..99 {
        let (data, _) = client
            .get(&format!("/n{i}"))
            .await
            .unwrap_or_else(|e| panic!("/n{i} lost: {e}"));
        assert_eq!(data.len(), 100);
    }
    // The torn record was /n99's; the server took new writes after truncating.
    assert!(client.exists("/n99").await.unwrap().is_none());
    client
        .create("/after", Vec::new(), CreateMode::Persistent)
        .await
        .unwrap();
}

fn newest_log(dir: &std::path::Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("log."))
        })
        .collect();
    logs.sort();
    logs.pop().expect("a log file")
}

/// Offsets of each record in a log file, parsed with the documented record format
/// (`[len u32][crc u32][zxid u64][payload]` after the file header), stopping at zero fill.
fn record_starts(log: &std::path::Path) -> (Vec<u64>, u64) {
    let bytes = std::fs::read(log).unwrap();
    let mut at = drover_coord::storage::LOG_HEADER_BYTES as usize;
    let mut starts = Vec::new();
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at as u64);
        at += 16 + len;
    }
    (starts, at as u64)
}

fn data_end(log: &std::path::Path) -> u64 {
    record_starts(log).1
}

fn last_record_start(log: &std::path::Path) -> u64 {
    *record_starts(log).0.last().expect("a record")
}
