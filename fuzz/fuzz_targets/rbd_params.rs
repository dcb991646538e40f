#![no_main]
//! StorageClass parameter parsing (KEY=VALUE lines) and mapOptions never panic.
use ferroceph::rbd::params::{parse_map_options, RbdParams};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let params: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(p) = RbdParams::parse(&params) {
        let _ = p.volume_context();
    }
    let _ = parse_map_options(&text);
});
