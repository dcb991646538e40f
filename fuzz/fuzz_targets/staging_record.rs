#![no_main]
//! A staging record read back after a restart (possibly truncated or tampered with) never
//! panics the node plugin.
#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::staging_record(data));
