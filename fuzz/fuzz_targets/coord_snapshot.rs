//! Coord snapshots: the file layer (`storage::load_latest`: trailer, length, CRC) and the payload
//! decoder (`DataTree::read_snapshot`), as `driver::start` recovers them.
//!
//! Input: a mode byte, then
//! - mode 0: the bytes of a snapshot file `snapshot.<next byte as zxid>`;
//! - mode 1: a payload written through `SnapshotWriter` (valid trailer), so the decoder behind
//!   the CRC is reached;
//! - mode 2: a payload given straight to `DataTree::read_snapshot` (the fast path to the same
//!   decoder, which also reads snapshots sent by a leader in `PeerMsg::Snap`).
//!
//! Checks: nothing panics; a snapshot written by `SnapshotWriter` loads back byte for byte; a
//! payload that decodes re-encodes to a tree that decodes with the same digest, node count and
//! encoded length.
#![no_main]

use drover_coord::data_tree::DataTree;
use drover_coord::storage::{SnapshotWriter, load_latest};
use drover_fuzz::{Cursor, scratch_dir};
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let payload = match input.u8() % 3 {
        0 => {
            let dir = scratch_dir();
            let zxid = u64::from(input.u8());
            std::fs::write(dir.join(format!("snapshot.{zxid:016x}")), input.rest()).unwrap();
            match load_latest(dir).expect("no I/O error on a readable file") {
                Some((z, payload)) => {
                    assert_eq!(z, zxid);
                    payload
                }
                None => return,
            }
        }
        1 => {
            let dir = scratch_dir();
            let zxid = u64::from(input.u8()) + 1;
            let payload = input.rest();
            let mut w = SnapshotWriter::create(dir, zxid).expect("create snapshot");
            w.write_all(payload).expect("write snapshot");
            w.finish().expect("finish snapshot");
            let (z, loaded) = load_latest(dir)
                .expect("load snapshot")
                .expect("a finished snapshot is valid");
            assert_eq!(z, zxid);
            assert_eq!(loaded, payload, "a snapshot loads back byte for byte");
            loaded
        }
        _ => input.rest().to_vec(),
    };
    let Ok(tree) = DataTree::read_snapshot(&payload) else {
        return;
    };
    let mut encoded = Vec::new();
    tree.write_snapshot(&mut encoded).expect("write to a Vec");
    let again = DataTree::read_snapshot(&encoded).expect("a written snapshot reads back");
    assert_eq!(
        again.digest(),
        tree.digest(),
        "snapshot round trip keeps the state"
    );
    assert_eq!(again.last_applied(), tree.last_applied());
    assert_eq!(again.node_count(), tree.node_count());
    // Not byte for byte: nodes and ACLs follow `imbl::HashMap` order, which differs between two
    // equal trees. The same records in another order have the same length.
    let mut encoded_again = Vec::new();
    again
        .write_snapshot(&mut encoded_again)
        .expect("write to a Vec");
    assert_eq!(
        encoded_again.len(),
        encoded.len(),
        "equal trees encode to equal lengths"
    );
});
