//! The coord transaction log's recovery (`TxnLog::open`) on arbitrary log files, then each
//! recovered record through `Txn::decode`, as `driver::start` does.
//!
//! Input: a mode byte, then
//! - mode 0: the bytes of one log file, named after the next byte as its first zxid;
//! - mode 1: records `[len: u8][payload]` written through `TxnLog::append` with zxids 1, 2, …,
//!   then whatever is left appended raw to the file (a torn or corrupt tail).
//!
//! Checks: open never panics; a second open of the recovered directory returns the same records
//! and truncates nothing; in mode 1 every synced record comes back unchanged; a record that
//! decodes as a transaction re-encodes to one that decodes equal.
#![no_main]

use drover_coord::storage::{LogOptions, TxnLog};
use drover_coord::txn::Txn;
use drover_fuzz::{Cursor, scratch_dir};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fn options() -> LogOptions {
    LogOptions {
        file_bytes_max: 1 << 20,
        preallocate_bytes: 0,
        buffer_bytes_max: 1 << 16,
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir();
    let mut input = Cursor(data);
    let mut written = Vec::new();
    match input.u8() % 2 {
        0 => {
            let first = u64::from(input.u8());
            std::fs::write(dir.join(format!("log.{first:016x}")), input.rest()).unwrap();
        }
        _ => {
            let (mut log, recovered) = TxnLog::open(dir, options()).expect("empty dir opens");
            assert!(recovered.records.is_empty());
            let mut zxid = 0;
            while !input.0.is_empty() && input.0[0] != 0xff {
                let len = usize::from(input.u8());
                zxid += 1;
                let payload = input.bytes(len).to_vec();
                log.append(zxid, &payload).expect("append to a fresh log");
                written.push((zxid, payload));
            }
            log.sync().expect("sync");
            drop(log);
            let tail = input.rest();
            if let Some(path) = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("log."))
                })
            {
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(tail).unwrap();
            }
        }
    }

    let Ok((log, recovered)) = TxnLog::open(dir, options()) else {
        assert!(
            written.is_empty(),
            "a log written by TxnLog with a torn tail must open"
        );
        return;
    };
    let zxids: Vec<u64> = recovered.records.iter().map(|r| r.0).collect();
    assert!(
        zxids.windows(2).all(|w| w[0] < w[1]),
        "records in zxid order: {zxids:?}"
    );
    assert!(log.last_zxid() >= zxids.last().copied().unwrap_or(0));
    assert!(
        recovered.records.starts_with(&written),
        "every synced record survives a torn tail"
    );
    drop(log);
    let (_, again) = TxnLog::open(dir, options()).expect("a recovered log reopens");
    assert_eq!(again.records, recovered.records, "recovery is idempotent");
    assert_eq!(
        again.truncated_bytes, 0,
        "the first open already cut the tail"
    );

    for (_, payload) in &recovered.records {
        if let Ok(txn) = Txn::decode(payload) {
            assert_eq!(
                Txn::decode(&txn.encode()).expect("re-encoded txn decodes"),
                txn
            );
        }
    }
});
