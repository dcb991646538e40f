#![no_main]
//! The cluster map loader never panics on any input.
#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::cluster_map(data));
