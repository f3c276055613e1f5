//! ZAB peer messages: `PeerMsg::decode` on the bytes of one frame, as the inbound peer link
//! (`driver::peer_net`) does after reading the length prefix (the framing itself is inline in
//! that async reader: a `u32` LE length checked against `PEER_MESSAGE_BYTES_MAX`).
//!
//! Checks: decoding never panics (a `Snap` carries a whole `DataTree` snapshot, a `Diff` a list
//! of transactions); a decoded message re-encodes to bytes that decode and re-encode the same
//! (for a `Snap`, to the same length: its tree's nodes come in hash-map order).
#![no_main]

use drover_coord::zab::PeerMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = PeerMsg::decode(data) else {
        return;
    };
    let encoded = msg.encode();
    let again = PeerMsg::decode(&encoded).expect("an encoded message decodes");
    let encoded_again = again.encode();
    if matches!(msg, PeerMsg::Snap { .. }) {
        // A snapshot's nodes follow `imbl::HashMap` order, which differs between equal trees.
        assert_eq!(
            encoded_again.len(),
            encoded.len(),
            "snapshot message round trip"
        );
    } else {
        assert_eq!(encoded_again, encoded, "peer message round trip");
    }
});
