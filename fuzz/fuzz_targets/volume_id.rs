#![no_main]
//! The handle codec never panics, and whatever decodes re-encodes to the same text.
#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::volume_id(data));
