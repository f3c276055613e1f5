//! `drover_types::units`: durations (`parse_duration`) and memory sizes (`parse_mem`) as flags
//! and spec files write them.
//!
//! Input: a selector byte (even: duration, odd: memory size), then UTF-8 text.
//!
//! Checks: nothing panics; a parsed value formats (`format_duration`, `format_mem`) to text that
//! parses back to the same value.
#![no_main]

use drover_fuzz::Cursor;
use drover_types::units::{format_duration, format_mem, parse_duration, parse_mem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let selector = input.u8();
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    if selector % 2 == 0 {
        if let Ok(d) = parse_duration(text) {
            let formatted = format_duration(d);
            assert_eq!(
                parse_duration(&formatted),
                Ok(d),
                "duration round trip via {formatted:?}"
            );
        }
    } else if let Ok(bytes) = parse_mem(text) {
        let formatted = format_mem(bytes);
        assert_eq!(
            parse_mem(&formatted),
            Ok(bytes),
            "memory round trip via {formatted:?}"
        );
    }
});
