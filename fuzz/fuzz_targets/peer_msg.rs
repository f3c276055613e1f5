//! ZAB peer messages: `PeerMsg::decode` on the bytes of one frame, as the inbound peer link
//! (`driver::peer_net`) does after reading the length prefix (the framing itself is inline in
//! that async reader: a `u32` LE length checked against `PEER_MESSAGE_BYTES_MAX`).
//!
//! Checks: decoding never panics (a `Snap` carries a whole `DataTree` snapshot, a `Diff` a list
//! of transactions); a decoded message re-encodes to bytes that decode and re-encode the same.
#![no_main]

use drover_coord::zab::PeerMsg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = PeerMsg::decode(data) else {
        return;
    };
    let encoded = msg.encode();
    let again = PeerMsg::decode(&encoded).expect("an encoded message decodes");
    assert_eq!(again.encode(), encoded, "peer message round trip");
});
