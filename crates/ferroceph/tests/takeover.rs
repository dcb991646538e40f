//! What the controller may touch and how it reads objects ceph-csi v3.12 left behind: the
//! trash reaper removes only images this driver trashed, and ceph-csi's journal entries,
//! snapshots, temporary clones and encrypted volumes are read as ceph-csi wrote them. The
//! ceph-csi objects are built here by hand, in ceph-csi's formats (shared/FACTS.md).

mod common;
use common::*;
use csi::v1 as pb;
use rados::rbd::{self, Image};
use std::time::Duration;

fn admin() -> rados::Cluster {
    let c = cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

fn pool(c: &rados::Cluster) -> rados::IoCtx {
    c.ioctx(&cluster().get("FERRO_RBD_POOL"), "")
        .expect("open the rbd pool")
}

fn trash_ids(io: &rados::IoCtx) -> Vec<String> {
    rbd::trash_list(io)
        .expect("trash list")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn new_image(io: &rados::IoCtx, name: &str, size: i64) -> String {
    let mut opts = rbd::ImageOptions::new(size as u64);
    opts.features = rbd::FEATURE_LAYERING;
    rbd::create(io, name, &opts).expect("create image");
    Image::open_read_only(io, name).unwrap().id().unwrap()
}

/// An administrator's `rbd trash mv` of an image named like ours (deferment 0, so expired
/// at once) is a soft delete the administrator may undo: several reaper passes leave it.
#[tokio::test]
async fn reaper_removes_only_what_the_driver_trashed() {
    let d = Driver::start(
        &["--type=rbd", "--controllerserver=true", "--reapinterval=1s"],
        &[],
    );
    let mut ctl = d.controller().await;
    let c = admin();
    let io = pool(&c);

    // The admin's soft delete.
    let image = format!("csi-vol-{}", uuid::Uuid::new_v4());
    let admin_id = new_image(&io, &image, 4 * MIB);
    rbd::trash_move(&io, &image, 0).expect("trash mv");

    // A volume of ours restored from a snapshot, so the snapshot's image stays in the
    // trash when the snapshot is deleted and goes with its last child.
    let src = ctl
        .create_volume(create_req(&unique("pvc-reap-src"), 8 * MIB))
        .await
        .expect("create source")
        .into_inner()
        .volume
        .unwrap();
    let snap = ctl
        .create_snapshot(snap_req(&unique("snap-reap"), &src.volume_id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    let mut restore = create_req(&unique("pvc-reap-restore"), 8 * MIB);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = ctl
        .create_volume(restore)
        .await
        .expect("restore")
        .into_inner()
        .volume
        .unwrap();
    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .expect("delete snapshot");
    ctl.delete_volume(del_req(&src.volume_id))
        .await
        .expect("delete source");

    tokio::time::sleep(Duration::from_secs(5)).await;
    let survived = trash_ids(&io).contains(&admin_id);
    // Our trashed snapshot image goes with its last child.
    ctl.delete_volume(del_req(&restored.volume_id))
        .await
        .expect("delete restored");
    let snap_uuid = uuid_of(&snap.snapshot_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ours_left = loop {
        let left: Vec<_> = rbd::trash_list(&io)
            .expect("trash list")
            .into_iter()
            .filter(|e| e.name.contains(&snap_uuid))
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let _ = rbd::trash_remove(&io, &admin_id, true);
    assert!(
        survived,
        "the reaper removed {image}, which an administrator had moved to the trash"
    );
    assert!(
        ours_left.is_empty(),
        "our snapshot image stays: {ours_left:?}"
    );
    assert!(
        omap_keys("csi.ferroceph.trash.default").is_empty(),
        "trash records left: {:?}",
        omap_keys("csi.ferroceph.trash.default")
    );
}
