//! The coord client protocol at the gRPC edge: prost decodes a `v1::ClientMessage` (what a
//! server reads) or a `v1::ServerMessage` (what the Rust client reads), then `coord::convert`
//! turns it into domain types.
//!
//! Input: a direction byte (even: client → server, odd: server → client), then the protobuf.
//!
//! Checks: nothing panics; a request that converts to an op converts back (`op_to_proto`) to a
//! request that converts to the same op and xid; a reply or watch event that converts does so
//! again after going back to the wire.
#![no_main]

use drover_coord::convert;
use drover_coord::zxid::Zxid;
use drover_fuzz::Cursor;
use drover_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    if input.u8() % 2 == 0 {
        let Ok(msg) = v1::ClientMessage::decode(input.rest()) else {
            return;
        };
        if let Some(v1::client_message::Body::Request(req)) = msg.body
            && let Ok((xid, op)) = convert::request_from_proto(req)
        {
            let back = convert::op_to_proto(xid, &op);
            let (xid2, op2) =
                convert::request_from_proto(back).expect("an encoded op converts back");
            assert_eq!(xid2, xid);
            assert_eq!(op2, op, "request round trip");
        }
    } else {
        let Ok(msg) = v1::ServerMessage::decode(input.rest()) else {
            return;
        };
        match msg.body {
            Some(v1::server_message::Body::Reply(reply)) => {
                let (xid, zxid) = (reply.xid, Zxid(reply.zxid));
                if let Ok(result) = convert::reply_from_proto(reply) {
                    let back = convert::reply_to_proto(xid, zxid, &Ok(result.clone()));
                    let again = convert::reply_from_proto(back).expect("an encoded reply converts");
                    assert_eq!(again, result, "reply round trip");
                }
            }
            Some(v1::server_message::Body::Event(event)) => {
                if let Ok(e) = convert::event_from_proto(event) {
                    let again = convert::event_from_proto(convert::event_to_proto(&e))
                        .expect("an encoded event converts");
                    assert_eq!(again, e, "event round trip");
                }
            }
            _ => {}
        }
    }
});
