//! `ferroceph doctor --role node` against this machine: the node checks run and report.

mod common;

use common::doctor::*;
use std::path::Path;

#[test]
fn node_checks_run_on_this_machine() {
    let c = common::cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = setup(dir.path(), &[c.monitors()], "x", "y");
    let shm = Path::new("/dev/shm");
    let keys_parent = if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    };
    let keys = keys_parent.path().join("keys");
    let r = doctor(&[
        "--role",
        "node",
        "--json",
        "--configpath",
        &cfg,
        "--keysdir",
        &keys.display().to_string(),
        "--image-features",
        "layering,exclusive-lock",
    ]);
    for id in [
        "kernel.rbd",
        "kernel.rbd.features",
        "kernel.nbd",
        "kernel.ceph",
        "dev.fuse",
        "dev.loop",
        "mounter.rbd",
        "mounter.cephfs",
        "tool.mount",
        "tool.rbd",
        "tool.ceph-fuse",
        "keysdir",
        "config",
    ] {
        let chk = r.check(id);
        assert!(
            matches!(s(&chk["status"]), "ok" | "warn" | "fail" | "skip"),
            "{chk}"
        );
        if matches!(s(&chk["status"]), "warn" | "fail") {
            assert!(!s(&chk["fix"]).is_empty(), "a problem without a fix: {chk}");
        }
    }
    // The dev machine has /dev/fuse and the tools scripts/setup.sh installs.
    assert_eq!(r.check("dev.fuse")["status"], "ok");
    assert_eq!(r.check("tool.mount")["status"], "ok");
    assert_eq!(r.check("tool.ceph-fuse")["status"], "ok");
    if shm.is_dir() {
        let k = r.check("keysdir");
        assert_eq!(k["status"], "ok", "{k}");
        assert!(s(&k["summary"]).contains("memory-backed"), "{k}");
    }
    // A disk-backed keys directory is a warning with the emptyDir fix.
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let r = doctor(&[
        "--role",
        "node",
        "--json",
        "--configpath",
        &cfg,
        "--keysdir",
        &on_disk.path().display().to_string(),
    ]);
    let k = r.check("keysdir");
    if s(&k["summary"]).contains("tmpfs") {
        return; // the target directory itself is on tmpfs here
    }
    assert_eq!(k["status"], "warn", "{k}");
    assert!(s(&k["fix"]).contains("medium: Memory"), "{k}");
}
