//! RBD controller against the real dev cluster: a volume's whole life with data
//! (CreateVolume, CreateSnapshot, ListSnapshots, restore, clone, ControllerExpandVolume,
//! DeleteSnapshot, DeleteVolume) and long clone chains.

mod common;
use common::rbd_controller::*;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn full_lifecycle_with_data() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let name = unique("pvc-life");
    let vol = lifecycle_create(&mut ctl, &name).await;
    let img = image_name(&vol);

    write_image(&img, b"hello ceph");
    let (snap, sname) = lifecycle_snapshot(&mut ctl, &vol, &img).await;
    let (rreq, restored) = lifecycle_restore(&mut ctl, &snap).await;
    let cloned = lifecycle_clone(&mut ctl, &vol).await;
    lifecycle_expand(&mut ctl, &vol).await;

    // delete the source first: snapshot, restore and clone keep their data
    ctl.delete_volume(del_req(&vol.volume_id)).await.unwrap();
    ctl.delete_volume(del_req(&vol.volume_id)).await.unwrap();
    assert!(!image_exists(&img));
    assert!(!journal_has(&name));
    assert_eq!(&read_image(&image_name(&restored), 10), b"hello ceph");
    assert_eq!(&read_image(&image_name(&cloned), 10), b"CHANGED!!!");

    // a restore from the snapshot still works after its source is gone
    let r2 = unique("pvc-restore2");
    let mut r2req = rreq.clone();
    r2req.name = r2.clone();
    let restored2 = ctl
        .create_volume(r2req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(&read_image(&image_name(&restored2), 10), b"hello ceph");

    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .unwrap();
    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .unwrap();
    assert!(!snap_journal_has(&sname));
    assert_eq!(&read_image(&image_name(&restored), 10), b"hello ceph");
    for v in [&restored, &cloned, &restored2] {
        ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
        assert!(!image_exists(&image_name(v)));
    }
    // nothing of this test is left, not even in the trash (the controller removes deleted
    // images from the trash in the background, right after the deletes)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, trash) = admin_cli("rbd", &["trash", "ls", "-p", "rbd", "--all"]);
        let left = [uuid_of(&vol.volume_id), uuid_of(&snap.snapshot_id)]
            .iter()
            .any(|part| trash.contains(part.as_str()));
        if !left {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left in trash: {trash}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The controller client of these tests.
type Ctl = pb::controller_client::ControllerClient<tonic::transport::Channel>;

/// CreateVolume `name` (64 MiB, claim `team-a/data`): the handle, image, context, metadata
/// and journal owner are right, a repeat is idempotent and another size AlreadyExists.
async fn lifecycle_create(ctl: &mut Ctl, name: &str) -> pb::Volume {
    let mut req = create_req(name, 64 * MIB);
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "team-a".into());
    req.parameters
        .insert("csi.storage.k8s.io/pv/name".into(), name.to_string());
    let vol = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert!(vol.volume_id.starts_with("0001-0024-"), "{}", vol.volume_id);
    assert!(vol.volume_id.len() <= 128);
    let img = image_name(&vol);
    assert_eq!(img, format!("csi-vol-{}", uuid_of(&vol.volume_id)));
    assert!(image_exists(&img));
    for k in [
        "pool",
        "journalPool",
        "imageName",
        "clusterID",
        "imageFeatures",
    ] {
        assert!(
            vol.volume_context.contains_key(k),
            "volume_context lacks {k}"
        );
    }
    // metadata names the claim; the journal names the owner
    let (ok, meta) = admin_cli(
        "rbd",
        &[
            "image-meta",
            "get",
            &format!("rbd/{img}"),
            "csi.storage.k8s.io/pvc/name",
        ],
    );
    assert!(ok && meta.trim() == "data", "{meta}");
    let (_, owner) = admin_cli(
        "rados",
        &[
            "-p",
            "rbd",
            "getomapval",
            &format!("csi.volume.{}", uuid_of(&vol.volume_id)),
            "csi.volume.owner",
        ],
    );
    assert!(
        owner.contains("team-a") || owner.contains("74 65 61 6d"),
        "{owner}"
    );

    // idempotent; incompatible size → AlreadyExists
    let again = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, vol.volume_id);
    assert_eq!(again.volume_context, vol.volume_context);
    let mut bigger = req.clone();
    bigger.capacity_range = Some(pb::CapacityRange {
        required_bytes: 128 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(bigger).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    vol
}

/// CreateSnapshot of `vol` (idempotent), after which the source changes; ListSnapshots
/// by id and by source. Returns the snapshot and its name.
async fn lifecycle_snapshot(ctl: &mut Ctl, vol: &pb::Volume, img: &str) -> (pb::Snapshot, String) {
    // snapshot (idempotent), then change the source: the snapshot keeps the old data
    let sname = unique("snap");
    let snap = ctl
        .create_snapshot(snap_req(&sname, &vol.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 64 * MIB);
    assert_eq!(snap.source_volume_id, vol.volume_id);
    assert!(snap.creation_time.is_some());
    let snap2 = ctl
        .create_snapshot(snap_req(&sname, &vol.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap2.snapshot_id, snap.snapshot_id);
    assert_eq!(snap2.creation_time, snap.creation_time);
    write_image(img, b"CHANGED!!!");

    // list by id and by source
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            source_volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        snap.snapshot_id
    );
    (snap, sname)
}

/// CreateVolume from `snap` into a larger volume (idempotent); the same name with another
/// source is AlreadyExists, a size below the snapshot's OutOfRange. Returns the request
/// and the restored volume.
async fn lifecycle_restore(
    ctl: &mut Ctl,
    snap: &pb::Snapshot,
) -> (pb::CreateVolumeRequest, pb::Volume) {
    let rname = unique("pvc-restore");
    let mut rreq = create_req(&rname, 96 * MIB);
    rreq.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = ctl
        .create_volume(rreq.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.capacity_bytes, 96 * MIB);
    assert!(restored.content_source.is_some());
    assert_eq!(
        ctl.create_volume(rreq.clone())
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id,
        restored.volume_id
    );
    // same name, other source → AlreadyExists
    let mut other = create_req(&rname, 96 * MIB);
    other.volume_content_source = None;
    assert_eq!(
        ctl.create_volume(other).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // smaller than the snapshot → OutOfRange
    let mut small = rreq.clone();
    small.name = unique("pvc-small");
    small.capacity_range = Some(pb::CapacityRange {
        required_bytes: MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(small).await.unwrap_err().code(),
        Code::OutOfRange
    );
    (rreq, restored)
}

/// CreateVolume cloned from `vol` (as it is now, changed after the snapshot).
async fn lifecycle_clone(ctl: &mut Ctl, vol: &pb::Volume) -> pb::Volume {
    let cname = unique("pvc-clone");
    let mut creq = create_req(&cname, 64 * MIB);
    creq.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: vol.volume_id.clone(),
            },
        )),
    });
    let cloned = ctl
        .create_volume(creq)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    cloned
}

/// ControllerExpandVolume of `vol`: grows, never shrinks, asks for the node step for
/// filesystems and block alike.
async fn lifecycle_expand(ctl: &mut Ctl, vol: &pb::Volume) {
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 200 * MIB,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(rwo()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 200 * MIB);
    assert!(exp.node_expansion_required);
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 100 * MIB,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(block_cap(Mode::SingleNodeWriter)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 200 * MIB, "never shrinks");
    // block too: a FUSE attachment's loop device is refreshed by NodeExpandVolume
    assert!(exp.node_expansion_required);
}

#[tokio::test]
async fn clone_chains_are_flattened_in_the_background_when_long() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut chain = vec![ctl
        .create_volume(create_req(&unique("pvc-chain"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()];
    for _ in 0..image_soft_depth() {
        let prev = chain.last().unwrap().volume_id.clone();
        let mut r = create_req(&unique("pvc-chain"), 8 * MIB);
        r.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(
                pb::volume_content_source::VolumeSource { volume_id: prev },
            )),
        });
        chain.push(
            ctl.create_volume(r)
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap(),
        );
    }
    // The last clone is SOFT deep: the mgr flattens it, after which it has no parent.
    let last = image_name(chain.last().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, info) = admin_cli("rbd", &["info", &format!("rbd/{last}"), "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        if v.get("parent").is_none() && v.get("name").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{last} was not flattened: {info}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for v in chain.iter().rev() {
        ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    }
}

fn image_soft_depth() -> usize {
    4
}
