//! The properties the fuzz targets check, one function each. Shared by the cargo-fuzz
//! targets (fuzz_targets/*.rs, long hunts with scripts/fuzz.sh) and by
//! crates/ferroceph/tests/fuzz_inputs.rs, which runs them over generated inputs in every
//! `cargo test`. A property that does not hold panics.

use ferroceph::node::record::Record;
use ferroceph::options::{check_cephfs_mount, check_map, check_mkfs};
use ferroceph::rbd::params::{parse_map_options, RbdParams};
use ferroceph::volid::CsiId;
use std::collections::HashMap;

/// The cluster map loader never panics on any input.
pub fn cluster_map(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ferroceph::config::parse(s);
    }
}

/// The allow-lists of mkfsOptions, mapOptions and the CephFS mount options never panic,
/// and nothing they accept can name a path on the node.
pub fn node_options(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for fs in ["ext4", "xfs"] {
        if let Ok(args) = check_mkfs(fs, &text) {
            assert!(!args.iter().any(|a| a.contains('/')), "{fs}: {text:?}");
        }
    }
    for m in ["krbd", "nbd", "fuse"] {
        if check_map(m, &text).is_ok() {
            assert!(!text.contains('/'), "{m}: {text:?}");
        }
    }
    for m in ["kernel", "fuse"] {
        if check_cephfs_mount(m, &text).is_ok() {
            assert!(!text.contains('/'), "{m}: {text:?}");
        }
    }
}

/// StorageClass parameter parsing (KEY=VALUE lines) and mapOptions never panic.
pub fn rbd_params(data: &[u8]) {
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
}

/// A staging record read back after a restart (possibly truncated or tampered with) never
/// panics the node plugin.
pub fn staging_record(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<Record>(data) {
        let _ = serde_json::to_vec(&r);
    }
}

/// The handle codec never panics, and whatever decodes re-encodes to the same text.
pub fn volume_id(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = CsiId::decode(s) {
            assert_eq!(id.to_string(), s);
            assert!(s.len() <= 128);
        }
    }
}
