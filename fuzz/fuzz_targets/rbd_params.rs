#![no_main]
//! StorageClass parameter parsing (KEY=VALUE lines) and mapOptions never panic.
#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::rbd_params(data));
