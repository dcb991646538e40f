#![no_main]
//! The handle codec never panics, and whatever decodes re-encodes to the same text.
use ferroceph::volid::CsiId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = CsiId::decode(s) {
            assert_eq!(id.to_string(), s);
            assert!(s.len() <= 128);
        }
    }
});
