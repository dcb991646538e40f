#![no_main]
//! The allow-lists of mkfsOptions, mapOptions and the CephFS mount options never panic,
//! and nothing they accept can name a path on the node.
use ferroceph::options::{check_cephfs_mount, check_map, check_mkfs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
