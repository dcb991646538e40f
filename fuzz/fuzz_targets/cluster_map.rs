#![no_main]
//! The cluster map loader never panics on any input.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ferroceph::config::parse(s);
    }
});
