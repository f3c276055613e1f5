//! Coord transaction records: `Txn::decode` (both the current and the legacy format 1), then
//! replay on a `DataTree` as recovery and followers do with logged transactions.
//!
//! Input: records `[len: u16 LE][bytes]`. Each one that decodes is applied if its zxid is above
//! the tree's last applied (the log guarantees that order; `apply` asserts it).
//!
//! Checks: decoding and applying never panic; a decoded transaction re-encodes to one that
//! decodes equal; the tree after replay survives a snapshot round trip with the same digest.
#![no_main]

use drover_coord::data_tree::DataTree;
use drover_coord::txn::Txn;
use drover_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let mut tree = DataTree::new();
    while !input.0.is_empty() {
        let len = usize::from(input.u16());
        let Ok(txn) = Txn::decode(input.bytes(len)) else {
            continue;
        };
        assert_eq!(
            Txn::decode(&txn.encode()).expect("re-encoded txn decodes"),
            txn
        );
        if txn.zxid > tree.last_applied() {
            let _ = tree.apply(&txn);
        }
    }
    let mut snapshot = Vec::new();
    tree.write_snapshot(&mut snapshot).expect("write to a Vec");
    let restored =
        DataTree::read_snapshot(&snapshot).expect("a replayed tree snapshots and restores");
    assert_eq!(
        restored.digest(),
        tree.digest(),
        "snapshot round trip keeps the state"
    );
});
