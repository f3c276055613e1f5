//! The master's and the shared types' proto → domain conversions at the gRPC edge
//! (`drover_master::wire`, `drover_types::convert`), on messages prost decodes from bytes.
//!
//! Input: a selector byte, then the protobuf of a `TaskInfo` (0), `FrameworkInfo` (1),
//! `AgentInfo` (2), agent `TaskStatus` (3) or `Resources` (4); 5 is an offer id string.
//!
//! Checks: nothing panics; what converts goes back to the wire and converts to an equal value.
#![no_main]

use drover_fuzz::Cursor;
use drover_master::wire;
use drover_master::{AgentId, Resources};
use drover_proto::v1;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let selector = input.u8();
    let bytes = input.rest();
    match selector % 6 {
        0 => {
            let Ok(t) = v1::TaskInfo::decode(bytes) else {
                return;
            };
            if let Ok(launch) = wire::task_from_wire(&t) {
                let again = wire::task_from_wire(&wire::task_to_wire(&launch))
                    .expect("an encoded task converts");
                assert_eq!(again, launch, "task round trip");
            }
        }
        1 => {
            let Ok(f) = v1::FrameworkInfo::decode(bytes) else {
                return;
            };
            if let Ok((info, _)) = wire::framework_from_wire(Some(&f), "fresh-id") {
                let (again, is_new) =
                    wire::framework_from_wire(Some(&wire::framework_to_wire(&info)), "other-id")
                        .expect("an encoded framework converts");
                assert!(!is_new);
                assert_eq!(again, info, "framework round trip");
            }
        }
        2 => {
            let Ok(a) = v1::AgentInfo::decode(bytes) else {
                return;
            };
            if let Ok(info) = wire::agent_from_wire(Some(&a), "agent-1") {
                let again = wire::agent_from_wire(Some(&wire::agent_to_wire(&info)), "agent-1")
                    .expect("an encoded agent converts");
                assert_eq!(again, info, "agent round trip");
            }
        }
        3 => {
            let Ok(s) = v1::TaskStatus::decode(bytes) else {
                return;
            };
            let agent = AgentId::parse("agent-1").expect("valid id");
            if let Ok(status) = wire::status_from_agent(&s, &agent) {
                let again = wire::status_from_agent(&wire::status_to_wire(&status, 0), &agent)
                    .expect("an encoded status converts");
                assert_eq!(again, status, "status round trip");
            }
        }
        4 => {
            let Ok(r) = v1::Resources::decode(bytes) else {
                return;
            };
            if let Ok(res) = Resources::try_from(&r) {
                let again =
                    Resources::try_from(&v1::Resources::from(&res)).expect("encoded resources");
                assert_eq!(again, res, "resources round trip");
            }
        }
        _ => {
            let Ok(s) = std::str::from_utf8(bytes) else {
                return;
            };
            let _ = wire::offer_id_from_wire(7, s);
        }
    }
});
