#![no_main]
//! A staging record read back after a restart (possibly truncated or tampered with) never
//! panics the node plugin.
use ferroceph::node::record::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Record>(data) {
        let _ = serde_json::to_vec(&r);
    }
});
