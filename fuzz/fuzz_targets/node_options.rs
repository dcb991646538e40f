#![no_main]
//! The allow-lists of mkfsOptions, mapOptions and the CephFS mount options never panic,
//! and nothing they accept can name a path on the node.
#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::node_options(data));
