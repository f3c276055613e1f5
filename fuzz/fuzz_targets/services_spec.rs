//! The services framework's spec parser (`services::spec::parse`: TOML, JSON or YAML, then
//! validation) and the stored status (`ServiceStatus::from_json`), on arbitrary text.
//!
//! Input: a selector byte (0 TOML, 1 JSON, 2 YAML, 3 status JSON), then the text.
//!
//! Checks: nothing panics; a valid spec's stored form (`to_json`) reads back equal with the same
//! `version()`, and `task_request()` (which expects validated cpus) holds for it.
#![no_main]

use drover_fuzz::Cursor;
use libfuzzer_sys::fuzz_target;
use services::spec::{self, Format, ServiceSpec};
use services::status::ServiceStatus;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let selector = input.u8();
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let format = match selector % 4 {
        0 => Format::Toml,
        1 => Format::Json,
        2 => Format::Yaml,
        _ => {
            if let Ok(status) = ServiceStatus::from_json(text) {
                let again = ServiceStatus::from_json(&status.to_json()).expect("stored status");
                assert_eq!(again, status, "status round trip");
            }
            return;
        }
    };
    let Ok(spec) = spec::parse(text, format) else {
        return;
    };
    let _ = spec.task_request();
    let stored = spec.to_json();
    let again = ServiceSpec::from_json(&stored).expect("a stored spec reads back");
    assert_eq!(again, spec, "spec round trip");
    assert_eq!(again.version(), spec.version());
});
