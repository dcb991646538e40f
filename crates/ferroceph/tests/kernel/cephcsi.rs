//! Kernel scenarios (VM, see tests/common/vm.rs): volumes that ceph-csi's RBD node plugin
//! staged before the node plugin's image was swapped for ferroceph's. The layout is built by
//! hand exactly as ceph-csi v3.12 builds it (image-meta.json in the staging path, the image
//! mapped, formatted and mounted at `<staging>/<volume id>`), then kubelet's calls are played
//! against ferroceph: stage (kubelet's reconstruction), publish, stats, unpublish, unstage.
//!
//! Run: `cargo test -p ferroceph --test kernel -- --ignored cephcsi::` (a module of tests/kernel.rs, so
//! that one VM boot runs every kernel scenario).

use super::ALL;
use crate::common::node::*;
use crate::common::vm::scenario;
use crate::common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use std::path::Path;
use std::process::Command;
use tonic::Code;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// ceph-csi's image-meta.json, as json.Marshal writes it (v3.12, stash version 3).
fn meta_json(pool: &str, image: &str, nbd: bool, device: &str, encrypted: bool) -> String {
    format!(
        r#"{{"Version":3,"pool":"{pool}","radosNamespace":"","image":"{image}","unmapOptions":"","accessType":{nbd},"encrypted":{encrypted},"device":"{device}","logDir":"{}","logFileStrategy":"{}"}}"#,
        if nbd { "/var/log/ceph" } else { "" },
        if nbd { "remove" } else { "" },
    )
}

/// Stages `v` at `staging` as ceph-csi does: stash, map, mkfs, mount (or bind the device
/// onto a file for a block volume) at `<staging>/<volume id>`. Returns the device.
fn cephcsi_stage(v: &Vol, staging: &Path, nbd: bool, fs: Option<&str>) -> String {
    let conf = cluster().get("FERRO_CEPH_CONF");
    let pool = cluster().get("FERRO_RBD_POOL");
    std::fs::create_dir_all(staging).expect("staging dir");
    let meta = staging.join("image-meta.json");
    std::fs::write(&meta, meta_json(&pool, &v.image, nbd, "", false)).expect("stash");
    let spec = format!("{pool}/{}", v.image);
    let dev = if nbd {
        run(
            "rbd",
            &[
                "-c",
                &conf,
                "map",
                &spec,
                "--device-type",
                "nbd",
                "--options",
                "try-netlink",
            ],
        )
    } else {
        run(
            "rbd",
            &[
                "-c",
                &conf,
                "map",
                &spec,
                "--device-type",
                "krbd",
                "--options",
                "noudev",
            ],
        )
    };
    if nbd {
        // ceph-csi records the nbd device once mapped
        std::fs::write(&meta, meta_json(&pool, &v.image, nbd, &dev, false)).expect("stash");
    }
    let inner = staging.join(&v.id);
    match fs {
        Some(f) => {
            run(&format!("mkfs.{f}"), &["-q", &dev]);
            std::fs::create_dir_all(&inner).expect("inner dir");
            run(
                "mount",
                &["-t", f, "-o", "_netdev", &dev, &inner.display().to_string()],
            );
        }
        None => {
            std::fs::write(&inner, b"").expect("inner file");
            run("mount", &["--bind", &dev, &inner.display().to_string()]);
        }
    }
    dev
}

async fn cephcsi_staged_volume(nbd: bool, fs: Option<&str>) {
    let n = rbd_nodes();
    let mut scratch = Scratch::new();
    let root = scratch.dir.path().to_path_buf();
    let mut ctl = n.a.controller().await;
    let mut na = n.a.node().await;
    let mounter = if nbd { "rbd-nbd" } else { "krbd" };
    let v = create_rbd(&mut ctl, &mut scratch, 64 * MIB, &[("mounter", mounter)]).await;
    let block = fs.is_none();
    let cap = match fs {
        Some(f) => fs_cap(f, Mode::SingleNodeWriter),
        None => block_cap(Mode::SingleNodeWriter),
    };
    let (sa, ta) = (root.join("a/globalmount"), root.join("a/pod1/volume"));
    let dev = cephcsi_stage(&v, &sa, nbd, fs);
    let inner = sa.join(&v.id);

    // kubelet's reconstruction stages again: ceph-csi's staging is kept, nothing new mapped
    stage(&mut na, &v, &sa, &cap).await;
    assert_eq!(
        kernel_devices_of(&v.image),
        vec![dev.clone()],
        "a second mapping was made"
    );
    assert!(
        !is_mounted(&sa),
        "something was mounted over ceph-csi's staging"
    );

    // an encrypted volume is never published (the pod would get the LUKS container)
    let pool = cluster().get("FERRO_RBD_POOL");
    let meta = sa.join("image-meta.json");
    let original = std::fs::read_to_string(&meta).expect("meta");
    std::fs::write(&meta, meta_json(&pool, &v.image, nbd, "", true)).expect("meta");
    let e = na
        .node_publish_volume(publish_req(&v.id, &v.ctx, &sa, &ta, cap.clone(), false))
        .await
        .expect_err("an encrypted ceph-csi volume was published");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(!is_mounted(&ta));
    std::fs::write(&meta, &original).expect("meta");

    publish(&mut na, &v, &sa, &ta, &cap, false).await;
    let data = pattern(0xcec5, 1 << 20);
    write_data(&ta, block, &data);
    let s = stats(&mut na, &v, &ta, &sa).await;
    assert!(!s.usage.is_empty(), "no usage reported: {s:?}");
    let cond = s.volume_condition.expect("condition");
    assert!(!cond.abnormal, "{}", cond.message);

    // still published: unstage is refused and leaves everything in place
    let e = na
        .node_unstage_volume(unstage_req(&v.id, &sa))
        .await
        .expect_err("unstage under a published pod");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(is_mounted(&inner) && meta.exists());
    assert_eq!(kernel_devices_of(&v.image), vec![dev.clone()]);
    assert_eq!(read_data(&ta, block, data.len()), data);

    unpublish(&mut na, &v, &ta).await;
    unstage(&mut na, &v, &sa).await;
    unstage(&mut na, &v, &sa).await; // idempotent
    assert!(
        kernel_devices_of(&v.image).is_empty(),
        "ceph-csi's mapping was left"
    );
    assert!(!inner.exists(), "{} was left", inner.display());
    assert!(!meta.exists(), "image-meta.json was left");
    assert_node_clean(&n, &v.image, &root);

    // ferroceph stages it afresh: the data ceph-csi's pod wrote is there
    let (sb, tb) = (root.join("b/globalmount"), root.join("b/pod1/volume"));
    stage(&mut na, &v, &sb, &cap).await;
    publish(&mut na, &v, &sb, &tb, &cap, false).await;
    assert_eq!(
        read_data(&tb, block, data.len()),
        data,
        "data differs after restage"
    );
    unpublish(&mut na, &v, &tb).await;
    unstage(&mut na, &v, &sb).await;
    assert_node_clean(&n, &v.image, &root);
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn cephcsi_staged_krbd_volume_is_published_and_unstaged() {
    scenario(
        "cephcsi::cephcsi_staged_krbd_volume_is_published_and_unstaged",
        ALL,
        || cephcsi_staged_volume(false, Some("ext4")),
    );
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn cephcsi_staged_nbd_volume_is_published_and_unstaged() {
    scenario(
        "cephcsi::cephcsi_staged_nbd_volume_is_published_and_unstaged",
        ALL,
        || cephcsi_staged_volume(true, None),
    );
}
