//! RBD DeleteVolume answers once the image is recorded and in the trash and its journal
//! entry is released; a background remover takes the image out of the trash. Against the
//! real dev cluster: the image leaves the pool and the trash promptly, a kill at every step
//! (including inside the background removal) converges on retry with nothing left behind,
//! clones restored from a snapshot outlive their deleted parents, and images the driver did
//! not trash are never removed. Each test runs its own `--instanceid`, so its journal and
//! trash log are its own on the shared pool.

mod common;
use common::*;
use csi::v1 as pb;
use rados::rbd::{self, Image};
use std::time::{Duration, Instant};

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
    c.ioctx("rbd", "").expect("open the rbd pool")
}

/// A controller of its own instance; `extra` adds flags.
fn controller(instance: &str, extra: &[&str], envs: &[(&str, &str)]) -> Driver {
    let inst = format!("--instanceid={instance}");
    let mut args = vec!["--type=rbd", "--controllerserver=true", inst.as_str()];
    args.extend_from_slice(extra);
    Driver::start(&args, envs)
}

fn trash_names(io: &rados::IoCtx) -> Vec<String> {
    rbd::trash_list(io)
        .expect("trash list")
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// What is left of a volume (image `image`, request name `name`, uuid `uuid`) of
/// `instance`: one line per leftover, empty when the delete is complete.
fn leftovers(io: &rados::IoCtx, instance: &str, name: &str, uuid: &str) -> Vec<String> {
    let image = format!("csi-vol-{uuid}");
    let mut left = Vec::new();
    if image_exists(&image) {
        left.push(format!("image {image} in the pool"));
    }
    if trash_names(io).contains(&image) {
        left.push(format!("image {image} in the trash"));
    }
    if omap_keys(&format!("csi.volumes.{instance}")).contains(&format!("csi.volume.{name}")) {
        left.push(format!("journal key of {name}"));
    }
    if object_exists(&format!("csi.volume.{uuid}")) {
        left.push(format!("journal entry csi.volume.{uuid}"));
    }
    let records = omap_keys(&format!("csi.ferroceph.trash.{instance}"));
    if !records.is_empty() {
        left.push(format!("trash records {records:?}"));
    }
    left
}

/// Removes the instance's (empty) journal directories and trash log.
fn drop_instance_objects(instance: &str) {
    for obj in [
        format!("csi.volumes.{instance}"),
        format!("csi.snaps.{instance}"),
        format!("csi.ferroceph.trash.{instance}"),
    ] {
        let _ = admin_cli("rados", &["-p", "rbd", "rm", &obj]);
    }
}

/// Waits until `check` returns nothing, or panics with what it last returned.
async fn eventually(what: &str, secs: u64, mut check: impl FnMut() -> Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = check();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create(
    ctl: &mut pb::controller_client::ControllerClient<tonic::transport::Channel>,
    name: &str,
) -> pb::Volume {
    ctl.create_volume(create_req(name, 8 * MIB))
        .await
        .expect("create volume")
        .into_inner()
        .volume
        .expect("volume")
}

/// The delete answers before the image is removed, and the background remover takes the
/// image out of the trash right after (not at the next --reapinterval, an hour here).
#[tokio::test]
async fn deleted_image_leaves_pool_and_trash_promptly() {
    let inst = unique("del-prompt");
    let d = controller(&inst, &["--reapinterval=1h"], &[]);
    let mut ctl = d.controller().await;
    let c = admin();
    let io = pool(&c);
    let mut vols = Vec::new();
    for i in 0..4 {
        let name = unique(&format!("pvc-prompt-{i}"));
        vols.push((create(&mut ctl, &name).await, name));
    }
    for (v, _) in &vols {
        ctl.delete_volume(del_req(&v.volume_id))
            .await
            .expect("delete volume");
    }
    for (v, name) in &vols {
        let uuid = uuid_of(&v.volume_id);
        eventually("deleted volume", 20, || leftovers(&io, &inst, name, &uuid)).await;
    }
    // and a repeated delete is still a success
    ctl.delete_volume(del_req(&vols[0].0.volume_id))
        .await
        .expect("repeated delete");
    drop_instance_objects(&inst);
}

/// A controller stopped (SIGTERM) right after its last deletes answered removes their
/// images before it exits, even while its background remover is in the middle of a pass
/// (found by a CI run with the kernel VM beside: the shut-down pass met the image the other
/// pass was removing, EBUSY, and gave up; the trash entry stayed with no controller of that
/// instance to finish it). The race needs a loaded machine; unloaded, this passed before
/// the fix too.
#[tokio::test]
async fn stopped_right_after_deletes_leaves_nothing() {
    for round in 0..2 {
        let inst = unique("del-stop");
        let mut d = controller(&inst, &["--reapinterval=1h"], &[]);
        let mut ctl = d.controller().await;
        let c = admin();
        let io = pool(&c);
        let mut vols = Vec::new();
        for i in 0..8 {
            let name = unique(&format!("pvc-stop-{round}-{i}"));
            vols.push((create(&mut ctl, &name).await, name));
        }
        for (v, _) in &vols {
            ctl.delete_volume(del_req(&v.volume_id))
                .await
                .expect("delete volume");
        }
        d.stop();
        for (v, name) in &vols {
            let left = leftovers(&io, &inst, name, &uuid_of(&v.volume_id));
            assert!(
                left.is_empty(),
                "round {round}: the stopped controller left {left:?}"
            );
        }
        drop_instance_objects(&inst);
    }
}

/// Kills the driver at every step of a delete and of the background removal; a restarted
/// driver and a retried DeleteVolume leave no image, no trash entry, no journal key and no
/// trash record. After a kill between the trash move and the journal release, a
/// CreateVolume of the same name gets a new volume instead of the deleted one's handle.
#[tokio::test]
async fn kill_at_every_delete_step_leaves_nothing() {
    let c = admin();
    let io = pool(&c);
    for point in [
        "delete.recorded",
        "delete.trashed",
        "delete.released",
        "reap.removed",
    ] {
        let inst = unique("del-crash");
        let name = unique("pvc-del-crash");
        let mut d = controller(&inst, &["--reapinterval=1s"], &[]);
        let mut ctl = d.controller().await;
        let v = create(&mut ctl, &name).await;
        let uuid = uuid_of(&v.volume_id);
        // the create closed the image, so a kill leaves no watch behind
        d.kill();
        d.envs = vec![("FERROCEPH_TEST_CRASH_AT".into(), point.into())];
        d.spawn();
        let mut ctl = d.controller().await;
        let r = ctl.delete_volume(del_req(&v.volume_id)).await;
        assert!(
            d.wait_exit(Duration::from_secs(30)).is_some(),
            "crash point {point} not reached: {r:?}"
        );
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        if point == "delete.trashed" {
            // the entry still points at the trashed image: the name is a new volume now
            let again = create(&mut ctl, &name).await;
            assert_ne!(
                again.volume_id, v.volume_id,
                "a create after an interrupted delete handed out the deleted volume"
            );
            ctl.delete_volume(del_req(&v.volume_id))
                .await
                .unwrap_or_else(|e| panic!("retried delete after {point}: {e:?}"));
            ctl.delete_volume(del_req(&again.volume_id))
                .await
                .expect("delete the new volume");
            let again_uuid = uuid_of(&again.volume_id);
            eventually(&format!("new volume after {point}"), 60, || {
                leftovers(&io, &inst, &name, &again_uuid)
            })
            .await;
        } else {
            ctl.delete_volume(del_req(&v.volume_id))
                .await
                .unwrap_or_else(|e| panic!("retried delete after {point}: {e:?}"));
        }
        // a record of an image removed just before the kill is dropped once it is stale
        eventually(
            &format!("volume deleted across a kill at {point}"),
            90,
            || leftovers(&io, &inst, &name, &uuid),
        )
        .await;
        drop_instance_objects(&inst);
    }
}

/// A volume restored from a snapshot outlives its source volume and the snapshot: their
/// images wait in the trash while the clone needs them, the clone keeps its data, and all
/// of them go once the clone is deleted.
#[tokio::test]
async fn clone_outlives_deleted_snapshot_and_source() {
    let inst = unique("del-chain");
    let d = controller(&inst, &["--reapinterval=1s"], &[]);
    let mut ctl = d.controller().await;
    let c = admin();
    let io = pool(&c);
    let src_name = unique("pvc-chain-src");
    let src = create(&mut ctl, &src_name).await;
    let data = b"kept by the clone";
    {
        let img = Image::open(&io, &format!("csi-vol-{}", uuid_of(&src.volume_id))).unwrap();
        img.write(0, data).unwrap();
        img.flush().unwrap();
    }
    let snap = ctl
        .create_snapshot(snap_req(&unique("snap-chain"), &src.volume_id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    let restore_name = unique("pvc-chain-restore");
    let mut restore = create_req(&restore_name, 8 * MIB);
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
    // several remover passes (every second here) must leave the clone's parents alone
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restored_image = format!("csi-vol-{}", uuid_of(&restored.volume_id));
    {
        let img = Image::open_read_only(&io, &restored_image).expect("the clone is intact");
        let mut buf = vec![0u8; data.len()];
        img.read(0, &mut buf).unwrap();
        assert_eq!(&buf, data, "the clone lost its data");
    }
    ctl.delete_volume(del_req(&restored.volume_id))
        .await
        .expect("delete clone");
    let ours = [
        uuid_of(&src.volume_id),
        uuid_of(&snap.snapshot_id),
        uuid_of(&restored.volume_id),
    ];
    eventually("the chain leaves the trash", 60, || {
        let mut left: Vec<String> = trash_names(&io)
            .into_iter()
            .chain(images())
            .filter(|n| ours.iter().any(|u| n.contains(u.as_str())))
            .collect();
        left.extend(omap_keys(&format!("csi.ferroceph.trash.{inst}")));
        left
    })
    .await;
    drop_instance_objects(&inst);
}

/// Images an administrator moved to the trash are theirs: neither a volume of ours that
/// they trashed before the PV was deleted, nor an unrelated image named like ours, is
/// removed by DeleteVolume or by the remover.
#[tokio::test]
async fn admin_trashed_images_are_never_removed() {
    let inst = unique("del-admin");
    let d = controller(&inst, &["--reapinterval=1s"], &[]);
    let mut ctl = d.controller().await;
    let c = admin();
    let io = pool(&c);
    let name = unique("pvc-admin");
    let v = create(&mut ctl, &name).await;
    let image = format!("csi-vol-{}", uuid_of(&v.volume_id));
    let id = Image::open_read_only(&io, &image).unwrap().id().unwrap();
    rbd::trash_move(&io, &image, 0).expect("admin trash mv");
    let other = format!("csi-vol-{}", uuid::Uuid::new_v4());
    let mut opts = rbd::ImageOptions::new(4 << 20);
    opts.features = rbd::FEATURE_LAYERING;
    rbd::create(&io, &other, &opts).expect("create image");
    let other_id = Image::open_read_only(&io, &other).unwrap().id().unwrap();
    rbd::trash_move(&io, &other, 0).expect("admin trash mv");

    ctl.delete_volume(del_req(&v.volume_id))
        .await
        .expect("delete volume");
    // another delete wakes the remover at once, and passes run every second
    let extra = create(&mut ctl, &unique("pvc-admin-extra")).await;
    ctl.delete_volume(del_req(&extra.volume_id))
        .await
        .expect("delete extra");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let trash: Vec<String> = rbd::trash_list(&io)
        .expect("trash list")
        .into_iter()
        .map(|e| e.id)
        .collect();
    let _ = rbd::trash_remove(&io, &id, true);
    let _ = rbd::trash_remove(&io, &other_id, true);
    assert!(
        trash.contains(&id),
        "the remover took the administrator's soft delete of {image}"
    );
    assert!(trash.contains(&other_id), "the remover took {other}");
    assert!(
        !omap_keys(&format!("csi.volumes.{inst}")).contains(&format!("csi.volume.{name}")),
        "the journal key stays"
    );
    drop_instance_objects(&inst);
}

/// csi-sanity's ListSnapshots specs: snapshots of a volume are deleted, then at once the
/// volume. The background removal of the snapshot images (clones of the volume) opens the
/// volume's image for a moment; that watch is this controller's own and must not make the
/// DeleteVolume fail as if a node still used the volume.
#[tokio::test]
async fn volume_deleted_right_after_its_snapshots() {
    let inst = unique("del-after-snaps");
    let d = controller(&inst, &[], &[]);
    let mut ctl = d.controller().await;
    let c = admin();
    let io = pool(&c);
    for round in 0..2 {
        let name = unique(&format!("pvc-snapped-{round}"));
        let v = create(&mut ctl, &name).await;
        let mut snaps = Vec::new();
        for i in 0..6 {
            let s = ctl
                .create_snapshot(snap_req(
                    &unique(&format!("snap-{round}-{i}")),
                    &v.volume_id,
                ))
                .await
                .expect("create snapshot")
                .into_inner()
                .snapshot
                .expect("snapshot");
            snaps.push(s.snapshot_id);
        }
        for s in &snaps {
            ctl.delete_snapshot(del_snap_req(s))
                .await
                .expect("delete snapshot");
        }
        ctl.delete_volume(del_req(&v.volume_id))
            .await
            .expect("the volume's own controller is not a user of the volume");
        let uuid = uuid_of(&v.volume_id);
        eventually("deleted volume", 30, || leftovers(&io, &inst, &name, &uuid)).await;
    }
    drop_instance_objects(&inst);
}
